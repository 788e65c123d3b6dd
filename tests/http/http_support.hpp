// Test support for modelpool::http: a blocking Beast client over its own io_context, a harness that serves
// one fake model per capability on loopback, and checks of OpenAI bodies and server-sent event framing.
// Shared by every tests/http/*.cpp translation unit.
//
// Nothing sleeps to paper over a race: the client runs its own io_context until each operation completes
// (every operation has a deadline, so a bug fails a test instead of hanging it); `eventually` polls pool
// state.
#pragma once

#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/test_models.hpp"

#include <modelpool/http/server.hpp>

#include <boost/asio/use_future.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace modelpool::http_testing {

namespace asio = modelpool::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace json = boost::json;
namespace mhttp = modelpool::http;
using namespace modelpool;
using namespace modelpool::testing;
using namespace std::chrono_literals;
using tcp = asio::ip::tcp;
using Response = bhttp::response<bhttp::string_body>;

// ---- a blocking test client over its own io_context
// -----------------------------------------------------------

/// One keep-alive connection. Each operation runs the client's io_context until it completes; the stream's
/// deadline bounds it.
class Client {
public:
    explicit Client(std::uint16_t port) : stream_(io_) {
        stream_.expires_after(5s);
        stream_.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), port),
                              [this](boost::system::error_code ec) { connect_error = ec; });
        run();
    }

    boost::system::error_code connect_error; ///< Why connecting failed, if it did.

    void send(bhttp::verb verb, std::string_view target, std::string body = {},
              std::vector<std::pair<std::string, std::string>> headers = {}) {
        bhttp::request<bhttp::string_body> request{verb, target, 11};
        request.set(bhttp::field::host, "127.0.0.1");
        if (verb == bhttp::verb::post) {
            request.set(bhttp::field::content_type, "application/json");
            request.body() = std::move(body);
        }
        for (auto& [name, value] : headers) {
            request.set(name, value);
        }
        request.prepare_payload();
        boost::system::error_code error;
        stream_.expires_after(5s);
        bhttp::async_write(stream_, request, [&](boost::system::error_code ec, std::size_t) { error = ec; });
        run();
        INFO(error.message());
        REQUIRE(!error);
    }

    /// Reads one response; an error if the connection ended instead.
    boost::system::error_code try_receive(Response& response) {
        boost::system::error_code error;
        stream_.expires_after(10s);
        bhttp::async_read(stream_, buffer_, response,
                          [&](boost::system::error_code ec, std::size_t) { error = ec; });
        run();
        return error;
    }

    Response receive() {
        Response response;
        const auto error = try_receive(response);
        INFO(error.message());
        REQUIRE(!error);
        return response;
    }

    Response post(std::string_view target, std::string body,
                  std::vector<std::pair<std::string, std::string>> headers = {}) {
        send(bhttp::verb::post, target, std::move(body), std::move(headers));
        return receive();
    }

    Response get(std::string_view target, std::vector<std::pair<std::string, std::string>> headers = {}) {
        send(bhttp::verb::get, target, {}, std::move(headers));
        return receive();
    }

    /// Reads a response's header and whatever body bytes came with it (a stream's first events).
    std::string read_header_and_some() {
        bhttp::response_parser<bhttp::string_body> parser;
        boost::system::error_code error;
        stream_.expires_after(10s);
        bhttp::async_read_header(stream_, buffer_, parser,
                                 [&](boost::system::error_code ec, std::size_t) { error = ec; });
        run();
        REQUIRE(!error);
        REQUIRE(parser.get().result_int() == 200);
        return std::string(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    }

    /// Sends raw bytes (for malformed requests).
    void send_raw(std::string bytes) {
        boost::system::error_code error;
        stream_.expires_after(5s);
        asio::async_write(stream_, asio::buffer(bytes),
                          [&](boost::system::error_code ec, std::size_t) { error = ec; });
        run();
        REQUIRE(!error);
    }

    /// Closes the connection (the server sees the client go away).
    void close() {
        boost::system::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.socket().close(ignored);
    }

private:
    void run() {
        io_.restart();
        io_.run();
    }

    asio::io_context io_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
};

inline json::object body_of(const Response& response) {
    INFO(response.body());
    auto value = json::parse(response.body());
    REQUIRE(value.is_object());
    return value.as_object();
}

/// The error object of an OpenAI error response, after checking the status.
inline json::object error_of(const Response& response, unsigned status) {
    INFO(response.body());
    REQUIRE(response.result_int() == status);
    auto body = body_of(response);
    REQUIRE(body.contains("error"));
    const auto& error = body.at("error").as_object();
    CHECK(error.contains("message"));
    CHECK(error.contains("type"));
    CHECK(error.contains("param"));
    CHECK(error.contains("code"));
    return error;
}

// ---- the server under test
// -------------------------------------------------------------------------------------

/// Polls `pred` every millisecond for up to `timeout`.
template <class Pred> bool eventually(Pred pred, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(1ms); // polling pool state, not waiting out a race
    }
    return true;
}

/// A pool with one model per capability (one worker each) and a server for it. `own_io`: the server runs on
/// an io_context of its own (as an application's would) instead of the pool's.
struct Harness {
    explicit Harness(PoolOptions options, bool own_io = false,
                     mhttp::Limits limits = {.body_bytes = 4096, .max_tokens = 1'000'000}) {
        options.logger = log.logger();
        pool = std::make_unique<Pool>(std::move(options));
        const ModelOptions one{.per_worker_mb = 1, .min_workers = 1, .max_workers = 1};
        REQUIRE(pool->register_text_embedding_model("sentences",
                                                    ready_loader(CoroEmbedder{7, probe, nullptr}), one));
        REQUIRE(pool->register_text_embedding_model("slow", ready_loader(CoroEmbedder{8, probe, gate}), one));
        REQUIRE(pool->register_image_embedding_model("pictures", ready_loader(CoroImageEmbedder{9}), one));
        REQUIRE(pool->register_text_to_text_model("chat", ready_loader(CoroChat{chat_probe}), one));
        REQUIRE(pool->register_vision_model("eyes", ready_loader(BlockingVision{probe}), one));
        REQUIRE(pool->register_text_to_image_model("paint", ready_loader(CoroPainter{}), one));
        auto broken = []() -> asio::awaitable<result<CoroEmbedder>> {
            co_return fail(errc::model_error, "weights file is missing");
        };
        REQUIRE(pool->register_text_embedding_model("broken", broken, {.per_worker_mb = 1}));
        mhttp::ServerOptions server_options{.host = "127.0.0.1",
                                            .port = 0,
                                            .models = {{.name = "embed", .key = "sentences"},
                                                       {.name = "slow-embed", .key = "slow"},
                                                       {.name = "image-embed", .key = "pictures"},
                                                       {.name = "chat", .key = "chat"},
                                                       {.name = "vision", .key = "eyes"},
                                                       {.name = "painter", .key = "paint"},
                                                       {.name = "broken", .key = "broken"},
                                                       {.name = "ghost", .key = "nobody"}},
                                            .limits = limits,
                                            .logger = log.logger()};
        if (own_io) {
            io_thread = std::thread([this] { io.run(); });
            server = std::make_unique<mhttp::Server>(*pool, io.get_executor(), std::move(server_options));
        } else {
            server = std::make_unique<mhttp::Server>(*pool, std::move(server_options));
        }
        auto bound = server->listen();
        REQUIRE(bound);
        port = *bound;
        REQUIRE(eventually([&] { return server->ready(); }));
    }

    ~Harness() {
        gate->open();
        chat_probe->stopped.arrive(-1); // nothing waits on it any more
        if (server) {
            auto drained = server->drain(0ms, asio::use_future);
            drained.wait_for(10s);
            server.reset();
        }
        pool->stop();
        work.reset();
        if (io_thread.joinable()) {
            io_thread.join();
        }
    }

    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    LogCapture log;
    std::shared_ptr<Probe> probe = std::make_shared<Probe>();
    std::shared_ptr<Probe> chat_probe = std::make_shared<Probe>();
    std::shared_ptr<Gate> gate = std::make_shared<Gate>();
    std::unique_ptr<Pool> pool;
    asio::io_context io;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
    std::thread io_thread;
    std::unique_ptr<mhttp::Server> server;
    std::uint16_t port = 0;
};

inline PoolOptions default_pool_options() {
    return {.io_threads = 2,
            .blocking_threads = 2,
            .memory_limit_mb = 1024,
            .queue_capacity = 1,
            .shutdown_timeout = 5s,
            .load_retries = 0};
}

/// Splits a server-sent event body into its `data:` payloads, checking the framing exactly.
inline std::vector<std::string> events_of(const std::string& body) {
    std::vector<std::string> events;
    std::size_t at = 0;
    while (at < body.size()) {
        REQUIRE(body.compare(at, 6, "data: ") == 0);
        const auto end = body.find("\n\n", at);
        REQUIRE(end != std::string::npos);
        events.push_back(body.substr(at + 6, end - at - 6));
        REQUIRE(events.back().find('\n') == std::string::npos);
        at = end + 2;
    }
    return events;
}

inline std::string data_url(std::string_view payload) {
    return "data:image/png;base64," + std::string(payload);
}

} // namespace modelpool::http_testing
