/*  sd3_cpu - internals of the CPU backend, shared by its op files and its tests
 *
 *  The CPU backend (sd3_cpu_backend.c) fills the op table of sd3_backend.h. Each op has a
 *  plain reference (sd3_cpu_<op>_ref: loops, fp32 accumulation, no intrinsics, one thread)
 *  and a fast path (sd3_cpu_<op>: OpenBLAS sgemm on tiles and a small thread pool). Tests
 *  compare the two; stages never call these directly, only through the op table.
 *
 *  Threads: a pthread pool of n_threads - 1 workers plus the caller. OpenBLAS runs with one
 *  thread (set process-wide when the backend is created): we call sgemm on fixed tiles from
 *  our own workers, so there is one level of parallelism, no oversubscription, and the
 *  tiling depends only on the shapes, never on the thread count. Every output element is
 *  computed by exactly one task with a fixed order of operations, so the bits are the same
 *  for any thread count (no atomics in float reductions). Without a thread count the pool
 *  gets the CPUs the process may use (sd3_cpu_threads.h: affinity mask, cgroup quota).
 *  One backend may serve several threads (the stages of `sd3d --role all`): a parallel loop
 *  holds the pool for its whole run, so loops from different threads take turns and never
 *  share a thread's scratch. Hence: use scratch only inside a task, never call
 *  sd3_cpu_pool_run from inside a task (it would wait for itself).
 *
 *  Shapes: "rows" is the product of all dims but the last (sd3_tensor_rows).  */
#pragma once
#include "sd3_backend.h"

#include <stddef.h>
#include <stdint.h>

// ---- thread pool -------------------------------------------------------------------------
typedef struct sd3_cpu_pool sd3_cpu_pool_t;
// One task of a parallel loop: `task` in [0, n_tasks), `thread` in [0, n_threads).
typedef void (*sd3_cpu_task_fn)(void *ctx, int64_t task, int thread);

sd3_cpu_pool_t *sd3_cpu_pool_new(int n_threads); // NULL if out of memory / no threads
void sd3_cpu_pool_destroy(sd3_cpu_pool_t **self_p);
int sd3_cpu_pool_size(const sd3_cpu_pool_t *self);
// Runs fn(ctx, task, thread) for every task, tasks handed out in order to whichever thread
// is free; returns when all are done. The caller is thread 0. Thread-safe: a call from
// another thread waits until this one is done (not re-entrant from inside a task).
void sd3_cpu_pool_run(sd3_cpu_pool_t *self, int64_t n_tasks, sd3_cpu_task_fn fn, void *ctx);

// Per-thread scratch of the backend, grown on demand (kept between ops). NULL if out of memory.
// Only inside a task of sd3_cpu_pool_run (`thread` is the task's), which owns it meanwhile.
float *sd3_cpu_scratch(sd3_backend_t *be, int thread, int slot, size_t n_floats);
#define SD3_CPU_SCRATCH_SLOTS 4

sd3_cpu_pool_t *sd3_cpu_backend_pool(sd3_backend_t *be);

// ---- helpers -----------------------------------------------------------------------------
// Widens n elements of W (F32, F16, BF16, F8_E4M3, F64) to f32; AVX-512 where built with it.
void sd3_cpu_widen(sd3_dtype_t dtype, const void *src, float *dst, size_t n);
// Checks that t is a host F32 tensor; names it in the error.
int sd3_cpu_check_f32(const sd3_tensor_t *t, const char *op, const char *what, sd3_err_t *err);
// Same shape check (dims and sizes).
int sd3_cpu_check_same(const sd3_tensor_t *a, const sd3_tensor_t *b, const char *op,
                       const char *what, sd3_err_t *err);
// An optional 1-D float vector of length n (NULL ok): widened copy in *out (malloc, caller
// frees; NULL when v is NULL).
int sd3_cpu_vec_f32(const sd3_tensor_t *v, int64_t n, const char *op, const char *what, float **out,
                    sd3_err_t *err);

// ---- ops: fast path (pool) and reference ----------------------------------------------------
int sd3_cpu_linear(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                   const sd3_tensor_t *b, sd3_err_t *err);
int sd3_cpu_linear_ref(sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                       const sd3_tensor_t *b, sd3_err_t *err);

int sd3_cpu_layernorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                      const sd3_tensor_t *w, const sd3_tensor_t *b, float eps, sd3_err_t *err);
int sd3_cpu_rmsnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                    const sd3_tensor_t *w, float eps, sd3_err_t *err);
int sd3_cpu_groupnorm(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                      const sd3_tensor_t *w, const sd3_tensor_t *b, int groups, float eps,
                      sd3_err_t *err);
// The norms' fast paths run the reference row code in parallel: be == NULL runs one thread.

int sd3_cpu_act(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind,
                sd3_err_t *err);
int sd3_cpu_softmax(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err);
int sd3_cpu_add(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *a, const sd3_tensor_t *b,
                sd3_err_t *err);
int sd3_cpu_modulate(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                     const sd3_tensor_t *mod, int shift_chunk, int scale_chunk, sd3_err_t *err);
int sd3_cpu_gate_add(sd3_backend_t *be, sd3_tensor_t *x, const sd3_tensor_t *y,
                     const sd3_tensor_t *mod, int gate_chunk, sd3_err_t *err);
int sd3_cpu_upsample2x(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err);
int sd3_cpu_copy2d(sd3_backend_t *be, sd3_tensor_t *dst, int64_t dst_row, int64_t dst_col,
                   const sd3_tensor_t *src, int64_t src_row, int64_t src_col, int64_t n_rows,
                   int64_t n_cols, sd3_err_t *err);
int sd3_cpu_fill(sd3_backend_t *be, sd3_tensor_t *t, float value, sd3_err_t *err);
// The scalar formula of one activation, and the reference loop over a tensor. The fast act
// computes SiLU, GELU tanh and quick-GELU as x * sigmoid(k x) with a vector exp (GELU tanh:
// 0.5 (1 + tanh(u)) = sigmoid(2u)); it matches the reference to a few ulp, not bit for bit.
float sd3_cpu_act1(sd3_act_t kind, float x);
int sd3_cpu_act_ref(sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind, sd3_err_t *err);

int sd3_cpu_attention(sd3_backend_t *be, sd3_tensor_t *o, const sd3_tensor_t *q,
                      const sd3_tensor_t *k, const sd3_tensor_t *v, const sd3_attn_opts_t *opts,
                      sd3_err_t *err);
// Naive softmax(scale q k^T + bias [+ mask]) v with one [Lk] row of scores at a time.
int sd3_cpu_attention_ref(sd3_tensor_t *o, const sd3_tensor_t *q, const sd3_tensor_t *k,
                          const sd3_tensor_t *v, const sd3_attn_opts_t *opts, sd3_err_t *err);

int sd3_cpu_conv2d(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                   const sd3_tensor_t *b, const sd3_conv_opts_t *opts, sd3_err_t *err);
int sd3_cpu_conv2d_ref(sd3_tensor_t *y, const sd3_tensor_t *x, const sd3_tensor_t *w,
                       const sd3_tensor_t *b, const sd3_conv_opts_t *opts, sd3_err_t *err);
