/*  test_cpu_threads - the CPUs this process may use, and one CPU backend shared by threads
 *
 *  How to ask: sd3_cpu_threads_usable(&u) gives u.n (>= 1) and u.why. Here every input is
 *  faked through sd3_cpu_threads_probe: cgroup trees in a temp folder (v2 cpu.max on the leaf
 *  and its ancestors, a path the container cannot see, v1 cfs quota under cpu,cpuacct and
 *  under cpu, missing files) and hostile files (garbage numbers, a FIFO, a folder, binary,
 *  "..", overlong lines), which must all read as "no limit", never crash. Then the real
 *  process: pinned to one CPU with sched_setaffinity, the probe, a CPU backend made without a
 *  thread count and `sd3ctl plan` (which inherits the mask) all say 1; --threads still wins.
 *  Last, three threads run linear, attention and layernorm at once on one shared backend
 *  (2 threads, then 1) and must get the bits of a lone run: the pool lets one parallel loop
 *  run at a time, so the loops never mix their jobs or scratch.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_cpu_threads.h"
#include "sd3_test.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char s_root[512]; // the fake cgroup mount
static char s_proc[560]; // the fake /proc/self/cgroup

// Writes content to root/rel, making the folders on the way.
static void
s_put(const char *rel, const char *content, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", s_root, rel);
    for (char *p = path + strlen(s_root) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot write %s", path);
    if (f) {
        fwrite(content, 1, len, f);
        fclose(f);
    }
}

static void
s_puts(const char *rel, const char *content)
{
    s_put(rel, content, strlen(content));
}

static void
s_proc_cgroup(const char *content)
{
    FILE *f = fopen(s_proc, "wb");
    if (f) {
        fputs(content, f);
        fclose(f);
    }
}

static void
s_clear(void)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", s_root, s_root);
    CHECK(system(cmd) == 0);
    unlink(s_proc);
}

// Probes with 8 CPUs of affinity; checks n and, when want_why is given, the reason.
static void
s_expect(const char *what, int want_n, double want_quota, const char *want_why)
{
    sd3_cpu_threads_t u;
    int n = sd3_cpu_threads_probe(&u, 8, s_proc, s_root);
    CHECK_MSG(n == want_n && u.n == want_n, "%s: n=%d, want %d (%s)", what, n, want_n, u.why);
    CHECK_MSG(fabs(u.quota - want_quota) < 1e-9, "%s: quota %.3f, want %.3f", what, u.quota,
              want_quota);
    CHECK_MSG(u.affinity == 8, "%s: affinity %d", what, u.affinity);
    if (want_why)
        CHECK_MSG(!strcmp(u.why, want_why), "%s: why '%s', want '%s'", what, u.why, want_why);
}

static void
s_test_v2(void)
{
    s_clear();
    s_proc_cgroup("0::/\n");
    s_puts("cpu.max", "max 100000\n");
    s_expect("v2 max", 8, 0, "affinity 8, no cgroup CPU quota -> 8");

    s_clear();
    s_proc_cgroup("0::/a/b\n");
    s_puts("a/cpu.max", "400000 100000\n");
    s_puts("a/b/cpu.max", "150000 100000\n");
    s_expect("v2 leaf 1.5", 2, 1.5, "affinity 8, cgroup v2 cpu.max 1.50 -> 2");

    s_puts("a/b/cpu.max", "max 100000\n"); // the parent's quota still binds
    s_expect("v2 parent 4", 4, 4, "affinity 8, cgroup v2 cpu.max 4.00 -> 4");

    s_puts("a/b/cpu.max", "50000 100000\n"); // half a CPU: still one thread
    s_expect("v2 half", 1, 0.5, NULL);

    s_puts("a/cpu.max", "max 100000\n");
    s_puts("a/b/cpu.max", "1600000 100000\n"); // more quota than CPUs: affinity wins
    s_expect("v2 16 of 8", 8, 16, "affinity 8, cgroup v2 cpu.max 16.00 -> 8");

    s_puts("a/b/cpu.max", "200000 100000"); // no newline
    s_expect("v2 2", 2, 2, NULL);

    // A container with its own cgroup namespace lists the host's path, which its mount
    // does not have: the mount point itself holds its quota.
    s_clear();
    s_proc_cgroup("0::/docker/0123abcd\n");
    s_puts("cpu.max", "300000 100000\n");
    s_expect("v2 namespaced", 3, 3, NULL);
}

static void
s_test_v1(void)
{
    s_clear();
    s_proc_cgroup("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n");
    s_puts("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n");
    s_puts("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n");
    s_puts("cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    s_puts("cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    s_expect("v1 2.5", 3, 2.5, "affinity 8, cgroup v1 cpu.cfs_quota_us 2.50 -> 3");

    s_puts("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
    s_expect("v1 none", 8, 0, "affinity 8, no cgroup CPU quota -> 8");

    // The controllers listed in another order, mounted as plain "cpu" (this very machine).
    s_clear();
    s_proc_cgroup("3:cpuacct,cpu:/x\n");
    s_puts("cpu/x/cpu.cfs_quota_us", "100000\n");
    s_puts("cpu/x/cpu.cfs_period_us", "100000\n");
    s_expect("v1 cpu mount", 1, 1, NULL);

    // v1 and v2 both give a quota (hybrid): the tighter one.
    s_proc_cgroup("3:cpuacct,cpu:/x\n0::/\n");
    s_puts("cpu.max", "50000 100000\n");
    s_puts("cpu/x/cpu.cfs_quota_us", "300000\n");
    s_expect("hybrid", 1, 0.5, NULL);
}

static void
s_test_missing(void)
{
    s_clear();
    s_expect("nothing there", 8, 0, "affinity 8, no cgroup CPU quota -> 8");
    sd3_cpu_threads_t u;
    CHECK(sd3_cpu_threads_probe(&u, 8, NULL, NULL) == 8);
    CHECK(sd3_cpu_threads_probe(&u, 8, "/nonexistent/cgroup", "/nonexistent/root") == 8);
    CHECK(sd3_cpu_threads_probe(&u, 8, s_proc, "") == 8);
    // No /proc/self/cgroup: the mount point's own limit still counts.
    s_puts("cpu.max", "200000 100000\n");
    s_expect("no proc file", 2, 2, NULL);
    // Period missing (v1).
    s_clear();
    s_proc_cgroup("1:cpu:/\n");
    s_puts("cpu/cpu.cfs_quota_us", "200000\n");
    s_expect("v1 no period", 8, 0, NULL);
}

static void
s_test_garbage(void)
{
    static const char *bad_v2[] = {
        "",
        "\n",
        "max",
        "maximum 7",
        "abc def\n",
        "-100000 100000\n",
        "100000 -5\n",
        "100000 0\n",
        "0 100000\n",
        "99999999999999999999999 100000\n",
        "100000 99999999999999999999999\n",
        "100000 100000 junk\n",
        "150000\n",
        " 150000 100000\n",
        "1e5 1e5\n",
        "0x30000 0x10000\n",
        "150000\t\t\n",
        "\x01\x02\xff\xfe",
        "18446744073709551615 1\n",
    };
    s_clear();
    s_proc_cgroup("0::/g\n");
    for (size_t i = 0; i < sizeof bad_v2 / sizeof bad_v2[0]; i++) {
        s_puts("g/cpu.max", bad_v2[i]);
        char what[64];
        snprintf(what, sizeof what, "garbage cpu.max #%zu", i);
        s_expect(what, 8, 0, NULL);
    }
    // A NUL in the middle, then a whole page of digits.
    s_put("g/cpu.max",
          "2\0"
          "00000 100000\n",
          15);
    s_expect("cpu.max with a NUL", 8, 0, NULL);
    char big[5000];
    memset(big, '9', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    s_puts("g/cpu.max", big);
    s_expect("cpu.max of 4999 digits", 8, 0, NULL);

    // cpu.max as a folder, and as a FIFO nobody writes (must not block).
    s_clear();
    s_proc_cgroup("0::/g\n");
    char path[1024];
    snprintf(path, sizeof path, "%s/g/cpu.max", s_root);
    s_puts("g/x", "");
    CHECK(mkdir(path, 0755) == 0);
    s_expect("cpu.max a folder", 8, 0, NULL);
    rmdir(path);
    if (mkfifo(path, 0644) == 0)
        s_expect("cpu.max a FIFO", 8, 0, NULL);

    static const char *bad_v1[] = {"",
                                   "-",
                                   "--1\n",
                                   "abc\n",
                                   "1.5\n",
                                   "99999999999999999999\n",
                                   "-99999999999999999999\n",
                                   "100000 100000\n"};
    s_clear();
    s_proc_cgroup("1:cpu:/h\n");
    s_puts("cpu/h/cpu.cfs_period_us", "100000\n");
    for (size_t i = 0; i < sizeof bad_v1 / sizeof bad_v1[0]; i++) {
        s_puts("cpu/h/cpu.cfs_quota_us", bad_v1[i]);
        char what[64];
        snprintf(what, sizeof what, "garbage cfs_quota_us #%zu", i);
        s_expect(what, 8, 0, NULL);
    }
    s_puts("cpu/h/cpu.cfs_quota_us", "200000\n");
    s_puts("cpu/h/cpu.cfs_period_us", "0\n");
    s_expect("v1 period 0", 8, 0, NULL);

    // Odd /proc/self/cgroup files: lines without colons, an overlong line, ".." and
    // relative paths (never followed out of the mount), binary.
    s_clear();
    s_puts("cpu.max", "max 100000\n");
    s_puts("outside/cpu.max", "100000 100000\n");
    s_put("tree/cpu.max", "100000 100000\n", 14);
    char *line = malloc(20000);
    memcpy(line, "0::/", 4);
    memset(line + 4, 'a', 20000 - 6);
    line[20000 - 2] = '\n';
    line[20000 - 1] = '\0';
    static const char *bad_proc[] = {"garbage\n",
                                     "0:\n",
                                     ":::\n",
                                     "0::/../outside\n",
                                     "0::/tree/../../outside\n",
                                     "0::outside\n",
                                     "0::/\x01/tree\n",
                                     "\xff\xfe\x00\n",
                                     NULL};
    for (size_t i = 0; bad_proc[i]; i++) {
        s_proc_cgroup(bad_proc[i]);
        char what[64];
        snprintf(what, sizeof what, "garbage /proc/self/cgroup #%zu", i);
        s_expect(what, 8, 0, NULL);
    }
    s_proc_cgroup(line);
    s_expect("overlong /proc/self/cgroup line", 8, 0, NULL);
    free(line);
    // After an overlong line, the next line still counts.
    FILE *f = fopen(s_proc, "wb");
    if (f) {
        fputs("5:memory:/", f);
        for (int i = 0; i < 10000; i++)
            fputc('m', f);
        fputs("\n0::/tree\n", f);
        fclose(f);
    }
    s_expect("line after an overlong one", 1, 1, NULL);
    // "a..b" is a legal name, not a parent.
    s_put("a..b/cpu.max", "200000 100000\n", 14);
    s_proc_cgroup("0::/a..b\n");
    s_expect("a..b", 2, 2, NULL);
}

// Pins this thread to one CPU of its mask: the probe, a backend without a thread count and
// `sd3ctl plan` (a child inherits the mask) must all say 1.
static void
s_test_affinity(void)
{
    cpu_set_t old, one;
    CHECK(sched_getaffinity(0, sizeof old, &old) == 0);
    int had = CPU_COUNT(&old);
    sd3_cpu_threads_t u;
    int n = sd3_cpu_threads_usable(&u);
    CHECK_MSG(u.affinity == had && n >= 1 && n <= had, "usable %d of %d (%s)", n, had, u.why);
    fprintf(stderr, "this process: %d usable CPUs (%s)\n", n, u.why);
    int first = -1;
    for (int i = 0; i < CPU_SETSIZE && first < 0; i++)
        if (CPU_ISSET(i, &old))
            first = i;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) {
        fprintf(stderr, "sched_setaffinity: %s; affinity part skipped\n", strerror(errno));
        return;
    }
    CHECK(sd3_cpu_threads_affinity() == 1);
    n = sd3_cpu_threads_usable(&u);
    CHECK_MSG(n == 1 && u.affinity == 1 && !strncmp(u.why, "affinity 1,", 11), "pinned: %d (%s)", n,
              u.why);
    sd3_err_t err = {0};
    sd3_backend_t *be = sd3_backend_new("cpu", 0, &err);
    CHECK_MSG(be && sd3_backend_threads(be) == 1, "pinned backend: %d threads (%s)",
              sd3_backend_threads(be), sd3_backend_threads_why(be));
    CHECK(be && !strncmp(sd3_backend_threads_why(be), "affinity 1,", 11));
    CHECK(be && sd3_cpu_pool_size(sd3_cpu_backend_pool(be)) == 1);
    sd3_backend_destroy(&be);
    be = sd3_backend_new("cpu", 3, &err); // --threads overrides the box
    CHECK_MSG(be && sd3_backend_threads(be) == 3 &&
                  !strcmp(sd3_backend_threads_why(be), "asked for 3"),
              "--threads 3: %d (%s)", sd3_backend_threads(be), sd3_backend_threads_why(be));
    CHECK(be && sd3_cpu_pool_size(sd3_cpu_backend_pool(be)) == 3);
    sd3_backend_destroy(&be);
    CHECK(sd3_backend_threads(NULL) == 0 && !strcmp(sd3_backend_threads_why(NULL), ""));

    const char *args[] = {"plan", "--arch", "sd3-medium", "--devices", "24G", NULL};
    static char out[8192];
    int rc = sd3_test_run(SD3_BINARY_DIR "/sd3ctl", args, out, sizeof out);
    if (rc == -1 || access(SD3_BINARY_DIR "/sd3ctl", X_OK) != 0) {
        fprintf(stderr, "no sd3ctl in %s; plan part skipped\n", SD3_BINARY_DIR);
    } else {
        CHECK_MSG(rc == 0 && strstr(out, "cpu here: 1 usable CPUs (affinity 1,"),
                  "sd3ctl plan pinned to one CPU (rc %d):\n%s", rc, out);
    }
    CHECK(sched_setaffinity(0, sizeof old, &old) == 0);
    CHECK(sd3_cpu_threads_affinity() == had);
}

// ---- one backend, three threads ------------------------------------------------------------

typedef struct {
    sd3_backend_t *be;
    sd3_tensor_t *x, *w, *q, *kv; // inputs, shared read-only
    sd3_tensor_t *y, *o, *ln;     // this thread's outputs
    int reps;
    int failed;
} s_job_t;

static unsigned long long s_seed = 777;

static sd3_tensor_t *
s_rand(sd3_dtype_t dtype, int ndim, const int64_t *shape)
{
    sd3_tensor_t *t = sd3_tensor_new(dtype, ndim, shape);
    size_t n = (size_t)sd3_tensor_numel(t);
    float *tmp = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        tmp[i] = sd3_test_randf(&s_seed);
    sd3_dtype_from_f32(dtype, tmp, t->data, n);
    free(tmp);
    return t;
}

// linear (f16 weight: widened into scratch), attention (scratch), layernorm.
static int
s_ops(s_job_t *j)
{
    sd3_err_t err = {0};
    sd3_attn_opts_t opts = {.n_heads = 2, .scale = 0.125f};
    if (j->be->ops->linear(j->be, j->y, j->x, j->w, NULL, &err) != 0 ||
        j->be->ops->attention(j->be, j->o, j->q, j->kv, j->kv, &opts, &err) != 0 ||
        j->be->ops->layernorm(j->be, j->ln, j->y, NULL, NULL, 1e-6f, &err) != 0) {
        fprintf(stderr, "shared backend: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static bool
s_same(const sd3_tensor_t *a, const sd3_tensor_t *b)
{
    return !memcmp(a->data, b->data, (size_t)sd3_tensor_numel(a) * sizeof(float));
}

static s_job_t *s_ref;

static void *
s_job_main(void *arg)
{
    s_job_t *j = arg;
    for (int r = 0; r < j->reps; r++) {
        memset(j->y->data, 0xff, (size_t)sd3_tensor_numel(j->y) * sizeof(float)); // NaN
        memset(j->o->data, 0xff, (size_t)sd3_tensor_numel(j->o) * sizeof(float));
        if (s_ops(j) != 0 || !s_same(j->y, s_ref->y) || !s_same(j->o, s_ref->o) ||
            !s_same(j->ln, s_ref->ln))
            j->failed++;
    }
    return NULL;
}

static void
s_test_shared(int n_threads)
{
    sd3_err_t err = {0};
    sd3_backend_t *be = sd3_backend_new("cpu", n_threads, &err);
    if (!be) {
        CHECK_MSG(0, "%s", err.msg);
        return;
    }
    int64_t xs[2] = {37, 300}, ws[2] = {200, 300}, ys[2] = {37, 200};
    int64_t qs[3] = {1, 150, 128}, kvs[3] = {1, 300, 128};
    s_job_t jobs[4];
    memset(jobs, 0, sizeof jobs);
    sd3_tensor_t *x = s_rand(SD3_F32, 2, xs), *w = s_rand(SD3_F16, 2, ws);
    sd3_tensor_t *q = s_rand(SD3_F32, 3, qs), *kv = s_rand(SD3_F32, 3, kvs);
    for (int i = 0; i < 4; i++) {
        jobs[i] = (s_job_t){.be = be, .x = x, .w = w, .q = q, .kv = kv, .reps = 25};
        jobs[i].y = sd3_tensor_new(SD3_F32, 2, ys);
        jobs[i].o = sd3_tensor_new(SD3_F32, 3, qs);
        jobs[i].ln = sd3_tensor_new(SD3_F32, 2, ys);
    }
    s_ref = &jobs[3]; // a lone run first
    CHECK(s_ops(s_ref) == 0);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        CHECK(pthread_create(&th[i], NULL, s_job_main, &jobs[i]) == 0);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++)
        CHECK_MSG(jobs[i].failed == 0,
                  "%d-thread backend shared by 3: thread %d got other bits "
                  "in %d of %d runs",
                  n_threads, i, jobs[i].failed, jobs[i].reps);
    for (int i = 0; i < 4; i++) {
        sd3_tensor_destroy(&jobs[i].y);
        sd3_tensor_destroy(&jobs[i].o);
        sd3_tensor_destroy(&jobs[i].ln);
    }
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&w);
    sd3_tensor_destroy(&q);
    sd3_tensor_destroy(&kv);
    sd3_backend_destroy(&be);
}

int
main(void)
{
    alarm(120); // a pool that mixed two loops may hang instead of failing: fail, not hang
    snprintf(s_root, sizeof s_root, "%s/cgroup", sd3_test_tmpdir());
    snprintf(s_proc, sizeof s_proc, "%s/proc-self-cgroup", sd3_test_tmpdir());
    s_test_v2();
    s_test_v1();
    s_test_missing();
    s_test_garbage();
    s_test_affinity();
    s_test_shared(2);
    s_test_shared(1);
    s_test_shared(3);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", sd3_test_tmpdir());
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", sd3_test_tmpdir());
    return TEST_RESULT();
}
