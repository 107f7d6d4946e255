/*  sd3ctl_remote - `sd3ctl generate ... --controller ADDR`: the request goes to a cluster
 *
 *  Same options as the one-process path (ctl/sd3ctl_generate.c parses and checks them
 *  first); the local-only ones (--model, --tokenizers, --backend, --threads, --split,
 *  --vae-tile) are accepted and ignored: the cluster has its own. Sends GENERATE through
 *  sd3_client with a fresh request id, draws a progress bar from PROGRESS messages and
 *  writes the PNG of RESULT. Ctrl-C cancels the request on the cluster.  */
#include "sd3_client.h"
#include "sd3_clock.h"
#include "sd3_png.h"
#include "sd3ctl.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t s_interrupted = 0;

static void
s_on_sigint(int sig)
{
    (void)sig;
    s_interrupted = 1;
}

typedef struct {
    bool tty, quiet;
    double t0;
    uint32_t last_step;
} s_bar_t;

static void
s_bar(s_bar_t *bar, const sd3_wire_progress_t *p)
{
    if (bar->quiet)
        return;
    if (p->queue_position > 0) {
        fprintf(stderr, bar->tty ? "\rqueued: position %u " : "queued: position %u\n",
                p->queue_position);
        return;
    }
    if (p->step == 0 || p->step == bar->last_step)
        return;
    bar->last_step = p->step;
    double el = sd3_now_s() - bar->t0, per = el / p->step, eta = per * (p->steps - p->step);
    if (bar->tty) {
        char b[31];
        int fill = p->steps ? (int)(p->step * 30 / p->steps) : 30;
        for (int i = 0; i < 30; i++)
            b[i] = i < fill ? '#' : '.';
        b[30] = '\0';
        fprintf(stderr, "\r[%s] %u/%u %.2f s/step ETA %.1f s ", b, p->step, p->steps, per, eta);
        if (p->step == p->steps)
            fputc('\n', stderr);
    } else {
        fprintf(stderr, "step %u/%u sigma %.4f (eta %.1f s)\n", p->step, p->steps, (double)p->sigma,
                eta);
    }
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

int
sd3ctl_generate_remote(int argc, char **argv)
{
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    const char *out = NULL, *controller = NULL, *init = NULL, *prompt = NULL, *req_id = NULL;
    const char *slg_layers = NULL;
    bool quiet = false, have_strength = false;
    double d = 0;
    long timeout_s = 600;
    sd3_err_t err = {0};
    sd3_client_t *client = NULL;
    sd3_client_opts_t copts = {0};
    sd3_msg_t *result = NULL;
    sd3_tensor_t *init_t = NULL;
    uint8_t *rgb = NULL;
    int rc = 2;
    if (!w) {
        fprintf(stderr, "sd3ctl generate: out of memory\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool bad = false, takes = true;
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out = v;
        } else if (!strcmp(a, "--controller")) {
            controller = v;
        } else if (!strcmp(a, "--negative")) {
            bad = !v || strlen(v) >= sizeof w->negative;
            if (!bad)
                snprintf(w->negative, sizeof w->negative, "%s", v);
        } else if (!strcmp(a, "--size")) {
            int W = 0, H = 0;
            bad = !v || sscanf(v, "%dx%d", &W, &H) != 2 || W <= 0 || H <= 0;
            w->width = (uint32_t)W;
            w->height = (uint32_t)H;
        } else if (!strcmp(a, "--steps")) {
            bad = !v || atoi(v) <= 0;
            w->steps = bad ? 0 : (uint32_t)atoi(v);
        } else if (!strcmp(a, "--cfg")) {
            bad = s_float(v, &d) != 0;
            w->cfg = (float)d;
        } else if (!strcmp(a, "--shift")) {
            bad = s_float(v, &d) != 0;
            w->shift = (float)d;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            w->seed = v ? strtoull(v, &end, 10) : 0;
            bad = !v || end == v || *end || errno;
        } else if (!strcmp(a, "--sampler")) {
            bad = !v;
            if (v && (!strcmp(v, "euler")))
                w->sampler = SD3_WIRE_SAMPLER_EULER;
            else if (v && (!strcmp(v, "dpmpp_2m") || !strcmp(v, "dpm++2m")))
                w->sampler = SD3_WIRE_SAMPLER_DPMPP_2M;
            else
                bad = true;
        } else if (!strcmp(a, "--slg")) {
            takes = false;
            w->slg_scale = 2.5f;
            if (v && v[0] != '-' && s_float(v, &d) == 0) {
                w->slg_scale = (float)d;
                i++;
            }
        } else if (!strcmp(a, "--slg-layers")) {
            slg_layers = v;
        } else if (!strcmp(a, "--slg-start")) {
            bad = s_float(v, &d) != 0;
            w->slg_start = (float)d;
        } else if (!strcmp(a, "--slg-end")) {
            bad = s_float(v, &d) != 0;
            w->slg_end = (float)d;
        } else if (!strcmp(a, "--no-t5")) {
            w->no_t5 = true;
            takes = false;
        } else if (!strcmp(a, "--t5-len")) {
            bad = !v || atoi(v) <= 0;
            w->t5_len = bad ? 0 : (uint32_t)atoi(v);
        } else if (!strcmp(a, "--init-image")) {
            init = v;
        } else if (!strcmp(a, "--strength")) {
            bad = s_float(v, &d) != 0;
            w->strength = (float)d;
            have_strength = true;
        } else if (!strcmp(a, "--request-id")) {
            req_id = v;
        } else if (!strcmp(a, "--curve-secret")) {
            copts.curve_secret = v;
        } else if (!strcmp(a, "--curve-server-pub")) {
            copts.curve_server_pub = v;
        } else if (!strcmp(a, "--timeout")) {
            bad = !v || (timeout_s = atol(v)) <= 0;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--tokenizers") || !strcmp(a, "--backend") ||
                   !strcmp(a, "--threads") || !strcmp(a, "--split") || !strcmp(a, "--vae-tile") ||
                   !strcmp(a, "--precision")) {
            // local-only options: the cluster has its own
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = true;
            takes = false;
        } else if (a[0] != '-' && !prompt) {
            prompt = a;
            takes = false;
        } else {
            fprintf(stderr, "sd3ctl generate: unexpected argument '%s'\n", a);
            goto done;
        }
        if (takes && (!v || bad)) {
            fprintf(stderr, "sd3ctl generate: %s: bad or missing value%s%s\n", a, v ? " " : "",
                    v ? v : "");
            goto done;
        }
        i += takes;
    }
    if (!prompt || !out || !controller) {
        fprintf(stderr, "sd3ctl generate: needs PROMPT, -o OUT.png and --controller ADDR\n");
        goto done;
    }
    if (strlen(prompt) >= sizeof w->prompt) {
        fprintf(stderr, "sd3ctl generate: the prompt has %zu bytes, at most %zu\n", strlen(prompt),
                sizeof w->prompt - 1);
        goto done;
    }
    snprintf(w->prompt, sizeof w->prompt, "%s", prompt);
    if (slg_layers) {
        for (const char *s = slg_layers; *s && w->n_slg_layers < SD3_WIRE_MAX_SLG_LAYERS;) {
            char *end;
            long l = strtol(s, &end, 10);
            if (end == s || l < 0 || l >= 64 || (*end && *end != ',')) {
                fprintf(stderr, "sd3ctl generate: --slg-layers '%s': want e.g. 7,8,9\n",
                        slg_layers);
                goto done;
            }
            w->slg_layers[w->n_slg_layers++] = (uint32_t)l;
            s = *end ? end + 1 : end;
        }
    }
    if (init) {
        int iw, ih;
        if (sd3_png_read(init, &rgb, &iw, &ih, NULL, &err) != 0) {
            fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
            goto done;
        }
        if (!(init_t = sd3_tensor_new(SD3_U8, 3, (int64_t[]){ih, iw, 3}))) {
            fprintf(stderr, "sd3ctl generate: out of memory\n");
            goto done;
        }
        memcpy(init_t->data, rgb, (size_t)iw * (size_t)ih * 3);
        if (!have_strength)
            w->strength = 0.6f;
    } else if (have_strength && w->strength != 1.0f) {
        fprintf(stderr, "sd3ctl generate: --strength needs --init-image\n");
        goto done;
    }
    char id[64];
    if (req_id)
        snprintf(id, sizeof id, "%s", req_id);
    else
        snprintf(id, sizeof id, "ctl-%d-%ld", (int)getpid(), (long)time(NULL));
    rc = 1;
    if (!(client = sd3_client_new(controller, &copts, &err))) {
        fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
        goto done;
    }
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_sigint;
    sigaction(SIGINT, &sa, &old);
    s_bar_t bar = {.tty = isatty(2), .quiet = quiet, .t0 = sd3_now_s()};
    // The exchange of sd3_client_generate, spelled out so that Ctrl-C can cancel.
    if (sd3_client_submit(client, id, w, init_t ? &init_t : NULL, &err) != 0)
        goto fail;
    double last = sd3_now_s();
    for (;;) {
        sd3_msg_t *msg = NULL;
        if (s_interrupted) {
            sd3_client_cancel(client, id, NULL);
            sd3_err_set(&err, SD3_ECANCELED, "interrupted: request %s cancelled", id);
            goto fail;
        }
        int r = sd3_client_recv(client, 200, &msg, &err);
        if (r == SD3_ETIMEDOUT) {
            sd3_err_clear(&err);
            if (sd3_now_s() - last > (double)timeout_s) {
                sd3_client_cancel(client, id, NULL);
                sd3_err_set(&err, SD3_ETIMEDOUT, "%s: no answer for %ld s", controller, timeout_s);
                goto fail;
            }
            continue;
        }
        if (r == SD3_EPROTO) {
            sd3_err_clear(&err);
            continue;
        }
        if (r != 0)
            goto fail;
        last = sd3_now_s();
        if (strcmp(msg->request_id, id) != 0) {
            sd3_msg_destroy(&msg);
            continue;
        }
        if (msg->type == SD3_MSG_RESULT) {
            result = msg;
            break;
        }
        if (msg->type == SD3_MSG_ERROR) {
            sd3_err_set(&err, msg->status ? msg->status : SD3_EINTERNAL, "%s", msg->message);
            sd3_msg_destroy(&msg);
            goto fail;
        }
        if (msg->type == SD3_MSG_PROGRESS && msg->body_kind == SD3_WIRE_BODY_PROGRESS)
            s_bar(&bar, &msg->body.progress);
        sd3_msg_destroy(&msg);
    }
    sigaction(SIGINT, &old, NULL);
    const sd3_tensor_t *png = sd3_msg_tensor(result, "png");
    if (!png || png->dtype != SD3_U8 || png->ndim != 1) {
        fprintf(stderr, "sd3ctl generate: RESULT without a png\n");
        goto done;
    }
    FILE *f = fopen(out, "wb");
    size_t n = (size_t)png->shape[0];
    if (!f || fwrite(png->data, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "sd3ctl generate: %s: cannot write\n", out);
        goto done;
    }
    if (!quiet) {
        const sd3_wire_generate_t *e = &result->body.generate;
        printf("wrote %s (%ux%u, seed %llu, %u steps) from %s in %.2f s\n", out, e->width,
               e->height, (unsigned long long)e->seed, e->steps, controller, sd3_now_s() - bar.t0);
    }
    rc = 0;
    goto done;
fail:
    sigaction(SIGINT, &old, NULL);
    fprintf(stderr, "sd3ctl generate: %s\n", err.msg);
    rc = err.code == SD3_EINVAL ? 2 : 1;
done:
    sd3_msg_destroy(&result);
    sd3_tensor_destroy(&init_t);
    free(rgb);
    sd3_client_destroy(&client);
    free(w);
    return rc;
}
