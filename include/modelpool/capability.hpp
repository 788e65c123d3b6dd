// modelpool/capability.hpp
//
// What a capability is. A capability (text_embedding, text_to_text, ...) is a small descriptor: a name and a
// list of operations. Each operation is a struct holding the request's inputs that knows how to call the
// model
// (`Op::call(model, op)`) and what it yields: a single reply (`Op::reply`) or a stream of chunks
// (`Op::chunk`). From these descriptors one generic worker loop, one registry and one router serve all five
// capabilities.
//
// A model operation may be
// - a coroutine returning `asio::awaitable<result<R>>`: it runs on the worker's io_context thread and must
// not
//   block it; or
// - a plain function returning `result<R>`: it is treated as blocking and runs on the pool's blocking
// executor,
//   never on an io_context thread.
// Streaming operations take a `ChunkSink<Chunk>&` and yield `result<void>`.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/error.hpp"
#include "modelpool/stream.hpp"

#include <concepts>
#include <string_view>
#include <type_traits>
#include <vector>

namespace modelpool {

namespace detail {

/// A compile-time list of types.
template <class... Ts> struct type_list {};

template <class T> struct is_awaitable : std::false_type {};
template <class T, class E> struct is_awaitable<asio::awaitable<T, E>> : std::true_type {};

template <class T> struct awaitable_value { using type = T; };
template <class T, class E> struct awaitable_value<asio::awaitable<T, E>> { using type = T; };

} // namespace detail

/// What a model operation must return for `Op`: `result<R>` (blocking) or `awaitable<result<R>>` (coroutine).
template <class Op> using op_outcome_t = typename Op::outcome;

/// The type a model's member function returns when called for `Op`.
template <class Model, class Op>
using model_return_t = decltype(Op::call(std::declval<Model&>(), std::declval<Op&>()));

/// True when `Model` serves `Op`: `Op::call(model, op)` compiles and returns `result<R>` or
/// `asio::awaitable<result<R>>` with the operation's `R`.
template <class Model, class Op>
concept serves_operation = requires(Model& model, Op& op) {
    Op::call(model, op);
}
&&(std::same_as<model_return_t<Model, Op>, op_outcome_t<Op>> ||
   std::same_as<model_return_t<Model, Op>, asio::awaitable<op_outcome_t<Op>>>);

/// True for a model operation that is a coroutine (runs on the io_context) rather than a blocking call.
template <class Model, class Op>
inline constexpr bool is_coroutine_operation_v = detail::is_awaitable<model_return_t<Model, Op>>::value;

/// A unary operation: one request, one reply of type `Op::reply`.
template <class Op>
concept unary_operation = requires {
    typename Op::reply;
}
&&std::same_as<op_outcome_t<Op>, result<typename Op::reply>>;

/// A streaming operation: one request, a stream of `Op::chunk`, carried by the op's `sink` member.
template <class Op>
concept streaming_operation = requires(Op& op) {
    typename Op::chunk;
    { op.sink } -> std::convertible_to<ChunkSink<typename Op::chunk>&>;
}
&&std::same_as<op_outcome_t<Op>, result<void>>;

namespace detail {
template <class Model, class List> struct serves_all;
template <class Model, class... Ops>
struct serves_all<Model, type_list<Ops...>> : std::bool_constant<(serves_operation<Model, Ops> && ...)> {};
} // namespace detail

/// Dynamic batching of a single-item operation `Op` into its capability's batch operation. Not defined for
/// operations that are not batched; a capability specialises it for each that is, with
/// - `batch_op`: the batch operation, whose `reply` is `std::vector<Op::reply>` (one item per request, in
///   order);
/// - `static bool compatible(const Op&, const Op&)`: the two requests give the same result in one batch (the
///   same options);
/// - `static batch_op merge(const std::vector<const Op*>&)`: the batch call for these requests, in order.
template <class Op> struct batch_traits;

/// A single-item operation with `batch_traits`.
template <class Op>
concept batchable_operation = requires(const Op& op, const std::vector<const Op*>& ops) {
    typename batch_traits<Op>::batch_op;
    { batch_traits<Op>::compatible(op, op) } -> std::convertible_to<bool>;
    { batch_traits<Op>::merge(ops) } -> std::same_as<typename batch_traits<Op>::batch_op>;
}
&&std::same_as<typename batch_traits<Op>::batch_op::reply, std::vector<typename Op::reply>>;

/// A capability descriptor: a name and the list of its operations.
template <class C>
concept capability_descriptor = requires {
    { C::name } -> std::convertible_to<std::string_view>;
    typename C::operations;
};

/// True when `Model` serves every operation of capability `C`.
template <class Model, class C>
concept model_of = capability_descriptor<C> && std::movable<Model> &&
    detail::serves_all<Model, typename C::operations>::value;

} // namespace modelpool
