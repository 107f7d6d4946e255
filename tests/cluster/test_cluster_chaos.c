/*  test_cluster_chaos - random SIGKILLs and restarts of stages and the controller change no
 *  image and lose no request
 *
 *  A cluster with a journal: two pipelines ([0,1) -> [1,2) and [0,2)), two encoders, two
 *  vaes. N requests (SD3_CHAOS_REQUESTS, default 200: ~60 s on 2 shared cores; 100 in a
 *  sanitizer build),
 *  DPM++ 2M, 4 distinct (prompt, seed) pairs. Run 1, undisturbed: every request, the latency
 *  of each (submit -> RESULT). Run 2, the same requests while every ~0.6 s a random stage
 *  (mmdit, encoder or vae) gets SIGKILL and is restarted 0.4-1.2 s later, and once, halfway,
 *  the controller (restarted on the same journal). Asserted for both runs: every accepted
 *  request (ACKed) gets exactly one RESULT and no ERROR, its PNG byte-equal to the
 *  one-process PNG. Printed: the kills, and mean/p95 latency of run 2 against run 1.  */
#include "cluster_util.h"

#include <math.h>

#define STEPS   8
#define N_PAIRS 4

static const char *const s_victims[] = {"a0", "a1", "b0", "enc0", "enc1", "vae0", "vae1"};
#define N_VICTIMS (int)(sizeof s_victims / sizeof s_victims[0])

typedef struct {
    char id[64];
    bool acked;
    int results, errors;
    double t_submit, t_done, t_heard, t_reattach;
    unsigned char *png;
    size_t png_size;
    char message[512];
} s_req_t;

static unsigned char *s_ref[N_PAIRS];
static size_t s_ref_n[N_PAIRS];

static const char *
s_prompt(int k)
{
    static const char *const p[N_PAIRS] = {"a cat", "a dog", "a red fox", "a blue bird"};
    return p[k];
}

// Receives for up to ms; returns how many requests are still unanswered.
static int
s_pump(sd3_client_t *cl, s_req_t *r, int n, int ms)
{
    sd3_msg_t *msg = NULL;
    sd3_err_t err = {0};
    // One message per call: between calls the test kills and restarts members, so it reads
    // slower than PROGRESS streams; the controller queues RESULTs per client and drops
    // PROGRESS first (test_cluster_flood), so nothing that matters is lost.
    if (sd3_client_recv(cl, ms, &msg, &err) == 0) {
        for (int i = 0; i < n; i++) {
            if (strcmp(r[i].id, msg->request_id) != 0)
                continue;
            r[i].t_heard = sd3_now_s();
            if (msg->type == SD3_MSG_ACK) {
                r[i].acked = true;
            } else if (msg->type == SD3_MSG_RESULT) {
                const sd3_tensor_t *png = sd3_msg_tensor(msg, "png");
                if (!r[i].results++ && png) {
                    r[i].t_done = sd3_now_s();
                    r[i].png_size = (size_t)png->shape[0];
                    r[i].png = malloc(r[i].png_size);
                    memcpy(r[i].png, png->data, r[i].png_size);
                }
            } else if (msg->type == SD3_MSG_ERROR) {
                r[i].errors++;
                snprintf(r[i].message, sizeof r[i].message, "%s", msg->message);
            }
        }
        sd3_msg_destroy(&msg);
    }
    int open = 0;
    for (int i = 0; i < n; i++)
        open += r[i].results + r[i].errors == 0;
    return open;
}

static int
s_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// One run of n requests; chaos: kill and restart members meanwhile. Latencies into lat.
static int
s_run(const char *client_ep, const char *tag, int n, bool chaos, double *lat, int *kills)
{
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    if (!cl)
        return -1;
    s_req_t *r = calloc((size_t)n, sizeof *r);
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    for (int i = 0; i < n; i++) {
        snprintf(r[i].id, sizeof r[i].id, "%s%03d", tag, i);
        cu_request(w, s_prompt(i % N_PAIRS), (uint64_t)(30 + i % N_PAIRS), STEPS);
        w->sampler = SD3_WIRE_SAMPLER_DPMPP_2M;
        r[i].t_submit = sd3_now_s();
        CHECK(sd3_client_submit(cl, r[i].id, w, NULL, &err) == 0);
    }
    double t0 = sd3_now_s(), next_kill = t0 + 0.6, restart_at[N_VICTIMS] = {0};
    bool controller_killed = false;
    int open = n, reattached = 0;
    unsigned seed = 12345;
    while (open > 0 && sd3_now_s() - t0 < 200) {
        open = s_pump(cl, r, n, 50);
        if (!chaos)
            continue;
        double now = sd3_now_s();
        // A client that hears nothing about a request re-attaches with its id (the journal
        // answers a finished one with its PNG): a RESULT in flight when the controller died
        // (SIGKILL) is gone, the request is not. This is the designed protocol, not a
        // workaround. Only after the kills stopped, and 5 s of silence.
        for (int i = 0; now - t0 > 45 && i < n; i++) {
            double heard = r[i].t_heard > r[i].t_submit ? r[i].t_heard : r[i].t_submit;
            heard = r[i].t_reattach > heard ? r[i].t_reattach : heard;
            if (r[i].results + r[i].errors == 0 && now - heard > 5) {
                cu_request(w, s_prompt(i % N_PAIRS), (uint64_t)(30 + i % N_PAIRS), STEPS);
                w->sampler = SD3_WIRE_SAMPLER_DPMPP_2M;
                CHECK(sd3_client_submit(cl, r[i].id, w, NULL, &err) == 0);
                r[i].t_reattach = now;
                reattached++;
            }
        }
        // Each restart is a blocking `sd3ctl up --restart`, which waits until the member has
        // registered (seconds under ASan on a loaded machine): the client is pumped after
        // each, so its keep-alives never stop long enough for the controller to take it for
        // gone (a CI run lost 5 requests so).
        for (int v = 0; v < N_VICTIMS; v++)
            if (restart_at[v] > 0 && now >= restart_at[v]) {
                CHECK(cu_restart(s_victims[v]) == 0);
                restart_at[v] = 0;
                open = s_pump(cl, r, n, 0);
            }
        if (!controller_killed && open <= n / 2) {
            CHECK(cu_kill("controller") == 0);
            usleep(300000);
            CHECK(cu_restart("controller") == 0);
            controller_killed = true;
            (*kills)++;
            open = s_pump(cl, r, n, 0);
        }
        // Kills stop after 40 s of chaos: on a slow or loaded machine a kill every 0.6 s
        // could otherwise outpace restarts forever; every request must still complete.
        if (now >= next_kill && now - t0 < 40) {
            int v = (int)(rand_r(&seed) % N_VICTIMS);
            if (restart_at[v] == 0 && cu_kill(s_victims[v]) == 0) {
                restart_at[v] = now + 0.4 + 0.8 * (rand_r(&seed) % 1000) / 1000.0;
                (*kills)++;
            }
            next_kill = now + 0.6;
        }
    }
    for (int v = 0; v < N_VICTIMS; v++)
        if (restart_at[v] > 0)
            CHECK(cu_restart(s_victims[v]) == 0);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int k = i % N_PAIRS;
        CHECK_MSG(r[i].acked, "%s: never accepted", r[i].id);
        CHECK_MSG(r[i].results == 1 && r[i].errors == 0, "%s: %d results, %d errors (%s)", r[i].id,
                  r[i].results, r[i].errors, r[i].message);
        bool same = r[i].png && r[i].png_size == s_ref_n[k] &&
                    !memcmp(r[i].png, s_ref[k], s_ref_n[k]);
        CHECK_MSG(same, "%s: PNG differs from its one-process PNG", r[i].id);
        ok += same;
        lat[i] = r[i].results ? r[i].t_done - r[i].t_submit : NAN;
        free(r[i].png);
    }
    sd3_msg_t *extra = NULL; // a duplicate RESULT would show up here
    CHECK_MSG(sd3_client_recv(cl, 300, &extra, &err) == SD3_ETIMEDOUT ||
                  (extra && extra->type != SD3_MSG_RESULT && extra->type != SD3_MSG_ERROR),
              "%s: a message after every request was answered", tag);
    sd3_msg_destroy(&extra);
    printf("%s run: %d/%d images bit-identical in %.1f s (%d re-attaches)\n", tag, ok, n,
           sd3_now_s() - t0, reattached);
    free(r);
    free(w);
    sd3_client_destroy(&cl);
    return ok;
}

static void
s_stats(double *lat, int n, double *mean, double *p95)
{
    double sum = 0;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(lat[i]))
            lat[m++] = lat[i];
    for (int i = 0; i < m; i++)
        sum += lat[i];
    qsort(lat, (size_t)m, sizeof *lat, s_cmp);
    *mean = m ? sum / m : NAN;
    *p95 = m ? lat[(int)ceil(0.95 * m) - 1] : NAN;
}

int
main(void)
{
    // 200 requests (issue 8); 100 in a sanitizer build, which runs 2-3x slower and must stay
    // inside the same bound.
#ifdef __SANITIZE_ADDRESS__
    const int n_default = 100;
#else
    const int n_default = 200;
#endif
    const char *env = getenv("SD3_CHAOS_REQUESTS");
    char *end = NULL;
    long nl = env ? strtol(env, &end, 10) : n_default;
    if (env && (end == env || *end || nl < 4 || nl > 1000)) {
        fprintf(stderr, "SD3_CHAOS_REQUESTS='%s': want a whole number in 4..1000\n", env);
        return 2;
    }
    const int n = (int)nl;
    cu_setup(n <= 200 ? 400 : 400 + n); // below the ctest TIMEOUT of 420
    char model[1024], client_ep[1200], extra[1400];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    for (int k = 0; k < N_PAIRS; k++) {
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps %d --seed %d --sampler dpmpp_2m", STEPS,
                 30 + k);
        s_ref[k] = cu_local_png(model, s_prompt(k), args, &s_ref_n[k]);
        CHECK(s_ref[k] != NULL);
    }
    snprintf(extra, sizeof extra,
             "node_timeout_ms = 1000\nclient_timeout_ms = 30000\nqueue = 2000\n"
             "journal = %s/journal.db\n",
             sd3_test_tmpdir());
    CHECK(cu_up("chaos", model, extra,
                "[encoder enc0]\n[encoder enc1]\n[vae vae0]\n[vae vae1]\n[mmdit a0]\nrange = 0:1\n"
                "[mmdit a1]\nrange = 1:2\n[mmdit b0]\nrange = 0:2\n",
                client_ep, sizeof client_ep) == 0);
    double *lat0 = calloc((size_t)n, sizeof *lat0), *lat1 = calloc((size_t)n, sizeof *lat1);
    int kills = 0;
    s_run(client_ep, "u", n, false, lat0, &kills);
    s_run(client_ep, "x", n, true, lat1, &kills);
    double m0, p0, m1, p1;
    s_stats(lat0, n, &m0, &p0);
    s_stats(lat1, n, &m1, &p1);
    printf("chaos: %d requests, %d kills (stages + 1 controller); latency undisturbed mean %.2f s "
           "p95 %.2f s, under chaos mean %.2f s p95 %.2f s: added mean %+.2f s p95 %+.2f s\n",
           n, kills, m0, p0, m1, p1, m1 - m0, p1 - p0);
    CHECK_MSG(kills >= 2, "only %d kills happened", kills);
    free(lat0);
    free(lat1);
    for (int k = 0; k < N_PAIRS; k++)
        free(s_ref[k]);
    cu_down();
    return TEST_RESULT();
}
