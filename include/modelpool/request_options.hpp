// modelpool/request_options.hpp
//
// Per-call settings that override the pool's defaults for one request, used through a scope:
//
//     auto v = co_await pool.with({.timeout = 2s}).embed("bert", "hello");
//     auto s = co_await pool.with({.timeout = 5min, .idle_timeout = 10s}).prompt("llama", "Tell me...");
#pragma once

#include <chrono>
#include <optional>

namespace modelpool {

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
};

} // namespace modelpool
