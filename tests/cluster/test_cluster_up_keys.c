/*  test_cluster_up_keys - `sd3ctl up` of a cluster file that names CurveZMQ keys
 *
 *  `sd3ctl keygen` makes a server pair (presented by the controller and every stage, so
 *  one default line in server.pub serves the OS-chosen ports), a client pair and a rogue
 *  pair. The cluster file sets keys_dir and, in [cluster], curve_secret / curve_allow /
 *  curve_server_pub for every member plus client_curve_* for `sd3ctl up` itself. Checks:
 *    - `sd3ctl up` comes up (so it reached the keyed controller with the client keys), and
 *      every member's log says curve=on with the server key;
 *    - the listed client is served, PNG byte-equal to the one-process PNG;
 *    - a plain client and a rogue-key client get no STATUS answer;
 *    - vae0 killed and started again by `sd3ctl up --restart vae0` (same keys): the command
 *      returns once the new vae0 is registered (STATUS says so at once), and it serves the
 *      next request, byte-equal again;
 *    - `up --restart controller` while the controller lives fails after the 5 s bind
 *      retry; the pids file keeps the live one, which serves on.  */
#include "cluster_util.h"

// One request with client cl: its PNG equals ref.
static bool
s_served(sd3_client_t *cl, const char *id, const unsigned char *ref, size_t ref_n)
{
    static sd3_wire_generate_t w;
    cu_request(&w, "a lighthouse at dusk", 7, 2);
    sd3_msg_t *res = NULL;
    sd3_err_t err = {0};
    int rc = sd3_client_generate(cl, id, &w, NULL, NULL, NULL, 30000, &res, &err);
    CHECK_MSG(rc == 0, "generate %s: %s", id, err.msg);
    sd3_tensor_t *png = res ? sd3_msg_tensor(res, "png") : NULL;
    bool same = png && ref && sd3_tensor_nbytes(png) == ref_n && !memcmp(png->data, ref, ref_n);
    sd3_msg_destroy(&res);
    return same;
}

int
main(void)
{
    cu_setup(100);
    const char *tmp = sd3_test_tmpdir();
    char dir[1100], model[1100], pub[3][64], path[1200], text[4096];
    snprintf(dir, sizeof dir, "%s/keys", tmp);
    snprintf(model, sizeof model, "%s/tiny-d2", tmp);
    mkdir(dir, 0700);
    CHECK(cu_mkmodel("tiny-sd3-medium", 2, model) == 0);
    static const char *const names[] = {"server", "client", "rogue"};
    for (int i = 0; i < 3; i++)
        CHECK_MSG(cu_keygen(dir, names[i], pub[i], sizeof pub[i]) == 0, "keygen %s", names[i]);
    snprintf(path, sizeof path, "%s/allow", dir); // the stages and the client, not the rogue
    snprintf(text, sizeof text, "%s\n%s\n", pub[0], pub[1]);
    CHECK(cu_write_file(path, text) == 0);
    snprintf(path, sizeof path, "%s/server-pub", dir); // every server presents this key
    snprintf(text, sizeof text, "%s\n", pub[0]);
    CHECK(cu_write_file(path, text) == 0);
    size_t ref_n = 0;
    unsigned char *ref =
        cu_local_png(model, "a lighthouse at dusk", "--size 64x64 --steps 2 --seed 7", &ref_n);
    CHECK(ref != NULL);

    snprintf(text, sizeof text,
             "[cluster]\n"
             "model = %s\n"
             "run_dir = %s/run-keys\n"
             "threads = 1\n"
             "keys_dir = %s\n"
             "curve_secret = server.key     # the controller and every node\n"
             "curve_allow = allow\n"
             "curve_server_pub = server-pub\n"
             "client_curve_secret = client.key  # what sd3ctl up polls STATUS with\n"
             "client_curve_server_pub = server-pub\n"
             "[controller]\n"
             "listen = tcp://127.0.0.1:*\n"
             "stages = tcp://127.0.0.1:*\n"
             "node_timeout_ms = 1500\n"
             "[encoder enc0]\n[mmdit d0]\nrange = 0:1\n[mmdit d1]\nrange = 1:2\n[vae vae0]\n",
             model, tmp, dir);
    char client_ep[1200];
    CHECK(cu_up_text("keys", text, client_ep, sizeof client_ep) == 0);
    if (!client_ep[0])
        return TEST_RESULT();
    char needle[32];
    snprintf(needle, sizeof needle, "curve=on key=%.8s", pub[0]);
    static const char *const members[] = {"controller", "enc0", "d0", "d1", "vae0"};
    for (int i = 0; i < 5; i++)
        CHECK_MSG(cu_log_count(members[i], needle) == 1, "%s.log: no '%s'", members[i], needle);

    // 1. the listed client
    char cl_key[1200], rogue_key[1200], server_pub[1200];
    snprintf(cl_key, sizeof cl_key, "%s/client.key", dir);
    snprintf(rogue_key, sizeof rogue_key, "%s/rogue.key", dir);
    snprintf(server_pub, sizeof server_pub, "%s/server-pub", dir);
    sd3_err_t err = {0};
    sd3_client_opts_t co = {.curve_secret = cl_key, .curve_server_pub = server_pub};
    sd3_client_t *cl = sd3_client_new(client_ep, &co, &err);
    CHECK_MSG(cl != NULL, "client: %s", err.msg);
    if (!cl)
        return TEST_RESULT();
    bool same = s_served(cl, "k-1", ref, ref_n);
    CHECK_MSG(same, "the keyed cluster's PNG differs from the one-process PNG");

    // 2. no keys, and an unlisted key: no answer
    static sd3_wire_status_t st;
    sd3_client_t *plain = sd3_client_new(client_ep, NULL, &err);
    int rc_plain = plain ? sd3_client_status(plain, 1500, &st, &err) : 0;
    CHECK_MSG(plain && rc_plain == SD3_ETIMEDOUT, "a plain client got an answer (rc %d)", rc_plain);
    sd3_client_destroy(&plain);
    sd3_client_opts_t ro = {.curve_secret = rogue_key, .curve_server_pub = server_pub};
    sd3_client_t *rogue = sd3_client_new(client_ep, &ro, &err);
    int rc_rogue = rogue ? sd3_client_status(rogue, 1500, &st, &err) : 0;
    CHECK_MSG(rogue && rc_rogue == SD3_ETIMEDOUT, "a rogue client got an answer (rc %d)", rc_rogue);
    sd3_client_destroy(&rogue);

    // 3. a member restarted by `sd3ctl up --restart` gets its keys again
    CHECK(cu_kill("vae0") == 0);
    usleep(300000);
    double t_restart = sd3_now_s();
    CHECK(cu_restart("vae0") == 0);
    // `up --restart` returned once the new vae0 had registered: its start line is written and
    // STATUS lists it as registered since the restart, with no waiting here (the entry of the
    // killed vae0 may count as alive until node_timeout_ms runs out; this one is new).
    int started = cu_log_count("vae0", needle);
    CHECK_MSG(started == 2, "vae0.log: the restart has no '%s' (%d lines)", needle, started);
    // The others registered before the restart began: registered_ms tells them apart.
    bool fresh = false;
    int older = 0;
    CHECK(sd3_client_status(cl, 3000, &st, &err) == 0);
    uint64_t since_ms = (uint64_t)((sd3_now_s() - t_restart) * 1000) + 1;
    for (int i = 0; i < st.n_nodes; i++) {
        bool vae = !strcmp(st.nodes[i].node.node_id, "vae0");
        fresh |= vae && st.nodes[i].alive && st.nodes[i].registered_ms <= since_ms;
        older += !vae && st.nodes[i].registered_ms > since_ms;
    }
    CHECK_MSG(fresh, "`up --restart vae0` returned before the new vae0 registered");
    CHECK_MSG(older == 3, "%d of the 3 other nodes registered before the restart", older);
    int alive = 0;
    for (double t0 = sd3_now_s(); sd3_now_s() - t0 < 20 && alive < 4;) {
        usleep(200000);
        alive = 0;
        if (sd3_client_status(cl, 3000, &st, &err) == 0)
            for (int i = 0; i < st.n_nodes; i++)
                alive += st.nodes[i].alive;
    }
    CHECK_MSG(alive == 4, "%d nodes alive after the restart of vae0, want 4", alive);
    bool again = s_served(cl, "k-2", ref, ref_n);
    CHECK_MSG(again, "after the restart the PNG differs");

    // 4. a restart that cannot come up (a second controller while the first holds its
    // ports: its bind is retried 5 s, then it exits): `up --restart` fails, the pids file
    // keeps the live controller, which still serves
    int ctl_pid = cu_pid("controller");
    double t_bad = sd3_now_s();
    int bad = cu_restart("controller");
    double bad_s = sd3_now_s() - t_bad;
    CHECK_MSG(bad != 0 && bad_s >= 4.5, "a second controller: rc %d after %.1f s", bad, bad_s);
    CHECK_MSG(cu_pid("controller") == ctl_pid, "the pids file lost the live controller (%d, was %d)",
              cu_pid("controller"), ctl_pid);
    bool still = s_served(cl, "k-3", ref, ref_n);
    CHECK_MSG(still, "after a failed restart the cluster does not serve the same PNG");
    printf("keyed cluster from a cluster file: served %s, %s; plain rc %d, rogue rc %d\n",
           same ? "bit-identical" : "DIFFERENT", again ? "again after a restart" : "NOT after",
           rc_plain, rc_rogue);
    sd3_client_destroy(&cl);
    free(ref);
    cu_down();
    return TEST_RESULT();
}
