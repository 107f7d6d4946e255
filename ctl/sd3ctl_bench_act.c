/*  sd3ctl_bench_act - `sd3ctl bench cluster --blocks K`: the codecs on real activations
 *
 *  The codec figures on synthetic N(0, 1) data say little about the ratio: what compresses
 *  is the structure of the activations a real model makes. This runs embed + joint blocks
 *  [0, K) of a real-width MMDiT (SD3.5-Large: C = 2432, 38 heads, QK RMSNorm) at batch 2
 *  (CFG) on random inputs, one layer range per block (sd3_mmdit_new(k, k+1), the loader a
 *  pipeline stage uses), and after each block encodes the x [B, N, C], ctx [B, L, C] and
 *  c [B, C] a range boundary there would send, with every codec and wire dtype
 *  (sd3_codec_encode, the wire's own codec; the envelope adds a few hundred bytes).
 *
 *  Without --model the weights are random (sd3_wrandom, the source of `sd3ctl mkmodel`)
 *  in bf16 and only what the run needs is written: the embedders, the final layer, blocks
 *  [0, K) under their real names, and the one tensor of block 37 (x_block.attn.qkv.weight)
 *  that the configuration detection looks for to confirm the depth; a layer range never
 *  touches the other blocks. K = 2: 1.1 GB instead of the 16 GB of the whole model. The file
 *  goes into a fresh /tmp/sd3bench-act.XXXXXX folder that is removed at the end (--keep
 *  keeps it and prints its path; --model reuses it or any other checkpoint).
 *
 *  Random weights are not trained ones (no massive-activation channels grown by training),
 *  so the ratios are those of a real-width network on its first steps, not a promise for
 *  the released weights; with --model sd3.5_large.safetensors the same run measures those.  */
#include "sd3_arch.h"
#include "sd3_backend.h"
#include "sd3_clock.h"
#include "sd3_codec.h"
#include "sd3_mmdit.h"
#include "sd3_rng.h"
#include "sd3_weights.h"
#include "sd3_weights_write.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---- the partial random model ----------------------------------------------------------

// The random source of mkmodel, seen through a filter: MMDiT tensors outside joint_blocks,
// blocks [0, blocks), and the depth probe of the last block.
typedef struct {
    sd3_wsource_t inner;
    int blocks, depth;
    size_t *keep; // indices of the inner MMDiT tensors kept
    size_t n_keep;
} s_filter_t;

static bool
s_wanted(const char *name, int blocks, int depth)
{
    int b = -1, used = 0;
    if (sscanf(name, "joint_blocks.%d.%n", &b, &used) != 1 || used == 0)
        return true;
    if (b < blocks)
        return true;
    return b == depth - 1 && !strcmp(name + used, "x_block.attn.qkv.weight");
}

static size_t
s_f_count(void *ud, sd3_component_t comp)
{
    s_filter_t *f = ud;
    return comp == SD3_COMP_MMDIT ? f->n_keep : 0;
}

static int
s_f_info(void *ud, sd3_component_t comp, size_t i, const char **name, int *ndim, int64_t *shape,
         sd3_dtype_t *dtype)
{
    s_filter_t *f = ud;
    if (comp != SD3_COMP_MMDIT || i >= f->n_keep)
        return SD3_EINVAL;
    return f->inner.info(f->inner.ud, comp, f->keep[i], name, ndim, shape, dtype);
}

static int
s_f_read(void *ud, sd3_component_t comp, const char *name, size_t off, size_t n, sd3_dtype_t dtype,
         void *dst, sd3_err_t *err)
{
    s_filter_t *f = ud;
    return f->inner.read(f->inner.ud, comp, name, off, n, dtype, dst, err);
}

// Writes the part of a random `arch_name` that blocks [0, blocks) need to `path`.
static int
s_write_partial(const char *path, const char *arch_name, int blocks, sd3_err_t *err)
{
    const sd3_arch_t *arch = sd3_arch_find(arch_name);
    sd3_wrandom_t *rnd = NULL;
    s_filter_t f = {0};
    int rc;
    if (!arch)
        return sd3_err_set(err, SD3_EINVAL, "bench act: unknown architecture '%s' (%s)", arch_name,
                           sd3_arch_names());
    if (blocks < 1 || blocks >= arch->mmdit.depth)
        return sd3_err_set(err, SD3_EINVAL, "bench act: --blocks %d, want 1..%d", blocks,
                           arch->mmdit.depth - 1);
    if (!(rnd = sd3_wrandom_new(arch, 1, SD3_BF16, err)))
        return err->code ? err->code : SD3_ENOMEM;
    f.inner = sd3_wrandom_source(rnd);
    f.blocks = blocks;
    f.depth = arch->mmdit.depth;
    size_t n = f.inner.count(f.inner.ud, SD3_COMP_MMDIT);
    if (!(f.keep = calloc(n ? n : 1, sizeof *f.keep))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "bench act: out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        int nd;
        int64_t shape[SD3_MAX_DIM];
        sd3_dtype_t dt;
        if ((rc = f.inner.info(f.inner.ud, SD3_COMP_MMDIT, i, &name, &nd, shape, &dt)) != 0) {
            sd3_err_set(err, rc, "bench act: tensor %zu of the architecture", i);
            goto done;
        }
        if (s_wanted(name, blocks, f.depth))
            f.keep[f.n_keep++] = i;
    }
    sd3_wsource_t src = {&f, s_f_count, s_f_info, s_f_read, NULL};
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        opts.want[c] = c == SD3_COMP_MMDIT;
    opts.layout = SD3_LAYOUT_SINGLE;
    opts.dtype = SD3_BF16;
    opts.origin = "sd3ctl bench cluster --blocks (random weights, blocks [0,K) + depth probe)";
    rc = sd3_weights_write(&src, &opts, path, err);
done:
    free(f.keep);
    sd3_wrandom_destroy(&rnd);
    return rc;
}

// ---- measuring ---------------------------------------------------------------------------

static void
s_stats(const sd3_tensor_t *t, double *rms, double *max_abs)
{
    const float *v = t->data;
    size_t n = (size_t)sd3_tensor_numel(t);
    double ss = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double a = fabs((double)v[i]);
        ss += a * a;
        mx = a > mx ? a : mx;
    }
    *rms = n ? sqrt(ss / (double)n) : 0;
    *max_abs = mx;
}

// Frame bytes and thread-CPU seconds of encoding + decoding t; a lossless f32 frame is
// checked to decode bit-identical.
static int
s_code(const sd3_tensor_t *t, const sd3_codec_opts_t *opts, size_t *len, double *enc_s,
       double *dec_s, sd3_err_t *err)
{
    sd3_codec_desc_t desc;
    void *frame = NULL;
    sd3_tensor_t *back = NULL;
    double t0 = sd3_clock_s(CLOCK_THREAD_CPUTIME_ID);
    if (sd3_codec_encode(t, opts, true, &desc, &frame, len, err) != 0)
        return err->code;
    double t1 = sd3_clock_s(CLOCK_THREAD_CPUTIME_ID);
    int rc = sd3_codec_decode(&desc, frame, *len, 0, &back, err);
    double t2 = sd3_clock_s(CLOCK_THREAD_CPUTIME_ID);
    if (rc == 0 && opts->wire_dtype == SD3_F32 &&
        memcmp(back->data, t->data, sd3_tensor_nbytes(t)) != 0)
        rc = sd3_err_set(err, SD3_EINTERNAL, "bench act: '%s' changed in a lossless round trip",
                         t->name ? t->name : "?");
    free(frame);
    sd3_tensor_destroy(&back);
    *enc_s += t1 - t0;
    *dec_s += t2 - t1;
    return rc;
}

static sd3_tensor_t *
s_download(sd3_backend_t *be, const sd3_tensor_t *t, const char *name, sd3_err_t *err)
{
    sd3_tensor_t *h = sd3_tensor_new_err(SD3_F32, t->ndim, t->shape, name, err);
    if (h && be->ops->download(be, h, t, err) != 0)
        sd3_tensor_destroy(&h);
    if (h)
        h->name = name;
    return h;
}

// The boundary after block `block`: statistics and every codec / wire dtype.
static int
s_boundary(sd3_backend_t *be, const sd3_mmdit_act_t *act, int block, int level, sd3_err_t *err)
{
    sd3_tensor_t *h[3] = {NULL, NULL, NULL};
    int rc = 0;
    if (!act->ctx)
        return sd3_err_set(err, SD3_EINVAL, "bench act: block %d is the last (no context)", block);
    if (!(h[0] = s_download(be, act->x, "x", err)) ||
        !(h[1] = s_download(be, act->ctx, "ctx", err)) ||
        !(h[2] = s_download(be, act->c, "c", err))) {
        rc = err->code;
        goto done;
    }
    size_t f32[3], total32 = 0;
    double rms[3], mx[3];
    for (int i = 0; i < 3; i++) {
        f32[i] = sd3_tensor_nbytes(h[i]);
        total32 += f32[i];
        s_stats(h[i], &rms[i], &mx[i]);
    }
    printf("boundary after block %d (what a range [0,%d) sends): %.2f MiB f32; rms / max|v|: "
           "x %.3g / %.4g, ctx %.3g / %.4g, c %.3g / %.4g\n",
           block, block + 1, (double)total32 / (1 << 20), rms[0], mx[0], rms[1], mx[1], rms[2],
           mx[2]);
    printf("  %-4s %-13s %9s %7s %7s %7s %7s %9s %9s\n", "wire", "codec", "MiB/step", "ratio", "x",
           "ctx", "c", "enc MB/s", "dec MB/s");
    const sd3_dtype_t wires[3] = {SD3_F32, SD3_BF16, SD3_F16};
    for (int w = 0; w < 3; w++)
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_codec_opts_t opts = {
                .codec = (sd3_codec_t)c, .wire_dtype = wires[w], .level = level};
            size_t len[3], total = 0;
            double enc = 0, dec = 0;
            for (int i = 0; i < 3; i++) {
                if ((rc = s_code(h[i], &opts, &len[i], &enc, &dec, err)) != 0)
                    goto done;
                total += len[i];
            }
            printf("  %-4s %-13s %9.2f %7.3f %7.3f %7.3f %7.3f %9.0f %9.0f\n",
                   sd3_dtype_name(wires[w]), sd3_codec_name((sd3_codec_t)c),
                   (double)total / (1 << 20), (double)total32 / (double)total,
                   (double)f32[0] / (double)len[0], (double)f32[1] / (double)len[1],
                   (double)f32[2] / (double)len[2], (double)total32 / enc * 1e-6,
                   (double)total32 / dec * 1e-6);
        }
done:
    for (int i = 0; i < 3; i++)
        sd3_tensor_destroy(&h[i]);
    return rc;
}

int
sd3_bench_act(const sd3_bench_act_opts_t *o)
{
    sd3_err_t err = {0};
    char dir[] = "/tmp/sd3bench-act.XXXXXX", path[256] = "";
    bool made_dir = false, wrote = false;
    sd3_model_t *mdl = NULL;
    sd3_weights_t *w = NULL;
    sd3_backend_t *be = NULL;
    sd3_mmdit_t *mm = NULL;
    sd3_tensor_t *lat = NULL, *y = NULL, *ctx = NULL;
    sd3_mmdit_act_t act = {0};
    int rc = 2;
    const char *model = o->model, *arch_name = o->arch ? o->arch : "sd3.5-large";
    if (!model) {
        if (!mkdtemp(dir)) {
            sd3_err_set(&err, SD3_EIO, "bench act: cannot make a folder under /tmp");
            goto done;
        }
        made_dir = true;
        snprintf(path, sizeof path, "%s/%s-blocks0-%d.safetensors", dir, arch_name, o->blocks);
        double t0 = sd3_bench_wall();
        wrote = true;
        if (s_write_partial(path, arch_name, o->blocks, &err) != 0)
            goto done;
        fprintf(stderr, "bench act: random %s blocks [0,%d) + embedders written to %s in %.1f s\n",
                arch_name, o->blocks, path, sd3_bench_wall() - t0);
        model = path;
    }
    if (!(mdl = sd3_model_open(model, &err)) || !(w = sd3_weights_open(mdl, SD3_COMP_MMDIT, &err)))
        goto done;
    sd3_mmdit_config_t cfg;
    if (sd3_mmdit_config_detect(w, &cfg, &err) != 0)
        goto done;
    if (o->blocks < 1 || o->blocks >= cfg.depth) {
        sd3_err_set(&err, SD3_EINVAL, "bench act: --blocks %d, want 1..%d for depth %d", o->blocks,
                    cfg.depth - 1, cfg.depth);
        goto done;
    }
    if (o->size % (8 * cfg.patch) || o->size / 8 > cfg.pos_max * cfg.patch) {
        sd3_err_set(&err, SD3_EINVAL, "bench act: --size %d, want a multiple of %d up to %d",
                    o->size, 8 * cfg.patch, 8 * cfg.patch * cfg.pos_max);
        goto done;
    }
    if (!(be = sd3_backend_new("cpu", o->threads, &err)))
        goto done;
    const int64_t B = 2, Z = cfg.in_channels, h = o->size / 8, L = o->ctx_tokens;
    const int64_t N = (h / cfg.patch) * (h / cfg.patch);
    if (!(lat = sd3_rng_noise(11, 4, (int64_t[]){B, Z, h, h}, &err)) ||
        !(y = sd3_rng_noise(12, 2, (int64_t[]){B, cfg.adm_in}, &err)) ||
        !(ctx = sd3_rng_noise(13, 3, (int64_t[]){B, L, cfg.context_in}, &err)))
        goto done;
    float ts[2] = {(float)(o->sigma * 1000.0), (float)(o->sigma * 1000.0)};
    printf("real activations: %s%s (%s, hidden %d, %d heads), %dx%d px: N=%lld image + L=%lld "
           "context tokens, batch 2, sigma %.3g; inputs N(0,1) (latent, pooled, context); "
           "%d threads; zstd level %d; MB/s = f32 bytes per CPU second of one thread\n",
           model, o->model ? "" : " (random weights, bf16)", sd3_mmdit_config_name(&cfg),
           cfg.hidden, cfg.heads, o->size, o->size, (long long)N, (long long)L, o->sigma,
           be->n_threads, o->level);
    fflush(stdout);
    for (int k = 0; k < o->blocks; k++) {
        double w0 = sd3_bench_wall(), c0 = sd3_bench_cpu();
        if (!(mm = sd3_mmdit_new(be, w, k, k + 1, &err)) ||
            (k == 0 && sd3_mmdit_embed(mm, lat, ts, y, ctx, &act, &err) != 0) ||
            sd3_mmdit_blocks(mm, &act, 0, &err) != 0)
            goto done;
        sd3_mmdit_destroy(&mm);
        double flops = (double)B * sd3_mmdit_flops(&cfg, (int)N, (int)L, k, k + 1);
        double wall = sd3_bench_wall() - w0, cpu = sd3_bench_cpu() - c0;
        printf("%sblock %d: %.1f s wall, %.1f s CPU, %.1f GFLOP (%.1f GFLOP/s wall)\n",
               k == 0 ? "embed + " : "", k, wall, cpu, flops * 1e-9, flops / wall * 1e-9);
        if (s_boundary(be, &act, k, o->level, &err) != 0)
            goto done;
        fflush(stdout);
    }
    rc = 0;
done:
    if (rc != 0)
        fprintf(stderr, "sd3ctl bench cluster: %s\n", err.msg[0] ? err.msg : "activations failed");
    sd3_mmdit_act_fini(be, &act);
    sd3_mmdit_destroy(&mm);
    sd3_tensor_destroy(&lat);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&ctx);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&mdl);
    sd3_backend_destroy(&be);
    if (wrote && o->keep && rc == 0) {
        printf("kept the partial model: %s\n", path);
    } else if (made_dir) {
        if (wrote)
            unlink(path);
        char partial[300];
        snprintf(partial, sizeof partial, "%s.partial", path);
        unlink(partial);
        rmdir(dir);
    }
    return rc;
}
