/*  test_codec - sd3_codec: every codec x transfer dtype round trip, the error bf16/f16 add,
 *  shuffle's gain, and descriptors/frames that lie.
 *
 *  The data looks like MMDiT activations: N(0, 1) with 0.1% outliers of magnitude 50..800
 *  (the massive-activation channels of DiTs), and a few exact zeros and tiny values so f16
 *  subnormals are exercised. Prints the measured error and ratios (ARCHITECTURE.md quotes
 *  them).  */
#include "sd3_codec.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static float
s_gauss(unsigned long long *state)
{
    float u1 = 0.5f * (sd3_test_randf(state) + 1.0f), u2 = sd3_test_randf(state);
    if (u1 < 1e-12f)
        u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(3.14159265f * u2);
}

static void
s_fill_activations(float *x, size_t n, unsigned long long seed)
{
    unsigned long long st = seed;
    for (size_t i = 0; i < n; i++) {
        float v = s_gauss(&st);
        float r = 0.5f * (sd3_test_randf(&st) + 1.0f);
        if (r < 0.001f)
            v *= 50.0f + 750.0f * (r * 1000.0f); // outlier 50..800 times
        else if (r < 0.0015f)
            v = 0.0f;
        else if (r < 0.002f)
            v *= 1e-6f; // f16 subnormal territory
        x[i] = v;
    }
}

static sd3_tensor_t *
s_activation(int64_t b, int64_t n, int64_t c, unsigned long long seed)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 3, (int64_t[]){b, n, c});
    if (t) {
        s_fill_activations(t->data, (size_t)(b * n * c), seed);
        t->name = "x";
    }
    return t;
}

// Round trip one tensor; returns the decoded tensor (or NULL) and the frame length.
static sd3_tensor_t *
s_round_trip(const sd3_tensor_t *t, sd3_codec_t codec, sd3_dtype_t wire, size_t *frame_len)
{
    sd3_codec_opts_t opts = {.codec = codec, .wire_dtype = wire};
    sd3_codec_desc_t desc;
    sd3_err_t err = {0};
    void *frame = NULL;
    sd3_tensor_t *back = NULL;
    int rc = sd3_codec_encode(t, &opts, true, &desc, &frame, frame_len, &err);
    CHECK_MSG(rc == 0, "encode %s/%s: %s", sd3_codec_name(codec), sd3_dtype_name(wire), err.msg);
    if (rc)
        return NULL;
    CHECK(desc.wire_bytes == *frame_len);
    rc = sd3_codec_decode(&desc, frame, *frame_len, 0, &back, &err);
    CHECK_MSG(rc == 0, "decode %s/%s: %s", sd3_codec_name(codec), sd3_dtype_name(wire), err.msg);
    free(frame);
    return back;
}

static void
test_round_trips(void)
{
    sd3_tensor_t *t = s_activation(2, 256, 2432, 42); // [B, N, C] = 1.2 M floats
    size_t n = (size_t)sd3_tensor_numel(t), raw = n * 4;
    const sd3_dtype_t wires[] = {SD3_F32, SD3_BF16, SD3_F16};
    size_t len[3][SD3_CODEC_COUNT];
    for (int w = 0; w < 3; w++)
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_tensor_t *back = s_round_trip(t, (sd3_codec_t)c, wires[w], &len[w][c]);
            if (!back)
                continue;
            CHECK(back->dtype == SD3_F32 && back->ndim == 3 && back->shape[2] == 2432);
            CHECK(back->name && !strcmp(back->name, "x"));
            const float *a = t->data, *b = back->data;
            if (wires[w] == SD3_F32) {
                CHECK_MSG(!memcmp(a, b, raw), "f32 %s not bit exact", sd3_codec_name(c));
            } else {
                // RNE to 8 (bf16) or 11 (f16) significant bits: relative error <= 2^-8 / 2^-11
                // on normal numbers; f16 subnormals (|x| < 2^-14) err by <= 2^-25 absolute.
                double max_abs = 0, max_rel = 0, sum_sq = 0;
                double rel_bound = wires[w] == SD3_BF16 ? 0x1p-8 : 0x1p-11;
                bool bounded = true;
                for (size_t i = 0; i < n; i++) {
                    double d = fabs((double)a[i] - (double)b[i]);
                    double rel = a[i] != 0 ? d / fabs((double)a[i]) : (d == 0 ? 0 : INFINITY);
                    bool sub = wires[w] == SD3_F16 && fabs((double)a[i]) < 0x1p-14;
                    if (sub ? d > 0x1p-25 : rel > rel_bound)
                        bounded = false;
                    if (!sub && rel > max_rel)
                        max_rel = rel;
                    if (d > max_abs)
                        max_abs = d;
                    sum_sq += d * d;
                }
                CHECK_MSG(bounded, "%s error past its rounding bound", sd3_dtype_name(wires[w]));
                CHECK_MSG(len[w][SD3_CODEC_RAW] == raw / 2, "%s frame %zu bytes",
                          sd3_dtype_name(wires[w]), len[w][SD3_CODEC_RAW]);
                if (c == SD3_CODEC_RAW)
                    printf("transfer %-4s: max_abs=%.3g max_rel=%.3g (bound %.3g) rms=%.3g\n",
                           sd3_dtype_name(wires[w]), max_abs, max_rel, rel_bound,
                           sqrt(sum_sq / (double)n));
            }
            sd3_tensor_destroy(&back);
        }
    for (int w = 0; w < 3; w++) {
        size_t wraw = len[w][SD3_CODEC_RAW];
        printf("ratio %-4s: zstd %.3f  shuffle+zstd %.3f  (of %zu bytes)\n",
               sd3_dtype_name(wires[w]), (double)wraw / (double)len[w][SD3_CODEC_ZSTD],
               (double)wraw / (double)len[w][SD3_CODEC_SHUFFLE_ZSTD], wraw);
        // The exponent bytes of Gaussian floats are highly repetitive: grouping them must
        // beat plain zstd on every float transfer dtype.
        CHECK_MSG(len[w][SD3_CODEC_SHUFFLE_ZSTD] < len[w][SD3_CODEC_ZSTD],
                  "shuffle+zstd %zu >= zstd %zu", len[w][SD3_CODEC_SHUFFLE_ZSTD],
                  len[w][SD3_CODEC_ZSTD]);
    }
    sd3_tensor_destroy(&t);
}

static void
test_other_dtypes(void)
{
    // Integer and non-F32 float tensors travel as they are, whatever wire_dtype asks for.
    const sd3_dtype_t dts[] = {SD3_I32, SD3_U8, SD3_BF16, SD3_I64, SD3_F16, SD3_F64};
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
        for (int c = 0; c < SD3_CODEC_COUNT; c++) {
            sd3_tensor_t *t = sd3_tensor_new(dts[d], 2, (int64_t[]){3, 77});
            uint8_t *p = t->data;
            for (size_t i = 0; i < sd3_tensor_nbytes(t); i++)
                p[i] = (uint8_t)(i * 131 + (i >> 3));
            size_t len;
            sd3_tensor_t *back = s_round_trip(t, (sd3_codec_t)c, SD3_BF16, &len);
            CHECK(back && back->dtype == dts[d]);
            CHECK(back && !memcmp(back->data, t->data, sd3_tensor_nbytes(t)));
            sd3_tensor_destroy(&back);
            sd3_tensor_destroy(&t);
        }
    // Scalars and empty tensors.
    sd3_tensor_t *s = sd3_tensor_new(SD3_F32, 0, NULL),
                 *e = sd3_tensor_new(SD3_F32, 2, (int64_t[]){0, 5});
    *(float *)s->data = 3.25f;
    for (int c = 0; c < SD3_CODEC_COUNT; c++) {
        size_t len;
        sd3_tensor_t *b1 = s_round_trip(s, (sd3_codec_t)c, SD3_F32, &len);
        sd3_tensor_t *b2 = s_round_trip(e, (sd3_codec_t)c, SD3_F16, &len);
        CHECK(b1 && b1->ndim == 0 && *(float *)b1->data == 3.25f);
        CHECK(b2 && b2->ndim == 2 && b2->shape[0] == 0 && b2->shape[1] == 5);
        sd3_tensor_destroy(&b1);
        sd3_tensor_destroy(&b2);
    }
    sd3_tensor_destroy(&s);
    sd3_tensor_destroy(&e);
}

// The no-copy path: a raw frame of the tensor's own bytes is the tensor's memory.
static void
test_borrowed_frame(void)
{
    sd3_tensor_t *t = s_activation(1, 4, 8, 7);
    sd3_codec_desc_t desc;
    void *frame;
    size_t len;
    sd3_err_t err = {0};
    CHECK(sd3_codec_encode(t, NULL, false, &desc, &frame, &len, &err) == 0);
    CHECK(frame == t->data && len == 128 && desc.codec == SD3_CODEC_RAW);
    sd3_codec_opts_t bf = {.wire_dtype = SD3_BF16};
    CHECK(sd3_codec_encode(t, &bf, false, &desc, &frame, &len, &err) == 0);
    CHECK(frame != t->data && len == 64);
    free(frame);
    sd3_tensor_destroy(&t);
}

static void
s_expect_proto(const sd3_codec_desc_t *desc, const void *frame, size_t len, size_t cap,
               const char *what, const char *needle)
{
    sd3_err_t err = {0};
    sd3_tensor_t *t = NULL;
    int rc = sd3_codec_decode(desc, frame, len, cap, &t, &err);
    CHECK_MSG(rc == SD3_EPROTO && !t, "%s: rc %d", what, rc);
    CHECK_MSG(strstr(err.msg, needle), "%s: message '%s' lacks '%s'", what, err.msg, needle);
    printf("rejected %-22s %s\n", what, err.msg);
    sd3_tensor_destroy(&t);
}

static void
test_lies(void)
{
    sd3_tensor_t *t = s_activation(1, 64, 64, 3);
    sd3_codec_opts_t zo = {.codec = SD3_CODEC_SHUFFLE_ZSTD};
    sd3_codec_desc_t good, d;
    void *frame;
    size_t len;
    sd3_err_t err = {0};
    CHECK(sd3_codec_encode(t, &zo, true, &good, &frame, &len, &err) == 0);
    uint8_t *f = frame;

    d = good, d.raw_bytes += 4;
    s_expect_proto(&d, f, len, 0, "raw_bytes lie", "raw bytes");
    d = good, d.shape[2] = 65;
    s_expect_proto(&d, f, len, 0, "shape lie", "raw bytes");
    d = good, d.shape[1] = -64, d.shape[2] = -64;
    s_expect_proto(&d, f, len, 0, "negative dims", "negative");
    d = good, d.ndim = 5;
    s_expect_proto(&d, f, len, 0, "5 dims", "dims");
    d = good, d.shape[0] = INT64_MAX / 2, d.shape[1] = 1 << 20;
    s_expect_proto(&d, f, len, 0, "overflow", "overflows");
    d = good;
    s_expect_proto(&d, f, len, 4096, "over cap", "cap");
    d = good, d.wire_bytes = len - 1;
    s_expect_proto(&d, f, len, 0, "wire_bytes lie", "frame has");
    d = good, d.checksum ^= 1;
    s_expect_proto(&d, f, len, 0, "checksum", "checksum");
    d = good, d.codec = (sd3_codec_t)7;
    s_expect_proto(&d, f, len, 0, "codec 7", "codec");
    d = good, d.dtype = (sd3_dtype_t)99;
    s_expect_proto(&d, f, len, 0, "dtype 99", "dtype");
    d = good, d.wire_dtype = SD3_I32;
    s_expect_proto(&d, f, len, 0, "wire dtype I32", "wire dtype");
    d = good, d.codec = SD3_CODEC_ZSTD; // a shuffled frame decoded as plain: checksum fails
    s_expect_proto(&d, f, len, 0, "codec swapped", "checksum");
    d = good, d.codec = SD3_CODEC_RAW;
    s_expect_proto(&d, f, len, 0, "zstd as raw", "raw frame");
    f[len / 2] ^= 0x55;
    d = good;
    s_expect_proto(&d, f, len, 0, "flipped byte", "tensor 'x'");
    free(frame);

    // A bomb: 64 MiB of zeros in a few KiB, declared as a 16 KiB tensor.
    size_t big = (size_t)64 << 20;
    void *zeros = calloc(1, big);
    size_t bound = ZSTD_compressBound(big);
    void *bomb = malloc(bound);
    size_t blen = ZSTD_compress(bomb, bound, zeros, big, 1);
    d = good, d.codec = SD3_CODEC_ZSTD, d.wire_bytes = blen;
    s_expect_proto(&d, bomb, blen, 0, "zstd bomb", "zstd frame holds");
    // The same bomb streamed (no content size in the header).
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_outBuffer ob = {bomb, bound, 0};
    ZSTD_inBuffer ib = {zeros, big, 0};
    ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
    ZSTD_freeCCtx(cc);
    d.wire_bytes = ob.pos;
    s_expect_proto(&d, bomb, ob.pos, 0, "bomb, no content size", "content size");
    free(bomb);
    free(zeros);
    sd3_tensor_destroy(&t);
}

int
main(void)
{
    test_round_trips();
    test_other_dtypes();
    test_borrowed_frame();
    test_lies();
    return TEST_RESULT();
}
