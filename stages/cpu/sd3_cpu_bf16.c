/*  sd3_cpu_bf16 - bf16 GEMMs of the CPU backend through oneDNN (see sd3_cpu_bf16.h)
 *
 *    y [M, N] f32 = bf16(x) [M, K] . Wp [K, N] bf16 (packed) + b,   f32 accumulation
 *
 *  Why oneDNN: its matmul reaches the machine's bf16 peak (AMX tiles where the CPU has
 *  them, AVX512_BF16 otherwise) and reads weights in a blocked layout we pack once. What we
 *  keep for ourselves: the tiling (fixed MT x NT tiles, one oneDNN thread per tile, tails
 *  padded), so the bits never depend on how many threads run or which rows share a call.
 *  oneDNN runs on OpenMP (the Debian build); each of our pool threads asks OpenMP for a
 *  team of one before it calls in, so there is still one level of parallelism: ours.  */
#include "sd3_cpu_bf16.h"

#include "sd3_cpu.h"
#include "sd3_cpu_simd.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SD3_BF16_MG 4 // M tiles per task: the weight tile stays in L2 across them

// One primitive shape: [MT, K] bf16 x [K, nn] (packed) -> [MT, nn] f32, and the reorder
// that packs a [K, nn] bf16 weight tile (stored as W's rows: strides {1, K}) for it.
typedef struct {
    int64_t K, nn;
    dnnl_primitive_t mm, pack;
    dnnl_memory_desc_t src_md, wei_md, dst_md, plain_md;
    size_t wei_bytes, mm_scratch, pack_scratch; // bytes
} s_prim_t;

// A weight packed for the primitives: tile j (columns [j NT, j NT + nn)) at j * tile_bytes.
typedef struct s_packed {
    const void *data; // the source's data pointer, dtype, shape and a sample of its bytes
    sd3_dtype_t dtype;
    int64_t N, K;
    uint64_t fingerprint;
    void *buf;
    size_t bytes, tile_bytes;
    s_prim_t *full, *tail; // tail: the last tile when N % NT != 0, else NULL
    struct s_packed *next;
} s_packed_t;

struct sd3_cpu_bf16 {
    dnnl_engine_t engine;
    int n_streams;
    dnnl_stream_t *streams; // one per pool thread (a stream is not shared between threads)
    char impl[64];          // oneDNN's name of the matmul kernel ("brg:avx512_core_amx_bf16")
    pthread_mutex_t mu;     // prims, packed, packed_bytes (held across a packing pool run)
    pthread_mutex_t mmu;    // mms: taken inside pool tasks (attention), so never mu there:
                            // mu is held across sd3_cpu_pool_run, whose run lock a task's
                            // caller holds (one backend shared by threads: a lock cycle)
    s_prim_t **prims;
    int n_prims, cap_prims;
    s_packed_t *packed;
    size_t packed_bytes;
    pthread_mutex_t xmu; // xbuf: the activations in bf16, reused between calls
    uint16_t *xbuf;
    size_t xcap; // elements
    pthread_mutex_t amu; // abuf: attention's q, k, v in bf16
    uint16_t *abuf;
    size_t acap;
    struct sd3_cpu_bf16_mm **mms; // plain GEMM primitives (under mmu)
    int n_mms, cap_mms;
};

struct sd3_cpu_bf16_mm {
    int64_t M, K, N, lda, ldb, ldc;
    bool b_trans;
    dnnl_primitive_t prim;
    dnnl_memory_desc_t a_md, b_md, c_md;
    size_t scratch; // bytes
};

// ---- f32 -> bf16, round to nearest even (the bits of sd3_f32_to_bf16) -------------------------

static void
s_round_bf16(const float *src, uint16_t *dst, size_t n)
{
    sd3_cpu_bf16_round(src, dst, n, 1.0f);
}

void
sd3_cpu_bf16_round(const float *src, uint16_t *dst, size_t n, float scale)
{
    size_t i = 0;
#if SD3_CPU_AVX512
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1);
    const __m512i qnan = _mm512_set1_epi32(0x7fc0);
    const __m512 vscale = _mm512_set1_ps(scale);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(src + i), vscale);
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, lsb)), 16);
        r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(r));
    }
#endif
    for (; i < n; i++)
        dst[i] = sd3_f32_to_bf16(src[i] * scale);
}

// Any weight dtype -> bf16 (through exact f32), in chunks on the stack.
static void
s_to_bf16(sd3_dtype_t dtype, const void *src, uint16_t *dst, size_t n)
{
    float tmp[1024];
    size_t esz = sd3_dtype_size(dtype);
    for (size_t i = 0; i < n; i += 1024) {
        size_t k = n - i < 1024 ? n - i : 1024;
        sd3_cpu_widen(dtype, (const char *)src + i * esz, tmp, k);
        s_round_bf16(tmp, dst + i, k);
    }
}

// ---- state --------------------------------------------------------------------------------

#define S_TRY(expr, what)                                                                      \
    do {                                                                                       \
        dnnl_status_t st_ = (expr);                                                            \
        if (st_ != dnnl_success) {                                                             \
            sd3_err_set(err, st_ == dnnl_out_of_memory ? SD3_ENOMEM : SD3_ENOTSUP,             \
                        "cpu bf16: %s failed (oneDNN status %d)", what, (int)st_);             \
            goto fail;                                                                         \
        }                                                                                      \
    } while (0)

static void
s_prim_destroy(s_prim_t **p_p)
{
    s_prim_t *p = *p_p;
    if (!p)
        return;
    if (p->mm)
        dnnl_primitive_destroy(p->mm);
    if (p->pack)
        dnnl_primitive_destroy(p->pack);
    free(p);
    *p_p = NULL;
}

// Creates the primitives of one tile shape. Called under mu.
static s_prim_t *
s_prim_new(sd3_cpu_bf16_t *self, int64_t K, int64_t nn, sd3_err_t *err)
{
    s_prim_t *p = calloc(1, sizeof *p);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_memory_desc_t wany;
    if (!p) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
        return NULL;
    }
    p->K = K;
    p->nn = nn;
    dnnl_dims_t sd = {SD3_BF16_MT, K}, wd = {K, nn}, dd = {SD3_BF16_MT, nn}, ps = {1, K};
    S_TRY(dnnl_memory_desc_init_by_tag(&p->src_md, 2, sd, dnnl_bf16, dnnl_ab), "src desc");
    S_TRY(dnnl_memory_desc_init_by_tag(&wany, 2, wd, dnnl_bf16, dnnl_format_tag_any), "w desc");
    S_TRY(dnnl_memory_desc_init_by_tag(&p->dst_md, 2, dd, dnnl_f32, dnnl_ab), "dst desc");
    S_TRY(dnnl_memory_desc_init_by_strides(&p->plain_md, 2, wd, dnnl_bf16, ps), "plain desc");
    dnnl_matmul_desc_t mdesc;
    S_TRY(dnnl_matmul_desc_init(&mdesc, &p->src_md, &wany, NULL, &p->dst_md), "matmul desc");
    S_TRY(dnnl_primitive_attr_create(&attr), "attr");
    S_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "attr");
    S_TRY(dnnl_primitive_desc_create(&pd, &mdesc, attr, self->engine, NULL), "matmul");
    p->wei_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    p->wei_bytes = dnnl_memory_desc_get_size(&p->wei_md);
    p->mm_scratch =
        dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    S_TRY(dnnl_primitive_create(&p->mm, pd), "matmul primitive");
    S_TRY(dnnl_reorder_primitive_desc_create(&rpd, &p->plain_md, self->engine, &p->wei_md,
                                             self->engine, attr),
          "weight reorder");
    p->pack_scratch =
        dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(rpd, dnnl_query_scratchpad_md, 0));
    S_TRY(dnnl_primitive_create(&p->pack, rpd), "weight reorder primitive");
    if (!self->impl[0]) {
        const char *impl = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
            impl)
            snprintf(self->impl, sizeof self->impl, "%s", impl);
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(rpd);
    dnnl_primitive_attr_destroy(attr);
    return p;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    s_prim_destroy(&p);
    return NULL;
}

// The primitives of (K, nn), made on first use. Called under mu.
static s_prim_t *
s_prim_get(sd3_cpu_bf16_t *self, int64_t K, int64_t nn, sd3_err_t *err)
{
    for (int i = 0; i < self->n_prims; i++)
        if (self->prims[i]->K == K && self->prims[i]->nn == nn)
            return self->prims[i];
    if (self->n_prims == self->cap_prims) {
        int cap = self->cap_prims ? 2 * self->cap_prims : 16;
        s_prim_t **np = realloc(self->prims, (size_t)cap * sizeof *np);
        if (!np) {
            sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
            return NULL;
        }
        self->prims = np;
        self->cap_prims = cap;
    }
    s_prim_t *p = s_prim_new(self, K, nn, err);
    if (p)
        self->prims[self->n_prims++] = p;
    return p;
}

bool
sd3_cpu_bf16_fast(void)
{
#if defined(__GNUC__) && (__GNUC__ >= 11 || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

sd3_cpu_bf16_t *
sd3_cpu_bf16_new(int n_threads, sd3_err_t *err)
{
    sd3_cpu_bf16_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
        return NULL;
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_mutex_init(&self->mmu, NULL);
    pthread_mutex_init(&self->xmu, NULL);
    pthread_mutex_init(&self->amu, NULL);
    self->n_streams = n_threads < 1 ? 1 : n_threads;
    if (!(self->streams = calloc((size_t)self->n_streams, sizeof *self->streams))) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
        goto fail;
    }
    S_TRY(dnnl_engine_create(&self->engine, dnnl_cpu, 0), "CPU engine");
    for (int i = 0; i < self->n_streams; i++)
        S_TRY(dnnl_stream_create(&self->streams[i], self->engine, dnnl_stream_default_flags),
              "stream");
    // A probe shape: refuse a CPU where oneDNN has only its reference loops for bf16.
    if (!s_prim_get(self, 64, 64, err))
        goto fail;
    if (!strncmp(self->impl, "ref", 3)) {
        sd3_err_set(err, SD3_ENOTSUP,
                    "cpu bf16: this CPU has no bf16 matmul kernel in oneDNN (only '%s'); "
                    "use --precision f32",
                    self->impl);
        goto fail;
    }
    return self;
fail:
    sd3_cpu_bf16_destroy(&self);
    return NULL;
}

void
sd3_cpu_bf16_destroy(sd3_cpu_bf16_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_cpu_bf16_t *self = *self_p;
    for (s_packed_t *k = self->packed, *next; k; k = next) {
        next = k->next;
        free(k->buf);
        free(k);
    }
    for (int i = 0; i < self->n_prims; i++)
        s_prim_destroy(&self->prims[i]);
    free(self->prims);
    if (self->streams)
        for (int i = 0; i < self->n_streams; i++)
            if (self->streams[i])
                dnnl_stream_destroy(self->streams[i]);
    free(self->streams);
    if (self->engine)
        dnnl_engine_destroy(self->engine);
    for (int i = 0; i < self->n_mms; i++) {
        dnnl_primitive_destroy(self->mms[i]->prim);
        free(self->mms[i]);
    }
    free(self->mms);
    free(self->xbuf);
    free(self->abuf);
    pthread_mutex_destroy(&self->mu);
    pthread_mutex_destroy(&self->mmu);
    pthread_mutex_destroy(&self->xmu);
    pthread_mutex_destroy(&self->amu);
    free(self);
    *self_p = NULL;
}

size_t
sd3_cpu_bf16_packed_bytes(const sd3_cpu_bf16_t *self)
{
    return self ? self->packed_bytes : 0;
}

const char *
sd3_cpu_bf16_impl(const sd3_cpu_bf16_t *self)
{
    return self ? self->impl : "";
}

// ---- packing --------------------------------------------------------------------------------

// 8 samples of 8 bytes, spread over the tensor: a weight whose buffer was refilled in place
// (tests do) or freed and reallocated at the same address is packed again.
static uint64_t
s_fingerprint(const void *data, size_t bytes)
{
    uint64_t h = 1469598103934665603ull ^ bytes;
    const unsigned char *p = data;
    for (int i = 0; i < 8; i++) {
        size_t at = bytes >= 8 ? (bytes - 8) / 7 * (size_t)i : 0, n = bytes < 8 ? bytes : 8;
        for (size_t j = 0; j < n; j++)
            h = (h ^ p[at + j]) * 1099511628211ull;
    }
    return h;
}

typedef struct {
    sd3_cpu_bf16_t *self;
    s_packed_t *pk;
    atomic_bool failed;
} s_pack_job_t;

static void
s_pack_task(void *ctx, int64_t j, int thread)
{
    s_pack_job_t *job = ctx;
    s_packed_t *pk = job->pk;
    int64_t n0 = j * SD3_BF16_NT, nn = pk->N - n0 < SD3_BF16_NT ? pk->N - n0 : SD3_BF16_NT;
    s_prim_t *p = nn == SD3_BF16_NT ? pk->full : pk->tail;
    size_t esz = sd3_dtype_size(pk->dtype);
    uint16_t *plain = malloc((size_t)(nn * pk->K) * 2);
    void *scratch = p->pack_scratch ? malloc(p->pack_scratch) : NULL;
    dnnl_memory_t ms = NULL, md = NULL, msc = NULL;
    if (!plain || (p->pack_scratch && !scratch))
        goto fail;
    s_to_bf16(pk->dtype, (const char *)pk->data + (size_t)(n0 * pk->K) * esz, plain,
              (size_t)(nn * pk->K));
    omp_set_num_threads(1);
    if (dnnl_memory_create(&ms, &p->plain_md, job->self->engine, plain) != dnnl_success ||
        dnnl_memory_create(&md, &p->wei_md, job->self->engine,
                           (char *)pk->buf + (size_t)j * pk->tile_bytes) != dnnl_success)
        goto fail;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, ms}, {DNNL_ARG_TO, md}};
    int nargs = 2;
    if (p->pack_scratch) {
        dnnl_memory_desc_t sdesc;
        dnnl_dims_t sdim = {(int64_t)p->pack_scratch};
        if (dnnl_memory_desc_init_by_tag(&sdesc, 1, sdim, dnnl_u8, dnnl_a) != dnnl_success ||
            dnnl_memory_create(&msc, &sdesc, job->self->engine, scratch) != dnnl_success)
            goto fail;
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, msc};
    }
    if (dnnl_primitive_execute(p->pack, job->self->streams[thread], nargs, args) != dnnl_success ||
        dnnl_stream_wait(job->self->streams[thread]) != dnnl_success)
        goto fail;
    goto done;
fail:
    atomic_store(&job->failed, true);
done:
    if (ms)
        dnnl_memory_destroy(ms);
    if (md)
        dnnl_memory_destroy(md);
    if (msc)
        dnnl_memory_destroy(msc);
    free(scratch);
    free(plain);
}

// Hands the source's whole pages back to the kernel: a mapped file's pages leave this
// process (the packed copy is what stays resident, not both); anonymous memory is kept
// (PAGEOUT only swaps it, never loses it).
static void
s_pageout(const void *data, size_t bytes)
{
#ifdef MADV_PAGEOUT
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t pg = page > 0 ? (uintptr_t)page : 4096;
    uintptr_t a = (uintptr_t)data, b = a + bytes;
    uintptr_t lo = (a + pg - 1) / pg * pg, hi = b / pg * pg;
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_PAGEOUT);
#else
    (void)data;
    (void)bytes;
#endif
}

// The packed form of w, packing it on first use. Called under mu.
static s_packed_t *
s_packed_get(sd3_backend_t *be, sd3_cpu_bf16_t *self, const sd3_tensor_t *w, sd3_err_t *err)
{
    int64_t N = w->shape[0], K = w->shape[1];
    size_t bytes = sd3_tensor_nbytes(w);
    uint64_t fp = s_fingerprint(w->data, bytes);
    s_packed_t **at = &self->packed;
    for (s_packed_t *k = self->packed; k; at = &k->next, k = k->next) {
        if (k->data != w->data)
            continue;
        if (k->dtype == w->dtype && k->N == N && k->K == K && k->fingerprint == fp)
            return k;
        *at = k->next; // the same address now holds another weight: forget the old one
        self->packed_bytes -= k->bytes;
        free(k->buf);
        free(k);
        break;
    }
    s_packed_t *pk = calloc(1, sizeof *pk);
    if (!pk) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
        return NULL;
    }
    *pk = (s_packed_t){.data = w->data, .dtype = w->dtype, .N = N, .K = K, .fingerprint = fp};
    int64_t n_full = N / SD3_BF16_NT, tail = N % SD3_BF16_NT;
    if ((n_full && !(pk->full = s_prim_get(self, K, SD3_BF16_NT, err))) ||
        (tail && !(pk->tail = s_prim_get(self, K, tail, err))))
        goto fail;
    pk->tile_bytes = pk->full ? (pk->full->wei_bytes + 63) / 64 * 64 : 0;
    pk->bytes = (size_t)n_full * pk->tile_bytes + (pk->tail ? pk->tail->wei_bytes : 0);
    if (!(pk->buf = aligned_alloc(64, (pk->bytes + 63) / 64 * 64))) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory packing '%s' (%zu bytes)",
                    w->name ? w->name : "?", pk->bytes);
        goto fail;
    }
    s_pack_job_t job = {.self = self, .pk = pk};
    atomic_init(&job.failed, false);
    sd3_cpu_pool_run(sd3_cpu_backend_pool(be), n_full + (tail ? 1 : 0), s_pack_task, &job);
    if (atomic_load(&job.failed)) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: packing '%s' failed (out of memory?)",
                    w->name ? w->name : "?");
        goto fail;
    }
    s_pageout(w->data, bytes);
    pk->next = self->packed;
    self->packed = pk;
    self->packed_bytes += pk->bytes;
    return pk;
fail:
    free(pk->buf);
    free(pk);
    return NULL;
}

// ---- the GEMM -------------------------------------------------------------------------------

typedef struct {
    sd3_backend_t *be;
    sd3_cpu_bf16_t *self;
    const s_packed_t *pk;
    const float *x;     // [M, K] f32
    uint16_t *xb;       // [n_mt MT, K] bf16, rows past M zero
    const float *bias;  // [N] or NULL
    float *y;           // [M, N]
    int64_t M, N, K, n_mt, n_mg;
    atomic_bool failed;
} s_job_t;

// Rows [t MT, (t+1) MT) of x to bf16 (zeros past M).
static void
s_convert_task(void *ctx, int64_t t, int thread)
{
    (void)thread;
    s_job_t *job = ctx;
    for (int64_t m = t * SD3_BF16_MT; m < (t + 1) * SD3_BF16_MT; m++) {
        uint16_t *row = job->xb + m * job->K;
        if (m < job->M)
            s_round_bf16(job->x + m * job->K, row, (size_t)job->K);
        else
            memset(row, 0, (size_t)job->K * 2);
    }
}

static void
s_gemm_task(void *ctx, int64_t task, int thread)
{
    s_job_t *job = ctx;
    const s_packed_t *pk = job->pk;
    int64_t j = task / job->n_mg, g = task % job->n_mg;
    int64_t n0 = j * SD3_BF16_NT, nn = job->N - n0 < SD3_BF16_NT ? job->N - n0 : SD3_BF16_NT;
    const s_prim_t *p = nn == SD3_BF16_NT ? pk->full : pk->tail;
    dnnl_engine_t eng = job->self->engine;
    dnnl_memory_t ms = NULL, mw = NULL, md = NULL, msc = NULL;
    float *tile = sd3_cpu_scratch(job->be, thread, 2, (size_t)(SD3_BF16_MT * SD3_BF16_NT));
    float *scratch = p->mm_scratch ? sd3_cpu_scratch(job->be, thread, 3, p->mm_scratch / 4 + 1)
                                   : NULL;
    if (!tile || (p->mm_scratch && !scratch))
        goto fail;
    omp_set_num_threads(1); // one oneDNN thread per tile: our pool is the parallelism
    if (dnnl_memory_create(&ms, &p->src_md, eng, job->xb) != dnnl_success ||
        dnnl_memory_create(&mw, &p->wei_md, eng, (char *)pk->buf + (size_t)j * pk->tile_bytes) !=
            dnnl_success ||
        dnnl_memory_create(&md, &p->dst_md, eng, tile) != dnnl_success)
        goto fail;
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}};
    int nargs = 3;
    if (scratch) {
        dnnl_memory_desc_t sdesc;
        dnnl_dims_t sdim = {(int64_t)p->mm_scratch};
        if (dnnl_memory_desc_init_by_tag(&sdesc, 1, sdim, dnnl_u8, dnnl_a) != dnnl_success ||
            dnnl_memory_create(&msc, &sdesc, eng, scratch) != dnnl_success)
            goto fail;
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, msc};
    }
    dnnl_stream_t stream = job->self->streams[thread];
    int64_t t1 = (g + 1) * SD3_BF16_MG < job->n_mt ? (g + 1) * SD3_BF16_MG : job->n_mt;
    for (int64_t t = g * SD3_BF16_MG; t < t1; t++) {
        int64_t m0 = t * SD3_BF16_MT, rows = job->M - m0 < SD3_BF16_MT ? job->M - m0 : SD3_BF16_MT;
        if (dnnl_memory_set_data_handle(ms, job->xb + m0 * job->K) != dnnl_success ||
            dnnl_primitive_execute(p->mm, stream, nargs, args) != dnnl_success ||
            dnnl_stream_wait(stream) != dnnl_success)
            goto fail;
        for (int64_t i = 0; i < rows; i++) {
            float *yr = job->y + (m0 + i) * job->N + n0;
            const float *tr = tile + i * nn;
            if (job->bias)
                for (int64_t c = 0; c < nn; c++)
                    yr[c] = tr[c] + job->bias[n0 + c];
            else
                memcpy(yr, tr, (size_t)nn * sizeof(float));
        }
    }
    goto done;
fail:
    atomic_store(&job->failed, true);
done:
    if (ms)
        dnnl_memory_destroy(ms);
    if (mw)
        dnnl_memory_destroy(mw);
    if (md)
        dnnl_memory_destroy(md);
    if (msc)
        dnnl_memory_destroy(msc);
}

int
sd3_cpu_linear_bf16(sd3_backend_t *be, sd3_cpu_bf16_t *self, sd3_tensor_t *y,
                    const sd3_tensor_t *x, const sd3_tensor_t *w, const float *bias,
                    sd3_err_t *err)
{
    int64_t M = sd3_tensor_rows(x), K = sd3_tensor_cols(x), N = w->shape[0];
    pthread_mutex_lock(&self->mu);
    const s_packed_t *pk = s_packed_get(be, self, w, err);
    pthread_mutex_unlock(&self->mu);
    if (!pk)
        return err && err->code ? err->code : SD3_ENOMEM;
    int64_t n_mt = (M + SD3_BF16_MT - 1) / SD3_BF16_MT;
    size_t need = (size_t)(n_mt * SD3_BF16_MT * K);
    // The cached activation buffer, or (another thread holds it) one of our own.
    uint16_t *xb = NULL, *own = NULL;
    bool locked = pthread_mutex_trylock(&self->xmu) == 0;
    if (locked) {
        if (self->xcap < need) {
            free(self->xbuf);
            self->xcap = 0;
            if ((self->xbuf = aligned_alloc(64, (need * 2 + 63) / 64 * 64)))
                self->xcap = need;
        }
        xb = self->xbuf;
    } else {
        xb = own = aligned_alloc(64, (need * 2 + 63) / 64 * 64);
    }
    int rc = 0;
    if (!xb) {
        rc = sd3_err_set(err, SD3_ENOMEM, "cpu linear bf16: out of memory (%zu bytes)", need * 2);
        goto done;
    }
    s_job_t job = {.be = be,
                   .self = self,
                   .pk = pk,
                   .x = x->data,
                   .xb = xb,
                   .bias = bias,
                   .y = y->data,
                   .M = M,
                   .N = N,
                   .K = K,
                   .n_mt = n_mt,
                   .n_mg = (n_mt + SD3_BF16_MG - 1) / SD3_BF16_MG};
    atomic_init(&job.failed, false);
    sd3_cpu_pool_t *pool = sd3_cpu_backend_pool(be);
    sd3_cpu_pool_run(pool, n_mt, s_convert_task, &job);
    int64_t n_nt = (N + SD3_BF16_NT - 1) / SD3_BF16_NT;
    sd3_cpu_pool_run(pool, n_nt * job.n_mg, s_gemm_task, &job);
    if (atomic_load(&job.failed))
        rc = sd3_err_set(err, SD3_ENOMEM, "cpu linear bf16: a tile failed (out of memory?)");
done:
    if (locked)
        pthread_mutex_unlock(&self->xmu);
    free(own);
    return rc;
}

// ---- plain GEMMs (attention) -----------------------------------------------------------------

const sd3_cpu_bf16_mm_t *
sd3_cpu_bf16_mm_get(sd3_cpu_bf16_t *self, int64_t M, int64_t K, int64_t N, int64_t lda,
                    int64_t ldb, bool b_trans, int64_t ldc, sd3_err_t *err)
{
    sd3_cpu_bf16_mm_t *mm = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    pthread_mutex_lock(&self->mmu);
    for (int i = 0; i < self->n_mms; i++) {
        sd3_cpu_bf16_mm_t *c = self->mms[i];
        if (c->M == M && c->K == K && c->N == N && c->lda == lda && c->ldb == ldb &&
            c->ldc == ldc && c->b_trans == b_trans) {
            pthread_mutex_unlock(&self->mmu);
            return c;
        }
    }
    if (self->n_mms == self->cap_mms) {
        int cap = self->cap_mms ? 2 * self->cap_mms : 16;
        sd3_cpu_bf16_mm_t **nm = realloc(self->mms, (size_t)cap * sizeof *nm);
        if (!nm) {
            sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
            goto fail;
        }
        self->mms = nm;
        self->cap_mms = cap;
    }
    if (!(mm = calloc(1, sizeof *mm))) {
        sd3_err_set(err, SD3_ENOMEM, "cpu bf16: out of memory");
        goto fail;
    }
    *mm = (sd3_cpu_bf16_mm_t){
        .M = M, .K = K, .N = N, .lda = lda, .ldb = ldb, .ldc = ldc, .b_trans = b_trans};
    dnnl_dims_t ad = {M, K}, as = {lda, 1}, bd = {K, N}, cd = {M, N}, cs = {ldc, 1};
    dnnl_dims_t bs = {b_trans ? 1 : ldb, b_trans ? ldb : 1};
    S_TRY(dnnl_memory_desc_init_by_strides(&mm->a_md, 2, ad, dnnl_bf16, as), "A desc");
    S_TRY(dnnl_memory_desc_init_by_strides(&mm->b_md, 2, bd, dnnl_bf16, bs), "B desc");
    S_TRY(dnnl_memory_desc_init_by_strides(&mm->c_md, 2, cd, dnnl_f32, cs), "C desc");
    dnnl_matmul_desc_t mdesc;
    S_TRY(dnnl_matmul_desc_init(&mdesc, &mm->a_md, &mm->b_md, NULL, &mm->c_md), "matmul desc");
    S_TRY(dnnl_primitive_attr_create(&attr), "attr");
    S_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "attr");
    S_TRY(dnnl_primitive_desc_create(&pd, &mdesc, attr, self->engine, NULL), "matmul");
    mm->scratch =
        dnnl_memory_desc_get_size(dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0));
    S_TRY(dnnl_primitive_create(&mm->prim, pd), "matmul primitive");
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    self->mms[self->n_mms++] = mm;
    pthread_mutex_unlock(&self->mmu);
    return mm;
fail:
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    free(mm);
    pthread_mutex_unlock(&self->mmu);
    return NULL;
}

int
sd3_cpu_bf16_mm_run(sd3_backend_t *be, sd3_cpu_bf16_t *self, const sd3_cpu_bf16_mm_t *mm,
                    int thread, const uint16_t *a, const uint16_t *b, float *c)
{
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
    int rc = -1;
    float *scratch = mm->scratch ? sd3_cpu_scratch(be, thread, 3, mm->scratch / 4 + 1) : NULL;
    if (mm->scratch && !scratch)
        return -1;
    omp_set_num_threads(1);
    if (dnnl_memory_create(&ma, &mm->a_md, self->engine, (void *)a) != dnnl_success ||
        dnnl_memory_create(&mb, &mm->b_md, self->engine, (void *)b) != dnnl_success ||
        dnnl_memory_create(&mc, &mm->c_md, self->engine, c) != dnnl_success)
        goto done;
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    int nargs = 3;
    if (scratch) {
        dnnl_memory_desc_t sdesc;
        dnnl_dims_t sdim = {(int64_t)mm->scratch};
        if (dnnl_memory_desc_init_by_tag(&sdesc, 1, sdim, dnnl_u8, dnnl_a) != dnnl_success ||
            dnnl_memory_create(&ms, &sdesc, self->engine, scratch) != dnnl_success)
            goto done;
        args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, ms};
    }
    if (dnnl_primitive_execute(mm->prim, self->streams[thread], nargs, args) == dnnl_success &&
        dnnl_stream_wait(self->streams[thread]) == dnnl_success)
        rc = 0;
done:
    if (ma)
        dnnl_memory_destroy(ma);
    if (mb)
        dnnl_memory_destroy(mb);
    if (mc)
        dnnl_memory_destroy(mc);
    if (ms)
        dnnl_memory_destroy(ms);
    return rc;
}

uint16_t *
sd3_cpu_bf16_buf_get(sd3_cpu_bf16_t *self, size_t n, bool *mine)
{
    *mine = pthread_mutex_trylock(&self->amu) == 0;
    if (!*mine)
        return aligned_alloc(64, (n * 2 + 63) / 64 * 64);
    if (self->acap < n) {
        free(self->abuf);
        self->acap = 0;
        if ((self->abuf = aligned_alloc(64, (n * 2 + 63) / 64 * 64)))
            self->acap = n;
    }
    if (!self->abuf) {
        pthread_mutex_unlock(&self->amu);
        *mine = false;
        return NULL;
    }
    return self->abuf;
}

void
sd3_cpu_bf16_buf_put(sd3_cpu_bf16_t *self, uint16_t *buf, bool mine)
{
    if (mine)
        pthread_mutex_unlock(&self->amu);
    else
        free(buf);
}
