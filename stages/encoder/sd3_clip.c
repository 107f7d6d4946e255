/*  sd3_clip - the CLIP text models SD3 uses (see sd3_clip.h)  */
#include "sd3_clip.h"

#include "sd3_enc_common.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_PREFIX "text_model."

typedef struct {
    const sd3_tensor_t *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const sd3_tensor_t *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    const sd3_tensor_t *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} s_layer_t;

struct sd3_clip {
    sd3_backend_t *be;
    sd3_weights_t *weights;
    sd3_clip_config_t cfg;
    const sd3_tensor_t *tok_emb; // host view [V, W] (gathered on the host)
    const sd3_tensor_t *pos_emb; // host view [n_pos, W]
    s_layer_t *layers;
    const sd3_tensor_t *final_w, *final_b, *proj_w;
};

// -- configuration -------------------------------------------------------------------------

int
sd3_clip_config_detect(const sd3_weights_t *weights, sd3_component_t comp, const char *config_json,
                       sd3_clip_config_t *cfg, sd3_err_t *err)
{
    int64_t shape[SD3_MAX_DIM];
    char name[128];
    memset(cfg, 0, sizeof *cfg);
    if (sd3_enc_shape(weights, "CLIP", S_PREFIX "embeddings.token_embedding.weight", 2, shape, err))
        return err ? err->code : SD3_EFORMAT;
    cfg->vocab = (int)shape[0];
    cfg->width = (int)shape[1];
    if (sd3_enc_shape(weights, "CLIP", S_PREFIX "embeddings.position_embedding.weight", 2, shape,
                      err))
        return err ? err->code : SD3_EFORMAT;
    cfg->n_pos = (int)shape[0];
    if (shape[1] != cfg->width)
        return sd3_err_set(err, SD3_EFORMAT,
                           "CLIP weights: position_embedding width %lld, "
                           "token_embedding width %d",
                           (long long)shape[1], cfg->width);
    if (sd3_enc_shape(weights, "CLIP", S_PREFIX "encoder.layers.0.mlp.fc1.weight", 2, shape, err))
        return err ? err->code : SD3_EFORMAT;
    cfg->ffn = (int)shape[0];
    for (cfg->n_layers = 0; cfg->n_layers < 1000; cfg->n_layers++) {
        snprintf(name, sizeof name, S_PREFIX "encoder.layers.%d.layer_norm1.weight", cfg->n_layers);
        if (!sd3_weights_has(weights, name))
            break;
    }
    if (sd3_weights_shape(weights, "text_projection.weight", &(int){0}, shape) == 0)
        cfg->proj_dim = (int)shape[0];
    if (cfg->width <= 0 || cfg->vocab <= 0 || cfg->n_pos <= 0 || cfg->ffn <= 0)
        return sd3_err_set(err, SD3_EFORMAT, "CLIP weights: empty embedding or FFN");
    if (cfg->n_layers < 2)
        return sd3_err_set(err, SD3_EFORMAT,
                           "CLIP weights: %d layers; SD3 needs the "
                           "penultimate one (>= 2)",
                           cfg->n_layers);

    // Defaults: released CLIPs have head dim 64. A width that is no multiple of 64 (the tiny
    // test models) falls back to head dim 16; a config names the count exactly.
    int head_dim = cfg->width % 64 == 0 ? 64 : 16;
    cfg->n_heads = cfg->width % head_dim == 0 ? cfg->width / head_dim : 1;
    cfg->act = comp == SD3_COMP_CLIP_G ? SD3_ACT_GELU_ERF : SD3_ACT_QUICK_GELU;
    cfg->ln_eps = 1e-5f;
    cfg->layer_idx = cfg->n_layers - 2;

    if (config_json) {
        cJSON *root = sd3_enc_config_parse(config_json, "CLIP", err);
        if (!root)
            return SD3_EFORMAT;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "num_attention_heads");
        if (cJSON_IsNumber(it))
            cfg->n_heads = it->valueint;
        it = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
        if (cJSON_IsNumber(it))
            cfg->ln_eps = (float)it->valuedouble;
        it = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
        int rc = 0;
        if (cJSON_IsString(it)) {
            if (!strcmp(it->valuestring, "quick_gelu"))
                cfg->act = SD3_ACT_QUICK_GELU;
            else if (!strcmp(it->valuestring, "gelu"))
                cfg->act = SD3_ACT_GELU_ERF;
            else if (!strcmp(it->valuestring, "gelu_new") ||
                     !strcmp(it->valuestring, "gelu_pytorch_tanh"))
                cfg->act = SD3_ACT_GELU_TANH;
            else
                rc = sd3_err_set(err, SD3_ENOTSUP, "CLIP config: hidden_act '%s' unsupported",
                                 it->valuestring);
        }
        it = cJSON_GetObjectItemCaseSensitive(root, "num_hidden_layers");
        if (!rc && cJSON_IsNumber(it) && it->valueint != cfg->n_layers)
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "CLIP config: num_hidden_layers %d, weights "
                             "hold %d layers",
                             it->valueint, cfg->n_layers);
        cJSON_Delete(root);
        if (rc)
            return rc;
    }
    if (cfg->n_heads <= 0 || cfg->width % cfg->n_heads != 0)
        return sd3_err_set(err, SD3_EFORMAT, "CLIP config: %d heads do not divide width %d",
                           cfg->n_heads, cfg->width);
    return 0;
}

// -- construction --------------------------------------------------------------------------

sd3_clip_t *
sd3_clip_new(sd3_backend_t *be, sd3_weights_t *weights, const sd3_clip_config_t *cfg,
             sd3_err_t *err)
{
    const int64_t W = cfg->width, F = cfg->ffn;
    sd3_clip_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "CLIP: out of memory");
        return NULL;
    }
    self->be = be;
    self->weights = weights;
    self->cfg = *cfg;
    if (cfg->n_layers < 2 || cfg->layer_idx < 0 || cfg->layer_idx >= cfg->n_layers ||
        cfg->n_heads <= 0 || W % cfg->n_heads != 0) {
        sd3_err_set(err, SD3_EINVAL,
                    "CLIP: bad config (width %d, %d layers, %d heads, "
                    "context layer %d)",
                    cfg->width, cfg->n_layers, cfg->n_heads, cfg->layer_idx);
        goto fail;
    }
    self->layers = calloc((size_t)cfg->n_layers, sizeof *self->layers);
    if (!self->layers) {
        sd3_err_set(err, SD3_ENOMEM, "CLIP: out of memory");
        goto fail;
    }
    const int64_t vw[2] = {cfg->vocab, W}, pw[2] = {cfg->n_pos, W};
    const int64_t ww[2] = {W, W}, w1[1] = {W}, fw[2] = {F, W}, wf[2] = {W, F}, f1[1] = {F};
    if (sd3_enc_need(self->weights, self->be, "CLIP", &self->tok_emb, true, 2, vw, err,
                     S_PREFIX "embeddings.token_embedding.weight") ||
        sd3_enc_need(self->weights, self->be, "CLIP", &self->pos_emb, true, 2, pw, err,
                     S_PREFIX "embeddings.position_embedding.weight"))
        goto fail;
    for (int i = 0; i < cfg->n_layers; i++) {
        s_layer_t *L = &self->layers[i];
#define S_L(field, nd, shp, suffix)                                                                \
    if (sd3_enc_need(self->weights, self->be, "CLIP", &L->field, false, nd, shp, err,              \
                     S_PREFIX "encoder.layers.%d." suffix, i))                                     \
        goto fail;
        S_L(ln1_w, 1, w1, "layer_norm1.weight")
        S_L(ln1_b, 1, w1, "layer_norm1.bias")
        S_L(ln2_w, 1, w1, "layer_norm2.weight")
        S_L(ln2_b, 1, w1, "layer_norm2.bias")
        S_L(q_w, 2, ww, "self_attn.q_proj.weight")
        S_L(q_b, 1, w1, "self_attn.q_proj.bias")
        S_L(k_w, 2, ww, "self_attn.k_proj.weight")
        S_L(k_b, 1, w1, "self_attn.k_proj.bias")
        S_L(v_w, 2, ww, "self_attn.v_proj.weight")
        S_L(v_b, 1, w1, "self_attn.v_proj.bias")
        S_L(o_w, 2, ww, "self_attn.out_proj.weight")
        S_L(o_b, 1, w1, "self_attn.out_proj.bias")
        S_L(fc1_w, 2, fw, "mlp.fc1.weight")
        S_L(fc1_b, 1, f1, "mlp.fc1.bias")
        S_L(fc2_w, 2, wf, "mlp.fc2.weight")
        S_L(fc2_b, 1, w1, "mlp.fc2.bias")
#undef S_L
    }
    if (sd3_enc_need(self->weights, self->be, "CLIP", &self->final_w, false, 1, w1, err,
                     S_PREFIX "final_layer_norm.weight") ||
        sd3_enc_need(self->weights, self->be, "CLIP", &self->final_b, false, 1, w1, err,
                     S_PREFIX "final_layer_norm.bias"))
        goto fail;
    if (cfg->proj_dim > 0) {
        const int64_t pj[2] = {cfg->proj_dim, W};
        if (sd3_enc_need(self->weights, self->be, "CLIP", &self->proj_w, false, 2, pj, err,
                         "text_projection.weight"))
            goto fail;
    }
    return self;
fail:
    sd3_clip_destroy(&self);
    return NULL;
}

void
sd3_clip_destroy(sd3_clip_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_clip_t *self = *self_p;
    free(self->layers);
    free(self);
    *self_p = NULL;
}

const sd3_clip_config_t *
sd3_clip_config(const sd3_clip_t *self)
{
    return &self->cfg;
}

// -- forward -------------------------------------------------------------------------------

static sd3_tensor_t *
s_act_new(sd3_backend_t *be, int ndim, const int64_t *shape, sd3_err_t *err)
{
    return be->ops->tensor_new(be, be->act_dtype, ndim, shape, err);
}

int
sd3_clip_encode(sd3_clip_t *self, const int32_t *ids, int n_ids, sd3_clip_out_t *out,
                sd3_enc_tap_fn tap, void *tap_user, sd3_err_t *err)
{
    sd3_backend_t *be = self->be;
    const sd3_backend_ops_t *op = be->ops;
    const sd3_clip_config_t *cfg = &self->cfg;
    const int64_t T = n_ids, W = cfg->width, F = cfg->ffn;
    const int64_t tw[3] = {1, T, W}, tf[3] = {1, T, F};
    sd3_tensor_t *emb = NULL, *x = NULL, *h = NULL, *q = NULL, *k = NULL, *v = NULL;
    sd3_tensor_t *a = NULL, *f = NULL;
    sd3_err_t local_err = {0};
    int rc = 0;

    if (!err)
        err = &local_err;
    memset(out, 0, sizeof *out);
    if (n_ids < 1 || n_ids > cfg->n_pos)
        return sd3_err_set(err, SD3_EINVAL, "CLIP: %d ids, want 1..%d", n_ids, cfg->n_pos);
    // argmax(ids): the first position holding the largest id (MODEL.md §5.2)
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= cfg->vocab)
            return sd3_err_set(err, SD3_EINVAL,
                               "CLIP: token id %d at position %d is outside "
                               "the vocabulary [0, %d)",
                               ids[i], i, cfg->vocab);
        if (ids[i] > ids[out->pool_index])
            out->pool_index = i;
    }

    // Embedding: token_embedding[id] + position_embedding[pos], gathered on the host.
    emb = sd3_tensor_new_err(SD3_F32, 3, tw, "clip.embeddings", err); // [1, T, W]
    if (!emb)
        return err->code;
    {
        float *e = sd3_tensor_f32(emb), *prow = malloc((size_t)W * sizeof(float));
        size_t esz = sd3_dtype_size(self->tok_emb->dtype);
        size_t psz = sd3_dtype_size(self->pos_emb->dtype);
        if (!prow) {
            rc = sd3_err_set(err, SD3_ENOMEM, "CLIP: out of memory");
            goto done;
        }
        for (int64_t t = 0; t < T; t++) {
            float *row = e + t * W;
            sd3_dtype_to_f32(self->tok_emb->dtype,
                             (const char *)self->tok_emb->data + (size_t)ids[t] * W * esz, row,
                             (size_t)W);
            sd3_dtype_to_f32(self->pos_emb->dtype,
                             (const char *)self->pos_emb->data + (size_t)t * W * psz, prow,
                             (size_t)W);
            for (int64_t c = 0; c < W; c++)
                row[c] += prow[c];
        }
        free(prow);
    }

    if (!(x = s_act_new(be, 3, tw, err)) || !(h = s_act_new(be, 3, tw, err)) ||
        !(q = s_act_new(be, 3, tw, err)) || !(k = s_act_new(be, 3, tw, err)) ||
        !(v = s_act_new(be, 3, tw, err)) || !(a = s_act_new(be, 3, tw, err)) ||
        !(f = s_act_new(be, 3, tf, err)) || !(out->context = s_act_new(be, 3, tw, err)) ||
        !(out->pooled = s_act_new(be, 2, (int64_t[]){1, W}, err))) {
        rc = err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
    if ((rc = op->upload(be, x, emb, err)) != 0) // x: [1, T, W]
        goto done;
    if ((rc = sd3_enc_tap(tap, tap_user, x, err, "embeddings")) != 0)
        goto done;

    const sd3_attn_opts_t attn = {
        .n_heads = cfg->n_heads,
        .scale = 1.0f / sqrtf((float)(W / cfg->n_heads)),
        .causal = true,
        .bias = NULL,
    };
    for (int i = 0; i < cfg->n_layers; i++) {
        const s_layer_t *L = &self->layers[i];
        if ((rc = op->layernorm(be, h, x, L->ln1_w, L->ln1_b, cfg->ln_eps, err)) || // [1,T,W]
            (rc = op->linear(be, q, h, L->q_w, L->q_b, err)) ||                     // [1,T,W]
            (rc = op->linear(be, k, h, L->k_w, L->k_b, err)) ||                     // [1,T,W]
            (rc = op->linear(be, v, h, L->v_w, L->v_b, err)) ||                     // [1,T,W]
            (rc = op->attention(be, a, q, k, v, &attn, err)) ||                     // [1,T,W]
            (rc = op->linear(be, h, a, L->o_w, L->o_b, err)) ||                     // [1,T,W]
            (rc = op->add(be, x, x, h, err)) ||                                     // [1,T,W]
            (rc = op->layernorm(be, h, x, L->ln2_w, L->ln2_b, cfg->ln_eps, err)) || // [1,T,W]
            (rc = op->linear(be, f, h, L->fc1_w, L->fc1_b, err)) ||                 // [1,T,F]
            (rc = op->act(be, f, f, cfg->act, err)) ||                              // [1,T,F]
            (rc = op->linear(be, h, f, L->fc2_w, L->fc2_b, err)) ||                 // [1,T,W]
            (rc = op->add(be, x, x, h, err)))                                       // [1,T,W]
            goto done;
        if ((rc = sd3_enc_tap(tap, tap_user, x, err, "layer.%d", i)) != 0)
            goto done;
        if (i == cfg->layer_idx &&
            (rc = op->copy2d(be, out->context, 0, 0, x, 0, 0, T, W, err)) != 0)
            goto done;
    }
    // last_hidden = final_layer_norm(x); pooled = its row at argmax(ids)
    if ((rc = op->layernorm(be, h, x, self->final_w, self->final_b, cfg->ln_eps, err)) ||
        (rc = sd3_enc_tap(tap, tap_user, h, err, "last_hidden")) ||
        (rc = op->copy2d(be, out->pooled, 0, 0, h, out->pool_index, 0, 1, W, err)))
        goto done;
    if (self->proj_w) {
        if (!(out->pooled_projected = s_act_new(be, 2, (int64_t[]){1, cfg->proj_dim}, err))) {
            rc = err->code ? err->code : SD3_ENOMEM;
            goto done;
        }
        if ((rc = op->linear(be, out->pooled_projected, out->pooled, self->proj_w, NULL, err)))
            goto done; // [1, P]
    }
done:
    sd3_tensor_destroy(&emb);
    sd3_enc_free(be, &x);
    sd3_enc_free(be, &h);
    sd3_enc_free(be, &q);
    sd3_enc_free(be, &k);
    sd3_enc_free(be, &v);
    sd3_enc_free(be, &a);
    sd3_enc_free(be, &f);
    if (rc)
        sd3_clip_out_fini(self, out);
    return rc;
}

void
sd3_clip_out_fini(sd3_clip_t *self, sd3_clip_out_t *out)
{
    sd3_backend_t *be = self->be;
    sd3_enc_free(be, &out->context);
    sd3_enc_free(be, &out->pooled);
    sd3_enc_free(be, &out->pooled_projected);
}

double
sd3_clip_flops(const sd3_clip_config_t *cfg, int n_ids)
{
    double T = n_ids, W = cfg->width, F = cfg->ffn;
    double per_layer = 2.0 * T * (4.0 * W * W + 2.0 * W * F) // q, k, v, out, fc1, fc2
                       + 4.0 * T * T * W * 0.5;              // q k^T and p v, causal half
    return cfg->n_layers * per_layer + 2.0 * W * cfg->proj_dim;
}
