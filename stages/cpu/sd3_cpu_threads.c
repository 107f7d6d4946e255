/*  sd3_cpu_threads - how many CPUs this process may really use (see sd3_cpu_threads.h)
 *
 *  Files read, all optional:
 *    /proc/self/cgroup     "0::/system.slice/sd3d.service" (v2) or "4:cpu,cpuacct:/docker/ab" (v1)
 *    v2: <root>/<path>/cpu.max and every ancestor's up to <root>: "max 100000" (no limit) or
 *        "150000 100000" (quota and period in us: 1.5 CPUs)
 *    v1: <mount>/<path>/cpu.cfs_quota_us (-1: no limit) and cpu.cfs_period_us, and the
 *        ancestors', where <mount> is <root>/<controllers> ("cpu,cpuacct") or <root>/cpu
 *  Inside a container the path in /proc/self/cgroup may name the host's view ("/docker/ab")
 *  while the container sees its own cgroup at the mount point: when <root>/<path> does not
 *  exist, the mount point itself is read. The tightest quota of the walk wins (a child cannot
 *  get more than its parent's), rounded up to whole CPUs: 1.5 CPUs of quota keep 2 threads
 *  busy 75% of the time, which beats 1 thread busy all of it only by a little, but never
 *  loses to it.  */
#include "sd3_cpu_threads.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_CPUS  (1 << 16) // masks and quotas past this are taken as "no limit"
#define S_MAX_DEPTH 64        // ancestors walked at most
#define S_PATH_MAX  4096

// Reads at most cap - 1 bytes of a small file into buf (NUL-terminated). 0, or -1.
static int
s_read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode) || S_ISFIFO(st.st_mode)) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    return 0;
}

// A non-negative decimal integer at *s (no sign, at most 18 digits); advances *s. 0, or -1.
static int
s_parse_uint(const char **s, unsigned long long *out)
{
    const char *p = *s;
    unsigned long long v = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 18)
            return -1;
        v = v * 10 + (unsigned long long)(*p - '0');
        p++;
    }
    if (digits == 0)
        return -1;
    *s = p;
    *out = v;
    return 0;
}

static bool
s_at_end(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return *p == '\0';
}

// Whole CPUs of quota/period, rounded up, into *cpus and the exact ratio into *ratio.
// 1 when it is a limit, 0 when it is none (or absurdly large).
static int
s_quota(unsigned long long quota, unsigned long long period, int *cpus, double *ratio)
{
    if (quota == 0 || period == 0)
        return 0; // not a limit the kernel would accept: ignore
    if (quota / period >= S_MAX_CPUS)
        return 0;
    unsigned long long n = quota / period + (quota % period != 0);
    *cpus = n < 1 ? 1 : (int)n;
    *ratio = (double)quota / (double)period;
    return 1;
}

// cgroup v2 cpu.max: "max [period]" or "quota period". 1 limit, 0 none or unreadable.
static int
s_read_v2(const char *dir, int *cpus, double *ratio)
{
    char path[S_PATH_MAX + 16], buf[128];
    if (snprintf(path, sizeof path, "%s/cpu.max", dir) >= (int)sizeof path ||
        s_read_small(path, buf, sizeof buf) != 0)
        return 0;
    const char *p = buf;
    unsigned long long quota, period;
    if (!strncmp(p, "max", 3))
        return 0;
    if (s_parse_uint(&p, &quota) != 0 || (*p != ' ' && *p != '\t'))
        return 0;
    while (*p == ' ' || *p == '\t')
        p++;
    if (s_parse_uint(&p, &period) != 0 || !s_at_end(p))
        return 0;
    return s_quota(quota, period, cpus, ratio);
}

// One integer file of cgroup v1 (may be -1). 0, or -1 when unreadable or odd.
static int
s_read_v1_int(const char *dir, const char *name, long long *out)
{
    char path[S_PATH_MAX + 32], buf[64];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path ||
        s_read_small(path, buf, sizeof buf) != 0)
        return -1;
    const char *p = buf;
    bool neg = *p == '-';
    if (neg)
        p++;
    unsigned long long v;
    if (s_parse_uint(&p, &v) != 0 || !s_at_end(p))
        return -1;
    *out = neg ? -(long long)v : (long long)v;
    return 0;
}

// cgroup v1: cpu.cfs_quota_us (-1 none) over cpu.cfs_period_us. 1 limit, 0 none.
static int
s_read_v1(const char *dir, int *cpus, double *ratio)
{
    long long quota, period;
    if (s_read_v1_int(dir, "cpu.cfs_quota_us", &quota) != 0 || quota <= 0 ||
        s_read_v1_int(dir, "cpu.cfs_period_us", &period) != 0 || period <= 0)
        return 0;
    return s_quota((unsigned long long)quota, (unsigned long long)period, cpus, ratio);
}

static bool
s_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// A cgroup path from /proc/self/cgroup we may append to a folder: absolute, no "..", no
// control characters. An empty path is "/".
static bool
s_path_ok(const char *rel)
{
    if (rel[0] != '/' && rel[0] != '\0')
        return false;
    for (const char *p = rel; *p; p++)
        if ((unsigned char)*p < 0x20)
            return false;
    for (const char *p = rel; (p = strstr(p, "..")) != NULL; p += 2)
        if ((p == rel || p[-1] == '/') && (p[2] == '/' || p[2] == '\0'))
            return false;
    return true;
}

// Walks from base/rel up to base (base alone when base/rel is not a folder), reading each
// folder's limit with `read_limit`; the tightest one wins. 1 when one was found.
static int
s_walk(const char *base, const char *rel, int (*read_limit)(const char *, int *, double *),
       int *cpus, double *ratio)
{
    char dir[S_PATH_MAX];
    size_t base_len = strlen(base);
    if (!s_path_ok(rel) || snprintf(dir, sizeof dir, "%s%s", base, rel) >= (int)sizeof dir ||
        !s_is_dir(dir))
        snprintf(dir, sizeof dir, "%s", base);
    int found = 0;
    for (int depth = 0; depth < S_MAX_DEPTH; depth++) {
        int c;
        double r;
        if (read_limit(dir, &c, &r) == 1 && (!found || r < *ratio)) {
            *cpus = c;
            *ratio = r;
            found = 1;
        }
        size_t len = strlen(dir);
        while (len > base_len && dir[len - 1] == '/') // trailing slashes
            dir[--len] = '\0';
        if (len <= base_len)
            break;
        char *slash = strrchr(dir, '/');
        if (!slash || (size_t)(slash - dir) < base_len)
            break;
        *slash = '\0';
    }
    return found;
}

// Does the comma-separated controller list name "cpu"?
static bool
s_has_cpu(const char *list)
{
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n == 3 && !strncmp(p, "cpu", 3))
            return true;
        if (!comma)
            break;
        p = comma + 1;
    }
    return false;
}

// The v1 mount of the cpu controller under root: <root>/<controllers> or the usual names.
static bool
s_v1_mount(const char *root, const char *controllers, char *out, size_t cap)
{
    const char *names[] = {controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!names[i][0] || strchr(names[i], '/') || strstr(names[i], ".."))
            continue;
        if (snprintf(out, cap, "%s/%s", root, names[i]) < (int)cap && s_is_dir(out))
            return true;
    }
    return false;
}

int
sd3_cpu_threads_affinity(void)
{
    for (int n = 1024; n <= S_MAX_CPUS; n *= 2) {
        cpu_set_t *set = CPU_ALLOC((size_t)n);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE((size_t)n);
        CPU_ZERO_S(size, set);
        int rc = sched_getaffinity(0, size, set);
        int count = rc == 0 ? CPU_COUNT_S(size, set) : 0;
        CPU_FREE(set);
        if (rc == 0 && count > 0)
            return count;
        if (rc != 0 && errno != EINVAL) // EINVAL: the kernel's mask is bigger than ours
            break;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > S_MAX_CPUS ? S_MAX_CPUS : (int)n;
}

int
sd3_cpu_threads_probe(sd3_cpu_threads_t *out, int affinity, const char *proc_cgroup,
                      const char *cgroup_root)
{
    memset(out, 0, sizeof *out);
    out->affinity = affinity > 0 ? affinity : sd3_cpu_threads_affinity();
    int q_cpus = 0;
    double q_ratio = 0;
    bool have = false;
    // The lines of /proc/self/cgroup that matter: the v2 one ("0::path") and v1's cpu.
    char v2_path[S_PATH_MAX] = "", v1_path[S_PATH_MAX] = "", v1_ctl[256] = "";
    bool v2 = false, v1 = false, read_ok = false;
    FILE *f = proc_cgroup ? fopen(proc_cgroup, "re") : NULL;
    if (f) {
        read_ok = true;
        char line[S_PATH_MAX + 300];
        while (fgets(line, sizeof line, f)) {
            size_t len = strlen(line);
            if (len > 0 && line[len - 1] == '\n')
                line[--len] = '\0';
            else if (!feof(f)) { // longer than any path we accept: skip the rest of it
                int ch;
                while ((ch = fgetc(f)) != EOF && ch != '\n')
                    ;
                continue;
            }
            char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (!c2)
                continue;
            *c1 = '\0';
            *c2 = '\0';
            const char *id = line, *ctl = c1 + 1, *path = c2 + 1;
            if (!v2 && !strcmp(id, "0") && ctl[0] == '\0' && strlen(path) < sizeof v2_path) {
                snprintf(v2_path, sizeof v2_path, "%s", path);
                v2 = true;
            } else if (!v1 && s_has_cpu(ctl) && strlen(path) < sizeof v1_path &&
                       strlen(ctl) < sizeof v1_ctl) {
                snprintf(v1_path, sizeof v1_path, "%s", path);
                snprintf(v1_ctl, sizeof v1_ctl, "%s", ctl);
                v1 = true;
            }
        }
        fclose(f);
    }
    if (!read_ok) // no /proc: the mount points themselves may still say
        v2 = v1 = true;
    if (cgroup_root && cgroup_root[0]) {
        int c = 0;
        double r = 0;
        if (v2 && s_walk(cgroup_root, v2_path, s_read_v2, &c, &r)) {
            q_cpus = c;
            q_ratio = r;
            have = true;
            snprintf(out->source, sizeof out->source, "cgroup v2 cpu.max");
        }
        char mount[S_PATH_MAX];
        if (v1 && s_v1_mount(cgroup_root, v1_ctl, mount, sizeof mount) &&
            s_walk(mount, v1_path, s_read_v1, &c, &r) && (!have || r < q_ratio)) {
            q_cpus = c;
            q_ratio = r;
            have = true;
            snprintf(out->source, sizeof out->source, "cgroup v1 cpu.cfs_quota_us");
        }
    }
    out->n = out->affinity;
    if (have) {
        out->quota = q_ratio;
        if (q_cpus < out->n)
            out->n = q_cpus;
        snprintf(out->why, sizeof out->why, "affinity %d, %s %.2f -> %d", out->affinity,
                 out->source, q_ratio, out->n);
    } else {
        snprintf(out->why, sizeof out->why, "affinity %d, no cgroup CPU quota -> %d", out->affinity,
                 out->n);
    }
    if (out->n < 1)
        out->n = 1;
    return out->n;
}

int
sd3_cpu_threads_usable(sd3_cpu_threads_t *out)
{
    return sd3_cpu_threads_probe(out, 0, "/proc/self/cgroup", "/sys/fs/cgroup");
}
