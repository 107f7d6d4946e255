# The one-process pipeline: e2e golden cases through `sd3ctl eval pipeline` and through
# `sd3ctl generate` itself; the generate CLI's answers to bad input.
set(_e2e_single tiny-sd3-medium-incl-clips-t5.safetensors)
foreach(c sd3m-euler sd3m-dpmpp2m sd3m-img2img)
  sd3_eval_test(golden_pipeline_${c} LABELS golden
                ARGS pipeline --model @e2e/${_e2e_single} --vectors @e2e/case-${c}.safetensors)
endforeach()
sd3_eval_test(golden_pipeline_sd35m-slg LABELS golden
              ARGS pipeline --model @e2e/tiny-sd3.5-medium --vectors @e2e/case-sd35m-slg.safetensors)
# The diffusers twin (sharded transformer, diffusers names) gives the same results.
foreach(c sd3m-euler sd3m-img2img)
  sd3_eval_test(golden_pipeline_diffusers_${c} LABELS golden
                ARGS pipeline --model @e2e/tiny-sd3-medium-diffusers --vectors @e2e/case-${c}.safetensors)
endforeach()
sd3_test(test_generate_golden ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_generate_golden.c LABELS golden)
sd3_test(test_generate_cli ${CMAKE_CURRENT_SOURCE_DIR}/e2e/test_generate_cli.c LABELS unit)
