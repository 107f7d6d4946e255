/*  test_png - sd3_png: infotext, RGB8 round trip with `parameters`, every colour type read
 *  back as RGB8 (alpha over white), and bad files refused with a clear error.  */
#include "sd3_png.h"
#include "sd3_test.h"

#include <spng.h>
#include <stdlib.h>
#include <string.h>

// CRC-32 of the PNG spec (for hand-made chunks).
static uint32_t
s_crc(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return c ^ 0xffffffffu;
}

static void
s_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

// Encodes raw PNG-format rows (any colour type) with libspng directly.
static uint8_t *
s_encode_raw(const void *img, size_t len, uint32_t w, uint32_t h, uint8_t color_type, uint8_t depth,
             const struct spng_plte *plte, const struct spng_trns *trns, size_t *size)
{
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ihdr = {.width = w, .height = h, .bit_depth = depth, .color_type = color_type};
    int ret = spng_set_ihdr(ctx, &ihdr);
    if (!ret && plte)
        ret = spng_set_plte(ctx, (struct spng_plte *)plte);
    if (!ret && trns)
        ret = spng_set_trns(ctx, (struct spng_trns *)trns);
    if (!ret)
        ret = spng_encode_image(ctx, img, len, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
    uint8_t *out = NULL;
    if (!ret)
        out = spng_get_png_buffer(ctx, size, &ret);
    CHECK_MSG(ret == 0 && out, "spng encode: %s", spng_strerror(ret));
    spng_ctx_free(ctx);
    return out;
}

static void
test_params_format(void)
{
    sd3_png_params_t p = {.prompt = "a cat, sitting",
                          .negative_prompt = "blurry",
                          .steps = 28,
                          .sampler = "Euler",
                          .cfg_scale = 4.5,
                          .seed = 42,
                          .width = 1024,
                          .height = 1024,
                          .model = "sd3-medium"};
    char *s = sd3_png_params_format(&p);
    const char *want = "a cat, sitting\nNegative prompt: blurry\nSteps: 28, Sampler: Euler, "
                       "CFG scale: 4.5, Seed: 42, Size: 1024x1024, Model: sd3-medium";
    CHECK_MSG(s && !strcmp(s, want), "got '%s'", s ? s : "(null)");
    free(s);
    // No negative line when empty; values with ',' or ':' quoted as A1111 does; img2img.
    p.negative_prompt = "";
    p.model = "my: model, v2";
    p.sampler = "DPM++ 2M";
    p.cfg_scale = 7;
    p.seed = 18446744073709551615ull;
    p.denoise = 0.6;
    p.extra = "Shift: 3";
    s = sd3_png_params_format(&p);
    want = "a cat, sitting\nSteps: 28, Sampler: DPM++ 2M, CFG scale: 7, "
           "Seed: 18446744073709551615, Size: 1024x1024, Model: \"my: model, v2\", "
           "Denoising strength: 0.6, Shift: 3";
    CHECK_MSG(s && !strcmp(s, want), "got '%s'", s ? s : "(null)");
    free(s);
}

static void
test_roundtrip(const char *text)
{
    const int w = 37, h = 19; // odd sizes
    uint8_t *rgb = malloc((size_t)w * h * 3), *back = NULL, *png = NULL;
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (uint8_t)(i * 131 + (i >> 5));
    size_t size = 0;
    sd3_err_t err = {0};
    char *params = NULL;
    int bw = 0, bh = 0;
    CHECK_MSG(sd3_png_encode(rgb, w, h, text, &png, &size, &err) == 0, "%s", err.msg);
    // The text chunk type: tEXt for ASCII, iTXt for UTF-8.
    bool ascii = true;
    for (const char *p = text; *p; p++)
        ascii = ascii && (unsigned char)*p < 0x80;
    CHECK(png && memmem(png, size, ascii ? "tEXtparameters" : "iTXtparameters", 14));
    CHECK_MSG(sd3_png_decode(png, size, &back, &bw, &bh, &params, &err) == 0, "%s", err.msg);
    CHECK(bw == w && bh == h);
    CHECK(back && !memcmp(back, rgb, (size_t)w * h * 3));
    CHECK_MSG(params && !strcmp(params, text), "text '%s'", params ? params : "(null)");
    free(back);
    free(params);
    back = NULL;
    params = NULL;
    // Through a file.
    char path[512];
    snprintf(path, sizeof path, "%s/rt.png", sd3_test_tmpdir());
    CHECK_MSG(sd3_png_write(path, rgb, w, h, text, &err) == 0, "%s", err.msg);
    CHECK_MSG(sd3_png_read(path, &back, &bw, &bh, &params, &err) == 0, "%s", err.msg);
    CHECK(back && bw == w && bh == h && !memcmp(back, rgb, (size_t)w * h * 3));
    CHECK(params && !strcmp(params, text));
    remove(path);
    free(back);
    free(params);
    free(png);
    free(rgb);
}

// Every colour type and depth becomes RGB8; alpha over white.
static void
test_colour_types(void)
{
    sd3_err_t err = {0};
    uint8_t *rgb = NULL, *png;
    size_t size;
    int w, h;
    // grey 8: [0, 128, 255]
    uint8_t g8[3] = {0, 128, 255};
    png = s_encode_raw(g8, 3, 3, 1, SPNG_COLOR_TYPE_GRAYSCALE, 8, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    CHECK(w == 3 && h == 1 && rgb && rgb[0] == 0 && rgb[3] == 128 && rgb[4] == 128 &&
          rgb[8] == 255);
    free(rgb), free(png), rgb = NULL;
    // grey 1-bit: 10100000 -> 255,0,255
    uint8_t g1[1] = {0xa0};
    png = s_encode_raw(g1, 1, 3, 1, SPNG_COLOR_TYPE_GRAYSCALE, 1, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    CHECK(rgb && rgb[0] == 255 && rgb[3] == 0 && rgb[6] == 255 && rgb[7] == 255);
    free(rgb), free(png), rgb = NULL;
    // grey+alpha 8: (0, a=0) -> white, (0, 255) -> black, (100, 128) -> over white
    uint8_t ga[6] = {0, 0, 0, 255, 100, 128};
    png = s_encode_raw(ga, 6, 3, 1, SPNG_COLOR_TYPE_GRAYSCALE_ALPHA, 8, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    unsigned want = (100u * 128u + 255u * 127u + 127u) / 255u; // 177
    CHECK_MSG(rgb && rgb[0] == 255 && rgb[3] == 0 && rgb[6] == want, "got %u %u %u",
              rgb ? rgb[0] : 0, rgb ? rgb[3] : 0, rgb ? rgb[6] : 0);
    free(rgb), free(png), rgb = NULL;
    // palette 4-bit with tRNS: index 0 red opaque, index 1 green transparent
    struct spng_plte plte = {.n_entries = 2};
    plte.entries[0] = (struct spng_plte_entry){255, 0, 0, 255};
    plte.entries[1] = (struct spng_plte_entry){0, 255, 0, 255};
    struct spng_trns trns = {.n_type3_entries = 2, .type3_alpha = {255, 0}};
    uint8_t p4[1] = {0x01}; // pixels 0, 1
    png = s_encode_raw(p4, 1, 2, 1, SPNG_COLOR_TYPE_INDEXED, 4, &plte, &trns, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    CHECK(rgb && w == 2 && rgb[0] == 255 && rgb[1] == 0 && rgb[2] == 0);
    CHECK(rgb && rgb[3] == 255 && rgb[4] == 255 && rgb[5] == 255);
    free(rgb), free(png), rgb = NULL;
    // RGBA 8: half-transparent blue
    uint8_t rgba[4] = {0, 0, 255, 128};
    png = s_encode_raw(rgba, 4, 1, 1, SPNG_COLOR_TYPE_TRUECOLOR_ALPHA, 8, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    unsigned wb = (255u * 127u + 127u) / 255u; // 127
    CHECK(rgb && rgb[0] == wb && rgb[1] == wb && rgb[2] == 255);
    free(rgb), free(png), rgb = NULL;
    // RGB 16-bit (libspng takes host-endian samples): 0xffff, 0x0000, 0x80ff -> 255, 0, 128
    uint16_t r16[3] = {0xffff, 0x0000, 0x80ff};
    png = s_encode_raw(r16, 6, 1, 1, SPNG_COLOR_TYPE_TRUECOLOR, 16, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    CHECK_MSG(rgb && rgb[0] == 255 && rgb[1] == 0 && rgb[2] == 128, "got %u %u %u",
              rgb ? rgb[0] : 0, rgb ? rgb[1] : 0, rgb ? rgb[2] : 0);
    free(rgb), free(png), rgb = NULL;
    // grey+alpha 16-bit, opaque
    uint16_t ga16[2] = {0x40ff, 0xffff};
    png = s_encode_raw(ga16, 4, 1, 1, SPNG_COLOR_TYPE_GRAYSCALE_ALPHA, 16, NULL, NULL, &size);
    CHECK_MSG(sd3_png_decode(png, size, &rgb, &w, &h, NULL, &err) == 0, "%s", err.msg);
    CHECK_MSG(rgb && rgb[0] == 0x40 && rgb[2] == 0x40, "got %u (%s)", rgb ? rgb[0] : 0, err.msg);
    free(rgb), free(png), rgb = NULL;
}

static void
test_bad_files(void)
{
    sd3_err_t err = {0};
    uint8_t *rgb = NULL, *png = NULL;
    char *params = NULL;
    size_t size = 0;
    int w, h;
    uint8_t img[8 * 8 * 3];
    for (size_t i = 0; i < sizeof img; i++)
        img[i] = (uint8_t)(i * 7);
    CHECK(sd3_png_encode(img, 8, 8, "x", &png, &size, &err) == 0);
    // Every truncation is refused with SD3_EFORMAT and nothing leaks.
    int bad = 0;
    for (size_t n = 0; n < size; n++) {
        sd3_err_clear(&err);
        int rc = sd3_png_decode(png, n, &rgb, &w, &h, &params, &err);
        if (rc != SD3_EFORMAT || rgb || params || !err.msg[0]) {
            if (!bad++)
                fprintf(stderr, "truncated at %zu of %zu: rc=%d '%s'\n", n, size, rc, err.msg);
            free(rgb), free(params), rgb = NULL, params = NULL;
        }
    }
    CHECK_MSG(bad == 0, "%d truncations not refused", bad);
    // A flipped byte in every position: never a crash; a bad header or data CRC is refused.
    uint8_t *copy = malloc(size);
    for (size_t i = 0; i < size; i++) {
        memcpy(copy, png, size);
        copy[i] ^= 0x55;
        sd3_err_clear(&err);
        if (sd3_png_decode(copy, size, &rgb, &w, &h, &params, &err) == 0)
            free(rgb), free(params);
        rgb = NULL, params = NULL;
    }
    free(copy);
    // Garbage.
    sd3_err_clear(&err);
    CHECK(sd3_png_decode("GIF89a....", 10, &rgb, &w, &h, NULL, &err) == SD3_EFORMAT);
    CHECK(strstr(err.msg, "not a PNG") != NULL);
    // Huge dimensions: a valid header declaring 20000 x 20000 is refused before allocation
    // (the data after it is missing, so a reader that allocated first would also fail).
    uint8_t huge[8 + 25];
    memcpy(huge, png, 8 + 25);
    s_be32(huge + 16, 20000);
    s_be32(huge + 20, 20000);
    s_be32(huge + 29, s_crc(huge + 12, 17));
    sd3_err_clear(&err);
    CHECK(sd3_png_decode(huge, sizeof huge, &rgb, &w, &h, NULL, &err) == SD3_ENOMEM);
    CHECK_MSG(strstr(err.msg, "16384") != NULL, "%s", err.msg);
    // 16384 x 16385 pixels: within the side cap only on one side.
    s_be32(huge + 16, 1);
    s_be32(huge + 20, 16385);
    s_be32(huge + 29, s_crc(huge + 12, 17));
    sd3_err_clear(&err);
    CHECK(sd3_png_decode(huge, sizeof huge, &rgb, &w, &h, NULL, &err) == SD3_ENOMEM);
    // Missing file.
    sd3_err_clear(&err);
    CHECK(sd3_png_read("/nonexistent/x.png", &rgb, &w, &h, NULL, &err) == SD3_ENOTFOUND);
    free(png);
    // Writing refuses bad sizes.
    sd3_err_clear(&err);
    CHECK(sd3_png_encode(img, 0, 8, NULL, &png, &size, &err) == SD3_EINVAL && !png);
}

int
main(void)
{
    test_params_format();
    test_roundtrip("a photo of a cat\nNegative prompt: blurry\nSteps: 28, Sampler: Euler, "
                   "CFG scale: 4.5, Seed: 42, Size: 1024x1024, Model: sd3-medium");
    test_roundtrip("caf\xc3\xa9 \xf0\x9f\x90\xb1 \xe7\x8c\xab\nSteps: 1, Sampler: Euler");
    test_colour_types();
    test_bad_files();
    return TEST_RESULT();
}
