/*  sd3ctl_convert - `sd3ctl convert`: rewrite a checkpoint in another layout
 *
 *    sd3ctl convert IN --layout single|sd3.5|diffusers -o OUT [--dtype keep|f16|bf16|f32]
 *                   [--shard-mb N] [--no-t5] [--no-encoders]
 *
 *  IN is anything sd3_model_open() resolves (single file, SD3.5 folder or model file,
 *  diffusers folder). The architecture (file names, diffusers configs) is detected from the
 *  tensor shapes. Streaming, through the same writer as mkmodel: memory stays at one chunk
 *  plus the pages being copied, which are dropped after each tensor. The output options are
 *  parsed by sd3ctl_wargs (shared with mkmodel). Called by sd3ctl.c's verb table; never
 *  writes anything when an option is refused (exit 2).  */
#include "sd3ctl.h"
#include "sd3ctl_wargs.h"

#include <stdio.h>
#include <string.h>

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
    const char *in = NULL;
    sd3ctl_wargs_t wa;
    sd3ctl_wargs_init(&wa, NULL, SD3_DTYPE_COUNT);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int shared = sd3ctl_wargs_parse(&wa, "convert", true, argc, argv, &i);
        if (shared < 0)
            return 2;
        if (shared > 0)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (a[0] != '-' && !in) {
            in = a;
        } else {
            fprintf(stderr, "sd3ctl convert: unexpected argument '%s'\n", a);
            s_usage(stderr);
            return 2;
        }
    }
    if (sd3ctl_wargs_missing(&wa, "convert", "IN (the checkpoint to read)", in != NULL)) {
        s_usage(stderr);
        return 2;
    }
    sd3ctl_wargs_finish(&wa);
    wa.opts.origin = "sd3ctl convert";
    sd3_err_t err = {0};
    if (sd3_weights_convert(in, &wa.opts, wa.out, &err) != 0) {
        fprintf(stderr, "sd3ctl convert: %s\n", err.msg);
        return 2;
    }
    printf("wrote %s (layout %s, dtype %s)\n", wa.out, sd3_layout_name(wa.opts.layout),
           wa.opts.dtype == SD3_DTYPE_COUNT ? "keep" : sd3_dtype_name(wa.opts.dtype));
    return 0;
}
