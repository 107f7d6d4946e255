/*  test_cpu_attention - flash-style CPU attention against the naive softmax(QK^T)V
 *
 *  Small and odd shapes (L = 1, 3, 17, 77, 202, 300: across the 128-query and 256-key
 *  blocks), Lq != Lk, causal (CLIP), additive bias [H, Lq, Lk] with -inf entries (T5),
 *  scale 1 and 1/8; 1 vs 2 threads bit-identical; every output written (o starts NaN).
 *  One run at L = 4250, H = 2, Dh = 64 (SD3 at 1024x1024 has 24 heads of the same length)
 *  checks sampled rows and that the peak RSS grows far less than one [H, L, L] score matrix.
 *  Bad shapes: SD3_EINVAL.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 4242;

static sd3_tensor_t *
s_rand(int ndim, const int64_t *shape, float amp)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)t->data)[i] = amp * sd3_test_randf(&s_seed);
    return t;
}

static void
s_fill_nan(sd3_tensor_t *t)
{
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)t->data)[i] = NAN;
}

static void
s_case(sd3_backend_t *be1, sd3_backend_t *be2, int64_t B, int64_t Lq, int64_t Lk, int H, int64_t Dh,
       bool causal, bool with_bias, float scale)
{
    sd3_err_t err = {0};
    int64_t qs[3] = {B, Lq, H * Dh}, ks[3] = {B, Lk, H * Dh};
    sd3_tensor_t *q = s_rand(3, qs, 2.0f), *k = s_rand(3, ks, 2.0f), *v = s_rand(3, ks, 1.0f);
    sd3_tensor_t *bias = with_bias ? s_rand(3, (int64_t[]){H, Lq, Lk}, 3.0f) : NULL;
    if (bias && Lk > 2) // some masked entries, like a padding mask
        for (int64_t i = 0; i < H * Lq; i++)
            ((float *)bias->data)[i * Lk + (i % Lk)] = -INFINITY;
    sd3_tensor_t *o_ref = sd3_tensor_new(SD3_F32, 3, qs), *o1 = sd3_tensor_new(SD3_F32, 3, qs);
    sd3_tensor_t *o2 = sd3_tensor_new(SD3_F32, 3, qs);
    s_fill_nan(o1);
    s_fill_nan(o2);
    sd3_attn_opts_t opts = {.n_heads = H, .scale = scale, .causal = causal, .bias = bias};
    CHECK(sd3_cpu_attention_ref(o_ref, q, k, v, &opts, &err) == 0);
    CHECK_MSG(be1->ops->attention(be1, o1, q, k, v, &opts, &err) == 0, "%s", err.msg);
    CHECK_MSG(be2->ops->attention(be2, o2, q, k, v, &opts, &err) == 0, "%s", err.msg);
    size_t n = (size_t)sd3_tensor_numel(o_ref);
    double worst = sd3_test_maxdiff(o_ref->data, o1->data, n);
    // outputs are convex combinations of v (|v| < 1); the two orders of summation differ by
    // float rounding over Lk terms and Dh products.
    CHECK_MSG(worst < 2e-5, "B=%lld Lq=%lld Lk=%lld H=%d Dh=%lld causal=%d bias=%d: max diff %g",
              (long long)B, (long long)Lq, (long long)Lk, H, (long long)Dh, causal, with_bias,
              worst);
    CHECK_MSG(memcmp(o1->data, o2->data, n * 4) == 0, "Lq=%lld Lk=%lld: 1 and 2 threads differ",
              (long long)Lq, (long long)Lk);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&bias);
    sd3_tensor_destroy(&o_ref);
    sd3_tensor_destroy(&o1);
    sd3_tensor_destroy(&o2);
}

static size_t
s_rss_peak(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6))
            kb = strtoull(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024;
}

// L = 4250 (SD3 at 1024x1024: 4096 image + 154 text tokens), H heads of 64.
static void
s_large(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    const int64_t L = 4250, H = 2, Dh = 64;
    int64_t shape[3] = {1, L, H * Dh};
    sd3_tensor_t *q = s_rand(3, shape, 2.0f), *k = s_rand(3, shape, 2.0f);
    sd3_tensor_t *v = s_rand(3, shape, 1.0f), *o = sd3_tensor_new(SD3_F32, 3, shape);
    s_fill_nan(o);
    size_t before = s_rss_peak();
    sd3_attn_opts_t opts = {.n_heads = (int)H, .scale = 0.125f};
    CHECK_MSG(be->ops->attention(be, o, q, k, v, &opts, &err) == 0, "%s", err.msg);
    size_t grew = s_rss_peak() - before;
    size_t scores = (size_t)(H * L * L) * sizeof(float); // 144 MB
    CHECK_MSG(grew < scores / 8, "peak RSS grew %zu bytes (full scores are %zu)", grew, scores);
    // check sampled query rows against a direct double computation
    const float *qd = q->data, *kd = k->data, *vd = v->data, *od = o->data;
    double *p = malloc((size_t)L * sizeof(double)), worst = 0;
    int64_t rows[4] = {0, 127, 2048, L - 1};
    for (int r = 0; r < 4; r++)
        for (int64_t h = 0; h < H; h++) {
            int64_t i = rows[r];
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < L; j++) {
                double dot = 0;
                for (int64_t d = 0; d < Dh; d++)
                    dot += (double)qd[i * H * Dh + h * Dh + d] * kd[j * H * Dh + h * Dh + d];
                p[j] = dot * 0.125;
                mx = fmax(mx, p[j]);
            }
            for (int64_t j = 0; j < L; j++)
                sum += (p[j] = exp(p[j] - mx));
            for (int64_t d = 0; d < Dh; d++) {
                double acc = 0;
                for (int64_t j = 0; j < L; j++)
                    acc += p[j] * vd[j * H * Dh + h * Dh + d];
                worst = fmax(worst, fabs(acc / sum - od[i * H * Dh + h * Dh + d]));
            }
        }
    CHECK_MSG(worst < 1e-5, "L=4250: max diff %g on sampled rows", worst);
    int nan = 0;
    for (int64_t i = 0; i < sd3_tensor_numel(o); i++)
        nan += isnan(od[i]);
    CHECK_MSG(nan == 0, "L=4250: %d outputs not written", nan);
    free(p);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&o);
}

static void
s_bad(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *q = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 4, 12});
    sd3_tensor_t *k = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 5, 12});
    sd3_tensor_t *v6 = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 6, 12});
    sd3_tensor_t *o = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 4, 12});
    sd3_tensor_t *bias = sd3_tensor_new(SD3_F32, 3, (int64_t[]){2, 4, 4});
    sd3_attn_opts_t opts = {.n_heads = 5, .scale = 1};
    CHECK(be->ops->attention(be, o, q, k, k, &opts, &err) == SD3_EINVAL); // 12 % 5
    opts.n_heads = 2;
    CHECK(be->ops->attention(be, o, q, k, v6, &opts, &err) == SD3_EINVAL); // Lk of k != v
    CHECK(be->ops->attention(be, q, q, k, k, &opts, &err) == SD3_EINVAL);  // o aliases q
    opts.bias = bias;
    CHECK(be->ops->attention(be, o, q, k, k, &opts, &err) == SD3_EINVAL); // bias Lk 4 != 5
    CHECK(be->ops->attention(be, o, q, k, k, NULL, &err) == SD3_EINVAL);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&v6);
    sd3_tensor_destroy(&o);
    sd3_tensor_destroy(&bias);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err), *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2)
        return 1;
    s_case(be1, be2, 1, 1, 1, 1, 8, false, false, 0.125f);
    s_case(be1, be2, 2, 3, 3, 2, 8, true, false, 0.35f);
    s_case(be1, be2, 1, 17, 17, 3, 64, false, true, 1.0f);
    s_case(be1, be2, 2, 77, 77, 2, 64, true, false, 0.125f);    // CLIP
    s_case(be1, be2, 1, 202, 202, 2, 64, false, false, 0.125f); // 154 + 48 tokens
    s_case(be1, be2, 1, 300, 300, 1, 64, true, true, 1.0f);     // causal + bias
    s_case(be1, be2, 1, 130, 300, 2, 16, false, true, 1.0f);    // Lq != Lk, T5 style
    s_case(be1, be2, 1, 5, 513, 1, 64, false, false, 0.125f);   // keys over 2 blocks
    s_case(be1, be2, 2, 300, 77, 1, 8, true, false, 0.125f);    // causal, Lq > Lk
    s_bad(be1);
    s_large(be2);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
