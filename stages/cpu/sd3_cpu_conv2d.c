/*  sd3_cpu_conv2d - 2-D convolution on the CPU (the VAE's convolutions, the patch embed)
 *
 *    x: [B, Ci, H, W]   w: [Co, Ci, kh, kw] f32/f16/bf16/f8_e4m3   b: [Co] any float or NULL
 *    y: [B, Co, OH, OW],  OH = (H + pt + pb - kh) / s + 1,  OW = (W + pl + pr - kw) / s + 1
 *    Zero padding per side (the VAE downsample pads right and bottom by 1, stride 2:
 *    MODEL.md §5).
 *
 *  Fast path: im2col by tiles. One task per (batch, block of SD3_CONV_PB output pixels):
 *  it gathers the [Ci*kh*kw, PB] column tile (bounded scratch: Ci*kh*kw*PB floats), then for
 *  each block of SD3_CONV_COB output channels widens those weight rows and runs one sgemm
 *  Y[cob, PB] = Wblk[cob, Ci*kh*kw] col. A 1x1, stride 1, unpadded conv reads x directly.
 *  The tiling depends on the shapes only, so the bits do not depend on the thread count.
 *  Precision bf16: per batch and tile of SD3_CONV_PT16 output pixels, the transposed column
 *  matrix [pixels, Ci*kh*kw] is gathered (f32) and run through the bf16 linear with the
 *  weight seen as [Co, Ci*kh*kw] (packed once like any linear weight), then written back
 *  transposed with the bias. The linear is batch invariant, so the bits depend on nothing
 *  but each pixel's own inputs.
 *  Reference: plain nested loops with fp32 accumulation.  */
#include "sd3_cpu.h"
#include "sd3_cpu_bf16.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SD3_CONV_PB  512 // output pixels per task
#define SD3_CONV_COB 256 // output channels per sgemm
#define SD3_CONV_PT16 1024 // output pixels per bf16 linear call

typedef struct {
    int64_t B, Ci, H, W, Co, kh, kw, OH, OW, stride, pt, pl;
} s_conv_dims_t;

static int
s_check(const char *op, const sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
        const sd3_conv_opts_t *opts, s_conv_dims_t *d, sd3_err_t *err)
{
    char sx[96], sw[96], sy[96];
    if (sd3_cpu_check_f32(x, op, "x", err) || sd3_cpu_check_f32(y, op, "y", err))
        return SD3_EINVAL;
    if (!opts)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: missing options", op);
    if (!w || !w->data || w->where != SD3_HOST ||
        (w->dtype != SD3_F32 && w->dtype != SD3_F16 && w->dtype != SD3_BF16 &&
         w->dtype != SD3_F8_E4M3))
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu %s: W must be a host F32/F16/BF16/F8_E4M3 "
                           "tensor",
                           op);
    if (opts->stride < 1 || opts->pad_top < 0 || opts->pad_left < 0 || opts->pad_bottom < 0 ||
        opts->pad_right < 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu %s: stride %d and pads %d,%d,%d,%d: want "
                           "stride >= 1, pads >= 0",
                           op, opts->stride, opts->pad_top, opts->pad_left, opts->pad_bottom,
                           opts->pad_right);
    bool ok = x->ndim == 4 && w->ndim == 4 && y->ndim == 4 && w->shape[1] == x->shape[1] &&
              y->shape[0] == x->shape[0] && y->shape[1] == w->shape[0];
    if (ok) {
        d->B = x->shape[0], d->Ci = x->shape[1], d->H = x->shape[2], d->W = x->shape[3];
        d->Co = w->shape[0], d->kh = w->shape[2], d->kw = w->shape[3];
        d->stride = opts->stride, d->pt = opts->pad_top, d->pl = opts->pad_left;
        int64_t hp = d->H + opts->pad_top + opts->pad_bottom - d->kh;
        int64_t wp = d->W + opts->pad_left + opts->pad_right - d->kw;
        ok = hp >= 0 && wp >= 0 && d->kh > 0 && d->kw > 0;
        d->OH = ok ? hp / d->stride + 1 : 0;
        d->OW = ok ? wp / d->stride + 1 : 0;
        ok = ok && y->shape[2] == d->OH && y->shape[3] == d->OW;
    }
    if (!ok)
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu %s: x %s, W %s, y %s (stride %d, pads "
                           "t%d l%d b%d r%d) do not fit: want y [B, Co, OH, OW] per sd3_backend.h",
                           op, sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                           sd3_shape_str(w->ndim, w->shape, sw, sizeof sw),
                           sd3_shape_str(y->ndim, y->shape, sy, sizeof sy), opts->stride,
                           opts->pad_top, opts->pad_left, opts->pad_bottom, opts->pad_right);
    if (y->data == x->data)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: y must not alias x", op);
    if (d->Ci * d->kh * d->kw > INT32_MAX / SD3_CONV_PB || d->OH * d->OW > INT32_MAX)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: sizes past 2^31", op);
    return 0;
}

// ---- fast path ---------------------------------------------------------------------------

typedef struct {
    sd3_backend_t *be;
    s_conv_dims_t d;
    const float *x, *bias;
    const void *w;
    sd3_dtype_t wdtype;
    float *y;
    int64_t n_pb;
    bool direct; // 1x1, stride 1, no padding: x is its own column matrix
    atomic_bool failed;
} s_conv_job_t;

static void
s_conv_task(void *ctx, int64_t task, int thread)
{
    s_conv_job_t *job = ctx;
    const s_conv_dims_t *d = &job->d;
    int64_t b = task / job->n_pb, pb = task % job->n_pb;
    int64_t P = d->OH * d->OW, p0 = pb * SD3_CONV_PB;
    int64_t pn = P - p0 < SD3_CONV_PB ? P - p0 : SD3_CONV_PB;
    int64_t Kd = d->Ci * d->kh * d->kw;
    const float *xb = job->x + b * d->Ci * d->H * d->W;
    const float *col;
    int64_t ldcol;
    if (job->direct) {
        col = xb + p0;
        ldcol = P;
    } else {
        float *c = sd3_cpu_scratch(job->be, thread, 1, (size_t)(Kd * SD3_CONV_PB));
        if (!c) {
            atomic_store(&job->failed, true);
            return;
        }
        // Gather row by row of output pixels: within one output row the input columns
        // advance by the stride, so only the ends need bounds checks.
        for (int64_t ci = 0; ci < d->Ci; ci++)
            for (int64_t r = 0; r < d->kh; r++)
                for (int64_t s = 0; s < d->kw; s++) {
                    float *row = c + ((ci * d->kh + r) * d->kw + s) * SD3_CONV_PB;
                    const float *xc = xb + ci * d->H * d->W;
                    for (int64_t p = 0; p < pn;) {
                        int64_t oh = (p0 + p) / d->OW, ow = (p0 + p) % d->OW;
                        int64_t seg = d->OW - ow < pn - p ? d->OW - ow : pn - p;
                        int64_t ih = oh * d->stride + r - d->pt;
                        float *dst = row + p;
                        if (ih < 0 || ih >= d->H) {
                            memset(dst, 0, (size_t)seg * sizeof(float));
                        } else {
                            const float *xr = xc + ih * d->W;
                            int64_t st = d->stride, iw0 = ow * st + s - d->pl;
                            // q in [lo, hi) reads inside the row; the rest is padding
                            int64_t lo = iw0 >= 0 ? 0 : (-iw0 + st - 1) / st;
                            int64_t hi = iw0 > d->W - 1 ? 0 : (d->W - 1 - iw0) / st + 1;
                            lo = lo < seg ? lo : seg;
                            hi = hi < seg ? hi : seg;
                            hi = hi > lo ? hi : lo;
                            for (int64_t q = 0; q < lo; q++)
                                dst[q] = 0.0f;
                            if (st == 1)
                                memcpy(dst + lo, xr + iw0 + lo, (size_t)(hi - lo) * sizeof(float));
                            else
                                for (int64_t q = lo; q < hi; q++)
                                    dst[q] = xr[iw0 + q * st];
                            for (int64_t q = hi; q < seg; q++)
                                dst[q] = 0.0f;
                        }
                        p += seg;
                    }
                }
        col = c;
        ldcol = SD3_CONV_PB;
    }
    size_t esz = sd3_dtype_size(job->wdtype);
    for (int64_t co0 = 0; co0 < d->Co; co0 += SD3_CONV_COB) {
        int64_t cn = d->Co - co0 < SD3_CONV_COB ? d->Co - co0 : SD3_CONV_COB;
        const float *wt;
        if (job->wdtype == SD3_F32) {
            wt = (const float *)job->w + co0 * Kd;
        } else {
            float *buf = sd3_cpu_scratch(job->be, thread, 0, (size_t)(cn * Kd));
            if (!buf) {
                atomic_store(&job->failed, true);
                return;
            }
            sd3_cpu_widen(job->wdtype, (const char *)job->w + (size_t)(co0 * Kd) * esz, buf,
                          (size_t)(cn * Kd));
            wt = buf;
        }
        float *yt = job->y + (b * d->Co + co0) * P + p0;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cn, (int)pn, (int)Kd, 1.0f, wt,
                    (int)Kd, col, (int)ldcol, 0.0f, yt, (int)P);
        if (job->bias)
            for (int64_t c = 0; c < cn; c++)
                for (int64_t p = 0; p < pn; p++)
                    yt[c * P + p] += job->bias[co0 + c];
    }
}

// ---- precision bf16 ------------------------------------------------------------------------

typedef struct {
    const s_conv_dims_t *d;
    const float *xb; // batch b of x: [Ci, H, W]
    float *colt;     // [pn, Kd]
    const float *yt; // [pn, Co] (write-back)
    float *yb;       // batch b of y: [Co, OH*OW]
    const float *bias;
    int64_t p0, pn;
} s_conv16_job_t;

#define S_GATHER_PIX 32

// Pixels [t*32, t*32+32) of the tile: their rows of the transposed column matrix.
static void
s_conv16_gather(void *ctx, int64_t t, int thread)
{
    (void)thread;
    s_conv16_job_t *job = ctx;
    const s_conv_dims_t *d = job->d;
    int64_t Kd = d->Ci * d->kh * d->kw;
    int64_t q1 = (t + 1) * S_GATHER_PIX < job->pn ? (t + 1) * S_GATHER_PIX : job->pn;
    for (int64_t q = t * S_GATHER_PIX; q < q1; q++) {
        int64_t oh = (job->p0 + q) / d->OW, ow = (job->p0 + q) % d->OW;
        float *row = job->colt + q * Kd;
        for (int64_t ci = 0; ci < d->Ci; ci++) {
            const float *xc = job->xb + ci * d->H * d->W;
            for (int64_t r = 0; r < d->kh; r++) {
                int64_t ih = oh * d->stride + r - d->pt;
                for (int64_t s = 0; s < d->kw; s++) {
                    int64_t iw = ow * d->stride + s - d->pl;
                    *row++ = ih < 0 || ih >= d->H || iw < 0 || iw >= d->W ? 0.0f
                                                                          : xc[ih * d->W + iw];
                }
            }
        }
    }
}

// Output channels [t*64, t*64+64): y[co, p0 + q] = yt[q, co] + bias[co].
static void
s_conv16_scatter(void *ctx, int64_t t, int thread)
{
    (void)thread;
    s_conv16_job_t *job = ctx;
    const s_conv_dims_t *d = job->d;
    int64_t P = d->OH * d->OW;
    int64_t c1 = (t + 1) * 64 < d->Co ? (t + 1) * 64 : d->Co;
    for (int64_t co = t * 64; co < c1; co++) {
        float bv = job->bias ? job->bias[co] : 0.0f;
        float *yr = job->yb + co * P + job->p0;
        for (int64_t q = 0; q < job->pn; q++)
            yr[q] = job->yt[q * d->Co + co] + bv;
    }
}

static int
s_conv2d_bf16(sd3_backend_t *be, sd3_cpu_bf16_t *bf, sd3_tensor_t *y, const sd3_tensor_t *x,
              const sd3_tensor_t *w, const float *bias, const s_conv_dims_t *d, sd3_err_t *err)
{
    int64_t Kd = d->Ci * d->kh * d->kw, P = d->OH * d->OW;
    int64_t pt = P < SD3_CONV_PT16 ? P : SD3_CONV_PT16;
    float *colt = malloc((size_t)(pt * Kd) * sizeof(float));
    float *yt = malloc((size_t)(pt * d->Co) * sizeof(float));
    int rc = 0;
    if (!colt || !yt) {
        rc = sd3_err_set(err, SD3_ENOMEM, "cpu conv2d bf16: out of memory (%lld x %lld)",
                         (long long)pt, (long long)Kd);
        goto done;
    }
    sd3_tensor_t wv, xv, yv; // W as the linear weight [Co, Kd]; a tile as [pn, Kd] -> [pn, Co]
    sd3_tensor_view_init(&wv, w->dtype, 2, (int64_t[]){d->Co, Kd}, w->data);
    wv.name = w->name;
    sd3_cpu_pool_t *pool = sd3_cpu_backend_pool(be);
    for (int64_t b = 0; b < d->B && rc == 0; b++)
        for (int64_t p0 = 0; p0 < P && rc == 0; p0 += SD3_CONV_PT16) {
            int64_t pn = P - p0 < SD3_CONV_PT16 ? P - p0 : SD3_CONV_PT16;
            s_conv16_job_t job = {.d = d,
                                  .xb = (const float *)x->data + b * d->Ci * d->H * d->W,
                                  .colt = colt,
                                  .yt = yt,
                                  .yb = (float *)y->data + b * d->Co * P,
                                  .bias = bias,
                                  .p0 = p0,
                                  .pn = pn};
            sd3_cpu_pool_run(pool, (pn + S_GATHER_PIX - 1) / S_GATHER_PIX, s_conv16_gather, &job);
            sd3_tensor_view_init(&xv, SD3_F32, 2, (int64_t[]){pn, Kd}, colt);
            sd3_tensor_view_init(&yv, SD3_F32, 2, (int64_t[]){pn, d->Co}, yt);
            rc = sd3_cpu_linear_bf16(be, bf, &yv, &xv, &wv, NULL, err);
            if (rc == 0)
                sd3_cpu_pool_run(pool, (d->Co + 63) / 64, s_conv16_scatter, &job);
        }
done:
    free(colt);
    free(yt);
    return rc;
}

int
sd3_cpu_conv2d(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
               const sd3_tensor_t *b, const sd3_conv_opts_t *opts, sd3_err_t *err)
{
    s_conv_job_t job = {0};
    float *bias = NULL;
    if (s_check("conv2d", y, x, w, opts, &job.d, err) != 0)
        return SD3_EINVAL;
    int rc = sd3_cpu_vec_f32(b, job.d.Co, "conv2d", "bias", &bias, err);
    if (rc != 0)
        return rc;
    int64_t P = job.d.OH * job.d.OW;
    if (job.d.B == 0 || job.d.Co == 0 || P == 0) {
        free(bias);
        return 0;
    }
    if (job.d.Ci == 0) { // no inputs: y = bias
        float *yd = y->data;
        for (int64_t i = 0; i < sd3_tensor_numel(y); i++)
            yd[i] = bias ? bias[(i / P) % job.d.Co] : 0.0f;
        free(bias);
        return 0;
    }
    sd3_cpu_bf16_t *bf = sd3_cpu_backend_bf16(be);
    if (bf) {
        rc = s_conv2d_bf16(be, bf, y, x, w, bias, &job.d, err);
        free(bias);
        return rc;
    }
    job.be = be;
    job.x = x->data;
    job.w = w->data;
    job.wdtype = w->dtype;
    job.bias = bias;
    job.y = y->data;
    job.n_pb = (P + SD3_CONV_PB - 1) / SD3_CONV_PB;
    job.direct = job.d.kh == 1 && job.d.kw == 1 && job.d.stride == 1 && opts->pad_top == 0 &&
                 opts->pad_left == 0 && opts->pad_bottom == 0 && opts->pad_right == 0;
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), job.d.B * job.n_pb, s_conv_task, &job);
    free(bias);
    if (atomic_load(&job.failed))
        return sd3_err_set(err, SD3_ENOMEM, "cpu conv2d: out of memory for a column tile");
    return 0;
}

// ---- reference ---------------------------------------------------------------------------

int
sd3_cpu_conv2d_ref(sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                   const sd3_tensor_t *b, const sd3_conv_opts_t *opts, sd3_err_t *err)
{
    s_conv_dims_t d;
    float *bias = NULL, *wf = NULL;
    if (s_check("conv2d_ref", y, x, w, opts, &d, err) != 0)
        return SD3_EINVAL;
    int rc = sd3_cpu_vec_f32(b, d.Co, "conv2d_ref", "bias", &bias, err);
    if (rc != 0)
        return rc;
    int64_t Kd = d.Ci * d.kh * d.kw;
    if (!(wf = malloc((size_t)(Kd ? Kd : 1) * sizeof(float)))) { // one output channel's weights
        free(bias);
        return sd3_err_set(err, SD3_ENOMEM, "cpu conv2d_ref: out of memory");
    }
    const float *xd = x->data;
    float *yd = y->data;
    size_t esz = sd3_dtype_size(w->dtype);
    for (int64_t co = 0; co < d.Co; co++) {
        sd3_dtype_to_f32(w->dtype, (const char *)w->data + (size_t)(co * Kd) * esz, wf, (size_t)Kd);
        for (int64_t bb = 0; bb < d.B; bb++)
            for (int64_t oh = 0; oh < d.OH; oh++)
                for (int64_t ow = 0; ow < d.OW; ow++) {
                    float acc = 0.0f;
                    for (int64_t ci = 0; ci < d.Ci; ci++)
                        for (int64_t r = 0; r < d.kh; r++)
                            for (int64_t s = 0; s < d.kw; s++) {
                                int64_t ih = oh * d.stride + r - d.pt;
                                int64_t iw = ow * d.stride + s - d.pl;
                                if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W)
                                    continue;
                                acc += wf[(ci * d.kh + r) * d.kw + s] *
                                       xd[((bb * d.Ci + ci) * d.H + ih) * d.W + iw];
                            }
                    yd[((bb * d.Co + co) * d.OH + oh) * d.OW + ow] = acc + (bias ? bias[co] : 0.0f);
                }
    }
    free(wf);
    free(bias);
    return 0;
}
