/*  sd3ctl_eval_dit - `sd3ctl eval noise|schedule|mmdit|sampler` (TESTVECTORS-dit.md)
 *
 *  Each component reads every setting from the vectors file (tensor names and
 *  __metadata__), runs the same code the daemon runs (stages/mmdit) and hands each output
 *  to sd3_eval_check. Nothing here is matched to particular golden files.  */
#include "sd3_backend.h"
#include "sd3_mmdit.h"
#include "sd3_rng.h"
#include "sd3_sampler.h"
#include "sd3_schedule.h"
#include "sd3_weights.h"
#include "sd3ctl.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_NOISE_MAX_NUMEL (64u << 20) // 256 MiB of f32 per tensor at most

// ---- noise -----------------------------------------------------------------------------

// Parses "noise.seed{S}.{AxBxC}" (or "debug.seed{S}.{rest}"): seed, and the rest after the dot.
static int
s_parse_seed_name(const char *name, const char *prefix, uint64_t *seed, const char **rest)
{
    size_t plen = strlen(prefix);
    if (strncmp(name, prefix, plen) != 0)
        return -1;
    const char *p = name + plen;
    if (*p < '0' || *p > '9')
        return -1;
    char *end;
    *seed = strtoull(p, &end, 10);
    if (*end != '.')
        return -1;
    *rest = end + 1;
    return 0;
}

static int
s_parse_shape(const char *s, int *ndim, int64_t *shape)
{
    *ndim = 0;
    while (*s) {
        char *end;
        if (*s < '0' || *s > '9' || *ndim >= SD3_MAX_DIM)
            return -1;
        long long v = strtoll(s, &end, 10);
        if (v <= 0 || v > (1ll << 30))
            return -1;
        shape[(*ndim)++] = v;
        if (*end == 'x')
            end++;
        else if (*end)
            return -1;
        s = end;
    }
    return *ndim > 0 ? 0 : -1;
}

// Every seed of metadata `seeds` (a JSON list; read as text, the seeds may exceed 2^53) with
// every shape of `shapes` must have its tensor in the file: a file whose names do not
// match its own metadata is a broken file.
static void
s_noise_check_metadata(sd3_eval_t *ev)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    const char *seeds = sd3_st_metadata(st, "seeds"), *shapes = sd3_st_metadata(st, "shapes");
    if (!seeds || !shapes)
        return;
    cJSON *js = cJSON_Parse(shapes);
    int missing = 0, listed = 0;
    for (const char *p = seeds; *p; p++) {
        if (*p < '0' || *p > '9')
            continue;
        char *end;
        unsigned long long seed = strtoull(p, &end, 10);
        p = end - 1;
        const cJSON *shape;
        cJSON_ArrayForEach(shape, js)
        {
            char name[256];
            size_t len = (size_t)snprintf(name, sizeof name, "noise.seed%llu.", seed);
            const cJSON *d;
            int k = 0;
            cJSON_ArrayForEach(d, shape)
            {
                if (len >= sizeof name)
                    break; // too long for any tensor name: reported as missing below
                len += (size_t)snprintf(name + len, sizeof name - len, k++ ? "x%d" : "%d",
                                        d->valueint);
            }
            listed++;
            if (!sd3_st_has(st, name)) {
                fprintf(stderr, "noise: metadata lists %s, absent from the file\n", name);
                missing++;
            }
        }
    }
    cJSON_Delete(js);
    sd3_eval_record(ev, "metadata.seeds_x_shapes", missing == 0, "%d listed, %d missing", listed,
                    missing);
}

int
sd3_eval_noise(sd3_eval_t *ev, sd3_err_t *err)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    if (!st)
        return sd3_err_set(err, SD3_EFORMAT, "%s: noise vectors must be safetensors",
                           sd3_eval_vectors_path(ev));
    double atol = sd3_eval_atol(ev, 0.0), rtol = sd3_eval_rtol(ev, 0.0);
    s_noise_check_metadata(ev);
    for (size_t i = 0; i < sd3_st_count(st); i++) {
        const char *name = sd3_st_name(st, i), *rest;
        uint64_t seed;
        int ndim;
        int64_t shape[SD3_MAX_DIM];
        sd3_tensor_t *got = NULL;
        if (s_parse_seed_name(name, "noise.seed", &seed, &rest) == 0) {
            size_t numel;
            if (s_parse_shape(rest, &ndim, shape) != 0 ||
                sd3_shape_numel(ndim, shape, &numel) != 0 || numel > S_NOISE_MAX_NUMEL) {
                sd3_eval_record(ev, name, false, "cannot read a shape from the name");
                continue;
            }
            got = sd3_rng_noise(seed, ndim, shape, err);
            if (!got)
                return err->code;
        } else if (s_parse_seed_name(name, "debug.seed", &seed, &rest) == 0) {
            // debug.seed{S}.mt19937_first16 (raw outputs) / .uniform_first16 (24-bit floats)
            sd3_tensor_t want;
            if (sd3_st_get(st, name, &want, err) != 0)
                return err->code;
            int64_t n = sd3_tensor_numel(&want);
            bool raw = strstr(rest, "mt19937") != NULL;
            if (n > 1 << 20 || (!raw && !strstr(rest, "uniform"))) {
                sd3_eval_record(ev, name, false, "unknown debug vector");
                continue;
            }
            got = sd3_tensor_new_err(raw ? SD3_I64 : SD3_F32, 1, &n, name, err);
            if (!got)
                return err->code;
            sd3_rng_t rng;
            sd3_rng_init(&rng, seed);
            for (int64_t k = 0; k < n; k++) {
                uint32_t u = sd3_rng_next_u32(&rng);
                if (raw)
                    ((int64_t *)got->data)[k] = u;
                else
                    sd3_tensor_f32(got)[k] = (float)(u & 0xffffffu) * 0x1p-24f;
            }
        } else {
            continue;
        }
        sd3_eval_check(ev, name, got, atol, rtol);
        sd3_tensor_destroy(&got);
    }
    return 0;
}

// ---- schedule --------------------------------------------------------------------------

// "steps{N}_shift{S}" as the reference spells it: 3.0 -> "3", 2.5 -> "2.5".
static void
s_schedule_stem(char *buf, size_t cap, int steps, double shift)
{
    snprintf(buf, cap, "steps%d_shift%g", steps, shift);
}

int
sd3_eval_schedule(sd3_eval_t *ev, sd3_err_t *err)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    if (!st)
        return sd3_err_set(err, SD3_EFORMAT, "%s: schedule vectors must be safetensors",
                           sd3_eval_vectors_path(ev));
    double atol = sd3_eval_atol(ev, 2e-7), rtol = sd3_eval_rtol(ev, 0.0);
    const char *list = sd3_st_metadata(st, "schedules");
    cJSON *js = list ? cJSON_Parse(list) : NULL;
    if (!cJSON_IsArray(js)) {
        cJSON_Delete(js);
        return sd3_err_set(err, SD3_EFORMAT, "%s: metadata 'schedules' missing or not a list",
                           sd3_eval_vectors_path(ev));
    }
    float *sig = NULL;
    sd3_tensor_t *got = NULL;
    int rc = 0;
    const cJSON *pair;
    cJSON_ArrayForEach(pair, js)
    {
        const cJSON *js_n = cJSON_GetArrayItem(pair, 0), *js_s = cJSON_GetArrayItem(pair, 1);
        if (!cJSON_IsNumber(js_n) || !cJSON_IsNumber(js_s)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: a 'schedules' entry is not [steps, shift]",
                             sd3_eval_vectors_path(ev));
            goto done;
        }
        if (!(js_n->valuedouble >= 1 && js_n->valuedouble <= SD3_SCHEDULE_MAX_STEPS)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: a 'schedules' entry has %g steps, want 1..%d",
                             sd3_eval_vectors_path(ev), js_n->valuedouble,
                             SD3_SCHEDULE_MAX_STEPS);
            goto done;
        }
        int steps = js_n->valueint;
        float shift = (float)js_s->valuedouble;
        char stem[64], name[96];
        s_schedule_stem(stem, sizeof stem, steps, js_s->valuedouble);
        free(sig);
        sig = malloc(sizeof *sig * (size_t)(steps + 1));
        if (!sig) {
            rc = sd3_err_set(err, SD3_ENOMEM, "schedule %s", stem);
            goto done;
        }
        if ((rc = sd3_schedule_sigmas(steps, shift, sig, err)) != 0)
            goto done;
        int64_t n1 = steps + 1, n = steps;
        snprintf(name, sizeof name, "%s.sigmas", stem);
        got = sd3_tensor_new_view(SD3_F32, 1, &n1, sig);
        sd3_eval_check(ev, name, got, atol, rtol);
        sd3_tensor_destroy(&got);
        for (int i = 0; i < steps; i++)
            sig[i] = sd3_schedule_timestep(sig[i]);
        snprintf(name, sizeof name, "%s.timesteps", stem);
        got = sd3_tensor_new_view(SD3_F32, 1, &n, sig);
        sd3_eval_check(ev, name, got, atol * 1000, rtol);
        sd3_tensor_destroy(&got);
    }
    // sigma_table_shift{S}: the model_sampling table sigma(t) for t = 1..len.
    for (size_t i = 0; i < sd3_st_count(st); i++) {
        const char *name = sd3_st_name(st, i);
        if (strncmp(name, "sigma_table_shift", 17) != 0)
            continue;
        char *end;
        double shift = strtod(name + 17, &end);
        sd3_tensor_t want;
        if (end == name + 17 || *end || !(shift > 0) || sd3_st_get(st, name, &want, err) != 0 ||
            want.ndim != 1 || want.shape[0] > 1000000) {
            sd3_eval_record(ev, name, false, "cannot read the shift or length");
            continue;
        }
        got = sd3_tensor_new_err(SD3_F32, 1, want.shape, name, err);
        if (!got) {
            rc = err->code;
            goto done;
        }
        for (int64_t t = 0; t < want.shape[0]; t++)
            sd3_tensor_f32(got)[t] = sd3_schedule_sigma((float)(t + 1), (float)shift);
        sd3_eval_check(ev, name, got, atol, rtol);
        sd3_tensor_destroy(&got);
    }
done:
    sd3_tensor_destroy(&got);
    free(sig);
    cJSON_Delete(js);
    return rc;
}

// ---- shared: the model named by --model or by the file's `checkpoint` metadata ------------

typedef struct {
    sd3_model_t *model; // when the path is a folder
    sd3_weights_t *weights;
    sd3_backend_t *be;
    sd3_mmdit_t *mmdit;
} s_dit_t;

static void
s_dit_fini(s_dit_t *d)
{
    sd3_mmdit_destroy(&d->mmdit);
    sd3_weights_destroy(&d->weights);
    sd3_model_destroy(&d->model);
    sd3_backend_destroy(&d->be);
}

// Opens the MMDiT of `path` (a single file, an SD3.5 folder or a diffusers folder).
static int
s_open_weights(const char *path, sd3_model_t **model, sd3_weights_t **weights, sd3_err_t *err)
{
    struct stat stt;
    if (stat(path, &stt) == 0 && S_ISDIR(stt.st_mode)) {
        if (!(*model = sd3_model_open(path, err)) ||
            !(*weights = sd3_weights_open(*model, SD3_COMP_MMDIT, err)))
            return err->code ? err->code : SD3_EFORMAT;
        return 0;
    }
    *weights = sd3_weights_open_path(path, SD3_COMP_MMDIT, err);
    if (!*weights) { // a single file holding more than the MMDiT
        sd3_err_clear(err);
        if (!(*model = sd3_model_open(path, err)) ||
            !(*weights = sd3_weights_open(*model, SD3_COMP_MMDIT, err)))
            return err->code ? err->code : SD3_EFORMAT;
    }
    return 0;
}

static int
s_dit_open(sd3_eval_t *ev, s_dit_t *d, sd3_err_t *err)
{
    char path[4096];
    const char *model = sd3_eval_model(ev);
    memset(d, 0, sizeof *d);
    if (!model) { // metadata `checkpoint`, beside the vectors file
        const char *ck = sd3_st_metadata(sd3_eval_vectors(ev), "checkpoint");
        const char *vp = sd3_eval_vectors_path(ev), *slash = strrchr(vp, '/');
        if (!ck)
            return sd3_err_set(err, SD3_EINVAL, "%s: no --model and no 'checkpoint' metadata", vp);
        snprintf(path, sizeof path, "%.*s%s", slash ? (int)(slash - vp + 1) : 0, vp, ck);
        model = path;
    }
    const char *be_name = getenv("SD3_EVAL_BACKEND");
    if (s_open_weights(model, &d->model, &d->weights, err) ||
        !(d->be = sd3_backend_new(be_name && *be_name ? be_name : "cpu", 0, err)) ||
        sd3_backend_set_precision(d->be, sd3_eval_precision(ev), err) ||
        !(d->mmdit = sd3_mmdit_new(d->be, d->weights, 0, -1, err))) {
        s_dit_fini(d);
        return err->code ? err->code : SD3_EFORMAT;
    }
    return 0;
}

// ---- mmdit -------------------------------------------------------------------------------

typedef struct {
    sd3_eval_t *ev;
    sd3_backend_t *be;
    double atol, rtol;
    char seen[128][128]; // dbg names compared, to report those the file has and we never made
    int n_seen;
} s_tap_ctx_t;

static void
s_mmdit_tap(void *user, const char *name, const sd3_tensor_t *t)
{
    s_tap_ctx_t *tc = user;
    char full[128];
    snprintf(full, sizeof full, "dbg.%s", name);
    if (!sd3_st_has(sd3_eval_vectors(tc->ev), full))
        return;
    sd3_err_t err = {0};
    sd3_tensor_t *host = sd3_tensor_new_err(SD3_F32, t->ndim, t->shape, name, &err);
    if (!host || tc->be->ops->download(tc->be, host, t, &err) != 0) {
        sd3_eval_record(tc->ev, full, false, "download failed: %s", err.msg);
    } else {
        sd3_eval_check(tc->ev, full, host, tc->atol, tc->rtol);
    }
    sd3_tensor_destroy(&host);
    if (tc->n_seen < 128)
        snprintf(tc->seen[tc->n_seen++], sizeof tc->seen[0], "%s", full);
}

// Parses a JSON list of block indices ("[1]", "[7, 8, 9]") into a bit mask.
static int
s_parse_layers(const char *text, int depth, uint64_t *mask)
{
    cJSON *js = cJSON_Parse(text);
    const cJSON *it;
    *mask = 0;
    if (!cJSON_IsArray(js)) {
        cJSON_Delete(js);
        return -1;
    }
    cJSON_ArrayForEach(it, js)
    {
        if (!cJSON_IsNumber(it) || it->valueint < 0 || it->valueint >= depth) {
            cJSON_Delete(js);
            return -1;
        }
        *mask |= UINT64_C(1) << it->valueint;
    }
    cJSON_Delete(js);
    return 0;
}

int
sd3_eval_mmdit(sd3_eval_t *ev, sd3_err_t *err)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    s_dit_t d;
    sd3_tensor_t *x = NULL, *ts = NULL, *sigma = NULL, *y = NULL, *ctx = NULL, *out = NULL;
    sd3_tensor_t *den = NULL;
    int rc = 0;
    if (!st)
        return sd3_err_set(err, SD3_EFORMAT, "%s: mmdit vectors must be safetensors",
                           sd3_eval_vectors_path(ev));
    if (s_dit_open(ev, &d, err))
        return err->code;
    s_tap_ctx_t tc = {
        .ev = ev, .be = d.be, .atol = sd3_eval_atol(ev, 1e-4), .rtol = sd3_eval_rtol(ev, 0.0)};
    if (!(x = sd3_eval_input(ev, "in.x", err)) || !(ts = sd3_eval_input(ev, "in.timestep", err)) ||
        !(y = sd3_eval_input(ev, "in.y", err)) || !(ctx = sd3_eval_input(ev, "in.context", err)) ||
        !(sigma = sd3_eval_input(ev, "in.sigma", err))) {
        rc = err->code;
        goto done;
    }
    if (x->ndim != 4 || sd3_tensor_numel(ts) != x->shape[0] ||
        sd3_tensor_numel(sigma) != x->shape[0]) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "%s: in.x must be [B,Z,h,w] with B timesteps and "
                         "sigmas",
                         sd3_eval_vectors_path(ev));
        goto done;
    }
    if (!(out = sd3_tensor_new_err(SD3_F32, 4, x->shape, "out.x", err)) ||
        !(den = sd3_tensor_new_err(SD3_F32, 4, x->shape, "out.denoised", err))) {
        rc = err->code;
        goto done;
    }
    sd3_mmdit_set_tap(d.mmdit, s_mmdit_tap, &tc);
    if ((rc = sd3_mmdit_forward(d.mmdit, x, ts->data, y, ctx, 0, out, err)) != 0)
        goto done;
    sd3_mmdit_set_tap(d.mmdit, NULL, NULL);
    sd3_eval_check(ev, "out.x", out, tc.atol, tc.rtol);
    // out.denoised = x - out.x * sigma, per batch item (BaseModel.apply_model)
    size_t per = (size_t)(sd3_tensor_numel(x) / x->shape[0]);
    for (int64_t b = 0; b < x->shape[0]; b++)
        for (size_t i = 0; i < per; i++) {
            size_t k = (size_t)b * per + i;
            sd3_tensor_f32(den)[k] =
                sd3_tensor_f32(x)[k] - sd3_tensor_f32(out)[k] * sd3_tensor_f32(sigma)[b];
        }
    if (sd3_st_has(st, "out.denoised"))
        sd3_eval_check(ev, "out.denoised", den, tc.atol, tc.rtol);
    // skip_layers_for_<name> = "[i, ...]": forward with those blocks skipped, compared to <name>.
    for (size_t m = 0; m < sd3_st_metadata_count(st); m++) {
        const char *key = sd3_st_metadata_key(st, m);
        if (strncmp(key, "skip_layers_for_", 16) != 0 || !sd3_st_has(st, key + 16))
            continue; // (the sd3-medium files name x_skip1 in metadata but do not store it)
        uint64_t mask;
        if (s_parse_layers(sd3_st_metadata(st, key), sd3_mmdit_config(d.mmdit)->depth, &mask)) {
            sd3_eval_record(ev, key, false, "not a list of block indices");
            continue;
        }
        if ((rc = sd3_mmdit_forward(d.mmdit, x, ts->data, y, ctx, mask, out, err)) != 0)
            goto done;
        sd3_eval_check(ev, key + 16, out, tc.atol, tc.rtol);
    }
    // Every dbg.* of the file must have been produced.
    for (size_t i = 0; i < sd3_st_count(st); i++) {
        const char *name = sd3_st_name(st, i);
        bool seen = strncmp(name, "dbg.", 4) != 0;
        for (int k = 0; k < tc.n_seen && !seen; k++)
            seen = !strcmp(tc.seen[k], name);
        if (!seen)
            sd3_eval_record(ev, name, false, "not produced by this implementation");
    }
done:;
    sd3_tensor_t **all[] = {&x, &ts, &sigma, &y, &ctx, &out, &den};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(all[i]);
    s_dit_fini(&d);
    return rc;
}

// ---- sampler -----------------------------------------------------------------------------

typedef struct {
    sd3_eval_t *ev;
    const char *run;
    double atol, rtol;
} s_run_ctx_t;

static void
s_sampler_tap(void *user, int step, const char *name, const sd3_tensor_t *t)
{
    s_run_ctx_t *rc = user;
    char full[160];
    snprintf(full, sizeof full, "%s.step%d.%s", rc->run, step, name);
    if (sd3_st_has(sd3_eval_vectors(rc->ev), full))
        sd3_eval_check(rc->ev, full, t, rc->atol, rc->rtol);
}

static double
s_meta_num(const sd3_st_t *st, const char *key, double dflt, bool *ok)
{
    const char *v = sd3_st_metadata(st, key);
    char *end;
    if (!v) {
        *ok = false;
        return dflt;
    }
    double x = strtod(v, &end);
    if (end == v || *end)
        *ok = false;
    return x;
}

int
sd3_eval_sampler(sd3_eval_t *ev, sd3_err_t *err)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    s_dit_t d;
    sd3_tensor_t *noise = NULL, *cc = NULL, *cy = NULL, *uc = NULL, *uy = NULL, *x0 = NULL;
    sd3_tensor_t *fin = NULL, *sig_t = NULL;
    float *sigmas = NULL;
    cJSON *runs = NULL, *slg_js = NULL;
    int rc = 0;
    if (!st)
        return sd3_err_set(err, SD3_EFORMAT, "%s: sampler vectors must be safetensors",
                           sd3_eval_vectors_path(ev));
    bool ok = true;
    double steps_d = s_meta_num(st, "steps", 0, &ok); // range-checked before the int cast
    double shift = s_meta_num(st, "shift", 0, &ok), cfg = s_meta_num(st, "cfg_scale", 0, &ok);
    const char *runs_s = sd3_st_metadata(st, "runs"), *slg_s = sd3_st_metadata(st, "slg_config");
    runs = runs_s ? cJSON_Parse(runs_s) : NULL;
    if (!ok || !cJSON_IsArray(runs) || !(steps_d >= 1 && steps_d <= SD3_SCHEDULE_MAX_STEPS)) {
        cJSON_Delete(runs);
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: metadata steps/shift/cfg_scale/runs missing "
                           "or invalid",
                           sd3_eval_vectors_path(ev));
    }
    if (s_dit_open(ev, &d, err)) {
        cJSON_Delete(runs);
        return err->code;
    }
    const int steps = (int)steps_d;
    double atol = sd3_eval_atol(ev, 1e-3), rtol = sd3_eval_rtol(ev, 0.0);
    if (!(noise = sd3_eval_input(ev, "in.noise", err)) ||
        !(cc = sd3_eval_input(ev, "in.cond.context", err)) ||
        !(cy = sd3_eval_input(ev, "in.cond.y", err)) ||
        !(uc = sd3_eval_input(ev, "in.uncond.context", err)) ||
        !(uy = sd3_eval_input(ev, "in.uncond.y", err))) {
        rc = err->code;
        goto done;
    }
    // The noise is the seeded torch noise: check it when the file names its seed.
    const char *seed_s = sd3_st_metadata(st, "seed");
    if (seed_s && noise->ndim >= 1) {
        sd3_tensor_t *gen =
            sd3_rng_noise(strtoull(seed_s, NULL, 10), noise->ndim, noise->shape, err);
        if (!gen) {
            rc = err->code;
            goto done;
        }
        sd3_eval_check(ev, "in.noise", gen, 0.0, 0.0);
        sd3_tensor_destroy(&gen);
    }
    int64_t n1 = steps + 1;
    if (!(sigmas = malloc(sizeof *sigmas * (size_t)n1)) ||
        !(x0 = sd3_tensor_new_err(SD3_F32, noise->ndim, noise->shape, "x0", err)) ||
        !(fin = sd3_tensor_new_err(SD3_F32, noise->ndim, noise->shape, "final", err))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "sampler eval: out of memory");
        goto done;
    }
    if ((rc = sd3_schedule_sigmas(steps, (float)shift, sigmas, err)) != 0)
        goto done;
    sig_t = sd3_tensor_new_view(SD3_F32, 1, &n1, sigmas);
    const cJSON *run;
    cJSON_ArrayForEach(run, runs)
    {
        if (!cJSON_IsString(run)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "metadata runs: not a list of names");
            goto done;
        }
        const char *name = run->valuestring;
        char base[64];
        size_t len = strlen(name);
        bool slg = len > 4 && !strcmp(name + len - 4, "_slg");
        snprintf(base, sizeof base, "%.*s", (int)(slg ? len - 4 : len), name);
        sd3_sampler_opts_t opts = {.cfg_scale = (float)cfg, .steps = steps};
        if ((rc = sd3_sampler_kind_from_name(base, &opts.kind, err)) != 0)
            goto done;
        if (slg) { // slg_config: {"cfg", "end", "layers", "scale", "start"}
            slg_js = slg_s ? cJSON_Parse(slg_s) : NULL;
            const cJSON *c = cJSON_GetObjectItem(slg_js, "cfg"),
                        *e = cJSON_GetObjectItem(slg_js, "end"),
                        *l = cJSON_GetObjectItem(slg_js, "layers"),
                        *s = cJSON_GetObjectItem(slg_js, "scale"),
                        *b = cJSON_GetObjectItem(slg_js, "start");
            char *ltext = l ? cJSON_PrintUnformatted(l) : NULL;
            if (!cJSON_IsNumber(e) || !cJSON_IsNumber(s) || !cJSON_IsNumber(b) || !ltext ||
                s_parse_layers(ltext, sd3_mmdit_config(d.mmdit)->depth, &opts.slg.layers)) {
                free(ltext);
                rc = sd3_err_set(err, SD3_EFORMAT, "run %s: metadata slg_config is invalid", name);
                goto done;
            }
            free(ltext);
            if (cJSON_IsNumber(c))
                opts.cfg_scale = (float)c->valuedouble;
            opts.slg.scale = (float)s->valuedouble;
            opts.slg.start = b->valuedouble;
            opts.slg.end = e->valuedouble;
            cJSON_Delete(slg_js);
            slg_js = NULL;
        }
        char key[128];
        snprintf(key, sizeof key, "%s.sigmas", name);
        sd3_eval_check(ev, key, sig_t, atol, rtol);
        if ((rc = sd3_sampler_start(sigmas[0], noise, NULL, x0, err)) != 0)
            goto done;
        snprintf(key, sizeof key, "%s.x0", name);
        sd3_eval_check(ev, key, x0, atol, rtol);
        s_run_ctx_t rctx = {.ev = ev, .run = name, .atol = atol, .rtol = rtol};
        sd3_sampler_cond_t cond = {.context = cc, .y = cy}, uncond = {.context = uc, .y = uy};
        if ((rc = sd3_sampler_run(d.mmdit, &opts, sigmas, steps + 1, x0, &cond, &uncond, fin,
                                  s_sampler_tap, &rctx, err)) != 0)
            goto done;
        snprintf(key, sizeof key, "%s.final", name);
        sd3_eval_check(ev, key, fin, atol, rtol);
        sd3_sampler_process_out(fin->data, fin->data, (size_t)sd3_tensor_numel(fin));
        snprintf(key, sizeof key, "%s.final_process_out", name);
        sd3_eval_check(ev, key, fin, atol, rtol);
    }
done:;
    sd3_tensor_t **all[] = {&noise, &cc, &cy, &uc, &uy, &x0, &fin, &sig_t};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(all[i]);
    free(sigmas);
    cJSON_Delete(runs);
    cJSON_Delete(slg_js);
    s_dit_fini(&d);
    return rc;
}
