/*  test_act - CUDA activations (SiLU, GELU tanh, GELU erf, quick GELU) against the CPU
 *
 *  Each kind over [2, 77, 333] (odd, not a multiple of the block) with inputs in [-6, 6),
 *  out of place into bf16, in place, and into an f32 output (a mixed-dtype call).  */
#include <stdio.h>

#include "sd3_gpu_test.h"

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_act");
    if (rc)
        return rc;
    const char *names[] = {"silu", "gelu_tanh", "gelu_erf", "quick_gelu"};
    int64_t shapes[2][3] = {{2, 77, 333}, {1, 1, 5}};
    for (int s = 0; s < 2; s++) {
        for (int kind = SD3_ACT_SILU; kind <= SD3_ACT_QUICK_GELU; kind++) {
            sd3_err_t err = {0};
            char what[96];
            sd3_tensor_t *x = sd3_gpu_test_rand(&gt, 3, shapes[s], 6.0f);
            sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 3, shapes[s]);
            sd3_tensor_t *dx = sd3_gpu_test_dev(&gt, x, SD3_BF16);
            sd3_tensor_t *dy = sd3_gpu_test_dev_nan(&gt, SD3_BF16, 3, shapes[s]);
            sd3_tensor_t *dy32 = sd3_gpu_test_dev_nan(&gt, SD3_F32, 3, shapes[s]);
            CHECK(gt.cpu->ops->act(gt.cpu, ref, x, (sd3_act_t)kind, &err) == 0);
            // bf16 out: one rounding of an fp32 formula, 1 ulp relative; the tiny absolute
            // part covers outputs near 0 where silu/gelu cancel (x ~ -6 gives ~1e-2..1e-8)
            snprintf(what, sizeof what, "act %s [%lld,%lld,%lld]", names[kind],
                     (long long)shapes[s][0], (long long)shapes[s][1], (long long)shapes[s][2]);
            if (sd3_gpu_test_ok(what, gt.cuda->ops->act(gt.cuda, dy, dx, (sd3_act_t)kind, &err),
                                &err) == 0) {
                sd3_tensor_t *got = sd3_gpu_test_host(&gt, dy);
                sd3_gpu_test_compare(what, got, ref, 1e-5, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
                sd3_tensor_destroy(&got);
            }
            // f32 out: no output rounding; the fp32 library functions of host and device
            // differ by a few ulps (expf, tanhf, erff): 1e-5 relative
            snprintf(what, sizeof what, "act %s -> f32", names[kind]);
            if (sd3_gpu_test_ok(what,
                                gt.cuda->ops->act(gt.cuda, dy32, dx, (sd3_act_t)kind, &err),
                                &err) == 0) {
                sd3_tensor_t *got = sd3_gpu_test_host(&gt, dy32);
                sd3_gpu_test_compare(what, got, ref, 1e-6, 1e-5, 1e-9);
                sd3_tensor_destroy(&got);
            }
            // in place
            snprintf(what, sizeof what, "act %s in place", names[kind]);
            if (sd3_gpu_test_ok(what, gt.cuda->ops->act(gt.cuda, dx, dx, (sd3_act_t)kind, &err),
                                &err) == 0) {
                sd3_tensor_t *got = sd3_gpu_test_host(&gt, dx);
                sd3_gpu_test_compare(what, got, ref, 1e-5, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
                sd3_tensor_destroy(&got);
            }
            sd3_gpu_test_free(&gt, &dx);
            sd3_gpu_test_free(&gt, &dy);
            sd3_gpu_test_free(&gt, &dy32);
            sd3_tensor_destroy(&x);
            sd3_tensor_destroy(&ref);
        }
    }
    sd3_err_t err = {0};
    int64_t s1[1] = {4};
    sd3_tensor_t *d = sd3_gpu_test_dev_nan(&gt, SD3_BF16, 1, s1);
    CHECK(gt.cuda->ops->act(gt.cuda, d, d, (sd3_act_t)99, &err) == SD3_EINVAL);
    sd3_gpu_test_free(&gt, &d);
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
