/*  sd3ctl_up - `sd3ctl up CLUSTER_FILE` / `sd3ctl down [CLUSTER_FILE]`: a local cluster
 *
 *  A cluster file (deploy/local/NAME.cluster) is INI: one [cluster] section, one [controller]
 *  section, then one section per node named "[ROLE NAME]" (ROLE = encoder, mmdit or vae).
 *  INI rather than JSON because people write these by hand, a line comment (#) explains a
 *  choice, and there is no nesting to express. The keys and every rule are in
 *  daemon/controller/sd3_cluster_file.h (the parser, fuzzed); `up` also checks, from the
 *  model's depth, that the mmdit ranges form whole pipelines. CurveZMQ: the curve_* keys
 *  of a member become its --curve-secret/--curve-allow/--curve-server-pub, and `up` polls
 *  the controller with [cluster] client_curve_secret / client_curve_server_pub.
 *  `up` starts the controller (waiting for its address file), then every node with
 *  --controller set to the stage endpoint, each as its own `sd3d` process (the binary next
 *  to sd3ctl) in its own session, stdout+stderr into RUN_DIR/NAME.log, pids into
 *  RUN_DIR/pids; then it polls STATUS until every node is registered and alive and the
 *  pipelines cover the mmdit nodes. A process that dies first, or a timeout, stops them all
 *  and prints the end of the failing log. `down` stops the processes of RUN_DIR/pids
 *  (SIGTERM, then SIGKILL after 5 s), only those that are still sd3d.
 *  `up CLUSTER_FILE --restart NAME` starts one member again (a node by its section name, or
 *  "controller", which binds the endpoints of its address file again so the nodes find it)
 *  with the same flags, its log appended, and records its new pid; it returns once the member
 *  serves (a node: registered since the restart; the controller: answering with a fresh
 *  uptime), or exits 1 when it died or --timeout passed. A node restarted while the
 *  controller answers nothing for 10 s (down itself) is left running, reported unverified
 *  (exit 0): it registers once the controller is back.  */
#include "sd3_arch.h"
#include "sd3_client.h"
#include "sd3_clock.h"
#include "sd3_cluster_file.h"
#include "sd3_weights.h"
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

#define S_MAX_NODES SD3_CLUSTER_FILE_MAX_NODES
#define S_STR       SD3_CLUSTER_FILE_STR
#define S_UNVERIFIED_S 10.0 // --restart: a controller silent this long leaves a node unverified

typedef sd3_cluster_file_t s_cluster_t;
typedef sd3_cluster_node_t s_node_t;

// Reads and checks a cluster file; prints the first problem (file:line) and returns -1.
static int
s_parse(const char *path, s_cluster_t *c)
{
    sd3_err_t err = {0};
    if (sd3_cluster_file_load(path, c, &err) != 0) {
        fprintf(stderr, "sd3ctl: %s\n", err.msg);
        return -1;
    }
    return 0;
}

// The model's depth, to check that the mmdit ranges form whole pipelines.
static int
s_check_ranges(const s_cluster_t *c, const char *file, const char *model)
{
    int n_mmdit = 0;
    for (int i = 0; i < c->n_nodes; i++)
        n_mmdit += !strcmp(c->nodes[i].role, "mmdit");
    if (n_mmdit == 0)
        return 0;
    sd3_err_t err = {0};
    sd3_model_t *m = sd3_model_open(model, &err);
    static sd3_arch_t arch;
    int rc = m ? sd3_arch_from_model(m, &arch, &err) : -1;
    sd3_model_destroy(&m);
    if (rc != 0) {
        fprintf(stderr, "sd3ctl up: model %s: %s\n", model, err.msg);
        return -1;
    }
    if (sd3_cluster_file_check_ranges(c, arch.mmdit.depth, file, &err) != 0) {
        fprintf(stderr, "sd3ctl up: %s\n", err.msg);
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

// Arguments of one sd3d: pointers into the cluster file and into num (formatted numbers).
typedef struct {
    char *v[72];
    int n;
    char num[8][24];
    int n_num;
} s_argv_t;

static void
s_add(s_argv_t *a, const char *flag, const char *value)
{
    if (!value || !value[0])
        return;
    a->v[a->n++] = (char *)flag;
    a->v[a->n++] = (char *)value;
}

// A number of the cluster file; `unset` (0 or -1) passes nothing.
static void
s_add_long(s_argv_t *a, const char *flag, long value, long unset)
{
    if (value == unset)
        return;
    char *buf = a->num[a->n_num++];
    snprintf(buf, sizeof a->num[0], "%ld", value);
    s_add(a, flag, buf);
}

static void
s_add_keys(s_argv_t *a, const sd3_cluster_keys_t *k)
{
    s_add(a, "--curve-secret", k->secret);
    s_add(a, "--curve-allow", k->allow);
    s_add(a, "--curve-server-pub", k->server_pub);
}

static void
s_controller_args(const s_cluster_t *c, char *sd3d, char *model, const char *listen,
                  const char *stages, char *addr_file, s_argv_t *a)
{
    memset(a, 0, sizeof *a);
    a->v[a->n++] = sd3d;
    s_add(a, "--role", "controller");
    s_add(a, "--listen", listen);
    s_add(a, "--stage-listen", stages);
    s_add(a, "--model", model);
    s_add_long(a, "--queue", c->queue, 0);
    s_add_long(a, "--inflight", c->inflight, 0);
    s_add(a, "--http", c->http);
    s_add_long(a, "--deadline-ms", c->deadline_ms, 0);
    s_add_long(a, "--client-timeout-ms", c->client_timeout_ms, 0);
    s_add_long(a, "--node-timeout-ms", c->node_timeout_ms, 0);
    s_add_long(a, "--step-timeout-ms", c->step_timeout_ms, 0);
    s_add(a, "--codec", c->codec);
    s_add(a, "--wire-dtype", c->wire_dtype);
    s_add(a, "--journal", c->journal);
    s_add_keys(a, &c->controller_keys);
    s_add(a, "--addr-file", addr_file);
    a->v[a->n] = NULL;
}

// The node's fields already hold the [cluster] defaults (sd3_cluster_file.h).
static void
s_node_args(const s_cluster_t *c, const s_node_t *nd, char *sd3d, char *model, const char *stage_ep,
            s_argv_t *a)
{
    memset(a, 0, sizeof *a);
    a->v[a->n++] = sd3d;
    s_add(a, "--role", nd->role);
    s_add(a, "--node-id", nd->name);
    s_add(a, "--listen", nd->listen[0] ? nd->listen : "tcp://127.0.0.1:*");
    s_add(a, "--controller", stage_ep);
    s_add(a, "--model", model);
    s_add(a, "--tokenizers", !strcmp(nd->role, "encoder") ? c->tokenizers : NULL);
    if (nd->range_begin >= 0) {
        char *buf = a->num[a->n_num++];
        snprintf(buf, sizeof a->num[0], "%d:%d", nd->range_begin, nd->range_end);
        s_add(a, "--range", buf);
    }
    s_add_long(a, "--threads", nd->threads, -1);
    if (!strcmp(nd->role, "mmdit"))
        s_add_long(a, "--batch-max", nd->batch_max, -1);
    if (nd->warm == 0)
        a->v[a->n++] = "--no-warm";
    s_add(a, "--fault", nd->fault[0] ? nd->fault : NULL);
    s_add(a, "--precision", nd->precision[0] ? nd->precision : NULL);
    s_add(a, "--backend", nd->backend);
    s_add(a, "--codec", nd->codec);
    s_add(a, "--wire-dtype", nd->wire_dtype);
    s_add_keys(a, &nd->keys);
    a->v[a->n] = NULL;
}

// Sets member name's pid in RUN_DIR/pids (a line added when it has none), the file replaced
// whole; *old_pid (if not NULL) gets the pid it had, or 0. 0, or 1 with a message.
static int
s_record_pid(const char *run_dir, const char *name, int pid, int *old_pid)
{
    char path[S_STR + 64], tmp[S_STR + 80];
    snprintf(path, sizeof path, "%s/pids", run_dir);
    char names[S_MAX_NODES + 1][128];
    int pids[S_MAX_NODES + 1], n = 0, found = 0;
    if (old_pid)
        *old_pid = 0;
    FILE *f = fopen(path, "r");
    while (f && n < S_MAX_NODES + 1 && fscanf(f, "%127s %d", names[n], &pids[n]) == 2) {
        if (!strcmp(names[n], name)) {
            if (old_pid)
                *old_pid = pids[n];
            pids[n] = pid;
            found = 1;
        }
        n++;
    }
    if (f)
        fclose(f);
    if (!found && n < S_MAX_NODES + 1) {
        snprintf(names[n], sizeof names[n], "%s", name);
        pids[n++] = pid;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    for (int i = 0; f && i < n; i++)
        fprintf(f, "%s %d\n", names[i], pids[i]);
    if (!f || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "sd3ctl up --restart: %s: cannot record the pid\n", path);
        return 1;
    }
    return 0;
}

// Waits until the restarted member serves: for the controller, a STATUS answer with an
// uptime shorter than the time since the spawn; for a node, STATUS listing it alive and
// registered since the spawn (the entry of the killed process may still count as alive).
// 0; 1 when timeout_s passed; 2 when it exited (its log's tail is printed); 3 when a node
// runs but the controller answered no STATUS for S_UNVERIFIED_S (it may be down itself, and
// the node registers once it is back): started, not verified.
static int
s_wait_restarted(const s_cluster_t *c, const char *client_ep, const char *name, pid_t pid,
                 const char *log, double t_spawn, long timeout_s)
{
    sd3_client_opts_t copts = {
        .curve_secret = c->client_keys.secret[0] ? c->client_keys.secret : NULL,
        .curve_server_pub = c->client_keys.server_pub[0] ? c->client_keys.server_pub : NULL};
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(client_ep, &copts, &err);
    if (!cl) {
        fprintf(stderr, "sd3ctl up --restart: %s\n", err.msg);
        return 1;
    }
    static sd3_wire_status_t st;
    bool controller = !strcmp(name, "controller"), up = false, exited = false, answered = false;
    while (!up && sd3_now_s() - t_spawn < (double)timeout_s) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            exited = true;
            break;
        }
        if (!controller && !answered && sd3_now_s() - t_spawn > S_UNVERIFIED_S) {
            sd3_client_destroy(&cl);
            fprintf(stderr,
                    "sd3ctl up --restart: %s runs (pid %d), but the controller at %s has not "
                    "answered for %.0f s: not verified\n",
                    name, (int)pid, client_ep, S_UNVERIFIED_S);
            return 3;
        }
        sd3_err_t e = {0};
        if (sd3_client_status(cl, 500, &st, &e) == 0) {
            answered = true;
            uint64_t since_ms = (uint64_t)((sd3_now_s() - t_spawn) * 1000.0) + 1;
            up = controller && st.uptime_ms <= since_ms;
            for (int i = 0; !controller && i < st.n_nodes; i++)
                up |= st.nodes[i].alive && st.nodes[i].registered_ms <= since_ms &&
                      (st.nodes[i].node.live.state == SD3_WIRE_NODE_READY ||
                       st.nodes[i].node.live.state == SD3_WIRE_NODE_UNSET) &&
                      !strcmp(st.nodes[i].node.node_id, name);
        }
        if (!up)
            usleep(100000);
    }
    sd3_client_destroy(&cl);
    if (exited) {
        fprintf(stderr, "sd3ctl up --restart: %s exited during start-up\n", name);
        s_tail(log);
    } else if (!up) {
        fprintf(stderr, "sd3ctl up --restart: %s was not %s within %ld s; its log: %s\n", name,
                controller ? "answering" : "registered and ready", timeout_s, log);
    }
    return up ? 0 : exited ? 2 : 1;
}

// `up CLUSTER_FILE --restart NAME`: one member again, with the endpoints the cluster has;
// returns once it serves (s_wait_restarted).
static int
s_restart(const s_cluster_t *c, char *sd3d, char *model, const char *name, long timeout_s)
{
    char addr_file[S_STR + 32], client_ep[S_STR + 16] = "", stage_ep[S_STR + 16] = "";
    char log[S_STR + 80];
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
    static s_argv_t args;
    if (!strcmp(name, "controller")) {
        s_controller_args(c, sd3d, model, client_ep, stage_ep, addr_file, &args);
    } else {
        int i = 0;
        while (i < c->n_nodes && strcmp(c->nodes[i].name, name) != 0)
            i++;
        if (i == c->n_nodes) {
            fprintf(stderr, "sd3ctl up --restart: no member '%s' in the cluster file\n", name);
            return 2;
        }
        s_node_args(c, &c->nodes[i], sd3d, model, stage_ep, &args);
    }
    snprintf(log, sizeof log, "%s/%s.log", c->run_dir, name);
    double t_spawn = sd3_now_s();
    pid_t pid = s_spawn(sd3d, args.v, log, true);
    if (pid < 0) {
        fprintf(stderr, "sd3ctl up --restart: fork: %s\n", strerror(errno));
        return 1;
    }
    // The pids file: this member's line gets the new pid (down stops what it lists); the
    // old one comes back when the new process exits during start-up and the old one lives.
    int old_pid = 0;
    if (s_record_pid(c->run_dir, name, (int)pid, &old_pid) != 0)
        return 1;
    int rc = s_wait_restarted(c, client_ep, name, pid, log, t_spawn, timeout_s);
    if (rc == 2 && old_pid > 0 && kill(old_pid, 0) == 0)
        s_record_pid(c->run_dir, name, old_pid, NULL);
    if (rc == 3) {
        printf("restarted %s pid %d (not verified)\n", name, (int)pid);
        return 0;
    }
    if (rc != 0)
        return 1;
    printf("restarted %s pid %d, serving after %.1f s\n", name, (int)pid, sd3_now_s() - t_spawn);
    return 0;
}

static int s_up(const char *file, const char *restart, long timeout_s, s_cluster_t *cp);

int
sd3ctl_up(int argc, char **argv)
{
    const char *file = NULL, *restart = NULL;
    long timeout_s = 60;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            char *end;
            const char *v = argv[++i];
            errno = 0;
            timeout_s = strtol(v, &end, 10);
            if (end == v || *end || errno || timeout_s < 1 || timeout_s > 86400) {
                fprintf(stderr, "sd3ctl up: --timeout '%s': want seconds in [1, 86400]\n", v);
                return 2;
            }
        } else if (!strcmp(argv[i], "--restart") && i + 1 < argc)
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
    s_cluster_t c;
    if (s_parse(file, &c) != 0) {
        sd3_cluster_file_fini(&c);
        return 2;
    }
    int rc = s_up(file, restart, timeout_s, &c);
    sd3_cluster_file_fini(&c);
    return rc;
}

// `up` once the file is parsed; *cp is borrowed.
static int
s_up(const char *file, const char *restart, long timeout_s, s_cluster_t *cp)
{
    const s_cluster_t c = *cp; // a shallow copy: the nodes stay the caller's
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
        return s_restart(&c, sd3d, model, restart, timeout_s);
    if (s_check_ranges(&c, file, model) != 0)
        return 2;
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
    static s_argv_t args;
    s_controller_args(&c, sd3d, model, c.listen, c.stages, addr_file, &args);
    char log[S_STR + 80];
    snprintf(log, sizeof log, "%s/controller.log", c.run_dir);
    pid_t pid = s_spawn(sd3d, args.v, log, false);
    if (pid < 0) {
        fprintf(stderr, "sd3ctl up: fork: %s\n", strerror(errno));
        fclose(pids);
        return 1;
    }
    all[n_all] = pid;
    names[n_all++] = "controller";
    fprintf(pids, "controller %d\n", (int)pid);
    char client_ep[S_STR + 16] = "", stage_ep[S_STR + 16] = "";
    for (long t = 0; t < timeout_s * 20 && !stage_ep[0]; t++) { // 50 ms a turn
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
        fprintf(stderr, "sd3ctl up: the controller wrote no address file in %ld s\n", timeout_s);
        s_tail(log);
        goto fail;
    }
    // 2. the nodes
    int n_mmdit = 0;
    for (int i = 0; i < c.n_nodes; i++) {
        const s_node_t *nd = &c.nodes[i];
        s_node_args(&c, nd, sd3d, model, stage_ep, &args);
        snprintf(log, sizeof log, "%s/%s.log", c.run_dir, nd->name);
        if ((pid = s_spawn(sd3d, args.v, log, false)) < 0) {
            fprintf(stderr, "sd3ctl up: fork: %s\n", strerror(errno));
            goto fail;
        }
        all[n_all] = pid;
        names[n_all++] = nd->name;
        fprintf(pids, "%s %d\n", nd->name, (int)pid);
        n_mmdit += !strcmp(nd->role, "mmdit");
    }
    // 3. wait until every node is registered and the pipelines formed
    sd3_client_opts_t copts = {
        .curve_secret = c.client_keys.secret[0] ? c.client_keys.secret : NULL,
        .curve_server_pub = c.client_keys.server_pub[0] ? c.client_keys.server_pub : NULL};
    sd3_client_t *cl = sd3_client_new(client_ep, &copts, &err);
    if (!cl) {
        fprintf(stderr, "sd3ctl up: %s\n", err.msg);
        goto fail;
    }
    static sd3_wire_status_t st;
    bool ready = false;
    time_t t_end = time(NULL) + timeout_s, t_print = time(NULL) + 2;
    char said[1024] = "";
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
            int n_ready = 0;
            char line[1024] = "";
            size_t len = 0;
            for (int i = 0; i < st.n_nodes; i++) {
                const sd3_wire_live_t *l = &st.nodes[i].node.live;
                bool r = l->state == SD3_WIRE_NODE_READY || l->state == SD3_WIRE_NODE_UNSET;
                n_ready += st.nodes[i].alive && r;
                if (len < sizeof line)
                    len += (size_t)snprintf(line + len, sizeof line - len, "%s%s %s", i ? ", " : "",
                                            st.nodes[i].node.node_id,
                                            r ? "ready" : l->load_permille >= 999 ? "warming up"
                                                                                  : "loading");
                if (!r && l->load_permille < 999 && len < sizeof line)
                    len += (size_t)snprintf(line + len, sizeof line - len, " %u%%",
                                            l->load_permille / 10);
            }
            ready = alive == c.n_nodes && n_ready == c.n_nodes && staged == n_mmdit &&
                    (n_mmdit == 0 || st.n_pipelines > 0);
            // Progress while real weights page in (a minute or more): every 2 s, when it moved.
            if (!ready && time(NULL) >= t_print && strcmp(line, said)) {
                printf("sd3ctl up: %d of %d nodes ready: %s\n", n_ready, c.n_nodes, line);
                fflush(stdout);
                snprintf(said, sizeof said, "%s", line);
                t_print = time(NULL) + 2;
            }
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
        s_cluster_t c;
        int rc = s_parse(argv[1], &c);
        snprintf(run_dir, sizeof run_dir, "%s", c.run_dir);
        sd3_cluster_file_fini(&c);
        if (rc != 0)
            return 2;
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
