/*  sd3ctl_eval - `sd3ctl eval COMPONENT --model PATH --vectors FILE [--atol X] [--rtol X]`
 *
 *  The harness of ../shared/spec/TESTVECTORS.md: opens the vectors file, runs one component
 *  through the code path the daemon uses (ctl/sd3ctl_eval_<area>.c), and compares each output
 *  with the stored tensor: one line per tensor, then "N passed, N failed".
 *  Exit 0 when all pass, 1 when one does not, 2 when the file or model is unusable, 77 when
 *  the --precision asked for is not available on this machine (a skip for ctest).  */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd3_precision.h"
#include "sd3ctl.h"

struct sd3_eval {
    const char *component;
    const char *vectors_path;
    const char *model;
    sd3_st_t *vectors; // NULL when the vectors file is not safetensors (tokens.json)
    double atol, rtol; // < 0: not given
    const char *precision; // --precision, or NULL (f32: the golden files' exact path)
    double psnr;           // --psnr: the floor for 8-bit images at precision bf16; < 0: not given
    int passed, failed;
};

const char *
sd3_eval_precision(const sd3_eval_t *ev)
{
    return ev->precision ? ev->precision : "f32";
}

double
sd3_eval_psnr(const sd3_eval_t *ev, double dflt)
{
    return ev->psnr >= 0 ? ev->psnr : dflt;
}

double
sd3_eval_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n)
{
    double se = 0;
    for (size_t i = 0; i < n; i++)
        se += ((double)a[i] - (double)b[i]) * ((double)a[i] - (double)b[i]);
    if (se == 0 || n == 0)
        return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}

const char *
sd3_eval_vectors_path(const sd3_eval_t *ev)
{
    return ev->vectors_path;
}

const sd3_st_t *
sd3_eval_vectors(const sd3_eval_t *ev)
{
    return ev->vectors;
}

const char *
sd3_eval_model(const sd3_eval_t *ev)
{
    return ev->model;
}

double
sd3_eval_atol(const sd3_eval_t *ev, double dflt)
{
    return ev->atol >= 0 ? ev->atol : dflt;
}

double
sd3_eval_rtol(const sd3_eval_t *ev, double dflt)
{
    return ev->rtol >= 0 ? ev->rtol : dflt;
}

void
sd3_eval_record(sd3_eval_t *ev, const char *name, bool ok, const char *fmt, ...)
{
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    printf("%s: %s%s%s\n", name, detail, detail[0] ? " " : "", ok ? "ok" : "FAIL");
    if (ok)
        ev->passed++;
    else
        ev->failed++;
}

sd3_tensor_t *
sd3_eval_input(sd3_eval_t *ev, const char *name, sd3_err_t *err)
{
    sd3_tensor_t view;
    if (!ev->vectors) {
        sd3_err_set(err, SD3_EFORMAT, "%s: not a safetensors vectors file", ev->vectors_path);
        return NULL;
    }
    if (sd3_st_get(ev->vectors, name, &view, err) != 0)
        return NULL;
    if (view.dtype == SD3_I32 || view.dtype == SD3_I64 || view.dtype == SD3_U8) {
        sd3_tensor_t *copy = sd3_tensor_new_err(view.dtype, view.ndim, view.shape, name, err);
        if (copy)
            memcpy(copy->data, view.data, sd3_tensor_nbytes(&view));
        return copy;
    }
    sd3_tensor_t *out = sd3_tensor_new_err(SD3_F32, view.ndim, view.shape, name, err);
    if (out)
        sd3_dtype_to_f32(view.dtype, view.data, out->data, (size_t)sd3_tensor_numel(&view));
    return out;
}

// Reads element i of any dtype as double. `want` tensors are views into the vectors file,
// whose data need not be aligned (a header length that is no multiple of 8): the element
// is copied out byte-wise, never read through a typed pointer.
static double
s_elem(const sd3_tensor_t *t, size_t i)
{
    const uint8_t *p = (const uint8_t *)t->data + i * sd3_dtype_size(t->dtype);
    union {
        float f32;
        double f64;
        int32_t i32;
        int64_t i64;
        uint16_t u16;
    } v;
    memcpy(&v, p, sd3_dtype_size(t->dtype) <= sizeof v ? sd3_dtype_size(t->dtype) : 0);
    switch (t->dtype) {
    case SD3_F32: return v.f32;
    case SD3_F64: return v.f64;
    case SD3_I32: return v.i32;
    case SD3_I64: return (double)v.i64;
    case SD3_U8: return *p;
    case SD3_F16: return sd3_f16_to_f32(v.u16);
    case SD3_BF16: return sd3_bf16_to_f32(v.u16);
    case SD3_F8_E4M3: return sd3_f8e4m3_to_f32(*p);
    default: return NAN;
    }
}

int
sd3_eval_check(sd3_eval_t *ev, const char *name, const sd3_tensor_t *got, double atol,
               double rtol)
{
    sd3_tensor_t want;
    sd3_err_t err = {0};
    char a[96], b[96];
    if (!ev->vectors || sd3_st_get(ev->vectors, name, &want, &err) != 0) {
        sd3_eval_record(ev, name, false, "missing from %s", ev->vectors_path);
        return 1;
    }
    if (!got) {
        sd3_eval_record(ev, name, false, "not produced");
        return 1;
    }
    if (sd3_tensor_numel(got) != sd3_tensor_numel(&want)) {
        sd3_eval_record(ev, name, false, "shape %s, want %s",
                        sd3_shape_str(got->ndim, got->shape, a, sizeof a),
                        sd3_shape_str(want.ndim, want.shape, b, sizeof b));
        return 1;
    }
    size_t n = (size_t)sd3_tensor_numel(&want);
    double max_abs = 0, max_want = 0;
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        double g = s_elem(got, i), w = s_elem(&want, i);
        double d = fabs(g - w);
        if (isnan(g) != isnan(w) || (!isnan(w) && isinf(w) != isinf(g)))
            d = INFINITY;
        else if (isnan(w) || (isinf(w) && g == w))
            d = 0;
        if (d > max_abs)
            max_abs = d;
        if (fabs(w) > max_want && !isinf(w))
            max_want = fabs(w);
        if (!(d <= atol + rtol * fabs(w)))
            ok = false;
    }
    double max_rel = max_want > 0 ? max_abs / max_want : max_abs;
    sd3_eval_record(ev, name, ok, "max_abs=%.3g max_rel=%.3g atol=%.3g%s", max_abs, max_rel,
                    atol, rtol > 0 ? " rtol>0" : "");
    return ok ? 0 : 1;
}

static const struct {
    const char *name;
    sd3_eval_fn fn;
} s_components[] = {
    {"noise", sd3_eval_noise},           {"schedule", sd3_eval_schedule},
    {"tokenize", sd3_eval_tokenize},     {"clip_l", sd3_eval_clip_l},
    {"clip_g", sd3_eval_clip_g},         {"t5", sd3_eval_t5},
    {"cond", sd3_eval_cond},             {"mmdit", sd3_eval_mmdit},
    {"sampler", sd3_eval_sampler},       {"vae_decode", sd3_eval_vae_decode},
    {"vae_encode", sd3_eval_vae_encode}, {"pipeline", sd3_eval_pipeline},
};

static void
s_usage(void)
{
    fprintf(stderr, "usage: sd3ctl eval COMPONENT --vectors FILE [--model PATH] [--atol X] "
                    "[--rtol X] [--precision f32|bf16 [--psnr DB]]\ncomponents:");
    for (size_t i = 0; i < sizeof s_components / sizeof s_components[0]; i++)
        fprintf(stderr, " %s", s_components[i].name);
    fprintf(stderr, "\n");
}

static int
s_parse_tol(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= 0) || isinf(v))
        return -1;
    *out = v;
    return 0;
}

int
sd3ctl_eval(int argc, char **argv)
{
    sd3_eval_t ev = {.atol = -1, .rtol = -1, .psnr = -1};
    sd3_eval_fn fn = NULL;
    sd3_err_t err = {0};
    int rc = 2;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            s_usage();
            return 0;
        } else if (!strcmp(arg, "--model") && has_val) {
            ev.model = argv[++i];
        } else if (!strcmp(arg, "--vectors") && has_val) {
            ev.vectors_path = argv[++i];
        } else if (!strcmp(arg, "--precision") && has_val) {
            int prec;
            if (sd3_precision_parse(argv[++i], &prec, &err) != 0 || prec < 0) {
                fprintf(stderr, "sd3ctl eval: --precision '%s': want f32 or bf16\n", argv[i]);
                return 2;
            }
            ev.precision = argv[i];
        } else if (!strcmp(arg, "--atol") && has_val) {
            if (s_parse_tol(argv[++i], &ev.atol) != 0) {
                fprintf(stderr, "sd3ctl eval: --atol '%s' is not a non-negative number\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(arg, "--psnr") && has_val) {
            if (s_parse_tol(argv[++i], &ev.psnr) != 0) {
                fprintf(stderr, "sd3ctl eval: --psnr '%s' is not a non-negative number\n", argv[i]);
                return 2;
            }
        } else if (!strcmp(arg, "--rtol") && has_val) {
            if (s_parse_tol(argv[++i], &ev.rtol) != 0) {
                fprintf(stderr, "sd3ctl eval: --rtol '%s' is not a non-negative number\n", argv[i]);
                return 2;
            }
        } else if (arg[0] != '-' && !ev.component) {
            ev.component = arg;
        } else {
            fprintf(stderr, "sd3ctl eval: unexpected argument '%s'\n", arg);
            s_usage();
            return 2;
        }
    }
    if (!ev.component || !ev.vectors_path) {
        s_usage();
        return 2;
    }
    for (size_t i = 0; i < sizeof s_components / sizeof s_components[0]; i++)
        if (!strcmp(ev.component, s_components[i].name))
            fn = s_components[i].fn;
    if (!fn) {
        fprintf(stderr, "sd3ctl eval: unknown component '%s'\n", ev.component);
        s_usage();
        return 2;
    }
    size_t len = strlen(ev.vectors_path);
    if (len >= 12 && !strcmp(ev.vectors_path + len - 12, ".safetensors")) {
        ev.vectors = sd3_st_open(ev.vectors_path, &err);
        if (!ev.vectors)
            goto fail;
    }
    if (fn(&ev, &err) != 0)
        goto fail;
    printf("%d passed, %d failed\n", ev.passed, ev.failed);
    rc = ev.failed || ev.passed == 0 ? 1 : 0;
    if (ev.passed == 0 && ev.failed == 0)
        fprintf(stderr, "sd3ctl eval %s: nothing was compared\n", ev.component);
    sd3_st_destroy(&ev.vectors);
    return rc;
fail:
    fprintf(stderr, "sd3ctl eval %s: %s\n", ev.component, err.msg[0] ? err.msg : "failed");
    sd3_st_destroy(&ev.vectors);
    return err.code == SD3_ENOTSUP && ev.precision ? 77 : 2; // 77: no such precision here
}
