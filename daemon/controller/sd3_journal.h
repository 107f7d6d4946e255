/*  sd3_journal - the controller's crash-safe journal of accepted requests and their newest latent
 *
 *  One SQLite file in WAL mode (SYSTEM.md §2 step 4, §5). It keeps every request the
 *  controller accepted (the resolved GenerateRequest, the client's routing id, its state,
 *  attempt, times, and once it ended the PNG or the error) and, per live request, only the
 *  newest step checkpoint: the latent entering step `step` and, for DPM++ 2M, the previous
 *  denoised tensor the sampler carries between steps. A controller that restarts calls
 *  sd3_journal_recover() and resumes every unfinished request from its checkpoint; a client
 *  that reconnects with its request id gets its image from sd3_journal_get().
 *
 *  Bit-identical resume: the sampler's only state between steps is (step, has_old,
 *  old_denoised) (sd3_sampler.h). Euler needs the latent alone. DPM++ 2M needs D of step
 *  i-1, which cannot be rebuilt from the latents in float arithmetic, so a checkpoint
 *  holds it too (2 MiB at 1024 px instead of 1). A checkpoint written without it for a
 *  DPM++ 2M request at step > 0 is refused (SD3_EINVAL); a request with no checkpoint
 *  resumes from step 0 with the noise of its seed, which is bit-identical as well.
 *
 *  Durability: every call but checkpoint commits before it returns, so a crash of the
 *  process (SIGKILL included) loses nothing that returned. accept commits with
 *  synchronous=FULL (an fsync): an ACKed request survives a power cut too. The rest use
 *  synchronous=NORMAL (no fsync in the loop): a power cut may lose the newest few, never
 *  tear one (one transaction each; WAL frames are checksummed), and what it loses is
 *  recomputed: a lost finish also restores the checkpoint, so the request resumes and
 *  makes the same PNG. Checkpoints are written by a background thread (the step loop pays
 *  a copy) and may trail the newest by a step or more when the disk lags; a resume starts
 *  from an older complete checkpoint, or from step 0: bit-identical either way.
 *  The journal takes an exclusive lock on the file: a second controller on the same file
 *  gets SD3_EIO at open.
 *
 *  Everything read back is checked before use (types, sizes against the stored shape and
 *  caps, an XXH3 checksum over the latent bytes, the request through sd3_wire_decode):
 *  a corrupt or hostile file gets SD3_EFORMAT naming the request and the problem, never a
 *  crash.
 *  Thread: one journal is used by one thread (the controller loop); it runs one thread of
 *  its own (the checkpoint writer, with its own SQLite connection).  */
#pragma once
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Caps on what the journal reads back (and accepts): a latent [1, 16, h, w] at the largest
// side SD3_WIRE_MAX_SIDE is 64 MiB; a stored request (envelope + init image) 256 MiB.
#define SD3_JOURNAL_MAX_LATENT  (256u << 20)
#define SD3_JOURNAL_MAX_REQUEST (256u << 20)
#define SD3_JOURNAL_MAX_RESULT  (512u << 20)

typedef enum {
    SD3_JOURNAL_QUEUED = 0, // accepted, not yet sent to a pipeline
    SD3_JOURNAL_RUNNING,    // sent to a pipeline (sd3_journal_start) or a step was checkpointed
    SD3_JOURNAL_DONE,       // the PNG is stored
    SD3_JOURNAL_FAILED,     // error code and message stored
    SD3_JOURNAL_CANCELLED,
    SD3_JOURNAL_STATE_COUNT
} sd3_journal_state_t;

typedef struct sd3_journal sd3_journal_t;

// What sd3_journal_get returns for one request. Fill with sd3_journal_get, release with
// sd3_journal_info_fini (frees png and init_image).
typedef struct {
    char request_id[SD3_WIRE_ID_MAX];
    uint8_t client_id[SD3_WIRE_ROUTING_ID_MAX];
    size_t client_id_len;
    sd3_journal_state_t state;
    uint32_t attempt;
    uint32_t step;                  // steps done by the newest checkpoint (0: none)
    int64_t created_ms, updated_ms; // unix ms
    int error_code;                 // FAILED/CANCELLED: an SD3_E* code; else SD3_OK
    char error_msg[SD3_WIRE_MSG_MAX];
    sd3_wire_generate_t request; // as accepted (seed resolved)
    sd3_tensor_t *init_image;    // owned: img2img U8 [H, W, 3], else NULL
    uint8_t *png;                // owned (free()): DONE only, else NULL
    size_t png_size;
} sd3_journal_info_t;

// One unfinished request as sd3_journal_recover hands it over. Everything is borrowed for
// the duration of the callback (clone what you keep).
typedef struct {
    const char *request_id;
    const uint8_t *client_id;
    size_t client_id_len;
    sd3_journal_state_t state; // QUEUED or RUNNING
    uint32_t attempt;          // the last attempt started; a resume should use attempt + 1
    int64_t created_ms;
    const sd3_wire_generate_t *request;
    const sd3_tensor_t *init_image; // img2img U8 [H, W, 3], else NULL
    // The newest checkpoint: latent NULL and step 0 when there is none (start from noise).
    uint32_t step;                    // steps done: the latent enters step `step`
    const sd3_tensor_t *latent;       // [1, Z, h, w] F32
    const sd3_tensor_t *old_denoised; // DPM++ 2M at step > 0: [1, Z, h, w] F32; else NULL
} sd3_journal_entry_t;

// Return 0 to go on; anything else stops sd3_journal_recover, which returns it.
typedef int (*sd3_journal_recover_fn)(void *user, const sd3_journal_entry_t *entry, sd3_err_t *err);

// Opens (creating when absent) the journal at path. SD3_EFORMAT: the file is not an sd3d
// journal or is corrupt (integrity check); SD3_EIO: cannot open, or another process holds
// the journal. NULL on failure.
sd3_journal_t *sd3_journal_open(const char *path, sd3_err_t *err);
void sd3_journal_destroy(sd3_journal_t **self_p); // closes the file; NULL-safe

// Records an accepted request (state QUEUED, attempt 0). Call it before the client is told
// (ACK): once it returned the request survives a crash. req must be resolved (defaults
// filled, seed_random already turned into a seed) so a replay makes the same image.
// init_image: NULL or the img2img U8 [H, W, 3] host tensor (borrowed, copied).
// client_id: the routing id (0..SD3_WIRE_ROUTING_ID_MAX bytes, borrowed).
// SD3_EINVAL: bad id or tensor, or the id is already in the journal (message says its state).
int sd3_journal_accept(sd3_journal_t *self, const char *request_id, const uint8_t *client_id,
                       size_t client_id_len, const sd3_wire_generate_t *req,
                       const sd3_tensor_t *init_image, sd3_err_t *err);

// The request was sent to a pipeline as `attempt` (state RUNNING). SD3_ENOTFOUND: unknown
// id; SD3_EINVAL: the request already ended.
int sd3_journal_start(sd3_journal_t *self, const char *request_id, uint32_t attempt,
                      sd3_err_t *err);

// STEP_DONE: `step` steps are done; latent [1, Z, h, w] F32 host enters step `step`;
// old_denoised (same shape, or NULL) is the sampler's D of step `step` - 1, required for a
// DPM++ 2M request at step > 0. Both borrowed and copied: the call checks, copies (about
// 0.3 ms per MiB) and returns; the journal's writer thread commits it in the background,
// replacing the request's previous checkpoint in one transaction (the request becomes
// RUNNING). While the disk lags, a newer checkpoint of a request replaces its pending
// one: the newest is written, none is torn. A checkpoint older than the pending or stored
// one, by (attempt, step), is dropped (returns 0): steps are idempotent.
// SD3_ENOTFOUND: unknown id; SD3_EINVAL: ended request, bad shape, missing old_denoised;
// also the first failure of an earlier background write, once (its message says so).
int sd3_journal_checkpoint(sd3_journal_t *self, const char *request_id, uint32_t attempt,
                           uint32_t step, const sd3_tensor_t *latent,
                           const sd3_tensor_t *old_denoised, sd3_err_t *err);
// Waits until every checkpoint handed over so far is committed (shutdown, tests), and
// returns the first background failure if there was one. destroy flushes too.
int sd3_journal_flush(sd3_journal_t *self, sd3_err_t *err);

// The request ended: DONE with its PNG (borrowed, copied), FAILED with code and message, or
// CANCELLED. Each drops the checkpoint. SD3_ENOTFOUND: unknown id; SD3_EINVAL: already ended.
int sd3_journal_finish(sd3_journal_t *self, const char *request_id, const uint8_t *png,
                       size_t png_size, sd3_err_t *err);
int sd3_journal_fail(sd3_journal_t *self, const char *request_id, int code, const char *msg,
                     sd3_err_t *err);
int sd3_journal_cancel(sd3_journal_t *self, const char *request_id, sd3_err_t *err);

// Everything stored about one request (a reconnecting client: its state, PNG or error).
// *out is filled (release with sd3_journal_info_fini, also after a failure).
// SD3_ENOTFOUND: unknown (or pruned) id; SD3_EFORMAT: the row is corrupt.
int sd3_journal_get(sd3_journal_t *self, const char *request_id, sd3_journal_info_t *out,
                    sd3_err_t *err);
void sd3_journal_info_fini(sd3_journal_info_t *info);

// Calls fn for every QUEUED or RUNNING request in acceptance order, with its newest
// checkpoint. A row that fails its checks is marked FAILED with SD3_EFORMAT and its
// message (a reconnecting client learns why), counted in *n_refused (may be NULL), and
// skipped. Returns 0, fn's non-zero return, or SD3_EIO.
int sd3_journal_recover(sd3_journal_t *self, sd3_journal_recover_fn fn, void *user, int *n_refused,
                        sd3_err_t *err);

// Deletes ended requests (DONE, FAILED, CANCELLED) last updated before before_ms (unix ms),
// results included, and returns the space to the file. Live requests are never pruned.
// Returns the number of requests removed (>= 0) or a negative SD3_E*.
int sd3_journal_prune(sd3_journal_t *self, int64_t before_ms, sd3_err_t *err);

// Requests in a state (SD3_JOURNAL_STATE_COUNT: all); negative SD3_E* on failure.
int64_t sd3_journal_count(sd3_journal_t *self, sd3_journal_state_t state, sd3_err_t *err);

const char *sd3_journal_state_name(sd3_journal_state_t state); // "queued", ...
