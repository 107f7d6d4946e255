/*  test_bench_cluster - `sd3ctl bench cluster` measures what it says, and the bench verbs
 *  refuse bad numbers
 *
 *  Runs the built sd3ctl binary:
 *    1. every bench verb with a malformed or out-of-range number ("12x", "", " 4", "1e3",
 *       "-1", "0x10", 99999, sigma 2): exit 2 and one line naming the option (atoi read
 *       these as 0 or a prefix and went on);
 *    2. the hop part at 512 px with L = 16 over a real ZeroMQ TCP pair: nine rows (three
 *       codecs x three wire dtypes) whose bytes per step are exact: f32 raw = the STEP's
 *       f32 bytes + the envelope (ratio 1.000), bf16 / f16 raw half of it (2.000), no
 *       compressed row above the raw one of its dtype; the f32 rows arrived bit-identical
 *       (checked inside, a failure exits 2);
 *    3. the activation part on a partial random tiny-sd3.5-large (the same writer filter as
 *       the real-width run): the boundary table is printed with the exact ratios of raw rows,
 *       and the temporary model folder is gone afterwards; an unknown --arch and --blocks
 *       past the depth exit 2 and leave nothing behind.  */
#include "sd3_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_SD3CTL SD3_BINARY_DIR "/sd3ctl"

static char s_out[1 << 16];

// Runs sd3ctl with args (NULL-terminated); stdout + stderr into s_out. Exit code, or 128 +
// signal.
static int
s_run(const char *const *args)
{
    return sd3_test_run(S_SD3CTL, args, s_out, sizeof s_out);
}

// The MiB/step and ratio columns of the first table row "  WIRE CODEC ..." after `from`.
static int
s_row(const char *from, const char *wire, const char *codec, double *mib, double *ratio)
{
    char key[64];
    snprintf(key, sizeof key, "\n  %-4s %-13s", wire, codec);
    const char *p = strstr(from, key);
    if (!p)
        return -1;
    return sscanf(p + strlen(key), "%lf %lf", mib, ratio) == 2 ? 0 : -1;
}

static void
s_bad_numbers(void)
{
    static const char *const cases[][6] = {
        {"bench", "cluster", "--reps", "12x", NULL},
        {"bench", "cluster", "--hop-reps", "-1", NULL},
        {"bench", "cluster", "--sigma", "2", NULL},
        {"bench", "cluster", "--blocks", "", NULL},
        {"bench", "mmdit", "--size", "5x", NULL},
        {"bench", "vae", "--tile", "1e3", NULL},
        {"bench", "encode", "--t5-tokens", "99999", NULL},
        {"bench", "ops", "--threads", " 4", NULL},
        {"bench", "generate", "--size", "0x10", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = s_run(cases[i]);
        char want[96];
        snprintf(want, sizeof want, "%s '%s': want", cases[i][2], cases[i][3]);
        CHECK_MSG(rc == 2, "bench %s %s '%s': exit %d, want 2", cases[i][1], cases[i][2],
                  cases[i][3], rc);
        CHECK_MSG(strstr(s_out, want) != NULL, "bench %s %s: no line naming it in:\n%s",
                  cases[i][1], cases[i][2], s_out);
    }
}

static void
s_hop(void)
{
    int rc = s_run((const char *[]){"bench", "cluster", "--only", "hop", "--size", "512", "--ctx",
                                    "16", "--hop-reps", "1", NULL});
    CHECK_MSG(rc == 0, "bench cluster --only hop: exit %d:\n%s", rc, s_out);
    // STEP: x [2,1024,2432] + ctx [2,16,2432] + c [2,2432] in f32
    const double f32_mib = 4.0 * 2 * 2432 * (1024 + 16 + 1) / (1 << 20);
    static const char *wires[3] = {"F32", "BF16", "F16"};
    static const char *codecs[3] = {"raw", "zstd", "shuffle+zstd"};
    for (int w = 0; w < 3; w++) {
        double raw_mib = 0, raw_ratio = 0;
        CHECK_MSG(s_row(s_out, wires[w], "raw", &raw_mib, &raw_ratio) == 0, "no %s raw row",
                  wires[w]);
        double want = w == 0 ? f32_mib : f32_mib / 2;
        // the envelope adds a few hundred bytes: within the printed 0.01 MiB
        CHECK_MSG(raw_mib >= want - 0.006 && raw_mib <= want + 0.006,
                  "%s raw: %.2f MiB per step, want %.3f", wires[w], raw_mib, want);
        CHECK_MSG(raw_ratio == (w == 0 ? 1.0 : 2.0), "%s raw: ratio %.3f", wires[w], raw_ratio);
        for (int c = 1; c < 3; c++) {
            double mib = 0, ratio = 0;
            CHECK_MSG(s_row(s_out, wires[w], codecs[c], &mib, &ratio) == 0, "no %s %s row",
                      wires[w], codecs[c]);
            CHECK_MSG(mib > 0 && mib <= raw_mib && ratio >= raw_ratio,
                      "%s %s: %.2f MiB (ratio %.3f) vs raw %.2f", wires[w], codecs[c], mib, ratio,
                      raw_mib);
        }
    }
}

// The folder of the model the act part wrote, from its stderr line "... written to PATH in".
static int
s_written_dir(char *dir, size_t cap)
{
    const char *p = strstr(s_out, "written to ");
    if (!p)
        return -1;
    p += strlen("written to ");
    const char *slash = NULL;
    for (const char *q = p; *q && *q != ' '; q++)
        if (*q == '/')
            slash = q;
    if (!slash || (size_t)(slash - p) >= cap)
        return -1;
    memcpy(dir, p, (size_t)(slash - p));
    dir[slash - p] = '\0';
    return 0;
}

static void
s_act(void)
{
    int rc = s_run((const char *[]){"bench", "cluster", "--only", "act", "--blocks", "1", "--arch",
                                    "tiny-sd3.5-large", "--act-size", "64", NULL});
    CHECK_MSG(rc == 0, "bench cluster --only act (tiny): exit %d:\n%s", rc, s_out);
    const char *table = strstr(s_out, "boundary after block 0");
    CHECK_MSG(table != NULL, "no boundary table in:\n%s", s_out);
    if (table) {
        double mib, ratio;
        CHECK(s_row(table, "F32", "raw", &mib, &ratio) == 0 && ratio == 1.0);
        CHECK(s_row(table, "BF16", "raw", &mib, &ratio) == 0 && ratio == 2.0);
        CHECK(s_row(table, "BF16", "shuffle+zstd", &mib, &ratio) == 0 && ratio >= 2.0);
    }
    char dir[512];
    CHECK_MSG(s_written_dir(dir, sizeof dir) == 0, "no 'written to' line in:\n%s", s_out);
    struct stat st;
    CHECK_MSG(stat(dir, &st) != 0, "the temporary model folder %s is still there", dir);

    rc = s_run((const char *[]){"bench", "cluster", "--only", "act", "--blocks", "2", "--arch",
                                "tiny-sd3.5-large", "--act-size", "64", NULL});
    CHECK_MSG(rc == 2 && strstr(s_out, "--blocks 2, want 1..1"),
              "--blocks past the depth: exit %d:\n%s", rc, s_out);
    rc = s_run((const char *[]){"bench", "cluster", "--only", "act", "--blocks", "1", "--arch",
                                "no-such-arch", NULL});
    CHECK_MSG(rc == 2 && strstr(s_out, "unknown architecture 'no-such-arch'"),
              "unknown --arch: exit %d:\n%s", rc, s_out);
}

int
main(void)
{
    if (access(S_SD3CTL, X_OK) != 0) {
        fprintf(stderr, "test_bench_cluster: %s not built\n", S_SD3CTL);
        return 1;
    }
    s_bad_numbers();
    s_hop();
    s_act();
    return TEST_RESULT();
}
