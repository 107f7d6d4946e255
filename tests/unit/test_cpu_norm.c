/*  test_cpu_norm - LayerNorm, RMSNorm and GroupNorm of the CPU backend
 *
 *  Each against a double-precision loop written here from the formulas (MODEL.md §4.5, T5
 *  RMSNorm, VAE GroupNorm with 32 groups), on odd shapes, with and without affine weights
 *  (weights in f32, f16, bf16), in place (y == x gives the same bits as y != x), and 1 vs 2
 *  threads bit-identical. Hand-computed values for a tiny row. Bad shapes: SD3_EINVAL.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 777;

static sd3_tensor_t *
s_rand(sd3_dtype_t dtype, int ndim, const int64_t *shape, float amp, float offset)
{
    sd3_tensor_t *t = sd3_tensor_new(dtype, ndim, shape);
    size_t n = (size_t)sd3_tensor_numel(t);
    float *tmp = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++)
        tmp[i] = offset + amp * sd3_test_randf(&s_seed);
    sd3_dtype_from_f32(dtype, tmp, t->data, n);
    free(tmp);
    return t;
}

static float
s_at(const sd3_tensor_t *t, int64_t i)
{
    float f;
    sd3_dtype_to_f32(t->dtype, (const char *)t->data + (size_t)i * sd3_dtype_size(t->dtype), &f, 1);
    return f;
}

enum { S_LN, S_RMS, S_GN };

// Runs op kind on be into y (NaN-filled first).
static int
s_run(sd3_backend_t *be, int kind, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
      const sd3_tensor_t *b, float eps, sd3_err_t *err)
{
    if (y != x)
        for (int64_t i = 0; i < sd3_tensor_numel(y); i++)
            ((float *)y->data)[i] = NAN;
    if (kind == S_LN)
        return be->ops->layernorm(be, y, x, w, b, eps, err);
    if (kind == S_RMS)
        return be->ops->rmsnorm(be, y, x, w, eps, err);
    return be->ops->groupnorm(be, y, x, w, b, 32, eps, err);
}

// Expected output in double: rows of D (LN, RMS) or (C/32)*HW groups (GN).
static void
s_expect(int kind, const sd3_tensor_t *x, const sd3_tensor_t *w, const sd3_tensor_t *b, float eps,
         double *out)
{
    const float *xd = x->data;
    int64_t n = sd3_tensor_numel(x), D, rows;
    int64_t HW = kind == S_GN ? x->shape[2] * x->shape[3] : 1;
    if (kind == S_GN) {
        D = x->shape[1] / 32 * HW;
        rows = x->shape[0] * 32;
    } else {
        D = sd3_tensor_cols(x);
        rows = n / (D ? D : 1);
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = xd + r * D;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < D; i++)
            mean += xr[i];
        mean = kind == S_RMS ? 0 : mean / (double)D;
        for (int64_t i = 0; i < D; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)D;
        for (int64_t i = 0; i < D; i++) {
            int64_t ch = kind == S_GN ? (r % 32) * (x->shape[1] / 32) + i / HW : i;
            double v = (xr[i] - mean) / sqrt(var + eps);
            if (w)
                v *= s_at(w, ch);
            if (b)
                v += s_at(b, ch);
            out[r * D + i] = v;
        }
    }
}

static void
s_case(sd3_backend_t *be1, sd3_backend_t *be2, int kind, int ndim, const int64_t *shape,
       sd3_dtype_t wdtype, bool affine)
{
    sd3_err_t err = {0};
    int64_t C = kind == S_GN ? shape[1] : shape[ndim - 1];
    sd3_tensor_t *x = s_rand(SD3_F32, ndim, shape, 2.0f, 0.5f);
    sd3_tensor_t *w = affine ? s_rand(wdtype, 1, (int64_t[]){C}, 1.0f, 0.0f) : NULL;
    sd3_tensor_t *b = affine && kind != S_RMS ? s_rand(wdtype, 1, (int64_t[]){C}, 1.0f, 0) : NULL;
    sd3_tensor_t *y1 = sd3_tensor_new(SD3_F32, ndim, shape);
    sd3_tensor_t *y2 = sd3_tensor_new(SD3_F32, ndim, shape);
    sd3_tensor_t *yi = sd3_tensor_clone(x);
    float eps = kind == S_LN ? 1e-5f : 1e-6f;
    size_t n = (size_t)sd3_tensor_numel(x);
    double *want = malloc(n * sizeof(double));
    s_expect(kind, x, w, b, eps, want);
    CHECK_MSG(s_run(be1, kind, y1, x, w, b, eps, &err) == 0, "%s", err.msg);
    CHECK_MSG(s_run(be2, kind, y2, x, w, b, eps, &err) == 0, "%s", err.msg);
    CHECK_MSG(s_run(be2, kind, yi, yi, w, b, eps, &err) == 0, "%s", err.msg);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(((float *)y1->data)[i] - want[i]);
        worst = d > worst || d != d ? (d != d ? INFINITY : d) : worst;
    }
    // f32 normalisation of O(1) values: a few ulp of the output (|y| < ~20).
    CHECK_MSG(worst < 2e-5, "kind %d %s affine=%d: max diff %g", kind, sd3_dtype_name(wdtype),
              affine, worst);
    CHECK_MSG(memcmp(y1->data, y2->data, n * 4) == 0, "kind %d: 1 and 2 threads differ", kind);
    CHECK_MSG(memcmp(y1->data, yi->data, n * 4) == 0, "kind %d: in place differs", kind);
    free(want);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&y1);
    sd3_tensor_destroy(&y2);
    sd3_tensor_destroy(&yi);
}

static void
s_known(sd3_backend_t *be)
{
    // x = [1, 2, 3, 4]: mean 2.5, var 1.25, LN = (x - 2.5) / sqrt(1.25) = +-1.3416408, +-0.4472136
    sd3_err_t err = {0};
    float xv[4] = {1, 2, 3, 4}, yv[4];
    sd3_tensor_t x, y;
    sd3_tensor_view_init(&x, SD3_F32, 1, (int64_t[]){4}, xv);
    sd3_tensor_view_init(&y, SD3_F32, 1, (int64_t[]){4}, yv);
    CHECK(be->ops->layernorm(be, &y, &x, NULL, NULL, 0.0f, &err) == 0);
    CHECK(fabsf(yv[0] + 1.3416408f) < 1e-6f && fabsf(yv[1] + 0.4472136f) < 1e-6f &&
          fabsf(yv[3] - 1.3416408f) < 1e-6f);
    // RMS: sqrt(mean(x^2)) = sqrt(7.5) = 2.7386128; y0 = 0.3651484
    CHECK(be->ops->rmsnorm(be, &y, &x, NULL, 0.0f, &err) == 0);
    CHECK(fabsf(yv[0] - 0.3651484f) < 1e-6f && fabsf(yv[3] - 1.4605935f) < 1e-6f);
}

static void
s_bad(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 48, 3, 3});
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 48, 3, 4});
    sd3_tensor_t *w = sd3_tensor_new(SD3_F32, 1, (int64_t[]){47});
    sd3_tensor_t *x2 = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 6});
    CHECK(be->ops->groupnorm(be, x, x, NULL, NULL, 32, 1e-6f, &err) == SD3_EINVAL); // 48 % 32
    sd3_err_clear(&err);
    CHECK(be->ops->groupnorm(be, y, x, NULL, NULL, 16, 1e-6f, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->groupnorm(be, x, x, w, NULL, 16, 1e-6f, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->groupnorm(be, x2, x2, NULL, NULL, 2, 1e-6f, &err) == SD3_EINVAL); // not 4-D
    sd3_err_clear(&err);
    CHECK(be->ops->layernorm(be, x2, x2, w, NULL, 1e-6f, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(be->ops->rmsnorm(be, y, x, NULL, 1e-6f, &err) == SD3_EINVAL);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&x2);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err), *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2)
        return 1;
    static const sd3_dtype_t dts[] = {SD3_F32, SD3_F16, SD3_BF16};
    for (int d = 0; d < 3; d++) {
        for (int affine = 0; affine < 2; affine++) {
            s_case(be1, be2, S_LN, 2, (int64_t[]){77, 1536}, dts[d], affine);
            s_case(be1, be2, S_LN, 3, (int64_t[]){2, 3, 17}, dts[d], affine);
            s_case(be1, be2, S_LN, 1, (int64_t[]){1}, dts[d], affine);
            s_case(be1, be2, S_RMS, 3, (int64_t[]){2, 154 + 48, 64}, dts[d], affine);
            s_case(be1, be2, S_RMS, 2, (int64_t[]){3, 4096}, dts[d], affine);
            s_case(be1, be2, S_GN, 4, (int64_t[]){2, 64, 17, 3}, dts[d], affine);
            s_case(be1, be2, S_GN, 4, (int64_t[]){1, 128, 40, 40}, dts[d], affine);
        }
    }
    s_known(be1);
    s_bad(be1);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
