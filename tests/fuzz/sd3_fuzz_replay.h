/*  sd3_fuzz_replay - the replay main of a fuzz target built without libFuzzer
 *
 *  Included at the end of a tests/fuzz/fuzz_<name>.c that defines LLVMFuzzerTestOneInput and
 *  `static int s_write_seeds(const char *dir)`. Built plain (ctest label fuzz):
 *    fuzz_<name> DIR|FILE...         runs every file once through the target
 *    fuzz_<name> --write-seeds DIR   writes the seed corpus (made with the project's writers)
 *  With -DSD3_LIBFUZZER (tests/cmake/fuzz.cmake, -DSD3_FUZZ=ON) libFuzzer brings its own
 *  main and this file adds nothing. SD3_FUZZ_NOTE(fmt, ...) prints what a target made of an
 *  input when SD3_FUZZ_VERBOSE is set (replayer only).  */
#pragma once
#ifndef SD3_LIBFUZZER
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
static int s_write_seeds(const char *dir);

// SD3_FUZZ_VERBOSE=1 in the environment: the target says what it made of each input.
static int s_fuzz_verbose = -1;
#define SD3_FUZZ_NOTE(...)                                                                         \
    do {                                                                                           \
        if (s_fuzz_verbose < 0)                                                                    \
            s_fuzz_verbose = getenv("SD3_FUZZ_VERBOSE") != NULL;                                   \
        if (s_fuzz_verbose)                                                                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
    } while (0)

// Writes one seed file DIR/NAME.
static int
s_seed_write(const char *dir, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        return 1;
    }
    size_t put = len ? fwrite(data, 1, len, f) : 0;
    return (fclose(f) != 0 || put != len) ? 1 : 0;
}

static int
s_replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    size_t got = buf && len > 0 ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!buf || len < 0 || got != (size_t)len) {
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 0;
}

static int
s_replay_main(const char *name, int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-seeds"))
        return s_write_seeds(argv[2]);
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) {
            if (s_replay_file(argv[a]) != 0) {
                fprintf(stderr, "%s: cannot read %s\n", name, argv[a]);
                return 1;
            }
            files++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            char path[4096];
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            if (s_replay_file(path) != 0) {
                fprintf(stderr, "%s: cannot read %s\n", name, path);
                closedir(d);
                return 1;
            }
            files++;
        }
        closedir(d);
    }
    printf("%s: replayed %d inputs\n", name, files);
    if (files == 0) {
        fprintf(stderr, "%s: no corpus given or found\n", name);
        return 1;
    }
    return 0;
}

#define SD3_FUZZ_REPLAY_MAIN(name)                                                                 \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        return s_replay_main(name, argc, argv);                                                    \
    }
#else
#define SD3_FUZZ_REPLAY_MAIN(name)
#define SD3_FUZZ_NOTE(...) ((void)0)
#endif
