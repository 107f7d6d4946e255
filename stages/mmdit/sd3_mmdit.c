/*  sd3_mmdit - the MMDiT as a chain of layer ranges (see sd3_mmdit.h)
 *
 *  Configuration detection, weight loading per range, the range driver and the FLOP model.
 *  The block itself is in sd3_mmdit_block.c, embedders and final layer in sd3_embed.c.  */
#include "sd3_mmdit.h"

#include "sd3_mmdit_impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- configuration -----------------------------------------------------------------------

static int
s_shape(const sd3_weights_t *w, const char *name, int want_ndim, int64_t *shape, sd3_err_t *err)
{
    int ndim = 0;
    if (sd3_weights_shape(w, name, &ndim, shape) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "mmdit checkpoint: tensor '%s' is missing", name);
    if (ndim != want_ndim)
        return sd3_err_set(err, SD3_EFORMAT, "mmdit checkpoint: '%s' has %d dims, want %d", name,
                           ndim, want_ndim);
    return 0;
}

int
sd3_mmdit_config_detect(const sd3_weights_t *weights, sd3_mmdit_config_t *cfg, sd3_err_t *err)
{
    int64_t s[SD3_MAX_DIM] = {0};
    memset(cfg, 0, sizeof *cfg);
    // patch = proj.weight.shape[2], depth = shape[0] / 64 (TESTVECTORS-dit.md §1)
    if (s_shape(weights, "x_embedder.proj.weight", 4, s, err))
        return err->code;
    if (s[0] % SD3_MMDIT_HEAD_DIM || s[0] / SD3_MMDIT_HEAD_DIM < 1 ||
        s[0] / SD3_MMDIT_HEAD_DIM > SD3_MMDIT_MAX_DEPTH || s[2] != s[3] || s[2] < 1 || s[2] > 8 ||
        s[1] < 1 || s[1] > 256)
        return sd3_err_set(err, SD3_EFORMAT,
                           "mmdit checkpoint: x_embedder.proj.weight is "
                           "[%lld,%lld,%lld,%lld], want [64*depth,16,2,2] "
                           "with depth <= %d",
                           (long long)s[0], (long long)s[1], (long long)s[2], (long long)s[3],
                           SD3_MMDIT_MAX_DEPTH);
    cfg->hidden = (int)s[0];
    cfg->depth = cfg->heads = (int)(s[0] / SD3_MMDIT_HEAD_DIM);
    cfg->in_channels = (int)s[1];
    cfg->patch = (int)s[2];
    if (s_shape(weights, "pos_embed", 3, s, err))
        return err->code;
    int64_t P = (int64_t)llround(sqrt((double)s[1]));
    if (s[0] != 1 || s[2] != cfg->hidden || P < 1 || P * P != s[1] || P > 100000)
        return sd3_err_set(err, SD3_EFORMAT,
                           "mmdit checkpoint: pos_embed is [%lld,%lld,%lld], "
                           "want [1,P*P,%d]",
                           (long long)s[0], (long long)s[1], (long long)s[2], cfg->hidden);
    cfg->pos_max = (int)P;
    if (s_shape(weights, "y_embedder.mlp.0.weight", 2, s, err))
        return err->code;
    cfg->adm_in = (int)s[1];
    if (s_shape(weights, "context_embedder.weight", 2, s, err))
        return err->code;
    cfg->context_in = (int)s[1];
    if (cfg->adm_in < 1 || cfg->context_in < 1 || cfg->adm_in > 1 << 20 ||
        cfg->context_in > 1 << 20)
        return sd3_err_set(err, SD3_EFORMAT,
                           "mmdit checkpoint: pooled width %d / context "
                           "width %d out of range",
                           cfg->adm_in, cfg->context_in);
    cfg->qk_norm = sd3_weights_has(weights, "joint_blocks.0.context_block.attn.ln_k.weight");
    for (int i = 0; i < cfg->depth; i++) {
        char name[96];
        snprintf(name, sizeof name, "joint_blocks.%d.x_block.attn2.ln_k.weight", i);
        bool has = sd3_weights_has(weights, name);
        if (!has) { // an attn2 without QK norm would still have its qkv
            snprintf(name, sizeof name, "joint_blocks.%d.x_block.attn2.qkv.weight", i);
            has = sd3_weights_has(weights, name);
        }
        if (has)
            cfg->attn2_mask |= UINT64_C(1) << i;
    }
    char name[96];
    snprintf(name, sizeof name, "joint_blocks.%d.x_block.attn.qkv.weight", cfg->depth - 1);
    if (!sd3_weights_has(weights, name))
        return sd3_err_set(err, SD3_EFORMAT,
                           "mmdit checkpoint: depth %d from x_embedder but "
                           "'%s' is missing",
                           cfg->depth, name);
    return 0;
}

const char *
sd3_mmdit_config_name(const sd3_mmdit_config_t *cfg)
{
    if (cfg->attn2_mask)
        return "sd3.5-medium";
    return cfg->qk_norm ? "sd3.5-large" : "sd3-medium";
}

// ---- internals shared with the block and embed files ---------------------------------------

sd3_tensor_t
sd3_mmdit_view(const sd3_tensor_t *t, int64_t offset, int ndim, const int64_t *shape)
{
    sd3_tensor_t v;
    char *base = t->data;
    sd3_tensor_view_init(&v, t->dtype, ndim, shape,
                         base + (size_t)offset * sd3_dtype_size(t->dtype));
    v.where = t->where;
    v.owner = t->owner ? t->owner : t;
    v.name = t->name;
    return v;
}

sd3_tensor_t *
sd3_mmdit_tensor(sd3_mmdit_t *self, int ndim, const int64_t *shape, const char *what,
                 sd3_err_t *err)
{
    sd3_tensor_t *t = self->be->ops->tensor_new(self->be, self->be->act_dtype, ndim, shape, err);
    if (!t)
        sd3_err_prefix(err, "mmdit %s", what);
    else
        t->name = what;
    return t;
}

void
sd3_mmdit_free(sd3_mmdit_t *self, sd3_tensor_t **t_p)
{
    if (t_p && *t_p)
        self->be->ops->tensor_free(self->be, t_p);
}

void
sd3_mmdit_tap(sd3_mmdit_t *self, const sd3_tensor_t *t, const char *fmt, ...)
{
    if (!self->tap)
        return;
    char name[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    self->tap(self->tap_user, name, t);
}

int
sd3_mmdit_linear(sd3_mmdit_t *self, sd3_tensor_t *y, const sd3_tensor_t *x,
                 const sd3_mmdit_linear_t *lin, sd3_err_t *err)
{
    sd3_backend_t *be = self->be;
    const int g = self->row_groups;
    if (g > 1 && !be->linear_batch_invariant && x->ndim >= 2 && y->ndim == x->ndim) {
        // A merged batch on a backend whose GEMM picks its kernel by M: each request's rows
        // on their own, so every row meets the call it meets alone (batch invariance).
        const int64_t K = x->shape[x->ndim - 1], N = y->shape[y->ndim - 1];
        const int64_t M = K > 0 ? sd3_tensor_numel(x) / K : 0;
        if (M % g == 0) {
            const int64_t m = M / g;
            int64_t xs[SD3_MAX_DIM], ys[SD3_MAX_DIM];
            memcpy(xs, x->shape, sizeof xs);
            memcpy(ys, y->shape, sizeof ys);
            xs[0] /= g; // the batch dim: whole requests (sd3_mmdit_blocks checks)
            ys[0] /= g;
            for (int i = 0; i < g; i++) {
                sd3_tensor_t xv = sd3_mmdit_view(x, i * m * K, x->ndim, xs);
                sd3_tensor_t yv = sd3_mmdit_view(y, i * m * N, y->ndim, ys);
                if (be->ops->linear(be, &yv, &xv, lin->w, lin->b, err))
                    return err->code;
            }
            return 0;
        }
    }
    return be->ops->linear(be, y, x, lin->w, lin->b, err);
}

int
sd3_mmdit_load_vec(sd3_mmdit_t *self, const sd3_tensor_t **out, const char *name, int64_t n,
                   sd3_err_t *err)
{
    const sd3_tensor_t *host = NULL;
    if (sd3_weights_need(self->weights, name, 1, &n, &host, err) ||
        !(*out = self->be->ops->weight(self->be, host, err)))
        return err->code ? err->code : SD3_EINTERNAL;
    return 0;
}

int
sd3_mmdit_load_linear(sd3_mmdit_t *self, sd3_mmdit_linear_t *lin, const char *prefix, int64_t out,
                      int64_t in, sd3_err_t *err)
{
    char name[160];
    const sd3_tensor_t *host = NULL;
    snprintf(name, sizeof name, "%s.weight", prefix);
    if (sd3_weights_need(self->weights, name, 2, (int64_t[]){out, in}, &host, err) ||
        !(lin->w = self->be->ops->weight(self->be, host, err)))
        return err->code ? err->code : SD3_EINTERNAL;
    snprintf(name, sizeof name, "%s.bias", prefix);
    return sd3_mmdit_load_vec(self, &lin->b, name, out, err);
}

// ---- object --------------------------------------------------------------------------------

sd3_mmdit_t *
sd3_mmdit_new(sd3_backend_t *be, sd3_weights_t *weights, int first, int last, sd3_err_t *err)
{
    sd3_mmdit_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "mmdit: out of memory");
        return NULL;
    }
    self->be = be;
    self->weights = weights;
    if (sd3_mmdit_config_detect(weights, &self->cfg, err))
        goto fail;
    if (last < 0)
        last = self->cfg.depth;
    if (first < 0 || first > last || last > self->cfg.depth || first == last) {
        sd3_err_set(err, SD3_EINVAL, "mmdit: block range [%d,%d) is not inside [0,%d) or empty",
                    first, last, self->cfg.depth);
        goto fail;
    }
    self->first = first;
    self->last = last;
    if (!(self->blocks = calloc((size_t)(last - first), sizeof *self->blocks))) {
        sd3_err_set(err, SD3_ENOMEM, "mmdit: out of memory");
        goto fail;
    }
    if (first == 0 && sd3_mmdit_embed_load(self, err))
        goto fail;
    for (int i = first; i < last; i++)
        if (sd3_mmdit_block_load(self, &self->blocks[i - first], i, err))
            goto fail;
    if (last == self->cfg.depth && sd3_mmdit_final_load(self, err))
        goto fail;
    return self;
fail:
    sd3_mmdit_destroy(&self);
    return NULL;
}

void
sd3_mmdit_destroy(sd3_mmdit_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_mmdit_t *self = *self_p;
    sd3_mmdit_ws_fini(self);
    sd3_mmdit_free(self, &self->pos_crop);
    free(self->blocks);
    free(self);
    *self_p = NULL;
}

const sd3_mmdit_config_t *
sd3_mmdit_config(const sd3_mmdit_t *self)
{
    return &self->cfg;
}

int
sd3_mmdit_first(const sd3_mmdit_t *self)
{
    return self->first;
}

int
sd3_mmdit_last(const sd3_mmdit_t *self)
{
    return self->last;
}

void
sd3_mmdit_set_tap(sd3_mmdit_t *self, sd3_mmdit_tap_fn fn, void *user)
{
    self->tap = fn;
    self->tap_user = user;
}

void
sd3_mmdit_set_progress(sd3_mmdit_t *self, sd3_mmdit_progress_fn fn, void *user)
{
    self->progress = fn;
    self->progress_user = user;
}

void
sd3_mmdit_act_fini(sd3_backend_t *be, sd3_mmdit_act_t *act)
{
    if (!act)
        return;
    sd3_tensor_t **all[] = {&act->x, &act->ctx, &act->c};
    for (size_t i = 0; i < 3; i++)
        if (*all[i])
            be->ops->tensor_free(be, all[i]);
    act->next_block = 0;
}

int
sd3_mmdit_blocks(sd3_mmdit_t *self, sd3_mmdit_act_t *act, uint64_t skip, sd3_err_t *err)
{
    const int64_t C = self->cfg.hidden;
    if (act->next_block != self->first)
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit blocks [%d,%d): activations are after block "
                           "%d",
                           self->first, self->last, act->next_block);
    const int64_t B = act->batch, L = act->n_ctx, N = (int64_t)act->grid_h * act->grid_w;
    if (B < 1 || L < 1 || N < 1 ||
        sd3_tensor_expect(act->x, "x", SD3_DTYPE_COUNT, 3, (int64_t[]){B, N, C}, err) ||
        sd3_tensor_expect(act->c, "c", SD3_DTYPE_COUNT, 2, (int64_t[]){B, C}, err) ||
        (act->ctx &&
         sd3_tensor_expect(act->ctx, "ctx", SD3_DTYPE_COUNT, 3, (int64_t[]){B, L, C}, err)))
        return err->code ? err->code : SD3_EINVAL;
    if (act->group < 0 || (act->group > 0 && B % act->group != 0))
        return sd3_err_set(err, SD3_EINVAL, "mmdit blocks: batch %lld is not whole groups of %d",
                           (long long)B, act->group);
    if (sd3_mmdit_ws_ensure(self, (int)B, (int)N, (int)L, err))
        return err->code;
    sd3_tensor_t silu_c = sd3_mmdit_view(self->ws.silu_c, 0, 2, (int64_t[]){B, C}); // [B, C]
    if (self->be->ops->act(self->be, &silu_c, act->c, SD3_ACT_SILU, err))
        return err->code;
    self->row_groups = act->group > 0 ? (int)(B / act->group) : 1;
    int rc = 0;
    for (int i = self->first; i < self->last && rc == 0; i++) {
        if (self->progress && self->progress(self->progress_user, i) != 0) {
            rc = sd3_err_set(err, SD3_ECANCELED, "mmdit blocks [%d,%d): stopped before block %d",
                             self->first, self->last, i);
            break;
        }
        if ((skip >> i) & 1u) {
            // Skipped (SLG): x and ctx pass through. A skipped last block still ends the
            // context stream, which nothing after it reads.
            if (i == self->cfg.depth - 1)
                sd3_mmdit_free(self, &act->ctx);
        } else if (sd3_mmdit_block_forward(self, &self->blocks[i - self->first], act, &silu_c,
                                           err)) {
            rc = sd3_err_prefix(err, "mmdit block %d", i);
            break;
        }
        act->next_block = i + 1;
    }
    self->row_groups = 1;
    if (rc == 0 && self->progress)
        self->progress(self->progress_user, self->last);
    return rc;
}

int
sd3_mmdit_forward(sd3_mmdit_t *self, const sd3_tensor_t *latent, const float *timestep,
                  const sd3_tensor_t *y, const sd3_tensor_t *context, uint64_t skip,
                  sd3_tensor_t *out, sd3_err_t *err)
{
    sd3_mmdit_act_t act;
    if (self->first != 0 || self->last != self->cfg.depth)
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit forward: this object hosts [%d,%d), not the "
                           "whole model [0,%d)",
                           self->first, self->last, self->cfg.depth);
    if (sd3_mmdit_embed(self, latent, timestep, y, context, &act, err))
        return err->code;
    int rc = sd3_mmdit_blocks(self, &act, skip, err);
    if (rc == 0)
        rc = sd3_mmdit_final(self, &act, out, err);
    sd3_mmdit_act_fini(self->be, &act);
    return rc;
}

double
sd3_mmdit_flops(const sd3_mmdit_config_t *cfg, int n_img, int n_ctx, int first, int last)
{
    // MODEL.md §9: per block 2*12*C^2*T + 4*T^2*C (T = N + L); attn2 adds 2*4*C^2*N + 4*N^2*C.
    const double C = cfg->hidden, N = n_img, L = n_ctx, T = N + L;
    double f = 0;
    for (int i = first; i < last; i++) {
        f += 2.0 * 12.0 * C * C * T + 4.0 * T * T * C;
        if ((cfg->attn2_mask >> i) & 1u)
            f += 2.0 * 4.0 * C * C * N + 4.0 * N * N * C;
    }
    if (first == 0) // patch, context, t and y embedders
        f += 2.0 * N * C * cfg->in_channels * cfg->patch * cfg->patch +
             2.0 * L * C * cfg->context_in + 2.0 * C * (256 + cfg->adm_in + 2 * C);
    if (last == cfg->depth) // final modulation and linear
        f += 2.0 * 2 * C * C + 2.0 * N * C * cfg->in_channels * cfg->patch * cfg->patch;
    return f;
}
