/*  sd3_precision - compute precision names and the backend's setter (see sd3_precision.h)  */
#include "sd3_precision.h"

#include "sd3_backend.h"

#include <string.h>

int
sd3_precision_parse(const char *text, int *out, sd3_err_t *err)
{
    if (!text || !*text || !strcmp(text, "auto"))
        *out = -1;
    else if (!strcmp(text, "f32"))
        *out = SD3_PRECISION_F32;
    else if (!strcmp(text, "bf16"))
        *out = SD3_PRECISION_BF16;
    else
        return sd3_err_set(err, SD3_EINVAL, "precision '%s': want f32, bf16 or auto", text);
    return 0;
}

const char *
sd3_precision_name(sd3_precision_t p)
{
    return p == SD3_PRECISION_BF16 ? "bf16" : "f32";
}

int
sd3_backend_set_precision(sd3_backend_t *be, const char *text, sd3_err_t *err)
{
    int p = -1; // auto until parsed (GCC -O3 cannot see that a failed parse returns)
    if (!be)
        return sd3_err_set(err, SD3_EINVAL, "set precision: no backend");
    if (sd3_precision_parse(text, &p, err) != 0)
        return SD3_EINVAL;
    if (!be->ops->set_precision) {
        // a backend with one precision (cuda: bf16 throughout) keeps it; only an explicit
        // request for another one is refused
        if (p < 0)
            return 0;
        if ((sd3_precision_t)p == be->precision)
            return 0;
        return sd3_err_set(err, SD3_ENOTSUP, "backend '%s': precision %s is not available",
                           be->ops->name, sd3_precision_name((sd3_precision_t)p));
    }
    return be->ops->set_precision(be, p, err);
}
