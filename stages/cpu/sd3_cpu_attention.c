/*  sd3_cpu_attention - multi-head attention on the CPU, flash style
 *
 *    q: [B, Lq, H*Dh]   k, v: [B, Lk, H*Dh]   o: [B, Lq, H*Dh]   bias: [H, Lq, Lk] f32 or NULL
 *    o = softmax(scale * q k^T + bias [+ causal mask]) v, per batch and head (MODEL.md §4.6
 *    step 5; CLIP causal; T5 bias with scale 1).
 *
 *  Fast path: one task per (batch, head, block of SD3_ATT_BQ queries). It walks the keys in
 *  blocks of SD3_ATT_BK: S = scale * Q K^T (sgemm), bias and mask, an online softmax (running
 *  max m and sum l per row, rescaling the accumulator when m grows), O += P V (sgemm).
 *  Memory per thread: BQ*BK + BQ*Dh floats, whatever L is; the [Lq, Lk] matrix never exists.
 *  The blocks depend on the shapes only, so the bits do not depend on the thread count.
 *  Precision bf16: the same walk with both products in oneDNN's bf16 matmul (f32
 *  accumulation; q (times scale, exact for 1/8), k, v rounded to bf16 once per call, P
 *  rounded per block), keys in blocks of SD3_ATT_BK16; the softmax stays f32.
 *  Reference: one row of Lk scores at a time, plain loops.  */
#include "sd3_cpu.h"
#include "sd3_cpu_bf16.h"
#include "sd3_cpu_simd.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifndef SD3_ATT_BQ
#define SD3_ATT_BQ 128 // queries per task
#endif
#ifndef SD3_ATT_BK
#define SD3_ATT_BK 256 // keys per block
#endif
#define SD3_ATT_BK16 1024 // keys per block at precision bf16: fewer, larger oneDNN calls

static int
s_check(const char *op, const sd3_tensor_t *o, const sd3_tensor_t *q, const sd3_tensor_t *k,
        const sd3_tensor_t *v, const sd3_attn_opts_t *opts, sd3_err_t *err)
{
    char sq[96], sk[96], sv[96], so[96];
    if (sd3_cpu_check_f32(q, op, "q", err) || sd3_cpu_check_f32(k, op, "k", err) ||
        sd3_cpu_check_f32(v, op, "v", err) || sd3_cpu_check_f32(o, op, "o", err))
        return SD3_EINVAL;
    if (!opts)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: missing options", op);
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || o->ndim != 3 ||
        k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] || k->shape[1] != v->shape[1] ||
        k->shape[2] != q->shape[2] || v->shape[2] != q->shape[2] ||
        sd3_cpu_check_same(q, o, op, "o", NULL) != 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu %s: q %s, k %s, v %s, o %s: want q, o [B, Lq, H*Dh] and k, v "
                           "[B, Lk, H*Dh]",
                           op, sd3_shape_str(q->ndim, q->shape, sq, sizeof sq),
                           sd3_shape_str(k->ndim, k->shape, sk, sizeof sk),
                           sd3_shape_str(v->ndim, v->shape, sv, sizeof sv),
                           sd3_shape_str(o->ndim, o->shape, so, sizeof so));
    if (opts->n_heads <= 0 || q->shape[2] % opts->n_heads != 0)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %lld columns do not split into %d heads", op,
                           (long long)q->shape[2], opts->n_heads);
    if (o->data == q->data || o->data == k->data || o->data == v->data)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: o must not alias q, k or v", op);
    if (opts->bias) {
        const sd3_tensor_t *bias = opts->bias;
        int n = bias->ndim;
        if (sd3_cpu_check_f32(bias, op, "bias", err))
            return SD3_EINVAL;
        if (n < 3 || bias->shape[n - 1] != k->shape[1] || bias->shape[n - 2] != q->shape[1] ||
            sd3_tensor_numel(bias) != (int64_t)opts->n_heads * q->shape[1] * k->shape[1])
            return sd3_err_set(err, SD3_EINVAL, "cpu %s: bias is %s, want [%d, %lld, %lld]", op,
                               sd3_shape_str(n, bias->shape, sq, sizeof sq), opts->n_heads,
                               (long long)q->shape[1], (long long)k->shape[1]);
    }
    if (q->shape[2] > INT32_MAX / 4 || k->shape[1] > INT32_MAX / 4)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: sizes past 2^29", op);
    return 0;
}

// ---- the online-softmax row step -----------------------------------------------------------
// For one row s[0..n) of logits (entries past n are masked) and the running max *m:
// returns the new max in *m, overwrites s[j] with exp(s[j] - new max) (0 past n), and
// returns sum_j of them; *alpha = exp(old max - new max) (0 when the old max was -inf).
// An all -inf row leaves *m = -inf and zeros. Fixed summation order: same bits every run.

#if SD3_CPU_AVX512
static float
s_row_softmax_step(float *s, int64_t n, int64_t n_all, float *m, float *alpha)
{
    __m512 vmax = _mm512_set1_ps(*m);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
    if (j < n)
        vmax = _mm512_mask_max_ps(vmax, sd3_cpu_mask16(n - j), vmax,
                                  _mm512_maskz_loadu_ps(sd3_cpu_mask16(n - j), s + j));
    float mx = _mm512_reduce_max_ps(vmax);
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)n_all * sizeof(float));
        *alpha = 1.0f;
        return 0.0f;
    }
    *alpha = *m == -INFINITY ? 0.0f : expf(*m - mx);
    *m = mx;
    __m512 vm = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        __m512 e = sd3_cpu_exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vm));
        _mm512_storeu_ps(s + j, e);
        vsum = _mm512_add_ps(vsum, e);
    }
    if (j < n) {
        __mmask16 k = sd3_cpu_mask16(n - j);
        __m512 e = _mm512_maskz_mov_ps(
            k, sd3_cpu_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vm)));
        _mm512_mask_storeu_ps(s + j, k, e);
        vsum = _mm512_add_ps(vsum, e);
        j = n;
    }
    for (; j < n_all; j++)
        s[j] = 0.0f;
    return _mm512_reduce_add_ps(vsum);
}
#else
static float
s_row_softmax_step(float *s, int64_t n, int64_t n_all, float *m, float *alpha)
{
    float mx = *m;
    for (int64_t j = 0; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    if (mx == -INFINITY) {
        memset(s, 0, (size_t)n_all * sizeof(float));
        *alpha = 1.0f;
        return 0.0f;
    }
    *alpha = *m == -INFINITY ? 0.0f : expf(*m - mx);
    *m = mx;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - mx);
        sum += s[j];
    }
    for (int64_t j = n; j < n_all; j++)
        s[j] = 0.0f;
    return sum;
}
#endif

// ---- fast path ---------------------------------------------------------------------------

typedef struct {
    sd3_backend_t *be;
    const float *q, *k, *v, *bias;
    float *o;
    int64_t B, Lq, Lk, H, Dh, HD, n_qb;
    float scale;
    bool causal;
    atomic_bool failed;
} s_att_job_t;

static void
s_att_task(void *ctx, int64_t task, int thread)
{
    s_att_job_t *job = ctx;
    int64_t qb = task % job->n_qb, bh = task / job->n_qb;
    int64_t b = bh / job->H, h = bh % job->H;
    int64_t Dh = job->Dh, HD = job->HD, Lk = job->Lk;
    int64_t q0 = qb * SD3_ATT_BQ;
    int64_t qn = job->Lq - q0 < SD3_ATT_BQ ? job->Lq - q0 : SD3_ATT_BQ;
    float *S = sd3_cpu_scratch(job->be, thread, 0, (size_t)(SD3_ATT_BQ * SD3_ATT_BK));
    float *acc = sd3_cpu_scratch(job->be, thread, 1, (size_t)(SD3_ATT_BQ * (Dh + 2)));
    if (!S || !acc) {
        atomic_store(&job->failed, true);
        return;
    }
    float *m = acc + SD3_ATT_BQ * Dh, *l = m + SD3_ATT_BQ; // running max and sum per row
    for (int64_t i = 0; i < qn; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    memset(acc, 0, (size_t)(qn * Dh) * sizeof(float));
    const float *Q = job->q + (b * job->Lq + q0) * HD + h * Dh;
    int64_t k_end = job->causal ? (q0 + qn < Lk ? q0 + qn : Lk) : Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += SD3_ATT_BK) {
        int64_t kn = k_end - k0 < SD3_ATT_BK ? k_end - k0 : SD3_ATT_BK;
        const float *K = job->k + (b * Lk + k0) * HD + h * Dh;
        const float *V = job->v + (b * Lk + k0) * HD + h * Dh;
        // S = scale * Q K^T   [qn, kn]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)qn, (int)kn, (int)Dh, job->scale,
                    Q, (int)HD, K, (int)HD, 0.0f, S, SD3_ATT_BK);
        for (int64_t i = 0; i < qn; i++) {
            float *s = S + i * SD3_ATT_BK;
            if (job->bias) {
                const float *br = job->bias + (h * job->Lq + q0 + i) * Lk + k0;
                for (int64_t j = 0; j < kn; j++)
                    s[j] += br[j];
            }
            int64_t jn = kn;
            if (job->causal && q0 + i - k0 + 1 < kn) // keys past the query are masked
                jn = q0 + i - k0 + 1 > 0 ? q0 + i - k0 + 1 : 0;
            float alpha;
            float sum = s_row_softmax_step(s, jn, kn, &m[i], &alpha);
            if (alpha != 1.0f) {
                float *a = acc + i * Dh;
                for (int64_t d = 0; d < Dh; d++)
                    a[d] *= alpha;
                l[i] *= alpha;
            }
            l[i] += sum;
        }
        // acc += P V   [qn, Dh]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)qn, (int)Dh, (int)kn, 1.0f, S,
                    SD3_ATT_BK, V, (int)HD, 1.0f, acc, (int)Dh);
    }
    float *O = job->o + (b * job->Lq + q0) * HD + h * Dh;
    for (int64_t i = 0; i < qn; i++) {
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        for (int64_t d = 0; d < Dh; d++)
            O[i * HD + d] = acc[i * Dh + d] * inv;
    }
}

// ---- precision bf16 ------------------------------------------------------------------------

typedef struct {
    sd3_backend_t *be;
    sd3_cpu_bf16_t *bf;
    const float *qf, *kf, *vf; // f32 inputs (for the conversion pass)
    uint16_t *q, *k, *v;       // bf16 copies; q already times scale
    const float *bias;
    float *o;
    int64_t B, Lq, Lk, H, Dh, HD, n_qb;
    float scale;
    bool causal;
    atomic_bool failed;
} s_att16_job_t;

#define S_CONV_ROWS 64

// Rows [t*64, t*64+64) of q, then of k, then of v, to bf16.
static void
s_att16_convert(void *ctx, int64_t t, int thread)
{
    (void)thread;
    s_att16_job_t *job = ctx;
    int64_t nq = (job->B * job->Lq + S_CONV_ROWS - 1) / S_CONV_ROWS;
    int64_t nk = (job->B * job->Lk + S_CONV_ROWS - 1) / S_CONV_ROWS;
    const float *src = job->qf;
    uint16_t *dst = job->q;
    int64_t rows = job->B * job->Lq;
    float scale = job->scale;
    if (t >= nq) {
        t -= nq;
        bool is_v = t >= nk;
        t -= is_v ? nk : 0;
        src = is_v ? job->vf : job->kf;
        dst = is_v ? job->v : job->k;
        rows = job->B * job->Lk;
        scale = 1.0f;
    }
    int64_t r0 = t * S_CONV_ROWS, r1 = r0 + S_CONV_ROWS < rows ? r0 + S_CONV_ROWS : rows;
    sd3_cpu_bf16_round(src + r0 * job->HD, dst + r0 * job->HD, (size_t)((r1 - r0) * job->HD),
                       scale);
}

static void
s_att16_task(void *ctx, int64_t task, int thread)
{
    s_att16_job_t *job = ctx;
    sd3_err_t err = {0};
    int64_t qb = task % job->n_qb, bh = task / job->n_qb;
    int64_t b = bh / job->H, h = bh % job->H;
    int64_t Dh = job->Dh, HD = job->HD, Lk = job->Lk;
    int64_t q0 = qb * SD3_ATT_BQ;
    int64_t qn = job->Lq - q0 < SD3_ATT_BQ ? job->Lq - q0 : SD3_ATT_BQ;
    float *S = sd3_cpu_scratch(job->be, thread, 0, (size_t)(SD3_ATT_BQ * SD3_ATT_BK16));
    float *acc = sd3_cpu_scratch(job->be, thread, 1, (size_t)(SD3_ATT_BQ * (Dh + 2)));
    float *tmp = sd3_cpu_scratch(job->be, thread, 2,
                                 (size_t)(SD3_ATT_BQ * SD3_ATT_BK16 / 2 + SD3_ATT_BQ * Dh));
    if (!S || !acc || !tmp)
        goto fail;
    uint16_t *P = (uint16_t *)(tmp + SD3_ATT_BQ * Dh); // [qn, kn] bf16, row stride BK16
    float *m = acc + SD3_ATT_BQ * Dh, *l = m + SD3_ATT_BQ;
    for (int64_t i = 0; i < qn; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    memset(acc, 0, (size_t)(qn * Dh) * sizeof(float));
    const uint16_t *Q = job->q + (b * job->Lq + q0) * HD + h * Dh;
    int64_t k_end = job->causal ? (q0 + qn < Lk ? q0 + qn : Lk) : Lk;
    for (int64_t k0 = 0; k0 < k_end; k0 += SD3_ATT_BK16) {
        int64_t kn = k_end - k0 < SD3_ATT_BK16 ? k_end - k0 : SD3_ATT_BK16;
        const uint16_t *K = job->k + (b * Lk + k0) * HD + h * Dh;
        const uint16_t *V = job->v + (b * Lk + k0) * HD + h * Dh;
        // S = (scale Q) K^T   [qn, kn]
        const sd3_cpu_bf16_mm_t *qk =
            sd3_cpu_bf16_mm_get(job->bf, qn, Dh, kn, HD, HD, true, SD3_ATT_BK16, &err);
        if (!qk || sd3_cpu_bf16_mm_run(job->be, job->bf, qk, thread, Q, K, S) != 0)
            goto fail;
        for (int64_t i = 0; i < qn; i++) {
            float *s = S + i * SD3_ATT_BK16;
            if (job->bias) {
                const float *br = job->bias + (h * job->Lq + q0 + i) * Lk + k0;
                for (int64_t j = 0; j < kn; j++)
                    s[j] += br[j];
            }
            int64_t jn = kn;
            if (job->causal && q0 + i - k0 + 1 < kn)
                jn = q0 + i - k0 + 1 > 0 ? q0 + i - k0 + 1 : 0;
            float alpha;
            float sum = s_row_softmax_step(s, jn, kn, &m[i], &alpha);
            if (alpha != 1.0f) {
                float *a = acc + i * Dh;
                for (int64_t d = 0; d < Dh; d++)
                    a[d] *= alpha;
                l[i] *= alpha;
            }
            l[i] += sum;
            sd3_cpu_bf16_round(s, P + i * SD3_ATT_BK16, (size_t)kn, 1.0f);
        }
        // acc += P V   [qn, Dh]
        const sd3_cpu_bf16_mm_t *pv =
            sd3_cpu_bf16_mm_get(job->bf, qn, kn, Dh, SD3_ATT_BK16, HD, false, Dh, &err);
        if (!pv || sd3_cpu_bf16_mm_run(job->be, job->bf, pv, thread, P, V, tmp) != 0)
            goto fail;
        for (int64_t i = 0; i < qn * Dh; i++)
            acc[i] += tmp[i];
    }
    float *O = job->o + (b * job->Lq + q0) * HD + h * Dh;
    for (int64_t i = 0; i < qn; i++) {
        float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        for (int64_t d = 0; d < Dh; d++)
            O[i * HD + d] = acc[i * Dh + d] * inv;
    }
    return;
fail:
    atomic_store(&job->failed, true);
}

static int
s_attention_bf16(sd3_backend_t *be, sd3_cpu_bf16_t *bf, const s_att_job_t *f32job, sd3_err_t *err)
{
    s_att16_job_t job = {
        .be = be,
        .bf = bf,
        .qf = f32job->q,
        .kf = f32job->k,
        .vf = f32job->v,
        .bias = f32job->bias,
        .o = f32job->o,
        .B = f32job->B,
        .Lq = f32job->Lq,
        .Lk = f32job->Lk,
        .H = f32job->H,
        .Dh = f32job->Dh,
        .HD = f32job->HD,
        .n_qb = f32job->n_qb,
        .scale = f32job->scale,
        .causal = f32job->causal,
    };
    atomic_init(&job.failed, false);
    size_t nq = (size_t)(job.B * job.Lq * job.HD), nk = (size_t)(job.B * job.Lk * job.HD);
    bool mine;
    uint16_t *buf = sd3_cpu_bf16_buf_get(bf, nq + 2 * nk, &mine);
    if (!buf)
        return sd3_err_set(err, SD3_ENOMEM, "cpu attention bf16: out of memory");
    job.q = buf;
    job.k = buf + nq;
    job.v = buf + nq + nk;
    sd3_cpu_pool_t *pool = sd3_cpu_backend_pool(be);
    int64_t cq = (job.B * job.Lq + S_CONV_ROWS - 1) / S_CONV_ROWS;
    int64_t ck = (job.B * job.Lk + S_CONV_ROWS - 1) / S_CONV_ROWS;
    sd3_cpu_pool_run(pool, cq + 2 * ck, s_att16_convert, &job);
    sd3_cpu_pool_run(pool, job.B * job.H * job.n_qb, s_att16_task, &job);
    sd3_cpu_bf16_buf_put(bf, buf, mine);
    if (atomic_load(&job.failed))
        return sd3_err_set(err, SD3_ENOMEM,
                           "cpu attention bf16: a block failed (out of memory, or oneDNN "
                           "refused a shape)");
    return 0;
}

int
sd3_cpu_attention(sd3_backend_t *be, sd3_tensor_t *o, const sd3_tensor_t *q, const sd3_tensor_t *k,
                  const sd3_tensor_t *v, const sd3_attn_opts_t *opts, sd3_err_t *err)
{
    if (s_check("attention", o, q, k, v, opts, err) != 0)
        return SD3_EINVAL;
    s_att_job_t job = {
        .be = be,
        .q = q->data,
        .k = k->data,
        .v = v->data,
        .o = o->data,
        .bias = opts->bias ? opts->bias->data : NULL,
        .B = q->shape[0],
        .Lq = q->shape[1],
        .Lk = k->shape[1],
        .H = opts->n_heads,
        .HD = q->shape[2],
        .Dh = q->shape[2] / opts->n_heads,
        .scale = opts->scale,
        .causal = opts->causal,
    };
    if (job.B == 0 || job.Lq == 0 || job.Dh == 0)
        return 0;
    job.n_qb = (job.Lq + SD3_ATT_BQ - 1) / SD3_ATT_BQ;
    if (job.Lk == 0) { // no keys: softmax over nothing, o = 0
        memset(o->data, 0, sd3_tensor_nbytes(o));
        return 0;
    }
    sd3_cpu_bf16_t *bf = sd3_cpu_backend_bf16(be);
    if (bf)
        return s_attention_bf16(be, bf, &job, err);
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), job.B * job.H * job.n_qb, s_att_task, &job);
    if (atomic_load(&job.failed))
        return sd3_err_set(err, SD3_ENOMEM, "cpu attention: out of memory for block scratch");
    return 0;
}

// ---- reference ---------------------------------------------------------------------------

int
sd3_cpu_attention_ref(sd3_tensor_t *o, const sd3_tensor_t *q, const sd3_tensor_t *k,
                      const sd3_tensor_t *v, const sd3_attn_opts_t *opts, sd3_err_t *err)
{
    if (s_check("attention_ref", o, q, k, v, opts, err) != 0)
        return SD3_EINVAL;
    int64_t B = q->shape[0], Lq = q->shape[1], Lk = k->shape[1], HD = q->shape[2];
    int64_t H = opts->n_heads, Dh = HD / H;
    const float *qd = q->data, *kd = k->data, *vd = v->data;
    const float *bias = opts->bias ? opts->bias->data : NULL;
    float *od = o->data;
    float *p = malloc((size_t)(Lk ? Lk : 1) * sizeof(float)); // one row of scores
    if (!p)
        return sd3_err_set(err, SD3_ENOMEM, "cpu attention_ref: out of memory");
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const float *qi = qd + (b * Lq + i) * HD + h * Dh;
                float mx = -INFINITY;
                for (int64_t j = 0; j < Lk; j++) {
                    const float *kj = kd + (b * Lk + j) * HD + h * Dh;
                    float dot = 0.0f;
                    for (int64_t d = 0; d < Dh; d++)
                        dot += qi[d] * kj[d];
                    float s = dot * opts->scale;
                    if (bias)
                        s += bias[(h * Lq + i) * Lk + j];
                    if (opts->causal && j > i)
                        s = -INFINITY;
                    p[j] = s;
                    mx = s > mx ? s : mx;
                }
                float sum = 0.0f;
                for (int64_t j = 0; j < Lk; j++) {
                    p[j] = mx == -INFINITY ? 0.0f : expf(p[j] - mx);
                    sum += p[j];
                }
                float *oi = od + (b * Lq + i) * HD + h * Dh;
                for (int64_t d = 0; d < Dh; d++) {
                    float acc = 0.0f;
                    for (int64_t j = 0; j < Lk; j++)
                        acc += p[j] * vd[(b * Lk + j) * HD + h * Dh + d];
                    oi[d] = sum > 0.0f ? acc / sum : 0.0f;
                }
            }
    free(p);
    return 0;
}
