/*  sd3ctl_plan - `sd3ctl plan --arch A --devices 24G,16G,16G [--size N] [--dtype D]`
 *
 *  Splits the MMDiT's joint blocks [0, depth) into one contiguous range per device, in the
 *  order given, so that each device holds its weights and activations and the slowest stage
 *  is as fast as possible (the pipeline's throughput is that of its slowest stage):
 *    weights     per tensor from sd3_arch (sd3_arch_tensors), at --dtype; the first range
 *                also holds the patch/timestep/pooled/context embedders, the last the final
 *                layer
 *    activations the CFG batch of 2 at --size: what travels (x [2,N,C], ctx [2,L,C], c) plus
 *                the peak inside one block (qkv [2,T,3C], the MLP's [2,T,4C] and one head's
 *                attention scores [2,T,T], f32), T = N + L
 *    compute     sd3_mmdit_flops (MODEL.md §9) of the range for a batch of 2
 *  A dynamic program over (device, end block) minimises the largest stage time among
 *  splits where every device fits in 90% of its memory. Step time is estimated from an
 *  assumed sustained rate, --tflops (default 100: a bf16 GEMM rate an H100 sustains on these
 *  shapes; pass the rate you measured with `sd3ctl bench mmdit`). Last line: the CPUs this
 *  process may use (affinity mask and cgroup quota, sd3_cpu_threads) and why, which is the
 *  pool a CPU stage started here without --threads gets.  */
#include "sd3_arch.h"
#include "sd3_cpu_threads.h"
#include "sd3_mmdit.h"
#include "sd3ctl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_DEV 16

static int
s_parse_bytes(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v <= 0)
        return -1;
    switch (*end) {
    case 'T':
    case 't':
        v *= 1e12 / 1e9; /* fallthrough */
    case 'G':
    case 'g':
        v *= 1e9 / 1e6; /* fallthrough */
    case 'M':
    case 'm':
        v *= 1e6;
        break;
    default:
        return -1;
    }
    *out = v * (end[1] == 'i' || end[1] == 'B' ? 1 : 1); // 24G means 24e9 bytes
    return 0;
}

int
sd3ctl_plan(int argc, char **argv)
{
    const char *arch_name = NULL, *devices = NULL, *dtype = "bf16";
    int size = 1024, n_ctx = 333;
    double tflops = 100;
    for (int i = 1; i < argc; i += 2) { // each option takes one value
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            printf("usage: sd3ctl plan --arch %s --devices 24G,16G,... [--size N] "
                   "[--dtype bf16|f16|f32|f8] [--ctx L] [--tflops R]\n",
                   sd3_arch_names());
            return 0;
        }
        if (!v) {
            fprintf(stderr, "sd3ctl plan: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--arch"))
            arch_name = v;
        else if (!strcmp(a, "--devices"))
            devices = v;
        else if (!strcmp(a, "--size"))
            size = atoi(v);
        else if (!strcmp(a, "--dtype"))
            dtype = v;
        else if (!strcmp(a, "--ctx"))
            n_ctx = atoi(v);
        else if (!strcmp(a, "--tflops"))
            tflops = atof(v);
        else {
            fprintf(stderr, "sd3ctl plan: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    const sd3_arch_t *arch = arch_name ? sd3_arch_find(arch_name) : NULL;
    if (!arch || !devices) {
        fprintf(stderr, "sd3ctl plan: needs --arch (%s) and --devices 24G,16G,...\n",
                sd3_arch_names());
        return 2;
    }
    double wbytes = !strcmp(dtype, "f32") ? 4 : !strcmp(dtype, "f8") ? 1 : 2;
    if (strcmp(dtype, "f32") && strcmp(dtype, "f8") && strcmp(dtype, "bf16") &&
        strcmp(dtype, "f16")) {
        fprintf(stderr, "sd3ctl plan: --dtype %s: want bf16, f16, f32 or f8\n", dtype);
        return 2;
    }
    if (size < 16 || size % 16 || n_ctx < 1 || !(tflops > 0)) {
        fprintf(stderr, "sd3ctl plan: --size must be a multiple of 16, --ctx and --tflops > 0\n");
        return 2;
    }
    double mem[S_MAX_DEV];
    int n_dev = 0;
    char list[1024];
    snprintf(list, sizeof list, "%s", devices);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        if (n_dev == S_MAX_DEV || s_parse_bytes(tok, &mem[n_dev]) != 0) {
            fprintf(stderr, "sd3ctl plan: device '%s': want a size like 24G (at most %d)\n", tok,
                    S_MAX_DEV);
            return 2;
        }
        n_dev++;
    }
    const sd3_arch_mmdit_t *m = &arch->mmdit;
    const int D = m->depth;
    if (n_dev > D) {
        fprintf(stderr, "sd3ctl plan: %d devices for %d blocks: at most one per block\n", n_dev, D);
        return 2;
    }
    // Weights per block, and of the first-range and last-range extras.
    double block_w[SD3_MMDIT_MAX_DEPTH] = {0}, first_w = 0, last_w = 0;
    size_t nt = 0;
    sd3_err_t err = {0};
    sd3_arch_tensor_t *ts = sd3_arch_tensors(arch, SD3_COMP_MMDIT, &nt, &err);
    if (!ts) {
        fprintf(stderr, "sd3ctl plan: %s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < nt; i++) {
        double n = 1;
        for (int d = 0; d < ts[i].ndim; d++)
            n *= (double)ts[i].shape[d];
        int b;
        if (sscanf(ts[i].name, "joint_blocks.%d.", &b) == 1 && b >= 0 && b < D)
            block_w[b] += n * wbytes;
        else if (!strncmp(ts[i].name, "final_layer.", 12))
            last_w += n * wbytes;
        else
            first_w += n * wbytes;
    }
    free(ts);
    sd3_mmdit_config_t cfg = {.depth = D,
                              .hidden = m->hidden,
                              .heads = m->heads,
                              .patch = m->patch,
                              .in_channels = m->in_channels,
                              .pos_max = m->pos_embed_max,
                              .adm_in = m->adm_in,
                              .context_in = m->context_in,
                              .qk_norm = m->qk_norm};
    for (int i = 0; i < m->n_attn2 && i < 64; i++)
        cfg.attn2_mask |= 1ull << i;
    const double C = m->hidden, N = (double)(size / 16) * (size / 16), L = n_ctx, T = N + L;
    const double act = 4.0 * 2 * (N * C + L * C + C)                      // what travels
                       + 4.0 * 2 * T * (3 * C + 4 * C) + 4.0 * 2 * T * T; // the peak of a block
    // dp[k][e]: the smallest possible slowest-stage FLOPs placing blocks [0, e) on devices
    // 0..k-1; choice[k][e] the start of device k-1's range.
    static double dp[S_MAX_DEV + 1][SD3_MMDIT_MAX_DEPTH + 1];
    static int choice[S_MAX_DEV + 1][SD3_MMDIT_MAX_DEPTH + 1];
    for (int k = 0; k <= n_dev; k++)
        for (int e = 0; e <= D; e++)
            dp[k][e] = INFINITY;
    dp[0][0] = 0;
    for (int k = 1; k <= n_dev; k++)
        for (int e = k; e <= D; e++)
            for (int s = k - 1; s < e; s++) {
                if (!isfinite(dp[k - 1][s]))
                    continue;
                double w = 0;
                for (int b = s; b < e; b++)
                    w += block_w[b];
                w += (s == 0 ? first_w : 0) + (e == D ? last_w : 0);
                if (w + act > 0.9 * mem[k - 1])
                    continue;
                double f = 2 * sd3_mmdit_flops(&cfg, (int)N, n_ctx, s, e); // CFG batch of 2
                double worst = f > dp[k - 1][s] ? f : dp[k - 1][s];
                if (worst < dp[k][e]) {
                    dp[k][e] = worst;
                    choice[k][e] = s;
                }
            }
    if (!isfinite(dp[n_dev][D])) {
        double total = first_w + last_w;
        for (int b = 0; b < D; b++)
            total += block_w[b];
        fprintf(stderr,
                "sd3ctl plan: %s at %s does not fit: %.2f GB of weights plus %.2f GB "
                "of activations per device, in 90%% of the memory given\n",
                arch->name, dtype, total / 1e9, act / 1e9);
        return 1;
    }
    int begin[S_MAX_DEV], end[S_MAX_DEV];
    for (int k = n_dev, e = D; k >= 1; k--) {
        begin[k - 1] = choice[k][e];
        end[k - 1] = e;
        e = choice[k][e];
    }
    printf("plan: %s, %dx%d, weights %s, context %d tokens, %d devices; step time at an assumed "
           "%g TFLOP/s sustained per device\n",
           arch->name, size, size, dtype, n_ctx, n_dev, tflops);
    printf("  %-6s %-9s %-8s %-10s %-12s %-12s %-10s %s\n", "stage", "blocks", "memory", "weights",
           "activations", "GFLOP/step", "ms/step", "--range");
    double worst = 0, total_ms = 0;
    for (int k = 0; k < n_dev; k++) {
        double w = (begin[k] == 0 ? first_w : 0) + (end[k] == D ? last_w : 0);
        for (int b = begin[k]; b < end[k]; b++)
            w += block_w[b];
        double f = 2 * sd3_mmdit_flops(&cfg, (int)N, n_ctx, begin[k], end[k]);
        double ms = f / (tflops * 1e12) * 1e3;
        worst = ms > worst ? ms : worst;
        total_ms += ms;
        printf("  %-6d [%d,%d)%*s %-8.0f %-10.2f %-12.2f %-12.1f %-10.2f %d:%d\n", k, begin[k],
               end[k], (int)(7 - snprintf(NULL, 0, "[%d,%d)", begin[k], end[k])), "", mem[k] / 1e9,
               w / 1e9, act / 1e9, f / 1e9, ms, begin[k], end[k]);
    }
    printf("  (GB; memory as given)  one step: %.2f ms of compute end to end; with %d requests "
           "in flight a step completes every %.2f ms (the slowest stage)\n",
           total_ms, n_dev, worst);
    sd3_cpu_threads_t usable;
    sd3_cpu_threads_usable(&usable);
    printf("  cpu here: %d usable CPUs (%s); a CPU stage started here without --threads runs "
           "%d threads, and `sd3d --role all` shares them between its stages\n",
           usable.n, usable.why, usable.n);
    return 0;
}
