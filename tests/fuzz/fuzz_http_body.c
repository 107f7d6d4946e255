/*  fuzz_http_body - fuzz target for the HTTP API's body parsers and replies
 *
 *  Input: byte 0 picks the parser (bit 0: 0 = OpenAI images/generations, 1 = A1111
 *  txt2img); the rest is the request body as it came off the socket. Oracle: no crash, no
 *  sanitizer report; a refusal is SD3_EINVAL with a message, and its error object is valid
 *  JSON; an accepted body gives a job inside every bound (image count, sizes, steps, cfg,
 *  UTF-8 strings that fit the wire), and the reply rendered for it is valid JSON whose prompt
 *  reads back unchanged. The body bytes also go through the PNG text-chunk reader.
 *
 *  Built two ways (tests/cmake/http.cmake):
 *    - plain (ctest label fuzz): main() replays every file of the folders given;
 *    - -DSD3_FUZZ=ON with clang: fuzz_http_body_lf, a libFuzzer binary
 *        ./fuzz_http_body_lf -max_total_time=60 tests/fuzz/corpus-http  */
#include "sd3_http_json.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// A valid 1x1 PNG (signature, IHDR, IDAT, IEND) for the replies.
static const uint8_t s_png[] = {
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48,
    0x44, 0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00,
    0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08,
    0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d,
    0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};

static void
s_must(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_http_body: oracle failed: %s\n", what);
        abort();
    }
}

static void
s_check_job(const sd3_http_job_t *job)
{
    const sd3_wire_generate_t *g = &job->gen;
    s_must(job->n_images >= 1 && job->n_images <= SD3_HTTP_MAX_IMAGES, "n_images");
    s_must(job->batch_size * job->n_iter == job->n_images, "batch_size * n_iter");
    s_must(g->width <= SD3_HTTP_MAX_SIDE && g->width % 16 == 0, "width");
    s_must(g->height <= SD3_HTTP_MAX_SIDE && g->height % 16 == 0, "height");
    s_must(g->steps <= SD3_HTTP_MAX_STEPS, "steps");
    s_must(isfinite(g->cfg) && g->cfg >= 0 && g->cfg <= 100, "cfg");
    s_must(g->seed + (uint64_t)job->n_images <= SD3_HTTP_MAX_SEED + 1, "seed range");
    s_must((unsigned)g->sampler < SD3_WIRE_SAMPLER_COUNT, "sampler");
    s_must(memchr(g->prompt, 0, sizeof g->prompt) != NULL, "prompt NUL");
    s_must(memchr(g->negative, 0, sizeof g->negative) != NULL, "negative NUL");
    s_must(memchr(g->model, 0, sizeof g->model) != NULL, "model NUL");
    s_must(sd3_http_utf8_check(g->prompt, strlen(g->prompt)) < 0, "prompt UTF-8");
    s_must(sd3_http_utf8_check(g->negative, strlen(g->negative)) < 0, "negative UTF-8");
    if (job->api == SD3_HTTP_API_OPENAI)
        s_must(g->prompt[0] != 0, "OpenAI prompt non-empty");
}

static void
s_check_reply(const sd3_http_job_t *job)
{
    sd3_http_image_t im[SD3_HTTP_MAX_IMAGES];
    for (int i = 0; i < job->n_images; i++)
        im[i] = (sd3_http_image_t){
            .png = s_png, .png_size = sizeof s_png, .seed = job->gen.seed + (uint64_t)i};
    size_t len = 0;
    char *out = job->api == SD3_HTTP_API_OPENAI
                    ? sd3_http_reply_openai(job, im, job->n_images, 1700000000, &len)
                    : sd3_http_reply_a1111(job, im, job->n_images, 1700000000, &len);
    s_must(out != NULL, "reply rendered");
    cJSON *root = cJSON_Parse(out);
    s_must(root != NULL, "reply is JSON");
    if (job->api == SD3_HTTP_API_OPENAI) {
        const cJSON *d = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "data"), 0);
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(d, "revised_prompt"));
        s_must(p && strcmp(p, job->gen.prompt) == 0, "revised_prompt reads back");
    } else {
        const char *info = cJSON_GetStringValue(cJSON_GetObjectItem(root, "info"));
        cJSON *ij = info ? cJSON_Parse(info) : NULL;
        s_must(ij != NULL, "info is a JSON string");
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(ij, "prompt"));
        s_must(p && strcmp(p, job->gen.prompt) == 0, "info prompt reads back");
        cJSON_Delete(ij);
    }
    cJSON_Delete(root);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static sd3_http_job_t job; // 16 KiB of prompts: not on the fuzzer's stack
    sd3_err_t err = {0};
    const char *body = (const char *)data + 1;
    int rc = data[0] & 1 ? sd3_http_parse_a1111(body, size - 1, "m", size, &job, &err)
                         : sd3_http_parse_openai(body, size - 1, "m", size, &job, &err);
    if (rc != 0) {
        s_must(rc == SD3_EINVAL && err.code == SD3_EINVAL && err.msg[0], "refusal says why");
        size_t len = 0;
        char *e = sd3_http_reply_error(data[0] & 1, 400, err.msg, &len);
        cJSON *root = e ? cJSON_Parse(e) : NULL;
        s_must(root != NULL, "error reply is JSON");
        cJSON_Delete(root);
        free(e);
    } else {
        s_check_job(&job);
        s_check_reply(&job);
    }
    char *t = sd3_http_png_text(data, size, "parameters");
    if (t)
        s_must(sd3_http_utf8_check(t, strlen(t)) < 0, "png text UTF-8");
    free(t);
    return 0;
}

#ifndef SD3_LIBFUZZER
static int
s_replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_http_body: cannot open %s\n", path);
        return 1;
    }
    uint8_t *buf = malloc(4 << 20);
    size_t n = fread(buf, 1, 4 << 20, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int
main(int argc, char **argv)
{
    int files = 0, fails = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0) {
            fprintf(stderr, "fuzz_http_body: %s not found\n", argv[a]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            fails += s_replay_file(argv[a]);
            files++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            fails += s_replay_file(path);
            files++;
        }
        if (d)
            closedir(d);
    }
    printf("fuzz_http_body: %d inputs replayed\n", files);
    if (files == 0) {
        fprintf(stderr, "fuzz_http_body: no inputs (give the corpus folder)\n");
        return 1;
    }
    return fails ? 1 : 0;
}
#endif
