/*  sd3ctl_bench - what the `sd3ctl bench` files share: checked number options, and the parts
 *  of `sd3ctl bench cluster` that live in their own files
 *
 *  The benches read every number with sd3_bench_arg_int / sd3_bench_arg_double: the whole
 *  argument must be a number inside the range, otherwise one line naming the bench, the
 *  option, the text and the range goes to stderr and the bench exits 2 (never atoi's
 *  silent 0). ctl/ only; the public bench entry points are declared in sd3ctl.h.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// "12", "-3" (decimal): 0 and *out when text is a whole number in [min, max]; else -1 after
// printing "sd3ctl bench WHAT: OPTION 'TEXT': want a whole number in MIN..MAX".
int sd3_bench_arg_int(const char *what, const char *option, const char *text, long min, long max,
                      int *out);
// Same for a finite real number in [min, max] ("0.5", "1e-3").
int sd3_bench_arg_double(const char *what, const char *option, const char *text, double min,
                         double max, double *out);

// Activation-like values: N(0, 1) with 0.1% outliers of 50..800 (the massive-activation
// channels of DiTs), the same for a seed on every machine.
void sd3_bench_fill_activations(float *x, size_t n, uint64_t seed);

// Wall seconds (CLOCK_MONOTONIC) and CPU seconds of the whole process (every thread,
// ZeroMQ's I/O threads included).
double sd3_bench_wall(void);
double sd3_bench_cpu(void);

/*  Per-hop latency of the mmdit ring (ctl/sd3ctl_bench_hop.c): the STEP message one range
 *  sends the next (x [2,N,C], ctx [2,L,C], c [2,C], C = 2432) over a real ZeroMQ TCP
 *  loopback pair of sd3_links, for every codec and wire dtype; prints bytes on the wire
 *  and the median wall / CPU time of build + send + receive + decode + shape checks.
 *  Returns 0, or 2 after printing why it could not run.  */
int sd3_bench_hop(int n_tokens, int ctx_tokens, int level, int reps);

/*  Compression of real activations (ctl/sd3ctl_bench_act.c): runs embed + blocks [0, K) of
 *  a real-width MMDiT at `size` px (batch 2) and encodes the x, ctx, c a range boundary
 *  after each block would send, with every codec and wire dtype. model NULL: writes the
 *  needed part of a random SD3.5-Large (hidden 2432, 38 heads, bf16; the real tensor names;
 *  or of another sd3_arch_find() name) into a temporary folder under /tmp and removes it
 *  afterwards. Returns 0, or 2.  */
typedef struct {
    const char *model; // checkpoint, or NULL for a partial random model of `arch`
    const char *arch;  // architecture of the random model (NULL = "sd3.5-large")
    int blocks;        // K >= 1
    int size;          // pixels, multiple of 16
    int ctx_tokens;    // L
    int level;         // zstd level
    int threads;       // CPU backend threads; 0 = all cores
    double sigma;      // the step's sigma (timestep = 1000 sigma)
    bool keep;         // keep the written model (its path is printed)
} sd3_bench_act_opts_t;
int sd3_bench_act(const sd3_bench_act_opts_t *opts);
