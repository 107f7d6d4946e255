/*  sd3_tok - the three SD3 tokenizers and the reference's prompt rules
 *
 *  Prompt -> token ids exactly as the reference (sd3.5 other_impls.SD3Tokenizer) makes them
 *  (TESTVECTORS-enc.md §1, MODEL.md §5.5):
 *    clip_l [77]  start 49406, content, end 49407, padded with end
 *    clip_g [77]  the same ids, padded with 0
 *    t5     [max(77, n+1)]  content of prompt[:226], </s> = 1, padded with <pad> = 0
 *  Pieces:
 *    sd3_tok_clean.c   ftfy-like clean-up (the ftfy path of HF CLIPTokenizer), whitespace
 *                      clean and Python-style lower-case, UTF-8 validation
 *    sd3_tok_bpe.c     CLIP byte-level BPE (vocab.json + merges.txt, or openai's
 *                      bpe_simple_vocab_16e6.txt.gz), one word at a time
 *    sd3_tok_spm.c     T5 SentencePiece unigram (spiece.model through libsentencepiece)
 *    sd3_prompt.c      `( )` weight syntax stripped, words, 77-token chunks, the set of
 *                      three tokenizers, the tiny self-made tokenizer files
 *  Invalid UTF-8 is refused with SD3_EINVAL. Library code: never prints, never aborts on
 *  input. Thread: an object may be used by one thread at a time (no shared mutable state
 *  between objects).  */
#pragma once
#include "sd3_err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD3_TOK_CLIP_LEN       77    // CLIP chunk length: start + 75 content + end
#define SD3_TOK_T5_MIN_LEN     77    // the reference's T5 min_length
#define SD3_TOK_T5_MAX_CHARS   226   // T5 sees prompt[:226] (code points)
#define SD3_TOK_MAX_PROMPT     65536 // bytes; longer prompts are refused (SD3_EINVAL)
#define SD3_TOK_MAX_WORD_BYTES 65536 // one word handed to a tokenizer

// The self-made tiny tokenizer set (sd3_tok_write_tiny_set): vocabulary sizes, which the tiny
// models' embedding tables must match. CLIP: 256 byte symbols, 256 with "</w>", 510 merges,
// <|startoftext|> 1022, <|endoftext|> 1023. T5: 284 pieces (0 <pad>, 1 </s>, 2 <unk>) plus
// the 100 <extra_id_N> = 383 - N that the HF tokenizer adds.
#define SD3_TOK_TINY_CLIP_VOCAB  1024
#define SD3_TOK_TINY_CLIP_MERGES 510
#define SD3_TOK_TINY_T5_PIECES   284
#define SD3_TOK_TINY_T5_VOCAB    384

// A growable list of token ids.
typedef struct {
    int32_t *ids;
    size_t n, cap;
} sd3_tok_ids_t;

int sd3_tok_ids_push(sd3_tok_ids_t *v, int32_t id, sd3_err_t *err);
int sd3_tok_ids_append(sd3_tok_ids_t *v, const int32_t *ids, size_t n, sd3_err_t *err);
void sd3_tok_ids_fini(sd3_tok_ids_t *v); // frees ids; the struct may be reused

/* ---- text clean-up (sd3_tok_clean.c) ------------------------------------------------- */

// 0 when s[0..n) is valid UTF-8 (no overlong forms, no surrogates, <= U+10FFFF), else
// SD3_EINVAL naming the byte offset.
int sd3_tok_utf8_check(const char *s, size_t n, sd3_err_t *err);
// The clean-up ftfy 6.3 `fix_text` applies with its defaults, repeated until nothing changes:
// HTML entities unescaped (only when the text has no '<'), C1 controls read as Windows-1252,
// Latin ligatures split, fullwidth/halfwidth forms to their normal width, curly quotes
// uncurled, line breaks to "\n", terminal escapes and control characters removed, NFC.
// Not done: ftfy's mojibake repair (fix_encoding). *out is fresh (NUL-terminated), caller frees.
int sd3_tok_ftfy(const char *s, size_t n, char **out, size_t *out_len, sd3_err_t *err);
// HF CLIPTokenizer's per-piece clean-up with ftfy: lower(whitespace_clean(ftfy(s))).
// whitespace_clean: runs of Python-whitespace become one space, ends stripped; lower:
// Python str.lower (full mapping for U+0130, final sigma).
int sd3_tok_clip_clean(const char *s, size_t n, char **out, size_t *out_len, sd3_err_t *err);

/* ---- CLIP byte-level BPE (sd3_tok_bpe.c) --------------------------------------------- */

typedef struct sd3_tok_bpe sd3_tok_bpe_t;

// Loads a folder holding vocab.json + merges.txt (Hugging Face layout) or, failing that,
// bpe_simple_vocab_16e6.txt.gz (openai layout; the vocabulary is rebuilt from the merges as
// openai's simple_tokenizer does). NULL + err (SD3_ENOTFOUND, SD3_EFORMAT, SD3_ENOMEM).
sd3_tok_bpe_t *sd3_tok_bpe_new_from_dir(const char *dir, sd3_err_t *err);
// The same from bytes in memory (merges.txt text; vocab.json text, or NULL to rebuild it
// from the merges as openai does). n_merges < 0: all of them (openai's gz: 48894).
sd3_tok_bpe_t *sd3_tok_bpe_new_from_memory(const char *vocab_json, size_t vocab_len,
                                           const char *merges, size_t merges_len, long n_merges,
                                           sd3_err_t *err);
void sd3_tok_bpe_destroy(sd3_tok_bpe_t **self_p);
int32_t sd3_tok_bpe_start_id(const sd3_tok_bpe_t *self);  // <|startoftext|>
int32_t sd3_tok_bpe_end_id(const sd3_tok_bpe_t *self);    // <|endoftext|>
size_t sd3_tok_bpe_vocab_size(const sd3_tok_bpe_t *self); // largest id + 1
// The id of a vocabulary string, or -1.
int32_t sd3_tok_bpe_token_id(const sd3_tok_bpe_t *self, const char *token);
// Appends what HF CLIPTokenizer(text)["input_ids"][1:-1] holds: special tokens matched in
// the raw text, each other piece cleaned (sd3_tok_clip_clean), split by the CLIP regex,
// byte-encoded and merged. Appends nothing for empty or all-whitespace text.
int sd3_tok_bpe_encode(sd3_tok_bpe_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
                       sd3_err_t *err);
// Writes vocab.json + merges.txt of the tiny self-made CLIP tokenizer into dir (exists).
int sd3_tok_bpe_write_tiny(const char *dir, sd3_err_t *err);

/* ---- T5 SentencePiece (sd3_tok_spm.c) ------------------------------------------------ */

typedef struct sd3_tok_spm sd3_tok_spm_t;

// Loads spiece.model (a serialized sentencepiece ModelProto). NULL + err.
sd3_tok_spm_t *sd3_tok_spm_new_from_file(const char *path, sd3_err_t *err);
sd3_tok_spm_t *sd3_tok_spm_new_from_memory(const void *data, size_t len, sd3_err_t *err);
void sd3_tok_spm_destroy(sd3_tok_spm_t **self_p);
size_t sd3_tok_spm_vocab_size(const sd3_tok_spm_t *self); // pieces + 100 extra ids
int32_t sd3_tok_spm_piece_id(const sd3_tok_spm_t *self, const char *piece); // -1 if absent
// Appends what HF T5TokenizerFast(text)["input_ids"][:-1] holds: <pad> 0, </s> 1, <unk> 2
// and <extra_id_N> (= pieces + 99 - N) matched in the raw text, every other piece encoded
// by sentencepiece (nmt_nfkc normalization, "▁" prefix per piece, unknowns fused).
int sd3_tok_spm_encode(sd3_tok_spm_t *self, const char *text, size_t len, sd3_tok_ids_t *out,
                       sd3_err_t *err);
// Writes the tiny self-made spiece.model to path.
int sd3_tok_spm_write_tiny(const char *path, sd3_err_t *err);

/* ---- the reference's prompt rules and the tokenizer set (sd3_prompt.c) ---------------- */

// The words of a prompt after the weight syntax is stripped: words[i] is lens[i] bytes
// (NUL-terminated too, but a word may hold NUL bytes: use lens).
typedef struct {
    char **words;
    size_t *lens;
    size_t n, cap;
} sd3_prompt_words_t;

// other_impls.SDTokenizer before tokenizing: `\(` `\)` escapes, `( )` / `(text:weight)`
// groups lose their brackets and weight (weights are ignored), "\n" -> " ", split on " ",
// empty words dropped. The prompt must be valid UTF-8.
int sd3_prompt_words(const char *prompt, size_t len, sd3_prompt_words_t *out, sd3_err_t *err);
void sd3_prompt_words_fini(sd3_prompt_words_t *w);
// Python float(s) accepts s (what `(x:s)` needs to count as a weight).
bool sd3_prompt_is_py_float(const char *s, size_t len);

// Packs per-word token lists as SDTokenizer.tokenize_with_weights does: chunks of
// max_length = start + content + end (+ pad); a word that does not fit closes the chunk
// (padded) and moves whole, unless it has >= 8 tokens, then it is split at the boundary.
// start < 0: no start token. pad_to_max: pad every chunk to max_length; min_length > 0:
// pad the last one to at least that. out gets n_chunks chunks back to back; *chunk_len the
// length of each (every chunk but the last is max_length long).
typedef struct {
    int32_t start, end, pad;
    size_t max_length, min_length;
    bool pad_to_max;
} sd3_prompt_pack_t;
int sd3_prompt_pack(const sd3_prompt_pack_t *cfg, const sd3_tok_ids_t *words, size_t n_words,
                    sd3_tok_ids_t *out, size_t *n_chunks, sd3_err_t *err);

typedef struct sd3_tokenizer sd3_tokenizer_t;

// Opens a tokenizer folder: either clip/ + t5/ (shared/testdata/tokenizers: CLIP-L and G
// share clip/) or a diffusers model folder (tokenizer/, tokenizer_2/, tokenizer_3/).
sd3_tokenizer_t *sd3_tokenizer_new(const char *dir, sd3_err_t *err);
void sd3_tokenizer_destroy(sd3_tokenizer_t **self_p);
// Borrowed; valid while self lives.
sd3_tok_bpe_t *sd3_tokenizer_clip_l(sd3_tokenizer_t *self);
sd3_tok_bpe_t *sd3_tokenizer_clip_g(sd3_tokenizer_t *self);
sd3_tok_spm_t *sd3_tokenizer_t5(sd3_tokenizer_t *self);

typedef struct {
    // 0: the reference: T5 sees prompt[:226], length max(77, n+1), never truncated.
    // N > 0: diffusers-style fixed length: the whole prompt, content cut to N-1, </s>, 0 pads.
    int t5_len;
} sd3_tok_opts_t;

typedef struct {
    int32_t clip_l[SD3_TOK_CLIP_LEN]; // chunk 0, what the encoders see
    int32_t clip_g[SD3_TOK_CLIP_LEN];
    size_t n_chunks;        // >= 1; chunks 1.. are made and ignored by get_cond
    int32_t *clip_l_chunks; // [n_chunks, 77]
    int32_t *clip_g_chunks; // [n_chunks, 77]
    int32_t *t5;            // [n_t5]
    size_t n_t5;
    int clip_content_tokens; // ids in clip_l[1..76] that are not the end token
    int clip_l_pool_index;   // argmax(clip_l): the pooled row
    int clip_g_pool_index;
} sd3_tokens_t;

// Tokenizes one prompt (UTF-8; SD3_EINVAL when invalid or longer than SD3_TOK_MAX_PROMPT).
// opts may be NULL (the reference). out is filled on success; release with sd3_tokens_fini.
int sd3_tokenizer_encode(sd3_tokenizer_t *self, const char *prompt, size_t len,
                         const sd3_tok_opts_t *opts, sd3_tokens_t *out, sd3_err_t *err);
void sd3_tokens_fini(sd3_tokens_t *t);

// Writes a small self-made tokenizer set, our own files (no third-party vocabulary), in the
// diffusers layout: dir/tokenizer and dir/tokenizer_2 (vocab.json, merges.txt) and
// dir/tokenizer_3/spiece.model; dir and the subfolders are created. Sizes: SD3_TOK_TINY_*.
// sd3_tokenizer_new(dir) reads them through the same code as the real files.
int sd3_tok_write_tiny_set(const char *dir, sd3_err_t *err);
