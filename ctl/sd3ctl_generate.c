/*  sd3ctl_generate - `sd3ctl generate PROMPT -o out.png [options]`
 *
 *  Without --controller every role runs in this process (sd3_local); with it, the request
 *  goes to a cluster's controller. With no --model, the embedded default tiny model is used
 *  (written on first use). A progress bar on a terminal, plain lines otherwise.  */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd3_local.h"
#include "sd3_png.h"
#include "sd3_stage.h"
#include "sd3ctl.h"

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: sd3ctl generate PROMPT -o OUT.png [options]\n"
            "  --negative TEXT        negative prompt (default empty)\n"
            "  --size WxH             image size, multiples of 16 (default 1024x1024, or the\n"
            "                         largest square the model's position table covers)\n"
            "  --steps N --cfg S --shift S --seed N\n"
            "  --sampler euler|dpmpp_2m\n"
            "  --slg [SCALE]          skip-layer guidance (SD3.5-medium; default scale 2.5)\n"
            "  --slg-layers 7,8,9 --slg-start F --slg-end F\n"
            "  --no-t5 --t5-len N     drop T5 / fixed T5 length (diffusers: 256)\n"
            "  --init-image FILE.png --strength S   img2img\n"
            "  --model PATH           checkpoint: file, SD3.5 folder or diffusers folder\n"
            "                         (default: the embedded tiny model)\n"
            "  --tokenizers DIR       tokenizer files when the checkpoint has none\n"
            "  --backend cpu|cuda --threads N --split A,B,...   run the blocks as ranges\n"
            "  --precision f32|bf16|auto   GEMM compute here (default auto: bf16 with\n"
            "                         AVX512_BF16, else f32)\n"
            "  --vae-tile N[:OVERLAP] tiled VAE decode (latent pixels)\n"
            "  --controller ADDR      send the request to a cluster instead\n"
            "  --request-id ID        with --controller: the request's id; an id the cluster\n"
            "                         knows re-attaches to it (its image when it is done)\n"
            "  --curve-secret FILE --curve-server-pub FILE   with --controller: CurveZMQ keys\n"
            "  --quiet\n");
}

// The value after option argv[*i] (and steps past it), or NULL when there is none.
static const char *
s_take(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int
s_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    if (!s)
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int
s_float(const char *s, double *out)
{
    char *end;
    if (!s)
        return -1;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

typedef struct {
    bool tty, quiet;
    double total;
} s_progress_t;

static void
s_progress(void *user, int step, int n, double seconds)
{
    s_progress_t *pg = user;
    pg->total += seconds;
    if (pg->quiet)
        return;
    double per = pg->total / step, eta = per * (n - step);
    if (pg->tty) {
        char bar[31];
        int fill = n ? step * 30 / n : 30;
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r[%s] %d/%d %.2f s/step ETA %.1f s ", bar, step, n, per, eta);
        if (step == n)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "step %d/%d %.3f s (eta %.1f s)\n", step, n, seconds, eta);
    }
}

int
sd3ctl_generate(int argc, char **argv)
{
    sd3_gen_params_t p;
    sd3_local_opts_t lo = SD3_LOCAL_OPTS_INIT;
    sd3_err_t err = {0};
    sd3_local_t *local = NULL;
    sd3_local_result_t res = {0};
    const char *prompt = NULL, *negative = "", *out = NULL, *init = NULL, *controller = NULL;
    const char *sampler = NULL, *size = NULL, *slg_layers = NULL;
    double cfg = NAN, shift = NAN, strength = 1.0, slg_scale = 0, slg_start = NAN, slg_end = NAN;
    long steps = 0, t5_len = 0, threads = 0, tile = 0, overlap = 0;
    unsigned long long seed = 0;
    bool no_t5 = false, quiet = false, slg = false;
    int rc = 2;
    sd3_gen_params_init(&p, NULL);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool bad = false;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            sd3_gen_params_fini(&p);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            bad = !(out = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--negative")) {
            bad = !(negative = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--size")) {
            bad = !(size = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--steps")) {
            bad = s_int(s_take(argc, argv, &i), 1, SD3_GEN_MAX_STEPS, &steps);
        } else if (!strcmp(a, "--cfg")) {
            bad = s_float(s_take(argc, argv, &i), &cfg);
        } else if (!strcmp(a, "--shift")) {
            bad = s_float(s_take(argc, argv, &i), &shift);
        } else if (!strcmp(a, "--seed")) {
            const char *s = s_take(argc, argv, &i);
            if (!s) {
                bad = true;
                s = "";
            }
            char *end;
            errno = 0;
            seed = strtoull(s, &end, 10);
            bad = bad || end == s || *end || errno || s[0] == '-';
        } else if (!strcmp(a, "--sampler")) {
            bad = !(sampler = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--slg")) {
            slg = true;
            if (v && v[0] != '-' && s_float(v, &slg_scale) == 0)
                i++;
            else
                slg_scale = 2.5;
        } else if (!strcmp(a, "--slg-layers")) {
            bad = !(slg_layers = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--slg-start")) {
            bad = s_float(s_take(argc, argv, &i), &slg_start);
        } else if (!strcmp(a, "--slg-end")) {
            bad = s_float(s_take(argc, argv, &i), &slg_end);
        } else if (!strcmp(a, "--no-t5")) {
            no_t5 = true;
        } else if (!strcmp(a, "--t5-len")) {
            bad = s_int(s_take(argc, argv, &i), 1, 4096, &t5_len);
        } else if (!strcmp(a, "--init-image")) {
            bad = !(init = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--strength")) {
            bad = s_float(s_take(argc, argv, &i), &strength);
        } else if (!strcmp(a, "--model")) {
            bad = !(lo.model_path = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--tokenizers")) {
            bad = !(lo.tokenizer_dir = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--backend")) {
            bad = !(lo.backend = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--precision")) { // checked by sd3_local_new
            bad = !(lo.precision = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--threads")) {
            bad = s_int(s_take(argc, argv, &i), 0, 1024, &threads);
        } else if (!strcmp(a, "--split")) {
            const char *s = s_take(argc, argv, &i);
            if (!s) {
                bad = true;
                s = "";
            }
            char *end;
            for (lo.n_splits = 0; !bad && *s && lo.n_splits < 16;) {
                lo.splits[lo.n_splits++] = (int)strtol(s, &end, 10);
                bad = end == s;
                s = *end == ',' ? end + 1 : end;
                bad = bad || (*end && *end != ',');
            }
        } else if (!strcmp(a, "--vae-tile")) {
            const char *s = s_take(argc, argv, &i);
            if (!s) {
                bad = true;
                s = "";
            }
            char *end;
            tile = strtol(s, &end, 10);
            if (*end == ':')
                overlap = strtol(end + 1, &end, 10);
            bad = bad || *end || tile < 8 || overlap < 0 || overlap >= tile;
        } else if (!strcmp(a, "--controller")) {
            bad = !(controller = s_take(argc, argv, &i));
        } else if (!strcmp(a, "--request-id") || !strcmp(a, "--timeout") ||
                   !strcmp(a, "--curve-secret") || !strcmp(a, "--curve-server-pub")) {
            bad = !s_take(argc, argv, &i); // cluster-only: read by sd3ctl_remote.c
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = true;
        } else if (a[0] != '-' && !prompt) {
            prompt = a;
        } else {
            fprintf(stderr, "sd3ctl generate: unexpected argument '%s' (see sd3ctl generate "
                            "--help)\n", a);
            goto done;
        }
        if (bad) {
            fprintf(stderr, "sd3ctl generate: %s: bad or missing value%s%s\n", a, v ? " " : "",
                    v ? v : "");
            goto done;
        }
    }
    if (!prompt || !out) {
        fprintf(stderr, "sd3ctl generate: %s (see sd3ctl generate --help)\n",
                !prompt ? "no PROMPT" : "no -o OUT.png");
        goto done;
    }
    if (controller) {
        // The cluster path parses the same options into a request (ctl/sd3ctl_remote.c).
        sd3_gen_params_fini(&p);
        return sd3ctl_generate_remote(argc, argv);
    }
    if (!lo.model_path && !(lo.model_path = sd3ctl_default_model(&err))) {
        fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
        goto done;
    }
    lo.n_threads = (int)threads;
    lo.precision = lo.precision ? lo.precision : "auto";
    lo.vae_tile = (sd3_vae_tile_t){.tile = (int)tile, .overlap = (int)overlap};
    lo.load_t5 = !no_t5;
    if (!(local = sd3_local_new(&lo, &err))) {
        fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
        goto done;
    }
    // Defaults of this architecture, then the options given.
    sd3_gen_params_init(&p, sd3_local_config(local));
    if (sd3_gen_params_set_prompt(&p, prompt, negative, &err) != 0)
        goto fail;
    p.model_name = strdup(sd3_local_arch(local));
    if (size && (sscanf(size, "%dx%d", &p.width, &p.height) != 2 || strchr(size, '-'))) {
        sd3_err_set(&err, SD3_EINVAL, "--size '%s': want WxH, e.g. 1024x1024", size);
        goto fail;
    }
    if (steps)
        p.steps = (int)steps;
    if (!isnan(cfg))
        p.cfg = (float)cfg;
    if (!isnan(shift))
        p.shift = (float)shift;
    p.seed = seed;
    if (sampler && sd3_sampler_kind_from_name(sampler, &p.sampler, &err) != 0)
        goto fail;
    if (slg) {
        p.slg.scale = (float)slg_scale;
        if (!isnan(slg_start))
            p.slg.start = slg_start;
        if (!isnan(slg_end))
            p.slg.end = slg_end;
        if (slg_layers) {
            p.slg.layers = 0;
            for (const char *s = slg_layers; *s;) {
                char *end;
                long l = strtol(s, &end, 10);
                if (end == s || l < 0 || l >= 64 || (*end && *end != ',')) {
                    sd3_err_set(&err, SD3_EINVAL, "--slg-layers '%s': want e.g. 7,8,9",
                                slg_layers);
                    goto fail;
                }
                p.slg.layers |= 1ull << l;
                s = *end ? end + 1 : end;
            }
        }
        if (!p.slg.layers) {
            sd3_err_set(&err, SD3_EINVAL, "--slg: this model has no default skip layers; give "
                                          "--slg-layers");
            goto fail;
        }
    }
    p.no_t5 = no_t5;
    p.t5_len = (int)t5_len;
    if (init) {
        if (sd3_png_read(init, &p.init_rgb, &p.init_w, &p.init_h, NULL, &err) != 0)
            goto fail;
        if (!size) {
            p.width = p.init_w;
            p.height = p.init_h;
        }
        p.denoise = strength;
    } else if (strength != 1.0) {
        sd3_err_set(&err, SD3_EINVAL, "--strength needs --init-image");
        goto fail;
    }
    if (sd3_gen_params_check(&p, sd3_local_config(local), &err) != 0)
        goto fail;
    s_progress_t pg = {.tty = isatty(2), .quiet = quiet};
    if (sd3_local_generate(local, &p, NULL, s_progress, &pg, NULL, NULL, &res, &err) != 0)
        goto fail;
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(res.png, 1, res.png_size, f) != res.png_size || fclose(f) != 0) {
        sd3_err_set(&err, SD3_EIO, "%s: cannot write", out);
        goto fail;
    }
    if (!quiet)
        printf("wrote %s (%dx%d, seed %llu, %s, %d steps): encode %.2f s, steps %.2f s, decode "
               "%.2f s\n",
               out, p.width, p.height, (unsigned long long)p.seed,
               sd3_sampler_kind_name(p.sampler), p.steps, res.seconds_encode, res.seconds_steps,
               res.seconds_decode);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
    rc = err.code == SD3_EINVAL || err.code == SD3_ENOTFOUND || err.code == SD3_EFORMAT ? 2 : 1;
done:
    sd3_local_result_fini(&res);
    sd3_local_destroy(&local);
    sd3_gen_params_fini(&p);
    return rc;
}
