// modelpool/capabilities/text_embedding.hpp
//
// The text_embedding capability: `embed(text, task?)` and `batch_embed(texts, task?)`, each yielding vectors.
// A model type serves it when it has these members (either form of each):
//
//     result<Embedding> embed(const std::string& text, const std::optional<std::string>& task);          //
//     blocking asio::awaitable<result<Embedding>> embed(const std::string&, const
//     std::optional<std::string>&);  // coroutine result<std::vector<Embedding>> batch_embed(const
//     std::vector<std::string>&, const std::optional<std::string>&);
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/types.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace modelpool {

/// The text_embedding capability descriptor.
struct text_embedding {
    /// The capability's name in logs, errors and metrics.
    static constexpr std::string_view name = "text_embedding";

    /// `embed(text, task)`: one text to one vector.
    struct embed_op {
        static constexpr std::string_view name = "embed"; ///< Operation name in logs and metrics.
        using reply = Embedding;                          ///< What the caller receives.
        using outcome = result<reply>;                    ///< What the model returns.
        std::string text;                                 ///< The text to embed.
        std::optional<std::string> task;                  ///< Optional task instruction (model specific).

        /// Calls the model's `embed`.
        template <class M>
        static auto call(M& model, embed_op& op)
            -> decltype(model.embed(std::as_const(op.text), std::as_const(op.task))) {
            return model.embed(std::as_const(op.text), std::as_const(op.task));
        }
    };

    /// `batch_embed(texts, task)`: one vector per text, in order.
    struct batch_embed_op {
        static constexpr std::string_view name = "batch_embed"; ///< Operation name in logs and metrics.
        using reply = std::vector<Embedding>;                   ///< What the caller receives.
        using outcome = result<reply>;                          ///< What the model returns.
        std::vector<std::string> texts;                         ///< The texts to embed.
        std::optional<std::string> task;                        ///< Optional task instruction.

        /// Calls the model's `batch_embed`.
        template <class M>
        static auto call(M& model, batch_embed_op& op)
            -> decltype(model.batch_embed(std::as_const(op.texts), std::as_const(op.task))) {
            return model.batch_embed(std::as_const(op.texts), std::as_const(op.task));
        }
    };

    /// The operations a text_embedding model serves.
    using operations = detail::type_list<embed_op, batch_embed_op>;
};

/// Dynamic batching: `embed` requests with the same `task` become one `batch_embed` call.
template <> struct batch_traits<text_embedding::embed_op> {
    using batch_op = text_embedding::batch_embed_op; ///< The batch call.
    /// Requests for the same task share a batch.
    static bool compatible(const text_embedding::embed_op& a, const text_embedding::embed_op& b) {
        return a.task == b.task;
    }
    /// One `batch_embed` of the requests' texts, in order (copied: a failed batch is retried item by item).
    static batch_op merge(const std::vector<const text_embedding::embed_op*>& ops) {
        batch_op batch{{}, ops.front()->task};
        batch.texts.reserve(ops.size());
        for (const auto* op : ops) {
            batch.texts.push_back(op->text);
        }
        return batch;
    }
};

/// A model type that can back a text_embedding worker.
template <class M>
concept TextEmbeddingModel = std::movable<M> && serves_operation<M, text_embedding::embed_op> &&
    serves_operation<M, text_embedding::batch_embed_op>;

} // namespace modelpool
