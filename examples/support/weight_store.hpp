// examples/support/weight_store.hpp
//
// Where the demo models' "weights" come from, and how their loaders fetch them without blocking.
//
// - `WeightStore`: the demo's cache directory of generated weight files (small deterministic tables, a
//   shipped public-domain text, test images). Nothing is downloaded from the internet: every file is
//   generated (or copied from the repository) on first use and kept for later runs.
// - `WeightServer`: a loopback HTTP/1.1 server (Boost.Beast, coroutines) on 127.0.0.1 serving the store's
//   files.
// - `http_get`: an asynchronous HTTP GET, what the demo loaders `co_await` to fetch their weights.
//
// Why HTTP and not file I/O: Asio's asynchronous file I/O (`asio::stream_file`) needs io_uring (liburing),
// which modelpool does not depend on, and a blocking file read would stall the pool's io_context. So the
// loaders fetch their weight files over loopback sockets: real non-blocking I/O on the pool's io_context, as
// a loader fetching weights from a model hub or an object store would do. The disk is read only by
// `WeightStore::ensure`, called from the program's main thread; the server answers from the bytes `ensure`
// kept, so no pool thread ever touches the disk.
#pragma once

#include <modelpool/modelpool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace demo {

namespace asio = modelpool::asio;

/// The demo's cache directory of generated weight files (nothing is downloaded from the internet).
///
/// Copies share one in-memory table of the files `ensure` produced, so a `WeightServer` holding a copy serves
/// every file ensured through any copy. Thread-safe.
class WeightStore {
public:
    /// A store in `dir`, which is created if absent.
    explicit WeightStore(std::filesystem::path dir)
        : dir_(std::move(dir)), files_(std::make_shared<table>()) {
        std::filesystem::create_directories(dir_);
    }

    /// The cache directory.
    const std::filesystem::path& dir() const { return dir_; }

    /// True for names a store accepts: 1 to 128 characters of [A-Za-z0-9._-], not starting with '.'
    /// (so no path separators, no "..", no hidden or temporary files).
    static bool valid_name(std::string_view name) {
        if (name.empty() || name.size() > 128 || name.front() == '.') {
            return false;
        }
        for (char c : name) {
            const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                            c == '.' || c == '_' || c == '-';
            if (!ok) {
                return false;
            }
        }
        return true;
    }

    /// Path of `name`, generated with `generate()` first if absent; written to a temporary file and renamed,
    /// so concurrent processes never read a half-written file. Reads (or writes) the disk on the calling
    /// thread: call it from the program's main thread, not from a pool thread. Keeps the file's bytes for
    /// `contents` (and so for a `WeightServer`). Throws `std::invalid_argument` for an invalid name and
    /// `std::runtime_error` when the file cannot be written or read.
    std::filesystem::path ensure(const std::string& name,
                                 const std::function<std::string()>& generate) const {
        if (!valid_name(name)) {
            throw std::invalid_argument(fmt::format("invalid weight file name '{}'", name));
        }
        const auto path = dir_ / name;
        std::string bytes;
        if (std::filesystem::exists(path)) {
            bytes = read_file(path);
        } else {
            bytes = generate();
            write_atomically(path, bytes);
        }
        std::lock_guard lock(files_->mutex);
        files_->bytes[name] = std::make_shared<const std::string>(std::move(bytes));
        return path;
    }

    /// The bytes of `name` as the last `ensure(name, ...)` left them; null if `name` was never ensured.
    std::shared_ptr<const std::string> contents(std::string_view name) const {
        std::lock_guard lock(files_->mutex);
        auto it = files_->bytes.find(name);
        return it == files_->bytes.end() ? nullptr : it->second;
    }

    /// Reads a whole file (blocking: main thread only). Throws `std::runtime_error` when it cannot.
    static std::string read_file(const std::filesystem::path& path) {
        std::ifstream in(path, std::ios::binary);
        std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        if (in.bad() || !in.is_open()) {
            throw std::runtime_error(fmt::format("cannot read '{}'", path.string()));
        }
        return bytes;
    }

private:
    static void write_atomically(const std::filesystem::path& path, const std::string& bytes) {
        // A name no other process or thread uses: the final rename is atomic, so readers see either no file
        // or the whole file.
        static std::atomic<unsigned> counter{0};
        const auto temporary = path.parent_path() / fmt::format(".{}.{:08x}-{}.tmp", path.filename().string(),
                                                                std::random_device{}(), counter++);
        {
            std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
            out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
            out.close();
            if (!out) {
                std::error_code ignored;
                std::filesystem::remove(temporary, ignored);
                throw std::runtime_error(fmt::format("cannot write '{}'", temporary.string()));
            }
        }
        std::filesystem::rename(temporary, path);
    }

    struct table {
        std::mutex mutex;
        std::map<std::string, std::shared_ptr<const std::string>, std::less<>> bytes;
    };

    std::filesystem::path dir_;
    std::shared_ptr<table> files_;
};

/// Loopback HTTP/1.1 server (Boost.Beast, coroutines) on 127.0.0.1, ephemeral port by default, serving
/// GET /<name> from a WeightStore (404 for missing/invalid names, no path traversal). All I/O asynchronous
/// on `executor` (may be the pool's executor: it never blocks).
///
/// It serves the files ensured through the store (or any copy of it); each connection is closed after one
/// response. Everything the server's coroutines use lives in one shared state that each of them holds, on one
/// strand: `close()` and the destructor only ask the coroutines to end, and the state goes away with the last
/// of them (or with the io_context, if it no longer runs).
///
/// @par Thread Safety
/// Every member function may be called from any thread.
class WeightServer {
public:
    /// Listens on 127.0.0.1:`port` (0: an ephemeral port). Throws `boost::system::system_error` when it
    /// cannot listen.
    WeightServer(asio::any_io_executor executor, WeightStore store, unsigned short port = 0)
        : state_(std::make_shared<state>(asio::make_strand(std::move(executor)), std::move(store))) {
        using asio::ip::tcp;
        const tcp::endpoint endpoint(asio::ip::address_v4::loopback(), port);
        state_->acceptor.open(endpoint.protocol());
        state_->acceptor.set_option(tcp::acceptor::reuse_address(true));
        state_->acceptor.bind(endpoint);
        state_->acceptor.listen();
        port_ = state_->acceptor.local_endpoint().port();
        asio::co_spawn(state_->strand, accept_loop(state_), asio::detached);
    }

    WeightServer(const WeightServer&) = delete;
    WeightServer& operator=(const WeightServer&) = delete;

    /// `close()`.
    ~WeightServer() { close(); }

    /// The port the server listens on.
    unsigned short port() const { return port_; }

    /// "http://127.0.0.1:<port>/<name>".
    std::string url(std::string_view name) const {
        return fmt::format("http://127.0.0.1:{}/{}", port_, name);
    }

    /// Stops accepting and ends open connections (on the server's strand: at once when called there, else as
    /// soon as the executor runs it). Idempotent.
    void close() {
        asio::dispatch(state_->strand, [s = state_] {
            s->closed = true;
            boost::system::error_code ignored;
            s->acceptor.close(ignored);
            for (auto* stream : s->connections) {
                stream->close();
            }
        });
    }

    /// Requests answered (any status), counted when the response is sent.
    std::size_t requests_served() const { return state_->requests.load(std::memory_order_relaxed); }

    /// Response body bytes of the successful (200) answers.
    std::size_t bytes_served() const { return state_->bytes.load(std::memory_order_relaxed); }

private:
    using stream_type = boost::beast::tcp_stream;

    struct state {
        state(asio::any_io_executor strand_executor, WeightStore files)
            : strand(std::move(strand_executor)), store(std::move(files)), acceptor(strand) {}
        asio::any_io_executor strand;
        WeightStore store;
        asio::ip::tcp::acceptor acceptor;
        std::set<stream_type*> connections; // open connections (strand only)
        bool closed = false;                // strand only
        std::atomic<std::size_t> requests{0};
        std::atomic<std::size_t> bytes{0};
    };

    static asio::awaitable<void> accept_loop(std::shared_ptr<state> s) {
        for (;;) {
            auto [ec, socket] = co_await s->acceptor.async_accept(asio::as_tuple(asio::use_awaitable));
            if (s->closed || ec == asio::error::operation_aborted) {
                co_return;
            }
            if (!ec) {
                asio::co_spawn(s->strand, serve(s, std::move(socket)), asio::detached);
            }
        }
    }

    static asio::awaitable<void> serve(std::shared_ptr<state> s, asio::ip::tcp::socket socket) {
        namespace http = boost::beast::http;
        stream_type stream(std::move(socket));
        if (s->closed) {
            co_return;
        }
        s->connections.insert(&stream);
        stream.expires_after(std::chrono::seconds(30));
        boost::beast::flat_buffer buffer;
        http::request<http::string_body> request;
        auto [read_error, read_bytes] =
            co_await http::async_read(stream, buffer, request, asio::as_tuple(asio::use_awaitable));
        (void)read_bytes;
        if (!read_error) {
            auto response = answer(*s, request);
            response.keep_alive(false);
            response.prepare_payload();
            // Counted before the response leaves, so a client that has its response always sees it counted.
            s->requests.fetch_add(1, std::memory_order_relaxed);
            if (response.result() == http::status::ok) {
                s->bytes.fetch_add(response.body().size(), std::memory_order_relaxed);
            }
            auto [write_error, written] =
                co_await http::async_write(stream, response, asio::as_tuple(asio::use_awaitable));
            (void)write_error;
            (void)written;
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
        s->connections.erase(&stream);
    }

    static boost::beast::http::response<boost::beast::http::string_body>
    answer(const state& s, const boost::beast::http::request<boost::beast::http::string_body>& request) {
        namespace http = boost::beast::http;
        http::response<http::string_body> response;
        response.version(request.version());
        response.set(http::field::server, "modelpool-demo-weights");
        if (request.method() != http::verb::get) {
            response.result(http::status::method_not_allowed);
            response.body() = "only GET\n";
            return response;
        }
        std::string_view target(request.target().data(), request.target().size());
        target = target.substr(0, target.find('?'));
        std::shared_ptr<const std::string> bytes;
        if (target.starts_with('/') && WeightStore::valid_name(target.substr(1))) {
            bytes = s.store.contents(target.substr(1));
        }
        if (!bytes) {
            response.result(http::status::not_found);
            response.body() = fmt::format("no weight file '{}'\n", target);
            return response;
        }
        response.result(http::status::ok);
        response.set(http::field::content_type, "application/octet-stream");
        response.body() = *bytes;
        return response;
    }

    std::shared_ptr<state> state_;
    unsigned short port_ = 0;
};

/// Asynchronous HTTP GET of `url` ("http://host:port/path", loopback demo use). Fails with
/// modelpool::errc::spawn_failed naming the url and the HTTP status or the socket error. Never blocks.
/// The whole exchange (resolve, connect, request, response) has a 10-second deadline; bodies up to 256 MB.
inline asio::awaitable<modelpool::result<std::string>> http_get(std::string url) {
    namespace http = boost::beast::http;
    using modelpool::errc;
    using modelpool::fail;
    constexpr std::string_view scheme = "http://";
    if (!url.starts_with(scheme)) {
        co_return fail(errc::spawn_failed, "GET {}: only http:// urls are supported", url);
    }
    const std::string_view rest = std::string_view(url).substr(scheme.size());
    const auto slash = rest.find('/');
    const std::string_view authority = rest.substr(0, slash);
    const std::string target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    const auto colon = authority.rfind(':');
    const std::string host(authority.substr(0, colon));
    const std::string port =
        colon == std::string_view::npos ? "80" : std::string(authority.substr(colon + 1));
    if (host.empty() || port.empty()) {
        co_return fail(errc::spawn_failed, "GET {}: malformed url", url);
    }

    auto executor = co_await asio::this_coro::executor;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    // A timer cancels the resolve at the deadline (the stream's own timeout covers the rest). It holds the
    // resolver weakly, so one that fires just as the resolve completes never touches a destroyed resolver.
    auto resolver = std::make_shared<asio::ip::tcp::resolver>(executor);
    asio::steady_timer resolve_timer(executor, deadline);
    resolve_timer.async_wait([weak = std::weak_ptr(resolver)](boost::system::error_code ec) {
        if (auto alive = weak.lock(); alive && !ec) {
            alive->cancel();
        }
    });
    auto [resolve_error, endpoints] =
        co_await resolver->async_resolve(host, port, asio::as_tuple(asio::use_awaitable));
    resolve_timer.cancel();
    if (resolve_error) {
        co_return fail(errc::spawn_failed, "GET {}: cannot resolve {}: {}", url, host,
                       resolve_error.message());
    }

    boost::beast::tcp_stream stream(executor);
    stream.expires_at(deadline);
    auto [connect_error, endpoint] =
        co_await stream.async_connect(endpoints, asio::as_tuple(asio::use_awaitable));
    (void)endpoint;
    if (connect_error) {
        co_return fail(errc::spawn_failed, "GET {}: connect failed: {}", url, connect_error.message());
    }
    http::request<http::empty_body> request(http::verb::get, target, 11);
    request.set(http::field::host, std::string(authority));
    request.set(http::field::user_agent, "modelpool-demo");
    request.keep_alive(false);
    auto [write_error, written] =
        co_await http::async_write(stream, request, asio::as_tuple(asio::use_awaitable));
    (void)written;
    if (write_error) {
        co_return fail(errc::spawn_failed, "GET {}: sending the request failed: {}", url,
                       write_error.message());
    }
    boost::beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(std::uint64_t{256} << 20);
    auto [read_error, read] =
        co_await http::async_read(stream, buffer, parser, asio::as_tuple(asio::use_awaitable));
    (void)read;
    if (read_error) {
        co_return fail(errc::spawn_failed, "GET {}: reading the response failed: {}", url,
                       read_error.message());
    }
    boost::system::error_code ignored;
    stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    auto response = parser.release();
    if (response.result() != http::status::ok) {
        co_return fail(errc::spawn_failed, "GET {}: HTTP {} {}", url, response.result_int(),
                       std::string(response.reason()));
    }
    co_return std::move(response.body());
}

/// Loads a model from the file at `url`: fetches it with `http_get` (non-blocking), then builds the model
/// with `build(bytes, url)`, which returns `modelpool::result<Model>` (CPU work only: it runs on the loader's
/// thread).
template <class Model, class Build>
asio::awaitable<modelpool::result<Model>> load_from_url(std::string url, Build build) {
    auto fetch = http_get(url); // named: g++ 12 miscompiles class temporaries in co_await operands
    auto bytes = co_await std::move(fetch);
    if (!bytes) {
        co_return modelpool::unexpected<modelpool::PoolError>(bytes.error());
    }
    co_return build(std::string_view(*bytes), std::string_view(url));
}

/// A loader for the pool's spawn and register functions: a copyable callable returning
/// `asio::awaitable<result<Model>>` that runs `load_from_url<Model>(url, build)`.
template <class Model, class Build> auto url_loader(std::string url, Build build) {
    return [url = std::move(url), build]() -> asio::awaitable<modelpool::result<Model>> {
        return load_from_url<Model>(url, build);
    };
}

} // namespace demo
