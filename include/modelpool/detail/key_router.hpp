// modelpool/detail/key_router.hpp
//
// One registry key's queue and workers: the router. Requests wait in ONE bounded FIFO queue per key and
// workers pull from it (the design the Rust pool's own plan asked for), so:
// - a request never waits behind a busy worker while another worker of the key is idle (idle workers are
// parked
//   here and get the next request directly);
// - requests are never routed to a worker that is still loading or already gone, and none is lost on
// eviction;
// - the queue bound is real backpressure (`overloaded` when full).
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
#include "modelpool/detail/job.hpp"
#include "modelpool/detail/key_stats.hpp"
#include "modelpool/detail/memory_wait.hpp"
#include "modelpool/detail/pool_core.hpp"
#include "modelpool/detail/scaling_policy.hpp"
#include "modelpool/error.hpp"
#include "modelpool/key_snapshot.hpp"
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
};

/// The queue and worker table of one registry key. Thread-safe; see the file comment.
class key_router {
public:
    using job_ptr = std::shared_ptr<job_base>;                        ///< A queued request.
    using take_handler = asio::any_completion_handler<void(job_ptr)>; ///< A parked worker's continuation.

    key_router(std::string key, std::type_index capability, std::string_view capability_name,
               std::size_t queue_capacity, std::shared_ptr<pool_core> core)
        : key_(std::move(key)), capability_(capability), capability_name_(capability_name),
          queue_capacity_(queue_capacity), core_(std::move(core)), strand_(asio::make_strand(core_->io)),
          stats_(std::make_shared<key_stats>(core_->metrics, core_->clock, core_->options->breaker)),
          jitter_(core_->seed ^ std::hash<std::string>{}(key_)) {}

    /// The registry key.
    [[nodiscard]] const std::string& key() const noexcept { return key_; }
    /// Which capability the key serves (fixed by its first worker).
    [[nodiscard]] std::type_index capability() const noexcept { return capability_; }
    /// The capability's name.
    [[nodiscard]] std::string_view capability_name() const noexcept { return capability_name_; }

    /// The key's breaker, histograms and counters, which its requests report to.
    [[nodiscard]] const std::shared_ptr<key_stats>& stats() const noexcept { return stats_; }

    /// Asks the key's circuit breaker to admit a request; `circuit_open` (counted) when it is open.
    result<CircuitBreaker::Permit> admit() {
        const auto now = core_->clock->now();
        auto permit = stats_->breaker.try_admit(now);
        if (permit) {
            return permit;
        }
        core_->metrics->circuit_rejection();
        const auto until = stats_->breaker.open_until();
        return fail(
            errc::circuit_open, "circuit of '{}' is open after {} failures in a row; {}", key_,
            stats_->breaker.options().failure_threshold,
            until > now
                ? fmt::format("next probe in {} ms",
                              std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count())
                : std::string("probes are in flight"));
    }

    /// Starts the key's deadline sweeper (see `sweep`). `self` must own this router.
    void start(const std::shared_ptr<key_router>& self) {
        self_ = self;
        asio::co_spawn(strand_, sweep(self), asio::detached);
    }

    // ---- registered models
    // ---------------------------------------------------------------------------------

    /// Makes the key a registered model managed by `spec`, and starts its minimum workers.
    result<void> set_spec(std::shared_ptr<const model_spec> spec) {
        launch_order order;
        {
            std::lock_guard lock(mutex_);
            if (closed_) {
                return fail(errc::shutting_down, "cannot register '{}': {}", key_, closed_reason_);
            }
            if (spec_) {
                return fail(errc::invalid_argument, "model '{}' is already registered", key_);
            }
            spec_ = std::move(spec);
            order = plan_locked(core_->clock->now());
        }
        launch(std::move(order));
        return {};
    }

    /// Starts workers until `count` healthy ones are alive or loading (at most the key's maximum); returns
    /// how many it started. Fails with `invalid_argument` for a key that is not registered, `shutting_down`
    /// after stop, or the governor's `memory_exhausted` when not even one could start.
    result<std::size_t> ensure(std::size_t count) {
        launch_order order;
        {
            std::lock_guard lock(mutex_);
            if (closed_) {
                return fail(errc::shutting_down, "cannot start workers for '{}': {}", key_, closed_reason_);
            }
            if (!spec_) {
                return fail(errc::invalid_argument, "'{}' is not a registered model", key_);
            }
            const std::size_t live = healthy_live_locked();
            const std::size_t target = std::min(count, spec_->max_workers);
            order = reserve_locked(target > live ? target - live : 0, live == 0);
        }
        if (order.plan.start == 0) {
            return std::size_t{0};
        }
        auto started = launch(std::move(order));
        if (started.started == 0 && started.error) {
            return unexpected<PoolError>(*started.error);
        }
        return started.started;
    }

    /// Idle workers of this registered key that could go to make room for another key's spawn: the least
    /// recently used first, never below the key's minimum.
    struct idle_candidate {
        Clock::time_point parked_at; ///< When it became idle.
        WorkerId id;                 ///< The worker.
        std::size_t memory_mb;       ///< What it holds.
    };

    /// See `idle_candidate`.
    [[nodiscard]] std::vector<idle_candidate> idle_candidates() const {
        std::vector<idle_candidate> out;
        std::lock_guard lock(mutex_);
        if (!spec_ || closed_) {
            return out;
        }
        const std::size_t serving = healthy_serving_locked();
        const std::size_t spare = serving > spec_->min_workers ? serving - spec_->min_workers : 0;
        for (std::size_t i = 0; i < parked_.size() && out.size() < spare; ++i) {
            out.push_back({parked_[i].parked_at, parked_[i].id, spec_->per_worker_mb});
        }
        return out;
    }

    /// Evicts worker `id` if it is still idle (it may have taken a request meanwhile); true if it was.
    bool evict_idle(WorkerId id, std::string_view cause) {
        std::optional<parked_worker> victim;
        {
            std::lock_guard lock(mutex_);
            if (!spec_ || closed_ || healthy_serving_locked() <= spec_->min_workers) {
                return false;
            }
            auto it =
                std::find_if(parked_.begin(), parked_.end(), [id](const auto& p) { return p.id == id; });
            if (it == parked_.end()) {
                return false;
            }
            victim.emplace(std::move(*it));
            parked_.erase(it);
            transition_locked(id, WorkerState::evicting);
        }
        release_evicted(std::move(*victim), cause);
        return true;
    }

    /// One maintenance tick: evicts the least recently used worker if it has been idle for the idle timeout
    /// (one per tick, never below the minimum), then starts what the scaling policy asks for (minimum
    /// workers, a delayed scale-up, a load retry whose backoff has passed).
    void maintain(Clock::time_point now) {
        std::optional<parked_worker> victim;
        launch_order order;
        {
            std::lock_guard lock(mutex_);
            if (!spec_ || closed_) {
                return;
            }
            if (!parked_.empty() && healthy_serving_locked() > spec_->min_workers &&
                now - parked_.front().parked_at >= core_->options->idle_timeout) {
                victim.emplace(std::move(parked_.front()));
                parked_.erase(parked_.begin());
                transition_locked(victim->id, WorkerState::evicting);
            }
            order = plan_locked(now);
        }
        if (victim) {
            release_evicted(std::move(*victim), "idle");
        }
        launch(std::move(order));
    }

    // ---- workers
    // -------------------------------------------------------------------------------------------

    /// Records a new worker in state `spawning`; `reserved` when it fills a slot the router reserved. Fails
    /// with `shutting_down` once the router is closed.
    /// `stop` and `executor` are the worker coroutine's cancellation signal and executor: emitting the signal
    /// there interrupts what the worker awaits (see `interrupt`).
    result<void> add_worker(WorkerId id, std::size_t memory_mb, bool reserved = false,
                            std::weak_ptr<asio::cancellation_signal> stop = {},
                            asio::any_io_executor executor = {}) {
        std::lock_guard lock(mutex_);
        if (closed_) {
            return fail(errc::shutting_down, "cannot spawn a worker for '{}': {}", key_, closed_reason_);
        }
        worker_entry entry;
        entry.memory_mb = memory_mb;
        entry.stop = std::move(stop);
        entry.executor = std::move(executor);
        workers_.emplace(id, std::move(entry));
        ++state_counts_[static_cast<std::size_t>(WorkerState::spawning)];
        if (reserved && reserved_ > 0) {
            --reserved_;
        }
        return {};
    }

    /// Moves worker `id` to `to` if the lifecycle allows it; false (and no change) otherwise.
    bool transition(WorkerId id, WorkerState to) {
        std::lock_guard lock(mutex_);
        return transition_locked(id, to);
    }

    /// The worker loaded its model: it may now take requests, and the key's failed-load streak ends.
    void worker_loaded(WorkerId id) {
        std::lock_guard lock(mutex_);
        transition_locked(id, WorkerState::ready);
        load_failures_ = 0;
        failing_fast_ = false;
        retry_at_ = Clock::time_point::min();
    }

    /// The worker's loader failed: forget it. For a registered key the load is retried with backoff while
    /// retries remain (waiters whose deadline comes first are told now); then, or at once for a key that is
    /// not registered, when no other worker of the key is alive, every queued request learns at once with
    /// `error` (spawn_failed naming the loader's message).
    void worker_failed(WorkerId id, const PoolError& error) {
        std::vector<job_ptr> orphans;
        PoolError reason = error;
        {
            std::lock_guard lock(mutex_);
            transition_locked(id, WorkerState::failed);
            erase_locked(id);
            if (spec_) {
                last_load_error_ = error.message();
            }
            if (alive_locked() == 0) {
                // Every load of this round failed: one failure for the retry count and the breaker, however
                // many workers the round started.
                ++load_failures_;
                stats_->record_load_failure();
                if (!spec_) {
                    take_queue_locked(orphans);
                } else {
                    reason = schedule_retry_locked(error, orphans);
                }
            }
        }
        for (auto& job : orphans) {
            job->fail(reason);
        }
    }

    /// The worker ended (evicted, unhealthy or shut down): forget it. Requests still queued with no live
    /// worker left are failed (`no_workers`, or `shutting_down` once closed) rather than left waiting; a
    /// registered key starts new workers for them instead.
    void worker_stopped(WorkerId id) {
        std::vector<job_ptr> orphans;
        launch_order order;
        {
            std::lock_guard lock(mutex_);
            transition_locked(id, WorkerState::stopped);
            erase_locked(id);
            order = plan_locked(core_->clock->now());
            if (alive_locked() == 0) {
                take_queue_locked(orphans);
            }
        }
        if (!orphans.empty()) {
            const PoolError reason = closed_error();
            for (auto& job : orphans) {
                job->fail(reason);
            }
        }
        launch(std::move(order));
    }

    // ---- requests
    // ------------------------------------------------------------------------------------------

    /// Accepts a request: straight to an idle worker, else into the queue. A registered key with no worker
    /// starts its cold start here. Fails at once with `shutting_down` (closed), `no_workers` (nothing alive
    /// or loading, key not registered), `overloaded` (queue full) or `spawn_failed` (a registered key whose
    /// loads keep failing, until its next retry window).
    result<void> submit(job_ptr job) {
        std::unique_lock lock(mutex_);
        if (closed_) {
            return fail(errc::shutting_down, "key '{}' takes no requests: {}", key_, closed_reason_);
        }
        if (!parked_.empty()) {
            auto [id, handler, executor, parked_at] = std::move(parked_.back());
            parked_.pop_back();
            const bool wake = job->running_deadline() < armed_;
            start_locked(id, job);
            lock.unlock();
            post_completion(std::move(handler), executor, std::move(job));
            if (wake) {
                wake_sweeper();
            }
            return {};
        }
        launch_order order;
        if (spec_) {
            const auto now = core_->clock->now();
            if (failing_fast_ && now < retry_at_) {
                return fail(errc::spawn_failed,
                            "model '{}' failed to load {} times in a row ({}); next try in {} ms", key_,
                            load_failures_, last_load_error_,
                            std::chrono::duration_cast<std::chrono::milliseconds>(retry_at_ - now).count());
            }
            if (queue_.size() >= queue_capacity_) {
                return overloaded_locked();
            }
            queue_.push_back(job);
            order = plan_locked(now);
        } else {
            if (alive_locked() == 0) {
                return fail(errc::no_workers, "no worker for key '{}' ({}): none ready and none loading",
                            key_, capability_name_);
            }
            if (queue_.size() >= queue_capacity_) {
                return overloaded_locked();
            }
            queue_.push_back(job);
        }
        const bool wake = job->deadline < armed_;
        lock.unlock();
        if (wake) {
            wake_sweeper();
        }
        launch(std::move(order));
        return {};
    }

    /// Takes the next request for worker `id` without waiting; nullptr when none is queued.
    job_ptr try_take(WorkerId id) {
        std::lock_guard lock(mutex_);
        auto job = pop_locked();
        if (job) {
            start_locked(id, job);
        }
        return job;
    }

    /// Parks worker `id` until a request arrives (completes with it) or the worker must stop (nullptr).
    template <class CompletionToken>
    auto async_take(WorkerId id, asio::any_io_executor fallback, CompletionToken&& token) {
        return asio::async_initiate<CompletionToken, void(job_ptr)>(
            [this, id](auto handler, asio::any_io_executor fallback) {
                const auto now = core_->clock->now();
                std::unique_lock lock(mutex_);
                job_ptr job = pop_locked(); // after close() too: queued requests are drained
                if (job || closed_ || !transition_locked(id, WorkerState::idle)) {
                    if (job) {
                        start_locked(id, job);
                    }
                    lock.unlock();
                    post_completion(std::move(handler), fallback, std::move(job));
                    return;
                }
                pressure_since_ = Clock::time_point::max(); // a worker is idle: no pressure
                auto executor = completion_executor(handler, fallback);
                parked_.push_back(
                    parked_worker{id, take_handler(std::move(handler)), std::move(executor), now});
            },
            token, std::move(fallback));
    }

    /// Forgets a request that was cancelled while queued (frees its queue slot).
    void remove(const job_base* job) {
        std::lock_guard lock(mutex_);
        for (auto it = queue_.begin(); it != queue_.end(); ++it) {
            if (it->get() == job) {
                queue_.erase(it);
                return;
            }
        }
    }

    /// Stops the model call serving `job`, if one does: the worker's signal is emitted on the worker's own
    /// executor, so it cannot race with the worker, and only while the worker still serves this very request.
    /// A coroutine model whose awaited operations honour cancellation returns early; a blocking call cannot
    /// be interrupted and runs to its end (its result is discarded).
    void interrupt(const job_ptr& job) {
        asio::any_io_executor executor;
        {
            std::lock_guard lock(mutex_);
            auto it = workers_.find(job->worker);
            if (it == workers_.end() || it->second.current != job || !it->second.executor) {
                return;
            }
            executor = it->second.executor;
        }
        asio::post(executor, [weak = self_, job] {
            auto self = weak.lock();
            if (!self) {
                return;
            }
            std::shared_ptr<asio::cancellation_signal> signal;
            {
                std::lock_guard lock(self->mutex_);
                auto it = self->workers_.find(job->worker);
                if (it == self->workers_.end() || it->second.current != job) {
                    return; // it finished meanwhile: the next request must not be touched
                }
                it->second.interrupted = true;
                signal = it->second.stop.lock();
            }
            if (signal) {
                signal->emit(asio::cancellation_type::terminal);
            }
        });
    }

    /// True (once) when the worker's last request was interrupted: the worker then resets its cancellation
    /// state before it serves the next one.
    bool take_interrupted(WorkerId id) {
        std::lock_guard lock(mutex_);
        auto it = workers_.find(id);
        return it != workers_.end() && std::exchange(it->second.interrupted, false);
    }

    /// Marks a finished request on worker `id`; true when the worker must stop now (it was found stuck past a
    /// deadline and a replacement was started; a worker of a key that is not registered serves on instead).
    bool request_served(WorkerId id) {
        std::lock_guard lock(mutex_);
        ++served_;
        auto it = workers_.find(id);
        if (it == workers_.end()) {
            return false;
        }
        ++it->second.served;
        it->second.current.reset();
        it->second.overdue.reset();
        if (!it->second.unhealthy) {
            return false;
        }
        if (spec_) {
            return true; // a replacement was started for it: it stops
        }
        it->second.unhealthy = false; // nobody replaces a worker the application spawned: it serves again
        --unhealthy_;
        return false;
    }

    // ---- lifecycle
    // -----------------------------------------------------------------------------------------

    /// Refuses new requests and spawns with `reason` and releases the parked workers (they stop). Queued
    /// requests are still served by the busy and loading workers, which stop once the queue is empty; if the
    /// key has no worker left to serve them, they end with `reason` now. Idempotent.
    void close(std::string reason) {
        std::vector<job_ptr> orphans;
        std::vector<parked_worker> parked;
        {
            std::lock_guard lock(mutex_);
            if (closed_) {
                return;
            }
            closed_ = true;
            closed_reason_ = std::move(reason);
            if (alive_locked() == 0) {
                take_queue_locked(orphans);
            }
            parked.swap(parked_);
        }
        auto error = closed_error();
        for (auto& job : orphans) {
            job->fail(error);
        }
        for (auto& worker : parked) {
            post_completion(std::move(worker.handler), worker.executor, job_ptr{});
        }
        wake_sweeper();
    }

    /// Ends every request still queued or being served with `error` (workers' late results are then
    /// discarded). Used by shutdown once its grace period is over.
    void fail_remaining(std::chrono::milliseconds grace) {
        const PoolError error(
            errc::shutting_down,
            fmt::format("request to '{}' ended by shutdown: the grace period of {} ms is over", key_,
                        grace.count()));
        std::vector<job_ptr> remaining;
        {
            std::lock_guard lock(mutex_);
            take_queue_locked(remaining);
            for (auto& [id, entry] : workers_) {
                if (entry.current) {
                    remaining.push_back(entry.current);
                }
            }
        }
        for (auto& job : remaining) {
            job->fail(error);
        }
    }

    /// Current counts.
    [[nodiscard]] KeySnapshot snapshot() const {
        std::lock_guard lock(mutex_);
        KeySnapshot snap{.key = key_,
                         .capability = capability_name_,
                         .queue_depth = queue_.size(),
                         .queue_capacity = queue_capacity_,
                         .served = served_,
                         .unhealthy = unhealthy_,
                         .reserved = reserved_,
                         .registered = spec_ != nullptr,
                         .min_workers = spec_ ? spec_->min_workers : 0,
                         .max_workers = spec_ ? spec_->max_workers : 0,
                         .load_failures = load_failures_,
                         .failing_fast = failing_fast_,
                         .last_load_error = last_load_error_,
                         .circuit = stats_->breaker.state(core_->clock->now()),
                         .consecutive_failures = stats_->breaker.consecutive_failures(),
                         .queue_wait = stats_->queue_wait.snapshot(),
                         .service_time = stats_->service.snapshot()};
        for (const auto& [id, entry] : workers_) {
            ++snap.workers[static_cast<std::size_t>(entry.state)];
            snap.memory_mb += entry.memory_mb;
        }
        return snap;
    }

    /// The state of worker `id`, if it is still known.
    [[nodiscard]] std::optional<WorkerState> state_of(WorkerId id) const {
        std::lock_guard lock(mutex_);
        auto it = workers_.find(id);
        if (it == workers_.end()) {
            return std::nullopt;
        }
        return it->second.state;
    }

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

    // ---- scaling (called with mutex_ held unless said otherwise)

    // Asks the scaling policy what to start now, and reserves it.
    launch_order plan_locked(Clock::time_point now) {
        if (!spec_ || closed_) {
            return {};
        }
        if (failing_fast_) {
            if (now < retry_at_) {
                return {};
            }
            failing_fast_ = false; // the fail-fast window is over: the next demand may try again
            load_failures_ = 0;
        }
        if (now < retry_at_) {
            return {}; // backing off after a failed load
        }
        scaling_input in{.live = healthy_live_locked(),
                         .starting = count_locked(WorkerState::spawning) +
                                     count_locked(WorkerState::loading) + reserved_,
                         .serving = healthy_serving_locked(),
                         .idle = parked_.size(),
                         .queued = queue_.size(),
                         .min_workers = spec_->min_workers,
                         .max_workers = spec_->max_workers,
                         .cold_start = spec_->cold_start};
        if (under_pressure(in)) {
            if (pressure_since_ == Clock::time_point::max()) {
                pressure_since_ = now;
            }
            in.pressure_held = now - pressure_since_ >= core_->options->upscale_delay;
        } else {
            pressure_since_ = Clock::time_point::max();
        }
        const auto plan = plan_scaling(in);
        if (plan.start != 0) {
            pressure_since_ = Clock::time_point::max();
        }
        return reserve_locked(plan.start, plan.cold);
    }

    launch_order reserve_locked(std::size_t count, bool cold) {
        if (count == 0) {
            return {};
        }
        reserved_ += count;
        return {scaling_plan{count, cold}, spec_};
    }

    // Fills reserved slots (without the lock): each takes its memory now, or, for the first worker of a key
    // that has none, after evicting idle workers of other keys. Slots that cannot be filled are given back.
    launch_result launch(launch_order order) {
        launch_result out;
        const auto& spec = order.spec;
        for (std::size_t i = 0; i < order.plan.start; ++i) {
            auto guard = core_->governor->try_allocate(spec->per_worker_mb, key_);
            if (guard) {
                if (auto id = spec->spawn(std::move(*guard)); id) {
                    ++out.started;
                } else {
                    unreserve(1, id.error());
                    out.error = id.error();
                }
                continue;
            }
            const std::size_t rest = order.plan.start - i;
            if (i == 0 && order.plan.cold) {
                unreserve(rest - 1, std::nullopt); // a cold start may shrink to one worker
                if (make_room(spec)) {
                    ++out.started;
                } else {
                    out.error = cold_start_refusal(spec);
                }
            } else {
                core_->logger->debug("'{}': {} more worker(s) do not fit now: {}", key_, rest,
                                     guard.error().message());
                unreserve(rest, std::nullopt);
            }
            break;
        }
        return out;
    }

    // The first worker of a key does not fit: evict other keys' idle workers if, together with the free
    // memory, they make room, and wait for their memory; otherwise give the slot back with memory_exhausted.
    bool make_room(const std::shared_ptr<const model_spec>& spec) {
        const auto stats = core_->governor->stats();
        const std::size_t mb = spec->per_worker_mb;
        std::size_t freed = 0;
        if (mb <= stats.limit_mb && mb > stats.available_mb && core_->evict_for_memory) {
            freed = core_->evict_for_memory(key_, mb - stats.available_mb);
        }
        if (mb > stats.limit_mb || stats.available_mb + freed < mb) {
            unreserve(1, cold_start_refusal(spec, stats, freed));
            return false;
        }
        allocate_within(core_->governor, core_->clock, strand_, mb, key_, core_->options->memory_wait_timeout,
                        [weak = self_, spec](result<AllocationGuard> guard) {
                            auto self = weak.lock();
                            if (!self) {
                                return;
                            }
                            if (!guard) {
                                self->unreserve(1, guard.error());
                            } else if (auto id = spec->spawn(std::move(*guard)); !id) {
                                self->unreserve(1, id.error());
                            }
                        });
        return true;
    }

    PoolError cold_start_refusal(const std::shared_ptr<const model_spec>& spec) const {
        return cold_start_refusal(spec, core_->governor->stats(), 0);
    }

    PoolError cold_start_refusal(const std::shared_ptr<const model_spec>& spec, const MemoryStats& stats,
                                 std::size_t evictable) const {
        return PoolError(
            errc::memory_exhausted,
            fmt::format("cannot start a worker for '{}': it needs {} MB; {} of {} MB are allocated "
                        "and idle workers of other keys could free only {} MB",
                        key_, spec->per_worker_mb, stats.allocated_mb, stats.limit_mb, evictable));
    }

    // Gives back `count` reserved slots (without the lock). If that leaves the key with no worker at all, the
    // queued requests end with `error` (or, without one, the reason no worker is left): nobody waits for a
    // worker that will not come.
    void unreserve(std::size_t count, const std::optional<PoolError>& error) {
        if (count == 0) {
            return;
        }
        std::vector<job_ptr> orphans;
        {
            std::lock_guard lock(mutex_);
            reserved_ -= std::min(count, reserved_);
            if (alive_locked() == 0) {
                take_queue_locked(orphans);
            }
        }
        if (orphans.empty()) {
            return;
        }
        const PoolError reason = error ? *error : closed_error();
        for (auto& job : orphans) {
            job->fail(reason);
        }
    }

    // A registered key lost its last worker to a failed load: retry after a backoff while retries remain
    // (telling now the waiters whose deadline comes first), else fail every waiter and fail fast for a while.
    PoolError schedule_retry_locked(const PoolError& error, std::vector<job_ptr>& orphans) {
        const auto now = core_->clock->now();
        const auto& options = *core_->options;
        if (load_failures_ <= options.load_retries) {
            const auto delay = backoff_delay(load_failures_, options.retry_backoff_initial,
                                             options.retry_backoff_max, jitter_.unit());
            retry_at_ = Clock::saturating_add(now, delay);
            core_->metrics->load_retry();
            for (auto it = queue_.begin(); it != queue_.end();) {
                if ((*it)->deadline < retry_at_) {
                    orphans.push_back(std::move(*it));
                    it = queue_.erase(it);
                } else {
                    ++it;
                }
            }
            core_->logger->warn("'{}': load failed ({} in a row); retry {} of {} in {} ms", key_,
                                load_failures_, load_failures_, options.load_retries, delay.count());
            return PoolError(errc::spawn_failed,
                             fmt::format("{} (the retry in {} ms comes after the request's "
                                         "deadline)",
                                         error.message(), delay.count()));
        }
        failing_fast_ = true;
        retry_at_ = Clock::saturating_add(now, options.retry_backoff_max);
        take_queue_locked(orphans);
        core_->logger->error("'{}': {} loads failed in a row; requests fail fast for {} ms", key_,
                             load_failures_, options.retry_backoff_max.count());
        return PoolError(errc::spawn_failed,
                         fmt::format("{} ({} loads failed in a row; next try in {} ms)", error.message(),
                                     load_failures_, options.retry_backoff_max.count()));
    }

    // Tells an evicted worker to stop (its loop ends; it releases its memory) and reports it.
    void release_evicted(parked_worker victim, std::string_view cause) {
        core_->metrics->worker_evicted();
        core_->event(WorkerEventKind::evicted, key_, victim.id, spec_memory_mb(), cause);
        core_->logger->debug("'{}': evicting worker {} ({})", key_, victim.id, cause);
        post_completion(std::move(victim.handler), victim.executor, job_ptr{});
    }

    std::size_t spec_memory_mb() const {
        std::lock_guard lock(mutex_);
        return spec_ ? spec_->per_worker_mb : 0;
    }

    // ---- counts (mutex_ held)

    bool transition_locked(WorkerId id, WorkerState to) {
        auto it = workers_.find(id);
        if (it == workers_.end() || !can_transition(it->second.state, to)) {
            return false;
        }
        --state_counts_[static_cast<std::size_t>(it->second.state)];
        ++state_counts_[static_cast<std::size_t>(to)];
        it->second.state = to;
        return true;
    }

    // Workers that are or will be able to serve (everything but evicting/stopped/failed), plus reserved
    // slots. O(1): routing cost must not grow with the number of workers.
    std::size_t alive_locked() const {
        using enum WorkerState;
        return count_locked(spawning) + count_locked(loading) + count_locked(ready) + count_locked(busy) +
               count_locked(idle) + reserved_;
    }

    // As alive_locked, without the workers found stuck (they are being replaced).
    std::size_t healthy_live_locked() const { return alive_locked() - unhealthy_; }

    std::size_t healthy_serving_locked() const {
        using enum WorkerState;
        return count_locked(ready) + count_locked(busy) + count_locked(idle) - unhealthy_;
    }

    std::size_t count_locked(WorkerState state) const {
        return state_counts_[static_cast<std::size_t>(state)];
    }

    result<void> overloaded_locked() const {
        return fail(errc::overloaded, "queue of '{}' is full ({} of {} requests waiting)", key_,
                    queue_.size(), queue_capacity_);
    }

    void take_queue_locked(std::vector<job_ptr>& out) {
        out.insert(out.end(), std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
        queue_.clear();
    }

    // ---- deadlines

    // Interrupts the sweeper's sleep so it recomputes its deadline (or exits once closed). The signal is
    // emitted on the sweeper's strand, so never concurrently with the sweeper itself.
    void wake_sweeper() {
        asio::post(strand_, [weak = self_] {
            if (auto self = weak.lock()) {
                self->wake_.emit(asio::cancellation_type::terminal);
            }
        });
    }

    // Removes expired queued requests and collects expired running ones (marking their workers unhealthy);
    // returns the earliest deadline left and how many workers were newly found stuck (still serving a request
    // `stuck_grace` after its deadline, although they were asked to stop at the deadline).
    Clock::time_point expire_locked(Clock::time_point now, std::vector<std::pair<job_ptr, bool>>& expired,
                                    std::size_t& stuck) {
        Clock::time_point earliest = Clock::time_point::max();
        for (auto it = queue_.begin(); it != queue_.end();) {
            if ((*it)->done()) {
                it = queue_.erase(it);
            } else if ((*it)->deadline <= now) {
                expired.emplace_back(std::move(*it), false);
                it = queue_.erase(it);
            } else {
                earliest = std::min(earliest, (*it)->deadline);
                ++it;
            }
        }
        const auto grace = core_->options->stuck_grace;
        for (auto& [id, entry] : workers_) {
            if (!entry.current) {
                continue;
            }
            if (entry.overdue && entry.overdue == entry.current) {
                // Ended at its deadline and asked to stop: still at it after the grace period, it is stuck.
                const auto limit = Clock::saturating_add(entry.overdue_at, grace);
                if (entry.unhealthy) {
                    continue;
                }
                if (limit <= now) {
                    entry.unhealthy = true;
                    ++unhealthy_;
                    ++stuck;
                } else {
                    earliest = std::min(earliest, limit);
                }
                continue;
            }
            if (entry.current->done()) {
                continue;
            }
            const auto deadline = entry.current->running_deadline();
            if (deadline <= now) {
                expired.emplace_back(entry.current, true);
                entry.overdue = entry.current;
                entry.overdue_at = now;
                earliest = std::min(earliest, Clock::saturating_add(now, grace));
            } else {
                earliest = std::min(earliest, deadline);
            }
        }
        return earliest;
    }

    // The key's deadline sweeper: one coroutine per key (not a timer per request) that sleeps on the pool's
    // clock until the earliest deadline among the key's queued and running requests, and ends each expired
    // request with `timeout`. A worker whose request expired while it served it is stuck: it is marked
    // unhealthy and, for a registered key, a replacement starts. The sweeper ends when the router closes.
    static asio::awaitable<void> sweep(std::shared_ptr<key_router> self) {
        co_await asio::this_coro::throw_if_cancelled(false);
        auto executor = co_await asio::this_coro::executor;
        const auto clock = self->core_->clock;
        for (;;) {
            std::vector<std::pair<job_ptr, bool>> expired;
            Clock::time_point next;
            std::size_t stuck = 0;
            launch_order order;
            const auto now = clock->now();
            {
                std::lock_guard lock(self->mutex_);
                if (self->closed_) {
                    break;
                }
                next = self->expire_locked(now, expired, stuck);
                self->armed_ = next;
                if (stuck != 0 && self->spec_) {
                    const std::size_t live = self->healthy_live_locked();
                    const std::size_t room =
                        self->spec_->max_workers > live ? self->spec_->max_workers - live : 0;
                    order = self->reserve_locked(std::min(stuck, room), live == 0);
                }
            }
            for (std::size_t i = 0; i < stuck; ++i) {
                self->core_->metrics->worker_unhealthy();
            }
            if (stuck != 0) {
                self->core_->logger->warn(
                    "'{}': {} worker(s) stuck past a request's deadline; replacing them", self->key_, stuck);
            }
            for (auto& [job, serving] : expired) {
                const auto waited =
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - job->enqueued_at);
                job->fail(PoolError(
                    errc::timeout,
                    fmt::format("request to '{}' timed out after {} ms ({})", self->key_, waited.count(),
                                serving ? "while a worker served it" : "waiting in the queue")));
                if (serving) {
                    self->interrupt(job); // stop the model call: nobody waits for its result any more
                }
            }
            self->launch(std::move(order));
            // Sleeps until `next`, or until a request with an earlier deadline or close() wakes it.
            co_await clock->async_wait_until(
                executor, next, asio::bind_cancellation_slot(self->wake_.slot(), asio::use_awaitable));
        }
    }

    void start_locked(WorkerId id, const job_ptr& job) {
        transition_locked(id, WorkerState::busy);
        if (auto it = workers_.find(id); it != workers_.end()) {
            it->second.current = job;
            job->worker = id;
        }
    }

    void erase_locked(WorkerId id) {
        if (auto it = workers_.find(id); it != workers_.end()) {
            --state_counts_[static_cast<std::size_t>(it->second.state)];
            if (it->second.unhealthy) {
                --unhealthy_;
            }
            workers_.erase(it);
        }
    }

    job_ptr pop_locked() {
        while (!queue_.empty()) {
            job_ptr job = std::move(queue_.front());
            queue_.pop_front();
            if (!job->done()) {
                return job;
            }
        }
        return nullptr;
    }

    PoolError closed_error() const {
        std::lock_guard lock(mutex_);
        return closed_error_locked();
    }

    PoolError closed_error_locked() const {
        if (closed_) {
            return PoolError(errc::shutting_down, fmt::format("key '{}': {}", key_, closed_reason_));
        }
        return PoolError(errc::no_workers, fmt::format("every worker of key '{}' stopped", key_));
    }

    const std::string key_;
    const std::type_index capability_;
    const std::string_view capability_name_;
    const std::size_t queue_capacity_;
    const std::shared_ptr<pool_core> core_;
    const asio::strand<asio::any_io_executor> strand_; // the sweeper and memory waits run here
    const std::shared_ptr<key_stats> stats_;

    mutable std::mutex mutex_;
    std::deque<job_ptr> queue_;
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
