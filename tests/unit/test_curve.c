/*  test_curve - CurveZMQ key files, allow list and ZAP handler over tcp://127.0.0.1
 *
 *  A client whose key is in the allow file gets a real sd3_wire round trip; a client with an
 *  unknown key, a plain client and a client that trusts the wrong server key get nothing
 *  through (and the unknown key's refusal is logged with its first 8 characters); after the
 *  allow file gains the key and is reloaded, the same client is served; sd3_link with
 *  opts.curve (what the nodes use) round-trips. Also: key files
 *  (modes, round trip, '#' inside a key), the endpoint lookup of server keys, inproc
 *  without keys, and the errors of a misconfigured node.  */
#include "sd3_curve.h"
#include "sd3_link.h"
#include "sd3_log.h"
#include "sd3_test.h"
#include "sd3_wire.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static char s_dir[512];

static const char *
s_path(const char *name)
{
    static char buf[4][1024];
    static int at;
    char *p = buf[at++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", s_dir, name);
    return p;
}

static void
s_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static char *
s_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    if (buf)
        fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    return buf;
}

// A DEALER with a short timeout, connected through `curve` (NULL = plain).
static void *
s_dealer(void *ctx, sd3_curve_t *curve, const char *endpoint)
{
    sd3_err_t err = {0};
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int ms = 2000, zero = 0;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &ms, sizeof ms);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    int rc = sd3_curve_connect(curve, s, endpoint, &err);
    CHECK_MSG(rc == 0, "connect %s: %s", endpoint, err.msg);
    return s;
}

// A HEARTBEAT carrying tensor "x" = [2, 3] of 0.5 * i.
static int
s_send_probe(void *sock, const char *id)
{
    sd3_err_t err = {0};
    sd3_msg_t *m = sd3_msg_new(SD3_MSG_HEARTBEAT, id);
    m->body_kind = SD3_WIRE_BODY_HEARTBEAT;
    snprintf(m->body.heartbeat.node_id, SD3_WIRE_ID_MAX, "%s", id);
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 2, (int64_t[]){2, 3});
    for (int i = 0; i < 6; i++)
        ((float *)t->data)[i] = 0.5f * (float)i;
    t->name = "x";
    sd3_msg_add_tensor(m, &t, NULL, &err);
    return sd3_wire_send(sock, &m, &err);
}

// Whether the ROUTER gets a message within ms; if so checks it is the probe `id`, answers
// ACK and returns 1.
static int
s_serve_one(void *router, const char *id, int ms)
{
    zmq_pollitem_t item = {router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, ms) <= 0)
        return 0;
    sd3_wire_peer_t peer;
    sd3_msg_t *msg = NULL;
    sd3_err_t err = {0};
    int rc = sd3_wire_recv_from(router, NULL, &peer, &msg, &err);
    CHECK_MSG(rc == 0, "recv: %s", err.msg);
    if (rc)
        return 1;
    CHECK(msg->type == SD3_MSG_HEARTBEAT);
    CHECK_MSG(!strcmp(msg->request_id, id), "got '%s', want '%s'", msg->request_id, id);
    CHECK(!strcmp(msg->body.heartbeat.node_id, id));
    sd3_tensor_t *x = sd3_msg_tensor(msg, "x");
    CHECK(x && x->ndim == 2 && x->shape[0] == 2 && x->shape[1] == 3);
    if (x)
        for (int i = 0; i < 6; i++)
            CHECK(((float *)x->data)[i] == 0.5f * (float)i);
    sd3_msg_destroy(&msg);
    sd3_msg_t *ack = sd3_msg_new(SD3_MSG_ACK, id);
    rc = sd3_wire_send_to(router, &peer, &ack, &err);
    CHECK_MSG(rc == 0, "reply: %s", err.msg);
    return 1;
}

static void
s_test_files(sd3_curve_keypair_t *server, sd3_curve_keypair_t *a, sd3_curve_keypair_t *b)
{
    sd3_err_t err = {0};
    struct stat st;
    CHECK(sd3_curve_available());
    CHECK(sd3_curve_keypair_new(server, &err) == 0);
    CHECK(sd3_curve_keypair_new(a, &err) == 0);
    CHECK(sd3_curve_keypair_new(b, &err) == 0);
    CHECK(strlen(a->public_key) == SD3_CURVE_Z85_LEN && strcmp(a->public_key, b->public_key));
    CHECK(sd3_curve_keypair_save(server, s_path("server"), false, &err) == 0);
    CHECK(sd3_curve_keypair_save(a, s_path("a"), false, &err) == 0);
    CHECK(sd3_curve_keypair_save(b, s_path("b"), false, &err) == 0);
    CHECK(stat(s_path("a.key"), &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(stat(s_path("a.pub"), &st) == 0 && (st.st_mode & 0777) == 0644);
    // No silent overwrite of a secret key.
    sd3_err_clear(&err);
    CHECK(sd3_curve_keypair_save(b, s_path("a"), false, &err) == SD3_EINVAL);
    CHECK(strstr(err.msg, "--force") != NULL);
    sd3_curve_keypair_t got;
    sd3_err_clear(&err);
    CHECK_MSG(sd3_curve_keypair_load(s_path("a.key"), &got, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(got.public_key, a->public_key) && !strcmp(got.secret_key, a->secret_key));
    char pub[SD3_CURVE_Z85_LEN + 1];
    CHECK(sd3_curve_public_load(s_path("b.pub"), pub, &err) == 0 && !strcmp(pub, b->public_key));
    // A secret key others can read is refused, and the message says what to do.
    chmod(s_path("a.key"), 0644);
    sd3_err_clear(&err);
    CHECK(sd3_curve_keypair_load(s_path("a.key"), &got, &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "0644") && strstr(err.msg, "chmod 600"), "%s", err.msg);
    CHECK(got.secret_key[0] == '\0');
    chmod(s_path("a.key"), 0440); // a Kubernetes secret with fsGroup: group read is fine
    sd3_err_clear(&err);
    CHECK_MSG(sd3_curve_keypair_load(s_path("a.key"), &got, &err) == 0, "%s", err.msg);
    chmod(s_path("a.key"), 0600);
    // Garbage, two keys, a missing file.
    s_write(s_path("bad.pub"), "# comment\nnot-a-key\n");
    sd3_err_clear(&err);
    CHECK(sd3_curve_public_load(s_path("bad.pub"), pub, &err) == SD3_EFORMAT);
    CHECK_MSG(strstr(err.msg, "line 2") != NULL, "%s", err.msg);
    char two[256];
    snprintf(two, sizeof two, "%s\n%s\n", a->public_key, b->public_key);
    s_write(s_path("two.pub"), two);
    sd3_err_clear(&err);
    CHECK(sd3_curve_public_load(s_path("two.pub"), pub, &err) == SD3_EFORMAT);
    CHECK(strstr(err.msg, "2 keys") != NULL);
    sd3_err_clear(&err);
    CHECK(sd3_curve_public_load(s_path("none.pub"), pub, &err) == SD3_ENOTFOUND);
    // '#' is a Z85 character: a key holding one still reads back, comments after blanks go.
    uint8_t bin[32];
    char hashed[SD3_CURVE_Z85_LEN + 1] = "";
    unsigned long long seed = 7;
    for (int tries = 0; tries < 1000 && !strchr(hashed, '#'); tries++) {
        for (int i = 0; i < 32; i++)
            bin[i] = (uint8_t)(sd3_test_randf(&seed) * 127.0f + 128.0f);
        zmq_z85_encode(hashed, bin, 32);
    }
    CHECK(strchr(hashed, '#') != NULL);
    char text[256];
    snprintf(text, sizeof text, "  %s   # the key of a peer\n", hashed);
    s_write(s_path("hash.pub"), text);
    sd3_err_clear(&err);
    CHECK_MSG(sd3_curve_public_load(s_path("hash.pub"), pub, &err) == 0, "%s", err.msg);
    CHECK(!strcmp(pub, hashed));
}

int
main(void)
{
    sd3_err_t err = {0};
    snprintf(s_dir, sizeof s_dir, "%s", sd3_test_tmpdir());
    sd3_curve_keypair_t server, a, b;
    s_test_files(&server, &a, &b);

    // Files of the server node: allow A only; clients trust the server's key (exactly at its
    // endpoint) and, as a default for other endpoints, a wrong one.
    char text[512];
    snprintf(text, sizeof text, "# admitted peers\n\n%s  # client a\n", a.public_key);
    s_write(s_path("allow"), text);
    void *sctx = zmq_ctx_new(), *cctx = zmq_ctx_new();
    sd3_curve_t *srv = sd3_curve_new(sctx, s_path("server.key"), s_path("allow"), NULL, &err);
    CHECK_MSG(srv != NULL, "%s", err.msg);
    if (!srv)
        return 1;
    CHECK(!strcmp(sd3_curve_public_key(srv), server.public_key));
    // One handler per context.
    sd3_err_clear(&err);
    sd3_curve_t *again = sd3_curve_new(sctx, s_path("server.key"), s_path("allow"), NULL, &err);
    CHECK(again == NULL && err.code == SD3_EINVAL);

    void *router = zmq_socket(sctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    sd3_err_clear(&err);
    CHECK_MSG(sd3_curve_bind(srv, router, "tcp://127.0.0.1:*", &err) == 0, "%s", err.msg);
    char endpoint[256];
    size_t len = sizeof endpoint;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &len);

    snprintf(text, sizeof text, "%s\n%s %s\n", b.public_key, server.public_key, endpoint);
    s_write(s_path("server-pub"), text);
    snprintf(text, sizeof text, "%s\n", b.public_key);
    s_write(s_path("wrong-pub"), text);
    sd3_curve_t *ca = sd3_curve_new(cctx, s_path("a.key"), NULL, s_path("server-pub"), &err);
    sd3_curve_t *cb = sd3_curve_new(cctx, s_path("b.key"), NULL, s_path("server-pub"), &err);
    sd3_curve_t *ca_wrong = sd3_curve_new(cctx, s_path("a.key"), NULL, s_path("wrong-pub"), &err);
    CHECK_MSG(ca && cb && ca_wrong, "%s", err.msg);
    if (!ca || !cb || !ca_wrong)
        return 1;

    // 1. The listed key: a real round trip.
    void *da = s_dealer(cctx, ca, endpoint);
    CHECK(s_send_probe(da, "client-a") == 0);
    CHECK_MSG(s_serve_one(router, "client-a", 5000) == 1, "listed client not served");
    sd3_msg_t *reply = NULL;
    sd3_err_clear(&err);
    CHECK_MSG(sd3_wire_recv(da, NULL, NULL, &reply, &err) == 0, "%s", err.msg);
    CHECK(reply && reply->type == SD3_MSG_ACK && !strcmp(reply->request_id, "client-a"));
    sd3_msg_destroy(&reply);
    CHECK(sd3_curve_admitted(srv) >= 1);

    // 2. An unknown key: nothing arrives, the refusal is logged (stderr into a file).
    fflush(stderr);
    int saved = dup(2);
    int logfd = open(s_path("log"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(logfd, 2);
    void *db = s_dealer(cctx, cb, endpoint);
    s_send_probe(db, "client-b"); // queued on the pipe; the handshake decides
    CHECK_MSG(s_serve_one(router, "client-b", 1500) == 0, "unknown key was served");
    for (int i = 0; i < 50 && sd3_curve_refused(srv) == 0; i++)
        usleep(20000);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(logfd);
    CHECK(sd3_curve_refused(srv) >= 1);
    char *log = s_slurp(s_path("log"));
    char want[64];
    snprintf(want, sizeof want, "key=%.8s ", b.public_key);
    CHECK_MSG(log && strstr(log, "refused") && strstr(log, want) && strstr(log, "127.0.0.1"),
              "log: %s", log ? log : "(none)");
    CHECK_MSG(log && !strstr(log, b.public_key), "the whole key was logged");
    if (log && strstr(log, "refused"))
        printf("logged: %.*s\n", (int)strcspn(strstr(log, "refused"), "\n"),
               strstr(log, "refused"));
    free(log);

    // 3. A plain client against the CURVE server, 4. the right key trusting a wrong server.
    void *dc = s_dealer(cctx, NULL, endpoint);
    s_send_probe(dc, "plain");
    void *dw = s_dealer(cctx, ca_wrong, endpoint);
    s_send_probe(dw, "wrong-server");
    CHECK_MSG(s_serve_one(router, "-", 1500) == 0, "plain or wrong-server client was served");

    // 5. Reload with B listed: a new connection of B is served.
    snprintf(text, sizeof text, "%s\n%s\n", a.public_key, b.public_key);
    s_write(s_path("allow"), text);
    CHECK_MSG(sd3_curve_reload(srv, &err) == 0, "%s", err.msg);
    zmq_close(db);
    db = s_dealer(cctx, cb, endpoint);
    CHECK(s_send_probe(db, "client-b2") == 0);
    CHECK_MSG(s_serve_one(router, "client-b2", 5000) == 1, "reloaded key not served");
    // A bad allow file leaves the old list in force.
    s_write(s_path("allow"), "garbage\n");
    sd3_err_clear(&err);
    CHECK(sd3_curve_reload(srv, &err) == SD3_EFORMAT);

    // 6. The way the nodes use it: sd3_link with opts.curve, a listed key round trip.
    snprintf(text, sizeof text, "%s\n", server.public_key); // the default for every endpoint
    s_write(s_path("server-pub-any"), text);
    sd3_err_clear(&err);
    sd3_curve_t *ca_any =
        sd3_curve_new(cctx, s_path("a.key"), NULL, s_path("server-pub-any"), &err);
    CHECK_MSG(ca_any != NULL, "%s", err.msg);
    sd3_link_opts_t lo = {.curve = srv};
    sd3_link_t *serve = sd3_link_new_serve(sctx, "tcp://127.0.0.1:*", &lo, &err);
    CHECK_MSG(serve != NULL, "%s", err.msg);
    lo.curve = ca_any;
    sd3_link_t *conn =
        serve ? sd3_link_new_connect(cctx, sd3_link_endpoint(serve), &lo, &err) : NULL;
    CHECK_MSG(conn != NULL, "%s", err.msg);
    if (serve && conn) {
        sd3_msg_t *m = sd3_msg_new(SD3_MSG_CANCEL, "via-link");
        sd3_wire_peer_t from;
        CHECK(sd3_link_send(conn, NULL, &m, &err) == 0);
        CHECK_MSG(sd3_link_recv(serve, 5000, &from, &m, &err) == 0, "%s", err.msg);
        CHECK(m && m->type == SD3_MSG_CANCEL && !strcmp(m->request_id, "via-link"));
        sd3_msg_destroy(&m);
    }
    sd3_link_destroy(&conn);
    sd3_link_destroy(&serve);
    sd3_curve_destroy(&ca_any);

    // 7. inproc never uses keys; misconfiguration is refused on tcp.
    void *pa = zmq_socket(sctx, ZMQ_PAIR), *pb = zmq_socket(sctx, ZMQ_PAIR);
    sd3_err_clear(&err);
    CHECK(sd3_curve_bind(srv, pa, "inproc://curve-test", &err) == 0);
    CHECK(sd3_curve_connect(srv, pb, "inproc://curve-test", &err) == 0); // no server keys: fine
    CHECK(zmq_send(pb, "hi", 2, 0) == 2);
    char buf[4];
    CHECK(zmq_recv(pa, buf, sizeof buf, 0) == 2 && !memcmp(buf, "hi", 2));
    void *t = zmq_socket(cctx, ZMQ_DEALER);
    sd3_err_clear(&err);
    CHECK(sd3_curve_bind(ca, t, "tcp://127.0.0.1:*", &err) == SD3_EINVAL); // no allow file
    CHECK(strstr(err.msg, "--curve-allow") != NULL);
    sd3_err_clear(&err);
    CHECK(sd3_curve_connect(srv, t, endpoint, &err) == SD3_EINVAL); // no server key
    CHECK(strstr(err.msg, "--curve-server-pub") != NULL);
    sd3_err_clear(&err);
    CHECK(sd3_curve_new(sctx, s_path("none.key"), NULL, NULL, &err) == NULL &&
          err.code == SD3_ENOTFOUND);

    void *socks[] = {da, db, dc, dw, pa, pb, t, router};
    for (size_t i = 0; i < sizeof socks / sizeof socks[0]; i++) {
        zmq_setsockopt(socks[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_close(socks[i]);
    }
    sd3_curve_destroy(&ca);
    sd3_curve_destroy(&cb);
    sd3_curve_destroy(&ca_wrong);
    sd3_curve_destroy(&srv);
    CHECK(srv == NULL);
    zmq_ctx_term(cctx);
    zmq_ctx_term(sctx);
    // A context terminated while its ZAP handler still runs: the handler lets go (no hang).
    snprintf(text, sizeof text, "%s\n", a.public_key);
    s_write(s_path("allow"), text);
    void *ectx = zmq_ctx_new();
    sd3_curve_t *early = sd3_curve_new(ectx, s_path("server.key"), s_path("allow"), NULL, &err);
    CHECK(early != NULL);
    zmq_ctx_term(ectx);
    sd3_curve_destroy(&early);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "test_curve: could not remove %s\n", s_dir);
    printf("test_curve: %s\n", sd3_test_failures ? "FAIL" : "ok");
    return TEST_RESULT();
}
