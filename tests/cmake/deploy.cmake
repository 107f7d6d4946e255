# deploy/: checks of the systemd units, Kubernetes manifests, container file and Slurm
# script by the tools that know them (label unit). Each skips (77) with a message when its
# tool is missing: Debian packages systemd (systemd-analyze), yamllint (+ python3-yaml),
# shellcheck; dockerfilelint (npm) is used by check_container when found.
# Included from tests/CMakeLists.txt: CMAKE_CURRENT_SOURCE_DIR is tests/.
foreach(sd3_deploy_check systemd yaml container slurm)
  add_test(NAME check_${sd3_deploy_check}
           COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/deploy/check_${sd3_deploy_check}.sh)
  set_tests_properties(check_${sd3_deploy_check} PROPERTIES LABELS unit TIMEOUT 120
                       SKIP_RETURN_CODE 77 ENVIRONMENT "SD3_SOURCE_DIR=${CMAKE_SOURCE_DIR}")
endforeach()
