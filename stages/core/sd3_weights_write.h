/*  sd3_weights_write - writes a whole checkpoint in any released layout, streaming
 *
 *  One writer for `sd3ctl mkmodel` (random weights from an sd3_arch_t) and `sd3ctl convert`
 *  (the tensors of an opened checkpoint): a source hands out canonical tensors piece by
 *  piece, and the writer lays them out as
 *    single     one file, prefixes model.diffusion_model. / first_stage_model. /
 *               text_encoders.{clip_l,clip_g,t5xxl}.transformer.       (-o is the file)
 *    sd3.5      <out>/<arch model file> (MMDiT + VAE) and <out>/text_encoders/{clip_l,
 *               clip_g, t5xxl_fp16 | t5xxl | t5xxl_fp8_e4m3fn}.safetensors    (-o a folder)
 *    diffusers  <out>/model_index.json, scheduler/, transformer/, vae/, text_encoder{,_2,_3}/
 *               with config.json files; a component above shard_bytes is split into shards
 *               with a *.safetensors.index.json. Tokenizer files come from opts.tok_writer.
 *  Memory stays at one chunk (1 Mi elements) whatever the model size. Files are written as
 *  `<name>.partial` and renamed when complete.  */
#pragma once
#include "sd3_arch.h"
#include "sd3_err.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stdint.h>

// Where canonical tensors come from.
typedef struct {
    void *ud;
    // Canonical tensors of a component (0 when the source lacks it); name/shape/dtype of #i.
    size_t (*count)(void *ud, sd3_component_t comp);
    int (*info)(void *ud, sd3_component_t comp, size_t i, const char **name, int *ndim,
                int64_t *shape, sd3_dtype_t *dtype);
    // Elements [off, off + n) of canonical tensor `name`, row-major, as `dtype`.
    int (*read)(void *ud, sd3_component_t comp, const char *name, size_t off, size_t n,
                sd3_dtype_t dtype, void *dst, sd3_err_t *err);
    // Optional: the writer is done with tensor `name` (a file source drops its pages).
    void (*done)(void *ud, sd3_component_t comp, const char *name);
} sd3_wsource_t;

// Writes tokenizer/, tokenizer_2/, tokenizer_3/ into a diffusers folder. The tokenizer
// engineer's sd3_tok_write_tiny_set(dir, err) (stages/encoder/sd3_tok.h) has this type.
typedef int (*sd3_tok_writer_fn)(const char *dir, sd3_err_t *err);

typedef struct {
    sd3_layout_t layout;
    const sd3_arch_t *arch;       // names the model file and fills the diffusers configs
    bool want[SD3_COMP_COUNT];    // components to write (when the source has them)
    sd3_dtype_t dtype;            // output dtype, or SD3_DTYPE_COUNT: keep each tensor's
    uint64_t shard_bytes;         // diffusers: max bytes per shard (0: 10 GB)
    sd3_tok_writer_fn tok_writer; // diffusers: may be NULL (no tokenizer folders then)
    const char *origin;           // "format" metadata note, e.g. "sd3ctl mkmodel ..."
} sd3_wwrite_opts_t;

// Fills opts with: all components, layout single, dtype keep, 10 GB shards, no tokenizers.
void sd3_wwrite_opts_init(sd3_wwrite_opts_t *opts, const sd3_arch_t *arch);

// Writes every wanted component of src at path `out` in opts->layout.
int sd3_weights_write(const sd3_wsource_t *src, const sd3_wwrite_opts_t *opts, const char *out,
                      sd3_err_t *err);

// The random source of mkmodel: every tensor of arch (see sd3_arch_tensors for the list and
// sd3_weights_write.c for the distributions). Values depend only on (seed, component,
// canonical name, element index), so every layout and dtype holds the same numbers.
// T5 also gets `shared.weight` (= encoder.embed_tokens.weight, as the released files).
typedef struct sd3_wrandom sd3_wrandom_t;
sd3_wrandom_t *sd3_wrandom_new(const sd3_arch_t *arch, uint64_t seed, sd3_dtype_t dtype,
                               sd3_err_t *err);
void sd3_wrandom_destroy(sd3_wrandom_t **self_p);
sd3_wsource_t sd3_wrandom_source(sd3_wrandom_t *self);

// The source of convert: the canonical tensors of an opened model (borrowed).
typedef struct sd3_wmodel sd3_wmodel_t;
sd3_wmodel_t *sd3_wmodel_new(sd3_model_t *model, sd3_err_t *err);
void sd3_wmodel_destroy(sd3_wmodel_t **self_p);
sd3_wsource_t sd3_wmodel_source(sd3_wmodel_t *self);

// `sd3ctl mkmodel` as a function: random weights of `arch` at `out`.
int sd3_weights_mkmodel(const sd3_arch_t *arch, const sd3_wwrite_opts_t *opts, uint64_t seed,
                        const char *out, sd3_err_t *err);
// `sd3ctl convert` as a function: the checkpoint at `in` rewritten at `out`. opts->arch may
// be NULL (then it is detected from the shapes with sd3_arch_from_model).
int sd3_weights_convert(const char *in, const sd3_wwrite_opts_t *opts, const char *out,
                        sd3_err_t *err);
