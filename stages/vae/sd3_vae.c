/*  sd3_vae - the 16-channel SD3 autoencoder (see sd3_vae.h; formulas: MODEL.md §6)  */
#include "sd3_vae.h"

#include "sd3_safetensors.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- the parts, as backend tensors ----------------------------------------------------------

typedef struct {
    const sd3_tensor_t *w, *b; // [co, ci, k, k], [co]
    int co, ci, k;
} s_conv_t;

typedef struct {
    const sd3_tensor_t *w, *b; // [c], [c]
} s_norm_t;

typedef struct {
    s_norm_t norm1, norm2;
    s_conv_t conv1, conv2, nin; // nin: 1x1 shortcut when ci != co
    bool has_nin;
    int ci, co;
} s_res_t;

typedef struct {
    s_norm_t norm;
    const sd3_tensor_t *wq, *bq, *wk, *bk, *wv, *bv, *wp, *bp; // [c, c] and [c]
    sd3_tensor_t view[4]; // host [c, c] views of the [c, c, 1, 1] q, k, v, proj_out weights
    int c;
} s_attn_t;

typedef struct {
    bool loaded;
    s_conv_t conv_in;
    s_res_t mid1, mid2;
    s_attn_t attn;
    s_res_t blocks[SD3_VAE_MAX_LEVELS][SD3_VAE_MAX_BLOCKS];
    bool has_resample[SD3_VAE_MAX_LEVELS]; // decoder: upsample; encoder: downsample
    s_conv_t resample[SD3_VAE_MAX_LEVELS];
    s_norm_t norm_out;
    s_conv_t conv_out;
} s_coder_t;

struct sd3_vae {
    sd3_weights_t *weights;
    sd3_backend_t *be;
    sd3_model_t *own_model;     // set by sd3_vae_open
    sd3_weights_t *own_weights; // set by sd3_vae_open
    sd3_vae_config_t cfg;
    s_coder_t dec, enc;
    sd3_vae_tap_fn tap;
    void *tap_user;
};

// ---- config from the checkpoint shapes -----------------------------------------------------

static bool
s_has(const sd3_weights_t *w, const char *fmt, int i, int j)
{
    char name[160];
    snprintf(name, sizeof name, fmt, i, j);
    return sd3_weights_has(w, name);
}

// Shape of a named tensor; ndim 0 when absent.
static int
s_shape(const sd3_weights_t *w, const char *name, int64_t *shape)
{
    int ndim = 0;
    if (sd3_weights_shape(w, name, &ndim, shape) != 0)
        return 0;
    return ndim;
}

static int
s_detect(sd3_vae_t *self, sd3_err_t *err)
{
    sd3_vae_config_t *cfg = &self->cfg;
    const sd3_weights_t *w = self->weights;
    int64_t shape[SD3_MAX_DIM];
    memset(cfg, 0, sizeof *cfg);
    cfg->has_decoder = sd3_weights_has(w, "decoder.conv_in.weight");
    cfg->has_encoder = sd3_weights_has(w, "encoder.conv_in.weight");
    if (!cfg->has_decoder && !cfg->has_encoder)
        return sd3_err_set(err, SD3_EFORMAT,
                           "vae: no 'decoder.conv_in.weight' or "
                           "'encoder.conv_in.weight' in the checkpoint");
    const char *lvl_key = cfg->has_decoder ? "decoder.up.%d.block.%d.conv1.weight"
                                           : "encoder.down.%d.block.%d.conv1.weight";
    while (cfg->n_levels < SD3_VAE_MAX_LEVELS && s_has(w, lvl_key, cfg->n_levels, 0))
        cfg->n_levels++;
    if (cfg->n_levels == 0)
        return sd3_err_set(err, SD3_EFORMAT, "vae: no resblocks ('%s' with level 0)", lvl_key);
    for (int i = 0; i < cfg->n_levels; i++) {
        char name[160];
        snprintf(name, sizeof name, lvl_key, i, 0);
        if (s_shape(w, name, shape) != 4)
            return sd3_err_set(err, SD3_EFORMAT, "vae: '%s' is not 4-D", name);
        cfg->channels[i] = (int)shape[0];
        if (shape[0] <= 0 || shape[0] % SD3_VAE_GROUPS != 0 || shape[0] > 65536)
            return sd3_err_set(err, SD3_EFORMAT,
                               "vae: '%s' has %lld output channels, want a "
                               "multiple of %d",
                               name, (long long)shape[0], SD3_VAE_GROUPS);
        while (cfg->dec_blocks[i] < SD3_VAE_MAX_BLOCKS &&
               s_has(w, "decoder.up.%d.block.%d.conv1.weight", i, cfg->dec_blocks[i]))
            cfg->dec_blocks[i]++;
        while (cfg->enc_blocks[i] < SD3_VAE_MAX_BLOCKS &&
               s_has(w, "encoder.down.%d.block.%d.conv1.weight", i, cfg->enc_blocks[i]))
            cfg->enc_blocks[i]++;
        if ((cfg->has_decoder && cfg->dec_blocks[i] == 0) ||
            (cfg->has_encoder && cfg->enc_blocks[i] == 0))
            return sd3_err_set(err, SD3_EFORMAT, "vae: level %d has no resblocks in the %s", i,
                               cfg->dec_blocks[i] == 0 ? "decoder" : "encoder");
    }
    if (cfg->has_decoder) {
        int64_t out_shape[SD3_MAX_DIM];
        if (s_shape(w, "decoder.conv_in.weight", shape) != 4 ||
            s_shape(w, "decoder.conv_out.weight", out_shape) != 4)
            return sd3_err_set(err, SD3_EFORMAT,
                               "vae: decoder.conv_in/conv_out weights are not "
                               "4-D (or conv_out is missing)");
        s_shape(w, "decoder.conv_in.weight", shape);
        cfg->z_channels = (int)shape[1];
        s_shape(w, "decoder.conv_out.weight", shape);
        cfg->image_channels = (int)shape[0];
    }
    if (cfg->has_encoder) {
        if (s_shape(w, "encoder.conv_out.weight", shape) != 4)
            return sd3_err_set(err, SD3_EFORMAT,
                               "vae: 'encoder.conv_out.weight' missing or not "
                               "4-D");
        if (shape[0] % 2 || (cfg->z_channels && shape[0] != 2 * cfg->z_channels))
            return sd3_err_set(err, SD3_EFORMAT,
                               "vae: 'encoder.conv_out.weight' gives %lld "
                               "moments, want 2 * %d latent channels",
                               (long long)shape[0], cfg->z_channels);
        cfg->z_channels = (int)(shape[0] / 2);
        s_shape(w, "encoder.conv_in.weight", shape);
        if (cfg->image_channels && shape[1] != cfg->image_channels)
            return sd3_err_set(err, SD3_EFORMAT,
                               "vae: encoder takes %lld image channels, "
                               "decoder makes %d",
                               (long long)shape[1], cfg->image_channels);
        cfg->image_channels = (int)shape[1];
    }
    // One 2x resample per level that has one; decoder and encoder must agree.
    int up = 1, down = 1;
    for (int i = 0; i < cfg->n_levels; i++) {
        up *= s_has(w, "decoder.up.%d.upsample.conv.weight", i, 0) ? 2 : 1;
        down *= s_has(w, "encoder.down.%d.downsample.conv.weight", i, 0) ? 2 : 1;
    }
    if (cfg->has_decoder && cfg->has_encoder && up != down)
        return sd3_err_set(err, SD3_EFORMAT,
                           "vae: decoder upsamples %dx, encoder downsamples "
                           "%dx",
                           up, down);
    cfg->factor = cfg->has_decoder ? up : down;
    if (cfg->z_channels <= 0 || cfg->image_channels <= 0)
        return sd3_err_set(err, SD3_EFORMAT, "vae: %d latent / %d image channels", cfg->z_channels,
                           cfg->image_channels);
    // Parameters of what is present (for the bench's FLOP count and memory planning).
    for (size_t i = 0, n = sd3_weights_count(w); i < n; i++) {
        const char *name = sd3_weights_name(w, i);
        int nd = 0;
        int64_t numel = 1;
        if (!name || (strncmp(name, "decoder.", 8) && strncmp(name, "encoder.", 8)) ||
            sd3_weights_shape(w, name, &nd, shape) != 0)
            continue;
        for (int d = 0; d < nd; d++)
            numel *= shape[d];
        cfg->n_params += numel;
    }
    return 0;
}

// ---- loading ---------------------------------------------------------------------------------

static const sd3_tensor_t *
s_weight(sd3_vae_t *self, const char *name, int ndim, const int64_t *shape, sd3_err_t *err)
{
    const sd3_tensor_t *host = NULL;
    if (sd3_weights_need(self->weights, name, ndim, shape, &host, err) != 0)
        return NULL;
    return self->be->ops->weight(self->be, host, err);
}

static int
s_load_conv(sd3_vae_t *self, const char *prefix, int co, int ci, int k, s_conv_t *conv,
            sd3_err_t *err)
{
    char name[160];
    conv->co = co, conv->ci = ci, conv->k = k;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (!(conv->w = s_weight(self, name, 4, (int64_t[]){co, ci, k, k}, err)))
        return err ? err->code : SD3_EFORMAT;
    snprintf(name, sizeof name, "%s.bias", prefix);
    if (!(conv->b = s_weight(self, name, 1, (int64_t[]){co}, err)))
        return err ? err->code : SD3_EFORMAT;
    return 0;
}

static int
s_load_norm(sd3_vae_t *self, const char *prefix, int c, s_norm_t *norm, sd3_err_t *err)
{
    char name[160];
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (!(norm->w = s_weight(self, name, 1, (int64_t[]){c}, err)))
        return err ? err->code : SD3_EFORMAT;
    snprintf(name, sizeof name, "%s.bias", prefix);
    if (!(norm->b = s_weight(self, name, 1, (int64_t[]){c}, err)))
        return err ? err->code : SD3_EFORMAT;
    return 0;
}

static int
s_load_res(sd3_vae_t *self, const char *prefix, int ci, int co, s_res_t *res, sd3_err_t *err)
{
    char name[160];
    res->ci = ci, res->co = co;
    snprintf(name, sizeof name, "%s.norm1", prefix);
    if (s_load_norm(self, name, ci, &res->norm1, err) != 0)
        return err->code;
    snprintf(name, sizeof name, "%s.conv1", prefix);
    if (s_load_conv(self, name, co, ci, 3, &res->conv1, err) != 0)
        return err->code;
    snprintf(name, sizeof name, "%s.norm2", prefix);
    if (s_load_norm(self, name, co, &res->norm2, err) != 0)
        return err->code;
    snprintf(name, sizeof name, "%s.conv2", prefix);
    if (s_load_conv(self, name, co, co, 3, &res->conv2, err) != 0)
        return err->code;
    res->has_nin = ci != co;
    if (res->has_nin) {
        snprintf(name, sizeof name, "%s.nin_shortcut", prefix);
        if (s_load_conv(self, name, co, ci, 1, &res->nin, err) != 0)
            return err->code;
    }
    return 0;
}

// q, k, v, proj_out are 1x1 convs; over tokens [B, N, c] they are linear layers with the
// [c, c] view of the same weight.
static int
s_load_attn(sd3_vae_t *self, const char *prefix, int c, s_attn_t *attn, sd3_err_t *err)
{
    static const char *parts[4] = {"q", "k", "v", "proj_out"};
    const sd3_tensor_t **ws[4] = {&attn->wq, &attn->wk, &attn->wv, &attn->wp};
    const sd3_tensor_t **bs[4] = {&attn->bq, &attn->bk, &attn->bv, &attn->bp};
    char name[160];
    attn->c = c;
    snprintf(name, sizeof name, "%s.norm", prefix);
    if (s_load_norm(self, name, c, &attn->norm, err) != 0)
        return err->code;
    for (int i = 0; i < 4; i++) {
        const sd3_tensor_t *host = NULL;
        snprintf(name, sizeof name, "%s.%s.weight", prefix, parts[i]);
        if (sd3_weights_need(self->weights, name, 4, (int64_t[]){c, c, 1, 1}, &host, err) != 0)
            return err->code;
        sd3_tensor_view_init(&attn->view[i], host->dtype, 2, (int64_t[]){c, c}, host->data);
        attn->view[i].name = host->name;
        if (!(*ws[i] = self->be->ops->weight(self->be, &attn->view[i], err)))
            return err->code;
        snprintf(name, sizeof name, "%s.%s.bias", prefix, parts[i]);
        if (!(*bs[i] = s_weight(self, name, 1, (int64_t[]){c}, err)))
            return err->code;
    }
    return 0;
}

// Level i of a coder: its resblocks "<level>.<i>.block.<j>" (the first takes ci channels)
// and, when the checkpoint has one, its 2x resample conv "<level>.<i>.<resample>.conv".
static int
s_load_level(sd3_vae_t *self, s_coder_t *cd, const char *level, const char *resample, int i, int ci,
             int n_blocks, sd3_err_t *err)
{
    int co = self->cfg.channels[i];
    char name[160];
    for (int j = 0; j < n_blocks; j++) {
        snprintf(name, sizeof name, "%s.%d.block.%d", level, i, j);
        if (s_load_res(self, name, j == 0 ? ci : co, co, &cd->blocks[i][j], err) != 0)
            return err->code;
    }
    snprintf(name, sizeof name, "%s.%d.%s.conv.weight", level, i, resample);
    cd->has_resample[i] = sd3_weights_has(self->weights, name);
    name[strlen(name) - strlen(".weight")] = '\0'; // the conv's prefix
    if (cd->has_resample[i] && s_load_conv(self, name, co, co, 3, &cd->resample[i], err) != 0)
        return err->code;
    return 0;
}

// The middle of a coder: "<coder>.mid.block_1", "<coder>.mid.attn_1", "<coder>.mid.block_2",
// all at the top level's c channels.
static int
s_load_mid(sd3_vae_t *self, s_coder_t *cd, const char *coder, int c, sd3_err_t *err)
{
    char name[64];
    snprintf(name, sizeof name, "%s.mid.block_1", coder);
    if (s_load_res(self, name, c, c, &cd->mid1, err))
        return err->code;
    snprintf(name, sizeof name, "%s.mid.attn_1", coder);
    if (s_load_attn(self, name, c, &cd->attn, err))
        return err->code;
    snprintf(name, sizeof name, "%s.mid.block_2", coder);
    return s_load_res(self, name, c, c, &cd->mid2, err) ? err->code : 0;
}

static int
s_load_decoder(sd3_vae_t *self, sd3_err_t *err)
{
    const sd3_vae_config_t *cfg = &self->cfg;
    s_coder_t *d = &self->dec;
    int n = cfg->n_levels, top = cfg->channels[n - 1];
    if (d->loaded)
        return 0;
    if (!cfg->has_decoder)
        return sd3_err_set(err, SD3_EFORMAT, "vae: the checkpoint has no decoder");
    if (s_load_conv(self, "decoder.conv_in", top, cfg->z_channels, 3, &d->conv_in, err) ||
        s_load_mid(self, d, "decoder", top, err))
        return err->code;
    for (int i = n - 1, ci = top; i >= 0; ci = cfg->channels[i--])
        if (s_load_level(self, d, "decoder.up", "upsample", i, ci, cfg->dec_blocks[i], err))
            return err->code;
    if (s_load_norm(self, "decoder.norm_out", cfg->channels[0], &d->norm_out, err) ||
        s_load_conv(self, "decoder.conv_out", cfg->image_channels, cfg->channels[0], 3,
                    &d->conv_out, err))
        return err->code;
    d->loaded = true;
    return 0;
}

static int
s_load_encoder(sd3_vae_t *self, sd3_err_t *err)
{
    const sd3_vae_config_t *cfg = &self->cfg;
    s_coder_t *e = &self->enc;
    int n = cfg->n_levels, top = cfg->channels[n - 1];
    if (e->loaded)
        return 0;
    if (!cfg->has_encoder)
        return sd3_err_set(err, SD3_EFORMAT, "vae: the checkpoint has no encoder");
    if (s_load_conv(self, "encoder.conv_in", cfg->channels[0], cfg->image_channels, 3, &e->conv_in,
                    err))
        return err->code;
    for (int i = 0, ci = cfg->channels[0]; i < n; ci = cfg->channels[i++])
        if (s_load_level(self, e, "encoder.down", "downsample", i, ci, cfg->enc_blocks[i], err))
            return err->code;
    if (s_load_mid(self, e, "encoder", top, err) ||
        s_load_norm(self, "encoder.norm_out", top, &e->norm_out, err) ||
        s_load_conv(self, "encoder.conv_out", 2 * cfg->z_channels, top, 3, &e->conv_out, err))
        return err->code;
    e->loaded = true;
    return 0;
}

// ---- construction ----------------------------------------------------------------------------

#define S_ERR_LOCAL(err)                                                                           \
    sd3_err_t err##_local = {0};                                                                   \
    if (!(err))                                                                                    \
    (err) = &err##_local

sd3_vae_t *
sd3_vae_new(sd3_weights_t *weights, sd3_backend_t *be, sd3_err_t *err)
{
    S_ERR_LOCAL(err);
    sd3_vae_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "vae: %zu bytes", sizeof *self);
        return NULL;
    }
    self->weights = weights;
    self->be = be;
    if (s_detect(self, err) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

sd3_vae_t *
sd3_vae_open(const char *path, sd3_backend_t *be, sd3_err_t *err)
{
    sd3_err_t first = {0};
    sd3_model_t *model = sd3_model_open(path, &first);
    sd3_weights_t *weights = NULL;
    sd3_vae_t *self = NULL;
    // A full checkpoint (single file, SD3.5 folder, diffusers folder): its VAE component.
    // A file holding only the VAE (tiny-vae.safetensors): opened as that component.
    if (model && sd3_model_has(model, SD3_COMP_VAE)) {
        if (!(weights = sd3_weights_open(model, SD3_COMP_VAE, err)))
            goto fail;
    } else {
        sd3_model_destroy(&model);
        if (!(weights = sd3_weights_open_path(path, SD3_COMP_VAE, err)))
            goto fail;
    }
    if (!(self = sd3_vae_new(weights, be, err)))
        goto fail;
    self->own_model = model;
    self->own_weights = weights;
    return self;
fail:
    sd3_weights_destroy(&weights);
    sd3_model_destroy(&model);
    return NULL;
}

void
sd3_vae_destroy(sd3_vae_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_vae_t *self = *self_p;
    // Weights in the backend's form are owned by the backend (cpu: views into the mmap).
    sd3_weights_destroy(&self->own_weights);
    sd3_model_destroy(&self->own_model);
    free(self);
    *self_p = NULL;
}

const sd3_vae_config_t *
sd3_vae_config(const sd3_vae_t *self)
{
    return &self->cfg;
}

void
sd3_vae_set_tap(sd3_vae_t *self, sd3_vae_tap_fn fn, void *user)
{
    self->tap = fn;
    self->tap_user = user;
}

// ---- forward pieces --------------------------------------------------------------------------

static sd3_tensor_t *
s_new(sd3_vae_t *self, int64_t b, int64_t c, int64_t h, int64_t w, sd3_err_t *err)
{
    return self->be->ops->tensor_new(self->be, self->be->act_dtype, 4, (int64_t[]){b, c, h, w},
                                     err);
}

static void
s_free(sd3_vae_t *self, sd3_tensor_t **t_p)
{
    if (t_p && *t_p)
        self->be->ops->tensor_free(self->be, t_p);
}

static void
s_tap(sd3_vae_t *self, const char *name, const sd3_tensor_t *t)
{
    if (!self->tap)
        return;
    if (t->where == SD3_HOST && t->dtype == SD3_F32) {
        self->tap(self->tap_user, name, t);
        return;
    }
    sd3_err_t err = {0};
    sd3_tensor_t *host = sd3_tensor_new(SD3_F32, t->ndim, t->shape);
    if (host && self->be->ops->download(self->be, host, t, &err) == 0)
        self->tap(self->tap_user, name, host);
    sd3_tensor_destroy(&host);
}

// y = conv(x) with a fresh y.  x: [B, ci, H, W] -> y: [B, co, H', W'].
static int
s_conv(sd3_vae_t *self, const s_conv_t *conv, const sd3_tensor_t *x, const sd3_conv_opts_t *opts,
       sd3_tensor_t **y_p, sd3_err_t *err)
{
    int64_t h = (x->shape[2] + opts->pad_top + opts->pad_bottom - conv->k) / opts->stride + 1;
    int64_t w = (x->shape[3] + opts->pad_left + opts->pad_right - conv->k) / opts->stride + 1;
    sd3_tensor_t *y = s_new(self, x->shape[0], conv->co, h, w, err);
    if (!y)
        return err->code;
    if (self->be->ops->conv2d(self->be, y, x, conv->w, conv->b, opts, err) != 0) {
        s_free(self, &y);
        return err->code;
    }
    *y_p = y;
    return 0;
}

static const sd3_conv_opts_t s_same3 = {
    .stride = 1, .pad_top = 1, .pad_left = 1, .pad_bottom = 1, .pad_right = 1};
static const sd3_conv_opts_t s_same1 = {.stride = 1};
// Downsample: pad right and bottom by one (zeros), 3x3 stride 2, no other padding.
static const sd3_conv_opts_t s_down = {.stride = 2, .pad_bottom = 1, .pad_right = 1};

// y = swish(GN(x)), y may be x.
static int
s_norm_swish(sd3_vae_t *self, const s_norm_t *norm, sd3_tensor_t *y, const sd3_tensor_t *x,
             sd3_err_t *err)
{
    if (self->be->ops->groupnorm(self->be, y, x, norm->w, norm->b, SD3_VAE_GROUPS, SD3_VAE_EPS,
                                 err) != 0)
        return err->code;
    return self->be->ops->act(self->be, y, y, SD3_ACT_SILU, err);
}

// ResBlock: *x_p [B, ci, H, W] is replaced by [B, co, H, W] (the input is freed).
//   x' + conv2(swish(GN2(conv1(swish(GN1(x)))))),  x' = nin_shortcut(x) when ci != co
static int
s_resblock(sd3_vae_t *self, const s_res_t *res, sd3_tensor_t **x_p, sd3_err_t *err)
{
    sd3_tensor_t *x = *x_p, *h = NULL, *h2 = NULL, *out = NULL, *skip = NULL;
    const sd3_backend_ops_t *ops = self->be->ops;
    if (!(h = s_new(self, x->shape[0], x->shape[1], x->shape[2], x->shape[3], err)))
        goto fail;
    if (s_norm_swish(self, &res->norm1, h, x, err) ||     // [B, ci, H, W]
        s_conv(self, &res->conv1, h, &s_same3, &h2, err)) // [B, co, H, W]
        goto fail;
    s_free(self, &h);
    if (s_norm_swish(self, &res->norm2, h2, h2, err) ||
        s_conv(self, &res->conv2, h2, &s_same3, &out, err)) // [B, co, H, W]
        goto fail;
    s_free(self, &h2);
    if (res->has_nin) {
        if (s_conv(self, &res->nin, x, &s_same1, &skip, err)) // [B, co, H, W]
            goto fail;
        if (ops->add(self->be, out, out, skip, err) != 0)
            goto fail;
        s_free(self, &skip);
    } else if (ops->add(self->be, out, out, x, err) != 0) {
        goto fail;
    }
    s_free(self, x_p);
    *x_p = out;
    return 0;
fail:
    s_free(self, &h);
    s_free(self, &h2);
    s_free(self, &out);
    s_free(self, &skip);
    return err->code ? err->code : SD3_EINTERNAL;
}

// dst[b, j, i] = src[b, i, j].   src: [B, R, C] (viewed so)   dst: [B, C, R]
static void
s_transpose_host(float *dst, const float *src, int64_t batch, int64_t rows, int64_t cols)
{
    const int64_t blk = 32;
    for (int64_t b = 0; b < batch; b++) {
        const float *s = src + b * rows * cols;
        float *d = dst + b * rows * cols;
        for (int64_t i0 = 0; i0 < rows; i0 += blk)
            for (int64_t j0 = 0; j0 < cols; j0 += blk) {
                int64_t i1 = i0 + blk < rows ? i0 + blk : rows;
                int64_t j1 = j0 + blk < cols ? j0 + blk : cols;
                for (int64_t i = i0; i < i1; i++)
                    for (int64_t j = j0; j < j1; j++)
                        d[j * rows + i] = s[i * cols + j];
            }
    }
}

// The op table has no transpose: on host memory it is done in place here; a device backend
// makes a round trip through host memory (only around the mid attention: [B, c, h*w]).
static int
s_transpose(sd3_vae_t *self, sd3_tensor_t *dst, const sd3_tensor_t *src, int64_t batch,
            int64_t rows, int64_t cols, sd3_err_t *err)
{
    if (src->where == SD3_HOST && dst->where == SD3_HOST && src->dtype == SD3_F32 &&
        dst->dtype == SD3_F32) {
        s_transpose_host(dst->data, src->data, batch, rows, cols);
        return 0;
    }
    int rc = SD3_ENOMEM;
    sd3_tensor_t *a = sd3_tensor_new_err(SD3_F32, src->ndim, src->shape, "vae transpose", err);
    sd3_tensor_t *b = sd3_tensor_new_err(SD3_F32, dst->ndim, dst->shape, "vae transpose", err);
    if (a && b && (rc = self->be->ops->download(self->be, a, src, err)) == 0) {
        s_transpose_host(b->data, a->data, batch, rows, cols);
        rc = self->be->ops->upload(self->be, dst, b, err);
    }
    sd3_tensor_destroy(&a);
    sd3_tensor_destroy(&b);
    return rc;
}

// Mid attention, in place on *x_p [B, c, H, W]:
//   x + proj_out(attn(q, k, v)), q, k, v = 1x1 convs of GN(x); one head, scale 1/sqrt(c),
//   tokens in (h w) row-major order.
static int
s_attention(sd3_vae_t *self, const s_attn_t *attn, sd3_tensor_t *x, sd3_err_t *err)
{
    const sd3_backend_ops_t *ops = self->be->ops;
    int64_t b = x->shape[0], c = x->shape[1], n = x->shape[2] * x->shape[3];
    int64_t tok_shape[3] = {b, n, c};
    sd3_tensor_t *hn = NULL, *t = NULL, *q = NULL, *k = NULL, *v = NULL, *o = NULL;
    int rc = SD3_ENOMEM;
    if (!(hn = s_new(self, b, c, x->shape[2], x->shape[3], err)))
        goto fail;
    if ((rc = ops->groupnorm(self->be, hn, x, attn->norm.w, attn->norm.b, SD3_VAE_GROUPS,
                             SD3_VAE_EPS, err)) != 0)
        goto fail;
    rc = SD3_ENOMEM;
    if (!(t = ops->tensor_new(self->be, self->be->act_dtype, 3, tok_shape, err)))
        goto fail;
    if ((rc = s_transpose(self, t, hn, b, c, n, err)) != 0) // [B, N, c]
        goto fail;
    s_free(self, &hn);
    rc = SD3_ENOMEM;
    if (!(q = ops->tensor_new(self->be, self->be->act_dtype, 3, tok_shape, err)) ||
        !(k = ops->tensor_new(self->be, self->be->act_dtype, 3, tok_shape, err)) ||
        !(v = ops->tensor_new(self->be, self->be->act_dtype, 3, tok_shape, err)))
        goto fail;
    if ((rc = ops->linear(self->be, q, t, attn->wq, attn->bq, err)) != 0 || // [B, N, c]
        (rc = ops->linear(self->be, k, t, attn->wk, attn->bk, err)) != 0 ||
        (rc = ops->linear(self->be, v, t, attn->wv, attn->bv, err)) != 0)
        goto fail;
    sd3_attn_opts_t opts = {.n_heads = 1, .scale = 1.0f / sqrtf((float)c)};
    if ((rc = ops->attention(self->be, t, q, k, v, &opts, err)) != 0) // t = o [B, N, c]
        goto fail;
    s_free(self, &k);
    s_free(self, &v);
    if ((rc = ops->linear(self->be, q, t, attn->wp, attn->bp, err)) != 0) // q = proj [B, N, c]
        goto fail;
    s_free(self, &t);
    rc = SD3_ENOMEM;
    if (!(o = s_new(self, b, c, x->shape[2], x->shape[3], err)))
        goto fail;
    if ((rc = s_transpose(self, o, q, b, n, c, err)) != 0 || // [B, c, H, W]
        (rc = ops->add(self->be, x, x, o, err)) != 0)
        goto fail;
    rc = 0;
fail:
    s_free(self, &hn);
    s_free(self, &t);
    s_free(self, &q);
    s_free(self, &k);
    s_free(self, &v);
    s_free(self, &o);
    return rc;
}

// mid: block_1, attn_1, block_2 on *x_p [B, c, h, w].
static int
s_mid(sd3_vae_t *self, const s_coder_t *cd, sd3_tensor_t **x_p, sd3_err_t *err)
{
    if (s_resblock(self, &cd->mid1, x_p, err) || s_attention(self, &cd->attn, *x_p, err) ||
        s_resblock(self, &cd->mid2, x_p, err))
        return err->code ? err->code : SD3_EINTERNAL;
    return 0;
}

// norm_out, swish, conv_out: *x_p [B, c, H, W] -> [B, co, H, W].
static int
s_out(sd3_vae_t *self, const s_coder_t *cd, sd3_tensor_t **x_p, sd3_err_t *err)
{
    sd3_tensor_t *y = NULL;
    if (s_norm_swish(self, &cd->norm_out, *x_p, *x_p, err) ||
        s_conv(self, &cd->conv_out, *x_p, &s_same3, &y, err))
        return err->code ? err->code : SD3_EINTERNAL;
    s_free(self, x_p);
    *x_p = y;
    return 0;
}

static int
s_check_host_f32(const sd3_tensor_t *t, const char *what, int ndim, const int64_t *shape,
                 sd3_err_t *err)
{
    if (!t || t->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "vae: %s must be a host tensor", what);
    return sd3_tensor_expect(t, what, SD3_F32, ndim, shape, err);
}

// ---- decoder ---------------------------------------------------------------------------------

// z [B, Z, h, w] host -> image [B, 3, f*h, f*w] host, in one piece.
static int
s_decode_whole(sd3_vae_t *self, const sd3_tensor_t *z, sd3_tensor_t *image, sd3_err_t *err)
{
    const sd3_backend_ops_t *ops = self->be->ops;
    const s_coder_t *d = &self->dec;
    sd3_tensor_t *x = NULL, *h = NULL, *u = NULL;
    char name[32];
    int rc;
    if (!(x = s_new(self, z->shape[0], z->shape[1], z->shape[2], z->shape[3], err)) ||
        ops->upload(self->be, x, z, err) != 0 ||
        s_conv(self, &d->conv_in, x, &s_same3, &h, err)) // [B, c3, h, w]
        goto fail;
    s_free(self, &x);
    s_tap(self, "dec.conv_in", h);
    if (s_mid(self, d, &h, err))
        goto fail;
    s_tap(self, "dec.mid", h);
    for (int i = self->cfg.n_levels - 1; i >= 0; i--) {
        for (int j = 0; j < self->cfg.dec_blocks[i]; j++)
            if (s_resblock(self, &d->blocks[i][j], &h, err)) // [B, c_i, ., .]
                goto fail;
        if (d->has_resample[i]) { // nearest 2x, then conv 3x3
            if (!(u = s_new(self, h->shape[0], h->shape[1], 2 * h->shape[2], 2 * h->shape[3],
                            err)) ||
                ops->upsample2x(self->be, u, h, err) != 0)
                goto fail;
            s_free(self, &h);
            if (s_conv(self, &d->resample[i], u, &s_same3, &h, err))
                goto fail;
            s_free(self, &u);
        }
        snprintf(name, sizeof name, "dec.up.%d", i);
        s_tap(self, name, h);
    }
    if (s_out(self, d, &h, err) || ops->download(self->be, image, h, err) != 0) // [B, 3, H, W]
        goto fail;
    s_free(self, &h);
    return 0;
fail:
    rc = err && err->code ? err->code : SD3_EINTERNAL;
    s_free(self, &x);
    s_free(self, &h);
    s_free(self, &u);
    return rc;
}

// Blend weight of pixel p in [0, len) of a tile along one axis: linear ramps of `ramp`
// pixels on the sides that have a neighbour, 1 elsewhere. Strictly positive, so every
// pixel has weight; neighbouring ramps overlap and sum to about 1.
static float
s_ramp(int64_t p, int64_t len, int64_t ramp, bool lo, bool hi)
{
    float w = 1.0f;
    if (ramp > 0 && lo && p < ramp)
        w = fminf(w, ((float)p + 0.5f) / (float)ramp);
    if (ramp > 0 && hi && len - 1 - p < ramp)
        w = fminf(w, ((float)(len - 1 - p) + 0.5f) / (float)ramp);
    return w;
}

// Tile origins along one axis: steps of tile - overlap; the last one flush with the end.
static int
s_tile_starts(int64_t size, int64_t tile, int64_t overlap, int64_t *starts, int cap)
{
    int n = 0;
    if (size <= tile) {
        starts[0] = 0;
        return 1;
    }
    for (int64_t s = 0;; s += tile - overlap) {
        if (n == cap)
            return -1;
        if (s + tile >= size) {
            starts[n++] = size - tile;
            break;
        }
        starts[n++] = s;
    }
    return n;
}

static int
s_decode_tiled(sd3_vae_t *self, const sd3_tensor_t *z, sd3_tensor_t *image,
               const sd3_vae_tile_t *tile, sd3_err_t *err)
{
    enum { MAX_TILES = 4096 };
    int64_t b = z->shape[0], zc = z->shape[1], h = z->shape[2], w = z->shape[3];
    int64_t ch = image->shape[1], H = image->shape[2], W = image->shape[3];
    int64_t f = H / h, t = tile->tile, ov = tile->overlap;
    int64_t *ys = NULL, *xs = NULL;
    float *wsum = NULL;
    sd3_tensor_t *zt = NULL, *it = NULL;
    sd3_vae_tap_fn tap = self->tap;
    int rc = SD3_ENOMEM, ny, nx;
    self->tap = NULL; // intermediates of one tile mean nothing to the caller
    if (!(ys = malloc(MAX_TILES * sizeof *ys)) || !(xs = malloc(MAX_TILES * sizeof *xs)) ||
        !(wsum = calloc((size_t)(H * W), sizeof *wsum))) {
        sd3_err_set(err, SD3_ENOMEM, "vae: tiled decode of %lldx%lld", (long long)H, (long long)W);
        goto done;
    }
    ny = s_tile_starts(h, t, ov, ys, MAX_TILES);
    nx = s_tile_starts(w, t, ov, xs, MAX_TILES);
    if (ny < 0 || nx < 0) {
        rc = sd3_err_set(err, SD3_EINVAL,
                         "vae: tile %lld overlap %lld over %lldx%lld makes "
                         "more than %d tiles a side",
                         (long long)t, (long long)ov, (long long)h, (long long)w, MAX_TILES);
        goto done;
    }
    int64_t th = h < t ? h : t, tw = w < t ? w : t;
    if (!(zt = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){b, zc, th, tw}, "vae tile", err)) ||
        !(it = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){b, ch, f * th, f * tw}, "vae tile", err)))
        goto done;
    float *out = image->data;
    memset(out, 0, sd3_tensor_nbytes(image));
    for (int iy = 0; iy < ny; iy++)
        for (int ix = 0; ix < nx; ix++) {
            int64_t y0 = ys[iy], x0 = xs[ix];
            const float *zs = z->data;
            float *zd = zt->data;
            for (int64_t bc = 0; bc < b * zc; bc++) // z[:, :, y0:y0+th, x0:x0+tw]
                for (int64_t y = 0; y < th; y++)
                    memcpy(zd + (bc * th + y) * tw, zs + (bc * h + y0 + y) * w + x0,
                           (size_t)tw * sizeof(float));
            if ((rc = s_decode_whole(self, zt, it, err)) != 0)
                goto done;
            const float *src = it->data;
            int64_t ph = f * th, pw = f * tw, ramp = f * ov;
            for (int64_t y = 0; y < ph; y++) {
                float wy = s_ramp(y, ph, ramp, iy > 0, iy < ny - 1);
                for (int64_t x = 0; x < pw; x++) {
                    float wt = wy * s_ramp(x, pw, ramp, ix > 0, ix < nx - 1);
                    int64_t oy = f * y0 + y, ox = f * x0 + x;
                    wsum[oy * W + ox] += wt;
                    for (int64_t bc = 0; bc < b * ch; bc++)
                        out[(bc * H + oy) * W + ox] += wt * src[(bc * ph + y) * pw + x];
                }
            }
        }
    for (int64_t bc = 0; bc < b * ch; bc++)
        for (int64_t p = 0; p < H * W; p++)
            out[bc * H * W + p] /= wsum[p];
    rc = 0;
done:
    self->tap = tap;
    sd3_tensor_destroy(&zt);
    sd3_tensor_destroy(&it);
    free(ys);
    free(xs);
    free(wsum);
    return rc;
}

int
sd3_vae_decode(sd3_vae_t *self, const sd3_tensor_t *z, sd3_tensor_t *image,
               const sd3_vae_tile_t *tile, sd3_err_t *err)
{
    S_ERR_LOCAL(err);
    int rc;
    if ((rc = s_load_decoder(self, err)) != 0)
        return rc;
    int f = self->cfg.factor;
    if ((rc = s_check_host_f32(z, "vae latent", 4, (int64_t[]){-1, self->cfg.z_channels, -1, -1},
                               err)) != 0)
        return rc;
    if (z->shape[0] < 1 || z->shape[2] < 1 || z->shape[3] < 1 ||
        z->shape[2] * f > SD3_VAE_MAX_SIDE || z->shape[3] * f > SD3_VAE_MAX_SIDE)
        return sd3_err_set(err, SD3_EINVAL,
                           "vae: latent %lldx%lld gives an image past %d "
                           "pixels a side",
                           (long long)z->shape[2], (long long)z->shape[3], SD3_VAE_MAX_SIDE);
    if ((rc = s_check_host_f32(
             image, "vae image", 4,
             (int64_t[]){z->shape[0], self->cfg.image_channels, f * z->shape[2], f * z->shape[3]},
             err)) != 0)
        return rc;
    if (tile && tile->tile > 0) {
        if (tile->overlap < 0 || tile->overlap >= tile->tile)
            return sd3_err_set(err, SD3_EINVAL, "vae: tile overlap %d, want 0..%d (tile %d)",
                               tile->overlap, tile->tile - 1, tile->tile);
        if (z->shape[2] > tile->tile || z->shape[3] > tile->tile)
            return s_decode_tiled(self, z, image, tile, err);
    }
    return s_decode_whole(self, z, image, err);
}

// ---- encoder ---------------------------------------------------------------------------------

int
sd3_vae_encode_moments(sd3_vae_t *self, const sd3_tensor_t *image, sd3_tensor_t *moments,
                       sd3_err_t *err)
{
    S_ERR_LOCAL(err);
    const sd3_backend_ops_t *ops = self->be->ops;
    const s_coder_t *e = &self->enc;
    sd3_tensor_t *x = NULL, *h = NULL, *d = NULL;
    char name[32];
    int rc;
    if ((rc = s_load_encoder(self, err)) != 0)
        return rc;
    int f = self->cfg.factor;
    if ((rc = s_check_host_f32(image, "vae image", 4,
                               (int64_t[]){-1, self->cfg.image_channels, -1, -1}, err)) != 0)
        return rc;
    int64_t b = image->shape[0], H = image->shape[2], W = image->shape[3];
    if (b < 1 || H < f || W < f || H % f || W % f || H > SD3_VAE_MAX_SIDE || W > SD3_VAE_MAX_SIDE)
        return sd3_err_set(err, SD3_EINVAL,
                           "vae: image %lldx%lld, want multiples of %d up to "
                           "%d",
                           (long long)H, (long long)W, f, SD3_VAE_MAX_SIDE);
    if ((rc = s_check_host_f32(moments, "vae moments", 4,
                               (int64_t[]){b, 2 * self->cfg.z_channels, H / f, W / f}, err)) != 0)
        return rc;
    if (!(x = s_new(self, b, image->shape[1], H, W, err)) ||
        ops->upload(self->be, x, image, err) != 0 ||
        s_conv(self, &e->conv_in, x, &s_same3, &h, err)) // [B, c0, H, W]
        goto fail;
    s_free(self, &x);
    s_tap(self, "enc.conv_in", h);
    for (int i = 0; i < self->cfg.n_levels; i++) {
        for (int j = 0; j < self->cfg.enc_blocks[i]; j++)
            if (s_resblock(self, &e->blocks[i][j], &h, err)) // [B, c_i, ., .]
                goto fail;
        if (e->has_resample[i]) { // pad right/bottom 1, conv 3x3 stride 2
            if (s_conv(self, &e->resample[i], h, &s_down, &d, err))
                goto fail;
            s_free(self, &h);
            h = d;
            d = NULL;
        }
        snprintf(name, sizeof name, "enc.down.%d", i);
        s_tap(self, name, h);
    }
    if (s_mid(self, e, &h, err))
        goto fail;
    s_tap(self, "enc.mid", h);
    if (s_out(self, e, &h, err) || ops->download(self->be, moments, h, err) != 0) // [B, 2Z, h, w]
        goto fail;
    s_free(self, &h);
    return 0;
fail:
    rc = err && err->code ? err->code : SD3_EINTERNAL;
    s_free(self, &x);
    s_free(self, &h);
    s_free(self, &d);
    return rc;
}

// ---- pure helpers ----------------------------------------------------------------------------

void
sd3_vae_process_out(float *z, size_t n)
{
    for (size_t i = 0; i < n; i++)
        z[i] = z[i] / SD3_VAE_SCALE + SD3_VAE_SHIFT;
}

void
sd3_vae_process_in(float *z, size_t n)
{
    for (size_t i = 0; i < n; i++)
        z[i] = (z[i] - SD3_VAE_SHIFT) * SD3_VAE_SCALE;
}

int
sd3_vae_moments_split(const sd3_tensor_t *moments, const sd3_tensor_t *noise, sd3_tensor_t *mean,
                      sd3_tensor_t *logvar, sd3_tensor_t *std, sd3_tensor_t *sample, sd3_err_t *err)
{
    int rc;
    if ((rc = s_check_host_f32(moments, "vae moments", 4, (int64_t[]){-1, -1, -1, -1}, err)))
        return rc;
    int64_t b = moments->shape[0], z2 = moments->shape[1],
            hw = moments->shape[2] * moments->shape[3];
    if (z2 % 2)
        return sd3_err_set(err, SD3_EINVAL, "vae moments: %lld channels, want an even count",
                           (long long)z2);
    int64_t zc = z2 / 2;
    int64_t shape[4] = {b, zc, moments->shape[2], moments->shape[3]};
    sd3_tensor_t *outs[5] = {(sd3_tensor_t *)noise, mean, logvar, std, sample};
    static const char *names[5] = {"vae noise", "vae mean", "vae logvar", "vae std", "vae sample"};
    for (int i = 0; i < 5; i++)
        if (outs[i] && (rc = s_check_host_f32(outs[i], names[i], 4, shape, err)))
            return rc;
    const float *m = moments->data;
    for (int64_t bi = 0; bi < b; bi++)
        for (int64_t i = 0; i < zc * hw; i++) {
            size_t o = (size_t)(bi * zc * hw + i);
            float mu = m[bi * z2 * hw + i];
            float lv = m[bi * z2 * hw + zc * hw + i];
            lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
            float sd = expf(0.5f * lv);
            if (mean)
                sd3_tensor_f32(mean)[o] = mu;
            if (logvar)
                sd3_tensor_f32(logvar)[o] = lv;
            if (std)
                sd3_tensor_f32(std)[o] = sd;
            if (sample)
                sd3_tensor_f32(sample)[o] = noise ? mu + sd * sd3_tensor_f32(noise)[o] : mu;
        }
    return 0;
}

void
sd3_vae_image_to_rgb8(const float *image, int height, int width, uint8_t *rgb)
{
    size_t plane = (size_t)height * (size_t)width;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++) {
            float v = (image[(size_t)c * plane + p] + 1.0f) / 2.0f;
            v = v > 0.0f ? v : 0.0f; // NaN -> 0: the cast of NaN is undefined in C
            v = v < 1.0f ? v : 1.0f;
            rgb[3 * p + (size_t)c] = (uint8_t)(255.0f * v);
        }
}

void
sd3_vae_rgb8_to_image(const uint8_t *rgb, int height, int width, float *image)
{
    size_t plane = (size_t)height * (size_t)width;
    for (size_t p = 0; p < plane; p++)
        for (int c = 0; c < 3; c++)
            image[(size_t)c * plane + p] = 2.0f * ((float)rgb[3 * p + (size_t)c] / 255.0f) - 1.0f;
}

// ---- the pipeline's calls --------------------------------------------------------------------

sd3_tensor_t *
sd3_vae_decode_rgb8(sd3_vae_t *self, const sd3_tensor_t *latent, const sd3_vae_tile_t *tile,
                    sd3_err_t *err)
{
    S_ERR_LOCAL(err);
    sd3_tensor_t *z = NULL, *image = NULL, *rgb = NULL;
    if (s_load_decoder(self, err) ||
        s_check_host_f32(latent, "vae latent", 4, (int64_t[]){1, self->cfg.z_channels, -1, -1},
                         err))
        return NULL;
    int f = self->cfg.factor;
    int64_t H = f * latent->shape[2], W = f * latent->shape[3];
    if (latent->shape[2] < 1 || latent->shape[3] < 1 || H > SD3_VAE_MAX_SIDE ||
        W > SD3_VAE_MAX_SIDE) {
        sd3_err_set(err, SD3_EINVAL,
                    "vae: latent %lldx%lld gives an image past %d pixels a "
                    "side",
                    (long long)latent->shape[2], (long long)latent->shape[3], SD3_VAE_MAX_SIDE);
        return NULL;
    }
    if (!(z = sd3_tensor_clone(latent))) {
        sd3_err_set(err, SD3_ENOMEM, "vae: latent copy");
        goto fail;
    }
    sd3_vae_process_out(z->data, (size_t)sd3_tensor_numel(z)); // sampler -> VAE space
    if (!(image = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, self->cfg.image_channels, H, W},
                                     "vae image", err)) ||
        sd3_vae_decode(self, z, image, tile, err) != 0)
        goto fail;
    if (self->cfg.image_channels != 3) {
        sd3_err_set(err, SD3_ENOTSUP, "vae: %d image channels, RGB8 needs 3",
                    self->cfg.image_channels);
        goto fail;
    }
    if (!(rgb = sd3_tensor_new_err(SD3_U8, 3, (int64_t[]){H, W, 3}, "vae rgb8", err)))
        goto fail;
    sd3_vae_image_to_rgb8(image->data, (int)H, (int)W, rgb->data);
    sd3_tensor_destroy(&z);
    sd3_tensor_destroy(&image);
    return rgb;
fail:
    sd3_tensor_destroy(&z);
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&rgb);
    return NULL;
}

sd3_tensor_t *
sd3_vae_encode_rgb8(sd3_vae_t *self, const sd3_tensor_t *rgb, const sd3_tensor_t *noise,
                    sd3_err_t *err)
{
    S_ERR_LOCAL(err);
    sd3_tensor_t *image = NULL, *moments = NULL, *latent = NULL;
    if (s_load_encoder(self, err))
        return NULL;
    if (!rgb || rgb->where != SD3_HOST ||
        sd3_tensor_expect(rgb, "vae rgb8", SD3_U8, 3, (int64_t[]){-1, -1, 3}, err) != 0) {
        sd3_err_set(err, SD3_EINVAL, "vae: rgb8 input must be a host U8 [H, W, 3] tensor");
        return NULL;
    }
    int f = self->cfg.factor;
    int64_t H = rgb->shape[0], W = rgb->shape[1];
    if (H < f || W < f || H % f || W % f || H > SD3_VAE_MAX_SIDE || W > SD3_VAE_MAX_SIDE) {
        sd3_err_set(err, SD3_EINVAL, "vae: image %lldx%lld, want multiples of %d up to %d",
                    (long long)H, (long long)W, f, SD3_VAE_MAX_SIDE);
        return NULL;
    }
    int64_t zshape[4] = {1, self->cfg.z_channels, H / f, W / f};
    if (noise && s_check_host_f32(noise, "vae noise", 4, zshape, err))
        return NULL;
    if (!(image = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 3, H, W}, "vae image", err)) ||
        !(moments =
              sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 2 * self->cfg.z_channels, H / f, W / f},
                                 "vae moments", err)) ||
        !(latent = sd3_tensor_new_err(SD3_F32, 4, zshape, "vae latent", err)))
        goto fail;
    sd3_vae_rgb8_to_image(rgb->data, (int)H, (int)W, image->data);
    if (sd3_vae_encode_moments(self, image, moments, err) ||
        sd3_vae_moments_split(moments, noise, NULL, NULL, NULL, latent, err))
        goto fail;
    sd3_vae_process_in(latent->data, (size_t)sd3_tensor_numel(latent)); // VAE -> sampler space
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&moments);
    return latent;
fail:
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&moments);
    sd3_tensor_destroy(&latent);
    return NULL;
}

// ---- random models ---------------------------------------------------------------------------

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
    int kind; // 0 weight (fan-in scaled), 1 norm scale, 2 bias
} s_rand_t;

typedef struct {
    s_rand_t *t;
    int n, cap;
} s_rand_list_t;

static int s_rand_add(s_rand_list_t *l, int kind, int ndim, const int64_t *shape, const char *fmt,
                      ...) __attribute__((format(printf, 5, 6)));
static int
s_rand_add(s_rand_list_t *l, int kind, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        s_rand_t *nt = realloc(l->t, (size_t)cap * sizeof *nt);
        if (!nt)
            return -1;
        l->t = nt;
        l->cap = cap;
    }
    s_rand_t *t = &l->t[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->kind = kind;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    return 0;
}

static int
s_rand_conv(s_rand_list_t *l, const char *prefix, int co, int ci, int k)
{
    return s_rand_add(l, 0, 4, (int64_t[]){co, ci, k, k}, "%s.weight", prefix) ||
           s_rand_add(l, 2, 1, (int64_t[]){co}, "%s.bias", prefix);
}

static int
s_rand_norm(s_rand_list_t *l, const char *prefix, int c)
{
    return s_rand_add(l, 1, 1, (int64_t[]){c}, "%s.weight", prefix) ||
           s_rand_add(l, 2, 1, (int64_t[]){c}, "%s.bias", prefix);
}

static int
s_rand_res(s_rand_list_t *l, const char *prefix, int ci, int co)
{
    char p[128];
    int rc = 0;
    snprintf(p, sizeof p, "%s.norm1", prefix), rc |= s_rand_norm(l, p, ci);
    snprintf(p, sizeof p, "%s.conv1", prefix), rc |= s_rand_conv(l, p, co, ci, 3);
    snprintf(p, sizeof p, "%s.norm2", prefix), rc |= s_rand_norm(l, p, co);
    snprintf(p, sizeof p, "%s.conv2", prefix), rc |= s_rand_conv(l, p, co, co, 3);
    if (ci != co)
        snprintf(p, sizeof p, "%s.nin_shortcut", prefix), rc |= s_rand_conv(l, p, co, ci, 1);
    return rc;
}

static int
s_rand_mid(s_rand_list_t *l, const char *coder, int c)
{
    char p[128];
    int rc = 0;
    static const char *parts[4] = {"q", "k", "v", "proj_out"};
    snprintf(p, sizeof p, "%s.mid.block_1", coder), rc |= s_rand_res(l, p, c, c);
    snprintf(p, sizeof p, "%s.mid.attn_1.norm", coder), rc |= s_rand_norm(l, p, c);
    for (int i = 0; i < 4; i++)
        snprintf(p, sizeof p, "%s.mid.attn_1.%s", coder, parts[i]),
            rc |= s_rand_conv(l, p, c, c, 1);
    snprintf(p, sizeof p, "%s.mid.block_2", coder), rc |= s_rand_res(l, p, c, c);
    return rc;
}

static float
s_rand_uniform(uint64_t *state) // [-1, 1)
{
    uint64_t x = *state;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    *state = x;
    return (float)((double)(x >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

int
sd3_vae_write_random(const char *path, const int *channels, int n_levels, int z_channels,
                     sd3_dtype_t dtype, uint64_t seed, sd3_err_t *err)
{
    s_rand_list_t l = {0};
    sd3_st_writer_t *w = NULL;
    float *buf = NULL;
    void *out = NULL;
    char p[128];
    int rc = 0, top = channels[n_levels - 1];
    const char *E = "first_stage_model.encoder", *D = "first_stage_model.decoder";
    if (n_levels < 1 || n_levels > SD3_VAE_MAX_LEVELS || z_channels < 1)
        return sd3_err_set(err, SD3_EINVAL, "vae random: %d levels, %d latent channels", n_levels,
                           z_channels);
    // encoder
    snprintf(p, sizeof p, "%s.conv_in", E), rc |= s_rand_conv(&l, p, channels[0], 3, 3);
    for (int i = 0, ci = channels[0]; i < n_levels; ci = channels[i++]) {
        for (int j = 0; j < 2; j++) {
            snprintf(p, sizeof p, "%s.down.%d.block.%d", E, i, j);
            rc |= s_rand_res(&l, p, j == 0 ? ci : channels[i], channels[i]);
        }
        if (i != n_levels - 1)
            snprintf(p, sizeof p, "%s.down.%d.downsample.conv", E, i),
                rc |= s_rand_conv(&l, p, channels[i], channels[i], 3);
    }
    rc |= s_rand_mid(&l, E, top);
    snprintf(p, sizeof p, "%s.norm_out", E), rc |= s_rand_norm(&l, p, top);
    snprintf(p, sizeof p, "%s.conv_out", E), rc |= s_rand_conv(&l, p, 2 * z_channels, top, 3);
    // decoder
    snprintf(p, sizeof p, "%s.conv_in", D), rc |= s_rand_conv(&l, p, top, z_channels, 3);
    rc |= s_rand_mid(&l, D, top);
    for (int i = n_levels - 1, ci = top; i >= 0; ci = channels[i--]) {
        for (int j = 0; j < 3; j++) {
            snprintf(p, sizeof p, "%s.up.%d.block.%d", D, i, j);
            rc |= s_rand_res(&l, p, j == 0 ? ci : channels[i], channels[i]);
        }
        if (i != 0)
            snprintf(p, sizeof p, "%s.up.%d.upsample.conv", D, i),
                rc |= s_rand_conv(&l, p, channels[i], channels[i], 3);
    }
    snprintf(p, sizeof p, "%s.norm_out", D), rc |= s_rand_norm(&l, p, channels[0]);
    snprintf(p, sizeof p, "%s.conv_out", D), rc |= s_rand_conv(&l, p, 3, channels[0], 3);
    if (rc) {
        rc = sd3_err_set(err, SD3_ENOMEM, "vae random: tensor list");
        goto done;
    }
    if (!(w = sd3_st_writer_new(path, err)) || sd3_st_writer_meta(w, "format", "pt", err) != 0) {
        rc = err && err->code ? err->code : SD3_EIO;
        goto done;
    }
    size_t max_n = 0;
    for (int i = 0; i < l.n; i++) {
        size_t n = 1;
        for (int d = 0; d < l.t[i].ndim; d++)
            n *= (size_t)l.t[i].shape[d];
        max_n = n > max_n ? n : max_n;
        if ((rc = sd3_st_writer_declare(w, l.t[i].name, dtype, l.t[i].ndim, l.t[i].shape, err)) !=
            0)
            goto done;
    }
    if ((rc = sd3_st_writer_begin(w, err)) != 0)
        goto done;
    if (!(buf = malloc(max_n * sizeof *buf)) || !(out = malloc(max_n * sd3_dtype_size(dtype)))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "vae random: %zu floats", max_n);
        goto done;
    }
    uint64_t state = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    for (int i = 0; i < l.n; i++) {
        const s_rand_t *t = &l.t[i];
        size_t n = 1, fan_in = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= (size_t)t->shape[d];
        for (int d = 1; d < t->ndim; d++)
            fan_in *= (size_t)t->shape[d];
        // U(-a, a) has variance a^2/3: a = sqrt(3/fan_in) gives 1/fan_in.
        float a = t->kind == 0 ? sqrtf(3.0f / (float)fan_in) : t->kind == 1 ? 0.2f : 0.05f;
        for (size_t k = 0; k < n; k++)
            buf[k] = (t->kind == 1 ? 1.0f : 0.0f) + a * s_rand_uniform(&state);
        sd3_dtype_from_f32(dtype, buf, out, n);
        if ((rc = sd3_st_writer_write(w, out, n * sd3_dtype_size(dtype), err)) != 0)
            goto done;
    }
    rc = sd3_st_writer_finish(&w, err);
done:
    if (w)
        sd3_st_writer_abort(&w);
    free(buf);
    free(out);
    free(l.t);
    return rc;
}
