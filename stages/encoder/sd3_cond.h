/*  sd3_cond - the SD3 conditioning: CLIP-L + CLIP-G + T5 into (context, pooled)
 *
 *  As the reference's get_cond (MODEL.md §5.3, TESTVECTORS-enc.md §4):
 *    lg      = cat_channels(L penultimate [1,77,WL], G penultimate [1,77,WG])   [1, 77, WL+WG]
 *    context = cat_tokens(zero-pad(lg, to Wc), T5 last_hidden [1, N, Wc])      [1, 77+N, Wc]
 *    pooled  = cat(L pooled unprojected [1,WL], G pooled projected [1,PG])     [1, WL+PG]
 *  Wc is the T5 width (4096 for T5-XXL). With T5 dropped (on request, or the model has no
 *  T5) the T5 rows are `zero_t5_rows` rows of zeros: 77 by default (154 tokens, the golden
 *  `no_t5.context`; MODEL.md §5.3 derives that choice), 0 for the CLIP part only (the
 *  ComfyUI convention, golden `no_t5.context_lg_only`). Pooled never depends on T5. The empty
 *  negative prompt is encoded like any other.
 *  Owns the three encoders and their weights. All math through the backend; results come
 *  back as host f32 tensors (what the wire and the embedding cache carry).
 *  Thread: one encode at a time per object.  */
#pragma once
#include "sd3_backend.h"
#include "sd3_clip.h"
#include "sd3_err.h"
#include "sd3_t5.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    bool no_t5;        // drop T5 even when the model has one
    int zero_t5_rows;  // zero rows standing in for T5 when it is dropped (0 = CLIP part only)
    int t5_length;     // 0: the ids as tokenized; > 0: pad with 0 (<pad>) or cut to this length,
                       // a cut sequence ending in 1 (</s>) as HF truncation does
    int context_width; // 0: the T5 width; without T5 required (the MMDiT's context input)
    // Optional: called before each encoder runs (0 CLIP-L, 1 CLIP-G, 2 T5) with its model
    // FLOPs (estimated from its weight bytes and the tokens), and with 3 after the last. A
    // non-zero return stops there: SD3_ECANCELED.
    int (*between)(void *user, int encoder, double flops);
    void *between_user;
} sd3_cond_opts_t;

#define SD3_COND_ZERO_T5_ROWS 77
#define SD3_COND_OPTS_INIT                                                                         \
    {                                                                                              \
        .no_t5 = false, .zero_t5_rows = SD3_COND_ZERO_T5_ROWS, .t5_length = 0, .context_width = 0  \
    }

// The ids of one prompt (host, borrowed): chunk 0 of each CLIP tokenizer and the T5 ids.
typedef struct {
    const int32_t *l, *g, *t5; // t5 may be NULL when T5 is dropped
    int n_l, n_g, n_t5;        // 77, 77, >= 1
} sd3_cond_tokens_t;

typedef struct sd3_cond sd3_cond_t;
// The weights of encoder i (0 CLIP-L, 1 CLIP-G, 2 T5; NULL when absent), borrowed.
sd3_weights_t *sd3_cond_weights(sd3_cond_t *self, int i);

// Opens CLIP-L, CLIP-G and (when `with_t5` and the model has one) T5 of a checkpoint in any
// layout (sd3_model_open). A diffusers folder's text_encoder*/config.json is read for heads
// and activation. Borrows `be` and `model` (both must outlive it).
sd3_cond_t *sd3_cond_new_from_model(sd3_backend_t *be, sd3_model_t *model, bool with_t5,
                                    sd3_err_t *err);
// Opens three single-component files (t5_path may be NULL); a file's `config` metadata, when
// present, is read as the HF config. Borrows `be`.
sd3_cond_t *sd3_cond_new_from_files(sd3_backend_t *be, const char *clip_l_path,
                                    const char *clip_g_path, const char *t5_path, sd3_err_t *err);
void sd3_cond_destroy(sd3_cond_t **self_p);
// The HF-style config JSON of one encoder, if the checkpoint carries one: the `config`
// metadata of `file_path` (a single-component safetensors file; may be NULL), else, for a
// diffusers `model`, text_encoder{,_2,_3}/config.json. A fresh string, or NULL when none.
char *sd3_cond_config_json(const sd3_model_t *model, const char *file_path, sd3_component_t comp);

bool sd3_cond_has_t5(const sd3_cond_t *self);
sd3_clip_t *sd3_cond_clip_l(sd3_cond_t *self);
sd3_clip_t *sd3_cond_clip_g(sd3_cond_t *self);
sd3_t5_t *sd3_cond_t5(sd3_cond_t *self); // NULL without T5
// Stored bytes of the encoder weights opened (for memory planning and benches).
size_t sd3_cond_weight_bytes(const sd3_cond_t *self);
// 128-bit fingerprint of the encoder weights (names, dtypes, shapes and a sample of the
// bytes of every tensor), computed once at open; a component of the embedding cache key.
void sd3_cond_fingerprint(const sd3_cond_t *self, uint64_t out[2]);

// Encodes one prompt's ids. *context_p: fresh host f32 [1, 77+rows, Wc]; *pooled_p: fresh
// host f32 [1, WL+PG]. SD3_EINVAL on bad ids or options, SD3_EFORMAT when CLIP-G has no
// text_projection or the CLIP widths exceed Wc.
int sd3_cond_encode(sd3_cond_t *self, const sd3_cond_tokens_t *tokens, const sd3_cond_opts_t *opts,
                    sd3_tensor_t **context_p, sd3_tensor_t **pooled_p, sd3_err_t *err);
