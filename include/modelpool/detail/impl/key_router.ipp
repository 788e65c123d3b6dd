// modelpool/detail/impl/key_router.ipp
//
// The definitions of detail::key_router's non-template members (see modelpool/detail/config.hpp): included by
// key_router.hpp in header-only mode, compiled once by src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/detail/key_router.hpp"

namespace modelpool {
namespace detail {

MODELPOOL_DECL key_router::key_router(std::string key, std::type_index capability,
                                      std::string_view capability_name, std::size_t queue_capacity,
                                      std::shared_ptr<pool_core> core)
    : key_(std::move(key)), capability_(capability), capability_name_(capability_name),
      queue_capacity_(queue_capacity), core_(std::move(core)), strand_(asio::make_strand(core_->io)),
      stats_(std::make_shared<key_stats>(core_->metrics, core_->clock, core_->options->breaker)),
      queue_(core_->options->priority_aging), jitter_(core_->seed ^ std::hash<std::string>{}(key_)) {}

MODELPOOL_DECL result<CircuitBreaker::Permit> key_router::admit(Clock::time_point now) {
    auto permit = stats_->breaker.try_admit(now);
    if (permit) {
        return permit;
    }
    core_->metrics->circuit_rejection();
    const auto until = stats_->breaker.open_until();
    return fail(errc::circuit_open, "circuit of '{}' is open after {} failures in a row; {}", key_,
                stats_->breaker.options().failure_threshold,
                until > now
                    ? fmt::format("next probe in {} ms",
                                  std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count())
                    : std::string("probes are in flight"));
}

MODELPOOL_DECL void key_router::start(const std::shared_ptr<key_router>& self) {
    self_ = self;
    asio::co_spawn(strand_, sweep(self), asio::detached);
}

MODELPOOL_DECL result<void> key_router::set_spec(std::shared_ptr<const model_spec> spec) {
    launch_order order;
    {
        std::lock_guard lock(mutex_);
        if (closed_) {
            return fail(errc::shutting_down, "cannot register '{}': {}", key_, closed_reason_);
        }
        if (spec_) {
            return fail(errc::invalid_argument, "model '{}' is already registered", key_);
        }
        // A key is either the pool's (registered) or the application's (spawn_*_worker), never both: the pool
        // could not keep a maximum, nor evict, workers it did not start.
        if (const std::size_t alive = alive_locked(); alive > 0) {
            return fail(
                errc::invalid_argument,
                "cannot register '{}': it has {} worker(s) spawned directly with spawn_*_worker; a "
                "registered model's workers are started by the pool, so register it under a key of its own",
                key_, alive);
        }
        spec_ = std::move(spec);
        order = plan_locked(core_->clock->now());
    }
    launch(std::move(order));
    return {};
}

MODELPOOL_DECL result<std::size_t> key_router::ensure(std::size_t count) {
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

MODELPOOL_DECL std::vector<key_router::idle_candidate> key_router::idle_candidates() const {
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

MODELPOOL_DECL bool key_router::evict_idle(WorkerId id, std::string_view cause) {
    std::optional<parked_worker> victim;
    {
        std::lock_guard lock(mutex_);
        if (!spec_ || closed_ || healthy_serving_locked() <= spec_->min_workers) {
            return false;
        }
        auto it = std::find_if(parked_.begin(), parked_.end(), [id](const auto& p) { return p.id == id; });
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

MODELPOOL_DECL void key_router::maintain(Clock::time_point now) {
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

MODELPOOL_DECL result<void> key_router::add_worker(WorkerId id, std::size_t memory_mb, bool reserved,
                                                   std::weak_ptr<asio::cancellation_signal> stop,
                                                   asio::any_io_executor executor) {
    std::lock_guard lock(mutex_);
    if (closed_) {
        return fail(errc::shutting_down, "cannot spawn a worker for '{}': {}", key_, closed_reason_);
    }
    if (spec_ && !reserved) {
        return fail(
            errc::invalid_argument,
            "cannot spawn a worker for '{}' directly: it is a registered model, whose workers the pool "
            "starts (use ensure_workers to start more, up to its max_workers of {})",
            key_, spec_->max_workers);
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

MODELPOOL_DECL bool key_router::transition(WorkerId id, WorkerState to) {
    std::lock_guard lock(mutex_);
    return transition_locked(id, to);
}

MODELPOOL_DECL void key_router::worker_loaded(WorkerId id) {
    std::lock_guard lock(mutex_);
    transition_locked(id, WorkerState::ready);
    load_failures_ = 0;
    failing_fast_ = false;
    retry_at_ = Clock::time_point::min();
}

MODELPOOL_DECL void key_router::worker_failed(WorkerId id, const PoolError& error) {
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
            if (!spec_ || closed_) { // a closed key retries nothing: its waiters learn now
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

MODELPOOL_DECL void key_router::worker_stopped(WorkerId id) {
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

MODELPOOL_DECL result<void> key_router::submit(job_ptr job) {
    const auto now = core_->clock->now();
    std::unique_lock lock(mutex_);
    if (closed_) {
        return fail(errc::shutting_down, "key '{}' takes no requests: {}", key_, closed_reason_);
    }
    if (collecting_ && collecting_->items.front()->batches_with(*job)) {
        // A worker holds a partial batch this request can join: join it, and hand it over once full.
        if (queue_.size() + collecting_->items.size() >= queue_capacity_) {
            return overloaded_locked();
        }
        collecting_->items.push_back(std::move(job));
        bool wake = false;
        auto ready = collecting_->items.size() >= spec_->batching.max_batch_size
                         ? dispatch_collected_locked(now, wake)
                         : std::nullopt;
        lock.unlock();
        if (ready) {
            post_completion(std::move(ready->handler), ready->executor, std::move(ready->job));
        }
        if (wake) {
            wake_sweeper();
        }
        return {};
    }
    if (!parked_.empty()) {
        auto [id, handler, executor, parked_at] = std::move(parked_.back());
        parked_.pop_back();
        bool wake = false;
        if (!collecting_ && spec_ && spec_->batching.max_batch_size > 1 &&
            spec_->batching.max_queue_delay.count() > 0 && job->batchable()) {
            // Triton's behaviour with a queue delay: the idle worker holds the request for a fuller batch.
            transition_locked(id, WorkerState::busy);
            const auto due = Clock::saturating_add(job->enqueued_at, spec_->batching.max_queue_delay);
            collecting_.emplace(collecting_batch{id, std::move(handler), std::move(executor),
                                                 std::vector<job_ptr>{job}, due});
            wake = due < armed_;
            lock.unlock();
        } else {
            if (spec_ && spec_->batching.max_batch_size > 1 && job->batchable()) {
                stats_->batch_size.record(1); // an idle worker serves it at once, alone
            }
            wake = start_locked(id, job);
            lock.unlock();
            post_completion(std::move(handler), executor, std::move(job));
        }
        if (wake) {
            wake_sweeper();
        }
        return {};
    }
    launch_order order;
    if (spec_) {
        if (failing_fast_ && now < retry_at_) {
            return fail(errc::spawn_failed,
                        "model '{}' failed to load {} times in a row ({}); next try in {} ms", key_,
                        load_failures_, last_load_error_,
                        std::chrono::duration_cast<std::chrono::milliseconds>(retry_at_ - now).count());
        }
        if (queue_.size() >= queue_capacity_) {
            return overloaded_locked();
        }
        queue_.push(job);
        order = plan_locked(now);
    } else {
        if (alive_locked() == 0) {
            return fail(errc::no_workers, "no worker for key '{}' ({}): none ready and none loading", key_,
                        capability_name_);
        }
        if (queue_.size() >= queue_capacity_) {
            return overloaded_locked();
        }
        queue_.push(job);
    }
    const bool wake = std::min(job->deadline, job->queue_deadline) < armed_;
    lock.unlock();
    if (wake) {
        wake_sweeper();
    }
    launch(std::move(order));
    return {};
}

MODELPOOL_DECL key_router::job_ptr key_router::try_take(WorkerId id) {
    const auto now = core_->clock->now();
    std::unique_lock lock(mutex_);
    if (spec_ && spec_->batching.max_queue_delay.count() > 0) {
        return nullptr; // async_take may have to hold a partial batch, which needs the worker's handler
    }
    std::vector<job_ptr> partial; // stays empty: without a queue delay no batch is held
    Clock::time_point due{};
    auto job = next_locked(now, partial, due);
    if (job && start_locked(id, job)) {
        lock.unlock();
        wake_sweeper();
    }
    return job;
}

MODELPOOL_DECL void key_router::take_or_park(WorkerId id, asio::any_io_executor executor,
                                             take_handler handler) {
    const auto now = core_->clock->now();
    bool wake = false;
    std::unique_lock lock(mutex_);
    auto ready = take_locked(id, std::move(executor), std::move(handler), now, wake);
    lock.unlock();
    if (ready) {
        post_completion(std::move(ready->handler), ready->executor, std::move(ready->job));
    }
    if (wake) {
        wake_sweeper();
    }
}

MODELPOOL_DECL void key_router::remove(const job_base* job) {
    std::lock_guard lock(mutex_);
    if (!queue_.remove(job) && collecting_) {
        auto& items = collecting_->items;
        items.erase(
            std::remove_if(items.begin(), items.end(), [job](const job_ptr& j) { return j.get() == job; }),
            items.end());
        // An emptied batch is handed over all the same: the worker finds nothing to do and parks again.
    }
}

MODELPOOL_DECL void key_router::interrupt(const job_ptr& job) {
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

MODELPOOL_DECL key_router::after_request key_router::request_served(WorkerId id) {
    std::lock_guard lock(mutex_);
    auto it = workers_.find(id);
    if (it == workers_.end()) {
        ++served_;
        return {};
    }
    auto& entry = it->second;
    const std::size_t requests = entry.current ? entry.current->requests() : 1; // a batch serves several
    served_ += requests;
    entry.served += requests;
    entry.current.reset();
    entry.overdue.reset();
    after_request after{.stop = false, .interrupted = std::exchange(entry.interrupted, false)};
    if (entry.unhealthy) {
        if (spec_) {
            after.stop = true; // a replacement was started for it: it stops
        } else {
            entry.unhealthy = false; // nobody replaces a worker the application spawned: it serves again
            --unhealthy_;
        }
    }
    return after;
}

MODELPOOL_DECL void key_router::close(std::string reason) {
    std::vector<job_ptr> orphans;
    std::vector<parked_worker> parked;
    std::optional<handoff> collected;
    {
        std::lock_guard lock(mutex_);
        if (closed_) {
            return;
        }
        closed_ = true;
        closed_reason_ = std::move(reason);
        bool wake = false;
        collected =
            dispatch_collected_locked(core_->clock->now(), wake); // no more waiting for a fuller batch
        if (alive_locked() == 0) {
            take_queue_locked(orphans);
        }
        parked.swap(parked_);
    }
    if (collected) {
        post_completion(std::move(collected->handler), collected->executor, std::move(collected->job));
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

MODELPOOL_DECL void key_router::fail_remaining(std::chrono::milliseconds grace) {
    const PoolError error(errc::shutting_down,
                          fmt::format("request to '{}' ended by shutdown: the grace period of {} ms is over",
                                      key_, grace.count()));
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

MODELPOOL_DECL KeySnapshot key_router::snapshot() const {
    std::lock_guard lock(mutex_);
    KeySnapshot snap{.key = key_,
                     .capability = capability_name_,
                     .queue_depth = queue_.size() + (collecting_ ? collecting_->items.size() : 0),
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
                     .service_time = stats_->service.snapshot(),
                     .batch_size = stats_->batch_size.snapshot()};
    for (const auto& [id, entry] : workers_) {
        ++snap.workers[static_cast<std::size_t>(entry.state)];
        snap.memory_mb += entry.memory_mb;
    }
    return snap;
}

MODELPOOL_DECL std::optional<WorkerState> key_router::state_of(WorkerId id) const {
    std::lock_guard lock(mutex_);
    auto it = workers_.find(id);
    if (it == workers_.end()) {
        return std::nullopt;
    }
    return it->second.state;
}

MODELPOOL_DECL key_router::launch_order key_router::plan_locked(Clock::time_point now) {
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
                     .starting =
                         count_locked(WorkerState::spawning) + count_locked(WorkerState::loading) + reserved_,
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

MODELPOOL_DECL key_router::launch_order key_router::reserve_locked(std::size_t count, bool cold) {
    if (count == 0) {
        return {};
    }
    reserved_ += count;
    return {scaling_plan{count, cold}, spec_};
}

MODELPOOL_DECL key_router::launch_result key_router::launch(launch_order order) {
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

MODELPOOL_DECL bool key_router::make_room(const std::shared_ptr<const model_spec>& spec) {
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

MODELPOOL_DECL PoolError key_router::cold_start_refusal(const std::shared_ptr<const model_spec>& spec) const {
    return cold_start_refusal(spec, core_->governor->stats(), 0);
}

MODELPOOL_DECL PoolError key_router::cold_start_refusal(const std::shared_ptr<const model_spec>& spec,
                                                        const MemoryStats& stats,
                                                        std::size_t evictable) const {
    return PoolError(errc::memory_exhausted,
                     fmt::format("cannot start a worker for '{}': it needs {} MB; {} of {} MB are allocated "
                                 "and idle workers of other keys could free only {} MB",
                                 key_, spec->per_worker_mb, stats.allocated_mb, stats.limit_mb, evictable));
}

MODELPOOL_DECL void key_router::unreserve(std::size_t count, const std::optional<PoolError>& error) {
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

MODELPOOL_DECL PoolError key_router::schedule_retry_locked(const PoolError& error,
                                                           std::vector<job_ptr>& orphans) {
    const auto now = core_->clock->now();
    const auto& options = *core_->options;
    if (load_failures_ <= options.load_retries) {
        const auto delay = backoff_delay(load_failures_, options.retry_backoff_initial,
                                         options.retry_backoff_max, jitter_.unit());
        retry_at_ = Clock::saturating_add(now, delay);
        core_->metrics->load_retry();
        queue_.remove_if([&](job_ptr& job) {
            if (job->deadline < retry_at_) {
                orphans.push_back(std::move(job));
                return true;
            }
            return false;
        });
        core_->logger->warn("'{}': load failed ({} in a row); retry {} of {} in {} ms", key_, load_failures_,
                            load_failures_, options.load_retries, delay.count());
        return PoolError(errc::spawn_failed, fmt::format("{} (the retry in {} ms comes after the request's "
                                                         "deadline)",
                                                         error.message(), delay.count()));
    }
    failing_fast_ = true;
    retry_at_ = Clock::saturating_add(now, options.retry_backoff_max);
    take_queue_locked(orphans);
    core_->logger->error("'{}': {} loads failed in a row; requests fail fast for {} ms", key_, load_failures_,
                         options.retry_backoff_max.count());
    return PoolError(errc::spawn_failed,
                     fmt::format("{} ({} loads failed in a row; next try in {} ms)", error.message(),
                                 load_failures_, options.retry_backoff_max.count()));
}

MODELPOOL_DECL void key_router::release_evicted(parked_worker victim, std::string_view cause) {
    core_->metrics->worker_evicted();
    core_->event(WorkerEventKind::evicted, key_, victim.id, spec_memory_mb(), cause);
    core_->logger->debug("'{}': evicting worker {} ({})", key_, victim.id, cause);
    post_completion(std::move(victim.handler), victim.executor, job_ptr{});
}

MODELPOOL_DECL std::size_t key_router::spec_memory_mb() const {
    std::lock_guard lock(mutex_);
    return spec_ ? spec_->per_worker_mb : 0;
}

MODELPOOL_DECL bool key_router::transition_locked(WorkerId id, WorkerState to) {
    auto it = workers_.find(id);
    if (it == workers_.end() || !can_transition(it->second.state, to)) {
        return false;
    }
    --state_counts_[static_cast<std::size_t>(it->second.state)];
    ++state_counts_[static_cast<std::size_t>(to)];
    it->second.state = to;
    return true;
}

MODELPOOL_DECL std::size_t key_router::alive_locked() const {
    using enum WorkerState;
    return count_locked(spawning) + count_locked(loading) + count_locked(ready) + count_locked(busy) +
           count_locked(idle) + reserved_;
}

MODELPOOL_DECL std::size_t key_router::healthy_serving_locked() const {
    using enum WorkerState;
    return count_locked(ready) + count_locked(busy) + count_locked(idle) - unhealthy_;
}

MODELPOOL_DECL std::size_t key_router::count_locked(WorkerState state) const {
    return state_counts_[static_cast<std::size_t>(state)];
}

MODELPOOL_DECL result<void> key_router::overloaded_locked() const {
    return fail(errc::overloaded, "queue of '{}' is full ({} of {} requests waiting)", key_, queue_.size(),
                queue_capacity_);
}

MODELPOOL_DECL void key_router::take_queue_locked(std::vector<job_ptr>& out) {
    queue_.take_all(out);
}

MODELPOOL_DECL void key_router::wake_sweeper() {
    asio::post(strand_, [weak = self_] {
        if (auto self = weak.lock()) {
            self->wake_.emit(asio::cancellation_type::terminal);
        }
    });
}

MODELPOOL_DECL Clock::time_point key_router::expire_locked(Clock::time_point now,
                                                           std::vector<expiry>& expired, std::size_t& stuck) {
    Clock::time_point earliest = Clock::time_point::max();
    // A waiting request expires at its deadline or its queue deadline, whichever comes first.
    const auto expire_waiting = [&](job_ptr& job) {
        const auto due = std::min(job->deadline, job->queue_deadline);
        if (job->claimed()) {
            return true;
        }
        if (due <= now) {
            expired.push_back({std::move(job), false, true});
            return true;
        }
        earliest = std::min(earliest, due);
        return false;
    };
    queue_.remove_if(expire_waiting);
    if (collecting_) {
        auto& items = collecting_->items;
        items.erase(std::remove_if(items.begin(), items.end(), expire_waiting), items.end());
        if (items.empty() || collecting_->due <= now) {
            earliest = now; // hand the batch over now (the sweeper does, after this)
        } else {
            earliest = std::min(earliest, collecting_->due);
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
        if (deadline <= now && !entry.current->expires_whole(now)) {
            // Part of a batch expired: those requests end now; the call goes on for the others.
            expired.push_back({entry.current, true, false});
        } else if (deadline <= now) {
            expired.push_back({entry.current, true, true});
            entry.overdue = entry.current;
            entry.overdue_at = now;
            earliest = std::min(earliest, Clock::saturating_add(now, grace));
        } else {
            earliest = std::min(earliest, deadline);
        }
    }
    return earliest;
}

MODELPOOL_DECL asio::awaitable<void> key_router::sweep(std::shared_ptr<key_router> self) {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto executor = co_await asio::this_coro::executor;
    const auto clock = self->core_->clock;
    for (;;) {
        std::vector<expiry> expired;
        Clock::time_point next;
        std::size_t stuck = 0;
        launch_order order;
        std::optional<handoff> collected;
        const auto now = clock->now();
        {
            std::lock_guard lock(self->mutex_);
            if (self->closed_) {
                break;
            }
            next = self->expire_locked(now, expired, stuck);
            if (self->collecting_ && next <= now) {
                bool wake = false; // this is the sweeper: it recomputes below
                collected = self->dispatch_collected_locked(now, wake); // its delay is over (or it emptied)
                next = self->expire_locked(now, expired, stuck);
            }
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
            self->core_->logger->warn("'{}': {} worker(s) stuck past a request's deadline; replacing them",
                                      self->key_, stuck);
        }
        if (collected) {
            post_completion(std::move(collected->handler), collected->executor, std::move(collected->job));
        }
        for (auto& [job, serving, whole] : expired) {
            const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(now - job->enqueued_at);
            const bool queue_limit =
                !serving && job->queue_deadline <= now && job->queue_deadline < job->deadline;
            job->expire(now, PoolError(errc::timeout,
                                       fmt::format("request to '{}' timed out after {} ms ({})", self->key_,
                                                   waited.count(),
                                                   serving       ? "while a worker served it"
                                                   : queue_limit ? "its queue timeout, waiting in the queue"
                                                                 : "waiting in the queue")));
            if (serving && whole) {
                self->interrupt(job); // stop the model call: nobody waits for its result any more
            }
        }
        self->launch(std::move(order));
        // Sleeps until `next`, or until a request with an earlier deadline or close() wakes it.
        co_await clock->async_wait_until(
            executor, next, asio::bind_cancellation_slot(self->wake_.slot(), asio::use_awaitable));
    }
}

MODELPOOL_DECL bool key_router::start_locked(WorkerId id, const job_ptr& job) {
    transition_locked(id, WorkerState::busy);
    if (auto it = workers_.find(id); it != workers_.end()) {
        it->second.current = job;
        job->worker = id;
    }
    // A running request may expire before what the sweeper sleeps until (a stream's idle timeout, say).
    return job->running_deadline() < armed_;
}

MODELPOOL_DECL void key_router::erase_locked(WorkerId id) {
    if (auto it = workers_.find(id); it != workers_.end()) {
        --state_counts_[static_cast<std::size_t>(it->second.state)];
        if (it->second.unhealthy) {
            --unhealthy_;
        }
        workers_.erase(it);
    }
}

MODELPOOL_DECL key_router::job_ptr key_router::pop_locked() {
    while (job_ptr job = queue_.pop()) {
        if (!job->claimed()) { // an abandoned stream is still served: it ends (and is counted) as cancelled
            return job;
        }
    }
    return nullptr;
}

MODELPOOL_DECL key_router::job_ptr
key_router::next_locked(Clock::time_point now, std::vector<job_ptr>& partial, Clock::time_point& due) {
    job_ptr first;
    if (collecting_) {
        // Requests that can join the collecting batch wait for it; the others are served as usual.
        const auto& head = *collecting_->items.front();
        first =
            queue_.pop_where([&](const job_base& job) { return !job.claimed() && !head.batches_with(job); });
    } else {
        first = pop_locked();
    }
    if (!first || !spec_ || spec_->batching.max_batch_size <= 1 || !first->batchable()) {
        return first;
    }
    const auto& batching = spec_->batching;
    std::vector<job_ptr> items{first};
    queue_.take_compatible(*first, batching.max_batch_size - 1, items);
    due = Clock::saturating_add(first->enqueued_at, batching.max_queue_delay);
    if (!collecting_ && !closed_ && items.size() < batching.max_batch_size && due > now) {
        partial = std::move(items);
        return nullptr;
    }
    stats_->batch_size.record(items.size());
    return items.size() == 1 ? first : first->make_batch(std::move(items), batching.retry_items_on_failure);
}

MODELPOOL_DECL std::optional<key_router::handoff> key_router::take_locked(WorkerId id,
                                                                          asio::any_io_executor executor,
                                                                          take_handler handler,
                                                                          Clock::time_point now, bool& wake) {
    std::vector<job_ptr> partial;
    Clock::time_point due{};
    job_ptr job = next_locked(now, partial, due); // after close() too: queued requests are drained
    if (!partial.empty()) {
        transition_locked(id, WorkerState::busy);
        collecting_.emplace(
            collecting_batch{id, std::move(handler), std::move(executor), std::move(partial), due});
        wake = wake || due < armed_;
        return std::nullopt;
    }
    if (job || closed_ || !transition_locked(id, WorkerState::idle)) {
        wake = wake || (job && start_locked(id, job));
        return handoff{std::move(handler), std::move(executor), std::move(job)};
    }
    pressure_since_ = Clock::time_point::max(); // a worker is idle: no pressure
    parked_.push_back(parked_worker{id, std::move(handler), std::move(executor), now});
    return std::nullopt;
}

MODELPOOL_DECL std::optional<key_router::handoff> key_router::dispatch_collected_locked(Clock::time_point now,
                                                                                        bool& wake) {
    if (!collecting_) {
        return std::nullopt;
    }
    auto batch = std::move(*collecting_);
    collecting_.reset();
    std::erase_if(batch.items, [](const job_ptr& job) { return job->claimed(); });
    if (batch.items.empty()) {
        return take_locked(batch.id, std::move(batch.executor), std::move(batch.handler), now, wake);
    }
    const std::size_t max = spec_->batching.max_batch_size;
    if (batch.items.size() < max) {
        queue_.take_compatible(*batch.items.front(), max - batch.items.size(), batch.items);
    }
    stats_->batch_size.record(batch.items.size());
    job_ptr job =
        batch.items.size() == 1
            ? batch.items.front()
            : batch.items.front()->make_batch(std::move(batch.items), spec_->batching.retry_items_on_failure);
    wake = start_locked(batch.id, job) || wake;
    return handoff{std::move(batch.handler), std::move(batch.executor), std::move(job)};
}

MODELPOOL_DECL PoolError key_router::closed_error() const {
    std::lock_guard lock(mutex_);
    return closed_error_locked();
}

MODELPOOL_DECL PoolError key_router::closed_error_locked() const {
    if (closed_) {
        return PoolError(errc::shutting_down, fmt::format("key '{}': {}", key_, closed_reason_));
    }
    return PoolError(errc::no_workers, fmt::format("every worker of key '{}' stopped", key_));
}

} // namespace detail
} // namespace modelpool
