/*  test_copy2d - CUDA copy2d against the CPU backend (exact: a copy moves bf16 values)
 *
 *  The MMDiT's uses: split qkv [B, T, 3C] into q, k, v; join [ctx; x] along rows into
 *  [B, L+N, C]; slice a block at odd offsets; 2-D (B = 1) and 4-D tensors; a block moved
 *  inside one tensor with overlap (the CPU memmoves); out-of-bounds refused.  */
#include <stdio.h>

#include "sd3_gpu_test.h"

typedef struct {
    int dst_ndim, src_ndim;
    int64_t dst_shape[4], src_shape[4];
    int64_t dst_row, dst_col, src_row, src_col, n_rows, n_cols;
    bool same; // copy inside one tensor (dst = src)
} s_case_t;

static void
s_run(sd3_gpu_test_t *gt, const s_case_t *c)
{
    sd3_err_t err = {0};
    char what[160], sd[64], ss[64];
    sd3_tensor_t *src = sd3_gpu_test_rand(gt, c->src_ndim, c->src_shape, 4.0f);
    sd3_tensor_t *dst = c->same ? src : sd3_gpu_test_rand(gt, c->dst_ndim, c->dst_shape, 4.0f);
    sd3_tensor_t *ref = sd3_tensor_clone(dst);
    sd3_tensor_t *ds = sd3_gpu_test_dev(gt, src, SD3_BF16);
    sd3_tensor_t *dd = c->same ? ds : sd3_gpu_test_dev(gt, dst, SD3_BF16);
    snprintf(what, sizeof what, "copy2d %lldx%lld %s[%lld,%lld] -> %s[%lld,%lld]%s",
             (long long)c->n_rows, (long long)c->n_cols,
             sd3_shape_str(c->src_ndim, c->src_shape, ss, sizeof ss), (long long)c->src_row,
             (long long)c->src_col, sd3_shape_str(c->dst_ndim, c->dst_shape, sd, sizeof sd),
             (long long)c->dst_row, (long long)c->dst_col, c->same ? " (same tensor)" : "");
    // the reference: the CPU op on a host copy (for `same`, src and dst are that copy)
    CHECK(gt->cpu->ops->copy2d(gt->cpu, ref, c->dst_row, c->dst_col, c->same ? ref : src,
                               c->src_row, c->src_col, c->n_rows, c->n_cols, &err) == 0);
    if (sd3_gpu_test_ok(what,
                        gt->cuda->ops->copy2d(gt->cuda, dd, c->dst_row, c->dst_col, ds, c->src_row,
                                              c->src_col, c->n_rows, c->n_cols, &err),
                        &err) == 0) {
        sd3_tensor_t *got = sd3_gpu_test_host(gt, dd);
        sd3_gpu_test_same_bits(what, got, ref); // untouched elements must stay too
        sd3_tensor_destroy(&got);
    }
    if (!c->same) {
        sd3_gpu_test_free(gt, &dd);
        sd3_tensor_destroy(&dst);
    }
    sd3_gpu_test_free(gt, &ds);
    sd3_tensor_destroy(&src);
    sd3_tensor_destroy(&ref);
}

int
main(void)
{
    sd3_gpu_test_t gt;
    int rc = sd3_gpu_test_setup(&gt, "test_copy2d");
    if (rc)
        return rc;
    const s_case_t cases[] = {
        // k out of qkv: [2, 154, 3*64] cols [64, 128) -> [2, 154, 64]
        {3, 3, {2, 154, 64}, {2, 154, 192}, 0, 0, 0, 64, 154, 64, false},
        // join: x [2, 1024, 96] into rows [77, 1101) of [2, 1101, 96]
        {3, 3, {2, 1101, 96}, {2, 1024, 96}, 77, 0, 0, 0, 1024, 96, false},
        // odd block, odd offsets, B = 1 as 2-D
        {2, 2, {33, 65}, {17, 40}, 5, 7, 3, 1, 13, 31, false},
        // 4-D seen as [a*b, c, d]
        {4, 4, {2, 3, 9, 11}, {2, 3, 8, 8}, 1, 2, 0, 0, 8, 8, false},
        // overlap inside one tensor: rows shift down by 3
        {3, 3, {2, 40, 24}, {2, 40, 24}, 3, 0, 0, 0, 30, 24, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        s_run(&gt, &cases[i]);
    // out of bounds: refused, nothing written
    {
        sd3_err_t err = {0};
        int64_t s[3] = {1, 4, 4};
        sd3_tensor_t *h = sd3_gpu_test_rand(&gt, 3, s, 1.0f);
        sd3_tensor_t *d = sd3_gpu_test_dev(&gt, h, SD3_BF16);
        CHECK(gt.cuda->ops->copy2d(gt.cuda, d, 2, 0, d, 0, 0, 3, 4, &err) == SD3_EINVAL);
        fprintf(stderr, "out of bounds: %s\n", err.msg);
        sd3_gpu_test_free(&gt, &d);
        sd3_tensor_destroy(&h);
    }
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
