/*  sd3_wire_bad - malformed messages, built on purpose, for tests of every receiver
 *
 *  Test support, not used by the daemon: each kind is one way a hostile or broken peer can
 *  get a message wrong (garbage or truncated envelope, wrong protocol version, missing and
 *  extra frames, lying sizes, zstd bombs, checksum mismatch, oversized declarations, wrong
 *  shapes for the stage, bad bodies...). tests/unit/test_wire.c sends all of them to a ROUTER
 *  and checks each is refused with SD3_EPROTO and a message containing sd3_wire_bad_expect(),
 *  and that the receiver then still serves a good message; tests/cluster/ sends the same
 *  kinds to every role.
 *
 *  Most kinds are a STEP for request `request_id`, step 3, carrying
 *    "x" F32 [2,16,24] shuffle+zstd   "ctx" F32 [2,8,24] zstd   "c" F32 [2,24] raw
 *  with one thing broken. Kinds with sd3_wire_bad_is_stage_check() true are valid messages
 *  whose tensors do not have the shapes a stage expects: the wire accepts them and
 *  sd3_msg_expect() (as a stage uses it, shapes from sd3_wire_bad_step_shapes()) refuses.
 *  Lives in daemon/wire because it edits envelopes at the protobuf level.  */
#pragma once
#include "sd3_wire.h"

#include <stdbool.h>

#define SD3_WIRE_BAD_MAX_FRAMES 48

typedef struct {
    int n;
    sd3_wire_frame_t frames[SD3_WIRE_BAD_MAX_FRAMES]; // each owned (free_fn set)
} sd3_wire_bad_msg_t;

int sd3_wire_bad_count(void);
const char *sd3_wire_bad_name(int kind);   // "truncated envelope", ...
const char *sd3_wire_bad_expect(int kind); // a substring of the error message it must get
bool sd3_wire_bad_is_stage_check(int kind);

// The STEP every kind is based on, intact (for "still serves a good message").
int sd3_wire_bad_good(const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err);
// What a stage expects of the base STEP: names[i] is F32 with shape shapes[i] (ndims[i] dims).
void sd3_wire_bad_step_shapes(const char *const **names, const int **ndims,
                              const int64_t (**shapes)[SD3_MAX_DIM], int *n);
// Checks a received STEP as a stage would (sd3_msg_expect on the three tensors).
int sd3_wire_bad_check_step(const sd3_msg_t *msg, sd3_err_t *err);

// Builds malformed message `kind` (0 .. count-1) into out. SD3_EINVAL for an unknown kind.
int sd3_wire_bad_build(int kind, const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err);
void sd3_wire_bad_fini(sd3_wire_bad_msg_t *msg);
// Sends msg's frames as one multipart message (routing id first when routing_id_len > 0).
// The frames stay yours.
int sd3_wire_bad_send(void *sock, const sd3_wire_bad_msg_t *msg, const void *routing_id,
                      size_t routing_id_len, sd3_err_t *err);
