/*  fuzz_envelope - fuzz target for everything a receiver decodes: envelope + tensor frames
 *
 *  Input format: a sequence of frames, each a 4-byte little-endian length then that many
 *  bytes (a length past the end takes what is left); at most 24 frames. The frames go to
 *  sd3_wire_decode() with small caps. Oracle: no crash, no sanitizer report, and a message
 *  that was accepted re-encodes into frames that decode again to the same tensors.
 *
 *  Built two ways (tests/cmake/wire.cmake):
 *    - plain (ctest label fuzz): main() replays every file of the folders given, or with
 *      --write-seeds DIR writes the seed corpus (good messages of each body and every
 *      sd3_wire_bad kind);
 *    - -DSD3_FUZZ=ON with clang: fuzz_envelope_lf, a libFuzzer binary
 *        ./fuzz_envelope_lf -max_total_time=60 tests/fuzz/corpus-envelope  */
#include "sd3_wire.h"
#include "sd3_wire_bad.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define S_MAX_FRAMES 24

static void
s_limits(sd3_wire_limits_t *lim)
{
    sd3_wire_limits_default(lim);
    lim->max_tensor_bytes = (size_t)16 << 20; // keep the fuzzer's memory small
    lim->max_total_bytes = (size_t)32 << 20;
}

static int
s_split(const uint8_t *data, size_t size, sd3_wire_frame_t *frames)
{
    int n = 0;
    size_t at = 0;
    while (at < size && n < S_MAX_FRAMES) {
        size_t len = 0;
        if (size - at >= 4) {
            len = (size_t)data[at] | (size_t)data[at + 1] << 8 | (size_t)data[at + 2] << 16 |
                  (size_t)data[at + 3] << 24;
            at += 4;
        } else {
            at = size;
        }
        if (len > size - at)
            len = size - at;
        frames[n++] = (sd3_wire_frame_t){(void *)(data + at), len, NULL, NULL};
        at += len;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sd3_wire_frame_t frames[S_MAX_FRAMES];
    sd3_wire_limits_t lim;
    sd3_wire_peer_t peer;
    sd3_msg_t *msg = NULL, *again = NULL;
    sd3_err_t err = {0};
    s_limits(&lim);
    int n = s_split(data, size, frames);
    if (n == 0)
        return 0;
    if (sd3_wire_decode(frames, n, &lim, &peer, &msg, &err) != 0) {
        if (err.code == SD3_OK || !err.msg[0])
            abort(); // a refusal must say why
        return 0;
    }
    // Accepted: it must survive a round trip through our own encoder.
    int n_tensors = msg->n_tensors;
    size_t bytes[SD3_WIRE_MAX_TENSORS];
    for (int i = 0; i < n_tensors; i++)
        bytes[i] = sd3_tensor_nbytes(msg->tensors[i].tensor);
    sd3_wire_frames_t out;
    if (sd3_wire_encode(&msg, &out, &err) != 0)
        abort();
    sd3_err_clear(&err);
    if (sd3_wire_decode(out.frames, out.n, &lim, NULL, &again, &err) != 0) {
        fprintf(stderr, "re-decode failed: %s\n", err.msg);
        abort();
    }
    if (again->n_tensors != n_tensors)
        abort();
    for (int i = 0; i < n_tensors; i++)
        if (sd3_tensor_nbytes(again->tensors[i].tensor) != bytes[i])
            abort();
    sd3_msg_destroy(&again);
    sd3_wire_frames_fini(&out);
    return 0;
}

#ifndef SD3_LIBFUZZER
static int
s_write(const char *dir, const char *name, const sd3_wire_frame_t *frames, int n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    for (int i = 0; i < n && i < S_MAX_FRAMES; i++) {
        uint8_t len[4] = {(uint8_t)frames[i].len, (uint8_t)(frames[i].len >> 8),
                          (uint8_t)(frames[i].len >> 16), (uint8_t)(frames[i].len >> 24)};
        fwrite(len, 1, 4, f);
        fwrite(frames[i].data, 1, frames[i].len, f);
    }
    return fclose(f);
}

static int
s_write_msg(const char *dir, const char *name, sd3_msg_t *msg)
{
    sd3_wire_frames_t fr;
    sd3_err_t err = {0};
    if (sd3_wire_encode(&msg, &fr, &err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        return -1;
    }
    int rc = s_write(dir, name, fr.frames, fr.n);
    sd3_wire_frames_fini(&fr);
    return rc;
}

static int
s_write_seeds(const char *dir)
{
    sd3_err_t err = {0};
    int rc = 0;
    mkdir(dir, 0755);
    for (int k = -1; k < sd3_wire_bad_count(); k++) {
        sd3_wire_bad_msg_t m;
        char name[64];
        if (k >= 0 && !strcmp(sd3_wire_bad_name(k), "oversized envelope"))
            continue; // 1 MiB of 'm': says nothing a mutation cannot find
        int r =
            k < 0 ? sd3_wire_bad_good("seed", &m, &err) : sd3_wire_bad_build(k, "seed", &m, &err);
        if (r) {
            fprintf(stderr, "seed %d: %s\n", k, err.msg);
            return 1;
        }
        snprintf(name, sizeof name, k < 0 ? "good-step" : "bad-%02d", k);
        rc |= s_write(dir, name, m.frames, m.n);
        sd3_wire_bad_fini(&m);
    }
    // One message of every body.
    sd3_msg_t *m = sd3_msg_new(SD3_MSG_GENERATE, "g1");
    m->body_kind = SD3_WIRE_BODY_GENERATE;
    snprintf(m->body.generate.prompt, SD3_WIRE_PROMPT_MAX, "a cat");
    m->body.generate.n_slg_layers = 2;
    m->body.generate.slg_layers[1] = 8;
    m->body.generate.steps = 28;
    rc |= s_write_msg(dir, "good-generate", m);
    m = sd3_msg_new(SD3_MSG_JOB, "j1");
    m->body_kind = SD3_WIRE_BODY_JOB;
    m->body.job.n_sigmas = 5;
    m->body.job.sigmas[0] = 1.0f;
    snprintf(m->body.job.next_address, SD3_WIRE_ADDR_MAX, "tcp://127.0.0.1:5601");
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 16, 4, 4});
    t->name = "latent";
    sd3_codec_opts_t bf = {.codec = SD3_CODEC_SHUFFLE_ZSTD, .wire_dtype = SD3_BF16};
    sd3_msg_add_tensor(m, &t, &bf, &err);
    rc |= s_write_msg(dir, "good-job", m);
    m = sd3_msg_new(SD3_MSG_REGISTER, NULL);
    m->body_kind = SD3_WIRE_BODY_REGISTER;
    m->body.reg.role = SD3_WIRE_ROLE_VAE;
    m->body.reg.nccl_id_len = 4;
    rc |= s_write_msg(dir, "good-register", m);
    m = sd3_msg_new(SD3_MSG_STATUS, NULL);
    m->body_kind = SD3_WIRE_BODY_STATUS;
    m->body.status.n_nodes = 1;
    m->body.status.n_pipelines = 1;
    m->body.status.pipelines[0].n_stages = 2;
    rc |= s_write_msg(dir, "good-status", m);
    m = sd3_msg_new(SD3_MSG_HEARTBEAT, NULL);
    m->body_kind = SD3_WIRE_BODY_HEARTBEAT;
    rc |= s_write_msg(dir, "good-heartbeat", m);
    m = sd3_msg_new(SD3_MSG_PROGRESS, "p");
    m->body_kind = SD3_WIRE_BODY_PROGRESS;
    m->body.progress.steps = 3;
    rc |= s_write_msg(dir, "good-progress", m);
    sd3_err_set(&err, SD3_EFULL, "queue full");
    rc |= s_write_msg(dir, "good-error", sd3_msg_new_error("e", 1, &err));
    return rc ? 1 : 0;
}

static int
s_replay(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
    size_t got = buf ? fread(buf, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!buf || got != (size_t)len) {
        free(buf);
        return -1;
    }
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-seeds"))
        return s_write_seeds(argv[2]);
    int files = 0;
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (!d) {
            if (s_replay(argv[a]) != 0) {
                fprintf(stderr, "fuzz_envelope: cannot read %s\n", argv[a]);
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
            if (s_replay(path) != 0) {
                fprintf(stderr, "fuzz_envelope: cannot read %s\n", path);
                closedir(d);
                return 1;
            }
            files++;
        }
        closedir(d);
    }
    printf("fuzz_envelope: replayed %d inputs\n", files);
    if (files == 0) {
        fprintf(stderr, "fuzz_envelope: no corpus given or found\n");
        return 1;
    }
    return 0;
}
#endif
