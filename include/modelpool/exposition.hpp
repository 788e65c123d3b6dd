// modelpool/exposition.hpp
//
// The pool's metrics as Prometheus text (exposition format 0.0.4), for an HTTP `/metrics` endpoint:
//
//     std::string body = pool.prometheus();   // or prometheus_text(metrics, keys, memory)
//
// Every name has the `modelpool_` prefix; counters end in `_total`, sizes are in bytes and durations in
// seconds, as Prometheus conventions ask. Per-key series carry a `key` label (escaped as the format
// requires).
//
//   counters   modelpool_requests_total, modelpool_requests_succeeded_total,
//              modelpool_request_errors_total{code},
//              modelpool_workers_{spawned,loaded,failed,stopped,evicted, unhealthy}_total,
//              modelpool_loader_calls_total, modelpool_load_retries_total, modelpool_circuit_rejections_total
//   gauges     modelpool_memory_{limit,allocated,peak}_bytes, modelpool_queue_depth{key},
//              modelpool_queue_capacity{key}, modelpool_workers{key,state}, modelpool_key_memory_bytes{key},
//              modelpool_key_ready{key}, modelpool_key_live{key}, modelpool_circuit_state{key,state}
//   histograms modelpool_queue_wait_seconds{key}, modelpool_service_seconds{key},
//              modelpool_batch_size{key} (keys with batching only)
#pragma once

#include "modelpool/detail/prometheus.hpp"
#include "modelpool/error.hpp"
#include "modelpool/key_snapshot.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/worker_state.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelpool {

/// Renders `metrics`, `keys` and `memory` as Prometheus text exposition (see the file comment).
inline std::string prometheus_text(const MetricsSnapshot& metrics, const std::vector<KeySnapshot>& keys,
                                   const MemoryStats& memory) {
    detail::prometheus_writer w;
    constexpr double mb = 1024.0 * 1024.0;
    const auto counter = [&w](std::string_view name, std::string_view help, std::uint64_t value) {
        w.family(name, "counter", help);
        w.sample(name, {}, value);
    };

    counter("modelpool_requests_total", "Requests accepted or refused by the pool's operations.",
            metrics.requests);
    counter("modelpool_requests_succeeded_total",
            "Requests that ended with a result (streams: ended cleanly).", metrics.succeeded);
    w.family("modelpool_request_errors_total", "counter",
             "Requests that ended with an error, by error code.");
    for (int code = 1; code <= static_cast<int>(errc::shutting_down); ++code) {
        const auto name = to_string(static_cast<errc>(code));
        w.sample("modelpool_request_errors_total", {{"code", name}},
                 metrics.errors_with(static_cast<errc>(code)));
    }
    counter("modelpool_workers_spawned_total", "Workers accepted by spawns.", metrics.workers_spawned);
    counter("modelpool_workers_loaded_total", "Workers whose loader succeeded.", metrics.workers_loaded);
    counter("modelpool_workers_failed_total", "Workers whose loader failed or threw.",
            metrics.workers_failed);
    counter("modelpool_workers_stopped_total", "Loaded workers that ended.", metrics.workers_stopped);
    counter("modelpool_workers_evicted_total", "Workers evicted (idle, or to make room for another key).",
            metrics.workers_evicted);
    counter("modelpool_workers_unhealthy_total", "Workers found stuck past a request's deadline.",
            metrics.workers_unhealthy);
    counter("modelpool_loader_calls_total", "Loader invocations.", metrics.loader_calls);
    counter("modelpool_load_retries_total", "Failed loads scheduled for a retry.", metrics.load_retries);
    counter("modelpool_circuit_rejections_total", "Requests refused because a key's circuit was open.",
            metrics.circuit_rejections);

    const auto gauge = [&w](std::string_view name, std::string_view help, double value) {
        w.family(name, "gauge", help);
        w.sample(name, {}, value);
    };
    gauge("modelpool_memory_limit_bytes", "The memory governor's budget.",
          static_cast<double>(memory.limit_mb) * mb);
    gauge("modelpool_memory_allocated_bytes", "Memory reserved by live workers.",
          static_cast<double>(memory.allocated_mb) * mb);
    gauge("modelpool_memory_peak_bytes", "The highest reservation so far.",
          static_cast<double>(memory.peak_mb) * mb);

    w.family("modelpool_queue_depth", "gauge", "Requests waiting for a worker, per key.");
    for (const auto& key : keys) {
        w.sample("modelpool_queue_depth", {{"key", key.key}}, key.queue_depth);
    }
    w.family("modelpool_queue_capacity", "gauge", "The bound of each key's queue.");
    for (const auto& key : keys) {
        w.sample("modelpool_queue_capacity", {{"key", key.key}}, key.queue_capacity);
    }
    w.family("modelpool_workers", "gauge", "Workers per key and state.");
    for (const auto& key : keys) {
        for (std::size_t state = 0; state < key.workers.size(); ++state) {
            const auto name = to_string(static_cast<WorkerState>(state));
            w.sample("modelpool_workers", {{"key", key.key}, {"state", name}}, key.workers[state]);
        }
    }
    w.family("modelpool_key_memory_bytes", "gauge", "Memory reserved by each key's live workers.");
    for (const auto& key : keys) {
        w.sample("modelpool_key_memory_bytes", {{"key", key.key}}, static_cast<double>(key.memory_mb) * mb);
    }
    w.family("modelpool_key_ready", "gauge", "1 when the key has a healthy worker able to serve.");
    for (const auto& key : keys) {
        w.sample("modelpool_key_ready", {{"key", key.key}}, key.ready() ? 1 : 0);
    }
    w.family("modelpool_key_live", "gauge",
             "1 when no worker of the key is stuck and loading is not failing fast.");
    for (const auto& key : keys) {
        w.sample("modelpool_key_live", {{"key", key.key}}, key.live() ? 1 : 0);
    }
    w.family("modelpool_circuit_state", "gauge", "1 for the state each key's circuit breaker is in.");
    for (const auto& key : keys) {
        for (auto state : {CircuitState::closed, CircuitState::open, CircuitState::half_open}) {
            w.sample("modelpool_circuit_state", {{"key", key.key}, {"state", to_string(state)}},
                     key.circuit == state ? 1 : 0);
        }
    }
    w.family("modelpool_queue_wait_seconds", "histogram",
             "Time from the call until a worker started the request.");
    for (const auto& key : keys) {
        w.histogram("modelpool_queue_wait_seconds", {{"key", key.key}}, key.queue_wait);
    }
    w.family("modelpool_service_seconds", "histogram",
             "Time from a worker starting a request until it ended.");
    for (const auto& key : keys) {
        w.histogram("modelpool_service_seconds", {{"key", key.key}}, key.service_time);
    }
    const bool batching = std::any_of(keys.begin(), keys.end(),
                                      [](const KeySnapshot& key) { return key.batch_size.count > 0; });
    if (batching) {
        w.family("modelpool_batch_size", "histogram", "Requests per model call, for models with batching.");
        for (const auto& key : keys) {
            if (key.batch_size.count > 0) {
                w.histogram("modelpool_batch_size", {{"key", key.key}}, key.batch_size);
            }
        }
    }
    return std::move(w).take();
}

} // namespace modelpool
