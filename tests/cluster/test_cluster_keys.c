/*  test_cluster_keys - CurveZMQ across a real cluster (issue 8 §3)
 *
 *  `sd3ctl keygen` makes keys for the controller, the stages (one pair shared by encoder,
 *  mmdit and vae), a client, and two in no allow list (a rogue client, an intruder stage). The controller and the stages
 *  run as separate sd3d processes with --curve-secret/--curve-allow/--curve-server-pub
 *  (allow = stage + client keys; the stages' server-pub names the controller's key for its
 *  exact stage endpoint and the stage key for every other server). Checks:
 *    - the listed client is served, and its PNG is the one-process PNG byte for byte;
 *    - `sd3ctl status` with the client keys works, without keys it gets no answer;
 *    - a client with the rogue key gets no answer within 3 s, and the controller logs
 *      "refused ... key=<first 8 of the rogue key>";
 *    - a stage with the intruder key never registers (status lists it absent) and its
 *      refusal is logged too;
 *    - SIGHUP to the controller re-reads the allow file: an unreadable one is refused with
 *      a warning and the old list stays (the listed client is still served); with the
 *      rogue key added, a rogue client is answered.  */
#include "cluster_util.h"

#include <fcntl.h>
#include <sys/wait.h>

#define S_MAX_PROCS 8

static pid_t s_pids[S_MAX_PROCS];
static int s_n_pids;

static void
s_kill_all(void)
{
    for (int i = 0; i < s_n_pids; i++)
        if (s_pids[i] > 0)
            kill(s_pids[i], SIGTERM);
    for (int i = 0; i < s_n_pids; i++)
        if (s_pids[i] > 0)
            waitpid(s_pids[i], NULL, 0);
    s_n_pids = 0;
}

static void
s_on_signal(int sig)
{
    fprintf(stderr, "keys test: signal %d (timeout?): stopping\n", sig);
    for (int i = 0; i < s_n_pids; i++)
        if (s_pids[i] > 0)
            kill(s_pids[i], SIGKILL);
    _exit(1);
}

// Starts sd3d with argv (NULL-terminated), stdout+stderr to log.
static pid_t
s_spawn(const char *log, const char *const *args)
{
    if (s_n_pids >= S_MAX_PROCS)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        char exe[1200];
        snprintf(exe, sizeof exe, "%s/sd3d", SD3_BINARY_DIR);
        execv(exe, (char *const *)args);
        _exit(127);
    }
    if (pid > 0)
        s_pids[s_n_pids++] = pid;
    return pid;
}

// Lines of log file containing both needles.
static int
s_log_count(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof line, f))
        n += strstr(line, a) && strstr(line, b);
    if (f)
        fclose(f);
    return n;
}

// Nodes the controller knows that are alive, and whether `id` is among them.
static int
s_alive(sd3_client_t *cl, const char *id, bool *has)
{
    static sd3_wire_status_t st;
    sd3_err_t err = {0};
    *has = false;
    if (sd3_client_status(cl, 3000, &st, &err) != 0)
        return -1;
    int n = 0;
    for (int i = 0; i < st.n_nodes; i++) {
        n += st.nodes[i].alive;
        *has = *has || !strcmp(st.nodes[i].node.node_id, id);
    }
    return n;
}

int
main(void)
{
    cu_setup(150); // then our own handlers: this test starts sd3d itself (no sd3ctl up)
    (void)cu_up;
    signal(SIGALRM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGTERM, s_on_signal);
    atexit(s_kill_all);
    const char *tmp = sd3_test_tmpdir();
    char dir[1100], model[1100], text[1024];
    snprintf(dir, sizeof dir, "%s/keys", tmp);
    snprintf(model, sizeof model, "%s/tiny-d2", tmp);
    mkdir(dir, 0700);
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    static const char *const names[] = {"controller", "stage", "client", "rogue", "intruder"};
    char pub[5][64];
    for (int i = 0; i < 5; i++) {
        CHECK_MSG(cu_keygen(dir, names[i], pub[i], sizeof pub[i]) == 0, "%s: keygen or no Z85 key",
                  names[i]);
    }
    size_t ref_n = 0;
    unsigned char *ref =
        cu_local_png(model, "a lighthouse at dusk", "--size 64x64 --steps 2 --seed 7", &ref_n);
    CHECK(ref != NULL);

    // Allow list: the stage and client keys (not the rogue).
    char allow[1200], stage_sp[1200], client_sp[1200], addr_file[1200], log_ctrl[1200];
    snprintf(allow, sizeof allow, "%s/allow", dir);
    snprintf(text, sizeof text, "%s\n%s\n", pub[1], pub[2]);
    CHECK(cu_write_file(allow, text) == 0);
    snprintf(client_sp, sizeof client_sp, "%s/client-server.pub", dir);
    snprintf(text, sizeof text, "%s\n", pub[0]);
    CHECK(cu_write_file(client_sp, text) == 0);

    // The controller.
    char ctrl_key[1200];
    snprintf(ctrl_key, sizeof ctrl_key, "%s/controller.key", dir);
    snprintf(addr_file, sizeof addr_file, "%s/controller.addr", dir);
    snprintf(log_ctrl, sizeof log_ctrl, "%s/controller.log", dir);
    unlink(addr_file);
    const char *ca[] = {"sd3d",         "--role",           "controller",
                        "--listen",     "tcp://127.0.0.1:*", "--stage-listen",
                        "tcp://127.0.0.1:*", "--model",      model,
                        "--addr-file",  addr_file,          "--node-timeout-ms",
                        "2000",         "--curve-secret",   ctrl_key,
                        "--curve-allow", allow,             NULL};
    CHECK(s_spawn(log_ctrl, ca) > 0);
    char client_ep[1100] = "", stage_ep[1100] = "";
    for (double t0 = sd3_now_s(); sd3_now_s() - t0 < 20 && !stage_ep[0];) {
        usleep(100000);
        FILE *f = fopen(addr_file, "r");
        char line[1100];
        while (f && fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = '\0';
            if (!strncmp(line, "client=", 7))
                snprintf(client_ep, sizeof client_ep, "%s", line + 7);
            if (!strncmp(line, "stages=", 7))
                snprintf(stage_ep, sizeof stage_ep, "%s", line + 7);
        }
        if (f)
            fclose(f);
    }
    CHECK_MSG(client_ep[0] && stage_ep[0], "the controller did not come up (see %s)", log_ctrl);
    if (!stage_ep[0])
        return TEST_RESULT();
    // Stages: the controller's key at its stage endpoint, the stage key everywhere else.
    snprintf(stage_sp, sizeof stage_sp, "%s/stage-server.pub", dir);
    snprintf(text, sizeof text, "%s\n%s %s\n", pub[1], pub[0], stage_ep);
    CHECK(cu_write_file(stage_sp, text) == 0);

    static const char *const roles[] = {"encoder", "mmdit", "vae", "mmdit"};
    static const char *const ids[] = {"k-enc", "k-dit", "k-vae", "k-rogue"};
    char logs[4][1200];
    for (int i = 0; i < 4; i++) {
        char key[1200];
        snprintf(key, sizeof key, "%s/%s.key", dir, i == 3 ? "intruder" : "stage");
        snprintf(logs[i], sizeof logs[i], "%s/%s.log", dir, ids[i]);
        const char *na[] = {"sd3d",           "--role",           roles[i],
                            "--listen",       "tcp://127.0.0.1:*", "--controller",
                            stage_ep,         "--model",          model,
                            "--node-id",      ids[i],             "--threads",
                            "1",              "--curve-secret",   key,
                            "--curve-allow",  allow,              "--curve-server-pub",
                            stage_sp,         NULL};
        CHECK(s_spawn(logs[i], na) > 0);
    }

    char cl_key[1200], rogue_key[1200];
    snprintf(cl_key, sizeof cl_key, "%s/client.key", dir);
    snprintf(rogue_key, sizeof rogue_key, "%s/rogue.key", dir);
    sd3_err_t err = {0};
    sd3_client_opts_t co = {.curve_secret = cl_key, .curve_server_pub = client_sp};
    sd3_client_t *cl = sd3_client_new(client_ep, &co, &err);
    CHECK_MSG(cl != NULL, "client: %s", err.msg);
    if (!cl)
        return TEST_RESULT();
    // Wait until the three listed stages are registered.
    bool rogue_seen = false;
    int alive = 0;
    for (double t0 = sd3_now_s(); sd3_now_s() - t0 < 25 && alive < 3;) {
        alive = s_alive(cl, "k-rogue", &rogue_seen);
        if (alive < 3)
            usleep(200000);
    }
    CHECK_MSG(alive == 3, "%d stages registered, want 3", alive);

    // 1. The listed client is served, bit for bit.
    sd3_wire_generate_t *w = calloc(1, sizeof *w);
    cu_request(w, "a lighthouse at dusk", 7, 2);
    sd3_msg_t *res = NULL;
    CHECK_MSG(sd3_client_generate(cl, "keys-1", w, NULL, NULL, NULL, 20000, &res, &err) == 0,
              "generate: %s", err.msg);
    sd3_tensor_t *png = res ? sd3_msg_tensor(res, "png") : NULL;
    bool same = png && ref && sd3_tensor_nbytes(png) == ref_n && !memcmp(png->data, ref, ref_n);
    CHECK_MSG(same, "the keyed cluster's PNG differs from the one-process PNG (%zu bytes)", ref_n);
    printf("listed client: served, PNG %s\n", same ? "bit-identical" : "DIFFERS");
    sd3_msg_destroy(&res);

    // 2. sd3ctl status: with the client keys it answers, without keys it does not.
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s/sd3ctl' status --controller '%s' --curve-secret '%s' --curve-server-pub '%s' "
             "--timeout-ms 3000 >/dev/null 2>&1",
             SD3_BINARY_DIR, client_ep, cl_key, client_sp);
    CHECK_MSG(system(cmd) == 0, "sd3ctl status with the client keys failed");
    snprintf(cmd, sizeof cmd,
             "'%s/sd3ctl' status --controller '%s' --timeout-ms 1500 >/dev/null 2>&1",
             SD3_BINARY_DIR, client_ep);
    CHECK_MSG(system(cmd) != 0, "sd3ctl status without keys got an answer");

    // 3. A client with an unknown key gets nothing; its refusal is logged.
    sd3_client_opts_t ro = {.curve_secret = rogue_key, .curve_server_pub = client_sp};
    sd3_client_t *rogue = sd3_client_new(client_ep, &ro, &err);
    CHECK(rogue != NULL);
    static sd3_wire_status_t st;
    int rc = rogue ? sd3_client_status(rogue, 3000, &st, &err) : 0;
    CHECK_MSG(rc == SD3_ETIMEDOUT, "the rogue client got an answer (rc %d)", rc);
    sd3_client_destroy(&rogue);
    char needle[32];
    snprintf(needle, sizeof needle, "key=%.8s", pub[3]);
    CHECK_MSG(s_log_count(log_ctrl, "refused", needle) >= 1,
              "no refusal of %s in the controller's log", needle);

    // 4. The intruder stage never registered; its refusal is logged.
    alive = s_alive(cl, "k-rogue", &rogue_seen);
    CHECK_MSG(alive == 3 && !rogue_seen, "intruder stage: alive=%d listed=%d", alive, rogue_seen);
    char needle2[32];
    snprintf(needle2, sizeof needle2, "key=%.8s", pub[4]);
    CHECK_MSG(s_log_count(log_ctrl, "refused", needle2) >= 1,
              "no refusal of the intruder stage (%s) in the controller's log", needle2);
    printf("rogue client (%s) and intruder stage (%s) refused, %d stages alive\n", needle, needle2,
           alive);

    // 5. SIGHUP re-reads the allow file: one that does not load leaves the old list (the
    //    listed client is still served); with the rogue key added, the rogue gets answers.
    pid_t ctrl = s_pids[0];
    CHECK(cu_write_file(allow, "not a key at all\n") == 0);
    CHECK(kill(ctrl, SIGHUP) == 0);
    for (double t0 = sd3_now_s(); sd3_now_s() - t0 < 5 && !s_log_count(log_ctrl, "SIGHUP", "stays");)
        usleep(50000);
    CHECK_MSG(s_log_count(log_ctrl, "SIGHUP", "stays") == 1,
              "a bad allow file on SIGHUP: no warning in %s", log_ctrl);
    CHECK_MSG(kill(ctrl, 0) == 0, "the controller died of SIGHUP");
    CHECK_MSG(s_alive(cl, "k-rogue", &rogue_seen) == 3, "after a bad reload the listed client "
                                                        "gets no STATUS");
    snprintf(text, sizeof text, "%s\n%s\n%s\n", pub[1], pub[2], pub[3]);
    CHECK(cu_write_file(allow, text) == 0);
    CHECK(kill(ctrl, SIGHUP) == 0);
    for (double t0 = sd3_now_s(); sd3_now_s() - t0 < 5 && !s_log_count(log_ctrl, "reloaded", "keys=3");)
        usleep(50000);
    CHECK_MSG(s_log_count(log_ctrl, "reloaded", "keys=3") == 1, "no reload in %s", log_ctrl);
    rogue = sd3_client_new(client_ep, &ro, &err);
    rc = rogue ? sd3_client_status(rogue, 5000, &st, &err) : -1;
    CHECK_MSG(rc == 0, "the rogue client, now listed, got no answer (rc %d)", rc);
    sd3_client_destroy(&rogue);
    alive = s_alive(cl, "k-rogue", &rogue_seen);
    CHECK_MSG(alive == 3 && !rogue_seen, "after the reload: alive=%d intruder listed=%d", alive,
              rogue_seen);
    printf("SIGHUP: a bad allow file kept the old list; the rogue key added -> served\n");

    sd3_client_destroy(&cl);
    free(w);
    free(ref);
    s_kill_all();
    return TEST_RESULT();
}
