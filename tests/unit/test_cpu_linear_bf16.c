/*  test_cpu_linear_bf16 - the CPU linear at precision bf16 (oneDNN, sd3_cpu_bf16.c)
 *
 *  For odd shapes (M 1..300 across the 64-row tiles, N past the 128-column tiles, odd K) and
 *  every weight dtype, with and without bias:
 *  - the result is the GEMM of the bf16-rounded operands with f32 accumulation: it matches
 *    a double-precision product of bf16(x) and bf16(W) within f32 accumulation error;
 *  - against the exact f32 linear it stays within bf16 input rounding (2^-8 relative per
 *    product, summed in quadrature over K);
 *  - 1 and 2 threads give the same bits; every row has the bits it has alone (M = 1) or at
 *    another offset of a bigger call (batch invariance, what lets merged batches share the
 *    linears);
 *  - a weight refilled in place is packed again; y is filled everywhere (starts as NaN);
 *  - conv2d at bf16 (columns through this linear): within the bf16 bound of the f32
 *    reference (the bound from the same convolution of |x| and |W|), 1 vs 2 threads.
 *  Skips (77) where the CPU has no bf16 kernel in oneDNN.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_cpu_bf16.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 777;
static double s_worst_exact, s_worst_f32; // over all cases, as fractions of the bounds

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

static float
s_bf16(float v)
{
    return sd3_bf16_to_f32(sd3_f32_to_bf16(v));
}

// One shape: checks against the double product of the rounded operands and against f32.
static void
s_case(sd3_backend_t *be_bf, sd3_backend_t *be_f32, sd3_backend_t *be_bf1, int64_t M, int64_t N,
       int64_t K, sd3_dtype_t wdt, bool with_bias)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = s_rand(SD3_F32, 2, (int64_t[]){M, K}, 1.0f);
    sd3_tensor_t *w = s_rand(wdt, 2, (int64_t[]){N, K}, 0.5f);
    sd3_tensor_t *b = with_bias ? s_rand(SD3_F32, 1, (int64_t[]){N}, 1.0f) : NULL;
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 2, (int64_t[]){M, N});
    sd3_tensor_t *y1 = sd3_tensor_new(SD3_F32, 2, (int64_t[]){M, N});
    sd3_tensor_t *yf = sd3_tensor_new(SD3_F32, 2, (int64_t[]){M, N});
    s_fill_nan(y);
    s_fill_nan(y1);
    CHECK_MSG(be_bf->ops->linear(be_bf, y, x, w, b, &err) == 0, "%s", err.msg);
    CHECK_MSG(be_bf1->ops->linear(be_bf1, y1, x, w, b, &err) == 0, "%s", err.msg);
    CHECK_MSG(be_f32->ops->linear(be_f32, yf, x, w, b, &err) == 0, "%s", err.msg);
    CHECK_MSG(memcmp(y->data, y1->data, (size_t)(M * N) * 4) == 0,
              "M %lld N %lld K %lld %s: 1 and 2 threads differ", (long long)M, (long long)N,
              (long long)K, sd3_dtype_name(wdt));
    const float *xd = x->data, *yd = y->data, *yfd = yf->data;
    float *wf = malloc((size_t)(N * K) * sizeof(float));
    sd3_dtype_to_f32(wdt, w->data, wf, (size_t)(N * K));
    float *bias = NULL;
    if (b) {
        bias = b->data;
    }
    double worst_exact = 0, worst_f32 = 0;
    int nan = 0;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)s_bf16(xd[m * K + k]) * (double)s_bf16(wf[n * K + k]);
                acc += p;
                mag += fabs(p);
            }
            if (bias)
                acc += bias[n], mag += fabs(bias[n]);
            double got = yd[m * N + n];
            if (isnan(got)) {
                nan++;
                continue;
            }
            // f32 accumulation: a few ulps of the magnitude sum per element
            double e1 = fabs(got - acc) / (mag * 1e-6 * (1 + sqrt((double)K)) + 1e-30);
            // bf16 inputs: each operand off by <= 2^-8 relative, a product by <= 2^-7
            double e2 = fabs(got - yfd[m * N + n]) / (mag * 0x1p-7 + 1e-30);
            if (e1 > worst_exact)
                worst_exact = e1;
            if (e2 > worst_f32)
                worst_f32 = e2;
        }
    s_worst_exact = worst_exact > s_worst_exact ? worst_exact : s_worst_exact;
    s_worst_f32 = worst_f32 > s_worst_f32 ? worst_f32 : s_worst_f32;
    CHECK_MSG(nan == 0, "M %lld N %lld K %lld: %d elements not written", (long long)M,
              (long long)N, (long long)K, nan);
    CHECK_MSG(worst_exact <= 1.0,
              "M %lld N %lld K %lld %s: off the bf16-operand product by %.3g of the f32 bound",
              (long long)M, (long long)N, (long long)K, sd3_dtype_name(wdt), worst_exact);
    CHECK_MSG(worst_f32 <= 1.0,
              "M %lld N %lld K %lld %s: off the f32 linear by %.3g of the bf16 bound", (long long)M,
              (long long)N, (long long)K, sd3_dtype_name(wdt), worst_f32);
    free(wf);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&y1);
    sd3_tensor_destroy(&yf);
}

// Rows [r0, r0 + n) of a big call equal the same x rows run alone or inside other calls.
static void
s_batch_invariance(sd3_backend_t *be, int64_t N, int64_t K)
{
    sd3_err_t err = {0};
    const int64_t M = 300;
    sd3_tensor_t *x = s_rand(SD3_F32, 2, (int64_t[]){M, K}, 1.0f);
    sd3_tensor_t *w = s_rand(SD3_F16, 2, (int64_t[]){N, K}, 0.5f);
    sd3_tensor_t *b = s_rand(SD3_F32, 1, (int64_t[]){N}, 1.0f);
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 2, (int64_t[]){M, N});
    CHECK(be->ops->linear(be, y, x, w, b, &err) == 0);
    int64_t cases[][2] = {{0, 1}, {1, 1}, {299, 1}, {5, 2}, {63, 3}, {100, 77}, {7, 200}, {0, 64}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t r0 = cases[c][0], n = cases[c][1];
        sd3_tensor_t *xs = sd3_tensor_new(SD3_F32, 2, (int64_t[]){n, K});
        sd3_tensor_t *ys = sd3_tensor_new(SD3_F32, 2, (int64_t[]){n, N});
        memcpy(xs->data, (float *)x->data + r0 * K, (size_t)(n * K) * 4);
        CHECK(be->ops->linear(be, ys, xs, w, b, &err) == 0);
        CHECK_MSG(memcmp(ys->data, (float *)y->data + r0 * N, (size_t)(n * N) * 4) == 0,
                  "N %lld K %lld: rows [%lld, %lld) alone differ from the same rows of M = %lld",
                  (long long)N, (long long)K, (long long)r0, (long long)(r0 + n), (long long)M);
        sd3_tensor_destroy(&xs);
        sd3_tensor_destroy(&ys);
    }
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&y);
}

// A weight buffer refilled in place (same pointer) is packed again, not served stale.
static void
s_repack(sd3_backend_t *be, sd3_backend_t *be_f32)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = s_rand(SD3_F32, 2, (int64_t[]){4, 96}, 1.0f);
    sd3_tensor_t *w = s_rand(SD3_BF16, 2, (int64_t[]){130, 96}, 0.5f);
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 130});
    sd3_tensor_t *yf = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 130});
    CHECK(be->ops->linear(be, y, x, w, NULL, &err) == 0);
    sd3_tensor_t *w2 = s_rand(SD3_BF16, 2, (int64_t[]){130, 96}, 0.5f);
    memcpy(w->data, w2->data, sd3_tensor_nbytes(w));
    CHECK(be->ops->linear(be, y, x, w, NULL, &err) == 0);
    CHECK(be_f32->ops->linear(be_f32, yf, x, w, NULL, &err) == 0);
    double d = sd3_test_maxdiff(y->data, yf->data, 4 * 130);
    CHECK_MSG(d < 0.5, "refilled weight: off the f32 result by %g (stale packing?)", d);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&w2);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&yf);
}

static sd3_tensor_t *
s_abs(const sd3_tensor_t *t)
{
    sd3_tensor_t *a = sd3_tensor_new(SD3_F32, t->ndim, t->shape);
    sd3_dtype_to_f32(t->dtype, t->data, a->data, (size_t)sd3_tensor_numel(t));
    for (int64_t i = 0; i < sd3_tensor_numel(a); i++)
        ((float *)a->data)[i] = fabsf(((float *)a->data)[i]);
    return a;
}

static void
s_conv(sd3_backend_t *be2, sd3_backend_t *be1, int64_t B, int64_t Ci, int64_t H, int64_t W,
       int64_t Co, int64_t k, sd3_conv_opts_t opts, sd3_dtype_t wdt)
{
    sd3_err_t err = {0};
    int64_t OH = (H + opts.pad_top + opts.pad_bottom - k) / opts.stride + 1;
    int64_t OW = (W + opts.pad_left + opts.pad_right - k) / opts.stride + 1;
    sd3_tensor_t *x = s_rand(SD3_F32, 4, (int64_t[]){B, Ci, H, W}, 1.0f);
    sd3_tensor_t *w = s_rand(wdt, 4, (int64_t[]){Co, Ci, k, k}, 0.5f);
    sd3_tensor_t *b = s_rand(SD3_F32, 1, (int64_t[]){Co}, 1.0f);
    int64_t ys[4] = {B, Co, OH, OW};
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 4, ys), *y1 = sd3_tensor_new(SD3_F32, 4, ys);
    sd3_tensor_t *yr = sd3_tensor_new(SD3_F32, 4, ys), *mag = sd3_tensor_new(SD3_F32, 4, ys);
    sd3_tensor_t *xa = s_abs(x), *wa = s_abs(w), *ba = s_abs(b);
    s_fill_nan(y);
    CHECK_MSG(be2->ops->conv2d(be2, y, x, w, b, &opts, &err) == 0, "%s", err.msg);
    CHECK_MSG(be1->ops->conv2d(be1, y1, x, w, b, &opts, &err) == 0, "%s", err.msg);
    CHECK(sd3_cpu_conv2d_ref(yr, x, w, b, &opts, &err) == 0);
    CHECK(sd3_cpu_conv2d_ref(mag, xa, wa, ba, &opts, &err) == 0);
    size_t n = (size_t)sd3_tensor_numel(y);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)((float *)y->data)[i] - ((float *)yr->data)[i]) /
                   (((float *)mag->data)[i] * 0x1p-7 + 1e-6);
        worst = isnan(e) || e > worst ? (isnan(e) ? 1e9 : e) : worst;
    }
    CHECK_MSG(worst <= 1.0, "conv Ci %lld Co %lld k %lld s %d %s: %.3g of the bf16 bound",
              (long long)Ci, (long long)Co, (long long)k, opts.stride, sd3_dtype_name(wdt), worst);
    CHECK_MSG(memcmp(y->data, y1->data, n * 4) == 0, "conv Ci %lld Co %lld: 1 and 2 threads differ",
              (long long)Ci, (long long)Co);
    sd3_tensor_t *all[] = {x, w, b, y, y1, yr, mag, xa, wa, ba};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(&all[i]);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be2 = sd3_cpu_backend_new(2, &err), *be1 = sd3_cpu_backend_new(1, &err);
    sd3_backend_t *bef = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2 || !bef) {
        fprintf(stderr, "backend: %s\n", err.msg);
        return 1;
    }
    CHECK(bef->precision == SD3_PRECISION_F32); // constructors stay exact
    CHECK(sd3_backend_set_precision(bef, "f32", &err) == 0);
    CHECK(sd3_backend_set_precision(bef, "fp8", &err) == SD3_EINVAL);
    if (sd3_backend_set_precision(be2, "bf16", &err) != 0) {
        fprintf(stderr, "skip: %s\n", err.msg);
        sd3_backend_destroy(&be1);
        sd3_backend_destroy(&be2);
        sd3_backend_destroy(&bef);
        return 77;
    }
    CHECK(sd3_backend_set_precision(be1, "bf16", &err) == 0);
    CHECK(be2->precision == SD3_PRECISION_BF16 && be2->linear_batch_invariant);
    fprintf(stderr, "oneDNN kernel: %s\n", sd3_cpu_bf16_impl(sd3_cpu_backend_bf16(be2)));

    int64_t shapes[][3] = {{1, 1, 1},    {1, 64, 96},  {3, 130, 37},  {17, 128, 64},
                           {64, 256, 96}, {65, 300, 80}, {154, 192, 130}, {300, 40, 257}};
    sd3_dtype_t dts[4] = {SD3_F32, SD3_F16, SD3_BF16, SD3_F8_E4M3};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int d = 0; d < 4; d++)
            s_case(be2, bef, be1, shapes[s][0], shapes[s][1], shapes[s][2], dts[d], (s + d) % 2);
    s_batch_invariance(be2, 200, 160);
    s_batch_invariance(be2, 128, 1536);
    s_batch_invariance(be2, 64, 6144);
    s_repack(be2, bef);
    s_conv(be2, be1, 2, 5, 9, 7, 130, 3, (sd3_conv_opts_t){.stride = 1, 1, 1, 1, 1}, SD3_F16);
    s_conv(be2, be1, 1, 16, 33, 40, 8, 3, (sd3_conv_opts_t){.stride = 2, 0, 0, 1, 1}, SD3_BF16);
    s_conv(be2, be1, 1, 70, 6, 6, 64, 1, (sd3_conv_opts_t){.stride = 1}, SD3_F32);
    fprintf(stderr, "worst: %.3f of the f32-accumulation bound, %.3f of the bf16 bound\n",
            s_worst_exact, s_worst_f32);

    // back to f32: the exact path again
    CHECK(sd3_backend_set_precision(be2, "f32", &err) == 0);
    CHECK(be2->precision == SD3_PRECISION_F32 && !sd3_cpu_backend_bf16(be2));
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    sd3_backend_destroy(&bef);
    return TEST_RESULT();
}
