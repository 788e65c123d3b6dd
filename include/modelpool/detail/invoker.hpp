// modelpool/detail/invoker.hpp
//
// Type erasure of a loaded model behind its capability's operations. A worker holds a concrete model `T`; the
// requests in its key's queue know only their operation `Op`. An `invoker<Cap>` joins the two: one function
// pointer per operation of `Cap`, generated once per model type, which also decides where the call runs
// (a coroutine operation on the worker's io_context thread, a blocking one on the blocking executor).
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/capability.hpp"
#include "modelpool/error.hpp"
#include "modelpool/offload.hpp"

#include <optional>
#include <tuple>

namespace modelpool::detail {

/// What a model call needs from the pool.
struct call_env {
    asio::thread_pool::executor_type blocking; ///< Where blocking model operations run.
};

/// Calls `Op` on a model of type `T` (behind `void*`), turning exceptions into `errc::model_error`.
template <class T, class Op>
asio::awaitable<op_outcome_t<Op>> call_model(void* model, Op& op, const call_env& env) {
    T& typed = *static_cast<T*>(model);
    if constexpr (is_coroutine_operation_v<T, Op>) {
        std::optional<op_outcome_t<Op>> outcome;
        try {
            outcome.emplace(co_await Op::call(typed, op));
        } catch (...) {
            outcome.emplace(fail(errc::model_error, "{} threw: {}", Op::name, describe_current_exception()));
        }
        co_return std::move(*outcome);
    } else {
        co_return co_await offload(
            env.blocking, [&typed, &op] { return Op::call(typed, op); }, asio::use_awaitable);
    }
}

template <class Cap, class List = typename Cap::operations> class invoker;

/// One function pointer per operation of `Cap`, bound to one model object.
template <class Cap, class... Ops> class invoker<Cap, type_list<Ops...>> {
public:
    /// Binds to `model`, which must outlive the invoker.
    template <class T>
    invoker(T& model, call_env env) : model_(&model), env_(std::move(env)), calls_{&call_model<T, Ops>...} {}

    /// Runs operation `Op` on the bound model.
    template <class Op> asio::awaitable<op_outcome_t<Op>> call(Op& op) const {
        return std::get<call_fn<Op>>(calls_)(model_, op, env_);
    }

private:
    template <class Op> using call_fn = asio::awaitable<op_outcome_t<Op>> (*)(void*, Op&, const call_env&);

    void* model_;
    call_env env_;
    std::tuple<call_fn<Ops>...> calls_;
};

} // namespace modelpool::detail
