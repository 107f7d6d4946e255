/*  test_mmdit_split - splitting the MMDiT into layer ranges never changes the bits
 *
 *  For each tiny golden checkpoint (dit/tiny-<variant>.safetensors) and its forward inputs
 *  (dit/mmdit-<variant>.safetensors): the single call [0, depth) and every split of the
 *  blocks into consecutive ranges (each range its own sd3_mmdit_t loading only its
 *  weights, the activations handed on in sd3_mmdit_act_t) give bit-identical out.x, with
 *  and without skipped layers. Also: bad ranges and out-of-order chaining are errors.
 *
 *  With the argument `diffusers`: the forward from e2e/tiny-sd3-medium-diffusers/ (sharded,
 *  diffusers names, q/k/v split, swapped 2-chunk modulations) equals the forward from
 *  e2e/tiny-sd3-medium-incl-clips-t5.safetensors (same F16 weights) bit for bit.
 *  Skips (77) without the golden data.  */
#include "sd3_backend.h"
#include "sd3_mmdit.h"
#include "sd3_safetensors.h"
#include "sd3_test.h"
#include "sd3_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    sd3_st_t *st;
    sd3_tensor_t x, ts, y, ctx; // views into st
} s_inputs_t;

static int
s_inputs_open(const char *path, s_inputs_t *in, sd3_err_t *err)
{
    memset(in, 0, sizeof *in);
    if (!(in->st = sd3_st_open(path, err)) || sd3_st_get(in->st, "in.x", &in->x, err) ||
        sd3_st_get(in->st, "in.timestep", &in->ts, err) ||
        sd3_st_get(in->st, "in.y", &in->y, err) || sd3_st_get(in->st, "in.context", &in->ctx, err))
        return -1;
    return 0;
}

// Runs the ranges bounds[0..n] ([bounds[k], bounds[k+1]) each) as separate objects.
static sd3_tensor_t *
s_run_split(sd3_backend_t *be, sd3_weights_t *w, const int *bounds, int n, const s_inputs_t *in,
            uint64_t skip, sd3_err_t *err)
{
    sd3_mmdit_t *parts[SD3_MMDIT_MAX_DEPTH] = {0};
    sd3_mmdit_act_t act = {0};
    sd3_tensor_t *out = sd3_tensor_new(SD3_F32, 4, in->x.shape);
    bool ok = out != NULL;
    for (int k = 0; k < n && ok; k++)
        ok = (parts[k] = sd3_mmdit_new(be, w, bounds[k], bounds[k + 1], err)) != NULL;
    if (ok)
        ok = sd3_mmdit_embed(parts[0], &in->x, in->ts.data, &in->y, &in->ctx, &act, err) == 0;
    for (int k = 0; k < n && ok; k++)
        ok = sd3_mmdit_blocks(parts[k], &act, skip, err) == 0;
    if (ok)
        ok = sd3_mmdit_final(parts[n - 1], &act, out, err) == 0;
    sd3_mmdit_act_fini(be, &act);
    for (int k = 0; k < n; k++)
        sd3_mmdit_destroy(&parts[k]);
    if (!ok)
        sd3_tensor_destroy(&out);
    return out;
}

static void
s_check_variant(sd3_backend_t *be, const char *variant)
{
    char rel[256];
    sd3_err_t err = {0};
    s_inputs_t in;
    snprintf(rel, sizeof rel, "dit/tiny-%s.safetensors", variant);
    const char *wpath = sd3_test_data_path(rel);
    sd3_weights_t *w = wpath ? sd3_weights_open_path(wpath, SD3_COMP_MMDIT, &err) : NULL;
    CHECK_MSG(w != NULL, "%s: %s", variant, err.msg);
    snprintf(rel, sizeof rel, "dit/mmdit-tiny-%s.safetensors", variant);
    const char *ipath = sd3_test_data_path(rel);
    CHECK_MSG(ipath && s_inputs_open(ipath, &in, &err) == 0, "%s: %s", variant, err.msg);
    if (!w || !in.st) {
        sd3_weights_destroy(&w);
        sd3_st_destroy(&in.st);
        return;
    }
    sd3_mmdit_config_t cfg;
    CHECK(sd3_mmdit_config_detect(w, &cfg, &err) == 0);
    const int depth = cfg.depth;
    for (uint64_t skip = 0; skip <= 2; skip += 2) { // no skip, then block 1 skipped
        int whole[2] = {0, depth};
        sd3_tensor_t *ref = s_run_split(be, w, whole, 1, &in, skip, &err);
        CHECK_MSG(ref != NULL, "%s whole: %s", variant, err.msg);
        if (!ref)
            break;
        // Every composition of depth into consecutive ranges: bit c of `cuts` = a cut after
        // block c + 1.
        for (uint32_t cuts = 1; cuts < (1u << (depth - 1)); cuts++) {
            int bounds[SD3_MMDIT_MAX_DEPTH + 1], n = 0;
            bounds[n++] = 0;
            for (int c = 0; c < depth - 1; c++)
                if ((cuts >> c) & 1u)
                    bounds[n++] = c + 1;
            bounds[n] = depth;
            char desc[128] = "";
            for (int k = 0; k < n; k++)
                snprintf(desc + strlen(desc), sizeof desc - strlen(desc), "[%d,%d)", bounds[k],
                         bounds[k + 1]);
            sd3_tensor_t *got = s_run_split(be, w, bounds, n, &in, skip, &err);
            CHECK_MSG(got != NULL, "%s %s: %s", variant, desc, err.msg);
            if (got) {
                size_t nb = sd3_tensor_nbytes(ref);
                double md = sd3_test_maxdiff(ref->data, got->data, nb / 4);
                CHECK_MSG(memcmp(ref->data, got->data, nb) == 0,
                          "%s %s skip=%llx: not bit-identical, max diff %g", variant, desc,
                          (unsigned long long)skip, md);
                printf("%s split %s skip=%llx: bit-identical %s\n", variant, desc,
                       (unsigned long long)skip, memcmp(ref->data, got->data, nb) ? "NO" : "yes");
            }
            sd3_tensor_destroy(&got);
        }
        // The single-call forward equals the chained one.
        sd3_mmdit_t *m = sd3_mmdit_new(be, w, 0, -1, &err);
        sd3_tensor_t *out = sd3_tensor_new(SD3_F32, 4, in.x.shape);
        CHECK(m && out &&
              sd3_mmdit_forward(m, &in.x, in.ts.data, &in.y, &in.ctx, skip, out, &err) == 0);
        if (m && out)
            CHECK(memcmp(ref->data, out->data, sd3_tensor_nbytes(ref)) == 0);
        sd3_tensor_destroy(&out);
        sd3_mmdit_destroy(&m);
        sd3_tensor_destroy(&ref);
    }

    // Bad ranges and chaining out of order are errors, not crashes.
    sd3_err_clear(&err);
    CHECK(sd3_mmdit_new(be, w, 1, 1, &err) == NULL && err.code == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(sd3_mmdit_new(be, w, 0, depth + 1, &err) == NULL && err.code == SD3_EINVAL);
    sd3_err_clear(&err);
    sd3_mmdit_t *tail = sd3_mmdit_new(be, w, 1, -1, &err);
    sd3_mmdit_act_t act = {0};
    CHECK(tail != NULL);
    if (tail) {
        CHECK(sd3_mmdit_embed(tail, &in.x, in.ts.data, &in.y, &in.ctx, &act, &err) ==
              SD3_EINVAL); // not the first range
        sd3_mmdit_t *head = sd3_mmdit_new(be, w, 0, 1, &err);
        CHECK(head && sd3_mmdit_embed(head, &in.x, in.ts.data, &in.y, &in.ctx, &act, &err) == 0);
        sd3_err_clear(&err);
        CHECK(sd3_mmdit_blocks(tail, &act, 0, &err) == SD3_EINVAL); // blocks [0,1) not run
        sd3_err_clear(&err);
        sd3_tensor_t *out = sd3_tensor_new(SD3_F32, 4, in.x.shape);
        CHECK(out && sd3_mmdit_final(tail, &act, out, &err) == SD3_EINVAL);
        sd3_tensor_destroy(&out);
        sd3_mmdit_act_fini(be, &act);
        sd3_mmdit_destroy(&head);
    }
    sd3_mmdit_destroy(&tail);
    sd3_st_destroy(&in.st);
    sd3_weights_destroy(&w);
}

static sd3_tensor_t *
s_forward_model(sd3_backend_t *be, const char *path, const s_inputs_t *in, sd3_err_t *err)
{
    sd3_model_t *model = sd3_model_open(path, err);
    sd3_weights_t *w = model ? sd3_weights_open(model, SD3_COMP_MMDIT, err) : NULL;
    sd3_mmdit_t *m = w ? sd3_mmdit_new(be, w, 0, -1, err) : NULL;
    sd3_tensor_t *out = m ? sd3_tensor_new(SD3_F32, 4, in->x.shape) : NULL;
    if (out && sd3_mmdit_forward(m, &in->x, in->ts.data, &in->y, &in->ctx, 0, out, err) != 0)
        sd3_tensor_destroy(&out);
    sd3_mmdit_destroy(&m);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&model);
    return out;
}

static void
s_check_diffusers(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    s_inputs_t in;
    char single[4096], folder[4096];
    const char *p = sd3_test_data_path("e2e/tiny-sd3-medium-incl-clips-t5.safetensors");
    if (!p)
        return;
    snprintf(single, sizeof single, "%s", p);
    if (!(p = sd3_test_data_path("e2e/tiny-sd3-medium-diffusers")))
        return;
    snprintf(folder, sizeof folder, "%s", p);
    if (!(p = sd3_test_data_path("dit/mmdit-tiny-sd3-medium.safetensors")))
        return;
    CHECK_MSG(s_inputs_open(p, &in, &err) == 0, "%s", err.msg);
    sd3_tensor_t *a = in.st ? s_forward_model(be, single, &in, &err) : NULL;
    CHECK_MSG(a != NULL, "single file: %s", err.msg);
    sd3_err_clear(&err);
    sd3_tensor_t *b = in.st ? s_forward_model(be, folder, &in, &err) : NULL;
    CHECK_MSG(b != NULL, "diffusers folder: %s", err.msg);
    if (a && b) {
        double md = sd3_test_maxdiff(a->data, b->data, (size_t)sd3_tensor_numel(a));
        bool same = memcmp(a->data, b->data, sd3_tensor_nbytes(a)) == 0;
        printf("diffusers vs single file: max diff %g, bit-identical %s\n", md,
               same ? "yes" : "NO");
        CHECK(same);
    }
    sd3_tensor_destroy(&a);
    sd3_tensor_destroy(&b);
    sd3_st_destroy(&in.st);
}

int
main(int argc, char **argv)
{
    sd3_err_t err = {0};
    if (!sd3_test_data_dir())
        return 77;
    sd3_backend_t *be = sd3_backend_new("cpu", 2, &err);
    CHECK_MSG(be != NULL, "%s", err.msg);
    if (!be)
        return 1;
    if (argc > 1 && !strcmp(argv[1], "diffusers")) {
        if (!sd3_test_data_path("e2e/tiny-sd3-medium-diffusers")) {
            sd3_backend_destroy(&be);
            return 77;
        }
        s_check_diffusers(be);
    } else {
        const char *variants[] = {"sd3-medium", "sd3.5-large", "sd3.5-medium"};
        for (size_t i = 0; i < 3; i++)
            s_check_variant(be, variants[i]);
    }
    sd3_backend_destroy(&be);
    return TEST_RESULT();
}
