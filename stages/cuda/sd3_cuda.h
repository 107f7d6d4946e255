/*  sd3_cuda - internals of the CUDA backend, shared by its .cu files, its tests and benchmarks
 *
 *  The CUDA backend (sd3_cuda_backend.cu) fills the op table of sd3_backend.h. Activations are
 *  bf16 on the device (`act_dtype` SD3_BF16), every reduction and matrix product accumulates
 *  in fp32. Weights go through `weight()` once: uploaded as bf16 (f32, f16, bf16 and f8 e4m3
 *  storage are accepted; f8 widens exactly, f16 rounds to bf16) and cached by host pointer
 *  (checked against dtype and shape) until the backend is destroyed: the host tensor must
 *  stay where it is meanwhile (weights are views into the mmap of sd3_weights_t, which
 *  outlives the backend). The returned tensors belong to the backend: never tensor_free them.
 *
 *  Memory: tensors come from a caching allocator (freed blocks are kept and reused, so the
 *  step loop does no cudaMalloc after its first step); everything runs on one stream per
 *  backend, in order. download() synchronises; sd3_cuda_sync() waits for the stream.
 *
 *  Determinism: every output element is written by one thread or one warp/block with a fixed
 *  order of operations (no float atomics); cuBLASLt is asked for algorithms without in-place
 *  split-K reduction and the chosen algorithm is cached per shape, so the bits repeat.
 *
 *  This header is plain C (tests include it); CUDA types appear only under __CUDACC__.
 *  Never abort: every CUDA call goes through SD3_CUDA_TRY, which records SD3_EDEVICE.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __CUDACC__
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#ifdef __cplusplus
extern "C" { // the project's headers are C and carry no guards of their own
#endif
#include "sd3_backend.h"

// The registry's constructor (also declared in sd3_backend.h, but only where SD3_HAVE_CUDA
// is defined, which libsd3cuda itself is not): device 0.., NULL + SD3_EDEVICE when there is
// no usable device.
sd3_backend_t *sd3_cuda_backend_new(int device, sd3_err_t *err);

// Number of CUDA devices usable by this process; 0 when there is no driver, no device or
// the runtime fails (never an error: tests use it to skip).
int sd3_cuda_device_count(void);
// Waits for every op queued on the backend's stream; reports an error a kernel raised.
int sd3_cuda_sync(sd3_backend_t *be, sd3_err_t *err);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)": owned by the backend.
const char *sd3_cuda_device_name(sd3_backend_t *be);

// ---- below: for the backend's own .cu files -------------------------------------------------
#ifdef __CUDACC__

// Runs a CUDA runtime call; on failure records SD3_EDEVICE with the call text, file:line and
// CUDA's error string, then jumps to the caller's `fail:` label.
#define SD3_CUDA_TRY(expr, err)                                                             \
    do {                                                                                    \
        cudaError_t s_cuda_rc_ = (expr);                                                    \
        if (s_cuda_rc_ != cudaSuccess) {                                                    \
            sd3_err_set((err), SD3_EDEVICE, "%s failed at %s:%d: %s (%s)", #expr, __FILE__, \
                        __LINE__, cudaGetErrorString(s_cuda_rc_),                           \
                        cudaGetErrorName(s_cuda_rc_));                                      \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

// The same for cuBLAS / cuBLASLt calls (their status type and strings).
#define SD3_CUBLAS_TRY(expr, err)                                                           \
    do {                                                                                    \
        cublasStatus_t s_cublas_rc_ = (expr);                                               \
        if (s_cublas_rc_ != CUBLAS_STATUS_SUCCESS) {                                        \
            sd3_err_set((err), SD3_EDEVICE, "%s failed at %s:%d: %s", #expr, __FILE__,       \
                        __LINE__, cublasGetStatusString(s_cublas_rc_));                     \
            goto fail;                                                                      \
        }                                                                                   \
    } while (0)

// After a kernel launch: a bad configuration shows up here, a fault at the next sync.
#define SD3_CUDA_LAUNCHED(err) SD3_CUDA_TRY(cudaGetLastError(), err)

// One cached algorithm of a cuBLASLt product (shape key -> algo), see sd3_cuda_linear.cu.
typedef struct sd3_cuda_gemm_plan sd3_cuda_gemm_plan_t;

// The backend's private state (be->impl).
typedef struct sd3_cuda {
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace; // cuBLASLt workspace
    size_t workspace_size;
    struct sd3_cuda_block *free_blocks; // caching allocator: freed device blocks
    size_t cached_bytes;
    struct sd3_cuda_weight *weights;    // weight cache: host pointer -> device copy
    sd3_cuda_gemm_plan_t *plans;        // cuBLASLt algorithms by shape
    void *scratch;                      // conv2d im2col and other temporaries
    size_t scratch_size;
    int n_sm;
    int cc_major, cc_minor;
    char name[160];
} sd3_cuda_t;

// Scratch device memory of at least `bytes` (grown on demand, kept until destroy). NULL + err.
void *sd3_cuda_scratch(sd3_cuda_t *cu, size_t bytes, sd3_err_t *err);
void sd3_cuda_gemm_plans_free(sd3_cuda_t *cu);

// ---- argument checks (sd3_cuda_backend.cu) -------------------------------------------------
// A device tensor of a float dtype (f32, f16, bf16); names op and role in the error.
int sd3_cuda_check(const sd3_tensor_t *t, const char *op, const char *what, sd3_err_t *err);
// Same dims and sizes.
int sd3_cuda_check_same(const sd3_tensor_t *a, const sd3_tensor_t *b, const char *op,
                        const char *what, sd3_err_t *err);
// An optional 1-D device vector of n elements (NULL ok).
int sd3_cuda_check_vec(const sd3_tensor_t *v, int64_t n, const char *op, const char *what,
                       sd3_err_t *err);

// ---- element access in kernels: any of f32 / f16 / bf16, chosen per tensor at run time ---
// The branch is uniform across a launch, so it costs a few instructions, not divergence.
static __device__ __forceinline__ float
sd3_cuda_ld(const void *p, int dtype, int64_t i)
{
    if (dtype == SD3_BF16)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dtype == SD3_F32)
        return ((const float *)p)[i];
    return __half2float(((const __half *)p)[i]);
}

static __device__ __forceinline__ void
sd3_cuda_st(void *p, int dtype, int64_t i, float v)
{
    if (dtype == SD3_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (dtype == SD3_F32)
        ((float *)p)[i] = v;
    else
        ((__half *)p)[i] = __float2half_rn(v);
}

// ---- ops (each in sd3_cuda_<op>.cu) ---------------------------------------------------------
int sd3_cuda_linear(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                    const sd3_tensor_t *w, const sd3_tensor_t *b, sd3_err_t *err);
// Row-major C[M, N] (ldc) = A[M, K] (lda) B[K, N] (ldb) (+ C when accumulate), all bf16,
// fp32 accumulation. For conv2d.
int sd3_cuda_gemm_rowmajor(sd3_cuda_t *cu, int64_t M, int64_t N, int64_t K, const void *A,
                           int64_t lda, const void *B, int64_t ldb, void *C, int64_t ldc,
                           bool accumulate, sd3_err_t *err);
int sd3_cuda_layernorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                       const sd3_tensor_t *w, const sd3_tensor_t *b, float eps, sd3_err_t *err);
int sd3_cuda_rmsnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                     const sd3_tensor_t *w, float eps, sd3_err_t *err);
int sd3_cuda_groupnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                       const sd3_tensor_t *w, const sd3_tensor_t *b, int groups, float eps,
                       sd3_err_t *err);
int sd3_cuda_act(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind,
                 sd3_err_t *err);
int sd3_cuda_softmax(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err);
int sd3_cuda_add(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *a, const sd3_tensor_t *b,
                 sd3_err_t *err);
int sd3_cuda_modulate(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                      const sd3_tensor_t *mod, int shift_chunk, int scale_chunk, sd3_err_t *err);
int sd3_cuda_gate_add(sd3_backend_t *be, sd3_tensor_t *x, const sd3_tensor_t *y,
                      const sd3_tensor_t *mod, int gate_chunk, sd3_err_t *err);
int sd3_cuda_attention(sd3_backend_t *be, sd3_tensor_t *o, const sd3_tensor_t *q,
                       const sd3_tensor_t *k, const sd3_tensor_t *v, const sd3_attn_opts_t *opts,
                       sd3_err_t *err);
int sd3_cuda_conv2d(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                    const sd3_tensor_t *w, const sd3_tensor_t *b, const sd3_conv_opts_t *opts,
                    sd3_err_t *err);
int sd3_cuda_upsample2x(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                        sd3_err_t *err);
int sd3_cuda_copy2d(sd3_backend_t *be, sd3_tensor_t *dst, int64_t dst_row, int64_t dst_col,
                    const sd3_tensor_t *src, int64_t src_row, int64_t src_col, int64_t n_rows,
                    int64_t n_cols, sd3_err_t *err);
int sd3_cuda_fill(sd3_backend_t *be, sd3_tensor_t *t, float value, sd3_err_t *err);
// y[r, c] += bias[c] for a row-major [rows, cols] tensor (linear with a non-bf16 bias).
int sd3_cuda_bias_rows(sd3_cuda_t *cu, void *y, int y_dtype, const void *bias, int bias_dtype,
                       int64_t rows, int64_t cols, sd3_err_t *err);
// Elementwise dtype conversion on the device (n elements).
int sd3_cuda_convert(sd3_cuda_t *cu, void *dst, int dst_dtype, const void *src, int src_dtype,
                     int64_t n, sd3_err_t *err);
#endif // __CUDACC__

#ifdef __cplusplus
}
#endif
