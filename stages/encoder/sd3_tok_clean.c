/*  sd3_tok_clean - the text clean-up in front of the CLIP BPE (ftfy-like, whitespace, lower)
 *
 *  HF CLIPTokenizer with ftfy importable cleans each piece as
 *  lower(whitespace_clean(ftfy.fix_text(piece))) (TESTVECTORS-enc.md §1.2). This file does
 *  the same on code points, with utf8proc for every Unicode property and normalization.
 *  ftfy 6.3 fix_text, default config, applies in one pass (repeated until nothing changes):
 *    unescape_html (only when the text has no '<'), fix_encoding (mojibake: NOT done here),
 *    fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes,
 *    fix_line_breaks, fix_surrogates (nothing to do on valid UTF-8),
 *    remove_terminal_escapes, remove_control_chars, NFC.
 *  Called by sd3_tok_bpe.c; never prints.  */
#include "sd3_tok.h"
#include "sd3_tok_entities.inc"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- a growable code point buffer ----------------------------------------------------- */

typedef struct {
    int32_t *v;
    size_t n, cap;
} s_cps_t;

static int
s_cps_push(s_cps_t *c, int32_t cp)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        int32_t *v = realloc(c->v, cap * sizeof *v);
        if (!v)
            return -1;
        c->v = v;
        c->cap = cap;
    }
    c->v[c->n++] = cp;
    return 0;
}

static int
s_cps_push_utf8(s_cps_t *c, const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    while (n) {
        int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p, (utf8proc_ssize_t)n, &cp);
        if (k <= 0)
            return -1;
        if (s_cps_push(c, cp) != 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void
s_cps_swap(s_cps_t *a, s_cps_t *b)
{
    s_cps_t t = *a;
    *a = *b;
    *b = t;
}

int
sd3_tok_utf8_check(const char *s, size_t n, sd3_err_t *err)
{
    size_t off = 0;
    while (off < n) {
        int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const uint8_t *)s + off, (utf8proc_ssize_t)(n - off), &cp);
        if (k <= 0)
            return sd3_err_set(err, SD3_EINVAL,
                               "prompt: invalid UTF-8 at byte %zu (0x%02x), want valid UTF-8", off,
                               (unsigned)(uint8_t)s[off]);
        off += (size_t)k;
    }
    return 0;
}

static int
s_decode(const char *s, size_t n, s_cps_t *out, sd3_err_t *err)
{
    size_t off = 0;
    while (off < n) {
        int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const uint8_t *)s + off, (utf8proc_ssize_t)(n - off), &cp);
        if (k <= 0)
            return sd3_err_set(err, SD3_EINVAL,
                               "prompt: invalid UTF-8 at byte %zu (0x%02x), want valid UTF-8", off,
                               (unsigned)(uint8_t)s[off]);
        if (s_cps_push(out, cp) != 0)
            return sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory decoding %zu bytes", n);
        off += (size_t)k;
    }
    return 0;
}

static int
s_encode(const s_cps_t *c, char **out, size_t *out_len, sd3_err_t *err)
{
    char *buf = malloc(c->n * 4 + 1);
    size_t len = 0;
    if (!buf)
        return sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory encoding %zu chars", c->n);
    for (size_t i = 0; i < c->n; i++)
        len += (size_t)utf8proc_encode_char(c->v[i], (uint8_t *)buf + len);
    buf[len] = 0;
    *out = buf;
    if (out_len)
        *out_len = len;
    return 0;
}

/* ---- the single steps ----------------------------------------------------------------- */

// Python's str.isspace: category Zs or bidirectional class WS, B or S.
static bool
s_py_isspace(int32_t cp)
{
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

static int
s_entity_cmp(const void *key, const void *elem)
{
    const char *k = key;
    const char *name = *(const char *const *)elem;
    return strcmp(k, name);
}

// html.unescape of one numeric reference "&#NNN;" / "&#xHH;" body (digits without '&#', ';').
// Returns the code point, -1 for "" (an invalid code point Python drops), -2 when
// html.unescape would not consume the whole reference (ftfy keeps the text then).
static int32_t
s_charref(const int32_t *body, size_t n)
{
    // Windows-1252 reading of the C1 range, as html._invalid_charrefs gives it.
    static const uint16_t s_cp1252[32] = {
        0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008d, 0x017d, 0x008f, 0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
        0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178};
    bool hex = n > 0 && (body[0] == 'x' || body[0] == 'X');
    size_t i = hex ? 1 : 0;
    if (i == n)
        return -2;
    uint64_t num = 0;
    for (; i < n; i++) {
        int d;
        int32_t c = body[i];
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (hex && c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (hex && c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -2;
        num = num * (hex ? 16 : 10) + (uint64_t)d;
        if (num > 0x110000)
            num = 0x110000; // saturate: anything past U+10FFFF gives U+FFFD
    }
    if (num == 0)
        return 0xfffd;
    if (num == 0x0d)
        return '\r';
    if (num >= 0x80 && num <= 0x9f)
        return s_cp1252[num - 0x80];
    if ((num >= 0xd800 && num <= 0xdfff) || num > 0x10ffff)
        return 0xfffd;
    if ((num >= 0x1 && num <= 0x8) || (num >= 0xe && num <= 0x1f) || (num >= 0x7f && num <= 0x9f) ||
        (num >= 0xfdd0 && num <= 0xfdef) || num == 0xb || (num & 0xfffe) == 0xfffe)
        return -1;
    return (int32_t)num;
}

// ftfy fixes.unescape_html: every match of &#?[0-9A-Za-z]{1,24}; that names an entity (or a
// numeric reference html.unescape decodes in full, to text without ';') is replaced.
static int
s_unescape_html(const s_cps_t *in, s_cps_t *out)
{
    size_t i = 0;
    while (i < in->n) {
        if (in->v[i] != '&') {
            if (s_cps_push(out, in->v[i++]) != 0)
                return -1;
            continue;
        }
        size_t j = i + 1;
        bool num = j < in->n && in->v[j] == '#';
        if (num)
            j++;
        size_t k = j;
        while (k < in->n && k - j < 25 && in->v[k] < 128 &&
               ((in->v[k] >= '0' && in->v[k] <= '9') || (in->v[k] >= 'a' && in->v[k] <= 'z') ||
                (in->v[k] >= 'A' && in->v[k] <= 'Z')))
            k++;
        if (k == j || k - j > 24 || k >= in->n || in->v[k] != ';') {
            if (s_cps_push(out, in->v[i++]) != 0)
                return -1;
            continue;
        }
        // in->v[i..k] is the match "&[#]name;"
        bool done = false;
        if (!num) {
            char key[32];
            size_t m = 0;
            for (size_t t = j; t < k; t++)
                key[m++] = (char)in->v[t];
            key[m] = 0;
            const void *hit = bsearch(key, s_entities, sizeof s_entities / sizeof s_entities[0],
                                      sizeof s_entities[0], s_entity_cmp);
            if (hit) {
                size_t at =
                    (size_t)((const char *)hit - (const char *)s_entities) / sizeof s_entities[0];
                if (s_cps_push_utf8(out, s_entities[at].text) != 0)
                    return -1;
                done = true;
            }
        } else {
            int32_t cp = s_charref(in->v + j, k - j);
            if (cp == -1) {
                done = true; // html.unescape gives "", which holds no ';'
            } else if (cp >= 0 && cp != ';') {
                if (s_cps_push(out, cp) != 0)
                    return -1;
                done = true;
            }
        }
        if (!done) {
            for (size_t t = i; t <= k; t++)
                if (s_cps_push(out, in->v[t]) != 0)
                    return -1;
        }
        i = k + 1;
    }
    return 0;
}

// NFKC of one code point, utf8proc; appended to out.
static int
s_push_nfkc(s_cps_t *out, int32_t cp)
{
    uint8_t in[8];
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_encode_char(cp, in);
    utf8proc_ssize_t m =
        utf8proc_map(in, n, &dst, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    if (m < 0)
        return -1;
    int rc = s_cps_push_utf8(out, (const char *)dst);
    free(dst);
    return rc;
}

static bool
s_is_ligature(int32_t cp)
{
    // ftfy chardata.LIGATURES: Dutch ĳ, Afrikaans ŉ, the Serbo-Croatian digraphs and the
    // Latin typographic ligatures U+FB00..FB06 (their text is their NFKC form, except ﬅ).
    return cp == 0x132 || cp == 0x133 || cp == 0x149 || (cp >= 0x1c4 && cp <= 0x1cc) ||
           (cp >= 0x1f1 && cp <= 0x1f3) || (cp >= 0xfb00 && cp <= 0xfb06);
}

// Windows-1252 as ftfy's "sloppy" codec reads bytes 0x80..0x9f (undefined ones stay).
static int32_t
s_sloppy_1252(int32_t cp)
{
    static const uint16_t map[32] = {
        0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008d, 0x017d, 0x008f, 0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022,
        0x2013, 0x2014, 0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178};
    return map[cp - 0x80];
}

static bool
s_is_ftfy_control(int32_t cp)
{
    // ftfy chardata.CONTROL_CHARS
    return (cp >= 0 && cp <= 8) || cp == 0xb || (cp >= 0xe && cp <= 0x1f) || cp == 0x7f ||
           (cp >= 0x206a && cp <= 0x206f) || cp == 0xfeff || (cp >= 0xfff9 && cp <= 0xfffc);
}

// The character-map steps of one pass, in ftfy's order.
static int
s_char_steps(const s_cps_t *in, s_cps_t *out, s_cps_t *tmp)
{
    // fix_c1_controls, fix_latin_ligatures, fix_character_width, uncurl_quotes
    tmp->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        int32_t c = in->v[i];
        if (c >= 0x80 && c <= 0x9f)
            c = s_sloppy_1252(c);
        if (s_is_ligature(c)) {
            if (c == 0xfb05) { // ﬅ -> "ſt": ftfy keeps the long s that NFKC would fold
                if (s_cps_push(tmp, 0x17f) != 0 || s_cps_push(tmp, 't') != 0)
                    return -1;
            } else if (s_push_nfkc(tmp, c) != 0) {
                return -1;
            }
            continue;
        }
        if (c == 0x3000) {
            c = ' ';
        } else if (c >= 0xff01 && c <= 0xffef) {
            if (s_push_nfkc(tmp, c) != 0)
                return -1;
            continue;
        }
        if (s_cps_push(tmp, c) != 0)
            return -1;
    }
    // uncurl_quotes, fix_line_breaks (the NFKC output above may hold curly quotes too, so
    // this is a second walk, as ftfy's separate steps are)
    out->n = 0;
    for (size_t i = 0; i < tmp->n; i++) {
        int32_t c = tmp->v[i];
        if (c == 0x2bc || (c >= 0x2018 && c <= 0x201b))
            c = '\'';
        else if (c >= 0x201c && c <= 0x201f)
            c = '"';
        if (c == '\r') {
            if (i + 1 < tmp->n && tmp->v[i + 1] == '\n')
                i++;
            c = '\n';
        } else if (c == 0x2028 || c == 0x2029 || c == 0x85) {
            c = '\n';
        }
        if (s_cps_push(out, c) != 0)
            return -1;
    }
    // remove_terminal_escapes: ESC '[' (\d | ';')* [a-zA-Z]   (\d: any decimal digit)
    tmp->n = 0;
    for (size_t i = 0; i < out->n; i++) {
        if (out->v[i] == 0x1b && i + 1 < out->n && out->v[i + 1] == '[') {
            size_t j = i + 2;
            while (j < out->n &&
                   (out->v[j] == ';' || utf8proc_category(out->v[j]) == UTF8PROC_CATEGORY_ND))
                j++;
            int32_t e = j < out->n ? out->v[j] : 0;
            if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
                i = j;
                continue;
            }
        }
        if (s_cps_push(tmp, out->v[i]) != 0)
            return -1;
    }
    // remove_control_chars
    out->n = 0;
    for (size_t i = 0; i < tmp->n; i++)
        if (!s_is_ftfy_control(tmp->v[i]) && s_cps_push(out, tmp->v[i]) != 0)
            return -1;
    return 0;
}

static int
s_nfc(s_cps_t *c, sd3_err_t *err)
{
    char *utf8 = NULL;
    size_t len = 0;
    utf8proc_uint8_t *dst = NULL;
    if (s_encode(c, &utf8, &len, err) != 0)
        return SD3_ENOMEM;
    utf8proc_ssize_t m = utf8proc_map((const uint8_t *)utf8, (utf8proc_ssize_t)len, &dst,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    free(utf8);
    if (m < 0)
        return sd3_err_set(err, SD3_EINVAL, "prompt: NFC failed: %s", utf8proc_errmsg(m));
    c->n = 0;
    int rc = s_decode((const char *)dst, (size_t)m, c, err);
    free(dst);
    return rc;
}

static bool
s_cps_equal(const s_cps_t *a, const s_cps_t *b)
{
    return a->n == b->n && (a->n == 0 || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

// ftfy fix_text on decoded text (the whole of it is one segment: our pieces are single
// words, and "\n" only splits segments, which changes nothing but the '<' rule per line).
static int
s_ftfy(s_cps_t *text, sd3_err_t *err)
{
    s_cps_t orig = {0}, a = {0}, b = {0};
    int rc = SD3_ENOMEM;
    bool unescape = true;
    for (size_t i = 0; i < text->n; i++)
        if (text->v[i] == '<')
            unescape = false;
    for (int pass = 0; pass < 64; pass++) {
        orig.n = 0;
        for (size_t i = 0; i < text->n; i++)
            if (s_cps_push(&orig, text->v[i]) != 0)
                goto fail;
        if (unescape) {
            a.n = 0;
            if (s_unescape_html(text, &a) != 0)
                goto fail;
            s_cps_swap(text, &a);
        }
        if (s_char_steps(text, &a, &b) != 0)
            goto fail;
        s_cps_swap(text, &a);
        if ((rc = s_nfc(text, err)) != 0)
            goto fail;
        rc = SD3_ENOMEM;
        if (s_cps_equal(text, &orig))
            break;
    }
    rc = 0;
fail:
    if (rc == SD3_ENOMEM && (!err || err->code == 0))
        sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory in text clean-up");
    free(orig.v);
    free(a.v);
    free(b.v);
    return rc;
}

int
sd3_tok_ftfy(const char *s, size_t n, char **out, size_t *out_len, sd3_err_t *err)
{
    s_cps_t c = {0};
    int rc = s_decode(s, n, &c, err);
    if (rc == 0)
        rc = s_ftfy(&c, err);
    if (rc == 0)
        rc = s_encode(&c, out, out_len, err);
    free(c.v);
    return rc;
}

/* ---- whitespace_clean and lower -------------------------------------------------------- */

static bool
s_is_cased(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
           cat == UTF8PROC_CATEGORY_LT || utf8proc_tolower(c) != c || utf8proc_toupper(c) != c;
}

static bool
s_is_case_ignorable(int32_t c)
{
    utf8proc_category_t cat = utf8proc_category(c);
    if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
        cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK)
        return true;
    // Word_Break MidLetter / MidNumLet / Single_Quote
    return c == '\'' || c == '.' || c == ':' || c == 0xb7 || c == 0x387 || c == 0x5f4 ||
           c == 0x2018 || c == 0x2019 || c == 0x2024 || c == 0x2027 || c == 0xfe13 || c == 0xfe52 ||
           c == 0xfe55 || c == 0xff07 || c == 0xff0e || c == 0xff1a;
}

// Python str.lower: simple lower-case mappings, plus U+0130 -> "i\u0307" and the final
// sigma rule.
static int
s_lower(const s_cps_t *in, s_cps_t *out)
{
    for (size_t i = 0; i < in->n; i++) {
        int32_t c = in->v[i];
        if (c == 0x130) {
            if (s_cps_push(out, 'i') != 0 || s_cps_push(out, 0x307) != 0)
                return -1;
            continue;
        }
        if (c == 0x3a3) {
            size_t j = i;
            while (j > 0 && s_is_case_ignorable(in->v[j - 1]))
                j--;
            bool final = j > 0 && s_is_cased(in->v[j - 1]);
            if (final) {
                size_t k = i + 1;
                while (k < in->n && s_is_case_ignorable(in->v[k]))
                    k++;
                final = k == in->n || !s_is_cased(in->v[k]);
            }
            if (s_cps_push(out, final ? 0x3c2 : 0x3c3) != 0)
                return -1;
            continue;
        }
        if (s_cps_push(out, utf8proc_tolower(c)) != 0)
            return -1;
    }
    return 0;
}

int
sd3_tok_clip_clean(const char *s, size_t n, char **out, size_t *out_len, sd3_err_t *err)
{
    s_cps_t c = {0}, w = {0}, l = {0};
    int rc = s_decode(s, n, &c, err);
    if (rc == 0)
        rc = s_ftfy(&c, err);
    if (rc != 0)
        goto done;
    // whitespace_clean: re.sub(r"\s+", " ", text).strip()
    rc = SD3_ENOMEM;
    for (size_t i = 0; i < c.n; i++) {
        if (s_py_isspace(c.v[i])) {
            while (i + 1 < c.n && s_py_isspace(c.v[i + 1]))
                i++;
            if (w.n > 0 && i + 1 < c.n && s_cps_push(&w, ' ') != 0)
                goto done;
        } else if (s_cps_push(&w, c.v[i]) != 0) {
            goto done;
        }
    }
    if (s_lower(&w, &l) != 0)
        goto done;
    rc = s_encode(&l, out, out_len, err);
done:
    if (rc == SD3_ENOMEM && (!err || err->code == 0))
        sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory in text clean-up");
    free(c.v);
    free(w.v);
    free(l.v);
    return rc;
}
