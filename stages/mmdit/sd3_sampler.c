/*  sd3_sampler - rectified-flow sampling (see sd3_sampler.h)
 *
 *  Every formula is written in the reference's float32 operation order (one rounding per
 *  torch op), so the trajectory stays within the f32 noise of the golden runs.  */
#include "sd3_sampler.h"

#include "sd3_schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void
sd3_sampler_state_init(sd3_sampler_state_t *st)
{
    memset(st, 0, sizeof *st);
}

void
sd3_sampler_state_fini(sd3_sampler_state_t *st)
{
    sd3_tensor_destroy(&st->old_denoised);
    st->has_old = false;
    st->step = 0;
}

int
sd3_sampler_kind_from_name(const char *name, sd3_sampler_kind_t *kind, sd3_err_t *err)
{
    if (name && !strcmp(name, "euler")) {
        *kind = SD3_SAMPLER_EULER;
        return 0;
    }
    if (name && (!strcmp(name, "dpmpp_2m") || !strcmp(name, "dpm++2m"))) {
        *kind = SD3_SAMPLER_DPMPP_2M;
        return 0;
    }
    return sd3_err_set(err, SD3_EINVAL, "sampler '%s': unknown (want euler or dpmpp_2m)",
                       name ? name : "");
}

const char *
sd3_sampler_kind_name(sd3_sampler_kind_t kind)
{
    return kind == SD3_SAMPLER_EULER ? "euler" : "dpmpp_2m";
}

bool
sd3_sampler_slg_active(const sd3_sampler_opts_t *opts, int call)
{
    // Reference: step > start * steps and step < end * steps, Python doubles.
    return opts->slg.scale > 0 && opts->slg.layers != 0 &&
           (double)call > opts->slg.start * (double)opts->steps &&
           (double)call < opts->slg.end * (double)opts->steps;
}

static int
s_expect_latent(const sd3_tensor_t *t, const char *what, int64_t batch, const sd3_tensor_t *like,
                sd3_err_t *err)
{
    if (!t || t->dtype != SD3_F32 || t->where != SD3_HOST || t->ndim != 4)
        return sd3_err_set(err, SD3_EINVAL, "sampler: %s must be a host f32 [B,Z,h,w] tensor",
                           what);
    int64_t shape[4] = {batch, -1, -1, -1};
    if (like)
        for (int i = 1; i < 4; i++)
            shape[i] = like->shape[i];
    return sd3_tensor_expect(t, what, SD3_F32, 4, shape, err);
}

int
sd3_sampler_start(float sigma0, const sd3_tensor_t *noise, const sd3_tensor_t *latent,
                  sd3_tensor_t *x, sd3_err_t *err)
{
    if (s_expect_latent(noise, "noise", 1, NULL, err) || s_expect_latent(x, "x", 1, noise, err) ||
        (latent && s_expect_latent(latent, "latent", 1, noise, err)))
        return err->code;
    size_t n = (size_t)sd3_tensor_numel(noise);
    const float *nz = noise->data, *lat = latent ? latent->data : NULL;
    float *out = x->data;
    float keep = 1.0f - sigma0;
    for (size_t i = 0; i < n; i++) // noise_scaling: sigma * noise + (1 - sigma) * latent
        out[i] = sigma0 * nz[i] + keep * (lat ? lat[i] : 0.0f);
    return 0;
}

int
sd3_sampler_guide(const sd3_sampler_opts_t *opts, const sd3_tensor_t *x, float sigma,
                  const sd3_tensor_t *v, const sd3_tensor_t *v_skip, sd3_tensor_t *denoised,
                  sd3_sampler_branches_t *branches, sd3_err_t *err)
{
    if (s_expect_latent(x, "x", 1, NULL, err) || s_expect_latent(v, "v", 2, x, err) ||
        s_expect_latent(denoised, "denoised", 1, x, err) ||
        (v_skip && s_expect_latent(v_skip, "v_skip", 1, x, err)))
        return err->code;
    const sd3_tensor_t *outs[3] = {branches ? branches->cond : NULL,
                                   branches ? branches->uncond : NULL,
                                   branches ? branches->skip : NULL};
    for (int i = 0; i < 3; i++)
        if (outs[i] && s_expect_latent(outs[i], "branch output", 1, x, err))
            return err->code;
    size_t n = (size_t)sd3_tensor_numel(x);
    const float *xs = x->data, *vc = v->data, *vu = vc + n, *vs = v_skip ? v_skip->data : NULL;
    float *out = denoised->data;
    const float cfg = opts->cfg_scale, slg = opts->slg.scale;
    for (size_t i = 0; i < n; i++) {
        // calculate_denoised: x - v * sigma (model output rounded to f32 first)
        float dc = xs[i] - vc[i] * sigma, du = xs[i] - vu[i] * sigma;
        float d = du + (dc - du) * cfg;
        if (vs) {
            float ds = xs[i] - vs[i] * sigma;
            d = d + (dc - ds) * slg;
            if (outs[2])
                ((float *)outs[2]->data)[i] = ds;
        }
        if (outs[0])
            ((float *)outs[0]->data)[i] = dc;
        if (outs[1])
            ((float *)outs[1]->data)[i] = du;
        out[i] = d;
    }
    return 0;
}

int
sd3_sampler_step(const sd3_sampler_opts_t *opts, const float *sigmas, int n_sigmas,
                 sd3_sampler_state_t *st, sd3_tensor_t *x, const sd3_tensor_t *denoised,
                 sd3_err_t *err)
{
    if (st->step < 0 || st->step + 1 >= n_sigmas)
        return sd3_err_set(err, SD3_EINVAL, "sampler: step %d of a %d-sigma schedule", st->step,
                           n_sigmas);
    if (s_expect_latent(x, "x", 1, NULL, err) || s_expect_latent(denoised, "denoised", 1, x, err))
        return err->code;
    const int i = st->step;
    const float s = sigmas[i], s_next = sigmas[i + 1];
    if (!(s > 0) || !(s_next >= 0) || !isfinite(s))
        return sd3_err_set(err, SD3_EINVAL, "sampler: sigma %g -> %g", (double)s, (double)s_next);
    size_t n = (size_t)sd3_tensor_numel(x);
    float *xs = x->data;
    const float *d = denoised->data;
    if (opts->kind == SD3_SAMPLER_EULER) {
        float dt = s_next - s;
        for (size_t k = 0; k < n; k++) {
            float deriv = (xs[k] - d[k]) / s; // to_d
            xs[k] = xs[k] + deriv * dt;
        }
    } else if (s_next == 0.0f) {
        // sigma_fn(t_next)/sigma_fn(t) = 0 and expm1(-inf) = -1: x = denoised exactly.
        memcpy(xs, d, n * sizeof *xs);
    } else {
        float t = -logf(s), t_next = -logf(s_next), h = t_next - t;
        float ratio = expf(-t_next) / expf(-t), em1 = expm1f(-h);
        if (!st->has_old) {
            for (size_t k = 0; k < n; k++)
                xs[k] = ratio * xs[k] - em1 * d[k];
        } else {
            if (i < 1 || !st->old_denoised)
                return sd3_err_set(err, SD3_EINVAL,
                                   "sampler: DPM++ 2M state without a "
                                   "previous step");
            float h_last = t - (-logf(sigmas[i - 1]));
            float r = h_last / h;
            float inv = 1.0f / (2.0f * r), c1 = 1.0f + inv;
            const float *old = st->old_denoised->data;
            for (size_t k = 0; k < n; k++) {
                float dd = c1 * d[k] - inv * old[k];
                xs[k] = ratio * xs[k] - em1 * dd;
            }
        }
    }
    if (opts->kind == SD3_SAMPLER_DPMPP_2M) {
        if (!st->old_denoised &&
            !(st->old_denoised = sd3_tensor_new_err(SD3_F32, 4, x->shape, "old_denoised", err)))
            return err->code;
        if (sd3_tensor_numel(st->old_denoised) != (int64_t)n)
            return sd3_err_set(err, SD3_EINVAL, "sampler: old_denoised has another shape");
        memcpy(st->old_denoised->data, d, n * sizeof *d);
        st->has_old = true;
    }
    st->step = i + 1;
    return 0;
}

void
sd3_sampler_process_out(const float *z, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = z[i] / 1.5305f + 0.0609f;
}

// ---- the whole loop on one node -------------------------------------------------------------

// dst[b] = src for b < B: copies one [1, ...] host tensor into batch item b of dst.
static void
s_put(sd3_tensor_t *dst, int b, const sd3_tensor_t *src)
{
    size_t n = (size_t)sd3_tensor_numel(src);
    memcpy((float *)dst->data + (size_t)b * n, src->data, n * sizeof(float));
}

int
sd3_sampler_run(sd3_mmdit_t *mmdit, const sd3_sampler_opts_t *opts, const float *sigmas,
                int n_sigmas, const sd3_tensor_t *x_start, const sd3_sampler_cond_t *cond,
                const sd3_sampler_cond_t *uncond, sd3_tensor_t *out, sd3_sampler_tap_fn tap,
                void *user, sd3_err_t *err)
{
    const sd3_mmdit_config_t *cfg = sd3_mmdit_config(mmdit);
    sd3_tensor_t *x = NULL, *x2 = NULL, *ctx2 = NULL, *y2 = NULL, *v = NULL, *v_skip = NULL;
    sd3_tensor_t *den = NULL, *dc = NULL, *du = NULL, *ds = NULL;
    sd3_sampler_state_t st;
    sd3_sampler_state_init(&st);
    int rc = 0;
    if (s_expect_latent(x_start, "x_start", 1, NULL, err) ||
        s_expect_latent(out, "out", 1, x_start, err))
        return err->code;
    if (n_sigmas < 2)
        return sd3_err_set(err, SD3_EINVAL, "sampler: %d sigmas, want at least 2", n_sigmas);
    if (!cond || !uncond || !cond->context || !uncond->context || !cond->y || !uncond->y ||
        sd3_tensor_expect(cond->context, "cond context", SD3_F32, 3,
                          (int64_t[]){1, -1, cfg->context_in}, err) ||
        sd3_tensor_expect(uncond->context, "uncond context", SD3_F32, 3, cond->context->shape,
                          err) ||
        sd3_tensor_expect(cond->y, "cond y", SD3_F32, 2, (int64_t[]){1, cfg->adm_in}, err) ||
        sd3_tensor_expect(uncond->y, "uncond y", SD3_F32, 2, (int64_t[]){1, cfg->adm_in}, err))
        return err->code ? err->code : sd3_err_set(err, SD3_EINVAL, "sampler: missing cond");
    const int64_t *ls = x_start->shape, L = cond->context->shape[1];
    if (!(x = sd3_tensor_clone(x_start)) ||
        !(x2 = sd3_tensor_new(SD3_F32, 4, (int64_t[]){2, ls[1], ls[2], ls[3]})) ||
        !(v = sd3_tensor_new(SD3_F32, 4, (int64_t[]){2, ls[1], ls[2], ls[3]})) ||
        !(v_skip = sd3_tensor_new(SD3_F32, 4, ls)) || !(den = sd3_tensor_new(SD3_F32, 4, ls)) ||
        !(dc = sd3_tensor_new(SD3_F32, 4, ls)) || !(du = sd3_tensor_new(SD3_F32, 4, ls)) ||
        !(ds = sd3_tensor_new(SD3_F32, 4, ls)) ||
        !(ctx2 = sd3_tensor_new(SD3_F32, 3, (int64_t[]){2, L, cfg->context_in})) ||
        !(y2 = sd3_tensor_new(SD3_F32, 2, (int64_t[]){2, cfg->adm_in}))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "sampler: out of memory");
        goto done;
    }
    // One batch of two, cond first (reference CFGDenoiser).
    s_put(ctx2, 0, cond->context);
    s_put(ctx2, 1, uncond->context);
    s_put(y2, 0, cond->y);
    s_put(y2, 1, uncond->y);
    for (int i = 0; i + 1 < n_sigmas; i++) {
        const float sigma = sigmas[i], ts = sd3_schedule_timestep(sigma);
        const float t2[2] = {ts, ts};
        if (tap)
            tap(user, i, "x_in", x);
        s_put(x2, 0, x);
        s_put(x2, 1, x);
        if ((rc = sd3_mmdit_forward(mmdit, x2, t2, y2, ctx2, 0, v, err)) != 0)
            goto done;
        bool slg = sd3_sampler_slg_active(opts, i);
        if (slg && (rc = sd3_mmdit_forward(mmdit, x, &ts, cond->y, cond->context, opts->slg.layers,
                                           v_skip, err)) != 0)
            goto done;
        sd3_sampler_branches_t br = {.cond = dc, .uncond = du, .skip = slg ? ds : NULL};
        if ((rc = sd3_sampler_guide(opts, x, sigma, v, slg ? v_skip : NULL, den, &br, err)) != 0)
            goto done;
        if (tap) {
            tap(user, i, "denoised", den);
            tap(user, i, "denoised_cond", dc);
            tap(user, i, "denoised_uncond", du);
            if (slg)
                tap(user, i, "denoised_skip", ds);
        }
        if ((rc = sd3_sampler_step(opts, sigmas, n_sigmas, &st, x, den, err)) != 0)
            goto done;
    }
    memcpy(out->data, x->data, sd3_tensor_nbytes(x));
done:;
    sd3_sampler_state_fini(&st);
    sd3_tensor_t **all[] = {&x, &x2, &ctx2, &y2, &v, &v_skip, &den, &dc, &du, &ds};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
        sd3_tensor_destroy(all[k]);
    return rc;
}
