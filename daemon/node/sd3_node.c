/*  sd3_node - an sd3d process hosting one stage role (see sd3_node.h)  */
#include "sd3_node.h"

#include "sd3_log.h"

#include <errno.h>
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

static int s_block_hook(void *user, int block);
static int s_encoder_hook(void *user, int encoder, double flops);
static void s_join_worker(sd3_node_t *self);


static int
s_load(sd3_node_t *self, sd3_err_t *err)
{
    const sd3_node_opts_t *o = &self->o;
    self->be = o->shared_backend;
    if ((!self->be &&
         (!(self->be = sd3_backend_new(o->backend ? o->backend : "cpu", o->n_threads, err)) ||
          sd3_backend_set_precision(self->be, o->precision ? o->precision : "auto", err))) ||
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
    if (pthread_mutex_init(&self->sh.mu, NULL) != 0) {
        sd3_err_set(err, SD3_ENOMEM, "node: mutex");
        free(self);
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
    self->sh.live.state = SD3_WIRE_NODE_LOADING;
    {
        const char *spec = opts->fault ? opts->fault : getenv("SD3_FAULT");
        if (sd3_node_fault_parse(spec, &self->fault, err) != 0)
            goto fail;
        if (spec && *spec) {
            snprintf(self->sh.live.fault, sizeof self->sh.live.fault, "%s", spec);
            sd3_log_warn("node", "fault injection on (a test facility): %s", spec);
        }
    }
    if (s_load(self, err) != 0)
        goto fail;
    if (self->dit)
        sd3_mmdit_set_progress(sd3_dit_stage_mmdit(self->dit), s_block_hook, self);
    if (self->enc)
        sd3_enc_stage_set_progress(self->enc, s_encoder_hook, self);
    self->sh.live.threads = (uint32_t)sd3_backend_threads(self->be);
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
    // The pipe between the I/O thread and the compute thread (pointers; never full).
    char pipe_ep[96];
    static int s_pipe_seq;
    snprintf(pipe_ep, sizeof pipe_ep, "inproc://sd3-node-%p-%d", (void *)self,
             __atomic_fetch_add(&s_pipe_seq, 1, __ATOMIC_RELAXED));
    int zero = 0;
    if (!(self->pipe_io = zmq_socket(self->ctx, ZMQ_PAIR)) ||
        !(self->pipe_work = zmq_socket(self->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(self->pipe_io, ZMQ_SNDHWM, &zero, sizeof zero) ||
        zmq_setsockopt(self->pipe_io, ZMQ_RCVHWM, &zero, sizeof zero) ||
        zmq_setsockopt(self->pipe_work, ZMQ_SNDHWM, &zero, sizeof zero) ||
        zmq_setsockopt(self->pipe_work, ZMQ_RCVHWM, &zero, sizeof zero) ||
        zmq_setsockopt(self->pipe_io, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(self->pipe_work, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(self->pipe_io, pipe_ep) || zmq_connect(self->pipe_work, pipe_ep)) {
        sd3_err_set(err, SD3_EIO, "node: inproc pipe: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
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
    s_join_worker(self);
    sd3_stage_host_clear(self);
    for (int i = 0; i < self->n_peers; i++)
        sd3_link_destroy(&self->peers[i].link);
    sd3_link_destroy(&self->data);
    sd3_link_destroy(&self->ctrl);
    if (self->pipe_io)
        zmq_close(self->pipe_io);
    if (self->pipe_work)
        zmq_close(self->pipe_work);
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
    pthread_mutex_destroy(&self->sh.mu);
    free(self);
    *self_p = NULL;
}

const char *
sd3_node_endpoint(const sd3_node_t *self)
{
    return self->address;
}

static void
s_count(sd3_node_t *self, bool in, const sd3_msg_t *msg)
{
    uint64_t n = 0;
    for (int i = 0; i < msg->n_tensors; i++)
        if (msg->tensors[i].tensor)
            n += sd3_tensor_nbytes(msg->tensors[i].tensor);
    if (in)
        SD3_NODE_STAT_ADD(self, bytes_in, n);
    else
        SD3_NODE_STAT_ADD(self, bytes_out, n);
}

// The node whose compute thread this is (NULL in any other thread).
static __thread sd3_node_t *s_tls_worker_of;

// ---- the pipe between the two threads: sd3_msg_t pointers over an inproc PAIR ------------

static int
s_pipe_put(void *sock, sd3_msg_t **msg_p)
{
    sd3_msg_t *m = *msg_p;
    if (zmq_send(sock, &m, sizeof m, 0) != (int)sizeof m)
        return -1;
    *msg_p = NULL; // the other thread owns it now
    return 0;
}

static sd3_msg_t *
s_pipe_take(void *sock)
{
    sd3_msg_t *m = NULL;
    return zmq_recv(sock, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m ? m : NULL;
}

int
sd3_node_send_ctrl(sd3_node_t *self, sd3_msg_t **msg_p, sd3_err_t *err)
{
    if (!*msg_p)
        return 0;
    s_count(self, false, *msg_p);
    if (s_tls_worker_of == self) {
        if (s_pipe_put(self->pipe_work, msg_p) != 0) {
            sd3_msg_destroy(msg_p);
            return sd3_err_set(err, SD3_EIO, "node %s: inproc pipe: %s", self->node_id,
                               zmq_strerror(zmq_errno()));
        }
        return 0;
    }
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
    s_count(self, false, *msg_p);
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

// ---- faults (a test facility) ----------------------------------------------------------------

int
sd3_node_fault_parse(const char *spec, sd3_node_fault_t *out, sd3_err_t *err)
{
    *out = (sd3_node_fault_t){.slow_ms = 0, .hang = -1};
    if (!spec || !*spec)
        return 0;
    char buf[128];
    if (strlen(spec) >= sizeof buf)
        return sd3_err_set(err, SD3_EINVAL, "fault '%.32s...': too long", spec);
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(part, '='), *end = NULL;
        if (!eq)
            return sd3_err_set(err, SD3_EINVAL, "fault '%s': want slow=MS or hang=N", part);
        *eq = 0;
        errno = 0;
        long long v = strtoll(eq + 1, &end, 10);
        if (errno || end == eq + 1 || *end || v < 0 || v > 86400000)
            return sd3_err_set(err, SD3_EINVAL, "fault '%s=%s': want a whole number 0..86400000",
                               part, eq + 1);
        if (!strcmp(part, "slow"))
            out->slow_ms = v;
        else if (!strcmp(part, "hang"))
            out->hang = v;
        else
            return sd3_err_set(err, SD3_EINVAL, "fault '%s': want slow=MS or hang=N", part);
    }
    return 0;
}

static bool
s_stopping(sd3_node_t *self)
{
    pthread_mutex_lock(&self->sh.mu);
    bool stop = self->sh.stop;
    pthread_mutex_unlock(&self->sh.mu);
    return stop;
}

// Sleeps ms in short naps; false as soon as `quit` says so.
static bool
s_nap(sd3_node_t *self, int64_t ms, bool (*quit)(sd3_node_t *))
{
    int64_t until = sd3_now_ms() + ms;
    for (int64_t now = sd3_now_ms(); now < until; now = sd3_now_ms()) {
        if (quit(self))
            return false;
        int64_t nap = until - now < 20 ? until - now : 20;
        struct timespec ts = {0, (long)nap * 1000000L};
        nanosleep(&ts, NULL);
    }
    return !quit(self);
}

// ---- the compute thread's progress -------------------------------------------------------

#define S_RATE_DEFAULT_GFLOPS 5.0 // before any measurement: slow enough for any node

bool
sd3_node_dead(sd3_node_t *self, const char *id, uint32_t attempt)
{
    bool dead = false;
    pthread_mutex_lock(&self->sh.mu);
    for (int i = 0; i < SD3_NODE_DEAD_MAX && !dead; i++)
        dead = self->sh.dead[i].id[0] && !strcmp(self->sh.dead[i].id, id) &&
               attempt <= self->sh.dead[i].attempt;
    pthread_mutex_unlock(&self->sh.mu);
    return dead;
}

// Whether the work in progress is worth finishing: some request of it still lives.
static bool
s_work_dead(sd3_node_t *self)
{
    sd3_node_work_t *w = &self->work;
    pthread_mutex_lock(&self->sh.mu);
    bool dead = self->sh.stop || self->sh.drop_gen != w->gen;
    pthread_mutex_unlock(&self->sh.mu);
    if (dead || w->n == 0)
        return dead;
    for (int i = 0; i < w->n; i++)
        if (!sd3_node_dead(self, w->ids[i], w->attempts[i]))
            return false;
    return true;
}

void
sd3_node_work_begin(sd3_node_t *self, const char *const *ids, const uint32_t *attempts, int n,
                    int step, int units)
{
    sd3_node_work_t *w = &self->work;
    w->n = n < SD3_NODE_MAX_BATCH ? n : SD3_NODE_MAX_BATCH;
    for (int i = 0; i < w->n; i++) {
        snprintf(w->ids[i], SD3_WIRE_ID_MAX, "%s", ids[i]);
        w->attempts[i] = attempts[i];
    }
    w->step = step;
    w->units = units > 0 ? units : 1;
    w->unit = -1;
    w->unit_flops = 0;
    w->tasks++;
    pthread_mutex_lock(&self->sh.mu);
    w->gen = self->sh.drop_gen;
    sd3_wire_live_t *l = &self->sh.live;
    snprintf(l->busy_request, sizeof l->busy_request, "%s", w->n ? w->ids[0] : "-");
    l->busy_step = (uint32_t)(step > 0 ? step : 0);
    l->busy_unit = 0;
    l->busy_units = (uint32_t)w->units;
    l->expect_ms = 0;
    self->sh.unit_start_ms = sd3_now_ms();
    pthread_mutex_unlock(&self->sh.mu);
}

// Whether this unit is where the injected hang strikes.
static bool
s_hang_here(const sd3_node_t *self, int unit)
{
    const sd3_node_work_t *w = &self->work;
    if (self->fault.hang < 0)
        return false;
    if (self->o.role == SD3_WIRE_ROLE_MMDIT)
        return w->step == self->fault.hang && unit == w->units / 2;
    return w->tasks - 1 == self->fault.hang && unit == 0;
}

int
sd3_node_work_unit(sd3_node_t *self, int unit, double flops)
{
    sd3_node_work_t *w = &self->work;
    int64_t now = sd3_now_ms();
    if (w->unit >= 0 && w->unit_flops > 0) { // the previous unit ran: measure the rate
        double secs = (double)(now - w->unit_t0_ms) / 1000.0;
        if (secs < 0.001)
            secs = 0.001;
        double r = w->unit_flops / secs / 1e9;
        self->rate_gflops = self->rate_gflops > 0 ? 0.7 * self->rate_gflops + 0.3 * r : r;
    }
    double rate = self->rate_gflops > 0 ? self->rate_gflops : S_RATE_DEFAULT_GFLOPS;
    pthread_mutex_lock(&self->sh.mu);
    sd3_wire_live_t *l = &self->sh.live;
    if (w->unit >= 0)
        l->units_done++;
    l->gflops = self->rate_gflops;
    l->busy_unit = (uint32_t)(unit < w->units ? unit : w->units);
    l->expect_ms = unit < w->units ? (uint64_t)(flops / rate / 1e6) + 1 : 0;
    if (unit < w->units && self->fault.slow_ms > 0)
        l->expect_ms += (uint64_t)(self->fault.slow_ms / w->units);
    self->sh.unit_start_ms = now;
    pthread_mutex_unlock(&self->sh.mu);
    w->unit = unit < w->units ? unit : -1;
    w->unit_flops = flops;
    w->unit_t0_ms = now;
    if (unit >= w->units)
        return 0;
    if (s_hang_here(self, unit)) {
        sd3_log_warn("node", "node=%s fault: hanging in step=%d unit=%d (until stopped)",
                     self->node_id, w->step, unit);
        while (!s_stopping(self))
            s_nap(self, 1000, s_stopping);
        return 1;
    }
    if (self->fault.slow_ms > 0 && !s_nap(self, self->fault.slow_ms / w->units, s_work_dead))
        return 1;
    return s_work_dead(self) ? 1 : 0;
}

void
sd3_node_work_end(sd3_node_t *self)
{
    sd3_node_work_t *w = &self->work;
    w->n = 0;
    w->unit = -1;
    pthread_mutex_lock(&self->sh.mu);
    self->sh.live.busy_request[0] = 0;
    self->sh.live.busy_unit = self->sh.live.busy_units = 0;
    self->sh.live.expect_ms = 0;
    self->sh.unit_start_ms = 0;
    pthread_mutex_unlock(&self->sh.mu);
}

// The hooks of the stages: an mmdit block, an encoder.
static int
s_block_hook(void *user, int block)
{
    sd3_node_t *self = user;
    const sd3_node_work_t *w = &self->work;
    double flops = block < self->o.layer_end
                       ? sd3_mmdit_flops(&self->cfg, (int)w->n_img, (int)w->n_ctx, block,
                                         block + 1) *
                             (double)w->batch
                       : 0;
    return sd3_node_work_unit(self, block - self->o.layer_begin, flops);
}

static int
s_encoder_hook(void *user, int encoder, double flops)
{
    return sd3_node_work_unit(user, encoder, flops);
}

// ---- the compute thread ---------------------------------------------------------------------

static void
s_set_state(sd3_node_t *self, sd3_wire_node_state_t st, uint32_t permille)
{
    pthread_mutex_lock(&self->sh.mu);
    self->sh.live.state = st;
    self->sh.live.load_permille = permille;
    if (st == SD3_WIRE_NODE_READY)
        self->sh.live.load_ms = (uint64_t)(sd3_now_ms() - self->start_ms);
    pthread_mutex_unlock(&self->sh.mu);
}

// The role's weights, for paging in.
static int
s_role_weights(sd3_node_t *self, sd3_weights_t **out)
{
    int n = 0;
    if (self->dit)
        out[n++] = self->w_mmdit;
    if (self->vae)
        out[n++] = self->w_vae;
    for (int i = 0; self->enc && i < 3; i++)
        if (sd3_enc_stage_weights(self->enc, i))
            out[n++] = sd3_enc_stage_weights(self->enc, i);
    return n;
}

// Runs m's blocks once on constant activations of batch 2, a grid x grid token grid and
// n_ctx context tokens; *secs (if given) gets the time.
static int
s_warm_blocks(sd3_node_t *self, sd3_mmdit_t *m, int grid, int n_ctx, double *secs,
              sd3_err_t *err)
{
    sd3_backend_t *be = self->be;
    const int64_t C = self->cfg.hidden, N = (int64_t)grid * grid;
    sd3_mmdit_act_t act = {.batch = 2, .n_ctx = n_ctx, .grid_h = grid, .grid_w = grid,
                           .next_block = sd3_mmdit_first(m)};
    int rc = SD3_ENOMEM;
    if ((act.x = be->ops->tensor_new(be, be->act_dtype, 3, (int64_t[]){2, N, C}, err)) &&
        (act.ctx = be->ops->tensor_new(be, be->act_dtype, 3, (int64_t[]){2, n_ctx, C}, err)) &&
        (act.c = be->ops->tensor_new(be, be->act_dtype, 2, (int64_t[]){2, C}, err)) &&
        (rc = be->ops->fill(be, act.x, 0.01f, err)) == 0 &&
        (rc = be->ops->fill(be, act.ctx, 0.01f, err)) == 0 &&
        (rc = be->ops->fill(be, act.c, 0.01f, err)) == 0) {
        double t0 = sd3_now_s();
        rc = sd3_mmdit_blocks(m, &act, 0, err);
        if (secs)
            *secs = sd3_now_s() - t0;
    }
    sd3_mmdit_act_fini(be, &act);
    return rc;
}

// Pages the role's weights in, reporting permille as it goes; then (mmdit) one warm-up block
// at the 512 px shape, which also gives the first measured rate.
static void
s_warm(sd3_node_t *self)
{
    sd3_weights_t *ws[4];
    int nw = s_role_weights(self, ws);
    uint64_t total = 0;
    for (int i = 0; i < nw; i++)
        total += sd3_weights_ready_bytes(ws[i]);
    pthread_mutex_lock(&self->sh.mu);
    self->sh.load_total = total;
    pthread_mutex_unlock(&self->sh.mu);
    int64_t t0 = sd3_now_ms();
    // The page-in adds to load_done as it goes; heartbeats turn it into permille.
    for (int i = 0; i < nw && !s_stopping(self); i++)
        sd3_weights_page_in(ws[i], &self->sh.load_done, &self->sh.stop);
    uint64_t done = __atomic_load_n(&self->sh.load_done, __ATOMIC_RELAXED);
    s_set_state(self, SD3_WIRE_NODE_LOADING, 999); // warming up
    int64_t t1 = sd3_now_ms();
    if (self->dit && self->o.layer_end > self->o.layer_begin && !s_stopping(self)) {
        sd3_mmdit_t *m = sd3_dit_stage_mmdit(self->dit);
        sd3_mmdit_set_progress(m, NULL, NULL);
        sd3_err_t err = {0};
        // 1. The whole range on a tiny batch: every block's weights get what their first use
        //    does (bf16 packing on the CPU), so the first real step pays none of it.
        if (s_warm_blocks(self, m, 2, 8, NULL, &err) != 0)
            sd3_log_warn("node", "node=%s warm-up range: %s", self->node_id, err.msg);
        // 2. One block at 512 px with CFG (batch 2, 1024 image + 154 context tokens): the
        //    first measured rate, so the controller's expectations are real from step 0.
        sd3_mmdit_t *one = sd3_mmdit_new(self->be, self->w_mmdit, self->o.layer_begin,
                                         self->o.layer_begin + 1, &err);
        double secs = 0;
        if (one && s_warm_blocks(self, one, 32, 154, &secs, &err) == 0) {
            double flops = 2.0 * sd3_mmdit_flops(&self->cfg, 1024, 154, self->o.layer_begin,
                                                 self->o.layer_begin + 1);
            self->rate_gflops = flops / (secs > 1e-3 ? secs : 1e-3) / 1e9;
            pthread_mutex_lock(&self->sh.mu);
            self->sh.live.gflops = self->rate_gflops;
            pthread_mutex_unlock(&self->sh.mu);
        } else {
            sd3_log_warn("node", "node=%s warm-up block: %s", self->node_id, err.msg);
        }
        sd3_mmdit_destroy(&one);
        sd3_mmdit_set_progress(m, s_block_hook, self);
    }
    if (self->vae && !s_stopping(self)) {
        // A decode of an 8x8 latent: the VAE's weights in and prepared (packing) for the
        // first real one.
        sd3_err_t err = {0};
        sd3_tensor_t *lat = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){1, 16, 8, 8}, "latent", &err);
        sd3_tensor_t *rgb = NULL;
        if (lat)
            memset(lat->data, 0, sd3_tensor_nbytes(lat));
        if (!lat || sd3_vae_stage_decode(self->vae, lat, &self->o.vae_tile, NULL, &rgb, NULL, NULL,
                                         &err) != 0)
            sd3_log_warn("node", "node=%s warm-up decode: %s", self->node_id, err.msg);
        sd3_tensor_destroy(&rgb);
        sd3_tensor_destroy(&lat);
    }
    sd3_log_info("node", "node=%s warm: paged in %.1f MiB in %lld ms, warm-up %lld ms, "
                 "rate %.1f GFLOP/s",
                 self->node_id, (double)done / (1 << 20), (long long)(t1 - t0),
                 (long long)(sd3_now_ms() - t1), self->rate_gflops);
}

// Publishes what the heartbeats count from the compute thread's tables.
static void
s_publish(sd3_node_t *self)
{
    uint32_t inflight = 0;
    for (int i = 0; i < SD3_NODE_MAX_REQS; i++)
        inflight += self->reqs[i].used;
    pthread_mutex_lock(&self->sh.mu);
    self->sh.inflight = inflight;
    pthread_mutex_unlock(&self->sh.mu);
}

static void *
s_worker(void *arg)
{
    sd3_node_t *self = arg;
    s_tls_worker_of = self;
    if (!self->o.no_warm)
        s_warm(self);
    s_set_state(self, SD3_WIRE_NODE_READY, 1000);
    sd3_log_info("node", "node=%s ready load_ms=%lld", self->node_id,
                 (long long)(sd3_now_ms() - self->start_ms));
    while (!s_stopping(self)) {
        zmq_pollitem_t items[2 + SD3_NODE_MAX_PEERS];
        int n = 0;
        items[n++] = (zmq_pollitem_t){self->pipe_work, 0, ZMQ_POLLIN, 0};
        items[n++] = (zmq_pollitem_t){sd3_link_socket(self->data), 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < self->n_peers; i++)
            items[n++] = (zmq_pollitem_t){sd3_link_socket(self->peers[i].link), 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(items, n, 100);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            sd3_log_error("node", "node=%s compute poll: %s", self->node_id,
                          zmq_strerror(zmq_errno()));
            break;
        }
        if (rc == 0)
            continue;
        // The controller's messages first (cancels overtake work), then data, then peers.
        if (items[0].revents & ZMQ_POLLIN) {
            sd3_msg_t *msg;
            while ((msg = s_pipe_take(self->pipe_work))) {
                sd3_stage_host_handle(self, NULL, &msg);
                sd3_msg_destroy(&msg);
            }
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
                    s_count(self, true, msgs[nm]);
                    nm++;
                } else if (e.code == SD3_EPROTO) {
                    SD3_NODE_STAT_ADD(self, refused, 1); // answered by the link
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
        s_publish(self);
    }
    pthread_mutex_lock(&self->sh.mu);
    self->sh.done = true;
    pthread_mutex_unlock(&self->sh.mu);
    return NULL;
}

// ---- the I/O thread ---------------------------------------------------------------------------

// Notes that attempts <= attempt of id are dead. A CANCEL raises the note (`raise`); a JOB
// of attempt a sets it to a - 1 exactly, and a new ENCODE or DECODE (or a JOB of attempt 0)
// clears it (`clear`): a request id used again starts clean.
static void
s_note_dead(sd3_node_t *self, const char *id, uint32_t attempt, bool raise, bool clear)
{
    if (!id[0])
        return;
    pthread_mutex_lock(&self->sh.mu);
    int slot = -1;
    for (int i = 0; i < SD3_NODE_DEAD_MAX && slot < 0; i++)
        if (!strcmp(self->sh.dead[i].id, id))
            slot = i;
    if (clear) {
        if (slot >= 0)
            self->sh.dead[slot].id[0] = 0;
    } else if (slot < 0) {
        slot = self->sh.dead_next;
        self->sh.dead_next = (self->sh.dead_next + 1) % SD3_NODE_DEAD_MAX;
        snprintf(self->sh.dead[slot].id, SD3_WIRE_ID_MAX, "%s", id);
        self->sh.dead[slot].attempt = attempt;
    } else if (!raise || attempt > self->sh.dead[slot].attempt) {
        self->sh.dead[slot].attempt = attempt;
    }
    pthread_mutex_unlock(&self->sh.mu);
}

// One message from the controller, in the I/O thread: registration and liveness here, the
// rest to the compute thread (after noting what it kills).
static void
s_ctrl_msg(sd3_node_t *self, sd3_msg_t **msg_p)
{
    sd3_msg_t *msg = *msg_p;
    switch (msg->type) {
    case SD3_MSG_ACK:
        if (!msg->request_id[0]) {
            if (!self->registered)
                sd3_log_info("node", "node=%s registered", self->node_id);
            self->registered = true;
            sd3_msg_destroy(msg_p);
            return;
        }
        break;
    case SD3_MSG_SHUTDOWN:
        self->shutdown = true;
        sd3_msg_destroy(msg_p);
        return;
    case SD3_MSG_ERROR:
        if (!msg->request_id[0] && msg->status == SD3_ENOTFOUND) {
            // The controller restarted (or took us for dead): what we hold belongs to
            // attempts it does not know any more. Stop it now; the compute thread clears.
            sd3_heartbeat_reset(self);
            pthread_mutex_lock(&self->sh.mu);
            self->sh.drop_gen++;
            pthread_mutex_unlock(&self->sh.mu);
        }
        break;
    case SD3_MSG_CANCEL: // an encoder's or vae's task has no attempts: all of it
        s_note_dead(self, msg->request_id,
                    self->o.role == SD3_WIRE_ROLE_MMDIT ? msg->attempt : UINT32_MAX, true, false);
        break;
    case SD3_MSG_JOB:
        s_note_dead(self, msg->request_id, msg->attempt - 1, false, msg->attempt == 0);
        break;
    case SD3_MSG_ENCODE:
    case SD3_MSG_DECODE:
    case SD3_MSG_VAE_ENCODE:
        s_note_dead(self, msg->request_id, 0, false, true);
        break;
    default:
        break;
    }
    if (s_pipe_put(self->pipe_io, msg_p) != 0) {
        sd3_log_error("node", "node=%s inproc pipe: %s", self->node_id, zmq_strerror(zmq_errno()));
        sd3_msg_destroy(msg_p);
    }
}

// Stops the compute thread (at its next unit boundary) and waits for it.
static void
s_join_worker(sd3_node_t *self)
{
    if (!self->worker_started)
        return;
    pthread_mutex_lock(&self->sh.mu);
    __atomic_store_n(&self->sh.stop, true, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&self->sh.mu);
    pthread_join(self->worker, NULL);
    self->worker_started = false;
    // what it sent last to the controller
    sd3_msg_t *m;
    while ((m = s_pipe_take(self->pipe_io))) {
        sd3_err_t e = {0};
        sd3_link_send(self->ctrl, NULL, &m, &e);
        sd3_msg_destroy(&m);
    }
}

int
sd3_node_run(sd3_node_t *self, volatile sig_atomic_t *stop, sd3_err_t *err)
{
    if (!self->worker_started) {
        if (pthread_create(&self->worker, NULL, s_worker, self) != 0)
            return sd3_err_set(err, SD3_EIO, "node %s: cannot start the compute thread",
                               self->node_id);
        self->worker_started = true;
    }
    int rc = 0;
    sd3_heartbeat_tick(self);
    while (!(stop && *stop) && !self->shutdown) {
        zmq_pollitem_t items[2] = {
            {sd3_link_socket(self->ctrl), 0, ZMQ_POLLIN, 0},
            {self->pipe_io, 0, ZMQ_POLLIN, 0},
        };
        int hb = self->o.heartbeat_ms > 0 ? self->o.heartbeat_ms : 500;
        int prc = zmq_poll(items, 2, hb / 2 < 100 ? hb / 2 : 100);
        if (prc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            rc = sd3_err_set(err, SD3_EIO, "node %s: poll: %s", self->node_id,
                             zmq_strerror(zmq_errno()));
            break;
        }
        sd3_heartbeat_tick(self);
        pthread_mutex_lock(&self->sh.mu);
        bool done = self->sh.done;
        pthread_mutex_unlock(&self->sh.mu);
        if (done) {
            rc = sd3_err_set(err, SD3_EIO, "node %s: the compute thread stopped", self->node_id);
            break;
        }
        if (items[0].revents & ZMQ_POLLIN) {
            for (int k = 0; k < 64; k++) { // everything waiting, bounded
                sd3_msg_t *msg = NULL;
                sd3_err_t e = {0};
                if (sd3_link_recv(self->ctrl, 0, NULL, &msg, &e) == 0) {
                    s_count(self, true, msg);
                    s_ctrl_msg(self, &msg);
                } else if (e.code == SD3_EPROTO) {
                    SD3_NODE_STAT_ADD(self, refused, 1);
                } else {
                    break;
                }
                sd3_msg_destroy(&msg);
            }
        }
        if (items[1].revents & ZMQ_POLLIN) {
            sd3_msg_t *m;
            while ((m = s_pipe_take(self->pipe_io))) {
                sd3_err_t e = {0};
                if (sd3_link_send(self->ctrl, NULL, &m, &e) != 0)
                    sd3_log_warn("node", "node=%s to the controller: %s", self->node_id, e.msg);
                sd3_msg_destroy(&m);
            }
        }
    }
    s_join_worker(self);
    sd3_log_info("node", "node=%s stopping steps=%llu refused=%llu batches=%llu batched=%llu",
                 self->node_id, (unsigned long long)SD3_NODE_STAT_GET(self, steps),
                 (unsigned long long)SD3_NODE_STAT_GET(self, refused),
                 (unsigned long long)SD3_NODE_STAT_GET(self, batches),
                 (unsigned long long)SD3_NODE_STAT_GET(self, batched_steps));
    return rc;
}
