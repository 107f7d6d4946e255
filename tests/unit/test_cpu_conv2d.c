/*  test_cpu_conv2d - im2col-by-tiles conv2d against the plain nested loops
 *
 *  The VAE's shapes in small: 3x3 pad 1, 1x1 (the direct path), the downsample's asymmetric
 *  pad (right and bottom by 1, stride 2), the patch embed (2x2 stride 2), odd sizes across
 *  the 512-pixel and 256-channel tiles, each weight dtype, bias or not; 1 vs 2 threads
 *  bit-identical; y starts NaN. A hand-computed 3x3 case pins the padding convention.
 *  Bad shapes: SD3_EINVAL.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 31337;

static sd3_tensor_t *
s_rand(sd3_dtype_t dtype, int ndim, const int64_t *shape, float amp)
{
    sd3_tensor_t *t = sd3_tensor_new(dtype, ndim, shape);
    size_t n = (size_t)sd3_tensor_numel(t);
    float *tmp = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        tmp[i] = amp * sd3_test_randf(&s_seed);
    sd3_dtype_from_f32(dtype, tmp, t->data, n);
    free(tmp);
    return t;
}

static void
s_case(sd3_backend_t *be1, sd3_backend_t *be2, int64_t B, int64_t Ci, int64_t H, int64_t W,
       int64_t Co, int64_t k, sd3_conv_opts_t opts, sd3_dtype_t wdtype, bool with_bias)
{
    sd3_err_t err = {0};
    int64_t OH = (H + opts.pad_top + opts.pad_bottom - k) / opts.stride + 1;
    int64_t OW = (W + opts.pad_left + opts.pad_right - k) / opts.stride + 1;
    int64_t ys[4] = {B, Co, OH, OW};
    sd3_tensor_t *x = s_rand(SD3_F32, 4, (int64_t[]){B, Ci, H, W}, 1.0f);
    sd3_tensor_t *w = s_rand(wdtype, 4, (int64_t[]){Co, Ci, k, k}, 0.5f);
    sd3_tensor_t *b = with_bias ? s_rand(SD3_F16, 1, (int64_t[]){Co}, 1.0f) : NULL;
    sd3_tensor_t *yr = sd3_tensor_new(SD3_F32, 4, ys), *y1 = sd3_tensor_new(SD3_F32, 4, ys);
    sd3_tensor_t *y2 = sd3_tensor_new(SD3_F32, 4, ys);
    for (int64_t i = 0; i < sd3_tensor_numel(y1); i++)
        ((float *)y1->data)[i] = ((float *)y2->data)[i] = NAN;
    CHECK(sd3_cpu_conv2d_ref(yr, x, w, b, &opts, &err) == 0);
    CHECK_MSG(be1->ops->conv2d(be1, y1, x, w, b, &opts, &err) == 0, "%s", err.msg);
    CHECK_MSG(be2->ops->conv2d(be2, y2, x, w, b, &opts, &err) == 0, "%s", err.msg);
    size_t n = (size_t)sd3_tensor_numel(yr);
    double worst = sd3_test_maxdiff(yr->data, y1->data, n);
    double tol = 1e-6 * (double)(Ci * k * k + 1); // two summation orders, |terms| < 0.5
    CHECK_MSG(worst <= tol, "B=%lld Ci=%lld %lldx%lld Co=%lld k=%lld s=%d %s: max diff %g > %g",
              (long long)B, (long long)Ci, (long long)H, (long long)W, (long long)Co, (long long)k,
              opts.stride, sd3_dtype_name(wdtype), worst, tol);
    CHECK_MSG(memcmp(y1->data, y2->data, n * 4) == 0, "conv: 1 and 2 threads differ");
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&yr);
    sd3_tensor_destroy(&y1);
    sd3_tensor_destroy(&y2);
}

// x = 1..16 on a 4x4 plane, w = all ones 3x3, pad right/bottom by 1, stride 2: output 2x2:
// y[0,0] = 1+2+3+5+6+7+9+10+11 = 54, y[0,1] = 3+4+7+8+11+12 = 45 (column 4 is padding),
// y[1,0] = 9+10+11+13+14+15 = 72, y[1,1] = 11+12+15+16 = 54.
static void
s_known(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    float xv[16], wv[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, yv[4];
    for (int i = 0; i < 16; i++)
        xv[i] = (float)(i + 1);
    sd3_tensor_t x, w, y;
    sd3_tensor_view_init(&x, SD3_F32, 4, (int64_t[]){1, 1, 4, 4}, xv);
    sd3_tensor_view_init(&w, SD3_F32, 4, (int64_t[]){1, 1, 3, 3}, wv);
    sd3_tensor_view_init(&y, SD3_F32, 4, (int64_t[]){1, 1, 2, 2}, yv);
    sd3_conv_opts_t down = {.stride = 2, .pad_bottom = 1, .pad_right = 1};
    CHECK_MSG(be->ops->conv2d(be, &y, &x, &w, NULL, &down, &err) == 0, "%s", err.msg);
    CHECK_MSG(yv[0] == 54 && yv[1] == 45 && yv[2] == 72 && yv[3] == 54, "got %g %g %g %g", yv[0],
              yv[1], yv[2], yv[3]);
}

static void
s_bad(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 4, 5, 5});
    sd3_tensor_t *w = sd3_tensor_new(SD3_F32, 4, (int64_t[]){8, 4, 3, 3});
    sd3_tensor_t *w3 = sd3_tensor_new(SD3_F32, 4, (int64_t[]){8, 3, 3, 3});
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 8, 5, 5});
    sd3_tensor_t *b = sd3_tensor_new(SD3_F32, 1, (int64_t[]){7});
    sd3_conv_opts_t same = {
        .stride = 1, .pad_top = 1, .pad_left = 1, .pad_bottom = 1, .pad_right = 1};
    sd3_conv_opts_t nopad = {.stride = 1};
    sd3_conv_opts_t zero = {.stride = 0};
    CHECK(be->ops->conv2d(be, y, x, w, NULL, &same, &err) == 0);
    CHECK(be->ops->conv2d(be, y, x, w, NULL, &nopad, &err) == SD3_EINVAL); // y should be 3x3
    CHECK(be->ops->conv2d(be, y, x, w3, NULL, &same, &err) == SD3_EINVAL); // Ci 3 != 4
    CHECK(be->ops->conv2d(be, y, x, w, b, &same, &err) == SD3_EINVAL);     // bias 7 != 8
    CHECK(be->ops->conv2d(be, y, x, w, NULL, &zero, &err) == SD3_EINVAL);
    CHECK(be->ops->conv2d(be, y, x, w, NULL, NULL, &err) == SD3_EINVAL);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&w3);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&b);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err), *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2)
        return 1;
    sd3_conv_opts_t same = {
        .stride = 1, .pad_top = 1, .pad_left = 1, .pad_bottom = 1, .pad_right = 1};
    sd3_conv_opts_t one = {.stride = 1};
    sd3_conv_opts_t down = {.stride = 2, .pad_bottom = 1, .pad_right = 1};
    sd3_conv_opts_t patch = {.stride = 2};
    sd3_conv_opts_t wide = {.stride = 2,
                            .pad_top = 2,
                            .pad_left = 4,
                            .pad_bottom = 3,
                            .pad_right = 2}; // pads wider than the kernel
    static const sd3_dtype_t dts[] = {SD3_F32, SD3_F16, SD3_BF16, SD3_F8_E4M3};
    for (int d = 0; d < 4; d++) {
        s_case(be1, be2, 1, 3, 17, 19, 5, 3, same, dts[d], d % 2 == 0);
        s_case(be1, be2, 2, 16, 20, 15, 130, 3, same, dts[d], true);    // 300 px, 130 channels
        s_case(be1, be2, 1, 4, 23, 25, 260, 3, same, dts[d], d < 2);    // 575 px, 260 channels
        s_case(be1, be2, 1, 33, 17, 17, 7, 1, one, dts[d], d % 2 == 1); // direct path
        s_case(be1, be2, 1, 8, 33, 17, 9, 3, down, dts[d], true);       // VAE downsample
        s_case(be1, be2, 2, 16, 8, 6, 24, 2, patch, dts[d], true);      // patch embed
        s_case(be1, be2, 1, 1, 1, 1, 1, 1, one, dts[d], false);
        s_case(be1, be2, 1, 2, 5, 4, 3, 3, wide, dts[d], true);
    }
    s_known(be2);
    s_bad(be1);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
