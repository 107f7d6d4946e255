# gpu: the CUDA backend checked op by op against the CPU backend (tests/gpu/test_<op>.c), and
# the GPU benchmark program. Only when the CUDA backend is built (SD3_HAVE_CUDA). Each test
# skips (77) when the machine has no CUDA device; tests/gpu/run.sh runs them on one.
if(SD3_HAVE_CUDA AND TARGET sd3cuda)
  add_library(sd3gputest STATIC ${CMAKE_CURRENT_SOURCE_DIR}/gpu/sd3_gpu_test.c)
  target_include_directories(sd3gputest PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/gpu
                             ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(sd3gputest PUBLIC sd3stages)

  foreach(op linear layernorm rmsnorm groupnorm act softmax eltwise copy2d conv2d attention
          memory)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/gpu/test_${op}.c)
      sd3_test(test_gpu_${op} gpu/test_${op}.c LABELS gpu TIMEOUT 600 LIBS sd3gputest)
    endif()
  endforeach()

  # not a test: prints figures (tests/gpu/run.sh runs it after ctest)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/gpu/bench_cuda_ops.c)
    add_executable(bench_cuda_ops gpu/bench_cuda_ops.c ${SD3_TEST_COMMON})
    target_compile_definitions(bench_cuda_ops PRIVATE SD3_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                               SD3_BINARY_DIR="${CMAKE_BINARY_DIR}")
    target_link_libraries(bench_cuda_ops PRIVATE sd3gputest sd3daemon)
  endif()
endif()
