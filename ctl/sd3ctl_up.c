/*  sd3ctl_up - `sd3ctl up CLUSTER_FILE` / `sd3ctl down [CLUSTER_FILE]`: a local cluster
 *
 *  A cluster file (deploy/local/NAME.cluster) is INI: one [cluster] section, one [controller]
 *  section, then one section per node named "[ROLE NAME]" (ROLE = encoder, mmdit or vae).
 *  INI rather than JSON because people write these by hand, a line comment (#) explains a
 *  choice, and there is no nesting to express. Keys:
 *    [cluster]     model (PATH or "default": the embedded tiny model), tokenizers, run_dir
 *                  (logs, pids and the controller's address file), threads, backend, codec,
 *                  wire_dtype (defaults for every node)
 *    [controller]  listen (client endpoint), stages (stage endpoint), queue, inflight,
 *                  http, deadline_ms, client_timeout_ms, node_timeout_ms, journal (FILE)
 *    [ROLE NAME]   listen (default tcp://127.0.0.1:*), range A:B (mmdit), threads, backend,
 *                  codec, wire_dtype
 *  `up` starts the controller (waiting for its address file), then every node with
 *  --controller set to the stage endpoint, each as its own `sd3d` process (the binary next
 *  to sd3ctl) in its own session, stdout+stderr into RUN_DIR/NAME.log, pids into
 *  RUN_DIR/pids; then it polls STATUS until every node is registered and alive and the
 *  pipelines cover the mmdit nodes. A process that dies first, or a timeout, stops them all
 *  and prints the end of the failing log. `down` stops the processes of RUN_DIR/pids
 *  (SIGTERM, then SIGKILL after 5 s), only those that are still sd3d.
 *  `up CLUSTER_FILE --restart NAME` starts one member again (a node by its section name, or
 *  "controller", which binds the endpoints of its address file again so the nodes find it)
 *  with the same flags, its log appended, and records its new pid; it does not wait.  */
#include "sd3_client.h"
#include "sd3ctl.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_MAX_NODES 64
#define S_STR       512

typedef struct {
    char role[16], name[64], listen[S_STR], range[32], threads[16], backend[16], codec[32],
        wire_dtype[16];
} s_node_t;

typedef struct {
    char model[S_STR], tokenizers[S_STR], run_dir[S_STR], threads[16], backend[16], codec[32],
        wire_dtype[16];
    char listen[S_STR], stages[S_STR], queue[16], inflight[16], http[S_STR], deadline[16],
        client_to[16], node_to[16], journal[S_STR];
    s_node_t nodes[S_MAX_NODES];
    int n_nodes;
} s_cluster_t;

static char *
s_trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int
s_set(char *dst, size_t cap, const char *v, const char *path, int line)
{
    if (strlen(v) >= cap) {
        fprintf(stderr, "%s:%d: value too long (at most %zu bytes)\n", path, line, cap - 1);
        return -1;
    }
    snprintf(dst, cap, "%s", v);
    return 0;
}

#define SET(field) s_set(field, sizeof field, v, path, line)

// Parses a cluster file; prints the first problem with file:line and returns -1.
static int
s_parse(const char *path, s_cluster_t *c)
{
    memset(c, 0, sizeof *c);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "sd3ctl: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[2048];
    int line = 0, rc = 0;
    enum { NONE, CLUSTER, CONTROLLER, NODE } sec = NONE;
    s_node_t *node = NULL;
    while (rc == 0 && fgets(buf, sizeof buf, f)) {
        line++;
        char *hash = strchr(buf, '#');
        if (hash)
            *hash = '\0';
        char *s = s_trim(buf);
        if (!*s)
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end || *s_trim(end + 1)) {
                fprintf(stderr, "%s:%d: want [SECTION]\n", path, line);
                rc = -1;
                break;
            }
            *end = '\0';
            char *name = s_trim(s + 1), *sp = strpbrk(name, " \t");
            if (sp)
                *sp++ = '\0';
            if (!strcmp(name, "cluster") && !sp) {
                sec = CLUSTER;
            } else if (!strcmp(name, "controller") && !sp) {
                sec = CONTROLLER;
            } else if ((!strcmp(name, "encoder") || !strcmp(name, "mmdit") ||
                        !strcmp(name, "vae")) &&
                       sp && *s_trim(sp)) {
                if (c->n_nodes == S_MAX_NODES) {
                    fprintf(stderr, "%s:%d: more than %d nodes\n", path, line, S_MAX_NODES);
                    rc = -1;
                    break;
                }
                node = &c->nodes[c->n_nodes++];
                snprintf(node->role, sizeof node->role, "%s", name);
                const char *nn = s_trim(sp);
                if (strlen(nn) >= sizeof node->name || strpbrk(nn, "/ \t")) {
                    fprintf(stderr, "%s:%d: node name '%s': 1..63 bytes, no '/' or spaces\n", path,
                            line, nn);
                    rc = -1;
                    break;
                }
                snprintf(node->name, sizeof node->name, "%s", nn);
                sec = NODE;
            } else {
                fprintf(stderr,
                        "%s:%d: unknown section [%s%s%s] (cluster, controller, "
                        "'encoder NAME', 'mmdit NAME', 'vae NAME')\n",
                        path, line, name, sp ? " " : "", sp ? sp : "");
                rc = -1;
                break;
            }
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq || sec == NONE) {
            fprintf(stderr, "%s:%d: want KEY = VALUE inside a section\n", path, line);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *k = s_trim(s), *v = s_trim(eq + 1);
        int known = 1;
        if (sec == CLUSTER) {
            if (!strcmp(k, "model"))
                rc = SET(c->model);
            else if (!strcmp(k, "tokenizers"))
                rc = SET(c->tokenizers);
            else if (!strcmp(k, "run_dir"))
                rc = SET(c->run_dir);
            else if (!strcmp(k, "threads"))
                rc = SET(c->threads);
            else if (!strcmp(k, "backend"))
                rc = SET(c->backend);
            else if (!strcmp(k, "codec"))
                rc = SET(c->codec);
            else if (!strcmp(k, "wire_dtype"))
                rc = SET(c->wire_dtype);
            else if (strcmp(k, "name") != 0)
                known = 0;
        } else if (sec == CONTROLLER) {
            if (!strcmp(k, "listen"))
                rc = SET(c->listen);
            else if (!strcmp(k, "stages"))
                rc = SET(c->stages);
            else if (!strcmp(k, "queue"))
                rc = SET(c->queue);
            else if (!strcmp(k, "inflight"))
                rc = SET(c->inflight);
            else if (!strcmp(k, "http"))
                rc = SET(c->http);
            else if (!strcmp(k, "deadline_ms"))
                rc = SET(c->deadline);
            else if (!strcmp(k, "client_timeout_ms"))
                rc = SET(c->client_to);
            else if (!strcmp(k, "node_timeout_ms"))
                rc = SET(c->node_to);
            else if (!strcmp(k, "journal"))
                rc = SET(c->journal);
            else
                known = 0;
        } else {
            if (!strcmp(k, "listen"))
                rc = SET(node->listen);
            else if (!strcmp(k, "range"))
                rc = SET(node->range);
            else if (!strcmp(k, "threads"))
                rc = SET(node->threads);
            else if (!strcmp(k, "backend"))
                rc = SET(node->backend);
            else if (!strcmp(k, "codec"))
                rc = SET(node->codec);
            else if (!strcmp(k, "wire_dtype"))
                rc = SET(node->wire_dtype);
            else
                known = 0;
        }
        if (!known) {
            fprintf(stderr, "%s:%d: unknown key '%s'\n", path, line, k);
            rc = -1;
        }
    }
    fclose(f);
    if (rc != 0)
        return -1;
    if (!c->run_dir[0] || !c->model[0] || !c->listen[0] || !c->stages[0]) {
        fprintf(stderr, "%s: needs [cluster] model and run_dir, [controller] listen and stages\n",
                path);
        return -1;
    }
    return 0;
}

// The sd3d binary next to this sd3ctl.
static int
s_sd3d_path(char *out, size_t cap)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = '\0';
    snprintf(out, cap, "%s/sd3d", self);
    return access(out, X_OK);
}

static pid_t
s_spawn(const char *sd3d, char **args, const char *log, bool append)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    setsid(); // its own session: a terminal's Ctrl-C or hangup does not stop the cluster
    int fd = open(log, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
    int null = open("/dev/null", O_RDONLY);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
    }
    if (null >= 0)
        dup2(null, 0);
    execv(sd3d, args);
    fprintf(stderr, "sd3ctl up: exec %s: %s\n", sd3d, strerror(errno));
    _exit(127);
}

static void
s_last_path(char *out, size_t cap)
{
    snprintf(out, cap, "/tmp/sd3ctl-last-cluster-%d", (int)getuid());
}

// Reads RUN_DIR/pids and stops every process that is still an sd3d.
static int
s_stop_all(const char *run_dir, bool quiet)
{
    char path[S_STR + 16];
    snprintf(path, sizeof path, "%s/pids", run_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!quiet)
            fprintf(stderr, "sd3ctl down: %s: no cluster recorded there\n", path);
        return 1;
    }
    pid_t pids[S_MAX_NODES + 1];
    int n = 0;
    char name[128];
    int pid;
    while (n < S_MAX_NODES + 1 && fscanf(f, "%127s %d", name, &pid) == 2) {
        char cmd[64], exe[4096];
        snprintf(cmd, sizeof cmd, "/proc/%d/exe", pid);
        ssize_t len = readlink(cmd, exe, sizeof exe - 1);
        exe[len > 0 ? len : 0] = '\0';
        const char *base = strrchr(exe, '/');
        if (pid > 1 && len > 0 && base && !strncmp(base + 1, "sd3d", 4))
            pids[n++] = pid;
    }
    fclose(f);
    for (int i = n - 1; i >= 0; i--) // nodes first, the controller last
        kill(pids[i], SIGTERM);
    for (int t = 0; t < 100; t++) {
        int alive = 0;
        for (int i = 0; i < n; i++) {
            waitpid(pids[i], NULL, WNOHANG); // our own children when up failed
            alive += kill(pids[i], 0) == 0;
        }
        if (!alive)
            break;
        usleep(50000);
    }
    for (int i = 0; i < n; i++)
        if (kill(pids[i], 0) == 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    unlink(path);
    if (!quiet)
        printf("cluster in %s stopped (%d processes)\n", run_dir, n);
    return 0;
}

static void
s_tail(const char *log)
{
    FILE *f = fopen(log, "r");
    if (!f)
        return;
    char buf[4096];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > 2000 ? size - 2000 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- %s (end) ----\n%s\n", log, buf);
}

static void
s_add(char **args, int *n, const char *flag, const char *value)
{
    if (!value || !value[0])
        return;
    args[(*n)++] = (char *)flag;
    args[(*n)++] = (char *)value;
}

static int
s_controller_args(const s_cluster_t *c, char *sd3d, char *model, const char *listen,
                  const char *stages, char *addr_file, char **args)
{
    int n = 0;
    args[n++] = sd3d;
    s_add(args, &n, "--role", "controller");
    s_add(args, &n, "--listen", listen);
    s_add(args, &n, "--stage-listen", stages);
    s_add(args, &n, "--model", model);
    s_add(args, &n, "--queue", c->queue);
    s_add(args, &n, "--inflight", c->inflight);
    s_add(args, &n, "--http", c->http);
    s_add(args, &n, "--deadline-ms", c->deadline);
    s_add(args, &n, "--client-timeout-ms", c->client_to);
    s_add(args, &n, "--node-timeout-ms", c->node_to);
    s_add(args, &n, "--codec", c->codec);
    s_add(args, &n, "--wire-dtype", c->wire_dtype);
    s_add(args, &n, "--journal", c->journal);
    s_add(args, &n, "--addr-file", addr_file);
    args[n] = NULL;
    return n;
}

static int
s_node_args(const s_cluster_t *c, const s_node_t *nd, char *sd3d, char *model,
            const char *stage_ep, char **args)
{
    int n = 0;
    args[n++] = sd3d;
    s_add(args, &n, "--role", nd->role);
    s_add(args, &n, "--node-id", nd->name);
    s_add(args, &n, "--listen", nd->listen[0] ? nd->listen : "tcp://127.0.0.1:*");
    s_add(args, &n, "--controller", stage_ep);
    s_add(args, &n, "--model", model);
    s_add(args, &n, "--tokenizers", !strcmp(nd->role, "encoder") ? c->tokenizers : NULL);
    s_add(args, &n, "--range", nd->range);
    s_add(args, &n, "--threads", nd->threads[0] ? nd->threads : c->threads);
    s_add(args, &n, "--backend", nd->backend[0] ? nd->backend : c->backend);
    s_add(args, &n, "--codec", nd->codec[0] ? nd->codec : c->codec);
    s_add(args, &n, "--wire-dtype", nd->wire_dtype[0] ? nd->wire_dtype : c->wire_dtype);
    args[n] = NULL;
    return n;
}

// `up CLUSTER_FILE --restart NAME`: one member again, with the endpoints the cluster has.
static int
s_restart(const s_cluster_t *c, char *sd3d, char *model, const char *name)
{
    char addr_file[S_STR + 32], client_ep[S_STR + 16] = "", stage_ep[S_STR + 16] = "";
    char path[S_STR + 64], log[S_STR + 80];
    snprintf(addr_file, sizeof addr_file, "%s/controller.addr", c->run_dir);
    FILE *af = fopen(addr_file, "r");
    char line[S_STR + 80];
    while (af && fgets(line, sizeof line, af)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strncmp(line, "client=", 7))
            snprintf(client_ep, sizeof client_ep, "%s", line + 7);
        else if (!strncmp(line, "stages=", 7))
            snprintf(stage_ep, sizeof stage_ep, "%s", line + 7);
    }
    if (af)
        fclose(af);
    if (!client_ep[0] || !stage_ep[0]) {
        fprintf(stderr, "sd3ctl up --restart: %s: no endpoints recorded\n", addr_file);
        return 1;
    }
    char *args[64];
    if (!strcmp(name, "controller")) {
        s_controller_args(c, sd3d, model, client_ep, stage_ep, addr_file, args);
    } else {
        int i = 0;
        while (i < c->n_nodes && strcmp(c->nodes[i].name, name) != 0)
            i++;
        if (i == c->n_nodes) {
            fprintf(stderr, "sd3ctl up --restart: no member '%s' in the cluster file\n", name);
            return 2;
        }
        s_node_args(c, &c->nodes[i], sd3d, model, stage_ep, args);
    }
    snprintf(log, sizeof log, "%s/%s.log", c->run_dir, name);
    pid_t pid = s_spawn(sd3d, args, log, true);
    if (pid < 0) {
        fprintf(stderr, "sd3ctl up --restart: fork: %s\n", strerror(errno));
        return 1;
    }
    // The pids file: this member's line gets the new pid (down stops what it lists).
    snprintf(path, sizeof path, "%s/pids", c->run_dir);
    char names[S_MAX_NODES + 1][128];
    int pids[S_MAX_NODES + 1], n = 0, found = 0;
    FILE *f = fopen(path, "r");
    while (f && n < S_MAX_NODES + 1 && fscanf(f, "%127s %d", names[n], &pids[n]) == 2) {
        if (!strcmp(names[n], name)) {
            pids[n] = (int)pid;
            found = 1;
        }
        n++;
    }
    if (f)
        fclose(f);
    if (!found && n < S_MAX_NODES + 1) {
        snprintf(names[n], sizeof names[n], "%s", name);
        pids[n++] = (int)pid;
    }
    char tmp[S_STR + 80];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    for (int i = 0; f && i < n; i++)
        fprintf(f, "%s %d\n", names[i], pids[i]);
    if (!f || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "sd3ctl up --restart: %s: cannot record the pid\n", path);
        return 1;
    }
    printf("restarted %s pid %d\n", name, (int)pid);
    return 0;
}

int
sd3ctl_up(int argc, char **argv)
{
    const char *file = NULL, *restart = NULL;
    long timeout_s = 60;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout_s = atol(argv[++i]);
        else if (!strcmp(argv[i], "--restart") && i + 1 < argc)
            restart = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: sd3ctl up CLUSTER_FILE [--timeout S] [--restart NAME]\n");
            return 0;
        } else if (!file && argv[i][0] != '-')
            file = argv[i];
        else {
            fprintf(stderr, "sd3ctl up: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!file) {
        fprintf(stderr, "usage: sd3ctl up CLUSTER_FILE [--timeout S]\n");
        return 2;
    }
    static s_cluster_t c;
    if (s_parse(file, &c) != 0)
        return 2;
    char sd3d[4200], model[S_STR], path[S_STR + 64], addr_file[S_STR + 32];
    sd3_err_t err = {0};
    if (s_sd3d_path(sd3d, sizeof sd3d) != 0) {
        fprintf(stderr, "sd3ctl up: no sd3d binary next to sd3ctl (%s)\n", sd3d);
        return 2;
    }
    if (!strcmp(c.model, "default")) {
        const char *m = sd3ctl_default_model(&err);
        if (!m) {
            fprintf(stderr, "sd3ctl up: %s\n", err.msg);
            return 1;
        }
        snprintf(model, sizeof model, "%s", m);
    } else {
        snprintf(model, sizeof model, "%s", c.model);
    }
    if (restart)
        return s_restart(&c, sd3d, model, restart);
    if (mkdir(c.run_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "sd3ctl up: %s: %s\n", c.run_dir, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/pids", c.run_dir);
    if (access(path, F_OK) == 0)
        s_stop_all(c.run_dir, true); // a previous run left processes: stop them first
    FILE *pids = fopen(path, "w");
    if (!pids) {
        fprintf(stderr, "sd3ctl up: %s: %s\n", path, strerror(errno));
        return 1;
    }
    setvbuf(pids, NULL, _IOLBF, 0);
    snprintf(addr_file, sizeof addr_file, "%s/controller.addr", c.run_dir);
    unlink(addr_file);
    pid_t all[S_MAX_NODES + 1];
    const char *names[S_MAX_NODES + 1];
    int n_all = 0, rc = 1;

    // 1. the controller, then its bound addresses
    char *args[64];
    s_controller_args(&c, sd3d, model, c.listen, c.stages, addr_file, args);
    char log[S_STR + 80];
    snprintf(log, sizeof log, "%s/controller.log", c.run_dir);
    pid_t pid = s_spawn(sd3d, args, log, false);
    if (pid < 0) {
        fprintf(stderr, "sd3ctl up: fork: %s\n", strerror(errno));
        fclose(pids);
        return 1;
    }
    all[n_all] = pid;
    names[n_all++] = "controller";
    fprintf(pids, "controller %d\n", (int)pid);
    char client_ep[S_STR + 16] = "", stage_ep[S_STR + 16] = "";
    for (int t = 0; t < 200 && !stage_ep[0]; t++) {
        FILE *af = fopen(addr_file, "r");
        if (af) {
            char line[S_STR + 16];
            while (fgets(line, sizeof line, af)) {
                line[strcspn(line, "\n")] = '\0';
                if (!strncmp(line, "client=", 7))
                    snprintf(client_ep, sizeof client_ep, "%s", line + 7);
                else if (!strncmp(line, "stages=", 7))
                    snprintf(stage_ep, sizeof stage_ep, "%s", line + 7);
            }
            fclose(af);
        }
        if (!stage_ep[0]) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                fprintf(stderr, "sd3ctl up: the controller exited\n");
                s_tail(log);
                goto fail;
            }
            usleep(50000);
        }
    }
    if (!stage_ep[0]) {
        fprintf(stderr, "sd3ctl up: the controller wrote no address file in 10 s\n");
        s_tail(log);
        goto fail;
    }
    // 2. the nodes
    int n_mmdit = 0;
    for (int i = 0; i < c.n_nodes; i++) {
        const s_node_t *nd = &c.nodes[i];
        s_node_args(&c, nd, sd3d, model, stage_ep, args);
        snprintf(log, sizeof log, "%s/%s.log", c.run_dir, nd->name);
        if ((pid = s_spawn(sd3d, args, log, false)) < 0) {
            fprintf(stderr, "sd3ctl up: fork: %s\n", strerror(errno));
            goto fail;
        }
        all[n_all] = pid;
        names[n_all++] = nd->name;
        fprintf(pids, "%s %d\n", nd->name, (int)pid);
        n_mmdit += !strcmp(nd->role, "mmdit");
    }
    // 3. wait until every node is registered and the pipelines formed
    sd3_client_t *cl = sd3_client_new(client_ep, NULL, &err);
    if (!cl) {
        fprintf(stderr, "sd3ctl up: %s\n", err.msg);
        goto fail;
    }
    static sd3_wire_status_t st;
    bool ready = false;
    time_t t_end = time(NULL) + timeout_s;
    while (!ready && time(NULL) < t_end) {
        for (int i = 0; i < n_all; i++)
            if (waitpid(all[i], NULL, WNOHANG) == all[i]) {
                fprintf(stderr, "sd3ctl up: %s exited during start-up\n", names[i]);
                snprintf(log, sizeof log, "%s/%s.log", c.run_dir, names[i]);
                s_tail(log);
                sd3_client_destroy(&cl);
                goto fail;
            }
        sd3_err_t e = {0};
        if (sd3_client_status(cl, 500, &st, &e) == 0) {
            int alive = 0, staged = 0;
            for (int i = 0; i < st.n_nodes; i++)
                alive += st.nodes[i].alive;
            for (int p = 0; p < st.n_pipelines; p++)
                staged += st.pipelines[p].n_stages;
            ready = alive == c.n_nodes && staged == n_mmdit && (n_mmdit == 0 || st.n_pipelines > 0);
        }
        if (!ready)
            usleep(100000);
    }
    sd3_client_destroy(&cl);
    if (!ready) {
        fprintf(stderr,
                "sd3ctl up: the cluster was not ready within %ld s (%d of %d nodes, "
                "%d pipelines); logs in %s\n",
                timeout_s, st.n_nodes, c.n_nodes, st.n_pipelines, c.run_dir);
        goto fail;
    }
    fclose(pids);
    pids = NULL;
    char last[256];
    s_last_path(last, sizeof last);
    FILE *lf = fopen(last, "w");
    if (lf) {
        char real[4096];
        fprintf(lf, "%s\n", realpath(c.run_dir, real) ? real : c.run_dir);
        fclose(lf);
    }
    printf("cluster up: controller %s, %d nodes, %d pipelines; logs in %s\n", client_ep, c.n_nodes,
           st.n_pipelines, c.run_dir);
    return 0;
fail:
    if (pids)
        fclose(pids);
    s_stop_all(c.run_dir, true);
    return rc;
}

int
sd3ctl_down(int argc, char **argv)
{
    char run_dir[S_STR];
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: sd3ctl down [CLUSTER_FILE]\n");
        return 2;
    }
    if (argc == 2) {
        static s_cluster_t c;
        if (s_parse(argv[1], &c) != 0)
            return 2;
        snprintf(run_dir, sizeof run_dir, "%s", c.run_dir);
    } else {
        char last[256];
        s_last_path(last, sizeof last);
        FILE *f = fopen(last, "r");
        if (!f || !fgets(run_dir, sizeof run_dir, f)) {
            if (f)
                fclose(f);
            fprintf(stderr, "sd3ctl down: no cluster started here; give its CLUSTER_FILE\n");
            return 2;
        }
        fclose(f);
        run_dir[strcspn(run_dir, "\n")] = '\0';
    }
    return s_stop_all(run_dir, false);
}
