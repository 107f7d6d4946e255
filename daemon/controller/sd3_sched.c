/*  sd3_sched - pipelines of the controller (see sd3_sched.h)  */
#include "sd3_sched.h"

#include <stdlib.h>
#include <string.h>

struct sd3_sched {
    int max_inflight;
    sd3_pipeline_t pipes[SD3_WIRE_MAX_PIPELINES];
    int n;
};

sd3_sched_t *
sd3_sched_new(int max_inflight)
{
    sd3_sched_t *self = calloc(1, sizeof *self);
    if (self)
        self->max_inflight = max_inflight > 0 ? max_inflight : 0;
    return self;
}

void
sd3_sched_destroy(sd3_sched_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free(*self_p);
    *self_p = NULL;
}

bool
sd3_sched_node_used(const sd3_sched_t *self, int node)
{
    for (int p = 0; p < self->n; p++)
        if (self->pipes[p].alive)
            for (int s = 0; s < self->pipes[p].n_stages; s++)
                if (self->pipes[p].nodes[s] == node)
                    return true;
    return false;
}

// Depth-first: extends chain (ranges indices) from block `at` to depth.
static bool
s_chain(const sd3_sched_range_t *r, int n, bool *taken, int at, int depth, int *chain, int len)
{
    if (at == depth)
        return len > 0;
    if (len == SD3_WIRE_MAX_STAGES)
        return false;
    for (int i = 0; i < n; i++) {
        if (taken[i] || r[i].begin != at || r[i].end <= at)
            continue;
        taken[i] = true;
        chain[len] = i;
        if (s_chain(r, n, taken, r[i].end, depth, chain, len + 1))
            return true;
        taken[i] = false;
    }
    return false;
}

int
sd3_sched_form(sd3_sched_t *self, const sd3_sched_range_t *ranges, int n_ranges, int depth)
{
    bool taken[SD3_WIRE_MAX_NODES] = {false};
    int formed = 0;
    if (n_ranges > SD3_WIRE_MAX_NODES)
        n_ranges = SD3_WIRE_MAX_NODES;
    for (int i = 0; i < n_ranges; i++)
        taken[i] = !ranges[i].alive || sd3_sched_node_used(self, ranges[i].node);
    for (;;) {
        // A dead pipeline's slot is reused (nodes die and come back many times over a
        // cluster's life); its requests moved on when it died.
        int slot = self->n;
        for (int p = 0; p < self->n; p++)
            if (!self->pipes[p].alive) {
                slot = p;
                break;
            }
        if (slot == SD3_WIRE_MAX_PIPELINES)
            break;
        int chain[SD3_WIRE_MAX_STAGES], len = 0;
        bool trial[SD3_WIRE_MAX_NODES];
        memcpy(trial, taken, sizeof trial);
        if (!s_chain(ranges, n_ranges, trial, 0, depth, chain, 0))
            break;
        for (len = 0; len < SD3_WIRE_MAX_STAGES; len++) // the chain ends where it reaches depth
            if (ranges[chain[len]].end == depth)
                break;
        sd3_pipeline_t *p = &self->pipes[slot];
        memset(p, 0, sizeof *p);
        p->id = slot;
        p->n_stages = len + 1;
        for (int s = 0; s <= len; s++) {
            p->nodes[s] = ranges[chain[s]].node;
            taken[chain[s]] = true;
        }
        p->max_inflight = self->max_inflight ? self->max_inflight : p->n_stages + 1;
        p->alive = true;
        if (slot == self->n)
            self->n++;
        formed++;
    }
    return formed;
}

void
sd3_sched_node_dead(sd3_sched_t *self, int node)
{
    for (int p = 0; p < self->n; p++)
        for (int s = 0; s < self->pipes[p].n_stages; s++)
            if (self->pipes[p].nodes[s] == node)
                self->pipes[p].alive = false;
}

int
sd3_sched_pick(const sd3_sched_t *self)
{
    return sd3_sched_pick_except(self, -1);
}

int
sd3_sched_pick_except(const sd3_sched_t *self, int except)
{
    int best = -1;
    for (int p = 0; p < self->n; p++) {
        const sd3_pipeline_t *q = &self->pipes[p];
        if (p == except || !q->alive || q->inflight >= q->max_inflight)
            continue;
        // Least loaded relative to its limit; ties go to the lowest id.
        if (best < 0 || (long)q->inflight * self->pipes[best].max_inflight <
                            (long)self->pipes[best].inflight * q->max_inflight)
            best = p;
    }
    return best;
}

int
sd3_sched_count(const sd3_sched_t *self)
{
    return self->n;
}

int
sd3_sched_alive_count(const sd3_sched_t *self)
{
    int n = 0;
    for (int p = 0; p < self->n; p++)
        n += self->pipes[p].alive;
    return n;
}

sd3_pipeline_t *
sd3_sched_get(sd3_sched_t *self, int i)
{
    return i >= 0 && i < self->n ? &self->pipes[i] : NULL;
}
