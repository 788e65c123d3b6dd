# Fails if a header of the library contains a way to block a thread that could be a pool io thread: a nested
# event loop (run/run_one/run_for/poll on an io_context), a future's get/wait, a sleep, or the Rust pool's
# block_in_place/block_on bridge. A line that needs one anyway must say why, in a comment on it or on the line
# before it, starting with "allowed-blocking:"; the test lists those lines so a reviewer sees each.
#   cmake -D SOURCE_DIR=<repo> -P tests/no_blocking_bridges.cmake
# Headers and the definitions they include (impl/*.ipp), which src/modelpool.cpp compiles in separate mode.
file(GLOB_RECURSE headers "${SOURCE_DIR}/include/modelpool/*.hpp" "${SOURCE_DIR}/include/modelpool/*.ipp"
    "${SOURCE_DIR}/src/*.cpp")
set(pattern "(\\.|->)(run|run_one|run_for|run_until|poll|poll_one)\\(|std::future|use_future|\\.get\\(\\)|this_thread::sleep|block_in_place|block_on|\\.wait\\(|\\.wait_for\\(|\\.wait_until\\(")
set(violations "")
set(allowed 0)
foreach(header IN LISTS headers)
    file(STRINGS "${header}" lines)
    set(previous "")
    set(number 0)
    foreach(line IN LISTS lines)
        math(EXPR number "${number} + 1")
        string(REGEX REPLACE "^[ \t]+" "" stripped "${line}")
        if(NOT stripped MATCHES "^//" AND line MATCHES "${pattern}")
            # shared_ptr::get() and friends are not futures: accept ".get()" on a name ending in "_" or "ptr",
            # and a ".get()" compared for identity with == or != (a smart pointer's address, as in remove_if).
            if((line MATCHES "(_|ptr|job|governor)\\.get\\(\\)" OR line MATCHES "\\.get\\(\\) (==|!=) ")
               AND NOT line MATCHES "future")
            elseif(line MATCHES "allowed-blocking:" OR previous MATCHES "allowed-blocking:")
                math(EXPR allowed "${allowed} + 1")
                message(STATUS "allowed: ${header}:${number}: ${stripped}")
            else()
                string(APPEND violations "\n  ${header}:${number}: ${stripped}")
            endif()
        endif()
        set(previous "${line}")
    endforeach()
endforeach()
if(violations)
    message(FATAL_ERROR "possible blocking bridge on a pool thread (say why with 'allowed-blocking:' if it "
                        "cannot run there):${violations}")
endif()
list(LENGTH headers count)
message(STATUS "no blocking bridge in ${count} headers (${allowed} justified exceptions listed above)")
