// modelpool/http/options.hpp
//
// The settings of `modelpool::http::Server`: where it listens, which OpenAI model names it serves (each maps
// to one pool key, whose capability decides the routes it answers), its limits and its logger. Plain
// aggregates, built with designated initialisers:
//
//     http::Server server(pool, {.port = 8080,
//                                .models = {{.name = "text-embedding-demo", .key = "sentences"},
//                                           {.name = "demo-chat", .key = "aesop"}}});
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace spdlog {
class logger;
} // namespace spdlog

namespace modelpool::http {

/// One model the server serves: the name OpenAI clients send as `model`, and the pool key it maps to. The
/// capability (and so the routes that accept it) comes from the pool: `pool.snapshot(key)->capability`.
struct ServedModel {
    std::string name; ///< The OpenAI model name, e.g. "text-embedding-demo". Unique among the served models.
    std::string key;  ///< The pool key serving it, e.g. "sentences".
    std::string owned_by = "modelpool"; ///< What `GET /v1/models` reports as `owned_by`.
};

/// Bounds on what one client may ask for. Requests beyond them get 400 (fields), 413 (body), 431 (headers) or
/// 503 (connections).
struct Limits {
    std::size_t body_bytes = 16 * 1024 * 1024; ///< Largest request body (413 beyond).
    std::size_t header_bytes = 16 * 1024;      ///< Largest request header block (431 beyond).
    /// Longest time to receive one request's header and body once its first byte arrived (the connection
    /// is closed beyond it).
    std::chrono::milliseconds read_timeout{30'000};
    /// Longest time a keep-alive connection may wait for its next request before the server closes it.
    std::chrono::milliseconds idle_timeout{60'000};
    /// Longest time one response write (a whole body, or one streamed event) may take: a client that stops
    /// reading a stream for longer is disconnected (and its request cancelled).
    std::chrono::milliseconds write_timeout{60'000};
    std::size_t max_connections = 1024; ///< Open connections; beyond them a new one gets 503 and is closed.
    std::size_t max_embedding_inputs = 2048; ///< Inputs in one `/v1/embeddings` request (as OpenAI caps it).
    std::size_t max_n = 8;                   ///< Largest `n` (choices or images per request).
    std::size_t max_tokens = 4096;           ///< Largest `max_tokens` / `max_completion_tokens`.
    std::uint32_t max_image_side = 4096;     ///< Largest width or height in `/v1/images/generations`.
};

/// See the file comment. Every field has a default; `models` is what makes the server useful.
struct ServerOptions {
    std::string host = "127.0.0.1"; ///< Address to listen on ("0.0.0.0" or "::" for every interface).
    std::uint16_t port = 8000; ///< Port to listen on; 0 picks a free (ephemeral) one, see `Server::port()`.
    std::vector<ServedModel> models{}; ///< The served models, in the order `GET /v1/models` lists them.
    Limits limits{};                   ///< Request limits.
    /// Default `drain()` grace: how long in-flight requests and streams may go on after a drain began.
    std::chrono::milliseconds shutdown_grace{30'000};
    /// The logger for the one line per request and the server's events. Null: the pool's logger.
    std::shared_ptr<spdlog::logger> logger{};
};

} // namespace modelpool::http
