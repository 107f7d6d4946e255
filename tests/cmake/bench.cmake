# `sd3ctl bench` (issue 7): checked number options of every bench verb; the hop part of
# `bench cluster` over a real ZeroMQ TCP loopback pair and its activation part on a partial
# random tiny model (a few seconds; the real-width run is a measurement, not a test).
sd3_test(test_bench_cluster ${CMAKE_CURRENT_SOURCE_DIR}/cluster/test_bench_cluster.c
         LABELS cluster TIMEOUT 400) # ~60 s under ASan on a busy 2-core machine
add_dependencies(test_bench_cluster sd3ctl)
