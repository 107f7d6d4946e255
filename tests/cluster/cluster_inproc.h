/*  cluster_inproc - a cluster inside the test process: the controller, one encoder, one
 *  mmdit over all blocks and one vae as threads, talking over inproc. For the tests that
 *  need ZeroMQ's own pipes alone (no kernel buffers: test_cluster_flood) or a fake stage
 *  beside real ones (test_cluster_hung). Include after cluster_util.h.  */
#pragma once
#include "sd3_controller.h"
#include "sd3_node.h"

#include <pthread.h>
#include <zmq.h>

#define CU_INPROC_MAX_THREADS 8

typedef struct {
    void *ctx;
    sd3_controller_t *controller;
    sd3_node_t *nodes[3]; // encoder, mmdit, vae
    pthread_t threads[CU_INPROC_MAX_THREADS];
    int n_threads;
} cu_inproc_t;

// Every thread of the cluster (and a test's fake stages) runs until this becomes 1.
static volatile sig_atomic_t cu_inproc_stop;

static void *
cu_inproc_controller_main(void *arg)
{
    sd3_err_t err = {0};
    if (sd3_controller_run(arg, &cu_inproc_stop, &err) != 0)
        fprintf(stderr, "inproc: controller stopped: %s\n", err.msg);
    return NULL;
}

static void *
cu_inproc_node_main(void *arg)
{
    sd3_err_t err = {0};
    if (sd3_node_run(arg, &cu_inproc_stop, &err) != 0)
        fprintf(stderr, "inproc: node stopped: %s\n", err.msg);
    return NULL;
}

// Runs fn(arg) in one more thread, joined by cu_inproc_end. 0, or -1 (CHECKed).
__attribute__((unused)) static int
cu_inproc_thread(cu_inproc_t *ip, void *(*fn)(void *), void *arg)
{
    int ok = ip->n_threads < CU_INPROC_MAX_THREADS &&
             pthread_create(&ip->threads[ip->n_threads], NULL, fn, arg) == 0;
    CHECK_MSG(ok, "inproc: thread %d did not start", ip->n_threads);
    ip->n_threads += ok;
    return ok ? 0 : -1;
}

// A fresh context, the controller of *co (its zmq_ctx is set here; listen, stage_listen and
// model_path are the caller's) and the three nodes, each node id NAMES[i] with data endpoint
// inproc://TAG-NAME, all running. 0, or -1 (CHECKed; cu_inproc_end still cleans up).
__attribute__((unused)) static int
cu_inproc_start(cu_inproc_t *ip, sd3_controller_opts_t *co, const char *tag,
                const char *const names[3])
{
    static const sd3_wire_role_t roles[3] = {SD3_WIRE_ROLE_ENCODER, SD3_WIRE_ROLE_MMDIT,
                                             SD3_WIRE_ROLE_VAE};
    sd3_err_t err = {0};
    memset(ip, 0, sizeof *ip);
    ip->ctx = zmq_ctx_new();
    CHECK(ip->ctx != NULL);
    co->zmq_ctx = ip->ctx;
    ip->controller = ip->ctx ? sd3_controller_new(co, &err) : NULL;
    CHECK_MSG(ip->controller != NULL, "controller: %s", err.msg);
    int rc = ip->controller ? 0 : -1;
    for (int i = 0; rc == 0 && i < 3; i++) {
        char listen[128];
        snprintf(listen, sizeof listen, "inproc://%s-%s", tag, names[i]);
        sd3_node_opts_t o = {
            .role = roles[i],
            .node_id = names[i],
            .listen = listen,
            .controller = co->stage_listen,
            .model_path = co->model_path,
            .n_threads = 1,
            .load_t5 = true,
            .zmq_ctx = ip->ctx,
        };
        ip->nodes[i] = sd3_node_new(&o, &err);
        CHECK_MSG(ip->nodes[i] != NULL, "%s: %s", names[i], err.msg);
        rc = ip->nodes[i] ? cu_inproc_thread(ip, cu_inproc_node_main, ip->nodes[i]) : -1;
    }
    if (rc == 0)
        rc = cu_inproc_thread(ip, cu_inproc_controller_main, ip->controller);
    return rc;
}

// Stops and joins every thread, then frees the cluster.
__attribute__((unused)) static void
cu_inproc_end(cu_inproc_t *ip)
{
    cu_inproc_stop = 1;
    for (int i = 0; i < ip->n_threads; i++)
        pthread_join(ip->threads[i], NULL);
    for (int i = 0; i < 3; i++)
        sd3_node_destroy(&ip->nodes[i]);
    sd3_controller_destroy(&ip->controller);
    if (ip->ctx)
        zmq_ctx_term(ip->ctx);
    memset(ip, 0, sizeof *ip);
}
