/*  sd3_heartbeat - a node's REGISTER and HEARTBEAT messages to the controller
 *
 *  A node sends REGISTER (role, node id, data address, layer range, backend) every second
 *  until the controller answers ACK, then a HEARTBEAT every heartbeat_ms with its in-flight
 *  count and uptime. The controller declares a node dead when heartbeats stop, and answers
 *  a heartbeat from a node it does not know (it restarted) with ERROR ENOTFOUND, upon which
 *  the node registers again (sd3_heartbeat_reset).  */
#include "sd3_log.h"
#include "sd3_node.h"

#include <stdio.h>
#include <string.h>

// While loading: the page-in's bytes so far as permille (999 and up: warming up). Under mu.
static void
s_load_progress(sd3_node_t *self)
{
    uint64_t done = __atomic_load_n(&self->sh.load_done, __ATOMIC_RELAXED);
    if (self->sh.live.state == SD3_WIRE_NODE_LOADING && self->sh.live.load_permille < 999 &&
        self->sh.load_total && done)
        self->sh.live.load_permille = (uint32_t)(done * 998 / self->sh.load_total);
}

static void
s_register(sd3_node_t *self, int64_t now)
{
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_REGISTER, NULL);
    if (!msg)
        return;
    sd3_wire_register_t *r = &msg->body.reg;
    msg->body_kind = SD3_WIRE_BODY_REGISTER;
    r->role = self->o.role;
    snprintf(r->node_id, sizeof r->node_id, "%s", self->node_id);
    snprintf(r->address, sizeof r->address, "%s", self->address);
    if (self->o.role == SD3_WIRE_ROLE_MMDIT) {
        r->layer_begin = (uint32_t)self->o.layer_begin;
        r->layer_end = (uint32_t)self->o.layer_end;
    }
    r->depth = self->have_cfg ? (uint32_t)self->cfg.depth : 0;
    snprintf(r->backend, sizeof r->backend, "%s", self->be->ops->name);
    snprintf(r->device, sizeof r->device, "%s", self->be->ops->name);
    snprintf(r->model_id, sizeof r->model_id, "%s",
             self->have_cfg ? sd3_mmdit_config_name(&self->cfg) : "");
    r->max_batch = 1;
    pthread_mutex_lock(&self->sh.mu);
    s_load_progress(self);
    r->live = self->sh.live;
    pthread_mutex_unlock(&self->sh.mu);
    const sd3_codec_opts_t *co = &self->o.codec;
    snprintf(r->codec, sizeof r->codec, "%s%s", sd3_codec_name(co->codec),
             co->wire_dtype == SD3_BF16  ? "/bf16"
             : co->wire_dtype == SD3_F16 ? "/f16"
                                         : "");
    sd3_err_t err = {0};
    if (sd3_node_send_ctrl(self, &msg, &err) != 0)
        sd3_log_warn("node", "node=%s register not sent: %s", self->node_id, err.msg);
    self->last_reg_ms = now;
}

void
sd3_heartbeat_tick(sd3_node_t *self)
{
    int64_t now = sd3_now_ms();
    int period = self->o.heartbeat_ms > 0 ? self->o.heartbeat_ms : 500;
    if (!self->registered) {
        if (!self->last_reg_ms || now - self->last_reg_ms >= 1000)
            s_register(self, now);
        return;
    }
    // A change of state (loading progress, ready) goes out at once, not a period later.
    pthread_mutex_lock(&self->sh.mu);
    s_load_progress(self);
    bool changed = self->sh.live.state != self->hb_state ||
                   self->sh.live.load_permille != self->hb_permille;
    self->hb_state = self->sh.live.state;
    self->hb_permille = self->sh.live.load_permille;
    pthread_mutex_unlock(&self->sh.mu);
    if (changed)
        self->last_hb_ms = 0;
    if (now - self->last_hb_ms < period)
        return;
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_HEARTBEAT, NULL);
    if (!msg)
        return;
    msg->body_kind = SD3_WIRE_BODY_HEARTBEAT;
    sd3_wire_heartbeat_t *hb = &msg->body.heartbeat;
    snprintf(hb->node_id, sizeof hb->node_id, "%s", self->node_id);
    pthread_mutex_lock(&self->sh.mu);
    hb->inflight = self->sh.inflight;
    hb->live = self->sh.live;
    if (self->sh.unit_start_ms)
        hb->live.busy_ms = (uint64_t)(now - self->sh.unit_start_ms);
    pthread_mutex_unlock(&self->sh.mu);
    hb->uptime_ms = (uint64_t)(now - self->start_ms);
    if (self->enc) { // the cache has its own lock
        sd3_embcache_stats_t cs;
        sd3_enc_stage_stats(self->enc, &cs);
        __atomic_store_n(&self->stats.cache_hits, cs.hits, __ATOMIC_RELAXED);
        __atomic_store_n(&self->stats.cache_misses, cs.misses, __ATOMIC_RELAXED);
    }
    hb->bytes_sent = SD3_NODE_STAT_GET(self, bytes_out);
    hb->bytes_received = SD3_NODE_STAT_GET(self, bytes_in);
    hb->cache_hits = SD3_NODE_STAT_GET(self, cache_hits);
    hb->batches = SD3_NODE_STAT_GET(self, batches);
    hb->batched_steps = SD3_NODE_STAT_GET(self, batched_steps);
    hb->cache_misses = SD3_NODE_STAT_GET(self, cache_misses);
    sd3_err_t err = {0};
    if (sd3_node_send_ctrl(self, &msg, &err) != 0)
        sd3_log_debug("node", "node=%s heartbeat not sent: %s", self->node_id, err.msg);
    self->last_hb_ms = now;
}

void
sd3_heartbeat_reset(sd3_node_t *self)
{
    if (self->registered)
        sd3_log_warn("node", "node=%s the controller does not know us: registering again",
                     self->node_id);
    self->registered = false;
    self->last_reg_ms = 0;
}
