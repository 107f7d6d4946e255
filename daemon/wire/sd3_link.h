/*  sd3_link - one ZeroMQ endpoint of a node, with the wire's rules built in
 *
 *  A serve link binds a ROUTER (the controller's client and stage sockets, every stage's data
 *  socket, SYSTEM.md §3); a connect link connects a DEALER to one peer (a stage to the next,
 *  a node to the controller). On top of sd3_wire it adds: socket options chosen once (small
 *  high-water mark, since one message can be 76 MiB; send timeout; ROUTER_MANDATORY so a send
 *  to a peer that is gone fails instead of vanishing), receive with a timeout, and the
 *  "answer and keep serving" rule: a malformed message is answered with ERROR inside
 *  sd3_link_recv, logged at warn, counted, and reported as SD3_EPROTO so the loop continues.
 *  The transport is ZeroMQ; an NCCL data path (SYSTEM.md §3) is not written yet and would sit
 *  behind the same calls. One thread per link (ZeroMQ's rule).  */
#pragma once
#include "sd3_err.h"
#include "sd3_wire.h"

#include <stdint.h>

typedef struct sd3_link sd3_link_t;

typedef struct {
    int send_timeout_ms;      // 0 = default 5000; -1 = block
    int hwm;                  // messages queued per peer; 0 = default 8
    const char *identity;     // connect links: the routing id the ROUTER sees (node id); NULL =
                              // ZeroMQ's random one
    sd3_wire_limits_t limits; // all zero = sd3_wire_limits_default()
    struct sd3_curve *curve;  // NULL = plain; else CurveZMQ on tcp endpoints (sd3_curve.h:
                              // bind as server, connect as client); borrowed, outlives the link
} sd3_link_opts_t;

// Binds a ROUTER at endpoint ("tcp://*:5601", "tcp://127.0.0.1:*", "inproc://x").
// opts may be NULL. SD3_EIO naming the endpoint when the bind fails; a tcp address in use
// is retried for up to 5 s first (a restart may find its old process still dying).
sd3_link_t *sd3_link_new_serve(void *zmq_ctx, const char *endpoint, const sd3_link_opts_t *opts,
                               sd3_err_t *err);
// Connects a DEALER to endpoint (ZeroMQ reconnects by itself when the peer restarts).
sd3_link_t *sd3_link_new_connect(void *zmq_ctx, const char *endpoint, const sd3_link_opts_t *opts,
                                 sd3_err_t *err);
void sd3_link_destroy(sd3_link_t **self_p); // closes the socket; NULL-safe

// The endpoint as bound (wildcard port resolved) or connected. Borrowed.
const char *sd3_link_endpoint(const sd3_link_t *self);
// The ZeroMQ socket, for zmq_poll over several links. Borrowed.
void *sd3_link_socket(const sd3_link_t *self);
// Malformed messages refused (and answered) so far.
uint64_t sd3_link_rejected(const sd3_link_t *self);

// Sends and takes *msg_p. A serve link needs `to` (a peer from sd3_link_recv); a connect
// link ignores it. SD3_EIO when the peer is unknown or gone, SD3_ETIMEDOUT when its queue
// stays full past the send timeout.
int sd3_link_send(sd3_link_t *self, const sd3_wire_peer_t *to, sd3_msg_t **msg_p, sd3_err_t *err);
// Sends without waiting, for a serve link that must not block on one slow peer (the
// controller's client ROUTER keeps what does not go in a queue per client). Takes *msg_p
// when it went out (0) or failed for good (SD3_EINVAL, SD3_ENOMEM, SD3_EIO); leaves it with
// you, unsent and unchanged, when the peer's queue is at the high-water mark (SD3_EFULL)
// or the peer is not connected now (SD3_ENOTFOUND). A connect link sends as sd3_link_send.
int sd3_link_try_send(sd3_link_t *self, const sd3_wire_peer_t *to, sd3_msg_t **msg_p,
                      sd3_err_t *err);
// Waits up to timeout_ms (-1 forever, 0 = only what is there) for one message.
// SD3_ETIMEDOUT when none came; SD3_EPROTO when one came malformed (already answered);
// SD3_EIO on a socket error. `from` may be NULL on a connect link.
int sd3_link_recv(sd3_link_t *self, int timeout_ms, sd3_wire_peer_t *from, sd3_msg_t **out,
                  sd3_err_t *err);
