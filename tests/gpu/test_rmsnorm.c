/*  test_rmsnorm - CUDA rmsnorm against the CPU backend
 *
 *  QK norm rows ([B, N, H, 64] with a [64] weight), T5 rows (4096), odd widths and no
 *  weight, B = 1 and 2; out of place and in place.  */
#include <stdio.h>

#include "sd3_gpu_test.h"

typedef struct {
    int ndim;
    int64_t shape[4];
    int weighted;
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c, bool in_place)
{
    sd3_err_t err = {0};
    char what[128], s[64];
    int64_t D = c->shape[c->ndim - 1];
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, c->ndim, c->shape, 3.0f);
    sd3_tensor_t *w = c->weighted ? sd3_gpu_test_rand(gt, 1, &D, 2.0f) : NULL;
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, c->ndim, c->shape);
    const sd3_tensor_t *dw = w ? gt->cuda->ops->weight(gt->cuda, w, &err) : NULL;
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = in_place ? dx : sd3_gpu_test_dev_nan(gt, SD3_BF16, c->ndim, c->shape);
    snprintf(what, sizeof what, "rmsnorm %s w=%d%s", sd3_shape_str(c->ndim, c->shape, s, sizeof s),
             c->weighted, in_place ? " in place" : "");
    CHECK(gt->cpu->ops->rmsnorm(gt->cpu, ref, x, w, 1e-6f, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->rmsnorm(gt->cuda, dy, dx, dw, 1e-6f, &err), &err) ==
        0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        // one formula per element after an fp32 sum of squares: 1 bf16 ulp relative
        sd3_gpu_test_compare(what, got, ref, 1e-3, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    if (!in_place)
        sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &dx);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_rmsnorm");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        {4, {2, 154, 24, 64}, 1}, // QK norm of SD3.5: [B, L, H, 64]
        {3, {1, 7, 4096}, 1},     // T5 hidden rows
        {3, {2, 3, 100}, 0},      // odd width, no weight
        {2, {1, 33}, 1},          // one short row
        {2, {129, 5}, 0},         // many tiny rows
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_run(&gt, &cases[i], false);
        s_run(&gt, &cases[i], true);
    }
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
