/*  test_rng - sd3_rng: torch.manual_seed + torch.randn (float32, CPU) as an example of use
 *
 *  Known values and the structural facts of torch's generator (TESTVECTORS-dit.md §4); the
 *  bit-exact comparison with the golden file is the golden_noise eval test.  */
#include "sd3_rng.h"
#include "sd3_test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int
main(void)
{
    sd3_rng_t rng;

    // MT19937: std::mt19937 with the default seed 5489 gives 4123659995 as its 10000th
    // output (C++ [rand.predef]); seed 0 starts with 2357136044.
    sd3_rng_init(&rng, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++)
        v = sd3_rng_next_u32(&rng);
    CHECK_MSG(v == 4123659995u, "10000th output %u", v);
    sd3_rng_init(&rng, 0);
    v = sd3_rng_next_u32(&rng);
    CHECK_MSG(v == 2357136044u, "seed 0 first output %u", v);

    // torch.manual_seed(0); torch.randn(4) = [1.5410, -0.2934, -2.1788, 0.5684] (the
    // double path, numel < 16).
    float small[4];
    const float want4[4] = {1.5410f, -0.2934f, -2.1788f, 0.5684f};
    sd3_rng_init(&rng, 0);
    sd3_rng_randn(&rng, small, 4);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(fabsf(small[i] - want4[i]) < 1e-4f, "randn(4)[%d] = %.6f", i, small[i]);

    // The cached value survives across calls: randn(1) twice == randn(2).
    float a[2], b[2];
    sd3_rng_init(&rng, 7);
    sd3_rng_randn(&rng, a, 2);
    sd3_rng_init(&rng, 7);
    sd3_rng_randn(&rng, &b[0], 1);
    sd3_rng_randn(&rng, &b[1], 1);
    CHECK(memcmp(a, b, sizeof a) == 0);

    // Only the low 32 bits of the seed matter.
    float s1[32], s2[32];
    sd3_rng_init(&rng, UINT64_MAX);
    sd3_rng_randn(&rng, s1, 32);
    sd3_rng_init(&rng, 4294967295u);
    sd3_rng_randn(&rng, s2, 32);
    CHECK(memcmp(s1, s2, sizeof s1) == 0);
    sd3_rng_init(&rng, (UINT64_C(1) << 32) + 42);
    sd3_rng_randn(&rng, s1, 32);
    sd3_rng_init(&rng, 42);
    sd3_rng_randn(&rng, s2, 32);
    CHECK(memcmp(s1, s2, sizeof s1) == 0);

    // Multiples of 16 share prefixes; a tail keeps the full blocks before the last 16.
    size_t n = 3 * 16 * 16 * 12, m = 16 * 8 * 8;
    float *big = malloc(n * sizeof *big), *pre = malloc((m + 5) * sizeof *pre);
    CHECK(big && pre);
    if (big && pre) {
        sd3_rng_init(&rng, 3);
        sd3_rng_randn(&rng, big, n);
        sd3_rng_init(&rng, 3);
        sd3_rng_randn(&rng, pre, m);
        CHECK(memcmp(big, pre, m * sizeof *pre) == 0);
        sd3_rng_init(&rng, 3);
        sd3_rng_randn(&rng, pre, m + 5); // the last 16 are redrawn; [0, m + 5 - 16) stay
        CHECK(memcmp(big, pre, (m + 5 - 16) * sizeof *pre) == 0);
        CHECK(memcmp(big + m - 11, pre + m - 11, 16 * sizeof *pre) != 0);

        // Moments of a standard normal (n = 9216: |mean| < 4.5/sqrt(n), var within 5 %).
        double sum = 0, sq = 0;
        for (size_t i = 0; i < n; i++) {
            CHECK(isfinite(big[i]));
            sum += big[i];
            sq += (double)big[i] * big[i];
        }
        double mean = sum / (double)n, var = sq / (double)n - mean * mean;
        CHECK_MSG(fabs(mean) < 0.05 && fabs(var - 1.0) < 0.05, "mean %g var %g", mean, var);
    }
    free(big);
    free(pre);

    sd3_err_t err = {0};
    sd3_tensor_t *t = sd3_rng_noise(42, 4, (int64_t[]){1, 16, 8, 8}, &err);
    CHECK(t != NULL);
    if (t) {
        float ref[1024];
        sd3_rng_init(&rng, 42);
        sd3_rng_randn(&rng, ref, 1024);
        CHECK(memcmp(ref, t->data, sizeof ref) == 0);
    }
    sd3_tensor_destroy(&t);
    CHECK(sd3_rng_noise(1, 2, (int64_t[]){-1, 4}, &err) == NULL && err.code != 0);
    return TEST_RESULT();
}
