/*  sd3_node - an sd3d process hosting one stage role (encoder, mmdit range or vae)
 *
 *  A node binds one ROUTER for data (--listen: STEP and LATENT from its peer stages, and
 *  anything a test throws at it), connects one DEALER to the controller's stage endpoint
 *  (--controller; REGISTER, HEARTBEAT, ENCODED, STEP_DONE, DECODED, ERROR go up; ENCODE, JOB,
 *  DECODE, VAE_ENCODE, CANCEL, SHUTDOWN come down), and one DEALER per peer stage the
 *  controller names in a JOB (stage-to-stage traffic never passes through the controller).
 *  The handlers (sd3_stage_host.c) make exactly the calls of sd3_local on the same data, so
 *  a cluster's image is bit-identical to the one-process image: activations travel as
 *  lossless f32 unless --wire-dtype says otherwise.
 *
 *  Every malformed message is answered with ERROR and the node keeps serving (sd3_link does
 *  the wire checks; the handlers check shapes with sd3_msg_expect and the request table).
 *  Steps are idempotent by (request id, step, attempt): a duplicate, a step of a cancelled
 *  request or of an older attempt is dropped; a JOB of a newer attempt (a resume from a
 *  checkpoint: first_step, latent and, on the last range, DPM++ 2M's old_denoised) replaces
 *  the request's state. When the controller does not know the node any more (it restarted)
 *  the node drops every request it holds and registers again. Logs: key=value, req= on every request line.
 *  Threads: sd3_node_run is the I/O thread: it owns the controller's socket, registers,
 *  heartbeats (with loading progress, the unit in progress and the measured rate), and
 *  notes CANCELs and newer JOBs at once, so a compute thread busy for minutes in a forward
 *  pass never looks dead and stops a dead attempt at its next block (or encoder) boundary.
 *  The compute thread (started by sd3_node_run) pages the role's weights in, runs a warm-up
 *  block, then serves the data socket and the messages the I/O thread hands it (pointers
 *  over an inproc PAIR; ZeroMQ sockets stay single-threaded).  */
#pragma once
#include "sd3_clock.h"
#include "sd3_err.h"
#include "sd3_stage.h"
#include "sd3_wire.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    sd3_wire_role_t role;       // ENCODER, MMDIT or VAE
    const char *node_id;        // unique in the cluster; NULL: "<role>-<pid>"
    const char *listen;         // data ROUTER, e.g. "tcp://127.0.0.1:7721" or "...:*"
    const char *advertise;      // address peers use; NULL: the bound endpoint
    const char *controller;     // the controller's stage endpoint
    const char *model_path;     // checkpoint (any layout)
    const char *tokenizer_dir;  // encoder: NULL = the model's own
    const char *backend;        // "cpu" (default) or "cuda"
    int n_threads;              // 0: all cores
    const char *precision;      // GEMMs: "f32", "bf16", "auto" (NULL; sd3_precision.h)
    int layer_begin, layer_end; // mmdit: blocks [begin, end); end 0 = depth
    bool load_t5;               // encoder
    size_t cache_bytes;         // encoder: prompt-embedding cache bound (0: 256 MiB)
    sd3_codec_opts_t codec;     // how activations and latents leave this node
    int heartbeat_ms;           // 0: 500
    sd3_vae_tile_t vae_tile;    // vae: tiled decode (0: whole)
    int batch_max;              // mmdit: steps of different requests merged into one batch
                                // at most (0: SD3_NODE_BATCH_DEFAULT; 1: never merge)
    void *zmq_ctx;              // shared context (the "all" role); NULL: own
    struct sd3_curve *curve;    // CurveZMQ on the data ROUTER and every DEALER (sd3_curve.h);
                                // NULL: plain. Borrowed; made in zmq_ctx, outlives the node
    sd3_backend_t *shared_backend; // borrowed, outlives the node; NULL: the node makes its own
                                   // from backend/n_threads. The "all" role's stages share
                                   // one CPU backend (one pool; its ops take turns)
    bool no_warm;               // skip paging the role's weights in (and the warm-up
                                // forward) before the node reports ready
    const char *fault;          // injected fault for tests ("slow=MS", "hang=N", comma
                                // separated; sd3_node_fault_parse); NULL: $SD3_FAULT
} sd3_node_opts_t;

typedef struct sd3_node sd3_node_t;

// Loads what the role needs and binds its sockets. SD3_EINVAL (options), SD3_EFORMAT
// (model), SD3_EIO (bind).
sd3_node_t *sd3_node_new(const sd3_node_opts_t *opts, sd3_err_t *err);
void sd3_node_destroy(sd3_node_t **self_p);
// The data endpoint as bound (borrowed).
const char *sd3_node_endpoint(const sd3_node_t *self);
// Serves until *stop becomes non-zero or the controller sends SHUTDOWN. 0, or SD3_EIO when
// a socket fails for good.
int sd3_node_run(sd3_node_t *self, volatile sig_atomic_t *stop, sd3_err_t *err);

// ---- shared by the node and the controller ------------------------------------------------

// A wire request to generation parameters: 0 fields take the defaults of cfg (NULL: the
// generic ones). Floats that the user gave as decimals come back as the same doubles
// (shortest round-trip), so the SLG window and the PNG text match a local run.
int sd3_gen_params_from_wire(sd3_gen_params_t *p, const sd3_wire_generate_t *w,
                             const sd3_mmdit_config_t *cfg, sd3_err_t *err);
// The resolved parameters back to a wire request (every field explicit).
void sd3_gen_params_to_wire(const sd3_gen_params_t *p, sd3_wire_generate_t *w);
// The double a user meant by float f (shortest decimal that round-trips).
double sd3_float_to_double_decimal(float f);

// ---- internal: shared by sd3_node.c, sd3_stage_host.c and sd3_heartbeat.c ---------------
// Not an API: the fields are the node's own.

#include "sd3_link.h"

#define SD3_NODE_MAX_PEERS 16
#define SD3_NODE_MAX_REQS  256 // requests a stage holds at once
#define SD3_NODE_RECENT    512 // ids of finished or cancelled requests remembered
#define SD3_NODE_MAX_BATCH 16  // steps merged into one batch at most (--batch-max)
#define SD3_NODE_BATCH_DEFAULT 4
// Token rows (batch x (image + context tokens)) of one merged batch at most: the workspace
// grows with them. 8192 lets 512 px SD3.5 requests (2 x 1178 rows) merge 3 at a time and
// keeps 1024 px ones (2 x 4250) alone, where one request fills the GEMMs anyway.
#define SD3_NODE_BATCH_ROWS 8192

// Per-node counters reported in heartbeats and `sd3ctl status`.
typedef struct {
    uint64_t bytes_in, bytes_out; // tensor bytes received / sent (decoded size)
    uint64_t steps, refused;
    uint64_t cache_hits, cache_misses;
    uint64_t batches, batched_steps; // merged batches run, and the steps they held
} sd3_node_stats_t;

// What an mmdit stage holds for one request between its steps.
typedef struct {
    bool used;
    char id[SD3_WIRE_ID_MAX];
    uint32_t attempt;
    int stage_index, n_stages;
    int next_step;      // the step index this stage expects next
    int n_sigmas;       // steps of this request + 1 (img2img: the tail)
    int grid_h, grid_w; // token grid (height/16, width/16)
    int lat_h, lat_w;   // latent size (height/8, width/8)
    uint64_t slg_layers;
    char next[SD3_WIRE_ADDR_MAX]; // STEP (or LATENT from the last stage) goes there
    sd3_dit_job_t *job;           // first and last stage: sampler state and conditioning
    int64_t t_start_ms;
} sd3_node_req_t;

// An injected fault (a test facility, off by default): every forward, encode or decode of
// the node takes slow_ms longer (spread over its units, cancellable), and the hang-th task
// (mmdit: step number hang, in the middle of its range) never ends.
typedef struct {
    int64_t slow_ms; // 0: none
    int64_t hang;    // -1: none
} sd3_node_fault_t;
// "slow=MS,hang=N" (either, or ""); SD3_EINVAL naming the bad part.
int sd3_node_fault_parse(const char *spec, sd3_node_fault_t *out, sd3_err_t *err);

// Requests whose attempts are dead (cancelled, or replaced by a newer JOB), noted by the
// I/O thread so the compute thread stops their work at the next unit boundary.
#define SD3_NODE_DEAD_MAX 64

// What the two threads of a node share, under mu: the I/O thread (sd3_node_run: the
// controller's socket, registration, heartbeats) and the compute thread (data and peer
// sockets, the stages). The compute thread never touches the controller's socket; what it
// sends there goes through an inproc pair.
typedef struct {
    pthread_mutex_t mu;
    sd3_wire_live_t live;  // busy_ms is filled in at each heartbeat from unit_start_ms
    int64_t unit_start_ms; // the unit in progress began (0: idle)
    uint32_t inflight;     // requests the stages hold
    struct {
        char id[SD3_WIRE_ID_MAX];
        uint32_t attempt; // attempts <= this are dead
    } dead[SD3_NODE_DEAD_MAX];
    int dead_next;
    uint64_t drop_gen; // bumped when the node drops all it holds (the controller restarted)
    bool stop;         // the I/O thread is leaving: the compute thread returns
    bool done;         // the compute thread returned
    uint64_t load_done, load_total; // page-in bytes (load_done: __atomic, no lock)
} sd3_node_shared_t;

// The compute thread's own view of the work in progress (progress hooks read it).
typedef struct {
    int n;
    char ids[SD3_NODE_MAX_BATCH][SD3_WIRE_ID_MAX];
    uint32_t attempts[SD3_NODE_MAX_BATCH];
    uint64_t gen; // drop_gen when the work began
    int step, units, unit; // unit: the one running (-1: none yet)
    double unit_flops;
    int64_t unit_t0_ms;
    int64_t batch, n_img, n_ctx; // mmdit: the shape of the batch
    int64_t tasks;               // tasks begun so far (hang=N of encoder and vae)
} sd3_node_work_t;

struct sd3_node {
    sd3_node_opts_t o;
    char node_id[SD3_WIRE_ID_MAX];
    char address[SD3_WIRE_ADDR_MAX]; // what peers connect to
    void *ctx;
    bool own_ctx;
    sd3_link_t *data; // ROUTER
    sd3_link_t *ctrl; // DEALER to the controller
    struct {
        char addr[SD3_WIRE_ADDR_MAX];
        sd3_link_t *link;
    } peers[SD3_NODE_MAX_PEERS];
    int n_peers;
    sd3_backend_t *be;
    sd3_model_t *model;
    sd3_weights_t *w_mmdit, *w_vae;
    sd3_mmdit_config_t cfg;
    bool have_cfg;
    sd3_enc_stage_t *enc;
    sd3_dit_stage_t *dit;
    sd3_vae_stage_t *vae;
    sd3_node_req_t reqs[SD3_NODE_MAX_REQS];
    char recent[SD3_NODE_RECENT][SD3_WIRE_ID_MAX]; // ring
    int recent_next;
    sd3_node_stats_t stats; // updated with __atomic builtins (both threads)
    bool registered, shutdown; // the I/O thread's
    int64_t start_ms, last_hb_ms, last_reg_ms;
    void *pipe_io, *pipe_work; // inproc PAIR: the I/O thread's end, the compute thread's end
    pthread_t worker;
    bool worker_started;
    sd3_node_shared_t sh;
    sd3_node_work_t work;
    sd3_node_fault_t fault;
    double rate_gflops; // compute thread: measured (EWMA), 0 none yet
    sd3_wire_node_state_t hb_state; // what the last heartbeat said (I/O thread)
    uint32_t hb_permille;
};

#define SD3_NODE_STAT_ADD(self, field, n) __atomic_fetch_add(&(self)->stats.field, (n), __ATOMIC_RELAXED)
#define SD3_NODE_STAT_GET(self, field) __atomic_load_n(&(self)->stats.field, __ATOMIC_RELAXED)

// ---- the compute thread's progress (sd3_node.c; called by sd3_stage_host.c) ---------------
// Work on the requests ids[0..n) (attempts) begins: `units` units (blocks of the range, the
// encoders, 1 decode). Published for heartbeats; the fault's slow time is spread over them.
void sd3_node_work_begin(sd3_node_t *self, const char *const *ids, const uint32_t *attempts,
                         int n, int step, int units);
// Unit `unit` (0..units) begins; unit == units: the work ran. flops: the unit's model FLOPs
// (expectation from the measured rate). Non-zero: every request of the work is dead (or the
// node stops): stop at this boundary (SD3_ECANCELED).
int sd3_node_work_unit(sd3_node_t *self, int unit, double flops);
void sd3_node_work_end(sd3_node_t *self);
// Whether attempt `attempt` of request id was cancelled or replaced (I/O thread's notes).
bool sd3_node_dead(sd3_node_t *self, const char *id, uint32_t attempt);

// Steps an mmdit node merges at most in one batch (--batch-max, clamped); 1 for other roles.
int sd3_node_batch_cap(const sd3_node_t *self);

// sd3_heartbeat.c (the I/O thread): REGISTER until the controller ACKs it, then a
// HEARTBEAT every heartbeat_ms (with the counters above and what the node does now).
void sd3_heartbeat_tick(sd3_node_t *self);
// The controller does not know us (it restarted): register again.
void sd3_heartbeat_reset(sd3_node_t *self);

// sd3_stage_host.c: one handler per message a role serves. `from` is the peer on the data
// ROUTER (NULL: the message came from the controller). Errors about a request are answered
// with ERROR to the controller (and to `from` when the message came on the data socket).
void sd3_stage_host_handle(sd3_node_t *self, const sd3_wire_peer_t *from, sd3_msg_t **msg_p);
// The n messages that were waiting on the data socket, in order (from[i] sent msgs[i]). An
// mmdit stage merges the STEPs (or LATENTs) of different requests with the same shapes into
// one batch of at most batch_max; any other message runs the batch so far first.
void sd3_stage_host_handle_many(sd3_node_t *self, const sd3_wire_peer_t *from, sd3_msg_t **msgs,
                                int n);
// Forgets every request (shutdown).
void sd3_stage_host_clear(sd3_node_t *self);
// Sends *msg_p to the controller (takes it), counting its tensor bytes. From the compute
// thread it goes through the inproc pair; the I/O thread sends it on.
int sd3_node_send_ctrl(sd3_node_t *self, sd3_msg_t **msg_p, sd3_err_t *err);
// Sends *msg_p to a peer stage at addr (connecting on first use; takes it).
int sd3_node_send_peer(sd3_node_t *self, const char *addr, sd3_msg_t **msg_p, sd3_err_t *err);
