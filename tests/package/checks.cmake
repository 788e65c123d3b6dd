# Included by tests/package/run.cmake into the configure step of examples/find_package (as
# CMAKE_PROJECT_modelpool_find_package_example_INCLUDE), so that the example itself stays free of test logic.
# At the end of the example's CMakeLists.txt it checks:
#   fetchcontent: modelpool as a subproject builds no tests/examples/benchmarks and pushes no compile options
#                 on its consumers;
#   find_package: the package was found under MODELPOOL_EXPECTED_PREFIX (the prefix the test installed into),
#                 not somewhere else on the system.
function(modelpool_package_checks)
    if(NOT TARGET modelpool_app)
        message(FATAL_ERROR "examples/find_package defines no target modelpool_app")
    endif()
    if(MODELPOOL_CONSUME STREQUAL "fetchcontent")
        foreach(option MODELPOOL_BUILD_TESTS MODELPOOL_BUILD_EXAMPLES MODELPOOL_BUILD_BENCH)
            if(${option})
                message(FATAL_ERROR "${option} is ON in a FetchContent consumer")
            endif()
        endforeach()
        get_target_property(options modelpool::modelpool INTERFACE_COMPILE_OPTIONS)
        if(options)
            message(FATAL_ERROR "modelpool::modelpool forces compile options on consumers: ${options}")
        endif()
    else()
        if(DEFINED MODELPOOL_EXPECTED_PREFIX)
            string(FIND "${modelpool_DIR}" "${MODELPOOL_EXPECTED_PREFIX}/" at)
            if(NOT at EQUAL 0)
                message(FATAL_ERROR "found modelpool in ${modelpool_DIR}, not under ${MODELPOOL_EXPECTED_PREFIX}")
            endif()
        endif()
        message(STATUS "package test: modelpool ${modelpool_VERSION} from ${modelpool_DIR}")
    endif()
    message(STATUS "modelpool package checks: passed") # run.cmake looks for this line
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL modelpool_package_checks)
