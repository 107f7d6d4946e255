/*  test_http_json - the HTTP API's bodies and replies without a server
 *
 *  Parsing of OpenAI and A1111 bodies (good, malformed, wrong types and ranges, unicode,
 *  too long for the wire), the mapping onto sd3_wire_generate_t (and that the wire accepts
 *  it), the reply shapes (OpenAI data[].b64_json, A1111 images/parameters/info with info a
 *  JSON string holding seed, all_seeds and infotexts), error objects, base64, UTF-8 and the
 *  PNG text chunk reader.  */
#include "sd3_http_json.h"
#include "sd3_png.h"
#include "sd3_test.h"
#include "sd3_wire.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static sd3_http_job_t s_job;

static int
s_openai(const char *body, sd3_err_t *err)
{
    memset(err, 0, sizeof *err);
    return sd3_http_parse_openai(body, strlen(body), "sd3-tiny", 0x123456789ull, &s_job, err);
}

static int
s_a1111(const char *body, sd3_err_t *err)
{
    memset(err, 0, sizeof *err);
    return sd3_http_parse_a1111(body, strlen(body), "sd3-tiny", 0x123456789ull, &s_job, err);
}

// Expects a refusal whose message contains `want`.
static void
s_refused(bool a1111, const char *body, const char *want)
{
    sd3_err_t err;
    int rc = a1111 ? s_a1111(body, &err) : s_openai(body, &err);
    CHECK_MSG(rc == SD3_EINVAL && err.code == SD3_EINVAL, "body %.80s: rc %d", body, rc);
    CHECK_MSG(strstr(err.msg, want) != NULL, "body %.80s: message '%s' lacks '%s'", body, err.msg,
              want);
}

static void
test_openai_good(void)
{
    sd3_err_t err;
    const char *body =
        "{\"model\":\"sd3-medium\",\"prompt\":\"a cat\",\"n\":2,\"size\":\"512x768\","
        "\"response_format\":\"b64_json\",\"negative_prompt\":\"a dog\",\"steps\":8,"
        "\"cfg_scale\":4.5,\"seed\":42,\"sampler\":\"dpm++ 2m\",\"user\":\"u1\","
        "\"quality\":\"hd\"}";
    CHECK(s_openai(body, &err) == 0);
    const sd3_wire_generate_t *g = &s_job.gen;
    CHECK(s_job.api == SD3_HTTP_API_OPENAI);
    CHECK(strcmp(g->prompt, "a cat") == 0);
    CHECK(strcmp(g->negative, "a dog") == 0);
    CHECK(strcmp(g->model, "sd3-medium") == 0);
    CHECK(s_job.n_images == 2);
    CHECK(g->width == 512 && g->height == 768);
    CHECK(g->steps == 8);
    CHECK(g->cfg == 4.5f);
    CHECK(g->seed == 42 && !s_job.seed_drawn && !g->seed_random);
    CHECK(g->sampler == SD3_WIRE_SAMPLER_DPMPP_2M);
    CHECK(s_job.b64);

    // Defaults: model from the server, one image, model's size/steps/cfg, drawn seed.
    CHECK(s_openai("  {\"prompt\":\"x\", \"size\": null, \"seed\": -1}\n", &err) == 0);
    CHECK(strcmp(s_job.gen.model, "sd3-tiny") == 0);
    CHECK(s_job.n_images == 1);
    CHECK(s_job.gen.width == 0 && s_job.gen.height == 0 && s_job.gen.steps == 0);
    CHECK(s_job.gen.cfg == 0.0f);
    CHECK(s_job.seed_drawn && s_job.gen.seed == 0x23456789ull); // 32 bits of the drawn one
    CHECK(s_job.gen.sampler == SD3_WIRE_SAMPLER_DEFAULT);
    CHECK(s_openai("{\"prompt\":\"x\",\"size\":\"auto\",\"output_format\":\"PNG\"}", &err) == 0);
}

static void
test_unicode(void)
{
    sd3_err_t err;
    // \u escapes (with a surrogate pair) and raw UTF-8 both arrive as UTF-8.
    CHECK(s_openai("{\"prompt\":\"caf\\u00e9 \\ud83d\\ude00 \xe6\x97\xa5\xe6\x9c\xac\"}", &err) ==
          0);
    CHECK_MSG(strcmp(s_job.gen.prompt, "caf\xc3\xa9 \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac") ==
                  0,
              "prompt bytes '%s'", s_job.gen.prompt);
    s_refused(false, "{\"prompt\":\"bad \xff byte\"}", "not valid UTF-8 (byte 4)");
    s_refused(false, "{\"prompt\":\"overlong \xc0\xaf\"}", "not valid UTF-8");
    s_refused(true, "{\"prompt\":\"x\",\"negative_prompt\":\"\xed\xa0\x80\"}", "negative_prompt");
    s_refused(false, "{\"prompt\":\"lone \\ud800 surrogate\"}", "malformed JSON");
    s_refused(false, "{\"prompt\":\"lone \\udc00\"}", "malformed JSON");
}

static void
test_malformed(void)
{
    s_refused(false, "", "empty");
    s_refused(false, "{\"prompt\": \"x\",", "malformed JSON at byte");
    s_refused(false, "{\"prompt\": \"x\"} trailing", "after the value at byte 16");
    s_refused(false, "[1, 2]", "must be a JSON object, found an array");
    s_refused(true, "\"just a string\"", "found a string");
    s_refused(false, "{'prompt': 'x'}", "malformed JSON at byte");
    char nul[] = "{\"prompt\":\"a\0b\"}";
    sd3_err_t err = {0};
    CHECK(sd3_http_parse_openai(nul, sizeof nul - 1, NULL, 1, &s_job, &err) == SD3_EINVAL);
    CHECK(strstr(err.msg, "NUL byte at offset 12") != NULL);
    // Deep nesting stops at cJSON's limit instead of the stack.
    size_t depth = 5000;
    char *deep = malloc(depth * 2 + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    deep[2 * depth] = 0;
    s_refused(false, deep, "malformed JSON");
    free(deep);
}

static void
test_types_and_ranges(void)
{
    s_refused(false, "{}", "'prompt' is required");
    s_refused(false, "{\"prompt\":\"\"}", "'prompt' is required");
    s_refused(false, "{\"prompt\":5}", "'prompt' must be a string, found a number");
    s_refused(false, "{\"prompt\":\"x\",\"n\":\"2\"}", "'n' must be an integer, found a string");
    s_refused(false, "{\"prompt\":\"x\",\"n\":2.5}", "'n' must be an integer, found 2.5");
    s_refused(false, "{\"prompt\":\"x\",\"n\":0}", "'n' is 0, want 1..4");
    s_refused(false, "{\"prompt\":\"x\",\"n\":5}", "'n' is 5, want 1..4");
    s_refused(false, "{\"prompt\":\"x\",\"n\":true}", "found a boolean");
    s_refused(false, "{\"prompt\":\"x\",\"size\":\"512\"}", "size '512' is malformed");
    s_refused(false, "{\"prompt\":\"x\",\"size\":\"500x500\"}", "multiple of 16");
    s_refused(false, "{\"prompt\":\"x\",\"size\":\"16384x16\"}", "multiple of 16 in 16..8192");
    s_refused(false, "{\"prompt\":\"x\",\"size\":[512,512]}", "'size' must be a string");
    s_refused(false, "{\"prompt\":\"x\",\"steps\":-1}", "'steps' is -1, want 0..1000");
    s_refused(false, "{\"prompt\":\"x\",\"steps\":1001}", "'steps' is 1001");
    s_refused(false, "{\"prompt\":\"x\",\"cfg_scale\":\"high\"}", "'cfg_scale' must be a number");
    s_refused(false, "{\"prompt\":\"x\",\"cfg_scale\":0}", "'cfg_scale' is 0, want (0, 100]");
    s_refused(false, "{\"prompt\":\"x\",\"cfg_scale\":1e308}", "'cfg_scale'");
    s_refused(false, "{\"prompt\":\"x\",\"seed\":-2}", "'seed' is -2");
    s_refused(false, "{\"prompt\":\"x\",\"seed\":1e300}", "'seed'");
    s_refused(false, "{\"prompt\":\"x\",\"response_format\":\"url\"}",
              "response_format 'url' is not supported: this server stores no files");
    s_refused(false, "{\"prompt\":\"x\",\"response_format\":\"jpeg\"}", "unknown");
    s_refused(false, "{\"prompt\":\"x\",\"output_format\":\"webp\"}", "output_format 'webp'");
    s_refused(false, "{\"prompt\":\"x\",\"sampler\":\"lms\"}", "'sampler': sampler 'lms'");
    s_refused(false,
              "{\"prompt\":\"x\",\"model\":\"0123456789012345678901234567890123456789"
              "012345678901234567890123\"}",
              "'model' is 64 bytes long, at most 63");
    // The prompt fills the wire's field exactly, then one byte too many.
    size_t cap = SD3_WIRE_PROMPT_MAX;
    char *body = malloc(cap + 64);
    for (size_t len = cap - 1; len <= cap; len++) {
        strcpy(body, "{\"prompt\":\"");
        memset(body + 11, 'a', len);
        strcpy(body + 11 + len, "\"}");
        sd3_err_t err;
        int rc = s_openai(body, &err);
        if (len == cap - 1)
            CHECK(rc == 0 && strlen(s_job.gen.prompt) == cap - 1);
        else
            CHECK(rc == SD3_EINVAL && strstr(err.msg, "at most 8191"));
    }
    free(body);
}

static void
test_a1111(void)
{
    sd3_err_t err;
    CHECK(s_a1111("{\"prompt\":\"p\",\"negative_prompt\":\"n\",\"steps\":20,\"cfg_scale\":7,"
                  "\"width\":512,\"height\":768,\"seed\":-1,\"sampler_name\":\"Euler\","
                  "\"batch_size\":2,\"n_iter\":2,\"save_images\":false,"
                  "\"override_settings\":{}}",
                  &err) == 0);
    CHECK(s_job.api == SD3_HTTP_API_A1111);
    CHECK(s_job.n_images == 4 && s_job.batch_size == 2 && s_job.n_iter == 2);
    CHECK(s_job.gen.width == 512 && s_job.gen.height == 768);
    CHECK(s_job.gen.steps == 20 && s_job.gen.cfg == 7.0f);
    CHECK(s_job.seed_drawn && s_job.gen.seed == 0x23456789ull);
    CHECK(s_job.gen.sampler == SD3_WIRE_SAMPLER_EULER);
    CHECK(strcmp(s_job.gen.model, "sd3-tiny") == 0);
    // An empty body object is a valid A1111 request (all defaults, empty prompt).
    CHECK(s_a1111("{}", &err) == 0 && s_job.gen.prompt[0] == 0 && s_job.n_images == 1);
    CHECK(s_a1111("{\"sampler_index\":\"DPM++ 2M Karras\",\"seed\":7}", &err) == 0);
    CHECK(s_job.gen.sampler == SD3_WIRE_SAMPLER_DPMPP_2M && s_job.gen.seed == 7);
    s_refused(true, "{\"batch_size\":3,\"n_iter\":2}", "batch_size * n_iter is 6, at most 4");
    s_refused(true, "{\"width\":500}", "'width' is 500, want a multiple of 16");
    s_refused(true, "{\"height\":\"512\"}", "'height' must be an integer");
    s_refused(true, "{\"sampler_name\":\"UniPC\"}", "'sampler_name'");
}

static void
test_samplers_sizes(void)
{
    struct {
        const char *name;
        int want; // -1: refused
    } t[] = {{"Euler", SD3_WIRE_SAMPLER_EULER},
             {"euler", SD3_WIRE_SAMPLER_EULER},
             {"k_euler", SD3_WIRE_SAMPLER_EULER},
             {"DPM++ 2M", SD3_WIRE_SAMPLER_DPMPP_2M},
             {"dpmpp_2m", SD3_WIRE_SAMPLER_DPMPP_2M},
             {"k_dpmpp_2m", SD3_WIRE_SAMPLER_DPMPP_2M},
             {"", SD3_WIRE_SAMPLER_DEFAULT},
             {"Default", SD3_WIRE_SAMPLER_DEFAULT},
             {"Euler a", -1},
             {"DPM2", -1},
             {"karras", -1}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        sd3_wire_sampler_t s = SD3_WIRE_SAMPLER_COUNT;
        sd3_err_t err = {0};
        int rc = sd3_http_sampler_parse(t[i].name, &s, &err);
        CHECK_MSG(t[i].want < 0 ? rc == SD3_EINVAL : rc == 0 && (int)s == t[i].want,
                  "sampler '%s': rc %d kind %d", t[i].name, rc, (int)s);
    }
    CHECK(strcmp(sd3_http_sampler_name(SD3_WIRE_SAMPLER_DPMPP_2M), "DPM++ 2M") == 0);
    uint32_t w = 1, h = 1;
    sd3_err_t err = {0};
    CHECK(sd3_http_parse_size("1024x768", &w, &h, &err) == 0 && w == 1024 && h == 768);
    CHECK(sd3_http_parse_size("16X8192", &w, &h, &err) == 0 && w == 16 && h == 8192);
    CHECK(sd3_http_parse_size("auto", &w, &h, &err) == 0 && w == 0 && h == 0);
    const char *bad[] = {" 1024x1024", "1024x",  "x1024",  "0x16", "99999999x16",
                         "1024x1024 ", "-16x16", "1e3x16", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(sd3_http_parse_size(bad[i], &w, &h, &err) == SD3_EINVAL, "size '%s'", bad[i]);
}

// The mapped request is one the wire accepts and carries unchanged.
static void
test_wire_roundtrip(void)
{
    sd3_err_t err = {0};
    CHECK(s_openai("{\"prompt\":\"a red fox \\u00e9\",\"size\":\"256x512\",\"steps\":3,"
                   "\"seed\":9007199254740987,\"negative_prompt\":\"blur\",\"sampler\":\"euler\"}",
                   &err) == 0);
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_GENERATE, "http-1-0");
    CHECK(msg != NULL);
    if (!msg)
        return;
    msg->body_kind = SD3_WIRE_BODY_GENERATE;
    msg->body.generate = s_job.gen;
    sd3_wire_frames_t frames;
    CHECK(sd3_wire_encode(&msg, &frames, &err) == 0);
    sd3_msg_t *back = NULL;
    CHECK(sd3_wire_decode(frames.frames, frames.n, NULL, NULL, &back, &err) == 0);
    if (back) {
        const sd3_wire_generate_t *g = &back->body.generate;
        CHECK(back->type == SD3_MSG_GENERATE && back->body_kind == SD3_WIRE_BODY_GENERATE);
        CHECK(strcmp(g->prompt, "a red fox \xc3\xa9") == 0 && strcmp(g->negative, "blur") == 0);
        CHECK(g->width == 256 && g->height == 512 && g->steps == 3);
        CHECK(g->seed == 9007199254740987ull && !g->seed_random);
        CHECK(g->sampler == SD3_WIRE_SAMPLER_EULER);
        CHECK(strcmp(g->model, "sd3-tiny") == 0);
    }
    sd3_msg_destroy(&back);
    sd3_wire_frames_fini(&frames);
    // The largest seed a request may give still leaves room for seed + 3.
    s_refused(false, "{\"prompt\":\"x\",\"seed\":9007199254740988}", "'seed'");
}

// ---- replies ------------------------------------------------------------------------------

static int
s_b64val(int c)
{
    const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(tab, c) : NULL;
    return p ? (int)(p - tab) : -1;
}

// Strict decoder for the checks (NULL on any bad character or length).
static uint8_t *
s_b64decode(const char *s, size_t *n_out)
{
    size_t len = strlen(s);
    if (len % 4)
        return NULL;
    uint8_t *out = malloc(len / 4 * 3 + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' && i + 4 == len && k >= 2 ? 0 : s_b64val(s[i + k]);
        if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0) {
            free(out);
            return NULL;
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[n++] = (uint8_t)(w >> 16);
        if (s[i + 2] != '=')
            out[n++] = (uint8_t)(w >> 8);
        if (s[i + 3] != '=')
            out[n++] = (uint8_t)w;
    }
    *n_out = n;
    return out;
}

static void
test_base64_utf8(void)
{
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        size_t len = 99;
        char *b = sd3_http_base64((const uint8_t *)in[i], strlen(in[i]), &len);
        CHECK_MSG(b && strcmp(b, want[i]) == 0 && len == strlen(want[i]), "base64('%s') = '%s'",
                  in[i], b ? b : "(null)");
        free(b);
    }
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)(255 - i);
    char *b = sd3_http_base64(all, sizeof all, NULL);
    size_t n = 0;
    uint8_t *back = b ? s_b64decode(b, &n) : NULL;
    CHECK(back && n == 256 && memcmp(back, all, 256) == 0);
    free(b);
    free(back);

    CHECK(sd3_http_utf8_check("plain", 5) == -1);
    CHECK(sd3_http_utf8_check("\xc3\xa9\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf", 10) == -1);
    CHECK(sd3_http_utf8_check("ab\xc0\x80", 4) == 2);       // overlong NUL
    CHECK(sd3_http_utf8_check("\xe0\x80\xaf", 3) == 0);     // overlong '/'
    CHECK(sd3_http_utf8_check("x\xed\xa0\x80", 4) == 1);    // UTF-16 surrogate
    CHECK(sd3_http_utf8_check("\xf4\x90\x80\x80", 4) == 0); // past U+10FFFF
    CHECK(sd3_http_utf8_check("ok\xe2\x82", 4) == 2);       // truncated
    CHECK(sd3_http_utf8_check("\x80", 1) == 0);             // lone continuation
}

// A small real PNG with (or without) the parameters chunk; fresh buffer.
static uint8_t *
s_png(int w, int h, const char *text, size_t *size)
{
    uint8_t *rgb = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (uint8_t)(i * 7);
    uint8_t *png = NULL;
    sd3_err_t err = {0};
    CHECK(sd3_png_encode(rgb, w, h, text, &png, size, &err) == 0);
    free(rgb);
    return png;
}

static void
test_png_text(void)
{
    size_t n = 0;
    uint8_t *png = s_png(16, 8, "a cat\nSteps: 4, Seed: 42", &n);
    char *t = sd3_http_png_text(png, n, "parameters");
    CHECK(t && strcmp(t, "a cat\nSteps: 4, Seed: 42") == 0);
    free(t);
    CHECK(sd3_http_png_text(png, n, "Comment") == NULL);
    for (size_t cut = 0; cut < n; cut += 5) { // every truncation: no text or the whole text
        t = sd3_http_png_text(png, cut, "parameters");
        CHECK(!t || strcmp(t, "a cat\nSteps: 4, Seed: 42") == 0);
        free(t);
    }
    png[9] ^= 0x7f; // IHDR's length byte now runs past the end
    CHECK(sd3_http_png_text(png, n, "parameters") == NULL);
    free(png);
    png = s_png(16, 8, "caf\xc3\xa9 \xe6\x97\xa5", &n); // non-ASCII: iTXt
    t = sd3_http_png_text(png, n, "parameters");
    CHECK(t && strcmp(t, "caf\xc3\xa9 \xe6\x97\xa5") == 0);
    free(t);
    free(png);
    CHECK(sd3_http_png_text((const uint8_t *)"not a png at all", 16, "parameters") == NULL);
}

static const cJSON *
s_get(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

static void
test_reply_openai(void)
{
    sd3_err_t err;
    CHECK(s_openai("{\"prompt\":\"a cat\",\"n\":2,\"seed\":42}", &err) == 0);
    size_t n0 = 0, n1 = 0;
    uint8_t *p0 = s_png(16, 16, "x", &n0), *p1 = s_png(32, 16, NULL, &n1);
    sd3_http_image_t im[2] = {{.png = p0, .png_size = n0, .seed = 42},
                              {.png = p1, .png_size = n1, .seed = 43}};
    size_t len = 0;
    char *out = sd3_http_reply_openai(&s_job, im, 2, 1700000000, &len);
    CHECK(out && len == strlen(out));
    cJSON *root = out ? cJSON_Parse(out) : NULL;
    CHECK(root != NULL);
    if (root) {
        CHECK(cJSON_GetNumberValue(s_get(root, "created")) == 1700000000.0);
        const cJSON *data = s_get(root, "data");
        CHECK(cJSON_IsArray(data) && cJSON_GetArraySize(data) == 2);
        for (int i = 0; i < 2 && cJSON_GetArraySize(data) == 2; i++) {
            const cJSON *d = cJSON_GetArrayItem(data, i);
            size_t n = 0;
            uint8_t *png = s_b64decode(cJSON_GetStringValue(s_get(d, "b64_json")), &n);
            CHECK(png && n == im[i].png_size && memcmp(png, im[i].png, n) == 0);
            uint8_t *rgb = NULL;
            int w = 0, h = 0;
            CHECK(png && sd3_png_decode(png, n, &rgb, &w, &h, NULL, &err) == 0 &&
                  w == (i ? 32 : 16) && h == 16);
            free(rgb);
            free(png);
            CHECK(strcmp(cJSON_GetStringValue(s_get(d, "revised_prompt")), "a cat") == 0);
            CHECK(cJSON_GetNumberValue(s_get(d, "seed")) == 42.0 + i);
        }
    }
    cJSON_Delete(root);
    free(out);
    free(p0);
    free(p1);
}

static void
test_reply_a1111(void)
{
    sd3_err_t err;
    CHECK(s_a1111("{\"prompt\":\"a fox\",\"negative_prompt\":\"blur\",\"seed\":42,\"steps\":4,"
                  "\"width\":64,\"height\":32,\"batch_size\":2,\"sampler_name\":\"Euler\","
                  "\"cfg_scale\":4.5}",
                  &err) == 0);
    size_t n0 = 0, n1 = 0;
    const char *text0 = "a fox\nNegative prompt: blur\nSteps: 4, Sampler: Euler, CFG scale: 4.5, "
                        "Seed: 42, Size: 64x32";
    uint8_t *p0 = s_png(64, 32, text0, &n0), *p1 = s_png(64, 32, NULL, &n1);
    sd3_wire_generate_t used = s_job.gen;
    used.seed = 43;
    sd3_http_image_t im[2] = {{.png = p0, .png_size = n0, .seed = 42, .infotext = text0},
                              {.png = p1, .png_size = n1, .seed = 43, .used = &used}};
    size_t len = 0;
    char *out = sd3_http_reply_a1111(&s_job, im, 2, 1700000000, &len);
    cJSON *root = out ? cJSON_Parse(out) : NULL;
    CHECK(root != NULL);
    if (root) {
        const cJSON *images = s_get(root, "images"), *par = s_get(root, "parameters");
        CHECK(cJSON_IsArray(images) && cJSON_GetArraySize(images) == 2);
        size_t n = 0;
        uint8_t *png = s_b64decode(cJSON_GetStringValue(cJSON_GetArrayItem(images, 1)), &n);
        CHECK(png && n == n1 && memcmp(png, p1, n) == 0);
        free(png);
        CHECK(cJSON_IsObject(par));
        CHECK(strcmp(cJSON_GetStringValue(s_get(par, "prompt")), "a fox") == 0);
        CHECK(cJSON_GetNumberValue(s_get(par, "seed")) == 42.0);
        CHECK(cJSON_GetNumberValue(s_get(par, "width")) == 64.0);
        CHECK(cJSON_GetNumberValue(s_get(par, "batch_size")) == 2.0);
        CHECK(strcmp(cJSON_GetStringValue(s_get(par, "sampler_name")), "Euler") == 0);
        const cJSON *info_s = s_get(root, "info");
        CHECK(cJSON_IsString(info_s)); // A1111 sends info as a JSON *string*
        cJSON *info = cJSON_IsString(info_s) ? cJSON_Parse(info_s->valuestring) : NULL;
        CHECK(info != NULL);
        if (info) {
            CHECK(cJSON_GetNumberValue(s_get(info, "seed")) == 42.0);
            const cJSON *seeds = s_get(info, "all_seeds"), *texts = s_get(info, "infotexts");
            CHECK(cJSON_GetArraySize(seeds) == 2 &&
                  cJSON_GetNumberValue(cJSON_GetArrayItem(seeds, 1)) == 43.0);
            CHECK(cJSON_GetArraySize(texts) == 2);
            CHECK(strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(texts, 0)), text0) == 0);
            const char *t1 = cJSON_GetStringValue(cJSON_GetArrayItem(texts, 1));
            CHECK_MSG(t1 && strstr(t1, "Seed: 43") && strstr(t1, "Negative prompt: blur") &&
                          strstr(t1, "Size: 64x32") && strstr(t1, "Sampler: Euler"),
                      "infotext '%s'", t1 ? t1 : "(null)");
            CHECK(cJSON_GetNumberValue(s_get(info, "cfg_scale")) == 4.5);
            CHECK(strcmp(cJSON_GetStringValue(s_get(info, "sampler_name")), "Euler") == 0);
            CHECK(cJSON_GetNumberValue(s_get(info, "width")) == 64.0);
            CHECK(strcmp(cJSON_GetStringValue(s_get(info, "negative_prompt")), "blur") == 0);
            CHECK(cJSON_GetArraySize(s_get(info, "all_prompts")) == 2);
        }
        cJSON_Delete(info);
    }
    cJSON_Delete(root);
    free(out);
    free(p0);
    free(p1);
}

static void
test_errors(void)
{
    struct {
        int status;
        const char *type, *code;
    } t[] = {{400, "invalid_request_error", "invalid_request"},
             {401, "authentication_error", "invalid_api_key"},
             {413, "invalid_request_error", "request_too_large"},
             {429, "rate_limit_error", "queue_full"},
             {502, "server_error", "bad_gateway"},
             {504, "server_error", "timeout"},
             {500, "server_error", "internal_error"}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        size_t len = 0;
        char *out = sd3_http_reply_error(i % 2 == 1, t[i].status, "bad \"thing\"\n\xff", &len);
        cJSON *root = out ? cJSON_Parse(out) : NULL;
        const cJSON *e = root ? s_get(root, "error") : NULL;
        CHECK_MSG(e != NULL, "status %d: '%s'", t[i].status, out ? out : "(null)");
        if (e) {
            CHECK(strcmp(cJSON_GetStringValue(s_get(e, "message")), "bad \"thing\"\n?") == 0);
            CHECK(strcmp(cJSON_GetStringValue(s_get(e, "type")), t[i].type) == 0);
            CHECK(strcmp(cJSON_GetStringValue(s_get(e, "code")), t[i].code) == 0);
            CHECK(cJSON_IsNull(s_get(e, "param")));
            CHECK((s_get(root, "detail") != NULL) == (i % 2 == 1));
        }
        cJSON_Delete(root);
        free(out);
    }
    CHECK(sd3_http_status_of(SD3_OK) == 200);
    CHECK(sd3_http_status_of(SD3_EINVAL) == 400);
    CHECK(sd3_http_status_of(SD3_ENOTSUP) == 400);
    CHECK(sd3_http_status_of(SD3_ENOTFOUND) == 404);
    CHECK(sd3_http_status_of(SD3_EFULL) == 429);
    CHECK(sd3_http_status_of(SD3_ETIMEDOUT) == 504);
    CHECK(sd3_http_status_of(SD3_EIO) == 502);
    CHECK(sd3_http_status_of(SD3_EPROTO) == 502);
    CHECK(sd3_http_status_of(SD3_EDEVICE) == 500);
    CHECK(sd3_http_status_of(SD3_ECANCELED) == 500);
}

int
main(void)
{
    test_openai_good();
    test_unicode();
    test_malformed();
    test_types_and_ranges();
    test_a1111();
    test_samplers_sizes();
    test_wire_roundtrip();
    test_base64_utf8();
    test_png_text();
    test_reply_openai();
    test_reply_a1111();
    test_errors();
    return TEST_RESULT();
}
