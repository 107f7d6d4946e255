/*  sd3_t5 - the T5 v1.1 encoder (T5-XXL in SD3)
 *
 *  Pre-norm encoder (MODEL.md §5.1): unscaled token embedding, n blocks of
 *    x += o(Attn(RMSNorm(x)))        logits = q k^T + bias[h, bucket(j - i)], no 1/sqrt(d_kv)
 *    x += wo(gelu_tanh(wi_0 h) * (wi_1 h)),  h = RMSNorm(x)
 *  then final_layer_norm (RMSNorm). No biases, no attention mask (pads are visible). The
 *  relative-position table lives only in block 0 and every block adds the same bias.
 *  Configured from the shapes: d_model, layers, heads (columns of the bias table), buckets
 *  (its rows), inner dim (rows of q), d_ff; eps and max distance from an HF-style config
 *  JSON when given ("layer_norm_epsilon", "relative_attention_max_distance"), else 1e-6
 *  and 128. The token table is "encoder.embed_tokens.weight" or, failing that,
 *  "shared.weight". All math runs through the backend op table; the host gathers the N
 *  embedding rows and builds the [H, N, N] position bias (bookkeeping of size H N^2).
 *  Thread: one encode at a time per object.  */
#pragma once
#include "sd3_backend.h"
#include "sd3_clip.h" // sd3_enc_tap_fn
#include "sd3_err.h"
#include "sd3_weights.h"

#include <stdint.h>

// Heads accepted from a checkpoint: the position bias is H N^2 floats per encode, 512 MiB
// at this cap and N = 1024 (T5-XXL has 64; a bias table with more columns is refused).
#define SD3_T5_MAX_HEADS 128

typedef struct {
    int d_model;      // 4096
    int n_layers;     // 24
    int n_heads;      // 64
    int d_kv;         // 64 (inner dim = n_heads * d_kv)
    int d_ff;         // 10240
    int vocab;        // 32128
    int n_buckets;    // 32
    int max_distance; // 128
    float eps;        // 1e-6
} sd3_t5_config_t;

typedef struct sd3_t5 sd3_t5_t;

// Fills *cfg from the shapes in `weights` (T5 naming "encoder.*"); `config_json` may be NULL.
// SD3_EFORMAT when a tensor is missing, the shapes disagree or exceed SD3_T5_MAX_HEADS.
int sd3_t5_config_detect(const sd3_weights_t *weights, const char *config_json,
                         sd3_t5_config_t *cfg, sd3_err_t *err);

// Builds the encoder; borrows `be` and `weights`.
sd3_t5_t *sd3_t5_new(sd3_backend_t *be, sd3_weights_t *weights, const sd3_t5_config_t *cfg,
                     sd3_err_t *err);
void sd3_t5_destroy(sd3_t5_t **self_p);
const sd3_t5_config_t *sd3_t5_config(const sd3_t5_t *self);

// Bucket of the relative position rel = key - query (bidirectional, the HF rule computed
// in float32 as the reference does).
int sd3_t5_bucket(int rel, int n_buckets, int max_distance);

// Encodes n_ids ids (host; 1 <= n_ids <= 1024). *hidden_p gets a fresh backend
// tensor [1, N, d_model] = final_layer_norm(last block), freed with the backend's
// tensor_free. Taps (may be NULL): "rel_bucket" (host I32 [N, N]), "position_bias" (host
// f32 [1, H, N, N]), "embeddings", "block.<i>" (residual stream after block i),
// "last_hidden", each [1, N, d_model] on the backend.
int sd3_t5_encode(sd3_t5_t *self, const int32_t *ids, int n_ids, sd3_tensor_t **hidden_p,
                  sd3_enc_tap_fn tap, void *tap_user, sd3_err_t *err);

// FLOPs of one encode of n_ids tokens (2 per multiply-add).
double sd3_t5_flops(const sd3_t5_config_t *cfg, int n_ids);
