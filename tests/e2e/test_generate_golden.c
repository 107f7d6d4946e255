/*  test_generate_golden - `sd3ctl generate` itself against the e2e golden images
 *
 *  For each txt2img case of ../shared/testdata/e2e, runs the sd3ctl binary with the case's
 *  settings (read from its metadata), reads the PNG it wrote and the golden case's
 *  out.image_u8, and requires every byte within 1 and at most 0.2 % of bytes off
 *  (TESTVECTORS.md); checks the parameters text chunk names the prompt and seed. Then the
 *  same from the diffusers twin folder, which must give the same bytes as the single file.  */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd3_png.h"
#include "sd3_safetensors.h"
#include "sd3_test.h"

static char *
s_json_string(const char *v)
{
    cJSON *j = cJSON_Parse(v);
    char *out = j && cJSON_IsString(j) ? strdup(j->valuestring) : NULL;
    cJSON_Delete(j);
    return out;
}

// Runs one case; fills *rgb (caller frees) with the PNG's pixels. 0 on success.
static int
s_run(const char *data, const char *casefile, const char *model, const char *png,
      uint8_t **rgb, int *w, int *h)
{
    char path[4096], cmd[16384];
    sd3_err_t err = {0};
    snprintf(path, sizeof path, "%s/e2e/%s", data, casefile);
    sd3_st_t *st = sd3_st_open(path, &err);
    CHECK_MSG(st, "%s", err.msg);
    if (!st)
        return -1;
    char *prompt = s_json_string(sd3_st_metadata(st, "prompt"));
    char *neg = s_json_string(sd3_st_metadata(st, "negative_prompt"));
    char *params = NULL;
    // The prompt goes through a file-free argv: write it with printf %s into a shell-quoted
    // form by replacing ' with '\''.
    char qprompt[4096] = "", *q = qprompt;
    for (const char *s = prompt; s && *s && q < qprompt + sizeof qprompt - 8; s++) {
        if (*s == '\'') {
            memcpy(q, "'\\''", 4);
            q += 4;
        } else {
            *q++ = *s;
        }
    }
    *q = '\0';
    snprintf(cmd, sizeof cmd,
             "'%s/sd3ctl' generate '%s' --negative '%s' --model '%s/e2e/%s' --tokenizers "
             "'%s/tokenizers' --seed %s --steps %s --cfg %s --shift %s --sampler %s --size %sx%s "
             "--precision f32 --quiet -o '%s'",
             SD3_BINARY_DIR, qprompt, neg ? neg : "", data, model, data,
             sd3_st_metadata(st, "seed"), sd3_st_metadata(st, "steps"),
             sd3_st_metadata(st, "cfg_scale"), sd3_st_metadata(st, "shift"),
             sd3_st_metadata(st, "sampler"), sd3_st_metadata(st, "width"),
             sd3_st_metadata(st, "height"), png);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "%s exited %d", cmd, rc);
    if (rc == 0 && sd3_png_read(png, rgb, w, h, &params, &err) != 0) {
        CHECK_MSG(0, "%s: %s", png, err.msg);
        rc = -1;
    }
    if (rc == 0) {
        CHECK_MSG(params && strstr(params, prompt) && strstr(params, "Seed: "),
                  "parameters chunk: %s", params ? params : "(none)");
        sd3_tensor_t want;
        if (sd3_st_get(st, "out.image_u8", &want, &err) == 0 &&
            sd3_tensor_numel(&want) == (int64_t)*w * *h * 3) {
            size_t n = (size_t)*w * (size_t)*h * 3, off = 0, worst = 0;
            const uint8_t *b = want.data;
            for (size_t i = 0; i < n; i++) {
                size_t d = (*rgb)[i] > b[i] ? (size_t)((*rgb)[i] - b[i]) : (size_t)(b[i] - (*rgb)[i]);
                off += d != 0;
                worst = d > worst ? d : worst;
            }
            printf("%s via %s: %zu of %zu bytes off, max %zu\n", casefile, model, off, n, worst);
            CHECK(worst <= 1 && off <= n / 500);
        } else {
            CHECK_MSG(0, "%s: golden image missing or of another size (%dx%d)", casefile, *w, *h);
        }
    }
    free(params);
    free(prompt);
    free(neg);
    sd3_st_destroy(&st);
    return rc;
}

int
main(void)
{
    const char *data = sd3_test_data_dir();
    if (!data)
        return 77;
    char png[512];
    const char *cases[] = {"case-sd3m-euler.safetensors", "case-sd3m-dpmpp2m.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        uint8_t *a = NULL, *b = NULL;
        int wa = 0, ha = 0, wb = 0, hb = 0;
        snprintf(png, sizeof png, "%s/single.png", sd3_test_tmpdir());
        s_run(data, cases[i], "tiny-sd3-medium-incl-clips-t5.safetensors", png, &a, &wa, &ha);
        snprintf(png, sizeof png, "%s/diffusers.png", sd3_test_tmpdir());
        s_run(data, cases[i], "tiny-sd3-medium-diffusers", png, &b, &wb, &hb);
        CHECK_MSG(a && b && wa == wb && ha == hb && !memcmp(a, b, (size_t)wa * ha * 3),
                  "%s: the diffusers folder and the single file differ", cases[i]);
        free(a);
        free(b);
    }
    return TEST_RESULT();
}
