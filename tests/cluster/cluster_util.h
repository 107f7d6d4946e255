/*  cluster_util - what the cluster tests share: tiny models, a local reference image,
 *  starting and always stopping a cluster of real sd3d processes, driving requests.
 *
 *  Each test writes its cluster file into its own temporary folder with OS-chosen ports
 *  (tcp://127.0.0.1:*), so tests never collide; `sd3ctl up` starts it and the controller's
 *  address comes from RUN_DIR/controller.addr. The cluster is stopped (`sd3ctl down`) at
 *  exit, on SIGINT/SIGTERM, and when the test's own alarm fires (set below the ctest
 *  TIMEOUT), so no process outlives a failed test.  */
#pragma once
#include "sd3_client.h"
#include "sd3_clock.h"
#include "sd3_test.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char cu_cluster_file[1024];
static char cu_run_dir[1024]; // RUN_DIR of the cluster: logs, pids

static void
cu_down(void)
{
    if (!cu_cluster_file[0])
        return;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s/sd3ctl' down '%s' >/dev/null 2>&1", SD3_BINARY_DIR,
             cu_cluster_file);
    if (system(cmd) != 0)
        fprintf(stderr, "cluster: sd3ctl down failed\n");
    cu_cluster_file[0] = '\0';
}

static void
cu_on_signal(int sig)
{
    fprintf(stderr, "cluster test: signal %d (timeout?): stopping the cluster\n", sig);
    cu_down();
    _exit(1);
}

// Bounds the test's time and makes sure the cluster goes away whatever happens.
static void
cu_setup(int seconds)
{
    setenv("SD3_LOG", "info", 0);
    atexit(cu_down);
    signal(SIGALRM, cu_on_signal);
    signal(SIGINT, cu_on_signal);
    signal(SIGTERM, cu_on_signal);
    alarm((unsigned)seconds);
}

// `sd3ctl mkmodel` of a tiny arch (diffusers layout, with tokenizers) into tmp/name.
static int
cu_mkmodel(const char *arch, int depth, const char *out)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && '%s/sd3ctl' mkmodel --arch %s --depth %d --layout diffusers "
             "--dtype f16 -o '%s' >/dev/null",
             out, SD3_BINARY_DIR, arch, depth, out);
    return system(cmd) == 0 ? 0 : -1;
}

static unsigned char *
cu_read(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(len > 0 ? (size_t)len : 1);
    *n = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    return buf;
}

// The one-process image (`sd3ctl generate` without --controller) of PROMPT + args.
static unsigned char *
cu_local_png(const char *model, const char *prompt, const char *args, size_t *n)
{
    char out[1024], cmd[4096];
    static int k;
    snprintf(out, sizeof out, "%s/local-%d.png", sd3_test_tmpdir(), k++);
    snprintf(cmd, sizeof cmd, "'%s/sd3ctl' generate '%s' --model '%s' --threads 1 %s -q -o '%s'",
             SD3_BINARY_DIR, prompt, model, args, out);
    if (system(cmd) != 0) {
        fprintf(stderr, "cluster: local run failed: %s\n", cmd);
        return NULL;
    }
    return cu_read(out, n);
}

// Writes the cluster file TMP/name.cluster with `text` (its run_dir must be TMP/run-name) and
// starts it; *client gets the client endpoint.
static int
cu_up_text(const char *name, const char *text, char *client, size_t cap)
{
    const char *tmp = sd3_test_tmpdir();
    char run[1024], cmd[4096], addr[1200];
    snprintf(cu_cluster_file, sizeof cu_cluster_file, "%s/%s.cluster", tmp, name);
    snprintf(run, sizeof run, "%s/run-%s", tmp, name);
    snprintf(cu_run_dir, sizeof cu_run_dir, "%s", run);
    FILE *f = fopen(cu_cluster_file, "w");
    if (!f)
        return -1;
    fputs(text, f);
    fclose(f);
    double t0 = sd3_now_s();
    snprintf(cmd, sizeof cmd, "'%s/sd3ctl' up '%s' --timeout 60", SD3_BINARY_DIR, cu_cluster_file);
    if (system(cmd) != 0) {
        fprintf(stderr, "cluster: sd3ctl up %s failed\n", cu_cluster_file);
        return -1;
    }
    snprintf(addr, sizeof addr, "%s/controller.addr", run);
    f = fopen(addr, "r");
    char line[1100];
    client[0] = '\0';
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "client=", 7)) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(client, cap, "%s", line + 7);
        }
    if (f)
        fclose(f);
    printf("cluster %s up in %.1f s at %s\n", name, sd3_now_s() - t0, client);
    return client[0] ? 0 : -1;
}

// Writes a cluster file (header + nodes text) and starts it; *client gets the client endpoint.
__attribute__((unused)) static int
cu_up(const char *name, const char *model, const char *controller_extra, const char *nodes,
      char *client, size_t cap)
{
    static char text[16384];
    snprintf(text, sizeof text,
             "[cluster]\nmodel = %s\nrun_dir = %s/run-%s\nthreads = 1\n\n[controller]\n"
             "listen = tcp://127.0.0.1:*\nstages = tcp://127.0.0.1:*\n%s\n\n%s",
             model, sd3_test_tmpdir(), name, controller_extra ? controller_extra : "", nodes);
    return cu_up_text(name, text, client, cap);
}

// Outcome of one request driven by cu_run.
typedef struct {
    char id[64];
    int results, errors, last_status;
    char message[512];
    unsigned char *png;
    size_t png_size;
    int progress;
    int late_progress; // PROGRESS after its RESULT or ERROR (the controller sends none)
} cu_req_t;

__attribute__((unused)) static cu_req_t *
cu_find(cu_req_t *reqs, int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(reqs[i].id, id))
            return &reqs[i];
    return NULL;
}

// Receives until every request got a RESULT or an ERROR (or timeout_s passes).
// Returns how many are still open.
__attribute__((unused)) static int
cu_wait(sd3_client_t *cl, cu_req_t *reqs, int n, double timeout_s)
{
    double t_end = sd3_now_s() + timeout_s;
    int open = n;
    for (int i = 0; i < n; i++)
        open -= reqs[i].results + reqs[i].errors > 0;
    while (open > 0 && sd3_now_s() < t_end) {
        sd3_msg_t *msg = NULL;
        sd3_err_t err = {0};
        if (sd3_client_recv(cl, 200, &msg, &err) != 0)
            continue;
        cu_req_t *r = cu_find(reqs, n, msg->request_id);
        if (r) {
            bool was_open = r->results + r->errors == 0;
            if (msg->type == SD3_MSG_RESULT) {
                r->results++;
                const sd3_tensor_t *png = sd3_msg_tensor(msg, "png");
                if (png && !r->png) {
                    r->png_size = (size_t)png->shape[0];
                    r->png = malloc(r->png_size);
                    memcpy(r->png, png->data, r->png_size);
                }
            } else if (msg->type == SD3_MSG_ERROR) {
                r->errors++;
                r->last_status = msg->status;
                snprintf(r->message, sizeof r->message, "%s", msg->message);
            } else if (msg->type == SD3_MSG_PROGRESS) {
                r->progress++;
                r->late_progress += !was_open;
            }
            if (was_open && r->results + r->errors > 0)
                open--;
        }
        sd3_msg_destroy(&msg);
    }
    return open;
}

// ---- failures: killing and restarting members of the running cluster ----------------------

// The pid `sd3ctl up` recorded for member `name` ("controller", or a node's section name).
__attribute__((unused)) static int
cu_pid(const char *name)
{
    char path[1100], n[128];
    int pid, found = -1;
    snprintf(path, sizeof path, "%s/pids", cu_run_dir);
    FILE *f = fopen(path, "r");
    while (f && fscanf(f, "%127s %d", n, &pid) == 2)
        if (!strcmp(n, name))
            found = pid;
    if (f)
        fclose(f);
    return found;
}

// Whether pid has ended: gone, or a zombie (its ports, locks and files are released then).
__attribute__((unused)) static bool
cu_pid_ended(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *paren = strrchr(buf, ')'); // "pid (comm) S ..."
    return paren && (paren[2] == 'Z' || paren[2] == 'X');
}

// SIGKILL of member `name` (no clean-up of any kind: a crash). Returns once the process has
// ended (up to 10 s: a large ASan process takes a moment to unmap), so a restart that
// follows finds its ports and journal free.
__attribute__((unused)) static int
cu_kill(const char *name)
{
    int pid = cu_pid(name);
    if (pid <= 1 || kill(pid, SIGKILL) != 0) {
        fprintf(stderr, "cluster: cannot kill %s (pid %d)\n", name, pid);
        return -1;
    }
    double t0 = sd3_now_s();
    while (!cu_pid_ended(pid) && sd3_now_s() - t0 < 10)
        usleep(10000);
    printf("killed %s (pid %d) at %.2f s, ended after %.2f s\n", name, pid, t0, sd3_now_s() - t0);
    return 0;
}

// Starts member `name` again with its flags (`sd3ctl up --restart`), which returns once it
// serves (a node registered since the restart, or the controller answering).
__attribute__((unused)) static int
cu_restart(const char *name)
{
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "'%s/sd3ctl' up '%s' --restart %s >/dev/null", SD3_BINARY_DIR,
             cu_cluster_file, name);
    return system(cmd) == 0 ? 0 : -1;
}

// How many lines of member name's log contain needle.
__attribute__((unused)) static int
cu_log_count(const char *name, const char *needle)
{
    char path[1200], line[4096];
    int n = 0;
    snprintf(path, sizeof path, "%s/%s.log", cu_run_dir, name);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return n;
}

// A small request: 64x64, `steps` steps.
__attribute__((unused)) static void
cu_request(sd3_wire_generate_t *w, const char *prompt, uint64_t seed, int steps)
{
    memset(w, 0, sizeof *w);
    snprintf(w->prompt, sizeof w->prompt, "%s", prompt);
    w->width = w->height = 64;
    w->steps = (uint32_t)steps;
    w->seed = seed;
}

// ---- reference images of the reliability tests (failover, restart) ------------------------

#define CU_MAX_REFS 8

// The two-pipeline cluster they run: [0,1) -> [1,2) and [0,2), one encoder, one vae.
#define CU_NODES_TWO_PIPELINES                                                                     \
    "[encoder enc0]\n[vae vae0]\n[mmdit a0]\nrange = 0:1\n[mmdit a1]\nrange = 1:2\n"               \
    "[mmdit b0]\nrange = 0:2\n"

// Request i is (prompts[i % n], seed0 + i % n), 64x64, `steps` steps of `sampler`
// (SD3_WIRE_SAMPLER_*; cu_refs_make: DPM++ 2M); png[k] is the one-process PNG of the k-th
// pair, made from the tiny depth-2 model in TMP/tiny.
typedef struct {
    char model[1024];
    const char *const *prompts;
    int n, seed0, steps, sampler;
    unsigned char *png[CU_MAX_REFS];
    size_t size[CU_MAX_REFS];
} cu_refs_t;

// Makes the model and the n reference PNGs; 0, or -1 when any failed (each is CHECKed).
__attribute__((unused)) static int
cu_refs_make_sampler(cu_refs_t *r, const char *const *prompts, int n, int seed0, int steps,
                     int sampler)
{
    memset(r, 0, sizeof *r);
    r->prompts = prompts;
    r->n = n < CU_MAX_REFS ? n : CU_MAX_REFS;
    r->seed0 = seed0;
    r->steps = steps;
    r->sampler = sampler;
    snprintf(r->model, sizeof r->model, "%s/tiny", sd3_test_tmpdir());
    int rc = cu_mkmodel("tiny-sd3-medium", 2, r->model);
    CHECK(rc == 0);
    for (int k = 0; k < r->n && rc == 0; k++) {
        char args[256];
        snprintf(args, sizeof args, "--size 64x64 --steps %d --seed %d%s", steps, seed0 + k,
                 sampler == SD3_WIRE_SAMPLER_DPMPP_2M ? " --sampler dpmpp_2m"
                 : sampler == SD3_WIRE_SAMPLER_EULER  ? " --sampler euler"
                                                      : "");
        r->png[k] = cu_local_png(r->model, prompts[k], args, &r->size[k]);
        CHECK(r->png[k] != NULL);
        rc = r->png[k] ? 0 : -1;
    }
    return rc;
}

// The same with DPM++ 2M, the sampler of the reliability tests.
__attribute__((unused)) static int
cu_refs_make(cu_refs_t *r, const char *const *prompts, int n, int seed0, int steps)
{
    return cu_refs_make_sampler(r, prompts, n, seed0, steps, SD3_WIRE_SAMPLER_DPMPP_2M);
}

__attribute__((unused)) static void
cu_refs_free(cu_refs_t *r)
{
    for (int k = 0; k < r->n; k++)
        free(r->png[k]);
    memset(r, 0, sizeof *r);
}

// Submits request i of the references under the id reqs[i].id (set by the caller).
__attribute__((unused)) static int
cu_refs_submit(sd3_client_t *cl, const cu_refs_t *r, cu_req_t *reqs, int i)
{
    static sd3_wire_generate_t w;
    sd3_err_t err = {0};
    cu_request(&w, r->prompts[i % r->n], (uint64_t)(r->seed0 + i % r->n), r->steps);
    w.sampler = (sd3_wire_sampler_t)r->sampler;
    int rc = sd3_client_submit(cl, reqs[i].id, &w, NULL, &err);
    CHECK_MSG(rc == 0, "submit %s: %s", reqs[i].id, err.msg);
    return rc;
}

// Every request got exactly one RESULT, no ERROR, and the PNG of its reference; frees the
// PNGs. Returns how many were byte-equal.
__attribute__((unused)) static int
cu_refs_check(const cu_refs_t *r, cu_req_t *reqs, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int k = i % r->n;
        CHECK_MSG(reqs[i].results == 1 && reqs[i].errors == 0, "%s: %d results, %d errors (%s)",
                  reqs[i].id, reqs[i].results, reqs[i].errors, reqs[i].message);
        bool same = r->png[k] && reqs[i].png && reqs[i].png_size == r->size[k] &&
                    !memcmp(reqs[i].png, r->png[k], r->size[k]);
        CHECK_MSG(same, "%s: PNG differs from its one-process PNG", reqs[i].id);
        ok += same;
        free(reqs[i].png);
        reqs[i].png = NULL;
    }
    return ok;
}

// Once every request is answered, nothing else may come within 0.5 s but PROGRESS (a
// duplicate RESULT or ERROR would).
__attribute__((unused)) static void
cu_check_no_late_answer(sd3_client_t *cl)
{
    sd3_msg_t *late = NULL;
    sd3_err_t err = {0};
    int rc = sd3_client_recv(cl, 500, &late, &err);
    CHECK_MSG(rc == SD3_ETIMEDOUT ||
                  (late && late->type != SD3_MSG_RESULT && late->type != SD3_MSG_ERROR),
              "a message after every request was answered");
    sd3_msg_destroy(&late);
}

// ---- keys (the CurveZMQ tests) ---------------------------------------------------------------

// `sd3ctl keygen -o DIR/NAME`, then the Z85 public key of DIR/NAME.pub (its first line that
// is not a # comment, trimmed) into pub. 0, or -1 when either failed.
__attribute__((unused)) static int
cu_keygen(const char *dir, const char *name, char *pub, size_t cap)
{
    char cmd[2048], path[1200], line[256];
    snprintf(cmd, sizeof cmd, "'%s/sd3ctl' keygen -o '%s/%s' >/dev/null 2>&1", SD3_BINARY_DIR, dir,
             name);
    if (system(cmd) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/%s.pub", dir, name);
    FILE *f = fopen(path, "r");
    pub[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        line[strcspn(line, " \t\r\n")] = '\0';
        snprintf(pub, cap, "%s", line);
        break;
    }
    if (f)
        fclose(f);
    return strlen(pub) == 40 ? 0 : -1;
}

// Writes text to path (replacing it). 0, or -1.
__attribute__((unused)) static int
cu_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    return fclose(f) == 0 ? 0 : -1;
}
