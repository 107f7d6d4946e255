/*  test_attention - CUDA flash attention against the CPU's naive attention
 *
 *  sd3_cpu_attention_ref computes one full row of scores at a time (the plain formula), the
 *  CUDA kernel never holds more than a 64x64 tile. Lengths of SD3: 154 + 4096 (1024 px
 *  image + context), 154 + 1, and 77 (CLIP, causal; T5 with an additive f32 bias [H, Lq,
 *  Lk], scale 1). Also Lq != Lk, B = 1 and 2, and the plain kernel (head dim 80, f32 tensors).
 *  The same call twice gives the same bits.  */
#include <math.h>
#include <stdio.h>

#include "sd3_cpu.h"
#include "sd3_gpu_test.h"

typedef struct {
    int64_t B, Lq, Lk;
    int H, Dh;
    bool causal, bias;
    float scale;
    sd3_dtype_t dtype; // of q, k, v, o on the device
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c)
{
    sd3_err_t err = {0};
    char what[160];
    int64_t HD = (int64_t)c->H * c->Dh;
    int64_t qs[3] = {c->B, c->Lq, HD}, ks[3] = {c->B, c->Lk, HD}, bs[3] = {c->H, c->Lq, c->Lk};
    // q larger than k and v: peaked rows, so the online max really moves between tiles
    sd3_tensor_t *q = sd3_gpu_test_rand(gt, 3, qs, 3.0f), *k = sd3_gpu_test_rand(gt, 3, ks, 1.0f);
    sd3_tensor_t *v = sd3_gpu_test_rand(gt, 3, ks, 1.0f);
    sd3_tensor_t *bias = c->bias ? sd3_gpu_test_rand(gt, 3, bs, 4.0f) : NULL;
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 3, qs);
    sd3_tensor_t *dq = sd3_gpu_test_dev(gt, q, c->dtype), *dk = sd3_gpu_test_dev(gt, k, c->dtype);
    sd3_tensor_t *dv = sd3_gpu_test_dev(gt, v, c->dtype);
    sd3_tensor_t *dbias = bias ? sd3_gpu_test_dev(gt, bias, SD3_F32) : NULL;
    sd3_tensor_t *dout = sd3_gpu_test_dev_nan(gt, c->dtype, 3, qs);
    sd3_attn_opts_t ho = {c->H, c->scale, c->causal, bias};
    sd3_attn_opts_t dopts = {c->H, c->scale, c->causal, dbias};
    snprintf(what, sizeof what, "attention B=%lld Lq=%lld Lk=%lld H=%d Dh=%d %s%s%s",
             (long long)c->B, (long long)c->Lq, (long long)c->Lk, c->H, c->Dh,
             sd3_dtype_name(c->dtype), c->causal ? " causal" : "", c->bias ? " bias" : "");
    CHECK(sd3_cpu_attention_ref(ref, q, k, v, &ho, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->attention(gt->cuda, dout, dq, dk, dv, &dopts, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dout);
        if (c->dtype == SD3_BF16) // P rounded to bf16 before P V, then the output: 2^-7
            sd3_gpu_test_compare(what, got, ref, 2 * SD3_GT_BF16_ULP, 2 * SD3_GT_BF16_ULP,
                                 SD3_GT_NMSE_ATTN);
        else // f32 end to end (the plain kernel): exp2 vs exp and the order of sums only
            sd3_gpu_test_compare(what, got, ref, 1e-5, 1e-4, 1e-9);
        sd3_tensor_t *dout2 = sd3_gpu_test_dev_nan(gt, c->dtype, 3, qs);
        CHECK(gt->cuda->ops->attention(gt->cuda, dout2, dq, dk, dv, &dopts, &err) == 0);
        sd3_tensor_t *got2 = sd3_gpu_test_host(gt, dout2);
        sd3_gpu_test_same_bits("  repeat", got, got2);
        sd3_tensor_destroy(&got);
        sd3_tensor_destroy(&got2);
        sd3_gpu_test_free(gt, &dout2);
    }
    sd3_gpu_test_free(gt, &dq);
    sd3_gpu_test_free(gt, &dk);
    sd3_gpu_test_free(gt, &dv);
    sd3_gpu_test_free(gt, &dbias);
    sd3_gpu_test_free(gt, &dout);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&bias);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_attention");
    if (rc)
        return rc;
    const float s64 = 0.125f; // 1/sqrt(64)
    const s_case_t cases[] = {
        {1, 154 + 4096, 154 + 4096, 2, 64, false, false, s64, SD3_BF16}, // SD3 at 1024 px
        {2, 154 + 1, 154 + 1, 4, 64, false, false, s64, SD3_BF16},       // one tile + 27
        {2, 77, 77, 12, 64, true, false, s64, SD3_BF16},                 // CLIP-L, causal
        {2, 77, 77, 4, 64, false, true, 1.0f, SD3_BF16},                 // T5: bias, scale 1
        {1, 100, 33, 3, 64, false, false, s64, SD3_BF16},                // Lq != Lk
        {1, 130, 130, 2, 64, true, true, s64, SD3_BF16},                 // causal + bias
        {2, 70, 70, 2, 80, false, false, 0.1118f, SD3_BF16},             // plain kernel: Dh 80
        {1, 77, 77, 2, 64, true, false, s64, SD3_F32},                   // plain kernel: f32
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        s_run(&gt, &cases[i]);
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
