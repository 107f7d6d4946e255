/*  test_cluster_failover - stage failures lose nothing and change no bit
 *
 *  Two pipelines ([0,1) -> [1,2) and [0,2)), one encoder, one vae; DPM++ 2M requests with
 *  enough steps to be caught mid-way. While they run: SIGKILL of the mmdit a1 in the middle
 *  of its requests (they resume from their newest checkpoint, latent + old_denoised, on the
 *  other pipeline; a1 is restarted later and its pipeline re-forms), then SIGKILL of the
 *  encoder and the vae with requests in hand, both restarted 1 s later (their work is
 *  retried on the new process). Asserted: every request gets exactly one RESULT and no
 *  ERROR, its PNG is byte-equal to the one-process PNG of its (prompt, seed); the
 *  controller resumed at least one request from a step > 0; both pipelines are alive at
 *  the end; the controller counts no failure.  */
#include "cluster_util.h"

#define N_WAVE1 6
#define N_WAVE2 4
#define N_REQ   (N_WAVE1 + N_WAVE2)
#define STEPS   16

static const char *const s_prompts[3] = {"a cat", "a dog", "a red fox"};

int
main(void)
{
    cu_setup(150);
    char client_ep[1200];
    static cu_refs_t refs; // request i: (prompt i % 3, seed 10 + i % 3)
    CHECK(cu_refs_make(&refs, s_prompts, 3, 10, STEPS) == 0);
    // inflight 6: wave 1 starts at once on the two pipelines, and once a1's pipeline is gone
    // and a first request is done, the other has a free slot for wave 2 straight away (so
    // wave 2's ENCODE reaches the dead enc0 whatever the load).
    // client_timeout 30 s: the three restarts below each block until their node registers
    // (seconds under ASan), and the client sends no keep-alive meanwhile.
    CHECK(cu_up("failover", refs.model,
                "node_timeout_ms = 1500\ninflight = 6\nclient_timeout_ms = 30000\n",
                CU_NODES_TWO_PIPELINES,
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    if (!cl)
        return TEST_RESULT();
    static cu_req_t reqs[N_REQ];
    double t0 = sd3_now_s();
    for (int i = 0; i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "f%02d", i);
        if (i < N_WAVE1)
            cu_refs_submit(cl, &refs, reqs, i);
    }
    // 1. a1 dies once a request is a few steps in
    int phase = 0;
    double t_phase = 0;
    while (sd3_now_s() - t0 < 120) {
        int open = cu_wait(cl, reqs, phase >= 2 ? N_REQ : N_WAVE1, 0.05);
        // Wave 1 runs on both pipelines; a1 dies once every request is at least 2 steps in,
        // so the ones on a1's pipeline resume mid-way however the machine's load spreads the
        // work.
        int least = STEPS, results = 0;
        for (int i = 0; i < N_WAVE1; i++) {
            least = reqs[i].progress < least ? reqs[i].progress : least;
            results += reqs[i].results;
        }
        if (phase == 0 && least >= 2) {
            CHECK(cu_kill("a1") == 0);
            phase = 1;
        } else if (phase == 1 && results >= 1) {
            // 2. the encoder and the vae die with work in hand: a new wave needs the encoder,
            // the running requests the vae
            CHECK(cu_kill("enc0") == 0);
            CHECK(cu_kill("vae0") == 0);
            for (int i = N_WAVE1; i < N_REQ; i++)
                cu_refs_submit(cl, &refs, reqs, i);
            phase = 2;
            t_phase = sd3_now_s();
        } else if (phase == 2 && sd3_now_s() - t_phase > 1.0) {
            CHECK(cu_restart("enc0") == 0);
            CHECK(cu_restart("vae0") == 0);
            CHECK(cu_restart("a1") == 0);
            phase = 3;
        } else if (phase == 3 && open == 0) {
            break;
        }
    }
    double secs = sd3_now_s() - t0;
    CHECK_MSG(phase == 3, "the test stopped in phase %d", phase);
    int ok = cu_refs_check(&refs, reqs, N_REQ);
    cu_check_no_late_answer(cl);
    int resumed = cu_log_count("controller", "resumes from step=");
    int resumed_mid = resumed - cu_log_count("controller", "resumes from step=0 ");
    CHECK_MSG(resumed_mid >= 1, "no request resumed from a checkpoint past step 0 (%d resumes)",
              resumed);
    // wave 2's ENCODE went to the dead enc0 (its only encoder): retried on the new process
    int enc_retry = cu_log_count("controller", "encoding on node=enc0 retried") +
                    cu_log_count("controller", "node=enc0 unreachable");
    int dec_retry = cu_log_count("controller", "decoding on node=vae0 retried") +
                    cu_log_count("controller", "node=vae0 unreachable");
    CHECK_MSG(enc_retry >= 1, "no ENCODE was retried after enc0 died");
    printf("retried: %d encodes, %d decodes\n", enc_retry, dec_retry);
    static sd3_wire_status_t st;
    double t_wait = sd3_now_s();
    do { // a1 re-registered: its pipeline forms again
        CHECK(sd3_client_status(cl, 3000, &st, &err) == 0);
    } while (st.n_pipelines < 2 && sd3_now_s() - t_wait < 20 && usleep(200000) == 0);
    CHECK_MSG(st.n_pipelines == 2, "%d pipelines after a1 came back, want 2", st.n_pipelines);
    CHECK_MSG(st.completed == N_REQ && st.failed == 0, "completed %llu failed %llu",
              (unsigned long long)st.completed, (unsigned long long)st.failed);
    printf("%d/%d images bit-identical after killing a1, enc0, vae0; %d resumes (%d past step 0); "
           "%.1f s\n",
           ok, N_REQ, resumed, resumed_mid, secs);
    sd3_client_destroy(&cl);
    cu_refs_free(&refs);
    cu_down();
    return TEST_RESULT();
}
