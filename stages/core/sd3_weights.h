/*  sd3_weights - a checkpoint in any released layout, seen through one naming
 *
 *  sd3_model_open() takes what users have and resolves it:
 *  - a single official file: `model.diffusion_model.*` (MMDiT), `first_stage_model.*` (VAE),
 *    optionally `text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`;
 *  - the SD3.5 set: a model file plus clip_l / clip_g / t5xxl(_fp16|_fp8_e4m3fn) files
 *    without prefix, found in `text_encoders/` beside the model file (or beside it);
 *    the path may be the folder or the model file;
 *  - a diffusers folder: model_index.json, transformer/ vae/ text_encoder{,_2,_3}/, each a
 *    single file or shards through `*.safetensors.index.json`; tokenizer{,_2,_3}/.
 *
 *  A component (sd3_weights_t) sees the official single-file names without the component
 *  prefix, whatever the layout (MODEL.md §3.2, §5.4, §6.4 give the mappings):
 *    mmdit  "joint_blocks.3.x_block.attn.qkv.weight", "final_layer.linear.weight", "pos_embed"
 *    vae    "decoder.up.3.block.0.conv1.weight", "decoder.mid.attn_1.q.weight" ([c,c,1,1])
 *    clip_l / clip_g   "text_model.encoder.layers.0.self_attn.q_proj.weight", "text_projection.weight"
 *    t5     "encoder.block.0.layer.0.SelfAttention.q.weight", "encoder.embed_tokens.weight"
 *  Tensors that need a transform in some layout (diffusers q/k/v joined into qkv, the two
 *  swapped 2-chunk modulations, [c,c] -> [c,c,1,1]) are built on first request and owned by
 *  the weights object; all others are views into the mmap, and a component touches only the
 *  pages of the tensors it asks for (a layer-range stage stays near the size of its range).
 *  Thread: get/need may be called from one thread at a time per sd3_weights_t.  */
#pragma once
#include <stdbool.h>

#include "sd3_err.h"
#include "sd3_tensor.h"

typedef enum {
    SD3_COMP_MMDIT = 0,
    SD3_COMP_VAE,
    SD3_COMP_CLIP_L,
    SD3_COMP_CLIP_G,
    SD3_COMP_T5,
    SD3_COMP_COUNT
} sd3_component_t;

typedef enum {
    SD3_LAYOUT_SINGLE = 0, // one official file
    SD3_LAYOUT_SD35,       // model file + text_encoders/ files
    SD3_LAYOUT_DIFFUSERS,  // diffusers folder
} sd3_layout_t;

typedef struct sd3_model sd3_model_t;
typedef struct sd3_weights sd3_weights_t;

// Opens and resolves a checkpoint path (file or folder). Opens nothing but headers.
sd3_model_t *sd3_model_open(const char *path, sd3_err_t *err);
void sd3_model_destroy(sd3_model_t **self_p);
sd3_layout_t sd3_model_layout(const sd3_model_t *self);
const char *sd3_layout_name(sd3_layout_t layout); // "single", "sd3.5", "diffusers"
const char *sd3_component_name(sd3_component_t comp); // "mmdit", "vae", "clip_l", "clip_g", "t5"
bool sd3_model_has(const sd3_model_t *self, sd3_component_t comp);
// Folder holding tokenizer files for `which` (0: CLIP-L vocab.json+merges.txt, 1: CLIP-G,
// 2: T5 spiece.model), or NULL when the checkpoint ships none (single files don't).
const char *sd3_model_tokenizer_dir(const sd3_model_t *self, int which);
const char *sd3_model_path(const sd3_model_t *self);

// The weights of one component; the model must outlive it.
sd3_weights_t *sd3_weights_open(sd3_model_t *model, sd3_component_t comp, sd3_err_t *err);
// Shortcut for a file or folder holding just one component (e.g. enc/tiny-clip-l.safetensors,
// a text_encoders/clip_l.safetensors file, or a dit/tiny-*.safetensors MMDiT): opens it with
// the given component's naming rules. The returned weights own their files.
sd3_weights_t *sd3_weights_open_path(const char *path, sd3_component_t comp, sd3_err_t *err);
void sd3_weights_destroy(sd3_weights_t **self_p);

// The tensor under its canonical name, or NULL when absent.
const sd3_tensor_t *sd3_weights_get(sd3_weights_t *self, const char *name);
bool sd3_weights_has(const sd3_weights_t *self, const char *name);
// Like get, but a missing tensor or one whose shape differs (a -1 entry matches any size)
// fails with SD3_EFORMAT: "<file>: 'final_layer.linear.weight' is [64,1536], want [64,2432]".
int sd3_weights_need(sd3_weights_t *self, const char *name, int ndim, const int64_t *shape,
                     const sd3_tensor_t **out, sd3_err_t *err);
// Shape of a tensor without touching its data (for config detection). 0, or SD3_ENOTFOUND.
int sd3_weights_shape(const sd3_weights_t *self, const char *name, int *ndim, int64_t *shape);
// Canonical names, for iteration (0 <= i < count).
size_t sd3_weights_count(const sd3_weights_t *self);
const char *sd3_weights_name(const sd3_weights_t *self, size_t i);
// Bytes of all tensors of this component as stored (for memory planning).
size_t sd3_weights_bytes(const sd3_weights_t *self);
// Bytes of the tensors got so far (what the stages built on these weights use).
size_t sd3_weights_ready_bytes(const sd3_weights_t *self);
// Pages in every tensor got so far: MADV_WILLNEED on its pages, then one read per page, so a
// node serves its first step from memory. Adds each tensor's bytes to *done as it goes
// (atomically: another thread may read it for a progress report); returns early, false,
// once *stop is true.
bool sd3_weights_page_in(sd3_weights_t *self, uint64_t *done, const bool *stop);
