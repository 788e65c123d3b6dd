// modelpool/detail/pool_core.hpp
//
// What every worker and router of one pool shares: logger, counters, clock, memory governor, the options that
// steer autoscaling, the lifecycle event hook, and the gate that shutdown waits on. Held through shared_ptr
// by each worker coroutine and router, so it outlives all of them.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/detail/config.hpp"
#include "modelpool/detail/invoker.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/options.hpp"

#include <spdlog/logger.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <utility>
#include <vector>

namespace modelpool {

/// Identifies a worker within its pool (unique per pool, never reused).
using WorkerId = std::uint64_t;

namespace detail {

/// See the file comment.
struct pool_core {
    explicit pool_core(call_env e) : env(std::move(e)) {}

    std::shared_ptr<spdlog::logger> logger;   ///< Where workers and routers log.
    std::shared_ptr<pool_metrics> metrics;    ///< Counters.
    std::shared_ptr<Clock> clock;             ///< Every delay reads it.
    std::shared_ptr<MemoryGovernor> governor; ///< The pool's memory budget.
    const PoolOptions* options = nullptr;     ///< The pool's validated options (owned by the pool).
    asio::any_io_executor io;                 ///< The pool's io_context.
    call_env env;                             ///< Where blocking model calls run.
    /// Set by stop once the io threads are joined: the stopping thread then runs what is left of the workers
    /// itself, so a worker destroys its model in place instead of on the blocking executor.
    std::atomic<bool> io_threads_joined{false};
    std::uint64_t seed = 0; ///< Base of the per-key jitter seeds.

    /// Evicts idle workers of registered keys other than `except`, least recently used first, when together
    /// they free at least `needed_mb`; returns the MB they will release (0 when they could not free enough,
    /// and then none is evicted). Installed by the pool.
    std::function<std::size_t(std::string_view except, std::size_t needed_mb)> evict_for_memory;

    /// Reports a lifecycle event to `PoolOptions::on_worker_event`; never throws into the pool.
    void event(WorkerEventKind kind, std::string_view key, WorkerId id, std::size_t mb,
               std::string_view cause = {}) const noexcept;

    /// Counts worker coroutines that have not finished, so shutdown can wait for them (a gate), and keeps the
    /// signal that cancels worker `id` when shutdown gives up waiting.
    void enter(WorkerId id, std::shared_ptr<asio::cancellation_signal> signal);

    /// Worker `id`'s coroutine finished (or its frame was destroyed).
    void leave(WorkerId id);

    /// The cancellation signals of the workers still running.
    std::vector<std::shared_ptr<asio::cancellation_signal>> running_signals();

    std::mutex mutex; ///< Guards live_workers and signals.
    std::map<WorkerId, std::shared_ptr<asio::cancellation_signal>>
        signals;                     ///< Running workers' stop signals.
    std::condition_variable drained; ///< Signalled when live_workers reaches 0.
    std::size_t live_workers = 0;    ///< Worker coroutines not yet finished.
};

} // namespace detail
} // namespace modelpool

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/detail/impl/pool_core.ipp"
#endif
