/*  sd3_dtype - element types and exact conversions between them
 *
 *  f32 <-> f16 / bf16 / f8 e4m3fn conversions round to nearest, ties to even, the way IEEE
 *  754 (f16), PyTorch's bf16 convention and PyTorch's Float8_e4m3fn do:
 *  - f16: overflow to +-inf, NaN stays NaN (quiet), subnormals kept.
 *  - bf16: every NaN becomes 0x7fc0 (as c10::BFloat16); otherwise RNE on the top 16 bits.
 *  - f8 e4m3fn (no inf; S.1111.111 is NaN; largest finite 448): RNE, so (448, 464] rounds
 *    to 448 and (464, 480) rounds up to the NaN pattern; |x| >= 480, inf and NaN become
 *    NaN (0x7f | sign); subnormals kept (2^-9 steps). As PyTorch's Float8_e4m3fn.
 *  Pure functions, thread-safe, no allocation.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SD3_F32 = 0,
    SD3_F16,
    SD3_BF16,
    SD3_F8_E4M3,
    SD3_I32,
    SD3_I64,
    SD3_U8,
    SD3_F64,
    SD3_DTYPE_COUNT
} sd3_dtype_t;

size_t sd3_dtype_size(sd3_dtype_t dtype);       // bytes per element
const char *sd3_dtype_name(sd3_dtype_t dtype);  // safetensors spelling: "F32", "BF16", ...
// Parses a safetensors dtype name; returns 0 and sets *out, or -1 if unknown.
int sd3_dtype_from_name(const char *name, sd3_dtype_t *out);
bool sd3_dtype_is_float(sd3_dtype_t dtype);

uint16_t sd3_f32_to_f16(float x);
float sd3_f16_to_f32(uint16_t h);
uint16_t sd3_f32_to_bf16(float x);
float sd3_bf16_to_f32(uint16_t h);
uint8_t sd3_f32_to_f8e4m3(float x);
float sd3_f8e4m3_to_f32(uint8_t b);

// Widens n elements of a float dtype (or I32/I64/U8, converted by value) to f32. src may be
// at any address (a view into a file whose data is not aligned); dst is a float array.
void sd3_dtype_to_f32(sd3_dtype_t dtype, const void *src, float *dst, size_t n);
// Narrows n f32 values into a float dtype with the rounding above; dst may be at any address.
void sd3_dtype_from_f32(sd3_dtype_t dtype, const float *src, void *dst, size_t n);
