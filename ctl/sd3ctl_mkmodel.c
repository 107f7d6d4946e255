/*  sd3ctl_mkmodel - `sd3ctl mkmodel`: write a checkpoint of random weights
 *
 *    sd3ctl mkmodel --arch ARCH --layout single|sd3.5|diffusers [--dtype f32|f16|bf16]
 *                   [--seed N] [--no-t5] [--no-encoders] [--no-vae] [--shard-mb N]
 *                   [--depth N] -o PATH
 *
 *  ARCH is one of sd3_arch_names(); --depth N (1..64) deepens a tiny MMDiT for the cluster
 *  tests. The weights are written streaming (real sizes are many GB and never held in
 *  memory) by sd3_weights_mkmodel(); the distributions are documented in
 *  stages/core/sd3_weights_write.c. For the single layout PATH is the file; for sd3.5 and
 *  diffusers it is a folder, diffusers with the tiny tokenizer files (sd3_tok_write_tiny_set).
 *  Called by sd3ctl.c's verb table. Also home of the option parser `convert` shares
 *  (sd3ctl_wargs.h). Never writes anything when an option is refused (exit 2).  */
#include "sd3_tok.h"
#include "sd3ctl.h"
#include "sd3ctl_wargs.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int
s_parse_layout(const char *s, sd3_layout_t *out)
{
    static const sd3_layout_t all[] = {SD3_LAYOUT_SINGLE, SD3_LAYOUT_SD35, SD3_LAYOUT_DIFFUSERS};
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, sd3_layout_name(all[i]))) {
            *out = all[i];
            return 0;
        }
    return -1;
}

static int
s_parse_dtype(const char *s, bool allow_keep, sd3_dtype_t *out)
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
sd3ctl_parse_count(const char *verb, const char *option, const char *text, unsigned long long max,
                   unsigned long long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text[0] >= '0' && text[0] <= '9' ? strtoull(text, &end, 0) : 0;
    if (!end || *end || errno == ERANGE || v > max) {
        fprintf(stderr, "sd3ctl %s: %s '%s': want a whole number in [0, %llu]\n", verb, option,
                text, max);
        return -1;
    }
    *out = v;
    return 0;
}

void
sd3ctl_wargs_init(sd3ctl_wargs_t *self, const sd3_arch_t *arch, sd3_dtype_t dtype)
{
    memset(self, 0, sizeof *self);
    sd3_wwrite_opts_init(&self->opts, arch);
    self->opts.dtype = dtype;
}

int
sd3ctl_wargs_parse(sd3ctl_wargs_t *self, const char *verb, bool allow_keep, int argc, char **argv,
                   int *i)
{
    const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    unsigned long long mb;
    if (!strcmp(a, "--no-t5")) {
        self->no_t5 = true;
        return 1;
    }
    if (!strcmp(a, "--no-encoders")) {
        self->no_enc = true;
        return 1;
    }
    if (!v)
        return 0;
    if (!strcmp(a, "--layout")) {
        if (s_parse_layout(v, &self->opts.layout) != 0) {
            fprintf(stderr, "sd3ctl %s: unknown layout '%s'\n", verb, v);
            return -1;
        }
        self->have_layout = true;
    } else if (!strcmp(a, "--dtype")) {
        if (s_parse_dtype(v, allow_keep, &self->opts.dtype) != 0) {
            fprintf(stderr, "sd3ctl %s: unknown dtype '%s' (f32, f16, bf16%s)\n", verb, v,
                    allow_keep ? ", keep" : "");
            return -1;
        }
    } else if (!strcmp(a, "--shard-mb")) {
        // 0 keeps the default (10 GB); at most 1 TiB per shard
        if (sd3ctl_parse_count(verb, a, v, 1u << 20, &mb) != 0)
            return -1;
        if (mb)
            self->opts.shard_bytes = (uint64_t)mb << 20;
    } else if (!strcmp(a, "-o")) {
        self->out = v;
    } else {
        return 0;
    }
    (*i)++;
    return 1;
}

bool
sd3ctl_wargs_missing(const sd3ctl_wargs_t *self, const char *verb, const char *need, bool have_need)
{
    const char *missing[3];
    int n = 0;
    if (!have_need)
        missing[n++] = need;
    if (!self->have_layout)
        missing[n++] = "--layout single|sd3.5|diffusers";
    if (!self->out)
        missing[n++] = "-o PATH";
    if (n == 0)
        return false;
    fprintf(stderr, "sd3ctl %s: missing ", verb);
    for (int k = 0; k < n; k++)
        fprintf(stderr, "%s%s", k == 0 ? "" : k == n - 1 ? " and " : ", ", missing[k]);
    fputc('\n', stderr);
    return true;
}

void
sd3ctl_wargs_finish(sd3ctl_wargs_t *self)
{
    self->opts.want[SD3_COMP_CLIP_L] = self->opts.want[SD3_COMP_CLIP_G] = !self->no_enc;
    self->opts.want[SD3_COMP_T5] = !self->no_enc && !self->no_t5;
}

int
sd3ctl_mkmodel(int argc, char **argv)
{
    const char *arch_name = NULL;
    sd3ctl_wargs_t wa;
    unsigned long long seed = 0, depth = 0;
    bool no_vae = false;
    sd3ctl_wargs_init(&wa, NULL, SD3_F16);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int shared = sd3ctl_wargs_parse(&wa, "mkmodel", false, argc, argv, &i);
        if (shared < 0)
            return 2;
        if (shared > 0)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--arch") && v) {
            arch_name = v;
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            if (sd3ctl_parse_count("mkmodel", a, v, UINT64_MAX, &seed) != 0)
                return 2;
            i++;
        } else if (!strcmp(a, "--no-vae")) {
            no_vae = true;
        } else if (!strcmp(a, "--depth") && v) { // tiny models deeper than 2 (cluster tests)
            if (sd3ctl_parse_count("mkmodel", a, v, 64, &depth) != 0)
                return 2;
            if (depth < 1) {
                fprintf(stderr, "sd3ctl mkmodel: --depth %s: want 1..64\n", v);
                return 2;
            }
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
        deeper.mmdit.depth = (int)depth;
        deeper.mmdit.hidden = 64 * (int)depth;
        deeper.mmdit.heads = (int)depth;
        if (deeper.mmdit.n_attn2 > (int)depth)
            deeper.mmdit.n_attn2 = (int)depth;
        arch = &deeper;
    }
    if (arch_name && !arch) {
        fprintf(stderr, "sd3ctl mkmodel: unknown arch '%s'\n", arch_name);
        s_usage(stderr);
        return 2;
    }
    if (sd3ctl_wargs_missing(&wa, "mkmodel", "--arch ARCH", arch != NULL)) {
        s_usage(stderr);
        return 2;
    }
    sd3ctl_wargs_finish(&wa);
    sd3_wwrite_opts_t *opts = &wa.opts;
    opts->arch = arch;
    opts->want[SD3_COMP_VAE] = !no_vae;
    opts->tok_writer = sd3_tok_write_tiny_set;
    char origin[160];
    snprintf(origin, sizeof origin, "sd3ctl mkmodel --arch %s --seed %llu", arch->name, seed);
    opts->origin = origin;
    sd3_err_t err = {0};
    if (sd3_weights_mkmodel(arch, opts, seed, wa.out, &err) != 0) {
        fprintf(stderr, "sd3ctl mkmodel: %s\n", err.msg);
        return 2;
    }
    uint64_t params = 0;
    for (int c = 0; c < SD3_COMP_COUNT; c++)
        if (opts->want[c])
            params += sd3_arch_params(arch, (sd3_component_t)c);
    printf("wrote %s: arch %s, layout %s, dtype %s, %llu parameters (%.2f GB)\n", wa.out,
           arch->name, sd3_layout_name(opts->layout), sd3_dtype_name(opts->dtype),
           (unsigned long long)params, (double)params * (double)sd3_dtype_size(opts->dtype) / 1e9);
    return 0;
}
