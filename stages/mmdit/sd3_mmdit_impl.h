/*  sd3_mmdit_impl - internals shared by sd3_mmdit.c, sd3_mmdit_block.c and sd3_embed.c
 *
 *  Not for use outside stages/mmdit: the API is sd3_mmdit.h.  */
#pragma once
#include "sd3_mmdit.h"

typedef struct {
    const sd3_tensor_t *w; // [out, in], backend form (be->ops->weight)
    const sd3_tensor_t *b; // [out] or NULL
} sd3_mmdit_linear_t;

// One stream (context_block or x_block) of a joint block.
typedef struct {
    int n_mod;                       // 6; 9 with attn2; 2 when pre-only
    bool pre_only;                   // last context block: modulation (shift, scale) and qkv only
    sd3_mmdit_linear_t mod;          // adaLN_modulation.1   [n_mod*C, C]
    sd3_mmdit_linear_t qkv;          // attn.qkv             [3C, C]
    sd3_mmdit_linear_t proj;         // attn.proj            [C, C]
    sd3_mmdit_linear_t fc1, fc2;     // mlp                  [4C, C], [C, 4C]
    const sd3_tensor_t *ln_q, *ln_k; // [64] or NULL
    bool has_attn2;                  // x_block of an MMDiT-X block
    sd3_mmdit_linear_t qkv2, proj2;
    const sd3_tensor_t *ln_q2, *ln_k2;
} sd3_mmdit_stream_t;

typedef struct {
    int index;
    sd3_mmdit_stream_t ctx, x;
} sd3_mmdit_block_t;

// Scratch of one (B, N, L), kept between calls: flat backend tensors that ops see through
// shaped views (sd3_mmdit_view).
typedef struct {
    int batch, n_img, n_ctx;
    sd3_tensor_t *silu_c;          // [B, C]
    sd3_tensor_t *mod_ctx, *mod_x; // [B, n_mod*C]
    sd3_tensor_t *ln, *ln_x, *u;   // [B, max(L,N), C], [B, N, C], [B, max(L,N), C]
    sd3_tensor_t *qkv;             // [B, max(L,N), 3C]
    sd3_tensor_t *q, *k, *v, *o;   // [B, L+N, C]
    sd3_tensor_t *attn_s, *y;      // [B, max(L,N), C]
    sd3_tensor_t *h;               // [B, max(L,N), 4C]
} sd3_mmdit_ws_t;

struct sd3_mmdit {
    sd3_backend_t *be;
    sd3_weights_t *weights;
    sd3_mmdit_config_t cfg;
    int first, last;
    sd3_mmdit_block_t *blocks; // [last - first]
    // embedders (first == 0)
    sd3_tensor_t patch_w_host;    // x_embedder.proj.weight seen as [C, Z*p*p]
    sd3_mmdit_linear_t patch;     // x_embedder.proj
    const sd3_tensor_t *pos_host; // pos_embed [1, P*P, C], host view (any float dtype)
    sd3_tensor_t *pos_crop;       // [N, C] backend: the crop for grid pos_h x pos_w
    int pos_h, pos_w;
    sd3_mmdit_linear_t t_mlp0, t_mlp2; // t_embedder.mlp.{0,2}
    sd3_mmdit_linear_t y_mlp0, y_mlp2; // y_embedder.mlp.{0,2}
    sd3_mmdit_linear_t ctx_embed;      // context_embedder
    // final layer (last == depth)
    sd3_mmdit_linear_t final_mod, final_linear;
    sd3_mmdit_ws_t ws;
    int row_groups; // inside sd3_mmdit_blocks: requests merged in the batch (1: one)
    sd3_mmdit_tap_fn tap;
    void *tap_user;
    sd3_mmdit_progress_fn progress;
    void *progress_user;
};

// A by-value view of `numel(shape)` elements of t starting at element `offset`, same
// memory and dtype (host or device). Nothing to free.
sd3_tensor_t sd3_mmdit_view(const sd3_tensor_t *t, int64_t offset, int ndim, const int64_t *shape);
// A fresh backend activation tensor (act dtype), error naming `what`.
sd3_tensor_t *sd3_mmdit_tensor(sd3_mmdit_t *self, int ndim, const int64_t *shape, const char *what,
                               sd3_err_t *err);
void sd3_mmdit_free(sd3_mmdit_t *self, sd3_tensor_t **t_p);
// Calls the tap, if any, with a printf-formatted name.
void sd3_mmdit_tap(sd3_mmdit_t *self, const sd3_tensor_t *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
// y = x W^T + b through the backend.
int sd3_mmdit_linear(sd3_mmdit_t *self, sd3_tensor_t *y, const sd3_tensor_t *x,
                     const sd3_mmdit_linear_t *lin, sd3_err_t *err);
// Loads the weight `prefix`.weight [out, in] and `prefix`.bias [out] into *lin.
int sd3_mmdit_load_linear(sd3_mmdit_t *self, sd3_mmdit_linear_t *lin, const char *prefix,
                          int64_t out, int64_t in, sd3_err_t *err);
// Loads a [n] vector weight (ln_q, ln_k).
int sd3_mmdit_load_vec(sd3_mmdit_t *self, const sd3_tensor_t **out, const char *name, int64_t n,
                       sd3_err_t *err);

// sd3_mmdit_block.c
int sd3_mmdit_block_load(sd3_mmdit_t *self, sd3_mmdit_block_t *blk, int index, sd3_err_t *err);
// One joint block on act (x [B, N, C], ctx [B, L, C], c [B, C]), updated in place.
//   silu_c: [B, C] = SiLU(c), computed once per range call.
int sd3_mmdit_block_forward(sd3_mmdit_t *self, const sd3_mmdit_block_t *blk, sd3_mmdit_act_t *act,
                            const sd3_tensor_t *silu_c, sd3_err_t *err);
// (Re)allocates the scratch for (B, N, L) when it changed.
int sd3_mmdit_ws_ensure(sd3_mmdit_t *self, int batch, int n_img, int n_ctx, sd3_err_t *err);
void sd3_mmdit_ws_fini(sd3_mmdit_t *self);

// sd3_embed.c
int sd3_mmdit_embed_load(sd3_mmdit_t *self, sd3_err_t *err);
int sd3_mmdit_final_load(sd3_mmdit_t *self, sd3_err_t *err);
// Host: sinusoidal features [B, 256] of timesteps t [B], cos first, in float32.
void sd3_mmdit_t_freq(const float *t, int batch, float *out);
