/*  sd3_enc_common - helpers the CLIP and T5 encoders share (internal to stages/encoder)
 *
 *  Both encoders read their configuration from tensor shapes, fetch every weight with a
 *  shape check and a float-dtype check, free backend tensors on one cleanup path and call
 *  an optional tap with a formatted name. One copy of each serves both, with the model's
 *  label ("CLIP", "T5") in every message, so the messages stay what they were.
 *  Called by sd3_clip.c and sd3_t5.c only. Never prints; errors go to err.  */
#pragma once
#include "sd3_backend.h"
#include "sd3_clip.h" // sd3_enc_tap_fn
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_weights.h"

#include <stdbool.h>

// Shape of `name` without touching its data. SD3_EFORMAT "<label> weights: tensor 'x' is
// missing" / "... 'x' has 3 dims, want 2".
int sd3_enc_shape(const sd3_weights_t *weights, const char *label, const char *name, int want_ndim,
                  int64_t *shape, sd3_err_t *err);

// The weight named by fmt: shape-checked (sd3_weights_need), a float dtype, and either the
// host view (host = true: embedding tables, gathered on the host) or the backend's form.
int sd3_enc_need(sd3_weights_t *weights, sd3_backend_t *be, const char *label,
                 const sd3_tensor_t **out, bool host, int ndim, const int64_t *shape,
                 sd3_err_t *err, const char *fmt, ...) __attribute__((format(printf, 9, 10)));

// Parses an HF-style config JSON (config_json not NULL): the root object, to free with
// cJSON_Delete, or NULL with SD3_EFORMAT "<label> config: not a JSON object".
struct cJSON *sd3_enc_config_parse(const char *config_json, const char *label, sd3_err_t *err);

// Frees a backend tensor and NULLs *t_p; NULL-safe whatever the backend's tensor_free does.
void sd3_enc_free(sd3_backend_t *be, sd3_tensor_t **t_p);

// Calls tap (when not NULL) with the formatted name; its return stops the encode.
int sd3_enc_tap(sd3_enc_tap_fn tap, void *user, const sd3_tensor_t *t, sd3_err_t *err,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
