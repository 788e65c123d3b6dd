cmake_minimum_required(VERSION 3.21)

# cmake -P script, run after Catch2 v2's catch_discover_tests: labels every discovered test with BASE_LABELS plus
# its Catch tags, so "ctest -L <tag>" selects a component. Catch2 v3 does this itself (ADD_TAGS_AS_LABELS).
#   -D TEST_EXECUTABLE=<Catch2 v2 test binary> -D BASE_LABELS=<list> -D OUTPUT=<ctest include file to write>
#   [-D TEST_PREFIX=<the TEST_PREFIX given to catch_discover_tests>]

function(list_names spec out)
    execute_process(COMMAND "${TEST_EXECUTABLE}" ${spec} --list-test-names-only
        OUTPUT_VARIABLE output RESULT_VARIABLE result)
    if(result LESS 0 OR NOT result MATCHES "^[0-9]+$")
        message(FATAL_ERROR "${TEST_EXECUTABLE} ${spec} --list-test-names-only failed: ${result}")
    endif()
    string(REPLACE ";" "\\;" output "${output}")
    string(REPLACE "\n" ";" output "${output}")
    list(FILTER output EXCLUDE REGEX "^$")
    set(${out} "${output}" PARENT_SCOPE)
endfunction()

execute_process(COMMAND "${TEST_EXECUTABLE}" --list-tags OUTPUT_VARIABLE tag_listing RESULT_VARIABLE result)
if(result LESS 0 OR NOT result MATCHES "^[0-9]+$")
    message(FATAL_ERROR "${TEST_EXECUTABLE} --list-tags failed: ${result}")
endif()
string(REGEX MATCHALL "\\[[^]\n]+\\]" tags "${tag_listing}")
list(REMOVE_DUPLICATES tags)
# Hidden ([.x]) and special ([!x]) tags name no component.
list(FILTER tags EXCLUDE REGEX "^\\[[.!]")

# Only tests that CTest knows (the default, non-hidden set) may get properties.
list_names("" all_tests)
set(index 0)
foreach(test IN LISTS all_tests)
    set(labels_${index} ${BASE_LABELS})
    math(EXPR index "${index} + 1")
endforeach()
foreach(tag IN LISTS tags)
    string(REGEX REPLACE "^\\[(.*)\\]$" "\\1" label "${tag}")
    list_names("${tag}" tagged)
    foreach(test IN LISTS tagged)
        list(FIND all_tests "${test}" index)
        if(index GREATER_EQUAL 0)
            list(APPEND labels_${index} "${label}")
        endif()
    endforeach()
endforeach()

set(script "")
set(index 0)
foreach(test IN LISTS all_tests)
    list(REMOVE_DUPLICATES labels_${index})
    string(APPEND script "set_tests_properties([==[${TEST_PREFIX}${test}]==] PROPERTIES LABELS [==[${labels_${index}}]==])\n")
    math(EXPR index "${index} + 1")
endforeach()
file(WRITE "${OUTPUT}" "${script}")
