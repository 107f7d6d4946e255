/*  sd3_clip - the CLIP text models SD3 uses (OpenAI CLIP-L/14, OpenCLIP bigG/14)
 *
 *  Pre-LN transformer over one 77-token chunk (MODEL.md §5.1): token + learned position
 *  embedding, n layers of `x += out_proj(MHA(LN1(x), causal)); x += fc2(act(fc1(LN2(x))))`,
 *  final LayerNorm. SD3 takes (MODEL.md §5.2):
 *    context: the output of layer n-2 (penultimate), no final LayerNorm     [1, T, W]
 *    pooled:  final_layer_norm(last layer) at row argmax(ids)                [1, W]
 *             and, for CLIP-G, that row through text_projection (no bias)    [1, P]
 *  The configuration comes from the checkpoint shapes (width, layers, FFN, vocab, positions,
 *  projection); heads, activation and LayerNorm eps from an HF-style config JSON when one is
 *  given (the tiny files' `config` metadata, a diffusers text_encoder/config.json), else
 *  head dim 64 (every released CLIP; 16 for widths that are not a multiple of 64, as the
 *  tiny test models), quick_gelu for CLIP-L and exact GELU for CLIP-G, eps 1e-5.
 *  All math runs through the backend op table; the host only gathers the 77 embedding rows
 *  from the mmapped table (the table never goes to the device).
 *  Thread: one encode at a time per object (the backend is single-threaded).  */
#pragma once
#include "sd3_backend.h"
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stdint.h>

// Intermediate taps (eval and debugging): called with a backend tensor that is valid only
// for the call. A non-zero return stops the encode with that code.
typedef int (*sd3_enc_tap_fn)(void *user, const char *name, const sd3_tensor_t *t, sd3_err_t *err);

typedef struct {
    int width;     // W: 768 (L), 1280 (G)
    int n_layers;  // 12 (L), 32 (G)
    int n_heads;   // W / 64
    int ffn;       // 4W
    int vocab;     // 49408
    int n_pos;     // 77
    int proj_dim;  // rows of text_projection.weight, 0 when absent
    sd3_act_t act; // SD3_ACT_QUICK_GELU (L), SD3_ACT_GELU_ERF (G)
    float ln_eps;  // 1e-5
    int layer_idx; // layer whose output is the context: n_layers - 2 (penultimate)
} sd3_clip_config_t;

typedef struct sd3_clip sd3_clip_t;

// Fills *cfg from the shapes in `weights` (CLIP naming: "text_model.*", MODEL.md §5.4).
// `comp` (SD3_COMP_CLIP_L / _G) picks the default activation; `config_json` (may be NULL)
// overrides heads ("num_attention_heads"), activation ("hidden_act": quick_gelu, gelu) and
// "layer_norm_eps". SD3_EFORMAT when a tensor is missing or the shapes disagree.
int sd3_clip_config_detect(const sd3_weights_t *weights, sd3_component_t comp,
                           const char *config_json, sd3_clip_config_t *cfg, sd3_err_t *err);

// Builds the model: checks every tensor's shape and fetches it in the backend's form.
// Borrows `be` and `weights` (both must outlive the model).
sd3_clip_t *sd3_clip_new(sd3_backend_t *be, sd3_weights_t *weights, const sd3_clip_config_t *cfg,
                         sd3_err_t *err);
void sd3_clip_destroy(sd3_clip_t **self_p);
const sd3_clip_config_t *sd3_clip_config(const sd3_clip_t *self);

// What one encode returns: backend tensors, freed by sd3_clip_out_fini.
typedef struct {
    sd3_tensor_t *context;          // [1, T, W] output of layer layer_idx, no final LN
    sd3_tensor_t *pooled;           // [1, W]    final LN of the last layer at row pool_index
    sd3_tensor_t *pooled_projected; // [1, P]    pooled x text_projection^T; NULL when absent
    int pool_index;                 // argmax(ids): first position of the largest id
} sd3_clip_out_t;

// Encodes one chunk of ids (host, 1 <= n_ids <= n_pos; 77 in SD3). Taps (may be NULL):
// "embeddings" [1,T,W], "layer.<i>" [1,T,W] (residual stream after layer i),
// "last_hidden" [1,T,W]. SD3_EINVAL on an id outside the vocabulary.
int sd3_clip_encode(sd3_clip_t *self, const int32_t *ids, int n_ids, sd3_clip_out_t *out,
                    sd3_enc_tap_fn tap, void *tap_user, sd3_err_t *err);
void sd3_clip_out_fini(sd3_clip_t *self, sd3_clip_out_t *out);

// FLOPs of one encode of n_ids tokens (2 per multiply-add), for benchmarks.
double sd3_clip_flops(const sd3_clip_config_t *cfg, int n_ids);
