/*  fuzz_cluster_file - fuzz target for the cluster-file parser (sd3_cluster_file)
 *
 *  Input: the bytes of a cluster file, as `sd3ctl up` reads them. Oracles: no crash, no
 *  sanitizer report, an error always has a message that starts with the file name and a
 *  line; a file that parses has at most SD3_CLUSTER_FILE_MAX_NODES nodes with unique,
 *  non-empty names, ranges 0 <= A < B, and written back as text (every value explicit) it
 *  parses again to the same values. The range check runs on every parsed file at a depth
 *  taken from the input, and at depth 2 (the tiny model).
 *
 *  Built two ways (tests/cmake/fuzz.cmake):
 *    - plain (ctest label fuzz): main() replays every file of the folders given, or with
 *      --write-seeds DIR writes the seed corpus (the .cluster files of deploy/local and a few
 *      broken ones);
 *    - -DSD3_FUZZ=ON with clang: fuzz_cluster_file_lf, a libFuzzer binary
 *        ./fuzz_cluster_file_lf -max_total_time=60 tests/fuzz/corpus-cluster  */
#include "sd3_cluster_file.h"
#include "sd3_fuzz_replay.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_NAME "fuzz.cluster"

// Writes the parsed file back as text with every member's values explicit.
static char *
s_write(const sd3_cluster_file_t *c, size_t *n)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, n);
    if (!f)
        return NULL;
    fprintf(f, "[cluster]\nmodel = %s\nrun_dir = %s\n", c->model, c->run_dir);
    if (c->tokenizers[0])
        fprintf(f, "tokenizers = %s\n", c->tokenizers);
    if (c->threads >= 0)
        fprintf(f, "threads = %ld\n", c->threads);
    if (c->batch_max >= 0)
        fprintf(f, "batch_max = %ld\n", c->batch_max);
    if (c->backend[0])
        fprintf(f, "backend = %s\n", c->backend);
    if (c->codec[0])
        fprintf(f, "codec = %s\n", c->codec);
    if (c->wire_dtype[0])
        fprintf(f, "wire_dtype = %s\n", c->wire_dtype);
    if (c->client_keys.secret[0])
        fprintf(f, "client_curve_secret = %s\nclient_curve_server_pub = %s\n",
                c->client_keys.secret, c->client_keys.server_pub);
    fprintf(f, "[controller]\nlisten = %s\nstages = %s\n", c->listen, c->stages);
    static const char *const nums[] = {"queue", "inflight", "deadline_ms", "client_timeout_ms",
                                       "node_timeout_ms", "step_timeout_ms"};
    const long vals[] = {c->queue, c->inflight, c->deadline_ms, c->client_timeout_ms,
                         c->node_timeout_ms, c->step_timeout_ms};
    for (int i = 0; i < 6; i++)
        if (vals[i])
            fprintf(f, "%s = %ld\n", nums[i], vals[i]);
    if (c->http[0])
        fprintf(f, "http = %s\n", c->http);
    if (c->journal[0])
        fprintf(f, "journal = %s\n", c->journal);
    const sd3_cluster_keys_t *k = &c->controller_keys;
    if (k->secret[0])
        fprintf(f, "curve_secret = %s\n", k->secret);
    if (k->allow[0])
        fprintf(f, "curve_allow = %s\n", k->allow);
    if (k->server_pub[0])
        fprintf(f, "curve_server_pub = %s\n", k->server_pub);
    for (int i = 0; i < c->n_nodes; i++) {
        const sd3_cluster_node_t *nd = &c->nodes[i];
        fprintf(f, "[%s %s]\n", nd->role, nd->name);
        if (nd->listen[0])
            fprintf(f, "listen = %s\n", nd->listen);
        if (nd->range_begin >= 0)
            fprintf(f, "range = %d:%d\n", nd->range_begin, nd->range_end);
        if (nd->threads >= 0)
            fprintf(f, "threads = %ld\n", nd->threads);
        if (nd->batch_max >= 0)
            fprintf(f, "batch_max = %ld\n", nd->batch_max);
        if (nd->backend[0])
            fprintf(f, "backend = %s\n", nd->backend);
        if (nd->codec[0])
            fprintf(f, "codec = %s\n", nd->codec);
        if (nd->wire_dtype[0])
            fprintf(f, "wire_dtype = %s\n", nd->wire_dtype);
        if (nd->keys.secret[0])
            fprintf(f, "curve_secret = %s\n", nd->keys.secret);
        if (nd->keys.allow[0])
            fprintf(f, "curve_allow = %s\n", nd->keys.allow);
        if (nd->keys.server_pub[0])
            fprintf(f, "curve_server_pub = %s\n", nd->keys.server_pub);
    }
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

// The values a re-parse must reproduce (the [cluster] curve defaults and keys_dir are
// folded into the members, so they are not compared).
static int
s_same(const sd3_cluster_file_t *a, const sd3_cluster_file_t *b)
{
    if (strcmp(a->model, b->model) || strcmp(a->run_dir, b->run_dir) ||
        strcmp(a->tokenizers, b->tokenizers) || a->threads != b->threads ||
        a->batch_max != b->batch_max ||
        strcmp(a->backend, b->backend) || strcmp(a->codec, b->codec) ||
        strcmp(a->wire_dtype, b->wire_dtype) || strcmp(a->listen, b->listen) ||
        strcmp(a->stages, b->stages) || strcmp(a->http, b->http) ||
        strcmp(a->journal, b->journal) || a->queue != b->queue || a->inflight != b->inflight ||
        a->deadline_ms != b->deadline_ms || a->client_timeout_ms != b->client_timeout_ms ||
        a->node_timeout_ms != b->node_timeout_ms || a->step_timeout_ms != b->step_timeout_ms ||
        memcmp(&a->controller_keys, &b->controller_keys, sizeof a->controller_keys) ||
        memcmp(&a->client_keys, &b->client_keys, sizeof a->client_keys) || a->n_nodes != b->n_nodes)
        return 0;
    for (int i = 0; i < a->n_nodes; i++) {
        const sd3_cluster_node_t *x = &a->nodes[i], *y = &b->nodes[i];
        if (strcmp(x->role, y->role) || strcmp(x->name, y->name) || strcmp(x->listen, y->listen) ||
            x->range_begin != y->range_begin || x->range_end != y->range_end ||
            x->threads != y->threads || x->batch_max != y->batch_max ||
            strcmp(x->backend, y->backend) ||
            strcmp(x->codec, y->codec) || strcmp(x->wire_dtype, y->wire_dtype) ||
            memcmp(&x->keys, &y->keys, sizeof x->keys))
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sd3_cluster_file_t c;
    sd3_err_t err = {0};
    int rc = sd3_cluster_file_parse((const char *)data, size, S_NAME, &c, &err);
    if (rc != 0) {
        SD3_FUZZ_NOTE("refused: %s\n", err.msg);
        if (err.code == 0 || strncmp(err.msg, S_NAME ":", strlen(S_NAME) + 1) != 0)
            __builtin_trap(); // every error names the file (and, in the text, a line)
        sd3_cluster_file_fini(&c);
        return 0;
    }
    if (c.n_nodes > SD3_CLUSTER_FILE_MAX_NODES)
        __builtin_trap();
    for (int i = 0; i < c.n_nodes; i++) {
        const sd3_cluster_node_t *nd = &c.nodes[i];
        if (!nd->name[0] || sd3_cluster_file_node(&c, nd->name) != nd)
            __builtin_trap(); // empty or duplicate name
        if (nd->range_begin >= 0 && !(nd->range_begin < nd->range_end))
            __builtin_trap();
    }
    int depth = 1 + (int)(size % 40);
    sd3_err_t e1 = {0}, e2 = {0};
    int r1 = sd3_cluster_file_check_ranges(&c, depth, S_NAME, &e1);
    int r2 = sd3_cluster_file_check_ranges(&c, 2, S_NAME, &e2);
    SD3_FUZZ_NOTE("parsed: %d nodes; ranges at depth %d: %s; at 2: %s\n", c.n_nodes, depth,
                  r1 ? e1.msg : "ok", r2 ? e2.msg : "ok");
    if ((r1 != 0) != (e1.code != 0) || (r2 != 0) != (e2.code != 0))
        __builtin_trap(); // a refusal always carries its record, an acceptance none
    size_t n = 0;
    char *text = s_write(&c, &n);
    if (text) {
        sd3_cluster_file_t again;
        sd3_err_t e3 = {0};
        if (sd3_cluster_file_parse(text, n, S_NAME, &again, &e3) != 0) {
            fprintf(stderr, "written back, the file does not parse: %s\n", e3.msg);
            __builtin_trap();
        }
        if (!s_same(&c, &again)) {
            fprintf(stderr, "written back, the file parses to other values\n");
            __builtin_trap();
        }
        sd3_cluster_file_fini(&again);
        free(text);
    }
    sd3_cluster_file_fini(&c);
    return 0;
}

#ifndef SD3_LIBFUZZER
// Broken inputs next to the good ones, so the corpus starts at every error branch.
static const char *const s_broken[] = {
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\n[controller]\nlisten = a\nstages = b\n"
    "[mmdit d0]\nrange = 1:1\n",
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\nthreads = 1x\n",
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\n[controller]\nlisten = a\nstages = b\n"
    "[vae v]\n[encoder v]\n",
    "[cluster\nmodel = default\n",
    "model = default\n",
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\n[controller]\nlisten = a\nstages = b\n"
    "queue = 99999999999999999999\n",
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\nkeys_dir = k\ncurve_secret = s.key\n"
    "curve_allow = allow\n[controller]\nlisten = a\nstages = b\n[mmdit d0]\nrange = 0:1\n"
    "[mmdit d1]\nrange = 1:2\ncurve_secret = /abs/d1.key\n",
    "[cluster]\nmodel = default\nrun_dir = /tmp/x\nkeys_dir = k\ncurve_secret = s.key\n"
    "curve_allow = allow\ncurve_server_pub = server.pub\nclient_curve_secret = c.key\n"
    "client_curve_server_pub = server.pub\n[controller]\nlisten = a\nstages = b\n"
    "[encoder e]\ncodec = zstd\nwire_dtype = bf16\nbackend = cuda\n[mmdit m]\n[vae v]\n",
    "[cluster]\r\nmodel = default\r\nrun_dir = /tmp/x\r\n[controller]\r\nlisten = a\r\n"
    "stages = b\r\nunknown = 1\r\n",
};

static int
s_write_seeds(const char *dir)
{
    int bad = 0, n = 0;
    char src[4096];
    snprintf(src, sizeof src, "%s/deploy/local", SD3_SOURCE_DIR);
    DIR *d = opendir(src);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 9 || strcmp(e->d_name + len - 8, ".cluster") != 0)
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", src, e->d_name);
        FILE *f = fopen(path, "rb");
        static char buf[1 << 16];
        size_t got = f ? fread(buf, 1, sizeof buf, f) : 0;
        if (f)
            fclose(f);
        bad |= !f || s_seed_write(dir, e->d_name, buf, got);
        n++;
    }
    if (d)
        closedir(d);
    for (size_t i = 0; i < sizeof s_broken / sizeof s_broken[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "seed-%02zu", i);
        bad |= s_seed_write(dir, name, s_broken[i], strlen(s_broken[i]));
    }
    printf("wrote %d deploy/local files and %zu other seeds into %s\n", n,
           sizeof s_broken / sizeof s_broken[0], dir);
    return bad || n == 0;
}
#endif

SD3_FUZZ_REPLAY_MAIN("fuzz_cluster_file")
