/*  sd3_client - the client side of the controller's protocol (see sd3_client.h)  */
#include "sd3_client.h"

#include "sd3_clock.h"
#include "sd3_curve.h"
#include "sd3_link.h"
#include "sd3_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_PENDING_MAX 4096 // messages kept back while a STATUS round trip waits
#define S_CLOSE_LINGER_MS 250 // destroy: how long queued messages may take to leave

struct sd3_client {
    void *ctx;
    bool own_ctx;
    sd3_link_t *link;
    sd3_curve_t *curve; // NULL: plain
    char identity[SD3_WIRE_ID_MAX];
    int keepalive_ms;
    int64_t last_sent_ms;
    sd3_msg_t **pending; // FIFO of messages received during sd3_client_status
    int n_pending, cap_pending;
    // ids whose RESULT or ERROR was handed out (ring): a second answer is dropped
    char answered[SD3_CLIENT_ANSWERED][SD3_WIRE_ID_MAX];
    int answered_next;
};

static int
s_answered_find(const sd3_client_t *self, const char *id)
{
    for (int i = 0; i < SD3_CLIENT_ANSWERED; i++)
        if (self->answered[i][0] && !strcmp(self->answered[i], id))
            return i;
    return -1;
}

// True when msg is a second answer to a request already answered (drop it); otherwise
// remembers a RESULT or ERROR as the answer of its request.
static bool
s_duplicate_answer(sd3_client_t *self, const sd3_msg_t *msg)
{
    if ((msg->type != SD3_MSG_RESULT && msg->type != SD3_MSG_ERROR) || !msg->request_id[0])
        return false;
    if (s_answered_find(self, msg->request_id) >= 0) {
        sd3_log_debug("client", "req=%s second %s dropped (already answered)", msg->request_id,
                      sd3_msg_type_name(msg->type));
        return true;
    }
    int i = self->answered_next;
    snprintf(self->answered[i], SD3_WIRE_ID_MAX, "%s", msg->request_id);
    self->answered_next = (i + 1) % SD3_CLIENT_ANSWERED;
    return false;
}

sd3_client_t *
sd3_client_new(const char *endpoint, const sd3_client_opts_t *opts, sd3_err_t *err)
{
    sd3_client_opts_t dflt = {0};
    if (!opts)
        opts = &dflt;
    sd3_client_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "client: out of memory");
        return NULL;
    }
    self->keepalive_ms = opts->keepalive_ms > 0 ? opts->keepalive_ms : 1000;
    if (opts->identity) {
        if (!opts->identity[0] || strlen(opts->identity) >= sizeof self->identity) {
            sd3_err_set(err, SD3_EINVAL, "client: identity must have 1..%d bytes",
                        SD3_WIRE_ID_MAX - 1);
            goto fail;
        }
        snprintf(self->identity, sizeof self->identity, "%s", opts->identity);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned r = (unsigned)ts.tv_nsec ^ (unsigned)(uintptr_t)self ^ ((unsigned)getpid() << 16);
        snprintf(self->identity, sizeof self->identity, "client-%d-%08x", (int)getpid(), r);
    }
    self->ctx = opts->zmq_ctx;
    if (!self->ctx) {
        if (!(self->ctx = zmq_ctx_new())) {
            sd3_err_set(err, SD3_EIO, "client: zmq context: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        self->own_ctx = true;
    }
    if (opts->curve_secret || opts->curve_server_pub) {
        if (!opts->curve_secret || !opts->curve_server_pub) {
            sd3_err_set(err, SD3_EINVAL, "client: CurveZMQ needs both a secret key and the "
                                         "server-pub file");
            goto fail;
        }
        if (!(self->curve = sd3_curve_new(self->ctx, opts->curve_secret, NULL,
                                          opts->curve_server_pub, err)))
            goto fail;
    }
    sd3_link_opts_t lo = {.identity = self->identity, .hwm = 64, .curve = self->curve};
    if (!(self->link = sd3_link_new_connect(self->ctx, endpoint, &lo, err)))
        goto fail;
    return self;
fail:
    sd3_client_destroy(&self);
    return NULL;
}

void
sd3_client_destroy(sd3_client_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_client_t *self = *self_p;
    for (int i = 0; i < self->n_pending; i++)
        sd3_msg_destroy(&self->pending[i]);
    free(self->pending);
    if (self->link) {
        // What was just sent (a CANCEL on the way out) gets a moment to leave; a client
        // whose controller is gone waits no longer than that.
        int linger = S_CLOSE_LINGER_MS;
        zmq_setsockopt(sd3_link_socket(self->link), ZMQ_LINGER, &linger, sizeof linger);
    }
    sd3_link_destroy(&self->link);
    sd3_curve_destroy(&self->curve);
    if (self->own_ctx)
        zmq_ctx_term(self->ctx);
    free(self);
    *self_p = NULL;
}

const char *
sd3_client_identity(const sd3_client_t *self)
{
    return self->identity;
}

static int
s_send(sd3_client_t *self, sd3_msg_t **msg_p, sd3_err_t *err)
{
    int rc = sd3_link_send(self->link, NULL, msg_p, err);
    if (rc == 0)
        self->last_sent_ms = sd3_now_ms();
    return rc;
}

static int
s_check_id(const char *request_id, sd3_err_t *err)
{
    if (!request_id || !request_id[0] || strlen(request_id) >= SD3_WIRE_ID_MAX)
        return sd3_err_set(err, SD3_EINVAL, "request id must have 1..%d bytes",
                           SD3_WIRE_ID_MAX - 1);
    return 0;
}

int
sd3_client_submit(sd3_client_t *self, const char *request_id, const sd3_wire_generate_t *req,
                  sd3_tensor_t **init_image_p, sd3_err_t *err)
{
    sd3_msg_t *msg = NULL;
    int rc = s_check_id(request_id, err);
    if (rc != 0)
        goto fail;
    if (!(msg = sd3_msg_new(SD3_MSG_GENERATE, request_id))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "client: out of memory");
        goto fail;
    }
    msg->body_kind = SD3_WIRE_BODY_GENERATE;
    msg->body.generate = *req;
    int seen = s_answered_find(self, request_id);
    if (seen >= 0) // asked again (a retry, a re-attach): one new answer is wanted
        self->answered[seen][0] = '\0';
    if (init_image_p && *init_image_p) {
        sd3_tensor_t *t = *init_image_p;
        if (sd3_tensor_expect(t, "init_image", SD3_U8, 3, (int64_t[]){-1, -1, 3}, err) != 0) {
            rc = SD3_EINVAL;
            goto fail;
        }
        t->name = "init_image";
        sd3_codec_opts_t co = {.codec = SD3_CODEC_ZSTD};
        if ((rc = sd3_msg_add_tensor(msg, init_image_p, &co, err)) != 0)
            goto fail;
    }
    return s_send(self, &msg, err);
fail:
    if (init_image_p)
        sd3_tensor_destroy(init_image_p);
    sd3_msg_destroy(&msg);
    return rc;
}

int
sd3_client_cancel(sd3_client_t *self, const char *request_id, sd3_err_t *err)
{
    int rc = s_check_id(request_id, err);
    if (rc != 0)
        return rc;
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_CANCEL, request_id);
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "client: out of memory");
    return s_send(self, &msg, err);
}

int
sd3_client_keepalive(sd3_client_t *self, sd3_err_t *err)
{
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_HEARTBEAT, NULL);
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "client: out of memory");
    msg->body_kind = SD3_WIRE_BODY_HEARTBEAT;
    snprintf(msg->body.heartbeat.node_id, sizeof msg->body.heartbeat.node_id, "%s", self->identity);
    return s_send(self, &msg, err);
}

// Receives from the socket only (not the pending FIFO), keeping the controller told that
// we are here.
static int
s_recv_wire(sd3_client_t *self, int timeout_ms, sd3_msg_t **out, sd3_err_t *err)
{
    int64_t deadline = timeout_ms < 0 ? -1 : sd3_now_ms() + timeout_ms;
    for (;;) {
        int64_t now = sd3_now_ms();
        if (now - self->last_sent_ms >= self->keepalive_ms) {
            sd3_err_t kerr = {0};
            sd3_client_keepalive(self, &kerr); // a full queue is told by the next receive
            self->last_sent_ms = now;
        }
        int64_t wait = self->keepalive_ms - (now - self->last_sent_ms);
        if (deadline >= 0 && deadline - now < wait)
            wait = deadline - now;
        if (wait < 0)
            wait = 0;
        sd3_err_t rerr = {0};
        int rc = sd3_link_recv(self->link, (int)wait, NULL, out, &rerr);
        if (rc == 0 && s_duplicate_answer(self, *out)) {
            sd3_msg_destroy(out);
            continue;
        }
        if (rc == 0)
            return 0;
        if (rc != SD3_ETIMEDOUT) {
            sd3_err_set(err, rc, "%s", rerr.msg);
            return rc;
        }
        if (deadline >= 0 && sd3_now_ms() >= deadline)
            return sd3_err_set(err, SD3_ETIMEDOUT, "controller %s: no answer within %d ms",
                               sd3_link_endpoint(self->link), timeout_ms);
    }
}

int
sd3_client_recv(sd3_client_t *self, int timeout_ms, sd3_msg_t **out, sd3_err_t *err)
{
    *out = NULL;
    if (self->n_pending > 0) {
        *out = self->pending[0];
        memmove(self->pending, self->pending + 1, sizeof(sd3_msg_t *) * (size_t)--self->n_pending);
        return 0;
    }
    return s_recv_wire(self, timeout_ms, out, err);
}

static void
s_keep(sd3_client_t *self, sd3_msg_t **msg_p)
{
    if (self->n_pending == self->cap_pending && self->cap_pending < S_PENDING_MAX) {
        int cap = self->cap_pending ? self->cap_pending * 2 : 16;
        sd3_msg_t **p = realloc(self->pending, sizeof *p * (size_t)cap);
        if (p) {
            self->pending = p;
            self->cap_pending = cap;
        }
    }
    if (self->n_pending < self->cap_pending) {
        self->pending[self->n_pending++] = *msg_p;
        *msg_p = NULL;
    }
    sd3_msg_destroy(msg_p); // past the cap: dropped (the caller was not reading)
}

int
sd3_client_status(sd3_client_t *self, int timeout_ms, sd3_wire_status_t *out, sd3_err_t *err)
{
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_STATUS, NULL);
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "client: out of memory");
    int rc = s_send(self, &msg, err);
    if (rc != 0)
        return rc;
    int64_t deadline = sd3_now_ms() + (timeout_ms < 0 ? 3600000 : timeout_ms);
    for (;;) {
        int64_t left = deadline - sd3_now_ms();
        if ((rc = s_recv_wire(self, left > 0 ? (int)left : 0, &msg, err)) != 0)
            return rc;
        if (msg->type == SD3_MSG_STATUS && msg->body_kind == SD3_WIRE_BODY_STATUS) {
            *out = msg->body.status;
            sd3_msg_destroy(&msg);
            return 0;
        }
        if (msg->type == SD3_MSG_ERROR && !msg->request_id[0]) {
            rc = sd3_err_set(err, msg->status ? msg->status : SD3_EINTERNAL, "%s", msg->message);
            sd3_msg_destroy(&msg);
            return rc;
        }
        s_keep(self, &msg);
    }
}

int
sd3_client_generate(sd3_client_t *self, const char *request_id, const sd3_wire_generate_t *req,
                    sd3_tensor_t **init_image_p, sd3_client_progress_fn progress, void *user,
                    int timeout_ms, sd3_msg_t **result_p, sd3_err_t *err)
{
    *result_p = NULL;
    int rc = sd3_client_submit(self, request_id, req, init_image_p, err);
    if (rc != 0)
        return rc;
    for (;;) {
        sd3_msg_t *msg = NULL;
        if ((rc = sd3_client_recv(self, timeout_ms, &msg, err)) != 0) {
            if (rc == SD3_EPROTO) {
                sd3_err_clear(err);
                continue;
            }
            if (rc == SD3_ETIMEDOUT)
                sd3_client_cancel(self, request_id, NULL);
            return rc;
        }
        if (strcmp(msg->request_id, request_id) != 0) {
            sd3_msg_destroy(&msg); // another request's news: not ours to keep
            continue;
        }
        switch (msg->type) {
        case SD3_MSG_RESULT:
            *result_p = msg;
            return 0;
        case SD3_MSG_ERROR:
            rc = sd3_err_set(err, msg->status ? msg->status : SD3_EINTERNAL, "%s", msg->message);
            sd3_msg_destroy(&msg);
            return rc;
        case SD3_MSG_PROGRESS:
            if (progress && msg->body_kind == SD3_WIRE_BODY_PROGRESS)
                progress(user, &msg->body.progress);
            break;
        case SD3_MSG_ACK:
            if (progress) {
                sd3_wire_progress_t p = {0};
                p.steps = req->steps;
                progress(user, &p);
            }
            break;
        default:
            break;
        }
        sd3_msg_destroy(&msg);
    }
}
