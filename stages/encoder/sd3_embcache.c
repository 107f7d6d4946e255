/*  sd3_embcache - the prompt-embedding cache of the encoder stage (see sd3_embcache.h)
 *
 *  A chained hash table over the 128-bit keys plus a doubly linked LRU list (head = most
 *  recent). Both live under one mutex; copies in and out happen under it too (a 2.5 MB
 *  memcpy is far cheaper than the encode it saves and keeps the lifetime rules trivial).  */
#include "sd3_embcache.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY // XXH3_state_t on the stack
#include <xxhash.h>

#define S_ENTRY_OVERHEAD 256 // accounted per entry besides tensor data (struct, headers)
#define S_KEY_TAG        "sd3d-embcache-v1"

typedef struct s_entry {
    sd3_embkey_t key;
    sd3_tensor_t *context, *pooled;
    size_t bytes;
    struct s_entry *chain;       // next in the hash bucket
    struct s_entry *prev, *next; // LRU list
} s_entry_t;

struct sd3_embcache {
    pthread_mutex_t mutex;
    s_entry_t **buckets;
    size_t n_buckets; // power of two
    s_entry_t *head, *tail;
    sd3_embcache_stats_t stats;
};

sd3_embcache_t *
sd3_embcache_new(size_t max_bytes)
{
    sd3_embcache_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->n_buckets = 64;
    self->buckets = calloc(self->n_buckets, sizeof *self->buckets);
    if (!self->buckets || pthread_mutex_init(&self->mutex, NULL) != 0) {
        free(self->buckets);
        free(self);
        return NULL;
    }
    self->stats.max_bytes = max_bytes;
    return self;
}

static void
s_entry_free(s_entry_t *e)
{
    sd3_tensor_destroy(&e->context);
    sd3_tensor_destroy(&e->pooled);
    free(e);
}

static void
s_clear_locked(sd3_embcache_t *self)
{
    s_entry_t *e = self->head;
    while (e) {
        s_entry_t *next = e->next;
        s_entry_free(e);
        e = next;
    }
    memset(self->buckets, 0, self->n_buckets * sizeof *self->buckets);
    self->head = self->tail = NULL;
    self->stats.bytes = 0;
    self->stats.entries = 0;
}

void
sd3_embcache_destroy(sd3_embcache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_embcache_t *self = *self_p;
    s_clear_locked(self);
    pthread_mutex_destroy(&self->mutex);
    free(self->buckets);
    free(self);
    *self_p = NULL;
}

// -- keys and fingerprints -----------------------------------------------------------------

static void
s_hash_i64(XXH3_state_t *st, int64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) // little-endian, so keys are the same on every host
        b[i] = (uint8_t)((uint64_t)v >> (8 * i));
    XXH3_128bits_update(st, b, sizeof b);
}

static void
s_hash_bytes(XXH3_state_t *st, const void *data, size_t n)
{
    s_hash_i64(st, (int64_t)n); // length-prefixed: ("ab","c") differs from ("a","bc")
    if (n)
        XXH3_128bits_update(st, data, n);
}

static void
s_digest(XXH3_state_t *st, uint64_t out[2])
{
    XXH128_hash_t h = XXH3_128bits_digest(st);
    out[0] = h.low64;
    out[1] = h.high64;
}

sd3_embkey_t
sd3_embcache_key(const char *prompt, size_t prompt_len, const sd3_cond_opts_t *opts,
                 const uint64_t weights_fp[2], const uint64_t tokenizer_fp[2])
{
    const sd3_cond_opts_t dflt = SD3_COND_OPTS_INIT;
    XXH3_state_t st;
    uint64_t out[2];
    if (!opts)
        opts = &dflt;
    XXH3_128bits_reset(&st);
    s_hash_bytes(&st, S_KEY_TAG, sizeof S_KEY_TAG - 1);
    s_hash_bytes(&st, prompt, prompt ? prompt_len : 0);
    // Every option that changes the result; zero rows only matter when T5 is dropped, but
    // hashing them always is simpler and only costs a needless miss.
    s_hash_i64(&st, opts->no_t5);
    s_hash_i64(&st, opts->zero_t5_rows);
    s_hash_i64(&st, opts->t5_length);
    s_hash_i64(&st, opts->context_width);
    for (int i = 0; i < 2; i++) {
        s_hash_i64(&st, weights_fp ? (int64_t)weights_fp[i] : 0);
        s_hash_i64(&st, tokenizer_fp ? (int64_t)tokenizer_fp[i] : 0);
    }
    s_digest(&st, out);
    return (sd3_embkey_t){.lo = out[0], .hi = out[1]};
}

void
sd3_embcache_weights_fingerprint(sd3_weights_t *const *weights, size_t n, uint64_t out[2])
{
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    s_hash_bytes(&st, "weights", 7);
    for (size_t w = 0; w < n; w++) {
        if (!weights[w]) {
            s_hash_i64(&st, -1);
            continue;
        }
        size_t count = sd3_weights_count(weights[w]);
        s_hash_i64(&st, (int64_t)count);
        s_hash_i64(&st, (int64_t)sd3_weights_bytes(weights[w]));
        for (size_t i = 0; i < count; i++) {
            const char *name = sd3_weights_name(weights[w], i);
            const sd3_tensor_t *t = name ? sd3_weights_get(weights[w], name) : NULL;
            s_hash_bytes(&st, name, name ? strlen(name) : 0);
            if (!t)
                continue;
            s_hash_i64(&st, t->dtype);
            s_hash_i64(&st, t->ndim);
            for (int d = 0; d < t->ndim; d++)
                s_hash_i64(&st, t->shape[d]);
            // 16 samples of 64 bytes, evenly spaced, first and last included.
            size_t nbytes = sd3_tensor_nbytes(t), chunk = 64, samples = 16;
            const uint8_t *data = t->data;
            if (!data || t->where != SD3_HOST)
                continue;
            if (nbytes <= chunk * samples) {
                XXH3_128bits_update(&st, data, nbytes);
                continue;
            }
            for (size_t k = 0; k < samples; k++) {
                size_t off = (nbytes - chunk) * k / (samples - 1); // k = 15: the last 64
                XXH3_128bits_update(&st, data + off, chunk);
            }
        }
    }
    s_digest(&st, out);
}

int
sd3_embcache_files_fingerprint(const char *const *paths, size_t n, uint64_t out[2], sd3_err_t *err)
{
    XXH3_state_t st;
    char buf[1 << 16];
    XXH3_128bits_reset(&st);
    s_hash_bytes(&st, "files", 5);
    for (size_t i = 0; i < n; i++) {
        if (!paths[i])
            continue;
        FILE *f = fopen(paths[i], "rb");
        if (!f)
            return sd3_err_set(err, SD3_EIO, "%s: cannot open for the cache fingerprint", paths[i]);
        size_t got, total = 0;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
            XXH3_128bits_update(&st, buf, got);
            total += got;
        }
        int bad = ferror(f);
        fclose(f);
        if (bad)
            return sd3_err_set(err, SD3_EIO, "%s: read error", paths[i]);
        s_hash_i64(&st, (int64_t)total);
    }
    s_digest(&st, out);
    return 0;
}

// -- table ---------------------------------------------------------------------------------

static size_t
s_slot(const sd3_embcache_t *self, sd3_embkey_t key)
{
    return (size_t)(key.lo ^ (key.hi >> 7)) & (self->n_buckets - 1);
}

static s_entry_t *
s_find(sd3_embcache_t *self, sd3_embkey_t key)
{
    for (s_entry_t *e = self->buckets[s_slot(self, key)]; e; e = e->chain)
        if (e->key.lo == key.lo && e->key.hi == key.hi)
            return e;
    return NULL;
}

static void
s_lru_unlink(sd3_embcache_t *self, s_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        self->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        self->tail = e->prev;
    e->prev = e->next = NULL;
}

static void
s_lru_push_front(sd3_embcache_t *self, s_entry_t *e)
{
    e->prev = NULL;
    e->next = self->head;
    if (self->head)
        self->head->prev = e;
    self->head = e;
    if (!self->tail)
        self->tail = e;
}

static void
s_remove(sd3_embcache_t *self, s_entry_t *e)
{
    s_entry_t **pp = &self->buckets[s_slot(self, e->key)];
    while (*pp && *pp != e)
        pp = &(*pp)->chain;
    if (*pp)
        *pp = e->chain;
    s_lru_unlink(self, e);
    self->stats.bytes -= e->bytes;
    self->stats.entries--;
    s_entry_free(e);
}

static void
s_grow(sd3_embcache_t *self)
{
    size_t n = self->n_buckets * 2;
    s_entry_t **b = calloc(n, sizeof *b);
    if (!b)
        return; // longer chains, still correct
    for (s_entry_t *e = self->head; e; e = e->next) {
        size_t slot = (size_t)(e->key.lo ^ (e->key.hi >> 7)) & (n - 1);
        e->chain = b[slot];
        b[slot] = e;
    }
    free(self->buckets);
    self->buckets = b;
    self->n_buckets = n;
}

size_t
sd3_embcache_entry_bytes(const sd3_tensor_t *context, const sd3_tensor_t *pooled)
{
    return S_ENTRY_OVERHEAD + (context ? sd3_tensor_nbytes(context) : 0) +
           (pooled ? sd3_tensor_nbytes(pooled) : 0);
}

int
sd3_embcache_get(sd3_embcache_t *self, sd3_embkey_t key, sd3_tensor_t **context_p,
                 sd3_tensor_t **pooled_p, sd3_err_t *err)
{
    int rc = 0;
    *context_p = *pooled_p = NULL;
    pthread_mutex_lock(&self->mutex);
    s_entry_t *e = s_find(self, key);
    if (!e) {
        self->stats.misses++;
        goto done;
    }
    *context_p = sd3_tensor_clone(e->context);
    *pooled_p = sd3_tensor_clone(e->pooled);
    if (!*context_p || !*pooled_p) {
        sd3_tensor_destroy(context_p);
        sd3_tensor_destroy(pooled_p);
        self->stats.misses++;
        rc = sd3_err_set(err, SD3_ENOMEM, "embedding cache: out of memory copying an entry");
        goto done;
    }
    s_lru_unlink(self, e);
    s_lru_push_front(self, e);
    self->stats.hits++;
    rc = 1;
done:
    pthread_mutex_unlock(&self->mutex);
    return rc;
}

int
sd3_embcache_put(sd3_embcache_t *self, sd3_embkey_t key, const sd3_tensor_t *context,
                 const sd3_tensor_t *pooled, sd3_err_t *err)
{
    if (!context || !pooled || context->where != SD3_HOST || pooled->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "embedding cache: put needs two host tensors");
    size_t bytes = sd3_embcache_entry_bytes(context, pooled);
    pthread_mutex_lock(&self->mutex);
    s_entry_t *old = s_find(self, key);
    if (old)
        s_remove(self, old);
    if (bytes > self->stats.max_bytes) {
        pthread_mutex_unlock(&self->mutex);
        return 0;
    }
    pthread_mutex_unlock(&self->mutex);

    // Copy outside the lock; insert under it.
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e || !(e->context = sd3_tensor_clone(context)) ||
        !(e->pooled = sd3_tensor_clone(pooled))) {
        if (e)
            s_entry_free(e);
        return sd3_err_set(err, SD3_ENOMEM, "embedding cache: out of memory (%zu bytes)", bytes);
    }
    e->key = key;
    e->bytes = bytes;

    pthread_mutex_lock(&self->mutex);
    if ((old = s_find(self, key)) != NULL) // another thread stored the same key meanwhile
        s_remove(self, old);
    while (self->tail && self->stats.bytes + bytes > self->stats.max_bytes) {
        s_remove(self, self->tail);
        self->stats.evictions++;
    }
    if (self->stats.entries + 1 > self->n_buckets * 2)
        s_grow(self);
    size_t slot = s_slot(self, key);
    e->chain = self->buckets[slot];
    self->buckets[slot] = e;
    s_lru_push_front(self, e);
    self->stats.bytes += bytes;
    self->stats.entries++;
    self->stats.insertions++;
    pthread_mutex_unlock(&self->mutex);
    return 0;
}

bool
sd3_embcache_contains(sd3_embcache_t *self, sd3_embkey_t key)
{
    pthread_mutex_lock(&self->mutex);
    bool found = s_find(self, key) != NULL;
    pthread_mutex_unlock(&self->mutex);
    return found;
}

void
sd3_embcache_stats(sd3_embcache_t *self, sd3_embcache_stats_t *out)
{
    pthread_mutex_lock(&self->mutex);
    *out = self->stats;
    pthread_mutex_unlock(&self->mutex);
}

void
sd3_embcache_clear(sd3_embcache_t *self)
{
    pthread_mutex_lock(&self->mutex);
    s_clear_locked(self);
    pthread_mutex_unlock(&self->mutex);
}
