/*  test_cpu_linear - the CPU linear op against its plain reference
 *
 *  y = x W^T + b for odd shapes (1, 3, 17, 77, past the 1024-row and 64-column tile edges), each
 * weight dtype (f32, f16, bf16, f8 e4m3), with and without bias (bias in bf16 too). The fast path
 * must match the reference within float rounding, give the same bits with 1 and 2 threads, and fill
 * every element (y starts as NaN). The AVX-512 widening must equal sd3_dtype_to_f32 bit for bit on
 * every f16/bf16/f8 pattern. Bad shapes and dtypes return SD3_EINVAL.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 12345;

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
s_fill_nan(sd3_tensor_t *t)
{
    float *p = t->data;
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        p[i] = NAN;
}

static void
s_widen_exhaustive(void)
{
    static uint16_t h[65536];
    static float a[65536], b[65536];
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    sd3_dtype_t dts[2] = {SD3_F16, SD3_BF16};
    for (int d = 0; d < 2; d++) {
        sd3_cpu_widen(dts[d], h, a, 65536);
        sd3_dtype_to_f32(dts[d], h, b, 65536);
        int bad = 0;
        for (int i = 0; i < 65536; i++) {
            if (isnan(a[i]) && isnan(b[i]))
                continue; // NaN payloads may be quieted by the hardware conversion
            if (memcmp(&a[i], &b[i], 4) != 0)
                bad++;
        }
        CHECK_MSG(bad == 0, "%s widen differs from sd3_dtype_to_f32 on %d patterns",
                  sd3_dtype_name(dts[d]), bad);
    }
    uint8_t e[256 + 7];
    for (int i = 0; i < 256 + 7; i++)
        e[i] = (uint8_t)i;
    sd3_cpu_widen(SD3_F8_E4M3, e, a, 256 + 7); // 263: the scalar tail runs too
    sd3_dtype_to_f32(SD3_F8_E4M3, e, b, 256 + 7);
    int bad = 0;
    for (int i = 0; i < 256 + 7; i++)
        if (!(isnan(a[i]) && isnan(b[i])) && memcmp(&a[i], &b[i], 4) != 0)
            bad++;
    CHECK_MSG(bad == 0, "f8 widen differs on %d patterns", bad);
}

static void
s_case(sd3_backend_t *be1, sd3_backend_t *be2, int ndim, const int64_t *xshape, int64_t N,
       sd3_dtype_t wdtype, bool with_bias)
{
    sd3_err_t err = {0};
    int64_t K = xshape[ndim - 1];
    int64_t wshape[2] = {N, K}, yshape[SD3_MAX_DIM], bshape[1] = {N};
    memcpy(yshape, xshape, (size_t)ndim * sizeof(int64_t));
    yshape[ndim - 1] = N;
    sd3_tensor_t *x = s_rand(SD3_F32, ndim, xshape, 1.0f);
    sd3_tensor_t *w = s_rand(wdtype, 2, wshape, wdtype == SD3_F8_E4M3 ? 2.0f : 0.5f);
    sd3_tensor_t *b = with_bias ? s_rand(SD3_BF16, 1, bshape, 1.0f) : NULL;
    sd3_tensor_t *yr = sd3_tensor_new(SD3_F32, ndim, yshape);
    sd3_tensor_t *y1 = sd3_tensor_new(SD3_F32, ndim, yshape);
    sd3_tensor_t *y2 = sd3_tensor_new(SD3_F32, ndim, yshape);
    s_fill_nan(y1);
    s_fill_nan(y2);
    CHECK(sd3_cpu_linear_ref(yr, x, w, b, &err) == 0);
    CHECK_MSG(be1->ops->linear(be1, y1, x, w, b, &err) == 0, "%s", err.msg);
    CHECK_MSG(be2->ops->linear(be2, y2, x, w, b, &err) == 0, "%s", err.msg);
    size_t n = (size_t)sd3_tensor_numel(yr);
    double worst = sd3_test_maxdiff(yr->data, y1->data, n), scale = 1.0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(((float *)yr->data)[i]));
    // fp32 sums of K products in two orders: error grows like K * 2^-24 * |terms|.
    double tol = 4e-7 * (double)(K + 1) * scale * (wdtype == SD3_F8_E4M3 ? 4 : 1);
    CHECK_MSG(worst <= tol, "M=%lld K=%lld N=%lld %s bias=%d: max diff %g > %g",
              (long long)sd3_tensor_rows(x), (long long)K, (long long)N, sd3_dtype_name(wdtype),
              with_bias, worst, tol);
    CHECK_MSG(memcmp(y1->data, y2->data, n * 4) == 0,
              "M=%lld K=%lld N=%lld %s: 1 and 2 threads differ", (long long)sd3_tensor_rows(x),
              (long long)K, (long long)N, sd3_dtype_name(wdtype));
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&yr);
    sd3_tensor_destroy(&y1);
    sd3_tensor_destroy(&y2);
}

static void
s_bad_shapes(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = sd3_tensor_new(SD3_F32, 2, (int64_t[]){3, 8});
    sd3_tensor_t *w = sd3_tensor_new(SD3_F16, 2, (int64_t[]){5, 8});
    sd3_tensor_t *wk = sd3_tensor_new(SD3_F16, 2, (int64_t[]){5, 9});
    sd3_tensor_t *wi = sd3_tensor_new(SD3_I32, 2, (int64_t[]){5, 8});
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 2, (int64_t[]){3, 5});
    sd3_tensor_t *yrows = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 5});
    sd3_tensor_t *ycols = sd3_tensor_new(SD3_F32, 2, (int64_t[]){3, 6});
    sd3_tensor_t *bias = sd3_tensor_new(SD3_F32, 1, (int64_t[]){6});
    sd3_tensor_t *xh = sd3_tensor_new(SD3_F16, 2, (int64_t[]){3, 8});
    CHECK(be->ops->linear(be, y, x, wk, NULL, &err) == SD3_EINVAL);
    CHECK(strstr(err.msg, "[5,9]") != NULL); // the message names the shapes
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, yrows, x, w, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, ycols, x, w, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, y, x, w, bias, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, y, x, wi, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, y, xh, w, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, y, x, NULL, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->linear(be, NULL, x, w, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    sd3_tensor_t *wsq = sd3_tensor_new(SD3_F32, 2, (int64_t[]){8, 8});
    CHECK(be->ops->linear(be, x, x, wsq, NULL, &err) == SD3_EINVAL); // y aliasing x
    sd3_err_clear(&err);
    sd3_tensor_destroy(&wsq);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&wk);
    sd3_tensor_destroy(&wi);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&yrows);
    sd3_tensor_destroy(&ycols);
    sd3_tensor_destroy(&bias);
    sd3_tensor_destroy(&xh);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err);
    sd3_backend_t *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    CHECK(be1->ops->supports(SD3_OP_LINEAR, SD3_F8_E4M3));
    CHECK(!be1->ops->supports(SD3_OP_LINEAR, SD3_I32));
    CHECK(!be1->ops->supports(SD3_OP_LINEAR, SD3_F64)); // linear refuses F64 weights
    CHECK(be1->ops->supports(SD3_OP_RMSNORM, SD3_F64));
    CHECK(be1->ops->supports(SD3_OP_ATTENTION, SD3_F32));
    CHECK(!be1->ops->supports(SD3_OP_ATTENTION, SD3_BF16));
    s_widen_exhaustive();
    static const int64_t shapes[][3] = {
        {1, 1, 1},     {3, 17, 5},     {77, 64, 130}, {2, 96, 257},
        {1025, 8, 65}, {513, 33, 129}, {4, 1537, 70}, {154 + 48, 40, 77},
    };
    static const sd3_dtype_t dts[] = {SD3_F32, SD3_F16, SD3_BF16, SD3_F8_E4M3};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < 4; d++)
            s_case(be1, be2, 2, (int64_t[]){shapes[s][0], shapes[s][1]}, shapes[s][2], dts[d],
                   (s + d) % 2 == 0);
    s_case(be1, be2, 3, (int64_t[]){2, 5, 24}, 33, SD3_BF16, true); // [B, T, K] input
    s_bad_shapes(be1);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
