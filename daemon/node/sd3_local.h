/*  sd3_local - the whole pipeline in one process (the "all" role)
 *
 *  Opens a checkpoint in any layout, builds the encoder stage, a chain of mmdit range stages
 *  (one range, or the split points given) and the vae stage on one backend, and runs a
 *  request through them with the same stage calls a cluster makes (sd3_stage.h):
 *    encode prompt and negative -> seeded noise (torch-exact) -> schedule (img2img tail)
 *    -> per step: embed (first range) -> blocks (each range) -> final + guide + step (last)
 *    -> VAE decode -> RGB8 -> PNG with the parameters text chunk.
 *  Used by `sd3ctl generate` without --controller, `sd3ctl eval pipeline`, the benches,
 *  and as the reference the cluster tests compare against.
 *  Thread: one request at a time per object.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sd3_stage.h"

typedef struct {
    const char *model_path;     // file or folder, any layout
    const char *tokenizer_dir;  // NULL: the model's own, $SD3_TOKENIZERS, or tokenizers/ nearby
    const char *backend;        // "cpu" (default) or "cuda"
    int n_threads;              // 0: all cores
    const char *precision;      // GEMMs: "f32" (NULL), "bf16", "auto" (sd3_precision.h)
    bool load_t5;               // false: never open T5 (saves its memory; --no-t5 always)
    size_t cache_bytes;         // prompt-embedding cache bound
    int n_splits;               // split points inside (0, depth): the ranges of the chain
    int splits[16];
    sd3_vae_tile_t vae_tile;    // tiled decode (tile 0: whole)
} sd3_local_opts_t;

#define SD3_LOCAL_OPTS_INIT                                                                  \
    {                                                                                        \
        .backend = "cpu", .load_t5 = true, .cache_bytes = 256u << 20                         \
    }

// Called after each step: step (1-based) of n, seconds that step took.
typedef void (*sd3_local_progress_fn)(void *user, int step, int n_steps, double seconds);
// Called with intermediates named as the e2e golden files name them: "cond.context",
// "cond.pooled", "uncond.context", "uncond.pooled", "in.noise", "sigmas", "in.image",
// "in.latent", "x0", "step{i}.x", "step{i}.denoised", "out.latent", "out.latent_vae",
// "out.image_f32", "out.image_u8" (host tensors, borrowed for the call).
typedef void (*sd3_local_tap_fn)(void *user, const char *name, const sd3_tensor_t *t);

typedef struct {
    sd3_tensor_t *rgb;       // [H, W, 3] U8
    sd3_tensor_t *latent;    // [1, Z, h, w] the sampler output
    uint8_t *png;            // PNG bytes with the parameters chunk (free())
    size_t png_size;
    double seconds_encode, seconds_steps, seconds_decode;
} sd3_local_result_t;

void sd3_local_result_fini(sd3_local_result_t *r);

typedef struct sd3_local sd3_local_t;

sd3_local_t *sd3_local_new(const sd3_local_opts_t *opts, sd3_err_t *err);
void sd3_local_destroy(sd3_local_t **self_p);
const sd3_mmdit_config_t *sd3_local_config(const sd3_local_t *self);
sd3_enc_stage_t *sd3_local_encoder(sd3_local_t *self);
// "sd3-medium" etc. of the loaded MMDiT.
const char *sd3_local_arch(const sd3_local_t *self);

// Runs one request. encode_noise: NULL (img2img draws it from seed + 1), or the VAE
// encoder's noise [1, Z, H/8, W/8] to use (the golden img2img case gives it).
int sd3_local_generate(sd3_local_t *self, const sd3_gen_params_t *p,
                       const sd3_tensor_t *encode_noise, sd3_local_progress_fn progress,
                       void *progress_user, sd3_local_tap_fn tap, void *tap_user,
                       sd3_local_result_t *out, sd3_err_t *err);
