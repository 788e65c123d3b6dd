// modelpool/http/errors.hpp
//
// How failures reach an OpenAI client: every `PoolError` code maps to one HTTP status, OpenAI error `type`
// and `code`, and retry advice, in one table (`error_mapping_for`). The statuses are chosen for the official
// clients' retry rule (they retry 408, 409, 429 and every status >= 500, honouring `retry-after`, unless
// `x-should-retry: false` says otherwise): client mistakes are 4xx and never retried, overload is 429 with
// `Retry-After`, conditions a retry can fix are 503 with `Retry-After`, and server-side failures that a retry
// cannot fix carry `x-should-retry: false`.
//
//   errc              status  type                   Retry-After                       x-should-retry
//   invalid_argument  400     invalid_request_error  -                                 -
//   no_workers        503     server_error           1 s                               -
//   overloaded        429     rate_limit_error       1 s                               -
//   timeout           504     timeout_error          -                                 -
//   cancelled         499     request_cancelled      -                                 false
//   model_error       500     server_error           -                                 false
//   spawn_failed      503     server_error           pool's retry_backoff_max          -
//   memory_exhausted  503     server_error           1 s                               -
//   circuit_open      503     server_error           pool's breaker.open_time          -
//   shutting_down     503     server_error           -                                 false
//   ok (never sent)   500     server_error           -                                 false
//
// The error `code` is the errc's name ("overloaded", ...). 499 ("client closed request", as nginx logs it) is
// only ever logged: the client that cancelled has gone. Errors of the HTTP layer itself: unknown model 404
// (`model_not_found`, param "model"), unknown route 404 (`not_found`), wrong method 405
// (`method_not_allowed`), body too large 413, header too large 431, too many connections 503
// (`too_many_connections`, Retry-After 1).
#pragma once

#include "modelpool/error.hpp"
#include "modelpool/options.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace modelpool::http {

/// How one `errc` is answered over HTTP (one row of the table in the file comment).
struct ErrorMapping {
    unsigned status = 500;                             ///< The HTTP status.
    std::string_view type = "server_error";            ///< The OpenAI error `type`.
    std::optional<std::chrono::seconds> retry_after{}; ///< `Retry-After`, when a retry can help.
    bool should_retry = true; ///< False: send `x-should-retry: false` (a retry cannot help).
};

/// The mapping of `code` (see the table in the file comment). `pool` supplies the waits that depend on the
/// pool's settings (circuit breaker open time, load retry backoff).
inline ErrorMapping error_mapping_for(errc code, const PoolOptions& pool) {
    using std::chrono::seconds;
    // Whole seconds, rounded up and at least 1: Retry-After has a resolution of one second.
    const auto ceil_seconds = [](std::chrono::milliseconds wait) {
        return std::max(seconds{1}, std::chrono::ceil<seconds>(wait));
    };
    switch (code) {
    case errc::invalid_argument:
        return {400, "invalid_request_error", std::nullopt, true};
    case errc::no_workers:
        return {503, "server_error", seconds{1}, true};
    case errc::overloaded:
        return {429, "rate_limit_error", seconds{1}, true};
    case errc::timeout:
        return {504, "timeout_error", std::nullopt, true};
    case errc::cancelled:
        return {499, "request_cancelled", std::nullopt, false};
    case errc::model_error:
        return {500, "server_error", std::nullopt, false};
    case errc::spawn_failed:
        return {503, "server_error", ceil_seconds(pool.retry_backoff_max), true};
    case errc::memory_exhausted:
        return {503, "server_error", seconds{1}, true};
    case errc::circuit_open:
        return {503, "server_error", ceil_seconds(pool.breaker.open_time), true};
    case errc::shutting_down:
        return {503, "server_error", std::nullopt, false};
    case errc::ok:
        break;
    }
    return {500, "server_error", std::nullopt, false};
}

/// An error as the server answers it: status, OpenAI body fields and retry headers.
struct ApiError {
    unsigned status = 500;              ///< The HTTP status.
    std::string type = "server_error";  ///< `error.type`.
    std::string code;                   ///< `error.code`, e.g. "overloaded", "model_not_found".
    std::string message;                ///< `error.message`, for people.
    std::optional<std::string> param{}; ///< `error.param`: the offending field, if any.
    std::optional<std::chrono::seconds> retry_after{}; ///< Sent as `Retry-After`.
    bool should_retry = true;                          ///< False: sent as `x-should-retry: false`.

    /// A 400 `invalid_request_error` naming the field `param`.
    static ApiError invalid(std::string param, std::string message) {
        return {400, "invalid_request_error", "invalid_value", std::move(message), std::move(param)};
    }
};

/// The answer to `error` (see `error_mapping_for`); the message is the `PoolError`'s own.
inline ApiError to_api_error(const PoolError& error, const PoolOptions& pool) {
    const auto mapping = error_mapping_for(error.code(), pool);
    return {mapping.status,
            std::string(mapping.type),
            std::string(to_string(error.code())),
            error.message(),
            std::nullopt,
            mapping.retry_after,
            mapping.should_retry};
}

} // namespace modelpool::http
