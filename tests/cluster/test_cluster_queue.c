/*  test_cluster_queue - a burst past the queue bound: one pipeline with an in-flight limit
 *  of 1 and a queue of 3 takes 4 requests of a burst of 10; the other 6 get ERROR
 *  RESOURCE_EXHAUSTED (SD3_EFULL) at once, naming the bound; the 4 accepted all complete
 *  with the right image; afterwards a new request is accepted again.  */
#include "cluster_util.h"

#define N_BURST 10

int
main(void)
{
    cu_setup(110);
    char model[1024], client_ep[1200];
    snprintf(model, sizeof model, "%s/tiny", sd3_test_tmpdir());
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    size_t ref_n = 0;
    unsigned char *ref = cu_local_png(model, "a boat", "--size 64x64 --steps 12 --seed 5", &ref_n);
    CHECK(ref != NULL);
    CHECK(cu_up("queue", model, "queue = 3\ninflight = 1",
                "[encoder enc0]\n[vae vae0]\n[mmdit d0]\nrange = 0:1\n[mmdit d1]\nrange = 1:2\n",
                client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static cu_req_t reqs[N_BURST + 1];
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    cu_request(w, "a boat", 5, 12);
    for (int i = 0; cl && i < N_BURST; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "q%02d", i);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    CHECK(cl && cu_wait(cl, reqs, N_BURST, 90) == 0);
    int full = 0, done = 0;
    for (int i = 0; i < N_BURST; i++) {
        if (reqs[i].errors) {
            CHECK_MSG(reqs[i].last_status == SD3_EFULL && strstr(reqs[i].message, "queue full"),
                      "%s: error %d '%s', want EFULL", reqs[i].id, reqs[i].last_status,
                      reqs[i].message);
            full += reqs[i].last_status == SD3_EFULL;
        } else {
            CHECK_MSG(reqs[i].png && reqs[i].png_size == ref_n && !memcmp(reqs[i].png, ref, ref_n),
                      "%s: wrong image", reqs[i].id);
            done++;
        }
        CHECK(reqs[i].results + reqs[i].errors == 1);
        free(reqs[i].png);
    }
    printf("burst of %d: %d completed, %d RESOURCE_EXHAUSTED\n", N_BURST, done, full);
    CHECK_MSG(full == N_BURST - 4 && done == 4, "%d refused, %d done; want %d and 4", full, done,
              N_BURST - 4);
    // The queue drained: a new request is taken again.
    snprintf(reqs[N_BURST].id, sizeof reqs[N_BURST].id, "q-after");
    CHECK(cl && sd3_client_submit(cl, reqs[N_BURST].id, w, NULL, &err) == 0);
    CHECK(cl && cu_wait(cl, &reqs[N_BURST], 1, 30) == 0 && reqs[N_BURST].results == 1);
    free(reqs[N_BURST].png);
    sd3_client_destroy(&cl);
    free(ref);
    free(w);
    cu_down();
    return TEST_RESULT();
}
