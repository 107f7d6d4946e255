/*  sd3_stage_host - message handlers around the stage objects of sd3_stage.h
 *
 *  encoder  ENCODE {GenerateRequest}       -> ENCODED "context" [2, L, Cin], "pooled" [2, adm]
 *                                             (cond first, then the negative prompt)
 *  mmdit    JOB {Job (+ "latent", "context", "pooled" for the first and last range)}
 *           first range, step i: embed -> blocks -> STEP "x" [2,N,C] "ctx" [2,L,C] "c" [2,C]
 *           (+ "sx", "sctx", "sc" [1,...] when the skip-layer pass runs) to the next range
 *           other ranges: STEP -> blocks -> STEP on; the last: final + guidance + sampler step
 *           -> LATENT "latent" [1,Z,h,w] (step i+1) to the first range and STEP_DONE to the
 *           controller. One range alone does all three and sends LATENT to itself.
 *  vae      DECODE "latent" {GenerateRequest} -> DECODED "png" U8 [n] (parameters text chunk)
 *           VAE_ENCODE "image" U8 [H,W,3], "noise" [1,Z,h,w] -> VAE_ENCODED "latent"
 *  any      CANCEL: the request is forgotten; its later messages are dropped.
 *
 *  These are the calls of sd3_local (sd3_local.c s_step and the decode) in the same order on
 *  the same data, so the bits match a one-process run. A message that does not fit (shape,
 *  unknown request, wrong role) is answered with ERROR naming the problem.  */
#include "sd3_log.h"
#include "sd3_node.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- request table -----------------------------------------------------------------------

static sd3_node_req_t *
s_find(sd3_node_t *self, const char *id)
{
    for (int i = 0; i < SD3_NODE_MAX_REQS; i++)
        if (self->reqs[i].used && !strcmp(self->reqs[i].id, id))
            return &self->reqs[i];
    return NULL;
}

static bool
s_recent(const sd3_node_t *self, const char *id)
{
    for (int i = 0; i < SD3_NODE_RECENT; i++)
        if (self->recent[i][0] && !strcmp(self->recent[i], id))
            return true;
    return false;
}

static void
s_remember(sd3_node_t *self, const char *id)
{
    snprintf(self->recent[self->recent_next], SD3_WIRE_ID_MAX, "%s", id);
    self->recent_next = (self->recent_next + 1) % SD3_NODE_RECENT;
}

static void
s_close(sd3_node_t *self, sd3_node_req_t *req)
{
    s_remember(self, req->id);
    sd3_dit_job_destroy(&req->job);
    memset(req, 0, sizeof *req);
}

void
sd3_stage_host_clear(sd3_node_t *self)
{
    for (int i = 0; i < SD3_NODE_MAX_REQS; i++)
        if (self->reqs[i].used)
            s_close(self, &self->reqs[i]);
}

// ERROR about request id to the controller (when it concerns a request) and to `from`.
static void
s_fail(sd3_node_t *self, const sd3_wire_peer_t *from, const char *id, uint32_t step,
       const sd3_err_t *cause)
{
    sd3_log_error("node", "node=%s req=%s step=%u error=%s %s", self->node_id, id[0] ? id : "-",
                  step, sd3_err_name(cause->code), cause->msg);
    if (from) {
        sd3_err_t e = {0};
        sd3_wire_reply_error(sd3_link_socket(self->data), from, cause, &e);
    }
    sd3_node_req_t *req = id[0] ? s_find(self, id) : NULL;
    if (!from || req) {
        sd3_msg_t *msg = sd3_msg_new_error(id, step, cause);
        sd3_err_t e = {0};
        if (msg && req)
            msg->attempt = req->attempt; // the controller drops errors of older attempts
        if (msg)
            sd3_node_send_ctrl(self, &msg, &e);
    }
    if (req)
        s_close(self, req);
}

// A task of the encoder or the vae (one request) begins: heartbeats show it.
static void
s_task_begin(sd3_node_t *self, const sd3_msg_t *msg, int units)
{
    const char *ids[1] = {msg->request_id};
    const uint32_t att[1] = {msg->attempt};
    sd3_node_work_begin(self, ids, att, 1, 0, units);
}

// Work stopped by its progress hook (cancelled, superseded, the node stopping) is dropped
// without an ERROR: whoever stopped it knows.
static bool
s_stopped(sd3_node_t *self, const char *id, const sd3_err_t *err)
{
    if (err->code != SD3_ECANCELED)
        return false;
    sd3_log_info("node", "node=%s req=%s stopped at a unit boundary: %s", self->node_id, id,
                 err->msg);
    return true;
}

// VAE model FLOPs per output pixel, decode (an estimate for the progress expectations).
#define S_VAE_FLOPS_PER_PIXEL 2.4e6

// Appends a host copy of backend tensor t under `name` (borrowed string literal).
static int
s_add_download(sd3_node_t *self, sd3_msg_t *msg, const sd3_tensor_t *t, const char *name,
               sd3_err_t *err)
{
    sd3_tensor_t *h = sd3_tensor_new_err(SD3_F32, t->ndim, t->shape, name, err);
    if (!h)
        return err->code;
    int rc = self->be->ops->download(self->be, h, t, err);
    if (rc == 0) {
        h->name = name;
        rc = sd3_msg_add_tensor(msg, &h, &self->o.codec, err);
    }
    sd3_tensor_destroy(&h);
    return rc;
}

// Appends a host copy of host tensor t under name.
static int
s_add_clone(sd3_node_t *self, sd3_msg_t *msg, const sd3_tensor_t *t, const char *name,
            sd3_err_t *err)
{
    sd3_tensor_t *h = sd3_tensor_clone(t);
    if (!h)
        return sd3_err_set(err, SD3_ENOMEM, "node: out of memory");
    h->name = name;
    int rc = sd3_msg_add_tensor(msg, &h, &self->o.codec, err);
    sd3_tensor_destroy(&h);
    return rc;
}

// A backend tensor holding host tensor t (the receiving end of s_add_download).
static sd3_tensor_t *
s_upload(sd3_node_t *self, const sd3_tensor_t *t, sd3_err_t *err)
{
    sd3_tensor_t *d = self->be->ops->tensor_new(self->be, SD3_F32, t->ndim, t->shape, err);
    if (d && self->be->ops->upload(self->be, d, t, err) != 0)
        self->be->ops->tensor_free(self->be, &d);
    return d;
}

// ---- encoder -----------------------------------------------------------------------------

static sd3_tensor_t *
s_stack2(const sd3_tensor_t *a, const sd3_tensor_t *b, const char *name, sd3_err_t *err)
{
    int64_t shape[SD3_MAX_DIM];
    memcpy(shape, a->shape, sizeof shape);
    shape[0] = 2;
    sd3_tensor_t *t = sd3_tensor_new_err(SD3_F32, a->ndim, shape, name, err);
    if (t) {
        size_t half = sd3_tensor_nbytes(a);
        memcpy(t->data, a->data, half);
        memcpy((char *)t->data + half, b->data, half);
        t->name = name;
    }
    return t;
}

static void
s_encode(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    sd3_tensor_t *cctx = NULL, *cy = NULL, *uctx = NULL, *uy = NULL, *ctx2 = NULL, *y2 = NULL;
    sd3_msg_t *out = NULL;
    sd3_err_t err = {0};
    const sd3_wire_generate_t *w = &msg->body.generate;
    int64_t t0 = sd3_now_ms();
    s_task_begin(self, msg, 3);
    if (sd3_enc_stage_encode(self->enc, w->prompt, w->no_t5, (int)w->t5_len, self->cfg.context_in,
                             &cctx, &cy, &err) != 0 ||
        sd3_enc_stage_encode(self->enc, w->negative, w->no_t5, (int)w->t5_len, self->cfg.context_in,
                             &uctx, &uy, &err) != 0)
        goto fail;
    if (sd3_tensor_expect(uctx, "negative prompt context", SD3_F32, 3, cctx->shape, &err) != 0 ||
        sd3_tensor_expect(uy, "negative prompt pooled", SD3_F32, 2, cy->shape, &err) != 0)
        goto fail;
    if (!(ctx2 = s_stack2(cctx, uctx, "context", &err)) || !(y2 = s_stack2(cy, uy, "pooled", &err)))
        goto fail;
    if (!(out = sd3_msg_new(SD3_MSG_ENCODED, msg->request_id))) {
        sd3_err_set(&err, SD3_ENOMEM, "encoder: out of memory");
        goto fail;
    }
    if (sd3_msg_add_tensor(out, &ctx2, &self->o.codec, &err) != 0 ||
        sd3_msg_add_tensor(out, &y2, &self->o.codec, &err) != 0)
        goto fail;
    sd3_embcache_stats_t cs;
    sd3_enc_stage_stats(self->enc, &cs);
    __atomic_store_n(&self->stats.cache_hits, cs.hits, __ATOMIC_RELAXED);
    __atomic_store_n(&self->stats.cache_misses, cs.misses, __ATOMIC_RELAXED);
    sd3_log_info("encoder", "req=%s encoded ms=%lld cache_hits=%llu cache_misses=%llu",
                 msg->request_id, (long long)(sd3_now_ms() - t0), (unsigned long long)cs.hits,
                 (unsigned long long)cs.misses);
    if (sd3_node_send_ctrl(self, &out, &err) != 0)
        sd3_log_error("encoder", "req=%s ENCODED not sent: %s", msg->request_id, err.msg);
    goto done;
fail:
    if (!s_stopped(self, msg->request_id, &err))
        s_fail(self, from, msg->request_id, 0, &err);
done:
    sd3_node_work_end(self);
    sd3_msg_destroy(&out);
    sd3_tensor_t **all[] = {&cctx, &cy, &uctx, &uy, &ctx2, &y2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_tensor_destroy(all[i]);
}

// ---- vae ---------------------------------------------------------------------------------

static void
s_decode(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    sd3_gen_params_t p;
    sd3_tensor_t *rgb = NULL, *png_t = NULL;
    uint8_t *png = NULL;
    size_t png_size = 0;
    char *infotext = NULL;
    sd3_msg_t *out = NULL;
    sd3_err_t err = {0};
    int64_t t0 = sd3_now_ms();
    sd3_gen_params_init(&p, NULL);
    if (sd3_msg_expect(msg, "latent", SD3_F32, 4, (int64_t[]){1, 16, -1, -1}, &err) != 0)
        goto fail;
    if (msg->body_kind == SD3_WIRE_BODY_GENERATE) {
        sd3_gen_params_fini(&p);
        if (sd3_gen_params_from_wire(&p, &msg->body.generate, self->have_cfg ? &self->cfg : NULL,
                                     &err) != 0)
            goto fail;
        if (!(infotext = sd3_gen_params_infotext(&p))) {
            sd3_err_set(&err, SD3_ENOMEM, "vae: out of memory");
            goto fail;
        }
    }
    const sd3_tensor_t *lat = sd3_msg_tensor(msg, "latent");
    s_task_begin(self, msg, 1);
    if (sd3_node_work_unit(self, 0, S_VAE_FLOPS_PER_PIXEL * 64.0 * (double)lat->shape[2] *
                                         (double)lat->shape[3]) != 0) {
        sd3_err_set(&err, SD3_ECANCELED, "vae: stopped before the decode");
        goto fail;
    }
    if (sd3_vae_stage_decode(self->vae, lat, &self->o.vae_tile, infotext, &rgb, &png, &png_size,
                             &err) != 0)
        goto fail;
    sd3_node_work_unit(self, 1, 0);
    if (!(png_t = sd3_tensor_new_err(SD3_U8, 1, (int64_t[]){(int64_t)png_size}, "png", &err)))
        goto fail;
    memcpy(png_t->data, png, png_size);
    png_t->name = "png";
    if (!(out = sd3_msg_new(SD3_MSG_DECODED, msg->request_id))) {
        sd3_err_set(&err, SD3_ENOMEM, "vae: out of memory");
        goto fail;
    }
    if (sd3_msg_add_tensor(out, &png_t, NULL, &err) != 0)
        goto fail;
    sd3_log_info("vae", "req=%s decoded bytes=%zu ms=%lld", msg->request_id, png_size,
                 (long long)(sd3_now_ms() - t0));
    if (sd3_node_send_ctrl(self, &out, &err) != 0)
        sd3_log_error("vae", "req=%s DECODED not sent: %s", msg->request_id, err.msg);
    goto done;
fail:
    if (!s_stopped(self, msg->request_id, &err))
        s_fail(self, from, msg->request_id, 0, &err);
done:
    sd3_node_work_end(self);
    sd3_msg_destroy(&out);
    free(png);
    free(infotext);
    sd3_tensor_destroy(&rgb);
    sd3_tensor_destroy(&png_t);
    sd3_gen_params_fini(&p);
}

static void
s_vae_encode(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    sd3_tensor_t *latent = NULL;
    sd3_msg_t *out = NULL;
    sd3_err_t err = {0};
    if (sd3_msg_expect(msg, "image", SD3_U8, 3, (int64_t[]){-1, -1, 3}, &err) != 0)
        goto fail;
    const sd3_tensor_t *img = sd3_msg_tensor(msg, "image");
    const sd3_tensor_t *noise = sd3_msg_tensor(msg, "noise");
    if (img->shape[0] % 8 || img->shape[1] % 8 || img->shape[0] == 0 || img->shape[1] == 0) {
        sd3_err_set(&err, SD3_EINVAL, "vae: image %lldx%lld is not a multiple of 8",
                    (long long)img->shape[1], (long long)img->shape[0]);
        goto fail;
    }
    if (noise &&
        sd3_msg_expect(msg, "noise", SD3_F32, 4,
                       (int64_t[]){1, 16, img->shape[0] / 8, img->shape[1] / 8}, &err) != 0)
        goto fail;
    s_task_begin(self, msg, 1);
    if (sd3_node_work_unit(self, 0, 0.5 * S_VAE_FLOPS_PER_PIXEL * (double)img->shape[0] *
                                         (double)img->shape[1]) != 0) {
        sd3_err_set(&err, SD3_ECANCELED, "vae: stopped before the encode");
        goto fail;
    }
    if (sd3_vae_stage_encode(self->vae, img, noise, &latent, &err) != 0)
        goto fail;
    sd3_node_work_unit(self, 1, 0);
    latent->name = "latent";
    if (!(out = sd3_msg_new(SD3_MSG_VAE_ENCODED, msg->request_id))) {
        sd3_err_set(&err, SD3_ENOMEM, "vae: out of memory");
        goto fail;
    }
    if (sd3_msg_add_tensor(out, &latent, &self->o.codec, &err) != 0)
        goto fail;
    if (sd3_node_send_ctrl(self, &out, &err) != 0)
        sd3_log_error("vae", "req=%s VAE_ENCODED not sent: %s", msg->request_id, err.msg);
    goto done;
fail:
    if (!s_stopped(self, msg->request_id, &err))
        s_fail(self, from, msg->request_id, 0, &err);
done:
    sd3_node_work_end(self);
    sd3_msg_destroy(&out);
    sd3_tensor_destroy(&latent);
}

// ---- mmdit -------------------------------------------------------------------------------

// One step of one request between its arrival and its blocks: the activations entering
// this range (and the skip-layer pass's, when it runs) and where an error goes.
typedef struct {
    sd3_node_req_t *req;
    const sd3_wire_peer_t *from; // a peer's message, or NULL (errors to the controller only)
    int step;
    sd3_mmdit_act_t act, skip;
} s_work_t;

// The n steps of g begin their blocks (one merged batch, or one step): heartbeats show it,
// and the block hook reads the shape for its expectations.
static void
s_busy(sd3_node_t *self, const s_work_t *g, int n, const sd3_mmdit_act_t *act)
{
    const char *ids[SD3_NODE_MAX_BATCH];
    uint32_t att[SD3_NODE_MAX_BATCH];
    for (int i = 0; i < n && i < SD3_NODE_MAX_BATCH; i++) {
        ids[i] = g[i].req->id;
        att[i] = g[i].req->attempt;
    }
    sd3_node_work_begin(self, ids, att, n, g[0].step, self->o.layer_end - self->o.layer_begin);
    self->work.batch = act->batch;
    self->work.n_img = (int64_t)act->grid_h * act->grid_w;
    self->work.n_ctx = act->n_ctx;
}

static void
s_work_fini(sd3_node_t *self, s_work_t *w)
{
    sd3_mmdit_act_fini(self->be, &w->act);
    sd3_mmdit_act_fini(self->be, &w->skip);
}

// Sends the activations of step `step` to the next range.
static int
s_send_step(sd3_node_t *self, sd3_node_req_t *req, int step, const sd3_mmdit_act_t *act,
            const sd3_mmdit_act_t *skip, sd3_err_t *err)
{
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_STEP, req->id);
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "mmdit: out of memory");
    msg->step = (uint32_t)step;
    msg->attempt = req->attempt;
    int rc = s_add_download(self, msg, act->x, "x", err);
    if (rc == 0)
        rc = s_add_download(self, msg, act->ctx, "ctx", err);
    if (rc == 0)
        rc = s_add_download(self, msg, act->c, "c", err);
    if (rc == 0 && skip && skip->x) {
        rc = s_add_download(self, msg, skip->x, "sx", err);
        if (rc == 0)
            rc = s_add_download(self, msg, skip->ctx, "sctx", err);
        if (rc == 0)
            rc = s_add_download(self, msg, skip->c, "sc", err);
    }
    if (rc != 0) {
        sd3_msg_destroy(&msg);
        return rc;
    }
    size_t bytes = 0;
    for (int i = 0; i < msg->n_tensors; i++)
        bytes += msg->tensors[i].tensor ? sd3_tensor_nbytes(msg->tensors[i].tensor) : 0;
    double t0 = sd3_now_s();
    rc = sd3_node_send_peer(self, req->next, &msg, err);
    sd3_log_info("mmdit", "node=%s req=%s step=%d sent bytes=%zu send_ms=%.1f", self->node_id,
                 req->id, step, bytes, (sd3_now_s() - t0) * 1000);
    return rc;
}

// Last range: final layer, guidance, sampler step; the new latent to the first range and
// the controller.
static int
s_finish(sd3_node_t *self, sd3_node_req_t *req, sd3_mmdit_act_t *act, sd3_mmdit_act_t *skip,
         sd3_err_t *err)
{
    sd3_dit_job_t *job = req->job;
    int rc = sd3_dit_stage_finish(self->dit, job, act, skip, NULL, err);
    if (rc != 0)
        return rc;
    SD3_NODE_STAT_ADD(self, steps, 1);
    sd3_msg_t *done = sd3_msg_new(SD3_MSG_STEP_DONE, req->id);
    if (!done)
        return sd3_err_set(err, SD3_ENOMEM, "mmdit: out of memory");
    done->step = (uint32_t)job->st.step;
    done->attempt = req->attempt;
    // The checkpoint: the latent entering step st.step and, for DPM++ 2M, the sampler's
    // previous denoised, so a resume anywhere continues bit for bit.
    if ((rc = s_add_clone(self, done, job->x, "latent", err)) != 0 ||
        (job->st.has_old && job->st.old_denoised &&
         (rc = s_add_clone(self, done, job->st.old_denoised, "old_denoised", err)) != 0)) {
        sd3_msg_destroy(&done);
        return rc;
    }
    if ((rc = sd3_node_send_ctrl(self, &done, err)) != 0)
        return rc;
    sd3_log_debug("mmdit", "req=%s step=%d/%d done", req->id, job->st.step, req->n_sigmas - 1);
    if (sd3_dit_job_done(job)) {
        s_close(self, req);
        return 0;
    }
    req->next_step = job->st.step;
    sd3_msg_t *lat = sd3_msg_new(SD3_MSG_LATENT, req->id);
    if (!lat)
        return sd3_err_set(err, SD3_ENOMEM, "mmdit: out of memory");
    lat->step = (uint32_t)job->st.step;
    lat->attempt = req->attempt;
    if ((rc = s_add_clone(self, lat, job->x, "latent", err)) != 0) {
        sd3_msg_destroy(&lat);
        return rc;
    }
    return sd3_node_send_peer(self, req->next, &lat, err);
}

// After this range ran step `step` (not the last range): expect the next one, or forget
// the request after its final step.
static void
s_advance(sd3_node_t *self, sd3_node_req_t *req, int step)
{
    if (step >= req->n_sigmas - 2)
        s_close(self, req);
    else
        req->next_step = step + 1;
}

// After this range's blocks ran on w: the last range finishes the step, the others send it
// on and expect the next one. req may be closed (and zeroed) on return.
static int
s_work_after(sd3_node_t *self, s_work_t *w, sd3_err_t *err)
{
    sd3_node_req_t *req = w->req;
    const bool last = req->stage_index == req->n_stages - 1;
    int rc = last ? s_finish(self, req, &w->act, &w->skip, err)
                  : s_send_step(self, req, w->step, &w->act, &w->skip, err);
    if (rc == 0 && !last)
        s_advance(self, req, w->step);
    return rc;
}

// Runs w's blocks and what follows; an error goes to w's sender and the controller.
static void
s_work_run(sd3_node_t *self, s_work_t *w)
{
    sd3_err_t err = {0};
    char id[SD3_WIRE_ID_MAX];
    snprintf(id, sizeof id, "%s", w->req->id);
    const int64_t t0 = sd3_now_ms();
    s_busy(self, w, 1, &w->act);
    int rc = sd3_dit_stage_blocks(self->dit, w->req->slg_layers, &w->act, &w->skip, &err);
    sd3_node_work_end(self);
    if (rc == 0)
        rc = s_work_after(self, w, &err);
    if (rc != 0 && !s_stopped(self, id, &err))
        s_fail(self, w->from, id, (uint32_t)w->step, &err);
    else
        sd3_log_info("mmdit", "node=%s req=%s step=%d blocks=[%d,%d) ms=%lld", self->node_id, id,
                     w->step, self->o.layer_begin, self->o.layer_end,
                     (long long)(sd3_now_ms() - t0));
    s_work_fini(self, w);
}

// First range: embeds step req->job->st.step (from the latent in the job) into w.
static int
s_first_prepare(sd3_node_t *self, sd3_node_req_t *req, s_work_t *w, sd3_err_t *err)
{
    memset(w, 0, sizeof *w);
    w->req = req;
    w->step = req->job->st.step;
    return sd3_dit_stage_embed(self->dit, req->job, &w->act, &w->skip, err);
}

// First range: runs step req->job->st.step.
static void
s_run_first(sd3_node_t *self, sd3_node_req_t *req)
{
    s_work_t w;
    sd3_err_t err = {0};
    if (s_first_prepare(self, req, &w, &err) != 0) {
        s_work_fini(self, &w);
        s_fail(self, NULL, req->id, (uint32_t)w.step, &err);
        return;
    }
    s_work_run(self, &w);
}

static void
s_job(sd3_node_t *self, const sd3_wire_peer_t *from, sd3_msg_t *msg)
{
    const sd3_wire_job_t *j = &msg->body.job;
    sd3_gen_params_t p;
    sd3_err_t err = {0};
    sd3_tensor_t cc, uc, cy, uy;
    sd3_gen_params_init(&p, NULL);
    sd3_node_req_t *req = s_find(self, msg->request_id);
    if (req) { // a newer attempt replaces the old state; an older one is stale
        if (msg->attempt <= req->attempt) {
            sd3_log_debug("mmdit", "req=%s stale JOB attempt=%u", msg->request_id, msg->attempt);
            goto done;
        }
        sd3_dit_job_destroy(&req->job);
        memset(req, 0, sizeof *req);
    }
    if ((int)j->layer_begin != self->o.layer_begin || (int)j->layer_end != self->o.layer_end) {
        sd3_err_set(&err, SD3_EINVAL, "JOB for blocks [%u,%u), this node hosts [%d,%d)",
                    j->layer_begin, j->layer_end, self->o.layer_begin, self->o.layer_end);
        goto fail;
    }
    if (j->n_sigmas < 2 || (int)j->first_step >= j->n_sigmas - 1 || j->n_stages < 1 ||
        !j->next_address[0]) {
        sd3_err_set(&err, SD3_EINVAL, "JOB: %d sigmas from step %u, %u stages, next '%s'",
                    j->n_sigmas, j->first_step, j->n_stages, j->next_address);
        goto fail;
    }
    if (sd3_gen_params_from_wire(&p, &j->request, &self->cfg, &err) != 0 ||
        sd3_gen_params_check(&p, &self->cfg, &err) != 0)
        goto fail;
    for (int i = 0; i < SD3_NODE_MAX_REQS && !req; i++)
        if (!self->reqs[i].used)
            req = &self->reqs[i];
    if (!req) {
        sd3_err_set(&err, SD3_EFULL, "mmdit: %d requests held, no room", SD3_NODE_MAX_REQS);
        goto fail;
    }
    req->used = true;
    snprintf(req->id, sizeof req->id, "%s", msg->request_id);
    req->attempt = msg->attempt;
    req->stage_index = (int)j->stage_index;
    req->n_stages = (int)j->n_stages;
    req->next_step = (int)j->first_step;
    req->n_sigmas = j->n_sigmas;
    req->grid_h = p.height / 16;
    req->grid_w = p.width / 16;
    req->lat_h = p.height / 8;
    req->lat_w = p.width / 8;
    req->slg_layers = p.slg.layers;
    req->t_start_ms = sd3_now_ms();
    snprintf(req->next, sizeof req->next, "%s", j->next_address);
    bool first = req->stage_index == 0, last = req->stage_index == req->n_stages - 1;
    if (first || last) {
        const int Z = self->cfg.in_channels;
        if (sd3_msg_expect(msg, "latent", SD3_F32, 4, (int64_t[]){1, Z, req->lat_h, req->lat_w},
                           &err) != 0 ||
            sd3_msg_expect(msg, "context", SD3_F32, 3, (int64_t[]){2, -1, self->cfg.context_in},
                           &err) != 0 ||
            sd3_msg_expect(msg, "pooled", SD3_F32, 2, (int64_t[]){2, self->cfg.adm_in}, &err) != 0)
            goto fail;
        const sd3_tensor_t *ctx = sd3_msg_tensor(msg, "context"),
                           *y = sd3_msg_tensor(msg, "pooled");
        int64_t cs[3] = {1, ctx->shape[1], ctx->shape[2]}, ys[2] = {1, y->shape[1]};
        size_t ch = sd3_tensor_nbytes(ctx) / 2, yh = sd3_tensor_nbytes(y) / 2;
        sd3_tensor_view_init(&cc, SD3_F32, 3, cs, ctx->data);
        sd3_tensor_view_init(&uc, SD3_F32, 3, cs, (char *)ctx->data + ch);
        sd3_tensor_view_init(&cy, SD3_F32, 2, ys, y->data);
        sd3_tensor_view_init(&uy, SD3_F32, 2, ys, (char *)y->data + yh);
        // The options of sd3_local: the step count before any img2img cut (SLG window).
        sd3_sampler_opts_t so = {
            .kind = p.sampler, .cfg_scale = p.cfg, .steps = p.steps, .slg = p.slg};
        if (!(req->job = sd3_dit_job_new(&so, j->sigmas, j->n_sigmas, &cc, &cy, &uc, &uy,
                                         sd3_msg_tensor(msg, "latent"), &err)))
            goto fail;
        req->job->st.step = (int)j->first_step;
        const sd3_tensor_t *od = sd3_msg_tensor(msg, "old_denoised");
        if (od && last) { // a resume of DPM++ 2M: the sampler's state at first_step
            if (sd3_msg_expect(msg, "old_denoised", SD3_F32, 4,
                               (int64_t[]){1, Z, req->lat_h, req->lat_w}, &err) != 0)
                goto fail;
            sd3_tensor_destroy(&req->job->st.old_denoised);
            if (!(req->job->st.old_denoised = sd3_tensor_clone(od))) {
                sd3_err_set(&err, SD3_ENOMEM, "mmdit: out of memory");
                goto fail;
            }
            req->job->st.old_denoised->name = "old_denoised";
            req->job->st.has_old = true;
        }
    }
    sd3_log_info("mmdit",
                 "req=%s job stage=%d/%d blocks=[%d,%d) steps=%d from=%u next=%s attempt=%u",
                 req->id, req->stage_index, req->n_stages, self->o.layer_begin, self->o.layer_end,
                 req->n_sigmas - 1, j->first_step, req->next, req->attempt);
    if (first) {
        s_run_first(self, req);
    } else { // the controller starts the first range once every later one holds the job
        sd3_msg_t *ack = sd3_msg_new(SD3_MSG_ACK, req->id);
        if (ack) {
            ack->attempt = req->attempt;
            if (sd3_node_send_ctrl(self, &ack, &err) != 0)
                goto fail;
        }
    }
    goto done;
fail:
    s_fail(self, from, msg->request_id, 0, &err);
done:
    sd3_gen_params_fini(&p);
}

// Checks a STEP as far as it can without knowing the request: tensors, dtypes, widths.
static int
s_check_step_generic(const sd3_node_t *self, const sd3_msg_t *msg, sd3_err_t *err)
{
    const int64_t C = self->cfg.hidden;
    if (sd3_msg_expect(msg, "x", SD3_F32, 3, (int64_t[]){-1, -1, C}, err) != 0 ||
        sd3_msg_expect(msg, "ctx", SD3_F32, 3, (int64_t[]){-1, -1, C}, err) != 0 ||
        sd3_msg_expect(msg, "c", SD3_F32, 2, (int64_t[]){-1, C}, err) != 0)
        return SD3_EPROTO;
    return 0;
}

// Builds the activations of one batch from a STEP ("x", "ctx", "c" or "sx", "sctx", "sc").
static int
s_act_from_msg(sd3_node_t *self, const sd3_node_req_t *req, const sd3_msg_t *msg, bool skip_pass,
               sd3_mmdit_act_t *act, sd3_err_t *err)
{
    const char *nx = skip_pass ? "sx" : "x", *nctx = skip_pass ? "sctx" : "ctx",
               *nc = skip_pass ? "sc" : "c";
    const int64_t B = skip_pass ? 1 : 2, N = (int64_t)req->grid_h * req->grid_w,
                  C = self->cfg.hidden;
    memset(act, 0, sizeof *act);
    const sd3_tensor_t *ctx = sd3_msg_tensor(msg, nctx);
    int64_t L = ctx ? ctx->shape[1] : -1;
    if (sd3_msg_expect(msg, nx, SD3_F32, 3, (int64_t[]){B, N, C}, err) != 0 ||
        sd3_msg_expect(msg, nctx, SD3_F32, 3, (int64_t[]){B, L, C}, err) != 0 ||
        sd3_msg_expect(msg, nc, SD3_F32, 2, (int64_t[]){B, C}, err) != 0)
        return SD3_EPROTO;
    act->batch = (int)B;
    act->n_ctx = (int)L;
    act->grid_h = req->grid_h;
    act->grid_w = req->grid_w;
    act->next_block = self->o.layer_begin;
    if (!(act->x = s_upload(self, sd3_msg_tensor(msg, nx), err)) ||
        !(act->ctx = s_upload(self, ctx, err)) ||
        !(act->c = s_upload(self, sd3_msg_tensor(msg, nc), err))) {
        sd3_mmdit_act_fini(self->be, act);
        return err->code ? err->code : SD3_ENOMEM;
    }
    return 0;
}

// Whether a STEP or LATENT for req at `step` is the one expected; drops duplicates and
// messages of older attempts. Returns 1 to process, 0 to drop, or an error.
static int
s_expected(sd3_node_req_t *req, const sd3_msg_t *msg, sd3_err_t *err)
{
    if (msg->attempt != req->attempt) {
        sd3_log_debug("mmdit", "req=%s drop %s of attempt %u (now %u)", req->id,
                      sd3_msg_type_name(msg->type), msg->attempt, req->attempt);
        return 0;
    }
    if ((int)msg->step < req->next_step) {
        sd3_log_debug("mmdit", "req=%s step=%u duplicate dropped", req->id, msg->step);
        return 0;
    }
    if ((int)msg->step != req->next_step)
        return sd3_err_set(err, SD3_EPROTO, "%s for step %u, this stage expects step %d",
                           sd3_msg_type_name(msg->type), msg->step, req->next_step);
    return 1;
}

// A STEP (not to the first range) made ready to run: 1 with *w filled, or 0 when it was
// dropped (a duplicate, an old attempt, a closed request) or answered with an error.
static int
s_step_prepare(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg, s_work_t *w)
{
    sd3_err_t err = {0};
    sd3_node_req_t *req = NULL;
    memset(w, 0, sizeof *w);
    int rc = s_check_step_generic(self, msg, &err);
    if (rc != 0)
        goto fail;
    if (!(req = s_find(self, msg->request_id))) {
        if (s_recent(self, msg->request_id)) {
            sd3_log_debug("mmdit", "req=%s step=%u of a closed request dropped", msg->request_id,
                          msg->step);
            return 0;
        }
        sd3_err_set(&err, SD3_ENOTFOUND, "STEP for request '%s', which this stage does not hold",
                    msg->request_id);
        goto fail;
    }
    if (req->stage_index == 0) {
        sd3_err_set(&err, SD3_EPROTO, "STEP sent to the first range (it takes LATENT)");
        goto fail;
    }
    if ((rc = s_expected(req, msg, &err)) <= 0) {
        if (rc < 0)
            goto fail;
        return 0;
    }
    if (s_act_from_msg(self, req, msg, false, &w->act, &err) != 0)
        goto fail;
    if (sd3_msg_tensor(msg, "sx") && s_act_from_msg(self, req, msg, true, &w->skip, &err) != 0)
        goto fail;
    w->req = req;
    w->from = from;
    w->step = (int)msg->step;
    return 1;
fail:
    s_work_fini(self, w);
    s_fail(self, from, msg->request_id, msg->step, &err);
    return 0;
}

// A LATENT (to the first range) made ready to run, as s_step_prepare.
static int
s_latent_prepare(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg,
                 s_work_t *w)
{
    sd3_err_t err = {0};
    sd3_node_req_t *req = NULL;
    int rc;
    memset(w, 0, sizeof *w);
    if (sd3_msg_expect(msg, "latent", SD3_F32, 4, (int64_t[]){1, self->cfg.in_channels, -1, -1},
                       &err) != 0)
        goto fail;
    if (!(req = s_find(self, msg->request_id))) {
        if (s_recent(self, msg->request_id))
            return 0;
        sd3_err_set(&err, SD3_ENOTFOUND, "LATENT for request '%s', which this stage does not hold",
                    msg->request_id);
        goto fail;
    }
    if (req->stage_index != 0) {
        sd3_err_set(&err, SD3_EPROTO, "LATENT sent to range %d (only the first takes it)",
                    req->stage_index);
        goto fail;
    }
    if ((rc = s_expected(req, msg, &err)) <= 0) {
        if (rc < 0)
            goto fail;
        return 0;
    }
    if (sd3_msg_expect(msg, "latent", SD3_F32, 4,
                       (int64_t[]){1, self->cfg.in_channels, req->lat_h, req->lat_w}, &err) != 0)
        goto fail;
    const sd3_tensor_t *lat = sd3_msg_tensor(msg, "latent");
    if (lat->data != req->job->x->data)
        memcpy(req->job->x->data, lat->data, sd3_tensor_nbytes(lat));
    req->job->st.step = (int)msg->step;
    if (s_first_prepare(self, req, w, &err) != 0) {
        s_work_fini(self, w);
        s_fail(self, NULL, req->id, msg->step, &err);
        return 0;
    }
    return 1;
fail:
    s_fail(self, from, msg->request_id, msg->step, &err);
    return 0;
}

static void
s_step(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    s_work_t w;
    if (s_step_prepare(self, from, msg, &w))
        s_work_run(self, &w);
}

static void
s_latent(sd3_node_t *self, const sd3_wire_peer_t *from, const sd3_msg_t *msg)
{
    s_work_t w;
    if (s_latent_prepare(self, from, msg, &w))
        s_work_run(self, &w);
}

// ---- merged steps ------------------------------------------------------------------------

// Whether w can join a batch holding a: same shapes and range position, no skip-layer pass
// (its blocks differ per request), another request.
static bool
s_mergeable(const s_work_t *a, const s_work_t *w)
{
    return !a->skip.x && !w->skip.x && a->req != w->req && a->act.batch == w->act.batch &&
           a->act.n_ctx == w->act.n_ctx && a->act.grid_h == w->act.grid_h &&
           a->act.grid_w == w->act.grid_w && a->act.next_block == w->act.next_block &&
           !a->act.ctx == !w->act.ctx;
}

// Runs the n prepared steps of g as one batch (one alone: as it is). If the merge itself
// fails (memory), each runs on its own: merging never costs a request.
static void
s_run_group(sd3_node_t *self, s_work_t *g, int n)
{
    if (n == 1) {
        s_work_run(self, &g[0]);
        return;
    }
    sd3_mmdit_act_t parts[SD3_NODE_MAX_BATCH], out[SD3_NODE_MAX_BATCH], merged;
    sd3_err_t err = {0};
    for (int i = 0; i < n; i++)
        parts[i] = g[i].act;
    const int64_t t0 = sd3_now_ms();
    int rc = sd3_mmdit_act_merge(self->be, parts, n, &merged, &err);
    if (rc == 0) {
        s_busy(self, g, n, &merged);
        rc = sd3_dit_stage_blocks(self->dit, 0, &merged, NULL, &err);
        sd3_node_work_end(self);
    }
    if (rc == SD3_ECANCELED) { // every request of the batch is dead
        s_stopped(self, g[0].req->id, &err);
        sd3_mmdit_act_fini(self->be, &merged);
        for (int i = 0; i < n; i++)
            s_work_fini(self, &g[i]);
        return;
    }
    if (rc != 0 || sd3_mmdit_act_split(self->be, &merged, n, out, &err) != 0) {
        sd3_log_warn("mmdit", "node=%s merging %d steps failed (%s): running them one by one",
                     self->node_id, n, err.msg);
        sd3_mmdit_act_fini(self->be, &merged);
        for (int i = 0; i < n; i++)
            s_work_run(self, &g[i]);
        return;
    }
    sd3_mmdit_act_fini(self->be, &merged);
    SD3_NODE_STAT_ADD(self, batches, 1);
    SD3_NODE_STAT_ADD(self, batched_steps, (uint64_t)n);
    char ids[256];
    size_t at = 0;
    ids[0] = 0;
    for (int i = 0; i < n && at < sizeof ids; i++)
        at += (size_t)snprintf(ids + at, sizeof ids - at, "%s%s", i ? "," : "", g[i].req->id);
    sd3_log_info("mmdit", "node=%s merged n=%d reqs=%s blocks=[%d,%d) tokens=%dx%d ms=%lld",
                 self->node_id, n, ids, self->o.layer_begin, self->o.layer_end,
                 g[0].act.grid_h, g[0].act.grid_w, (long long)(sd3_now_ms() - t0));
    for (int i = 0; i < n; i++) {
        sd3_err_t e = {0};
        char id[SD3_WIRE_ID_MAX];
        snprintf(id, sizeof id, "%s", g[i].req->id);
        sd3_mmdit_act_fini(self->be, &g[i].act);
        g[i].act = out[i];
        if (s_work_after(self, &g[i], &e) != 0)
            s_fail(self, g[i].from, id, (uint32_t)g[i].step, &e);
        s_work_fini(self, &g[i]);
    }
}

// Token rows of one prepared step (its part of a merged batch's workspace).
static int64_t
s_rows(const s_work_t *w)
{
    return (int64_t)w->act.batch * ((int64_t)w->act.grid_h * w->act.grid_w + w->act.n_ctx);
}

void
sd3_stage_host_handle_many(sd3_node_t *self, const sd3_wire_peer_t *from, sd3_msg_t **msgs,
                           int n)
{
    s_work_t g[SD3_NODE_MAX_BATCH];
    int ng = 0;
    int64_t rows = 0;
    const int cap = sd3_node_batch_cap(self);
    for (int i = 0; i < n; i++) {
        sd3_msg_t *msg = msgs[i];
        const bool step_like = self->o.role == SD3_WIRE_ROLE_MMDIT && cap > 1 &&
                               (msg->type == SD3_MSG_STEP || msg->type == SD3_MSG_LATENT);
        bool again = false; // a second message for a request in the batch: run the batch first
        for (int j = 0; step_like && j < ng; j++)
            again = again || !strcmp(g[j].req->id, msg->request_id);
        if (ng > 0 && (!step_like || again || ng == cap)) {
            s_run_group(self, g, ng);
            ng = 0;
        }
        if (!step_like) {
            sd3_stage_host_handle(self, &from[i], &msgs[i]);
            continue;
        }
        s_work_t w;
        if (!(msg->type == SD3_MSG_STEP ? s_step_prepare(self, &from[i], msg, &w)
                                        : s_latent_prepare(self, &from[i], msg, &w)))
            continue;
        if (w.skip.x) { // the skip-layer pass runs other blocks: this step goes alone
            s_work_run(self, &w);
            continue;
        }
        if (ng > 0 && (!s_mergeable(&g[0], &w) || rows + s_rows(&w) > SD3_NODE_BATCH_ROWS)) {
            s_run_group(self, g, ng);
            ng = 0;
        }
        if (ng == 0)
            rows = 0;
        g[ng++] = w;
        rows += s_rows(&w);
    }
    if (ng > 0)
        s_run_group(self, g, ng);
}

// ---- dispatch ----------------------------------------------------------------------------

void
sd3_stage_host_handle(sd3_node_t *self, const sd3_wire_peer_t *from, sd3_msg_t **msg_p)
{
    sd3_msg_t *msg = *msg_p;
    sd3_err_t err = {0};
    const sd3_wire_role_t role = self->o.role;
    switch (msg->type) {
    case SD3_MSG_ACK: // the I/O thread takes the controller's (registration)
        return;
    case SD3_MSG_SHUTDOWN:
        if (!from)
            return; // the I/O thread took it
        break;
    case SD3_MSG_ERROR:
        if (!from && !msg->request_id[0] && msg->status == SD3_ENOTFOUND) {
            // The controller restarted (or took us for dead): the work we hold belongs to
            // attempts it does not know any more; it resumes them as newer attempts. (The
            // I/O thread registers again and stopped the work in progress.)
            sd3_stage_host_clear(self);
            return;
        }
        sd3_log_warn("node", "node=%s req=%s got ERROR %s: %s", self->node_id,
                     msg->request_id[0] ? msg->request_id : "-", sd3_err_name(msg->status),
                     msg->message);
        return;
    case SD3_MSG_CANCEL: {
        sd3_node_req_t *req = s_find(self, msg->request_id);
        if (req && msg->attempt < req->attempt) { // a newer attempt already replaced it
            sd3_log_debug("node", "req=%s CANCEL of attempt %u dropped (now %u)", req->id,
                          msg->attempt, req->attempt);
        } else if (req) {
            sd3_log_info("node", "node=%s req=%s cancelled", self->node_id, req->id);
            s_close(self, req);
        } else if (msg->request_id[0]) {
            s_remember(self, msg->request_id);
        }
        return;
    }
    case SD3_MSG_ENCODE:
        if (role == SD3_WIRE_ROLE_ENCODER) {
            s_encode(self, from, msg);
            return;
        }
        break;
    case SD3_MSG_DECODE:
        if (role == SD3_WIRE_ROLE_VAE) {
            s_decode(self, from, msg);
            return;
        }
        break;
    case SD3_MSG_VAE_ENCODE:
        if (role == SD3_WIRE_ROLE_VAE) {
            s_vae_encode(self, from, msg);
            return;
        }
        break;
    case SD3_MSG_JOB:
        if (role == SD3_WIRE_ROLE_MMDIT) {
            s_job(self, from, msg);
            return;
        }
        break;
    case SD3_MSG_STEP:
        if (role == SD3_WIRE_ROLE_MMDIT) {
            s_step(self, from, msg);
            return;
        }
        break;
    case SD3_MSG_LATENT:
        if (role == SD3_WIRE_ROLE_MMDIT) {
            s_latent(self, from, msg);
            return;
        }
        break;
    default:
        break;
    }
    sd3_err_set(&err, SD3_EPROTO, "node %s (%s) does not take %s messages", self->node_id,
                role == SD3_WIRE_ROLE_ENCODER ? "encoder"
                : role == SD3_WIRE_ROLE_MMDIT ? "mmdit"
                                              : "vae",
                sd3_msg_type_name(msg->type));
    SD3_NODE_STAT_ADD(self, refused, 1);
    if (from) {
        sd3_err_t e = {0};
        sd3_wire_reply_error(sd3_link_socket(self->data), from, &err, &e);
    } else {
        s_fail(self, NULL, msg->request_id, msg->step, &err);
    }
}
