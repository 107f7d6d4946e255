/*  test_weights - sd3_weights: canonical names, layout transforms, bad layouts, memory
 *
 *  1. Hand-made diffusers files: q/k/v joined in row order, the last block's and the final
 *     layer's 2-chunk modulations swapped (and only those), VAE names (up_blocks reversed,
 *     conv_shortcut, [c,c] attention weights seen as [c,c,1,1] views), the T5 shared.weight
 *     alias, an unaligned tensor copied, streaming reads across part boundaries.
 *  2. Broken layouts: missing q/k/v part, mismatched parts, a tensor stored twice, broken
 *     shard indexes, folders with no model: each a clear error, never a crash.
 *  3. Resident memory: a ~300 MB random MMDiT (f16) dropped from the page cache; touching
 *     only blocks [0,2) must grow RSS (and the page cache) by about those bytes only.  */
#include "sd3_arch.h"
#include "sd3_safetensors.h"
#include "sd3_test.h"
#include "sd3_weights.h"
#include "sd3_weights_io.h"
#include "sd3_weights_write.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static char s_dir[256];

// A host F32 tensor [rows, cols] with values base + i, named `name`.
static sd3_tensor_t *
s_f32(const char *name, int64_t rows, int64_t cols, float base)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, cols ? 2 : 1, (int64_t[]){rows, cols});
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)t->data)[i] = base + (float)i;
    t->name = name;
    return t;
}

static int
s_write(const char *file, sd3_tensor_t **ts, size_t n)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", s_dir, file);
    sd3_err_t err = {0};
    int rc = sd3_st_write_tensors(path, (const sd3_tensor_t *const *)ts, n, NULL, 0, &err);
    CHECK_MSG(rc == 0, "%s", err.msg);
    for (size_t i = 0; i < n; i++)
        sd3_tensor_destroy(&ts[i]);
    return rc;
}

static void
s_test_mmdit_transforms(void)
{
    // block 0 and block 1 (the last): D = 2, so qkv parts are [2,3] -> canonical [6,3]
    sd3_tensor_t *ts[] = {
        s_f32("transformer_blocks.0.attn.to_q.weight", 2, 3, 0),
        s_f32("transformer_blocks.0.attn.to_k.weight", 2, 3, 100),
        s_f32("transformer_blocks.0.attn.to_v.weight", 2, 3, 200),
        s_f32("transformer_blocks.0.norm1_context.linear.weight", 12, 2, 0),
        s_f32("transformer_blocks.1.norm1_context.linear.weight", 4, 2, 0),
        s_f32("transformer_blocks.1.norm1_context.linear.bias", 4, 0, 10),
        s_f32("norm_out.linear.bias", 4, 0, 50),
        s_f32("pos_embed.pos_embed", 1, 8, 0),
        s_f32("proj_out.weight", 2, 2, 7),
    };
    if (s_write("dt.safetensors", ts, sizeof ts / sizeof ts[0]))
        return;
    char path[400];
    snprintf(path, sizeof path, "%s/dt.safetensors", s_dir);
    sd3_err_t err = {0};
    sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_MMDIT, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w)
        return;
    CHECK(sd3_weights_count(w) == 7);
    const sd3_tensor_t *qkv = sd3_weights_get(w, "joint_blocks.0.x_block.attn.qkv.weight");
    CHECK(qkv && qkv->ndim == 2 && qkv->shape[0] == 6 && qkv->shape[1] == 3);
    if (qkv) {
        const float *f = qkv->data;
        CHECK(f[0] == 0 && f[5] == 5 && f[6] == 100 && f[11] == 105 && f[12] == 200 &&
              f[17] == 205);
        CHECK(sd3_weights_get(w, "joint_blocks.0.x_block.attn.qkv.weight") == qkv); // cached
        CHECK(!qkv->owns && !strcmp(qkv->name, "joint_blocks.0.x_block.attn.qkv.weight"));
    }
    // block 0 is not the last: same order; block 1 is: halves swapped, weight and bias
    const sd3_tensor_t *m0 =
        sd3_weights_get(w, "joint_blocks.0.context_block.adaLN_modulation.1.weight");
    CHECK(m0 && ((const float *)m0->data)[0] == 0);
    const sd3_tensor_t *m1 =
        sd3_weights_get(w, "joint_blocks.1.context_block.adaLN_modulation.1.weight");
    CHECK(m1 && m1->shape[0] == 4);
    if (m1) {
        const float *f = m1->data; // stored rows [a; b] = [0..3; 4..7] -> canonical [b; a]
        CHECK(f[0] == 4 && f[3] == 7 && f[4] == 0 && f[7] == 3);
    }
    const sd3_tensor_t *b1 =
        sd3_weights_get(w, "joint_blocks.1.context_block.adaLN_modulation.1.bias");
    CHECK(b1 && ((const float *)b1->data)[0] == 12 && ((const float *)b1->data)[2] == 10);
    const sd3_tensor_t *fb = sd3_weights_get(w, "final_layer.adaLN_modulation.1.bias");
    CHECK(fb && ((const float *)fb->data)[0] == 52 && ((const float *)fb->data)[3] == 51);
    CHECK(sd3_weights_has(w, "pos_embed") && sd3_weights_has(w, "final_layer.linear.weight"));
    // streaming reads cross the part and half boundaries like the built tensors
    float buf[18];
    CHECK(sd3_weights_read(w, "joint_blocks.0.x_block.attn.qkv.weight", 4, 10, SD3_F32, buf,
                           &err) == 0);
    CHECK(qkv && !memcmp(buf, (const float *)qkv->data + 4, 10 * sizeof(float)));
    uint16_t h[4];
    CHECK(sd3_weights_read(w, "final_layer.adaLN_modulation.1.bias", 1, 3, SD3_F16, h, &err) == 0);
    CHECK(sd3_f16_to_f32(h[0]) == 53 && sd3_f16_to_f32(h[1]) == 50 && sd3_f16_to_f32(h[2]) == 51);
    CHECK(sd3_weights_read(w, "final_layer.adaLN_modulation.1.bias", 3, 2, SD3_F32, buf, &err) ==
          SD3_EINVAL);
    CHECK(sd3_weights_dtype(w, "pos_embed") == SD3_F32);
    CHECK(sd3_weights_dtype(w, "absent") == SD3_DTYPE_COUNT);
    CHECK(sd3_weights_bytes(w) == (18 + 24 + 8 + 4 + 4 + 8 + 4) * 4);
    sd3_weights_release(w, "joint_blocks.0.x_block.attn.qkv.weight"); // harmless
    sd3_weights_destroy(&w);
    CHECK(w == NULL);
    sd3_weights_destroy(&w);
}

static void
s_test_vae_t5_names(void)
{
    sd3_tensor_t *ts[] = {
        s_f32("decoder.mid_block.attentions.0.to_q.weight", 2, 2, 1),
        s_f32("decoder.mid_block.attentions.0.to_out.0.bias", 2, 0, 1),
        s_f32("decoder.up_blocks.0.resnets.0.conv_shortcut.weight", 2, 2, 1),
        s_f32("decoder.up_blocks.3.upsamplers.0.conv.bias", 2, 0, 1),
        s_f32("encoder.down_blocks.1.downsamplers.0.conv.bias", 2, 0, 1),
        s_f32("encoder.mid_block.resnets.1.norm1.weight", 2, 0, 1),
        s_f32("encoder.conv_norm_out.weight", 2, 0, 1),
        s_f32("decoder.conv_in.bias", 2, 0, 1),
    };
    if (s_write("vae.safetensors", ts, sizeof ts / sizeof ts[0]))
        return;
    char path[400];
    snprintf(path, sizeof path, "%s/vae.safetensors", s_dir);
    sd3_err_t err = {0};
    sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_VAE, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w)
        return;
    static const char *const want[] = {"decoder.mid.attn_1.q.weight",
                                       "decoder.mid.attn_1.proj_out.bias",
                                       "decoder.up.3.block.0.nin_shortcut.weight",
                                       "decoder.up.0.upsample.conv.bias",
                                       "encoder.down.1.downsample.conv.bias",
                                       "encoder.mid.block_2.norm1.weight",
                                       "encoder.norm_out.weight",
                                       "decoder.conv_in.bias"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_MSG(sd3_weights_has(w, want[i]), "missing %s", want[i]);
    const sd3_tensor_t *q = NULL;
    CHECK(sd3_weights_need(w, "decoder.mid.attn_1.q.weight", 4, (int64_t[]){2, 2, 1, 1}, &q,
                           &err) == 0);
    CHECK(q && ((const float *)q->data)[3] == 4);
    sd3_weights_destroy(&w);

    // T5 saved by transformers with only shared.weight
    sd3_tensor_t *t5[] = {s_f32("shared.weight", 4, 3, 0),
                          s_f32("encoder.final_layer_norm.weight", 3, 0, 1)};
    if (s_write("t5.safetensors", t5, 2))
        return;
    snprintf(path, sizeof path, "%s/t5.safetensors", s_dir);
    w = sd3_weights_open_path(path, SD3_COMP_T5, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w)
        return;
    const sd3_tensor_t *e = sd3_weights_get(w, "encoder.embed_tokens.weight"),
                       *s = sd3_weights_get(w, "shared.weight");
    CHECK(e && s && e->data == s->data);
    CHECK(sd3_weights_count(w) == 3 && sd3_weights_bytes(w) == (12 + 3) * 4); // alias once
    sd3_weights_destroy(&w);
}

static void
s_test_unaligned(void)
{
    char path[400];
    snprintf(path, sizeof path, "%s/unaligned.safetensors", s_dir);
    sd3_err_t err = {0};
    sd3_st_writer_t *wr = sd3_st_writer_new(path, &err);
    uint8_t pad[3] = {1, 2, 3};
    float v[2] = {1.5f, -2.25f};
    sd3_st_writer_declare(wr, "a.pad", SD3_U8, 1, (int64_t[]){3}, &err);
    sd3_st_writer_declare(wr, "b.weight", SD3_F32, 1, (int64_t[]){2}, &err);
    sd3_st_writer_begin(wr, &err);
    sd3_st_writer_write(wr, pad, 3, &err);
    sd3_st_writer_write(wr, v, 8, &err);
    CHECK_MSG(sd3_st_writer_finish(&wr, &err) == 0, "%s", err.msg);
    sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_CLIP_L, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    const sd3_tensor_t *t = w ? sd3_weights_get(w, "b.weight") : NULL;
    CHECK(t && (uintptr_t)t->data % 4 == 0 && !memcmp(t->data, v, 8));
    sd3_weights_destroy(&w);
}

static void
s_expect_fail(const char *what, const char *path, sd3_component_t comp, int code,
              const char *substr)
{
    sd3_err_t err = {0};
    sd3_weights_t *w = sd3_weights_open_path(path, comp, &err);
    CHECK_MSG(w == NULL, "%s: opened", what);
    CHECK_MSG(err.code == code && strstr(err.msg, substr), "%s: %s '%s' (want %s, '%s')", what,
              sd3_err_name(err.code), err.msg, sd3_err_name(code), substr);
    printf("  %-26s -> %s\n", what, err.msg);
    sd3_weights_destroy(&w);
}

static void
s_write_text(const char *rel, const char *text)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", s_dir, rel);
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

static void
s_test_bad_layouts(void)
{
    char path[400];
    printf("bad layouts:\n");
    sd3_tensor_t *a[] = {s_f32("transformer_blocks.0.attn.to_q.weight", 2, 3, 0),
                         s_f32("transformer_blocks.0.attn.to_k.weight", 2, 3, 0)};
    s_write("noV.safetensors", a, 2);
    snprintf(path, sizeof path, "%s/noV.safetensors", s_dir);
    s_expect_fail("qkv without v", path, SD3_COMP_MMDIT, SD3_EFORMAT, "q, k and v");

    sd3_tensor_t *b[] = {s_f32("transformer_blocks.0.attn.to_q.weight", 2, 3, 0),
                         s_f32("transformer_blocks.0.attn.to_k.weight", 2, 4, 0),
                         s_f32("transformer_blocks.0.attn.to_v.weight", 2, 3, 0)};
    s_write("badK.safetensors", b, 3);
    snprintf(path, sizeof path, "%s/badK.safetensors", s_dir);
    s_expect_fail("q/k/v shapes differ", path, SD3_COMP_MMDIT, SD3_EFORMAT, "differ");

    sd3_tensor_t *c[] = {s_f32("norm_out.linear.bias", 3, 0, 0)};
    s_write("odd.safetensors", c, 1);
    snprintf(path, sizeof path, "%s/odd.safetensors", s_dir);
    s_expect_fail("odd swapped rows", path, SD3_COMP_MMDIT, SD3_EFORMAT, "even");

    // a diffusers component folder whose index points at shards
    mkdir(strcat(strcpy(path, s_dir), "/tf"), 0755);
    sd3_tensor_t *s1[] = {s_f32("proj_out.weight", 2, 2, 0)};
    s_write("tf/s1.safetensors", s1, 1);
    sd3_tensor_t *s2[] = {s_f32("proj_out.weight", 2, 2, 0)};
    s_write("tf/s2.safetensors", s2, 1);
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json",
                 "{\"weight_map\": {\"proj_out.weight\": \"s1.safetensors\", "
                 "\"proj_out.bias\": \"s1.safetensors\"}}");
    snprintf(path, sizeof path, "%s/tf", s_dir);
    s_expect_fail("index names a missing key", path, SD3_COMP_MMDIT, SD3_EFORMAT, "lacks it");
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json",
                 "{\"weight_map\": {\"proj_out.weight\": \"../s1.safetensors\"}}");
    s_expect_fail("index shard path escapes", path, SD3_COMP_MMDIT, SD3_EFORMAT,
                  "not a plain file name");
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json",
                 "{\"weight_map\": {\"proj_out.weight\": \"s3.safetensors\"}}");
    s_expect_fail("index names a missing shard", path, SD3_COMP_MMDIT, SD3_EFORMAT,
                  "s3.safetensors is missing");
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json", "{\"weight_map\": [1");
    s_expect_fail("index not JSON", path, SD3_COMP_MMDIT, SD3_EFORMAT, "no weight_map");
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json",
                 "{\"weight_map\": {\"proj_out.weight\": \"s1.safetensors\", "
                 "\"x\": \"s2.safetensors\"}}");
    s_expect_fail("shards lack index keys", path, SD3_COMP_MMDIT, SD3_EFORMAT, "lacks it");
    s_write_text("tf/diffusion_pytorch_model.safetensors.index.json",
                 "{\"weight_map\": {\"proj_out.weight\": \"s1.safetensors\", "
                 "\"proj_out.bias\": \"s2.safetensors\"}}");
    // s2 holds proj_out.weight too: the same canonical tensor twice... but s2 lacks bias
    s_expect_fail("index key not in its shard", path, SD3_COMP_MMDIT, SD3_EFORMAT, "lacks it");
    sd3_tensor_t *s3[] = {s_f32("proj_out.weight", 2, 2, 0), s_f32("proj_out.bias", 2, 0, 0)};
    s_write("tf/s2.safetensors", s3, 2);
    s_expect_fail("tensor in two shards", path, SD3_COMP_MMDIT, SD3_EFORMAT, "stored twice");

    // folders and files that are no model
    mkdir(strcat(strcpy(path, s_dir), "/empty"), 0755);
    sd3_err_t err = {0};
    CHECK(sd3_model_open(path, &err) == NULL && err.code == SD3_ENOTFOUND);
    printf("  %-26s -> %s\n", "empty folder", err.msg);
    snprintf(path, sizeof path, "%s/vae.safetensors", s_dir); // no prefixes at all
    sd3_err_clear(&err);
    CHECK(sd3_model_open(path, &err) == NULL && err.code == SD3_EFORMAT &&
          strstr(err.msg, "not a model file"));
    printf("  %-26s -> %s\n", "file without prefixes", err.msg);
    snprintf(path, sizeof path, "%s/absent", s_dir);
    sd3_err_clear(&err);
    CHECK(sd3_model_open(path, &err) == NULL && err.code == SD3_ENOTFOUND);
    mkdir(strcat(strcpy(path, s_dir), "/badidx"), 0755);
    s_write_text("badidx/model_index.json", "not json");
    sd3_err_clear(&err);
    CHECK(sd3_model_open(path, &err) == NULL && err.code == SD3_EFORMAT);
    printf("  %-26s -> %s\n", "model_index not JSON", err.msg);
}

// ---- resident memory -------------------------------------------------------------------

static size_t
s_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            kb = strtoull(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb * 1024;
}

// Bytes of `path` in the page cache (mincore over a private mapping of our own).
static size_t
s_cached(const char *path, size_t size)
{
    int fd = open(path, O_RDONLY);
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return 0;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = (size + pg - 1) / pg, in = 0;
    unsigned char *vec = malloc(n);
    if (mincore(m, size, vec) == 0)
        for (size_t i = 0; i < n; i++)
            in += vec[i] & 1;
    free(vec);
    munmap(m, size);
    return in * pg;
}

static void
s_test_resident_memory(void)
{
    sd3_arch_t arch = *sd3_arch_find("tiny-sd3-medium");
    snprintf(arch.name, sizeof arch.name, "rss-test");
    arch.mmdit.depth = arch.mmdit.heads = 10;
    arch.mmdit.hidden = 640;
    arch.mmdit.pos_embed_max = 32;
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, &arch);
    for (int c = 1; c < SD3_COMP_COUNT; c++)
        opts.want[c] = false;
    opts.dtype = SD3_F16;
    char path[400];
    snprintf(path, sizeof path, "%s/big.safetensors", s_dir);
    sd3_err_t err = {0};
    CHECK_MSG(sd3_weights_mkmodel(&arch, &opts, 99, path, &err) == 0, "%s", err.msg);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return;
    size_t size = (size_t)sb.st_size;
    // out of the page cache: written pages must be clean first
    int fd = open(path, O_RDONLY);
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    size_t cached0 = s_cached(path, size);

    size_t rss0 = s_rss();
    sd3_model_t *m = sd3_model_open(path, &err);
    sd3_weights_t *w = m ? sd3_weights_open(m, SD3_COMP_MMDIT, &err) : NULL;
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w) {
        sd3_model_destroy(&m);
        return;
    }
    size_t rss1 = s_rss();
    size_t touched = 0;
    volatile unsigned sum = 0;
    for (size_t i = 0; i < sd3_weights_count(w); i++) {
        const char *name = sd3_weights_name(w, i);
        if (strncmp(name, "joint_blocks.0.", 15) && strncmp(name, "joint_blocks.1.", 15))
            continue;
        const sd3_tensor_t *t = sd3_weights_get(w, name);
        CHECK(t != NULL);
        if (!t)
            continue;
        const unsigned char *p = t->data;
        size_t nb = sd3_tensor_nbytes(t);
        for (size_t b = 0; b < nb; b += 64) // every cache line: all pages really read
            sum += p[b];
        touched += nb;
    }
    (void)sum; // read only so that the loads happen
    size_t rss2 = s_rss(), cached2 = s_cached(path, size);
    size_t growth = rss2 > rss1 ? rss2 - rss1 : 0;
    printf("resident memory: file %.1f MB (was %.1f MB cached after fadvise), blocks [0,2) "
           "%.1f MB touched\n",
           size / 1e6, cached0 / 1e6, touched / 1e6);
    printf("  RSS: %.1f MB before open, +%.1f MB after open (headers), +%.1f MB after "
           "touching (%.2fx the touched bytes); page cache now %.1f MB of the file\n",
           rss0 / 1e6, (rss1 > rss0 ? rss1 - rss0 : 0) / 1e6, growth / 1e6,
           (double)growth / (double)touched, cached2 / 1e6);
    CHECK(size > 4 * touched);
    CHECK_MSG(growth < touched * 3 / 2 + (8u << 20), "RSS grew %zu for %zu touched bytes", growth,
              touched);
    CHECK_MSG(growth > touched / 2, "RSS grew only %zu for %zu touched bytes (not measured?)",
              growth, touched);
    if (cached0 < size / 10) // the cache check only means something if the drop worked
        CHECK_MSG(cached2 < touched * 3 / 2 + (8u << 20),
                  "page cache holds %zu bytes of the file after touching %zu", cached2, touched);
    sd3_weights_destroy(&w);
    sd3_model_destroy(&m);
    unlink(path);
}

int
main(void)
{
    snprintf(s_dir, sizeof s_dir, "%s", sd3_test_tmpdir());
    s_test_mmdit_transforms();
    s_test_vae_t5_names();
    s_test_unaligned();
    s_test_bad_layouts();
    s_test_resident_memory();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
    return TEST_RESULT();
}
