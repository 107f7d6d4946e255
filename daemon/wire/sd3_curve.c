/*  sd3_curve - CurveZMQ key files, allow list and ZAP handler (see sd3_curve.h)
 *
 *  The ZAP handler follows RFC 27 (ZAP 1.0): a REP socket on inproc://zeromq.zap.01; each
 *  request is version, request id, domain, address, identity, mechanism, credentials...; the
 *  reply is version, request id, status code, status text, user id, metadata. Anything but a
 *  CURVE handshake whose 32-byte client key is listed gets 400.  */
#include "sd3_curve.h"

#include "sd3_clock.h"
#include "sd3_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_ZAP_ENDPOINT   "inproc://zeromq.zap.01"
#define S_FILE_MAX       (1u << 20) // key and allow files: 1 MiB is ~25000 keys
#define S_ENDPOINT_MAX   256
#define S_SERVER_KEYS    1024
#define S_ZAP_FRAMES     8
#define S_ZAP_FRAME_MAX  512
#define S_RECENT         16 // refused keys remembered for the log rate limit
#define S_RECENT_SECONDS 10.0
#define S_BIND_RETRY_S   5.0 // EADDRINUSE on tcp:// (a dying holder) is retried this long

typedef struct {
    char key[SD3_CURVE_Z85_LEN + 1];
    char endpoint[S_ENDPOINT_MAX]; // "" = every endpoint without a key of its own
} s_server_key_t;

typedef struct {
    uint8_t key[32];
    double when; // monotonic seconds of the last logged refusal
    uint64_t repeats;
} s_recent_t;

struct sd3_curve {
    sd3_curve_keypair_t own;
    char *allow_path;
    s_server_key_t *servers;
    size_t n_servers;
    // allow list, guarded by lock (the ZAP thread reads, reload writes)
    pthread_mutex_t lock;
    uint8_t (*allow)[32];
    size_t n_allow;
    // the ZAP handler
    void *zap;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    atomic_uint_fast64_t admitted, refused;
    s_recent_t recent[S_RECENT]; // ZAP thread only
};

// ---- files -----------------------------------------------------------------------------

// The whole file as a NUL-terminated string (free it). Also returns its mode.
static char *
s_read_text(const char *path, mode_t *mode, sd3_err_t *err)
{
    char *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        sd3_err_set(err, errno == ENOENT ? SD3_ENOTFOUND : SD3_EIO, "%s: cannot open: %s", path,
                    strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        sd3_err_set(err, SD3_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > S_FILE_MAX) {
        sd3_err_set(err, SD3_EFORMAT, "%s: %lld bytes, more than the %u a key file may have", path,
                    (long long)st.st_size, S_FILE_MAX);
        goto fail;
    }
    if (mode)
        *mode = st.st_mode;
    size_t len = (size_t)st.st_size;
    if (!(text = malloc(len + 1))) {
        sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, text + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    text[got] = '\0';
    close(fd);
    return text;
fail:
    free(text);
    close(fd);
    return NULL;
}

// Splits one line into its key token and the rest; skips blank and comment lines.
// Returns 1 with the tokens, 0 for a line with nothing on it.
static int
s_line_tokens(char *line, char **key, char **rest)
{
    // '#' is a Z85 character too: a comment starts only at a '#' that begins the line or
    // follows a blank.
    for (char *h = line; *h; h++) {
        if (*h == '#' && (h == line || h[-1] == ' ' || h[-1] == '\t')) {
            *h = '\0';
            break;
        }
    }
    char *p = line + strspn(line, " \t\r");
    if (!*p)
        return 0;
    *key = p;
    p += strcspn(p, " \t\r");
    if (*p) {
        *p++ = '\0';
        p += strspn(p, " \t\r");
    }
    char *end = p + strlen(p);
    while (end > p && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        *--end = '\0';
    *rest = p;
    return 1;
}

static bool
s_key_valid(const char *z85, uint8_t bin[32])
{
    uint8_t tmp[32];
    return strlen(z85) == SD3_CURVE_Z85_LEN && zmq_z85_decode(bin ? bin : tmp, z85) != NULL;
}

// Exactly one key in the file, nothing else after it on its line.
static int
s_read_one_key(const char *path, char out[SD3_CURVE_Z85_LEN + 1], mode_t *mode, sd3_err_t *err)
{
    char *text = s_read_text(path, mode, err);
    if (!text)
        return err ? err->code : SD3_EIO;
    int n = 0, rc = 0, lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *key, *rest;
        lineno++;
        if (!s_line_tokens(line, &key, &rest))
            continue;
        if (*rest || !s_key_valid(key, NULL)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: line %d is not one Z85 key of %d characters",
                             path, lineno, SD3_CURVE_Z85_LEN);
            goto done;
        }
        if (n++ == 0)
            memcpy(out, key, SD3_CURVE_Z85_LEN + 1);
    }
    if (n != 1)
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: holds %d keys, want exactly 1", path, n);
done:
    free(text);
    return rc;
}

bool
sd3_curve_available(void)
{
    return zmq_has("curve") != 0;
}

int
sd3_curve_keypair_new(sd3_curve_keypair_t *kp, sd3_err_t *err)
{
    memset(kp, 0, sizeof *kp);
    if (!sd3_curve_available())
        return sd3_err_set(err, SD3_ENOTSUP, "this libzmq has no CURVE (built without libsodium)");
    if (zmq_curve_keypair(kp->public_key, kp->secret_key) != 0)
        return sd3_err_set(err, SD3_EINTERNAL, "zmq_curve_keypair: %s", zmq_strerror(errno));
    return 0;
}

static int
s_write_file(const char *path, const char *text, mode_t mode, bool exclusive, sd3_err_t *err)
{
    int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | (exclusive ? O_EXCL : 0);
    int fd = open(path, flags, mode);
    if (fd < 0)
        return sd3_err_set(err, errno == EEXIST ? SD3_EINVAL : SD3_EIO, "%s: %s%s", path,
                           strerror(errno), errno == EEXIST ? " (use --force to replace it)" : "");
    size_t len = strlen(text);
    // An existing file keeps its old mode through O_TRUNC: set it.
    if (fchmod(fd, mode) != 0 || write(fd, text, len) != (ssize_t)len) {
        int e = errno;
        close(fd);
        return sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(e));
    }
    if (close(fd) != 0)
        return sd3_err_set(err, SD3_EIO, "%s: cannot write: %s", path, strerror(errno));
    return 0;
}

int
sd3_curve_keypair_save(const sd3_curve_keypair_t *kp, const char *name, bool force, sd3_err_t *err)
{
    char path[4096], text[256];
    if (!s_key_valid(kp->public_key, NULL) || !s_key_valid(kp->secret_key, NULL))
        return sd3_err_set(err, SD3_EINVAL, "%s: not a valid key pair", name);
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    if (snprintf(path, sizeof path, "%s.key", name) >= (int)sizeof path)
        return sd3_err_set(err, SD3_EINVAL, "key name too long");
    snprintf(text, sizeof text,
             "# sd3d CurveZMQ secret key '%s': keep it private (mode 0600)\n%s\n", base,
             kp->secret_key);
    int rc = s_write_file(path, text, 0600, !force, err);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s.pub", name);
    snprintf(text, sizeof text, "# sd3d CurveZMQ public key '%s'\n%s\n", base, kp->public_key);
    return s_write_file(path, text, 0644, false, err);
}

int
sd3_curve_keypair_load(const char *secret_path, sd3_curve_keypair_t *kp, sd3_err_t *err)
{
    mode_t mode = 0;
    memset(kp, 0, sizeof *kp);
    if (!sd3_curve_available())
        return sd3_err_set(err, SD3_ENOTSUP, "this libzmq has no CURVE (built without libsodium)");
    int rc = s_read_one_key(secret_path, kp->secret_key, &mode, err);
    if (rc)
        return rc;
    // Others may not read it, the group may not change it. Group read is allowed: that is
    // how a Kubernetes secret volume (fsGroup, defaultMode 0440) hands it to a non-root user.
    if (mode & 027) {
        memset(kp, 0, sizeof *kp);
        return sd3_err_set(err, SD3_EINVAL,
                           "%s: mode %04o lets others read the secret key; chmod 600 it",
                           secret_path, (unsigned)(mode & 07777));
    }
    if (zmq_curve_public(kp->public_key, kp->secret_key) != 0) {
        memset(kp, 0, sizeof *kp);
        return sd3_err_set(err, SD3_EFORMAT, "%s: cannot derive the public key", secret_path);
    }
    return 0;
}

int
sd3_curve_public_load(const char *path, char out[SD3_CURVE_Z85_LEN + 1], sd3_err_t *err)
{
    return s_read_one_key(path, out, NULL, err);
}

// Allow file -> fresh array of binary keys.
static int
s_load_allow(const char *path, uint8_t (**keys_out)[32], size_t *n_out, sd3_err_t *err)
{
    char *text = s_read_text(path, NULL, err);
    uint8_t(*keys)[32] = NULL;
    size_t n = 0, cap = 0;
    int rc = 0, lineno = 0;
    if (!text)
        return err ? err->code : SD3_EIO;
    char *line = text, *next;
    for (; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *key, *rest;
        lineno++;
        if (!s_line_tokens(line, &key, &rest))
            continue;
        uint8_t bin[32];
        if (*rest || !s_key_valid(key, bin)) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: line %d is not one Z85 key of %d characters",
                             path, lineno, SD3_CURVE_Z85_LEN);
            goto fail;
        }
        if (n == SD3_CURVE_MAX_KEYS) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: more than %d keys", path, SD3_CURVE_MAX_KEYS);
            goto fail;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            void *grown = realloc(keys, cap * sizeof *keys);
            if (!grown) {
                rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
                goto fail;
            }
            keys = grown;
        }
        memcpy(keys[n++], bin, 32);
    }
    free(text);
    *keys_out = keys;
    *n_out = n;
    return 0;
fail:
    free(text);
    free(keys);
    return rc;
}

// server-pub file: "KEY" (default) and "KEY ENDPOINT" lines.
static int
s_load_servers(sd3_curve_t *self, const char *path, sd3_err_t *err)
{
    char *text = s_read_text(path, NULL, err);
    int rc = 0, lineno = 0;
    if (!text)
        return err ? err->code : SD3_EIO;
    char *line = text, *next;
    for (; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *key, *rest;
        lineno++;
        if (!s_line_tokens(line, &key, &rest))
            continue;
        if (!s_key_valid(key, NULL) || strlen(rest) >= S_ENDPOINT_MAX || strpbrk(rest, " \t")) {
            rc = sd3_err_set(err, SD3_EFORMAT,
                             "%s: line %d is not 'KEY' or 'KEY ENDPOINT' (Z85 key of %d chars)",
                             path, lineno, SD3_CURVE_Z85_LEN);
            goto done;
        }
        if (self->n_servers == S_SERVER_KEYS) {
            rc = sd3_err_set(err, SD3_EFORMAT, "%s: more than %d keys", path, S_SERVER_KEYS);
            goto done;
        }
        void *grown = realloc(self->servers, (self->n_servers + 1) * sizeof *self->servers);
        if (!grown) {
            rc = sd3_err_set(err, SD3_ENOMEM, "%s: out of memory", path);
            goto done;
        }
        self->servers = grown;
        s_server_key_t *s = &self->servers[self->n_servers++];
        memcpy(s->key, key, SD3_CURVE_Z85_LEN + 1);
        snprintf(s->endpoint, sizeof s->endpoint, "%s", rest);
    }
    if (self->n_servers == 0)
        rc = sd3_err_set(err, SD3_EFORMAT, "%s: holds no key", path);
done:
    free(text);
    return rc;
}

// ---- the ZAP handler -----------------------------------------------------------------------

typedef struct {
    int n;
    size_t len[S_ZAP_FRAMES];
    char data[S_ZAP_FRAMES][S_ZAP_FRAME_MAX + 1];
} s_zap_req_t;

static bool
s_allowed(sd3_curve_t *self, const uint8_t key[32])
{
    bool ok = false;
    pthread_mutex_lock(&self->lock);
    for (size_t i = 0; i < self->n_allow && !ok; i++)
        ok = memcmp(self->allow[i], key, 32) == 0;
    pthread_mutex_unlock(&self->lock);
    return ok;
}

// Logs a refusal unless the same key was logged less than S_RECENT_SECONDS ago.
static void
s_log_refusal(sd3_curve_t *self, const uint8_t *key, const char *mechanism, const char *address)
{
    static const uint8_t none[32];
    char z85[SD3_CURVE_Z85_LEN + 1] = "-";
    if (!key)
        key = none;
    else
        zmq_z85_encode(z85, key, 32);
    double now = sd3_now_s();
    s_recent_t *slot = &self->recent[0];
    for (int i = 0; i < S_RECENT; i++) {
        s_recent_t *r = &self->recent[i];
        if (r->when > 0 && !memcmp(r->key, key, 32)) {
            if (now - r->when < S_RECENT_SECONDS) {
                r->repeats++;
                return;
            }
            slot = r;
            break;
        }
        if (r->when < slot->when)
            slot = r; // the oldest, reused when the key is new
    }
    uint64_t repeats = !memcmp(slot->key, key, 32) ? slot->repeats : 0;
    memcpy(slot->key, key, 32);
    slot->when = now;
    slot->repeats = 0;
    sd3_log_warn("curve", "refused peer=%s mechanism=%s key=%.8s reason=%s repeats=%llu", address,
                 mechanism, z85, key == none ? "not a CURVE client" : "key not in the allow file",
                 (unsigned long long)repeats);
}

static void
s_zap_reply(void *sock, const s_zap_req_t *req, const char *code, const char *text,
            const char *user)
{
    const char *req_id = req->n > 1 ? req->data[1] : "";
    size_t req_id_len = req->n > 1 ? req->len[1] : 0;
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, req_id, req_id_len, ZMQ_SNDMORE);
    zmq_send(sock, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

static void
s_zap_handle(sd3_curve_t *self, s_zap_req_t *req)
{
    // frames: 0 version, 1 request id, 2 domain, 3 address, 4 identity, 5 mechanism, 6 key
    if (req->n < 6 || strcmp(req->data[0], "1.0") != 0) {
        s_zap_reply(self->zap, req, "500", "malformed ZAP request", "");
        return;
    }
    const char *address = req->data[3][0] ? req->data[3] : "?";
    const char *mechanism = req->data[5];
    if (strcmp(mechanism, "CURVE") != 0 || req->n < 7 || req->len[6] != 32) {
        s_log_refusal(self, NULL, mechanism, address); // logged before counted: a reader
        atomic_fetch_add(&self->refused, 1);            // of the count finds the line
        s_zap_reply(self->zap, req, "400", "CURVE required", "");
        return;
    }
    const uint8_t *key = (const uint8_t *)req->data[6];
    if (!s_allowed(self, key)) {
        s_log_refusal(self, key, mechanism, address);
        atomic_fetch_add(&self->refused, 1);
        s_zap_reply(self->zap, req, "400", "key not allowed", "");
        return;
    }
    char z85[SD3_CURVE_Z85_LEN + 1];
    zmq_z85_encode(z85, key, 32);
    atomic_fetch_add(&self->admitted, 1);
    sd3_log_debug("curve", "admitted peer=%s key=%.8s", address, z85);
    s_zap_reply(self->zap, req, "200", "OK", z85);
}

static void *
s_zap_thread(void *arg)
{
    sd3_curve_t *self = arg;
    s_zap_req_t req;
    while (!atomic_load(&self->stop)) {
        zmq_pollitem_t item = {self->zap, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, 100);
        if (rc < 0 && errno == ETERM)
            break;
        if (rc <= 0)
            continue;
        // Read every frame of the request; keep the first S_ZAP_FRAMES, each cut to size.
        req.n = 0;
        int more = 1;
        bool failed = false;
        while (more) {
            zmq_msg_t part;
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, self->zap, 0) < 0) {
                zmq_msg_close(&part);
                failed = true;
                break;
            }
            if (req.n < S_ZAP_FRAMES) {
                size_t len = zmq_msg_size(&part);
                if (len > S_ZAP_FRAME_MAX)
                    len = S_ZAP_FRAME_MAX;
                memcpy(req.data[req.n], zmq_msg_data(&part), len);
                req.data[req.n][len] = '\0';
                req.len[req.n++] = len;
            }
            more = zmq_msg_more(&part);
            zmq_msg_close(&part);
        }
        if (failed) {
            if (errno == ETERM)
                break;
            continue;
        }
        s_zap_handle(self, &req);
    }
    // The thread owns the socket from its start: closing it here lets a zmq_ctx_term that
    // came first (ETERM) finish instead of waiting for sd3_curve_destroy.
    zmq_close(self->zap);
    self->zap = NULL;
    return NULL;
}

// ---- the node's configuration ---------------------------------------------------------

sd3_curve_t *
sd3_curve_new(void *ctx, const char *secret_path, const char *allow_path,
              const char *server_pub_path, sd3_err_t *err)
{
    sd3_curve_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "curve: out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->lock, NULL);
    atomic_init(&self->stop, false);
    atomic_init(&self->admitted, 0);
    atomic_init(&self->refused, 0);
    if (!secret_path) {
        sd3_err_set(err, SD3_EINVAL, "curve: a secret key file is required");
        goto fail;
    }
    if (sd3_curve_keypair_load(secret_path, &self->own, err) != 0)
        goto fail;
    if (server_pub_path && s_load_servers(self, server_pub_path, err) != 0)
        goto fail;
    if (allow_path) {
        if (!(self->allow_path = strdup(allow_path))) {
            sd3_err_set(err, SD3_ENOMEM, "curve: out of memory");
            goto fail;
        }
        if (s_load_allow(allow_path, &self->allow, &self->n_allow, err) != 0)
            goto fail;
        if (!(self->zap = zmq_socket(ctx, ZMQ_REP))) {
            sd3_err_set(err, SD3_EIO, "curve: ZAP socket: %s", zmq_strerror(errno));
            goto fail;
        }
        int linger = 0;
        zmq_setsockopt(self->zap, ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_bind(self->zap, S_ZAP_ENDPOINT) != 0) {
            sd3_err_set(err, errno == EADDRINUSE ? SD3_EINVAL : SD3_EIO,
                        "curve: cannot bind %s: %s (one ZAP handler per context)", S_ZAP_ENDPOINT,
                        zmq_strerror(errno));
            goto fail;
        }
        if (pthread_create(&self->thread, NULL, s_zap_thread, self) != 0) {
            sd3_err_set(err, SD3_EINTERNAL, "curve: cannot start the ZAP thread");
            goto fail;
        }
        self->thread_started = true;
        sd3_log_info("curve", "zap=on allow=%s keys=%zu own=%.8s", allow_path, self->n_allow,
                     self->own.public_key);
    }
    return self;
fail:
    sd3_curve_destroy(&self);
    return NULL;
}

void
sd3_curve_destroy(sd3_curve_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_curve_t *self = *self_p;
    if (self->thread_started) {
        atomic_store(&self->stop, true);
        pthread_join(self->thread, NULL); // the thread closes the socket
    } else if (self->zap) {
        zmq_close(self->zap);
    }
    pthread_mutex_destroy(&self->lock);
    free(self->allow);
    free(self->allow_path);
    free(self->servers);
    memset(&self->own, 0, sizeof self->own); // no secret left in freed memory
    free(self);
    *self_p = NULL;
}

int
sd3_curve_reload(sd3_curve_t *self, sd3_err_t *err)
{
    uint8_t(*keys)[32] = NULL;
    size_t n = 0;
    if (!self->allow_path)
        return sd3_err_set(err, SD3_EINVAL, "curve: no allow file to reload");
    int rc = s_load_allow(self->allow_path, &keys, &n, err);
    if (rc)
        return rc;
    pthread_mutex_lock(&self->lock);
    free(self->allow);
    self->allow = keys;
    self->n_allow = n;
    pthread_mutex_unlock(&self->lock);
    sd3_log_info("curve", "allow=%s reloaded keys=%zu", self->allow_path, n);
    return 0;
}

static bool
s_is_local(const char *endpoint)
{
    return !strncmp(endpoint, "inproc://", 9) || !strncmp(endpoint, "ipc://", 6);
}

int
sd3_curve_bind(sd3_curve_t *self, void *sock, const char *endpoint, sd3_err_t *err)
{
    if (self && !s_is_local(endpoint)) {
        if (!self->allow_path)
            return sd3_err_set(err, SD3_EINVAL,
                               "%s: a CURVE server needs an allow file (--curve-allow)", endpoint);
        int rc = sd3_curve_set_server(sock, &self->own, err);
        if (rc)
            return rc;
    }
    // A TCP address still held by a process that is dying (a restart right after a kill)
    // frees within moments: EADDRINUSE is retried for up to S_BIND_RETRY_S.
    double t0 = sd3_now_s();
    while (zmq_bind(sock, endpoint) != 0) {
        int e = errno;
        if (e != EADDRINUSE || strncmp(endpoint, "tcp://", 6) != 0 ||
            sd3_now_s() - t0 >= S_BIND_RETRY_S)
            return sd3_err_set(err, SD3_EIO, "cannot bind %s: %s", endpoint, zmq_strerror(e));
        nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
    }
    return 0;
}

int
sd3_curve_connect(sd3_curve_t *self, void *sock, const char *endpoint, sd3_err_t *err)
{
    if (self && !s_is_local(endpoint)) {
        const char *key = NULL;
        for (size_t i = 0; i < self->n_servers; i++) {
            if (!strcmp(self->servers[i].endpoint, endpoint)) {
                key = self->servers[i].key;
                break;
            }
            if (!self->servers[i].endpoint[0] && !key)
                key = self->servers[i].key;
        }
        if (!key)
            return sd3_err_set(err, SD3_EINVAL,
                               "%s: no server public key for this endpoint (--curve-server-pub)",
                               endpoint);
        int rc = sd3_curve_set_client(sock, key, &self->own, err);
        if (rc)
            return rc;
    }
    if (zmq_connect(sock, endpoint) != 0)
        return sd3_err_set(err, SD3_EIO, "cannot connect %s: %s", endpoint, zmq_strerror(errno));
    return 0;
}

const char *
sd3_curve_public_key(const sd3_curve_t *self)
{
    return self->own.public_key;
}

uint64_t
sd3_curve_admitted(const sd3_curve_t *self)
{
    return self ? atomic_load(&((sd3_curve_t *)self)->admitted) : 0;
}

uint64_t
sd3_curve_refused(const sd3_curve_t *self)
{
    return self ? atomic_load(&((sd3_curve_t *)self)->refused) : 0;
}

// ---- low level -------------------------------------------------------------------------

int
sd3_curve_set_server(void *sock, const sd3_curve_keypair_t *own, sd3_err_t *err)
{
    int on = 1;
    if (!s_key_valid(own->secret_key, NULL))
        return sd3_err_set(err, SD3_EINVAL, "curve server: not a valid secret key");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &on, sizeof on) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, own->secret_key, SD3_CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, SD3_CURVE_ZAP_DOMAIN, strlen(SD3_CURVE_ZAP_DOMAIN)) !=
            0)
        return sd3_err_set(err, SD3_EINVAL, "curve server: %s", zmq_strerror(errno));
    return 0;
}

int
sd3_curve_set_client(void *sock, const char *server_public, const sd3_curve_keypair_t *own,
                     sd3_err_t *err)
{
    if (!s_key_valid(server_public, NULL) || !s_key_valid(own->public_key, NULL) ||
        !s_key_valid(own->secret_key, NULL))
        return sd3_err_set(err, SD3_EINVAL, "curve client: not a valid key");
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server_public, SD3_CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, own->public_key, SD3_CURVE_Z85_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, own->secret_key, SD3_CURVE_Z85_LEN) != 0)
        return sd3_err_set(err, SD3_EINVAL, "curve client: %s", zmq_strerror(errno));
    return 0;
}
