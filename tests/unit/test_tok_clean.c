/*  test_tok_clean - the ftfy-like clean-up, whitespace clean, Python lower, UTF-8 checks
 *  (stages/encoder/sd3_tok_clean.c): each ftfy step on its own, then the CLIP piece clean.  */
#include "sd3_test.h"
#include "sd3_tok.h"

#include <stdlib.h>
#include <string.h>

static void
s_expect_ftfy(const char *in, const char *want)
{
    char *out = NULL;
    size_t n = 0;
    sd3_err_t err = {0};
    int rc = sd3_tok_ftfy(in, strlen(in), &out, &n, &err);
    CHECK_MSG(rc == 0 && n == strlen(want) && !memcmp(out, want, n),
              "ftfy(\"%s\") = \"%s\", want \"%s\"", in, out ? out : err.msg, want);
    free(out);
}

static void
s_expect_clean(const char *in, const char *want)
{
    char *out = NULL;
    size_t n = 0;
    sd3_err_t err = {0};
    int rc = sd3_tok_clip_clean(in, strlen(in), &out, &n, &err);
    CHECK_MSG(rc == 0 && n == strlen(want) && !memcmp(out, want, n),
              "clip_clean(\"%s\") = \"%s\", want \"%s\"", in, out ? out : err.msg, want);
    free(out);
}

int
main(void)
{
    // HTML entities: unescaped until nothing changes; never when the text holds '<'
    s_expect_ftfy("Tom &amp; Jerry", "Tom & Jerry");
    s_expect_ftfy("&amp;amp;", "&");
    s_expect_ftfy("&amp;lt;3", "<3");
    s_expect_ftfy("<b>&amp;</b>", "<b>&amp;</b>");
    s_expect_ftfy("&quot;q&quot; &#39;x&#39; &#x41;", "\"q\" 'x' A");
    s_expect_ftfy("&NTILDE;", "\xc3\x91");     // upper-cased name -> upper text
    s_expect_ftfy("&#59;", "&#59;");           // would give ';': kept
    s_expect_ftfy("&#128;", "\xe2\x82\xac");   // Windows-1252 reading
    s_expect_ftfy("a&#1;b", "ab");             // an invalid code point: dropped
    s_expect_ftfy("&#xD800;", "\xef\xbf\xbd"); // surrogate -> U+FFFD
    s_expect_ftfy("&nosuchentity;", "&nosuchentity;");
    s_expect_ftfy("&abcdefghijklmnopqrstuvwxy;", "&abcdefghijklmnopqrstuvwxy;"); // 25 > 24
    // C1 controls, ligatures, width, quotes, line breaks, escapes, controls, NFC
    s_expect_ftfy("a\xc2\x85z", "a\xe2\x80\xa6z"); // U+0085 -> U+2026, not a line break
    s_expect_ftfy("\xef\xac\x81ne \xef\xac\x82ower", "fine flower");
    s_expect_ftfy("\xef\xac\x85", "\xc5\xbft"); // U+FB05 -> long s + t
    s_expect_ftfy("\xc7\x84", "D\xc5\xbd");     // U+01C4 -> D + Z caron (NFC)
    s_expect_ftfy("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\x91\xe3\x80\x80x", "AB1 x");
    s_expect_ftfy("\xe2\x80\x9c"
                  "d"
                  "\xe2\x80\x9d \xe2\x80\x98s\xe2\x80\x99 \xca\xbc",
                  "\"d\" 's' '");
    s_expect_ftfy("a\r\nb\rc\xe2\x80\xa8"
                  "d",
                  "a\nb\nc\nd");
    s_expect_ftfy("\x1b[31;1mred\x1b[0m", "red");
    s_expect_ftfy("bell\x07 tab\t zw\xe2\x80\x8bsp \xef\xbb\xbf"
                  "bom",
                  "bell tab\t zw\xe2\x80\x8bsp bom");
    s_expect_ftfy("e\xcc\x81", "\xc3\xa9");
    // the CLIP piece clean: whitespace runs, ends, Python lower (final sigma, dotted I)
    s_expect_clean("  A\t\tB \xc2\xa0 C  ", "a b c");
    s_expect_clean("\xce\x9f\xce\x94\xce\x9f\xce\xa3", "\xce\xbf\xce\xb4\xce\xbf\xcf\x82");
    s_expect_clean("\xce\xa3\xce\x91", "\xcf\x83\xce\xb1");
    s_expect_clean("\xc4\xb0x", "i\xcc\x87x");
    s_expect_clean("\xef\xbc\xa6\xef\xbc\xb5\xef\xbc\xac\xef\xbc\xac", "full");
    s_expect_clean("", "");
    // invalid UTF-8 is refused
    static const char *const bad[] = {
        "\x80", "caf\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sd3_err_t err = {0};
        char *out = NULL;
        CHECK_MSG(sd3_tok_utf8_check(bad[i], strlen(bad[i]), &err) == SD3_EINVAL, "bad[%zu]", i);
        CHECK(strstr(err.msg, "invalid UTF-8") != NULL);
        CHECK(sd3_tok_clip_clean(bad[i], strlen(bad[i]), &out, NULL, NULL) == SD3_EINVAL);
        CHECK(out == NULL);
    }
    CHECK(sd3_tok_utf8_check("\xf0\x9f\x98\x80 ok", 7, NULL) == 0);
    return TEST_RESULT();
}
