// modelpool/signals.hpp
//
// Ctrl+C handling for programs that serve from a pool: the first SIGINT or SIGTERM begins a graceful stop
// (new requests are refused, queued and running ones get `shutdown_timeout` to finish), a second one ends
// everything at once (`stop(0ms)`). The Rust pool this library replaces had a shutdown function that nothing
// called; Ctrl+C simply exited the process, dropping every request in flight.
//
//     modelpool::Pool pool(options);
//     modelpool::StopOnSignals on_signals(pool);   // after the pool: destroyed before it
//     ...                                           // serve
//     pool.wait_stopped();                          // main thread: returns once a signal has stopped the
//     pool
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/pool.hpp"

#include <boost/asio/signal_set.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <initializer_list>
#include <memory>

namespace modelpool {

/// See the file comment.
///
/// @par Lifetime
/// Must be destroyed before its pool (declare it after the pool). Destroying it stops listening; the
/// signals' previous handling is restored.
///
/// @par Thread Safety
/// Construct and destroy on one thread; `signals_received()` may be called from any thread.
class StopOnSignals {
public:
    /// Listens for `signals` (default SIGINT and SIGTERM) on `pool`'s io_context. Throws `boost::system::
    /// system_error` if a signal cannot be registered.
    explicit StopOnSignals(Pool& pool, std::initializer_list<int> signals = {SIGINT, SIGTERM})
        : state_(std::make_shared<state>(pool)) {
        for (int signal : signals) {
            state_->set.add(signal);
        }
        arm(state_);
    }

    StopOnSignals(const StopOnSignals&) = delete;
    StopOnSignals& operator=(const StopOnSignals&) = delete;

    /// Stops listening.
    ~StopOnSignals() {
        boost::system::error_code ignored;
        state_->set.cancel(ignored);
        state_->set.clear(ignored);
    }

    /// How many of the signals have arrived so far.
    [[nodiscard]] std::size_t signals_received() const noexcept {
        return state_->received.load(std::memory_order_acquire);
    }

private:
    struct state {
        explicit state(Pool& p) : pool(&p), set(p.get_executor()) {}
        Pool* pool;
        asio::signal_set set;
        std::atomic<std::size_t> received{0};
    };

    // Waits for the next signal. The handler owns the state, so a handler that runs after this object is gone
    // (completing with operation_aborted) touches nothing freed.
    static void arm(const std::shared_ptr<state>& s) {
        s->set.async_wait([s](const boost::system::error_code& ec, int signal) {
            if (ec) {
                return; // cancelled: the listener went away
            }
            const auto count = s->received.fetch_add(1, std::memory_order_acq_rel) + 1;
            auto& log = s->pool->logger();
            if (count == 1) {
                log.warn("signal {}: stopping gracefully (up to {} ms); send it again to stop at once",
                         signal, s->pool->options().shutdown_timeout.count());
                arm(s);
                s->pool->stop(); // on a pool thread: returns at once, a thread of the pool's finishes it
            } else {
                log.warn("signal {} again: stopping now", signal);
                s->pool->stop(std::chrono::milliseconds{0});
            }
        });
    }

    std::shared_ptr<state> state_;
};

} // namespace modelpool
