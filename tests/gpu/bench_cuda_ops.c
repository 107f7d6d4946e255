/*  bench_cuda_ops - figures for the CUDA backend's heavy ops at SD3 sizes (not a test)
 *
 *  Times each op through the op table (warm-up, then the median of several timed calls, each
 *  followed by sd3_cuda_sync) and prints ms, TFLOP/s for the products and GB/s for the
 *  memory-bound ops (bytes = each input read once + each output written once). Inputs are
 *  random, never zeros (zeros run faster than real data on tensor cores). Usage:
 *      bench_cuda_ops [--quick]
 *  --quick runs fewer repetitions. Exit 77 with a message when there is no CUDA device.  */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sd3_cuda.h"
#include "sd3_gpu_test.h"

static int s_reps = 20;

static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef int (*s_op_fn)(sd3_backend_t *be, void *ctx, sd3_err_t *err);

// Median seconds of one call, or -1 on error (printed).
static double
s_time(sd3_backend_t *be, const char *name, s_op_fn fn, void *ctx)
{
    sd3_err_t err = {0};
    double t[64];
    int reps = s_reps < 64 ? s_reps : 64;
    for (int i = 0; i < 3; i++)
        if (fn(be, ctx, &err) != 0 || sd3_cuda_sync(be, &err) != 0)
            goto fail;
    for (int i = 0; i < reps; i++) {
        double t0 = s_now();
        if (fn(be, ctx, &err) != 0 || sd3_cuda_sync(be, &err) != 0)
            goto fail;
        t[i] = s_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], s_cmp);
    return t[reps / 2];
fail:
    printf("%-44s ERROR %s\n", name, err.msg);
    return -1.0;
}

static sd3_tensor_t *
s_dev(sd3_gpu_test_t *gt, int ndim, const int64_t *shape)
{
    sd3_tensor_t *h = sd3_gpu_test_rand(gt, ndim, shape, 1.0f);
    sd3_tensor_t *d = sd3_gpu_test_dev(gt, h, SD3_BF16);
    sd3_tensor_destroy(&h);
    return d;
}

// ---- linear --------------------------------------------------------------------------------
typedef struct {
    sd3_tensor_t *x, *y;
    const sd3_tensor_t *w, *b;
} s_lin_t;

static int
s_lin(sd3_backend_t *be, void *ctx, sd3_err_t *err)
{
    s_lin_t *c = ctx;
    return be->ops->linear(be, c->y, c->x, c->w, c->b, err);
}

static void
s_bench_linear(sd3_gpu_test_t *gt, const char *label, int64_t M, int64_t K, int64_t N)
{
    sd3_err_t err = {0};
    int64_t xs[2] = {M, K}, ws[2] = {N, K}, ys[2] = {M, N}, bs[1] = {N};
    sd3_tensor_t *hw = sd3_gpu_test_rand(gt, 2, ws, 0.05f), *hb = sd3_gpu_test_rand(gt, 1, bs, 1.0f);
    s_lin_t c = {s_dev(gt, 2, xs), s_dev(gt, 2, ys), gt->cuda->ops->weight(gt->cuda, hw, &err),
                 gt->cuda->ops->weight(gt->cuda, hb, &err)};
    char name[96];
    snprintf(name, sizeof name, "linear %s [%lld,%lld]x[%lld,%lld]^T+b", label, (long long)M,
             (long long)K, (long long)N, (long long)K);
    double s = c.w && c.b ? s_time(gt->cuda, name, s_lin, &c) : -1.0;
    if (s > 0)
        printf("%-44s %8.3f ms %8.1f TFLOP/s\n", name, s * 1e3, 2.0 * M * N * K / s / 1e12);
    sd3_gpu_test_free(gt, &c.x);
    sd3_gpu_test_free(gt, &c.y);
    sd3_tensor_destroy(&hw);
    sd3_tensor_destroy(&hb);
}

// ---- attention -----------------------------------------------------------------------------
typedef struct {
    sd3_tensor_t *q, *k, *v, *o;
    sd3_attn_opts_t opts;
} s_att_t;

static int
s_att(sd3_backend_t *be, void *ctx, sd3_err_t *err)
{
    s_att_t *c = ctx;
    return be->ops->attention(be, c->o, c->q, c->k, c->v, &c->opts, err);
}

static void
s_bench_attention(sd3_gpu_test_t *gt, const char *label, int64_t B, int64_t L, int H, bool causal)
{
    int64_t s[3] = {B, L, (int64_t)H * 64};
    s_att_t c = {s_dev(gt, 3, s), s_dev(gt, 3, s), s_dev(gt, 3, s), s_dev(gt, 3, s),
                 {H, 0.125f, causal, NULL}};
    char name[96];
    snprintf(name, sizeof name, "attention %s B=%lld L=%lld H=%d%s", label, (long long)B,
             (long long)L, H, causal ? " causal" : "");
    double t = s_time(gt->cuda, name, s_att, &c);
    // 4 B H L^2 64 flops (q k^T and p v), half of it when causal
    double flops = 4.0 * B * H * (double)L * L * 64 * (causal ? 0.5 : 1.0);
    if (t > 0)
        printf("%-44s %8.3f ms %8.1f TFLOP/s\n", name, t * 1e3, flops / t / 1e12);
    sd3_gpu_test_free(gt, &c.q);
    sd3_gpu_test_free(gt, &c.k);
    sd3_gpu_test_free(gt, &c.v);
    sd3_gpu_test_free(gt, &c.o);
}

// ---- conv2d --------------------------------------------------------------------------------
typedef struct {
    sd3_tensor_t *x, *y;
    const sd3_tensor_t *w, *b;
    sd3_conv_opts_t opts;
} s_conv_t;

static int
s_conv(sd3_backend_t *be, void *ctx, sd3_err_t *err)
{
    s_conv_t *c = ctx;
    return be->ops->conv2d(be, c->y, c->x, c->w, c->b, &c->opts, err);
}

static void
s_bench_conv(sd3_gpu_test_t *gt, const char *label, int64_t Ci, int64_t H, int64_t Co)
{
    sd3_err_t err = {0};
    int64_t xs[4] = {1, Ci, H, H}, ws[4] = {Co, Ci, 3, 3}, ys[4] = {1, Co, H, H}, bs[1] = {Co};
    sd3_tensor_t *hw = sd3_gpu_test_rand(gt, 4, ws, 0.02f), *hb = sd3_gpu_test_rand(gt, 1, bs, 1.0f);
    s_conv_t c = {s_dev(gt, 4, xs), s_dev(gt, 4, ys), gt->cuda->ops->weight(gt->cuda, hw, &err),
                  gt->cuda->ops->weight(gt->cuda, hb, &err), {1, 1, 1, 1, 1}};
    char name[96];
    snprintf(name, sizeof name, "conv2d %s 3x3 [1,%lld,%lld,%lld]->%lld", label, (long long)Ci,
             (long long)H, (long long)H, (long long)Co);
    double t = c.w && c.b ? s_time(gt->cuda, name, s_conv, &c) : -1.0;
    if (t > 0)
        printf("%-44s %8.3f ms %8.1f TFLOP/s\n", name, t * 1e3,
               2.0 * Co * Ci * 9 * (double)H * H / t / 1e12);
    sd3_gpu_test_free(gt, &c.x);
    sd3_gpu_test_free(gt, &c.y);
    sd3_tensor_destroy(&hw);
    sd3_tensor_destroy(&hb);
}

// ---- memory-bound ops ----------------------------------------------------------------------
typedef struct {
    sd3_tensor_t *x, *y, *mod;
    const sd3_tensor_t *w, *b;
    int which; // 0 layernorm, 1 groupnorm, 2 modulate, 3 gate_add, 4 rmsnorm (QK)
} s_mem_t;

static int
s_mem(sd3_backend_t *be, void *ctx, sd3_err_t *err)
{
    s_mem_t *c = ctx;
    switch (c->which) {
    case 0:
        return be->ops->layernorm(be, c->y, c->x, NULL, NULL, 1e-6f, err);
    case 1:
        return be->ops->groupnorm(be, c->y, c->x, c->w, c->b, 32, 1e-6f, err);
    case 2:
        return be->ops->modulate(be, c->y, c->x, c->mod, 0, 1, err);
    case 3:
        return be->ops->gate_add(be, c->y, c->x, c->mod, 2, err);
    default:
        return be->ops->rmsnorm(be, c->y, c->x, c->w, 1e-6f, err);
    }
}

static void
s_bench_mem(sd3_gpu_test_t *gt, const char *name, int which, int ndim, const int64_t *shape)
{
    sd3_err_t err = {0};
    int64_t C = shape[ndim - 1], cs[1] = {which == 1 ? shape[1] : C}, ms[2] = {shape[0], 6 * C};
    sd3_tensor_t *hw = sd3_gpu_test_rand(gt, 1, cs, 1.0f);
    s_mem_t c = {s_dev(gt, ndim, shape), s_dev(gt, ndim, shape), s_dev(gt, 2, ms),
                 gt->cuda->ops->weight(gt->cuda, hw, &err), NULL, which};
    c.b = c.w;
    double t = s_time(gt->cuda, name, s_mem, &c);
    double bytes = 2.0 * 2.0 * (double)sd3_tensor_numel(c.x) * (which == 3 ? 1.5 : 1.0);
    if (t > 0)
        printf("%-44s %8.3f ms %8.1f GB/s\n", name, t * 1e3, bytes / t / 1e9);
    sd3_gpu_test_free(gt, &c.x);
    sd3_gpu_test_free(gt, &c.y);
    sd3_gpu_test_free(gt, &c.mod);
    sd3_tensor_destroy(&hw);
}

int
main(int argc, char **argv)
{
    sd3_gpu_test_t gt;
    if (argc > 1 && !strcmp(argv[1], "--quick"))
        s_reps = 5;
    int rc = sd3_gpu_test_setup(&gt, "bench_cuda_ops");
    if (rc)
        return rc;
    printf("device: %s\n", sd3_cuda_device_name(gt.cuda));
    // SD3-medium at 1024 px with CFG: B = 2, 154 + 4096 tokens, C = 1536, 24 heads
    const int64_t M = 2 * (154 + 4096);
    s_bench_linear(&gt, "qkv", M, 1536, 3 * 1536);
    s_bench_linear(&gt, "mlp up", M, 1536, 4 * 1536);
    s_bench_linear(&gt, "mlp down", M, 4 * 1536, 1536);
    s_bench_linear(&gt, "adaLN", 2, 1536, 6 * 1536);
    s_bench_attention(&gt, "sd3 1024px", 2, 154 + 4096, 24, false);
    s_bench_attention(&gt, "sd3 512px", 2, 154 + 1024, 24, false);
    s_bench_attention(&gt, "clip-l", 2, 77, 12, true);
    s_bench_conv(&gt, "vae mid", 512, 128, 512);
    s_bench_conv(&gt, "vae up3", 256, 512, 256);
    s_bench_conv(&gt, "vae out", 128, 1024, 128);
    int64_t ln[3] = {2, 154 + 4096, 1536}, gn[4] = {1, 512, 128, 128}, qk[4] = {2, 4250, 24, 64};
    s_bench_mem(&gt, "layernorm [2,4250,1536]", 0, 3, ln);
    s_bench_mem(&gt, "groupnorm [1,512,128,128] G=32", 1, 4, gn);
    s_bench_mem(&gt, "modulate [2,4250,1536]", 2, 3, ln);
    s_bench_mem(&gt, "gate_add [2,4250,1536]", 3, 3, ln);
    s_bench_mem(&gt, "rmsnorm qk [2,4250,24,64]", 4, 4, qk);
    sd3_gpu_test_teardown(&gt);
    return 0;
}
