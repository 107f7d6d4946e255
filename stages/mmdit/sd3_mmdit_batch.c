/*  sd3_mmdit_batch - several requests' activations as one batch, and back
 *
 *    merge  n x {x [b, N, C], ctx [b, L, C], c [b, C]}  ->  x [n*b, N, C], ctx, c; group = b
 *    split  the reverse
 *
 *  Each tensor is seen as [1, rows, cols] and its rows copied with the backend's copy2d, so
 *  the data stays in backend memory (host for cpu, device for cuda). The blocks treat a merged
 *  batch as one (sd3_mmdit_blocks); only linears whose per-request rows are few enough to
 *  take another kernel alone run per request (sd3_mmdit_linear), which keeps every request's
 *  bits those of a separate run.  */
#include "sd3_mmdit.h"
#include "sd3_mmdit_impl.h"

#include <string.h>

// t as [1, numel / cols, cols] (no copy).
static sd3_tensor_t
s_rows(const sd3_tensor_t *t)
{
    const int64_t cols = t->shape[t->ndim - 1];
    const int64_t rows = cols > 0 ? (int64_t)sd3_tensor_numel(t) / cols : 0;
    return sd3_mmdit_view(t, 0, 3, (int64_t[]){1, rows, cols});
}

// dst rows [at, at + rows(src)) = src.
static int
s_put(sd3_backend_t *be, const sd3_tensor_t *dst, int64_t at, const sd3_tensor_t *src,
      sd3_err_t *err)
{
    sd3_tensor_t d = s_rows(dst), s = s_rows(src);
    return be->ops->copy2d(be, &d, at, 0, &s, 0, 0, s.shape[1], s.shape[2], err);
}

// dst = src rows [at, at + rows(dst)).
static int
s_get(sd3_backend_t *be, const sd3_tensor_t *dst, const sd3_tensor_t *src, int64_t at,
      sd3_err_t *err)
{
    sd3_tensor_t d = s_rows(dst), s = s_rows(src);
    return be->ops->copy2d(be, &d, 0, 0, &s, at, 0, d.shape[1], d.shape[2], err);
}

// A fresh tensor like t with its outer dim set to b.
static sd3_tensor_t *
s_like(sd3_backend_t *be, const sd3_tensor_t *t, int64_t b, sd3_err_t *err)
{
    int64_t shape[SD3_MAX_DIM];
    memcpy(shape, t->shape, sizeof shape);
    shape[0] = b;
    return be->ops->tensor_new(be, t->dtype, t->ndim, shape, err);
}

int
sd3_mmdit_act_merge(sd3_backend_t *be, const sd3_mmdit_act_t *parts, int n,
                    sd3_mmdit_act_t *out, sd3_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (n < 1 || !parts[0].x || !parts[0].c)
        return sd3_err_set(err, SD3_EINVAL, "mmdit merge: %d activations, or empty ones", n);
    const sd3_mmdit_act_t *p0 = &parts[0];
    for (int i = 0; i < n; i++) {
        const sd3_mmdit_act_t *p = &parts[i];
        if (p->batch != p0->batch || p->n_ctx != p0->n_ctx || p->grid_h != p0->grid_h ||
            p->grid_w != p0->grid_w || p->next_block != p0->next_block ||
            !p->ctx != !p0->ctx || !p->x || !p->c || p->group != 0)
            return sd3_err_set(err, SD3_EINVAL,
                               "mmdit merge: activation %d (batch %d, L %d, grid %dx%d, block "
                               "%d) differs from the first (batch %d, L %d, grid %dx%d, block %d)",
                               i, p->batch, p->n_ctx, p->grid_h, p->grid_w, p->next_block,
                               p0->batch, p0->n_ctx, p0->grid_h, p0->grid_w, p0->next_block);
    }
    *out = *p0;
    out->x = out->ctx = out->c = NULL;
    out->batch = p0->batch * n;
    out->group = p0->batch;
    const int64_t B = out->batch;
    if (!(out->x = s_like(be, p0->x, B, err)) || !(out->c = s_like(be, p0->c, B, err)) ||
        (p0->ctx && !(out->ctx = s_like(be, p0->ctx, B, err))))
        goto fail;
    for (int i = 0; i < n; i++) {
        const sd3_mmdit_act_t *p = &parts[i];
        const int64_t b0 = (int64_t)i * p0->batch;
        if (s_put(be, out->x, b0 * p->x->shape[1], p->x, err) ||
            s_put(be, out->c, b0, p->c, err) ||
            (p->ctx && s_put(be, out->ctx, b0 * p->ctx->shape[1], p->ctx, err)))
            goto fail;
    }
    return 0;
fail:
    sd3_mmdit_act_fini(be, out);
    return err->code ? err->code : SD3_ENOMEM;
}

int
sd3_mmdit_act_split(sd3_backend_t *be, const sd3_mmdit_act_t *merged, int n,
                    sd3_mmdit_act_t *parts, sd3_err_t *err)
{
    const int b = merged->group;
    for (int i = 0; i < n; i++)
        memset(&parts[i], 0, sizeof parts[i]);
    if (n < 1 || b < 1 || (int64_t)b * n != merged->batch || !merged->x || !merged->c)
        return sd3_err_set(err, SD3_EINVAL, "mmdit split: batch %d is not %d groups of %d",
                           merged->batch, n, b);
    for (int i = 0; i < n; i++) {
        sd3_mmdit_act_t *p = &parts[i];
        *p = *merged;
        p->x = p->ctx = p->c = NULL;
        p->batch = b;
        p->group = 0;
        const int64_t b0 = (int64_t)i * b;
        if (!(p->x = s_like(be, merged->x, b, err)) || !(p->c = s_like(be, merged->c, b, err)) ||
            (merged->ctx && !(p->ctx = s_like(be, merged->ctx, b, err))) ||
            s_get(be, p->x, merged->x, b0 * merged->x->shape[1], err) ||
            s_get(be, p->c, merged->c, b0, err) ||
            (merged->ctx && s_get(be, p->ctx, merged->ctx, b0 * merged->ctx->shape[1], err)))
            goto fail;
    }
    return 0;
fail:
    for (int i = 0; i < n; i++)
        sd3_mmdit_act_fini(be, &parts[i]);
    return err->code ? err->code : SD3_ENOMEM;
}
