/*  sd3_sampler - rectified-flow sampling: CFG, skip-layer guidance, Euler and DPM++ 2M
 *
 *  Exactly the reference's arithmetic (MODEL.md §7, TESTVECTORS-dit.md §5), in float32 on
 *  the host latent [1, Z, h, w] (1 MiB at 1024 px: the sampler is elementwise work on a
 *  tensor that travels on the host anyway):
 *    denoised  D(x, s) = x - v(x, s*1000) * s
 *    CFG       D = D_uncond + (D_cond - D_uncond) * cfg, cond and uncond as ONE batch of 2,
 *              cond first
 *    SLG       on call i with start*N < i < end*N (strict): D += (D_cond - D_skip) * scale,
 *              D_skip = a cond-only batch-1 forward with the listed blocks skipped
 *    Euler     x += (x - D)/s_i * (s_{i+1} - s_i)
 *    DPM++ 2M  k-diffusion's sample_dpmpp_2m on flow sigmas (x = D on the last step)
 *
 *  The step is split so that the LAST mmdit range of a distributed pipeline runs it: it
 *  gets the model output v for the batch, combines the branches (sd3_sampler_guide) and
 *  steps (sd3_sampler_step). The only state carried between steps of one request is
 *  sd3_sampler_state_t (step index and DPM++'s previous denoised), explicit so the wire
 *  layer can checkpoint and move it. sd3_sampler_run drives the whole loop on one node.
 *  Thread: pure functions on the arguments; no globals.  */
#pragma once
#include "sd3_err.h"
#include "sd3_mmdit.h"
#include "sd3_tensor.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum { SD3_SAMPLER_EULER = 0, SD3_SAMPLER_DPMPP_2M = 1 } sd3_sampler_kind_t;

typedef struct {
    float scale;  // 0: off
    double start; // window as fractions of the step count, both strict
    double end;
    uint64_t layers; // bit i: joint block i is skipped in the extra forward
} sd3_slg_t;

typedef struct {
    sd3_sampler_kind_t kind;
    float cfg_scale;
    int steps; // N of the schedule before any img2img truncation (the SLG window)
    sd3_slg_t slg;
} sd3_sampler_opts_t;

// Per-request state between steps, kept by whoever runs the step (the last mmdit range).
typedef struct {
    int step;                   // index i of the next step: sigmas[i] -> sigmas[i + 1]
    bool has_old;               // DPM++ 2M: old_denoised holds D of step i - 1
    sd3_tensor_t *old_denoised; // [1, Z, h, w] host f32, owned; NULL until needed
} sd3_sampler_state_t;

void sd3_sampler_state_init(sd3_sampler_state_t *st);
void sd3_sampler_state_fini(sd3_sampler_state_t *st);

// "euler", "dpmpp_2m" (also "dpm++2m"). SD3_EINVAL otherwise.
int sd3_sampler_kind_from_name(const char *name, sd3_sampler_kind_t *kind, sd3_err_t *err);
const char *sd3_sampler_kind_name(sd3_sampler_kind_t kind);

// Whether the SLG forward runs on denoiser call `call` (0-based).
bool sd3_sampler_slg_active(const sd3_sampler_opts_t *opts, int call);

// x_start = sigma0 * noise + (1 - sigma0) * latent (latent NULL: zeros). All [1, Z, h, w].
int sd3_sampler_start(float sigma0, const sd3_tensor_t *noise, const sd3_tensor_t *latent,
                      sd3_tensor_t *x, sd3_err_t *err);

// Optional outputs of sd3_sampler_guide (each NULL or a [1, Z, h, w] host f32 tensor).
typedef struct {
    sd3_tensor_t *cond, *uncond, *skip;
} sd3_sampler_branches_t;

// Combines the model outputs of one step into the guided denoised D.
//   x: [1, Z, h, w]   v: [2, Z, h, w] (cond, uncond)   v_skip: [1, Z, h, w] or NULL
//   (given iff sd3_sampler_slg_active(opts, call))   denoised: [1, Z, h, w]
int sd3_sampler_guide(const sd3_sampler_opts_t *opts, const sd3_tensor_t *x, float sigma,
                      const sd3_tensor_t *v, const sd3_tensor_t *v_skip, sd3_tensor_t *denoised,
                      sd3_sampler_branches_t *branches, sd3_err_t *err);

// One sampler step from sigmas[st->step] to sigmas[st->step + 1]: x updated in place, the
// state advanced. sigmas has n_sigmas values (the last normally 0).
int sd3_sampler_step(const sd3_sampler_opts_t *opts, const float *sigmas, int n_sigmas,
                     sd3_sampler_state_t *st, sd3_tensor_t *x, const sd3_tensor_t *denoised,
                     sd3_err_t *err);

// The latent handed to the VAE: z / 1.5305 + 0.0609 (MODEL.md §6.5), in place ok.
void sd3_sampler_process_out(const float *z, float *out, size_t n);

// ---- the whole loop on one node -------------------------------------------------------------

typedef struct {
    const sd3_tensor_t *context; // [1, L, context_in] host f32
    const sd3_tensor_t *y;       // [1, adm_in] host f32
} sd3_sampler_cond_t;

// Called (when set) with "x_in", "denoised", "denoised_cond", "denoised_uncond",
// "denoised_skip" at each step (borrowed host tensors).
typedef void (*sd3_sampler_tap_fn)(void *user, int step, const char *name, const sd3_tensor_t *t);

// Runs sigmas[0..n_sigmas) from x_start (host [1, Z, h, w]) with an mmdit hosting the whole
// model; the result in out ([1, Z, h, w], may alias x_start).
int sd3_sampler_run(sd3_mmdit_t *mmdit, const sd3_sampler_opts_t *opts, const float *sigmas,
                    int n_sigmas, const sd3_tensor_t *x_start, const sd3_sampler_cond_t *cond,
                    const sd3_sampler_cond_t *uncond, sd3_tensor_t *out, sd3_sampler_tap_fn tap,
                    void *user, sd3_err_t *err);
