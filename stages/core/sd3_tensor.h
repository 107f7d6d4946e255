/*  sd3_tensor - the one tensor type
 *
 *  Contiguous, row-major, outermost dimension first (the order of MODEL.md, PyTorch and the
 *  golden files). No strides: an op that needs a strided read takes explicit offsets
 *  (see sd3_backend copy2d). A tensor owns its storage, or is a view (`owner` set, or
 *  `owns` false) into memory someone else keeps alive: weights are views into the mmap of
 *  sd3_weights_t and die with it.
 *
 *  Shape legend used across stages (stages/mmdit/sd3_mmdit.h):
 *    B batch   L context tokens   N image tokens   C hidden   Z latent channels = 16  */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "sd3_dtype.h"
#include "sd3_err.h"

#define SD3_MAX_DIM 4

typedef enum { SD3_HOST = 0, SD3_DEVICE = 1 } sd3_where_t;

typedef struct sd3_tensor {
    sd3_dtype_t dtype;
    int ndim;                       // 0..SD3_MAX_DIM (0 = scalar)
    int64_t shape[SD3_MAX_DIM];     // outermost first
    void *data;                     // host or device memory, see `where`
    sd3_where_t where;              // SD3_HOST or SD3_DEVICE
    bool owns;                      // true when destroy frees `data`
    const struct sd3_tensor *owner; // the tensor a view borrows from, if any
    const char *name;               // checkpoint name or label (borrowed), used in messages
} sd3_tensor_t;

// Host tensor, zero-filled, 64-byte aligned. NULL if out of memory or the size overflows.
sd3_tensor_t *sd3_tensor_new(sd3_dtype_t dtype, int ndim, const int64_t *shape);
// Same, with an error naming the tensor.
sd3_tensor_t *sd3_tensor_new_err(sd3_dtype_t dtype, int ndim, const int64_t *shape,
                                 const char *name, sd3_err_t *err);
// A heap view of memory someone else owns.
sd3_tensor_t *sd3_tensor_new_view(sd3_dtype_t dtype, int ndim, const int64_t *shape, void *data);
// Deep host copy (contiguous).
sd3_tensor_t *sd3_tensor_clone(const sd3_tensor_t *src);
void sd3_tensor_destroy(sd3_tensor_t **self_p);

// Initialises a by-value view (no allocation; nothing to destroy).
void sd3_tensor_view_init(sd3_tensor_t *self, sd3_dtype_t dtype, int ndim, const int64_t *shape,
                          void *data);

int64_t sd3_tensor_numel(const sd3_tensor_t *self);
size_t sd3_tensor_nbytes(const sd3_tensor_t *self);
// t as a matrix: cols = the last dim (1 for a scalar), rows = the product of the others.
int64_t sd3_tensor_rows(const sd3_tensor_t *t);
int64_t sd3_tensor_cols(const sd3_tensor_t *t);
// t seen as [B, rows, cols]: 1-D [1, 1, n], 2-D [1, r, c], 3-D as is, 4-D [a*b, c, d].
void sd3_tensor_as3(const sd3_tensor_t *t, int64_t d[3]);
// numel of a shape with overflow and sign checks: 0 and *out, or -1.
int sd3_shape_numel(int ndim, const int64_t *shape, size_t *out);
// Writes "[2,154,1536]" into buf.
const char *sd3_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

// Checks dtype (pass -1 for any float... use SD3_DTYPE_COUNT for "any") and shape (a -1
// entry matches any size). Fails with SD3_EINVAL naming both shapes.
int sd3_tensor_expect(const sd3_tensor_t *t, const char *what, sd3_dtype_t dtype, int ndim,
                      const int64_t *shape, sd3_err_t *err);
// Same element count required; changes the shape in place.
int sd3_tensor_reshape(sd3_tensor_t *self, int ndim, const int64_t *shape, sd3_err_t *err);

static inline float *
sd3_tensor_f32(const sd3_tensor_t *t)
{
    return (float *)t->data;
}
