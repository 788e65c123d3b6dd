// modelpool/pool.hpp
//
// `modelpool::Pool`: keeps models loaded in worker coroutines and serves requests to them.
//
// A pool owns an io_context run by `io_threads` threads, a blocking executor for blocking model calls, one
// registry of keys (each with one bounded queue and its workers), one memory governor, counters and a logger.
// There is no global state: several pools may live in one process.
//
// Spawning: `spawn_<capability>_worker(key, loader, per_worker_mb, guard)` returns at once. The worker then
// co_awaits `loader()` (an `asio::awaitable<result<T>>`) on the pool's io_context, and only when the load
// succeeds does it register with the key and start serving. Nothing blocks a thread while a model loads.
//
// Requests: every operation takes an Asio completion token, so one operation serves every calling style:
//
//     auto v = co_await pool.embed("bert", "hello", asio::use_awaitable);       // coroutine
//     auto f = pool.embed("bert", "hello", asio::use_future);                    // plain thread
//     pool.embed("bert", "hello", [](result<Embedding> r) { ... });              // callback
//     auto op = pool.embed("bert", "hello", asio::deferred);                     // composed later
//
// Results are `result<T>` values (errors are values, not exceptions). Cancelling through the token's
// cancellation slot ends a queued or running request with `cancelled`.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/capabilities/image_embedding.hpp"
#include "modelpool/capabilities/text_embedding.hpp"
#include "modelpool/capabilities/text_to_image.hpp"
#include "modelpool/capabilities/text_to_text.hpp"
#include "modelpool/capabilities/vision.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/config.hpp"
#include "modelpool/detail/job.hpp"
#include "modelpool/detail/key_router.hpp"
#include "modelpool/detail/worker.hpp"
#include "modelpool/error.hpp"
#include "modelpool/exposition.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/operations.hpp"
#include "modelpool/options.hpp"
#include "modelpool/request_options.hpp"
#include "modelpool/stream.hpp"

#include <spdlog/logger.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <typeindex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace modelpool {

class RequestScope;

namespace detail {

/// Placeholder for "deduce the model type from the loader".
struct deduce_model {};

/// The model type a spawn function uses: `T` if given, else what the loader's `result<T>` holds.
template <class T, class F> struct resolve_model { using type = T; };
template <class F>
    requires requires {
        typename loader_result_t<F>::value_type;
    }
struct resolve_model<deduce_model, F> {
    using type = typename loader_result_t<F>::value_type;
};

/// Transparent hashing so the registry is searched with a string_view, without building a string.
struct key_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view key) const noexcept { return std::hash<std::string_view>{}(key); }
};

} // namespace detail

/// The model type a spawn function serves: `T`, or deduced from the loader when `T` is left out.
template <class T, class F> using resolved_model_t = typename detail::resolve_model<T, F>::type;

/// A loader for model type `T`: callable with no arguments, returning `asio::awaitable<result<T>>`.
template <class F, class T>
concept model_loader = std::move_constructible<F> && std::invocable<F&> &&
    std::same_as<std::invoke_result_t<F&>, asio::awaitable<result<T>>>;

/// See the file comment.
///
/// @par Thread Safety
/// Distinct objects: Safe. Shared objects: Safe (every member function may be called from any thread).
///
/// @par Lifetime
/// Streams, pending operations and callbacks must not outlive the pool; `AllocationGuard`s may (they keep the
/// governor alive). Destroying the pool stops it (see `stop()`); do not destroy it from one of its own
/// threads.
class Pool : public basic_operations<Pool> {
public:
    /// The executor of the pool's io_context.
    using executor_type = asio::io_context::executor_type;

    /// Starts a pool. Throws `std::system_error` (code in `pool_category()`) when `options` are invalid; use
    /// `Pool::create` to get the error as a value instead.
    explicit Pool(PoolOptions options = {}) : Pool(checked(std::move(options)), private_tag{}) {}

    /// Starts a pool, or reports invalid options as a `PoolError` (invalid_argument naming the field).
    static result<std::unique_ptr<Pool>> create(PoolOptions options);

    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    /// Stops the pool (see `stop()`).
    ~Pool();

    // ---- spawning
    // --------------------------------------------------------------------------------------------

    /// Spawns a text_embedding worker under `registry_key`. See `spawn_worker` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && TextEmbeddingModel<resolved_model_t<T, F>>
            result<WorkerId> spawn_text_embedding_worker(std::string_view registry_key, F model_loader,
                                                         std::size_t per_worker_mb,
                                                         AllocationGuard allocation_guard) {
            return spawn_worker<text_embedding, resolved_model_t<T, F>>(
                registry_key, std::move(model_loader), per_worker_mb, std::move(allocation_guard));
        }

    /// Spawns an image_embedding worker under `registry_key`. See `spawn_worker` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && ImageEmbeddingModel<resolved_model_t<T, F>>
            result<WorkerId> spawn_image_embedding_worker(std::string_view registry_key, F model_loader,
                                                          std::size_t per_worker_mb,
                                                          AllocationGuard allocation_guard) {
            return spawn_worker<image_embedding, resolved_model_t<T, F>>(
                registry_key, std::move(model_loader), per_worker_mb, std::move(allocation_guard));
        }

    /// Spawns a text_to_text worker under `registry_key`. See `spawn_worker` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && TextToTextModel<resolved_model_t<T, F>>
            result<WorkerId> spawn_text_to_text_worker(std::string_view registry_key, F model_loader,
                                                       std::size_t per_worker_mb,
                                                       AllocationGuard allocation_guard) {
            return spawn_worker<text_to_text, resolved_model_t<T, F>>(
                registry_key, std::move(model_loader), per_worker_mb, std::move(allocation_guard));
        }

    /// Spawns a vision worker under `registry_key`. See `spawn_worker` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && VisionModel<resolved_model_t<T, F>>
            result<WorkerId> spawn_vision_worker(std::string_view registry_key, F model_loader,
                                                 std::size_t per_worker_mb,
                                                 AllocationGuard allocation_guard) {
            return spawn_worker<vision, resolved_model_t<T, F>>(registry_key, std::move(model_loader),
                                                                per_worker_mb, std::move(allocation_guard));
        }

    /// Spawns a text_to_image worker under `registry_key`. See `spawn_worker` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && TextToImageModel<resolved_model_t<T, F>>
            result<WorkerId> spawn_text_to_image_worker(std::string_view registry_key, F model_loader,
                                                        std::size_t per_worker_mb,
                                                        AllocationGuard allocation_guard) {
            return spawn_worker<text_to_image, resolved_model_t<T, F>>(
                registry_key, std::move(model_loader), per_worker_mb, std::move(allocation_guard));
        }

    /// Spawns a worker of capability `Cap` with model type `T`; the five named spawn functions call this.
    ///
    /// Returns at once: the new worker's id, or an error for bad arguments (`invalid_argument`: empty or too
    /// long key, `per_worker_mb == 0`, an empty guard, a guard of another size or from another pool's
    /// governor, a key already serving another capability, a registered model's key (the pool starts those
    /// workers: see `ensure_workers`); `shutting_down` after `stop()`). On error the guard is released before
    /// returning.
    ///
    /// The worker then co_awaits `model_loader()` on the pool's io_context. On success it registers with
    /// `registry_key` and serves; on failure (an error or an exception) it never registers, releases
    /// `allocation_guard` exactly once, logs one error line and, if no other worker of the key is alive,
    /// fails every waiting request with `spawn_failed` carrying the loader's message.
    template <capability_descriptor Cap, class T, class F>
        requires model_loader<F, T> result<WorkerId> spawn_worker(std::string_view registry_key,
                                                                  F model_loader, std::size_t per_worker_mb,
                                                                  AllocationGuard allocation_guard) {
            return spawn_worker_impl<Cap, T>(registry_key, std::move(model_loader), per_worker_mb,
                                             std::move(allocation_guard), false);
        }

    // ---- registered models
    // ---------------------------------------------------------------------------------------

    /// Registers a text_embedding model under `registry_key`. See `register_model` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && std::copy_constructible<F> &&
            TextEmbeddingModel<resolved_model_t<T, F>>
                result<void> register_text_embedding_model(std::string_view registry_key, F model_loader,
                                                           ModelOptions model) {
            return register_model<text_embedding, resolved_model_t<T, F>>(registry_key,
                                                                          std::move(model_loader), model);
        }

    /// Registers an image_embedding model under `registry_key`. See `register_model` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && std::copy_constructible<F> &&
            ImageEmbeddingModel<resolved_model_t<T, F>>
                result<void> register_image_embedding_model(std::string_view registry_key, F model_loader,
                                                            ModelOptions model) {
            return register_model<image_embedding, resolved_model_t<T, F>>(registry_key,
                                                                           std::move(model_loader), model);
        }

    /// Registers a text_to_text model under `registry_key`. See `register_model` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && std::copy_constructible<F> &&
            TextToTextModel<resolved_model_t<T, F>>
                result<void> register_text_to_text_model(std::string_view registry_key, F model_loader,
                                                         ModelOptions model) {
            return register_model<text_to_text, resolved_model_t<T, F>>(registry_key, std::move(model_loader),
                                                                        model);
        }

    /// Registers a vision model under `registry_key`. See `register_model` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && std::copy_constructible<F> &&
            VisionModel<resolved_model_t<T, F>>
                result<void> register_vision_model(std::string_view registry_key, F model_loader,
                                                   ModelOptions model) {
            return register_model<vision, resolved_model_t<T, F>>(registry_key, std::move(model_loader),
                                                                  model);
        }

    /// Registers a text_to_image model under `registry_key`. See `register_model` for the contract.
    template <class T = detail::deduce_model, class F>
        requires model_loader<F, resolved_model_t<T, F>> && std::copy_constructible<F> &&
            TextToImageModel<resolved_model_t<T, F>>
                result<void> register_text_to_image_model(std::string_view registry_key, F model_loader,
                                                          ModelOptions model) {
            return register_model<text_to_image, resolved_model_t<T, F>>(registry_key,
                                                                         std::move(model_loader), model);
        }

    /// Registers a model of capability `Cap` and type `T`: from now on the pool manages the key's workers.
    /// `model_loader` is copied into each worker it starts (it is the loader factory).
    ///
    /// - Cold start: the first request for a key with no worker starts `PoolOptions::cold_start_workers` (2)
    ///   workers when the memory governor can hold them, fewer when only fewer fit; when none fits, idle
    ///   workers of other registered keys are evicted (least recently used first) if that makes room, and the
    ///   spawn waits up to `memory_wait_timeout` for their memory; otherwise the request fails at once with
    ///   `memory_exhausted` naming the MB needed, allocated and the limit. The decision is taken under the
    ///   key's lock: any number of concurrent first requests start exactly that many workers.
    /// - Scale up: one more worker when every worker is busy, nothing is loading and requests are queued (for
    ///   `upscale_delay`), up to `max_workers` counting loading workers.
    /// - Idle eviction: a worker idle for `idle_timeout` is evicted at a maintenance tick, least recently
    /// used
    ///   first, one per key per tick, down to `min_workers`; its memory is released.
    /// - Load failures: retried with capped exponential backoff and jitter, `load_retries` times in a row;
    /// then
    ///   every waiter and every new request gets `spawn_failed` with the loader's error at once, until
    ///   `retry_backoff_max` has passed.
    /// - `min_workers` are started now and kept (restarted at maintenance ticks if they fail or stop).
    ///
    /// Fails with `invalid_argument` (bad key, `per_worker_mb == 0`, `min_workers > max_workers`, a key that
    /// serves another capability, is registered already or has workers spawned directly) or `shutting_down`.
    template <capability_descriptor Cap, class T, class F>
        requires model_loader<F, T> && std::copy_constructible<F> result<void>
        register_model(std::string_view registry_key, F model_loader, ModelOptions model) {
            if (auto valid = check_key(registry_key); !valid) {
                return valid;
            }
            if (stopping()) {
                return fail(errc::shutting_down, "cannot register '{}': the pool is shutting down",
                            registry_key);
            }
            const std::size_t max_workers =
                model.max_workers != 0 ? model.max_workers : options_.max_workers_per_model;
            if (model.per_worker_mb == 0) {
                return fail(errc::invalid_argument, "per_worker_mb for '{}' must be positive (got 0)",
                            registry_key);
            }
            if (model.min_workers > max_workers) {
                return fail(errc::invalid_argument, "min_workers ({}) of '{}' exceeds max_workers ({})",
                            model.min_workers, registry_key, max_workers);
            }
            if (auto valid = check_batching<Cap>(registry_key, model.batching); !valid) {
                return valid;
            }
            auto router = router_for<Cap>(registry_key, true);
            if (!router) {
                return unexpected<PoolError>(router.error());
            }
            auto spec = std::make_shared<detail::model_spec>();
            spec->per_worker_mb = model.per_worker_mb;
            spec->min_workers = model.min_workers;
            spec->max_workers = max_workers;
            spec->cold_start = std::min(options_.cold_start_workers, max_workers);
            spec->batching = model.batching;
            spec->spawn = [this, key = std::string(registry_key), loader = std::move(model_loader),
                           mb = model.per_worker_mb](AllocationGuard guard) {
                return spawn_worker_impl<Cap, T>(key, loader, mb, std::move(guard), true);
            };
            return (*router)->set_spec(std::move(spec));
        }

    /// Starts workers for registered model `registry_key` until `count` are alive or loading (never more than
    /// its `max_workers`); returns how many it started. For applications that want workers before the first
    /// request. Fails with `invalid_argument` (key not registered), `shutting_down`, or `memory_exhausted`
    /// when not even one worker could start.
    result<std::size_t> ensure_workers(std::string_view registry_key, std::size_t count);

    /// Runs one maintenance tick now, on the calling thread: idle eviction, minimum workers, delayed scale-up
    /// and due load retries of every registered key. The pool runs one every `maintenance_interval` by
    /// itself; this is for tests that step a `ManualClock` and for applications that want an immediate pass.
    void maintain();

    // ---- generic requests
    // -------------------------------------------------------------------------------------

    /// Sends unary operation `op` of capability `Cap` to a worker of `key`; the named operations call this.
    /// Completes with `void(result<Op::reply>)`: the reply, or `no_workers`, `overloaded`, `shutting_down`,
    /// `invalid_argument` (key serves another capability), `circuit_open`, `spawn_failed`,
    /// `memory_exhausted` (a registered key could not start a worker), `timeout`, `model_error` or
    /// `cancelled`.
    template <capability_descriptor Cap, unary_operation Op,
              asio::completion_token_for<void(result<typename Op::reply>)> CompletionToken>
    auto call(std::string_view key, Op op, CompletionToken&& token) {
        return call<Cap>(key, std::move(op), RequestOptions{}, std::forward<CompletionToken>(token));
    }

    /// As `call(key, op, token)`, with per-call `request` options (e.g. a deadline).
    template <capability_descriptor Cap, unary_operation Op,
              asio::completion_token_for<void(result<typename Op::reply>)> CompletionToken>
    auto call(std::string_view key, Op op, const RequestOptions& request, CompletionToken&& token) {
        using job_type = detail::unary_job<Cap, Op>;
        return asio::async_initiate<CompletionToken, void(result<typename Op::reply>)>(
            [this](auto handler, std::string key, Op op, RequestOptions request) {
                const auto now = clock_->now(); // read once: admission, enqueue time and deadline
                auto admitted = admit<Cap>(key, request, now);
                if (!admitted) {
                    detail::post_completion(
                        std::move(handler), fallback_->get(),
                        result<typename Op::reply>(unexpected<PoolError>(admitted.error())));
                    return;
                }
                auto& router = admitted->router;
                auto executor = detail::completion_executor(handler, fallback_->get());
                auto job = std::make_shared<job_type>(
                    std::move(op), typename job_type::handler_type(std::move(handler)), std::move(executor));
                job->stats = router->stats();
                job->permit = admitted->permit;
                job->enqueued_at = now;
                job->deadline = Clock::saturating_add(job->enqueued_at,
                                                      request.timeout.value_or(options_.request_timeout));
                set_queue_policy(*job, request);
                if (auto slot = job->cancellation_slot(); slot.is_connected()) {
                    slot.assign(
                        [weak_job = std::weak_ptr<job_type>(job),
                         weak_router = std::weak_ptr<detail::key_router>(router)](asio::cancellation_type) {
                            // Everything this handler needs goes into locals first: cancel() completes the
                            // request, whose completion clears the slot and so destroys this handler, maybe
                            // on another thread.
                            auto job = weak_job.lock();
                            auto router = weak_router.lock();
                            if (job && job->cancel() && router) {
                                router->remove(job.get());
                                router->interrupt(job); // if a worker serves it, stop the model call
                            }
                        });
                }
                if (auto submitted = router->submit(job); !submitted) {
                    job->fail(submitted.error());
                }
            },
            token, std::string(key), std::move(op), request);
    }

    /// Sends streaming operation `op` (whose sink writes into `state`) to a worker of `key`. Completes with
    /// `void(result<Stream<Op::chunk>>)` as soon as the request is queued or refused.
    template <capability_descriptor Cap, streaming_operation Op,
              asio::completion_token_for<void(result<Stream<typename Op::chunk>>)> CompletionToken>
    auto call_stream(std::string_view key, Op op,
                     std::shared_ptr<detail::stream_state<typename Op::chunk>> state,
                     CompletionToken&& token) {
        return call_stream<Cap>(key, std::move(op), std::move(state), RequestOptions{},
                                std::forward<CompletionToken>(token));
    }

    /// As `call_stream(key, op, state, token)`, with per-call `request` options (whole-stream deadline, idle
    /// timeout).
    template <capability_descriptor Cap, streaming_operation Op,
              asio::completion_token_for<void(result<Stream<typename Op::chunk>>)> CompletionToken>
    auto call_stream(std::string_view key, Op op,
                     std::shared_ptr<detail::stream_state<typename Op::chunk>> state,
                     const RequestOptions& request, CompletionToken&& token) {
        using chunk = typename Op::chunk;
        return asio::async_initiate<CompletionToken, void(result<Stream<chunk>>)>(
            [this](auto handler, std::string key, Op op, std::shared_ptr<detail::stream_state<chunk>> state,
                   RequestOptions request) {
                const auto now = clock_->now(); // read once: admission, enqueue time and deadlines
                auto admitted = admit<Cap>(key, request, now);
                if (!admitted) {
                    detail::post_completion(std::move(handler), fallback_->get(),
                                            result<Stream<chunk>>(unexpected<PoolError>(admitted.error())));
                    return;
                }
                auto& router = admitted->router;
                const auto whole =
                    Clock::saturating_add(now, request.timeout.value_or(options_.stream_timeout));
                auto job = std::make_shared<detail::stream_job<Cap, Op>>(
                    std::move(op), state, whole, request.idle_timeout.value_or(options_.stream_idle_timeout));
                job->stats = router->stats();
                job->permit = admitted->permit;
                job->enqueued_at = now;
                job->deadline = std::min(whole, Clock::saturating_add(now, options_.request_timeout));
                set_queue_policy(*job, request);
                if (auto submitted = router->submit(job); !submitted) {
                    job->fail(submitted.error());
                    detail::post_completion(std::move(handler), fallback_->get(),
                                            result<Stream<chunk>>(unexpected<PoolError>(submitted.error())));
                    return;
                }
                detail::post_completion(std::move(handler), fallback_->get(),
                                        result<Stream<chunk>>(Stream<chunk>(std::move(state))));
            },
            token, std::string(key), std::move(op), std::move(state), request);
    }

    /// A scope whose operations use `request` (e.g. `pool.with({.timeout = 2s}).embed("bert", "hi")`). It
    /// refers to this pool and must not outlive it.
    [[nodiscard]] RequestScope with(RequestOptions request) noexcept;

    // ---- observing
    // --------------------------------------------------------------------------------------------

    /// The pool's counters.
    [[nodiscard]] MetricsSnapshot metrics() const { return core_->metrics->snapshot(); }

    /// Counters, per-key gauges and latency histograms in the Prometheus text exposition format (see
    /// exposition.hpp for the metric names), e.g. for an HTTP `/metrics` endpoint.
    [[nodiscard]] std::string prometheus() const;

    /// Workers per state, queue depth and memory of every key, sorted by key.
    [[nodiscard]] std::vector<KeySnapshot> snapshot() const;

    /// Workers per state, queue depth and memory of `key`; nullopt for a key never used.
    [[nodiscard]] std::optional<KeySnapshot> snapshot(std::string_view key) const;

    /// The memory governor that spawn guards must come from.
    [[nodiscard]] MemoryGovernor& governor() const noexcept { return *governor_; }

    /// The executor of the pool's io_context (loaders, coroutine model calls and completions run here).
    [[nodiscard]] executor_type get_executor() const noexcept { return io_->get_executor(); }

    /// The executor for blocking work (blocking model calls; `offload`).
    [[nodiscard]] asio::thread_pool::executor_type blocking_executor() noexcept;

    /// The pool's logger.
    [[nodiscard]] spdlog::logger& logger() const noexcept { return *core_->logger; }

    /// The clock every delay reads.
    [[nodiscard]] Clock& clock() const noexcept { return *clock_; }

    /// The validated options the pool runs with (defaults filled in).
    [[nodiscard]] const PoolOptions& options() const noexcept { return options_; }

    /// True once `stop()` began.
    [[nodiscard]] bool stopping() const noexcept { return stopping_.load(std::memory_order_acquire); }

    // ---- stopping
    // ---------------------------------------------------------------------------------------------

    /// Stops the pool with `options().shutdown_timeout` as the grace period:
    /// `stop(options().shutdown_timeout)`.
    void stop() { stop(options_.shutdown_timeout); }

    /// Stops the pool, in order:
    /// 1. new requests, spawns and registrations get `shutting_down`; queued and running requests go on being
    ///    served; idle workers stop once their key's queue is empty;
    /// 2. after at most `grace`, requests still queued or being served end with `shutting_down` and the
    ///    remaining workers are cancelled (their pending asynchronous operations, a slow loader's included,
    ///    are aborted);
    /// 3. maintenance ends; the io_context threads and the blocking executor are stopped and joined.
    /// Every worker that honours cancellation has then ended and released its memory (the governor is back to
    /// 0 MB); a worker whose model ignores cancellation is destroyed with the pool. Operations started after
    /// `stop()` complete with `shutting_down` on the system executor.
    ///
    /// Idempotent and safe from any thread. A later call with a shorter `grace` shortens a stop in progress
    /// (`stop(0ms)` after `stop()`: end everything now), as a second Ctrl+C does. Called from one of the
    /// pool's own threads (inside a pool coroutine) it returns at once and a thread of the pool's own runs
    /// steps 1 and 2 (`wait_stopped()` from another thread waits for them); the io threads keep running the
    /// remaining handlers (the calling coroutine's included) until a `stop()` from another thread or the
    /// destructor does step 3, since a thread cannot join itself. The grace period is measured in real time
    /// (`std::chrono::steady_clock`), not on the injected clock. A blocking model call that never returns
    /// makes step 3 wait for it: blocking calls cannot be interrupted.
    void stop(std::chrono::milliseconds grace);

    /// Blocks until the pool has stopped serving (after `stop()`, possibly called elsewhere): every request
    /// ended, every worker that honours cancellation ended and released its memory. Must not be called on a
    /// pool thread (it would wait for itself): there it returns at once.
    void wait_stopped();

private:
    friend class basic_operations<Pool>;
    friend class RequestScope;
    struct private_tag {};

    // `reserved`: the worker fills a slot its router reserved (registered models).
    template <capability_descriptor Cap, class T, class F>
    result<WorkerId> spawn_worker_impl(std::string_view registry_key, F model_loader,
                                       std::size_t per_worker_mb, AllocationGuard allocation_guard,
                                       bool reserved) {
        if (auto valid = check_spawn(registry_key, per_worker_mb, allocation_guard); !valid) {
            return unexpected<PoolError>(valid.error());
        }
        auto router = router_for<Cap>(registry_key, true);
        if (!router) {
            return unexpected<PoolError>(router.error());
        }
        const WorkerId id = next_worker_id_.fetch_add(1, std::memory_order_relaxed);
        auto stop_signal = std::make_shared<asio::cancellation_signal>();
        // With several io threads a worker runs on its own strand, so that interrupting its model call
        // (emitting its signal on its executor) never races with the worker itself.
        const asio::any_io_executor executor =
            options_.io_threads > 1 ? asio::any_io_executor(asio::make_strand(io_->get_executor()))
                                    : asio::any_io_executor(io_->get_executor());
        if (auto added = (*router)->add_worker(id, per_worker_mb, reserved, stop_signal, executor); !added) {
            return unexpected<PoolError>(added.error());
        }
        core_->metrics->worker_spawned();
        core_->event(WorkerEventKind::spawned, registry_key, id, per_worker_mb);
        auto ticket = std::make_unique<detail::gate_ticket>(core_, id, stop_signal);
        asio::co_spawn(executor,
                       detail::run_worker<Cap, T>(core_, *router, id, std::move(model_loader),
                                                  std::move(allocation_guard), std::move(ticket)),
                       asio::bind_cancellation_slot(stop_signal->slot(), asio::detached));
        return id;
    }

    result<std::shared_ptr<detail::key_router>> find_router(std::string_view key) const;

    // Evicts idle workers of registered keys other than `except`, least recently used first, if together they
    // free `needed_mb`; returns what they will release (0, and no eviction, when they cannot free enough).
    std::size_t evict_for_memory(std::string_view except, std::size_t needed_mb);

    // Runs `maintain()` every maintenance_interval on the pool's clock until the pool stops.
    asio::awaitable<void> maintenance_loop();

    static PoolOptions checked(PoolOptions options);

    Pool(PoolOptions options, private_tag);

    void finish_stop();
    void drain_for_pool_thread_stop();

    void begin_stop();

    std::vector<std::shared_ptr<detail::key_router>> all_routers() const;

    void fail_remaining_requests();

    std::chrono::milliseconds current_grace() const;

    // Waits until every worker ended or the grace period (which a later stop() may shorten) is over.
    bool wait_drained();

    std::size_t live_workers() const;

    void run_io_thread();

    bool on_pool_thread() const noexcept { return detail::running_pool == this; }

    static std::shared_ptr<spdlog::logger> default_logger();

    result<void> check_key(std::string_view key) const;

    result<void> check_spawn(std::string_view key, std::size_t per_worker_mb,
                             const AllocationGuard& guard) const;

    /// The router of `key` for capability `Cap`, created on first spawn.
    template <class Cap>
    result<std::shared_ptr<detail::key_router>> router_for(std::string_view key, bool create) {
        return router_for(key, std::type_index(typeid(Cap)), Cap::name, create);
    }

    // The router of `key` for the capability `capability` named `capability_name` (a capability's static
    // name), created on first spawn when `create`. Not a template, so that it is compiled once.
    result<std::shared_ptr<detail::key_router>> router_for(std::string_view key, std::type_index capability,
                                                           std::string_view capability_name, bool create);

    struct admission {
        std::shared_ptr<detail::key_router> router;
        CircuitBreaker::Permit permit;
    };

    // Counts the request and finds its key's router, checks the per-call options and asks the key's circuit
    // breaker; a refusal is counted as the request's outcome.
    template <class Cap>
    result<admission> admit(std::string_view key, const RequestOptions& request, Clock::time_point now) {
        core_->metrics->request();
        auto admitted = [&]() -> result<admission> {
            if (request.timeout && request.timeout->count() <= 0) {
                return fail(errc::invalid_argument,
                            "timeout for a request to '{}' must be positive (got {} ms)", key,
                            request.timeout->count());
            }
            if (request.queue_timeout && request.queue_timeout->count() <= 0) {
                return fail(errc::invalid_argument,
                            "queue_timeout for a request to '{}' must be positive (got {} ms)", key,
                            request.queue_timeout->count());
            }
            if (static_cast<std::size_t>(request.priority) >= priority_levels) {
                return fail(errc::invalid_argument,
                            "priority {} for a request to '{}' is not a Priority level",
                            static_cast<int>(request.priority), key);
            }
            if (request.idle_timeout && request.idle_timeout->count() <= 0) {
                return fail(errc::invalid_argument,
                            "idle_timeout for a request to '{}' must be positive (got {} ms)", key,
                            request.idle_timeout->count());
            }
            auto router = router_for<Cap>(key, false);
            if (!router) {
                return unexpected<PoolError>(router.error());
            }
            auto permit = (*router)->admit(now);
            if (!permit) {
                return unexpected<PoolError>(permit.error());
            }
            return admission{std::move(*router), *permit};
        }();
        if (!admitted) {
            core_->metrics->outcome(false, admitted.error().code());
        }
        return admitted;
    }

    // A request's level and its queue deadline (the queue timeout, never after its deadline).
    void set_queue_policy(detail::job_base& job, const RequestOptions& request) const {
        job.priority = request.priority;
        const auto queue_timeout = request.queue_timeout.value_or(options_.queue_timeout);
        if (queue_timeout.count() > 0) {
            job.queue_deadline =
                std::min(job.deadline, Clock::saturating_add(job.enqueued_at, queue_timeout));
        }
    }

    // Batching is for capabilities with a batch operation, with sizes that fit the queue.
    template <class Cap>
    result<void> check_batching(std::string_view key, const BatchingOptions& batching) const {
        if (batching.max_batch_size == 0) {
            return fail(errc::invalid_argument, "batching.max_batch_size of '{}' must be at least 1 (got 0)",
                        key);
        }
        if (batching.max_queue_delay.count() < 0 || batching.max_queue_delay > std::chrono::minutes(1)) {
            return fail(errc::invalid_argument,
                        "batching.max_queue_delay of '{}' must be between 0 and 60 s (got {} us)", key,
                        batching.max_queue_delay.count());
        }
        constexpr bool batches = std::is_same_v<Cap, text_embedding> || std::is_same_v<Cap, image_embedding>;
        if (!batches && (batching.max_batch_size > 1 || batching.max_queue_delay.count() > 0)) {
            return fail(
                errc::invalid_argument,
                "batching for '{}': {} has no batch operation (text_embedding and image_embedding do)", key,
                Cap::name);
        }
        if (batching.max_batch_size > options_.queue_capacity) {
            return fail(errc::invalid_argument,
                        "batching.max_batch_size of '{}' ({}) exceeds the queue capacity ({})", key,
                        batching.max_batch_size, options_.queue_capacity);
        }
        return {};
    }

    template <class Chunk> std::shared_ptr<detail::stream_state<Chunk>> new_stream() {
        auto state = detail::make_stream_state<Chunk>(
            std::shared_ptr<const detail::fallback_executor>(fallback_), options_.stream_capacity);
        state->track_progress(clock_);
        return state;
    }

    PoolOptions options_;
    std::shared_ptr<Clock> clock_;
    std::shared_ptr<MemoryGovernor> governor_;
    std::unique_ptr<asio::io_context> io_;
    std::shared_ptr<detail::fallback_executor> fallback_;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    std::size_t blocking_threads_;
    asio::thread_pool blocking_;
    std::shared_ptr<detail::pool_core> core_;
    asio::strand<asio::io_context::executor_type> maintenance_strand_;
    asio::cancellation_signal maintenance_wake_; // emitted on maintenance_strand_ only
    std::vector<std::thread> threads_;

    mutable std::mutex registry_mutex_;
    std::unordered_map<std::string, std::shared_ptr<detail::key_router>, detail::key_hash, std::equal_to<>>
        routers_;
    std::atomic<WorkerId> next_worker_id_{1};
    std::atomic<bool> stopping_{false};
    std::mutex join_mutex_;
    std::condition_variable stopped_cv_; // joined_ became true
    bool joined_ = false;
    bool drained_ = false; // steps 1 and 2 of a stop() called on a pool thread are done (join_mutex_)
    std::chrono::steady_clock::time_point drain_until_ =
        std::chrono::steady_clock::time_point::max(); // core mutex
    std::chrono::milliseconds grace_{0};              // the grace period in force (core mutex)
    std::once_flag stopper_once_;
    std::thread stopper_; // finishes a stop() that began on a pool thread
};

/// Sends requests to a `Pool` with per-call options: what `Pool::with` returns. Offers every named operation
/// of the pool (`embed`, `prompt`, ...). A cheap value (a pointer and the options); must not outlive the
/// pool.
class RequestScope : public basic_operations<RequestScope> {
public:
    /// A scope sending to `pool` with `request`.
    RequestScope(Pool& pool, RequestOptions request) noexcept : pool_(&pool), request_(request) {}

    /// `Pool::call` with this scope's options.
    template <capability_descriptor Cap, unary_operation Op,
              asio::completion_token_for<void(result<typename Op::reply>)> CompletionToken>
    auto call(std::string_view key, Op op, CompletionToken&& token) {
        return pool_->call<Cap>(key, std::move(op), request_, std::forward<CompletionToken>(token));
    }

    /// `Pool::call_stream` with this scope's options.
    template <capability_descriptor Cap, streaming_operation Op,
              asio::completion_token_for<void(result<Stream<typename Op::chunk>>)> CompletionToken>
    auto call_stream(std::string_view key, Op op,
                     std::shared_ptr<detail::stream_state<typename Op::chunk>> state,
                     CompletionToken&& token) {
        return pool_->call_stream<Cap>(key, std::move(op), std::move(state), request_,
                                       std::forward<CompletionToken>(token));
    }

    /// The options this scope sends with.
    [[nodiscard]] const RequestOptions& options() const noexcept { return request_; }

private:
    friend class basic_operations<RequestScope>;

    template <class Chunk> std::shared_ptr<detail::stream_state<Chunk>> new_stream() {
        return pool_->new_stream<Chunk>();
    }

    Pool* pool_;
    RequestOptions request_;
};

inline RequestScope Pool::with(RequestOptions request) noexcept {
    return RequestScope(*this, request);
}

} // namespace modelpool

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/impl/pool.ipp"
#endif
