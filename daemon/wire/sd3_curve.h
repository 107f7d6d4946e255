/*  sd3_curve - CurveZMQ for sd3d: key files, the allow list (ZAP handler), secured sockets
 *
 *  When a node is given keys (--curve-secret FILE --curve-allow FILE --curve-server-pub
 *  FILE), every TCP socket it binds is a CURVE server and every TCP socket it connects is a
 *  CURVE client: traffic is encrypted and a peer whose public key is not in the allow file
 *  never gets a message through. Without keys nothing changes (local clusters, tests).
 *  inproc:// and ipc:// endpoints never use keys: they do not leave the machine.
 *
 *  Files (all Z85 text, one key per line; a comment starts with a # at the start of a line
 *  or after a blank, since # is also a Z85 character):
 *    NAME.key   the secret key (40 Z85 chars); refused when others may read it or the
 *               group may write it (0600 as written; 0440 from a Kubernetes secret is fine)
 *    NAME.pub   the public key; an allow file is any number of these: cat *.pub > allow
 *    server-pub one line "KEY" (the key every server of the cluster presents) and/or lines
 *               "KEY ENDPOINT" (the key of the server at exactly that endpoint)
 *  `sd3ctl keygen -o NAME` writes NAME.key and NAME.pub.
 *
 *  How a node uses it (the ZeroMQ context must outlive the sd3_curve_t):
 *      sd3_curve_t *curve = NULL;                 // NULL = no keys: plain sockets
 *      if (opts.curve_secret &&
 *          !(curve = sd3_curve_new(ctx, opts.curve_secret, opts.curve_allow,
 *                                  opts.curve_server_pub, &err)))
 *          die(err.msg);
 *      sd3_curve_bind(curve, router, "tcp://0.0.0.0:5600", &err);     // instead of zmq_bind
 *      sd3_curve_connect(curve, dealer, next_address, &err);         // instead of zmq_connect
 *      ...close the sockets...
 *      sd3_curve_destroy(&curve);                 // stops the ZAP thread; before zmq_ctx_term
 *
 *  The ZAP handler (RFC 27) is a thread of its own on inproc://zeromq.zap.01 of the context;
 *  it admits CURVE clients whose key is in the allow file and refuses everything else,
 *  logging each refusal (warn, area "curve": the key's first 8 Z85 chars and the peer
 *  address; repeats of one key within 10 s are counted, not logged again). A context has at
 *  most one handler, so one sd3_curve_t with an allow file per context.
 *  Thread: sd3_curve_bind/_connect may be called from any thread (each socket by one thread,
 *  ZeroMQ's rule); the allow list is reloaded under a lock.  */
#pragma once
#include "sd3_err.h"

#include <stdbool.h>
#include <stdint.h>

#define SD3_CURVE_Z85_LEN    40   // a 32-byte key as Z85 text (without the NUL)
#define SD3_CURVE_MAX_KEYS   4096 // allow-list entries
#define SD3_CURVE_ZAP_DOMAIN "sd3"

typedef struct {
    char public_key[SD3_CURVE_Z85_LEN + 1]; // Z85, NUL-terminated
    char secret_key[SD3_CURVE_Z85_LEN + 1];
} sd3_curve_keypair_t;

// true when this libzmq was built with CURVE (libsodium): zmq_has("curve").
bool sd3_curve_available(void);

// A fresh random key pair. SD3_ENOTSUP when libzmq has no CURVE.
int sd3_curve_keypair_new(sd3_curve_keypair_t *kp, sd3_err_t *err);
// Writes NAME.key (mode 0600) and NAME.pub. An existing NAME.key is refused (SD3_EINVAL)
// unless `force`. SD3_EIO when a file cannot be written.
int sd3_curve_keypair_save(const sd3_curve_keypair_t *kp, const char *name, bool force,
                           sd3_err_t *err);
// Reads a secret key file (NAME.key) and derives the public key. SD3_EINVAL when others may
// read it or the group may write it (mode & 027); SD3_EFORMAT when it does not hold exactly
// one Z85 key; SD3_ENOTFOUND / SD3_EIO.
int sd3_curve_keypair_load(const char *secret_path, sd3_curve_keypair_t *kp, sd3_err_t *err);
// Reads a file that holds exactly one public key (NAME.pub) into out (Z85 + NUL).
int sd3_curve_public_load(const char *path, char out[SD3_CURVE_Z85_LEN + 1], sd3_err_t *err);

// ---- the node's configuration -------------------------------------------------------------
typedef struct sd3_curve sd3_curve_t;

// Loads the node's key pair (secret_path, required), the allow file (allow_path; NULL: this
// node binds no CURVE server, sd3_curve_bind on tcp then fails) and the server keys
// (server_pub_path; NULL: this node connects to no CURVE server). With an allow file it
// starts the ZAP handler in `ctx`. NULL + err (SD3_ENOTSUP without CURVE, file errors, a
// second handler in the same context: SD3_EINVAL).
sd3_curve_t *sd3_curve_new(void *ctx, const char *secret_path, const char *allow_path,
                           const char *server_pub_path, sd3_err_t *err);
// Stops the ZAP thread and frees; NULL-safe; sets *self_p = NULL.
void sd3_curve_destroy(sd3_curve_t **self_p);
// Re-reads the allow file (e.g. on SIGHUP). On failure the old list stays in force.
int sd3_curve_reload(sd3_curve_t *self, sd3_err_t *err);

// zmq_bind with CURVE server options when self is not NULL and the endpoint is not
// inproc/ipc (self NULL: a plain bind). A tcp address in use is retried for up to 5 s, the
// time a killed holder takes to die. SD3_EIO (zmq_bind failed: the message names the
// endpoint and errno text).
int sd3_curve_bind(sd3_curve_t *self, void *sock, const char *endpoint, sd3_err_t *err);
// zmq_connect with CURVE client options (own pair + the server key for this endpoint) when
// self is not NULL and the endpoint is not inproc/ipc. SD3_EINVAL when no server key is
// known for the endpoint; SD3_EIO when zmq_connect fails.
int sd3_curve_connect(sd3_curve_t *self, void *sock, const char *endpoint, sd3_err_t *err);
// The node's own public key (Z85), borrowed.
const char *sd3_curve_public_key(const sd3_curve_t *self);
// Handshakes the ZAP handler admitted / refused so far (0 without a handler).
uint64_t sd3_curve_admitted(const sd3_curve_t *self);
uint64_t sd3_curve_refused(const sd3_curve_t *self);

// ---- low level: one socket, explicit keys (set before zmq_bind / zmq_connect) ----------
// CURVE server: own secret key, ZAP domain SD3_CURVE_ZAP_DOMAIN. SD3_EINVAL on a bad key.
int sd3_curve_set_server(void *sock, const sd3_curve_keypair_t *own, sd3_err_t *err);
// CURVE client: the server's public key (Z85) and the own pair. SD3_EINVAL on a bad key.
int sd3_curve_set_client(void *sock, const char *server_public, const sd3_curve_keypair_t *own,
                         sd3_err_t *err);
