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
// The backend's bf16 state (NULL while the backend runs f32). sd3_cpu_backend.c.
sd3_cpu_bf16_t *sd3_cpu_backend_bf16(sd3_backend_t *be);
// The op table's set_precision for the CPU backend. sd3_cpu_backend.c.
int sd3_cpu_set_precision(sd3_backend_t *be, int p, sd3_err_t *err);
