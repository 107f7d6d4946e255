/*  sd3_log - the one log sink (stderr, line-buffered), key=value lines
 *
 *  sd3_log_info("mmdit", "req=%s step=%d/%d ms=%.1f", id, step, n, ms);
 *  Library code logs through these macros and never prints. The level is set once in
 *  main() (sd3_log_set_level or $SD3_LOG=debug|info|warn|error). Thread-safe: one fprintf
 *  per line.  */
#pragma once

typedef enum { SD3_LOG_DEBUG = 0, SD3_LOG_INFO, SD3_LOG_WARN, SD3_LOG_ERROR, SD3_LOG_OFF } sd3_log_level_t;

extern int sd3_log_level;
void sd3_log_set_level(sd3_log_level_t level);
// Reads $SD3_LOG; returns the level now in force.
int sd3_log_init_from_env(void);
void sd3_log_write(int level, const char *area, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sd3_log_at(level, area, ...)                                                          \
    do {                                                                                      \
        if ((level) >= sd3_log_level)                                                         \
            sd3_log_write((level), (area), __VA_ARGS__);                                      \
    } while (0)
#define sd3_log_debug(area, ...) sd3_log_at(SD3_LOG_DEBUG, area, __VA_ARGS__)
#define sd3_log_info(area, ...)  sd3_log_at(SD3_LOG_INFO, area, __VA_ARGS__)
#define sd3_log_warn(area, ...)  sd3_log_at(SD3_LOG_WARN, area, __VA_ARGS__)
#define sd3_log_error(area, ...) sd3_log_at(SD3_LOG_ERROR, area, __VA_ARGS__)
