/*  test_hostile_ctl - `sd3ctl eval`, `mkmodel` and `convert` against hostile input
 *
 *  Runs the built sd3ctl binary on files and arguments a careless or hostile user could
 *  hand it, and checks that each run ends with its documented exit code (0 pass, 1 a
 *  compared tensor differs, 2 unusable input) and never with a signal (a sanitizer abort,
 *  a stack smash). Cases, each a problem that was found and fixed:
 *    1. eval noise: a `shapes` metadata list whose name overflows the 256-byte name buffer.
 *    2. eval schedule: a `schedules` entry with 2^31-1 steps (int overflow, 8 GiB malloc).
 *    3. eval schedule: tensors at an address that is not a multiple of 4 (header length
 *       not padded to 8): read as unaligned floats before. Must pass with the exact values.
 *    4. eval sampler: metadata steps "1e300" (a double -> int conversion out of range).
 *    5. mkmodel / convert: `--shard-mb abc`, `--seed 12x` were read as 0 and accepted.
 *    6. mkmodel / convert without --arch, --layout or -o printed only the usage: the
 *       message now names every required option that is missing.
 *  Cases 1-3 fail only under ASan/UBSan (or a stack protector) without the fix; 5 fails in
 *  any build.  */
#include "sd3_schedule.h"
#include "sd3_test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_SD3CTL SD3_BINARY_DIR "/sd3ctl"

// Runs sd3ctl with argv (NULL-terminated, argv[0] excluded); stdout and stderr go to
// <tmp>/out.txt. Returns the exit code, or 128 + signal when it died of one.
static int
s_run(const char *const *args)
{
    return sd3_test_run(S_SD3CTL, args, NULL, 0);
}

// True when the last run's output holds `needle`.
static bool
s_output_has(const char *needle)
{
    char path[512], buf[8192];
    snprintf(path, sizeof path, "%s/out.txt", sd3_test_tmpdir());
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

// Writes a safetensors file by hand: `json` is the header, padded with spaces so that the
// data area starts at an offset congruent to `misalign` modulo 8 (0: aligned as usual).
static int
s_write_raw(const char *path, const char *json, int misalign, const void *data, size_t nbytes)
{
    size_t hlen = strlen(json);
    while ((8 + hlen) % 8 != (size_t)misalign)
        hlen++;
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    fwrite(len, 1, 8, f);
    fputs(json, f);
    for (size_t i = strlen(json); i < hlen; i++)
        fputc(' ', f);
    if (nbytes)
        fwrite(data, 1, nbytes, f);
    return fclose(f);
}

static char *
s_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/%s", sd3_test_tmpdir(), name);
    return p;
}

// 1. noise metadata whose tensor names overflow the name buffer: a clean FAIL line.
static void
s_noise_long_shape(void)
{
    char shapes[512] = "[[";
    for (int i = 0; i < 30; i++)
        strcat(shapes, i ? ",1000000000" : "1000000000");
    strcat(shapes, "]]");
    char json[1024];
    snprintf(json, sizeof json, "{\"__metadata__\":{\"seeds\":\"[1]\",\"shapes\":\"%s\"}}", shapes);
    const char *file = s_path("noise.safetensors");
    CHECK(s_write_raw(file, json, 0, NULL, 0) == 0);
    int rc = s_run((const char *[]){"eval", "noise", "--vectors", file, NULL});
    CHECK_MSG(rc == 1, "eval noise with a 30-dim shape list: exit %d, want 1", rc);
    CHECK(s_output_has("metadata.seeds_x_shapes"));
}

// 2. schedules with 2^31-1 steps: exit 2 and a message naming the steps.
static void
s_schedule_huge_steps(void)
{
    const char *json = "{\"__metadata__\":{\"schedules\":\"[[2147483647, 3.0]]\"}}";
    const char *file = s_path("sched_huge.safetensors");
    CHECK(s_write_raw(file, json, 0, NULL, 0) == 0);
    int rc = s_run((const char *[]){"eval", "schedule", "--vectors", file, NULL});
    CHECK_MSG(rc == 2, "eval schedule with 2^31-1 steps: exit %d, want 2", rc);
    CHECK(s_output_has("steps"));
}

// 3. A schedule vectors file whose data area starts at an odd address: passes exactly.
static void
s_schedule_unaligned(void)
{
    enum { STEPS = 4 };
    float data[2 * STEPS + 1];
    sd3_err_t err = {0};
    CHECK(sd3_schedule_sigmas(STEPS, 3.0f, data, &err) == 0);
    for (int i = 0; i < STEPS; i++)
        data[STEPS + 1 + i] = sd3_schedule_timestep(data[i]);
    char json[512];
    snprintf(json, sizeof json,
             "{\"__metadata__\":{\"schedules\":\"[[%d, 3.0]]\"},"
             "\"steps%d_shift3.sigmas\":{\"dtype\":\"F32\",\"shape\":[%d],"
             "\"data_offsets\":[0,%d]},"
             "\"steps%d_shift3.timesteps\":{\"dtype\":\"F32\",\"shape\":[%d],"
             "\"data_offsets\":[%d,%d]}}",
             STEPS, STEPS, STEPS + 1, 4 * (STEPS + 1), STEPS, STEPS, 4 * (STEPS + 1),
             4 * (2 * STEPS + 1));
    for (int misalign = 1; misalign < 8; misalign += 2) {
        const char *file = s_path("sched_odd.safetensors");
        CHECK(s_write_raw(file, json, misalign, data, sizeof data) == 0);
        int rc = s_run((const char *[]){"eval", "schedule", "--vectors", file, NULL});
        CHECK_MSG(rc == 0, "eval schedule, data at offset %d mod 8: exit %d, want 0", misalign, rc);
        CHECK(s_output_has("2 passed, 0 failed"));
    }
}

// 4. sampler metadata steps far outside int: exit 2 before anything is loaded.
static void
s_sampler_huge_steps(void)
{
    const char *json = "{\"__metadata__\":{\"steps\":\"1e300\",\"shift\":\"3\","
                       "\"cfg_scale\":\"5\",\"runs\":\"[\\\"euler\\\"]\"}}";
    const char *file = s_path("sampler.safetensors");
    CHECK(s_write_raw(file, json, 0, NULL, 0) == 0);
    int rc = s_run(
        (const char *[]){"eval", "sampler", "--vectors", file, "--model", s_path("none"), NULL});
    CHECK_MSG(rc == 2, "eval sampler with steps 1e300: exit %d, want 2", rc);
    CHECK(s_output_has("steps"));
}

// 5. Numeric options that are not numbers are refused, and nothing is written.
static void
s_bad_numbers(void)
{
    const char *out = s_path("model.safetensors");
    unlink(out);
    int rc = s_run((const char *[]){"mkmodel", "--arch", "tiny-sd3-medium", "--layout", "single",
                                    "--shard-mb", "abc", "-o", out, NULL});
    CHECK_MSG(rc == 2, "mkmodel --shard-mb abc: exit %d, want 2", rc);
    CHECK(s_output_has("--shard-mb"));
    rc = s_run((const char *[]){"mkmodel", "--arch", "tiny-sd3-medium", "--layout", "single",
                                "--seed", "12x", "-o", out, NULL});
    CHECK_MSG(rc == 2, "mkmodel --seed 12x: exit %d, want 2", rc);
    CHECK(s_output_has("--seed"));
    rc = s_run((const char *[]){"mkmodel", "--arch", "tiny-sd3-medium", "--layout", "single",
                                "--depth", "3x", "-o", out, NULL});
    CHECK_MSG(rc == 2, "mkmodel --depth 3x: exit %d, want 2", rc);
    struct stat st;
    CHECK(stat(out, &st) != 0); // nothing written by a refused command
    rc = s_run((const char *[]){"convert", out, "--layout", "single", "--shard-mb", "-1", "-o",
                                s_path("converted.safetensors"), NULL});
    CHECK_MSG(rc == 2, "convert --shard-mb -1: exit %d, want 2", rc);
    CHECK(s_output_has("--shard-mb"));
}

// 6. A required option left out is named (each of them, and only those).
static void
s_missing_options(void)
{
    const char *out = s_path("missing.safetensors");
    unlink(out);
    int rc = s_run((const char *[]){"mkmodel", "--arch", "tiny-sd3-medium", "-o", out, NULL});
    CHECK_MSG(rc == 2, "mkmodel without --layout: exit %d, want 2", rc);
    CHECK(s_output_has("sd3ctl mkmodel: missing --layout single|sd3.5|diffusers\n"));
    rc = s_run((const char *[]){"mkmodel", NULL});
    CHECK_MSG(rc == 2, "mkmodel alone: exit %d, want 2", rc);
    CHECK(s_output_has("missing --arch ARCH, --layout single|sd3.5|diffusers and -o PATH"));
    rc =
        s_run((const char *[]){"mkmodel", "--layout", "single", "--arch", "tiny-sd3-medium", NULL});
    CHECK_MSG(rc == 2, "mkmodel without -o: exit %d, want 2", rc);
    CHECK(s_output_has("sd3ctl mkmodel: missing -o PATH\n"));
    rc = s_run((const char *[]){"convert", "--layout", "diffusers", "-o", out, NULL});
    CHECK_MSG(rc == 2, "convert without IN: exit %d, want 2", rc);
    CHECK(s_output_has("sd3ctl convert: missing IN"));
    struct stat st;
    CHECK(stat(out, &st) != 0);
}

int
main(void)
{
    if (access(S_SD3CTL, X_OK) != 0) {
        fprintf(stderr, "test_hostile_ctl: %s not built\n", S_SD3CTL);
        return 77;
    }
    s_noise_long_shape();
    s_schedule_huge_steps();
    s_schedule_unaligned();
    s_sampler_huge_steps();
    s_bad_numbers();
    s_missing_options();
    return TEST_RESULT();
}
