cmake_minimum_required(VERSION 3.21)

# cmake -P script behind the CTest tests package.find_package and package.fetchcontent. The consumer is the
# example application examples/find_package (targets modelpool_app and, with modelpool::compiled,
# modelpool_app_compiled); checks.cmake, next to this script, adds the test-only checks to its configure step.
#   MODE=find_package: cmake --install BUILD_DIR into WORK_DIR/prefix, then build the consumer against that prefix.
#   MODE=fetchcontent: build the consumer with FetchContent(SOURCE_DIR=SOURCE_DIR).
#   EXPECT_COMPILED=ON (find_package only): the package must also provide modelpool::compiled.
# Either way the consumer must configure, build, run, exit 0 and print its reply.
foreach(var MODE SOURCE_DIR BUILD_DIR WORK_DIR GENERATOR CXX_COMPILER)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run.cmake: -D ${var}=... is required")
    endif()
endforeach()

function(run)
    string(REPLACE ";" " " shown "${ARGN}")
    message(STATUS "package test: ${shown}")
    execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
    if(NOT result EQUAL 0)
        message(FATAL_ERROR "failed (${result}): ${shown}\n${output}")
    endif()
    set(output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_args -DMODELPOOL_CONSUME=${MODE}
    "-DCMAKE_PROJECT_modelpool_find_package_example_INCLUDE=${CMAKE_CURRENT_LIST_DIR}/checks.cmake")

if(MODE STREQUAL "find_package")
    set(prefix "${WORK_DIR}/prefix")
    set(config_args)
    if(CONFIG)
        set(config_args --config "${CONFIG}")
    endif()
    run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}" ${config_args})
    foreach(file include/modelpool/modelpool.hpp share/cmake/modelpool/modelpoolConfig.cmake
                 share/cmake/modelpool/modelpoolConfigVersion.cmake share/cmake/modelpool/modelpoolTargets.cmake)
        if(NOT EXISTS "${prefix}/${file}")
            message(FATAL_ERROR "cmake --install did not install ${file}")
        endif()
    endforeach()
    list(APPEND consumer_args "-DCMAKE_PREFIX_PATH=${prefix}" "-DMODELPOOL_EXPECTED_PREFIX=${prefix}")
elseif(MODE STREQUAL "fetchcontent")
    list(APPEND consumer_args "-DMODELPOOL_SOURCE_DIR=${SOURCE_DIR}")
else()
    message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}'")
endif()

# Same compiler, flags (sanitizers), standard and launcher (ccache) as the tree under test.
list(APPEND consumer_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}")
foreach(pair CXX_COMPILER_LAUNCHER:CMAKE_CXX_COMPILER_LAUNCHER CXX_STANDARD:CMAKE_CXX_STANDARD
             BUILD_TYPE:CMAKE_BUILD_TYPE)
    string(REPLACE ":" ";" pair "${pair}")
    list(GET pair 0 from)
    list(GET pair 1 to)
    if(NOT "${${from}}" STREQUAL "")
        list(APPEND consumer_args "-D${to}=${${from}}")
    endif()
endforeach()

set(build "${WORK_DIR}/build")
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/find_package" -B "${build}" -G "${GENERATOR}" ${consumer_args})
if(NOT output MATCHES "modelpool package checks: passed")
    message(FATAL_ERROR "checks.cmake did not run in the consumer's configure step; it printed:\n${output}")
endif()
run("${CMAKE_COMMAND}" --build "${build}")
find_program(consumer modelpool_app PATHS "${build}" "${build}/${BUILD_TYPE}" NO_DEFAULT_PATH REQUIRED)
run("${consumer}")
set(expected_line "modelpool app: worker [0-9]+ embed\\(\"hello modelpool\"\\) = \\[15, 1\\]; pool stopped")
if(NOT output MATCHES "${expected_line}")
    message(FATAL_ERROR "the consumer ran but did not print its line; it printed:\n${output}")
endif()
message(STATUS "package test (${MODE}): consumer built and ran: ${output}")

# find_package with EXPECT_COMPILED: modelpool::compiled was installed, and a consumer linking it runs too.
if(MODE STREQUAL "find_package" AND EXPECT_COMPILED)
    find_program(consumer_compiled modelpool_app_compiled PATHS "${build}" "${build}/${BUILD_TYPE}" NO_DEFAULT_PATH)
    if(NOT consumer_compiled)
        message(FATAL_ERROR "the installed package has no modelpool::compiled (modelpool_app_compiled was not built)")
    endif()
    run("${consumer_compiled}")
    if(NOT output MATCHES "${expected_line}")
        message(FATAL_ERROR "consumer_compiled ran but did not print its line; it printed:\n${output}")
    endif()
    message(STATUS "package test (${MODE}): modelpool_app_compiled (modelpool::compiled) built and ran: ${output}")
endif()
