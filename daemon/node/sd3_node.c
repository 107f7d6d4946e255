/*  sd3_node - an sd3d process hosting one stage role (see sd3_node.h)  */
#include "sd3_node.h"

#include "sd3_log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

// The role's name for ids and logs ("?" for a value that is none).
static const char *
s_role(sd3_wire_role_t role)
{
    const char *n = sd3_wire_role_name(role);
    return n ? n : "?";
}

double
sd3_float_to_double_decimal(float f)
{
    char buf[64];
    if (!isfinite(f))
        return (double)f;
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            return strtod(buf, NULL);
    }
    return (double)f;
}

int
sd3_gen_params_from_wire(sd3_gen_params_t *p, const sd3_wire_generate_t *w,
                         const sd3_mmdit_config_t *cfg, sd3_err_t *err)
{
    sd3_gen_params_init(p, cfg);
    int rc = sd3_gen_params_set_prompt(p, w->prompt, w->negative, err);
    if (rc != 0)
        return rc;
    if (w->width)
        p->width = (int)w->width;
    if (w->height)
        p->height = (int)w->height;
    if (w->steps)
        p->steps = (int)w->steps;
    if (w->cfg != 0)
        p->cfg = w->cfg;
    if (w->shift != 0)
        p->shift = w->shift;
    p->seed = w->seed;
    if (w->sampler == SD3_WIRE_SAMPLER_EULER)
        p->sampler = SD3_SAMPLER_EULER;
    else if (w->sampler == SD3_WIRE_SAMPLER_DPMPP_2M)
        p->sampler = SD3_SAMPLER_DPMPP_2M;
    if (w->slg_scale > 0) {
        p->slg.scale = w->slg_scale;
        if (w->slg_start != 0 || w->slg_end != 0) {
            p->slg.start = sd3_float_to_double_decimal(w->slg_start);
            p->slg.end = sd3_float_to_double_decimal(w->slg_end);
        }
        if (w->n_slg_layers > 0) {
            p->slg.layers = 0;
            for (int i = 0; i < w->n_slg_layers; i++) {
                if (w->slg_layers[i] >= 64)
                    return sd3_err_set(err, SD3_EINVAL, "slg layer %u: want 0..63",
                                       w->slg_layers[i]);
                p->slg.layers |= 1ull << w->slg_layers[i];
            }
        }
    }
    p->no_t5 = w->no_t5;
    p->t5_len = (int)w->t5_len;
    if (w->strength > 0 && w->strength < 1)
        p->denoise = sd3_float_to_double_decimal(w->strength);
    if (w->model[0] && !(p->model_name = strdup(w->model)))
        return sd3_err_set(err, SD3_ENOMEM, "request: out of memory");
    return 0;
}

void
sd3_gen_params_to_wire(const sd3_gen_params_t *p, sd3_wire_generate_t *w)
{
    uint64_t deadline = w->deadline_ms;
    memset(w, 0, sizeof *w);
    snprintf(w->prompt, sizeof w->prompt, "%s", p->prompt ? p->prompt : "");
    snprintf(w->negative, sizeof w->negative, "%s", p->negative ? p->negative : "");
    w->width = (uint32_t)p->width;
    w->height = (uint32_t)p->height;
    w->steps = (uint32_t)p->steps;
    w->cfg = p->cfg;
    w->shift = p->shift;
    w->seed = p->seed;
    w->sampler =
        p->sampler == SD3_SAMPLER_EULER ? SD3_WIRE_SAMPLER_EULER : SD3_WIRE_SAMPLER_DPMPP_2M;
    w->slg_scale = p->slg.scale;
    if (p->slg.scale > 0) {
        w->slg_start = (float)p->slg.start;
        w->slg_end = (float)p->slg.end;
        for (int i = 0; i < 64 && w->n_slg_layers < SD3_WIRE_MAX_SLG_LAYERS; i++)
            if ((p->slg.layers >> i) & 1)
                w->slg_layers[w->n_slg_layers++] = (uint32_t)i;
    }
    w->no_t5 = p->no_t5;
    w->t5_len = (uint32_t)p->t5_len;
    w->strength = p->denoise < 1 ? (float)p->denoise : 0;
    w->deadline_ms = deadline;
    snprintf(w->model, sizeof w->model, "%s", p->model_name ? p->model_name : "");
}

// ---- the node ----------------------------------------------------------------------------


static int
s_load(sd3_node_t *self, sd3_err_t *err)
{
    const sd3_node_opts_t *o = &self->o;
    self->be = o->shared_backend;
    if ((!self->be &&
         !(self->be = sd3_backend_new(o->backend ? o->backend : "cpu", o->n_threads, err))) ||
        !(self->model = sd3_model_open(o->model_path, err)))
        return err->code;
    // Every role reads the MMDiT's configuration (shapes only, nothing is touched): the
    // encoder pads to its context width, the vae names the model in the PNG text.
    if (sd3_model_has(self->model, SD3_COMP_MMDIT)) {
        if (!(self->w_mmdit = sd3_weights_open(self->model, SD3_COMP_MMDIT, err)) ||
            sd3_mmdit_config_detect(self->w_mmdit, &self->cfg, err) != 0)
            return err->code;
        self->have_cfg = true;
    }
    switch (o->role) {
    case SD3_WIRE_ROLE_ENCODER:
        if (!self->have_cfg)
            return sd3_err_set(err, SD3_EFORMAT,
                               "%s: the encoder needs the MMDiT's context "
                               "width, and the checkpoint has no MMDiT",
                               o->model_path);
        if (!(self->enc = sd3_enc_stage_new(self->be, self->model, o->tokenizer_dir, o->load_t5,
                                            o->cache_bytes ? o->cache_bytes : 256u << 20, err)))
            return err->code;
        break;
    case SD3_WIRE_ROLE_MMDIT: {
        if (!self->have_cfg)
            return sd3_err_set(err, SD3_EFORMAT, "%s: the checkpoint has no MMDiT", o->model_path);
        int b = o->layer_begin, e = o->layer_end ? o->layer_end : self->cfg.depth;
        if (b < 0 || e <= b || e > self->cfg.depth)
            return sd3_err_set(err, SD3_EINVAL, "--range %d:%d: want 0 <= A < B <= %d", b, e,
                               self->cfg.depth);
        self->o.layer_begin = b;
        self->o.layer_end = e;
        if (!(self->dit = sd3_dit_stage_new(self->be, self->w_mmdit, b, e, err)))
            return err->code;
        break;
    }
    case SD3_WIRE_ROLE_VAE:
        if (!sd3_model_has(self->model, SD3_COMP_VAE))
            return sd3_err_set(err, SD3_EFORMAT, "%s: the checkpoint has no VAE", o->model_path);
        if (!(self->w_vae = sd3_weights_open(self->model, SD3_COMP_VAE, err)) ||
            !(self->vae = sd3_vae_stage_new(self->be, self->w_vae, err)))
            return err->code;
        break;
    default:
        return sd3_err_set(err, SD3_EINVAL, "node: role must be encoder, mmdit or vae");
    }
    return 0;
}

sd3_node_t *
sd3_node_new(const sd3_node_opts_t *opts, sd3_err_t *err)
{
    sd3_node_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "node: out of memory");
        return NULL;
    }
    self->o = *opts;
    if (!opts->listen || !opts->controller || !opts->model_path) {
        sd3_err_set(err, SD3_EINVAL, "node: needs --listen, --controller and --model");
        goto fail;
    }
    if (opts->node_id && (!opts->node_id[0] || strlen(opts->node_id) >= SD3_WIRE_ID_MAX)) {
        sd3_err_set(err, SD3_EINVAL, "--node-id must have 1..%d bytes", SD3_WIRE_ID_MAX - 1);
        goto fail;
    }
    if (opts->node_id)
        snprintf(self->node_id, sizeof self->node_id, "%s", opts->node_id);
    else
        snprintf(self->node_id, sizeof self->node_id, "%s-%d", s_role(opts->role),
                 (int)getpid());
    if (s_load(self, err) != 0)
        goto fail;
    self->ctx = opts->zmq_ctx;
    if (!self->ctx) {
        if (!(self->ctx = zmq_ctx_new())) {
            sd3_err_set(err, SD3_EIO, "node: zmq context: %s", zmq_strerror(zmq_errno()));
            goto fail;
        }
        self->own_ctx = true;
    }
    sd3_link_opts_t lo = {.hwm = 64, .curve = opts->curve};
    if (!(self->data = sd3_link_new_serve(self->ctx, opts->listen, &lo, err)))
        goto fail;
    snprintf(self->address, sizeof self->address, "%s",
             opts->advertise ? opts->advertise : sd3_link_endpoint(self->data));
    sd3_link_opts_t co = {.hwm = 64, .identity = self->node_id, .curve = opts->curve};
    if (!(self->ctrl = sd3_link_new_connect(self->ctx, opts->controller, &co, err)))
        goto fail;
    self->start_ms = sd3_now_ms();
    sd3_log_info("node", "node=%s role=%s address=%s controller=%s model=%s range=[%d,%d)",
                 self->node_id, s_role(opts->role), self->address, opts->controller,
                 opts->model_path, self->o.layer_begin, self->o.layer_end);
    return self;
fail:
    sd3_node_destroy(&self);
    return NULL;
}

void
sd3_node_destroy(sd3_node_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_node_t *self = *self_p;
    sd3_stage_host_clear(self);
    for (int i = 0; i < self->n_peers; i++)
        sd3_link_destroy(&self->peers[i].link);
    sd3_link_destroy(&self->data);
    sd3_link_destroy(&self->ctrl);
    if (self->own_ctx && self->ctx)
        zmq_ctx_term(self->ctx);
    sd3_enc_stage_destroy(&self->enc);
    sd3_dit_stage_destroy(&self->dit);
    sd3_vae_stage_destroy(&self->vae);
    sd3_weights_destroy(&self->w_vae);
    sd3_weights_destroy(&self->w_mmdit);
    sd3_model_destroy(&self->model);
    if (!self->o.shared_backend)
        sd3_backend_destroy(&self->be);
    free(self);
    *self_p = NULL;
}

const char *
sd3_node_endpoint(const sd3_node_t *self)
{
    return self->address;
}

static void
s_count(uint64_t *counter, const sd3_msg_t *msg)
{
    for (int i = 0; i < msg->n_tensors; i++)
        if (msg->tensors[i].tensor)
            *counter += sd3_tensor_nbytes(msg->tensors[i].tensor);
}

int
sd3_node_send_ctrl(sd3_node_t *self, sd3_msg_t **msg_p, sd3_err_t *err)
{
    if (*msg_p)
        s_count(&self->stats.bytes_out, *msg_p);
    return sd3_link_send(self->ctrl, NULL, msg_p, err);
}

int
sd3_node_send_peer(sd3_node_t *self, const char *addr, sd3_msg_t **msg_p, sd3_err_t *err)
{
    sd3_link_t *link = NULL;
    for (int i = 0; i < self->n_peers && !link; i++)
        if (!strcmp(self->peers[i].addr, addr))
            link = self->peers[i].link;
    if (!link) {
        if (self->n_peers == SD3_NODE_MAX_PEERS) { // forget the oldest peer
            sd3_link_destroy(&self->peers[0].link);
            memmove(&self->peers[0], &self->peers[1],
                    sizeof self->peers[0] * (size_t)(--self->n_peers));
        }
        char ident[SD3_WIRE_ID_MAX + 8];
        snprintf(ident, sizeof ident, "%s/peer", self->node_id);
        sd3_link_opts_t lo = {.hwm = 64, .identity = ident, .send_timeout_ms = 30000,
                              .curve = self->o.curve};
        if (!(link = sd3_link_new_connect(self->ctx, addr, &lo, err))) {
            sd3_msg_destroy(msg_p);
            return err->code;
        }
        snprintf(self->peers[self->n_peers].addr, SD3_WIRE_ADDR_MAX, "%s", addr);
        self->peers[self->n_peers++].link = link;
    }
    s_count(&self->stats.bytes_out, *msg_p);
    return sd3_link_send(link, NULL, msg_p, err);
}

int
sd3_node_batch_cap(const sd3_node_t *self)
{
    if (self->o.role != SD3_WIRE_ROLE_MMDIT)
        return 1;
    int cap = self->o.batch_max > 0 ? self->o.batch_max : SD3_NODE_BATCH_DEFAULT;
    return cap < SD3_NODE_MAX_BATCH ? cap : SD3_NODE_MAX_BATCH;
}

int
sd3_node_run(sd3_node_t *self, volatile sig_atomic_t *stop, sd3_err_t *err)
{
    sd3_heartbeat_tick(self);
    while (!(stop && *stop) && !self->shutdown) {
        zmq_pollitem_t items[2 + SD3_NODE_MAX_PEERS];
        int n = 0;
        items[n++] = (zmq_pollitem_t){sd3_link_socket(self->ctrl), 0, ZMQ_POLLIN, 0};
        items[n++] = (zmq_pollitem_t){sd3_link_socket(self->data), 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < self->n_peers; i++)
            items[n++] = (zmq_pollitem_t){sd3_link_socket(self->peers[i].link), 0, ZMQ_POLLIN, 0};
        int hb = self->o.heartbeat_ms > 0 ? self->o.heartbeat_ms : 500;
        int rc = zmq_poll(items, n, hb / 2);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            return sd3_err_set(err, SD3_EIO, "node %s: poll: %s", self->node_id,
                               zmq_strerror(zmq_errno()));
        }
        sd3_heartbeat_tick(self);
        if (rc == 0)
            continue;
        // The controller first (cancels overtake work), then data, then peer replies.
        if (items[0].revents & ZMQ_POLLIN) {
            sd3_msg_t *msg = NULL;
            sd3_err_t e = {0};
            if (sd3_link_recv(self->ctrl, 0, NULL, &msg, &e) == 0) {
                s_count(&self->stats.bytes_in, msg);
                sd3_stage_host_handle(self, NULL, &msg);
            } else if (e.code == SD3_EPROTO) {
                self->stats.refused++;
            }
            sd3_msg_destroy(&msg);
        }
        if (items[1].revents & ZMQ_POLLIN) {
            // Everything waiting, up to a batch: an mmdit stage merges same-shaped steps.
            sd3_msg_t *msgs[SD3_NODE_MAX_BATCH] = {0};
            sd3_wire_peer_t from[SD3_NODE_MAX_BATCH];
            const int cap = sd3_node_batch_cap(self);
            int nm = 0;
            for (int tries = 0; nm < cap && tries < 2 * cap; tries++) {
                sd3_err_t e = {0};
                if (sd3_link_recv(self->data, 0, &from[nm], &msgs[nm], &e) == 0) {
                    s_count(&self->stats.bytes_in, msgs[nm]);
                    nm++;
                } else if (e.code == SD3_EPROTO) {
                    self->stats.refused++; // answered by the link; look for more
                } else {
                    break; // nothing more waiting (or a socket error, seen by the next poll)
                }
            }
            if (nm > 0)
                sd3_stage_host_handle_many(self, from, msgs, nm);
            for (int i = 0; i < nm; i++)
                sd3_msg_destroy(&msgs[i]);
        }
        for (int i = 0; i < self->n_peers && 2 + i < n; i++) {
            if (!(items[2 + i].revents & ZMQ_POLLIN))
                continue;
            sd3_msg_t *msg = NULL;
            sd3_err_t e = {0};
            if (sd3_link_recv(self->peers[i].link, 0, NULL, &msg, &e) == 0 &&
                msg->type == SD3_MSG_ERROR)
                sd3_log_warn("node", "node=%s req=%s peer=%s refused our message: %s",
                             self->node_id, msg->request_id[0] ? msg->request_id : "-",
                             self->peers[i].addr, msg->message);
            sd3_msg_destroy(&msg);
        }
    }
    sd3_log_info("node", "node=%s stopping steps=%llu refused=%llu batches=%llu batched=%llu",
                 self->node_id, (unsigned long long)self->stats.steps,
                 (unsigned long long)self->stats.refused, (unsigned long long)self->stats.batches,
                 (unsigned long long)self->stats.batched_steps);
    return 0;
}
