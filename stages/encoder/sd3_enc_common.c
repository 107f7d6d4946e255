/*  sd3_enc_common - helpers the CLIP and T5 encoders share (see sd3_enc_common.h)  */
#include "sd3_enc_common.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>

int
sd3_enc_shape(const sd3_weights_t *weights, const char *label, const char *name, int want_ndim,
              int64_t *shape, sd3_err_t *err)
{
    int ndim = 0;
    if (sd3_weights_shape(weights, name, &ndim, shape) != 0)
        return sd3_err_set(err, SD3_EFORMAT, "%s weights: tensor '%s' is missing", label, name);
    if (ndim != want_ndim)
        return sd3_err_set(err, SD3_EFORMAT, "%s weights: '%s' has %d dims, want %d", label, name,
                           ndim, want_ndim);
    return 0;
}

int
sd3_enc_need(sd3_weights_t *weights, sd3_backend_t *be, const char *label, const sd3_tensor_t **out,
             bool host, int ndim, const int64_t *shape, sd3_err_t *err, const char *fmt, ...)
{
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const sd3_tensor_t *t = NULL;
    int rc = sd3_weights_need(weights, name, ndim, shape, &t, err);
    if (rc)
        return rc;
    if (!sd3_dtype_is_float(t->dtype))
        return sd3_err_set(err, SD3_EFORMAT, "%s weights: '%s' has dtype %s, want a float", label,
                           name, sd3_dtype_name(t->dtype));
    if (host) {
        *out = t;
        return 0;
    }
    *out = be->ops->weight(be, t, err);
    return *out ? 0 : (err && err->code ? err->code : SD3_EINTERNAL);
}

cJSON *
sd3_enc_config_parse(const char *config_json, const char *label, sd3_err_t *err)
{
    cJSON *root = cJSON_Parse(config_json);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        sd3_err_set(err, SD3_EFORMAT, "%s config: not a JSON object", label);
        return NULL;
    }
    return root;
}

void
sd3_enc_free(sd3_backend_t *be, sd3_tensor_t **t_p)
{
    if (*t_p)
        be->ops->tensor_free(be, t_p);
    *t_p = NULL;
}

int
sd3_enc_tap(sd3_enc_tap_fn tap, void *user, const sd3_tensor_t *t, sd3_err_t *err, const char *fmt,
            ...)
{
    char name[64];
    va_list ap;
    if (!tap)
        return 0;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return tap(user, name, t, err);
}
