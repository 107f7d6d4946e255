/*  sd3_http - the controller's HTTP API (libmicrohttpd)
 *
 *  Endpoints (SYSTEM.md §7):
 *    POST /v1/images/generations   OpenAI-style; {"created", "data": [{"b64_json", ...}]}
 *    POST /sdapi/v1/txt2img        AUTOMATIC1111-style; {"images", "parameters", "info"}
 *    GET  /metrics                 Prometheus text 0.0.4 (sd3_metrics)
 *    GET  /healthz                 200 "ok" when the controller answers STATUS, else 503
 *  Bodies and replies are sd3_http_json's. Errors: 400 (malformed JSON, wrong types or
 *  ranges), 401 (token set, missing or wrong "Authorization: Bearer"), 404, 405 (with
 *  Allow), 413 (body past max_body), 429 + Retry-After (controller queue full, SD3_EFULL),
 *  504 (deadline), 502 (controller unreachable or broken answer), 500 (other failures), each
 *  with the OpenAI error object naming the problem.
 *
 *  The server talks to the controller only as a client (sd3_client over the controller's
 *  client endpoint), so it runs inside the controller process or beside it alike. One
 *  thread per connection (MHD); each request makes its own sd3_client (ZeroMQ sockets are
 *  single-thread) on one shared ZeroMQ context. A request of n images submits n GENERATEs
 *  with seeds seed .. seed+n-1 at once and waits for all. A client that disconnects while
 *  its images are made gets them cancelled (the connection's socket is watched while
 *  waiting). /healthz needs no token; everything else does when one is set.
 *
 *  Thread: start and stop from one thread; the server runs on MHD's threads.  */
#pragma once
#include "sd3_err.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sd3_http sd3_http_t;

typedef struct {
    const char *bind;         // "127.0.0.1:8080", "0.0.0.0:8080", ":8080" (all), "[::1]:8080";
                              // port 0 = any free port (sd3_http_port tells which)
    const char *controller;   // the controller's client endpoint ("tcp://127.0.0.1:7710")
    size_t max_body;          // request body cap, bytes; 0: 1 MiB
    const char *token;        // bearer token; NULL: $SD3_HTTP_TOKEN if set; "": no authentication
    const char *model;        // model name used when a request names none; NULL: ""
    int timeout_ms;           // per-request limit (sent as the deadline; 504 past it); 0: the
                              // controller's default deadline, and 504 after 600 s here
    int ack_timeout_ms;       // a controller that does not ACK within this is 502; 0: 10 s
    int status_timeout_ms;    // STATUS round trip of /healthz and /metrics; 0: 2 s
    unsigned max_connections; // 0: 64
    void *zmq_ctx;            // shared ZeroMQ context; NULL: the server makes its own
} sd3_http_opts_t;

// Binds and starts serving. SD3_EINVAL (bind address, options), SD3_EIO (bind failed, e.g.
// the port is taken), SD3_ENOMEM.
int sd3_http_start(const sd3_http_opts_t *opts, sd3_http_t **out, sd3_err_t *err);
// Stops accepting, waits for the connection threads, frees everything; NULL-safe.
void sd3_http_stop(sd3_http_t **self_p);
// The TCP port the server listens on.
uint16_t sd3_http_port(const sd3_http_t *self);

// Splits "HOST:PORT" / ":PORT" / "[V6]:PORT" / "PORT" into host (cap bytes; "" = all
// addresses) and port. SD3_EINVAL naming what is wrong.
int sd3_http_parse_bind(const char *text, char *host, size_t cap, uint16_t *port, sd3_err_t *err);
