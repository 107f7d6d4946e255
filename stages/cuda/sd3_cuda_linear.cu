/*  sd3_cuda_linear - y = x W^T + b through cuBLASLt (bf16 in and out, fp32 accumulation)
 *
 *  Row-major y [M, N] = x [M, K] W[N, K]^T is, seen column-major, D[N, M] = W^T x^T: A = W
 *  (K x N column-major, transposed), B = x (K x M), bias over D's rows = y's columns, so the
 *  bias epilogue adds b [N]. conv2d calls sd3_cuda_gemm_rowmajor for its im2col products.
 *
 *  Each distinct problem (sizes, leading dims, pointer alignment, epilogue) gets a plan: the
 *  descriptors and the heuristic's first algorithm, kept until the backend dies, so a shape
 *  always runs the same kernel and gives the same bits. Algorithms that reduce split-K parts
 *  in place in the output are excluded (their order of additions is not fixed).  */
#include <stdlib.h>

#include "sd3_cuda.h"

struct sd3_cuda_gemm_plan {
    // key
    int64_t m, n, k, lda, ldb, ldd;
    int trans_a, bias, accumulate;
    int align_a, align_b, align_d;
    // value
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
    struct sd3_cuda_gemm_plan *next;
};

static int
s_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int al = 256;
    while (al > 2 && a % (uintptr_t)al)
        al >>= 1;
    return al;
}

static void
s_plan_free(sd3_cuda_gemm_plan_t *p)
{
    if (p->desc)
        cublasLtMatmulDescDestroy(p->desc);
    if (p->la)
        cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb)
        cublasLtMatrixLayoutDestroy(p->lb);
    if (p->ld)
        cublasLtMatrixLayoutDestroy(p->ld);
    free(p);
}

void
sd3_cuda_gemm_plans_free(sd3_cuda_t *cu)
{
    while (cu->plans) {
        sd3_cuda_gemm_plan_t *p = cu->plans;
        cu->plans = p->next;
        s_plan_free(p);
    }
}

// Column-major D[m, n] (ldd) = op(A) B (+ D when accumulate) (+ bias[m] when bias), bf16.
// A is k x m (lda) when trans_a, else m x k; B is k x n (ldb).
static int
s_gemm(sd3_cuda_t *cu, int64_t m, int64_t n, int64_t k, int trans_a, const void *A, int64_t lda,
       const void *B, int64_t ldb, void *D, int64_t ldd, const void *bias, bool accumulate,
       sd3_err_t *err)
{
    sd3_cuda_gemm_plan_t *p = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    sd3_cuda_gemm_plan_t *fresh = NULL;
    int n_found = 0;
    float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    int has_bias = bias != NULL, al_a = s_align(A), al_b = s_align(B), al_d = s_align(D);
    for (p = cu->plans; p; p = p->next)
        if (p->m == m && p->n == n && p->k == k && p->lda == lda && p->ldb == ldb &&
            p->ldd == ldd && p->trans_a == trans_a && p->bias == has_bias &&
            p->accumulate == (int)accumulate && p->align_a == al_a && p->align_b == al_b &&
            p->align_d == al_d)
            break;
    if (!p) {
        cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
        cublasLtEpilogue_t epi = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
        uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_INPLACE;
        uint32_t ua = (uint32_t)al_a, ub = (uint32_t)al_b, ud = (uint32_t)al_d;
        p = fresh = (sd3_cuda_gemm_plan_t *)calloc(1, sizeof *p);
        if (!p) {
            sd3_err_set(err, SD3_ENOMEM, "cuda gemm: out of host memory");
            goto fail;
        }
        p->m = m, p->n = n, p->k = k, p->lda = lda, p->ldb = ldb, p->ldd = ldd;
        p->trans_a = trans_a, p->bias = has_bias, p->accumulate = (int)accumulate;
        p->align_a = al_a, p->align_b = al_b, p->align_d = al_d;
        SD3_CUBLAS_TRY(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), err);
        SD3_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta,
                                                      sizeof ta),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                                      sizeof tb),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                      &epi, sizeof epi),
                       err);
        if (has_bias)
            SD3_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(
                               p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
                           err);
        SD3_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->la, CUDA_R_16BF, trans_a ? k : m,
                                                  trans_a ? m : k, lda),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->lb, CUDA_R_16BF, k, n, ldb), err);
        SD3_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->ld, CUDA_R_16BF, m, n, ldd), err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref), err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &cu->workspace_size,
                           sizeof cu->workspace_size),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &scheme,
                           sizeof scheme),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &ua, sizeof ua),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ub, sizeof ub),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ud, sizeof ud),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
                           pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ud, sizeof ud),
                       err);
        SD3_CUBLAS_TRY(cublasLtMatmulAlgoGetHeuristic(cu->lt, p->desc, p->la, p->lb, p->ld,
                                                      p->ld, pref, 1, &heur, &n_found),
                       err);
        if (n_found < 1) {
            sd3_err_set(err, SD3_ENOTSUP,
                        "cuda gemm: cuBLASLt has no algorithm for %lldx%lldx%lld (ld %lld,%lld,"
                        "%lld)",
                        (long long)m, (long long)n, (long long)k, (long long)lda,
                        (long long)ldb, (long long)ldd);
            goto fail;
        }
        p->algo = heur.algo;
        cublasLtMatmulPreferenceDestroy(pref);
        pref = NULL;
        p->next = cu->plans;
        cu->plans = p;
        fresh = NULL;
    } else if (has_bias) {
        SD3_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                      &bias, sizeof bias),
                       err);
    }
    SD3_CUBLAS_TRY(cublasLtMatmul(cu->lt, p->desc, &alpha, A, p->la, B, p->lb, &beta, D, p->ld, D,
                                  p->ld, &p->algo, cu->workspace, cu->workspace_size,
                                  cu->stream),
                   err);
    return 0;
fail:
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (fresh) // a plan that failed while being built (not in the list yet)
        s_plan_free(fresh);
    return err && err->code ? err->code : SD3_EDEVICE;
}

int
sd3_cuda_gemm_rowmajor(sd3_cuda_t *cu, int64_t M, int64_t N, int64_t K, const void *A,
                       int64_t lda, const void *B, int64_t ldb, void *C, int64_t ldc,
                       bool accumulate, sd3_err_t *err)
{
    // C^T (N x M, column-major, ld ldc) = B^T (N x K, ld ldb) A^T (K x M, ld lda)
    return s_gemm(cu, N, M, K, 0, B, ldb, A, lda, C, ldc, NULL, accumulate, err);
}

int
sd3_cuda_linear(sd3_backend_t *be, sd3_tensor_t *y, const sd3_tensor_t *x,
                const sd3_tensor_t *w, const sd3_tensor_t *b, sd3_err_t *err)
{
    sd3_cuda_t *cu = (sd3_cuda_t *)be->impl;
    char sx[96], sw[96], sy[96];
    int64_t M, N, K;
    bool shape_ok, fused;
    if (sd3_cuda_check(x, "linear", "x", err) || sd3_cuda_check(y, "linear", "y", err) ||
        sd3_cuda_check(w, "linear", "weight", err))
        return SD3_EINVAL;
    if (x->dtype != SD3_BF16 || y->dtype != SD3_BF16 || w->dtype != SD3_BF16)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda linear: x %s, weight %s, y %s: want BF16 (pass weights "
                           "through weight())",
                           sd3_dtype_name(x->dtype), sd3_dtype_name(w->dtype),
                           sd3_dtype_name(y->dtype));
    K = sd3_tensor_cols(x);
    M = sd3_tensor_rows(x);
    N = w->ndim == 2 ? w->shape[0] : -1;
    shape_ok = w->ndim == 2 && w->shape[1] == K && y->ndim == x->ndim && sd3_tensor_cols(y) == N;
    for (int i = 0; shape_ok && i + 1 < x->ndim; i++)
        shape_ok = x->shape[i] == y->shape[i];
    if (!shape_ok)
        return sd3_err_set(err, SD3_EINVAL,
                           "cuda linear: x %s, weight %s, y %s: want [..., K], [N, K], [..., N]",
                           sd3_shape_str(x->ndim, x->shape, sx, sizeof sx),
                           sd3_shape_str(w->ndim, w->shape, sw, sizeof sw),
                           sd3_shape_str(y->ndim, y->shape, sy, sizeof sy));
    if (sd3_cuda_check_vec(b, N, "linear", "bias", err))
        return SD3_EINVAL;
    if (M == 0 || N == 0)
        return 0;
    if (x->data == y->data)
        return sd3_err_set(err, SD3_EINVAL, "cuda linear: y must not alias x");
    if (K == 0) { // an empty product: y = b or 0
        SD3_CUDA_TRY(cudaMemsetAsync(y->data, 0, sd3_tensor_nbytes(y), cu->stream), err);
        return b ? sd3_cuda_bias_rows(cu, y->data, y->dtype, b->data, b->dtype, M, N, err) : 0;
    }
    // the epilogue reads a bias of the output type; another dtype is added by a kernel
    fused = b && b->dtype == SD3_BF16;
    if (s_gemm(cu, N, M, K, 1, w->data, K, x->data, K, y->data, N, fused ? b->data : NULL, false,
               err) != 0) {
        sd3_err_prefix(err, "cuda linear [%lld,%lld]x[%lld,%lld]^T", (long long)M, (long long)K,
                       (long long)N, (long long)K);
        return err ? err->code : SD3_EDEVICE;
    }
    if (b && !fused)
        return sd3_cuda_bias_rows(cu, y->data, y->dtype, b->data, b->dtype, M, N, err);
    return 0;
fail:
    return err ? err->code : SD3_EDEVICE;
}
