/*  test_cluster_batch - steps of different requests merged into one batch at a stage
 *
 *  One pipeline [0,1) -> [1,2) with 8 requests in flight: the steps that wait at a range
 *  together are merged (sd3_stage_host_handle_many, --batch-max 4 by default). Every image
 *  must still be byte-equal to its one-process image, each request answered exactly once,
 *  and the ranges' logs must show merged batches (else the test proves nothing).  */
#include "cluster_util.h"

#define N_REQ 16

static const char *const s_prompts[2] = {"a red cube", "a blue sphere"};

int
main(void)
{
    cu_setup(110);
    char model[1024], client_ep[1200];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    unsigned char *ref[4];
    size_t ref_n[4];
    for (int k = 0; k < 4; k++) { // (prompt k % 2, seed 10 + k)
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps 6 --seed %d", 10 + k);
        ref[k] = cu_local_png(model, s_prompts[k % 2], args, &ref_n[k]);
        CHECK(ref[k] != NULL);
    }
    CHECK(cu_up("batch", model, "inflight = 8",
                "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n[mmdit a1]\nrange = 1:2\n",
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static cu_req_t reqs[N_REQ];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    for (int i = 0; cl && w && i < N_REQ; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "b%02d", i);
        cu_request(w, s_prompts[i % 4 % 2], (uint64_t)(10 + i % 4), 6);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    CHECK(cl && cu_wait(cl, reqs, N_REQ, 90) == 0);
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
    int m0 = cu_log_count("a0", "merged n="), m1 = cu_log_count("a1", "merged n=");
    CHECK_MSG(m0 + m1 > 0, "no merged batch on either range (a0 %d, a1 %d)", m0, m1);
    printf("%d/%d images bit-identical; merged batches: a0 %d, a1 %d\n", ok, N_REQ, m0, m1);
    sd3_client_destroy(&cl);
    for (int k = 0; k < 4; k++)
        free(ref[k]);
    free(w);
    cu_down();
    return TEST_RESULT();
}
