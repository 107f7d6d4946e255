# tok: the CLIP/T5 tokenizers and the reference's prompt rules (TESTVECTORS-enc.md §1).
# Golden: every prompt of enc/tokens.json, exact, with the tokenizers/ folder (clip/ holds
# openai's .gz) and with the diffusers folder (vocab.json + merges.txt, spiece.model).
sd3_eval_test(golden_tokenize LABELS golden
              ARGS tokenize --model @tokenizers --vectors @enc/tokens.json)
sd3_eval_test(golden_tokenize_diffusers LABELS golden
              ARGS tokenize --model @e2e/tiny-sd3-medium-diffusers --vectors @enc/tokens.json)
# Fuzz: replays tests/fuzz/corpus-tok (seeds and past crashers) through every tokenizer.
# -DSD3_FUZZ=ON builds tests/fuzz/fuzz_tokenizers.c as a libFuzzer binary by hand, see its
# header comment.
sd3_test(fuzz_tokenizers fuzz/fuzz_tokenizers.c LABELS fuzz TIMEOUT 120
         ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus-tok)
