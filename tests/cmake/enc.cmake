# Text encoders and conditioning (stages/encoder/sd3_{clip,t5,cond}): golden tests against
# TESTVECTORS-enc.md §3-4 through `sd3ctl eval`. tests/unit/test_embcache.c registers itself.
sd3_eval_test(golden_enc_clip_l LABELS golden
              ARGS clip_l --model @enc/tiny-clip-l.safetensors --vectors @enc/clip-l.safetensors)
sd3_eval_test(golden_enc_clip_g LABELS golden
              ARGS clip_g --model @enc/tiny-clip-g.safetensors --vectors @enc/clip-g.safetensors)
sd3_eval_test(golden_enc_t5 LABELS golden
              ARGS t5 --model @enc/tiny-t5.safetensors --vectors @enc/t5.safetensors)
sd3_eval_test(golden_enc_cond LABELS golden
              ARGS cond --model @enc/ --vectors @enc/cond.safetensors)
# The same encoder tensors in the released layouts give the same conditioning
# (TESTVECTORS.md, note 1): the SD3.5 split files and the single file with text encoders.
sd3_eval_test(golden_enc_cond_sd35 LABELS golden
              ARGS cond --model @e2e/tiny-sd3.5-medium --vectors @enc/cond.safetensors)
sd3_eval_test(golden_enc_cond_single LABELS golden
              ARGS cond --model @e2e/tiny-sd3-medium-incl-clips-t5.safetensors
                   --vectors @enc/cond.safetensors)
sd3_eval_test(golden_enc_cond_diffusers LABELS golden
              ARGS cond --model @e2e/tiny-sd3-medium-diffusers --vectors @enc/cond.safetensors)
