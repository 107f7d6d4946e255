/*  sd3_png - PNG in and out (see sd3_png.h)  */
#include "sd3_png.h"

#include <errno.h>
#include <inttypes.h>
#include <spng.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- infotext -------------------------------------------------------------------------

// A growable string.
typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} s_str_t;

static void
s_str_putn(s_str_t *s, const char *p, size_t n)
{
    if (s->oom)
        return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 256;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb) {
            s->oom = true;
            return;
        }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
}

static void
s_str_puts(s_str_t *s, const char *p)
{
    s_str_putn(s, p, strlen(p));
}

static void s_str_printf(s_str_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
s_str_printf(s_str_t *s, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        s_str_putn(s, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

// A1111 infotext_utils.quote: a value holding ',', ':' or a newline is written as a JSON
// string (ensure_ascii=False: only '"', '\\' and control characters are escaped).
static void
s_str_value(s_str_t *s, const char *v)
{
    if (!strpbrk(v, ",:\n")) {
        s_str_puts(s, v);
        return;
    }
    s_str_putn(s, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '"')
            s_str_puts(s, "\\\"");
        else if (*p == '\\')
            s_str_puts(s, "\\\\");
        else if (*p == '\n')
            s_str_puts(s, "\\n");
        else if (*p == '\t')
            s_str_puts(s, "\\t");
        else if (*p == '\r')
            s_str_puts(s, "\\r");
        else if (*p < 0x20)
            s_str_printf(s, "\\u%04x", *p);
        else
            s_str_putn(s, (const char *)p, 1);
    }
    s_str_putn(s, "\"", 1);
}

char *
sd3_png_params_format(const sd3_png_params_t *params)
{
    s_str_t s = {0};
    s_str_puts(&s, params->prompt ? params->prompt : "");
    if (params->negative_prompt && params->negative_prompt[0]) {
        s_str_puts(&s, "\nNegative prompt: ");
        s_str_puts(&s, params->negative_prompt);
    }
    s_str_printf(&s, "\nSteps: %d, Sampler: ", params->steps);
    s_str_value(&s, params->sampler ? params->sampler : "Euler");
    s_str_printf(&s, ", CFG scale: %g, Seed: %" PRIu64 ", Size: %dx%d", params->cfg_scale,
                 params->seed, params->width, params->height);
    if (params->model && params->model[0]) {
        s_str_puts(&s, ", Model: ");
        s_str_value(&s, params->model);
    }
    if (params->denoise > 0 && params->denoise < 1)
        s_str_printf(&s, ", Denoising strength: %g", params->denoise);
    if (params->extra && params->extra[0]) {
        s_str_puts(&s, ", ");
        s_str_puts(&s, params->extra);
    }
    if (s.oom || !s.buf) {
        free(s.buf);
        return NULL;
    }
    return s.buf;
}

// ---- writing --------------------------------------------------------------------------

static bool
s_is_ascii(const char *p)
{
    for (; *p; p++)
        if ((unsigned char)*p >= 0x80)
            return false;
    return true;
}

int
sd3_png_encode(const uint8_t *rgb, int width, int height, const char *parameters, uint8_t **png_out,
               size_t *size_out, sd3_err_t *err)
{
    spng_ctx *ctx = NULL;
    size_t row, nbytes;
    int rc = 0, ret;
    *png_out = NULL;
    *size_out = 0;
    if (width <= 0 || height <= 0 || width > SD3_PNG_MAX_DIM || height > SD3_PNG_MAX_DIM)
        return sd3_err_set(err, SD3_EINVAL, "png: image is %dx%d, want 1..%d per side", width,
                           height, SD3_PNG_MAX_DIM);
    if (sd3_size_mul((size_t)width, 3, &row) != 0 ||
        sd3_size_mul(row, (size_t)height, &nbytes) != 0)
        return sd3_err_set(err, SD3_EINVAL, "png: %dx%d overflows", width, height);
    if (!(ctx = spng_ctx_new(SPNG_CTX_ENCODER)))
        return sd3_err_set(err, SD3_ENOMEM, "png: encoder context");
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {.width = (uint32_t)width,
                             .height = (uint32_t)height,
                             .bit_depth = 8,
                             .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
    if ((ret = spng_set_ihdr(ctx, &ihdr)) != 0) {
        rc = sd3_err_set(err, SD3_EINTERNAL, "png: header: %s", spng_strerror(ret));
        goto done;
    }
    if (parameters) {
        size_t len = strlen(parameters);
        struct spng_text text = {.keyword = "parameters",
                                 .length = len,
                                 .text = (char *)parameters,
                                 .language_tag = "",
                                 .translated_keyword = ""};
        // tEXt is Latin-1 by the PNG spec; UTF-8 text goes to iTXt, as PIL writes it.
        text.type = s_is_ascii(parameters) ? SPNG_TEXT : SPNG_ITXT;
        if (len > SD3_PNG_MAX_TEXT) {
            rc = sd3_err_set(err, SD3_EINVAL, "png: parameters text is %zu bytes, max %u", len,
                             SD3_PNG_MAX_TEXT);
            goto done;
        }
        if ((ret = spng_set_text(ctx, &text, 1)) != 0) {
            rc = sd3_err_set(err, SD3_EINVAL, "png: parameters text: %s", spng_strerror(ret));
            goto done;
        }
    }
    if ((ret = spng_encode_image(ctx, rgb, nbytes, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE)) != 0) {
        rc = sd3_err_set(err, SD3_EINTERNAL, "png: encode %dx%d: %s", width, height,
                         spng_strerror(ret));
        goto done;
    }
    *png_out = spng_get_png_buffer(ctx, size_out, &ret);
    if (!*png_out)
        rc = sd3_err_set(err, SD3_ENOMEM, "png: output buffer: %s", spng_strerror(ret));
done:
    spng_ctx_free(ctx);
    return rc;
}

int
sd3_png_write(const char *path, const uint8_t *rgb, int width, int height, const char *parameters,
              sd3_err_t *err)
{
    uint8_t *png = NULL;
    size_t size = 0;
    char *tmp = NULL;
    FILE *f = NULL;
    int rc;
    if ((rc = sd3_png_encode(rgb, width, height, parameters, &png, &size, err)) != 0)
        return rc;
    size_t plen = strlen(path);
    if (!(tmp = malloc(plen + 16))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "png: path");
        goto done;
    }
    snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)getpid());
    if (!(f = fopen(tmp, "wb"))) {
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    if (fwrite(png, 1, size, f) != size || fflush(f) != 0) {
        rc = sd3_err_set(err, SD3_EIO, "%s: write failed: %s", tmp, strerror(errno));
        goto done;
    }
    if (fclose(f) != 0) {
        f = NULL;
        rc = sd3_err_set(err, SD3_EIO, "%s: close failed: %s", tmp, strerror(errno));
        goto done;
    }
    f = NULL;
    if (rename(tmp, path) != 0)
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot rename into place: %s", path, strerror(errno));
done:
    if (f)
        fclose(f);
    if (rc != 0 && tmp)
        remove(tmp);
    free(tmp);
    free(png);
    return rc;
}

// ---- reading --------------------------------------------------------------------------

int
sd3_png_decode(const void *data, size_t size, uint8_t **rgb_out, int *width, int *height,
               char **parameters_out, sd3_err_t *err)
{
    spng_ctx *ctx = NULL;
    uint8_t *rgba = NULL, *rgb = NULL;
    struct spng_text *texts = NULL;
    char *params = NULL;
    size_t rgba_size = 0, npix;
    int rc = 0, ret;
    *rgb_out = NULL;
    *width = *height = 0;
    if (parameters_out)
        *parameters_out = NULL;
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (!data || size < 8 || memcmp(data, sig, 8) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "png: not a PNG file (%zu bytes, no signature)", size);
    if (!(ctx = spng_ctx_new(0)))
        return sd3_err_set(err, SD3_ENOMEM, "png: decoder context");
    // Caps before anything is allocated: the image size, and chunk sizes (a hostile file
    // could declare a huge text or ICC chunk).
    spng_set_image_limits(ctx, SD3_PNG_MAX_DIM, SD3_PNG_MAX_DIM);
    spng_set_chunk_limits(ctx, 64u << 20, 64u << 20);
    spng_set_png_buffer(ctx, data, size);
    struct spng_ihdr ihdr;
    if ((ret = spng_get_ihdr(ctx, &ihdr)) != 0) {
        if (ret == SPNG_EWIDTH || ret == SPNG_EHEIGHT || ret == SPNG_EUSER_WIDTH ||
            ret == SPNG_EUSER_HEIGHT)
            rc = sd3_err_set(err, SD3_ENOMEM, "png: image dimensions exceed %d per side: %s",
                             SD3_PNG_MAX_DIM, spng_strerror(ret));
        else
            rc = sd3_err_set(err, SD3_EFORMAT, "png: bad header: %s", spng_strerror(ret));
        goto done;
    }
    if (ihdr.width == 0 || ihdr.height == 0 || ihdr.width > SD3_PNG_MAX_DIM ||
        ihdr.height > SD3_PNG_MAX_DIM || (uint64_t)ihdr.width * ihdr.height > SD3_PNG_MAX_PIXELS) {
        rc = sd3_err_set(err, SD3_ENOMEM, "png: image is %ux%u, max %dx%d", ihdr.width, ihdr.height,
                         SD3_PNG_MAX_DIM, SD3_PNG_MAX_DIM);
        goto done;
    }
    npix = (size_t)ihdr.width * ihdr.height;
    if ((ret = spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &rgba_size)) != 0 ||
        rgba_size != npix * 4) {
        rc = sd3_err_set(err, SD3_EFORMAT, "png: %ux%u: cannot convert to RGBA8: %s", ihdr.width,
                         ihdr.height, ret ? spng_strerror(ret) : "size mismatch");
        goto done;
    }
    if (!(rgba = malloc(rgba_size)) || !(rgb = malloc(npix * 3))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "png: %ux%u pixel buffer", ihdr.width, ihdr.height);
        goto done;
    }
    // FMT_RGBA8 expands grey, palette and 16-bit samples; DECODE_TRNS turns a tRNS
    // colour key into alpha.
    if ((ret = spng_decode_image(ctx, rgba, rgba_size, SPNG_FMT_RGBA8, SPNG_DECODE_TRNS)) != 0) {
        rc = sd3_err_set(err, SD3_EFORMAT, "png: %ux%u: corrupt or truncated image data: %s",
                         ihdr.width, ihdr.height, spng_strerror(ret));
        goto done;
    }
    // The chunks after the image data, up to IEND: a file cut after IDAT is still refused,
    // and text chunks placed after the image are seen.
    if ((ret = spng_decode_chunks(ctx)) != 0) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "png: %ux%u: truncated or corrupt after the image "
                         "data: %s",
                         ihdr.width, ihdr.height, spng_strerror(ret));
        goto done;
    }
    // libspng stops at IEND without checking its CRC: a file cut inside the IEND chunk
    // would pass, so the chunk must be there whole.
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    if (!memmem(data, size, iend, sizeof iend)) {
        rc = sd3_err_set(err, SD3_EFORMAT, "png: %ux%u: truncated (no complete IEND chunk)",
                         ihdr.width, ihdr.height);
        goto done;
    }
    for (size_t i = 0; i < npix; i++) {
        unsigned a = rgba[4 * i + 3];
        for (int c = 0; c < 3; c++) {
            unsigned v = rgba[4 * i + c];
            // alpha over white, rounded: (v*a + 255*(255-a) + 127) / 255
            rgb[3 * i + c] = (uint8_t)((v * a + 255u * (255u - a) + 127u) / 255u);
        }
    }
    if (parameters_out) {
        uint32_t n_text = 0;
        if (spng_get_text(ctx, NULL, &n_text) == 0 && n_text > 0) {
            if (!(texts = calloc(n_text, sizeof *texts))) {
                rc = sd3_err_set(err, SD3_ENOMEM, "png: %u text chunks", n_text);
                goto done;
            }
            if (spng_get_text(ctx, texts, &n_text) == 0) {
                for (uint32_t i = 0; i < n_text; i++) {
                    if (strcmp(texts[i].keyword, "parameters") != 0 || !texts[i].text)
                        continue;
                    size_t len = strnlen(texts[i].text, texts[i].length);
                    if (len > SD3_PNG_MAX_TEXT)
                        len = SD3_PNG_MAX_TEXT;
                    if (!(params = malloc(len + 1))) {
                        rc = sd3_err_set(err, SD3_ENOMEM, "png: parameters text");
                        goto done;
                    }
                    memcpy(params, texts[i].text, len);
                    params[len] = 0;
                    break;
                }
            }
        }
    }
    *rgb_out = rgb;
    rgb = NULL;
    *width = (int)ihdr.width;
    *height = (int)ihdr.height;
    if (parameters_out) {
        *parameters_out = params;
        params = NULL;
    }
done:
    free(params);
    free(texts);
    free(rgba);
    free(rgb);
    spng_ctx_free(ctx);
    return rc;
}

int
sd3_png_read(const char *path, uint8_t **rgb_out, int *width, int *height, char **parameters_out,
             sd3_err_t *err)
{
    FILE *f = NULL;
    uint8_t *data = NULL;
    long size;
    int rc;
    *rgb_out = NULL;
    *width = *height = 0;
    if (parameters_out)
        *parameters_out = NULL;
    if (!(f = fopen(path, "rb")))
        return sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: %s", path,
                           strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot seek (not a regular file?)", path);
        goto done;
    }
    if ((unsigned long)size > SD3_PNG_MAX_FILE) {
        rc = sd3_err_set(err, SD3_ENOMEM, "%s: %ld bytes, max %u MiB for a PNG", path, size,
                         SD3_PNG_MAX_FILE >> 20);
        goto done;
    }
    if (!(data = malloc(size ? (size_t)size : 1))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "%s: %ld bytes", path, size);
        goto done;
    }
    if (fread(data, 1, (size_t)size, f) != (size_t)size) {
        rc = sd3_err_set(err, SD3_EIO, "%s: short read", path);
        goto done;
    }
    rc = sd3_png_decode(data, (size_t)size, rgb_out, width, height, parameters_out, err);
    if (rc != 0)
        sd3_err_prefix(err, "%s", path);
done:
    free(data);
    if (f)
        fclose(f);
    return rc;
}
