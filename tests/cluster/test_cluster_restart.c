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
    char model[1024], client_ep[1200], extra[1400];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    unsigned char *ref[3];
    size_t ref_n[3];
    for (int k = 0; k < 3; k++) {
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps %d --seed %d --sampler dpmpp_2m", STEPS,
                 20 + k);
        ref[k] = cu_local_png(model, s_prompts[k], args, &ref_n[k]);
        CHECK(ref[k] != NULL);
    }
    snprintf(extra, sizeof extra, "node_timeout_ms = 2000\njournal = %s/journal.db\n",
             sd3_test_tmpdir());
    CHECK(cu_up("restart", model, extra,
                "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n[mmdit a1]\nrange = 1:2\n"
                "[mmdit b0]\nrange = 0:2\n",
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    if (!cl)
        return TEST_RESULT();
    static cu_req_t reqs[N_REQ];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    double t0 = cu_now();
    for (int i = 0; i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "r%02d", i);
        cu_request(w, s_prompts[i % 3], (uint64_t)(20 + i % 3), STEPS);
        w->sampler = SD3_WIRE_SAMPLER_DPMPP_2M;
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    bool killed = false;
    while (cu_now() - t0 < 120) {
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
    double secs = cu_now() - t0;
    CHECK(killed);
    int ok = 0;
    for (int i = 0; i < N_REQ; i++) {
        int k = i % 3;
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same = ref[k] && reqs[i].png && reqs[i].png_size == ref_n[k] &&
                    !memcmp(reqs[i].png, ref[k], ref_n[k]);
        CHECK_MSG(same, "%s: PNG differs from its one-process PNG", reqs[i].id);
        ok += same;
        free(reqs[i].png);
    }
    sd3_msg_t *late = NULL; // a duplicate RESULT would show up here
    CHECK_MSG(sd3_client_recv(cl, 500, &late, &err) == SD3_ETIMEDOUT ||
                  (late && late->type != SD3_MSG_RESULT && late->type != SD3_MSG_ERROR),
              "a message after every request was answered");
    sd3_msg_destroy(&late);
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
    CHECK_MSG(png && n == ref_n[1] && !memcmp(png, ref[1], n),
              "the re-attached client's PNG differs from r01's");
    free(png);
    printf("%d/%d images bit-identical across a controller SIGKILL; %d recovered (%d past step "
           "0); %.1f s\n",
           ok, N_REQ, recovered, resumed_mid, secs);
    sd3_client_destroy(&cl);
    for (int k = 0; k < 3; k++)
        free(ref[k]);
    free(w);
    cu_down();
    return TEST_RESULT();
}
