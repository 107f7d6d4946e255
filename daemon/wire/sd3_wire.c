/*  sd3_wire - sd3d messages over ZeroMQ multipart (see sd3_wire.h)
 *
 *  Layout of this file: names and small helpers; the message object; body conversion
 *  sd3 <-> protobuf (out: for packing, borrowing the message's memory; in: copying with every
 *  bound checked); encode/decode in memory; the socket functions on top.  */
#include "sd3_wire.h"

#include "sd3.pb-c.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static const char *const s_type_names[SD3_MSG_TYPE_COUNT] = {
    [SD3_MSG_NONE] = "NONE",
    [SD3_MSG_REGISTER] = "REGISTER",
    [SD3_MSG_HEARTBEAT] = "HEARTBEAT",
    [SD3_MSG_GENERATE] = "GENERATE",
    [SD3_MSG_PROGRESS] = "PROGRESS",
    [SD3_MSG_RESULT] = "RESULT",
    [SD3_MSG_ERROR] = "ERROR",
    [SD3_MSG_CANCEL] = "CANCEL",
    [SD3_MSG_ENCODE] = "ENCODE",
    [SD3_MSG_ENCODED] = "ENCODED",
    [SD3_MSG_JOB] = "JOB",
    [SD3_MSG_STEP] = "STEP",
    [SD3_MSG_LATENT] = "LATENT",
    [SD3_MSG_STEP_DONE] = "STEP_DONE",
    [SD3_MSG_DECODE] = "DECODE",
    [SD3_MSG_DECODED] = "DECODED",
    [SD3_MSG_STATUS] = "STATUS",
    [SD3_MSG_VAE_ENCODE] = "VAE_ENCODE",
    [SD3_MSG_VAE_ENCODED] = "VAE_ENCODED",
    [SD3_MSG_ACK] = "ACK",
    [SD3_MSG_SHUTDOWN] = "SHUTDOWN",
};

// The sd3 enums are numbered like the proto ones (sd3_msg_type_t == Sd3__MsgType, ...);
// these fail the build if someone renumbers one side.
_Static_assert((int)SD3_MSG_SHUTDOWN == (int)SD3__MSG_TYPE__MSG_SHUTDOWN,
               "msg types match the proto");
_Static_assert((int)SD3_CODEC_SHUFFLE_ZSTD == (int)SD3__CODEC__CODEC_SHUFFLE_ZSTD, "codecs match");
_Static_assert((int)SD3_F64 + 1 == (int)SD3__DTYPE__DTYPE_F64, "dtypes match the proto (+1)");
_Static_assert((int)SD3_WIRE_ROLE_CLIENT == (int)SD3__ROLE__ROLE_CLIENT, "roles match");
_Static_assert((int)SD3_WIRE_SAMPLER_DPMPP_2M == (int)SD3__SAMPLER__SAMPLER_DPMPP_2M,
               "samplers match");
_Static_assert(-SD3_ENOTFOUND == (int)SD3__STATUS__STATUS_NOTFOUND, "status = -SD3_E*");

#define S_MAX_STATUS 12 // STATUS_NOTFOUND

const char *
sd3_wire_role_name(sd3_wire_role_t role)
{
    switch (role) {
    case SD3_WIRE_ROLE_CONTROLLER:
        return "controller";
    case SD3_WIRE_ROLE_ENCODER:
        return "encoder";
    case SD3_WIRE_ROLE_MMDIT:
        return "mmdit";
    case SD3_WIRE_ROLE_VAE:
        return "vae";
    case SD3_WIRE_ROLE_ALL:
        return "all";
    case SD3_WIRE_ROLE_CLIENT:
        return "client";
    default:
        return NULL;
    }
}

const char *
sd3_msg_type_name(sd3_msg_type_t type)
{
    return (unsigned)type < SD3_MSG_TYPE_COUNT ? s_type_names[type] : "?";
}

void
sd3_wire_limits_default(sd3_wire_limits_t *lim)
{
    lim->max_envelope_bytes = (size_t)1 << 20;
    lim->max_tensor_bytes = SD3_CODEC_DEFAULT_CAP;
    lim->max_total_bytes = (size_t)4 << 30;
}

static void
s_free_buf(void *data, void *hint)
{
    (void)hint;
    free(data);
}

static void
s_free_tensor(void *data, void *hint)
{
    (void)data;
    sd3_tensor_t *t = hint;
    sd3_tensor_destroy(&t);
}

// Copies a string read off the wire into a fixed field, refusing what does not fit.
static int
s_str_in(char *dst, size_t cap, const char *src, const char *what, sd3_err_t *err)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        return sd3_err_set(err, SD3_EPROTO, "%s has %zu bytes, at most %zu", what, n, cap - 1);
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
    return 0;
}

static int
s_finite(float v, const char *what, sd3_err_t *err)
{
    return isfinite(v) ? 0 : sd3_err_set(err, SD3_EPROTO, "%s is not a finite number", what);
}

// ---- the message -------------------------------------------------------------------

sd3_msg_t *
sd3_msg_new(sd3_msg_type_t type, const char *request_id)
{
    sd3_msg_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->type = type;
    if (request_id)
        snprintf(self->request_id, sizeof self->request_id, "%s", request_id);
    return self;
}

void
sd3_msg_destroy(sd3_msg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_msg_t *self = *self_p;
    for (int i = 0; i < self->n_tensors; i++)
        sd3_tensor_destroy(&self->tensors[i].tensor);
    free(self);
    *self_p = NULL;
}

sd3_tensor_t *
sd3_msg_tensor(const sd3_msg_t *self, const char *name)
{
    for (int i = 0; i < self->n_tensors; i++) {
        const sd3_tensor_t *t = self->tensors[i].tensor;
        if (t && t->name && !strcmp(t->name, name))
            return self->tensors[i].tensor;
    }
    return NULL;
}

int
sd3_msg_add_tensor(sd3_msg_t *self, sd3_tensor_t **tensor_p, const sd3_codec_opts_t *opts,
                   sd3_err_t *err)
{
    sd3_tensor_t *t = *tensor_p;
    const char *name = t->name ? t->name : "";
    if (self->n_tensors >= SD3_WIRE_MAX_TENSORS)
        return sd3_err_set(err, SD3_EINVAL, "%s: tensor '%s' is one past the %d a message holds",
                           sd3_msg_type_name(self->type), name, SD3_WIRE_MAX_TENSORS);
    if (strlen(name) >= SD3_CODEC_NAME_MAX)
        return sd3_err_set(err, SD3_EINVAL, "tensor name '%.40s...' is longer than %d bytes", name,
                           SD3_CODEC_NAME_MAX - 1);
    if (sd3_msg_tensor(self, name))
        return sd3_err_set(err, SD3_EINVAL, "%s: two tensors named '%s'",
                           sd3_msg_type_name(self->type), name);
    if (t->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "tensor '%s' is on the device", name);
    sd3_msg_tensor_t *slot = &self->tensors[self->n_tensors++];
    slot->tensor = t;
    if (opts)
        slot->opts = *opts;
    else
        memset(&slot->opts, 0, sizeof slot->opts);
    *tensor_p = NULL;
    return 0;
}

sd3_tensor_t *
sd3_msg_take_tensor(sd3_msg_t *self, const char *name)
{
    for (int i = 0; i < self->n_tensors; i++) {
        sd3_tensor_t *t = self->tensors[i].tensor;
        if (t && t->name && !strcmp(t->name, name)) {
            memmove(&self->tensors[i], &self->tensors[i + 1],
                    (size_t)(self->n_tensors - i - 1) * sizeof self->tensors[0]);
            self->n_tensors--;
            return t;
        }
    }
    return NULL;
}

int
sd3_msg_expect(const sd3_msg_t *self, const char *name, sd3_dtype_t dtype, int ndim,
               const int64_t *shape, sd3_err_t *err)
{
    const sd3_tensor_t *t = sd3_msg_tensor(self, name);
    char got[96], want[96];
    if (!t)
        return sd3_err_set(err, SD3_EPROTO, "%s: no tensor '%s'", sd3_msg_type_name(self->type),
                           name);
    bool ok = t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = shape[i] < 0 || shape[i] == t->shape[i];
    if (!ok)
        return sd3_err_set(err, SD3_EPROTO, "%s: tensor '%s' is %s %s, want %s %s",
                           sd3_msg_type_name(self->type), name, sd3_dtype_name(t->dtype),
                           sd3_shape_str(t->ndim, t->shape, got, sizeof got), sd3_dtype_name(dtype),
                           sd3_shape_str(ndim, shape, want, sizeof want));
    return 0;
}

sd3_msg_t *
sd3_msg_new_error(const char *request_id, uint32_t step, const sd3_err_t *cause)
{
    sd3_msg_t *self = sd3_msg_new(SD3_MSG_ERROR, request_id);
    if (!self)
        return NULL;
    self->step = step;
    self->status = cause && cause->code != SD3_OK ? cause->code : SD3_EINTERNAL;
    if (self->status < -S_MAX_STATUS)
        self->status = SD3_EINTERNAL;
    snprintf(self->message, sizeof self->message, "%s",
             cause && cause->msg[0] ? cause->msg : "unknown error");
    return self;
}

// ---- bodies: sd3 -> proto (pointers borrow from the sd3 struct) ----------------------

static void
s_generate_out(const sd3_wire_generate_t *g, Sd3__GenerateRequest *p)
{
    sd3__generate_request__init(p);
    p->prompt = (char *)g->prompt;
    p->negative = (char *)g->negative;
    p->width = g->width;
    p->height = g->height;
    p->steps = g->steps;
    p->cfg = g->cfg;
    p->shift = g->shift;
    p->seed = g->seed;
    p->seed_random = g->seed_random;
    p->sampler = (Sd3__Sampler)g->sampler;
    p->slg_scale = g->slg_scale;
    p->n_slg_layers = (size_t)g->n_slg_layers;
    p->slg_layers = (uint32_t *)g->slg_layers;
    p->slg_start = g->slg_start;
    p->slg_end = g->slg_end;
    p->no_t5 = g->no_t5;
    p->t5_len = g->t5_len;
    p->strength = g->strength;
    p->deadline_ms = g->deadline_ms;
    p->model = (char *)g->model;
}

static void
s_live_out(const sd3_wire_live_t *l, Sd3__NodeLive *p)
{
    sd3__node_live__init(p);
    p->state = (uint32_t)l->state;
    p->load_permille = l->load_permille;
    p->units_done = l->units_done;
    p->busy_request = (char *)l->busy_request;
    p->busy_step = l->busy_step;
    p->busy_unit = l->busy_unit;
    p->busy_units = l->busy_units;
    p->busy_ms = l->busy_ms;
    p->expect_ms = l->expect_ms;
    p->gflops = l->gflops;
    p->threads = l->threads;
    p->fault = (char *)l->fault;
    p->load_ms = l->load_ms;
}

static int
s_live_in(const Sd3__NodeLive *p, sd3_wire_live_t *l, sd3_err_t *err)
{
    memset(l, 0, sizeof *l);
    if (!p)
        return 0;
    if (p->state >= SD3_WIRE_NODE_STATE_COUNT || p->load_permille > 1000 || !isfinite(p->gflops) ||
        p->gflops < 0 || p->busy_unit > p->busy_units)
        return sd3_err_set(err, SD3_EPROTO, "NodeLive: state %u, load %u permille, gflops %g, "
                           "unit %u of %u",
                           p->state, p->load_permille, p->gflops, p->busy_unit, p->busy_units);
    if (s_str_in(l->busy_request, sizeof l->busy_request, p->busy_request, "busy request", err) ||
        s_str_in(l->fault, sizeof l->fault, p->fault, "fault", err))
        return SD3_EPROTO;
    l->state = (sd3_wire_node_state_t)p->state;
    l->load_permille = p->load_permille;
    l->units_done = p->units_done;
    l->busy_step = p->busy_step;
    l->busy_unit = p->busy_unit;
    l->busy_units = p->busy_units;
    l->busy_ms = p->busy_ms;
    l->expect_ms = p->expect_ms;
    l->gflops = p->gflops;
    l->threads = p->threads;
    l->load_ms = p->load_ms;
    return 0;
}

static void
s_register_out(const sd3_wire_register_t *r, Sd3__Register *p, Sd3__NodeLive *live)
{
    sd3__register__init(p);
    s_live_out(&r->live, live);
    p->live = live;
    p->role = (Sd3__Role)r->role;
    p->node_id = (char *)r->node_id;
    p->address = (char *)r->address;
    p->layer_begin = r->layer_begin;
    p->layer_end = r->layer_end;
    p->depth = r->depth;
    p->backend = (char *)r->backend;
    p->device = (char *)r->device;
    p->device_memory = r->device_memory;
    p->free_memory = r->free_memory;
    p->model_id = (char *)r->model_id;
    p->codec = (char *)r->codec;
    p->max_batch = r->max_batch;
    p->nccl_unique_id.len = r->nccl_id_len <= SD3_WIRE_NCCL_ID_MAX ? r->nccl_id_len : 0;
    p->nccl_unique_id.data = (uint8_t *)r->nccl_id;
}

static void
s_job_out(const sd3_wire_job_t *j, Sd3__Job *p, Sd3__GenerateRequest *req)
{
    sd3__job__init(p);
    s_generate_out(&j->request, req);
    p->request = req;
    p->pipeline_id = j->pipeline_id;
    p->stage_index = j->stage_index;
    p->n_stages = j->n_stages;
    p->layer_begin = j->layer_begin;
    p->layer_end = j->layer_end;
    p->next_address = (char *)j->next_address;
    p->controller_address = (char *)j->controller_address;
    p->n_sigmas = (size_t)j->n_sigmas;
    p->sigmas = (float *)j->sigmas;
    p->first_step = j->first_step;
    p->attempt = j->attempt;
}

// The status report needs arrays of sub-messages; they live in one allocation (*mem_p).
static int
s_status_out(const sd3_wire_status_t *s, Sd3__StatusReport *p, void **mem_p, sd3_err_t *err)
{
    int nn = s->n_nodes, np = s->n_pipelines;
    if (nn < 0 || nn > SD3_WIRE_MAX_NODES || np < 0 || np > SD3_WIRE_MAX_PIPELINES)
        return sd3_err_set(err, SD3_EINVAL, "status report: %d nodes, %d pipelines", nn, np);
    size_t bytes = (size_t)nn * (sizeof(Sd3__NodeInfo) + sizeof(Sd3__Register) +
                                 sizeof(Sd3__NodeLive) + sizeof(void *)) +
                   (size_t)np * (sizeof(Sd3__PipelineInfo) + sizeof(void *) +
                                 SD3_WIRE_MAX_STAGES * sizeof(char *));
    uint8_t *mem = calloc(1, bytes ? bytes : 1);
    if (!mem)
        return sd3_err_set(err, SD3_ENOMEM, "status report: out of memory");
    Sd3__NodeInfo *nodes = (Sd3__NodeInfo *)mem;
    Sd3__Register *regs = (Sd3__Register *)(nodes + nn);
    Sd3__NodeLive *lives = (Sd3__NodeLive *)(regs + nn);
    Sd3__PipelineInfo *pipes = (Sd3__PipelineInfo *)(lives + nn);
    Sd3__NodeInfo **node_ptrs = (Sd3__NodeInfo **)(pipes + np);
    Sd3__PipelineInfo **pipe_ptrs = (Sd3__PipelineInfo **)(node_ptrs + nn);
    char **ids = (char **)(pipe_ptrs + np);
    sd3__status_report__init(p);
    p->queue_depth = s->queue_depth;
    p->queue_capacity = s->queue_capacity;
    p->inflight = s->inflight;
    p->completed = s->completed;
    p->failed = s->failed;
    p->uptime_ms = s->uptime_ms;
    for (int i = 0; i < nn; i++) {
        sd3__node_info__init(&nodes[i]);
        s_register_out(&s->nodes[i].node, &regs[i], &lives[i]);
        nodes[i].node = &regs[i];
        nodes[i].alive = s->nodes[i].alive;
        nodes[i].inflight = s->nodes[i].inflight;
        nodes[i].last_seen_ms = s->nodes[i].last_seen_ms;
        nodes[i].registered_ms = s->nodes[i].registered_ms;
        nodes[i].hung = s->nodes[i].hung;
        nodes[i].link = (Sd3__Link)s->nodes[i].link;
        nodes[i].bytes_sent = s->nodes[i].bytes_sent;
        nodes[i].bytes_received = s->nodes[i].bytes_received;
        nodes[i].batches = s->nodes[i].batches;
        nodes[i].batched_steps = s->nodes[i].batched_steps;
        node_ptrs[i] = &nodes[i];
    }
    for (int i = 0; i < np; i++) {
        const sd3_wire_pipeline_info_t *pi = &s->pipelines[i];
        int ns = pi->n_stages < 0                     ? 0
                 : pi->n_stages > SD3_WIRE_MAX_STAGES ? SD3_WIRE_MAX_STAGES
                                                      : pi->n_stages;
        sd3__pipeline_info__init(&pipes[i]);
        pipes[i].id = pi->id;
        pipes[i].inflight = pi->inflight;
        pipes[i].max_inflight = pi->max_inflight;
        pipes[i].n_node_ids = (size_t)ns;
        pipes[i].node_ids = ids + (size_t)i * SD3_WIRE_MAX_STAGES;
        for (int k = 0; k < ns; k++)
            pipes[i].node_ids[k] = (char *)pi->node_ids[k];
        pipe_ptrs[i] = &pipes[i];
    }
    p->n_nodes = (size_t)nn;
    p->nodes = node_ptrs;
    p->n_pipelines = (size_t)np;
    p->pipelines = pipe_ptrs;
    p->cache_hits = s->cache_hits;
    p->cache_misses = s->cache_misses;
    p->step_count = s->step_count;
    p->step_seconds_sum = s->step_seconds_sum;
    p->failovers = s->failovers;
    p->step_timeouts = s->step_timeouts;
    p->nodes_hung = s->nodes_hung;
    p->n_step_buckets = SD3_WIRE_STEP_BUCKETS;
    p->step_buckets = (uint64_t *)s->step_buckets; // read only by the packer
    *mem_p = mem;
    return 0;
}

// ---- bodies: proto -> sd3 (every bound checked) ----------------------------------------

static int
s_generate_in(const Sd3__GenerateRequest *p, sd3_wire_generate_t *g, sd3_err_t *err)
{
    memset(g, 0, sizeof *g);
    if (!p)
        return 0;
    if (s_str_in(g->prompt, sizeof g->prompt, p->prompt, "prompt", err) ||
        s_str_in(g->negative, sizeof g->negative, p->negative, "negative prompt", err) ||
        s_str_in(g->model, sizeof g->model, p->model, "model id", err))
        return SD3_EPROTO;
    if (p->width > SD3_WIRE_MAX_SIDE || p->height > SD3_WIRE_MAX_SIDE)
        return sd3_err_set(err, SD3_EPROTO, "size %ux%u, at most %d per side", p->width, p->height,
                           SD3_WIRE_MAX_SIDE);
    if (p->steps > SD3_WIRE_MAX_SIGMAS - 1)
        return sd3_err_set(err, SD3_EPROTO, "%u steps, at most %d", p->steps,
                           SD3_WIRE_MAX_SIGMAS - 1);
    if ((unsigned)p->sampler >= SD3_WIRE_SAMPLER_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "unknown sampler %d", (int)p->sampler);
    if (p->n_slg_layers > SD3_WIRE_MAX_SLG_LAYERS)
        return sd3_err_set(err, SD3_EPROTO, "%zu skip layers, at most %d", p->n_slg_layers,
                           SD3_WIRE_MAX_SLG_LAYERS);
    if (p->t5_len > 4096)
        return sd3_err_set(err, SD3_EPROTO, "t5_len %u, at most 4096", p->t5_len);
    if (s_finite(p->cfg, "cfg", err) || s_finite(p->shift, "shift", err) ||
        s_finite(p->slg_scale, "slg_scale", err) || s_finite(p->slg_start, "slg_start", err) ||
        s_finite(p->slg_end, "slg_end", err) || s_finite(p->strength, "strength", err))
        return SD3_EPROTO;
    g->width = p->width;
    g->height = p->height;
    g->steps = p->steps;
    g->cfg = p->cfg;
    g->shift = p->shift;
    g->seed = p->seed;
    g->seed_random = p->seed_random;
    g->sampler = (sd3_wire_sampler_t)p->sampler;
    g->slg_scale = p->slg_scale;
    g->n_slg_layers = (int)p->n_slg_layers;
    for (size_t i = 0; i < p->n_slg_layers; i++)
        g->slg_layers[i] = p->slg_layers[i];
    g->slg_start = p->slg_start;
    g->slg_end = p->slg_end;
    g->no_t5 = p->no_t5;
    g->t5_len = p->t5_len;
    g->strength = p->strength;
    g->deadline_ms = p->deadline_ms;
    return 0;
}

static int
s_register_in(const Sd3__Register *p, sd3_wire_register_t *r, sd3_err_t *err)
{
    memset(r, 0, sizeof *r);
    if (!p)
        return 0;
    if ((unsigned)p->role >= SD3_WIRE_ROLE_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "unknown role %d", (int)p->role);
    if (s_str_in(r->node_id, sizeof r->node_id, p->node_id, "node id", err) ||
        s_str_in(r->address, sizeof r->address, p->address, "address", err) ||
        s_str_in(r->backend, sizeof r->backend, p->backend, "backend", err) ||
        s_str_in(r->device, sizeof r->device, p->device, "device", err) ||
        s_str_in(r->model_id, sizeof r->model_id, p->model_id, "model id", err) ||
        s_str_in(r->codec, sizeof r->codec, p->codec, "codec", err))
        return SD3_EPROTO;
    if (p->layer_begin > p->layer_end || (p->depth && p->layer_end > p->depth))
        return sd3_err_set(err, SD3_EPROTO, "layers [%u, %u) of depth %u", p->layer_begin,
                           p->layer_end, p->depth);
    if (p->nccl_unique_id.len > SD3_WIRE_NCCL_ID_MAX)
        return sd3_err_set(err, SD3_EPROTO, "NCCL id has %zu bytes, at most %d",
                           p->nccl_unique_id.len, SD3_WIRE_NCCL_ID_MAX);
    if (s_live_in(p->live, &r->live, err))
        return SD3_EPROTO;
    r->role = (sd3_wire_role_t)p->role;
    r->layer_begin = p->layer_begin;
    r->layer_end = p->layer_end;
    r->depth = p->depth;
    r->device_memory = p->device_memory;
    r->free_memory = p->free_memory;
    r->max_batch = p->max_batch;
    r->nccl_id_len = p->nccl_unique_id.len;
    if (r->nccl_id_len)
        memcpy(r->nccl_id, p->nccl_unique_id.data, r->nccl_id_len);
    return 0;
}

static int
s_job_in(const Sd3__Job *p, sd3_wire_job_t *j, sd3_err_t *err)
{
    memset(j, 0, sizeof *j);
    if (s_generate_in(p->request, &j->request, err))
        return SD3_EPROTO;
    if (s_str_in(j->next_address, sizeof j->next_address, p->next_address, "next address", err) ||
        s_str_in(j->controller_address, sizeof j->controller_address, p->controller_address,
                 "controller address", err))
        return SD3_EPROTO;
    if (p->n_stages > SD3_WIRE_MAX_STAGES || (p->n_stages && p->stage_index >= p->n_stages))
        return sd3_err_set(err, SD3_EPROTO, "stage %u of %u (at most %d stages)", p->stage_index,
                           p->n_stages, SD3_WIRE_MAX_STAGES);
    if (p->layer_begin > p->layer_end)
        return sd3_err_set(err, SD3_EPROTO, "layers [%u, %u)", p->layer_begin, p->layer_end);
    if (p->n_sigmas > SD3_WIRE_MAX_SIGMAS)
        return sd3_err_set(err, SD3_EPROTO, "%zu sigmas, at most %d", p->n_sigmas,
                           SD3_WIRE_MAX_SIGMAS);
    for (size_t i = 0; i < p->n_sigmas; i++)
        if (!isfinite(p->sigmas[i]))
            return sd3_err_set(err, SD3_EPROTO, "sigma %zu is not a finite number", i);
    if (p->n_sigmas && p->first_step >= p->n_sigmas)
        return sd3_err_set(err, SD3_EPROTO, "first step %u of %zu sigmas", p->first_step,
                           p->n_sigmas);
    j->pipeline_id = p->pipeline_id;
    j->stage_index = p->stage_index;
    j->n_stages = p->n_stages;
    j->layer_begin = p->layer_begin;
    j->layer_end = p->layer_end;
    j->n_sigmas = (int)p->n_sigmas;
    if (p->n_sigmas)
        memcpy(j->sigmas, p->sigmas, p->n_sigmas * sizeof(float));
    j->first_step = p->first_step;
    j->attempt = p->attempt;
    return 0;
}

static int
s_status_in(const Sd3__StatusReport *p, sd3_wire_status_t *s, sd3_err_t *err)
{
    memset(s, 0, sizeof *s);
    if (p->n_nodes > SD3_WIRE_MAX_NODES || p->n_pipelines > SD3_WIRE_MAX_PIPELINES)
        return sd3_err_set(err, SD3_EPROTO,
                           "status report: %zu nodes, %zu pipelines (at most "
                           "%d, %d)",
                           p->n_nodes, p->n_pipelines, SD3_WIRE_MAX_NODES, SD3_WIRE_MAX_PIPELINES);
    s->queue_depth = p->queue_depth;
    s->queue_capacity = p->queue_capacity;
    s->inflight = p->inflight;
    s->completed = p->completed;
    s->failed = p->failed;
    s->uptime_ms = p->uptime_ms;
    for (size_t i = 0; i < p->n_nodes; i++) {
        const Sd3__NodeInfo *n = p->nodes[i];
        sd3_wire_node_info_t *o = &s->nodes[i];
        if ((unsigned)n->link >= SD3_WIRE_LINK_COUNT)
            return sd3_err_set(err, SD3_EPROTO, "status report: node %zu: unknown link %d", i,
                               (int)n->link);
        if (n->node && s_register_in(n->node, &o->node, err))
            return SD3_EPROTO;
        o->alive = n->alive;
        o->inflight = n->inflight;
        o->last_seen_ms = n->last_seen_ms;
        o->registered_ms = n->registered_ms;
        o->hung = n->hung;
        o->link = (sd3_wire_link_t)n->link;
        o->bytes_sent = n->bytes_sent;
        o->bytes_received = n->bytes_received;
        o->batches = n->batches;
        o->batched_steps = n->batched_steps;
    }
    s->n_nodes = (int)p->n_nodes;
    for (size_t i = 0; i < p->n_pipelines; i++) {
        const Sd3__PipelineInfo *q = p->pipelines[i];
        sd3_wire_pipeline_info_t *o = &s->pipelines[i];
        if (q->n_node_ids > SD3_WIRE_MAX_STAGES)
            return sd3_err_set(err, SD3_EPROTO,
                               "status report: pipeline %u has %zu stages, "
                               "at most %d",
                               q->id, q->n_node_ids, SD3_WIRE_MAX_STAGES);
        for (size_t k = 0; k < q->n_node_ids; k++)
            if (s_str_in(o->node_ids[k], sizeof o->node_ids[k], q->node_ids[k], "node id", err))
                return SD3_EPROTO;
        o->id = q->id;
        o->n_stages = (int)q->n_node_ids;
        o->inflight = q->inflight;
        o->max_inflight = q->max_inflight;
    }
    s->n_pipelines = (int)p->n_pipelines;
    if (p->n_step_buckets > SD3_WIRE_STEP_BUCKETS)
        return sd3_err_set(err, SD3_EPROTO, "status report: %zu step buckets, at most %d",
                           p->n_step_buckets, SD3_WIRE_STEP_BUCKETS);
    s->cache_hits = p->cache_hits;
    s->cache_misses = p->cache_misses;
    s->step_count = p->step_count;
    s->step_seconds_sum = isfinite(p->step_seconds_sum) ? p->step_seconds_sum : 0;
    s->failovers = p->failovers;
    s->step_timeouts = p->step_timeouts;
    s->nodes_hung = p->nodes_hung;
    for (size_t i = 0; i < p->n_step_buckets; i++)
        s->step_buckets[i] = p->step_buckets[i];
    return 0;
}

// Which body a message type must carry (NONE: any or none).
static sd3_wire_body_t
s_required_body(sd3_msg_type_t type)
{
    switch (type) {
    case SD3_MSG_REGISTER:
        return SD3_WIRE_BODY_REGISTER;
    case SD3_MSG_HEARTBEAT:
        return SD3_WIRE_BODY_HEARTBEAT;
    case SD3_MSG_GENERATE:
    case SD3_MSG_ENCODE:
        return SD3_WIRE_BODY_GENERATE;
    case SD3_MSG_JOB:
        return SD3_WIRE_BODY_JOB;
    case SD3_MSG_PROGRESS:
        return SD3_WIRE_BODY_PROGRESS;
    default:
        return SD3_WIRE_BODY_NONE;
    }
}

static const char *
s_body_name(sd3_wire_body_t kind)
{
    static const char *const names[] = {"none", "GenerateRequest", "Register",    "Heartbeat",
                                        "Job",  "Progress",        "StatusReport"};
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

static int
s_body_in(const Sd3__Envelope *env, sd3_msg_t *msg, sd3_err_t *err)
{
    switch (env->body_case) {
    case SD3__ENVELOPE__BODY__NOT_SET:
        msg->body_kind = SD3_WIRE_BODY_NONE;
        break;
    case SD3__ENVELOPE__BODY_GENERATE:
        msg->body_kind = SD3_WIRE_BODY_GENERATE;
        if (s_generate_in(env->generate, &msg->body.generate, err))
            return sd3_err_prefix(err, "GenerateRequest");
        break;
    case SD3__ENVELOPE__BODY_REGISTER:
        msg->body_kind = SD3_WIRE_BODY_REGISTER;
        if (s_register_in(env->register_, &msg->body.reg, err))
            return sd3_err_prefix(err, "Register");
        break;
    case SD3__ENVELOPE__BODY_HEARTBEAT:
        msg->body_kind = SD3_WIRE_BODY_HEARTBEAT;
        if (s_str_in(msg->body.heartbeat.node_id, sizeof msg->body.heartbeat.node_id,
                     env->heartbeat->node_id, "Heartbeat node id", err))
            return SD3_EPROTO;
        msg->body.heartbeat.inflight = env->heartbeat->inflight;
        msg->body.heartbeat.free_memory = env->heartbeat->free_memory;
        msg->body.heartbeat.uptime_ms = env->heartbeat->uptime_ms;
        msg->body.heartbeat.bytes_sent = env->heartbeat->bytes_sent;
        msg->body.heartbeat.bytes_received = env->heartbeat->bytes_received;
        msg->body.heartbeat.cache_hits = env->heartbeat->cache_hits;
        msg->body.heartbeat.cache_misses = env->heartbeat->cache_misses;
        msg->body.heartbeat.batches = env->heartbeat->batches;
        msg->body.heartbeat.batched_steps = env->heartbeat->batched_steps;
        if (s_live_in(env->heartbeat->live, &msg->body.heartbeat.live, err))
            return sd3_err_prefix(err, "Heartbeat");
        break;
    case SD3__ENVELOPE__BODY_JOB:
        msg->body_kind = SD3_WIRE_BODY_JOB;
        if (s_job_in(env->job, &msg->body.job, err))
            return sd3_err_prefix(err, "Job");
        break;
    case SD3__ENVELOPE__BODY_PROGRESS: {
        const Sd3__Progress *p = env->progress;
        msg->body_kind = SD3_WIRE_BODY_PROGRESS;
        if (s_finite(p->sigma, "Progress sigma", err))
            return SD3_EPROTO;
        if (p->step > p->steps)
            return sd3_err_set(err, SD3_EPROTO, "Progress: step %u of %u", p->step, p->steps);
        msg->body.progress = (sd3_wire_progress_t){p->step,       p->steps,          p->sigma,
                                                   p->elapsed_ms, p->queue_position, p->seed};
        break;
    }
    case SD3__ENVELOPE__BODY_STATUS_REPORT:
        msg->body_kind = SD3_WIRE_BODY_STATUS;
        if (s_status_in(env->status_report, &msg->body.status, err))
            return SD3_EPROTO;
        break;
    default:
        return sd3_err_set(err, SD3_EPROTO, "unknown body %d", (int)env->body_case);
    }
    sd3_wire_body_t want = s_required_body(msg->type);
    if (want != SD3_WIRE_BODY_NONE && msg->body_kind != want)
        return sd3_err_set(err, SD3_EPROTO, "%s needs a %s body, got %s",
                           sd3_msg_type_name(msg->type), s_body_name(want),
                           s_body_name(msg->body_kind));
    return 0;
}

// ---- encode / decode in memory --------------------------------------------------------

void
sd3_wire_frames_fini(sd3_wire_frames_t *frames)
{
    for (int i = 0; i < frames->n; i++) {
        sd3_wire_frame_t *f = &frames->frames[i];
        if (f->free_fn)
            f->free_fn(f->data, f->hint);
        memset(f, 0, sizeof *f);
    }
    frames->n = 0;
}

static int
s_pack_envelope(const sd3_msg_t *msg, const sd3_codec_desc_t *descs, sd3_wire_frame_t *frame,
                sd3_err_t *err)
{
    Sd3__Envelope env = SD3__ENVELOPE__INIT;
    Sd3__TensorDesc tds[SD3_WIRE_MAX_TENSORS], *tdp[SD3_WIRE_MAX_TENSORS];
    Sd3__GenerateRequest gen;
    Sd3__Register reg;
    Sd3__Heartbeat hb;
    Sd3__NodeLive live;
    Sd3__Job job;
    Sd3__Progress prog;
    Sd3__StatusReport st;
    void *status_mem = NULL;
    int rc = 0;

    if ((unsigned)msg->type >= SD3_MSG_TYPE_COUNT || msg->type == SD3_MSG_NONE)
        return sd3_err_set(err, SD3_EINVAL, "message type %d unknown", (int)msg->type);
    if (msg->status > 0 || msg->status < -S_MAX_STATUS)
        return sd3_err_set(err, SD3_EINVAL, "status %d is not an SD3_E* code", msg->status);
    env.protocol_version = SD3_WIRE_VERSION;
    env.type = (Sd3__MsgType)msg->type;
    env.request_id = (char *)msg->request_id;
    env.step = msg->step;
    env.attempt = msg->attempt;
    env.status = (Sd3__Status)(-msg->status);
    env.message = (char *)msg->message;
    for (int i = 0; i < msg->n_tensors; i++) {
        const sd3_codec_desc_t *d = &descs[i];
        sd3__tensor_desc__init(&tds[i]);
        tds[i].name = (char *)d->name;
        tds[i].dtype = (Sd3__DType)(d->dtype + 1);
        tds[i].wire_dtype = (Sd3__DType)(d->wire_dtype + 1);
        tds[i].n_shape = (size_t)d->ndim;
        tds[i].shape = (int64_t *)d->shape;
        tds[i].codec = (Sd3__Codec)d->codec;
        tds[i].raw_bytes = d->raw_bytes;
        tds[i].wire_bytes = d->wire_bytes;
        tds[i].checksum = d->checksum;
        tdp[i] = &tds[i];
    }
    env.n_tensors = (size_t)msg->n_tensors;
    env.tensors = tdp;
    switch (msg->body_kind) {
    case SD3_WIRE_BODY_NONE:
        break;
    case SD3_WIRE_BODY_GENERATE:
        s_generate_out(&msg->body.generate, &gen);
        env.body_case = SD3__ENVELOPE__BODY_GENERATE;
        env.generate = &gen;
        break;
    case SD3_WIRE_BODY_REGISTER:
        s_register_out(&msg->body.reg, &reg, &live);
        env.body_case = SD3__ENVELOPE__BODY_REGISTER;
        env.register_ = &reg;
        break;
    case SD3_WIRE_BODY_HEARTBEAT:
        sd3__heartbeat__init(&hb);
        hb.node_id = (char *)msg->body.heartbeat.node_id;
        hb.inflight = msg->body.heartbeat.inflight;
        hb.free_memory = msg->body.heartbeat.free_memory;
        hb.uptime_ms = msg->body.heartbeat.uptime_ms;
        hb.bytes_sent = msg->body.heartbeat.bytes_sent;
        hb.bytes_received = msg->body.heartbeat.bytes_received;
        hb.cache_hits = msg->body.heartbeat.cache_hits;
        hb.cache_misses = msg->body.heartbeat.cache_misses;
        hb.batches = msg->body.heartbeat.batches;
        hb.batched_steps = msg->body.heartbeat.batched_steps;
        s_live_out(&msg->body.heartbeat.live, &live);
        hb.live = &live;
        env.body_case = SD3__ENVELOPE__BODY_HEARTBEAT;
        env.heartbeat = &hb;
        break;
    case SD3_WIRE_BODY_JOB:
        s_job_out(&msg->body.job, &job, &gen);
        env.body_case = SD3__ENVELOPE__BODY_JOB;
        env.job = &job;
        break;
    case SD3_WIRE_BODY_PROGRESS: {
        const sd3_wire_progress_t *p = &msg->body.progress;
        sd3__progress__init(&prog);
        prog.step = p->step;
        prog.steps = p->steps;
        prog.sigma = p->sigma;
        prog.elapsed_ms = p->elapsed_ms;
        prog.queue_position = p->queue_position;
        prog.seed = p->seed;
        env.body_case = SD3__ENVELOPE__BODY_PROGRESS;
        env.progress = &prog;
        break;
    }
    case SD3_WIRE_BODY_STATUS:
        if ((rc = s_status_out(&msg->body.status, &st, &status_mem, err)) != 0)
            return rc;
        env.body_case = SD3__ENVELOPE__BODY_STATUS_REPORT;
        env.status_report = &st;
        break;
    default:
        return sd3_err_set(err, SD3_EINVAL, "body kind %d unknown", (int)msg->body_kind);
    }
    size_t len = sd3__envelope__get_packed_size(&env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        free(status_mem);
        return sd3_err_set(err, SD3_ENOMEM, "envelope: out of memory (%zu bytes)", len);
    }
    sd3__envelope__pack(&env, buf);
    free(status_mem);
    *frame = (sd3_wire_frame_t){buf, len, s_free_buf, NULL};
    return 0;
}

int
sd3_wire_encode(sd3_msg_t **msg_p, sd3_wire_frames_t *out, sd3_err_t *err)
{
    sd3_msg_t *msg = *msg_p;
    sd3_codec_desc_t descs[SD3_WIRE_MAX_TENSORS];
    int rc = 0;
    *msg_p = NULL;
    memset(out, 0, sizeof *out);
    out->n = 1;
    for (int i = 0; i < msg->n_tensors; i++) {
        sd3_tensor_t *t = msg->tensors[i].tensor;
        void *data;
        size_t len;
        // An owned tensor that travels as it is goes to ZeroMQ itself; a view is copied.
        rc = sd3_codec_encode(t, &msg->tensors[i].opts, !t->owns, &descs[i], &data, &len, err);
        if (rc)
            goto fail;
        if (data == t->data && t->owns) {
            out->frames[1 + i] = (sd3_wire_frame_t){data, len, s_free_tensor, t};
            msg->tensors[i].tensor = NULL; // the frame keeps it now
        } else {
            out->frames[1 + i] = (sd3_wire_frame_t){data, len, s_free_buf, NULL};
        }
        out->n = 2 + i;
    }
    if ((rc = s_pack_envelope(msg, descs, &out->frames[0], err)) != 0)
        goto fail;
    out->n = 1 + msg->n_tensors;
    sd3_msg_destroy(&msg);
    return 0;
fail:
    sd3_wire_frames_fini(out);
    sd3_msg_destroy(&msg);
    return rc;
}

// Fills peer from a parsed envelope, bounded; never fails.
static void
s_peer_from(const Sd3__Envelope *env, sd3_wire_peer_t *peer)
{
    if (!peer)
        return;
    peer->type =
        (unsigned)env->type < SD3_MSG_TYPE_COUNT ? (sd3_msg_type_t)env->type : SD3_MSG_NONE;
    // An id that does not fit is not echoed cut short: the reply names no request then.
    const char *id = env->request_id ? env->request_id : "";
    snprintf(peer->request_id, sizeof peer->request_id, "%s",
             strlen(id) < sizeof peer->request_id ? id : "");
    peer->step = env->step;
}

static int
s_desc_in(const Sd3__TensorDesc *p, int index, sd3_codec_desc_t *d, sd3_err_t *err)
{
    memset(d, 0, sizeof *d);
    if (s_str_in(d->name, sizeof d->name, p->name, "tensor name", err))
        return sd3_err_prefix(err, "tensor %d", index);
    if ((int)p->dtype < 1 || (int)p->dtype > (int)SD3_DTYPE_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': unknown dtype %d", d->name,
                           (int)p->dtype);
    if ((int)p->wire_dtype < 1 || (int)p->wire_dtype > (int)SD3_DTYPE_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': unknown wire dtype %d", d->name,
                           (int)p->wire_dtype);
    if ((unsigned)p->codec >= SD3_CODEC_COUNT)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': unknown codec %d", d->name,
                           (int)p->codec);
    if (p->n_shape > SD3_MAX_DIM)
        return sd3_err_set(err, SD3_EPROTO, "tensor '%s': %zu dims, at most %d", d->name,
                           p->n_shape, SD3_MAX_DIM);
    d->dtype = (sd3_dtype_t)(p->dtype - 1);
    d->wire_dtype = (sd3_dtype_t)(p->wire_dtype - 1);
    d->ndim = (int)p->n_shape;
    for (size_t k = 0; k < p->n_shape; k++)
        d->shape[k] = p->shape[k];
    d->codec = (sd3_codec_t)p->codec;
    d->raw_bytes = p->raw_bytes;
    d->wire_bytes = p->wire_bytes;
    d->checksum = p->checksum;
    return 0;
}

int
sd3_wire_decode(const sd3_wire_frame_t *frames, int n_frames, const sd3_wire_limits_t *lim,
                sd3_wire_peer_t *peer, sd3_msg_t **out, sd3_err_t *err)
{
    sd3_wire_limits_t dflt;
    Sd3__Envelope *env = NULL;
    sd3_msg_t *msg = NULL;
    int rc = SD3_EPROTO;
    *out = NULL;
    if (!lim) {
        sd3_wire_limits_default(&dflt);
        lim = &dflt;
    }
    if (peer) {
        peer->type = SD3_MSG_NONE;
        peer->request_id[0] = '\0';
        peer->step = 0;
    }
    if (n_frames < 1)
        return sd3_err_set(err, SD3_EPROTO, "empty message: no envelope frame");
    if (frames[0].len > lim->max_envelope_bytes)
        return sd3_err_set(err, SD3_EPROTO, "envelope has %zu bytes, at most %zu", frames[0].len,
                           lim->max_envelope_bytes);
    env = sd3__envelope__unpack(NULL, frames[0].len, frames[0].data);
    if (!env)
        return sd3_err_set(err, SD3_EPROTO, "envelope: %zu bytes that are not an sd3 Envelope",
                           frames[0].len);
    s_peer_from(env, peer);
    if (env->protocol_version != SD3_WIRE_VERSION) {
        sd3_err_set(err, SD3_EPROTO, "envelope: protocol version %u, this node speaks %d",
                    env->protocol_version, SD3_WIRE_VERSION);
        goto fail;
    }
    if ((int)env->type <= 0 || (int)env->type >= (int)SD3_MSG_TYPE_COUNT) {
        sd3_err_set(err, SD3_EPROTO, "envelope: unknown message type %d", (int)env->type);
        goto fail;
    }
    if (!(msg = sd3_msg_new((sd3_msg_type_t)env->type, NULL))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "envelope: out of memory");
        goto fail;
    }
    if (s_str_in(msg->request_id, sizeof msg->request_id, env->request_id, "envelope: request id",
                 err) ||
        s_str_in(msg->message, sizeof msg->message, env->message, "envelope: message", err))
        goto fail;
    if ((unsigned)env->status > S_MAX_STATUS) {
        sd3_err_set(err, SD3_EPROTO, "envelope: unknown status %d", (int)env->status);
        goto fail;
    }
    msg->step = env->step;
    msg->attempt = env->attempt;
    msg->status = -(int)env->status;
    if (msg->type == SD3_MSG_ERROR && msg->status == SD3_OK) {
        sd3_err_set(err, SD3_EPROTO, "envelope: ERROR with status OK");
        goto fail;
    }
    if (env->n_tensors > SD3_WIRE_MAX_TENSORS) {
        sd3_err_set(err, SD3_EPROTO, "envelope: %zu tensors, at most %d", env->n_tensors,
                    SD3_WIRE_MAX_TENSORS);
        goto fail;
    }
    if ((size_t)(n_frames - 1) != env->n_tensors) {
        sd3_err_set(err, SD3_EPROTO, "%d tensor frames, the envelope describes %zu", n_frames - 1,
                    env->n_tensors);
        goto fail;
    }
    if (s_body_in(env, msg, err))
        goto fail;

    size_t total = 0;
    for (size_t i = 0; i < env->n_tensors; i++) {
        sd3_codec_desc_t d;
        sd3_tensor_t *t = NULL;
        size_t numel, bytes;
        if ((rc = s_desc_in(env->tensors[i], (int)i, &d, err)) != 0)
            goto fail;
        if (sd3_msg_tensor(msg, d.name)) {
            rc = sd3_err_set(err, SD3_EPROTO, "two tensors named '%s'", d.name);
            goto fail;
        }
        if ((rc = sd3_codec_check(&d, frames[1 + i].len, lim->max_tensor_bytes, err)) != 0)
            goto fail;
        sd3_shape_numel(d.ndim, d.shape, &numel); // checked: no overflow
        bytes = numel * sd3_dtype_size(d.dtype);
        if (sd3_size_add(total, bytes, &total) != 0 || total > lim->max_total_bytes) {
            rc = sd3_err_set(err, SD3_EPROTO,
                             "tensor '%s': the message's tensors exceed the "
                             "cap of %zu bytes",
                             d.name, lim->max_total_bytes);
            goto fail;
        }
        if ((rc = sd3_codec_decode(&d, frames[1 + i].data, frames[1 + i].len, lim->max_tensor_bytes,
                                   &t, err)) != 0)
            goto fail;
        msg->tensors[msg->n_tensors].tensor = t;
        msg->tensors[msg->n_tensors].opts.codec = d.codec;
        msg->tensors[msg->n_tensors].opts.wire_dtype = d.wire_dtype;
        msg->n_tensors++;
    }
    sd3__envelope__free_unpacked(env, NULL);
    *out = msg;
    return 0;
fail:
    if (rc == SD3_OK || (err && err->code != SD3_OK))
        rc = err ? err->code : SD3_EPROTO;
    if (err && err->code == SD3_EPROTO && env->type > 0 && env->type < (int)SD3_MSG_TYPE_COUNT) {
        sd3_wire_peer_t named;
        s_peer_from(env, &named);
        sd3_err_prefix(err, "%s request '%s' step %u", sd3_msg_type_name(named.type),
                       named.request_id, named.step);
    }
    sd3__envelope__free_unpacked(env, NULL);
    sd3_msg_destroy(&msg);
    return rc;
}

// ---- sockets --------------------------------------------------------------------------

static int
s_zmq_error(const char *what, sd3_err_t *err)
{
    int e = zmq_errno();
    if (e == EAGAIN)
        return sd3_err_set(err, SD3_ETIMEDOUT, "%s: timed out", what);
    return sd3_err_set(err, SD3_EIO, "%s: %s", what, zmq_strerror(e));
}

static int
s_send(void *sock, const sd3_wire_peer_t *peer, sd3_msg_t **msg_p, sd3_err_t *err)
{
    sd3_wire_frames_t fr;
    int rc = sd3_wire_encode(msg_p, &fr, err);
    if (rc)
        return rc;
    if (peer && zmq_send(sock, peer->routing_id, peer->routing_id_len, ZMQ_SNDMORE) < 0) {
        rc = s_zmq_error("send routing id", err);
        goto done;
    }
    for (int i = 0; i < fr.n; i++) {
        sd3_wire_frame_t *f = &fr.frames[i];
        zmq_msg_t m;
        if (f->free_fn && f->len > 0) {
            // Zero copy: ZeroMQ frees the buffer (or the tensor) once it has gone out.
            if (zmq_msg_init_data(&m, f->data, f->len, f->free_fn, f->hint) != 0) {
                rc = s_zmq_error("send: zmq_msg_init_data", err);
                goto done;
            }
            f->free_fn = NULL;
        } else {
            if (zmq_msg_init_size(&m, f->len) != 0) {
                rc = s_zmq_error("send: zmq_msg_init_size", err);
                goto done;
            }
            if (f->len)
                memcpy(zmq_msg_data(&m), f->data, f->len);
        }
        if (zmq_msg_send(&m, sock, i + 1 < fr.n ? ZMQ_SNDMORE : 0) < 0) {
            rc = s_zmq_error("send", err);
            zmq_msg_close(&m);
            goto done;
        }
    }
done:
    sd3_wire_frames_fini(&fr);
    return rc;
}

int
sd3_wire_send(void *sock, sd3_msg_t **msg_p, sd3_err_t *err)
{
    return s_send(sock, NULL, msg_p, err);
}

int
sd3_wire_send_to(void *sock, const sd3_wire_peer_t *peer, sd3_msg_t **msg_p, sd3_err_t *err)
{
    if (!peer || !peer->routing_id_len || peer->routing_id_len > SD3_WIRE_ROUTING_ID_MAX) {
        sd3_msg_destroy(msg_p);
        return sd3_err_set(err, SD3_EINVAL, "send: no routing id for a ROUTER socket");
    }
    return s_send(sock, peer, msg_p, err);
}

static bool
s_more(void *sock)
{
    int more = 0;
    size_t len = sizeof more;
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &len) == 0 && more;
}

// Parses only enough of frame 0 to name the request in an error reply.
static void
s_peek_peer(const zmq_msg_t *frame0, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer)
{
    if (!peer || zmq_msg_size((zmq_msg_t *)frame0) > lim->max_envelope_bytes)
        return;
    Sd3__Envelope *env = sd3__envelope__unpack(NULL, zmq_msg_size((zmq_msg_t *)frame0),
                                               zmq_msg_data((zmq_msg_t *)frame0));
    if (env) {
        s_peer_from(env, peer);
        sd3__envelope__free_unpacked(env, NULL);
    }
}

static int
s_recv(void *sock, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer, bool routed,
       sd3_msg_t **out, sd3_err_t *err)
{
    enum { CAP = 1 + SD3_WIRE_MAX_TENSORS };
    zmq_msg_t parts[CAP];
    sd3_wire_frame_t frames[CAP];
    sd3_wire_limits_t dflt;
    int n = 0, rc = 0;
    size_t extra = 0;
    bool first = true, bad_id = false;
    *out = NULL;
    if (!lim) {
        sd3_wire_limits_default(&dflt);
        lim = &dflt;
    }
    if (peer) {
        peer->routing_id_len = 0;
        peer->type = SD3_MSG_NONE;
        peer->request_id[0] = '\0';
        peer->step = 0;
    }
    if (routed) {
        zmq_msg_t id;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, sock, 0) < 0) {
            zmq_msg_close(&id);
            return s_zmq_error("recv", err);
        }
        first = false;
        size_t len = zmq_msg_size(&id);
        if (len == 0 || len > SD3_WIRE_ROUTING_ID_MAX)
            bad_id = true;
        else if (peer) {
            memcpy(peer->routing_id, zmq_msg_data(&id), len);
            peer->routing_id_len = len;
        }
        zmq_msg_close(&id);
        if (!s_more(sock)) {
            if (bad_id)
                return sd3_err_set(err, SD3_EPROTO, "recv: bad routing id (%zu bytes)", len);
            return sd3_err_set(err, SD3_EPROTO, "empty message: no envelope frame");
        }
    }
    // Read every part, keeping the first CAP; the rest are counted and dropped, so the next
    // receive starts at a message boundary whatever this one was.
    for (;;) {
        zmq_msg_t tmp, *m = n < CAP ? &parts[n] : &tmp;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, sock, 0) < 0) {
            zmq_msg_close(m);
            rc = s_zmq_error("recv", err);
            if (!first) // mid-message: the socket is closing or broken
                rc = sd3_err_set(err, SD3_EIO, "recv: message cut off: %s",
                                 zmq_strerror(zmq_errno()));
            goto done;
        }
        bool delimiter = routed && n == 0 && extra == 0 && zmq_msg_size(m) == 0 && s_more(sock);
        first = false;
        if (delimiter) {
            zmq_msg_close(m);
            routed = false; // skip one empty delimiter only
        } else if (n < CAP) {
            n++;
        } else {
            zmq_msg_close(m);
            extra++;
        }
        if (!s_more(sock))
            break;
    }
    if (bad_id) {
        rc = sd3_err_set(err, SD3_EPROTO, "recv: routing id longer than %d bytes",
                         SD3_WIRE_ROUTING_ID_MAX);
        goto done;
    }
    if (n > 0)
        s_peek_peer(&parts[0], lim, peer);
    if (extra) {
        rc = sd3_err_set(err, SD3_EPROTO, "message has %zu tensor frames, at most %d",
                         (size_t)n - 1 + extra, SD3_WIRE_MAX_TENSORS);
        goto done;
    }
    for (int i = 0; i < n; i++)
        frames[i] =
            (sd3_wire_frame_t){zmq_msg_data(&parts[i]), zmq_msg_size(&parts[i]), NULL, NULL};
    rc = sd3_wire_decode(frames, n, lim, peer, out, err);
done:
    for (int i = 0; i < n; i++)
        zmq_msg_close(&parts[i]);
    return rc;
}

int
sd3_wire_recv(void *sock, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer, sd3_msg_t **out,
              sd3_err_t *err)
{
    return s_recv(sock, lim, peer, false, out, err);
}

int
sd3_wire_recv_from(void *sock, const sd3_wire_limits_t *lim, sd3_wire_peer_t *peer, sd3_msg_t **out,
                   sd3_err_t *err)
{
    return s_recv(sock, lim, peer, true, out, err);
}

int
sd3_wire_reply_error(void *sock, const sd3_wire_peer_t *peer, const sd3_err_t *cause,
                     sd3_err_t *err)
{
    sd3_msg_t *reply =
        sd3_msg_new_error(peer ? peer->request_id : NULL, peer ? peer->step : 0, cause);
    if (!reply)
        return sd3_err_set(err, SD3_ENOMEM, "error reply: out of memory");
    if (peer && peer->routing_id_len)
        return sd3_wire_send_to(sock, peer, &reply, err);
    return sd3_wire_send(sock, &reply, err);
}
