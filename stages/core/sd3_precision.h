/*  sd3_precision - the compute precision of a backend's GEMMs (linear, and later attention
 *  and conv2d), chosen per process (`--precision f32|bf16|auto`)
 *
 *  F32 is the exact path every golden test runs: f32 activations and products, weights
 *  widened exactly. BF16 rounds the activations to bf16 at the GEMM's input and multiplies
 *  with weights converted once to bf16, accumulating in f32 (what PyTorch's autocast does
 *  on CPUs); everything outside the GEMMs (norms, softmax, residuals) stays f32. "auto" is
 *  bf16 where the backend has a fast bf16 path (cpu: AVX512_BF16), f32 elsewhere.
 *  Library code defaults to F32: only the user-facing entry points (sd3d, sd3ctl generate
 *  and bench) resolve "auto", so evals and tests stay exact unless they ask.  */
#pragma once
#include "sd3_err.h"

typedef enum {
    SD3_PRECISION_F32 = 0, // exact (default of every backend constructor)
    SD3_PRECISION_BF16,    // bf16 products, f32 accumulation
} sd3_precision_t;

// "f32", "bf16" (and "auto" as -1 in *out, resolved by sd3_backend_set_precision). NULL or
// "" is "auto". SD3_EINVAL naming the text otherwise.
int sd3_precision_parse(const char *text, int *out, sd3_err_t *err);
const char *sd3_precision_name(sd3_precision_t p); // "f32", "bf16"
