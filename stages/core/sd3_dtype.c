/*  sd3_dtype - element types and exact conversions (see sd3_dtype.h)  */
#include "sd3_dtype.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} s_dtypes[SD3_DTYPE_COUNT] = {
    [SD3_F32] = {"F32", 4},         [SD3_F16] = {"F16", 2}, [SD3_BF16] = {"BF16", 2},
    [SD3_F8_E4M3] = {"F8_E4M3", 1}, [SD3_I32] = {"I32", 4}, [SD3_I64] = {"I64", 8},
    [SD3_U8] = {"U8", 1},           [SD3_F64] = {"F64", 8},
};

static inline uint32_t
s_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float
s_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

size_t
sd3_dtype_size(sd3_dtype_t dtype)
{
    return (unsigned)dtype < SD3_DTYPE_COUNT ? s_dtypes[dtype].size : 0;
}

const char *
sd3_dtype_name(sd3_dtype_t dtype)
{
    return (unsigned)dtype < SD3_DTYPE_COUNT ? s_dtypes[dtype].name : "?";
}

int
sd3_dtype_from_name(const char *name, sd3_dtype_t *out)
{
    for (int i = 0; i < SD3_DTYPE_COUNT; i++)
        if (!strcmp(name, s_dtypes[i].name)) {
            *out = (sd3_dtype_t)i;
            return 0;
        }
    return -1;
}

bool
sd3_dtype_is_float(sd3_dtype_t dtype)
{
    return dtype == SD3_F32 || dtype == SD3_F16 || dtype == SD3_BF16 || dtype == SD3_F8_E4M3 ||
           dtype == SD3_F64;
}

uint16_t
sd3_f32_to_f16(float x)
{
    uint32_t u = s_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    u &= 0x7fffffff;
    if (u >= 0x7f800000) // inf or NaN (NaN made quiet)
        return sign | (u > 0x7f800000 ? 0x7e00 : 0x7c00);
    if (u >= 0x477ff000) // >= 65520 rounds past the largest finite 65504
        return sign | 0x7c00;
    if (u < 0x38800000) { // below 2^-14: subnormal. 0.5 has ulp 2^-24, the f16 subnormal step,
        // so the float add rounds (nearest-even) to exactly the right multiple.
        float f = s_float(u) + 0.5f;
        return sign | (uint16_t)(s_bits(f) - 0x3f000000u);
    }
    uint32_t odd = (u >> 13) & 1;
    u += ((uint32_t)(15 - 127) << 23) + 0xfff + odd;
    return sign | (uint16_t)(u >> 13);
}

float
sd3_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) { // zero or subnormal: mant * 2^-24, exact in f32
        float f = (float)mant * 5.9604644775390625e-08f;
        return s_float(s_bits(f) | sign);
    }
    if (exp == 31)
        return s_float(sign | 0x7f800000 | (mant << 13));
    return s_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t
sd3_f32_to_bf16(float x)
{
    uint32_t u = s_bits(x);
    if ((u & 0x7fffffff) > 0x7f800000)
        return 0x7fc0; // every NaN becomes the canonical quiet NaN, as c10::BFloat16 does
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float
sd3_bf16_to_f32(uint16_t h)
{
    return s_float((uint32_t)h << 16);
}

uint8_t
sd3_f32_to_f8e4m3(float x)
{
    uint32_t u = s_bits(x);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    uint8_t out;
    u &= 0x7fffffff;
    if (u >= 0x43f00000) { // >= 480 (and inf, NaN): no inf in e4m3fn, so NaN
        out = 0x7f;
    } else if (u < 0x3c800000) { // below 2^-6: subnormal, step 2^-9. 16384 has ulp 2^-9.
        float f = s_float(u) + 16384.0f;
        out = (uint8_t)(s_bits(f) - 0x46800000u);
    } else {
        uint32_t odd = (u >> 20) & 1;
        u += ((uint32_t)(7 - 127) << 23) + 0x7ffff + odd;
        out = (uint8_t)(u >> 20);
    }
    return out | sign;
}

float
sd3_f8e4m3_to_f32(uint8_t b)
{
    uint32_t sign = (uint32_t)(b & 0x80) << 24;
    uint32_t exp = (b >> 3) & 0xf, mant = b & 0x7;
    if (exp == 15 && mant == 7)
        return s_float(sign | 0x7fc00000);
    if (exp == 0) {
        float f = (float)mant * 0.001953125f; // 2^-9
        return s_float(s_bits(f) | sign);
    }
    return s_float(sign | ((exp + 120) << 23) | (mant << 20));
}

// Element i of `size` bytes of an array at any address: the arrays handed to the two loops
// below may be views into a mapped file whose data area is not aligned (safetensors does
// not require it), so they are never accessed through a typed pointer. With a constant
// size the memcpy compiles to one plain load or store.
static inline void
s_get(void *value, const void *array, size_t i, size_t size)
{
    memcpy(value, (const uint8_t *)array + i * size, size);
}

static inline void
s_put(void *array, size_t i, const void *value, size_t size)
{
    memcpy((uint8_t *)array + i * size, value, size);
}

void
sd3_dtype_to_f32(sd3_dtype_t dtype, const void *src, float *dst, size_t n)
{
    const uint8_t *b = src;
    uint16_t h;
    int32_t i32;
    int64_t i64;
    double f64;
    switch (dtype) {
    case SD3_F32:
        memcpy(dst, src, n * 4);
        break;
    case SD3_F16:
        for (size_t i = 0; i < n; i++) {
            s_get(&h, src, i, 2);
            dst[i] = sd3_f16_to_f32(h);
        }
        break;
    case SD3_BF16:
        for (size_t i = 0; i < n; i++) {
            s_get(&h, src, i, 2);
            dst[i] = s_float((uint32_t)h << 16);
        }
        break;
    case SD3_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            dst[i] = sd3_f8e4m3_to_f32(b[i]);
        break;
    case SD3_I32:
        for (size_t i = 0; i < n; i++) {
            s_get(&i32, src, i, 4);
            dst[i] = (float)i32;
        }
        break;
    case SD3_I64:
        for (size_t i = 0; i < n; i++) {
            s_get(&i64, src, i, 8);
            dst[i] = (float)i64;
        }
        break;
    case SD3_U8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)b[i];
        break;
    case SD3_F64:
        for (size_t i = 0; i < n; i++) {
            s_get(&f64, src, i, 8);
            dst[i] = (float)f64;
        }
        break;
    default:
        break;
    }
}

void
sd3_dtype_from_f32(sd3_dtype_t dtype, const float *src, void *dst, size_t n)
{
    uint8_t *b = dst;
    uint16_t h;
    double f64;
    switch (dtype) {
    case SD3_F32:
        memcpy(dst, src, n * 4);
        break;
    case SD3_F16:
        for (size_t i = 0; i < n; i++) {
            h = sd3_f32_to_f16(src[i]);
            s_put(dst, i, &h, 2);
        }
        break;
    case SD3_BF16:
        for (size_t i = 0; i < n; i++) {
            h = sd3_f32_to_bf16(src[i]);
            s_put(dst, i, &h, 2);
        }
        break;
    case SD3_F8_E4M3:
        for (size_t i = 0; i < n; i++)
            b[i] = sd3_f32_to_f8e4m3(src[i]);
        break;
    case SD3_F64:
        for (size_t i = 0; i < n; i++) {
            f64 = src[i];
            s_put(dst, i, &f64, 8);
        }
        break;
    default:
        break;
    }
}
