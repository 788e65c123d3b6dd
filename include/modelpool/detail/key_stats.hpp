// modelpool/detail/key_stats.hpp
//
// What one registry key learns from the outcome of each of its requests: the pool's counters, the key's
// circuit breaker and its latency histograms (queue wait, service time). A request holds a shared_ptr to its
// key's stats and reports once, when it ends, whichever way it ends.
#pragma once

#include "modelpool/circuit_breaker.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/error.hpp"
#include "modelpool/histogram.hpp"
#include "modelpool/metrics.hpp"

#include <memory>
#include <utility>

namespace modelpool::detail {

/// True for the outcomes that count against a key's health (see circuit_breaker.hpp).
constexpr bool counts_as_failure(errc code) noexcept {
    return code == errc::model_error || code == errc::timeout || code == errc::spawn_failed;
}

/// See the file comment. Thread-safe (atomics and the lock-free breaker).
struct key_stats {
    key_stats(std::shared_ptr<pool_metrics> pool_counters, std::shared_ptr<Clock> pool_clock,
              const BreakerOptions& breaker_options)
        : pool(std::move(pool_counters)), clock(std::move(pool_clock)), breaker(breaker_options) {}

    std::shared_ptr<pool_metrics> pool; ///< The pool-wide counters.
    std::shared_ptr<Clock> clock;       ///< The pool's clock.
    CircuitBreaker breaker;             ///< Consulted before each request is admitted.
    LatencyHistogram queue_wait;        ///< From the call until a worker started the request.
    LatencyHistogram service;           ///< From a worker starting the request until it ended.
    SizeHistogram batch_size;           ///< Requests per model call, for a model with batching.

    /// Records how a request ended. `started` is `time_point{}` for one that never reached a worker.
    void record(Clock::time_point enqueued, Clock::time_point started, const CircuitBreaker::Permit& permit,
                bool ok, errc code) noexcept {
        pool->outcome(ok, code);
        const auto now = clock->now();
        if (started != Clock::time_point{}) {
            queue_wait.record(started - enqueued);
            service.record(now - started);
        }
        if (ok) {
            breaker.on_success(permit);
        } else if (counts_as_failure(code)) {
            breaker.on_failure(permit, now);
        } else {
            breaker.on_neutral(permit);
        }
    }

    /// A failed load counts against the key like a failed request (it is admitted by nobody, so it carries an
    /// `allowed` permit, which counts while the circuit is closed).
    void record_load_failure() noexcept {
        breaker.on_failure(CircuitBreaker::Permit{CircuitBreaker::Permit::kind_t::allowed, 0}, clock->now());
    }
};

} // namespace modelpool::detail
