/*  sd3_weights_names - the key mappings between checkpoint layouts (see the header)  */
#include "sd3_weights_names.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *
sd3_wnames_single_prefix(sd3_component_t comp)
{
    switch (comp) {
    case SD3_COMP_MMDIT:
        return "model.diffusion_model.";
    case SD3_COMP_VAE:
        return "first_stage_model.";
    case SD3_COMP_CLIP_L:
        return "text_encoders.clip_l.transformer.";
    case SD3_COMP_CLIP_G:
        return "text_encoders.clip_g.transformer.";
    case SD3_COMP_T5:
        return "text_encoders.t5xxl.transformer.";
    default:
        return "";
    }
}

const char *
sd3_wnames_diffusers_dir(sd3_component_t comp)
{
    switch (comp) {
    case SD3_COMP_MMDIT:
        return "transformer";
    case SD3_COMP_VAE:
        return "vae";
    case SD3_COMP_CLIP_L:
        return "text_encoder";
    case SD3_COMP_CLIP_G:
        return "text_encoder_2";
    case SD3_COMP_T5:
        return "text_encoder_3";
    default:
        return "";
    }
}

// ---- MMDiT (MODEL.md §3.2) -------------------------------------------------------------

typedef struct {
    const char *diff;  // diffusers prefix (or whole key when exact)
    const char *canon; // canonical prefix
    int part;          // -1, or 0..2 for q/k/v
    int swap;          // 1: always swapped; 2: swapped in the last block only
    bool exact;
} s_rule_t;

static const s_rule_t s_mmdit_global[] = {
    {"pos_embed.pos_embed", "pos_embed", -1, 0, true},
    {"pos_embed.proj.", "x_embedder.proj.", -1, 0, false},
    {"time_text_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0.", -1, 0, false},
    {"time_text_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2.", -1, 0, false},
    {"time_text_embed.text_embedder.linear_1.", "y_embedder.mlp.0.", -1, 0, false},
    {"time_text_embed.text_embedder.linear_2.", "y_embedder.mlp.2.", -1, 0, false},
    {"context_embedder.", "context_embedder.", -1, 0, false},
    {"proj_out.", "final_layer.linear.", -1, 0, false},
    {"norm_out.linear.", "final_layer.adaLN_modulation.1.", -1, 1, false},
};

// Inside "transformer_blocks.N." <-> "joint_blocks.N."
static const s_rule_t s_mmdit_block[] = {
    {"attn.to_q.", "x_block.attn.qkv.", 0, 0, false},
    {"attn.to_k.", "x_block.attn.qkv.", 1, 0, false},
    {"attn.to_v.", "x_block.attn.qkv.", 2, 0, false},
    {"attn.add_q_proj.", "context_block.attn.qkv.", 0, 0, false},
    {"attn.add_k_proj.", "context_block.attn.qkv.", 1, 0, false},
    {"attn.add_v_proj.", "context_block.attn.qkv.", 2, 0, false},
    {"attn.norm_q.", "x_block.attn.ln_q.", -1, 0, false},
    {"attn.norm_k.", "x_block.attn.ln_k.", -1, 0, false},
    {"attn.norm_added_q.", "context_block.attn.ln_q.", -1, 0, false},
    {"attn.norm_added_k.", "context_block.attn.ln_k.", -1, 0, false},
    {"attn.to_out.0.", "x_block.attn.proj.", -1, 0, false},
    {"attn.to_add_out.", "context_block.attn.proj.", -1, 0, false},
    {"attn2.to_q.", "x_block.attn2.qkv.", 0, 0, false},
    {"attn2.to_k.", "x_block.attn2.qkv.", 1, 0, false},
    {"attn2.to_v.", "x_block.attn2.qkv.", 2, 0, false},
    {"attn2.norm_q.", "x_block.attn2.ln_q.", -1, 0, false},
    {"attn2.norm_k.", "x_block.attn2.ln_k.", -1, 0, false},
    {"attn2.to_out.0.", "x_block.attn2.proj.", -1, 0, false},
    {"norm1.linear.", "x_block.adaLN_modulation.1.", -1, 0, false},
    {"norm1_context.linear.", "context_block.adaLN_modulation.1.", -1, 2, false},
    {"ff.net.0.proj.", "x_block.mlp.fc1.", -1, 0, false},
    {"ff.net.2.", "x_block.mlp.fc2.", -1, 0, false},
    {"ff_context.net.0.proj.", "context_block.mlp.fc1.", -1, 0, false},
    {"ff_context.net.2.", "context_block.mlp.fc2.", -1, 0, false},
};

#define S_N(a) (sizeof(a) / sizeof((a)[0]))

static bool
s_starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

// Parses "<prefix><int>." at s; returns the index and sets *rest after the dot, or -1.
static int
s_index(const char *s, const char *prefix, const char **rest)
{
    if (!s_starts(s, prefix))
        return -1;
    s += strlen(prefix);
    if (*s < '0' || *s > '9')
        return -1;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end != '.' || v < 0 || v > 100000 || (s[0] == '0' && end - s > 1))
        return -1;
    *rest = end + 1;
    return (int)v;
}

static int
s_put(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s%s", a, b);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int
s_mmdit_from(const char *key, int last_block, char *out, size_t cap, sd3_wname_xf_t *xf)
{
    const char *rest;
    for (size_t i = 0; i < S_N(s_mmdit_global); i++) {
        const s_rule_t *r = &s_mmdit_global[i];
        if (r->exact ? !strcmp(key, r->diff) : s_starts(key, r->diff)) {
            xf->swap = r->swap == 1;
            return s_put(out, cap, r->canon, key + strlen(r->diff));
        }
    }
    int b = s_index(key, "transformer_blocks.", &rest);
    if (b < 0)
        return -1;
    for (size_t i = 0; i < S_N(s_mmdit_block); i++) {
        const s_rule_t *r = &s_mmdit_block[i];
        if (!s_starts(rest, r->diff))
            continue;
        xf->part = r->part;
        xf->swap = r->swap == 1 || (r->swap == 2 && b == last_block);
        int n = snprintf(out, cap, "joint_blocks.%d.%s%s", b, r->canon, rest + strlen(r->diff));
        return n < 0 || (size_t)n >= cap ? -1 : 0;
    }
    return -1;
}

static int
s_mmdit_to(const char *canon, int last_block, char out[3][SD3_WNAME_MAX], sd3_wname_xf_t xf[3])
{
    const char *rest;
    for (size_t i = 0; i < S_N(s_mmdit_global); i++) {
        const s_rule_t *r = &s_mmdit_global[i];
        if (r->exact ? !strcmp(canon, r->canon) : s_starts(canon, r->canon)) {
            xf[0].swap = r->swap == 1;
            return s_put(out[0], SD3_WNAME_MAX, r->diff, canon + strlen(r->canon)) ? 0 : 1;
        }
    }
    int b = s_index(canon, "joint_blocks.", &rest);
    if (b < 0)
        return 0;
    int n = 0;
    for (size_t i = 0; i < S_N(s_mmdit_block) && n < 3; i++) {
        const s_rule_t *r = &s_mmdit_block[i];
        if (!s_starts(rest, r->canon))
            continue;
        xf[n].part = r->part;
        xf[n].swap = r->swap == 1 || (r->swap == 2 && b == last_block);
        int len = snprintf(out[n], SD3_WNAME_MAX, "transformer_blocks.%d.%s%s", b, r->diff,
                           rest + strlen(r->canon));
        if (len < 0 || len >= SD3_WNAME_MAX)
            return 0;
        n++;
        if (r->part < 0)
            break;
    }
    return n;
}

// ---- VAE (MODEL.md §6.4) ---------------------------------------------------------------

typedef struct {
    const char *diff, *canon;
    bool flat_weight; // its .weight is [c,c] in diffusers, [c,c,1,1] canonical
} s_pair_t;

static const s_pair_t s_vae_attn[] = {
    {"group_norm.", "norm.", false},
    {"to_q.", "q.", true},
    {"to_k.", "k.", true},
    {"to_v.", "v.", true},
    {"to_out.0.", "proj_out.", true},
    // older diffusers spellings, read only (the first match wins on the way back)
    {"query.", "q.", true},
    {"key.", "k.", true},
    {"value.", "v.", true},
    {"proj_attn.", "proj_out.", true},
};

// resnet remainder: conv_shortcut <-> nin_shortcut
static int
s_resnet(char *out, size_t cap, const char *head, const char *rest, bool to_canon)
{
    const char *from = to_canon ? "conv_shortcut." : "nin_shortcut.";
    const char *to = to_canon ? "nin_shortcut." : "conv_shortcut.";
    int n = s_starts(rest, from) ? snprintf(out, cap, "%s%s%s", head, to, rest + strlen(from))
                                 : snprintf(out, cap, "%s%s", head, rest);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int
s_vae_from(const char *key, char *out, size_t cap, sd3_wname_xf_t *xf)
{
    const char *side = s_starts(key, "encoder.")   ? "encoder."
                       : s_starts(key, "decoder.") ? "decoder."
                                                   : NULL;
    if (!side)
        return -1;
    bool dec = side[0] == 'd';
    const char *r = key + 8, *rest;
    char head[96];
    int i, j;
    if (s_starts(r, "conv_norm_out.")) {
        snprintf(head, sizeof head, "%snorm_out.", side);
        return s_put(out, cap, head, r + strlen("conv_norm_out."));
    }
    if ((i = s_index(r, "mid_block.resnets.", &rest)) >= 0) {
        if (i > 1)
            return -1;
        snprintf(head, sizeof head, "%smid.block_%d.", side, i + 1);
        return s_resnet(out, cap, head, rest, true);
    }
    if ((i = s_index(r, "mid_block.attentions.", &rest)) == 0) {
        for (size_t k = 0; k < S_N(s_vae_attn); k++)
            if (s_starts(rest, s_vae_attn[k].diff)) {
                const char *tail = rest + strlen(s_vae_attn[k].diff);
                xf->flat = s_vae_attn[k].flat_weight && !strcmp(tail, "weight");
                snprintf(head, sizeof head, "%smid.attn_1.%s", side, s_vae_attn[k].canon);
                return s_put(out, cap, head, tail);
            }
        return -1;
    }
    if (dec && (i = s_index(r, "up_blocks.", &rest)) >= 0) {
        if (i > 3)
            return -1;
        if ((j = s_index(rest, "resnets.", &rest)) >= 0) {
            snprintf(head, sizeof head, "decoder.up.%d.block.%d.", 3 - i, j);
            return s_resnet(out, cap, head, rest, true);
        }
        if (s_starts(rest, "upsamplers.0.conv.")) {
            snprintf(head, sizeof head, "decoder.up.%d.upsample.conv.", 3 - i);
            return s_put(out, cap, head, rest + strlen("upsamplers.0.conv."));
        }
        return -1;
    }
    if (!dec && (i = s_index(r, "down_blocks.", &rest)) >= 0) {
        if ((j = s_index(rest, "resnets.", &rest)) >= 0) {
            snprintf(head, sizeof head, "encoder.down.%d.block.%d.", i, j);
            return s_resnet(out, cap, head, rest, true);
        }
        if (s_starts(rest, "downsamplers.0.conv.")) {
            snprintf(head, sizeof head, "encoder.down.%d.downsample.conv.", i);
            return s_put(out, cap, head, rest + strlen("downsamplers.0.conv."));
        }
        return -1;
    }
    return -1; // conv_in, conv_out: same name
}

static int
s_vae_to(const char *canon, char *out, size_t cap, sd3_wname_xf_t *xf)
{
    const char *side = s_starts(canon, "encoder.")   ? "encoder."
                       : s_starts(canon, "decoder.") ? "decoder."
                                                     : NULL;
    if (!side)
        return 0;
    bool dec = side[0] == 'd';
    const char *r = canon + 8, *rest;
    char head[96];
    int i, j;
    if (s_starts(r, "norm_out.")) {
        snprintf(head, sizeof head, "%sconv_norm_out.", side);
        return s_put(out, cap, head, r + strlen("norm_out.")) ? 0 : 1;
    }
    if (s_starts(r, "mid.block_1.") || s_starts(r, "mid.block_2.")) {
        snprintf(head, sizeof head, "%smid_block.resnets.%d.", side, r[10] - '1');
        return s_resnet(out, cap, head, r + strlen("mid.block_1."), false) ? 0 : 1;
    }
    if (s_starts(r, "mid.attn_1.")) {
        rest = r + strlen("mid.attn_1.");
        for (size_t k = 0; k < S_N(s_vae_attn); k++)
            if (s_starts(rest, s_vae_attn[k].canon)) {
                const char *tail = rest + strlen(s_vae_attn[k].canon);
                xf->flat = s_vae_attn[k].flat_weight && !strcmp(tail, "weight");
                snprintf(head, sizeof head, "%smid_block.attentions.0.%s", side,
                         s_vae_attn[k].diff);
                return s_put(out, cap, head, tail) ? 0 : 1;
            }
        return 0;
    }
    if (dec && (i = s_index(r, "up.", &rest)) >= 0 && i <= 3) {
        if ((j = s_index(rest, "block.", &rest)) >= 0) {
            snprintf(head, sizeof head, "decoder.up_blocks.%d.resnets.%d.", 3 - i, j);
            return s_resnet(out, cap, head, rest, false) ? 0 : 1;
        }
        if (s_starts(rest, "upsample.conv.")) {
            snprintf(head, sizeof head, "decoder.up_blocks.%d.upsamplers.0.conv.", 3 - i);
            return s_put(out, cap, head, rest + strlen("upsample.conv.")) ? 0 : 1;
        }
        return 0;
    }
    if (!dec && (i = s_index(r, "down.", &rest)) >= 0) {
        if ((j = s_index(rest, "block.", &rest)) >= 0) {
            snprintf(head, sizeof head, "encoder.down_blocks.%d.resnets.%d.", i, j);
            return s_resnet(out, cap, head, rest, false) ? 0 : 1;
        }
        if (s_starts(rest, "downsample.conv.")) {
            snprintf(head, sizeof head, "encoder.down_blocks.%d.downsamplers.0.conv.", i);
            return s_put(out, cap, head, rest + strlen("downsample.conv.")) ? 0 : 1;
        }
        return 0;
    }
    return 0;
}

// ---- entry points ----------------------------------------------------------------------

int
sd3_wnames_from_diffusers(sd3_component_t comp, const char *key, int last_block, char *out,
                          size_t cap, sd3_wname_xf_t *xf)
{
    xf->part = -1;
    xf->swap = false;
    xf->flat = false;
    if (comp == SD3_COMP_MMDIT)
        return s_mmdit_from(key, last_block, out, cap, xf);
    if (comp == SD3_COMP_VAE)
        return s_vae_from(key, out, cap, xf);
    return -1;
}

int
sd3_wnames_to_diffusers(sd3_component_t comp, const char *canon, int last_block,
                        char out[3][SD3_WNAME_MAX], sd3_wname_xf_t xf[3])
{
    for (int i = 0; i < 3; i++)
        xf[i] = (sd3_wname_xf_t){-1, false, false};
    if (comp == SD3_COMP_MMDIT)
        return s_mmdit_to(canon, last_block, out, xf);
    if (comp == SD3_COMP_VAE)
        return s_vae_to(canon, out[0], SD3_WNAME_MAX, &xf[0]);
    return 0;
}

bool
sd3_wnames_is_diffusers(sd3_component_t comp, const char *key)
{
    if (comp == SD3_COMP_MMDIT)
        return s_starts(key, "transformer_blocks.") || s_starts(key, "pos_embed.") ||
               s_starts(key, "time_text_embed.") || s_starts(key, "norm_out.") ||
               s_starts(key, "proj_out.");
    if (comp == SD3_COMP_VAE)
        return strstr(key, "mid_block.") || strstr(key, "up_blocks.") ||
               strstr(key, "down_blocks.") || strstr(key, "conv_norm_out.");
    return false;
}
