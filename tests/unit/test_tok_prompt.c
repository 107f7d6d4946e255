/*  test_tok_prompt - the reference's prompt rules (stages/encoder/sd3_prompt.c): Python
 *  float(), weight syntax, words, and the 77-token chunk packing at its edges.  */
#include "sd3_test.h"
#include "sd3_tok.h"

#include <stdlib.h>
#include <string.h>

static void
s_expect_words(const char *prompt, const char *const *want, size_t n_want)
{
    sd3_prompt_words_t w = {0};
    sd3_err_t err = {0};
    int rc = sd3_prompt_words(prompt, strlen(prompt), &w, &err);
    CHECK_MSG(rc == 0, "%s: %s", prompt, err.msg);
    CHECK_MSG(w.n == n_want, "\"%s\": %zu words, want %zu", prompt, w.n, n_want);
    for (size_t i = 0; i < w.n && i < n_want; i++)
        CHECK_MSG(!strcmp(w.words[i], want[i]), "\"%s\" word %zu: \"%s\", want \"%s\"", prompt, i,
                  w.words[i], want[i]);
    sd3_prompt_words_fini(&w);
}

#define WORDS(p, ...)                                                                              \
    do {                                                                                           \
        static const char *const want_[] = {__VA_ARGS__};                                          \
        s_expect_words(p, want_, sizeof want_ / sizeof want_[0]);                                  \
    } while (0)

static sd3_tok_ids_t
s_word(size_t n, int32_t first)
{
    sd3_tok_ids_t w = {0};
    for (size_t i = 0; i < n; i++)
        sd3_tok_ids_push(&w, first + (int32_t)i, NULL);
    return w;
}

int
main(void)
{
    // Python float()
    static const char *const yes[] = {"1.3", " 1.5 ",     "1e1",     "-2",
                                      "+.5", "5.",        "1_000.5", "1e1_0",
                                      "inf", "-Infinity", "NaN",     "\xd9\xa1.\xd9\xa5"};
    static const char *const no[] = {"",   "b",    ".",     "1__0", "_1",   "1_",  "1._5",
                                     "e5", "0x10", "1.5.2", "1e",   "in f", "1.2)"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        CHECK_MSG(sd3_prompt_is_py_float(yes[i], strlen(yes[i])), "float('%s')", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        CHECK_MSG(!sd3_prompt_is_py_float(no[i], strlen(no[i])), "not float('%s')", no[i]);

    // the golden prompts' rules (TESTVECTORS-enc.md §1.1)
    WORDS("(masterpiece:1.3), (best quality), ((very detailed)), [square] {curly}", "masterpiece",
          ",", "best", "quality", ",", "very", "detailed", ",", "[square]", "{curly}");
    WORDS("escaped \\(parenthesis\\) and unbalanced (open and close) ) extra", "escaped",
          "(parenthesis)", "and", "unbalanced", "open", "and", "close", ")", "extra");
    WORDS("(a:b) (:1.5) () (nested (inner:0.5) outer) (x:1e1)", "a:b", ":1.5", "nested", "inner",
          "outer", "x");
    WORDS("line one\nline\ttwo  ", "line", "one", "line\ttwo");
    WORDS("((a)", "(a");
    WORDS("a:1.2) b", "a:1.2)", "b");
    WORDS("(x:1:2)", "x:1");
    {
        sd3_prompt_words_t w = {0};
        CHECK(sd3_prompt_words("   \n  ", 6, &w, NULL) == 0 && w.n == 0);
        CHECK(sd3_prompt_words("a\0b c", 5, &w, NULL) == 0 && w.n == 2 && w.lens[0] == 3);
        sd3_prompt_words_fini(&w);
        CHECK(sd3_prompt_words("bad \xc3", 5, &w, NULL) == SD3_EINVAL);
    }

    // packing: 75 one-token words fill chunk 0 exactly; 76 spill one word; a small word
    // that does not fit moves whole; a large one (>= 8 tokens) is split
    sd3_prompt_pack_t clip = {
        .start = 100, .end = 101, .pad = 0, .max_length = 77, .pad_to_max = true};
    sd3_tok_ids_t words[80];
    for (int i = 0; i < 80; i++)
        words[i] = s_word(1, 1 + i);
    sd3_tok_ids_t out = {0};
    size_t chunks = 0;
    CHECK(sd3_prompt_pack(&clip, words, 75, &out, &chunks, NULL) == 0);
    CHECK(chunks == 1 && out.n == 77 && out.ids[0] == 100 && out.ids[75] == 75 &&
          out.ids[76] == 101);
    out.n = 0;
    CHECK(sd3_prompt_pack(&clip, words, 76, &out, &chunks, NULL) == 0);
    CHECK(chunks == 2 && out.n == 154 && out.ids[76] == 101 && out.ids[77] == 100 &&
          out.ids[78] == 76 && out.ids[79] == 101 && out.ids[80] == 0);
    sd3_tok_ids_t mixed[3] = {s_word(74, 1), s_word(3, 200), s_word(10, 300)};
    out.n = 0;
    CHECK(sd3_prompt_pack(&clip, mixed, 2, &out, &chunks, NULL) == 0);
    CHECK(chunks == 2 && out.ids[74] == 74 && out.ids[75] == 101 && out.ids[76] == 0 &&
          out.ids[78] == 200);
    sd3_tok_ids_t big[2] = {s_word(70, 1), s_word(10, 300)};
    out.n = 0;
    CHECK(sd3_prompt_pack(&clip, big, 2, &out, &chunks, NULL) == 0);
    CHECK(chunks == 2 && out.ids[71] == 300 && out.ids[75] == 304 && out.ids[76] == 101 &&
          out.ids[78] == 305 && out.ids[83] == 101);
    // T5: no start, no max, min length 77
    sd3_prompt_pack_t t5 = {
        .start = -1, .end = 1, .pad = 0, .max_length = 99999999, .min_length = 77};
    out.n = 0;
    CHECK(sd3_prompt_pack(&t5, words, 3, &out, &chunks, NULL) == 0);
    CHECK(chunks == 1 && out.n == 77 && out.ids[2] == 3 && out.ids[3] == 1 && out.ids[76] == 0);
    sd3_tok_ids_t longw = s_word(125, 5);
    out.n = 0;
    CHECK(sd3_prompt_pack(&t5, &longw, 1, &out, &chunks, NULL) == 0);
    CHECK(out.n == 126 && out.ids[125] == 1);
    sd3_tok_ids_fini(&out);
    sd3_tok_ids_fini(&longw);
    for (int i = 0; i < 80; i++)
        sd3_tok_ids_fini(&words[i]);
    for (int i = 0; i < 3; i++)
        sd3_tok_ids_fini(&mixed[i]);
    for (int i = 0; i < 2; i++)
        sd3_tok_ids_fini(&big[i]);
    return TEST_RESULT();
}
