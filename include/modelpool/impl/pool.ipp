// modelpool/impl/pool.ipp
//
// The definitions of the non-template members declared in modelpool/pool.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/pool.hpp"
#include <spdlog/sinks/stdout_color_sinks.h>

namespace modelpool {

MODELPOOL_DECL result<std::unique_ptr<Pool>> Pool::create(PoolOptions options) {
    if (auto valid = options.validate(); !valid) {
        return unexpected<PoolError>(valid.error());
    }
    return std::make_unique<Pool>(std::move(options));
}

MODELPOOL_DECL Pool::~Pool() {
    stop();
    if (stopper_.joinable()) {
        stopper_.join();
    }
}

MODELPOOL_DECL result<std::size_t> Pool::ensure_workers(std::string_view registry_key, std::size_t count) {
    auto router = find_router(registry_key);
    if (!router) {
        return unexpected<PoolError>(router.error());
    }
    return (*router)->ensure(count);
}

MODELPOOL_DECL void Pool::maintain() {
    const auto now = clock_->now();
    for (auto& router : all_routers()) {
        router->maintain(now);
    }
}

MODELPOOL_DECL std::string Pool::prometheus() const {
    return prometheus_text(metrics(), snapshot(), governor_->stats());
}

MODELPOOL_DECL std::vector<KeySnapshot> Pool::snapshot() const {
    std::vector<KeySnapshot> keys;
    {
        std::lock_guard lock(registry_mutex_);
        keys.reserve(routers_.size());
        for (const auto& [key, router] : routers_) {
            keys.push_back(router->snapshot());
        }
    }
    std::sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
    return keys;
}

MODELPOOL_DECL std::optional<KeySnapshot> Pool::snapshot(std::string_view key) const {
    std::lock_guard lock(registry_mutex_);
    auto it = routers_.find(key);
    if (it == routers_.end()) {
        return std::nullopt;
    }
    return it->second->snapshot();
}

MODELPOOL_DECL asio::thread_pool::executor_type Pool::blocking_executor() noexcept {
    return blocking_.get_executor();
}

MODELPOOL_DECL void Pool::stop(std::chrono::milliseconds grace) {
    begin_stop();
    {
        std::lock_guard lock(core_->mutex);
        const auto until = std::chrono::steady_clock::now() + std::max(grace, std::chrono::milliseconds{0});
        if (until < drain_until_) {
            drain_until_ = until;
            grace_ = std::max(grace, std::chrono::milliseconds{0});
        }
    }
    core_->drained.notify_all();
    if (on_pool_thread()) {
        std::call_once(stopper_once_,
                       [this] { stopper_ = std::thread([this] { drain_for_pool_thread_stop(); }); });
        return;
    }
    finish_stop();
}

MODELPOOL_DECL void Pool::wait_stopped() {
    if (on_pool_thread()) {
        return;
    }
    std::unique_lock lock(join_mutex_); // allowed-blocking: never on a pool thread (checked above)
    stopped_cv_.wait(lock, [this] { return joined_ || drained_; });
}

MODELPOOL_DECL void Pool::drain_for_pool_thread_stop() {
    if (!wait_drained()) {
        core_->logger->warn("stop: {} worker(s) still busy after {} ms; ending their requests",
                            live_workers(), current_grace().count());
    }
    fail_remaining_requests();
    {
        std::lock_guard lock(join_mutex_);
        drained_ = true;
    }
    stopped_cv_.notify_all();
}

MODELPOOL_DECL result<std::shared_ptr<detail::key_router>> Pool::find_router(std::string_view key) const {
    if (auto valid = check_key(key); !valid) {
        return unexpected<PoolError>(valid.error());
    }
    std::lock_guard lock(registry_mutex_);
    auto it = routers_.find(key);
    if (it == routers_.end()) {
        return fail(errc::invalid_argument, "'{}' is not a registered model", key);
    }
    return it->second;
}

MODELPOOL_DECL std::size_t Pool::evict_for_memory(std::string_view except, std::size_t needed_mb) {
    struct candidate {
        detail::key_router::idle_candidate worker;
        std::shared_ptr<detail::key_router> router;
    };
    std::vector<candidate> candidates;
    std::size_t total = 0;
    for (auto& router : all_routers()) {
        if (router->key() == except) {
            continue;
        }
        for (const auto& worker : router->idle_candidates()) {
            total += worker.memory_mb;
            candidates.push_back({worker, router});
        }
    }
    if (total < needed_mb) {
        return 0;
    }
    std::sort(candidates.begin(), candidates.end(),
              [](const auto& a, const auto& b) { return a.worker.parked_at < b.worker.parked_at; });
    std::size_t freed = 0;
    for (auto& c : candidates) {
        if (freed >= needed_mb) {
            break;
        }
        if (c.router->evict_idle(c.worker.id, "memory")) {
            freed += c.worker.memory_mb;
        }
    }
    core_->logger->info("evicted idle workers holding {} MB to make room for '{}'", freed, except);
    return freed;
}

MODELPOOL_DECL asio::awaitable<void> Pool::maintenance_loop() {
    co_await asio::this_coro::throw_if_cancelled(false);
    auto executor = co_await asio::this_coro::executor;
    auto next = Clock::saturating_add(clock_->now(), options_.maintenance_interval);
    while (!stopping()) {
        co_await clock_->async_wait_until(
            executor, next, asio::bind_cancellation_slot(maintenance_wake_.slot(), asio::use_awaitable));
        if (stopping()) {
            break;
        }
        maintain();
        next = Clock::saturating_add(clock_->now(), options_.maintenance_interval);
    }
}

MODELPOOL_DECL PoolOptions Pool::checked(PoolOptions options) {
    if (auto valid = options.validate(); !valid) {
        throw std::system_error(valid.error().error_code(), valid.error().message());
    }
    return options;
}

MODELPOOL_DECL Pool::Pool(PoolOptions options, private_tag)
    : options_(std::move(options)), clock_(options_.clock ? options_.clock : std::make_shared<SteadyClock>()),
      governor_(MemoryGovernor::create(options_.memory_limit_mb != 0 ? options_.memory_limit_mb
                                                                     : default_memory_limit_mb())),
      io_(std::make_unique<asio::io_context>(static_cast<int>(options_.io_threads))),
      fallback_(std::make_shared<detail::fallback_executor>(io_->get_executor())),
      work_(asio::make_work_guard(*io_)),
      blocking_threads_(options_.blocking_threads != 0
                            ? options_.blocking_threads
                            : std::max<std::size_t>(1, std::thread::hardware_concurrency())),
      blocking_(blocking_threads_),
      core_(std::make_shared<detail::pool_core>(detail::call_env{blocking_.get_executor()})),
      maintenance_strand_(asio::make_strand(io_->get_executor())) {
    // options() reports what the pool runs with: fill in every default.
    options_.logger = options_.logger ? options_.logger : default_logger();
    options_.clock = clock_;
    options_.memory_limit_mb = governor_->limit_mb();
    options_.blocking_threads = blocking_threads_;
    core_->logger = options_.logger;
    core_->metrics = std::make_shared<detail::pool_metrics>();
    core_->clock = clock_;
    core_->governor = governor_;
    core_->options = &options_;
    core_->io = io_->get_executor();
    core_->seed = options_.random_seed;
    core_->evict_for_memory = [this](std::string_view except, std::size_t needed_mb) {
        return evict_for_memory(except, needed_mb);
    };
    asio::co_spawn(maintenance_strand_, maintenance_loop(), asio::detached);
    threads_.reserve(options_.io_threads);
    for (std::size_t i = 0; i < options_.io_threads; ++i) {
        threads_.emplace_back([this] { run_io_thread(); });
    }
}

MODELPOOL_DECL void Pool::finish_stop() {
    std::lock_guard join_lock(join_mutex_);
    if (joined_) {
        return;
    }
    if (!wait_drained()) {
        core_->logger->warn("stop: {} worker(s) still busy after {} ms; ending their requests and "
                            "cancelling them",
                            live_workers(), current_grace().count());
    }
    fail_remaining_requests(); // grace period over, or no worker left to serve them: nothing stays waiting
    fallback_->stop();
    work_.reset();
    io_->stop();
    for (auto& thread : threads_) {
        thread.join();
    }
    // No io thread runs now: this thread finishes the io_context's work single-threaded, so emitting the
    // workers' cancellation signals cannot race with their coroutines.
    core_->io_threads_joined.store(true, std::memory_order_release);
    detail::running_pool = this;
    io_->restart();
    // Held until the io_context's work is done: co_spawn forwards a cancellation by posting, and the
    // forwarder uses memory inside the signal even if the worker finishes (and leaves the gate) first.
    std::vector<std::shared_ptr<asio::cancellation_signal>> emitted;
    // Repeated while that makes progress: a worker whose coroutine had not started yet when its signal was
    // emitted misses it (signals are not sticky) and gets it in the next round.
    for (int round = 0; round < 16; ++round) {
        auto signals = core_->running_signals();
        if (signals.empty()) {
            break;
        }
        for (const auto& signal : signals) {
            signal->emit(asio::cancellation_type::terminal);
        }
        emitted.insert(emitted.end(), signals.begin(), signals.end());
        io_->restart();
        if (io_->poll() == 0) { // allowed-blocking: on the stopping thread, after the io threads were joined
            break;
        }
    }
    blocking_.stop();
    blocking_.join();
    io_->restart();
    io_->poll(); // allowed-blocking: the same; completions the blocking threads posted while finishing
    detail::running_pool = nullptr;
    joined_ = true;
    stopped_cv_.notify_all();
    if (auto stuck = live_workers(); stuck != 0) {
        core_->logger->warn("stop: {} worker(s) ignored cancellation; they are destroyed with the pool",
                            stuck);
    }
}

MODELPOOL_DECL void Pool::begin_stop() {
    if (stopping_.exchange(true, std::memory_order_acq_rel)) {
        return;
    }
    for (auto& router : all_routers()) {
        router->close("the pool is shutting down");
    }
    governor_->close(PoolError(errc::shutting_down, "the pool is shutting down"));
    asio::post(maintenance_strand_, [this] { maintenance_wake_.emit(asio::cancellation_type::terminal); });
}

MODELPOOL_DECL std::vector<std::shared_ptr<detail::key_router>> Pool::all_routers() const {
    std::lock_guard lock(registry_mutex_);
    std::vector<std::shared_ptr<detail::key_router>> routers;
    routers.reserve(routers_.size());
    for (const auto& [key, router] : routers_) {
        routers.push_back(router);
    }
    return routers;
}

MODELPOOL_DECL void Pool::fail_remaining_requests() {
    const auto grace = current_grace();
    for (auto& router : all_routers()) {
        router->fail_remaining(grace);
    }
}

MODELPOOL_DECL std::chrono::milliseconds Pool::current_grace() const {
    std::lock_guard lock(core_->mutex);
    return grace_;
}

MODELPOOL_DECL bool Pool::wait_drained() {
    std::unique_lock lock(core_->mutex);
    for (;;) {
        if (core_->live_workers == 0) {
            return true;
        }
        const auto until = drain_until_;
        if (std::chrono::steady_clock::now() >= until) {
            return false;
        }
        // allowed-blocking: stop() runs this only off the pool threads (see on_pool_thread()).
        core_->drained.wait_until(lock, until);
    }
}

MODELPOOL_DECL std::size_t Pool::live_workers() const {
    std::lock_guard lock(core_->mutex);
    return core_->live_workers;
}

MODELPOOL_DECL void Pool::run_io_thread() {
    detail::running_pool = this;
    io_->run(); // allowed-blocking: the io thread's own event loop, not a nested one
    detail::running_pool = nullptr;
}

MODELPOOL_DECL std::shared_ptr<spdlog::logger> Pool::default_logger() {
    auto logger = std::make_shared<spdlog::logger>("modelpool",
                                                   std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_level(spdlog::level::info);
    return logger;
}

MODELPOOL_DECL result<void> Pool::check_key(std::string_view key) const {
    if (key.empty()) {
        return fail(errc::invalid_argument, "registry key must not be empty");
    }
    if (key.size() > options_.max_key_length) {
        return fail(errc::invalid_argument, "registry key '{}...' is {} bytes long; the limit is {}",
                    key.substr(0, 32), key.size(), options_.max_key_length);
    }
    return {};
}

MODELPOOL_DECL result<void> Pool::check_spawn(std::string_view key, std::size_t per_worker_mb,
                                              const AllocationGuard& guard) const {
    if (auto valid = check_key(key); !valid) {
        return valid;
    }
    if (stopping()) {
        return fail(errc::shutting_down, "cannot spawn a worker for '{}': the pool is shutting down", key);
    }
    if (per_worker_mb == 0) {
        return fail(errc::invalid_argument, "per_worker_mb for '{}' must be positive (got 0)", key);
    }
    if (!guard) {
        return fail(errc::invalid_argument, "allocation guard for '{}' is empty (moved from or released)",
                    key);
    }
    if (guard.governor() != governor_.get()) {
        return fail(errc::invalid_argument, "allocation guard for '{}' comes from another pool's governor",
                    key);
    }
    if (guard.size_mb() != per_worker_mb) {
        return fail(errc::invalid_argument, "allocation guard for '{}' holds {} MB but per_worker_mb is {}",
                    key, guard.size_mb(), per_worker_mb);
    }
    return {};
}

MODELPOOL_DECL result<std::shared_ptr<detail::key_router>> Pool::router_for(std::string_view key,
                                                                            std::type_index capability,
                                                                            std::string_view capability_name,
                                                                            bool create) {
    if (!create && stopping()) {
        return fail(errc::shutting_down, "key '{}' takes no requests: the pool is shutting down", key);
    }
    if (auto valid = check_key(key); !valid) {
        return unexpected<PoolError>(valid.error());
    }
    std::lock_guard lock(registry_mutex_);
    auto it = routers_.find(key);
    if (it == routers_.end()) {
        if (!create) {
            return fail(errc::no_workers, "no worker for key '{}' ({}): none was ever spawned", key,
                        capability_name);
        }
        auto router = std::make_shared<detail::key_router>(std::string(key), capability, capability_name,
                                                           options_.queue_capacity, core_);
        router->start(router);
        it = routers_.emplace(std::string(key), std::move(router)).first;
    }
    if (it->second->capability() != capability) {
        return fail(errc::invalid_argument, "key '{}' serves {}, not {}", key, it->second->capability_name(),
                    capability_name);
    }
    return it->second;
}

} // namespace modelpool
