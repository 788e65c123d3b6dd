// modelpool/http/detail/openai.hpp
//
// The OpenAI request bodies the server accepts, parsed and checked with Boost.JSON into plain structs, with a
// 400 `ApiError` naming the offending field (`param`) for anything malformed; and the chat template that
// turns `messages` into one prompt. `null` fields count as absent, as the official clients send them.
#pragma once

#include "modelpool/expected.hpp"
#include "modelpool/http/errors.hpp"
#include "modelpool/http/options.hpp"
#include "modelpool/types.hpp"

#include <boost/json/object.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelpool::http::detail {

namespace json = boost::json;

/// A parse result: the value, or the 400 to answer.
template <class T> using parsed = expected<T, ApiError>;

/// The body as a JSON object, or 400 (`invalid_json`) saying why not.
inline parsed<json::object> parse_object(std::string_view body) {
    boost::system::error_code ec;
    auto value = json::parse(body, ec);
    if (ec) {
        return unexpected<ApiError>(
            ApiError{400, "invalid_request_error", "invalid_json",
                     fmt::format("request body is not valid JSON: {}", ec.message())});
    }
    if (!value.is_object()) {
        return unexpected<ApiError>(
            ApiError{400, "invalid_request_error", "invalid_json", "request body must be a JSON object"});
    }
    return std::move(value.as_object());
}

/// The field `name`, or null when it is absent or JSON null.
inline const json::value* field(const json::object& object, std::string_view name) {
    const auto* value = object.if_contains(name);
    return value != nullptr && !value->is_null() ? value : nullptr;
}

inline unexpected<ApiError> invalid(std::string_view param, std::string message) {
    return unexpected<ApiError>(ApiError::invalid(std::string(param), std::move(message)));
}

/// A required non-empty string field.
inline parsed<std::string> required_string(const json::object& object, std::string_view name) {
    const auto* value = field(object, name);
    if (value == nullptr) {
        return invalid(name, fmt::format("'{}' is required", name));
    }
    if (!value->is_string()) {
        return invalid(name, fmt::format("'{}' must be a string", name));
    }
    return std::string(value->as_string());
}

/// An optional number field within [lo, hi].
inline parsed<std::optional<double>> optional_number(const json::object& object, std::string_view name,
                                                     double lo, double hi) {
    const auto* value = field(object, name);
    if (value == nullptr) {
        return std::optional<double>{};
    }
    if (!value->is_number()) {
        return invalid(name, fmt::format("'{}' must be a number", name));
    }
    const double number = value->to_number<double>();
    if (!(number >= lo && number <= hi)) {
        return invalid(name, fmt::format("'{}' must be between {} and {} (got {})", name, lo, hi, number));
    }
    return std::optional<double>{number};
}

/// An optional integer field within [lo, hi].
inline parsed<std::optional<std::uint64_t>>
optional_integer(const json::object& object, std::string_view name, std::uint64_t lo, std::uint64_t hi) {
    const auto* value = field(object, name);
    if (value == nullptr) {
        return std::optional<std::uint64_t>{};
    }
    std::optional<std::uint64_t> number;
    if (value->is_uint64()) {
        number = value->get_uint64();
    } else if (value->is_int64() && value->get_int64() >= 0) {
        number = static_cast<std::uint64_t>(value->get_int64());
    } else if (value->is_double() && value->get_double() >= 0 && value->get_double() <= 1.8e19 &&
               std::floor(value->get_double()) == value->get_double()) {
        number = static_cast<std::uint64_t>(value->get_double());
    }
    if (!number) {
        return invalid(name, fmt::format("'{}' must be a non-negative integer", name));
    }
    if (*number < lo || *number > hi) {
        return invalid(name, fmt::format("'{}' must be between {} and {} (got {})", name, lo, hi, *number));
    }
    return number;
}

/// An optional boolean field.
inline parsed<bool> optional_bool(const json::object& object, std::string_view name, bool fallback) {
    const auto* value = field(object, name);
    if (value == nullptr) {
        return fallback;
    }
    if (!value->is_bool()) {
        return invalid(name, fmt::format("'{}' must be true or false", name));
    }
    return value->get_bool();
}

/// "Tokens" as the server counts prompts (it does not know the model's tokenizer): whitespace-separated
/// words.
inline std::size_t count_words(std::string_view text) {
    std::size_t words = 0;
    bool in_word = false;
    for (const char c : text) {
        const bool space = std::isspace(static_cast<unsigned char>(c)) != 0;
        words += (!space && !in_word) ? 1 : 0;
        in_word = !space;
    }
    return words;
}

// ---- /v1/embeddings ---------------------------------------------------------------------------------------

/// A checked `/v1/embeddings` request.
struct embeddings_request {
    std::string model;                       ///< The OpenAI model name.
    std::vector<std::string> inputs;         ///< The inputs, in order.
    bool single = true;                      ///< `input` was one string (one `embed` call), not an array.
    bool base64 = false;                     ///< `encoding_format` "base64".
    std::optional<std::size_t> dimensions{}; ///< Truncate each vector to this many values.
};

inline parsed<embeddings_request> parse_embeddings(const json::object& body, const Limits& limits) {
    embeddings_request request;
    auto model = required_string(body, "model");
    if (!model) {
        return unexpected<ApiError>(model.error());
    }
    request.model = std::move(*model);
    const auto* input = field(body, "input");
    if (input == nullptr) {
        return invalid("input", "'input' is required");
    }
    if (input->is_string()) {
        request.inputs.emplace_back(input->as_string());
    } else if (input->is_array()) {
        request.single = false;
        const auto& array = input->as_array();
        if (array.size() > limits.max_embedding_inputs) {
            return invalid("input", fmt::format("'input' has {} items, more than the limit of {}",
                                                array.size(), limits.max_embedding_inputs));
        }
        for (std::size_t i = 0; i < array.size(); ++i) {
            if (!array[i].is_string()) {
                return invalid(
                    "input", fmt::format("'input[{}]' must be a string (token arrays are not supported)", i));
            }
            request.inputs.emplace_back(array[i].as_string());
        }
    } else {
        return invalid("input", "'input' must be a string or an array of strings");
    }
    if (request.inputs.empty()) {
        return invalid("input", "'input' must not be an empty array");
    }
    for (std::size_t i = 0; i < request.inputs.size(); ++i) {
        if (request.inputs[i].empty()) {
            return invalid("input", request.single ? std::string("'input' must not be empty")
                                                   : fmt::format("'input[{}]' must not be empty", i));
        }
    }
    if (const auto* format = field(body, "encoding_format"); format != nullptr) {
        if (!format->is_string() || (format->as_string() != "float" && format->as_string() != "base64")) {
            return invalid("encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
        }
        request.base64 = format->as_string() == "base64";
    }
    auto dimensions = optional_integer(body, "dimensions", 1, 1'000'000);
    if (!dimensions) {
        return unexpected<ApiError>(dimensions.error());
    }
    if (*dimensions) {
        request.dimensions = static_cast<std::size_t>(**dimensions);
    }
    return request;
}

/// The base64 payload of a `data:image/<type>;base64,<payload>` URL, or nullopt for any other URL.
inline std::optional<std::string_view> data_url_payload(std::string_view url) {
    constexpr std::string_view prefix = "data:image/";
    constexpr std::string_view marker = ";base64,";
    if (!url.starts_with(prefix)) {
        return std::nullopt;
    }
    const auto at = url.find(marker);
    if (at == std::string_view::npos || url.find(',') < at) {
        return std::nullopt;
    }
    return url.substr(at + marker.size());
}

// ---- /v1/completions and /v1/chat/completions -------------------------------------------------------------

/// A checked completion or chat completion request.
struct completion_request {
    std::string model;                ///< The OpenAI model name.
    std::vector<std::string> prompts; ///< One prompt (chat: the rendered messages), or several (completions).
    GenerationParams params;          ///< Sampling parameters handed to the model.
    std::size_t n = 1;                ///< Choices per prompt.
    bool stream = false;              ///< Answer with server-sent events.
    bool include_usage = false;       ///< `stream_options.include_usage`.
    bool chat = false;                ///< `/v1/chat/completions`.
    std::optional<std::string> image_url{}; ///< Chat to a vision key: the image's data URL.
    std::string query;                      ///< Chat to a vision key: the text of the last user message.
};

/// Fields shared by both routes: sampling, n, stream, stream_options.
inline parsed<void> parse_generation(const json::object& body, const Limits& limits,
                                     std::size_t default_tokens, completion_request& request) {
    auto model = required_string(body, "model");
    if (!model) {
        return unexpected<ApiError>(model.error());
    }
    request.model = std::move(*model);
    const std::string_view tokens_field = request.chat && field(body, "max_completion_tokens") != nullptr
                                              ? "max_completion_tokens"
                                              : "max_tokens";
    auto max_tokens = optional_integer(body, tokens_field, 1, limits.max_tokens);
    if (!max_tokens) {
        return unexpected<ApiError>(max_tokens.error());
    }
    request.params.max_tokens = static_cast<std::size_t>(max_tokens->value_or(default_tokens));
    auto temperature = optional_number(body, "temperature", 0.0, 2.0);
    if (!temperature) {
        return unexpected<ApiError>(temperature.error());
    }
    request.params.temperature = temperature->value_or(1.0);
    auto top_p = optional_number(body, "top_p", 0.0, 1.0);
    if (!top_p) {
        return unexpected<ApiError>(top_p.error());
    }
    request.params.top_p = top_p->value_or(1.0);
    auto seed = optional_integer(body, "seed", 0, UINT64_MAX);
    if (!seed) {
        return unexpected<ApiError>(seed.error());
    }
    request.params.seed = *seed;
    if (const auto* stop = field(body, "stop"); stop != nullptr) {
        if (stop->is_string()) {
            request.params.stop.emplace_back(stop->as_string());
        } else if (stop->is_array() && stop->as_array().size() <= 4) {
            for (const auto& item : stop->as_array()) {
                if (!item.is_string()) {
                    return invalid("stop", "'stop' must be a string or an array of up to 4 strings");
                }
                request.params.stop.emplace_back(item.as_string());
            }
        } else {
            return invalid("stop", "'stop' must be a string or an array of up to 4 strings");
        }
    }
    auto n = optional_integer(body, "n", 1, limits.max_n);
    if (!n) {
        return unexpected<ApiError>(n.error());
    }
    request.n = static_cast<std::size_t>(n->value_or(1));
    auto stream = optional_bool(body, "stream", false);
    if (!stream) {
        return unexpected<ApiError>(stream.error());
    }
    request.stream = *stream;
    if (const auto* options = field(body, "stream_options"); options != nullptr) {
        if (!options->is_object()) {
            return invalid("stream_options", "'stream_options' must be an object");
        }
        auto include = optional_bool(options->as_object(), "include_usage", false);
        if (!include) {
            return invalid("stream_options.include_usage",
                           "'stream_options.include_usage' must be true or false");
        }
        request.include_usage = *include;
    }
    return {};
}

/// `/v1/completions`: `prompt` is a string or an array of strings (one choice set per prompt).
inline parsed<completion_request> parse_completion(const json::object& body, const Limits& limits) {
    completion_request request;
    // 16 is the OpenAI default for /v1/completions.
    if (auto common = parse_generation(body, limits, 16, request); !common) {
        return unexpected<ApiError>(common.error());
    }
    const auto* prompt = field(body, "prompt");
    if (prompt == nullptr) {
        return invalid("prompt", "'prompt' is required");
    }
    if (prompt->is_string()) {
        request.prompts.emplace_back(prompt->as_string());
    } else if (prompt->is_array() && !prompt->as_array().empty()) {
        for (const auto& item : prompt->as_array()) {
            if (!item.is_string()) {
                return invalid("prompt",
                               "'prompt' must be a string or an array of strings (token arrays are not "
                               "supported)");
            }
            request.prompts.emplace_back(item.as_string());
        }
    } else {
        return invalid("prompt", "'prompt' must be a string or a non-empty array of strings");
    }
    if (request.prompts.size() * request.n > limits.max_n) {
        return invalid("n", fmt::format("{} prompts x n = {} choices, more than the limit of {}",
                                        request.prompts.size(), request.n, limits.max_n));
    }
    return request;
}

/// The chat template: each message as "<role>: <content>\n", then "assistant:" for the model to continue.
/// Content parts of type "text" are joined with "\n"; "image_url" parts are taken out (see `parse_chat`).
inline std::string render_chat(const std::vector<std::pair<std::string, std::string>>& messages) {
    std::string prompt;
    for (const auto& [role, content] : messages) {
        prompt += role;
        prompt += ": ";
        prompt += content;
        prompt += '\n';
    }
    prompt += "assistant:";
    return prompt;
}

/// `/v1/chat/completions`. `vision`: the model is a vision key, which needs exactly one `image_url` part with
/// a data URL; its query is the text of the last user message.
inline parsed<completion_request> parse_chat(const json::object& body, const Limits& limits, bool vision) {
    completion_request request;
    request.chat = true;
    if (auto common = parse_generation(body, limits, GenerationParams{}.max_tokens, request); !common) {
        return unexpected<ApiError>(common.error());
    }
    const auto* messages = field(body, "messages");
    if (messages == nullptr || !messages->is_array() || messages->as_array().empty()) {
        return invalid("messages", "'messages' must be a non-empty array");
    }
    std::vector<std::pair<std::string, std::string>> rendered;
    for (std::size_t i = 0; i < messages->as_array().size(); ++i) {
        const auto& message = messages->as_array()[i];
        const auto param = fmt::format("messages[{}]", i);
        if (!message.is_object()) {
            return invalid(param, fmt::format("'{}' must be an object", param));
        }
        auto role = required_string(message.as_object(), "role");
        if (!role || (*role != "system" && *role != "user" && *role != "assistant" && *role != "tool" &&
                      *role != "developer")) {
            return invalid(
                param + ".role",
                fmt::format("'{}.role' must be system, developer, user, assistant or tool", param));
        }
        std::string text;
        const auto* content = field(message.as_object(), "content");
        if (content == nullptr) {
            // An assistant message with tool calls only has no content.
        } else if (content->is_string()) {
            text = content->as_string();
        } else if (content->is_array()) {
            for (const auto& part : content->as_array()) {
                const auto* type = part.is_object() ? field(part.as_object(), "type") : nullptr;
                if (type == nullptr || !type->is_string()) {
                    return invalid(param + ".content",
                                   fmt::format("'{}.content' parts need a 'type'", param));
                }
                if (type->as_string() == "text") {
                    auto part_text = required_string(part.as_object(), "text");
                    if (!part_text) {
                        return invalid(param + ".content",
                                       fmt::format("'{}.content' text parts need 'text'", param));
                    }
                    text += text.empty() ? "" : "\n";
                    text += *part_text;
                } else if (type->as_string() == "image_url") {
                    const auto* image = field(part.as_object(), "image_url");
                    const json::value* url =
                        image != nullptr && image->is_object() ? field(image->as_object(), "url") : nullptr;
                    if (url == nullptr || !url->is_string() || !data_url_payload(url->as_string())) {
                        return invalid(
                            param + ".content",
                            "image_url parts must hold a 'data:image/...;base64,' URL (the server does "
                            "not fetch remote URLs)");
                    }
                    if (!vision) {
                        return invalid(param + ".content",
                                       fmt::format("model '{}' does not take images", request.model));
                    }
                    if (request.image_url) {
                        return invalid(param + ".content", "only one image per request is supported");
                    }
                    request.image_url = std::string(url->as_string());
                } else {
                    return invalid(param + ".content", fmt::format("content part type '{}' is not supported",
                                                                   std::string_view(type->as_string())));
                }
            }
        } else {
            return invalid(param + ".content",
                           fmt::format("'{}.content' must be a string or an array", param));
        }
        if (*role == "user") {
            request.query = text;
        }
        rendered.emplace_back(std::move(*role), std::move(text));
    }
    if (vision) {
        if (!request.image_url) {
            return invalid("messages", fmt::format("model '{}' needs an image_url part", request.model));
        }
        request.prompts.push_back(request.query);
    } else {
        request.prompts.push_back(render_chat(rendered));
    }
    return request;
}

// ---- /v1/images/generations -------------------------------------------------------------------------------

/// A checked `/v1/images/generations` request.
struct image_request {
    std::string model;  ///< The OpenAI model name.
    std::string prompt; ///< What to paint.
    std::size_t n = 1;  ///< Images to generate.
    ImageConfig config; ///< Size and seed (image i uses seed + i).
};

inline parsed<image_request> parse_images(const json::object& body, const Limits& limits) {
    image_request request;
    auto model = required_string(body, "model");
    if (!model) {
        return unexpected<ApiError>(model.error());
    }
    request.model = std::move(*model);
    auto prompt = required_string(body, "prompt");
    if (!prompt) {
        return unexpected<ApiError>(prompt.error());
    }
    request.prompt = std::move(*prompt);
    auto n = optional_integer(body, "n", 1, limits.max_n);
    if (!n) {
        return unexpected<ApiError>(n.error());
    }
    request.n = static_cast<std::size_t>(n->value_or(1));
    if (const auto* size = field(body, "size"); size != nullptr) {
        unsigned width = 0;
        unsigned height = 0;
        char tail = 0;
        const std::string text = size->is_string() ? std::string(size->as_string()) : std::string();
        if (std::sscanf(text.c_str(), "%ux%u%c", &width, &height, &tail) != 2 || width == 0 || height == 0 ||
            width > limits.max_image_side || height > limits.max_image_side) {
            return invalid(
                "size", fmt::format("'size' must be \"WxH\" with sides from 1 to {}", limits.max_image_side));
        }
        request.config.width = width;
        request.config.height = height;
    }
    if (const auto* format = field(body, "response_format"); format != nullptr) {
        if (!format->is_string() || format->as_string() != "b64_json") {
            return invalid("response_format",
                           "'response_format' must be \"b64_json\" (the server keeps no image "
                           "URLs)");
        }
    }
    auto seed = optional_integer(body, "seed", 0, UINT64_MAX);
    if (!seed) {
        return unexpected<ApiError>(seed.error());
    }
    request.config.seed = *seed;
    return request;
}

} // namespace modelpool::http::detail
