/*  sd3_embcache - the prompt-embedding cache of the encoder stage
 *
 *  Maps a 128-bit key to the (context, pooled) pair a prompt encodes to, so a repeated
 *  prompt (and the empty negative prompt of every request) skips the text encoders. The key
 *  is XXH3-128 over everything that changes the result: the prompt bytes, the conditioning
 *  options (T5 dropped, zero rows, fixed T5 length, context width), a fingerprint of the
 *  encoder weights and one of the tokenizer files. Bounded in bytes (tensor data plus a
 *  small per-entry overhead); past the bound the least recently used entries are evicted.
 *  Values are copied in and out, so a caller never holds memory the cache may free.
 *  Thread: every method is safe to call from several threads (one mutex); the encoder
 *  stage may serve several pipelines.  */
#pragma once
#include "sd3_cond.h"
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t lo, hi;
} sd3_embkey_t;

typedef struct {
    uint64_t hits, misses, evictions, insertions;
    size_t bytes;     // accounted bytes now held
    size_t max_bytes; // the bound
    size_t entries;
} sd3_embcache_stats_t;

typedef struct sd3_embcache sd3_embcache_t;

// A cache holding at most max_bytes. NULL if out of memory.
sd3_embcache_t *sd3_embcache_new(size_t max_bytes);
void sd3_embcache_destroy(sd3_embcache_t **self_p);

// The key of one prompt (prompt_len bytes, any content) under `opts` (NULL: defaults) and
// the two fingerprints (NULL: zeros).
sd3_embkey_t sd3_embcache_key(const char *prompt, size_t prompt_len, const sd3_cond_opts_t *opts,
                              const uint64_t weights_fp[2], const uint64_t tokenizer_fp[2]);
// Fingerprint of n weight sets: names, dtypes, shapes, stored bytes and 16 samples of 64
// bytes spread over every tensor (a few pages per tensor, not the 10 GB of T5-XXL).
void sd3_embcache_weights_fingerprint(sd3_weights_t *const *weights, size_t n, uint64_t out[2]);
// Fingerprint of whole files (the tokenizer files: a few MB); NULL paths are skipped.
// SD3_EIO when one cannot be read.
int sd3_embcache_files_fingerprint(const char *const *paths, size_t n, uint64_t out[2],
                                   sd3_err_t *err);

// Looks `key` up. On a hit returns 1 and fresh host copies in *context_p / *pooled_p (yours
// to destroy) and marks the entry most recently used; on a miss returns 0 and NULLs them;
// SD3_ENOMEM if a copy fails (counted as a miss).
int sd3_embcache_get(sd3_embcache_t *self, sd3_embkey_t key, sd3_tensor_t **context_p,
                     sd3_tensor_t **pooled_p, sd3_err_t *err);
// Stores copies of host tensors `context` and `pooled` under `key` (replacing an entry with
// the same key), then evicts least recently used entries until the bound holds. A pair
// larger than the whole bound is not stored (returns 0: a cache may always forget).
int sd3_embcache_put(sd3_embcache_t *self, sd3_embkey_t key, const sd3_tensor_t *context,
                     const sd3_tensor_t *pooled, sd3_err_t *err);
bool sd3_embcache_contains(sd3_embcache_t *self, sd3_embkey_t key); // no LRU or counter change
void sd3_embcache_stats(sd3_embcache_t *self, sd3_embcache_stats_t *out);
void sd3_embcache_clear(sd3_embcache_t *self); // drops every entry; counters stay

// Bytes one entry of these tensors is accounted at (data plus overhead).
size_t sd3_embcache_entry_bytes(const sd3_tensor_t *context, const sd3_tensor_t *pooled);
