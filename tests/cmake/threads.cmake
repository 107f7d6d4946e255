# Threads that fit the box (stages/cpu/sd3_cpu_threads.c). The unit test
# (tests/unit/test_cpu_threads.c: fake cgroup trees, affinity, a backend shared by threads)
# registers itself. Included from tests/CMakeLists.txt.

# `sd3d --role all` pinned to one CPU: one CPU backend of 1 thread for its three stages, and
# the one-process image through it. Skips (77) without taskset.
if(TARGET sd3d)
  add_test(NAME role_all_threads
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cluster/role_all_threads.sh $<TARGET_FILE:sd3d>
                   $<TARGET_FILE:sd3ctl>)
  set_tests_properties(role_all_threads PROPERTIES LABELS cluster TIMEOUT 180
                       SKIP_RETURN_CODE 77)
endif()
