/*  sd3_cuda_norm - LayerNorm, RMSNorm and GroupNorm on the device
 *
 *  Same formulas as stages/cpu/sd3_cpu_norm.c (MODEL.md §4.5; biased variance, two passes:
 *  mean first, then the mean of squared deviations). LayerNorm and RMSNorm: one warp per row
 *  (rows of D = 64 for QK norm, 1536..4096 for the hidden states), fp32 sums with a fixed
 *  shuffle tree. GroupNorm: a (batch, group) holds (C/G)*H*W contiguous values, up to
 *  millions in the VAE, so each is cut into fixed chunks: one block per chunk writes a partial
 *  sum in double to scratch, and every later block combines the partials of its group in
 *  the same order. No atomics: the same inputs give the same bits. In place ok (y == x).  */
#include "sd3_cuda.h"

#define S_ROWS_PER_BLOCK 8 // warps per block, one row each
#define S_GN_THREADS     256
#define S_GN_CHUNK       16384 // values of one group per block

static __device__ __forceinline__ float
s_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// mode 0: layernorm, 1: rmsnorm.
static __global__ void
k_rownorm(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, const void *b,
          int bdt, int64_t rows, int64_t D, float eps, int mode)
{
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * S_ROWS_PER_BLOCK + (threadIdx.x >> 5);
    if (row >= rows)
        return;
    int64_t base = row * D;
    float mean = 0.0f, sq = 0.0f;
    if (mode == 0) {
        float sum = 0.0f;
        for (int64_t i = lane; i < D; i += 32)
            sum += sd3_cuda_ld(x, xdt, base + i);
        mean = s_warp_sum(sum) / (float)D;
        for (int64_t i = lane; i < D; i += 32) {
            float d = sd3_cuda_ld(x, xdt, base + i) - mean;
            sq += d * d;
        }
    } else {
        for (int64_t i = lane; i < D; i += 32) {
            float v = sd3_cuda_ld(x, xdt, base + i);
            sq += v * v;
        }
    }
    float rstd = rsqrtf(s_warp_sum(sq) / (float)D + eps);
    for (int64_t i = lane; i < D; i += 32) {
        float v = (sd3_cuda_ld(x, xdt, base + i) - mean) * rstd;
        if (w)
            v = v * sd3_cuda_ld(w, wdt, i);
        if (b)
            v = v + sd3_cuda_ld(b, bdt, i);
        sd3_cuda_st(y, ydt, base + i, v);
    }
}

static int
s_rownorm(sd3_backend_t *be, const char *op, sd3_tensor_t *y, const sd3_tensor_t *x,
          const sd3_tensor_t *w, const sd3_tensor_t *b, float eps, int mode, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t rows, D, blocks;
    if (sd3_cuda_check(x, op, "x", err) || sd3_cuda_check(y, op, "y", err) ||
        sd3_cuda_check_same(x, y, op, "y", err))
        return SD3_EINVAL;
    D = sd3_tensor_cols(x);
    rows = sd3_tensor_rows(x);
    if (sd3_cuda_check_vec(w, D, op, "weight", err) || sd3_cuda_check_vec(b, D, op, "bias", err))
        return SD3_EINVAL;
    if (!(eps >= 0.0f))
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: eps %g, want >= 0", op, (double)eps);
    if (rows == 0 || D == 0)
        return 0;
    blocks = (rows + S_ROWS_PER_BLOCK - 1) / S_ROWS_PER_BLOCK;
    if (blocks > 0x7fffffff)
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: %lld rows is too many", op,
                           (long long)rows);
    k_rownorm<<<(unsigned)blocks, 32 * S_ROWS_PER_BLOCK, 0, cu->stream>>>(
        y->data, y->dtype, x->data, x->dtype, w ? w->data : NULL, w ? w->dtype : 0,
        b ? b->data : NULL, b ? b->dtype : 0, rows, D, eps, mode);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

int
sd3_cuda_layernorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                   const sd3_tensor_t *w, const sd3_tensor_t *b, float eps, sd3_err_t *err)
{
    return s_rownorm(be, "layernorm", y, x, w, b, eps, 0, err);
}

int
sd3_cuda_rmsnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                 const sd3_tensor_t *w, float eps, sd3_err_t *err)
{
    return s_rownorm(be, "rmsnorm", y, x, w, NULL, eps, 1, err);
}

// ---- groupnorm -------------------------------------------------------------------------------

static __device__ double
s_block_sum_d(double v, double *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    double s = 0.0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) // the same order in every block
        s += red[i];
    return s;
}

// Mean and (pass 2) biased variance of group `bg`, combined from its partials in order.
static __device__ void
s_gn_stats(const double *part, int64_t bg, int64_t n_chunks, int64_t count, int have_var,
           float *mean, float *var)
{
    double s = 0.0, q = 0.0;
    for (int64_t c = 0; c < n_chunks; c++) {
        s += part[(bg * n_chunks + c) * 2];
        if (have_var)
            q += part[(bg * n_chunks + c) * 2 + 1];
    }
    *mean = (float)(s / (double)count);
    *var = have_var ? (float)(q / (double)count) : 0.0f;
}

// pass 0: part[.., 0] = sum x over the chunk; pass 1: part[.., 1] = sum (x - mean)^2.
static __global__ void
k_gn_partial(double *part, const void *x, int xdt, int64_t count, int64_t n_chunks, int pass)
{
    __shared__ double red[S_GN_THREADS / 32];
    int64_t bg = blockIdx.x / n_chunks, chunk = blockIdx.x % n_chunks;
    int64_t i0 = chunk * S_GN_CHUNK, i1 = i0 + S_GN_CHUNK < count ? i0 + S_GN_CHUNK : count;
    const int64_t base = bg * count;
    float mean = 0.0f, unused;
    double acc = 0.0;
    if (pass == 1)
        s_gn_stats(part, bg, n_chunks, count, 0, &mean, &unused);
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        double v = (double)sd3_cuda_ld(x, xdt, base + i);
        if (pass == 1) {
            v -= (double)mean;
            v *= v;
        }
        acc += v;
    }
    acc = s_block_sum_d(acc, red);
    if (threadIdx.x == 0)
        part[blockIdx.x * 2 + pass] = acc;
}

static __global__ void
k_gn_apply(void *y, int ydt, const void *x, int xdt, const void *w, int wdt, const void *b,
           int bdt, const double *part, int64_t count, int64_t n_chunks, int64_t HW,
           int64_t cpg, int64_t C, float eps)
{
    int64_t bg = blockIdx.x / n_chunks, chunk = blockIdx.x % n_chunks;
    int64_t i0 = chunk * S_GN_CHUNK, i1 = i0 + S_GN_CHUNK < count ? i0 + S_GN_CHUNK : count;
    const int64_t base = bg * count, g = bg % (C / cpg);
    float mean, var;
    s_gn_stats(part, bg, n_chunks, count, 1, &mean, &var);
    float rstd = (float)(1.0 / sqrt((double)var + (double)eps));
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        int64_t c = g * cpg + i / HW;
        float v = (sd3_cuda_ld(x, xdt, base + i) - mean) * rstd;
        if (w)
            v = v * sd3_cuda_ld(w, wdt, c);
        if (b)
            v = v + sd3_cuda_ld(b, bdt, c);
        sd3_cuda_st(y, ydt, base + i, v);
    }
}

int
sd3_cuda_groupnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                   const sd3_tensor_t *w, const sd3_tensor_t *b, int groups, float eps,
                   sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    char sx[96];
    int64_t B, C, HW, cpg, count, n_chunks, blocks;
    double *part;
    if (sd3_cuda_check(x, "groupnorm", "x", err) || sd3_cuda_check(y, "groupnorm", "y", err) ||
        sd3_cuda_check_same(x, y, "groupnorm", "y", err))
        return SD3_EINVAL;
    if (x->ndim != 4 || groups <= 0 || x->shape[1] % groups != 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda groupnorm: x %s with %d groups: want [B, C, H, W] and C a "
                           "multiple of the groups",
                           sd3_shape_str(x->ndim, x->shape, sx, sizeof sx), groups);
    B = x->shape[0];
    C = x->shape[1];
    HW = x->shape[2] * x->shape[3];
    if (sd3_cuda_check_vec(w, C, "groupnorm", "weight", err) ||
        sd3_cuda_check_vec(b, C, "groupnorm", "bias", err))
        return SD3_EINVAL;
    if (!(eps >= 0.0f))
        return sd3_err_set(err, SD3_EINVAL, "cuda groupnorm: eps %g, want >= 0", (double)eps);
    cpg = C / groups;
    count = cpg * HW;
    if (B == 0 || count == 0)
        return 0;
    n_chunks = (count + S_GN_CHUNK - 1) / S_GN_CHUNK;
    blocks = B * groups * n_chunks;
    if (blocks > 0x7fffffff)
        return sd3_err_set(err, SD3_EINVAL, "cuda groupnorm: x %s is too large",
                           sd3_shape_str(x->ndim, x->shape, sx, sizeof sx));
    part = (double *)sd3_cuda_scratch(cu, (size_t)blocks * 2 * sizeof(double), err);
    if (!part)
        return err ? err->code : SD3_EDEVICE;
    k_gn_partial<<<(unsigned)blocks, S_GN_THREADS, 0, cu->stream>>>(part, x->data, x->dtype,
                                                                    count, n_chunks, 0);
    SD3_CUDA_LAUNCHED(err);
    k_gn_partial<<<(unsigned)blocks, S_GN_THREADS, 0, cu->stream>>>(part, x->data, x->dtype,
                                                                    count, n_chunks, 1);
    SD3_CUDA_LAUNCHED(err);
    k_gn_apply<<<(unsigned)blocks, S_GN_THREADS, 0, cu->stream>>>(
        y->data, y->dtype, x->data, x->dtype, w ? w->data : NULL, w ? w->dtype : 0,
        b ? b->data : NULL, b ? b->dtype : 0, part, count, n_chunks, HW, cpg, C, eps);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}
