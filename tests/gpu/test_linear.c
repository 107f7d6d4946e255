/*  test_linear - CUDA linear (cuBLASLt, bf16, fp32 accumulation) against the CPU backend
 *
 *  y = x W^T + b over odd sizes, sizes off the 16/64 tiles, B = 1 and 2, weights stored as
 *  f32, bf16, f16 and f8 e4m3 (all uploaded as bf16 by weight(): the values are chosen
 *  bf16-exact, so both backends multiply the same numbers), a bf16 bias (fused epilogue),
 *  an f32 device bias (separate kernel) and no bias. Then the same call twice must give the
 *  same bits, and a wrong shape must fail with EINVAL.  */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd3_gpu_test.h"

typedef struct {
    int64_t B, T, K, N;
    sd3_dtype_t w_dtype;
    int bias; // 0 none, 1 bf16 (via weight()), 2 f32 device tensor
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c)
{
    sd3_err_t err = {0};
    char what[160];
    int64_t xs[3] = {c->B, c->T, c->K}, ws[2] = {c->N, c->K}, ys[3] = {c->B, c->T, c->N};
    int64_t bs[1] = {c->N};
    float wscale = 1.0f / sqrtf((float)c->K); // keeps y around 1 whatever K is
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, 3, xs, 1.0f);
    sd3_tensor_t *w32 = sd3_gpu_test_rand(gt, 2, ws, wscale);
    sd3_tensor_t *b = c->bias ? sd3_gpu_test_rand(gt, 1, bs, 0.5f) : NULL;
    sd3_tensor_t *w = sd3_tensor_new(c->w_dtype, 2, ws);
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 3, ys);
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = sd3_gpu_test_dev_nan(gt, SD3_BF16, 3, ys);
    sd3_tensor_t *db32 = NULL;
    const sd3_tensor_t *dw, *db = NULL;
    // the host weight in its storage dtype; values are bf16-exact (and f8 values f8-exact)
    if (c->w_dtype == SD3_F8_E4M3)
        for (int64_t i = 0; i < c->N * c->K; i++) // f8 holds 3 mantissa bits: round there first
            sd3_tensor_f32(w32)[i] =
                sd3_f8e4m3_to_f32(sd3_f32_to_f8e4m3(sd3_tensor_f32(w32)[i]));
    sd3_dtype_from_f32(c->w_dtype, sd3_tensor_f32(w32), w->data, (size_t)(c->N * c->K));
    w->name = "test.weight";
    snprintf(what, sizeof what, "linear x[%lld,%lld,%lld] W[%lld,%lld] %s bias=%d",
             (long long)c->B, (long long)c->T, (long long)c->K, (long long)c->N,
             (long long)c->K, sd3_dtype_name(c->w_dtype), c->bias);

    CHECK(gt->cpu->ops->linear(gt->cpu, ref, x, w, b, &err) == 0);
    dw = gt->cuda->ops->weight(gt->cuda, w, &err);
    CHECK_MSG(dw != NULL, "%s", err.msg);
    CHECK(gt->cuda->ops->weight(gt->cuda, w, &err) == dw); // cached by pointer
    if (c->bias == 1)
        db = gt->cuda->ops->weight(gt->cuda, b, &err);
    if (c->bias == 2)
        db = db32 = sd3_gpu_test_dev(gt, b, SD3_F32);
    if (dw && (!c->bias || db)) {
        int rc = gt->cuda->ops->linear(gt->cuda, dy, dx, dw, db, &err);
        if (sd3_gpu_test_ok(what, rc, &err) == 0) {
            sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
            // one output rounding to bf16 (2^-9) + fp32 sums in another order: 1 bf16 ulp
            // relative, plus 2^-8 of the output RMS absolute for sums that cancel
            sd3_gpu_test_compare(what, got, ref, SD3_GT_BF16_ULP, SD3_GT_BF16_ULP,
                                 SD3_GT_NMSE_GEMM);
            // determinism: the same call again gives the same bits
            sd3_tensor_t *dy2 = sd3_gpu_test_dev_nan(gt, SD3_BF16, 3, ys);
            CHECK(gt->cuda->ops->linear(gt->cuda, dy2, dx, dw, db, &err) == 0);
            sd3_tensor_t *got2 = sd3_gpu_test_host(gt, dy2);
            sd3_gpu_test_same_bits("  repeat", got, got2);
            sd3_tensor_destroy(&got);
            sd3_tensor_destroy(&got2);
            sd3_gpu_test_free(gt, &dy2);
        }
    }
    sd3_gpu_test_free(gt, &dx);
    sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &db32);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w32);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_linear");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        {1, 1, 16, 16, SD3_BF16, 0},      // one row
        {1, 7, 33, 17, SD3_F32, 1},       // odd everything
        {2, 77, 64, 96, SD3_BF16, 1},     // CLIP-like rows, B = 2
        {2, 154, 256, 320, SD3_F16, 2},   // f16 storage, f32 bias on the device
        {1, 65, 129, 130, SD3_F8_E4M3, 1}, // f8 storage, K off the 8-element alignment
        {2, 1, 1536, 1536 * 2, SD3_BF16, 1}, // adaLN-like: one row per batch, wide
        {2, 300, 768, 1000, SD3_F32, 0},  // off-tile M and N
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        s_run(&gt, &cases[i]);

    // a wrong shape is refused with EINVAL and a message naming both shapes
    {
        sd3_err_t err = {0};
        int64_t xs[2] = {3, 8}, ws[2] = {4, 9}, ys[2] = {3, 4};
        sd3_tensor_t *x = sd3_gpu_test_rand(&gt, 2, xs, 1.0f), *w = sd3_gpu_test_rand(&gt, 2, ws, 1.0f);
        sd3_tensor_t *dx = sd3_gpu_test_dev(&gt, x, SD3_BF16);
        sd3_tensor_t *dy = sd3_gpu_test_dev_nan(&gt, SD3_BF16, 2, ys);
        const sd3_tensor_t *dw = gt.cuda->ops->weight(gt.cuda, w, &err);
        CHECK(dw && gt.cuda->ops->linear(gt.cuda, dy, dx, dw, NULL, &err) == SD3_EINVAL);
        CHECK(strstr(err.msg, "[3,8]") != NULL);
        fprintf(stderr, "bad shape: %s\n", err.msg);
        // a host tensor where a device one belongs
        sd3_err_clear(&err);
        CHECK(gt.cuda->ops->linear(gt.cuda, dy, x, dw, NULL, &err) == SD3_EINVAL);
        sd3_gpu_test_free(&gt, &dx);
        sd3_gpu_test_free(&gt, &dy);
        sd3_tensor_destroy(&x);
        sd3_tensor_destroy(&w);
    }
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
