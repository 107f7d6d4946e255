/*  sd3_wire_bad - malformed messages for tests (see sd3_wire_bad.h)  */
#include "sd3_wire_bad.h"

#include "sd3.pb-c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>
#include <zstd.h>

enum {
    K_EMPTY_ENVELOPE,
    K_GARBAGE_ENVELOPE,
    K_TRUNCATED_ENVELOPE,
    K_OVERSIZED_ENVELOPE,
    K_WRONG_VERSION,
    K_NO_VERSION,
    K_UNKNOWN_TYPE,
    K_UNSPECIFIED_TYPE,
    K_UNKNOWN_STATUS,
    K_ERROR_STATUS_OK,
    K_LONG_REQUEST_ID,
    K_MISSING_FRAME,
    K_EXTRA_FRAME,
    K_TOO_MANY_FRAMES,
    K_TOO_MANY_DESCRIPTORS,
    K_TRUNCATED_FRAME,
    K_WIRE_BYTES_LIE,
    K_RAW_BYTES_LIE,
    K_SHAPE_LIE,
    K_NEGATIVE_DIM,
    K_FIVE_DIMS,
    K_SIZE_OVERFLOW,
    K_OVER_CAP,
    K_UNKNOWN_DTYPE,
    K_UNKNOWN_CODEC,
    K_BAD_WIRE_DTYPE,
    K_ZSTD_BOMB,
    K_ZSTD_NO_CONTENT_SIZE,
    K_ZSTD_TRAILING,
    K_ZSTD_CORRUPT,
    K_CHECKSUM,
    K_RAW_IS_ZSTD,
    K_DUPLICATE_NAME,
    K_LONG_NAME,
    K_STAGE_SHAPE,
    K_STAGE_DTYPE,
    K_STAGE_MISSING,
    K_GENERATE_NO_BODY,
    K_GENERATE_LONG_PROMPT,
    K_GENERATE_NAN_CFG,
    K_GENERATE_HUGE_SIZE,
    K_JOB_TOO_MANY_SIGMAS,
    K_REGISTER_BAD_ROLE,
    K_COUNT
};

static const struct {
    const char *name;
    const char *expect;
    bool stage;
} s_kinds[K_COUNT] = {
    [K_EMPTY_ENVELOPE] = {"empty envelope frame", "protocol version 0", false},
    [K_GARBAGE_ENVELOPE] = {"garbage envelope", "not an sd3 Envelope", false},
    [K_TRUNCATED_ENVELOPE] = {"truncated envelope", "not an sd3 Envelope", false},
    [K_OVERSIZED_ENVELOPE] = {"oversized envelope", "envelope has", false},
    [K_WRONG_VERSION] = {"protocol version 2", "protocol version 2", false},
    [K_NO_VERSION] = {"no protocol version", "protocol version 0", false},
    [K_UNKNOWN_TYPE] = {"unknown message type", "unknown message type 999", false},
    [K_UNSPECIFIED_TYPE] = {"message type 0", "unknown message type 0", false},
    [K_UNKNOWN_STATUS] = {"unknown status", "unknown status 77", false},
    [K_ERROR_STATUS_OK] = {"ERROR with status OK", "ERROR with status OK", false},
    [K_LONG_REQUEST_ID] = {"request id too long", "request id has 200 bytes", false},
    [K_MISSING_FRAME] = {"missing tensor frame", "2 tensor frames, the envelope describes 3",
                         false},
    [K_EXTRA_FRAME] = {"extra tensor frame", "4 tensor frames, the envelope describes 3", false},
    [K_TOO_MANY_FRAMES] = {"40 tensor frames", "at most 16", false},
    [K_TOO_MANY_DESCRIPTORS] = {"17 descriptors", "17 tensors, at most 16", false},
    [K_TRUNCATED_FRAME] = {"truncated tensor frame", "frame has", false},
    [K_WIRE_BYTES_LIE] = {"wire_bytes lie", "frame has", false},
    [K_RAW_BYTES_LIE] = {"raw_bytes lie", "raw bytes", false},
    [K_SHAPE_LIE] = {"shape disagrees with sizes", "raw bytes", false},
    [K_NEGATIVE_DIM] = {"negative dim", "negative dim", false},
    [K_FIVE_DIMS] = {"5 dims", "5 dims, at most 4", false},
    [K_SIZE_OVERFLOW] = {"size overflow", "overflows", false},
    [K_OVER_CAP] = {"declared size over the cap", "exceeds the cap", false},
    [K_UNKNOWN_DTYPE] = {"unknown dtype", "unknown dtype 99", false},
    [K_UNKNOWN_CODEC] = {"unknown codec", "unknown codec 9", false},
    [K_BAD_WIRE_DTYPE] = {"wire dtype I32 for F32", "wire dtype I32 cannot carry F32", false},
    [K_ZSTD_BOMB] = {"zstd bomb", "zstd frame holds", false},
    [K_ZSTD_NO_CONTENT_SIZE] = {"zstd without content size", "without a content size", false},
    [K_ZSTD_TRAILING] = {"bytes after the zstd frame", "after the zstd frame", false},
    [K_ZSTD_CORRUPT] = {"corrupt zstd data", "tensor 'ctx'", false},
    [K_CHECKSUM] = {"checksum mismatch", "checksum", false},
    [K_RAW_IS_ZSTD] = {"zstd frame declared raw", "raw frame has", false},
    [K_DUPLICATE_NAME] = {"duplicate tensor name", "two tensors named 'x'", false},
    [K_LONG_NAME] = {"tensor name too long", "tensor name has 100 bytes", false},
    [K_STAGE_SHAPE] = {"wrong shape for the stage", "want F32 [2,16,24]", true},
    [K_STAGE_DTYPE] = {"wrong dtype for the stage", "is F16", true},
    [K_STAGE_MISSING] = {"tensor missing for the stage", "no tensor 'c'", true},
    [K_GENERATE_NO_BODY] = {"GENERATE without body", "needs a GenerateRequest body", false},
    [K_GENERATE_LONG_PROMPT] = {"prompt too long", "prompt has 9000 bytes", false},
    [K_GENERATE_NAN_CFG] = {"NaN cfg", "cfg is not a finite number", false},
    [K_GENERATE_HUGE_SIZE] = {"width 100000", "at most 16384 per side", false},
    [K_JOB_TOO_MANY_SIGMAS] = {"2000 sigmas", "2000 sigmas, at most 1001", false},
    [K_REGISTER_BAD_ROLE] = {"unknown role", "unknown role 42", false},
};

static const char *const s_step_names[3] = {"x", "ctx", "c"};
static const int s_step_ndims[3] = {3, 3, 2};
static const int64_t s_step_shapes[3][SD3_MAX_DIM] = {{2, 16, 24}, {2, 8, 24}, {2, 24}};

int
sd3_wire_bad_count(void)
{
    return K_COUNT;
}

const char *
sd3_wire_bad_name(int kind)
{
    return kind >= 0 && kind < K_COUNT ? s_kinds[kind].name : "?";
}

const char *
sd3_wire_bad_expect(int kind)
{
    return kind >= 0 && kind < K_COUNT ? s_kinds[kind].expect : "?";
}

bool
sd3_wire_bad_is_stage_check(int kind)
{
    return kind >= 0 && kind < K_COUNT && s_kinds[kind].stage;
}

void
sd3_wire_bad_step_shapes(const char *const **names, const int **ndims,
                         const int64_t (**shapes)[SD3_MAX_DIM], int *n)
{
    *names = s_step_names;
    *ndims = s_step_ndims;
    *shapes = s_step_shapes;
    *n = 3;
}

int
sd3_wire_bad_check_step(const sd3_msg_t *msg, sd3_err_t *err)
{
    for (int i = 0; i < 3; i++) {
        int rc =
            sd3_msg_expect(msg, s_step_names[i], SD3_F32, s_step_ndims[i], s_step_shapes[i], err);
        if (rc)
            return rc;
    }
    return 0;
}

void
sd3_wire_bad_fini(sd3_wire_bad_msg_t *msg)
{
    for (int i = 0; i < msg->n; i++)
        if (msg->frames[i].free_fn)
            msg->frames[i].free_fn(msg->frames[i].data, msg->frames[i].hint);
    memset(msg, 0, sizeof *msg);
}

static void
s_free(void *data, void *hint)
{
    (void)hint;
    free(data);
}

// Appends an owned copy of len bytes.
static int
s_push(sd3_wire_bad_msg_t *m, const void *data, size_t len, sd3_err_t *err)
{
    if (m->n >= SD3_WIRE_BAD_MAX_FRAMES)
        return sd3_err_set(err, SD3_EINVAL, "bad message: more than %d frames",
                           SD3_WIRE_BAD_MAX_FRAMES);
    void *copy = malloc(len ? len : 1);
    if (!copy)
        return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
    if (len)
        memcpy(copy, data, len);
    m->frames[m->n++] = (sd3_wire_frame_t){copy, len, s_free, NULL};
    return 0;
}

static void
s_set_frame(sd3_wire_bad_msg_t *m, int i, void *data, size_t len)
{
    free(m->frames[i].data);
    m->frames[i] = (sd3_wire_frame_t){data, len, s_free, NULL};
}

// A message (taken) encoded the honest way, frames copied into out.
static int
s_from_msg(sd3_msg_t **msg_p, sd3_wire_bad_msg_t *out, sd3_err_t *err)
{
    sd3_wire_frames_t fr;
    int rc = sd3_wire_encode(msg_p, &fr, err);
    for (int i = 0; rc == 0 && i < fr.n; i++)
        rc = s_push(out, fr.frames[i].data, fr.frames[i].len, err);
    if (rc == 0)
        sd3_wire_frames_fini(&fr);
    return rc;
}

static int
s_base(sd3_msg_type_t type, const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err)
{
    static const sd3_codec_t codecs[3] = {SD3_CODEC_SHUFFLE_ZSTD, SD3_CODEC_ZSTD, SD3_CODEC_RAW};
    sd3_msg_t *msg = sd3_msg_new(type, request_id);
    memset(out, 0, sizeof *out);
    if (!msg)
        return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
    msg->step = 3;
    if (type == SD3_MSG_STEP) {
        uint32_t state = 12345;
        for (int i = 0; i < 3; i++) {
            sd3_tensor_t *t = sd3_tensor_new_err(SD3_F32, s_step_ndims[i], s_step_shapes[i],
                                                 s_step_names[i], err);
            if (!t)
                goto fail;
            float *p = t->data;
            for (int64_t k = 0; k < sd3_tensor_numel(t); k++) {
                state = state * 1664525u + 1013904223u;
                p[k] = (float)((int32_t)state >> 8) * 0x1p-21f; // about N(0,1)-sized values
            }
            sd3_codec_opts_t opts = {.codec = codecs[i]};
            if (sd3_msg_add_tensor(msg, &t, &opts, err)) {
                sd3_tensor_destroy(&t);
                goto fail;
            }
        }
    } else if (type == SD3_MSG_GENERATE) {
        msg->body_kind = SD3_WIRE_BODY_GENERATE;
        snprintf(msg->body.generate.prompt, sizeof msg->body.generate.prompt, "a red fox");
        msg->body.generate.width = msg->body.generate.height = 512;
        msg->body.generate.steps = 20;
        msg->body.generate.cfg = 4.5f;
    } else if (type == SD3_MSG_JOB) {
        msg->body_kind = SD3_WIRE_BODY_JOB;
        msg->body.job.n_stages = 2;
        msg->body.job.n_sigmas = 21;
    } else if (type == SD3_MSG_REGISTER) {
        msg->body_kind = SD3_WIRE_BODY_REGISTER;
        msg->body.reg.role = SD3_WIRE_ROLE_MMDIT;
        snprintf(msg->body.reg.node_id, sizeof msg->body.reg.node_id, "node-a");
    }
    return s_from_msg(&msg, out, err);
fail:
    sd3_msg_destroy(&msg);
    return err ? err->code : SD3_EINTERNAL;
}

int
sd3_wire_bad_good(const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err)
{
    return s_base(SD3_MSG_STEP, request_id, out, err);
}

static Sd3__Envelope *
s_unpack(const sd3_wire_bad_msg_t *m)
{
    return sd3__envelope__unpack(NULL, m->frames[0].len, m->frames[0].data);
}

// Repacks env into frame 0 and frees it (its fields must be malloc'd or its own).
static int
s_repack(sd3_wire_bad_msg_t *m, Sd3__Envelope *env, sd3_err_t *err)
{
    size_t len = sd3__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) {
        sd3__envelope__free_unpacked(env, NULL);
        return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
    }
    sd3__envelope__pack(env, buf);
    sd3__envelope__free_unpacked(env, NULL);
    s_set_frame(m, 0, buf, len);
    return 0;
}

static void
s_set_str(char **field, size_t len, char fill)
{
    char *s = malloc(len + 1);
    if (!s)
        return;
    memset(s, fill, len);
    s[len] = '\0';
    if (*field != protobuf_c_empty_string) // unpacked empty strings are a shared constant
        free(*field);
    *field = s;
}

static void *
s_zstd(const void *src, size_t len, bool content_size, size_t *out_len)
{
    size_t bound = ZSTD_compressBound(len);
    void *dst = malloc(bound);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    *out_len = 0;
    if (!dst || !cc) {
        free(dst);
        ZSTD_freeCCtx(cc);
        return NULL;
    }
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, content_size ? 1 : 0);
    ZSTD_outBuffer ob = {dst, bound, 0};
    ZSTD_inBuffer ib = {src, len, 0};
    size_t rc = ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end);
    ZSTD_freeCCtx(cc);
    if (ZSTD_isError(rc) || rc != 0) {
        free(dst);
        return NULL;
    }
    *out_len = ob.pos;
    return dst;
}

// Mutations of the base STEP that need the envelope edited.
static int
s_edit_envelope(int kind, sd3_wire_bad_msg_t *m, sd3_err_t *err)
{
    Sd3__Envelope *env = s_unpack(m);
    if (!env)
        return sd3_err_set(err, SD3_EINTERNAL, "bad message: own envelope does not parse");
    Sd3__TensorDesc *x = env->tensors[0], *ctx = env->tensors[1];
    switch (kind) {
    case K_WRONG_VERSION:
        env->protocol_version = 2;
        break;
    case K_NO_VERSION:
        env->protocol_version = 0;
        break;
    case K_UNKNOWN_TYPE:
        env->type = (Sd3__MsgType)999;
        break;
    case K_UNSPECIFIED_TYPE:
        env->type = SD3__MSG_TYPE__MSG_UNSPECIFIED;
        break;
    case K_UNKNOWN_STATUS:
        env->status = (Sd3__Status)77;
        break;
    case K_ERROR_STATUS_OK:
        env->type = SD3__MSG_TYPE__MSG_ERROR;
        break;
    case K_LONG_REQUEST_ID:
        s_set_str(&env->request_id, 200, 'r');
        break;
    case K_OVERSIZED_ENVELOPE:
        s_set_str(&env->message, (size_t)1 << 20, 'm');
        break;
    case K_WIRE_BYTES_LIE:
        x->wire_bytes += 100;
        break;
    case K_RAW_BYTES_LIE:
        x->raw_bytes += 4;
        break;
    case K_SHAPE_LIE:
        x->shape[1] = 17;
        break;
    case K_NEGATIVE_DIM:
        x->shape[1] = -16;
        x->shape[2] = -24;
        break;
    case K_FIVE_DIMS: {
        int64_t *s = malloc(5 * sizeof *s);
        if (s) {
            s[0] = 2, s[1] = 16, s[2] = 24, s[3] = 1, s[4] = 1;
            free(x->shape);
            x->shape = s;
            x->n_shape = 5;
        }
        break;
    }
    case K_SIZE_OVERFLOW:
        x->shape[0] = INT64_MAX / 4;
        x->shape[1] = 1 << 20;
        break;
    case K_OVER_CAP: // 4 TiB declared, consistent with raw_bytes; only the cap stops it
        x->shape[0] = 1 << 20, x->shape[1] = 1 << 10, x->shape[2] = 1 << 10;
        x->raw_bytes = (uint64_t)4 << 40;
        break;
    case K_UNKNOWN_DTYPE:
        x->dtype = (Sd3__DType)99;
        break;
    case K_UNKNOWN_CODEC:
        x->codec = (Sd3__Codec)9;
        break;
    case K_BAD_WIRE_DTYPE:
        x->wire_dtype = SD3__DTYPE__DTYPE_I32;
        break;
    case K_CHECKSUM:
        ctx->checksum ^= 0x10;
        break;
    case K_DUPLICATE_NAME:
        s_set_str(&ctx->name, 1, 'x');
        break;
    case K_LONG_NAME:
        s_set_str(&ctx->name, 100, 'n');
        break;
    default:
        break;
    }
    return s_repack(m, env, err);
}

// Every kind but the few that replace a frame or rebuild tensors (see sd3_wire_bad_build).
static int
s_build_edit(int kind, const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err)
{
    int rc = 0;
    memset(out, 0, sizeof *out);
    switch (kind) {
    case K_EMPTY_ENVELOPE:
        return s_push(out, "", 0, err);
    case K_GARBAGE_ENVELOPE: {
        uint8_t junk[64];
        for (int i = 0; i < 64; i++)
            junk[i] = (uint8_t)(0xff - i * 7); // invalid wire types and over-long varints
        return s_push(out, junk, sizeof junk, err);
    }
    case K_GENERATE_NO_BODY:
    case K_GENERATE_LONG_PROMPT:
    case K_GENERATE_NAN_CFG:
    case K_GENERATE_HUGE_SIZE: {
        if ((rc = s_base(SD3_MSG_GENERATE, request_id, out, err)) != 0)
            return rc;
        Sd3__Envelope *env = s_unpack(out);
        if (!env)
            return sd3_err_set(err, SD3_EINTERNAL, "bad message: own envelope does not parse");
        Sd3__GenerateRequest *g = env->generate;
        if (kind == K_GENERATE_NO_BODY) {
            sd3__generate_request__free_unpacked(g, NULL);
            env->generate = NULL;
            env->body_case = SD3__ENVELOPE__BODY__NOT_SET;
        } else if (kind == K_GENERATE_LONG_PROMPT) {
            s_set_str(&g->prompt, 9000, 'p');
        } else if (kind == K_GENERATE_NAN_CFG) {
            g->cfg = NAN;
        } else {
            g->width = 100000;
        }
        return s_repack(out, env, err);
    }
    case K_JOB_TOO_MANY_SIGMAS:
    case K_REGISTER_BAD_ROLE: {
        bool job = kind == K_JOB_TOO_MANY_SIGMAS;
        if ((rc = s_base(job ? SD3_MSG_JOB : SD3_MSG_REGISTER, request_id, out, err)) != 0)
            return rc;
        Sd3__Envelope *env = s_unpack(out);
        if (!env)
            return sd3_err_set(err, SD3_EINTERNAL, "bad message: own envelope does not parse");
        if (job) {
            float *s = calloc(2000, sizeof *s);
            if (s) {
                free(env->job->sigmas);
                env->job->sigmas = s;
                env->job->n_sigmas = 2000;
            }
        } else {
            env->register_->role = (Sd3__Role)42;
        }
        return s_repack(out, env, err);
    }
    case K_TOO_MANY_DESCRIPTORS: {
        // 17 copies of one descriptor, packed by hand, and one frame.
        Sd3__TensorDesc d = SD3__TENSOR_DESC__INIT, *dp[17];
        Sd3__Envelope env = SD3__ENVELOPE__INIT;
        float one = 1.0f;
        int64_t shape = 1;
        d.name = (char *)"t";
        d.dtype = d.wire_dtype = SD3__DTYPE__DTYPE_F32;
        d.n_shape = 1;
        d.shape = &shape;
        d.raw_bytes = d.wire_bytes = 4;
        for (int i = 0; i < 17; i++)
            dp[i] = &d;
        env.protocol_version = SD3_WIRE_VERSION;
        env.type = SD3__MSG_TYPE__MSG_STEP;
        env.request_id = (char *)(request_id ? request_id : "");
        env.n_tensors = 17;
        env.tensors = dp;
        size_t len = sd3__envelope__get_packed_size(&env);
        uint8_t *buf = malloc(len);
        if (!buf)
            return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
        sd3__envelope__pack(&env, buf);
        rc = s_push(out, buf, len, err);
        free(buf);
        for (int i = 0; rc == 0 && i < 1; i++) // the frame count check is not what fails
            rc = s_push(out, &one, 4, err);
        return rc;
    }
    case K_STAGE_DTYPE: {
        // A valid STEP whose "x" is F16: the wire takes it, the stage must not.
        sd3_msg_t *msg = sd3_msg_new(SD3_MSG_STEP, request_id);
        if (!msg)
            return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
        msg->step = 3;
        for (int i = 0; i < 3; i++) {
            sd3_tensor_t *t = sd3_tensor_new_err(i == 0 ? SD3_F16 : SD3_F32, s_step_ndims[i],
                                                 s_step_shapes[i], s_step_names[i], err);
            if (!t || sd3_msg_add_tensor(msg, &t, NULL, err)) {
                sd3_tensor_destroy(&t);
                sd3_msg_destroy(&msg);
                return err ? err->code : SD3_ENOMEM;
            }
        }
        return s_from_msg(&msg, out, err);
    }
    default:
        break;
    }

    if ((rc = s_base(SD3_MSG_STEP, request_id, out, err)) != 0)
        return rc;
    // frames: 0 envelope, 1 "x" (shuffle+zstd), 2 "ctx" (zstd), 3 "c" (raw)
    sd3_wire_frame_t *fx = &out->frames[1], *fctx = &out->frames[2];
    switch (kind) {
    case K_TRUNCATED_ENVELOPE:
        out->frames[0].len -= 3;
        return 0;
    case K_MISSING_FRAME:
        free(out->frames[3].data);
        out->n = 3;
        return 0;
    case K_EXTRA_FRAME:
        return s_push(out, "extra", 5, err);
    case K_TOO_MANY_FRAMES:
        while (out->n < 41 && rc == 0)
            rc = s_push(out, "f", 1, err);
        return rc;
    case K_TRUNCATED_FRAME:
        fx->len -= 1;
        return 0;
    case K_ZSTD_CORRUPT:
        // Scribble over the middle of the compressed block: zstd or the checksum objects.
        for (size_t i = fctx->len / 3; i < fctx->len / 3 + 8 && i < fctx->len; i++)
            ((uint8_t *)fctx->data)[i] ^= 0xa5;
        return 0;
    case K_STAGE_MISSING:
        break; // below
    default:
        return s_edit_envelope(kind, out, err);
    }
    if (kind == K_STAGE_MISSING) {
        // Drop "c" cleanly: its descriptor and its frame.
        Sd3__Envelope *env = s_unpack(out);
        if (!env)
            return sd3_err_set(err, SD3_EINTERNAL, "bad message: own envelope does not parse");
        sd3__tensor_desc__free_unpacked(env->tensors[2], NULL);
        env->n_tensors = 2;
        free(out->frames[3].data);
        out->n = 3;
        return s_repack(out, env, err);
    }
    return 0;
}

// ZSTD-level kinds that replace "ctx"'s frame and fix its descriptor to match the frame,
// so only the zstd content is wrong. Done after the generic build (needs both).
static int
s_replace_ctx(int kind, sd3_wire_bad_msg_t *m, sd3_err_t *err)
{
    Sd3__Envelope *env = s_unpack(m);
    if (!env)
        return sd3_err_set(err, SD3_EINTERNAL, "bad message: own envelope does not parse");
    Sd3__TensorDesc *ctx = env->tensors[1];
    void *frame = NULL;
    size_t len = 0;
    if (kind == K_ZSTD_BOMB) {
        // 64 MiB of zeros in a few KiB; the descriptor still says [2,8,24] F32.
        size_t big = (size_t)64 << 20;
        void *zeros = calloc(1, big);
        frame = zeros ? s_zstd(zeros, big, true, &len) : NULL;
        free(zeros);
    } else if (kind == K_ZSTD_NO_CONTENT_SIZE || kind == K_ZSTD_TRAILING || kind == K_RAW_IS_ZSTD) {
        float vals[2 * 8 * 24];
        for (int i = 0; i < 2 * 8 * 24; i++)
            vals[i] = (float)i;
        frame = s_zstd(vals, sizeof vals, kind != K_ZSTD_NO_CONTENT_SIZE, &len);
        if (frame && kind == K_ZSTD_TRAILING) {
            void *longer = realloc(frame, len + 7);
            if (longer) {
                memcpy((uint8_t *)longer + len, "trailer", 7);
                frame = longer;
                len += 7;
            }
        }
        if (kind == K_RAW_IS_ZSTD)
            ctx->codec = SD3__CODEC__CODEC_RAW;
    }
    if (!frame) {
        sd3__envelope__free_unpacked(env, NULL);
        return sd3_err_set(err, SD3_ENOMEM, "bad message: zstd frame not built");
    }
    ctx->wire_bytes = len;
    s_set_frame(m, 2, frame, len);
    return s_repack(m, env, err);
}

int
sd3_wire_bad_build(int kind, const char *request_id, sd3_wire_bad_msg_t *out, sd3_err_t *err)
{
    memset(out, 0, sizeof *out);
    if (kind < 0 || kind >= K_COUNT)
        return sd3_err_set(err, SD3_EINVAL, "bad message kind %d of %d", kind, K_COUNT);
    if (kind == K_ZSTD_BOMB || kind == K_ZSTD_NO_CONTENT_SIZE || kind == K_ZSTD_TRAILING ||
        kind == K_RAW_IS_ZSTD) {
        int rc = s_base(SD3_MSG_STEP, request_id, out, err);
        return rc ? rc : s_replace_ctx(kind, out, err);
    }
    if (kind == K_STAGE_SHAPE) {
        // "x" as [2,16,23]: an honest message of the wrong shape.
        sd3_msg_t *msg = sd3_msg_new(SD3_MSG_STEP, request_id);
        if (!msg)
            return sd3_err_set(err, SD3_ENOMEM, "bad message: out of memory");
        msg->step = 3;
        for (int i = 0; i < 3; i++) {
            int64_t shape[SD3_MAX_DIM];
            memcpy(shape, s_step_shapes[i], sizeof shape);
            if (i == 0)
                shape[2] = 23;
            sd3_tensor_t *t =
                sd3_tensor_new_err(SD3_F32, s_step_ndims[i], shape, s_step_names[i], err);
            if (!t || sd3_msg_add_tensor(msg, &t, NULL, err)) {
                sd3_tensor_destroy(&t);
                sd3_msg_destroy(&msg);
                return err ? err->code : SD3_ENOMEM;
            }
        }
        return s_from_msg(&msg, out, err);
    }
    return s_build_edit(kind, request_id, out, err);
}

int
sd3_wire_bad_send(void *sock, const sd3_wire_bad_msg_t *msg, const void *routing_id,
                  size_t routing_id_len, sd3_err_t *err)
{
    if (routing_id_len && zmq_send(sock, routing_id, routing_id_len, ZMQ_SNDMORE) < 0)
        return sd3_err_set(err, SD3_EIO, "bad message: send: %s", zmq_strerror(zmq_errno()));
    for (int i = 0; i < msg->n; i++)
        if (zmq_send(sock, msg->frames[i].data, msg->frames[i].len,
                     i + 1 < msg->n ? ZMQ_SNDMORE : 0) < 0)
            return sd3_err_set(err, SD3_EIO, "bad message: send: %s", zmq_strerror(zmq_errno()));
    return 0;
}
