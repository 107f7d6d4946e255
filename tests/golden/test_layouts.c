/*  test_layouts - the three released layouts give the same canonical tensors (golden data)
 *
 *  e2e/tiny-sd3-medium-incl-clips-t5.safetensors (single file), e2e/tiny-sd3-medium-diffusers/
 *  (diffusers, sharded transformer) and e2e/tiny-sd3.5-medium/ (SD3.5 release set) are opened
 *  with sd3_model_open. For every canonical tensor of every component, the diffusers folder
 *  and the single file must agree bit for bit (after widening to f32), which exercises the
 *  q/k/v join, both swap rules, the VAE up-block reversal and the [c,c] -> [c,c,1,1]
 *  attention weights. The SD3.5 folder's encoders equal the single file's; the parts in
 *  dit/ and enc/ equal what the e2e files were assembled from; sd3_arch's tiny descriptions
 *  enumerate exactly the tensors (names and shapes) of the golden files.
 *  Convert (the library call behind `sd3ctl convert`): the single file -> diffusers gives
 *  the golden diffusers folder's stored tensors (names, shapes, bytes), and -> single again
 *  gives the original canonical tensors bit for bit.  */
#include "sd3_arch.h"
#include "sd3_safetensors.h"
#include "sd3_test.h"
#include "sd3_weights.h"
#include "sd3_weights_write.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *
s_widen(const sd3_tensor_t *t)
{
    size_t n = (size_t)sd3_tensor_numel(t);
    float *f = malloc((n ? n : 1) * sizeof *f);
    sd3_dtype_to_f32(t->dtype, t->data, f, n);
    return f;
}

static bool
s_same_shape(int na, const int64_t *a, int nb, const int64_t *b)
{
    if (na != nb)
        return false;
    for (int i = 0; i < na; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

// Every tensor of `ref` must be in `got` with the same shape and the same f32 values
// (round_to: compare after rounding ref to that dtype, e.g. F32 parts vs F16 files).
// Tensors only in `got` are listed in `extra` (allowed names) or fail.
static int
s_compare(const char *what, sd3_weights_t *ref, sd3_weights_t *got, sd3_dtype_t round_to,
          const char *const *extra)
{
    int bad = 0;
    size_t n_vals = 0;
    for (size_t i = 0; i < sd3_weights_count(ref); i++) {
        const char *name = sd3_weights_name(ref, i);
        const sd3_tensor_t *a = sd3_weights_get(ref, name), *b = sd3_weights_get(got, name);
        if (!a || !b) {
            fprintf(stderr, "%s: '%s' missing (%s)\n", what, name, a ? "got" : "ref");
            bad++;
            continue;
        }
        if (!s_same_shape(a->ndim, a->shape, b->ndim, b->shape)) {
            char sa[64], sb[64];
            fprintf(stderr, "%s: '%s' %s vs %s\n", what, name,
                    sd3_shape_str(a->ndim, a->shape, sa, sizeof sa),
                    sd3_shape_str(b->ndim, b->shape, sb, sizeof sb));
            bad++;
            continue;
        }
        size_t n = (size_t)sd3_tensor_numel(a);
        float *fa = s_widen(a), *fb = s_widen(b);
        if (round_to != SD3_F32 && round_to != SD3_DTYPE_COUNT) {
            void *tmp = malloc(n * 4 + 4);
            sd3_dtype_from_f32(round_to, fa, tmp, n);
            sd3_dtype_to_f32(round_to, tmp, fa, n);
            free(tmp);
        }
        if (memcmp(fa, fb, n * sizeof(float)) != 0) {
            fprintf(stderr, "%s: '%s' values differ, max |diff| %g\n", what, name,
                    sd3_test_maxdiff(fa, fb, n));
            bad++;
        }
        n_vals += n;
        free(fa);
        free(fb);
    }
    for (size_t i = 0; i < sd3_weights_count(got); i++) {
        const char *name = sd3_weights_name(got, i);
        if (sd3_weights_has(ref, name))
            continue;
        bool allowed = false;
        for (int k = 0; extra && extra[k]; k++)
            allowed |= !strcmp(extra[k], name);
        if (!allowed) {
            fprintf(stderr, "%s: unexpected extra tensor '%s'\n", what, name);
            bad++;
        }
    }
    printf("%-40s %4zu tensors, %9zu values: %s\n", what, sd3_weights_count(ref), n_vals,
           bad ? "DIFFER" : "bit-identical");
    CHECK_MSG(bad == 0, "%s: %d problems", what, bad);
    return bad;
}

static const char *const s_clip_l_extra[] = {"text_projection.weight", NULL};

// CLIP-L text_projection, where a layout adds it, is the identity (TESTVECTORS-e2e.md §1).
static void
s_check_identity(sd3_weights_t *w)
{
    const sd3_tensor_t *t = sd3_weights_get(w, "text_projection.weight");
    CHECK(t != NULL && t->ndim == 2 && t->shape[0] == t->shape[1]);
    if (!t)
        return;
    float *f = s_widen(t);
    int64_t n = t->shape[0];
    int wrong = 0;
    for (int64_t i = 0; i < n * n; i++)
        wrong += f[i] != (i / n == i % n ? 1.0f : 0.0f);
    CHECK_MSG(wrong == 0, "text_projection: %d entries not identity", wrong);
    free(f);
}

// The arch description lists exactly the canonical names and shapes of the file
// (allowing the listed differences).
static void
s_check_arch(const char *arch_name, sd3_component_t comp, sd3_weights_t *w,
             const char *only_in_arch, const char *only_in_file)
{
    const sd3_arch_t *arch = sd3_arch_find(arch_name);
    CHECK(arch != NULL);
    if (!arch)
        return;
    size_t n;
    sd3_err_t err = {0};
    sd3_arch_tensor_t *ts = sd3_arch_tensors(arch, comp, &n, &err);
    CHECK_MSG(ts != NULL, "%s", err.msg);
    int bad = 0;
    size_t matched = 0;
    for (size_t i = 0; i < n; i++) {
        int ndim;
        int64_t shape[4];
        if (sd3_weights_shape(w, ts[i].name, &ndim, shape) != 0) {
            if (!only_in_arch || strcmp(only_in_arch, ts[i].name)) {
                fprintf(stderr, "arch %s: '%s' not in the file\n", arch_name, ts[i].name);
                bad++;
            }
            continue;
        }
        matched++;
        if (!s_same_shape(ndim, shape, ts[i].ndim, ts[i].shape)) {
            fprintf(stderr, "arch %s: '%s' shape differs\n", arch_name, ts[i].name);
            bad++;
        }
    }
    size_t expect = sd3_weights_count(w) - (only_in_file ? 1 : 0);
    CHECK_MSG(matched == expect, "arch %s %s: matched %zu of %zu file tensors", arch_name,
              sd3_component_name(comp), matched, expect);
    CHECK_MSG(bad == 0, "arch %s %s: %d problems", arch_name, sd3_component_name(comp), bad);
    printf("arch %-18s %-7s %4zu tensors match the golden file\n", arch_name,
           sd3_component_name(comp), matched);
    free(ts);
}

// pos_embed generated from MODEL.md §4.2 equals the stored golden table.
static void
s_check_sincos(sd3_weights_t *w, int P, int D)
{
    const sd3_tensor_t *t = sd3_weights_get(w, "pos_embed");
    CHECK(t && t->dtype == SD3_F32 && sd3_tensor_numel(t) == (int64_t)P * P * D);
    if (!t)
        return;
    const float *f = t->data;
    double worst = 0;
    for (int r = 0; r < P; r++)
        for (int c = 0; c < P; c++)
            for (int d = 0; d < D; d++) {
                int half = D / 2, quarter = D / 4;
                double pos = d < half ? c : r; // first half: column (w), second: row (h)
                int k = (d % half) % quarter;
                double omega = 1.0 / pow(10000.0, (double)k / quarter);
                double v = (d % half) < quarter ? sin(pos * omega) : cos(pos * omega);
                double diff = fabs((double)f[((size_t)r * P + c) * D + d] - (float)v);
                if (diff > worst)
                    worst = diff;
            }
    printf("pos_embed P=%d D=%d vs the sin-cos formula: max |diff| %.3g\n", P, D, worst);
    CHECK(worst <= 1e-6);
}

// All stored tensors of the *.safetensors files in folder/sub, by name.
typedef struct {
    sd3_st_t *files[16];
    int n;
} s_folder_t;

static void
s_folder_open(s_folder_t *f, const char *folder, const char *sub)
{
    char dir[700], path[1000];
    snprintf(dir, sizeof dir, "%s/%s", folder, sub);
    f->n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && f->n < 16) {
        size_t len = strlen(e->d_name);
        if (len > 12 && !strcmp(e->d_name + len - 12, ".safetensors")) {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            f->files[f->n] = sd3_st_open(path, NULL);
            if (f->files[f->n])
                f->n++;
        }
    }
    if (d)
        closedir(d);
}

static bool
s_folder_get(const s_folder_t *f, const char *name, sd3_tensor_t *view)
{
    for (int i = 0; i < f->n; i++)
        if (sd3_st_get(f->files[i], name, view, NULL) == 0)
            return true;
    return false;
}

static void
s_check_convert(const char *p_single, const char *p_diff)
{
    char mid[600], back[600];
    const char *tmp = sd3_test_tmpdir();
    snprintf(mid, sizeof mid, "%s/golden-diffusers", tmp);
    snprintf(back, sizeof back, "%s/golden-back.safetensors", tmp);
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, NULL);
    opts.layout = SD3_LAYOUT_DIFFUSERS;
    sd3_err_t err = {0};
    CHECK_MSG(sd3_weights_convert(p_single, &opts, mid, &err) == 0, "%s", err.msg);
    // the stored diffusers tensors equal the golden folder's, name by name
    static const char *const subs[] = {"transformer", "vae", "text_encoder", "text_encoder_2",
                                       "text_encoder_3"};
    for (int c = 0; c < 5; c++) {
        s_folder_t gold, ours;
        s_folder_open(&gold, p_diff, subs[c]);
        s_folder_open(&ours, mid, subs[c]);
        size_t n_gold = 0, n_ours = 0, bad = 0;
        for (int i = 0; i < gold.n; i++)
            for (size_t k = 0; k < sd3_st_count(gold.files[i]); k++) {
                sd3_tensor_t a, b;
                const char *name = sd3_st_name(gold.files[i], k);
                sd3_st_get(gold.files[i], name, &a, NULL);
                n_gold++;
                if (!s_folder_get(&ours, name, &b) || a.dtype != b.dtype ||
                    !s_same_shape(a.ndim, a.shape, b.ndim, b.shape) ||
                    memcmp(a.data, b.data, sd3_tensor_nbytes(&a)) != 0) {
                    fprintf(stderr, "convert -> diffusers %s: '%s' missing or different\n", subs[c],
                            name);
                    bad++;
                }
            }
        for (int i = 0; i < ours.n; i++)
            n_ours += sd3_st_count(ours.files[i]);
        printf("convert single -> diffusers %-15s %4zu stored tensors vs golden %4zu: %s\n",
               subs[c], n_ours, n_gold, bad || n_ours != n_gold ? "DIFFER" : "bit-identical");
        CHECK(bad == 0 && n_ours == n_gold && n_gold > 0);
        for (int i = 0; i < gold.n; i++)
            sd3_st_destroy(&gold.files[i]);
        for (int i = 0; i < ours.n; i++)
            sd3_st_destroy(&ours.files[i]);
    }
    // and back
    opts.layout = SD3_LAYOUT_SINGLE;
    CHECK_MSG(sd3_weights_convert(mid, &opts, back, &err) == 0, "%s", err.msg);
    sd3_model_t *a = sd3_model_open(p_single, &err), *b = sd3_model_open(back, &err);
    CHECK(a && b);
    for (int c = 0; a && b && c < SD3_COMP_COUNT; c++) {
        sd3_weights_t *wa = sd3_weights_open(a, c, &err), *wb = sd3_weights_open(b, c, &err);
        char what[64];
        snprintf(what, sizeof what, "single -> diffusers -> single: %s", sd3_component_name(c));
        if (wa && wb)
            s_compare(what, wa, wb, SD3_DTYPE_COUNT, c == SD3_COMP_CLIP_L ? s_clip_l_extra : NULL);
        sd3_weights_destroy(&wa);
        sd3_weights_destroy(&wb);
    }
    sd3_model_destroy(&a);
    sd3_model_destroy(&b);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp);
}

int
main(void)
{
    const char *dir = sd3_test_data_dir();
    if (!dir)
        return 77;
    char p_single[600], p_diff[600], p_35[600], path[700];
    snprintf(p_single, sizeof p_single, "%s/e2e/tiny-sd3-medium-incl-clips-t5.safetensors", dir);
    snprintf(p_diff, sizeof p_diff, "%s/e2e/tiny-sd3-medium-diffusers", dir);
    snprintf(p_35, sizeof p_35, "%s/e2e/tiny-sd3.5-medium", dir);
    sd3_err_t err = {0};
    sd3_model_t *single = sd3_model_open(p_single, &err);
    CHECK_MSG(single != NULL, "%s", err.msg);
    sd3_model_t *diff = sd3_model_open(p_diff, &err);
    CHECK_MSG(diff != NULL, "%s", err.msg);
    sd3_model_t *m35 = sd3_model_open(p_35, &err);
    CHECK_MSG(m35 != NULL, "%s", err.msg);
    if (!single || !diff || !m35)
        return 1;

    CHECK(sd3_model_layout(single) == SD3_LAYOUT_SINGLE);
    CHECK(sd3_model_layout(diff) == SD3_LAYOUT_DIFFUSERS);
    CHECK(sd3_model_layout(m35) == SD3_LAYOUT_SD35);
    for (int c = 0; c < SD3_COMP_COUNT; c++) {
        CHECK(sd3_model_has(single, c));
        CHECK(sd3_model_has(diff, c));
        CHECK(sd3_model_has(m35, c));
    }
    for (int i = 0; i < 3; i++) {
        CHECK(sd3_model_tokenizer_dir(single, i) == NULL);
        CHECK(sd3_model_tokenizer_dir(diff, i) != NULL);
    }
    CHECK(strstr(sd3_model_tokenizer_dir(diff, 2), "tokenizer_3") != NULL);

    // 1. diffusers == single file, every component
    sd3_weights_t *ws[SD3_COMP_COUNT] = {0};
    for (int c = 0; c < SD3_COMP_COUNT; c++) {
        sd3_err_clear(&err);
        sd3_weights_t *a = sd3_weights_open(single, c, &err);
        CHECK_MSG(a != NULL, "%s", err.msg);
        sd3_weights_t *b = sd3_weights_open(diff, c, &err);
        CHECK_MSG(b != NULL, "%s", err.msg);
        if (!a || !b)
            return 1;
        char what[64];
        snprintf(what, sizeof what, "diffusers == single: %s", sd3_component_name(c));
        s_compare(what, a, b, SD3_DTYPE_COUNT, c == SD3_COMP_CLIP_L ? s_clip_l_extra : NULL);
        if (c == SD3_COMP_CLIP_L)
            s_check_identity(b);
        CHECK(sd3_weights_bytes(a) > 0);
        ws[c] = a;
        sd3_weights_destroy(&b);
    }
    // a few transformed tensors by hand: the last block's context modulation and the VAE
    // attention come back in the official shapes
    int ndim;
    int64_t shape[4];
    CHECK(sd3_weights_shape(ws[SD3_COMP_MMDIT],
                            "joint_blocks.1.context_block.adaLN_modulation.1.weight", &ndim,
                            shape) == 0 &&
          ndim == 2 && shape[0] == 256 && shape[1] == 128);
    CHECK(sd3_weights_shape(ws[SD3_COMP_VAE], "decoder.mid.attn_1.q.weight", &ndim, shape) == 0 &&
          ndim == 4 && shape[2] == 1 && shape[3] == 1);
    const sd3_tensor_t *t = NULL;
    sd3_err_clear(&err);
    CHECK(sd3_weights_need(ws[SD3_COMP_MMDIT], "final_layer.linear.weight", 2,
                           (int64_t[]){64, 2432}, &t, &err) == SD3_EFORMAT);
    CHECK_MSG(strstr(err.msg, "'final_layer.linear.weight' is [64,128], want [64,2432]"), "%s",
              err.msg);
    sd3_err_clear(&err);
    CHECK(sd3_weights_need(ws[SD3_COMP_MMDIT], "final_layer.linear.weight", 2, (int64_t[]){64, -1},
                           &t, &err) == 0 &&
          t && t->shape[1] == 128);
    CHECK(sd3_weights_need(ws[SD3_COMP_MMDIT], "no.such", 1, (int64_t[]){1}, &t, &err) ==
          SD3_EFORMAT);
    CHECK(sd3_weights_get(ws[SD3_COMP_MMDIT], "no.such") == NULL);

    // 2. the SD3.5 set's encoders == the single file's
    for (int c = SD3_COMP_CLIP_L; c <= SD3_COMP_T5; c++) {
        sd3_err_clear(&err);
        sd3_weights_t *b = sd3_weights_open(m35, c, &err);
        CHECK_MSG(b != NULL, "%s", err.msg);
        if (!b)
            continue;
        char what[64];
        snprintf(what, sizeof what, "sd3.5 set == single: %s", sd3_component_name(c));
        s_compare(what, ws[c], b, SD3_DTYPE_COUNT, c == SD3_COMP_CLIP_L ? s_clip_l_extra : NULL);
        sd3_weights_destroy(&b);
    }
    // the model path may also be the model file itself
    snprintf(path, sizeof path, "%s/sd3.5_medium.safetensors", p_35);
    sd3_model_t *m35f = sd3_model_open(path, &err);
    CHECK_MSG(m35f && sd3_model_layout(m35f) == SD3_LAYOUT_SD35 && sd3_model_has(m35f, SD3_COMP_T5),
              "%s", err.msg);
    sd3_model_destroy(&m35f);

    // 3. the parts the e2e files were assembled from (MMDiT rounded F32 -> F16)
    static const struct {
        const char *rel;
        sd3_component_t comp;
        sd3_dtype_t round_to;
    } parts[] = {
        {"dit/tiny-sd3-medium.safetensors", SD3_COMP_MMDIT, SD3_F16},
        {"enc/tiny-vae.safetensors", SD3_COMP_VAE, SD3_DTYPE_COUNT},
        {"enc/tiny-clip-g.safetensors", SD3_COMP_CLIP_G, SD3_DTYPE_COUNT},
        {"enc/tiny-t5.safetensors", SD3_COMP_T5, SD3_DTYPE_COUNT},
    };
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, parts[i].rel);
        sd3_err_clear(&err);
        sd3_weights_t *p = sd3_weights_open_path(path, parts[i].comp, &err);
        CHECK_MSG(p != NULL, "%s", err.msg);
        if (!p)
            continue;
        char what[64];
        snprintf(what, sizeof what, "%s", parts[i].rel);
        static const char *const t5_extra[] = {"shared.weight", NULL};
        s_compare(what, p, ws[parts[i].comp], parts[i].round_to,
                  parts[i].comp == SD3_COMP_T5 ? t5_extra : NULL);
        if (parts[i].comp == SD3_COMP_MMDIT)
            s_check_sincos(p, 13, 128);
        sd3_weights_destroy(&p);
    }
    // a diffusers component folder on its own
    snprintf(path, sizeof path, "%s/transformer", p_diff);
    sd3_err_clear(&err);
    sd3_weights_t *tf = sd3_weights_open_path(path, SD3_COMP_MMDIT, &err);
    CHECK_MSG(tf != NULL, "%s", err.msg);
    if (tf)
        s_compare("transformer/ folder == single: mmdit", ws[SD3_COMP_MMDIT], tf, SD3_DTYPE_COUNT,
                  NULL);
    sd3_weights_destroy(&tf);

    // 4. sd3_arch's tiny descriptions name exactly the golden tensors
    s_check_arch("tiny-sd3-medium", SD3_COMP_MMDIT, ws[SD3_COMP_MMDIT], NULL, NULL);
    s_check_arch("tiny-sd3-medium", SD3_COMP_VAE, ws[SD3_COMP_VAE], NULL, NULL);
    s_check_arch("tiny-sd3-medium", SD3_COMP_CLIP_L, ws[SD3_COMP_CLIP_L], "text_projection.weight",
                 NULL);
    s_check_arch("tiny-sd3-medium", SD3_COMP_CLIP_G, ws[SD3_COMP_CLIP_G], NULL, NULL);
    s_check_arch("tiny-sd3-medium", SD3_COMP_T5, ws[SD3_COMP_T5], NULL, "shared.weight");
    static const char *const dits[][2] = {{"tiny-sd3.5-medium", "tiny-sd3.5-medium"},
                                          {"tiny-sd3.5-large", "tiny-sd3.5-large"}};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/dit/%s.safetensors", dir, dits[i][0]);
        sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_MMDIT, &err);
        CHECK_MSG(w != NULL, "%s", err.msg);
        if (w)
            s_check_arch(dits[i][1], SD3_COMP_MMDIT, w, NULL, NULL);
        sd3_weights_destroy(&w);
    }
    // and the detection from shapes gives back the tiny configs
    sd3_arch_t det;
    sd3_err_clear(&err);
    CHECK_MSG(sd3_arch_from_model(m35, &det, &err) == 0, "%s", err.msg);
    const sd3_arch_t *want = sd3_arch_find("tiny-sd3.5-medium");
    CHECK(!memcmp(&det.mmdit, &want->mmdit, sizeof det.mmdit));
    CHECK(!memcmp(&det.clip_l, &want->clip_l, sizeof det.clip_l));
    CHECK(!memcmp(&det.clip_g, &want->clip_g, sizeof det.clip_g));
    CHECK(!memcmp(&det.t5, &want->t5, sizeof det.t5));
    CHECK(!memcmp(&det.vae, &want->vae, sizeof det.vae));
    CHECK(!strcmp(det.model_file, "sd3.5_medium.safetensors"));

    for (int c = 0; c < SD3_COMP_COUNT; c++)
        sd3_weights_destroy(&ws[c]);
    s_check_convert(p_single, p_diff);
    sd3_model_destroy(&single);
    sd3_model_destroy(&diff);
    sd3_model_destroy(&m35);
    return TEST_RESULT();
}
