// modelpool/operations.hpp
//
// The named operations of the five capabilities (`embed`, `prompt`, `generate_image`, ...), written once for
// every object that can send requests: the `Pool` itself (pool-wide defaults) and a `RequestScope` from
// `pool.with(RequestOptions{...})` (per-call deadlines). Each operation builds its capability's operation
// value and hands it to the derived object's generic `call` / `call_stream`; each takes an Asio completion
// token, so one operation serves coroutines, futures, callbacks and deferred composition alike.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/capabilities/image_embedding.hpp"
#include "modelpool/capabilities/text_embedding.hpp"
#include "modelpool/capabilities/text_to_image.hpp"
#include "modelpool/capabilities/text_to_text.hpp"
#include "modelpool/capabilities/vision.hpp"
#include "modelpool/error.hpp"
#include "modelpool/stream.hpp"
#include "modelpool/types.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelpool {

/// The named operations, on top of `Derived::call<Cap>(key, op, token)`,
/// `Derived::call_stream<Cap>(key, op, state, token)` and `Derived::new_stream<Chunk>()`.
/// Results are `result<T>` values (errors are values, not exceptions).
template <class Derived> class basic_operations {
public:
    // ---- requests: text_embedding
    // ---------------------------------------------------------------------------

    /// Embeds `text` with a worker of `key`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed(std::string_view key, std::string text, CompletionToken&& token = {}) {
        return self().template call<text_embedding>(key,
                                                    text_embedding::embed_op{std::move(text), std::nullopt},
                                                    std::forward<CompletionToken>(token));
    }

    /// Embeds `text` for `task` (a model-specific instruction). Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed(std::string_view key, std::string text, std::optional<std::string> task,
               CompletionToken&& token = {}) {
        return self().template call<text_embedding>(
            key, text_embedding::embed_op{std::move(text), std::move(task)},
            std::forward<CompletionToken>(token));
    }

    /// Embeds each of `texts`, in order. Completes with `void(result<std::vector<Embedding>>)`.
    template <asio::completion_token_for<void(result<std::vector<Embedding>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto batch_embed(std::string_view key, std::vector<std::string> texts,
                     std::optional<std::string> task = {}, CompletionToken&& token = {}) {
        return self().template call<text_embedding>(
            key, text_embedding::batch_embed_op{std::move(texts), std::move(task)},
            std::forward<CompletionToken>(token));
    }

    // ---- requests: image_embedding
    // --------------------------------------------------------------------------

    /// Embeds the image file at `path`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image(std::string_view key, std::string path, CompletionToken&& token = {}) {
        return self().template call<image_embedding>(key, image_embedding::embed_image_op{std::move(path)},
                                                     std::forward<CompletionToken>(token));
    }

    /// Embeds the image at `url`. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image_url(std::string_view key, std::string url, CompletionToken&& token = {}) {
        return self().template call<image_embedding>(key, image_embedding::embed_image_url_op{std::move(url)},
                                                     std::forward<CompletionToken>(token));
    }

    /// Embeds a base64-encoded image. Completes with `void(result<Embedding>)`.
    template <asio::completion_token_for<void(result<Embedding>)> CompletionToken = asio::use_awaitable_t<>>
    auto embed_image_base64(std::string_view key, std::string data, CompletionToken&& token = {}) {
        return self().template call<image_embedding>(key,
                                                     image_embedding::embed_image_base64_op{std::move(data)},
                                                     std::forward<CompletionToken>(token));
    }

    /// Embeds each image file of `paths`, in order. Completes with `void(result<std::vector<Embedding>>)`.
    template <asio::completion_token_for<void(result<std::vector<Embedding>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto batch_embed_images(std::string_view key, std::vector<std::string> paths,
                            CompletionToken&& token = {}) {
        return self().template call<image_embedding>(key,
                                                     image_embedding::batch_embed_images_op{std::move(paths)},
                                                     std::forward<CompletionToken>(token));
    }

    // ---- requests: streams
    // ------------------------------------------------------------------------------------

    /// Generates text for `prompt`. Completes, once the request is queued, with
    /// `void(result<Stream<CompletionChunk>>)`; later failures end the stream with an error.
    template <asio::completion_token_for<void(result<Stream<CompletionChunk>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto prompt(std::string_view key, std::string prompt, GenerationParams params = {},
                CompletionToken&& token = {}) {
        auto state = self().template new_stream<CompletionChunk>();
        text_to_text::prompt_op op{std::move(prompt), std::move(params), ChunkSink<CompletionChunk>(state)};
        return self().template call_stream<text_to_text>(key, std::move(op), std::move(state),
                                                         std::forward<CompletionToken>(token));
    }

    /// Describes the image file at `path` as asked by `query`. Completes with
    /// `void(result<Stream<TextChunk>>)`.
    template <
        asio::completion_token_for<void(result<Stream<TextChunk>>)> CompletionToken = asio::use_awaitable_t<>>
    auto describe_image(std::string_view key, std::string path, std::string query,
                        CompletionToken&& token = {}) {
        auto state = self().template new_stream<TextChunk>();
        vision::describe_image_op op{std::move(path), std::move(query), ChunkSink<TextChunk>(state)};
        return self().template call_stream<vision>(key, std::move(op), std::move(state),
                                                   std::forward<CompletionToken>(token));
    }

    /// Describes the image at `url` as asked by `query`. Completes with `void(result<Stream<TextChunk>>)`.
    template <
        asio::completion_token_for<void(result<Stream<TextChunk>>)> CompletionToken = asio::use_awaitable_t<>>
    auto describe_url(std::string_view key, std::string url, std::string query,
                      CompletionToken&& token = {}) {
        auto state = self().template new_stream<TextChunk>();
        vision::describe_url_op op{std::move(url), std::move(query), ChunkSink<TextChunk>(state)};
        return self().template call_stream<vision>(key, std::move(op), std::move(state),
                                                   std::forward<CompletionToken>(token));
    }

    /// Generates an image for `prompt`: progress chunks, then the image. Completes with
    /// `void(result<Stream<ImageChunk>>)`.
    template <asio::completion_token_for<void(result<Stream<ImageChunk>>)> CompletionToken =
                  asio::use_awaitable_t<>>
    auto generate_image(std::string_view key, std::string prompt, ImageConfig config = {},
                        CompletionToken&& token = {}) {
        auto state = self().template new_stream<ImageChunk>();
        text_to_image::generate_image_op op{std::move(prompt), config, ChunkSink<ImageChunk>(state)};
        return self().template call_stream<text_to_image>(key, std::move(op), std::move(state),
                                                          std::forward<CompletionToken>(token));
    }

private:
    Derived& self() noexcept { return static_cast<Derived&>(*this); }
};

} // namespace modelpool
