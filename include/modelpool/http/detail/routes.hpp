// modelpool/http/detail/routes.hpp
//
// The routes: each answers one parsed request on its connection, in the OpenAI wire format, and records what
// the request-log line needs (status, model, tokens). Requests reach the pool through its completion-token
// operations, raced against the client's disconnect (`connection::unless_disconnected`); streams are read one
// chunk at a time and each chunk is written before the next is read, so a slow client slows the model down
// through the pool's bounded stream instead of being buffered for.
//
// Tokens: the server does not know the models' tokenizers. It counts a prompt's tokens as its
// whitespace-separated words, and a completion's tokens as the `TextChunk`s the model sent.
#pragma once

#include "modelpool/http/detail/base64.hpp"
#include "modelpool/http/detail/connection.hpp"
#include "modelpool/http/detail/openai.hpp"
#include "modelpool/http/detail/png.hpp"
#include "modelpool/http/detail/server_state.hpp"
#include "modelpool/http/errors.hpp"
#include "modelpool/offload.hpp"

#include <boost/json/serialize.hpp>

#include <bit>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace modelpool::http::detail {

/// One request being answered, and what its log line reports.
struct exchange {
    /// An exchange answering `request_` under `id_`.
    exchange(const bhttp::request<bhttp::string_body>& request_, std::string id_, bool keep_alive_,
             std::size_t route_ = 0)
        : request(request_), id(std::move(id_)), keep_alive(keep_alive_), route(route_) {}

    const bhttp::request<bhttp::string_body>& request; ///< The request.
    std::string id;                                    ///< Its x-request-id.
    bool keep_alive = true;                            ///< Keep the connection open after the response.
    std::size_t route = 0;                             ///< Index in `route_names`.
    unsigned status = 0;                               ///< The status sent (0: none yet).
    std::string model;                                 ///< The OpenAI model, when the request named one.
    std::size_t tokens = 0;                            ///< Prompt plus completion tokens.
    bool lost = false;                                 ///< The client went away: close the connection.
    std::optional<ApiError> error{}; ///< The error to answer, set by a route through `fail`.

    /// Makes `dispatch` answer `error_` once the route returns. (Routes do not co_await a response built from
    /// temporaries: g++ 12 miscompiles class temporaries holding strings inside a co_await operand.)
    void fail(ApiError error_) { error = std::move(error_); }
};

/// Sets the headers every response carries.
template <class Body> void common_headers(bhttp::response<Body>& response, const exchange& ex) {
    response.set("x-request-id", ex.id);
    response.set(bhttp::field::server, "modelpool");
    response.keep_alive(ex.keep_alive);
}

/// Sends `body` with `status` and `content_type`.
inline asio::awaitable<void> send_text(server_state& state, connection& conn, exchange& ex, unsigned status,
                                       std::string& body, std::string_view content_type,
                                       const ApiError* error = nullptr) {
    bhttp::response<bhttp::string_body> response;
    response.version(ex.request.version());
    response.result(status);
    response.set(bhttp::field::content_type, content_type);
    common_headers(response, ex);
    if (error != nullptr && error->retry_after) {
        response.set(bhttp::field::retry_after, std::to_string(error->retry_after->count()));
    }
    if (error != nullptr && !error->should_retry) {
        response.set("x-should-retry", "false");
    }
    response.body() = std::move(body);
    response.prepare_payload();
    ex.status = status;
    if (!co_await conn.write(response, state.options.limits.write_timeout)) {
        ex.lost = true;
    }
}

/// Sends `value` (a JSON value, object or array) as JSON with `status`.
template <class Json>
asio::awaitable<void> send_json(server_state& state, connection& conn, exchange& ex, unsigned status,
                                const Json& value) {
    std::string body = json::serialize(value);
    co_await send_text(state, conn, ex, status, body, "application/json");
}

/// `{"error": {...}}` as an OpenAI error body.
inline json::value error_body(const ApiError& error) {
    json::object inner;
    inner["message"] = error.message;
    inner["type"] = error.type;
    inner["param"] = error.param ? json::value(*error.param) : json::value(nullptr);
    inner["code"] = error.code.empty() ? json::value(nullptr) : json::value(error.code);
    json::object outer;
    outer["error"] = std::move(inner);
    return outer;
}

/// Sends `error` as an OpenAI error response (with Retry-After / x-should-retry as it says).
inline asio::awaitable<void> send_error(server_state& state, connection& conn, exchange& ex,
                                        const ApiError& error) {
    std::string body = json::serialize(error_body(error));
    co_await send_text(state, conn, ex, error.status, body, "application/json", &error);
}

/// The answer to a request whose client has gone: nothing is sent; 499 is logged.
inline void mark_lost(exchange& ex) {
    ex.lost = true;
    ex.status = 499;
}

/// The served model named in `model` and its capability, which must be one of `accepted`; else the error to
/// answer (404 for an unknown model, 400 for a model of another capability, 503 while the pool has no
/// worker).
inline parsed<std::pair<const ServedModel*, std::string>>
resolve_model(server_state& state, std::string_view model, std::string_view route,
              std::initializer_list<std::string_view> accepted) {
    const auto* served = state.find_model(model);
    if (served == nullptr) {
        return unexpected<ApiError>(ApiError{404, "invalid_request_error", "model_not_found",
                                             fmt::format("The model '{}' does not exist", model), "model"});
    }
    auto capability = state.capability(served->key);
    if (!capability) {
        auto error = to_api_error(PoolError(errc::no_workers, fmt::format("model '{}' (pool key '{}') has no "
                                                                          "workers yet",
                                                                          model, served->key)),
                                  state.pool.options());
        return unexpected<ApiError>(std::move(error));
    }
    for (const auto name : accepted) {
        if (*capability == name) {
            return std::pair<const ServedModel*, std::string>(served, std::move(*capability));
        }
    }
    return unexpected<ApiError>(ApiError::invalid(
        "model", fmt::format("model '{}' serves {}, which {} does not accept", model, *capability, route)));
}

// ---- GET routes
// ---------------------------------------------------------------------------------------------

inline asio::awaitable<void> handle_models(server_state& state, connection& conn, exchange& ex) {
    json::array data;
    for (const auto& model : state.options.models) {
        json::object entry;
        entry["id"] = model.name;
        entry["object"] = "model";
        entry["created"] = state.created;
        entry["owned_by"] = model.owned_by;
        data.push_back(std::move(entry));
    }
    json::object body;
    body["object"] = "list";
    body["data"] = std::move(data);
    co_await send_json(state, conn, ex, 200, body);
}

inline asio::awaitable<void> handle_readyz(server_state& state, connection& conn, exchange& ex) {
    json::object body;
    const bool ready = state.ready();
    body["status"] = ready ? "ready" : state.draining.load() ? "draining" : "not ready";
    co_await send_json(state, conn, ex, ready ? 200 : 503, body);
}

inline asio::awaitable<void> handle_metrics(server_state& state, connection& conn, exchange& ex) {
    std::string text = state.pool.prometheus();
    text += state.metrics.prometheus();
    co_await send_text(state, conn, ex, 200, text, "text/plain; version=0.0.4; charset=utf-8");
}

// ---- /v1/embeddings
// -------------------------------------------------------------------------------------------

/// The little-endian float32 bytes of `vector`, base64-encoded (what openai-node decodes).
inline std::string embedding_base64(const Embedding& vector) {
    std::vector<std::uint8_t> bytes;
    bytes.reserve(vector.size() * 4);
    for (const float value : vector) {
        const auto bits = std::bit_cast<std::uint32_t>(value);
        for (int shift = 0; shift < 32; shift += 8) {
            bytes.push_back(static_cast<std::uint8_t>(bits >> shift));
        }
    }
    return base64_encode(bytes);
}

inline asio::awaitable<void> handle_embeddings(server_state& state, connection& conn, exchange& ex,
                                               const json::object& body) {
    auto request = parse_embeddings(body, state.options.limits);
    if (!request) {
        co_return ex.fail(request.error());
    }
    ex.model = request->model;
    auto resolved =
        resolve_model(state, request->model, "/v1/embeddings", {"text_embedding", "image_embedding"});
    if (!resolved) {
        co_return ex.fail(resolved.error());
    }
    const std::string& key = resolved->first->key;
    std::vector<Embedding> vectors;
    std::size_t prompt_tokens = 0;
    if (resolved->second == "text_embedding") {
        for (const auto& input : request->inputs) {
            prompt_tokens += count_words(input);
        }
        if (request->single) {
            auto operation = state.pool.embed(key, request->inputs.front(), asio::use_awaitable);
            auto outcome = co_await conn.unless_disconnected(std::move(operation));
            if (!outcome) {
                co_return mark_lost(ex);
            }
            if (!*outcome) {
                co_return ex.fail(to_api_error(outcome->error(), state.pool.options()));
            }
            vectors.push_back(std::move(**outcome));
        } else {
            // One batch_embed call for the whole array.
            auto operation = state.pool.batch_embed(key, request->inputs, std::optional<std::string>{},
                                                    asio::use_awaitable);
            auto outcome = co_await conn.unless_disconnected(std::move(operation));
            if (!outcome) {
                co_return mark_lost(ex);
            }
            if (!*outcome) {
                co_return ex.fail(to_api_error(outcome->error(), state.pool.options()));
            }
            vectors = std::move(**outcome);
        }
    } else {
        // image_embedding (extension): each input is a data:image/...;base64, URL, embedded with
        // embed_image_base64 (batch_embed_images takes file paths, which HTTP clients cannot give).
        for (std::size_t i = 0; i < request->inputs.size(); ++i) {
            auto payload = data_url_payload(request->inputs[i]);
            if (!payload) {
                co_return ex.fail(ApiError::invalid(
                    "input", fmt::format("'input[{}]' must be a data:image/...;base64, URL for "
                                         "image model '{}'",
                                         i, request->model)));
            }
            auto operation = state.pool.embed_image_base64(key, std::string(*payload), asio::use_awaitable);
            auto outcome = co_await conn.unless_disconnected(std::move(operation));
            if (!outcome) {
                co_return mark_lost(ex);
            }
            if (!*outcome) {
                co_return ex.fail(to_api_error(outcome->error(), state.pool.options()));
            }
            vectors.push_back(std::move(**outcome));
        }
    }
    if (vectors.size() != request->inputs.size()) {
        co_return ex.fail(to_api_error(
            PoolError(errc::model_error, fmt::format("model '{}' returned {} vectors for {} inputs",
                                                     request->model, vectors.size(), request->inputs.size())),
            state.pool.options()));
    }
    json::array data;
    for (std::size_t i = 0; i < vectors.size(); ++i) {
        auto& vector = vectors[i];
        if (request->dimensions && *request->dimensions < vector.size()) {
            vector.resize(*request->dimensions);
        }
        json::object entry;
        entry["object"] = "embedding";
        entry["index"] = i;
        if (request->base64) {
            entry["embedding"] = embedding_base64(vector);
        } else {
            json::array values;
            values.reserve(vector.size());
            for (const float value : vector) {
                values.emplace_back(static_cast<double>(value));
            }
            entry["embedding"] = std::move(values);
        }
        data.push_back(std::move(entry));
    }
    json::object usage;
    usage["prompt_tokens"] = prompt_tokens;
    usage["total_tokens"] = prompt_tokens;
    json::object response;
    response["object"] = "list";
    response["data"] = std::move(data);
    response["model"] = request->model;
    response["usage"] = std::move(usage);
    ex.tokens = prompt_tokens;
    co_await send_json(state, conn, ex, 200, response);
}

// ---- /v1/completions and /v1/chat/completions
// ---------------------------------------------------------------

/// The text of a chunk (nullopt for chunks without text); a `CompletionStats` chunk sets `finish_reason`.
inline std::optional<std::string> chunk_text(TextChunk& chunk, std::string&) {
    return std::move(chunk.text);
}
inline std::optional<std::string> chunk_text(CompletionChunk& chunk, std::string& finish_reason) {
    if (auto* text = std::get_if<TextChunk>(&chunk)) {
        return std::move(text->text);
    }
    if (auto* stats = std::get_if<CompletionStats>(&chunk);
        stats != nullptr && !stats->finish_reason.empty()) {
        finish_reason = stats->finish_reason;
    }
    return std::nullopt; // tool calls are not forwarded yet
}

/// What one completion response shares between its chunks or choices.
struct completion_frame {
    std::string id;         ///< "cmpl-..." or "chatcmpl-...".
    std::int64_t created{}; ///< Unix seconds.
    std::string model;      ///< The OpenAI model name.
    bool chat = false;      ///< Chat format.
    /// `stream_options.include_usage`: every chunk carries `"usage": null` until the last one has the counts,
    /// as OpenAI frames it.
    bool include_usage = false;
};

/// A stream chunk (`object` "text_completion" or "chat.completion.chunk") for choice `index`.
inline json::object stream_chunk(const completion_frame& frame, std::size_t index, json::value piece,
                                 json::value finish_reason) {
    json::object choice;
    choice["index"] = index;
    if (frame.chat) {
        choice["delta"] = std::move(piece);
    } else {
        choice["text"] = std::move(piece);
        choice["logprobs"] = nullptr;
    }
    choice["finish_reason"] = std::move(finish_reason);
    json::array choices;
    choices.push_back(std::move(choice));
    json::object chunk;
    chunk["id"] = frame.id;
    chunk["object"] = frame.chat ? "chat.completion.chunk" : "text_completion";
    chunk["created"] = frame.created;
    chunk["model"] = frame.model;
    chunk["choices"] = std::move(choices);
    if (frame.include_usage) {
        chunk["usage"] = nullptr;
    }
    return chunk;
}

/// `usage` for `prompt` and `completion` tokens.
inline json::object usage_object(std::size_t prompt, std::size_t completion) {
    json::object usage;
    usage["prompt_tokens"] = prompt;
    usage["completion_tokens"] = completion;
    usage["total_tokens"] = prompt + completion;
    return usage;
}

/// Writes one server-sent event `data: <payload>\n\n`; false if the client has gone.
inline asio::awaitable<bool> send_event(server_state& state, connection& conn, std::string_view payload) {
    std::string event;
    event.reserve(payload.size() + 8);
    event += "data: ";
    event += payload;
    event += "\n\n";
    co_return co_await conn.write_chunk(event, state.options.limits.write_timeout);
}

/// Answers a completion or chat request: choice `c` (of prompts x n) reads the stream `open(c / n)` gives.
template <class Chunk, class Open>
asio::awaitable<void> run_completion(server_state& state, connection& conn, exchange& ex,
                                     const completion_request& request, Open open) {
    const completion_frame frame{
        (request.chat ? "chatcmpl-" : "cmpl-") + state.new_id(),
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count(),
        request.model, request.chat, request.include_usage};
    std::size_t prompt_tokens = 0;
    for (const auto& prompt : request.prompts) {
        prompt_tokens += count_words(prompt) * request.n;
    }
    std::size_t completion_tokens = 0;
    const std::size_t choices = request.prompts.size() * request.n;
    const auto write_timeout = state.options.limits.write_timeout;

    // The first stream is opened before anything is sent, so that admission errors get their own status.
    auto first = co_await open(0);
    if (!first) {
        co_return ex.fail(to_api_error(first.error(), state.pool.options()));
    }
    std::optional<Stream<Chunk>> stream(std::move(*first));
    json::array finished; // non-streaming: the choices
    if (request.stream) {
        bhttp::response<bhttp::empty_body> header;
        header.version(ex.request.version());
        header.result(bhttp::status::ok);
        header.set(bhttp::field::content_type, "text/event-stream");
        header.set(bhttp::field::cache_control, "no-cache");
        common_headers(header, ex);
        ex.status = 200;
        if (!co_await conn.write_header(header, write_timeout)) {
            co_return mark_lost(ex);
        }
    }
    // Ends a stream after an error: an OpenAI error event (the official clients raise it), no [DONE].
    auto stream_error = [&](const PoolError& error) -> asio::awaitable<void> {
        auto api = to_api_error(error, state.pool.options());
        std::string payload = json::serialize(error_body(api));
        if (!co_await send_event(state, conn, payload) || !co_await conn.write_last_chunk(write_timeout)) {
            ex.lost = true;
        }
        ex.keep_alive = false;
    };
    for (std::size_t c = 0; c < choices; ++c) {
        if (!stream) {
            auto next_stream = co_await open(c / request.n);
            if (!next_stream) {
                if (request.stream) {
                    co_return co_await stream_error(next_stream.error());
                }
                co_return ex.fail(to_api_error(next_stream.error(), state.pool.options()));
            }
            stream.emplace(std::move(*next_stream));
        }
        if (request.stream && request.chat) {
            json::object delta;
            delta["role"] = "assistant";
            delta["content"] = "";
            std::string payload = json::serialize(stream_chunk(frame, c, std::move(delta), nullptr));
            if (!co_await send_event(state, conn, payload)) {
                co_return mark_lost(ex);
            }
        }
        std::string text;
        std::string finish_reason;
        std::size_t tokens = 0;
        for (;;) {
            auto operation = stream->async_next(asio::use_awaitable);
            auto next = co_await conn.unless_disconnected(std::move(operation));
            if (!next) {
                co_return mark_lost(ex); // `stream` is destroyed on return: the model stops at its next chunk
            }
            if (!*next) {
                if (request.stream) {
                    co_return co_await stream_error(next->error());
                }
                co_return ex.fail(to_api_error(next->error(), state.pool.options()));
            }
            if (!**next) {
                break; // the model finished
            }
            auto piece = chunk_text(***next, finish_reason);
            if (!piece) {
                continue;
            }
            ++tokens;
            if (!request.stream) {
                text += *piece;
                continue;
            }
            json::value content;
            if (request.chat) {
                json::object delta;
                delta["content"] = *piece;
                content = std::move(delta);
            } else {
                content = json::string(*piece);
            }
            std::string payload = json::serialize(stream_chunk(frame, c, std::move(content), nullptr));
            if (!co_await send_event(state, conn, payload)) {
                co_return mark_lost(ex);
            }
        }
        stream.reset();
        completion_tokens += tokens;
        if (finish_reason.empty()) {
            finish_reason = tokens >= request.params.max_tokens ? "length" : "stop";
        }
        if (request.stream) {
            json::value empty = request.chat ? json::value(json::object{}) : json::value(json::string{});
            std::string payload =
                json::serialize(stream_chunk(frame, c, std::move(empty), json::string(finish_reason)));
            if (!co_await send_event(state, conn, payload)) {
                co_return mark_lost(ex);
            }
        } else {
            json::object choice;
            choice["index"] = c;
            if (request.chat) {
                json::object message;
                message["role"] = "assistant";
                message["content"] = text;
                choice["message"] = std::move(message);
            } else {
                choice["text"] = text;
                choice["logprobs"] = nullptr;
            }
            choice["finish_reason"] = finish_reason;
            finished.push_back(std::move(choice));
        }
    }
    ex.tokens = prompt_tokens + completion_tokens;
    if (!request.stream) {
        json::object response;
        response["id"] = frame.id;
        response["object"] = request.chat ? "chat.completion" : "text_completion";
        response["created"] = frame.created;
        response["model"] = frame.model;
        response["choices"] = std::move(finished);
        response["usage"] = usage_object(prompt_tokens, completion_tokens);
        co_return co_await send_json(state, conn, ex, 200, response);
    }
    if (request.include_usage) {
        json::object chunk;
        chunk["id"] = frame.id;
        chunk["object"] = frame.chat ? "chat.completion.chunk" : "text_completion";
        chunk["created"] = frame.created;
        chunk["model"] = frame.model;
        chunk["choices"] = json::array{};
        chunk["usage"] = usage_object(prompt_tokens, completion_tokens);
        std::string payload = json::serialize(chunk);
        if (!co_await send_event(state, conn, payload)) {
            co_return mark_lost(ex);
        }
    }
    if (!co_await send_event(state, conn, "[DONE]") || !co_await conn.write_last_chunk(write_timeout)) {
        co_return mark_lost(ex);
    }
}

inline asio::awaitable<void> handle_completions(server_state& state, connection& conn, exchange& ex,
                                                const json::object& body, bool chat) {
    // The model's capability decides how chat content is read (vision keys take an image), so resolve first.
    const auto* model_field = field(body, "model");
    if (model_field == nullptr || !model_field->is_string()) {
        co_return ex.fail(ApiError::invalid("model", "'model' is required"));
    }
    ex.model = std::string(model_field->as_string());
    const std::string_view route = chat ? "/v1/chat/completions" : "/v1/completions";
    auto resolved = chat ? resolve_model(state, ex.model, route, {"text_to_text", "vision"})
                         : resolve_model(state, ex.model, route, {"text_to_text"});
    if (!resolved) {
        co_return ex.fail(resolved.error());
    }
    const bool vision = resolved->second == "vision";
    auto request =
        chat ? parse_chat(body, state.options.limits, vision) : parse_completion(body, state.options.limits);
    if (!request) {
        co_return ex.fail(request.error());
    }
    const std::string key = resolved->first->key;
    if (vision) {
        // The vision model receives the data URL itself through describe_url (documented extension).
        co_return co_await run_completion<TextChunk>(
            state, conn, ex, *request, [&](std::size_t) -> asio::awaitable<result<Stream<TextChunk>>> {
                auto operation =
                    state.pool.describe_url(key, *request->image_url, request->query, asio::use_awaitable);
                co_return co_await std::move(operation);
            });
    }
    co_await run_completion<CompletionChunk>(
        state, conn, ex, *request, [&](std::size_t p) -> asio::awaitable<result<Stream<CompletionChunk>>> {
            auto operation =
                state.pool.prompt(key, request->prompts[p], request->params, asio::use_awaitable);
            co_return co_await std::move(operation);
        });
}

// ---- /v1/images/generations
// -----------------------------------------------------------------------------------

inline asio::awaitable<void> handle_images(server_state& state, connection& conn, exchange& ex,
                                           const json::object& body) {
    auto request = parse_images(body, state.options.limits);
    if (!request) {
        co_return ex.fail(request.error());
    }
    ex.model = request->model;
    auto resolved = resolve_model(state, request->model, "/v1/images/generations", {"text_to_image"});
    if (!resolved) {
        co_return ex.fail(resolved.error());
    }
    json::array data;
    for (std::size_t i = 0; i < request->n; ++i) {
        ImageConfig config = request->config;
        if (config.seed) {
            *config.seed += i;
        }
        auto operation =
            state.pool.generate_image(resolved->first->key, request->prompt, config, asio::use_awaitable);
        auto opened = co_await std::move(operation);
        if (!opened) {
            co_return ex.fail(to_api_error(opened.error(), state.pool.options()));
        }
        std::optional<Image> image;
        for (;;) {
            auto operation = opened->async_next(asio::use_awaitable);
            auto next = co_await conn.unless_disconnected(std::move(operation));
            if (!next) {
                co_return mark_lost(ex);
            }
            if (!*next) {
                co_return ex.fail(to_api_error(next->error(), state.pool.options()));
            }
            if (!**next) {
                break;
            }
            if (auto* last = std::get_if<Image>(&***next)) {
                image = std::move(*last);
            }
        }
        if (!image) {
            co_return ex.fail(
                to_api_error(PoolError(errc::model_error,
                                       fmt::format("model '{}' ended without an image", request->model)),
                             state.pool.options()));
        }
        // PNG encoding and base64 are CPU work: off the io threads.
        auto encoded = co_await offload(state.pool.blocking_executor(), [&image]() -> result<std::string> {
            auto png = encode_png(*image);
            if (!png) {
                return fail(errc::model_error, "the model's image cannot be sent: {}", png.error().message());
            }
            return base64_encode(*png);
        });
        if (!encoded) {
            co_return ex.fail(to_api_error(encoded.error(), state.pool.options()));
        }
        json::object entry;
        entry["b64_json"] = std::move(*encoded);
        data.push_back(std::move(entry));
    }
    json::object response;
    response["created"] =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    response["data"] = std::move(data);
    co_await send_json(state, conn, ex, 200, response);
}

// ---- dispatch
// -------------------------------------------------------------------------------------------------

/// Routes `ex.request` by path and method; POST bodies are parsed as JSON objects first.
inline asio::awaitable<void> route_request(server_state& state, connection& conn, exchange& ex) {
    const auto& request = ex.request;
    std::string_view target = request.target();
    target = target.substr(0, target.find('?'));
    ex.route = route_index(target);
    const std::string_view route = route_names[ex.route];
    const bool get = ex.route == route_index("/v1/models") || ex.route == route_index("/healthz") ||
                     ex.route == route_index("/readyz") || ex.route == route_index("/metrics");
    if (route == "other") {
        co_return ex.fail(
            ApiError{404, "invalid_request_error", "not_found", fmt::format("no route for {}", target)});
    }
    const auto method = request.method();
    if ((get && method != bhttp::verb::get && method != bhttp::verb::head) ||
        (!get && method != bhttp::verb::post)) {
        co_return ex.fail(ApiError{405, "invalid_request_error", "method_not_allowed",
                                   fmt::format("{} takes {}", route, get ? "GET" : "POST")});
    }
    if (route == "/healthz") {
        json::object ok;
        ok["status"] = "ok";
        co_return co_await send_json(state, conn, ex, 200, ok);
    }
    if (route == "/readyz") {
        co_return co_await handle_readyz(state, conn, ex);
    }
    if (route == "/metrics") {
        co_return co_await handle_metrics(state, conn, ex);
    }
    if (route == "/v1/models") {
        co_return co_await handle_models(state, conn, ex);
    }
    auto body = parse_object(request.body());
    if (!body) {
        co_return ex.fail(body.error());
    }
    if (route == "/v1/embeddings") {
        co_return co_await handle_embeddings(state, conn, ex, *body);
    }
    if (route == "/v1/images/generations") {
        co_return co_await handle_images(state, conn, ex, *body);
    }
    co_await handle_completions(state, conn, ex, *body, route == "/v1/chat/completions");
}

/// Answers `ex.request`: the route's response, or the error it failed with.
inline asio::awaitable<void> dispatch(server_state& state, connection& conn, exchange& ex) {
    co_await route_request(state, conn, ex);
    if (ex.error && ex.status == 0 && !ex.lost) {
        co_await send_error(state, conn, ex, *ex.error);
    }
}

} // namespace modelpool::http::detail
