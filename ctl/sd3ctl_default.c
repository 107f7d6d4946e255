/*  sd3ctl_default - the embedded default model: a tiny random SD3-medium in the diffusers
 *  layout (with our own tiny tokenizer files), written once by the mkmodel code into
 *  $SD3_HOME, $XDG_CACHE_HOME/sd3d or ~/.cache/sd3d, so `sd3ctl generate PROMPT` works on a
 *  fresh machine with no download.  */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd3_arch.h"
#include "sd3_tok.h"
#include "sd3_weights_write.h"
#include "sd3ctl.h"

#define SD3_DEFAULT_ARCH "tiny-sd3-medium"
#define SD3_DEFAULT_SEED 20260101ull

static int
s_mkdir_p(char *path)
{
    for (char *p = path + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(path, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

const char *
sd3ctl_default_model(sd3_err_t *err)
{
    static char path[4096];
    char dir[4000];
    const char *home = getenv("SD3_HOME"), *xdg = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (home && *home)
        snprintf(dir, sizeof dir, "%s", home);
    else if (xdg && *xdg)
        snprintf(dir, sizeof dir, "%s/sd3d", xdg);
    else
        snprintf(dir, sizeof dir, "%s/.cache/sd3d", h && *h ? h : "/tmp");
    snprintf(path, sizeof path, "%s/%s", dir, SD3_DEFAULT_ARCH);
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/model_index.json", path);
    if (access(probe, R_OK) == 0)
        return path;
    if (s_mkdir_p(dir) != 0) {
        sd3_err_set(err, SD3_EIO, "%s: cannot create the model cache folder", dir);
        return NULL;
    }
    const sd3_arch_t *arch = sd3_arch_find(SD3_DEFAULT_ARCH);
    if (!arch) {
        sd3_err_set(err, SD3_EINTERNAL, "built-in arch '%s' missing", SD3_DEFAULT_ARCH);
        return NULL;
    }
    sd3_wwrite_opts_t opts;
    sd3_wwrite_opts_init(&opts, arch);
    opts.layout = SD3_LAYOUT_DIFFUSERS;
    opts.dtype = SD3_F16;
    opts.tok_writer = sd3_tok_write_tiny_set;
    opts.origin = "sd3ctl embedded default (random weights)";
    fprintf(stderr, "sd3ctl: writing the embedded default model (%s, random weights) to %s\n",
            SD3_DEFAULT_ARCH, path);
    if (sd3_weights_mkmodel(arch, &opts, SD3_DEFAULT_SEED, path, err) != 0)
        return NULL;
    return path;
}
