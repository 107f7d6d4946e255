/*  sd3_schedule - rectified-flow sigma schedules, bit-exact with the reference
 *
 *  ModelSamplingDiscreteFlow (MODEL.md §7.2): sigma(t) = shift*s / (1 + (shift-1)*s),
 *  s = t/1000, in float32; get_sigmas = sigma(linspace(1000*sigma(1000), 1000*sigma(1), N))
 *  with torch's float32 linspace recipe (TESTVECTORS-dit.md §3) and a final 0 appended;
 *  the timestep the MMDiT receives is float32(sigma*1000). img2img starts at index
 *  int(N*(1-denoise)) computed in doubles (MODEL.md §7.3).
 *  Pure functions, thread-safe, no allocation.  */
#pragma once
#include "sd3_err.h"

#include <stddef.h>

#define SD3_SCHEDULE_MAX_STEPS 10000

// sigma(t) for a timestep t in [0, 1000] (float32 arithmetic).
float sd3_schedule_sigma(float t, float shift);
// Timestep fed to the model for sigma: float32(sigma*1000).
float sd3_schedule_timestep(float sigma);
// torch.linspace(start, end, n) in float32, bit-exact with torch 1.13's AVX2 CPU kernel.
void sd3_schedule_linspace(float start, float end, int n, float *out);
// get_sigmas: sigmas[0..n] (n+1 values, the last 0). 1 <= n <= SD3_SCHEDULE_MAX_STEPS and
// shift > 0, else SD3_EINVAL.
int sd3_schedule_sigmas(int n, float shift, float *sigmas, sd3_err_t *err);
// img2img: the index of the first sigma to use for strength `denoise` in [0, 1]:
// int(n * (1 - denoise)) in doubles (n = 40, denoise 0.8 -> 7). SD3_EINVAL outside [0, 1].
int sd3_schedule_start_index(int n, double denoise, int *start, sd3_err_t *err);
