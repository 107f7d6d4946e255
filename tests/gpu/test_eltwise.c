/*  test_eltwise - CUDA add, modulate, gate_add, upsample2x and fill against the CPU backend
 *
 *  add: same shapes, a [D] row broadcast, in place (y == a). modulate and gate_add: mod [B,
 *  6C] with several chunk pairs, x [B, T, C] (T odd) and [B, C], B = 1 and 2, in place.
 *  upsample2x: odd H, W. fill: a bf16-exact value (exact), and an f32 tensor.  */
#include <stdio.h>

#include "sd3_gpu_test.h"

// one fp32 formula per element rounded once to bf16: 1 bf16 ulp relative; the absolute part
// (1e-3 of the RMS) covers sums that cancel, e.g. a + b with a ~ -b.
#define S_ATOL 1e-3

static void
s_add(sd3_gpu_test_t *gt, int ndim, const int64_t *shape, bool broadcast, bool in_place)
{
    sd3_err_t err = {0};
    char what[128], s[64];
    int64_t D = shape[ndim - 1];
    sd3_tensor_t *a = sd3_gpu_test_rand(gt, ndim, shape, 2.0f);
    sd3_tensor_t *b = broadcast ? sd3_gpu_test_rand(gt, 1, &D, 2.0f)
                                : sd3_gpu_test_rand(gt, ndim, shape, 2.0f);
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, ndim, shape);
    sd3_tensor_t *da = sd3_gpu_test_dev(gt, a, SD3_BF16), *db = sd3_gpu_test_dev(gt, b, SD3_BF16);
    sd3_tensor_t *dy = in_place ? da : sd3_gpu_test_dev_nan(gt, SD3_BF16, ndim, shape);
    snprintf(what, sizeof what, "add %s%s%s", sd3_shape_str(ndim, shape, s, sizeof s),
             broadcast ? " + [D]" : "", in_place ? " in place" : "");
    CHECK(gt->cpu->ops->add(gt->cpu, ref, a, b, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->add(gt->cuda, dy, da, db, &err), &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        sd3_gpu_test_compare(what, got, ref, S_ATOL, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    if (!in_place)
        sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &da);
    sd3_gpu_test_free(gt, &db);
    sd3_tensor_destroy(&a);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&ref);
}

static void
s_modulate(sd3_gpu_test_t *gt, int64_t B, int64_t T, int64_t C, int shift, int scale, int gate,
           bool in_place)
{
    sd3_err_t err = {0};
    char what[128];
    int ndim = T ? 3 : 2;
    int64_t xs[3] = {B, T ? T : C, C}, ms[2] = {B, 6 * C};
    if (!T)
        xs[1] = C;
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, ndim, xs, 2.0f);
    sd3_tensor_t *y = sd3_gpu_test_rand(gt, ndim, xs, 2.0f);
    sd3_tensor_t *mod = sd3_gpu_test_rand(gt, 2, ms, 1.0f);
    sd3_tensor_t *ref = sd3_tensor_new(SD3_F32, ndim, xs);
    sd3_tensor_t *ref2 = sd3_tensor_clone(x);
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16), *dm = sd3_gpu_test_dev(gt, mod, SD3_BF16);
    sd3_tensor_t *dyin = sd3_gpu_test_dev(gt, y, SD3_BF16);
    sd3_tensor_t *dy = in_place ? dx : sd3_gpu_test_dev_nan(gt, SD3_BF16, ndim, xs);
    snprintf(what, sizeof what, "modulate B=%lld T=%lld C=%lld shift=%d scale=%d%s",
             (long long)B, (long long)T, (long long)C, shift, scale, in_place ? " in place" : "");
    CHECK(gt->cpu->ops->modulate(gt->cpu, ref, x, mod, shift, scale, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->modulate(gt->cuda, dy, dx, dm, shift, scale, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        sd3_gpu_test_compare(what, got, ref, S_ATOL, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    // gate_add on a fresh copy of x: x += mod[gate] * y
    sd3_tensor_t *dx2 = sd3_gpu_test_dev(gt, x, SD3_BF16);
    snprintf(what, sizeof what, "gate_add B=%lld T=%lld C=%lld gate=%d", (long long)B,
             (long long)T, (long long)C, gate);
    CHECK(gt->cpu->ops->gate_add(gt->cpu, ref2, y, mod, gate, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->gate_add(gt->cuda, dx2, dyin, dm, gate, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dx2);
        sd3_gpu_test_compare(what, got, ref2, S_ATOL, SD3_GT_BF16_ULP, SD3_GT_NMSE_ELT);
        sd3_tensor_destroy(&got);
    }
    // a chunk past the end is refused
    CHECK(gt->cuda->ops->modulate(gt->cuda, dy, dx, dm, 6, 0, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    if (!in_place)
        sd3_gpu_test_free(gt, &dy);
    sd3_gpu_test_free(gt, &dx);
    sd3_gpu_test_free(gt, &dx2);
    sd3_gpu_test_free(gt, &dm);
    sd3_gpu_test_free(gt, &dyin);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&mod);
    sd3_tensor_destroy(&ref);
    sd3_tensor_destroy(&ref2);
}

static void
s_upsample(sd3_gpu_test_t *gt, int64_t B, int64_t C, int64_t H, int64_t W)
{
    sd3_err_t err = {0};
    char what[96];
    int64_t xs[4] = {B, C, H, W}, ys[4] = {B, C, 2 * H, 2 * W};
    sd3_tensor_t *x = sd3_gpu_test_rand(gt, 4, xs, 3.0f), *ref = sd3_tensor_new(SD3_F32, 4, ys);
    sd3_tensor_t *dx = sd3_gpu_test_dev(gt, x, SD3_BF16);
    sd3_tensor_t *dy = sd3_gpu_test_dev_nan(gt, SD3_BF16, 4, ys);
    snprintf(what, sizeof what, "upsample2x [%lld,%lld,%lld,%lld]", (long long)B, (long long)C,
             (long long)H, (long long)W);
    CHECK(gt->cpu->ops->upsample2x(gt->cpu, ref, x, &err) == 0);
    if (sd3_gpu_test_ok(what, gt->cuda->ops->upsample2x(gt->cuda, dy, dx, &err), &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dy);
        sd3_gpu_test_same_bits(what, got, ref); // a copy of bf16 values: exact
        sd3_tensor_destroy(&got);
    }
    sd3_gpu_test_free(gt, &dx);
    sd3_gpu_test_free(gt, &dy);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&ref);
}

static void
s_fill(sd3_gpu_test_t *gt, sd3_dtype_t dtype)
{
    sd3_err_t err = {0};
    int64_t s[3] = {2, 33, 65};
    sd3_tensor_t *d = sd3_gpu_test_dev_nan(gt, dtype, 3, s);
    sd3_tensor_t *ref = sd3_gpu_test_const(3, s, -0.375f); // exact in bf16 and f32
    if (sd3_gpu_test_ok("fill", gt->cuda->ops->fill(gt->cuda, d, -0.375f, &err), &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, d);
        sd3_gpu_test_same_bits(dtype == SD3_F32 ? "fill f32" : "fill bf16", got, ref);
        sd3_tensor_destroy(&got);
    }
    sd3_gpu_test_free(gt, &d);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_eltwise");
    if (rc)
        return rc;
    int64_t s1[3] = {2, 77, 333}, s2[2] = {1, 1}, s3[4] = {1, 3, 17, 19};
    s_add(&gt, 3, s1, false, false);
    s_add(&gt, 3, s1, true, false);
    s_add(&gt, 3, s1, false, true);
    s_add(&gt, 2, s2, true, false);
    s_add(&gt, 4, s3, true, true);
    s_modulate(&gt, 2, 154, 96, 0, 1, 2, false);
    s_modulate(&gt, 1, 77, 40, 3, 4, 5, true);
    s_modulate(&gt, 2, 0, 1536, 0, 1, 2, false); // x [B, C]
    s_modulate(&gt, 2, 33, 1, 5, 2, 0, false);  // C = 1
    s_upsample(&gt, 1, 3, 7, 9);
    s_upsample(&gt, 2, 16, 32, 33);
    s_fill(&gt, SD3_BF16);
    s_fill(&gt, SD3_F32);
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
