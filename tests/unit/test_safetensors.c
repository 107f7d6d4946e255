/*  test_safetensors - the safetensors reader and streaming writer
 *
 *  1. Writes a small file with every dtype (declared out of name order, written in odd
 *     chunks) and reads it back bit-exactly: names, dtypes, shapes, bytes, metadata, the
 *     sorted and space-padded header.
 *  2. Corrupts that file in many ways; each must give SD3_EFORMAT with a message naming the
 *     problem, never a crash (also under ASan/UBSan). Then random byte flips in the header.
 *  3. The writer refuses misuse (short data, extra data, duplicates) and leaves no file.  */
#include "sd3_safetensors.h"
#include "sd3_test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char s_dir[256];
static char s_good[300];

typedef struct {
    const char *name;
    sd3_dtype_t dtype;
    int ndim;
    int64_t shape[4];
    uint8_t *data;
    size_t nbytes;
} t_spec_t;

static t_spec_t s_specs[] = {
    {"b.weight", SD3_F32, 2, {8, 4}, NULL, 0}, // declared first: data order != name order
    {"a.weight", SD3_F32, 2, {4, 8}, NULL, 0}, // same size as b (used by the overlap case)
    {"c.bias", SD3_F16, 1, {5}, NULL, 0},      {"d.e4m3", SD3_F8_E4M3, 1, {3}, NULL, 0},
    {"e.ids", SD3_I32, 2, {2, 3}, NULL, 0},    {"f.bf16", SD3_BF16, 4, {2, 2, 2, 2}, NULL, 0},
    {"g.scalar", SD3_F32, 0, {0}, NULL, 0},    {"h.empty", SD3_F32, 2, {0, 3}, NULL, 0},
    {"i.u8", SD3_U8, 1, {7}, NULL, 0},
};
#define N_SPECS (sizeof s_specs / sizeof s_specs[0])

static uint8_t *
s_read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static void
s_write_all(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (n)
        fwrite(data, 1, n, f);
    fclose(f);
}

static void
s_write_good(void)
{
    sd3_err_t err = {0};
    unsigned long long rng = 12345;
    sd3_st_writer_t *w = sd3_st_writer_new(s_good, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    CHECK(sd3_st_writer_meta(w, "format", "pt", &err) == 0);
    CHECK(sd3_st_writer_meta(w, "quote", "say \"hi\"\n\tback\\slash", &err) == 0);
    CHECK(sd3_st_writer_meta(w, "utf8", "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", &err) == 0);
    for (size_t i = 0; i < N_SPECS; i++) {
        t_spec_t *s = &s_specs[i];
        size_t numel = 1;
        for (int d = 0; d < s->ndim; d++)
            numel *= (size_t)s->shape[d];
        s->nbytes = numel * sd3_dtype_size(s->dtype);
        s->data = malloc(s->nbytes + 1);
        for (size_t b = 0; b < s->nbytes; b++)
            s->data[b] = (uint8_t)(sd3_test_randf(&rng) * 127.0f + 128.0f);
        CHECK(sd3_st_writer_declare(w, s->name, s->dtype, s->ndim, s->shape, &err) == 0);
    }
    CHECK(sd3_st_writer_begin(w, &err) == 0);
    // the data in chunks of 3 bytes, crossing tensor boundaries
    for (size_t i = 0; i < N_SPECS; i++)
        for (size_t b = 0; b < s_specs[i].nbytes; b += 3) {
            size_t n = s_specs[i].nbytes - b < 3 ? s_specs[i].nbytes - b : 3;
            CHECK(sd3_st_writer_write(w, s_specs[i].data + b, n, &err) == 0);
        }
    CHECK_MSG(sd3_st_writer_finish(&w, &err) == 0, "%s", err.msg);
    CHECK(w == NULL);
}

static void
s_test_roundtrip(void)
{
    sd3_err_t err = {0};
    sd3_st_t *st = sd3_st_open(s_good, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st)
        return;
    CHECK(sd3_st_count(st) == N_SPECS);
    // names in data-offset order = declaration order
    for (size_t i = 0; i < N_SPECS && i < sd3_st_count(st); i++)
        CHECK_MSG(!strcmp(sd3_st_name(st, i), s_specs[i].name), "%zu: %s", i, sd3_st_name(st, i));
    for (size_t i = 0; i < N_SPECS; i++) {
        const t_spec_t *s = &s_specs[i];
        sd3_tensor_t v;
        CHECK(sd3_st_has(st, s->name));
        CHECK(sd3_st_get(st, s->name, &v, &err) == 0);
        CHECK(v.dtype == s->dtype && v.ndim == s->ndim);
        for (int d = 0; d < s->ndim; d++)
            CHECK(v.shape[d] == s->shape[d]);
        CHECK(sd3_tensor_nbytes(&v) == s->nbytes);
        CHECK_MSG(memcmp(v.data, s->data, s->nbytes) == 0, "bytes of %s differ", s->name);
        CHECK(!strcmp(v.name, s->name));
        CHECK(!v.owns);
    }
    sd3_tensor_t v;
    sd3_err_t e2 = {0};
    CHECK(sd3_st_get(st, "nope", &v, &e2) == SD3_ENOTFOUND);
    CHECK(strstr(e2.msg, "nope") != NULL);
    CHECK(!sd3_st_has(st, "nope"));
    CHECK(sd3_st_metadata_count(st) == 3);
    CHECK(!strcmp(sd3_st_metadata_key(st, 0), "format"));
    CHECK(!strcmp(sd3_st_metadata(st, "format"), "pt"));
    CHECK(!strcmp(sd3_st_metadata(st, "quote"), "say \"hi\"\n\tback\\slash"));
    CHECK(!strcmp(sd3_st_metadata(st, "utf8"), "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac"));
    CHECK(sd3_st_metadata(st, "absent") == NULL);
    CHECK(!strcmp(sd3_st_path(st), s_good));
    sd3_st_destroy(&st);
    CHECK(st == NULL);
    sd3_st_destroy(&st); // NULL-safe

    // header layout: length a multiple of 8, padded with spaces, metadata then sorted keys
    size_t size;
    uint8_t *buf = s_read_all(s_good, &size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    CHECK(hlen % 8 == 0);
    char *h = malloc(hlen + 1);
    memcpy(h, buf + 8, hlen);
    h[hlen] = 0;
    CHECK(!strncmp(h, "{\"__metadata__\":{\"format\":\"pt\"", 29));
    char *pa = strstr(h, "\"a.weight\""), *pb = strstr(h, "\"b.weight\""),
         *pi = strstr(h, "\"i.u8\"");
    CHECK(pa && pb && pi && pa < pb && pb < pi);
    size_t end = strlen(h);
    while (end > 0 && h[end - 1] == ' ')
        end--;
    CHECK(end > 0 && h[end - 1] == '}');
    size_t total = 0;
    for (size_t i = 0; i < N_SPECS; i++)
        total += s_specs[i].nbytes;
    CHECK(size == 8 + hlen + total);
    printf("roundtrip: %zu tensors, header %llu bytes, data %zu bytes\n", N_SPECS,
           (unsigned long long)hlen, total);
    free(h);
    free(buf);
}

// ---- corruptions -----------------------------------------------------------------------

static uint8_t *s_file;
static size_t s_file_size;
static uint64_t s_hlen;

// Writes the good file with header text `find` replaced by `repl` (header length updated).
static void
s_make_variant(const char *path, const char *find, const char *repl)
{
    char *h = malloc(s_hlen + strlen(repl) + 1);
    memcpy(h, s_file + 8, s_hlen);
    h[s_hlen] = 0;
    char *at = strstr(h, find);
    CHECK_MSG(at != NULL, "test bug: '%s' not in the header", find);
    if (!at) {
        free(h);
        return;
    }
    size_t pre = (size_t)(at - h), flen = strlen(find), rlen = strlen(repl);
    size_t nlen = s_hlen - flen + rlen;
    uint8_t *out = malloc(8 + nlen + (s_file_size - 8 - s_hlen));
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)((uint64_t)nlen >> (8 * i));
    memcpy(out + 8, h, pre);
    memcpy(out + 8 + pre, repl, rlen);
    memcpy(out + 8 + pre + rlen, h + pre + flen, s_hlen - pre - flen);
    memcpy(out + 8 + nlen, s_file + 8 + s_hlen, s_file_size - 8 - s_hlen);
    s_write_all(path, out, 8 + nlen + (s_file_size - 8 - s_hlen));
    free(out);
    free(h);
}

static int s_n_cases;

static void
s_expect_bad(const char *what, const char *path, const char *substr)
{
    sd3_err_t err = {0};
    sd3_st_t *st = sd3_st_open(path, &err);
    s_n_cases++;
    CHECK_MSG(st == NULL, "%s: opened a bad file", what);
    CHECK_MSG(err.code == SD3_EFORMAT, "%s: code %s (%s)", what, sd3_err_name(err.code), err.msg);
    CHECK_MSG(strstr(err.msg, substr) != NULL, "%s: message '%s' lacks '%s'", what, err.msg,
              substr);
    CHECK_MSG(strstr(err.msg, path) != NULL, "%s: message '%s' does not name the file", what,
              err.msg);
    printf("  %-28s -> %s\n", what, err.msg);
    sd3_st_destroy(&st);
}

static void
s_case_replace(const char *what, const char *find, const char *repl, const char *substr)
{
    char path[400];
    snprintf(path, sizeof path, "%s/bad.safetensors", s_dir);
    s_make_variant(path, find, repl);
    s_expect_bad(what, path, substr);
}

static void
s_case_bytes(const char *what, const void *data, size_t n, const char *substr)
{
    char path[400];
    snprintf(path, sizeof path, "%s/bad.safetensors", s_dir);
    s_write_all(path, data, n);
    s_expect_bad(what, path, substr);
}

static void
s_test_corruptions(void)
{
    s_file = s_read_all(s_good, &s_file_size);
    s_hlen = 0;
    for (int i = 7; i >= 0; i--)
        s_hlen = (s_hlen << 8) | s_file[i];
    uint8_t *tmp = malloc(s_file_size + 16);
    printf("corruptions:\n");

    s_case_bytes("empty file", s_file, 0, "too short");
    s_case_bytes("7-byte file", s_file, 7, "too short");
    s_case_bytes("truncated header", s_file, 8 + s_hlen / 2, "exceeds the file");
    memcpy(tmp, s_file, s_file_size);
    for (int i = 0; i < 8; i++) // length = the whole file: one byte short of fitting
        tmp[i] = (uint8_t)((uint64_t)(s_file_size - 7) >> (8 * i));
    s_case_bytes("header length > file", tmp, s_file_size, "exceeds the file");
    memcpy(tmp, s_file, s_file_size);
    memset(tmp, 0xff, 8);
    s_case_bytes("header length 2^64-1", tmp, s_file_size, "exceeds the cap");
    memcpy(tmp, s_file, s_file_size);
    tmp[0] = 1;
    memset(tmp + 1, 0, 7);
    s_case_bytes("header length 1", tmp, s_file_size, "too short for a JSON object");
    s_case_bytes("truncated data", s_file, s_file_size - 5, "past the end");
    memcpy(tmp, "\x08\0\0\0\0\0\0\0[1]     ", 16);
    s_case_bytes("header is a JSON array", tmp, 16, "not a JSON object");

    s_case_replace("invalid JSON", "\"a.weight\":{", "\"a.weight\"{", "not valid JSON");
    s_case_replace("unbalanced bracket", "{\"__metadata__\"", "[{\"__metadata__\"",
                   "not valid JSON");
    s_case_replace("two JSON values", "{\"__metadata__\":{\"format\":\"pt\"",
                   "[], {\"format\":\"pt\"", "after the JSON");
    s_case_replace("unknown dtype", "\"dtype\":\"F16\"", "\"dtype\":\"F17\"", "unknown dtype");
    s_case_replace("dtype missing", "\"dtype\":\"F16\",", "", "no dtype");
    s_case_replace("dtype not a string", "\"dtype\":\"F16\"", "\"dtype\":16", "no dtype");
    s_case_replace("shape/range mismatch", "\"shape\":[5]", "\"shape\":[6]", "needs 12 bytes");
    s_case_replace("shape missing", "\"shape\":[5],", "", "no shape");
    s_case_replace("negative dim", "\"shape\":[5]", "\"shape\":[-5]", "shape entry");
    s_case_replace("fractional dim", "\"shape\":[5]", "\"shape\":[5.5]", "shape entry");
    s_case_replace("huge dim", "\"shape\":[5]", "\"shape\":[1e300]", "shape entry");
    s_case_replace("shape product overflow", "\"shape\":[5]",
                   "\"shape\":[4294967296,4294967296,4294967296]", "overflows");
    s_case_replace("5 dims", "\"shape\":[2,2,2,2]", "\"shape\":[2,2,2,2,1]", "dims");
    s_case_replace("missing data_offsets", "\"data_offsets\":[0,128]", "\"x\":[0,128]",
                   "no data_offsets");
    s_case_replace("data_offsets of 3", "\"data_offsets\":[0,128]", "\"data_offsets\":[0,128,3]",
                   "no data_offsets");
    s_case_replace("non-integer offsets", "\"data_offsets\":[0,128]", "\"data_offsets\":[0.5,128]",
                   "not non-negative integers");
    s_case_replace("string offsets", "\"data_offsets\":[0,128]", "\"data_offsets\":[\"0\",\"128\"]",
                   "not non-negative integers");
    s_case_replace("negative offset", "\"data_offsets\":[0,128]", "\"data_offsets\":[-128,0]",
                   "not non-negative integers");
    s_case_replace("begin > end", "\"data_offsets\":[0,128]", "\"data_offsets\":[128,0]",
                   "begin 128 > end 0");
    s_case_replace("range past end", "\"data_offsets\":[0,128]", "\"data_offsets\":[100000,100128]",
                   "past the end");
    // b.weight is first in the data at [0,128); a.weight [128,256) moved onto it
    s_case_replace("overlapping ranges", "\"data_offsets\":[128,256]", "\"data_offsets\":[64,192]",
                   "overlap");
    s_case_replace("duplicate names", "\"b.weight\"", "\"a.weight\"", "appears twice");
    s_case_replace("tensor not an object", "\"i.u8\":{", "\"i.u8\":5,\"j\":{", "not a JSON object");
    s_case_replace("empty tensor name", "\"i.u8\"", "\"\"", "empty name");
    s_case_replace("metadata not a string", "\"format\":\"pt\"", "\"format\":5", "is not a string");
    s_case_replace("metadata not an object", "\"__metadata__\":{\"format\":\"pt\",",
                   "\"__metadata__\":[1],\"zz\":{\"format\":\"pt\",", "__metadata__ is not");
    s_case_replace("garbage after JSON", "}}", "}}x", "after the JSON");
    printf("%d corruptions rejected\n", s_n_cases);
    CHECK(s_n_cases >= 15);

    // Random byte flips inside the header: must open or fail cleanly, never crash.
    char path[400];
    snprintf(path, sizeof path, "%s/fuzz.safetensors", s_dir);
    unsigned long long rng = 777;
    int opened = 0, refused = 0;
    for (int it = 0; it < 300; it++) {
        memcpy(tmp, s_file, s_file_size);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            size_t pos = 8 + (size_t)((sd3_test_randf(&rng) + 1.0f) * 0.5f * (float)(s_hlen - 1));
            tmp[pos] = (uint8_t)((sd3_test_randf(&rng) + 1.0f) * 127.0f);
        }
        s_write_all(path, tmp, s_file_size);
        sd3_err_t err = {0};
        sd3_st_t *st = sd3_st_open(path, &err);
        if (st) {
            opened++;
            for (size_t i = 0; i < sd3_st_count(st); i++) { // every view lies in the file
                sd3_tensor_t v;
                CHECK(sd3_st_get(st, sd3_st_name(st, i), &v, &err) == 0);
                volatile uint8_t sum = 0;
                for (size_t b = 0; b < sd3_tensor_nbytes(&v); b++)
                    sum += ((const uint8_t *)v.data)[b];
                (void)sum;
            }
            sd3_st_destroy(&st);
        } else {
            refused++;
            CHECK(err.code != SD3_OK && err.msg[0]);
        }
    }
    printf("random header flips: %d opened, %d refused\n", opened, refused);
    free(tmp);
    free(s_file);
}

static void
s_test_writer_misuse(void)
{
    char path[400];
    struct stat sb;
    snprintf(path, sizeof path, "%s/w.safetensors", s_dir);
    float x[4] = {1, 2, 3, 4};
    sd3_err_t err = {0};

    sd3_st_writer_t *w = sd3_st_writer_new(path, &err);
    CHECK(sd3_st_writer_declare(w, "x", SD3_F32, 1, (int64_t[]){4}, &err) == 0);
    CHECK(sd3_st_writer_declare(w, "x", SD3_F32, 1, (int64_t[]){4}, &err) == 0);
    CHECK(sd3_st_writer_begin(w, &err) == SD3_EINVAL); // duplicate found at begin
    CHECK(strstr(err.msg, "declared twice") != NULL);
    sd3_st_writer_abort(&w);
    CHECK(w == NULL && stat(path, &sb) != 0);

    sd3_err_clear(&err);
    w = sd3_st_writer_new(path, &err);
    CHECK(sd3_st_writer_declare(w, "x", SD3_F32, 1, (int64_t[]){4}, &err) == 0);
    CHECK(sd3_st_writer_write(w, x, 16, &err) == SD3_EINVAL); // before the header
    sd3_err_clear(&err);
    CHECK(sd3_st_writer_begin(w, &err) == 0);
    CHECK(sd3_st_writer_write(w, x, 12, &err) == 0);
    CHECK(sd3_st_writer_write(w, x, 8, &err) == SD3_EINVAL); // past the end
    sd3_err_clear(&err);
    CHECK(sd3_st_writer_finish(&w, &err) == SD3_EINVAL); // 12 of 16 bytes
    CHECK(strstr(err.msg, "12 of 16") != NULL);
    CHECK(w == NULL && stat(path, &sb) != 0); // nothing left behind

    sd3_err_clear(&err);
    w = sd3_st_writer_new(path, &err);
    CHECK(sd3_st_writer_declare(w, "__metadata__", SD3_F32, 1, (int64_t[]){4}, &err) == SD3_EINVAL);
    sd3_st_writer_abort(&w);

    // the convenience writer
    sd3_err_clear(&err);
    sd3_tensor_t t;
    sd3_tensor_view_init(&t, SD3_F32, 2, (int64_t[]){2, 2}, x);
    t.name = "m";
    const sd3_tensor_t *list[] = {&t};
    const char *meta[] = {"k", "v"};
    CHECK(sd3_st_write_tensors(path, list, 1, meta, 1, &err) == 0);
    sd3_st_t *st = sd3_st_open(path, &err);
    CHECK(st && sd3_st_count(st) == 1 && !strcmp(sd3_st_metadata(st, "k"), "v"));
    sd3_tensor_t v;
    CHECK(st && sd3_st_get(st, "m", &v, &err) == 0 && !memcmp(v.data, x, 16));
    sd3_st_destroy(&st);

    // a missing file
    sd3_err_clear(&err);
    snprintf(path, sizeof path, "%s/absent.safetensors", s_dir);
    CHECK(sd3_st_open(path, &err) == NULL && err.code == SD3_ENOTFOUND);
}

int
main(void)
{
    snprintf(s_dir, sizeof s_dir, "%s", sd3_test_tmpdir());
    snprintf(s_good, sizeof s_good, "%s/good.safetensors", s_dir);
    s_write_good();
    s_test_roundtrip();
    s_test_corruptions();
    s_test_writer_misuse();
    for (size_t i = 0; i < N_SPECS; i++)
        free(s_specs[i].data);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", s_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", s_dir);
    return TEST_RESULT();
}
