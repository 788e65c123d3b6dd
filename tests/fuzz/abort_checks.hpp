// CHECK / REQUIRE / INFO / FAIL for the reliability helpers (support/reliability.hpp) outside Catch2: the
// fuzzer defines MODELPOOL_RELIABILITY_ABORT_CHECKS and gets these instead of Catch2's. A failed check prints
// the expression, the INFO messages in scope and whatever the installed failure hook prints (the fuzzer's:
// the operation sequence that led there), then aborts, so that libFuzzer saves the input as a crash file.
// Only the thread running the sequence may use them (the INFO stack is per thread).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace modelpool::abort_checks {

/// The INFO messages in scope on this thread, innermost last.
inline std::vector<std::string>& info_stack() {
    thread_local std::vector<std::string> stack;
    return stack;
}

/// Called first when a check fails (the fuzzer prints its sequence); may be empty.
inline std::function<void()>& on_failure() {
    static std::function<void()> hook;
    return hook;
}

/// An INFO message, in scope until the end of the enclosing block.
class ScopedInfo {
public:
    explicit ScopedInfo(std::string message) { info_stack().push_back(std::move(message)); }
    ScopedInfo(const ScopedInfo&) = delete;
    ScopedInfo& operator=(const ScopedInfo&) = delete;
    ~ScopedInfo() { info_stack().pop_back(); }
};

[[noreturn]] inline void failed(const char* kind, const std::string& what, const char* file, int line) {
    if (on_failure()) {
        on_failure()();
    }
    std::fprintf(stderr, "\n%s:%d: %s failed: %s\n", file, line, kind, what.c_str());
    for (const auto& info : info_stack()) {
        std::fprintf(stderr, "  with: %s\n", info.c_str());
    }
    std::fflush(stderr);
    std::abort();
}

} // namespace modelpool::abort_checks

#define MODELPOOL_ABORT_CHECKS_CAT2(a, b) a##b
#define MODELPOOL_ABORT_CHECKS_CAT(a, b) MODELPOOL_ABORT_CHECKS_CAT2(a, b)

#define INFO(message)                                                                                        \
    const ::modelpool::abort_checks::ScopedInfo MODELPOOL_ABORT_CHECKS_CAT(abort_checks_info_,               \
                                                                           __LINE__)([&] {                   \
        std::ostringstream abort_checks_out;                                                                 \
        abort_checks_out << message;                                                                         \
        return abort_checks_out.str();                                                                       \
    }())
#define MODELPOOL_ABORT_CHECK(kind, ...)                                                                     \
    do {                                                                                                     \
        if (!(__VA_ARGS__)) {                                                                                \
            ::modelpool::abort_checks::failed(kind, #__VA_ARGS__, __FILE__, __LINE__);                       \
        }                                                                                                    \
    } while (false)
#define CHECK(...) MODELPOOL_ABORT_CHECK("CHECK", __VA_ARGS__)
#define REQUIRE(...) MODELPOOL_ABORT_CHECK("REQUIRE", __VA_ARGS__)
#define FAIL(message)                                                                                        \
    do {                                                                                                     \
        std::ostringstream abort_checks_out;                                                                 \
        abort_checks_out << message;                                                                         \
        ::modelpool::abort_checks::failed("FAIL", abort_checks_out.str(), __FILE__, __LINE__);               \
    } while (false)
