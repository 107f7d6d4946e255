/*  test_groupnorm - CUDA groupnorm (chunked partial sums in double) against the CPU backend
 *
 *  32 groups like the VAE, with groups smaller than one chunk, just over one chunk (16384
 *  values: 130*129 per channel group), several chunks, odd H and W, B = 1 and 2, affine and
 *  not, out of place and in place. Run twice: the same bits (no atomics).  */
#include <stdio.h>

#include "sd3_gpu_test.h"

typedef struct {
    int64_t B, C, H, W;
    int groups, affine;
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c, bool in_place)
{
    sd3_err_t err = {0};
    char what[128];
    int64_t xs[4] = {c->B, c->C, c->H, c->W}, vs[1] = {c->C};
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, 4, xs, 2.0f);
    for (int64_t i = 0; i < sd3_tensor_numel(x); i++) // a mean far from 0 per group
        sd3_tensor_f32(x)[i] = sd3_bf16_to_f32(sd3_f32_to_bf16(sd3_tensor_f32(x)[i] - 1.5f));
    sd3_tensor_t *w = c->affine ? sd3_gpu_test_rand(gt, 1, vs, 1.5f) : NULL;
    sd3_tensor_t *b = c->affine ? sd3_gpu_test_rand(gt, 1, vs, 0.5f) : NULL;
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, 4, xs);
    const sd3_tensor_t *dw = w ? gt->cuda->ops->weight(gt->cuda, w, &err) : NULL;
    const sd3_tensor_t *db = b ? gt->cuda->ops->weight(gt->cuda, b, &err) : NULL;
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = in_place ? dx : sd3_gpu_test_dev_nan(gt, SD3_BF16, 4, xs);
    snprintf(what, sizeof what, "groupnorm [%lld,%lld,%lld,%lld] G=%d affine=%d%s",
             (long long)c->B, (long long)c->C, (long long)c->H, (long long)c->W, c->groups,
             c->affine, in_place ? " in place" : "");
    CHECK(gt->cpu->ops->groupnorm(gt->cpu, ref, x, w, b, c->groups, 1e-6f, &err) == 0);
    if (sd3_gpu_test_ok(what,
                        gt->cuda->ops->groupnorm(gt->cuda, dy, dx, dw, db, c->groups, 1e-6f, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        // statistics in double on both sides; one formula per element: 1 bf16 ulp
        sd3_gpu_test_compare(what, got, ref, 1e-3, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        if (!in_place) { // determinism
            sd3_tensor_t *dy2 = sd3_gpu_test_dev_nan(gt, SD3_BF16, 4, xs);
            CHECK(gt->cuda->ops->groupnorm(gt->cuda, dy2, dx, dw, db, c->groups, 1e-6f, &err) == 0);
            sd3_tensor_t *got2 = sd3_gpu_test_host(gt, dy2);
            sd3_gpu_test_same_bits("  repeat", got, got2);
            sd3_tensor_destroy(&got2);
            sd3_gpu_test_free(gt, &dy2);
        }
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
    int rc = sd3_gpu_test_setup(&gt, "test_groupnorm");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        {1, 64, 17, 19, 32, 1},   // small groups, odd sizes
        {2, 32, 130, 129, 32, 1}, // one channel per group, 16770 values: two chunks
        {1, 128, 64, 64, 32, 0},  // 4 channels per group, 16384: exactly one chunk
        {2, 256, 33, 31, 32, 1},  // 8 channels per group, B = 2
        {1, 512, 64, 64, 32, 1},  // the VAE at 512 px: 65536 values per group, 4 chunks
        {1, 6, 5, 7, 3, 1},       // not 32 groups
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s_run(&gt, &cases[i], false);
        s_run(&gt, &cases[i], true);
    }
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
