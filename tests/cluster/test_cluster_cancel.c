/*  test_cluster_cancel - a cancelled request frees its slot, and a vanished client is
 *  cancelled. One pipeline with an in-flight limit of 1: request A (long) runs, B waits;
 *  CANCEL of A answers ERROR CANCELED and B then runs to the right image (the slot came
 *  free; the stages dropped A's later steps: its step count stops). Then a second client
 *  submits C and disappears without a word: after the controller's client timeout (1 s)
 *  C is cancelled and D, waiting behind it, completes.  */
#include "cluster_util.h"

int
main(void)
{
    cu_setup(110);
    char model[1024], client_ep[1200];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    size_t ref_n = 0;
    unsigned char *ref = cu_local_png(model, "a kite", "--size 64x64 --steps 3 --seed 9", &ref_n);
    CHECK(ref != NULL);
    CHECK(cu_up("cancel", model, "inflight = 1\nclient_timeout_ms = 2000",
                "[encoder enc0]\n[vae vae0]\n[mmdit d0]\nrange = 0:1\n[mmdit d1]\nrange = 1:2\n",
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    // Keep-alives well inside the controller's client timeout: at the default period (1 s)
    // against a 1 s timeout, a loaded ASan run took the staying client for gone too.
    sd3_client_opts_t stay = {.keepalive_ms = 200};
    sd3_client_t *cl = sd3_client_new(client_ep, &stay, &err);
    CHECK(cl != NULL);
    sd3_wire_generate_t *along = calloc(1, sizeof *along), *w = calloc(1, sizeof *w);
    cu_request(along, "a kite", 1, 1000);
    cu_request(w, "a kite", 9, 3);
    cu_req_t a = {.id = "A"}, b = {.id = "B"};
    CHECK(cl && sd3_client_submit(cl, "A", along, NULL, &err) == 0);
    CHECK(cl && sd3_client_submit(cl, "B", w, NULL, &err) == 0);
    // Wait until A made a few steps, then cancel it.
    double t_end = sd3_now_s() + 20;
    while (cl && a.progress < 3 && sd3_now_s() < t_end) {
        sd3_msg_t *msg = NULL;
        if (sd3_client_recv(cl, 200, &msg, &err) == 0 && !strcmp(msg->request_id, "A") &&
            msg->type == SD3_MSG_PROGRESS && msg->body.progress.step > 0)
            a.progress++;
        CHECK(!msg || strcmp(msg->request_id, "B") || msg->type == SD3_MSG_ACK ||
              msg->type == SD3_MSG_PROGRESS);
        sd3_msg_destroy(&msg);
    }
    CHECK_MSG(a.progress >= 3, "A made %d steps", a.progress);
    double t_cancel = sd3_now_s();
    CHECK(cl && sd3_client_cancel(cl, "A", &err) == 0);
    cu_req_t ab[2] = {a, b};
    ab[0].progress = 0;
    CHECK(cl && cu_wait(cl, ab, 2, 30) == 0);
    CHECK_MSG(ab[0].errors == 1 && ab[0].last_status == SD3_ECANCELED, "A: status %d '%s'",
              ab[0].last_status, ab[0].message);
    // Steps already on their way when the CANCEL arrived may still report (a loaded client
    // reads late), but none after the ERROR, and far fewer than the 1000 A asked for.
    CHECK_MSG(ab[0].late_progress == 0 && ab[0].progress < 50,
              "A: %d PROGRESS after its cancel, %d after its ERROR", ab[0].progress,
              ab[0].late_progress);
    CHECK_MSG(ab[1].results == 1 && ab[1].png && ab[1].png_size == ref_n &&
                  !memcmp(ab[1].png, ref, ref_n),
              "B: %d results, image %s", ab[1].results, ab[1].png ? "differs" : "missing");
    printf("A cancelled; B done %.2f s after the cancel\n", sd3_now_s() - t_cancel);
    free(ab[1].png);
    static sd3_wire_status_t st;
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    uint64_t steps_before = st.step_count;
    usleep(500000);
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.step_count == steps_before && st.inflight == 0,
              "steps went on after everything ended (%llu -> %llu), %u in flight",
              (unsigned long long)steps_before, (unsigned long long)st.step_count, st.inflight);

    // A client that vanishes: its request is cancelled and the slot goes to D.
    sd3_client_opts_t co = {.keepalive_ms = 200};
    sd3_client_t *gone = sd3_client_new(client_ep, &co, &err);
    CHECK(gone && sd3_client_submit(gone, "C", along, NULL, &err) == 0);
    // C's ACK first, so C holds the slot before D is submitted.
    bool acked = false;
    for (double t0 = sd3_now_s(); gone && !acked && sd3_now_s() - t0 < 10;) {
        sd3_msg_t *msg = NULL;
        if (sd3_client_recv(gone, 200, &msg, &err) == 0)
            acked = msg->type == SD3_MSG_ACK && !strcmp(msg->request_id, "C");
        sd3_msg_destroy(&msg);
    }
    CHECK_MSG(acked, "C was not acknowledged");
    CHECK(cl && sd3_client_submit(cl, "D", w, NULL, &err) == 0);
    sd3_client_destroy(&gone); // no CANCEL, no more keep-alives
    double t_gone = sd3_now_s();
    cu_req_t d = {.id = "D"};
    CHECK(cl && cu_wait(cl, &d, 1, 30) == 0);
    CHECK_MSG(d.results == 1 && d.png && d.png_size == ref_n && !memcmp(d.png, ref, ref_n),
              "D: %d results, %d errors (%s)", d.results, d.errors, d.message);
    printf("vanished client's request cancelled; D done %.2f s after the client left\n",
           sd3_now_s() - t_gone);
    free(d.png);
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.failed == 2 && st.completed == 2, "completed %llu failed %llu, want 2 and 2",
              (unsigned long long)st.completed, (unsigned long long)st.failed);
    sd3_client_destroy(&cl);
    free(ref);
    free(along);
    free(w);
    cu_down();
    return TEST_RESULT();
}
