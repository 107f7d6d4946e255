/*  test_cluster_flood - a client that does not read while PROGRESS floods loses no RESULT
 *
 *  The controller and one encoder, one mmdit [0, depth) and one vae run as threads of this
 *  process (as `sd3d --role all` does), the client talks to the controller over inproc://,
 *  so the only buffers between them are ZeroMQ's pipes (the controller's high-water mark of
 *  1000 plus the client's 64): the pipe of a client that stops reading fills after ~1064
 *  messages, with no kernel socket buffer to hide it (as for the HTTP front, which is such an
 *  inproc client). One client submits N_REQ requests of STEPS steps (N_REQ * STEPS PROGRESS
 *  messages, far past the pipe), then only sends keep-alives, reading nothing, until a
 *  second client's STATUS says every request ended (at most 150 s); then it reads.
 *  Asserted: each request got exactly one RESULT (no ERROR), as its last message, with a
 *  PNG byte-equal to the one-process PNG of its (prompt, seed); fewer PROGRESS arrived than
 *  were produced (the controller dropped and coalesced them: proof that the pipe did fill);
 *  nothing after.
 *  Before the per-client outbound queue of the controller, RESULTs sent into the full
 *  pipe were dropped (and every PROGRESS stalled the controller 100 ms): this test failed.  */
#include "cluster_util.h"
#include "cluster_inproc.h"

#define N_REQ   30
#define STEPS   45
#define N_PAIRS 2

static const char *const s_prompts[N_PAIRS] = {"a cat", "a dog"};
// STATUS from the watching client; -1 when it did not answer.
static int
s_status(sd3_client_t *watch, sd3_wire_status_t *st)
{
    sd3_err_t err = {0};
    return watch && sd3_client_status(watch, 3000, st, &err) == 0 ? 0 : -1;
}

int
main(void)
{
    cu_setup(230);
    (void)cu_up; // cluster_util's process clusters are not used here: everything is in-process
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    unsigned char *ref[N_PAIRS];
    size_t ref_n[N_PAIRS];
    for (int k = 0; k < N_PAIRS; k++) {
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps %d --seed %d", STEPS, 40 + k);
        ref[k] = cu_local_png(model, s_prompts[k], args, &ref_n[k]);
        CHECK(ref[k] != NULL);
    }
    sd3_err_t err = {0};
    sd3_controller_opts_t co = {
        .listen = "inproc://flood-clients",
        .stage_listen = "inproc://flood-stages",
        .model_path = model,
    };
    static const char *const names[3] = {"enc0", "m0", "vae0"};
    cu_inproc_t ip;
    int up = cu_inproc_start(&ip, &co, "flood", names);
    void *ctx = ip.ctx;

    sd3_client_opts_t clo = {.zmq_ctx = ctx, .identity = "flood"};
    sd3_client_opts_t wo = {.zmq_ctx = ctx, .identity = "watch"};
    sd3_client_t *cl = up == 0 ? sd3_client_new(co.listen, &clo, &err) : NULL;
    sd3_client_t *watch = cl ? sd3_client_new(co.listen, &wo, &err) : NULL;
    CHECK(cl && watch);
    static sd3_wire_status_t st;
    double t_form = sd3_now_s();
    while (watch && sd3_now_s() - t_form < 20 && (s_status(watch, &st) != 0 || st.n_pipelines < 1))
        usleep(100000);
    CHECK_MSG(st.n_pipelines == 1, "%d pipelines formed, want 1", st.n_pipelines);

    // Submit everything, then read nothing: keep-alives only, until every request ended.
    static cu_req_t reqs[N_REQ];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    double t0 = sd3_now_s();
    for (int i = 0; cl && w && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "f%02d", i);
        cu_request(w, s_prompts[i % N_PAIRS], (uint64_t)(40 + i % N_PAIRS), STEPS);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    bool ended = false;
    while (cl && !ended && sd3_now_s() - t0 < 150) { // a very slow machine reads before the end
        usleep(300000);
        CHECK(sd3_client_keepalive(cl, &err) == 0);
        ended = s_status(watch, &st) == 0 && st.completed + st.failed >= N_REQ;
    }
    double t_silent = sd3_now_s() - t0;
    printf("not read for %.1f s: controller completed %llu failed %llu\n", t_silent,
           (unsigned long long)st.completed, (unsigned long long)st.failed);
    if (!ended)
        printf("not every request ended in 150 s of silence: reading now anyway\n");

    // Now read: one RESULT each, last; nothing lost, nothing twice.
    int open = N_REQ, late_progress = 0, progress = 0, messages = 0;
    double t_read = sd3_now_s();
    while (cl && open > 0 && sd3_now_s() - t_read < 35) {
        sd3_msg_t *msg = NULL;
        if (sd3_client_recv(cl, 200, &msg, &err) != 0)
            continue;
        messages++;
        cu_req_t *r = cu_find(reqs, N_REQ, msg->request_id);
        if (r) {
            bool was_open = r->results + r->errors == 0;
            if (msg->type == SD3_MSG_RESULT) {
                const sd3_tensor_t *png = sd3_msg_tensor(msg, "png");
                if (!r->results++ && png) {
                    r->png_size = (size_t)png->shape[0];
                    r->png = malloc(r->png_size);
                    memcpy(r->png, png->data, r->png_size);
                }
            } else if (msg->type == SD3_MSG_ERROR) {
                r->errors++;
                snprintf(r->message, sizeof r->message, "%s", msg->message);
            } else if (msg->type == SD3_MSG_PROGRESS) {
                progress++;
                late_progress += !was_open;
            }
            if (was_open && r->results + r->errors > 0)
                open--;
        }
        sd3_msg_destroy(&msg);
    }
    sd3_msg_t *extra = NULL; // a duplicate or late message would show up here
    int extra_rc = cl ? sd3_client_recv(cl, 500, &extra, &err) : SD3_ETIMEDOUT;
    CHECK_MSG(extra_rc == SD3_ETIMEDOUT, "a %s for '%s' after every request was answered",
              extra ? sd3_msg_type_name(extra->type) : "?", extra ? extra->request_id : "");
    sd3_msg_destroy(&extra);
    int ok = 0;
    for (int i = 0; i < N_REQ; i++) {
        int k = i % N_PAIRS;
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same = ref[k] && reqs[i].png && reqs[i].png_size == ref_n[k] &&
                    !memcmp(reqs[i].png, ref[k], ref_n[k]);
        CHECK_MSG(same || !reqs[i].results, "%s: PNG differs from its one-process PNG", reqs[i].id);
        ok += same;
        free(reqs[i].png);
    }
    CHECK_MSG(late_progress == 0, "%d PROGRESS after their request's RESULT", late_progress);
    // N_REQ * STEPS were produced; a pipe that never filled would deliver them all.
    CHECK_MSG(progress < N_REQ * STEPS,
              "all %d PROGRESS arrived: the pipe never filled, the "
              "test tested nothing",
              progress);
    printf("%d/%d images bit-identical, %d messages read (%d PROGRESS of %d produced) in "
           "%.1f s after %.1f s of silence\n",
           ok, N_REQ, messages, progress, N_REQ * STEPS, sd3_now_s() - t_read, t_silent);

    sd3_client_destroy(&cl);
    sd3_client_destroy(&watch);
    cu_inproc_end(&ip);
    for (int k = 0; k < N_PAIRS; k++)
        free(ref[k]);
    free(w);
    return TEST_RESULT();
}
