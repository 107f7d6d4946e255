/*  test_wire - sd3_wire over real ZeroMQ sockets: round trips of every body and codec over
 *  inproc:// and tcp://127.0.0.1, then every malformed kind of sd3_wire_bad refused with
 *  SD3_EPROTO and a message naming the problem, answered with an ERROR, and the receiver
 *  still serving the next good message.  */
#include "sd3_link.h"
#include "sd3_test.h"
#include "sd3_wire.h"
#include "sd3_wire_bad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static void
s_timeouts(void *sock, int ms)
{
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &ms, sizeof ms);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
}

static sd3_tensor_t *
s_ramp(sd3_dtype_t dtype, int ndim, const int64_t *shape, const char *name, float scale)
{
    sd3_tensor_t *t = sd3_tensor_new(dtype, ndim, shape);
    size_t n = (size_t)sd3_tensor_numel(t);
    if (dtype == SD3_F32)
        for (size_t i = 0; i < n; i++)
            ((float *)t->data)[i] = scale * sinf((float)i * 0.37f) * (float)(1 + i % 7);
    else
        for (size_t i = 0; i < sd3_tensor_nbytes(t); i++)
            ((uint8_t *)t->data)[i] = (uint8_t)(i * 29 + 3);
    t->name = name;
    return t;
}

static void
s_add(sd3_msg_t *m, sd3_tensor_t *t, sd3_codec_t codec, sd3_dtype_t wire)
{
    sd3_codec_opts_t o = {.codec = codec, .wire_dtype = wire};
    sd3_err_t err = {0};
    CHECK_MSG(sd3_msg_add_tensor(m, &t, &o, &err) == 0, "%s", err.msg);
    sd3_tensor_destroy(&t);
}

// A JOB with every field set, one tensor per codec, one narrowed to bf16, one view.
static sd3_msg_t *
s_job(float *view_buf)
{
    sd3_msg_t *m = sd3_msg_new(SD3_MSG_JOB, "req-0001");
    m->step = 7;
    m->attempt = 2;
    m->body_kind = SD3_WIRE_BODY_JOB;
    sd3_wire_job_t *j = &m->body.job;
    sd3_wire_generate_t *g = &j->request;
    snprintf(g->prompt, sizeof g->prompt, "a lighthouse at dusk, \"oil\" painting \xc3\xa9");
    snprintf(g->negative, sizeof g->negative, "blurry");
    g->width = 1024, g->height = 768, g->steps = 28, g->cfg = 4.5f, g->shift = 3.0f;
    g->seed = 0xfedcba9876543210ull;
    g->sampler = SD3_WIRE_SAMPLER_DPMPP_2M;
    g->slg_scale = 2.5f, g->n_slg_layers = 3;
    g->slg_layers[0] = 7, g->slg_layers[1] = 8, g->slg_layers[2] = 9;
    g->slg_start = 0.01f, g->slg_end = 0.2f, g->no_t5 = true, g->t5_len = 256;
    g->strength = 0.6f, g->deadline_ms = 1800000000000ull;
    snprintf(g->model, sizeof g->model, "sd3.5-medium");
    j->pipeline_id = 3, j->stage_index = 1, j->n_stages = 4, j->layer_begin = 6;
    j->layer_end = 12;
    snprintf(j->next_address, sizeof j->next_address, "tcp://10.0.0.7:5601");
    snprintf(j->controller_address, sizeof j->controller_address, "tcp://10.0.0.1:5555");
    j->n_sigmas = 29;
    for (int i = 0; i < 29; i++)
        j->sigmas[i] = 1.0f - (float)i / 28.0f;
    j->first_step = 5, j->attempt = 2;
    s_add(m, s_ramp(SD3_F32, 4, (int64_t[]){1, 16, 16, 12}, "latent", 1), SD3_CODEC_RAW, SD3_F32);
    s_add(m, s_ramp(SD3_F32, 3, (int64_t[]){2, 77, 64}, "context", 3), SD3_CODEC_ZSTD, SD3_F32);
    s_add(m, s_ramp(SD3_F32, 2, (int64_t[]){2, 96}, "pooled", 2), SD3_CODEC_SHUFFLE_ZSTD, SD3_F32);
    s_add(m, s_ramp(SD3_F32, 2, (int64_t[]){4, 50}, "narrow", 5), SD3_CODEC_SHUFFLE_ZSTD, SD3_BF16);
    s_add(m, s_ramp(SD3_I32, 1, (int64_t[]){77}, "tokens", 1), SD3_CODEC_ZSTD, SD3_F16);
    for (int i = 0; i < 40; i++)
        view_buf[i] = (float)i * 0.5f;
    sd3_tensor_t *v = sd3_tensor_new_view(SD3_F32, 2, (int64_t[]){5, 8}, view_buf);
    v->name = "view";
    s_add(m, v, SD3_CODEC_RAW, SD3_F32);
    return m;
}

static void
s_check_job(const sd3_msg_t *m)
{
    CHECK(m->type == SD3_MSG_JOB && !strcmp(m->request_id, "req-0001"));
    CHECK(m->step == 7 && m->attempt == 2 && m->status == SD3_OK);
    CHECK(m->body_kind == SD3_WIRE_BODY_JOB);
    const sd3_wire_job_t *j = &m->body.job;
    const sd3_wire_generate_t *g = &j->request;
    CHECK(!strcmp(g->prompt, "a lighthouse at dusk, \"oil\" painting \xc3\xa9"));
    CHECK(!strcmp(g->negative, "blurry") && !strcmp(g->model, "sd3.5-medium"));
    CHECK(g->width == 1024 && g->height == 768 && g->steps == 28 && g->cfg == 4.5f);
    CHECK(g->shift == 3.0f && g->seed == 0xfedcba9876543210ull);
    CHECK(g->sampler == SD3_WIRE_SAMPLER_DPMPP_2M && g->slg_scale == 2.5f);
    CHECK(g->n_slg_layers == 3 && g->slg_layers[2] == 9 && g->slg_end == 0.2f);
    CHECK(g->no_t5 && g->t5_len == 256 && g->strength == 0.6f);
    CHECK(g->deadline_ms == 1800000000000ull);
    CHECK(j->pipeline_id == 3 && j->stage_index == 1 && j->n_stages == 4);
    CHECK(j->layer_begin == 6 && j->layer_end == 12 && j->first_step == 5 && j->attempt == 2);
    CHECK(!strcmp(j->next_address, "tcp://10.0.0.7:5601"));
    CHECK(!strcmp(j->controller_address, "tcp://10.0.0.1:5555"));
    CHECK(j->n_sigmas == 29 && j->sigmas[28] == 0.0f && j->sigmas[14] == 0.5f);
    CHECK(m->n_tensors == 6);
    static const struct {
        const char *name;
        sd3_dtype_t dtype;
        int ndim;
        int64_t shape[4];
        float scale;
    } want[] = {{"latent", SD3_F32, 4, {1, 16, 16, 12}, 1},
                {"context", SD3_F32, 3, {2, 77, 64}, 3},
                {"pooled", SD3_F32, 2, {2, 96}, 2},
                {"tokens", SD3_I32, 1, {77}, 1}};
    for (int i = 0; i < 4; i++) {
        sd3_err_t err = {0};
        CHECK_MSG(
            sd3_msg_expect(m, want[i].name, want[i].dtype, want[i].ndim, want[i].shape, &err) == 0,
            "%s", err.msg);
        sd3_tensor_t *ref = s_ramp(want[i].dtype, want[i].ndim, want[i].shape, "", want[i].scale);
        sd3_tensor_t *got = sd3_msg_tensor(m, want[i].name);
        CHECK_MSG(got && !memcmp(got->data, ref->data, sd3_tensor_nbytes(ref)),
                  "'%s' not bit exact", want[i].name);
        sd3_tensor_destroy(&ref);
    }
    // bf16 transfer: within bf16 rounding of the original
    sd3_tensor_t *ref = s_ramp(SD3_F32, 2, (int64_t[]){4, 50}, "", 5);
    const sd3_tensor_t *nar = sd3_msg_tensor(m, "narrow");
    CHECK(nar && nar->dtype == SD3_F32 && m->tensors[3].opts.wire_dtype == SD3_BF16);
    for (int i = 0; nar && i < 200; i++) {
        float a = ((float *)ref->data)[i], b = ((float *)nar->data)[i];
        CHECK_MSG(fabsf(a - b) <= fabsf(a) * 0x1p-8f, "narrow[%d] %g vs %g", i, a, b);
    }
    sd3_tensor_destroy(&ref);
    const sd3_tensor_t *v = sd3_msg_tensor(m, "view");
    CHECK(v && ((float *)v->data)[39] == 19.5f && ((float *)v->data)[1] == 0.5f);
}

static void
test_bodies_inproc(void *ctx)
{
    void *a = zmq_socket(ctx, ZMQ_PAIR), *b = zmq_socket(ctx, ZMQ_PAIR);
    s_timeouts(a, 5000);
    s_timeouts(b, 5000);
    CHECK(zmq_bind(b, "inproc://bodies") == 0 && zmq_connect(a, "inproc://bodies") == 0);
    sd3_err_t err = {0};
    float view_buf[40];
    sd3_msg_t *m = s_job(view_buf), *got = NULL;
    CHECK_MSG(sd3_wire_send(a, &m, &err) == 0, "%s", err.msg);
    CHECK(m == NULL);
    // The view was copied at send: scribbling on its memory now must not reach the receiver.
    memset(view_buf, 0xff, sizeof view_buf);
    CHECK_MSG(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0, "%s", err.msg);
    if (got)
        s_check_job(got);
    sd3_tensor_t *lat = got ? sd3_msg_take_tensor(got, "latent") : NULL;
    CHECK(lat && !strcmp(lat->name, "latent") && got->n_tensors == 5);
    CHECK(got && !sd3_msg_tensor(got, "latent") && sd3_msg_tensor(got, "view"));
    sd3_msg_destroy(&got);
    CHECK(lat && !strcmp(lat->name, "latent")); // the name lives with the tensor
    sd3_tensor_destroy(&lat);

    // REGISTER, HEARTBEAT, PROGRESS, STATUS, ERROR, CANCEL
    m = sd3_msg_new(SD3_MSG_REGISTER, NULL);
    m->body_kind = SD3_WIRE_BODY_REGISTER;
    sd3_wire_register_t *r = &m->body.reg;
    r->role = SD3_WIRE_ROLE_MMDIT;
    snprintf(r->node_id, sizeof r->node_id, "gpu-3");
    snprintf(r->address, sizeof r->address, "tcp://10.0.0.3:5601");
    r->layer_begin = 12, r->layer_end = 24, r->depth = 24, r->max_batch = 4;
    snprintf(r->backend, sizeof r->backend, "cuda");
    snprintf(r->device, sizeof r->device, "NVIDIA H100");
    r->device_memory = 80ull << 30, r->free_memory = 61ull << 30;
    r->nccl_id_len = 128;
    for (int i = 0; i < 128; i++)
        r->nccl_id[i] = (uint8_t)(255 - i);
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    CHECK_MSG(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0, "%s", err.msg);
    CHECK(got && got->body_kind == SD3_WIRE_BODY_REGISTER && got->n_tensors == 0);
    if (got) {
        r = &got->body.reg;
        CHECK(r->role == SD3_WIRE_ROLE_MMDIT && !strcmp(r->node_id, "gpu-3"));
        CHECK(r->layer_begin == 12 && r->layer_end == 24 && r->depth == 24 && r->max_batch == 4);
        CHECK(!strcmp(r->device, "NVIDIA H100") && r->device_memory == 80ull << 30);
        CHECK(r->nccl_id_len == 128 && r->nccl_id[127] == 128);
    }
    sd3_msg_destroy(&got);

    m = sd3_msg_new(SD3_MSG_STATUS, "");
    m->body_kind = SD3_WIRE_BODY_STATUS;
    sd3_wire_status_t *st = &m->body.status;
    st->queue_depth = 3, st->queue_capacity = 64, st->completed = 1234567890123ull;
    st->n_nodes = 2;
    snprintf(st->nodes[1].node.node_id, SD3_WIRE_ID_MAX, "vae-1");
    st->nodes[1].node.role = SD3_WIRE_ROLE_VAE;
    st->nodes[1].alive = true, st->nodes[1].link = SD3_WIRE_LINK_NCCL;
    st->nodes[1].last_seen_ms = 250, st->nodes[1].registered_ms = 86400123;
    st->n_pipelines = 1;
    st->pipelines[0].id = 9, st->pipelines[0].n_stages = 2;
    snprintf(st->pipelines[0].node_ids[1], SD3_WIRE_ID_MAX, "gpu-3");
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    CHECK_MSG(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0, "%s", err.msg);
    if (got) {
        st = &got->body.status;
        CHECK(got->body_kind == SD3_WIRE_BODY_STATUS && st->queue_capacity == 64);
        CHECK(st->completed == 1234567890123ull && st->n_nodes == 2 && st->n_pipelines == 1);
        CHECK(!strcmp(st->nodes[1].node.node_id, "vae-1") && st->nodes[1].alive);
        CHECK(st->nodes[1].last_seen_ms == 250 && st->nodes[1].registered_ms == 86400123);
        CHECK(st->nodes[1].link == SD3_WIRE_LINK_NCCL &&
              st->nodes[1].node.role == SD3_WIRE_ROLE_VAE);
        CHECK(st->pipelines[0].id == 9 && !strcmp(st->pipelines[0].node_ids[1], "gpu-3"));
    }
    sd3_msg_destroy(&got);

    m = sd3_msg_new(SD3_MSG_PROGRESS, "req-9");
    m->body_kind = SD3_WIRE_BODY_PROGRESS;
    m->body.progress = (sd3_wire_progress_t){.step = 4, .steps = 28, .sigma = 0.75f, .seed = 7};
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    CHECK(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0);
    CHECK(got && got->body.progress.step == 4 && got->body.progress.sigma == 0.75f);
    sd3_msg_destroy(&got);

    m = sd3_msg_new(SD3_MSG_HEARTBEAT, NULL);
    m->body_kind = SD3_WIRE_BODY_HEARTBEAT;
    snprintf(m->body.heartbeat.node_id, SD3_WIRE_ID_MAX, "enc-1");
    m->body.heartbeat.inflight = 2;
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    CHECK(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0);
    CHECK(got && !strcmp(got->body.heartbeat.node_id, "enc-1") &&
          got->body.heartbeat.inflight == 2);
    sd3_msg_destroy(&got);

    sd3_err_t cause = {0};
    sd3_err_set(&cause, SD3_EFULL, "queue full: 64 of 64 requests waiting");
    m = sd3_msg_new_error("req-10", 0, &cause);
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    CHECK(sd3_wire_recv(b, NULL, NULL, &got, &err) == 0);
    CHECK(got && got->type == SD3_MSG_ERROR && got->status == SD3_EFULL);
    CHECK(got && !strcmp(got->message, cause.msg) && !strcmp(got->request_id, "req-10"));
    sd3_msg_destroy(&got);

    // A per-receiver cap: the same JOB refused when a tensor may hold only 4 KiB.
    sd3_wire_limits_t lim;
    sd3_wire_limits_default(&lim);
    lim.max_tensor_bytes = 4096;
    m = s_job(view_buf);
    CHECK(sd3_wire_send(a, &m, &err) == 0);
    sd3_err_clear(&err);
    CHECK(sd3_wire_recv(b, &lim, NULL, &got, &err) == SD3_EPROTO && !got);
    CHECK_MSG(strstr(err.msg, "'latent'") && strstr(err.msg, "cap of 4096"), "%s", err.msg);
    CHECK_MSG(strstr(err.msg, "JOB request 'req-0001' step 7"), "%s", err.msg);

    // Nothing waiting: the receive timeout is SD3_ETIMEDOUT, not a hang.
    s_timeouts(b, 20);
    sd3_err_clear(&err);
    CHECK(sd3_wire_recv(b, NULL, NULL, &got, &err) == SD3_ETIMEDOUT && !got);
    zmq_close(a);
    zmq_close(b);
}

static void
test_msg_api(void)
{
    sd3_msg_t *m = sd3_msg_new(SD3_MSG_STEP, "r");
    sd3_err_t err = {0};
    sd3_tensor_t *t = s_ramp(SD3_F32, 1, (int64_t[]){4}, "x", 1);
    sd3_tensor_t *u = s_ramp(SD3_F32, 1, (int64_t[]){4}, "x", 1);
    CHECK(sd3_msg_add_tensor(m, &t, NULL, &err) == 0 && t == NULL);
    CHECK(sd3_msg_add_tensor(m, &u, NULL, &err) == SD3_EINVAL && u != NULL);
    CHECK_MSG(strstr(err.msg, "two tensors named 'x'"), "%s", err.msg);
    sd3_tensor_destroy(&u);
    sd3_err_clear(&err);
    CHECK(sd3_msg_expect(m, "x", SD3_F32, 1, (int64_t[]){-1}, &err) == 0);
    CHECK(sd3_msg_expect(m, "x", SD3_F32, 1, (int64_t[]){5}, &err) == SD3_EPROTO);
    CHECK_MSG(strstr(err.msg, "STEP: tensor 'x' is F32 [4], want F32 [5]"), "%s", err.msg);
    sd3_msg_destroy(&m);
    CHECK(m == NULL);
}

static int s_bad_total, s_bad_rejected;

// Client DEALER -> server ROUTER at `endpoint`: a good STEP, then every malformed kind, each
// followed by a good STEP that must still be served.
static void
test_router(void *ctx, const char *endpoint)
{
    void *server = zmq_socket(ctx, ZMQ_ROUTER), *client = zmq_socket(ctx, ZMQ_DEALER);
    char ep[256];
    size_t eplen = sizeof ep;
    s_timeouts(server, 10000);
    s_timeouts(client, 10000);
    CHECK(zmq_bind(server, endpoint) == 0);
    zmq_getsockopt(server, ZMQ_LAST_ENDPOINT, ep, &eplen);
    CHECK(zmq_connect(client, ep) == 0);
    printf("%s\n", ep);
    sd3_err_t err = {0};
    sd3_wire_peer_t peer;
    sd3_msg_t *got = NULL;

    for (int kind = -1; kind < sd3_wire_bad_count(); kind++) {
        char rid[32];
        snprintf(rid, sizeof rid, "bad-%d", kind);
        if (kind >= 0) {
            sd3_wire_bad_msg_t bad;
            sd3_err_clear(&err);
            int rc = sd3_wire_bad_build(kind, rid, &bad, &err);
            CHECK_MSG(rc == 0, "build '%s': %s", sd3_wire_bad_name(kind), err.msg);
            if (rc)
                continue;
            CHECK(sd3_wire_bad_send(client, &bad, NULL, 0, &err) == 0);
            sd3_wire_bad_fini(&bad);
            sd3_err_clear(&err);
            rc = sd3_wire_recv_from(server, NULL, &peer, &got, &err);
            if (rc == 0 && sd3_wire_bad_is_stage_check(kind))
                rc = sd3_wire_bad_check_step(got, &err); // the stage's own shape check
            sd3_msg_destroy(&got);
            bool ok = rc == SD3_EPROTO && strstr(err.msg, sd3_wire_bad_expect(kind));
            CHECK_MSG(ok, "'%s': rc %d, message '%s', want EPROTO with '%s'",
                      sd3_wire_bad_name(kind), rc, err.msg, sd3_wire_bad_expect(kind));
            s_bad_total++;
            s_bad_rejected += ok;
            if (!strncmp(endpoint, "inproc", 6))
                printf("  %-30s -> %s\n", sd3_wire_bad_name(kind), err.msg);
            // The answer goes back to the sender, naming the request when it was readable.
            sd3_err_t serr = {0};
            CHECK(peer.routing_id_len > 0);
            CHECK_MSG(sd3_wire_reply_error(server, &peer, &err, &serr) == 0, "%s", serr.msg);
            sd3_msg_t *reply = NULL;
            CHECK_MSG(sd3_wire_recv(client, NULL, NULL, &reply, &serr) == 0, "%s", serr.msg);
            CHECK(reply && reply->type == SD3_MSG_ERROR && reply->status == SD3_EPROTO);
            CHECK(reply && !strcmp(reply->message, err.msg));
            CHECK(reply && (!reply->request_id[0] || !strcmp(reply->request_id, rid)));
            sd3_msg_destroy(&reply);
        }
        // ... and the next good message is served.
        sd3_wire_bad_msg_t good;
        CHECK(sd3_wire_bad_good(rid, &good, &err) == 0);
        CHECK(sd3_wire_bad_send(client, &good, NULL, 0, &err) == 0);
        sd3_wire_bad_fini(&good);
        sd3_err_clear(&err);
        CHECK_MSG(sd3_wire_recv_from(server, NULL, &peer, &got, &err) == 0, "after '%s': %s",
                  sd3_wire_bad_name(kind), err.msg);
        CHECK(got && got->type == SD3_MSG_STEP && !strcmp(got->request_id, rid));
        CHECK(got && got->step == 3 && sd3_wire_bad_check_step(got, &err) == 0);
        // Reply through the ROUTER with the routing id: a LATENT carrying "x" back.
        if (got) {
            sd3_msg_t *back = sd3_msg_new(SD3_MSG_LATENT, rid);
            sd3_tensor_t *x = sd3_msg_take_tensor(got, "x");
            CHECK(sd3_msg_add_tensor(back, &x, NULL, &err) == 0);
            CHECK_MSG(sd3_wire_send_to(server, &peer, &back, &err) == 0, "%s", err.msg);
            sd3_msg_t *latent = NULL;
            CHECK_MSG(sd3_wire_recv(client, NULL, NULL, &latent, &err) == 0, "%s", err.msg);
            CHECK(latent && latent->type == SD3_MSG_LATENT &&
                  sd3_msg_expect(latent, "x", SD3_F32, 3, (int64_t[]){2, 16, 24}, &err) == 0);
            sd3_msg_destroy(&latent);
        }
        sd3_msg_destroy(&got);
    }
    // A REQ-style peer puts an empty delimiter after the routing id: skipped.
    sd3_wire_bad_msg_t good;
    CHECK(sd3_wire_bad_good("delim", &good, &err) == 0);
    CHECK(zmq_send(client, "", 0, ZMQ_SNDMORE) == 0);
    CHECK(sd3_wire_bad_send(client, &good, NULL, 0, &err) == 0);
    sd3_wire_bad_fini(&good);
    CHECK_MSG(sd3_wire_recv_from(server, NULL, &peer, &got, &err) == 0, "%s", err.msg);
    CHECK(got && !strcmp(got->request_id, "delim"));
    sd3_msg_destroy(&got);
    zmq_close(client);
    zmq_close(server);
}

// sd3_link: a serve link answers a malformed message itself and keeps serving.
static void
test_link(void *ctx)
{
    sd3_err_t err = {0};
    sd3_link_opts_t copts = {.identity = "stage-1", .send_timeout_ms = 2000};
    sd3_link_t *srv = sd3_link_new_serve(ctx, "tcp://127.0.0.1:*", NULL, &err);
    CHECK_MSG(srv, "%s", err.msg);
    if (!srv)
        return;
    CHECK(!strncmp(sd3_link_endpoint(srv), "tcp://127.0.0.1:", 16));
    sd3_link_t *cli = sd3_link_new_connect(ctx, sd3_link_endpoint(srv), &copts, &err);
    CHECK_MSG(cli, "%s", err.msg);
    sd3_link_t *dup = sd3_link_new_serve(ctx, sd3_link_endpoint(srv), NULL, &err);
    CHECK(!dup && err.code == SD3_EIO && strstr(err.msg, "bind"));
    sd3_err_clear(&err);

    sd3_wire_peer_t from;
    sd3_msg_t *m = NULL;
    CHECK(sd3_link_recv(srv, 0, &from, &m, &err) == SD3_ETIMEDOUT && !m);
    sd3_err_clear(&err);
    sd3_wire_bad_msg_t bad;
    int lie = 0;
    while (lie < sd3_wire_bad_count() && strcmp(sd3_wire_bad_name(lie), "raw_bytes lie"))
        lie++;
    CHECK(sd3_wire_bad_build(lie, "lnk", &bad, &err) == 0);
    CHECK(sd3_wire_bad_send(sd3_link_socket(cli), &bad, NULL, 0, &err) == 0);
    sd3_wire_bad_fini(&bad);
    CHECK(sd3_link_recv(srv, 5000, &from, &m, &err) == SD3_EPROTO && !m);
    CHECK(sd3_link_rejected(srv) == 1);
    CHECK(from.routing_id_len == 7 && !memcmp(from.routing_id, "stage-1", 7));
    sd3_err_clear(&err);
    CHECK_MSG(sd3_link_recv(cli, 5000, NULL, &m, &err) == 0, "%s", err.msg);
    CHECK(m && m->type == SD3_MSG_ERROR && m->status == SD3_EPROTO);
    CHECK(m && !strcmp(m->request_id, "lnk") && strstr(m->message, "raw bytes"));
    sd3_msg_destroy(&m);

    m = sd3_msg_new(SD3_MSG_CANCEL, "lnk");
    CHECK_MSG(sd3_link_send(cli, NULL, &m, &err) == 0, "%s", err.msg);
    CHECK_MSG(sd3_link_recv(srv, 5000, &from, &m, &err) == 0, "%s", err.msg);
    CHECK(m && m->type == SD3_MSG_CANCEL && !strcmp(m->request_id, "lnk"));
    sd3_msg_destroy(&m);
    m = sd3_msg_new(SD3_MSG_ACK, "lnk");
    CHECK(sd3_link_send(srv, &from, &m, &err) == 0);
    CHECK(sd3_link_recv(cli, 5000, NULL, &m, &err) == 0 && m && m->type == SD3_MSG_ACK);
    sd3_msg_destroy(&m);
    // A peer the ROUTER does not know: refused, not silently dropped.
    sd3_wire_peer_t ghost = {.routing_id = "ghost", .routing_id_len = 5};
    m = sd3_msg_new(SD3_MSG_ACK, "x");
    sd3_err_clear(&err);
    CHECK(sd3_link_send(srv, &ghost, &m, &err) == SD3_EIO && !m);
    CHECK_MSG(strstr(err.msg, "unreachable"), "%s", err.msg);
    sd3_link_destroy(&cli);
    sd3_link_destroy(&srv);
    CHECK(!srv && !cli);
}

int
main(void)
{
    void *ctx = zmq_ctx_new();
    test_msg_api();
    test_bodies_inproc(ctx);
    test_router(ctx, "inproc://router");
    test_router(ctx, "tcp://127.0.0.1:*");
    test_link(ctx);
    printf("malformed kinds: %d, rejected with EPROTO and the expected message: %d/%d\n",
           sd3_wire_bad_count(), s_bad_rejected, s_bad_total);
    CHECK(s_bad_total == 2 * sd3_wire_bad_count() && s_bad_rejected == s_bad_total);
    CHECK(sd3_wire_bad_count() >= 30);
    zmq_ctx_term(ctx);
    return TEST_RESULT();
}
