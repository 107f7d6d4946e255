/*  sd3ctl_bench_pipeline - the cluster part of `sd3ctl bench cluster`: a local cluster's
 *  throughput for 1, 2 and 4 mmdit stages, and the controller's own time per step
 *
 *  Writes a tiny sd3-medium 4 blocks deep (mkmodel --depth 4) into a temporary folder, and
 *  for S = 1, 2, 4 starts a cluster (`sd3ctl up`: controller, one encoder, S ranges of 4/S
 *  blocks, one vae, one thread each) with an in-flight limit of S, sends 6*S requests of
 *  64x64 and 8 steps at once and times them to the last RESULT: images/min. The controller
 *  logs its time spent per STEP_DONE (receive, checkpoint, PROGRESS) when it stops; that
 *  figure is read back from its log. On a machine with fewer cores than processes the
 *  stages share the cores, so the figures say what the pipeline costs, not what it gains.
 *  The temporary folder (model, cluster files, logs) is removed at the end.  */
#include "sd3_client.h"
#include "sd3_clock.h"
#include "sd3ctl.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int
s_remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) != 0 ? -1 : 0;
}

// rm -r of the bench's own temporary folder (FTW_PHYS: links are removed, not followed).
static void
s_remove_tree(const char *dir)
{
    if (nftw(dir, s_remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "bench cluster: could not remove all of %s\n", dir);
}

static int
s_one(const char *dir, const char *model, int stages, double *per_min, double *overhead_us)
{
    char file[1100], run[1100], addr[1200], client_ep[1200] = "", line[1300];
    snprintf(file, sizeof file, "%s/s%d.cluster", dir, stages);
    snprintf(run, sizeof run, "%s/run-s%d", dir, stages);
    FILE *f = fopen(file, "w");
    if (!f)
        return -1;
    fprintf(f,
            "[cluster]\nmodel = %s\nrun_dir = %s\nthreads = 1\n[controller]\n"
            "listen = tcp://127.0.0.1:*\nstages = tcp://127.0.0.1:*\ninflight = %d\n"
            "[encoder enc0]\n[vae vae0]\n",
            model, run, stages);
    for (int s = 0; s < stages; s++)
        fprintf(f, "[mmdit d%d]\nrange = %d:%d\n", s, s * 4 / stages, (s + 1) * 4 / stages);
    fclose(f);
    char *up[] = {"up", file, NULL}, *down[] = {"down", file, NULL};
    if (sd3ctl_up(2, up) != 0)
        return -1;
    snprintf(addr, sizeof addr, "%s/controller.addr", run);
    if ((f = fopen(addr, "r"))) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "client=", 7)) {
                line[strcspn(line, "\n")] = '\0';
                snprintf(client_ep, sizeof client_ep, "%s", line + 7);
            }
        fclose(f);
    }
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    const int n = 6 * stages;
    int done = 0, failed = 0;
    double t0 = sd3_now_s();
    for (int i = 0; cl && w && i < n; i++) {
        char id[32];
        memset(w, 0, sizeof *w);
        snprintf(w->prompt, sizeof w->prompt, "a lighthouse");
        w->width = w->height = 64;
        w->steps = 8;
        w->seed = (uint64_t)i;
        snprintf(id, sizeof id, "b%d", i);
        if (sd3_client_submit(cl, id, w, NULL, &err) != 0)
            failed++;
    }
    while (cl && done + failed < n && sd3_now_s() - t0 < 300) {
        sd3_msg_t *msg = NULL;
        if (sd3_client_recv(cl, 500, &msg, &err) != 0)
            continue;
        done += msg->type == SD3_MSG_RESULT;
        failed += msg->type == SD3_MSG_ERROR;
        sd3_msg_destroy(&msg);
    }
    double secs = sd3_now_s() - t0;
    sd3_client_destroy(&cl);
    free(w);
    sd3ctl_down(2, down);
    *per_min = done * 60.0 / secs;
    *overhead_us = -1;
    snprintf(addr, sizeof addr, "%s/controller.log", run);
    if ((f = fopen(addr, "r"))) {
        while (fgets(line, sizeof line, f)) {
            const char *p = strstr(line, "overhead_us_per_step=");
            char *end = NULL;
            double us = p ? strtod(p + 21, &end) : 0;
            if (p && end != p + 21 && isfinite(us) && us >= 0) // a garbled line is skipped
                *overhead_us = us;
        }
        fclose(f);
    }
    printf("  %d stage%s: %d images in %.2f s = %.1f images/min (%d failed); controller "
           "%.1f us per step\n",
           stages, stages > 1 ? "s" : " ", done, secs, *per_min, failed, *overhead_us);
    return failed || done != n ? -1 : 0;
}

int
sd3_bench_pipeline(void)
{
    char dir[] = "/tmp/sd3bench.XXXXXX", model[256];
    if (!mkdtemp(dir))
        return 1;
    snprintf(model, sizeof model, "%s/tiny-d4", dir);
    char *mk[] = {"mkmodel",  "--arch",    "tiny-sd3-medium", "--depth", "4",
                  "--layout", "diffusers", "--dtype",         "f16",     "-o",
                  model,      NULL};
    if (sd3ctl_mkmodel(11, mk) != 0) {
        s_remove_tree(dir);
        return 1;
    }
    printf("local cluster on loopback, tiny sd3-medium 4 blocks deep, 64x64, 8 steps, one "
           "thread per process, %ld cores; in flight = stages\n",
           sysconf(_SC_NPROCESSORS_ONLN));
    int rc = 0;
    for (int s = 1; s <= 4; s *= 2) {
        double per_min, us;
        rc |= s_one(dir, model, s, &per_min, &us) != 0;
    }
    s_remove_tree(dir); // the model, cluster files, run folders and logs
    return rc;
}
