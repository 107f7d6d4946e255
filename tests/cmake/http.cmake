# HTTP API tests (daemon/controller/sd3_http*, sd3_metrics). The unit ones
# (tests/unit/test_http_json.c, test_metrics.c) register themselves.
# Included from tests/CMakeLists.txt: sd3_test() and CMAKE_CURRENT_SOURCE_DIR are tests/.

# Replays the seed corpus and past crashers through the body parsers and reply renderers.
sd3_test(fuzz_http_body fuzz/fuzz_http_body.c LABELS fuzz TIMEOUT 120
         ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus-http)

# End to end against a real controller (sd3d) with real clients: curl, python3's json, the
# official `openai` npm package (tests/http/setup.sh installs it), promtool. Skips (77) with
# a message when sd3d or a tool is missing.
if(TARGET sd3d)
  add_test(NAME http_api
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/http/run.sh $<TARGET_FILE:sd3d>
                   $<TARGET_FILE:sd3ctl>)
  set_tests_properties(http_api PROPERTIES LABELS cluster TIMEOUT 300 SKIP_RETURN_CODE 77
                       ENVIRONMENT "SD3_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endif()

# `sd3d --http-token-file`: 401 without or with a wrong token, the image with the file's
# token, exit 2 on a missing or empty file. Skips (77) without curl or python3.
if(TARGET sd3d)
  add_test(NAME http_token_file
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/http/token_file.sh $<TARGET_FILE:sd3d>
                   $<TARGET_FILE:sd3ctl>)
  set_tests_properties(http_token_file PROPERTIES LABELS cluster TIMEOUT 120 SKIP_RETURN_CODE 77)
endif()

# -DSD3_FUZZ=ON (clang): the libFuzzer binary, with the parsers compiled in with coverage:
#   ./build/tests/fuzz_http_body_lf -max_total_time=60 tests/fuzz/corpus-http
if(SD3_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
  set(SD3_HTTP_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
  add_executable(fuzz_http_body_lf
    ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_http_body.c
    ${CMAKE_SOURCE_DIR}/daemon/controller/sd3_http_json.c
    ${CMAKE_SOURCE_DIR}/stages/vae/sd3_png.c
    ${CMAKE_SOURCE_DIR}/daemon/base/sd3_err.c)
  target_compile_definitions(fuzz_http_body_lf PRIVATE SD3_LIBFUZZER=1)
  target_compile_options(fuzz_http_body_lf PRIVATE ${SD3_HTTP_FUZZ_FLAGS})
  target_link_options(fuzz_http_body_lf PRIVATE ${SD3_HTTP_FUZZ_FLAGS})
  target_link_libraries(fuzz_http_body_lf PRIVATE PkgConfig::CJSON PkgConfig::SPNG m)
endif()

# The server in-process against a fake controller thread, with the real clients of
# tests/http/clients.sh (curl, python3, node + openai, promtool; each skipped when absent).
# No sd3d, but sockets and client processes: labelled with the cluster tests.
sd3_test(test_http_server http/test_http_server.c LABELS cluster TIMEOUT 120)
