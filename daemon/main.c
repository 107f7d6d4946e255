/*  sd3d - the daemon: one binary, one role per process (or all of them in one)
 *
 *    sd3d --role controller --listen tcp://127.0.0.1:7710 --stage-listen tcp://127.0.0.1:7711
 *         --model PATH [--queue N --inflight N --http ADDR --addr-file F ...]
 *    sd3d --role encoder|mmdit|vae --listen tcp://127.0.0.1:7721
 *         --controller tcp://127.0.0.1:7711 --model PATH [--range A:B --node-id ID ...]
 *    sd3d --role all --listen tcp://127.0.0.1:7710 --model PATH
 *         (controller, encoder, one mmdit range over every block and vae as threads of one
 *         process, talking over inproc://; on the CPU the three stages share one backend,
 *         so one thread pool sized to the box, not three that fight over it)
 *
 *  Parses the flags, builds the controller or node object, and runs its loop until SIGINT
 *  or SIGTERM. Logs go to stderr (sd3_log, key=value). Exit status: 0 after a clean stop,
 *  2 on bad flags, 1 when the role cannot start.  */
#include "sd3_controller.h"
#include "sd3_curve.h"
#include "sd3_http.h"
#include "sd3_log.h"
#include "sd3_node.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static volatile sig_atomic_t s_stop = 0;

static void
s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static void
s_usage(FILE *out)
{
    fprintf(out,
            "usage: sd3d --role controller|encoder|mmdit|vae|all [options]\n"
            "  --listen ADDR          controller: client endpoint; nodes: data endpoint\n"
            "                         (tcp://127.0.0.1:7710; port * = any free port)\n"
            "  --stage-listen ADDR    controller: the endpoint nodes register at\n"
            "  --controller ADDR      nodes: the controller's stage endpoint\n"
            "  --advertise ADDR       nodes: the address peers use (default: as bound)\n"
            "  --model PATH           checkpoint: file, SD3.5 folder or diffusers folder\n"
            "  --tokenizers DIR       encoder: tokenizer files when the checkpoint has none\n"
            "  --range A:B            mmdit: joint blocks [A, B) (default: all)\n"
            "  --backend cpu|cuda --threads N\n"
            "                         (default: the CPUs this process may use: affinity\n"
            "                         mask and cgroup quota; --role all shares one pool)\n"
            "  --precision f32|bf16|auto  GEMM compute (default auto: bf16 on CPUs with\n"
            "                         AVX512_BF16, else f32; f32 is exact)\n"
            "  --node-id ID           unique name of the node (default ROLE-PID)\n"
            "  --codec raw|zstd|shuffle+zstd --wire-dtype f32|bf16|f16\n"
            "                         how this process's tensors travel (default raw f32)\n"
            "  --no-t5 --cache-mb N   encoder: skip T5; prompt-cache size\n"
            "  --vae-tile N[:OVERLAP] vae: tiled decode\n"
            "  --batch-max N          mmdit: merge at most N same-shaped steps into one batch\n"
            "                         (default 4; 1: never)\n"
            "  --queue N --inflight N controller: queue bound (64); requests per pipeline\n"
            "                         (default stages + 1)\n"
            "  --deadline-ms N --node-timeout-ms N --client-timeout-ms N\n"
            "  --step-timeout-ms N    controller: a request without a step this long resumes\n"
            "                         on another pipeline (default max(10 s, 20 x median\n"
            "                         step); -1: never)\n"
            "  --addr-file PATH       controller: write the bound endpoints there\n"
            "  --journal FILE         controller: crash-safe request journal (SQLite); a\n"
            "                         restart with the same file resumes every request\n"
            "  --http ADDR            controller: serve the HTTP API at ADDR (127.0.0.1:8080)\n"
            "  --heartbeat-ms N       nodes: heartbeat period (500)\n"
            "  --no-warm              nodes: report ready at once instead of paging the role's\n"
            "                         weights in and running a warm-up block first\n"
            "  --fault SPEC           nodes, tests only: slow=MS makes every forward, encode\n"
            "                         and decode MS longer; hang=N hangs step N (mmdit) or\n"
            "                         task N for good (default: $SD3_FAULT)\n"
            "  --curve-secret FILE    CurveZMQ on every tcp socket: this node's NAME.key\n"
            "  --curve-allow FILE     the public keys admitted (needed to bind tcp with keys);\n"
            "                         read again on SIGHUP\n"
            "  --curve-server-pub FILE  the key(s) of the servers this node connects to\n"
            "  --http-token-file FILE controller: the HTTP bearer token (one line)\n");
}

static int
s_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    if (!s)
        return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

typedef struct {
    const char *role, *listen, *stage_listen, *controller, *advertise, *model, *tokenizers;
    const char *backend, *node_id, *http, *addr_file, *journal;
    const char *curve_secret, *curve_allow, *curve_server_pub, *http_token_file;
    const char *precision; // --precision f32|bf16|auto (NULL: auto)
    const char *fault;
    bool no_warm;
    long threads, queue, inflight, deadline_ms, node_timeout_ms, client_timeout_ms, heartbeat_ms;
    long step_timeout_ms;
    long cache_mb, range_a, range_b, tile, overlap, batch_max;
    bool no_t5;
    sd3_codec_opts_t codec;
} s_args_t;

static int
s_parse(int argc, char **argv, s_args_t *a)
{
    memset(a, 0, sizeof *a);
    a->backend = "cpu";
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool bad = false, takes = true;
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            s_usage(stdout);
            exit(0);
        } else if (!strcmp(k, "--role")) {
            a->role = v;
        } else if (!strcmp(k, "--listen")) {
            a->listen = v;
        } else if (!strcmp(k, "--stage-listen")) {
            a->stage_listen = v;
        } else if (!strcmp(k, "--controller")) {
            a->controller = v;
        } else if (!strcmp(k, "--advertise")) {
            a->advertise = v;
        } else if (!strcmp(k, "--model")) {
            a->model = v;
        } else if (!strcmp(k, "--tokenizers")) {
            a->tokenizers = v;
        } else if (!strcmp(k, "--backend")) {
            a->backend = v;
        } else if (!strcmp(k, "--precision")) {
            int prec;
            a->precision = v;
            bad = !v || sd3_precision_parse(v, &prec, NULL) != 0;
        } else if (!strcmp(k, "--node-id")) {
            a->node_id = v;
        } else if (!strcmp(k, "--http")) {
            a->http = v;
        } else if (!strcmp(k, "--journal")) {
            a->journal = v;
        } else if (!strcmp(k, "--curve-secret")) {
            a->curve_secret = v;
        } else if (!strcmp(k, "--curve-allow")) {
            a->curve_allow = v;
        } else if (!strcmp(k, "--curve-server-pub")) {
            a->curve_server_pub = v;
        } else if (!strcmp(k, "--http-token-file")) {
            a->http_token_file = v;
        } else if (!strcmp(k, "--addr-file")) {
            a->addr_file = v;
        } else if (!strcmp(k, "--no-warm")) {
            a->no_warm = true;
            takes = false;
        } else if (!strcmp(k, "--fault")) {
            sd3_node_fault_t f;
            sd3_err_t fe = {0};
            a->fault = v;
            bad = !v || sd3_node_fault_parse(v, &f, &fe) != 0;
        } else if (!strcmp(k, "--threads")) {
            bad = s_long(v, 0, 1024, &a->threads);
        } else if (!strcmp(k, "--queue")) {
            bad = s_long(v, 1, 1000000, &a->queue);
        } else if (!strcmp(k, "--inflight")) {
            bad = s_long(v, 1, 10000, &a->inflight);
        } else if (!strcmp(k, "--deadline-ms")) {
            bad = s_long(v, 1, 86400000L, &a->deadline_ms);
        } else if (!strcmp(k, "--step-timeout-ms")) {
            bad = s_long(v, -1, 86400000L, &a->step_timeout_ms) || a->step_timeout_ms == 0;
        } else if (!strcmp(k, "--node-timeout-ms")) {
            bad = s_long(v, 100, 3600000L, &a->node_timeout_ms);
        } else if (!strcmp(k, "--client-timeout-ms")) {
            bad = s_long(v, 100, 3600000L, &a->client_timeout_ms);
        } else if (!strcmp(k, "--heartbeat-ms")) {
            bad = s_long(v, 10, 600000L, &a->heartbeat_ms);
        } else if (!strcmp(k, "--batch-max")) {
            bad = s_long(v, 1, SD3_NODE_MAX_BATCH, &a->batch_max);
        } else if (!strcmp(k, "--cache-mb")) {
            bad = s_long(v, 1, 1 << 20, &a->cache_mb);
        } else if (!strcmp(k, "--range")) {
            char *end;
            a->range_a = v ? strtol(v, &end, 10) : -1;
            bad = !v || end == v || *end != ':';
            if (!bad) {
                const char *b = end + 1;
                a->range_b = strtol(b, &end, 10);
                bad = end == b || *end || a->range_a < 0 || a->range_b <= a->range_a;
            }
        } else if (!strcmp(k, "--codec")) {
            bad = !v || sd3_codec_from_name(v, &a->codec.codec) != 0;
        } else if (!strcmp(k, "--wire-dtype")) {
            if (v && !strcmp(v, "f32"))
                a->codec.wire_dtype = SD3_F32;
            else if (v && !strcmp(v, "bf16"))
                a->codec.wire_dtype = SD3_BF16;
            else if (v && !strcmp(v, "f16"))
                a->codec.wire_dtype = SD3_F16;
            else
                bad = true;
        } else if (!strcmp(k, "--vae-tile")) {
            char *end;
            a->tile = v ? strtol(v, &end, 10) : 0;
            bad = !v || end == v;
            if (!bad && *end == ':')
                a->overlap = strtol(end + 1, &end, 10);
            bad = bad || *end || a->tile < 8 || a->overlap < 0 || a->overlap >= a->tile;
        } else if (!strcmp(k, "--no-t5")) {
            a->no_t5 = true;
            takes = false;
        } else {
            fprintf(stderr, "sd3d: unknown option '%s' (see sd3d --help)\n", k);
            return 2;
        }
        if (takes && (!v || bad)) {
            fprintf(stderr, "sd3d: %s: bad or missing value%s%s\n", k, v ? " " : "", v ? v : "");
            return 2;
        }
        i += takes;
    }
    if (!a->role) {
        fprintf(stderr, "sd3d: --role is required (controller, encoder, mmdit, vae or all)\n");
        return 2;
    }
    if (!a->model) {
        fprintf(stderr, "sd3d: --model PATH is required\n");
        return 2;
    }
    if (!a->curve_secret && (a->curve_allow || a->curve_server_pub)) {
        fprintf(stderr, "sd3d: --curve-allow and --curve-server-pub need --curve-secret\n");
        return 2;
    }
    if (a->http_token_file && !a->http) {
        fprintf(stderr, "sd3d: --http-token-file needs --http\n");
        return 2;
    }
    return 0;
}

static void
s_node_opts(const s_args_t *a, sd3_wire_role_t role, sd3_node_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->role = role;
    o->node_id = a->node_id;
    o->listen = a->listen;
    o->advertise = a->advertise;
    o->controller = a->controller;
    o->model_path = a->model;
    o->tokenizer_dir = a->tokenizers;
    o->backend = a->backend;
    o->n_threads = (int)a->threads;
    o->precision = a->precision ? a->precision : "auto";
    o->layer_begin = (int)a->range_a;
    o->layer_end = (int)a->range_b;
    o->load_t5 = !a->no_t5;
    o->cache_bytes = (size_t)a->cache_mb << 20;
    o->codec = a->codec;
    o->heartbeat_ms = (int)a->heartbeat_ms;
    o->batch_max = (int)a->batch_max;
    o->no_warm = a->no_warm;
    o->fault = a->fault;
    o->vae_tile = (sd3_vae_tile_t){.tile = (int)a->tile, .overlap = (int)a->overlap};
}

static void
s_controller_opts(const s_args_t *a, sd3_controller_opts_t *o)
{
    memset(o, 0, sizeof *o);
    o->listen = a->listen;
    o->stage_listen = a->stage_listen;
    o->model_path = a->model;
    o->queue_capacity = (int)a->queue;
    o->max_inflight = (int)a->inflight;
    o->node_timeout_ms = (int)a->node_timeout_ms;
    o->client_timeout_ms = (int)a->client_timeout_ms;
    o->deadline_ms = (int)a->deadline_ms;
    o->step_timeout_ms = (int)a->step_timeout_ms;
    o->addr_file = a->addr_file;
    o->codec = a->codec;
    o->journal_path = a->journal;
}

static char s_token[4096]; // --http-token-file's token, read before any role starts

// Reads the bearer token of --http-token-file into buf: one line, the trailing newline (and
// blanks) trimmed. -1 with one line on stderr when the file cannot be read or is empty.
static int
s_read_token(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "sd3d: --http-token-file %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    bool more = n == cap - 1 && fgetc(f) != EOF;
    int bad = ferror(f);
    fclose(f);
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    if (bad || more || n == 0) {
        fprintf(stderr, "sd3d: --http-token-file %s: %s\n", path,
                bad ? "cannot read it" : more ? "longer than 4095 bytes" : "the token is empty");
        return -1;
    }
    return 0;
}

// Starts the HTTP API (a client of the controller's client endpoint) when asked. zmq_ctx:
// the controller's context when client_endpoint is its inproc endpoint (NULL: own).
static int
s_http(const s_args_t *a, const char *client_endpoint, void *zmq_ctx, sd3_http_t **out)
{
    const char *bind = a->http;
    *out = NULL;
    if (!bind)
        return 0;
    sd3_http_opts_t ho = {.bind = bind, .controller = client_endpoint, .zmq_ctx = zmq_ctx};
    if (a->http_token_file)
        ho.token = s_token;
    sd3_err_t err = {0};
    if (sd3_http_start(&ho, out, &err) != 0) {
        fprintf(stderr, "sd3d: --http %s: %s\n", bind, err.msg);
        return 1;
    }
    sd3_log_info("sd3d", "http=%s port=%u", bind, (unsigned)sd3_http_port(*out));
    return 0;
}

// ---- SIGHUP: the --curve-allow list is read again, without a restart ----------------------
// With keys, the SIGHUP handler writes one byte into a pipe (async-signal-safe); a thread
// reads it and calls sd3_curve_reload (under the curve's lock). A file that does not load
// leaves the old list in force. Connections already admitted stay; new handshakes see the
// new list. (sigwait would need SIGHUP blocked in every thread, and OpenBLAS starts its own
// before main.) Without keys SIGHUP keeps its default action.
static pthread_t s_hup_thread;
static bool s_hup_running;
static int s_hup_pipe[2] = {-1, -1};

static void
s_on_hup(int sig)
{
    (void)sig;
    int saved = errno;
    ssize_t n = write(s_hup_pipe[1], "h", 1); // fails only when full: a reload is pending
    (void)n;
    errno = saved;
}

static void *
s_hup_main(void *arg)
{
    sd3_curve_t *curve = arg;
    char c;
    for (;;) {
        ssize_t n = read(s_hup_pipe[0], &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1 || c == 's') // 's': s_curve_end stops it
            return NULL;
        sd3_err_t err = {0};
        if (sd3_curve_reload(curve, &err) != 0) // logs "reloaded keys=N" when it worked
            sd3_log_warn("sd3d", "SIGHUP: the allow list stays as it was: %s", err.msg);
    }
}

static void
s_hup_start(sd3_curve_t *curve)
{
    struct sigaction sa;
    if (pipe(s_hup_pipe) != 0 || fcntl(s_hup_pipe[1], F_SETFL, O_NONBLOCK) != 0 ||
        pthread_create(&s_hup_thread, NULL, s_hup_main, curve) != 0) {
        sd3_log_warn("sd3d", "no SIGHUP reload: the allow list is read once");
        return;
    }
    s_hup_running = true;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_hup;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGHUP, &sa, NULL);
}

static void
s_hup_stop(void)
{
    if (!s_hup_running)
        return;
    signal(SIGHUP, SIG_IGN);
    if (write(s_hup_pipe[1], "s", 1) == 1)
        pthread_join(s_hup_thread, NULL);
    else
        pthread_detach(s_hup_thread);
    close(s_hup_pipe[0]);
    close(s_hup_pipe[1]);
    s_hup_pipe[0] = s_hup_pipe[1] = -1;
    s_hup_running = false;
}

// With --curve-secret: a ZeroMQ context and the process's sd3_curve in it (*ctx and *curve);
// without: both NULL (the roles make their own context). 0, or 1 with one line on stderr.
static int
s_curve(const s_args_t *a, void **ctx, sd3_curve_t **curve)
{
    sd3_err_t err = {0};
    *ctx = NULL;
    *curve = NULL;
    if (!a->curve_secret)
        return 0;
    if (!(*ctx = zmq_ctx_new())) {
        fprintf(stderr, "sd3d: no zmq context\n");
        return 1;
    }
    if (!(*curve = sd3_curve_new(*ctx, a->curve_secret, a->curve_allow, a->curve_server_pub,
                                 &err))) {
        fprintf(stderr, "sd3d: --curve-secret %s: %s\n", a->curve_secret, err.msg);
        zmq_ctx_term(*ctx);
        *ctx = NULL;
        return 1;
    }
    sd3_log_info("sd3d", "curve=on key=%.8s allow=%s", sd3_curve_public_key(*curve),
                 a->curve_allow ? a->curve_allow : "-");
    s_hup_start(*curve);
    return 0;
}

static void
s_curve_end(void **ctx, sd3_curve_t **curve)
{
    s_hup_stop(); // before the curve it reloads goes away
    sd3_curve_destroy(curve);
    if (*ctx)
        zmq_ctx_term(*ctx);
    *ctx = NULL;
}

static int
s_run_controller(const s_args_t *a)
{
    sd3_controller_opts_t o;
    sd3_err_t err = {0};
    sd3_http_t *http = NULL;
    void *ctx = NULL;
    sd3_curve_t *curve = NULL;
    if (s_curve(a, &ctx, &curve) != 0)
        return 1;
    s_controller_opts(a, &o);
    o.zmq_ctx = ctx;
    o.curve = curve;
    // With keys the HTTP front talks to the controller over inproc (same context, no keys).
    if (curve && a->http)
        o.local_listen = "inproc://sd3d-clients";
    sd3_controller_t *c = sd3_controller_new(&o, &err);
    if (!c) {
        fprintf(stderr, "sd3d: controller: %s\n", err.msg);
        s_curve_end(&ctx, &curve);
        return 1;
    }
    int rc = o.local_listen ? s_http(a, o.local_listen, ctx, &http)
                            : s_http(a, sd3_controller_client_endpoint(c), NULL, &http);
    if (rc == 0 && sd3_controller_run(c, &s_stop, &err) != 0) {
        fprintf(stderr, "sd3d: controller: %s\n", err.msg);
        rc = 1;
    }
    sd3_http_stop(&http);
    sd3_controller_destroy(&c);
    s_curve_end(&ctx, &curve);
    return rc;
}

static int
s_run_node(const s_args_t *a, sd3_wire_role_t role)
{
    sd3_node_opts_t o;
    sd3_err_t err = {0};
    void *ctx = NULL;
    sd3_curve_t *curve = NULL;
    if (s_curve(a, &ctx, &curve) != 0)
        return 1;
    s_node_opts(a, role, &o);
    o.zmq_ctx = ctx;
    o.curve = curve;
    sd3_node_t *n = sd3_node_new(&o, &err);
    if (!n) {
        fprintf(stderr, "sd3d: %s: %s\n", a->role, err.msg);
        s_curve_end(&ctx, &curve);
        return 1;
    }
    int rc = 0;
    if (sd3_node_run(n, &s_stop, &err) != 0) {
        fprintf(stderr, "sd3d: %s: %s\n", a->role, err.msg);
        rc = 1;
    }
    sd3_node_destroy(&n);
    s_curve_end(&ctx, &curve);
    return rc;
}

// ---- the "all" role: every role as a thread of this process --------------------------------

static void *
s_node_thread(void *arg)
{
    sd3_node_t *n = arg;
    sd3_err_t err = {0};
    if (sd3_node_run(n, &s_stop, &err) != 0)
        sd3_log_error("sd3d", "node stopped: %s", err.msg);
    return NULL;
}

static int
s_run_all(const s_args_t *a)
{
    void *ctx = NULL;
    sd3_curve_t *curve = NULL;
    if (s_curve(a, &ctx, &curve) != 0)
        return 1;
    if (!ctx)
        ctx = zmq_ctx_new();
    sd3_controller_t *c = NULL;
    sd3_node_t *nodes[3] = {NULL, NULL, NULL};
    sd3_backend_t *be = NULL; // the CPU stages' one backend: one pool, their ops take turns
    pthread_t threads[3];
    int n_threads = 0, rc = 1;
    sd3_err_t err = {0};
    sd3_http_t *http = NULL;
    sd3_controller_opts_t co;
    s_controller_opts(a, &co);
    co.listen = a->listen ? a->listen : "tcp://127.0.0.1:7710";
    co.stage_listen = "inproc://sd3d-stages";
    co.zmq_ctx = ctx;
    co.curve = curve;
    if (curve && a->http)
        co.local_listen = "inproc://sd3d-clients";
    if (!ctx || !(c = sd3_controller_new(&co, &err))) {
        fprintf(stderr, "sd3d: all: %s\n", ctx ? err.msg : "no zmq context");
        goto done;
    }
    // Three pools of every usable CPU would put three threads on each core, all busy when
    // the stages overlap. The CUDA backend keeps one per node (one user thread at a time).
    if ((!a->backend || !strcmp(a->backend, "cpu")) &&
        (!(be = sd3_backend_new("cpu", (int)a->threads, &err)) ||
         sd3_backend_set_precision(be, a->precision ? a->precision : "auto", &err))) {
        fprintf(stderr, "sd3d: all: %s\n", err.msg);
        goto done;
    }
    static const sd3_wire_role_t roles[3] = {SD3_WIRE_ROLE_ENCODER, SD3_WIRE_ROLE_MMDIT,
                                             SD3_WIRE_ROLE_VAE};
    static const char *const names[3] = {"encoder", "mmdit", "vae"};
    for (int i = 0; i < 3; i++) {
        sd3_node_opts_t o;
        char listen[64];
        snprintf(listen, sizeof listen, "inproc://sd3d-%s", names[i]);
        s_node_opts(a, roles[i], &o);
        o.listen = listen;
        o.controller = co.stage_listen;
        o.node_id = names[i];
        o.zmq_ctx = ctx;
        o.curve = curve;
        o.shared_backend = be;
        if (!(nodes[i] = sd3_node_new(&o, &err))) {
            fprintf(stderr, "sd3d: all: %s: %s\n", names[i], err.msg);
            goto done;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (pthread_create(&threads[i], NULL, s_node_thread, nodes[i]) != 0) {
            fprintf(stderr, "sd3d: all: cannot start a thread\n");
            s_stop = 1;
            goto done;
        }
        n_threads++;
    }
    rc = co.local_listen ? s_http(a, co.local_listen, ctx, &http)
                         : s_http(a, sd3_controller_client_endpoint(c), NULL, &http);
    if (rc == 0 && sd3_controller_run(c, &s_stop, &err) != 0) {
        fprintf(stderr, "sd3d: all: %s\n", err.msg);
        rc = 1;
    }
done:
    s_stop = 1;
    for (int i = 0; i < n_threads; i++)
        pthread_join(threads[i], NULL);
    sd3_http_stop(&http);
    for (int i = 0; i < 3; i++)
        sd3_node_destroy(&nodes[i]);
    sd3_backend_destroy(&be); // after the nodes that borrowed it
    sd3_controller_destroy(&c);
    s_curve_end(&ctx, &curve);
    return rc;
}

// Activations and latents travel in frames of tens of MiB (x [2, 4096, 2432] f32 is 76 MiB
// at 1024 px). With glibc's defaults each such block is a fresh mmap (past the 32 MiB
// ceiling of its dynamic threshold) and ZeroMQ's I/O thread allocates in its own arena, so
// every hop page-faults its whole frame in again: `sd3ctl bench cluster --only hop --alloc
// glibc` measured 1.4 s of CPU per 1024 px hop against 77 ms with these settings. One arena
// and a heap that keeps up to 1 GiB free make the frames reuse warm pages.
static void
s_tune_malloc(void)
{
#ifndef __SANITIZE_ADDRESS__ // ASan brings its own allocator, which takes no mallopt
    if (!mallopt(M_ARENA_MAX, 1) || !mallopt(M_MMAP_THRESHOLD, 1 << 30) ||
        !mallopt(M_TRIM_THRESHOLD, 1 << 30))
        sd3_log_warn("sd3d", "mallopt refused a setting: large frames will page-fault");
#endif
}

int
main(int argc, char **argv)
{
    s_args_t a;
    s_tune_malloc();
    sd3_log_init_from_env();
    int rc = s_parse(argc, argv, &a);
    if (rc != 0)
        return rc;
    if (a.http_token_file && s_read_token(a.http_token_file, s_token, sizeof s_token) != 0)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(a.role, "controller")) {
        if (!a.listen || !a.stage_listen) {
            fprintf(stderr, "sd3d: the controller needs --listen and --stage-listen\n");
            return 2;
        }
        return s_run_controller(&a);
    }
    if (!strcmp(a.role, "all"))
        return s_run_all(&a);
    sd3_wire_role_t role = !strcmp(a.role, "encoder") ? SD3_WIRE_ROLE_ENCODER
                           : !strcmp(a.role, "mmdit") ? SD3_WIRE_ROLE_MMDIT
                           : !strcmp(a.role, "vae")   ? SD3_WIRE_ROLE_VAE
                                                      : SD3_WIRE_ROLE_NONE;
    if (role == SD3_WIRE_ROLE_NONE) {
        fprintf(stderr, "sd3d: unknown role '%s' (controller, encoder, mmdit, vae or all)\n",
                a.role);
        return 2;
    }
    if (!a.listen || !a.controller) {
        fprintf(stderr, "sd3d: a %s node needs --listen and --controller\n", a.role);
        return 2;
    }
    if (a.http) {
        fprintf(stderr, "sd3d: --http is a controller option\n");
        return 2;
    }
    return s_run_node(&a, role);
}
