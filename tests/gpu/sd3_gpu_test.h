/*  sd3_gpu_test - what every tests/gpu/test_<op>.c shares: backends, inputs, comparison
 *
 *  A GPU test runs the CPU backend (the reference) and the CUDA backend on the same inputs
 *  and compares. Inputs are random from a fixed seed and rounded to bf16 on the host first,
 *  so both backends start from identical values and a difference is the kernel's own
 *  (internal roundings and the bf16 output), never the upload's. CUDA outputs are set to NaN
 *  before the launch, so an element the kernel forgot shows up as a failure.
 *  Exit codes: 0 pass, 1 fail, 77 skip (no CUDA device: the test says so and skips).  */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "sd3_backend.h"
#include "sd3_test.h"

typedef struct {
    sd3_backend_t *cpu;
    sd3_backend_t *cuda;
    unsigned long long seed;
} sd3_gpu_test_t;

// Creates both backends. Returns 0, or 77 (no CUDA device: message printed) or 1 (a backend
// failed to start: message printed). `name` labels the messages.
int sd3_gpu_test_setup(sd3_gpu_test_t *self, const char *name);
void sd3_gpu_test_teardown(sd3_gpu_test_t *self);

// Host f32 tensor of random values in [-scale, scale), each rounded to bf16. Never NULL
// (exits 1 when out of memory: a test, not a library).
sd3_tensor_t *sd3_gpu_test_rand(sd3_gpu_test_t *self, int ndim, const int64_t *shape, float scale);
// Host f32 tensor of the same shape, all `value`.
sd3_tensor_t *sd3_gpu_test_const(int ndim, const int64_t *shape, float value);
// New CUDA tensor of `dtype` holding host f32 `src` (uploaded, converted). Exits 1 on failure.
sd3_tensor_t *sd3_gpu_test_dev(sd3_gpu_test_t *self, const sd3_tensor_t *src, sd3_dtype_t dtype);
// New CUDA tensor of `dtype` filled with NaN (through upload, not through the fill op).
sd3_tensor_t *sd3_gpu_test_dev_nan(sd3_gpu_test_t *self, sd3_dtype_t dtype, int ndim,
                                   const int64_t *shape);
// New host f32 tensor holding CUDA tensor `dev` (downloaded, widened). Exits 1 on failure.
sd3_tensor_t *sd3_gpu_test_host(sd3_gpu_test_t *self, const sd3_tensor_t *dev);
// Frees a CUDA tensor (NULL ok).
void sd3_gpu_test_free(sd3_gpu_test_t *self, sd3_tensor_t **t_p);

// Compares `got` with `ref` (host f32, same numel). Passes when no element is NaN where ref
// is not, every |got - ref| <= atol_rms * rms(ref) + rtol * |ref| + 1e-7, and the normalised
// squared error sum (got-ref)^2 / sum ref^2 <= max_nmse. Prints one line with the worst
// element; counts a failure (sd3_test_failures) and returns 1 when it fails.
int sd3_gpu_test_compare(const char *what, const sd3_tensor_t *got, const sd3_tensor_t *ref,
                         double atol_rms, double rtol, double max_nmse);
// Bit-exact comparison of two host tensors of the same size (determinism, copies).
int sd3_gpu_test_same_bits(const char *what, const sd3_tensor_t *a, const sd3_tensor_t *b);

// Checks an op's return code: prints the error and counts a failure when rc != 0.
int sd3_gpu_test_ok(const char *what, int rc, const sd3_err_t *err);

// Per-dtype tolerances shared by the tests (why: see sd3_gpu_test.c).
#define SD3_GT_BF16_ULP   (1.0 / 256.0)  // one bf16 unit in the last place, relative (2^-8)
#define SD3_GT_NMSE_ELT   1e-5           // elementwise and norm ops, bf16 output rounding
#define SD3_GT_NMSE_GEMM  2e-5           // products: output rounding + fp32 order of sums
#define SD3_GT_NMSE_ATTN  5e-5           // attention: P rounded to bf16 before P V as well
