/*  sd3_rng - torch.manual_seed + torch.randn (float32, CPU) bit for bit (see sd3_rng.h)
 *
 *  The order of every float operation below is the one TESTVECTORS-dit.md §4 and
 *  torch_cpu_rng.py state: Cephes log256_ps / sincos256_ps from avx_mathfun.h as GCC
 *  compiled them into torch's AVX2 normal kernel (mul+add pairs contracted to FMA).
 *  Scalar C here, one lane at a time: the lanes are independent, so the bits match.  */
#include "sd3_rng.h"

#include <math.h>
#include <string.h>

void
sd3_rng_init(sd3_rng_t *self, uint64_t seed)
{
    // Only the low 32 bits matter (torch: seed 2^64-1 == 4294967295).
    self->mt[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < SD3_RNG_MT_N; j++) {
        uint32_t prev = self->mt[j - 1];
        self->mt[j] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)j;
    }
    self->index = SD3_RNG_MT_N;
    self->has_cached = false;
    self->cached = 0;
}

static void
s_twist(sd3_rng_t *self)
{
    uint32_t *mt = self->mt;
    for (int i = 0; i < SD3_RNG_MT_N; i++) {
        uint32_t y = (mt[i] & 0x80000000u) | (mt[(i + 1) % SD3_RNG_MT_N] & 0x7fffffffu);
        uint32_t v = (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        mt[i] = mt[(i + 397) % SD3_RNG_MT_N] ^ v;
    }
    self->index = 0;
}

uint32_t
sd3_rng_next_u32(sd3_rng_t *self)
{
    if (self->index >= SD3_RNG_MT_N)
        s_twist(self);
    uint32_t y = self->mt[self->index++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

static uint32_t
s_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float
s_float(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

// log256_ps, one lane. x > 0 here (1 - u with u < 1).
static float
s_log_ps(float x)
{
    bool invalid = x <= 0.0f;
    if (x < s_float(0x00800000u)) // max with the smallest normal
        x = s_float(0x00800000u);
    uint32_t bits = s_bits(x);
    int32_t imm0 = (int32_t)(bits >> 23);
    x = s_float((bits & ~0x7f800000u) | 0x3f000000u); // mantissa in [0.5, 1)
    float e = (float)(imm0 - 0x7f) + 1.0f;
    bool mask = x < 0.707106781186547524f;
    float tmp = mask ? x : 0.0f;
    x = x - 1.0f;
    e = e - (mask ? 1.0f : 0.0f);
    x = x + tmp;
    float z = x * x;
    float y = 7.0376836292E-2f;
    y = fmaf(y, x, -1.1514610310E-1f);
    y = fmaf(y, x, 1.1676998740E-1f);
    y = fmaf(y, x, -1.2420140846E-1f);
    y = fmaf(y, x, 1.4249322787E-1f);
    y = fmaf(y, x, -1.6668057665E-1f);
    y = fmaf(y, x, 2.0000714765E-1f);
    y = fmaf(y, x, -2.4999993993E-1f);
    y = fmaf(y, x, 3.3333331174E-1f);
    y = y * x;
    y = fmaf(y, z, e * -2.12194440e-4f);
    y = fmaf(-z, 0.5f, y);
    x = x + y;
    x = fmaf(e, 0.693359375f, x);
    return invalid ? NAN : x;
}

// sincos256_ps, one lane.
static void
s_sincos_ps(float x, float *s_out, float *c_out)
{
    uint32_t sign_sin = s_bits(x) & 0x80000000u;
    x = s_float(s_bits(x) & 0x7fffffffu);
    float y = x * 1.27323954473516f;
    int32_t j = (int32_t)y; // cvttps: truncation
    j = (j + 1) & ~1;
    y = (float)j;
    uint32_t swap_sin = (uint32_t)(j & 4) << 29;
    bool poly_mask = (j & 2) == 0;
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    sign_sin ^= swap_sin;
    float z = x * x;
    y = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    y = fmaf(y, z, 4.166664568298827E-002f);
    y = y * z;
    y = fmaf(y, z, -(z * 0.5f));
    y = y + 1.0f;
    float y2 = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    y2 = fmaf(y2, z, -1.6666654611E-1f);
    y2 = y2 * z;
    y2 = fmaf(y2, x, x);
    float ysin2 = poly_mask ? y2 : 0.0f;
    float ysin1 = poly_mask ? 0.0f : y;
    y2 = y2 - ysin2;
    y = y - ysin1;
    *s_out = s_float(s_bits(ysin1 + ysin2) ^ sign_sin);
    *c_out = s_float(s_bits(y + y2) ^ sign_cos);
}

// The 16-wide Box-Muller of torch's normal_fill_16: d holds 16 uniforms in [0, 1).
static void
s_fill16(float *d)
{
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j];
        float u2 = d[j + 8];
        float radius = sqrtf(-2.0f * s_log_ps(u1));
        float theta = 6.2831855f * u2; // float32(2*pi)
        float s, c;
        s_sincos_ps(theta, &s, &c);
        d[j] = radius * c;
        d[j + 8] = radius * s;
    }
}

static float
s_uniform24(sd3_rng_t *self)
{
    return (float)(sd3_rng_next_u32(self) & 0xffffffu) * 0x1p-24f;
}

static double
s_uniform53(sd3_rng_t *self)
{
    uint64_t hi = sd3_rng_next_u32(self); // the first draw is the high word
    uint64_t lo = sd3_rng_next_u32(self);
    uint64_t r = (hi << 32) | lo;
    return (double)(r & ((UINT64_C(1) << 53) - 1)) * 0x1p-53;
}

void
sd3_rng_randn(sd3_rng_t *self, float *out, size_t n)
{
    if (n >= 16) {
        for (size_t i = 0; i < n; i++)
            out[i] = s_uniform24(self);
        for (size_t i = 0; i + 16 <= n; i += 16)
            s_fill16(out + i);
        if (n % 16) { // 16 fresh uniforms over the last 16 slots, transformed again
            for (size_t i = n - 16; i < n; i++)
                out[i] = s_uniform24(self);
            s_fill16(out + n - 16);
        }
        return;
    }
    // Serial double path: at::normal_distribution<double> with the generator's cache.
    for (size_t i = 0; i < n; i++) {
        if (self->has_cached) {
            out[i] = (float)self->cached;
            self->has_cached = false;
            continue;
        }
        double u1 = s_uniform53(self); // angle
        double u2 = s_uniform53(self); // radius
        double radius = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * M_PI * u1;
        self->cached = radius * sin(theta);
        self->has_cached = true;
        out[i] = (float)(radius * cos(theta));
    }
}

sd3_tensor_t *
sd3_rng_noise(uint64_t seed, int ndim, const int64_t *shape, sd3_err_t *err)
{
    sd3_tensor_t *t = sd3_tensor_new_err(SD3_F32, ndim, shape, "noise", err);
    if (!t)
        return NULL;
    sd3_rng_t rng;
    sd3_rng_init(&rng, seed);
    sd3_rng_randn(&rng, sd3_tensor_f32(t), (size_t)sd3_tensor_numel(t));
    return t;
}
