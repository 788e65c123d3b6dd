// modelpool/http/server.hpp
//
// `modelpool::http::Server`: an OpenAI-compatible HTTP/1.1 front end for a `Pool` (Boost.Beast, Boost.JSON).
// An application mounts its pool in a few lines:
//
//     modelpool::Pool pool;
//     pool.register_text_embedding_model("sentences", load_sentences, {.per_worker_mb = 64});
//     modelpool::http::Server server(pool, {.port = 8000,
//                                           .models = {{.name = "text-embedding-demo", .key =
//                                           "sentences"}}});
//     if (auto port = server.listen(); !port) { ... }
//     ...                                  // serve until told to stop, then:
//     server.drain(30s, asio::use_future).wait();
//
// Routes (OpenAI wire format): GET /v1/models; POST /v1/embeddings (text_embedding keys; image_embedding keys
// take `data:image/...;base64,` inputs, an extension); POST /v1/completions and /v1/chat/completions
// (text_to_text keys, `stream` as server-sent events ending with `data: [DONE]`; chat to a vision key takes
// one `image_url` part with a data URL, passed to the model's `describe_url`, and the last user message's
// text as the query); POST /v1/images/generations (text_to_image keys, PNG as `b64_json`); GET /healthz
// (live), GET /readyz (503 while draining or while a served registered model with min_workers > 0 has no
// ready worker), GET /metrics (the pool's Prometheus text plus the server's own). Errors: see errors.hpp.
// Chat template and token counting: see detail/openai.hpp and detail/routes.hpp.
//
// Every response carries `x-request-id` (the client's, when it sent a printable one of up to 128 bytes, else
// a new one); the server logs one line per request (id, method, route, model, status, duration, tokens) at
// info level. A client that disconnects cancels its request: a queued one leaves the pool's queue, a running
// one is interrupted, a stream is destroyed so the model stops at its next chunk.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/error.hpp"
#include "modelpool/http/detail/connection.hpp"
#include "modelpool/http/detail/routes.hpp"
#include "modelpool/http/detail/server_state.hpp"
#include "modelpool/http/errors.hpp"
#include "modelpool/http/options.hpp"
#include "modelpool/pool.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>

namespace modelpool::http {

/// See the file comment.
///
/// @par Thread Safety
/// Distinct objects: Safe. Shared objects: Safe (`listen` once, before serving; the rest from any thread).
///
/// @par Lifetime
/// The pool must outlive the server's connections: drain (or stop) the server, and let the drain complete,
/// before the pool stops. Destroying the server stops it (`stop()`) without waiting.
class Server {
public:
    /// A server for `pool` running on the pool's io_context.
    Server(Pool& pool, ServerOptions options) : Server(pool, pool.get_executor(), std::move(options)) {}

    /// A server for `pool` running on `executor` (e.g. the application's own io_context); each connection
    /// runs on a strand of it.
    Server(Pool& pool, asio::any_io_executor executor, ServerOptions options)
        : state_(std::make_shared<detail::server_state>(pool, std::move(executor), std::move(options))) {}

    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    /// Stops the server (`stop()`) without waiting for its connections to close.
    ~Server() { stop(); }

    /// Checks the options, binds `host:port` and starts accepting. Returns the bound port (the chosen one
    /// when `port` is 0), or `invalid_argument` naming what is wrong (a bad host, a duplicate or empty model
    /// name, an empty key, a port in use, a second call).
    result<std::uint16_t> listen() {
        auto& state = *state_;
        std::set<std::string, std::less<>> names;
        for (const auto& model : state.options.models) {
            if (model.name.empty() || model.key.empty()) {
                return fail(errc::invalid_argument,
                            "served model '{}' -> key '{}': name and key must be non-empty", model.name,
                            model.key);
            }
            if (!names.insert(model.name).second) {
                return fail(errc::invalid_argument, "served model name '{}' appears twice", model.name);
            }
        }
        if (state.acceptor.is_open() || state.draining.load()) {
            return fail(errc::invalid_argument, "listen() was already called");
        }
        boost::system::error_code ec;
        const auto address =
            asio::ip::make_address(state.options.host == "localhost" ? "127.0.0.1" : state.options.host, ec);
        if (ec) {
            return fail(errc::invalid_argument, "host '{}' is not an IP address: {}", state.options.host,
                        ec.message());
        }
        const detail::tcp::endpoint endpoint(address, state.options.port);
        auto& acceptor = state.acceptor;
        if (acceptor.open(endpoint.protocol(), ec); !ec) {
            acceptor.set_option(asio::socket_base::reuse_address(true), ec);
        }
        if (!ec) {
            acceptor.bind(endpoint, ec);
        }
        if (!ec) {
            acceptor.listen(asio::socket_base::max_listen_connections, ec);
        }
        if (ec) {
            boost::system::error_code ignored;
            acceptor.close(ignored);
            return fail(errc::invalid_argument, "cannot listen on {}:{}: {}", state.options.host,
                        state.options.port, ec.message());
        }
        port_ = acceptor.local_endpoint(ec).port();
        state.logger->info("http: listening on {}:{} ({} models)", state.options.host, port_,
                           state.options.models.size());
        asio::co_spawn(state.strand, accept_loop(state_), [state = state_](std::exception_ptr error) {
            log_exception(*state, error, "accept loop");
        });
        return port_;
    }

    /// The bound port (0 before `listen()`).
    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }

    /// What `/readyz` answers: not draining, the pool not stopping, every served registered model with
    /// `min_workers` > 0 has a ready worker.
    [[nodiscard]] bool ready() const { return state_->ready(); }

    /// True once a drain (or stop) began.
    [[nodiscard]] bool draining() const noexcept { return state_->draining.load(); }

    /// Requests being served now.
    [[nodiscard]] std::int64_t in_flight() const { return state_->metrics.in_flight(); }

    /// Open connections.
    [[nodiscard]] std::size_t connections() const { return state_->connection_count(); }

    /// The server's own metrics (Prometheus text), as `/metrics` appends them to the pool's.
    [[nodiscard]] std::string prometheus() const { return state_->metrics.prometheus(); }

    /// Drains the server, then completes `token` with `void(std::exception_ptr)` (null) once every connection
    /// has closed:
    /// 1. at once: `ready()` and `/readyz` turn false/503; idle keep-alive connections are closed; every
    ///    later response carries `Connection: close`; new connections are still accepted and served;
    /// 2. when no request is in flight, or after `grace`, whichever comes first: the listening socket is
    ///    closed (new connections are refused) and every remaining connection is closed, which cancels its
    ///    request (a stream's model stops at its next chunk).
    /// A later call with a shorter grace shortens a drain in progress. Safe from any thread.
    template <class CompletionToken> auto drain(std::chrono::milliseconds grace, CompletionToken&& token) {
        if (!state_->draining.exchange(true)) { // not ready from now on, before the drain coroutine runs
            state_->logger->info("http: draining ({} ms grace, {} requests in flight)", grace.count(),
                                 state_->metrics.in_flight());
        }
        return asio::co_spawn(state_->strand, drain_coroutine(state_, grace),
                              std::forward<CompletionToken>(token));
    }

    /// Drains with `ServerOptions::shutdown_grace` (see the other overload).
    template <class CompletionToken> auto drain(CompletionToken&& token) {
        return drain(state_->options.shutdown_grace, std::forward<CompletionToken>(token));
    }

    /// Stops at once: a drain with no grace, not waited for.
    void stop() {
        drain(std::chrono::milliseconds{0},
              [state = state_](std::exception_ptr error) { log_exception(*state, error, "drain"); });
    }

private:
    using state_ptr = std::shared_ptr<detail::server_state>;

    static void log_exception(detail::server_state& state, const std::exception_ptr& error,
                              std::string_view what) {
        if (!error) {
            return;
        }
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            state.logger->error("http: {} ended with an exception: {}", what, e.what());
        } catch (...) {
            state.logger->error("http: {} ended with an unknown exception", what);
        }
    }

    static asio::awaitable<void> accept_loop(state_ptr state) {
        std::uint64_t next_id = 0;
        for (;;) {
            auto [ec, socket] = co_await state->acceptor.async_accept(
                asio::any_io_executor(asio::make_strand(state->executor)), detail::as_tuple_awaitable);
            if (ec) {
                if (ec == asio::error::operation_aborted || !state->acceptor.is_open() ||
                    state->closed.load()) {
                    co_return;
                }
                // E.g. out of file descriptors: log, wait a little, go on.
                state->logger->warn("http: accept failed: {}", ec.message());
                asio::steady_timer pause(state->strand, std::chrono::milliseconds{50});
                co_await pause.async_wait(detail::as_tuple_awaitable);
                continue;
            }
            auto conn = std::make_shared<detail::connection>(++next_id, std::move(socket));
            bool refused = false;
            {
                std::lock_guard lock(state->mutex);
                refused = state->connections.size() >= state->options.limits.max_connections;
                if (!refused) {
                    state->connections.emplace(conn->id(), conn);
                }
            }
            auto executor = conn->stream().get_executor();
            if (refused) {
                asio::co_spawn(executor, refuse(state, conn), [state](std::exception_ptr error) {
                    log_exception(*state, error, "refusal");
                });
                continue;
            }
            asio::co_spawn(executor, session(state, conn),
                           [state, id = conn->id()](std::exception_ptr error) {
                               log_exception(*state, error, "connection");
                               {
                                   std::lock_guard lock(state->mutex);
                                   state->connections.erase(id);
                               }
                               state->notify();
                           });
        }
    }

    /// Answers a connection beyond `max_connections` with 503 and closes it.
    static asio::awaitable<void> refuse(state_ptr state, std::shared_ptr<detail::connection> conn) {
        detail::bhttp::request<detail::bhttp::string_body> none;
        detail::exchange ex{none, state->new_id(), false, detail::route_names.size() - 1};
        ApiError error{503, "server_error", "too_many_connections",
                       fmt::format("the server has its maximum of {} connections open",
                                   state->options.limits.max_connections)};
        error.retry_after = std::chrono::seconds{1};
        co_await detail::send_error(*state, *conn, ex, error);
        state->metrics.count(ex.route, 503);
        co_await conn->linger_close(state->options.limits.header_bytes, std::chrono::seconds{1});
    }

    /// The client's x-request-id when it is printable and at most 128 bytes, else a new one.
    static std::string request_id(detail::server_state& state, std::string_view given) {
        const bool usable = !given.empty() && given.size() <= 128 &&
                            std::all_of(given.begin(), given.end(), [](char c) { return c > 32 && c < 127; });
        return usable ? std::string(given) : state.new_id();
    }

    /// Serves one connection: reads requests one at a time, answers each, until the client closes, a limit
    /// or timeout ends it, a response said `Connection: close`, or a drain closes it.
    static asio::awaitable<void> session(state_ptr state, std::shared_ptr<detail::connection> conn) {
        namespace bhttp = detail::bhttp;
        const auto& limits = state->options.limits;
        auto& stream = conn->stream();
        std::size_t served = 0;
        for (;;) {
            // Idle: wait for the first byte of the next request.
            conn->idle = true;
            if (served > 0 && state->draining.load()) {
                break; // a drain closes idle connections (new ones are still served during the grace)
            }
            if (conn->buffer().size() == 0) {
                stream.expires_after(limits.idle_timeout);
                auto [ec, bytes] =
                    co_await stream.async_read_some(conn->buffer().prepare(4096), detail::as_tuple_awaitable);
                if (ec) {
                    break;
                }
                conn->buffer().commit(bytes);
            }
            conn->idle = false;
            bhttp::request_parser<bhttp::string_body> parser;
            parser.header_limit(
                static_cast<std::uint32_t>(std::min<std::size_t>(limits.header_bytes, UINT32_MAX)));
            parser.body_limit(limits.body_bytes);
            stream.expires_after(limits.read_timeout);
            auto [ec, bytes] =
                co_await bhttp::async_read(stream, conn->buffer(), parser, detail::as_tuple_awaitable);
            (void)bytes;
            stream.expires_never();
            if (ec) {
                std::optional<ApiError> error;
                if (ec == bhttp::error::body_limit) {
                    error = ApiError{413, "invalid_request_error", "request_too_large",
                                     fmt::format("request body exceeds {} bytes", limits.body_bytes)};
                } else if (ec == bhttp::error::header_limit) {
                    error = ApiError{431, "invalid_request_error", "headers_too_large",
                                     fmt::format("request headers exceed {} bytes", limits.header_bytes)};
                } else if (ec.category() == bhttp::make_error_code(bhttp::error::bad_target).category() &&
                           ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message) {
                    error = ApiError{400, "invalid_request_error", "bad_request",
                                     fmt::format("malformed HTTP request: {}", ec.message())};
                }
                if (error) {
                    bhttp::request<bhttp::string_body> none;
                    detail::exchange ex{none, state->new_id(), false, detail::route_names.size() - 1};
                    co_await detail::send_error(*state, *conn, ex, *error);
                    state->metrics.count(ex.route, error->status);
                    state->logger->info("http: {} rejected: {} {}", ex.id, error->status, error->message);
                    co_await conn->linger_close(limits.body_bytes + limits.header_bytes,
                                                std::chrono::seconds{1});
                }
                break;
            }
            auto request = parser.release();
            const auto started = std::chrono::steady_clock::now();
            detail::exchange ex{request, request_id(*state, request["x-request-id"]),
                                request.keep_alive() && !state->draining.load()};
            state->metrics.begin();
            ++served;
            bool failed = false;
            try {
                co_await detail::dispatch(*state, *conn, ex);
            } catch (const std::exception& e) {
                // A bug, not a client mistake: answered 500 below if nothing was sent yet; the connection
                // closes.
                state->logger->error("http: {} failed: {}", ex.id, e.what());
                failed = true;
            }
            if (failed) {
                ex.keep_alive = false;
                if (ex.status == 0) {
                    ApiError error{500, "server_error", "internal_error", "internal server error"};
                    error.should_retry = false;
                    co_await detail::send_error(*state, *conn, ex, error);
                }
            }
            const auto elapsed = std::chrono::steady_clock::now() - started;
            state->metrics.end(ex.route, ex.status, elapsed);
            state->logger->info("http: {} {} {} model={} status={} duration_ms={:.1f} tokens={}", ex.id,
                                std::string_view(request.method_string()), detail::route_names[ex.route],
                                ex.model.empty() ? "-" : ex.model, ex.status,
                                std::chrono::duration<double, std::milli>(elapsed).count(), ex.tokens);
            if (state->draining.load() && state->metrics.in_flight() == 0) {
                state->notify();
            }
            if (ex.lost || !ex.keep_alive) {
                break;
            }
        }
        conn->close();
    }

    /// See `drain()`.
    static asio::awaitable<void> drain_coroutine(state_ptr state, std::chrono::milliseconds grace) {
        const auto now = std::chrono::steady_clock::now();
        const auto deadline = now + grace;
        if (!state->deadline || deadline < *state->deadline) {
            state->deadline = deadline;
        }
        state->notify(); // an earlier drain re-reads the (maybe shorter) deadline
        state->close_connections(true);
        // Wait for the in-flight requests, up to the deadline. Notifications run on this strand, so one
        // cannot slip between the check and the wait.
        asio::steady_timer wake(state->strand);
        const detail::server_state::waiter_registration registration(*state, wake);
        while (state->metrics.in_flight() > 0 && std::chrono::steady_clock::now() < *state->deadline) {
            wake.expires_at(*state->deadline);
            co_await wake.async_wait(detail::as_tuple_awaitable);
        }
        if (!state->closed.exchange(true)) {
            boost::system::error_code ignored;
            state->acceptor.close(ignored);
            state->logger->info("http: closed the listening socket ({} requests still in flight)",
                                state->metrics.in_flight());
        }
        state->close_connections(false);
        while (state->connection_count() > 0) {
            wake.expires_at(asio::steady_timer::time_point::max());
            co_await wake.async_wait(detail::as_tuple_awaitable);
        }
    }

    state_ptr state_;
    std::uint16_t port_ = 0;
};

} // namespace modelpool::http
