/*  sd3_test - helpers shared by the test programs
 *
 *  A test's main returns 0 on pass, 1 on fail, 77 on skip. CHECK records a failure and
 *  goes on, so one run reports every broken assertion.  */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

extern int sd3_test_failures;

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);        \
            sd3_test_failures++;                                                              \
        }                                                                                     \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                  \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);        \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fputc('\n', stderr);                                                              \
            sd3_test_failures++;                                                              \
        }                                                                                     \
    } while (0)

#define TEST_RESULT() (sd3_test_failures ? 1 : 0)

// The golden data folder: $SD3_TESTDATA, else <source>/../shared/testdata. NULL when absent
// (and a message naming the path it looked for is printed).
const char *sd3_test_data_dir(void);
// Path of a file under the golden data folder, in a static buffer; NULL when absent.
const char *sd3_test_data_path(const char *rel);
// A fresh temporary folder for this test (removed by the caller, or left under /tmp).
const char *sd3_test_tmpdir(void);
// Deterministic random numbers for tests (xorshift), uniform in [-1, 1).
float sd3_test_randf(unsigned long long *state);
// Runs exe with args (NULL-terminated, argv[0] excluded; at most 60), its stdout and stderr
// into <tmp>/out.txt, read back into out (NUL-terminated, cut at cap - 1) when out is given.
// The exit code, 128 + signal when it died of one, or -1 when it could not run.
int sd3_test_run(const char *exe, const char *const *args, char *out, size_t cap);
// max |a-b| over n floats.
double sd3_test_maxdiff(const float *a, const float *b, size_t n);
