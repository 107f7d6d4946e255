/*  sd3_enc_stage - the encoder stage: tokenizers, CLIP-L/G, T5 and the embedding cache
 *
 *  prompt -> tokens (sd3_tok) -> conditioning (sd3_cond) with the cache in front, keyed by
 *  the prompt, the options, and fingerprints of the encoder weights and tokenizer files
 *  (sd3_embcache), so identical prompts from any user are encoded once.  */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd3_cond.h"
#include "sd3_log.h"
#include "sd3_stage.h"
#include "sd3_tok.h"

struct sd3_enc_stage {
    sd3_backend_t *be;
    sd3_tokenizer_t *tok;
    sd3_cond_t *cond;
    sd3_embcache_t *cache;
    uint64_t weights_fp[2];
    uint64_t tok_fp[2];
    int (*progress)(void *, int, double);
    void *progress_user;
};

void
sd3_enc_stage_set_progress(sd3_enc_stage_t *self, int (*fn)(void *, int, double), void *user)
{
    self->progress = fn;
    self->progress_user = user;
}

sd3_weights_t *
sd3_enc_stage_weights(sd3_enc_stage_t *self, int i)
{
    return sd3_cond_weights(self->cond, i);
}

static bool
s_is_dir(const char *path)
{
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.", path);
    return access(probe, R_OK) == 0;
}

// Where the tokenizer files are when none was named: the model's own folder (diffusers),
// $SD3_TOKENIZERS, then a `tokenizers/` folder beside the model file or one level up.
static int
s_find_tokenizers(const sd3_model_t *model, char *out, size_t cap, sd3_err_t *err)
{
    const char *env = getenv("SD3_TOKENIZERS");
    const char *mpath = sd3_model_path(model);
    char buf[4096], dir[4096];
    if (sd3_model_tokenizer_dir(model, 0)) {
        snprintf(out, cap, "%s", mpath);
        return 0;
    }
    if (env && *env && s_is_dir(env)) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    snprintf(buf, sizeof buf, "%s", mpath);
    snprintf(dir, sizeof dir, "%s", s_is_dir(mpath) ? mpath : dirname(buf));
    const char *cands[] = {"%s/tokenizers", "%s/../tokenizers", "%s/tokenizer"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        snprintf(out, cap, cands[i], dir);
        if (s_is_dir(out)) {
            if (i == 2) // a diffusers-style tokenizer/ folder: hand over its parent
                snprintf(out, cap, "%s", dir);
            return 0;
        }
    }
    return sd3_err_set(err, SD3_ENOTFOUND,
                       "%s: no tokenizer files (the checkpoint ships none): pass --tokenizers "
                       "DIR or set SD3_TOKENIZERS",
                       mpath);
}

static int
s_tok_fingerprint(const char *dir, uint64_t fp[2], sd3_err_t *err)
{
    static const char *rel[] = {"clip/vocab.json",      "clip/merges.txt",
                                "clip/bpe_simple_vocab_16e6.txt.gz",
                                "t5/spiece.model",      "tokenizer/vocab.json",
                                "tokenizer/merges.txt", "tokenizer_2/vocab.json",
                                "tokenizer_2/merges.txt", "tokenizer_3/spiece.model"};
    enum { N = sizeof rel / sizeof rel[0] };
    char paths[N][4200];
    const char *p[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/%s", dir, rel[i]);
        p[i] = access(paths[i], R_OK) == 0 ? paths[i] : NULL;
    }
    return sd3_embcache_files_fingerprint(p, N, fp, err);
}

sd3_enc_stage_t *
sd3_enc_stage_new(sd3_backend_t *be, sd3_model_t *model, const char *tokenizer_dir,
                  bool load_t5, size_t cache_bytes, sd3_err_t *err)
{
    char dir[4096];
    sd3_enc_stage_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "encoder stage: out of memory");
        return NULL;
    }
    self->be = be;
    if (tokenizer_dir)
        snprintf(dir, sizeof dir, "%s", tokenizer_dir);
    else if (s_find_tokenizers(model, dir, sizeof dir, err) != 0)
        goto fail;
    if (!(self->tok = sd3_tokenizer_new(dir, err)) || s_tok_fingerprint(dir, self->tok_fp, err))
        goto fail;
    if (!(self->cond = sd3_cond_new_from_model(be, model, load_t5, err)))
        goto fail;
    sd3_cond_fingerprint(self->cond, self->weights_fp);
    if (!(self->cache = sd3_embcache_new(cache_bytes))) {
        sd3_err_set(err, SD3_ENOMEM, "encoder stage: out of memory");
        goto fail;
    }
    sd3_log_info("encoder", "tokenizers=%s t5=%s cache_bytes=%zu", dir,
                 sd3_cond_has_t5(self->cond) ? "yes" : "no", cache_bytes);
    return self;
fail:
    sd3_enc_stage_destroy(&self);
    return NULL;
}

void
sd3_enc_stage_destroy(sd3_enc_stage_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_enc_stage_t *self = *self_p;
    sd3_embcache_destroy(&self->cache);
    sd3_cond_destroy(&self->cond);
    sd3_tokenizer_destroy(&self->tok);
    free(self);
    *self_p = NULL;
}

bool
sd3_enc_stage_has_t5(const sd3_enc_stage_t *self)
{
    return sd3_cond_has_t5(self->cond);
}

void
sd3_enc_stage_stats(sd3_enc_stage_t *self, sd3_embcache_stats_t *out)
{
    sd3_embcache_stats(self->cache, out);
}

int
sd3_enc_stage_encode(sd3_enc_stage_t *self, const char *prompt, bool no_t5, int t5_len,
                     int context_width, sd3_tensor_t **context_p, sd3_tensor_t **pooled_p,
                     sd3_err_t *err)
{
    sd3_cond_opts_t opts = SD3_COND_OPTS_INIT;
    sd3_tok_opts_t topts = {.t5_len = t5_len};
    sd3_tokens_t tokens;
    bool have_tokens = false;
    size_t len = strlen(prompt);
    int rc;
    *context_p = *pooled_p = NULL;
    opts.no_t5 = no_t5 || !sd3_cond_has_t5(self->cond);
    opts.t5_length = t5_len;
    opts.context_width = context_width;
    sd3_embkey_t key = sd3_embcache_key(prompt, len, &opts, self->weights_fp, self->tok_fp);
    if ((rc = sd3_embcache_get(self->cache, key, context_p, pooled_p, err)) < 0)
        return rc;
    if (rc == 1)
        return 0;
    if ((rc = sd3_tokenizer_encode(self->tok, prompt, len, &topts, &tokens, err)) != 0)
        return rc;
    have_tokens = true;
    sd3_cond_tokens_t ids = {
        .l = tokens.clip_l, .g = tokens.clip_g, .t5 = opts.no_t5 ? NULL : tokens.t5,
        .n_l = SD3_TOK_CLIP_LEN, .n_g = SD3_TOK_CLIP_LEN, .n_t5 = (int)tokens.n_t5,
    };
    opts.between = self->progress; // after the key: the hook is not part of it
    opts.between_user = self->progress_user;
    if ((rc = sd3_cond_encode(self->cond, &ids, &opts, context_p, pooled_p, err)) != 0)
        goto done;
    rc = sd3_embcache_put(self->cache, key, *context_p, *pooled_p, err);
done:
    if (have_tokens)
        sd3_tokens_fini(&tokens);
    if (rc != 0) {
        sd3_tensor_destroy(context_p);
        sd3_tensor_destroy(pooled_p);
    }
    return rc;
}
