/*  sd3ctl_eval_tok - `sd3ctl eval tokenize --model DIR --vectors tokens.json`
 *
 *  For every prompt of a tokens.json (TESTVECTORS-enc.md §1) it tokenizes the prompt's
 *  exact bytes (`prompt_utf8_hex`) through sd3_tokenizer_encode, the daemon's path, and
 *  compares each stored field exactly: clip_l, clip_g, t5, t5_prompt, clip_l_extra_chunks,
 *  clip_g_extra_chunks, clip_content_tokens, clip_l_pool_index, clip_g_pool_index. Fields a
 *  file does not hold are not compared; the `*_noftfy` fields are information only (this
 *  build follows the ftfy path). DIR: clip/ + t5/, or a diffusers folder.  */
#include "sd3_tok.h"
#include "sd3ctl.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *
s_read_text(const char *path, size_t *len, sd3_err_t *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (!f) {
        sd3_err_set(err, SD3_ENOTFOUND, "%s: cannot open", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || n > (64L << 20) ||
        fseek(f, 0, SEEK_SET) != 0 || !(buf = malloc((size_t)n + 1)) ||
        fread(buf, 1, (size_t)n, f) != (size_t)n) {
        sd3_err_set(err, SD3_EIO, "%s: cannot read (at most 64 MiB)", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static int
s_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

// Compares got[0..n) with a JSON array of ints; records one line.
static void
s_check_ids(sd3_eval_t *ev, const char *name, const int32_t *got, size_t n, const cJSON *want)
{
    size_t wn = (size_t)cJSON_GetArraySize(want);
    size_t i = 0;
    const cJSON *it = want->child;
    for (; i < n && it; i++, it = it->next)
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)got[i])
            break;
    if (n == wn && i == n) {
        sd3_eval_record(ev, name, true, "%zu ids", n);
        return;
    }
    if (i < n && it)
        sd3_eval_record(ev, name, false, "len %zu/%zu, first diff at %zu: got %d want %.0f", n, wn,
                        i, got[i], it->valuedouble);
    else
        sd3_eval_record(ev, name, false, "len %zu, want %zu", n, wn);
}

static void
s_check_int(sd3_eval_t *ev, const char *name, long got, const cJSON *want)
{
    bool ok = cJSON_IsNumber(want) && want->valuedouble == (double)got;
    sd3_eval_record(ev, name, ok, "got %ld want %.0f", got,
                    cJSON_IsNumber(want) ? want->valuedouble : -1.0);
}

static void
s_check_chunks(sd3_eval_t *ev, const char *name, const int32_t *chunks, size_t n_extra,
               const cJSON *want)
{
    size_t wn = (size_t)cJSON_GetArraySize(want);
    if (wn != n_extra) {
        sd3_eval_record(ev, name, false, "%zu extra chunks, want %zu", n_extra, wn);
        return;
    }
    size_t k = 0;
    for (const cJSON *c = want->child; c; c = c->next, k++) {
        const int32_t *got = chunks + (k + 1) * SD3_TOK_CLIP_LEN;
        size_t cn = (size_t)cJSON_GetArraySize(c);
        size_t i = 0;
        const cJSON *it = c->child;
        for (; i < SD3_TOK_CLIP_LEN && it; i++, it = it->next)
            if (!cJSON_IsNumber(it) || it->valuedouble != (double)got[i])
                break;
        if (cn != SD3_TOK_CLIP_LEN || i != SD3_TOK_CLIP_LEN) {
            sd3_eval_record(ev, name, false, "chunk %zu differs at %zu", k + 1, i);
            return;
        }
    }
    sd3_eval_record(ev, name, true, "%zu extra chunks", n_extra);
}

int
sd3_eval_tokenize(sd3_eval_t *ev, sd3_err_t *err)
{
    const char *model = sd3_eval_model(ev);
    size_t len = 0;
    char *text = NULL, *prompt = NULL;
    cJSON *json = NULL;
    sd3_tokenizer_t *tok = NULL;
    int rc = 0;
    if (!model)
        return sd3_err_set(err, SD3_EINVAL,
                           "tokenize needs --model (a folder with clip/ + t5/ "
                           "or a diffusers folder)");
    if (!(tok = sd3_tokenizer_new(model, err)))
        return err->code ? err->code : SD3_EFORMAT;
    if (!(text = s_read_text(sd3_eval_vectors_path(ev), &len, err))) {
        rc = err->code;
        goto done;
    }
    json = cJSON_ParseWithLength(text, len);
    const cJSON *prompts = json ? cJSON_GetObjectItemCaseSensitive(json, "prompts") : NULL;
    if (!cJSON_IsArray(prompts)) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: no \"prompts\" array", sd3_eval_vectors_path(ev));
        goto done;
    }
    int index = 0;
    for (const cJSON *p = prompts->child; p; p = p->next, index++) {
        const cJSON *jname = cJSON_GetObjectItemCaseSensitive(p, "name");
        const cJSON *jhex = cJSON_GetObjectItemCaseSensitive(p, "prompt_utf8_hex");
        const cJSON *jtext = cJSON_GetObjectItemCaseSensitive(p, "prompt");
        char name[160], field[256];
        snprintf(name, sizeof name, "%s", cJSON_IsString(jname) ? jname->valuestring : "prompt");
        if (!cJSON_IsString(jname))
            snprintf(name, sizeof name, "prompt%d", index);
        size_t plen = 0;
        free(prompt);
        prompt = NULL;
        if (cJSON_IsString(jhex)) {
            size_t hl = strlen(jhex->valuestring);
            prompt = malloc(hl / 2 + 1);
            if (!prompt) {
                rc = sd3_err_set(err, SD3_ENOMEM, "out of memory");
                goto done;
            }
            for (size_t i = 0; i + 1 < hl + 1 && i < hl; i += 2) {
                int hi = s_hex(jhex->valuestring[i]);
                int lo = i + 1 < hl ? s_hex(jhex->valuestring[i + 1]) : -1;
                if (hi < 0 || lo < 0) {
                    rc = sd3_err_set(err, SD3_EFORMAT, "%s: prompt_utf8_hex is not hex", name);
                    goto done;
                }
                prompt[plen++] = (char)(hi << 4 | lo);
            }
        } else if (cJSON_IsString(jtext)) {
            prompt = strdup(jtext->valuestring);
            plen = prompt ? strlen(prompt) : 0;
        } else {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: no prompt_utf8_hex or prompt", name);
            goto done;
        }
        if (!prompt) {
            rc = sd3_err_set(err, SD3_ENOMEM, "out of memory");
            goto done;
        }
        sd3_tokens_t t;
        sd3_err_t terr = {0};
        if (sd3_tokenizer_encode(tok, prompt, plen, NULL, &t, &terr) != 0) {
            sd3_eval_record(ev, name, false, "tokenize failed: %s", terr.msg);
            continue;
        }
        const cJSON *w;
#define FIELD(key) (snprintf(field, sizeof field, "%s.%s", name, key), field)
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_l")))
            s_check_ids(ev, FIELD("clip_l"), t.clip_l, SD3_TOK_CLIP_LEN, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_g")))
            s_check_ids(ev, FIELD("clip_g"), t.clip_g, SD3_TOK_CLIP_LEN, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "t5")))
            s_check_ids(ev, FIELD("t5"), t.t5, t.n_t5, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "t5_prompt")) && cJSON_IsString(w)) {
            // what T5 sees: the first 226 code points of the prompt
            size_t off = 0, cps = 0;
            while (off < plen && cps < SD3_TOK_T5_MAX_CHARS) {
                off++;
                while (off < plen && ((unsigned char)prompt[off] & 0xc0) == 0x80)
                    off++;
                cps++;
            }
            // cJSON ends a string at an escaped NUL: compare up to the first NUL then
            const char *nul = memchr(prompt, 0, off);
            size_t cmp = nul ? (size_t)(nul - prompt) : off;
            bool ok = strlen(w->valuestring) == cmp && !memcmp(w->valuestring, prompt, cmp);
            sd3_eval_record(ev, FIELD("t5_prompt"), ok, "%zu chars", cps);
        }
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_l_extra_chunks")))
            s_check_chunks(ev, FIELD("clip_l_extra_chunks"), t.clip_l_chunks, t.n_chunks - 1, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_g_extra_chunks")))
            s_check_chunks(ev, FIELD("clip_g_extra_chunks"), t.clip_g_chunks, t.n_chunks - 1, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_content_tokens")))
            s_check_int(ev, FIELD("clip_content_tokens"), t.clip_content_tokens, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_l_pool_index")))
            s_check_int(ev, FIELD("clip_l_pool_index"), t.clip_l_pool_index, w);
        if ((w = cJSON_GetObjectItemCaseSensitive(p, "clip_g_pool_index")))
            s_check_int(ev, FIELD("clip_g_pool_index"), t.clip_g_pool_index, w);
#undef FIELD
        sd3_tokens_fini(&t);
    }
done:
    free(prompt);
    free(text);
    cJSON_Delete(json);
    sd3_tokenizer_destroy(&tok);
    return rc;
}
