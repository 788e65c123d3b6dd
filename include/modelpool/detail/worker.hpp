// modelpool/detail/worker.hpp
//
// The one worker loop every capability runs. A worker:
// 1. co_awaits its loader on the pool's io_context (no thread is blocked: a loader that waits on I/O or a
// timer
//    suspends, and a loader that throws counts as a failed load);
// 2. on failure, releases its memory reservation, logs one error line (key, worker id, reason) and lets its
//    router fail the waiting requests with `spawn_failed` if no other worker of the key is alive;
// 3. on success, registers as ready with its key's router and serves requests pulled from the key's queue,
// one
//    at a time (model authors need no locks), until the router releases it (eviction or shutdown).
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/detail/config.hpp"
#include "modelpool/detail/invoker.hpp"
#include "modelpool/detail/job.hpp"
#include "modelpool/detail/key_router.hpp"
#include "modelpool/detail/pool_core.hpp"
#include "modelpool/error.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/offload.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

namespace modelpool::detail {

/// The value type a loader's awaitable yields: `result<T>`.
template <class F> using loader_result_t = typename awaitable_value<std::invoke_result_t<F&>>::type;

/// A worker's place in the pool's gate: taken when the worker is spawned, left when its coroutine frame goes,
/// however it goes (finished, or destroyed unfinished at shutdown).
struct gate_ticket {
    std::shared_ptr<pool_core> core;
    WorkerId id;
    gate_ticket(std::shared_ptr<pool_core> c, WorkerId worker,
                std::shared_ptr<asio::cancellation_signal> signal)
        : core(std::move(c)), id(worker) {
        core->enter(id, std::move(signal));
    }
    gate_ticket(const gate_ticket&) = delete;
    gate_ticket& operator=(const gate_ticket&) = delete;
    ~gate_ticket() { core->leave(id); }
};

// The capability-independent steps of `run_worker`, compiled once in separate-compilation mode
// (detail/impl/worker.ipp). `capability` is the capability's name.

/// The loader threw: the error its worker fails with.
PoolError loader_threw();

/// The load failed with `cause`: releases the worker's memory, counts and logs the failure and tells the
/// router.
void worker_load_failed(pool_core& core, key_router& router, WorkerId id, std::string_view capability,
                        const PoolError& cause, AllocationGuard& guard);

/// The model loaded: the worker is ready to serve.
void worker_ready(pool_core& core, key_router& router, WorkerId id, std::string_view capability,
                  std::size_t memory_mb);

/// The worker returned from a request after it was found stuck: it stops.
void worker_stuck_returned(pool_core& core, key_router& router, WorkerId id, std::string_view capability);

/// The worker's loop ended (its model is destroyed): releases its memory, counts, logs and tells the router.
void worker_finished(pool_core& core, key_router& router, WorkerId id, std::string_view capability,
                     AllocationGuard& guard);

/// True when model type `T` serves at least one operation of `Cap` as a blocking call.
template <class Cap, class T, class List = typename Cap::operations> struct has_blocking_operation;
template <class Cap, class T, class... Ops>
struct has_blocking_operation<Cap, T, type_list<Ops...>>
    : std::bool_constant<(!is_coroutine_operation_v<T, Ops> || ...)> {};

/// Destroys a worker's model. A model with a blocking operation wraps a runtime whose teardown can block for
/// milliseconds (freeing its weights, joining its own threads: Tesseract's measured 3.5-9 ms), so it is
/// destroyed on the blocking executor, never on an io thread, and its memory is released only after that.
/// Once stop has joined the io threads, the stopping thread destroys it in place. A model whose operations
/// are all coroutines promised not to block: it is destroyed in place.
template <class Cap, class T> asio::awaitable<void> destroy_model(pool_core& core, std::optional<T>& model) {
    if constexpr (has_blocking_operation<Cap, T>::value) {
        if (!core.io_threads_joined.load(std::memory_order_acquire)) {
            // If the blocking executor drops this unrun at the end of stop, the worker's frame, and the model
            // with it, are destroyed with the pool.
            co_await offload(
                core.env.blocking, [&model] { model.reset(); }, asio::use_awaitable);
        }
    }
    model.reset();
}

/// Runs one worker of capability `Cap` with model type `T`, from load to stop. See the file comment.
/// `ticket` is taken at spawn time, so shutdown waits for a worker even before its coroutine first runs, and
/// leaves the gate even if the coroutine frame is destroyed unstarted.
template <class Cap, class T, class F>
asio::awaitable<void> run_worker(std::shared_ptr<pool_core> core, std::shared_ptr<key_router> router,
                                 WorkerId id, F loader, AllocationGuard guard,
                                 std::unique_ptr<gate_ticket> /*ticket: held by the frame*/) {
    // Never run the loader inline inside the spawn call (co_spawn dispatches when called on a pool thread):
    // the spawn function must return at once, whatever the loader does before its first suspension.
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    // Shutdown cancels a worker to abort what it awaits (a loader's I/O, a model's timer); the worker itself
    // must then run on to its normal exit, so a cancellation must not make its own next co_await throw.
    co_await asio::this_coro::throw_if_cancelled(false);
    router->transition(id, WorkerState::loading);
    core->metrics->loader_call();

    std::optional<result<T>> loaded;
    try {
        loaded.emplace(co_await std::invoke(loader));
    } catch (...) {
        loaded.emplace(unexpected<PoolError>(loader_threw()));
    }

    if (!*loaded) {
        const PoolError cause = std::move(loaded->error());
        loaded.reset();
        worker_load_failed(*core, *router, id, Cap::name, cause, guard);
        co_return;
    }

    std::optional<T> model(std::in_place, std::move(**loaded));
    loaded.reset();
    {
        const invoker<Cap> calls(*model, core->env);
        worker_ready(*core, *router, id, Cap::name, guard.size_mb());

        auto executor = co_await asio::this_coro::executor;
        for (;;) {
            auto job = router->try_take(id);
            if (!job) {
                job = co_await router->async_take(id, executor, asio::use_awaitable);
            }
            if (!job) {
                break;
            }
            co_await static_cast<detail::job<Cap>&>(*job).serve(calls);
            const auto after = router->request_served(id);
            if (after.interrupted) {
                // The request was cancelled or timed out and its call interrupted: the next one starts clean.
                co_await asio::this_coro::reset_cancellation_state();
                co_await asio::this_coro::throw_if_cancelled(false);
            }
            if (after.stop) {
                worker_stuck_returned(*core, *router, id, Cap::name);
                break;
            }
        }
    }
    co_await destroy_model<Cap>(*core, model); // before its memory is released
    worker_finished(*core, *router, id, Cap::name, guard);
}

} // namespace modelpool::detail

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/detail/impl/worker.ipp"
#endif
