/*  sd3_t5 - the T5 v1.1 encoder (see sd3_t5.h)  */
#include "sd3_t5.h"

#include "sd3_enc_common.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_TOKENS 1024 // the bias alone is H N^2 floats: 256 MiB for T5-XXL at 1024

typedef struct {
    const sd3_tensor_t *ln0_w, *q_w, *k_w, *v_w, *o_w;
    const sd3_tensor_t *ln1_w, *wi0_w, *wi1_w, *wo_w;
} s_block_t;

struct sd3_t5 {
    sd3_backend_t *be;
    sd3_weights_t *weights;
    sd3_t5_config_t cfg;
    const sd3_tensor_t *tok_emb;  // host view [V, D]
    const sd3_tensor_t *rel_bias; // host view [n_buckets, H]
    s_block_t *blocks;
    const sd3_tensor_t *final_w;
};

static const char *
s_embed_name(const sd3_weights_t *w)
{
    return sd3_weights_has(w, "encoder.embed_tokens.weight") ? "encoder.embed_tokens.weight"
                                                             : "shared.weight";
}

int
sd3_t5_config_detect(const sd3_weights_t *weights, const char *config_json, sd3_t5_config_t *cfg,
                     sd3_err_t *err)
{
    int64_t shape[SD3_MAX_DIM];
    char name[128];
    int rc;
    memset(cfg, 0, sizeof *cfg);
    if (!sd3_weights_has(weights, "encoder.embed_tokens.weight") &&
        !sd3_weights_has(weights, "shared.weight"))
        return sd3_err_set(err, SD3_EFORMAT,
                           "T5 weights: no token table "
                           "('encoder.embed_tokens.weight' or 'shared.weight')");
    if ((rc = sd3_enc_shape(weights, "T5", s_embed_name(weights), 2, shape, err)))
        return rc;
    cfg->vocab = (int)shape[0];
    cfg->d_model = (int)shape[1];
    if ((rc = sd3_enc_shape(weights, "T5",
                            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                            2, shape, err)))
        return rc;
    cfg->n_buckets = (int)shape[0];
    cfg->n_heads = (int)shape[1];
    if ((rc = sd3_enc_shape(weights, "T5", "encoder.block.0.layer.0.SelfAttention.q.weight", 2,
                            shape, err)))
        return rc;
    if (cfg->n_heads > SD3_T5_MAX_HEADS)
        return sd3_err_set(err, SD3_EFORMAT,
                           "T5 weights: the relative attention bias has %d heads, at most %d "
                           "supported",
                           cfg->n_heads, SD3_T5_MAX_HEADS);
    if (cfg->n_heads <= 0 || shape[0] % cfg->n_heads != 0)
        return sd3_err_set(err, SD3_EFORMAT,
                           "T5 weights: q has %lld rows, not a multiple of "
                           "%d heads",
                           (long long)shape[0], cfg->n_heads);
    cfg->d_kv = (int)(shape[0] / cfg->n_heads);
    if (!sd3_weights_has(weights, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"))
        return sd3_err_set(err, SD3_ENOTSUP,
                           "T5 weights: no 'wi_0' (only the gated-GELU "
                           "T5 v1.1 feed-forward is supported)");
    if ((rc = sd3_enc_shape(weights, "T5", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 2,
                            shape, err)))
        return rc;
    cfg->d_ff = (int)shape[0];
    for (cfg->n_layers = 0; cfg->n_layers < 1000; cfg->n_layers++) {
        snprintf(name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.q.weight",
                 cfg->n_layers);
        if (!sd3_weights_has(weights, name))
            break;
    }
    cfg->eps = 1e-6f;
    cfg->max_distance = 128;
    if (config_json) {
        cJSON *root = sd3_enc_config_parse(config_json, "T5", err);
        if (!root)
            return SD3_EFORMAT;
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_epsilon");
        if (cJSON_IsNumber(it))
            cfg->eps = (float)it->valuedouble;
        it = cJSON_GetObjectItemCaseSensitive(root, "relative_attention_max_distance");
        if (cJSON_IsNumber(it))
            cfg->max_distance = it->valueint;
        it = cJSON_GetObjectItemCaseSensitive(root, "num_heads");
        rc = 0;
        if (cJSON_IsNumber(it) && it->valueint != cfg->n_heads)
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "T5 config: num_heads %d, the bias table has "
                             "%d columns",
                             it->valueint, cfg->n_heads);
        cJSON_Delete(root);
        if (rc)
            return rc;
    }
    if (cfg->d_model <= 0 || cfg->vocab <= 0 || cfg->d_ff <= 0 || cfg->n_layers < 1 ||
        cfg->n_buckets < 4 || cfg->n_buckets % 4 != 0 || cfg->max_distance <= cfg->n_buckets / 4)
        return sd3_err_set(err, SD3_EFORMAT,
                           "T5 weights: unusable config (d_model %d, %d "
                           "layers, d_ff %d, %d buckets, max distance %d)",
                           cfg->d_model, cfg->n_layers, cfg->d_ff, cfg->n_buckets,
                           cfg->max_distance);
    return 0;
}

sd3_t5_t *
sd3_t5_new(sd3_backend_t *be, sd3_weights_t *weights, const sd3_t5_config_t *cfg, sd3_err_t *err)
{
    const int64_t D = cfg->d_model, I = (int64_t)cfg->n_heads * cfg->d_kv, F = cfg->d_ff;
    sd3_t5_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "T5: out of memory");
        return NULL;
    }
    self->be = be;
    self->weights = weights;
    self->cfg = *cfg;
    if (cfg->n_layers < 1 || cfg->n_heads < 1 || cfg->d_kv < 1 || D < 1 || F < 1) {
        sd3_err_set(err, SD3_EINVAL, "T5: bad config");
        goto fail;
    }
    if (!(self->blocks = calloc((size_t)cfg->n_layers, sizeof *self->blocks))) {
        sd3_err_set(err, SD3_ENOMEM, "T5: out of memory");
        goto fail;
    }
    const int64_t vd[2] = {cfg->vocab, D}, bh[2] = {cfg->n_buckets, cfg->n_heads};
    const int64_t id[2] = {I, D}, di[2] = {D, I}, fd[2] = {F, D}, df[2] = {D, F}, d1[1] = {D};
    if (sd3_enc_need(self->weights, self->be, "T5", &self->tok_emb, true, 2, vd, err, "%s",
                     s_embed_name(weights)) ||
        sd3_enc_need(self->weights, self->be, "T5", &self->rel_bias, true, 2, bh, err,
                     "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
        goto fail;
    for (int i = 0; i < cfg->n_layers; i++) {
        s_block_t *B = &self->blocks[i];
#define S_B(field, nd, shp, suffix)                                                                \
    if (sd3_enc_need(self->weights, self->be, "T5", &B->field, false, nd, shp, err,                \
                     "encoder.block.%d.layer." suffix, i))                                         \
        goto fail;
        S_B(ln0_w, 1, d1, "0.layer_norm.weight")
        S_B(q_w, 2, id, "0.SelfAttention.q.weight")
        S_B(k_w, 2, id, "0.SelfAttention.k.weight")
        S_B(v_w, 2, id, "0.SelfAttention.v.weight")
        S_B(o_w, 2, di, "0.SelfAttention.o.weight")
        S_B(ln1_w, 1, d1, "1.layer_norm.weight")
        S_B(wi0_w, 2, fd, "1.DenseReluDense.wi_0.weight")
        S_B(wi1_w, 2, fd, "1.DenseReluDense.wi_1.weight")
        S_B(wo_w, 2, df, "1.DenseReluDense.wo.weight")
#undef S_B
    }
    if (sd3_enc_need(self->weights, self->be, "T5", &self->final_w, false, 1, d1, err,
                     "encoder.final_layer_norm.weight"))
        goto fail;
    return self;
fail:
    sd3_t5_destroy(&self);
    return NULL;
}

void
sd3_t5_destroy(sd3_t5_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->blocks);
    free(*self_p);
    *self_p = NULL;
}

const sd3_t5_config_t *
sd3_t5_config(const sd3_t5_t *self)
{
    return &self->cfg;
}

int
sd3_t5_bucket(int rel, int n_buckets, int max_distance)
{
    // HF T5Attention._relative_position_bucket, bidirectional: half the buckets per sign;
    // within a half, distances below max_exact are exact, the rest log-spaced up to
    // max_distance. float32 throughout, truncation toward zero, as the reference.
    int nb = n_buckets / 2, max_exact = nb / 2;
    int bucket = rel > 0 ? nb : 0;
    int n = rel < 0 ? -rel : rel;
    if (n < max_exact)
        return bucket + n;
    float ratio = logf((float)n / (float)max_exact) /
                  (float)log((double)max_distance / (double)max_exact) * (float)(nb - max_exact);
    int large = max_exact + (int)ratio;
    return bucket + (large < nb - 1 ? large : nb - 1);
}

int
sd3_t5_encode(sd3_t5_t *self, const int32_t *ids, int n_ids, sd3_tensor_t **hidden_p,
              sd3_enc_tap_fn tap, void *tap_user, sd3_err_t *err)
{
    sd3_backend_t *be = self->be;
    const sd3_backend_ops_t *op = be->ops;
    const sd3_t5_config_t *cfg = &self->cfg;
    const int64_t N = n_ids, D = cfg->d_model, H = cfg->n_heads, F = cfg->d_ff;
    const int64_t I = H * cfg->d_kv;
    const int64_t nd[3] = {1, N, D}, ni[3] = {1, N, I}, nf[3] = {1, N, F};
    sd3_tensor_t *emb = NULL, *buckets = NULL, *bias_h = NULL, *bias = NULL;
    sd3_tensor_t *x = NULL, *h = NULL, *q = NULL, *k = NULL, *v = NULL, *a = NULL;
    sd3_tensor_t *g = NULL, *u = NULL, *f = NULL;
    sd3_err_t local_err = {0};
    int rc = 0;

    if (!err)
        err = &local_err;
    *hidden_p = NULL;
    if (n_ids < 1 || n_ids > S_MAX_TOKENS)
        return sd3_err_set(err, SD3_EINVAL, "T5: %d ids, want 1..%d", n_ids, S_MAX_TOKENS);
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= cfg->vocab)
            return sd3_err_set(err, SD3_EINVAL,
                               "T5: token id %d at position %d is outside "
                               "the vocabulary [0, %d)",
                               ids[i], i, cfg->vocab);

    // Host bookkeeping: embedding rows, buckets [N, N], bias [H, N, N] (f32, as the op wants).
    if (!(emb = sd3_tensor_new_err(SD3_F32, 3, nd, "t5.embeddings", err)) ||
        !(buckets = sd3_tensor_new_err(SD3_I32, 2, (int64_t[]){N, N}, "t5.rel_bucket", err)) ||
        !(bias_h =
              sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, H, N, N}, "t5.position_bias", err))) {
        rc = err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
    {
        size_t esz = sd3_dtype_size(self->tok_emb->dtype);
        for (int64_t t = 0; t < N; t++)
            sd3_dtype_to_f32(self->tok_emb->dtype,
                             (const char *)self->tok_emb->data + (size_t)ids[t] * D * esz,
                             sd3_tensor_f32(emb) + t * D, (size_t)D);
        float *table = malloc((size_t)cfg->n_buckets * (size_t)H * sizeof(float)); // [nb, H]
        if (!table) {
            rc = sd3_err_set(err, SD3_ENOMEM, "T5: out of memory");
            goto done;
        }
        sd3_dtype_to_f32(self->rel_bias->dtype, self->rel_bias->data, table,
                         (size_t)cfg->n_buckets * (size_t)H);
        int32_t *bk = buckets->data;
        float *bs = sd3_tensor_f32(bias_h);
        for (int64_t i = 0; i < N; i++)     // query
            for (int64_t j = 0; j < N; j++) // key
                bk[i * N + j] = sd3_t5_bucket((int)(j - i), cfg->n_buckets, cfg->max_distance);
        for (int64_t hh = 0; hh < H; hh++)
            for (int64_t ij = 0; ij < N * N; ij++)
                bs[hh * N * N + ij] = table[(int64_t)bk[ij] * H + hh];
        free(table);
    }
    if ((rc = sd3_enc_tap(tap, tap_user, buckets, err, "rel_bucket")) ||
        (rc = sd3_enc_tap(tap, tap_user, bias_h, err, "position_bias")))
        goto done;

    if (!(bias = op->tensor_new(be, SD3_F32, 3, (int64_t[]){H, N, N}, err)) ||
        !(x = op->tensor_new(be, be->act_dtype, 3, nd, err)) ||
        !(h = op->tensor_new(be, be->act_dtype, 3, nd, err)) ||
        !(q = op->tensor_new(be, be->act_dtype, 3, ni, err)) ||
        !(k = op->tensor_new(be, be->act_dtype, 3, ni, err)) ||
        !(v = op->tensor_new(be, be->act_dtype, 3, ni, err)) ||
        !(a = op->tensor_new(be, be->act_dtype, 3, ni, err)) ||
        !(g = op->tensor_new(be, be->act_dtype, 3, nf, err)) ||
        !(u = op->tensor_new(be, be->act_dtype, 3, nf, err)) ||
        !(f = op->tensor_new(be, be->act_dtype, 3, nf, err))) {
        rc = err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
    if ((rc = sd3_tensor_reshape(bias_h, 3, (int64_t[]){H, N, N}, err)) ||
        (rc = op->upload(be, bias, bias_h, err)) || (rc = op->upload(be, x, emb, err)) ||
        (rc = sd3_enc_tap(tap, tap_user, x, err, "embeddings")))
        goto done;

    // No 1/sqrt(d_kv): T5 folds it into its initialisation (MODEL.md §5.1).
    const sd3_attn_opts_t attn = {
        .n_heads = cfg->n_heads, .scale = 1.0f, .causal = false, .bias = bias};
    for (int i = 0; i < cfg->n_layers; i++) {
        const s_block_t *B = &self->blocks[i];
        if ((rc = op->rmsnorm(be, h, x, B->ln0_w, cfg->eps, err)) || // [1,N,D]
            (rc = op->linear(be, q, h, B->q_w, NULL, err)) ||        // [1,N,I]
            (rc = op->linear(be, k, h, B->k_w, NULL, err)) ||        // [1,N,I]
            (rc = op->linear(be, v, h, B->v_w, NULL, err)) ||        // [1,N,I]
            (rc = op->attention(be, a, q, k, v, &attn, err)) ||      // [1,N,I]
            (rc = op->linear(be, h, a, B->o_w, NULL, err)) ||        // [1,N,D]
            (rc = op->add(be, x, x, h, err)) ||                      // [1,N,D]
            (rc = op->rmsnorm(be, h, x, B->ln1_w, cfg->eps, err)) || // [1,N,D]
            (rc = op->linear(be, g, h, B->wi0_w, NULL, err)) ||      // [1,N,F]
            (rc = op->act(be, g, g, SD3_ACT_GELU_TANH, err)) ||      // [1,N,F]
            (rc = op->linear(be, u, h, B->wi1_w, NULL, err)))        // [1,N,F]
            goto done;
        // f = g * u elementwise, as a gated add into zeros with one "batch" per token:
        //   f[t,0,:] = 0 + g[t,:] * u[t,0,:]   (exact: 0 + p == p)
        if ((rc = sd3_tensor_reshape(f, 3, (int64_t[]){N, 1, F}, err)) ||
            (rc = sd3_tensor_reshape(u, 3, (int64_t[]){N, 1, F}, err)) ||
            (rc = sd3_tensor_reshape(g, 2, (int64_t[]){N, F}, err)) ||
            (rc = op->fill(be, f, 0.0f, err)) || (rc = op->gate_add(be, f, u, g, 0, err)) ||
            (rc = sd3_tensor_reshape(f, 3, nf, err)) || (rc = sd3_tensor_reshape(u, 3, nf, err)) ||
            (rc = sd3_tensor_reshape(g, 3, nf, err)))
            goto done;
        if ((rc = op->linear(be, h, f, B->wo_w, NULL, err)) || // [1,N,D]
            (rc = op->add(be, x, x, h, err)) ||                // [1,N,D]
            (rc = sd3_enc_tap(tap, tap_user, x, err, "block.%d", i)))
            goto done;
    }
    if ((rc = op->rmsnorm(be, h, x, self->final_w, cfg->eps, err)) || // [1,N,D]
        (rc = sd3_enc_tap(tap, tap_user, h, err, "last_hidden")))
        goto done;
    *hidden_p = h;
    h = NULL;
done:
    sd3_tensor_destroy(&emb);
    sd3_tensor_destroy(&buckets);
    sd3_tensor_destroy(&bias_h);
    sd3_enc_free(be, &bias);
    sd3_enc_free(be, &x);
    sd3_enc_free(be, &h);
    sd3_enc_free(be, &q);
    sd3_enc_free(be, &k);
    sd3_enc_free(be, &v);
    sd3_enc_free(be, &a);
    sd3_enc_free(be, &g);
    sd3_enc_free(be, &u);
    sd3_enc_free(be, &f);
    return rc;
}

double
sd3_t5_flops(const sd3_t5_config_t *cfg, int n_ids)
{
    double N = n_ids, D = cfg->d_model, I = (double)cfg->n_heads * cfg->d_kv, F = cfg->d_ff;
    double per_block = 2.0 * N * (4.0 * D * I + 3.0 * D * F) + 4.0 * N * N * I;
    return cfg->n_layers * per_block;
}
