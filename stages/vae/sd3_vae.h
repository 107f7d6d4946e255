/*  sd3_vae - the 16-channel SD3 autoencoder: decoder, encoder, tiled decode (MODEL.md §6)
 *
 *  Turns the sampler's latent into pixels (txt2img, the last stage of the pipeline) and
 *  pixels into a start latent (img2img). The architecture is read from the checkpoint
 *  shapes, never from constants: channels per level from the conv shapes (tiny VAE
 *  [32,64,128,128], real VAE [128,256,512,512]), resblocks per level from the keys present,
 *  the latent channels from decoder.conv_in / encoder.conv_out. GroupNorm is 32 groups, eps
 *  1e-6; the mid attention is one head over the h*w tokens with scale 1/sqrt(c).
 *  All compute runs through the backend op table; the one data move it lacks (transposing
 *  [B,C,N] <-> [B,N,C] around the mid attention) is done on host memory (a download/upload
 *  round trip on a device backend).
 *
 *  Two spaces of latents (MODEL.md §6.5):
 *    sampler space: what the MMDiT sampler starts from and ends with;
 *    VAE space:     z_vae = z / 1.5305 + 0.0609 (process_out), z = (z_vae - 0.0609) * 1.5305
 *                   (process_in).
 *  sd3_vae_decode / sd3_vae_encode_moments work in VAE space; the *_rgb8 calls the pipeline
 *  uses take and return sampler space and apply the scale/shift themselves.
 *
 *  Shapes: B batch, Z = 16 latent channels, h, w latent size, H = 8h, W = 8w image size.
 *  Weights are borrowed from an sd3_weights_t (views into its mmap); decoder and encoder
 *  weights are resolved on first use, so a decode-only stage touches no encoder tensor.
 *  Thread: one sd3_vae_t is used by one thread at a time (like its backend).  */
#pragma once
#include "sd3_backend.h"
#include "sd3_err.h"
#include "sd3_tensor.h"
#include "sd3_weights.h"

#include <stdbool.h>
#include <stdint.h>

#define SD3_VAE_MAX_LEVELS 8
#define SD3_VAE_MAX_BLOCKS 8
#define SD3_VAE_SCALE      1.5305f // SD3LatentFormat.scale_factor
#define SD3_VAE_SHIFT      0.0609f // SD3LatentFormat.shift_factor
#define SD3_VAE_GROUPS     32
#define SD3_VAE_EPS        1e-6f
#define SD3_VAE_MAX_SIDE   16384 // image pixels per side accepted by the *_rgb8 calls

// What the checkpoint holds, read from its shapes.
typedef struct {
    int z_channels;                     // 16
    int image_channels;                 // 3
    int n_levels;                       // 4
    int channels[SD3_VAE_MAX_LEVELS];   // block_out_channels, level 0 first
    int dec_blocks[SD3_VAE_MAX_LEVELS]; // resblocks of decoder.up.i (3 in SD3)
    int enc_blocks[SD3_VAE_MAX_LEVELS]; // resblocks of encoder.down.i (2 in SD3)
    int factor;                         // image pixels per latent pixel, per side (8)
    bool has_decoder, has_encoder;
    int64_t n_params; // parameters of the parts present
} sd3_vae_config_t;

// Tiled decode: tiles of `tile` x `tile` latent pixels overlapping by `overlap` (0 <=
// overlap < tile); overlaps are blended with linear ramps, so there is no seam. A latent
// that fits in one tile is decoded whole.
typedef struct {
    int tile;    // latent pixels per side (image pixels = 8 * tile); 0 = no tiling
    int overlap; // latent pixels shared by neighbouring tiles
} sd3_vae_tile_t;

typedef struct sd3_vae sd3_vae_t;

// Builds a VAE over `weights` (component SD3_COMP_VAE, canonical names "decoder.*",
// "encoder.*"). Borrows weights and backend; both must outlive the VAE. Fails with
// SD3_EFORMAT naming the tensor when a shape does not fit the architecture.
sd3_vae_t *sd3_vae_new(sd3_weights_t *weights, sd3_backend_t *be, sd3_err_t *err);
// Opens a checkpoint path holding a VAE (tiny-vae file, a single official file with
// first_stage_model.*, an SD3.5 folder or a diffusers folder) and builds the VAE; the
// VAE owns what it opened. The backend is borrowed.
sd3_vae_t *sd3_vae_open(const char *path, sd3_backend_t *be, sd3_err_t *err);
void sd3_vae_destroy(sd3_vae_t **self_p);
const sd3_vae_config_t *sd3_vae_config(const sd3_vae_t *self);

// Intermediates for the eval harness: called with a host f32 tensor (valid during the
// call) after "conv_in", "mid", "up.<i>" (decoder, after level i's upsample) or "down.<i>"
// (encoder, after level i's downsample), prefixed "dec." or "enc.". NULL fn = none.
typedef void (*sd3_vae_tap_fn)(void *user, const char *name, const sd3_tensor_t *t);
void sd3_vae_set_tap(sd3_vae_t *self, sd3_vae_tap_fn fn, void *user);

// ---- VAE space -------------------------------------------------------------------------
// Decoder.  z: host f32 [B, Z, h, w] (VAE space)   image: host f32 [B, 3, 8h, 8w], about
// [-1, 1] (not clamped). tile: NULL or tile->tile == 0 decodes whole.
int sd3_vae_decode(sd3_vae_t *self, const sd3_tensor_t *z, sd3_tensor_t *image,
                   const sd3_vae_tile_t *tile, sd3_err_t *err);
// Encoder.  image: host f32 [B, 3, H, W] in [-1, 1], H and W multiples of 2^(levels-1)
// moments: host f32 [B, 2Z, H/8, W/8] (mean ‖ logvar, logvar not clamped yet).
int sd3_vae_encode_moments(sd3_vae_t *self, const sd3_tensor_t *image, sd3_tensor_t *moments,
                           sd3_err_t *err);

// ---- pure helpers (host f32, no backend) -----------------------------------------------
// In place over n values: z / 1.5305 + 0.0609.
void sd3_vae_process_out(float *z, size_t n);
// In place over n values: (z - 0.0609) * 1.5305.
void sd3_vae_process_in(float *z, size_t n);
// From moments [B, 2Z, h, w]: mean, logvar = clamp(moments[Z:], -30, 20),
// std = exp(0.5 logvar), sample = mean + std * noise. Each output [B, Z, h, w] may be NULL;
// noise may be NULL (sample = mean).
int sd3_vae_moments_split(const sd3_tensor_t *moments, const sd3_tensor_t *noise,
                          sd3_tensor_t *mean, sd3_tensor_t *logvar, sd3_tensor_t *std,
                          sd3_tensor_t *sample, sd3_err_t *err);
// image [1, 3, H, W] f32 -> rgb H*W*3 bytes HWC: u8 = trunc(255 * clamp((x+1)/2, 0, 1)),
// in f32, truncating like the reference's float->uint8 cast.
void sd3_vae_image_to_rgb8(const float *image, int height, int width, uint8_t *rgb);
// rgb H*W*3 bytes HWC -> image [1, 3, H, W]: x = 2 * (u8 / 255) - 1 in f32.
void sd3_vae_rgb8_to_image(const uint8_t *rgb, int height, int width, float *image);

// ---- the pipeline's calls (sampler space) -----------------------------------------------
// latent: host f32 [1, Z, h, w], the sampler's output BEFORE process_out (applied here).
// Returns a fresh host U8 tensor [8h, 8w, 3] (HWC RGB8; destroy it), or NULL + err.
sd3_tensor_t *sd3_vae_decode_rgb8(sd3_vae_t *self, const sd3_tensor_t *latent,
                                  const sd3_vae_tile_t *tile, sd3_err_t *err);
// rgb: host U8 [H, W, 3] (H, W multiples of 8); noise: host f32 [1, Z, H/8, W/8], or NULL
// for the mean. Returns a fresh host f32 [1, Z, H/8, W/8] in sampler space (process_in
// applied: what img2img starts from), or NULL + err.
sd3_tensor_t *sd3_vae_encode_rgb8(sd3_vae_t *self, const sd3_tensor_t *rgb,
                                  const sd3_tensor_t *noise, sd3_err_t *err);

// ---- random models (tests, `sd3ctl bench vae`) ---------------------------------------------
// Writes a VAE with random weights in the official single-file layout
// ("first_stage_model.{encoder,decoder}.*", the released architecture: levels with
// `channels[0..n_levels)`, 2 resblocks per encoder level and 3 per decoder level, resample
// between levels, z_channels latent channels, 3 image channels). Weights ~ U(-a, a) with
// variance 1/fan_in, norms ~1, biases small; stored as `dtype` (F16 or F32). Deterministic
// in `seed`. Streams to disk: real size (84M parameters) needs no more than one tensor of
// memory.
int sd3_vae_write_random(const char *path, const int *channels, int n_levels, int z_channels,
                         sd3_dtype_t dtype, uint64_t seed, sd3_err_t *err);
