/*  sd3_controller - the cluster's controller (see sd3_controller.h)
 *
 *  Layout: nodes; requests; sending; client messages; node messages; timers; status; loop.  */
#include "sd3_controller.h"

#include "sd3_clock.h"
#include "sd3_journal.h"
#include "sd3_link.h"
#include "sd3_log.h"
#include "sd3_node.h"
#include "sd3_queue.h"
#include "sd3_rng.h"
#include "sd3_sched.h"
#include "sd3_schedule.h"
#include "sd3_stage.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

typedef enum {
    S_QUEUED = 0,
    S_ENCODING,
    S_VAE_ENCODING,
    S_STARTING, // JOBs sent to the later ranges, waiting for their ACKs
    S_RUNNING,
    S_DECODING,
    S_RESUME, // has its conditioning and a checkpoint; waits for a pipeline slot
} s_state_t;

#define S_MAX_RETRIES 20 // resumes and retries of one request, whatever the cause

static const char *const s_state_names[] = {"queued",   "encoding", "vae-encoding",
                                            "starting", "running",  "decoding", "resume"};

typedef struct {
    sd3_wire_register_t reg;
    bool alive;
    int64_t last_seen_ms;
    int64_t registered_at_ms;
    uint32_t tasks; // encoder / vae work sent and not answered
    sd3_wire_heartbeat_t hb;
    bool hung;                 // busy far past its own expectation: out of its pipelines
    int64_t last_progress_ms;  // a unit finished, or it computes within its expectation
} s_node_t;

// A node that may take work: alive, ready (weights in) and not hung. A node of an older
// build sends no state: ready.
static bool
s_usable(const s_node_t *n)
{
    return n->alive && !n->hung &&
           (n->reg.live.state == SD3_WIRE_NODE_READY || n->reg.live.state == SD3_WIRE_NODE_UNSET);
}

// What waits for one client whose pipe is full (or who is not connected right now): the
// messages that must reach it (ACK, RESULT, ERROR, STATUS) in order, and per request at
// most one PROGRESS, the newest (older ones are dropped). Retried every loop turn.
typedef struct {
    sd3_wire_peer_t peer;
    sd3_msg_t **q; // q[head..n) in sending order
    int head, n, cap;
    size_t bytes;        // tensor bytes queued (RESULT PNGs)
    int64_t last_out_ms; // when the client last took a message (or the queue began)
    bool unreachable;    // the last try found the client not connected
    uint64_t progress_dropped;
} s_outbox_t;

// Bounds of one outbox: past them PROGRESS goes first, then the oldest messages (a RESULT
// dropped so stays in the journal, where a GENERATE with its id gets it).
#define S_OUTBOX_MAX_MSGS  8192
#define S_OUTBOX_MAX_BYTES ((size_t)256 << 20)
#define S_OUTBOX_MAX_MS                                                                            \
    60000 // a client that takes nothing for 60 s loses its queue,
          // one not connected for its client timeout too

struct sd3_request {
    char id[SD3_WIRE_ID_MAX];
    sd3_wire_peer_t client;
    s_state_t state;
    sd3_gen_params_t p;
    sd3_wire_generate_t w;  // resolved: every field explicit
    sd3_tensor_t *init_rgb; // img2img U8 [H, W, 3]
    sd3_tensor_t *ctx2, *y2, *img_latent;
    sd3_tensor_t *latent;       // the newest latent: the checkpoint (enters step steps_done)
    sd3_tensor_t *old_denoised; // DPM++ 2M: D of step steps_done - 1 (NULL: none)
    int retries;                // resumes after a stage error
    int avoid_pipeline;         // the pipeline it hung on (s_check_steps); -1 none
    int64_t retry_at_ms;        // waiting work is not retried before this
    int pipeline, task_node; // task_node: encoder or vae working on it, -1 none
    bool holds_slot;
    int pending_acks;
    float *sigmas; // n_sigmas = steps + 1
    int start, n_used;
    int steps_done;
    uint32_t attempt;
    int64_t t_submit_ms, t_start_ms, t_last_step_ms, deadline_ms, client_seen_ms;
};

struct sd3_controller {
    sd3_controller_opts_t o;
    void *ctx;
    bool own_ctx;
    sd3_link_t *clients, *stages;
    sd3_model_t *model;
    sd3_weights_t *w_mmdit;
    sd3_mmdit_config_t cfg;
    const char *arch;
    s_node_t nodes[SD3_WIRE_MAX_NODES];
    int n_nodes;
    sd3_sched_t *sched;
    sd3_queue_t *queue;
    sd3_request_t **reqs;
    int n_reqs, cap_reqs;
    uint64_t completed, failed, seed_counter;
    uint64_t step_count, step_buckets[SD3_WIRE_STEP_BUCKETS];
    double step_seconds_sum;
    uint64_t overhead_steps;
    double overhead_seconds;
    int64_t start_ms, last_timer_ms;
    int64_t form_due_ms; // pipelines are formed once registrations settle
    sd3_journal_t *journal; // NULL: no journal
    int64_t last_prune_ms;
    s_outbox_t **outboxes; // clients whose pipe was full: what still has to reach them
    int n_outboxes, cap_outboxes;
    uint64_t progress_dropped, results_dropped; // outbox drops (see s_outbox_bound)
    int step_ms[64];  // the newest step times (ring), for the per-step timeout
    int n_step_ms, next_step_ms;
    uint64_t step_timeouts, failovers, nodes_hung;
};

// ---- nodes -------------------------------------------------------------------------------

static int
s_node_by_routing(const sd3_controller_t *self, const sd3_wire_peer_t *peer)
{
    for (int i = 0; i < self->n_nodes; i++) {
        size_t len = strlen(self->nodes[i].reg.node_id);
        if (len == peer->routing_id_len &&
            !memcmp(self->nodes[i].reg.node_id, peer->routing_id, len))
            return i;
    }
    return -1;
}

static sd3_wire_peer_t
s_node_peer(const sd3_controller_t *self, int node)
{
    sd3_wire_peer_t peer;
    memset(&peer, 0, sizeof peer);
    peer.routing_id_len = strlen(self->nodes[node].reg.node_id);
    memcpy(peer.routing_id, self->nodes[node].reg.node_id, peer.routing_id_len);
    return peer;
}

// The live node of `role` with the least work in hand; -1 when none.
static int
s_pick_node(const sd3_controller_t *self, sd3_wire_role_t role)
{
    int best = -1;
    for (int i = 0; i < self->n_nodes; i++) {
        const s_node_t *n = &self->nodes[i];
        if (s_usable(n) && n->reg.role == role && (best < 0 || n->tasks < self->nodes[best].tasks))
            best = i;
    }
    return best;
}

static void
s_form(sd3_controller_t *self)
{
    // Chains form from the ready ranges all at once, as a cluster file lists them: while an
    // mmdit node still loads, forming would pair the ranges ready so far into other chains
    // (sd3_sched_form keeps what it formed). Pipelines already serving keep serving.
    for (int i = 0; i < self->n_nodes; i++) {
        const s_node_t *n = &self->nodes[i];
        if (n->alive && !n->hung && n->reg.role == SD3_WIRE_ROLE_MMDIT &&
            n->reg.live.state == SD3_WIRE_NODE_LOADING) {
            self->form_due_ms = sd3_now_ms() + 250;
            return;
        }
    }
    sd3_sched_range_t ranges[SD3_WIRE_MAX_NODES];
    int n = 0;
    for (int i = 0; i < self->n_nodes; i++)
        if (self->nodes[i].reg.role == SD3_WIRE_ROLE_MMDIT)
            ranges[n++] =
                (sd3_sched_range_t){i, (int)self->nodes[i].reg.layer_begin,
                                    (int)self->nodes[i].reg.layer_end, s_usable(&self->nodes[i])};
    // By node id, so that a cluster file's chains come out as written (p2a, p2b before
    // p3a...) whatever order the nodes registered in.
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && strcmp(self->nodes[ranges[k].node].reg.node_id,
                                        self->nodes[ranges[k - 1].node].reg.node_id) < 0;
             k--) {
            sd3_sched_range_t t = ranges[k];
            ranges[k] = ranges[k - 1];
            ranges[k - 1] = t;
        }
    bool was[SD3_WIRE_MAX_PIPELINES] = {false};
    for (int p = 0; p < sd3_sched_count(self->sched); p++)
        was[p] = sd3_sched_get(self->sched, p)->alive;
    if (sd3_sched_form(self->sched, ranges, n, self->cfg.depth) == 0)
        return;
    for (int p = 0; p < sd3_sched_count(self->sched); p++) {
        sd3_pipeline_t *pl = sd3_sched_get(self->sched, p);
        if (!pl->alive || was[p])
            continue;
        char chain[1024] = "";
        size_t len = 0;
        for (int s = 0; s < pl->n_stages && len < sizeof chain; s++) {
            const sd3_wire_register_t *r = &self->nodes[pl->nodes[s]].reg;
            len += (size_t)snprintf(chain + len, sizeof chain - len, "%s%s[%u,%u)", s ? "," : "",
                                    r->node_id, r->layer_begin, r->layer_end);
        }
        sd3_log_info("controller", "pipeline=%d formed stages=%d chain=%s max_inflight=%d", pl->id,
                     pl->n_stages, chain, pl->max_inflight);
    }
}

// ---- requests ----------------------------------------------------------------------------

static sd3_request_t *
s_find(const sd3_controller_t *self, const char *id)
{
    for (int i = 0; i < self->n_reqs; i++)
        if (!strcmp(self->reqs[i]->id, id))
            return self->reqs[i];
    return NULL;
}

static void
s_req_free(sd3_request_t **req_p)
{
    sd3_request_t *req = *req_p;
    if (!req)
        return;
    sd3_gen_params_fini(&req->p);
    sd3_tensor_t **all[] = {&req->init_rgb, &req->ctx2,   &req->y2,
                            &req->img_latent, &req->latent, &req->old_denoised};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(all[i]);
    free(req->sigmas);
    free(req);
    *req_p = NULL;
}

// ---- sending to clients: never blocking, RESULT and ERROR never dropped --------------------
//
// A client's pipe (the ROUTER's high-water mark) fills when it reads slower than PROGRESS
// streams. Then what cannot go now waits in the client's outbox and is retried every loop
// turn (a ROUTER's POLLOUT says nothing about one peer): PROGRESS is coalesced to the
// newest per request, and dropped first when an outbox passes its bounds.

static bool
s_same_peer(const sd3_wire_peer_t *a, const sd3_wire_peer_t *b)
{
    return a->routing_id_len == b->routing_id_len &&
           !memcmp(a->routing_id, b->routing_id, a->routing_id_len);
}

// The routing id for a log line: printable bytes, others as '?'.
static const char *
s_peer_name(const sd3_wire_peer_t *peer, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < peer->routing_id_len && n + 1 < cap; i++) {
        unsigned char ch = peer->routing_id[i];
        buf[n++] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    buf[n] = '\0';
    return buf;
}

static size_t
s_msg_bytes(const sd3_msg_t *msg)
{
    size_t bytes = 0;
    for (int i = 0; i < msg->n_tensors; i++)
        if (msg->tensors[i].tensor)
            bytes += sd3_tensor_nbytes(msg->tensors[i].tensor);
    return bytes;
}

static s_outbox_t *
s_outbox_find(const sd3_controller_t *self, const sd3_wire_peer_t *peer)
{
    for (int i = 0; i < self->n_outboxes; i++)
        if (s_same_peer(&self->outboxes[i]->peer, peer))
            return self->outboxes[i];
    return NULL;
}

static void
s_outbox_free(s_outbox_t **ob_p)
{
    s_outbox_t *ob = *ob_p;
    if (!ob)
        return;
    for (int i = ob->head; i < ob->n; i++)
        sd3_msg_destroy(&ob->q[i]);
    free(ob->q);
    free(ob);
    *ob_p = NULL;
}

// Removes entry i (head <= i < n) of ob, destroying its message.
static void
s_outbox_remove(s_outbox_t *ob, int i)
{
    ob->bytes -= s_msg_bytes(ob->q[i]);
    sd3_msg_destroy(&ob->q[i]);
    memmove(&ob->q[i], &ob->q[i + 1], sizeof *ob->q * (size_t)(ob->n - i - 1));
    ob->n--;
}

// Keeps ob within its bounds: PROGRESS goes first, then the oldest messages, with a warning
// naming each RESULT or ERROR dropped (the journal still has the RESULT).
static void
s_outbox_bound(sd3_controller_t *self, s_outbox_t *ob)
{
    char name[SD3_WIRE_ROUTING_ID_MAX + 1];
    while (ob->n - ob->head > S_OUTBOX_MAX_MSGS || ob->bytes > S_OUTBOX_MAX_BYTES) {
        int victim = ob->head;
        for (int i = ob->head; i < ob->n; i++)
            if (ob->q[i]->type == SD3_MSG_PROGRESS) {
                victim = i;
                break;
            }
        const sd3_msg_t *m = ob->q[victim];
        if (m->type == SD3_MSG_PROGRESS) {
            ob->progress_dropped++;
            self->progress_dropped++;
        } else {
            self->results_dropped += m->type == SD3_MSG_RESULT || m->type == SD3_MSG_ERROR;
            sd3_log_warn("controller",
                         "req=%s client=%s %s dropped: the client's queue is past "
                         "%d messages or %zu MiB%s",
                         m->request_id[0] ? m->request_id : "-",
                         s_peer_name(&ob->peer, name, sizeof name), sd3_msg_type_name(m->type),
                         S_OUTBOX_MAX_MSGS, S_OUTBOX_MAX_BYTES >> 20,
                         self->journal ? " (a GENERATE with its id gets it from the journal)" : "");
        }
        s_outbox_remove(ob, victim);
    }
}

// Queues *msg_p (taken) at the end of the outbox of peer (made when there is none).
static void
s_outbox_push(sd3_controller_t *self, const sd3_wire_peer_t *peer, sd3_msg_t **msg_p)
{
    sd3_msg_t *msg = *msg_p;
    s_outbox_t *ob = s_outbox_find(self, peer);
    *msg_p = NULL;
    if (!ob) {
        if (self->n_outboxes == self->cap_outboxes) {
            int cap = self->cap_outboxes ? self->cap_outboxes * 2 : 8;
            s_outbox_t **o = realloc(self->outboxes, sizeof *o * (size_t)cap);
            if (!o)
                goto oom;
            self->outboxes = o;
            self->cap_outboxes = cap;
        }
        if (!(ob = calloc(1, sizeof *ob)))
            goto oom;
        ob->peer = *peer;
        ob->last_out_ms = sd3_now_ms();
        self->outboxes[self->n_outboxes++] = ob;
    }
    if (msg->type == SD3_MSG_PROGRESS) { // only the newest per request matters
        for (int i = ob->head; i < ob->n; i++)
            if (ob->q[i]->type == SD3_MSG_PROGRESS &&
                !strcmp(ob->q[i]->request_id, msg->request_id)) {
                sd3_msg_destroy(&ob->q[i]);
                ob->q[i] = msg;
                ob->progress_dropped++;
                self->progress_dropped++;
                return;
            }
    }
    if (msg->type == SD3_MSG_RESULT || msg->type == SD3_MSG_ERROR) // its PROGRESS is stale
        for (int i = ob->n - 1; i >= ob->head; i--)
            if (ob->q[i]->type == SD3_MSG_PROGRESS &&
                !strcmp(ob->q[i]->request_id, msg->request_id)) {
                s_outbox_remove(ob, i);
                ob->progress_dropped++;
                self->progress_dropped++;
            }
    if (ob->n == ob->cap && ob->head > 0) { // compact before growing
        memmove(ob->q, ob->q + ob->head, sizeof *ob->q * (size_t)(ob->n - ob->head));
        ob->n -= ob->head;
        ob->head = 0;
    }
    if (ob->n == ob->cap) {
        int cap = ob->cap ? ob->cap * 2 : 16;
        sd3_msg_t **q = realloc(ob->q, sizeof *q * (size_t)cap);
        if (!q)
            goto oom;
        ob->q = q;
        ob->cap = cap;
    }
    ob->q[ob->n++] = msg;
    ob->bytes += s_msg_bytes(msg);
    s_outbox_bound(self, ob);
    return;
oom:
    sd3_log_warn("controller", "req=%s %s to a client dropped: out of memory",
                 msg->request_id[0] ? msg->request_id : "-", sd3_msg_type_name(msg->type));
    sd3_msg_destroy(&msg);
}

// Sends *msg_p (taken) to a client without blocking: at once when nothing waits for that
// client and its pipe has room, else through its outbox. 0, or the error of a send that
// failed for good (logged at debug; the message is gone).
static int
s_send_to_client(sd3_controller_t *self, const sd3_wire_peer_t *to, sd3_msg_t **msg_p)
{
    sd3_err_t err = {0};
    if (!*msg_p)
        return 0;
    s_outbox_t *ob = s_outbox_find(self, to);
    if (!ob || ob->head == ob->n) {
        int rc = sd3_link_try_send(self->clients, to, msg_p, &err);
        if (rc == 0)
            return 0;
        if (rc != SD3_EFULL && rc != SD3_ENOTFOUND) {
            sd3_log_debug("controller", "client message not sent: %s", err.msg);
            return rc;
        }
    }
    s_outbox_push(self, to, msg_p);
    return 0;
}

static int
s_send_client(sd3_controller_t *self, const sd3_request_t *req, sd3_msg_t **msg_p)
{
    return s_send_to_client(self, &req->client, msg_p);
}

// Whether a RESULT or ERROR for request id waits in peer's outbox.
static bool
s_outbox_has_answer(const sd3_controller_t *self, const sd3_wire_peer_t *peer, const char *id)
{
    const s_outbox_t *ob = s_outbox_find(self, peer);
    for (int i = ob ? ob->head : 0; ob && i < ob->n; i++)
        if ((ob->q[i]->type == SD3_MSG_RESULT || ob->q[i]->type == SD3_MSG_ERROR) &&
            !strcmp(ob->q[i]->request_id, id))
            return true;
    return false;
}

// Every loop turn: sends what waits, in order, until a client's pipe is full again; an
// empty outbox goes away; one whose client took nothing for S_OUTBOX_MAX_MS (not connected:
// its client timeout) is dropped.
static void
s_flush_outboxes(sd3_controller_t *self)
{
    int64_t now = sd3_now_ms();
    char name[SD3_WIRE_ROUTING_ID_MAX + 1];
    for (int b = self->n_outboxes - 1; b >= 0; b--) {
        s_outbox_t *ob = self->outboxes[b];
        while (ob->head < ob->n) {
            sd3_err_t err = {0};
            size_t bytes = s_msg_bytes(ob->q[ob->head]);
            int rc = sd3_link_try_send(self->clients, &ob->peer, &ob->q[ob->head], &err);
            if (rc == SD3_ENOTFOUND && !ob->unreachable)
                ob->last_out_ms = now; // the reconnect gets its client timeout in full
            ob->unreachable = rc == SD3_ENOTFOUND;
            if (rc == SD3_EFULL || rc == SD3_ENOTFOUND)
                break;
            if (rc != 0)
                sd3_log_debug("controller", "client message not sent: %s", err.msg);
            ob->q[ob->head] = NULL; // sent, or gone for good
            ob->head++;
            ob->bytes -= bytes;
            ob->last_out_ms = now;
        }
        int client_to = self->o.client_timeout_ms > 0 ? self->o.client_timeout_ms : 10000;
        int64_t bound =
            ob->unreachable && client_to < S_OUTBOX_MAX_MS ? client_to : S_OUTBOX_MAX_MS;
        bool expired = ob->head < ob->n && now - ob->last_out_ms > bound;
        if (ob->head < ob->n && !expired)
            continue;
        if (expired) {
            int answers = 0;
            for (int i = ob->head; i < ob->n; i++)
                answers += ob->q[i]->type == SD3_MSG_RESULT || ob->q[i]->type == SD3_MSG_ERROR;
            self->results_dropped += (uint64_t)answers;
            sd3_log_warn("controller",
                         "client=%s %s for %lld ms: %d messages dropped, "
                         "%d of them RESULT or ERROR%s",
                         s_peer_name(&ob->peer, name, sizeof name),
                         ob->unreachable ? "not connected" : "took nothing", (long long)bound,
                         ob->n - ob->head, answers, self->journal ? " (kept in the journal)" : "");
        }
        if (ob->progress_dropped)
            sd3_log_debug("controller", "client=%s caught up: %llu PROGRESS dropped",
                          s_peer_name(&ob->peer, name, sizeof name),
                          (unsigned long long)ob->progress_dropped);
        s_outbox_free(&ob);
        self->outboxes[b] = self->outboxes[--self->n_outboxes];
    }
}

static int
s_send_node(sd3_controller_t *self, int node, sd3_msg_t **msg_p, sd3_err_t *err)
{
    sd3_wire_peer_t peer = s_node_peer(self, node);
    return sd3_link_send(self->stages, &peer, msg_p, err);
}

// CANCEL of the request's current attempt to the live stages of pl: they drop its later steps.
static void
s_cancel_stages(sd3_controller_t *self, const sd3_request_t *req, const sd3_pipeline_t *pl)
{
    for (int s = 0; s < pl->n_stages; s++) {
        sd3_msg_t *c = sd3_msg_new(SD3_MSG_CANCEL, req->id);
        sd3_err_t e = {0};
        if (c)
            c->attempt = req->attempt;
        if (c && self->nodes[pl->nodes[s]].alive)
            s_send_node(self, pl->nodes[s], &c, &e);
        sd3_msg_destroy(&c);
    }
}

// Ends a request: RESULT already sent (code 0) or ERROR to its client; frees its slot and
// its pipeline's state.
static void s_end(sd3_controller_t *self, sd3_request_t *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
s_end(sd3_controller_t *self, sd3_request_t *req, int code, const char *fmt, ...)
{
    if (code != 0) {
        sd3_err_t cause = {0};
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cause.msg, sizeof cause.msg, fmt, ap);
        va_end(ap);
        cause.code = code;
        sd3_log_info("controller", "req=%s failed state=%s step=%d error=%s %s", req->id,
                     s_state_names[req->state], req->steps_done, sd3_err_name(code), cause.msg);
        sd3_msg_t *msg = sd3_msg_new_error(req->id, (uint32_t)req->steps_done, &cause);
        if (msg)
            s_send_client(self, req, &msg);
        self->failed++;
        sd3_err_t je = {0};
        if (self->journal &&
            (code == SD3_ECANCELED ? sd3_journal_cancel(self->journal, req->id, &je)
                                   : sd3_journal_fail(self->journal, req->id, code, cause.msg, &je)) !=
                0)
            sd3_log_warn("controller", "req=%s journal: %s", req->id, je.msg);
    } else {
        self->completed++;
    }
    sd3_pipeline_t *pl = req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
    if (pl && (req->state == S_STARTING || req->state == S_RUNNING) && code != 0)
        s_cancel_stages(self, req, pl);
    if (pl && req->holds_slot)
        pl->inflight--;
    if (req->task_node >= 0 && code != 0 && self->nodes[req->task_node].alive) {
        // An encoder or vae working on it stops at its next boundary (between encoders).
        sd3_msg_t *c = sd3_msg_new(SD3_MSG_CANCEL, req->id);
        sd3_err_t e = {0};
        if (c)
            s_send_node(self, req->task_node, &c, &e);
        sd3_msg_destroy(&c);
    }
    if (req->task_node >= 0 && self->nodes[req->task_node].tasks > 0)
        self->nodes[req->task_node].tasks--;
    sd3_queue_remove(self->queue, req);
    for (int i = 0; i < self->n_reqs; i++)
        if (self->reqs[i] == req) {
            self->reqs[i] = self->reqs[--self->n_reqs];
            break;
        }
    s_req_free(&req);
}

static sd3_tensor_t *
s_clone_named(const sd3_tensor_t *t, const char *name)
{
    sd3_tensor_t *c = sd3_tensor_clone(t);
    if (c)
        c->name = name;
    return c;
}

// Adds a clone of t named `name` to msg.
static int
s_add(sd3_controller_t *self, sd3_msg_t *msg, const sd3_tensor_t *t, const char *name,
      sd3_err_t *err)
{
    sd3_tensor_t *c = s_clone_named(t, name);
    if (!c)
        return sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
    int rc = sd3_msg_add_tensor(msg, &c, t->dtype == SD3_F32 ? &self->o.codec : NULL, err);
    sd3_tensor_destroy(&c);
    return rc;
}

// JOB for stage s of the request's pipeline: from its checkpoint (step steps_done, the
// latent entering it; the last range also gets DPM++ 2M's previous denoised).
static sd3_msg_t *
s_job_msg(sd3_controller_t *self, sd3_request_t *req, int s, sd3_err_t *err)
{
    sd3_pipeline_t *pl = sd3_sched_get(self->sched, req->pipeline);
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_JOB, req->id);
    if (!msg) {
        sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
        return NULL;
    }
    msg->attempt = req->attempt;
    msg->step = (uint32_t)req->steps_done;
    msg->body_kind = SD3_WIRE_BODY_JOB;
    sd3_wire_job_t *j = &msg->body.job;
    const sd3_wire_register_t *r = &self->nodes[pl->nodes[s]].reg;
    j->request = req->w;
    j->pipeline_id = (uint32_t)pl->id;
    j->stage_index = (uint32_t)s;
    j->n_stages = (uint32_t)pl->n_stages;
    j->layer_begin = r->layer_begin;
    j->layer_end = r->layer_end;
    const int next = pl->nodes[s + 1 < pl->n_stages ? s + 1 : 0];
    snprintf(j->next_address, sizeof j->next_address, "%s", self->nodes[next].reg.address);
    snprintf(j->controller_address, sizeof j->controller_address, "%s",
             sd3_link_endpoint(self->stages));
    j->n_sigmas = req->n_used;
    memcpy(j->sigmas, req->sigmas + req->start, sizeof(float) * (size_t)req->n_used);
    j->first_step = (uint32_t)req->steps_done;
    j->attempt = req->attempt;
    if (s == 0 || s == pl->n_stages - 1) {
        if (s_add(self, msg, req->latent, "latent", err) != 0 ||
            s_add(self, msg, req->ctx2, "context", err) != 0 ||
            s_add(self, msg, req->y2, "pooled", err) != 0 ||
            (s == pl->n_stages - 1 && req->old_denoised &&
             s_add(self, msg, req->old_denoised, "old_denoised", err) != 0))
            sd3_msg_destroy(&msg);
    }
    return msg;
}

static int
s_send_job(sd3_controller_t *self, sd3_request_t *req, int s, sd3_err_t *err)
{
    sd3_pipeline_t *pl = sd3_sched_get(self->sched, req->pipeline);
    sd3_msg_t *msg = s_job_msg(self, req, s, err);
    if (!msg)
        return err->code;
    return s_send_node(self, pl->nodes[s], &msg, err);
}

// The request's schedule: sigmas, the img2img start index, the steps it runs.
static int
s_schedule(sd3_request_t *req, sd3_err_t *err)
{
    const sd3_gen_params_t *p = &req->p;
    free(req->sigmas);
    if (!(req->sigmas = malloc(sizeof(float) * (size_t)(p->steps + 1))))
        return sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
    if (sd3_schedule_sigmas(p->steps, p->shift, req->sigmas, err) != 0)
        return err->code;
    req->start = 0;
    if (p->denoise < 1.0) {
        if (sd3_schedule_start_index(p->steps, p->denoise, &req->start, err) != 0)
            return err->code;
        if (req->start >= p->steps)
            return sd3_err_set(err, SD3_EINVAL, "strength %g leaves no step of %d", p->denoise,
                               p->steps);
    }
    req->n_used = p->steps + 1 - req->start;
    return 0;
}

// Gives back the request's pipeline slot (if it holds one).
static void
s_release_slot(sd3_controller_t *self, sd3_request_t *req)
{
    sd3_pipeline_t *pl = req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
    if (pl && req->holds_slot)
        pl->inflight--;
    req->holds_slot = false;
}

// The current attempt stopped (a stage died or failed to pass a step on): the next one
// resumes from the newest checkpoint once a pipeline has room (s_retry).
static void
s_requeue_resume(sd3_controller_t *self, sd3_request_t *req, const char *why)
{
    sd3_pipeline_t *pl = req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
    if (pl)
        s_cancel_stages(self, req, pl);
    s_release_slot(self, req);
    req->pipeline = -1;
    req->attempt++;
    req->state = S_RESUME;
    sd3_log_warn("controller", "req=%s resumes from step=%d attempt=%u: %s", req->id,
                 req->steps_done, req->attempt, why);
}

// Sends the JOBs of the request's next attempt from its checkpoint (later ranges first; they
// ACK, then the first starts) on its pipeline, or on the least-loaded one with room. No
// pipeline: the request waits in S_RESUME.
static void
s_launch(sd3_controller_t *self, sd3_request_t *req)
{
    sd3_err_t err = {0};
    sd3_pipeline_t *pl = req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
    if (!pl || !pl->alive || !req->holds_slot) {
        s_release_slot(self, req);
        // Not on the pipeline it hung on while another one lives (it may be full now).
        int pick = sd3_sched_pick_except(self->sched, req->avoid_pipeline);
        if (pick < 0 && sd3_sched_alive_count(self->sched) <= 1)
            pick = sd3_sched_pick(self->sched);
        if (pick < 0) {
            req->pipeline = -1;
            req->state = S_RESUME;
            return;
        }
        req->pipeline = pick;
        pl = sd3_sched_get(self->sched, pick);
        pl->inflight++;
        req->holds_slot = true;
    }
    req->state = S_STARTING;
    req->pending_acks = pl->n_stages - 1;
    for (int s = pl->n_stages - 1; s >= 1; s--)
        if (s_send_job(self, req, s, &err) != 0)
            goto retry;
    if (req->pending_acks == 0) {
        if (s_send_job(self, req, 0, &err) != 0)
            goto retry;
        req->state = S_RUNNING;
    }
    req->t_start_ms = req->t_last_step_ms = sd3_now_ms();
    if (self->journal && sd3_journal_start(self->journal, req->id, req->attempt, &err) != 0)
        sd3_log_warn("controller", "req=%s journal start: %s", req->id, err.msg);
    sd3_log_info("controller", "req=%s start pipeline=%d stages=%d steps=%d start=%d from=%d "
                 "attempt=%u",
                 req->id, pl->id, pl->n_stages, req->n_used - 1, req->start, req->steps_done,
                 req->attempt);
    return;
retry:
    if (err.code == SD3_ENOMEM || err.code == SD3_EINVAL || ++req->retries > S_MAX_RETRIES) {
        s_end(self, req, err.code ? err.code : SD3_EIO, "JOB not sent: %s", err.msg);
        return;
    }
    s_requeue_resume(self, req, err.msg);
    req->retry_at_ms = sd3_now_ms() + 250;
}

// Noise from the seed, the schedule, the start latent; then the JOBs.
static void
s_start_sampling(sd3_controller_t *self, sd3_request_t *req)
{
    sd3_err_t err = {0};
    sd3_tensor_t *noise = NULL;
    const sd3_gen_params_t *p = &req->p;
    const int64_t lshape[4] = {1, self->cfg.in_channels, p->height / 8, p->width / 8};
    if (!(noise = sd3_rng_noise(p->seed, 4, lshape, &err)) || s_schedule(req, &err) != 0)
        goto fail;
    sd3_tensor_destroy(&req->latent);
    sd3_tensor_destroy(&req->old_denoised);
    req->steps_done = 0;
    if (!(req->latent = sd3_tensor_new_err(SD3_F32, 4, lshape, "latent", &err)) ||
        sd3_sampler_start(req->sigmas[req->start], noise, req->img_latent, req->latent, &err) != 0)
        goto fail;
    sd3_tensor_destroy(&noise);
    s_launch(self, req);
    return;
fail:
    sd3_tensor_destroy(&noise);
    s_end(self, req, err.code ? err.code : SD3_EINTERNAL, "%s", err.msg);
}

// Work a node does for a request (ENCODE, VAE_ENCODE, DECODE) to the least-loaded live node
// of its role. 0: sent; 1: no such node now (the request waits, s_retry tries again);
// else the request ended.
static int
s_send_task(sd3_controller_t *self, sd3_request_t *req)
{
    sd3_err_t err = {0};
    sd3_wire_role_t role =
        req->state == S_ENCODING ? SD3_WIRE_ROLE_ENCODER : SD3_WIRE_ROLE_VAE;
    int node = s_pick_node(self, role);
    if (node < 0)
        return 1;
    sd3_msg_t *m = NULL;
    sd3_tensor_t *noise = NULL;
    if (req->state == S_ENCODING) {
        if ((m = sd3_msg_new(SD3_MSG_ENCODE, req->id))) {
            m->body_kind = SD3_WIRE_BODY_GENERATE;
            m->body.generate = req->w;
        }
    } else if (req->state == S_VAE_ENCODING) { // img2img: the image with the seed+1 noise
        const int64_t ls[4] = {1, self->cfg.in_channels, req->p.height / 8, req->p.width / 8};
        if ((noise = sd3_rng_noise(req->p.seed + 1, 4, ls, &err)) &&
            (m = sd3_msg_new(SD3_MSG_VAE_ENCODE, req->id)) &&
            (s_add(self, m, req->init_rgb, "image", &err) != 0 ||
             s_add(self, m, noise, "noise", &err) != 0))
            sd3_msg_destroy(&m);
        sd3_tensor_destroy(&noise);
    } else {
        if ((m = sd3_msg_new(SD3_MSG_DECODE, req->id))) {
            m->body_kind = SD3_WIRE_BODY_GENERATE;
            m->body.generate = req->w;
            if (s_add(self, m, req->latent, "latent", &err) != 0)
                sd3_msg_destroy(&m);
        }
    }
    if (!m) {
        s_end(self, req, err.code ? err.code : SD3_ENOMEM, "%s not sent: %s",
              s_state_names[req->state], err.code ? err.msg : "out of memory");
        return -1;
    }
    if (s_send_node(self, node, &m, &err) != 0) {
        sd3_log_warn("controller", "req=%s node=%s unreachable (%s): will retry", req->id,
                     self->nodes[node].reg.node_id, err.msg);
        req->retry_at_ms = sd3_now_ms() + 250;
        return 1;
    }
    req->task_node = node;
    self->nodes[node].tasks++;
    return 0;
}

// Moves on every request that waits for a node or a pipeline (resumes first).
static void
s_retry(sd3_controller_t *self)
{
    int64_t now = sd3_now_ms();
    for (int i = 0; i < self->n_reqs; i++) {
        sd3_request_t *req = self->reqs[i];
        if (now < req->retry_at_ms)
            continue;
        int n_before = self->n_reqs;
        if (req->state == S_RESUME)
            s_launch(self, req);
        else if ((req->state == S_ENCODING || req->state == S_VAE_ENCODING ||
                  req->state == S_DECODING) &&
                 req->task_node < 0)
            s_send_task(self, req);
        if (self->n_reqs < n_before) // it ended: the array moved
            i--;
    }
}

// Starts queued requests while a pipeline slot and an encoder are there.
static void
s_dispatch(sd3_controller_t *self)
{
    s_retry(self);
    while (sd3_queue_size(self->queue) > 0) {
        int pipe = sd3_sched_pick(self->sched);
        int enc = s_pick_node(self, SD3_WIRE_ROLE_ENCODER);
        if (pipe < 0 || enc < 0 || s_pick_node(self, SD3_WIRE_ROLE_VAE) < 0)
            return;
        sd3_request_t *req = sd3_queue_pop(self->queue);
        sd3_pipeline_t *pl = sd3_sched_get(self->sched, pipe);
        req->pipeline = pipe;
        req->holds_slot = true;
        pl->inflight++;
        req->state = S_ENCODING;
        if (s_send_task(self, req) < 0)
            continue;
        sd3_log_info("controller", "req=%s dispatched pipeline=%d encoder=%s queued_ms=%lld",
                     req->id, pipe,
                     req->task_node >= 0 ? self->nodes[req->task_node].reg.node_id : "-",
                     (long long)(sd3_now_ms() - req->t_submit_ms));
    }
}

// ---- client messages ---------------------------------------------------------------------

static void s_reply_error(sd3_controller_t *self, const sd3_wire_peer_t *to, const char *id,
                          int code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void
s_reply_error(sd3_controller_t *self, const sd3_wire_peer_t *to, const char *id, int code,
              const char *fmt, ...)
{
    sd3_err_t cause = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cause.msg, sizeof cause.msg, fmt, ap);
    va_end(ap);
    sd3_msg_t *msg = sd3_msg_new_error(id, 0, &cause);
    if (msg)
        s_send_to_client(self, to, &msg);
}

// A GENERATE for an id the journal holds as ended: RESULT with its PNG (a client that comes
// back for its image) or its ERROR. false when the journal does not know the id.
static bool
s_answer_journalled(sd3_controller_t *self, const sd3_wire_peer_t *from, const char *id)
{
    sd3_journal_info_t info;
    sd3_err_t err = {0};
    if (s_outbox_has_answer(self, from, id)) // its answer is on the way to this client
        return true;
    memset(&info, 0, sizeof info);
    int rc = sd3_journal_get(self->journal, id, &info, &err);
    bool answered = rc == 0 || rc != SD3_ENOTFOUND;
    if (rc != 0 && rc != SD3_ENOTFOUND) {
        s_reply_error(self, from, id, rc, "journal: %s", err.msg);
    } else if (rc == 0 && info.state == SD3_JOURNAL_DONE) {
        sd3_msg_t *res = sd3_msg_new(SD3_MSG_RESULT, id);
        sd3_tensor_t *png =
            sd3_tensor_new_err(SD3_U8, 1, (int64_t[]){(int64_t)info.png_size}, "png", &err);
        if (png) {
            memcpy(png->data, info.png, info.png_size);
            png->name = "png";
        }
        if (!res || !png || sd3_msg_add_tensor(res, &png, NULL, &err) != 0) {
            sd3_msg_destroy(&res);
            s_reply_error(self, from, id, SD3_ENOMEM, "controller: out of memory");
        } else {
            res->step = info.step;
            res->body_kind = SD3_WIRE_BODY_GENERATE;
            res->body.generate = info.request;
            sd3_log_info("controller", "req=%s result re-sent from the journal", id);
            s_send_to_client(self, from, &res);
        }
        sd3_tensor_destroy(&png);
    } else if (rc == 0 && (info.state == SD3_JOURNAL_FAILED || info.state == SD3_JOURNAL_CANCELLED)) {
        s_reply_error(self, from, id, info.error_code ? info.error_code : SD3_ECANCELED, "%s",
                      info.error_msg[0] ? info.error_msg : "cancelled");
    } else if (rc == 0) {
        s_reply_error(self, from, id, SD3_EINVAL, "request '%s' is in the journal as %s", id,
                      sd3_journal_state_name(info.state));
    }
    sd3_journal_info_fini(&info);
    return answered;
}

static void
s_generate(sd3_controller_t *self, const sd3_wire_peer_t *from, sd3_msg_t *msg)
{
    sd3_err_t err = {0};
    sd3_request_t *req = NULL;
    if (!msg->request_id[0]) {
        s_reply_error(self, from, "", SD3_EINVAL, "GENERATE needs a request id");
        return;
    }
    sd3_request_t *live = s_find(self, msg->request_id);
    if (live) { // a client re-attaching (it reconnected, or the controller restarted)
        live->client = *from;
        live->client_seen_ms = sd3_now_ms();
        sd3_log_info("controller", "req=%s client re-attached state=%s", live->id,
                     s_state_names[live->state]);
        sd3_msg_t *ack = sd3_msg_new(SD3_MSG_ACK, live->id);
        if (ack)
            s_send_client(self, live, &ack);
        return;
    }
    if (self->journal && s_answer_journalled(self, from, msg->request_id))
        return;
    if (!(req = calloc(1, sizeof *req))) {
        s_reply_error(self, from, msg->request_id, SD3_ENOMEM, "controller: out of memory");
        return;
    }
    snprintf(req->id, sizeof req->id, "%s", msg->request_id);
    req->client = *from;
    req->pipeline = req->task_node = req->avoid_pipeline = -1;
    const sd3_wire_generate_t *w = &msg->body.generate;
    if (w->model[0] && strcmp(w->model, self->arch) != 0) {
        sd3_err_set(&err, SD3_EINVAL, "model '%s' asked for, this cluster serves '%s'", w->model,
                    self->arch);
        goto fail;
    }
    if (sd3_gen_params_from_wire(&req->p, w, &self->cfg, &err) != 0)
        goto fail;
    free(req->p.model_name);
    req->p.model_name = strdup(self->arch);
    if (w->seed_random) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ++self->seed_counter;
        z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull; // splitmix finaliser
        req->p.seed = (z ^ (z >> 29)) & 0xffffffffull;
    }
    sd3_tensor_t *init = sd3_msg_tensor(msg, "init_image");
    if (init) {
        if (sd3_msg_expect(msg, "init_image", SD3_U8, 3, (int64_t[]){-1, -1, 3}, &err) != 0)
            goto fail;
        req->p.init_w = (int)init->shape[1];
        req->p.init_h = (int)init->shape[0];
        if (!w->width && !w->height) {
            req->p.width = req->p.init_w;
            req->p.height = req->p.init_h;
        }
        if (w->strength <= 0 || w->strength >= 1) {
            sd3_err_set(&err, SD3_EINVAL, "init_image needs a strength in (0, 1)");
            goto fail;
        }
        req->init_rgb = sd3_msg_take_tensor(msg, "init_image");
        req->p.init_rgb = req->init_rgb->data; // borrowed for the check only
    }
    int rc = sd3_gen_params_check(&req->p, &self->cfg, &err);
    if (rc == 0 && req->init_rgb &&
        (req->p.init_w != req->p.width || req->p.init_h != req->p.height))
        rc = sd3_err_set(&err, SD3_EINVAL,
                         "init image is %dx%d, the request %dx%d: resize it "
                         "first",
                         req->p.init_w, req->p.init_h, req->p.width, req->p.height);
    req->p.init_rgb = NULL;
    if (rc != 0)
        goto fail;
    req->w.deadline_ms = w->deadline_ms;
    sd3_gen_params_to_wire(&req->p, &req->w);
    int64_t now = sd3_now_ms();
    req->t_submit_ms = req->client_seen_ms = now;
    if (w->deadline_ms) {
        req->deadline_ms = now + ((int64_t)w->deadline_ms - sd3_unix_ms());
        if (req->deadline_ms <= now) {
            sd3_err_set(&err, SD3_ETIMEDOUT, "the deadline passed before the request arrived");
            goto fail;
        }
    } else if (self->o.deadline_ms > 0) {
        req->deadline_ms = now + self->o.deadline_ms;
    }
    if (self->n_reqs == self->cap_reqs) {
        int cap = self->cap_reqs ? self->cap_reqs * 2 : 64;
        sd3_request_t **r = realloc(self->reqs, sizeof *r * (size_t)cap);
        if (!r) {
            sd3_err_set(&err, SD3_ENOMEM, "controller: out of memory");
            goto fail;
        }
        self->reqs = r;
        self->cap_reqs = cap;
    }
    if (sd3_queue_size(self->queue) >= sd3_queue_capacity(self->queue)) {
        sd3_err_set(&err, SD3_EFULL, "queue full: %zu requests waiting (the bound)",
                    sd3_queue_capacity(self->queue));
        goto fail;
    }
    if (self->journal && sd3_journal_accept(self->journal, req->id, from->routing_id,
                                            from->routing_id_len, &req->w, req->init_rgb,
                                            &err) != 0)
        goto fail;
    if (sd3_queue_push(self->queue, req, &err) != 0) { // SD3_EFULL: RESOURCE_EXHAUSTED
        sd3_err_t je = {0};
        if (self->journal)
            sd3_journal_fail(self->journal, req->id, err.code, err.msg, &je);
        goto fail;
    }
    self->reqs[self->n_reqs++] = req;
    sd3_log_info("controller", "req=%s accepted size=%dx%d steps=%d seed=%llu queued=%zu", req->id,
                 req->p.width, req->p.height, req->p.steps, (unsigned long long)req->p.seed,
                 sd3_queue_size(self->queue));
    sd3_msg_t *ack = sd3_msg_new(SD3_MSG_ACK, req->id);
    if (ack)
        s_send_client(self, req, &ack);
    s_dispatch(self);
    // Still waiting: tell the client where it stands.
    sd3_request_t *again = s_find(self, msg->request_id);
    size_t pos = again ? sd3_queue_position(self->queue, again) : 0;
    if (pos > 0) {
        sd3_msg_t *pg = sd3_msg_new(SD3_MSG_PROGRESS, again->id);
        if (pg) {
            pg->body_kind = SD3_WIRE_BODY_PROGRESS;
            pg->body.progress.steps = (uint32_t)again->p.steps;
            pg->body.progress.queue_position = (uint32_t)pos;
            pg->body.progress.seed = again->p.seed;
            s_send_client(self, again, &pg);
        }
    }
    return;
fail:
    if (err.code == SD3_EFULL)
        self->failed++;
    sd3_log_info("controller", "req=%s refused error=%s %s", msg->request_id,
                 sd3_err_name(err.code), err.msg);
    s_reply_error(self, from, msg->request_id, err.code ? err.code : SD3_EINTERNAL, "%s", err.msg);
    s_req_free(&req);
}

static void s_fill_status(sd3_controller_t *self, sd3_wire_status_t *st);

static void
s_client_msg(sd3_controller_t *self, const sd3_wire_peer_t *from, sd3_msg_t *msg)
{
    int64_t now = sd3_now_ms();
    // Anything from a client tells us it is still there.
    for (int i = 0; i < self->n_reqs; i++)
        if (self->reqs[i]->client.routing_id_len == from->routing_id_len &&
            !memcmp(self->reqs[i]->client.routing_id, from->routing_id, from->routing_id_len))
            self->reqs[i]->client_seen_ms = now;
    switch (msg->type) {
    case SD3_MSG_GENERATE:
        s_generate(self, from, msg);
        return;
    case SD3_MSG_CANCEL: {
        sd3_request_t *req = s_find(self, msg->request_id);
        if (!req) {
            s_reply_error(self, from, msg->request_id, SD3_ENOTFOUND,
                          "no live request '%s' to cancel", msg->request_id);
            return;
        }
        req->client = *from;
        s_end(self, req, SD3_ECANCELED, "request '%s' cancelled by the client", msg->request_id);
        s_dispatch(self);
        return;
    }
    case SD3_MSG_STATUS: {
        sd3_msg_t *reply = sd3_msg_new(SD3_MSG_STATUS, NULL);
        if (!reply)
            return;
        reply->body_kind = SD3_WIRE_BODY_STATUS;
        s_fill_status(self, &reply->body.status);
        s_send_to_client(self, from, &reply);
        return;
    }
    case SD3_MSG_HEARTBEAT:
        return;
    default:
        s_reply_error(self, from, msg->request_id, SD3_EPROTO,
                      "the controller's client endpoint does not take %s messages",
                      sd3_msg_type_name(msg->type));
    }
}

// ---- node messages -----------------------------------------------------------------------

// Node i is gone (dead or restarted): its pipelines stop, and the work it had goes elsewhere:
// encoder and vae tasks to another member of the pool (or when one comes back), requests
// of its pipelines resume from their newest checkpoint on another pipeline (or on the
// re-formed one once a replacement registers). Nothing is lost or answered twice.
static void
s_node_lost(sd3_controller_t *self, int i, const char *why)
{
    s_node_t *n = &self->nodes[i];
    sd3_sched_node_dead(self->sched, i);
    for (int r = 0; r < self->n_reqs; r++) {
        sd3_request_t *req = self->reqs[r];
        sd3_pipeline_t *pl =
            req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
        if (req->task_node == i) {
            req->task_node = -1;
            if (++req->retries > S_MAX_RETRIES) {
                s_end(self, req, SD3_EIO, "%s on node=%s; retried %d times already",
                      s_state_names[req->state], n->reg.node_id, S_MAX_RETRIES);
                r--;
                continue;
            }
            sd3_log_warn("controller", "req=%s %s on node=%s retried elsewhere (%s)", req->id,
                         s_state_names[req->state], n->reg.node_id, why);
        }
        if (pl && !pl->alive) {
            if (req->state == S_STARTING || req->state == S_RUNNING) {
                // Every restart path counts against the one retry cap.
                if (++req->retries > S_MAX_RETRIES) {
                    s_end(self, req, SD3_EIO, "%s; resumed %d times already", why, S_MAX_RETRIES);
                    r--;
                    continue;
                }
                self->failovers++;
                s_requeue_resume(self, req, why);
            } else if (req->state != S_DECODING) { // encoding: it gets a pipeline later
                s_release_slot(self, req);
                req->pipeline = -1;
            }
        }
    }
    n->tasks = 0;
}

static void
s_register(sd3_controller_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    const sd3_wire_register_t *r = &msg->body.reg;
    sd3_err_t e = {0};
    size_t idlen = strlen(r->node_id);
    const char *why = NULL;
    if (r->role != SD3_WIRE_ROLE_ENCODER && r->role != SD3_WIRE_ROLE_MMDIT &&
        r->role != SD3_WIRE_ROLE_VAE)
        why = "role must be encoder, mmdit or vae";
    else if (!idlen || idlen != from->routing_id_len || memcmp(r->node_id, from->routing_id, idlen))
        why = "the node id must be the connection's routing id";
    else if (!r->address[0])
        why = "no data address";
    else if (r->role == SD3_WIRE_ROLE_MMDIT &&
             (r->depth != (uint32_t)self->cfg.depth || r->layer_end <= r->layer_begin))
        why = "its model's depth or range does not match the controller's model";
    if (why) {
        sd3_err_t cause = {0};
        sd3_err_set(&cause, SD3_EINVAL, "REGISTER refused: %s", why);
        sd3_log_warn("controller", "node=%s %s", r->node_id, cause.msg);
        sd3_wire_reply_error(sd3_link_socket(self->stages), from, &cause, &e);
        return;
    }
    int i = s_node_by_routing(self, from);
    if (i < 0) {
        if (self->n_nodes == SD3_WIRE_MAX_NODES) {
            sd3_err_t cause = {0};
            sd3_err_set(&cause, SD3_EFULL, "REGISTER refused: %d nodes already",
                        SD3_WIRE_MAX_NODES);
            sd3_wire_reply_error(sd3_link_socket(self->stages), from, &cause, &e);
            return;
        }
        i = self->n_nodes++;
    } else if (self->nodes[i].alive) {
        // Re-registered while alive: it restarted and lost its work.
        s_node_lost(self, i, "it restarted");
    }
    s_node_t *n = &self->nodes[i];
    memset(n, 0, sizeof *n);
    n->reg = *r;
    n->alive = true;
    n->last_seen_ms = n->registered_at_ms = n->last_progress_ms = sd3_now_ms();
    n->hb.live = r->live;
    sd3_log_info("controller", "node=%s registered role=%d address=%s range=[%u,%u) codec=%s "
                 "state=%s threads=%u",
                 r->node_id, (int)r->role, r->address, r->layer_begin, r->layer_end, r->codec,
                 r->live.state == SD3_WIRE_NODE_LOADING ? "loading" : "ready", r->live.threads);
    sd3_msg_t *ack = sd3_msg_new(SD3_MSG_ACK, NULL);
    if (ack)
        sd3_link_send(self->stages, from, &ack, &e);
    // Nodes of one cluster register within moments of each other: form the pipelines
    // when no registration came for 250 ms, over all of them at once.
    self->form_due_ms = sd3_now_ms() + 250;
}

// How long one unit (a block, an encoder, a decode) may run: --step-timeout-ms when set,
// else max(10 s, 10 x what the node itself expects from its measured rate and the unit's
// FLOPs). Past it the node counts as hung.
static int64_t
s_unit_bound_ms(const sd3_controller_t *self, const s_node_t *n)
{
    if (self->o.step_timeout_ms > 0)
        return self->o.step_timeout_ms;
    int64_t b = 10 * (int64_t)n->hb.live.expect_ms;
    return b > 10000 ? b : 10000;
}

// A node's heartbeat: counters, loading progress, the unit in progress. A node that just
// became ready (or stopped being hung) brings its pipelines back; one busy far past its own
// expectation is hung: its pipelines stop and their requests resume elsewhere.
static void
s_heartbeat(sd3_controller_t *self, int ni, const sd3_wire_heartbeat_t *hb)
{
    s_node_t *n = &self->nodes[ni];
    const int64_t now = sd3_now_ms();
    bool was_usable = s_usable(n);
    uint64_t units_before = n->hb.live.units_done;
    n->hb = *hb;
    n->reg.live = hb->live;
    const sd3_wire_live_t *l = &hb->live;
    if (l->units_done != units_before ||
        (l->busy_request[0] && (int64_t)l->busy_ms <= s_unit_bound_ms(self, n)))
        n->last_progress_ms = now; // an idle node is not progress: a lost hop leaves all idle
    if (n->hung && (l->units_done != units_before || !l->busy_request[0])) {
        n->hung = false;
        sd3_log_warn("controller", "node=%s moves again: back in service", n->reg.node_id);
    } else if (!n->hung && l->busy_request[0] && (int64_t)l->busy_ms > s_unit_bound_ms(self, n)) {
        n->hung = true;
        self->nodes_hung++;
        char why[200];
        snprintf(why, sizeof why, "node %s hung: req=%s unit %u of %u busy %llu ms (expected %llu, "
                 "bound %lld)",
                 n->reg.node_id, l->busy_request, l->busy_unit, l->busy_units,
                 (unsigned long long)l->busy_ms, (unsigned long long)l->expect_ms,
                 (long long)s_unit_bound_ms(self, n));
        sd3_log_warn("controller", "%s", why);
        s_node_lost(self, ni, why);
        s_form(self);
    }
    if (s_usable(n) != was_usable) {
        if (!was_usable)
            sd3_log_info("controller", "node=%s ready load_ms=%llu rate=%.1f GFLOP/s threads=%u",
                         n->reg.node_id, (unsigned long long)l->load_ms, l->gflops, l->threads);
        self->form_due_ms = now + 250; // re-form with (or without) it, once changes settle
    }
}

static int
s_take_tensor(sd3_msg_t *msg, const char *name, sd3_tensor_t **dst)
{
    sd3_tensor_destroy(dst);
    *dst = sd3_msg_take_tensor(msg, name);
    return *dst ? 0 : -1;
}

static void
s_step_done(sd3_controller_t *self, sd3_request_t *req, sd3_msg_t *msg)
{
    double t0 = sd3_now_s();
    sd3_err_t err = {0};
    if (req->state != S_RUNNING || msg->attempt != req->attempt ||
        (int)msg->step <= req->steps_done)
        return; // late or duplicate
    const sd3_gen_params_t *p = &req->p;
    if (sd3_msg_expect(msg, "latent", SD3_F32, 4,
                       (int64_t[]){1, self->cfg.in_channels, p->height / 8, p->width / 8},
                       &err) != 0 ||
        (int)msg->step >= req->n_used) {
        s_end(self, req, SD3_EPROTO, "STEP_DONE: %s", err.code ? err.msg : "step past the end");
        return;
    }
    const int64_t lsh[4] = {1, self->cfg.in_channels, p->height / 8, p->width / 8};
    if (sd3_msg_tensor(msg, "old_denoised") &&
        sd3_msg_expect(msg, "old_denoised", SD3_F32, 4, lsh, &err) != 0) {
        s_end(self, req, SD3_EPROTO, "STEP_DONE: %s", err.msg);
        return;
    }
    s_take_tensor(msg, "latent", &req->latent); // the checkpoint
    sd3_tensor_destroy(&req->old_denoised);
    req->old_denoised = sd3_msg_take_tensor(msg, "old_denoised");
    req->steps_done = (int)msg->step;
    if (self->journal &&
        sd3_journal_checkpoint(self->journal, req->id, req->attempt, msg->step, req->latent,
                               req->old_denoised, &err) != 0)
        sd3_log_warn("controller", "req=%s journal checkpoint step=%u: %s", req->id, msg->step,
                     err.msg);
    int64_t now = sd3_now_ms();
    double secs = (double)(now - req->t_last_step_ms) / 1000.0;
    static const double bounds[SD3_WIRE_STEP_BUCKETS] = SD3_WIRE_STEP_BOUNDS;
    for (int b = 0; b < SD3_WIRE_STEP_BUCKETS; b++)
        if (secs <= bounds[b]) {
            self->step_buckets[b]++;
            break;
        }
    self->step_count++;
    self->step_seconds_sum += secs;
    self->step_ms[self->next_step_ms] = (int)(now - req->t_last_step_ms);
    self->next_step_ms = (self->next_step_ms + 1) % 64;
    self->n_step_ms += self->n_step_ms < 64;
    req->t_last_step_ms = now;
    sd3_msg_t *pg = sd3_msg_new(SD3_MSG_PROGRESS, req->id);
    if (pg) {
        pg->step = msg->step;
        pg->body_kind = SD3_WIRE_BODY_PROGRESS;
        pg->body.progress = (sd3_wire_progress_t){
            .step = msg->step,
            .steps = (uint32_t)(req->n_used - 1),
            .sigma = req->sigmas[req->start + (int)msg->step],
            .elapsed_ms = (uint64_t)(now - req->t_submit_ms),
            .seed = p->seed,
        };
        s_send_client(self, req, &pg);
    }
    if (msg->step == 1 || secs >= 1.0) // real models: every step; the tiny ones: the first
        sd3_log_info("controller", "req=%s step=%u/%d ms=%.1f since_submit_ms=%lld", req->id,
                     msg->step, req->n_used - 1, secs * 1000, (long long)(now - req->t_submit_ms));
    else
        sd3_log_debug("controller", "req=%s step=%u/%d ms=%.1f", req->id, msg->step,
                      req->n_used - 1, secs * 1000);
    if (req->steps_done == req->n_used - 1) { // sampled: the slot frees, the vae decodes
        sd3_pipeline_t *pl = sd3_sched_get(self->sched, req->pipeline);
        if (pl && req->holds_slot) {
            pl->inflight--;
            pl->completed++;
        }
        req->holds_slot = false;
        req->state = S_DECODING;
        req->task_node = -1;
        s_send_task(self, req); // no vae now: s_retry sends it when one registers
        s_dispatch(self);
    }
    self->overhead_steps++;
    self->overhead_seconds += sd3_now_s() - t0;
}

static void
s_node_msg(sd3_controller_t *self, const sd3_wire_peer_t *from, sd3_msg_t *msg)
{
    if (msg->type == SD3_MSG_REGISTER) {
        s_register(self, from, msg);
        return;
    }
    int ni = s_node_by_routing(self, from);
    sd3_err_t e = {0};
    if (ni < 0) {
        sd3_err_t cause = {0};
        sd3_err_set(&cause, SD3_ENOTFOUND, "%s from a node that has not registered",
                    sd3_msg_type_name(msg->type));
        sd3_wire_reply_error(sd3_link_socket(self->stages), from, &cause, &e);
        return;
    }
    s_node_t *node = &self->nodes[ni];
    node->last_seen_ms = sd3_now_ms();
    if (!node->alive) { // it came back before re-registering: ask it to
        sd3_err_t cause = {0};
        sd3_err_set(&cause, SD3_ENOTFOUND, "node %s was declared dead: register again",
                    node->reg.node_id);
        sd3_wire_reply_error(sd3_link_socket(self->stages), from, &cause, &e);
        return;
    }
    if (msg->type == SD3_MSG_HEARTBEAT) {
        s_heartbeat(self, ni, &msg->body.heartbeat);
        return;
    }
    sd3_request_t *req = msg->request_id[0] ? s_find(self, msg->request_id) : NULL;
    if (msg->type == SD3_MSG_ERROR) {
        bool transient = msg->status == SD3_EIO || msg->status == SD3_ETIMEDOUT ||
                         msg->status == SD3_ENOTFOUND;
        bool of_pipeline = req && (req->state == S_STARTING || req->state == S_RUNNING) &&
                           req->pipeline >= 0;
        if (msg->status == SD3_ECANCELED && req && req->task_node != ni && !of_pipeline) {
            sd3_log_debug("controller", "req=%s node=%s stopped its work", req->id,
                          node->reg.node_id);
        } else if (of_pipeline && msg->attempt != req->attempt) {
            sd3_log_debug("controller", "req=%s stale ERROR of attempt %u dropped", req->id,
                          msg->attempt);
        } else if (of_pipeline && transient && req->retries++ < S_MAX_RETRIES) {
            s_requeue_resume(self, req, msg->message);
            req->retry_at_ms = sd3_now_ms() + 250;
        } else if (req && req->task_node == ni && transient && req->retries++ < S_MAX_RETRIES) {
            node->tasks--;
            req->task_node = -1;
            req->retry_at_ms = sd3_now_ms() + 250;
        } else if (req && (req->task_node == ni || of_pipeline))
            s_end(self, req, msg->status ? msg->status : SD3_EINTERNAL, "%s: %s", node->reg.node_id,
                  msg->message);
        else
            sd3_log_warn("controller", "node=%s req=%s error=%s %s", node->reg.node_id,
                         msg->request_id[0] ? msg->request_id : "-", sd3_err_name(msg->status),
                         msg->message);
        s_dispatch(self);
        return;
    }
    if (!req) {
        sd3_log_debug("controller", "node=%s %s for a request no longer here: req=%s",
                      node->reg.node_id, sd3_msg_type_name(msg->type), msg->request_id);
        return;
    }
    sd3_err_t err = {0};
    switch (msg->type) {
    case SD3_MSG_ENCODED:
        if (req->state != S_ENCODING || req->task_node != ni)
            return;
        node->tasks--;
        req->task_node = -1;
        if (sd3_msg_expect(msg, "context", SD3_F32, 3, (int64_t[]){2, -1, self->cfg.context_in},
                           &err) != 0 ||
            sd3_msg_expect(msg, "pooled", SD3_F32, 2, (int64_t[]){2, self->cfg.adm_in}, &err) !=
                0) {
            s_end(self, req, SD3_EPROTO, "ENCODED: %s", err.msg);
            return;
        }
        s_take_tensor(msg, "context", &req->ctx2);
        s_take_tensor(msg, "pooled", &req->y2);
        if (req->latent) { // a recovered request: on from its checkpoint
            s_launch(self, req);
            return;
        }
        if (req->init_rgb) { // img2img: the vae encodes the image with the seed+1 noise
            req->state = S_VAE_ENCODING;
            s_send_task(self, req);
            return;
        }
        s_start_sampling(self, req);
        return;
    case SD3_MSG_VAE_ENCODED:
        if (req->state != S_VAE_ENCODING || req->task_node != ni)
            return;
        node->tasks--;
        req->task_node = -1;
        if (sd3_msg_expect(
                msg, "latent", SD3_F32, 4,
                (int64_t[]){1, self->cfg.in_channels, req->p.height / 8, req->p.width / 8},
                &err) != 0) {
            s_end(self, req, SD3_EPROTO, "VAE_ENCODED: %s", err.msg);
            return;
        }
        s_take_tensor(msg, "latent", &req->img_latent);
        s_start_sampling(self, req);
        return;
    case SD3_MSG_ACK:
        if (req->state == S_STARTING && msg->attempt == req->attempt && --req->pending_acks == 0) {
            if (s_send_job(self, req, 0, &err) != 0) {
                s_requeue_resume(self, req, err.msg);
                req->retry_at_ms = sd3_now_ms() + 250;
                return;
            }
            req->state = S_RUNNING;
        }
        return;
    case SD3_MSG_STEP_DONE:
        s_step_done(self, req, msg);
        return;
    case SD3_MSG_DECODED: {
        if (req->state != S_DECODING || req->task_node != ni)
            return;
        node->tasks--;
        req->task_node = -1;
        if (sd3_msg_expect(msg, "png", SD3_U8, 1, (int64_t[]){-1}, &err) != 0) {
            s_end(self, req, SD3_EPROTO, "DECODED: %s", err.msg);
            return;
        }
        sd3_msg_t *res = sd3_msg_new(SD3_MSG_RESULT, req->id);
        sd3_tensor_t *png = sd3_msg_take_tensor(msg, "png");
        if (!res || !png || sd3_msg_add_tensor(res, &png, NULL, &err) != 0) {
            sd3_msg_destroy(&res);
            sd3_tensor_destroy(&png);
            s_end(self, req, SD3_ENOMEM, "controller: out of memory");
            return;
        }
        res->step = (uint32_t)req->steps_done;
        res->body_kind = SD3_WIRE_BODY_GENERATE;
        res->body.generate = req->w;
        const sd3_tensor_t *pt = sd3_msg_tensor(res, "png");
        if (self->journal && sd3_journal_finish(self->journal, req->id, pt->data,
                                                (size_t)pt->shape[0], &err) != 0)
            sd3_log_warn("controller", "req=%s journal finish: %s", req->id, err.msg);
        sd3_log_info("controller", "req=%s done pipeline=%d steps=%d total_ms=%lld", req->id,
                     req->pipeline, req->steps_done, (long long)(sd3_now_ms() - req->t_submit_ms));
        s_send_client(self, req, &res);
        s_end(self, req, 0, "done");
        s_dispatch(self);
        return;
    }
    default:
        break;
    }
    sd3_err_t cause = {0};
    sd3_err_set(&cause, SD3_EPROTO, "the controller's stage endpoint does not take %s messages",
                sd3_msg_type_name(msg->type));
    sd3_wire_reply_error(sd3_link_socket(self->stages), from, &cause, &e);
}

// ---- timers ------------------------------------------------------------------------------

static int
s_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return x < y ? -1 : x > y;
}

// How long a running request may go without STEP_DONE: step_timeout_ms, or max(10 s, 20 x
// the median of the newest 64 step times). 0: off.
static int64_t
s_step_bound_ms(const sd3_controller_t *self)
{
    if (self->o.step_timeout_ms != 0)
        return self->o.step_timeout_ms > 0 ? self->o.step_timeout_ms : 0;
    int sorted[64], n = self->n_step_ms;
    memcpy(sorted, self->step_ms, sizeof sorted[0] * (size_t)n);
    qsort(sorted, (size_t)n, sizeof sorted[0], s_cmp_int);
    int64_t median = n ? sorted[n / 2] : 0;
    return median * 20 > 10000 ? median * 20 : 10000;
}

// A pipeline that heartbeats but does not move a request on (a hung stage, a lost hop):
// past the bound the attempt is cancelled there and resumes from its checkpoint on another
// pipeline (the failover path), at most 20 times.
// The step bound of one request: s_step_bound_ms, raised to 3x what its pipeline should take
// for a step at the request's shape with every request in flight there: the model FLOPs of
// each range (sd3_mmdit_flops, CFG batch of 2) over the rate its node measured and announced.
// --step-timeout-ms overrides.
static int64_t
s_req_step_bound_ms(const sd3_controller_t *self, const sd3_request_t *req, int64_t base)
{
    if (self->o.step_timeout_ms != 0 || req->pipeline < 0)
        return base;
    const sd3_pipeline_t *pl = sd3_sched_get(self->sched, req->pipeline);
    if (!pl)
        return base;
    const int n_img = (req->p.height / 16) * (req->p.width / 16);
    const int n_ctx = req->ctx2 ? (int)req->ctx2->shape[1] : 154;
    double ms = 0;
    for (int s = 0; s < pl->n_stages; s++) {
        const s_node_t *n = &self->nodes[pl->nodes[s]];
        if (n->hb.live.gflops <= 0)
            return base; // not measured yet: the progress rule and the floor decide
        ms += 2.0 * sd3_mmdit_flops(&self->cfg, n_img, n_ctx, (int)n->reg.layer_begin,
                                    (int)n->reg.layer_end) /
              (n->hb.live.gflops * 1e6);
    }
    int64_t derived = (int64_t)(3.0 * ms * (pl->inflight > 1 ? pl->inflight : 1));
    return derived > base ? derived : base;
}

static void
s_check_steps(sd3_controller_t *self, int64_t now)
{
    const int64_t base = s_step_bound_ms(self);
    for (int r = self->n_reqs - 1; base > 0 && r >= 0; r--) {
        sd3_request_t *req = self->reqs[r];
        const int64_t bound = s_req_step_bound_ms(self, req, base);
        if ((req->state != S_RUNNING && req->state != S_STARTING) ||
            now - req->t_last_step_ms <= bound)
            continue;
        // A pipeline whose nodes finish units, or compute within their own expectations,
        // is slow, not hung: a step of a real model may take minutes. (A unit far past its
        // expectation makes its node hung: s_heartbeat.)
        int64_t last = req->t_last_step_ms;
        const sd3_pipeline_t *pl =
            req->pipeline >= 0 ? sd3_sched_get(self->sched, req->pipeline) : NULL;
        for (int s = 0; pl && s < pl->n_stages; s++)
            if (self->nodes[pl->nodes[s]].last_progress_ms > last)
                last = self->nodes[pl->nodes[s]].last_progress_ms;
        if (now - last <= bound)
            continue;
        char why[160];
        snprintf(why, sizeof why, "pipeline=%d made no step for %lld ms (bound %lld ms)",
                 req->pipeline, (long long)(now - req->t_last_step_ms), (long long)bound);
        self->step_timeouts++;
        if (++req->retries > S_MAX_RETRIES) {
            s_end(self, req, SD3_ETIMEDOUT, "%s, 20 times", why);
            continue;
        }
        int hung = req->pipeline;
        self->failovers++;
        s_requeue_resume(self, req, why);
        req->avoid_pipeline = hung;
    }
}

static void
s_timers(sd3_controller_t *self)
{
    int64_t now = sd3_now_ms();
    if (now - self->last_timer_ms < 50)
        return;
    self->last_timer_ms = now;
    if (self->form_due_ms && now >= self->form_due_ms) {
        self->form_due_ms = 0;
        s_form(self);
    }
    if (self->journal && now - self->last_prune_ms > 60000) { // ended requests kept 1 h
        sd3_err_t e = {0};
        self->last_prune_ms = now;
        if (sd3_journal_prune(self->journal, sd3_unix_ms() - 3600 * 1000, &e) < 0)
            sd3_log_warn("controller", "journal prune: %s", e.msg);
    }
    int node_to = self->o.node_timeout_ms > 0 ? self->o.node_timeout_ms : 5000;
    int client_to = self->o.client_timeout_ms > 0 ? self->o.client_timeout_ms : 10000;
    for (int i = 0; i < self->n_nodes; i++) {
        s_node_t *n = &self->nodes[i];
        if (!n->alive || now - n->last_seen_ms <= node_to)
            continue;
        n->alive = false;
        sd3_log_warn("controller", "node=%s dead: no heartbeat for %lld ms", n->reg.node_id,
                     (long long)(now - n->last_seen_ms));
        s_node_lost(self, i, "node stopped responding");
        s_form(self);
    }
    s_check_steps(self, now);
    for (int r = self->n_reqs - 1; r >= 0; r--) {
        sd3_request_t *req = self->reqs[r];
        if (req->deadline_ms && now > req->deadline_ms)
            s_end(self, req, SD3_ETIMEDOUT, "deadline passed (%s, step %d of %d)",
                  s_state_names[req->state], req->steps_done, req->p.steps);
        else if (now - req->client_seen_ms > client_to)
            s_end(self, req, SD3_ECANCELED, "the client went away (no keep-alive for %d ms)",
                  client_to);
    }
    s_dispatch(self);
}

// ---- status ------------------------------------------------------------------------------

static void
s_fill_status(sd3_controller_t *self, sd3_wire_status_t *st)
{
    int64_t now = sd3_now_ms();
    memset(st, 0, sizeof *st);
    st->queue_depth = (uint32_t)sd3_queue_size(self->queue);
    st->queue_capacity = (uint32_t)sd3_queue_capacity(self->queue);
    st->completed = self->completed;
    st->failed = self->failed;
    st->uptime_ms = (uint64_t)(now - self->start_ms);
    for (int i = 0; i < self->n_nodes; i++) {
        const s_node_t *n = &self->nodes[i];
        sd3_wire_node_info_t *o = &st->nodes[st->n_nodes++];
        o->node = n->reg;
        o->alive = n->alive;
        o->inflight = n->reg.role == SD3_WIRE_ROLE_MMDIT ? n->hb.inflight : n->tasks;
        o->last_seen_ms = (uint64_t)(now - n->last_seen_ms);
        o->registered_ms = (uint64_t)(now - n->registered_at_ms);
        o->hung = n->hung;
        o->link = SD3_WIRE_LINK_ZMQ;
        o->bytes_sent = n->hb.bytes_sent;
        o->bytes_received = n->hb.bytes_received;
        o->batches = n->hb.batches;
        o->batched_steps = n->hb.batched_steps;
        st->cache_hits += n->hb.cache_hits;
        st->cache_misses += n->hb.cache_misses;
    }
    for (int p = 0; p < sd3_sched_count(self->sched) && st->n_pipelines < SD3_WIRE_MAX_PIPELINES;
         p++) {
        const sd3_pipeline_t *pl = sd3_sched_get(self->sched, p);
        if (!pl->alive)
            continue;
        sd3_wire_pipeline_info_t *o = &st->pipelines[st->n_pipelines++];
        o->id = (uint32_t)pl->id;
        o->n_stages = pl->n_stages;
        for (int s = 0; s < pl->n_stages; s++)
            snprintf(o->node_ids[s], sizeof o->node_ids[s], "%s",
                     self->nodes[pl->nodes[s]].reg.node_id);
        o->inflight = (uint32_t)pl->inflight;
        o->max_inflight = (uint32_t)pl->max_inflight;
    }
    for (int r = 0; r < self->n_reqs; r++)
        st->inflight += self->reqs[r]->state != S_QUEUED;
    st->step_count = self->step_count;
    st->step_seconds_sum = self->step_seconds_sum;
    st->failovers = self->failovers;
    st->step_timeouts = self->step_timeouts;
    st->nodes_hung = self->nodes_hung;
    memcpy(st->step_buckets, self->step_buckets, sizeof st->step_buckets);
}

// ---- recovery from the journal ---------------------------------------------------------

// One unfinished request of the journal back in memory, as attempt + 1: no checkpoint ->
// queued as new; every step done -> DECODE; else queued for its conditioning (ENCODE), then
// JOBs from the checkpoint (s_launch). Its client is the routing id it came from.
static int
s_recover_one(void *user, const sd3_journal_entry_t *e, sd3_err_t *err)
{
    sd3_controller_t *self = user;
    sd3_request_t *req = calloc(1, sizeof *req);
    sd3_err_t why = {0};
    if (!req)
        return sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
    snprintf(req->id, sizeof req->id, "%s", e->request_id);
    req->client.routing_id_len =
        e->client_id_len < SD3_WIRE_ROUTING_ID_MAX ? e->client_id_len : SD3_WIRE_ROUTING_ID_MAX;
    memcpy(req->client.routing_id, e->client_id, req->client.routing_id_len);
    req->pipeline = req->task_node = req->avoid_pipeline = -1;
    req->attempt = e->attempt + 1;
    req->w = *e->request;
    if (sd3_gen_params_from_wire(&req->p, &req->w, &self->cfg, &why) != 0 ||
        sd3_gen_params_check(&req->p, &self->cfg, &why) != 0 || s_schedule(req, &why) != 0)
        goto refuse;
    free(req->p.model_name);
    req->p.model_name = strdup(self->arch);
    if (e->init_image && !(req->init_rgb = sd3_tensor_clone(e->init_image))) {
        sd3_err_set(&why, SD3_ENOMEM, "out of memory");
        goto refuse;
    }
    if (e->latent) {
        if ((int)e->step >= req->n_used) {
            sd3_err_set(&why, SD3_EFORMAT, "checkpoint step %u past the request's %d steps",
                        e->step, req->n_used - 1);
            goto refuse;
        }
        if (!(req->latent = s_clone_named(e->latent, "latent")) ||
            (e->old_denoised && !(req->old_denoised = s_clone_named(e->old_denoised, "old_denoised")))) {
            sd3_err_set(&why, SD3_ENOMEM, "out of memory");
            goto refuse;
        }
        req->steps_done = (int)e->step;
    }
    int64_t now = sd3_now_ms();
    req->t_submit_ms = req->client_seen_ms = now;
    if (self->n_reqs == self->cap_reqs) {
        int cap = self->cap_reqs ? self->cap_reqs * 2 : 64;
        sd3_request_t **r = realloc(self->reqs, sizeof *r * (size_t)cap);
        if (!r) {
            s_req_free(&req);
            return sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
        }
        self->reqs = r;
        self->cap_reqs = cap;
    }
    if (req->latent && req->steps_done == req->n_used - 1) {
        req->state = S_DECODING; // s_retry sends DECODE once a vae is there
    } else if (sd3_queue_push(self->queue, req, &why) != 0) {
        goto refuse;
    }
    self->reqs[self->n_reqs++] = req;
    sd3_log_info("controller", "req=%s recovered from the journal step=%u attempt=%u state=%s",
                 req->id, e->step, req->attempt, s_state_names[req->state]);
    return 0;
refuse:
    sd3_log_warn("controller", "req=%s not recovered: %s", e->request_id, why.msg);
    sd3_err_t je = {0};
    sd3_journal_fail(self->journal, e->request_id, why.code ? why.code : SD3_EFORMAT, why.msg, &je);
    s_req_free(&req);
    return 0;
}

// ---- object and loop ---------------------------------------------------------------------

sd3_controller_t *
sd3_controller_new(const sd3_controller_opts_t *opts, sd3_err_t *err)
{
    sd3_controller_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
        return NULL;
    }
    self->o = *opts;
    if (!opts->listen || !opts->stage_listen || !opts->model_path) {
        sd3_err_set(err, SD3_EINVAL, "controller: needs --listen, --stage-listen and --model");
        goto fail;
    }
    if (!(self->model = sd3_model_open(opts->model_path, err)) ||
        !(self->w_mmdit = sd3_weights_open(self->model, SD3_COMP_MMDIT, err)) ||
        sd3_mmdit_config_detect(self->w_mmdit, &self->cfg, err) != 0)
        goto fail;
    self->arch = sd3_mmdit_config_name(&self->cfg);
    if (!(self->sched = sd3_sched_new(opts->max_inflight)) ||
        !(self->queue =
              sd3_queue_new(opts->queue_capacity > 0 ? (size_t)opts->queue_capacity : 64))) {
        sd3_err_set(err, SD3_ENOMEM, "controller: out of memory");
        goto fail;
    }
    self->ctx = opts->zmq_ctx;
    if (!self->ctx) {
        if (!(self->ctx = zmq_ctx_new())) {
            sd3_err_set(err, SD3_EIO, "controller: zmq context: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        self->own_ctx = true;
    }
    sd3_link_opts_t lo = {.hwm = 1000, .send_timeout_ms = 100, .curve = opts->curve};
    if (!(self->clients = sd3_link_new_serve(self->ctx, opts->listen, &lo, err)) ||
        !(self->stages = sd3_link_new_serve(self->ctx, opts->stage_listen, &lo, err)))
        goto fail;
    if (opts->local_listen && zmq_bind(sd3_link_socket(self->clients), opts->local_listen) != 0) {
        sd3_err_set(err, SD3_EIO, "controller: bind %s: %s", opts->local_listen,
                    zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (opts->addr_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", opts->addr_file);
        FILE *f = fopen(tmp, "w");
        if (!f ||
            fprintf(f, "client=%s\nstages=%s\n", sd3_link_endpoint(self->clients),
                    sd3_link_endpoint(self->stages)) < 0 ||
            fclose(f) != 0 || rename(tmp, opts->addr_file) != 0) {
            sd3_err_set(err, SD3_EIO, "%s: cannot write the address file", opts->addr_file);
            goto fail;
        }
    }
    if (opts->journal_path) {
        int n_refused = 0;
        if (!(self->journal = sd3_journal_open(opts->journal_path, err)) ||
            sd3_journal_recover(self->journal, s_recover_one, self, &n_refused, err) != 0)
            goto fail;
        sd3_log_info("controller", "journal=%s recovered=%d refused=%d", opts->journal_path,
                     self->n_reqs, n_refused);
    }
    self->start_ms = sd3_now_ms();
    sd3_log_info("controller", "client=%s stages=%s model=%s arch=%s depth=%d queue=%zu",
                 sd3_link_endpoint(self->clients), sd3_link_endpoint(self->stages),
                 opts->model_path, self->arch, self->cfg.depth, sd3_queue_capacity(self->queue));
    return self;
fail:
    sd3_controller_destroy(&self);
    return NULL;
}

void
sd3_controller_destroy(sd3_controller_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_controller_t *self = *self_p;
    sd3_journal_destroy(&self->journal);
    for (int i = 0; i < self->n_reqs; i++)
        s_req_free(&self->reqs[i]);
    free(self->reqs);
    for (int i = 0; i < self->n_outboxes; i++)
        s_outbox_free(&self->outboxes[i]);
    free(self->outboxes);
    sd3_queue_destroy(&self->queue);
    sd3_sched_destroy(&self->sched);
    sd3_link_destroy(&self->clients);
    sd3_link_destroy(&self->stages);
    if (self->own_ctx && self->ctx)
        zmq_ctx_term(self->ctx);
    sd3_weights_destroy(&self->w_mmdit);
    sd3_model_destroy(&self->model);
    free(self);
    *self_p = NULL;
}

const char *
sd3_controller_client_endpoint(const sd3_controller_t *self)
{
    return sd3_link_endpoint(self->clients);
}

const char *
sd3_controller_stage_endpoint(const sd3_controller_t *self)
{
    return sd3_link_endpoint(self->stages);
}

void
sd3_controller_overhead(const sd3_controller_t *self, uint64_t *steps, double *seconds)
{
    *steps = self->overhead_steps;
    *seconds = self->overhead_seconds;
}

int
sd3_controller_run(sd3_controller_t *self, volatile sig_atomic_t *stop, sd3_err_t *err)
{
    while (!(stop && *stop)) {
        zmq_pollitem_t items[2] = {
            {sd3_link_socket(self->stages), 0, ZMQ_POLLIN, 0},
            {sd3_link_socket(self->clients), 0, ZMQ_POLLIN, 0},
        };
        // Clients with messages waiting are retried sooner.
        int rc = zmq_poll(items, 2, self->n_outboxes ? 10 : 50);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return sd3_err_set(err, SD3_EIO, "controller: poll: %s", zmq_strerror(zmq_errno()));
        }
        // Stage traffic first: it frees slots and finishes requests.
        for (int burst = 0; burst < 64 && (items[0].revents & ZMQ_POLLIN); burst++) {
            sd3_msg_t *msg = NULL;
            sd3_wire_peer_t from;
            sd3_err_t e = {0};
            int r = sd3_link_recv(self->stages, 0, &from, &msg, &e);
            if (r == SD3_ETIMEDOUT)
                break;
            if (r == 0)
                s_node_msg(self, &from, msg);
            sd3_msg_destroy(&msg);
        }
        for (int burst = 0; burst < 64 && (items[1].revents & ZMQ_POLLIN); burst++) {
            sd3_msg_t *msg = NULL;
            sd3_wire_peer_t from;
            sd3_err_t e = {0};
            int r = sd3_link_recv(self->clients, 0, &from, &msg, &e);
            if (r == SD3_ETIMEDOUT)
                break;
            if (r == 0)
                s_client_msg(self, &from, msg);
            sd3_msg_destroy(&msg);
        }
        s_timers(self);
        s_flush_outboxes(self);
    }
    sd3_log_info("controller",
                 "stopping completed=%llu failed=%llu steps=%llu progress_dropped=%llu "
                 "answers_dropped=%llu step_timeouts=%llu overhead_us_per_step=%.1f",
                 (unsigned long long)self->completed, (unsigned long long)self->failed,
                 (unsigned long long)self->overhead_steps,
                 (unsigned long long)self->progress_dropped,
                 (unsigned long long)self->results_dropped,
                 (unsigned long long)self->step_timeouts,
                 self->overhead_steps ? self->overhead_seconds * 1e6 / (double)self->overhead_steps
                                      : 0.0);
    return 0;
}
