/*  test_hostile_encoder - text-encoder checkpoints whose shapes would drive huge allocations
 *
 *  A T5 checkpoint is configured from its shapes: the heads are the columns of the relative
 *  attention bias table, and every encode builds an [H, N, N] f32 position bias on the host.
 *  A 40 KB file with a [4, 10000] bias table used to pass sd3_t5_config_detect, so one
 *  encode of 1024 tokens would have asked for 40 GB. Now the detect refuses more than
 *  SD3_T5_MAX_HEADS heads with SD3_EFORMAT, and the same file with 64 heads still passes
 *  (so the cap, not another check, is what refuses it).  */
#include "sd3_safetensors.h"
#include "sd3_t5.h"
#include "sd3_test.h"
#include "sd3_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Writes a minimal T5 (d_model 1, one block, 4 buckets, `heads` heads of d_kv 1) to path.
static int
s_write_t5(const char *path, int64_t heads, sd3_err_t *err)
{
    static const char *names[] = {
        "encoder.embed_tokens.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "encoder.block.0.layer.0.SelfAttention.q.weight",
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
    };
    const int64_t shapes[4][2] = {{8, 1}, {4, heads}, {heads, 1}, {4, 1}};
    sd3_tensor_t *t[4] = {0};
    int rc = 0;
    for (int i = 0; i < 4 && rc == 0; i++) {
        if (!(t[i] = sd3_tensor_new_err(SD3_F32, 2, shapes[i], names[i], err)))
            rc = err->code;
        else
            t[i]->name = names[i];
    }
    if (rc == 0)
        rc = sd3_st_write_tensors(path, (const sd3_tensor_t *const *)t, 4, NULL, 0, err);
    for (int i = 0; i < 4; i++)
        sd3_tensor_destroy(&t[i]);
    return rc;
}

static void
s_t5_heads(int64_t heads, bool want_ok)
{
    char path[512];
    sd3_err_t err = {0};
    snprintf(path, sizeof path, "%s/t5_%lld.safetensors", sd3_test_tmpdir(), (long long)heads);
    CHECK(s_write_t5(path, heads, &err) == 0);
    sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_T5, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (!w)
        return;
    sd3_t5_config_t cfg;
    int rc = sd3_t5_config_detect(w, NULL, &cfg, &err);
    if (want_ok) {
        CHECK_MSG(rc == 0 && cfg.n_heads == heads && cfg.d_kv == 1, "%lld heads: rc %d %s",
                  (long long)heads, rc, err.msg);
    } else {
        CHECK_MSG(rc == SD3_EFORMAT, "%lld heads: rc %d, want SD3_EFORMAT", (long long)heads, rc);
        CHECK_MSG(strstr(err.msg, "heads") != NULL, "message: %s", err.msg);
    }
    sd3_weights_destroy(&w);
}

int
main(void)
{
    s_t5_heads(64, true);
    s_t5_heads(SD3_T5_MAX_HEADS, true);
    s_t5_heads(SD3_T5_MAX_HEADS + 1, false);
    s_t5_heads(10000, false);
    return TEST_RESULT();
}
