# cmake -P script behind the CTest test fuzz.pool: runs FUZZER for RUNS inputs (fixed seed, inputs up to 512
# bytes) starting from the seed corpus CORPUS, which it only reads: new inputs and crash files go to WORK_DIR,
# emptied first. Fails when the fuzzer fails (an invariant violation or a sanitizer report) or did not run.
foreach(var FUZZER CORPUS WORK_DIR RUNS)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
        message(FATAL_ERROR "run_fuzzer.cmake: -D ${var}=... is required")
    endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}/corpus")
set(ENV{ASAN_OPTIONS} "detect_leaks=1:abort_on_error=1")
execute_process(
    COMMAND "${FUZZER}" -runs=${RUNS} -max_len=512 -seed=1 -timeout=60 -print_final_stats=1
        "-artifact_prefix=${WORK_DIR}/" "${WORK_DIR}/corpus" "${CORPUS}"
    RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(NOT result EQUAL 0)
    message(FATAL_ERROR "the fuzzer failed (${result}); crash file and output in ${WORK_DIR}:\n${output}")
endif()
if(NOT output MATCHES "Done ${RUNS} runs")
    message(FATAL_ERROR "the fuzzer did not run ${RUNS} inputs:\n${output}")
endif()
string(REGEX MATCH "stat::number_of_executed_units: [0-9]+" executed "${output}")
string(REGEX MATCH "stat::average_exec_per_sec: +[0-9]+" speed "${output}")
string(REGEX MATCH "DONE +cov: [0-9]+ ft: [0-9]+" coverage "${output}")
message(STATUS "fuzz.pool: ${executed}, ${speed}, ${coverage}")
