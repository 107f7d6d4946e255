/*  sd3_controller - the cluster's controller: queue, pipelines, routing, step checkpoints
 *
 *  Binds two ROUTERs: one for clients (sd3_client: GENERATE, CANCEL, STATUS, keep-alive)
 *  and one for stages (REGISTER, HEARTBEAT and the replies of encoder, mmdit and vae
 *  nodes). One request (SYSTEM.md §2):
 *    GENERATE -> defaults of the model, checks -> bounded queue (full: ERROR SD3_EFULL at
 *    once) -> ACK -> a pipeline slot frees (least-loaded pipeline first, in-flight limit)
 *    -> ENCODE to the least-loaded encoder -> ENCODED (cond; uncond) -> [img2img:
 *    VAE_ENCODE with the seed+1 noise -> VAE_ENCODED] -> noise from the seed, sigmas, start
 *    latent -> JOB to every range (the later ones first; they ACK, then the first starts)
 *    -> per step STEP_DONE {latent}: PROGRESS to the client, the latent kept as the
 *    checkpoint -> after the last step DECODE to the least-loaded vae -> DECODED {png} ->
 *    RESULT to the client.
 *  Cancel (CANCEL, a client that stops sending keep-alives, a passed deadline, a stage that
 *  failed) answers ERROR and sends CANCEL to the stages of the request's pipeline, which
 *  drop its later steps.
 *  Failure: every STEP_DONE carries the checkpoint (latent, and DPM++ 2M's previous
 *  denoised). A node that misses heartbeats (node_timeout_ms) or re-registers is lost: the
 *  requests of its pipelines resume as attempt + 1 from their newest checkpoint on another
 *  pipeline (or the re-formed one), its encoder/vae tasks go to another pool member (or
 *  wait for one); late messages of older attempts are dropped, so a request is answered
 *  once and its image is the undisturbed one bit for bit. With journal_path, accepted
 *  requests, checkpoints and results go to sd3_journal; a restarted controller resumes
 *  every unfinished request, and a GENERATE for a known id re-attaches its sender (live
 *  request) or answers it from the journal (ended request). Bad messages are answered with ERROR (sd3_link); the
 *  controller keeps serving.
 *  Thread: one controller object runs in one thread (sd3_controller_run).  */
#pragma once
#include "sd3_codec.h"
#include "sd3_err.h"

#include <signal.h>
#include <stdint.h>

typedef struct {
    const char *listen;       // client endpoint, e.g. "tcp://127.0.0.1:7710" (or "...:*")
    const char *stage_listen; // stage endpoint, e.g. "tcp://127.0.0.1:7711"
    const char *model_path;   // the checkpoint the nodes serve (for its configuration only)
    int queue_capacity;       // requests waiting for a pipeline; 0: 64
    int max_inflight;         // per pipeline; 0: its stage count + 1
    int node_timeout_ms;      // heartbeats missed this long: dead; 0: 5000
    int client_timeout_ms;    // a client silent this long is gone; 0: 10000
    int deadline_ms;          // default per-request time limit; 0: none
    const char *addr_file;    // written once bound: "client=ADDR\nstages=ADDR\n"; NULL: none
    sd3_codec_opts_t codec;   // how the controller's tensors travel (raw f32 by default)
    const char *journal_path; // request journal (sd3_journal); NULL: none
    void *zmq_ctx;            // shared context; NULL: own
    struct sd3_curve *curve;  // CurveZMQ on both tcp ROUTERs (sd3_curve.h); NULL: plain.
                              // Borrowed; made in zmq_ctx, outlives the controller
    const char *local_listen; // a second client endpoint on the same ROUTER (e.g.
                              // "inproc://sd3d-clients" for the HTTP front); NULL: none
    int step_timeout_ms;      // a running request without STEP_DONE this long resumes on
                              // another pipeline; 0: max(10 s, 20 x the median step); -1: off
} sd3_controller_opts_t;

typedef struct sd3_controller sd3_controller_t;

// Opens the model's configuration and binds both endpoints. SD3_EINVAL, SD3_EFORMAT, SD3_EIO.
sd3_controller_t *sd3_controller_new(const sd3_controller_opts_t *opts, sd3_err_t *err);
void sd3_controller_destroy(sd3_controller_t **self_p);
const char *sd3_controller_client_endpoint(const sd3_controller_t *self); // borrowed
const char *sd3_controller_stage_endpoint(const sd3_controller_t *self);  // borrowed
// Serves until *stop becomes non-zero; then sends SHUTDOWN to no one (nodes are separate
// processes) and returns 0, or SD3_EIO when a socket fails for good.
int sd3_controller_run(sd3_controller_t *self, volatile sig_atomic_t *stop, sd3_err_t *err);

// The controller's own time per step: seconds spent handling STEP_DONE messages (receive,
// checkpoint, PROGRESS) and how many there were. Read after sd3_controller_run returned.
void sd3_controller_overhead(const sd3_controller_t *self, uint64_t *steps, double *seconds);
