/*  sd3_sched - pipelines of the controller: forming them and picking one per request
 *
 *  A pipeline is an ordered chain of mmdit ranges [0, a), [a, b), ..., [y, depth) hosted by
 *  registered nodes (SYSTEM.md §1); several pipelines are replicas that share the encoder
 *  and vae pools. sd3_sched_form() builds chains out of the ranges not yet in a pipeline
 *  (depth-first, so any set of ranges that can tile [0, depth) does); sd3_sched_pick()
 *  returns the least-loaded live pipeline that is under its in-flight limit (default: its
 *  stage count + 1, enough to keep every stage busy while one request waits on the hops).
 *  Nodes are named by the controller's index for them. Owned by the controller loop
 *  thread; not thread-safe.  */
#pragma once
#include "sd3_err.h"
#include "sd3_wire.h"

#include <stdbool.h>

typedef struct {
    int node;       // the controller's index of the node
    int begin, end; // blocks [begin, end)
    bool alive;
} sd3_sched_range_t;

typedef struct {
    int id; // its slot, from 0 (a dead pipeline's slot is reused by a new chain)
    int n_stages;
    int nodes[SD3_WIRE_MAX_STAGES]; // stage order
    int inflight, max_inflight;
    bool alive;
    unsigned long long completed;
} sd3_pipeline_t;

typedef struct sd3_sched sd3_sched_t;

// max_inflight: requests per pipeline at once; 0 = stages + 1.
sd3_sched_t *sd3_sched_new(int max_inflight);
void sd3_sched_destroy(sd3_sched_t **self_p);
// Forms new pipelines from the live ranges that are in none; returns how many it formed.
int sd3_sched_form(sd3_sched_t *self, const sd3_sched_range_t *ranges, int n_ranges, int depth);
// Marks every pipeline holding node dead (its requests fail or resume elsewhere); its
// other nodes become free for a new chain.
void sd3_sched_node_dead(sd3_sched_t *self, int node);
// Least-loaded live pipeline with a free slot (ties: the lowest id); -1 when none.
int sd3_sched_pick(const sd3_sched_t *self);
// The same, leaving out pipeline `except` (one that let a request hang); -1 when none.
int sd3_sched_pick_except(const sd3_sched_t *self, int except);
int sd3_sched_count(const sd3_sched_t *self);
int sd3_sched_alive_count(const sd3_sched_t *self);
sd3_pipeline_t *sd3_sched_get(sd3_sched_t *self, int i); // NULL past the end
// Whether node is a stage of a live pipeline.
bool sd3_sched_node_used(const sd3_sched_t *self, int node);
