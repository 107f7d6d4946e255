/*  sd3ctl_mkmodel - `sd3ctl mkmodel`: write a checkpoint of random weights
 *
 *    sd3ctl mkmodel --arch ARCH --layout single|sd3.5|diffusers --dtype f32|f16|bf16
 *                   [--seed N] [--no-t5] [--no-encoders] [--no-vae] [--shard-mb N] -o PATH
 *
 *  ARCH is one of sd3_arch_names(). The weights are written streaming (real sizes are many
 *  GB and never held in memory) by sd3_weights_mkmodel(); the distributions are documented
 *  in stages/core/sd3_weights_write.c. For the single layout PATH is the file; for sd3.5 and
 *  diffusers it is a folder.  */
#include "sd3_weights_write.h"
#include "sd3ctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include("sd3_tok.h")
#include "sd3_tok.h"
#endif
#endif
// Tokenizer files for a diffusers folder come from the tokenizer engineer's
// sd3_tok_write_tiny_set() (stages/encoder/sd3_tok.h). Weak: until it is linked in, it is
// NULL and the diffusers folder is written without tokenizer/ folders.
extern int sd3_tok_write_tiny_set(const char *dir, sd3_err_t *err) __attribute__((weak));

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: sd3ctl mkmodel --arch ARCH --layout single|sd3.5|diffusers\n"
            "                      [--dtype f32|f16|bf16] [--seed N] [--no-t5]\n"
            "                      [--no-encoders] [--no-vae] [--shard-mb N] -o PATH\n"
            "  ARCH: %s\n"
            "  Writes random weights (scaled so activations stay finite) in a released\n"
            "  layout. single: PATH is a file; sd3.5 and diffusers: PATH is a folder.\n",
            sd3_arch_names());
}

int sd3ctl_parse_layout(const char *s, sd3_layout_t *out);
int
sd3ctl_parse_layout(const char *s, sd3_layout_t *out)
{
    static const sd3_layout_t all[] = {SD3_LAYOUT_SINGLE, SD3_LAYOUT_SD35, SD3_LAYOUT_DIFFUSERS};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, sd3_layout_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    return -1;
}

int sd3ctl_parse_dtype(const char *s, bool allow_keep, sd3_dtype_t *out);
int
sd3ctl_parse_dtype(const char *s, bool allow_keep, sd3_dtype_t *out)
{
    if (!strcmp(s, "f32"))
        *out = SD3_F32;
    else if (!strcmp(s, "f16"))
        *out = SD3_F16;
    else if (!strcmp(s, "bf16"))
        *out = SD3_BF16;
    else if (allow_keep && !strcmp(s, "keep"))
        *out = SD3_DTYPE_COUNT;
    else
        return -1;
    return 0;
}

int
sd3ctl_mkmodel(int argc, char **argv)
{
    const char *arch_name = NULL, *out = NULL;
    sd3_layout_t layout = SD3_LAYOUT_SINGLE;
    sd3_dtype_t dtype = SD3_F16;
    unsigned long long seed = 0;
    bool no_t5 = false, no_enc = false, no_vae = false, have_layout = false;
    unsigned long shard_mb = 0;
    int depth = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--arch") && v) {
            arch_name = v;
            i++;
        } else if (!strcmp(a, "--layout") && v) {
            if (sd3ctl_parse_layout(v, &layout) != 0) {
                fprintf(stderr, "sd3ctl mkmodel: unknown layout '%s'\n", v);
                return 2;
            }
            have_layout = true;
            i++;
        } else if (!strcmp(a, "--dtype") && v) {
            if (sd3ctl_parse_dtype(v, false, &dtype) != 0) {
                fprintf(stderr, "sd3ctl mkmodel: unknown dtype '%s' (f32, f16, bf16)\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            seed = strtoull(v, NULL, 0);
            i++;
        } else if (!strcmp(a, "--shard-mb") && v) {
            shard_mb = strtoul(v, NULL, 0);
            i++;
        } else if (!strcmp(a, "--no-t5")) {
            no_t5 = true;
        } else if (!strcmp(a, "--no-encoders")) {
            no_enc = true;
        } else if (!strcmp(a, "--no-vae")) {
            no_vae = true;
        } else if (!strcmp(a, "--depth") && v) { // tiny models deeper than 2 (cluster tests)
            depth = atoi(v);
            i++;
            if (depth < 1 || depth > 64) {
                fprintf(stderr, "sd3ctl mkmodel: --depth %s: want 1..64\n", v);
                return 2;
            }
        } else if (!strcmp(a, "-o") && v) {
            out = v;
            i++;
        } else {
            fprintf(stderr, "sd3ctl mkmodel: unexpected argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
    }
    const sd3_arch_t *arch = arch_name ? sd3_arch_find(arch_name) : NULL;
    static sd3_arch_t deeper; // --depth N: hidden 64*N, N heads, attn2 blocks kept inside
    if (arch && depth) {
        deeper = *arch;
        deeper.mmdit.depth = depth;
        deeper.mmdit.hidden = 64 * depth;
        deeper.mmdit.heads = depth;
        if (deeper.mmdit.n_attn2 > depth)
            deeper.mmdit.n_attn2 = depth;
        arch = &deeper;
    }
    if (!arch || !out || !have_layout) {
        if (arch_name && !arch)
            fprintf(stderr, "sd3ctl mkmodel: unknown arch '%s'\n", arch_name);
        s_usage(stderr);
        return 2;
    }
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    opts.layout = layout;
    opts.dtype = dtype;
    if (shard_mb)
        opts.shard_bytes = (uint64_t)shard_mb << 20;
    opts.want[SD3_COMP_VAE] = !no_vae;
    opts.want[SD3_COMP_CLIP_L] = opts.want[SD3_COMP_CLIP_G] = !no_enc;
    opts.want[SD3_COMP_T5] = !no_enc && !no_t5;
    opts.tok_writer = sd3_tok_write_tiny_set; // NULL until the tokenizer code is linked
    char origin[160];
    snprintf(origin, sizeof origin, "sd3ctl mkmodel --arch %s --seed %llu", arch->name, seed);
    opts.origin = origin;
    sd3_err_t err = {0};
    if (sd3_weights_mkmodel(arch, &opts, seed, out, &err) != 0) {
        fprintf(stderr, "sd3ctl mkmodel: %s\n", err.msg);
        return 2;
    }
    uint64_t params = 0;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        if (opts.want[c])
            params += sd3_arch_params(arch, (sd3_component_t)c);
    printf("wrote %s: arch %s, layout %s, dtype %s, %llu parameters (%.2f GB)%s\n", out, arch->name,
           sd3_layout_name(layout), sd3_dtype_name(dtype), (unsigned long long)params,
           (double)params * (double)sd3_dtype_size(dtype) / 1e9,
           layout == SD3_LAYOUT_DIFFUSERS && !opts.tok_writer ? " (no tokenizer files)" : "");
    return 0;
}
