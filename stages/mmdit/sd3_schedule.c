/*  sd3_schedule - rectified-flow sigma schedules (see sd3_schedule.h)  */
#include "sd3_schedule.h"

#include <math.h>

float
sd3_schedule_sigma(float t, float shift)
{
    float s = t / 1000.0f;
    if (shift == 1.0f)
        return s;
    // torch: shift * s / (1 + (shift - 1) * s), each op a float32 tensor op
    return shift * s / (1.0f + (shift - 1.0f) * s);
}

float
sd3_schedule_timestep(float sigma)
{
    return sigma * 1000.0f;
}

// Scalar element of torch's linspace kernel: from the start for the first half, from
// the end for the second.
static float
s_linspace_at(float start, float end, float step, int n, int i)
{
    if (i < n / 2)
        return fmaf(step, (float)i, start);
    return fmaf(-step, (float)(n - 1 - i), end);
}

void
sd3_schedule_linspace(float start, float end, int n, float *out)
{
    if (n <= 0)
        return;
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    int i = 0;
    // While 16 or more remain: two 8-wide vectors, each base + k*step (k*step rounded).
    for (; i <= n - 16; i += 16)
        for (int v = i; v < i + 16; v += 8) {
            float base = s_linspace_at(start, end, step, n, v);
            out[v] = base;
            for (int k = 1; k < 8; k++)
                out[v + k] = base + (float)k * step;
        }
    for (; i < n; i++)
        out[i] = s_linspace_at(start, end, step, n, i);
}

int
sd3_schedule_sigmas(int n, float shift, float *sigmas, sd3_err_t *err)
{
    if (n < 1 || n > SD3_SCHEDULE_MAX_STEPS)
        return sd3_err_set(err, SD3_EINVAL, "schedule: %d steps, want 1..%d", n,
                           SD3_SCHEDULE_MAX_STEPS);
    if (!(shift > 0.0f) || !isfinite(shift))
        return sd3_err_set(err, SD3_EINVAL, "schedule: shift %g, want > 0", (double)shift);
    float start = sd3_schedule_timestep(sd3_schedule_sigma(1000.0f, shift));
    float end = sd3_schedule_timestep(sd3_schedule_sigma(1.0f, shift));
    sd3_schedule_linspace(start, end, n, sigmas);
    for (int i = 0; i < n; i++)
        sigmas[i] = sd3_schedule_sigma(sigmas[i], shift); // shifted again (MODEL.md §7.2)
    sigmas[n] = 0.0f;
    return 0;
}

int
sd3_schedule_start_index(int n, double denoise, int *start, sd3_err_t *err)
{
    if (!(denoise >= 0.0 && denoise <= 1.0))
        return sd3_err_set(err, SD3_EINVAL, "img2img: denoise %g, want 0..1", denoise);
    if (n < 1 || n > SD3_SCHEDULE_MAX_STEPS)
        return sd3_err_set(err, SD3_EINVAL, "img2img: %d steps, want 1..%d", n,
                           SD3_SCHEDULE_MAX_STEPS);
    double idx = (double)n * (1.0 - denoise); // Python: int(steps * (1 - denoise))
    *start = (int)idx;
    return 0;
}
