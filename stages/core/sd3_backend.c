/*  sd3_backend - backend registry (see sd3_backend.h)  */
#include "sd3_backend.h"

#include <string.h>

sd3_backend_t *
sd3_backend_new(const char *name, int n_threads, sd3_err_t *err)
{
    if (!name || !strcmp(name, "cpu"))
        return sd3_cpu_backend_new(n_threads, err);
    if (!strcmp(name, "cuda")) {
#ifdef SD3_HAVE_CUDA
        return sd3_cuda_backend_new(0, err);
#else
        sd3_err_set(err, SD3_ENOTSUP, "backend 'cuda': this build has no CUDA (nvcc was not "
                                      "found at configure time)");
        return NULL;
#endif
    }
    sd3_err_set(err, SD3_EINVAL, "backend '%s': unknown (available: %s)", name,
                sd3_backend_available());
    return NULL;
}

void
sd3_backend_destroy(sd3_backend_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    (*self_p)->ops->destroy(*self_p);
    *self_p = NULL;
}

int
sd3_backend_threads(const sd3_backend_t *self)
{
    return self ? self->n_threads : 0;
}

const char *
sd3_backend_threads_why(const sd3_backend_t *self)
{
    return self ? self->threads_why : "";
}

const char *
sd3_backend_available(void)
{
#ifdef SD3_HAVE_CUDA
    return "cpu,cuda";
#else
    return "cpu";
#endif
}

// ---- shared shape checks -----------------------------------------------------------------

int
sd3_backend_check_same(const char *be_name, const sd3_tensor_t *a, const sd3_tensor_t *b,
                       const char *op, const char *what, sd3_err_t *err)
{
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++)
        same = a->shape[i] == b->shape[i];
    if (same)
        return 0;
    char sa[96], sb[96];
    return sd3_err_set(err, SD3_EINVAL, "%s %s: %s is %s, want %s", be_name, op, what,
                       sd3_shape_str(b->ndim, b->shape, sb, sizeof sb),
                       sd3_shape_str(a->ndim, a->shape, sa, sizeof sa));
}

int
sd3_backend_check_mod(const char *be_name, const char *op, const sd3_tensor_t *x,
                      const sd3_tensor_t *mod, int c1, int c2, sd3_mod_dims_t *d,
                      sd3_err_t *err)
{
    char sx[96], sm[96];
    if (x->ndim != 3 && x->ndim != 2)
        return sd3_err_set(err, SD3_EINVAL, "%s %s: x is %s, want [B, T, C]", be_name, op,
                           sd3_shape_str(x->ndim, x->shape, sx, sizeof sx));
    d->B = x->shape[0];
    d->T = x->ndim == 3 ? x->shape[1] : 1;
    d->C = x->shape[x->ndim - 1];
    int64_t n_chunks = d->C > 0 && mod->ndim == 2 ? mod->shape[1] / d->C : 0;
    if (mod->ndim != 2 || mod->shape[0] != d->B || d->C == 0 || mod->shape[1] % d->C != 0 ||
        c1 < 0 || c1 >= n_chunks || c2 < 0 || c2 >= n_chunks)
        return sd3_err_set(err, SD3_EINVAL,
                           "%s %s: x %s, mod %s, chunks %d,%d: want mod [B, n*C] and chunks < n",
                           be_name, op, sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                           sd3_shape_str(mod->ndim, mod->shape, sm, sizeof sm), c1, c2);
    d->mod_cols = mod->shape[1];
    return 0;
}

int
sd3_backend_check_copy2d(const char *be_name, const sd3_tensor_t *dst, int64_t dst_row,
                         int64_t dst_col, const sd3_tensor_t *src, int64_t src_row,
                         int64_t src_col, int64_t n_rows, int64_t n_cols, int64_t d[3],
                         int64_t s[3], sd3_err_t *err)
{
    sd3_tensor_as3(dst, d);
    sd3_tensor_as3(src, s);
    if (d[0] != s[0] || n_rows < 0 || n_cols < 0 || dst_row < 0 || dst_col < 0 || src_row < 0 ||
        src_col < 0 || dst_row > d[1] - n_rows || dst_col > d[2] - n_cols ||
        src_row > s[1] - n_rows || src_col > s[2] - n_cols)
        return sd3_err_set(err, SD3_EINVAL,
                           "%s copy2d: block %lldx%lld from [%lld,%lld] of [%lld,%lld,%lld] to "
                           "[%lld,%lld] of [%lld,%lld,%lld] is out of bounds or batches differ",
                           be_name, (long long)n_rows, (long long)n_cols, (long long)src_row,
                           (long long)src_col, (long long)s[0], (long long)s[1], (long long)s[2],
                           (long long)dst_row, (long long)dst_col, (long long)d[0], (long long)d[1],
                           (long long)d[2]);
    return 0;
}

int
sd3_backend_check_upsample2x(const char *be_name, const sd3_tensor_t *y, const sd3_tensor_t *x,
                             sd3_err_t *err)
{
    char sx[96], sy[96];
    if (x->ndim != 4 || y->ndim != 4 || y->shape[0] != x->shape[0] || y->shape[1] != x->shape[1] ||
        y->shape[2] != 2 * x->shape[2] || y->shape[3] != 2 * x->shape[3])
        return sd3_err_set(err, SD3_EINVAL,
                           "%s upsample2x: x %s, y %s: want [B, C, H, W] and [B, C, 2H, 2W]",
                           be_name, sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                           sd3_shape_str(y->ndim, y->shape, sy, sizeof sy));
    if (x->data == y->data && sd3_tensor_numel(x) > 0)
        return sd3_err_set(err, SD3_EINVAL, "%s upsample2x: y must not alias x", be_name);
    return 0;
}
