/*  sd3ctl_eval_pipeline - `sd3ctl eval pipeline`: a whole prompt-to-image run against an e2e
 *  golden case (TESTVECTORS-e2e.md): every setting from the file's metadata, the run through
 *  the one-process pipeline (the stage calls a cluster makes), and every stored tensor
 *  compared: tokens exact, conditioning 1e-4, latents and image_f32 1e-3, image_u8 within 1
 *  on at most 0.2 % of the bytes.  */
#include <cjson/cJSON.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd3_local.h"
#include "sd3_tok.h"
#include "sd3ctl.h"

typedef struct {
    sd3_eval_t *ev;
    double atol_cond, atol_latent;
} s_tap_t;

// image_u8: every byte within 1, at most 0.2 % of them off at all.
static void
s_check_u8(sd3_eval_t *ev, const char *name, const sd3_tensor_t *got)
{
    sd3_tensor_t want;
    sd3_err_t err = {0};
    if (sd3_st_get(sd3_eval_vectors(ev), name, &want, &err) != 0 || want.dtype != SD3_U8 ||
        sd3_tensor_numel(&want) != sd3_tensor_numel(got)) {
        sd3_eval_record(ev, name, false, "missing or of another shape");
        return;
    }
    size_t n = (size_t)sd3_tensor_numel(got), off = 0, worst = 0;
    const uint8_t *a = got->data, *b = want.data;
    for (size_t i = 0; i < n; i++) {
        size_t d = a[i] > b[i] ? (size_t)(a[i] - b[i]) : (size_t)(b[i] - a[i]);
        off += d != 0;
        worst = d > worst ? d : worst;
    }
    size_t allowed = n / 500; // 0.2 %
    double psnr = sd3_eval_psnr_u8(a, b, n);
    if (!strcmp(sd3_eval_precision(ev), "bf16")) { // measured floor (ARCHITECTURE.md)
        double floor = sd3_eval_psnr(ev, 30.0);
        sd3_eval_record(ev, name, psnr >= floor, "psnr=%.2f dB (floor %.1f) max_off=%zu", psnr,
                        floor, worst);
        return;
    }
    sd3_eval_record(ev, name, worst <= 1 && off <= allowed,
                    "bytes_off=%zu of %zu (allowed %zu) max_off=%zu psnr=%.2f dB", off, n, allowed,
                    worst, psnr);
}

static void
s_tap(void *user, const char *name, const sd3_tensor_t *t)
{
    s_tap_t *tp = user;
    if (!sd3_st_has(sd3_eval_vectors(tp->ev), name))
        return; // an intermediate this golden file does not store
    if (!strcmp(name, "out.image_u8")) {
        s_check_u8(tp->ev, name, t);
        return;
    }
    bool cond = !strncmp(name, "cond.", 5) || !strncmp(name, "uncond.", 7);
    bool exact = !strcmp(name, "in.noise") || !strcmp(name, "sigmas") || !strcmp(name, "x0");
    double atol = cond ? tp->atol_cond : tp->atol_latent;
    sd3_eval_check(tp->ev, name, t, exact && strcmp(name, "x0") ? sd3_eval_atol(tp->ev, 2e-6) : atol,
                   0);
}

static const char *
s_meta(const sd3_st_t *st, const char *key, sd3_err_t *err)
{
    const char *v = sd3_st_metadata(st, key);
    if (!v)
        sd3_err_set(err, SD3_EFORMAT, "vectors: metadata '%s' missing", key);
    return v;
}

// A metadata value that holds a JSON string ("\"a photo\"") decoded into a fresh string.
static char *
s_meta_json_string(const sd3_st_t *st, const char *key, sd3_err_t *err)
{
    const char *v = s_meta(st, key, err);
    char *out = NULL;
    if (!v)
        return NULL;
    cJSON *j = cJSON_Parse(v);
    if (j && cJSON_IsString(j))
        out = strdup(j->valuestring);
    else
        sd3_err_set(err, SD3_EFORMAT, "vectors: metadata '%s' is not a JSON string", key);
    cJSON_Delete(j);
    return out;
}

static int
s_meta_num(const sd3_st_t *st, const char *key, double *out, sd3_err_t *err)
{
    const char *v = s_meta(st, key, err);
    char *end;
    if (!v)
        return err->code;
    *out = strtod(v, &end);
    if (end == v || !isfinite(*out))
        return sd3_err_set(err, SD3_EFORMAT, "vectors: metadata '%s' = '%s' is not a number",
                           key, v);
    return 0;
}

// Token ids compared exactly through the tokenizer the encoder stage uses.
static void
s_check_tokens(sd3_eval_t *ev, sd3_tokenizer_t *tok, const char *which, const char *prompt)
{
    sd3_tokens_t t;
    sd3_err_t err = {0};
    char name[64];
    if (sd3_tokenizer_encode(tok, prompt, strlen(prompt), NULL, &t, &err) != 0) {
        sd3_eval_record(ev, which, false, "tokenize: %s", err.msg);
        return;
    }
    struct {
        const char *suffix;
        const int32_t *ids;
        size_t n;
    } parts[] = {{"tokens_l", t.clip_l, SD3_TOK_CLIP_LEN},
                 {"tokens_g", t.clip_g, SD3_TOK_CLIP_LEN},
                 {"tokens_t5", t.t5, t.n_t5}};
    for (size_t k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "%s.%s", which, parts[k].suffix);
        if (!sd3_st_has(sd3_eval_vectors(ev), name))
            continue;
        sd3_tensor_t got;
        sd3_tensor_view_init(&got, SD3_I32, 2, (int64_t[]){1, (int64_t)parts[k].n},
                             (void *)parts[k].ids);
        sd3_eval_check(ev, name, &got, 0, 0);
    }
    sd3_tokens_fini(&t);
}

int
sd3_eval_pipeline(sd3_eval_t *ev, sd3_err_t *err)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    sd3_local_opts_t lo = SD3_LOCAL_OPTS_INIT;
    sd3_local_t *local = NULL;
    sd3_local_result_t res = {0};
    sd3_gen_params_t p;
    sd3_tokenizer_t *tok = NULL;
    sd3_tensor_t *enoise = NULL, *img_u8 = NULL;
    char *prompt = NULL, *negative = NULL, tokdir[4096], vdir[4096];
    double seed = 0, steps = 0, cfg = 0, shift = 0, width = 0, height = 0, denoise = 1;
    const char *sampler;
    int rc;
    sd3_gen_params_init(&p, NULL);
    if (!st || !sd3_eval_model(ev))
        return sd3_err_set(err, SD3_EINVAL, "pipeline: needs --model and a .safetensors case");
    if (!(prompt = s_meta_json_string(st, "prompt", err)) ||
        !(negative = s_meta_json_string(st, "negative_prompt", err)) ||
        s_meta_num(st, "seed", &seed, err) || s_meta_num(st, "steps", &steps, err) ||
        s_meta_num(st, "cfg_scale", &cfg, err) || s_meta_num(st, "shift", &shift, err) ||
        s_meta_num(st, "width", &width, err) || s_meta_num(st, "height", &height, err) ||
        s_meta_num(st, "denoise", &denoise, err) || !(sampler = s_meta(st, "sampler", err))) {
        rc = err->code;
        goto done;
    }
    // Range first (the int casts below): a double outside the target type makes the conversion undefined.
    if (!(seed >= 0 && seed < 18446744073709551616.0) || !(steps >= 1 && steps <= INT_MAX) ||
        !(width >= 1 && width <= INT_MAX) || !(height >= 1 && height <= INT_MAX)) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "vectors: metadata seed %g / steps %g / width %g / height %g out of range",
                         seed, steps, width, height);
        goto done;
    }
    // A checkpoint without tokenizer files: the golden set keeps them in ../tokenizers.
    snprintf(vdir, sizeof vdir, "%s", sd3_eval_vectors_path(ev));
    snprintf(tokdir, sizeof tokdir, "%s/../tokenizers", dirname(vdir));
    lo.model_path = sd3_eval_model(ev);
    lo.precision = sd3_eval_precision(ev);
    lo.tokenizer_dir = access(tokdir, R_OK) == 0 ? tokdir : NULL;
    {
        sd3_model_t *m = sd3_model_open(lo.model_path, err);
        if (!m) {
            rc = err->code;
            goto done;
        }
        if (sd3_model_tokenizer_dir(m, 0))
            lo.tokenizer_dir = NULL;
        sd3_model_destroy(&m);
    }
    if (!(local = sd3_local_new(&lo, err))) {
        rc = err->code;
        goto done;
    }
    sd3_gen_params_init(&p, sd3_local_config(local));
    if ((rc = sd3_gen_params_set_prompt(&p, prompt, negative, err)) != 0 ||
        (rc = sd3_sampler_kind_from_name(sampler, &p.sampler, err)) != 0)
        goto done;
    p.seed = (uint64_t)seed;
    p.steps = (int)steps;
    p.cfg = (float)cfg;
    p.shift = (float)shift;
    p.width = (int)width;
    p.height = (int)height;
    p.denoise = denoise;
    p.slg.scale = 0;
    const char *slg = sd3_st_metadata(st, "skip_layer_config");
    if (slg) {
        cJSON *j = cJSON_Parse(slg);
        cJSON *scale = cJSON_GetObjectItem(j, "scale"), *layers = cJSON_GetObjectItem(j, "layers");
        if (cJSON_IsNumber(scale) && cJSON_IsArray(layers)) {
            cJSON *e;
            p.slg.scale = (float)scale->valuedouble;
            p.slg.start = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "start"));
            p.slg.end = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "end"));
            p.slg.layers = 0;
            cJSON_ArrayForEach(e, layers) if (cJSON_IsNumber(e) && e->valueint >= 0 &&
                                              e->valueint < 64) p.slg.layers |= 1ull
                                                                                << e->valueint;
        }
        cJSON_Delete(j);
    }
    if (denoise < 1.0) {
        sd3_tensor_t view;
        if (sd3_st_get(st, "in.image_u8", &view, err) != 0 ||
            !(enoise = sd3_eval_input(ev, "in.encode_noise", err))) {
            rc = err->code;
            goto done;
        }
        if (view.dtype != SD3_U8 || view.ndim != 3 || view.shape[2] != 3) {
            rc = sd3_err_set(err, SD3_EFORMAT, "pipeline: in.image_u8 is not U8 [H, W, 3]");
            goto done;
        }
        p.init_h = (int)view.shape[0];
        p.init_w = (int)view.shape[1];
        if (!(p.init_rgb = malloc(sd3_tensor_nbytes(&view)))) {
            rc = sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
            goto done;
        }
        memcpy(p.init_rgb, view.data, sd3_tensor_nbytes(&view));
        // in.image is derived from in.image_u8: compare it too.
        if (sd3_st_has(st, "in.image")) {
            if (!(img_u8 = sd3_tensor_new_err(SD3_F32, 4,
                                              (int64_t[]){1, 3, p.init_h, p.init_w},
                                              "in.image", err))) {
                rc = err->code;
                goto done;
            }
            sd3_vae_rgb8_to_image(p.init_rgb, p.init_h, p.init_w, img_u8->data);
            sd3_eval_check(ev, "in.image", img_u8, sd3_eval_atol(ev, 1e-6), 0);
        }
    }
    // Tokens, through the encoder stage's tokenizer.
    if (!(tok = sd3_tokenizer_new(lo.tokenizer_dir ? lo.tokenizer_dir : lo.model_path, err))) {
        rc = err->code;
        goto done;
    }
    s_check_tokens(ev, tok, "cond", prompt);
    s_check_tokens(ev, tok, "uncond", negative);
    s_tap_t tp = {.ev = ev, .atol_cond = sd3_eval_atol(ev, 1e-4),
                  .atol_latent = sd3_eval_atol(ev, 1e-3)};
    rc = sd3_local_generate(local, &p, enoise, NULL, NULL, s_tap, &tp, &res, err);
done:
    sd3_local_result_fini(&res);
    sd3_tokenizer_destroy(&tok);
    sd3_local_destroy(&local);
    sd3_gen_params_fini(&p);
    sd3_tensor_destroy(&enoise);
    sd3_tensor_destroy(&img_u8);
    free(prompt);
    free(negative);
    return rc;
}
