# deploy/deploy_tests.cmake
#
# CTest test deploy.manifests: deploy/check_deploy.py checks the Kubernetes manifests and the nginx config
# against each other and against the real modelpool_server (and, when nginx is installed, runs three replicas
# behind deploy/nginx/nginx.conf). Included by examples/server/CMakeLists.txt after the modelpool_server target
# when MODELPOOL_BUILD_TESTS is ON. It needs python3 with PyYAML (Debian: python3-yaml); without it the test
# is left out with a STATUS message, unless MODELPOOL_TEST_DEPLOY=ON makes that an error.
option(MODELPOOL_TEST_DEPLOY
       "Require the deploy.manifests test (fail the configuration without python3 and PyYAML)" OFF)

# The first python3 that imports yaml: the one find_package picks may be a pyenv or venv interpreter without
# it, while Debian's python3-yaml belongs to /usr/bin/python3.
find_package(Python3 COMPONENTS Interpreter QUIET)
set(_modelpool_deploy_python "")
foreach(_modelpool_candidate IN ITEMS "${Python3_EXECUTABLE}" /usr/bin/python3)
    if(NOT _modelpool_deploy_python AND EXISTS "${_modelpool_candidate}")
        execute_process(COMMAND "${_modelpool_candidate}" -c "import yaml"
                        RESULT_VARIABLE _modelpool_yaml_result OUTPUT_QUIET ERROR_QUIET)
        if(_modelpool_yaml_result EQUAL 0)
            set(_modelpool_deploy_python "${_modelpool_candidate}")
        endif()
    endif()
endforeach()

if(NOT _modelpool_deploy_python)
    if(MODELPOOL_TEST_DEPLOY)
        message(FATAL_ERROR "MODELPOOL_TEST_DEPLOY is ON but no python3 imports yaml (Debian: python3-yaml)")
    endif()
    message(STATUS "deploy.manifests: skipped (no python3 with PyYAML; Debian: python3-yaml)")
else()
    # nginx is in /usr/sbin, often not on a user's PATH. Without it only the nginx part is skipped.
    find_program(MODELPOOL_NGINX nginx PATHS /usr/sbin /usr/local/sbin)
    set(_modelpool_deploy_nginx "")
    if(MODELPOOL_NGINX)
        set(_modelpool_deploy_nginx --nginx --nginx-binary "${MODELPOOL_NGINX}")
    else()
        message(STATUS "deploy.manifests: nginx not found, its part of the test is skipped")
    endif()
    add_test(NAME deploy.manifests
             COMMAND "${_modelpool_deploy_python}" "${CMAKE_CURRENT_LIST_DIR}/check_deploy.py"
                     --server "$<TARGET_FILE:modelpool_server>" ${_modelpool_deploy_nginx})
    set_tests_properties(deploy.manifests PROPERTIES LABELS "deploy;http" TIMEOUT 180)
endif()
