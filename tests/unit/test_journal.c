/*  test_journal - sd3_journal as the controller uses it: accept, start, checkpoint per step,
 *  finish / fail / cancel, get for a reconnecting client, recover after a restart, prune.
 *  Round trips are bit exact (request, init image, latent, old denoised, PNG). Then the
 *  refusals: a second controller on the same file, garbage and truncated files, a foreign
 *  SQLite file, and rows edited behind the journal's back (hostile blob sizes, shapes,
 *  checksums, states, request blobs) -> SD3_EFORMAT, never a crash. Last, the cost of one
 *  checkpoint at 64 px and 1024 px (printed: "checkpoint <side>px: ...").  */
#include "sd3_clock.h"
#include "sd3_journal.h"
#include "sd3_test.h"

#include <math.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char s_path[512];

static void
s_remove_db(const char *path)
{
    char p[600];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

static void
s_request(sd3_wire_generate_t *g, const char *prompt, sd3_wire_sampler_t sampler, uint64_t seed)
{
    memset(g, 0, sizeof *g);
    snprintf(g->prompt, sizeof g->prompt, "%s", prompt);
    snprintf(g->negative, sizeof g->negative, "blurry, ünïcode ✓");
    snprintf(g->model, sizeof g->model, "sd3-medium");
    g->width = 1024;
    g->height = 768;
    g->steps = 28;
    g->cfg = 4.5f;
    g->shift = 3.0f;
    g->seed = seed;
    g->sampler = sampler;
    g->slg_scale = 2.5f;
    g->n_slg_layers = 3;
    g->slg_layers[0] = 7;
    g->slg_layers[1] = 8;
    g->slg_layers[2] = 9;
    g->slg_start = 0.01f;
    g->slg_end = 0.2f;
    g->t5_len = 256;
    g->deadline_ms = 1700000000123ull;
}

static bool
s_same_request(const sd3_wire_generate_t *a, const sd3_wire_generate_t *b)
{
    return !strcmp(a->prompt, b->prompt) && !strcmp(a->negative, b->negative) &&
           !strcmp(a->model, b->model) && a->width == b->width && a->height == b->height &&
           a->steps == b->steps && a->cfg == b->cfg && a->shift == b->shift && a->seed == b->seed &&
           a->seed_random == b->seed_random && a->sampler == b->sampler &&
           a->slg_scale == b->slg_scale && a->n_slg_layers == b->n_slg_layers &&
           !memcmp(a->slg_layers, b->slg_layers, sizeof a->slg_layers) &&
           a->slg_start == b->slg_start && a->slg_end == b->slg_end && a->no_t5 == b->no_t5 &&
           a->t5_len == b->t5_len && a->strength == b->strength && a->deadline_ms == b->deadline_ms;
}

// A latent [1, 16, h, w] whose values depend on (seed, step), with NaN payloads and
// denormals in it: the round trip must be bit exact, not just equal as floats.
static sd3_tensor_t *
s_latent(int h, int w, unsigned long long seed, uint32_t step)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, h, w});
    unsigned long long st = seed * 1000003ull + step + 1;
    float *x = t->data;
    size_t n = (size_t)sd3_tensor_numel(t);
    for (size_t i = 0; i < n; i++)
        x[i] = sd3_test_randf(&st) * 3.0f;
    uint32_t nan = 0x7fc01234u, den = 0x00000123u;
    memcpy(&x[0], &nan, 4);
    memcpy(&x[n - 1], &den, 4);
    return t;
}

static bool
s_same_tensor(const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    if (!a || !b)
        return a == b;
    return a->dtype == b->dtype && a->ndim == b->ndim &&
           !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) &&
           sd3_tensor_nbytes(a) == sd3_tensor_nbytes(b) &&
           !memcmp(a->data, b->data, sd3_tensor_nbytes(a));
}

// ---- recover collects what it is handed ----------------------------------------------------

typedef struct {
    char id[SD3_WIRE_ID_MAX];
    sd3_journal_state_t state;
    uint32_t attempt, step;
    sd3_wire_generate_t req;
    sd3_tensor_t *init, *latent, *old;
    uint8_t client[8];
    size_t client_len;
} s_seen_t;

typedef struct {
    int n;
    s_seen_t e[16];
    int stop_after; // 0: never
} s_recovered_t;

static int
s_collect(void *user, const sd3_journal_entry_t *e, sd3_err_t *err)
{
    s_recovered_t *r = user;
    if (r->n >= 16)
        return sd3_err_set(err, SD3_EINTERNAL, "too many");
    s_seen_t *s = &r->e[r->n++];
    snprintf(s->id, sizeof s->id, "%s", e->request_id);
    s->state = e->state;
    s->attempt = e->attempt;
    s->step = e->step;
    s->req = *e->request;
    s->init = e->init_image ? sd3_tensor_clone(e->init_image) : NULL;
    s->latent = e->latent ? sd3_tensor_clone(e->latent) : NULL;
    s->old = e->old_denoised ? sd3_tensor_clone(e->old_denoised) : NULL;
    s->client_len = e->client_id_len < 8 ? e->client_id_len : 8;
    memcpy(s->client, e->client_id, s->client_len);
    if (r->stop_after && r->n == r->stop_after)
        return 42;
    return 0;
}

static void
s_recovered_fini(s_recovered_t *r)
{
    for (int i = 0; i < r->n; i++) {
        sd3_tensor_destroy(&r->e[i].init);
        sd3_tensor_destroy(&r->e[i].latent);
        sd3_tensor_destroy(&r->e[i].old);
    }
    memset(r, 0, sizeof *r);
}

// ---- the life of requests --------------------------------------------------------------------

static void
test_lifecycle(void)
{
    sd3_err_t err = {0};
    s_remove_db(s_path);
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    CHECK_MSG(j, "%s", err.msg);
    if (!j)
        return;
    sd3_wire_generate_t ga, gb, gc, gd;
    s_request(&ga, "a red fox in the snow", SD3_WIRE_SAMPLER_DPMPP_2M, 42);
    s_request(&gb, "img2img: a castle", SD3_WIRE_SAMPLER_EULER, 7);
    gb.strength = 0.6f;
    s_request(&gc, "to be cancelled", SD3_WIRE_SAMPLER_EULER, 1);
    s_request(&gd, "to fail", SD3_WIRE_SAMPLER_EULER, 2);
    sd3_tensor_t *init = sd3_tensor_new(SD3_U8, 3, (int64_t[]){48, 32, 3});
    for (size_t i = 0; i < sd3_tensor_nbytes(init); i++)
        ((uint8_t *)init->data)[i] = (uint8_t)(i * 31 + 7);
    const uint8_t client_a[] = {0, 'c', 'l', 0xff, 1}; // routing ids are binary
    CHECK(sd3_journal_accept(j, "req-a", client_a, sizeof client_a, &ga, NULL, &err) == 0);
    CHECK(sd3_journal_accept(j, "req-b", (const uint8_t *)"cb", 2, &gb, init, &err) == 0);
    CHECK(sd3_journal_accept(j, "req-c", NULL, 0, &gc, NULL, &err) == 0);
    CHECK(sd3_journal_accept(j, "req-d", NULL, 0, &gd, NULL, &err) == 0);
    CHECK_MSG(err.code == 0, "%s", err.msg);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_QUEUED, NULL) == 4);

    // refusals of accept
    sd3_err_clear(&err);
    CHECK(sd3_journal_accept(j, "req-a", NULL, 0, &ga, NULL, &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "already journalled (queued)"), "%s", err.msg);
    sd3_wire_generate_t bad = ga;
    bad.seed_random = true;
    sd3_err_clear(&err);
    CHECK(sd3_journal_accept(j, "req-x", NULL, 0, &bad, NULL, &err) == SD3_EINVAL);
    bad = ga;
    bad.sampler = SD3_WIRE_SAMPLER_DEFAULT;
    CHECK(sd3_journal_accept(j, "req-x", NULL, 0, &bad, NULL, NULL) == SD3_EINVAL);
    char long_id[80];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    CHECK(sd3_journal_accept(j, long_id, NULL, 0, &ga, NULL, NULL) == SD3_EINVAL);
    CHECK(sd3_journal_accept(j, "", NULL, 0, &ga, NULL, NULL) == SD3_EINVAL);
    sd3_tensor_t *f32img = sd3_tensor_new(SD3_F32, 3, (int64_t[]){4, 4, 3});
    CHECK(sd3_journal_accept(j, "req-x", NULL, 0, &gb, f32img, NULL) == SD3_EINVAL);
    sd3_tensor_destroy(&f32img);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_STATE_COUNT, NULL) == 4);

    // start and checkpoints
    sd3_err_clear(&err);
    CHECK(sd3_journal_start(j, "req-a", 1, &err) == 0);
    CHECK(sd3_journal_start(j, "nope", 1, NULL) == SD3_ENOTFOUND);
    sd3_tensor_t *lat[5], *old[5];
    for (int s = 0; s < 5; s++) {
        lat[s] = s_latent(8, 12, 1, (uint32_t)s);
        old[s] = s_latent(8, 12, 2, (uint32_t)s);
    }
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 1, lat[1], old[1], &err) == 0);
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 2, lat[2], old[2], &err) == 0);
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 3, lat[3], old[3], &err) == 0);
    CHECK_MSG(err.code == 0, "%s", err.msg);
    // A late duplicate of step 2 is dropped: step 3 stays.
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 2, lat[2], old[2], &err) == 0);
    // DPM++ 2M past step 0 without the previous denoised cannot resume bit-identically.
    sd3_err_clear(&err);
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 4, lat[4], NULL, &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "DPM++"), "%s", err.msg);
    // Euler request: the latent alone; img2img starts at a later step.
    CHECK(sd3_journal_checkpoint(j, "req-b", 0, 12, lat[4], NULL, NULL) == 0);
    // bad tensors
    sd3_tensor_t *odd = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 8, 13});
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 4, lat[4], odd, NULL) == SD3_EINVAL);
    sd3_tensor_destroy(&odd);
    sd3_tensor_t *i32 = sd3_tensor_new(SD3_I32, 4, (int64_t[]){1, 16, 8, 12});
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 4, i32, NULL, NULL) == SD3_EINVAL);
    sd3_tensor_destroy(&i32);
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 4, NULL, NULL, NULL) == SD3_EINVAL);
    CHECK(sd3_journal_checkpoint(j, "nope", 1, 4, lat[4], NULL, NULL) == SD3_ENOTFOUND);
    // Checkpoints are written in the background; flush waits for them.
    CHECK(sd3_journal_flush(j, &err) == 0);

    sd3_journal_info_t info;
    sd3_err_clear(&err);
    CHECK(sd3_journal_get(j, "req-a", &info, &err) == 0);
    CHECK(info.state == SD3_JOURNAL_RUNNING && info.attempt == 1 && info.step == 3);
    CHECK(info.client_id_len == sizeof client_a &&
          !memcmp(info.client_id, client_a, sizeof client_a));
    CHECK(s_same_request(&info.request, &ga));
    CHECK(!info.png && !info.init_image && info.error_code == 0);
    CHECK(info.created_ms > 1600000000000ll && info.updated_ms >= info.created_ms);
    sd3_journal_info_fini(&info);
    CHECK(sd3_journal_get(j, "req-b", &info, &err) == 0);
    CHECK(s_same_request(&info.request, &gb) && s_same_tensor(info.init_image, init));
    CHECK(info.state == SD3_JOURNAL_RUNNING && info.step == 12);
    sd3_journal_info_fini(&info);
    CHECK(sd3_journal_get(j, "nope", &info, NULL) == SD3_ENOTFOUND);
    sd3_journal_info_fini(&info);

    // cancel and fail
    CHECK(sd3_journal_cancel(j, "req-c", &err) == 0);
    CHECK(sd3_journal_fail(j, "req-d", SD3_EIO, "stage mmdit-1 died", &err) == 0);
    sd3_err_clear(&err);
    CHECK(sd3_journal_cancel(j, "req-d", &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "failed already"), "%s", err.msg);
    CHECK(sd3_journal_checkpoint(j, "req-c", 0, 5, lat[4], NULL, NULL) == SD3_EINVAL);
    CHECK(sd3_journal_get(j, "req-d", &info, NULL) == 0);
    CHECK(info.state == SD3_JOURNAL_FAILED && info.error_code == SD3_EIO &&
          !strcmp(info.error_msg, "stage mmdit-1 died"));
    sd3_journal_info_fini(&info);
    CHECK(sd3_journal_get(j, "req-c", &info, NULL) == 0);
    CHECK(info.state == SD3_JOURNAL_CANCELLED && info.error_code == SD3_ECANCELED);
    sd3_journal_info_fini(&info);

    // Restart: everything is still there, recover hands over the live ones in order.
    sd3_journal_destroy(&j);
    CHECK(j == NULL);
    sd3_journal_destroy(&j); // NULL-safe
    CHECK_MSG((j = sd3_journal_open(s_path, &err)) != NULL, "%s", err.msg);
    if (!j)
        goto out;
    s_recovered_t r = {0};
    int refused = -1;
    CHECK(sd3_journal_recover(j, s_collect, &r, &refused, &err) == 0);
    CHECK(refused == 0 && r.n == 2);
    if (r.n == 2) {
        CHECK(!strcmp(r.e[0].id, "req-a") && !strcmp(r.e[1].id, "req-b"));
        CHECK(r.e[0].state == SD3_JOURNAL_RUNNING && r.e[0].attempt == 1 && r.e[0].step == 3);
        CHECK(s_same_tensor(r.e[0].latent, lat[3]) && s_same_tensor(r.e[0].old, old[3]));
        CHECK(s_same_request(&r.e[0].req, &ga));
        CHECK(r.e[0].client_len == 5 && !memcmp(r.e[0].client, client_a, 5));
        CHECK(r.e[1].step == 12 && s_same_tensor(r.e[1].latent, lat[4]) && !r.e[1].old);
        CHECK(s_same_tensor(r.e[1].init, init));
    }
    s_recovered_fini(&r);
    // The callback's non-zero return stops the walk.
    r.stop_after = 1;
    CHECK(sd3_journal_recover(j, s_collect, &r, NULL, NULL) == 42 && r.n == 1);
    s_recovered_fini(&r);

    // A resume as attempt 2 from step 0 (no usable state) replaces the step-3 checkpoint.
    CHECK(sd3_journal_start(j, "req-a", 2, NULL) == 0);
    CHECK(sd3_journal_checkpoint(j, "req-a", 2, 1, lat[0], old[0], &err) == 0);
    CHECK(sd3_journal_flush(j, &err) == 0);
    CHECK(sd3_journal_recover(j, s_collect, &r, NULL, NULL) == 0 && r.n == 2);
    CHECK(r.e[0].attempt == 2 && r.e[0].step == 1 && s_same_tensor(r.e[0].latent, lat[0]));
    s_recovered_fini(&r);
    // A straggler of attempt 1 is dropped.
    CHECK(sd3_journal_checkpoint(j, "req-a", 1, 4, lat[4], old[4], &err) == 0);
    CHECK(sd3_journal_flush(j, &err) == 0);
    CHECK(sd3_journal_get(j, "req-a", &info, NULL) == 0 && info.step == 1 && info.attempt == 2);
    sd3_journal_info_fini(&info);

    // finish: the PNG comes back bit exact; the checkpoint is gone.
    uint8_t png[3000];
    for (size_t i = 0; i < sizeof png; i++)
        png[i] = (uint8_t)(i ^ (i >> 3));
    CHECK(sd3_journal_finish(j, "req-a", png, sizeof png, &err) == 0);
    CHECK(sd3_journal_finish(j, "req-a", png, sizeof png, NULL) == SD3_EINVAL);
    CHECK(sd3_journal_finish(j, "nope", png, sizeof png, NULL) == SD3_ENOTFOUND);
    CHECK(sd3_journal_get(j, "req-a", &info, NULL) == 0);
    CHECK(info.state == SD3_JOURNAL_DONE && info.png_size == sizeof png && info.png &&
          !memcmp(info.png, png, sizeof png) && info.step == 0);
    sd3_journal_info_fini(&info);
    CHECK(sd3_journal_recover(j, s_collect, &r, NULL, NULL) == 0 && r.n == 1);
    CHECK(r.n == 1 && !strcmp(r.e[0].id, "req-b"));
    s_recovered_fini(&r);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_DONE, NULL) == 1);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_RUNNING, NULL) == 1);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_FAILED, NULL) == 1);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_CANCELLED, NULL) == 1);

    // A second controller on the same file is refused while the first holds it.
    sd3_err_clear(&err);
    sd3_journal_t *j2 = sd3_journal_open(s_path, &err);
    CHECK_MSG(!j2 && err.code == SD3_EIO, "code %d: %s", err.code, err.msg);
    sd3_journal_destroy(&j2);

    // prune: nothing is old enough yet; then every ended request goes, the live one stays.
    CHECK(sd3_journal_prune(j, sd3_unix_ms() - 3600 * 1000, NULL) == 0);
    CHECK(sd3_journal_prune(j, sd3_unix_ms() + 1000, NULL) == 3);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_STATE_COUNT, NULL) == 1);
    CHECK(sd3_journal_get(j, "req-a", &info, NULL) == SD3_ENOTFOUND);
    sd3_journal_info_fini(&info);
    CHECK(sd3_journal_get(j, "req-b", &info, NULL) == 0 && info.step == 12);
    sd3_journal_info_fini(&info);
    // The id of a pruned request may be used again.
    CHECK(sd3_journal_accept(j, "req-a", NULL, 0, &ga, NULL, NULL) == 0);
    sd3_journal_destroy(&j);
    // Only the live request's checkpoint row is left (ends delete theirs in the background).
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    sqlite3_open(s_path, &db);
    sqlite3_prepare_v2(db, "SELECT group_concat(id) FROM checkpoints", -1, &q, NULL);
    CHECK(sqlite3_step(q) == SQLITE_ROW);
    const unsigned char *left = sqlite3_column_text(q, 0);
    CHECK_MSG(left && !strcmp((const char *)left, "req-b"), "%s", left ? (char *)left : "-");
    sqlite3_finalize(q);
    sqlite3_close(db);
out:
    for (int s = 0; s < 5; s++) {
        sd3_tensor_destroy(&lat[s]);
        sd3_tensor_destroy(&old[s]);
    }
    sd3_tensor_destroy(&init);
}

// Ends racing the writer thread: checkpoints handed over and the request finished or
// cancelled at once, with no flush between. The end wins; no checkpoint row survives it.
static void
test_end_while_pending(void)
{
    sd3_err_t err = {0};
    s_remove_db(s_path);
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    CHECK_MSG(j, "%s", err.msg);
    if (!j)
        return;
    sd3_tensor_t *lat = s_latent(64, 64, 3, 0);
    uint8_t png[64] = {9, 8, 7};
    char id[32];
    for (int k = 0; k < 24; k++) {
        sd3_wire_generate_t g;
        s_request(&g, "race", SD3_WIRE_SAMPLER_EULER, (uint64_t)k);
        snprintf(id, sizeof id, "race-%d", k);
        CHECK(sd3_journal_accept(j, id, NULL, 0, &g, NULL, &err) == 0);
        for (uint32_t s = 1; s <= 4; s++)
            CHECK(sd3_journal_checkpoint(j, id, 0, s, lat, NULL, &err) == 0);
        if (k % 3 == 2)
            continue; // stays live
        int rc = k % 3 ? sd3_journal_cancel(j, id, &err) : sd3_journal_finish(j, id, png, 3, &err);
        CHECK_MSG(rc == 0, "%s", err.msg);
        // A straggler after the end is refused, not written.
        CHECK(sd3_journal_checkpoint(j, id, 0, 5, lat, NULL, NULL) == SD3_EINVAL);
    }
    CHECK_MSG(sd3_journal_flush(j, &err) == 0, "%s", err.msg);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_DONE, NULL) == 8);
    CHECK(sd3_journal_count(j, SD3_JOURNAL_CANCELLED, NULL) == 8);
    s_recovered_t r = {0};
    CHECK(sd3_journal_recover(j, s_collect, &r, NULL, &err) == 0 && r.n == 8);
    for (int i = 0; i < r.n; i++)
        CHECK(r.e[i].step == 4 && s_same_tensor(r.e[i].latent, lat));
    s_recovered_fini(&r);
    sd3_journal_destroy(&j);
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    sqlite3_open(s_path, &db);
    sqlite3_prepare_v2(db, "SELECT count(*) FROM checkpoints", -1, &q, NULL);
    CHECK(sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 8);
    sqlite3_finalize(q);
    sqlite3_close(db);
    sd3_tensor_destroy(&lat);
}

// ---- refusals of bad files --------------------------------------------------------------------

static void
s_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
}

static void
test_bad_files(void)
{
    char path[600];
    sd3_err_t err = {0};
    // garbage
    snprintf(path, sizeof path, "%s.garbage", s_path);
    s_remove_db(path);
    char junk[8192];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 7 + 1);
    s_write_file(path, junk, sizeof junk);
    sd3_journal_t *j = sd3_journal_open(path, &err);
    CHECK_MSG(!j && err.code == SD3_EFORMAT, "garbage: code %d: %s", err.code, err.msg);
    s_remove_db(path);

    // a valid SQLite file of someone else
    sqlite3 *db = NULL;
    sqlite3_open(path, &db);
    sqlite3_exec(db, "CREATE TABLE t(x); INSERT INTO t VALUES(1);", NULL, NULL, NULL);
    sqlite3_close(db);
    sd3_err_clear(&err);
    j = sd3_journal_open(path, &err);
    CHECK_MSG(!j && err.code == SD3_EFORMAT && strstr(err.msg, "not an sd3d journal"),
              "foreign: code %d: %s", err.code, err.msg);
    s_remove_db(path);

    // a journal with data, cut in half (checkpointed into the main file first)
    sd3_wire_generate_t g;
    s_request(&g, "truncate me", SD3_WIRE_SAMPLER_EULER, 3);
    j = sd3_journal_open(path, NULL);
    CHECK(j != NULL);
    sd3_tensor_t *lat = s_latent(64, 64, 9, 1);
    char id[32];
    for (int i = 0; j && i < 8; i++) {
        snprintf(id, sizeof id, "t%d", i);
        sd3_journal_accept(j, id, NULL, 0, &g, NULL, NULL);
        sd3_journal_checkpoint(j, id, 0, 1, lat, NULL, NULL);
    }
    sd3_journal_destroy(&j); // the last close folds the WAL into the file
    sd3_tensor_destroy(&lat);
    FILE *f = fopen(path, "rb");
    long size = 0;
    char *buf = NULL;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        fseek(f, 0, SEEK_SET);
        buf = malloc((size_t)size);
        if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size)
            size = 0;
        fclose(f);
    }
    CHECK(size > 100000 && buf);
    if (buf && size > 100000) {
        s_remove_db(path);
        s_write_file(path, buf, (size_t)size / 2);
        sd3_err_clear(&err);
        j = sd3_journal_open(path, &err);
        CHECK_MSG(!j && err.code == SD3_EFORMAT, "truncated: code %d: %s", err.code, err.msg);
        sd3_journal_destroy(&j);
        // the same file with pages overwritten in the middle
        memset(buf + 4096 * 3, 0xA5, 4096 * 4);
        s_remove_db(path);
        s_write_file(path, buf, (size_t)size);
        sd3_err_clear(&err);
        j = sd3_journal_open(path, &err);
        CHECK_MSG(!j && err.code == SD3_EFORMAT, "smashed: code %d: %s", err.code, err.msg);
        sd3_journal_destroy(&j);
    }
    free(buf);
    s_remove_db(path);
    sd3_err_clear(&err);
    j = sd3_journal_open("/nonexistent-dir/x/journal.db", &err);
    CHECK_MSG(!j && err.code == SD3_EIO, "missing dir: code %d: %s", err.code, err.msg);
}

// Edits one journal row behind its back (the journal closed), then checks that get and
// recover refuse it with SD3_EFORMAT and that recover marks it failed and goes on.
static void
s_tamper(const char *sql, const char *victim, const char *want_in_msg, bool get_refuses)
{
    sd3_err_t err = {0};
    sd3_wire_generate_t g;
    s_request(&g, "hostile", SD3_WIRE_SAMPLER_DPMPP_2M, 5);
    s_remove_db(s_path);
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    CHECK(j);
    if (!j)
        return;
    sd3_tensor_t *lat = s_latent(8, 8, 4, 2), *old = s_latent(8, 8, 5, 2);
    CHECK(sd3_journal_accept(j, "good-1", NULL, 0, &g, NULL, &err) == 0);
    CHECK(sd3_journal_accept(j, "victim", NULL, 0, &g, NULL, &err) == 0);
    CHECK(sd3_journal_accept(j, "good-2", NULL, 0, &g, NULL, &err) == 0);
    CHECK(sd3_journal_checkpoint(j, "victim", 0, 2, lat, old, &err) == 0);
    CHECK(sd3_journal_checkpoint(j, "good-2", 0, 2, lat, old, &err) == 0);
    sd3_journal_destroy(&j);
    sqlite3 *db = NULL;
    sqlite3_open(s_path, &db);
    char *emsg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &emsg);
    CHECK_MSG(rc == SQLITE_OK, "%s: %s", sql, emsg ? emsg : "");
    sqlite3_free(emsg);
    sqlite3_close(db);

    sd3_err_clear(&err);
    j = sd3_journal_open(s_path, &err);
    CHECK_MSG(j, "%s: %s", sql, err.msg);
    if (j) {
        sd3_journal_info_t info;
        sd3_err_clear(&err);
        rc = sd3_journal_get(j, victim, &info, &err);
        if (get_refuses)
            CHECK_MSG(rc == SD3_EFORMAT && strstr(err.msg, want_in_msg), "%s: get: %d %s", sql, rc,
                      err.msg);
        sd3_journal_info_fini(&info);
        s_recovered_t r = {0};
        int refused = 0;
        sd3_err_clear(&err);
        rc = sd3_journal_recover(j, s_collect, &r, &refused, &err);
        CHECK_MSG(rc == 0 && refused == 1 && r.n == 2, "%s: recover rc %d refused %d n %d: %s", sql,
                  rc, refused, r.n, err.msg);
        if (r.n == 2)
            CHECK(!strcmp(r.e[0].id, "good-1") && !strcmp(r.e[1].id, "good-2") &&
                  s_same_tensor(r.e[1].latent, lat) && s_same_tensor(r.e[1].old, old));
        s_recovered_fini(&r);
        // The refused row now says why, for a client that asks.
        if (sd3_journal_get(j, victim, &info, &err) == 0)
            CHECK_MSG(info.state == SD3_JOURNAL_FAILED && info.error_code == SD3_EFORMAT &&
                          strstr(info.error_msg, want_in_msg),
                      "%s: state %d code %d msg %s", sql, info.state, info.error_code,
                      info.error_msg);
        sd3_journal_info_fini(&info);
        CHECK(sd3_journal_recover(j, s_collect, &r, &refused, NULL) == 0 && refused == 0);
        s_recovered_fini(&r);
        sd3_journal_destroy(&j);
    }
    sd3_tensor_destroy(&lat);
    sd3_tensor_destroy(&old);
}

static void
test_hostile_rows(void)
{
    // checkpoint sizes and shapes
    s_tamper("UPDATE checkpoints SET d3 = 100000 WHERE id = 'victim'", "victim", "latent", false);
    s_tamper("UPDATE checkpoints SET d2 = 16777216, d3 = 16777216 WHERE id = 'victim'", "victim",
             "too large", false);
    s_tamper("UPDATE checkpoints SET ndim = 9 WHERE id = 'victim'", "victim", "ndim", false);
    s_tamper("UPDATE checkpoints SET d1 = -16 WHERE id = 'victim'", "victim", "dim 1", false);
    s_tamper("UPDATE checkpoints SET ndim = 'four' WHERE id = 'victim'", "victim", "ndim", false);
    s_tamper("UPDATE checkpoints SET latent = x'0011' WHERE id = 'victim'", "victim", "needs",
             false);
    s_tamper("UPDATE checkpoints SET latent = zeroblob(4096) WHERE id = 'victim'", "victim",
             "checksum", false);
    s_tamper("UPDATE checkpoints SET old = zeroblob(8) WHERE id = 'victim'", "victim", "needs",
             false);
    s_tamper("UPDATE checkpoints SET latent = 'text' WHERE id = 'victim'", "victim", "not a blob",
             false);
    s_tamper("UPDATE checkpoints SET step = -3 WHERE id = 'victim'", "victim", "step", true);
    // request rows
    s_tamper("UPDATE requests SET request = x'00' WHERE id = 'victim'", "victim", "header", true);
    s_tamper("UPDATE requests SET request = x'53443341524551310100000000FFFFFFFFFFFFFF' "
             "WHERE id = 'victim'",
             "victim", "header", true);
    s_tamper("UPDATE requests SET request = x'5344334A524551310100000000FFFFFFFFFFFFFF' "
             "WHERE id = 'victim'",
             "victim", "claims", true);
    s_tamper("UPDATE requests SET request = x'5344334A5245513101000000030000000000000001FFFF' "
             "WHERE id = 'victim'",
             "victim", "journal: request 'victim'", true);
    s_tamper("UPDATE requests SET request = (SELECT request FROM requests WHERE id = 'good-1') "
             "WHERE id = 'victim'",
             "victim", "for 'good-1'", true);
    s_tamper("UPDATE requests SET client = zeroblob(100000) WHERE id = 'victim'", "victim",
             "client id", true);
    s_tamper("UPDATE requests SET attempt = 'x' WHERE id = 'victim'", "victim", "attempt", true);
    s_tamper("UPDATE requests SET error_code = 5 WHERE id = 'victim'", "victim", "error code",
             true);
    // Flip one byte of the stored envelope: the protobuf parse or its bounds catch it, or it
    // still parses as another valid request; either way no crash. Exercise every offset.
    sd3_err_t err = {0};
    sd3_wire_generate_t g;
    s_request(&g, "flip", SD3_WIRE_SAMPLER_EULER, 5);
    s_remove_db(s_path);
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    CHECK(j && sd3_journal_accept(j, "f", NULL, 0, &g, NULL, &err) == 0);
    sd3_journal_destroy(&j);
    sqlite3 *db = NULL;
    sqlite3_open(s_path, &db);
    sqlite3_stmt *rd = NULL, *wr = NULL;
    sqlite3_prepare_v2(db, "SELECT request FROM requests WHERE id = 'f'", -1, &rd, NULL);
    sqlite3_step(rd);
    int n = sqlite3_column_bytes(rd, 0);
    uint8_t *orig = malloc((size_t)n), *mut = malloc((size_t)n);
    memcpy(orig, sqlite3_column_blob(rd, 0), (size_t)n);
    sqlite3_finalize(rd);
    sqlite3_close(db);
    int refused_total = 0;
    // The journal stays open: a second SQLite connection edits the row under it (WAL lets
    // it; the journal's flock binds only journals).
    j = sd3_journal_open(s_path, &err);
    sqlite3_open(s_path, &db);
    sqlite3_busy_timeout(db, 2000);
    sqlite3_prepare_v2(db, "UPDATE requests SET request = ?1, state = 0 WHERE id = 'f'", -1, &wr,
                       NULL);
    CHECK(j && wr);
    for (int off = 0; j && wr && off < n; off++) {
        memcpy(mut, orig, (size_t)n);
        mut[off] ^= (uint8_t)(0x5A + off);
        sqlite3_bind_blob(wr, 1, mut, n, SQLITE_STATIC);
        CHECK(sqlite3_step(wr) == SQLITE_DONE);
        sqlite3_reset(wr);
        sd3_journal_info_t info;
        int rc = sd3_journal_get(j, "f", &info, NULL);
        CHECK(rc == 0 || rc == SD3_EFORMAT);
        refused_total += rc != 0;
        sd3_journal_info_fini(&info);
    }
    sqlite3_finalize(wr);
    sqlite3_close(db);
    sd3_journal_destroy(&j);
    printf("request blob: %d of %d single-byte flips refused with SD3_EFORMAT\n", refused_total, n);
    CHECK(refused_total > n / 10);
    free(orig);
    free(mut);
}

// ---- cost of a checkpoint -----------------------------------------------------------------------

// Checkpoints of one DPM++ 2M request at px x px (latent + old denoised per step, as a
// 28-step run makes them). "call": what the step loop pays; "written": call + flush, the
// whole cost of one checkpoint reaching the WAL (paid by the writer thread).
static void
s_bench(int px, int steps)
{
    sd3_err_t err = {0};
    char path[600];
    snprintf(path, sizeof path, "%s.bench", s_path);
    s_remove_db(path);
    sd3_journal_t *j = sd3_journal_open(path, &err);
    CHECK_MSG(j, "%s", err.msg);
    if (!j)
        return;
    sd3_wire_generate_t g;
    s_request(&g, "bench", SD3_WIRE_SAMPLER_DPMPP_2M, 1);
    double t0 = sd3_now_s();
    CHECK(sd3_journal_accept(j, "b", NULL, 0, &g, NULL, &err) == 0);
    double t_accept = sd3_now_s() - t0;
    sd3_tensor_t *lat = s_latent(px / 8, px / 8, 1, 0), *old = s_latent(px / 8, px / 8, 2, 0);
    double call = 0, call_max = 0, wrote = 0, wrote_max = 0;
    for (int s = 1; s <= steps; s++) {
        ((float *)lat->data)[1] = (float)s;
        double t = sd3_now_s();
        CHECK(sd3_journal_checkpoint(j, "b", 1, (uint32_t)s, lat, old, &err) == 0);
        double tc = sd3_now_s() - t;
        CHECK(sd3_journal_flush(j, &err) == 0);
        double tw = sd3_now_s() - t;
        if (getenv("SD3_JOURNAL_VERBOSE"))
            printf("  step %d: call %.3f ms, written %.3f ms\n", s, tc * 1e3, tw * 1e3);
        call += tc;
        wrote += tw;
        call_max = tc > call_max ? tc : call_max;
        wrote_max = tw > wrote_max ? tw : wrote_max;
    }
    t0 = sd3_now_s();
    uint8_t png[1000] = {1};
    CHECK(sd3_journal_finish(j, "b", png, sizeof png, &err) == 0);
    double t_finish = sd3_now_s() - t0;
    printf("checkpoint %dpx (latent %zu KiB + old denoised), %d steps: call mean %.3f ms max "
           "%.3f ms; written mean %.3f ms max %.3f ms; accept %.3f ms, finish %.3f ms\n",
           px, sd3_tensor_nbytes(lat) >> 10, steps, call / steps * 1e3, call_max * 1e3,
           wrote / steps * 1e3, wrote_max * 1e3, t_accept * 1e3, t_finish * 1e3);
    sd3_tensor_destroy(&lat);
    sd3_tensor_destroy(&old);
    sd3_journal_destroy(&j);
    s_remove_db(path);
}

int
main(void)
{
    snprintf(s_path, sizeof s_path, "%s/journal.db", sd3_test_tmpdir());
    test_lifecycle();
    test_end_while_pending();
    test_bad_files();
    test_hostile_rows();
    s_bench(64, 28);
    s_bench(1024, 28);
    s_remove_db(s_path);
    rmdir(sd3_test_tmpdir());
    return TEST_RESULT();
}
