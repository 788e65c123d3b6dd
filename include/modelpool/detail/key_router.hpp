// modelpool/detail/key_router.hpp
//
// One registry key's queue and workers: the router. Requests wait in ONE bounded FIFO queue per key and
// workers pull from it (the design the Rust pool's own plan asked for), so:
// - a request never waits behind a busy worker while another worker of the key is idle (idle workers are
// parked
//   here and get the next request directly);
// - requests are never routed to a worker that is still loading or already gone, and none is lost on
// eviction;
// - the queue bound is real backpressure (`overloaded` when full);
// - higher priorities are served first, with ageing (request_queue.hpp);
// - a registered model with batching takes queued compatible requests together (batch_job.hpp): a worker
//   that takes a batchable request also takes up to `max_batch_size - 1` compatible ones still queued, and,
//   with a `max_queue_delay`, holds a partial batch until the oldest request has waited that long or the
//   batch is full ("collecting"; the key's deadline sweeper is its timer, so nothing runs while nothing
//   waits).
// The router also counts the key's workers by state, so "is anything loading?" and "max workers" are answered
// from one place, under one short lock that is never held across a suspension point or user code.
//
// For a registered model (`set_spec`) the router also manages the key's workers: every decision to start
// workers (cold start, scale-up, minimum, replacement, load retry) is taken under the lock and turned into
// reservations before it unlocks, and idle eviction removes a worker from the parked list under the same lock
// that hands requests to parked workers, so a worker that just got a request is never evicted.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/detail/backoff.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/config.hpp"
#include "modelpool/detail/job.hpp"
#include "modelpool/detail/key_stats.hpp"
#include "modelpool/detail/memory_wait.hpp"
#include "modelpool/detail/pool_core.hpp"
#include "modelpool/detail/request_queue.hpp"
#include "modelpool/detail/scaling_policy.hpp"
#include "modelpool/error.hpp"
#include "modelpool/key_snapshot.hpp"
#include "modelpool/options.hpp"
#include "modelpool/worker_state.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace modelpool {

namespace detail {

/// How the pool manages a registered model's workers (see `Pool::register_model`).
struct model_spec {
    /// Starts one worker holding `guard` in a slot the router reserved; the worker is added with
    /// `add_worker(id, mb, true)`. Errors (e.g. shutting_down) give the slot back.
    std::function<result<WorkerId>(AllocationGuard)> spawn;
    std::size_t per_worker_mb = 0; ///< Each worker's reservation.
    std::size_t min_workers = 0;   ///< Kept even when idle.
    std::size_t max_workers = 1;   ///< Never more, counting loading workers.
    std::size_t cold_start = 1;    ///< Started by the first request when the key has none.
    BatchingOptions batching{};    ///< Dynamic batching of its single-item requests.
};

/// The queue and worker table of one registry key. Thread-safe; see the file comment.
class key_router {
public:
    using job_ptr = std::shared_ptr<job_base>;                        ///< A queued request.
    using take_handler = asio::any_completion_handler<void(job_ptr)>; ///< A parked worker's continuation.

    key_router(std::string key, std::type_index capability, std::string_view capability_name,
               std::size_t queue_capacity, std::shared_ptr<pool_core> core);

    /// The registry key.
    [[nodiscard]] const std::string& key() const noexcept { return key_; }
    /// Which capability the key serves (fixed by its first worker).
    [[nodiscard]] std::type_index capability() const noexcept { return capability_; }
    /// The capability's name.
    [[nodiscard]] std::string_view capability_name() const noexcept { return capability_name_; }

    /// The key's breaker, histograms and counters, which its requests report to.
    [[nodiscard]] const std::shared_ptr<key_stats>& stats() const noexcept { return stats_; }

    /// Asks the key's circuit breaker to admit a request; `circuit_open` (counted) when it is open.
    result<CircuitBreaker::Permit> admit(Clock::time_point now);

    /// Starts the key's deadline sweeper (see `sweep`). `self` must own this router.
    void start(const std::shared_ptr<key_router>& self);

    // ---- registered models
    // ---------------------------------------------------------------------------------

    /// Makes the key a registered model managed by `spec`, and starts its minimum workers.
    result<void> set_spec(std::shared_ptr<const model_spec> spec);

    /// Starts workers until `count` healthy ones are alive or loading (at most the key's maximum); returns
    /// how many it started. Fails with `invalid_argument` for a key that is not registered, `shutting_down`
    /// after stop, or the governor's `memory_exhausted` when not even one could start.
    result<std::size_t> ensure(std::size_t count);

    /// Idle workers of this registered key that could go to make room for another key's spawn: the least
    /// recently used first, never below the key's minimum.
    struct idle_candidate {
        Clock::time_point parked_at; ///< When it became idle.
        WorkerId id;                 ///< The worker.
        std::size_t memory_mb;       ///< What it holds.
    };

    /// See `idle_candidate`.
    [[nodiscard]] std::vector<idle_candidate> idle_candidates() const;

    /// Evicts worker `id` if it is still idle (it may have taken a request meanwhile); true if it was.
    bool evict_idle(WorkerId id, std::string_view cause);

    /// One maintenance tick: evicts the least recently used worker if it has been idle for the idle timeout
    /// (one per tick, never below the minimum), then starts what the scaling policy asks for (minimum
    /// workers, a delayed scale-up, a load retry whose backoff has passed).
    void maintain(Clock::time_point now);

    // ---- workers
    // -------------------------------------------------------------------------------------------

    /// Records a new worker in state `spawning`; `reserved` when it fills a slot the router reserved. Fails
    /// with `shutting_down` once the router is closed.
    /// `stop` and `executor` are the worker coroutine's cancellation signal and executor: emitting the signal
    /// there interrupts what the worker awaits (see `interrupt`).
    result<void> add_worker(WorkerId id, std::size_t memory_mb, bool reserved = false,
                            std::weak_ptr<asio::cancellation_signal> stop = {},
                            asio::any_io_executor executor = {});

    /// Moves worker `id` to `to` if the lifecycle allows it; false (and no change) otherwise.
    bool transition(WorkerId id, WorkerState to);

    /// The worker loaded its model: it may now take requests, and the key's failed-load streak ends.
    void worker_loaded(WorkerId id);

    /// The worker's loader failed: forget it. For a registered key the load is retried with backoff while
    /// retries remain (waiters whose deadline comes first are told now); then, or at once for a key that is
    /// not registered, when no other worker of the key is alive, every queued request learns at once with
    /// `error` (spawn_failed naming the loader's message).
    void worker_failed(WorkerId id, const PoolError& error);

    /// The worker ended (evicted, unhealthy or shut down): forget it. Requests still queued with no live
    /// worker left are failed (`no_workers`, or `shutting_down` once closed) rather than left waiting; a
    /// registered key starts new workers for them instead.
    void worker_stopped(WorkerId id);

    // ---- requests
    // ------------------------------------------------------------------------------------------

    /// Accepts a request: straight to an idle worker, else into the queue. A registered key with no worker
    /// starts its cold start here. Fails at once with `shutting_down` (closed), `no_workers` (nothing alive
    /// or loading, key not registered), `overloaded` (queue full) or `spawn_failed` (a registered key whose
    /// loads keep failing, until its next retry window).
    result<void> submit(job_ptr job);

    /// Takes the next request for worker `id` without waiting; nullptr when none is queued.
    job_ptr try_take(WorkerId id);

    /// Parks worker `id` until a request arrives (completes with it) or the worker must stop (nullptr).
    template <class CompletionToken>
    auto async_take(WorkerId id, asio::any_io_executor fallback, CompletionToken&& token) {
        return asio::async_initiate<CompletionToken, void(job_ptr)>(
            [this, id](auto handler, asio::any_io_executor fallback) {
                // Resolved here, where the handler's type is still known (see completion_executor).
                auto executor = completion_executor(handler, fallback);
                take_or_park(id, std::move(executor), take_handler(std::move(handler)));
            },
            token, std::move(fallback));
    }

    /// Forgets a request that was cancelled while queued (frees its queue slot).
    void remove(const job_base* job);

    /// Stops the model call serving `job`, if one does: the worker's signal is emitted on the worker's own
    /// executor, so it cannot race with the worker, and only while the worker still serves this very request.
    /// A coroutine model whose awaited operations honour cancellation returns early; a blocking call cannot
    /// be interrupted and runs to its end (its result is discarded).
    void interrupt(const job_ptr& job);

    /// What a worker does after a request: see `request_served`.
    struct after_request {
        bool stop = false;        ///< It was found stuck and a replacement was started: it stops.
        bool interrupted = false; ///< Its call was interrupted: it resets its cancellation state first.
    };

    /// Marks a finished request on worker `id` (one lock per request). `stop` when it was found stuck past a
    /// deadline and a replacement was started (a worker of a key that is not registered serves on instead);
    /// `interrupted` when its model call was interrupted.
    after_request request_served(WorkerId id);

    // ---- lifecycle
    // -----------------------------------------------------------------------------------------

    /// Refuses new requests and spawns with `reason` and releases the parked workers (they stop). Queued
    /// requests are still served by the busy and loading workers, which stop once the queue is empty; if the
    /// key has no worker left to serve them, they end with `reason` now. Idempotent.
    void close(std::string reason);

    /// Ends every request still queued or being served with `error` (workers' late results are then
    /// discarded). Used by shutdown once its grace period is over.
    void fail_remaining(std::chrono::milliseconds grace);

    /// Current counts.
    [[nodiscard]] KeySnapshot snapshot() const;

    /// The state of worker `id`, if it is still known.
    [[nodiscard]] std::optional<WorkerState> state_of(WorkerId id) const;

private:
    struct worker_entry {
        WorkerState state = WorkerState::spawning;
        std::size_t memory_mb = 0;
        std::uint64_t served = 0;
        job_ptr current;        // the request being served, so shutdown can answer it
        bool unhealthy = false; // stuck past a request's deadline; stops when its call returns
        std::weak_ptr<asio::cancellation_signal> stop; // interrupts what the worker awaits
        asio::any_io_executor executor;                // where the worker runs (emit `stop` only there)
        bool interrupted = false;                      // `stop` was emitted for the current request
        job_ptr overdue;                               // the request that passed its deadline while served
        Clock::time_point overdue_at{};                // when the sweeper found it overdue
    };

    struct parked_worker {
        WorkerId id;
        take_handler handler;
        asio::any_io_executor executor;
        Clock::time_point parked_at; // for least-recently-used eviction

        parked_worker(WorkerId i, take_handler h, asio::any_io_executor e, Clock::time_point t)
            : id(i), handler(std::move(h)), executor(std::move(e)), parked_at(t) {}
        parked_worker(parked_worker&&) noexcept = default;
        // Boost 1.81's any_completion_handler move-assignment recurses until the stack overflows; erasing
        // from the parked list move-assigns, so the handler is destroyed and move-constructed instead.
        parked_worker& operator=(parked_worker&& other) noexcept {
            if (this != &other) {
                id = other.id;
                handler.~take_handler();
                ::new (static_cast<void*>(&handler)) take_handler(std::move(other.handler));
                executor = std::move(other.executor);
                parked_at = other.parked_at;
            }
            return *this;
        }
        parked_worker(const parked_worker&) = delete;
        parked_worker& operator=(const parked_worker&) = delete;
        ~parked_worker() = default;
    };

    // Workers to start, decided under the lock (the slots are reserved), started after it.
    struct launch_order {
        scaling_plan plan;
        std::shared_ptr<const model_spec> spec;
    };

    struct launch_result {
        std::size_t started = 0;
        std::optional<PoolError> error;
    };

    // `async_take`'s initiation: completes `handler` on `executor` with the next queued request (nullptr once
    // the worker must stop), or parks the worker until `submit` or `close` completes it.
    void take_or_park(WorkerId id, asio::any_io_executor executor, take_handler handler);

    // ---- scaling (called with mutex_ held unless said otherwise)

    // Asks the scaling policy what to start now, and reserves it.
    launch_order plan_locked(Clock::time_point now);

    launch_order reserve_locked(std::size_t count, bool cold);

    // Fills reserved slots (without the lock): each takes its memory now, or, for the first worker of a key
    // that has none, after evicting idle workers of other keys. Slots that cannot be filled are given back.
    launch_result launch(launch_order order);

    // The first worker of a key does not fit: evict other keys' idle workers if, together with the free
    // memory, they make room, and wait for their memory; otherwise give the slot back with memory_exhausted.
    bool make_room(const std::shared_ptr<const model_spec>& spec);

    PoolError cold_start_refusal(const std::shared_ptr<const model_spec>& spec) const;

    PoolError cold_start_refusal(const std::shared_ptr<const model_spec>& spec, const MemoryStats& stats,
                                 std::size_t evictable) const;

    // Gives back `count` reserved slots (without the lock). If that leaves the key with no worker at all, the
    // queued requests end with `error` (or, without one, the reason no worker is left): nobody waits for a
    // worker that will not come.
    void unreserve(std::size_t count, const std::optional<PoolError>& error);

    // A registered key lost its last worker to a failed load: retry after a backoff while retries remain
    // (telling now the waiters whose deadline comes first), else fail every waiter and fail fast for a while.
    PoolError schedule_retry_locked(const PoolError& error, std::vector<job_ptr>& orphans);

    // Tells an evicted worker to stop (its loop ends; it releases its memory) and reports it.
    void release_evicted(parked_worker victim, std::string_view cause);

    std::size_t spec_memory_mb() const;

    // ---- counts (mutex_ held)

    bool transition_locked(WorkerId id, WorkerState to);

    // Workers that are or will be able to serve (everything but evicting/stopped/failed), plus reserved
    // slots. O(1): routing cost must not grow with the number of workers.
    std::size_t alive_locked() const;

    // As alive_locked, without the workers found stuck (they are being replaced).
    std::size_t healthy_live_locked() const { return alive_locked() - unhealthy_; }

    std::size_t healthy_serving_locked() const;

    std::size_t count_locked(WorkerState state) const;

    result<void> overloaded_locked() const;

    void take_queue_locked(std::vector<job_ptr>& out);

    // ---- deadlines

    // Interrupts the sweeper's sleep so it recomputes its deadline (or exits once closed). The signal is
    // emitted on the sweeper's strand, so never concurrently with the sweeper itself.
    void wake_sweeper();

    // Removes expired queued requests and collects expired running ones (marking their workers unhealthy);
    // returns the earliest deadline left and how many workers were newly found stuck (still serving a request
    // `stuck_grace` after its deadline, although they were asked to stop at the deadline).
    struct expiry {
        job_ptr job;
        bool serving = false; // a worker serves it (else it was queued or held in a collecting batch)
        bool whole = true;    // everything the job stands for expired (a batch may expire in part)
    };
    Clock::time_point expire_locked(Clock::time_point now, std::vector<expiry>& expired, std::size_t& stuck);

    // The key's deadline sweeper: one coroutine per key (not a timer per request) that sleeps on the pool's
    // clock until the earliest deadline among the key's queued and running requests, and ends each expired
    // request with `timeout`. A worker whose request expired while it served it is stuck: it is marked
    // unhealthy and, for a registered key, a replacement starts. The sweeper ends when the router closes.
    static asio::awaitable<void> sweep(std::shared_ptr<key_router> self);

    // Marks `job` as served by worker `id`; true when the sweeper must be woken (see wake_sweeper) because
    // the job's running deadline comes before what it sleeps until.
    bool start_locked(WorkerId id, const job_ptr& job);

    void erase_locked(WorkerId id);

    job_ptr pop_locked();

    // The next job for a worker: a queued request, or a batch of compatible ones (see the file comment).
    // Returns nullptr with `partial` filled when the worker must hold a partial batch until `due`.
    job_ptr next_locked(Clock::time_point now, std::vector<job_ptr>& partial, Clock::time_point& due);

    // What to complete a worker's take with, after the lock is released.
    struct handoff {
        take_handler handler;
        asio::any_io_executor executor;
        job_ptr job;
    };

    // A worker asks for its next job: returns what to complete its handler with now, or nothing when it
    // was parked or holds a partial batch. `wake`: the sweeper must recompute its deadline.
    std::optional<handoff> take_locked(WorkerId id, asio::any_io_executor executor, take_handler handler,
                                       Clock::time_point now, bool& wake);

    // Ends the collecting worker's wait: hands it its batch (or, if every request of it ended, what
    // take_locked gives it).
    std::optional<handoff> dispatch_collected_locked(Clock::time_point now, bool& wake);

    // A worker holding a partial batch for `max_queue_delay` (at most one per key). Built in one piece, never
    // assigned to: Boost 1.81's any_completion_handler move-assignment wraps the handler in a new one each
    // time (see parked_worker).
    struct collecting_batch {
        WorkerId id;
        take_handler handler;
        asio::any_io_executor executor;
        std::vector<job_ptr> items;
        Clock::time_point due; // the oldest item's arrival plus max_queue_delay
    };

    PoolError closed_error() const;

    PoolError closed_error_locked() const;

    const std::string key_;
    const std::type_index capability_;
    const std::string_view capability_name_;
    const std::size_t queue_capacity_;
    const std::shared_ptr<pool_core> core_;
    const asio::strand<asio::any_io_executor> strand_; // the sweeper and memory waits run here
    const std::shared_ptr<key_stats> stats_;

    mutable std::mutex mutex_;
    request_queue queue_;
    std::optional<collecting_batch> collecting_;
    std::unordered_map<WorkerId, worker_entry> workers_; // O(1) per request, however many workers
    std::vector<parked_worker> parked_;         // LIFO: the most recently idle worker gets the next request.
    std::array<std::size_t, 8> state_counts_{}; // workers per WorkerState, kept by transition_locked
    std::size_t unhealthy_ = 0;                 // workers_ entries marked unhealthy
    Clock::time_point armed_ = Clock::time_point::max(); // the deadline the sweeper sleeps until
    std::weak_ptr<key_router> self_;
    asio::cancellation_signal wake_; // emitted on the sweeper's strand only
    std::uint64_t served_ = 0;
    bool closed_ = false;
    std::string closed_reason_;

    // Registered models only.
    std::shared_ptr<const model_spec> spec_;
    std::size_t reserved_ =
        0; // worker slots decided on, not yet added (waiting for memory, or being spawned)
    Clock::time_point pressure_since_ =
        Clock::time_point::max();                           // since when every worker is busy, queue full
    std::size_t load_failures_ = 0;                         // consecutive failed loads
    Clock::time_point retry_at_ = Clock::time_point::min(); // no load before this (backoff, fail-fast)
    bool failing_fast_ = false;
    std::string last_load_error_;
    jitter_source jitter_; // used under mutex_
};

} // namespace detail
} // namespace modelpool

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/detail/impl/key_router.ipp"
#endif
