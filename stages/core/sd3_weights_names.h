/*  sd3_weights_names - the key mappings between checkpoint layouts (internal)
 *
 *  One table per direction would drift; here one table serves both: diffusers -> canonical
 *  for the reader (sd3_weights.c) and canonical -> diffusers for the writer
 *  (sd3_weights_write.c). Canonical = the official single-file name without the component
 *  prefix. Mappings: MODEL.md §3.2 (MMDiT), §6.4 (VAE); CLIP and T5 keep their names.
 *  Pure functions; thread-safe.  */
#pragma once
#include "sd3_weights.h"

#include <stdbool.h>
#include <stddef.h>

#define SD3_WNAME_MAX 192

typedef struct {
    int part;  // -1: the whole tensor; 0, 1, 2: the q / k / v row third of a fused qkv
    bool swap; // stored as [second half; first half] of the rows (2-chunk modulations)
    bool flat; // stored [c,c] where the canonical tensor is [c,c,1,1] (VAE attention)
} sd3_wname_xf_t;

// "model.diffusion_model.", "first_stage_model.", "text_encoders.clip_l.transformer.", ...
const char *sd3_wnames_single_prefix(sd3_component_t comp);
// Diffusers subfolder of a component: "transformer", "vae", "text_encoder", ...
const char *sd3_wnames_diffusers_dir(sd3_component_t comp);

// A diffusers key -> its canonical name and the transform from stored to canonical.
// last_block: index of the last transformer block (its norm1_context is swapped).
// Returns 0, or -1 when the key has no mapping (the caller keeps it under its own name).
int sd3_wnames_from_diffusers(sd3_component_t comp, const char *key, int last_block, char *out,
                              size_t cap, sd3_wname_xf_t *xf);
// A canonical name -> the diffusers key(s) holding it: 1, or 3 for a fused qkv (parts 0..2
// in order). Returns the count, or 0 when the name has no mapping (kept as it is).
int sd3_wnames_to_diffusers(sd3_component_t comp, const char *canon, int last_block,
                            char out[3][SD3_WNAME_MAX], sd3_wname_xf_t xf[3]);
// True when a key looks like diffusers naming of that component.
bool sd3_wnames_is_diffusers(sd3_component_t comp, const char *key);
