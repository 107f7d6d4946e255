/*  sd3_cluster_file - the cluster file of `sd3ctl up`: parsed and checked, never trusted
 *
 *  A cluster file (deploy/local/NAME.cluster) is INI: one [cluster] section, one
 *  [controller] section, then one section per node named "[ROLE NAME]" (ROLE = encoder,
 *  mmdit or vae; NAME 1..63 bytes, no '/' or blanks, unique, not "controller"). A '#'
 *  starts a comment anywhere on a line; blank lines are skipped; "KEY = VALUE" lines (blanks
 *  around both trimmed) belong to the section above them. Keys:
 *    [cluster]     model (PATH or "default"), tokenizers, run_dir, name (ignored), and the
 *                  defaults of every node: threads, batch_max, backend, codec, wire_dtype,
 *                  curve_secret, curve_allow, curve_server_pub (the controller inherits the
 *                  three curve_* too); keys_dir (relative key paths are taken inside it);
 *                  client_curve_secret, client_curve_server_pub (the keys `sd3ctl up` uses
 *                  to ask the controller for STATUS; needed when the controller has keys)
 *    [controller]  listen, stages, queue, inflight, http, deadline_ms, client_timeout_ms,
 *                  node_timeout_ms, step_timeout_ms (-1: off), journal, curve_secret,
 *                  curve_allow, curve_server_pub
 *    [ROLE NAME]   listen, range A:B (mmdit: joint blocks [A, B)), threads, batch_max,
 *                  warm (0: report ready without paging weights in; also in [cluster]),
 *                  fault (a test facility: sd3d --fault), precision (f32|bf16|auto; also
 *                  in [cluster])
 *                  (mmdit: --batch-max, 1..16), backend, codec, wire_dtype, curve_secret,
 *                  curve_allow, curve_server_pub
 *  The curve_* keys name the files of `sd3d --curve-secret/--curve-allow/--curve-server-pub`
 *  (daemon/wire/sd3_curve.h); a member with an allow or server-pub file needs a secret.
 *
 *  Every problem is an SD3_EFORMAT error "NAME:LINE: what was found, what is wanted" (NAME =
 *  name_for_errors): a line over SD3_CLUSTER_FILE_MAX_LINE bytes, a NUL byte, a value over
 *  SD3_CLUSTER_FILE_MAX_VALUE, more than SD3_CLUSTER_FILE_MAX_NODES nodes, a duplicate
 *  node name / key / section, an unknown section or key, a number that is not a whole
 *  decimal in its range (strtol, checked), a bad range, codec, wire_dtype or backend, and a
 *  missing model, run_dir, listen or stages. Whether the mmdit ranges form whole pipelines
 *  needs the model's depth: sd3_cluster_file_check_ranges().
 *  Used by ctl/sd3ctl_up.c, tests/unit/test_cluster_file.c, tests/fuzz/fuzz_cluster_file.c.
 *  Pure parsing: no I/O besides _load's read, no logging. Not thread-safe per object.  */
#pragma once
#include "sd3_err.h"

#include <stddef.h>

#define SD3_CLUSTER_FILE_MAX_BYTES (1 << 20) // _load: a larger file is refused
#define SD3_CLUSTER_FILE_MAX_LINE  4096      // bytes of one line, without its newline
#define SD3_CLUSTER_FILE_MAX_VALUE 511       // bytes of one value (paths, endpoints)
#define SD3_CLUSTER_FILE_MAX_NODES 64
#define SD3_CLUSTER_FILE_MAX_DEPTH 4096 // range ends are at most this (before the model check)

#define SD3_CLUSTER_FILE_STR (SD3_CLUSTER_FILE_MAX_VALUE + 1)

// The CurveZMQ key files of one member ("" = none); paths already joined with keys_dir.
typedef struct {
    char secret[SD3_CLUSTER_FILE_STR], allow[SD3_CLUSTER_FILE_STR],
        server_pub[SD3_CLUSTER_FILE_STR];
} sd3_cluster_keys_t;

// One node. After a successful parse the [cluster] defaults are filled in, so every field
// is what the node's sd3d gets ("" / -1: the option is not passed).
typedef struct {
    char role[8];  // "encoder", "mmdit", "vae"
    char name[64]; // the section's NAME: --node-id, NAME.log, the pids file
    int line;      // of its [ROLE NAME] header, for messages
    char listen[SD3_CLUSTER_FILE_STR];
    int range_begin, range_end; // mmdit blocks [begin, end); both -1 when not given (all)
    int range_line;             // line of its range key, 0 when none
    long threads;               // -1: not given
    long batch_max;             // -1: not given
    long warm;                  // 0: --no-warm; -1: not given
    char fault[64];             // --fault (tests only); "" none
    char precision[8];          // --precision f32|bf16|auto; "" not given
    char backend[8], codec[16], wire_dtype[8];
    sd3_cluster_keys_t keys;
} sd3_cluster_node_t;

typedef struct {
    // [cluster]
    char model[SD3_CLUSTER_FILE_STR], tokenizers[SD3_CLUSTER_FILE_STR],
        run_dir[SD3_CLUSTER_FILE_STR], keys_dir[SD3_CLUSTER_FILE_STR];
    long threads;   // -1: not given
    long batch_max; // -1: not given
    long warm;      // -1: not given
    char precision[8]; // "" not given
    char backend[8], codec[16], wire_dtype[8];
    sd3_cluster_keys_t default_keys; // [cluster] curve_*: of every member that sets none
    sd3_cluster_keys_t client_keys;  // secret + server_pub that `sd3ctl up` itself uses
    // [controller] (numbers 0 = not given; the curve_* keys inherited from [cluster])
    char listen[SD3_CLUSTER_FILE_STR], stages[SD3_CLUSTER_FILE_STR], http[SD3_CLUSTER_FILE_STR],
        journal[SD3_CLUSTER_FILE_STR];
    long queue, inflight, deadline_ms, client_timeout_ms, node_timeout_ms, step_timeout_ms;
    sd3_cluster_keys_t controller_keys;
    int controller_line; // of the [controller] header
    // the nodes, in file order
    sd3_cluster_node_t *nodes;
    int n_nodes;
} sd3_cluster_file_t;

// Parses n bytes of text (need not be NUL-terminated) into *out, which is overwritten (call
// _fini on it afterwards, also after a failure). 0, or SD3_EFORMAT / SD3_ENOMEM with the
// message "name_for_errors:LINE: ..." (name_for_errors NULL: "cluster file").
int sd3_cluster_file_parse(const char *text, size_t n, const char *name_for_errors,
                           sd3_cluster_file_t *out, sd3_err_t *err);
// Reads the file at path (at most SD3_CLUSTER_FILE_MAX_BYTES) and parses it, naming it by
// path in messages. SD3_ENOTFOUND / SD3_EIO / SD3_ENOMEM, or the errors of _parse.
int sd3_cluster_file_load(const char *path, sd3_cluster_file_t *out, sd3_err_t *err);
// Frees what _parse allocated and zeroes *self; NULL-safe, idempotent.
void sd3_cluster_file_fini(sd3_cluster_file_t *self);

// Checks the mmdit ranges against the model's depth: each within [0, depth) (a node without
// a range hosts all of them), and together they split into whole pipelines [0, a), [a, b),
// ..., [y, depth) using every range once (at each block boundary as many ranges end as
// start), which is what `sd3ctl up` waits for. SD3_EFORMAT naming the file:line of a
// range that does not fit, SD3_EINVAL for depth < 1. name_for_errors as in _parse.
int sd3_cluster_file_check_ranges(const sd3_cluster_file_t *self, int depth,
                                  const char *name_for_errors, sd3_err_t *err);
// The node called name, or NULL.
const sd3_cluster_node_t *sd3_cluster_file_node(const sd3_cluster_file_t *self, const char *name);
