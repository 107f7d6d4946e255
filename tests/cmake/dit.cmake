# dit: noise, schedule, MMDiT forward, sampler (TESTVECTORS-dit.md). Golden data via run_eval.sh
# (@ = relative to the test-data folder); each skips (77) when the data is absent.
sd3_eval_test(golden_noise LABELS golden ARGS noise --vectors @dit/noise.safetensors)
sd3_eval_test(golden_schedule LABELS golden ARGS schedule --vectors @dit/schedule.safetensors)
foreach(v tiny-sd3-medium tiny-sd3.5-large tiny-sd3.5-medium)
  sd3_eval_test(golden_mmdit_${v} LABELS golden
                ARGS mmdit --model @dit/${v}.safetensors --vectors @dit/mmdit-${v}.safetensors)
endforeach()
foreach(v tiny-sd3-medium tiny-sd3.5-medium)
  sd3_eval_test(golden_sampler_${v} LABELS golden
                ARGS sampler --model @dit/${v}.safetensors --vectors @dit/sampler-${v}.safetensors)
endforeach()
# Layer ranges: every split of the blocks gives bit-identical out.x.
sd3_test(golden_mmdit_split golden/test_mmdit_split.c LABELS golden)
# The diffusers folder (sharded, diffusers names) gives the same bits as the single file.
sd3_test(golden_mmdit_diffusers golden/test_mmdit_split.c LABELS golden ARGS diffusers)
