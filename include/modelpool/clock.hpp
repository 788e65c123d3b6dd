// modelpool/clock.hpp
//
// An injectable monotonic clock. Every delay in the pool goes through a `Clock`: request deadlines,
// cooldowns, retry backoff, the circuit breaker's open time. Production code uses `SteadyClock`
// (std::chrono::steady_clock and Asio timers). Tests use `ManualClock`, which they step with `advance()`
// instead of sleeping, so timing tests are exact and fast. Waits are ordinary Asio asynchronous operations:
// any completion token works, and per-operation cancellation (timeouts, `||` of awaitables) is honoured.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/config.hpp"

#include <boost/asio/append.hpp>  // not in modelpool/asio.hpp (yet)
#include <boost/asio/consign.hpp> // not in modelpool/asio.hpp (yet)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace modelpool {

/// The code a cancelled wait completes with, on both clocks: `asio::error::operation_aborted` as a
/// `std::error_code`. It also compares equal to `std::errc::operation_canceled` on POSIX systems.
inline std::error_code wait_aborted() noexcept {
    return boost::system::error_code(asio::error::operation_aborted);
}

/// A monotonic clock with asynchronous waits, injected into the pool so that tests can step time.
///
/// Implementations provide `now()` and `do_wait()`. Callers use `async_wait_until()` and `async_wait_for()`,
/// which accept any Asio completion token and complete with `void(std::error_code)`: success when the
/// deadline has been reached, `wait_aborted()` when the wait was cancelled through the cancellation slot
/// associated with the handler. Completions are never invoked inside the initiating call.
///
/// @par Lifetime
/// A clock must outlive every wait started on it (the pool owns its clock through `std::shared_ptr`).
///
/// @par Thread Safety
/// `now()` and starting waits are safe from any thread. As everywhere in Asio, emit a wait's cancellation
/// signal from the handler's executor, not concurrently with its completion.
class Clock {
public:
    /// The clock's duration type (that of std::chrono::steady_clock).
    using duration = std::chrono::steady_clock::duration;
    /// The clock's time point type (that of std::chrono::steady_clock, so values can be stored
    /// interchangeably).
    using time_point = std::chrono::steady_clock::time_point;
    /// The completion signature of waits.
    using wait_signature = void(std::error_code);
    /// A type-erased wait completion handler, as `do_wait()` receives it. It keeps the original handler's
    /// associated executor, allocator and cancellation slot.
    using wait_handler = asio::any_completion_handler<wait_signature>;

    Clock() = default;
    virtual ~Clock() = default;

    // A clock is shared by reference (pending waits point into it), never copied.
    Clock(const Clock&) = delete;
    Clock& operator=(const Clock&) = delete;

    /// The current time. Monotonic: never decreases.
    [[nodiscard]] virtual time_point now() const noexcept = 0;

    /// Waits until `now() >= deadline`. Completes with success then, or with `wait_aborted()` when cancelled.
    /// A deadline in the past completes at once (posted, not inline).
    ///
    /// `ex` runs the wait (and the completion, when the handler has no associated executor of its own).
    /// With a deferred token such as `asio::use_awaitable`, the wait starts when it is awaited.
    /// Throws only std::bad_alloc.
    template <class CompletionToken>
    auto async_wait_until(asio::any_io_executor ex, time_point deadline, CompletionToken&& token) {
        return asio::async_initiate<CompletionToken, wait_signature>(
            [this](auto handler, asio::any_io_executor executor, time_point when) {
                // Resolved here, where the handler's type is still known (see completion_executor).
                asio::any_io_executor target = detail::completion_executor(handler, executor);
                do_wait(std::move(target), when, wait_handler(std::move(handler)));
            },
            token, std::move(ex), deadline);
    }

    /// Waits for `d` from now: `async_wait_until(ex, now() + d, token)`. `now()` is read at this call, not
    /// when a deferred token starts the wait. The sum saturates: `duration::max()` waits until cancelled.
    template <class CompletionToken>
    auto async_wait_for(asio::any_io_executor ex, duration d, CompletionToken&& token) {
        return async_wait_until(std::move(ex), saturating_add(now(), d),
                                std::forward<CompletionToken>(token));
    }

    /// `t + d`, clamped to [time_point::min(), time_point::max()] instead of overflowing.
    [[nodiscard]] static constexpr time_point saturating_add(time_point t, duration d) noexcept {
        if (d > duration::zero() && t > time_point::max() - d) {
            return time_point::max();
        }
        if (d < duration::zero() && t < time_point::min() - d) {
            return time_point::min();
        }
        return t + d;
    }

protected:
    /// Starts a wait. Must complete `handler` exactly once: with success once `now() >= deadline`, or with
    /// `wait_aborted()` when `handler`'s associated cancellation slot is emitted. The completion must never
    /// run inside this call.
    ///
    /// `ex` is where the completion belongs: the original handler's associated executor, or the executor
    /// given to `async_wait_until` when the handler has none. Post the completion to `ex`, then
    /// `asio::dispatch` the handler (see `complete()`). `get_associated_executor(handler)` cannot serve here:
    /// on an `any_completion_handler` it yields an `any_completion_executor`, which Boost 1.81 cannot `post`
    /// to.
    virtual void do_wait(asio::any_io_executor ex, time_point deadline, wait_handler handler) = 0;

    /// Completes `handler` with `ec` without ever running it inline. The completion is posted to `ex`. There
    /// it clears the handler's cancellation slot (on the executor, where Asio's rules serialise it with
    /// emit()) and dispatches the handler to its own associated executor, which is normally `ex` itself, so
    /// it runs at once.
    static void complete(const asio::any_io_executor& ex, wait_handler handler, std::error_code ec);
};

/// The production clock: std::chrono::steady_clock, with waits on `asio::steady_timer`.
///
/// @par Thread Safety
/// Stateless: any number of threads may use one instance.
class SteadyClock final : public Clock {
public:
    /// std::chrono::steady_clock::now().
    [[nodiscard]] time_point now() const noexcept override { return std::chrono::steady_clock::now(); }

protected:
    /// One steady_timer per wait, owned by its own completion handler (`asio::consign`). The timer therefore
    /// lives exactly as long as the wait, and the clock holds no state. The handler's cancellation slot
    /// reaches the timer's own cancellation through `any_completion_handler`, which forwards it in
    /// Boost 1.81.
    ///
    /// The completion clears the handler's cancellation slot first: the timer leaves its cancellation handler
    /// there when it fires, and a later emit on the caller's signal would otherwise reach the freed timer.
    MODELPOOL_DECL void do_wait(asio::any_io_executor ex, time_point deadline, wait_handler handler) override;
};

namespace detail {

// A wait registered with a ManualClock. Only ever move-constructed: in Boost 1.81, move-assigning an
// any_completion_handler recurses until the stack overflows.
struct ManualWait {
    asio::any_io_executor executor; // tracks outstanding work, as a pending timer does
    Clock::wait_handler handler;
};

// The shared part of a ManualClock. Cancellation handlers hold a weak_ptr to it, so that an emit after the
// clock is gone, or after the wait completed, is harmless.
struct ManualClockState {
    std::mutex mutex;
    std::atomic<Clock::duration::rep> now; // written under the mutex; read lock-free by now()
    // Ordered by deadline, then by registration: due waits complete in deadline order, ties first-come.
    std::map<std::pair<Clock::time_point, std::uint64_t>, ManualWait> waits;
    std::uint64_t next_id = 0;

    explicit ManualClockState(Clock::time_point start) : now(start.time_since_epoch().count()) {}

    Clock::time_point current() const noexcept {
        return Clock::time_point(Clock::duration(now.load(std::memory_order_acquire)));
    }

    // Removes the wait and completes it with wait_aborted(); does nothing if it is no longer pending.
    void cancel(std::pair<Clock::time_point, std::uint64_t> key);
};

} // namespace detail

/// A clock for tests: time stands still until the test moves it with `advance()` or `advance_to()`.
///
/// It starts at `default_start` (one hour after the steady_clock epoch), not at the epoch. Code that treats
/// `time_point{}` as "never", or subtracts a cooldown from now(), is then visibly wrong instead of
/// accidentally right. A wait whose deadline has been reached completes with success, posted to its executor:
/// at once when registered, otherwise during the `advance()` that reaches it. Due waits complete in deadline
/// order, ties in registration order. Cancellation through the handler's slot removes the wait and completes
/// it with `wait_aborted()` (posted).
///
/// A pending wait counts as outstanding work on its executor, like a real timer: `io_context::run()` does not
/// return while one is pending. Tests drive the context with `poll()` after each step (`restart()` first if
/// the context ran out of work before).
///
/// @par Lifetime
/// The clock must outlive the waits started on it, and the execution contexts of pending waits must outlive
/// the clock. Destroying the clock with waits still pending destroys their handlers without invoking them: a
/// coroutine suspended on such a wait is destroyed, not resumed. Posting completions from the destructor is
/// not done, because the executors' contexts might already be gone.
///
/// @par Thread Safety
/// All member functions may be called concurrently from any thread. One mutex guards the waits. It is never
/// held while a handler runs or is destroyed.
class ManualClock final : public Clock {
public:
    /// Where a default-constructed ManualClock starts: `time_point{} + 1h`.
    static constexpr time_point default_start = time_point{} + std::chrono::hours{1};

    /// A clock reading `start`. Throws only std::bad_alloc.
    explicit ManualClock(time_point start = default_start);

    /// Destroys pending waits' handlers without invoking them (see the class's lifetime rules).
    MODELPOOL_DECL ~ManualClock() override;

    /// The clock's current reading.
    [[nodiscard]] time_point now() const noexcept override { return state_->current(); }

    /// Moves time forward by `d` (saturating) and completes the waits that are now due.
    /// A negative `d` is ignored: the clock never goes back. Returns the number of waits completed (posted).
    std::size_t advance(duration d);

    /// Moves time forward to `t` and completes the waits that are now due. A `t` earlier than `now()` leaves
    /// the clock where it is: it never goes back. Returns the number of waits completed (posted).
    std::size_t advance_to(time_point t);

    /// The number of waits registered and neither due nor cancelled.
    [[nodiscard]] std::size_t pending_waits() const;

    /// The earliest pending deadline, or nullopt when nothing waits. `advance_to(*next_deadline())` fires it.
    [[nodiscard]] std::optional<time_point> next_deadline() const;

protected:
    MODELPOOL_DECL void do_wait(asio::any_io_executor ex, time_point deadline, wait_handler handler) override;

private:
    friend struct detail::ManualClockState;

    // Posts the completions, in order, outside the lock.
    static void complete_all(std::vector<detail::ManualWait>& ready, std::error_code ec);

    std::shared_ptr<detail::ManualClockState> state_;
};

inline void detail::ManualClockState::cancel(std::pair<Clock::time_point, std::uint64_t> key) {
    std::vector<ManualWait> ready; // outlives the lock: handlers are never destroyed under it
    {
        std::lock_guard lock(mutex);
        auto found = waits.find(key);
        if (found == waits.end()) {
            return; // already completed or cancelled
        }
        ready.reserve(1);
        auto node = waits.extract(found);
        ready.push_back(std::move(node.mapped()));
    }
    ManualClock::complete_all(ready, wait_aborted());
}

/// The clock a pool uses unless the caller injects one: a new `SteadyClock`. SteadyClock is stateless, so
/// creating one per pool costs nothing and needs no global state.
inline std::shared_ptr<Clock> default_clock() {
    return std::make_shared<SteadyClock>();
}

} // namespace modelpool

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/impl/clock.ipp"
#endif
