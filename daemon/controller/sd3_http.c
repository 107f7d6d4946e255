/*  sd3_http - the controller's HTTP API (see sd3_http.h)
 *
 *  MHD calls s_access() several times per request: first with no body (route, auth and
 *  Content-Length are checked here, and early answers such as 404/405/401/413 go out at
 *  once), then with each piece of the body (appended up to max_body), then once more with
 *  none (the request is complete: run it). A generation runs inside that last call, on the
 *  connection's own thread, and watches the connection's socket while it waits for the
 *  controller, so a client that hangs up cancels its request.  */
#include "sd3_http.h"

#include "sd3_client.h"
#include "sd3_clock.h"
#include "sd3_http_json.h"
#include "sd3_log.h"
#include "sd3_metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <zmq.h>

#define S_WAIT_SLICE_MS 200 // how often a waiting request looks at its client's socket

struct sd3_http {
    struct MHD_Daemon *mhd;
    sd3_http_opts_t opts;
    char *controller, *token, *model; // owned copies of the option strings
    void *zmq_ctx;
    bool own_ctx;
    sd3_metrics_t *metrics;
    atomic_uint_fast64_t next_id;
    atomic_bool stopping; // set by sd3_http_stop: waiting requests cancel and end
    bool send_deadline;   // opts.timeout_ms was given: it goes to the controller too
    uint16_t port;
};

// Per request (MHD's con_cls).
typedef struct {
    sd3_metrics_endpoint_t ep;
    struct timespec start;
    char *body;
    size_t len, cap;
    bool too_big;
    bool answered; // a response was queued on an early call
} s_req_t;

static double
s_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static uint64_t
s_random64(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        v = (uint64_t)t.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)t.tv_sec;
    }
    return v;
}

// ---- answers ------------------------------------------------------------------------------

// Queues `body` (taken: freed by MHD) with status and content type; records the metrics.
static enum MHD_Result
s_answer(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req, int status,
         const char *content_type, char *body, size_t len, int retry_after)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, body ? body : (void *)"", body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (retry_after > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", retry_after);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
                                req->ep == SD3_METRICS_EP_OPENAI || req->ep == SD3_METRICS_EP_A1111
                                    ? "POST"
                                    : "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    req->answered = true;
    sd3_metrics_request_done(self->metrics, req->ep, sd3_metrics_outcome_of(status),
                             s_since(&req->start));
    return rc;
}

static enum MHD_Result
s_answer_error(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req, int status,
               const char *message)
{
    size_t len = 0;
    char *body = sd3_http_reply_error(req->ep == SD3_METRICS_EP_A1111, status, message, &len);
    if (status >= 500)
        sd3_log_warn("http", "status=%d msg=\"%s\"", status, message);
    else
        sd3_log_debug("http", "status=%d msg=\"%s\"", status, message);
    return s_answer(self, conn, req, status, "application/json", body, len, status == 429 ? 2 : 0);
}

// ---- the controller side ------------------------------------------------------------------

// True once the HTTP client closed its connection (or it broke).
static bool
s_client_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    if (p.revents & POLLIN) {
        char c;
        ssize_t n = recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

typedef struct {
    char id[SD3_WIRE_ID_MAX];
    bool acked, done;
    uint8_t *png;
    size_t png_size;
    char *infotext;
    sd3_wire_generate_t used;
    bool has_used;
    uint32_t last_step;
    uint64_t last_elapsed_ms;
} s_image_t;

static void
s_images_fini(s_image_t *im, int n)
{
    for (int i = 0; i < n; i++) {
        free(im[i].png);
        free(im[i].infotext);
    }
}

// A RESULT for image `im`: keep its PNG bytes, its text chunk and the request echo.
static int
s_take_result(s_image_t *im, sd3_msg_t *msg, sd3_err_t *err)
{
    const sd3_tensor_t *png = sd3_msg_tensor(msg, "png");
    if (!png || png->dtype != SD3_U8 || png->ndim != 1 || png->shape[0] < 8)
        return sd3_err_set(err, SD3_EPROTO, "request %s: RESULT without a \"png\" U8 [n] tensor",
                           im->id);
    size_t n = (size_t)png->shape[0];
    if (!(im->png = malloc(n)))
        return sd3_err_set(err, SD3_ENOMEM, "request %s: %zu bytes of PNG", im->id, n);
    memcpy(im->png, png->data, n);
    im->png_size = n;
    im->infotext = sd3_http_png_text(im->png, n, "parameters");
    if (msg->body_kind == SD3_WIRE_BODY_GENERATE) {
        im->used = msg->body.generate;
        im->has_used = true;
    }
    im->done = true;
    return 0;
}

// PROGRESS timing: elapsed_ms grows by the time of the steps done since the last one.
static void
s_progress(sd3_http_t *self, s_image_t *im, const sd3_wire_progress_t *p)
{
    if (p->step > im->last_step && p->elapsed_ms >= im->last_elapsed_ms && im->last_step > 0) {
        uint32_t k = p->step - im->last_step;
        double per = (double)(p->elapsed_ms - im->last_elapsed_ms) / 1000.0 / k;
        for (uint32_t i = 0; i < k && i < 1000; i++)
            sd3_metrics_step_seen(self->metrics, per);
    }
    if (p->step > im->last_step || im->last_step == 0) {
        im->last_step = p->step;
        im->last_elapsed_ms = p->elapsed_ms;
    }
}

static void
s_cancel_all(sd3_client_t *client, s_image_t *im, int n)
{
    for (int i = 0; i < n; i++)
        if (!im[i].done)
            sd3_client_cancel(client, im[i].id, NULL);
}

// Runs the job's images on the controller. 0 with every image done; else the SD3_E* code in
// err, and *gone set when the HTTP client went away.
static int
s_run_job(sd3_http_t *self, struct MHD_Connection *conn, const sd3_http_job_t *job, s_image_t *im,
          bool *gone, sd3_err_t *err)
{
    int n = job->n_images, rc = 0, left = n;
    *gone = false;
    sd3_client_opts_t co = {.zmq_ctx = self->zmq_ctx};
    sd3_client_t *client = sd3_client_new(self->controller, &co, err);
    if (!client)
        return err->code ? err->code : SD3_EIO;
    uint64_t base = atomic_fetch_add(&self->next_id, 1);
    uint64_t unix_ms = (uint64_t)sd3_unix_ms();
    int64_t t0 = sd3_now_ms(), deadline = t0 + self->opts.timeout_ms;
    for (int i = 0; i < n; i++) {
        snprintf(im[i].id, sizeof im[i].id, "http-%d-%llu-%d", (int)self->port,
                 (unsigned long long)base, i);
        sd3_wire_generate_t g = job->gen;
        g.seed = job->gen.seed + (uint64_t)i;
        // Only a limit given to us travels; else the controller's own default applies.
        g.deadline_ms = self->send_deadline ? unix_ms + (uint64_t)self->opts.timeout_ms : 0;
        if ((rc = sd3_client_submit(client, im[i].id, &g, NULL, err)) != 0) {
            s_cancel_all(client, im, i);
            goto done;
        }
    }
    sd3_log_info("http", "req=%s images=%d seed=%llu", im[0].id, n,
                 (unsigned long long)job->gen.seed);
    int64_t last_check = t0;
    while (left > 0) {
        // Every slice, whatever the controller sends meanwhile (PROGRESS can come every few
        // ms): is the client still there, is the server stopping, is the time up?
        int64_t t = sd3_now_ms();
        if (t - last_check >= S_WAIT_SLICE_MS) {
            last_check = t;
            if (atomic_load(&self->stopping)) {
                s_cancel_all(client, im, n);
                rc = sd3_err_set(err, SD3_EIO, "the HTTP server is stopping");
                goto done;
            }
            if (s_client_gone(conn)) {
                *gone = true;
                s_cancel_all(client, im, n);
                rc = sd3_err_set(err, SD3_ECANCELED, "the HTTP client went away");
                goto done;
            }
            bool acked = true;
            for (int i = 0; i < n; i++)
                acked = acked && im[i].acked;
            if (!acked && t - t0 > self->opts.ack_timeout_ms) {
                s_cancel_all(client, im, n);
                rc = sd3_err_set(err, SD3_EIO, "controller %s did not answer within %d ms",
                                 self->controller, self->opts.ack_timeout_ms);
                goto done;
            }
            if (t > deadline) {
                s_cancel_all(client, im, n);
                rc =
                    sd3_err_set(err, SD3_ETIMEDOUT, "no image within %d ms", self->opts.timeout_ms);
                goto done;
            }
        }
        sd3_msg_t *msg = NULL;
        sd3_err_t rerr = {0};
        rc = sd3_client_recv(client, S_WAIT_SLICE_MS, &msg, &rerr);
        if (rc == SD3_ETIMEDOUT || rc == SD3_EPROTO) {
            rc = 0;
            continue;
        }
        if (rc != 0) {
            sd3_err_set(err, rc, "controller %s: %s", self->controller, rerr.msg);
            goto done;
        }
        int k = 0;
        while (k < n && strcmp(msg->request_id, im[k].id) != 0)
            k++;
        if (k == n || im[k].done) {
            sd3_msg_destroy(&msg);
            continue;
        }
        switch (msg->type) {
        case SD3_MSG_ACK:
            im[k].acked = true;
            break;
        case SD3_MSG_PROGRESS:
            im[k].acked = true;
            if (msg->body_kind == SD3_WIRE_BODY_PROGRESS)
                s_progress(self, &im[k], &msg->body.progress);
            break;
        case SD3_MSG_RESULT:
            im[k].acked = true;
            if ((rc = s_take_result(&im[k], msg, err)) != 0) {
                sd3_msg_destroy(&msg);
                s_cancel_all(client, im, n);
                goto done;
            }
            left--;
            break;
        case SD3_MSG_ERROR:
            im[k].done = true;
            rc = sd3_err_set(err, msg->status ? msg->status : SD3_EINTERNAL, "%s",
                             msg->message[0] ? msg->message : "the controller failed the request");
            sd3_msg_destroy(&msg);
            s_cancel_all(client, im, n);
            goto done;
        default:
            break;
        }
        sd3_msg_destroy(&msg);
    }
    rc = 0;
done:
    sd3_client_destroy(&client);
    return rc;
}

static enum MHD_Result
s_generate(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req)
{
    sd3_err_t err = {0};
    sd3_http_job_t *job = calloc(1, sizeof *job);
    s_image_t im[SD3_HTTP_MAX_IMAGES];
    memset(im, 0, sizeof im);
    if (!job)
        return s_answer_error(self, conn, req, 500, "out of memory");
    bool a1111 = req->ep == SD3_METRICS_EP_A1111;
    int rc = a1111
                 ? sd3_http_parse_a1111(req->body, req->len, self->model, s_random64(), job, &err)
                 : sd3_http_parse_openai(req->body, req->len, self->model, s_random64(), job, &err);
    enum MHD_Result mr;
    if (rc != 0) {
        mr = s_answer_error(self, conn, req, 400, err.msg);
        goto done;
    }
    sd3_metrics_inflight_add(self->metrics, 1);
    bool gone = false;
    rc = s_run_job(self, conn, job, im, &gone, &err);
    sd3_metrics_inflight_add(self->metrics, -1);
    if (gone) {
        sd3_log_info("http", "req=%s client went away; cancelled", im[0].id);
        sd3_metrics_request_done(self->metrics, req->ep, SD3_METRICS_CANCELED,
                                 s_since(&req->start));
        req->answered = true;
        mr = MHD_NO; // MHD closes the connection
        goto done;
    }
    if (rc != 0) {
        mr = s_answer_error(self, conn, req, sd3_http_status_of(rc), err.msg);
        goto done;
    }
    sd3_http_image_t out[SD3_HTTP_MAX_IMAGES];
    for (int i = 0; i < job->n_images; i++)
        out[i] = (sd3_http_image_t){.png = im[i].png,
                                    .png_size = im[i].png_size,
                                    .seed = im[i].has_used ? im[i].used.seed
                                                           : job->gen.seed + (uint64_t)i,
                                    .infotext = im[i].infotext,
                                    .used = im[i].has_used ? &im[i].used : NULL};
    size_t len = 0;
    int64_t created = (int64_t)time(NULL);
    char *body = a1111 ? sd3_http_reply_a1111(job, out, job->n_images, created, &len)
                       : sd3_http_reply_openai(job, out, job->n_images, created, &len);
    if (!body) {
        mr = s_answer_error(self, conn, req, 500, "out of memory rendering the reply");
        goto done;
    }
    sd3_metrics_images_add(self->metrics, (uint64_t)job->n_images);
    sd3_log_info("http", "req=%s status=200 images=%d bytes=%zu s=%.2f", im[0].id, job->n_images,
                 len, s_since(&req->start));
    mr = s_answer(self, conn, req, 200, "application/json", body, len, 0);
done:
    s_images_fini(im, SD3_HTTP_MAX_IMAGES);
    free(job);
    return mr;
}

// STATUS round trip on a fresh client. 0 and *st filled, or the error in err.
static int
s_status(sd3_http_t *self, sd3_wire_status_t *st, sd3_err_t *err)
{
    sd3_client_opts_t co = {.zmq_ctx = self->zmq_ctx};
    sd3_client_t *client = sd3_client_new(self->controller, &co, err);
    if (!client)
        return err->code ? err->code : SD3_EIO;
    int rc = sd3_client_status(client, self->opts.status_timeout_ms, st, err);
    sd3_client_destroy(&client);
    return rc;
}

static enum MHD_Result
s_metrics(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req)
{
    sd3_err_t err = {0};
    sd3_wire_status_t *st = malloc(sizeof *st);
    if (!st)
        return s_answer_error(self, conn, req, 500, "out of memory");
    bool up = s_status(self, st, &err) == 0;
    size_t len = 0;
    char *body = sd3_metrics_render(self->metrics, up ? st : NULL, &len);
    free(st);
    if (!body)
        return s_answer_error(self, conn, req, 500, "out of memory rendering the metrics");
    return s_answer(self, conn, req, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, 0);
}

static enum MHD_Result
s_healthz(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req)
{
    sd3_err_t err = {0};
    sd3_wire_status_t *st = malloc(sizeof *st);
    int rc = st ? s_status(self, st, &err) : SD3_ENOMEM;
    free(st);
    char *body = NULL;
    if (rc == 0)
        body = strdup("ok\n");
    else if (asprintf(&body, "controller %s: %s\n", self->controller,
                      err.msg[0] ? err.msg : "no answer") < 0)
        body = NULL;
    return s_answer(self, conn, req, rc == 0 ? 200 : 503, "text/plain; charset=utf-8", body,
                    body ? strlen(body) : 0, 0);
}

// Readiness: 200 once the cluster can serve a request from start to end: a whole pipeline
// (its nodes ready), an encoder and a vae ready. 503 with what is missing (and loading
// progress) otherwise. /healthz stays liveness: the controller answers.
static enum MHD_Result
s_readyz(sd3_http_t *self, struct MHD_Connection *conn, s_req_t *req)
{
    sd3_err_t err = {0};
    sd3_wire_status_t *st = malloc(sizeof *st);
    int rc = st ? s_status(self, st, &err) : SD3_ENOMEM;
    char *body = NULL;
    bool ready = false;
    if (rc == 0) {
        int enc = 0, vae = 0;
        char loading[512] = "";
        size_t len = 0;
        for (int i = 0; i < st->n_nodes; i++) {
            const sd3_wire_node_info_t *n = &st->nodes[i];
            bool r = n->alive && !n->hung &&
                     (n->node.live.state == SD3_WIRE_NODE_READY ||
                      n->node.live.state == SD3_WIRE_NODE_UNSET);
            enc += r && n->node.role == SD3_WIRE_ROLE_ENCODER;
            vae += r && n->node.role == SD3_WIRE_ROLE_VAE;
            if (!r && len < sizeof loading)
                len += (size_t)snprintf(loading + len, sizeof loading - len, " %s=%s",
                                        n->node.node_id,
                                        !n->alive  ? "dead"
                                        : n->hung ? "hung"
                                                  : "loading");
        }
        ready = st->n_pipelines > 0 && enc > 0 && vae > 0;
        if (asprintf(&body, "%s pipelines=%d encoders=%d vaes=%d%s%s\n",
                     ready ? "ready" : "not ready", st->n_pipelines, enc, vae,
                     loading[0] ? " not ready:" : "", loading) < 0)
            body = NULL;
    } else if (asprintf(&body, "controller %s: %s\n", self->controller,
                        err.msg[0] ? err.msg : "no answer") < 0) {
        body = NULL;
    }
    free(st);
    return s_answer(self, conn, req, ready ? 200 : 503, "text/plain; charset=utf-8", body,
                    body ? strlen(body) : 0, 0);
}

// ---- routing ------------------------------------------------------------------------------

// Constant-time comparison of the bearer token.
static bool
s_authorized(sd3_http_t *self, struct MHD_Connection *conn)
{
    if (!self->token)
        return true;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    // Whitespace after a field value is not part of it (RFC 9110 5.5).
    size_t a = strlen(h), b = strlen(self->token);
    while (a > 0 && (h[a - 1] == ' ' || h[a - 1] == '\t'))
        a--;
    unsigned diff = (unsigned)(a ^ b);
    for (size_t i = 0; i < b; i++)
        diff |= (unsigned char)self->token[i] ^ (unsigned char)(i < a ? h[i] : 0);
    return diff == 0;
}

static enum MHD_Result
s_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
         const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void)version;
    sd3_http_t *self = cls;
    s_req_t *req = *con_cls;
    if (!req) {
        // First call: headers only.
        if (!(req = calloc(1, sizeof *req)))
            return MHD_NO;
        *con_cls = req;
        clock_gettime(CLOCK_MONOTONIC, &req->start);
        bool post = strcmp(method, "POST") == 0;
        bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        if (strcmp(url, "/v1/images/generations") == 0)
            req->ep = SD3_METRICS_EP_OPENAI;
        else if (strcmp(url, "/sdapi/v1/txt2img") == 0)
            req->ep = SD3_METRICS_EP_A1111;
        else if (strcmp(url, "/metrics") == 0)
            req->ep = SD3_METRICS_EP_METRICS;
        else if (strcmp(url, "/healthz") == 0)
            req->ep = SD3_METRICS_EP_HEALTHZ;
        else if (strcmp(url, "/readyz") == 0)
            req->ep = SD3_METRICS_EP_READYZ;
        else
            req->ep = SD3_METRICS_EP_OTHER;
        char msg[256];
        if (req->ep == SD3_METRICS_EP_OTHER) {
            snprintf(msg, sizeof msg, "no such endpoint: %s %.160s", method, url);
            return s_answer_error(self, conn, req, 404, msg);
        }
        bool wants_post = req->ep == SD3_METRICS_EP_OPENAI || req->ep == SD3_METRICS_EP_A1111;
        if (wants_post ? !post : !get) {
            snprintf(msg, sizeof msg, "method %.16s not allowed on %s; use %s", method, url,
                     wants_post ? "POST" : "GET");
            return s_answer_error(self, conn, req, 405, msg);
        }
        if (req->ep != SD3_METRICS_EP_HEALTHZ && req->ep != SD3_METRICS_EP_READYZ &&
            !s_authorized(self, conn))
            return s_answer_error(self, conn, req, 401,
                                  "missing or wrong bearer token (Authorization: Bearer ...)");
        if (wants_post) {
            const char *cl =
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > self->opts.max_body) {
                snprintf(msg, sizeof msg, "request body is %.20s bytes, at most %zu", cl,
                         self->opts.max_body);
                return s_answer_error(self, conn, req, 413, msg);
            }
        }
        return MHD_YES;
    }
    if (req->answered) {
        *upload_data_size = 0; // an early answer is out; the rest of the body is dropped
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (req->too_big || n > self->opts.max_body - req->len) {
            req->too_big = true;
            free(req->body);
            req->body = NULL;
            req->len = req->cap = 0;
            return MHD_YES;
        }
        if (req->len + n > req->cap) {
            size_t cap = req->cap ? req->cap : 4096;
            while (cap < req->len + n)
                cap *= 2;
            if (cap > self->opts.max_body)
                cap = self->opts.max_body;
            char *b = realloc(req->body, cap);
            if (!b)
                return MHD_NO;
            req->body = b;
            req->cap = cap;
        }
        memcpy(req->body + req->len, upload_data, n);
        req->len += n;
        return MHD_YES;
    }
    // Complete.
    if (req->too_big) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than %zu bytes", self->opts.max_body);
        return s_answer_error(self, conn, req, 413, msg);
    }
    switch (req->ep) {
    case SD3_METRICS_EP_OPENAI:
    case SD3_METRICS_EP_A1111:
        return s_generate(self, conn, req);
    case SD3_METRICS_EP_METRICS:
        return s_metrics(self, conn, req);
    case SD3_METRICS_EP_HEALTHZ:
        return s_healthz(self, conn, req);
    case SD3_METRICS_EP_READYZ:
        return s_readyz(self, conn, req);
    default:
        return s_answer_error(self, conn, req, 404, "no such endpoint");
    }
}

static void
s_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
            enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)conn, (void)toe;
    s_req_t *req = *con_cls;
    if (req) {
        free(req->body);
        free(req);
        *con_cls = NULL;
    }
}

static void
s_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = 0;
    sd3_log_warn("http", "mhd: %s", line);
}

// ---- life cycle ---------------------------------------------------------------------------

int
sd3_http_parse_bind(const char *text, char *host, size_t cap, uint16_t *port, sd3_err_t *err)
{
    if (!text || !text[0])
        return sd3_err_set(err, SD3_EINVAL, "http: empty bind address; want HOST:PORT");
    const char *colon = NULL, *h = text;
    size_t hlen = 0;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':')
            return sd3_err_set(err, SD3_EINVAL, "http: bind address '%.80s': want [V6]:PORT", text);
        h = text + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else if ((colon = strrchr(text, ':'))) {
        hlen = (size_t)(colon - text);
    }
    const char *p = colon ? colon + 1 : text;
    if (!colon)
        hlen = 0;
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(p, &end, 10);
    if (!*p || *end || errno || v > 65535)
        return sd3_err_set(err, SD3_EINVAL, "http: bind address '%.80s': port must be 0..65535",
                           text);
    if (hlen >= cap)
        return sd3_err_set(err, SD3_EINVAL, "http: bind address '%.80s': host too long", text);
    memcpy(host, h, hlen);
    host[hlen] = 0;
    *port = (uint16_t)v;
    return 0;
}

int
sd3_http_start(const sd3_http_opts_t *opts, sd3_http_t **out, sd3_err_t *err)
{
    *out = NULL;
    char host[256];
    uint16_t port = 0;
    struct addrinfo *ai = NULL;
    if (!opts || !opts->controller || !opts->controller[0])
        return sd3_err_set(err, SD3_EINVAL, "http: no controller endpoint given");
    int rc = sd3_http_parse_bind(opts->bind ? opts->bind : "127.0.0.1:8080", host, sizeof host,
                                 &port, err);
    if (rc != 0)
        return rc;
    sd3_http_t *self = calloc(1, sizeof *self);
    if (!self)
        return sd3_err_set(err, SD3_ENOMEM, "http: out of memory");
    self->opts = *opts;
    if (!self->opts.max_body)
        self->opts.max_body = 1u << 20;
    self->send_deadline = self->opts.timeout_ms > 0;
    if (self->opts.timeout_ms <= 0)
        self->opts.timeout_ms = 600000;
    if (self->opts.ack_timeout_ms <= 0)
        self->opts.ack_timeout_ms = 10000;
    if (self->opts.status_timeout_ms <= 0)
        self->opts.status_timeout_ms = 2000;
    if (!self->opts.max_connections)
        self->opts.max_connections = 64;
    self->controller = strdup(opts->controller);
    self->model = strdup(opts->model ? opts->model : "");
    const char *token = opts->token ? opts->token : getenv("SD3_HTTP_TOKEN");
    self->token = token && token[0] ? strdup(token) : NULL;
    self->metrics = sd3_metrics_new();
    atomic_init(&self->next_id, s_random64() & 0xFFFFFF);
    atomic_init(&self->stopping, false);
    if (!self->controller || !self->model || (token && token[0] && !self->token) ||
        !self->metrics) {
        rc = sd3_err_set(err, SD3_ENOMEM, "http: out of memory");
        goto fail;
    }
    self->zmq_ctx = opts->zmq_ctx;
    if (!self->zmq_ctx) {
        if (!(self->zmq_ctx = zmq_ctx_new())) {
            rc = sd3_err_set(err, SD3_EIO, "http: zmq context: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        self->own_ctx = true;
    }
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    int gai = getaddrinfo(host[0] ? host : NULL, service, &hints, &ai);
    if (gai != 0 || !ai) {
        rc = sd3_err_set(err, SD3_EINVAL, "http: bind address '%s': %s", opts->bind,
                         gai_strerror(gai));
        goto fail;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_POLL;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    self->mhd = MHD_start_daemon(flags, port, NULL, NULL, s_access, self,
                                 MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self, MHD_OPTION_SOCK_ADDR,
                                 ai->ai_addr, MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
                                 MHD_OPTION_CONNECTION_LIMIT, self->opts.max_connections,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!self->mhd) {
        rc = sd3_err_set(err, SD3_EIO,
                         "http: cannot listen on %s (port taken or address "
                         "not local?)",
                         opts->bind ? opts->bind : "127.0.0.1:8080");
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(self->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    self->port = port;
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&ss, &sl) == 0)
        self->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                    : ((struct sockaddr_in *)&ss)->sin_port);
    freeaddrinfo(ai);
    sd3_log_info("http", "listening on %s port=%u controller=%s auth=%s", host[0] ? host : "*",
                 self->port, self->controller, self->token ? "bearer" : "none");
    *out = self;
    return 0;
fail:
    if (ai)
        freeaddrinfo(ai);
    sd3_http_stop(&self);
    return rc;
}

void
sd3_http_stop(sd3_http_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_http_t *self = *self_p;
    atomic_store(&self->stopping, true);
    if (self->mhd)
        MHD_stop_daemon(self->mhd); // joins the connection threads
    sd3_metrics_destroy(&self->metrics);
    if (self->own_ctx && self->zmq_ctx)
        zmq_ctx_term(self->zmq_ctx);
    free(self->controller);
    free(self->model);
    free(self->token);
    free(self);
    *self_p = NULL;
}

uint16_t
sd3_http_port(const sd3_http_t *self)
{
    return self->port;
}
