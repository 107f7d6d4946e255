/*  sd3_client - the client side of the controller's protocol (GENERATE, CANCEL, STATUS)
 *
 *  A client connects one DEALER to the controller's client endpoint (`sd3d --role
 *  controller --listen ADDR`) and talks in sd3_msg_t (sd3_wire.h):
 *
 *    client -> controller   GENERATE {request id chosen by the client, GenerateRequest
 *                           (+ tensor "init_image" U8 [H, W, 3] for img2img)}
 *                           CANCEL {request id}   STATUS {}   HEARTBEAT {keep-alive}
 *    controller -> client   ACK {request id}: accepted (queued or started)
 *                           PROGRESS {request id, step of steps, queue position}
 *                           RESULT {request id, "png" U8 [n], GenerateRequest echo with the
 *                           seed used}
 *                           ERROR {request id, status, message}: refused or failed; with
 *                           SD3_EFULL (RESOURCE_EXHAUSTED) when the queue is full
 *                           STATUS {StatusReport}: the reply to STATUS
 *
 *  Every request ends with exactly one RESULT or ERROR, and a client object hands one
 *  answer per GENERATE to its caller: a request re-attached with its id (after a controller
 *  restart) can be answered twice on the wire (a RESULT in flight crosses the re-attach,
 *  which the journal answers again), so the client remembers the last SD3_CLIENT_ANSWERED
 *  ids it delivered a RESULT or ERROR for and drops a later answer until the caller submits
 *  that id again (a retry, or asking a finished request for its image). Keep-alive: while a client has
 *  requests in flight it must send something (sd3_client_recv does it by itself, every
 *  keepalive_ms) or the controller takes it for gone after its client timeout and cancels
 *  its requests. Request ids are unique per controller among live requests (a duplicate is
 *  refused with SD3_EINVAL); 1..63 bytes.
 *
 *  Used by `sd3ctl generate --controller`, `sd3ctl status`, the cluster tests and the HTTP
 *  API (one client per thread: ZeroMQ sockets are single-thread; a client is cheap, one
 *  DEALER, and several may share one ZeroMQ context).  */
#pragma once
#include "sd3_err.h"
#include "sd3_wire.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct sd3_client sd3_client_t;

#define SD3_CLIENT_ANSWERED 1024 // request ids remembered as answered (see above)

typedef struct {
    void *zmq_ctx;        // shared ZeroMQ context; NULL: the client makes (and ends) its own
    const char *identity; // routing id the controller sees; NULL: "client-<pid>-<random>"
    int keepalive_ms;     // 0: 1000
    // CurveZMQ (sd3_curve.h): the client's secret key file and the server-pub file; both
    // NULL: plain. With them a tcp endpoint is connected as a CURVE client (the client
    // loads its own sd3_curve, without an allow list, so it may share any context).
    const char *curve_secret, *curve_server_pub;
} sd3_client_opts_t;

// Connects to endpoint ("tcp://127.0.0.1:7710"). ZeroMQ connects lazily: a controller that
// is not there shows up as a timeout of the first receive. opts may be NULL.
sd3_client_t *sd3_client_new(const char *endpoint, const sd3_client_opts_t *opts, sd3_err_t *err);
void sd3_client_destroy(sd3_client_t **self_p); // NULL-safe

// The routing id this client uses (borrowed).
const char *sd3_client_identity(const sd3_client_t *self);

// Sends GENERATE for request_id. init_image_p: NULL, or a U8 [H, W, 3] host tensor for
// img2img (taken: *init_image_p becomes NULL, also on failure). SD3_EINVAL (id, tensor),
// SD3_EIO / SD3_ETIMEDOUT (socket).
int sd3_client_submit(sd3_client_t *self, const char *request_id, const sd3_wire_generate_t *req,
                      sd3_tensor_t **init_image_p, sd3_err_t *err);
// Asks the controller to cancel request_id: it answers the request with ERROR
// SD3_ECANCELED (if it was still live) and stops its work within one step.
int sd3_client_cancel(sd3_client_t *self, const char *request_id, sd3_err_t *err);
// Sends one keep-alive now (sd3_client_recv also sends them by itself).
int sd3_client_keepalive(sd3_client_t *self, sd3_err_t *err);

// Waits up to timeout_ms (-1: forever) for the next message from the controller (*out is
// yours: sd3_msg_destroy). Sends keep-alives while it waits. SD3_ETIMEDOUT when none came;
// SD3_EPROTO for a malformed one (skipped).
int sd3_client_recv(sd3_client_t *self, int timeout_ms, sd3_msg_t **out, sd3_err_t *err);

// STATUS round trip: the controller's report into *out. Messages about requests that arrive
// meanwhile are kept for the next sd3_client_recv. SD3_ETIMEDOUT after timeout_ms.
int sd3_client_status(sd3_client_t *self, int timeout_ms, sd3_wire_status_t *out, sd3_err_t *err);

// Called by sd3_client_generate on every PROGRESS (and once on ACK with step 0).
typedef void (*sd3_client_progress_fn)(void *user, const sd3_wire_progress_t *progress);

// The whole exchange for one request: submit, then wait for its RESULT or ERROR, calling
// progress (may be NULL) on the way. On success *result_p is the RESULT message (its "png"
// tensor: sd3_msg_tensor(*result_p, "png")). On ERROR the code and message of the
// controller are returned in err. timeout_ms bounds the silence between two messages
// (-1: none); when it passes, the request is cancelled and SD3_ETIMEDOUT returned.
int sd3_client_generate(sd3_client_t *self, const char *request_id, const sd3_wire_generate_t *req,
                        sd3_tensor_t **init_image_p, sd3_client_progress_fn progress, void *user,
                        int timeout_ms, sd3_msg_t **result_p, sd3_err_t *err);
