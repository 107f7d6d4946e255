/*  sd3_mmdit - the SD3 / SD3.5 MMDiT, run as a chain of layer ranges
 *
 *  One sd3_mmdit_t hosts the joint blocks [first, last) of one checkpoint; the range that
 *  starts at 0 also owns the embedders (patch, pos, t, y, context), the range that ends at
 *  depth owns the final layer (MODEL.md §4). A forward is
 *      embed (first range) -> blocks [a, b) -> ... -> blocks [c, depth) -> final (last range)
 *  and the activations between ranges are one small explicit struct, sd3_mmdit_act_t, which
 *  the wire layer serialises. One range [0, depth) and any split into ranges give the same
 *  bits (the ops are deterministic and nothing depends on where a range starts).
 *
 *  The configuration is detected from the checkpoint's tensor shapes (SD3-medium,
 *  SD3.5-large with QK RMSNorm, SD3.5-medium with MMDiT-X attn2 blocks); a range asks the
 *  weights only for its own tensors, so a stage touches only its pages.
 *  Every computation on activations goes through the backend op table; only the latent
 *  patchify/unpatchify (a permutation of the host latent) and the timestep features t_freq
 *  run on the host.
 *
 *  Shape legend (used across stages):
 *    B batch (2 with CFG)   L context tokens   N image tokens = (h/2)*(w/2), h,w latent size
 *    C hidden = 64*depth    NH heads = depth   D head dim = 64   Z latent channels = 16
 *  Thread: one sd3_mmdit_t is used by one thread at a time (as its backend).  */
#pragma once
#include "sd3_backend.h"
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stdint.h>

#define SD3_MMDIT_MAX_DEPTH 64 // skip sets are a uint64_t bit mask
#define SD3_MMDIT_HEAD_DIM  64
#define SD3_MMDIT_FREQ_DIM  256 // sinusoidal timestep features

typedef struct {
    int depth;           // joint blocks
    int hidden;          // C = 64 * depth
    int heads;           // NH = depth
    int patch;           // 2
    int in_channels;     // Z = 16
    int pos_max;         // P: pos_embed is [1, P*P, C]
    int adm_in;          // pooled y width (2048 real)
    int context_in;      // context width (4096 real)
    bool qk_norm;        // RMSNorm on q and k per head (SD3.5)
    uint64_t attn2_mask; // bit i: block i has the MMDiT-X attn2 (SD3.5-medium)
} sd3_mmdit_config_t;

// Reads the configuration from tensor shapes only (no data touched), the way the reference
// does (TESTVECTORS-dit.md §1). SD3_EFORMAT when a tensor is missing or inconsistent.
int sd3_mmdit_config_detect(const sd3_weights_t *weights, sd3_mmdit_config_t *cfg, sd3_err_t *err);
// "sd3-medium" / "sd3.5-large" / "sd3.5-medium"-like label, for logs.
const char *sd3_mmdit_config_name(const sd3_mmdit_config_t *cfg);

// The activations handed from one range to the next. Tensors live in the backend's memory
// and are owned by the struct (free with sd3_mmdit_act_fini).
typedef struct {
    int batch;          // B
    int n_ctx;          // L
    int grid_h, grid_w; // token grid; N = grid_h * grid_w
    int next_block;     // blocks [0, next_block) have run
    sd3_tensor_t *x;    // [B, N, C]
    sd3_tensor_t *ctx;  // [B, L, C]; NULL after the last (pre-only) block
    sd3_tensor_t *c;    // [B, C] conditioning t_emb + y_emb
    int group;          // rows of one request when several are merged (0: one request)
} sd3_mmdit_act_t;

void sd3_mmdit_act_fini(sd3_backend_t *be, sd3_mmdit_act_t *act);

// Merging requests into one batch (a stage serving several requests of the same shape).
// Merge: the n activations (same batch, context length, grid and next block, all with or
// all without a context stream) stacked along the batch into *out (fresh backend tensors,
// out->group = parts' batch). The parts are left as they are. Split: the reverse, into n
// fresh activations of batch out->group each. The blocks of a merged batch give every
// request the bits it would get alone (sd3_backend_t.linear_split_rows).
int sd3_mmdit_act_merge(sd3_backend_t *be, const sd3_mmdit_act_t *parts, int n,
                        sd3_mmdit_act_t *out, sd3_err_t *err);
int sd3_mmdit_act_split(sd3_backend_t *be, const sd3_mmdit_act_t *merged, int n,
                        sd3_mmdit_act_t *parts, sd3_err_t *err);

// Optional debug tap: called with intermediate tensors (backend memory, borrowed for the
// call) named as in TESTVECTORS-dit.md §2 without the "dbg." prefix: "x_patch",
// "pos_embed_cropped", "x_embed", "t_freq", "t_emb", "y_emb", "c", "context_embed",
// "block{i}.context_mod", "block{i}.x_mod", "block{i}.q|k|v|attn",
// "block{i}.x_q2|x_k2|x_v2|x_attn2", "block{i}.x", "block{i}.context", "final_layer".
typedef void (*sd3_mmdit_tap_fn)(void *user, const char *name, const sd3_tensor_t *t);

typedef struct sd3_mmdit sd3_mmdit_t;

// Loads the weights of blocks [first, last) (plus the embedders when first == 0 and the
// final layer when last == depth); last = -1 means depth. Weights are borrowed: `weights`
// and `be` must outlive the object. SD3_EINVAL for a bad range, SD3_EFORMAT for a tensor
// of the wrong shape.
sd3_mmdit_t *sd3_mmdit_new(sd3_backend_t *be, sd3_weights_t *weights, int first, int last,
                           sd3_err_t *err);
void sd3_mmdit_destroy(sd3_mmdit_t **self_p);
const sd3_mmdit_config_t *sd3_mmdit_config(const sd3_mmdit_t *self);
int sd3_mmdit_first(const sd3_mmdit_t *self);
int sd3_mmdit_last(const sd3_mmdit_t *self);
void sd3_mmdit_set_tap(sd3_mmdit_t *self, sd3_mmdit_tap_fn fn, void *user);
// Optional progress hook of sd3_mmdit_blocks: called before block i runs (i in [first,
// last)) and once more with i == last after the range ran. A non-zero return stops the
// range at that block boundary: sd3_mmdit_blocks returns SD3_ECANCELED and *act is left
// after the blocks that ran (a cancelled or superseded step is not worth finishing).
typedef int (*sd3_mmdit_progress_fn)(void *user, int block);
void sd3_mmdit_set_progress(sd3_mmdit_t *self, sd3_mmdit_progress_fn fn, void *user);

// First range only. Embeds the inputs into a fresh *act (next_block = 0).
//   latent: [B, Z, h, w] host f32 (h, w even)   timestep: [B] (sigma*1000 as float32)
//   y: [B, adm_in] host f32   context: [B, L, context_in] host f32
int sd3_mmdit_embed(sd3_mmdit_t *self, const sd3_tensor_t *latent, const float *timestep,
                    const sd3_tensor_t *y, const sd3_tensor_t *context, sd3_mmdit_act_t *act,
                    sd3_err_t *err);
// Runs this object's blocks on *act in place; act->next_block must equal first. Blocks
// whose bit is set in `skip` pass x and ctx through unchanged (skip-layer guidance).
int sd3_mmdit_blocks(sd3_mmdit_t *self, sd3_mmdit_act_t *act, uint64_t skip, sd3_err_t *err);
// Last range only, after all blocks ran: the model output v into `out`, [B, Z, h, w] host f32.
int sd3_mmdit_final(sd3_mmdit_t *self, sd3_mmdit_act_t *act, sd3_tensor_t *out, sd3_err_t *err);
// The whole model when this object hosts [0, depth): embed + blocks + final.
int sd3_mmdit_forward(sd3_mmdit_t *self, const sd3_tensor_t *latent, const float *timestep,
                      const sd3_tensor_t *y, const sd3_tensor_t *context, uint64_t skip,
                      sd3_tensor_t *out, sd3_err_t *err);

// Model FLOPs of one forward at batch 1 (MODEL.md §9, 2 per multiply-add), over blocks
// [first, last) plus embedders/final when the range includes them.
double sd3_mmdit_flops(const sd3_mmdit_config_t *cfg, int n_img, int n_ctx, int first, int last);
