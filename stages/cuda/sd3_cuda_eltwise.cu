/*  sd3_cuda_eltwise - elementwise and row ops on the device
 *
 *  act, softmax, add (same shape or a [D] row broadcast), adaLN modulate and gated residual
 *  (mod [B, n*C], chunk i = columns [i*C, (i+1)*C)), nearest 2x upsample, copy2d, fill, and
 *  two helpers (bias per column, dtype conversion). Memory bound: grid-stride loops, fp32
 *  math, one thread per element, so results do not depend on the launch shape. Each tensor
 *  may be f32, f16 or bf16 (read through sd3_cuda_ld/st).  */
#include "sd3_cuda.h"

#define S_THREADS 256

static unsigned
s_blocks(const sd3_cuda_t *cu, int64_t n)
{
    int64_t b = (n + S_THREADS - 1) / S_THREADS, cap = (int64_t)cu->n_sm * 16;
    if (b > cap)
        b = cap;
    return (unsigned)(b > 0 ? b : 1);
}

// ---- act -----------------------------------------------------------------------------------

static __device__ __forceinline__ float
s_act1(int kind, float x)
{
    switch (kind) {
    case SD3_ACT_SILU:
        return x / (1.0f + expf(-x));
    case SD3_ACT_GELU_TANH: // sqrt(2/pi)
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case SD3_ACT_GELU_ERF: // 1/sqrt(2)
        return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    default: // SD3_ACT_QUICK_GELU
        return x / (1.0f + expf(-1.702f * x));
    }
}

static __global__ void
k_act(void *y, int ydt, const void *x, int xdt, int64_t n, int kind)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        sd3_cuda_st(y, ydt, i, s_act1(kind, sd3_cuda_ld(x, xdt, i)));
}

int
sd3_cuda_act(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind,
             sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t n;
    if (sd3_cuda_check(x, "act", "x", err) || sd3_cuda_check(y, "act", "y", err) ||
        sd3_cuda_check_same(x, y, "act", "y", err))
        return SD3_EINVAL;
    if ((unsigned)kind > SD3_ACT_QUICK_GELU)
        return sd3_err_set(err, SD3_EINVAL, "cuda act: unknown activation %d", (int)kind);
    n = sd3_tensor_numel(x);
    if (n == 0)
        return 0;
    k_act<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(y->data, y->dtype, x->data, x->dtype, n,
                                                         (int)kind);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- block reductions (fixed tree: the same bits for the same inputs) ------------------------

static __device__ __forceinline__ float
s_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float
s_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or max) over the block; every thread gets the result. `red` holds 32 floats.
static __device__ float
s_block_reduce(float v, float *red, bool is_max)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = is_max ? s_warp_max(v) : s_warp_sum(v);
    __syncthreads(); // red may still be read from a previous call
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : (is_max ? -INFINITY : 0.0f);
    v = is_max ? s_warp_max(v) : s_warp_sum(v);
    return v;
}

// ---- softmax: one block per row, three passes over the row -----------------------------------

static __global__ void
k_softmax(void *y, int ydt, const void *x, int xdt, int64_t D)
{
    __shared__ float red[32];
    int64_t base = (int64_t)blockIdx.x * D;
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        mx = fmaxf(mx, sd3_cuda_ld(x, xdt, base + i));
    mx = s_block_reduce(mx, red, true);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
        sum += mx == -INFINITY ? 0.0f : expf(sd3_cuda_ld(x, xdt, base + i) - mx);
    sum = s_block_reduce(sum, red, false);
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f; // an all -inf row gives zeros
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float e = mx == -INFINITY ? 0.0f : expf(sd3_cuda_ld(x, xdt, base + i) - mx);
        sd3_cuda_st(y, ydt, base + i, e * inv);
    }
}

int
sd3_cuda_softmax(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t rows, D;
    int threads;
    if (sd3_cuda_check(x, "softmax", "x", err) || sd3_cuda_check(y, "softmax", "y", err) ||
        sd3_cuda_check_same(x, y, "softmax", "y", err))
        return SD3_EINVAL;
    rows = sd3_tensor_rows(x);
    D = sd3_tensor_cols(x);
    if (rows == 0 || D == 0)
        return 0;
    if (rows > 0x7fffffff)
        return sd3_err_set(err, SD3_EINVAL, "cuda softmax: %lld rows (max 2^31-1)",
                           (long long)rows);
    threads = D >= 1024 ? 1024 : (int)((D + 31) / 32 * 32);
    k_softmax<<<(unsigned)rows, threads, 0, cu->stream>>>(y->data, y->dtype, x->data, x->dtype, D);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- add -------------------------------------------------------------------------------------

static __global__ void
k_add(void *y, int ydt, const void *a, int adt, const void *b, int bdt, int64_t n, int64_t D)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        sd3_cuda_st(y, ydt, i, sd3_cuda_ld(a, adt, i) + sd3_cuda_ld(b, bdt, D > 0 ? i % D : i));
}

int
sd3_cuda_add(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *a, const sd3_tensor_t *b,
             sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    char sa[96], sb[96];
    int64_t n, D = 0;
    bool same;
    if (sd3_cuda_check(a, "add", "a", err) || sd3_cuda_check(b, "add", "b", err) ||
        sd3_cuda_check(y, "add", "y", err) || sd3_cuda_check_same(a, y, "add", "y", err))
        return SD3_EINVAL;
    same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (!same) {
        if (b->ndim != 1 || b->shape[0] != sd3_tensor_cols(a))
            return sd3_err_set(err, SD3_EINVAL,
                               "cuda add: a %s and b %s: want equal shapes or b [D] with a "
                               "[..., D]",
                               sd3_shape_str(a->ndim, a->shape, sa, sizeof sa),
                               sd3_shape_str(b->ndim, b->shape, sb, sizeof sb));
        D = b->shape[0];
        if (D == 0)
            return 0;
    }
    n = sd3_tensor_numel(a);
    if (n == 0)
        return 0;
    k_add<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(y->data, y->dtype, a->data, a->dtype,
                                                         b->data, b->dtype, n, D);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- modulate, gate_add ----------------------------------------------------------------------

typedef sd3_mod_dims_t s_mod_dims_t; // by value into the kernels

// x [B, T, C] (or [B, C]: T = 1) against mod [B, n*C] and two chunk indices.
static int
s_mod_check(const char *op, const sd3_tensor_t *x, const sd3_tensor_t *mod, int c1, int c2,
            s_mod_dims_t *d, sd3_err_t *err)
{
    if (sd3_cuda_check(mod, op, "mod", err))
        return SD3_EINVAL;
    return sd3_backend_check_mod("cuda", op, x, mod, c1, c2, d, err);
}

// y = x * (1 + mod[b, scale]) + mod[b, shift]   (same formula and order as the CPU)
static __global__ void
k_modulate(void *y, int ydt, const void *x, int xdt, const void *mod, int mdt, s_mod_dims_t d,
           int shift_chunk, int scale_chunk)
{
    int64_t n = d.B * d.T * d.C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % d.C, b = i / (d.T * d.C), m = b * d.mod_cols + c;
        float scale = sd3_cuda_ld(mod, mdt, m + scale_chunk * d.C);
        float shift = sd3_cuda_ld(mod, mdt, m + shift_chunk * d.C);
        float v = __fmul_rn(sd3_cuda_ld(x, xdt, i), __fadd_rn(1.0f, scale));
        sd3_cuda_st(y, ydt, i, __fadd_rn(v, shift));
    }
}

int
sd3_cuda_modulate(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                  const sd3_tensor_t *mod, int shift_chunk, int scale_chunk, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    s_mod_dims_t d;
    int64_t n;
    if (sd3_cuda_check(x, "modulate", "x", err) || sd3_cuda_check(y, "modulate", "y", err) ||
        sd3_cuda_check_same(x, y, "modulate", "y", err) ||
        s_mod_check("modulate", x, mod, shift_chunk, scale_chunk, &d, err))
        return SD3_EINVAL;
    n = d.B * d.T * d.C;
    if (n == 0)
        return 0;
    k_modulate<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(
        y->data, y->dtype, x->data, x->dtype, mod->data, mod->dtype, d, shift_chunk, scale_chunk);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// x += mod[b, gate] * y
static __global__ void
k_gate_add(void *x, int xdt, const void *y, int ydt, const void *mod, int mdt, s_mod_dims_t d,
           int gate_chunk)
{
    int64_t n = d.B * d.T * d.C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % d.C, b = i / (d.T * d.C);
        float g = sd3_cuda_ld(mod, mdt, b * d.mod_cols + gate_chunk * d.C + c);
        float v = __fmul_rn(g, sd3_cuda_ld(y, ydt, i));
        sd3_cuda_st(x, xdt, i, __fadd_rn(sd3_cuda_ld(x, xdt, i), v));
    }
}

int
sd3_cuda_gate_add(sd3_backend_t *be, sd3_tensor_t *x, const sd3_tensor_t *y,
                  const sd3_tensor_t *mod, int gate_chunk, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    s_mod_dims_t d;
    int64_t n;
    if (sd3_cuda_check(x, "gate_add", "x", err) || sd3_cuda_check(y, "gate_add", "y", err) ||
        sd3_cuda_check_same(x, y, "gate_add", "y", err) ||
        s_mod_check("gate_add", x, mod, gate_chunk, gate_chunk, &d, err))
        return SD3_EINVAL;
    n = d.B * d.T * d.C;
    if (n == 0)
        return 0;
    k_gate_add<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(
        x->data, x->dtype, y->data, y->dtype, mod->data, mod->dtype, d, gate_chunk);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- upsample2x: y[b, c, i, j] = x[b, c, i/2, j/2] -----------------------------------------------

static __global__ void
k_upsample2x(void *y, int ydt, const void *x, int xdt, int64_t BC, int64_t H, int64_t W)
{
    int64_t n = BC * 4 * H * W;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i % (2 * W), r = (i / (2 * W)) % (2 * H), p = i / (4 * H * W);
        sd3_cuda_st(y, ydt, i, sd3_cuda_ld(x, xdt, (p * H + r / 2) * W + j / 2));
    }
}

int
sd3_cuda_upsample2x(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t n;
    if (sd3_cuda_check(x, "upsample2x", "x", err) || sd3_cuda_check(y, "upsample2x", "y", err) ||
        sd3_backend_check_upsample2x("cuda", y, x, err))
        return SD3_EINVAL;
    n = sd3_tensor_numel(y);
    if (n == 0)
        return 0;
    k_upsample2x<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(
        y->data, y->dtype, x->data, x->dtype, x->shape[0] * x->shape[1], x->shape[2],
        x->shape[3]);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- copy2d --------------------------------------------------------------------------------------

typedef struct {
    int64_t B, n_rows, n_cols;
    int64_t d_rows, d_cols, d_row, d_col; // destination [B, d_rows, d_cols], block origin
    int64_t s_rows, s_cols, s_row, s_col;
} s_copy_dims_t;

static __global__ void
k_copy2d(void *dst, int ddt, const void *src, int sdt, s_copy_dims_t d)
{
    int64_t n = d.B * d.n_rows * d.n_cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t c = i % d.n_cols, r = (i / d.n_cols) % d.n_rows, b = i / (d.n_cols * d.n_rows);
        float v = sd3_cuda_ld(src, sdt, (b * d.s_rows + d.s_row + r) * d.s_cols + d.s_col + c);
        sd3_cuda_st(dst, ddt, (b * d.d_rows + d.d_row + r) * d.d_cols + d.d_col + c, v);
    }
}

int
sd3_cuda_copy2d(sd3_backend_t *be, sd3_tensor_t *dst, int64_t dst_row, int64_t dst_col,
                const sd3_tensor_t *src, int64_t src_row, int64_t src_col, int64_t n_rows,
                int64_t n_cols, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t d[3], s[3], n;
    s_copy_dims_t cd;
    const void *from;
    int from_dt;
    if (sd3_cuda_check(dst, "copy2d", "dst", err) || sd3_cuda_check(src, "copy2d", "src", err))
        return SD3_EINVAL;
    if (sd3_backend_check_copy2d("cuda", dst, dst_row, dst_col, src, src_row, src_col, n_rows,
                                 n_cols, d, s, err))
        return SD3_EINVAL;
    n = d[0] * n_rows * n_cols;
    if (n == 0)
        return 0;
    cd = {d[0], n_rows, n_cols, d[1], d[2], dst_row, dst_col, s[1], s[2], src_row, src_col};
    from = src->data;
    from_dt = src->dtype;
    if (src->data == dst->data) {
        // same buffer (a shift inside one tensor): the CPU memmoves; here the block goes
        // through scratch first so no thread reads what another already overwrote
        void *tmp = sd3_cuda_scratch(cu, (size_t)n * sd3_dtype_size(src->dtype), err);
        s_copy_dims_t td = {d[0], n_rows, n_cols, n_rows, n_cols, 0, 0, s[1], s[2], src_row,
                            src_col};
        if (!tmp)
            return err ? err->code : SD3_EDEVICE;
        k_copy2d<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(tmp, src->dtype, src->data,
                                                                src->dtype, td);
        SD3_CUDA_LAUNCHED(err);
        from = tmp;
        cd.s_rows = n_rows, cd.s_cols = n_cols, cd.s_row = 0, cd.s_col = 0;
    }
    k_copy2d<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(dst->data, dst->dtype, from, from_dt,
                                                            cd);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

// ---- fill, bias, convert ---------------------------------------------------------------------------

static __global__ void
k_fill(void *t, int dt, int64_t n, float value)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        sd3_cuda_st(t, dt, i, value);
}

int
sd3_cuda_fill(sd3_backend_t *be, sd3_tensor_t *t, float value, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    int64_t n;
    if (sd3_cuda_check(t, "fill", "t", err))
        return SD3_EINVAL;
    n = sd3_tensor_numel(t);
    if (n == 0)
        return 0;
    k_fill<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(t->data, t->dtype, n, value);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

static __global__ void
k_bias_rows(void *y, int ydt, const void *bias, int bdt, int64_t rows, int64_t cols)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        sd3_cuda_st(y, ydt, i, sd3_cuda_ld(y, ydt, i) + sd3_cuda_ld(bias, bdt, i % cols));
}

int
sd3_cuda_bias_rows(sd3_cuda_t *cu, void *y, int y_dtype, const void *bias, int bias_dtype,
                   int64_t rows, int64_t cols, sd3_err_t *err)
{
    if (rows * cols == 0)
        return 0;
    k_bias_rows<<<s_blocks(cu, rows * cols), S_THREADS, 0, cu->stream>>>(y, y_dtype, bias,
                                                                         bias_dtype, rows, cols);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

static __global__ void
k_convert(void *dst, int ddt, const void *src, int sdt, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        sd3_cuda_st(dst, ddt, i, sd3_cuda_ld(src, sdt, i));
}

int
sd3_cuda_convert(sd3_cuda_t *cu, void *dst, int dst_dtype, const void *src, int src_dtype,
                 int64_t n, sd3_err_t *err)
{
    if (n == 0)
        return 0;
    k_convert<<<s_blocks(cu, n), S_THREADS, 0, cu->stream>>>(dst, dst_dtype, src, src_dtype, n);
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}
