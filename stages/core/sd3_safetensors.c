/*  sd3_safetensors - one safetensors file: mmapped, validated, read without copies
 *
 *  Reader: the 8-byte length and the JSON header are checked completely before the object
 *  exists (see sd3_safetensors.h for the list); afterwards every view is known to lie
 *  inside the mapping. The header is parsed with cJSON and copied into a flat table; the
 *  cJSON tree is freed before sd3_st_open returns.
 *  Writer: declarations first (offsets follow declaration order), then one header with the
 *  keys sorted and spaces up to a multiple of 8 (as the reference writer), then the bytes.
 *  It writes `<path>.partial` and renames it on finish, so a failed or interrupted write
 *  never leaves a plausible-looking file under the final name.  */
#include "sd3_safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_SAFE_INT 9007199254740992.0 // 2^53: larger JSON numbers are not exact doubles

typedef struct {
    char *name;
    sd3_dtype_t dtype;
    int ndim;
    int64_t shape[SD3_MAX_DIM];
    uint64_t begin, end; // relative to the data area
} s_entry_t;

struct sd3_st {
    char *path;
    uint8_t *map;
    size_t map_size;
    const uint8_t *data; // start of the data area
    uint64_t data_size;
    s_entry_t *entries; // sorted by data offset
    size_t n;
    const s_entry_t **by_name; // entries sorted by name
    char **meta_keys;
    char **meta_vals; // sorted by key
    size_t n_meta;
};

// ---- small helpers ---------------------------------------------------------------------

static char *
s_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static uint64_t
s_read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

// A JSON number that is an exact non-negative integer <= 2^53.
static bool
s_json_uint(const cJSON *item, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > S_MAX_SAFE_INT || d != (double)(uint64_t)d)
        return false;
    *out = (uint64_t)d;
    return true;
}

static int
s_cmp_entry_offset(const void *a, const void *b)
{
    const s_entry_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int
s_cmp_entry_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const s_entry_t *const *)a)->name, (*(const s_entry_t *const *)b)->name);
}

static int
s_cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// ---- reader ----------------------------------------------------------------------------

static int
s_parse_tensor(sd3_st_t *self, const cJSON *item, s_entry_t *e, sd3_err_t *err)
{
    const char *path = self->path;
    char sbuf[128];
    if (!cJSON_IsObject(item))
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' is not a JSON object", path, e->name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dtype))
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' has no dtype string", path, e->name);
    if (sd3_dtype_from_name(dtype->valuestring, &e->dtype) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' has unknown dtype '%.32s'", path,
                           e->name, dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' has no shape array", path, e->name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > SD3_MAX_DIM)
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' has %d dims, at most %d supported",
                           path, e->name, ndim, SD3_MAX_DIM);
    e->ndim = ndim;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t v;
        if (!s_json_uint(dim, &v))
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s: tensor '%s' has a shape entry that is not a non-negative "
                               "integer (negative, fractional, huge or not a number)",
                               path, e->name);
        e->shape[d++] = (int64_t)v;
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: tensor '%s' has no data_offsets [begin, end] pair", path, e->name);
    if (!s_json_uint(cJSON_GetArrayItem(offs, 0), &e->begin) ||
        !s_json_uint(cJSON_GetArrayItem(offs, 1), &e->end))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: tensor '%s' data_offsets are not non-negative integers", path,
                           e->name);
    if (e->begin > e->end)
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' data_offsets begin %llu > end %llu",
                           path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end > self->data_size)
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: tensor '%s' data_offsets [%llu,%llu) past the end of the data "
                           "(%llu bytes)",
                           path, e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                           (unsigned long long)self->data_size);
    size_t numel, nbytes;
    if (sd3_shape_numel(e->ndim, e->shape, &numel) != 0 ||
        sd3_size_mul(numel, sd3_dtype_size(e->dtype), &nbytes) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' shape %s: size overflows", path,
                           e->name, sd3_shape_str(e->ndim, e->shape, sbuf, sizeof sbuf));
    if ((uint64_t)nbytes != e->end - e->begin)
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: tensor '%s' %s %s needs %zu bytes but data_offsets span %llu", path,
                           e->name, sd3_dtype_name(e->dtype),
                           sd3_shape_str(e->ndim, e->shape, sbuf, sizeof sbuf), nbytes,
                           (unsigned long long)(e->end - e->begin));
    return 0;
}

static int
s_parse_metadata(sd3_st_t *self, const cJSON *meta, sd3_err_t *err)
{
    if (cJSON_IsNull(meta))
        return 0;
    if (!cJSON_IsObject(meta))
        return sd3_err_set(err, SD3_EFORMAT, "%s: __metadata__ is not a JSON object", self->path);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    if (n == 0)
        return 0;
    self->meta_keys = calloc(n, sizeof(char *));
    self->meta_vals = calloc(n, sizeof(char *));
    if (!self->meta_keys || !self->meta_vals)
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory for metadata", self->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta)
    {
        if (!cJSON_IsString(kv))
            return sd3_err_set(err, SD3_EFORMAT, "%s: __metadata__ value '%.64s' is not a string",
                               self->path, kv->string ? kv->string : "?");
        // keys and values travel together: store "key\0value" pairs in one allocation
        size_t kl = strlen(kv->string), vl = strlen(kv->valuestring);
        char *pair = malloc(kl + vl + 2);
        if (!pair)
            return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory for metadata", self->path);
        memcpy(pair, kv->string, kl + 1);
        memcpy(pair + kl + 1, kv->valuestring, vl + 1);
        self->meta_keys[self->n_meta++] = pair;
    }
    if (self->n_meta)
        qsort(self->meta_keys, self->n_meta, sizeof(char *), s_cmp_str_ptr);
    for (size_t i = 0; i < self->n_meta; i++) {
        self->meta_vals[i] = self->meta_keys[i] + strlen(self->meta_keys[i]) + 1;
        if (i && !strcmp(self->meta_keys[i], self->meta_keys[i - 1]))
            return sd3_err_set(err, SD3_EFORMAT, "%s: __metadata__ key '%.64s' appears twice",
                               self->path, self->meta_keys[i]);
    }
    return 0;
}

static int
s_parse_header(sd3_st_t *self, const char *json, size_t len, sd3_err_t *err)
{
    int rc = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t pos = (at && at >= json && at <= json + len) ? (size_t)(at - json) : 0;
        return sd3_err_set(err, SD3_EFORMAT, "%s: header is not valid JSON (near byte %zu)",
                           self->path, pos);
    }
    for (const char *p = end; p && p < json + len; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "%s: header has bytes after the JSON object (byte %zu)", self->path,
                             (size_t)(p - json));
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: header is not a JSON object", self->path);
        goto done;
    }
    size_t n_items = (size_t)cJSON_GetArraySize(root);
    if (n_items > SD3_ST_MAX_TENSORS + 1) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: header lists %zu tensors, more than the cap %d",
                         self->path, n_items, SD3_ST_MAX_TENSORS);
        goto done;
    }
    self->entries = calloc(n_items ? n_items : 1, sizeof *self->entries);
    self->by_name = calloc(n_items ? n_items : 1, sizeof *self->by_name);
    if (!self->entries || !self->by_name) {
        rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory for %zu tensors", self->path, n_items);
        goto done;
    }
    const cJSON *item;
    bool seen_meta = false;
    cJSON_ArrayForEach(item, root)
    {
        if (!strcmp(item->string, "__metadata__")) {
            if (seen_meta) {
                rc = sd3_err_set(err, SD3_EFORMAT, "%s: __metadata__ appears twice", self->path);
                goto done;
            }
            seen_meta = true;
            if ((rc = s_parse_metadata(self, item, err)) != 0)
                goto done;
            continue;
        }
        s_entry_t *e = &self->entries[self->n];
        if (!(e->name = s_strdup(item->string))) {
            rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
            goto done;
        }
        self->n++;
        if (e->name[0] == '\0') {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: a tensor has an empty name", self->path);
            goto done;
        }
        if ((rc = s_parse_tensor(self, item, e, err)) != 0)
            goto done;
    }
    // names: unique (checked over the offset-sorted table the object keeps)
    qsort(self->entries, self->n, sizeof *self->entries, s_cmp_entry_offset);
    for (size_t i = 0; i < self->n; i++)
        self->by_name[i] = &self->entries[i];
    qsort(self->by_name, self->n, sizeof *self->by_name, s_cmp_entry_ptr_name);
    for (size_t i = 1; i < self->n; i++)
        if (!strcmp(self->by_name[i]->name, self->by_name[i - 1]->name)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: tensor '%s' appears twice in the header",
                             self->path, self->by_name[i]->name);
            goto done;
        }
    // ranges: no two overlap. Sorted by offset, each non-empty range must start at or after
    // the furthest end seen so far (empty ranges overlap nothing).
    const s_entry_t *far = NULL;
    for (size_t i = 0; i < self->n; i++) {
        const s_entry_t *b = &self->entries[i];
        if (b->begin == b->end)
            continue;
        if (far && b->begin < far->end) {
            rc = sd3_err_set(
                err, SD3_EFORMAT, "%s: tensors '%s' [%llu,%llu) and '%s' [%llu,%llu) overlap",
                self->path, far->name, (unsigned long long)far->begin, (unsigned long long)far->end,
                b->name, (unsigned long long)b->begin, (unsigned long long)b->end);
            goto done;
        }
        if (!far || b->end > far->end)
            far = b;
    }
done:
    cJSON_Delete(root);
    return rc;
}

sd3_st_t *
sd3_st_open(const char *path, sd3_err_t *err)
{
    sd3_st_t *self = calloc(1, sizeof *self);
    int fd = -1;
    if (!self || !(self->path = s_strdup(path))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: cannot open: %s", path,
                    strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        sd3_err_set(err, SD3_EIO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    uint8_t lenbuf[8];
    if (size < 8) {
        sd3_err_set(err, SD3_EFORMAT,
                    "%s: file is %llu bytes, too short for the 8-byte header length (truncated)",
                    path, (unsigned long long)size);
        goto fail;
    }
    if (pread(fd, lenbuf, 8, 0) != 8) {
        sd3_err_set(err, SD3_EIO, "%s: cannot read the header length", path);
        goto fail;
    }
    uint64_t hlen = s_read_le64(lenbuf);
    if (hlen > SD3_ST_MAX_HEADER) {
        sd3_err_set(err, SD3_EFORMAT, "%s: header length %llu exceeds the cap of %u bytes", path,
                    (unsigned long long)hlen, (unsigned)SD3_ST_MAX_HEADER);
        goto fail;
    }
    if (hlen > size - 8) {
        sd3_err_set(err, SD3_EFORMAT,
                    "%s: header length %llu exceeds the file (%llu bytes; truncated?)", path,
                    (unsigned long long)hlen, (unsigned long long)size);
        goto fail;
    }
    if (hlen < 2) {
        sd3_err_set(err, SD3_EFORMAT, "%s: header length %llu is too short for a JSON object", path,
                    (unsigned long long)hlen);
        goto fail;
    }
    if (size > (uint64_t)SIZE_MAX) {
        sd3_err_set(err, SD3_ENOMEM, "%s: file too large to map", path);
        goto fail;
    }
    self->map_size = (size_t)size;
    self->map = mmap(NULL, self->map_size, PROT_READ, MAP_SHARED, fd, 0);
    if (self->map == MAP_FAILED) {
        self->map = NULL;
        sd3_err_set(err, SD3_EIO, "%s: mmap failed: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    // Load only what is asked for: no read-ahead into the neighbours of a touched tensor.
    madvise(self->map, self->map_size, MADV_RANDOM);
    self->data = self->map + 8 + hlen;
    self->data_size = size - 8 - hlen;
    if (s_parse_header(self, (const char *)self->map + 8, (size_t)hlen, err) != 0)
        goto fail;
    return self;
fail:
    if (fd >= 0)
        close(fd);
    sd3_st_destroy(&self);
    return NULL;
}

void
sd3_st_destroy(sd3_st_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_st_t *self = *self_p;
    if (self->map)
        munmap(self->map, self->map_size);
    for (size_t i = 0; i < self->n; i++)
        free(self->entries[i].name);
    free(self->entries);
    free(self->by_name);
    for (size_t i = 0; i < self->n_meta; i++)
        free(self->meta_keys[i]); // holds the value too
    free(self->meta_keys);
    free(self->meta_vals);
    free(self->path);
    free(self);
    *self_p = NULL;
}

const char *
sd3_st_path(const sd3_st_t *self)
{
    return self->path;
}

size_t
sd3_st_count(const sd3_st_t *self)
{
    return self->n;
}

const char *
sd3_st_name(const sd3_st_t *self, size_t i)
{
    return i < self->n ? self->entries[i].name : NULL;
}

static const s_entry_t *
s_find(const sd3_st_t *self, const char *name)
{
    size_t lo = 0, hi = self->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const s_entry_t *e = self->by_name[mid];
        int c = strcmp(name, e->name);
        if (c == 0)
            return e;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

int
sd3_st_get(const sd3_st_t *self, const char *name, sd3_tensor_t *view, sd3_err_t *err)
{
    const s_entry_t *e = s_find(self, name);
    if (!e)
        return sd3_err_set(err, SD3_ENOTFOUND, "%s: no tensor '%s'", self->path, name);
    sd3_tensor_view_init(view, e->dtype, e->ndim, e->shape, (void *)(self->data + e->begin));
    view->name = e->name;
    return 0;
}

bool
sd3_st_has(const sd3_st_t *self, const char *name)
{
    return s_find(self, name) != NULL;
}

const char *
sd3_st_metadata(const sd3_st_t *self, const char *key)
{
    size_t lo = 0, hi = self->n_meta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, self->meta_keys[mid]);
        if (c == 0)
            return self->meta_vals[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

size_t
sd3_st_metadata_count(const sd3_st_t *self)
{
    return self->n_meta;
}

const char *
sd3_st_metadata_key(const sd3_st_t *self, size_t i)
{
    return i < self->n_meta ? self->meta_keys[i] : NULL;
}

// ---- writer ----------------------------------------------------------------------------

typedef struct {
    char *name;
    sd3_dtype_t dtype;
    int ndim;
    int64_t shape[SD3_MAX_DIM];
    uint64_t begin, end;
} s_decl_t;

struct sd3_st_writer {
    char *path;
    char *tmp_path; // <path>.partial until finish
    FILE *file;
    s_decl_t *decls;
    size_t n, cap;
    char **meta; // "key\0value"
    size_t n_meta, cap_meta;
    uint64_t total, written;
    bool begun;
};

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} s_sbuf_t;

static void
s_sbuf_put(s_sbuf_t *s, const char *p, size_t n)
{
    if (s->oom)
        return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *b = realloc(s->buf, cap);
        if (!b) {
            s->oom = true;
            return;
        }
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = '\0';
}

static void
s_sbuf_str(s_sbuf_t *s, const char *p)
{
    s_sbuf_put(s, p, strlen(p));
}

// A JSON string literal: quotes, backslash and control characters escaped; UTF-8 kept.
static void
s_sbuf_json(s_sbuf_t *s, const char *p)
{
    s_sbuf_put(s, "\"", 1);
    for (; *p; p++) {
        unsigned char c = (unsigned char)*p;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            s_sbuf_put(s, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            s_sbuf_put(s, esc, 6);
        } else {
            s_sbuf_put(s, (const char *)&c, 1);
        }
    }
    s_sbuf_put(s, "\"", 1);
}

sd3_st_writer_t *
sd3_st_writer_new(const char *path, sd3_err_t *err)
{
    sd3_st_writer_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = s_strdup(path)) ||
        !(self->tmp_path = malloc(strlen(path) + sizeof ".partial"))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    sprintf(self->tmp_path, "%s.partial", path);
    self->file = fopen(self->tmp_path, "wb");
    if (!self->file) {
        sd3_err_set(err, SD3_EIO, "%s: cannot create: %s", self->tmp_path, strerror(errno));
        goto fail;
    }
    setvbuf(self->file, NULL, _IOFBF, 1 << 20);
    return self;
fail:
    if (self) {
        free(self->path);
        free(self->tmp_path);
        free(self);
    }
    return NULL;
}

int
sd3_st_writer_meta(sd3_st_writer_t *self, const char *key, const char *value, sd3_err_t *err)
{
    if (self->begun)
        return sd3_err_set(err, SD3_EINVAL, "%s: metadata '%s' after the header was written",
                           self->path, key);
    for (size_t i = 0; i < self->n_meta; i++)
        if (!strcmp(self->meta[i], key))
            return sd3_err_set(err, SD3_EINVAL, "%s: metadata '%s' given twice", self->path, key);
    if (self->n_meta == self->cap_meta) {
        size_t cap = self->cap_meta ? self->cap_meta * 2 : 8;
        char **m = realloc(self->meta, cap * sizeof *m);
        if (!m)
            return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
        self->meta = m;
        self->cap_meta = cap;
    }
    size_t kl = strlen(key), vl = strlen(value);
    char *pair = malloc(kl + vl + 2);
    if (!pair)
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
    memcpy(pair, key, kl + 1);
    memcpy(pair + kl + 1, value, vl + 1);
    self->meta[self->n_meta++] = pair;
    return 0;
}

int
sd3_st_writer_declare(sd3_st_writer_t *self, const char *name, sd3_dtype_t dtype, int ndim,
                      const int64_t *shape, sd3_err_t *err)
{
    size_t numel, nbytes;
    char sbuf[96];
    if (self->begun)
        return sd3_err_set(err, SD3_EINVAL, "%s: tensor '%s' declared after the header", self->path,
                           name);
    if (!name[0] || !strcmp(name, "__metadata__"))
        return sd3_err_set(err, SD3_EINVAL, "%s: '%s' is not a valid tensor name", self->path,
                           name);
    if (ndim < 0 || ndim > SD3_MAX_DIM || sd3_dtype_size(dtype) == 0 ||
        sd3_shape_numel(ndim, shape, &numel) != 0 ||
        sd3_size_mul(numel, sd3_dtype_size(dtype), &nbytes) != 0)
        return sd3_err_set(err, SD3_EINVAL, "%s: tensor '%s' has a bad dtype or shape %s",
                           self->path, name,
                           sd3_shape_str(ndim < 0   ? 0
                                         : ndim > 4 ? 4
                                                    : ndim,
                                         shape, sbuf, sizeof sbuf));
    if (self->n == self->cap) {
        size_t cap = self->cap ? self->cap * 2 : 64;
        s_decl_t *d = realloc(self->decls, cap * sizeof *d);
        if (!d)
            return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
        self->decls = d;
        self->cap = cap;
    }
    s_decl_t *d = &self->decls[self->n];
    memset(d, 0, sizeof *d);
    if (!(d->name = s_strdup(name)))
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
    d->dtype = dtype;
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        d->shape[i] = shape[i];
    d->begin = self->total;
    d->end = self->total + nbytes;
    self->total = d->end;
    self->n++;
    return 0;
}

static int
s_cmp_decl_name(const void *a, const void *b)
{
    return strcmp((*(s_decl_t *const *)a)->name, (*(s_decl_t *const *)b)->name);
}

int
sd3_st_writer_begin(sd3_st_writer_t *self, sd3_err_t *err)
{
    int rc = 0;
    s_sbuf_t s = {0};
    s_decl_t **sorted = NULL;
    if (self->begun)
        return sd3_err_set(err, SD3_EINVAL, "%s: header already written", self->path);
    sorted = malloc((self->n ? self->n : 1) * sizeof *sorted);
    if (!sorted)
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->path);
    for (size_t i = 0; i < self->n; i++)
        sorted[i] = &self->decls[i];
    qsort(sorted, self->n, sizeof *sorted, s_cmp_decl_name);
    for (size_t i = 1; i < self->n; i++)
        if (!strcmp(sorted[i]->name, sorted[i - 1]->name)) {
            rc = sd3_err_set(err, SD3_EINVAL, "%s: tensor '%s' declared twice", self->path,
                             sorted[i]->name);
            goto done;
        }
    if (self->n_meta)
        qsort(self->meta, self->n_meta, sizeof(char *), s_cmp_str_ptr);
    s_sbuf_str(&s, "{");
    bool first = true;
    if (self->n_meta) {
        s_sbuf_str(&s, "\"__metadata__\":{");
        for (size_t i = 0; i < self->n_meta; i++) {
            if (i)
                s_sbuf_str(&s, ",");
            s_sbuf_json(&s, self->meta[i]);
            s_sbuf_str(&s, ":");
            s_sbuf_json(&s, self->meta[i] + strlen(self->meta[i]) + 1);
        }
        s_sbuf_str(&s, "}");
        first = false;
    }
    for (size_t i = 0; i < self->n; i++) {
        const s_decl_t *d = sorted[i];
        char num[64];
        if (!first)
            s_sbuf_str(&s, ",");
        first = false;
        s_sbuf_json(&s, d->name);
        s_sbuf_str(&s, ":{\"dtype\":");
        s_sbuf_json(&s, sd3_dtype_name(d->dtype));
        s_sbuf_str(&s, ",\"shape\":[");
        for (int k = 0; k < d->ndim; k++) {
            snprintf(num, sizeof num, k ? ",%lld" : "%lld", (long long)d->shape[k]);
            s_sbuf_str(&s, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)d->begin,
                 (unsigned long long)d->end);
        s_sbuf_str(&s, num);
    }
    s_sbuf_str(&s, "}");
    while (!s.oom && s.len % 8 != 0)
        s_sbuf_str(&s, " ");
    if (s.oom) {
        rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory for the header", self->path);
        goto done;
    }
    if (s.len > SD3_ST_MAX_HEADER) {
        rc = sd3_err_set(err, SD3_EINVAL, "%s: header of %zu bytes exceeds the cap", self->path,
                         s.len);
        goto done;
    }
    uint8_t lenbuf[8];
    for (int i = 0; i < 8; i++)
        lenbuf[i] = (uint8_t)((uint64_t)s.len >> (8 * i));
    if (fwrite(lenbuf, 1, 8, self->file) != 8 || fwrite(s.buf, 1, s.len, self->file) != s.len) {
        rc = sd3_err_set(err, SD3_EIO, "%s: write failed: %s", self->tmp_path, strerror(errno));
        goto done;
    }
    self->begun = true;
done:
    free(s.buf);
    free(sorted);
    return rc;
}

int
sd3_st_writer_write(sd3_st_writer_t *self, const void *data, size_t nbytes, sd3_err_t *err)
{
    if (!self->begun)
        return sd3_err_set(err, SD3_EINVAL, "%s: data written before the header", self->path);
    if (nbytes > self->total - self->written)
        return sd3_err_set(err, SD3_EINVAL,
                           "%s: %zu bytes written past the declared %llu bytes of data", self->path,
                           nbytes, (unsigned long long)self->total);
    if (nbytes && fwrite(data, 1, nbytes, self->file) != nbytes)
        return sd3_err_set(err, SD3_EIO, "%s: write failed: %s", self->tmp_path, strerror(errno));
    self->written += nbytes;
    return 0;
}

static void
s_writer_free(sd3_st_writer_t *self)
{
    for (size_t i = 0; i < self->n; i++)
        free(self->decls[i].name);
    free(self->decls);
    for (size_t i = 0; i < self->n_meta; i++)
        free(self->meta[i]);
    free(self->meta);
    free(self->path);
    free(self->tmp_path);
    free(self);
}

int
sd3_st_writer_finish(sd3_st_writer_t **self_p, sd3_err_t *err)
{
    int rc = 0;
    sd3_st_writer_t *self = *self_p;
    if (!self)
        return sd3_err_set(err, SD3_EINVAL, "safetensors writer: finished twice");
    if (!self->begun && (rc = sd3_st_writer_begin(self, err)) != 0)
        goto fail;
    if (self->written != self->total) {
        rc = sd3_err_set(err, SD3_EINVAL, "%s: %llu of %llu data bytes written", self->path,
                         (unsigned long long)self->written, (unsigned long long)self->total);
        goto fail;
    }
    FILE *f = self->file;
    self->file = NULL;
    if (fclose(f) != 0) {
        rc = sd3_err_set(err, SD3_EIO, "%s: close failed: %s", self->tmp_path, strerror(errno));
        goto fail;
    }
    if (rename(self->tmp_path, self->path) != 0) {
        rc = sd3_err_set(err, SD3_EIO, "%s: rename failed: %s", self->path, strerror(errno));
        goto fail;
    }
    s_writer_free(self);
    *self_p = NULL;
    return 0;
fail:
    sd3_st_writer_abort(self_p);
    return rc;
}

void
sd3_st_writer_abort(sd3_st_writer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_st_writer_t *self = *self_p;
    if (self->file)
        fclose(self->file);
    unlink(self->tmp_path);
    s_writer_free(self);
    *self_p = NULL;
}

int
sd3_st_write_tensors(const char *path, const sd3_tensor_t *const *tensors, size_t n,
                     const char *const *meta_kv, size_t n_meta, sd3_err_t *err)
{
    sd3_st_writer_t *w = sd3_st_writer_new(path, err);
    if (!w)
        return err ? err->code : SD3_EIO;
    for (size_t i = 0; i < n_meta; i++)
        if (sd3_st_writer_meta(w, meta_kv[2 * i], meta_kv[2 * i + 1], err) != 0)
            goto fail;
    for (size_t i = 0; i < n; i++) {
        const sd3_tensor_t *t = tensors[i];
        if (t->where != SD3_HOST) {
            sd3_err_set(err, SD3_EINVAL, "%s: tensor '%s' is not in host memory", path,
                        t->name ? t->name : "?");
            goto fail;
        }
        if (sd3_st_writer_declare(w, t->name ? t->name : "", t->dtype, t->ndim, t->shape, err))
            goto fail;
    }
    if (sd3_st_writer_begin(w, err) != 0)
        goto fail;
    for (size_t i = 0; i < n; i++)
        if (sd3_st_writer_write(w, tensors[i]->data, sd3_tensor_nbytes(tensors[i]), err) != 0)
            goto fail;
    return sd3_st_writer_finish(&w, err);
fail:
    sd3_st_writer_abort(&w);
    return err ? err->code : SD3_EINVAL;
}
