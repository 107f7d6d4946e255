/*  sd3_http_json - the HTTP API's request bodies and replies, as pure functions
 *
 *  What sd3_http (the server) does with bytes, without a socket: parse an OpenAI-style
 *  `POST /v1/images/generations` or an AUTOMATIC1111-style `POST /sdapi/v1/txt2img` body
 *  into a job (one sd3_wire_generate_t plus the image count), and render the replies:
 *  OpenAI's {"created", "data": [{"b64_json", "revised_prompt"}]}, A1111's {"images",
 *  "parameters", "info": "<JSON string>"}, and errors as {"error": {"message", "type",
 *  "code", "param"}} (plus FastAPI's "detail" on /sdapi paths).
 *
 *  Bodies come from the network: every field is type- and range-checked, strings must be
 *  valid UTF-8 and fit the wire's caps, and a refusal is SD3_EINVAL with a message naming
 *  the field, what was found and what is wanted (it goes to the client as a 400). Unknown
 *  fields are ignored (clients send extras such as "user", "quality", "save_images").
 *
 *  Called by sd3_http.c, tests/unit/test_http_json.c and tests/fuzz/fuzz_http_body.c.
 *  No globals, no I/O: thread-safe.  */
#pragma once
#include "sd3_err.h"
#include "sd3_wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD3_HTTP_MAX_IMAGES 4 // images per request (OpenAI n; A1111 batch_size*n_iter)
#define SD3_HTTP_MAX_SEED   ((1ull << 53) - 1) // seeds travel as JSON numbers (doubles)
#define SD3_HTTP_MAX_SIDE   8192               // pixels per side (sd3_stage.h SD3_GEN_MAX_SIDE)
#define SD3_HTTP_MAX_STEPS  1000

typedef enum { SD3_HTTP_API_OPENAI = 0, SD3_HTTP_API_A1111 } sd3_http_api_t;

// A parsed generation request. Image i (0-based) runs gen with seed gen.seed + i.
typedef struct {
    sd3_http_api_t api;
    sd3_wire_generate_t gen; // 0 in width/height/steps/cfg = the model's default
    int n_images;            // 1..SD3_HTTP_MAX_IMAGES
    int batch_size, n_iter;  // A1111 (n_images = batch_size * n_iter); OpenAI: n, 1
    bool seed_drawn;         // the client gave no seed (or -1): gen.seed is the drawn one
    bool b64;                // response_format b64_json (the only one served)
} sd3_http_job_t;

// Parses an OpenAI images/generations body (len bytes, no NUL needed). Fields: prompt
// (required, non-empty), model (default_model when absent), n 1..4, size "WxH" or "auto",
// response_format "b64_json" ("url" is refused: we serve no files), output_format "png",
// and the extensions negative_prompt, steps, cfg_scale, seed (-1 = random), sampler.
// random_seed: the seed to use when the client gives none (the caller draws it).
// SD3_EINVAL naming the problem (malformed JSON: the byte offset).
int sd3_http_parse_openai(const char *body, size_t len, const char *default_model,
                          uint64_t random_seed, sd3_http_job_t *job, sd3_err_t *err);
// Same for an A1111 txt2img body: prompt, negative_prompt, steps, cfg_scale, width, height,
// seed (-1 = random), sampler_name (or sampler_index), batch_size, n_iter.
int sd3_http_parse_a1111(const char *body, size_t len, const char *default_model,
                         uint64_t random_seed, sd3_http_job_t *job, sd3_err_t *err);

// "Euler", "DPM++ 2M" for a sampler; "" for the model's default.
const char *sd3_http_sampler_name(sd3_wire_sampler_t sampler);
// Accepts the A1111 names and common spellings ("euler", "k_euler", "dpmpp_2m",
// "DPM++ 2M Karras"...), case-insensitive; "" or "default" = the model's default.
int sd3_http_sampler_parse(const char *name, sd3_wire_sampler_t *out, sd3_err_t *err);
// "1024x768" -> 1024, 768 ("auto" -> 0, 0). SD3_EINVAL unless both sides are 16..8192 and
// multiples of 16.
int sd3_http_parse_size(const char *text, uint32_t *width, uint32_t *height, sd3_err_t *err);

// One finished image for a reply (all borrowed).
typedef struct {
    const uint8_t *png;
    size_t png_size;
    uint64_t seed;
    const char *infotext;            // the PNG's `parameters` text; NULL: built from used/job
    const sd3_wire_generate_t *used; // the request as the controller ran it (defaults
                                     // resolved), NULL: the job's own values
} sd3_http_image_t;

// Replies; fresh NUL-terminated strings (free them), *len_out = strlen. NULL if out of memory.
// created: unix seconds.
char *sd3_http_reply_openai(const sd3_http_job_t *job, const sd3_http_image_t *images, int n,
                            int64_t created, size_t *len_out);
char *sd3_http_reply_a1111(const sd3_http_job_t *job, const sd3_http_image_t *images, int n,
                           int64_t created, size_t *len_out);
// {"error": {"message", "type", "param": null, "code"}} for an HTTP status (type and code
// follow OpenAI: invalid_request_error, authentication_error, rate_limit_error, server_error).
// a1111: adds "detail": message (FastAPI's shape).
char *sd3_http_reply_error(bool a1111, int http_status, const char *message, size_t *len_out);

// The HTTP status for an SD3_E* code: EINVAL/ENOTSUP 400, ENOTFOUND 404, EFULL 429,
// ETIMEDOUT 504, EIO/EPROTO 502 (the controller could not be reached or answered nonsense),
// anything else 500.
int sd3_http_status_of(int code);

// Standard base64 (RFC 4648, padded) of n bytes; fresh string, NULL if out of memory.
char *sd3_http_base64(const uint8_t *data, size_t n, size_t *len_out);
// The text of the first tEXt or iTXt (uncompressed) chunk keyed `key` in PNG bytes; fresh
// string or NULL (absent, malformed or compressed). Walks the chunks with bounds checks.
char *sd3_http_png_text(const uint8_t *png, size_t size, const char *key);
// Offset of the first byte that breaks UTF-8 (overlong, surrogate, past U+10FFFF,
// truncated), or -1 when all of s[0..n) is valid.
long sd3_http_utf8_check(const char *s, size_t n);
