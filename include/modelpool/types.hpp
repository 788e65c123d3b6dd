// modelpool/types.hpp
//
// The data that flows through the five capabilities: generation parameters, stream chunk types and image
// buffers. Plain aggregates, so callers build them with designated initialisers:
//
//     pool.prompt("phi4", "Write a haiku", {.max_tokens = 64, .temperature = 0.2}, asio::use_awaitable);
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace modelpool {

/// One embedding vector.
using Embedding = std::vector<float>;

/// Sampling parameters for text generation (text_to_text).
struct GenerationParams {
    std::size_t max_tokens = 256;        ///< Upper bound on generated tokens.
    double temperature = 0.7;            ///< Sampling temperature; 0 means greedy.
    double top_p = 1.0;                  ///< Nucleus sampling mass.
    std::optional<std::uint64_t> seed{}; ///< Fixed seed for reproducible output.
    std::vector<std::string> stop{};     ///< Stop sequences.
};

/// A piece of generated text (text_to_text and vision streams).
struct TextChunk {
    std::string text; ///< The text generated since the previous chunk.
};

/// The model starts a tool call.
struct ToolCallStart {
    std::string id;   ///< Call identifier, unique within the completion.
    std::string name; ///< Tool name.
};

/// More of a tool call's input arrived.
struct ToolCallDelta {
    std::string id;            ///< Call identifier.
    std::string name;          ///< Tool name.
    std::string partial_input; ///< The input text generated since the previous delta.
};

/// A tool call is complete.
struct ToolCallComplete {
    std::string id;    ///< Call identifier.
    std::string name;  ///< Tool name.
    std::string input; ///< The whole input, e.g. JSON arguments.
};

/// Final statistics of a completion (the last chunk of a text_to_text stream, when the model reports it).
struct CompletionStats {
    std::string finish_reason;      ///< "stop", "length", "tool_calls", ...
    std::size_t token_count = 0;    ///< Tokens generated.
    double elapsed_seconds = 0.0;   ///< Generation time.
    double tokens_per_second = 0.0; ///< token_count / elapsed_seconds.
};

/// One element of a text_to_text stream.
using CompletionChunk =
    std::variant<TextChunk, ToolCallStart, ToolCallDelta, ToolCallComplete, CompletionStats>;

/// Parameters for text_to_image generation.
struct ImageConfig {
    std::uint32_t width = 512;           ///< Output width in pixels.
    std::uint32_t height = 512;          ///< Output height in pixels.
    std::uint32_t steps = 4;             ///< Denoising (or refinement) steps.
    std::optional<std::uint64_t> seed{}; ///< Fixed seed for reproducible output.
};

/// An 8-bit interleaved image (row-major, `channels` bytes per pixel).
struct Image {
    std::uint32_t width = 0;          ///< Width in pixels.
    std::uint32_t height = 0;         ///< Height in pixels.
    std::uint32_t channels = 3;       ///< 3 for RGB, 4 for RGBA, 1 for grey.
    std::vector<std::uint8_t> pixels; ///< width * height * channels bytes.
};

/// Progress of an image generation: `step` of `total` done.
struct ImageProgress {
    std::uint32_t step = 0;  ///< Steps completed.
    std::uint32_t total = 0; ///< Steps in all.
};

/// One element of a text_to_image stream: progress, then the image as the last chunk.
using ImageChunk = std::variant<ImageProgress, Image>;

} // namespace modelpool
