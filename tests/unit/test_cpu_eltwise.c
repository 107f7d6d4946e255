/*  test_cpu_eltwise - act, softmax, add, modulate, gate_add, upsample2x, copy2d, fill
 *
 *  Known values of each activation (computed in double from MODEL.md's formulas), softmax
 *  rows sum to one and match a double loop, the chunk convention of modulate and gate_add
 *  (chunk i = columns [i*C, (i+1)*C)), in-place = out-of-place bits, 1 vs 2 threads
 *  bit-identical, copy2d slices and bounds, and SD3_EINVAL on bad shapes.  */
#include "sd3_backend.h"
#include "sd3_cpu.h"
#include "sd3_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long s_seed = 99;

static sd3_tensor_t *
s_rand(int ndim, const int64_t *shape, float amp)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, ndim, shape);
    for (int64_t i = 0; i < sd3_tensor_numel(t); i++)
        ((float *)t->data)[i] = amp * sd3_test_randf(&s_seed);
    return t;
}

static double
s_act_double(sd3_act_t kind, double x)
{
    switch (kind) {
    case SD3_ACT_SILU:
        return x / (1 + exp(-x));
    case SD3_ACT_GELU_TANH:
        return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
    case SD3_ACT_GELU_ERF:
        return 0.5 * x * (1 + erf(x / sqrt(2)));
    case SD3_ACT_QUICK_GELU:
        return x / (1 + exp(-1.702 * x));
    }
    return 0;
}

static void
s_act(sd3_backend_t *be1, sd3_backend_t *be2)
{
    sd3_err_t err = {0};
    int64_t shape[2] = {33, 1001}; // > one 32768-element block
    for (int kind = 0; kind <= SD3_ACT_QUICK_GELU; kind++) {
        sd3_tensor_t *x = s_rand(2, shape, 8.0f);
        sd3_tensor_t *y1 = sd3_tensor_new(SD3_F32, 2, shape), *y2 = sd3_tensor_clone(x);
        CHECK(be1->ops->act(be1, y1, x, (sd3_act_t)kind, &err) == 0);
        CHECK(be2->ops->act(be2, y2, y2, (sd3_act_t)kind, &err) == 0); // in place
        size_t n = (size_t)sd3_tensor_numel(x);
        CHECK_MSG(memcmp(y1->data, y2->data, n * 4) == 0, "act %d: in place / threads differ",
                  kind);
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            double want = s_act_double((sd3_act_t)kind, ((float *)x->data)[i]);
            double d = fabs(((float *)y1->data)[i] - want) / fmax(1.0, fabs(want));
            worst = d > worst ? d : worst;
        }
        CHECK_MSG(worst < 1e-6, "act %d: max rel diff %g", kind, worst);
        // the fast path (vector exp) against the plain reference loop
        sd3_tensor_t *y3 = sd3_tensor_new(SD3_F32, 2, shape);
        CHECK(sd3_cpu_act_ref(y3, x, (sd3_act_t)kind, &err) == 0);
        worst = 0;
        for (size_t i = 0; i < n; i++) {
            double a = ((float *)y3->data)[i], b = ((float *)y1->data)[i];
            worst = fmax(worst, fabs(a - b) / fmax(1.0, fabs(a)));
        }
        CHECK_MSG(worst < 1e-6, "act %d: fast vs reference max rel diff %g", kind, worst);
        sd3_tensor_destroy(&y3);
        sd3_tensor_destroy(&x);
        sd3_tensor_destroy(&y1);
        sd3_tensor_destroy(&y2);
    }
    // spot values: gelu_tanh(1) = 0.8411920, gelu_erf(1) = 0.8413447, silu(1) = 0.7310586,
    // quick_gelu(1) = 0.8457958
    CHECK(fabsf(sd3_cpu_act1(SD3_ACT_GELU_TANH, 1.0f) - 0.8411920f) < 1e-6f);
    CHECK(fabsf(sd3_cpu_act1(SD3_ACT_GELU_ERF, 1.0f) - 0.8413447f) < 1e-6f);
    CHECK(fabsf(sd3_cpu_act1(SD3_ACT_SILU, 1.0f) - 0.7310586f) < 1e-6f);
    CHECK(fabsf(sd3_cpu_act1(SD3_ACT_QUICK_GELU, 1.0f) - 0.8457958f) < 1e-6f);
    CHECK(sd3_cpu_act1(SD3_ACT_SILU, -100.0f) == -0.0f);
}

static void
s_softmax(sd3_backend_t *be1, sd3_backend_t *be2)
{
    sd3_err_t err = {0};
    int64_t shape[3] = {2, 17, 77};
    sd3_tensor_t *x = s_rand(3, shape, 30.0f);
    ((float *)x->data)[5] = -INFINITY; // a masked logit
    sd3_tensor_t *y1 = sd3_tensor_new(SD3_F32, 3, shape), *y2 = sd3_tensor_clone(x);
    CHECK(be1->ops->softmax(be1, y1, x, &err) == 0);
    CHECK(be2->ops->softmax(be2, y2, y2, &err) == 0);
    CHECK(memcmp(y1->data, y2->data, sd3_tensor_nbytes(x)) == 0);
    const float *xd = x->data, *yd = y1->data;
    double worst = 0;
    for (int64_t r = 0; r < 34; r++) {
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < 77; i++)
            mx = fmax(mx, xd[r * 77 + i]);
        for (int i = 0; i < 77; i++)
            sum += exp(xd[r * 77 + i] - mx);
        for (int i = 0; i < 77; i++)
            worst = fmax(worst, fabs(yd[r * 77 + i] - exp(xd[r * 77 + i] - mx) / sum));
    }
    CHECK_MSG(worst < 1e-6, "softmax max diff %g", worst);
    CHECK(yd[5] == 0.0f);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&y1);
    sd3_tensor_destroy(&y2);
}

static void
s_add_mod(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    int64_t B = 2, T = 5, C = 7;
    sd3_tensor_t *x = s_rand(3, (int64_t[]){B, T, C}, 1.0f);
    sd3_tensor_t *y = s_rand(3, (int64_t[]){B, T, C}, 1.0f);
    sd3_tensor_t *row = s_rand(1, (int64_t[]){C}, 1.0f);
    sd3_tensor_t *mod = s_rand(2, (int64_t[]){B, 6 * C}, 1.0f);
    sd3_tensor_t *out = sd3_tensor_new(SD3_F32, 3, (int64_t[]){B, T, C});
    const float *xd = x->data, *yd = y->data, *rd = row->data, *md = mod->data;
    float *od = out->data;
    // add: same shape, then a [C] row broadcast
    CHECK(be->ops->add(be, out, x, y, &err) == 0);
    int bad = 0;
    for (int64_t i = 0; i < B * T * C; i++)
        bad += od[i] != xd[i] + yd[i];
    CHECK(be->ops->add(be, out, x, row, &err) == 0);
    for (int64_t i = 0; i < B * T * C; i++)
        bad += od[i] != xd[i] + rd[i % C];
    CHECK_MSG(bad == 0, "add: %d wrong", bad);
    // modulate with shift chunk 3, scale chunk 4: x * (1 + m[b, 4C + c]) + m[b, 3C + c]
    CHECK(be->ops->modulate(be, out, x, mod, 3, 4, &err) == 0);
    bad = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < C; c++) {
                int64_t i = (b * T + t) * C + c;
                bad +=
                    od[i] != xd[i] * (1.0f + md[b * 6 * C + 4 * C + c]) + md[b * 6 * C + 3 * C + c];
            }
    CHECK_MSG(bad == 0, "modulate: %d wrong", bad);
    // gate_add chunk 2: x += m[b, 2C + c] * y
    sd3_tensor_t *acc = sd3_tensor_clone(x);
    CHECK(be->ops->gate_add(be, acc, y, mod, 2, &err) == 0);
    bad = 0;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = b * T * C; i < (b + 1) * T * C; i++)
            bad += ((float *)acc->data)[i] != xd[i] + md[b * 6 * C + 2 * C + i % C] * yd[i];
    CHECK_MSG(bad == 0, "gate_add: %d wrong", bad);
    // bad: chunk past the end, mod batch mismatch, add shape mismatch
    sd3_tensor_t *mod1 = s_rand(2, (int64_t[]){1, 6 * C}, 1.0f);
    CHECK(be->ops->modulate(be, out, x, mod, 0, 6, &err) == SD3_EINVAL);
    CHECK(be->ops->modulate(be, out, x, mod1, 0, 1, &err) == SD3_EINVAL);
    CHECK(be->ops->gate_add(be, acc, y, mod, -1, &err) == SD3_EINVAL);
    CHECK(be->ops->add(be, out, x, mod, &err) == SD3_EINVAL);
    sd3_tensor_destroy(&mod1);
    sd3_tensor_destroy(&acc);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&y);
    sd3_tensor_destroy(&row);
    sd3_tensor_destroy(&mod);
    sd3_tensor_destroy(&out);
}

static void
s_move(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *x = s_rand(4, (int64_t[]){2, 3, 5, 7}, 1.0f);
    sd3_tensor_t *y = sd3_tensor_new(SD3_F32, 4, (int64_t[]){2, 3, 10, 14});
    CHECK(be->ops->upsample2x(be, y, x, &err) == 0);
    int bad = 0;
    for (int64_t p = 0; p < 6; p++)
        for (int64_t i = 0; i < 10; i++)
            for (int64_t j = 0; j < 14; j++)
                bad += ((float *)y->data)[(p * 10 + i) * 14 + j] !=
                       ((float *)x->data)[(p * 5 + i / 2) * 7 + j / 2];
    CHECK_MSG(bad == 0, "upsample2x: %d wrong", bad);
    CHECK(be->ops->upsample2x(be, x, x, &err) == SD3_EINVAL);
    // copy2d: qkv [2, 4, 9] -> k part (columns 3..5) into [2, 6, 3] at row 2
    sd3_tensor_t *qkv = s_rand(3, (int64_t[]){2, 4, 9}, 1.0f);
    sd3_tensor_t *k = sd3_tensor_new(SD3_F32, 3, (int64_t[]){2, 6, 3});
    CHECK(be->ops->copy2d(be, k, 2, 0, qkv, 0, 3, 4, 3, &err) == 0);
    bad = 0;
    for (int64_t b = 0; b < 2; b++)
        for (int64_t r = 0; r < 6; r++)
            for (int64_t c = 0; c < 3; c++) {
                float want = r < 2 ? 0.0f : ((float *)qkv->data)[(b * 4 + r - 2) * 9 + 3 + c];
                bad += ((float *)k->data)[(b * 6 + r) * 3 + c] != want;
            }
    CHECK_MSG(bad == 0, "copy2d: %d wrong", bad);
    CHECK(be->ops->copy2d(be, k, 3, 0, qkv, 0, 3, 4, 3, &err) == SD3_EINVAL); // rows overflow
    CHECK(be->ops->copy2d(be, k, 0, 1, qkv, 0, 3, 4, 3, &err) == SD3_EINVAL); // cols overflow
    CHECK(be->ops->copy2d(be, k, 0, 0, qkv, 0, 7, 4, 3, &err) == SD3_EINVAL); // src cols
    CHECK(be->ops->copy2d(be, k, 0, 0, qkv, -1, 0, 1, 1, &err) == SD3_EINVAL);
    CHECK(be->ops->copy2d(be, k, 0, 0, qkv, 0, 0, -1, 1, &err) == SD3_EINVAL);
    sd3_tensor_t *one = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 4, 9});
    CHECK(be->ops->copy2d(be, one, 0, 0, qkv, 0, 0, 1, 1, &err) == SD3_EINVAL); // batches
    CHECK(be->ops->fill(be, k, 2.5f, &err) == 0);
    CHECK(((float *)k->data)[0] == 2.5f && ((float *)k->data)[35] == 2.5f);
    sd3_tensor_t *h = sd3_tensor_new(SD3_BF16, 1, (int64_t[]){3});
    CHECK(be->ops->fill(be, h, 1.0f, &err) == 0);
    CHECK(((uint16_t *)h->data)[2] == 0x3f80);
    sd3_tensor_destroy(&h);
    sd3_tensor_destroy(&one);
    sd3_tensor_destroy(&qkv);
    sd3_tensor_destroy(&k);
    sd3_tensor_destroy(&x);
    sd3_tensor_destroy(&y);
}

static void
s_memory(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *t = be->ops->tensor_new(be, SD3_F32, 2, (int64_t[]){3, 4}, &err);
    CHECK(t && ((float *)t->data)[11] == 0.0f);
    sd3_tensor_t *src = s_rand(2, (int64_t[]){3, 4}, 1.0f);
    CHECK(be->ops->upload(be, t, src, &err) == 0);
    CHECK(memcmp(t->data, src->data, 48) == 0);
    sd3_tensor_t *h = sd3_tensor_new(SD3_F16, 2, (int64_t[]){3, 4});
    CHECK(be->ops->download(be, h, t, &err) == 0); // f32 -> f16 on the way
    CHECK(((uint16_t *)h->data)[1] == sd3_f32_to_f16(((float *)src->data)[1]));
    sd3_tensor_t *bad = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 3});
    CHECK(be->ops->upload(be, bad, src, &err) == SD3_EINVAL);
    CHECK(be->ops->weight(be, h, &err) == h);
    be->ops->tensor_free(be, &t);
    CHECK(t == NULL);
    CHECK(be->ops->tensor_new(be, SD3_F32, 5, (int64_t[]){1, 1, 1, 1, 1}, &err) == NULL);
    sd3_tensor_destroy(&src);
    sd3_tensor_destroy(&h);
    sd3_tensor_destroy(&bad);
}

// Every op refuses missing tensors and options with SD3_EINVAL instead of crashing.
static void
s_nulls(sd3_backend_t *be)
{
    sd3_err_t err = {0};
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, 2, 4});
    sd3_tensor_t *t4 = sd3_tensor_new(SD3_F32, 4, (int64_t[]){1, 2, 2, 2});
    sd3_tensor_t *w = sd3_tensor_new(SD3_F32, 2, (int64_t[]){4, 4});
    sd3_attn_opts_t ao = {.n_heads = 1, .scale = 1};
    sd3_conv_opts_t co = {.stride = 1};
    CHECK(be->ops->linear(be, t, NULL, w, NULL, &err) == SD3_EINVAL);
    CHECK(be->ops->layernorm(be, NULL, t, NULL, NULL, 1e-6f, &err) == SD3_EINVAL);
    CHECK(be->ops->rmsnorm(be, t, NULL, NULL, 1e-6f, &err) == SD3_EINVAL);
    CHECK(be->ops->groupnorm(be, t4, NULL, NULL, NULL, 2, 1e-6f, &err) == SD3_EINVAL);
    CHECK(be->ops->act(be, NULL, t, SD3_ACT_SILU, &err) == SD3_EINVAL);
    CHECK(be->ops->act(be, t, t, (sd3_act_t)99, &err) == SD3_EINVAL);
    CHECK(be->ops->softmax(be, t, NULL, &err) == SD3_EINVAL);
    CHECK(be->ops->add(be, t, t, NULL, &err) == SD3_EINVAL);
    CHECK(be->ops->modulate(be, t, t, NULL, 0, 1, &err) == SD3_EINVAL);
    CHECK(be->ops->gate_add(be, t, NULL, w, 0, &err) == SD3_EINVAL);
    CHECK(be->ops->attention(be, t, t, NULL, t, &ao, &err) == SD3_EINVAL);
    CHECK(be->ops->conv2d(be, t4, t4, NULL, NULL, &co, &err) == SD3_EINVAL);
    CHECK(be->ops->upsample2x(be, NULL, t4, &err) == SD3_EINVAL);
    CHECK(be->ops->copy2d(be, NULL, 0, 0, t, 0, 0, 1, 1, &err) == SD3_EINVAL);
    CHECK(be->ops->fill(be, NULL, 0.0f, &err) == SD3_EINVAL);
    CHECK(be->ops->upload(be, t, NULL, &err) == SD3_EINVAL);
    CHECK(be->ops->weight(be, NULL, &err) == NULL);
    sd3_tensor_destroy(&t);
    sd3_tensor_destroy(&t4);
    sd3_tensor_destroy(&w);
}

int
main(void)
{
    sd3_err_t err = {0};
    sd3_backend_t *be1 = sd3_cpu_backend_new(1, &err), *be2 = sd3_cpu_backend_new(2, &err);
    if (!be1 || !be2)
        return 1;
    s_act(be1, be2);
    s_softmax(be1, be2);
    s_add_mod(be2);
    s_move(be2);
    s_memory(be1);
    s_nulls(be2);
    sd3_backend_destroy(&be1);
    sd3_backend_destroy(&be2);
    return TEST_RESULT();
}
