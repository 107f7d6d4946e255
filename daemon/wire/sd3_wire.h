/*  sd3_wire - sd3d messages: an envelope plus tensor frames over ZeroMQ multipart
 *
 *  The message layer of SYSTEM.md §3. A message (sd3_msg_t) is the envelope in sd3_* terms
 *  (type, request id, step, status, one typed body) plus up to SD3_WIRE_MAX_TENSORS tensors.
 *  On the socket it is one multipart message: frame 0 the packed protobuf Envelope
 *  (proto/sd3.proto), frames 1..n one tensor each (sd3_codec), in descriptor order. A ROUTER
 *  socket adds the peer's routing id in front (sd3_wire_recv_from / sd3_wire_send_to).
 *
 *  Sending takes the message: tensor bytes the message owns and that travel unchanged go to
 *  ZeroMQ without a copy (zmq_msg_init_data with a free callback), encoded frames likewise.
 *  Receiving trusts nothing: envelope size cap and parse, protocol version, message type,
 *  status, string lengths, descriptor count vs frame count, every descriptor against its
 *  frame and the caps, zstd content vs declared size, checksums, body fields against their
 *  bounds. Any failure is SD3_EPROTO with a message naming the problem; the frames are
 *  drained, so the socket stays usable and the caller answers with sd3_wire_reply_error()
 *  and keeps serving. The shape a stage expects is checked with sd3_msg_expect().
 *
 *  The only file pair that includes the generated sd3.pb-c.h (with sd3_wire_bad.c, the
 *  test-support builder of malformed messages). Functions are thread-safe as long as each
 *  socket and message is used by one thread at a time (ZeroMQ's rule).  */
#pragma once
#include "sd3_codec.h"
#include "sd3_err.h"
#include "sd3_tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SD3_WIRE_VERSION        1   // Envelope.protocol_version this build speaks
#define SD3_WIRE_MAX_TENSORS    16  // tensor frames per message
#define SD3_WIRE_ID_MAX         64  // request ids, node ids, model ids (with the NUL)
#define SD3_WIRE_ADDR_MAX       256 // ZeroMQ endpoints
#define SD3_WIRE_PROMPT_MAX     8192
#define SD3_WIRE_MSG_MAX        512 // status message (sd3_err_t.msg)
#define SD3_WIRE_MAX_SLG_LAYERS 16
#define SD3_WIRE_MAX_SIGMAS     1001 // steps <= 1000
#define SD3_WIRE_MAX_NODES      64
#define SD3_WIRE_MAX_PIPELINES  16
#define SD3_WIRE_MAX_STAGES     16
#define SD3_WIRE_MAX_SIDE       16384 // width/height in pixels
#define SD3_WIRE_NCCL_ID_MAX    128
#define SD3_WIRE_ROUTING_ID_MAX 256 // ZeroMQ's own limit on routing ids
// Step latency histogram of the status report: upper bounds in seconds (sd3_metrics renders
// them as Prometheus buckets; past the last bound a step counts only in step_count).
#define SD3_WIRE_STEP_BUCKETS 12
#define SD3_WIRE_STEP_BOUNDS  {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

typedef enum {
    SD3_MSG_NONE = 0,
    SD3_MSG_REGISTER,    // node -> controller: body.reg
    SD3_MSG_HEARTBEAT,   // node -> controller: body.heartbeat
    SD3_MSG_GENERATE,    // client -> controller: body.generate (+ "init_image")
    SD3_MSG_PROGRESS,    // controller -> client: body.progress
    SD3_MSG_RESULT,      // controller -> client: "png" U8 [n] (+ body.generate echo)
    SD3_MSG_ERROR,       // status + message
    SD3_MSG_CANCEL,      // request_id only
    SD3_MSG_ENCODE,      // controller -> encoder: body.generate
    SD3_MSG_ENCODED,     // encoder -> controller: "context" [2,L,4096], "pooled" [2,2048]
    SD3_MSG_JOB,         // controller -> stage: body.job (+ "latent", "context", "pooled")
    SD3_MSG_STEP,        // stage i -> i+1: "x" [B,N,C], "ctx" [B,L,C], "c" [B,C]
    SD3_MSG_LATENT,      // last stage -> stage 0: "latent" [1,16,h,w] for step+1
    SD3_MSG_STEP_DONE,   // last stage -> controller: "latent" (the checkpoint)
    SD3_MSG_DECODE,      // controller -> vae: "latent"
    SD3_MSG_DECODED,     // vae -> controller: "png" U8 [n] or "image" F32 [1,3,H,W]
    SD3_MSG_STATUS,      // ctl -> controller (empty); reply carries body.status
    SD3_MSG_VAE_ENCODE,  // controller -> vae: "image" (img2img)
    SD3_MSG_VAE_ENCODED, // vae -> controller: "latent"
    SD3_MSG_ACK,         // generic acknowledgement
    SD3_MSG_SHUTDOWN,    // controller -> node
    SD3_MSG_TYPE_COUNT
} sd3_msg_type_t;

typedef enum {
    SD3_WIRE_BODY_NONE = 0,
    SD3_WIRE_BODY_GENERATE,
    SD3_WIRE_BODY_REGISTER,
    SD3_WIRE_BODY_HEARTBEAT,
    SD3_WIRE_BODY_JOB,
    SD3_WIRE_BODY_PROGRESS,
    SD3_WIRE_BODY_STATUS,
} sd3_wire_body_t;

typedef enum {
    SD3_WIRE_SAMPLER_DEFAULT = 0,
    SD3_WIRE_SAMPLER_EULER,
    SD3_WIRE_SAMPLER_DPMPP_2M,
    SD3_WIRE_SAMPLER_COUNT
} sd3_wire_sampler_t;

typedef enum {
    SD3_WIRE_ROLE_NONE = 0,
    SD3_WIRE_ROLE_CONTROLLER,
    SD3_WIRE_ROLE_ENCODER,
    SD3_WIRE_ROLE_MMDIT,
    SD3_WIRE_ROLE_VAE,
    SD3_WIRE_ROLE_ALL,
    SD3_WIRE_ROLE_CLIENT,
    SD3_WIRE_ROLE_COUNT
} sd3_wire_role_t;

typedef enum { SD3_WIRE_LINK_ZMQ = 0, SD3_WIRE_LINK_NCCL, SD3_WIRE_LINK_COUNT } sd3_wire_link_t;

// GenerateRequest. 0 means "the model's default" for width, height, steps, cfg, shift, t5_len.
typedef struct {
    char prompt[SD3_WIRE_PROMPT_MAX];
    char negative[SD3_WIRE_PROMPT_MAX];
    uint32_t width, height, steps; // pixels; steps <= SD3_WIRE_MAX_SIGMAS - 1
    float cfg, shift;
    uint64_t seed;
    bool seed_random;
    sd3_wire_sampler_t sampler;
    float slg_scale; // skip-layer guidance (MODEL.md §7.6); 0 = off
    int n_slg_layers;
    uint32_t slg_layers[SD3_WIRE_MAX_SLG_LAYERS];
    float slg_start, slg_end;
    bool no_t5;
    uint32_t t5_len;
    float strength;       // img2img; the image travels as tensor "init_image"
    uint64_t deadline_ms; // unix ms; 0 = none
    char model[SD3_WIRE_ID_MAX];
} sd3_wire_generate_t;

// NodeLive: what a node is doing (REGISTER, HEARTBEAT; status shows it).
typedef enum {
    SD3_WIRE_NODE_UNSET = 0,
    SD3_WIRE_NODE_LOADING = 1,
    SD3_WIRE_NODE_READY = 2,
    SD3_WIRE_NODE_FAILED = 3,
    SD3_WIRE_NODE_STATE_COUNT
} sd3_wire_node_state_t;

typedef struct {
    sd3_wire_node_state_t state;
    uint32_t load_permille;
    uint64_t units_done;
    char busy_request[SD3_WIRE_ID_MAX]; // "" idle
    uint32_t busy_step, busy_unit, busy_units;
    uint64_t busy_ms, expect_ms; // the unit in progress: time so far, and expected
    double gflops;               // measured rate, 0: not yet
    uint32_t threads;
    char fault[64];              // injected fault (tests), "" none
    uint64_t load_ms;
} sd3_wire_live_t;

typedef struct {
    sd3_wire_role_t role;
    char node_id[SD3_WIRE_ID_MAX];
    char address[SD3_WIRE_ADDR_MAX];
    uint32_t layer_begin, layer_end, depth; // mmdit: blocks [layer_begin, layer_end) of depth
    char backend[32];                       // "cpu", "cuda"
    char device[128];
    uint64_t device_memory, free_memory; // bytes
    char model_id[SD3_WIRE_ID_MAX];
    uint32_t max_batch;
    size_t nccl_id_len; // 0 when the node cannot do NCCL
    uint8_t nccl_id[SD3_WIRE_NCCL_ID_MAX];
    char codec[32]; // how its tensors travel: "raw", "shuffle+zstd/bf16", ...
    sd3_wire_live_t live;
} sd3_wire_register_t;

typedef struct {
    char node_id[SD3_WIRE_ID_MAX];
    uint32_t inflight;
    uint64_t free_memory, uptime_ms;
    uint64_t bytes_sent, bytes_received; // tensor bytes so far
    uint64_t cache_hits, cache_misses;   // encoder: prompt-embedding cache
    uint64_t batches, batched_steps;     // mmdit: merged batches and the steps they held
    sd3_wire_live_t live;
} sd3_wire_heartbeat_t;

// What one stage needs to run its part of a request (proto Job).
typedef struct {
    sd3_wire_generate_t request;
    uint32_t pipeline_id, stage_index, n_stages, layer_begin, layer_end;
    char next_address[SD3_WIRE_ADDR_MAX];       // STEP goes there; from the last stage LATENT
    char controller_address[SD3_WIRE_ADDR_MAX]; // STEP_DONE and errors go there
    int n_sigmas;                               // steps + 1
    float sigmas[SD3_WIRE_MAX_SIGMAS];
    uint32_t first_step; // resume point
    uint32_t attempt;    // messages of an older attempt are dropped
} sd3_wire_job_t;

typedef struct {
    uint32_t step, steps; // steps done, of
    float sigma;
    uint64_t elapsed_ms;
    uint32_t queue_position; // > 0 while queued
    uint64_t seed;
} sd3_wire_progress_t;

typedef struct {
    sd3_wire_register_t node;
    bool alive;
    uint32_t inflight;
    uint64_t last_seen_ms;
    uint64_t registered_ms; // ms since it registered (a restarted node registers again)
    bool hung;              // busy far past its own expectation (out of its pipelines)
    sd3_wire_link_t link;
    uint64_t bytes_sent, bytes_received; // tensor bytes on the wire over its stage links
    uint64_t batches, batched_steps;     // mmdit: merged batches and the steps they held
} sd3_wire_node_info_t;

typedef struct {
    uint32_t id;
    int n_stages;
    char node_ids[SD3_WIRE_MAX_STAGES][SD3_WIRE_ID_MAX];
    uint32_t inflight, max_inflight;
} sd3_wire_pipeline_info_t;

typedef struct {
    uint32_t queue_depth, queue_capacity, inflight;
    uint64_t completed, failed, uptime_ms;
    int n_nodes;
    sd3_wire_node_info_t nodes[SD3_WIRE_MAX_NODES];
    int n_pipelines;
    sd3_wire_pipeline_info_t pipelines[SD3_WIRE_MAX_PIPELINES];
    uint64_t cache_hits, cache_misses; // prompt-embedding cache, all encoders together
    // Step latency (STEP_DONE to STEP_DONE of one request): step_buckets[i] counts steps
    // that took <= SD3_WIRE_STEP_BOUNDS[i] s and more than bound [i-1] (not cumulative).
    uint64_t step_count;
    double step_seconds_sum;
    uint64_t step_buckets[SD3_WIRE_STEP_BUCKETS];
    uint64_t failovers;     // attempts resumed after a node was lost or hung
    uint64_t step_timeouts; // pipelines without progress past the step bound
    uint64_t nodes_hung;    // nodes found busy far past their own expectation
} sd3_wire_status_t;

// One tensor of a message. The message owns `tensor`.
typedef struct {
    sd3_tensor_t *tensor;
    sd3_codec_opts_t opts; // how it travels (send); how it came (recv: codec, wire_dtype)
} sd3_msg_tensor_t;

typedef struct {
    sd3_msg_type_t type;
    char request_id[SD3_WIRE_ID_MAX];
    uint32_t step;
    uint32_t attempt;
    int status;                     // SD3_OK or an SD3_E* code (ERROR, replies)
    char message[SD3_WIRE_MSG_MAX]; // the error message that goes with status
    sd3_wire_body_t body_kind;
    union {
        sd3_wire_generate_t generate;
        sd3_wire_register_t reg;
        sd3_wire_heartbeat_t heartbeat;
        sd3_wire_job_t job;
        sd3_wire_progress_t progress;
        sd3_wire_status_t status;
    } body;
    int n_tensors;
    sd3_msg_tensor_t tensors[SD3_WIRE_MAX_TENSORS];
} sd3_msg_t;

// Caps on what a receive accepts. sd3_wire_limits_default(): envelope 1 MiB, a tensor
// SD3_CODEC_DEFAULT_CAP (1 GiB) decoded, all tensors together 4 GiB.
typedef struct {
    size_t max_envelope_bytes;
    size_t max_tensor_bytes;
    size_t max_total_bytes;
} sd3_wire_limits_t;

// Who a message came from, and as much of its envelope as parsed (for the error reply).
typedef struct {
    uint8_t routing_id[SD3_WIRE_ROUTING_ID_MAX]; // ROUTER sockets; routing_id_len 0 otherwise
    size_t routing_id_len;
    sd3_msg_type_t type; // SD3_MSG_NONE when the envelope did not parse
    char request_id[SD3_WIRE_ID_MAX];
    uint32_t step;
} sd3_wire_peer_t;

// One frame in memory. free_fn NULL: borrowed.
typedef struct {
    void *data;
    size_t len;
    void (*free_fn)(void *data, void *hint);
    void *hint;
} sd3_wire_frame_t;

typedef struct {
    int n;
    sd3_wire_frame_t frames[1 + SD3_WIRE_MAX_TENSORS];
} sd3_wire_frames_t;

const char *sd3_msg_type_name(sd3_msg_type_t type); // "STEP", "ERROR", ...
// "controller", "encoder", "mmdit", "vae", "all", "client"; NULL for any other value.
const char *sd3_wire_role_name(sd3_wire_role_t role);
void sd3_wire_limits_default(sd3_wire_limits_t *lim);

// A fresh empty message (request_id may be NULL; longer ids are cut to 63 bytes).
// NULL if out of memory.
sd3_msg_t *sd3_msg_new(sd3_msg_type_t type, const char *request_id);
void sd3_msg_destroy(sd3_msg_t **self_p); // destroys its tensors; NULL-safe
// Appends a host tensor; takes *tensor_p on success (sets it NULL). opts may be NULL (raw,
// the tensor's dtype). The tensor's name (t->name) names it on the wire: unique, < 64 bytes.
// SD3_EINVAL (name, device tensor, full message).
int sd3_msg_add_tensor(sd3_msg_t *self, sd3_tensor_t **tensor_p, const sd3_codec_opts_t *opts,
                       sd3_err_t *err);
// The tensor named `name`, borrowed; NULL when absent.
sd3_tensor_t *sd3_msg_tensor(const sd3_msg_t *self, const char *name);
// Removes and returns the tensor named `name` (now yours); NULL when absent.
sd3_tensor_t *sd3_msg_take_tensor(sd3_msg_t *self, const char *name);
// What a stage checks on arrival: tensor `name` exists with this dtype and shape (-1 = any
// size). SD3_EPROTO naming the message type, the tensor and both shapes.
int sd3_msg_expect(const sd3_msg_t *self, const char *name, sd3_dtype_t dtype, int ndim,
                   const int64_t *shape, sd3_err_t *err);
// An ERROR message for request_id/step carrying cause's code and message. NULL if OOM.
sd3_msg_t *sd3_msg_new_error(const char *request_id, uint32_t step, const sd3_err_t *cause);

// In memory: a message to frames (takes *msg_p, also on failure) and back. Frames that
// carry owned tensor bytes keep the tensor alive through their free_fn.
int sd3_wire_encode(sd3_msg_t **msg_p, sd3_wire_frames_t *out, sd3_err_t *err);
void sd3_wire_frames_fini(sd3_wire_frames_t *frames); // runs the free_fn of every frame
// Validates frames (borrowed) and decodes them into a fresh message (*out). peer (may be
// NULL) gets type, request id and step once the envelope parsed. lim NULL = defaults.
int sd3_wire_decode(const sd3_wire_frame_t *frames, int n_frames, const sd3_wire_limits_t *lim,
                    sd3_wire_peer_t *peer, sd3_msg_t **out, sd3_err_t *err);

// Sends *msg_p on a socket (DEALER, PAIR, PUSH...) and takes it, also on failure.
// SD3_EIO on a socket error, SD3_ETIMEDOUT when ZMQ_SNDTIMEO passed (EAGAIN).
int sd3_wire_send(void *sock, sd3_msg_t **msg_p, sd3_err_t *err);
// Same on a ROUTER: the routing id of `peer` goes first.
int sd3_wire_send_to(void *sock, const sd3_wire_peer_t *peer, sd3_msg_t **msg_p, sd3_err_t *err);
// Receives one message (blocking as the socket's ZMQ_RCVTIMEO says; SD3_ETIMEDOUT on
// EAGAIN). Every frame of the multipart message is consumed whatever happens. peer may be
// NULL. SD3_EPROTO on a bad message (see the file comment), SD3_EIO on a socket error.
int sd3_wire_recv(void *sock, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer, sd3_msg_t **out,
                  sd3_err_t *err);
// Same on a ROUTER: frame 0 is the routing id (into peer, required); one empty delimiter
// frame after it (REQ/DEALER-with-delimiter peers) is skipped.
int sd3_wire_recv_from(void *sock, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer,
                       sd3_msg_t **out, sd3_err_t *err);
// Answers a failed message: ERROR with cause's code and message, to peer's routing id when
// it has one, naming the request id and step the envelope carried.
int sd3_wire_reply_error(void *sock, const sd3_wire_peer_t *peer, const sd3_err_t *cause,
                         sd3_err_t *err);
