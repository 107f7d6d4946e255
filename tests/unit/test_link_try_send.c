/*  test_link_try_send - sd3_link_try_send on a ROUTER never blocks and never loses a message
 *
 *  A serve link (ROUTER, high-water mark 2) and a connect link (DEALER "d1", mark 2) over
 *  inproc, where the pipe holds exactly the two marks together. Checked: a peer that is not
 *  connected gives SD3_ENOTFOUND at once with the message left unchanged; PROGRESS goes out
 *  until the pipe is full, then SD3_EFULL at once (no send timeout) with the message left
 *  unchanged; once the DEALER has read, what was refused goes out; everything arrives
 *  once, in order, intact; a message that fails to encode after its routing id went out is
 *  closed off (the DEALER skips one malformed message) and the next one arrives whole; on a
 *  connect link try_send is a plain send.  */
#include "sd3_clock.h"
#include "sd3_link.h"
#include "sd3_test.h"

#include <string.h>
#include <time.h>
#include <zmq.h>

static sd3_msg_t *
s_progress(uint32_t step)
{
    sd3_msg_t *m = sd3_msg_new(SD3_MSG_PROGRESS, "r1");
    if (m) {
        m->step = step;
        m->body_kind = SD3_WIRE_BODY_PROGRESS;
        m->body.progress.step = step;
        m->body.progress.steps = 1000;
    }
    return m;
}

// try_send until the pipe has room again: the DEALER's reads reach the ROUTER as a
// command that the socket takes in on its next poll (as in the controller's loop).
static int
s_send_when_room(sd3_link_t *r, const sd3_wire_peer_t *to, sd3_msg_t **m)
{
    int rc = SD3_EFULL;
    for (int i = 0; i < 100 && rc == SD3_EFULL; i++) {
        sd3_err_t err = {0};
        zmq_pollitem_t item = {sd3_link_socket(r), 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, i ? 10 : 0);
        rc = sd3_link_try_send(r, to, m, &err);
    }
    return rc;
}

int
main(void)
{
    void *ctx = zmq_ctx_new();
    sd3_err_t err = {0};
    // A long send timeout: try_send must not wait for it.
    sd3_link_opts_t ro = {.hwm = 2, .send_timeout_ms = 5000};
    sd3_link_opts_t dopt = {.hwm = 2, .identity = "d1"};
    sd3_link_t *r = sd3_link_new_serve(ctx, "inproc://test-try-send", &ro, &err);
    sd3_link_t *d = r ? sd3_link_new_connect(ctx, "inproc://test-try-send", &dopt, &err) : NULL;
    CHECK_MSG(r && d, "%s", err.msg);
    if (!r || !d)
        return 1;

    // The ROUTER learns the DEALER's routing id from its first message.
    sd3_msg_t *hello = s_progress(0), *got = NULL;
    CHECK(sd3_link_send(d, NULL, &hello, &err) == 0);
    sd3_wire_peer_t peer;
    CHECK(sd3_link_recv(r, 2000, &peer, &got, &err) == 0);
    CHECK(peer.routing_id_len == 2 && !memcmp(peer.routing_id, "d1", 2));
    sd3_msg_destroy(&got);

    // Not connected: refused at once, message kept.
    sd3_wire_peer_t nobody = {.routing_id = "nobody", .routing_id_len = 6};
    sd3_msg_t *m = s_progress(7);
    CHECK(sd3_link_try_send(r, &nobody, &m, &err) == SD3_ENOTFOUND);
    CHECK(m && m->type == SD3_MSG_PROGRESS && m->step == 7 && m->body.progress.step == 7);
    sd3_msg_destroy(&m);

    // Until the pipe is full; then SD3_EFULL at once, message kept.
    uint32_t sent = 0;
    int rc = 0;
    double t0 = sd3_now_s();
    while (sent < 100) {
        m = s_progress(sent);
        if ((rc = sd3_link_try_send(r, &peer, &m, &err)) != 0)
            break;
        CHECK(m == NULL);
        sent++;
    }
    double waited = sd3_now_s() - t0;
    CHECK_MSG(rc == SD3_EFULL, "try_send gave %d (%s), want SD3_EFULL", rc, err.msg);
    CHECK_MSG(sent >= 2 && sent <= 8, "%u messages went in before the pipe was full", sent);
    CHECK_MSG(waited < 1.0, "try_send waited %.2f s", waited);
    CHECK(m && m->step == sent && m->body.progress.step == sent && !strcmp(m->request_id, "r1"));
    CHECK(sd3_link_try_send(r, &peer, &m, &err) == SD3_EFULL && m != NULL); // still full

    // The DEALER reads everything; the refused message then goes out, after the others.
    for (uint32_t i = 0; i < sent; i++) {
        CHECK(sd3_link_recv(d, 2000, NULL, &got, &err) == 0);
        CHECK_MSG(got && got->type == SD3_MSG_PROGRESS && got->body.progress.step == i,
                  "message %u: step %u", i, got ? got->body.progress.step : 0);
        sd3_msg_destroy(&got);
    }
    CHECK(s_send_when_room(r, &peer, &m) == 0 && m == NULL);
    CHECK(sd3_link_recv(d, 2000, NULL, &got, &err) == 0);
    CHECK(got && got->body.progress.step == sent);
    sd3_msg_destroy(&got);

    // A message that cannot be encoded: an error, the message taken; the half-sent one is
    // closed off, so the DEALER skips one malformed message and then gets the next whole.
    m = s_progress(500);
    if (m)
        m->body_kind = (sd3_wire_body_t)99;
    CHECK(m && sd3_link_try_send(r, &peer, &m, &err) == SD3_EINVAL && m == NULL);
    m = s_progress(501);
    CHECK(sd3_link_try_send(r, &peer, &m, &err) == 0);
    sd3_err_t e2 = {0};
    int first = sd3_link_recv(d, 2000, NULL, &got, &e2);
    CHECK_MSG(first == SD3_EPROTO, "the half-sent message: %d, want SD3_EPROTO", first);
    if (first == SD3_EPROTO) { // the DEALER answered it with ERROR, as every node does
        sd3_msg_t *answer = NULL;
        CHECK(sd3_link_recv(r, 2000, NULL, &answer, &e2) == 0 && answer &&
              answer->type == SD3_MSG_ERROR);
        sd3_msg_destroy(&answer);
        first = sd3_link_recv(d, 2000, NULL, &got, &e2);
    }
    CHECK_MSG(first == 0 && got && got->body.progress.step == 501, "after a failed encode: %d %s",
              first, err.msg);
    sd3_msg_destroy(&got);
    CHECK(sd3_link_recv(d, 100, NULL, &got, &err) == SD3_ETIMEDOUT);

    // A connect link: a plain send.
    m = s_progress(9);
    CHECK(sd3_link_try_send(d, NULL, &m, &err) == 0 && m == NULL);
    CHECK(sd3_link_recv(r, 2000, &peer, &got, &err) == 0 && got && got->body.progress.step == 9);
    sd3_msg_destroy(&got);

    sd3_link_destroy(&d);
    sd3_link_destroy(&r);
    zmq_ctx_term(ctx);
    return TEST_RESULT();
}
