/*  test_cluster_slow - a cluster stays correct when its work is slow, and finds a hung node
 *
 *  Real checkpoints take minutes per step on CPU nodes; the tiny model takes milliseconds.
 *  The node's fault injection (sd3d --fault, a test facility) stretches every forward,
 *  encode and decode, so the timing of a real model is reproduced on the tiny one:
 *   1. slow: every stage slowed to 3 s per forward / encode / decode, 3x the node timeout
 *      (node_timeout_ms = 1000). 6 requests in flight complete byte-equal to the
 *      one-process run with no failover, no step timeout and no hung node counted (the
 *      counters `sd3ctl status` and /metrics show). Before the I/O thread a node was
 *      declared dead during every such step.
 *   2. hang: two pipelines, one of whose ranges hangs forever in the middle of step 1 (it
 *      still heartbeats: only its compute thread is stuck). The controller finds it hung
 *      (busy far past its own expectation), its requests resume on the other pipeline, and
 *      every image is still byte-equal.
 *   3. stop: an encoder slowed to 20 s per prompt does not stall the controller (status
 *      answers within 100 ms while it encodes, and shows what it encodes); a CANCEL stops
 *      the encode at the next encoder boundary, and a cancelled step stops at the next
 *      block boundary instead of running the rest of its range.  */
#include "cluster_util.h"
#include "sd3_metrics.h"

#define N_SLOW 6
#define N_HANG 4

static const char *const s_prompts[2] = {"a slow red cube", "a slow red cube"};

static int
s_counters(sd3_client_t *cl, sd3_wire_status_t *st)
{
    sd3_err_t err = {0};
    int rc = sd3_client_status(cl, 3000, st, &err);
    CHECK_MSG(rc == 0, "status: %s", err.msg);
    return rc;
}

// Cluster `name` of the tiny model (controller extras, node sections), up; a client of it, or
// NULL (CHECKed; the cluster is down again then).
static sd3_client_t *
s_cluster(const cu_refs_t *refs, const char *name, const char *controller_extra,
          const char *nodes)
{
    char client_ep[1200];
    if (cu_up(name, refs->model, controller_extra, nodes, client_ep, sizeof client_ep) != 0) {
        CHECK_MSG(0, "cluster %s did not come up", name);
        return NULL;
    }
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK_MSG(cl != NULL, "client: %s", err.msg);
    if (!cl)
        cu_down();
    return cl;
}

// Submits requests 0..n-1 of refs as PREFIX0, PREFIX1, ...
static void
s_submit(sd3_client_t *cl, const cu_refs_t *refs, cu_req_t *reqs, int n, const char *prefix)
{
    memset(reqs, 0, sizeof *reqs * (size_t)n);
    for (int i = 0; i < n; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "%s%d", prefix, i);
        cu_refs_submit(cl, refs, reqs, i);
    }
}

// 1. Every stage 3x slower than the node timeout: no failover, no timeout, same bytes.
static void
s_slow(const cu_refs_t *refs)
{
    sd3_client_t *cl = s_cluster(refs, "slow",
                                 "inflight = 6\nnode_timeout_ms = 1000\nclient_timeout_ms = 60000",
                                 "[encoder enc0]\nfault = slow=3000\n[vae vae0]\nfault = slow=3000\n"
                                 "[mmdit a0]\nrange = 0:1\nfault = slow=3000\n[mmdit a1]\n"
                                 "range = 1:2\nfault = slow=3000\n");
    if (!cl)
        return;
    static cu_req_t reqs[N_SLOW];
    double t0 = sd3_now_s();
    s_submit(cl, refs, reqs, N_SLOW, "slow");
    CHECK(cu_wait(cl, reqs, N_SLOW, 200) == 0);
    int ok = cu_refs_check(refs, reqs, N_SLOW);
    static sd3_wire_status_t st;
    if (s_counters(cl, &st) == 0) {
        CHECK_MSG(st.failovers == 0 && st.step_timeouts == 0 && st.nodes_hung == 0,
                  "slow stages counted as failures: %llu failovers, %llu step timeouts, %llu "
                  "hung",
                  (unsigned long long)st.failovers, (unsigned long long)st.step_timeouts,
                  (unsigned long long)st.nodes_hung);
        // The same counters as /metrics renders them.
        sd3_metrics_t *m = sd3_metrics_new();
        size_t len = 0;
        char *prom = m ? sd3_metrics_render(m, &st, &len) : NULL;
        CHECK_MSG(prom && strstr(prom, "\nsd3_failovers_total 0\n") &&
                      strstr(prom, "\nsd3_step_timeouts_total 0\n") &&
                      strstr(prom, "\nsd3_nodes_hung_total 0\n") &&
                      strstr(prom, "sd3_node_ready{node=\"a1\"} 1\n"),
                  "/metrics text lacks the zero failure counters or a1 ready");
        free(prom);
        sd3_metrics_destroy(&m);
        for (int i = 0; i < st.n_nodes; i++) {
            const sd3_wire_node_info_t *n = &st.nodes[i];
            CHECK_MSG(n->alive && !n->hung && n->node.live.state == SD3_WIRE_NODE_READY &&
                          n->node.live.units_done > 0 && !strcmp(n->node.live.fault, "slow=3000"),
                      "%s: alive %d hung %d state %d units %llu fault '%s'", n->node.node_id,
                      n->alive, n->hung, (int)n->node.live.state,
                      (unsigned long long)n->node.live.units_done, n->node.live.fault);
        }
    }
    int dead = cu_log_count("controller", " dead: "), resumed = cu_log_count("controller",
                                                                           "resumes from");
    CHECK_MSG(dead == 0 && resumed == 0, "controller log: %d nodes declared dead, %d resumes",
              dead, resumed);
    printf("slow: %d/%d images bit-identical in %.1f s with every stage at 3 s per forward "
           "(node timeout 1 s); failovers %llu, step timeouts %llu\n",
           ok, N_SLOW, sd3_now_s() - t0, (unsigned long long)st.failovers,
           (unsigned long long)st.step_timeouts);
    sd3_client_destroy(&cl);
    cu_down();
}

// 2. A range that hangs for good in the middle of step 1: found, its requests resumed.
static void
s_hang(const cu_refs_t *refs)
{
    // b0 [0,2) hangs in step 1; the pipeline a0 -> a1 serves. The unit bound is the 10 s
    // floor (the tiny model expects milliseconds).
    sd3_client_t *cl = s_cluster(refs, "hang", "inflight = 4\nclient_timeout_ms = 60000",
                                 "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n"
                                 "[mmdit a1]\nrange = 1:2\n[mmdit b0]\nrange = 0:2\n"
                                 "fault = hang=1\n");
    if (!cl)
        return;
    static cu_req_t reqs[N_HANG];
    double t0 = sd3_now_s();
    s_submit(cl, refs, reqs, N_HANG, "hang");
    CHECK(cu_wait(cl, reqs, N_HANG, 120) == 0);
    int ok = cu_refs_check(refs, reqs, N_HANG);
    static sd3_wire_status_t st;
    bool b0_hung = false;
    if (s_counters(cl, &st) == 0)
        for (int i = 0; i < st.n_nodes; i++)
            if (!strcmp(st.nodes[i].node.node_id, "b0"))
                b0_hung = st.nodes[i].hung && st.nodes[i].alive;
    CHECK_MSG(b0_hung, "status does not show b0 alive and hung");
    CHECK_MSG(st.nodes_hung >= 1 && st.failovers >= 1,
              "hung %llu, failovers %llu: the hang was not exercised",
              (unsigned long long)st.nodes_hung, (unsigned long long)st.failovers);
    CHECK_MSG(cu_log_count("b0", "fault: hanging") == 1, "b0 did not hang (its log)");
    CHECK_MSG(cu_log_count("controller", "node b0 hung") >= 1, "the controller log names no hang");
    printf("hang: %d/%d images bit-identical in %.1f s; b0 found hung, %llu failovers\n", ok,
           N_HANG, sd3_now_s() - t0, (unsigned long long)st.failovers);
    sd3_client_destroy(&cl);
    cu_down();
}

// 3. A 20 s encode does not stall the controller; cancels stop work at unit boundaries.
static void
s_stop(const cu_refs_t *refs)
{
    sd3_err_t err = {0};
    sd3_client_t *cl = s_cluster(refs, "stop", "client_timeout_ms = 60000",
                                 "[encoder enc0]\nfault = slow=20000\n[vae vae0]\n[mmdit b0]\n"
                                 "range = 0:2\n");
    if (!cl)
        return;
    static sd3_wire_generate_t w;
    cu_request(&w, "a prompt that takes twenty seconds", 7, 2);
    CHECK(sd3_client_submit(cl, "enc-slow", &w, NULL, &err) == 0);
    // While the encoder works: status answers fast and shows the encode in progress.
    static sd3_wire_status_t st;
    double worst = 0;
    bool seen_busy = false;
    for (int k = 0; k < 30; k++) {
        double t = sd3_now_s();
        if (s_counters(cl, &st) != 0)
            break;
        t = sd3_now_s() - t;
        worst = t > worst ? t : worst;
        for (int i = 0; i < st.n_nodes; i++)
            seen_busy = seen_busy || !strcmp(st.nodes[i].node.live.busy_request, "enc-slow");
        usleep(100000);
    }
    CHECK_MSG(worst < 0.1, "status took %.0f ms while the encoder worked", worst * 1000);
    CHECK_MSG(seen_busy, "status never showed the encoder busy with enc-slow");
    // Cancel: the encode stops at its next encoder boundary (20 s / 3 per encoder), not at
    // the end of both prompts (40 s).
    double t_cancel = sd3_now_s();
    CHECK(sd3_client_cancel(cl, "enc-slow", &err) == 0);
    double stopped = -1;
    while (sd3_now_s() - t_cancel < 15 && stopped < 0) {
        sd3_msg_t *m = NULL;
        if (sd3_client_recv(cl, 200, &m, &err) == 0)
            sd3_msg_destroy(&m);
        if (cu_log_count("enc0", "req=enc-slow stopped at a unit boundary") > 0)
            stopped = sd3_now_s() - t_cancel;
    }
    CHECK_MSG(stopped >= 0 && stopped < 8.5, "the encode did not stop at a boundary (%.1f s)",
              stopped);
    printf("stop: status within %.1f ms while encoding; the cancelled encode stopped %.1f s "
           "later\n",
           worst * 1000, stopped);
    sd3_client_destroy(&cl);
    cu_down();

    // A step: the mmdit range [0,2) takes 20 s per forward (10 s a block); cancel the request
    // while its step 0 runs: the range stops in that block, not 20 s later.
    if (!(cl = s_cluster(refs, "stopstep", "client_timeout_ms = 60000",
                         "[encoder enc0]\n[vae vae0]\n[mmdit b0]\nrange = 0:2\n"
                         "fault = slow=20000\n")))
        return;
    CHECK(sd3_client_submit(cl, "step-slow", &w, NULL, &err) == 0);
    bool in_step = false;
    for (double t = sd3_now_s(); !in_step && sd3_now_s() - t < 20; usleep(100000)) {
        sd3_msg_t *m = NULL;
        if (sd3_client_recv(cl, 10, &m, &err) == 0)
            sd3_msg_destroy(&m);
        if (s_counters(cl, &st) != 0)
            break;
        for (int i = 0; i < st.n_nodes; i++)
            in_step = in_step || (!strcmp(st.nodes[i].node.node_id, "b0") &&
                                  !strcmp(st.nodes[i].node.live.busy_request, "step-slow"));
    }
    CHECK_MSG(in_step, "b0 never showed step-slow in progress");
    usleep(500000);
    t_cancel = sd3_now_s();
    CHECK(sd3_client_cancel(cl, "step-slow", &err) == 0);
    stopped = -1;
    while (sd3_now_s() - t_cancel < 25 && stopped < 0) {
        sd3_msg_t *m = NULL;
        if (sd3_client_recv(cl, 200, &m, &err) == 0)
            sd3_msg_destroy(&m);
        if (cu_log_count("b0", "req=step-slow stopped at a unit boundary") > 0)
            stopped = sd3_now_s() - t_cancel;
    }
    CHECK_MSG(stopped >= 0 && stopped < 10.5, "the cancelled step did not stop within its block "
              "(%.1f s; the whole range takes 20 s)", stopped);
    CHECK_MSG(cu_log_count("b0", "req=step-slow step=0 error") == 0, "b0 reported an error");
    printf("stop: the cancelled step stopped %.1f s later (its range takes 20 s)\n", stopped);
    sd3_client_destroy(&cl);
    cu_down();
}

int
main(void)
{
    cu_setup(400);
    cu_refs_t refs;
    if (cu_refs_make(&refs, s_prompts, 2, 40, 2) != 0)
        return TEST_RESULT();
    s_slow(&refs);
    s_hang(&refs);
    s_stop(&refs);
    cu_refs_free(&refs);
    return TEST_RESULT();
}
