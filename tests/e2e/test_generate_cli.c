/*  test_generate_cli - `sd3ctl generate` answers bad input with one clear line and a
 *  non-zero exit: unknown sampler, sizes 0 / 100000 / not a multiple of 16, negative steps,
 *  unreadable or garbage init image, missing model files, a truncated checkpoint, invalid
 *  UTF-8, no prompt. A good request on the same model then still writes a PNG.  */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd3_test.h"

// Runs `sd3ctl generate ARGS` (stdout discarded); returns the exit status and the stderr text.
static int
s_gen(const char *args, char *errbuf, size_t cap)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "SD3_HOME='%s/home' '%s/sd3ctl' generate %s 2>&1 >/dev/null",
             sd3_test_tmpdir(), SD3_BINARY_DIR, args);
    FILE *f = popen(cmd, "r");
    size_t n = f ? fread(errbuf, 1, cap - 1, f) : 0;
    errbuf[n] = '\0';
    int st = f ? pclose(f) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void
s_expect_refused(const char *what, const char *args, const char *needle)
{
    char out[8192];
    int rc = s_gen(args, out, sizeof out);
    int lines = 0;
    for (const char *p = out; *p; p++)
        lines += *p == '\n';
    printf("%-22s exit %d: %s", what, rc, out);
    CHECK_MSG(rc != 0 && rc < 128, "%s: exit %d", what, rc);
    CHECK_MSG(lines == 1, "%s: %d lines of diagnostics, want 1", what, lines);
    CHECK_MSG(strstr(out, needle) != NULL, "%s: message lacks '%s'", what, needle);
}

int
main(void)
{
    const char *tmp = sd3_test_tmpdir();
    char args[8192], model[1024], trunc_path[1024], garbage[1024], png[1024], out[8192];
    snprintf(model, sizeof model, "%s/tiny.safetensors", tmp);
    snprintf(trunc_path, sizeof trunc_path, "%s/truncated.safetensors", tmp);
    snprintf(garbage, sizeof garbage, "%s/garbage.png", tmp);
    snprintf(png, sizeof png, "%s/ok.png", tmp);
    snprintf(args, sizeof args,
             "'%s/sd3ctl' mkmodel --arch tiny-sd3-medium --layout single --dtype f16 -o '%s' "
             ">/dev/null && head -c 100000 '%s' > '%s' && echo 'not a png' > '%s'",
             SD3_BINARY_DIR, model, model, trunc_path, garbage);
    CHECK(system(args) == 0);

    // A good request first: it writes the embedded default model into SD3_HOME.
    snprintf(args, sizeof args, "'a cat' --size 64x64 --steps 2 --seed 3 -o '%s'", png);
    CHECK(s_gen(args, out, sizeof out) == 0);
    s_expect_refused("unknown sampler", "cat -o x.png --sampler heun", "heun");
    s_expect_refused("size 0", "cat -o x.png --size 0x0", "size");
    s_expect_refused("size 100000", "cat -o x.png --size 100000x100000", "size");
    s_expect_refused("size 100", "cat -o x.png --size 100x100", "multiples of 16");
    s_expect_refused("negative steps", "cat -o x.png --steps -3", "--steps");
    s_expect_refused("missing init image", "cat -o x.png --init-image /nonexistent/in.png",
                     "/nonexistent/in.png");
    snprintf(args, sizeof args, "cat -o x.png --init-image '%s' --strength 0.5", garbage);
    s_expect_refused("garbage init image", args, "garbage.png");
    s_expect_refused("missing model", "cat -o x.png --model /nonexistent/model.safetensors",
                     "/nonexistent/model.safetensors");
    snprintf(args, sizeof args, "cat -o x.png --model '%s'", trunc_path);
    s_expect_refused("truncated checkpoint", args, "truncated.safetensors");
    s_expect_refused("invalid UTF-8", "$(printf 'a\\377b') -o x.png --size 64x64 --steps 1",
                     "UTF-8");
    s_expect_refused("no prompt", "-o x.png", "PROMPT");

    // The same binary still serves a good request.
    snprintf(args, sizeof args, "'a cat' --size 64x64 --steps 2 --seed 3 -o '%s'", png);
    int rc = s_gen(args, out, sizeof out);
    struct stat st;
    CHECK_MSG(rc == 0 && stat(png, &st) == 0 && st.st_size > 100, "good request: exit %d %s",
              rc, out);
    return TEST_RESULT();
}
