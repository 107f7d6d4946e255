/*  test_metrics - the HTTP API's counters and their Prometheus text
 *
 *  Counts requests, durations, steps and images into an sd3_metrics_t, renders them with a
 *  made-up STATUS report, and checks exact sample lines (cumulative buckets, escaping,
 *  counters), the families left out when the controller did not answer, and the text's
 *  grammar (every sample under a TYPE of its family, no family twice). When promtool
 *  (Debian package prometheus) is installed, `promtool check metrics` must accept it too.  */
#include "sd3_metrics.h"
#include "sd3_test.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void
s_has(const char *text, const char *line)
{
    // a whole line: at the start or after '\n', and followed by '\n'
    size_t n = strlen(line);
    for (const char *p = strstr(text, line); p; p = strstr(p + 1, line)) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    }
    CHECK_MSG(0, "line '%s' not in the metrics", line);
}

// The grammar of the text format 0.0.4, as far as we write it: comments "# HELP name text" /
// "# TYPE name kind" and samples "name[{k="v",...}] value"; a sample's family (its name less
// _bucket/_sum/_count for histograms) has its TYPE before it; no TYPE twice.
static void
s_check_grammar(const char *text)
{
    char types[128][96];
    int n_types = 0, lineno = 0;
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        CHECK_MSG(eol != NULL, "the text must end with a newline");
        if (!eol)
            return;
        char line[1024];
        size_t len = (size_t)(eol - p);
        CHECK_MSG(len < sizeof line, "line %d too long", lineno);
        snprintf(line, sizeof line, "%.*s", (int)len, p);
        p = eol + 1;
        lineno++;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[96], kind[32];
            CHECK(sscanf(line + 7, "%95s %31s", name, kind) == 2);
            for (int i = 0; i < n_types; i++)
                CHECK_MSG(strcmp(types[i], name) != 0, "TYPE %s twice", name);
            if (n_types < 128)
                snprintf(types[n_types++], sizeof types[0], "%s", name);
            continue;
        }
        if (strncmp(line, "# HELP ", 7) == 0)
            continue;
        CHECK_MSG(line[0] != '#', "line %d: unknown comment", lineno);
        size_t k = 0;
        while (isalnum((unsigned char)line[k]) || line[k] == '_' || line[k] == ':')
            k++;
        CHECK_MSG(k > 0 && (line[k] == '{' || line[k] == ' '), "line %d: '%s'", lineno, line);
        char name[96];
        snprintf(name, sizeof name, "%.*s", (int)k, line);
        const char *sfx[] = {"_bucket", "_sum", "_count"};
        bool found = false;
        for (int i = 0; i < n_types && !found; i++) {
            if (strcmp(types[i], name) == 0)
                found = true;
            for (int s = 0; s < 3 && !found; s++) {
                size_t tl = strlen(types[i]);
                found = strncmp(name, types[i], tl) == 0 && strcmp(name + tl, sfx[s]) == 0;
            }
        }
        CHECK_MSG(found, "line %d: sample %s has no TYPE before it", lineno, name);
        const char *v = strrchr(line, ' ');
        char *end = NULL;
        CHECK_MSG(v && (strtod(v + 1, &end), end && *end == 0 && end != v + 1),
                  "line %d: value of '%s'", lineno, line);
    }
}

static void
s_promtool(const char *text)
{
    if (access("/usr/bin/promtool", X_OK) != 0) {
        fprintf(stderr, "test_metrics: promtool not installed (Debian package prometheus); "
                        "its check is skipped\n");
        return;
    }
    char path[] = "/tmp/sd3-metrics-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd < 0)
        return;
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s", path);
    int rc = system(cmd);
    CHECK_MSG(rc == 0, "promtool check metrics failed (%d)", rc);
    unlink(path);
}

int
main(void)
{
    sd3_metrics_t *m = sd3_metrics_new();
    CHECK(m != NULL);
    if (!m)
        return 1;
    sd3_metrics_request_done(m, SD3_METRICS_EP_OPENAI, SD3_METRICS_OK, 0.003);
    sd3_metrics_request_done(m, SD3_METRICS_EP_OPENAI, SD3_METRICS_OK, 7.0);
    sd3_metrics_request_done(m, SD3_METRICS_EP_A1111, sd3_metrics_outcome_of(429), 0.001);
    sd3_metrics_request_done(m, SD3_METRICS_EP_OTHER, sd3_metrics_outcome_of(404), 0.0);
    sd3_metrics_request_done(m, SD3_METRICS_EP_OPENAI, sd3_metrics_outcome_of(504), 1000.0);
    sd3_metrics_inflight_add(m, 2);
    sd3_metrics_inflight_add(m, -1);
    sd3_metrics_images_add(m, 3);
    for (int i = 0; i < 3; i++)
        sd3_metrics_step_seen(m, 0.2);
    CHECK(sd3_metrics_outcome_of(200) == SD3_METRICS_OK);
    CHECK(sd3_metrics_outcome_of(401) == SD3_METRICS_UNAUTHORIZED);
    CHECK(sd3_metrics_outcome_of(413) == SD3_METRICS_BAD_REQUEST);
    CHECK(sd3_metrics_outcome_of(502) == SD3_METRICS_ERROR);

    static sd3_wire_status_t st;
    st.queue_depth = 3;
    st.queue_capacity = 16;
    st.inflight = 2;
    st.completed = 10;
    st.failed = 1;
    st.uptime_ms = 12345;
    st.n_nodes = 2;
    snprintf(st.nodes[0].node.node_id, sizeof st.nodes[0].node.node_id, "enc-0");
    st.nodes[0].node.role = SD3_WIRE_ROLE_ENCODER;
    st.nodes[0].alive = true;
    snprintf(st.nodes[1].node.node_id, sizeof st.nodes[1].node.node_id, "a\"b\\c\nd");
    st.nodes[1].node.role = SD3_WIRE_ROLE_MMDIT;
    st.nodes[1].inflight = 1;
    st.nodes[1].link = SD3_WIRE_LINK_NCCL;
    st.nodes[1].bytes_sent = 1048576;
    st.nodes[1].bytes_received = 77;
    st.n_pipelines = 1;
    st.pipelines[0].id = 5;
    st.pipelines[0].inflight = 2;
    st.pipelines[0].max_inflight = 3;
    st.cache_hits = 5;
    st.cache_misses = 2;
    double steps[] = {0.005, 0.3, 0.3, 0.01, 100.0};
    for (int i = 0; i < 5; i++)
        sd3_metrics_step_observe(st.step_buckets, &st.step_seconds_sum, &st.step_count, steps[i]);

    size_t len = 0;
    char *text = sd3_metrics_render(m, &st, &len);
    CHECK(text && len == strlen(text));
    if (text) {
        s_has(text, "sd3_up 1");
        s_has(text, "# TYPE sd3_http_requests_total counter");
        s_has(text, "sd3_http_requests_total{endpoint=\"openai\",outcome=\"ok\"} 2");
        s_has(text, "sd3_http_requests_total{endpoint=\"openai\",outcome=\"timeout\"} 1");
        s_has(text, "sd3_http_requests_total{endpoint=\"a1111\",outcome=\"queue_full\"} 1");
        s_has(text, "sd3_http_requests_total{endpoint=\"other\",outcome=\"bad_request\"} 1");
        s_has(text, "sd3_http_requests_total{endpoint=\"a1111\",outcome=\"ok\"} 0");
        s_has(text, "# TYPE sd3_http_request_duration_seconds histogram");
        s_has(text, "sd3_http_request_duration_seconds_bucket{endpoint=\"openai\",le=\"0.005\"} 1");
        s_has(text, "sd3_http_request_duration_seconds_bucket{endpoint=\"openai\",le=\"5\"} 1");
        s_has(text, "sd3_http_request_duration_seconds_bucket{endpoint=\"openai\",le=\"10\"} 2");
        s_has(text, "sd3_http_request_duration_seconds_bucket{endpoint=\"openai\",le=\"300\"} 2");
        s_has(text, "sd3_http_request_duration_seconds_bucket{endpoint=\"openai\",le=\"+Inf\"} 3");
        s_has(text, "sd3_http_request_duration_seconds_count{endpoint=\"openai\"} 3");
        s_has(text, "sd3_http_request_duration_seconds_sum{endpoint=\"openai\"} 1007.003");
        s_has(text, "sd3_http_inflight_requests 1");
        s_has(text, "sd3_http_images_total 3");
        s_has(text, "sd3_http_step_duration_seconds_bucket{le=\"0.1\"} 0");
        s_has(text, "sd3_http_step_duration_seconds_bucket{le=\"0.25\"} 3");
        s_has(text, "sd3_http_step_duration_seconds_count 3");
        s_has(text, "sd3_queue_depth 3");
        s_has(text, "sd3_queue_capacity 16");
        s_has(text, "sd3_inflight_requests 2");
        s_has(text, "sd3_requests_total{outcome=\"completed\"} 10");
        s_has(text, "sd3_requests_total{outcome=\"failed\"} 1");
        s_has(text, "sd3_uptime_seconds 12.345");
        s_has(text, "sd3_node_up{node=\"enc-0\",role=\"encoder\"} 1");
        s_has(text, "sd3_node_up{node=\"a\\\"b\\\\c\\nd\",role=\"mmdit\"} 0");
        s_has(text, "sd3_link_bytes_total{node=\"a\\\"b\\\\c\\nd\",link=\"nccl\","
                    "direction=\"sent\"} 1048576");
        s_has(text, "sd3_link_bytes_total{node=\"enc-0\",link=\"zmq\",direction=\"received\"} 0");
        s_has(text, "sd3_pipeline_inflight_requests{pipeline=\"5\"} 2");
        s_has(text, "sd3_pipeline_max_inflight_requests{pipeline=\"5\"} 3");
        s_has(text, "sd3_embedding_cache_hits_total 5");
        s_has(text, "sd3_embedding_cache_misses_total 2");
        s_has(text, "sd3_step_duration_seconds_bucket{le=\"0.01\"} 2");
        s_has(text, "sd3_step_duration_seconds_bucket{le=\"0.25\"} 2");
        s_has(text, "sd3_step_duration_seconds_bucket{le=\"0.5\"} 4");
        s_has(text, "sd3_step_duration_seconds_bucket{le=\"60\"} 4");
        s_has(text, "sd3_step_duration_seconds_bucket{le=\"+Inf\"} 5");
        s_has(text, "sd3_step_duration_seconds_count 5");
        s_has(text, "sd3_step_duration_seconds_sum 100.615");
        s_check_grammar(text);
        s_promtool(text);
    }
    free(text);

    // The controller did not answer: up 0, none of its families.
    text = sd3_metrics_render(m, NULL, &len);
    CHECK(text != NULL);
    if (text) {
        s_has(text, "sd3_up 0");
        CHECK(strstr(text, "sd3_queue_depth") == NULL);
        CHECK(strstr(text, "sd3_step_duration_seconds_bucket") == NULL);
        s_has(text, "sd3_http_images_total 3");
        s_check_grammar(text);
        s_promtool(text);
    }
    free(text);
    sd3_metrics_destroy(&m);
    CHECK(m == NULL);
    sd3_metrics_destroy(&m); // NULL-safe
    return TEST_RESULT();
}
