/*  sd3_cluster_file - the cluster file of `sd3ctl up`: parsed and checked, never trusted
 *
 *  One pass over the lines; each "KEY = VALUE" is looked up in the key table of its section
 *  (type, where it goes, its range), so every key is checked the same way and a repeated
 *  key is caught by the table's `seen` lines. The [cluster] defaults and keys_dir are
 *  applied after the last line, then the cross-section rules (required keys, curve keys).
 *  The format and the rules: sd3_cluster_file.h.  */
#include "sd3_cluster_file.h"
#include "sd3_node.h"
#include "sd3_precision.h"

#include "sd3_codec.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { S_NONE, S_CLUSTER, S_CONTROLLER, S_NODE } s_section_t;

typedef enum {
    S_STR,     // string into char[cap]
    S_LONG,    // long in [lo, hi]
    S_RANGE,   // "A:B" into the node's range
    S_CODEC,   // raw | zstd | shuffle+zstd (sd3_codec_from_name)
    S_DTYPE,   // f32 | bf16 | f16
    S_BACKEND, // cpu | cuda
    S_IGNORE,  // accepted and dropped
} s_type_t;

typedef struct {
    const char *key;
    s_type_t type;
    size_t off, cap; // offset in the section's struct; cap of a string field
    long lo, hi;     // S_LONG
} s_key_t;

#define S_MAX_KEYS 24

#define F(field) offsetof(sd3_cluster_file_t, field), sizeof(((sd3_cluster_file_t *)0)->field)
#define N(field) offsetof(sd3_cluster_node_t, field), sizeof(((sd3_cluster_node_t *)0)->field)

static const s_key_t s_cluster_keys[] = {
    {"model", S_STR, F(model), 0, 0},
    {"tokenizers", S_STR, F(tokenizers), 0, 0},
    {"run_dir", S_STR, F(run_dir), 0, 0},
    {"name", S_IGNORE, 0, 0, 0, 0},
    {"threads", S_LONG, F(threads), 0, 1024},
    {"batch_max", S_LONG, F(batch_max), 1, 16},
    {"warm", S_LONG, F(warm), 0, 1},
    {"precision", S_STR, F(precision), 0, 0},
    {"backend", S_BACKEND, F(backend), 0, 0},
    {"codec", S_CODEC, F(codec), 0, 0},
    {"wire_dtype", S_DTYPE, F(wire_dtype), 0, 0},
    {"keys_dir", S_STR, F(keys_dir), 0, 0},
    {"curve_secret", S_STR, F(default_keys.secret), 0, 0},
    {"curve_allow", S_STR, F(default_keys.allow), 0, 0},
    {"curve_server_pub", S_STR, F(default_keys.server_pub), 0, 0},
    {"client_curve_secret", S_STR, F(client_keys.secret), 0, 0},
    {"client_curve_server_pub", S_STR, F(client_keys.server_pub), 0, 0},
};

// Ranges as sd3d checks them (daemon/main.c), so a file `up` accepts starts.
static const s_key_t s_controller_keys[] = {
    {"listen", S_STR, F(listen), 0, 0},
    {"stages", S_STR, F(stages), 0, 0},
    {"queue", S_LONG, F(queue), 1, 1000000},
    {"inflight", S_LONG, F(inflight), 1, 10000},
    {"http", S_STR, F(http), 0, 0},
    {"deadline_ms", S_LONG, F(deadline_ms), 1, 86400000L},
    {"client_timeout_ms", S_LONG, F(client_timeout_ms), 100, 3600000L},
    {"node_timeout_ms", S_LONG, F(node_timeout_ms), 100, 3600000L},
    {"step_timeout_ms", S_LONG, F(step_timeout_ms), -1, 86400000L}, // -1 off, 0 default
    {"journal", S_STR, F(journal), 0, 0},
    {"curve_secret", S_STR, F(controller_keys.secret), 0, 0},
    {"curve_allow", S_STR, F(controller_keys.allow), 0, 0},
    {"curve_server_pub", S_STR, F(controller_keys.server_pub), 0, 0},
};

static const s_key_t s_node_keys[] = {
    {"listen", S_STR, N(listen), 0, 0},
    {"range", S_RANGE, 0, 0, 0, SD3_CLUSTER_FILE_MAX_DEPTH},
    {"threads", S_LONG, N(threads), 0, 1024},
    {"batch_max", S_LONG, N(batch_max), 1, 16},
    {"warm", S_LONG, N(warm), 0, 1},
    {"fault", S_STR, N(fault), 0, 0},
    {"precision", S_STR, N(precision), 0, 0},
    {"backend", S_BACKEND, N(backend), 0, 0},
    {"codec", S_CODEC, N(codec), 0, 0},
    {"wire_dtype", S_DTYPE, N(wire_dtype), 0, 0},
    {"curve_secret", S_STR, N(keys.secret), 0, 0},
    {"curve_allow", S_STR, N(keys.allow), 0, 0},
    {"curve_server_pub", S_STR, N(keys.server_pub), 0, 0},
};

#undef F
#undef N

#define S_COUNT(a) (sizeof(a) / sizeof((a)[0]))
_Static_assert(S_COUNT(s_cluster_keys) <= S_MAX_KEYS && S_COUNT(s_controller_keys) <= S_MAX_KEYS &&
                   S_COUNT(s_node_keys) <= S_MAX_KEYS,
               "raise S_MAX_KEYS");

// The parser's state besides *out.
typedef struct {
    const char *name; // for messages
    int line;
    s_section_t sec;
    sd3_cluster_node_t *node; // the current node section
    int cluster_line, node_cap;
    int seen_cluster[S_MAX_KEYS], seen_controller[S_MAX_KEYS], seen_node[S_MAX_KEYS];
} s_parser_t;

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

// strtol, checked: the whole string is one decimal number in [lo, hi].
static int
s_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    // digits only ("+5", " 5" are refused); a '-' only where the range allows it
    bool digits = isdigit((unsigned char)s[0]) ||
                  (lo < 0 && s[0] == '-' && isdigit((unsigned char)s[1]));
    if (end == s || *end || errno || v < lo || v > hi || !digits)
        return -1;
    *out = v;
    return 0;
}

// "A:B" with 0 <= A < B <= hi.
static int
s_range(const char *s, long hi, int *begin, int *end_out)
{
    const char *colon = strchr(s, ':');
    char a[32];
    long va, vb;
    if (!colon || (size_t)(colon - s) >= sizeof a)
        return -1;
    memcpy(a, s, (size_t)(colon - s));
    a[colon - s] = '\0';
    if (s_long(a, 0, hi, &va) != 0 || s_long(colon + 1, 0, hi, &vb) != 0 || va >= vb)
        return -1;
    *begin = (int)va;
    *end_out = (int)vb;
    return 0;
}

static int
s_fail(s_parser_t *p, sd3_err_t *err, const char *what, const char *detail)
{
    return sd3_err_set(err, SD3_EFORMAT, "%s:%d: %s%s", p->name, p->line, what, detail);
}

// Sets one key of the current section from value v.
static int
s_set(s_parser_t *p, sd3_cluster_file_t *out, const char *k, const char *v, sd3_err_t *err)
{
    const s_key_t *table;
    size_t n_keys;
    int *seen;
    char *base;
    if (p->sec == S_CLUSTER) {
        table = s_cluster_keys, n_keys = S_COUNT(s_cluster_keys), seen = p->seen_cluster;
        base = (char *)out;
    } else if (p->sec == S_CONTROLLER) {
        table = s_controller_keys, n_keys = S_COUNT(s_controller_keys);
        seen = p->seen_controller, base = (char *)out;
    } else {
        table = s_node_keys, n_keys = S_COUNT(s_node_keys), seen = p->seen_node;
        base = (char *)p->node;
    }
    size_t i = 0;
    while (i < n_keys && strcmp(table[i].key, k) != 0)
        i++;
    if (i == n_keys) {
        char list[512] = "";
        for (size_t j = 0; j < n_keys; j++)
            if (table[j].type != S_IGNORE)
                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                         table[j].key);
        return sd3_err_set(err, SD3_EFORMAT, "%s:%d: unknown key '%.64s' (known here: %s)", p->name,
                           p->line, k, list);
    }
    const s_key_t *key = &table[i];
    if (seen[i])
        return sd3_err_set(err, SD3_EFORMAT, "%s:%d: '%s' set again (first at line %d)", p->name,
                           p->line, k, seen[i]);
    seen[i] = p->line;
    if (strlen(v) > SD3_CLUSTER_FILE_MAX_VALUE)
        return sd3_err_set(err, SD3_EFORMAT, "%s:%d: '%s': value of %zu bytes, at most %d", p->name,
                           p->line, k, strlen(v), SD3_CLUSTER_FILE_MAX_VALUE);
    char *field = base + key->off;
    switch (key->type) {
    case S_STR:
        if (strlen(v) >= key->cap)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: '%s': value of %zu bytes, at most %zu",
                               p->name, p->line, k, strlen(v), key->cap - 1);
        snprintf(field, key->cap, "%s", v);
        break;
    case S_LONG:
        if (s_long(v, key->lo, key->hi, (long *)(void *)field) != 0)
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s:%d: %s = '%.64s': want a whole number in [%ld, %ld]", p->name,
                               p->line, k, v, key->lo, key->hi);
        break;
    case S_RANGE:
        if (s_range(v, key->hi, &p->node->range_begin, &p->node->range_end) != 0)
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s:%d: range = '%.64s': want A:B, whole numbers with 0 <= A < B "
                               "<= %ld (joint blocks [A, B))",
                               p->name, p->line, v, key->hi);
        p->node->range_line = p->line;
        break;
    case S_CODEC: {
        sd3_codec_t codec;
        if (sd3_codec_from_name(v, &codec) != 0 || strlen(v) >= key->cap)
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s:%d: codec = '%.64s': want raw, zstd or shuffle+zstd", p->name,
                               p->line, v);
        snprintf(field, key->cap, "%s", v);
        break;
    }
    case S_DTYPE:
        if (strcmp(v, "f32") && strcmp(v, "bf16") && strcmp(v, "f16"))
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s:%d: wire_dtype = '%.64s': want f32, bf16 or f16", p->name,
                               p->line, v);
        snprintf(field, key->cap, "%s", v);
        break;
    case S_BACKEND:
        if (strcmp(v, "cpu") && strcmp(v, "cuda"))
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: backend = '%.64s': want cpu or cuda",
                               p->name, p->line, v);
        snprintf(field, key->cap, "%s", v);
        break;
    case S_IGNORE:
        break;
    }
    return 0;
}

// A "[...]" line (s trimmed, starts with '[').
static int
s_section(s_parser_t *p, sd3_cluster_file_t *out, char *s, sd3_err_t *err)
{
    char *end = strchr(s, ']');
    if (!end || *s_trim(end + 1))
        return s_fail(p, err, "want [SECTION] alone on its line", "");
    *end = '\0';
    char *name = s_trim(s + 1), *rest = strpbrk(name, " \t");
    if (rest) {
        *rest++ = '\0';
        rest = s_trim(rest);
    }
    if ((!strcmp(name, "cluster") || !strcmp(name, "controller")) && !rest) {
        bool cluster = name[1] == 'l';
        int *first = cluster ? &p->cluster_line : &out->controller_line;
        if (*first)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s] again (first at line %d)", p->name,
                               p->line, name, *first);
        if (cluster && out->controller_line)
            return s_fail(p, err, "[cluster] comes first, before [controller]", "");
        if (!cluster && !p->cluster_line)
            return s_fail(p, err, "[controller] before [cluster]: [cluster] comes first", "");
        if (out->n_nodes > 0)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s] after the node sections", p->name,
                               p->line, name);
        *first = p->line;
        p->sec = cluster ? S_CLUSTER : S_CONTROLLER;
        return 0;
    }
    if (strcmp(name, "encoder") && strcmp(name, "mmdit") && strcmp(name, "vae"))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: unknown section [%.64s%s%.64s] (cluster, controller, "
                           "'encoder NAME', 'mmdit NAME', 'vae NAME')",
                           p->name, p->line, name, rest ? " " : "", rest ? rest : "");
    if (!rest || !*rest)
        return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s] needs a node name: [%s NAME]", p->name,
                           p->line, name, name);
    if (strlen(rest) >= sizeof p->node->name || strpbrk(rest, "/ \t"))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: node name '%.64s': 1..63 bytes, no '/' or blanks", p->name,
                           p->line, rest);
    if (!strcmp(rest, "controller"))
        return s_fail(p, err, "node name 'controller' is the controller's (logs, pids)", "");
    for (int i = 0; i < out->n_nodes; i++)
        if (!strcmp(out->nodes[i].name, rest))
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: node name '%s' again (first at line %d)",
                               p->name, p->line, rest, out->nodes[i].line);
    if (out->n_nodes == SD3_CLUSTER_FILE_MAX_NODES)
        return sd3_err_set(err, SD3_EFORMAT, "%s:%d: more than %d nodes", p->name, p->line,
                           SD3_CLUSTER_FILE_MAX_NODES);
    if (out->n_nodes == p->node_cap) {
        int cap = p->node_cap ? 2 * p->node_cap : 8;
        sd3_cluster_node_t *grown = realloc(out->nodes, (size_t)cap * sizeof *grown);
        if (!grown)
            return sd3_err_set(err, SD3_ENOMEM, "%s:%d: %d nodes", p->name, p->line, cap);
        out->nodes = grown;
        p->node_cap = cap;
    }
    sd3_cluster_node_t *node = &out->nodes[out->n_nodes++];
    memset(node, 0, sizeof *node);
    snprintf(node->role, sizeof node->role, "%s", name);
    snprintf(node->name, sizeof node->name, "%s", rest);
    node->line = p->line;
    node->range_begin = node->range_end = -1;
    node->threads = -1;
    node->batch_max = -1;
    node->warm = -1;
    p->node = node;
    p->sec = S_NODE;
    memset(p->seen_node, 0, sizeof p->seen_node);
    return 0;
}

// One line (NUL-terminated copy, newline removed).
static int
s_line(s_parser_t *p, sd3_cluster_file_t *out, char *buf, sd3_err_t *err)
{
    char *hash = strchr(buf, '#');
    if (hash)
        *hash = '\0';
    char *s = s_trim(buf);
    if (!*s)
        return 0;
    if (*s == '[')
        return s_section(p, out, s, err);
    char *eq = strchr(s, '=');
    if (!eq || p->sec == S_NONE)
        return s_fail(p, err, "want KEY = VALUE inside a section", "");
    *eq = '\0';
    return s_set(p, out, s_trim(s), s_trim(eq + 1), err);
}

// keys_dir/path when keys_dir is set and path is relative; in place.
static int
s_join(const char *dir, char *path, size_t cap)
{
    if (!dir[0] || !path[0] || path[0] == '/')
        return 0;
    char joined[2 * SD3_CLUSTER_FILE_STR + 2];
    snprintf(joined, sizeof joined, "%s/%s", dir, path);
    if (strlen(joined) >= cap)
        return -1;
    memcpy(path, joined, strlen(joined) + 1);
    return 0;
}

// Member keys: defaults from [cluster] where a field is empty, then keys_dir; and the rule
// of sd3d (allow or server-pub need a secret).
static int
s_keys(s_parser_t *p, const char *dir, const sd3_cluster_keys_t *dflt, sd3_cluster_keys_t *k,
       const char *member, int line, sd3_err_t *err)
{
    if (dflt) {
        if (!k->secret[0])
            memcpy(k->secret, dflt->secret, sizeof k->secret);
        if (!k->allow[0])
            memcpy(k->allow, dflt->allow, sizeof k->allow);
        if (!k->server_pub[0])
            memcpy(k->server_pub, dflt->server_pub, sizeof k->server_pub);
    }
    if (s_join(dir, k->secret, sizeof k->secret) || s_join(dir, k->allow, sizeof k->allow) ||
        s_join(dir, k->server_pub, sizeof k->server_pub))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: %s: a key path inside keys_dir is over %d bytes", p->name, line,
                           member, SD3_CLUSTER_FILE_MAX_VALUE);
    if (!k->secret[0] && (k->allow[0] || k->server_pub[0]))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: %s has curve_allow or curve_server_pub but no curve_secret",
                           p->name, line, member);
    return 0;
}

// After the last line: required keys, defaults, keys.
static int
s_finish(s_parser_t *p, sd3_cluster_file_t *out, sd3_err_t *err)
{
    if (!p->cluster_line)
        return s_fail(p, err, "end of file: no [cluster] section (model, run_dir)", "");
    if (!out->controller_line)
        return s_fail(p, err, "end of file: no [controller] section (listen, stages)", "");
    static const struct {
        const char *what;
        size_t off;
        bool cluster;
    } need[] = {
        {"model (a PATH or \"default\")", offsetof(sd3_cluster_file_t, model), true},
        {"run_dir", offsetof(sd3_cluster_file_t, run_dir), true},
        {"listen (the client endpoint)", offsetof(sd3_cluster_file_t, listen), false},
        {"stages (the endpoint nodes register at)", offsetof(sd3_cluster_file_t, stages), false},
    };
    for (size_t i = 0; i < S_COUNT(need); i++)
        if (!((const char *)out)[need[i].off])
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s] has no %s", p->name,
                               need[i].cluster ? p->cluster_line : out->controller_line,
                               need[i].cluster ? "cluster" : "controller", need[i].what);
    for (int i = 0; i < out->n_nodes; i++) {
        sd3_cluster_node_t *nd = &out->nodes[i];
        char member[96];
        snprintf(member, sizeof member, "[%s %s]", nd->role, nd->name);
        if (nd->threads < 0)
            nd->threads = out->threads;
        if (nd->batch_max < 0)
            nd->batch_max = out->batch_max;
        if (nd->warm < 0)
            nd->warm = out->warm;
        if (!nd->precision[0])
            memcpy(nd->precision, out->precision, sizeof nd->precision);
        int prec;
        if (nd->precision[0] && sd3_precision_parse(nd->precision, &prec, NULL) != 0)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s %s]: precision '%s': want f32, bf16 or "
                               "auto",
                               p->name, nd->line, nd->role, nd->name, nd->precision);
        sd3_node_fault_t fault;
        sd3_err_t fe = {0};
        if (sd3_node_fault_parse(nd->fault, &fault, &fe) != 0)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: [%s %s]: %s", p->name, nd->line, nd->role,
                               nd->name, fe.msg);
        if (!nd->backend[0])
            memcpy(nd->backend, out->backend, sizeof nd->backend);
        if (!nd->codec[0])
            memcpy(nd->codec, out->codec, sizeof nd->codec);
        if (!nd->wire_dtype[0])
            memcpy(nd->wire_dtype, out->wire_dtype, sizeof nd->wire_dtype);
        if (strcmp(nd->role, "mmdit") && nd->range_line)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: %s: only an mmdit node has a range",
                               p->name, nd->range_line, member);
        if (s_keys(p, out->keys_dir, &out->default_keys, &nd->keys, member, nd->line, err) != 0)
            return err ? err->code : SD3_EFORMAT;
    }
    if (s_keys(p, out->keys_dir, &out->default_keys, &out->controller_keys, "[controller]",
               out->controller_line, err) != 0)
        return err ? err->code : SD3_EFORMAT;
    sd3_cluster_keys_t *ck = &out->client_keys;
    if (s_join(out->keys_dir, ck->secret, sizeof ck->secret) ||
        s_join(out->keys_dir, ck->server_pub, sizeof ck->server_pub))
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: [cluster]: a client key path inside keys_dir is over %d bytes",
                           p->name, p->cluster_line, SD3_CLUSTER_FILE_MAX_VALUE);
    if (!ck->secret[0] != !ck->server_pub[0])
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: [cluster] needs both client_curve_secret and "
                           "client_curve_server_pub, or neither",
                           p->name, p->cluster_line);
    if (out->controller_keys.secret[0] && !ck->secret[0])
        return sd3_err_set(err, SD3_EFORMAT,
                           "%s:%d: the controller has CurveZMQ keys: [cluster] needs "
                           "client_curve_secret and client_curve_server_pub so that `sd3ctl up` "
                           "can reach it",
                           p->name, out->controller_line);
    return 0;
}

int
sd3_cluster_file_parse(const char *text, size_t n, const char *name_for_errors,
                       sd3_cluster_file_t *out, sd3_err_t *err)
{
    memset(out, 0, sizeof *out);
    out->threads = -1;
    out->batch_max = -1;
    out->warm = -1;
    s_parser_t p = {.name = name_for_errors ? name_for_errors : "cluster file"};
    if (!text && n)
        return sd3_err_set(err, SD3_EINVAL, "%s: no text", p.name);
    if (n > SD3_CLUSTER_FILE_MAX_BYTES)
        return sd3_err_set(err, SD3_EFORMAT, "%s: %zu bytes, a cluster file has at most %d", p.name,
                           n, SD3_CLUSTER_FILE_MAX_BYTES);
    char buf[SD3_CLUSTER_FILE_MAX_LINE + 1];
    size_t at = 0;
    while (at < n) {
        const char *nl = memchr(text + at, '\n', n - at);
        size_t len = nl ? (size_t)(nl - (text + at)) : n - at;
        p.line++;
        if (len > SD3_CLUSTER_FILE_MAX_LINE)
            return sd3_err_set(err, SD3_EFORMAT, "%s:%d: line of %zu bytes, at most %d", p.name,
                               p.line, len, SD3_CLUSTER_FILE_MAX_LINE);
        if (memchr(text + at, '\0', len))
            return s_fail(&p, err, "NUL byte in the text", "");
        memcpy(buf, text + at, len);
        buf[len] = '\0';
        int rc = s_line(&p, out, buf, err);
        if (rc != 0)
            return rc;
        at += len + (nl ? 1 : 0);
    }
    return s_finish(&p, out, err);
}

int
sd3_cluster_file_load(const char *path, sd3_cluster_file_t *out, sd3_err_t *err)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: %s", path,
                           strerror(errno));
    char *text = malloc(SD3_CLUSTER_FILE_MAX_BYTES + 1);
    if (!text) {
        fclose(f);
        return sd3_err_set(err, SD3_ENOMEM, "%s: read buffer", path);
    }
    size_t n = fread(text, 1, SD3_CLUSTER_FILE_MAX_BYTES + 1, f);
    int rc = 0;
    if (ferror(f))
        rc = sd3_err_set(err, SD3_EIO, "%s: read failed", path);
    else if (n > SD3_CLUSTER_FILE_MAX_BYTES)
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: over %d bytes, too large for a cluster file", path,
                         SD3_CLUSTER_FILE_MAX_BYTES);
    fclose(f);
    if (rc == 0)
        rc = sd3_cluster_file_parse(text, n, path, out, err);
    free(text);
    return rc;
}

void
sd3_cluster_file_fini(sd3_cluster_file_t *self)
{
    if (!self)
        return;
    free(self->nodes);
    memset(self, 0, sizeof *self);
}

int
sd3_cluster_file_check_ranges(const sd3_cluster_file_t *self, int depth,
                              const char *name_for_errors, sd3_err_t *err)
{
    const char *name = name_for_errors ? name_for_errors : "cluster file";
    if (depth < 1 || depth > SD3_CLUSTER_FILE_MAX_DEPTH)
        return sd3_err_set(err, SD3_EINVAL, "%s: model depth %d, want 1..%d", name, depth,
                           SD3_CLUSTER_FILE_MAX_DEPTH);
    // starts[b] - ends[b] per block boundary: ranges split into chains [0, depth) using each
    // once exactly when it is 0 at every inner boundary (edges only go forward, so a flow
    // with in = out at every inner point decomposes into paths from 0 to depth).
    int *balance = calloc((size_t)depth + 1, sizeof *balance);
    if (!balance)
        return sd3_err_set(err, SD3_ENOMEM, "%s: depth %d", name, depth);
    int rc = 0;
    for (int i = 0; i < self->n_nodes && rc == 0; i++) {
        const sd3_cluster_node_t *nd = &self->nodes[i];
        if (strcmp(nd->role, "mmdit") != 0)
            continue;
        int b = nd->range_begin < 0 ? 0 : nd->range_begin;
        int e = nd->range_end < 0 ? depth : nd->range_end;
        if (e > depth)
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "%s:%d: [mmdit %s] range %d:%d ends past the model's %d blocks", name,
                             nd->range_line, nd->name, b, e, depth);
        else {
            balance[b]++;
            balance[e]--;
        }
    }
    for (int at = 1; at < depth && rc == 0; at++) {
        if (balance[at] == 0)
            continue;
        // Name a range that is left over at this boundary.
        const sd3_cluster_node_t *odd = NULL;
        for (int i = 0; i < self->n_nodes && !odd; i++) {
            const sd3_cluster_node_t *nd = &self->nodes[i];
            if (!strcmp(nd->role, "mmdit") &&
                (balance[at] > 0 ? nd->range_begin == at : nd->range_end == at))
                odd = nd;
        }
        int starting = 0, ending = 0;
        for (int i = 0; i < self->n_nodes; i++) {
            const sd3_cluster_node_t *nd = &self->nodes[i];
            if (strcmp(nd->role, "mmdit") != 0)
                continue;
            starting += nd->range_begin == at;
            ending += nd->range_end == at;
        }
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "%s:%d: [mmdit %s] range %d:%d is in no whole pipeline over [0, %d): "
                         "%d range(s) end at block %d and %d start there",
                         name, odd ? odd->range_line : 0, odd ? odd->name : "?",
                         odd ? odd->range_begin : 0, odd ? odd->range_end : 0, depth, ending, at,
                         starting);
    }
    free(balance);
    return rc;
}

const sd3_cluster_node_t *
sd3_cluster_file_node(const sd3_cluster_file_t *self, const char *name)
{
    for (int i = 0; i < self->n_nodes; i++)
        if (!strcmp(self->nodes[i].name, name))
            return &self->nodes[i];
    return NULL;
}
