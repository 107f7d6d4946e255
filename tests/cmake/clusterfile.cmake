# Cluster files (issues 7, 8): `sd3ctl up` of a file that names CurveZMQ keys. The parser's
# unit test registers itself (tests/unit/test_cluster_file.c); its fuzz replayer is in
# fuzz.cmake.
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_cluster_up_keys.c)
  sd3_test(test_cluster_up_keys cluster/test_cluster_up_keys.c LABELS cluster TIMEOUT 120)
  add_dependencies(test_cluster_up_keys sd3d sd3ctl)
endif()
