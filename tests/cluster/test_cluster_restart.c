/*  test_cluster_restart - a controller killed mid-request comes back from its journal
 *
 *  A cluster with a journal (two pipelines, one encoder, one vae); six DPM++ 2M requests
 *  from one client. Once they are a few steps in, the controller gets SIGKILL and is
 *  started again on the same endpoints and journal file (`sd3ctl up --restart controller`).
 *  The nodes re-register (dropping the work of the lost controller's attempts), the
 *  controller resumes every unfinished request from its newest checkpoint, and the client
 *  (whose socket reconnects by itself) gets its answers. Asserted: every accepted request
 *  gets exactly one RESULT, no ERROR, PNG byte-equal to the one-process PNG; at least one
 *  request resumed from a checkpoint past step 0; and a client that comes back later with
 *  a request id (`sd3ctl generate --request-id ID --controller`) gets that request's PNG
 *  from the journal, byte-equal again.  */
#include "cluster_util.h"

#define N_REQ 6
#define STEPS 16

static const char *const s_prompts[3] = {"a cat", "a dog", "a red fox"};

int
main(void)
{
    cu_setup(150);
    char client_ep[1200], extra[1400];
    static cu_refs_t refs; // request i: (prompt i % 3, seed 20 + i % 3)
    CHECK(cu_refs_make(&refs, s_prompts, 3, 20, STEPS) == 0);
    snprintf(extra, sizeof extra, "node_timeout_ms = 2000\njournal = %s/journal.db\n",
             sd3_test_tmpdir());
    CHECK(cu_up("restart", refs.model, extra, CU_NODES_TWO_PIPELINES, client_ep,
                sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    if (!cl)
        return TEST_RESULT();
    static cu_req_t reqs[N_REQ];
    double t0 = sd3_now_s();
    for (int i = 0; i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "r%02d", i);
        cu_refs_submit(cl, &refs, reqs, i);
    }
    bool killed = false;
    while (sd3_now_s() - t0 < 120) {
        int open = cu_wait(cl, reqs, N_REQ, 0.05);
        int most = 0;
        for (int i = 0; i < N_REQ; i++)
            most = reqs[i].progress > most ? reqs[i].progress : most;
        if (!killed && most >= 4) {
            CHECK(cu_kill("controller") == 0);
            usleep(300000);
            CHECK(cu_restart("controller") == 0);
            killed = true;
        } else if (killed && open == 0) {
            break;
        }
    }
    double secs = sd3_now_s() - t0;
    CHECK(killed);
    int ok = cu_refs_check(&refs, reqs, N_REQ);
    cu_check_no_late_answer(cl);
    int recovered = cu_log_count("controller", "recovered from the journal");
    int resumed_mid = recovered - cu_log_count("controller", "recovered from the journal step=0 ");
    CHECK_MSG(recovered >= 1 && resumed_mid >= 1,
              "%d requests recovered, %d from a checkpoint past step 0", recovered, resumed_mid);
    // A client that comes back for its image by request id.
    char out[1200], cmd[4096];
    snprintf(out, sizeof out, "%s/reattach.png", sd3_test_tmpdir());
    snprintf(cmd, sizeof cmd,
             "'%s/sd3ctl' generate 'any prompt' --request-id r01 --controller '%s' -q -o '%s'",
             SD3_BINARY_DIR, client_ep, out);
    CHECK_MSG(system(cmd) == 0, "%s failed", cmd);
    size_t n = 0;
    unsigned char *png = cu_read(out, &n);
    CHECK_MSG(png && n == refs.size[1] && !memcmp(png, refs.png[1], n),
              "the re-attached client's PNG differs from r01's");
    free(png);
    printf("%d/%d images bit-identical across a controller SIGKILL; %d recovered (%d past step "
           "0); %.1f s\n",
           ok, N_REQ, recovered, resumed_mid, secs);
    sd3_client_destroy(&cl);
    cu_refs_free(&refs);
    cu_down();
    return TEST_RESULT();
}
