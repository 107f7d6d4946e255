/*  fuzz_safetensors - fuzz target for the safetensors parser (sd3_st_open)
 *
 *  Input: the bytes of a .safetensors file. They go into one memfd (a regular file in
 *  memory, no disk) opened by path through /proc/self/fd, so the real sd3_st_open with its
 *  mmap runs. Oracle: a refusal has a code and a message; an accepted file lists tensors
 *  whose views all lie inside the data area (their byte counts add up to at most its size,
 *  as ranges may not overlap), every name finds its tensor, every view reads to its end,
 *  every metadata key finds its value.
 *  Seeds (--write-seeds): files made by sd3_st_write_tensors plus hand-made hostile headers.
 *  Built as a replayer (ctest label fuzz, corpus tests/fuzz/corpus-safetensors) and, with
 *  -DSD3_FUZZ=ON, as the libFuzzer binary fuzz_safetensors_lf (tests/cmake/fuzz.cmake).  */
#include "sd3_fuzz_replay.h"
#include "sd3_safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int s_fd = -1;
static char s_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (s_fd < 0) {
        s_fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
        if (s_fd < 0)
            abort();
        snprintf(s_path, sizeof s_path, "/proc/self/fd/%d", s_fd);
    }
    if (ftruncate(s_fd, 0) != 0 || (size && pwrite(s_fd, data, size, 0) != (ssize_t)size))
        abort();
    sd3_err_t err = {0};
    sd3_st_t *st = sd3_st_open(s_path, &err);
    if (!st) {
        if (err.code == SD3_OK || !err.msg[0])
            abort(); // a refusal must say why
        SD3_FUZZ_NOTE("refused %s: %s\n", sd3_err_name(err.code), err.msg);
        return 0;
    }
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)data[i] << (8 * i);
    uint64_t data_area = size - 8 - hlen, total = 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < sd3_st_count(st); i++) {
        const char *name = sd3_st_name(st, i);
        sd3_tensor_t view;
        if (!name || !sd3_st_has(st, name) || sd3_st_get(st, name, &view, &err) != 0)
            abort();
        size_t n = sd3_tensor_nbytes(&view);
        total += n;
        if (total > data_area)
            abort(); // views overlap or leave the data area
        const uint8_t *p = view.data;
        for (size_t k = 0; k < n; k += 4096)
            sink ^= p[k];
        if (n)
            sink ^= p[n - 1];
    }
    (void)sink;
    for (size_t i = 0; i < sd3_st_metadata_count(st); i++) {
        const char *key = sd3_st_metadata_key(st, i);
        if (!key || !sd3_st_metadata(st, key))
            abort();
    }
    SD3_FUZZ_NOTE("accepted: %zu tensors, %zu metadata\n", sd3_st_count(st),
                  sd3_st_metadata_count(st));
    sd3_st_destroy(&st);
    return 0;
}

#ifndef SD3_LIBFUZZER
// A file of 8-byte length + header + `data_len` bytes of data.
static int
s_raw(const char *dir, const char *name, const char *header, uint64_t hlen, size_t data_len)
{
    size_t real = strlen(header);
    size_t len = 8 + real + data_len;
    uint8_t *buf = calloc(1, len);
    if (!buf)
        return 1;
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(buf + 8, header, real);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + real + i] = (uint8_t)(i * 7);
    int rc = s_seed_write(dir, name, buf, len);
    free(buf);
    return rc;
}

static int
s_hdr(const char *dir, const char *name, const char *header, size_t data_len)
{
    return s_raw(dir, name, header, strlen(header), data_len);
}

// A file made by the project's writer, copied into the corpus.
static int
s_written(const char *dir, const char *name, const sd3_tensor_t *const *t, size_t n,
          const char *const *meta, size_t n_meta)
{
    char tmp[] = "/tmp/sd3-fuzz-st-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0)
        return 1;
    close(fd);
    sd3_err_t err = {0};
    int rc = sd3_st_write_tensors(tmp, t, n, meta, n_meta, &err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", name, err.msg);
        unlink(tmp);
        return 1;
    }
    FILE *f = fopen(tmp, "rb");
    uint8_t buf[1 << 16];
    size_t len = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f)
        fclose(f);
    unlink(tmp);
    return s_seed_write(dir, name, buf, len);
}

static int
s_write_seeds(const char *dir)
{
    int rc = 0;
    mkdir(dir, 0755);
    sd3_tensor_t *a = sd3_tensor_new(SD3_F32, 2, (int64_t[]){2, 3});
    sd3_tensor_t *b = sd3_tensor_new(SD3_BF16, 1, (int64_t[]){5});
    sd3_tensor_t *c = sd3_tensor_new(SD3_I32, 3, (int64_t[]){1, 2, 2});
    sd3_tensor_t *d = sd3_tensor_new(SD3_F16, 1, (int64_t[]){0});
    if (!a || !b || !c || !d)
        return 1;
    a->name = "model.diffusion_model.x_embedder.proj.weight";
    b->name = "b";
    c->name = "c.ids";
    d->name = "empty";
    for (int i = 0; i < 6; i++)
        ((float *)a->data)[i] = (float)i - 2.5f;
    const sd3_tensor_t *all[] = {a, b, c, d};
    const char *meta[] = {"format", "pt", "modelspec.title", "tiny \"sd3\"\n"};
    rc |= s_written(dir, "good-four", all, 4, meta, 2);
    rc |= s_written(dir, "good-one", all, 1, NULL, 0);
    rc |= s_written(dir, "good-none", all, 0, meta, 1);
    sd3_tensor_destroy(&a);
    sd3_tensor_destroy(&b);
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&d);

    // Hostile headers: each should be refused with a message (or parse, for the odd ones).
    rc |= s_hdr(dir, "min-empty-object", "{}", 0);
    rc |= s_hdr(dir, "padded-header",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],"
                "\"data_offsets\":[0,2]}}        ",
                2);
    rc |= s_raw(dir, "len-past-file", "{\"a\":1}", 1000, 0);
    rc |= s_raw(dir, "len-huge", "{}", 0x7fffffffffffffffull, 0);
    rc |= s_raw(dir, "len-zero", "", 0, 4);
    rc |= s_hdr(dir, "not-json", "{\"a\":{\"dtype\":\"F32\",", 0);
    rc |= s_hdr(dir, "not-object", "[1,2,3]", 0);
    rc |= s_hdr(dir, "overlap",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                16);
    rc |= s_hdr(dir, "shape-mismatch",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 16);
    rc |= s_hdr(dir, "out-of-file",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1000],\"data_offsets\":[0,1000]}}", 16);
    rc |= s_hdr(dir, "reversed-offsets",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,0]}}", 16);
    rc |= s_hdr(dir, "duplicate-name",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                2);
    rc |= s_hdr(dir, "bad-dtype",
                "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    rc |= s_hdr(dir, "neg-shape",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", 1);
    rc |= s_hdr(dir, "big-number",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[9007199254740993],"
                "\"data_offsets\":[0,9007199254740993]}}",
                1);
    rc |= s_hdr(dir, "numel-overflow",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                "\"data_offsets\":[0,0]}}",
                1);
    rc |= s_hdr(dir, "float-shape",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 2);
    rc |= s_hdr(dir, "five-dims",
                "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,1]}}", 1);
    rc |= s_hdr(dir, "missing-fields", "{\"a\":{\"dtype\":\"U8\"}}", 0);
    rc |= s_hdr(dir, "meta-not-string", "{\"__metadata__\":{\"k\":[1,{\"x\":null}]}}", 0);
    rc |= s_hdr(dir, "meta-not-object", "{\"__metadata__\":\"x\"}", 0);
    rc |= s_hdr(dir, "nul-in-name",
                "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    char deep[4200];
    size_t at = 0;
    at += (size_t)snprintf(deep, sizeof deep, "{\"__metadata__\":{\"k\":");
    for (int i = 0; i < 2000; i++)
        deep[at++] = '[';
    for (int i = 0; i < 2000; i++)
        deep[at++] = ']';
    snprintf(deep + at, sizeof deep - at, "}}");
    rc |= s_hdr(dir, "deep-nesting", deep, 0);
    return rc ? 1 : 0;
}
#endif

SD3_FUZZ_REPLAY_MAIN("fuzz_safetensors")
