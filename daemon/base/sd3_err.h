/*  sd3_err - error codes and the error record every fallible call fills
 *
 *  A function that can fail on input returns int (0, or a negative SD3_E*) and takes
 *  `sd3_err_t *err` last. The message is written where the problem was seen and goes
 *  unchanged to the log and to the client, so it names the object, what was found and what
 *  was wanted, and never holds pointers or keys. The codes map one to one onto the wire
 *  status (proto/sd3.proto Status).  */
#pragma once
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum {
    SD3_OK = 0,
    SD3_EINVAL = -1,     // bad argument or shape
    SD3_EFORMAT = -2,    // bad file
    SD3_EPROTO = -3,     // bad message
    SD3_ENOMEM = -4,     // allocation failed or a size past its cap
    SD3_EIO = -5,        // read/write/socket failure
    SD3_EFULL = -6,      // RESOURCE_EXHAUSTED: a queue or pool is full
    SD3_ECANCELED = -7,  // the request was cancelled
    SD3_ETIMEDOUT = -8,  // a deadline passed
    SD3_EDEVICE = -9,    // CUDA, NCCL
    SD3_EINTERNAL = -10, // our own bug seen at run time
    SD3_ENOTSUP = -11,   // not supported by this build, backend or model
    SD3_ENOTFOUND = -12, // a named object (file, tensor, request) does not exist
};

typedef struct {
    int code;      // SD3_OK or SD3_E*
    char msg[512]; // "a.safetensors: 'final_layer.linear.weight' is [64,1536], want [64,2432]"
} sd3_err_t;

// Records code and message in err (which may be NULL) and returns code. An err that
// already holds an error keeps the first one: the first failure is the cause.
int sd3_err_set(sd3_err_t *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
// Prepends "prefix: " to the message already in err (for context as the error rises).
int sd3_err_prefix(sd3_err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sd3_err_clear(sd3_err_t *err);
// "EINVAL", "EFORMAT", ...
const char *sd3_err_name(int code);

// Overflow-checked size arithmetic for every count read from outside (STYLE.md §3).
// Return 0 and set *out, or -1 on overflow.
int sd3_size_mul(size_t a, size_t b, size_t *out);
int sd3_size_add(size_t a, size_t b, size_t *out);
