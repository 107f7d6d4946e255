/*  test_cluster_hung - a stage that heartbeats but never finishes a step costs a request one
 *  step timeout, not its life
 *
 *  In-process (as test_cluster_flood): the controller with --step-timeout-ms 1500, one
 *  encoder, one vae, one real mmdit [0, depth) ("b-real") and a fake mmdit "a-hung" that
 *  registers, heartbeats every 200 ms and takes every JOB without ever answering (a hung
 *  node, or a lost hop). Two pipelines; N_REQ requests at once, so the least-loaded pick
 *  puts some of them on the hung one. Asserted: every request gets exactly one RESULT,
 *  byte-equal to the one-process PNG; the fake got JOBs (the hang was exercised) and a
 *  CANCEL for each (the failover path cancels the stuck attempt); the fake got no JOB of a
 *  later attempt (the resume avoids the pipeline it hung on while another lives).  */
#include "cluster_util.h"
#include "cluster_inproc.h"
#include "sd3_link.h"

#include <stdatomic.h>

#define N_REQ 4
#define STEPS 6

static atomic_int s_jobs, s_cancels, s_later_jobs;

typedef struct {
    void *ctx;
    const char *stages;
    int depth;
} s_fake_t;

// The hung mmdit: REGISTER until ACK, then HEARTBEAT; JOBs are taken and never worked on.
static void *
s_fake_thread(void *arg)
{
    const s_fake_t *f = arg;
    sd3_err_t err = {0};
    sd3_link_opts_t lo = {.identity = "a-hung"};
    sd3_link_t *link = sd3_link_new_connect(f->ctx, f->stages, &lo, &err);
    if (!link) {
        fprintf(stderr, "hung: fake: %s\n", err.msg);
        return NULL;
    }
    bool registered = false;
    double next_send = 0;
    while (!cu_inproc_stop) {
        if (sd3_now_s() >= next_send) {
            sd3_msg_t *m = sd3_msg_new(registered ? SD3_MSG_HEARTBEAT : SD3_MSG_REGISTER, NULL);
            if (m && registered) {
                m->body_kind = SD3_WIRE_BODY_HEARTBEAT;
                snprintf(m->body.heartbeat.node_id, sizeof m->body.heartbeat.node_id, "a-hung");
            } else if (m) {
                sd3_wire_register_t *r = &m->body.reg;
                m->body_kind = SD3_WIRE_BODY_REGISTER;
                r->role = SD3_WIRE_ROLE_MMDIT;
                snprintf(r->node_id, sizeof r->node_id, "a-hung");
                snprintf(r->address, sizeof r->address, "inproc://hung-a-data");
                r->layer_begin = 0;
                r->layer_end = r->depth = (uint32_t)f->depth;
                snprintf(r->backend, sizeof r->backend, "cpu");
            }
            sd3_err_t e = {0};
            if (m)
                sd3_link_send(link, NULL, &m, &e);
            next_send = sd3_now_s() + 0.2;
        }
        sd3_msg_t *in = NULL;
        if (sd3_link_recv(link, 50, NULL, &in, &err) != 0)
            continue;
        if (in->type == SD3_MSG_ACK && !in->request_id[0])
            registered = true;
        else if (in->type == SD3_MSG_JOB && in->attempt == 0)
            atomic_fetch_add(&s_jobs, 1);
        else if (in->type == SD3_MSG_JOB)
            atomic_fetch_add(&s_later_jobs, 1);
        else if (in->type == SD3_MSG_CANCEL)
            atomic_fetch_add(&s_cancels, 1);
        sd3_msg_destroy(&in);
    }
    sd3_link_destroy(&link);
    return NULL;
}

int
main(void)
{
    cu_setup(90);
    (void)cu_up; // in-process: no `sd3ctl up` cluster
    char model[1024];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    size_t ref_n = 0;
    char args[256];
    snprintf(args, sizeof args, "--size 64x64 --steps %d --seed 9", STEPS);
    unsigned char *ref = cu_local_png(model, "a hung bell", args, &ref_n);
    CHECK(ref != NULL);

    sd3_err_t err = {0};
    sd3_controller_opts_t co = {
        .listen = "inproc://hung-clients",
        .stage_listen = "inproc://hung-stages",
        .model_path = model,
        .step_timeout_ms = 1500,
    };
    static const char *const names[3] = {"enc0", "b-real", "vae0"};
    cu_inproc_t ip;
    int up = cu_inproc_start(&ip, &co, "hung", names);
    s_fake_t fake = {.ctx = ip.ctx, .stages = co.stage_listen, .depth = 2};
    if (up == 0)
        up = cu_inproc_thread(&ip, s_fake_thread, &fake);
    void *ctx = ip.ctx;

    sd3_client_opts_t clo = {.zmq_ctx = ctx};
    sd3_client_t *cl = up == 0 ? sd3_client_new(co.listen, &clo, &err) : NULL;
    CHECK(cl != NULL);
    static sd3_wire_status_t st;
    for (double t0 = sd3_now_s(); cl && sd3_now_s() - t0 < 20; usleep(100000))
        if (sd3_client_status(cl, 2000, &st, &err) == 0 && st.n_pipelines == 2)
            break;
    CHECK_MSG(st.n_pipelines == 2, "%d pipelines formed, want 2", st.n_pipelines);

    static cu_req_t reqs[N_REQ];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    double t0 = sd3_now_s();
    for (int i = 0; cl && w && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "h%d", i);
        cu_request(w, "a hung bell", 9, STEPS);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    CHECK(cl && cu_wait(cl, reqs, N_REQ, 45) == 0);
    double secs = sd3_now_s() - t0;
    int ok = 0;
    for (int i = 0; i < N_REQ; i++) {
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same =
            ref && reqs[i].png && reqs[i].png_size == ref_n && !memcmp(reqs[i].png, ref, ref_n);
        CHECK_MSG(same || !reqs[i].results, "%s: PNG differs from its one-process PNG", reqs[i].id);
        ok += same;
        free(reqs[i].png);
    }
    sd3_msg_t *extra = NULL;
    CHECK_MSG(!cl || sd3_client_recv(cl, 300, &extra, &err) == SD3_ETIMEDOUT ||
                  (extra && extra->type != SD3_MSG_RESULT && extra->type != SD3_MSG_ERROR),
              "a message after every request was answered");
    sd3_msg_destroy(&extra);
    int jobs = atomic_load(&s_jobs), cancels = atomic_load(&s_cancels);
    int later = atomic_load(&s_later_jobs);
    CHECK_MSG(jobs >= 1, "the hung stage got no JOB: the test tested nothing");
    CHECK_MSG(cancels >= jobs, "%d JOBs hung, %d CANCELs", jobs, cancels);
    CHECK_MSG(later == 0, "%d JOBs of a resumed attempt went back to the hung stage", later);
    printf("%d/%d images bit-identical in %.1f s; the hung stage took %d JOBs, got %d CANCELs\n",
           ok, N_REQ, secs, jobs, cancels);

    sd3_client_destroy(&cl);
    cu_inproc_end(&ip);
    free(ref);
    free(w);
    return TEST_RESULT();
}
