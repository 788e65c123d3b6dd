// modelpool/offload.hpp
//
// The migration path for code written in the old synchronous style. A blocking step (a legacy file read, a
// CPU-heavy model call) must never run on an io_context thread; `offload` runs it on a blocking executor (the
// pool's `blocking_executor()`) and completes the caller, in any completion-token style, when it returns:
//
//     auto weights = co_await modelpool::offload(pool.blocking_executor(), [&] { return read_legacy(path);
//     });
//
// This replaces the Rust pool's `block_in_place` + `block_on`, which parked a runtime thread for the whole
// load.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/error.hpp"

#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace modelpool {

namespace detail {

template <class T> inline constexpr bool is_pool_result_v = false;
template <class T> inline constexpr bool is_pool_result_v<expected<T, PoolError>> = true;

/// The completion signature `offload` uses for a callable returning `R`.
template <class R> struct offload_signature { using type = void(std::exception_ptr, R); };
template <> struct offload_signature<void> { using type = void(std::exception_ptr); };
template <class T> struct offload_signature<expected<T, PoolError>> { using type = void(result<T>); };

/// Describes the exception in flight for an error message.
inline std::string describe_current_exception() {
    try {
        throw;
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "unknown exception";
    }
}

/// Runs `fn` and completes `handler` in the shape `offload_signature_t` gives.
template <class R, class Handler, class Executor, class Fn>
void run_and_complete(Handler handler, const Executor& executor, Fn& fn) {
    if constexpr (std::is_void_v<R>) {
        std::exception_ptr error;
        try {
            fn();
        } catch (...) {
            error = std::current_exception();
        }
        post_completion(std::move(handler), executor, error);
    } else if constexpr (is_pool_result_v<R>) {
        std::optional<R> value;
        try {
            value.emplace(fn());
        } catch (...) {
            value.emplace(fail(errc::model_error, "blocking call threw: {}", describe_current_exception()));
        }
        post_completion(std::move(handler), executor, std::move(*value));
    } else {
        static_assert(std::is_default_constructible_v<R>,
                      "offload: a callable returning a non-default-constructible type must return "
                      "modelpool::result<T> so that failures can be reported as values");
        std::exception_ptr error;
        R value{};
        try {
            value = fn();
        } catch (...) {
            error = std::current_exception();
        }
        post_completion(std::move(handler), executor, error, std::move(value));
    }
}

} // namespace detail

/// Runs the blocking callable `fn()` on `blocking` (a thread pool, never an io_context thread) and completes
/// `token` when it returns. The completion signature depends on what `fn` returns:
/// - `void`: `void(std::exception_ptr)`;
/// - `modelpool::result<T>`: `void(result<T>)`; an exception becomes `errc::model_error` naming its what();
/// - any other (default-constructible) `R`: `void(std::exception_ptr, R)`.
/// With `use_awaitable`, exceptions are rethrown in the awaiting coroutine.
///
/// The completion runs on the token's associated executor (for a coroutine, its own executor), so the caller
/// resumes on its io_context thread, not on the blocking thread. `fn` is moved to the blocking thread;
/// anything it captures by reference must outlive the operation (true when the caller co_awaits it at once).
///
/// Not cancellable: a blocking call cannot be interrupted safely; cancel inside `fn` cooperatively if needed.
template <class BlockingExecutor, class Fn, class CompletionToken = asio::use_awaitable_t<>>
    requires std::is_invocable_v<Fn&>
auto offload(const BlockingExecutor& blocking, Fn fn, CompletionToken&& token = {}) {
    using R = std::invoke_result_t<Fn&>;
    return asio::async_initiate<CompletionToken, typename detail::offload_signature<R>::type>(
        [](auto handler, const BlockingExecutor& blocking, Fn fn) {
            auto work = asio::make_work_guard(asio::get_associated_executor(handler, blocking));
            asio::post(blocking,
                       [handler = std::move(handler), fn = std::move(fn), work = std::move(work)]() mutable {
                           detail::run_and_complete<R>(std::move(handler), work.get_executor(), fn);
                       });
        },
        token, blocking, std::move(fn));
}

} // namespace modelpool
