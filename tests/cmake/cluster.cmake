# Cluster tests: real sd3d processes on loopback (OS-chosen ports), started with
# `sd3ctl up` and always stopped; each bounds its own time below the TIMEOUT.
set(_cl ${CMAKE_CURRENT_SOURCE_DIR}/cluster)
sd3_test(test_cluster_split      ${_cl}/test_cluster_split.c      LABELS cluster TIMEOUT 180)
foreach(t test_cluster_concurrent test_cluster_queue test_cluster_cancel test_cluster_bad
          test_cluster_batch)
  if(EXISTS ${_cl}/${t}.c)
    sd3_test(${t} ${_cl}/${t}.c LABELS cluster TIMEOUT 120)
  endif()
endforeach()
foreach(t test_cluster_split test_cluster_concurrent test_cluster_queue test_cluster_cancel
          test_cluster_bad test_cluster_batch)
  if(TARGET ${t})
    add_dependencies(${t} sd3d sd3ctl)
  endif()
endforeach()
# Reliability (issue 8): stage failure, controller restart, chaos.
foreach(t test_cluster_failover test_cluster_restart)
  if(EXISTS ${_cl}/${t}.c)
    sd3_test(${t} ${_cl}/${t}.c LABELS cluster TIMEOUT 180)
    add_dependencies(${t} sd3d sd3ctl)
  endif()
endforeach()
# SD3_CHAOS_REQUESTS=N (default 200, 100 under ASan) sets the request count; the test
# bounds itself below.
if(EXISTS ${_cl}/test_cluster_chaos.c)
  sd3_test(test_cluster_chaos ${_cl}/test_cluster_chaos.c LABELS cluster TIMEOUT 420)
  add_dependencies(test_cluster_chaos sd3d sd3ctl)
endif()
# CurveZMQ keys across a cluster (issue 8 §3).
if(EXISTS ${_cl}/test_cluster_keys.c)
  sd3_test(test_cluster_keys ${_cl}/test_cluster_keys.c LABELS cluster TIMEOUT 180)
  add_dependencies(test_cluster_keys sd3d sd3ctl)
endif()
# A client that does not read while PROGRESS floods still gets every RESULT (issue 8 §1):
# the controller and its nodes as threads of the test, the client over inproc.
if(EXISTS ${_cl}/test_cluster_flood.c)
  sd3_test(test_cluster_flood ${_cl}/test_cluster_flood.c LABELS cluster TIMEOUT 240)
  add_dependencies(test_cluster_flood sd3ctl)
endif()
# A stage that heartbeats but never finishes a step: the per-step timeout resumes the request
# on another pipeline (issue 8 §3c). In-process, like test_cluster_flood.
if(EXISTS ${_cl}/test_cluster_hung.c)
  sd3_test(test_cluster_hung ${_cl}/test_cluster_hung.c LABELS cluster TIMEOUT 100)
  add_dependencies(test_cluster_hung sd3ctl)
endif()

# Real-size timing on the tiny model (issue 13): slow stages, a hung one, cancels inside a
# step or an encode (the node's fault injection).
sd3_test(test_cluster_slow ${_cl}/test_cluster_slow.c LABELS cluster TIMEOUT 420)
add_dependencies(test_cluster_slow sd3d sd3ctl)
