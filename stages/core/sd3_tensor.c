/*  sd3_tensor - the one tensor type (see sd3_tensor.h)  */
#include "sd3_tensor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
sd3_shape_numel(int ndim, const int64_t *shape, size_t *out)
{
    size_t n = 1;
    if (ndim < 0 || ndim > SD3_MAX_DIM)
        return -1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || sd3_size_mul(n, (size_t)shape[i], &n) != 0)
            return -1;
    }
    *out = n;
    return 0;
}

const char *
sd3_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap)
{
    size_t len = 0;
    if (cap == 0)
        return buf;
    buf[0] = '\0';
    len += (size_t)snprintf(buf + len, cap - len, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, i ? ",%lld" : "%lld", (long long)shape[i]);
    if (len < cap)
        snprintf(buf + len, cap - len, "]");
    return buf;
}

void
sd3_tensor_view_init(sd3_tensor_t *self, sd3_dtype_t dtype, int ndim, const int64_t *shape,
                     void *data)
{
    memset(self, 0, sizeof *self);
    self->dtype = dtype;
    self->ndim = ndim;
    for (int i = 0; i < ndim && i < SD3_MAX_DIM; i++)
        self->shape[i] = shape[i];
    self->data = data;
    self->where = SD3_HOST;
}

sd3_tensor_t *
sd3_tensor_new_err(sd3_dtype_t dtype, int ndim, const int64_t *shape, const char *name,
                   sd3_err_t *err)
{
    size_t n, bytes;
    char sbuf[96];
    if (sd3_shape_numel(ndim, shape, &n) != 0 ||
        sd3_size_mul(n, sd3_dtype_size(dtype), &bytes) != 0 || bytes > ((size_t)1 << 40)) {
        sd3_err_set(err, SD3_ENOMEM, "tensor '%s' %s %s: size overflows", name ? name : "?",
                    sd3_dtype_name(dtype), sd3_shape_str(ndim, shape, sbuf, sizeof sbuf));
        return NULL;
    }
    sd3_tensor_t *self = calloc(1, sizeof *self);
    if (!self)
        goto oom;
    sd3_tensor_view_init(self, dtype, ndim, shape, NULL);
    size_t alloc = (bytes + 63) & ~(size_t)63;
    self->data = aligned_alloc(64, alloc ? alloc : 64);
    if (!self->data) {
        free(self);
        goto oom;
    }
    memset(self->data, 0, alloc ? alloc : 64);
    self->owns = true;
    self->name = name;
    return self;
oom:
    sd3_err_set(err, SD3_ENOMEM, "tensor '%s' %s: out of memory (%zu bytes)", name ? name : "?",
                sd3_shape_str(ndim, shape, sbuf, sizeof sbuf), bytes);
    return NULL;
}

sd3_tensor_t *
sd3_tensor_new(sd3_dtype_t dtype, int ndim, const int64_t *shape)
{
    return sd3_tensor_new_err(dtype, ndim, shape, NULL, NULL);
}

sd3_tensor_t *
sd3_tensor_new_view(sd3_dtype_t dtype, int ndim, const int64_t *shape, void *data)
{
    sd3_tensor_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    sd3_tensor_view_init(self, dtype, ndim, shape, data);
    return self;
}

sd3_tensor_t *
sd3_tensor_clone(const sd3_tensor_t *src)
{
    sd3_tensor_t *self = sd3_tensor_new(src->dtype, src->ndim, src->shape);
    if (self) {
        memcpy(self->data, src->data, sd3_tensor_nbytes(src));
        self->name = src->name;
    }
    return self;
}

void
sd3_tensor_destroy(sd3_tensor_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_tensor_t *self = *self_p;
    if (self->owns && self->where == SD3_HOST)
        free(self->data);
    free(self);
    *self_p = NULL;
}

int64_t
sd3_tensor_rows(const sd3_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i + 1 < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

int64_t
sd3_tensor_cols(const sd3_tensor_t *t)
{
    return t->ndim ? t->shape[t->ndim - 1] : 1;
}

void
sd3_tensor_as3(const sd3_tensor_t *t, int64_t d[3])
{
    if (t->ndim == 1) {
        d[0] = 1, d[1] = 1, d[2] = t->shape[0];
    } else if (t->ndim == 2) {
        d[0] = 1, d[1] = t->shape[0], d[2] = t->shape[1];
    } else if (t->ndim == 3) {
        d[0] = t->shape[0], d[1] = t->shape[1], d[2] = t->shape[2];
    } else {
        d[0] = t->shape[0] * t->shape[1], d[1] = t->shape[2], d[2] = t->shape[3];
    }
}

int64_t
sd3_tensor_numel(const sd3_tensor_t *self)
{
    // A zero dim first: [2^27, 2^27, 671, 0] passes sd3_shape_numel (0 elements) but its
    // running product would overflow int64 before the 0 (found by fuzz_codec).
    for (int i = 0; i < self->ndim; i++)
        if (self->shape[i] == 0)
            return 0;
    int64_t n = 1;
    for (int i = 0; i < self->ndim; i++)
        n *= self->shape[i];
    return n;
}

size_t
sd3_tensor_nbytes(const sd3_tensor_t *self)
{
    return (size_t)sd3_tensor_numel(self) * sd3_dtype_size(self->dtype);
}

int
sd3_tensor_expect(const sd3_tensor_t *t, const char *what, sd3_dtype_t dtype, int ndim,
                  const int64_t *shape, sd3_err_t *err)
{
    char got[96], want[96];
    if (!t)
        return sd3_err_set(err, SD3_EINVAL, "%s: missing", what);
    bool ok = t->ndim == ndim && (dtype == SD3_DTYPE_COUNT || t->dtype == dtype);
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && t->shape[i] != shape[i])
            ok = false;
    if (ok)
        return 0;
    return sd3_err_set(err, SD3_EINVAL, "%s: is %s %s, want %s %s", what,
                       sd3_dtype_name(t->dtype), sd3_shape_str(t->ndim, t->shape, got, sizeof got),
                       dtype == SD3_DTYPE_COUNT ? "any" : sd3_dtype_name(dtype),
                       sd3_shape_str(ndim, shape, want, sizeof want));
}

int
sd3_tensor_reshape(sd3_tensor_t *self, int ndim, const int64_t *shape, sd3_err_t *err)
{
    size_t n;
    char a[96], b[96];
    if (sd3_shape_numel(ndim, shape, &n) != 0 || (int64_t)n != sd3_tensor_numel(self))
        return sd3_err_set(err, SD3_EINVAL, "reshape %s to %s: element counts differ",
                           sd3_shape_str(self->ndim, self->shape, a, sizeof a),
                           sd3_shape_str(ndim, shape, b, sizeof b));
    self->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        self->shape[i] = shape[i];
    return 0;
}
