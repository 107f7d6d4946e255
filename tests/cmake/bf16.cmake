# Golden files at precision bf16 (issue 14 item 4): the same `sd3ctl eval` runs as the f32
# golden tests, with --precision bf16 and tolerances set from the errors measured against
# the reference's f32 outputs (ARCHITECTURE.md "Fidelity in bf16": about 2x the worst
# measured max_abs of each run, images 6-12 dB under the measured PSNR). A regression past
# them fails; the f32 tests keep their exact tolerances. Skip (77) on a CPU without a
# bf16 kernel in oneDNN.
foreach(v tiny-sd3-medium tiny-sd3.5-large tiny-sd3.5-medium)
  sd3_eval_test(golden_bf16_mmdit_${v} LABELS golden
                ARGS mmdit --model @dit/${v}.safetensors --vectors @dit/mmdit-${v}.safetensors
                     --precision bf16 --atol 0.04)
endforeach()
foreach(v tiny-sd3-medium tiny-sd3.5-medium)
  sd3_eval_test(golden_bf16_sampler_${v} LABELS golden
                ARGS sampler --model @dit/${v}.safetensors --vectors @dit/sampler-${v}.safetensors
                     --precision bf16 --atol 0.6)
endforeach()
sd3_eval_test(golden_bf16_enc_clip_l LABELS golden
              ARGS clip_l --model @enc/tiny-clip-l.safetensors --vectors @enc/clip-l.safetensors
                   --precision bf16 --atol 0.05)
sd3_eval_test(golden_bf16_enc_clip_g LABELS golden
              ARGS clip_g --model @enc/tiny-clip-g.safetensors --vectors @enc/clip-g.safetensors
                   --precision bf16 --atol 0.05)
sd3_eval_test(golden_bf16_enc_t5 LABELS golden
              ARGS t5 --model @enc/tiny-t5.safetensors --vectors @enc/t5.safetensors
                   --precision bf16 --atol 0.06)
sd3_eval_test(golden_bf16_enc_cond LABELS golden
              ARGS cond --model @enc/ --vectors @enc/cond.safetensors --precision bf16 --atol 0.06)
sd3_eval_test(golden_bf16_vae_decode LABELS golden
              ARGS vae_decode --model @enc/tiny-vae.safetensors --vectors @enc/vae-decode.safetensors
                   --precision bf16 --atol 0.3 --psnr 43)
sd3_eval_test(golden_bf16_vae_encode LABELS golden
              ARGS vae_encode --model @enc/tiny-vae.safetensors --vectors @enc/vae-encode.safetensors
                   --precision bf16 --atol 0.2)
foreach(c sd3m-euler sd3m-dpmpp2m sd3m-img2img)
  sd3_eval_test(golden_bf16_pipeline_${c} LABELS golden
                ARGS pipeline --model @e2e/tiny-sd3-medium-incl-clips-t5.safetensors
                     --vectors @e2e/case-${c}.safetensors --precision bf16 --atol 0.15 --psnr 38)
endforeach()
sd3_eval_test(golden_bf16_pipeline_sd35m-slg LABELS golden
              ARGS pipeline --model @e2e/tiny-sd3.5-medium --vectors @e2e/case-sd35m-slg.safetensors
                   --precision bf16 --atol 0.6 --psnr 35)
