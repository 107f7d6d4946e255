/*  sd3_cuda_attention - multi-head attention without the score matrix (flash attention)
 *
 *  o = softmax(scale q k^T + bias [+ causal mask]) v per head; q [B, Lq, H*64], k, v [B, Lk,
 *  H*64], bias f32 [H, Lq, Lk] or NULL, head j = columns [j*64, (j+1)*64).
 *
 *  The fast kernel (head dim 64, bf16 q/k/v/o) is FlashAttention-2 in shape: a block of 4
 *  warps owns 64 query rows of one (batch, head); each warp keeps its 16 rows of q as mma
 *  fragments, and walks the keys 64 at a time through shared memory: S = q k^T with
 *  mma.m16n8k16 (bf16 in, fp32 accumulate), an online softmax in registers (running max and
 *  sum per row, exp2 with log2(e) folded into the scale), then P (rounded to bf16, the one
 *  extra rounding against the reference) times V, V read with ldmatrix.trans. Only one
 *  [64, 64] tile of scores exists at a time, in registers. mma.sync runs on sm_80 and sm_90
 *  alike; on sm_90 a wgmma version would be faster still (not written yet).
 *
 *  Any other head dim (<= 256) or dtype runs a plain kernel: one warp per query row, one key
 *  at a time, fp32 throughout. Both are deterministic: each output row is computed by one
 *  warp in a fixed order.  */
#include <math.h>

#include "sd3_cuda.h"

#define S_D      64  // head dim of the fast kernel
#define S_BQ     64  // query rows per block (4 warps x 16)
#define S_BK     64  // keys per tile
#define S_PAD    72  // shared row stride in bf16: 144 bytes, so 8 rows hit 8 distinct bank quads
#define S_LOG2E  1.4426950408889634f

typedef struct {
    int64_t Lq, Lk, H;
    float scale_log2; // scale * log2(e)
    int causal;
    const void *bias; // [H, Lq, Lk] or NULL
    int bias_dt;
} s_attn_args_t;

static __device__ __forceinline__ void
s_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void
s_ldmatrix_x4_trans(uint32_t r[4], const void *smem)
{
    uint32_t addr = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

static __device__ __forceinline__ uint32_t
s_pack(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); // .x (low half) = lo
    return *(uint32_t *)&v;
}

// rows x 64 bf16 from global (row stride `ld` elements) into shared [64][S_PAD]; rows past
// n_rows are zeros (finite, so 0 * them stays 0).
static __device__ __forceinline__ void
s_load_tile(__nv_bfloat16 (*dst)[S_PAD], const __nv_bfloat16 *src, int64_t ld, int64_t n_rows)
{
    for (int c = threadIdx.x; c < S_BK * (S_D / 8); c += blockDim.x) {
        int r = c >> 3, part = c & 7;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < n_rows)
            v = *(const uint4 *)(src + r * ld + part * 8);
        *(uint4 *)&dst[r][part * 8] = v;
    }
}

// grid (ceil(Lq / 64), H, B), 128 threads.
static __global__ void __launch_bounds__(128)
k_attention_d64(__nv_bfloat16 *o, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                const __nv_bfloat16 *v, s_attn_args_t a)
{
    __shared__ __align__(16) __nv_bfloat16 sQ[S_BQ][S_PAD];
    __shared__ __align__(16) __nv_bfloat16 sK[S_BK][S_PAD];
    __shared__ __align__(16) __nv_bfloat16 sV[S_BK][S_PAD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int64_t h = blockIdx.y, b = blockIdx.z, q0 = (int64_t)blockIdx.x * S_BQ;
    const int64_t ld = a.H * S_D; // row stride of q, k, v, o
    const __nv_bfloat16 *qb = q + (b * a.Lq + q0) * ld + h * S_D;
    const __nv_bfloat16 *kb = k + b * a.Lk * ld + h * S_D;
    const __nv_bfloat16 *vb = v + b * a.Lk * ld + h * S_D;
    const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8; // this thread's two rows
    uint32_t qa[4][4];
    float acc[8][4], m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};

    s_load_tile(sQ, qb, ld, a.Lq - q0);
    __syncthreads();
    #pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        const __nv_bfloat16 *r0 = &sQ[warp * 16 + g][kk * 16 + t * 2];
        const __nv_bfloat16 *r1 = &sQ[warp * 16 + g + 8][kk * 16 + t * 2];
        qa[kk][0] = *(const uint32_t *)r0;
        qa[kk][1] = *(const uint32_t *)r1;
        qa[kk][2] = *(const uint32_t *)(r0 + 8);
        qa[kk][3] = *(const uint32_t *)(r1 + 8);
    }
    #pragma unroll
    for (int i = 0; i < 8; i++)
        acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    int64_t kv_end = a.Lk;
    if (a.causal && kv_end > q0 + S_BQ)
        kv_end = q0 + S_BQ; // later keys are masked for every row of this block
    for (int64_t kv0 = 0; kv0 < kv_end; kv0 += S_BK) {
        float s[8][4];
        __syncthreads(); // every warp is done with the previous tile
        s_load_tile(sK, kb + kv0 * ld, ld, a.Lk - kv0);
        s_load_tile(sV, vb + kv0 * ld, ld, a.Lk - kv0);
        __syncthreads();

        // S = q k^T: [16 rows, 64 keys] per warp as 8 n-tiles of 8 keys
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            #pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                const __nv_bfloat16 *kr = &sK[nt * 8 + g][kk * 16 + t * 2];
                s_mma(s[nt], qa[kk], *(const uint32_t *)kr, *(const uint32_t *)(kr + 8));
            }
        }
        // scale (in log2 units), bias, masks; the row max of this tile
        float mx[2] = {-INFINITY, -INFINITY};
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int64_t row = e < 2 ? row0 : row1, col = kv0 + nt * 8 + t * 2 + (e & 1);
                float x = s[nt][e] * a.scale_log2;
                if (a.bias && row < a.Lq && col < a.Lk)
                    x += sd3_cuda_ld(a.bias, a.bias_dt, (h * a.Lq + row) * a.Lk + col) * S_LOG2E;
                if (col >= a.Lk || (a.causal && col > row))
                    x = -INFINITY;
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        }
        float alpha[2], ref[2];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float m_new = fmaxf(m_run[r], mx[r]);
            ref[r] = m_new == -INFINITY ? 0.0f : m_new; // a row masked so far: p = 0
            alpha[r] = exp2f(m_run[r] - ref[r]);
            m_run[r] = m_new;
            l_run[r] *= alpha[r];
        }
        #pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float p = exp2f(s[nt][e] - ref[e >> 1]);
                s[nt][e] = p;
                l_run[e >> 1] += p; // this thread's columns; summed over the quad at the end
            }
            acc[nt][0] *= alpha[0];
            acc[nt][1] *= alpha[0];
            acc[nt][2] *= alpha[1];
            acc[nt][3] *= alpha[1];
        }
        // O += P V: P [16, 64 keys] as A fragments straight from the S accumulators
        #pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t pa[4] = {s_pack(s[2 * kk][0], s[2 * kk][1]),
                              s_pack(s[2 * kk][2], s[2 * kk][3]),
                              s_pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              s_pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            #pragma unroll
            for (int dp = 0; dp < 4; dp++) {
                // matrices: keys +0..7 / +8..15 of this k-step, dims +0..7 / +8..15 of dp
                uint32_t vb4[4];
                int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                int dim = dp * 16 + (lane >> 4) * 8;
                s_ldmatrix_x4_trans(vb4, &sV[key][dim]);
                s_mma(acc[2 * dp], pa, vb4[0], vb4[1]);
                s_mma(acc[2 * dp + 1], pa, vb4[2], vb4[3]);
            }
        }
    }
    // finish: full row sums over the quad, divide, store bf16 pairs
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
        l_run[r] = l_run[r] > 0.0f ? 1.0f / l_run[r] : 0.0f; // a fully masked row gives 0
    }
    #pragma unroll
    for (int nt = 0; nt < 8; nt++) {
        int dim = nt * 8 + t * 2;
        if (row0 < a.Lq)
            *(__nv_bfloat162 *)(o + (b * a.Lq + row0) * ld + h * S_D + dim) =
                __floats2bfloat162_rn(acc[nt][0] * l_run[0], acc[nt][1] * l_run[0]);
        if (row1 < a.Lq)
            *(__nv_bfloat162 *)(o + (b * a.Lq + row1) * ld + h * S_D + dim) =
                __floats2bfloat162_rn(acc[nt][2] * l_run[1], acc[nt][3] * l_run[1]);
    }
}

// The plain kernel: grid (ceil(Lq / 4), H, B), 4 warps, one query row per warp, Dh <= 256.
static __global__ void __launch_bounds__(128)
k_attention_any(void *o, int odt, const void *q, int qdt, const void *k, int kdt, const void *v,
                int vdt, s_attn_args_t a, int Dh)
{
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * 4 + (threadIdx.x >> 5), h = blockIdx.y,
                  b = blockIdx.z, ld = a.H * Dh;
    if (row >= a.Lq)
        return;
    float qv[8], acc[8], m_run = -INFINITY, l_run = 0.0f;
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        qv[i] = d < Dh ? sd3_cuda_ld(q, qdt, (b * a.Lq + row) * ld + h * Dh + d) : 0.0f;
        acc[i] = 0.0f;
    }
    int64_t kv_end = a.causal && row + 1 < a.Lk ? row + 1 : a.Lk;
    for (int64_t j = 0; j < kv_end; j++) {
        float dot = 0.0f;
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            if (d < Dh)
                dot += qv[i] * sd3_cuda_ld(k, kdt, (b * a.Lk + j) * ld + h * Dh + d);
        }
        for (int off = 16; off > 0; off >>= 1)
            dot += __shfl_xor_sync(0xffffffffu, dot, off);
        float x = dot * a.scale_log2;
        if (a.bias)
            x += sd3_cuda_ld(a.bias, a.bias_dt, (h * a.Lq + row) * a.Lk + j) * S_LOG2E;
        float m_new = fmaxf(m_run, x);
        if (m_new == -INFINITY)
            continue; // -inf bias: this key contributes nothing
        float alpha = exp2f(m_run - m_new), p = exp2f(x - m_new);
        l_run = l_run * alpha + p;
        for (int i = 0; i < 8; i++) {
            int d = lane + 32 * i;
            float vv = d < Dh ? sd3_cuda_ld(v, vdt, (b * a.Lk + j) * ld + h * Dh + d) : 0.0f;
            acc[i] = acc[i] * alpha + p * vv;
        }
        m_run = m_new;
    }
    float inv = l_run > 0.0f ? 1.0f / l_run : 0.0f;
    for (int i = 0; i < 8; i++) {
        int d = lane + 32 * i;
        if (d < Dh)
            sd3_cuda_st(o, odt, (b * a.Lq + row) * ld + h * Dh + d, acc[i] * inv);
    }
}

int
sd3_cuda_attention(sd3_backend_t *be, sd3_tensor_t *o, const sd3_tensor_t *q,
                   const sd3_tensor_t *k, const sd3_tensor_t *v, const sd3_attn_opts_t *opts,
                   sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    char sq[96], sk[96], sv[96], so[96];
    s_attn_args_t a;
    int64_t B, Lq, Lk, HD, H, Dh;
    bool fast;
    if (!opts)
        return sd3_err_set(err, SD3_EINVAL, "cuda attention: missing options");
    if (sd3_cuda_check(q, "attention", "q", err) || sd3_cuda_check(k, "attention", "k", err) ||
        sd3_cuda_check(v, "attention", "v", err) || sd3_cuda_check(o, "attention", "o", err))
        return SD3_EINVAL;
    H = opts->n_heads;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || o->ndim != 3 || H <= 0 ||
        q->shape[2] % H != 0 || k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0] ||
        k->shape[2] != q->shape[2] || v->shape[2] != q->shape[2] ||
        v->shape[1] != k->shape[1] || sd3_cuda_check_same(q, o, "attention", "o", err) != 0)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda attention: q %s, k %s, v %s, o %s, %d heads: want q, o [B, Lq, "
                           "H*Dh], k, v [B, Lk, H*Dh]",
                           sd3_shape_str(q->ndim, q->shape, sq, sizeof sq),
                           sd3_shape_str(k->ndim, k->shape, sk, sizeof sk),
                           sd3_shape_str(v->ndim, v->shape, sv, sizeof sv),
                           sd3_shape_str(o->ndim, o->shape, so, sizeof so), opts->n_heads);
    B = q->shape[0];
    Lq = q->shape[1];
    Lk = k->shape[1];
    HD = q->shape[2];
    Dh = HD / H;
    if (opts->bias) {
        const sd3_tensor_t *bias = opts->bias;
        if (sd3_cuda_check(bias, "attention", "bias", err))
            return SD3_EINVAL;
        if (bias->ndim != 3 || bias->shape[0] != H || bias->shape[1] != Lq ||
            bias->shape[2] != Lk)
            return sd3_err_set(err, SD3_EINVAL, "cuda attention: bias %s, want [%lld,%lld,%lld]",
                               sd3_shape_str(bias->ndim, bias->shape, sq, sizeof sq),
                               (long long)H, (long long)Lq, (long long)Lk);
    }
    if (Dh > 256)
        return sd3_err_set(err, SD3_ENOTSUP, "cuda attention: head dim %lld (max 256)",
                           (long long)Dh);
    if (B == 0 || Lq == 0 || HD == 0)
        return 0;
    if (o->data == q->data || o->data == k->data || o->data == v->data)
        return sd3_err_set(err, SD3_EINVAL, "cuda attention: o must not alias q, k or v");
    if (B > 65535 || H > 65535 || (Lq + 3) / 4 > 0x7fffffff)
        return sd3_err_set(err, SD3_EINVAL, "cuda attention: B %lld, H %lld, Lq %lld too large",
                           (long long)B, (long long)H, (long long)Lq);
    a.Lq = Lq;
    a.Lk = Lk;
    a.H = H;
    a.scale_log2 = opts->scale * S_LOG2E;
    a.causal = opts->causal ? 1 : 0;
    a.bias = opts->bias ? opts->bias->data : NULL;
    a.bias_dt = opts->bias ? (int)opts->bias->dtype : 0;
    fast = Dh == S_D && q->dtype == SD3_BF16 && k->dtype == SD3_BF16 && v->dtype == SD3_BF16 &&
           o->dtype == SD3_BF16 && ((uintptr_t)q->data | (uintptr_t)k->data |
                                    (uintptr_t)v->data | (uintptr_t)o->data) % 16 == 0;
    if (fast) {
        dim3 grid((unsigned)((Lq + S_BQ - 1) / S_BQ), (unsigned)H, (unsigned)B);
        k_attention_d64<<<grid, 128, 0, cu->stream>>>(
            (__nv_bfloat16 *)o->data, (const __nv_bfloat16 *)q->data,
            (const __nv_bfloat16 *)k->data, (const __nv_bfloat16 *)v->data, a);
    } else {
        dim3 grid((unsigned)((Lq + 3) / 4), (unsigned)H, (unsigned)B);
        k_attention_any<<<grid, 128, 0, cu->stream>>>(o->data, o->dtype, q->data, q->dtype,
                                                      k->data, k->dtype, v->data, v->dtype, a,
                                                      (int)Dh);
    }
    SD3_CUDA_LAUNCHED(err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}
