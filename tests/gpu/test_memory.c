/*  test_memory - CUDA backend memory: tensor_new, upload/download, weight(), errors
 *
 *  tensor_new gives zeros; f32 -> bf16 -> f32 round trips equal the host's own bf16 rounding
 *  (RNE) bit for bit, f32 device tensors round-trip exactly, f16 too; weight() uploads once
 *  and returns the same tensor for the same host tensor, converts f8 e4m3 exactly, refuses
 *  non-float storage; freed blocks are reused; host tensors given to an op, size mismatches
 *  and bad dtypes are refused with EINVAL and a message, never a crash.  */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd3_gpu_test.h"

int
main(void)
{
    sd3_gpu_test_t gt;
    sd3_err_t err = {0};
    int rc = sd3_gpu_test_setup(&gt, "test_memory");
    if (rc)
        return rc;
    sd3_backend_t *be = gt.cuda;
    CHECK(be->act_dtype == SD3_BF16);
    CHECK(strcmp(be->ops->name, "cuda") == 0);

    // tensor_new: zeroed, on the device
    int64_t s[3] = {3, 5, 7};
    sd3_tensor_t *z = be->ops->tensor_new(be, SD3_BF16, 3, s, &err);
    CHECK(z && z->where == SD3_DEVICE);
    if (z) {
        sd3_tensor_t *hz = sd3_gpu_test_host(&gt, z), *zero = sd3_gpu_test_const(3, s, 0.0f);
        sd3_gpu_test_same_bits("tensor_new zeroed", hz, zero);
        sd3_tensor_destroy(&hz);
        sd3_tensor_destroy(&zero);
    }

    // round trips: host values NOT pre-rounded, so upload must round like sd3_f32_to_bf16
    {
        int64_t n[1] = {1000};
        sd3_tensor_t *h = sd3_tensor_new(SD3_F32, 1, n), *want = sd3_tensor_new(SD3_F32, 1, n);
        for (int i = 0; i < 1000; i++) {
            float v = sd3_test_randf(&gt.seed) * powf(2.0f, (float)(i % 40 - 20));
            sd3_tensor_f32(h)[i] = v;
            sd3_tensor_f32(want)[i] = sd3_bf16_to_f32(sd3_f32_to_bf16(v));
        }
        sd3_tensor_t *d16 = sd3_gpu_test_dev(&gt, h, SD3_BF16), *d32 = sd3_gpu_test_dev(&gt, h, SD3_F32);
        sd3_tensor_t *dh = sd3_gpu_test_dev(&gt, h, SD3_F16);
        sd3_tensor_t *b16 = sd3_gpu_test_host(&gt, d16), *b32 = sd3_gpu_test_host(&gt, d32);
        sd3_tensor_t *bh = sd3_gpu_test_host(&gt, dh);
        sd3_gpu_test_same_bits("f32 -> bf16 -> f32", b16, want);
        sd3_gpu_test_same_bits("f32 -> f32 -> f32", b32, h);
        for (int i = 0; i < 1000; i++)
            sd3_tensor_f32(want)[i] = sd3_f16_to_f32(sd3_f32_to_f16(sd3_tensor_f32(h)[i]));
        sd3_gpu_test_same_bits("f32 -> f16 -> f32", bh, want);
        // download into a bf16 host tensor: no conversion, the raw device bits
        sd3_tensor_t *hb = sd3_tensor_new(SD3_BF16, 1, n);
        CHECK(be->ops->download(be, hb, d16, &err) == 0);
        CHECK(sd3_bf16_to_f32(((uint16_t *)hb->data)[7]) == sd3_tensor_f32(b16)[7]);
        // size mismatch refused
        int64_t n2[1] = {999};
        sd3_tensor_t *small = sd3_tensor_new(SD3_F32, 1, n2);
        sd3_err_clear(&err);
        CHECK(be->ops->download(be, small, d16, &err) == SD3_EINVAL);
        fprintf(stderr, "size mismatch: %s\n", err.msg);
        sd3_err_clear(&err);
        CHECK(be->ops->upload(be, d16, small, &err) == SD3_EINVAL);
        // host -> host through the cuda backend is refused
        sd3_err_clear(&err);
        CHECK(be->ops->upload(be, want, h, &err) == SD3_EINVAL);
        sd3_tensor_destroy(&small);
        sd3_tensor_destroy(&hb);
        sd3_tensor_destroy(&b16);
        sd3_tensor_destroy(&b32);
        sd3_tensor_destroy(&bh);
        sd3_gpu_test_free(&gt, &d16);
        sd3_gpu_test_free(&gt, &d32);
        sd3_gpu_test_free(&gt, &dh);
        sd3_tensor_destroy(&h);
        sd3_tensor_destroy(&want);
    }

    // weight(): cached by pointer, f8 widened exactly, ints refused
    {
        int64_t ws[2] = {16, 24};
        sd3_tensor_t *w8 = sd3_tensor_new(SD3_F8_E4M3, 2, ws), *want = sd3_tensor_new(SD3_F32, 2, ws);
        for (int i = 0; i < 16 * 24; i++) {
            uint8_t b = (uint8_t)(i * 37 + 1);
            if ((b & 0x7f) == 0x7f)
                b = 0x3c; // skip the NaN codes
            ((uint8_t *)w8->data)[i] = b;
            sd3_tensor_f32(want)[i] = sd3_f8e4m3_to_f32(b);
        }
        w8->name = "w8";
        const sd3_tensor_t *d1 = be->ops->weight(be, w8, &err);
        const sd3_tensor_t *d2 = be->ops->weight(be, w8, &err);
        CHECK(d1 && d1 == d2 && d1->dtype == SD3_BF16 && d1->where == SD3_DEVICE);
        if (d1) {
            sd3_tensor_t *got = sd3_gpu_test_host(&gt, d1);
            sd3_gpu_test_same_bits("weight f8 e4m3 -> bf16 exact", got, want);
            sd3_tensor_destroy(&got);
        }
        sd3_tensor_t *wi = sd3_tensor_new(SD3_I32, 2, ws);
        sd3_err_clear(&err);
        CHECK(be->ops->weight(be, wi, &err) == NULL && err.code == SD3_ENOTSUP);
        sd3_tensor_destroy(&wi);
        sd3_tensor_destroy(&w8);
        sd3_tensor_destroy(&want);
    }

    // caching allocator: a freed block of the same size comes back
    {
        int64_t big[2] = {1024, 1024};
        sd3_tensor_t *a = be->ops->tensor_new(be, SD3_BF16, 2, big, &err);
        void *p = a ? a->data : NULL;
        be->ops->tensor_free(be, &a);
        CHECK(a == NULL);
        sd3_tensor_t *b = be->ops->tensor_new(be, SD3_BF16, 2, big, &err);
        CHECK(b && b->data == p);
        if (b) { // and it is zeroed again
            sd3_tensor_t *hb = sd3_gpu_test_host(&gt, b);
            double sum = 0;
            for (int64_t i = 0; i < sd3_tensor_numel(hb); i++)
                sum += fabs(sd3_tensor_f32(hb)[i]);
            CHECK(sum == 0.0);
            sd3_tensor_destroy(&hb);
        }
        be->ops->tensor_free(be, &b);
    }

    // bad input: host tensor to an op, wrong dims, absurd sizes
    {
        int64_t s2[2] = {4, 8};
        sd3_tensor_t *h = sd3_gpu_test_rand(&gt, 2, s2, 1.0f), *d = sd3_gpu_test_dev(&gt, h, SD3_BF16);
        sd3_err_clear(&err);
        CHECK(be->ops->act(be, d, h, SD3_ACT_SILU, &err) == SD3_EINVAL);
        fprintf(stderr, "host tensor: %s\n", err.msg);
        sd3_err_clear(&err);
        CHECK(be->ops->softmax(be, d, NULL, &err) == SD3_EINVAL);
        int64_t huge[4] = {1ll << 20, 1ll << 20, 1ll << 20, 1ll << 20};
        sd3_err_clear(&err);
        CHECK(be->ops->tensor_new(be, SD3_BF16, 4, huge, &err) == NULL && err.code == SD3_ENOMEM);
        int64_t neg[1] = {-5};
        sd3_err_clear(&err);
        CHECK(be->ops->tensor_new(be, SD3_BF16, 1, neg, &err) == NULL);
        sd3_gpu_test_free(&gt, &d);
        sd3_tensor_destroy(&h);
    }
    sd3_tensor_t *zz = z;
    be->ops->tensor_free(be, &zz);
    CHECK(be->ops->supports(SD3_OP_LINEAR, SD3_F8_E4M3));
    CHECK(be->ops->supports(SD3_OP_ATTENTION, SD3_BF16));
    CHECK(!be->ops->supports(SD3_OP_ADD, SD3_I32));
    sd3_gpu_test_teardown(&gt);
    return TEST_RESULT();
}
