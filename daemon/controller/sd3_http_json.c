/*  sd3_http_json - the HTTP API's request bodies and replies (see sd3_http_json.h)
 *
 *  cJSON does the JSON; what it does not check we do here: the body holds no NUL byte and
 *  nothing but blanks after the value, strings are UTF-8 (cJSON passes raw bytes through),
 *  numbers that stand for counts are integral and in range, prompts fit the wire.  */
#include "sd3_http_json.h"

#include "sd3_png.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

// ---- small helpers ------------------------------------------------------------------------

long
sd3_http_utf8_check(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int more;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            more = 1, cp = c & 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2, cp = c & 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return (long)i; // continuation byte first, overlong C0/C1, or F5..FF
        }
        if (n - i <= (size_t)more)
            return (long)i;
        for (int k = 1; k <= more; k++) {
            unsigned d = p[i + (size_t)k];
            if ((d & 0xC0) != 0x80)
                return (long)i;
            cp = cp << 6 | (d & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return (long)i;
        i += (size_t)more + 1;
    }
    return -1;
}

char *
sd3_http_base64(const uint8_t *data, size_t n, size_t *len_out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t groups = n / 3 + (n % 3 != 0), len;
    if (sd3_size_mul(groups, 4, &len) != 0 || len == SIZE_MAX)
        return NULL;
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)data[i] << 16;
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = tab[v >> 6 & 63];
        *o++ = '=';
    }
    *o = 0;
    if (len_out)
        *len_out = (size_t)(o - out);
    return out;
}

static uint32_t
s_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

char *
sd3_http_png_text(const uint8_t *png, size_t size, const char *key)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    size_t klen = strlen(key);
    if (!png || size < 8 || memcmp(png, sig, 8) != 0)
        return NULL;
    size_t at = 8;
    while (size - at >= 12) {
        uint32_t len = s_be32(png + at);
        const uint8_t *type = png + at + 4, *data = png + at + 8;
        if (len > size - at - 12)
            return NULL; // chunk runs past the end
        if (memcmp(type, "IEND", 4) == 0)
            return NULL;
        bool text = memcmp(type, "tEXt", 4) == 0, itxt = memcmp(type, "iTXt", 4) == 0;
        if ((text || itxt) && len > klen && memcmp(data, key, klen) == 0 && data[klen] == 0) {
            size_t off = klen + 1;
            if (itxt) {
                // compression flag, method, language tag\0, translated keyword\0
                if (len - off < 2 || data[off] != 0)
                    return NULL; // compressed iTXt: not ours to inflate
                off += 2;
                for (int field = 0; field < 2; field++) {
                    const uint8_t *z = memchr(data + off, 0, len - off);
                    if (!z)
                        return NULL;
                    off = (size_t)(z - data) + 1;
                }
            }
            size_t n = len - off;
            char *out = malloc(n + 1);
            if (!out)
                return NULL;
            memcpy(out, data + off, n);
            out[n] = 0;
            if (memchr(out, 0, n) || sd3_http_utf8_check(out, n) >= 0) {
                free(out);
                return NULL;
            }
            return out;
        }
        at += 12 + (size_t)len;
    }
    return NULL;
}

// ---- samplers and sizes -------------------------------------------------------------------

const char *
sd3_http_sampler_name(sd3_wire_sampler_t sampler)
{
    switch (sampler) {
    case SD3_WIRE_SAMPLER_EULER:
        return "Euler";
    case SD3_WIRE_SAMPLER_DPMPP_2M:
        return "DPM++ 2M";
    default:
        return "";
    }
}

int
sd3_http_sampler_parse(const char *name, sd3_wire_sampler_t *out, sd3_err_t *err)
{
    // Normalise: lower case, drop blanks, '_' and '-', '+' -> 'p'; drop a "k" prefix
    // (k-diffusion names) and a "karras"/"sgmuniform" scheduler suffix (our schedule is
    // the model's own; the sampler is what matters).
    char norm[64];
    size_t n = 0;
    for (const char *p = name; *p && n + 1 < sizeof norm; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == ' ' || c == '_' || c == '-' || c == '\t')
            continue;
        norm[n++] = c == '+' ? 'p' : (char)tolower(c);
    }
    norm[n] = 0;
    const char *s = norm;
    if (s[0] == 'k' && (strncmp(s + 1, "euler", 5) == 0 || strncmp(s + 1, "dpm", 3) == 0))
        s++;
    size_t len = strlen(s);
    static const char *const suffix[] = {"karras", "sgmuniform", "simple", "normal"};
    for (size_t k = 0; k < sizeof suffix / sizeof suffix[0]; k++) {
        size_t sl = strlen(suffix[k]);
        if (len > sl && strcmp(s + len - sl, suffix[k]) == 0) {
            norm[(size_t)(s - norm) + len - sl] = 0;
            break;
        }
    }
    if (s[0] == 0 || strcmp(s, "default") == 0) {
        *out = SD3_WIRE_SAMPLER_DEFAULT;
        return 0;
    }
    if (strcmp(s, "euler") == 0) {
        *out = SD3_WIRE_SAMPLER_EULER;
        return 0;
    }
    if (strcmp(s, "dpmpp2m") == 0) {
        *out = SD3_WIRE_SAMPLER_DPMPP_2M;
        return 0;
    }
    return sd3_err_set(err, SD3_EINVAL,
                       "sampler '%.60s' is not supported; want \"Euler\" or "
                       "\"DPM++ 2M\"",
                       name);
}

int
sd3_http_parse_size(const char *text, uint32_t *width, uint32_t *height, sd3_err_t *err)
{
    if (strcmp(text, "auto") == 0) {
        *width = *height = 0;
        return 0;
    }
    const char *p = text;
    unsigned long v[2];
    for (int k = 0; k < 2; k++) {
        if (!isdigit((unsigned char)*p))
            goto bad;
        char *end = NULL;
        v[k] = strtoul(p, &end, 10);
        if (end - p > 6)
            goto bad;
        p = end;
        if (k == 0) {
            if (*p != 'x' && *p != 'X')
                goto bad;
            p++;
        }
    }
    if (*p != 0)
        goto bad;
    for (int k = 0; k < 2; k++)
        if (v[k] < 16 || v[k] > SD3_HTTP_MAX_SIDE || v[k] % 16 != 0)
            return sd3_err_set(err, SD3_EINVAL,
                               "size '%.40s': each side must be a multiple of 16 in 16..%d", text,
                               SD3_HTTP_MAX_SIDE);
    *width = (uint32_t)v[0];
    *height = (uint32_t)v[1];
    return 0;
bad:
    return sd3_err_set(err, SD3_EINVAL,
                       "size '%.40s' is malformed; want \"WIDTHxHEIGHT\" such "
                       "as \"1024x1024\", or \"auto\"",
                       text);
}

// ---- typed field access -------------------------------------------------------------------

static const char *
s_type_name(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    if (cJSON_IsNull(v))
        return "null";
    return "invalid";
}

// A field that is absent or null counts as absent (clients send null for "default").
static const cJSON *
s_field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

// String field into out[cap]. 1 when present, 0 when absent, < 0 on error.
static int
s_get_string(const cJSON *obj, const char *name, char *out, size_t cap, sd3_err_t *err)
{
    const cJSON *v = s_field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsString(v) || !v->valuestring)
        return sd3_err_set(err, SD3_EINVAL, "'%s' must be a string, found %s", name,
                           s_type_name(v));
    size_t n = strlen(v->valuestring);
    if (n >= cap)
        return sd3_err_set(err, SD3_EINVAL, "'%s' is %zu bytes long, at most %zu", name, n,
                           cap - 1);
    long bad = sd3_http_utf8_check(v->valuestring, n);
    if (bad >= 0)
        return sd3_err_set(err, SD3_EINVAL, "'%s' is not valid UTF-8 (byte %ld)", name, bad);
    memcpy(out, v->valuestring, n + 1);
    return 1;
}

// Integral number field in [lo, hi]. 1 present, 0 absent, < 0 error.
static int
s_get_int(const cJSON *obj, const char *name, double lo, double hi, int64_t *out, sd3_err_t *err)
{
    const cJSON *v = s_field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return sd3_err_set(err, SD3_EINVAL, "'%s' must be an integer, found %s", name,
                           s_type_name(v));
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return sd3_err_set(err, SD3_EINVAL, "'%s' must be an integer, found %g", name, d);
    if (d < lo || d > hi)
        return sd3_err_set(err, SD3_EINVAL, "'%s' is %.17g, want %.17g..%.17g", name, d, lo, hi);
    *out = (int64_t)d;
    return 1;
}

// Finite number field in (lo, hi] (lo_open) or [lo, hi].
static int
s_get_number(const cJSON *obj, const char *name, double lo, bool lo_open, double hi, double *out,
             sd3_err_t *err)
{
    const cJSON *v = s_field(obj, name);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v))
        return sd3_err_set(err, SD3_EINVAL, "'%s' must be a number, found %s", name,
                           s_type_name(v));
    double d = v->valuedouble;
    if (!isfinite(d) || d > hi || d < lo || (lo_open && d == lo))
        return sd3_err_set(err, SD3_EINVAL, "'%s' is %g, want %s%g, %g]", name, d,
                           lo_open ? "(" : "[", lo, hi);
    *out = d;
    return 1;
}

// Parses the body into a JSON object (fresh; cJSON_Delete it).
static cJSON *
s_parse_object(const char *body, size_t len, sd3_err_t *err)
{
    if (!body || len == 0) {
        sd3_err_set(err, SD3_EINVAL, "request body is empty; want a JSON object");
        return NULL;
    }
    const char *nul = memchr(body, 0, len);
    if (nul) {
        sd3_err_set(err, SD3_EINVAL, "request body holds a NUL byte at offset %zu",
                    (size_t)(nul - body));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        sd3_err_set(err, SD3_EINVAL, "malformed JSON at byte %zu of %zu", at, len);
        return NULL;
    }
    size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : len;
    for (size_t i = at; i < len; i++) {
        if (!isspace((unsigned char)body[i])) {
            sd3_err_set(err, SD3_EINVAL,
                        "malformed JSON: unexpected data after the value at "
                        "byte %zu",
                        i);
            cJSON_Delete(root);
            return NULL;
        }
    }
    if (!cJSON_IsObject(root)) {
        sd3_err_set(err, SD3_EINVAL, "request body must be a JSON object, found %s",
                    s_type_name(root));
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void
s_job_init(sd3_http_job_t *job, sd3_http_api_t api, const char *default_model)
{
    memset(job, 0, sizeof *job);
    job->api = api;
    job->n_images = job->batch_size = job->n_iter = 1;
    job->b64 = true;
    if (default_model)
        snprintf(job->gen.model, sizeof job->gen.model, "%s", default_model);
}

// Fields both APIs share: negative_prompt, steps, cfg_scale, seed, and the sampler field
// under its name in this API.
static int
s_common(const cJSON *root, sd3_http_job_t *job, const char *sampler_field, uint64_t random_seed,
         sd3_err_t *err)
{
    sd3_wire_generate_t *g = &job->gen;
    int64_t iv = 0;
    double dv = 0;
    int rc;
    if (s_get_string(root, "negative_prompt", g->negative, sizeof g->negative, err) < 0)
        return SD3_EINVAL;
    if ((rc = s_get_int(root, "steps", 0, SD3_HTTP_MAX_STEPS, &iv, err)) < 0)
        return rc;
    if (rc)
        g->steps = (uint32_t)iv; // 0: the model's default
    if ((rc = s_get_number(root, "cfg_scale", 0, true, 100, &dv, err)) < 0)
        return rc;
    if (rc)
        g->cfg = (float)dv;
    // seeds seed .. seed + n - 1 must stay representable as JSON numbers
    if ((rc = s_get_int(root, "seed", -1, (double)(SD3_HTTP_MAX_SEED - SD3_HTTP_MAX_IMAGES), &iv,
                        err)) < 0)
        return rc;
    if (rc && iv >= 0) {
        g->seed = (uint64_t)iv;
    } else {
        g->seed = random_seed & 0xFFFFFFFFu; // A1111's random seeds are 32-bit
        job->seed_drawn = true;
    }
    g->seed_random = false; // we draw it, so the reply can name it
    char name[64];
    if ((rc = s_get_string(root, sampler_field, name, sizeof name, err)) < 0)
        return rc;
    if (rc && sd3_http_sampler_parse(name, &g->sampler, err) != 0)
        return sd3_err_prefix(err, "'%s'", sampler_field);
    return 0;
}

int
sd3_http_parse_openai(const char *body, size_t len, const char *default_model, uint64_t random_seed,
                      sd3_http_job_t *job, sd3_err_t *err)
{
    s_job_init(job, SD3_HTTP_API_OPENAI, default_model);
    cJSON *root = s_parse_object(body, len, err);
    if (!root)
        return SD3_EINVAL;
    sd3_wire_generate_t *g = &job->gen;
    char text[64];
    int64_t iv = 0;
    int rc = s_get_string(root, "prompt", g->prompt, sizeof g->prompt, err);
    if (rc < 0)
        goto fail;
    if (rc == 0 || g->prompt[0] == 0) {
        rc = sd3_err_set(err, SD3_EINVAL, "'prompt' is required and must not be empty");
        goto fail;
    }
    if ((rc = s_get_string(root, "model", g->model, sizeof g->model, err)) < 0)
        goto fail;
    if ((rc = s_get_int(root, "n", 1, SD3_HTTP_MAX_IMAGES, &iv, err)) < 0)
        goto fail;
    if (rc)
        job->n_images = job->batch_size = (int)iv;
    if ((rc = s_get_string(root, "size", text, sizeof text, err)) < 0)
        goto fail;
    if (rc && (rc = sd3_http_parse_size(text, &g->width, &g->height, err)) < 0)
        goto fail;
    if ((rc = s_get_string(root, "response_format", text, sizeof text, err)) < 0)
        goto fail;
    if (rc && strcmp(text, "b64_json") != 0) {
        rc = strcmp(text, "url") == 0
                 ? sd3_err_set(err, SD3_EINVAL,
                               "response_format 'url' is not supported: this server stores "
                               "no files; use \"b64_json\"")
                 : sd3_err_set(err, SD3_EINVAL,
                               "response_format '%.40s' is unknown; want \"b64_json\"", text);
        goto fail;
    }
    if ((rc = s_get_string(root, "output_format", text, sizeof text, err)) < 0)
        goto fail;
    if (rc && strcasecmp(text, "png") != 0) {
        rc = sd3_err_set(err, SD3_EINVAL, "output_format '%.40s' is not supported; want \"png\"",
                         text);
        goto fail;
    }
    if ((rc = s_common(root, job, "sampler", random_seed, err)) < 0)
        goto fail;
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    return rc < 0 ? rc : SD3_EINVAL;
}

int
sd3_http_parse_a1111(const char *body, size_t len, const char *default_model, uint64_t random_seed,
                     sd3_http_job_t *job, sd3_err_t *err)
{
    s_job_init(job, SD3_HTTP_API_A1111, default_model);
    cJSON *root = s_parse_object(body, len, err);
    if (!root)
        return SD3_EINVAL;
    sd3_wire_generate_t *g = &job->gen;
    int64_t iv = 0;
    int rc;
    // A1111 accepts an empty prompt (the model draws unconditioned); so do we.
    if ((rc = s_get_string(root, "prompt", g->prompt, sizeof g->prompt, err)) < 0)
        goto fail;
    const char *side[2] = {"width", "height"};
    uint32_t *dst[2] = {&g->width, &g->height};
    for (int k = 0; k < 2; k++) {
        if ((rc = s_get_int(root, side[k], 0, SD3_HTTP_MAX_SIDE, &iv, err)) < 0)
            goto fail;
        if (rc && iv != 0 && (iv < 16 || iv % 16 != 0)) {
            rc = sd3_err_set(err, SD3_EINVAL, "'%s' is %lld, want a multiple of 16 in 16..%d",
                             side[k], (long long)iv, SD3_HTTP_MAX_SIDE);
            goto fail;
        }
        if (rc)
            *dst[k] = (uint32_t)iv;
    }
    if ((rc = s_get_int(root, "batch_size", 1, SD3_HTTP_MAX_IMAGES, &iv, err)) < 0)
        goto fail;
    if (rc)
        job->batch_size = (int)iv;
    if ((rc = s_get_int(root, "n_iter", 1, SD3_HTTP_MAX_IMAGES, &iv, err)) < 0)
        goto fail;
    if (rc)
        job->n_iter = (int)iv;
    job->n_images = job->batch_size * job->n_iter;
    if (job->n_images > SD3_HTTP_MAX_IMAGES) {
        rc = sd3_err_set(err, SD3_EINVAL, "batch_size * n_iter is %d, at most %d", job->n_images,
                         SD3_HTTP_MAX_IMAGES);
        goto fail;
    }
    const char *sampler_field = s_field(root, "sampler_name") || !s_field(root, "sampler_index")
                                    ? "sampler_name"
                                    : "sampler_index";
    if ((rc = s_common(root, job, sampler_field, random_seed, err)) < 0)
        goto fail;
    cJSON_Delete(root);
    return 0;
fail:
    cJSON_Delete(root);
    return rc < 0 ? rc : SD3_EINVAL;
}

// ---- replies ------------------------------------------------------------------------------

int
sd3_http_status_of(int code)
{
    switch (code) {
    case SD3_OK:
        return 200;
    case SD3_EINVAL:
    case SD3_ENOTSUP:
        return 400;
    case SD3_ENOTFOUND:
        return 404;
    case SD3_EFULL:
        return 429;
    case SD3_ETIMEDOUT:
        return 504;
    case SD3_EIO:
    case SD3_EPROTO:
        return 502;
    default:
        return 500;
    }
}

char *
sd3_http_reply_error(bool a1111, int http_status, const char *message, size_t *len_out)
{
    const char *type = "invalid_request_error", *code = "invalid_request";
    switch (http_status) {
    case 401:
        type = "authentication_error", code = "invalid_api_key";
        break;
    case 404:
        code = "not_found";
        break;
    case 405:
        code = "method_not_allowed";
        break;
    case 413:
        code = "request_too_large";
        break;
    case 429:
        type = "rate_limit_error", code = "queue_full";
        break;
    case 502:
        type = "server_error", code = "bad_gateway";
        break;
    case 503:
        type = "server_error", code = "unavailable";
        break;
    case 504:
        type = "server_error", code = "timeout";
        break;
    default:
        if (http_status >= 500)
            type = "server_error", code = "internal_error";
        break;
    }
    // The message may carry bytes a client sent; JSON needs valid UTF-8.
    char clean[SD3_WIRE_MSG_MAX];
    snprintf(clean, sizeof clean, "%s", message ? message : "");
    for (long bad; (bad = sd3_http_utf8_check(clean, strlen(clean))) >= 0;)
        clean[bad] = '?';
    cJSON *root = cJSON_CreateObject(), *e = cJSON_CreateObject();
    if (!root || !e) {
        cJSON_Delete(root);
        cJSON_Delete(e);
        return NULL;
    }
    cJSON_AddItemToObject(root, "error", e);
    cJSON_AddStringToObject(e, "message", clean);
    cJSON_AddStringToObject(e, "type", type);
    cJSON_AddNullToObject(e, "param");
    cJSON_AddStringToObject(e, "code", code);
    if (a1111)
        cJSON_AddStringToObject(root, "detail", clean);
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (out && len_out)
        *len_out = strlen(out);
    return out;
}

// The values one image ran with: the controller's echo when it sent one, else the job's.
static const sd3_wire_generate_t *
s_used(const sd3_http_job_t *job, const sd3_http_image_t *im)
{
    return im && im->used ? im->used : &job->gen;
}

// Fresh infotext of image im (its PNG's when given, else formatted like A1111's).
static char *
s_infotext(const sd3_http_job_t *job, const sd3_http_image_t *im)
{
    if (im->infotext)
        return strdup(im->infotext);
    const sd3_wire_generate_t *g = s_used(job, im);
    sd3_png_params_t p = {
        .prompt = g->prompt,
        .negative_prompt = g->negative,
        .steps = (int)g->steps,
        .sampler = sd3_http_sampler_name(g->sampler)[0] ? sd3_http_sampler_name(g->sampler) : NULL,
        .cfg_scale = g->cfg,
        .seed = im->seed,
        .width = (int)g->width,
        .height = (int)g->height,
        .model = g->model[0] ? g->model : NULL,
    };
    return sd3_png_params_format(&p);
}

char *
sd3_http_reply_openai(const sd3_http_job_t *job, const sd3_http_image_t *images, int n,
                      int64_t created, size_t *len_out)
{
    char *out = NULL;
    char *b64[SD3_HTTP_MAX_IMAGES] = {0};
    cJSON *root = cJSON_CreateObject(), *data = cJSON_CreateArray();
    if (!root || !data || n < 0 || n > SD3_HTTP_MAX_IMAGES) {
        cJSON_Delete(data);
        goto done;
    }
    cJSON_AddNumberToObject(root, "created", (double)created);
    cJSON_AddItemToObject(root, "data", data);
    for (int i = 0; i < n; i++) {
        cJSON *item = cJSON_CreateObject();
        if (!item || !(b64[i] = sd3_http_base64(images[i].png, images[i].png_size, NULL))) {
            cJSON_Delete(item);
            goto done;
        }
        cJSON_AddItemToArray(data, item);
        cJSON_AddItemToObject(item, "b64_json", cJSON_CreateStringReference(b64[i]));
        cJSON_AddStringToObject(item, "revised_prompt", s_used(job, &images[i])->prompt);
        cJSON_AddNumberToObject(item, "seed", (double)images[i].seed);
    }
    out = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    for (int i = 0; i < SD3_HTTP_MAX_IMAGES; i++)
        free(b64[i]);
    if (out && len_out)
        *len_out = strlen(out);
    return out;
}

// A1111's job_timestamp: local time as YYYYmmddHHMMSS.
static void
s_timestamp(int64_t created, char out[32])
{
    time_t t = (time_t)created;
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(out, 32, "%Y%m%d%H%M%S", &tm) == 0)
        snprintf(out, 32, "0");
}

char *
sd3_http_reply_a1111(const sd3_http_job_t *job, const sd3_http_image_t *images, int n,
                     int64_t created, size_t *len_out)
{
    char *out = NULL, *info_text = NULL;
    char *b64[SD3_HTTP_MAX_IMAGES] = {0};
    cJSON *root = cJSON_CreateObject(), *info = cJSON_CreateObject();
    if (!root || !info || n < 1 || n > SD3_HTTP_MAX_IMAGES)
        goto done;
    const sd3_wire_generate_t *g = s_used(job, &images[0]);
    const char *sampler = sd3_http_sampler_name(g->sampler);

    // "images": base64 PNGs
    cJSON *arr = cJSON_AddArrayToObject(root, "images");
    for (int i = 0; i < n && arr; i++) {
        if (!(b64[i] = sd3_http_base64(images[i].png, images[i].png_size, NULL)))
            goto done;
        cJSON_AddItemToArray(arr, cJSON_CreateStringReference(b64[i]));
    }

    // "parameters": the request as run (A1111 echoes its request model, defaults filled)
    cJSON *par = cJSON_AddObjectToObject(root, "parameters");
    if (!arr || !par)
        goto done;
    cJSON_AddStringToObject(par, "prompt", job->gen.prompt);
    cJSON_AddStringToObject(par, "negative_prompt", job->gen.negative);
    cJSON_AddNumberToObject(par, "seed", job->seed_drawn ? -1.0 : (double)job->gen.seed);
    cJSON_AddStringToObject(par, "sampler_name", sampler);
    cJSON_AddNumberToObject(par, "batch_size", job->batch_size);
    cJSON_AddNumberToObject(par, "n_iter", job->n_iter);
    cJSON_AddNumberToObject(par, "steps", g->steps);
    cJSON_AddNumberToObject(par, "cfg_scale", g->cfg);
    cJSON_AddNumberToObject(par, "width", g->width);
    cJSON_AddNumberToObject(par, "height", g->height);
    cJSON_AddBoolToObject(par, "send_images", true);
    cJSON_AddBoolToObject(par, "save_images", false);

    // "info": a JSON string, as A1111's processing.Processed.js() writes it
    cJSON_AddStringToObject(info, "prompt", g->prompt);
    cJSON *all_prompts = cJSON_AddArrayToObject(info, "all_prompts");
    cJSON_AddStringToObject(info, "negative_prompt", g->negative);
    cJSON *all_neg = cJSON_AddArrayToObject(info, "all_negative_prompts");
    cJSON_AddNumberToObject(info, "seed", (double)images[0].seed);
    cJSON *all_seeds = cJSON_AddArrayToObject(info, "all_seeds");
    cJSON_AddNumberToObject(info, "subseed", -1);
    cJSON *all_subseeds = cJSON_AddArrayToObject(info, "all_subseeds");
    cJSON_AddNumberToObject(info, "subseed_strength", 0);
    cJSON_AddNumberToObject(info, "width", g->width);
    cJSON_AddNumberToObject(info, "height", g->height);
    cJSON_AddStringToObject(info, "sampler_name", sampler);
    cJSON_AddNumberToObject(info, "cfg_scale", g->cfg);
    cJSON_AddNumberToObject(info, "steps", g->steps);
    cJSON_AddNumberToObject(info, "batch_size", job->batch_size);
    cJSON_AddBoolToObject(info, "restore_faces", false);
    cJSON_AddNullToObject(info, "face_restoration_model");
    cJSON_AddStringToObject(info, "sd_model_name", g->model);
    cJSON_AddNullToObject(info, "sd_model_hash");
    cJSON_AddNumberToObject(info, "seed_resize_from_w", -1);
    cJSON_AddNumberToObject(info, "seed_resize_from_h", -1);
    cJSON_AddNumberToObject(info, "denoising_strength", 0);
    cJSON_AddObjectToObject(info, "extra_generation_params");
    cJSON_AddNumberToObject(info, "index_of_first_image", 0);
    cJSON *infotexts = cJSON_AddArrayToObject(info, "infotexts");
    cJSON_AddArrayToObject(info, "styles");
    char stamp[32];
    s_timestamp(created, stamp);
    cJSON_AddStringToObject(info, "job_timestamp", stamp);
    cJSON_AddNumberToObject(info, "clip_skip", 1);
    cJSON_AddBoolToObject(info, "is_using_inpainting_conditioning", false);
    cJSON_AddStringToObject(info, "version", "sd3d");
    if (!all_prompts || !all_neg || !all_seeds || !all_subseeds || !infotexts)
        goto done;
    for (int i = 0; i < n; i++) {
        const sd3_wire_generate_t *gi = s_used(job, &images[i]);
        char *it = s_infotext(job, &images[i]);
        if (!it)
            goto done;
        cJSON_AddItemToArray(all_prompts, cJSON_CreateString(gi->prompt));
        cJSON_AddItemToArray(all_neg, cJSON_CreateString(gi->negative));
        cJSON_AddItemToArray(all_seeds, cJSON_CreateNumber((double)images[i].seed));
        cJSON_AddItemToArray(all_subseeds, cJSON_CreateNumber((double)images[i].seed));
        cJSON_AddItemToArray(infotexts, cJSON_CreateString(it));
        free(it);
    }
    if (!(info_text = cJSON_PrintUnformatted(info)))
        goto done;
    cJSON_AddItemToObject(root, "info", cJSON_CreateStringReference(info_text));
    out = cJSON_PrintUnformatted(root);
done:
    cJSON_Delete(root);
    cJSON_Delete(info);
    free(info_text);
    for (int i = 0; i < SD3_HTTP_MAX_IMAGES; i++)
        free(b64[i]);
    if (out && len_out)
        *len_out = strlen(out);
    return out;
}
