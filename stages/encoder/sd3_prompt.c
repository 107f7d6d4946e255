/*  sd3_prompt - the reference's prompt rules and the set of three tokenizers
 *
 *  other_impls.SDTokenizer.tokenize_with_weights (TESTVECTORS-enc.md §1.1), for CLIP-L,
 *  CLIP-G and T5 alike:
 *    1. `\(` `\)` escape a literal bracket; parse_parentheses/token_weights strip `( )`
 *       groups and a `:weight` suffix that Python's float() accepts (weights are ignored).
 *    2. "\n" -> " ", split on " ", empty words dropped; each word tokenized alone with its
 *       start/end stripped.
 *    3. Chunks of 77: a word that does not fit closes the chunk (padded) and moves whole,
 *       unless it has >= 8 tokens, then it is split at the boundary.
 *  Only chunk 0 of CLIP reaches the encoders; T5 is one sequence of max(77, n+1) made from
 *  prompt[:226] (code points).  */
#include "sd3_tok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* ---- Python float() -------------------------------------------------------------------- */

static bool
s_py_isspace(int32_t cp)
{
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

// Digits with single underscores between them ("1_000"); *i advanced; false when none.
static bool
s_digits(const char *s, size_t n, size_t *i)
{
    size_t start = *i;
    while (*i < n) {
        if (s[*i] >= '0' && s[*i] <= '9') {
            (*i)++;
        } else if (s[*i] == '_' && *i > start && *i + 1 < n && s[*i - 1] != '_' &&
                   s[*i + 1] >= '0' && s[*i + 1] <= '9') {
            (*i)++;
        } else {
            break;
        }
    }
    return *i > start;
}

bool
sd3_prompt_is_py_float(const char *s, size_t len)
{
    // Python maps every Unicode decimal digit to its ASCII digit and strips whitespace, then
    // parses [sign] (digits[.digits]|.digits)[(e|E)[sign]digits] | [sign](inf|infinity|nan).
    char ascii[256];
    size_t n = 0, off = 0;
    int32_t cps[256];
    size_t ncp = 0;
    while (off < len) {
        int32_t cp;
        utf8proc_ssize_t k =
            utf8proc_iterate((const uint8_t *)s + off, (utf8proc_ssize_t)(len - off), &cp);
        if (k <= 0 || ncp == 256)
            return false;
        cps[ncp++] = cp;
        off += (size_t)k;
    }
    size_t lo = 0, hi = ncp;
    while (lo < hi && s_py_isspace(cps[lo]))
        lo++;
    while (hi > lo && s_py_isspace(cps[hi - 1]))
        hi--;
    for (size_t i = lo; i < hi; i++) {
        int32_t c = cps[i];
        if (c < 128)
            ascii[n++] = (char)c;
        else if (utf8proc_category(c) == UTF8PROC_CATEGORY_ND)
            ascii[n++] = '0'; // the value does not matter: weights are ignored
        else
            return false;
    }
    size_t i = 0;
    if (i < n && (ascii[i] == '+' || ascii[i] == '-'))
        i++;
    static const char *const words[] = {"infinity", "inf", "nan"};
    for (int w = 0; w < 3; w++) {
        size_t l = strlen(words[w]);
        if (n - i == l && !strncasecmp(ascii + i, words[w], l))
            return true;
    }
    bool int_part = s_digits(ascii, n, &i), frac = false;
    if (i < n && ascii[i] == '.') {
        i++;
        frac = s_digits(ascii, n, &i);
    }
    if (!int_part && !frac)
        return false;
    if (i < n && (ascii[i] == 'e' || ascii[i] == 'E')) {
        i++;
        if (i < n && (ascii[i] == '+' || ascii[i] == '-'))
            i++;
        if (!s_digits(ascii, n, &i))
            return false;
    }
    return i == n;
}

/* ---- weight syntax and words ------------------------------------------------------------ */

typedef struct {
    char *v;
    size_t n, cap;
} s_str_t;

static int
s_str_put(s_str_t *s, const char *p, size_t n)
{
    if (s->n + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + n + 1)
            cap *= 2;
        char *v = realloc(s->v, cap);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    memcpy(s->v + s->n, p, n);
    s->n += n;
    s->v[s->n] = 0;
    return 0;
}

// A segment of text that token_weights produced (in the escaped text).
typedef struct {
    size_t off, len;
} s_seg_t;

typedef struct {
    s_seg_t *v;
    size_t n, cap;
} s_segs_t;

static int
s_segs_push(s_segs_t *s, size_t off, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        s_seg_t *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (s_seg_t){off, len};
    return 0;
}

// token_weights(text[off..off+len)): parse_parentheses, then per item either recurse into
// "(...)" (minus a float ":weight") or keep the item. Depth is bounded by the text length;
// an explicit stack keeps hostile "((((...": a work list processed in order.
static int
s_token_weights(const char *text, size_t off, size_t len, s_segs_t *out, int depth)
{
    if (depth > 256)
        return s_segs_push(out, off, len); // deeper nesting than any prompt; keep as text
    // parse_parentheses
    size_t item = off;
    long level = 0;
    for (size_t i = off; i < off + len; i++) {
        char c = text[i];
        if (c == '(') {
            if (level == 0 && i > item) {
                // close the plain item before the '('
                size_t a = item, l = i - item;
                item = i;
                if (l) {
                    if (s_segs_push(out, a, l) != 0)
                        return -1;
                }
            } else if (level == 0) {
                item = i;
            }
            level++;
        } else if (c == ')') {
            level--;
            if (level == 0) {
                // the item text[item..i] is "(...)" when it starts with '(' (it may not:
                // after an unmatched ')' the level went negative and came back)
                size_t a = item, l = i + 1 - item;
                item = i + 1;
                if (l >= 2 && text[a] == '(' && text[a + l - 1] == ')') {
                    size_t in = a + 1, il = l - 2;
                    // rfind(':') > 0 and float(after) -> drop ":after"
                    for (size_t k = il; k-- > 1;) {
                        if (text[in + k] == ':') {
                            if (sd3_prompt_is_py_float(text + in + k + 1, il - k - 1))
                                il = k;
                            break;
                        }
                    }
                    if (s_token_weights(text, in, il, out, depth + 1) != 0)
                        return -1;
                } else if (s_segs_push(out, a, l) != 0) {
                    return -1;
                }
            }
        }
    }
    if (item < off + len) {
        size_t a = item, l = off + len - item;
        if (l >= 2 && text[a] == '(' && text[a + l - 1] == ')') {
            // an item that ends the text while still open but happens to look like "(...)"
            size_t in = a + 1, il = l - 2;
            for (size_t k = il; k-- > 1;) {
                if (text[in + k] == ':') {
                    if (sd3_prompt_is_py_float(text + in + k + 1, il - k - 1))
                        il = k;
                    break;
                }
            }
            return s_token_weights(text, in, il, out, depth + 1);
        }
        return s_segs_push(out, a, l);
    }
    return 0;
}

void
sd3_prompt_words_fini(sd3_prompt_words_t *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->words[i]);
    free(w->words);
    free(w->lens);
    w->words = NULL;
    w->lens = NULL;
    w->n = w->cap = 0;
}

static int
s_words_push(sd3_prompt_words_t *w, const char *p, size_t n)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        char **v = realloc(w->words, cap * sizeof *v);
        if (!v)
            return -1;
        w->words = v;
        size_t *l = realloc(w->lens, cap * sizeof *l);
        if (!l)
            return -1;
        w->lens = l;
        w->cap = cap;
    }
    char *s = malloc(n + 1);
    if (!s)
        return -1;
    memcpy(s, p, n);
    s[n] = 0;
    w->words[w->n] = s;
    w->lens[w->n++] = n;
    return 0;
}

int
sd3_prompt_words(const char *prompt, size_t len, sd3_prompt_words_t *out, sd3_err_t *err)
{
    s_str_t esc = {0}, seg = {0};
    s_segs_t segs = {0};
    int rc = SD3_ENOMEM;
    if (len > SD3_TOK_MAX_PROMPT)
        return sd3_err_set(err, SD3_EINVAL, "prompt: %zu bytes, max %d", len, SD3_TOK_MAX_PROMPT);
    if (sd3_tok_utf8_check(prompt, len, err) != 0)
        return SD3_EINVAL;
    // escape_important: "\)" -> "\0\1", then "\(" -> "\0\2"
    if (s_str_put(&esc, "", 0) != 0)
        goto fail;
    for (size_t i = 0; i < len; i++) {
        if (prompt[i] == '\\' && i + 1 < len && prompt[i + 1] == ')') {
            if (s_str_put(&esc, "\0\1", 2) != 0)
                goto fail;
            i++;
        } else if (s_str_put(&esc, prompt + i, 1) != 0) {
            goto fail;
        }
    }
    {
        s_str_t e2 = {0};
        if (s_str_put(&e2, "", 0) != 0)
            goto fail;
        for (size_t i = 0; i < esc.n; i++) {
            int r;
            if (esc.v[i] == '\\' && i + 1 < esc.n && esc.v[i + 1] == '(') {
                r = s_str_put(&e2, "\0\2", 2);
                i++;
            } else {
                r = s_str_put(&e2, esc.v + i, 1);
            }
            if (r != 0) {
                free(e2.v);
                goto fail;
            }
        }
        free(esc.v);
        esc = e2;
    }
    if (s_token_weights(esc.v, 0, esc.n, &segs, 0) != 0)
        goto fail;
    for (size_t s = 0; s < segs.n; s++) {
        // unescape_important: "\0\1" -> ")", "\0\2" -> "(" ; then "\n" -> " " and split
        seg.n = 0;
        const char *p = esc.v + segs.v[s].off;
        size_t n = segs.v[s].len;
        if (s_str_put(&seg, "", 0) != 0)
            goto fail;
        for (size_t i = 0; i < n; i++) {
            int r;
            if (p[i] == 0 && i + 1 < n && (p[i + 1] == 1 || p[i + 1] == 2)) {
                r = s_str_put(&seg, p[i + 1] == 1 ? ")" : "(", 1);
                i++;
            } else {
                r = s_str_put(&seg, p[i] == '\n' ? " " : p + i, 1);
            }
            if (r != 0)
                goto fail;
        }
        size_t w = 0;
        for (size_t i = 0; i <= seg.n; i++) {
            if (i == seg.n || seg.v[i] == ' ') {
                if (i > w && s_words_push(out, seg.v + w, i - w) != 0)
                    goto fail;
                w = i + 1;
            }
        }
    }
    rc = 0;
fail:
    if (rc)
        sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory splitting %zu bytes", len);
    free(esc.v);
    free(seg.v);
    free(segs.v);
    return rc;
}

/* ---- chunks ------------------------------------------------------------------------------ */

int
sd3_prompt_pack(const sd3_prompt_pack_t *cfg, const sd3_tok_ids_t *words, size_t n_words,
                sd3_tok_ids_t *out, size_t *n_chunks, sd3_err_t *err)
{
    const size_t max = cfg->max_length;
    size_t batch = 0; // length of the open chunk
    size_t chunks = 1;
    int rc;
    if (max < 3)
        return sd3_err_set(err, SD3_EINVAL, "prompt pack: max_length %zu, want >= 3", max);
#define PUSH(id)                                                                                   \
    do {                                                                                           \
        if ((rc = sd3_tok_ids_push(out, (id), err)) != 0)                                          \
            return rc;                                                                             \
        batch++;                                                                                   \
    } while (0)
    if (cfg->start >= 0)
        PUSH(cfg->start);
    for (size_t w = 0; w < n_words; w++) {
        const int32_t *t = words[w].ids;
        size_t n = words[w].n;
        bool is_large = n >= 8;
        while (n > 0) {
            if (n + batch > max - 1) {
                size_t remaining = max - batch - 1;
                if (is_large) {
                    if ((rc = sd3_tok_ids_append(out, t, remaining, err)) != 0)
                        return rc;
                    batch += remaining;
                    PUSH(cfg->end);
                    t += remaining;
                    n -= remaining;
                } else {
                    PUSH(cfg->end);
                    if (cfg->pad_to_max)
                        for (size_t k = 0; k < remaining; k++)
                            PUSH(cfg->pad);
                }
                batch = 0;
                chunks++;
                if (cfg->start >= 0)
                    PUSH(cfg->start);
            } else {
                if ((rc = sd3_tok_ids_append(out, t, n, err)) != 0)
                    return rc;
                batch += n;
                n = 0;
            }
        }
    }
    PUSH(cfg->end);
    if (cfg->pad_to_max)
        while (batch < max)
            PUSH(cfg->pad);
    while (cfg->min_length && batch < cfg->min_length)
        PUSH(cfg->pad);
#undef PUSH
    *n_chunks = chunks;
    return 0;
}

/* ---- the tokenizer set -------------------------------------------------------------------- */

struct sd3_tokenizer {
    sd3_tok_bpe_t *clip_l, *clip_g; // the same object when the folder has one clip/
    sd3_tok_spm_t *t5;
};

static bool
s_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void
sd3_tokenizer_destroy(sd3_tokenizer_t **self_p)
{
    sd3_tokenizer_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    if (self->clip_g != self->clip_l)
        sd3_tok_bpe_destroy(&self->clip_g);
    sd3_tok_bpe_destroy(&self->clip_l);
    sd3_tok_spm_destroy(&self->t5);
    free(self);
    *self_p = NULL;
}

sd3_tokenizer_t *
sd3_tokenizer_new(const char *dir, sd3_err_t *err)
{
    char a[4096], b[4096], c[4096];
    sd3_tokenizer_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "tokenizer: out of memory");
        return NULL;
    }
    snprintf(a, sizeof a, "%s/tokenizer", dir);
    snprintf(b, sizeof b, "%s/tokenizer_2", dir);
    snprintf(c, sizeof c, "%s/tokenizer_3/spiece.model", dir);
    if (s_is_dir(a)) { // diffusers
        if (!(self->clip_l = sd3_tok_bpe_new_from_dir(a, err)))
            goto fail;
        if (s_is_dir(b)) {
            if (!(self->clip_g = sd3_tok_bpe_new_from_dir(b, err)))
                goto fail;
        } else {
            self->clip_g = self->clip_l;
        }
    } else {
        snprintf(a, sizeof a, "%s/clip", dir);
        snprintf(c, sizeof c, "%s/t5/spiece.model", dir);
        if (!s_is_dir(a)) {
            sd3_err_set(err, SD3_ENOTFOUND,
                        "%s: no tokenizer/ (diffusers) or clip/ + t5/ "
                        "folder",
                        dir);
            goto fail;
        }
        if (!(self->clip_l = sd3_tok_bpe_new_from_dir(a, err)))
            goto fail;
        self->clip_g = self->clip_l;
    }
    if (!(self->t5 = sd3_tok_spm_new_from_file(c, err)))
        goto fail;
    return self;
fail:
    sd3_tokenizer_destroy(&self);
    return NULL;
}

sd3_tok_bpe_t *
sd3_tokenizer_clip_l(sd3_tokenizer_t *self)
{
    return self->clip_l;
}

sd3_tok_bpe_t *
sd3_tokenizer_clip_g(sd3_tokenizer_t *self)
{
    return self->clip_g;
}

sd3_tok_spm_t *
sd3_tokenizer_t5(sd3_tokenizer_t *self)
{
    return self->t5;
}

void
sd3_tokens_fini(sd3_tokens_t *t)
{
    free(t->clip_l_chunks);
    free(t->clip_g_chunks);
    free(t->t5);
    memset(t, 0, sizeof *t);
}

static void
s_words_ids_fini(sd3_tok_ids_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sd3_tok_ids_fini(&w[i]);
    free(w);
}

// CLIP chunks of one tokenizer. pad: the pad id; out [n_chunks * 77] (fresh).
static int
s_clip_chunks(sd3_tok_bpe_t *bpe, const sd3_prompt_words_t *words, int32_t pad, int32_t **out,
              size_t *n_chunks, sd3_err_t *err)
{
    sd3_tok_ids_t *ids = calloc(words->n ? words->n : 1, sizeof *ids);
    sd3_tok_ids_t all = {0};
    int rc;
    if (!ids)
        return sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory");
    for (size_t i = 0; i < words->n; i++)
        if ((rc = sd3_tok_bpe_encode(bpe, words->words[i], words->lens[i], &ids[i], err)) != 0)
            goto done;
    sd3_prompt_pack_t cfg = {.start = sd3_tok_bpe_start_id(bpe),
                             .end = sd3_tok_bpe_end_id(bpe),
                             .pad = pad,
                             .max_length = SD3_TOK_CLIP_LEN,
                             .pad_to_max = true};
    if ((rc = sd3_prompt_pack(&cfg, ids, words->n, &all, n_chunks, err)) != 0)
        goto done;
    if (all.n != *n_chunks * SD3_TOK_CLIP_LEN) {
        rc = sd3_err_set(err, SD3_EINTERNAL, "prompt: %zu CLIP ids for %zu chunks", all.n,
                         *n_chunks);
        goto done;
    }
    *out = all.ids;
    all.ids = NULL;
done:
    sd3_tok_ids_fini(&all);
    s_words_ids_fini(ids, words->n);
    return rc;
}

static int
s_argmax(const int32_t *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

int
sd3_tokenizer_encode(sd3_tokenizer_t *self, const char *prompt, size_t len,
                     const sd3_tok_opts_t *opts, sd3_tokens_t *out, sd3_err_t *err)
{
    sd3_prompt_words_t words = {0}, t5_words = {0};
    sd3_tok_ids_t *t5_ids = NULL, t5 = {0};
    size_t n_l = 0, n_g = 0, n_t5_chunks = 0;
    int t5_len = opts ? opts->t5_len : 0;
    int rc;
    memset(out, 0, sizeof *out);
    if (t5_len < 0 || t5_len > 1 << 20)
        return sd3_err_set(err, SD3_EINVAL, "t5_len %d, want 0 (reference) or 1..%d", t5_len,
                           1 << 20);
    if ((rc = sd3_prompt_words(prompt, len, &words, err)) != 0)
        goto fail;
    if ((rc = s_clip_chunks(self->clip_l, &words, sd3_tok_bpe_end_id(self->clip_l),
                            &out->clip_l_chunks, &n_l, err)) != 0 ||
        (rc = s_clip_chunks(self->clip_g, &words, 0, &out->clip_g_chunks, &n_g, err)) != 0)
        goto fail;
    if (n_l != n_g) {
        rc =
            sd3_err_set(err, SD3_EINTERNAL, "prompt: CLIP-L made %zu chunks, CLIP-G %zu", n_l, n_g);
        goto fail;
    }
    out->n_chunks = n_l;
    memcpy(out->clip_l, out->clip_l_chunks, sizeof out->clip_l);
    memcpy(out->clip_g, out->clip_g_chunks, sizeof out->clip_g);
    int32_t end_l = sd3_tok_bpe_end_id(self->clip_l);
    for (int i = 1; i < SD3_TOK_CLIP_LEN; i++)
        out->clip_content_tokens += out->clip_l[i] != end_l;
    out->clip_l_pool_index = s_argmax(out->clip_l, SD3_TOK_CLIP_LEN);
    out->clip_g_pool_index = s_argmax(out->clip_g, SD3_TOK_CLIP_LEN);

    // T5: the reference sees prompt[:226] (code points)
    size_t t5_bytes = len;
    if (t5_len == 0) {
        size_t cps = 0, off = 0;
        while (off < len && cps < SD3_TOK_T5_MAX_CHARS) {
            int32_t cp;
            utf8proc_ssize_t k =
                utf8proc_iterate((const uint8_t *)prompt + off, (utf8proc_ssize_t)(len - off), &cp);
            off += k > 0 ? (size_t)k : 1; // valid: checked by sd3_prompt_words
            cps++;
        }
        t5_bytes = off;
    }
    if ((rc = sd3_prompt_words(prompt, t5_bytes, &t5_words, err)) != 0)
        goto fail;
    if (!(t5_ids = calloc(t5_words.n ? t5_words.n : 1, sizeof *t5_ids))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "prompt: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < t5_words.n; i++)
        if ((rc = sd3_tok_spm_encode(self->t5, t5_words.words[i], t5_words.lens[i], &t5_ids[i],
                                     err)) != 0)
            goto fail;
    sd3_prompt_pack_t cfg = {.start = -1,
                             .end = sd3_tok_spm_piece_id(self->t5, "</s>"),
                             .pad = 0,
                             .max_length = 99999999,
                             .min_length = SD3_TOK_T5_MIN_LEN,
                             .pad_to_max = false};
    if (t5_len > 0) { // fixed length: content cut to N-1, </s>, pads to N
        cfg.min_length = (size_t)t5_len;
        sd3_tok_ids_t flat = {0};
        for (size_t i = 0; i < t5_words.n; i++)
            if ((rc = sd3_tok_ids_append(&flat, t5_ids[i].ids, t5_ids[i].n, err)) != 0) {
                sd3_tok_ids_fini(&flat);
                goto fail;
            }
        if (flat.n > (size_t)t5_len - 1)
            flat.n = (size_t)t5_len - 1;
        rc = sd3_prompt_pack(&cfg, &flat, 1, &t5, &n_t5_chunks, err);
        sd3_tok_ids_fini(&flat);
    } else {
        rc = sd3_prompt_pack(&cfg, t5_ids, t5_words.n, &t5, &n_t5_chunks, err);
    }
    if (rc != 0)
        goto fail;
    out->t5 = t5.ids;
    out->n_t5 = t5.n;
    t5.ids = NULL;
    rc = 0;
fail:
    if (rc != 0)
        sd3_tokens_fini(out);
    if (t5_ids)
        s_words_ids_fini(t5_ids, t5_words.n);
    sd3_prompt_words_fini(&words);
    sd3_prompt_words_fini(&t5_words);
    sd3_tok_ids_fini(&t5);
    return rc;
}

/* ---- the tiny self-made set ------------------------------------------------------------- */

static int
s_mkdir(const char *path, sd3_err_t *err)
{
    if (mkdir(path, 0755) != 0 && !s_is_dir(path))
        return sd3_err_set(err, SD3_EIO, "%s: cannot create folder", path);
    return 0;
}

int
sd3_tok_write_tiny_set(const char *dir, sd3_err_t *err)
{
    char path[4096];
    int rc;
    if ((rc = s_mkdir(dir, err)) != 0)
        return rc;
    static const char *const clips[2] = {"tokenizer", "tokenizer_2"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, clips[i]);
        if ((rc = s_mkdir(path, err)) != 0 || (rc = sd3_tok_bpe_write_tiny(path, err)) != 0)
            return rc;
    }
    snprintf(path, sizeof path, "%s/tokenizer_3", dir);
    if ((rc = s_mkdir(path, err)) != 0)
        return rc;
    snprintf(path, sizeof path, "%s/tokenizer_3/spiece.model", dir);
    return sd3_tok_spm_write_tiny(path, err);
}
