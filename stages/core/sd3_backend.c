/*  sd3_backend - backend registry (see sd3_backend.h)  */
#include "sd3_backend.h"

#include <string.h>

sd3_backend_t *
sd3_backend_new(const char *name, int n_threads, sd3_err_t *err)
{
    if (!name || !strcmp(name, "cpu"))
        return sd3_cpu_backend_new(n_threads, err);
    if (!strcmp(name, "cuda")) {
#ifdef SD3_HAVE_CUDA
        return sd3_cuda_backend_new(0, err);
#else
        sd3_err_set(err, SD3_ENOTSUP, "backend 'cuda': this build has no CUDA (nvcc was not "
                                      "found at configure time)");
        return NULL;
#endif
    }
    sd3_err_set(err, SD3_EINVAL, "backend '%s': unknown (available: %s)", name,
                sd3_backend_available());
    return NULL;
}

void
sd3_backend_destroy(sd3_backend_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    (*self_p)->ops->destroy(*self_p);
    *self_p = NULL;
}

const char *
sd3_backend_available(void)
{
#ifdef SD3_HAVE_CUDA
    return "cpu,cuda";
#else
    return "cpu";
#endif
}
