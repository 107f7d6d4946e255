/*  test_mmdit_batch - merged requests give the bits of separate ones
 *
 *  A stage merges the steps of several requests of one shape into one batch
 *  (sd3_mmdit_act_merge -> sd3_mmdit_blocks -> sd3_mmdit_act_split). Each request's x, ctx
 *  and c after the blocks must equal, bit for bit, what the same blocks give that request
 *  alone. Checked on the three tiny architectures (SD3.5-medium has attn2, SD3.5-large QK
 *  norm) and on a 512-wide model whose linears have K past OpenBLAS's K block (so the
 *  K-chunked sgemm path is exercised), at grids of 1x1 (every linear in the few-rows path for
 *  one request), 2x2 and 4x4 tokens, merging 2 and 3 requests. Then again at precision bf16,
 *  where the backend is batch invariant and the merged batch shares every linear.  */
#include "sd3_backend.h"
#include "sd3_mmdit.h"
#include "sd3_test.h"
#include "sd3_weights.h"
#include "sd3_weights_write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_MAXN 3

static sd3_tensor_t *
s_rand(int ndim, const int64_t *shape, unsigned long long seed)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    if (t) {
        float *f = t->data;
        for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
            f[i] = sd3_test_randf(&seed) * 2.0f - 1.0f;
    }
    return t;
}

// Embeds request `r` (its own random inputs) into *act.
static int
s_embed(sd3_mmdit_t *m, int side_tokens, int r, sd3_mmdit_act_t *act, sd3_err_t *err)
{
    const sd3_mmdit_config_t *cfg = sd3_mmdit_config(m);
    const int64_t h = side_tokens * 2, L = 7;
    unsigned long long s = 1000u + (unsigned long long)r * 17u;
    sd3_tensor_t *lat = s_rand(4, (int64_t[]){2, cfg->in_channels, h, h}, s);
    sd3_tensor_t *y = s_rand(2, (int64_t[]){2, cfg->adm_in}, s + 1);
    sd3_tensor_t *ctx = s_rand(3, (int64_t[]){2, L, cfg->context_in}, s + 2);
    float ts[2] = {1000.0f - 90.0f * (float)r, 1000.0f - 90.0f * (float)r};
    int rc = lat && y && ctx ? sd3_mmdit_embed(m, lat, ts, y, ctx, act, err)
                             : sd3_err_set(err, SD3_ENOMEM, "out of memory");
    sd3_tensor_destroy(&lat);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&ctx);
    return rc;
}

static bool
s_same(const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    if (!a || !b)
        return a == b;
    return sd3_tensor_nbytes(a) == sd3_tensor_nbytes(b) &&
           memcmp(a->data, b->data, sd3_tensor_nbytes(a)) == 0;
}

// n requests at grid side x side: alone vs merged.
static void
s_check(sd3_backend_t *be, sd3_mmdit_t *m, const char *what, int side, int n)
{
    sd3_err_t err = {0};
    sd3_mmdit_act_t alone[S_MAXN] = {0}, in[S_MAXN] = {0}, out[S_MAXN] = {0}, merged = {0};
    for (int r = 0; r < n; r++) {
        CHECK_MSG(s_embed(m, side, r, &alone[r], &err) == 0, "%s", err.msg);
        CHECK_MSG(sd3_mmdit_blocks(m, &alone[r], 0, &err) == 0, "%s", err.msg);
        CHECK_MSG(s_embed(m, side, r, &in[r], &err) == 0, "%s", err.msg);
    }
    CHECK_MSG(sd3_mmdit_act_merge(be, in, n, &merged, &err) == 0, "%s", err.msg);
    CHECK(merged.batch == 2 * n && merged.group == 2);
    CHECK_MSG(sd3_mmdit_blocks(m, &merged, 0, &err) == 0, "%s", err.msg);
    CHECK_MSG(sd3_mmdit_act_split(be, &merged, n, out, &err) == 0, "%s", err.msg);
    for (int r = 0; r < n; r++) {
        CHECK_MSG(out[r].batch == 2 && out[r].group == 0 &&
                      out[r].next_block == alone[r].next_block,
                  "%s side %d: request %d shape", what, side, r);
        CHECK_MSG(s_same(out[r].x, alone[r].x), "%s side %d n %d: request %d x differs by %g",
                  what, side, n, r,
                  out[r].x && alone[r].x
                      ? sd3_test_maxdiff(out[r].x->data, alone[r].x->data,
                                         (size_t)sd3_tensor_numel(alone[r].x))
                      : -1.0);
        CHECK_MSG(s_same(out[r].ctx, alone[r].ctx), "%s side %d n %d: request %d ctx differs",
                  what, side, n, r);
        CHECK_MSG(s_same(out[r].c, alone[r].c), "%s side %d n %d: request %d c differs", what,
                  side, n, r);
    }
    // The requests really differ (a merge that copied one into all would pass above).
    if (n > 1 && out[0].x && out[1].x)
        CHECK(!s_same(out[0].x, out[1].x));
    for (int r = 0; r < n; r++) {
        sd3_mmdit_act_fini(be, &alone[r]);
        sd3_mmdit_act_fini(be, &in[r]);
        sd3_mmdit_act_fini(be, &out[r]);
    }
    sd3_mmdit_act_fini(be, &merged);
}

static void
s_check_model(sd3_backend_t *be, const sd3_arch_t *arch, const char *path, int last)
{
    sd3_err_t err = {0};
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        opts.want[c] = c == SD3_COMP_MMDIT;
    opts.dtype = SD3_BF16;
    CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 7, path, &err) == 0, "%s", err.msg);
    sd3_model_t *model = sd3_model_open(path, &err);
    sd3_weights_t *w = model ? sd3_weights_open(model, SD3_COMP_MMDIT, &err) : NULL;
    sd3_mmdit_t *m = w ? sd3_mmdit_new(be, w, 0, last ? last : arch->mmdit.depth, &err) : NULL;
    CHECK_MSG(m != NULL, "%s: %s", arch->name, err.msg);
    if (m) {
        for (int side = 1; side <= 4; side *= 2)
            for (int n = 2; n <= S_MAXN; n++)
                s_check(be, m, arch->name, side, n);
    }
    sd3_mmdit_destroy(&m);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&model);
    unlink(path);
}

static void
s_check_errors(sd3_backend_t *be, const sd3_arch_t *arch, const char *path)
{
    sd3_err_t err = {0};
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        opts.want[c] = c == SD3_COMP_MMDIT;
    CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 7, path, &err) == 0, "%s", err.msg);
    sd3_model_t *model = sd3_model_open(path, &err);
    sd3_weights_t *w = model ? sd3_weights_open(model, SD3_COMP_MMDIT, &err) : NULL;
    sd3_mmdit_t *m = w ? sd3_mmdit_new(be, w, 0, arch->mmdit.depth, &err) : NULL;
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        sd3_mmdit_act_t a[2] = {0}, merged = {0}, parts[3];
        CHECK(s_embed(m, 1, 0, &a[0], &err) == 0 && s_embed(m, 2, 1, &a[1], &err) == 0);
        err = (sd3_err_t){0};
        CHECK(sd3_mmdit_act_merge(be, a, 2, &merged, &err) == SD3_EINVAL);
        CHECK_MSG(strstr(err.msg, "activation 1") && strstr(err.msg, "grid 2x2"), "%s",
                  err.msg);
        CHECK(merged.x == NULL && merged.batch == 0);
        err = (sd3_err_t){0};
        CHECK(sd3_mmdit_act_split(be, &a[0], 3, parts, &err) == SD3_EINVAL);
        CHECK_MSG(strstr(err.msg, "not 3 groups"), "%s", err.msg);
        // blocks refuse a batch that is not whole groups
        a[0].group = 3;
        err = (sd3_err_t){0};
        CHECK(sd3_mmdit_blocks(m, &a[0], 0, &err) == SD3_EINVAL);
        CHECK_MSG(strstr(err.msg, "whole groups"), "%s", err.msg);
        a[0].group = 0;
        sd3_mmdit_act_fini(be, &a[0]);
        sd3_mmdit_act_fini(be, &a[1]);
    }
    sd3_mmdit_destroy(&m);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&model);
    unlink(path);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be = sd3_backend_new("cpu", 2, &err);
    CHECK_MSG(be != NULL, "%s", err.msg);
    if (!be)
        return TEST_RESULT();
    char path[512];
    snprintf(path, sizeof path, "%s/batch.safetensors", sd3_test_tmpdir());
    const char *tiny[] = {"tiny-sd3-medium", "tiny-sd3.5-medium", "tiny-sd3.5-large"};
    for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++)
        s_check_model(be, sd3_arch_find(tiny[i]), path, 0);
    // 512 wide (8 blocks, the first 2 run): K = 512 and 2048 exceed the sgemm K block.
    sd3_arch_t wide = *sd3_arch_find("tiny-sd3.5-large");
    snprintf(wide.name, sizeof wide.name, "wide-512");
    wide.mmdit.depth = wide.mmdit.heads = 8;
    wide.mmdit.hidden = 512;
    s_check_model(be, &wide, path, 2);
    s_check_errors(be, sd3_arch_find("tiny-sd3-medium"), path);
    // Precision bf16: the linears are batch invariant (fixed padded tiles), so a merged batch
    // runs each linear once over all requests; the bits must still be each request's own.
    if (sd3_backend_set_precision(be, "bf16", &err) == 0) {
        CHECK(be->linear_batch_invariant);
        for (size_t i = 0; i < sizeof tiny / sizeof *tiny; i++)
            s_check_model(be, sd3_arch_find(tiny[i]), path, 0);
        s_check_model(be, &wide, path, 2);
    } else {
        fprintf(stderr, "bf16 not checked: %s\n", err.msg);
    }
    sd3_backend_destroy(&be);
    return TEST_RESULT();
}
