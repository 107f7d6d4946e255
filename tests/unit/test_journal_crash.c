/*  test_journal_crash - the journal survives SIGKILL at any moment
 *
 *  Rounds on one journal file: a child process opens it, runs recover (as a restarted
 *  controller would), then accepts requests and checkpoints their steps in a tight loop,
 *  finishing, failing or leaving running some of them, and after each call returns it
 *  reports the call on a pipe. The parent kills it with SIGKILL a random 5..250 ms after its
 *  first report, reopens the journal and checks:
 *    - every request whose accept returned is there, with its request bit exact;
 *    - its stored checkpoint lies between the last step a returned sd3_journal_flush
 *      covered and the last step handed over (or the one after, when the kill cut that
 *      call): checkpoints are written in the background and may trail; never torn: latent
 *      and old denoised are the exact bytes of the stored step;
 *    - a finish / fail that returned is there (PNG bit exact), and recover lists exactly
 *      the live requests in acceptance order.
 *  Bounded: 12 rounds, at most about 3 s of child run time (3 s cap per round).  */
#include "sd3_journal.h"
#include "sd3_test.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_ROUNDS   12
#define S_MAX_REQS 4096
#define S_STEPS    6

enum { R_ACCEPT = 1, R_CKPT, R_FLUSH, R_FINISH, R_FAIL };

typedef struct {
    uint8_t kind;
    uint16_t round;
    uint16_t req;
    uint32_t step;
} s_rec_t;

// What the parent knows per request of a round from the child's reports.
typedef struct {
    bool accepted, ended;
    uint8_t end_kind;
    uint32_t step;    // last checkpoint step handed over (the call returned)
    uint32_t durable; // last step a returned flush covered
} s_known_t;

static char s_path[512];

static void
s_id(char *buf, size_t cap, int round, int req)
{
    snprintf(buf, cap, "r%02d-q%04d", round, req);
}

// Request k of a round: DPM++ 2M for even k (old denoised checkpointed), Euler for odd.
// Latents alternate between 64 px and 512 px so kills land inside big writes too.
static void
s_request(sd3_wire_generate_t *g, int round, int k)
{
    memset(g, 0, sizeof *g);
    snprintf(g->prompt, sizeof g->prompt, "crash round %d request %d", round, k);
    g->width = g->height = (k % 3 == 0) ? 512 : 64;
    g->steps = S_STEPS;
    g->cfg = 4.5f;
    g->shift = 3.0f;
    g->seed = (uint64_t)round * 100000u + (uint64_t)k;
    g->sampler = (k % 2 == 0) ? SD3_WIRE_SAMPLER_DPMPP_2M : SD3_WIRE_SAMPLER_EULER;
}

static void
s_fill(sd3_tensor_t *t, int round, int k, uint32_t step, int which)
{
    unsigned long long st = ((unsigned long long)round << 40) ^ ((unsigned long long)k << 20) ^
                            ((unsigned long long)step << 4) ^ (unsigned long long)which ^ 0x1234;
    float *x = t->data;
    size_t n = (size_t)sd3_tensor_numel(t);
    for (size_t i = 0; i < n; i++)
        x[i] = sd3_test_randf(&st);
}

static sd3_tensor_t *
s_expected(int round, int k, uint32_t step, int which)
{
    int side = ((k % 3 == 0) ? 512 : 64) / 8;
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, side, side});
    s_fill(t, round, k, step, which);
    return t;
}

static void
s_png(uint8_t *png, size_t n, int round, int k)
{
    for (size_t i = 0; i < n; i++)
        png[i] = (uint8_t)(i * 13 + (size_t)round * 7 + (size_t)k);
}

static void
s_report(int fd, uint8_t kind, int round, int req, uint32_t step)
{
    s_rec_t r = {kind, (uint16_t)round, (uint16_t)req, step};
    ssize_t n;
    do
        n = write(fd, &r, sizeof r);
    while (n < 0 && errno == EINTR);
}

static int
s_count_live(void *user, const sd3_journal_entry_t *e, sd3_err_t *err)
{
    (void)e;
    (void)err;
    (*(int *)user)++;
    return 0;
}

// The child: a controller that never stops. Exit code 2 on a journal error.
static void
s_child(int round, int fd)
{
    sd3_err_t err = {0};
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    if (!j) {
        fprintf(stderr, "child: %s\n", err.msg);
        _exit(2);
    }
    int live = 0;
    if (sd3_journal_recover(j, s_count_live, &live, NULL, &err) != 0) {
        fprintf(stderr, "child: recover: %s\n", err.msg);
        _exit(2);
    }
    sd3_tensor_t *big = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 64, 64});
    sd3_tensor_t *bigo = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 64, 64});
    sd3_tensor_t *small = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 8, 8});
    sd3_tensor_t *smallo = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 8, 8});
    uint8_t png[5000];
    for (int k = 0; k < S_MAX_REQS; k++) {
        char id[32];
        sd3_wire_generate_t g;
        s_id(id, sizeof id, round, k);
        s_request(&g, round, k);
        uint8_t client[3] = {(uint8_t)round, (uint8_t)k, 0xEE};
        if (sd3_journal_accept(j, id, client, sizeof client, &g, NULL, &err) != 0)
            goto fail;
        s_report(fd, R_ACCEPT, round, k, 0);
        if (sd3_journal_start(j, id, 1, &err) != 0)
            goto fail;
        sd3_tensor_t *lat = k % 3 == 0 ? big : small, *old = k % 3 == 0 ? bigo : smallo;
        int last = k % 5 == 4 ? S_STEPS / 2 : S_STEPS; // some are left running
        for (uint32_t s = 1; s <= (uint32_t)last; s++) {
            s_fill(lat, round, k, s, 0);
            s_fill(old, round, k, s, 1);
            if (sd3_journal_checkpoint(j, id, 1, s, lat, k % 2 == 0 ? old : NULL, &err) != 0)
                goto fail;
            s_report(fd, R_CKPT, round, k, s);
        }
        if (sd3_journal_flush(j, &err) != 0)
            goto fail;
        s_report(fd, R_FLUSH, round, k, (uint32_t)last);
        if (k % 5 == 4)
            continue;
        if (k % 7 == 3) {
            if (sd3_journal_fail(j, id, SD3_EIO, "stage died", &err) != 0)
                goto fail;
            s_report(fd, R_FAIL, round, k, 0);
        } else if (k % 5 != 2) {
            s_png(png, sizeof png, round, k);
            if (sd3_journal_finish(j, id, png, sizeof png, &err) != 0)
                goto fail;
            s_report(fd, R_FINISH, round, k, 0);
        } // k % 5 == 2: left running at its last step
    }
    // Ran out of requests before the kill: fine, wait for it.
    for (;;)
        pause();
fail:
    fprintf(stderr, "child: %s\n", err.msg);
    _exit(2);
}

typedef struct {
    int n;
    char ids[256][SD3_WIRE_ID_MAX];
} s_live_t;

static int
s_list_live(void *user, const sd3_journal_entry_t *e, sd3_err_t *err)
{
    s_live_t *l = user;
    if (l->n >= 256)
        return sd3_err_set(err, SD3_EINTERNAL, "too many live requests");
    snprintf(l->ids[l->n++], SD3_WIRE_ID_MAX, "%s", e->request_id);
    // Every live request comes with a checkpoint that passed the checksum, or none.
    if (e->latent && e->step == 0)
        return sd3_err_set(err, SD3_EINTERNAL, "%s: checkpoint of step 0", e->request_id);
    return 0;
}

// recover callback: parses the id back to (round, k) and compares latent and old denoised
// with the bytes of that step. user: int[2] {bad, checked}.
static int
s_bytes(void *user, const sd3_journal_entry_t *e, sd3_err_t *err)
{
    (void)err;
    int *b = user;
    int r = -1, k = -1;
    if (sscanf(e->request_id, "r%d-q%d", &r, &k) != 2 || !e->latent)
        return 0;
    sd3_tensor_t *want = s_expected(r, k, e->step, 0);
    bool ok = sd3_tensor_nbytes(want) == sd3_tensor_nbytes(e->latent) &&
              !memcmp(want->data, e->latent->data, sd3_tensor_nbytes(want));
    if (k % 2 == 0) {
        s_fill(want, r, k, e->step, 1);
        ok = ok && e->old_denoised &&
             !memcmp(want->data, e->old_denoised->data, sd3_tensor_nbytes(want));
    } else {
        ok = ok && !e->old_denoised;
    }
    sd3_tensor_destroy(&want);
    if (!ok) {
        fprintf(stderr, "%s step %u: bytes differ\n", e->request_id, e->step);
        b[0]++;
    }
    b[1]++;
    return 0;
}

// Checks the journal after the kill of round rounds_done - 1. known[r][k]: the reports;
// last[r]: the last request round r reported on (the one a call may have been cut in).
static void
s_verify(int rounds_done, s_known_t (*known)[S_MAX_REQS], const int *n_reqs, const int *last)
{
    sd3_err_t err = {0};
    sd3_journal_t *j = sd3_journal_open(s_path, &err);
    CHECK_MSG(j, "reopen after kill: %s", err.msg);
    if (!j)
        return;
    int expect_live = 0, inflight_seen = 0, lagging = 0;
    for (int r = 0; r < rounds_done; r++) {
        for (int k = 0; k < n_reqs[r]; k++) {
            s_known_t *kn = &known[r][k];
            bool cut = k == last[r]; // its last call may have been cut by the kill
            char id[32];
            s_id(id, sizeof id, r, k);
            sd3_journal_info_t info;
            sd3_err_clear(&err);
            int rc = sd3_journal_get(j, id, &info, &err);
            if (!kn->accepted) {
                // The kill came inside accept: either way is fine, but intact if there.
                CHECK_MSG(rc == 0 || rc == SD3_ENOTFOUND, "%s: %s", id, err.msg);
                if (rc == 0) {
                    inflight_seen++;
                    CHECK_MSG(info.state == SD3_JOURNAL_QUEUED, "%s: unreported, %s", id,
                              sd3_journal_state_name(info.state));
                    expect_live++;
                }
                sd3_journal_info_fini(&info);
                continue;
            }
            CHECK_MSG(rc == 0, "accepted %s is gone: %s", id, err.msg);
            if (rc != 0) {
                sd3_journal_info_fini(&info);
                continue;
            }
            sd3_wire_generate_t g;
            s_request(&g, r, k);
            CHECK_MSG(!strcmp(info.request.prompt, g.prompt) && info.request.seed == g.seed &&
                          info.request.sampler == g.sampler && info.client_id_len == 3 &&
                          info.client_id[1] == (uint8_t)k,
                      "%s: request differs", id);
            bool live = info.state == SD3_JOURNAL_QUEUED || info.state == SD3_JOURNAL_RUNNING;
            if (kn->ended) {
                bool ok = kn->end_kind == R_FINISH ? info.state == SD3_JOURNAL_DONE
                                                   : info.state == SD3_JOURNAL_FAILED;
                CHECK_MSG(ok, "%s: ended %d, journal says %s", id, kn->end_kind,
                          sd3_journal_state_name(info.state));
                if (kn->end_kind == R_FINISH && info.state == SD3_JOURNAL_DONE) {
                    uint8_t png[5000];
                    s_png(png, sizeof png, r, k);
                    CHECK_MSG(info.png_size == sizeof png && !memcmp(info.png, png, sizeof png),
                              "%s: PNG differs", id);
                }
            } else if (live) {
                expect_live++;
                // Newest checkpoint: at least the last flushed step, at most the last one
                // handed over (or the next, when the kill cut that call).
                uint32_t hi = kn->step + (cut ? 1 : 0);
                bool ok = info.step >= kn->durable && info.step <= hi;
                CHECK_MSG(ok, "%s: checkpoint step %u, want %u..%u", id, info.step, kn->durable,
                          hi);
                inflight_seen += cut && info.step == kn->step + 1;
                lagging += info.step < kn->step;
            } else {
                // An end that did not report: only the call cut by the kill.
                CHECK_MSG(cut, "%s: %s without a report", id, sd3_journal_state_name(info.state));
                inflight_seen++;
            }
            sd3_journal_info_fini(&info);
        }
    }
    // As a restarted controller sees it: the live ones in acceptance order, every
    // checkpoint the exact bytes of its step (never torn, never mixed with another step).
    s_live_t *lv = calloc(1, sizeof *lv);
    int refused = -1, bytes[2] = {0, 0};
    sd3_err_clear(&err);
    CHECK_MSG(sd3_journal_recover(j, s_list_live, lv, &refused, &err) == 0, "%s", err.msg);
    CHECK_MSG(refused == 0, "recover refused %d rows", refused);
    CHECK_MSG(lv->n == expect_live, "recover lists %d live requests, want %d", lv->n, expect_live);
    for (int i = 1; i < lv->n; i++) // ids sort as (round, request): the acceptance order
        CHECK_MSG(strcmp(lv->ids[i - 1], lv->ids[i]) < 0, "order: %s before %s", lv->ids[i - 1],
                  lv->ids[i]);
    free(lv);
    CHECK(sd3_journal_recover(j, s_bytes, bytes, NULL, &err) == 0);
    CHECK_MSG(bytes[0] == 0, "%d checkpoints with wrong bytes", bytes[0]);
    printf("  %d live requests, %d checkpoints bit exact, %d behind the newest handed over; "
           "%d calls cut by a kill found committed (all rounds)\n",
           expect_live, bytes[1], lagging, inflight_seen);
    sd3_journal_destroy(&j);
}

int
main(void)
{
    snprintf(s_path, sizeof s_path, "%s/crash.db", sd3_test_tmpdir());
    s_known_t(*known)[S_MAX_REQS] = calloc(S_ROUNDS, sizeof *known);
    int n_reqs[S_ROUNDS] = {0}, last[S_ROUNDS];
    unsigned long long rng = (unsigned long long)time(NULL) ^ (unsigned long long)getpid();
    printf("seed %llu\n", rng);
    for (int round = 0; round < S_ROUNDS; round++) {
        int fds[2];
        if (pipe(fds) != 0)
            return 1;
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            s_child(round, fds[1]);
            _exit(0);
        }
        close(fds[1]);
        last[round] = -1;
        // The kill comes 5..300 ms after the child's first report (it opened the journal
        // and recovered by then), or after 3 s if it never reports.
        int delay_ms = 5 + (int)((sd3_test_randf(&rng) + 1.0f) * 122.5f);
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        bool killed = false, started = false;
        for (;;) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            int elapsed = (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
            if (!killed && (started ? elapsed >= delay_ms : elapsed >= 3000)) {
                kill(pid, SIGKILL);
                killed = true;
            }
            struct pollfd p = {fds[0], POLLIN, 0};
            int wait_ms = killed ? 1000 : started ? delay_ms - elapsed : 3000 - elapsed;
            int pr = poll(&p, 1, wait_ms > 0 ? wait_ms : 0);
            if (pr <= 0)
                continue;
            s_rec_t rec;
            ssize_t n = read(fds[0], &rec, sizeof rec);
            if (n == 0)
                break; // the child is gone and the pipe drained
            if (n != (ssize_t)sizeof rec || rec.round != round || rec.req >= S_MAX_REQS)
                continue;
            if (!started) {
                started = true;
                clock_gettime(CLOCK_MONOTONIC, &t0);
            }
            s_known_t *kn = &known[round][rec.req];
            if (rec.req + 1 > n_reqs[round])
                n_reqs[round] = rec.req + 1;
            last[round] = rec.req;
            if (rec.kind == R_ACCEPT)
                kn->accepted = true;
            else if (rec.kind == R_CKPT)
                kn->step = rec.step;
            else if (rec.kind == R_FLUSH)
                kn->durable = rec.step;
            else {
                kn->ended = true;
                kn->end_kind = rec.kind;
            }
        }
        close(fds[0]);
        int status = 0;
        waitpid(pid, &status, 0);
        CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "round %d: child ended with status %d before the kill", round, status);
        // The request being accepted when the kill came may exist without a report:
        // count one past the last reported so s_verify looks at it.
        if (n_reqs[round] < S_MAX_REQS)
            n_reqs[round]++;
        printf("round %d: killed after %d ms, %d requests reported\n", round, delay_ms,
               n_reqs[round] - 1);
        s_verify(round + 1, known, n_reqs, last);
        if (sd3_test_failures)
            break;
    }
    free(known);
    char p[600];
    unlink(s_path);
    snprintf(p, sizeof p, "%s-wal", s_path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", s_path);
    unlink(p);
    rmdir(sd3_test_tmpdir());
    return TEST_RESULT();
}
