/*  sd3_cpu_widen - weight dtypes to f32, a tile at a time
 *
 *  Called inside linear and conv2d on blocks of weight rows (never a whole weight). Exact:
 *  every f16, bf16 and f8 e4m3fn value is representable in f32, so the AVX-512 paths give
 *  the same bits as sd3_dtype_to_f32 (tests/unit/test_cpu_linear.c checks it).  */
#include <pthread.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "sd3_cpu.h"

// The 256 values of f8 e4m3fn, built once (the table is the definition, from sd3_dtype).
static float s_f8_table[256];
static pthread_once_t s_f8_once = PTHREAD_ONCE_INIT;

static void
s_f8_init(void)
{
    for (int i = 0; i < 256; i++)
        s_f8_table[i] = sd3_f8e4m3_to_f32((uint8_t)i);
}

void
sd3_cpu_widen(sd3_dtype_t dtype, const void *src, float *dst, size_t n)
{
    size_t i = 0;
    switch (dtype) {
    case SD3_F32:
        memcpy(dst, src, n * sizeof(float));
        return;
    case SD3_F16: {
        const uint16_t *s = src;
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
        }
#endif
        for (; i < n; i++)
            dst[i] = sd3_f16_to_f32(s[i]);
        return;
    }
    case SD3_BF16: {
        const uint16_t *s = src;
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
            __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(w));
        }
#endif
        for (; i < n; i++)
            dst[i] = sd3_bf16_to_f32(s[i]);
        return;
    }
    case SD3_F8_E4M3: {
        const uint8_t *s = src;
        pthread_once(&s_f8_once, s_f8_init);
#if defined(__AVX512F__)
        for (; i + 16 <= n; i += 16) {
            __m128i b = _mm_loadu_si128((const __m128i *)(s + i));
            __m512i idx = _mm512_cvtepu8_epi32(b);
            _mm512_storeu_ps(dst + i, _mm512_i32gather_ps(idx, s_f8_table, 4));
        }
#endif
        for (; i < n; i++)
            dst[i] = s_f8_table[s[i]];
        return;
    }
    default:
        sd3_dtype_to_f32(dtype, src, dst, n);
        return;
    }
}
