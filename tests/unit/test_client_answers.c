/*  test_client_answers - a client hands each request's answer to its caller once
 *
 *  A fake controller (a ROUTER link over inproc) answers a real sd3_client:
 *    - RESULT r1 twice (a re-attach crossing a RESULT in flight): recv gets one RESULT, then
 *      the next message (PROGRESS r9), never the second r1;
 *    - r1 asked again (GENERATE with its id) is answered twice: one gets through;
 *    - r4 re-attached before its RESULT in flight was read: RESULT and the journal's answer
 *      both arrive, the caller gets one;
 *    - ERROR r2 (refused), the client retries r2 (GENERATE), ERROR r2 again, then RESULT r2:
 *      the retry's answers get through (the first, the ERROR, ends the retry; RESULT after
 *      it is a duplicate again);
 *    - a STATUS round trip keeps a RESULT r3 that arrives meanwhile, and a duplicate r3 that
 *      follows is dropped.  */
#include "sd3_client.h"
#include "sd3_link.h"
#include "sd3_test.h"

#include <string.h>
#include <zmq.h>

static sd3_link_t *s_ctrl;
static sd3_wire_peer_t s_peer;

static void
s_answer(sd3_msg_type_t type, const char *id)
{
    sd3_err_t err = {0};
    sd3_msg_t *m = NULL;
    if (type == SD3_MSG_ERROR) {
        sd3_err_t cause = {.code = SD3_EFULL};
        snprintf(cause.msg, sizeof cause.msg, "queue full");
        m = sd3_msg_new_error(id, 0, &cause);
    } else {
        m = sd3_msg_new(type, id);
        if (m && type == SD3_MSG_PROGRESS) {
            m->body_kind = SD3_WIRE_BODY_PROGRESS;
            m->body.progress.steps = 4;
        }
    }
    CHECK(m != NULL && sd3_link_send(s_ctrl, &s_peer, &m, &err) == 0);
}

// The next message the client hands out: its type and id (type SD3_MSG_COUNT: none).
static sd3_msg_type_t
s_next(sd3_client_t *cl, char *id, size_t cap)
{
    sd3_msg_t *m = NULL;
    sd3_err_t err = {0};
    sd3_msg_type_t t = (sd3_msg_type_t)-1;
    id[0] = '\0';
    if (sd3_client_recv(cl, 500, &m, &err) == 0 && m) {
        t = m->type;
        snprintf(id, cap, "%s", m->request_id);
    }
    sd3_msg_destroy(&m);
    return t;
}

// The fake controller takes the client's next message (to learn its routing id).
static void
s_take(sd3_msg_type_t want)
{
    sd3_msg_t *m = NULL;
    sd3_err_t err = {0};
    for (int i = 0; i < 20; i++) { // keep-alives may come first
        CHECK(sd3_link_recv(s_ctrl, 2000, &s_peer, &m, &err) == 0);
        if (!m || m->type == want)
            break;
        sd3_msg_destroy(&m);
    }
    CHECK_MSG(m && m->type == want, "fake controller: want %s", sd3_msg_type_name(want));
    sd3_msg_destroy(&m);
}

int
main(void)
{
    sd3_err_t err = {0};
    void *ctx = zmq_ctx_new();
    s_ctrl = sd3_link_new_serve(ctx, "inproc://test-client-answers", NULL, &err);
    CHECK_MSG(s_ctrl != NULL, "%s", err.msg);
    sd3_client_opts_t co = {.zmq_ctx = ctx, .identity = "c1"};
    sd3_client_t *cl = s_ctrl ? sd3_client_new("inproc://test-client-answers", &co, &err) : NULL;
    CHECK_MSG(cl != NULL, "%s", err.msg);
    if (!cl)
        return TEST_RESULT();
    static sd3_wire_generate_t w;
    snprintf(w.prompt, sizeof w.prompt, "a cat");
    char id[64];

    CHECK(sd3_client_submit(cl, "r1", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_RESULT, "r1");
    s_answer(SD3_MSG_RESULT, "r1");
    s_answer(SD3_MSG_PROGRESS, "r9");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_RESULT && !strcmp(id, "r1"));
    CHECK_MSG(s_next(cl, id, sizeof id) == SD3_MSG_PROGRESS && !strcmp(id, "r9"),
              "after one RESULT r1 came %s", id);

    // asked again after its answer (its image once more): one new answer, a second dropped
    CHECK(sd3_client_submit(cl, "r1", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_RESULT, "r1");
    s_answer(SD3_MSG_RESULT, "r1");
    s_answer(SD3_MSG_PROGRESS, "r9");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_RESULT && !strcmp(id, "r1"));
    CHECK_MSG(s_next(cl, id, sizeof id) == SD3_MSG_PROGRESS, "asked again, r1 came %s twice",
              id);

    // a re-attach sent before the RESULT in flight was read (the chaos test's case): the
    // RESULT and the journal's answer to the re-attach both arrive; the caller gets one
    CHECK(sd3_client_submit(cl, "r4", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    CHECK(sd3_client_submit(cl, "r4", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_RESULT, "r4");
    s_answer(SD3_MSG_RESULT, "r4");
    s_answer(SD3_MSG_PROGRESS, "r9");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_RESULT && !strcmp(id, "r4"));
    CHECK_MSG(s_next(cl, id, sizeof id) == SD3_MSG_PROGRESS, "a re-attach delivered %s twice",
              id);

    // refused, retried, refused again: both refusals reach the caller
    CHECK(sd3_client_submit(cl, "r2", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_ERROR, "r2");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_ERROR && !strcmp(id, "r2"));
    CHECK(sd3_client_submit(cl, "r2", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_ERROR, "r2");
    s_answer(SD3_MSG_RESULT, "r2");
    s_answer(SD3_MSG_PROGRESS, "r9");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_ERROR && !strcmp(id, "r2"));
    CHECK_MSG(s_next(cl, id, sizeof id) == SD3_MSG_PROGRESS, "after the retry's ERROR came %s",
              id);

    // an answer kept back by a STATUS round trip, then its duplicate
    CHECK(sd3_client_submit(cl, "r3", &w, NULL, &err) == 0);
    s_take(SD3_MSG_GENERATE);
    s_answer(SD3_MSG_RESULT, "r3");
    static sd3_wire_status_t st;
    sd3_msg_t *stm = sd3_msg_new(SD3_MSG_STATUS, NULL);
    if (stm)
        stm->body_kind = SD3_WIRE_BODY_STATUS;
    CHECK(stm && sd3_link_send(s_ctrl, &s_peer, &stm, &err) == 0);
    CHECK_MSG(sd3_client_status(cl, 2000, &st, &err) == 0, "%s", err.msg);
    s_answer(SD3_MSG_RESULT, "r3");
    s_answer(SD3_MSG_PROGRESS, "r9");
    CHECK(s_next(cl, id, sizeof id) == SD3_MSG_RESULT && !strcmp(id, "r3"));
    CHECK_MSG(s_next(cl, id, sizeof id) == SD3_MSG_PROGRESS, "after RESULT r3 came %s", id);
    CHECK(s_next(cl, id, sizeof id) == (sd3_msg_type_t)-1); // nothing else

    sd3_client_destroy(&cl);
    sd3_link_destroy(&s_ctrl);
    zmq_ctx_term(ctx);
    return TEST_RESULT();
}
