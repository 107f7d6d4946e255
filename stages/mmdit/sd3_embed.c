/*  sd3_embed - the MMDiT's first and last pieces: embedders and final layer
 *
 *  Embed (MODEL.md §4.1-4.4): patchify the latent (a host permutation) and project it with
 *  x_embedder as a [C, Z*p*p] linear, add the pos_embed crop (copied from the stored
 *  table, never recomputed), t_emb = MLP(t_freq) with t_freq computed on the host in
 *  float32 (cos first), y_emb = MLP(y), c = t_emb + y_emb, ctx = context_embedder(context).
 *  Final (§4.8-4.9): Linear(modulate(LN(x), shift, scale)) then unpatchify on the host.  */
#include "sd3_mmdit_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
sd3_mmdit_embed_load(sd3_mmdit_t *self, sd3_err_t *err)
{
    const sd3_mmdit_config_t *cfg = &self->cfg;
    const int64_t C = cfg->hidden, p = cfg->patch, Z = cfg->in_channels;
    const sd3_tensor_t *w = NULL;
    if (sd3_weights_need(self->weights, "x_embedder.proj.weight", 4, (int64_t[]){C, Z, p, p}, &w,
                         err))
        return err->code;
    // The conv weight [C, Z, p, p] is the linear weight [C, Z*p*p] on patch vectors indexed
    // ch*p*p + i*p + j (MODEL.md §4.1): the same bytes, another shape.
    self->patch_w_host = *w;
    self->patch_w_host.ndim = 2;
    self->patch_w_host.shape[0] = C;
    self->patch_w_host.shape[1] = Z * p * p;
    self->patch_w_host.shape[2] = self->patch_w_host.shape[3] = 0;
    if (!(self->patch.w = self->be->ops->weight(self->be, &self->patch_w_host, err)) ||
        sd3_mmdit_load_vec(self, &self->patch.b, "x_embedder.proj.bias", C, err))
        return err->code;
    const sd3_tensor_t *pos = NULL;
    int64_t PP = (int64_t)cfg->pos_max * cfg->pos_max;
    // Kept on the host: only the crop of the current grid goes to the backend (the SD3.5-M
    // table is 147456 rows).
    if (sd3_weights_need(self->weights, "pos_embed", 3, (int64_t[]){1, PP, C}, &pos, err))
        return err->code;
    self->pos_host = pos;
    if (sd3_mmdit_load_linear(self, &self->t_mlp0, "t_embedder.mlp.0", C, SD3_MMDIT_FREQ_DIM,
                              err) ||
        sd3_mmdit_load_linear(self, &self->t_mlp2, "t_embedder.mlp.2", C, C, err) ||
        sd3_mmdit_load_linear(self, &self->y_mlp0, "y_embedder.mlp.0", C, cfg->adm_in, err) ||
        sd3_mmdit_load_linear(self, &self->y_mlp2, "y_embedder.mlp.2", C, C, err) ||
        sd3_mmdit_load_linear(self, &self->ctx_embed, "context_embedder", C, cfg->context_in, err))
        return err->code;
    return 0;
}

int
sd3_mmdit_final_load(sd3_mmdit_t *self, sd3_err_t *err)
{
    const int64_t C = self->cfg.hidden;
    const int64_t out = (int64_t)self->cfg.patch * self->cfg.patch * self->cfg.in_channels;
    if (sd3_mmdit_load_linear(self, &self->final_mod, "final_layer.adaLN_modulation.1", 2 * C, C,
                              err) ||
        sd3_mmdit_load_linear(self, &self->final_linear, "final_layer.linear", out, C, err))
        return err->code;
    return 0;
}

void
sd3_mmdit_t_freq(const float *t, int batch, float *out)
{
    // freqs[k] = exp(-ln(10000) * k / 128) and args = t * freqs, all float32 as in the
    // reference (torch.arange float32, scalar ops in float32); [cos, sin], cos first.
    const int half = SD3_MMDIT_FREQ_DIM / 2;
    for (int b = 0; b < batch; b++)
        for (int k = 0; k < half; k++) {
            float freq = expf((-9.21034037198f * (float)k) / (float)half);
            float arg = t[b] * freq;
            out[b * SD3_MMDIT_FREQ_DIM + k] = cosf(arg);
            out[b * SD3_MMDIT_FREQ_DIM + half + k] = sinf(arg);
        }
}

// MLP of an embedder: out = W2 SiLU(W1 in + b1) + b2.   in: [B, K]  tmp, out: [B, C]
static int
s_embed_mlp(sd3_mmdit_t *self, sd3_tensor_t *out, sd3_tensor_t *tmp, const sd3_tensor_t *in,
            const sd3_mmdit_linear_t *l0, const sd3_mmdit_linear_t *l2, sd3_err_t *err)
{
    if (sd3_mmdit_linear(self, tmp, in, l0, err) ||
        self->be->ops->act(self->be, tmp, tmp, SD3_ACT_SILU, err) ||
        sd3_mmdit_linear(self, out, tmp, l2, err))
        return err->code;
    return 0;
}

static int
s_upload(sd3_mmdit_t *self, sd3_tensor_t **dst_p, const sd3_tensor_t *src, const char *what,
         sd3_err_t *err)
{
    if (!(*dst_p = sd3_mmdit_tensor(self, src->ndim, src->shape, what, err)))
        return err->code;
    return self->be->ops->upload(self->be, *dst_p, src, err);
}

// The pos_embed crop for an h x w token grid (MODEL.md §4.2), cached in backend memory:
// rows top..top+h-1 and columns left..left+w-1 of the P x P table, top = (P - h) / 2,
// left = (P - w) / 2, read from the stored table (never recomputed) and widened to f32.
static int
s_pos_crop(sd3_mmdit_t *self, int64_t h, int64_t w, sd3_err_t *err)
{
    if (self->pos_crop && self->pos_h == h && self->pos_w == w)
        return 0;
    sd3_mmdit_free(self, &self->pos_crop);
    const int64_t P = self->cfg.pos_max, C = self->cfg.hidden, N = h * w;
    const int64_t top = (P - h) / 2, left = (P - w) / 2;
    const sd3_tensor_t *table = self->pos_host;
    const size_t esz = sd3_dtype_size(table->dtype);
    sd3_tensor_t *host = sd3_tensor_new_err(SD3_F32, 2, (int64_t[]){N, C}, "pos_crop", err);
    if (!host)
        return err->code;
    for (int64_t r = 0; r < h; r++)
        sd3_dtype_to_f32(table->dtype,
                         (const char *)table->data + (size_t)(((top + r) * P + left) * C) * esz,
                         sd3_tensor_f32(host) + r * w * C, (size_t)(w * C));
    int rc = 0;
    if (!(self->pos_crop = sd3_mmdit_tensor(self, 2, (int64_t[]){N, C}, "pos_crop", err)) ||
        self->be->ops->upload(self->be, self->pos_crop, host, err)) {
        rc = err->code ? err->code : SD3_EINTERNAL;
        sd3_mmdit_free(self, &self->pos_crop);
    } else {
        self->pos_h = (int)h;
        self->pos_w = (int)w;
    }
    sd3_tensor_destroy(&host);
    return rc;
}

int
sd3_mmdit_embed(sd3_mmdit_t *self, const sd3_tensor_t *latent, const float *timestep,
                const sd3_tensor_t *y, const sd3_tensor_t *context, sd3_mmdit_act_t *act,
                sd3_err_t *err)
{
    const sd3_mmdit_config_t *cfg = &self->cfg;
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    sd3_tensor_t *patches_h = NULL, *patches = NULL, *tf_h = NULL, *tf = NULL, *tmp = NULL;
    sd3_tensor_t *t_emb = NULL, *y_dev = NULL, *y_emb = NULL, *ctx_in = NULL;
    memset(act, 0, sizeof *act);
    if (self->first != 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit embed: this object hosts blocks [%d,%d), "
                           "not the first range",
                           self->first, self->last);
    if (!latent || latent->ndim != 4 || latent->dtype != SD3_F32 || latent->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "mmdit embed: latent must be host f32 [B,Z,h,w]");
    const int64_t B = latent->shape[0], Z = cfg->in_channels, p = cfg->patch, C = cfg->hidden;
    const int64_t H = latent->shape[2], W = latent->shape[3];
    if (B < 1 || B > 1024 || H < p || W < p || H % p || W % p ||
        sd3_tensor_expect(latent, "latent", SD3_F32, 4, (int64_t[]){B, Z, H, W}, err))
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit embed: latent [%lld,%lld,%lld,%lld] needs "
                           "%lld channels and even h, w",
                           (long long)B, (long long)latent->shape[1], (long long)H, (long long)W,
                           (long long)Z);
    const int64_t h = H / p, w = W / p, N = h * w, P = cfg->pos_max;
    if (h > P || w > P)
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit embed: token grid %lldx%lld exceeds the "
                           "position table %lldx%lld",
                           (long long)h, (long long)w, (long long)P, (long long)P);
    if (sd3_tensor_expect(y, "y", SD3_F32, 2, (int64_t[]){B, cfg->adm_in}, err) ||
        sd3_tensor_expect(context, "context", SD3_F32, 3, (int64_t[]){B, -1, cfg->context_in}, err))
        return err->code;
    const int64_t L = context->shape[1];
    if (L < 1 || L > 1 << 20)
        return sd3_err_set(err, SD3_EINVAL, "mmdit embed: %lld context tokens", (long long)L);
    for (int64_t b = 0; b < B; b++)
        if (!isfinite(timestep[b]))
            return sd3_err_set(err, SD3_EINVAL, "mmdit embed: timestep %lld is not finite",
                               (long long)b);
    act->batch = (int)B;
    act->n_ctx = (int)L;
    act->grid_h = (int)h;
    act->grid_w = (int)w;

    // Patchify on the host: patch vector of token r*w + c, index ch*p*p + i*p + j.
    const int64_t K = Z * p * p;
    if (!(patches_h = sd3_tensor_new_err(SD3_F32, 3, (int64_t[]){B, N, K}, "patches", err)))
        goto fail;
    const float *lat = latent->data;
    float *pt = patches_h->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < h; r++)
            for (int64_t c = 0; c < w; c++)
                for (int64_t ch = 0; ch < Z; ch++)
                    for (int64_t i = 0; i < p; i++)
                        for (int64_t j = 0; j < p; j++)
                            pt[((b * N + r * w + c) * K) + ch * p * p + i * p + j] =
                                lat[((b * Z + ch) * H + r * p + i) * W + c * p + j];
    if (s_upload(self, &patches, patches_h, "patches", err) ||
        !(act->x = sd3_mmdit_tensor(self, 3, (int64_t[]){B, N, C}, "x", err)) ||
        sd3_mmdit_linear(self, act->x, patches, &self->patch, err))
        goto fail;
    sd3_mmdit_tap(self, act->x, "x_patch");

    // Position embedding: the crop of the stored table, added to each batch item.
    if (s_pos_crop(self, h, w, err))
        goto fail;
    sd3_tensor_t pos0 = sd3_mmdit_view(self->pos_crop, 0, 3, (int64_t[]){1, N, C});
    sd3_mmdit_tap(self, &pos0, "pos_embed_cropped");
    for (int64_t b = 0; b < B; b++) {
        sd3_tensor_t xb = sd3_mmdit_view(act->x, b * N * C, 2, (int64_t[]){N, C}); // [N, C]
        if (op->add(be, &xb, &xb, self->pos_crop, err))
            goto fail;
    }
    sd3_mmdit_tap(self, act->x, "x_embed");

    // c = MLP_t(t_freq) + MLP_y(y)
    if (!(tf_h = sd3_tensor_new_err(SD3_F32, 2, (int64_t[]){B, SD3_MMDIT_FREQ_DIM}, "t_freq", err)))
        goto fail;
    sd3_mmdit_t_freq(timestep, (int)B, tf_h->data);
    if (s_upload(self, &tf, tf_h, "t_freq", err))
        goto fail;
    sd3_mmdit_tap(self, tf, "t_freq");
    if (!(tmp = sd3_mmdit_tensor(self, 2, (int64_t[]){B, C}, "embed_tmp", err)) ||
        !(t_emb = sd3_mmdit_tensor(self, 2, (int64_t[]){B, C}, "t_emb", err)) ||
        !(y_emb = sd3_mmdit_tensor(self, 2, (int64_t[]){B, C}, "y_emb", err)) ||
        !(act->c = sd3_mmdit_tensor(self, 2, (int64_t[]){B, C}, "c", err)) ||
        s_embed_mlp(self, t_emb, tmp, tf, &self->t_mlp0, &self->t_mlp2, err) ||
        s_upload(self, &y_dev, y, "y", err) ||
        s_embed_mlp(self, y_emb, tmp, y_dev, &self->y_mlp0, &self->y_mlp2, err) ||
        op->add(be, act->c, t_emb, y_emb, err))
        goto fail;
    sd3_mmdit_tap(self, t_emb, "t_emb");
    sd3_mmdit_tap(self, y_emb, "y_emb");
    sd3_mmdit_tap(self, act->c, "c");

    if (s_upload(self, &ctx_in, context, "context", err) ||
        !(act->ctx = sd3_mmdit_tensor(self, 3, (int64_t[]){B, L, C}, "ctx", err)) ||
        sd3_mmdit_linear(self, act->ctx, ctx_in, &self->ctx_embed, err))
        goto fail;
    sd3_mmdit_tap(self, act->ctx, "context_embed");
    act->next_block = 0;

    sd3_tensor_destroy(&patches_h);
    sd3_tensor_destroy(&tf_h);
    sd3_tensor_t **dev[] = {&patches, &tf, &tmp, &t_emb, &y_dev, &y_emb, &ctx_in};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        sd3_mmdit_free(self, dev[i]);
    return 0;
fail:
    sd3_tensor_destroy(&patches_h);
    sd3_tensor_destroy(&tf_h);
    sd3_tensor_t **all[] = {&patches, &tf, &tmp, &t_emb, &y_dev, &y_emb, &ctx_in};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_mmdit_free(self, all[i]);
    sd3_mmdit_act_fini(be, act);
    return err->code ? err->code : SD3_EINTERNAL;
}

int
sd3_mmdit_final(sd3_mmdit_t *self, sd3_mmdit_act_t *act, sd3_tensor_t *out, sd3_err_t *err)
{
    const sd3_mmdit_config_t *cfg = &self->cfg;
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    sd3_tensor_t *silu_c = NULL, *mod = NULL, *ln = NULL, *o = NULL, *o_h = NULL;
    if (self->last != cfg->depth)
        return sd3_err_set(err, SD3_EINVAL,
                           "mmdit final: this object hosts blocks [%d,%d), "
                           "not the last range of %d",
                           self->first, self->last, cfg->depth);
    if (act->next_block != cfg->depth || !act->x || !act->c)
        return sd3_err_set(err, SD3_EINVAL, "mmdit final: activations after block %d, want %d",
                           act->next_block, cfg->depth);
    const int64_t B = act->batch, h = act->grid_h, w = act->grid_w, N = h * w, C = cfg->hidden;
    const int64_t p = cfg->patch, Z = cfg->in_channels, K = p * p * Z;
    if (sd3_tensor_expect(out, "out", SD3_F32, 4, (int64_t[]){B, Z, h * p, w * p}, err) ||
        sd3_tensor_expect(act->x, "x", SD3_DTYPE_COUNT, 3, (int64_t[]){B, N, C}, err))
        return err->code;
    if (!(silu_c = sd3_mmdit_tensor(self, 2, (int64_t[]){B, C}, "silu_c", err)) ||
        !(mod = sd3_mmdit_tensor(self, 2, (int64_t[]){B, 2 * C}, "final_mod", err)) ||
        !(ln = sd3_mmdit_tensor(self, 3, (int64_t[]){B, N, C}, "final_ln", err)) ||
        !(o = sd3_mmdit_tensor(self, 3, (int64_t[]){B, N, K}, "final_layer", err)) ||
        op->act(be, silu_c, act->c, SD3_ACT_SILU, err) ||
        sd3_mmdit_linear(self, mod, silu_c, &self->final_mod, err) ||
        op->layernorm(be, ln, act->x, NULL, NULL, 1e-6f, err) ||
        op->modulate(be, ln, ln, mod, 0, 1, err) || // chunks: shift, scale
        sd3_mmdit_linear(self, o, ln, &self->final_linear, err))
        goto fail;
    sd3_mmdit_tap(self, o, "final_layer");
    if (!(o_h = sd3_tensor_new_err(SD3_F32, 3, (int64_t[]){B, N, K}, "final_layer", err)) ||
        op->download(be, o_h, o, err))
        goto fail;
    // Unpatchify (MODEL.md §4.9): out[b, ch, p*r + i, p*c + j] = O[b, r*w + c, (i*p + j)*Z + ch]
    const float *src = o_h->data;
    float *dst = out->data;
    const int64_t H = h * p, W = w * p;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < h; r++)
            for (int64_t c = 0; c < w; c++)
                for (int64_t i = 0; i < p; i++)
                    for (int64_t j = 0; j < p; j++)
                        for (int64_t ch = 0; ch < Z; ch++)
                            dst[((b * Z + ch) * H + r * p + i) * W + c * p + j] =
                                src[(b * N + r * w + c) * K + (i * p + j) * Z + ch];
    sd3_tensor_destroy(&o_h);
    sd3_mmdit_free(self, &silu_c);
    sd3_mmdit_free(self, &mod);
    sd3_mmdit_free(self, &ln);
    sd3_mmdit_free(self, &o);
    return 0;
fail:
    sd3_tensor_destroy(&o_h);
    sd3_mmdit_free(self, &silu_c);
    sd3_mmdit_free(self, &mod);
    sd3_mmdit_free(self, &ln);
    sd3_mmdit_free(self, &o);
    return err->code ? err->code : SD3_EINTERNAL;
}
