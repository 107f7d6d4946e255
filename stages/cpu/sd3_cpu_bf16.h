/*  sd3_cpu_bf16 - the CPU backend's bf16 GEMMs (oneDNN matmul on AMX / AVX512_BF16)
 *
 *  The backend's state for SD3_PRECISION_BF16: oneDNN engine, one stream per pool thread,
 *  the matmul primitives (one per weight tile shape) and the weights packed once into the
 *  layout those primitives read (bf16, oneDNN's blocked format). Owned by the CPU backend
 *  (sd3_cpu_backend.c creates it in set_precision, destroys it with the backend).
 *
 *  Determinism by construction, never by oneDNN's promise: the output is cut into tiles
 *  of SD3_BF16_MT rows x SD3_BF16_NT columns; every tile, the last rows included (padded
 *  with zero rows), runs the one primitive of its (K, tile width) with one oneDNN thread.
 *  So a row's bits depend on its own x row and the weight only: the same for any thread
 *  count, any split, and any other rows in the call (batch invariant). oneDNN picks
 *  different kernels for different M (measured: M = 1, 5, 16 differ from M = 64 at some K),
 *  which is why the tail is padded rather than run at its own size.
 *
 *  Thread-safe: the backend may serve several threads; the caches are under a mutex.  */
#pragma once
#include "sd3_backend.h"

#define SD3_BF16_MT 64  // rows of x per primitive call (tails padded with zero rows)
#define SD3_BF16_NT 128 // output columns per tile (the last tile may be narrower)

typedef struct sd3_cpu_bf16 sd3_cpu_bf16_t;

// NULL + err when oneDNN has no engine or no bf16 matmul on this CPU (SD3_ENOTSUP).
sd3_cpu_bf16_t *sd3_cpu_bf16_new(int n_threads, sd3_err_t *err);
void sd3_cpu_bf16_destroy(sd3_cpu_bf16_t **self_p);
// Whether this CPU computes bf16 at full speed (AVX512_BF16): what "auto" picks.
bool sd3_cpu_bf16_fast(void);
// Bytes of packed weights held (for memory reports).
size_t sd3_cpu_bf16_packed_bytes(const sd3_cpu_bf16_t *self);
// oneDNN's name of the matmul kernel it runs ("brg:avx512_core_amx_bf16"); "" for NULL.
const char *sd3_cpu_bf16_impl(const sd3_cpu_bf16_t *self);

// y = x W^T + b with bf16 products and f32 accumulation. Shapes as sd3_cpu_linear (checked
// there). W is packed on first use (kept while W's data pointer and a sample of its bytes
// stay the same); its mapped source pages are then handed back (MADV_PAGEOUT).
int sd3_cpu_linear_bf16(sd3_backend_t *be, sd3_cpu_bf16_t *self, sd3_tensor_t *y,
                        const sd3_tensor_t *x, const sd3_tensor_t *w, const float *bias,
                        sd3_err_t *err);
// ---- plain bf16 GEMMs on one thread (attention's two products) -------------------------------
// C [M, N] f32 (row stride ldc) = A [M, K] bf16 (row stride lda) . B, B [K, N] bf16 read as
// b[k*ldb + n] or, b_trans, as b[n*ldb + k]. One primitive per distinct argument set, made
// on first use and kept (thread-safe); NULL + err if oneDNN refuses the shape.
typedef struct sd3_cpu_bf16_mm sd3_cpu_bf16_mm_t;
const sd3_cpu_bf16_mm_t *sd3_cpu_bf16_mm_get(sd3_cpu_bf16_t *self, int64_t M, int64_t K, int64_t N,
                                             int64_t lda, int64_t ldb, bool b_trans, int64_t ldc,
                                             sd3_err_t *err);
// Runs it with one oneDNN thread, from task thread `thread` (its per-thread scratch slot 3 is
// used). Non-zero if oneDNN failed or scratch could not be had.
int sd3_cpu_bf16_mm_run(sd3_backend_t *be, sd3_cpu_bf16_t *self, const sd3_cpu_bf16_mm_t *mm,
                        int thread, const uint16_t *a, const uint16_t *b, float *c);
// f32 -> bf16, round to nearest even (the bits of sd3_f32_to_bf16; NaN -> 0x7fc0), times
// `scale` first (1 for none; exact when a power of two).
void sd3_cpu_bf16_round(const float *src, uint16_t *dst, size_t n, float scale);
// A buffer of n bf16 values held by the backend between calls (attention's q, k, v); *mine
// is set when it is the shared one (give it back with sd3_cpu_bf16_buf_put), else it is a
// fresh allocation (freed by put). NULL if out of memory.
uint16_t *sd3_cpu_bf16_buf_get(sd3_cpu_bf16_t *self, size_t n, bool *mine);
void sd3_cpu_bf16_buf_put(sd3_cpu_bf16_t *self, uint16_t *buf, bool mine);

// The backend's bf16 state (NULL while the backend runs f32). sd3_cpu_backend.c.
sd3_cpu_bf16_t *sd3_cpu_backend_bf16(sd3_backend_t *be);
// The op table's set_precision for the CPU backend. sd3_cpu_backend.c.
int sd3_cpu_set_precision(sd3_backend_t *be, int p, sd3_err_t *err);
