/*  sd3_cuda_conv2d - 2-D convolution as im2col + one cuBLASLt product per column chunk
 *
 *  x [B, Ci, H, W], w [Co, Ci, kh, kw] (bf16, from weight()), b [Co] or NULL, y [B, Co, Ho, Wo]
 *  bf16 with Ho = (H + pt + pb - kh)/s + 1 (and Wo likewise). Per image: col [Ci*kh*kw, P]
 *  (P = Ho*Wo output positions; zeros where the window hangs over the padding), then
 *  y[b] [Co, P] = w [Co, Ci*kh*kw] col. The column matrix of a VAE layer at 1024x1024 would
 *  be gigabytes, so positions go in chunks that fit a fixed scratch budget. A 1x1 stride-1
 *  unpadded conv (the VAE's shortcuts) multiplies x itself. The bias is written into y first
 *  and the product accumulates onto it (beta = 1), so the sum is rounded to bf16 once.  */
#include "sd3_cuda.h"

#define S_COL_BUDGET ((size_t)256 << 20) // bytes of im2col scratch per chunk
#define S_THREADS    256

typedef struct {
    int64_t Ci, H, W, kh, kw, Ho, Wo, stride, pt, pl;
} s_conv_dims_t;

// col[kc, j] for kc < Ci*kh*kw, j < np (positions p0 + j of image `img`).
static __global__ void
k_im2col(__nv_bfloat16 *col, const void *x, int xdt, s_conv_dims_t d, int64_t img, int64_t p0,
         int64_t np)
{
    int64_t n = d.Ci * d.kh * d.kw * np;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i % np, kc = i / np;
        int64_t kx = kc % d.kw, ky = (kc / d.kw) % d.kh, ci = kc / (d.kw * d.kh);
        int64_t p = p0 + j, oy = p / d.Wo, ox = p % d.Wo;
        int64_t iy = oy * d.stride - d.pt + ky, ix = ox * d.stride - d.pl + kx;
        float v = 0.0f;
        if (iy >= 0 && iy < d.H && ix >= 0 && ix < d.W)
            v = sd3_cuda_ld(x, xdt, ((img * d.Ci + ci) * d.H + iy) * d.W + ix);
        col[i] = __float2bfloat16_rn(v);
    }
}

// y[b, co, p] = bias[co] (or 0)
static __global__ void
k_bias_fill(__nv_bfloat16 *y, const void *bias, int bdt, int64_t B, int64_t Co, int64_t P)
{
    int64_t n = B * Co * P;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(bias ? sd3_cuda_ld(bias, bdt, (i / P) % Co) : 0.0f);
}

static unsigned
s_blocks(const sd3_cuda_t *cu, int64_t n)
{
    int64_t b = (n + S_THREADS - 1) / S_THREADS, cap = (int64_t)cu->n_sm * 16;
    return (unsigned)(b > cap ? cap : b > 0 ? b : 1);
}

int
sd3_cuda_conv2d(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                const sd3_tensor_t *w, const sd3_tensor_t *b, const sd3_conv_opts_t *opts,
                sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    char sx[96], sw[96], sy[96];
    s_conv_dims_t d;
    int64_t B, Co, P, Kc, chunk;
    bool direct;
    __nv_bfloat16 *col = NULL;
    if (!opts)
        return sd3_err_set(err, SD3_EINVAL, "cuda conv2d: missing options");
    if (sd3_cuda_check(x, "conv2d", "x", err) || sd3_cuda_check(y, "conv2d", "y", err) ||
        sd3_cuda_check(w, "conv2d", "weight", err))
        return SD3_EINVAL;
    if (w->dtype != SD3_BF16 || y->dtype != SD3_BF16)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda conv2d: weight %s, y %s: want BF16 (pass weights through "
                           "weight())",
                           sd3_dtype_name(w->dtype), sd3_dtype_name(y->dtype));
    if (opts->stride < 1 || opts->pad_top < 0 || opts->pad_left < 0 || opts->pad_bottom < 0 ||
        opts->pad_right < 0)
        return sd3_err_set(err, SD3_EINVAL, "cuda conv2d: stride %d, pads %d,%d,%d,%d",
                           opts->stride, opts->pad_top, opts->pad_left, opts->pad_bottom,
                           opts->pad_right);
    if (x->ndim != 4 || w->ndim != 4 || y->ndim != 4 || w->shape[1] != x->shape[1] ||
        w->shape[2] < 1 || w->shape[3] < 1 ||
        x->shape[2] + opts->pad_top + opts->pad_bottom < w->shape[2] ||
        x->shape[3] + opts->pad_left + opts->pad_right < w->shape[3])
        goto bad_shape;
    d.Ci = x->shape[1];
    d.H = x->shape[2];
    d.W = x->shape[3];
    d.kh = w->shape[2];
    d.kw = w->shape[3];
    d.stride = opts->stride;
    d.pt = opts->pad_top;
    d.pl = opts->pad_left;
    d.Ho = (d.H + opts->pad_top + opts->pad_bottom - d.kh) / d.stride + 1;
    d.Wo = (d.W + opts->pad_left + opts->pad_right - d.kw) / d.stride + 1;
    B = x->shape[0];
    Co = w->shape[0];
    if (y->shape[0] != B || y->shape[1] != Co || y->shape[2] != d.Ho || y->shape[3] != d.Wo)
        goto bad_shape;
    if (sd3_cuda_check_vec(b, Co, "conv2d", "bias", err))
        return SD3_EINVAL;
    P = d.Ho * d.Wo;
    Kc = d.Ci * d.kh * d.kw;
    if (B == 0 || Co == 0 || P == 0)
        return 0;
    if (y->data == x->data)
        return sd3_err_set(err, SD3_EINVAL, "cuda conv2d: y must not alias x");
    k_bias_fill<<<s_blocks(cu, B * Co * P), S_THREADS, 0, cu->stream>>>(
        (__nv_bfloat16 *)y->data, b ? b->data : NULL, b ? b->dtype : 0, B, Co, P);
    SD3_CUDA_LAUNCHED(err);
    if (Kc == 0)
        return 0;
    direct = d.kh == 1 && d.kw == 1 && d.stride == 1 && d.pt == 0 && d.pl == 0 &&
             opts->pad_bottom == 0 && opts->pad_right == 0 && x->dtype == SD3_BF16;
    chunk = P;
    if (!direct) {
        size_t per = (size_t)Kc * sizeof(__nv_bfloat16);
        if ((size_t)chunk * per > S_COL_BUDGET) {
            chunk = (int64_t)(S_COL_BUDGET / per) / 64 * 64;
            if (chunk < 64)
                chunk = 64;
        }
        col = (__nv_bfloat16 *)sd3_cuda_scratch(cu, (size_t)chunk * per, err);
        if (!col)
            goto fail;
    }
    for (int64_t img = 0; img < B; img++) {
        __nv_bfloat16 *yb = (__nv_bfloat16 *)y->data + img * Co * P;
        if (direct) { // y[img] [Co, P] += w [Co, Ci] x[img] [Ci, P]
            const __nv_bfloat16 *xb = (const __nv_bfloat16 *)x->data + img * d.Ci * P;
            if (sd3_cuda_gemm_rowmajor(cu, Co, P, Kc, w->data, Kc, xb, P, yb, P, true, err))
                goto fail;
            continue;
        }
        for (int64_t p0 = 0; p0 < P; p0 += chunk) {
            int64_t np = P - p0 < chunk ? P - p0 : chunk;
            k_im2col<<<s_blocks(cu, Kc * np), S_THREADS, 0, cu->stream>>>(col, x->data, x->dtype,
                                                                          d, img, p0, np);
            SD3_CUDA_LAUNCHED(err);
            if (sd3_cuda_gemm_rowmajor(cu, Co, np, Kc, w->data, Kc, col, np, yb + p0, P, true,
                                       err))
                goto fail;
        }
    }
    return 0;
bad_shape:
    return sd3_err_set(err, SD3_EINVAL,
                       "cuda conv2d: x %s, weight %s, y %s (stride %d, pads %d,%d,%d,%d): want "
                       "[B, Ci, H, W], [Co, Ci, kh, kw], [B, Co, Ho, Wo]",
                       sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                       sd3_shape_str(w->ndim, w->shape, sw, sizeof sw),
                       sd3_shape_str(y->ndim, y->shape, sy, sizeof sy), opts->stride,
                       opts->pad_top, opts->pad_left, opts->pad_bottom, opts->pad_right);
fail:
    if (err)
        sd3_err_prefix(err, "cuda conv2d");
    return err ? err->code : SD3_EDEVICE;
}
