/*  sd3ctl_bench_generate - `sd3ctl bench generate`: one whole request, phase by phase
 *
 *    sd3ctl bench generate [--arch sd3-medium] [--size 512] [--steps 2] [--model PATH]
 *                          [--no-t5] [--threads N] [--dtype bf16]
 *
 *  Runs prompt -> PNG through the one-process pipeline (sd3_local: the stage calls a cluster
 *  makes) and prints seconds per phase (encode the two prompts, each step, VAE decode), the
 *  peak resident memory against the stored weight bytes, and the plain sgemm peak of this
 *  machine measured in the same run. Without --model it writes a random checkpoint of the
 *  architecture in the SD3.5 layout (model file + text_encoders/, our own tokenizer files
 *  beside it) under /tmp once and reuses it. A benchmark prints figures; it is not a test.  */
#include "sd3_arch.h"
#include "sd3_local.h"
#include "sd3_tok.h"
#include "sd3_weights_write.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    double steps[SD3_GEN_MAX_STEPS + 1];
    int n;
} s_times_t;

static void
s_progress(void *user, int step, int n, double seconds)
{
    s_times_t *t = user;
    (void)n;
    if (step > 0 && step <= SD3_GEN_MAX_STEPS) {
        t->steps[step - 1] = seconds;
        t->n = step;
    }
}

static size_t
s_dir_bytes(const char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "du -sb '%s' 2>/dev/null", path);
    FILE *f = popen(cmd, "r");
    unsigned long long b = 0;
    if (f) {
        if (fscanf(f, "%llu", &b) != 1)
            b = 0;
        pclose(f);
    }
    return (size_t)b;
}

int
sd3_bench_generate(int argc, char **argv)
{
    const char *arch_name = "sd3-medium", *model = NULL, *dtype_name = "bf16";
    int size = 512, steps = 2, threads = 0;
    bool no_t5 = false;
    sd3_err_t err = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--arch") && v)
            arch_name = argv[++i];
        else if (!strcmp(a, "--size") && v) {
            if (sd3_bench_arg_int("generate", "--size", argv[++i], 16, 16384, &size) != 0)
                return 2;
        } else if (!strcmp(a, "--steps") && v) {
            if (sd3_bench_arg_int("generate", "--steps", argv[++i], 1, 1000, &steps) != 0)
                return 2;
        } else if (!strcmp(a, "--model") && v)
            model = argv[++i];
        else if (!strcmp(a, "--threads") && v) {
            if (sd3_bench_arg_int("generate", "--threads", argv[++i], 0, 1024, &threads) != 0)
                return 2;
        } else if (!strcmp(a, "--dtype") && v)
            dtype_name = argv[++i];
        else if (!strcmp(a, "--no-t5"))
            no_t5 = true;
        else {
            fprintf(stderr, "usage: sd3ctl bench generate [--arch A] [--size PX] [--steps N] "
                            "[--model PATH] [--no-t5] [--threads N] [--dtype bf16|f16]\n");
            return 2;
        }
    }
    if (size <= 0 || size % 16 || steps <= 0 || steps > SD3_GEN_MAX_STEPS) {
        fprintf(stderr, "sd3ctl bench generate: --size must be a multiple of 16, --steps 1..%d\n",
                SD3_GEN_MAX_STEPS);
        return 2;
    }
    char path[512];
    if (!model) {
        const sd3_arch_t *arch = sd3_arch_find(arch_name);
        sd3_dtype_t dt = !strcmp(dtype_name, "f16") ? SD3_F16 : SD3_BF16;
        if (!arch) {
            fprintf(stderr, "sd3ctl bench generate: unknown arch '%s'\n", arch_name);
            return 2;
        }
        snprintf(path, sizeof path, "/tmp/sd3-bench-generate-%s-%s%s", arch_name, dtype_name,
                 no_t5 ? "-no-t5" : "");
        char probe[600];
        snprintf(probe, sizeof probe, "%s/tokenizers/tokenizer/vocab.json", path);
        if (access(probe, R_OK) != 0) {
            sd3_wwrite_opts_t opts;
            sd3_wwrite_opts_init(&opts, arch);
            opts.layout = SD3_LAYOUT_SD35;
            opts.dtype = dt;
            opts.want[SD3_COMP_T5] = !no_t5;
            opts.origin = "sd3ctl bench generate (random weights)";
            fprintf(stderr, "bench generate: writing a random %s checkpoint to %s ...\n", arch_name,
                    path);
            char tokdir[600];
            snprintf(tokdir, sizeof tokdir, "%s/tokenizers", path);
            if (sd3_weights_mkmodel(arch, &opts, 1, path, &err) != 0 ||
                sd3_tok_write_tiny_set(tokdir, &err) != 0) {
                fprintf(stderr, "sd3ctl bench generate: %s\n", err.msg);
                return 1;
            }
        }
        model = path;
    }
    double peak = sd3_bench_sgemm_peak(1024);
    sd3_local_opts_t lo = SD3_LOCAL_OPTS_INIT;
    lo.model_path = model;
    lo.n_threads = threads;
    lo.load_t5 = !no_t5;
    sd3_local_t *local = sd3_local_new(&lo, &err);
    if (!local) {
        fprintf(stderr, "sd3ctl bench generate: %s\n", err.msg);
        return 1;
    }
    sd3_gen_params_t p;
    sd3_gen_params_init(&p, sd3_local_config(local));
    sd3_gen_params_set_prompt(&p, "a photo of a cat sitting on a red chair, soft light", "", &err);
    p.width = p.height = size;
    p.steps = steps;
    p.no_t5 = no_t5;
    s_times_t times = {0};
    sd3_local_result_t res = {0};
    int rc = sd3_local_generate(local, &p, NULL, s_progress, &times, NULL, NULL, &res, &err);
    if (rc != 0) {
        fprintf(stderr, "sd3ctl bench generate: %s\n", err.msg);
    } else {
        size_t stored = s_dir_bytes(model);
        const sd3_mmdit_config_t *cfg = sd3_local_config(local);
        int n_img = (size / 16) * (size / 16);
        double flops = 2.0 * sd3_mmdit_flops(cfg, n_img, 154, 0, cfg->depth);
        printf("bench generate: %s %dx%d, %d steps, T5 %s, %d threads\n", sd3_local_arch(local),
               size, size, steps, no_t5 ? "off" : "on", threads);
        printf("  sgemm peak (OpenBLAS, 1024^3, now): %.1f GFLOP/s\n", peak);
        printf("  encode prompt + negative: %.2f s\n", res.seconds_encode);
        for (int i = 0; i < times.n; i++)
            printf("  step %d: %.2f s (%.1f GFLOP -> %.1f GFLOP/s, %.0f%% of peak)\n", i + 1,
                   times.steps[i], flops * 1e-9, flops * 1e-9 / times.steps[i],
                   100.0 * flops * 1e-9 / times.steps[i] / peak);
        printf("  vae decode: %.2f s\n", res.seconds_decode);
        printf("  peak resident %.2f GiB, stored weights %.2f GiB (ratio %.2f)\n",
               (double)sd3_bench_rss_peak() / (1 << 30), (double)stored / (1 << 30),
               stored ? (double)sd3_bench_rss_peak() / (double)stored : 0.0);
    }
    sd3_local_result_fini(&res);
    sd3_gen_params_fini(&p);
    sd3_local_destroy(&local);
    return rc ? 1 : 0;
}
