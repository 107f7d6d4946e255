/*  sd3_vae_stage - the VAE stage: latent -> RGB8 -> PNG, and RGB8 -> latent (img2img)  */
#include <stdlib.h>
#include <string.h>

#include "sd3_png.h"
#include "sd3_stage.h"

struct sd3_vae_stage {
    sd3_vae_t *vae;
};

sd3_vae_stage_t *
sd3_vae_stage_new(sd3_backend_t *be, sd3_weights_t *weights, sd3_err_t *err)
{
    sd3_vae_stage_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "vae stage: out of memory");
        return NULL;
    }
    if (!(self->vae = sd3_vae_new(weights, be, err))) {
        free(self);
        return NULL;
    }
    return self;
}

void
sd3_vae_stage_destroy(sd3_vae_stage_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_vae_destroy(&(*self_p)->vae);
    free(*self_p);
    *self_p = NULL;
}

sd3_vae_t *
sd3_vae_stage_vae(sd3_vae_stage_t *self)
{
    return self->vae;
}

int
sd3_vae_stage_decode(sd3_vae_stage_t *self, const sd3_tensor_t *latent,
                     const sd3_vae_tile_t *tile, const char *infotext, sd3_tensor_t **rgb_p,
                     uint8_t **png_p, size_t *png_size, sd3_err_t *err)
{
    *rgb_p = sd3_vae_decode_rgb8(self->vae, latent, tile, err);
    if (!*rgb_p)
        return err->code ? err->code : SD3_EINTERNAL;
    if (png_p) {
        const sd3_tensor_t *rgb = *rgb_p;
        int rc = sd3_png_encode(rgb->data, (int)rgb->shape[1], (int)rgb->shape[0], infotext,
                                png_p, png_size, err);
        if (rc != 0) {
            sd3_tensor_destroy(rgb_p);
            return rc;
        }
    }
    return 0;
}

int
sd3_vae_stage_encode(sd3_vae_stage_t *self, const sd3_tensor_t *rgb, const sd3_tensor_t *noise,
                     sd3_tensor_t **latent_p, sd3_err_t *err)
{
    *latent_p = sd3_vae_encode_rgb8(self->vae, rgb, noise, err);
    return *latent_p ? 0 : (err->code ? err->code : SD3_EINTERNAL);
}
