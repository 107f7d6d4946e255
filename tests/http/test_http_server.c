/*  test_http_server - the HTTP API end to end against a fake controller, with real clients
 *
 *  A thread plays the controller on a ROUTER (sd3_link): STATUS gets a report; GENERATE gets
 *  ACK, three PROGRESS and a RESULT with a real PNG of the requested size (its `parameters`
 *  text and the request echo), except for the prompts "full" (ERROR SD3_EFULL), "fail"
 *  (ERROR SD3_EINTERNAL), "slow" (ACK, then nothing until CANCEL) and "mute" (nothing).
 *  sd3_http serves in front of it with a bearer token and a 3 s request limit.
 *
 *  Checked here: a client that hangs up mid-request makes the server send CANCEL (raw
 *  socket, then the fake's cancel count and the "canceled" counter of /metrics); then
 *  tests/http/clients.sh runs curl, python3, the openai npm package and promtool against
 *  the server (200s, reply shapes, 400/401/404/405/413/429/502/504/500); finally, with the
 *  controller gone, /healthz is 503 and /metrics says sd3_up 0.  */
#include "sd3_client.h"
#include "sd3_http.h"
#include "sd3_link.h"
#include "sd3_png.h"
#include "sd3_test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

typedef struct {
    sd3_link_t *link;
    atomic_bool stop;
    atomic_int cancels, generates;
    sd3_wire_peer_t slow_peer[8];
    char slow_id[8][SD3_WIRE_ID_MAX];
    bool slow_done[8];
    uint32_t slow_step[8];
    int n_slow;
} s_fake_t;

static void
s_send(s_fake_t *f, const sd3_wire_peer_t *to, sd3_msg_t *msg)
{
    sd3_err_t err = {0};
    if (msg && sd3_link_send(f->link, to, &msg, &err) != 0)
        fprintf(stderr, "fake controller: send: %s\n", err.msg);
}

static void
s_error(s_fake_t *f, const sd3_wire_peer_t *to, const char *id, int code, const char *text)
{
    sd3_err_t cause = {0};
    sd3_err_set(&cause, code, "%s", text);
    s_send(f, to, sd3_msg_new_error(id, 0, &cause));
}

static void
s_generate(s_fake_t *f, const sd3_wire_peer_t *from, const sd3_msg_t *req)
{
    const sd3_wire_generate_t *g = &req->body.generate;
    atomic_fetch_add(&f->generates, 1);
    if (strcmp(g->prompt, "mute") == 0)
        return;
    if (strcmp(g->prompt, "full") == 0) {
        s_error(f, from, req->request_id, SD3_EFULL, "queue is full (16 requests waiting)");
        return;
    }
    s_send(f, from, sd3_msg_new(SD3_MSG_ACK, req->request_id));
    if (strcmp(g->prompt, "fail") == 0) {
        s_error(f, from, req->request_id, SD3_EINTERNAL, "stage mmdit-0 exploded");
        return;
    }
    if (strcmp(g->prompt, "slow") == 0) {
        if (f->n_slow < 8) {
            f->slow_peer[f->n_slow] = *from;
            snprintf(f->slow_id[f->n_slow++], SD3_WIRE_ID_MAX, "%s", req->request_id);
        }
        return;
    }
    sd3_wire_generate_t used = *g; // defaults resolved, as the controller echoes them
    used.width = g->width ? g->width : 64;
    used.height = g->height ? g->height : 64;
    used.steps = g->steps ? g->steps : 4;
    used.cfg = g->cfg > 0 ? g->cfg : 5.0f;
    used.sampler = g->sampler ? g->sampler : SD3_WIRE_SAMPLER_EULER;
    for (uint32_t s = 1; s <= 3; s++) {
        sd3_msg_t *p = sd3_msg_new(SD3_MSG_PROGRESS, req->request_id);
        p->body_kind = SD3_WIRE_BODY_PROGRESS;
        p->body.progress =
            (sd3_wire_progress_t){.step = s, .steps = 3, .elapsed_ms = 120 * s, .seed = used.seed};
        s_send(f, from, p);
    }
    int w = (int)used.width, h = (int)used.height;
    uint8_t *rgb = malloc((size_t)w * h * 3), *png = NULL;
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (uint8_t)(i + used.seed);
    sd3_png_params_t pp = {.prompt = used.prompt,
                           .negative_prompt = used.negative,
                           .steps = (int)used.steps,
                           .sampler = used.sampler == SD3_WIRE_SAMPLER_EULER ? "Euler" : "DPM++ 2M",
                           .cfg_scale = used.cfg,
                           .seed = used.seed,
                           .width = w,
                           .height = h};
    char *text = sd3_png_params_format(&pp);
    size_t size = 0;
    sd3_err_t err = {0};
    if (sd3_png_encode(rgb, w, h, text, &png, &size, &err) != 0) {
        s_error(f, from, req->request_id, err.code, err.msg);
    } else {
        sd3_msg_t *r = sd3_msg_new(SD3_MSG_RESULT, req->request_id);
        sd3_tensor_t *t = sd3_tensor_new(SD3_U8, 1, (int64_t[]){(int64_t)size});
        memcpy(t->data, png, size);
        t->name = "png";
        r->body_kind = SD3_WIRE_BODY_GENERATE;
        r->body.generate = used;
        if (sd3_msg_add_tensor(r, &t, NULL, &err) != 0)
            fprintf(stderr, "fake controller: %s\n", err.msg);
        sd3_tensor_destroy(&t);
        s_send(f, from, r);
    }
    free(png);
    free(text);
    free(rgb);
}

static void *
s_fake_main(void *arg)
{
    s_fake_t *f = arg;
    while (!atomic_load(&f->stop)) {
        sd3_wire_peer_t from;
        sd3_msg_t *msg = NULL;
        sd3_err_t err = {0};
        // "slow" requests get a PROGRESS every 20 ms, so a server that only looks at its
        // client while the controller is silent would never see it hang up.
        for (int i = 0; i < f->n_slow; i++) {
            if (f->slow_done[i])
                continue;
            sd3_msg_t *p = sd3_msg_new(SD3_MSG_PROGRESS, f->slow_id[i]);
            p->body_kind = SD3_WIRE_BODY_PROGRESS;
            f->slow_step[i]++;
            p->body.progress = (sd3_wire_progress_t){
                .step = f->slow_step[i], .steps = 100000, .elapsed_ms = 20 * f->slow_step[i]};
            s_send(f, &f->slow_peer[i], p);
        }
        if (sd3_link_recv(f->link, 20, &from, &msg, &err) != 0)
            continue;
        if (msg->type == SD3_MSG_STATUS) {
            sd3_msg_t *r = sd3_msg_new(SD3_MSG_STATUS, NULL);
            r->body_kind = SD3_WIRE_BODY_STATUS;
            sd3_wire_status_t *s = &r->body.status;
            s->queue_depth = 1;
            s->queue_capacity = 16;
            s->completed = (uint64_t)atomic_load(&f->generates);
            s->n_nodes = 1;
            snprintf(s->nodes[0].node.node_id, SD3_WIRE_ID_MAX, "all-0");
            s->nodes[0].node.role = SD3_WIRE_ROLE_ALL;
            s->nodes[0].alive = true;
            s->cache_hits = 3;
            s->step_count = 1;
            s->step_buckets[4] = 1;
            s->step_seconds_sum = 0.2;
            s_send(f, &from, r);
        } else if (msg->type == SD3_MSG_GENERATE) {
            s_generate(f, &from, msg);
        } else if (msg->type == SD3_MSG_CANCEL) {
            atomic_fetch_add(&f->cancels, 1);
            for (int i = 0; i < f->n_slow; i++)
                if (!f->slow_done[i] && strcmp(f->slow_id[i], msg->request_id) == 0) {
                    f->slow_done[i] = true;
                    s_error(f, &f->slow_peer[i], msg->request_id, SD3_ECANCELED, "cancelled");
                }
        }
        sd3_msg_destroy(&msg);
    }
    return NULL;
}

// Raw HTTP over a TCP socket: sends `request`, returns the socket (caller closes).
static int
s_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

// GET path with the token; the whole answer into out (NUL-terminated).
static void
s_get(uint16_t port, const char *path, const char *token, char *out, size_t cap)
{
    out[0] = 0;
    int fd = s_connect(port);
    if (fd < 0)
        return;
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     "Connection: close\r\n\r\n",
                     path, token);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return;
    }
    size_t len = 0;
    ssize_t r;
    while (len + 1 < cap && (r = read(fd, out + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = 0;
    close(fd);
}

static void
s_sleep_ms(int ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int
main(void)
{
    const char *token = "sekrit-token";
    void *ctx = zmq_ctx_new();
    sd3_err_t err = {0};
    static s_fake_t fake;
    fake.link = sd3_link_new_serve(ctx, "tcp://127.0.0.1:*", NULL, &err);
    CHECK_MSG(fake.link != NULL, "%s", err.msg);
    if (!fake.link)
        return 1;
    pthread_t th;
    pthread_create(&th, NULL, s_fake_main, &fake);

    sd3_http_opts_t o = {.bind = "127.0.0.1:0",
                         .controller = sd3_link_endpoint(fake.link),
                         .token = token,
                         .model = "sd3-tiny",
                         .timeout_ms = 3000,
                         .ack_timeout_ms = 2000,
                         .status_timeout_ms = 1000,
                         .zmq_ctx = ctx};
    sd3_http_t *http = NULL;
    CHECK_MSG(sd3_http_start(&o, &http, &err) == 0, "%s", err.msg);
    if (!http)
        return 1;
    uint16_t port = sd3_http_port(http);
    CHECK(port != 0);
    fprintf(stderr, "test_http_server: http on 127.0.0.1:%u, fake controller %s\n", port,
            sd3_link_endpoint(fake.link));

    // Bind errors: the same port again, a malformed address.
    char bind2[64];
    snprintf(bind2, sizeof bind2, "127.0.0.1:%u", port);
    sd3_http_opts_t o2 = o;
    o2.bind = bind2;
    sd3_http_t *again = NULL;
    sd3_err_t err2 = {0};
    CHECK(sd3_http_start(&o2, &again, &err2) == SD3_EIO && again == NULL);
    o2.bind = "127.0.0.1:99999";
    sd3_err_clear(&err2);
    CHECK(sd3_http_start(&o2, &again, &err2) == SD3_EINVAL && strstr(err2.msg, "port"));
    char host[64];
    uint16_t p = 0;
    CHECK(sd3_http_parse_bind("[::1]:8080", host, sizeof host, &p, &err2) == 0 &&
          strcmp(host, "::1") == 0 && p == 8080);
    CHECK(sd3_http_parse_bind(":9000", host, sizeof host, &p, &err2) == 0 && host[0] == 0 &&
          p == 9000);

    // A client that hangs up mid-request: the server cancels it at the controller.
    int fd = s_connect(port);
    CHECK(fd >= 0);
    const char *body = "{\"prompt\":\"slow\"}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     token, strlen(body), body);
    CHECK(write(fd, req, (size_t)n) == n);
    s_sleep_ms(300);
    close(fd);
    // (before the 3 s limit would cancel it anyway: the metrics tell which it was)
    for (int i = 0; i < 100 && atomic_load(&fake.cancels) == 0; i++)
        s_sleep_ms(50);
    CHECK_MSG(atomic_load(&fake.cancels) == 1, "cancels %d 5 s after the client hung up",
              atomic_load(&fake.cancels));
    static char page[1 << 16];
    const char *canceled = "sd3_http_requests_total{endpoint=\"openai\",outcome=\"canceled\"} 1";
    for (int i = 0; i < 50; i++) { // the request is counted once its handler has returned
        s_get(port, "/metrics", token, page, sizeof page);
        if (strstr(page, canceled))
            break;
        s_sleep_ms(100);
    }
    CHECK_MSG(strstr(page, canceled), "metrics after the hang-up:\n%.2000s", page);
    CHECK(strstr(page, "sd3_up 1") && strstr(page, "sd3_embedding_cache_hits_total 3"));

    // The real clients.
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "sh %s/tests/http/setup.sh >&2; "
             "bash %s/tests/http/clients.sh http://127.0.0.1:%u %s 64 48 --fake",
             SD3_SOURCE_DIR, SD3_SOURCE_DIR, port, token);
    int rc = system(cmd);
    CHECK_MSG(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "clients.sh failed (%d)", rc);

    // A request that was answered and a slow one that timed out: the server cancelled the
    // slow one at its deadline too.
    CHECK_MSG(atomic_load(&fake.cancels) >= 2, "cancels %d", atomic_load(&fake.cancels));
    s_get(port, "/metrics", token, page, sizeof page);
    CHECK(strstr(page, "sd3_http_step_duration_seconds_bucket{le=\"0.25\"}") != NULL);
    CHECK_MSG(strstr(page, "sd3_http_step_duration_seconds_count 0") == NULL,
              "no step timing was recorded from PROGRESS");

    // The controller goes away: /healthz 503, /metrics still answers with sd3_up 0.
    atomic_store(&fake.stop, true);
    pthread_join(th, NULL);
    sd3_link_destroy(&fake.link);
    s_get(port, "/healthz", "", page, sizeof page);
    CHECK_MSG(strncmp(page, "HTTP/1.1 503", 12) == 0, "healthz without controller: %.200s", page);
    s_get(port, "/metrics", token, page, sizeof page);
    CHECK_MSG(strncmp(page, "HTTP/1.1 200", 12) == 0 && strstr(page, "\nsd3_up 0\n"),
              "metrics without controller: %.300s", page);

    sd3_http_stop(&http);
    CHECK(http == NULL);
    zmq_ctx_term(ctx);
    return TEST_RESULT();
}
