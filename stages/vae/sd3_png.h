/*  sd3_png - PNG in and out for the images the pipeline makes and takes (libspng)
 *
 *  Writing: RGB8, 8-bit truecolour, non-interlaced, with the generation settings in a text
 *  chunk keyed `parameters`, the way AUTOMATIC1111's web UI stores them, so existing tools
 *  (A1111 "PNG Info", ComfyUI, exiftool, civitai) show them. The chunk is tEXt when the
 *  string is plain ASCII and iTXt (UTF-8) otherwise, as PIL's PngInfo.add_text does for A1111.
 *
 *  Reading (img2img input): any colour type and bit depth (grey, grey+alpha, palette with or
 *  without tRNS, RGB, RGBA; 1/2/4/8/16 bits) becomes RGB8. Alpha (and tRNS) is composited
 *  on a white background: out = (c*a + 255*(255-a)) / 255, rounded; opaque images come out
 *  unchanged. 16-bit samples keep their high byte (libspng). Gamma chunks are ignored
 *  (sRGB assumed). Truncated, corrupt or non-PNG data fails with SD3_EFORMAT; images past
 *  SD3_PNG_MAX_DIM on a side or SD3_PNG_MAX_PIXELS in total fail with SD3_ENOMEM before any
 *  pixel buffer is allocated.
 *
 *  Called by the controller (sd3ctl generate, the HTTP API) and by the VAE stage's tests.
 *  Pure functions: no globals, thread-safe.  */
#pragma once
#include "sd3_err.h"

#include <stddef.h>
#include <stdint.h>

#define SD3_PNG_MAX_DIM    16384                 // per side
#define SD3_PNG_MAX_PIXELS (16384ull * 16384ull) // width * height
#define SD3_PNG_MAX_FILE   (512u << 20)          // bytes read from a file
#define SD3_PNG_MAX_TEXT   (1u << 20)            // bytes of one text chunk we keep

// What goes into the `parameters` string (A1111 infotext). Strings are borrowed.
typedef struct {
    const char *prompt;          // first line(s); NULL = ""
    const char *negative_prompt; // NULL or "" = no "Negative prompt:" line (A1111 omits it)
    int steps;
    const char *sampler; // A1111 spelling: "Euler", "DPM++ 2M"
    double cfg_scale;
    uint64_t seed;
    int width, height;
    const char *model; // NULL = no "Model:" field
    double denoise;    // img2img strength; "Denoising strength" only when 0 < x < 1
    const char *extra; // NULL, or more "Key: value, ..." fields appended as is
} sd3_png_params_t;

// The A1111 infotext:
//   "<prompt>\nNegative prompt: <neg>\nSteps: 28, Sampler: Euler, CFG scale: 4.5,
//    Seed: 42, Size: 1024x1024, Model: sd3-medium[, Denoising strength: 0.6][, extra]"
// (the second part on one line). A value holding ',', ':' or '"' is quoted the way A1111
// quotes it. Fresh string (free it), NULL if out of memory.
char *sd3_png_params_format(const sd3_png_params_t *params);

// Encodes rgb (height rows of width*3 bytes, RGB8, top row first) as PNG into a fresh
// malloc'd buffer (*png_out, *size_out; free it). `parameters` NULL = no text chunk.
int sd3_png_encode(const uint8_t *rgb, int width, int height, const char *parameters,
                   uint8_t **png_out, size_t *size_out, sd3_err_t *err);
// Same, written to `path` (replaced atomically: written beside it, then renamed).
int sd3_png_write(const char *path, const uint8_t *rgb, int width, int height,
                  const char *parameters, sd3_err_t *err);

// Decodes PNG bytes into a fresh RGB8 buffer (*rgb_out, free it) of *width x *height.
// parameters_out: NULL, or receives the `parameters` text (fresh string, free it) or NULL
// when the file has none.
int sd3_png_decode(const void *data, size_t size, uint8_t **rgb_out, int *width, int *height,
                   char **parameters_out, sd3_err_t *err);
// Same from a file (at most SD3_PNG_MAX_FILE bytes).
int sd3_png_read(const char *path, uint8_t **rgb_out, int *width, int *height,
                 char **parameters_out, sd3_err_t *err);
