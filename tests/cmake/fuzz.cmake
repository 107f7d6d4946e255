# Fuzz targets (STYLE.md §8): one per parser of outside bytes, each a tests/fuzz/fuzz_<x>.c
# with LLVMFuzzerTestOneInput and a replay main under #ifndef SD3_LIBFUZZER.
# Included from tests/CMakeLists.txt: sd3_test() and CMAKE_CURRENT_SOURCE_DIR are tests/.
#
# Plain build (ctest -L fuzz): each replayer runs its corpus tests/fuzz/corpus-<x>/ (seeds +
# past crashers) once. The replayers of envelope, tokenizers and http_body are registered in
# wire.cmake, tok.cmake and http.cmake; this file registers safetensors, png, codec and
# cluster_file (its corpus is tests/fuzz/corpus-cluster/).
# Seeds are rewritten with `fuzz_<x> --write-seeds tests/fuzz/corpus-<x>`.
#
# -DSD3_FUZZ=ON with clang (CC=clang CXX=clang++): a libFuzzer binary fuzz_<x>_lf for EVERY
# tests/fuzz/fuzz_*.c, all built the same way: the target compiled with
# -fsanitize=fuzzer,address,undefined and linked against sd3fuzz, a copy of all the project's
# libraries compiled with -fsanitize=fuzzer-no-link,address,undefined (so the fuzzer sees the
# coverage inside the parsers, not only the entry point). A target an area already builds
# itself (wire.cmake: fuzz_envelope_lf, http.cmake: fuzz_http_body_lf) is kept and gets the
# same sanitizer settings. `cmake --build B --target fuzzers` builds them all;
# tests/fuzz/run-long.sh builds and runs every one of them for a given time.
#   ./build-fuzz/tests/fuzz_png_lf -max_total_time=60 tests/fuzz/corpus-png

foreach(sd3_fuzz_x safetensors png codec)
  sd3_test(fuzz_${sd3_fuzz_x} fuzz/fuzz_${sd3_fuzz_x}.c LABELS fuzz TIMEOUT 120
           ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus-${sd3_fuzz_x})
  target_include_directories(fuzz_${sd3_fuzz_x} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
endforeach()
sd3_test(fuzz_cluster_file fuzz/fuzz_cluster_file.c LABELS fuzz TIMEOUT 120
         ARGS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/corpus-cluster)
target_include_directories(fuzz_cluster_file PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)

if(SD3_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang" OR NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(WARNING "SD3_FUZZ needs clang (CC=clang CXX=clang++): no libFuzzer binaries built")
  else()
    # -fno-sanitize-recover: a UBSan finding stops the run, so libFuzzer saves the input.
    set(SD3_FUZZ_SAN -fsanitize=address,undefined -fno-sanitize-recover=undefined
                     -fno-omit-frame-pointer -g)
    add_library(sd3fuzz STATIC ${SD3_BASE_SRC} ${SD3_STAGES_SRC} ${SD3_DAEMON_SRC}
                ${SD3_DAEMON_GEN})
    add_dependencies(sd3fuzz sd3daemon) # sd3.pb-c.c is generated for that target
    target_include_directories(sd3fuzz PUBLIC ${SD3_PROTO_OUT})
    target_compile_options(sd3fuzz PRIVATE -fsanitize=fuzzer-no-link ${SD3_FUZZ_SAN})
    target_link_libraries(sd3fuzz PUBLIC Threads::Threads m PkgConfig::CJSON PkgConfig::XXHASH
      PkgConfig::OPENBLAS PkgConfig::SPNG PkgConfig::UTF8PROC PkgConfig::PCRE2 PkgConfig::SPM
      PkgConfig::ZLIB PkgConfig::ZMQ PkgConfig::PROTOBUFC PkgConfig::ZSTD PkgConfig::MHD
      PkgConfig::SQLITE)
    if(TARGET sd3cuda)
      target_compile_definitions(sd3fuzz PUBLIC SD3_HAVE_CUDA=1)
      target_link_libraries(sd3fuzz PUBLIC sd3cuda)
    endif()
    add_custom_target(fuzzers)

    # Builds fuzz_<x>_lf from tests/fuzz/fuzz_<x>.c, or, when an area already made that
    # target, gives it the common settings.
    function(sd3_fuzz_libfuzzer name)
      set(lf ${name}_lf)
      if(NOT TARGET ${lf})
        add_executable(${lf} ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/${name}.c)
        target_include_directories(${lf} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}
                                   ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
        target_compile_definitions(${lf} PRIVATE SD3_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
        target_link_libraries(${lf} PRIVATE sd3fuzz)
      endif()
      target_compile_definitions(${lf} PRIVATE SD3_LIBFUZZER=1)
      target_compile_options(${lf} PRIVATE -fsanitize=fuzzer ${SD3_FUZZ_SAN})
      target_link_options(${lf} PRIVATE -fsanitize=fuzzer ${SD3_FUZZ_SAN})
      add_dependencies(fuzzers ${lf})
    endfunction()

    # Deferred to the end of tests/: every area's .cmake has run by then, so targets they
    # build themselves exist and are not made twice.
    function(sd3_fuzz_libfuzzer_all)
      file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/fuzz_*.c)
      foreach(src ${srcs})
        get_filename_component(name ${src} NAME_WE)
        sd3_fuzz_libfuzzer(${name})
      endforeach()
    endfunction()
    cmake_language(DEFER CALL sd3_fuzz_libfuzzer_all)
  endif()
endif()
