/*  test_softmax - CUDA softmax over the last dim against the CPU backend
 *
 *  Rows of 77 (CLIP), 4097 (past one block of 1024 threads), 1 (a lone element gives 1),
 *  a row holding -inf entries and a row of only -inf (which gives zeros on both backends);
 *  in place too.  */
#include <math.h>
#include <stdio.h>

#include "sd3_gpu_test.h"

static void
s_run(sd3_gpu_test_t *gt, int ndim, const int64_t *shape, bool with_inf, bool in_place)
{
    sd3_err_t err = {0};
    char what[128], s[64];
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, ndim, shape, 8.0f);
    int64_t D = shape[ndim - 1], rows = sd3_tensor_numel(x) / D;
    if (with_inf && rows >= 2) {
        for (int64_t i = 0; i < D; i += 3) // row 0: every third entry masked
            sd3_tensor_f32(x)[i] = -INFINITY;
        for (int64_t i = 0; i < D; i++) // row 1: everything masked
            sd3_tensor_f32(x)[D + i] = -INFINITY;
    }
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, ndim, shape);
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = in_place ? dx : sd3_gpu_test_dev_nan(gt, SD3_BF16, ndim, shape);
    snprintf(what, sizeof what, "softmax %s%s%s", sd3_shape_str(ndim, shape, s, sizeof s),
             with_inf ? " with -inf" : "", in_place ? " in place" : "");
    CHECK(gt->cpu->ops->softmax(gt->cpu, ref, x, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->softmax(gt->cuda, dy, dx, &err), &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        // exp, one fp32 sum, one division, one bf16 rounding: 1 bf16 ulp relative
        sd3_gpu_test_compare(what, got, ref, 1e-6, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    if (!in_place)
        sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &dx);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_softmax");
    if (rc)
        return rc;
    int64_t a[3] = {2, 7, 77}, b[2] = {3, 4097}, c[2] = {5, 1}, d[3] = {2, 12, 154};
    s_run(&gt, 3, a, false, false);
    s_run(&gt, 3, a, true, false);
    s_run(&gt, 2, b, false, false);
    s_run(&gt, 2, b, true, true);
    s_run(&gt, 2, c, false, false);
    s_run(&gt, 3, d, false, true);
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
