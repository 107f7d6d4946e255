/*  sd3_arch - the shape of every released architecture, tensor by tensor
 *
 *  One description per model (sd3-medium, sd3.5-medium, sd3.5-large and their "tiny"
 *  versions that mirror the golden test models), holding the MMDiT (MODEL.md §2, §3.1), the
 *  three text encoders (§5.1, §5.4) and the VAE (§6). sd3_arch_tensors() enumerates every
 *  tensor of a component under its canonical name (the official single-file name without
 *  the component prefix, see sd3_weights.h) with its shape and how `sd3ctl mkmodel`
 *  initialises it; sd3_arch_params() counts parameters (checked against MODEL.md §9).
 *  sd3_arch_from_model() goes the other way: it reads a checkpoint's shapes and fills a
 *  description (what the reference's BaseModel does, MODEL.md §2), for convert and plan.
 *  Used by: sd3ctl mkmodel / convert / plan, tests. Pure data; thread-safe.  */
#pragma once
#include "sd3_err.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD3_ARCH_NAME_MAX 128 // longest canonical tensor name + 1

typedef struct {
    int depth;         // joint blocks
    int hidden;        // D = 64 * depth
    int heads;         // = depth; head dim 64
    int head_dim;      // 64
    int patch;         // 2
    int in_channels;   // 16 (= out channels)
    int pos_embed_max; // P: pos_embed is [1, P*P, D]
    int adm_in;        // pooled width (2048; tiny 80)
    int context_in;    // context width (4096; tiny 96)
    bool qk_norm;      // RMSNorm ln_q / ln_k in every attention (SD3.5)
    int n_attn2;       // blocks [0, n_attn2) have the MMDiT-X attn2 (SD3.5-medium: 13)
    int sample_size;   // diffusers config only
} sd3_arch_mmdit_t;

typedef struct {
    int width, layers, heads, ffn, vocab, n_pos;
    bool quick_gelu;       // CLIP-L: x*sigmoid(1.702x); CLIP-G: erf GELU
    bool identity_project; // mkmodel writes text_projection = I (CLIP-L, MODEL.md §5.2)
} sd3_arch_clip_t;

typedef struct {
    int d_model, layers, heads, d_kv, d_ff, vocab, buckets, max_distance;
} sd3_arch_t5_t;

typedef struct {
    int ch;             // 128 (tiny 32)
    int ch_mult[4];     // {1, 2, 4, 4}
    int num_res_blocks; // 2 (the decoder has num_res_blocks + 1 per level)
    int z_channels;     // 16
    int image_channels; // 3
} sd3_arch_vae_t;

typedef struct {
    char name[32];       // "sd3-medium", "tiny-sd3.5-large", or "detected"
    char model_file[48]; // file name of the official single file ("sd3.5_large.safetensors")
    sd3_arch_mmdit_t mmdit;
    sd3_arch_clip_t clip_l, clip_g;
    sd3_arch_t5_t t5;
    sd3_arch_vae_t vae;
} sd3_arch_t;

// How mkmodel fills a tensor (the choices are documented in sd3_weights_write.c).
typedef enum {
    SD3_INIT_LINEAR = 0, // N(0, var 1/fan_in)
    SD3_INIT_ADALN,      // N(0, var 0.25/fan_in)
    SD3_INIT_BIAS,       // N(0, var 0.01), i.e. std 0.1
    SD3_INIT_NORM,       // 1 + N(0, var 0.01)
    SD3_INIT_EMBED,      // N(0, 1): token tables
    SD3_INIT_POS,        // N(0, var 0.25): CLIP learned positions
    SD3_INIT_SINCOS,     // the 2-D sin-cos table of MODEL.md §4.2 (MMDiT pos_embed)
    SD3_INIT_IDENTITY,   // I (CLIP-L text_projection)
    SD3_INIT_T5_QK,      // N(0, var 0.25/d_model): T5 q and k (no 1/sqrt(d) in its attention)
    SD3_INIT_RELBIAS,    // N(0, var 0.25): T5 relative attention bias table
} sd3_init_t;

typedef struct {
    char name[SD3_ARCH_NAME_MAX]; // canonical, e.g. "joint_blocks.3.x_block.attn.qkv.weight"
    int ndim;
    int64_t shape[4];
    sd3_init_t init;
    int64_t fan_in; // for LINEAR / ADALN / T5_QK
} sd3_arch_tensor_t;

// The built-in descriptions, by name; NULL when unknown.
const sd3_arch_t *sd3_arch_find(const char *name);
size_t sd3_arch_count(void);
const sd3_arch_t *sd3_arch_at(size_t i);
// "sd3-medium|sd3.5-medium|..." for usage messages (static string).
const char *sd3_arch_names(void);

// Every tensor of one component, in execution order. Returns a fresh array (free() it) and
// sets *n; NULL with SD3_ENOMEM, or SD3_EINVAL for an inconsistent description.
sd3_arch_tensor_t *sd3_arch_tensors(const sd3_arch_t *arch, sd3_component_t comp, size_t *n,
                                    sd3_err_t *err);
// Parameters of a component (SD3_COMP_COUNT: all five), from the enumeration.
uint64_t sd3_arch_params(const sd3_arch_t *arch, sd3_component_t comp);
// Parameters of the MMDiT blocks [first, last) only (what a pipeline stage holds).
uint64_t sd3_arch_block_params(const sd3_arch_t *arch, int first, int last);

// Fills *out from the tensor shapes of an opened checkpoint (components it lacks keep the
// values of the closest built-in description). Fails with SD3_EFORMAT when the MMDiT is
// present but its shapes do not form a known structure.
int sd3_arch_from_model(sd3_model_t *model, sd3_arch_t *out, sd3_err_t *err);
