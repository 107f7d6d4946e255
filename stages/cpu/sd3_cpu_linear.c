/*  sd3_cpu_linear - y = x W^T + b on the CPU
 *
 *    x: [..., K] f32   W: [N, K] f32/f16/bf16/f8_e4m3   b: [N] any float or NULL   y: [..., N]
 *
 *  Fast path: the output is cut into tiles of SD3_LIN_MB rows x nb columns, nb = 256 or
 *  narrower (down to 64) for small outputs; the cut depends on the shape only. A task
 *  widens its nb rows of W into a per-thread buffer (nb*K floats: never the whole weight),
 *  runs one single-threaded sgemm on the tile, then adds the bias. Each element is computed
 *  by one sgemm call whose arguments depend only on the shape, so the bits do not depend on
 *  the thread count.
 *  Few rows (M <= SD3_LIN_SMALL_M, the adaLN GEMMs at M = B): the op is bound by reading W,
 *  so each task takes SD3_LIN_SMALL_NB rows of W, widens them in registers and dots them
 *  with the x rows (AVX-512; 16 partial sums reduced in a fixed order). No scratch.
 *  Precision bf16 (sd3_cpu_bf16.c): oneDNN on fixed tiles with weights packed once.
 *  Reference: three plain loops with fp32 accumulation.  */
#include "sd3_cpu.h"
#include "sd3_cpu_bf16.h"
#include "sd3_cpu_simd.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define SD3_LIN_MB       1024 // rows of x per tile
#define SD3_LIN_NB       512  // rows of W (output columns) per tile, at most
#define SD3_LIN_TASKS    16   // halve the tile width (down to 64) until there are this many
#define SD3_LIN_SMALL_M  4
#define SD3_LIN_SMALL_NB 64

typedef struct {
    sd3_backend_t *be;
    const float *x; // [M, K]
    const void *w;  // [N, K] in wdtype
    sd3_dtype_t wdtype;
    const float *bias;         // [N] or NULL
    float *y;                  // [M, N]
    int64_t M, N, K, n_mb, nb; // nb: tile width, from the shape only
    atomic_bool failed;        // a scratch allocation failed
} s_linear_job_t;

static int
s_check(const char *op, const sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
        const sd3_tensor_t *b, sd3_err_t *err)
{
    char sw[96], sx[96], sy[96];
    if (sd3_cpu_check_f32(x, op, "x", err) || sd3_cpu_check_f32(y, op, "y", err))
        return SD3_EINVAL;
    if (!w || !w->data || w->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: W is missing or not in host memory", op);
    if (w->dtype != SD3_F32 && w->dtype != SD3_F16 && w->dtype != SD3_BF16 &&
        w->dtype != SD3_F8_E4M3)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: W '%s' is %s, want F32/F16/BF16/F8_E4M3", op,
                           w->name ? w->name : "?", sd3_dtype_name(w->dtype));
    int64_t K = sd3_tensor_cols(x);
    if (w->ndim != 2 || w->shape[1] != K || w->shape[0] < 0 || sd3_tensor_cols(y) != w->shape[0] ||
        sd3_tensor_rows(y) != sd3_tensor_rows(x))
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu %s: x %s, W '%s' %s, y %s: want x [..., K], "
                           "W [N, K], y [..., N] with the same rows",
                           op, sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                           w->name ? w->name : "?", sd3_shape_str(w->ndim, w->shape, sw, sizeof sw),
                           sd3_shape_str(y->ndim, y->shape, sy, sizeof sy));
    if (y->data == x->data && sd3_tensor_numel(y) > 0)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: y must not alias x", op);
    (void)b; // checked by sd3_cpu_vec_f32
    return 0;
}

static void
s_linear_task(void *ctx, int64_t task, int thread)
{
    s_linear_job_t *job = ctx;
    int64_t nb = task / job->n_mb, mb = task % job->n_mb;
    int64_t n0 = nb * job->nb, m0 = mb * SD3_LIN_MB;
    int64_t nn = job->N - n0 < job->nb ? job->N - n0 : job->nb;
    int64_t mm = job->M - m0 < SD3_LIN_MB ? job->M - m0 : SD3_LIN_MB;
    int64_t K = job->K;
    const float *wt;
    size_t esz = sd3_dtype_size(job->wdtype);
    if (job->wdtype == SD3_F32) {
        wt = (const float *)job->w + n0 * K;
    } else {
        float *buf = sd3_cpu_scratch(job->be, thread, 0, (size_t)(nn * K));
        if (!buf) {
            atomic_store(&job->failed, true);
            return;
        }
        sd3_cpu_widen(job->wdtype, (const char *)job->w + (size_t)(n0 * K) * esz, buf,
                      (size_t)(nn * K));
        wt = buf;
    }
    float *yt = job->y + m0 * job->N + n0;
    if (K == 0) {
        for (int64_t i = 0; i < mm; i++)
            memset(yt + i * job->N, 0, (size_t)nn * sizeof(float));
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)nn, (int)K, 1.0f,
                    job->x + m0 * K, (int)K, wt, (int)K, 0.0f, yt, (int)job->N);
    }
    if (job->bias)
        for (int64_t i = 0; i < mm; i++)
            for (int64_t j = 0; j < nn; j++)
                yt[i * job->N + j] += job->bias[n0 + j];
}

// ---- few rows: dot products straight from the weight ----------------------------------------

#if SD3_CPU_AVX512
// 16 weights from element k of row w (dtype dt) as f32; `mask` selects the valid lanes.
static inline __m512
s_load16(sd3_dtype_t dt, const void *w, int64_t k, __mmask16 mask)
{
    switch (dt) {
    case SD3_F16:
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + k));
    case SD3_BF16:
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + k)), 16));
    default:
        return _mm512_maskz_loadu_ps(mask, (const float *)w + k);
    }
}
#endif

static void
s_small_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_linear_job_t *job = ctx;
    int64_t n0 = task * SD3_LIN_SMALL_NB;
    int64_t n1 = n0 + SD3_LIN_SMALL_NB < job->N ? n0 + SD3_LIN_SMALL_NB : job->N;
    int64_t K = job->K, M = job->M;
    size_t esz = sd3_dtype_size(job->wdtype);
    for (int64_t n = n0; n < n1; n++) {
        const void *wr = (const char *)job->w + (size_t)(n * K) * esz;
        float out[SD3_LIN_SMALL_M];
#if SD3_CPU_AVX512
        __m512 acc[SD3_LIN_SMALL_M];
        for (int64_t m = 0; m < M; m++)
            acc[m] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            __mmask16 mask = sd3_cpu_mask16(K - k);
            __m512 wv = s_load16(job->wdtype, wr, k, mask);
            for (int64_t m = 0; m < M; m++)
                acc[m] =
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, job->x + m * K + k), wv, acc[m]);
        }
        for (int64_t m = 0; m < M; m++)
            out[m] = _mm512_reduce_add_ps(acc[m]);
#else
        float wbuf[256];
        for (int64_t m = 0; m < M; m++)
            out[m] = 0.0f;
        for (int64_t k0 = 0; k0 < K; k0 += 256) {
            int64_t kn = K - k0 < 256 ? K - k0 : 256;
            sd3_cpu_widen(job->wdtype, (const char *)wr + (size_t)k0 * esz, wbuf, (size_t)kn);
            for (int64_t m = 0; m < M; m++)
                for (int64_t k = 0; k < kn; k++)
                    out[m] += job->x[m * K + k0 + k] * wbuf[k];
        }
#endif
        for (int64_t m = 0; m < M; m++)
            job->y[m * job->N + n] = out[m] + (job->bias ? job->bias[n] : 0.0f);
    }
}

int
sd3_cpu_linear(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
               const sd3_tensor_t *b, sd3_err_t *err)
{
    float *bias = NULL;
    if (s_check("linear", y, x, w, b, err) != 0)
        return SD3_EINVAL;
    int64_t M = sd3_tensor_rows(x), K = sd3_tensor_cols(x), N = w->shape[0];
    if (K > INT32_MAX || N > INT32_MAX || M > INT32_MAX)
        return sd3_err_set(err, SD3_EINVAL, "cpu linear: sizes past 2^31");
    int rc = sd3_cpu_vec_f32(b, N, "linear", "bias", &bias, err);
    if (rc != 0)
        return rc;
    if (M == 0 || N == 0) {
        free(bias);
        return 0;
    }
    sd3_cpu_bf16_t *bf16 = K > 0 ? sd3_cpu_backend_bf16(be) : NULL;
    if (bf16) { // precision bf16: oneDNN on fixed tiles (sd3_cpu_bf16.c)
        rc = sd3_cpu_linear_bf16(be, bf16, y, x, w, bias, err);
        free(bias);
        return rc;
    }
    s_linear_job_t job = {
        .be = be,
        .x = x->data,
        .w = w->data,
        .wdtype = w->dtype,
        .bias = bias,
        .y = y->data,
        .M = M,
        .N = N,
        .K = K,
        .n_mb = (M + SD3_LIN_MB - 1) / SD3_LIN_MB,
    };
#if SD3_CPU_AVX512
    bool small = M <= SD3_LIN_SMALL_M && w->dtype != SD3_F8_E4M3; // f8 widens through a table
#else
    bool small = M <= SD3_LIN_SMALL_M;
#endif
    if (small) {
        sd3_cpu_pool_run(sd3_cpu_backend_pool(be), (N + SD3_LIN_SMALL_NB - 1) / SD3_LIN_SMALL_NB,
                         s_small_task, &job);
    } else {
        // Narrower tiles for small outputs keep many threads busy (the ctx stream has
        // M = 2*154); the choice depends on the shape only, never on the thread count.
        job.nb = SD3_LIN_NB;
        while (job.nb > 64 && job.n_mb * ((N + job.nb - 1) / job.nb) < SD3_LIN_TASKS)
            job.nb /= 2;
        int64_t n_nb = (N + job.nb - 1) / job.nb;
        sd3_cpu_pool_run(sd3_cpu_backend_pool(be), n_nb * job.n_mb, s_linear_task, &job);
    }
    free(bias);
    if (atomic_load(&job.failed))
        return sd3_err_set(err, SD3_ENOMEM,
                           "cpu linear: out of memory for a weight tile "
                           "(%lld x %lld floats)",
                           (long long)job.nb, (long long)K);
    return 0;
}

int
sd3_cpu_linear_ref(sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                   const sd3_tensor_t *b, sd3_err_t *err)
{
    float *bias = NULL, *wrow = NULL;
    if (s_check("linear_ref", y, x, w, b, err) != 0)
        return SD3_EINVAL;
    int64_t M = sd3_tensor_rows(x), K = sd3_tensor_cols(x), N = w->shape[0];
    int rc = sd3_cpu_vec_f32(b, N, "linear_ref", "bias", &bias, err);
    if (rc != 0)
        return rc;
    if (!(wrow = malloc((size_t)(K ? K : 1) * sizeof(float)))) {
        free(bias);
        return sd3_err_set(err, SD3_ENOMEM, "cpu linear_ref: out of memory");
    }
    const float *xd = x->data;
    float *yd = y->data;
    size_t esz = sd3_dtype_size(w->dtype);
    for (int64_t n = 0; n < N; n++) {
        sd3_dtype_to_f32(w->dtype, (const char *)w->data + (size_t)(n * K) * esz, wrow, (size_t)K);
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++)
                acc += xd[m * K + k] * wrow[k];
            yd[m * N + n] = acc + (bias ? bias[n] : 0.0f);
        }
    }
    free(wrow);
    free(bias);
    return 0;
}
