// modelpool/http/detail/connection.hpp
//
// One accepted HTTP connection: its Beast stream and read buffer, the writes the routes need (a whole
// response; the header, the events and the end of a server-sent event stream, chunk-encoded), and disconnect
// detection. Every operation of a connection runs on its own strand (the executor its socket was accepted
// with), so none of it needs a lock even when the io_context has several threads.
//
// Disconnect detection: while a request waits for the pool or for the model's next chunk, the connection also
// waits for its socket to turn readable. A client that closed (or reset) the connection makes it readable
// with nothing to read: the wait ends first and `unless_disconnected` returns nullopt, which cancels the pool
// operation through its cancellation slot (a queued request leaves the queue; a running one is interrupted).
// A client that pipelines its next request makes it readable with data: that is not a disconnect, and from
// then on only a failing write reveals that the client went away. A client that half-closes its sending side
// after the request counts as gone (HTTP/1.1 clients do not do that).
#pragma once

#include "modelpool/asio.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <variant>

namespace modelpool::http::detail {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

/// A completion token that turns errors into values: `auto [ec, n] = co_await op(as_tuple_awaitable);`.
inline constexpr auto as_tuple_awaitable = asio::as_tuple(asio::use_awaitable);

/// See the file comment.
class connection {
public:
    /// A connection over `socket`, whose executor must be a strand.
    connection(std::uint64_t id, tcp::socket socket) : id_(id), stream_(std::move(socket)) {}

    /// The connection's number (for the server's registry).
    [[nodiscard]] std::uint64_t id() const noexcept { return id_; }

    /// The Beast stream (read by the session loop).
    beast::tcp_stream& stream() noexcept { return stream_; }

    /// Bytes read but not parsed yet (the start of a pipelined request).
    beast::flat_buffer& buffer() noexcept { return buffer_; }

    /// True while the connection waits for its next request (it may then be closed by a drain).
    std::atomic<bool> idle{false};

    /// Writes `response` within `timeout`; false if the client has gone.
    template <class Body>
    asio::awaitable<bool> write(bhttp::response<Body>& response, std::chrono::milliseconds timeout) {
        stream_.expires_after(timeout);
        auto [ec, bytes] = co_await bhttp::async_write(stream_, response, as_tuple_awaitable);
        (void)bytes;
        stream_.expires_never();
        co_return !ec;
    }

    /// Writes the header of a chunk-encoded event stream; false if the client has gone.
    asio::awaitable<bool> write_header(bhttp::response<bhttp::empty_body>& response,
                                       std::chrono::milliseconds timeout) {
        response.chunked(true);
        bhttp::response_serializer<bhttp::empty_body> serializer(response);
        stream_.expires_after(timeout);
        auto [ec, bytes] = co_await bhttp::async_write_header(stream_, serializer, as_tuple_awaitable);
        (void)bytes;
        stream_.expires_never();
        co_return !ec;
    }

    /// Writes `data` as one chunk of the body; false if the client has gone. Returns once the kernel took the
    /// bytes, so a client that does not read makes this wait (backpressure), up to `timeout`.
    asio::awaitable<bool> write_chunk(std::string_view data, std::chrono::milliseconds timeout) {
        stream_.expires_after(timeout);
        auto [ec, bytes] =
            co_await asio::async_write(stream_, bhttp::make_chunk(asio::buffer(data)), as_tuple_awaitable);
        (void)bytes;
        stream_.expires_never();
        co_return !ec;
    }

    /// Ends a chunk-encoded body; false if the client has gone.
    asio::awaitable<bool> write_last_chunk(std::chrono::milliseconds timeout) {
        stream_.expires_after(timeout);
        auto [ec, bytes] = co_await asio::async_write(stream_, bhttp::make_chunk_last(), as_tuple_awaitable);
        (void)bytes;
        stream_.expires_never();
        co_return !ec;
    }

    /// Completes when the client has disconnected (see the file comment), or never (until cancelled) once
    /// pipelined bytes show that it is still there.
    asio::awaitable<void> wait_disconnect() {
        if (buffer_.size() == 0) {
            auto [ec] = co_await stream_.socket().async_wait(tcp::socket::wait_read, as_tuple_awaitable);
            if (ec) {
                co_return; // cancelled (the result is then ignored) or the socket was closed by a drain
            }
            std::array<char, 1> byte{};
            boost::system::error_code peek_error;
            stream_.socket().non_blocking(true, peek_error);
            const auto peeked =
                stream_.socket().receive(asio::buffer(byte), tcp::socket::message_peek, peek_error);
            if (peek_error != asio::error::would_block && (peek_error || peeked == 0)) {
                co_return; // end of stream or reset: the client has gone
            }
        }
        // The client is still there (it sent more): wait until cancelled.
        asio::steady_timer forever(stream_.get_executor(), asio::steady_timer::time_point::max());
        co_await forever.async_wait(as_tuple_awaitable);
    }

    /// Awaits `operation` unless the client disconnects first: its result, or nullopt after a disconnect (the
    /// operation is then cancelled through its cancellation slot, and its result, if any, dropped).
    template <class T> asio::awaitable<std::optional<T>> unless_disconnected(asio::awaitable<T> operation) {
        using namespace asio::experimental::awaitable_operators;
        auto outcome = co_await (std::move(operation) || wait_disconnect());
        if (outcome.index() == 0) {
            co_return std::optional<T>(std::move(std::get<0>(outcome)));
        }
        co_return std::nullopt;
    }

    /// Closes after an error response sent before the whole request was read: stops sending, then reads and
    /// drops what the client still sends (up to `max_bytes`, for at most `timeout`) before closing. Closing
    /// with unread bytes would reset the connection, and the client could lose the response.
    asio::awaitable<void> linger_close(std::size_t max_bytes, std::chrono::milliseconds timeout) {
        boost::system::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        stream_.expires_after(timeout);
        std::array<char, 16 * 1024> sink{};
        for (std::size_t dropped = 0; dropped <= max_bytes;) {
            auto [ec, bytes] = co_await stream_.async_read_some(asio::buffer(sink), as_tuple_awaitable);
            if (ec) {
                break;
            }
            dropped += bytes;
        }
        close();
    }

    /// Closes the socket: pending operations end with an error. Call on the connection's strand.
    void close() {
        boost::system::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.close();
    }

private:
    std::uint64_t id_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
};

} // namespace modelpool::http::detail
