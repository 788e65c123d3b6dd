// Assertion helpers shared by the Catch2 test files: waiting on a future with a bound, and checking that a
// result is a PoolError with the expected code and a message that names what it should.
#pragma once

#include "support/catch.hpp"

#include <modelpool/error.hpp>

#include <chrono>
#include <future>
#include <initializer_list>
#include <string_view>

namespace modelpool::testing {

/// True when `needle` occurs in `haystack`.
inline bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

/// The value of `future`, which must be ready within `timeout` (a bound on a hang, not a synchronisation).
template <class T> T get(std::future<T> future, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    REQUIRE(future.wait_for(timeout) == std::future_status::ready);
    return future.get();
}

/// True while `future` has no value (checked for a short moment, so that a wrong completion already in flight
/// is seen).
template <class T> bool pending(const std::future<T>& future) {
    return future.wait_for(std::chrono::milliseconds(20)) == std::future_status::timeout;
}

/// Checks that `r` is an error with `code` whose message is not empty and contains every one of `needles`.
template <class T>
void check_error(const result<T>& r, errc code, std::initializer_list<std::string_view> needles = {}) {
    REQUIRE_FALSE(r.has_value());
    INFO("error: " << r.error().to_string());
    CHECK(r.error().code() == code);
    CHECK_FALSE(r.error().message().empty());
    for (auto needle : needles) {
        INFO("expected in the message: " << needle);
        CHECK(contains(r.error().message(), needle));
    }
}

} // namespace modelpool::testing
