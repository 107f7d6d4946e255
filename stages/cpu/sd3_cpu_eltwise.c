/*  sd3_cpu_eltwise - elementwise and data-movement ops on the CPU
 *
 *  act (SiLU, GELU tanh/erf, quick-GELU), softmax over the last dim, add (same shape or a
 *  [D] row broadcast), adaLN modulate and gated residual (MODEL.md §4.5: chunk i of mod is
 *  columns [i*C, (i+1)*C)), nearest 2x upsample, copy2d and fill. Plain loops: each element
 *  has one formula, so the pool only splits the index range (fixed blocks) and the bits are
 *  the same for any thread count, and the same as be == NULL (one thread). The exception
 *  is act, whose fast path uses a vector exp (sd3_cpu.h); sd3_cpu_act_ref is its reference.  */
#include "sd3_cpu.h"
#include "sd3_cpu_simd.h"

#include <math.h>
#include <string.h>

#define SD3_ELT_BLOCK 32768 // elements (or rows x cols) per task

float
sd3_cpu_act1(sd3_act_t kind, float x)
{
    switch (kind) {
    case SD3_ACT_SILU:
        return x / (1.0f + expf(-x));
    case SD3_ACT_GELU_TANH: // sqrt(2/pi) = 0.7978845608...
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case SD3_ACT_GELU_ERF: // 1/sqrt(2) = 0.7071067811...
        return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case SD3_ACT_QUICK_GELU:
        return x / (1.0f + expf(-1.702f * x));
    }
    return x;
}

// ---- act ---------------------------------------------------------------------------------

typedef struct {
    const float *x;
    float *y;
    int64_t n;
    sd3_act_t kind;
} s_act_job_t;

static void
s_act_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_act_job_t *job = ctx;
    int64_t i0 = task * SD3_ELT_BLOCK,
            i1 = i0 + SD3_ELT_BLOCK < job->n ? i0 + SD3_ELT_BLOCK : job->n;
    int64_t i = i0;
#if SD3_CPU_AVX512
    if (job->kind != SD3_ACT_GELU_ERF) {
        // y = x / (1 + exp(-k x)); GELU tanh uses 2u in place of k x (sigmoid(2u) =
        // 0.5 (1 + tanh(u))), u = sqrt(2/pi) (x + 0.044715 x^3).
        const __m512 one = _mm512_set1_ps(1.0f);
        const __m512 k = _mm512_set1_ps(job->kind == SD3_ACT_QUICK_GELU ? -1.702f : -1.0f);
        const __m512 c0 = _mm512_set1_ps(-2.0f * 0.7978845608028654f);
        const __m512 c1 = _mm512_set1_ps(0.044715f);
        for (; i < i1; i += 16) {
            __mmask16 m = sd3_cpu_mask16(i1 - i);
            __m512 x = _mm512_maskz_loadu_ps(m, job->x + i), t;
            if (job->kind == SD3_ACT_GELU_TANH)
                t = _mm512_mul_ps(c0,
                                  _mm512_fmadd_ps(_mm512_mul_ps(c1, x), _mm512_mul_ps(x, x), x));
            else
                t = _mm512_mul_ps(k, x);
            __m512 y = _mm512_div_ps(x, _mm512_add_ps(one, sd3_cpu_exp512(t)));
            _mm512_mask_storeu_ps(job->y + i, m, y);
        }
        return;
    }
#endif
    for (; i < i1; i++)
        job->y[i] = sd3_cpu_act1(job->kind, job->x[i]);
}

int
sd3_cpu_act(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind,
            sd3_err_t *err)
{
    if (sd3_cpu_check_f32(x, "act", "x", err) || sd3_cpu_check_f32(y, "act", "y", err) ||
        sd3_cpu_check_same(x, y, "act", "y", err))
        return SD3_EINVAL;
    if ((unsigned)kind > SD3_ACT_QUICK_GELU)
        return sd3_err_set(err, SD3_EINVAL, "cpu act: unknown activation %d", (int)kind);
    s_act_job_t job = {.x = x->data, .y = y->data, .n = sd3_tensor_numel(x), .kind = kind};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), (job.n + SD3_ELT_BLOCK - 1) / SD3_ELT_BLOCK,
                     s_act_task, &job);
    return 0;
}

int
sd3_cpu_act_ref(sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind, sd3_err_t *err)
{
    if (sd3_cpu_check_f32(x, "act_ref", "x", err) || sd3_cpu_check_f32(y, "act_ref", "y", err) ||
        sd3_cpu_check_same(x, y, "act_ref", "y", err))
        return SD3_EINVAL;
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t i = 0; i < sd3_tensor_numel(x); i++)
        yd[i] = sd3_cpu_act1(kind, xd[i]);
    return 0;
}

// ---- softmax -----------------------------------------------------------------------------

typedef struct {
    const float *x;
    float *y;
    int64_t rows, D, rows_per_task;
} s_rows_job_t;

static void
s_softmax_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_rows_job_t *job = ctx;
    int64_t r0 = task * job->rows_per_task, r1 = r0 + job->rows_per_task;
    if (r1 > job->rows)
        r1 = job->rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = job->x + r * job->D;
        float *y = job->y + r * job->D;
        float mx = -INFINITY;
        for (int64_t i = 0; i < job->D; i++)
            mx = x[i] > mx ? x[i] : mx;
        float sum = 0.0f;
        for (int64_t i = 0; i < job->D; i++) {
            float e = (mx == -INFINITY) ? 0.0f : expf(x[i] - mx); // an all -inf row gives 0
            y[i] = e;
            sum += e;
        }
        float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int64_t i = 0; i < job->D; i++)
            y[i] *= inv;
    }
}

int
sd3_cpu_softmax(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err)
{
    if (sd3_cpu_check_f32(x, "softmax", "x", err) || sd3_cpu_check_f32(y, "softmax", "y", err) ||
        sd3_cpu_check_same(x, y, "softmax", "y", err))
        return SD3_EINVAL;
    int64_t D = sd3_tensor_cols(x);
    s_rows_job_t job = {.x = x->data,
                        .y = y->data,
                        .rows = sd3_tensor_rows(x),
                        .D = D,
                        .rows_per_task = D > 0 && D < SD3_ELT_BLOCK ? SD3_ELT_BLOCK / D : 1};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be),
                     (job.rows + job.rows_per_task - 1) / job.rows_per_task, s_softmax_task, &job);
    return 0;
}

// ---- add ---------------------------------------------------------------------------------

typedef struct {
    const float *a, *b;
    float *y;
    int64_t n, D; // D > 0: b is a [D] row broadcast; else same shape
} s_add_job_t;

static void
s_add_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_add_job_t *job = ctx;
    int64_t i0 = task * SD3_ELT_BLOCK,
            i1 = i0 + SD3_ELT_BLOCK < job->n ? i0 + SD3_ELT_BLOCK : job->n;
    if (job->D > 0)
        for (int64_t i = i0; i < i1; i++)
            job->y[i] = job->a[i] + job->b[i % job->D];
    else
        for (int64_t i = i0; i < i1; i++)
            job->y[i] = job->a[i] + job->b[i];
}

int
sd3_cpu_add(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *a, const sd3_tensor_t *b,
            sd3_err_t *err)
{
    char sa[96], sb[96];
    if (sd3_cpu_check_f32(a, "add", "a", err) || sd3_cpu_check_f32(b, "add", "b", err) ||
        sd3_cpu_check_f32(y, "add", "y", err) || sd3_cpu_check_same(a, y, "add", "y", err))
        return SD3_EINVAL;
    s_add_job_t job = {.a = a->data, .b = b->data, .y = y->data, .n = sd3_tensor_numel(a)};
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (!same) {
        if (b->ndim != 1 || b->shape[0] != sd3_tensor_cols(a))
            return sd3_err_set(err, SD3_EINVAL,
                               "cpu add: a %s and b %s: want equal shapes or "
                               "b [D] with a [..., D]",
                               sd3_shape_str(a->ndim, a->shape, sa, sizeof sa),
                               sd3_shape_str(b->ndim, b->shape, sb, sizeof sb));
        job.D = b->shape[0];
        if (job.D == 0)
            return 0;
    }
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), (job.n + SD3_ELT_BLOCK - 1) / SD3_ELT_BLOCK,
                     s_add_task, &job);
    return 0;
}

// ---- modulate, gate_add ----------------------------------------------------------------

typedef struct {
    const float *x, *mod;
    float *y;
    int64_t B, T, C, mod_cols;
    int shift_chunk, scale_chunk; // modulate; gate_add uses scale_chunk as the gate
    int64_t rows_per_task;
} s_mod_job_t;

// Checks x [B, T, C] (or [B, C] = T 1) against mod [B, n*C] and the chunk indices.
static int
s_mod_check(const char *op, const sd3_tensor_t *x, const sd3_tensor_t *mod, int c1, int c2,
            s_mod_job_t *job, sd3_err_t *err)
{
    sd3_mod_dims_t d;
    if (sd3_cpu_check_f32(mod, op, "mod", err) ||
        sd3_backend_check_mod("cpu", op, x, mod, c1, c2, &d, err))
        return SD3_EINVAL;
    job->B = d.B, job->T = d.T, job->C = d.C, job->mod_cols = d.mod_cols;
    job->rows_per_task = job->C < SD3_ELT_BLOCK ? SD3_ELT_BLOCK / job->C : 1;
    return 0;
}

static void
s_modulate_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_mod_job_t *job = ctx;
    int64_t rows = job->B * job->T, r0 = task * job->rows_per_task;
    int64_t r1 = r0 + job->rows_per_task < rows ? r0 + job->rows_per_task : rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *m = job->mod + (r / job->T) * job->mod_cols;
        const float *shift = m + job->shift_chunk * job->C, *scale = m + job->scale_chunk * job->C;
        const float *x = job->x + r * job->C;
        float *y = job->y + r * job->C;
        for (int64_t i = 0; i < job->C; i++)
            y[i] = x[i] * (1.0f + scale[i]) + shift[i];
    }
}

int
sd3_cpu_modulate(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *mod,
                 int shift_chunk, int scale_chunk, sd3_err_t *err)
{
    s_mod_job_t job = {0};
    if (sd3_cpu_check_f32(x, "modulate", "x", err) || sd3_cpu_check_f32(y, "modulate", "y", err) ||
        sd3_cpu_check_same(x, y, "modulate", "y", err) ||
        s_mod_check("modulate", x, mod, shift_chunk, scale_chunk, &job, err))
        return SD3_EINVAL;
    job.x = x->data;
    job.y = y->data;
    job.mod = mod->data;
    job.shift_chunk = shift_chunk;
    job.scale_chunk = scale_chunk;
    int64_t rows = job.B * job.T;
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), (rows + job.rows_per_task - 1) / job.rows_per_task,
                     s_modulate_task, &job);
    return 0;
}

static void
s_gate_add_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_mod_job_t *job = ctx;
    int64_t rows = job->B * job->T, r0 = task * job->rows_per_task;
    int64_t r1 = r0 + job->rows_per_task < rows ? r0 + job->rows_per_task : rows;
    for (int64_t r = r0; r < r1; r++) {
        const float *gate = job->mod + (r / job->T) * job->mod_cols + job->scale_chunk * job->C;
        const float *src = job->x + r * job->C; // the branch output y
        float *dst = job->y + r * job->C;       // the residual stream x
        for (int64_t i = 0; i < job->C; i++)
            dst[i] = dst[i] + gate[i] * src[i];
    }
}

int
sd3_cpu_gate_add(sd3_backend_t *be, sd3_tensor_t *x, const sd3_tensor_t *y, const sd3_tensor_t *mod,
                 int gate_chunk, sd3_err_t *err)
{
    s_mod_job_t job = {0};
    if (sd3_cpu_check_f32(x, "gate_add", "x", err) || sd3_cpu_check_f32(y, "gate_add", "y", err) ||
        sd3_cpu_check_same(x, y, "gate_add", "y", err) ||
        s_mod_check("gate_add", x, mod, gate_chunk, gate_chunk, &job, err))
        return SD3_EINVAL;
    job.x = y->data;
    job.y = x->data;
    job.mod = mod->data;
    job.scale_chunk = gate_chunk;
    int64_t rows = job.B * job.T;
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), (rows + job.rows_per_task - 1) / job.rows_per_task,
                     s_gate_add_task, &job);
    return 0;
}

// ---- upsample2x --------------------------------------------------------------------------

typedef struct {
    const float *x;
    float *y;
    int64_t H, W;
} s_up_job_t;

// One (batch, channel) plane: y[2i+di, 2j+dj] = x[i, j].
static void
s_up_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    s_up_job_t *job = ctx;
    int64_t H = job->H, W = job->W;
    const float *x = job->x + task * H * W;
    float *y = job->y + task * 4 * H * W;
    for (int64_t i = 0; i < H; i++) {
        float *r0 = y + (2 * i) * (2 * W), *r1 = r0 + 2 * W;
        for (int64_t j = 0; j < W; j++) {
            r0[2 * j] = r0[2 * j + 1] = x[i * W + j];
        }
        memcpy(r1, r0, (size_t)(2 * W) * sizeof(float));
    }
}

int
sd3_cpu_upsample2x(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err)
{
    if (sd3_cpu_check_f32(x, "upsample2x", "x", err) ||
        sd3_cpu_check_f32(y, "upsample2x", "y", err) ||
        sd3_backend_check_upsample2x("cpu", y, x, err))
        return SD3_EINVAL;
    s_up_job_t job = {.x = x->data, .y = y->data, .H = x->shape[2], .W = x->shape[3]};
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), x->shape[0] * x->shape[1], s_up_task, &job);
    return 0;
}

// ---- copy2d ------------------------------------------------------------------------------

int
sd3_cpu_copy2d(sd3_backend_t *be, sd3_tensor_t *dst, int64_t dst_row, int64_t dst_col,
               const sd3_tensor_t *src, int64_t src_row, int64_t src_col, int64_t n_rows,
               int64_t n_cols, sd3_err_t *err)
{
    (void)be; // memory bound and usually small: one thread
    int64_t d[3], s[3];
    if (sd3_cpu_check_f32(dst, "copy2d", "dst", err) ||
        sd3_cpu_check_f32(src, "copy2d", "src", err))
        return SD3_EINVAL;
    if (sd3_backend_check_copy2d("cpu", dst, dst_row, dst_col, src, src_row, src_col, n_rows,
                                 n_cols, d, s, err))
        return SD3_EINVAL;
    const float *sp = src->data;
    float *dp = dst->data;
    for (int64_t b = 0; b < d[0]; b++)
        for (int64_t r = 0; r < n_rows; r++)
            memmove(dp + (b * d[1] + dst_row + r) * d[2] + dst_col,
                    sp + (b * s[1] + src_row + r) * s[2] + src_col, (size_t)n_cols * sizeof(float));
    return 0;
}

// ---- fill --------------------------------------------------------------------------------

int
sd3_cpu_fill(sd3_backend_t *be, sd3_tensor_t *t, float value, sd3_err_t *err)
{
    (void)be;
    if (!t || !t->data || t->where != SD3_HOST || !sd3_dtype_is_float(t->dtype))
        return sd3_err_set(err, SD3_EINVAL, "cpu fill: want a host float tensor");
    int64_t n = sd3_tensor_numel(t);
    if (t->dtype == SD3_F32) {
        float *p = t->data;
        for (int64_t i = 0; i < n; i++)
            p[i] = value;
        return 0;
    }
    size_t esz = sd3_dtype_size(t->dtype);
    for (int64_t i = 0; i < n; i++)
        sd3_dtype_from_f32(t->dtype, &value, (char *)t->data + (size_t)i * esz, 1);
    return 0;
}
