/*  sd3ctl_eval_vae - `sd3ctl eval vae_decode|vae_encode` (TESTVECTORS-enc.md §5)
 *
 *  Runs stages/vae on the vectors' inputs and compares every `out.*` tensor of the file
 *  with what the VAE produced (intermediates through the VAE's tap): a stored output the
 *  code does not produce fails. Sizes and shapes come from the file, never from constants.
 *  The model is --model, else the vectors' `weights` metadata beside the vectors file.
 *  The backend is $SD3_BACKEND (default "cpu").  */
#include "sd3_vae.h"
#include "sd3ctl.h"

#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_TAPS 32

typedef struct {
    char name[S_MAX_TAPS][48];
    sd3_tensor_t *t[S_MAX_TAPS];
    int n;
} s_outs_t;

// Stores a copy under its vectors name: "dec.up.3" -> "out.up.3".
static void
s_outs_put(s_outs_t *outs, const char *name, sd3_tensor_t *t)
{
    if (outs->n == S_MAX_TAPS || !t) {
        sd3_tensor_destroy(&t);
        return;
    }
    snprintf(outs->name[outs->n], sizeof outs->name[0], "out.%s", name);
    outs->t[outs->n++] = t;
}

static void
s_tap(void *user, const char *name, const sd3_tensor_t *t)
{
    const char *dot = strchr(name, '.'); // drop "dec." / "enc."
    s_outs_put(user, dot ? dot + 1 : name, sd3_tensor_clone(t));
}

static const sd3_tensor_t *
s_outs_get(const s_outs_t *outs, const char *name)
{
    for (int i = 0; i < outs->n; i++)
        if (!strcmp(outs->name[i], name))
            return outs->t[i];
    return NULL;
}

static void
s_outs_fini(s_outs_t *outs)
{
    for (int i = 0; i < outs->n; i++)
        sd3_tensor_destroy(&outs->t[i]);
    outs->n = 0;
}

// The model path: --model, else metadata `weights` relative to the vectors file.
static int
s_model_path(sd3_eval_t *ev, char *buf, size_t cap, sd3_err_t *err)
{
    const char *model = sd3_eval_model(ev);
    if (model) {
        snprintf(buf, cap, "%s", model);
        return 0;
    }
    const char *weights = sd3_st_metadata(sd3_eval_vectors(ev), "weights");
    if (!weights)
        return sd3_err_set(err, SD3_EINVAL, "%s: no --model and no 'weights' metadata",
                           sd3_eval_vectors_path(ev));
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", sd3_eval_vectors_path(ev));
    snprintf(buf, cap, "%s/%s", dirname(dir), weights);
    return 0;
}

static int
s_open(sd3_eval_t *ev, sd3_backend_t **be_p, sd3_vae_t **vae_p, sd3_err_t *err)
{
    char path[1200];
    const char *backend = getenv("SD3_BACKEND");
    if (!sd3_eval_vectors(ev))
        return sd3_err_set(err, SD3_EFORMAT, "%s: not a safetensors vectors file",
                           sd3_eval_vectors_path(ev));
    if (s_model_path(ev, path, sizeof path, err) != 0)
        return err->code;
    if (!(*be_p = sd3_backend_new(backend ? backend : "cpu", 0, err)) ||
        sd3_backend_set_precision(*be_p, sd3_eval_precision(ev), err) != 0)
        return err->code;
    if (!(*vae_p = sd3_vae_open(path, *be_p, err)))
        return err->code;
    return 0;
}

// out.image_u8 rule (TESTVECTORS.md): each byte within +-1 and at most 0.1% of bytes off.
static void
s_check_u8(sd3_eval_t *ev, const char *name, const sd3_tensor_t *got, double max_frac)
{
    sd3_tensor_t want;
    char a[64], b[64];
    if (sd3_st_get(sd3_eval_vectors(ev), name, &want, NULL) != 0 || want.dtype != SD3_U8) {
        sd3_eval_record(ev, name, false, "missing (or not U8) in %s", sd3_eval_vectors_path(ev));
        return;
    }
    if (!got || got->dtype != SD3_U8 || sd3_tensor_numel(got) != sd3_tensor_numel(&want)) {
        sd3_eval_record(ev, name, false, "shape %s, want %s",
                        got ? sd3_shape_str(got->ndim, got->shape, a, sizeof a) : "none",
                        sd3_shape_str(want.ndim, want.shape, b, sizeof b));
        return;
    }
    size_t n = (size_t)sd3_tensor_numel(&want), off = 0;
    int max_diff = 0;
    const uint8_t *g = got->data, *w = want.data;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)g[i] - (int)w[i]);
        off += d != 0;
        if (d > max_diff)
            max_diff = d;
    }
    double psnr = sd3_eval_psnr_u8(g, w, n);
    if (!strcmp(sd3_eval_precision(ev), "bf16")) { // measured floor (ARCHITECTURE.md)
        double floor = sd3_eval_psnr(ev, 30.0);
        sd3_eval_record(ev, name, psnr >= floor, "psnr=%.2f dB (floor %.1f) max_diff=%d", psnr,
                        floor, max_diff);
        return;
    }
    bool ok = max_diff <= 1 && (double)off <= max_frac * (double)n;
    sd3_eval_record(ev, name, ok, "max_diff=%d off=%zu/%zu (allowed +-1 on %.2f%%) psnr=%.2f dB",
                    max_diff, off, n, max_frac * 100, psnr);
}

// Compares every "out.*" tensor of the file with `outs` (U8 ones by the byte rule).
static void
s_check_all(sd3_eval_t *ev, const s_outs_t *outs, double atol, double rtol)
{
    const sd3_st_t *st = sd3_eval_vectors(ev);
    for (size_t i = 0; i < sd3_st_count(st); i++) {
        const char *name = sd3_st_name(st, i);
        sd3_tensor_t want;
        if (strncmp(name, "out.", 4) != 0 || sd3_st_get(st, name, &want, NULL) != 0)
            continue;
        if (want.dtype == SD3_U8)
            s_check_u8(ev, name, s_outs_get(outs, name), 0.001);
        else
            sd3_eval_check(ev, name, s_outs_get(outs, name), atol, rtol);
    }
}

int
sd3_eval_vae_decode(sd3_eval_t *ev, sd3_err_t *err)
{
    sd3_backend_t *be = NULL;
    sd3_vae_t *vae = NULL;
    sd3_tensor_t *latent = NULL, *pipeline = NULL, *image = NULL, *rgb = NULL;
    s_outs_t outs = {0};
    double atol = sd3_eval_atol(ev, 2e-4), rtol = sd3_eval_rtol(ev, 0);
    int rc;
    if ((rc = s_open(ev, &be, &vae, err)) != 0)
        goto done;
    const sd3_st_t *st = sd3_eval_vectors(ev);
    // The sampler's latent, when stored, goes through the pipeline's own call (process_out
    // inside); in.latent (VAE space) is then checked against process_out of it.
    if (sd3_st_has(st, "in.latent_pipeline")) {
        if (!(pipeline = sd3_eval_input(ev, "in.latent_pipeline", err))) {
            rc = err->code;
            goto done;
        }
        if (!(latent = sd3_tensor_clone(pipeline))) {
            rc = sd3_err_set(err, SD3_ENOMEM, "latent copy");
            goto done;
        }
        sd3_vae_process_out(latent->data, (size_t)sd3_tensor_numel(latent));
        if (sd3_st_has(st, "in.latent"))
            sd3_eval_check(ev, "in.latent", latent, 1e-6, 0);
    }
    // The decoder runs on the stored VAE-space latent when there is one.
    if (sd3_st_has(st, "in.latent")) {
        sd3_tensor_destroy(&latent);
        if (!(latent = sd3_eval_input(ev, "in.latent", err))) {
            rc = err->code;
            goto done;
        }
    }
    if (!latent || latent->ndim != 4) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: no 4-D 'in.latent' or 'in.latent_pipeline'",
                         sd3_eval_vectors_path(ev));
        goto done;
    }
    const sd3_vae_config_t *cfg = sd3_vae_config(vae);
    int64_t f = cfg->factor;
    if (!(image = sd3_tensor_new_err(SD3_F32, 4,
                                     (int64_t[]){latent->shape[0], cfg->image_channels,
                                                 f * latent->shape[2], f * latent->shape[3]},
                                     "image", err))) {
        rc = err->code;
        goto done;
    }
    sd3_vae_set_tap(vae, s_tap, &outs);
    if ((rc = sd3_vae_decode(vae, latent, image, NULL, err)) != 0)
        goto done;
    sd3_vae_set_tap(vae, NULL, NULL);
    s_outs_put(&outs, "image", sd3_tensor_clone(image));
    if (pipeline && latent->shape[0] == 1) {
        if (!(rgb = sd3_vae_decode_rgb8(vae, pipeline, NULL, err))) {
            rc = err->code;
            goto done;
        }
    } else if ((rgb = sd3_tensor_new_err(
                    SD3_U8, 3, (int64_t[]){image->shape[2], image->shape[3], 3}, "rgb8", err))) {
        sd3_vae_image_to_rgb8(image->data, (int)image->shape[2], (int)image->shape[3], rgb->data);
    }
    s_outs_put(&outs, "image_u8", rgb);
    rgb = NULL;
    s_check_all(ev, &outs, atol, rtol);
    rc = 0;
done:
    s_outs_fini(&outs);
    sd3_tensor_destroy(&latent);
    sd3_tensor_destroy(&pipeline);
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&rgb);
    sd3_vae_destroy(&vae);
    sd3_backend_destroy(&be);
    return rc;
}

int
sd3_eval_vae_encode(sd3_eval_t *ev, sd3_err_t *err)
{
    sd3_backend_t *be = NULL;
    sd3_vae_t *vae = NULL;
    sd3_tensor_t *rgb = NULL, *image = NULL, *noise = NULL, *moments = NULL, *latent = NULL;
    sd3_tensor_t *parts[4] = {NULL, NULL, NULL, NULL}; // mean, logvar, std, sample
    static const char *part_names[4] = {"mean", "logvar", "std", "sample"};
    s_outs_t outs = {0};
    double atol = sd3_eval_atol(ev, 2e-4), rtol = sd3_eval_rtol(ev, 0);
    int rc;
    if ((rc = s_open(ev, &be, &vae, err)) != 0)
        goto done;
    const sd3_vae_config_t *cfg = sd3_vae_config(vae);
    if (!(rgb = sd3_eval_input(ev, "in.image_u8", err)) ||
        !(noise = sd3_eval_input(ev, "in.noise", err))) {
        rc = err->code;
        goto done;
    }
    if (rgb->dtype != SD3_U8 || rgb->ndim != 3 || rgb->shape[2] != 3) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: 'in.image_u8' must be U8 [H, W, 3]",
                         sd3_eval_vectors_path(ev));
        goto done;
    }
    int64_t H = rgb->shape[0], W = rgb->shape[1];
    if (!(image = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 3, H, W}, "image", err))) {
        rc = err->code;
        goto done;
    }
    sd3_vae_rgb8_to_image(rgb->data, (int)H, (int)W, image->data);
    if (sd3_st_has(sd3_eval_vectors(ev), "in.image"))
        sd3_eval_check(ev, "in.image", image, 1e-6, 0);
    if (noise->ndim != 4 || noise->shape[1] != cfg->z_channels) {
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: 'in.noise' is not [1, %d, h, w]",
                         sd3_eval_vectors_path(ev), cfg->z_channels);
        goto done;
    }
    int64_t zshape[4] = {1, cfg->z_channels, noise->shape[2], noise->shape[3]};
    if (!(moments = sd3_tensor_new_err(SD3_F32, 4,
                                       (int64_t[]){1, 2 * cfg->z_channels, zshape[2], zshape[3]},
                                       "moments", err))) {
        rc = err->code;
        goto done;
    }
    for (int i = 0; i < 4; i++)
        if (!(parts[i] = sd3_tensor_new_err(SD3_F32, 4, zshape, part_names[i], err))) {
            rc = err->code;
            goto done;
        }
    sd3_vae_set_tap(vae, s_tap, &outs);
    if ((rc = sd3_vae_encode_moments(vae, image, moments, err)) != 0)
        goto done;
    sd3_vae_set_tap(vae, NULL, NULL);
    if ((rc = sd3_vae_moments_split(moments, noise, parts[0], parts[1], parts[2], parts[3], err)) !=
        0)
        goto done;
    s_outs_put(&outs, "moments", sd3_tensor_clone(moments));
    sd3_tensor_t *latent_mean = sd3_tensor_clone(parts[0]);
    if (latent_mean)
        sd3_vae_process_in(latent_mean->data, (size_t)sd3_tensor_numel(latent_mean));
    s_outs_put(&outs, "latent_mean", latent_mean);
    for (int i = 0; i < 4; i++) {
        s_outs_put(&outs, part_names[i], parts[i]);
        parts[i] = NULL;
    }
    // out.latent through the pipeline's own call (u8 in, sampler-space latent out).
    if (!(latent = sd3_vae_encode_rgb8(vae, rgb, noise, err))) {
        rc = err->code;
        goto done;
    }
    s_outs_put(&outs, "latent", latent);
    latent = NULL;
    s_check_all(ev, &outs, atol, rtol);
    rc = 0;
done:
    s_outs_fini(&outs);
    for (int i = 0; i < 4; i++)
        sd3_tensor_destroy(&parts[i]);
    sd3_tensor_destroy(&rgb);
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&noise);
    sd3_tensor_destroy(&moments);
    sd3_tensor_destroy(&latent);
    sd3_vae_destroy(&vae);
    sd3_backend_destroy(&be);
    return rc;
}
