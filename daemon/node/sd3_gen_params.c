/*  sd3_gen_params - what a user asks for: defaults, checks, the PNG infotext (sd3_stage.h)  */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd3_png.h"
#include "sd3_stage.h"

void
sd3_gen_params_init(sd3_gen_params_t *p, const sd3_mmdit_config_t *cfg)
{
    memset(p, 0, sizeof *p);
    p->width = p->height = 1024;
    p->denoise = 1.0;
    p->sampler = SD3_SAMPLER_DPMPP_2M;
    // The reference's CONFIGS (MODEL.md §2): SD3-medium shift 1, 50 steps, cfg 5;
    // SD3.5-medium shift 3, 50 steps, cfg 5 (SLG layers 7-9 when asked for);
    // SD3.5-large shift 3, 40 steps, cfg 4.5. All dpmpp_2m.
    p->shift = 3.0f;
    p->steps = 50;
    p->cfg = 5.0f;
    p->slg = (sd3_slg_t){.scale = 0, .start = 0.01, .end = 0.20, .layers = 0};
    if (cfg && !cfg->qk_norm) {
        p->shift = 1.0f;
    } else if (cfg && cfg->qk_norm && !cfg->attn2_mask) {
        p->steps = 40;
        p->cfg = 4.5f;
    }
    if (cfg && cfg->attn2_mask && cfg->depth > 9)
        p->slg.layers = (1ull << 7) | (1ull << 8) | (1ull << 9);
    // Size: the reference's 1024x1024, unless the model's position table is smaller (one
    // entry per 16 pixels; 192 = 3072 px on the real models, 13 = 208 px on the embedded tiny
    // model): then the largest square it covers, so a request without a size always runs.
    if (cfg && cfg->pos_max > 0 && cfg->pos_max * 16 < p->width)
        p->width = p->height = cfg->pos_max * 16;
}

void
sd3_gen_params_fini(sd3_gen_params_t *p)
{
    free(p->prompt);
    free(p->negative);
    free(p->init_rgb);
    free(p->model_name);
    memset(p, 0, sizeof *p);
}

int
sd3_gen_params_set_prompt(sd3_gen_params_t *p, const char *prompt, const char *negative,
                          sd3_err_t *err)
{
    char *a = strdup(prompt ? prompt : ""), *b = strdup(negative ? negative : "");
    if (!a || !b) {
        free(a);
        free(b);
        return sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory");
    }
    free(p->prompt);
    free(p->negative);
    p->prompt = a;
    p->negative = b;
    return 0;
}

int
sd3_gen_params_check(const sd3_gen_params_t *p, const sd3_mmdit_config_t *cfg, sd3_err_t *err)
{
    if (!p->prompt || !p->negative)
        return sd3_err_set(err, SD3_EINVAL, "prompt: missing");
    if (p->width <= 0 || p->height <= 0 || p->width % 16 || p->height % 16 ||
        p->width > SD3_GEN_MAX_SIDE || p->height > SD3_GEN_MAX_SIDE)
        return sd3_err_set(err, SD3_EINVAL,
                           "size %dx%d: width and height must be positive multiples of 16, at "
                           "most %d",
                           p->width, p->height, SD3_GEN_MAX_SIDE);
    if (cfg) {
        int gh = p->height / 16, gw = p->width / 16;
        if (gh > cfg->pos_max || gw > cfg->pos_max)
            return sd3_err_set(err, SD3_EINVAL,
                               "size %dx%d: this model's position table covers at most %dx%d "
                               "pixels",
                               p->width, p->height, cfg->pos_max * 16, cfg->pos_max * 16);
        if (p->slg.scale > 0 && p->slg.layers >> cfg->depth)
            return sd3_err_set(err, SD3_EINVAL, "slg: layer out of range [0,%d)", cfg->depth);
    }
    if (p->steps <= 0 || p->steps > SD3_GEN_MAX_STEPS)
        return sd3_err_set(err, SD3_EINVAL, "steps %d: want 1..%d", p->steps, SD3_GEN_MAX_STEPS);
    if (!isfinite(p->cfg) || p->cfg < 0 || p->cfg > 100)
        return sd3_err_set(err, SD3_EINVAL, "cfg %g: want a number in [0, 100]", (double)p->cfg);
    if (!isfinite(p->shift) || p->shift <= 0 || p->shift > 100)
        return sd3_err_set(err, SD3_EINVAL, "shift %g: want a number in (0, 100]",
                           (double)p->shift);
    if (!(p->denoise > 0 && p->denoise <= 1))
        return sd3_err_set(err, SD3_EINVAL, "strength %g: want (0, 1]", p->denoise);
    if (p->denoise < 1 && !p->init_rgb)
        return sd3_err_set(err, SD3_EINVAL, "strength < 1 needs an init image");
    if (p->t5_len < 0 || p->t5_len > 4096)
        return sd3_err_set(err, SD3_EINVAL, "t5 length %d: want 0..4096", p->t5_len);
    if (!isfinite(p->slg.scale) || p->slg.scale < 0 || !(p->slg.start <= p->slg.end))
        return sd3_err_set(err, SD3_EINVAL, "slg: scale must be >= 0 and start <= end");
    return 0;
}

char *
sd3_gen_params_infotext(const sd3_gen_params_t *p)
{
    char extra[160] = "";
    if (p->slg.scale > 0) {
        int n = snprintf(extra, sizeof extra, "SLG scale: %g, SLG layers: \"", (double)p->slg.scale);
        for (int i = 0, first = 1; i < 64 && n > 0 && (size_t)n < sizeof extra; i++)
            if ((p->slg.layers >> i) & 1) {
                n += snprintf(extra + n, sizeof extra - (size_t)n, first ? "%d" : ",%d", i);
                first = 0;
            }
        if (n > 0 && (size_t)n < sizeof extra)
            snprintf(extra + n, sizeof extra - (size_t)n, "\"");
    }
    if (p->shift > 0) {
        size_t len = strlen(extra);
        snprintf(extra + len, sizeof extra - len, "%sShift: %g", len ? ", " : "",
                 (double)p->shift);
    }
    sd3_png_params_t pp = {
        .prompt = p->prompt,
        .negative_prompt = p->negative,
        .steps = p->steps,
        .sampler = p->sampler == SD3_SAMPLER_EULER ? "Euler" : "DPM++ 2M",
        .cfg_scale = p->cfg,
        .seed = p->seed,
        .width = p->width,
        .height = p->height,
        .model = p->model_name,
        .denoise = p->denoise,
        .extra = extra[0] ? extra : NULL,
    };
    return sd3_png_params_format(&pp);
}
