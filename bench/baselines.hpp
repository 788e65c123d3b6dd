// bench/baselines.hpp
//
// The designs modelpool is measured against, written as a competent engineer would write them (issue 5):
//
// - seed pattern (`seed_pool`): the design modelpool replaced. Spawn functions take SYNCHRONOUS loaders;
//   each loader bridges an async load by blocking its thread with a nested io_context run on the calling
//   thread (`block_on`, the C++ equivalent of Rust's `block_in_place` + `block_on`). The runtime is a
//   2-thread `asio::thread_pool`.
// - thread per worker (`thread_per_worker`): every worker its own std::thread with a std::mutex +
//   std::condition_variable request queue and a std::promise per reply (what the Rust pool first was).
// - floor (`channel_floor`): a bare Asio channel round trip between two coroutines, no pool logic.
//
// No modelpool code is used here beyond its vocabulary types (`result`, `Embedding`), so every baseline
// pays for exactly what it does.
#pragma once

#include <modelpool/modelpool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/channel.hpp>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace bench {

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::result;
using error_code = boost::system::error_code;

// ---- seed pattern --------------------------------------------------------------------------------------

/// Runs the awaitable made by `make` to completion on the calling thread, in a nested io_context: the
/// thread is blocked for the whole async operation (block_in_place + block_on).
template <class T> T block_on(const std::function<asio::awaitable<T>()>& make) {
    asio::io_context nested;
    std::optional<T> value;
    std::exception_ptr error;
    asio::co_spawn(nested, make(), [&](std::exception_ptr e, T v) {
        error = e;
        value.emplace(std::move(v));
    });
    nested.run();
    if (error) {
        std::rethrow_exception(error);
    }
    return std::move(*value);
}

/// The seed design: `spawn(loader)` takes a synchronous loader and runs it on the runtime (a thread pool);
/// the worker is ready once its loader returned. Only loading is modelled: that is where the seed design
/// differs from modelpool (its loaders park runtime threads).
template <class Model> class seed_pool {
public:
    using loader = std::function<result<Model>()>;

    explicit seed_pool(std::size_t threads = 2) : runtime_(threads) {}
    ~seed_pool() { runtime_.join(); }
    seed_pool(const seed_pool&) = delete;
    seed_pool& operator=(const seed_pool&) = delete;

    /// The runtime's executor (where the seed pool's own async work, e.g. a heartbeat, runs).
    asio::thread_pool::executor_type get_executor() { return runtime_.get_executor(); }

    /// Returns at once; the loader runs (and blocks) on a runtime thread.
    void spawn(loader load) {
        asio::post(runtime_, [this, load = std::move(load)] {
            auto model = load();
            std::lock_guard lock(mutex_);
            if (model) {
                models_.push_back(std::move(*model));
                ++ready_;
            } else {
                ++failed_;
            }
            changed_.notify_all();
        });
    }

    /// Blocks until `n` workers are ready (or failed).
    void wait_ready(std::size_t n) {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return ready_ + failed_ >= n; });
    }

    std::size_t ready() const {
        std::lock_guard lock(mutex_);
        return ready_;
    }

private:
    asio::thread_pool runtime_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<Model> models_;
    std::size_t ready_ = 0;
    std::size_t failed_ = 0;
};

// ---- thread per worker ---------------------------------------------------------------------------------

/// Every worker owns a std::thread and a mutex + condition_variable queue; each request carries a
/// std::promise for its reply. Requests are spread round-robin over the workers.
template <class Model> class thread_per_worker {
public:
    thread_per_worker() = default;
    thread_per_worker(const thread_per_worker&) = delete;
    thread_per_worker& operator=(const thread_per_worker&) = delete;
    ~thread_per_worker() { stop(); }

    /// Starts a worker thread serving `model`.
    void spawn(Model model) {
        auto w = std::make_unique<worker>(std::move(model));
        w->thread = std::thread([raw = w.get(), this] { run(*raw); });
        workers_.push_back(std::move(w));
    }

    /// Blocks until every spawned worker thread is waiting for requests.
    void wait_started() {
        std::unique_lock lock(started_mutex_);
        started_cv_.wait(lock, [&] { return started_ == workers_.size(); });
    }

    /// Sends `text` to the next worker; the future holds the reply.
    std::future<result<Embedding>> embed(std::string text) {
        auto& w = *workers_[next_.fetch_add(1, std::memory_order_relaxed) % workers_.size()];
        std::promise<result<Embedding>> reply;
        auto future = reply.get_future();
        {
            std::lock_guard lock(w.mutex);
            w.queue.push_back(request{std::move(text), std::move(reply)});
        }
        w.cv.notify_one();
        return future;
    }

    void stop() {
        for (auto& w : workers_) {
            {
                std::lock_guard lock(w->mutex);
                w->stopping = true;
            }
            w->cv.notify_one();
        }
        for (auto& w : workers_) {
            if (w->thread.joinable()) {
                w->thread.join();
            }
        }
        workers_.clear();
    }

private:
    struct request {
        std::string text;
        std::promise<result<Embedding>> reply;
    };
    struct worker {
        explicit worker(Model m) : model(std::move(m)) {}
        Model model;
        std::mutex mutex;
        std::condition_variable cv;
        std::deque<request> queue;
        bool stopping = false;
        std::thread thread;
    };

    void run(worker& w) {
        {
            std::lock_guard lock(started_mutex_);
            ++started_;
        }
        started_cv_.notify_all();
        for (;;) {
            std::unique_lock lock(w.mutex);
            w.cv.wait(lock, [&] { return w.stopping || !w.queue.empty(); });
            if (w.queue.empty()) {
                return; // stopping, and nothing left to answer
            }
            request r = std::move(w.queue.front());
            w.queue.pop_front();
            lock.unlock();
            r.reply.set_value(w.model.embed(r.text, std::nullopt));
        }
    }

    std::vector<std::unique_ptr<worker>> workers_;
    std::atomic<std::size_t> next_{0};
    std::mutex started_mutex_;
    std::condition_variable started_cv_;
    std::size_t started_ = 0;
};

// ---- floor: a bare channel round trip ------------------------------------------------------------------

/// One request/reply round trip over Asio channels between a client coroutine and a server coroutine.
struct channel_floor {
    using reply_channel = asio::experimental::channel<void(error_code, Embedding)>;
    struct request {
        std::string text;
        reply_channel* reply = nullptr;
    };
    using request_channel = asio::experimental::channel<void(error_code, request)>;

    /// A server: answers requests with an empty embedding until the channel is closed.
    static asio::awaitable<void> serve(request_channel& requests) {
        for (;;) {
            auto [ec, req] = co_await requests.async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec) {
                co_return;
            }
            Embedding reply;
            co_await req.reply->async_send(error_code{}, std::move(reply), asio::use_awaitable);
        }
    }
};

} // namespace bench
