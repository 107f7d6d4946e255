/*  sd3_link - one ZeroMQ endpoint of a node (see sd3_link.h)  */
#include "sd3_link.h"

#include "sd3_curve.h"
#include "sd3_log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct sd3_link {
    void *sock;
    bool serve; // ROUTER (bound) or DEALER (connected)
    char endpoint[SD3_WIRE_ADDR_MAX];
    sd3_wire_limits_t limits;
    uint64_t rejected;
};

static sd3_link_t *
s_new(void *zmq_ctx, const char *endpoint, const sd3_link_opts_t *opts, bool serve, sd3_err_t *err)
{
    sd3_link_opts_t dflt = {0};
    sd3_link_t *self = NULL;
    if (!opts)
        opts = &dflt;
    if (!endpoint || strlen(endpoint) >= SD3_WIRE_ADDR_MAX) {
        sd3_err_set(err, SD3_EINVAL, "link: endpoint missing or longer than %d bytes",
                    SD3_WIRE_ADDR_MAX - 1);
        return NULL;
    }
    if (!(self = calloc(1, sizeof *self))) {
        sd3_err_set(err, SD3_ENOMEM, "link %s: out of memory", endpoint);
        return NULL;
    }
    self->serve = serve;
    self->limits = opts->limits;
    if (!self->limits.max_envelope_bytes && !self->limits.max_tensor_bytes &&
        !self->limits.max_total_bytes)
        sd3_wire_limits_default(&self->limits);
    if (!(self->sock = zmq_socket(zmq_ctx, serve ? ZMQ_ROUTER : ZMQ_DEALER))) {
        sd3_err_set(err, SD3_EIO, "link %s: socket: %s", endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    int hwm = opts->hwm > 0 ? opts->hwm : 8;
    int sndtimeo = opts->send_timeout_ms ? opts->send_timeout_ms : 5000;
    int linger = 1000, one = 1;
    zmq_setsockopt(self->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(self->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    zmq_setsockopt(self->sock, ZMQ_LINGER, &linger, sizeof linger);
    if (serve) {
        zmq_setsockopt(self->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    } else if (opts->identity) {
        size_t len = strlen(opts->identity);
        if (len == 0 || len > 255 || opts->identity[0] == '\0') {
            sd3_err_set(err, SD3_EINVAL, "link %s: identity must have 1..255 bytes", endpoint);
            goto fail;
        }
        zmq_setsockopt(self->sock, ZMQ_ROUTING_ID, opts->identity, len);
    }
    if (serve) { // CURVE options (when curve is set; plain on inproc/ipc), then bind
        if (sd3_curve_bind(opts->curve, self->sock, endpoint, err) != 0)
            goto fail;
    } else if (opts->curve) {
        if (sd3_curve_connect(opts->curve, self->sock, endpoint, err) != 0)
            goto fail;
    } else if (zmq_connect(self->sock, endpoint) != 0) {
        sd3_err_set(err, SD3_EIO, "link: connect %s: %s", endpoint, zmq_strerror(zmq_errno()));
        goto fail;
    }
    size_t len = sizeof self->endpoint;
    if (!serve || zmq_getsockopt(self->sock, ZMQ_LAST_ENDPOINT, self->endpoint, &len) != 0)
        snprintf(self->endpoint, sizeof self->endpoint, "%s", endpoint);
    return self;
fail:
    sd3_link_destroy(&self);
    return NULL;
}

sd3_link_t *
sd3_link_new_serve(void *zmq_ctx, const char *endpoint, const sd3_link_opts_t *opts, sd3_err_t *err)
{
    return s_new(zmq_ctx, endpoint, opts, true, err);
}

sd3_link_t *
sd3_link_new_connect(void *zmq_ctx, const char *endpoint, const sd3_link_opts_t *opts,
                     sd3_err_t *err)
{
    return s_new(zmq_ctx, endpoint, opts, false, err);
}

void
sd3_link_destroy(sd3_link_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_link_t *self = *self_p;
    if (self->sock)
        zmq_close(self->sock);
    free(self);
    *self_p = NULL;
}

const char *
sd3_link_endpoint(const sd3_link_t *self)
{
    return self->endpoint;
}

void *
sd3_link_socket(const sd3_link_t *self)
{
    return self->sock;
}

uint64_t
sd3_link_rejected(const sd3_link_t *self)
{
    return self->rejected;
}

int
sd3_link_send(sd3_link_t *self, const sd3_wire_peer_t *to, sd3_msg_t **msg_p, sd3_err_t *err)
{
    int rc = self->serve ? sd3_wire_send_to(self->sock, to, msg_p, err)
                         : sd3_wire_send(self->sock, msg_p, err);
    if (rc == SD3_EIO && self->serve)
        sd3_err_prefix(err, "link %s: peer unreachable", self->endpoint);
    return rc;
}

int
sd3_link_try_send(sd3_link_t *self, const sd3_wire_peer_t *to, sd3_msg_t **msg_p, sd3_err_t *err)
{
    if (!self->serve)
        return sd3_link_send(self, to, msg_p, err);
    if (!to || !to->routing_id_len || to->routing_id_len > SD3_WIRE_ROUTING_ID_MAX) {
        sd3_msg_destroy(msg_p);
        return sd3_err_set(err, SD3_EINVAL, "link %s: send: no routing id", self->endpoint);
    }
    // The routing id alone first, without waiting: with ROUTER_MANDATORY it is refused at
    // once when the peer's pipe is full (EAGAIN) or the peer is unknown (EHOSTUNREACH), and
    // then nothing at all has been sent.
    if (zmq_send(self->sock, to->routing_id, to->routing_id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        if (e == EAGAIN)
            return sd3_err_set(err, SD3_EFULL, "link %s: the peer's queue is full", self->endpoint);
        if (e == EHOSTUNREACH)
            return sd3_err_set(err, SD3_ENOTFOUND, "link %s: the peer is not connected",
                               self->endpoint);
        sd3_msg_destroy(msg_p);
        return sd3_err_set(err, SD3_EIO, "link %s: send routing id: %s", self->endpoint,
                           zmq_strerror(e));
    }
    // Accepted: the frames follow into the same pipe, whose high-water mark counts whole
    // messages, so they do not block.
    int rc = sd3_wire_send(self->sock, msg_p, err);
    if (rc != 0) {
        // The message is half sent (routing id, maybe some frames): one empty last frame ends
        // it, and the peer gets it as one malformed message that it skips. On a ROUTER that
        // rolled the message back, a lone frame without MORE is ignored.
        zmq_send(self->sock, "", 0, ZMQ_DONTWAIT);
        sd3_err_prefix(err, "link %s", self->endpoint);
    }
    return rc;
}

int
sd3_link_recv(sd3_link_t *self, int timeout_ms, sd3_wire_peer_t *from, sd3_msg_t **out,
              sd3_err_t *err)
{
    sd3_wire_peer_t local;
    zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
    *out = NULL;
    if (!from)
        from = &local;
    int n = zmq_poll(&item, 1, timeout_ms);
    if (n < 0)
        return sd3_err_set(err, SD3_EIO, "link %s: poll: %s", self->endpoint,
                           zmq_strerror(zmq_errno()));
    if (n == 0)
        return sd3_err_set(err, SD3_ETIMEDOUT, "link %s: no message within %d ms", self->endpoint,
                           timeout_ms);
    // A whole multipart message is there once POLLIN is set: the receive does not block.
    int rc = self->serve ? sd3_wire_recv_from(self->sock, &self->limits, from, out, err)
                         : sd3_wire_recv(self->sock, &self->limits, from, out, err);
    if (rc == SD3_EPROTO) {
        sd3_err_t reply_err = {0};
        self->rejected++;
        sd3_log_warn("wire", "link=%s req=%s refused: %s", self->endpoint,
                     from->request_id[0] ? from->request_id : "-", err ? err->msg : "");
        sd3_err_t cause = {0};
        sd3_err_set(&cause, SD3_EPROTO, "%s", err ? err->msg : "malformed message");
        if (sd3_wire_reply_error(self->sock, from, &cause, &reply_err) != 0)
            sd3_log_warn("wire", "link=%s error reply not sent: %s", self->endpoint, reply_err.msg);
    }
    return rc;
}
