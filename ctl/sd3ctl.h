/*  sd3ctl - the client: one verb per file (ctl/sd3ctl_<verb>.c)
 *
 *  Each verb is `int sd3ctl_<verb>(int argc, char **argv)` with argv[0] the verb name; it
 *  returns the process exit status (0 ok, 1 failed check, 2 bad usage or unusable input).
 *  Results go to stdout, diagnostics to stderr.  */
#pragma once
#include <stdbool.h>

#include "sd3_err.h"
#include "sd3_safetensors.h"
#include "sd3_tensor.h"

int sd3ctl_mkmodel(int argc, char **argv);
int sd3ctl_eval(int argc, char **argv);
int sd3ctl_bench(int argc, char **argv);
int sd3ctl_generate(int argc, char **argv);
int sd3ctl_convert(int argc, char **argv);
int sd3ctl_up(int argc, char **argv);
int sd3ctl_down(int argc, char **argv);
int sd3ctl_status(int argc, char **argv);
int sd3ctl_plan(int argc, char **argv);
int sd3ctl_keygen(int argc, char **argv);

/*  `sd3ctl bench WHAT`: sd3ctl_bench.c dispatches to one function per WHAT, each in the file
 *  of its area (argv[0] is WHAT). Benchmarks print figures; they are not tests.  */
int sd3_bench_ops(int argc, char **argv);      // ctl/sd3ctl_bench_ops.c
int sd3_bench_mmdit(int argc, char **argv);    // ctl/sd3ctl_bench_mmdit.c
int sd3_bench_encode(int argc, char **argv);   // ctl/sd3ctl_bench_encode.c
int sd3_bench_vae(int argc, char **argv);      // ctl/sd3ctl_bench_vae.c
int sd3_bench_generate(int argc, char **argv); // ctl/sd3ctl_bench_generate.c
int sd3_bench_cluster(int argc, char **argv);  // ctl/sd3ctl_bench_cluster.c
// Local cluster throughput for 1, 2, 4 stages and the controller's time per step; called by
// sd3_bench_cluster (ctl/sd3ctl_bench_pipeline.c).
int sd3_bench_pipeline(void);
// GFLOP/s of a plain OpenBLAS sgemm at M=N=K=`size` (best of a few runs), measured now: the
// peak every benchmark prints its figures against.
double sd3_bench_sgemm_peak(int size);
// GFLOP/s of a plain oneDNN bf16 matmul (f32 output, weights pre-packed) at M=N=K=`size` on
// every core (best of a few runs), measured now: the bf16 peak. 0 when oneDNN has no bf16
// kernel here.
double sd3_bench_bf16_peak(int size);
// Resident memory of this process now and at its peak (bytes), from /proc/self/status.
size_t sd3_bench_rss_now(void);
size_t sd3_bench_rss_peak(void);

// `sd3ctl generate --controller ADDR ...`: the same options, sent to a cluster.
int sd3ctl_generate_remote(int argc, char **argv);
// The embedded default model (written on first use); its path, or NULL + err.
const char *sd3ctl_default_model(sd3_err_t *err);

/*  The `sd3ctl eval` harness (TESTVECTORS.md). A component reads its inputs from the vectors
 *  file and hands every output to sd3_eval_check, which compares it with the stored tensor of
 *  the same name, prints one line and counts it.  */
typedef struct sd3_eval sd3_eval_t;

const char *sd3_eval_vectors_path(const sd3_eval_t *ev);
const sd3_st_t *sd3_eval_vectors(const sd3_eval_t *ev); // NULL when the vectors are not safetensors
const char *sd3_eval_model(const sd3_eval_t *ev);       // --model, or NULL
// --precision of the GEMMs ("f32" unless given: the golden files are checked exactly).
const char *sd3_eval_precision(const sd3_eval_t *ev);
// At precision bf16 an 8-bit image passes on PSNR (dB) instead of the +-1 byte rule:
// --psnr when given, else dflt. PSNR of n bytes (INFINITY when equal).
double sd3_eval_psnr(const sd3_eval_t *ev, double dflt);
double sd3_eval_psnr_u8(const uint8_t *a, const uint8_t *b, size_t n);
// The tolerance to use: --atol/--rtol when given, else the component's default.
double sd3_eval_atol(const sd3_eval_t *ev, double dflt);
double sd3_eval_rtol(const sd3_eval_t *ev, double dflt);
// Compares `got` (any float/int dtype, host) with the stored tensor `name`: shapes must
// match; passes when every |got - want| <= atol + rtol*|want|. Prints
// "name: max_abs=… max_rel=… atol=… ok|FAIL". Returns 0 when it passed, 1 when not.
int sd3_eval_check(sd3_eval_t *ev, const char *name, const sd3_tensor_t *got, double atol,
                   double rtol);
// Records a comparison done by the component itself (e.g. token ids) and prints its line.
void sd3_eval_record(sd3_eval_t *ev, const char *name, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// Loads input tensor `name` from the vectors file as an owned host f32 copy (any stored
// float dtype widened). NULL + err when absent.
sd3_tensor_t *sd3_eval_input(sd3_eval_t *ev, const char *name, sd3_err_t *err);

// One function per component (ctl/sd3ctl_eval_<area>.c). Return 0 when it ran (pass or fail
// is counted through sd3_eval_check), or an error (exit 2) when the file or model is unusable.
typedef int (*sd3_eval_fn)(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_noise(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_schedule(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_tokenize(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_clip_l(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_clip_g(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_t5(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_cond(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_mmdit(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_sampler(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_vae_decode(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_vae_encode(sd3_eval_t *ev, sd3_err_t *err);
int sd3_eval_pipeline(sd3_eval_t *ev, sd3_err_t *err);
