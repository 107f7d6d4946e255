/*  test_link_bind - a serve link binds a TCP address its old holder is still giving up
 *
 *  A restarted controller or stage binds the port of the process it replaces, which may
 *  still be dying. Checked: a serve link on a port another link holds, released 400 ms
 *  later, binds once it is free (after >= 0.3 s, well inside the 5 s retry); a port held
 *  throughout fails after the 5 s retry with SD3_EIO naming the endpoint (no hang); an
 *  inproc address in use fails at once (no retry off tcp).  */
#include "sd3_clock.h"
#include "sd3_link.h"
#include "sd3_test.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

static sd3_link_t *s_holder;

static void *
s_release_later(void *arg)
{
    (void)arg;
    nanosleep(&(struct timespec){.tv_nsec = 400000000}, NULL);
    sd3_link_destroy(&s_holder);
    return NULL;
}

int
main(void)
{
    void *ctx = zmq_ctx_new();
    sd3_err_t err = {0};
    sd3_link_opts_t o = {0};
    s_holder = sd3_link_new_serve(ctx, "tcp://127.0.0.1:*", &o, &err);
    CHECK_MSG(s_holder != NULL, "%s", err.msg);
    if (!s_holder)
        return TEST_RESULT();
    char ep[256];
    snprintf(ep, sizeof ep, "%s", sd3_link_endpoint(s_holder));

    // 1. held throughout: SD3_EIO after the retry, naming the endpoint
    double t0 = sd3_now_s();
    sd3_link_t *b = sd3_link_new_serve(ctx, ep, &o, &err);
    double held = sd3_now_s() - t0;
    CHECK_MSG(b == NULL && err.code == SD3_EIO && strstr(err.msg, ep),
              "a held port: link %p, code %d '%s'", (void *)b, err.code, err.msg);
    CHECK_MSG(held >= 4.9 && held < 8, "gave up after %.2f s, want the 5 s retry", held);
    sd3_link_destroy(&b);

    // 2. released 400 ms later: bound
    pthread_t th;
    sd3_err_clear(&err);
    pthread_create(&th, NULL, s_release_later, NULL);
    t0 = sd3_now_s();
    b = sd3_link_new_serve(ctx, ep, &o, &err);
    double waited = sd3_now_s() - t0;
    pthread_join(th, NULL);
    CHECK_MSG(b != NULL, "bind after the release: %s", err.msg);
    CHECK_MSG(waited >= 0.3 && waited < 4.9, "bound after %.2f s", waited);
    printf("held port: EIO after %.2f s; released port: bound after %.2f s\n", held, waited);
    sd3_link_destroy(&b);

    // 3. inproc in use: at once
    sd3_link_t *i1 = sd3_link_new_serve(ctx, "inproc://bind-twice", &o, &err);
    CHECK(i1 != NULL);
    t0 = sd3_now_s();
    sd3_link_t *i2 = sd3_link_new_serve(ctx, "inproc://bind-twice", &o, &err);
    CHECK_MSG(i2 == NULL && sd3_now_s() - t0 < 0.5, "inproc twice: link %p after %.2f s",
              (void *)i2, sd3_now_s() - t0);
    sd3_link_destroy(&i2);
    sd3_link_destroy(&i1);
    zmq_ctx_term(ctx);
    return TEST_RESULT();
}
