/*  sd3ctl_status - `sd3ctl status --controller ADDR`: what a cluster is doing
 *
 *  One STATUS round trip (sd3_client) and a plain report: queue, in-flight, completed and
 *  failed requests, the prompt cache's hit rate, step latency, every node (role, range,
 *  alive, in flight, last heartbeat, link and codec, bytes moved) and every pipeline.  */
#include "sd3_client.h"
#include "sd3ctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


static void
s_bytes(char *out, size_t cap, uint64_t b)
{
    if (b >= (1ull << 30))
        snprintf(out, cap, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(out, cap, "%.2f MiB", (double)b / (double)(1ull << 20));
    else
        snprintf(out, cap, "%.1f KiB", (double)b / 1024.0);
}

int
sd3ctl_status(int argc, char **argv)
{
    const char *controller = "tcp://127.0.0.1:7710";
    long timeout_ms = 3000;
    sd3_client_opts_t copts = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--controller") && i + 1 < argc)
            controller = argv[++i];
        else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc)
            timeout_ms = atol(argv[++i]);
        else if (!strcmp(argv[i], "--curve-secret") && i + 1 < argc)
            copts.curve_secret = argv[++i];
        else if (!strcmp(argv[i], "--curve-server-pub") && i + 1 < argc)
            copts.curve_server_pub = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: sd3ctl status [--controller ADDR] [--timeout-ms N]\n"
                   "                     [--curve-secret FILE --curve-server-pub FILE]\n");
            return 0;
        } else {
            fprintf(stderr, "sd3ctl status: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    sd3_err_t err = {0};
    sd3_client_t *cl = sd3_client_new(controller, &copts, &err);
    static sd3_wire_status_t st;
    if (!cl || sd3_client_status(cl, (int)timeout_ms, &st, &err) != 0) {
        fprintf(stderr, "sd3ctl status: %s\n", err.msg);
        sd3_client_destroy(&cl);
        return 1;
    }
    sd3_client_destroy(&cl);
    uint64_t lookups = st.cache_hits + st.cache_misses;
    printf("controller %s  up %.1f s\n", controller, (double)st.uptime_ms / 1000.0);
    printf("queue %u/%u  in flight %u  completed %llu  failed %llu\n", st.queue_depth,
           st.queue_capacity, st.inflight, (unsigned long long)st.completed,
           (unsigned long long)st.failed);
    printf("prompt cache: %llu hits, %llu misses (hit rate %.1f%%)\n",
           (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses,
           lookups ? 100.0 * (double)st.cache_hits / (double)lookups : 0.0);
    printf("steps: %llu, mean %.1f ms between steps of a request\n",
           (unsigned long long)st.step_count,
           st.step_count ? 1000.0 * st.step_seconds_sum / (double)st.step_count : 0.0);
    printf("failovers %llu  step timeouts %llu  nodes found hung %llu\n",
           (unsigned long long)st.failovers, (unsigned long long)st.step_timeouts,
           (unsigned long long)st.nodes_hung);
    printf("\nnodes (%d):\n  %-12s %-8s %-9s %-5s %-12s %-8s %-9s %-6s %-16s %-12s %-12s %-9s %s\n",
           st.n_nodes, "id", "role", "blocks", "alive", "state", "inflight", "last seen", "link",
           "codec", "sent", "received", "merged", "now");
    for (int i = 0; i < st.n_nodes; i++) {
        const sd3_wire_node_info_t *n = &st.nodes[i];
        char range[32] = "-", sent[32], recv[32], merged[48] = "-";
        const char *role = sd3_wire_role_name(n->node.role);
        if (n->node.role == SD3_WIRE_ROLE_MMDIT)
            snprintf(range, sizeof range, "[%u,%u)", n->node.layer_begin, n->node.layer_end);
        s_bytes(sent, sizeof sent, n->bytes_sent);
        s_bytes(recv, sizeof recv, n->bytes_received);
        if (n->node.role == SD3_WIRE_ROLE_MMDIT) // merged batches / the steps they held
            snprintf(merged, sizeof merged, "%llu/%llu", (unsigned long long)n->batches,
                     (unsigned long long)n->batched_steps);
        const sd3_wire_live_t *l = &n->node.live;
        char state[32], now[160];
        if (n->hung)
            snprintf(state, sizeof state, "HUNG");
        else if (l->state == SD3_WIRE_NODE_LOADING)
            snprintf(state, sizeof state, "loading %u%%", l->load_permille / 10);
        else
            snprintf(state, sizeof state, "ready");
        if (l->busy_request[0])
            snprintf(now, sizeof now, "req=%s step %u unit %u/%u %.1f s (expect %.1f s)",
                     l->busy_request, l->busy_step, l->busy_unit, l->busy_units,
                     (double)l->busy_ms / 1000.0, (double)l->expect_ms / 1000.0);
        else
            snprintf(now, sizeof now, "idle");
        char extra[96] = "";
        if (l->threads || l->gflops > 0)
            snprintf(extra, sizeof extra, "  [%u threads, %.1f GFLOP/s%s%s]", l->threads, l->gflops,
                     l->fault[0] ? ", fault " : "", l->fault);
        printf("  %-12s %-8s %-9s %-5s %-12s %-8u %-9.1f %-6s %-16s %-12s %-12s %-9s %s%s\n",
               n->node.node_id, role ? role : "?", range, n->alive ? "yes" : "NO", state,
               n->inflight, (double)n->last_seen_ms / 1000.0,
               n->link == SD3_WIRE_LINK_NCCL ? "nccl" : "zmq",
               n->node.codec[0] ? n->node.codec : "raw", sent, recv, merged, now, extra);
    }
    printf("\npipelines (%d):\n", st.n_pipelines);
    for (int p = 0; p < st.n_pipelines; p++) {
        const sd3_wire_pipeline_info_t *pi = &st.pipelines[p];
        printf("  %u: ", pi->id);
        for (int s = 0; s < pi->n_stages; s++)
            printf("%s%s", s ? " -> " : "", pi->node_ids[s]);
        printf("  (in flight %u/%u)\n", pi->inflight, pi->max_inflight);
    }
    return 0;
}
