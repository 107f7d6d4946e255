/*  test_cluster_bad - every role answers each kind of malformed message (sd3_wire_bad: 43
 *  kinds, from a garbage envelope to a zstd bomb to a STEP with the wrong shapes) with an
 *  ERROR naming the problem, and keeps serving: the controller's client and stage
 *  endpoints, the encoder, both mmdit ranges and the vae each get all of them, then the
 *  cluster makes a normal image, equal to the one-process image.  */
#include "cluster_util.h"
#include "sd3_wire_bad.h"

#include <zmq.h>

// Sends every kind to endpoint; returns how many were answered as they should be.
static int
s_throw_all(void *ctx, const char *what, const char *endpoint)
{
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int timeout = 3000, linger = 0, answered = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    CHECK(zmq_connect(sock, endpoint) == 0);
    const int n = sd3_wire_bad_count();
    for (int k = 0; k < n; k++) {
        sd3_wire_bad_msg_t bad;
        sd3_err_t err = {0};
        char id[32];
        snprintf(id, sizeof id, "bad-%d", k);
        CHECK(sd3_wire_bad_build(k, id, &bad, &err) == 0);
        CHECK(sd3_wire_bad_send(sock, &bad, NULL, 0, &err) == 0);
        sd3_wire_bad_fini(&bad);
        sd3_msg_t *reply = NULL;
        int rc = sd3_wire_recv(sock, NULL, NULL, &reply, &err);
        bool ok = rc == 0 && reply->type == SD3_MSG_ERROR;
        if (ok && !sd3_wire_bad_is_stage_check(k))
            ok = reply->status == SD3_EPROTO && strstr(reply->message, sd3_wire_bad_expect(k));
        CHECK_MSG(ok, "%s: kind %d '%s': %s", what, k, sd3_wire_bad_name(k),
                  rc ? err.msg : reply->message);
        answered += ok;
        sd3_msg_destroy(&reply);
    }
    zmq_close(sock);
    printf("%-18s %s: %d/%d malformed messages answered with ERROR\n", what, endpoint, answered, n);
    return answered;
}

int
main(void)
{
    cu_setup(110);
    char model[1024], client_ep[1200], stage_ep[1200] = "";
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    size_t ref_n = 0;
    unsigned char *ref = cu_local_png(model, "a bell", "--size 64x64 --steps 2 --seed 4", &ref_n);
    CHECK(ref != NULL);
    CHECK(cu_up("bad", model, NULL,
                "[encoder enc0]\n[vae vae0]\n[mmdit d0]\nrange = 0:1\n[mmdit d1]\nrange = 1:2\n",
                client_ep, sizeof client_ep) == 0);
    char addr[1200], line[1300];
    snprintf(addr, sizeof addr, "%s/run-bad/controller.addr", sd3_test_tmpdir());
    FILE *f = fopen(addr, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "stages=", 7)) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(stage_ep, sizeof stage_ep, "%s", line + 7);
        }
    if (f)
        fclose(f);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    static sd3_wire_status_t st;
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0 && st.n_nodes == 4);
    void *ctx = zmq_ctx_new();
    const int n = sd3_wire_bad_count();
    CHECK(s_throw_all(ctx, "controller/client", client_ep) == n);
    CHECK(s_throw_all(ctx, "controller/stages", stage_ep) == n);
    for (int i = 0; i < st.n_nodes; i++)
        CHECK(s_throw_all(ctx, st.nodes[i].node.node_id, st.nodes[i].node.address) == n);
    zmq_ctx_term(ctx);
    // Everyone still serves: a normal request, the right image.
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    cu_request(w, "a bell", 4, 2);
    cu_req_t r = {.id = "after-bad"};
    CHECK(cl && sd3_client_submit(cl, r.id, w, NULL, &err) == 0);
    CHECK(cl && cu_wait(cl, &r, 1, 30) == 0);
    CHECK_MSG(r.results == 1 && r.png && r.png_size == ref_n && !memcmp(r.png, ref, ref_n),
              "request after the bad messages: %d results, %d errors (%s)", r.results, r.errors,
              r.message);
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    for (int i = 0; i < st.n_nodes; i++)
        CHECK_MSG(st.nodes[i].alive, "%s is not alive", st.nodes[i].node.node_id);
    free(r.png);
    free(w);
    free(ref);
    sd3_client_destroy(&cl);
    cu_down();
    return TEST_RESULT();
}
