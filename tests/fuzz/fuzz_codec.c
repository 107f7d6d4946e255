/*  fuzz_codec - fuzz target for the tensor codec's decoder (sd3_codec_decode)
 *
 *  Input: a 40-byte descriptor then the frame (shorter inputs are zero-padded):
 *    0 dtype  1 wire dtype  2 codec  3 ndim  4..19 shape[4] (int32 LE)  20 flags
 *    21..28 raw_bytes (u64 LE)  29..36 checksum (u64 LE)  37..39 unused  40.. the frame
 *  flags bit 0: raw_bytes as given (else numel * size(wire dtype), the honest value)
 *        bit 1: checksum as given (else computed from the frame the honest way, so the
 *               mutations reach what comes after the checksum: unshuffle and widening)
 *        bit 2: wire_bytes one off the frame length
 *  Oracle: a refusal has a code and a message; an accepted tensor has the declared dtype and
 *  shape, and re-encoding it the same way decodes again to the same bits (NaNs compare
 *  equal as NaNs after narrowing).
 *  Seeds (--write-seeds): frames made by sd3_codec_encode for every codec and narrowing,
 *  plus zip bombs, trailing bytes, wrong sums, overflowing shapes.
 *  Built as a replayer (ctest label fuzz, corpus tests/fuzz/corpus-codec) and, with
 *  -DSD3_FUZZ=ON, as the libFuzzer binary fuzz_codec_lf (tests/cmake/fuzz.cmake).  */
#include "sd3_codec.h"
#include "sd3_fuzz_replay.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>
#include <zstd.h>

#define S_HEAD 40
#define S_CAP  ((size_t)16 << 20) // the fuzzer's tensor cap

static uint64_t
s_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

// The checksum an honest sender would have sent for this frame, or 0 when the frame cannot
// give raw_bytes bytes.
static uint64_t
s_honest_sum(const sd3_codec_desc_t *d, const uint8_t *frame, size_t len)
{
    size_t raw = (size_t)d->raw_bytes, esize = 0;
    uint64_t sum = 0;
    if (d->raw_bytes > S_CAP)
        return 0;
    if ((unsigned)d->wire_dtype < SD3_DTYPE_COUNT)
        esize = sd3_dtype_size(d->wire_dtype);
    if (d->codec == SD3_CODEC_RAW)
        return len >= raw ? XXH3_64bits(frame, raw) : 0;
    uint8_t *buf = malloc(raw ? raw : 1), *plain = malloc(raw ? raw : 1);
    if (buf && plain) {
        size_t n = ZSTD_decompress(buf, raw, frame, len);
        if (!ZSTD_isError(n) && n == raw) {
            if (d->codec == SD3_CODEC_SHUFFLE_ZSTD && esize > 1 && raw % esize == 0) {
                sd3_codec_unshuffle(buf, plain, raw / esize, esize);
                sum = XXH3_64bits(plain, raw);
            } else {
                sum = XXH3_64bits(buf, raw);
            }
        }
    }
    free(buf);
    free(plain);
    return sum;
}

static bool
s_same_bits(const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    size_t n = sd3_tensor_nbytes(a);
    if (n != sd3_tensor_nbytes(b))
        return false;
    if (a->dtype != SD3_F32)
        return memcmp(a->data, b->data, n) == 0;
    const float *x = a->data, *y = b->data;
    for (size_t i = 0; i < n / 4; i++)
        if (!(isnan(x[i]) && isnan(y[i])) && memcmp(&x[i], &y[i], 4) != 0)
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t head[S_HEAD] = {0};
    memcpy(head, data, size < S_HEAD ? size : S_HEAD);
    const uint8_t *frame = size > S_HEAD ? data + S_HEAD : NULL;
    size_t frame_len = size > S_HEAD ? size - S_HEAD : 0;
    sd3_codec_desc_t d;
    memset(&d, 0, sizeof d);
    snprintf(d.name, sizeof d.name, "t");
    d.dtype = (sd3_dtype_t)(head[0] % (SD3_DTYPE_COUNT + 1)); // one past: unknown
    d.wire_dtype = (sd3_dtype_t)(head[1] % (SD3_DTYPE_COUNT + 1));
    d.codec = (sd3_codec_t)(head[2] % (SD3_CODEC_COUNT + 1));
    d.ndim = head[3] % 6;
    for (int i = 0; i < SD3_MAX_DIM; i++)
        d.shape[i] = (int32_t)s_le(head + 4 + 4 * i, 4);
    uint8_t flags = head[20];
    size_t numel = 0;
    if (flags & 1 || (unsigned)d.wire_dtype >= SD3_DTYPE_COUNT || d.ndim > SD3_MAX_DIM ||
        sd3_shape_numel(d.ndim, d.shape, &numel) != 0 ||
        sd3_size_mul(numel, sd3_dtype_size(d.wire_dtype), &numel) != 0)
        d.raw_bytes = s_le(head + 21, 8);
    else
        d.raw_bytes = numel;
    d.checksum = flags & 2 ? s_le(head + 29, 8) : s_honest_sum(&d, frame, frame_len);
    d.wire_bytes = frame_len ^ (flags & 4 ? 1u : 0u);

    sd3_tensor_t *t = NULL, *again = NULL;
    sd3_err_t err = {0};
    if (sd3_codec_decode(&d, frame, frame_len, S_CAP, &t, &err) != 0) {
        if (err.code == SD3_OK || !err.msg[0] || t)
            abort();
        SD3_FUZZ_NOTE("refused %s: %s\n", sd3_err_name(err.code), err.msg);
        return 0;
    }
    if (!t || t->dtype != d.dtype || t->ndim != d.ndim || strcmp(t->name, "t") != 0)
        abort();
    for (int i = 0; i < d.ndim; i++)
        if (t->shape[i] != d.shape[i])
            abort();
    // Re-encode the same way and decode again.
    sd3_codec_opts_t opts = {.codec = d.codec, .wire_dtype = d.wire_dtype};
    sd3_codec_desc_t d2;
    void *f2 = NULL;
    size_t f2_len = 0;
    if (sd3_codec_encode(t, &opts, true, &d2, &f2, &f2_len, &err) != 0) {
        fprintf(stderr, "re-encode: %s\n", err.msg);
        abort();
    }
    if (d2.wire_dtype != d.wire_dtype || d2.raw_bytes != d.raw_bytes)
        abort();
    if (sd3_codec_decode(&d2, f2, f2_len, S_CAP, &again, &err) != 0) {
        fprintf(stderr, "re-decode: %s\n", err.msg);
        abort();
    }
    if (!s_same_bits(t, again))
        abort();
    SD3_FUZZ_NOTE("accepted: %s -> %s via %s, %zu bytes\n", sd3_dtype_name(d.wire_dtype),
                  sd3_dtype_name(d.dtype), sd3_codec_name(d.codec), sd3_tensor_nbytes(t));
    free(f2);
    sd3_tensor_destroy(&again);
    sd3_tensor_destroy(&t);
    return 0;
}

#ifndef SD3_LIBFUZZER
// Seed = descriptor head + frame; flags as given.
static int
s_seed(const char *dir, const char *name, const sd3_codec_desc_t *d, uint8_t flags,
       const void *frame, size_t len)
{
    uint8_t *buf = calloc(1, S_HEAD + len);
    if (!buf)
        return 1;
    buf[0] = (uint8_t)d->dtype;
    buf[1] = (uint8_t)d->wire_dtype;
    buf[2] = (uint8_t)d->codec;
    buf[3] = (uint8_t)d->ndim;
    for (int i = 0; i < SD3_MAX_DIM; i++)
        for (int k = 0; k < 4; k++)
            buf[4 + 4 * i + k] = (uint8_t)((uint64_t)d->shape[i] >> (8 * k));
    buf[20] = flags;
    for (int k = 0; k < 8; k++) {
        buf[21 + k] = (uint8_t)(d->raw_bytes >> (8 * k));
        buf[29 + k] = (uint8_t)(d->checksum >> (8 * k));
    }
    if (len)
        memcpy(buf + S_HEAD, frame, len);
    int rc = s_seed_write(dir, name, buf, S_HEAD + len);
    free(buf);
    return rc;
}

static int
s_write_seeds(const char *dir)
{
    int rc = 0;
    sd3_err_t err = {0};
    mkdir(dir, 0755);
    static const struct {
        sd3_dtype_t dtype, wire;
        const char *tag;
    } kinds[] = {{SD3_F32, SD3_F32, "f32"},     {SD3_F32, SD3_BF16, "f32-bf16"},
                 {SD3_F32, SD3_F16, "f32-f16"}, {SD3_BF16, SD3_BF16, "bf16"},
                 {SD3_I32, SD3_I32, "i32"},     {SD3_U8, SD3_U8, "u8"}};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_tensor_t *t = sd3_tensor_new(kinds[k].dtype, 3, (int64_t[]){2, 3, 5});
            if (!t)
                return 1;
            t->name = "t";
            size_t n = sd3_tensor_nbytes(t);
            for (size_t i = 0; i < n; i++)
                ((uint8_t *)t->data)[i] = (uint8_t)(i % 4 == 3 ? 0x3f : i * 5);
            if (kinds[k].dtype == SD3_F32) {
                float *f = t->data;
                f[0] = NAN;
                f[1] = INFINITY;
                f[2] = -0.0f;
                f[3] = 1e-40f; // subnormal
            }
            sd3_codec_opts_t opts = {.codec = (sd3_codec_t)c, .wire_dtype = kinds[k].wire};
            sd3_codec_desc_t d;
            void *frame = NULL;
            size_t len = 0;
            if (sd3_codec_encode(t, &opts, true, &d, &frame, &len, &err) != 0) {
                fprintf(stderr, "seed %s: %s\n", kinds[k].tag, err.msg);
                return 1;
            }
            char name[64];
            snprintf(name, sizeof name, "good-%s-%s", kinds[k].tag, sd3_codec_name(d.codec));
            for (char *p = name; *p; p++)
                if (*p == '+')
                    *p = '_';
            rc |= s_seed(dir, name, &d, 3, frame, len); // exactly as sent
            if (k == 1 && c == SD3_CODEC_SHUFFLE_ZSTD) {
                sd3_codec_desc_t wrong = d;
                wrong.checksum ^= 1;
                rc |= s_seed(dir, "bad-sum", &wrong, 2 | 1, frame, len);
                rc |= s_seed(dir, "trunc-zstd", &d, 0, frame, len - 3);
                uint8_t *more = malloc(len + 4);
                memcpy(more, frame, len);
                memcpy(more + len, "tail", 4);
                rc |= s_seed(dir, "trailing-bytes", &d, 0, more, len + 4);
                free(more);
            }
            free(frame);
            sd3_tensor_destroy(&t);
        }
    }
    // A zip bomb: 8 MiB of zeros in a frame that declares 64 bytes, and one that declares
    // the truth but exceeds nothing; a frame without a content size.
    size_t big = (size_t)8 << 20;
    uint8_t *zeros = calloc(1, big);
    size_t bound = ZSTD_compressBound(big);
    uint8_t *z = malloc(bound);
    size_t zn = ZSTD_compress(z, bound, zeros, big, 1);
    sd3_codec_desc_t bomb = {.name = "t",
                             .dtype = SD3_U8,
                             .wire_dtype = SD3_U8,
                             .codec = SD3_CODEC_ZSTD,
                             .ndim = 1,
                             .shape = {64},
                             .raw_bytes = 64};
    rc |= s_seed(dir, "zip-bomb", &bomb, 0, z, zn);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
    ZSTD_outBuffer out = {z, bound, 0};
    ZSTD_inBuffer in = {zeros, 64, 0};
    ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
    ZSTD_freeCCtx(cctx);
    rc |= s_seed(dir, "zstd-no-content-size", &bomb, 0, z, out.pos);
    free(z);
    free(zeros);
    // Shapes that overflow or lie.
    sd3_codec_desc_t lie = {.name = "t",
                            .dtype = SD3_F32,
                            .wire_dtype = SD3_F32,
                            .ndim = 4,
                            .shape = {65536, 65536, 65536, 65536},
                            .raw_bytes = 16};
    rc |= s_seed(dir, "shape-overflow", &lie, 1, "0123456789abcdef", 16);
    lie.ndim = 1;
    lie.shape[0] = -4;
    rc |= s_seed(dir, "shape-negative", &lie, 1, "0123456789abcdef", 16);
    lie.shape[0] = 4;
    lie.wire_dtype = SD3_F8_E4M3;
    lie.raw_bytes = 4;
    rc |= s_seed(dir, "narrow-to-f8", &lie, 0, "0123", 4);
    return rc ? 1 : 0;
}
#endif

SD3_FUZZ_REPLAY_MAIN("fuzz_codec")
