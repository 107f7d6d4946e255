/*  sd3_stage - the three stage roles as plain objects: encoder, mmdit range, vae
 *
 *  These are the interfaces every deployment runs through. The one-process pipeline
 *  (sd3_local, the "all" role) calls them directly, one after the other; the distributed
 *  node wraps each call in a message handler. Because both paths make the same calls in the
 *  same order on the same data, a cluster makes the same bits as one process.
 *
 *    encoder  prompt -> (context [1, L, Cin], pooled [1, adm]), through the embedding cache
 *    mmdit    first range: job + latent -> activations (embed); any range: blocks [a, b);
 *             last range: final layer, guidance, sampler step -> next latent
 *    vae      latent -> RGB8 -> PNG; RGB8 -> latent for img2img
 *
 *  No sockets here (STYLE.md §1): stages take and return host tensors and sd3_* structs.
 *  Thread: one stage object is used by one thread at a time.  */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "sd3_backend.h"
#include "sd3_embcache.h"
#include "sd3_err.h"
#include "sd3_mmdit.h"
#include "sd3_sampler.h"
#include "sd3_tensor.h"
#include "sd3_vae.h"
#include "sd3_weights.h"

// ---- what a user asks for ----------------------------------------------------------------

#define SD3_GEN_MAX_SIDE 8192  // pixels per side accepted
#define SD3_GEN_MAX_STEPS 1000

typedef struct {
    char *prompt;   // owned (UTF-8)
    char *negative; // owned; "" = the empty negative prompt
    int width, height; // pixels, multiples of 16
    int steps;
    float cfg;
    float shift;
    uint64_t seed;
    sd3_sampler_kind_t sampler;
    sd3_slg_t slg;     // scale 0: off
    bool no_t5;
    int t5_len;        // 0: the reference's rule; N: fixed length (diffusers: 256)
    double denoise;    // img2img strength in (0, 1]; 1 = txt2img
    uint8_t *init_rgb; // owned, [init_h, init_w, 3], or NULL
    int init_w, init_h;
    char *model_name;  // owned label for the PNG text ("sd3-medium"), may be NULL
} sd3_gen_params_t;

// Defaults of the reference's CONFIGS for the architecture of `cfg` (shift, steps, cfg,
// sampler; SLG off), seed 0, empty negative prompt, 1024x1024 or, when cfg's position table
// covers less, the largest square it covers (pos_max * 16 pixels a side: 208x208 on the
// embedded tiny model). cfg NULL: the SD3.5 defaults at 1024x1024.
void sd3_gen_params_init(sd3_gen_params_t *p, const sd3_mmdit_config_t *cfg);
void sd3_gen_params_fini(sd3_gen_params_t *p);
int sd3_gen_params_set_prompt(sd3_gen_params_t *p, const char *prompt, const char *negative,
                              sd3_err_t *err);
// Checks every field (size multiple of 16 and within bounds and the model's position table,
// steps, cfg finite, denoise, SLG layers inside the model). SD3_EINVAL naming the field.
int sd3_gen_params_check(const sd3_gen_params_t *p, const sd3_mmdit_config_t *cfg,
                         sd3_err_t *err);
// The PNG `parameters` text (A1111 infotext); fresh string.
char *sd3_gen_params_infotext(const sd3_gen_params_t *p);

// ---- encoder stage -----------------------------------------------------------------------

typedef struct sd3_enc_stage sd3_enc_stage_t;

// Opens the tokenizers (tokenizer_dir, or the model's own tokenizer folders when NULL), the
// three text encoders of `model` (T5 only when the model has one and load_t5), and an
// embedding cache of cache_bytes. Borrows be and model.
sd3_enc_stage_t *sd3_enc_stage_new(sd3_backend_t *be, sd3_model_t *model,
                                   const char *tokenizer_dir, bool load_t5, size_t cache_bytes,
                                   sd3_err_t *err);
void sd3_enc_stage_destroy(sd3_enc_stage_t **self_p);
// Encodes one prompt (cached). context: fresh [1, L, Cin]; pooled: fresh [1, adm].
// context_width: the MMDiT's context input width (pads CLIP to it when there is no T5).
int sd3_enc_stage_encode(sd3_enc_stage_t *self, const char *prompt, bool no_t5, int t5_len,
                         int context_width, sd3_tensor_t **context_p, sd3_tensor_t **pooled_p,
                         sd3_err_t *err);
void sd3_enc_stage_stats(sd3_enc_stage_t *self, sd3_embcache_stats_t *out);
// The hook sd3_cond_opts_t.between of every encode (NULL: none); cache hits call nothing.
void sd3_enc_stage_set_progress(sd3_enc_stage_t *self, int (*fn)(void *, int, double),
                                void *user);
// The encoders' weights (0 CLIP-L, 1 CLIP-G, 2 T5; NULL when absent), borrowed.
sd3_weights_t *sd3_enc_stage_weights(sd3_enc_stage_t *self, int i);
bool sd3_enc_stage_has_t5(const sd3_enc_stage_t *self);

// ---- mmdit stage (one layer range) ---------------------------------------------------------

// Per-request sampling state, held by the first and the last range of a pipeline.
typedef struct {
    sd3_sampler_opts_t opts;
    float *sigmas;       // owned, n_sigmas values (the last normally 0)
    int n_sigmas;
    sd3_tensor_t *ctx2;  // [2, L, Cin] cond, uncond (first range)
    sd3_tensor_t *y2;    // [2, adm]
    sd3_tensor_t *ctx1;  // [1, L, Cin] cond only (skip-layer forward)
    sd3_tensor_t *y1;    // [1, adm]
    sd3_tensor_t *x;     // [1, Z, h, w] the latent entering step st.step
    sd3_sampler_state_t st;
} sd3_dit_job_t;

// Copies everything it is given. cond/uncond context [1, L, Cin], y [1, adm]; x [1, Z, h, w].
sd3_dit_job_t *sd3_dit_job_new(const sd3_sampler_opts_t *opts, const float *sigmas,
                               int n_sigmas, const sd3_tensor_t *cond_ctx,
                               const sd3_tensor_t *cond_y, const sd3_tensor_t *uncond_ctx,
                               const sd3_tensor_t *uncond_y, const sd3_tensor_t *x,
                               sd3_err_t *err);
void sd3_dit_job_destroy(sd3_dit_job_t **self_p);
bool sd3_dit_job_done(const sd3_dit_job_t *job);
// Whether step job->st.step runs the extra skip-layer forward.
bool sd3_dit_job_slg_now(const sd3_dit_job_t *job);

typedef struct sd3_dit_stage sd3_dit_stage_t;

sd3_dit_stage_t *sd3_dit_stage_new(sd3_backend_t *be, sd3_weights_t *weights, int first,
                                   int last, sd3_err_t *err);
void sd3_dit_stage_destroy(sd3_dit_stage_t **self_p);
sd3_mmdit_t *sd3_dit_stage_mmdit(sd3_dit_stage_t *self);
// First range: embeds step job->st.step: the CFG batch of 2 into *act and, when SLG runs
// this step, the cond-only batch of 1 into *act_skip (else act_skip->x stays NULL).
int sd3_dit_stage_embed(sd3_dit_stage_t *self, const sd3_dit_job_t *job, sd3_mmdit_act_t *act,
                        sd3_mmdit_act_t *act_skip, sd3_err_t *err);
// Any range: its blocks on both activations (act_skip->x NULL: none); the skip pass skips
// the job's SLG layers.
int sd3_dit_stage_blocks(sd3_dit_stage_t *self, uint64_t slg_layers, sd3_mmdit_act_t *act,
                         sd3_mmdit_act_t *act_skip, sd3_err_t *err);
// Last range: final layer, guidance and one sampler step: job->x becomes the next latent,
// job->st advances. denoised: NULL or [1, Z, h, w] receiving the guided D of this step.
int sd3_dit_stage_finish(sd3_dit_stage_t *self, sd3_dit_job_t *job, sd3_mmdit_act_t *act,
                         sd3_mmdit_act_t *act_skip, sd3_tensor_t *denoised, sd3_err_t *err);

// ---- vae stage -------------------------------------------------------------------------------

typedef struct sd3_vae_stage sd3_vae_stage_t;

sd3_vae_stage_t *sd3_vae_stage_new(sd3_backend_t *be, sd3_weights_t *weights, sd3_err_t *err);
void sd3_vae_stage_destroy(sd3_vae_stage_t **self_p);
sd3_vae_t *sd3_vae_stage_vae(sd3_vae_stage_t *self);
// latent: sampler space [1, Z, h, w] -> RGB8 [8h, 8w, 3] (fresh) and, when png_p is given,
// PNG bytes with `infotext` in its parameters chunk (fresh, free()).
int sd3_vae_stage_decode(sd3_vae_stage_t *self, const sd3_tensor_t *latent,
                         const sd3_vae_tile_t *tile, const char *infotext, sd3_tensor_t **rgb_p,
                         uint8_t **png_p, size_t *png_size, sd3_err_t *err);
// img2img: RGB8 [H, W, 3] -> sampler-space latent [1, Z, H/8, W/8] (fresh); noise as
// sd3_vae_encode_rgb8 (NULL: the mean).
int sd3_vae_stage_encode(sd3_vae_stage_t *self, const sd3_tensor_t *rgb,
                         const sd3_tensor_t *noise, sd3_tensor_t **latent_p, sd3_err_t *err);
