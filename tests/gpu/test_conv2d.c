/*  test_conv2d - CUDA conv2d (im2col + cuBLASLt) against the CPU backend
 *
 *  3x3 pad 1 (the VAE's body), 3x3 stride 2 with the asymmetric (0, 0, 1, 1) padding of the
 *  VAE encoder's downsample, 1x1 (the direct path, no im2col), 2x2 stride 2 (the MMDiT patch
 *  embedding), odd H and W, B = 1 and 2, with and without bias.  */
#include <math.h>
#include <stdio.h>

#include "sd3_gpu_test.h"

typedef struct {
    int64_t B, Ci, H, W, Co, kh, kw;
    sd3_conv_opts_t opts;
    bool bias;
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c)
{
    sd3_err_t err = {0};
    char what[192];
    const sd3_conv_opts_t *o = &c->opts;
    int64_t Ho = (c->H + o->pad_top + o->pad_bottom - c->kh) / o->stride + 1;
    int64_t Wo = (c->W + o->pad_left + o->pad_right - c->kw) / o->stride + 1;
    int64_t xs[4] = {c->B, c->Ci, c->H, c->W}, ws[4] = {c->Co, c->Ci, c->kh, c->kw};
    int64_t ys[4] = {c->B, c->Co, Ho, Wo}, bs[1] = {c->Co};
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, 4, xs, 1.0f);
    sd3_tensor_t *w = sd3_gpu_test_rand(gt, 4, ws, 1.0f / sqrtf((float)(c->Ci * c->kh * c->kw)));
    sd3_tensor_t *b = c->bias ? sd3_gpu_test_rand(gt, 1, bs, 0.5f) : NULL;
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 4, ys);
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = sd3_gpu_test_dev_nan(gt, SD3_BF16, 4, ys);
    const sd3_tensor_t *dw = gt->cuda->ops->weight(gt->cuda, w, &err);
    const sd3_tensor_t *db = b ? gt->cuda->ops->weight(gt->cuda, b, &err) : NULL;
    snprintf(what, sizeof what,
             "conv2d x[%lld,%lld,%lld,%lld] w[%lld,%lld,%lld,%lld] s%d pad %d,%d,%d,%d bias=%d",
             (long long)c->B, (long long)c->Ci, (long long)c->H, (long long)c->W,
             (long long)c->Co, (long long)c->Ci, (long long)c->kh, (long long)c->kw, o->stride,
             o->pad_top, o->pad_left, o->pad_bottom, o->pad_right, c->bias);
    CHECK(gt->cpu->ops->conv2d(gt->cpu, ref, x, w, b, o, &err) == 0);
    if (dw && sd3_gpu_test_ok(what, gt->cuda->ops->conv2d(gt->cuda, dy, dx, dw, db, o, &err),
                              &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        // a product over Ci*kh*kw terms rounded once to bf16 (the bias is summed in the
        // product's fp32 accumulator): like linear
        sd3_gpu_test_compare(what, got, ref, SD3_GT_BF16_ULP, SD3_GT_BF16_ULP,
                             SD3_GT_NMSE_GEMM);
        sd3_tensor_destroy(&got);
    }
    sd3_gpu_test_free(gt, &dx);
    sd3_gpu_test_free(gt, &dy);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_conv2d");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        {1, 3, 17, 19, 8, 3, 3, {1, 1, 1, 1, 1}, true},      // conv_in-like, odd sizes
        {2, 16, 33, 31, 24, 3, 3, {2, 0, 0, 1, 1}, true},    // encoder downsample
        {2, 64, 16, 16, 32, 1, 1, {1, 0, 0, 0, 0}, true},    // 1x1 shortcut: direct path
        {1, 16, 8, 10, 40, 2, 2, {2, 0, 0, 0, 0}, true},     // patch embedding
        {2, 32, 20, 21, 16, 3, 3, {1, 1, 1, 1, 1}, false},   // no bias, B = 2
        {1, 128, 64, 64, 128, 3, 3, {1, 1, 1, 1, 1}, true},  // a VAE layer at 512 px / 8
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        s_run(&gt, &cases[i]);
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
