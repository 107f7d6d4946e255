/*  test_cluster_split - a cluster's image is the one-process image, bit for bit, whatever
 *  the split: for two architectures (tiny sd3-medium and tiny sd3.5-medium with qk-norm and
 *  attn2, both 5 blocks deep), one cluster runs three replica pipelines split 2, 3 and 5 ways
 *  (10 mmdit processes, one encoder, one vae, the controller), and 6 concurrent requests (the
 *  least-loaded rule puts 2 on each pipeline) must each return exactly the PNG bytes of
 *  `sd3ctl generate` run in one process. The sd3.5 case also runs skip-layer guidance (the
 *  extra cond-only batch travels between the ranges) and the Euler sampler.  */
#include "cluster_util.h"

static const char *s_nodes =
    "[encoder enc0]\n[vae vae0]\n"
    "[mmdit p2a]\nrange = 0:2\n[mmdit p2b]\nrange = 2:5\n"
    "[mmdit p3a]\nrange = 0:1\n[mmdit p3b]\nrange = 1:3\n[mmdit p3c]\nrange = 3:5\n"
    "[mmdit p5a]\nrange = 0:1\n[mmdit p5b]\nrange = 1:2\n[mmdit p5c]\nrange = 2:3\n"
    "[mmdit p5d]\nrange = 3:4\n[mmdit p5e]\nrange = 4:5\n";

static void
s_case(const char *arch, const char *local_args, const sd3_wire_generate_t *w)
{
    char model[1024], client_ep[1200];
    snprintf(model, sizeof model, "%s/%s-d5", sd3_test_tmpdir(), arch);
    CHECK(cu_mkmodel(arch, 5, model) == 0);
    size_t ref_n = 0;
    unsigned char *ref = cu_local_png(model, w->prompt, local_args, &ref_n);
    CHECK(ref != NULL);
    CHECK(cu_up(arch, model, NULL, s_nodes, client_ep, sizeof client_ep) == 0);
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    CHECK(cl != NULL);
    static sd3_wire_status_t st;
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0);
    CHECK_MSG(st.n_pipelines == 3, "%d pipelines, want 3", st.n_pipelines);
    int ways = 0; // the three chains as written: 2, 3 and 5 ranges
    for (int p = 0; p < st.n_pipelines; p++)
        ways |= 1 << st.pipelines[p].n_stages;
    CHECK_MSG(ways == ((1 << 2) | (1 << 3) | (1 << 5)), "pipelines are not split 2, 3, 5 ways");
    for (int p = 0; p < st.n_pipelines; p++) {
        printf("  pipeline %u:", st.pipelines[p].id);
        for (int s = 0; s < st.pipelines[p].n_stages; s++)
            printf(" %s", st.pipelines[p].node_ids[s]);
        printf("\n");
    }
    cu_req_t reqs[6];
    memset(reqs, 0, sizeof reqs);
    for (int i = 0; cl && i < 6; i++) {
        snprintf(reqs[i].id, sizeof reqs[i].id, "%s-%d", arch, i);
        CHECK(sd3_client_submit(cl, reqs[i].id, w, NULL, &err) == 0);
    }
    CHECK(cl && cu_wait(cl, reqs, 6, 60) == 0);
    for (int i = 0; i < 6; i++) {
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same =
            ref && reqs[i].png && reqs[i].png_size == ref_n && !memcmp(reqs[i].png, ref, ref_n);
        CHECK_MSG(same, "%s: PNG of %zu bytes differs from the one-process PNG of %zu bytes",
                  reqs[i].id, reqs[i].png_size, ref_n);
        printf("  %s: %s (%d progress messages)\n", reqs[i].id, same ? "bit-identical" : "DIFFERS",
               reqs[i].progress);
        free(reqs[i].png);
    }
    CHECK(cl && sd3_client_status(cl, 3000, &st, &err) == 0 && st.completed == 6);
    sd3_client_destroy(&cl);
    free(ref);
    cu_down();
}

int
main(void)
{
    cu_setup(170);
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    cu_request(w, "a lighthouse at dusk", 7, 4);
    s_case("tiny-sd3-medium", "--size 64x64 --steps 4 --seed 7", w);
    cu_request(w, "a red fox in snow", 11, 6);
    w->sampler = SD3_WIRE_SAMPLER_EULER;
    w->slg_scale = 2.5f;
    w->n_slg_layers = 2;
    w->slg_layers[0] = 1;
    w->slg_layers[1] = 2;
    s_case("tiny-sd3.5-medium",
           "--size 64x64 --steps 6 --seed 11 --sampler euler --slg 2.5 --slg-layers 1,2", w);
    free(w);
    return TEST_RESULT();
}
