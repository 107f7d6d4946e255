/*  sd3_codec - one tensor to one wire frame and back (see sd3_codec.h)  */
#include "sd3_codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

static const char *const s_codec_names[SD3_CODEC_COUNT] = {
    [SD3_CODEC_RAW] = "raw",
    [SD3_CODEC_ZSTD] = "zstd",
    [SD3_CODEC_SHUFFLE_ZSTD] = "shuffle+zstd",
};

// Byte-plane (de)shuffle with the element size as a constant, so the inner loop unrolls.
#define S_SHUFFLE(size)                                                                            \
    do {                                                                                           \
        for (size_t i = 0; i < n; i++)                                                             \
            for (size_t b = 0; b < (size); b++)                                                    \
                out[b * n + i] = in[i * (size) + b];                                               \
    } while (0)
#define S_UNSHUFFLE(size)                                                                          \
    do {                                                                                           \
        for (size_t i = 0; i < n; i++)                                                             \
            for (size_t b = 0; b < (size); b++)                                                    \
                out[i * (size) + b] = in[b * n + i];                                               \
    } while (0)

static bool
s_narrowing(sd3_dtype_t dtype, sd3_dtype_t wire_dtype)
{
    return dtype == SD3_F32 && (wire_dtype == SD3_BF16 || wire_dtype == SD3_F16);
}

// An owned host tensor whose name is stored in the same allocation, so it keeps its name
// after it leaves the message it came in. sd3_tensor_destroy() frees data and the struct
// (one free each), which is what this allocates.
static sd3_tensor_t *
s_tensor_new_named(const sd3_codec_desc_t *desc, size_t nbytes, sd3_err_t *err)
{
    sd3_tensor_t *t = calloc(1, sizeof *t + SD3_CODEC_NAME_MAX);
    if (!t)
        goto oom;
    sd3_tensor_view_init(t, desc->dtype, desc->ndim, desc->shape, NULL);
    char *name = (char *)(t + 1);
    memcpy(name, desc->name, SD3_CODEC_NAME_MAX - 1);
    t->name = name;
    size_t alloc = (nbytes + 63) & ~(size_t)63;
    t->data = aligned_alloc(64, alloc ? alloc : 64);
    if (!t->data) {
        free(t);
        goto oom;
    }
    t->owns = true;
    return t;
oom:
    sd3_err_set(err, SD3_ENOMEM, "tensor '%s': out of memory for %zu bytes", desc->name, nbytes);
    return NULL;
}

const char *
sd3_codec_name(sd3_codec_t codec)
{
    return (unsigned)codec < SD3_CODEC_COUNT ? s_codec_names[codec] : "?";
}

int
sd3_codec_from_name(const char *name, sd3_codec_t *out)
{
    for (int i = 0; i < SD3_CODEC_COUNT; i++)
        if (!strcmp(name, s_codec_names[i])) {
            *out = (sd3_codec_t)i;
            return 0;
        }
    if (!strcmp(name, "shuffle")) {
        *out = SD3_CODEC_SHUFFLE_ZSTD;
        return 0;
    }
    return -1;
}

void
sd3_codec_shuffle(const void *src, void *dst, size_t n, size_t size)
{
    const uint8_t *in = src;
    uint8_t *out = dst;
    switch (size) {
    case 2:
        S_SHUFFLE(2);
        break;
    case 4:
        S_SHUFFLE(4);
        break;
    case 8:
        S_SHUFFLE(8);
        break;
    default:
        S_SHUFFLE(size);
        break;
    }
}

void
sd3_codec_unshuffle(const void *src, void *dst, size_t n, size_t size)
{
    const uint8_t *in = src;
    uint8_t *out = dst;
    switch (size) {
    case 2:
        S_UNSHUFFLE(2);
        break;
    case 4:
        S_UNSHUFFLE(4);
        break;
    case 8:
        S_UNSHUFFLE(8);
        break;
    default:
        S_UNSHUFFLE(size);
        break;
    }
}

int
sd3_codec_encode(const sd3_tensor_t *t, const sd3_codec_opts_t *opts, bool copy,
                 sd3_codec_desc_t *desc, void **frame_p, size_t *frame_len, sd3_err_t *err)
{
    static const sd3_codec_opts_t dflt = {0};
    void *narrow = NULL, *shuffled = NULL, *frame = NULL;
    const char *name = t->name ? t->name : "";
    size_t numel, raw_bytes;
    if (!opts)
        opts = &dflt;
    *frame_p = NULL;
    *frame_len = 0;
    memset(desc, 0, sizeof *desc);
    if (strlen(name) >= SD3_CODEC_NAME_MAX)
        return sd3_err_set(err, SD3_EINVAL, "tensor '%.40s...': name longer than %d bytes", name,
                           SD3_CODEC_NAME_MAX - 1);
    if (t->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL,
                           "tensor '%s': on the device; copy it to the host "
                           "before sending",
                           name);
    if ((unsigned)t->dtype >= SD3_DTYPE_COUNT || (unsigned)opts->codec >= SD3_CODEC_COUNT)
        return sd3_err_set(err, SD3_EINVAL, "tensor '%s': dtype %d or codec %d unknown", name,
                           (int)t->dtype, (int)opts->codec);
    if (sd3_shape_numel(t->ndim, t->shape, &numel) != 0)
        return sd3_err_set(err, SD3_EINVAL, "tensor '%s': bad shape (ndim %d)", name, t->ndim);
    sd3_dtype_t wire_dtype = s_narrowing(t->dtype, opts->wire_dtype) ? opts->wire_dtype : t->dtype;
    size_t esize = sd3_dtype_size(wire_dtype);
    if (sd3_size_mul(numel, esize, &raw_bytes) != 0)
        return sd3_err_set(err, SD3_EINVAL, "tensor '%s': size overflows", name);

    snprintf(desc->name, sizeof desc->name, "%s", name);
    desc->dtype = t->dtype;
    desc->wire_dtype = wire_dtype;
    desc->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++)
        desc->shape[i] = t->shape[i];
    desc->codec = opts->codec;
    desc->raw_bytes = raw_bytes;

    const void *raw = t->data;
    if (wire_dtype != t->dtype) {
        if (!(narrow = malloc(raw_bytes ? raw_bytes : 1)))
            goto oom;
        sd3_dtype_from_f32(wire_dtype, t->data, narrow, numel);
        raw = narrow;
    }
    desc->checksum = XXH3_64bits(raw, raw_bytes);

    if (opts->codec == SD3_CODEC_RAW) {
        if (narrow) {
            frame = narrow;
            narrow = NULL;
        } else if (copy) {
            if (!(frame = malloc(raw_bytes ? raw_bytes : 1)))
                goto oom;
            memcpy(frame, raw, raw_bytes);
        } else {
            *frame_p = t->data; // borrowed: the caller checks *frame_p == t->data
            *frame_len = raw_bytes;
            desc->wire_bytes = raw_bytes;
            return 0;
        }
        *frame_len = raw_bytes;
    } else {
        if (opts->codec == SD3_CODEC_SHUFFLE_ZSTD && esize > 1) {
            if (!(shuffled = malloc(raw_bytes ? raw_bytes : 1)))
                goto oom;
            sd3_codec_shuffle(raw, shuffled, numel, esize);
            raw = shuffled;
        }
        size_t bound = ZSTD_compressBound(raw_bytes);
        if (!(frame = malloc(bound)))
            goto oom;
        size_t n = ZSTD_compress(frame, bound, raw, raw_bytes,
                                 opts->level ? opts->level : SD3_CODEC_DEFAULT_LEVEL);
        if (ZSTD_isError(n)) {
            sd3_err_set(err, SD3_EINTERNAL, "tensor '%s': zstd: %s", name, ZSTD_getErrorName(n));
            goto fail;
        }
        void *shrunk = realloc(frame, n ? n : 1); // give back the bound's slack
        if (shrunk)
            frame = shrunk;
        *frame_len = n;
    }
    free(narrow);
    free(shuffled);
    desc->wire_bytes = *frame_len;
    *frame_p = frame;
    return 0;
oom:
    sd3_err_set(err, SD3_ENOMEM, "tensor '%s': out of memory encoding %zu bytes", name, raw_bytes);
fail:
    free(narrow);
    free(shuffled);
    free(frame);
    *frame_len = 0;
    return err ? err->code : SD3_ENOMEM;
}

int
sd3_codec_check(const sd3_codec_desc_t *desc, size_t frame_len, size_t cap, sd3_err_t *err)
{
    const char *name = desc->name;
    size_t numel, raw_bytes, out_bytes;
    char sbuf[96];
    if (!cap)
        cap = SD3_CODEC_DEFAULT_CAP;
    if (memchr(desc->name, '\0', sizeof desc->name) == NULL)
        return sd3_err_set(err, SD3_EPROTO, "tensor name is not terminated");
    if ((unsigned)desc->dtype >= SD3_DTYPE_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': unknown dtype %d", name,
                           (int)desc->dtype);
    if ((unsigned)desc->wire_dtype >= SD3_DTYPE_COUNT ||
        (desc->wire_dtype != desc->dtype && !s_narrowing(desc->dtype, desc->wire_dtype)))
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': wire dtype %s cannot carry %s", name,
                           sd3_dtype_name(desc->wire_dtype), sd3_dtype_name(desc->dtype));
    if ((unsigned)desc->codec >= SD3_CODEC_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': unknown codec %d", name,
                           (int)desc->codec);
    if (desc->ndim < 0 || desc->ndim > SD3_MAX_DIM)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': %d dims, at most %d", name, desc->ndim,
                           SD3_MAX_DIM);
    for (int i = 0; i < desc->ndim; i++)
        if (desc->shape[i] < 0)
            return sd3_err_set(err, SD3_EPROTO, "tensor '%s': negative dim in %s", name,
                               sd3_shape_str(desc->ndim, desc->shape, sbuf, sizeof sbuf));
    if (sd3_shape_numel(desc->ndim, desc->shape, &numel) != 0 ||
        sd3_size_mul(numel, sd3_dtype_size(desc->wire_dtype), &raw_bytes) != 0 ||
        sd3_size_mul(numel, sd3_dtype_size(desc->dtype), &out_bytes) != 0)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': size of %s %s overflows", name,
                           sd3_dtype_name(desc->dtype),
                           sd3_shape_str(desc->ndim, desc->shape, sbuf, sizeof sbuf));
    if (desc->raw_bytes != raw_bytes)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': declares %llu raw bytes, %s %s needs %zu",
                           name, (unsigned long long)desc->raw_bytes,
                           sd3_dtype_name(desc->wire_dtype),
                           sd3_shape_str(desc->ndim, desc->shape, sbuf, sizeof sbuf), raw_bytes);
    if (out_bytes > cap)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': %zu bytes exceeds the cap of %zu", name,
                           out_bytes, cap);
    if (desc->wire_bytes != frame_len)
        return sd3_err_set(err, SD3_EPROTO,
                           "tensor '%s': frame has %zu bytes, descriptor says "
                           "%llu",
                           name, frame_len, (unsigned long long)desc->wire_bytes);
    if (desc->codec == SD3_CODEC_RAW && frame_len != raw_bytes)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': raw frame has %zu bytes, want %zu", name,
                           frame_len, raw_bytes);
    return 0;
}

// Decompresses one zstd frame into exactly raw_bytes at dst; never writes past it.
static int
s_unzstd(const sd3_codec_desc_t *desc, const void *frame, size_t frame_len, void *dst,
         sd3_err_t *err)
{
    unsigned long long content = ZSTD_getFrameContentSize(frame, frame_len);
    if (content == ZSTD_CONTENTSIZE_ERROR)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': not a zstd frame", desc->name);
    if (content == ZSTD_CONTENTSIZE_UNKNOWN)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': zstd frame without a content size",
                           desc->name);
    if (content != desc->raw_bytes)
        return sd3_err_set(err, SD3_EPROTO,
                           "tensor '%s': zstd frame holds %llu bytes, "
                           "descriptor says %llu",
                           desc->name, content, (unsigned long long)desc->raw_bytes);
    size_t one = ZSTD_findFrameCompressedSize(frame, frame_len);
    if (ZSTD_isError(one) || one != frame_len)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': %zu bytes after the zstd frame",
                           desc->name, ZSTD_isError(one) ? frame_len : frame_len - one);
    // The capacity is the declared size: a frame that inflates further fails here.
    size_t n = ZSTD_decompress(dst, (size_t)desc->raw_bytes, frame, frame_len);
    if (ZSTD_isError(n))
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': zstd: %s", desc->name,
                           ZSTD_getErrorName(n));
    if (n != desc->raw_bytes)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': decompressed to %zu bytes, want %llu",
                           desc->name, n, (unsigned long long)desc->raw_bytes);
    return 0;
}

int
sd3_codec_decode(const sd3_codec_desc_t *desc, const void *frame, size_t frame_len, size_t cap,
                 sd3_tensor_t **out, sd3_err_t *err)
{
    sd3_tensor_t *t = NULL;
    void *tmp = NULL;
    size_t numel, out_bytes;
    *out = NULL;
    int rc = sd3_codec_check(desc, frame_len, cap, err);
    if (rc)
        return rc;
    sd3_shape_numel(desc->ndim, desc->shape, &numel); // checked above
    out_bytes = numel * sd3_dtype_size(desc->dtype);
    size_t raw_bytes = (size_t)desc->raw_bytes;
    size_t esize = sd3_dtype_size(desc->wire_dtype);
    if (!(t = s_tensor_new_named(desc, out_bytes, err)))
        return SD3_ENOMEM;

    bool narrowed = desc->wire_dtype != desc->dtype;
    bool shuffled = desc->codec == SD3_CODEC_SHUFFLE_ZSTD && esize > 1;
    // raw: the wire-dtype bytes, in the tensor itself unless they must be widened after
    void *raw = t->data;
    if (narrowed) {
        if (!(tmp = malloc(raw_bytes ? raw_bytes : 1)))
            goto oom;
        raw = tmp;
    }
    if (desc->codec == SD3_CODEC_RAW) {
        if (raw_bytes) // an empty frame may come as NULL: memcpy(_, NULL, 0) is undefined
            memcpy(raw, frame, raw_bytes);
    } else if (!shuffled) {
        if ((rc = s_unzstd(desc, frame, frame_len, raw, err)) != 0)
            goto fail;
    } else {
        void *planes = malloc(raw_bytes ? raw_bytes : 1);
        if (!planes)
            goto oom;
        if ((rc = s_unzstd(desc, frame, frame_len, planes, err)) != 0) {
            free(planes);
            goto fail;
        }
        sd3_codec_unshuffle(planes, raw, numel, esize);
        free(planes);
    }
    uint64_t sum = XXH3_64bits(raw, raw_bytes);
    if (sum != desc->checksum) {
        rc = sd3_err_set(err, SD3_EPROTO,
                         "tensor '%s': checksum %016llx, descriptor says "
                         "%016llx",
                         desc->name, (unsigned long long)sum, (unsigned long long)desc->checksum);
        goto fail;
    }
    if (narrowed)
        sd3_dtype_to_f32(desc->wire_dtype, raw, t->data, numel);
    free(tmp);
    *out = t;
    return 0;
oom:
    rc = sd3_err_set(err, SD3_ENOMEM, "tensor '%s': out of memory decoding %zu bytes", desc->name,
                     raw_bytes);
fail:
    free(tmp);
    sd3_tensor_destroy(&t);
    return rc;
}
