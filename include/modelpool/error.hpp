// modelpool/error.hpp
//
// The one error type of modelpool. Every failure a caller can see is a `PoolError`: a code that programs
// branch on, and a message for people that names what was wrong, the registry key and the numbers involved.
// Codes interoperate with `std::error_code` through `modelpool::pool_category()`, and `PoolError` is
// formattable with fmt ("overloaded: queue of 'bert' is full (64 of 64 requests)").
#pragma once

#include "modelpool/detail/config.hpp"
#include "modelpool/expected.hpp"

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <system_error>
#include <utility>

namespace modelpool {

/// What went wrong. Values are stable: they are exported in metrics and may be stored.
enum class errc : int {
    ok = 0,
    invalid_argument = 1, ///< The caller passed something malformed: empty key, zero size, bad option.
    no_workers = 2,       ///< The key has no worker and none is loading.
    overloaded = 3,       ///< The key's bounded queue is full. Retryable: try again later.
    timeout = 4,          ///< The request's deadline passed (queue wait plus service).
    cancelled = 5,        ///< The caller cancelled the request, or abandoned a stream.
    model_error = 6,      ///< The model's operation failed or threw.
    spawn_failed = 7,     ///< The worker's loader failed or threw; carries the loader's message.
    memory_exhausted = 8, ///< The memory governor cannot hold the reservation.
    circuit_open = 9,     ///< The key's circuit breaker is open after consecutive failures.
    shutting_down = 10,   ///< The pool is stopping or stopped.
};

/// The name of a code, e.g. "overloaded"; "unknown" for values outside the enum.
constexpr std::string_view to_string(errc code) noexcept {
    switch (code) {
    case errc::ok:
        return "ok";
    case errc::invalid_argument:
        return "invalid_argument";
    case errc::no_workers:
        return "no_workers";
    case errc::overloaded:
        return "overloaded";
    case errc::timeout:
        return "timeout";
    case errc::cancelled:
        return "cancelled";
    case errc::model_error:
        return "model_error";
    case errc::spawn_failed:
        return "spawn_failed";
    case errc::memory_exhausted:
        return "memory_exhausted";
    case errc::circuit_open:
        return "circuit_open";
    case errc::shutting_down:
        return "shutting_down";
    }
    return "unknown";
}

/// The `std::error_category` of `errc` values (name "modelpool"). One instance per program.
const std::error_category& pool_category() noexcept;

/// Makes `errc` usable as a `std::error_code` (found by argument-dependent lookup).
inline std::error_code make_error_code(errc code) noexcept {
    return {static_cast<int>(code), pool_category()};
}

/// An error: a code plus a message that names the key and the numbers involved.
///
/// Cheap to move; copyable, so one load failure can be delivered to every request that waited for it.
class PoolError {
public:
    /// An error with `code` and a human-readable `message` (which should name the key and figures).
    PoolError(errc code, std::string message) : code_(code), message_(std::move(message)) {}

    /// The machine-readable code.
    [[nodiscard]] errc code() const noexcept { return code_; }

    /// The human-readable detail, e.g. "queue of 'bert' is full (64 of 64 requests)".
    [[nodiscard]] const std::string& message() const noexcept { return message_; }

    /// The code as a `std::error_code` in `pool_category()`.
    [[nodiscard]] std::error_code error_code() const noexcept { return make_error_code(code_); }

    /// True for errors where the same request may succeed later without any change by the caller
    /// (overloaded, timeout, circuit_open, memory_exhausted, no_workers).
    [[nodiscard]] bool retryable() const noexcept {
        return code_ == errc::overloaded || code_ == errc::timeout || code_ == errc::circuit_open ||
               code_ == errc::memory_exhausted || code_ == errc::no_workers;
    }

    /// "code: message", as the fmt formatter prints it.
    [[nodiscard]] std::string to_string() const {
        return fmt::format("{}: {}", modelpool::to_string(code_), message_);
    }

    friend bool operator==(const PoolError&, const PoolError&) = default;

private:
    errc code_;
    std::string message_;
};

/// Shorthand for returning an error from a function whose result is `expected<T, PoolError>`:
/// `return fail(errc::invalid_argument, "per_worker_mb must be positive (got 0)");`.
inline unexpected<PoolError> fail(errc code, std::string message) {
    return unexpected<PoolError>(PoolError(code, std::move(message)));
}

/// Shorthand for `fail(code, fmt::format(format, args...))`.
template <class... Args>
unexpected<PoolError> fail(errc code, fmt::format_string<Args...> format, Args&&... args) {
    return fail(code, fmt::format(format, std::forward<Args>(args)...));
}

/// The result type of every fallible modelpool operation.
template <class T> using result = expected<T, PoolError>;

} // namespace modelpool

template <> struct std::is_error_code_enum<modelpool::errc> : std::true_type {};

/// Formats a `PoolError` as "code: message".
template <> struct fmt::formatter<modelpool::PoolError> : fmt::formatter<std::string_view> {
    template <class FormatContext> auto format(const modelpool::PoolError& error, FormatContext& ctx) const {
        return fmt::formatter<std::string_view>::format(error.to_string(), ctx);
    }
};

/// Formats an `errc` as its name.
template <> struct fmt::formatter<modelpool::errc> : fmt::formatter<std::string_view> {
    template <class FormatContext> auto format(modelpool::errc code, FormatContext& ctx) const {
        return fmt::formatter<std::string_view>::format(modelpool::to_string(code), ctx);
    }
};

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/impl/error.ipp"
#endif
