/*  sd3_rng - torch.manual_seed + torch.randn (float32, CPU) reproduced bit for bit
 *
 *  The initial noise of a request must be the reference's, so one seed gives the reference's
 *  image (SYSTEM.md §2). This is torch 1.13's CPU generator as TESTVECTORS-dit.md §4 states
 *  it: MT19937 seeded with the low 32 bits of the seed; for numel >= 16 the 16-wide
 *  Box-Muller with the AVX2 Cephes log/sincos polynomials (fmaf exactly where the compiled
 *  kernel fuses; the build uses -ffp-contract=off so nothing else fuses) and the n % 16
 *  tail redraw; for numel < 16 the serial double Box-Muller with one cached value that
 *  survives across calls until the next seed.
 *
 *  The state is a plain struct (by value, nothing to free) so it can be copied or
 *  serialised. Pure CPU code; not thread-safe per instance.  */
#pragma once
#include "sd3_err.h"
#include "sd3_tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD3_RNG_MT_N 624

typedef struct {
    uint32_t mt[SD3_RNG_MT_N]; // MT19937 state
    int index;                 // next word of mt to temper; SD3_RNG_MT_N = twist first
    bool has_cached;           // a cached normal from the double path (numel < 16)
    double cached;
} sd3_rng_t;

// torch.manual_seed(seed): init_genrand(seed & 0xffffffff), clears the cached normal.
void sd3_rng_init(sd3_rng_t *self, uint64_t seed);
// The next tempered 32-bit MT19937 output.
uint32_t sd3_rng_next_u32(sd3_rng_t *self);
// torch.randn(n) in float32 into out[0..n): draws from self exactly as torch does.
void sd3_rng_randn(sd3_rng_t *self, float *out, size_t n);
// Convenience: a fresh F32 host tensor of the given shape = manual_seed(seed); randn(shape).
// NULL + err on a bad shape or out of memory.
sd3_tensor_t *sd3_rng_noise(uint64_t seed, int ndim, const int64_t *shape, sd3_err_t *err);
