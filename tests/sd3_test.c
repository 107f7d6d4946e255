/*  sd3_test - helpers shared by the test programs (see sd3_test.h)  */
#include "sd3_test.h"

#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int sd3_test_failures = 0;

const char *
sd3_test_data_dir(void)
{
    static char path[4096];
    const char *env = getenv("SD3_TESTDATA");
    struct stat st;
    if (env && *env)
        snprintf(path, sizeof path, "%s", env);
    else
        snprintf(path, sizeof path, "%s/../shared/testdata", SD3_SOURCE_DIR);
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "skip: golden data not found at %s (set SD3_TESTDATA)\n", path);
        return NULL;
    }
    return path;
}

const char *
sd3_test_data_path(const char *rel)
{
    static char path[4096];
    const char *dir = sd3_test_data_dir();
    if (!dir)
        return NULL;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "skip: %s not found\n", path);
        return NULL;
    }
    return path;
}

const char *
sd3_test_tmpdir(void)
{
    static char path[256];
    if (!path[0]) {
        snprintf(path, sizeof path, "/tmp/sd3test.XXXXXX");
        if (!mkdtemp(path))
            return "/tmp";
    }
    return path;
}

float
sd3_test_randf(unsigned long long *state)
{
    unsigned long long x = *state ? *state : 0x9E3779B97F4A7C15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (float)((double)(x >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

double
sd3_test_maxdiff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d != d)
            return INFINITY;
        if (d > worst)
            worst = d;
    }
    return worst;
}

int
sd3_test_run(const char *exe, const char *const *args, char *out, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/out.txt", sd3_test_tmpdir());
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        const char *argv[62] = {exe};
        for (int i = 0; args[i] && i < 60; i++)
            argv[i + 1] = args[i];
        execv(exe, (char *const *)argv);
        _exit(126);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    if (out && cap > 0) {
        FILE *f = fopen(path, "rb");
        size_t n = f ? fread(out, 1, cap - 1, f) : 0;
        if (f)
            fclose(f);
        out[n] = '\0';
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
