/*  sd3_weights - a checkpoint in any released layout, seen through one naming
 *
 *  sd3_model_open() finds the files of each component and opens their headers (sd3_st_open
 *  maps them; no data page is read). sd3_weights_open() then builds one table of canonical
 *  tensors for a component: every key of its files is translated (prefix stripped; diffusers
 *  names mapped through sd3_weights_names.c), the q/k/v thirds of a fused qkv are grouped,
 *  and shapes are checked. Nothing is copied until a tensor is asked for: plain tensors are
 *  views into the mapping (an [c,c] VAE attention weight is a view with shape [c,c,1,1]);
 *  joined and swapped ones are built once and owned here. A view whose address is not a
 *  multiple of its element size (possible in files written without alignment) is copied, so
 *  every returned tensor can be read through a typed pointer. Files are mapped MADV_RANDOM;
 *  the first request for a tensor issues MADV_WILLNEED on exactly its pages (large reads
 *  instead of 4 KiB faults), and a built copy drops the mapped pages it was copied from.  */
#include "sd3_weights.h"

#include "sd3_safetensors.h"
#include "sd3_weights_io.h"
#include "sd3_weights_names.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_INDEX_JSON (64u << 20) // a shard index larger than this is refused
#define S_MAX_FILES      4096        // shards per component

typedef enum { S_VIEW = 0, S_JOIN, S_SWAP } s_kind_t;

typedef struct {
    char *name; // canonical
    s_kind_t kind;
    sd3_tensor_t src[3]; // views into the files (S_JOIN: q, k, v)
    const char *file;    // path of src[0]'s file, for messages
    bool alias;          // a second name for another tensor: not counted in bytes
    sd3_dtype_t dtype;   // canonical dtype/shape
    int ndim;
    int64_t shape[SD3_MAX_DIM];
    sd3_tensor_t t; // what get() returns, once ready
    bool ready;
    void *buf; // owned storage of a built tensor
} s_tensor_t;

struct sd3_weights {
    sd3_component_t comp;
    char *label;
    s_tensor_t *tensors; // sorted by name
    size_t n;
    size_t bytes;
    sd3_model_t *own_model; // set by sd3_weights_open_path when it opened a model
    sd3_st_t **own_files;
    size_t n_own;
};

typedef struct {
    sd3_st_t **files; // borrowed from the model's list
    size_t n;
    const char *prefix; // key prefix inside a single file, or NULL: decide from the keys
    bool present;
} s_comp_t;

struct sd3_model {
    char *path;
    sd3_layout_t layout;
    sd3_st_t **files; // every opened file, owned
    size_t n_files;
    s_comp_t comp[SD3_COMP_COUNT];
    char *tok_dir[3];
};

// ---- small helpers ---------------------------------------------------------------------

static char *
s_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static char *
s_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool
s_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool
s_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool
s_starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool
s_has_prefix_key(const sd3_st_t *st, const char *prefix)
{
    for (size_t i = 0; i < sd3_st_count(st); i++)
        if (s_starts(sd3_st_name(st, i), prefix))
            return true;
    return false;
}

const char *
sd3_layout_name(sd3_layout_t layout)
{
    switch (layout) {
    case SD3_LAYOUT_SINGLE:
        return "single";
    case SD3_LAYOUT_SD35:
        return "sd3.5";
    case SD3_LAYOUT_DIFFUSERS:
        return "diffusers";
    default:
        return "?";
    }
}

const char *
sd3_component_name(sd3_component_t comp)
{
    switch (comp) {
    case SD3_COMP_MMDIT:
        return "mmdit";
    case SD3_COMP_VAE:
        return "vae";
    case SD3_COMP_CLIP_L:
        return "clip_l";
    case SD3_COMP_CLIP_G:
        return "clip_g";
    case SD3_COMP_T5:
        return "t5";
    default:
        return "?";
    }
}

// ---- the model: which files hold which component ---------------------------------------

// Adds an opened file to the model (takes it); returns it, or NULL when out of memory.
static sd3_st_t *
s_model_add(sd3_model_t *self, sd3_st_t **st_p)
{
    sd3_st_t **files = realloc(self->files, (self->n_files + 1) * sizeof *files);
    if (!files) {
        sd3_st_destroy(st_p);
        return NULL;
    }
    self->files = files;
    files[self->n_files++] = *st_p;
    sd3_st_t *st = *st_p;
    *st_p = NULL;
    return st;
}

static int
s_comp_add(s_comp_t *c, sd3_st_t *st)
{
    sd3_st_t **files = realloc(c->files, (c->n + 1) * sizeof *files);
    if (!files)
        return -1;
    c->files = files;
    files[c->n++] = st;
    c->present = true;
    return 0;
}

static char *
s_read_text(const char *path, size_t cap, sd3_err_t *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) {
        sd3_err_set(err, SD3_EIO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0)
        goto io;
    long size = ftell(f);
    if (size < 0)
        goto io;
    if ((size_t)size > cap) {
        sd3_err_set(err, SD3_EFORMAT, "%s: %ld bytes, more than the cap of %zu", path, size, cap);
        goto fail;
    }
    rewind(f);
    if (!(buf = malloc((size_t)size + 1))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size)
        goto io;
    buf[size] = '\0';
    fclose(f);
    return buf;
io:
    sd3_err_set(err, SD3_EIO, "%s: read failed", path);
fail:
    free(buf);
    fclose(f);
    return NULL;
}

// Opens the shards named by a `*.safetensors.index.json` and adds them to the component.
static int
s_open_index(sd3_model_t *self, s_comp_t *c, const char *dir, const char *index_path,
             sd3_err_t *err)
{
    int rc = 0;
    cJSON *root = NULL;
    char *text = s_read_text(index_path, S_MAX_INDEX_JSON, err);
    if (!text)
        return err ? err->code : SD3_EIO;
    root = cJSON_Parse(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: not a shard index (no weight_map object)",
                         index_path);
        goto done;
    }
    size_t first = c->n;
    const cJSON *kv;
    cJSON_ArrayForEach(kv, map)
    {
        if (!cJSON_IsString(kv)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: weight_map entry '%.64s' is not a string",
                             index_path, kv->string);
            goto done;
        }
        const char *shard = kv->valuestring;
        if (!shard[0] || strchr(shard, '/') || shard[0] == '.') {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: shard name '%.64s' is not a plain file name",
                             index_path, shard);
            goto done;
        }
        sd3_st_t *st = NULL;
        for (size_t i = first; i < c->n; i++) {
            const char *p = sd3_st_path(c->files[i]);
            const char *base = strrchr(p, '/');
            if (!strcmp(base ? base + 1 : p, shard))
                st = c->files[i];
        }
        if (!st) {
            if (c->n - first >= S_MAX_FILES) {
                rc = sd3_err_set(err, SD3_EFORMAT, "%s: more than %d shards", index_path,
                                 S_MAX_FILES);
                goto done;
            }
            char *path = s_join(dir, shard);
            if (path && !s_is_file(path)) {
                free(path);
                rc = sd3_err_set(err, SD3_EFORMAT, "%s: shard %s is missing", index_path, shard);
                goto done;
            }
            sd3_st_t *opened = path ? sd3_st_open(path, err) : NULL;
            free(path);
            if (!opened) {
                rc = err && err->code ? err->code : SD3_ENOMEM;
                goto done;
            }
            if (!(st = s_model_add(self, &opened)) || s_comp_add(c, st) != 0) {
                rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", index_path);
                goto done;
            }
        }
        if (!sd3_st_has(st, kv->string)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: names '%.96s' in %s, which lacks it",
                             index_path, kv->string, shard);
            goto done;
        }
    }
    if (c->n == first)
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: weight_map is empty", index_path);
done:
    cJSON_Delete(root);
    free(text);
    return rc;
}

// A diffusers component folder: an index with shards, or one file (fp16 variants last).
static int
s_open_component_dir(sd3_model_t *self, s_comp_t *c, const char *dir, sd3_err_t *err)
{
    static const char *const names[] = {
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "diffusion_pytorch_model.safetensors.index.fp16.json",
        "model.safetensors.index.fp16.json",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *path = s_join(dir, names[i]);
        if (!path)
            return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", dir);
        if (!s_is_file(path)) {
            free(path);
            continue;
        }
        int rc = 0;
        if (strstr(names[i], ".json")) {
            rc = s_open_index(self, c, dir, path, err);
        } else {
            sd3_st_t *st = sd3_st_open(path, err), *kept;
            if (!st)
                rc = err && err->code ? err->code : SD3_ENOMEM;
            else if (!(kept = s_model_add(self, &st)) || s_comp_add(c, kept) != 0)
                rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        }
        free(path);
        return rc;
    }
    return sd3_err_set(err, SD3_ENOTFOUND,
                       "%s: no safetensors weights (model.safetensors, "
                       "diffusion_pytorch_model.safetensors or a shard index)",
                       dir);
}

static int
s_open_diffusers(sd3_model_t *self, const char *dir, sd3_err_t *err)
{
    int rc = 0;
    char *index = s_join(dir, "model_index.json");
    char *text = index ? s_read_text(index, 1u << 20, err) : NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    if (!text) {
        rc = err && err->code ? err->code : SD3_ENOMEM;
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: not a JSON object", index);
        goto done;
    }
    self->layout = SD3_LAYOUT_DIFFUSERS;
    for (int comp = 0; comp < SD3_COMP_COUNT; comp++) {
        const char *sub = sd3_wnames_diffusers_dir((sd3_component_t)comp);
        const cJSON *entry = cJSON_GetObjectItemCaseSensitive(root, sub);
        // model_index.json marks a dropped component as [null, null]
        if (cJSON_IsArray(entry) && cJSON_IsNull(cJSON_GetArrayItem(entry, 0)))
            continue;
        char *path = s_join(dir, sub);
        if (path && s_is_dir(path))
            rc = s_open_component_dir(self, &self->comp[comp], path, err);
        free(path);
        if (rc)
            goto done;
    }
    static const char *const toks[3] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    for (int i = 0; i < 3; i++) {
        char *path = s_join(dir, toks[i]);
        if (path && s_is_dir(path))
            self->tok_dir[i] = path;
        else
            free(path);
    }
done:
    cJSON_Delete(root);
    free(text);
    free(index);
    return rc;
}

// Separate text-encoder files beside a model file (text_encoders/ first, then the folder).
static int
s_find_encoders(sd3_model_t *self, const char *dir, sd3_err_t *err)
{
    static const char *const l_names[] = {"clip_l.safetensors", NULL};
    static const char *const g_names[] = {"clip_g.safetensors", NULL};
    static const char *const t5_names[] = {"t5xxl_fp16.safetensors", "t5xxl.safetensors",
                                           "t5xxl_fp8_e4m3fn.safetensors",
                                           "t5xxl_fp8_e4m3fn_scaled.safetensors", NULL};
    const char *const *names[SD3_COMP_COUNT] = {
        [SD3_COMP_CLIP_L] = l_names, [SD3_COMP_CLIP_G] = g_names, [SD3_COMP_T5] = t5_names};
    char *sub = s_join(dir, "text_encoders");
    if (!sub)
        return sd3_err_set(err, SD3_ENOMEM, "out of memory");
    const char *dirs[2] = {sub, dir};
    int rc = 0;
    for (int comp = SD3_COMP_CLIP_L; comp <= SD3_COMP_T5 && !rc; comp++) {
        if (self->comp[comp].present)
            continue; // held inside the model file
        for (int d = 0; d < 2 && !self->comp[comp].present && !rc; d++)
            for (int k = 0; names[comp][k] && !self->comp[comp].present; k++) {
                char *path = s_join(dirs[d], names[comp][k]);
                if (path && s_is_file(path)) {
                    sd3_st_t *st = sd3_st_open(path, err), *kept;
                    if (!st)
                        rc = err && err->code ? err->code : SD3_ENOMEM;
                    else if (!(kept = s_model_add(self, &st)) ||
                             s_comp_add(&self->comp[comp], kept) != 0)
                        rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
                    else
                        self->layout = SD3_LAYOUT_SD35;
                }
                free(path);
                if (rc)
                    break;
            }
    }
    free(sub);
    return rc;
}

// A single official file, plus encoder files beside it when it holds none.
static int
s_open_model_file(sd3_model_t *self, sd3_st_t **st_p, sd3_err_t *err)
{
    sd3_st_t *st = s_model_add(self, st_p);
    if (!st)
        return sd3_err_set(err, SD3_ENOMEM, "out of memory");
    self->layout = SD3_LAYOUT_SINGLE;
    for (int comp = 0; comp < SD3_COMP_COUNT; comp++) {
        s_comp_t *c = &self->comp[comp];
        c->prefix = sd3_wnames_single_prefix((sd3_component_t)comp);
        if (s_has_prefix_key(st, c->prefix) && s_comp_add(c, st) != 0)
            return sd3_err_set(err, SD3_ENOMEM, "out of memory");
    }
    if (!self->comp[SD3_COMP_MMDIT].present && !self->comp[SD3_COMP_VAE].present)
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: not a model file (no model.diffusion_model.* or "
                           "first_stage_model.* tensors)",
                           sd3_st_path(st));
    char *dir = s_strdup(sd3_st_path(st));
    if (!dir)
        return sd3_err_set(err, SD3_ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, strlen(dir) + 1, ".");
    // the separate files have no prefix; single-file prefixes were only for the model file
    int rc = s_find_encoders(self, slash == dir ? "/" : dir, err);
    for (int comp = SD3_COMP_CLIP_L; comp <= SD3_COMP_T5; comp++)
        if (self->comp[comp].present && self->comp[comp].files[0] != st)
            self->comp[comp].prefix = NULL;
    free(dir);
    return rc;
}

static int
s_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// A folder without model_index.json: the SD3.5 release layout. The model file is the first
// *.safetensors (by name) holding model.diffusion_model.* keys.
static int
s_open_folder(sd3_model_t *self, const char *dir, sd3_err_t *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return sd3_err_set(err, SD3_EIO, "%s: cannot list: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") || e->d_name[0] == '.')
            continue;
        char **p = realloc(names, (n + 1) * sizeof *p);
        if (!p || !(p[n] = s_strdup(e->d_name))) {
            names = p ? p : names;
            rc = sd3_err_set(err, SD3_ENOMEM, "out of memory");
            break;
        }
        names = p;
        n++;
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, s_cmp_str);
    sd3_st_t *model = NULL;
    for (size_t i = 0; i < n && !rc && !model; i++) {
        char *path = s_join(dir, names[i]);
        sd3_err_t local = {0};
        sd3_st_t *st = path ? sd3_st_open(path, &local) : NULL;
        free(path);
        if (st && s_has_prefix_key(st, "model.diffusion_model."))
            model = st;
        else
            sd3_st_destroy(&st);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (rc)
        return rc;
    if (!model)
        return sd3_err_set(err, SD3_ENOTFOUND,
                           "%s: no model_index.json and no model file (*.safetensors with "
                           "model.diffusion_model.* tensors)",
                           dir);
    return s_open_model_file(self, &model, err);
}

sd3_model_t *
sd3_model_open(const char *path, sd3_err_t *err)
{
    sd3_model_t *self = calloc(1, sizeof *self);
    if (!self || !(self->path = s_strdup(path))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    if (s_is_dir(path)) {
        char *index = s_join(path, "model_index.json");
        bool diffusers = index && s_is_file(index);
        free(index);
        if ((diffusers ? s_open_diffusers(self, path, err) : s_open_folder(self, path, err)))
            goto fail;
    } else {
        sd3_st_t *st = sd3_st_open(path, err);
        if (!st || s_open_model_file(self, &st, err) != 0)
            goto fail;
    }
    bool any = false;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        any |= self->comp[c].present;
    if (!any) {
        sd3_err_set(err, SD3_EFORMAT, "%s: no component weights found", path);
        goto fail;
    }
    return self;
fail:
    sd3_model_destroy(&self);
    return NULL;
}

void
sd3_model_destroy(sd3_model_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_model_t *self = *self_p;
    for (size_t i = 0; i < self->n_files; i++)
        sd3_st_destroy(&self->files[i]);
    free(self->files);
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        free(self->comp[c].files);
    for (int i = 0; i < 3; i++)
        free(self->tok_dir[i]);
    free(self->path);
    free(self);
    *self_p = NULL;
}

sd3_layout_t
sd3_model_layout(const sd3_model_t *self)
{
    return self->layout;
}

bool
sd3_model_has(const sd3_model_t *self, sd3_component_t comp)
{
    return (unsigned)comp < SD3_COMP_COUNT && self->comp[comp].present;
}

const char *
sd3_model_tokenizer_dir(const sd3_model_t *self, int which)
{
    return which >= 0 && which < 3 ? self->tok_dir[which] : NULL;
}

const char *
sd3_model_path(const sd3_model_t *self)
{
    return self->path;
}

// ---- the weights of one component ------------------------------------------------------

typedef struct {
    char *canon;
    sd3_wname_xf_t xf;
    sd3_tensor_t view;
    const char *file;
} s_src_t;

static int
s_cmp_src(const void *a, const void *b)
{
    const s_src_t *x = a, *y = b;
    int c = strcmp(x->canon, y->canon);
    return c ? c : x->xf.part - y->xf.part;
}

static int
s_cmp_tensor(const void *a, const void *b)
{
    return strcmp(((const s_tensor_t *)a)->name, ((const s_tensor_t *)b)->name);
}

static bool
s_same_shape(const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

// Merges the sorted sources [0, n) into canonical tensors.
static int
s_merge(sd3_weights_t *self, s_src_t *src, size_t n, sd3_err_t *err)
{
    char sbuf[96], pbuf[96];
    self->tensors = calloc(n ? n + 1 : 1, sizeof *self->tensors);
    if (!self->tensors)
        return sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", self->label);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && !strcmp(src[j].canon, src[i].canon))
            j++;
        s_tensor_t *t = &self->tensors[self->n];
        t->name = src[i].canon;
        src[i].canon = NULL; // now owned by the table
        t->file = src[i].file;
        t->src[0] = src[i].view;
        t->dtype = src[i].view.dtype;
        t->ndim = src[i].view.ndim;
        memcpy(t->shape, src[i].view.shape, sizeof t->shape);
        self->n++;
        if (src[i].xf.part >= 0) {
            if (j - i != 3 || src[i].xf.part != 0 || src[i + 1].xf.part != 1 ||
                src[i + 2].xf.part != 2)
                return sd3_err_set(err, SD3_EFORMAT,
                                   "%s: '%s' needs its q, k and v parts exactly once each "
                                   "(found %zu parts)",
                                   t->file, t->name, j - i);
            for (int p = 1; p < 3; p++) {
                t->src[p] = src[i + p].view;
                if (t->src[p].dtype != t->dtype || !s_same_shape(&t->src[p], &t->src[0]))
                    return sd3_err_set(
                        err, SD3_EFORMAT,
                        "%s: the q/k/v parts of '%s' differ in dtype or shape "
                        "(%s %s vs %s %s)",
                        t->file, t->name, sd3_dtype_name(t->dtype),
                        sd3_shape_str(t->ndim, t->shape, sbuf, sizeof sbuf),
                        sd3_dtype_name(t->src[p].dtype),
                        sd3_shape_str(t->src[p].ndim, t->src[p].shape, pbuf, sizeof pbuf));
            }
            if (t->ndim < 1)
                return sd3_err_set(err, SD3_EFORMAT, "%s: '%s' parts are scalars", t->file,
                                   t->name);
            t->kind = S_JOIN;
            t->shape[0] *= 3;
        } else if (j - i != 1) {
            return sd3_err_set(err, SD3_EFORMAT, "%s: '%s' is stored twice", src[i + 1].file,
                               t->name);
        } else if (src[i].xf.swap) {
            if (t->ndim < 1 || t->shape[0] % 2 != 0)
                return sd3_err_set(err, SD3_EFORMAT,
                                   "%s: '%s' is %s; a swapped modulation needs an even number "
                                   "of rows",
                                   t->file, t->name,
                                   sd3_shape_str(t->ndim, t->shape, sbuf, sizeof sbuf));
            t->kind = S_SWAP;
        } else if (src[i].xf.flat && t->ndim == 2) {
            t->ndim = 4; // [c,c] -> [c,c,1,1]: same bytes, a view
            t->shape[2] = t->shape[3] = 1;
        }
        size_t nb = 0;
        if (sd3_shape_numel(t->ndim, t->shape, &nb) == 0 &&
            sd3_size_mul(nb, sd3_dtype_size(t->dtype), &nb) == 0)
            self->bytes += nb;
        i = j;
    }
    return 0;
}

// Builds the canonical table of `comp` from files. prefix: keys must start with it and lose
// it; NULL: use the component's single-file prefix if any key has it, else take all keys.
static sd3_weights_t *
s_weights_build(sd3_component_t comp, sd3_st_t *const *files, size_t n_files, const char *prefix,
                const char *label, sd3_err_t *err)
{
    sd3_weights_t *self = calloc(1, sizeof *self);
    s_src_t *src = NULL;
    size_t n_src = 0, cap = 0;
    if (!self || !(self->label = s_strdup(label))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", label);
        goto fail;
    }
    self->comp = comp;
    if (!prefix) {
        prefix = "";
        for (size_t f = 0; f < n_files; f++)
            if (s_has_prefix_key(files[f], sd3_wnames_single_prefix(comp)))
                prefix = sd3_wnames_single_prefix(comp);
    }
    size_t plen = strlen(prefix);
    // diffusers naming? and the last transformer block (for the swap rule)
    bool diffusers = false;
    int last_block = -1;
    for (size_t f = 0; f < n_files; f++)
        for (size_t i = 0; i < sd3_st_count(files[f]); i++) {
            const char *key = sd3_st_name(files[f], i);
            if (!s_starts(key, prefix))
                continue;
            key += plen;
            if (sd3_wnames_is_diffusers(comp, key))
                diffusers = true;
            int b;
            if (sscanf(key, "transformer_blocks.%d.", &b) == 1 && b > last_block && b < 1000000)
                last_block = b;
        }
    for (size_t f = 0; f < n_files; f++)
        for (size_t i = 0; i < sd3_st_count(files[f]); i++) {
            const char *key = sd3_st_name(files[f], i);
            if (!s_starts(key, prefix))
                continue;
            if (n_src == cap) {
                cap = cap ? cap * 2 : 256;
                s_src_t *p = realloc(src, cap * sizeof *p);
                if (!p) {
                    sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", label);
                    goto fail;
                }
                src = p;
            }
            s_src_t *s = &src[n_src];
            memset(s, 0, sizeof *s);
            s->xf.part = -1;
            char canon[SD3_WNAME_MAX];
            if (!diffusers || sd3_wnames_from_diffusers(comp, key + plen, last_block, canon,
                                                        sizeof canon, &s->xf) != 0) {
                snprintf(canon, sizeof canon, "%s", key + plen);
                s->xf = (sd3_wname_xf_t){-1, false, false};
            }
            if (!(s->canon = s_strdup(canon))) {
                sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", label);
                goto fail;
            }
            n_src++;
            sd3_st_get(files[f], key, &s->view, NULL);
            s->file = sd3_st_path(files[f]);
        }
    if (n_src == 0) {
        sd3_err_set(err, SD3_EFORMAT, "%s: no %s tensors%s%s", label, sd3_component_name(comp),
                    plen ? " under " : "", prefix);
        goto fail;
    }
    qsort(src, n_src, sizeof *src, s_cmp_src);
    if (s_merge(self, src, n_src, err) != 0)
        goto fail;
    // T5 saved by transformers may hold the table only as shared.weight (MODEL.md §5.4)
    if (comp == SD3_COMP_T5 && !sd3_weights_has(self, "encoder.embed_tokens.weight")) {
        for (size_t i = 0; i < self->n; i++)
            if (!strcmp(self->tensors[i].name, "shared.weight")) {
                s_tensor_t *a = &self->tensors[self->n];
                *a = self->tensors[i];
                a->name = s_strdup("encoder.embed_tokens.weight");
                a->alias = true;
                if (!a->name) {
                    sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", label);
                    goto fail;
                }
                self->n++;
                break;
            }
    }
    qsort(self->tensors, self->n, sizeof *self->tensors, s_cmp_tensor);
    for (size_t i = 0; i < n_src; i++)
        free(src[i].canon);
    free(src);
    return self;
fail:
    for (size_t i = 0; i < n_src; i++)
        free(src[i].canon);
    free(src);
    sd3_weights_destroy(&self);
    return NULL;
}

sd3_weights_t *
sd3_weights_open(sd3_model_t *model, sd3_component_t comp, sd3_err_t *err)
{
    if ((unsigned)comp >= SD3_COMP_COUNT || !model->comp[comp].present) {
        sd3_err_set(err, SD3_ENOTFOUND, "%s: has no %s weights", model->path,
                    sd3_component_name(comp));
        return NULL;
    }
    const s_comp_t *c = &model->comp[comp];
    const char *label = c->n == 1 ? sd3_st_path(c->files[0]) : model->path;
    return s_weights_build(comp, c->files, c->n, c->prefix, label, err);
}

sd3_weights_t *
sd3_weights_open_path(const char *path, sd3_component_t comp, sd3_err_t *err)
{
    sd3_weights_t *self = NULL;
    if (s_is_dir(path)) {
        char *index = s_join(path, "model_index.json");
        bool whole = index && s_is_file(index);
        free(index);
        sd3_model_t *model = NULL;
        if (whole) {
            if (!(model = sd3_model_open(path, err)))
                return NULL;
        } else {
            // a diffusers component folder, or else an SD3.5 release folder
            if (!(model = calloc(1, sizeof *model)) || !(model->path = s_strdup(path))) {
                sd3_model_destroy(&model);
                sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
                return NULL;
            }
            sd3_err_t local = {0};
            if (s_open_component_dir(model, &model->comp[comp], path, &local) != 0) {
                sd3_model_destroy(&model);
                if (local.code != SD3_ENOTFOUND) {
                    sd3_err_set(err, local.code, "%s", local.msg);
                    return NULL;
                }
                if (!(model = sd3_model_open(path, err)))
                    return NULL;
            }
        }
        if (!(self = sd3_weights_open(model, comp, err))) {
            sd3_model_destroy(&model);
            return NULL;
        }
        self->own_model = model;
        return self;
    }
    sd3_st_t *st = sd3_st_open(path, err);
    if (!st)
        return NULL;
    if (!(self = s_weights_build(comp, &st, 1, NULL, path, err))) {
        sd3_st_destroy(&st);
        return NULL;
    }
    if (!(self->own_files = malloc(sizeof *self->own_files))) {
        sd3_st_destroy(&st);
        sd3_weights_destroy(&self);
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        return NULL;
    }
    self->own_files[0] = st;
    self->n_own = 1;
    return self;
}

void
sd3_weights_destroy(sd3_weights_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_weights_t *self = *self_p;
    for (size_t i = 0; i < self->n; i++) {
        free(self->tensors[i].name);
        free(self->tensors[i].buf);
    }
    free(self->tensors);
    for (size_t i = 0; i < self->n_own; i++)
        sd3_st_destroy(&self->own_files[i]);
    free(self->own_files);
    sd3_model_destroy(&self->own_model);
    free(self->label);
    free(self);
    *self_p = NULL;
}

static s_tensor_t *
s_find(const sd3_weights_t *self, const char *name)
{
    size_t lo = 0, hi = self->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, self->tensors[mid].name);
        if (c == 0)
            return &self->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static size_t
s_nbytes(const s_tensor_t *t)
{
    size_t n = 0;
    sd3_shape_numel(t->ndim, t->shape, &n);
    return n * sd3_dtype_size(t->dtype);
}

// Copies canonical bytes [off, off + n) of t into dst (stored dtype).
static void
s_copy_bytes(const s_tensor_t *t, size_t off, size_t n, uint8_t *dst)
{
    size_t total = s_nbytes(t);
    if (t->kind == S_VIEW) {
        memcpy(dst, (const uint8_t *)t->src[0].data + off, n);
        return;
    }
    // JOIN: part p holds canonical bytes [p*m, (p+1)*m); SWAP: canonical first half is the
    // stored second half and the other way round.
    size_t m = t->kind == S_JOIN ? total / 3 : total / 2;
    while (n > 0) {
        size_t p = off / m, in = off % m, len = m - in < n ? m - in : n;
        const uint8_t *from;
        if (t->kind == S_JOIN)
            from = (const uint8_t *)t->src[p].data + in;
        else
            from = (const uint8_t *)t->src[0].data + (p == 0 ? m : 0) + in;
        memcpy(dst, from, len);
        dst += len;
        off += len;
        n -= len;
    }
}

// Asks the kernel to read the pages of t's sources now, in large requests: the files are
// mapped MADV_RANDOM (no read-ahead into neighbours), which would otherwise fault a big
// tensor in one page at a time. Only this tensor's pages (rounded out to whole pages).
static void
s_prefetch(const s_tensor_t *t)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = page > 0 ? (uintptr_t)page : 4096;
    int parts = t->kind == S_JOIN ? 3 : 1;
    for (int p = 0; p < parts; p++) {
        uintptr_t a = (uintptr_t)t->src[p].data, b = a + sd3_tensor_nbytes(&t->src[p]);
        uintptr_t lo = a / pg * pg, hi = (b + pg - 1) / pg * pg;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_WILLNEED);
    }
}

size_t
sd3_weights_ready_bytes(const sd3_weights_t *self)
{
    size_t n = 0;
    for (size_t i = 0; self && i < self->n; i++)
        if (self->tensors[i].ready && !self->tensors[i].alias)
            n += sd3_tensor_nbytes(&self->tensors[i].t);
    return n;
}

bool
sd3_weights_page_in(sd3_weights_t *self, uint64_t *done, const bool *stop)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pg = page > 0 ? (size_t)page : 4096;
    for (size_t i = 0; self && i < self->n; i++) {
        s_tensor_t *t = &self->tensors[i];
        if (!t->ready || t->alias)
            continue;
        size_t nbytes = sd3_tensor_nbytes(&t->t);
        const volatile uint8_t *p = t->t.data;
        if (!t->buf) { // a view into the mapping: read it in, large requests first
            uintptr_t a = (uintptr_t)p, lo = a / pg * pg, hi = (a + nbytes + pg - 1) / pg * pg;
            if (hi > lo)
                madvise((void *)lo, hi - lo, MADV_WILLNEED);
            for (size_t off = 0; off < nbytes; off += pg) {
                (void)p[off];
                if ((off & ((64u << 20) - 1)) == 0 && __atomic_load_n(stop, __ATOMIC_RELAXED))
                    return false;
            }
        }
        __atomic_fetch_add(done, (uint64_t)nbytes, __ATOMIC_RELAXED);
        if (__atomic_load_n(stop, __ATOMIC_RELAXED))
            return false;
    }
    return true;
}

// Drops the mapped source pages of t from this process (the page cache keeps them): only
// pages wholly inside a source range, since neighbours may be in use.
static void
s_release(const s_tensor_t *t)
{
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = page > 0 ? (uintptr_t)page : 4096;
    int parts = t->kind == S_JOIN ? 3 : 1;
    for (int p = 0; p < parts; p++) {
        uintptr_t a = (uintptr_t)t->src[p].data, b = a + sd3_tensor_nbytes(&t->src[p]);
        uintptr_t lo = (a + pg - 1) / pg * pg, hi = b / pg * pg;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_DONTNEED);
    }
}

static int
s_ready(sd3_weights_t *self, s_tensor_t *t, sd3_err_t *err)
{
    (void)self;
    if (t->ready)
        return 0;
    s_prefetch(t);
    size_t esize = sd3_dtype_size(t->dtype), nbytes = s_nbytes(t);
    if (t->kind == S_VIEW && (uintptr_t)t->src[0].data % esize == 0) {
        sd3_tensor_view_init(&t->t, t->dtype, t->ndim, t->shape, t->src[0].data);
    } else {
        // joined, swapped, or unaligned in the file: build an owned, aligned copy
        size_t alloc = (nbytes + 63) & ~(size_t)63;
        t->buf = aligned_alloc(64, alloc ? alloc : 64);
        if (!t->buf)
            return sd3_err_set(err, SD3_ENOMEM, "%s: '%s': out of memory (%zu bytes)", t->file,
                               t->name, nbytes);
        s_copy_bytes(t, 0, nbytes, t->buf);
        s_release(t); // the copy is what stays resident, not the copy and its source
        sd3_tensor_view_init(&t->t, t->dtype, t->ndim, t->shape, t->buf);
    }
    t->t.name = t->name;
    t->ready = true;
    return 0;
}

const sd3_tensor_t *
sd3_weights_get(sd3_weights_t *self, const char *name)
{
    s_tensor_t *t = s_find(self, name);
    if (!t || s_ready(self, t, NULL) != 0)
        return NULL;
    return &t->t;
}

bool
sd3_weights_has(const sd3_weights_t *self, const char *name)
{
    return s_find(self, name) != NULL;
}

int
sd3_weights_need(sd3_weights_t *self, const char *name, int ndim, const int64_t *shape,
                 const sd3_tensor_t **out, sd3_err_t *err)
{
    char have[96], want[96];
    *out = NULL;
    s_tensor_t *t = s_find(self, name);
    if (!t)
        return sd3_err_set(err, SD3_EFORMAT, "%s: no %s tensor '%s'", self->label,
                           sd3_component_name(self->comp), name);
    bool ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = shape[i] == -1 || shape[i] == t->shape[i];
    if (!ok)
        return sd3_err_set(err, SD3_EFORMAT, "%s: '%s' is %s, want %s", t->file, name,
                           sd3_shape_str(t->ndim, t->shape, have, sizeof have),
                           sd3_shape_str(ndim, shape, want, sizeof want));
    int rc = s_ready(self, t, err);
    if (rc == 0)
        *out = &t->t;
    return rc;
}

int
sd3_weights_shape(const sd3_weights_t *self, const char *name, int *ndim, int64_t *shape)
{
    const s_tensor_t *t = s_find(self, name);
    if (!t)
        return SD3_ENOTFOUND;
    *ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++)
        shape[i] = t->shape[i];
    return 0;
}

size_t
sd3_weights_count(const sd3_weights_t *self)
{
    return self->n;
}

const char *
sd3_weights_name(const sd3_weights_t *self, size_t i)
{
    return i < self->n ? self->tensors[i].name : NULL;
}

size_t
sd3_weights_bytes(const sd3_weights_t *self)
{
    return self->bytes;
}

// ---- streaming access (sd3_weights_io.h) -----------------------------------------------

sd3_dtype_t
sd3_weights_dtype(const sd3_weights_t *self, const char *name)
{
    const s_tensor_t *t = s_find(self, name);
    return t ? t->dtype : SD3_DTYPE_COUNT;
}

const char *
sd3_weights_file(const sd3_weights_t *self, const char *name)
{
    const s_tensor_t *t = s_find(self, name);
    return t ? t->file : NULL;
}

int
sd3_weights_read(const sd3_weights_t *self, const char *name, size_t off, size_t n,
                 sd3_dtype_t dtype, void *dst, sd3_err_t *err)
{
    const s_tensor_t *t = s_find(self, name);
    if (!t)
        return sd3_err_set(err, SD3_ENOTFOUND, "%s: no tensor '%s'", self->label, name);
    size_t es = sd3_dtype_size(t->dtype), numel = s_nbytes(t) / (es ? es : 1);
    if (off > numel || n > numel - off)
        return sd3_err_set(err, SD3_EINVAL, "%s: '%s' read [%zu,+%zu) past %zu elements",
                           self->label, name, off, n, numel);
    if (off == 0)
        s_prefetch(t); // a streaming reader starts here: read the tensor in large requests
    if (dtype == t->dtype) {
        s_copy_bytes(t, off * es, n * es, dst);
        return 0;
    }
    if (!sd3_dtype_is_float(t->dtype) || !sd3_dtype_is_float(dtype))
        return sd3_err_set(err, SD3_EINVAL, "%s: '%s' is %s, cannot convert to %s", self->label,
                           name, sd3_dtype_name(t->dtype), sd3_dtype_name(dtype));
    // through f32 in small pieces
    enum { PIECE = 4096 };
    uint8_t raw[PIECE * 8];
    float f[PIECE];
    size_t os = sd3_dtype_size(dtype);
    for (size_t done = 0; done < n;) {
        size_t k = n - done < PIECE ? n - done : PIECE;
        s_copy_bytes(t, (off + done) * es, k * es, raw);
        sd3_dtype_to_f32(t->dtype, raw, f, k);
        sd3_dtype_from_f32(dtype, f, (uint8_t *)dst + done * os, k);
        done += k;
    }
    return 0;
}

void
sd3_weights_release(const sd3_weights_t *self, const char *name)
{
    const s_tensor_t *t = s_find(self, name);
    if (t)
        s_release(t);
}
