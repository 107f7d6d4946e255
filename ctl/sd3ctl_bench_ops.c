/*  sd3ctl_bench_ops - `sd3ctl bench ops`: throughput of the CPU backend's heavy ops
 *
 *  Linear at the GEMM shapes of one SD3-medium block at 512x512 with CFG (M = 2*(1024+154)
 *  tokens, D = 1536), with f32, f16 and bf16 weights, next to one plain OpenBLAS sgemm call
 *  at the same shape (f32 weight, OpenBLAS using the same number of threads); then
 *  attention at 1178 tokens (B = 2) and 4250 tokens (B = 1), 24 heads of 64. The sgemm peak
 *  (sd3_bench_sgemm_peak, 1024^3) and the bf16 peak (sd3_bench_bf16_peak: oneDNN's bf16
 *  matmul, 2048^3) are measured first in the same run; each shape then also runs at
 *  precision bf16 (f16 weights, packed by an untimed first call), against the bf16 peak.
 *  Options: --threads N (default: all cores), --reps N (timed runs, best kept; 1),
 *  --only gemm|attn, --cpu-time (time by process CPU seconds instead of wall seconds: on a
 *  shared, busy machine with --threads 1 this gives steadier figures).
 *  Prints figures; it checks nothing.  */
#include "sd3_backend.h"
#include "sd3_clock.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static clockid_t s_clock = CLOCK_MONOTONIC;

static double
s_now(void)
{
    return sd3_clock_s(s_clock);
}

static void
s_fill(sd3_tensor_t *t, unsigned seed)
{
    size_t n = (size_t)sd3_tensor_numel(t);
    float *tmp = malloc(n * sizeof(float));
    if (!tmp)
        return;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        tmp[i] = (float)(seed >> 8) * (1.0f / 16777216.0f) - 0.5f;
    }
    sd3_dtype_from_f32(t->dtype, tmp, t->data, n);
    free(tmp);
}

// Best seconds of `reps` timed linear calls; < 0 on error.
static double
s_time_linear(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
              const sd3_tensor_t *b, int reps)
{
    sd3_err_t err = {0};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = s_now();
        if (be->ops->linear(be, y, x, w, b, &err) != 0) {
            fprintf(stderr, "bench ops: %s\n", err.msg);
            return -1;
        }
        double dt = s_now() - t0;
        if (dt < best)
            best = dt;
    }
    return best;
}

static double
s_time_sgemm(const sd3_tensor_t *x, const sd3_tensor_t *w, sd3_tensor_t *y, int threads, int reps)
{
    int M = (int)x->shape[0], K = (int)x->shape[1], N = (int)w->shape[0];
    double best = 1e30;
    openblas_set_num_threads(threads);
    for (int r = 0; r <= reps; r++) { // run 0 wakes OpenBLAS's threads: not timed
        double t0 = s_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x->data, K, w->data, K,
                    0.0f, y->data, N);
        double dt = s_now() - t0;
        if (r > 0 && dt < best)
            best = dt;
    }
    openblas_set_num_threads(1); // back to the cpu backend's setting
    return best;
}

int
sd3_bench_ops(int argc, char **argv)
{
    int threads = 0, reps = 1, rc = 1;
    const char *only = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (sd3_bench_arg_int("ops", "--threads", argv[++i], 0, 1024, &threads) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            if (sd3_bench_arg_int("ops", "--reps", argv[++i], 1, 1000, &reps) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--cpu-time"))
            s_clock = CLOCK_PROCESS_CPUTIME_ID;
        else {
            fprintf(stderr, "usage: sd3ctl bench ops [--threads N] [--reps N] [--only gemm|attn] "
                            "[--cpu-time]\n");
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    double t_start = s_now();
    double peak = sd3_bench_sgemm_peak(1024); // before the backend pins OpenBLAS to 1 thread
    sd3_err_t err = {0};
    double bpeak = sd3_bench_bf16_peak(2048);
    sd3_backend_t *be = sd3_cpu_backend_new(threads, &err);
    if (!be) {
        fprintf(stderr, "bench ops: %s\n", err.msg);
        return 2;
    }
    sd3_backend_t *be_bf = sd3_cpu_backend_new(threads, &err);
    if (be_bf && sd3_backend_set_precision(be_bf, "bf16", &err) != 0) {
        fprintf(stderr, "bench ops: no bf16 path: %s\n", err.msg);
        sd3_backend_destroy(&be_bf);
    }
    threads = be->n_threads;
    printf("cpu backend: %d threads; OpenBLAS sgemm peak (1024^3, all threads): %.1f GFLOP/s "
           "(wall); below: GFLOP per %s second\n",
           threads, peak, s_clock == CLOCK_MONOTONIC ? "wall" : "process CPU");
    printf("oneDNN bf16 matmul peak (2048^3, all threads): %.1f GFLOP/s (wall)\n", bpeak);

    // SD3-medium block at 512x512, CFG batch 2: 2*(1024 image + 154 context) tokens
    const int64_t M = 2 * (1024 + 154);
    static const struct {
        const char *name;
        int64_t m_mult, K, N; // m_mult 0: the adaLN GEMM at M = 2
    } gemms[] = {
        {"qkv", 1, 1536, 4608}, {"proj", 1, 1536, 1536},  {"fc1", 1, 1536, 6144},
        {"fc2", 1, 6144, 1536}, {"adaLN", 0, 1536, 9216},
    };
    static const sd3_dtype_t dts[3] = {SD3_F32, SD3_F16, SD3_BF16};
    printf("%-6s %5s %5s %5s | %8s | %8s %8s %8s GFLOP/s | f16/sgemm bf16/sgemm | %9s %s\n",
           "gemm", "M", "K", "N", "sgemm", "lin f32", "lin f16", "lin bf16", "bf16 prec",
           "of bf16 peak");
    for (size_t g = 0; strcmp(only, "attn") && g < sizeof gemms / sizeof gemms[0]; g++) {
        int64_t m = gemms[g].m_mult ? M : 2, K = gemms[g].K, N = gemms[g].N;
        sd3_tensor_t *x = sd3_tensor_new(SD3_F32, 2, (int64_t[]){m, K});
        sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 2, (int64_t[]){m, N});
        sd3_tensor_t *b = sd3_tensor_new(SD3_F32, 1, (int64_t[]){N});
        double flop = 2.0 * (double)m * (double)K * (double)N, gf[3] = {0};
        double base = 0, gfb = 0;
        if (!x || !y || !b)
            goto oom;
        s_fill(x, 1);
        s_fill(b, 2);
        for (int d = 0; d < 3; d++) {
            sd3_tensor_t *w = sd3_tensor_new(dts[d], 2, (int64_t[]){N, K});
            if (!w)
                goto oom;
            s_fill(w, 3);
            if (d == 0)
                base = flop / s_time_sgemm(x, w, y, threads, reps) * 1e-9;
            double t = s_time_linear(be, y, x, w, b, reps);
            gf[d] = t > 0 ? flop / t * 1e-9 : 0;
            if (d == 1 && be_bf && s_time_linear(be_bf, y, x, w, b, 1) > 0) { // packs W
                double tb = s_time_linear(be_bf, y, x, w, b, reps);
                gfb = tb > 0 ? flop / tb * 1e-9 : 0;
            }
            sd3_tensor_destroy(&w);
        }
        printf("%-6s %5lld %5lld %5lld | %8.1f | %8.1f %8.1f %8.1f         | %9.0f%% %9.0f%% | "
               "%9.1f %5.0f%%\n",
               gemms[g].name, (long long)m, (long long)K, (long long)N, base, gf[0], gf[1], gf[2],
               100 * gf[1] / base, 100 * gf[2] / base, gfb, bpeak > 0 ? 100 * gfb / bpeak : 0.0);
        fflush(stdout);
        sd3_tensor_destroy(&x);
        sd3_tensor_destroy(&y);
        sd3_tensor_destroy(&b);
        continue;
    oom:
        fprintf(stderr, "bench ops: out of memory\n");
        sd3_tensor_destroy(&x);
        sd3_tensor_destroy(&y);
        sd3_tensor_destroy(&b);
        goto done;
    }

    static const struct {
        int64_t B, L;
    } atts[] = {{2, 1178}, {1, 4250}};
    for (size_t a = 0; strcmp(only, "gemm") && a < 2; a++) {
        const int64_t B = atts[a].B, L = atts[a].L, H = 24, Dh = 64;
        int64_t shape[3] = {B, L, H * Dh};
        sd3_tensor_t *q = sd3_tensor_new(SD3_F32, 3, shape), *k = sd3_tensor_new(SD3_F32, 3, shape);
        sd3_tensor_t *v = sd3_tensor_new(SD3_F32, 3, shape), *o = sd3_tensor_new(SD3_F32, 3, shape);
        if (q && k && v && o) {
            s_fill(q, 5);
            s_fill(k, 6);
            s_fill(v, 7);
            sd3_attn_opts_t opts = {.n_heads = (int)H, .scale = 0.125f};
            for (int p = 0; p < 2; p++) { // f32, then precision bf16
                sd3_backend_t *bp = p ? be_bf : be;
                if (!bp)
                    continue;
                double t0 = s_now();
                int ok = bp->ops->attention(bp, o, q, k, v, &opts, &err);
                double dt = s_now() - t0;
                double flop = 4.0 * (double)(B * H) * (double)L * (double)L * (double)Dh;
                double pk = p ? bpeak : peak;
                if (ok != 0)
                    fprintf(stderr, "bench ops: %s\n", err.msg);
                else
                    printf("attention %s B=%lld L=%lld H=%lld Dh=%lld: %.3f s, %.1f GFLOP/s (%.0f%% "
                           "of the wall-clock %s peak above); process peak RSS %.0f MiB\n",
                           p ? "bf16" : "f32", (long long)B, (long long)L, (long long)H,
                           (long long)Dh, dt, flop / dt * 1e-9,
                           s_clock == CLOCK_MONOTONIC && pk > 0 ? 100 * flop / dt * 1e-9 / pk
                                                                : 0.0,
                           p ? "bf16" : "sgemm", (double)sd3_bench_rss_peak() / 1048576.0);
            }
            fflush(stdout);
        }
        sd3_tensor_destroy(&q);
        sd3_tensor_destroy(&k);
        sd3_tensor_destroy(&v);
        sd3_tensor_destroy(&o);
    }
    printf("total %.1f s\n", s_now() - t_start);
    rc = 0;
done:
    sd3_backend_destroy(&be);
    sd3_backend_destroy(&be_bf);
    return rc;
}
