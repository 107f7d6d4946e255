/*  sd3_backend - the op table every stage computes through
 *
 *  A backend is a table of function pointers (one per op) plus its state. Stages call ops
 *  only through it, so one stage runs on the CPU or on CUDA unchanged. The CPU backend
 *  (stages/cpu) is the reference: f32 activations, weights in f32/f16/bf16/f8 widened tile
 *  by tile. The CUDA backend (stages/cuda) keeps bf16 activations on the device.
 *
 *  Conventions for every op:
 *  - Shapes are outermost first. "Rows" means the product of all dims but the last.
 *  - Activations are the backend's activation dtype (`act_dtype`: F32 on CPU). Weights
 *    may be any float dtype the backend `supports`.
 *  - Outputs are allocated by the caller with the right shape (tensor_new); an op checks
 *    shapes and fails with SD3_EINVAL naming both, never writes out of bounds.
 *  - `y` may alias `x` where a comment says "in place ok".
 *  - Ops are deterministic: the same inputs and shapes give the same bits on every call
 *    and every thread count (split-invariance of the pipeline rests on this).
 *  Thread: one backend instance is used by one thread at a time; it may use its own
 *  worker threads inside an op. Except the CPU backend, which may be shared between threads
 *  (`sd3d --role all` runs its three stages on one): its ops take turns on its one pool.  */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "sd3_err.h"
#include "sd3_precision.h"
#include "sd3_tensor.h"

typedef struct sd3_backend sd3_backend_t;

typedef enum {
    SD3_ACT_SILU = 0,   // x * sigmoid(x)
    SD3_ACT_GELU_TANH,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    SD3_ACT_GELU_ERF,   // 0.5 x (1 + erf(x / sqrt(2)))
    SD3_ACT_QUICK_GELU, // x * sigmoid(1.702 x)
} sd3_act_t;

typedef enum {
    SD3_OP_LINEAR = 0,
    SD3_OP_LAYERNORM,
    SD3_OP_RMSNORM,
    SD3_OP_GROUPNORM,
    SD3_OP_ACT,
    SD3_OP_SOFTMAX,
    SD3_OP_ADD,
    SD3_OP_MODULATE,
    SD3_OP_GATE_ADD,
    SD3_OP_ATTENTION,
    SD3_OP_CONV2D,
    SD3_OP_UPSAMPLE2X,
    SD3_OP_COPY2D,
    SD3_OP_COUNT
} sd3_op_t;

// Attention options. q: [B, Lq, H*Dh], k, v: [B, Lk, H*Dh], o: [B, Lq, H*Dh]; head j is
// columns [j*Dh, (j+1)*Dh). o = softmax(scale * q k^T + bias [+ causal mask]) v per head.
typedef struct {
    int n_heads;
    float scale;               // 1/sqrt(Dh) for SD3 and CLIP; 1 for T5
    bool causal;               // key j > query i masked (CLIP)
    const sd3_tensor_t *bias;  // NULL or f32 [H, Lq, Lk] added to the logits (T5)
} sd3_attn_opts_t;

// conv2d padding, in pixels per side: top, left, bottom, right (zeros).
typedef struct {
    int stride;
    int pad_top, pad_left, pad_bottom, pad_right;
} sd3_conv_opts_t;

typedef struct sd3_backend_ops {
    const char *name; // "cpu", "cuda"
    bool (*supports)(sd3_op_t op, sd3_dtype_t weight_dtype);
    void (*destroy)(sd3_backend_t *be);

    // -- memory -----------------------------------------------------------------------
    // New zeroed tensor in the backend's memory (host for cpu). Destroy with tensor_free.
    sd3_tensor_t *(*tensor_new)(sd3_backend_t *be, sd3_dtype_t dtype, int ndim,
                                const int64_t *shape, sd3_err_t *err);
    void (*tensor_free)(sd3_backend_t *be, sd3_tensor_t **t_p);
    // Host -> backend and backend -> host copies of equal shape; converts between f32 and
    // the activation dtype when the two differ.
    int (*upload)(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err);
    int (*download)(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src,
                    sd3_err_t *err);
    // A weight in the form this backend computes with. cpu: returns `host` itself (a view
    // into the mmap); cuda: an uploaded copy owned by the backend. Never a whole f32 copy.
    const sd3_tensor_t *(*weight)(sd3_backend_t *be, const sd3_tensor_t *host, sd3_err_t *err);

    // -- ops --------------------------------------------------------------------------
    // y = x W^T + b.   x: [..., K]   W: [N, K] any float dtype   b: [N] or NULL   y: [..., N]
    int (*linear)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                  const sd3_tensor_t *w, const sd3_tensor_t *b, sd3_err_t *err);
    // Per row over the last dim D: y = (x - mean) / sqrt(var + eps) [* w + b].  w, b: [D] or
    // NULL. In place ok.
    int (*layernorm)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                     const sd3_tensor_t *w, const sd3_tensor_t *b, float eps, sd3_err_t *err);
    // Per row over the last dim D: y = x / sqrt(mean(x^2) + eps) [* w].  w: [D] or NULL.
    // For QK norm, pass x reshaped to [..., H, 64]. In place ok.
    int (*rmsnorm)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                   const sd3_tensor_t *w, float eps, sd3_err_t *err);
    // x, y: [B, C, H, W]; w, b: [C] (affine) or NULL. In place ok.
    int (*groupnorm)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                     const sd3_tensor_t *w, const sd3_tensor_t *b, int groups, float eps,
                     sd3_err_t *err);
    // Elementwise activation, any shape. In place ok.
    int (*act)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_act_t kind,
               sd3_err_t *err);
    // Softmax over the last dim. In place ok.
    int (*softmax)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err);
    // y = a + b, same shapes; or b broadcast over rows when b is [D] and a is [..., D].
    // In place ok (y == a).
    int (*add)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *a, const sd3_tensor_t *b,
               sd3_err_t *err);
    // adaLN modulate: y[b,t,:] = x[b,t,:] * (1 + mod[b, scale_chunk]) + mod[b, shift_chunk].
    //   x, y: [B, T, C]   mod: [B, n*C] (chunk i is columns [i*C, (i+1)*C)).  In place ok.
    int (*modulate)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                    const sd3_tensor_t *mod, int shift_chunk, int scale_chunk, sd3_err_t *err);
    // Gated residual: x[b,t,:] += mod[b, gate_chunk] * y[b,t,:].   x, y: [B, T, C]; mod as above.
    int (*gate_add)(sd3_backend_t *be, sd3_tensor_t *x, const sd3_tensor_t *y,
                    const sd3_tensor_t *mod, int gate_chunk, sd3_err_t *err);
    // Multi-head attention that never materialises the full [Lq, Lk] score matrix.
    int (*attention)(sd3_backend_t *be, sd3_tensor_t *o, const sd3_tensor_t *q,
                     const sd3_tensor_t *k, const sd3_tensor_t *v, const sd3_attn_opts_t *opts,
                     sd3_err_t *err);
    // 2-D convolution.  x: [B, Ci, H, W]  w: [Co, Ci, kh, kw]  b: [Co] or NULL
    // y: [B, Co, (H + pt + pb - kh)/s + 1, (W + pl + pr - kw)/s + 1]
    int (*conv2d)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                  const sd3_tensor_t *w, const sd3_tensor_t *b, const sd3_conv_opts_t *opts,
                  sd3_err_t *err);
    // Nearest-neighbour 2x.  x: [B, C, H, W]  y: [B, C, 2H, 2W]
    int (*upsample2x)(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x, sd3_err_t *err);
    // Block copy between 3-D tensors viewed as [B, rows, cols] (2-D tensors are B = 1):
    //   dst[b, dst_row + r, dst_col + c] = src[b, src_row + r, src_col + c]
    //   for b < B, r < n_rows, c < n_cols. Splits qkv, joins [ctx; x], slices and pads.
    int (*copy2d)(sd3_backend_t *be, sd3_tensor_t *dst, int64_t dst_row, int64_t dst_col,
                  const sd3_tensor_t *src, int64_t src_row, int64_t src_col, int64_t n_rows,
                  int64_t n_cols, sd3_err_t *err);
    // Sets every element to `value`.
    int (*fill)(sd3_backend_t *be, sd3_tensor_t *t, float value, sd3_err_t *err);

    // -- configuration ----------------------------------------------------------------
    // Compute precision of the GEMMs (sd3_precision.h); p = -1: this backend's best. NULL:
    // the backend has one precision (`precision` below). Call before the first op.
    int (*set_precision)(sd3_backend_t *be, int p, sd3_err_t *err);
} sd3_backend_ops_t;

struct sd3_backend {
    const sd3_backend_ops_t *ops;
    sd3_dtype_t act_dtype; // activation dtype: SD3_F32 on cpu, SD3_BF16 on cuda
    int n_threads;         // threads an op runs on (cpu: the pool; cuda: 1 host thread)
    char threads_why[160]; // cpu: how n_threads was chosen ("affinity 2, cgroup v2 cpu.max
                           // 1.50 -> 2", "asked for 4"); "" elsewhere
    // Batch invariance: whether linear gives a row the same bits whatever the other rows of
    // the call (its M). OpenBLAS and cuBLAS pick kernels and tiles by shape, so neither
    // promises it (cpu and cuda: false); a merged batch of requests then runs each linear
    // once per request, and the rest of the block (norms, modulation, attention) once.
    bool linear_batch_invariant;
    sd3_precision_t precision; // of the GEMMs: F32 unless set_precision chose BF16
    void *impl;            // backend-private state
};

// ---- shape checks every backend makes the same way ------------------------------------------
// Messages start with the backend's name ("cpu modulate: ..."); dtype and placement checks
// stay with each backend.

// b has a's shape (dims and sizes); the error names b as `what`.
int sd3_backend_check_same(const char *be_name, const sd3_tensor_t *a, const sd3_tensor_t *b,
                           const char *op, const char *what, sd3_err_t *err);
// x [B, T, C] (or [B, C]: T = 1) against mod [B, n*C] and chunk indices c1, c2 < n.
typedef struct {
    int64_t B, T, C, mod_cols;
} sd3_mod_dims_t;
int sd3_backend_check_mod(const char *be_name, const char *op, const sd3_tensor_t *x,
                          const sd3_tensor_t *mod, int c1, int c2, sd3_mod_dims_t *d,
                          sd3_err_t *err);
// copy2d's block inside dst and src seen as [B, rows, cols] (sd3_tensor_as3, into d and s).
int sd3_backend_check_copy2d(const char *be_name, const sd3_tensor_t *dst, int64_t dst_row,
                             int64_t dst_col, const sd3_tensor_t *src, int64_t src_row,
                             int64_t src_col, int64_t n_rows, int64_t n_cols, int64_t d[3],
                             int64_t s[3], sd3_err_t *err);
// x [B, C, H, W], y [B, C, 2H, 2W], y not aliasing x.
int sd3_backend_check_upsample2x(const char *be_name, const sd3_tensor_t *y,
                                 const sd3_tensor_t *x, sd3_err_t *err);

// Creates a backend by name ("cpu", "cuda"). n_threads 0 = the CPUs this process may use
// (affinity mask and cgroup quota, stages/cpu/sd3_cpu_threads.h), not the online count.
// NULL + err if the name is unknown or not built in ("cuda" without SD3_HAVE_CUDA:
// SD3_ENOTSUP).
sd3_backend_t *sd3_backend_new(const char *name, int n_threads, sd3_err_t *err);
void sd3_backend_destroy(sd3_backend_t **self_p);
// Threads an op runs on (what the node reports); 0 for NULL.
int sd3_backend_threads(const sd3_backend_t *self);
// Why that many, e.g. "affinity 2, cgroup v2 cpu.max 1.50 -> 2" (borrowed; "" when the
// backend does not say, never NULL).
const char *sd3_backend_threads_why(const sd3_backend_t *self);
// Compute precision by name: "f32", "bf16", or NULL/"auto" (bf16 where the backend has a
// fast path for it: cpu with AVX512_BF16; else f32). SD3_EINVAL for an unknown name,
// SD3_ENOTSUP where the backend has no such path. Before the first op (weights converted
// for one precision are not converted back). sd3_precision.c.
int sd3_backend_set_precision(sd3_backend_t *be, const char *name, sd3_err_t *err);
// Names of the built-in backends, comma separated ("cpu" or "cpu,cuda").
const char *sd3_backend_available(void);

// Constructors the registry calls (each backend's own file defines its one).
sd3_backend_t *sd3_cpu_backend_new(int n_threads, sd3_err_t *err);
#ifdef SD3_HAVE_CUDA
sd3_backend_t *sd3_cuda_backend_new(int device, sd3_err_t *err);
#endif
