// modelpool/capabilities/text_to_image.hpp
//
// The text_to_image capability: `generate_image(prompt, config)` yielding a stream of `ImageChunk`s: progress
// steps, then the image as the last chunk. A model type serves it with one of
//
//     asio::awaitable<result<void>> generate_image(const std::string& prompt, const ImageConfig& config,
//                                                  ChunkSink<ImageChunk>& sink);
//     result<void> generate_image(const std::string&, const ImageConfig&, ChunkSink<ImageChunk>&);  //
//     blocking
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/stream.hpp"
#include "modelpool/types.hpp"

#include <string>
#include <string_view>
#include <utility>

namespace modelpool {

/// The text_to_image capability descriptor.
struct text_to_image {
    /// The capability's name in logs, errors and metrics.
    static constexpr std::string_view name = "text_to_image";

    /// `generate_image(prompt, config)`: progress chunks, then the image.
    struct generate_image_op {
        static constexpr std::string_view name = "generate_image"; ///< Operation name.
        using chunk = ImageChunk;                                  ///< What the stream carries.
        using outcome = result<void>;                              ///< What the model returns when done.
        std::string prompt;                                        ///< What to draw.
        ImageConfig config;                                        ///< Size, steps, seed.
        ChunkSink<chunk> sink; ///< Where the model writes (set by the pool).

        /// Calls the model's `generate_image`.
        template <class M>
        static auto call(M& model, generate_image_op& op)
            -> decltype(model.generate_image(std::as_const(op.prompt), std::as_const(op.config), op.sink)) {
            return model.generate_image(std::as_const(op.prompt), std::as_const(op.config), op.sink);
        }
    };

    /// The operations a text_to_image model serves.
    using operations = detail::type_list<generate_image_op>;
};

/// A model type that can back a text_to_image worker.
template <class M>
concept TextToImageModel = std::movable<M> && serves_operation<M, text_to_image::generate_image_op>;

} // namespace modelpool
