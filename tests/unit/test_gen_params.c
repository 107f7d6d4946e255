/*  test_gen_params - the defaults a request gets from the model (sd3_gen_params_init)
 *
 *  The reference's per-architecture settings, and a size the model can make: 1024x1024 on
 *  the real models (position table 192 = 3072 px), the largest square the table covers on
 *  a smaller one (the embedded tiny model: 13 -> 208x208), so `sd3ctl generate PROMPT`
 *  and a cluster request without a size run on any model (issue 16). Each default passes
 *  sd3_gen_params_check against the same config.  */
#include "sd3_stage.h"
#include "sd3_test.h"

#include <string.h>

// The defaults for cfg pass the checks for cfg, at want x want pixels.
static void
s_defaults(const char *what, const sd3_mmdit_config_t *cfg, int want, int steps, float cfg_scale,
           float shift)
{
    sd3_gen_params_t p;
    sd3_err_t err = {0};
    sd3_gen_params_init(&p, cfg);
    CHECK_MSG(p.width == want && p.height == want, "%s: default %dx%d, want %dx%d", what, p.width,
              p.height, want, want);
    CHECK_MSG(p.steps == steps && p.cfg == cfg_scale && p.shift == shift,
              "%s: steps %d cfg %g shift %g, want %d %g %g", what, p.steps, (double)p.cfg,
              (double)p.shift, steps, (double)cfg_scale, (double)shift);
    CHECK(sd3_gen_params_set_prompt(&p, "a cat", NULL, &err) == 0);
    int rc = sd3_gen_params_check(&p, cfg, &err);
    CHECK_MSG(rc == 0, "%s: the defaults fail their own check: %s", what, err.msg);
    sd3_gen_params_fini(&p);
}

int
main(void)
{
    sd3_mmdit_config_t medium = {.depth = 24, .pos_max = 192};
    sd3_mmdit_config_t large = {.depth = 38, .pos_max = 192, .qk_norm = true};
    sd3_mmdit_config_t medium35 = {
        .depth = 24, .pos_max = 384, .qk_norm = true, .attn2_mask = 0x1fff};
    sd3_mmdit_config_t tiny = {.depth = 2, .pos_max = 13};  // the embedded default
    sd3_mmdit_config_t exact = {.depth = 2, .pos_max = 64}; // covers exactly 1024
    sd3_mmdit_config_t one = {.depth = 1, .pos_max = 1};    // the smallest table
    s_defaults("sd3-medium", &medium, 1024, 50, 5.0f, 1.0f);
    s_defaults("sd3.5-large", &large, 1024, 40, 4.5f, 3.0f);
    s_defaults("sd3.5-medium", &medium35, 1024, 50, 5.0f, 3.0f);
    s_defaults("tiny sd3-medium", &tiny, 208, 50, 5.0f, 1.0f);
    s_defaults("pos_max 64", &exact, 1024, 50, 5.0f, 1.0f);
    s_defaults("pos_max 1", &one, 16, 50, 5.0f, 1.0f);
    // No config (a client before it knows the model): the reference's 1024x1024.
    sd3_gen_params_t p;
    sd3_gen_params_init(&p, NULL);
    CHECK(p.width == 1024 && p.height == 1024);
    sd3_gen_params_fini(&p);
    // A size the table does not cover is still refused, naming what it covers.
    sd3_err_t err = {0};
    sd3_gen_params_init(&p, &tiny);
    CHECK(sd3_gen_params_set_prompt(&p, "a cat", NULL, &err) == 0);
    p.width = p.height = 224;
    CHECK(sd3_gen_params_check(&p, &tiny, &err) == SD3_EINVAL);
    CHECK_MSG(strstr(err.msg, "at most 208x208") != NULL, "message: %s", err.msg);
    sd3_gen_params_fini(&p);
    return TEST_RESULT();
}
