/*  sd3_journal - the controller's crash-safe journal (see sd3_journal.h)
 *
 *  Layout: helpers; the stored request (wire frames); open/destroy; transitions;
 *  checkpoint (the hand-over slots and the writer thread); reading back (get, recover);
 *  prune, count.
 *
 *  Two connections to the file: the controller's (every call but the checkpoint write)
 *  and the writer thread's (checkpoint rows, their deletion after an end, and the WAL
 *  fold-back). A checkpoint call copies the tensors into its request's slot under mu and
 *  signals; the writer swaps the slot's buffers for its spare ones and writes without the
 *  lock. One slot per request: a newer step replaces a pending older one.
 *
 *  Schema (application_id 'SD3J', user_version 1):
 *    requests(seq INTEGER PRIMARY KEY AUTOINCREMENT: acceptance order, id TEXT UNIQUE,
 *             client BLOB, request BLOB, needs_old INTEGER, state INTEGER, created_ms,
 *             updated_ms, attempt, result BLOB, error_code, error_msg TEXT)
 *    checkpoints(id TEXT PRIMARY KEY, attempt, step, ndim, d0..d3, latent BLOB, old BLOB,
 *                checksum INTEGER)   at most one row per request: the newest
 *  The request blob is the GENERATE message as sd3_wire_encode makes it (envelope plus an
 *  "init_image" frame for img2img) in a small container: "SD3JREQ1", u32 frame count,
 *  then per frame u64 length and bytes, little-endian. Reading it back goes through
 *  sd3_wire_decode, the same checks as a message off the network.  */
#include "sd3_journal.h"

#include "sd3_clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define S_APP_ID      0x53443344 // 'SD3D'
#define S_VERSION     1
#define S_REQ_MAGIC   "SD3JREQ1"
#define S_MAX_DIM_LEN (1 << 24) // one latent dimension read back
// The writer thread folds the WAL into the database once it holds this many pages (4 KiB
// each): about two 1024 px DPM++ checkpoints.
#define S_WAL_PAGES 1024
#define S_STR2(x)   #x
#define S_STR(x)    S_STR2(x)

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SYNC_FULL,
    S_SYNC_NORMAL,
    S_INSERT,
    S_STATE_OF,
    S_START,
    S_LIVE_TOUCH,
    S_CKPT_UPSERT,
    S_CKPT_DELETE,
    S_END,
    S_GET,
    S_GET_CKPT,
    S_CKPT_STEP,
    S_LIST_LIVE,
    S_PRUNE_CKPT,
    S_PRUNE,
    S_COUNT_STATE,
    S_COUNT_ALL,
    S_N_STMT
};

static const char *const s_sql[S_N_STMT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SYNC_FULL] = "PRAGMA synchronous=FULL",
    [S_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
    [S_INSERT] = "INSERT INTO requests(id, client, request, needs_old, state, created_ms, "
                 "updated_ms, attempt, error_code) VALUES(?1, ?2, ?3, ?4, 0, ?5, ?5, 0, 0)",
    [S_STATE_OF] = "SELECT state, needs_old FROM requests WHERE id = ?1",
    [S_START] = "UPDATE requests SET state = 1, attempt = ?2, updated_ms = ?3 "
                "WHERE id = ?1 AND state IN (0, 1)",
    [S_LIVE_TOUCH] = "UPDATE requests SET state = 1, updated_ms = ?2, "
                     "attempt = max(attempt, ?3) WHERE id = ?1 AND state IN (0, 1)",
    [S_CKPT_UPSERT] =
        "INSERT INTO checkpoints(id, attempt, step, ndim, d0, d1, d2, d3, latent, old, checksum) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT(id) DO UPDATE SET "
        "attempt = excluded.attempt, step = excluded.step, ndim = excluded.ndim, "
        "d0 = excluded.d0, d1 = excluded.d1, d2 = excluded.d2, d3 = excluded.d3, "
        "latent = excluded.latent, old = excluded.old, checksum = excluded.checksum "
        "WHERE excluded.attempt > checkpoints.attempt OR "
        "(excluded.attempt = checkpoints.attempt AND excluded.step > checkpoints.step)",
    [S_CKPT_DELETE] = "DELETE FROM checkpoints WHERE id = ?1 AND "
                      "(SELECT state FROM requests WHERE requests.id = ?1) >= 2",
    [S_END] = "UPDATE requests SET state = ?2, updated_ms = ?3, result = ?4, error_code = ?5, "
              "error_msg = ?6 WHERE id = ?1 AND state IN (0, 1)",
    [S_GET] = "SELECT id, client, request, state, created_ms, updated_ms, attempt, result, "
              "error_code, error_msg FROM requests WHERE id = ?1",
    [S_GET_CKPT] = "SELECT attempt, step, ndim, d0, d1, d2, d3, latent, old, checksum "
                   "FROM checkpoints WHERE id = ?1",
    [S_CKPT_STEP] = "SELECT step FROM checkpoints WHERE id = ?1",
    [S_LIST_LIVE] = "SELECT id FROM requests WHERE state IN (0, 1) ORDER BY seq",
    [S_PRUNE_CKPT] = "DELETE FROM checkpoints WHERE id NOT IN (SELECT id FROM requests "
                     "WHERE state < 2)",
    [S_PRUNE] = "DELETE FROM requests WHERE state >= 2 AND updated_ms < ?1",
    [S_COUNT_STATE] = "SELECT count(*) FROM requests WHERE state = ?1",
    [S_COUNT_ALL] = "SELECT count(*) FROM requests",
};

static const char s_schema[] =
    "CREATE TABLE IF NOT EXISTS requests("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " id TEXT NOT NULL UNIQUE,"
    " client BLOB NOT NULL,"
    " request BLOB NOT NULL,"
    " needs_old INTEGER NOT NULL,"
    " state INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " attempt INTEGER NOT NULL,"
    " result BLOB,"
    " error_code INTEGER NOT NULL,"
    " error_msg TEXT);"
    "CREATE TABLE IF NOT EXISTS checkpoints("
    " id TEXT PRIMARY KEY,"
    " attempt INTEGER NOT NULL,"
    " step INTEGER NOT NULL,"
    " ndim INTEGER NOT NULL,"
    " d0 INTEGER NOT NULL, d1 INTEGER NOT NULL, d2 INTEGER NOT NULL, d3 INTEGER NOT NULL,"
    " latent BLOB NOT NULL,"
    " old BLOB,"
    " checksum INTEGER NOT NULL);";

// A checkpoint waiting for the writer thread: the newest one per request.
typedef struct {
    char id[SD3_WIRE_ID_MAX];
    uint32_t attempt, step;
    int ndim;
    int64_t shape[4];
    size_t nbytes;
    float *latent, *old; // owned; old NULL when the request has none
    size_t cap;          // bytes allocated in latent and old each
    bool has_old, full;
    bool del;     // not a checkpoint: delete the request's checkpoint (it ended)
    uint64_t seq; // enqueue order: the writer takes the oldest first
} s_slot_t;

struct sd3_journal {
    sqlite3 *db;
    sqlite3_stmt *st[S_N_STMT];
    int sync;    // S_SYNC_FULL or S_SYNC_NORMAL: what the connection runs with now
    int lock_fd; // holds flock(LOCK_EX) on the file: one controller per journal; -1 none
    // The checkpoint writer: its own connection (an inner sd3_journal_t with no thread)
    // and thread, so neither the 1..2 MiB write nor a WAL fold-back with its fsyncs runs
    // inside a call of the controller's loop. Everything below is under mu.
    sd3_journal_t *writer;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;   // the writer waits for work
    pthread_cond_t idle; // flush waits for the writer
    s_slot_t *slots;
    int n_slots;
    uint64_t seq;
    bool writing, stop;
    sd3_err_t async_err; // the first failure of a background write, until reported
};

// ---- helpers ------------------------------------------------------------------------------

const char *
sd3_journal_state_name(sd3_journal_state_t state)
{
    static const char *const names[] = {"queued", "running", "done", "failed", "cancelled"};
    return (unsigned)state < SD3_JOURNAL_STATE_COUNT ? names[state] : "?";
}

// SQLite's result code to ours: a damaged or foreign file is EFORMAT, the rest EIO.
static int
s_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
        return SD3_EFORMAT;
    case SQLITE_NOMEM:
        return SD3_ENOMEM;
    case SQLITE_TOOBIG:
        return SD3_EINVAL;
    default:
        return SD3_EIO;
    }
}

static int
s_db_err(sd3_journal_t *self, int rc, const char *what, sd3_err_t *err)
{
    return sd3_err_set(err, s_code(rc), "journal: %s: %s", what,
                       self && self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(rc));
}

// Runs a statement that returns no rows, and resets it.
static int
s_exec(sd3_journal_t *self, int which, const char *what, sd3_err_t *err)
{
    sqlite3_stmt *s = self->st[which];
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return s_db_err(self, rc, what, err);
    return 0;
}

static void
s_done(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

// BEGIN IMMEDIATE after choosing the durability of the coming commit (see the header).
static int
s_begin(sd3_journal_t *self, int sync, sd3_err_t *err)
{
    if (self->sync != sync) {
        int rc = s_exec(self, sync, "set synchronous", err);
        if (rc)
            return rc;
        self->sync = sync;
    }
    return s_exec(self, S_BEGIN, "begin", err);
}

static int
s_commit(sd3_journal_t *self, sd3_err_t *err)
{
    int rc = s_exec(self, S_COMMIT, "commit", err);
    if (rc && !sqlite3_get_autocommit(self->db))
        s_exec(self, S_ROLLBACK, "rollback", NULL);
    return rc;
}

static void
s_rollback(sd3_journal_t *self)
{
    if (!sqlite3_get_autocommit(self->db))
        s_exec(self, S_ROLLBACK, "rollback", NULL);
}

static int
s_check_id(const char *request_id, sd3_err_t *err)
{
    size_t n = request_id ? strnlen(request_id, SD3_WIRE_ID_MAX) : 0;
    if (n == 0 || n >= SD3_WIRE_ID_MAX)
        return sd3_err_set(err, SD3_EINVAL, "journal: request id must have 1..%d bytes",
                           SD3_WIRE_ID_MAX - 1);
    return 0;
}

// State of request_id: SD3_ENOTFOUND when absent, SD3_EFORMAT when out of range.
static int
s_state_of(sd3_journal_t *self, const char *request_id, sd3_journal_state_t *state, bool *needs_old,
           sd3_err_t *err)
{
    sqlite3_stmt *s = self->st[S_STATE_OF];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), out = 0;
    if (rc == SQLITE_DONE) {
        out = sd3_err_set(err, SD3_ENOTFOUND, "journal: no request '%s'", request_id);
    } else if (rc != SQLITE_ROW) {
        out = s_db_err(self, rc, "read state", err);
    } else {
        sqlite3_int64 v = sqlite3_column_int64(s, 0);
        if (sqlite3_column_type(s, 0) != SQLITE_INTEGER || v < 0 || v >= SD3_JOURNAL_STATE_COUNT)
            out = sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': state is not 0..%d",
                              request_id, SD3_JOURNAL_STATE_COUNT - 1);
        *state = (sd3_journal_state_t)(out ? 0 : v);
        if (needs_old)
            *needs_old = sqlite3_column_int(s, 1) != 0;
    }
    s_done(s);
    return out;
}

// After an UPDATE ... WHERE state IN (0, 1) that changed nothing: why.
static int
s_not_live(sd3_journal_t *self, const char *request_id, const char *verb, sd3_err_t *err)
{
    sd3_journal_state_t state = SD3_JOURNAL_STATE_COUNT; // named "?" if never read
    sd3_err_t e = {0};
    int rc = s_state_of(self, request_id, &state, NULL, &e);
    if (rc)
        return sd3_err_set(err, rc, "%s", e.msg);
    return sd3_err_set(err, SD3_EINVAL, "journal: cannot %s request '%s': it is %s already", verb,
                       request_id, sd3_journal_state_name(state));
}

static void
s_put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
s_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
s_get_u64(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

// ---- the stored request ---------------------------------------------------------------------

// The GENERATE message of request_id as one blob (fresh, free()).
static int
s_pack_request(const char *request_id, const sd3_wire_generate_t *req,
               const sd3_tensor_t *init_image, uint8_t **blob_p, size_t *len_p, sd3_err_t *err)
{
    sd3_wire_frames_t frames = {0};
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_GENERATE, request_id);
    sd3_tensor_t *view = NULL;
    int rc = 0;
    *blob_p = NULL;
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
    msg->body_kind = SD3_WIRE_BODY_GENERATE;
    msg->body.generate = *req;
    if (init_image) {
        if (!(view = sd3_tensor_new_view(init_image->dtype, init_image->ndim, init_image->shape,
                                         init_image->data))) {
            sd3_msg_destroy(&msg);
            return sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
        }
        view->name = "init_image";
        if ((rc = sd3_msg_add_tensor(msg, &view, NULL, err)) != 0) {
            sd3_tensor_destroy(&view);
            sd3_msg_destroy(&msg);
            return rc;
        }
    }
    if ((rc = sd3_wire_encode(&msg, &frames, err)) != 0) // takes msg
        return rc;
    size_t len = sizeof S_REQ_MAGIC - 1 + 4;
    for (int i = 0; i < frames.n; i++)
        len += 8 + frames.frames[i].len;
    if (len > SD3_JOURNAL_MAX_REQUEST) {
        rc = sd3_err_set(err, SD3_EINVAL, "journal: request '%s' is %zu bytes, at most %u",
                         request_id, len, SD3_JOURNAL_MAX_REQUEST);
        goto out;
    }
    uint8_t *blob = malloc(len), *p = blob;
    if (!blob) {
        rc = sd3_err_set(err, SD3_ENOMEM, "journal: out of memory (%zu bytes)", len);
        goto out;
    }
    memcpy(p, S_REQ_MAGIC, sizeof S_REQ_MAGIC - 1);
    p += sizeof S_REQ_MAGIC - 1;
    s_put_u32(p, (uint32_t)frames.n);
    p += 4;
    for (int i = 0; i < frames.n; i++) {
        s_put_u64(p, frames.frames[i].len);
        p += 8;
        if (frames.frames[i].len)
            memcpy(p, frames.frames[i].data, frames.frames[i].len);
        p += frames.frames[i].len;
    }
    *blob_p = blob;
    *len_p = len;
out:
    sd3_wire_frames_fini(&frames);
    return rc;
}

// The blob back to a request and its init image (fresh or NULL). SD3_EFORMAT on anything
// that is not what s_pack_request wrote for this id.
static int
s_unpack_request(const char *request_id, const uint8_t *blob, size_t len, sd3_wire_generate_t *req,
                 sd3_tensor_t **init_p, sd3_err_t *err)
{
    const size_t head = sizeof S_REQ_MAGIC - 1 + 4;
    sd3_wire_frame_t frames[1 + SD3_WIRE_MAX_TENSORS];
    sd3_msg_t *msg = NULL;
    *init_p = NULL;
    if (!blob || len < head || memcmp(blob, S_REQ_MAGIC, head - 4) != 0)
        return sd3_err_set(err, SD3_EFORMAT,
                           "journal: request '%s': stored request has no "
                           "%s header (%zu bytes)",
                           request_id, S_REQ_MAGIC, len);
    uint64_t n = s_get_u64(blob + head - 4, 4);
    if (n < 1 || n > 1 + SD3_WIRE_MAX_TENSORS)
        return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': %llu frames, want 1..%d",
                           request_id, (unsigned long long)n, 1 + SD3_WIRE_MAX_TENSORS);
    size_t off = head;
    for (uint64_t i = 0; i < n; i++) {
        if (len - off < 8)
            return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': frame %llu cut short",
                               request_id, (unsigned long long)i);
        uint64_t flen = s_get_u64(blob + off, 8);
        off += 8;
        if (flen > len - off)
            return sd3_err_set(
                err, SD3_EFORMAT, "journal: request '%s': frame %llu claims %llu bytes, %zu left",
                request_id, (unsigned long long)i, (unsigned long long)flen, len - off);
        frames[i] = (sd3_wire_frame_t){(void *)(blob + off), (size_t)flen, NULL, NULL};
        off += (size_t)flen;
    }
    if (off != len)
        return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': %zu bytes after the frames",
                           request_id, len - off);
    sd3_err_t e = {0};
    if (sd3_wire_decode(frames, (int)n, NULL, NULL, &msg, &e) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': %s", request_id, e.msg);
    int rc = 0;
    if (msg->type != SD3_MSG_GENERATE || msg->body_kind != SD3_WIRE_BODY_GENERATE ||
        strcmp(msg->request_id, request_id) != 0) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "journal: request '%s': stored message is %s for '%s', want GENERATE",
                         request_id, sd3_msg_type_name(msg->type), msg->request_id);
    } else {
        *req = msg->body.generate;
        *init_p = sd3_msg_take_tensor(msg, "init_image");
        if (*init_p)
            (*init_p)->name = NULL; // named by the message, which dies here
    }
    sd3_msg_destroy(&msg);
    return rc;
}

// ---- open / destroy -------------------------------------------------------------------------

static int
s_pragma_int(sd3_journal_t *self, const char *sql, sqlite3_int64 *out, sd3_err_t *err)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(self->db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(s, 0);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            *out = 0;
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(s);
    return rc == SQLITE_OK ? 0 : s_db_err(self, rc, sql, err);
}

static int
s_run(sd3_journal_t *self, const char *sql, sd3_err_t *err)
{
    int rc = sqlite3_exec(self->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : s_db_err(self, rc, sql, err);
}

// quick_check: one row "ok" or a list of problems.
static int
s_integrity(sd3_journal_t *self, const char *path, sd3_err_t *err)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(self->db, "PRAGMA quick_check", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return s_db_err(self, rc, path, err);
    rc = sqlite3_step(s);
    int out = 0;
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        if (!t || strcmp((const char *)t, "ok") != 0)
            out = sd3_err_set(err, SD3_EFORMAT, "journal %s: integrity check: %.200s", path,
                              t ? (const char *)t : "(null)");
    } else {
        out = s_db_err(self, rc, path, err);
    }
    sqlite3_finalize(s);
    return out;
}

// A journal object with nothing open yet (the controller's, or the writer's inner one).
static sd3_journal_t *
s_alloc(void)
{
    sd3_journal_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->lock_fd = -1;
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    pthread_cond_init(&self->idle, NULL);
    return self;
}

// sqlite3_busy_handler of the controller's connection: wait for the writer's commit in
// short polls, for at most 10 s.
static int
s_busy(void *user, int count)
{
    (void)user;
    if (count >= 50000)
        return 0;
    usleep(200);
    return 1;
}

// Opens one connection. The controller's (writer false) checks and sets up the file; the
// writer's joins it: synchronous=NORMAL and the WAL autocheckpoint, so the fold-back of the
// WAL into the database runs on the writer thread after its commits.
static int
s_open_conn(sd3_journal_t *self, const char *path, bool writer, sd3_err_t *err)
{
    int flags = SQLITE_OPEN_READWRITE | (writer ? 0 : SQLITE_OPEN_CREATE);
    int rc = sqlite3_open_v2(path, &self->db, flags, NULL);
    if (rc != SQLITE_OK)
        return sd3_err_set(err, SD3_EIO, "journal %s: cannot open: %s", path,
                           self->db ? sqlite3_errmsg(self->db) : sqlite3_errstr(rc));
    sqlite3_extended_result_codes(self->db, 1);
    // The two connections take turns on the write lock; a turn lasts one commit. The
    // controller's side polls every 0.2 ms (SQLite's own handler sleeps up to 100 ms).
    if (writer)
        sqlite3_busy_timeout(self->db, 10000);
    else
        sqlite3_busy_handler(self->db, s_busy, NULL);
    if (writer) {
        if (s_run(self, "PRAGMA synchronous=NORMAL", err) ||
            s_run(self, "PRAGMA wal_autocheckpoint=" S_STR(S_WAL_PAGES), err) ||
            s_run(self, "PRAGMA journal_size_limit=16777216", err))
            return err ? err->code : SD3_EIO;
        self->sync = S_SYNC_NORMAL;
    } else {
        sqlite3_int64 app_id = 0, version = 0, n_tables = 0;
        // Reading the header finds a file that is not SQLite at all (SQLITE_NOTADB).
        if (s_pragma_int(self, "PRAGMA application_id", &app_id, err) ||
            s_pragma_int(self, "PRAGMA user_version", &version, err) ||
            s_pragma_int(self, "SELECT count(*) FROM sqlite_schema", &n_tables, err))
            return sd3_err_prefix(err, "%s", path);
        if (n_tables > 0 && (app_id != S_APP_ID || version != S_VERSION))
            return sd3_err_set(err, SD3_EFORMAT,
                               "journal %s: not an sd3d journal (application_id 0x%llx, "
                               "version %lld; want 0x%x, %d)",
                               path, (unsigned long long)app_id, (long long)version, S_APP_ID,
                               S_VERSION);
        if (n_tables > 0 && (rc = s_integrity(self, path, err)) != 0)
            return rc;
        // WAL: a commit appends to the -wal file and never rewrites the database in place,
        // so a crash at any moment leaves the last committed transaction. auto_vacuum must
        // be set before the first table exists; prune gives space back (incremental_vacuum).
        if ((n_tables == 0 && s_run(self, "PRAGMA auto_vacuum=INCREMENTAL", err)) ||
            s_run(self, "PRAGMA journal_mode=WAL", err) ||
            s_run(self, "PRAGMA wal_autocheckpoint=0", err) ||
            s_run(self, "PRAGMA journal_size_limit=16777216", err) ||
            s_run(self, "PRAGMA synchronous=FULL", err))
            return err ? err->code : SD3_EIO;
        self->sync = S_SYNC_FULL;
        if (n_tables == 0) {
            char sql[sizeof s_schema + 128];
            snprintf(sql, sizeof sql,
                     "BEGIN IMMEDIATE; %s PRAGMA application_id=%d; "
                     "PRAGMA user_version=%d; COMMIT;",
                     s_schema, S_APP_ID, S_VERSION);
            if ((rc = s_run(self, sql, err)) != 0) {
                sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
                return rc;
            }
        }
    }
    for (int i = 0; i < S_N_STMT; i++) {
        rc = sqlite3_prepare_v3(self->db, s_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &self->st[i],
                                NULL);
        if (rc != SQLITE_OK) // a file whose tables lack our columns
            return sd3_err_set(err, s_code(rc) == SD3_EIO ? SD3_EFORMAT : s_code(rc),
                               "journal %s: schema does not match: %s", path,
                               sqlite3_errmsg(self->db));
    }
    return 0;
}

static void s_writer_stop(sd3_journal_t *self);
static void *s_writer(void *arg);

sd3_journal_t *
sd3_journal_open(const char *path, sd3_err_t *err)
{
    sd3_journal_t *self = s_alloc();
    int rc;
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
        return NULL;
    }
    if (!sqlite3_threadsafe()) {
        sd3_err_set(err, SD3_ENOTSUP, "journal: libsqlite3 was built without thread support");
        goto fail;
    }
    // One controller per journal: an flock on the file itself, held until destroy and
    // released by the kernel when the process dies. Taken before SQLite opens the file
    // (closing another descriptor of a file drops SQLite's POSIX locks on it).
    if ((self->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
        sd3_err_set(err, SD3_EIO, "journal %s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    // A controller restarted right after a kill may find the old one still dying: the lock
    // is retried for up to 5 s before the journal counts as another's.
    for (double t0 = sd3_now_s(); flock(self->lock_fd, LOCK_EX | LOCK_NB) != 0;) {
        int e = errno;
        if (e != EWOULDBLOCK || sd3_now_s() - t0 >= 5.0) {
            sd3_err_set(err, SD3_EIO, "journal %s: in use by another process (%s)", path,
                        strerror(e));
            goto fail;
        }
        nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
    }
    if (s_open_conn(self, path, false, err) != 0)
        goto fail;
    if (!(self->writer = s_alloc())) {
        sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
        goto fail;
    }
    if (s_open_conn(self->writer, path, true, err) != 0)
        goto fail;
    if ((rc = pthread_create(&self->thread, NULL, s_writer, self)) != 0) {
        sd3_err_set(err, SD3_EIO, "journal %s: writer thread: %s", path, strerror(rc));
        goto fail;
    }
    self->thread_started = true;
    return self;
fail:
    sd3_journal_destroy(&self);
    return NULL;
}

void
sd3_journal_destroy(sd3_journal_t **self_p)
{
    sd3_journal_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    s_writer_stop(self); // writes what is pending first
    sd3_journal_destroy(&self->writer);
    for (int i = 0; i < S_N_STMT; i++)
        sqlite3_finalize(self->st[i]);
    sqlite3_close(self->db); // the last connection folds the WAL in and removes it
    if (self->lock_fd >= 0)
        close(self->lock_fd); // after SQLite let go of the file: see sd3_journal_open
    for (int i = 0; i < self->n_slots; i++) {
        free(self->slots[i].latent);
        free(self->slots[i].old);
    }
    free(self->slots);
    pthread_cond_destroy(&self->idle);
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    free(self);
    *self_p = NULL;
}

// ---- transitions ----------------------------------------------------------------------------

int
sd3_journal_accept(sd3_journal_t *self, const char *request_id, const uint8_t *client_id,
                   size_t client_id_len, const sd3_wire_generate_t *req,
                   const sd3_tensor_t *init_image, sd3_err_t *err)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc;
    if ((rc = s_check_id(request_id, err)) != 0)
        return rc;
    if (!req || client_id_len > SD3_WIRE_ROUTING_ID_MAX || (client_id_len && !client_id))
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s': no request, or a client "
                           "id of %zu bytes (at most %d)",
                           request_id, client_id_len, SD3_WIRE_ROUTING_ID_MAX);
    // A replay must make the same image: nothing left for the controller to choose.
    if (req->seed_random || req->sampler == SD3_WIRE_SAMPLER_DEFAULT ||
        (unsigned)req->sampler >= SD3_WIRE_SAMPLER_COUNT)
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s': seed and sampler must be "
                           "resolved before it is journalled",
                           request_id);
    if (init_image && (init_image->dtype != SD3_U8 || init_image->ndim != 3 ||
                       init_image->shape[2] != 3 || init_image->where != SD3_HOST))
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s': init image must be a host "
                           "U8 [H, W, 3] tensor",
                           request_id);
    if ((rc = s_pack_request(request_id, req, init_image, &blob, &len, err)) != 0)
        return rc;
    if ((rc = s_begin(self, S_SYNC_FULL, err)) != 0)
        goto out;
    sqlite3_stmt *s = self->st[S_INSERT];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    sqlite3_bind_blob64(s, 2, client_id_len ? (const void *)client_id : "", client_id_len,
                        SQLITE_STATIC);
    sqlite3_bind_blob64(s, 3, blob, len, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, req->sampler == SD3_WIRE_SAMPLER_DPMPP_2M);
    sqlite3_bind_int64(s, 5, sd3_unix_ms());
    int src = sqlite3_step(s);
    s_done(s);
    if (src == SQLITE_CONSTRAINT_UNIQUE || src == SQLITE_CONSTRAINT_PRIMARYKEY) {
        sd3_journal_state_t state = 0;
        s_state_of(self, request_id, &state, NULL, NULL);
        s_rollback(self);
        rc = sd3_err_set(err, SD3_EINVAL, "journal: request id '%s' is already journalled (%s)",
                         request_id, sd3_journal_state_name(state));
        goto out;
    }
    if (src != SQLITE_DONE) {
        rc = s_db_err(self, src, "accept", err);
        s_rollback(self);
        goto out;
    }
    rc = s_commit(self, err);
out:
    free(blob);
    return rc;
}

int
sd3_journal_start(sd3_journal_t *self, const char *request_id, uint32_t attempt, sd3_err_t *err)
{
    int rc;
    if ((rc = s_check_id(request_id, err)) != 0)
        return rc;
    // NORMAL: losing a start to a power cut only makes a resume think it is still queued.
    if ((rc = s_begin(self, S_SYNC_NORMAL, err)) != 0)
        return rc;
    sqlite3_stmt *s = self->st[S_START];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, attempt);
    sqlite3_bind_int64(s, 3, sd3_unix_ms());
    int src = sqlite3_step(s);
    s_done(s);
    if (src != SQLITE_DONE)
        rc = s_db_err(self, src, "start", err);
    else if (sqlite3_changes(self->db) == 0)
        rc = s_not_live(self, request_id, "start", err);
    if (rc) {
        s_rollback(self);
        return rc;
    }
    return s_commit(self, err);
}

static void s_enqueue_delete(sd3_journal_t *self, const char *request_id);

// Moves a live request to an end state and drops its checkpoint, in one transaction.
static int
s_end(sd3_journal_t *self, const char *request_id, sd3_journal_state_t state, const uint8_t *png,
      size_t png_size, int code, const char *msg, const char *verb, sd3_err_t *err)
{
    int rc;
    if ((rc = s_check_id(request_id, err)) != 0)
        return rc;
    // NORMAL: an end lost to a power cut (never to a crash) takes the deletion of the
    // checkpoint with it, so the request resumes from that checkpoint and makes the same
    // PNG again; FULL would cost an fsync of the WAL in the controller's loop per request.
    if ((rc = s_begin(self, S_SYNC_NORMAL, err)) != 0)
        return rc;
    sqlite3_stmt *s = self->st[S_END];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 2, (int)state);
    sqlite3_bind_int64(s, 3, sd3_unix_ms());
    if (png)
        sqlite3_bind_blob64(s, 4, png_size ? (const void *)png : "", png_size, SQLITE_STATIC);
    sqlite3_bind_int(s, 5, code);
    if (msg)
        sqlite3_bind_text(s, 6, msg, (int)strnlen(msg, SD3_WIRE_MSG_MAX - 1), SQLITE_STATIC);
    int src = sqlite3_step(s);
    s_done(s);
    if (src != SQLITE_DONE)
        rc = s_db_err(self, src, verb, err);
    else if (sqlite3_changes(self->db) == 0)
        rc = s_not_live(self, request_id, verb, err);
    if (rc) {
        s_rollback(self);
        return rc;
    }
    if ((rc = s_commit(self, err)) != 0)
        return rc;
    // Deleting a 2 MiB row walks its 512 overflow pages (tens of ms on a busy disk): the
    // writer does it. A checkpoint row of an ended request is never read; prune removes
    // any a crash left behind.
    s_enqueue_delete(self, request_id);
    return 0;
}

int
sd3_journal_finish(sd3_journal_t *self, const char *request_id, const uint8_t *png, size_t png_size,
                   sd3_err_t *err)
{
    if ((png_size && !png) || png_size > SD3_JOURNAL_MAX_RESULT)
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s': result of %zu bytes "
                           "(at most %u)",
                           request_id ? request_id : "", png_size, SD3_JOURNAL_MAX_RESULT);
    return s_end(self, request_id, SD3_JOURNAL_DONE, png ? png : (const uint8_t *)"", png_size,
                 SD3_OK, NULL, "finish", err);
}

int
sd3_journal_fail(sd3_journal_t *self, const char *request_id, int code, const char *msg,
                 sd3_err_t *err)
{
    if (code >= 0)
        code = SD3_EINTERNAL;
    return s_end(self, request_id, SD3_JOURNAL_FAILED, NULL, 0, code, msg ? msg : "", "fail", err);
}

int
sd3_journal_cancel(sd3_journal_t *self, const char *request_id, sd3_err_t *err)
{
    return s_end(self, request_id, SD3_JOURNAL_CANCELLED, NULL, 0, SD3_ECANCELED,
                 "the request was cancelled", "cancel", err);
}

// ---- checkpoint ---------------------------------------------------------------------------

static uint64_t
s_checksum(const void *latent, size_t n, const void *old, size_t n_old)
{
    uint64_t h = XXH3_64bits(latent, n);
    return old ? XXH3_64bits_withSeed(old, n_old, h) : h;
}

// One checkpoint in one transaction on connection c (the writer's): only while the request
// is live, and only when newer by (attempt, step) than the stored one.
static int
s_ckpt_write(sd3_journal_t *c, const s_slot_t *w, sd3_err_t *err)
{
    int rc;
    if ((rc = s_begin(c, S_SYNC_NORMAL, err)) != 0)
        return rc;
    sd3_journal_state_t state;
    if ((rc = s_state_of(c, w->id, &state, NULL, err)) != 0) {
        s_rollback(c);
        return rc == SD3_ENOTFOUND ? 0 : rc; // pruned meanwhile: nothing to keep
    }
    if (state != SD3_JOURNAL_QUEUED && state != SD3_JOURNAL_RUNNING) {
        s_rollback(c); // ended while this waited: the end wins
        return 0;
    }
    sqlite3_stmt *s = c->st[S_LIVE_TOUCH];
    sqlite3_bind_text(s, 1, w->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, sd3_unix_ms());
    sqlite3_bind_int64(s, 3, w->attempt);
    int src = sqlite3_step(s);
    s_done(s);
    if (src == SQLITE_DONE) {
        int64_t d[4] = {1, 1, 1, 1};
        for (int i = 0; i < w->ndim; i++)
            d[i] = w->shape[i];
        s = c->st[S_CKPT_UPSERT];
        sqlite3_bind_text(s, 1, w->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, w->attempt);
        sqlite3_bind_int64(s, 3, w->step);
        sqlite3_bind_int(s, 4, w->ndim);
        for (int i = 0; i < 4; i++)
            sqlite3_bind_int64(s, 5 + i, d[i]);
        sqlite3_bind_blob64(s, 9, w->latent, w->nbytes, SQLITE_STATIC);
        if (w->has_old)
            sqlite3_bind_blob64(s, 10, w->old, w->nbytes, SQLITE_STATIC);
        uint64_t sum = s_checksum(w->latent, w->nbytes, w->has_old ? w->old : NULL, w->nbytes);
        sqlite3_bind_int64(s, 11, (sqlite3_int64)sum);
        src = sqlite3_step(s);
        s_done(s);
    }
    if (src != SQLITE_DONE) {
        rc = s_db_err(c, src, "checkpoint", err);
        s_rollback(c);
        return sd3_err_prefix(err, "request '%s' step %u", w->id, w->step);
    }
    return s_commit(c, err);
}

// Deletes the checkpoint row of an ended request (on the writer's connection c).
static int
s_ckpt_delete(sd3_journal_t *c, const char *request_id, sd3_err_t *err)
{
    int rc;
    if ((rc = s_begin(c, S_SYNC_NORMAL, err)) != 0)
        return rc;
    sqlite3_stmt *s = c->st[S_CKPT_DELETE];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    s_done(s);
    if (src != SQLITE_DONE) {
        rc = s_db_err(c, src, "delete checkpoint", err);
        s_rollback(c);
        return rc;
    }
    return s_commit(c, err);
}

// The writer thread: takes the oldest pending checkpoint, writes it, again; drains the
// queue before it stops. The WAL is folded back by its connection's autocheckpoint, here.
static void *
s_writer(void *arg)
{
    sd3_journal_t *self = arg;
    s_slot_t w = {0}; // the one being written: buffers swapped in from its slot
    pthread_mutex_lock(&self->mu);
    for (;;) {
        int pick = -1;
        for (int i = 0; i < self->n_slots; i++)
            if (self->slots[i].full && (pick < 0 || self->slots[i].seq < self->slots[pick].seq))
                pick = i;
        if (pick < 0) {
            if (self->stop)
                break;
            pthread_cond_wait(&self->cv, &self->mu);
            continue;
        }
        s_slot_t *sl = &self->slots[pick];
        s_slot_t tmp = w; // swap: the slot gets our spare buffers back
        w = *sl;
        sl->latent = tmp.latent;
        sl->old = tmp.old;
        sl->cap = tmp.cap;
        sl->full = false;
        self->writing = true;
        pthread_mutex_unlock(&self->mu);
        sd3_err_t e = {0};
        int rc = w.del ? s_ckpt_delete(self->writer, w.id, &e) : s_ckpt_write(self->writer, &w, &e);
        pthread_mutex_lock(&self->mu);
        self->writing = false;
        if (rc != 0 && self->async_err.code == SD3_OK)
            self->async_err = e;
        pthread_cond_broadcast(&self->idle);
    }
    pthread_mutex_unlock(&self->mu);
    free(w.latent);
    free(w.old);
    return NULL;
}

static void
s_writer_stop(sd3_journal_t *self)
{
    if (!self->thread_started)
        return;
    pthread_mutex_lock(&self->mu);
    self->stop = true;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    pthread_join(self->thread, NULL);
    self->thread_started = false;
}

// Hands the first background failure over (once) to err.
static int
s_take_async_err(sd3_journal_t *self, sd3_err_t *err)
{
    int rc = self->async_err.code;
    if (rc != SD3_OK) {
        sd3_err_set(err, rc, "journal: an earlier checkpoint failed: %s", self->async_err.msg);
        sd3_err_clear(&self->async_err);
    }
    return rc;
}

int
sd3_journal_checkpoint(sd3_journal_t *self, const char *request_id, uint32_t attempt, uint32_t step,
                       const sd3_tensor_t *latent, const sd3_tensor_t *old_denoised, sd3_err_t *err)
{
    int rc;
    if ((rc = s_check_id(request_id, err)) != 0)
        return rc;
    size_t nbytes = 0;
    if (!latent || latent->dtype != SD3_F32 || latent->where != SD3_HOST || latent->ndim < 1 ||
        latent->ndim > 4 || !latent->data ||
        sd3_shape_numel(latent->ndim, latent->shape, &nbytes) != 0 ||
        sd3_size_mul(nbytes, sizeof(float), &nbytes) != 0 || nbytes == 0 ||
        nbytes > SD3_JOURNAL_MAX_LATENT)
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s' step %u: latent must be a "
                           "host F32 tensor of 1..4 dims and at most %u bytes",
                           request_id, step, SD3_JOURNAL_MAX_LATENT);
    if (old_denoised) {
        bool same = old_denoised->dtype == SD3_F32 && old_denoised->where == SD3_HOST &&
                    old_denoised->data && old_denoised->ndim == latent->ndim;
        for (int i = 0; same && i < latent->ndim; i++)
            same = old_denoised->shape[i] == latent->shape[i];
        if (!same)
            return sd3_err_set(err, SD3_EINVAL,
                               "journal: request '%s' step %u: old_denoised "
                               "must be host F32 of the latent's shape",
                               request_id, step);
    }
    // The checks a caller must hear about now (a read, no transaction: microseconds).
    sd3_journal_state_t state;
    bool needs_old = false;
    if ((rc = s_state_of(self, request_id, &state, &needs_old, err)) != 0)
        return rc;
    if (state != SD3_JOURNAL_QUEUED && state != SD3_JOURNAL_RUNNING)
        return sd3_err_set(err, SD3_EINVAL, "journal: no checkpoint for request '%s': it is %s",
                           request_id, sd3_journal_state_name(state));
    if (needs_old && step > 0 && !old_denoised)
        return sd3_err_set(err, SD3_EINVAL,
                           "journal: request '%s' step %u: DPM++ 2M needs the "
                           "previous denoised tensor to resume",
                           request_id, step);
    // Into the request's slot (replacing an older pending one) for the writer thread.
    pthread_mutex_lock(&self->mu);
    rc = s_take_async_err(self, err);
    s_slot_t *sl = NULL;
    int free_slot = -1;
    for (int i = 0; i < self->n_slots && !sl; i++) {
        if (self->slots[i].full && !strcmp(self->slots[i].id, request_id))
            sl = &self->slots[i];
        else if (!self->slots[i].full && free_slot < 0)
            free_slot = i;
    }
    if (sl && (sl->del || attempt < sl->attempt || (attempt == sl->attempt && step <= sl->step)))
        goto out; // older than the pending one: steps are idempotent
    if (!sl && free_slot >= 0)
        sl = &self->slots[free_slot];
    if (!sl) {
        s_slot_t *more = realloc(self->slots, sizeof *more * (size_t)(self->n_slots + 1));
        if (!more) {
            rc = sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
            goto out;
        }
        self->slots = more;
        sl = &self->slots[self->n_slots++];
        memset(sl, 0, sizeof *sl);
    }
    if (sl->cap < nbytes) {
        float *l = realloc(sl->latent, nbytes), *o = l ? realloc(sl->old, nbytes) : NULL;
        if (l)
            sl->latent = l;
        if (o)
            sl->old = o;
        if (!l || !o) {
            sl->full = false;
            rc = sd3_err_set(err, SD3_ENOMEM, "journal: request '%s': checkpoint of %zu bytes",
                             request_id, nbytes);
            goto out;
        }
        sl->cap = nbytes;
    }
    snprintf(sl->id, sizeof sl->id, "%s", request_id);
    sl->del = false;
    sl->attempt = attempt;
    sl->step = step;
    sl->ndim = latent->ndim;
    memcpy(sl->shape, latent->shape, sizeof(int64_t) * (size_t)latent->ndim);
    sl->nbytes = nbytes;
    memcpy(sl->latent, latent->data, nbytes);
    sl->has_old = old_denoised != NULL;
    if (old_denoised)
        memcpy(sl->old, old_denoised->data, nbytes);
    sl->full = true;
    sl->seq = ++self->seq;
    pthread_cond_signal(&self->cv);
out:
    pthread_mutex_unlock(&self->mu);
    return rc;
}

int
sd3_journal_flush(sd3_journal_t *self, sd3_err_t *err)
{
    pthread_mutex_lock(&self->mu);
    for (;;) {
        bool pending = self->writing;
        for (int i = 0; i < self->n_slots && !pending; i++)
            pending = self->slots[i].full;
        if (!pending)
            break;
        pthread_cond_wait(&self->idle, &self->mu);
    }
    int rc = s_take_async_err(self, err);
    pthread_mutex_unlock(&self->mu);
    return rc;
}

// An end replaces what is still pending for the request with the deletion of its row.
static void
s_enqueue_delete(sd3_journal_t *self, const char *request_id)
{
    if (!self->thread_started)
        return;
    pthread_mutex_lock(&self->mu);
    s_slot_t *sl = NULL;
    for (int i = 0; i < self->n_slots && !sl; i++)
        if (self->slots[i].full && !strcmp(self->slots[i].id, request_id))
            sl = &self->slots[i];
    for (int i = 0; i < self->n_slots && !sl; i++)
        if (!self->slots[i].full)
            sl = &self->slots[i];
    if (!sl) {
        s_slot_t *more = realloc(self->slots, sizeof *more * (size_t)(self->n_slots + 1));
        if (more) { // else prune deletes it
            self->slots = more;
            sl = &self->slots[self->n_slots++];
            memset(sl, 0, sizeof *sl);
        }
    }
    if (sl) {
        snprintf(sl->id, sizeof sl->id, "%s", request_id);
        sl->del = sl->full = true;
        sl->seq = ++self->seq;
        pthread_cond_signal(&self->cv);
    }
    pthread_mutex_unlock(&self->mu);
}

// ---- reading back ---------------------------------------------------------------------------

// Column i as a blob of at most cap bytes (NULL allowed when null_ok). SD3_EFORMAT else.
static int
s_col_blob(sqlite3_stmt *s, int i, size_t cap, bool null_ok, const char *request_id,
           const char *what, const void **data, size_t *len, sd3_err_t *err)
{
    int type = sqlite3_column_type(s, i);
    *data = NULL;
    *len = 0;
    if (type == SQLITE_NULL && null_ok)
        return 0;
    if (type != SQLITE_BLOB)
        return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': %s is not a blob", request_id,
                           what);
    int n = sqlite3_column_bytes(s, i);
    if (n < 0 || (size_t)n > cap)
        return sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': %s has %d bytes, at most %zu",
                           request_id, what, n, cap);
    *data = sqlite3_column_blob(s, i);
    *len = (size_t)n;
    if (n > 0 && !*data)
        return sd3_err_set(err, SD3_ENOMEM, "journal: request '%s': %s: out of memory", request_id,
                           what);
    return 0;
}

static int
s_col_int(sqlite3_stmt *s, int i, int64_t lo, int64_t hi, const char *request_id, const char *what,
          int64_t *out, sd3_err_t *err)
{
    sqlite3_int64 v = sqlite3_column_int64(s, i);
    if (sqlite3_column_type(s, i) != SQLITE_INTEGER || v < lo || v > hi)
        return sd3_err_set(err, SD3_EFORMAT,
                           "journal: request '%s': %s is not an integer in "
                           "[%lld, %lld]",
                           request_id, what, (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

// The checkpoint of request_id, if any: fresh tensors (old NULL when absent).
static int
s_load_ckpt(sd3_journal_t *self, const char *request_id, uint32_t *step, sd3_tensor_t **latent_p,
            sd3_tensor_t **old_p, sd3_err_t *err)
{
    sqlite3_stmt *s = self->st[S_GET_CKPT];
    int64_t v[7];
    const void *lat = NULL, *old = NULL;
    size_t nlat = 0, nold = 0, want = 0;
    int rc = 0;
    *step = 0;
    *latent_p = *old_p = NULL;
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    if (src == SQLITE_DONE)
        goto out;
    if (src != SQLITE_ROW) {
        rc = s_db_err(self, src, "read checkpoint", err);
        goto out;
    }
    static const char *const names[7] = {"checkpoint attempt", "checkpoint step", "checkpoint ndim",
                                         "latent dim 0",       "latent dim 1",    "latent dim 2",
                                         "latent dim 3"};
    static const int64_t hi[7] = {UINT32_MAX,    UINT32_MAX,   4, S_MAX_DIM_LEN, S_MAX_DIM_LEN,
                                  S_MAX_DIM_LEN, S_MAX_DIM_LEN};
    for (int i = 0; i < 7; i++)
        if ((rc = s_col_int(s, i, i == 2 || i >= 3 ? 1 : 0, hi[i], request_id, names[i], &v[i],
                            err)) != 0)
            goto out;
    int ndim = (int)v[2];
    if (sd3_shape_numel(ndim, &v[3], &want) != 0 || sd3_size_mul(want, 4, &want) != 0 ||
        want > SD3_JOURNAL_MAX_LATENT) {
        rc = sd3_err_set(err, SD3_EFORMAT, "journal: request '%s': latent shape too large",
                         request_id);
        goto out;
    }
    if ((rc = s_col_blob(s, 7, SD3_JOURNAL_MAX_LATENT, false, request_id, "latent", &lat, &nlat,
                         err)) != 0 ||
        (rc = s_col_blob(s, 8, SD3_JOURNAL_MAX_LATENT, true, request_id, "old_denoised", &old,
                         &nold, err)) != 0)
        goto out;
    if (nlat != want || (old && nold != want)) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "journal: request '%s': latent blob of %zu bytes "
                         "(old denoised %zu), the stored shape needs %zu",
                         request_id, nlat, nold, want);
        goto out;
    }
    if (sqlite3_column_type(s, 9) != SQLITE_INTEGER ||
        (uint64_t)sqlite3_column_int64(s, 9) != s_checksum(lat, nlat, old, nold)) {
        rc = sd3_err_set(err, SD3_EFORMAT,
                         "journal: request '%s': checkpoint of step %lld "
                         "fails its checksum",
                         request_id, (long long)v[1]);
        goto out;
    }
    *latent_p = sd3_tensor_new_err(SD3_F32, ndim, &v[3], "latent", err);
    if (old)
        *old_p = sd3_tensor_new_err(SD3_F32, ndim, &v[3], "old_denoised", err);
    if (!*latent_p || (old && !*old_p)) {
        rc = SD3_ENOMEM;
        sd3_tensor_destroy(latent_p);
        sd3_tensor_destroy(old_p);
        goto out;
    }
    memcpy((*latent_p)->data, lat, nlat);
    if (old)
        memcpy((*old_p)->data, old, nold);
    *step = (uint32_t)v[1];
out:
    s_done(s);
    return rc;
}

// The request row of request_id into *out (zeroed first); no checkpoint.
static int
s_get_row(sd3_journal_t *self, const char *request_id, sd3_journal_info_t *out, sd3_err_t *err)
{
    int rc = 0;
    memset(out, 0, sizeof *out);
    snprintf(out->request_id, sizeof out->request_id, "%s", request_id);
    sqlite3_stmt *s = self->st[S_GET];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    const void *p;
    size_t n;
    int64_t v = 0;
    if (src == SQLITE_DONE) {
        rc = sd3_err_set(err, SD3_ENOTFOUND, "journal: no request '%s'", request_id);
        goto out;
    }
    if (src != SQLITE_ROW) {
        rc = s_db_err(self, src, "read request", err);
        goto out;
    }
    if ((rc = s_col_blob(s, 1, SD3_WIRE_ROUTING_ID_MAX, false, request_id, "client id", &p, &n,
                         err)) != 0)
        goto out;
    if (n)
        memcpy(out->client_id, p, n);
    out->client_id_len = n;
    if ((rc = s_col_int(s, 3, 0, SD3_JOURNAL_STATE_COUNT - 1, request_id, "state", &v, err)))
        goto out;
    out->state = (sd3_journal_state_t)v;
    if ((rc =
             s_col_int(s, 4, INT64_MIN, INT64_MAX, request_id, "created", &out->created_ms, err)) ||
        (rc =
             s_col_int(s, 5, INT64_MIN, INT64_MAX, request_id, "updated", &out->updated_ms, err)) ||
        (rc = s_col_int(s, 6, 0, UINT32_MAX, request_id, "attempt", &v, err)))
        goto out;
    out->attempt = (uint32_t)v;
    if ((rc = s_col_int(s, 8, -1000, 0, request_id, "error code", &v, err)))
        goto out;
    out->error_code = (int)v;
    if (sqlite3_column_type(s, 9) == SQLITE_TEXT) {
        const unsigned char *t = sqlite3_column_text(s, 9);
        snprintf(out->error_msg, sizeof out->error_msg, "%s", t ? (const char *)t : "");
    }
    if ((rc = s_col_blob(s, 2, SD3_JOURNAL_MAX_REQUEST, false, request_id, "request", &p, &n,
                         err)) ||
        (rc = s_unpack_request(request_id, p, n, &out->request, &out->init_image, err)))
        goto out;
    if (out->state == SD3_JOURNAL_DONE) {
        if ((rc = s_col_blob(s, 7, SD3_JOURNAL_MAX_RESULT, false, request_id, "result", &p, &n,
                             err)))
            goto out;
        if (!(out->png = malloc(n ? n : 1))) {
            rc = sd3_err_set(err, SD3_ENOMEM, "journal: request '%s': result of %zu bytes",
                             request_id, n);
            goto out;
        }
        if (n)
            memcpy(out->png, p, n);
        out->png_size = n;
    }
out:
    s_done(s);
    return rc;
}

int
sd3_journal_get(sd3_journal_t *self, const char *request_id, sd3_journal_info_t *out,
                sd3_err_t *err)
{
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = s_check_id(request_id, err)) != 0 || (rc = s_get_row(self, request_id, out, err)))
        return rc;
    if (out->state != SD3_JOURNAL_QUEUED && out->state != SD3_JOURNAL_RUNNING)
        return 0;
    sqlite3_stmt *s = self->st[S_CKPT_STEP];
    sqlite3_bind_text(s, 1, request_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(s);
    int64_t step = 0;
    if (src == SQLITE_ROW)
        rc = s_col_int(s, 0, 0, UINT32_MAX, request_id, "checkpoint step", &step, err);
    else if (src != SQLITE_DONE)
        rc = s_db_err(self, src, "read checkpoint", err);
    s_done(s);
    out->step = (uint32_t)step;
    return rc;
}

void
sd3_journal_info_fini(sd3_journal_info_t *info)
{
    if (!info)
        return;
    free(info->png);
    info->png = NULL;
    info->png_size = 0;
    sd3_tensor_destroy(&info->init_image);
}

int
sd3_journal_recover(sd3_journal_t *self, sd3_journal_recover_fn fn, void *user, int *n_refused,
                    sd3_err_t *err)
{
    typedef char s_id_t[SD3_WIRE_ID_MAX];
    s_id_t *ids = NULL;
    size_t n_ids = 0, cap = 0;
    sd3_journal_info_t *info = NULL;
    int rc = 0, refused = 0;
    if (n_refused)
        *n_refused = 0;
    // Collect the ids first: the callback and the refusals write while we would be reading.
    sqlite3_stmt *s = self->st[S_LIST_LIVE];
    int src;
    while ((src = sqlite3_step(s)) == SQLITE_ROW) {
        if (n_ids == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            s_id_t *more = realloc(ids, ncap * sizeof *ids);
            if (!more) {
                s_done(s);
                rc = sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
                goto out;
            }
            ids = more;
            cap = ncap;
        }
        const unsigned char *t = sqlite3_column_text(s, 0);
        int len = sqlite3_column_bytes(s, 0);
        if (!t || len <= 0 || len >= SD3_WIRE_ID_MAX || (int)strlen((const char *)t) != len) {
            refused++; // no id we could name; it stays, and is counted on every recover
            continue;
        }
        memcpy(ids[n_ids++], t, (size_t)len + 1);
    }
    s_done(s);
    if (src != SQLITE_DONE) {
        rc = s_db_err(self, src, "list requests", err);
        goto out;
    }
    if (!(info = calloc(1, sizeof *info))) {
        rc = sd3_err_set(err, SD3_ENOMEM, "journal: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_ids; i++) {
        sd3_err_t e = {0};
        sd3_tensor_t *lat = NULL, *old = NULL;
        uint32_t step = 0;
        int lrc = s_get_row(self, ids[i], info, &e);
        if (lrc == 0)
            lrc = s_load_ckpt(self, ids[i], &step, &lat, &old, &e);
        if (lrc == SD3_EFORMAT) { // this row is bad: say so in it, and go on with the rest
            sd3_journal_info_fini(info);
            refused++;
            if ((rc = sd3_journal_fail(self, ids[i], SD3_EFORMAT, e.msg, err)) != 0)
                goto out;
            continue;
        }
        if (lrc != 0) {
            sd3_journal_info_fini(info);
            rc = sd3_err_set(err, lrc, "%s", e.msg);
            goto out;
        }
        sd3_journal_entry_t entry = {
            .request_id = info->request_id,
            .client_id = info->client_id,
            .client_id_len = info->client_id_len,
            .state = info->state,
            .attempt = info->attempt,
            .created_ms = info->created_ms,
            .request = &info->request,
            .init_image = info->init_image,
            .step = step,
            .latent = lat,
            .old_denoised = old,
        };
        rc = fn(user, &entry, err);
        sd3_tensor_destroy(&lat);
        sd3_tensor_destroy(&old);
        sd3_journal_info_fini(info);
        if (rc)
            goto out;
    }
out:
    if (n_refused)
        *n_refused = refused;
    free(info);
    free(ids);
    return rc;
}

// ---- prune, count ---------------------------------------------------------------------------

int
sd3_journal_prune(sd3_journal_t *self, int64_t before_ms, sd3_err_t *err)
{
    int rc;
    if ((rc = s_begin(self, S_SYNC_NORMAL, err)) != 0)
        return rc;
    // Checkpoints of ended requests the writer had not deleted yet (a crash came first).
    sqlite3_stmt *s = self->st[S_PRUNE_CKPT];
    int src = sqlite3_step(s);
    s_done(s);
    int removed = 0;
    if (src == SQLITE_DONE) {
        s = self->st[S_PRUNE];
        sqlite3_bind_int64(s, 1, before_ms);
        src = sqlite3_step(s);
        s_done(s);
        removed = sqlite3_changes(self->db);
    }
    if (src != SQLITE_DONE) {
        rc = s_db_err(self, src, "prune", err);
        s_rollback(self);
        return rc;
    }
    if ((rc = s_commit(self, err)) != 0)
        return rc;
    // Freed pages back to the file system (auto_vacuum=INCREMENTAL).
    if (removed > 0 && (rc = s_run(self, "PRAGMA incremental_vacuum", err)) != 0)
        return rc;
    return removed;
}

int64_t
sd3_journal_count(sd3_journal_t *self, sd3_journal_state_t state, sd3_err_t *err)
{
    bool all = state == SD3_JOURNAL_STATE_COUNT;
    if (!all && (unsigned)state > SD3_JOURNAL_STATE_COUNT)
        return sd3_err_set(err, SD3_EINVAL, "journal: state %d unknown", (int)state);
    sqlite3_stmt *s = self->st[all ? S_COUNT_ALL : S_COUNT_STATE];
    if (!all)
        sqlite3_bind_int(s, 1, (int)state);
    int src = sqlite3_step(s);
    int64_t n = src == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    s_done(s);
    if (src != SQLITE_ROW)
        return s_db_err(self, src, "count", err);
    return n;
}
