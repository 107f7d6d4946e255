/*  sd3ctl_bench_cluster - `sd3ctl bench cluster`: what the wire costs
 *
 *  Part 1 (here now): per codec and transfer dtype, encode and decode MB/s (of the f32 bytes
 *  the stage hands over) and the compression ratio, on activation-shaped f32 tensors: the
 *  image tokens x [B, N, C] one mmdit stage hands the next, SD3.5-Large (C = 2432)
 *  with B = 2 (CFG): N = 4096 at 1024 px, N = 1024 at 512 px. The values are N(0, 1)
 *  with 0.1% outliers of 50..800 (the massive-activation channels of DiTs).
 *  Cluster figures (per-hop latency, steps/s over stages) are added by the cluster work.
 *
 *    sd3ctl bench cluster [--size 1024|512|all] [--level N] [--reps N]  */
#include "sd3_codec.h"
#include "sd3ctl.h"

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// CPU time of this thread: the codecs are single-threaded, and on a shared machine wall
// time measures the neighbours.
static double
s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t
s_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double
s_unit(uint64_t *s) // (0, 1]
{
    return ((double)(s_next(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

static void
s_fill(float *x, size_t n, uint64_t seed)
{
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) {
        double g = sqrt(-2.0 * log(s_unit(&st))) * cos(6.283185307179586 * s_unit(&st));
        double r = s_unit(&st);
        if (r < 0.001)
            g *= 50.0 + 750.0 * r * 1000.0;
        x[i] = (float)g;
    }
}

static int
s_bench_shape(int64_t n_tokens, int level, int reps)
{
    const int64_t shape[3] = {2, n_tokens, 2432}; // x: [B, N, C]
    sd3_err_t err = {0};
    sd3_tensor_t *t = sd3_tensor_new_err(SD3_F32, 3, shape, "x", &err);
    if (!t) {
        fprintf(stderr, "bench cluster: %s\n", err.msg);
        return 2;
    }
    size_t f32_bytes = sd3_tensor_nbytes(t);
    s_fill(t->data, (size_t)sd3_tensor_numel(t), 0x5eed + (uint64_t)n_tokens);
    printf("x [2,%lld,2432] f32 = %.1f MiB, zstd level %d, best of %d\n", (long long)n_tokens,
           (double)f32_bytes / (1 << 20), level, reps);
    printf("  %-4s %-13s %10s %10s %8s %12s\n", "wire", "codec", "enc MB/s", "dec MB/s", "ratio",
           "frame MiB");
    const sd3_dtype_t wires[3] = {SD3_F32, SD3_BF16, SD3_F16};
    for (int w = 0; w < 3; w++)
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_codec_opts_t opts = {
                .codec = (sd3_codec_t)c, .wire_dtype = wires[w], .level = level};
            double best_enc = 1e30, best_dec = 1e30;
            size_t len = 0;
            for (int r = 0; r < reps; r++) {
                sd3_codec_desc_t desc;
                void *frame = NULL;
                sd3_tensor_t *back = NULL;
                double t0 = s_now();
                // copy = true: a raw frame is a memcpy, what a send of a view costs
                if (sd3_codec_encode(t, &opts, true, &desc, &frame, &len, &err) != 0) {
                    fprintf(stderr, "bench cluster: %s\n", err.msg);
                    sd3_tensor_destroy(&t);
                    return 2;
                }
                double t1 = s_now();
                int rc = sd3_codec_decode(&desc, frame, len, 0, &back, &err);
                double t2 = s_now();
                free(frame);
                sd3_tensor_destroy(&back);
                if (rc) {
                    fprintf(stderr, "bench cluster: %s\n", err.msg);
                    sd3_tensor_destroy(&t);
                    return 2;
                }
                best_enc = t1 - t0 < best_enc ? t1 - t0 : best_enc;
                best_dec = t2 - t1 < best_dec ? t2 - t1 : best_dec;
            }
            printf("  %-4s %-13s %10.0f %10.0f %8.3f %12.2f\n", sd3_dtype_name(wires[w]),
                   sd3_codec_name((sd3_codec_t)c), (double)f32_bytes / best_enc * 1e-6,
                   (double)f32_bytes / best_dec * 1e-6, (double)f32_bytes / (double)len,
                   (double)len / (1 << 20));
        }
    sd3_tensor_destroy(&t);
    return 0;
}

int
sd3_bench_cluster(int argc, char **argv)
{
    const char *size = "all";
    int level = SD3_CODEC_DEFAULT_LEVEL, reps = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc)
            size = argv[++i];
        else if (!strcmp(argv[i], "--level") && i + 1 < argc)
            level = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: sd3ctl bench cluster [--size 1024|512|all] [--level N] "
                            "[--reps N]\n");
            return 2;
        }
    }
    if (reps < 1 || level < 1 || level > 19) {
        fprintf(stderr, "bench cluster: --reps >= 1 and --level 1..19\n");
        return 2;
    }
    // Keep freed buffers in the heap: without this every 76 MiB frame is a fresh mmap and
    // the figures measure page faults (a daemon that pools its buffers does not pay them).
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    printf("wire codecs, one thread: MB/s = f32 tensor bytes per CPU second (1 MB = 1e6 B); "
           "ratio = f32 bytes / frame bytes\n");
    int rc = 0;
    if (!strcmp(size, "512") || !strcmp(size, "all"))
        rc |= s_bench_shape(1024, level, reps);
    if (!strcmp(size, "1024") || !strcmp(size, "all"))
        rc |= s_bench_shape(4096, level, reps);
    rc |= sd3_bench_pipeline(); // ctl/sd3ctl_bench_pipeline.c: a real local cluster
    return rc;
}
