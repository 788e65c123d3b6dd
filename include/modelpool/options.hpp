// modelpool/options.hpp
//
// Configuration of a `Pool`, as one struct filled with designated initialisers:
//
//     modelpool::Pool pool({.io_threads = 2, .memory_limit_mb = 8192, .queue_capacity = 256});
//
// Every field has a sensible default; `validate()` reports a bad combination as a `PoolError` naming the
// field and the values, before anything starts.
#pragma once

#include "modelpool/circuit_breaker.hpp"
#include "modelpool/error.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace spdlog {
class logger;
}

namespace modelpool {

class Clock;

/// What happened to a worker, as `PoolOptions::on_worker_event` reports it.
enum class WorkerEventKind {
    spawned, ///< Accepted by a spawn (its loader has not run yet).
    loaded,  ///< Its loader succeeded; it serves now.
    failed,  ///< Its loader failed or threw; its memory is released.
    evicted, ///< Chosen for eviction (idle too long, or to make room for another key); it stops next.
    stopped, ///< Its loop ended (evicted, unhealthy or shut down); its model is destroyed, its memory
             ///< released.
};

/// The name of an event kind, e.g. "evicted".
constexpr std::string_view to_string(WorkerEventKind kind) noexcept {
    switch (kind) {
    case WorkerEventKind::spawned:
        return "spawned";
    case WorkerEventKind::loaded:
        return "loaded";
    case WorkerEventKind::failed:
        return "failed";
    case WorkerEventKind::evicted:
        return "evicted";
    case WorkerEventKind::stopped:
        return "stopped";
    }
    return "unknown";
}

/// One worker lifecycle event.
struct WorkerEvent {
    WorkerEventKind kind;  ///< What happened.
    std::string_view key;  ///< The worker's registry key.
    std::uint64_t worker;  ///< The worker's id.
    std::size_t memory_mb; ///< The worker's reservation.
    std::string_view
        cause; ///< Why, for `failed` and `evicted` (the loader's error, "idle", "memory"); else empty.
};

/// Dynamic batching of one registered model's single-item requests into its batch operation: `embed` into
/// `batch_embed` (text_embedding), `embed_image` into `batch_embed_images` (image_embedding). Triton's
/// dynamic batcher calls these `max_batch_size` and `max_queue_delay_microseconds`; Ray Serve's
/// `@serve.batch`, `max_batch_size` and `batch_wait_timeout_s`.
///
/// With the default `max_queue_delay` of 0 batching adds no latency: a request that finds an idle worker runs
/// at once, alone; requests that queue while every worker is busy are taken together, up to
/// `max_batch_size`, by the next worker that frees up. A positive `max_queue_delay` lets a worker holding
/// fewer than `max_batch_size` requests wait until the oldest has waited that long (or the batch is full) for
/// a fuller batch. A batch only joins requests whose options give the same result (the same `task`); each
/// request keeps its own deadline, cancellation, latency figures and error.
struct BatchingOptions {
    /// Most requests in one batch call. 1 (the default): no batching.
    std::size_t max_batch_size = 1;
    /// How long a worker may hold a partial batch for more requests, counted from the oldest one's arrival.
    /// 0 (the default): never wait.
    std::chrono::microseconds max_queue_delay{0};
    /// When a batch call fails, retry its requests one by one, so that one bad input fails only its own
    /// request (true, the default); false: every request of the batch gets the batch's error.
    bool retry_items_on_failure = true;
};

/// How the pool manages one registered model's workers (`Pool::register_*_model`).
struct ModelOptions {
    /// Memory each worker reserves from the pool's governor, in MB. Required: must be positive.
    std::size_t per_worker_mb = 0;
    /// Workers kept loaded even when idle (started at registration). Default 0: scale to zero.
    std::size_t min_workers = 0;
    /// Most workers, counting those still loading. 0: `PoolOptions::max_workers_per_model`.
    std::size_t max_workers = 0;
    /// Dynamic batching (text_embedding and image_embedding models only). Default: off.
    BatchingOptions batching{};
};

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

    /// Priority ageing: a queued request gains one priority level per `priority_aging` waited, so a request
    /// is never overtaken by a higher-level request that arrived more than (levels apart) x `priority_aging`
    /// after it. Default 1 s.
    std::chrono::milliseconds priority_aging{1'000};

    /// Default longest wait in a key's queue before a request ends with `timeout` (`RequestOptions::
    /// queue_timeout` overrides it per call). 0 (the default): no limit beyond `request_timeout`.
    std::chrono::milliseconds queue_timeout{0};

    /// Chunks buffered between a streaming model and its reader (backpressure bound). Default 16.
    std::size_t stream_capacity = 16;

    /// Longest accepted registry key, in bytes. Default 256.
    std::size_t max_key_length = 256;

    /// Deadline of every request, from the call until its reply (queue wait plus service; for streams, the
    /// wait in the queue). An expired request ends with `timeout` and frees its queue slot. Default 60 s.
    std::chrono::milliseconds request_timeout{60'000};

    /// Deadline of a whole stream, from the call until its last chunk (queue wait and generation). An expired
    /// stream ends with `timeout` and its model is told to stop. Default 10 minutes.
    std::chrono::milliseconds stream_timeout{600'000};
    /// The longest a stream may go without progress (no chunk produced; a model blocked by a reader that does
    /// not read makes none) before it ends with `timeout`. Default 60 s.
    std::chrono::milliseconds stream_idle_timeout{60'000};
    /// Per-key circuit breaker: opens after `failure_threshold` consecutive failures (model errors, timeouts,
    /// load failures), stays open `open_time`, then admits `half_open_probes` probes. Defaults 5, 30 s, 1.
    BreakerOptions breaker{};
    /// How long a worker may go on serving a request after the request's deadline (it is asked to stop then)
    /// before it counts as stuck: unhealthy, replaced if its key is registered. Default 1 s.
    std::chrono::milliseconds stuck_grace{1'000};
    /// How long `stop()` lets in-flight requests finish before cancelling the rest. Default 30 s.
    std::chrono::milliseconds shutdown_timeout{30'000};

    /// The logger (spdlog). Null: a logger named "modelpool" writing to stderr, not registered globally.
    std::shared_ptr<spdlog::logger> logger{};

    /// The clock every delay reads. Null: the steady clock. Tests pass a `ManualClock`.
    std::shared_ptr<Clock> clock{};

    // ---- registered models (`Pool::register_*_model`): how the pool manages their workers by itself

    /// Workers the first request of a registered key starts, memory permitting (fewer if only fewer fit).
    /// Default 2.
    std::size_t cold_start_workers = 2;
    /// Most workers of one registered key, counting those still loading. Default 4.
    std::size_t max_workers_per_model = 4;
    /// How long every worker of a key must have been busy with requests still queued before one more worker
    /// is started. Default 0: at once.
    std::chrono::milliseconds upscale_delay{0};
    /// A worker idle this long is evicted (least recently used first, one per key per maintenance tick, down
    /// to the key's `min_workers`). Default 5 minutes.
    std::chrono::milliseconds idle_timeout{300'000};
    /// How often maintenance runs (idle eviction, minimum workers, delayed scale-up, load retries). Default
    /// 1 s.
    std::chrono::milliseconds maintenance_interval{1'000};
    /// How long a spawn waits for memory that is being released (idle workers of other keys evicted to make
    /// room). A spawn that cannot fit even then fails at once with `memory_exhausted`. Default 10 s.
    std::chrono::milliseconds memory_wait_timeout{10'000};
    /// Failed loads of a key retried before the key fails fast with `spawn_failed`. Default 3.
    std::size_t load_retries = 3;
    /// Delay before the first load retry; doubles per retry up to `retry_backoff_max`, with jitter (each
    /// delay is drawn from [d/2, d]). Default 1 s.
    std::chrono::milliseconds retry_backoff_initial{1'000};
    /// Longest delay between load retries, and how long a key whose retries are exhausted fails fast before a
    /// request may try loading it again. Default 30 s.
    std::chrono::milliseconds retry_backoff_max{30'000};
    /// Seeds the retry jitter (per key), so that runs can be reproduced. Default 0.
    std::uint64_t random_seed = 0;

    /// Called after each worker lifecycle event, on a pool thread. Must not block; must not call `stop()`.
    /// Empty: no calls.
    std::function<void(const WorkerEvent&)> on_worker_event{};

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
        if (priority_aging.count() <= 0 || priority_aging > std::chrono::hours(24)) {
            return fail(errc::invalid_argument, "priority_aging must be between 1 ms and 24 h (got {} ms)",
                        priority_aging.count());
        }
        if (queue_timeout.count() < 0) {
            return fail(errc::invalid_argument, "queue_timeout must not be negative (got {} ms)",
                        queue_timeout.count());
        }
        if (max_key_length == 0) {
            return fail(errc::invalid_argument, "max_key_length must be at least 1 (got 0)");
        }
        if (request_timeout.count() <= 0) {
            return fail(errc::invalid_argument, "request_timeout must be positive (got {} ms)",
                        request_timeout.count());
        }
        if (max_workers_per_model == 0) {
            return fail(errc::invalid_argument, "max_workers_per_model must be at least 1 (got 0)");
        }
        if (cold_start_workers == 0 || cold_start_workers > max_workers_per_model) {
            return fail(errc::invalid_argument,
                        "cold_start_workers must be between 1 and max_workers_per_model ({}) (got {})",
                        max_workers_per_model, cold_start_workers);
        }
        if (upscale_delay.count() < 0) {
            return fail(errc::invalid_argument, "upscale_delay must not be negative (got {} ms)",
                        upscale_delay.count());
        }
        if (idle_timeout.count() <= 0) {
            return fail(errc::invalid_argument, "idle_timeout must be positive (got {} ms)",
                        idle_timeout.count());
        }
        if (maintenance_interval.count() <= 0) {
            return fail(errc::invalid_argument, "maintenance_interval must be positive (got {} ms)",
                        maintenance_interval.count());
        }
        if (memory_wait_timeout.count() < 0) {
            return fail(errc::invalid_argument, "memory_wait_timeout must not be negative (got {} ms)",
                        memory_wait_timeout.count());
        }
        if (retry_backoff_initial.count() <= 0 || retry_backoff_max < retry_backoff_initial) {
            return fail(
                errc::invalid_argument,
                "retry backoff must satisfy 0 < retry_backoff_initial <= retry_backoff_max (got {} ms "
                "and {} ms)",
                retry_backoff_initial.count(), retry_backoff_max.count());
        }
        if (stream_timeout.count() <= 0) {
            return fail(errc::invalid_argument, "stream_timeout must be positive (got {} ms)",
                        stream_timeout.count());
        }
        if (stream_idle_timeout.count() <= 0) {
            return fail(errc::invalid_argument, "stream_idle_timeout must be positive (got {} ms)",
                        stream_idle_timeout.count());
        }
        if (stuck_grace.count() < 0) {
            return fail(errc::invalid_argument, "stuck_grace must not be negative (got {} ms)",
                        stuck_grace.count());
        }
        if (auto valid = breaker.validate(); !valid) {
            return fail(errc::invalid_argument, "breaker.{}", valid.error().message());
        }
        if (shutdown_timeout.count() < 0) {
            return fail(errc::invalid_argument, "shutdown_timeout must not be negative (got {} ms)",
                        shutdown_timeout.count());
        }
        return {};
    }
};

} // namespace modelpool
