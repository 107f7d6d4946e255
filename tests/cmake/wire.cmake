# Wire layer tests beyond the unit ones (tests/unit/test_codec.c, test_wire.c glob in).
# Included from tests/CMakeLists.txt: sd3_test() and CMAKE_CURRENT_SOURCE_DIR are tests/.

# Replays the seed corpus and past crashers through the envelope + tensor-frame decoder.
sd3_test(fuzz_envelope fuzz/fuzz_envelope.c LABELS fuzz TIMEOUT 120
         ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus-envelope)

# -DSD3_FUZZ=ON (clang): the libFuzzer binary. The wire sources are compiled into it with
# coverage so the fuzzer sees inside the decoder, not only the entry point:
#   ./build/tests/fuzz_envelope_lf -max_total_time=60 tests/fuzz/corpus-envelope
if(SD3_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(WARNING "SD3_FUZZ needs clang (CC=clang); fuzz_envelope_lf not built")
  else()
    set(SD3_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
    add_executable(fuzz_envelope_lf
      ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_envelope.c
      ${CMAKE_SOURCE_DIR}/daemon/wire/sd3_wire.c
      ${CMAKE_SOURCE_DIR}/daemon/wire/sd3_codec.c
      ${CMAKE_SOURCE_DIR}/daemon/wire/sd3_wire_bad.c
      ${CMAKE_SOURCE_DIR}/stages/core/sd3_tensor.c
      ${CMAKE_SOURCE_DIR}/stages/core/sd3_dtype.c
      ${CMAKE_SOURCE_DIR}/daemon/base/sd3_err.c
      ${SD3_PROTO_OUT}/sd3.pb-c.c)
    add_dependencies(fuzz_envelope_lf sd3daemon) # sd3.pb-c.c is generated for that target
    target_compile_definitions(fuzz_envelope_lf PRIVATE SD3_LIBFUZZER=1)
    target_include_directories(fuzz_envelope_lf PRIVATE ${SD3_PROTO_OUT})
    target_compile_options(fuzz_envelope_lf PRIVATE ${SD3_FUZZ_FLAGS})
    target_link_options(fuzz_envelope_lf PRIVATE ${SD3_FUZZ_FLAGS})
    target_link_libraries(fuzz_envelope_lf PRIVATE PkgConfig::ZMQ PkgConfig::PROTOBUFC
                          PkgConfig::ZSTD PkgConfig::XXHASH m)
  endif()
endif()
