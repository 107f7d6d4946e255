# README.md as written (issue 16): tests/readme/test_readme.py runs every command line of the
# README that needs no real weights on a fresh copy of the tree (label readme). The quickstart
# line builds a plain tree of its own (about a minute on 2 cores); under SD3_SANITIZE it is
# skipped, saying so. Port 7710 (deploy/local/tiny-4stage.cluster) is held for the run.
# Included from tests/CMakeLists.txt: CMAKE_CURRENT_SOURCE_DIR is tests/.
find_program(SD3_PYTHON3 python3)
if(SD3_PYTHON3)
  add_test(NAME test_readme
           COMMAND ${SD3_PYTHON3} ${CMAKE_CURRENT_SOURCE_DIR}/readme/test_readme.py)
  set_tests_properties(test_readme PROPERTIES LABELS readme TIMEOUT 1500
                       RESOURCE_LOCK tiny-4stage-ports
                       ENVIRONMENT "SD3_SOURCE_DIR=${CMAKE_SOURCE_DIR};SD3_BINARY_DIR=${CMAKE_BINARY_DIR};SD3_SANITIZE=${SD3_SANITIZE}")
endif()
