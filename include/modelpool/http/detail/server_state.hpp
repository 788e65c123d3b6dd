// modelpool/http/detail/server_state.hpp
//
// What the server's coroutines share: the pool, the options, the metrics, the registry of open connections
// and the drain state. Held by `shared_ptr`, so connections still running after the `Server` object is gone
// stay valid (the pool, which they also use, must outlive them: see `Server`).
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/http/detail/connection.hpp"
#include "modelpool/http/detail/server_metrics.hpp"
#include "modelpool/http/options.hpp"
#include "modelpool/pool.hpp"

#include <spdlog/logger.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace modelpool::http::detail {

/// See the file comment.
struct server_state : std::enable_shared_from_this<server_state> {
    server_state(Pool& pool_, asio::any_io_executor executor_, ServerOptions options_)
        : pool(pool_), executor(std::move(executor_)), strand(asio::make_strand(executor)),
          options(std::move(options_)), logger(options.logger ? &*options.logger : &pool.logger()),
          acceptor(strand), id_seed(std::random_device{}()),
          created(std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count()) {}

    Pool& pool;                                 ///< The pool requests go to.
    asio::any_io_executor executor;             ///< Where connections run (each on a strand of it).
    asio::strand<asio::any_io_executor> strand; ///< The acceptor's and the drain's strand.
    ServerOptions options;                      ///< The options, checked by `listen()`.
    spdlog::logger* logger;                     ///< The options' logger, or the pool's.
    server_metrics metrics;                     ///< Requests by route and status, durations.
    tcp::acceptor acceptor;                     ///< Used on `strand` only.
    std::vector<asio::steady_timer*> waiters;   ///< Timers of the drains waiting (`strand` only).
    std::uint64_t id_seed;                      ///< Seeds request and completion ids.
    std::int64_t created;                       ///< Unix seconds at construction (`/v1/models`).
    std::atomic<std::uint64_t> id_counter{0};   ///< Makes ids unique.
    std::atomic<bool> draining{false};          ///< A drain began: not ready, connections close.
    std::atomic<bool> closed{false};            ///< The acceptor is closed: the drain's grace is over.
    std::optional<std::chrono::steady_clock::time_point> deadline; ///< The drain's end of grace (`strand`).

    std::mutex mutex; ///< Guards `connections` and `capabilities`.
    std::unordered_map<std::uint64_t, std::weak_ptr<connection>> connections;
    std::unordered_map<std::string, std::string> capabilities; ///< Cached: a key's capability never changes.

    /// A fresh 16-hex-digit id.
    std::string new_id() {
        std::uint64_t x = id_seed + 0x9E3779B97F4A7C15ULL * (id_counter.fetch_add(1) + 1);
        // splitmix64's finaliser: consecutive counters give unrelated-looking ids.
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
        x ^= x >> 31;
        return fmt::format("{:016x}", x);
    }

    /// The served model called `name`, or null.
    const ServedModel* find_model(std::string_view name) const {
        for (const auto& model : options.models) {
            if (model.name == name) {
                return &model;
            }
        }
        return nullptr;
    }

    /// The capability name of `key` ("text_embedding", ...), or nullopt while the pool does not know the key.
    std::optional<std::string> capability(const std::string& key) {
        {
            std::lock_guard lock(mutex);
            if (auto it = capabilities.find(key); it != capabilities.end()) {
                return it->second;
            }
        }
        auto snapshot = pool.snapshot(key);
        if (!snapshot) {
            return std::nullopt;
        }
        std::string name(snapshot->capability);
        std::lock_guard lock(mutex);
        capabilities.emplace(key, name);
        return name;
    }

    /// Ready: not draining, the pool not stopping, and every served registered model with `min_workers` > 0
    /// has a ready worker.
    bool ready() const {
        if (draining.load() || pool.stopping()) {
            return false;
        }
        for (const auto& model : options.models) {
            auto snapshot = pool.snapshot(model.key);
            if (snapshot && snapshot->registered && snapshot->min_workers > 0 && !snapshot->ready()) {
                return false;
            }
        }
        return true;
    }

    /// Wakes the waiting drains (they re-check their conditions). Safe from any thread.
    void notify() {
        asio::post(strand, [self = shared_from_this()] {
            for (auto* timer : self->waiters) {
                timer->cancel();
            }
        });
    }

    /// Lists a drain's timer in `waiters` for its lifetime. Use on `strand`.
    class waiter_registration {
    public:
        waiter_registration(server_state& state, asio::steady_timer& timer) : state_(state), timer_(&timer) {
            state_.waiters.push_back(timer_);
        }
        ~waiter_registration() { std::erase(state_.waiters, timer_); }
        waiter_registration(const waiter_registration&) = delete;
        waiter_registration& operator=(const waiter_registration&) = delete;

    private:
        server_state& state_;
        asio::steady_timer* timer_;
    };

    /// Open connections.
    std::size_t connection_count() {
        std::lock_guard lock(mutex);
        return connections.size();
    }

    /// Closes connections: idle ones only, or all. Each is closed on its own strand.
    void close_connections(bool idle_only) {
        std::vector<std::shared_ptr<connection>> open;
        {
            std::lock_guard lock(mutex);
            for (auto& [id, weak] : connections) {
                if (auto conn = weak.lock()) {
                    open.push_back(std::move(conn));
                }
            }
        }
        for (auto& conn : open) {
            auto executor = conn->stream().get_executor();
            asio::post(executor, [conn, idle_only] {
                if (!idle_only || conn->idle.load()) {
                    conn->close();
                }
            });
        }
    }
};

} // namespace modelpool::http::detail
