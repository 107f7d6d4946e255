/*  sd3_cpu_backend - the CPU backend: op table, host memory, thread pool, scratch
 *
 *  The reference every other backend is checked against (see sd3_cpu.h for the threading
 *  model). Tensors live in host memory; weights are used where they lie (views into the
 *  mmap) and widened tile by tile inside linear and conv2d. Without a thread count the pool
 *  gets the CPUs this process may use (sd3_cpu_threads: affinity and cgroup quota), not the
 *  machine's online count.  */
#include "sd3_cpu.h"
#include "sd3_cpu_bf16.h"
#include "sd3_cpu_threads.h"
#include "sd3_log.h"

#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- thread pool -------------------------------------------------------------------------

struct sd3_cpu_pool {
    int n_threads;
    pthread_t *threads;
    // Held for a whole sd3_cpu_pool_run: one parallel loop at a time, whoever calls. The
    // stages of `sd3d --role all` share one backend from three threads; their ops take
    // turns here (and so never share a thread's scratch).
    pthread_mutex_t run_lock;
    pthread_mutex_t lock;
    pthread_cond_t wake; // workers wait here for a new generation
    pthread_cond_t done; // the caller waits here for the workers to finish
    uint64_t generation;
    int busy; // workers still inside the current generation
    bool quit;
    // the current job
    sd3_cpu_task_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_llong next;
};

typedef struct {
    sd3_cpu_pool_t *pool;
    int index;
} s_worker_arg_t;

static void
s_pool_drain(sd3_cpu_pool_t *self, int thread)
{
    for (;;) {
        int64_t task = atomic_fetch_add(&self->next, 1);
        if (task >= self->n_tasks)
            break;
        self->fn(self->ctx, task, thread);
    }
}

static void *
s_worker(void *arg)
{
    s_worker_arg_t *wa = arg;
    sd3_cpu_pool_t *self = wa->pool;
    int index = wa->index;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&self->lock);
    for (;;) {
        while (!self->quit && self->generation == seen)
            pthread_cond_wait(&self->wake, &self->lock);
        if (self->quit)
            break;
        seen = self->generation;
        pthread_mutex_unlock(&self->lock);
        s_pool_drain(self, index);
        pthread_mutex_lock(&self->lock);
        if (--self->busy == 0)
            pthread_cond_signal(&self->done);
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

sd3_cpu_pool_t *
sd3_cpu_pool_new(int n_threads)
{
    sd3_cpu_pool_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->n_threads = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&self->run_lock, NULL);
    pthread_mutex_init(&self->lock, NULL);
    pthread_cond_init(&self->wake, NULL);
    pthread_cond_init(&self->done, NULL);
    atomic_init(&self->next, 0);
    self->threads = calloc((size_t)self->n_threads, sizeof *self->threads);
    if (!self->threads)
        goto fail;
    for (int i = 1; i < self->n_threads; i++) {
        s_worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa)
            goto fail_started;
        wa->pool = self;
        wa->index = i;
        if (pthread_create(&self->threads[i], NULL, s_worker, wa) != 0) {
            free(wa);
            goto fail_started;
        }
        continue;
    fail_started:
        self->n_threads = i; // destroy joins the ones that started
        sd3_cpu_pool_destroy(&self);
        return NULL;
    }
    return self;
fail:
    pthread_mutex_destroy(&self->run_lock);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->wake);
    pthread_cond_destroy(&self->done);
    free(self->threads);
    free(self);
    return NULL;
}

void
sd3_cpu_pool_destroy(sd3_cpu_pool_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_cpu_pool_t *self = *self_p;
    pthread_mutex_lock(&self->lock);
    self->quit = true;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    for (int i = 1; i < self->n_threads; i++)
        pthread_join(self->threads[i], NULL);
    pthread_mutex_destroy(&self->run_lock);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->wake);
    pthread_cond_destroy(&self->done);
    free(self->threads);
    free(self);
    *self_p = NULL;
}

int
sd3_cpu_pool_size(const sd3_cpu_pool_t *self)
{
    return self ? self->n_threads : 1;
}

void
sd3_cpu_pool_run(sd3_cpu_pool_t *self, int64_t n_tasks, sd3_cpu_task_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    if (!self) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&self->run_lock); // thread 0's scratch is ours too on the serial path
    if (self->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        pthread_mutex_unlock(&self->run_lock);
        return;
    }
    pthread_mutex_lock(&self->lock);
    self->fn = fn;
    self->ctx = ctx;
    self->n_tasks = n_tasks;
    atomic_store(&self->next, 0);
    self->busy = self->n_threads - 1;
    self->generation++;
    pthread_cond_broadcast(&self->wake);
    pthread_mutex_unlock(&self->lock);
    s_pool_drain(self, 0);
    pthread_mutex_lock(&self->lock);
    while (self->busy > 0)
        pthread_cond_wait(&self->done, &self->lock);
    pthread_mutex_unlock(&self->lock);
    pthread_mutex_unlock(&self->run_lock);
}

// ---- backend state -----------------------------------------------------------------------

typedef struct {
    float *ptr;
    size_t cap; // floats
} s_scratch_t;

typedef struct {
    sd3_cpu_pool_t *pool;
    s_scratch_t *scratch; // [n_threads][SD3_CPU_SCRATCH_SLOTS]
    sd3_cpu_bf16_t *bf16; // precision bf16: oneDNN state and packed weights; NULL: f32
} s_cpu_t;

float *
sd3_cpu_scratch(sd3_backend_t *be, int thread, int slot, size_t n_floats)
{
    s_cpu_t *cpu = be->impl;
    s_scratch_t *s = &cpu->scratch[thread * SD3_CPU_SCRATCH_SLOTS + slot];
    if (s->cap < n_floats) {
        size_t bytes = (n_floats * sizeof(float) + 63) & ~(size_t)63;
        float *p = aligned_alloc(64, bytes);
        if (!p)
            return NULL;
        free(s->ptr);
        s->ptr = p;
        s->cap = n_floats;
    }
    return s->ptr;
}

sd3_cpu_pool_t *
sd3_cpu_backend_pool(sd3_backend_t *be)
{
    return be ? ((s_cpu_t *)be->impl)->pool : NULL;
}

// ---- helpers -----------------------------------------------------------------------------

int
sd3_cpu_check_f32(const sd3_tensor_t *t, const char *op, const char *what, sd3_err_t *err)
{
    if (!t || !t->data)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s is missing", op, what);
    if (t->dtype != SD3_F32)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s is %s, want F32", op, what,
                           sd3_dtype_name(t->dtype));
    if (t->where != SD3_HOST)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s is not in host memory", op, what);
    if (t->ndim < 1 || t->ndim > SD3_MAX_DIM)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s has %d dims", op, what, t->ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0)
            return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s has a negative size", op, what);
    return 0;
}

int
sd3_cpu_check_same(const sd3_tensor_t *a, const sd3_tensor_t *b, const char *op, const char *what,
                   sd3_err_t *err)
{
    return sd3_backend_check_same("cpu", a, b, op, what, err);
}

int
sd3_cpu_vec_f32(const sd3_tensor_t *v, int64_t n, const char *op, const char *what, float **out,
                sd3_err_t *err)
{
    *out = NULL;
    if (!v)
        return 0;
    if (!v->data || v->where != SD3_HOST || !sd3_dtype_is_float(v->dtype))
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s must be a host float tensor", op, what);
    if (sd3_tensor_numel(v) != n || v->ndim < 1) {
        char s[96];
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: %s is %s, want [%lld]", op, what,
                           sd3_shape_str(v->ndim, v->shape, s, sizeof s), (long long)n);
    }
    float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!p)
        return sd3_err_set(err, SD3_ENOMEM, "cpu %s: %s: out of memory", op, what);
    sd3_dtype_to_f32(v->dtype, v->data, p, (size_t)n);
    *out = p;
    return 0;
}

// ---- memory ops --------------------------------------------------------------------------

static sd3_tensor_t *
s_tensor_new(sd3_backend_t *be, sd3_dtype_t dtype, int ndim, const int64_t *shape, sd3_err_t *err)
{
    (void)be;
    if (ndim < 0 || ndim > SD3_MAX_DIM) {
        sd3_err_set(err, SD3_EINVAL, "cpu tensor_new: %d dims (max %d)", ndim, SD3_MAX_DIM);
        return NULL;
    }
    return sd3_tensor_new_err(dtype, ndim, shape, NULL, err);
}

static void
s_tensor_free(sd3_backend_t *be, sd3_tensor_t **t_p)
{
    (void)be;
    sd3_tensor_destroy(t_p);
}

// Host-to-host copy converting between float dtypes (f32 activations on this backend).
static int
s_copy(const char *op, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err)
{
    if (!dst || !src || !dst->data || !src->data)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: missing tensor", op);
    int rc = sd3_cpu_check_same(dst, src, op, "src", err);
    if (rc != 0)
        return rc;
    size_t n = (size_t)sd3_tensor_numel(src);
    if (dst->dtype == src->dtype) {
        memcpy(dst->data, src->data, n * sd3_dtype_size(src->dtype));
        return 0;
    }
    if (!sd3_dtype_is_float(dst->dtype) && dst->dtype != SD3_I32)
        return sd3_err_set(err, SD3_EINVAL, "cpu %s: cannot convert %s to %s", op,
                           sd3_dtype_name(src->dtype), sd3_dtype_name(dst->dtype));
    if (src->dtype == SD3_F32 && sd3_dtype_is_float(dst->dtype)) {
        sd3_dtype_from_f32(dst->dtype, src->data, dst->data, n);
        return 0;
    }
    if (dst->dtype == SD3_F32) {
        sd3_dtype_to_f32(src->dtype, src->data, dst->data, n);
        return 0;
    }
    return sd3_err_set(err, SD3_EINVAL, "cpu %s: cannot convert %s to %s", op,
                       sd3_dtype_name(src->dtype), sd3_dtype_name(dst->dtype));
}

static int
s_upload(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err)
{
    (void)be;
    return s_copy("upload", dst, src, err);
}

static int
s_download(sd3_backend_t *be, sd3_tensor_t *dst, const sd3_tensor_t *src, sd3_err_t *err)
{
    (void)be;
    return s_copy("download", dst, src, err);
}

static const sd3_tensor_t *
s_weight(sd3_backend_t *be, const sd3_tensor_t *host, sd3_err_t *err)
{
    (void)be;
    if (!host || !host->data) {
        sd3_err_set(err, SD3_EINVAL, "cpu weight: missing tensor");
        return NULL;
    }
    if (!sd3_dtype_is_float(host->dtype)) {
        sd3_err_set(err, SD3_ENOTSUP, "cpu weight '%s': dtype %s is not a float type",
                    host->name ? host->name : "?", sd3_dtype_name(host->dtype));
        return NULL;
    }
    return host;
}

static bool
s_supports(sd3_op_t op, sd3_dtype_t dtype)
{
    switch (op) {
    case SD3_OP_LINEAR: // weights widened tile by tile
    case SD3_OP_CONV2D:
        return dtype == SD3_F32 || dtype == SD3_F16 || dtype == SD3_BF16 || dtype == SD3_F8_E4M3;
    case SD3_OP_LAYERNORM: // norm weights and biases: any float, widened once per call
    case SD3_OP_RMSNORM:
    case SD3_OP_GROUPNORM:
        return sd3_dtype_is_float(dtype);
    case SD3_OP_COUNT:
        return false;
    default:
        return dtype == SD3_F32;
    }
}

static void
s_destroy(sd3_backend_t *be)
{
    if (!be)
        return;
    s_cpu_t *cpu = be->impl;
    if (cpu) {
        int n = sd3_cpu_pool_size(cpu->pool);
        if (cpu->scratch)
            for (int i = 0; i < n * SD3_CPU_SCRATCH_SLOTS; i++)
                free(cpu->scratch[i].ptr);
        free(cpu->scratch);
        sd3_cpu_bf16_destroy(&cpu->bf16);
        sd3_cpu_pool_destroy(&cpu->pool);
        free(cpu);
    }
    free(be);
}

static const sd3_backend_ops_t s_cpu_ops = {
    .name = "cpu",
    .supports = s_supports,
    .destroy = s_destroy,
    .tensor_new = s_tensor_new,
    .tensor_free = s_tensor_free,
    .upload = s_upload,
    .download = s_download,
    .weight = s_weight,
    .linear = sd3_cpu_linear,
    .layernorm = sd3_cpu_layernorm,
    .rmsnorm = sd3_cpu_rmsnorm,
    .groupnorm = sd3_cpu_groupnorm,
    .act = sd3_cpu_act,
    .softmax = sd3_cpu_softmax,
    .add = sd3_cpu_add,
    .modulate = sd3_cpu_modulate,
    .gate_add = sd3_cpu_gate_add,
    .attention = sd3_cpu_attention,
    .conv2d = sd3_cpu_conv2d,
    .upsample2x = sd3_cpu_upsample2x,
    .copy2d = sd3_cpu_copy2d,
    .fill = sd3_cpu_fill,
    .set_precision = sd3_cpu_set_precision,
};

sd3_backend_t *
sd3_cpu_backend_new(int n_threads, sd3_err_t *err)
{
    sd3_backend_t *be = NULL;
    s_cpu_t *cpu = NULL;
    char why[sizeof be->threads_why];
    if (n_threads <= 0) { // what the box gives us: affinity mask and cgroup quota
        sd3_cpu_threads_t usable;
        n_threads = sd3_cpu_threads_usable(&usable);
        snprintf(why, sizeof why, "%s", usable.why);
    } else {
        snprintf(why, sizeof why, "asked for %d", n_threads);
    }
    if (n_threads > 1024) {
        n_threads = 1024;
        snprintf(why + strlen(why), sizeof why - strlen(why), ", capped at 1024");
    }
    // One level of parallelism: our pool calls single-threaded sgemm on fixed tiles.
    openblas_set_num_threads(1);
    if (!(be = calloc(1, sizeof *be)) || !(cpu = calloc(1, sizeof *cpu)))
        goto oom;
    be->ops = &s_cpu_ops;
    be->act_dtype = SD3_F32;
    be->n_threads = n_threads;
    be->linear_batch_invariant = false; // sgemm's kernel depends on M
    be->impl = cpu;
    if (!(cpu->pool = sd3_cpu_pool_new(n_threads)))
        goto oom;
    cpu->scratch = calloc((size_t)n_threads * SD3_CPU_SCRATCH_SLOTS, sizeof *cpu->scratch);
    if (!cpu->scratch)
        goto oom;
    snprintf(be->threads_why, sizeof be->threads_why, "%s", why);
    sd3_log_info("cpu", "backend threads=%d (%s)", n_threads, why);
    return be;
oom:
    sd3_err_set(err, SD3_ENOMEM, "cpu backend: out of memory or threads (%d threads)", n_threads);
    if (be && cpu)
        s_destroy(be);
    else {
        free(cpu);
        free(be);
    }
    return NULL;
}

// ---- precision ---------------------------------------------------------------------------

sd3_cpu_bf16_t *
sd3_cpu_backend_bf16(sd3_backend_t *be)
{
    return be ? ((s_cpu_t *)be->impl)->bf16 : NULL;
}

int
sd3_cpu_set_precision(sd3_backend_t *be, int p, sd3_err_t *err)
{
    s_cpu_t *cpu = be->impl;
    if (p < 0)
        p = sd3_cpu_bf16_fast() ? SD3_PRECISION_BF16 : SD3_PRECISION_F32;
    if (p == SD3_PRECISION_BF16) {
        if (!cpu->bf16 && !(cpu->bf16 = sd3_cpu_bf16_new(be->n_threads, err)))
            return err && err->code ? err->code : SD3_ENOTSUP;
        be->precision = SD3_PRECISION_BF16;
        be->linear_batch_invariant = true; // fixed padded tiles (sd3_cpu_bf16.h)
        return 0;
    }
    sd3_cpu_bf16_destroy(&cpu->bf16);
    be->precision = SD3_PRECISION_F32;
    be->linear_batch_invariant = false;
    return 0;
}
