# VAE (stages/vae/sd3_vae): golden decode and encode against TESTVECTORS-enc.md §5 through
# `sd3ctl eval` (every out.* at 2e-4, out.image_u8 +-1 on <= 0.1 % of bytes). The same VAE
# tensors in the released layouts (first_stage_model.* in the e2e single file, the diffusers
# vae/ folder, the SD3.5 file) must give the same outputs. tests/unit/test_png.c and
# tests/unit/test_vae_*.c register themselves.
sd3_eval_test(golden_vae_decode LABELS golden
              ARGS vae_decode --model @enc/tiny-vae.safetensors
                   --vectors @enc/vae-decode.safetensors)
sd3_eval_test(golden_vae_encode LABELS golden
              ARGS vae_encode --model @enc/tiny-vae.safetensors
                   --vectors @enc/vae-encode.safetensors)
sd3_eval_test(golden_vae_decode_single LABELS golden
              ARGS vae_decode --model @e2e/tiny-sd3-medium-incl-clips-t5.safetensors
                   --vectors @enc/vae-decode.safetensors)
sd3_eval_test(golden_vae_encode_diffusers LABELS golden
              ARGS vae_encode --model @e2e/tiny-sd3-medium-diffusers
                   --vectors @enc/vae-encode.safetensors)
sd3_eval_test(golden_vae_decode_diffusers LABELS golden
              ARGS vae_decode --model @e2e/tiny-sd3-medium-diffusers
                   --vectors @enc/vae-decode.safetensors)
sd3_eval_test(golden_vae_encode_sd35 LABELS golden
              ARGS vae_encode --model @e2e/tiny-sd3.5-medium
                   --vectors @enc/vae-encode.safetensors)
