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
#include "modelpool/detail/job.hpp"
#include "modelpool/detail/key_router.hpp"
#include "modelpool/detail/worker.hpp"
#include "modelpool/error.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/options.hpp"
#include "modelpool/stream.hpp"

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
class Pool {
public:
    /// The executor of the pool's io_context.
    using executor_type = asio::io_context::executor_type;

    /// Starts a pool. Throws `std::system_error` (code in `pool_category()`) when `options` are invalid; use
    /// `Pool::create` to get the error as a value instead.
    explicit Pool(PoolOptions options = {}) : Pool(checked(std::move(options)), private_tag{}) {}

    /// Starts a pool, or reports invalid options as a `PoolError` (invalid_argument naming the field).
    static result<std::unique_ptr<Pool>> create(PoolOptions options) {
        if (auto valid = options.validate(); !valid) {
            return unexpected<PoolError>(valid.error());
        }
        return std::make_unique<Pool>(std::move(options));
    }

    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    /// Stops the pool (see `stop()`).
    ~Pool() { stop(); }

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
    /// governor, a key already serving another capability; `shutting_down` after `stop()`). On error the
    /// guard is released before returning.
    ///
    /// The worker then co_awaits `model_loader()` on the pool's io_context. On success it registers with
    /// `registry_key` and serves; on failure (an error or an exception) it never registers, releases
    /// `allocation_guard` exactly once, logs one error line and, if no other worker of the key is alive,
    /// fails every waiting request with `spawn_failed` carrying the loader's message.
    template <capability_descriptor Cap, class T, class F>
        requires model_loader<F, T> result<WorkerId> spawn_worker(std::string_view registry_key,
                                                                  F model_loader, std::size_t per_worker_mb,
                                                                  AllocationGuard allocation_guard) {
            if (auto valid = check_spawn(registry_key, per_worker_mb, allocation_guard); !valid) {
                return unexpected<PoolError>(valid.error());
            }
            auto router = router_for<Cap>(registry_key, true);
            if (!router) {
                return unexpected<PoolError>(router.error());
            }
            const WorkerId id = next_worker_id_.fetch_add(1, std::memory_order_relaxed);
            if (auto added = (*router)->add_worker(id, per_worker_mb); !added) {
                return unexpected<PoolError>(added.error());
            }
            core_->metrics->worker_spawned();
            auto stop_signal = std::make_shared<asio::cancellation_signal>();
            auto ticket = std::make_unique<detail::gate_ticket>(core_, id, stop_signal);
            asio::co_spawn(io_->get_executor(),
                           detail::run_worker<Cap, T>(core_, *router, id, std::move(model_loader),
                                                      std::move(allocation_guard), std::move(ticket)),
                           asio::bind_cancellation_slot(stop_signal->slot(), asio::detached));
            return id;
        }

    // ---- requests: text_embedding
    // ---------------------------------------------------------------------------

    /// Embeds `text` with a worker of `key`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed(std::string_view key, std::string text, CompletionToken&& token = {}) {
        return call<text_embedding>(key, text_embedding::embed_op{std::move(text), std::nullopt},
                                    std::forward<CompletionToken>(token));
    }

    /// Embeds `text` for `task` (a model-specific instruction). Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed(std::string_view key, std::string text, std::optional<std::string> task,
               CompletionToken&& token = {}) {
        return call<text_embedding>(key, text_embedding::embed_op{std::move(text), std::move(task)},
                                    std::forward<CompletionToken>(token));
    }

    /// Embeds each of `texts`, in order. Completes with `void(result<std::vector<Embedding>>)`.
    template <asio::completion_token_for<void(result<std::vector<Embedding>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto batch_embed(std::string_view key, std::vector<std::string> texts,
                     std::optional<std::string> task = {}, CompletionToken&& token = {}) {
        return call<text_embedding>(key, text_embedding::batch_embed_op{std::move(texts), std::move(task)},
                                    std::forward<CompletionToken>(token));
    }

    // ---- requests: image_embedding
    // --------------------------------------------------------------------------

    /// Embeds the image file at `path`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image(std::string_view key, std::string path, CompletionToken&& token = {}) {
        return call<image_embedding>(key, image_embedding::embed_image_op{std::move(path)},
                                     std::forward<CompletionToken>(token));
    }

    /// Embeds the image at `url`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image_url(std::string_view key, std::string url, CompletionToken&& token = {}) {
        return call<image_embedding>(key, image_embedding::embed_image_url_op{std::move(url)},
                                     std::forward<CompletionToken>(token));
    }

    /// Embeds a base64-encoded image. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image_base64(std::string_view key, std::string data, CompletionToken&& token = {}) {
        return call<image_embedding>(key, image_embedding::embed_image_base64_op{std::move(data)},
                                     std::forward<CompletionToken>(token));
    }

    /// Embeds each image file of `paths`, in order. Completes with `void(result<std::vector<Embedding>>)`.
    template <asio::completion_token_for<void(result<std::vector<Embedding>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto batch_embed_images(std::string_view key, std::vector<std::string> paths,
                            CompletionToken&& token = {}) {
        return call<image_embedding>(key, image_embedding::batch_embed_images_op{std::move(paths)},
                                     std::forward<CompletionToken>(token));
    }

    // ---- requests: streams
    // ------------------------------------------------------------------------------------

    /// Generates text for `prompt`. Completes, once the request is queued, with
    /// `void(result<Stream<CompletionChunk>>)`; later failures end the stream with an error.
    template <asio::completion_token_for<void(result<Stream<CompletionChunk>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto prompt(std::string_view key, std::string prompt, GenerationParams params = {},
                CompletionToken&& token = {}) {
        auto state = new_stream<CompletionChunk>();
        text_to_text::prompt_op op{std::move(prompt), std::move(params), ChunkSink<CompletionChunk>(state)};
        return call_stream<text_to_text>(key, std::move(op), std::move(state),
                                         std::forward<CompletionToken>(token));
    }

    /// Describes the image file at `path` as asked by `query`. Completes with
    /// `void(result<Stream<TextChunk>>)`.
    template <
        asio::completion_token_for<void(result<Stream<TextChunk>>)> CompletionToken = asio::use_awaitable_t<>>
    auto describe_image(std::string_view key, std::string path, std::string query,
                        CompletionToken&& token = {}) {
        auto state = new_stream<TextChunk>();
        vision::describe_image_op op{std::move(path), std::move(query), ChunkSink<TextChunk>(state)};
        return call_stream<vision>(key, std::move(op), std::move(state),
                                   std::forward<CompletionToken>(token));
    }

    /// Describes the image at `url` as asked by `query`. Completes with `void(result<Stream<TextChunk>>)`.
    template <
        asio::completion_token_for<void(result<Stream<TextChunk>>)> CompletionToken = asio::use_awaitable_t<>>
    auto describe_url(std::string_view key, std::string url, std::string query,
                      CompletionToken&& token = {}) {
        auto state = new_stream<TextChunk>();
        vision::describe_url_op op{std::move(url), std::move(query), ChunkSink<TextChunk>(state)};
        return call_stream<vision>(key, std::move(op), std::move(state),
                                   std::forward<CompletionToken>(token));
    }

    /// Generates an image for `prompt`: progress chunks, then the image. Completes with
    /// `void(result<Stream<ImageChunk>>)`.
    template <asio::completion_token_for<void(result<Stream<ImageChunk>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto generate_image(std::string_view key, std::string prompt, ImageConfig config = {},
                        CompletionToken&& token = {}) {
        auto state = new_stream<ImageChunk>();
        text_to_image::generate_image_op op{std::move(prompt), config, ChunkSink<ImageChunk>(state)};
        return call_stream<text_to_image>(key, std::move(op), std::move(state),
                                          std::forward<CompletionToken>(token));
    }

    // ---- generic requests
    // -------------------------------------------------------------------------------------

    /// Sends unary operation `op` of capability `Cap` to a worker of `key`; the named operations call this.
    /// Completes with `void(result<Op::reply>)`: the reply, or `no_workers`, `overloaded`, `shutting_down`,
    /// `invalid_argument` (key serves another capability), `spawn_failed`, `model_error` or `cancelled`.
    template <capability_descriptor Cap, unary_operation Op,
              asio::completion_token_for<void(result<typename Op::reply>)> CompletionToken>
    auto call(std::string_view key, Op op, CompletionToken&& token) {
        using job_type = detail::unary_job<Cap, Op>;
        return asio::async_initiate<CompletionToken, void(result<typename Op::reply>)>(
            [this](auto handler, std::string key, Op op) {
                core_->metrics->request();
                auto router = router_for<Cap>(key, false);
                if (!router) {
                    core_->metrics->outcome(false, router.error().code());
                    detail::post_completion(
                        std::move(handler), fallback_->get(),
                        result<typename Op::reply>(unexpected<PoolError>(router.error())));
                    return;
                }
                auto executor = detail::completion_executor(handler, fallback_->get());
                auto job = std::make_shared<job_type>(
                    std::move(op), typename job_type::handler_type(std::move(handler)), std::move(executor));
                job->metrics = core_->metrics;
                stamp(*job);
                if (auto slot = job->cancellation_slot(); slot.is_connected()) {
                    slot.assign(
                        [weak_job = std::weak_ptr<job_type>(job),
                         weak_router = std::weak_ptr<detail::key_router>(*router)](asio::cancellation_type) {
                            // Everything this handler needs goes into locals first: cancel() completes the
                            // request, whose completion clears the slot and so destroys this handler, maybe
                            // on another thread.
                            auto job = weak_job.lock();
                            auto router = weak_router.lock();
                            if (job && job->cancel() && router) {
                                router->remove(job.get());
                            }
                        });
                }
                if (auto submitted = (*router)->submit(job); !submitted) {
                    job->fail(submitted.error());
                }
            },
            token, std::string(key), std::move(op));
    }

    /// Sends streaming operation `op` (whose sink writes into `state`) to a worker of `key`. Completes with
    /// `void(result<Stream<Op::chunk>>)` as soon as the request is queued or refused.
    template <capability_descriptor Cap, streaming_operation Op,
              asio::completion_token_for<void(result<Stream<typename Op::chunk>>)> CompletionToken>
    auto call_stream(std::string_view key, Op op,
                     std::shared_ptr<detail::stream_state<typename Op::chunk>> state,
                     CompletionToken&& token) {
        using chunk = typename Op::chunk;
        return asio::async_initiate<CompletionToken, void(result<Stream<chunk>>)>(
            [this](auto handler, std::string key, Op op, std::shared_ptr<detail::stream_state<chunk>> state) {
                core_->metrics->request();
                auto router = router_for<Cap>(key, false);
                if (!router) {
                    core_->metrics->outcome(false, router.error().code());
                    detail::post_completion(std::move(handler), fallback_->get(),
                                            result<Stream<chunk>>(unexpected<PoolError>(router.error())));
                    return;
                }
                auto job = std::make_shared<detail::stream_job<Cap, Op>>(std::move(op), state);
                job->metrics = core_->metrics;
                stamp(*job);
                if (auto submitted = (*router)->submit(job); !submitted) {
                    job->fail(submitted.error());
                    detail::post_completion(std::move(handler), fallback_->get(),
                                            result<Stream<chunk>>(unexpected<PoolError>(submitted.error())));
                    return;
                }
                detail::post_completion(std::move(handler), fallback_->get(),
                                        result<Stream<chunk>>(Stream<chunk>(std::move(state))));
            },
            token, std::string(key), std::move(op), std::move(state));
    }

    // ---- observing
    // --------------------------------------------------------------------------------------------

    /// The pool's counters.
    [[nodiscard]] MetricsSnapshot metrics() const { return core_->metrics->snapshot(); }

    /// Workers per state, queue depth and memory of every key, sorted by key.
    [[nodiscard]] std::vector<KeySnapshot> snapshot() const {
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

    /// Workers per state, queue depth and memory of `key`; nullopt for a key never used.
    [[nodiscard]] std::optional<KeySnapshot> snapshot(std::string_view key) const {
        std::lock_guard lock(registry_mutex_);
        auto it = routers_.find(key);
        if (it == routers_.end()) {
            return std::nullopt;
        }
        return it->second->snapshot();
    }

    /// The memory governor that spawn guards must come from.
    [[nodiscard]] MemoryGovernor& governor() const noexcept { return *governor_; }

    /// The executor of the pool's io_context (loaders, coroutine model calls and completions run here).
    [[nodiscard]] executor_type get_executor() const noexcept { return io_->get_executor(); }

    /// The executor for blocking work (blocking model calls; `offload`).
    [[nodiscard]] asio::thread_pool::executor_type blocking_executor() noexcept {
        return blocking_.get_executor();
    }

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

    /// Stops the pool, in order:
    /// 1. new requests and spawns get `shutting_down`; queued requests end with `shutting_down`; idle workers
    ///    stop at once and busy ones after their current request;
    /// 2. after at most `options().shutdown_timeout`, requests still being served end with `shutting_down`
    /// and
    ///    the remaining workers are cancelled (their pending asynchronous operations are aborted);
    /// 3. the io_context threads and the blocking executor are stopped and joined.
    /// Every worker that honours cancellation has then ended and released its memory; a worker whose model
    /// ignores cancellation is destroyed with the pool. Operations started after `stop()` complete with
    /// `shutting_down` on the system executor. Idempotent and safe from any thread.
    ///
    /// Called from one of the pool's own threads (inside a pool coroutine) it only begins the shutdown and
    /// returns, since a thread cannot join itself; a later `stop()` or the destructor finishes it. A blocking
    /// model call that never returns makes step 3 wait for it: blocking calls cannot be interrupted.
    void stop() {
        begin_stop();
        if (on_pool_thread()) {
            return;
        }
        std::lock_guard join_lock(join_mutex_);
        if (joined_) {
            return;
        }
        if (!wait_drained(options_.shutdown_timeout)) {
            core_->logger->warn("stop: {} worker(s) still busy after {} ms; ending their requests and "
                                "cancelling them",
                                live_workers(), options_.shutdown_timeout.count());
            fail_running_requests();
        }
        fallback_->stop();
        work_.reset();
        io_->stop();
        for (auto& thread : threads_) {
            thread.join();
        }
        // No io thread runs now: this thread finishes the io_context's work single-threaded, so emitting the
        // workers' cancellation signals cannot race with their coroutines.
        detail::running_pool = this;
        io_->restart();
        // Held until the io_context's work is done: co_spawn forwards a cancellation by posting, and the
        // forwarder uses memory inside the signal even if the worker finishes (and leaves the gate) first.
        const auto signals = core_->running_signals();
        for (const auto& signal : signals) {
            signal->emit(asio::cancellation_type::terminal);
        }
        io_->poll(); // allowed-blocking: on the stopping thread, after the io threads were joined
        blocking_.stop();
        blocking_.join();
        io_->restart();
        io_->poll(); // allowed-blocking: the same; completions the blocking threads posted while finishing
        detail::running_pool = nullptr;
        joined_ = true;
        if (auto stuck = live_workers(); stuck != 0) {
            core_->logger->warn("stop: {} worker(s) ignored cancellation; they are destroyed with the pool",
                                stuck);
        }
    }

private:
    struct private_tag {};

    static PoolOptions checked(PoolOptions options) {
        if (auto valid = options.validate(); !valid) {
            throw std::system_error(valid.error().error_code(), valid.error().message());
        }
        return options;
    }

    Pool(PoolOptions options, private_tag)
        : options_(std::move(options)),
          clock_(options_.clock ? options_.clock : std::make_shared<SteadyClock>()),
          governor_(MemoryGovernor::create(options_.memory_limit_mb != 0 ? options_.memory_limit_mb
                                                                         : default_memory_limit_mb())),
          io_(std::make_unique<asio::io_context>(static_cast<int>(options_.io_threads))),
          fallback_(std::make_shared<detail::fallback_executor>(io_->get_executor())),
          work_(asio::make_work_guard(*io_)),
          blocking_threads_(options_.blocking_threads != 0
                                ? options_.blocking_threads
                                : std::max<std::size_t>(1, std::thread::hardware_concurrency())),
          blocking_(blocking_threads_),
          core_(std::make_shared<detail::pool_core>(detail::call_env{blocking_.get_executor()})) {
        // options() reports what the pool runs with: fill in every default.
        options_.logger = options_.logger ? options_.logger : default_logger();
        options_.clock = clock_;
        options_.memory_limit_mb = governor_->limit_mb();
        options_.blocking_threads = blocking_threads_;
        core_->logger = options_.logger;
        core_->metrics = std::make_shared<detail::pool_metrics>();
        threads_.reserve(options_.io_threads);
        for (std::size_t i = 0; i < options_.io_threads; ++i) {
            threads_.emplace_back([this] { run_io_thread(); });
        }
    }

    void begin_stop() {
        if (stopping_.exchange(true, std::memory_order_acq_rel)) {
            return;
        }
        for (auto& router : all_routers()) {
            router->close("the pool is shutting down");
        }
        governor_->close(PoolError(errc::shutting_down, "the pool is shutting down"));
    }

    std::vector<std::shared_ptr<detail::key_router>> all_routers() const {
        std::lock_guard lock(registry_mutex_);
        std::vector<std::shared_ptr<detail::key_router>> routers;
        routers.reserve(routers_.size());
        for (const auto& [key, router] : routers_) {
            routers.push_back(router);
        }
        return routers;
    }

    void fail_running_requests() {
        PoolError error(errc::shutting_down,
                        fmt::format("the pool stopped before the request finished (shutdown_timeout {} ms)",
                                    options_.shutdown_timeout.count()));
        for (auto& router : all_routers()) {
            router->fail_running(error);
        }
    }

    bool wait_drained(std::chrono::milliseconds timeout) {
        std::unique_lock lock(core_->mutex);
        // allowed-blocking: stop() runs this only off the pool threads (see on_pool_thread()).
        return core_->drained.wait_for(lock, timeout, [&] { return core_->live_workers == 0; });
    }

    std::size_t live_workers() const {
        std::lock_guard lock(core_->mutex);
        return core_->live_workers;
    }

    void run_io_thread() {
        detail::running_pool = this;
        io_->run(); // allowed-blocking: the io thread's own event loop, not a nested one
        detail::running_pool = nullptr;
    }

    bool on_pool_thread() const noexcept { return detail::running_pool == this; }

    static std::shared_ptr<spdlog::logger> default_logger() {
        auto logger = std::make_shared<spdlog::logger>(
            "modelpool", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
        logger->set_level(spdlog::level::info);
        return logger;
    }

    result<void> check_key(std::string_view key) const {
        if (key.empty()) {
            return fail(errc::invalid_argument, "registry key must not be empty");
        }
        if (key.size() > options_.max_key_length) {
            return fail(errc::invalid_argument, "registry key '{}...' is {} bytes long; the limit is {}",
                        key.substr(0, 32), key.size(), options_.max_key_length);
        }
        return {};
    }

    result<void> check_spawn(std::string_view key, std::size_t per_worker_mb,
                             const AllocationGuard& guard) const {
        if (auto valid = check_key(key); !valid) {
            return valid;
        }
        if (stopping()) {
            return fail(errc::shutting_down, "cannot spawn a worker for '{}': the pool is shutting down",
                        key);
        }
        if (per_worker_mb == 0) {
            return fail(errc::invalid_argument, "per_worker_mb for '{}' must be positive (got 0)", key);
        }
        if (!guard) {
            return fail(errc::invalid_argument, "allocation guard for '{}' is empty (moved from or released)",
                        key);
        }
        if (guard.governor() != governor_.get()) {
            return fail(errc::invalid_argument,
                        "allocation guard for '{}' comes from another pool's governor", key);
        }
        if (guard.size_mb() != per_worker_mb) {
            return fail(errc::invalid_argument,
                        "allocation guard for '{}' holds {} MB but per_worker_mb is {}", key, guard.size_mb(),
                        per_worker_mb);
        }
        return {};
    }

    /// The router of `key` for capability `Cap`, created on first spawn.
    template <class Cap>
    result<std::shared_ptr<detail::key_router>> router_for(std::string_view key, bool create) {
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
                            Cap::name);
            }
            auto router = std::make_shared<detail::key_router>(std::string(key), std::type_index(typeid(Cap)),
                                                               Cap::name, options_.queue_capacity);
            router->start_sweeper(router, io_->get_executor(), clock_);
            it = routers_.emplace(std::string(key), std::move(router)).first;
        }
        if (it->second->capability() != std::type_index(typeid(Cap))) {
            return fail(errc::invalid_argument, "key '{}' serves {}, not {}", key,
                        it->second->capability_name(), Cap::name);
        }
        return it->second;
    }

    /// Sets a new request's enqueue time and deadline from the pool's clock.
    void stamp(detail::job_base& job) const {
        job.enqueued_at = clock_->now();
        job.deadline = Clock::saturating_add(job.enqueued_at, options_.request_timeout);
    }

    template <class Chunk> std::shared_ptr<detail::stream_state<Chunk>> new_stream() {
        return detail::make_stream_state<Chunk>(std::shared_ptr<const detail::fallback_executor>(fallback_),
                                                options_.stream_capacity);
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
    std::vector<std::thread> threads_;

    mutable std::mutex registry_mutex_;
    std::unordered_map<std::string, std::shared_ptr<detail::key_router>, detail::key_hash, std::equal_to<>>
        routers_;
    std::atomic<WorkerId> next_worker_id_{1};
    std::atomic<bool> stopping_{false};
    std::mutex join_mutex_;
    bool joined_ = false;
};

} // namespace modelpool
