/*  fuzz_tokenizers - libFuzzer target for prompt text: CLIP BPE, T5 SentencePiece, the
 *  reference's prompt rules (stages/encoder/sd3_tok.h)
 *
 *  The first input byte picks the path: 0 the whole prompt (reference T5 rule), 1 the CLIP
 *  BPE of one text, 2 the T5 tokenizer of one text, 3 the whole prompt with a fixed T5
 *  length, 4 the weight-syntax words only; the rest is the text. Invalid UTF-8 must come
 *  back as SD3_EINVAL, anything else must hold the output invariants; a violation aborts.
 *  Tokenizers: the folder in $SD3_FUZZ_TOKENIZERS (e.g. shared/testdata/tokenizers), else
 *  the tiny self-made set written to a temporary folder.
 *  Built by ctest (label fuzz) as a replayer: `fuzz_tokenizers DIR|FILE...` runs every
 *  file once. libFuzzer build, by hand:
 *    clang -DSD3_LIBFUZZER -fsanitize=fuzzer,address,undefined -g -O1 -I stages/encoder \
 *      -I daemon/base tests/fuzz/fuzz_tokenizers.c stages/encoder/sd3_tok*.c \
 *      stages/encoder/sd3_prompt.c daemon/base/sd3_err.c <shim .o> -lsentencepiece ...  */
#include "sd3_tok.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static sd3_tokenizer_t *s_tok;
static char s_tiny_dir[64]; // the temporary tiny set, removed by the replayer's main

static void
s_fail(const char *what)
{
    fprintf(stderr, "fuzz_tokenizers: invariant broken: %s\n", what);
    abort();
}

static void
s_init(void)
{
    sd3_err_t err = {0};
    const char *dir = getenv("SD3_FUZZ_TOKENIZERS");
    char tmpl[] = "/tmp/sd3-fuzz-tok-XXXXXX";
    if (!dir || !*dir) {
        if (!mkdtemp(tmpl) || sd3_tok_write_tiny_set(tmpl, &err) != 0) {
            fprintf(stderr, "fuzz_tokenizers: tiny set: %s\n", err.msg);
            exit(2);
        }
        dir = tmpl;
        snprintf(s_tiny_dir, sizeof s_tiny_dir, "%s", tmpl);
    }
    if (!(s_tok = sd3_tokenizer_new(dir, &err))) {
        fprintf(stderr, "fuzz_tokenizers: %s\n", err.msg);
        exit(2);
    }
}

static void
s_check_tokens(const sd3_tokens_t *t, sd3_tokenizer_t *tok, int t5_len)
{
    int32_t start = sd3_tok_bpe_start_id(sd3_tokenizer_clip_l(tok));
    int32_t end = sd3_tok_bpe_end_id(sd3_tokenizer_clip_l(tok));
    if (t->n_chunks < 1 || t->clip_l[0] != start || t->clip_g[0] != start)
        s_fail("CLIP chunk 0 does not start with the start token");
    for (size_t c = 0; c < t->n_chunks; c++) {
        const int32_t *l = t->clip_l_chunks + c * SD3_TOK_CLIP_LEN;
        const int32_t *g = t->clip_g_chunks + c * SD3_TOK_CLIP_LEN;
        bool has_end = false;
        for (int i = 0; i < SD3_TOK_CLIP_LEN; i++) {
            if (l[i] < 0 || (size_t)l[i] >= sd3_tok_bpe_vocab_size(sd3_tokenizer_clip_l(tok)))
                s_fail("CLIP id out of the vocabulary");
            if (l[i] != g[i] && !(l[i] == end && g[i] == 0))
                s_fail("CLIP-L and CLIP-G differ beyond the pad id");
            has_end |= l[i] == end;
        }
        if (!has_end)
            s_fail("CLIP chunk without an end token");
    }
    if (t->clip_l_pool_index < 0 || t->clip_l_pool_index >= SD3_TOK_CLIP_LEN)
        s_fail("pool index out of range");
    if (t5_len ? t->n_t5 != (size_t)t5_len : t->n_t5 < SD3_TOK_T5_MIN_LEN)
        s_fail("T5 length");
    size_t vocab = sd3_tok_spm_vocab_size(sd3_tokenizer_t5(tok));
    bool seen_end = false;
    for (size_t i = 0; i < t->n_t5; i++) {
        if (t->t5[i] < 0 || (size_t)t->t5[i] >= vocab)
            s_fail("T5 id out of the vocabulary");
        seen_end |= t->t5[i] == 1;
    }
    if (!seen_end)
        s_fail("T5 sequence without </s>");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!s_tok)
        s_init();
    if (size == 0)
        return 0;
    int mode = data[0] % 5;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    bool valid = sd3_tok_utf8_check(text, len, NULL) == 0;
    sd3_err_t err = {0};
    int rc = 0;
    if (mode == 0 || mode == 3) {
        sd3_tok_opts_t opts = {.t5_len = mode == 3 ? 1 + (len ? (uint8_t)text[0] : 0) : 0};
        sd3_tokens_t t;
        rc = sd3_tokenizer_encode(s_tok, text, len, &opts, &t, &err);
        if (rc == 0) {
            s_check_tokens(&t, s_tok, opts.t5_len);
            sd3_tokens_fini(&t);
        }
    } else if (mode == 1 || mode == 2) {
        sd3_tok_ids_t ids = {0};
        rc = mode == 1 ? sd3_tok_bpe_encode(sd3_tokenizer_clip_l(s_tok), text, len, &ids, &err)
                       : sd3_tok_spm_encode(sd3_tokenizer_t5(s_tok), text, len, &ids, &err);
        sd3_tok_ids_fini(&ids);
    } else {
        sd3_prompt_words_t w = {0};
        rc = sd3_prompt_words(text, len, &w, &err);
        for (size_t i = 0; rc == 0 && i < w.n; i++)
            if (w.lens[i] == 0 || memchr(w.words[i], ' ', w.lens[i]))
                s_fail("empty word or a word with a space");
        sd3_prompt_words_fini(&w);
    }
    if (!valid && rc != SD3_EINVAL)
        s_fail("invalid UTF-8 not refused with SD3_EINVAL");
    if (valid && rc != 0 && !(rc == SD3_EINVAL && len > SD3_TOK_MAX_WORD_BYTES))
        s_fail(err.msg[0] ? err.msg : "valid text refused");
    return 0;
}

#ifndef SD3_LIBFUZZER
static int
s_run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz_tokenizers: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t k;
    while (buf && (k = fread(buf + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            uint8_t *p = realloc(buf, cap * 2);
            if (!p)
                break;
            buf = p;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return -1;
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

int
main(int argc, char **argv)
{
    int count = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0) {
            fprintf(stderr, "fuzz_tokenizers: %s: not found\n", argv[a]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (s_run_file(argv[a]) != 0)
                return 1;
            count++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            char path[4096];
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            if (s_run_file(path) != 0)
                return 1;
            count++;
        }
        if (d)
            closedir(d);
    }
    printf("fuzz_tokenizers: %d inputs replayed, no invariant broken\n", count);
    sd3_tokenizer_destroy(&s_tok);
    if (s_tiny_dir[0]) {
        static const char *const files[] = {"tokenizer/vocab.json",
                                            "tokenizer/merges.txt",
                                            "tokenizer_2/vocab.json",
                                            "tokenizer_2/merges.txt",
                                            "tokenizer_3/spiece.model",
                                            "tokenizer",
                                            "tokenizer_2",
                                            "tokenizer_3",
                                            ""};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            char path[256];
            snprintf(path, sizeof path, "%s/%s", s_tiny_dir, files[i]);
            remove(path);
        }
    }
    return count > 0 ? 0 : 1;
}
#endif
