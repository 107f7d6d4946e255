/*  sd3_metrics - the counters of the HTTP API and the Prometheus text of GET /metrics
 *
 *  Two sources meet here: the counters the HTTP layer keeps itself (requests by endpoint and
 *  outcome, request duration, images served, HTTP requests in flight, step latency seen in
 *  PROGRESS messages), and the controller's STATUS report (queue depth and capacity,
 *  requests in flight, completed/failed, nodes, pipelines, bytes per stage link, the
 *  embedding cache, the controller's step latency histogram). sd3_metrics_render() writes
 *  both in the Prometheus text exposition format 0.0.4 (`promtool check metrics` clean):
 *  HELP and TYPE for every family, counters ending in _total, seconds and bytes in base
 *  units, label values escaped.
 *
 *  Called by sd3_http.c (one object per server); the controller may use
 *  sd3_metrics_step_observe() to fill its histogram. Thread-safe: a mutex guards the
 *  counters; render takes a snapshot under it.  */
#pragma once
#include "sd3_err.h"
#include "sd3_wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    SD3_METRICS_EP_OPENAI = 0, // POST /v1/images/generations
    SD3_METRICS_EP_A1111,      // POST /sdapi/v1/txt2img
    SD3_METRICS_EP_METRICS,    // GET /metrics
    SD3_METRICS_EP_HEALTHZ,    // GET /healthz
    SD3_METRICS_EP_READYZ,     // GET /readyz
    SD3_METRICS_EP_OTHER,      // anything else (404, 405)
    SD3_METRICS_EP_COUNT
} sd3_metrics_endpoint_t;

typedef enum {
    SD3_METRICS_OK = 0,       // 2xx
    SD3_METRICS_BAD_REQUEST,  // 400, 404, 405, 413
    SD3_METRICS_UNAUTHORIZED, // 401
    SD3_METRICS_QUEUE_FULL,   // 429
    SD3_METRICS_TIMEOUT,      // 504
    SD3_METRICS_CANCELED,     // the client went away; the request was cancelled
    SD3_METRICS_ERROR,        // other 5xx
    SD3_METRICS_OUTCOME_COUNT
} sd3_metrics_outcome_t;

#define SD3_METRICS_REQ_BUCKETS 12 // request duration bounds (s), see sd3_metrics.c

typedef struct sd3_metrics sd3_metrics_t;

sd3_metrics_t *sd3_metrics_new(void); // NULL if out of memory
void sd3_metrics_destroy(sd3_metrics_t **self_p);

// "openai", "a1111", ... / "ok", "bad_request", ... (the label values)
const char *sd3_metrics_endpoint_name(sd3_metrics_endpoint_t ep);
const char *sd3_metrics_outcome_name(sd3_metrics_outcome_t outcome);
// The outcome an HTTP status stands for.
sd3_metrics_outcome_t sd3_metrics_outcome_of(int http_status);

// One finished HTTP request: its outcome and how long it took.
void sd3_metrics_request_done(sd3_metrics_t *self, sd3_metrics_endpoint_t ep,
                              sd3_metrics_outcome_t outcome, double seconds);
// HTTP generation requests in flight (+1 when one starts, -1 when it ends).
void sd3_metrics_inflight_add(sd3_metrics_t *self, int delta);
void sd3_metrics_images_add(sd3_metrics_t *self, uint64_t n);
// One sampling step of a request served here took `seconds` (from PROGRESS timing).
void sd3_metrics_step_seen(sd3_metrics_t *self, double seconds);

// Adds one step of `seconds` to a histogram laid out as sd3_wire_status_t's (buckets per
// SD3_WIRE_STEP_BOUNDS, not cumulative). For the controller, which fills the STATUS report.
void sd3_metrics_step_observe(uint64_t buckets[SD3_WIRE_STEP_BUCKETS], double *sum, uint64_t *count,
                              double seconds);

// The Prometheus text: this object's counters, then the controller's figures from status
// (NULL: the controller did not answer; sd3_up is 0 and its families are left out).
// Fresh string (free it), *len_out = strlen; NULL if out of memory.
char *sd3_metrics_render(sd3_metrics_t *self, const sd3_wire_status_t *status, size_t *len_out);
