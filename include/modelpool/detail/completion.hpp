// modelpool/detail/completion.hpp
//
// How modelpool completes a caller's handler: always through the handler's associated executor (falling back
// to the pool's executor), never inline under a lock, with the handler's cancellation slot cleared first so
// that a late cancellation cannot reach a finished operation.
#pragma once

#include "modelpool/asio.hpp"

#include <atomic>
#include <type_traits>
#include <utility>

namespace modelpool::detail {

/// The pool whose io_context the current thread is running (null elsewhere). Blocking waits check it: a pool
/// thread must never block.
inline thread_local const void* running_pool = nullptr;

/// True on a thread that runs some pool's io_context.
inline bool on_pool_io_thread() noexcept {
    return running_pool != nullptr;
}

/// The executor that completes handlers which have none of their own: the pool's io_context while it runs,
/// the system executor once the pool has stopped, so that an operation started after (or racing with)
/// `stop()` still completes instead of being queued on an io_context that no thread runs any more.
class fallback_executor {
public:
    explicit fallback_executor(asio::any_io_executor io) : io_(std::move(io)) {}

    /// The executor to complete on now.
    [[nodiscard]] asio::any_io_executor get() const {
        if (stopped_.load(std::memory_order_acquire)) {
            return asio::system_executor();
        }
        return io_;
    }

    /// From now on, complete on the system executor.
    void stop() noexcept { stopped_.store(true, std::memory_order_release); }

private:
    asio::any_io_executor io_;
    std::atomic<bool> stopped_{false};
};

template <class T> inline constexpr bool is_erased_handler_v = false;
template <class... Signatures>
inline constexpr bool is_erased_handler_v<asio::any_completion_handler<Signatures...>> = true;

/// The executor a handler must complete on, as an `any_io_executor`: its associated executor, or `fallback`.
/// Type-erased handlers only offer an `any_completion_executor`, which Boost 1.81 cannot `post` to (it lacks
/// `blocking.never`) and which does not convert; they get `fallback`. So erased handlers are stored together
/// with the executor computed here from the concrete handler, before erasure.
template <class Handler, class Executor>
asio::any_io_executor completion_executor(const Handler& handler, const Executor& fallback) {
    if constexpr (std::is_convertible_v<asio::associated_executor_t<Handler, asio::any_io_executor>,
                                        asio::any_io_executor>) {
        return asio::get_associated_executor(handler, asio::any_io_executor(fallback));
    } else {
        return asio::any_io_executor(fallback);
    }
}

/// Posts `handler(args...)` to the handler's associated executor (or `fallback`); for a type-erased handler,
/// `fallback` must be the executor computed by `completion_executor` before erasure. Never runs the handler
/// inline, so it is safe to call with locks released but from inside other operations.
template <class Handler, class Executor, class... Args>
void post_completion(Handler handler, const Executor& fallback, Args&&... args) {
    asio::any_io_executor executor = [&] {
        if constexpr (is_erased_handler_v<Handler>) {
            return asio::any_io_executor(fallback);
        } else {
            return completion_executor(handler, fallback);
        }
    }();
    asio::post(executor, [handler = std::move(handler), ... args = std::forward<Args>(args)]() mutable {
        auto slot = asio::get_associated_cancellation_slot(handler);
        if (slot.is_connected()) {
            slot.clear();
        }
        std::move(handler)(std::move(args)...);
    });
}

} // namespace modelpool::detail
