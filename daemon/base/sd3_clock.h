/*  sd3_clock - the clocks every module reads
 *
 *  Monotonic time for timeouts, deadlines and wall figures (the calendar clock steps);
 *  sd3_unix_ms only where a time leaves the process; sd3_clock_s reads any clock, e.g.
 *  CLOCK_THREAD_CPUTIME_ID for CPU figures.  */
#pragma once
#include <stdint.h>
#include <time.h>

static inline double
sd3_clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

// Monotonic seconds.
static inline double
sd3_now_s(void)
{
    return sd3_clock_s(CLOCK_MONOTONIC);
}

// Unix time in milliseconds (the calendar clock: deadlines that cross machines, rows
// stamped for people).
static inline int64_t
sd3_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

// Monotonic milliseconds.
static inline int64_t
sd3_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
