// modelpool/request_options.hpp
//
// Per-call settings that override the pool's defaults for one request, used through a scope:
//
//     auto v = co_await pool.with({.timeout = 2s}).embed("bert", "hello");
//     auto s = co_await pool.with({.timeout = 5min, .idle_timeout = 10s}).prompt("llama", "Tell me...");
//     auto u = co_await pool.with({.priority = Priority::high, .queue_timeout = 50ms}).embed("bert", "now");
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace modelpool {

/// A request's priority in its key's queue. Higher levels are served first, with ageing
/// (`PoolOptions::priority_aging`) so that a lower level is never starved: a request is never overtaken by a
/// request of a higher level that entered the queue more than `levels apart x priority_aging` after it.
enum class Priority : std::uint8_t {
    low = 0,    ///< Background work (bulk re-embedding, prefetch).
    normal = 1, ///< The default.
    high = 2,   ///< Interactive requests that a person waits for.
};

/// The number of priority levels.
inline constexpr std::size_t priority_levels = 3;

/// The name of a priority, e.g. "high".
constexpr std::string_view to_string(Priority priority) noexcept {
    switch (priority) {
    case Priority::low:
        return "low";
    case Priority::normal:
        return "normal";
    case Priority::high:
        return "high";
    }
    return "unknown";
}

/// See the file comment. Unset fields take the pool's defaults.
struct RequestOptions {
    /// Deadline from the call. Unary requests: queue wait plus service (default
    /// `PoolOptions::request_timeout`). Streams: the whole stream, queue wait and generation (default
    /// `PoolOptions::stream_timeout`). Must be positive. An expired request ends with `timeout` and frees its
    /// slot.
    std::optional<std::chrono::milliseconds> timeout{};
    /// Streams only: the longest time with no progress (no chunk produced; a model blocked by a reader that
    /// does not read makes none) before the stream ends with `timeout` (default
    /// `PoolOptions::stream_idle_timeout`). Must be positive.
    std::optional<std::chrono::milliseconds> idle_timeout{};
    /// The request's level in its key's queue (see `Priority`). Default `Priority::normal`.
    Priority priority = Priority::normal;
    /// The longest the request may wait in its key's queue before a worker takes it; beyond it the request
    /// ends with `timeout` without reaching a model (default `PoolOptions::queue_timeout`: none). Must be
    /// positive. It never extends `timeout`.
    std::optional<std::chrono::milliseconds> queue_timeout{};
};

} // namespace modelpool
