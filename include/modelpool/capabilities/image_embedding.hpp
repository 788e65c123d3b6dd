// modelpool/capabilities/image_embedding.hpp
//
// The image_embedding capability: `embed_image(path)`, `embed_image_url(url)`, `embed_image_base64(data)` and
// `batch_embed_images(paths)`, each yielding vectors. A model type serves it when it has these members, each
// either blocking (returning `result<R>`) or a coroutine (returning `asio::awaitable<result<R>>`):
//
//     result<Embedding> embed_image(const std::string& path);
//     result<Embedding> embed_image_url(const std::string& url);
//     result<Embedding> embed_image_base64(const std::string& data);
//     result<std::vector<Embedding>> batch_embed_images(const std::vector<std::string>& paths);
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/types.hpp"

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelpool {

/// The image_embedding capability descriptor.
struct image_embedding {
    /// The capability's name in logs, errors and metrics.
    static constexpr std::string_view name = "image_embedding";

    /// `embed_image(path)`: an image file to one vector.
    struct embed_image_op {
        static constexpr std::string_view name = "embed_image"; ///< Operation name.
        using reply = Embedding;                                ///< What the caller receives.
        using outcome = result<reply>;                          ///< What the model returns.
        std::string path;                                       ///< Path of the image file.

        /// Calls the model's `embed_image`.
        template <class M>
        static auto call(M& model, embed_image_op& op)
            -> decltype(model.embed_image(std::as_const(op.path))) {
            return model.embed_image(std::as_const(op.path));
        }
    };

    /// `embed_image_url(url)`: an image fetched from a URL to one vector.
    struct embed_image_url_op {
        static constexpr std::string_view name = "embed_image_url"; ///< Operation name.
        using reply = Embedding;                                    ///< What the caller receives.
        using outcome = result<reply>;                              ///< What the model returns.
        std::string url;                                            ///< Where the image is.

        /// Calls the model's `embed_image_url`.
        template <class M>
        static auto call(M& model, embed_image_url_op& op)
            -> decltype(model.embed_image_url(std::as_const(op.url))) {
            return model.embed_image_url(std::as_const(op.url));
        }
    };

    /// `embed_image_base64(data)`: a base64-encoded image to one vector.
    struct embed_image_base64_op {
        static constexpr std::string_view name = "embed_image_base64"; ///< Operation name.
        using reply = Embedding;                                       ///< What the caller receives.
        using outcome = result<reply>;                                 ///< What the model returns.
        std::string data;                                              ///< The encoded image.

        /// Calls the model's `embed_image_base64`.
        template <class M>
        static auto call(M& model, embed_image_base64_op& op)
            -> decltype(model.embed_image_base64(std::as_const(op.data))) {
            return model.embed_image_base64(std::as_const(op.data));
        }
    };

    /// `batch_embed_images(paths)`: one vector per image file, in order.
    struct batch_embed_images_op {
        static constexpr std::string_view name = "batch_embed_images"; ///< Operation name.
        using reply = std::vector<Embedding>;                          ///< What the caller receives.
        using outcome = result<reply>;                                 ///< What the model returns.
        std::vector<std::string> paths;                                ///< Paths of the image files.

        /// Calls the model's `batch_embed_images`.
        template <class M>
        static auto call(M& model, batch_embed_images_op& op)
            -> decltype(model.batch_embed_images(std::as_const(op.paths))) {
            return model.batch_embed_images(std::as_const(op.paths));
        }
    };

    /// The operations an image_embedding model serves.
    using operations =
        detail::type_list<embed_image_op, embed_image_url_op, embed_image_base64_op, batch_embed_images_op>;
};

/// Dynamic batching: `embed_image` requests (image files) become one `batch_embed_images` call. URL and
/// base64 requests are not batched: the batch operation takes file paths.
template <> struct batch_traits<image_embedding::embed_image_op> {
    using batch_op = image_embedding::batch_embed_images_op; ///< The batch call.
    /// Any two image files share a batch (the operation has no options).
    static bool compatible(const image_embedding::embed_image_op&, const image_embedding::embed_image_op&) {
        return true;
    }
    /// One `batch_embed_images` of the requests' paths, in order.
    static batch_op merge(const std::vector<const image_embedding::embed_image_op*>& ops) {
        batch_op batch;
        batch.paths.reserve(ops.size());
        for (const auto* op : ops) {
            batch.paths.push_back(op->path);
        }
        return batch;
    }
};

/// A model type that can back an image_embedding worker.
template <class M>
concept ImageEmbeddingModel = std::movable<M> && serves_operation<M, image_embedding::embed_image_op> &&
    serves_operation<M, image_embedding::embed_image_url_op> &&
    serves_operation<M, image_embedding::embed_image_base64_op> &&
    serves_operation<M, image_embedding::batch_embed_images_op>;

} // namespace modelpool
