/*  test_tok_tiny - the self-made tiny tokenizer set (sd3_tok_write_tiny_set) read back through
 *  the same code as the real files; the prompt -> ids path end to end on it; hostile files.  */
#include "sd3_test.h"
#include "sd3_tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void
s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

int
main(void)
{
    char dir[1024], path[1200];
    sd3_err_t err = {0};
    snprintf(dir, sizeof dir, "%s/tiny-tok", sd3_test_tmpdir());
    CHECK_MSG(sd3_tok_write_tiny_set(dir, &err) == 0, "%s", err.msg);
    sd3_tokenizer_t *tok = sd3_tokenizer_new(dir, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    if (!tok)
        return TEST_RESULT();
    sd3_tok_bpe_t *l = sd3_tokenizer_clip_l(tok), *g = sd3_tokenizer_clip_g(tok);
    sd3_tok_spm_t *t5 = sd3_tokenizer_t5(tok);
    CHECK(sd3_tok_bpe_vocab_size(l) == SD3_TOK_TINY_CLIP_VOCAB);
    CHECK(sd3_tok_bpe_vocab_size(g) == SD3_TOK_TINY_CLIP_VOCAB);
    CHECK(sd3_tok_bpe_start_id(l) == SD3_TOK_TINY_CLIP_VOCAB - 2);
    CHECK(sd3_tok_bpe_end_id(l) == SD3_TOK_TINY_CLIP_VOCAB - 1);
    CHECK(sd3_tok_spm_vocab_size(t5) == SD3_TOK_TINY_T5_VOCAB);
    CHECK(sd3_tok_bpe_token_id(l, "!") == 0);         // CLIP-G pads with 0, "!" as in CLIP
    CHECK(sd3_tok_bpe_token_id(l, "cat</w>") == 698); // corpus words are single tokens
    CHECK(sd3_tok_spm_piece_id(t5, "<pad>") == 0 && sd3_tok_spm_piece_id(t5, "</s>") == 1 &&
          sd3_tok_spm_piece_id(t5, "<unk>") == 2);

    // a prompt end to end (regression ids of the tiny set)
    sd3_tokens_t t;
    const char *p = "a photo of a cat";
    CHECK_MSG(sd3_tokenizer_encode(tok, p, strlen(p), NULL, &t, &err) == 0, "%s", err.msg);
    static const int32_t want_l[8] = {1022, 320, 907, 893, 320, 698, 1023, 1023};
    static const int32_t want_t5[7] = {98, 107, 101, 98, 110, 1, 0};
    CHECK(!memcmp(t.clip_l, want_l, sizeof want_l) && t.clip_l[76] == 1023);
    CHECK(!memcmp(t.clip_g, want_l, 6 * sizeof(int32_t)) && t.clip_g[6] == 1023 &&
          t.clip_g[7] == 0 && t.clip_g[76] == 0);
    CHECK(t.n_t5 == 77 && !memcmp(t.t5, want_t5, sizeof want_t5));
    CHECK(t.n_chunks == 1 && t.clip_content_tokens == 5 && t.clip_l_pool_index == 6 &&
          t.clip_g_pool_index == 6);
    sd3_tokens_fini(&t);
    // fixed T5 length (diffusers-style): truncated with </s> last, or padded
    sd3_tok_opts_t opts = {.t5_len = 4};
    CHECK(sd3_tokenizer_encode(tok, p, strlen(p), &opts, &t, &err) == 0);
    CHECK(t.n_t5 == 4 && t.t5[2] == 101 && t.t5[3] == 1);
    sd3_tokens_fini(&t);
    opts.t5_len = 256;
    CHECK(sd3_tokenizer_encode(tok, p, strlen(p), &opts, &t, &err) == 0);
    CHECK(t.n_t5 == 256 && t.t5[5] == 1 && t.t5[255] == 0);
    sd3_tokens_fini(&t);
    // T5 special tokens and unknowns; CLIP special tokens in the raw text
    sd3_tok_ids_t ids = {0};
    CHECK(sd3_tok_spm_encode(t5, "x</s>y<extra_id_0><extra_id_99>", 31, &ids, &err) == 0);
    CHECK(ids.n >= 5 && ids.ids[ids.n - 2] == SD3_TOK_TINY_T5_VOCAB - 1 &&
          ids.ids[ids.n - 1] == SD3_TOK_TINY_T5_PIECES);
    ids.n = 0;
    CHECK(sd3_tok_spm_encode(t5, "\xe6\x97\xa5\xe6\x9c\xac", 6, &ids, &err) == 0);
    CHECK(ids.n == 2 && ids.ids[0] == 3 && ids.ids[1] == 2); // "▁" + one fused <unk>
    ids.n = 0;
    CHECK(sd3_tok_bpe_encode(l, "<|endoftext|>a", 14, &ids, &err) == 0);
    CHECK(ids.n == 2 && ids.ids[0] == 1023 && ids.ids[1] == 320);
    // a 20000-letter word: BPE stays fast (heap of pairs, not quadratic)
    char *big = malloc(20001);
    memset(big, 'a', 20000);
    big[20000] = 0;
    clock_t c0 = clock();
    ids.n = 0;
    CHECK(sd3_tok_bpe_encode(l, big, 20000, &ids, &err) == 0 && ids.n > 0);
    double secs = (double)(clock() - c0) / CLOCKS_PER_SEC;
    CHECK_MSG(secs < 2.0, "20000-byte word took %.2f s", secs);
    free(big);
    sd3_tok_ids_fini(&ids);
    // invalid UTF-8 -> EINVAL with a message
    CHECK(sd3_tokenizer_encode(tok, "ok \xc0\xaf", 5, NULL, &t, &err) == SD3_EINVAL);
    sd3_tokenizer_destroy(&tok);
    CHECK(tok == NULL);

    // hostile or missing files: clear errors, no crash
    sd3_err_t e2 = {0};
    CHECK(sd3_tokenizer_new("/nonexistent-sd3", &e2) == NULL && e2.code == SD3_ENOTFOUND);
    snprintf(path, sizeof path, "%s/tokenizer/vocab.json", dir);
    s_write(path, "{\"a\": 1, ");
    sd3_err_clear(&e2);
    CHECK(sd3_tokenizer_new(dir, &e2) == NULL && e2.code == SD3_EFORMAT);
    s_write(path, "{\"a\": -5}");
    sd3_err_clear(&e2);
    CHECK(sd3_tokenizer_new(dir, &e2) == NULL && e2.code == SD3_EFORMAT);
    s_write(path, "{\"a</w>\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}");
    sd3_err_clear(&e2);
    tok = sd3_tokenizer_new(dir, &e2);
    CHECK_MSG(tok != NULL, "%s", e2.msg);
    if (tok) { // a symbol outside the vocabulary: an error at encode time
        ids = (sd3_tok_ids_t){0};
        CHECK(sd3_tok_bpe_encode(sd3_tokenizer_clip_l(tok), "b", 1, &ids, &e2) == SD3_EFORMAT);
        sd3_tok_ids_fini(&ids);
        sd3_tokenizer_destroy(&tok);
    }
    CHECK(sd3_tok_write_tiny_set(dir, &e2) == 0);
    snprintf(path, sizeof path, "%s/tokenizer_3/spiece.model", dir);
    s_write(path, "\x0a\xff\xff\xff\x0f garbage");
    sd3_err_clear(&e2);
    CHECK(sd3_tokenizer_new(dir, &e2) == NULL && e2.code == SD3_EFORMAT);
    return TEST_RESULT();
}
