/*  sd3_tok_bpe - CLIP byte-level BPE (HF CLIPTokenizer / openai simple_tokenizer)
 *
 *  Files: vocab.json + merges.txt (HF, diffusers tokenizer/ and tokenizer_2/) or openai's
 *  bpe_simple_vocab_16e6.txt.gz, whose vocabulary is rebuilt as openai does: the 256 byte
 *  symbols, the same with "</w>", one symbol per merge, <|startoftext|>, <|endoftext|>.
 *  Both layouts use merges [1 : 48895) of the file (the first line is a header).
 *  Encoding a text: <|startoftext|> / <|endoftext|> are matched in the raw text; every other
 *  piece is cleaned (sd3_tok_clip_clean), split by the CLIP regex (PCRE2, UTF + UCP +
 *  caseless), each match byte-encoded (bytes_to_unicode) with "</w>" on its last symbol and
 *  merged lowest rank first, all occurrences of a pair left to right (a heap of candidate
 *  pairs keeps this O(n log n) on long words).  */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <xxhash.h>
#include <zlib.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include "sd3_tok.h"

#include <pcre2.h>

#define S_MAX_MERGES (49152 - 256 - 2) // HF/openai keep lines [1, 48895) of the merges file
#define S_MAX_FILE   (64u << 20)       // vocab.json / merges.txt / .gz content cap

static const char s_start_str[] = "<|startoftext|>";
static const char s_end_str[] = "<|endoftext|>";
static const char s_clip_regex[] = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                                   "[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

/* ---- ids ------------------------------------------------------------------------------ */

int
sd3_tok_ids_push(sd3_tok_ids_t *v, int32_t id, sd3_err_t *err)
{
    return sd3_tok_ids_append(v, &id, 1, err);
}

int
sd3_tok_ids_append(sd3_tok_ids_t *v, const int32_t *ids, size_t n, sd3_err_t *err)
{
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 64;
        while (cap < v->n + n)
            cap *= 2;
        int32_t *p = realloc(v->ids, cap * sizeof *p);
        if (!p)
            return sd3_err_set(err, SD3_ENOMEM, "token ids: out of memory (%zu ids)", cap);
        v->ids = p;
        v->cap = cap;
    }
    if (n)
        memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
    return 0;
}

void
sd3_tok_ids_fini(sd3_tok_ids_t *v)
{
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* ---- symbols: interned strings, each with its vocabulary id or -1 ---------------------- */

typedef struct {
    char *str;
    size_t len;
    int32_t vocab_id; // -1: not in the vocabulary
} s_sym_t;

typedef struct {
    int32_t a, b;   // symbol indices
    int32_t rank;   // merge rank
    int32_t merged; // symbol index of a+b
} s_merge_t;

struct sd3_tok_bpe {
    s_sym_t *syms;
    size_t n_syms, cap_syms;
    int32_t *sym_slots; // open addressing over syms (index + 1; 0 empty)
    size_t n_sym_slots;
    s_merge_t *merges; // open addressing by (a, b); rank < 0 empty
    size_t n_merge_slots;
    int32_t byte_sym[256], byte_sym_w[256]; // byte symbols, plain and with "</w>"
    int32_t start_id, end_id;
    size_t vocab_size;
    pcre2_code *re;
    pcre2_match_data *md;
};

static uint64_t
s_hash(const char *s, size_t n)
{
    return XXH3_64bits(s, n);
}

static int
s_sym_grow(sd3_tok_bpe_t *self)
{
    size_t n = self->n_sym_slots ? self->n_sym_slots * 2 : 1024;
    int32_t *slots = calloc(n, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < self->n_syms; i++) {
        size_t h = s_hash(self->syms[i].str, self->syms[i].len) & (n - 1);
        while (slots[h])
            h = (h + 1) & (n - 1);
        slots[h] = (int32_t)i + 1;
    }
    free(self->sym_slots);
    self->sym_slots = slots;
    self->n_sym_slots = n;
    return 0;
}

static int32_t
s_sym_find(const sd3_tok_bpe_t *self, const char *s, size_t n)
{
    if (!self->n_sym_slots)
        return -1;
    size_t h = s_hash(s, n) & (self->n_sym_slots - 1);
    while (self->sym_slots[h]) {
        const s_sym_t *sym = &self->syms[self->sym_slots[h] - 1];
        if (sym->len == n && !memcmp(sym->str, s, n))
            return self->sym_slots[h] - 1;
        h = (h + 1) & (self->n_sym_slots - 1);
    }
    return -1;
}

// Index of the symbol s[0..n), added (with vocab_id -1) when new; -1 when out of memory.
static int32_t
s_sym_intern(sd3_tok_bpe_t *self, const char *s, size_t n)
{
    int32_t at = s_sym_find(self, s, n);
    if (at >= 0)
        return at;
    if (self->n_syms >= INT32_MAX - 1)
        return -1;
    if ((self->n_syms + 1) * 2 > self->n_sym_slots && s_sym_grow(self) != 0)
        return -1;
    if (self->n_syms == self->cap_syms) {
        size_t cap = self->cap_syms ? self->cap_syms * 2 : 1024;
        s_sym_t *p = realloc(self->syms, cap * sizeof *p);
        if (!p)
            return -1;
        self->syms = p;
        self->cap_syms = cap;
    }
    char *copy = malloc(n + 1);
    if (!copy)
        return -1;
    memcpy(copy, s, n);
    copy[n] = 0;
    self->syms[self->n_syms] = (s_sym_t){copy, n, -1};
    size_t h = s_hash(s, n) & (self->n_sym_slots - 1);
    while (self->sym_slots[h])
        h = (h + 1) & (self->n_sym_slots - 1);
    self->sym_slots[h] = (int32_t)self->n_syms + 1;
    return (int32_t)self->n_syms++;
}

static size_t
s_pair_hash(int32_t a, int32_t b, size_t n_slots)
{
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    return XXH3_64bits(&k, sizeof k) & (n_slots - 1);
}

static const s_merge_t *
s_merge_find(const sd3_tok_bpe_t *self, int32_t a, int32_t b)
{
    if (!self->n_merge_slots)
        return NULL;
    size_t h = s_pair_hash(a, b, self->n_merge_slots);
    while (self->merges[h].rank >= 0) {
        if (self->merges[h].a == a && self->merges[h].b == b)
            return &self->merges[h];
        h = (h + 1) & (self->n_merge_slots - 1);
    }
    return NULL;
}

// bytes_to_unicode of openai's CLIP: printable Latin-1 bytes map to themselves, the others
// to U+0100 upwards in byte order. Also the byte order of openai's vocabulary list.
static void
s_bytes_to_unicode(int32_t cp_of_byte[256], int order[256])
{
    int n = 0, extra = 0;
    bool printable[256] = {0};
    for (int b = '!'; b <= '~'; b++)
        printable[b] = true;
    for (int b = 0xa1; b <= 0xac; b++)
        printable[b] = true;
    for (int b = 0xae; b <= 0xff; b++)
        printable[b] = true;
    for (int b = 0; b < 256; b++)
        if (printable[b]) {
            cp_of_byte[b] = b;
            order[n++] = b;
        }
    for (int b = 0; b < 256; b++)
        if (!printable[b]) {
            cp_of_byte[b] = 256 + extra++;
            order[n++] = b;
        }
}

static size_t
s_utf8_put(int32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* ---- loading --------------------------------------------------------------------------- */

void
sd3_tok_bpe_destroy(sd3_tok_bpe_t **self_p)
{
    sd3_tok_bpe_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    for (size_t i = 0; i < self->n_syms; i++)
        free(self->syms[i].str);
    free(self->syms);
    free(self->sym_slots);
    free(self->merges);
    pcre2_match_data_free(self->md);
    pcre2_code_free(self->re);
    free(self);
    *self_p = NULL;
}

static int
s_set_vocab(sd3_tok_bpe_t *self, const char *s, size_t n, long id, sd3_err_t *err)
{
    int32_t sym = s_sym_intern(self, s, n);
    if (sym < 0)
        return sd3_err_set(err, SD3_ENOMEM, "CLIP vocabulary: out of memory");
    self->syms[sym].vocab_id = (int32_t)id; // a later duplicate wins, as in a Python dict
    if ((size_t)id + 1 > self->vocab_size)
        self->vocab_size = (size_t)id + 1;
    return 0;
}

// Splits merges text into lines [1, 1 + max) after Python's str.strip(); calls back per line.
typedef struct {
    const char *a, *b;
    size_t na, nb;
    bool ok; // exactly two whitespace-separated fields
} s_merge_line_t;

static bool
s_ascii_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static s_merge_line_t
s_split_merge_line(const char *p, size_t n)
{
    s_merge_line_t m = {0};
    const char *fields[3];
    size_t lens[3];
    int nf = 0;
    size_t i = 0;
    while (i < n && nf < 3) {
        while (i < n && s_ascii_space(p[i]))
            i++;
        if (i == n)
            break;
        size_t j = i;
        while (j < n && !s_ascii_space(p[j]))
            j++;
        fields[nf] = p + i;
        lens[nf++] = j - i;
        i = j;
    }
    if (nf == 2) {
        m.a = fields[0];
        m.na = lens[0];
        m.b = fields[1];
        m.nb = lens[1];
        m.ok = true;
    }
    return m;
}

sd3_tok_bpe_t *
sd3_tok_bpe_new_from_memory(const char *vocab_json, size_t vocab_len, const char *merges,
                            size_t merges_len, long n_merges, sd3_err_t *err)
{
    sd3_tok_bpe_t *self = calloc(1, sizeof *self);
    cJSON *json = NULL;
    s_merge_line_t *lines = NULL;
    char buf[64];
    int32_t cp_of_byte[256];
    int order[256];
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "CLIP tokenizer: out of memory");
        return NULL;
    }
    if (n_merges < 0 || n_merges > S_MAX_MERGES)
        n_merges = S_MAX_MERGES;
    s_bytes_to_unicode(cp_of_byte, order);

    // merges: Python's text.strip().split("\n")[1 : 1 + n_merges]
    size_t lo = 0, hi = merges_len;
    while (lo < hi && (s_ascii_space(merges[lo]) || merges[lo] == 0x1c))
        lo++;
    while (hi > lo && s_ascii_space(merges[hi - 1]))
        hi--;
    size_t n_lines = 0;
    lines = calloc((size_t)n_merges + 1, sizeof *lines);
    if (!lines) {
        sd3_err_set(err, SD3_ENOMEM, "CLIP merges: out of memory");
        goto fail;
    }
    for (size_t p = lo, line = 0; p <= hi && n_lines < (size_t)n_merges; line++) {
        const char *nl = memchr(merges + p, '\n', hi - p);
        size_t end = nl ? (size_t)(nl - merges) : hi;
        if (line >= 1)
            lines[n_lines++] = s_split_merge_line(merges + p, end - p);
        p = end + 1;
        if (!nl)
            break;
    }

    if (vocab_json) {
        json = cJSON_ParseWithLength(vocab_json, vocab_len);
        if (!json || !cJSON_IsObject(json)) {
            sd3_err_set(err, SD3_EFORMAT, "vocab.json: not a JSON object");
            goto fail;
        }
        for (cJSON *it = json->child; it; it = it->next) {
            double v = it->valuedouble;
            if (!cJSON_IsNumber(it) || !it->string || v < 0 || v > 16777216.0 ||
                v != (double)(long)v) {
                sd3_err_set(err, SD3_EFORMAT, "vocab.json: entry '%.40s' is not an id in [0, 2^24]",
                            it->string ? it->string : "?");
                goto fail;
            }
            if (s_set_vocab(self, it->string, strlen(it->string), (long)v, err) != 0)
                goto fail;
        }
    } else {
        // openai: byte symbols, byte symbols + "</w>", one per merge, the two specials
        long id = 0;
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < 256; i++) {
                size_t n = s_utf8_put(cp_of_byte[order[i]], buf);
                if (w) {
                    memcpy(buf + n, "</w>", 4);
                    n += 4;
                }
                if (s_set_vocab(self, buf, n, id++, err) != 0)
                    goto fail;
            }
        for (size_t i = 0; i < n_lines; i++) {
            if (!lines[i].ok) {
                sd3_err_set(err, SD3_EFORMAT, "merges: line %zu is not two symbols", i + 2);
                goto fail;
            }
            size_t n = lines[i].na + lines[i].nb;
            char *cat = malloc(n);
            if (!cat) {
                sd3_err_set(err, SD3_ENOMEM, "CLIP merges: out of memory");
                goto fail;
            }
            memcpy(cat, lines[i].a, lines[i].na);
            memcpy(cat + lines[i].na, lines[i].b, lines[i].nb);
            int rc = s_set_vocab(self, cat, n, id++, err);
            free(cat);
            if (rc != 0)
                goto fail;
        }
        if (s_set_vocab(self, s_start_str, strlen(s_start_str), id++, err) != 0 ||
            s_set_vocab(self, s_end_str, strlen(s_end_str), id++, err) != 0)
            goto fail;
    }

    // byte symbols
    for (int b = 0; b < 256; b++) {
        size_t n = s_utf8_put(cp_of_byte[b], buf);
        self->byte_sym[b] = s_sym_intern(self, buf, n);
        memcpy(buf + n, "</w>", 4);
        self->byte_sym_w[b] = s_sym_intern(self, buf, n + 4);
        if (self->byte_sym[b] < 0 || self->byte_sym_w[b] < 0) {
            sd3_err_set(err, SD3_ENOMEM, "CLIP tokenizer: out of memory");
            goto fail;
        }
    }
    // merge table: (a, b) -> rank, a+b; a later duplicate line wins, as in a Python dict
    self->n_merge_slots = 1024;
    while (self->n_merge_slots < n_lines * 2 + 2)
        self->n_merge_slots *= 2;
    self->merges = malloc(self->n_merge_slots * sizeof *self->merges);
    if (!self->merges) {
        sd3_err_set(err, SD3_ENOMEM, "CLIP merges: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < self->n_merge_slots; i++)
        self->merges[i].rank = -1;
    for (size_t i = 0; i < n_lines; i++) {
        if (!lines[i].ok)
            continue; // a pair of another arity never matches
        int32_t a = s_sym_intern(self, lines[i].a, lines[i].na);
        int32_t b = s_sym_intern(self, lines[i].b, lines[i].nb);
        size_t n = lines[i].na + lines[i].nb;
        char *cat = malloc(n);
        int32_t ab = -1;
        if (cat) {
            memcpy(cat, lines[i].a, lines[i].na);
            memcpy(cat + lines[i].na, lines[i].b, lines[i].nb);
            ab = s_sym_intern(self, cat, n);
            free(cat);
        }
        if (a < 0 || b < 0 || ab < 0) {
            sd3_err_set(err, SD3_ENOMEM, "CLIP merges: out of memory");
            goto fail;
        }
        size_t h = s_pair_hash(a, b, self->n_merge_slots);
        while (self->merges[h].rank >= 0 && !(self->merges[h].a == a && self->merges[h].b == b))
            h = (h + 1) & (self->n_merge_slots - 1);
        self->merges[h] = (s_merge_t){a, b, (int32_t)i, ab};
    }
    int32_t s = s_sym_find(self, s_start_str, strlen(s_start_str));
    int32_t e = s_sym_find(self, s_end_str, strlen(s_end_str));
    if (s < 0 || e < 0 || self->syms[s].vocab_id < 0 || self->syms[e].vocab_id < 0) {
        sd3_err_set(err, SD3_EFORMAT, "CLIP vocabulary: no %s / %s token", s_start_str, s_end_str);
        goto fail;
    }
    self->start_id = self->syms[s].vocab_id;
    self->end_id = self->syms[e].vocab_id;

    int errcode;
    PCRE2_SIZE erroff;
    self->re = pcre2_compile((PCRE2_SPTR)s_clip_regex, PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &errcode, &erroff, NULL);
    if (!self->re || !(self->md = pcre2_match_data_create_from_pattern(self->re, NULL))) {
        sd3_err_set(err, SD3_EINTERNAL, "CLIP regex: PCRE2 compile failed (%d at %zu)", errcode,
                    (size_t)erroff);
        goto fail;
    }
    cJSON_Delete(json);
    free(lines);
    return self;
fail:
    cJSON_Delete(json);
    free(lines);
    sd3_tok_bpe_destroy(&self);
    return NULL;
}

static int
s_read_file(const char *path, char **out, size_t *len, sd3_err_t *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f)
        return sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: %s", path,
                           strerror(errno));
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0 || (uint64_t)st.st_size > S_MAX_FILE) {
        fclose(f);
        return sd3_err_set(err, SD3_EFORMAT, "%s: not a regular file of at most %u MiB", path,
                           S_MAX_FILE >> 20);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    if (n != (size_t)st.st_size) {
        free(buf);
        return sd3_err_set(err, SD3_EIO, "%s: short read", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static int
s_read_gz(const char *path, char **out, size_t *len, sd3_err_t *err)
{
    gzFile gz = gzopen(path, "rb");
    size_t cap = 1 << 20, n = 0;
    char *buf = NULL;
    if (!gz)
        return sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: cannot open", path);
    buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap >= S_MAX_FILE) {
                free(buf);
                gzclose(gz);
                return sd3_err_set(err, SD3_EFORMAT, "%s: unpacks to more than %u MiB", path,
                                   S_MAX_FILE >> 20);
            }
            char *p = realloc(buf, cap * 2 + 1);
            if (!p) { // reported below: a truncated vocabulary must not pass for a whole one
                free(buf);
                buf = NULL;
                break;
            }
            buf = p;
            cap *= 2;
        }
        int k = gzread(gz, buf + n, (unsigned)(cap - n));
        if (k < 0) {
            int code;
            const char *msg = gzerror(gz, &code);
            sd3_err_set(err, SD3_EFORMAT, "%s: gzip: %s", path, msg ? msg : "read error");
            free(buf);
            gzclose(gz);
            return SD3_EFORMAT;
        }
        if (k == 0)
            break;
        n += (size_t)k;
    }
    gzclose(gz);
    if (!buf)
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

sd3_tok_bpe_t *
sd3_tok_bpe_new_from_dir(const char *dir, sd3_err_t *err)
{
    char path[4096];
    char *vocab = NULL, *merges = NULL;
    size_t vocab_len = 0, merges_len = 0;
    sd3_tok_bpe_t *self = NULL;
    sd3_err_t tmp = {0};
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (s_read_file(path, &vocab, &vocab_len, &tmp) == 0) {
        snprintf(path, sizeof path, "%s/merges.txt", dir);
        if (s_read_file(path, &merges, &merges_len, err) != 0)
            goto done;
    } else if (tmp.code == SD3_ENOTFOUND) {
        snprintf(path, sizeof path, "%s/bpe_simple_vocab_16e6.txt.gz", dir);
        if (s_read_gz(path, &merges, &merges_len, &tmp) != 0) {
            if (tmp.code == SD3_ENOTFOUND)
                sd3_err_set(err, SD3_ENOTFOUND,
                            "%s: no CLIP tokenizer (want vocab.json + merges.txt or "
                            "bpe_simple_vocab_16e6.txt.gz)",
                            dir);
            else
                sd3_err_set(err, tmp.code, "%s", tmp.msg);
            goto done;
        }
    } else {
        sd3_err_set(err, tmp.code, "%s", tmp.msg);
        goto done;
    }
    self = sd3_tok_bpe_new_from_memory(vocab, vocab_len, merges, merges_len, -1, err);
    if (!self)
        sd3_err_prefix(err, "%s", dir);
done:
    free(vocab);
    free(merges);
    return self;
}

int32_t
sd3_tok_bpe_start_id(const sd3_tok_bpe_t *self)
{
    return self->start_id;
}

int32_t
sd3_tok_bpe_end_id(const sd3_tok_bpe_t *self)
{
    return self->end_id;
}

size_t
sd3_tok_bpe_vocab_size(const sd3_tok_bpe_t *self)
{
    return self->vocab_size;
}

int32_t
sd3_tok_bpe_token_id(const sd3_tok_bpe_t *self, const char *token)
{
    int32_t s = s_sym_find(self, token, strlen(token));
    return s < 0 ? -1 : self->syms[s].vocab_id;
}

/* ---- encoding -------------------------------------------------------------------------- */

typedef struct {
    int32_t rank, pos; // pos: left node index (original order, so left-to-right)
    int32_t a, b;      // the pair when pushed (validity check)
} s_cand_t;

typedef struct {
    s_cand_t *v;
    size_t n, cap;
} s_heap_t;

static bool
s_cand_less(const s_cand_t *x, const s_cand_t *y)
{
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static int
s_heap_push(s_heap_t *h, s_cand_t c)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        s_cand_t *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    h->v[i] = c;
    while (i > 0 && s_cand_less(&h->v[i], &h->v[(i - 1) / 2])) {
        s_cand_t t = h->v[i];
        h->v[i] = h->v[(i - 1) / 2];
        h->v[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
    return 0;
}

static s_cand_t
s_heap_pop(s_heap_t *h)
{
    s_cand_t top = h->v[0];
    h->v[0] = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && s_cand_less(&h->v[l], &h->v[m]))
            m = l;
        if (r < h->n && s_cand_less(&h->v[r], &h->v[m]))
            m = r;
        if (m == i)
            break;
        s_cand_t t = h->v[i];
        h->v[i] = h->v[m];
        h->v[m] = t;
        i = m;
    }
    return top;
}

// BPE of one regex match (bytes), ids appended to out.
static int
s_bpe_word(sd3_tok_bpe_t *self, const uint8_t *w, size_t n, sd3_tok_ids_t *out, sd3_err_t *err)
{
    int32_t *sym = malloc(n * sizeof *sym);
    int32_t *next = malloc(n * sizeof *next), *prev = malloc(n * sizeof *prev);
    s_heap_t heap = {0}, later = {0};
    int rc = SD3_ENOMEM;
    if (n == 0) {
        rc = 0;
        goto done;
    }
    if (!sym || !next || !prev)
        goto done;
    for (size_t i = 0; i < n; i++) {
        sym[i] = i + 1 == n ? self->byte_sym_w[w[i]] : self->byte_sym[w[i]];
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        const s_merge_t *m = s_merge_find(self, sym[i], sym[i + 1]);
        if (m && s_heap_push(&heap, (s_cand_t){m->rank, (int32_t)i, sym[i], sym[i + 1]}) != 0)
            goto done;
    }
    // Python merges every occurrence of the lowest-rank pair in one left-to-right pass before
    // it looks again; pairs made during a pass with a rank <= the pass's wait in `later`.
    int32_t cur = -1;
    for (;;) {
        if (later.n && (!heap.n || heap.v[0].rank != cur))
            while (later.n)
                if (s_heap_push(&heap, s_heap_pop(&later)) != 0)
                    goto done;
        if (!heap.n)
            break;
        s_cand_t c = s_heap_pop(&heap);
        int32_t i = c.pos;
        if (sym[i] != c.a || next[i] < 0 || sym[next[i]] != c.b)
            continue; // stale
        int32_t j = next[i];
        cur = c.rank;
        const s_merge_t *m = s_merge_find(self, c.a, c.b);
        sym[i] = m->merged;
        next[i] = next[j];
        if (next[j] >= 0)
            prev[next[j]] = i;
        sym[j] = -1;
        int32_t nbr[2][2] = {{prev[i], i}, {i, next[i]}};
        for (int k = 0; k < 2; k++) {
            int32_t l = nbr[k][0], r = nbr[k][1];
            if (l < 0 || r < 0)
                continue;
            const s_merge_t *mm = s_merge_find(self, sym[l], sym[r]);
            if (!mm)
                continue;
            s_cand_t nc = {mm->rank, l, sym[l], sym[r]};
            if (s_heap_push(mm->rank <= cur ? &later : &heap, nc) != 0)
                goto done;
        }
    }
    for (int32_t i = 0; i >= 0 && n; i = next[i]) {
        int32_t id = self->syms[sym[i]].vocab_id;
        if (id < 0) {
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "CLIP tokenizer: symbol '%.60s' is not in the "
                             "vocabulary",
                             self->syms[sym[i]].str);
            goto done;
        }
        if ((rc = sd3_tok_ids_push(out, id, err)) != 0)
            goto done;
    }
    rc = 0;
done:
    if (rc == SD3_ENOMEM && (!err || !err->code))
        sd3_err_set(err, SD3_ENOMEM, "CLIP tokenizer: out of memory (word of %zu bytes)", n);
    free(sym);
    free(next);
    free(prev);
    free(heap.v);
    free(later.v);
    return rc;
}

// One piece between special tokens: clean, regex, BPE.
static int
s_encode_piece(sd3_tok_bpe_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
               sd3_err_t *err)
{
    char *clean = NULL;
    size_t clen = 0;
    int rc = sd3_tok_clip_clean(text, len, &clean, &clen, err);
    if (rc != 0)
        return rc;
    size_t off = 0;
    while (off < clen) {
        int m =
            pcre2_match(self->re, (PCRE2_SPTR)clean, clen, off, PCRE2_NO_UTF_CHECK, self->md, NULL);
        if (m == PCRE2_ERROR_NOMATCH)
            break;
        if (m < 0) {
            rc = sd3_err_set(err, SD3_EINTERNAL, "CLIP regex: match error %d", m);
            break;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(self->md);
        size_t s = ov[0], e = ov[1];
        if (e <= s) { // cannot happen: every alternative consumes; step one char anyway
            off = s + 1;
            while (off < clen && ((uint8_t)clean[off] & 0xc0) == 0x80)
                off++;
            continue;
        }
        size_t n = e - s;
        if ((n == sizeof s_start_str - 1 && !memcmp(clean + s, s_start_str, n)) ||
            (n == sizeof s_end_str - 1 && !memcmp(clean + s, s_end_str, n)))
            rc = sd3_tok_ids_push(out, n == sizeof s_start_str - 1 ? self->start_id : self->end_id,
                                  err);
        else
            rc = s_bpe_word(self, (const uint8_t *)clean + s, n, out, err);
        if (rc != 0)
            break;
        off = e;
    }
    free(clean);
    return rc;
}

static const char *
s_find_special(const char *s, size_t n, size_t *len, int32_t *which)
{
    for (size_t i = 0; i + 13 <= n; i++) {
        if (s[i] != '<' || s[i + 1] != '|')
            continue;
        if (i + 15 <= n && !memcmp(s + i, s_start_str, 15)) {
            *len = 15;
            *which = 0;
            return s + i;
        }
        if (!memcmp(s + i, s_end_str, 13)) {
            *len = 13;
            *which = 1;
            return s + i;
        }
    }
    return NULL;
}

int
sd3_tok_bpe_encode(sd3_tok_bpe_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
                   sd3_err_t *err)
{
    if (len > SD3_TOK_MAX_WORD_BYTES)
        return sd3_err_set(err, SD3_EINVAL, "CLIP tokenizer: text of %zu bytes, max %d", len,
                           SD3_TOK_MAX_WORD_BYTES);
    if (sd3_tok_utf8_check(text, len, err) != 0)
        return SD3_EINVAL;
    while (len) {
        size_t slen = 0;
        int32_t which = 0;
        const char *sp = s_find_special(text, len, &slen, &which);
        size_t piece = sp ? (size_t)(sp - text) : len;
        int rc;
        if (piece && (rc = s_encode_piece(self, text, piece, out, err)) != 0)
            return rc;
        if (!sp)
            break;
        if ((rc = sd3_tok_ids_push(out, which ? self->end_id : self->start_id, err)) != 0)
            return rc;
        text = sp + slen;
        len -= piece + slen;
    }
    return 0;
}

/* ---- the tiny self-made tokenizer ------------------------------------------------------ */

// A small corpus of our own, the source of the tiny BPE's merges.
static const char *const s_tiny_corpus[] = {
    "a",         "an",       "the",        "of",      "and",         "with",     "in",
    "on",        "at",       "photo",      "picture", "painting",    "portrait", "cat",
    "dog",       "bird",     "fish",       "horse",   "red",         "blue",     "green",
    "yellow",    "black",    "white",      "gold",    "silver",      "dark",     "light",
    "night",     "day",      "sun",        "moon",    "star",        "sky",      "sea",
    "river",     "lake",     "mountain",   "forest",  "tree",        "flower",   "garden",
    "house",     "city",     "street",     "road",    "car",         "boat",     "ship",
    "train",     "old",      "new",        "big",     "small",       "tall",     "wide",
    "soft",      "hard",     "warm",       "cold",    "happy",       "sad",      "beautiful",
    "detailed",  "highly",   "quality",    "best",    "masterpiece", "sharp",    "focus",
    "cinematic", "lighting", "sunset",     "sunrise", "golden",      "hour",     "landscape",
    "view",      "ancient",  "castle",     "tower",   "bridge",      "window",   "door",
    "table",     "chair",    "book",       "lamp",    "candle",      "fire",     "water",
    "stone",     "wood",     "glass",      "metal",   "paper",       "cloud",    "rain",
    "snow",      "storm",    "wind",       "ocean",   "beach",       "island",   "desert",
    "valley",    "village",  "market",     "people",  "person",      "woman",    "man",
    "child",     "children", "girl",       "boy",     "face",        "eyes",     "hair",
    "smile",     "hand",     "dress",      "coat",    "hat",         "art",      "style",
    "digital",   "oil",      "watercolor", "sketch",  "drawing",     "render",   "realistic",
    "fantasy",   "magic",    "dragon",     "robot",   "space",       "planet",   "galaxy",
    "neon",      "shadow",   "reflection", "mirror",  "crystal",     "diamond",  "texture",
    "pattern",   "color",    "colorful",   "bright",  "vivid",       "calm",     "quiet",
    "running",   "walking",  "flying",     "sitting", "standing",    "sleeping", "playing",
    "reading",   "under",    "over",       "between", "behind",      "front",    "inside",
    "outside",   "very",     "is",         "are",     "it",          "this",     "that",
    "for",       "from",     "to",         "by",      "as",          "or",       "not",
    "one",       "two",      "three",      "four",    "five",        "ten",      "hello",
    "world",     "text",     "word",       "words",   "line",        "tiny",     "model",
    "test",      "prompt",
};

typedef struct {
    char **sym; // symbols of one word (strings)
    size_t n;
} s_tw_t;

static int
s_tiny_has(char **vocab, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(vocab[i], s))
            return 1;
    return 0;
}

static int
s_key_cmp(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

// The most frequent adjacent pair whose concatenation is not yet a symbol; ties go to the
// smallest (a, b). *a, *b point into words (NULL when there is none).
static int
s_tiny_best_pair(s_tw_t *words, size_t nw, char **vocab, size_t nv, const char **a, const char **b)
{
    size_t n = 0, k = 0;
    for (size_t i = 0; i < nw; i++)
        n += words[i].n ? words[i].n - 1 : 0;
    char **keys = calloc(n ? n : 1, sizeof *keys);
    char buf[64];
    int best = 0, rc = 0;
    if (!keys)
        return -1;
    for (size_t i = 0; i < nw; i++)
        for (size_t j = 0; j + 1 < words[i].n; j++) {
            snprintf(buf, sizeof buf, "%s\x1f%s", words[i].sym[j], words[i].sym[j + 1]);
            if (!(keys[k++] = strdup(buf))) {
                rc = -1;
                goto done;
            }
        }
    qsort(keys, n, sizeof *keys, s_key_cmp);
    *a = *b = NULL;
    const char *best_key = NULL;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && !strcmp(keys[i], keys[j]))
            j++;
        if ((int)(j - i) > best) {
            const char *sep = strchr(keys[i], 0x1f);
            snprintf(buf, sizeof buf, "%.*s%s", (int)(sep - keys[i]), keys[i], sep + 1);
            if (!s_tiny_has(vocab, nv, buf)) {
                best = (int)(j - i);
                best_key = keys[i];
            }
        }
        i = j;
    }
    if (best_key) { // find the same pair in words (keys are freed below)
        for (size_t i = 0; i < nw && !*a; i++)
            for (size_t j = 0; j + 1 < words[i].n && !*a; j++) {
                snprintf(buf, sizeof buf, "%s\x1f%s", words[i].sym[j], words[i].sym[j + 1]);
                if (!strcmp(buf, best_key)) {
                    *a = words[i].sym[j];
                    *b = words[i].sym[j + 1];
                }
            }
    }
done:
    for (size_t i = 0; i < k; i++)
        free(keys[i]);
    free(keys);
    return rc;
}

int
sd3_tok_bpe_write_tiny(const char *dir, sd3_err_t *err)
{
    enum { NW = sizeof s_tiny_corpus / sizeof s_tiny_corpus[0] };
    int32_t cp_of_byte[256];
    int order[256];
    char buf[64], path[4096];
    char *vocab[SD3_TOK_TINY_CLIP_VOCAB] = {0};
    char *merge_a[SD3_TOK_TINY_CLIP_MERGES] = {0}, *merge_b[SD3_TOK_TINY_CLIP_MERGES] = {0};
    size_t nv = 0, nm = 0;
    s_tw_t words[NW] = {{0}};
    cJSON *json = NULL;
    char *text = NULL;
    FILE *f = NULL;
    int rc = SD3_ENOMEM;
    s_bytes_to_unicode(cp_of_byte, order);
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 256; i++) {
            size_t n = s_utf8_put(cp_of_byte[order[i]], buf);
            memcpy(buf + n, w ? "</w>" : "", w ? 5 : 1);
            if (!(vocab[nv++] = strdup(buf)))
                goto done;
        }
    for (size_t i = 0; i < NW; i++) {
        size_t n = strlen(s_tiny_corpus[i]);
        words[i].sym = calloc(n, sizeof(char *));
        if (!words[i].sym)
            goto done;
        for (size_t k = 0; k < n; k++) {
            snprintf(buf, sizeof buf, "%c%s", s_tiny_corpus[i][k], k + 1 == n ? "</w>" : "");
            if (!(words[i].sym[k] = strdup(buf)))
                goto done;
        }
        words[i].n = n;
    }
    // Greedy BPE training: the most frequent adjacent pair (ties: smallest a, then b) whose
    // result is new, until the corpus has no pair left; then letter bigrams "x y".
    while (nm < SD3_TOK_TINY_CLIP_MERGES) {
        const char *ba = NULL, *bb = NULL;
        if (s_tiny_best_pair(words, NW, vocab, nv, &ba, &bb) != 0)
            goto done;
        if (!ba)
            break;
        if (!(merge_a[nm] = strdup(ba)) || !(merge_b[nm] = strdup(bb)))
            goto done;
        snprintf(buf, sizeof buf, "%s%s", ba, bb);
        if (!(vocab[nv++] = strdup(buf)))
            goto done;
        const char *ma = merge_a[nm], *mb = merge_b[nm];
        nm++;
        for (size_t i = 0; i < NW; i++) {
            size_t o = 0;
            for (size_t k = 0; k < words[i].n; k++) {
                if (k + 1 < words[i].n && !strcmp(words[i].sym[k], ma) &&
                    !strcmp(words[i].sym[k + 1], mb)) {
                    char *cat = strdup(vocab[nv - 1]);
                    if (!cat)
                        goto done;
                    free(words[i].sym[k]);
                    free(words[i].sym[k + 1]);
                    words[i].sym[o++] = cat;
                    k++;
                } else {
                    words[i].sym[o++] = words[i].sym[k];
                }
            }
            words[i].n = o;
        }
    }
    for (int x = 'a'; x <= 'z' && nm < SD3_TOK_TINY_CLIP_MERGES; x++)
        for (int y = 'a'; y <= 'z' && nm < SD3_TOK_TINY_CLIP_MERGES; y++) {
            snprintf(buf, sizeof buf, "%c%c", x, y);
            if (s_tiny_has(vocab, nv, buf))
                continue;
            char a[2] = {(char)x, 0}, b[2] = {(char)y, 0};
            if (!(merge_a[nm] = strdup(a)) || !(merge_b[nm] = strdup(b)) ||
                !(vocab[nv++] = strdup(buf)))
                goto done;
            nm++;
        }
    if (nm != SD3_TOK_TINY_CLIP_MERGES || nv + 2 != SD3_TOK_TINY_CLIP_VOCAB) {
        rc = sd3_err_set(err, SD3_EINTERNAL, "tiny CLIP tokenizer: %zu merges, want %d", nm,
                         SD3_TOK_TINY_CLIP_MERGES);
        goto done;
    }
    if (!(vocab[nv++] = strdup(s_start_str)) || !(vocab[nv++] = strdup(s_end_str)))
        goto done;
    if (!(json = cJSON_CreateObject()))
        goto done;
    for (size_t i = 0; i < nv; i++)
        if (!cJSON_AddNumberToObject(json, vocab[i], (double)i))
            goto done;
    if (!(text = cJSON_PrintUnformatted(json)))
        goto done;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    if (!(f = fopen(path, "wb")) || fputs(text, f) < 0 || fclose(f) != 0) {
        f = NULL;
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (!(f = fopen(path, "wb"))) {
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    fputs("#version: 0.2\n", f);
    for (size_t i = 0; i < nm; i++)
        fprintf(f, "%s %s\n", merge_a[i], merge_b[i]);
    if (fclose(f) != 0) {
        f = NULL;
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
        goto done;
    }
    f = NULL;
    rc = 0;
done:
    if (rc == SD3_ENOMEM)
        sd3_err_set(err, SD3_ENOMEM, "tiny CLIP tokenizer: out of memory");
    for (size_t i = 0; i < nv; i++)
        free(vocab[i]);
    for (size_t i = 0; i < nm; i++) {
        free(merge_a[i]);
        free(merge_b[i]);
    }
    for (size_t i = 0; i < NW; i++) {
        for (size_t k = 0; k < words[i].n; k++)
            free(words[i].sym[k]);
        free(words[i].sym);
    }
    cJSON_Delete(json);
    free(text);
    return rc;
}
