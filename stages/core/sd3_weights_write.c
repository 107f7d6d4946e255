/*  sd3_weights_write - writes a whole checkpoint in any released layout (see the header)
 *
 *  The writer first makes a plan: for each output file, the list of stored tensors, each
 *  one or two element ranges of a canonical tensor (a diffusers to_q is the first row third
 *  of qkv; a swapped modulation is the second half then the first). Then it streams: every
 *  range is read from the source in chunks and appended to the file.
 *
 *  Random weights (mkmodel), chosen so activations stay finite and non-trivial through the
 *  whole pipeline; the MMDiT follows the golden tiny models (TESTVECTORS-dit.md §1), the
 *  encoders and VAE the golden tiny encoders (TESTVECTORS-enc.md §2):
 *    linear and conv weights  N(0, 1/fan_in)      adaLN weights   N(0, 0.25/fan_in)
 *    biases                   N(0, 0.1^2)         norm weights    1 + N(0, 0.1^2)
 *    token embeddings         N(0, 1)             CLIP positions  N(0, 0.5^2)
 *    T5 q, k                  N(0, 0.25/d_model)  T5 position-bias table N(0, 0.5^2)
 *    MMDiT pos_embed          the 2-D sin-cos table of MODEL.md §4.2 (float64, then rounded)
 *    CLIP-L text_projection   identity (SD3 uses the unprojected L pooled vector)
 *  Normals come from a counter-based generator (splitmix64 + Box-Muller) keyed by (seed,
 *  component, name, element index), so any range can be produced on its own.  */
#include "sd3_weights_write.h"

#include "sd3_safetensors.h"
#include "sd3_weights_io.h"
#include "sd3_weights_names.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_CHUNK         ((size_t)1 << 20) // elements per read/write step
#define S_DEFAULT_SHARD ((uint64_t)10 << 30)

void
sd3_wwrite_opts_init(sd3_wwrite_opts_t *opts, const sd3_arch_t *arch)
{
    memset(opts, 0, sizeof *opts);
    opts->layout = SD3_LAYOUT_SINGLE;
    opts->arch = arch;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        opts->want[c] = true;
    opts->dtype = SD3_DTYPE_COUNT;
    opts->shard_bytes = S_DEFAULT_SHARD;
}

// ---- the random source -----------------------------------------------------------------

struct sd3_wrandom {
    sd3_arch_t arch;
    uint64_t seed;
    sd3_dtype_t dtype;
    sd3_arch_tensor_t *list[SD3_COMP_COUNT];
    size_t n[SD3_COMP_COUNT];
    size_t last[SD3_COMP_COUNT]; // index of the last lookup (reads come in order)
};

static uint64_t
s_mix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t
s_key(uint64_t seed, sd3_component_t comp, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull ^ s_mix(seed) ^ ((uint64_t)comp << 56);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return s_mix(h);
}

// Standard normals 2p and 2p+1 of the stream `key` (one Box-Muller pair).
static void
s_normal_pair(uint64_t key, uint64_t p, double *z0, double *z1)
{
    uint64_t a = s_mix(key + 2 * p), b = s_mix(key ^ (0xD1B54A32D192ED03ull + 2 * p + 1));
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0); // (0, 1]
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);         // [0, 1)
    double r = sqrt(-2.0 * log(u1)), phi = 6.283185307179586 * u2;
    *z0 = r * cos(phi);
    *z1 = r * sin(phi);
}

// Value i of the sin-cos table [1, P*P, D] (MODEL.md §4.2).
static double
s_sincos(const sd3_arch_tensor_t *t, uint64_t i)
{
    int64_t D = t->shape[2], P = (int64_t)llround(sqrt((double)t->shape[1]));
    int64_t row = (int64_t)(i / (uint64_t)D), d = (int64_t)(i % (uint64_t)D);
    int64_t half = D / 2, quarter = D / 4;
    double pos = d < half ? (double)(row % P) : (double)(row / P); // column first, then row
    int64_t k = (d % half) % quarter;
    double omega = 1.0 / pow(10000.0, (double)k / (double)quarter);
    return (d % half) < quarter ? sin(pos * omega) : cos(pos * omega);
}

static void
s_random_fill(const sd3_wrandom_t *self, sd3_component_t comp, const sd3_arch_tensor_t *t,
              uint64_t off, size_t n, float *dst)
{
    double fan = t->fan_in > 0 ? (double)t->fan_in : 1.0, scale = 1.0, shift = 0.0;
    switch (t->init) {
    case SD3_INIT_LINEAR:
        scale = 1.0 / sqrt(fan);
        break;
    case SD3_INIT_ADALN:
        scale = 0.5 / sqrt(fan);
        break;
    case SD3_INIT_BIAS:
        scale = 0.1;
        break;
    case SD3_INIT_NORM:
        scale = 0.1, shift = 1.0;
        break;
    case SD3_INIT_EMBED:
        scale = 1.0;
        break;
    case SD3_INIT_POS:
        scale = 0.5;
        break;
    case SD3_INIT_T5_QK:
        scale = 0.5 / sqrt(fan);
        break;
    case SD3_INIT_RELBIAS:
        scale = 0.5;
        break;
    case SD3_INIT_SINCOS:
        for (size_t j = 0; j < n; j++)
            dst[j] = (float)s_sincos(t, off + j);
        return;
    case SD3_INIT_IDENTITY: {
        uint64_t cols = (uint64_t)t->shape[1];
        for (size_t j = 0; j < n; j++)
            dst[j] = (off + j) / cols == (off + j) % cols ? 1.0f : 0.0f;
        return;
    }
    }
    // element i is member (i & 1) of Box-Muller pair i >> 1
    uint64_t key = s_key(self->seed, comp, t->name);
    for (size_t j = 0; j < n;) {
        uint64_t i = off + j;
        double z[2];
        s_normal_pair(key, i >> 1, &z[0], &z[1]);
        dst[j] = (float)(shift + scale * z[i & 1]);
        j++;
        if ((i & 1) == 0 && j < n) {
            dst[j] = (float)(shift + scale * z[1]);
            j++;
        }
    }
}

sd3_wrandom_t *
sd3_wrandom_new(const sd3_arch_t *arch, uint64_t seed, sd3_dtype_t dtype, sd3_err_t *err)
{
    if (!sd3_dtype_is_float(dtype)) {
        sd3_err_set(err, SD3_EINVAL, "mkmodel: dtype %s is not a float type",
                    sd3_dtype_name(dtype));
        return NULL;
    }
    sd3_wrandom_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "mkmodel: out of memory");
        return NULL;
    }
    self->arch = *arch;
    self->seed = seed;
    self->dtype = dtype;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        if (!(self->list[c] = sd3_arch_tensors(arch, (sd3_component_t)c, &self->n[c], err))) {
            sd3_wrandom_destroy(&self);
            return NULL;
        }
    return self;
}

void
sd3_wrandom_destroy(sd3_wrandom_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        free((*self_p)->list[c]);
    free(*self_p);
    *self_p = NULL;
}

static size_t
s_rnd_count(void *ud, sd3_component_t comp)
{
    return ((sd3_wrandom_t *)ud)->n[comp];
}

static int
s_rnd_info(void *ud, sd3_component_t comp, size_t i, const char **name, int *ndim, int64_t *shape,
           sd3_dtype_t *dtype)
{
    sd3_wrandom_t *self = ud;
    const sd3_arch_tensor_t *t = &self->list[comp][i];
    *name = t->name;
    *ndim = t->ndim;
    memcpy(shape, t->shape, sizeof t->shape);
    *dtype = self->dtype;
    return 0;
}

static int
s_rnd_read(void *ud, sd3_component_t comp, const char *name, size_t off, size_t n,
           sd3_dtype_t dtype, void *dst, sd3_err_t *err)
{
    sd3_wrandom_t *self = ud;
    const sd3_arch_tensor_t *t = NULL;
    size_t last = self->last[comp];
    for (size_t k = 0; k < self->n[comp] && !t; k++) {
        size_t i = (last + k) % self->n[comp];
        if (!strcmp(self->list[comp][i].name, name)) {
            t = &self->list[comp][i];
            self->last[comp] = i;
        }
    }
    if (!t)
        return sd3_err_set(err, SD3_ENOTFOUND, "mkmodel: no %s tensor '%s'",
                           sd3_component_name(comp), name);
    enum { PIECE = 4096 };
    float f[PIECE];
    size_t os = sd3_dtype_size(dtype);
    for (size_t done = 0; done < n;) {
        size_t k = n - done < PIECE ? n - done : PIECE;
        s_random_fill(self, comp, t, off + done, k, f);
        sd3_dtype_from_f32(dtype, f, (uint8_t *)dst + done * os, k);
        done += k;
    }
    return 0;
}

sd3_wsource_t
sd3_wrandom_source(sd3_wrandom_t *self)
{
    return (sd3_wsource_t){self, s_rnd_count, s_rnd_info, s_rnd_read, NULL};
}

// ---- the model source ------------------------------------------------------------------

struct sd3_wmodel {
    sd3_model_t *model;
    sd3_weights_t *w[SD3_COMP_COUNT];
};

sd3_wmodel_t *
sd3_wmodel_new(sd3_model_t *model, sd3_err_t *err)
{
    sd3_wmodel_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "convert: out of memory");
        return NULL;
    }
    self->model = model;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        if (sd3_model_has(model, (sd3_component_t)c) &&
            !(self->w[c] = sd3_weights_open(model, (sd3_component_t)c, err))) {
            sd3_wmodel_destroy(&self);
            return NULL;
        }
    return self;
}

void
sd3_wmodel_destroy(sd3_wmodel_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        sd3_weights_destroy(&(*self_p)->w[c]);
    free(*self_p);
    *self_p = NULL;
}

static size_t
s_mod_count(void *ud, sd3_component_t comp)
{
    sd3_wmodel_t *self = ud;
    return self->w[comp] ? sd3_weights_count(self->w[comp]) : 0;
}

static int
s_mod_info(void *ud, sd3_component_t comp, size_t i, const char **name, int *ndim, int64_t *shape,
           sd3_dtype_t *dtype)
{
    sd3_wmodel_t *self = ud;
    *name = sd3_weights_name(self->w[comp], i);
    *dtype = sd3_weights_dtype(self->w[comp], *name);
    return sd3_weights_shape(self->w[comp], *name, ndim, shape);
}

static int
s_mod_read(void *ud, sd3_component_t comp, const char *name, size_t off, size_t n,
           sd3_dtype_t dtype, void *dst, sd3_err_t *err)
{
    sd3_wmodel_t *self = ud;
    return sd3_weights_read(self->w[comp], name, off, n, dtype, dst, err);
}

static void
s_mod_done(void *ud, sd3_component_t comp, const char *name)
{
    sd3_wmodel_t *self = ud;
    sd3_weights_release(self->w[comp], name);
}

sd3_wsource_t
sd3_wmodel_source(sd3_wmodel_t *self)
{
    return (sd3_wsource_t){self, s_mod_count, s_mod_info, s_mod_read, s_mod_done};
}

// ---- the plan --------------------------------------------------------------------------

typedef struct {
    char name[SD3_WNAME_MAX + 48]; // as stored
    sd3_component_t comp;
    const char *canon; // source tensor (borrowed from the source), NULL for an identity
    sd3_dtype_t dtype;
    int ndim;
    int64_t shape[SD3_MAX_DIM];
    size_t off[2], len[2]; // element ranges of the canonical tensor, in storage order
    int n_ranges;
    uint64_t nbytes;
} s_out_t;

typedef struct {
    s_out_t *items;
    size_t n, cap;
} s_outs_t;

static s_out_t *
s_outs_add(s_outs_t *l)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        s_out_t *p = realloc(l->items, cap * sizeof *p);
        if (!p)
            return NULL;
        l->items = p;
        l->cap = cap;
    }
    s_out_t *o = &l->items[l->n++];
    memset(o, 0, sizeof *o);
    return o;
}

static uint64_t
s_bytes_of(sd3_dtype_t dtype, int ndim, const int64_t *shape)
{
    uint64_t n = sd3_dtype_size(dtype);
    for (int i = 0; i < ndim; i++)
        n *= (uint64_t)shape[i];
    return n;
}

static int
s_last_block(const sd3_wsource_t *src, sd3_component_t comp)
{
    int last = -1;
    for (size_t i = 0; i < src->count(src->ud, comp); i++) {
        const char *name;
        int ndim, b;
        int64_t shape[SD3_MAX_DIM];
        sd3_dtype_t dt;
        if (src->info(src->ud, comp, i, &name, &ndim, shape, &dt) == 0 &&
            sscanf(name, "joint_blocks.%d.", &b) == 1 && b > last)
            last = b;
    }
    return last;
}

static sd3_dtype_t
s_out_dtype(const sd3_wwrite_opts_t *opts, sd3_dtype_t stored)
{
    if (opts->dtype == SD3_DTYPE_COUNT || !sd3_dtype_is_float(stored))
        return stored;
    return opts->dtype;
}

// The stored tensors of one component in `layout`, appended to *l.
static int
s_plan_component(const sd3_wsource_t *src, const sd3_wwrite_opts_t *opts, sd3_component_t comp,
                 const char *prefix, s_outs_t *l, sd3_err_t *err)
{
    bool diffusers = opts->layout == SD3_LAYOUT_DIFFUSERS;
    int last_block = comp == SD3_COMP_MMDIT ? s_last_block(src, comp) : -1;
    size_t n = src->count(src->ud, comp);
    bool has_shared = false, has_proj = false;
    const char *embed = NULL, *token = NULL;
    sd3_dtype_t embed_dtype = SD3_F32;
    int64_t embed_shape[SD3_MAX_DIM] = {0}, width = 0;
    for (size_t i = 0; i < n; i++) {
        const char *canon;
        int ndim;
        int64_t shape[SD3_MAX_DIM] = {0};
        sd3_dtype_t stored;
        if (src->info(src->ud, comp, i, &canon, &ndim, shape, &stored) != 0)
            return sd3_err_set(err, SD3_EINTERNAL, "writer: no info for %s tensor %zu",
                               sd3_component_name(comp), i);
        has_shared |= !strcmp(canon, "shared.weight");
        has_proj |= !strcmp(canon, "text_projection.weight");
        if (!strcmp(canon, "encoder.embed_tokens.weight")) {
            embed = canon;
            embed_dtype = stored;
            memcpy(embed_shape, shape, sizeof embed_shape);
        }
        if (!strcmp(canon, "text_model.embeddings.token_embedding.weight")) {
            token = canon;
            width = ndim == 2 ? shape[1] : 0;
        }
        sd3_dtype_t dtype = s_out_dtype(opts, stored);
        size_t numel = 1;
        for (int d = 0; d < ndim; d++)
            numel *= (size_t)shape[d];
        char names[3][SD3_WNAME_MAX];
        sd3_wname_xf_t xf[3];
        int k = diffusers ? sd3_wnames_to_diffusers(comp, canon, last_block, names, xf) : 0;
        if (k == 0) {
            snprintf(names[0], SD3_WNAME_MAX, "%s", canon);
            xf[0] = (sd3_wname_xf_t){-1, false, false};
            k = 1;
        }
        for (int p = 0; p < k; p++) {
            s_out_t *o = s_outs_add(l);
            if (!o)
                return sd3_err_set(err, SD3_ENOMEM, "writer: out of memory");
            snprintf(o->name, sizeof o->name, "%s%s", prefix, names[p]);
            o->comp = comp;
            o->canon = canon;
            o->dtype = dtype;
            o->ndim = ndim;
            memcpy(o->shape, shape, sizeof o->shape);
            o->n_ranges = 1;
            o->off[0] = 0;
            o->len[0] = numel;
            if (xf[p].part >= 0) {
                if (ndim < 1 || shape[0] % 3 != 0)
                    return sd3_err_set(err, SD3_EFORMAT, "writer: '%s' rows not divisible by 3",
                                       canon);
                o->shape[0] = shape[0] / 3;
                o->len[0] = numel / 3;
                o->off[0] = (size_t)xf[p].part * (numel / 3);
            } else if (xf[p].swap) {
                if (ndim < 1 || shape[0] % 2 != 0)
                    return sd3_err_set(err, SD3_EFORMAT, "writer: '%s' rows not even", canon);
                o->n_ranges = 2;
                o->off[0] = numel / 2;
                o->len[0] = o->len[1] = numel / 2;
                o->off[1] = 0;
            } else if (xf[p].flat && ndim == 4 && shape[2] == 1 && shape[3] == 1) {
                o->ndim = 2;
            }
            o->nbytes = s_bytes_of(o->dtype, o->ndim, o->shape);
        }
    }
    // The released T5 files carry the token table twice (shared.weight too), and a
    // diffusers CLIPTextModelWithProjection needs a text_projection (identity for L).
    if (comp == SD3_COMP_T5 && embed && !has_shared) {
        s_out_t *o = s_outs_add(l);
        if (!o)
            return sd3_err_set(err, SD3_ENOMEM, "writer: out of memory");
        snprintf(o->name, sizeof o->name, "%sshared.weight", prefix);
        o->comp = comp;
        o->canon = embed;
        o->dtype = s_out_dtype(opts, embed_dtype);
        o->ndim = 2;
        memcpy(o->shape, embed_shape, sizeof o->shape);
        o->n_ranges = 1;
        o->len[0] = (size_t)(embed_shape[0] * embed_shape[1]);
        o->nbytes = s_bytes_of(o->dtype, 2, o->shape);
    }
    if (comp == SD3_COMP_CLIP_L && diffusers && token && !has_proj && width > 0) {
        s_out_t *o = s_outs_add(l);
        if (!o)
            return sd3_err_set(err, SD3_ENOMEM, "writer: out of memory");
        snprintf(o->name, sizeof o->name, "%stext_projection.weight", prefix);
        o->comp = comp;
        o->canon = NULL;
        o->dtype = opts->dtype == SD3_DTYPE_COUNT ? SD3_F16 : opts->dtype;
        o->ndim = 2;
        o->shape[0] = o->shape[1] = width;
        o->n_ranges = 1;
        o->len[0] = (size_t)(width * width);
        o->nbytes = s_bytes_of(o->dtype, 2, o->shape);
    }
    return 0;
}

// ---- writing files ---------------------------------------------------------------------

static int
s_mkdirs(const char *path, sd3_err_t *err)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return sd3_err_set(err, SD3_EINVAL, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return sd3_err_set(err, SD3_EIO, "%s: cannot create: %s", buf, strerror(errno));
            *p = c;
            if (!c)
                break;
        }
    }
    return 0;
}

static int
s_write_text(const char *path, const char *text, sd3_err_t *err)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return sd3_err_set(err, SD3_EIO, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n && fputc('\n', f) != EOF;
    ok &= fclose(f) == 0;
    return ok ? 0 : sd3_err_set(err, SD3_EIO, "%s: write failed", path);
}

static int
s_write_json(const char *path, cJSON *root, sd3_err_t *err)
{
    char *text = root ? cJSON_Print(root) : NULL;
    int rc = text ? s_write_text(path, text, err)
                  : sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
    free(text);
    cJSON_Delete(root);
    return rc;
}

// Streams the stored tensors outs[0..n) into one safetensors file.
static int
s_write_file(const sd3_wsource_t *src, const sd3_wwrite_opts_t *opts, const char *path,
             const s_out_t *outs, size_t n, bool diffusers, sd3_err_t *err)
{
    int rc = 0;
    void *buf = NULL;
    float *ident = NULL;
    sd3_st_writer_t *w = sd3_st_writer_new(path, err);
    if (!w)
        return err && err->code ? err->code : SD3_EIO;
    if ((rc = sd3_st_writer_meta(w, "format", "pt", err)) != 0)
        goto fail;
    if (!diffusers && opts->arch &&
        (rc = sd3_st_writer_meta(w, "sd3d_arch", opts->arch->name, err)) != 0)
        goto fail;
    if (opts->origin && (rc = sd3_st_writer_meta(w, "sd3d_origin", opts->origin, err)) != 0)
        goto fail;
    for (size_t i = 0; i < n; i++)
        if ((rc = sd3_st_writer_declare(w, outs[i].name, outs[i].dtype, outs[i].ndim, outs[i].shape,
                                        err)) != 0)
            goto fail;
    if ((rc = sd3_st_writer_begin(w, err)) != 0)
        goto fail;
    if (!(buf = malloc(S_CHUNK * 8)) || !(ident = malloc(S_CHUNK * sizeof *ident))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const s_out_t *o = &outs[i];
        size_t es = sd3_dtype_size(o->dtype);
        for (int r = 0; r < o->n_ranges; r++)
            for (size_t done = 0; done < o->len[r];) {
                size_t k = o->len[r] - done < S_CHUNK ? o->len[r] - done : S_CHUNK;
                if (o->canon) {
                    rc = src->read(src->ud, o->comp, o->canon, o->off[r] + done, k, o->dtype, buf,
                                   err);
                    if (rc)
                        goto fail;
                } else { // identity [W, W]
                    uint64_t cols = (uint64_t)o->shape[1];
                    for (size_t j = 0; j < k; j++) {
                        uint64_t e = o->off[r] + done + j;
                        ident[j] = e / cols == e % cols ? 1.0f : 0.0f;
                    }
                    sd3_dtype_from_f32(o->dtype, ident, buf, k);
                }
                if ((rc = sd3_st_writer_write(w, buf, k * es, err)) != 0)
                    goto fail;
                done += k;
            }
        if (o->canon && src->done)
            src->done(src->ud, o->comp, o->canon);
    }
    free(buf);
    free(ident);
    return sd3_st_writer_finish(&w, err);
fail:
    free(buf);
    free(ident);
    sd3_st_writer_abort(&w);
    return rc ? rc : SD3_EIO;
}

static const char *
s_torch_dtype(const s_outs_t *l)
{
    sd3_dtype_t d = l->n ? l->items[0].dtype : SD3_F16;
    return d == SD3_F32 ? "float32" : d == SD3_BF16 ? "bfloat16" : "float16";
}

static cJSON *
s_int_array(const int *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

static cJSON *
s_str_array(const char *s, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateString(s));
    return a;
}

// config.json of a diffusers component (MODEL.md §2, §5.1, §6.4; TESTVECTORS-e2e.md §1.3).
static cJSON *
s_config(const sd3_arch_t *a, sd3_component_t comp, const char *torch_dtype)
{
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return NULL;
    if (comp == SD3_COMP_MMDIT) {
        const sd3_arch_mmdit_t *m = &a->mmdit;
        int dual[64];
        for (int i = 0; i < m->n_attn2 && i < 64; i++)
            dual[i] = i;
        cJSON_AddStringToObject(j, "_class_name", "SD3Transformer2DModel");
        cJSON_AddStringToObject(j, "_diffusers_version", "0.31.0");
        cJSON_AddNumberToObject(j, "attention_head_dim", m->head_dim);
        cJSON_AddNumberToObject(j, "caption_projection_dim", m->hidden);
        cJSON_AddItemToObject(j, "dual_attention_layers",
                              s_int_array(dual, m->n_attn2 < 64 ? m->n_attn2 : 64));
        cJSON_AddNumberToObject(j, "in_channels", m->in_channels);
        cJSON_AddNumberToObject(j, "joint_attention_dim", m->context_in);
        cJSON_AddNumberToObject(j, "num_attention_heads", m->heads);
        cJSON_AddNumberToObject(j, "num_layers", m->depth);
        cJSON_AddNumberToObject(j, "out_channels", m->in_channels);
        cJSON_AddNumberToObject(j, "patch_size", m->patch);
        cJSON_AddNumberToObject(j, "pooled_projection_dim", m->adm_in);
        cJSON_AddNumberToObject(j, "pos_embed_max_size", m->pos_embed_max);
        if (m->qk_norm)
            cJSON_AddStringToObject(j, "qk_norm", "rms_norm");
        else
            cJSON_AddNullToObject(j, "qk_norm");
        cJSON_AddNumberToObject(j, "sample_size", m->sample_size);
    } else if (comp == SD3_COMP_VAE) {
        const sd3_arch_vae_t *v = &a->vae;
        int boc[4];
        for (int i = 0; i < 4; i++)
            boc[i] = v->ch * v->ch_mult[i];
        cJSON_AddStringToObject(j, "_class_name", "AutoencoderKL");
        cJSON_AddStringToObject(j, "_diffusers_version", "0.31.0");
        cJSON_AddStringToObject(j, "act_fn", "silu");
        cJSON_AddItemToObject(j, "block_out_channels", s_int_array(boc, 4));
        cJSON_AddItemToObject(j, "down_block_types", s_str_array("DownEncoderBlock2D", 4));
        cJSON_AddTrueToObject(j, "force_upcast");
        cJSON_AddNumberToObject(j, "in_channels", v->image_channels);
        cJSON_AddNumberToObject(j, "latent_channels", v->z_channels);
        cJSON_AddNullToObject(j, "latents_mean");
        cJSON_AddNullToObject(j, "latents_std");
        cJSON_AddNumberToObject(j, "layers_per_block", v->num_res_blocks);
        cJSON_AddTrueToObject(j, "mid_block_add_attention");
        cJSON_AddNumberToObject(j, "norm_num_groups", 32);
        cJSON_AddNumberToObject(j, "out_channels", v->image_channels);
        cJSON_AddNumberToObject(j, "sample_size", 1024);
        cJSON_AddNumberToObject(j, "scaling_factor", 1.5305);
        cJSON_AddNumberToObject(j, "shift_factor", 0.0609);
        cJSON_AddItemToObject(j, "up_block_types", s_str_array("UpDecoderBlock2D", 4));
        cJSON_AddFalseToObject(j, "use_post_quant_conv");
        cJSON_AddFalseToObject(j, "use_quant_conv");
    } else if (comp == SD3_COMP_T5) {
        const sd3_arch_t5_t *t = &a->t5;
        cJSON_AddItemToObject(j, "architectures", s_str_array("T5EncoderModel", 1));
        cJSON_AddNumberToObject(j, "classifier_dropout", 0.0);
        cJSON_AddNumberToObject(j, "d_ff", t->d_ff);
        cJSON_AddNumberToObject(j, "d_kv", t->d_kv);
        cJSON_AddNumberToObject(j, "d_model", t->d_model);
        cJSON_AddNumberToObject(j, "decoder_start_token_id", 0);
        cJSON_AddStringToObject(j, "dense_act_fn", "gelu_new");
        cJSON_AddNumberToObject(j, "dropout_rate", 0.1);
        cJSON_AddNumberToObject(j, "eos_token_id", 1);
        cJSON_AddStringToObject(j, "feed_forward_proj", "gated-gelu");
        cJSON_AddNumberToObject(j, "initializer_factor", 1.0);
        cJSON_AddTrueToObject(j, "is_encoder_decoder");
        cJSON_AddTrueToObject(j, "is_gated_act");
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", 1e-6);
        cJSON_AddStringToObject(j, "model_type", "t5");
        cJSON_AddNumberToObject(j, "num_decoder_layers", t->layers);
        cJSON_AddNumberToObject(j, "num_heads", t->heads);
        cJSON_AddNumberToObject(j, "num_layers", t->layers);
        cJSON_AddTrueToObject(j, "output_past");
        cJSON_AddNumberToObject(j, "pad_token_id", 0);
        cJSON_AddNumberToObject(j, "relative_attention_max_distance", t->max_distance);
        cJSON_AddNumberToObject(j, "relative_attention_num_buckets", t->buckets);
        cJSON_AddFalseToObject(j, "tie_word_embeddings");
        cJSON_AddStringToObject(j, "torch_dtype", torch_dtype);
        cJSON_AddTrueToObject(j, "use_cache");
        cJSON_AddNumberToObject(j, "vocab_size", t->vocab);
    } else {
        const sd3_arch_clip_t *c = comp == SD3_COMP_CLIP_L ? &a->clip_l : &a->clip_g;
        cJSON_AddItemToObject(j, "architectures", s_str_array("CLIPTextModelWithProjection", 1));
        cJSON_AddNumberToObject(j, "attention_dropout", 0.0);
        cJSON_AddNumberToObject(j, "bos_token_id", 0);
        cJSON_AddNumberToObject(j, "dropout", 0.0);
        cJSON_AddNumberToObject(j, "eos_token_id", 2);
        cJSON_AddStringToObject(j, "hidden_act", c->quick_gelu ? "quick_gelu" : "gelu");
        cJSON_AddNumberToObject(j, "hidden_size", c->width);
        cJSON_AddNumberToObject(j, "initializer_factor", 1.0);
        cJSON_AddNumberToObject(j, "initializer_range", 0.02);
        cJSON_AddNumberToObject(j, "intermediate_size", c->ffn);
        cJSON_AddNumberToObject(j, "layer_norm_eps", 1e-5);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->n_pos);
        cJSON_AddStringToObject(j, "model_type", "clip_text_model");
        cJSON_AddNumberToObject(j, "num_attention_heads", c->heads);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->layers);
        cJSON_AddNumberToObject(j, "pad_token_id", 1);
        cJSON_AddNumberToObject(j, "projection_dim", c->width);
        cJSON_AddStringToObject(j, "torch_dtype", torch_dtype);
        cJSON_AddNumberToObject(j, "vocab_size", c->vocab);
    }
    return j;
}

static cJSON *
s_model_index(const bool *wrote, bool tokenizers)
{
    static const char *const lib[SD3_COMP_COUNT] = {"diffusers", "diffusers", "transformers",
                                                    "transformers", "transformers"};
    static const char *const cls[SD3_COMP_COUNT] = {
        "SD3Transformer2DModel", "AutoencoderKL", "CLIPTextModelWithProjection",
        "CLIPTextModelWithProjection", "T5EncoderModel"};
    static const char *const toks[3][2] = {{"tokenizer", "CLIPTokenizer"},
                                           {"tokenizer_2", "CLIPTokenizer"},
                                           {"tokenizer_3", "T5TokenizerFast"}};
    cJSON *j = cJSON_CreateObject();
    if (!j)
        return NULL;
    cJSON_AddStringToObject(j, "_class_name", "StableDiffusion3Pipeline");
    cJSON_AddStringToObject(j, "_diffusers_version", "0.31.0");
    cJSON *s = cJSON_AddArrayToObject(j, "scheduler");
    cJSON_AddItemToArray(s, cJSON_CreateString("diffusers"));
    cJSON_AddItemToArray(s, cJSON_CreateString("FlowMatchEulerDiscreteScheduler"));
    // text encoder k goes with tokenizer k
    static const sd3_component_t enc_of_tok[3] = {SD3_COMP_CLIP_L, SD3_COMP_CLIP_G, SD3_COMP_T5};
    for (int c = 0; c < SD3_COMP_COUNT; c++) {
        cJSON *e = cJSON_AddArrayToObject(j, sd3_wnames_diffusers_dir((sd3_component_t)c));
        cJSON_AddItemToArray(e, wrote[c] ? cJSON_CreateString(lib[c]) : cJSON_CreateNull());
        cJSON_AddItemToArray(e, wrote[c] ? cJSON_CreateString(cls[c]) : cJSON_CreateNull());
    }
    for (int t = 0; t < 3; t++) {
        bool on = tokenizers && wrote[enc_of_tok[t]];
        cJSON *e = cJSON_AddArrayToObject(j, toks[t][0]);
        cJSON_AddItemToArray(e, on ? cJSON_CreateString("transformers") : cJSON_CreateNull());
        cJSON_AddItemToArray(e, on ? cJSON_CreateString(toks[t][1]) : cJSON_CreateNull());
    }
    return j;
}

// One diffusers component folder: config.json and the weights, sharded above the limit.
static int
s_write_diffusers_component(const sd3_wsource_t *src, const sd3_wwrite_opts_t *opts,
                            const char *out, sd3_component_t comp, const s_outs_t *l,
                            sd3_err_t *err)
{
    char dir[PATH_MAX], path[PATH_MAX + 128];
    int rc;
    snprintf(dir, sizeof dir, "%s/%s", out, sd3_wnames_diffusers_dir(comp));
    if ((rc = s_mkdirs(dir, err)) != 0)
        return rc;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = s_write_json(path, s_config(opts->arch, comp, s_torch_dtype(l)), err)) != 0)
        return rc;
    const char *base = comp <= SD3_COMP_VAE ? "diffusion_pytorch_model" : "model";
    uint64_t total = 0, limit = opts->shard_bytes ? opts->shard_bytes : S_DEFAULT_SHARD;
    for (size_t i = 0; i < l->n; i++)
        total += l->items[i].nbytes;
    if (total <= limit) {
        snprintf(path, sizeof path, "%s/%s.safetensors", dir, base);
        return s_write_file(src, opts, path, l->items, l->n, true, err);
    }
    // shards of about total/n bytes each, tensors kept whole and in order
    uint64_t n_want = (total + limit - 1) / limit, target = (total + n_want - 1) / n_want;
    size_t *start = calloc(l->n + 1, sizeof *start);
    if (!start)
        return sd3_err_set(err, SD3_ENOMEM, "out of memory");
    size_t n_shards = 0;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (i == 0 || (in_shard + l->items[i].nbytes > target && in_shard > 0)) {
            start[n_shards++] = i;
            in_shard = 0;
        }
        in_shard += l->items[i].nbytes;
    }
    start[n_shards] = l->n;
    cJSON *index = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *map = cJSON_AddObjectToObject(index, "weight_map");
    for (size_t s = 0; s < n_shards && !rc; s++) {
        char file[112];
        snprintf(file, sizeof file, "%s-%05zu-of-%05zu.safetensors", base, s + 1, n_shards);
        for (size_t i = start[s]; i < start[s + 1]; i++)
            cJSON_AddStringToObject(map, l->items[i].name, file);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        rc = s_write_file(src, opts, path, l->items + start[s], start[s + 1] - start[s], true, err);
    }
    free(start);
    if (rc) {
        cJSON_Delete(index);
        return rc;
    }
    snprintf(path, sizeof path, "%s/%s.safetensors.index.json", dir, base);
    return s_write_json(path, index, err);
}

int
sd3_weights_write(const sd3_wsource_t *src, const sd3_wwrite_opts_t *opts, const char *out,
                  sd3_err_t *err)
{
    int rc = 0;
    s_outs_t outs[SD3_COMP_COUNT] = {{0}};
    bool wrote[SD3_COMP_COUNT] = {0};
    char path[PATH_MAX + 96];
    if (!opts->arch && opts->layout != SD3_LAYOUT_SINGLE)
        return sd3_err_set(err, SD3_EINVAL, "writer: the %s layout needs an architecture",
                           sd3_layout_name(opts->layout));
    for (int c = 0; c < SD3_COMP_COUNT; c++) {
        if (!opts->want[c] || src->count(src->ud, (sd3_component_t)c) == 0)
            continue;
        const char *prefix = "";
        if (opts->layout == SD3_LAYOUT_SINGLE ||
            (opts->layout == SD3_LAYOUT_SD35 && c <= SD3_COMP_VAE))
            prefix = sd3_wnames_single_prefix((sd3_component_t)c);
        if ((rc = s_plan_component(src, opts, (sd3_component_t)c, prefix, &outs[c], err)) != 0)
            goto done;
        wrote[c] = outs[c].n > 0;
    }
    if (opts->layout == SD3_LAYOUT_SINGLE) {
        s_outs_t all = {0};
        for (int c = 0; c < SD3_COMP_COUNT && !rc; c++)
            for (size_t i = 0; i < outs[c].n; i++) {
                s_out_t *o = s_outs_add(&all);
                if (!o) {
                    rc = sd3_err_set(err, SD3_ENOMEM, "writer: out of memory");
                    break;
                }
                *o = outs[c].items[i];
            }
        if (!rc && all.n == 0)
            rc = sd3_err_set(err, SD3_EINVAL, "%s: nothing to write", out);
        // The file's folder is made when missing, as the folder layouts make theirs.
        const char *slash = strrchr(out, '/');
        if (!rc && slash && slash != out) {
            snprintf(path, sizeof path, "%.*s", (int)(slash - out), out);
            rc = s_mkdirs(path, err);
        }
        if (!rc)
            rc = s_write_file(src, opts, out, all.items, all.n, false, err);
        free(all.items);
    } else if (opts->layout == SD3_LAYOUT_SD35) {
        if ((rc = s_mkdirs(out, err)) != 0)
            goto done;
        s_outs_t model = {0};
        for (int c = 0; c <= SD3_COMP_VAE && !rc; c++)
            for (size_t i = 0; i < outs[c].n; i++) {
                s_out_t *o = s_outs_add(&model);
                if (!o) {
                    rc = sd3_err_set(err, SD3_ENOMEM, "writer: out of memory");
                    break;
                }
                *o = outs[c].items[i];
            }
        if (!rc && model.n) {
            snprintf(path, sizeof path, "%s/%s", out, opts->arch->model_file);
            rc = s_write_file(src, opts, path, model.items, model.n, false, err);
        }
        free(model.items);
        if (!rc && (wrote[SD3_COMP_CLIP_L] || wrote[SD3_COMP_CLIP_G] || wrote[SD3_COMP_T5])) {
            snprintf(path, sizeof path, "%s/text_encoders", out);
            rc = s_mkdirs(path, err);
        }
        for (int c = SD3_COMP_CLIP_L; c <= SD3_COMP_T5 && !rc; c++) {
            if (!wrote[c])
                continue;
            const char *file = c == SD3_COMP_CLIP_L                    ? "clip_l"
                               : c == SD3_COMP_CLIP_G                  ? "clip_g"
                               : outs[c].items[0].dtype == SD3_F16     ? "t5xxl_fp16"
                               : outs[c].items[0].dtype == SD3_F8_E4M3 ? "t5xxl_fp8_e4m3fn"
                                                                       : "t5xxl";
            snprintf(path, sizeof path, "%s/text_encoders/%s.safetensors", out, file);
            rc = s_write_file(src, opts, path, outs[c].items, outs[c].n, false, err);
        }
    } else {
        if ((rc = s_mkdirs(out, err)) != 0)
            goto done;
        for (int c = 0; c < SD3_COMP_COUNT && !rc; c++)
            if (wrote[c])
                rc = s_write_diffusers_component(src, opts, out, (sd3_component_t)c, &outs[c], err);
        if (rc)
            goto done;
        snprintf(path, sizeof path, "%s/scheduler", out);
        if ((rc = s_mkdirs(path, err)) != 0)
            goto done;
        cJSON *sched = cJSON_CreateObject();
        cJSON_AddStringToObject(sched, "_class_name", "FlowMatchEulerDiscreteScheduler");
        cJSON_AddStringToObject(sched, "_diffusers_version", "0.31.0");
        cJSON_AddNumberToObject(sched, "num_train_timesteps", 1000);
        cJSON_AddNumberToObject(sched, "shift", 3.0);
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", out);
        if ((rc = s_write_json(path, sched, err)) != 0)
            goto done;
        // Tokenizer files are the tokenizer engineer's: sd3_tok_write_tiny_set() writes
        // tokenizer/, tokenizer_2/, tokenizer_3/ here when the caller passes it.
        bool any_text = wrote[SD3_COMP_CLIP_L] || wrote[SD3_COMP_CLIP_G] || wrote[SD3_COMP_T5];
        bool tokenizers = opts->tok_writer && any_text;
        if (tokenizers && (rc = opts->tok_writer(out, err)) != 0)
            goto done;
        snprintf(path, sizeof path, "%s/model_index.json", out);
        rc = s_write_json(path, s_model_index(wrote, tokenizers), err);
    }
done:
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        free(outs[c].items);
    return rc;
}

// ---- mkmodel and convert ---------------------------------------------------------------

int
sd3_weights_mkmodel(const sd3_arch_t *arch, const sd3_wwrite_opts_t *opts, uint64_t seed,
                    const char *out, sd3_err_t *err)
{
    sd3_dtype_t dtype = opts->dtype == SD3_DTYPE_COUNT ? SD3_F16 : opts->dtype;
    sd3_wrandom_t *rnd = sd3_wrandom_new(arch, seed, dtype, err);
    if (!rnd)
        return err && err->code ? err->code : SD3_ENOMEM;
    sd3_wwrite_opts_t o = *opts;
    o.arch = arch;
    sd3_wsource_t src = sd3_wrandom_source(rnd);
    int rc = sd3_weights_write(&src, &o, out, err);
    sd3_wrandom_destroy(&rnd);
    return rc;
}

int
sd3_weights_convert(const char *in, const sd3_wwrite_opts_t *opts, const char *out, sd3_err_t *err)
{
    char rin[PATH_MAX], rout[PATH_MAX];
    if (realpath(in, rin) && realpath(out, rout) && !strcmp(rin, rout))
        return sd3_err_set(err, SD3_EINVAL, "convert: output %s is the input", out);
    sd3_model_t *model = sd3_model_open(in, err);
    if (!model)
        return err && err->code ? err->code : SD3_EFORMAT;
    int rc = 0;
    sd3_arch_t detected;
    sd3_wwrite_opts_t o = *opts;
    sd3_wmodel_t *wm = NULL;
    if (!o.arch) {
        if ((rc = sd3_arch_from_model(model, &detected, err)) != 0)
            goto done;
        o.arch = &detected;
    }
    if (!(wm = sd3_wmodel_new(model, err))) {
        rc = err && err->code ? err->code : SD3_EFORMAT;
        goto done;
    }
    sd3_wsource_t src = sd3_wmodel_source(wm);
    rc = sd3_weights_write(&src, &o, out, err);
done:
    sd3_wmodel_destroy(&wm);
    sd3_model_destroy(&model);
    return rc;
}
