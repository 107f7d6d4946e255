/*  sd3_log - the one log sink (see sd3_log.h)  */
#include "sd3_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int sd3_log_level = SD3_LOG_INFO;

void
sd3_log_set_level(sd3_log_level_t level)
{
    sd3_log_level = (int)level;
}

int
sd3_log_init_from_env(void)
{
    const char *env = getenv("SD3_LOG");
    if (env) {
        if (!strcmp(env, "debug"))
            sd3_log_level = SD3_LOG_DEBUG;
        else if (!strcmp(env, "info"))
            sd3_log_level = SD3_LOG_INFO;
        else if (!strcmp(env, "warn"))
            sd3_log_level = SD3_LOG_WARN;
        else if (!strcmp(env, "error"))
            sd3_log_level = SD3_LOG_ERROR;
        else if (!strcmp(env, "off"))
            sd3_log_level = SD3_LOG_OFF;
    }
    return sd3_log_level;
}

void
sd3_log_write(int level, const char *area, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s pid=%d %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), names[level < 0 ? 0 : level > 3 ? 3 : level],
                     (int)getpid(), area);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}
