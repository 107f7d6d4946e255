/*  sd3_tok_spm - T5 SentencePiece unigram tokenizer (spiece.model), as T5TokenizerFast
 *
 *  The unigram search and the nmt_nfkc normalization come from libsentencepiece through a
 *  small extern "C" shim (sd3_tok_spm_shim.cc): the reference ids were made with that
 *  library, and the normalization rules are data inside spiece.model (a compiled character
 *  map) that the library interprets. This file adds what the HF tokenizer adds on top: the
 *  special tokens <pad>, </s>, <unk> and the 100 <extra_id_N> (= pieces + 99 - N) matched in
 *  the raw text, each piece between them encoded alone (so it gets its own "▁").
 *  It also writes the tiny self-made spiece.model (a ModelProto written field by field).  */
#include "sd3_tok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_EXTRA_IDS 100
#define S_MAX_MODEL (64u << 20)

void *sd3_tok_spm_shim_new(const void *data, size_t len, char *msg, size_t msg_cap);
void sd3_tok_spm_shim_free(void *sp);
int sd3_tok_spm_shim_piece_size(const void *sp);
int sd3_tok_spm_shim_piece_id(const void *sp, const char *piece);
int sd3_tok_spm_shim_encode(const void *sp, const char *text, size_t len, int32_t **ids, size_t *n,
                            char *msg, size_t msg_cap);

struct sd3_tok_spm {
    void *sp;
    int n_pieces;
    int32_t pad_id, eos_id, unk_id;
};

sd3_tok_spm_t *
sd3_tok_spm_new_from_memory(const void *data, size_t len, sd3_err_t *err)
{
    char msg[256] = "";
    sd3_tok_spm_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "spiece.model: out of memory");
        return NULL;
    }
    if (!(self->sp = sd3_tok_spm_shim_new(data, len, msg, sizeof msg))) {
        sd3_err_set(err, SD3_EFORMAT, "spiece.model: not a sentencepiece model: %s", msg);
        free(self);
        return NULL;
    }
    self->n_pieces = sd3_tok_spm_shim_piece_size(self->sp);
    self->pad_id = sd3_tok_spm_shim_piece_id(self->sp, "<pad>");
    self->eos_id = sd3_tok_spm_shim_piece_id(self->sp, "</s>");
    self->unk_id = sd3_tok_spm_shim_piece_id(self->sp, "<unk>");
    if (self->n_pieces <= 0 || self->n_pieces > (1 << 24) || self->eos_id < 0) {
        sd3_err_set(err, SD3_EFORMAT,
                    "spiece.model: %d pieces and no </s> piece, want a T5 "
                    "vocabulary",
                    self->n_pieces);
        sd3_tok_spm_destroy(&self);
    }
    return self;
}

sd3_tok_spm_t *
sd3_tok_spm_new_from_file(const char *path, sd3_err_t *err)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) {
        sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: %s", path,
                    strerror(errno));
        return NULL;
    }
    if (fstat(fileno(f), &st) != 0 || st.st_size <= 0 || (uint64_t)st.st_size > S_MAX_MODEL) {
        fclose(f);
        sd3_err_set(err, SD3_EFORMAT, "%s: not a file of 1 byte to %u MiB", path,
                    S_MAX_MODEL >> 20);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (!buf || n != (size_t)st.st_size) {
        sd3_err_set(err, buf ? SD3_EIO : SD3_ENOMEM, "%s: cannot read", path);
        free(buf);
        return NULL;
    }
    sd3_tok_spm_t *self = sd3_tok_spm_new_from_memory(buf, n, err);
    free(buf);
    if (!self)
        sd3_err_prefix(err, "%s", path);
    return self;
}

void
sd3_tok_spm_destroy(sd3_tok_spm_t **self_p)
{
    sd3_tok_spm_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    sd3_tok_spm_shim_free(self->sp);
    free(self);
    *self_p = NULL;
}

size_t
sd3_tok_spm_vocab_size(const sd3_tok_spm_t *self)
{
    return (size_t)self->n_pieces + S_EXTRA_IDS;
}

int32_t
sd3_tok_spm_piece_id(const sd3_tok_spm_t *self, const char *piece)
{
    return sd3_tok_spm_shim_piece_id(self->sp, piece);
}

// The special token starting at s (length *len, id *id), or false.
static bool
s_special_at(const sd3_tok_spm_t *self, const char *s, size_t n, size_t *len, int32_t *id)
{
    static const char *const names[3] = {"<pad>", "</s>", "<unk>"};
    const int32_t ids[3] = {self->pad_id, self->eos_id, self->unk_id};
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(names[k]);
        if (ids[k] >= 0 && n >= l && !memcmp(s, names[k], l)) {
            *len = l;
            *id = ids[k];
            return true;
        }
    }
    // <extra_id_N>, N in 0..99 written without leading zeros
    if (n >= 12 && !memcmp(s, "<extra_id_", 10)) {
        size_t i = 10;
        int num = 0;
        while (i < n && i < 13 && s[i] >= '0' && s[i] <= '9')
            num = num * 10 + (s[i++] - '0');
        size_t digits = i - 10;
        if (digits >= 1 && digits <= 2 && i < n && s[i] == '>' && !(digits == 2 && s[10] == '0') &&
            num < S_EXTRA_IDS) {
            *len = i + 1;
            *id = self->n_pieces + S_EXTRA_IDS - 1 - num;
            return true;
        }
    }
    return false;
}

static int
s_encode_piece(sd3_tok_spm_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
               sd3_err_t *err)
{
    char msg[256] = "";
    int32_t *ids = NULL;
    size_t n = 0;
    if (sd3_tok_spm_shim_encode(self->sp, text, len, &ids, &n, msg, sizeof msg) != 0)
        return sd3_err_set(err, SD3_EINTERNAL, "T5 tokenizer: sentencepiece: %s", msg);
    int rc = sd3_tok_ids_append(out, ids, n, err);
    free(ids);
    return rc;
}

int
sd3_tok_spm_encode(sd3_tok_spm_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
                   sd3_err_t *err)
{
    if (len > SD3_TOK_MAX_WORD_BYTES)
        return sd3_err_set(err, SD3_EINVAL, "T5 tokenizer: text of %zu bytes, max %d", len,
                           SD3_TOK_MAX_WORD_BYTES);
    if (sd3_tok_utf8_check(text, len, err) != 0)
        return SD3_EINVAL;
    size_t piece = 0, i = 0;
    while (i < len) {
        size_t slen;
        int32_t id;
        if (text[i] == '<' && s_special_at(self, text + i, len - i, &slen, &id)) {
            int rc;
            if (i > piece && (rc = s_encode_piece(self, text + piece, i - piece, out, err)) != 0)
                return rc;
            if ((rc = sd3_tok_ids_push(out, id, err)) != 0)
                return rc;
            i += slen;
            piece = i;
        } else {
            i++;
        }
    }
    if (len > piece)
        return s_encode_piece(self, text + piece, len - piece, out, err);
    return 0;
}

/* ---- the tiny self-made spiece.model ---------------------------------------------------- */

typedef struct {
    uint8_t *v;
    size_t n, cap;
    bool oom;
} s_buf_t;

static void
s_put(s_buf_t *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *v = realloc(b->v, cap);
        if (!v) {
            b->oom = true;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    memcpy(b->v + b->n, p, n);
    b->n += n;
}

static void
s_varint(s_buf_t *b, uint64_t v)
{
    uint8_t tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            tmp[n] |= 0x80;
        n++;
    } while (v);
    s_put(b, tmp, n);
}

static void
s_field_varint(s_buf_t *b, int field, int64_t v)
{
    s_varint(b, (uint64_t)field << 3 | 0);
    s_varint(b, (uint64_t)v); // negative int32 values are sign-extended to 10 bytes
}

static void
s_field_bytes(s_buf_t *b, int field, const void *p, size_t n)
{
    s_varint(b, (uint64_t)field << 3 | 2);
    s_varint(b, n);
    s_put(b, p, n);
}

static void
s_field_float(s_buf_t *b, int field, float f)
{
    uint32_t u;
    uint8_t le[4];
    memcpy(&u, &f, 4);
    for (int i = 0; i < 4; i++)
        le[i] = (uint8_t)(u >> (8 * i));
    s_varint(b, (uint64_t)field << 3 | 5);
    s_put(b, le, 4);
}

// sentencepiece ModelProto.SentencePiece types
enum { S_NORMAL = 1, S_UNKNOWN = 2, S_CONTROL = 3 };

static void
s_piece(s_buf_t *model, const char *piece, float score, int type)
{
    s_buf_t p = {0};
    s_field_bytes(&p, 1, piece, strlen(piece));
    s_field_float(&p, 2, score);
    s_field_varint(&p, 3, type);
    if (p.oom)
        model->oom = true;
    else
        s_field_bytes(model, 1, p.v, p.n); // ModelProto.pieces = 1
    free(p.v);
}

static const char *const s_tiny_t5_words[] = {
    "a",         "an",       "the",       "of",       "and",    "with",        "in",     "on",
    "at",        "photo",    "picture",   "painting", "cat",    "dog",         "bird",   "fish",
    "red",       "blue",     "green",     "black",    "white",  "gold",        "dark",   "light",
    "night",     "day",      "sun",       "moon",     "star",   "sky",         "sea",    "river",
    "tree",      "flower",   "house",     "city",     "street", "car",         "boat",   "old",
    "new",       "big",      "small",     "tall",     "soft",   "warm",        "cold",   "happy",
    "beautiful", "detailed", "highly",    "quality",  "best",   "masterpiece", "sharp",  "focus",
    "sunset",    "golden",   "landscape", "view",     "castle", "window",      "fire",   "water",
    "stone",     "cloud",    "rain",      "snow",     "ocean",  "beach",       "people", "woman",
    "man",       "child",    "girl",      "boy",      "face",   "eyes",        "art",    "style",
    "digital",   "oil",      "fantasy",   "dragon",   "robot",  "space",       "neon",   "shadow",
    "color",     "bright",   "very",      "is",       "it",     "this",        "for",    "from",
    "to",        "by",       "hello",     "world",    "text",   "tiny",        "model",  "test",
};

int
sd3_tok_spm_write_tiny(const char *path, sd3_err_t *err)
{
    enum { NW = sizeof s_tiny_t5_words / sizeof s_tiny_t5_words[0] };
    s_buf_t m = {0}, spec = {0};
    char buf[64];
    int count = 0, rc = 0;
    FILE *f = NULL;
    s_piece(&m, "<pad>", 0.0f, S_CONTROL);
    s_piece(&m, "</s>", 0.0f, S_CONTROL);
    s_piece(&m, "<unk>", 0.0f, S_UNKNOWN);
    s_piece(&m, "\xe2\x96\x81", -2.0f, S_NORMAL); // "▁"
    count = 4;
    for (int c = '!'; c <= '~'; c++, count++) {
        buf[0] = (char)c;
        buf[1] = 0;
        s_piece(&m, buf, -10.0f, S_NORMAL);
    }
    for (int i = 0; i < NW; i++, count++) {
        snprintf(buf, sizeof buf, "\xe2\x96\x81%s", s_tiny_t5_words[i]);
        s_piece(&m, buf, -3.0f - 0.01f * (float)i, S_NORMAL);
    }
    // fill with letter pairs up to the fixed size (scores below whole words)
    for (int x = 'a'; x <= 'z' && count < SD3_TOK_TINY_T5_PIECES; x++)
        for (int y = 'a'; y <= 'z' && count < SD3_TOK_TINY_T5_PIECES; y++, count++) {
            snprintf(buf, sizeof buf, "%c%c", x, y);
            s_piece(&m, buf, -8.0f - 0.001f * (float)count, S_NORMAL);
        }
    if (count != SD3_TOK_TINY_T5_PIECES)
        return sd3_err_set(err, SD3_EINTERNAL, "tiny spiece.model: %d pieces, want %d", count,
                           SD3_TOK_TINY_T5_PIECES);
    // TrainerSpec: model_type UNIGRAM (3), vocab_size (4), unk_id (40), bos_id (41),
    // eos_id (42), pad_id (43)
    s_field_varint(&spec, 3, 1);
    s_field_varint(&spec, 4, SD3_TOK_TINY_T5_PIECES);
    s_field_varint(&spec, 40, 2);
    s_field_varint(&spec, 41, -1);
    s_field_varint(&spec, 42, 1);
    s_field_varint(&spec, 43, 0);
    s_field_bytes(&m, 2, spec.v, spec.n);
    // NormalizerSpec: name (1) "identity", add_dummy_prefix (3), remove_extra_whitespaces (4),
    // escape_whitespaces (5)
    spec.n = 0;
    s_field_bytes(&spec, 1, "identity", 8);
    s_field_varint(&spec, 3, 1);
    s_field_varint(&spec, 4, 1);
    s_field_varint(&spec, 5, 1);
    s_field_bytes(&m, 3, spec.v, spec.n);
    if (m.oom || spec.oom) {
        rc = sd3_err_set(err, SD3_ENOMEM, "tiny spiece.model: out of memory");
    } else if (!(f = fopen(path, "wb")) || fwrite(m.v, 1, m.n, f) != m.n) {
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
    }
    if (f && fclose(f) != 0 && rc == 0)
        rc = sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
    free(m.v);
    free(spec.v);
    return rc;
}
