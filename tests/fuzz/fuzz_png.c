/*  fuzz_png - fuzz target for the PNG reader (sd3_png_decode: img2img inputs, HTTP uploads)
 *
 *  Input: the bytes of a PNG file. Oracle: a refusal has a code and a message; an accepted
 *  image has both sides in 1..SD3_PNG_MAX_DIM, its RGB buffer is read to the end, and it
 *  survives our own encoder: encode + decode gives back the same pixels and text.
 *  Seeds (--write-seeds): images from sd3_png_encode (with and without the `parameters`
 *  text) and hand-built ones libspng must expand (grey 16-bit, palette + tRNS, interlaced
 *  RGBA, zTXt/iTXt), plus truncated, bad-CRC and oversized headers.
 *  Built as a replayer (ctest label fuzz, corpus tests/fuzz/corpus-png) and, with
 *  -DSD3_FUZZ=ON, as the libFuzzer binary fuzz_png_lf (tests/cmake/fuzz.cmake).  */
#include "sd3_fuzz_replay.h"
#include "sd3_png.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *rgb = NULL, *png = NULL, *rgb2 = NULL;
    char *params = NULL, *params2 = NULL;
    int w = 0, h = 0, w2 = 0, h2 = 0;
    size_t png_len = 0;
    sd3_err_t err = {0};
#ifdef SD3_LIBFUZZER
    // Under ASan a claimed 16384 x 16384 image costs seconds (1.8 GB of buffers allocated and
    // poisoned before the short data is seen) and says nothing new after the first time: the
    // fuzzer skips claims past 4 Mpx; the replayer (corpus huge-claimed, past-cap) runs them.
    if (size >= 24 && !memcmp(data + 12, "IHDR", 4)) {
        uint64_t cw = (uint64_t)data[16] << 24 | data[17] << 16 | data[18] << 8 | data[19];
        uint64_t ch = (uint64_t)data[20] << 24 | data[21] << 16 | data[22] << 8 | data[23];
        if (cw * ch > ((uint64_t)1 << 22))
            return 0;
    }
#endif
    if (sd3_png_decode(data, size, &rgb, &w, &h, &params, &err) != 0) {
        if (err.code == SD3_OK || !err.msg[0] || rgb || params)
            abort(); // a refusal says why and hands back nothing
        SD3_FUZZ_NOTE("refused %s: %s\n", sd3_err_name(err.code), err.msg);
        return 0;
    }
    if (!rgb || w < 1 || h < 1 || w > SD3_PNG_MAX_DIM || h > SD3_PNG_MAX_DIM)
        abort();
    size_t n = (size_t)w * (size_t)h * 3;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i += 64)
        sink ^= rgb[i];
    sink ^= rgb[n - 1];
    (void)sink;
    // Our own writer must take what our reader gave, and give it back unchanged. Large
    // images are skipped: the round trip is about correctness, not throughput.
    if (n <= (size_t)1 << 20) {
        if (params && strlen(params) > 65536)
            params[65536] = '\0';
        if (sd3_png_encode(rgb, w, h, params, &png, &png_len, &err) != 0)
            abort();
        if (sd3_png_decode(png, png_len, &rgb2, &w2, &h2, &params2, &err) != 0)
            abort();
        if (w2 != w || h2 != h || memcmp(rgb, rgb2, n) != 0)
            abort();
        if ((params == NULL) != (params2 == NULL) || (params && strcmp(params, params2) != 0))
            abort();
    }
    SD3_FUZZ_NOTE("accepted: %dx%d parameters=%s\n", w, h, params ? params : "(none)");
    free(rgb);
    free(rgb2);
    free(png);
    free(params);
    free(params2);
    return 0;
}

#ifndef SD3_LIBFUZZER
typedef struct {
    uint8_t *buf;
    size_t len, cap;
} s_buf_t;

static void
s_put(s_buf_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->buf = realloc(b->buf, b->cap);
        if (!b->buf)
            abort();
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static void
s_be32(s_buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    s_put(b, x, 4);
}

static void
s_chunk(s_buf_t *b, const char *type, const void *data, size_t len)
{
    s_be32(b, (uint32_t)len);
    size_t at = b->len;
    s_put(b, type, 4);
    if (len)
        s_put(b, data, len);
    s_be32(b, (uint32_t)crc32(0, b->buf + at, (uInt)(len + 4)));
}

// A PNG by hand: IHDR, the extra chunks in `pre` (type NUL data, len), IDAT of `raw`
// (filtered scanlines, already laid out), IEND.
static s_buf_t
s_png(uint32_t w, uint32_t h, uint8_t depth, uint8_t color, uint8_t interlace, const uint8_t *raw,
      size_t raw_len, const s_buf_t *pre)
{
    s_buf_t b = {0};
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    s_put(&b, sig, 8);
    uint8_t ihdr[13] = {(uint8_t)(w >> 24),
                        (uint8_t)(w >> 16),
                        (uint8_t)(w >> 8),
                        (uint8_t)w,
                        (uint8_t)(h >> 24),
                        (uint8_t)(h >> 16),
                        (uint8_t)(h >> 8),
                        (uint8_t)h,
                        depth,
                        color,
                        0,
                        0,
                        interlace};
    s_chunk(&b, "IHDR", ihdr, 13);
    if (pre)
        s_put(&b, pre->buf, pre->len);
    uLongf zlen = compressBound((uLong)raw_len);
    uint8_t *z = malloc(zlen);
    if (!z || compress(z, &zlen, raw, (uLong)raw_len) != Z_OK)
        abort();
    s_chunk(&b, "IDAT", z, zlen);
    free(z);
    s_chunk(&b, "IEND", NULL, 0);
    return b;
}

static int
s_seed_buf(const char *dir, const char *name, s_buf_t *b, size_t len)
{
    int rc = s_seed_write(dir, name, b->buf, len);
    return rc;
}

static int
s_write_seeds(const char *dir)
{
    int rc = 0;
    sd3_err_t err = {0};
    mkdir(dir, 0755);
    // Made by our writer.
    uint8_t rgb[17 * 9 * 3];
    for (size_t i = 0; i < sizeof rgb; i++)
        rgb[i] = (uint8_t)(i * 13);
    uint8_t *png = NULL;
    size_t len = 0;
    const char *text = "a cat\nNegative prompt: \nSteps: 28, Sampler: Euler, CFG scale: 4.5, "
                       "Seed: 42, Size: 17x9, Model: sd3-medium";
    if (sd3_png_encode(rgb, 17, 9, text, &png, &len, &err) != 0)
        return 1;
    rc |= s_seed_write(dir, "good-17x9-params", png, len);
    rc |= s_seed_write(dir, "trunc-half", png, len / 2);
    rc |= s_seed_write(dir, "trunc-before-iend", png, len - 12);
    png[20] ^= 0x40; // a byte of IHDR's height: its CRC no longer matches
    rc |= s_seed_write(dir, "bad-crc", png, len);
    free(png);
    if (sd3_png_encode(rgb, 1, 1, NULL, &png, &len, &err) != 0)
        return 1;
    rc |= s_seed_write(dir, "good-1x1", png, len);
    free(png);

    // Built by hand: formats our writer never makes.
    uint8_t raw[4096];
    s_buf_t b, pre = {0};
    // grey 16-bit 4x3: filter byte + 8 bytes a row
    for (int y = 0; y < 3; y++) {
        raw[y * 9] = (uint8_t)(y % 5); // filters 0..2
        for (int x = 0; x < 8; x++)
            raw[y * 9 + 1 + x] = (uint8_t)(x * 31 + y);
    }
    b = s_png(4, 3, 16, 0, 0, raw, 27, NULL);
    rc |= s_seed_buf(dir, "grey16-4x3", &b, b.len);
    free(b.buf);
    // palette 2-bit 5x2 with PLTE + tRNS + tEXt parameters + zTXt
    uint8_t plte[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9};
    uint8_t trns[2] = {0, 128};
    s_chunk(&pre, "PLTE", plte, 12);
    s_chunk(&pre, "tRNS", trns, 2);
    s_chunk(&pre, "tEXt", "parameters\0hello\nSteps: 4", 25);
    uint8_t ztxt[64] = "Comment\0";
    uLongf zl = sizeof ztxt - 9;
    compress(ztxt + 9, &zl, (const uint8_t *)"zipped words", 12);
    s_chunk(&pre, "zTXt", ztxt, 9 + zl);
    for (int y = 0; y < 2; y++) {
        raw[y * 3] = 0;
        raw[y * 3 + 1] = 0x1b;
        raw[y * 3 + 2] = 0xc0;
    }
    b = s_png(5, 2, 2, 3, 0, raw, 6, &pre);
    rc |= s_seed_buf(dir, "palette-trns-ztxt", &b, b.len);
    free(b.buf);
    free(pre.buf);
    pre = (s_buf_t){0};
    // interlaced RGBA 8-bit 9x7 (Adam7: seven passes, each row with its filter byte)
    {
        static const int xs[7] = {0, 4, 0, 2, 0, 1, 0}, ys[7] = {0, 0, 4, 0, 2, 0, 1};
        static const int dx[7] = {8, 8, 4, 4, 2, 2, 1}, dy[7] = {8, 8, 8, 4, 4, 2, 2};
        size_t at = 0;
        for (int p = 0; p < 7; p++) {
            int pw = (9 - xs[p] + dx[p] - 1) / dx[p], ph = (7 - ys[p] + dy[p] - 1) / dy[p];
            if (pw <= 0 || ph <= 0)
                continue;
            for (int y = 0; y < ph; y++) {
                raw[at++] = (uint8_t)((p + y) % 5);
                for (int x = 0; x < pw * 4; x++)
                    raw[at++] = (uint8_t)(x * 17 + y * 3 + p);
            }
        }
        s_chunk(&pre, "iTXt", "parameters\0\0\0\0\0intl text", 25);
        b = s_png(9, 7, 8, 6, 1, raw, at, &pre);
        rc |= s_seed_buf(dir, "rgba-interlaced-itxt", &b, b.len);
        free(b.buf);
        free(pre.buf);
        pre = (s_buf_t){0};
    }
    // IHDR claims 16384 x 16384 (the cap) with one row of data; and past the cap.
    memset(raw, 0, 64);
    b = s_png(16384, 16384, 8, 2, 0, raw, 64, NULL);
    rc |= s_seed_buf(dir, "huge-claimed", &b, b.len);
    free(b.buf);
    b = s_png(16385, 1, 8, 2, 0, raw, 64, NULL);
    rc |= s_seed_buf(dir, "past-cap", &b, b.len);
    free(b.buf);
    b = s_png(0, 1, 8, 2, 0, raw, 4, NULL);
    rc |= s_seed_buf(dir, "zero-width", &b, b.len);
    free(b.buf);
    rc |= s_seed_write(dir, "signature-only", "\x89PNG\r\n\x1a\n", 8);
    return rc ? 1 : 0;
}
#endif

SD3_FUZZ_REPLAY_MAIN("fuzz_png")
