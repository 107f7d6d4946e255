/*  sd3_cpu_norm - LayerNorm, RMSNorm and GroupNorm on the CPU
 *
 *  MODEL.md §4.5 (LN, eps 1e-6, no affine), CLIP LayerNorm (eps 1e-5, affine), T5 and QK
 *  RMSNorm (eps 1e-6, learned scale), VAE GroupNorm (32 groups, eps 1e-6, affine, over
 *  (C/G)*H*W values per (batch, group) like PyTorch; biased variance).
 *  The statistics are summed in double: a group of the VAE at 1024x1024 holds millions of
 *  values, where a float running sum loses digits. The normalisation itself is f32.
 *  One code path: the fast version runs the same row code on the pool (rows split in
 *  fixed blocks), so fast and reference give the same bits. In place ok (y == x).  */
#include "sd3_cpu.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *x;
    float *y;
    const float *w, *b; // [D] or NULL
    int64_t rows, D, rows_per_task;
    float eps;
} s_norm_job_t;

// Sums in double with 8 independent accumulators (lane i takes elements i, i+8, ...),
// combined in a fixed order: faster than one chain, the same bits on every run.
static double
s_sum(const float *x, int64_t n, double center, bool square)
{
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    if (square) {
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++) {
                double d = (double)x[i + l] - center;
                acc[l] += d * d;
            }
        for (; i < n; i++) {
            double d = (double)x[i] - center;
            acc[i & 7] += d * d;
        }
    } else {
        for (; i + 8 <= n; i += 8)
            for (int l = 0; l < 8; l++)
                acc[l] += (double)x[i + l];
        for (; i < n; i++)
            acc[i & 7] += (double)x[i];
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// y = (x - mean) / sqrt(var + eps) [* w + b] over one row of D.
static void
s_layernorm_row(const float *x, float *y, const float *w, const float *b, int64_t D, float eps)
{
    double mean = D ? s_sum(x, D, 0.0, false) / (double)D : 0.0;
    double var = D ? s_sum(x, D, mean, true) / (double)D : 0.0;
    float fmean = (float)mean;
    float rstd = (float)(1.0 / sqrt(var + (double)eps));
    for (int64_t i = 0; i < D; i++) {
        float v = (x[i] - fmean) * rstd;
        if (w)
            v = v * w[i];
        if (b)
            v = v + b[i];
        y[i] = v;
    }
}

// y = x / sqrt(mean(x^2) + eps) [* w] over one row of D.
static void
s_rmsnorm_row(const float *x, float *y, const float *w, int64_t D, float eps)
{
    double sq = s_sum(x, D, 0.0, true);
    float rstd = (float)(1.0 / sqrt((D ? sq / (double)D : 0.0) + (double)eps));
    for (int64_t i = 0; i < D; i++) {
        float v = x[i] * rstd;
        y[i] = w ? v * w[i] : v;
    }
}

static void
s_layernorm_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_norm_job_t *job = ctx;
    int64_t r0 = task * job->rows_per_task, r1 = r0 + job->rows_per_task;
    if (r1 > job->rows)
        r1 = job->rows;
    for (int64_t r = r0; r < r1; r++)
        s_layernorm_row(job->x + r * job->D, job->y + r * job->D, job->w, job->b, job->D, job->eps);
}

static void
s_rmsnorm_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_norm_job_t *job = ctx;
    int64_t r0 = task * job->rows_per_task, r1 = r0 + job->rows_per_task;
    if (r1 > job->rows)
        r1 = job->rows;
    for (int64_t r = r0; r < r1; r++)
        s_rmsnorm_row(job->x + r * job->D, job->y + r * job->D, job->w, job->D, job->eps);
}

static int64_t
s_rows_per_task(int64_t D)
{
    int64_t r = 16384 / (D > 0 ? D : 1); // about 64 KiB of input per task
    return r < 1 ? 1 : r;
}

int
sd3_cpu_layernorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                  const sd3_tensor_t *b, float eps, sd3_err_t *err)
{
    float *wf = NULL, *bf = NULL;
    if (sd3_cpu_check_f32(x, "layernorm", "x", err) ||
        sd3_cpu_check_f32(y, "layernorm", "y", err) ||
        sd3_cpu_check_same(x, y, "layernorm", "y", err))
        return SD3_EINVAL;
    int64_t D = sd3_tensor_cols(x);
    int rc = sd3_cpu_vec_f32(w, D, "layernorm", "weight", &wf, err);
    if (rc == 0)
        rc = sd3_cpu_vec_f32(b, D, "layernorm", "bias", &bf, err);
    if (rc != 0) {
        free(wf);
        return rc;
    }
    s_norm_job_t job = {.x = x->data,
                        .y = y->data,
                        .w = wf,
                        .b = bf,
                        .rows = sd3_tensor_rows(x),
                        .D = D,
                        .rows_per_task = s_rows_per_task(D),
                        .eps = eps};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be),
                     (job.rows + job.rows_per_task - 1) / job.rows_per_task, s_layernorm_task,
                     &job);
    free(wf);
    free(bf);
    return 0;
}

int
sd3_cpu_rmsnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                float eps, sd3_err_t *err)
{
    float *wf = NULL;
    if (sd3_cpu_check_f32(x, "rmsnorm", "x", err) || sd3_cpu_check_f32(y, "rmsnorm", "y", err) ||
        sd3_cpu_check_same(x, y, "rmsnorm", "y", err))
        return SD3_EINVAL;
    int64_t D = sd3_tensor_cols(x);
    int rc = sd3_cpu_vec_f32(w, D, "rmsnorm", "weight", &wf, err);
    if (rc != 0)
        return rc;
    s_norm_job_t job = {.x = x->data,
                        .y = y->data,
                        .w = wf,
                        .rows = sd3_tensor_rows(x),
                        .D = D,
                        .rows_per_task = s_rows_per_task(D),
                        .eps = eps};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be),
                     (job.rows + job.rows_per_task - 1) / job.rows_per_task, s_rmsnorm_task, &job);
    free(wf);
    return 0;
}

typedef struct {
    const float *x;
    float *y;
    const float *w, *b; // [C] or NULL
    int64_t C, HW, groups;
    float eps;
} s_gn_job_t;

// One (batch, group): (C/G)*HW contiguous values, channel c scaled by w[c], shifted by b[c].
static void
s_groupnorm_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_gn_job_t *job = ctx;
    int64_t cpg = job->C / job->groups, g = task % job->groups;
    int64_t n = cpg * job->HW, off = task * n; // batches and groups are both contiguous
    const float *x = job->x + off;
    float *y = job->y + off;
    double mean = n ? s_sum(x, n, 0.0, false) / (double)n : 0.0;
    double sq = s_sum(x, n, mean, true);
    float fmean = (float)mean;
    float rstd = (float)(1.0 / sqrt((n ? sq / (double)n : 0.0) + (double)job->eps));
    for (int64_t c = 0; c < cpg; c++) {
        int64_t ch = g * cpg + c;
        float wc = job->w ? job->w[ch] : 1.0f, bc = job->b ? job->b[ch] : 0.0f;
        const float *xc = x + c * job->HW;
        float *yc = y + c * job->HW;
        for (int64_t i = 0; i < job->HW; i++) {
            float v = (xc[i] - fmean) * rstd;
            if (job->w)
                v = v * wc;
            if (job->b)
                v = v + bc;
            yc[i] = v;
        }
    }
}

int
sd3_cpu_groupnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                  const sd3_tensor_t *b, int groups, float eps, sd3_err_t *err)
{
    float *wf = NULL, *bf = NULL;
    char s[96];
    if (sd3_cpu_check_f32(x, "groupnorm", "x", err) ||
        sd3_cpu_check_f32(y, "groupnorm", "y", err) ||
        sd3_cpu_check_same(x, y, "groupnorm", "y", err))
        return SD3_EINVAL;
    if (x->ndim != 4)
        return sd3_err_set(err, SD3_EINVAL, "cpu groupnorm: x is %s, want [B, C, H, W]",
                           sd3_shape_str(x->ndim, x->shape, s, sizeof s));
    int64_t C = x->shape[1];
    if (groups <= 0 || C % groups != 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "cpu groupnorm: %lld channels not divisible into "
                           "%d groups",
                           (long long)C, groups);
    int rc = sd3_cpu_vec_f32(w, C, "groupnorm", "weight", &wf, err);
    if (rc == 0)
        rc = sd3_cpu_vec_f32(b, C, "groupnorm", "bias", &bf, err);
    if (rc != 0) {
        free(wf);
        return rc;
    }
    s_gn_job_t job = {.x = x->data,
                      .y = y->data,
                      .w = wf,
                      .b = bf,
                      .C = C,
                      .HW = x->shape[2] * x->shape[3],
                      .groups = groups,
                      .eps = eps};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), x->shape[0] * groups, s_groupnorm_task, &job);
    free(wf);
    free(bf);
    return 0;
}
