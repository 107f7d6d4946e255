/*  test_cluster_batch - steps of different requests merged into one batch at a stage
 *
 *  One pipeline [0,1) -> [1,2) with 8 requests in flight, twice:
 *   1. merging on (--batch-max 4, the default): the steps that wait at a range together are
 *      merged (sd3_stage_host_handle_many). Every image must still be byte-equal to its
 *      one-process image, each request answered exactly once, the ranges' logs must show
 *      merged batches (else the test proves nothing), as many as `sd3ctl status` counts,
 *      each of 2..4 steps;
 *   2. `batch_max = 1` in the cluster file: the same images, and not one merged batch.
 *  Prints images/min of both runs (a figure, not asserted: the machine is shared).  */
#include "cluster_util.h"

#define N_REQ 16

static const char *const s_prompts[4] = {"a red cube", "a blue sphere", "a red cube",
                                         "a blue sphere"};

// Runs N_REQ requests on a fresh cluster; returns the merged batches its logs show (-1 on
// failure) and sets *per_min.
static int
s_run(const cu_refs_t *refs, const char *name, const char *cluster_extra, double *per_min)
{
    static char text[4096];
    char client_ep[1200];
    snprintf(text, sizeof text,
             "[cluster]\nmodel = %s\nrun_dir = %s/run-%s\nthreads = 1\n%s\n[controller]\n"
             "listen = tcp://127.0.0.1:*\nstages = tcp://127.0.0.1:*\ninflight = 8\n\n"
             "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n[mmdit a1]\nrange = 1:2\n",
             refs->model, sd3_test_tmpdir(), name, cluster_extra);
    if (cu_up_text(name, text, client_ep, sizeof client_ep) != 0) {
        CHECK_MSG(0, "cluster %s did not come up", name);
        return -1;
    }
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static cu_req_t reqs[N_REQ];
    memset(reqs, 0, sizeof reqs);
    double t0 = sd3_now_s();
    for (int i = 0; cl && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "%s%02d", name, i);
        cu_refs_submit(cl, refs, reqs, i);
    }
    CHECK(cl && cu_wait(cl, reqs, N_REQ, 90) == 0);
    *per_min = N_REQ * 60.0 / (sd3_now_s() - t0);
    int ok = cu_refs_check(refs, reqs, N_REQ);
    cu_check_no_late_answer(cl);
    int m0 = cu_log_count("a0", "merged n="), m1 = cu_log_count("a1", "merged n=");
    // The same counts reach `sd3ctl status` through the heartbeats (every 500 ms; polled,
    // since a loaded machine may delay one).
    static sd3_wire_status_t st;
    uint64_t batches = 0, steps = 0;
    for (double t1 = sd3_now_s(); cl && sd3_now_s() - t1 < 10; usleep(200000)) {
        batches = steps = 0;
        CHECK(sd3_client_status(cl, 3000, &st, &err) == 0);
        for (int i = 0; i < st.n_nodes; i++) {
            batches += st.nodes[i].batches;
            steps += st.nodes[i].batched_steps;
        }
        if (batches >= (uint64_t)(m0 + m1))
            break;
    }
    CHECK_MSG(batches == (uint64_t)(m0 + m1) && steps >= 2 * batches && steps <= 4 * batches,
              "%s: status counts %llu batches holding %llu steps; logs: %d merged lines", name,
              (unsigned long long)batches, (unsigned long long)steps, m0 + m1);
    printf("%s: %d/%d images bit-identical, %.1f images/min; merged batches: a0 %d, a1 %d "
           "(%llu steps)\n",
           name, ok, N_REQ, *per_min, m0, m1, (unsigned long long)steps);
    sd3_client_destroy(&cl);
    cu_down();
    return m0 + m1;
}

int
main(void)
{
    cu_setup(110);
    cu_refs_t refs;
    if (cu_refs_make(&refs, s_prompts, 4, 10, 6) != 0)
        return TEST_RESULT();
    double on = 0, off = 0;
    int merged = s_run(&refs, "merge", "", &on);
    CHECK_MSG(merged > 0, "no merged batch on either range with merging on (%d)", merged);
    merged = s_run(&refs, "nomerge", "batch_max = 1\n", &off);
    CHECK_MSG(merged == 0, "%d merged batches with batch_max = 1", merged);
    printf("images/min: merging %.1f, batch_max 1 %.1f\n", on, off);
    cu_refs_free(&refs);
    return TEST_RESULT();
}
