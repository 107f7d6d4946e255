/*  sd3_cpu_simd - AVX-512 helpers shared by the CPU backend's fast paths
 *
 *  Included only by the .c files of stages/cpu. SD3_CPU_AVX512 is 1 when the build targets AVX-512
 *  F+BW+VL (Zen 4, Sapphire Rapids; the build uses -march=native); every user keeps a plain
 *  C path for other machines.  */
#pragma once

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SD3_CPU_AVX512 1
#include <immintrin.h>

// exp(x) in 16 lanes: x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for expf,
// times 2^n (scalef). Relative error about 2e-7. x < -87.3 (and -inf) gives exactly 0;
// x > 88.7 is clamped (about 3.4e38, never inf). NaN stays NaN (max/min return their
// second operand when one is NaN).
static inline __m512
sd3_cpu_exp512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
    __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x)); // operand order keeps NaN
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_scalef_ps(p, n));
}

// Lanes [0, n) set, n in [0, 16].
static inline __mmask16
sd3_cpu_mask16(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}
#else
#define SD3_CPU_AVX512 0
#endif
