/*  sd3ctl_convert - `sd3ctl convert`: rewrite a checkpoint in another layout
 *
 *    sd3ctl convert IN --layout single|sd3.5|diffusers -o OUT [--dtype keep|f16|bf16|f32]
 *                   [--shard-mb N] [--no-t5] [--no-encoders]
 *
 *  IN is anything sd3_model_open() resolves (single file, SD3.5 folder or model file,
 *  diffusers folder). The architecture (file names, diffusers configs) is detected from the
 *  tensor shapes. Streaming, through the same writer as mkmodel: memory stays at one chunk
 *  plus the pages being copied, which are dropped after each tensor.  */
#include "sd3_weights_write.h"
#include "sd3ctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sd3ctl_parse_layout(const char *s, sd3_layout_t *out); // sd3ctl_mkmodel.c
int sd3ctl_parse_dtype(const char *s, bool allow_keep, sd3_dtype_t *out);

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: sd3ctl convert IN --layout single|sd3.5|diffusers -o OUT\n"
                 "                      [--dtype keep|f16|bf16|f32] [--shard-mb N]\n"
                 "                      [--no-t5] [--no-encoders]\n");
}

int
sd3ctl_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    sd3_layout_t layout = SD3_LAYOUT_SINGLE;
    bool have_layout = false, no_t5 = false, no_enc = false;
    sd3_dtype_t dtype = SD3_DTYPE_COUNT;
    unsigned long shard_mb = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--layout") && v) {
            if (sd3ctl_parse_layout(v, &layout) != 0) {
                fprintf(stderr, "sd3ctl convert: unknown layout '%s'\n", v);
                return 2;
            }
            have_layout = true;
            i++;
        } else if (!strcmp(a, "--dtype") && v) {
            if (sd3ctl_parse_dtype(v, true, &dtype) != 0) {
                fprintf(stderr, "sd3ctl convert: unknown dtype '%s'\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--shard-mb") && v) {
            shard_mb = strtoul(v, NULL, 0);
            i++;
        } else if (!strcmp(a, "--no-t5")) {
            no_t5 = true;
        } else if (!strcmp(a, "--no-encoders")) {
            no_enc = true;
        } else if (!strcmp(a, "-o") && v) {
            out = v;
            i++;
        } else if (a[0] != '-' && !in) {
            in = a;
        } else {
            fprintf(stderr, "sd3ctl convert: unexpected argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
    }
    if (!in || !out || !have_layout) {
        s_usage(stderr);
        return 2;
    }
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, NULL);
    opts.layout = layout;
    opts.dtype = dtype;
    if (shard_mb)
        opts.shard_bytes = (uint64_t)shard_mb << 20;
    opts.want[SD3_COMP_CLIP_L] = opts.want[SD3_COMP_CLIP_G] = !no_enc;
    opts.want[SD3_COMP_T5] = !no_enc && !no_t5;
    opts.origin = "sd3ctl convert";
    sd3_err_t err = {0};
    if (sd3_weights_convert(in, &opts, out, &err) != 0) {
        fprintf(stderr, "sd3ctl convert: %s\n", err.msg);
        return 2;
    }
    printf("wrote %s (layout %s, dtype %s)\n", out, sd3_layout_name(layout),
           dtype == SD3_DTYPE_COUNT ? "keep" : sd3_dtype_name(dtype));
    return 0;
}
