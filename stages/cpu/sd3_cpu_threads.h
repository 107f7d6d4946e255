/*  sd3_cpu_threads - how many CPUs this process may really use
 *
 *  The online CPU count (sysconf) says what the machine has, not what we get: a container or
 *  a systemd unit limits us with a CPU affinity mask (taskset, cpuset) and a CFS quota
 *  (cgroup v2 cpu.max "200000 100000" = 2 CPUs, v1 cpu.cfs_quota_us / cpu.cfs_period_us).
 *  A pool sized by the online count on a 64-core host inside a 2-CPU quota runs 64 threads
 *  in 2 CPUs' worth of time slices: each parallel-for waits for its slowest, throttled task.
 *
 *  usable = min(affinity count, ceil(quota / period) over the cgroup and its ancestors), at
 *  least 1. The CPU backend sizes its pool with it when no thread count is given; `sd3ctl
 *  plan` prints it. Files are parsed defensively: a missing, unreadable or odd file means
 *  "no limit from that file", never a crash and never fewer than 1 CPU.
 *  Thread: any; no state.  */
#pragma once

typedef struct {
    int n;           // usable CPUs, >= 1
    int affinity;    // CPUs in this thread's affinity mask (the online count if unknown)
    double quota;    // tightest cgroup CPU quota in CPUs; 0: no limit found
    char source[48]; // where the quota came from: "cgroup v2 cpu.max", "cgroup v1 cfs", ""
    char why[160];   // "affinity 2, cgroup v2 cpu.max 1.50 -> 2"
} sd3_cpu_threads_t;

// Fills *out for this process (sched_getaffinity, /proc/self/cgroup, /sys/fs/cgroup) and
// returns out->n.
int sd3_cpu_threads_usable(sd3_cpu_threads_t *out);

// The same with every input named, for tests: `affinity` CPUs in the mask (<= 0: ask the
// kernel), `proc_cgroup` a file in the format of /proc/self/cgroup, `cgroup_root` the
// folder where cgroup v2 is mounted or under which the v1 controllers are
// (<root>/cpu,cpuacct, <root>/cpu). Returns out->n.
int sd3_cpu_threads_probe(sd3_cpu_threads_t *out, int affinity, const char *proc_cgroup,
                          const char *cgroup_root);

// CPUs in this thread's affinity mask; the online count when the kernel does not say; >= 1.
int sd3_cpu_threads_affinity(void);
