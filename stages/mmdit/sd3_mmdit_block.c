/*  sd3_mmdit_block - one joint block of the MMDiT (MODEL.md §4.5-4.7)
 *
 *  Both streams are modulated from c, attend jointly over [ctx ; x] (context first), then
 *  each gets its gated projection and gated MLP. The last context block is pre-only (it
 *  only contributes keys and values), and SD3.5-medium x blocks 0..12 add a second
 *  self-attention over the image tokens (MMDiT-X). Everything runs through the backend's
 *  op table on the scratch of sd3_mmdit_ws_t.  */
#include "sd3_mmdit_impl.h"

#include <stdio.h>

#define S_LN_EPS 1e-6f
#define S_QK_EPS 1e-6f

// adaLN chunk indices (MODEL.md §4.5)
enum {
    S_SHIFT_MSA = 0,
    S_SCALE_MSA,
    S_GATE_MSA,
    S_SHIFT_MLP,
    S_SCALE_MLP,
    S_GATE_MLP,
    S_SHIFT_MSA2,
    S_SCALE_MSA2,
    S_GATE_MSA2
};

static int
s_load_stream(sd3_mmdit_t *self, sd3_mmdit_stream_t *st, int index, const char *which,
              bool pre_only, bool attn2, sd3_err_t *err)
{
    const int64_t C = self->cfg.hidden;
    char name[160];
    st->pre_only = pre_only;
    st->has_attn2 = attn2;
    st->n_mod = pre_only ? 2 : attn2 ? 9 : 6;
#define S_NAME(suffix)                                                                             \
    (snprintf(name, sizeof name, "joint_blocks.%d.%s.%s", index, which, suffix), name)
    if (sd3_mmdit_load_linear(self, &st->mod, S_NAME("adaLN_modulation.1"), st->n_mod * C, C,
                              err) ||
        sd3_mmdit_load_linear(self, &st->qkv, S_NAME("attn.qkv"), 3 * C, C, err))
        return err->code;
    if (self->cfg.qk_norm &&
        (sd3_mmdit_load_vec(self, &st->ln_q, S_NAME("attn.ln_q.weight"), SD3_MMDIT_HEAD_DIM, err) ||
         sd3_mmdit_load_vec(self, &st->ln_k, S_NAME("attn.ln_k.weight"), SD3_MMDIT_HEAD_DIM, err)))
        return err->code;
    if (pre_only)
        return 0;
    if (sd3_mmdit_load_linear(self, &st->proj, S_NAME("attn.proj"), C, C, err) ||
        sd3_mmdit_load_linear(self, &st->fc1, S_NAME("mlp.fc1"), 4 * C, C, err) ||
        sd3_mmdit_load_linear(self, &st->fc2, S_NAME("mlp.fc2"), C, 4 * C, err))
        return err->code;
    if (attn2) {
        if (sd3_mmdit_load_linear(self, &st->qkv2, S_NAME("attn2.qkv"), 3 * C, C, err) ||
            sd3_mmdit_load_linear(self, &st->proj2, S_NAME("attn2.proj"), C, C, err))
            return err->code;
        if (self->cfg.qk_norm && (sd3_mmdit_load_vec(self, &st->ln_q2, S_NAME("attn2.ln_q.weight"),
                                                     SD3_MMDIT_HEAD_DIM, err) ||
                                  sd3_mmdit_load_vec(self, &st->ln_k2, S_NAME("attn2.ln_k.weight"),
                                                     SD3_MMDIT_HEAD_DIM, err)))
            return err->code;
    }
#undef S_NAME
    return 0;
}

int
sd3_mmdit_block_load(sd3_mmdit_t *self, sd3_mmdit_block_t *blk, int index, sd3_err_t *err)
{
    blk->index = index;
    bool last = index == self->cfg.depth - 1;
    bool attn2 = (self->cfg.attn2_mask >> index) & 1u;
    if (s_load_stream(self, &blk->ctx, index, "context_block", last, false, err) ||
        s_load_stream(self, &blk->x, index, "x_block", false, attn2, err))
        return err->code;
    return 0;
}

// ---- scratch -------------------------------------------------------------------------------

void
sd3_mmdit_ws_fini(sd3_mmdit_t *self)
{
    sd3_mmdit_ws_t *ws = &self->ws;
    sd3_tensor_t **all[] = {&ws->silu_c, &ws->mod_ctx, &ws->mod_x, &ws->ln, &ws->ln_x,
                            &ws->u,      &ws->qkv,     &ws->q,     &ws->k,  &ws->v,
                            &ws->o,      &ws->attn_s,  &ws->y,     &ws->h};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        sd3_mmdit_free(self, all[i]);
    ws->batch = ws->n_img = ws->n_ctx = 0;
}

int
sd3_mmdit_ws_ensure(sd3_mmdit_t *self, int batch, int n_img, int n_ctx, sd3_err_t *err)
{
    // Slots only grow: a batch-1 SLG forward between batch-2 steps reuses the batch-2
    // scratch through smaller views instead of reallocating it.
    sd3_mmdit_ws_t *ws = &self->ws;
    const int64_t B = batch, C = self->cfg.hidden, T = (int64_t)n_img + n_ctx;
    const int64_t M = n_img > n_ctx ? n_img : n_ctx;
    struct {
        sd3_tensor_t **t;
        int64_t numel;
        const char *what;
    } plan[] = {
        {&ws->silu_c, B * C, "silu_c"},     {&ws->mod_ctx, B * 6 * C, "mod_ctx"},
        {&ws->mod_x, B * 9 * C, "mod_x"},   {&ws->ln, B * M * C, "ln"},
        {&ws->ln_x, B * n_img * C, "ln_x"}, {&ws->u, B * M * C, "u"},
        {&ws->qkv, B * M * 3 * C, "qkv"},   {&ws->q, B * T * C, "q"},
        {&ws->k, B * T * C, "k"},           {&ws->v, B * T * C, "v"},
        {&ws->o, B * T * C, "o"},           {&ws->attn_s, B * M * C, "attn_s"},
        {&ws->y, B * M * C, "y"},           {&ws->h, B * M * 4 * C, "h"},
    };
    bool fits = true;
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        if (!*plan[i].t || sd3_tensor_numel(*plan[i].t) < plan[i].numel)
            fits = false;
    if (fits)
        return 0;
    sd3_mmdit_ws_fini(self);
    for (size_t i = 0; i < sizeof plan / sizeof plan[0]; i++)
        if (!(*plan[i].t = sd3_mmdit_tensor(self, 1, &plan[i].numel, plan[i].what, err))) {
            sd3_mmdit_ws_fini(self);
            return err->code;
        }
    ws->batch = batch;
    ws->n_img = n_img;
    ws->n_ctx = n_ctx;
    return 0;
}

// ---- forward -------------------------------------------------------------------------------

static sd3_tensor_t
s_v3(const sd3_tensor_t *t, int64_t a, int64_t b, int64_t c)
{
    return sd3_mmdit_view(t, 0, 3, (int64_t[]){a, b, c});
}

// Per-head RMSNorm in place on rows [row0, row0 + rows) of each batch item of t [B, T, C]
// (one stream's part of the joint q or k), with weight w [64].
static int
s_qk_norm(sd3_mmdit_t *self, const sd3_tensor_t *t, int64_t B, int64_t T, int64_t row0,
          int64_t rows, const sd3_tensor_t *w, sd3_err_t *err)
{
    const int64_t C = self->cfg.hidden, D = SD3_MMDIT_HEAD_DIM;
    if (!w)
        return 0;
    if (row0 == 0 && rows == T) { // the whole tensor is one stream: one call
        sd3_tensor_t all = sd3_mmdit_view(t, 0, 2, (int64_t[]){B * T * C / D, D});
        return self->be->ops->rmsnorm(self->be, &all, &all, w, S_QK_EPS, err);
    }
    for (int64_t b = 0; b < B; b++) {
        sd3_tensor_t part = sd3_mmdit_view(t, (b * T + row0) * C, 2, (int64_t[]){rows * C / D, D});
        if (self->be->ops->rmsnorm(self->be, &part, &part, w, S_QK_EPS, err))
            return err->code;
    }
    return 0;
}

// Pre-attention of one stream: ln = LN(X); u = modulate(ln, shift_msa, scale_msa);
// qkv = Linear(u); q, k, v go to rows [row0, row0 + Ts) of the joint q/k/v [B, T, C].
static int
s_pre_attention(sd3_mmdit_t *self, const sd3_mmdit_stream_t *st, const sd3_tensor_t *X,
                const sd3_tensor_t *mod, sd3_tensor_t *ln, int64_t B, int64_t Ts, int64_t T,
                int64_t row0, sd3_err_t *err)
{
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    sd3_mmdit_ws_t *ws = &self->ws;
    const int64_t C = self->cfg.hidden;
    sd3_tensor_t u = s_v3(ws->u, B, Ts, C);         // [B, Ts, C]
    sd3_tensor_t qkv = s_v3(ws->qkv, B, Ts, 3 * C); // [B, Ts, 3C]
    sd3_tensor_t q = s_v3(ws->q, B, T, C), k = s_v3(ws->k, B, T, C), v = s_v3(ws->v, B, T, C);
    if (op->layernorm(be, ln, X, NULL, NULL, S_LN_EPS, err) ||
        op->modulate(be, &u, ln, mod, S_SHIFT_MSA, S_SCALE_MSA, err) ||
        sd3_mmdit_linear(self, &qkv, &u, &st->qkv, err) ||
        op->copy2d(be, &q, row0, 0, &qkv, 0, 0, Ts, C, err) ||
        op->copy2d(be, &k, row0, 0, &qkv, 0, C, Ts, C, err) ||
        op->copy2d(be, &v, row0, 0, &qkv, 0, 2 * C, Ts, C, err) ||
        s_qk_norm(self, &q, B, T, row0, Ts, st->ln_q, err) ||
        s_qk_norm(self, &k, B, T, row0, Ts, st->ln_k, err))
        return err->code;
    return 0;
}

// X += gate_mlp * fc2(gelu_tanh(fc1(modulate(LN(X), shift_mlp, scale_mlp)))).
static int
s_mlp(sd3_mmdit_t *self, const sd3_mmdit_stream_t *st, sd3_tensor_t *X, const sd3_tensor_t *mod,
      int64_t B, int64_t Ts, sd3_err_t *err)
{
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    const int64_t C = self->cfg.hidden;
    sd3_tensor_t ln = s_v3(self->ws.ln, B, Ts, C);   // [B, Ts, C]
    sd3_tensor_t h = s_v3(self->ws.h, B, Ts, 4 * C); // [B, Ts, 4C]
    sd3_tensor_t y = s_v3(self->ws.y, B, Ts, C);     // [B, Ts, C]
    if (op->layernorm(be, &ln, X, NULL, NULL, S_LN_EPS, err) ||
        op->modulate(be, &ln, &ln, mod, S_SHIFT_MLP, S_SCALE_MLP, err) ||
        sd3_mmdit_linear(self, &h, &ln, &st->fc1, err) ||
        op->act(be, &h, &h, SD3_ACT_GELU_TANH, err) ||
        sd3_mmdit_linear(self, &y, &h, &st->fc2, err) ||
        op->gate_add(be, X, &y, mod, S_GATE_MLP, err))
        return err->code;
    return 0;
}

// MMDiT-X: X += gate_msa2 * proj2(attn2(modulate(ln_x, shift_msa2, scale_msa2))), where
// ln_x = LN of the block input (MODEL.md §4.6). Reuses q/k/v/o as [B, N, C].
static int
s_attn2(sd3_mmdit_t *self, const sd3_mmdit_stream_t *st, sd3_tensor_t *X, const sd3_tensor_t *mod,
        int64_t B, int64_t N, int index, sd3_err_t *err)
{
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    sd3_mmdit_ws_t *ws = &self->ws;
    const int64_t C = self->cfg.hidden;
    sd3_tensor_t ln_x = s_v3(ws->ln_x, B, N, C);
    sd3_tensor_t u = s_v3(ws->u, B, N, C);
    sd3_tensor_t qkv = s_v3(ws->qkv, B, N, 3 * C);
    sd3_tensor_t q = s_v3(ws->q, B, N, C), k = s_v3(ws->k, B, N, C), v = s_v3(ws->v, B, N, C);
    sd3_tensor_t o = s_v3(ws->o, B, N, C), y = s_v3(ws->y, B, N, C);
    sd3_attn_opts_t ao = {.n_heads = self->cfg.heads, .scale = 0.125f};
    if (op->modulate(be, &u, &ln_x, mod, S_SHIFT_MSA2, S_SCALE_MSA2, err) ||
        sd3_mmdit_linear(self, &qkv, &u, &st->qkv2, err) ||
        op->copy2d(be, &q, 0, 0, &qkv, 0, 0, N, C, err) ||
        op->copy2d(be, &k, 0, 0, &qkv, 0, C, N, C, err) ||
        op->copy2d(be, &v, 0, 0, &qkv, 0, 2 * C, N, C, err) ||
        s_qk_norm(self, &q, B, N, 0, N, st->ln_q2, err) ||
        s_qk_norm(self, &k, B, N, 0, N, st->ln_k2, err))
        return err->code;
    sd3_mmdit_tap(self, &q, "block%d.x_q2", index);
    sd3_mmdit_tap(self, &k, "block%d.x_k2", index);
    sd3_mmdit_tap(self, &v, "block%d.x_v2", index);
    if (op->attention(be, &o, &q, &k, &v, &ao, err))
        return err->code;
    sd3_mmdit_tap(self, &o, "block%d.x_attn2", index);
    if (sd3_mmdit_linear(self, &y, &o, &st->proj2, err) ||
        op->gate_add(be, X, &y, mod, S_GATE_MSA2, err))
        return err->code;
    return 0;
}

int
sd3_mmdit_block_forward(sd3_mmdit_t *self, const sd3_mmdit_block_t *blk, sd3_mmdit_act_t *act,
                        const sd3_tensor_t *silu_c, sd3_err_t *err)
{
    const sd3_backend_ops_t *op = self->be->ops;
    sd3_backend_t *be = self->be;
    sd3_mmdit_ws_t *ws = &self->ws;
    const int64_t B = act->batch, L = act->n_ctx, N = (int64_t)act->grid_h * act->grid_w;
    const int64_t C = self->cfg.hidden, T = L + N;
    const int i = blk->index;
    if (!act->ctx)
        return sd3_err_set(err, SD3_EINVAL, "mmdit block %d: the context stream has ended", i);
    sd3_tensor_t mod_c = sd3_mmdit_view(ws->mod_ctx, 0, 2, (int64_t[]){B, blk->ctx.n_mod * C});
    sd3_tensor_t mod_x = sd3_mmdit_view(ws->mod_x, 0, 2, (int64_t[]){B, blk->x.n_mod * C});
    if (sd3_mmdit_linear(self, &mod_c, silu_c, &blk->ctx.mod, err) ||
        sd3_mmdit_linear(self, &mod_x, silu_c, &blk->x.mod, err))
        return err->code;
    sd3_mmdit_tap(self, &mod_c, "block%d.context_mod", i);
    sd3_mmdit_tap(self, &mod_x, "block%d.x_mod", i);

    // Joint attention over [ctx ; x]: context rows first (reference block_mixing).
    sd3_tensor_t ln_c = s_v3(ws->ln, B, L, C), ln_x = s_v3(ws->ln_x, B, N, C);
    if (s_pre_attention(self, &blk->ctx, act->ctx, &mod_c, &ln_c, B, L, T, 0, err) ||
        s_pre_attention(self, &blk->x, act->x, &mod_x, &ln_x, B, N, T, L, err))
        return err->code;
    sd3_tensor_t q = s_v3(ws->q, B, T, C), k = s_v3(ws->k, B, T, C), v = s_v3(ws->v, B, T, C);
    sd3_tensor_t o = s_v3(ws->o, B, T, C); // [B, L+N, C]
    sd3_mmdit_tap(self, &q, "block%d.q", i);
    sd3_mmdit_tap(self, &k, "block%d.k", i);
    sd3_mmdit_tap(self, &v, "block%d.v", i);
    sd3_attn_opts_t ao = {.n_heads = self->cfg.heads, .scale = 0.125f}; // 1/sqrt(64)
    if (op->attention(be, &o, &q, &k, &v, &ao, err))
        return err->code;
    sd3_mmdit_tap(self, &o, "block%d.attn", i);

    // Context stream (not in the last block, whose context output is discarded).
    if (!blk->ctx.pre_only) {
        sd3_tensor_t a = s_v3(ws->attn_s, B, L, C), y = s_v3(ws->y, B, L, C);
        if (op->copy2d(be, &a, 0, 0, &o, 0, 0, L, C, err) ||
            sd3_mmdit_linear(self, &y, &a, &blk->ctx.proj, err) ||
            op->gate_add(be, act->ctx, &y, &mod_c, S_GATE_MSA, err) ||
            s_mlp(self, &blk->ctx, act->ctx, &mod_c, B, L, err))
            return err->code;
    }
    // Image stream.
    sd3_tensor_t a = s_v3(ws->attn_s, B, N, C), y = s_v3(ws->y, B, N, C);
    if (op->copy2d(be, &a, 0, 0, &o, L, 0, N, C, err) ||
        sd3_mmdit_linear(self, &y, &a, &blk->x.proj, err) ||
        op->gate_add(be, act->x, &y, &mod_x, S_GATE_MSA, err))
        return err->code;
    if (blk->x.has_attn2 && s_attn2(self, &blk->x, act->x, &mod_x, B, N, i, err))
        return err->code;
    if (s_mlp(self, &blk->x, act->x, &mod_x, B, N, err))
        return err->code;
    sd3_mmdit_tap(self, act->x, "block%d.x", i);
    if (blk->ctx.pre_only) {
        sd3_mmdit_free(self, &act->ctx); // the context stream ends here
    } else {
        sd3_mmdit_tap(self, act->ctx, "block%d.context", i);
    }
    return 0;
}
