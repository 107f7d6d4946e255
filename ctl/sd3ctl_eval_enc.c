/*  sd3ctl_eval_enc - `sd3ctl eval clip_l|clip_g|t5|cond` (TESTVECTORS-enc.md §3-4)
 *
 *  Runs the encoders of stages/encoder on the ids stored in the vectors file (pK.in.*, for
 *  K = 0, 1, ... while present) and compares every pK.out.* tensor: the final outputs from
 *  the returned tensors, the intermediates (embeddings, layers, blocks, buckets, bias)
 *  through the encoders' taps. A pK.out.* tensor that nothing produced fails.
 *  --model: a single-component file (its `config` metadata is the HF config), an SD3
 *  checkpoint in any layout, or, for cond, a folder holding the files the vectors' `weights`
 *  metadata names (in the order CLIP-L, CLIP-G, T5). Without --model the `weights` files are
 *  looked for beside the vectors file. Backend: $SD3_BACKEND (default cpu).  */
#include "sd3_backend.h"
#include "sd3_clip.h"
#include "sd3_cond.h"
#include "sd3_t5.h"
#include "sd3ctl.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_MAX_PROMPTS 1000
#define S_MAX_CHECKED 256

typedef struct {
    sd3_eval_t *ev;
    sd3_backend_t *be;
    char prefix[32]; // "p0.out."
    double atol, rtol;
    char *checked[S_MAX_CHECKED];
    int n_checked;
} s_ctx_t;

static void
s_ctx_reset(s_ctx_t *c, int k)
{
    for (int i = 0; i < c->n_checked; i++)
        free(c->checked[i]);
    c->n_checked = 0;
    snprintf(c->prefix, sizeof c->prefix, "p%d.out.", k);
}

// Compares `t` (host or backend) with "<prefix><name>" when the vectors hold it; exact for
// integers. missing_ok: intermediates the file does not store are skipped.
static int
s_check(s_ctx_t *c, const char *name, const sd3_tensor_t *t, bool missing_ok, sd3_err_t *err)
{
    char full[128];
    snprintf(full, sizeof full, "%s%s", c->prefix, name);
    const sd3_st_t *vec = sd3_eval_vectors(c->ev);
    if (missing_ok && (!vec || !sd3_st_has(vec, full)))
        return 0;
    if (c->n_checked < S_MAX_CHECKED)
        c->checked[c->n_checked++] = strdup(full);
    if (!t) {
        sd3_eval_check(c->ev, full, NULL, 0, 0);
        return 0;
    }
    bool exact = t->dtype == SD3_I32 || t->dtype == SD3_I64 || t->dtype == SD3_U8;
    double atol = exact ? 0 : c->atol, rtol = exact ? 0 : c->rtol;
    if (t->where == SD3_HOST && (exact || t->dtype == SD3_F32)) {
        sd3_eval_check(c->ev, full, t, atol, rtol);
        return 0;
    }
    sd3_tensor_t *h = sd3_tensor_new_err(SD3_F32, t->ndim, t->shape, full, err);
    if (!h)
        return err->code;
    int rc = c->be->ops->download(c->be, h, t, err);
    if (!rc)
        sd3_eval_check(c->ev, full, h, atol, rtol);
    sd3_tensor_destroy(&h);
    return rc;
}

static int
s_tap(void *user, const char *name, const sd3_tensor_t *t, sd3_err_t *err)
{
    return s_check(user, name, t, true, err);
}

// Every "<prefix>*" tensor of the vectors that was not compared fails.
static void
s_check_rest(s_ctx_t *c)
{
    const sd3_st_t *vec = sd3_eval_vectors(c->ev);
    size_t plen = strlen(c->prefix);
    for (size_t i = 0; vec && i < sd3_st_count(vec); i++) {
        const char *name = sd3_st_name(vec, i);
        if (strncmp(name, c->prefix, plen) != 0)
            continue;
        bool seen = false;
        for (int j = 0; j < c->n_checked && !seen; j++)
            seen = !strcmp(c->checked[j], name);
        if (!seen)
            sd3_eval_record(c->ev, name, false, "not produced by this implementation");
    }
}

// Ids of input `name` as a fresh I32 host tensor (I32 stored; any other dtype refused).
static sd3_tensor_t *
s_ids(sd3_eval_t *ev, const char *name, sd3_err_t *err)
{
    sd3_tensor_t *t = sd3_eval_input(ev, name, err);
    if (t && t->dtype != SD3_I32) {
        sd3_err_set(err, SD3_EFORMAT, "%s: '%s' is %s, want I32 ids", sd3_eval_vectors_path(ev),
                    name, sd3_dtype_name(t->dtype));
        sd3_tensor_destroy(&t);
    }
    if (t && (t->ndim < 1 || t->shape[t->ndim - 1] < 1 || t->shape[t->ndim - 1] > 1 << 16 ||
              sd3_tensor_numel(t) != t->shape[t->ndim - 1])) {
        sd3_err_set(err, SD3_EFORMAT, "%s: '%s' is not one row of ids", sd3_eval_vectors_path(ev),
                    name);
        sd3_tensor_destroy(&t);
    }
    return t;
}

static bool
s_has(sd3_eval_t *ev, const char *name)
{
    const sd3_st_t *vec = sd3_eval_vectors(ev);
    return vec && sd3_st_has(vec, name);
}

static bool
s_is_dir(const char *path)
{
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool
s_is_file(const char *path)
{
    struct stat sb;
    return path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

// The i-th word of the vectors' `weights` metadata, joined to `dir` (or the vectors'
// folder when dir is NULL). Empty string when absent.
static void
s_weights_path(sd3_eval_t *ev, const char *dir, int i, char *out, size_t cap)
{
    const sd3_st_t *vec = sd3_eval_vectors(ev);
    const char *w = vec ? sd3_st_metadata(vec, "weights") : NULL;
    char vdir[4096], word[512];
    out[0] = '\0';
    if (!w)
        return;
    for (int k = 0; k <= i; k++) {
        while (*w == ' ')
            w++;
        size_t n = strcspn(w, " ");
        if (n == 0 || n >= sizeof word)
            return;
        if (k == i) {
            memcpy(word, w, n);
            word[n] = '\0';
        }
        w += n;
    }
    if (!dir) {
        snprintf(vdir, sizeof vdir, "%s", sd3_eval_vectors_path(ev));
        dir = dirname(vdir);
    }
    snprintf(out, cap, "%s/%s", dir, word);
}

static sd3_backend_t *
s_backend(sd3_eval_t *ev, sd3_err_t *err)
{
    const char *name = getenv("SD3_BACKEND");
    sd3_backend_t *be = sd3_backend_new(name && *name ? name : "cpu", 0, err);
    if (be && sd3_backend_set_precision(be, sd3_eval_precision(ev), err) != 0)
        sd3_backend_destroy(&be);
    return be;
}

// Opens one encoder's weights: --model as a file or checkpoint, else the `weights` file.
static sd3_weights_t *
s_open_weights(sd3_eval_t *ev, sd3_component_t comp, sd3_model_t **model_p, char **config_p,
               sd3_err_t *err)
{
    const char *model = sd3_eval_model(ev);
    char path[4096];
    *model_p = NULL;
    *config_p = NULL;
    if (model && s_is_file(model) && !s_is_dir(model)) {
        // a single-component file, or a whole single-file checkpoint
        sd3_weights_t *w = sd3_weights_open_path(model, comp, NULL);
        if (w) {
            *config_p = sd3_cond_config_json(NULL, model, comp);
            if (!*config_p) { // the vectors carry the config too
                const sd3_st_t *vec = sd3_eval_vectors(ev);
                const char *cfg = vec ? sd3_st_metadata(vec, "config") : NULL;
                *config_p = cfg ? strdup(cfg) : NULL;
            }
            return w;
        }
    }
    if (!model) {
        s_weights_path(ev, NULL, 0, path, sizeof path);
        if (!path[0]) {
            sd3_err_set(err, SD3_EINVAL, "no --model and no `weights` metadata in %s",
                        sd3_eval_vectors_path(ev));
            return NULL;
        }
        sd3_weights_t *w = sd3_weights_open_path(path, comp, err);
        if (w)
            *config_p = sd3_cond_config_json(NULL, path, comp);
        return w;
    }
    if (!(*model_p = sd3_model_open(model, err)))
        return NULL;
    *config_p = sd3_cond_config_json(*model_p, NULL, comp);
    sd3_weights_t *w = sd3_weights_open(*model_p, comp, err);
    if (!w)
        sd3_model_destroy(model_p);
    return w;
}

// -- clip_l, clip_g, t5 ----------------------------------------------------------------------

// One prompt through CLIP: pool index, context, pooled (and projected) vectors, as the
// encoder stage hands them on (sd3.*: CLIP-G's pooled vector is the projected one).
static int
s_run_clip(s_ctx_t *c, sd3_clip_t *clip, sd3_component_t comp, const sd3_tensor_t *ids,
           sd3_err_t *err)
{
    sd3_clip_out_t out;
    sd3_tensor_t *pool = NULL;
    int rc = sd3_clip_encode(clip, ids->data, (int)sd3_tensor_numel(ids), &out, s_tap, c, err);
    if (rc)
        return rc;
    if (!(pool = sd3_tensor_new_err(SD3_I32, 1, (int64_t[]){1}, "pool_index", err))) {
        rc = err->code;
        goto done;
    }
    ((int32_t *)pool->data)[0] = out.pool_index;
    const sd3_tensor_t *sd3_pooled = comp == SD3_COMP_CLIP_G ? out.pooled_projected : out.pooled;
    // the first failing check stops the prompt
    if ((rc = s_check(c, "pool_index", pool, false, err)) ||
        (rc = s_check(c, "penultimate", out.context, false, err)) ||
        (rc = s_check(c, "pooled", out.pooled, false, err)) ||
        (rc = s_check(c, "pooled_projected", out.pooled_projected, !out.pooled_projected, err)) ||
        (rc = s_check(c, "sd3.context", out.context, false, err)))
        goto done;
    rc = s_check(c, "sd3.pooled", sd3_pooled, false, err);
done:
    sd3_clip_out_fini(clip, &out);
    sd3_tensor_destroy(&pool);
    return rc;
}

// One prompt through T5: the last hidden state, which is also the stage's T5 context.
static int
s_run_t5(s_ctx_t *c, sd3_t5_t *t5, const sd3_tensor_t *ids, sd3_err_t *err)
{
    sd3_tensor_t *hidden = NULL;
    int rc;
    if ((rc = sd3_t5_encode(t5, ids->data, (int)sd3_tensor_numel(ids), &hidden, s_tap, c, err)) ==
            0 &&
        (rc = s_check(c, "last_hidden", hidden, false, err)) == 0)
        rc = s_check(c, "sd3.context", hidden, false, err);
    if (hidden)
        c->be->ops->tensor_free(c->be, &hidden);
    return rc;
}

// One text encoder (CLIP-L, CLIP-G or T5) over every prompt p<k>.in.tokens of the file.
static int
s_eval_encoder(sd3_eval_t *ev, sd3_component_t comp, sd3_err_t *err)
{
    sd3_model_t *model = NULL;
    sd3_weights_t *w = NULL;
    sd3_backend_t *be = NULL;
    sd3_clip_t *clip = NULL;
    sd3_t5_t *t5 = NULL;
    sd3_tensor_t *ids = NULL;
    char *config = NULL;
    sd3_clip_config_t clip_cfg;
    sd3_t5_config_t t5_cfg;
    s_ctx_t c = {.ev = ev};
    int rc = 0;

    if (!(w = s_open_weights(ev, comp, &model, &config, err)) || !(be = s_backend(ev, err)))
        goto fail;
    if (comp == SD3_COMP_T5 ? (sd3_t5_config_detect(w, config, &t5_cfg, err) ||
                               !(t5 = sd3_t5_new(be, w, &t5_cfg, err)))
                            : (sd3_clip_config_detect(w, comp, config, &clip_cfg, err) ||
                               !(clip = sd3_clip_new(be, w, &clip_cfg, err))))
        goto fail;
    c.be = be;
    c.atol = sd3_eval_atol(ev, 1e-4);
    c.rtol = sd3_eval_rtol(ev, 0);
    for (int k = 0; k < S_MAX_PROMPTS; k++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.in.tokens", k);
        if (!s_has(ev, name))
            break;
        s_ctx_reset(&c, k);
        if (!(ids = s_ids(ev, name, err))) {
            rc = err->code;
            goto done;
        }
        if ((rc = t5 ? s_run_t5(&c, t5, ids, err) : s_run_clip(&c, clip, comp, ids, err)))
            goto done;
        s_check_rest(&c);
        sd3_tensor_destroy(&ids);
    }
    goto done;
fail:
    rc = err->code ? err->code : SD3_EINTERNAL;
done:
    s_ctx_reset(&c, 0);
    sd3_tensor_destroy(&ids);
    sd3_clip_destroy(&clip);
    sd3_t5_destroy(&t5);
    sd3_backend_destroy(&be);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&model);
    free(config);
    return rc;
}

int
sd3_eval_clip_l(sd3_eval_t *ev, sd3_err_t *err)
{
    return s_eval_encoder(ev, SD3_COMP_CLIP_L, err);
}

int
sd3_eval_clip_g(sd3_eval_t *ev, sd3_err_t *err)
{
    return s_eval_encoder(ev, SD3_COMP_CLIP_G, err);
}

int
sd3_eval_t5(sd3_eval_t *ev, sd3_err_t *err)
{
    return s_eval_encoder(ev, SD3_COMP_T5, err);
}

// -- cond ----------------------------------------------------------------------------------

static sd3_cond_t *
s_open_cond(sd3_eval_t *ev, sd3_backend_t *be, sd3_model_t **model_p, sd3_err_t *err)
{
    const char *model = sd3_eval_model(ev);
    char p[3][4096];
    *model_p = NULL;
    // A folder holding the `weights` files (enc/), or no --model: the files beside the vectors.
    if (!model || s_is_dir(model)) {
        bool all = true;
        for (int i = 0; i < 3; i++) {
            s_weights_path(ev, model, i, p[i], sizeof p[i]);
            all = all && s_is_file(p[i]);
        }
        if (all)
            return sd3_cond_new_from_files(be, p[0], p[1], p[2], err);
        if (!model) {
            sd3_err_set(err, SD3_EINVAL,
                        "no --model, and the `weights` files of %s are not "
                        "beside it",
                        sd3_eval_vectors_path(ev));
            return NULL;
        }
    }
    if (!(*model_p = sd3_model_open(model, err)))
        return NULL;
    return sd3_cond_new_from_model(be, *model_p, true, err);
}

int
sd3_eval_cond(sd3_eval_t *ev, sd3_err_t *err)
{
    sd3_model_t *model = NULL;
    sd3_backend_t *be = NULL;
    sd3_cond_t *cond = NULL;
    sd3_tensor_t *tl = NULL, *tg = NULL, *tt = NULL, *ctx = NULL, *pooled = NULL;
    s_ctx_t c = {.ev = ev};
    int rc = 0;

    if (!(be = s_backend(ev, err)) || !(cond = s_open_cond(ev, be, &model, err))) {
        rc = err->code ? err->code : SD3_EINTERNAL;
        goto done;
    }
    c.be = be;
    c.atol = sd3_eval_atol(ev, 1e-4);
    c.rtol = sd3_eval_rtol(ev, 0);
    for (int k = 0; k < S_MAX_PROMPTS; k++) {
        char nl[64], ng[64], nt[64];
        snprintf(nl, sizeof nl, "p%d.in.tokens_l", k);
        snprintf(ng, sizeof ng, "p%d.in.tokens_g", k);
        snprintf(nt, sizeof nt, "p%d.in.tokens_t5", k);
        if (!s_has(ev, nl))
            break;
        s_ctx_reset(&c, k);
        if (!(tl = s_ids(ev, nl, err)) || !(tg = s_ids(ev, ng, err)) ||
            (s_has(ev, nt) && !(tt = s_ids(ev, nt, err)))) {
            rc = err->code;
            goto done;
        }
        sd3_cond_tokens_t tok = {
            .l = tl->data,
            .n_l = (int)sd3_tensor_numel(tl),
            .g = tg->data,
            .n_g = (int)sd3_tensor_numel(tg),
            .t5 = tt ? tt->data : NULL,
            .n_t5 = tt ? (int)sd3_tensor_numel(tt) : 0,
        };
        // the reference's get_cond, then the two no-T5 conventions (TESTVECTORS-enc.md §4)
        sd3_cond_opts_t opts = SD3_COND_OPTS_INIT;
        static const struct {
            bool no_t5;
            int zero_rows;
            const char *ctx_name, *pooled_name;
        } runs[] = {
            {false, SD3_COND_ZERO_T5_ROWS, "context", "pooled"},
            {true, SD3_COND_ZERO_T5_ROWS, "no_t5.context", NULL},
            {true, 0, "no_t5.context_lg_only", NULL},
        };
        for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
            char full[96];
            snprintf(full, sizeof full, "%s%s", c.prefix, runs[r].ctx_name);
            if (r > 0 && !s_has(ev, full))
                continue;
            opts.no_t5 = runs[r].no_t5;
            opts.zero_t5_rows = runs[r].zero_rows;
            if ((rc = sd3_cond_encode(cond, &tok, &opts, &ctx, &pooled, err)) ||
                (rc = s_check(&c, runs[r].ctx_name, ctx, false, err)) ||
                (runs[r].pooled_name &&
                 (rc = s_check(&c, runs[r].pooled_name, pooled, false, err))))
                goto done;
            sd3_tensor_destroy(&ctx);
            sd3_tensor_destroy(&pooled);
        }
        s_check_rest(&c);
        sd3_tensor_destroy(&tl);
        sd3_tensor_destroy(&tg);
        sd3_tensor_destroy(&tt);
    }
done:
    s_ctx_reset(&c, 0);
    sd3_tensor_destroy(&tl);
    sd3_tensor_destroy(&tg);
    sd3_tensor_destroy(&tt);
    sd3_tensor_destroy(&ctx);
    sd3_tensor_destroy(&pooled);
    sd3_cond_destroy(&cond);
    sd3_backend_destroy(&be);
    sd3_model_destroy(&model);
    return rc;
}
