// modelpool/key_snapshot.hpp
//
// `KeySnapshot`: what `Pool::snapshot` reports about one registry key (workers per state, queue, memory,
// health, circuit breaker, latency histograms). A plain value, copied under the key's lock so that its counts
// agree with each other.
#pragma once

#include "modelpool/circuit_breaker.hpp"
#include "modelpool/histogram.hpp"
#include "modelpool/worker_state.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace modelpool {

/// Counts of one key's workers and requests, as `Pool::snapshot` reports them.
struct KeySnapshot {
    std::string key;                      ///< The registry key.
    std::string_view capability;          ///< Its capability name, e.g. "text_embedding".
    std::array<std::size_t, 8> workers{}; ///< Workers per `WorkerState`, indexed by the enum's value.
    std::size_t queue_depth = 0;          ///< Requests waiting for a worker.
    std::size_t queue_capacity = 0;       ///< The queue's bound.
    std::size_t memory_mb = 0;            ///< Memory reserved by the key's live workers.
    std::uint64_t served = 0;             ///< Requests its workers have completed.
    /// Busy workers stuck past a request's deadline (a registered key replaces them; they stop on return).
    std::size_t unhealthy = 0;
    /// Workers decided on but not spawned yet (e.g. waiting for memory).
    std::size_t reserved = 0;
    /// The key is a registered model: the pool manages its workers.
    bool registered = false;
    /// A registered key's minimum workers.
    std::size_t min_workers = 0;
    /// A registered key's maximum workers (0 for keys that are not registered).
    std::size_t max_workers = 0;
    /// Consecutive failed loads (0 after a load succeeds).
    std::size_t load_failures = 0;
    /// Load retries are exhausted: requests get `spawn_failed` at once until the next retry window.
    bool failing_fast = false;
    /// The last loader error, or empty.
    std::string last_load_error;
    /// The state of the key's circuit breaker.
    CircuitState circuit = CircuitState::closed;
    /// Requests (and loads) failed in a row, as the breaker counts them.
    std::size_t consecutive_failures = 0;
    /// Seconds from the call until a worker started the request.
    HistogramSnapshot queue_wait;
    /// Seconds from a worker starting the request until it ended.
    HistogramSnapshot service_time;
    /// Requests per model call of a model with batching (`ModelOptions::batching`); empty otherwise. The
    /// queue delay a batch adds is part of `queue_wait`.
    HistogramSnapshot batch_size;

    /// Workers in `state`.
    [[nodiscard]] std::size_t count(WorkerState state) const {
        return workers[static_cast<std::size_t>(state)];
    }
    /// Workers that hold a model and can serve (ready, busy or idle).
    [[nodiscard]] std::size_t serving() const {
        return count(WorkerState::ready) + count(WorkerState::busy) + count(WorkerState::idle);
    }
    /// Workers not yet able to serve (spawning or loading).
    [[nodiscard]] std::size_t starting() const {
        return count(WorkerState::spawning) + count(WorkerState::loading);
    }
    /// Readiness: at least one healthy worker can serve now.
    [[nodiscard]] bool ready() const { return serving() > unhealthy; }
    /// Liveness: no worker is stuck past a request's deadline, and loading is not failing fast.
    [[nodiscard]] bool live() const { return unhealthy == 0 && !failing_fast; }
};

} // namespace modelpool
