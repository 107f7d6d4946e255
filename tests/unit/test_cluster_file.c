/*  test_cluster_file - the cluster-file parser: values, defaults, keys, every refusal
 *
 *  Parses the deploy/local files and checks their values; shows how [cluster] defaults
 *  and keys_dir reach the members; then feeds one broken file per rule and asserts the
 *  exact message (file:line and the problem), and the range check against a depth.  */
#include "sd3_cluster_file.h"
#include "sd3_test.h"

#include <stdlib.h>
#include <string.h>

#define HEAD                                                                                       \
    "[cluster]\nmodel = default\nrun_dir = /tmp/r\n[controller]\nlisten = tcp://a:1\n"             \
    "stages = tcp://a:2\n"

static int
s_parse(const char *text, sd3_cluster_file_t *c, sd3_err_t *err)
{
    memset(err, 0, sizeof *err);
    return sd3_cluster_file_parse(text, strlen(text), "t.cluster", c, err);
}

static void
s_deploy_files(void)
{
    sd3_cluster_file_t c;
    sd3_err_t err = {0};
    CHECK_MSG(sd3_cluster_file_load(SD3_SOURCE_DIR "/deploy/local/tiny-4stage.cluster", &c, &err) ==
                  0,
              "%s", err.msg);
    CHECK(!strcmp(c.model, "default") && !strcmp(c.run_dir, "/tmp/sd3d-tiny-4stage"));
    CHECK(c.threads == 1 && c.queue == 64 && c.inflight == 0 && c.node_timeout_ms == 0);
    CHECK(!strcmp(c.listen, "tcp://127.0.0.1:7710") && !strcmp(c.stages, "tcp://127.0.0.1:7711"));
    CHECK(c.controller_line == 9 && !c.controller_keys.secret[0] && !c.client_keys.secret[0]);
    CHECK_MSG(c.n_nodes == 4, "%d nodes", c.n_nodes);
    if (c.n_nodes == 4) {
        static const char *const roles[] = {"encoder", "mmdit", "mmdit", "vae"};
        static const char *const names[] = {"enc0", "dit0", "dit1", "vae0"};
        static const char *const listens[] = {"tcp://127.0.0.1:7720", "tcp://127.0.0.1:7721",
                                              "tcp://127.0.0.1:7722", "tcp://127.0.0.1:7730"};
        static const int begins[] = {-1, 0, 1, -1}, ends[] = {-1, 1, 2, -1};
        for (int i = 0; i < 4; i++) {
            const sd3_cluster_node_t *nd = &c.nodes[i];
            CHECK_MSG(!strcmp(nd->role, roles[i]) && !strcmp(nd->name, names[i]) &&
                          !strcmp(nd->listen, listens[i]) && nd->range_begin == begins[i] &&
                          nd->range_end == ends[i] && nd->threads == 1 && !nd->keys.secret[0],
                      "node %d: %s %s %s %d:%d threads %ld", i, nd->role, nd->name, nd->listen,
                      nd->range_begin, nd->range_end, nd->threads);
        }
        CHECK(sd3_cluster_file_node(&c, "dit1") == &c.nodes[2]);
        CHECK(sd3_cluster_file_node(&c, "dit2") == NULL);
    }
    CHECK(sd3_cluster_file_check_ranges(&c, 2, "tiny-4stage", &err) == 0);
    CHECK(sd3_cluster_file_check_ranges(&c, 3, "tiny-4stage", &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "tiny-4stage:22: [mmdit dit1] range 1:2 is in no whole pipeline "
                               "over [0, 3): 1 range(s) end at block 2 and 0 start there"),
              "%s", err.msg);
    sd3_cluster_file_fini(&c);
    sd3_cluster_file_fini(&c); // idempotent

    memset(&err, 0, sizeof err);
    CHECK_MSG(sd3_cluster_file_load(SD3_SOURCE_DIR "/deploy/local/tiny-2pipelines.cluster", &c,
                                    &err) == 0,
              "%s", err.msg);
    CHECK(c.n_nodes == 5 && c.queue == 64 && !strcmp(c.listen, "tcp://127.0.0.1:*"));
    CHECK(sd3_cluster_file_check_ranges(&c, 2, NULL, &err) == 0); // [0,1)->[1,2) and [0,2)
    sd3_cluster_file_fini(&c);
}

static void
s_defaults_and_keys(void)
{
    sd3_cluster_file_t c;
    sd3_err_t err;
    const char *text = "# keys for every member from one folder\n"
                       "[cluster]\n"
                       "model = /m/sd3.safetensors\n"
                       "run_dir = /tmp/r   # trailing comment\n"
                       "threads = 2\n"
                       "codec = zstd\n"
                       "wire_dtype = bf16\n"
                       "keys_dir = /etc/sd3d/keys\n"
                       "curve_secret = stage.key\n"
                       "curve_allow = allow\n"
                       "curve_server_pub = server.pub\n"
                       "client_curve_secret = client.key\n"
                       "client_curve_server_pub = /elsewhere/server.pub\n"
                       "[controller]\n"
                       "listen = tcp://0.0.0.0:7710\n"
                       "stages = tcp://0.0.0.0:7711\n"
                       "curve_secret = controller.key\n"
                       "inflight = 3\n"
                       "deadline_ms = 60000\n"
                       "client_timeout_ms = 1000\n"
                       "node_timeout_ms = 1500\n"
                       "step_timeout_ms = -1\n"
                       "journal = /var/lib/sd3d/j.db\n"
                       "http = 127.0.0.1:8080\n"
                       "[encoder  e0 ]\n"
                       "[mmdit m0]\r\n"
                       "range = 0:24\n"
                       "threads = 0\n"
                       "backend = cuda\n"
                       "codec = raw\n"
                       "curve_secret = /abs/m0.key\n"
                       "[vae v0]";
    CHECK_MSG(s_parse(text, &c, &err) == 0, "%s", err.msg);
    CHECK(c.threads == 2 && !strcmp(c.codec, "zstd") && !strcmp(c.wire_dtype, "bf16"));
    CHECK(!strcmp(c.run_dir, "/tmp/r") && c.inflight == 3 && c.deadline_ms == 60000);
    CHECK(c.client_timeout_ms == 1000 && c.node_timeout_ms == 1500 && c.step_timeout_ms == -1 &&
          c.queue == 0);
    CHECK(!strcmp(c.http, "127.0.0.1:8080") && !strcmp(c.journal, "/var/lib/sd3d/j.db"));
    // the controller: its own secret, the [cluster] allow and server-pub, inside keys_dir
    CHECK_MSG(!strcmp(c.controller_keys.secret, "/etc/sd3d/keys/controller.key") &&
                  !strcmp(c.controller_keys.allow, "/etc/sd3d/keys/allow") &&
                  !strcmp(c.controller_keys.server_pub, "/etc/sd3d/keys/server.pub"),
              "controller keys %s %s %s", c.controller_keys.secret, c.controller_keys.allow,
              c.controller_keys.server_pub);
    CHECK(!strcmp(c.client_keys.secret, "/etc/sd3d/keys/client.key") &&
          !strcmp(c.client_keys.server_pub, "/elsewhere/server.pub"));
    CHECK(c.n_nodes == 3);
    if (c.n_nodes == 3) {
        const sd3_cluster_node_t *e = &c.nodes[0], *m = &c.nodes[1], *v = &c.nodes[2];
        CHECK(!strcmp(e->name, "e0") && e->line == 25 && e->threads == 2 &&
              !strcmp(e->codec, "zstd") && !strcmp(e->wire_dtype, "bf16") && !e->backend[0]);
        CHECK(!strcmp(e->keys.secret, "/etc/sd3d/keys/stage.key") &&
              !strcmp(e->keys.allow, "/etc/sd3d/keys/allow") &&
              !strcmp(e->keys.server_pub, "/etc/sd3d/keys/server.pub"));
        CHECK(m->range_begin == 0 && m->range_end == 24 && m->range_line == 27);
        CHECK(m->threads == 0 && !strcmp(m->backend, "cuda") && !strcmp(m->codec, "raw") &&
              !strcmp(m->wire_dtype, "bf16"));
        CHECK(!strcmp(m->keys.secret, "/abs/m0.key") &&
              !strcmp(m->keys.allow, "/etc/sd3d/keys/allow"));
        CHECK(!strcmp(v->name, "v0") && v->range_begin == -1 && v->threads == 2);
    }
    CHECK(sd3_cluster_file_check_ranges(&c, 24, NULL, &err) == 0);
    CHECK(sd3_cluster_file_check_ranges(&c, 12, NULL, &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "cluster file:27: [mmdit m0] range 0:24 ends past the model's 12 "
                               "blocks"),
              "%s", err.msg);
    sd3_cluster_file_fini(&c);

    // Without keys_dir a relative key path stays as written (relative to where up runs).
    CHECK(s_parse(HEAD "[vae v]\ncurve_secret = k/v.key\n", &c, &err) == 0);
    CHECK(c.n_nodes == 1 && !strcmp(c.nodes[0].keys.secret, "k/v.key"));
    sd3_cluster_file_fini(&c);

    // Only the first n bytes count: the text need not end with a NUL.
    const char *cut = HEAD "[vae v]\nthreads = 12345";
    CHECK(sd3_cluster_file_parse(cut, strlen(cut) - 3, "t", &c, &err) == 0);
    CHECK(c.n_nodes == 1 && c.nodes[0].threads == 12);
    sd3_cluster_file_fini(&c);
}

typedef struct {
    const char *text;
    const char *msg;
} s_bad_t;

static const s_bad_t s_bad[] = {
    {"", "t.cluster:0: end of file: no [cluster] section (model, run_dir)"},
    {"model = x\n", "t.cluster:1: want KEY = VALUE inside a section"},
    {"[cluster]\nmodel\n", "t.cluster:2: want KEY = VALUE inside a section"},
    {"[cluster\n", "t.cluster:1: want [SECTION] alone on its line"},
    {"[cluster] x\n", "t.cluster:1: want [SECTION] alone on its line"},
    {"[cluster]\n[nodes]\n", "t.cluster:2: unknown section [nodes] (cluster, controller, "
                             "'encoder NAME', 'mmdit NAME', 'vae NAME')"},
    {"[cluster x]\n", "t.cluster:1: unknown section [cluster x] (cluster, controller, "
                      "'encoder NAME', 'mmdit NAME', 'vae NAME')"},
    {"[cluster]\n[cluster]\n", "t.cluster:2: [cluster] again (first at line 1)"},
    {"[controller]\n", "t.cluster:1: [controller] before [cluster]: [cluster] comes first"},
    {HEAD "[controller]\n", "t.cluster:7: [controller] again (first at line 4)"},
    {HEAD "[vae v]\n[cluster]\n", "t.cluster:8: [cluster] again (first at line 1)"},
    {"[cluster]\nmodel = a\nmodel = b\n", "t.cluster:3: 'model' set again (first at line 2)"},
    {"[cluster]\ncolour = red\n",
     "t.cluster:2: unknown key 'colour' (known here: model, tokenizers, run_dir, threads, "
     "batch_max, warm, precision, backend, codec, wire_dtype, keys_dir, curve_secret, curve_allow, curve_server_pub, "
     "client_curve_secret, client_curve_server_pub)"},
    {HEAD "[vae v]\nrange = 0:1\n", "t.cluster:8: [vae v]: only an mmdit node has a range"},
    {HEAD "[vae v]\nfault = slow=1x\n",
     "t.cluster:7: [vae v]: fault 'slow=1x': want a whole number 0..86400000"},
    {HEAD "[vae v]\nfault = nap=1\n", "t.cluster:7: [vae v]: fault 'nap': want slow=MS or hang=N"},
    {HEAD "[vae v]\nwarm = 2\n", "t.cluster:8: warm = '2': want a whole number in [0, 1]"},
    {HEAD "[vae v]\nprecision = f64\n",
     "t.cluster:7: [vae v]: precision 'f64': want f32, bf16 or auto"},
    {HEAD "[vae v]\nmodel = x\n",
     "t.cluster:8: unknown key 'model' (known here: listen, range, threads, batch_max, "
     "warm, fault, precision, backend, codec, wire_dtype, curve_secret, curve_allow, curve_server_pub)"},
    {"[cluster]\nthreads = 2x\n", "t.cluster:2: threads = '2x': want a whole number in [0, 1024]"},
    {"[cluster]\nthreads = -1\n", "t.cluster:2: threads = '-1': want a whole number in [0, 1024]"},
    {"[cluster]\nthreads = 1025\n",
     "t.cluster:2: threads = '1025': want a whole number in [0, 1024]"},
    {"[cluster]\nthreads =\n", "t.cluster:2: threads = '': want a whole number in [0, 1024]"},
    {HEAD "queue = 0\n", "t.cluster:7: queue = '0': want a whole number in [1, 1000000]"},
    {HEAD "queue = 99999999999999999999\n",
     "t.cluster:7: queue = '99999999999999999999': want a whole number in [1, 1000000]"},
    {HEAD "step_timeout_ms = -2\n",
     "t.cluster:7: step_timeout_ms = '-2': want a whole number in [-1, 86400000]"},
    {HEAD "node_timeout_ms = 99\n",
     "t.cluster:7: node_timeout_ms = '99': want a whole number in [100, 3600000]"},
    {HEAD "[mmdit d]\nrange = 1:1\n",
     "t.cluster:8: range = '1:1': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {HEAD "[mmdit d]\nrange = 2:1\n",
     "t.cluster:8: range = '2:1': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {HEAD "[mmdit d]\nrange = 0-2\n",
     "t.cluster:8: range = '0-2': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {HEAD "[mmdit d]\nrange = 0:5000\n",
     "t.cluster:8: range = '0:5000': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {HEAD "[mmdit d]\nrange = -1:2\n",
     "t.cluster:8: range = '-1:2': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {HEAD "[mmdit d]\nrange = 0:2:3\n",
     "t.cluster:8: range = '0:2:3': want A:B, whole numbers with 0 <= A < B <= 4096 (joint "
     "blocks [A, B))"},
    {"[cluster]\ncodec = lz4\n", "t.cluster:2: codec = 'lz4': want raw, zstd or shuffle+zstd"},
    {"[cluster]\nwire_dtype = f8\n", "t.cluster:2: wire_dtype = 'f8': want f32, bf16 or f16"},
    {"[cluster]\nbackend = gpu\n", "t.cluster:2: backend = 'gpu': want cpu or cuda"},
    {HEAD "[mmdit]\n", "t.cluster:7: [mmdit] needs a node name: [mmdit NAME]"},
    {HEAD "[mmdit a/b]\n", "t.cluster:7: node name 'a/b': 1..63 bytes, no '/' or blanks"},
    {HEAD "[mmdit a b]\n", "t.cluster:7: node name 'a b': 1..63 bytes, no '/' or blanks"},
    {HEAD "[mmdit 0123456789012345678901234567890123456789012345678901234567890123]\n",
     "t.cluster:7: node name '0123456789012345678901234567890123456789012345678901234567890123': "
     "1..63 bytes, no '/' or blanks"},
    {HEAD "[vae controller]\n",
     "t.cluster:7: node name 'controller' is the controller's (logs, pids)"},
    {HEAD "[vae v]\n\n[encoder v]\n", "t.cluster:9: node name 'v' again (first at line 7)"},
    {HEAD "[vae v]\n[cluster]\n", "t.cluster:8: [cluster] again (first at line 1)"},
    {"[cluster]\nmodel = m\nrun_dir = r\n",
     "t.cluster:3: end of file: no [controller] section (listen, stages)"},
    {"[cluster]\nrun_dir = r\n[controller]\nlisten = a\nstages = b\n",
     "t.cluster:1: [cluster] has no model (a PATH or \"default\")"},
    {"[cluster]\nmodel = m\nrun_dir =\n[controller]\nlisten = a\nstages = b\n",
     "t.cluster:1: [cluster] has no run_dir"},
    {"[cluster]\nmodel = m\nrun_dir = r\n[controller]\nstages = b\n",
     "t.cluster:4: [controller] has no listen (the client endpoint)"},
    {"[cluster]\nmodel = m\nrun_dir = r\n[controller]\nlisten = a\n",
     "t.cluster:4: [controller] has no stages (the endpoint nodes register at)"},
    {HEAD "[vae v]\ncurve_allow = allow\n",
     "t.cluster:7: [vae v] has curve_allow or curve_server_pub but no curve_secret"},
    {HEAD "curve_secret = c.key\n",
     "t.cluster:4: the controller has CurveZMQ keys: [cluster] needs client_curve_secret and "
     "client_curve_server_pub so that `sd3ctl up` can reach it"},
    {"[cluster]\nmodel = m\nrun_dir = r\nclient_curve_secret = c.key\n[controller]\n"
     "listen = a\nstages = b\n",
     "t.cluster:1: [cluster] needs both client_curve_secret and client_curve_server_pub, or "
     "neither"},
};

static void
s_refusals(void)
{
    for (size_t i = 0; i < sizeof s_bad / sizeof s_bad[0]; i++) {
        sd3_cluster_file_t c;
        sd3_err_t err;
        int rc = s_parse(s_bad[i].text, &c, &err);
        CHECK_MSG(rc == SD3_EFORMAT && !strcmp(err.msg, s_bad[i].msg),
                  "case %zu: rc %d\n  got:  %s\n  want: %s", i, rc, err.msg, s_bad[i].msg);
        sd3_cluster_file_fini(&c);
    }
    printf("%zu broken files refused with their exact messages\n", sizeof s_bad / sizeof s_bad[0]);
}

// Caps: line length, value length, node count, NUL bytes, size; a missing file.
static void
s_caps(void)
{
    sd3_cluster_file_t c;
    sd3_err_t err = {0};
    size_t cap = 200000;
    char *text = malloc(cap);
    // a line one byte over the cap (a comment: its content does not matter)
    int n = snprintf(text, cap, "[cluster]\n#");
    memset(text + n, 'x', SD3_CLUSTER_FILE_MAX_LINE);
    n += SD3_CLUSTER_FILE_MAX_LINE;
    CHECK(sd3_cluster_file_parse(text, (size_t)n, "t", &c, &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "t:2: line of 4097 bytes, at most 4096"), "%s", err.msg);
    sd3_cluster_file_fini(&c);
    // a value of 512 bytes
    n = snprintf(text, cap, "[cluster]\nmodel = ");
    memset(text + n, 'm', 512);
    n += 512;
    memset(&err, 0, sizeof err);
    CHECK(sd3_cluster_file_parse(text, (size_t)n, "t", &c, &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "t:2: 'model': value of 512 bytes, at most 511"), "%s", err.msg);
    sd3_cluster_file_fini(&c);
    // 64 nodes are fine, the 65th is refused
    n = snprintf(text, cap, HEAD);
    for (int i = 0; i < SD3_CLUSTER_FILE_MAX_NODES; i++)
        n += snprintf(text + n, cap - (size_t)n, "[mmdit d%d]\nrange = %d:%d\n", i, i, i + 1);
    memset(&err, 0, sizeof err);
    CHECK_MSG(sd3_cluster_file_parse(text, (size_t)n, "t", &c, &err) == 0, "%s", err.msg);
    CHECK(c.n_nodes == 64 && c.nodes[63].range_begin == 63);
    CHECK(sd3_cluster_file_check_ranges(&c, 64, "t", &err) == 0);
    sd3_cluster_file_fini(&c);
    n += snprintf(text + n, cap - (size_t)n, "[vae v]\n");
    CHECK(sd3_cluster_file_parse(text, (size_t)n, "t", &c, &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "t:135: more than 64 nodes"), "%s", err.msg);
    sd3_cluster_file_fini(&c);
    // a NUL byte
    memcpy(text, "[cluster]\nmo\0del = x\n", 21);
    memset(&err, 0, sizeof err);
    CHECK(sd3_cluster_file_parse(text, 21, "t", &c, &err) == SD3_EFORMAT);
    CHECK_MSG(!strcmp(err.msg, "t:2: NUL byte in the text"), "%s", err.msg);
    sd3_cluster_file_fini(&c);
    free(text);
    // a file that is not there
    memset(&err, 0, sizeof err);
    CHECK(sd3_cluster_file_load("/nonexistent/x.cluster", &c, &err) == SD3_ENOTFOUND);
    CHECK_MSG(!strcmp(err.msg, "/nonexistent/x.cluster: No such file or directory"), "%s", err.msg);
    sd3_cluster_file_fini(&c);
}

// Ranges against depth: whole pipelines or an error naming the range that is left over.
static void
s_ranges(void)
{
    static const struct {
        const char *nodes;
        int depth;
        const char *msg; // NULL: accepted
    } cases[] = {
        {"", 2, NULL},
        {"[mmdit a]\n", 24, NULL}, // no range: all blocks
        {"[mmdit a]\nrange = 0:1\n[mmdit b]\nrange = 1:2\n[mmdit c]\n", 2, NULL},
        {"[mmdit a]\nrange = 0:2\n[mmdit b]\nrange = 2:5\n[mmdit c]\nrange = 0:3\n"
         "[mmdit d]\nrange = 3:5\n",
         5, NULL},
        {"[mmdit a]\nrange = 0:1\n", 2,
         "t:8: [mmdit a] range 0:1 is in no whole pipeline over [0, 2): 1 range(s) end at block "
         "1 and 0 start there"},
        {"[mmdit a]\nrange = 1:2\n", 2,
         "t:8: [mmdit a] range 1:2 is in no whole pipeline over [0, 2): 0 range(s) end at block "
         "1 and 1 start there"},
        {"[mmdit a]\nrange = 0:1\n[mmdit b]\nrange = 0:1\n[mmdit c]\nrange = 1:2\n", 2,
         "t:8: [mmdit a] range 0:1 is in no whole pipeline over [0, 2): 2 range(s) end at block "
         "1 and 1 start there"},
        {"[mmdit a]\nrange = 0:3\n", 2, "t:8: [mmdit a] range 0:3 ends past the model's 2 blocks"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[1024];
        snprintf(text, sizeof text, HEAD "%s", cases[i].nodes);
        sd3_cluster_file_t c;
        sd3_err_t err = {0};
        CHECK(sd3_cluster_file_parse(text, strlen(text), "t", &c, &err) == 0);
        int rc = sd3_cluster_file_check_ranges(&c, cases[i].depth, "t", &err);
        if (!cases[i].msg)
            CHECK_MSG(rc == 0, "ranges case %zu: %s", i, err.msg);
        else
            CHECK_MSG(rc == SD3_EFORMAT && !strcmp(err.msg, cases[i].msg),
                      "ranges case %zu: rc %d\n  got:  %s\n  want: %s", i, rc, err.msg,
                      cases[i].msg);
        sd3_cluster_file_fini(&c);
    }
    sd3_cluster_file_t c;
    sd3_err_t err = {0};
    CHECK(s_parse(HEAD, &c, &err) == 0);
    CHECK(sd3_cluster_file_check_ranges(&c, 0, "t", &err) == SD3_EINVAL);
    sd3_cluster_file_fini(&c);
}

int
main(void)
{
    s_deploy_files();
    s_defaults_and_keys();
    s_refusals();
    s_caps();
    s_ranges();
    return TEST_RESULT();
}
