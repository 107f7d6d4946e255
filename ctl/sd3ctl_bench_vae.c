/*  sd3ctl_bench_vae - `sd3ctl bench vae`: seconds, GFLOP/s and peak memory of a VAE decode
 *  (and encode) at a given image size
 *
 *    sd3ctl bench vae [--size N | --width W --height H] [--model PATH] [--threads N]
 *                     [--backend cpu] [--no-encode] [--tile T --overlap O]
 *
 *  Without --model it writes a VAE of the released architecture (levels 128/256/512/512,
 *  16 latent channels, 84M parameters, f16) with random weights to a temporary file and
 *  uses that: speed does not depend on the values. FLOPs are counted from the architecture
 *  (convolutions and the mid attention; norms and activations are not counted) and
 *  compared with a plain OpenBLAS sgemm measured now (sd3_bench_sgemm_peak).
 *  Prints figures; it is not a test.  */
#include "sd3_clock.h"
#include "sd3_vae.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double
s_conv(double ci, double co, double k, double h, double w)
{
    return 2.0 * h * w * co * ci * k * k;
}

static double
s_res(double ci, double co, double h, double w)
{
    return s_conv(ci, co, 3, h, w) + s_conv(co, co, 3, h, w) +
           (ci != co ? s_conv(ci, co, 1, h, w) : 0);
}

static double
s_mid(double c, double h, double w)
{
    double n = h * w;
    // two resblocks; q, k, v, proj_out; q k^T and p v
    return 2 * s_res(c, c, h, w) + 4 * 2.0 * n * c * c + 4.0 * n * n * c;
}

// FLOPs of one decode of a latent h x w (MODEL.md §9 gives 10.5 TFLOP at 1024 for SD3).
static double
s_decode_flops(const sd3_vae_config_t *cfg, double h, double w)
{
    int n = cfg->n_levels;
    double top = cfg->channels[n - 1], f = 0, ci = top;
    f += s_conv(cfg->z_channels, top, 3, h, w) + s_mid(top, h, w);
    for (int i = n - 1; i >= 0; i--) {
        double co = cfg->channels[i];
        for (int j = 0; j < cfg->dec_blocks[i]; j++)
            f += s_res(j == 0 ? ci : co, co, h, w);
        if (i > 0 && cfg->factor > 1) { // released layout: upsample on every level but 0
            h *= 2, w *= 2;
            f += s_conv(co, co, 3, h, w);
        }
        ci = co;
    }
    return f + s_conv(cfg->channels[0], cfg->image_channels, 3, h, w);
}

static double
s_encode_flops(const sd3_vae_config_t *cfg, double h, double w)
{
    int n = cfg->n_levels;
    double top = cfg->channels[n - 1], ci = cfg->channels[0], f = 0;
    f += s_conv(cfg->image_channels, ci, 3, h, w);
    for (int i = 0; i < n; i++) {
        double co = cfg->channels[i];
        for (int j = 0; j < cfg->enc_blocks[i]; j++)
            f += s_res(j == 0 ? ci : co, co, h, w);
        if (i < n - 1 && cfg->factor > 1) {
            h /= 2, w /= 2;
            f += s_conv(co, co, 3, h, w);
        }
        ci = co;
    }
    return f + s_mid(top, h, w) + s_conv(top, 2.0 * cfg->z_channels, 3, h, w);
}

static void
s_usage(void)
{
    fprintf(stderr, "usage: sd3ctl bench vae [--size N | --width W --height H] [--model PATH] "
                    "[--threads N] [--backend cpu] [--no-encode] [--tile T --overlap O] "
                    "[--precision f32|bf16|auto]\n");
}

int
sd3_bench_vae(int argc, char **argv)
{
    int width = 1024, height = 1024, threads = 0, rc = 1;
    bool encode = true;
    const char *model = NULL, *backend = "cpu", *precision = NULL; // auto
    sd3_vae_tile_t tile = {0, 0};
    char tmp[] = "/tmp/sd3-bench-vae-XXXXXX";
    bool made = false;
    sd3_err_t err = {0};
    sd3_backend_t *be = NULL;
    sd3_vae_t *vae = NULL;
    sd3_tensor_t *z = NULL, *image = NULL, *moments = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool v = i + 1 < argc;
        if (!strcmp(a, "--size") && v) {
            if (sd3_bench_arg_int("vae", "--size", argv[++i], 8, 16384, &width) != 0)
                return 2;
            height = width;
        } else if (!strcmp(a, "--width") && v) {
            if (sd3_bench_arg_int("vae", "--width", argv[++i], 8, 16384, &width) != 0)
                return 2;
        } else if (!strcmp(a, "--height") && v) {
            if (sd3_bench_arg_int("vae", "--height", argv[++i], 8, 16384, &height) != 0)
                return 2;
        } else if (!strcmp(a, "--model") && v)
            model = argv[++i];
        else if (!strcmp(a, "--threads") && v) {
            if (sd3_bench_arg_int("vae", "--threads", argv[++i], 0, 1024, &threads) != 0)
                return 2;
        } else if (!strcmp(a, "--backend") && v)
            backend = argv[++i];
        else if (!strcmp(a, "--precision") && v)
            precision = argv[++i];
        else if (!strcmp(a, "--tile") && v) {
            if (sd3_bench_arg_int("vae", "--tile", argv[++i], 0, 2048, &tile.tile) != 0)
                return 2;
        } else if (!strcmp(a, "--overlap") && v) {
            if (sd3_bench_arg_int("vae", "--overlap", argv[++i], 0, 2048, &tile.overlap) != 0)
                return 2;
        } else if (!strcmp(a, "--no-encode"))
            encode = false;
        else {
            s_usage();
            return 2;
        }
    }
    if (width < 8 || height < 8 || width % 8 || height % 8 || width > SD3_VAE_MAX_SIDE ||
        height > SD3_VAE_MAX_SIDE || threads < 0) {
        fprintf(stderr, "sd3ctl bench vae: size %dx%d: want multiples of 8 up to %d\n", width,
                height, SD3_VAE_MAX_SIDE);
        return 2;
    }
    double peak = sd3_bench_sgemm_peak(1024);
    if (!model) {
        int fd = mkstemp(tmp);
        if (fd < 0) {
            perror("sd3ctl bench vae: temporary file");
            return 2;
        }
        close(fd);
        made = true;
        double t0 = sd3_now_s();
        if (sd3_vae_write_random(tmp, (int[]){128, 256, 512, 512}, 4, 16, SD3_F16, 1, &err))
            goto fail;
        fprintf(stderr, "random real-size VAE written to %s in %.1f s\n", tmp, sd3_now_s() - t0);
        model = tmp;
    }
    double bpeak = sd3_bench_bf16_peak(2048);
    if (!(be = sd3_backend_new(backend, threads, &err)) ||
        sd3_backend_set_precision(be, precision, &err) != 0 || !(vae = sd3_vae_open(model, be, &err)))
        goto fail;
    const sd3_vae_config_t *cfg = sd3_vae_config(vae);
    int f = cfg->factor, h = height / f, w = width / f;
    printf("vae: %s, %d levels [%d..%d ch], %.1fM params, backend %s precision %s threads %d, "
           "sgemm peak %.1f GFLOP/s, bf16 peak %.1f GFLOP/s\n",
           made ? "random real-size" : model, cfg->n_levels, cfg->channels[0],
           cfg->channels[cfg->n_levels - 1], (double)cfg->n_params * 1e-6, be->ops->name,
           sd3_precision_name(be->precision), be->n_threads, peak, bpeak);
    if (!(z = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, cfg->z_channels, h, w}, "z", &err)) ||
        !(image = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 3, height, width}, "image", &err)))
        goto fail;
    unsigned long long s = 1;
    for (int64_t i = 0; i < sd3_tensor_numel(z); i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        sd3_tensor_f32(z)[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    if (cfg->has_decoder) {
        double t0 = sd3_now_s();
        if (sd3_vae_decode(vae, z, image, &tile, &err) != 0)
            goto fail;
        double dt = sd3_now_s() - t0, fl = s_decode_flops(cfg, h, w);
        printf("decode %dx%d%s: %.2f s, %.2f TFLOP, %.1f GFLOP/s (%.0f%% of sgemm peak), "
               "peak RSS %.0f MiB\n",
               width, height, tile.tile ? " (tiled)" : "", dt, fl * 1e-12, fl / dt * 1e-9,
               100.0 * fl / dt * 1e-9 / (peak > 0 ? peak : 1),
               (double)sd3_bench_rss_peak() / (1 << 20));
        fflush(stdout); // a long run shows each figure as it comes
    }
    if (encode && cfg->has_encoder) {
        if (!(moments = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 2 * cfg->z_channels, h, w},
                                           "moments", &err)))
            goto fail;
        double t0 = sd3_now_s();
        if (sd3_vae_encode_moments(vae, image, moments, &err) != 0)
            goto fail;
        double dt = sd3_now_s() - t0, fl = s_encode_flops(cfg, height, width);
        printf("encode %dx%d: %.2f s, %.2f TFLOP, %.1f GFLOP/s (%.0f%% of sgemm peak), "
               "peak RSS %.0f MiB\n",
               width, height, dt, fl * 1e-12, fl / dt * 1e-9,
               100.0 * fl / dt * 1e-9 / (peak > 0 ? peak : 1),
               (double)sd3_bench_rss_peak() / (1 << 20));
        fflush(stdout); // a long run shows each figure as it comes
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "sd3ctl bench vae: %s\n", err.msg[0] ? err.msg : "failed");
    rc = 2;
done:
    sd3_tensor_destroy(&z);
    sd3_tensor_destroy(&image);
    sd3_tensor_destroy(&moments);
    sd3_vae_destroy(&vae);
    sd3_backend_destroy(&be);
    if (made)
        remove(tmp);
    return rc;
}
