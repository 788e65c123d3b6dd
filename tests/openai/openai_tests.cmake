# tests/openai/openai_tests.cmake: the official `openai` npm client's test against modelpool_server, included by
# examples/server/CMakeLists.txt after the modelpool_server target (when MODELPOOL_BUILD_TESTS is on).
#
# MODELPOOL_TEST_OPENAI_CLIENT: AUTO (default) adds the tests when node >= 18 and npm are found, ON requires
# them, OFF leaves them out. The package files and tests are copied into the build tree so that `npm ci`
# puts node_modules there, never in the source tree; configure_file re-copies a file when it changes.
#   openai.npm_ci   npm ci (the fixture: installs the version pinned in package-lock.json)
#   openai.client   node --test against a server it starts from $<TARGET_FILE:modelpool_server>
# Run them with `ctest -L openai`.

if(NOT DEFINED MODELPOOL_TEST_OPENAI_CLIENT)
    set(MODELPOOL_TEST_OPENAI_CLIENT AUTO CACHE STRING
        "Test modelpool_server with the official openai npm client (AUTO: when node and npm are found; ON; OFF)")
    set_property(CACHE MODELPOOL_TEST_OPENAI_CLIENT PROPERTY STRINGS AUTO ON OFF)
endif()
string(TOUPPER "${MODELPOOL_TEST_OPENAI_CLIENT}" _openai_mode)
if(NOT _openai_mode MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "MODELPOOL_TEST_OPENAI_CLIENT must be AUTO, ON or OFF (got '${MODELPOOL_TEST_OPENAI_CLIENT}')")
endif()

if(NOT _openai_mode STREQUAL "OFF")
    find_program(MODELPOOL_NODE NAMES node nodejs)
    find_program(MODELPOOL_NPM npm)
    set(_openai_missing "")
    if(NOT MODELPOOL_NODE OR NOT MODELPOOL_NPM)
        set(_openai_missing "node or npm was not found (node: ${MODELPOOL_NODE}, npm: ${MODELPOOL_NPM})")
    else()
        # Node 18 is the oldest with fetch and the test runner this test uses (Debian 12 ships 18).
        execute_process(COMMAND "${MODELPOOL_NODE}" --version OUTPUT_VARIABLE _openai_node_version
                        OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _openai_node_status)
        string(REGEX REPLACE "^v" "" _openai_node_version "${_openai_node_version}")
        if(NOT _openai_node_status EQUAL 0 OR _openai_node_version VERSION_LESS 18)
            set(_openai_missing "${MODELPOOL_NODE} is version '${_openai_node_version}', older than 18")
        endif()
    endif()

    if(_openai_missing AND _openai_mode STREQUAL "ON")
        message(FATAL_ERROR "MODELPOOL_TEST_OPENAI_CLIENT is ON but ${_openai_missing}: on Debian 12, "
                            "apt-get install nodejs npm (or scripts/bootstrap.sh); or set it to AUTO or OFF.")
    elseif(_openai_missing)
        message(STATUS "modelpool: ${_openai_missing}; the openai client's test is skipped "
                       "(apt-get install nodejs npm)")
    else()
        message(STATUS "modelpool: the openai client's test runs with node ${_openai_node_version}")
        set(_openai_dir "${CMAKE_CURRENT_BINARY_DIR}/openai-client")
        file(GLOB _openai_scripts CONFIGURE_DEPENDS RELATIVE "${CMAKE_CURRENT_LIST_DIR}"
             "${CMAKE_CURRENT_LIST_DIR}/*.mjs")
        file(GLOB _openai_tests CONFIGURE_DEPENDS RELATIVE "${CMAKE_CURRENT_LIST_DIR}"
             "${CMAKE_CURRENT_LIST_DIR}/*.test.mjs")
        foreach(_openai_file IN LISTS _openai_scripts ITEMS package.json package-lock.json tight-config.json)
            configure_file("${CMAKE_CURRENT_LIST_DIR}/${_openai_file}" "${_openai_dir}/${_openai_file}" COPYONLY)
        endforeach()

        add_test(NAME openai.npm_ci COMMAND "${MODELPOOL_NPM}" ci --no-audit --no-fund
                 WORKING_DIRECTORY "${_openai_dir}")
        set_tests_properties(openai.npm_ci PROPERTIES
            FIXTURES_SETUP openai_node_modules LABELS "openai;http" TIMEOUT 300)

        add_test(NAME openai.client
                 COMMAND "${MODELPOOL_NODE}" --test --test-reporter=spec ${_openai_tests}
                 WORKING_DIRECTORY "${_openai_dir}")
        set_tests_properties(openai.client PROPERTIES
            ENVIRONMENT "MODELPOOL_SERVER=$<TARGET_FILE:modelpool_server>;MODELPOOL_CACHE_DIR=${CMAKE_CURRENT_BINARY_DIR}/cache-openai"
            FIXTURES_REQUIRED openai_node_modules LABELS "openai;http" TIMEOUT 300)
    endif()
endif()
