/*  test_mkmodel - random checkpoints in every layout, read back through sd3_model_open
 *
 *  1. sd3_arch parameter counts equal MODEL.md §9's derived figures.
 *  2. For each tiny arch, mkmodel (the library call behind `sd3ctl mkmodel`) writes the
 *     single, sd3.5 and diffusers layouts (diffusers with small shards); each resolves to
 *     the right layout and components, every canonical tensor has the arch's name and shape,
 *     and the bytes are identical across the three layouts.
 *  3. The values follow the documented distributions (std of linear weights, norm weights
 *     around 1, identity CLIP-L projection, sin-cos pos_embed, shared.weight = embed_tokens).
 *  4. --no-t5 / --no-encoders drop what they say; convert round-trips between layouts.  */
#include "sd3_arch.h"
#include "sd3_test.h"
#include "sd3_weights.h"
#include "sd3_weights_write.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void
s_check_counts(void)
{
    const sd3_arch_t *m3 = sd3_arch_find("sd3-medium"), *m35 = sd3_arch_find("sd3.5-medium"),
                     *l35 = sd3_arch_find("sd3.5-large");
    CHECK(m3 && m35 && l35);
    if (!m3 || !m35 || !l35)
        return;
    // MODEL.md §2 / §9 (derived, pos_embed included)
    CHECK(sd3_arch_params(m3, SD3_COMP_MMDIT) == 2084951104ull);
    CHECK(sd3_arch_params(m35, SD3_COMP_MMDIT) == 2469663936ull);
    CHECK(sd3_arch_params(l35, SD3_COMP_MMDIT) == 8146280768ull);
    CHECK(sd3_arch_block_params(m3, 0, 1) == 84980736ull);
    CHECK(sd3_arch_block_params(m3, 23, 24) == 54294528ull);
    CHECK(sd3_arch_block_params(m35, 0, 1) == 101506944ull); // attn2 block
    CHECK(sd3_arch_block_params(m35, 13, 14) == 84980992ull);
    CHECK(sd3_arch_block_params(m35, 23, 24) == 54294784ull);
    CHECK(sd3_arch_block_params(l35, 0, 1) == 212999680ull);
    CHECK(sd3_arch_block_params(l35, 37, 38) == 136085248ull);
    // embedders + final layer, without pos_embed: 19.48 M / 39.55 M
    uint64_t emb3 =
        sd3_arch_params(m3, SD3_COMP_MMDIT) - sd3_arch_block_params(m3, 0, 24) - 36864ull * 1536;
    uint64_t embl =
        sd3_arch_params(l35, SD3_COMP_MMDIT) - sd3_arch_block_params(l35, 0, 38) - 36864ull * 2432;
    CHECK(llabs((long long)emb3 - 19480000) < 5000);
    CHECK(llabs((long long)embl - 39550000) < 5000);
    // encoders (MODEL.md §5.1 / §9): 123.65 M, 694.66 M, 4.762 B
    uint64_t l = sd3_arch_params(m3, SD3_COMP_CLIP_L), g = sd3_arch_params(m3, SD3_COMP_CLIP_G),
             t5 = sd3_arch_params(m3, SD3_COMP_T5);
    CHECK(llabs((long long)l - 123650000) < 5000);
    CHECK(llabs((long long)g - 694660000) < 5000);
    CHECK(llabs((long long)t5 - 4762000000) < 500000);
    // VAE decoder 49.5 M
    size_t n;
    sd3_arch_tensor_t *ts = sd3_arch_tensors(m3, SD3_COMP_VAE, &n, NULL);
    uint64_t dec = 0;
    for (size_t i = 0; ts && i < n; i++)
        if (!strncmp(ts[i].name, "decoder.", 8)) {
            uint64_t k = 1;
            for (int d = 0; d < ts[i].ndim; d++)
                k *= (uint64_t)ts[i].shape[d];
            dec += k;
        }
    free(ts);
    CHECK(llabs((long long)dec - 49500000) < 50000);
    printf("params: sd3-m %llu, sd3.5-m %llu, sd3.5-l %llu, clip-l %llu, clip-g %llu, "
           "t5 %llu, vae decoder %llu\n",
           (unsigned long long)sd3_arch_params(m3, SD3_COMP_MMDIT),
           (unsigned long long)sd3_arch_params(m35, SD3_COMP_MMDIT),
           (unsigned long long)sd3_arch_params(l35, SD3_COMP_MMDIT), (unsigned long long)l,
           (unsigned long long)g, (unsigned long long)t5, (unsigned long long)dec);
    CHECK(sd3_arch_find("nope") == NULL);
    CHECK(sd3_arch_count() == 6);
}

static float *
s_widen(const sd3_tensor_t *t)
{
    size_t n = (size_t)sd3_tensor_numel(t);
    float *f = malloc((n ? n : 1) * sizeof *f);
    sd3_dtype_to_f32(t->dtype, t->data, f, n);
    return f;
}

static void
s_stats(const sd3_tensor_t *t, double *mean, double *std)
{
    size_t n = (size_t)sd3_tensor_numel(t);
    float *f = s_widen(t);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += f[i];
        s2 += (double)f[i] * f[i];
    }
    *mean = s / (double)n;
    *std = sqrt(s2 / (double)n - *mean * *mean);
    free(f);
}

// The values follow the distributions of sd3_weights_write.c.
static void
s_check_values(sd3_weights_t *mmdit, sd3_weights_t *clip_l, sd3_weights_t *t5, const sd3_arch_t *a)
{
    double mean, std;
    const int64_t D = a->mmdit.hidden;
    const sd3_tensor_t *t = sd3_weights_get(mmdit, "joint_blocks.0.x_block.mlp.fc1.weight");
    CHECK(t != NULL);
    if (t) {
        s_stats(t, &mean, &std);
        CHECK_MSG(fabs(std * sqrt((double)D) - 1.0) < 0.05 && fabs(mean) < 0.01,
                  "fc1 mean %g std %g, want 0, %g", mean, std, 1 / sqrt((double)D));
    }
    t = sd3_weights_get(mmdit, "final_layer.adaLN_modulation.1.weight");
    if (t) {
        s_stats(t, &mean, &std);
        CHECK_MSG(fabs(std * sqrt((double)D) - 0.5) < 0.03, "adaLN std %g", std);
    }
    t = sd3_weights_get(mmdit, "context_embedder.bias");
    if (t) {
        s_stats(t, &mean, &std);
        CHECK_MSG(std > 0.07 && std < 0.13, "bias std %g", std);
    }
    if (a->mmdit.qk_norm &&
        (t = sd3_weights_get(mmdit, "joint_blocks.0.x_block.attn.ln_q.weight"))) {
        s_stats(t, &mean, &std);
        CHECK_MSG(fabs(mean - 1) < 0.05 && std > 0.05 && std < 0.15, "ln_q mean %g std %g", mean,
                  std);
    }
    t = sd3_weights_get(mmdit, "pos_embed");
    if (t) {
        // table[R*P + C][d]: channel 0 is sin(C * 1) (column), channel D/2 is sin(R)
        int P = a->mmdit.pos_embed_max;
        float *f = s_widen(t);
        size_t row = (size_t)3 * P + 5; // R = 3, C = 5
        float tol = t->dtype == SD3_F32 ? 1e-6f : 1e-2f;
        CHECK(fabsf(f[row * D + 0] - sinf(5.0f)) < tol);
        CHECK(fabsf(f[row * D + D / 2] - sinf(3.0f)) < tol);
        CHECK(fabsf(f[row * D + D / 4] - cosf(5.0f)) < tol);
        free(f);
    }
    t = sd3_weights_get(clip_l, "text_projection.weight");
    CHECK(t != NULL);
    if (t) {
        float *f = s_widen(t);
        int64_t W = t->shape[0];
        int bad = 0;
        for (int64_t i = 0; i < W * W; i++)
            bad += f[i] != (i / W == i % W ? 1.0f : 0.0f);
        CHECK_MSG(bad == 0, "clip_l projection: %d entries not identity", bad);
        free(f);
    }
    if (t5) {
        const sd3_tensor_t *e = sd3_weights_get(t5, "encoder.embed_tokens.weight"),
                           *s = sd3_weights_get(t5, "shared.weight");
        CHECK(e && s && sd3_tensor_nbytes(e) == sd3_tensor_nbytes(s) &&
              !memcmp(e->data, s->data, sd3_tensor_nbytes(e)));
        if (e) {
            s_stats(e, &mean, &std);
            CHECK_MSG(fabs(std - 1) < 0.02, "t5 embedding std %g", std);
        }
    }
}

// Every canonical tensor of `comp` is the arch's (names, shapes), and `b` holds the same bytes.
static int
s_compare(const char *what, sd3_weights_t *a, sd3_weights_t *b, const sd3_arch_t *arch,
          sd3_component_t comp)
{
    size_t n;
    int bad = 0;
    sd3_arch_tensor_t *ts = sd3_arch_tensors(arch, comp, &n, NULL);
    size_t expect = n + (comp == SD3_COMP_T5 ? 1 : 0); // + shared.weight
    if (sd3_weights_count(a) != expect || sd3_weights_count(b) != expect) {
        fprintf(stderr, "%s %s: %zu / %zu tensors, want %zu\n", what, sd3_component_name(comp),
                sd3_weights_count(a), sd3_weights_count(b), expect);
        bad++;
    }
    for (size_t i = 0; i < n; i++) {
        const sd3_tensor_t *x = NULL, *y = NULL;
        sd3_err_t err = {0};
        if (sd3_weights_need(a, ts[i].name, ts[i].ndim, ts[i].shape, &x, &err) != 0 ||
            sd3_weights_need(b, ts[i].name, ts[i].ndim, ts[i].shape, &y, &err) != 0) {
            fprintf(stderr, "%s: %s\n", what, err.msg);
            bad++;
            continue;
        }
        if (x->dtype != y->dtype || sd3_tensor_nbytes(x) != sd3_tensor_nbytes(y) ||
            memcmp(x->data, y->data, sd3_tensor_nbytes(x)) != 0) {
            fprintf(stderr, "%s: '%s' differs\n", what, ts[i].name);
            bad++;
        }
    }
    free(ts);
    CHECK_MSG(bad == 0, "%s %s: %d problems", what, sd3_component_name(comp), bad);
    return bad;
}

static void
s_check_arch_layouts(const char *dir, const char *arch_name, sd3_dtype_t dtype)
{
    const sd3_arch_t *arch = sd3_arch_find(arch_name);
    static const sd3_layout_t layouts[3] = {SD3_LAYOUT_SINGLE, SD3_LAYOUT_SD35,
                                            SD3_LAYOUT_DIFFUSERS};
    sd3_model_t *models[3] = {0};
    char path[3][512];
    for (int k = 0; k < 3; k++) {
        sd3_wwrite_opts_t opts;
        sd3_wwrite_opts_init(&opts, arch);
        opts.layout = layouts[k];
        opts.dtype = dtype;
        opts.shard_bytes = 1u << 20; // a tiny transformer still gets shards
        snprintf(path[k], sizeof path[k], "%s/%s-%s%s", dir, arch_name, sd3_layout_name(layouts[k]),
                 k == 0 ? ".safetensors" : "");
        sd3_err_t err = {0};
        CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 1234, path[k], &err) == 0, "%s", err.msg);
        models[k] = sd3_model_open(path[k], &err);
        CHECK_MSG(models[k] != NULL, "%s: %s", path[k], err.msg);
        if (!models[k])
            goto done;
        CHECK(sd3_model_layout(models[k]) == layouts[k]);
        for (int c = 0; c < SD3_COMP_COUNT; c++)
            CHECK(sd3_model_has(models[k], c));
    }
    // the sd3.5 model file is named as the release names it; diffusers files are sharded
    char probe[700];
    snprintf(probe, sizeof probe, "%s/%s", path[1], arch->model_file);
    struct stat sb;
    CHECK(stat(probe, &sb) == 0);
    snprintf(probe, sizeof probe, "%s/transformer/diffusion_pytorch_model.safetensors.index.json",
             path[2]);
    CHECK(stat(probe, &sb) == 0);
    int bad = 0;
    for (int c = 0; c < SD3_COMP_COUNT; c++) {
        sd3_err_t err = {0};
        sd3_weights_t *w[3];
        for (int k = 0; k < 3; k++) {
            w[k] = sd3_weights_open(models[k], c, &err);
            CHECK_MSG(w[k] != NULL, "%s", err.msg);
        }
        if (w[0] && w[1] && w[2]) {
            bad += s_compare("single vs sd3.5", w[0], w[1], arch, c);
            bad += s_compare("single vs diffusers", w[0], w[2], arch, c);
        }
        for (int k = 0; k < 3; k++)
            sd3_weights_destroy(&w[k]);
    }
    sd3_err_t err = {0};
    sd3_weights_t *mm = sd3_weights_open(models[2], SD3_COMP_MMDIT, &err),
                  *cl = sd3_weights_open(models[2], SD3_COMP_CLIP_L, &err),
                  *t5 = sd3_weights_open(models[2], SD3_COMP_T5, &err);
    if (mm && cl && t5)
        s_check_values(mm, cl, t5, arch);
    sd3_weights_destroy(&mm);
    sd3_weights_destroy(&cl);
    sd3_weights_destroy(&t5);
    // the detected architecture of the written model is the one written
    sd3_arch_t det;
    CHECK(sd3_arch_from_model(models[2], &det, &err) == 0);
    CHECK(!memcmp(&det.mmdit, &arch->mmdit, sizeof det.mmdit));
    CHECK(!memcmp(&det.t5, &arch->t5, sizeof det.t5));
    CHECK(!memcmp(&det.vae, &arch->vae, sizeof det.vae));
    CHECK(!memcmp(&det.clip_g, &arch->clip_g, sizeof det.clip_g));
    printf("%-18s %-5s single == sd3.5 == diffusers for all 5 components: %s\n", arch_name,
           sd3_dtype_name(dtype), bad ? "NO" : "yes");
done:
    for (int k = 0; k < 3; k++)
        sd3_model_destroy(&models[k]);
}

// Stands in for sd3_tok_write_tiny_set(): makes the three folders.
static int
s_tok_writer(const char *dir, sd3_err_t *err)
{
    static const char *const subs[] = {"tokenizer", "tokenizer_2", "tokenizer_3"};
    char path[600];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
        if (mkdir(path, 0755) != 0)
            return sd3_err_set(err, SD3_EIO, "%s: mkdir failed", path);
    }
    return 0;
}

static void
s_check_options(const char *dir)
{
    const sd3_arch_t *arch = sd3_arch_find("tiny-sd3-medium");
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    opts.layout = SD3_LAYOUT_DIFFUSERS;
    opts.dtype = SD3_F16;
    opts.want[SD3_COMP_T5] = false;
    char path[512];
    snprintf(path, sizeof path, "%s/no-t5", dir);
    sd3_err_t err = {0};
    CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 1, path, &err) == 0, "%s", err.msg);
    sd3_model_t *m = sd3_model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK(sd3_model_has(m, SD3_COMP_CLIP_G) && !sd3_model_has(m, SD3_COMP_T5));
        CHECK(sd3_model_tokenizer_dir(m, 0) == NULL); // no tokenizer writer given
    }
    sd3_model_destroy(&m);

    sd3_wwrite_opts_init(&opts, arch);
    opts.layout = SD3_LAYOUT_SD35;
    opts.want[SD3_COMP_CLIP_L] = opts.want[SD3_COMP_CLIP_G] = opts.want[SD3_COMP_T5] = false;
    snprintf(path, sizeof path, "%s/no-enc", dir);
    CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 1, path, &err) == 0, "%s", err.msg);
    m = sd3_model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK(sd3_model_has(m, SD3_COMP_MMDIT) && sd3_model_has(m, SD3_COMP_VAE));
        CHECK(!sd3_model_has(m, SD3_COMP_CLIP_L) && !sd3_model_has(m, SD3_COMP_T5));
        CHECK(sd3_model_layout(m) == SD3_LAYOUT_SINGLE); // a lone model file
    }
    sd3_model_destroy(&m);

    // a tokenizer writer passed in is called with the diffusers folder
    sd3_wwrite_opts_init(&opts, arch);
    opts.layout = SD3_LAYOUT_DIFFUSERS;
    opts.want[SD3_COMP_MMDIT] = opts.want[SD3_COMP_VAE] = false;
    snprintf(path, sizeof path, "%s/toks", dir);
    opts.tok_writer = s_tok_writer;
    CHECK_MSG(sd3_weights_mkmodel(arch, &opts, 1, path, &err) == 0, "%s", err.msg);
    m = sd3_model_open(path, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (m) {
        CHECK(sd3_model_tokenizer_dir(m, 2) != NULL);
        CHECK(!sd3_model_has(m, SD3_COMP_MMDIT) && sd3_model_has(m, SD3_COMP_T5));
    }
    sd3_model_destroy(&m);
}

// convert: sd3.5 set -> diffusers -> single, bit-identical canonical tensors.
static void
s_check_convert(const char *dir)
{
    char src[512], mid[512], back[512];
    snprintf(src, sizeof src, "%s/tiny-sd3.5-medium-sd3.5", dir);
    snprintf(mid, sizeof mid, "%s/conv-diffusers", dir);
    snprintf(back, sizeof back, "%s/conv-single.safetensors", dir);
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, NULL);
    opts.layout = SD3_LAYOUT_DIFFUSERS;
    opts.shard_bytes = 2u << 20;
    sd3_err_t err = {0};
    CHECK_MSG(sd3_weights_convert(src, &opts, mid, &err) == 0, "%s", err.msg);
    opts.layout = SD3_LAYOUT_SINGLE;
    CHECK_MSG(sd3_weights_convert(mid, &opts, back, &err) == 0, "%s", err.msg);
    CHECK(sd3_weights_convert(back, &opts, back, &err) == SD3_EINVAL); // onto itself
    sd3_model_t *a = sd3_model_open(src, &err), *b = sd3_model_open(back, &err);
    CHECK(a && b);
    int bad = 0;
    const sd3_arch_t *arch = sd3_arch_find("tiny-sd3.5-medium");
    for (int c = 0; a && b && c < SD3_COMP_COUNT; c++) {
        sd3_weights_t *wa = sd3_weights_open(a, c, &err), *wb = sd3_weights_open(b, c, &err);
        if (wa && wb)
            bad += s_compare("convert sd3.5 -> diffusers -> single", wa, wb, arch, c);
        sd3_weights_destroy(&wa);
        sd3_weights_destroy(&wb);
    }
    printf("convert sd3.5 -> diffusers -> single: %s\n", bad ? "DIFFERS" : "bit-identical");
    sd3_model_destroy(&a);
    sd3_model_destroy(&b);
}

int
main(void)
{
    const char *dir = sd3_test_tmpdir();
    s_check_counts();
    s_check_arch_layouts(dir, "tiny-sd3-medium", SD3_F16);
    s_check_arch_layouts(dir, "tiny-sd3.5-large", SD3_BF16);
    s_check_arch_layouts(dir, "tiny-sd3.5-medium", SD3_F32);
    s_check_options(dir);
    s_check_convert(dir);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return TEST_RESULT();
}
