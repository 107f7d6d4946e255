/*  test_vae_tiled - tiled decode against the whole decode on a size where both fit
 *
 *  A random VAE of the tiny golden architecture (levels 32/64/128/128, 16 latent channels)
 *  decodes a 20x20 latent (160x160 image) whole and in tiles. GroupNorm and the mid
 *  attention see only their tile, so tiles differ from the whole decode; the blend must
 *  keep that difference small and leave no seam:
 *  - a tile at least as large as the latent gives the same bits as no tiling;
 *  - with no overlap, the pixels of one tile are that tile's own decode, bit for bit;
 *  - seams: the mean jump between neighbouring pixels of (tiled - whole) is no larger at
 *    tile edges than inside tiles (with no overlap it is twice as large: the check works);
 *  - the max / mean difference to the whole decode stays under the bounds below.  */
#include "sd3_test.h"
#include "sd3_vae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { B = 1, Z = 16, LS = 20, S = 8 * LS }; // latent and image side
#define BLEND_MAX  4.25                      // measured 3.40 (seed 3 model, seed 5 latent)
#define BLEND_MEAN 0.60                      // measured 0.445

typedef struct {
    double max, mean;
    double seam_jump,
        inner_jump; // mean |e(p+1) - e(p)|, e = tiled - whole: at tile edges / elsewhere
} s_diff_t;

// Marks the image pixels p where a tile starts (p) or ends (p+1 starts the next region):
// the tiles of `tile` latent pixels overlapping by `overlap` as sd3_vae places them (steps
// of tile - overlap, the last one flush with the end).
static void
s_edges(int tile, int overlap, bool *edge)
{
    memset(edge, 0, S * sizeof *edge);
    for (int s = 0;; s += tile - overlap) {
        int a = s + tile >= LS ? LS - tile : s;
        if (a > 0)
            edge[8 * a - 1] = true;
        if (a + tile < LS)
            edge[8 * (a + tile) - 1] = true;
        if (s + tile >= LS)
            break;
    }
}

static s_diff_t
s_compare(const float *tiled, const float *whole, const bool *edge)
{
    s_diff_t r = {0};
    double sum = 0, n_seam = 0, n_inner = 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                size_t i = ((size_t)c * S + y) * S + x;
                double d = tiled[i] - whole[i];
                sum += fabs(d);
                r.max = fmax(r.max, fabs(d));
                if (x + 1 < S) {
                    double j = fabs((tiled[i + 1] - whole[i + 1]) - d);
                    *(edge[x] ? &r.seam_jump : &r.inner_jump) += j;
                    *(edge[x] ? &n_seam : &n_inner) += 1;
                }
                if (y + 1 < S) {
                    double j = fabs((tiled[i + S] - whole[i + S]) - d);
                    *(edge[y] ? &r.seam_jump : &r.inner_jump) += j;
                    *(edge[y] ? &n_seam : &n_inner) += 1;
                }
            }
    r.mean = sum / (3.0 * S * S);
    r.seam_jump /= n_seam > 0 ? n_seam : 1;
    r.inner_jump /= n_inner > 0 ? n_inner : 1;
    return r;
}

int
main(void)
{
    sd3_err_t err = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/vae-tiny.safetensors", sd3_test_tmpdir());
    CHECK_MSG(sd3_vae_write_random(path, (int[]){32, 64, 128, 128}, 4, Z, SD3_F16, 3, &err) == 0,
              "%s", err.msg);
    sd3_backend_t *be = sd3_backend_new("cpu", 2, &err);
    sd3_vae_t *vae = be ? sd3_vae_open(path, be, &err) : NULL;
    CHECK_MSG(vae, "%s", err.msg);
    if (!vae) {
        sd3_backend_destroy(&be);
        return TEST_RESULT();
    }
    sd3_tensor_t *z = sd3_tensor_new(SD3_F32, 4, (int64_t[]){B, Z, LS, LS});
    sd3_tensor_t *whole = sd3_tensor_new(SD3_F32, 4, (int64_t[]){B, 3, S, S});
    sd3_tensor_t *tiled = sd3_tensor_new(SD3_F32, 4, (int64_t[]){B, 3, S, S});
    unsigned long long seed = 5;
    // A smooth latent plus noise, like a sampler's output (a pure-noise latent would make
    // every tile's statistics equal and hide what the blend must handle).
    float *zp = z->data;
    for (int c = 0; c < Z; c++)
        for (int y = 0; y < LS; y++)
            for (int x = 0; x < LS; x++)
                zp[(c * LS + y) * LS + x] =
                    1.2f * sinf(0.3f * (float)(x + 2 * c)) * cosf(0.25f * (float)y) +
                    0.5f * sd3_test_randf(&seed);
    CHECK_MSG(sd3_vae_decode(vae, z, whole, NULL, &err) == 0, "%s", err.msg);

    // 1. One tile covering the latent: the same bits as no tiling.
    CHECK(sd3_vae_decode(vae, z, tiled, &(sd3_vae_tile_t){.tile = LS, .overlap = 8}, &err) == 0);
    CHECK(!memcmp(tiled->data, whole->data, sd3_tensor_nbytes(whole)));

    // 2. Hard seams: two tiles of 10 a side, no overlap.
    bool edge[S];
    s_edges(10, 0, edge);
    CHECK_MSG(sd3_vae_decode(vae, z, tiled, &(sd3_vae_tile_t){.tile = 10, .overlap = 0}, &err) == 0,
              "%s", err.msg);
    s_diff_t hard = s_compare(tiled->data, whole->data, edge);
    // Placement: with no overlap, the pixels only tile (0, 0) covers are that tile's own
    // decode, bit for bit.
    sd3_tensor_t *zt = sd3_tensor_new(SD3_F32, 4, (int64_t[]){B, Z, 10, 10});
    sd3_tensor_t *it = sd3_tensor_new(SD3_F32, 4, (int64_t[]){B, 3, 80, 80});
    for (int c = 0; c < Z; c++)
        for (int y = 0; y < 10; y++)
            memcpy(sd3_tensor_f32(zt) + (c * 10 + y) * 10, zp + (c * LS + y) * LS, 10 * 4);
    CHECK(sd3_vae_decode(vae, zt, it, NULL, &err) == 0);
    int placed_off = 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 80; y++)
            placed_off += memcmp(sd3_tensor_f32(it) + (c * 80 + y) * 80,
                                 sd3_tensor_f32(tiled) + (c * S + y) * S, 80 * 4) != 0;
    CHECK_MSG(placed_off == 0, "%d rows of tile (0,0) differ from its own decode", placed_off);
    sd3_tensor_destroy(&zt);
    sd3_tensor_destroy(&it);
    // 3. Blended: tiles of 8 overlapping by 4 (origins 0, 4, 8, 12).
    s_edges(8, 4, edge);
    CHECK_MSG(sd3_vae_decode(vae, z, tiled, &(sd3_vae_tile_t){.tile = 8, .overlap = 4}, &err) == 0,
              "%s", err.msg);
    s_diff_t blend = s_compare(tiled->data, whole->data, edge);
    double range = 0;
    for (int64_t i = 0; i < sd3_tensor_numel(whole); i++)
        range = fmax(range, fabs(sd3_tensor_f32(whole)[i]));
    printf("whole decode max |x| %.3f\n", range);
    printf("tile 10 overlap 0: max diff %.4f mean %.5f seam jump %.4f inner jump %.4f\n", hard.max,
           hard.mean, hard.seam_jump, hard.inner_jump);
    printf("tile 8 overlap 4: max diff %.4f mean %.5f seam jump %.4f inner jump %.4f\n", blend.max,
           blend.mean, blend.seam_jump, blend.inner_jump);
    // The check sees hard seams; the blend leaves none: the difference to the whole decode
    // jumps no more across tile edges than between neighbouring pixels inside a tile.
    CHECK_MSG(hard.seam_jump > 1.5 * hard.inner_jump, "the seam check cannot see hard seams");
    // (measured: hard 0.485 vs 0.220 inside; blended 0.238 vs 0.221)
    CHECK_MSG(blend.seam_jump <= 1.25 * blend.inner_jump, "seam at the tile edges: %.4f vs %.4f",
              blend.seam_jump, blend.inner_jump);
    // Bounds on the difference to the whole decode. Random weights make this a hard case:
    // GroupNorm and the mid attention see one tile, and an untrained VAE is far less local
    // than the released one, so tiles differ from the whole decode everywhere, not only
    // near their edges. The bounds sit ~1.3x over what this seed gives.
    CHECK_MSG(blend.max < BLEND_MAX, "blended max diff %.4f, bound %.2f", blend.max, BLEND_MAX);
    CHECK_MSG(blend.mean < BLEND_MEAN, "blended mean diff %.5f, bound %.3f", blend.mean,
              BLEND_MEAN);

    sd3_tensor_destroy(&z);
    sd3_tensor_destroy(&whole);
    sd3_tensor_destroy(&tiled);
    sd3_vae_destroy(&vae);
    sd3_backend_destroy(&be);
    remove(path);
    return TEST_RESULT();
}
