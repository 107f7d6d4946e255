/*  sd3_codec - one tensor to one wire frame and back: raw, zstd, shuffle+zstd
 *
 *  The payload half of the wire format (SYSTEM.md §3). Encoding optionally narrows an F32
 *  tensor to BF16/F16 for transfer (opt-in; the error it adds is in ARCHITECTURE.md), takes
 *  an XXH3-64 checksum of those raw bytes, then compresses them:
 *    raw           the bytes as they are
 *    zstd          one zstd frame that records its content size
 *    shuffle+zstd  byte planes first (byte 0 of every element, then byte 1, ...), then zstd:
 *                  the sign/exponent bytes of floats line up and compress far better.
 *  Decoding trusts nothing in the descriptor: it checks dtype/shape/size agreement
 *  (overflow-checked) against a cap before allocating, the zstd frame's content size against
 *  the declared size, never decompresses past the declared size (zip bombs fail), and checks
 *  the checksum. Every failure is SD3_EPROTO with a message naming the tensor, what was found
 *  and what was wanted (SD3_ENOMEM when memory runs out below the cap).
 *  Called by sd3_wire (and the fuzz target). Pure functions of their arguments; thread-safe.
 *  Never includes protobuf or ZeroMQ.  */
#pragma once
#include "sd3_err.h"
#include "sd3_tensor.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    SD3_CODEC_RAW = 0,
    SD3_CODEC_ZSTD = 1,
    SD3_CODEC_SHUFFLE_ZSTD = 2,
    SD3_CODEC_COUNT
} sd3_codec_t;

#define SD3_CODEC_NAME_MAX      64                // tensor names, terminator included
#define SD3_CODEC_DEFAULT_CAP   ((size_t)1 << 30) // 1 GiB per tensor
#define SD3_CODEC_DEFAULT_LEVEL 1                 // zstd level: ~1 GB/s, most of the gain

// What the envelope says about one frame (sd3_wire maps it to proto TensorDesc).
typedef struct {
    char name[SD3_CODEC_NAME_MAX];
    sd3_dtype_t dtype;          // what the receiver gets
    sd3_dtype_t wire_dtype;     // what travels: dtype, or BF16/F16 for an F32 tensor
    int ndim;                   // 0..SD3_MAX_DIM
    int64_t shape[SD3_MAX_DIM]; // outermost first
    sd3_codec_t codec;
    uint64_t raw_bytes;  // numel * size(wire_dtype)
    uint64_t wire_bytes; // frame length
    uint64_t checksum;   // XXH3-64 of the raw bytes
} sd3_codec_desc_t;

typedef struct {
    sd3_codec_t codec;      // SD3_CODEC_RAW by default (zero)
    sd3_dtype_t wire_dtype; // SD3_BF16 or SD3_F16 narrow an F32 tensor; anything else
                            // (SD3_F32 = the zero default) sends the tensor's own dtype
    int level;              // zstd level; 0 = SD3_CODEC_DEFAULT_LEVEL
} sd3_codec_opts_t;

const char *sd3_codec_name(sd3_codec_t codec); // "raw", "zstd", "shuffle+zstd"
// Parses "raw" | "zstd" | "shuffle+zstd" (also "shuffle"); 0 and *out, or -1.
int sd3_codec_from_name(const char *name, sd3_codec_t *out);

// Encodes host tensor t into a fresh malloc'd frame (*frame_p, *frame_len; yours to free)
// and fills desc (name from t->name, or "" when NULL; names longer than 63 bytes fail).
// When the frame would be the tensor's own bytes (raw, no narrowing) and `copy` is false,
// *frame_p is set to t->data itself (not yours to free) so a caller that owns t can send it
// without a copy; check *frame_p == t->data. SD3_EINVAL on a device tensor, a bad dtype or
// opts; SD3_ENOMEM; SD3_EINTERNAL when zstd fails.
int sd3_codec_encode(const sd3_tensor_t *t, const sd3_codec_opts_t *opts, bool copy,
                     sd3_codec_desc_t *desc, void **frame_p, size_t *frame_len, sd3_err_t *err);

// Checks a descriptor read off the wire without touching its frame: known dtype, wire
// dtype and codec; ndim <= 4; dims >= 0; raw_bytes == numel * size(wire_dtype) with no
// overflow; raw_bytes and the decoded size <= cap (0 = SD3_CODEC_DEFAULT_CAP); wire_bytes ==
// frame_len; raw codec: wire_bytes == raw_bytes. SD3_EPROTO naming the problem.
int sd3_codec_check(const sd3_codec_desc_t *desc, size_t frame_len, size_t cap, sd3_err_t *err);

// sd3_codec_check, then decodes the frame into a fresh owned host tensor of desc->dtype
// (*out; its name is desc->name, stored with the tensor). The frame is borrowed.
// SD3_EPROTO for any disagreement (content size, a frame that decompresses past its
// declared size or short of it, checksum), SD3_ENOMEM.
int sd3_codec_decode(const sd3_codec_desc_t *desc, const void *frame, size_t frame_len, size_t cap,
                     sd3_tensor_t **out, sd3_err_t *err);

// Byte-plane shuffle of n elements of `size` bytes (exposed for tests and benches).
void sd3_codec_shuffle(const void *src, void *dst, size_t n, size_t size);
void sd3_codec_unshuffle(const void *src, void *dst, size_t n, size_t size);
