// modelpool/metrics.hpp
//
// Counters a pool keeps at its real call sites (not in a helper nobody calls, as in the Rust pool): requests
// and their outcomes by error code, workers spawned, loaded, failed and stopped, loader calls. Cheap relaxed
// atomics; `snapshot()` copies them into a plain struct for programs and tests.
#pragma once

#include "modelpool/error.hpp"

#include <array>
#include <atomic>
#include <cstdint>

namespace modelpool {

/// A copy of a pool's counters at one moment.
struct MetricsSnapshot {
    std::uint64_t requests = 0;             ///< Requests accepted or refused by the pool's operations.
    std::uint64_t succeeded = 0;            ///< Requests that ended with a result (streams: ended cleanly).
    std::array<std::uint64_t, 11> errors{}; ///< Requests that ended with an error, by `errc` value.
    std::uint64_t workers_spawned = 0;      ///< Workers accepted by spawn functions.
    std::uint64_t workers_loaded = 0;       ///< Workers whose loader succeeded.
    std::uint64_t workers_failed = 0;       ///< Workers whose loader failed or threw.
    std::uint64_t workers_stopped = 0;      ///< Loaded workers that ended (evicted or shut down).
    std::uint64_t loader_calls = 0;         ///< Loader invocations.
    std::uint64_t workers_evicted = 0; ///< Workers evicted (idle too long, or to make room for another key).
    std::uint64_t workers_unhealthy = 0;  ///< Workers found stuck past a request's deadline (and replaced).
    std::uint64_t load_retries = 0;       ///< Failed loads scheduled for a retry.
    std::uint64_t circuit_rejections = 0; ///< Requests refused with `circuit_open`.

    /// Requests that ended with `code`.
    [[nodiscard]] std::uint64_t errors_with(errc code) const {
        return errors[static_cast<std::size_t>(code)];
    }
    /// Requests that ended with any error.
    [[nodiscard]] std::uint64_t error_total() const {
        std::uint64_t sum = 0;
        for (auto count : errors) {
            sum += count;
        }
        return sum;
    }
};

namespace detail {

/// The live counters behind `MetricsSnapshot`. Thread-safe.
class pool_metrics {
public:
    void request() noexcept { requests_.fetch_add(1, std::memory_order_relaxed); }
    void outcome(bool ok, errc code) noexcept {
        if (ok) {
            succeeded_.fetch_add(1, std::memory_order_relaxed);
        } else {
            auto index = static_cast<std::size_t>(code);
            errors_[index < errors_.size() ? index : 0].fetch_add(1, std::memory_order_relaxed);
        }
    }
    void worker_spawned() noexcept { spawned_.fetch_add(1, std::memory_order_relaxed); }
    void worker_loaded() noexcept { loaded_.fetch_add(1, std::memory_order_relaxed); }
    void worker_failed() noexcept { failed_.fetch_add(1, std::memory_order_relaxed); }
    void worker_stopped() noexcept { stopped_.fetch_add(1, std::memory_order_relaxed); }
    void loader_call() noexcept { loader_calls_.fetch_add(1, std::memory_order_relaxed); }
    void worker_evicted() noexcept { evicted_.fetch_add(1, std::memory_order_relaxed); }
    void worker_unhealthy() noexcept { unhealthy_.fetch_add(1, std::memory_order_relaxed); }
    void load_retry() noexcept { load_retries_.fetch_add(1, std::memory_order_relaxed); }
    void circuit_rejection() noexcept { circuit_rejections_.fetch_add(1, std::memory_order_relaxed); }

    [[nodiscard]] MetricsSnapshot snapshot() const noexcept {
        MetricsSnapshot snap;
        snap.requests = requests_.load(std::memory_order_relaxed);
        snap.succeeded = succeeded_.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i < errors_.size(); ++i) {
            snap.errors[i] = errors_[i].load(std::memory_order_relaxed);
        }
        snap.workers_spawned = spawned_.load(std::memory_order_relaxed);
        snap.workers_loaded = loaded_.load(std::memory_order_relaxed);
        snap.workers_failed = failed_.load(std::memory_order_relaxed);
        snap.workers_stopped = stopped_.load(std::memory_order_relaxed);
        snap.loader_calls = loader_calls_.load(std::memory_order_relaxed);
        snap.workers_evicted = evicted_.load(std::memory_order_relaxed);
        snap.workers_unhealthy = unhealthy_.load(std::memory_order_relaxed);
        snap.load_retries = load_retries_.load(std::memory_order_relaxed);
        snap.circuit_rejections = circuit_rejections_.load(std::memory_order_relaxed);
        return snap;
    }

private:
    std::atomic<std::uint64_t> requests_{0};
    std::atomic<std::uint64_t> succeeded_{0};
    std::array<std::atomic<std::uint64_t>, 11> errors_{};
    std::atomic<std::uint64_t> spawned_{0};
    std::atomic<std::uint64_t> loaded_{0};
    std::atomic<std::uint64_t> failed_{0};
    std::atomic<std::uint64_t> stopped_{0};
    std::atomic<std::uint64_t> loader_calls_{0};
    std::atomic<std::uint64_t> evicted_{0};
    std::atomic<std::uint64_t> unhealthy_{0};
    std::atomic<std::uint64_t> load_retries_{0};
    std::atomic<std::uint64_t> circuit_rejections_{0};
};

} // namespace detail
} // namespace modelpool
