/*  sd3ctl_bench_cluster - `sd3ctl bench cluster`: what the wire and the pipeline cost
 *
 *  Four parts, chosen with --only (default codec,hop,pipeline; act joins with --blocks):
 *  codec (here): per codec and transfer dtype, encode and decode MB/s (of the f32 bytes
 *    the stage hands over) and the compression ratio, on activation-shaped f32 tensors: the
 *    image tokens x [B, N, C] one mmdit stage hands the next, SD3.5-Large (C = 2432)
 *    with B = 2 (CFG): N = 4096 at 1024 px, N = 1024 at 512 px. The values are N(0, 1)
 *    with 0.1% outliers of 50..800 (the massive-activation channels of DiTs).
 *  hop (sd3ctl_bench_hop.c): one STEP message over a real ZeroMQ TCP pair of sd3_links:
 *    bytes on the wire and latency per codec and wire dtype, at L = 154 and 333.
 *  act (sd3ctl_bench_act.c): the codecs on the real activations of a real-width model.
 *  pipeline (sd3ctl_bench_pipeline.c): images/min of a local cluster, 1, 2, 4 stages.
 *
 *    sd3ctl bench cluster [--only PARTS] [--size 1024|512|all] [--level N] [--reps N]
 *                         [--hop-reps N] [--ctx L] [--blocks K [--model PATH | --arch A]
 *                         [--act-size PX] [--threads N] [--sigma S] [--keep]]
 *                         [--alloc tuned|glibc]
 *  Numbers are checked (sd3_bench_arg_int): a bad one is one line on stderr and exit 2.  */
#include "sd3_clock.h"
#include "sd3_codec.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

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
    return sd3_clock_s(CLOCK_THREAD_CPUTIME_ID);
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
    sd3_bench_fill_activations(t->data, (size_t)sd3_tensor_numel(t), 0x5eed + (uint64_t)n_tokens);
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

static void
s_usage(FILE *out)
{
    fprintf(
        out,
        "usage: sd3ctl bench cluster [--only codec,hop,pipeline,act] [--size 512|1024|all]\n"
        "                            [--level N] [--reps N] [--hop-reps N] [--ctx L]\n"
        "                            [--blocks K [--model PATH | --arch A] [--act-size PX]\n"
        "                             [--threads N] [--sigma S] [--keep]]\n"
        "                            [--alloc tuned|glibc]\n"
        "  codec: codec MB/s and ratio on synthetic activations; hop: one STEP over a\n"
        "  ZeroMQ TCP loopback pair per codec and wire dtype (bytes, latency); pipeline:\n"
        "  images/min of a local tiny cluster for 1, 2, 4 stages and the controller's\n"
        "  time per step; act (with --blocks K): the codecs on the activations of embed +\n"
        "  blocks [0, K) of a real-width SD3.5-Large (random weights written to /tmp unless\n"
        "  --model; --arch: another random one). Default: codec,hop,pipeline (+ act with\n"
        "  --blocks); --ctx 0 = both L = 154 and 333 (T5 at 77 and 256 tokens). --alloc glibc:\n"
        "  malloc as sd3d has it (frames over 32 MiB are fresh mmaps); tuned: one arena,\n"
        "  freed memory kept (default).\n");
}

// "codec,hop" -> bits of S_PART_*; -1 on an unknown name.
enum { S_PART_CODEC = 1, S_PART_HOP = 2, S_PART_PIPELINE = 4, S_PART_ACT = 8 };

static int
s_parts(const char *list)
{
    static const struct {
        const char *name;
        int bit;
    } all[] = {{"codec", S_PART_CODEC},
               {"hop", S_PART_HOP},
               {"pipeline", S_PART_PIPELINE},
               {"act", S_PART_ACT}};
    int parts = 0;
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        int bit = 0;
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            if (strlen(all[i].name) == n && !strncmp(p, all[i].name, n))
                bit = all[i].bit;
        if (!bit)
            return -1;
        parts |= bit;
        p += n + (p[n] == ',');
    }
    return parts ? parts : -1;
}

int
sd3_bench_cluster(int argc, char **argv)
{
    const char *size = "all", *only = NULL;
    bool tuned = true;
    int level = SD3_CODEC_DEFAULT_LEVEL, reps = 2, hop_reps = 5, ctx_tokens = 0;
    sd3_bench_act_opts_t act = {.blocks = 0, .size = 512, .ctx_tokens = 154, .sigma = 1.0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--keep")) {
            act.keep = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        }
        if (!v) {
            s_usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--size"))
            size = v;
        else if (!strcmp(a, "--only"))
            only = v;
        else if (!strcmp(a, "--model"))
            act.model = v;
        else if (!strcmp(a, "--arch"))
            act.arch = v;
        else if (!strcmp(a, "--alloc")) {
            if (strcmp(v, "tuned") && strcmp(v, "glibc")) {
                fprintf(stderr, "sd3ctl bench cluster: --alloc '%s': want tuned or glibc\n", v);
                return 2;
            }
            tuned = !strcmp(v, "tuned");
        } else if (!strcmp(a, "--level"))
            bad = sd3_bench_arg_int("cluster", a, v, 1, 19, &level);
        else if (!strcmp(a, "--reps"))
            bad = sd3_bench_arg_int("cluster", a, v, 1, 100, &reps);
        else if (!strcmp(a, "--hop-reps"))
            bad = sd3_bench_arg_int("cluster", a, v, 1, 1000, &hop_reps);
        else if (!strcmp(a, "--ctx"))
            bad = sd3_bench_arg_int("cluster", a, v, 0, 4096, &ctx_tokens);
        else if (!strcmp(a, "--blocks"))
            bad = sd3_bench_arg_int("cluster", a, v, 1, 63, &act.blocks);
        else if (!strcmp(a, "--act-size"))
            bad = sd3_bench_arg_int("cluster", a, v, 16, 4096, &act.size);
        else if (!strcmp(a, "--threads"))
            bad = sd3_bench_arg_int("cluster", a, v, 0, 1024, &act.threads);
        else if (!strcmp(a, "--sigma"))
            bad = sd3_bench_arg_double("cluster", a, v, 0.0, 1.0, &act.sigma);
        else {
            fprintf(stderr, "sd3ctl bench cluster: unexpected argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
        if (bad)
            return 2;
    }
    int parts = only ? s_parts(only)
                     : S_PART_CODEC | S_PART_HOP | S_PART_PIPELINE | (act.blocks ? S_PART_ACT : 0);
    if (parts < 0) {
        fprintf(stderr,
                "sd3ctl bench cluster: --only '%s': want a comma list of codec, hop, "
                "pipeline, act\n",
                only);
        return 2;
    }
    if (strcmp(size, "512") && strcmp(size, "1024") && strcmp(size, "all")) {
        fprintf(stderr, "sd3ctl bench cluster: --size '%s': want 512, 1024 or all\n", size);
        return 2;
    }
    if ((parts & S_PART_ACT) && !act.blocks) {
        fprintf(stderr, "sd3ctl bench cluster: act needs --blocks K (1..37)\n");
        return 2;
    }
    if (act.size % 16) {
        fprintf(stderr, "sd3ctl bench cluster: --act-size %d: want a multiple of 16\n", act.size);
        return 2;
    }
    act.level = level;
    if (ctx_tokens)
        act.ctx_tokens = ctx_tokens;
    // --alloc tuned (default): keep freed buffers in the heap, and one arena for every
    // thread. Without this every frame above 32 MiB is a fresh mmap and the figures measure
    // page faults: glibc mmaps such blocks (its dynamic threshold stops at 32 MiB), and a
    // thread's own arena (ZeroMQ's I/O thread receives into one) cannot hold a block of 64
    // MiB at all; at 1024 px each hop then pays ~19k faults per 76 MiB frame. --alloc glibc
    // leaves the defaults, as sd3d runs today (it sets no mallopt).
    if (tuned) {
        mallopt(M_ARENA_MAX, 1);
        mallopt(M_MMAP_THRESHOLD, 1 << 30);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
    printf("allocator: %s\n", tuned ? "tuned (M_ARENA_MAX 1, M_MMAP_THRESHOLD and "
                                      "M_TRIM_THRESHOLD 1 GiB)"
                                    : "glibc defaults (as sd3d)");
    const bool s512 = strcmp(size, "1024") != 0, s1024 = strcmp(size, "512") != 0;
    int rc = 0;
    if (parts & S_PART_CODEC) {
        printf("wire codecs, one thread: MB/s = f32 tensor bytes per CPU second (1 MB = 1e6 B); "
               "ratio = f32 bytes / frame bytes\n");
        if (s512)
            rc |= s_bench_shape(1024, level, reps);
        if (s1024)
            rc |= s_bench_shape(4096, level, reps);
    }
    if (parts & S_PART_HOP) {
        printf("per hop (one STEP between mmdit ranges, SD3.5-Large C = 2432, B = 2): send = "
               "copy + encode + hand to ZeroMQ; recv = transfer + checks + decode + shape "
               "checks; CPU = all threads of the process; MB/s = f32 bytes / hop wall time\n");
        const int ls[2] = {ctx_tokens ? ctx_tokens : 154, ctx_tokens ? 0 : 333};
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < 2 && ls[l]; l++)
                if (s == 0 ? s512 : s1024)
                    rc |= sd3_bench_hop(s == 0 ? 1024 : 4096, ls[l], level, hop_reps);
    }
    if (parts & S_PART_ACT)
        rc |= sd3_bench_act(&act);
    if (parts & S_PART_PIPELINE)
        rc |= sd3_bench_pipeline(); // ctl/sd3ctl_bench_pipeline.c: a real local cluster
    return rc ? (rc & 2 ? 2 : 1) : 0;
}
