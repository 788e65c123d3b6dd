// modelpool/capabilities/vision.hpp
//
// The vision capability: `describe_image(path, query)` and `describe_url(url, query)`, each yielding a stream
// of `TextChunk`s. A model type serves it with (each either a coroutine returning
// `asio::awaitable<result<void>>` and writing with `co_await sink.send(...)`, or blocking, returning
// `result<void>` and using `send_blocking`):
//
//     result<void> describe_image(const std::string& path, const std::string& query, ChunkSink<TextChunk>&
//     sink); result<void> describe_url(const std::string& url, const std::string& query,
//     ChunkSink<TextChunk>& sink);
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/stream.hpp"
#include "modelpool/types.hpp"

#include <string>
#include <string_view>
#include <utility>

namespace modelpool {

/// The vision capability descriptor.
struct vision {
    /// The capability's name in logs, errors and metrics.
    static constexpr std::string_view name = "vision";

    /// `describe_image(path, query)`: a stream of text describing an image file.
    struct describe_image_op {
        static constexpr std::string_view name = "describe_image"; ///< Operation name.
        using chunk = TextChunk;                                   ///< What the stream carries.
        using outcome = result<void>;                              ///< What the model returns when done.
        std::string path;                                          ///< Path of the image file.
        std::string query;                                         ///< What to describe.
        ChunkSink<chunk> sink; ///< Where the model writes (set by the pool).

        /// Calls the model's `describe_image`.
        template <class M>
        static auto call(M& model, describe_image_op& op)
            -> decltype(model.describe_image(std::as_const(op.path), std::as_const(op.query), op.sink)) {
            return model.describe_image(std::as_const(op.path), std::as_const(op.query), op.sink);
        }
    };

    /// `describe_url(url, query)`: a stream of text describing an image at a URL.
    struct describe_url_op {
        static constexpr std::string_view name = "describe_url"; ///< Operation name.
        using chunk = TextChunk;                                 ///< What the stream carries.
        using outcome = result<void>;                            ///< What the model returns when done.
        std::string url;                                         ///< Where the image is.
        std::string query;                                       ///< What to describe.
        ChunkSink<chunk> sink; ///< Where the model writes (set by the pool).

        /// Calls the model's `describe_url`.
        template <class M>
        static auto call(M& model, describe_url_op& op)
            -> decltype(model.describe_url(std::as_const(op.url), std::as_const(op.query), op.sink)) {
            return model.describe_url(std::as_const(op.url), std::as_const(op.query), op.sink);
        }
    };

    /// The operations a vision model serves.
    using operations = detail::type_list<describe_image_op, describe_url_op>;
};

/// A model type that can back a vision worker.
template <class M>
concept VisionModel = std::movable<M> && serves_operation<M, vision::describe_image_op> &&
    serves_operation<M, vision::describe_url_op>;

} // namespace modelpool
