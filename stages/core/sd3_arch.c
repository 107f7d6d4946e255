/*  sd3_arch - the shape of every released architecture (see sd3_arch.h)
 *
 *  Real sizes from MODEL.md §2 (MMDiT), §5.1 (encoders), §6 (VAE); tiny sizes from the golden
 *  models (TESTVECTORS-dit.md §1, TESTVECTORS-enc.md §2, TESTVECTORS-e2e.md §1).  */
#include "sd3_arch.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_CLIP_L_REAL                                                                              \
    {                                                                                              \
        768, 12, 12, 3072, 49408, 77, true, true                                                   \
    }
#define S_CLIP_G_REAL                                                                              \
    {                                                                                              \
        1280, 32, 20, 5120, 49408, 77, false, false                                                \
    }
#define S_T5_REAL                                                                                  \
    {                                                                                              \
        4096, 24, 64, 64, 10240, 32128, 32, 128                                                    \
    }
#define S_VAE_REAL                                                                                 \
    {                                                                                              \
        128, {1, 2, 4, 4}, 2, 16, 3                                                                \
    }
#define S_CLIP_L_TINY                                                                              \
    {                                                                                              \
        32, 3, 2, 128, 49408, 77, true, true                                                       \
    }
#define S_CLIP_G_TINY                                                                              \
    {                                                                                              \
        48, 3, 3, 192, 49408, 77, false, false                                                     \
    }
#define S_T5_TINY                                                                                  \
    {                                                                                              \
        96, 2, 6, 16, 240, 32128, 32, 128                                                          \
    }
#define S_VAE_TINY                                                                                 \
    {                                                                                              \
        32, {1, 2, 4, 4}, 2, 16, 3                                                                 \
    }

static const sd3_arch_t s_archs[] = {
    {"sd3-medium",
     "sd3_medium.safetensors",
     {24, 1536, 24, 64, 2, 16, 192, 2048, 4096, false, 0, 128},
     S_CLIP_L_REAL,
     S_CLIP_G_REAL,
     S_T5_REAL,
     S_VAE_REAL},
    {"sd3.5-medium",
     "sd3.5_medium.safetensors",
     {24, 1536, 24, 64, 2, 16, 384, 2048, 4096, true, 13, 128},
     S_CLIP_L_REAL,
     S_CLIP_G_REAL,
     S_T5_REAL,
     S_VAE_REAL},
    {"sd3.5-large",
     "sd3.5_large.safetensors",
     {38, 2432, 38, 64, 2, 16, 192, 2048, 4096, true, 0, 128},
     S_CLIP_L_REAL,
     S_CLIP_G_REAL,
     S_T5_REAL,
     S_VAE_REAL},
    {"tiny-sd3-medium",
     "sd3_medium.safetensors",
     {2, 128, 2, 64, 2, 16, 13, 80, 96, false, 0, 16},
     S_CLIP_L_TINY,
     S_CLIP_G_TINY,
     S_T5_TINY,
     S_VAE_TINY},
    {"tiny-sd3.5-medium",
     "sd3.5_medium.safetensors",
     {3, 192, 3, 64, 2, 16, 16, 80, 96, true, 2, 16},
     S_CLIP_L_TINY,
     S_CLIP_G_TINY,
     S_T5_TINY,
     S_VAE_TINY},
    {"tiny-sd3.5-large",
     "sd3.5_large.safetensors",
     {2, 128, 2, 64, 2, 16, 12, 80, 96, true, 0, 16},
     S_CLIP_L_TINY,
     S_CLIP_G_TINY,
     S_T5_TINY,
     S_VAE_TINY},
};
#define S_N_ARCHS (sizeof s_archs / sizeof s_archs[0])

const sd3_arch_t *
sd3_arch_find(const char *name)
{
    for (size_t i = 0; i < S_N_ARCHS; i++)
        if (!strcmp(s_archs[i].name, name))
            return &s_archs[i];
    return NULL;
}

size_t
sd3_arch_count(void)
{
    return S_N_ARCHS;
}

const sd3_arch_t *
sd3_arch_at(size_t i)
{
    return i < S_N_ARCHS ? &s_archs[i] : NULL;
}

const char *
sd3_arch_names(void)
{
    return "sd3-medium|sd3.5-medium|sd3.5-large|tiny-sd3-medium|tiny-sd3.5-medium|"
           "tiny-sd3.5-large";
}

// ---- enumeration -----------------------------------------------------------------------

typedef struct {
    sd3_arch_tensor_t *items;
    size_t n, cap;
    bool failed;
} s_list_t;

static void __attribute__((format(printf, 6, 7)))
s_add(s_list_t *l, sd3_init_t init, int64_t fan_in, int ndim, const int64_t *shape, const char *fmt,
      ...)
{
    if (l->failed)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        sd3_arch_tensor_t *p = realloc(l->items, cap * sizeof *p);
        if (!p) {
            l->failed = true;
            return;
        }
        l->items = p;
        l->cap = cap;
    }
    sd3_arch_tensor_t *t = &l->items[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->init = init;
    t->fan_in = fan_in;
}

#define S_SHAPE(...) ((const int64_t[]){__VA_ARGS__})

// prefix.weight [out, in] + prefix.bias [out]
static void
s_linear(s_list_t *l, const char *prefix, int64_t out, int64_t in, sd3_init_t init)
{
    s_add(l, init, in, 2, S_SHAPE(out, in), "%s.weight", prefix);
    s_add(l, SD3_INIT_BIAS, 0, 1, S_SHAPE(out), "%s.bias", prefix);
}

static void
s_norm(s_list_t *l, const char *prefix, int64_t width, bool bias)
{
    s_add(l, SD3_INIT_NORM, 0, 1, S_SHAPE(width), "%s.weight", prefix);
    if (bias)
        s_add(l, SD3_INIT_BIAS, 0, 1, S_SHAPE(width), "%s.bias", prefix);
}

static void
s_mmdit(s_list_t *l, const sd3_arch_mmdit_t *m)
{
    const int64_t D = m->hidden, P = m->pos_embed_max, p = m->patch, C = m->in_channels;
    char pre[96];
    s_add(l, SD3_INIT_LINEAR, C * p * p, 4, S_SHAPE(D, C, p, p), "x_embedder.proj.weight");
    s_add(l, SD3_INIT_BIAS, 0, 1, S_SHAPE(D), "x_embedder.proj.bias");
    s_add(l, SD3_INIT_SINCOS, 0, 3, S_SHAPE(1, P * P, D), "pos_embed");
    s_linear(l, "t_embedder.mlp.0", D, 256, SD3_INIT_LINEAR);
    s_linear(l, "t_embedder.mlp.2", D, D, SD3_INIT_LINEAR);
    s_linear(l, "y_embedder.mlp.0", D, m->adm_in, SD3_INIT_LINEAR);
    s_linear(l, "y_embedder.mlp.2", D, D, SD3_INIT_LINEAR);
    s_linear(l, "context_embedder", D, m->context_in, SD3_INIT_LINEAR);
    for (int i = 0; i < m->depth; i++) {
        for (int s = 0; s < 2; s++) {
            const char *blk = s == 0 ? "context_block" : "x_block";
            bool pre_only = s == 0 && i == m->depth - 1; // MODEL.md §3.1 "Last block"
            bool attn2 = s == 1 && i < m->n_attn2;
            int n_mod = pre_only ? 2 : attn2 ? 9 : 6;
            snprintf(pre, sizeof pre, "joint_blocks.%d.%s.adaLN_modulation.1", i, blk);
            s_linear(l, pre, n_mod * D, D, SD3_INIT_ADALN);
            snprintf(pre, sizeof pre, "joint_blocks.%d.%s.attn.qkv", i, blk);
            s_linear(l, pre, 3 * D, D, SD3_INIT_LINEAR);
            if (m->qk_norm) {
                snprintf(pre, sizeof pre, "joint_blocks.%d.%s.attn.ln_q", i, blk);
                s_norm(l, pre, m->head_dim, false);
                snprintf(pre, sizeof pre, "joint_blocks.%d.%s.attn.ln_k", i, blk);
                s_norm(l, pre, m->head_dim, false);
            }
            if (!pre_only) {
                snprintf(pre, sizeof pre, "joint_blocks.%d.%s.attn.proj", i, blk);
                s_linear(l, pre, D, D, SD3_INIT_LINEAR);
            }
            if (attn2) {
                snprintf(pre, sizeof pre, "joint_blocks.%d.x_block.attn2.qkv", i);
                s_linear(l, pre, 3 * D, D, SD3_INIT_LINEAR);
                if (m->qk_norm) {
                    snprintf(pre, sizeof pre, "joint_blocks.%d.x_block.attn2.ln_q", i);
                    s_norm(l, pre, m->head_dim, false);
                    snprintf(pre, sizeof pre, "joint_blocks.%d.x_block.attn2.ln_k", i);
                    s_norm(l, pre, m->head_dim, false);
                }
                snprintf(pre, sizeof pre, "joint_blocks.%d.x_block.attn2.proj", i);
                s_linear(l, pre, D, D, SD3_INIT_LINEAR);
            }
            if (!pre_only) {
                snprintf(pre, sizeof pre, "joint_blocks.%d.%s.mlp.fc1", i, blk);
                s_linear(l, pre, 4 * D, D, SD3_INIT_LINEAR);
                snprintf(pre, sizeof pre, "joint_blocks.%d.%s.mlp.fc2", i, blk);
                s_linear(l, pre, D, 4 * D, SD3_INIT_LINEAR);
            }
        }
    }
    s_linear(l, "final_layer.adaLN_modulation.1", 2 * D, D, SD3_INIT_ADALN);
    s_linear(l, "final_layer.linear", p * p * C, D, SD3_INIT_LINEAR);
}

static void
s_clip(s_list_t *l, const sd3_arch_clip_t *c)
{
    const int64_t W = c->width, F = c->ffn;
    char pre[96];
    s_add(l, SD3_INIT_EMBED, 0, 2, S_SHAPE(c->vocab, W),
          "text_model.embeddings.token_embedding.weight");
    s_add(l, SD3_INIT_POS, 0, 2, S_SHAPE(c->n_pos, W),
          "text_model.embeddings.position_embedding.weight");
    for (int i = 0; i < c->layers; i++) {
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.layer_norm1", i);
        s_norm(l, pre, W, true);
        for (int k = 0; k < 4; k++) {
            snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.self_attn.%s", i, proj[k]);
            s_linear(l, pre, W, W, SD3_INIT_LINEAR);
        }
        snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.layer_norm2", i);
        s_norm(l, pre, W, true);
        snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.mlp.fc1", i);
        s_linear(l, pre, F, W, SD3_INIT_LINEAR);
        snprintf(pre, sizeof pre, "text_model.encoder.layers.%d.mlp.fc2", i);
        s_linear(l, pre, W, F, SD3_INIT_LINEAR);
    }
    s_norm(l, "text_model.final_layer_norm", W, true);
    s_add(l, c->identity_project ? SD3_INIT_IDENTITY : SD3_INIT_LINEAR, W, 2, S_SHAPE(W, W),
          "text_projection.weight");
}

static void
s_t5(s_list_t *l, const sd3_arch_t5_t *t)
{
    const int64_t d = t->d_model, inner = (int64_t)t->heads * t->d_kv, ff = t->d_ff;
    s_add(l, SD3_INIT_EMBED, 0, 2, S_SHAPE(t->vocab, d), "encoder.embed_tokens.weight");
    for (int i = 0; i < t->layers; i++) {
        const char *a = "encoder.block.%d.layer.0.SelfAttention.%s.weight";
        s_add(l, SD3_INIT_T5_QK, d, 2, S_SHAPE(inner, d), a, i, "q");
        s_add(l, SD3_INIT_T5_QK, d, 2, S_SHAPE(inner, d), a, i, "k");
        s_add(l, SD3_INIT_LINEAR, d, 2, S_SHAPE(inner, d), a, i, "v");
        s_add(l, SD3_INIT_LINEAR, inner, 2, S_SHAPE(d, inner), a, i, "o");
        if (i == 0) // held by block 0 only and shared by all blocks (MODEL.md §5.1)
            s_add(l, SD3_INIT_RELBIAS, 0, 2, S_SHAPE(t->buckets, t->heads), a, 0,
                  "relative_attention_bias");
        s_add(l, SD3_INIT_NORM, 0, 1, S_SHAPE(d), "encoder.block.%d.layer.0.layer_norm.weight", i);
        const char *f = "encoder.block.%d.layer.1.DenseReluDense.%s.weight";
        s_add(l, SD3_INIT_LINEAR, d, 2, S_SHAPE(ff, d), f, i, "wi_0");
        s_add(l, SD3_INIT_LINEAR, d, 2, S_SHAPE(ff, d), f, i, "wi_1");
        s_add(l, SD3_INIT_LINEAR, ff, 2, S_SHAPE(d, ff), f, i, "wo");
        s_add(l, SD3_INIT_NORM, 0, 1, S_SHAPE(d), "encoder.block.%d.layer.1.layer_norm.weight", i);
    }
    s_add(l, SD3_INIT_NORM, 0, 1, S_SHAPE(d), "encoder.final_layer_norm.weight");
}

static void
s_conv(s_list_t *l, const char *prefix, int64_t out, int64_t in, int64_t k)
{
    s_add(l, SD3_INIT_LINEAR, in * k * k, 4, S_SHAPE(out, in, k, k), "%s.weight", prefix);
    s_add(l, SD3_INIT_BIAS, 0, 1, S_SHAPE(out), "%s.bias", prefix);
}

// ResBlock ci -> co (MODEL.md §6.1): norm1, conv1, norm2, conv2, nin_shortcut when ci != co.
static void
s_resblock(s_list_t *l, const char *prefix, int64_t ci, int64_t co)
{
    char pre[128];
    snprintf(pre, sizeof pre, "%s.norm1", prefix);
    s_norm(l, pre, ci, true);
    snprintf(pre, sizeof pre, "%s.conv1", prefix);
    s_conv(l, pre, co, ci, 3);
    snprintf(pre, sizeof pre, "%s.norm2", prefix);
    s_norm(l, pre, co, true);
    snprintf(pre, sizeof pre, "%s.conv2", prefix);
    s_conv(l, pre, co, co, 3);
    if (ci != co) {
        snprintf(pre, sizeof pre, "%s.nin_shortcut", prefix);
        s_conv(l, pre, co, ci, 1);
    }
}

static void
s_vae_mid(s_list_t *l, const char *side, int64_t c)
{
    char pre[96];
    snprintf(pre, sizeof pre, "%s.mid.block_1", side);
    s_resblock(l, pre, c, c);
    snprintf(pre, sizeof pre, "%s.mid.attn_1.norm", side);
    s_norm(l, pre, c, true);
    static const char *const qkvo[] = {"q", "k", "v", "proj_out"};
    for (int k = 0; k < 4; k++) {
        snprintf(pre, sizeof pre, "%s.mid.attn_1.%s", side, qkvo[k]);
        s_conv(l, pre, c, c, 1); // [c,c,1,1] in the official layout
    }
    snprintf(pre, sizeof pre, "%s.mid.block_2", side);
    s_resblock(l, pre, c, c);
}

static void
s_vae(s_list_t *l, const sd3_arch_vae_t *v)
{
    const int64_t ch = v->ch;
    char pre[96];
    // encoder (MODEL.md §6.3)
    s_conv(l, "encoder.conv_in", ch, v->image_channels, 3);
    int64_t block_in = ch;
    for (int i = 0; i < 4; i++) {
        int64_t block_out = ch * v->ch_mult[i];
        for (int j = 0; j < v->num_res_blocks; j++) {
            snprintf(pre, sizeof pre, "encoder.down.%d.block.%d", i, j);
            s_resblock(l, pre, j == 0 ? block_in : block_out, block_out);
        }
        if (i != 3) {
            snprintf(pre, sizeof pre, "encoder.down.%d.downsample.conv", i);
            s_conv(l, pre, block_out, block_out, 3);
        }
        block_in = block_out;
    }
    s_vae_mid(l, "encoder", block_in);
    s_norm(l, "encoder.norm_out", block_in, true);
    s_conv(l, "encoder.conv_out", 2 * v->z_channels, block_in, 3);
    // decoder (MODEL.md §6.2): levels run 3 -> 0
    block_in = ch * v->ch_mult[3];
    s_conv(l, "decoder.conv_in", block_in, v->z_channels, 3);
    s_vae_mid(l, "decoder", block_in);
    for (int i = 3; i >= 0; i--) {
        int64_t block_out = ch * v->ch_mult[i];
        for (int j = 0; j < v->num_res_blocks + 1; j++) {
            snprintf(pre, sizeof pre, "decoder.up.%d.block.%d", i, j);
            s_resblock(l, pre, j == 0 ? block_in : block_out, block_out);
        }
        if (i != 0) {
            snprintf(pre, sizeof pre, "decoder.up.%d.upsample.conv", i);
            s_conv(l, pre, block_out, block_out, 3);
        }
        block_in = block_out;
    }
    s_norm(l, "decoder.norm_out", block_in, true);
    s_conv(l, "decoder.conv_out", v->image_channels, block_in, 3);
}

sd3_arch_tensor_t *
sd3_arch_tensors(const sd3_arch_t *arch, sd3_component_t comp, size_t *n, sd3_err_t *err)
{
    s_list_t l = {0};
    *n = 0;
    switch (comp) {
    case SD3_COMP_MMDIT: {
        const sd3_arch_mmdit_t *m = &arch->mmdit;
        if (m->depth < 1 || m->hidden < 1 || m->pos_embed_max < 1 || m->n_attn2 > m->depth ||
            m->n_attn2 < 0 || m->patch < 1 || m->in_channels < 1 || m->adm_in < 1 ||
            m->context_in < 1 || m->head_dim < 1) {
            sd3_err_set(err, SD3_EINVAL, "arch '%s': inconsistent MMDiT description", arch->name);
            return NULL;
        }
        s_mmdit(&l, m);
        break;
    }
    case SD3_COMP_CLIP_L:
    case SD3_COMP_CLIP_G: {
        const sd3_arch_clip_t *c = comp == SD3_COMP_CLIP_L ? &arch->clip_l : &arch->clip_g;
        if (c->width < 1 || c->layers < 1 || c->ffn < 1 || c->vocab < 1 || c->n_pos < 1) {
            sd3_err_set(err, SD3_EINVAL, "arch '%s': inconsistent CLIP description", arch->name);
            return NULL;
        }
        s_clip(&l, c);
        break;
    }
    case SD3_COMP_T5:
        if (arch->t5.d_model < 1 || arch->t5.layers < 1 || arch->t5.heads < 1 ||
            arch->t5.d_kv < 1 || arch->t5.d_ff < 1 || arch->t5.vocab < 1) {
            sd3_err_set(err, SD3_EINVAL, "arch '%s': inconsistent T5 description", arch->name);
            return NULL;
        }
        s_t5(&l, &arch->t5);
        break;
    case SD3_COMP_VAE:
        if (arch->vae.ch < 1 || arch->vae.num_res_blocks < 1 || arch->vae.z_channels < 1) {
            sd3_err_set(err, SD3_EINVAL, "arch '%s': inconsistent VAE description", arch->name);
            return NULL;
        }
        s_vae(&l, &arch->vae);
        break;
    default:
        sd3_err_set(err, SD3_EINVAL, "arch '%s': no component %d", arch->name, (int)comp);
        return NULL;
    }
    if (l.failed) {
        free(l.items);
        sd3_err_set(err, SD3_ENOMEM, "arch '%s': out of memory", arch->name);
        return NULL;
    }
    *n = l.n;
    return l.items;
}

static uint64_t
s_numel(const sd3_arch_tensor_t *t)
{
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= (uint64_t)t->shape[d];
    return n;
}

uint64_t
sd3_arch_params(const sd3_arch_t *arch, sd3_component_t comp)
{
    if (comp == SD3_COMP_COUNT) {
        uint64_t total = 0;
        for (int c = 0; c < SD3_COMP_COUNT; c++)
            total += sd3_arch_params(arch, (sd3_component_t)c);
        return total;
    }
    size_t n;
    sd3_arch_tensor_t *ts = sd3_arch_tensors(arch, comp, &n, NULL);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += s_numel(&ts[i]);
    free(ts);
    return total;
}

uint64_t
sd3_arch_block_params(const sd3_arch_t *arch, int first, int last)
{
    size_t n;
    sd3_arch_tensor_t *ts = sd3_arch_tensors(arch, SD3_COMP_MMDIT, &n, NULL);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int b;
        if (sscanf(ts[i].name, "joint_blocks.%d.", &b) == 1 && b >= first && b < last)
            total += s_numel(&ts[i]);
    }
    free(ts);
    return total;
}

// ---- detection from a checkpoint -------------------------------------------------------

static bool
s_shape(sd3_weights_t *w, const char *name, int want_ndim, int64_t *shape)
{
    int ndim;
    int64_t tmp[SD3_MAX_DIM];
    if (sd3_weights_shape(w, name, &ndim, tmp) != 0 || ndim != want_ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        shape[i] = tmp[i];
    return true;
}

static int
s_count_layers(sd3_weights_t *w, const char *fmt)
{
    char name[SD3_ARCH_NAME_MAX];
    int n = 0;
    for (;; n++) {
        snprintf(name, sizeof name, fmt, n);
        if (!sd3_weights_has(w, name))
            return n;
    }
}

static int
s_detect_mmdit(sd3_weights_t *w, sd3_arch_t *a, sd3_err_t *err)
{
    sd3_arch_mmdit_t *m = &a->mmdit;
    int64_t s[4];
    const char *file = "mmdit";
    if (!s_shape(w, "x_embedder.proj.weight", 4, s) || s[0] % 64 != 0 || s[2] != s[3])
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s: 'x_embedder.proj.weight' missing or not [64*depth,C,p,p]", file);
    m->hidden = (int)s[0];
    m->depth = m->heads = (int)(s[0] / 64);
    m->head_dim = 64;
    m->in_channels = (int)s[1];
    m->patch = (int)s[2];
    if (!s_shape(w, "pos_embed", 3, s))
        return sd3_err_set(err, SD3_EFORMAT, "%s: 'pos_embed' missing or not 3-D", file);
    m->pos_embed_max = (int)llround(sqrt((double)s[1]));
    if ((int64_t)m->pos_embed_max * m->pos_embed_max != s[1])
        return sd3_err_set(err, SD3_EFORMAT, "%s: pos_embed has %lld rows, not a square", file,
                           (long long)s[1]);
    if (!s_shape(w, "y_embedder.mlp.0.weight", 2, s))
        return sd3_err_set(err, SD3_EFORMAT, "%s: 'y_embedder.mlp.0.weight' missing", file);
    m->adm_in = (int)s[1];
    if (!s_shape(w, "context_embedder.weight", 2, s))
        return sd3_err_set(err, SD3_EFORMAT, "%s: 'context_embedder.weight' missing", file);
    m->context_in = (int)s[1];
    m->qk_norm = sd3_weights_has(w, "joint_blocks.0.context_block.attn.ln_k.weight");
    m->n_attn2 = s_count_layers(w, "joint_blocks.%d.x_block.attn2.qkv.weight");
    int blocks = s_count_layers(w, "joint_blocks.%d.x_block.attn.qkv.weight");
    if (blocks != m->depth)
        return sd3_err_set(err, SD3_EFORMAT, "%s: %d joint blocks, but hidden %d means depth %d",
                           file, blocks, m->hidden, m->depth);
    snprintf(a->model_file, sizeof a->model_file, "%s",
             m->depth == 38 ? "sd3.5_large.safetensors"
             : m->n_attn2   ? "sd3.5_medium.safetensors"
             : m->qk_norm   ? "sd3.5_large.safetensors"
                            : "sd3_medium.safetensors");
    return 0;
}

static void
s_detect_clip(sd3_weights_t *w, sd3_arch_clip_t *c, bool is_l)
{
    int64_t s[2];
    if (s_shape(w, "text_model.embeddings.token_embedding.weight", 2, s)) {
        c->vocab = (int)s[0];
        c->width = (int)s[1];
    }
    if (s_shape(w, "text_model.embeddings.position_embedding.weight", 2, s))
        c->n_pos = (int)s[0];
    if (s_shape(w, "text_model.encoder.layers.0.mlp.fc1.weight", 2, s))
        c->ffn = (int)s[0];
    c->layers = s_count_layers(w, "text_model.encoder.layers.%d.self_attn.q_proj.weight");
    // Head count is not in the shapes: the real encoders use 64-wide heads, the tiny 16-wide.
    c->heads = c->width % 64 == 0 && c->width >= 256 ? c->width / 64 : c->width / 16;
    c->quick_gelu = is_l;
    c->identity_project = is_l;
}

static void
s_detect_t5(sd3_weights_t *w, sd3_arch_t5_t *t)
{
    int64_t s[2];
    if (s_shape(w, "encoder.embed_tokens.weight", 2, s)) {
        t->vocab = (int)s[0];
        t->d_model = (int)s[1];
    }
    if (s_shape(w, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2, s)) {
        t->buckets = (int)s[0];
        t->heads = (int)s[1];
    }
    if (s_shape(w, "encoder.block.0.layer.0.SelfAttention.q.weight", 2, s) && t->heads > 0)
        t->d_kv = (int)(s[0] / t->heads);
    if (s_shape(w, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 2, s))
        t->d_ff = (int)s[0];
    t->layers = s_count_layers(w, "encoder.block.%d.layer.0.SelfAttention.q.weight");
}

static void
s_detect_vae(sd3_weights_t *w, sd3_arch_vae_t *v)
{
    int64_t s[4];
    if (s_shape(w, "encoder.conv_in.weight", 4, s)) {
        v->ch = (int)s[0];
        v->image_channels = (int)s[1];
    }
    for (int i = 0; i < 4 && v->ch > 0; i++) {
        char name[96];
        snprintf(name, sizeof name, "encoder.down.%d.block.0.conv1.weight", i);
        if (s_shape(w, name, 4, s))
            v->ch_mult[i] = (int)(s[0] / v->ch);
    }
    int n = s_count_layers(w, "encoder.down.0.block.%d.conv1.weight");
    if (n > 0)
        v->num_res_blocks = n;
    if (s_shape(w, "decoder.conv_in.weight", 4, s))
        v->z_channels = (int)s[1];
}

int
sd3_arch_from_model(sd3_model_t *model, sd3_arch_t *out, sd3_err_t *err)
{
    int rc = 0;
    sd3_weights_t *w = NULL;
    *out = s_archs[0];
    // Start from the tiny descriptions when the MMDiT is tiny, so absent parts stay in scale.
    if (sd3_model_has(model, SD3_COMP_MMDIT)) {
        if (!(w = sd3_weights_open(model, SD3_COMP_MMDIT, err)))
            return err ? err->code : SD3_EFORMAT;
        int64_t s[4];
        if (s_shape(w, "x_embedder.proj.weight", 4, s) && s[0] < 1024)
            *out = s_archs[3];
        if ((rc = s_detect_mmdit(w, out, err)) != 0) {
            sd3_weights_destroy(&w);
            return sd3_err_prefix(err, "%s", sd3_model_path(model));
        }
        sd3_weights_destroy(&w);
    }
    snprintf(out->name, sizeof out->name, "detected");
    for (int c = SD3_COMP_VAE; c < SD3_COMP_COUNT; c++) {
        if (!sd3_model_has(model, (sd3_component_t)c))
            continue;
        if (!(w = sd3_weights_open(model, (sd3_component_t)c, err)))
            return err ? err->code : SD3_EFORMAT;
        if (c == SD3_COMP_VAE)
            s_detect_vae(w, &out->vae);
        else if (c == SD3_COMP_T5)
            s_detect_t5(w, &out->t5);
        else
            s_detect_clip(w, c == SD3_COMP_CLIP_L ? &out->clip_l : &out->clip_g,
                          c == SD3_COMP_CLIP_L);
        sd3_weights_destroy(&w);
    }
    return 0;
}
