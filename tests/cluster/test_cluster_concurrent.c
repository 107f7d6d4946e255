/*  test_cluster_concurrent - 40 concurrent requests over 2 pipelines ([0,1) -> [1,2) and
 *  [0,2)) sharing one encoder and one vae all complete with the right image: each RESULT's
 *  PNG is byte-equal to the one-process PNG of its (prompt, seed); every request gets
 *  exactly one answer (nothing lost, nothing duplicated); both pipelines worked; the
 *  encoder's cache served the repeated prompts.  */
#include "cluster_util.h"

#define N_REQ 40

// Request i is (prompt i % 2, seed i % 4): four references, two prompts, so the encoder's
// cache sees each prompt again.
static const char *const s_prompts[4] = {"a cat", "a dog", "a cat", "a dog"};

int
main(void)
{
    cu_setup(110);
    char client_ep[1200];
    cu_refs_t refs;
    if (cu_refs_make_sampler(&refs, s_prompts, 4, 0, 2, SD3_WIRE_SAMPLER_DEFAULT) != 0)
        return TEST_RESULT();
    CHECK(cu_up("concurrent", refs.model, NULL, CU_NODES_TWO_PIPELINES, client_ep,
                sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static cu_req_t reqs[N_REQ];
    double t0 = sd3_now_s();
    for (int i = 0; cl && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "c%02d", i);
        cu_refs_submit(cl, &refs, reqs, i);
    }
    static sd3_wire_status_t st;
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.n_pipelines == 2, "%d pipelines, want 2", st.n_pipelines);
    int busy = 0;
    for (int p = 0; p < st.n_pipelines; p++)
        busy += st.pipelines[p].inflight > 0;
    CHECK_MSG(busy == 2, "%d pipelines busy under load, want both", busy);
    CHECK(cl && cu_wait(cl, reqs, N_REQ, 90) == 0);
    double secs = sd3_now_s() - t0;
    int ok = cu_refs_check(&refs, reqs, N_REQ);
    cu_check_no_late_answer(cl); // late duplicates would show up here
    // A heartbeat (every 500 ms) carries the encoder's cache counters: polled, since a
    // loaded machine may delay one.
    for (double t1 = sd3_now_s(); cl && sd3_now_s() - t1 < 10; usleep(200000)) {
        CHECK(sd3_client_status(cl, 3000, &st, &err) == 0);
        if (st.cache_hits > 0)
            break;
    }
    CHECK_MSG(st.completed == N_REQ && st.failed == 0, "completed %llu failed %llu",
              (unsigned long long)st.completed, (unsigned long long)st.failed);
    CHECK_MSG(st.cache_hits > 0, "no prompt-cache hits (%llu misses)",
              (unsigned long long)st.cache_misses);
    printf("%d/%d images bit-identical, %.1f s (%.1f images/min), cache %llu hits %llu misses\n",
           ok, N_REQ, secs, N_REQ * 60.0 / secs, (unsigned long long)st.cache_hits,
           (unsigned long long)st.cache_misses);
    sd3_client_destroy(&cl);
    cu_refs_free(&refs);
    cu_down();
    return TEST_RESULT();
}
