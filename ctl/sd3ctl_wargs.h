/*  sd3ctl_wargs - the command-line options `sd3ctl mkmodel` and `sd3ctl convert` share
 *
 *  Both verbs write a checkpoint through sd3_weights_write (stages/core/sd3_weights_write.h)
 *  and take the same output options: --layout, --dtype, --shard-mb, --no-t5, --no-encoders
 *  and -o. One parser (in sd3ctl_mkmodel.c) reads them into an sd3_wwrite_opts_t, so the two
 *  verbs cannot drift apart. Numbers are read strictly: "12x", "-1" or an empty string are
 *  refused with a message, never read as 0. ctl/ only; prints its diagnostics to stderr.  */
#pragma once
#include "sd3_weights_write.h"

#include <stdbool.h>

typedef struct {
    sd3_wwrite_opts_t opts; // layout, dtype and shard_bytes as given; want[] set by _finish
    const char *out;        // -o PATH
    bool have_layout;       // --layout was given (both verbs require it)
    bool no_t5, no_enc;     // applied to opts.want[] by sd3ctl_wargs_finish
} sd3ctl_wargs_t;

// Starts with sd3_wwrite_opts_init(arch) and the verb's default dtype (SD3_DTYPE_COUNT:
// keep each tensor's).
void sd3ctl_wargs_init(sd3ctl_wargs_t *self, const sd3_arch_t *arch, sd3_dtype_t dtype);
// Reads argv[*i] when it is one of the shared options (and its value, advancing *i).
// Returns 1 when it was one, 0 when it is not (the verb handles it), -1 when its value is
// bad (a message naming `verb` and the option is printed). allow_keep: --dtype keep is valid.
int sd3ctl_wargs_parse(sd3ctl_wargs_t *self, const char *verb, bool allow_keep, int argc,
                       char **argv, int *i);
// When a required option is missing (the verb's own `need`, e.g. "--arch ARCH", when
// `have_need` is false; --layout; -o), prints one line naming every one that is missing,
// "sd3ctl mkmodel: missing --layout single|sd3.5|diffusers and -o PATH", and returns true.
bool sd3ctl_wargs_missing(const sd3ctl_wargs_t *self, const char *verb, const char *need,
                          bool have_need);
// Applies --no-t5 / --no-encoders to opts.want[] (whatever their order on the line).
void sd3ctl_wargs_finish(sd3ctl_wargs_t *self);
// A whole decimal (or 0x hex) number in [0, max]: 0 and *out, or -1 with a message naming
// `verb` and `option`.
int sd3ctl_parse_count(const char *verb, const char *option, const char *text,
                       unsigned long long max, unsigned long long *out);
