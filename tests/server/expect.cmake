# Runs COMMAND (a list) and checks that it exits with EXIT_CODE and that its stdout + stderr match the regex
# PATTERN; prints both on a mismatch. Used by the modelpool_server tests (examples/server/CMakeLists.txt).
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 50)
set(all "${out}${err}")
if(NOT code STREQUAL EXIT_CODE)
    message(FATAL_ERROR "exit code ${code}, expected ${EXIT_CODE}\n--- output:\n${all}")
endif()
if(NOT all MATCHES "${PATTERN}")
    message(FATAL_ERROR "the output does not match: ${PATTERN}\n--- output:\n${all}")
endif()
