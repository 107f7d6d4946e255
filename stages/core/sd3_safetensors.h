/*  sd3_safetensors - one safetensors file: mmapped, validated, read without copies
 *
 *  Format: u64 little-endian header length, a JSON header {name: {dtype, shape,
 *  data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data (offsets are
 *  relative to the end of the header). sd3_st_open validates everything before any use:
 *  header length against the file and a cap, the JSON, dtype names, shape products against
 *  the byte ranges, ranges inside the file, overlapping ranges, duplicate names. A bad file
 *  gets SD3_EFORMAT with a message naming the file and the problem; never a crash.
 *
 *  Tensor views point into the mapping: pages are touched only when a view's data is read,
 *  so loading a layer range reads only that range. The file is mapped read-only (MAP_SHARED,
 *  MADV_RANDOM so the kernel does not read ahead into other tensors).
 *  Thread: an open file is immutable; views may be read from any thread.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "sd3_err.h"
#include "sd3_tensor.h"

#define SD3_ST_MAX_HEADER (100u << 20) // 100 MiB: larger headers are refused
#define SD3_ST_MAX_TENSORS 1000000

typedef struct sd3_st sd3_st_t;

sd3_st_t *sd3_st_open(const char *path, sd3_err_t *err);
void sd3_st_destroy(sd3_st_t **self_p);

const char *sd3_st_path(const sd3_st_t *self);
size_t sd3_st_count(const sd3_st_t *self);
// Name of tensor i (0 <= i < count), in file order of data offsets.
const char *sd3_st_name(const sd3_st_t *self, size_t i);
// Fills *view (by value, nothing to free) with tensor `name`; view->name points into self.
// SD3_ENOTFOUND if absent.
int sd3_st_get(const sd3_st_t *self, const char *name, sd3_tensor_t *view, sd3_err_t *err);
bool sd3_st_has(const sd3_st_t *self, const char *name);
// A "__metadata__" string value, or NULL.
const char *sd3_st_metadata(const sd3_st_t *self, const char *key);
// Number of metadata entries and the key of entry i.
size_t sd3_st_metadata_count(const sd3_st_t *self);
const char *sd3_st_metadata_key(const sd3_st_t *self, size_t i);

/*  sd3_st_writer - writes a safetensors file in a streaming way, so real-size checkpoints
 *  (tens of GB) are written without holding them in memory:
 *    w = sd3_st_writer_new(path, err);
 *    sd3_st_writer_meta(w, "format", "pt", err);
 *    sd3_st_writer_declare(w, "a.weight", SD3_BF16, 2, (int64_t[]){64, 32}, err);  // all first
 *    sd3_st_writer_begin(w, err);                  // writes the header
 *    sd3_st_writer_write(w, data, nbytes, err);    // the data, in declaration order, any chunking
 *    sd3_st_writer_finish(&w, err);                // checks every byte was written, closes
 *  Header keys are sorted as the reference writes them; data follows declaration order. */
typedef struct sd3_st_writer sd3_st_writer_t;

sd3_st_writer_t *sd3_st_writer_new(const char *path, sd3_err_t *err);
int sd3_st_writer_meta(sd3_st_writer_t *self, const char *key, const char *value, sd3_err_t *err);
int sd3_st_writer_declare(sd3_st_writer_t *self, const char *name, sd3_dtype_t dtype, int ndim,
                          const int64_t *shape, sd3_err_t *err);
int sd3_st_writer_begin(sd3_st_writer_t *self, sd3_err_t *err);
int sd3_st_writer_write(sd3_st_writer_t *self, const void *data, size_t nbytes, sd3_err_t *err);
// Finishes and destroys (also on failure); NULLs *self_p.
int sd3_st_writer_finish(sd3_st_writer_t **self_p, sd3_err_t *err);
// Abandons the file (removes it).
void sd3_st_writer_abort(sd3_st_writer_t **self_p);
// Convenience: writes a whole file from host tensors (small files: tests, golden outputs).
int sd3_st_write_tensors(const char *path, const sd3_tensor_t *const *tensors, size_t n,
                         const char *const *meta_kv, size_t n_meta, sd3_err_t *err);
