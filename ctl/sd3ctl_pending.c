/*  sd3ctl_pending - verbs and eval components that this build does not have yet
 *
 *  Weak definitions: the file that implements a verb or component defines the strong symbol
 *  and this one drops out at link time. Each says plainly that it is not built, exit 2.
 *  This file shrinks as the verbs land and is deleted when empty.  */
#include <stdio.h>

#include "sd3ctl.h"

#define SD3_PENDING_VERB(fn)                                                                  \
    __attribute__((weak)) int fn(int argc, char **argv)                                       \
    {                                                                                         \
        (void)argc;                                                                           \
        fprintf(stderr, "sd3ctl %s: not available in this build yet\n", argv[0]);             \
        return 2;                                                                             \
    }
#define SD3_PENDING_EVAL(fn, what)                                                            \
    __attribute__((weak)) int fn(sd3_eval_t *ev, sd3_err_t *err)                              \
    {                                                                                         \
        (void)ev;                                                                             \
        return sd3_err_set(err, SD3_ENOTSUP, "component '%s' is not available in this build", \
                           what);                                                             \
    }

SD3_PENDING_VERB(sd3ctl_mkmodel)
SD3_PENDING_VERB(sd3ctl_convert)

SD3_PENDING_EVAL(sd3_eval_noise, "noise")
SD3_PENDING_EVAL(sd3_eval_schedule, "schedule")
SD3_PENDING_EVAL(sd3_eval_tokenize, "tokenize")
SD3_PENDING_EVAL(sd3_eval_clip_l, "clip_l")
SD3_PENDING_EVAL(sd3_eval_clip_g, "clip_g")
SD3_PENDING_EVAL(sd3_eval_t5, "t5")
SD3_PENDING_EVAL(sd3_eval_cond, "cond")
SD3_PENDING_EVAL(sd3_eval_mmdit, "mmdit")
SD3_PENDING_EVAL(sd3_eval_sampler, "sampler")
SD3_PENDING_EVAL(sd3_eval_vae_decode, "vae_decode")
SD3_PENDING_EVAL(sd3_eval_vae_encode, "vae_encode")
SD3_PENDING_EVAL(sd3_eval_pipeline, "pipeline")

SD3_PENDING_VERB(sd3_bench_ops)
SD3_PENDING_VERB(sd3_bench_mmdit)
SD3_PENDING_VERB(sd3_bench_encode)
SD3_PENDING_VERB(sd3_bench_vae)

SD3_PENDING_VERB(sd3_bench_cluster)
