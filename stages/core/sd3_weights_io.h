/*  sd3_weights_io - streaming access to a component's canonical tensors (internal)
 *
 *  For sd3_weights_write.c (mkmodel, convert) and tests: reads any element range of a
 *  canonical tensor, applying the layout transform (qkv join, half swap) on the fly, without
 *  building and caching the whole tensor, so converting a 16 GB checkpoint needs memory for
 *  one chunk only. Not thread-safe per sd3_weights_t (same rule as sd3_weights.h).  */
#pragma once
#include "sd3_dtype.h"
#include "sd3_err.h"
#include "sd3_weights.h"

#include <stddef.h>

// Stored element type of a canonical tensor (the parts of a joined qkv share it), or
// SD3_DTYPE_COUNT when absent.
sd3_dtype_t sd3_weights_dtype(const sd3_weights_t *self, const char *name);
// Copies elements [off, off + n) of canonical tensor `name` (row-major, canonical shape)
// into dst as `dtype` (exact copy when it is the stored dtype, else widened to f32 and
// narrowed with sd3_dtype_from_f32). SD3_ENOTFOUND / SD3_EINVAL (range) on failure.
int sd3_weights_read(const sd3_weights_t *self, const char *name, size_t off, size_t n,
                     sd3_dtype_t dtype, void *dst, sd3_err_t *err);
// Drops the mapped pages of tensor `name` from this process (they stay in the page cache):
// after a streaming read, so resident memory does not grow with the checkpoint.
void sd3_weights_release(const sd3_weights_t *self, const char *name);
// The file a canonical tensor comes from (its first part), or NULL.
const char *sd3_weights_file(const sd3_weights_t *self, const char *name);
