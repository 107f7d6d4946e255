/*  test_layernorm - CUDA layernorm (one warp per row) against the CPU backend
 *
 *  Rows of CLIP (768, affine), MMDiT (1536, no affine, eps 1e-6), odd widths and a weight
 *  without bias, B = 1 and 2; once out of place and once in place (y == x).  */
#include <stdio.h>

#include "sd3_gpu_test.h"

typedef struct {
    int64_t B, T, D;
    int affine; // 0 none, 1 weight only, 2 weight and bias
    float eps;
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c, bool in_place)
{
    sd3_err_t err = {0};
    char what[128];
    int64_t xs[3] = {c->B, c->T, c->D}, vs[1] = {c->D};
    // an offset mean (x + 3) makes the mean/variance split matter
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, 3, xs, 2.0f);
    for (int64_t i = 0; i < sd3_tensor_numel(x); i++)
        sd3_tensor_f32(x)[i] = sd3_bf16_to_f32(sd3_f32_to_bf16(sd3_tensor_f32(x)[i] + 3.0f));
    sd3_tensor_t *w = c->affine ? sd3_gpu_test_rand(gt, 1, vs, 1.5f) : NULL;
    sd3_tensor_t *b = c->affine == 2 ? sd3_gpu_test_rand(gt, 1, vs, 0.5f) : NULL;
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 3, xs);
    const sd3_tensor_t *dw = w ? gt->cuda->ops->weight(gt->cuda, w, &err) : NULL;
    const sd3_tensor_t *db = b ? gt->cuda->ops->weight(gt->cuda, b, &err) : NULL;
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = in_place ? dx : sd3_gpu_test_dev_nan(gt, SD3_BF16, 3, xs);
    snprintf(what, sizeof what, "layernorm [%lld,%lld,%lld] affine=%d%s", (long long)c->B,
             (long long)c->T, (long long)c->D, c->affine, in_place ? " in place" : "");
    CHECK(gt->cpu->ops->layernorm(gt->cpu, ref, x, w, b, c->eps, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->layernorm(gt->cuda, dy, dx, dw, db, c->eps, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        // one formula per element, fp32 statistics vs double: 1 bf16 ulp relative
        sd3_gpu_test_compare(what, got, ref, 1e-3, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    if (!in_place)
        sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &dx);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_layernorm");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        {1, 77, 768, 2, 1e-5f}, {2, 33, 1536, 0, 1e-6f}, {2, 5, 100, 1, 1e-6f},
        {1, 1, 31, 2, 1e-5f},   {2, 3, 4097, 2, 1e-6f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_run(&gt, &cases[i], false);
        s_run(&gt, &cases[i], true);
    }
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
