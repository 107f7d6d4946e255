/*  sd3_gpu_test - shared helpers of the GPU tests (see sd3_gpu_test.h)
 *
 *  Why the tolerances are what they are. Inputs are identical bf16 values on both sides, the
 *  CPU computes in f32 (sums in double for the norms) and keeps an f32 output; the GPU
 *  computes in fp32 and rounds its output to bf16 (8 significant bits): that rounding alone
 *  is up to half a unit in the last place, 2^-9 relative. We allow one unit (2^-8, which
 *  also covers a few fp32 ulps of difference that tip a rounding) for ops whose output is one
 *  formula per element. Products (linear, conv2d) sum K terms in another order than OpenBLAS,
 *  which is fp32-ulp noise on each term; where the sum cancels (|ref| far below the terms)
 *  a relative bound means nothing, so every test also allows an absolute part scaled by the
 *  output's RMS. The normalised squared error of pure bf16 output rounding is about
 *  (2^-9)^2 / 3 = 1.3e-6; the bounds sit a few times above that. Attention also rounds the
 *  probabilities P to bf16 before P V (like every bf16 flash kernel), so it gets 2^-7.  */
#include "sd3_gpu_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd3_cuda.h"

int
sd3_gpu_test_setup(sd3_gpu_test_t *self, const char *name)
{
    sd3_err_t err = {0};
    memset(self, 0, sizeof *self);
    self->seed = 0x5D3C0DAull;
    int n = sd3_cuda_device_count();
    if (n <= 0) {
        fprintf(stderr, "skip: %s: no CUDA device (cudaGetDeviceCount gave %d)\n", name, n);
        return 77;
    }
    self->cpu = sd3_backend_new("cpu", 0, &err);
    if (!self->cpu) {
        fprintf(stderr, "%s: cpu backend: %s\n", name, err.msg);
        return 1;
    }
    self->cuda = sd3_backend_new("cuda", 0, &err);
    if (!self->cuda) {
        fprintf(stderr, "%s: cuda backend: %s\n", name, err.msg);
        sd3_backend_destroy(&self->cpu);
        return 1;
    }
    fprintf(stderr, "%s: device %s\n", name, sd3_cuda_device_name(self->cuda));
    return 0;
}

void
sd3_gpu_test_teardown(sd3_gpu_test_t *self)
{
    sd3_backend_destroy(&self->cuda);
    sd3_backend_destroy(&self->cpu);
}

static void
s_die(const char *what)
{
    fprintf(stderr, "FAIL: %s\n", what);
    exit(1);
}

sd3_tensor_t *
sd3_gpu_test_rand(sd3_gpu_test_t *self, int ndim, const int64_t *shape, float scale)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    if (!t)
        s_die("out of host memory");
    float *p = sd3_tensor_f32(t);
    int64_t n = sd3_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        p[i] = sd3_bf16_to_f32(sd3_f32_to_bf16(scale * sd3_test_randf(&self->seed)));
    return t;
}

sd3_tensor_t *
sd3_gpu_test_const(int ndim, const int64_t *shape, float value)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    if (!t)
        s_die("out of host memory");
    int64_t n = sd3_tensor_numel(t);
    for (int64_t i = 0; i < n; i++)
        sd3_tensor_f32(t)[i] = value;
    return t;
}

sd3_tensor_t *
sd3_gpu_test_dev(sd3_gpu_test_t *self, const sd3_tensor_t *src, sd3_dtype_t dtype)
{
    sd3_err_t err = {0};
    sd3_tensor_t *t = self->cuda->ops->tensor_new(self->cuda, dtype, src->ndim, src->shape, &err);
    if (!t || self->cuda->ops->upload(self->cuda, t, src, &err) != 0) {
        fprintf(stderr, "upload: %s\n", err.msg);
        s_die("could not make a device tensor");
    }
    return t;
}

sd3_tensor_t *
sd3_gpu_test_dev_nan(sd3_gpu_test_t *self, sd3_dtype_t dtype, int ndim, const int64_t *shape)
{
    sd3_tensor_t *h = sd3_gpu_test_const(ndim, shape, NAN);
    sd3_tensor_t *t = sd3_gpu_test_dev(self, h, dtype);
    sd3_tensor_destroy(&h);
    return t;
}

sd3_tensor_t *
sd3_gpu_test_host(sd3_gpu_test_t *self, const sd3_tensor_t *dev)
{
    sd3_err_t err = {0};
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, dev->ndim, dev->shape);
    if (!t)
        s_die("out of host memory");
    if (self->cuda->ops->download(self->cuda, t, dev, &err) != 0) {
        fprintf(stderr, "download: %s\n", err.msg);
        s_die("could not download");
    }
    return t;
}

void
sd3_gpu_test_free(sd3_gpu_test_t *self, sd3_tensor_t **t_p)
{
    self->cuda->ops->tensor_free(self->cuda, t_p);
}

int
sd3_gpu_test_compare(const char *what, const sd3_tensor_t *got, const sd3_tensor_t *ref,
                     double atol_rms, double rtol, double max_nmse)
{
    int64_t n = sd3_tensor_numel(ref), worst = -1, n_bad = 0;
    const float *g = sd3_tensor_f32(got), *r = sd3_tensor_f32(ref);
    double sq_ref = 0.0, sq_err = 0.0, max_abs = 0.0, worst_ratio = 0.0;
    if (sd3_tensor_numel(got) != n) {
        fprintf(stderr, "%s: FAIL: %lld elements, want %lld\n", what,
                (long long)sd3_tensor_numel(got), (long long)n);
        sd3_test_failures++;
        return 1;
    }
    for (int64_t i = 0; i < n; i++)
        if (isfinite(r[i]))
            sq_ref += (double)r[i] * r[i];
    double rms = n ? sqrt(sq_ref / (double)n) : 0.0, atol = atol_rms * rms + 1e-7;
    for (int64_t i = 0; i < n; i++) {
        double d;
        if (isnan(r[i]) && isnan(g[i]))
            continue;
        if (isinf(r[i]) && g[i] == r[i])
            continue;
        d = fabs((double)g[i] - (double)r[i]);
        if (isnan(d) || isinf(d)) { // NaN where the reference has a number: never passes
            n_bad++;
            if (worst_ratio != INFINITY)
                worst = i;
            worst_ratio = INFINITY;
            continue;
        }
        sq_err += d * d;
        if (d > max_abs)
            max_abs = d;
        double ratio = d / (atol + rtol * fabs((double)r[i]));
        if (ratio > 1.0)
            n_bad++;
        if (ratio > worst_ratio) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    double nmse = sq_ref > 0.0 ? sq_err / sq_ref : sq_err;
    bool ok = n_bad == 0 && nmse <= max_nmse;
    fprintf(stderr, "%s: n=%lld max_abs=%.3g nmse=%.3g (max %.1g) worst=%.2f of tol at %lld "
                    "(got %.6g want %.6g) %s\n",
            what, (long long)n, max_abs, nmse, max_nmse, worst_ratio, (long long)worst,
            worst >= 0 ? g[worst] : 0.0, worst >= 0 ? r[worst] : 0.0, ok ? "ok" : "FAIL");
    if (!ok)
        sd3_test_failures++;
    return ok ? 0 : 1;
}

int
sd3_gpu_test_same_bits(const char *what, const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    bool ok = sd3_tensor_nbytes(a) == sd3_tensor_nbytes(b) &&
              memcmp(a->data, b->data, sd3_tensor_nbytes(a)) == 0;
    fprintf(stderr, "%s: %s\n", what, ok ? "same bits ok" : "bits differ FAIL");
    if (!ok)
        sd3_test_failures++;
    return ok ? 0 : 1;
}

int
sd3_gpu_test_ok(const char *what, int rc, const sd3_err_t *err)
{
    if (rc == 0)
        return 0;
    fprintf(stderr, "%s: FAIL: rc=%d %s\n", what, rc, err ? err->msg : "");
    sd3_test_failures++;
    return 1;
}
