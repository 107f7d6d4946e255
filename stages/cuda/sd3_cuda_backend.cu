/*  sd3_cuda_backend - the CUDA backend: op table, device memory, uploads, the weight cache
 *
 *  Created by the registry (stages/core/sd3_backend.c) as sd3_cuda_backend_new(0, err). Owns
 *  one stream, one cuBLASLt handle and workspace, a caching allocator for tensors, the
 *  uploaded weights and a scratch buffer. The ops live in sd3_cuda_<op>.cu; see sd3_cuda.h for
 *  dtypes, streams and determinism. Never aborts: a CUDA failure becomes SD3_EDEVICE.  */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd3_cuda.h"

// Freed device blocks kept for reuse, by exact rounded size (the step loop asks for the same
// sizes every step, so exact classes hit; a miss is a cudaMalloc).
struct sd3_cuda_block {
    void *ptr;
    size_t size;
    struct sd3_cuda_block *next;
};

// One uploaded weight: keyed by the host data pointer, checked against dtype and shape.
struct sd3_cuda_weight {
    const void *host_data;
    sd3_dtype_t host_dtype;
    int64_t numel;
    sd3_tensor_t *dev;
    struct sd3_cuda_weight *next;
};

#define S_WEIGHT_BUCKETS 1024
#define S_WORKSPACE      (32u << 20) // cuBLASLt workspace; Hopper kernels want >= 32 MiB
#define S_CHUNK          (4u << 20)  // elements per host conversion chunk

typedef struct {
    sd3_cuda_t cu;
    struct sd3_cuda_weight *buckets[S_WEIGHT_BUCKETS];
} s_state_t;

// ---- public helpers ------------------------------------------------------------------------

int
sd3_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

int
sd3_cuda_sync(sd3_backend_t *be, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err);
    SD3_CUDA_TRY(cudaGetLastError(), err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}

const char *
sd3_cuda_device_name(sd3_backend_t *be)
{
    return ((sd3_cuda_t *)be->impl)->name;
}

void *
sd3_cuda_scratch(sd3_cuda_t *cu, size_t bytes, sd3_err_t *err)
{
    void *p = NULL;
    if (cu->scratch_size >= bytes)
        return cu->scratch;
    // the old buffer may still be read by queued kernels: wait before freeing it
    SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err);
    SD3_CUDA_TRY(cudaFree(cu->scratch), err);
    cu->scratch = NULL;
    cu->scratch_size = 0;
    SD3_CUDA_TRY(cudaMalloc(&p, bytes), err);
    cu->scratch = p;
    cu->scratch_size = bytes;
    return p;
fail:
    return NULL;
}

int
sd3_cuda_check(const sd3_tensor_t *t, const char *op, const char *what, sd3_err_t *err)
{
    if (!t || (!t->data && sd3_tensor_numel(t) > 0))
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: %s is missing", op, what);
    if (t->where != SD3_DEVICE)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda %s: %s is in host memory (create it with tensor_new, or pass "
                           "a weight through weight())",
                           op, what);
    if (t->dtype != SD3_BF16 && t->dtype != SD3_F32 && t->dtype != SD3_F16)
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: %s is %s, want BF16, F32 or F16", op, what,
                           sd3_dtype_name(t->dtype));
    if (t->ndim < 1 || t->ndim > SD3_MAX_DIM)
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: %s has %d dims", op, what, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return sd3_err_set(err, SD3_EINVAL, "cuda %s: %s has a negative size", op, what);
    return 0;
}

int
sd3_cuda_check_same(const sd3_tensor_t *a, const sd3_tensor_t *b, const char *op,
                    const char *what, sd3_err_t *err)
{
    return sd3_backend_check_same("cuda", a, b, op, what, err);
}

int
sd3_cuda_check_vec(const sd3_tensor_t *v, int64_t n, const char *op, const char *what,
                   sd3_err_t *err)
{
    if (!v)
        return 0;
    if (sd3_cuda_check(v, op, what, err) != 0)
        return err ? err->code : SD3_EINVAL;
    if (sd3_tensor_numel(v) != n) {
        char s[96];
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: %s is %s, want [%lld]", op, what,
                           sd3_shape_str(v->ndim, v->shape, s, sizeof s), (long long)n);
    }
    return 0;
}

// ---- memory --------------------------------------------------------------------------------

static size_t
s_round(size_t bytes)
{
    if (bytes <= (1u << 20))
        return (bytes + 511) & ~(size_t)511;
    return (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
}

static void
s_release_cache(sd3_cuda_t *cu)
{
    while (cu->free_blocks) {
        struct sd3_cuda_block *blk = cu->free_blocks;
        cu->free_blocks = blk->next;
        cudaFree(blk->ptr);
        free(blk);
    }
    cu->cached_bytes = 0;
}

static void *
s_alloc(sd3_cuda_t *cu, size_t bytes, sd3_err_t *err)
{
    size_t size = s_round(bytes ? bytes : 1);
    void *p = NULL;
    cudaError_t rc;
    for (struct sd3_cuda_block **pp = &cu->free_blocks; *pp; pp = &(*pp)->next) {
        if ((*pp)->size == size) {
            struct sd3_cuda_block *blk = *pp;
            *pp = blk->next;
            p = blk->ptr;
            cu->cached_bytes -= size;
            free(blk);
            return p;
        }
    }
    rc = cudaMalloc(&p, size);
    if (rc == cudaErrorMemoryAllocation && cu->free_blocks) {
        (void)cudaGetLastError();
        cudaStreamSynchronize(cu->stream);
        s_release_cache(cu); // give the cached blocks back and try once more
        rc = cudaMalloc(&p, size);
    }
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        sd3_err_set(err, rc == cudaErrorMemoryAllocation ? SD3_ENOMEM : SD3_EDEVICE,
                    "cuda tensor_new: cudaMalloc(%zu bytes): %s", size, cudaGetErrorString(rc));
        return NULL;
    }
    return p;
}

static void
s_dealloc(sd3_cuda_t *cu, void *p, size_t bytes)
{
    if (!p)
        return;
    struct sd3_cuda_block *blk = (struct sd3_cuda_block *)malloc(sizeof *blk);
    if (!blk) { // cannot cache it: give it back (cudaFree waits for the device)
        cudaFree(p);
        return;
    }
    blk->ptr = p;
    blk->size = s_round(bytes ? bytes : 1);
    blk->next = cu->free_blocks;
    cu->free_blocks = blk;
    cu->cached_bytes += blk->size;
}

static sd3_tensor_t *
s_tensor_new(sd3_backend_t *be, sd3_dtype_t dtype, int ndim, const int64_t *shape,
             sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    size_t n, bytes;
    char sbuf[96];
    sd3_tensor_t *t = NULL;
    if (ndim < 0 || ndim > SD3_MAX_DIM) {
        sd3_err_set(err, SD3_EINVAL, "cuda tensor_new: %d dims (max %d)", ndim, SD3_MAX_DIM);
        return NULL;
    }
    if ((unsigned)dtype >= SD3_DTYPE_COUNT) {
        sd3_err_set(err, SD3_EINVAL, "cuda tensor_new: unknown dtype %d", (int)dtype);
        return NULL;
    }
    if (sd3_shape_numel(ndim, shape, &n) != 0 ||
        sd3_size_mul(n, sd3_dtype_size(dtype), &bytes) != 0 || bytes > ((size_t)1 << 40)) {
        sd3_err_set(err, SD3_ENOMEM, "cuda tensor_new %s %s: size overflows",
                    sd3_dtype_name(dtype), sd3_shape_str(ndim, shape, sbuf, sizeof sbuf));
        return NULL;
    }
    t = (sd3_tensor_t *)calloc(1, sizeof *t);
    if (!t) {
        sd3_err_set(err, SD3_ENOMEM, "cuda tensor_new: out of host memory");
        return NULL;
    }
    sd3_tensor_view_init(t, dtype, ndim, shape, NULL);
    t->where = SD3_DEVICE;
    t->owns = true;
    t->data = s_alloc(cu, bytes, err);
    if (!t->data)
        goto fail;
    if (bytes)
        SD3_CUDA_TRY(cudaMemsetAsync(t->data, 0, bytes, cu->stream), err);
    return t;
fail:
    if (t && t->data)
        s_dealloc(cu, t->data, bytes);
    free(t);
    return NULL;
}

static void
s_tensor_free(sd3_backend_t *be, sd3_tensor_t **t_p)
{
    if (!t_p || !*t_p)
        return;
    sd3_tensor_t *t = *t_p;
    if (t->where == SD3_DEVICE && t->owns)
        s_dealloc((sd3_cuda_t *)be->impl, t->data, sd3_tensor_nbytes(t));
    else if (t->owns)
        free(t->data);
    free(t);
    *t_p = NULL;
}

// ---- host <-> device copies ----------------------------------------------------------------

static bool
s_convertible(sd3_dtype_t from, sd3_dtype_t to)
{
    return from == to || (sd3_dtype_is_float(from) && sd3_dtype_is_float(to));
}

static int
s_copy_check(const char *op, const sd3_tensor_t *dst, const sd3_tensor_t *src,
             sd3_where_t dst_where, sd3_err_t *err)
{
    if (!dst || !src || (sd3_tensor_numel(src) > 0 && (!dst->data || !src->data)))
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: missing tensor", op);
    if (dst->where != dst_where || src->where == dst_where)
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: want a %s destination and a %s source",
                           op, dst_where == SD3_DEVICE ? "device" : "host",
                           dst_where == SD3_DEVICE ? "host" : "device");
    if (sd3_cuda_check_same(dst, src, op, "src", err) != 0)
        return err ? err->code : SD3_EINVAL;
    if (!s_convertible(src->dtype, dst->dtype))
        return sd3_err_set(err, SD3_EINVAL, "cuda %s: cannot convert %s to %s", op,
                           sd3_dtype_name(src->dtype), sd3_dtype_name(dst->dtype));
    return 0;
}

// Converts n elements between float dtypes on the host, through f32 in chunks.
static int
s_host_convert(sd3_dtype_t to, void *dst, sd3_dtype_t from, const void *src, size_t n,
               sd3_err_t *err)
{
    if (from == SD3_F32) {
        sd3_dtype_from_f32(to, (const float *)src, dst, n);
        return 0;
    }
    if (to == SD3_F32) {
        sd3_dtype_to_f32(from, src, (float *)dst, n);
        return 0;
    }
    size_t chunk = n < S_CHUNK ? n : S_CHUNK;
    float *tmp = (float *)malloc((chunk ? chunk : 1) * sizeof(float));
    if (!tmp)
        return sd3_err_set(err, SD3_ENOMEM, "cuda: out of host memory converting %s to %s",
                           sd3_dtype_name(from), sd3_dtype_name(to));
    for (size_t i = 0; i < n; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        sd3_dtype_to_f32(from, (const char *)src + i * sd3_dtype_size(from), tmp, m);
        sd3_dtype_from_f32(to, tmp, (char *)dst + i * sd3_dtype_size(to), m);
    }
    free(tmp);
    return 0;
}

// Copies n elements of host `src` (dtype from) into device `dst` (dtype to), converting on
// the host a chunk at a time; returns when the device holds the data.
static int
s_to_device(sd3_cuda_t *cu, void *dst, sd3_dtype_t to, const void *src, sd3_dtype_t from,
            size_t n, sd3_err_t *err)
{
    void *stage = NULL;
    size_t chunk = n < S_CHUNK ? n : S_CHUNK;
    if (n == 0)
        return 0;
    if (from == to) {
        SD3_CUDA_TRY(cudaMemcpyAsync(dst, src, n * sd3_dtype_size(to), cudaMemcpyHostToDevice,
                                     cu->stream),
                     err);
        SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err);
        return 0;
    }
    stage = malloc(chunk * sd3_dtype_size(to));
    if (!stage) {
        sd3_err_set(err, SD3_ENOMEM, "cuda upload: out of host memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        if (s_host_convert(to, stage, from, (const char *)src + i * sd3_dtype_size(from), m,
                           err) != 0)
            goto fail;
        SD3_CUDA_TRY(cudaMemcpyAsync((char *)dst + i * sd3_dtype_size(to), stage,
                                     m * sd3_dtype_size(to), cudaMemcpyHostToDevice, cu->stream),
                     err);
        SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err); // `stage` is reused next chunk
    }
    free(stage);
    return 0;
fail:
    free(stage);
    return err ? err->code : SD3_EDEVICE;
}

static int
s_upload(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err)
{
    if (s_copy_check("upload", dst, src, SD3_DEVICE, err) != 0)
        return err ? err->code : SD3_EINVAL;
    return s_to_device((sd3_cuda_t *)be->impl, dst->data, dst->dtype, src->data, src->dtype,
                       (size_t)sd3_tensor_numel(src), err);
}

static int
s_download(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    size_t n;
    void *stage = NULL;
    if (s_copy_check("download", dst, src, SD3_HOST, err) != 0)
        return err ? err->code : SD3_EINVAL;
    n = (size_t)sd3_tensor_numel(src);
    if (n == 0)
        return 0;
    if (src->dtype == dst->dtype) {
        SD3_CUDA_TRY(cudaMemcpyAsync(dst->data, src->data, n * sd3_dtype_size(src->dtype),
                                     cudaMemcpyDeviceToHost, cu->stream),
                     err);
        SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err);
        return 0;
    }
    stage = malloc(n * sd3_dtype_size(src->dtype));
    if (!stage) {
        sd3_err_set(err, SD3_ENOMEM, "cuda download: out of host memory (%zu elements)", n);
        goto fail;
    }
    SD3_CUDA_TRY(cudaMemcpyAsync(stage, src->data, n * sd3_dtype_size(src->dtype),
                                 cudaMemcpyDeviceToHost, cu->stream),
                 err);
    SD3_CUDA_TRY(cudaStreamSynchronize(cu->stream), err);
    if (s_host_convert(dst->dtype, dst->data, src->dtype, stage, n, err) != 0)
        goto fail;
    free(stage);
    return 0;
fail:
    free(stage);
    return err ? err->code : SD3_EDEVICE;
}

// ---- weights -------------------------------------------------------------------------------

static const sd3_tensor_t *
s_weight(sd3_backend_t *be, const sd3_tensor_t *host, sd3_err_t *err)
{
    s_state_t *st = (s_state_t *)be->impl;
    sd3_cuda_t *cu = &st->cu;
    struct sd3_cuda_weight *w = NULL;
    sd3_tensor_t *dev = NULL;
    int64_t numel;
    size_t bucket;
    if (!host || (!host->data && sd3_tensor_numel(host) > 0)) {
        sd3_err_set(err, SD3_EINVAL, "cuda weight: missing tensor");
        return NULL;
    }
    if (host->where == SD3_DEVICE)
        return host; // already ours (made by tensor_new + upload)
    if (!sd3_dtype_is_float(host->dtype)) {
        sd3_err_set(err, SD3_ENOTSUP, "cuda weight '%s': dtype %s is not a float type",
                    host->name ? host->name : "?", sd3_dtype_name(host->dtype));
        return NULL;
    }
    numel = sd3_tensor_numel(host);
    bucket = (((uintptr_t)host->data) >> 6) % S_WEIGHT_BUCKETS;
    for (w = st->buckets[bucket]; w; w = w->next) {
        if (w->host_data == host->data && w->host_dtype == host->dtype && w->numel == numel &&
            w->dev->ndim == host->ndim &&
            !memcmp(w->dev->shape, host->shape, sizeof(int64_t) * (size_t)host->ndim))
            return w->dev;
    }
    // Everything is computed from bf16: f8 e4m3 widens exactly, f16 and f32 round (RNE).
    dev = s_tensor_new(be, SD3_BF16, host->ndim, host->shape, err);
    if (!dev)
        goto fail;
    dev->name = host->name;
    if (s_to_device(cu, dev->data, SD3_BF16, host->data, host->dtype, (size_t)numel, err) != 0)
        goto fail;
    w = (struct sd3_cuda_weight *)calloc(1, sizeof *w);
    if (!w) {
        sd3_err_set(err, SD3_ENOMEM, "cuda weight '%s': out of host memory",
                    host->name ? host->name : "?");
        goto fail;
    }
    w->host_data = host->data;
    w->host_dtype = host->dtype;
    w->numel = numel;
    w->dev = dev;
    w->next = st->buckets[bucket];
    st->buckets[bucket] = w;
    return dev;
fail:
    if (err && host->name)
        sd3_err_prefix(err, "weight '%s'", host->name);
    s_tensor_free(be, &dev);
    return NULL;
}

// ---- table ---------------------------------------------------------------------------------

static bool
s_supports(sd3_op_t op, sd3_dtype_t dtype)
{
    switch (op) {
    case SD3_OP_LINEAR:
    case SD3_OP_CONV2D:
    case SD3_OP_LAYERNORM:
    case SD3_OP_RMSNORM:
    case SD3_OP_GROUPNORM:
        // weights: any of these is uploaded as bf16 by weight()
        return dtype == SD3_F32 || dtype == SD3_F16 || dtype == SD3_BF16 ||
               dtype == SD3_F8_E4M3 || dtype == SD3_F64;
    case SD3_OP_COUNT:
        return false;
    default:
        // activations: bf16 is the backend's own; f32 and f16 tensors work too
        return dtype == SD3_BF16 || dtype == SD3_F32 || dtype == SD3_F16;
    }
}

static void
s_destroy(sd3_backend_t *be)
{
    if (!be)
        return;
    s_state_t *st = (s_state_t *)be->impl;
    if (st) {
        sd3_cuda_t *cu = &st->cu;
        if (cu->stream)
            cudaStreamSynchronize(cu->stream);
        for (int i = 0; i < S_WEIGHT_BUCKETS; i++) {
            while (st->buckets[i]) {
                struct sd3_cuda_weight *w = st->buckets[i];
                st->buckets[i] = w->next;
                cudaFree(w->dev->data); // weights bypass the cache: they live until here
                free(w->dev);
                free(w);
            }
        }
        s_release_cache(cu);
        sd3_cuda_gemm_plans_free(cu);
        cudaFree(cu->scratch);
        cudaFree(cu->workspace);
        if (cu->lt)
            cublasLtDestroy(cu->lt);
        if (cu->stream)
            cudaStreamDestroy(cu->stream);
        free(st);
    }
    free(be);
}

static const sd3_backend_ops_t s_cuda_ops = {
    /* name        */ "cuda",
    /* supports    */ s_supports,
    /* destroy     */ s_destroy,
    /* tensor_new  */ s_tensor_new,
    /* tensor_free */ s_tensor_free,
    /* upload      */ s_upload,
    /* download    */ s_download,
    /* weight      */ s_weight,
    /* linear      */ sd3_cuda_linear,
    /* layernorm   */ sd3_cuda_layernorm,
    /* rmsnorm     */ sd3_cuda_rmsnorm,
    /* groupnorm   */ sd3_cuda_groupnorm,
    /* act         */ sd3_cuda_act,
    /* softmax     */ sd3_cuda_softmax,
    /* add         */ sd3_cuda_add,
    /* modulate    */ sd3_cuda_modulate,
    /* gate_add    */ sd3_cuda_gate_add,
    /* attention   */ sd3_cuda_attention,
    /* conv2d      */ sd3_cuda_conv2d,
    /* upsample2x  */ sd3_cuda_upsample2x,
    /* copy2d      */ sd3_cuda_copy2d,
    /* fill        */ sd3_cuda_fill,
};

sd3_backend_t *
sd3_cuda_backend_new(int device, sd3_err_t *err)
{
    sd3_backend_t *be = NULL;
    s_state_t *st = NULL;
    sd3_cuda_t *cu = NULL;
    cudaDeviceProp prop;
    int n_dev = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_dev);
    if (rc != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        sd3_err_set(err, SD3_EDEVICE, "backend 'cuda': no CUDA device (%s)",
                    rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices");
        return NULL;
    }
    if (device < 0 || device >= n_dev) {
        sd3_err_set(err, SD3_EINVAL, "backend 'cuda': device %d, have %d", device, n_dev);
        return NULL;
    }
    be = (sd3_backend_t *)calloc(1, sizeof *be);
    st = (s_state_t *)calloc(1, sizeof *st);
    if (!be || !st) {
        sd3_err_set(err, SD3_ENOMEM, "backend 'cuda': out of host memory");
        goto fail;
    }
    be->ops = &s_cuda_ops;
    be->act_dtype = SD3_BF16;
    be->n_threads = 1;
    be->linear_batch_invariant = false; // cuBLAS picks its algorithm per shape
    be->impl = st;
    cu = &st->cu;
    cu->device = device;
    SD3_CUDA_TRY(cudaSetDevice(device), err);
    SD3_CUDA_TRY(cudaGetDeviceProperties(&prop, device), err);
    cu->n_sm = prop.multiProcessorCount;
    cu->cc_major = prop.major;
    cu->cc_minor = prop.minor;
    snprintf(cu->name, sizeof cu->name, "%.100s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major,
             prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    if (prop.major < 8) {
        sd3_err_set(err, SD3_ENOTSUP, "backend 'cuda': %s is older than sm_80 (bf16 tensor "
                                      "cores needed)", cu->name);
        goto fail;
    }
    SD3_CUDA_TRY(cudaStreamCreateWithFlags(&cu->stream, cudaStreamNonBlocking), err);
    SD3_CUBLAS_TRY(cublasLtCreate(&cu->lt), err);
    cu->workspace_size = S_WORKSPACE;
    SD3_CUDA_TRY(cudaMalloc(&cu->workspace, cu->workspace_size), err);
    return be;
fail:
    if (be) {
        be->impl = st;
        s_destroy(be);
    } else {
        free(st);
    }
    return NULL;
}
