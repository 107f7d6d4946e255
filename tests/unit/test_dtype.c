/*  test_dtype - bit-exact conversions of stages/core/sd3_dtype.c on edge values
 *
 *  Every expected bit pattern below was derived by hand from the format definitions:
 *  - f16 (IEEE binary16): bias 15, 10 mantissa bits, subnormal step 2^-24, largest 65504;
 *    round to nearest, ties to even; overflow (>= 65520, the midpoint to 2^16) to inf;
 *    NaN to quiet 0x7e00 with the sign (c10::Half's fp16_ieee_from_fp32_value does the same).
 *  - bf16: the top 16 bits of f32 rounded to nearest even (c10::BFloat16); every NaN,
 *    whatever its sign and payload, becomes 0x7fc0 (as c10::BFloat16 does).
 *  - f8 e4m3fn: bias 7, 3 mantissa bits, subnormal step 2^-9, largest 448 (0x7e), 0x7f/0xff
 *    NaN, no inf. PyTorch's c10 conversion: |x| >= 480 (and inf, NaN) -> NaN; otherwise
 *    round to nearest even on the 3 mantissa bits, where the code after 448 is the NaN
 *    pattern: so 448 < |x| <= 464 rounds to 448 (464 is the tie, 0x7e is even) and
 *    464 < |x| < 480 becomes NaN (0x7f), as sd3_dtype.h states.
 *  The array forms also take arrays at any address (views into unaligned file data).  */
#include "sd3_dtype.h"
#include "sd3_test.h"

#include <float.h>
#include <math.h>
#include <string.h>

static float
s_f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t
s_u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

typedef struct {
    uint32_t in; // f32 bits
    uint32_t want;
    const char *what;
} s_case_t;

static void
s_f16(void)
{
    static const s_case_t to[] = {
        {0x00000000, 0x0000, "+0"},
        {0x80000000, 0x8000, "-0"},
        {0x3f800000, 0x3c00, "1"},
        {0xc0000000, 0xc000, "-2"},
        {0x3eaaaaab, 0x3555, "1/3"},
        {0x477fe000, 0x7bff, "65504 largest finite"},
        {0x477fefff, 0x7bff, "65519.998 below the overflow midpoint"},
        {0x477ff000, 0x7c00, "65520 midpoint: ties to even = inf"},
        {0xc77ff000, 0xfc00, "-65520 -> -inf"},
        {0x501502f9, 0x7c00, "1e10 -> inf"},
        {0x7f800000, 0x7c00, "+inf"},
        {0xff800000, 0xfc00, "-inf"},
        {0x7fc00000, 0x7e00, "NaN"},
        {0x7f800001, 0x7e00, "signalling NaN made quiet"},
        {0xffc00000, 0xfe00, "-NaN"},
        {0x33800000, 0x0001, "2^-24 smallest subnormal"},
        {0x33000000, 0x0000, "2^-25 tie between 0 and 2^-24: even = 0"},
        {0x33000001, 0x0001, "just above 2^-25"},
        {0x33c00000, 0x0002, "3*2^-25 tie between 1 and 2 ulp: even = 2"},
        {0x387fc000, 0x03ff, "1023*2^-24 largest subnormal"},
        {0x387fe000, 0x0400, "1023.5*2^-24 tie: even = 2^-14"},
        {0x38800000, 0x0400, "2^-14 smallest normal"},
        {0x80000001, 0x8000, "-f32 subnormal underflows to -0"},
        {0x0da24260, 0x0000, "1e-30 underflows"},
        {0x3f801000, 0x3c00, "1 + 2^-11 tie: even = 1"},
        {0x3f803000, 0x3c02, "1 + 3*2^-11 tie: even = 0x3c02"},
        {0x3f801001, 0x3c01, "just above 1 + 2^-11"},
        {0xbf803000, 0xbc02, "negative tie"},
    };
    for (size_t i = 0; i < sizeof to / sizeof to[0]; i++) {
        uint16_t got = sd3_f32_to_f16(s_f(to[i].in));
        CHECK_MSG(got == to[i].want, "f16 of %s (0x%08x): got 0x%04x want 0x%04x", to[i].what,
                  to[i].in, got, to[i].want);
    }
    static const s_case_t from[] = {
        {0x0000, 0x00000000, "+0"},       {0x8000, 0x80000000, "-0"},
        {0x0001, 0x33800000, "2^-24"},    {0x8001, 0xb3800000, "-2^-24"},
        {0x03ff, 0x387fc000, "max subn"}, {0x0400, 0x38800000, "min normal"},
        {0x3c00, 0x3f800000, "1"},        {0x7bff, 0x477fe000, "65504"},
        {0x7c00, 0x7f800000, "inf"},      {0xfc00, 0xff800000, "-inf"},
        {0x7e00, 0x7fc00000, "qNaN"},     {0x3555, 0x3eaaa000, "0.333251953125"},
    };
    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        uint32_t got = s_u(sd3_f16_to_f32((uint16_t)from[i].in));
        CHECK_MSG(got == from[i].want, "f32 of f16 %s: got 0x%08x want 0x%08x", from[i].what, got,
                  from[i].want);
    }
    // every finite f16 survives f16 -> f32 -> f16
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++)
        if ((h & 0x7c00) != 0x7c00 && sd3_f32_to_f16(sd3_f16_to_f32((uint16_t)h)) != h)
            bad++;
    CHECK_MSG(bad == 0, "f16 round trip fails for %d patterns", bad);
}

static void
s_bf16(void)
{
    static const s_case_t to[] = {
        {0x00000000, 0x0000, "+0"},
        {0x80000000, 0x8000, "-0"},
        {0x3f800000, 0x3f80, "1"},
        {0x3f808000, 0x3f80, "1 + 2^-8 tie: even = 1"},
        {0x3f818000, 0x3f82, "1 + 3*2^-8 tie: even = 0x3f82"},
        {0x3f808001, 0x3f81, "just above the tie"},
        {0xbf818000, 0xbf82, "negative tie"},
        {0x7f7f0000, 0x7f7f, "largest finite bf16"},
        {0x7f7f7fff, 0x7f7f, "below the overflow midpoint"},
        {0x7f7f8000, 0x7f80, "overflow midpoint: even = inf"},
        {0x7f7fffff, 0x7f80, "FLT_MAX rounds to inf"},
        {0x7f800000, 0x7f80, "inf"},
        {0xff800000, 0xff80, "-inf"},
        {0x7fc00000, 0x7fc0, "NaN"},
        {0x7f800001, 0x7fc0, "signalling NaN made quiet (not inf)"},
        {0xffc00000, 0x7fc0, "-NaN becomes the canonical 0x7fc0, as c10::BFloat16 does"},
        {0x00010000, 0x0001, "smallest bf16 subnormal"},
        {0x00008000, 0x0000, "tie below it: even = 0"},
        {0x00018000, 0x0002, "tie 1.5 ulp: even = 2"},
        {0x007f8000, 0x0080, "largest subnormal rounds up to min normal"},
        {0x3eaaaaab, 0x3eab, "1/3"},
    };
    for (size_t i = 0; i < sizeof to / sizeof to[0]; i++) {
        uint16_t got = sd3_f32_to_bf16(s_f(to[i].in));
        CHECK_MSG(got == to[i].want, "bf16 of %s (0x%08x): got 0x%04x want 0x%04x", to[i].what,
                  to[i].in, got, to[i].want);
    }
    CHECK(s_u(sd3_bf16_to_f32(0x0001)) == 0x00010000);
    CHECK(s_u(sd3_bf16_to_f32(0xff80)) == 0xff800000);
    CHECK(s_u(sd3_bf16_to_f32(0x8000)) == 0x80000000);
    CHECK(s_u(sd3_bf16_to_f32(0x3eab)) == 0x3eab0000);
}

static void
s_f8(void)
{
    static const s_case_t to[] = {
        {0x00000000, 0x00, "+0"},
        {0x80000000, 0x80, "-0"},
        {0x3f800000, 0x38, "1 (exponent 7, mantissa 0)"},
        {0xbfc00000, 0xbc, "-1.5"},
        {0x43e00000, 0x7e, "448 largest finite"},
        {0xc3e00000, 0xfe, "-448"},
        {0x43e40000, 0x7e, "456 rounds down to 448"},
        {0x43e80000, 0x7e, "464 tie between 448 and the NaN code: even = 448"},
        {0x43e80001, 0x7f, "just above 464 -> NaN (PyTorch)"},
        {0x43eb0000, 0x7f, "470 -> NaN (PyTorch)"},
        {0x43efffff, 0x7f, "479.99997 -> NaN"},
        {0x43f00000, 0x7f, "480 -> NaN"},
        {0xc3f00000, 0xff, "-480 -> -NaN"},
        {0x49742400, 0x7f, "1e6 -> NaN"},
        {0x7f800000, 0x7f, "inf -> NaN (no inf in e4m3fn)"},
        {0xff800000, 0xff, "-inf -> -NaN"},
        {0x7fc00000, 0x7f, "NaN"},
        {0x3b000000, 0x01, "2^-9 smallest subnormal"},
        {0x3a800000, 0x00, "2^-10 tie: even = 0"},
        {0x3a800001, 0x01, "just above 2^-10"},
        {0x3b400000, 0x02, "3*2^-10 tie: even = 2"},
        {0x3c600000, 0x07, "7*2^-9 largest subnormal"},
        {0x3c700000, 0x08, "7.5*2^-9 tie: even = 2^-6"},
        {0x3c800000, 0x08, "2^-6 smallest normal"},
        {0x3f880000, 0x38, "1 + 2^-4 tie: even = 1"},
        {0x3f980000, 0x3a, "1 + 3*2^-4 tie: even = 1.25"},
        {0x3f880001, 0x39, "just above 1 + 2^-4"},
        {0x0da24260, 0x00, "1e-30 underflows"},
        {0x8da24260, 0x80, "-1e-30 -> -0"},
    };
    for (size_t i = 0; i < sizeof to / sizeof to[0]; i++) {
        uint8_t got = sd3_f32_to_f8e4m3(s_f(to[i].in));
        CHECK_MSG(got == to[i].want, "f8 of %s (0x%08x): got 0x%02x want 0x%02x", to[i].what,
                  to[i].in, got, to[i].want);
    }
    static const s_case_t from[] = {
        {0x00, 0x00000000, "+0"},   {0x80, 0x80000000, "-0"},
        {0x01, 0x3b000000, "2^-9"}, {0x07, 0x3c600000, "7*2^-9"},
        {0x08, 0x3c800000, "2^-6"}, {0x38, 0x3f800000, "1"},
        {0x7e, 0x43e00000, "448"},  {0xfe, 0xc3e00000, "-448"},
        {0x77, 0x43700000, "240"},  {0x78, 0x43800000, "256 (exponent 15)"},
    };
    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        uint32_t got = s_u(sd3_f8e4m3_to_f32((uint8_t)from[i].in));
        CHECK_MSG(got == from[i].want, "f32 of f8 %s: got 0x%08x want 0x%08x", from[i].what, got,
                  from[i].want);
    }
    CHECK(isnan(sd3_f8e4m3_to_f32(0x7f)) && !signbit(sd3_f8e4m3_to_f32(0x7f)));
    CHECK(isnan(sd3_f8e4m3_to_f32(0xff)) && signbit(sd3_f8e4m3_to_f32(0xff)));
    int bad = 0; // every non-NaN code survives the round trip
    for (int b = 0; b < 256; b++)
        if ((b & 0x7f) != 0x7f && sd3_f32_to_f8e4m3(sd3_f8e4m3_to_f32((uint8_t)b)) != b)
            bad++;
    CHECK_MSG(bad == 0, "f8 round trip fails for %d codes", bad);
}

static void
s_arrays(void)
{
    // the array forms agree with the scalar ones, and names parse
    float src[5] = {1.0f, -0.0f, 65520.0f, 3.0e-8f, 470.0f};
    uint16_t h[5], bf[5];
    uint8_t e[5];
    float back[5];
    sd3_dtype_from_f32(SD3_F16, src, h, 5);
    sd3_dtype_from_f32(SD3_BF16, src, bf, 5);
    sd3_dtype_from_f32(SD3_F8_E4M3, src, e, 5);
    for (int i = 0; i < 5; i++) {
        CHECK(h[i] == sd3_f32_to_f16(src[i]));
        CHECK(bf[i] == sd3_f32_to_bf16(src[i]));
        CHECK(e[i] == sd3_f32_to_f8e4m3(src[i]));
    }
    sd3_dtype_to_f32(SD3_F16, h, back, 5);
    CHECK(back[0] == 1.0f && signbit(back[1]) && isinf(back[2]));
    int32_t iv[2] = {-7, 1 << 24};
    sd3_dtype_to_f32(SD3_I32, iv, back, 2);
    CHECK(back[0] == -7.0f && back[1] == 16777216.0f);
    sd3_dtype_t dt;
    CHECK(sd3_dtype_from_name("F8_E4M3", &dt) == 0 && dt == SD3_F8_E4M3);
    CHECK(sd3_dtype_from_name("BF16", &dt) == 0 && dt == SD3_BF16);
    CHECK(sd3_dtype_from_name("F4", &dt) == -1);
    CHECK(sd3_dtype_size(SD3_F8_E4M3) == 1 && sd3_dtype_size(SD3_BF16) == 2);
    CHECK(sd3_dtype_size(SD3_DTYPE_COUNT) == 0);
}

// The array forms on data at odd addresses (a safetensors view whose header length is no
// multiple of 8): same values as on aligned data, and no misaligned access (UBSan aborts on
// one in the sanitizer build).
static void
s_unaligned(void)
{
    static const sd3_dtype_t types[] = {SD3_F16, SD3_BF16, SD3_I32, SD3_I64, SD3_F64};
    float src[7] = {1.0f, -2.5f, 3.0e-3f, 448.0f, -0.0f, 65504.0f, 7.0f};
    _Alignas(16) uint8_t aligned[64], shifted[64 + 8];
    float a[7], b[7];
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        size_t es = sd3_dtype_size(types[t]);
        if (types[t] == SD3_I32 || types[t] == SD3_I64) {
            // integer sources: write by value, then widen
            for (int i = 0; i < 7; i++) {
                int64_t v = (int64_t)(src[i] * 2);
                if (es == 4) {
                    int32_t v32 = (int32_t)v;
                    memcpy(aligned + 4 * i, &v32, 4);
                } else {
                    memcpy(aligned + 8 * i, &v, 8);
                }
            }
        } else {
            sd3_dtype_from_f32(types[t], src, aligned, 7);
        }
        for (size_t off = 1; off < 8; off += 2) {
            memset(shifted, 0xa5, sizeof shifted);
            if (types[t] != SD3_I32 && types[t] != SD3_I64) {
                sd3_dtype_from_f32(types[t], src, shifted + off, 7); // unaligned store
                CHECK_MSG(!memcmp(shifted + off, aligned, 7 * es),
                          "%s stored at offset %zu differs", sd3_dtype_name(types[t]), off);
            } else {
                memcpy(shifted + off, aligned, 7 * es);
            }
            sd3_dtype_to_f32(types[t], aligned, a, 7);
            sd3_dtype_to_f32(types[t], shifted + off, b, 7); // unaligned load
            CHECK_MSG(!memcmp(a, b, sizeof a), "%s read at offset %zu differs",
                      sd3_dtype_name(types[t]), off);
        }
    }
}

int
main(void)
{
    s_f16();
    s_bf16();
    s_f8();
    s_arrays();
    s_unaligned();
    return TEST_RESULT();
}
