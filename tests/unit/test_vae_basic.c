/*  test_vae_basic - sd3_vae: the image and latent conversions, config read from shapes,
 *  decode/encode shapes, batch = per-image, determinism, and bad input refused.
 *
 *  Runs on a small random VAE written by sd3_vae_write_random (2 levels, 32 and 64
 *  channels, 4 latent channels), so it needs no golden data; the golden comparison is
 *  tests/cmake/vae.cmake.  */
#include "sd3_safetensors.h"
#include "sd3_test.h"
#include "sd3_vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void
test_conversions(void)
{
    // u8 = trunc(255 * clamp((x+1)/2, 0, 1)): truncation, not rounding.
    float img[3 * 1 * 3] = {-1.0f, 1.0f,   0.999f, // R of 3 pixels
                            3.0f,  -3.0f,  0.0f,   // G
                            NAN,   -0.99f, 0.5f};  // B
    uint8_t rgb[9];
    sd3_vae_image_to_rgb8(img, 1, 3, rgb);
    CHECK(rgb[0] == 0 && rgb[3] == 255 && rgb[6] == 254); // 254.87 -> 254
    CHECK(rgb[1] == 255 && rgb[4] == 0 && rgb[7] == 127); // 127.5 -> 127
    CHECK(rgb[2] == 0 && rgb[5] == 1 && rgb[8] == 191);   // NaN -> 0; 1.275 -> 1; 191.25
    // x = 2 * (u8 / 255) - 1, CHW from HWC
    uint8_t in[6] = {0, 255, 51, 10, 20, 30};
    float x[6];
    sd3_vae_rgb8_to_image(in, 1, 2, x);
    CHECK(x[0] == -1.0f && x[2] == 1.0f && x[4] == 2.0f * (51.0f / 255.0f) - 1.0f);
    CHECK(x[1] == 2.0f * (10.0f / 255.0f) - 1.0f && x[5] == 2.0f * (30.0f / 255.0f) - 1.0f);
    // Latent scale/shift are inverses: process_in(process_out(z)) == z to float precision.
    float z[4] = {-2.5f, 0.0f, 0.0609f, 3.25f}, z0[4];
    memcpy(z0, z, sizeof z);
    sd3_vae_process_out(z, 4);
    CHECK(fabsf(z[1] - 0.0609f) < 1e-7f && fabsf(z[0] - (-2.5f / 1.5305f + 0.0609f)) < 1e-6f);
    sd3_vae_process_in(z, 4);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(fabsf(z[i] - z0[i]) < 1e-6f, "z[%d] %g vs %g", i, z[i], z0[i]);
}

static void
test_moments(void)
{
    sd3_err_t err = {0};
    sd3_tensor_t *m = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 2, 1, 2});
    sd3_tensor_t *noise = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 1, 1, 2});
    sd3_tensor_t *mean = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 1, 1, 2});
    sd3_tensor_t *lv = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 1, 1, 2});
    sd3_tensor_t *sd = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 1, 1, 2});
    sd3_tensor_t *smp = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 1, 1, 2});
    float *mv = m->data;
    mv[0] = 0.5f, mv[1] = -1.0f;   // mean
    mv[2] = 100.0f, mv[3] = -2.0f; // logvar: 100 clamps to 20
    sd3_tensor_f32(noise)[0] = 1e-4f, sd3_tensor_f32(noise)[1] = 2.0f;
    CHECK_MSG(sd3_vae_moments_split(m, noise, mean, lv, sd, smp, &err) == 0, "%s", err.msg);
    CHECK(sd3_tensor_f32(lv)[0] == 20.0f && sd3_tensor_f32(lv)[1] == -2.0f);
    CHECK(sd3_tensor_f32(sd)[0] == expf(10.0f) && sd3_tensor_f32(sd)[1] == expf(-1.0f));
    CHECK(sd3_tensor_f32(smp)[1] == -1.0f + expf(-1.0f) * 2.0f);
    CHECK(sd3_tensor_f32(mean)[0] == 0.5f);
    // wrong output shape
    sd3_tensor_t *bad = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 2, 1, 2});
    CHECK(sd3_vae_moments_split(m, noise, bad, NULL, NULL, NULL, &err) == SD3_EINVAL);
    sd3_tensor_t *tensors[] = {m, noise, mean, lv, sd, smp, bad};
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++)
        sd3_tensor_destroy(&tensors[i]);
}

static void
s_fill(sd3_tensor_t *t, unsigned long long seed)
{
    float *p = t->data;
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        p[i] = sd3_test_randf(&seed) * 1.5f;
}

static void
test_model(const char *path, sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_vae_t *vae = sd3_vae_open(path, be, &err);
    CHECK_MSG(vae, "%s", err.msg);
    if (!vae)
        return;
    const sd3_vae_config_t *cfg = sd3_vae_config(vae);
    CHECK(cfg->n_levels == 2 && cfg->channels[0] == 32 && cfg->channels[1] == 64);
    CHECK(cfg->dec_blocks[0] == 3 && cfg->dec_blocks[1] == 3);
    CHECK(cfg->enc_blocks[0] == 2 && cfg->enc_blocks[1] == 2);
    CHECK(cfg->z_channels == 4 && cfg->image_channels == 3 && cfg->factor == 2);
    CHECK(cfg->has_decoder && cfg->has_encoder && cfg->n_params > 100000);

    // Decode: [2, 4, 5, 6] -> [2, 3, 10, 12]; batch item 1 equals a decode of it alone.
    sd3_tensor_t *z = sd3_tensor_new(SD3_F32, 4, (int64_t[]){2, 4, 5, 6});
    sd3_tensor_t *img = sd3_tensor_new(SD3_F32, 4, (int64_t[]){2, 3, 10, 12});
    sd3_tensor_t *img1 = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 3, 10, 12});
    s_fill(z, 7);
    CHECK_MSG(sd3_vae_decode(vae, z, img, NULL, &err) == 0, "%s", err.msg);
    sd3_tensor_t z1;
    sd3_tensor_view_init(&z1, SD3_F32, 4, (int64_t[]){1, 4, 5, 6}, sd3_tensor_f32(z) + 120);
    CHECK_MSG(sd3_vae_decode(vae, &z1, img1, NULL, &err) == 0, "%s", err.msg);
    double d = sd3_test_maxdiff(sd3_tensor_f32(img) + 360, img1->data, 360);
    CHECK_MSG(d < 1e-5, "batch item 1 differs from its own decode by %g", d);
    double mag = 0;
    for (int i = 0; i < 720; i++)
        mag = fmax(mag, fabs(sd3_tensor_f32(img)[i]));
    CHECK_MSG(mag > 1e-3 && isfinite(mag), "decoded image max |x| %g", mag);
    // Deterministic: same input, same bits.
    sd3_tensor_t *again = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 3, 10, 12});
    CHECK(sd3_vae_decode(vae, &z1, again, NULL, &err) == 0);
    CHECK(!memcmp(again->data, img1->data, sd3_tensor_nbytes(img1)));

    // Bad input: wrong latent channels, wrong output shape, bad tile overlap.
    sd3_tensor_t *zbad = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 5, 6});
    sd3_err_clear(&err);
    CHECK(sd3_vae_decode(vae, zbad, img1, NULL, &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "latent") != NULL, "%s", err.msg);
    sd3_err_clear(&err);
    CHECK(sd3_vae_decode(vae, &z1, img, NULL, &err) == SD3_EINVAL);
    sd3_err_clear(&err);
    CHECK(sd3_vae_decode(vae, &z1, img1, &(sd3_vae_tile_t){4, 4}, &err) == SD3_EINVAL);

    // Pipeline calls: rgb8 out, and rgb8 in -> sampler-space latent.
    sd3_tensor_t zs;
    sd3_tensor_view_init(&zs, SD3_F32, 4, (int64_t[]){1, 4, 5, 6}, z->data);
    sd3_err_clear(&err);
    sd3_tensor_t *rgb = sd3_vae_decode_rgb8(vae, &zs, NULL, &err);
    CHECK_MSG(rgb && rgb->dtype == SD3_U8 && rgb->shape[0] == 10 && rgb->shape[1] == 12 &&
                  rgb->shape[2] == 3,
              "%s", err.msg);
    sd3_tensor_t *noise = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 4, 5, 6});
    s_fill(noise, 11);
    sd3_tensor_t *lat = rgb ? sd3_vae_encode_rgb8(vae, rgb, noise, &err) : NULL;
    CHECK_MSG(lat && lat->shape[1] == 4 && lat->shape[2] == 5 && lat->shape[3] == 6, "%s", err.msg);
    // The encoded latent equals process_in(mean + std * noise) of the moments.
    if (lat) {
        sd3_tensor_t *image = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 3, 10, 12});
        sd3_tensor_t *mom = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 8, 5, 6});
        sd3_tensor_t *smp = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 4, 5, 6});
        sd3_vae_rgb8_to_image(rgb->data, 10, 12, image->data);
        CHECK(sd3_vae_encode_moments(vae, image, mom, &err) == 0);
        CHECK(sd3_vae_moments_split(mom, noise, NULL, NULL, NULL, smp, &err) == 0);
        sd3_vae_process_in(smp->data, 120);
        CHECK(!memcmp(smp->data, lat->data, 120 * sizeof(float)));
        // An image whose size is not a multiple of the factor is refused.
        sd3_tensor_t *odd = sd3_tensor_new(SD3_U8, 3, (int64_t[]){9, 12, 3});
        sd3_err_clear(&err);
        sd3_tensor_t *none = sd3_vae_encode_rgb8(vae, odd, NULL, &err);
        CHECK(!none && err.code == SD3_EINVAL);
        sd3_tensor_destroy(&none);
        sd3_tensor_destroy(&odd);
        sd3_tensor_destroy(&image);
        sd3_tensor_destroy(&mom);
        sd3_tensor_destroy(&smp);
    }
    sd3_tensor_t *all[] = {z, img, img1, again, zbad, rgb, noise, lat};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(&all[i]);
    sd3_vae_destroy(&vae);
}

// A checkpoint missing one tensor fails with SD3_EFORMAT naming it, at first use.
static void
test_missing_tensor(const char *path, const char *dir, sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_st_t *st = sd3_st_open(path, &err);
    CHECK_MSG(st, "%s", err.msg);
    if (!st)
        return;
    size_t n = sd3_st_count(st), k = 0;
    sd3_tensor_t *views = calloc(n, sizeof *views);
    const sd3_tensor_t **ptrs = calloc(n, sizeof *ptrs);
    const char *drop = "first_stage_model.decoder.up.0.block.1.conv2.bias";
    for (size_t i = 0; i < n; i++) {
        const char *name = sd3_st_name(st, i);
        if (strcmp(name, drop) != 0 && sd3_st_get(st, name, &views[k], &err) == 0)
            ptrs[k] = &views[k], k++;
    }
    CHECK(k == n - 1);
    char cut[512];
    snprintf(cut, sizeof cut, "%s/cut.safetensors", dir);
    CHECK_MSG(sd3_st_write_tensors(cut, ptrs, k, NULL, 0, &err) == 0, "%s", err.msg);
    sd3_vae_t *vae = sd3_vae_open(cut, be, &err);
    CHECK_MSG(vae, "%s", err.msg);
    if (vae) {
        sd3_tensor_t *z = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 4, 2, 2});
        sd3_tensor_t *img = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 3, 4, 4});
        sd3_err_clear(&err);
        CHECK(sd3_vae_decode(vae, z, img, NULL, &err) == SD3_EFORMAT);
        CHECK_MSG(strstr(err.msg, "up.0.block.1.conv2.bias") != NULL, "%s", err.msg);
        sd3_tensor_destroy(&z);
        sd3_tensor_destroy(&img);
        sd3_vae_destroy(&vae);
    }
    remove(cut);
    free(views);
    free(ptrs);
    sd3_st_destroy(&st);
}

int
main(void)
{
    test_conversions();
    test_moments();
    sd3_err_t err = {0};
    const char *dir = sd3_test_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/vae-small.safetensors", dir);
    CHECK_MSG(sd3_vae_write_random(path, (int[]){32, 64}, 2, 4, SD3_F16, 1, &err) == 0, "%s",
              err.msg);
    sd3_backend_t *be = sd3_backend_new("cpu", 2, &err);
    CHECK_MSG(be, "%s", err.msg);
    if (be) {
        test_model(path, be);
        test_missing_tensor(path, dir, be);
    }
    sd3_backend_destroy(&be);
    remove(path);
    return TEST_RESULT();
}
