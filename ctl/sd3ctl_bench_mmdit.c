/*  sd3ctl_bench_mmdit - `sd3ctl bench mmdit`: seconds, FLOPs and memory of one denoising step
 *
 *    sd3ctl bench mmdit [--arch sd3-medium] [--size 512] [--steps 1] [--model PATH]
 *                       [--blocks K] [--threads N] [--dtype bf16] [--precision f32|bf16|auto]
 *
 *  One step = one MMDiT forward at batch 2 (cond and uncond, CFG) plus the guidance and the
 *  sampler step, on random inputs with L = 154 context tokens. Without --model it writes a
 *  checkpoint of the architecture with random weights (sd3_weights_mkmodel, the code of
 *  `sd3ctl mkmodel`) to /tmp/sd3-bench-mmdit-<arch>-<dtype>.safetensors once and reuses it:
 *  speed does not depend on the values. With --blocks K only the embedders and blocks
 *  [0, K) run (the stage of a pipeline; e.g. one joint block at 1024 px to show attention
 *  over 4250 tokens stays in memory). FLOPs follow MODEL.md §9 and are compared with a plain
 *  OpenBLAS sgemm measured now (sd3_bench_sgemm_peak). Memory: resident now and at peak
 *  against the stored bytes of the weights the range uses plus its activations.
 *  --precision (default auto: bf16 where the CPU has AVX512_BF16) is the GEMMs' compute
 *  precision; the bf16 peak (sd3_bench_bf16_peak, oneDNN 2048^3) is measured too. The
 *  first step packs the weights (bf16): with --steps 2 or more the steady step (the
 *  fastest after the first) is printed apart. With --model the weights' stored dtype is
 *  read from the file (--dtype only names what a random checkpoint is written in).
 *  Prints figures; it is not a test.  */
#include "sd3_arch.h"
#include "sd3_backend.h"
#include "sd3_clock.h"
#include "sd3_mmdit.h"
#include "sd3_rng.h"
#include "sd3_sampler.h"
#include "sd3_weights.h"
#include "sd3_weights_io.h"
#include "sd3_weights_write.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

// CPU seconds (user + system) of this process: with the 2 cores shared, wall time alone
// mixes in other processes' load.
static double
s_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static void
s_usage(void)
{
    fprintf(stderr,
            "usage: sd3ctl bench mmdit [--arch %s] [--size PX] [--steps N] "
            "[--model PATH] [--blocks K] [--threads N] [--dtype bf16|f16|f32] "
            "[--precision f32|bf16|auto]\n",
            sd3_arch_names());
}

static double
s_mib(double bytes)
{
    return bytes / (1024.0 * 1024.0);
}

int
sd3_bench_mmdit(int argc, char **argv)
{
    const char *arch_name = "sd3-medium", *model = NULL, *dtype_name = "bf16", *precision = NULL;
    int size = 512, steps = 1, blocks = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        bool v = i + 1 < argc;
        if (!strcmp(argv[i], "--arch") && v)
            arch_name = argv[++i];
        else if (!strcmp(argv[i], "--model") && v)
            model = argv[++i];
        else if (!strcmp(argv[i], "--dtype") && v)
            dtype_name = argv[++i];
        else if (!strcmp(argv[i], "--precision") && v)
            precision = argv[++i];
        else if (!strcmp(argv[i], "--size") && v) {
            if (sd3_bench_arg_int("mmdit", "--size", argv[++i], 16, 8192, &size) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--steps") && v) {
            if (sd3_bench_arg_int("mmdit", "--steps", argv[++i], 1, 1000, &steps) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--blocks") && v) {
            if (sd3_bench_arg_int("mmdit", "--blocks", argv[++i], 0, 64, &blocks) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--threads") && v) {
            if (sd3_bench_arg_int("mmdit", "--threads", argv[++i], 0, 1024, &threads) != 0)
                return 2;
        } else {
            s_usage();
            return 2;
        }
    }
    sd3_dtype_t dtype;
    char up[16];
    snprintf(up, sizeof up, "%s", dtype_name);
    for (char *p = up; *p; p++)
        *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
    if (size < 16 || size % 16 || size > 8192 || steps < 1 || steps > 1000 || blocks < 0 ||
        threads < 0 || sd3_dtype_from_name(up, &dtype) != 0 || !sd3_dtype_is_float(dtype)) {
        fprintf(stderr, "sd3ctl bench mmdit: --size a multiple of 16 in 16..8192, --steps "
                        "1..1000, --dtype a float type\n");
        return 2;
    }
    sd3_err_t err = {0};
    sd3_weights_t *w = NULL;
    sd3_model_t *mdl = NULL;
    sd3_backend_t *be = NULL;
    sd3_mmdit_t *mm = NULL;
    sd3_tensor_t *lat = NULL, *lat2 = NULL, *y = NULL, *ctx = NULL, *v = NULL, *den = NULL;
    sd3_mmdit_act_t act = {0};
    int rc = 1;
    char path[512];

    double peak = sd3_bench_sgemm_peak(1024);
    double bpeak = sd3_bench_bf16_peak(2048);
    printf("sgemm peak (OpenBLAS, 1024^3, measured now): %.1f GFLOP/s\n", peak);
    printf("bf16 peak (oneDNN matmul, 2048^3, measured now): %.1f GFLOP/s\n", bpeak);
    if (!model) {
        const sd3_arch_t *arch = sd3_arch_find(arch_name);
        if (!arch) {
            fprintf(stderr, "sd3ctl bench mmdit: unknown --arch '%s' (%s)\n", arch_name,
                    sd3_arch_names());
            return 2;
        }
        snprintf(path, sizeof path, "/tmp/sd3-bench-mmdit-%s-%s.safetensors", arch_name,
                 dtype_name);
        if (access(path, R_OK) == 0) {
            fprintf(stderr, "reusing random checkpoint %s\n", path);
        } else {
            sd3_wwrite_opts_t opts;
            sd3_wwrite_opts_init(&opts, arch);
            for (int c = 0; c < SD3_COMP_COUNT; c++)
                opts.want[c] = c == SD3_COMP_MMDIT;
            opts.dtype = dtype;
            opts.origin = "sd3ctl bench mmdit (random weights)";
            double t0 = sd3_now_s();
            if (sd3_weights_mkmodel(arch, &opts, 1, path, &err) != 0)
                goto fail;
            fprintf(stderr, "random %s MMDiT (%s) written to %s in %.1f s\n", arch_name, dtype_name,
                    path, sd3_now_s() - t0);
        }
        model = path;
    }
    if (!(mdl = sd3_model_open(model, &err)) || !(w = sd3_weights_open(mdl, SD3_COMP_MMDIT, &err)))
        goto fail;
    sd3_mmdit_config_t cfg;
    if (sd3_mmdit_config_detect(w, &cfg, &err))
        goto fail;
    int last = blocks > 0 && blocks < cfg.depth ? blocks : cfg.depth;
    size_t rss0 = sd3_bench_rss_now();
    double t_load = sd3_now_s();
    if (!(be = sd3_backend_new("cpu", threads, &err)) ||
        sd3_backend_set_precision(be, precision, &err) != 0 ||
        !(mm = sd3_mmdit_new(be, w, 0, last, &err)))
        goto fail;
    for (size_t i = 0; model != path && i < sd3_weights_count(w); i++)
        if (!strncmp(sd3_weights_name(w, i), "joint_blocks.0.", 15)) { // what the file holds
            dtype_name = sd3_dtype_name(sd3_weights_dtype(w, sd3_weights_name(w, i)));
            break;
        }
    t_load = sd3_now_s() - t_load;
    const int64_t Z = cfg.in_channels, h = size / 8, B = 2, L = 154, C = cfg.hidden;
    const int64_t N = (h / cfg.patch) * (h / cfg.patch);
    if (!(lat = sd3_rng_noise(1, 4, (int64_t[]){1, Z, h, h}, &err)) ||
        !(lat2 = sd3_rng_noise(2, 4, (int64_t[]){B, Z, h, h}, &err)) ||
        !(y = sd3_rng_noise(3, 2, (int64_t[]){B, cfg.adm_in}, &err)) ||
        !(ctx = sd3_rng_noise(4, 3, (int64_t[]){B, L, cfg.context_in}, &err)) ||
        !(v = sd3_tensor_new_err(SD3_F32, 4, lat2->shape, "v", &err)) ||
        !(den = sd3_tensor_new_err(SD3_F32, 4, lat->shape, "denoised", &err)))
        goto fail;
    printf("model %s: %s, depth %d, hidden %d, %s, blocks [0,%d)%s\n", model,
           sd3_mmdit_config_name(&cfg), cfg.depth, cfg.hidden, dtype_name, last,
           last == cfg.depth ? " + final" : " (no final layer)");
    printf("size %dx%d: latent %lldx%lld, N=%lld image + L=%lld context tokens, batch %lld "
           "(CFG), %d threads, precision %s\n",
           size, size, (long long)h, (long long)h, (long long)N, (long long)L, (long long)B,
           be->n_threads, sd3_precision_name(be->precision));
    sd3_sampler_opts_t so = {.kind = SD3_SAMPLER_EULER, .cfg_scale = 5.0f, .steps = steps};
    float sigmas[1001];
    for (int i = 0; i <= steps; i++)
        sigmas[i] = 1.0f - (float)i / (float)steps;
    sd3_sampler_state_t st;
    sd3_sampler_state_init(&st);
    double t_steps = 0, cpu0 = s_cpu(), steady = 0;
    for (int s = 0; s < steps; s++) {
        float ts[2] = {sigmas[s] * 1000.0f, sigmas[s] * 1000.0f};
        double t0 = sd3_now_s();
        if (last == cfg.depth) {
            if (sd3_mmdit_forward(mm, lat2, ts, y, ctx, 0, v, &err) ||
                sd3_sampler_guide(&so, lat, sigmas[s], v, NULL, den, NULL, &err) ||
                sd3_sampler_step(&so, sigmas, steps + 1, &st, lat, den, &err))
                goto fail_st;
        } else {
            if (sd3_mmdit_embed(mm, lat2, ts, y, ctx, &act, &err) ||
                sd3_mmdit_blocks(mm, &act, 0, &err))
                goto fail_st;
            sd3_mmdit_act_fini(be, &act);
        }
        double dt = sd3_now_s() - t0;
        t_steps += dt;
        if (s > 0 && (steady == 0 || dt < steady))
            steady = dt;
        fprintf(stderr, "step %d: %.2f s\n", s, dt);
    }
    sd3_sampler_state_fini(&st);
    double flops = (double)B * sd3_mmdit_flops(&cfg, (int)N, (int)L, 0, last);
    double sec = t_steps / steps, cpu_sec = (s_cpu() - cpu0) / steps;
    size_t wbytes = 0;
    for (size_t i = 0; i < sd3_weights_count(w); i++) {
        const char *name = sd3_weights_name(w, i);
        int blk = -1;
        if (sscanf(name, "joint_blocks.%d.", &blk) == 1
                ? blk < last
                : (strncmp(name, "final_layer", 11) || last == cfg.depth)) {
            int nd;
            int64_t sh[SD3_MAX_DIM];
            size_t n;
            if (sd3_weights_shape(w, name, &nd, sh) == 0 && sd3_shape_numel(nd, sh, &n) == 0)
                wbytes += n * sd3_dtype_size(sd3_weights_dtype(w, name));
        }
    }
    double act_bytes = 4.0 * B * (double)(N * C + L * C + C); // what travels between stages
    // sd3_mmdit_ws_t: silu_c, mods (15C), ln/u/attn_s/y/qkv/h (11 M C), ln_x (N C), q/k/v/o
    double ws_bytes =
        4.0 * B * (double)C * (16.0 + 11.0 * (double)(N > L ? N : L) + N + 4.0 * (N + L));
    printf("seconds per step: %.2f wall, %.2f CPU over %d threads (mean of %d; weights loaded in "
           "%.2f s)\n",
           sec, cpu_sec, be->n_threads, steps, t_load);
    printf("model FLOPs per step: %.1f GFLOP (MODEL.md §9, batch %lld) -> %.1f GFLOP/s = %.0f%% of "
           "sgemm peak %.1f\n",
           flops * 1e-9, (long long)B, flops / sec * 1e-9, 100.0 * flops / sec * 1e-9 / peak, peak);
    printf("  per CPU-second (the machine is shared): %.1f GFLOP per busy thread-second\n",
           flops / cpu_sec * 1e-9);
    if (steady > 0)
        printf("steady step (fastest after the first): %.2f s wall -> %.1f GFLOP/s = %.0f%% of "
               "sgemm peak, %.0f%% of bf16 peak %.1f\n",
               steady, flops / steady * 1e-9, 100.0 * flops / steady * 1e-9 / peak,
               bpeak > 0 ? 100.0 * flops / steady * 1e-9 / bpeak : 0.0, bpeak);
    printf("memory: resident %.0f MiB now, %.0f MiB peak (%.0f MiB before loading); weights of "
           "the range %.0f MiB stored + activations %.1f MiB (x, ctx, c) + block scratch "
           "~%.0f MiB\n",
           s_mib((double)sd3_bench_rss_now()), s_mib((double)sd3_bench_rss_peak()),
           s_mib((double)rss0), s_mib((double)wbytes), s_mib(act_bytes), s_mib(ws_bytes));
    rc = 0;
    goto done;
fail_st:
    sd3_sampler_state_fini(&st);
fail:
    fprintf(stderr, "sd3ctl bench mmdit: %s\n", err.msg[0] ? err.msg : "failed");
    rc = 2;
done:
    sd3_mmdit_act_fini(be, &act);
    sd3_tensor_destroy(&lat);
    sd3_tensor_destroy(&lat2);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&ctx);
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&den);
    sd3_mmdit_destroy(&mm);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&mdl);
    sd3_backend_destroy(&be);
    return rc;
}
