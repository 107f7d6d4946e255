/*  test_cpu_attention_bf16 - CPU attention at precision bf16 (both products in oneDNN)
 *
 *  Against the naive f32 reference run on the same inputs rounded to bf16 (q times scale,
 *  k, v): what is left is P rounded to bf16 before P V (each weight within 2^-8 relative, and
 *  the weights of a row sum to one, so |o| moves by at most ~2^-8 max|v|) and the order of
 *  the f32 sums. Shapes across the 128-query blocks and the 1024-key blocks of the bf16
 *  path (L = 1, 17, 77, 300, 1100, 2100), Lq != Lk, causal (CLIP), bias with -inf (T5),
 *  scale 1 and 1/8; 1 vs 2 threads bit-identical; every output written (o starts NaN).
 *  Skips (77) where the CPU has no bf16 kernel in oneDNN.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 99;
static double s_worst; // over all cases, vs the rounded-input reference

static sd3_tensor_t *
s_rand(int ndim, const int64_t *shape, float amp)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)t->data)[i] = amp * sd3_test_randf(&s_seed);
    return t;
}

// t (f32) rounded to bf16 and back, times scale first.
static sd3_tensor_t *
s_rounded(const sd3_tensor_t *t, float scale)
{
    sd3_tensor_t *r = sd3_tensor_new(SD3_F32, t->ndim, t->shape);
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)r->data)[i] = sd3_bf16_to_f32(sd3_f32_to_bf16(((float *)t->data)[i] * scale));
    return r;
}

static void
s_case(sd3_backend_t *be1, sd3_backend_t *be2, int64_t B, int64_t Lq, int64_t Lk, int H, int64_t Dh,
       bool causal, bool with_bias, float scale)
{
    sd3_err_t err = {0};
    int64_t qs[3] = {B, Lq, H * Dh}, ks[3] = {B, Lk, H * Dh};
    sd3_tensor_t *q = s_rand(3, qs, 2.0f), *k = s_rand(3, ks, 2.0f), *v = s_rand(3, ks, 1.0f);
    sd3_tensor_t *bias = with_bias ? s_rand(3, (int64_t[]){H, Lq, Lk}, 3.0f) : NULL;
    if (bias && Lk > 2)
        for (int64_t i = 0; i < H * Lq; i++)
            ((float *)bias->data)[i * Lk + (i % Lk)] = -INFINITY;
    sd3_tensor_t *qr = s_rounded(q, scale), *kr = s_rounded(k, 1.0f), *vr = s_rounded(v, 1.0f);
    sd3_tensor_t *o_ref = sd3_tensor_new(SD3_F32, 3, qs), *o1 = sd3_tensor_new(SD3_F32, 3, qs);
    sd3_tensor_t *o2 = sd3_tensor_new(SD3_F32, 3, qs);
    for (int64_t i = 0; i < sd3_tensor_numel(o1); i++)
        ((float *)o1->data)[i] = ((float *)o2->data)[i] = NAN;
    sd3_attn_opts_t opts = {.n_heads = H, .scale = scale, .causal = causal, .bias = bias};
    sd3_attn_opts_t ropts = opts;
    ropts.scale = 1.0f; // already in qr
    CHECK(sd3_cpu_attention_ref(o_ref, qr, kr, vr, &ropts, &err) == 0);
    CHECK_MSG(be1->ops->attention(be1, o1, q, k, v, &opts, &err) == 0, "%s", err.msg);
    CHECK_MSG(be2->ops->attention(be2, o2, q, k, v, &opts, &err) == 0, "%s", err.msg);
    size_t n = (size_t)sd3_tensor_numel(o_ref);
    double worst = sd3_test_maxdiff(o_ref->data, o1->data, n);
    int nan = 0;
    for (size_t i = 0; i < n; i++)
        nan += isnan(((float *)o1->data)[i]);
    s_worst = worst > s_worst ? worst : s_worst;
    // |v| < 1: P's rounding moves o by <= 2^-8 (0.0039); margin for the f32 sums
    CHECK_MSG(nan == 0 && worst < 5e-3,
              "B=%lld Lq=%lld Lk=%lld H=%d causal=%d bias=%d: max diff %g, %d NaN", (long long)B,
              (long long)Lq, (long long)Lk, H, causal, with_bias, worst, nan);
    CHECK_MSG(memcmp(o1->data, o2->data, n * 4) == 0, "Lq=%lld Lk=%lld: 1 and 2 threads differ",
              (long long)Lq, (long long)Lk);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&qr);
    sd3_tensor_destroy(&kr);
    sd3_tensor_destroy(&vr);
    sd3_tensor_destroy(&bias);
    sd3_tensor_destroy(&o_ref);
    sd3_tensor_destroy(&o1);
    sd3_tensor_destroy(&o2);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err), *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2)
        return 1;
    if (sd3_backend_set_precision(be1, "bf16", &err) != 0 ||
        sd3_backend_set_precision(be2, "bf16", &err) != 0) {
        fprintf(stderr, "skip: %s\n", err.msg);
        sd3_backend_destroy(&be1);
        sd3_backend_destroy(&be2);
        return 77;
    }
    s_case(be1, be2, 1, 1, 1, 1, 64, false, false, 0.125f);
    s_case(be1, be2, 2, 17, 17, 3, 64, false, false, 0.125f);
    s_case(be1, be2, 2, 77, 77, 2, 64, true, false, 0.125f);   // CLIP
    s_case(be1, be2, 1, 77, 77, 2, 64, false, true, 1.0f);     // T5
    s_case(be1, be2, 2, 300, 202, 2, 64, false, false, 0.125f); // Lq != Lk
    s_case(be1, be2, 1, 1100, 1100, 2, 64, false, false, 0.125f);
    s_case(be1, be2, 1, 130, 2100, 1, 32, false, true, 0.125f);
    fprintf(stderr, "worst vs the rounded-input reference: %g\n", s_worst);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
