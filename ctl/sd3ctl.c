/*  sd3ctl - command-line client: dispatches to one verb per file  */
#include "sd3ctl.h"

#include <stdio.h>
#include <string.h>

#include "sd3_log.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} s_verbs[] = {
    {"generate", sd3ctl_generate, "PROMPT -o out.png [--model P] [--controller ADDR] ..."},
    {"mkmodel", sd3ctl_mkmodel, "--arch A --layout L -o PATH: write a random checkpoint"},
    {"convert", sd3ctl_convert, "IN --layout L -o OUT: rewrite a checkpoint in another layout"},
    {"eval", sd3ctl_eval, "COMPONENT --model PATH --vectors FILE: check against golden data"},
    {"bench", sd3ctl_bench, "ops|mmdit|encode|vae|generate|cluster: print speed figures"},
    {"up", sd3ctl_up, "CLUSTER_FILE: start a local cluster"},
    {"down", sd3ctl_down, "[CLUSTER_FILE]: stop a local cluster"},
    {"status", sd3ctl_status, "[--controller ADDR]: stages, pipelines, queue, cache"},
    {"plan", sd3ctl_plan, "--arch A --devices MEM,...: split the blocks over devices"},
    {"keygen", sd3ctl_keygen, "-o NAME: write a CurveZMQ key pair"},
};

static void
s_usage(FILE *out)
{
    fprintf(out, "usage: sd3ctl VERB [options]\n\n");
    for (size_t i = 0; i < sizeof s_verbs / sizeof s_verbs[0]; i++)
        fprintf(out, "  %-9s %s\n", s_verbs[i].name, s_verbs[i].help);
    fprintf(out, "\n`sd3ctl VERB --help` describes each verb.\n");
}

int
main(int argc, char **argv)
{
    sd3_log_set_level(SD3_LOG_WARN);
    sd3_log_init_from_env();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        s_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof s_verbs / sizeof s_verbs[0]; i++)
        if (!strcmp(argv[1], s_verbs[i].name))
            return s_verbs[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "sd3ctl: unknown verb '%s'\n", argv[1]);
    s_usage(stderr);
    return 2;
}
