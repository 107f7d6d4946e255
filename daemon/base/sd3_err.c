/*  sd3_err - error codes and the error record (see sd3_err.h)  */
#include "sd3_err.h"

#include <stdio.h>
#include <string.h>

int
sd3_err_set(sd3_err_t *err, int code, const char *fmt, ...)
{
    if (err && err->code == SD3_OK) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

int
sd3_err_prefix(sd3_err_t *err, const char *fmt, ...)
{
    if (!err)
        return SD3_OK;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
    return err->code;
}

void
sd3_err_clear(sd3_err_t *err)
{
    if (err) {
        err->code = SD3_OK;
        err->msg[0] = '\0';
    }
}

const char *
sd3_err_name(int code)
{
    switch (code) {
    case SD3_OK: return "OK";
    case SD3_EINVAL: return "EINVAL";
    case SD3_EFORMAT: return "EFORMAT";
    case SD3_EPROTO: return "EPROTO";
    case SD3_ENOMEM: return "ENOMEM";
    case SD3_EIO: return "EIO";
    case SD3_EFULL: return "EFULL";
    case SD3_ECANCELED: return "ECANCELED";
    case SD3_ETIMEDOUT: return "ETIMEDOUT";
    case SD3_EDEVICE: return "EDEVICE";
    case SD3_EINTERNAL: return "EINTERNAL";
    case SD3_ENOTSUP: return "ENOTSUP";
    case SD3_ENOTFOUND: return "ENOTFOUND";
    default: return "E?";
    }
}

int
sd3_size_mul(size_t a, size_t b, size_t *out)
{
    if (__builtin_mul_overflow(a, b, out))
        return -1;
    return 0;
}

int
sd3_size_add(size_t a, size_t b, size_t *out)
{
    if (__builtin_add_overflow(a, b, out))
        return -1;
    return 0;
}
