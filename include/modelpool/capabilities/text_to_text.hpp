// modelpool/capabilities/text_to_text.hpp
//
// The text_to_text capability: `prompt(prompt, params)` yielding a stream of `CompletionChunk`s (text,
// tool-call pieces, final stats). A model type serves it with one of
//
//     asio::awaitable<result<void>> prompt(const std::string& prompt, const GenerationParams& params,
//                                          ChunkSink<CompletionChunk>& sink);   // coroutine: co_await
//                                          sink.send(...)
//     result<void> prompt(const std::string&, const GenerationParams&, ChunkSink<CompletionChunk>&);  //
//     blocking:
//                                                                                                  //
//                                                                                                  sink.send_blocking
//
// The model stops early when a send returns false (the reader has gone).
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/stream.hpp"
#include "modelpool/types.hpp"

#include <string>
#include <string_view>
#include <utility>

namespace modelpool {

/// The text_to_text capability descriptor.
struct text_to_text {
    /// The capability's name in logs, errors and metrics.
    static constexpr std::string_view name = "text_to_text";

    /// `prompt(prompt, params)`: a stream of completion chunks.
    struct prompt_op {
        static constexpr std::string_view name = "prompt"; ///< Operation name.
        using chunk = CompletionChunk;                     ///< What the stream carries.
        using outcome = result<void>;                      ///< What the model returns when it is done.
        std::string prompt;                                ///< The prompt text.
        GenerationParams params;                           ///< Sampling parameters.
        ChunkSink<chunk> sink;                             ///< Where the model writes (set by the pool).

        /// Calls the model's `prompt`.
        template <class M>
        static auto call(M& model, prompt_op& op)
            -> decltype(model.prompt(std::as_const(op.prompt), std::as_const(op.params), op.sink)) {
            return model.prompt(std::as_const(op.prompt), std::as_const(op.params), op.sink);
        }
    };

    /// The operations a text_to_text model serves.
    using operations = detail::type_list<prompt_op>;
};

/// A model type that can back a text_to_text worker.
template <class M>
concept TextToTextModel = std::movable<M> && serves_operation<M, text_to_text::prompt_op>;

} // namespace modelpool
