/*  sd3_metrics - the counters of the HTTP API and the Prometheus text (see sd3_metrics.h)
 *
 *  The text is built in a growing buffer (s_buf); a failed allocation poisons the buffer
 *  and render returns NULL. Metric families written here (all prefixed sd3_):
 *    up, http_requests_total{endpoint,outcome}, http_request_duration_seconds{endpoint},
 *    http_inflight_requests, http_images_total, http_step_duration_seconds,
 *    queue_depth, queue_capacity, inflight_requests, requests_total{outcome},
 *    uptime_seconds, node_up{node,role}, node_inflight_requests{node},
 *    link_bytes_total{node,link,direction}, pipeline_inflight_requests{pipeline},
 *    pipeline_max_inflight_requests{pipeline}, embedding_cache_hits_total,
 *    embedding_cache_misses_total, step_duration_seconds.  */
#include "sd3_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Request duration buckets (s): a health check takes ms, an image seconds to minutes.
static const double s_req_bounds[SD3_METRICS_REQ_BUCKETS] = {0.005, 0.025, 0.1, 0.5, 1,   2.5,
                                                             5,     10,    30,  60,  120, 300};
static const double s_step_bounds[SD3_WIRE_STEP_BUCKETS] = SD3_WIRE_STEP_BOUNDS;

typedef struct {
    uint64_t buckets[SD3_METRICS_REQ_BUCKETS]; // not cumulative
    uint64_t count;
    double sum;
} s_req_hist_t;

struct sd3_metrics {
    pthread_mutex_t lock;
    uint64_t requests[SD3_METRICS_EP_COUNT][SD3_METRICS_OUTCOME_COUNT];
    s_req_hist_t duration[SD3_METRICS_EP_COUNT];
    int64_t inflight;
    uint64_t images;
    uint64_t step_buckets[SD3_WIRE_STEP_BUCKETS];
    uint64_t step_count;
    double step_sum;
};

sd3_metrics_t *
sd3_metrics_new(void)
{
    sd3_metrics_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    if (pthread_mutex_init(&self->lock, NULL) != 0) {
        free(self);
        return NULL;
    }
    return self;
}

void
sd3_metrics_destroy(sd3_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pthread_mutex_destroy(&(*self_p)->lock);
    free(*self_p);
    *self_p = NULL;
}

const char *
sd3_metrics_endpoint_name(sd3_metrics_endpoint_t ep)
{
    static const char *const names[SD3_METRICS_EP_COUNT] = {"openai", "a1111", "metrics", "healthz", "readyz",
                                                            "other"};
    return (unsigned)ep < SD3_METRICS_EP_COUNT ? names[ep] : "other";
}

const char *
sd3_metrics_outcome_name(sd3_metrics_outcome_t outcome)
{
    static const char *const names[SD3_METRICS_OUTCOME_COUNT] = {
        "ok", "bad_request", "unauthorized", "queue_full", "timeout", "canceled", "error"};
    return (unsigned)outcome < SD3_METRICS_OUTCOME_COUNT ? names[outcome] : "error";
}

sd3_metrics_outcome_t
sd3_metrics_outcome_of(int http_status)
{
    if (http_status >= 200 && http_status < 300)
        return SD3_METRICS_OK;
    if (http_status == 401)
        return SD3_METRICS_UNAUTHORIZED;
    if (http_status == 429)
        return SD3_METRICS_QUEUE_FULL;
    if (http_status == 504)
        return SD3_METRICS_TIMEOUT;
    if (http_status == 499)
        return SD3_METRICS_CANCELED; // nginx's "client closed request"
    if (http_status >= 400 && http_status < 500)
        return SD3_METRICS_BAD_REQUEST;
    return SD3_METRICS_ERROR;
}

void
sd3_metrics_request_done(sd3_metrics_t *self, sd3_metrics_endpoint_t ep,
                         sd3_metrics_outcome_t outcome, double seconds)
{
    if ((unsigned)ep >= SD3_METRICS_EP_COUNT)
        ep = SD3_METRICS_EP_OTHER;
    if ((unsigned)outcome >= SD3_METRICS_OUTCOME_COUNT)
        outcome = SD3_METRICS_ERROR;
    if (!isfinite(seconds) || seconds < 0)
        seconds = 0;
    pthread_mutex_lock(&self->lock);
    self->requests[ep][outcome]++;
    s_req_hist_t *h = &self->duration[ep];
    for (int i = 0; i < SD3_METRICS_REQ_BUCKETS; i++) {
        if (seconds <= s_req_bounds[i]) {
            h->buckets[i]++;
            break;
        }
    }
    h->count++;
    h->sum += seconds;
    pthread_mutex_unlock(&self->lock);
}

void
sd3_metrics_inflight_add(sd3_metrics_t *self, int delta)
{
    pthread_mutex_lock(&self->lock);
    self->inflight += delta;
    pthread_mutex_unlock(&self->lock);
}

void
sd3_metrics_images_add(sd3_metrics_t *self, uint64_t n)
{
    pthread_mutex_lock(&self->lock);
    self->images += n;
    pthread_mutex_unlock(&self->lock);
}

void
sd3_metrics_step_observe(uint64_t buckets[SD3_WIRE_STEP_BUCKETS], double *sum, uint64_t *count,
                         double seconds)
{
    if (!isfinite(seconds) || seconds < 0)
        seconds = 0;
    for (int i = 0; i < SD3_WIRE_STEP_BUCKETS; i++) {
        if (seconds <= s_step_bounds[i]) {
            buckets[i]++;
            break;
        }
    }
    *sum += seconds;
    (*count)++;
}

void
sd3_metrics_step_seen(sd3_metrics_t *self, double seconds)
{
    pthread_mutex_lock(&self->lock);
    sd3_metrics_step_observe(self->step_buckets, &self->step_sum, &self->step_count, seconds);
    pthread_mutex_unlock(&self->lock);
}

// ---- the text ---------------------------------------------------------------------------

typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} s_buf_t;

static void s_printf(s_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
s_printf(s_buf_t *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *data = realloc(b->data, cap);
        if (!data) {
            b->failed = true;
            return;
        }
        b->data = data;
        b->cap = cap;
    }
}

// A label value escaped as the format wants (\\, \", \n); cut to fit out.
static const char *
s_label(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 3 < cap; p++) {
        char c = *p;
        if (c == '\\' || c == '"') {
            out[n++] = '\\';
            out[n++] = c;
        } else if (c == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = c;
        }
    }
    out[n] = 0;
    return out;
}

static void
s_family(s_buf_t *b, const char *name, const char *type, const char *help)
{
    s_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

// Prometheus floats: integers plainly, others with enough digits to round-trip.
static void
s_value(s_buf_t *b, double v)
{
    if (isnan(v))
        s_printf(b, "NaN\n");
    else if (isinf(v))
        s_printf(b, v > 0 ? "+Inf\n" : "-Inf\n");
    else {
        char t[40];
        snprintf(t, sizeof t, "%.15g", v); // shortest that reads back the same, as a rule
        if (strtod(t, NULL) != v)
            snprintf(t, sizeof t, "%.17g", v);
        s_printf(b, "%s\n", t);
    }
}

// Histogram series from non-cumulative buckets; labels is "" or `key="v",`.
static void
s_histogram(s_buf_t *b, const char *name, const char *labels, const double *bounds,
            const uint64_t *buckets, int n, uint64_t count, double sum)
{
    uint64_t cum = 0;
    for (int i = 0; i < n; i++) {
        cum += buckets[i];
        s_printf(b, "%s_bucket{%sle=\"%g\"} %llu\n", name, labels, bounds[i],
                 (unsigned long long)(cum < count ? cum : count));
    }
    s_printf(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, labels, (unsigned long long)count);
    if (labels[0]) {
        char trimmed[256];
        snprintf(trimmed, sizeof trimmed, "%s", labels);
        trimmed[strlen(trimmed) - 1] = 0; // the trailing ','
        s_printf(b, "%s_sum{%s} ", name, trimmed);
        s_value(b, sum);
        s_printf(b, "%s_count{%s} %llu\n", name, trimmed, (unsigned long long)count);
    } else {
        s_printf(b, "%s_sum ", name);
        s_value(b, sum);
        s_printf(b, "%s_count %llu\n", name, (unsigned long long)count);
    }
}


static void
s_render_status(s_buf_t *b, const sd3_wire_status_t *st)
{
    char l1[256], l2[64];
    s_family(b, "sd3_queue_depth", "gauge", "Requests waiting in the controller's queue.");
    s_printf(b, "sd3_queue_depth %u\n", st->queue_depth);
    s_family(b, "sd3_queue_capacity", "gauge", "Capacity of the controller's queue.");
    s_printf(b, "sd3_queue_capacity %u\n", st->queue_capacity);
    s_family(b, "sd3_inflight_requests", "gauge", "Requests running on the pipelines.");
    s_printf(b, "sd3_inflight_requests %u\n", st->inflight);
    s_family(b, "sd3_requests_total", "counter",
             "Requests the controller finished, by outcome (all clients).");
    s_printf(b, "sd3_requests_total{outcome=\"completed\"} %llu\n",
             (unsigned long long)st->completed);
    s_printf(b, "sd3_requests_total{outcome=\"failed\"} %llu\n", (unsigned long long)st->failed);
    s_family(b, "sd3_uptime_seconds", "gauge", "Seconds since the controller started.");
    s_printf(b, "sd3_uptime_seconds ");
    s_value(b, (double)st->uptime_ms / 1000.0);

    int nn = st->n_nodes < 0                    ? 0
             : st->n_nodes > SD3_WIRE_MAX_NODES ? SD3_WIRE_MAX_NODES
                                                : st->n_nodes;
    s_family(b, "sd3_node_up", "gauge", "1 while a node sends heartbeats, 0 once declared dead.");
    for (int i = 0; i < nn; i++) {
        const char *role = sd3_wire_role_name(st->nodes[i].node.role);
        s_printf(b, "sd3_node_up{node=\"%s\",role=\"%s\"} %d\n",
                 s_label(st->nodes[i].node.node_id, l1, sizeof l1), role ? role : "none",
                 st->nodes[i].alive ? 1 : 0);
    }
    s_family(b, "sd3_node_inflight_requests", "gauge", "Requests a node is working on.");
    for (int i = 0; i < nn; i++)
        s_printf(b, "sd3_node_inflight_requests{node=\"%s\"} %u\n",
                 s_label(st->nodes[i].node.node_id, l1, sizeof l1), st->nodes[i].inflight);
    s_family(b, "sd3_link_bytes_total", "counter",
             "Tensor bytes on the wire over a node's stage links, by direction.");
    for (int i = 0; i < nn; i++) {
        const sd3_wire_node_info_t *ni = &st->nodes[i];
        const char *link = ni->link == SD3_WIRE_LINK_NCCL ? "nccl" : "zmq";
        s_label(ni->node.node_id, l1, sizeof l1);
        s_printf(b, "sd3_link_bytes_total{node=\"%s\",link=\"%s\",direction=\"sent\"} %llu\n", l1,
                 link, (unsigned long long)ni->bytes_sent);
        s_printf(b, "sd3_link_bytes_total{node=\"%s\",link=\"%s\",direction=\"received\"} %llu\n",
                 l1, link, (unsigned long long)ni->bytes_received);
    }
    int np = st->n_pipelines < 0                        ? 0
             : st->n_pipelines > SD3_WIRE_MAX_PIPELINES ? SD3_WIRE_MAX_PIPELINES
                                                        : st->n_pipelines;
    s_family(b, "sd3_pipeline_inflight_requests", "gauge", "Requests in flight on a pipeline.");
    for (int i = 0; i < np; i++) {
        snprintf(l2, sizeof l2, "%u", st->pipelines[i].id);
        s_printf(b, "sd3_pipeline_inflight_requests{pipeline=\"%s\"} %u\n", l2,
                 st->pipelines[i].inflight);
    }
    s_family(b, "sd3_pipeline_max_inflight_requests", "gauge", "In-flight limit of a pipeline.");
    for (int i = 0; i < np; i++) {
        snprintf(l2, sizeof l2, "%u", st->pipelines[i].id);
        s_printf(b, "sd3_pipeline_max_inflight_requests{pipeline=\"%s\"} %u\n", l2,
                 st->pipelines[i].max_inflight);
    }
    s_family(b, "sd3_embedding_cache_hits_total", "counter",
             "Prompt encodings answered from the embedding cache.");
    s_printf(b, "sd3_embedding_cache_hits_total %llu\n", (unsigned long long)st->cache_hits);
    s_family(b, "sd3_embedding_cache_misses_total", "counter",
             "Prompt encodings the encoders had to compute.");
    s_printf(b, "sd3_embedding_cache_misses_total %llu\n", (unsigned long long)st->cache_misses);
    const struct {
        const char *name, *help;
        uint64_t value;
    } failures[] = {
        {"sd3_failovers_total", "Request attempts resumed elsewhere after a node was lost or hung.",
         st->failovers},
        {"sd3_step_timeouts_total",
         "Requests whose pipeline made no progress within the step bound.", st->step_timeouts},
        {"sd3_nodes_hung_total", "Times a node was found busy far past its own measured expectation.",
         st->nodes_hung},
    };
    for (size_t i = 0; i < sizeof failures / sizeof failures[0]; i++) {
        s_family(b, failures[i].name, "counter", failures[i].help);
        s_printf(b, "%s %llu\n", failures[i].name, (unsigned long long)failures[i].value);
    }
    s_family(b, "sd3_node_ready", "gauge",
             "1 once a node has paged in its weights and serves; 0 while loading.");
    for (int i = 0; i < nn; i++)
        s_printf(b, "sd3_node_ready{node=\"%s\"} %d\n",
                 s_label(st->nodes[i].node.node_id, l1, sizeof l1),
                 st->nodes[i].node.live.state == SD3_WIRE_NODE_READY ||
                         st->nodes[i].node.live.state == SD3_WIRE_NODE_UNSET);
    s_family(b, "sd3_node_load_ratio", "gauge", "Share of a node's weights paged in (0..1).");
    for (int i = 0; i < nn; i++)
        s_printf(b, "sd3_node_load_ratio{node=\"%s\"} %.3f\n",
                 s_label(st->nodes[i].node.node_id, l1, sizeof l1),
                 st->nodes[i].node.live.state == SD3_WIRE_NODE_LOADING
                     ? st->nodes[i].node.live.load_permille / 1000.0
                     : 1.0);
    s_family(b, "sd3_step_duration_seconds", "histogram",
             "Time of one sampling step as the controller sees it (all requests).");
    s_histogram(b, "sd3_step_duration_seconds", "", s_step_bounds, st->step_buckets,
                SD3_WIRE_STEP_BUCKETS, st->step_count, st->step_seconds_sum);
}

char *
sd3_metrics_render(sd3_metrics_t *self, const sd3_wire_status_t *status, size_t *len_out)
{
    sd3_metrics_t snap;
    pthread_mutex_lock(&self->lock);
    memcpy(&snap, self, sizeof snap); // the counters; the copied mutex is never used
    pthread_mutex_unlock(&self->lock);

    s_buf_t b = {malloc(8192), 0, 8192, false};
    if (!b.data)
        return NULL;
    s_family(&b, "sd3_up", "gauge", "1 when the controller answered STATUS for this scrape.");
    s_printf(&b, "sd3_up %d\n", status ? 1 : 0);

    s_family(&b, "sd3_http_requests_total", "counter",
             "HTTP requests served, by endpoint and outcome.");
    for (int e = 0; e < SD3_METRICS_EP_COUNT; e++)
        for (int o = 0; o < SD3_METRICS_OUTCOME_COUNT; o++)
            s_printf(&b, "sd3_http_requests_total{endpoint=\"%s\",outcome=\"%s\"} %llu\n",
                     sd3_metrics_endpoint_name((sd3_metrics_endpoint_t)e),
                     sd3_metrics_outcome_name((sd3_metrics_outcome_t)o),
                     (unsigned long long)snap.requests[e][o]);
    s_family(&b, "sd3_http_request_duration_seconds", "histogram",
             "Time from a request's arrival to its answer, by endpoint.");
    for (int e = 0; e < SD3_METRICS_EP_COUNT; e++) {
        char labels[64];
        snprintf(labels, sizeof labels, "endpoint=\"%s\",",
                 sd3_metrics_endpoint_name((sd3_metrics_endpoint_t)e));
        s_histogram(&b, "sd3_http_request_duration_seconds", labels, s_req_bounds,
                    snap.duration[e].buckets, SD3_METRICS_REQ_BUCKETS, snap.duration[e].count,
                    snap.duration[e].sum);
    }
    s_family(&b, "sd3_http_inflight_requests", "gauge",
             "Image requests the HTTP API is waiting on.");
    s_printf(&b, "sd3_http_inflight_requests %lld\n", (long long)snap.inflight);
    s_family(&b, "sd3_http_images_total", "counter", "Images returned over HTTP.");
    s_printf(&b, "sd3_http_images_total %llu\n", (unsigned long long)snap.images);
    s_family(&b, "sd3_http_step_duration_seconds", "histogram",
             "Time of one sampling step of the requests served over HTTP (from progress).");
    s_histogram(&b, "sd3_http_step_duration_seconds", "", s_step_bounds, snap.step_buckets,
                SD3_WIRE_STEP_BUCKETS, snap.step_count, snap.step_sum);
    if (status)
        s_render_status(&b, status);
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    if (len_out)
        *len_out = b.len;
    return b.data;
}
