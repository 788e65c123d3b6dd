// modelpool/options.hpp
//
// Configuration of a `Pool`, as one struct filled with designated initialisers:
//
//     modelpool::Pool pool({.io_threads = 2, .memory_limit_mb = 8192, .queue_capacity = 256});
//
// Every field has a sensible default; `validate()` reports a bad combination as a `PoolError` naming the
// field and the values, before anything starts.
#pragma once

#include "modelpool/error.hpp"

#include <chrono>
#include <cstddef>
#include <memory>

namespace spdlog {
class logger;
}

namespace modelpool {

class Clock;

/// How a `Pool` is built. Zero means "choose for me" where the field says so.
struct PoolOptions {
    /// Threads running the pool's io_context (loaders, coroutine model calls, routing). Default 1.
    std::size_t io_threads = 1;

    /// Threads of the blocking executor that runs blocking model calls and `offload`ed work.
    /// 0: one per hardware thread.
    std::size_t blocking_threads = 0;

    /// Memory budget for workers in MB. 0: 80% of physical memory.
    std::size_t memory_limit_mb = 0;

    /// Requests that may wait per registry key before `overloaded` is returned. Default 1024.
    std::size_t queue_capacity = 1024;

    /// Chunks buffered between a streaming model and its reader (backpressure bound). Default 16.
    std::size_t stream_capacity = 16;

    /// Longest accepted registry key, in bytes. Default 256.
    std::size_t max_key_length = 256;

    /// Deadline of every request, from the call until its reply (queue wait plus service; for streams, the
    /// wait in the queue). An expired request ends with `timeout` and frees its queue slot. Default 60 s.
    std::chrono::milliseconds request_timeout{60'000};

    /// How long `stop()` lets in-flight requests finish before cancelling the rest. Default 30 s.
    std::chrono::milliseconds shutdown_timeout{30'000};

    /// The logger (spdlog). Null: a logger named "modelpool" writing to stderr, not registered globally.
    std::shared_ptr<spdlog::logger> logger{};

    /// The clock every delay reads. Null: the steady clock. Tests pass a `ManualClock`.
    std::shared_ptr<Clock> clock{};

    /// Checks the options; the error names the field and the value.
    [[nodiscard]] result<void> validate() const {
        if (io_threads == 0 || io_threads > 1024) {
            return fail(errc::invalid_argument, "io_threads must be between 1 and 1024 (got {})", io_threads);
        }
        if (blocking_threads > 4096) {
            return fail(errc::invalid_argument, "blocking_threads must be at most 4096 (got {})",
                        blocking_threads);
        }
        if (queue_capacity == 0) {
            return fail(errc::invalid_argument, "queue_capacity must be at least 1 (got 0)");
        }
        if (stream_capacity == 0) {
            return fail(errc::invalid_argument, "stream_capacity must be at least 1 (got 0)");
        }
        if (max_key_length == 0) {
            return fail(errc::invalid_argument, "max_key_length must be at least 1 (got 0)");
        }
        if (request_timeout.count() <= 0) {
            return fail(errc::invalid_argument, "request_timeout must be positive (got {} ms)",
                        request_timeout.count());
        }
        if (shutdown_timeout.count() < 0) {
            return fail(errc::invalid_argument, "shutdown_timeout must not be negative (got {} ms)",
                        shutdown_timeout.count());
        }
        return {};
    }
};

} // namespace modelpool
