/*  sd3ctl_bench_encode - `sd3ctl bench encode`: the text encoders on one prompt
 *
 *    sd3ctl bench encode --model PATH [--no-t5] [--t5-tokens N] [--threads N]
 *                        [--backend cpu|cuda] [--reps N] [--prompt TEXT]
 *
 *  Opens CLIP-L, CLIP-G and T5 of a checkpoint (any layout; real-size random weights from
 *  `sd3ctl mkmodel` do), encodes one prompt's ids with each and prints seconds and GFLOP/s
 *  per encoder against sd3_bench_sgemm_peak(), the whole conditioning, resident memory
 *  against the stored weight bytes, and the time of an embedding-cache hit. The ids are a
 *  fixed synthetic prompt (start, 12 content ids, end, pads; T5: content, </s>, pads): the
 *  tokenizers cost microseconds and are not what is measured here. Figures, not a test.  */
#include "sd3_backend.h"
#include "sd3_clip.h"
#include "sd3_clock.h"
#include "sd3_cond.h"
#include "sd3_embcache.h"
#include "sd3_log.h"
#include "sd3_t5.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_CLIP_LEN 77

static void
s_usage(void)
{
    fprintf(stderr, "usage: sd3ctl bench encode --model PATH [--no-t5] [--t5-tokens N] "
                    "[--threads N] [--backend cpu|cuda] [--reps N] [--prompt TEXT] "
                    "[--precision f32|bf16|auto]\n");
}

static double
s_gib(size_t bytes)
{
    return (double)bytes / (double)(1u << 30);
}

int
sd3_bench_encode(int argc, char **argv)
{
    const char *model_path = NULL, *backend = "cpu", *prompt = "a photo of a cat";
    const char *precision = NULL; // auto
    bool no_t5 = false;
    int t5_tokens = 77, threads = 0, reps = 1;
    for (int i = 1; i < argc; i++) {
        bool v = i + 1 < argc;
        if (!strcmp(argv[i], "--model") && v)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--backend") && v)
            backend = argv[++i];
        else if (!strcmp(argv[i], "--precision") && v)
            precision = argv[++i];
        else if (!strcmp(argv[i], "--prompt") && v)
            prompt = argv[++i];
        else if (!strcmp(argv[i], "--no-t5"))
            no_t5 = true;
        else if (!strcmp(argv[i], "--t5-tokens") && v) {
            if (sd3_bench_arg_int("encode", "--t5-tokens", argv[++i], 2, 4096, &t5_tokens) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--threads") && v) {
            if (sd3_bench_arg_int("encode", "--threads", argv[++i], 0, 1024, &threads) != 0)
                return 2;
        } else if (!strcmp(argv[i], "--reps") && v) {
            if (sd3_bench_arg_int("encode", "--reps", argv[++i], 1, 100, &reps) != 0)
                return 2;
        } else {
            s_usage();
            return 2;
        }
    }
    if (!model_path || t5_tokens < 2 || t5_tokens > 4096 || reps < 1 || reps > 100 || threads < 0) {
        s_usage();
        return 2;
    }

    sd3_err_t err = {0};
    sd3_model_t *model = NULL;
    sd3_backend_t *be = NULL;
    sd3_cond_t *cond = NULL;
    sd3_embcache_t *cache = NULL;
    sd3_tensor_t *ctx = NULL, *pooled = NULL, *hit_ctx = NULL, *hit_pooled = NULL;
    int rc = 1;

    double peak = sd3_bench_sgemm_peak(1024);
    printf("sgemm_peak_gflops=%.1f (OpenBLAS, M=N=K=1024)\n", peak);
    printf("bf16_peak_gflops=%.1f (oneDNN matmul, M=N=K=2048)\n", sd3_bench_bf16_peak(2048));
    size_t rss0 = sd3_bench_rss_now();
    double t0 = sd3_now_s();
    if (!(model = sd3_model_open(model_path, &err)) ||
        !(be = sd3_backend_new(backend, threads, &err)) ||
        sd3_backend_set_precision(be, precision, &err) != 0 ||
        !(cond = sd3_cond_new_from_model(be, model, !no_t5, &err)))
        goto fail;
    double t_open = sd3_now_s() - t0;
    size_t wbytes = sd3_cond_weight_bytes(cond);
    printf("model=%s layout=%s backend=%s precision=%s threads=%d t5=%s open_s=%.2f "
           "weight_bytes=%zu (%.2f GiB)\n",
           model_path, sd3_layout_name(sd3_model_layout(model)), be->ops->name,
           sd3_precision_name(be->precision), be->n_threads,
           sd3_cond_has_t5(cond) ? "yes" : "no", t_open, wbytes, s_gib(wbytes));

    // A fixed synthetic prompt: CLIP start, 12 content ids, end, pads (L: end, G: 0).
    int32_t ids_l[S_CLIP_LEN], ids_g[S_CLIP_LEN], *ids_t5 = calloc((size_t)t5_tokens, 4);
    if (!ids_t5) {
        sd3_err_set(&err, SD3_ENOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < S_CLIP_LEN; i++) {
        int content = i >= 1 && i <= 12;
        ids_l[i] = i == 0 ? 49406 : content ? 320 + 37 * i : 49407;
        ids_g[i] = i == 0 ? 49406 : content ? 320 + 37 * i : i == 13 ? 49407 : 0;
    }
    for (int i = 0; i < t5_tokens; i++)
        ids_t5[i] = i < 12 ? 100 + 53 * i : i == 12 ? 1 : 0;

    const char *names[3] = {"clip_l", "clip_g", "t5"};
    double total_flops = 0;
    for (int e = 0; e < 3; e++) {
        double best = 1e30, flops;
        if (e == 2 && !sd3_cond_has_t5(cond))
            continue;
        for (int r = 0; r < reps + 1; r++) { // the first run touches the weight pages
            double ts = sd3_now_s();
            if (e < 2) {
                sd3_clip_t *clip = e == 0 ? sd3_cond_clip_l(cond) : sd3_cond_clip_g(cond);
                sd3_clip_out_t out;
                if (sd3_clip_encode(clip, e == 0 ? ids_l : ids_g, S_CLIP_LEN, &out, NULL, NULL,
                                    &err))
                    goto fail_ids;
                sd3_clip_out_fini(clip, &out);
            } else {
                sd3_tensor_t *h = NULL;
                if (sd3_t5_encode(sd3_cond_t5(cond), ids_t5, t5_tokens, &h, NULL, NULL, &err))
                    goto fail_ids;
                be->ops->tensor_free(be, &h);
            }
            double dt = sd3_now_s() - ts;
            if (r == 0)
                printf("%s first_s=%.3f (cold pages)\n", names[e], dt);
            else if (dt < best)
                best = dt;
        }
        flops = e < 2 ? sd3_clip_flops(
                            sd3_clip_config(e == 0 ? sd3_cond_clip_l(cond) : sd3_cond_clip_g(cond)),
                            S_CLIP_LEN)
                      : sd3_t5_flops(sd3_t5_config(sd3_cond_t5(cond)), t5_tokens);
        total_flops += flops;
        printf("%s tokens=%d s=%.3f gflop=%.1f gflops=%.1f of_peak=%.0f%%\n", names[e],
               e < 2 ? S_CLIP_LEN : t5_tokens, best, flops * 1e-9, flops * 1e-9 / best,
               100.0 * flops * 1e-9 / best / peak);
    }

    // The whole conditioning, then the cache: a miss costs an encode, a hit a copy.
    sd3_cond_opts_t opts = SD3_COND_OPTS_INIT;
    opts.no_t5 = no_t5;
    sd3_cond_tokens_t tok = {.l = ids_l,
                             .n_l = S_CLIP_LEN,
                             .g = ids_g,
                             .n_g = S_CLIP_LEN,
                             .t5 = ids_t5,
                             .n_t5 = t5_tokens};
    if (!sd3_cond_has_t5(cond) && !no_t5)
        opts.no_t5 = true;
    if (!sd3_cond_has_t5(cond))
        opts.context_width = 4096;
    t0 = sd3_now_s();
    if (sd3_cond_encode(cond, &tok, &opts, &ctx, &pooled, &err))
        goto fail_ids;
    double t_cond = sd3_now_s() - t0;
    printf("cond s=%.3f gflops=%.1f context=[1,%lld,%lld] pooled=[1,%lld]\n", t_cond,
           total_flops * 1e-9 / t_cond, (long long)ctx->shape[1], (long long)ctx->shape[2],
           (long long)pooled->shape[1]);

    uint64_t fp[2];
    sd3_cond_fingerprint(cond, fp);
    cache = sd3_embcache_new((size_t)256 << 20);
    if (!cache) {
        sd3_err_set(&err, SD3_ENOMEM, "out of memory");
        goto fail_ids;
    }
    t0 = sd3_now_s();
    sd3_embkey_t key = sd3_embcache_key(prompt, strlen(prompt), &opts, fp, NULL);
    double t_key = sd3_now_s() - t0;
    if (sd3_embcache_put(cache, key, ctx, pooled, &err))
        goto fail_ids;
    const int n_hits = 100;
    t0 = sd3_now_s();
    for (int i = 0; i < n_hits; i++) {
        sd3_embkey_t k = sd3_embcache_key(prompt, strlen(prompt), &opts, fp, NULL);
        if (sd3_embcache_get(cache, k, &hit_ctx, &hit_pooled, &err) != 1) {
            sd3_err_set(&err, SD3_EINTERNAL, "cache: expected a hit");
            goto fail_ids;
        }
        sd3_tensor_destroy(&hit_ctx);
        sd3_tensor_destroy(&hit_pooled);
    }
    double t_hit = (sd3_now_s() - t0) / n_hits;
    printf("cache_hit_us=%.1f key_us=%.2f entry_bytes=%zu speedup=%.0fx\n", t_hit * 1e6,
           t_key * 1e6, sd3_embcache_entry_bytes(ctx, pooled), t_cond / t_hit);

    size_t rss = sd3_bench_rss_now(), rss_peak = sd3_bench_rss_peak();
    printf("rss_gib=%.2f rss_peak_gib=%.2f rss_at_start_gib=%.2f weights_gib=%.2f "
           "rss_over_weights=%.2f\n",
           s_gib(rss), s_gib(rss_peak), s_gib(rss0), s_gib(wbytes),
           wbytes ? (double)(rss_peak - rss0) / (double)wbytes : 0.0);
    rc = 0;
fail_ids:
    free(ids_t5);
fail:
    if (rc)
        fprintf(stderr, "sd3ctl bench encode: %s\n", err.msg[0] ? err.msg : "failed");
    sd3_tensor_destroy(&ctx);
    sd3_tensor_destroy(&pooled);
    sd3_embcache_destroy(&cache);
    sd3_cond_destroy(&cond);
    sd3_backend_destroy(&be);
    sd3_model_destroy(&model);
    return rc;
}
