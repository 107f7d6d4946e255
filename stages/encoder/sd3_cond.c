/*  sd3_cond - the SD3 conditioning (see sd3_cond.h)  */
#include "sd3_cond.h"

#include "sd3_embcache.h"
#include "sd3_safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_MAX_CONFIG (1u << 20) // a config.json is a few hundred bytes

struct sd3_cond {
    sd3_backend_t *be;
    sd3_weights_t *w_l, *w_g, *w_t5;
    sd3_clip_t *clip_l, *clip_g;
    sd3_t5_t *t5;
    uint64_t fingerprint[2];
};

// -- opening -------------------------------------------------------------------------------

// Reads a small text file; NULL when absent or unreadable (a config is optional).
static char *
s_read_small(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(S_MAX_CONFIG + 1);
    size_t n = buf ? fread(buf, 1, S_MAX_CONFIG, f) : 0;
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    return buf;
}

// The `config` metadata string of a safetensors file, copied; NULL when absent.
static char *
s_file_config(const char *path)
{
    struct stat sb;
    if (!path || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
        return NULL;
    sd3_st_t *st = sd3_st_open(path, NULL);
    if (!st)
        return NULL;
    const char *cfg = sd3_st_metadata(st, "config");
    char *copy = cfg ? strdup(cfg) : NULL;
    sd3_st_destroy(&st);
    return copy;
}

char *
sd3_cond_config_json(const sd3_model_t *model, const char *file_path, sd3_component_t comp)
{
    char *cfg = s_file_config(file_path);
    if (cfg || !model || sd3_model_layout(model) != SD3_LAYOUT_DIFFUSERS)
        return cfg;
    const char *sub = comp == SD3_COMP_CLIP_L   ? "text_encoder"
                      : comp == SD3_COMP_CLIP_G ? "text_encoder_2"
                      : comp == SD3_COMP_T5     ? "text_encoder_3"
                                                : NULL;
    char path[4096];
    if (!sub)
        return NULL;
    snprintf(path, sizeof path, "%s/%s/config.json", sd3_model_path(model), sub);
    return s_read_small(path);
}

static int
s_build(sd3_cond_t *self, const char *cfg_l, const char *cfg_g, const char *cfg_t5, sd3_err_t *err)
{
    sd3_clip_config_t cl, cg;
    sd3_t5_config_t ct;
    int rc;
    if ((rc = sd3_clip_config_detect(self->w_l, SD3_COMP_CLIP_L, cfg_l, &cl, err)) ||
        !(self->clip_l = sd3_clip_new(self->be, self->w_l, &cl, err)))
        return sd3_err_prefix(err, "CLIP-L");
    if ((rc = sd3_clip_config_detect(self->w_g, SD3_COMP_CLIP_G, cfg_g, &cg, err)) ||
        !(self->clip_g = sd3_clip_new(self->be, self->w_g, &cg, err)))
        return sd3_err_prefix(err, "CLIP-G");
    if (cg.proj_dim <= 0)
        return sd3_err_set(err, SD3_EFORMAT,
                           "CLIP-G: no text_projection.weight (SD3's pooled "
                           "vector is the projected one)");
    if (self->w_t5 && ((rc = sd3_t5_config_detect(self->w_t5, cfg_t5, &ct, err)) ||
                       !(self->t5 = sd3_t5_new(self->be, self->w_t5, &ct, err))))
        return sd3_err_prefix(err, "T5");
    sd3_weights_t *all[3] = {self->w_l, self->w_g, self->w_t5};
    sd3_embcache_weights_fingerprint(all, 3, self->fingerprint);
    return 0;
}

// The two constructors differ only in where the weights and their configs come from: a
// model (model != NULL; T5 when with_t5 and the model has one) or three files (paths; the
// T5 one may be NULL).
static sd3_cond_t *
s_new(sd3_backend_t *be, sd3_model_t *model, bool with_t5, const char *const paths[3],
      sd3_err_t *err)
{
    static const sd3_component_t comps[3] = {SD3_COMP_CLIP_L, SD3_COMP_CLIP_G, SD3_COMP_T5};
    sd3_err_t local_err = {0};
    if (!err)
        err = &local_err;
    char *cfg[3] = {NULL, NULL, NULL};
    sd3_cond_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "conditioning: out of memory");
        return NULL;
    }
    self->be = be;
    sd3_weights_t **w[3] = {&self->w_l, &self->w_g, &self->w_t5};
    for (int i = 0; i < 3; i++) {
        if (i == 2 && (model ? !with_t5 || !sd3_model_has(model, SD3_COMP_T5) : !paths[2]))
            break; // no T5
        *w[i] = model ? sd3_weights_open(model, comps[i], err)
                      : sd3_weights_open_path(paths[i], comps[i], err);
        if (!*w[i])
            goto fail;
        cfg[i] = model ? sd3_cond_config_json(model, NULL, comps[i]) : s_file_config(paths[i]);
    }
    if (s_build(self, cfg[0], cfg[1], cfg[2], err))
        goto fail;
    for (int i = 0; i < 3; i++)
        free(cfg[i]);
    return self;
fail:
    for (int i = 0; i < 3; i++)
        free(cfg[i]);
    sd3_cond_destroy(&self);
    return NULL;
}

sd3_cond_t *
sd3_cond_new_from_model(sd3_backend_t *be, sd3_model_t *model, bool with_t5, sd3_err_t *err)
{
    return s_new(be, model, with_t5, NULL, err);
}

sd3_cond_t *
sd3_cond_new_from_files(sd3_backend_t *be, const char *clip_l_path, const char *clip_g_path,
                        const char *t5_path, sd3_err_t *err)
{
    const char *paths[3] = {clip_l_path, clip_g_path, t5_path};
    return s_new(be, NULL, t5_path != NULL, paths, err);
}

void
sd3_cond_destroy(sd3_cond_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_cond_t *self = *self_p;
    sd3_clip_destroy(&self->clip_l);
    sd3_clip_destroy(&self->clip_g);
    sd3_t5_destroy(&self->t5);
    sd3_weights_destroy(&self->w_l);
    sd3_weights_destroy(&self->w_g);
    sd3_weights_destroy(&self->w_t5);
    free(self);
    *self_p = NULL;
}

bool
sd3_cond_has_t5(const sd3_cond_t *self)
{
    return self->t5 != NULL;
}

sd3_clip_t *
sd3_cond_clip_l(sd3_cond_t *self)
{
    return self->clip_l;
}

sd3_clip_t *
sd3_cond_clip_g(sd3_cond_t *self)
{
    return self->clip_g;
}

sd3_t5_t *
sd3_cond_t5(sd3_cond_t *self)
{
    return self->t5;
}

sd3_weights_t *
sd3_cond_weights(sd3_cond_t *self, int i)
{
    return i == 0 ? self->w_l : i == 1 ? self->w_g : i == 2 ? self->w_t5 : NULL;
}

// Model FLOPs of one encoder over n tokens, from its weight bytes (2 bytes a parameter:
// an estimate for the progress hook's expectations).
static double
s_enc_flops(const sd3_weights_t *w, int64_t n)
{
    return w ? 2.0 * ((double)sd3_weights_bytes(w) / 2.0) * (double)n : 0;
}

// The hook before encoder i; SD3_ECANCELED when it says stop.
static int
s_between(const sd3_cond_opts_t *opts, int i, double flops, sd3_err_t *err)
{
    if (opts->between && opts->between(opts->between_user, i, flops) != 0)
        return sd3_err_set(err, SD3_ECANCELED, "conditioning: stopped before encoder %d", i);
    return 0;
}

size_t
sd3_cond_weight_bytes(const sd3_cond_t *self)
{
    return sd3_weights_bytes(self->w_l) + sd3_weights_bytes(self->w_g) +
           (self->w_t5 ? sd3_weights_bytes(self->w_t5) : 0);
}

void
sd3_cond_fingerprint(const sd3_cond_t *self, uint64_t out[2])
{
    out[0] = self->fingerprint[0];
    out[1] = self->fingerprint[1];
}

// -- encoding ------------------------------------------------------------------------------

static void
s_free(sd3_backend_t *be, sd3_tensor_t **t_p)
{
    if (*t_p)
        be->ops->tensor_free(be, t_p);
    *t_p = NULL;
}

// Host f32 copy of a backend tensor.
static sd3_tensor_t *
s_to_host(sd3_backend_t *be, const sd3_tensor_t *t, const char *name, sd3_err_t *err)
{
    sd3_tensor_t *h = sd3_tensor_new_err(SD3_F32, t->ndim, t->shape, name, err);
    if (h && be->ops->download(be, h, t, err) != 0)
        sd3_tensor_destroy(&h);
    return h;
}

int
sd3_cond_encode(sd3_cond_t *self, const sd3_cond_tokens_t *tokens, const sd3_cond_opts_t *opts,
                sd3_tensor_t **context_p, sd3_tensor_t **pooled_p, sd3_err_t *err)
{
    static const sd3_cond_opts_t dflt = SD3_COND_OPTS_INIT;
    sd3_backend_t *be = self->be;
    const sd3_backend_ops_t *op = be->ops;
    sd3_clip_out_t lo = {0}, go = {0};
    sd3_tensor_t *t5h = NULL, *ctx = NULL, *pooled = NULL;
    int32_t *t5_ids = NULL;
    sd3_err_t local_err = {0};
    int rc = 0;

    if (!err)
        err = &local_err;
    *context_p = *pooled_p = NULL;
    if (!opts)
        opts = &dflt;
    const bool use_t5 = self->t5 && !opts->no_t5;
    const int WL = sd3_clip_config(self->clip_l)->width, WG = sd3_clip_config(self->clip_g)->width;
    const int PG = sd3_clip_config(self->clip_g)->proj_dim;
    int Wc = opts->context_width;
    if (self->t5) {
        int Wt = sd3_t5_config(self->t5)->d_model;
        if (Wc == 0)
            Wc = Wt;
        else if (use_t5 && Wc != Wt)
            return sd3_err_set(err, SD3_EINVAL,
                               "conditioning: context width %d, but T5 gives "
                               "%d",
                               Wc, Wt);
    }
    if (Wc <= 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "conditioning: no T5, so the context width must "
                           "be given (the MMDiT's context input)");
    if (WL + WG > Wc)
        return sd3_err_set(err, SD3_EFORMAT,
                           "conditioning: CLIP widths %d + %d exceed the "
                           "context width %d",
                           WL, WG, Wc);
    if (!tokens || !tokens->l || !tokens->g || tokens->n_l != tokens->n_g)
        return sd3_err_set(err, SD3_EINVAL,
                           "conditioning: need CLIP-L and CLIP-G ids of equal "
                           "length");
    if (opts->zero_t5_rows < 0 || opts->zero_t5_rows > 1024 || opts->t5_length < 0 ||
        opts->t5_length > 1024)
        return sd3_err_set(err, SD3_EINVAL,
                           "conditioning: zero_t5_rows %d / t5_length %d out "
                           "of range",
                           opts->zero_t5_rows, opts->t5_length);

    const int64_t T = tokens->n_l;
    int64_t n_t5 = 0;
    if (use_t5) {
        if (!tokens->t5 || tokens->n_t5 < 1)
            return sd3_err_set(err, SD3_EINVAL, "conditioning: T5 ids missing");
        n_t5 = opts->t5_length > 0 ? opts->t5_length : tokens->n_t5;
        if (!(t5_ids = calloc((size_t)n_t5, sizeof *t5_ids)))
            return sd3_err_set(err, SD3_ENOMEM, "conditioning: out of memory");
        int64_t keep = tokens->n_t5 < n_t5 ? tokens->n_t5 : n_t5; // the rest stays 0 (<pad>)
        memcpy(t5_ids, tokens->t5, (size_t)keep * sizeof *t5_ids);
        if (tokens->n_t5 > n_t5)
            t5_ids[n_t5 - 1] = 1; // a cut sequence still ends in </s>
    }
    const int64_t rows = T + (use_t5 ? n_t5 : opts->zero_t5_rows);

    if ((rc = s_between(opts, 0, s_enc_flops(self->w_l, tokens->n_l), err)) ||
        (rc = sd3_clip_encode(self->clip_l, tokens->l, tokens->n_l, &lo, NULL, NULL, err)) ||
        (rc = s_between(opts, 1, s_enc_flops(self->w_g, tokens->n_g), err)) ||
        (rc = sd3_clip_encode(self->clip_g, tokens->g, tokens->n_g, &go, NULL, NULL, err)))
        goto done;
    if (use_t5 && ((rc = s_between(opts, 2, s_enc_flops(self->w_t5, n_t5), err)) ||
                   (rc = sd3_t5_encode(self->t5, t5_ids, (int)n_t5, &t5h, NULL, NULL, err))))
        goto done;
    if ((rc = s_between(opts, 3, 0, err)))
        goto done;

    if (!(ctx = op->tensor_new(be, be->act_dtype, 3, (int64_t[]){1, rows, Wc}, err)) ||
        !(pooled = op->tensor_new(be, be->act_dtype, 2, (int64_t[]){1, WL + PG}, err))) {
        rc = err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
    // context = [ L | G | 0 ] over the 77 CLIP rows, then T5 (or zeros) below
    if ((rc = op->fill(be, ctx, 0.0f, err)) ||
        (rc = op->copy2d(be, ctx, 0, 0, lo.context, 0, 0, T, WL, err)) ||
        (rc = op->copy2d(be, ctx, 0, WL, go.context, 0, 0, T, WG, err)) ||
        (use_t5 && (rc = op->copy2d(be, ctx, T, 0, t5h, 0, 0, n_t5, Wc, err))))
        goto done;
    // pooled = [ L pooled (unprojected) | G pooled projected ]
    if ((rc = op->copy2d(be, pooled, 0, 0, lo.pooled, 0, 0, 1, WL, err)) ||
        (rc = op->copy2d(be, pooled, 0, WL, go.pooled_projected, 0, 0, 1, PG, err)))
        goto done;
    if (!(*context_p = s_to_host(be, ctx, "cond.context", err)) ||
        !(*pooled_p = s_to_host(be, pooled, "cond.pooled", err))) {
        sd3_tensor_destroy(context_p);
        rc = err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
done:
    sd3_clip_out_fini(self->clip_l, &lo);
    sd3_clip_out_fini(self->clip_g, &go);
    s_free(be, &t5h);
    s_free(be, &ctx);
    s_free(be, &pooled);
    free(t5_ids);
    return rc;
}
