/*  sd3_local - the whole pipeline in one process (see sd3_local.h)  */
#include "sd3_local.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sd3_clock.h"
#include "sd3_log.h"
#include "sd3_png.h"
#include "sd3_rng.h"
#include "sd3_schedule.h"

struct sd3_local {
    sd3_backend_t *be;
    sd3_model_t *model;
    sd3_weights_t *w_mmdit, *w_vae;
    sd3_enc_stage_t *enc;
    sd3_dit_stage_t *ranges[17];
    int n_ranges;
    sd3_vae_stage_t *vae;
    sd3_mmdit_config_t cfg;
    sd3_vae_tile_t tile;
};

void
sd3_local_result_fini(sd3_local_result_t *r)
{
    sd3_tensor_destroy(&r->rgb);
    sd3_tensor_destroy(&r->latent);
    free(r->png);
    memset(r, 0, sizeof *r);
}

sd3_local_t *
sd3_local_new(const sd3_local_opts_t *opts, sd3_err_t *err)
{
    sd3_local_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
        return NULL;
    }
    self->tile = opts->vae_tile;
    if (!opts->model_path) {
        sd3_err_set(err, SD3_EINVAL, "pipeline: no model path");
        goto fail;
    }
    if (!(self->be = sd3_backend_new(opts->backend, opts->n_threads, err)) ||
        sd3_backend_set_precision(self->be, opts->precision ? opts->precision : "f32", err) ||
        !(self->model = sd3_model_open(opts->model_path, err)))
        goto fail;
    if (!sd3_model_has(self->model, SD3_COMP_MMDIT) || !sd3_model_has(self->model, SD3_COMP_VAE)) {
        sd3_err_set(err, SD3_EFORMAT, "%s: the checkpoint has no %s", opts->model_path,
                    sd3_model_has(self->model, SD3_COMP_MMDIT) ? "VAE" : "MMDiT");
        goto fail;
    }
    if (!(self->w_mmdit = sd3_weights_open(self->model, SD3_COMP_MMDIT, err)) ||
        sd3_mmdit_config_detect(self->w_mmdit, &self->cfg, err) != 0)
        goto fail;
    int prev = 0;
    for (int i = 0; i <= opts->n_splits; i++) {
        int end = i < opts->n_splits ? opts->splits[i] : self->cfg.depth;
        if (i >= 16 || end <= prev || end > self->cfg.depth) {
            sd3_err_set(err, SD3_EINVAL, "pipeline: split points must rise inside (0, %d)",
                        self->cfg.depth);
            goto fail;
        }
        if (!(self->ranges[i] = sd3_dit_stage_new(self->be, self->w_mmdit, prev, end, err)))
            goto fail;
        self->n_ranges = i + 1;
        prev = end;
    }
    if (!(self->w_vae = sd3_weights_open(self->model, SD3_COMP_VAE, err)) ||
        !(self->vae = sd3_vae_stage_new(self->be, self->w_vae, err)))
        goto fail;
    if (!(self->enc = sd3_enc_stage_new(self->be, self->model, opts->tokenizer_dir,
                                        opts->load_t5, opts->cache_bytes, err)))
        goto fail;
    sd3_log_info("pipeline", "model=%s arch=%s layout=%s ranges=%d backend=%s",
                 opts->model_path, sd3_mmdit_config_name(&self->cfg),
                 sd3_layout_name(sd3_model_layout(self->model)), self->n_ranges,
                 self->be->ops->name);
    return self;
fail:
    sd3_local_destroy(&self);
    return NULL;
}

void
sd3_local_destroy(sd3_local_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_local_t *self = *self_p;
    sd3_enc_stage_destroy(&self->enc);
    sd3_vae_stage_destroy(&self->vae);
    for (int i = 0; i < self->n_ranges; i++)
        sd3_dit_stage_destroy(&self->ranges[i]);
    sd3_weights_destroy(&self->w_vae);
    sd3_weights_destroy(&self->w_mmdit);
    sd3_model_destroy(&self->model);
    sd3_backend_destroy(&self->be);
    free(self);
    *self_p = NULL;
}

const sd3_mmdit_config_t *
sd3_local_config(const sd3_local_t *self)
{
    return &self->cfg;
}

sd3_enc_stage_t *
sd3_local_encoder(sd3_local_t *self)
{
    return self->enc;
}

const char *
sd3_local_arch(const sd3_local_t *self)
{
    return sd3_mmdit_config_name(&self->cfg);
}

#define TAP(name, t)                                                                          \
    do {                                                                                      \
        if (tap)                                                                              \
            tap(tap_user, (name), (t));                                                       \
    } while (0)

// One sampling step through the chain of ranges (the calls a cluster makes).
static int
s_step(sd3_local_t *self, sd3_dit_job_t *job, sd3_tensor_t *denoised, sd3_err_t *err)
{
    sd3_mmdit_act_t act, act_skip;
    int rc = sd3_dit_stage_embed(self->ranges[0], job, &act, &act_skip, err);
    if (rc != 0)
        return rc;
    for (int r = 0; r < self->n_ranges && rc == 0; r++)
        rc = sd3_dit_stage_blocks(self->ranges[r], job->opts.slg.layers, &act, &act_skip, err);
    if (rc == 0)
        rc = sd3_dit_stage_finish(self->ranges[self->n_ranges - 1], job, &act, &act_skip,
                                  denoised, err);
    sd3_mmdit_act_fini(self->be, &act);
    sd3_mmdit_act_fini(self->be, &act_skip);
    return rc;
}

int
sd3_local_generate(sd3_local_t *self, const sd3_gen_params_t *p, const sd3_tensor_t *encode_noise,
                   sd3_local_progress_fn progress, void *progress_user, sd3_local_tap_fn tap,
                   void *tap_user, sd3_local_result_t *out, sd3_err_t *err)
{
    sd3_tensor_t *cctx = NULL, *cy = NULL, *uctx = NULL, *uy = NULL, *noise = NULL;
    sd3_tensor_t *latent = NULL, *x0 = NULL, *den = NULL, *rgb_in = NULL, *enoise = NULL;
    sd3_tensor_t *z = NULL, *image = NULL, *rgb = NULL;
    sd3_dit_job_t *job = NULL;
    float *sigmas = NULL;
    char *infotext = NULL;
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = sd3_gen_params_check(p, &self->cfg, err)) != 0)
        return rc;
    const int Z = self->cfg.in_channels, h = p->height / 8, w = p->width / 8;
    const int64_t lshape[4] = {1, Z, h, w};

    // 1. conditioning (cached)
    double t0 = sd3_now_s();
    if ((rc = sd3_enc_stage_encode(self->enc, p->prompt, p->no_t5, p->t5_len,
                                   self->cfg.context_in, &cctx, &cy, err)) != 0 ||
        (rc = sd3_enc_stage_encode(self->enc, p->negative, p->no_t5, p->t5_len,
                                   self->cfg.context_in, &uctx, &uy, err)) != 0)
        goto done;
    out->seconds_encode = sd3_now_s() - t0;
    TAP("cond.context", cctx);
    TAP("cond.pooled", cy);
    TAP("uncond.context", uctx);
    TAP("uncond.pooled", uy);

    // 2. noise, schedule, start latent
    if (!(noise = sd3_rng_noise(p->seed, 4, lshape, err))) {
        rc = err->code;
        goto done;
    }
    TAP("in.noise", noise);
    int start = 0, n_sigmas = p->steps + 1;
    if (!(sigmas = malloc(sizeof(float) * (size_t)n_sigmas))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
        goto done;
    }
    if ((rc = sd3_schedule_sigmas(p->steps, p->shift, sigmas, err)) != 0)
        goto done;
    if (p->denoise < 1.0) {
        if ((rc = sd3_schedule_start_index(p->steps, p->denoise, &start, err)) != 0)
            goto done;
        if (start >= p->steps) {
            rc = sd3_err_set(err, SD3_EINVAL, "strength %g leaves no step of %d", p->denoise,
                             p->steps);
            goto done;
        }
        if (p->init_w != p->width || p->init_h != p->height) {
            rc = sd3_err_set(err, SD3_EINVAL, "init image is %dx%d, the request %dx%d: resize "
                             "it first", p->init_w, p->init_h, p->width, p->height);
            goto done;
        }
        if (!(rgb_in = sd3_tensor_new_view(SD3_U8, 3, (int64_t[]){p->height, p->width, 3},
                                           p->init_rgb))) {
            rc = sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
            goto done;
        }
        if (!encode_noise && !(enoise = sd3_rng_noise(p->seed + 1, 4, lshape, err))) {
            rc = err->code;
            goto done;
        }
        if ((rc = sd3_vae_stage_encode(self->vae, rgb_in, encode_noise ? encode_noise : enoise,
                                       &latent, err)) != 0)
            goto done;
        TAP("in.latent", latent);
    }
    int n_used = n_sigmas - start;
    sd3_tensor_t sig_view;
    sd3_tensor_view_init(&sig_view, SD3_F32, 1, (int64_t[]){n_used}, sigmas + start);
    TAP("sigmas", &sig_view);
    if (!(x0 = sd3_tensor_new_err(SD3_F32, 4, lshape, "x0", err)) ||
        !(den = sd3_tensor_new_err(SD3_F32, 4, lshape, "denoised", err))) {
        rc = err->code;
        goto done;
    }
    if ((rc = sd3_sampler_start(sigmas[start], noise, latent, x0, err)) != 0)
        goto done;
    TAP("x0", x0);

    // 3. the sampling loop through the chain of ranges
    sd3_sampler_opts_t sopts = {.kind = p->sampler, .cfg_scale = p->cfg, .steps = p->steps,
                                .slg = p->slg};
    if (!(job = sd3_dit_job_new(&sopts, sigmas + start, n_used, cctx, cy, uctx, uy, x0, err))) {
        rc = err->code;
        goto done;
    }
    t0 = sd3_now_s();
    for (int i = 0; !sd3_dit_job_done(job); i++) {
        char name[48];
        double ts = sd3_now_s();
        snprintf(name, sizeof name, "step%d.x", i);
        TAP(name, job->x);
        if ((rc = s_step(self, job, den, err)) != 0)
            goto done;
        snprintf(name, sizeof name, "step%d.denoised", i);
        TAP(name, den);
        if (progress)
            progress(progress_user, i + 1, n_used - 1, sd3_now_s() - ts);
    }
    out->seconds_steps = sd3_now_s() - t0;
    TAP("out.latent", job->x);

    // 4. decode: the calls of sd3_vae_decode_rgb8, spelled out so the taps see each result
    t0 = sd3_now_s();
    const int H = p->height, W = p->width;
    if (!(z = sd3_tensor_clone(job->x)) ||
        !(image = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 3, H, W}, "image", err)) ||
        !(rgb = sd3_tensor_new_err(SD3_U8, 3, (int64_t[]){H, W, 3}, "rgb", err))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
        goto done;
    }
    sd3_vae_process_out(z->data, (size_t)sd3_tensor_numel(z));
    TAP("out.latent_vae", z);
    if ((rc = sd3_vae_decode(sd3_vae_stage_vae(self->vae), z, image, &self->tile, err)) != 0)
        goto done;
    TAP("out.image_f32", image);
    sd3_vae_image_to_rgb8(image->data, H, W, rgb->data);
    TAP("out.image_u8", rgb);
    if (!(infotext = sd3_gen_params_infotext(p))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "pipeline: out of memory");
        goto done;
    }
    if ((rc = sd3_png_encode(rgb->data, W, H, infotext, &out->png, &out->png_size, err)) != 0)
        goto done;
    out->seconds_decode = sd3_now_s() - t0;
    out->rgb = rgb;
    rgb = NULL;
    out->latent = job->x;
    job->x = NULL;
done:
    if (rc != 0)
        sd3_local_result_fini(out);
    free(infotext);
    free(sigmas);
    sd3_dit_job_destroy(&job);
    sd3_tensor_t **all[] = {&cctx, &cy,     &uctx, &uy,   &noise, &latent, &x0,
                            &den,  &rgb_in, &enoise, &z, &image, &rgb};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        sd3_tensor_destroy(all[k]);
    return rc;
}
