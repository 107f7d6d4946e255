/*  test_cluster_concurrent - 40 concurrent requests over 2 pipelines ([0,1) -> [1,2) and
 *  [0,2)) sharing one encoder and one vae all complete with the right image: each RESULT's
 *  PNG is byte-equal to the one-process PNG of its (prompt, seed); every request gets
 *  exactly one answer (nothing lost, nothing duplicated); both pipelines worked; the
 *  encoder's cache served the repeated prompts.  */
#include "cluster_util.h"

#define N_REQ 40

static const char *const s_prompts[2] = {"a cat", "a dog"};

int
main(void)
{
    cu_setup(110);
    char model[1024], client_ep[1200];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    unsigned char *ref[4];
    size_t ref_n[4];
    for (int k = 0; k < 4; k++) { // (prompt k % 2, seed k)
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps 2 --seed %d", k);
        ref[k] = cu_local_png(model, s_prompts[k % 2], args, &ref_n[k]);
        CHECK(ref[k] != NULL);
    }
    CHECK(cu_up("concurrent", model, NULL,
                "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n[mmdit a1]\nrange = 1:2\n"
                "[mmdit b0]\nrange = 0:2\n",
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static cu_req_t reqs[N_REQ];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    double t0 = cu_now();
    for (int i = 0; cl && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "c%02d", i);
        cu_request(w, s_prompts[i % 4 % 2], (uint64_t)(i % 4), 2);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    static sd3_wire_status_t st;
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.n_pipelines == 2, "%d pipelines, want 2", st.n_pipelines);
    int busy = 0;
    for (int p = 0; p < st.n_pipelines; p++)
        busy += st.pipelines[p].inflight > 0;
    CHECK_MSG(busy == 2, "%d pipelines busy under load, want both", busy);
    CHECK(cl && cu_wait(cl, reqs, N_REQ, 90) == 0);
    double secs = cu_now() - t0;
    int ok = 0;
    for (int i = 0; i < N_REQ; i++) {
        int k = i % 4;
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same = ref[k] && reqs[i].png && reqs[i].png_size == ref_n[k] &&
                    !memcmp(reqs[i].png, ref[k], ref_n[k]);
        CHECK_MSG(same, "%s: PNG differs from its one-process PNG", reqs[i].id);
        ok += same;
        free(reqs[i].png);
    }
    // Late duplicates would show up here.
    sd3_msg_t *extra = NULL;
    CHECK_MSG(sd3_client_recv(cl, 300, &extra, &err) == SD3_ETIMEDOUT ||
                  (extra && extra->type != SD3_MSG_RESULT && extra->type != SD3_MSG_ERROR),
              "a message after every request was answered");
    sd3_msg_destroy(&extra);
    usleep(700000); // one heartbeat carries the encoder's cache counters
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.completed == N_REQ && st.failed == 0, "completed %llu failed %llu",
              (unsigned long long)st.completed, (unsigned long long)st.failed);
    CHECK_MSG(st.cache_hits > 0, "no prompt-cache hits (%llu misses)",
              (unsigned long long)st.cache_misses);
    printf("%d/%d images bit-identical, %.1f s (%.1f images/min), cache %llu hits %llu misses\n",
           ok, N_REQ, secs, N_REQ * 60.0 / secs, (unsigned long long)st.cache_hits,
           (unsigned long long)st.cache_misses);
    sd3_client_destroy(&cl);
    for (int k = 0; k < 4; k++)
        free(ref[k]);
    free(w);
    cu_down();
    return TEST_RESULT();
}
