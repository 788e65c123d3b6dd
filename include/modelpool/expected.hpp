// modelpool/expected.hpp
//
// Chooses the library's result type. modelpool reports errors as values, never as exceptions, through
// `modelpool::expected<T, E>`: `std::expected` where the standard library has it (g++ 12 at -std=c++23), and
// `tl::expected` otherwise (C++20, clang 14). The library uses only the part of the API both share:
// has_value(), operator bool, value(), error(), operator*, operator->, and construction from
// `modelpool::unexpected<E>`.
#pragma once

#include <version>

#if defined(__cpp_lib_expected) && __cpp_lib_expected >= 202202L
#include <expected>
#define MODELPOOL_STD_EXPECTED 1
#else
#include <tl/expected.hpp>
#define MODELPOOL_STD_EXPECTED 0
#endif

namespace modelpool {

#if MODELPOOL_STD_EXPECTED
/// The result of an operation that can fail: a `T` or an error `E` (std::expected on C++23).
template <class T, class E> using expected = std::expected<T, E>;

/// Wraps an error for construction of an `expected` (std::unexpected on C++23).
template <class E> using unexpected = std::unexpected<E>;
#else
/// The result of an operation that can fail: a `T` or an error `E` (tl::expected under C++20).
template <class T, class E> using expected = tl::expected<T, E>;

/// Wraps an error for construction of an `expected` (tl::unexpected under C++20).
template <class E> using unexpected = tl::unexpected<E>;
#endif

} // namespace modelpool
