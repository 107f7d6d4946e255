/*  sd3ctl_bench_hop - the per-hop part of `sd3ctl bench cluster`: what one STEP costs
 *
 *  One hop is what an mmdit range hands the next once per sampling step (s_send_step in
 *  daemon/node/sd3_stage_host.c): a STEP message with x [B, N, C], ctx [B, L, C] and c [B, C]
 *  in f32, B = 2 (CFG), C = 2432 (SD3.5-Large). It travels here exactly as between two
 *  stages: the sender copies its activations into host tensors (the download of the CPU
 *  backend is that copy), adds them with the codec options (sd3_msg_add_tensor) and sends
 *  with sd3_link_send on a connect link (DEALER, the options sd3_node_send_peer uses); the
 *  receiver takes it with sd3_link_recv on a serve link (ROUTER) - envelope and descriptor
 *  checks, decompression, widening, checksums - and checks the shapes as the stage does
 *  (sd3_msg_expect). The two links sit on separate ZeroMQ contexts (each its own I/O thread,
 *  as two processes) over TCP loopback.
 *
 *  Per codec and wire dtype it prints the bytes on the wire per step (every frame of the
 *  message as sd3_wire_encode lays it out, envelope included) and the median over `reps` of
 *  the hop's wall time (send side, receive side, total) and of the CPU time the process
 *  spent on it (all threads: codec, ZeroMQ I/O). The payload is N(0, 1) with 0.1% outliers
 *  of 50..800 (as the codec figures); `--blocks` measures the ratio on real activations.
 *  Lossless hops (wire f32) are checked to arrive bit-identical on the first hop. Three
 *  untimed hops come first: the heap grows to what a daemon has after a few steps. Frames
 *  over 32 MiB (x at 1024 px) cost page faults on every hop unless the allocator keeps
 *  them (sd3_bench_cluster's --alloc).  */
#include "sd3_link.h"
#include "sd3ctl.h"
#include "sd3ctl_bench.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

// S_WARMUP untimed hops first: the heap grows to its steady state (a daemon runs many steps)
enum { S_C = 2432, S_B = 2, S_MAX_REPS = 1000, S_WARMUP = 3 };


static int
s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double
s_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, s_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The STEP message of s_send_step: fresh host copies of x, ctx, c (the download).
static sd3_msg_t *
s_step_msg(sd3_tensor_t *const src[3], const sd3_codec_opts_t *opts, uint32_t step, sd3_err_t *err)
{
    static const char *names[3] = {"x", "ctx", "c"};
    sd3_msg_t *msg = sd3_msg_new(SD3_MSG_STEP, "bench-hop");
    if (!msg) {
        sd3_err_set(err, SD3_ENOMEM, "bench hop: out of memory");
        return NULL;
    }
    msg->step = step;
    msg->attempt = 1;
    for (int i = 0; i < 3; i++) {
        sd3_tensor_t *h = sd3_tensor_clone(src[i]);
        if (!h) {
            sd3_err_set(err, SD3_ENOMEM, "bench hop: out of memory");
            goto fail;
        }
        h->name = names[i];
        int rc = sd3_msg_add_tensor(msg, &h, opts, err);
        sd3_tensor_destroy(&h);
        if (rc != 0)
            goto fail;
    }
    return msg;
fail:
    sd3_msg_destroy(&msg);
    return NULL;
}

// Bytes of every frame the message becomes on the socket (envelope + tensor frames).
static int
s_wire_bytes(sd3_tensor_t *const src[3], const sd3_codec_opts_t *opts, size_t *bytes,
             sd3_err_t *err)
{
    sd3_wire_frames_t frames = {0};
    sd3_msg_t *msg = s_step_msg(src, opts, 0, err);
    if (!msg || sd3_wire_encode(&msg, &frames, err) != 0)
        return err->code ? err->code : SD3_EINTERNAL;
    *bytes = 0;
    for (int i = 0; i < frames.n; i++)
        *bytes += frames.frames[i].len;
    sd3_wire_frames_fini(&frames);
    return 0;
}

// What the receiving stage checks (s_check_step of sd3_stage_host.c), plus the step number.
static int
s_check(const sd3_msg_t *got, uint32_t step, int64_t N, int64_t L, sd3_err_t *err)
{
    if (got->type != SD3_MSG_STEP || got->step != step)
        return sd3_err_set(err, SD3_EPROTO, "bench hop: got %s step %u, want STEP step %u",
                           sd3_msg_type_name(got->type), got->step, step);
    if (sd3_msg_expect(got, "x", SD3_F32, 3, (int64_t[]){S_B, N, S_C}, err) != 0 ||
        sd3_msg_expect(got, "ctx", SD3_F32, 3, (int64_t[]){S_B, L, S_C}, err) != 0 ||
        sd3_msg_expect(got, "c", SD3_F32, 2, (int64_t[]){S_B, S_C}, err) != 0)
        return err->code;
    return 0;
}

// Bit-identical arrival of a lossless hop.
static int
s_same(const sd3_msg_t *got, sd3_tensor_t *const src[3], sd3_err_t *err)
{
    for (int i = 0; i < 3; i++) {
        const sd3_tensor_t *t = sd3_msg_tensor(got, i == 0 ? "x" : i == 1 ? "ctx" : "c");
        if (!t || memcmp(t->data, src[i]->data, sd3_tensor_nbytes(src[i])) != 0)
            return sd3_err_set(err, SD3_EINTERNAL, "bench hop: tensor %d changed on the way", i);
    }
    return 0;
}

typedef struct {
    sd3_link_t *tx, *rx;
} s_pair_t;

static int
s_pair_open(void *ctx_tx, void *ctx_rx, s_pair_t *p, sd3_err_t *err)
{
    // the options of sd3_node_send_peer (sender) and of a stage's data socket (receiver)
    sd3_link_opts_t lo_rx = {.hwm = 64, .send_timeout_ms = 30000};
    sd3_link_opts_t lo_tx = {.hwm = 64, .identity = "bench/peer", .send_timeout_ms = 30000};
    memset(p, 0, sizeof *p);
    if (!(p->rx = sd3_link_new_serve(ctx_rx, "tcp://127.0.0.1:*", &lo_rx, err)) ||
        !(p->tx = sd3_link_new_connect(ctx_tx, sd3_link_endpoint(p->rx), &lo_tx, err)))
        return err->code;
    return 0;
}

static void
s_pair_close(s_pair_t *p)
{
    sd3_link_destroy(&p->tx);
    sd3_link_destroy(&p->rx);
}

// One codec / wire dtype: `reps` timed hops after S_WARMUP untimed ones.
static int
s_config(s_pair_t *p, sd3_tensor_t *const src[3], const sd3_codec_opts_t *opts, int reps, int64_t N,
         int64_t L, sd3_err_t *err)
{
    double send_w[S_MAX_REPS], recv_w[S_MAX_REPS], total_w[S_MAX_REPS], cpu[S_MAX_REPS];
    size_t wire = 0, f32_bytes = 0;
    for (int i = 0; i < 3; i++)
        f32_bytes += sd3_tensor_nbytes(src[i]);
    if (s_wire_bytes(src, opts, &wire, err) != 0)
        return err->code;
    for (int r = -S_WARMUP; r < reps; r++) {
        uint32_t step = (uint32_t)(r + S_WARMUP);
        sd3_msg_t *got = NULL;
        double w0 = sd3_bench_wall(), c0 = sd3_bench_cpu();
        sd3_msg_t *msg = s_step_msg(src, opts, step, err);
        if (!msg || sd3_link_send(p->tx, NULL, &msg, err) != 0)
            return err->code;
        double w1 = sd3_bench_wall();
        if (sd3_link_recv(p->rx, 30000, NULL, &got, err) != 0)
            return err->code;
        int rc = s_check(got, step, N, L, err);
        double w2 = sd3_bench_wall(), c2 = sd3_bench_cpu();
        if (rc == 0 && r == -S_WARMUP && opts->wire_dtype == SD3_F32)
            rc = s_same(got, src, err);
        sd3_msg_destroy(&got);
        if (rc != 0)
            return rc;
        if (r >= 0) {
            send_w[r] = w1 - w0;
            recv_w[r] = w2 - w1;
            total_w[r] = w2 - w0;
            cpu[r] = c2 - c0;
        }
    }
    double ms_send = 1e3 * s_median(send_w, reps), ms_recv = 1e3 * s_median(recv_w, reps);
    double ms_total = 1e3 * s_median(total_w, reps), ms_cpu = 1e3 * s_median(cpu, reps);
    printf("  %-4s %-13s %9.2f %7.3f %9.1f %9.1f %9.1f %9.1f %9.0f\n",
           sd3_dtype_name(opts->wire_dtype), sd3_codec_name(opts->codec), (double)wire / (1 << 20),
           (double)f32_bytes / (double)wire, ms_send, ms_recv, ms_total, ms_cpu,
           (double)f32_bytes / (ms_total * 1e-3) * 1e-6);
    return 0;
}

int
sd3_bench_hop(int n_tokens, int ctx_tokens, int level, int reps)
{
    const int64_t N = n_tokens, L = ctx_tokens;
    sd3_err_t err = {0};
    void *ctx_tx = zmq_ctx_new(), *ctx_rx = zmq_ctx_new();
    s_pair_t pair = {0};
    sd3_tensor_t *src[3] = {NULL, NULL, NULL};
    int rc = 2;
    if (reps < 1 || reps > S_MAX_REPS) {
        sd3_err_set(&err, SD3_EINVAL, "bench hop: reps %d, want 1..%d", reps, S_MAX_REPS);
        goto done;
    }
    if (!ctx_tx || !ctx_rx) {
        sd3_err_set(&err, SD3_EIO, "bench hop: zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        goto done;
    }
    if (!(src[0] = sd3_tensor_new_err(SD3_F32, 3, (int64_t[]){S_B, N, S_C}, "x", &err)) ||
        !(src[1] = sd3_tensor_new_err(SD3_F32, 3, (int64_t[]){S_B, L, S_C}, "ctx", &err)) ||
        !(src[2] = sd3_tensor_new_err(SD3_F32, 2, (int64_t[]){S_B, S_C}, "c", &err)))
        goto done;
    for (int i = 0; i < 3; i++)
        sd3_bench_fill_activations(src[i]->data, (size_t)sd3_tensor_numel(src[i]), 0x5eed + (uint64_t)N + 7u * i);
    if (s_pair_open(ctx_tx, ctx_rx, &pair, &err) != 0)
        goto done;
    size_t f32_bytes = 0;
    for (int i = 0; i < 3; i++)
        f32_bytes += sd3_tensor_nbytes(src[i]);
    printf("hop: STEP x [2,%lld,%d] + ctx [2,%lld,%d] + c [2,%d] = %.2f MiB f32, %s, zstd "
           "level %d, median of %d after %d warm-up hops\n",
           (long long)N, S_C, (long long)L, S_C, S_C, (double)f32_bytes / (1 << 20),
           sd3_link_endpoint(pair.rx), level, reps, S_WARMUP);
    printf("  %-4s %-13s %9s %7s %9s %9s %9s %9s %9s\n", "wire", "codec", "MiB/step", "ratio",
           "send ms", "recv ms", "hop ms", "CPU ms", "f32 MB/s");
    const sd3_dtype_t wires[3] = {SD3_F32, SD3_BF16, SD3_F16};
    for (int w = 0; w < 3; w++)
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_codec_opts_t opts = {
                .codec = (sd3_codec_t)c, .wire_dtype = wires[w], .level = level};
            if (s_config(&pair, src, &opts, reps, N, L, &err) != 0)
                goto done;
        }
    rc = 0;
done:
    if (rc != 0)
        fprintf(stderr, "sd3ctl bench cluster: %s\n", err.msg[0] ? err.msg : "hop failed");
    s_pair_close(&pair);
    for (int i = 0; i < 3; i++)
        sd3_tensor_destroy(&src[i]);
    if (ctx_tx)
        zmq_ctx_term(ctx_tx);
    if (ctx_rx)
        zmq_ctx_term(ctx_rx);
    return rc;
}
