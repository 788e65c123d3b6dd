# ctest -L bench: runs `modelpool_bench_suite --quick` and checks only that it exits 0 and prints the table.
execute_process(COMMAND "${EXE}" --quick --json "${JSON}"
    RESULT_VARIABLE status
    OUTPUT_VARIABLE table)
message("${table}")
if(NOT status EQUAL 0)
    message(FATAL_ERROR "modelpool_bench_suite --quick exited with ${status}")
endif()
if(NOT table MATCHES "\\| case \\| variant \\| figure \\|")
    message(FATAL_ERROR "modelpool_bench_suite --quick printed no results table")
endif()
if(NOT EXISTS "${JSON}")
    message(FATAL_ERROR "modelpool_bench_suite --quick wrote no ${JSON}")
endif()
