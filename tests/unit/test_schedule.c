/*  test_schedule - sd3_schedule: flow sigmas, linspace, img2img start (an example of use)
 *
 *  Values from MODEL.md §7.2-7.3 and TESTVECTORS-dit.md §3; the bit-exact comparison with
 *  the golden file is the golden_schedule eval test.  */
#include "sd3_schedule.h"
#include "sd3_test.h"

#include <math.h>

int
main(void)
{
    sd3_err_t err = {0};
    float sig[41];

    // (4 steps, shift 3): [1, 0.85769236, 0.60215056, 0.008928572, 0]; sigmas[0] exactly 1.
    CHECK(sd3_schedule_sigmas(4, 3.0f, sig, &err) == 0);
    const float want43[5] = {1.0f, 0.85769236f, 0.60215056f, 0.008928572f, 0.0f};
    for (int i = 0; i < 5; i++)
        CHECK_MSG(fabsf(sig[i] - want43[i]) <= 2e-7f, "sigma[%d] = %.9g", i, sig[i]);
    CHECK(sig[0] == 1.0f && sig[4] == 0.0f);
    // The shift is applied twice at the low end: not sigma(1) = 0.002994.
    CHECK(fabsf(sd3_schedule_sigma(1.0f, 3.0f) - 0.002994012f) < 1e-8f);

    // (4, 1): [1, 0.667, 0.334, 0.001, 0]
    CHECK(sd3_schedule_sigmas(4, 1.0f, sig, &err) == 0);
    const float want41[5] = {1.0f, 0.667f, 0.334f, 0.001f, 0.0f};
    for (int i = 0; i < 5; i++)
        CHECK_MSG(fabsf(sig[i] - want41[i]) <= 1e-6f, "sigma[%d] = %.9g", i, sig[i]);

    // (40, 3) against the double formula (the float32 recipe differs by <= 1.5e-7), and
    // MODEL.md's table: 1.0, 0.991331, ... 0.146509, 0.081046, 0.008929.
    CHECK(sd3_schedule_sigmas(40, 3.0f, sig, &err) == 0);
    double hi = 1000.0, lo = 1000.0 * 3.0 * 0.001 / (1.0 + 2.0 * 0.001);
    for (int i = 0; i < 40; i++) {
        double t = hi + (lo - hi) * i / 39.0, s = t / 1000.0;
        double want = 3.0 * s / (1.0 + 2.0 * s);
        CHECK_MSG(fabs(sig[i] - want) <= 2e-7, "sigma[%d] = %.9g want %.9g", i, sig[i], want);
    }
    CHECK(fabsf(sig[1] - 0.991331f) < 1e-6f && fabsf(sig[37] - 0.146509f) < 1e-6f);
    CHECK(fabsf(sig[38] - 0.081046f) < 1e-6f && sig[40] == 0.0f);

    // linspace end points are exact and the middle is monotone.
    float ls[33];
    sd3_schedule_linspace(1000.0f, 2.994012f, 33, ls);
    CHECK(ls[0] == 1000.0f && ls[32] == 2.994012f);
    for (int i = 1; i < 33; i++)
        CHECK(ls[i] < ls[i - 1]);
    CHECK(fabsf(sd3_schedule_timestep(0.6f) - 600.0f) < 1e-4f);

    // img2img: int(40 * 0.19999999999999996) = 7, int(10 * 0.4) = 4, full strength 0.
    int start = -1;
    CHECK(sd3_schedule_start_index(40, 0.8, &start, &err) == 0 && start == 7);
    CHECK(sd3_schedule_start_index(10, 0.6, &start, &err) == 0 && start == 4);
    CHECK(sd3_schedule_start_index(28, 1.0, &start, &err) == 0 && start == 0);

    // Bad input is an error, not a crash.
    CHECK(sd3_schedule_sigmas(0, 3.0f, sig, &err) == SD3_EINVAL);
    CHECK(sd3_schedule_sigmas(4, -1.0f, sig, &err) == SD3_EINVAL);
    CHECK(sd3_schedule_start_index(4, 1.5, &start, &err) == SD3_EINVAL);
    CHECK(sd3_schedule_start_index(4, NAN, &start, &err) == SD3_EINVAL);
    return TEST_RESULT();
}
