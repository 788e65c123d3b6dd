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
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/job.hpp"
#include "modelpool/error.hpp"
#include "modelpool/worker_state.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace modelpool {

/// Identifies a worker within its pool (unique per pool, never reused).
using WorkerId = std::uint64_t;

/// Counts of one key's workers and requests, as `Pool::snapshot` reports them.
struct KeySnapshot {
    std::string key;                      ///< The registry key.
    std::string_view capability;          ///< Its capability name, e.g. "text_embedding".
    std::array<std::size_t, 8> workers{}; ///< Workers per `WorkerState`, indexed by the enum's value.
    std::size_t queue_depth = 0;          ///< Requests waiting for a worker.
    std::size_t queue_capacity = 0;       ///< The queue's bound.
    std::size_t memory_mb = 0;            ///< Memory reserved by the key's live workers.
    std::uint64_t served = 0;             ///< Requests its workers have completed.

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
};

namespace detail {

/// The queue and worker table of one registry key. Thread-safe; see the file comment.
class key_router {
public:
    using job_ptr = std::shared_ptr<job_base>;                        ///< A queued request.
    using take_handler = asio::any_completion_handler<void(job_ptr)>; ///< A parked worker's continuation.

    key_router(std::string key, std::type_index capability, std::string_view capability_name,
               std::size_t queue_capacity)
        : key_(std::move(key)), capability_(capability), capability_name_(capability_name),
          queue_capacity_(queue_capacity) {}

    /// The registry key.
    [[nodiscard]] const std::string& key() const noexcept { return key_; }
    /// Which capability the key serves (fixed by its first worker).
    [[nodiscard]] std::type_index capability() const noexcept { return capability_; }
    /// The capability's name.
    [[nodiscard]] std::string_view capability_name() const noexcept { return capability_name_; }

    // ---- workers
    // -------------------------------------------------------------------------------------------

    /// Records a new worker in state `spawning`. Fails with `shutting_down` once the router is closed.
    result<void> add_worker(WorkerId id, std::size_t memory_mb) {
        std::lock_guard lock(mutex_);
        if (closed_) {
            return fail(errc::shutting_down, "cannot spawn a worker for '{}': {}", key_, closed_reason_);
        }
        workers_.emplace(id, worker_entry{.memory_mb = memory_mb, .current = nullptr});
        ++state_counts_[static_cast<std::size_t>(WorkerState::spawning)];
        return {};
    }

    /// Moves worker `id` to `to` if the lifecycle allows it; false (and no change) otherwise.
    bool transition(WorkerId id, WorkerState to) {
        std::lock_guard lock(mutex_);
        return transition_locked(id, to);
    }

    /// The worker loaded its model: it may now take requests.
    void worker_loaded(WorkerId id) { transition(id, WorkerState::ready); }

    /// The worker's loader failed: forget it; if no other worker of the key is alive, every queued request
    /// learns at once, with `error` (spawn_failed naming the loader's message).
    void worker_failed(WorkerId id, const PoolError& error) { retire(id, WorkerState::failed, error); }

    /// The worker ended (evicted or shut down): forget it. Requests still queued with no live worker left are
    /// failed (`no_workers`, or `shutting_down` once closed) rather than left waiting.
    void worker_stopped(WorkerId id) { retire(id, WorkerState::stopped, std::nullopt); }

    // ---- requests
    // ------------------------------------------------------------------------------------------

    /// Accepts a request: straight to an idle worker, else into the queue. Fails at once with
    /// `shutting_down` (closed), `no_workers` (nothing alive or loading) or `overloaded` (queue full).
    result<void> submit(job_ptr job) {
        std::unique_lock lock(mutex_);
        if (closed_) {
            return fail(errc::shutting_down, "key '{}' takes no requests: {}", key_, closed_reason_);
        }
        if (!parked_.empty()) {
            auto [id, handler, executor] = std::move(parked_.back());
            parked_.pop_back();
            const bool wake = job->deadline_covers_service() && job->deadline < armed_;
            start_locked(id, job);
            lock.unlock();
            post_completion(std::move(handler), executor, std::move(job));
            if (wake) {
                wake_sweeper();
            }
            return {};
        }
        if (live_locked() == 0) {
            return fail(errc::no_workers, "no worker for key '{}' ({}): none ready and none loading", key_,
                        capability_name_);
        }
        if (queue_.size() >= queue_capacity_) {
            return fail(errc::overloaded, "queue of '{}' is full ({} of {} requests waiting)", key_,
                        queue_.size(), queue_capacity_);
        }
        const bool wake = job->deadline < armed_;
        queue_.push_back(std::move(job));
        lock.unlock();
        if (wake) {
            wake_sweeper();
        }
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
                std::unique_lock lock(mutex_);
                job_ptr job = closed_ ? nullptr : pop_locked();
                if (job || closed_ || !transition_locked(id, WorkerState::idle)) {
                    if (job) {
                        start_locked(id, job);
                    }
                    lock.unlock();
                    post_completion(std::move(handler), fallback, std::move(job));
                    return;
                }
                auto executor = completion_executor(handler, fallback);
                parked_.push_back(parked_worker{id, take_handler(std::move(handler)), std::move(executor)});
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

    /// Marks a finished request on worker `id` (usage figures).
    void request_served(WorkerId id) {
        std::lock_guard lock(mutex_);
        ++served_;
        if (auto it = workers_.find(id); it != workers_.end()) {
            ++it->second.served;
            it->second.current.reset();
        }
    }

    // ---- lifecycle
    // -----------------------------------------------------------------------------------------

    /// Refuses new requests and spawns with `reason`, fails every queued request with it, and releases every
    /// parked worker (it stops). Busy workers finish their current request, then stop. Idempotent.
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
            orphans.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
            queue_.clear();
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

    // ---- deadlines
    // -----------------------------------------------------------------------------------------

    /// Starts the key's deadline sweeper: one coroutine per key (not a timer per request) that sleeps on
    /// `clock` until the earliest deadline among the key's queued and running requests, and ends each expired
    /// request with `timeout`. It ends when the router closes. `self` must own this router.
    void start_sweeper(const std::shared_ptr<key_router>& self, const asio::any_io_executor& io,
                       std::shared_ptr<Clock> clock) {
        self_ = self;
        sweeper_executor_.emplace(asio::make_strand(io));
        asio::co_spawn(*sweeper_executor_, sweep(self, std::move(clock)), asio::detached);
    }

    /// Ends every request being served with `error` (their workers' late results are then discarded). Used by
    /// shutdown once its grace period is over.
    void fail_running(const PoolError& error) {
        std::vector<job_ptr> running;
        {
            std::lock_guard lock(mutex_);
            for (auto& [id, entry] : workers_) {
                if (entry.current) {
                    running.push_back(entry.current);
                }
            }
        }
        for (auto& job : running) {
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
                         .served = served_};
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
        job_ptr current; // the request being served, so shutdown can answer it
    };

    struct parked_worker {
        WorkerId id;
        take_handler handler;
        asio::any_io_executor executor;
    };

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

    // Workers that are or will be able to serve: everything but evicting/stopped/failed. O(1): routing cost
    // must not grow with the number of workers.
    std::size_t live_locked() const {
        using enum WorkerState;
        return count_locked(spawning) + count_locked(loading) + count_locked(ready) + count_locked(busy) +
               count_locked(idle);
    }

    std::size_t count_locked(WorkerState state) const {
        return state_counts_[static_cast<std::size_t>(state)];
    }

    // Interrupts the sweeper's sleep so it recomputes its deadline (or exits once closed). The signal is
    // emitted on the sweeper's strand, so never concurrently with the sweeper itself.
    void wake_sweeper() {
        if (!sweeper_executor_) {
            return;
        }
        asio::post(*sweeper_executor_, [weak = self_] {
            if (auto self = weak.lock()) {
                self->wake_.emit(asio::cancellation_type::terminal);
            }
        });
    }

    // Removes expired queued requests and collects expired running ones; returns the earliest deadline left.
    Clock::time_point expire_locked(Clock::time_point now, std::vector<std::pair<job_ptr, bool>>& expired) {
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
        for (auto& [id, entry] : workers_) {
            if (!entry.current || entry.current->done() || !entry.current->deadline_covers_service()) {
                continue;
            }
            if (entry.current->deadline <= now) {
                expired.emplace_back(entry.current, true);
            } else {
                earliest = std::min(earliest, entry.current->deadline);
            }
        }
        return earliest;
    }

    static asio::awaitable<void> sweep(std::shared_ptr<key_router> self, std::shared_ptr<Clock> clock) {
        co_await asio::this_coro::throw_if_cancelled(false);
        auto executor = co_await asio::this_coro::executor;
        for (;;) {
            std::vector<std::pair<job_ptr, bool>> expired;
            Clock::time_point next;
            const auto now = clock->now();
            {
                std::lock_guard lock(self->mutex_);
                if (self->closed_) {
                    break;
                }
                next = self->expire_locked(now, expired);
                self->armed_ = next;
            }
            for (auto& [job, serving] : expired) {
                const auto waited =
                    std::chrono::duration_cast<std::chrono::milliseconds>(now - job->enqueued_at);
                job->fail(PoolError(
                    errc::timeout,
                    fmt::format("request to '{}' timed out after {} ms ({})", self->key_, waited.count(),
                                serving ? "while a worker served it" : "waiting in the queue")));
            }
            // Sleeps until `next`, or until a request with an earlier deadline or close() wakes it.
            co_await clock->async_wait_until(
                executor, next, asio::bind_cancellation_slot(self->wake_.slot(), asio::use_awaitable));
        }
    }

    // Moves worker `id` to its final state and forgets it; when it was the key's last live worker, the queued
    // requests end with `error` (or, without one, the reason no worker is left).
    void retire(WorkerId id, WorkerState final_state, const std::optional<PoolError>& error) {
        std::vector<job_ptr> orphans;
        {
            std::lock_guard lock(mutex_);
            transition_locked(id, final_state);
            erase_locked(id);
            if (live_locked() == 0) {
                orphans.assign(std::make_move_iterator(queue_.begin()),
                               std::make_move_iterator(queue_.end()));
                queue_.clear();
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

    void start_locked(WorkerId id, const job_ptr& job) {
        transition_locked(id, WorkerState::busy);
        if (auto it = workers_.find(id); it != workers_.end()) {
            it->second.current = job;
        }
    }

    void erase_locked(WorkerId id) {
        if (auto it = workers_.find(id); it != workers_.end()) {
            --state_counts_[static_cast<std::size_t>(it->second.state)];
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

    mutable std::mutex mutex_;
    std::deque<job_ptr> queue_;
    std::unordered_map<WorkerId, worker_entry> workers_; // O(1) per request, however many workers
    std::vector<parked_worker> parked_;         // LIFO: the most recently idle worker gets the next request.
    std::array<std::size_t, 8> state_counts_{}; // workers per WorkerState, kept by transition_locked
    Clock::time_point armed_ = Clock::time_point::max(); // the deadline the sweeper sleeps until
    std::weak_ptr<key_router> self_;
    std::optional<asio::strand<asio::any_io_executor>> sweeper_executor_;
    asio::cancellation_signal wake_; // emitted on the sweeper's strand only
    std::uint64_t served_ = 0;
    bool closed_ = false;
    std::string closed_reason_;
};

} // namespace detail
} // namespace modelpool
