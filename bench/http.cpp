// bench/http.cpp -> modelpool_bench_http
//
// The HTTP front end's benchmarks (issue 14), each side by side in one run:
//
//   overhead  `wrk -t1 -c<64> --latency` POSTing one /v1/embeddings request over keep-alive connections to
//             modelpool::http::Server (one io thread) serving a no-op embedder (16 fixed floats at once: no
//             model cost), versus nginx (one worker process) answering `return 200` with the very body the
//             modelpool server sends. Alternating order, median of the repetitions. Goals: modelpool's
//             requests/s >= 0.6x nginx's, its p99 latency <= 2x nginx's.
//   sse       S concurrent streamed /v1/completions (`stream: true`, T tokens each) of a token generator that
//             writes one-word tokens as fast as the stream takes them, read by a Beast client (coroutines on
//             one io_context thread of this process, parsing the server-sent events up to `data: [DONE]`),
//             versus the same S streams of the same model read in-process (`pool.prompt` + `async_next` on a
//             Pool with one io thread). Goal: HTTP tokens/s >= 0.5x in-process.
//   idle      the server's RSS (/proc/<pid>/status VmRSS) growth for N idle keep-alive connections, each
//             having sent one GET /healthz, after a warm-up of 100 connections. Goal: < 16 KiB each.
//
// The server runs in a child process (this program re-executed with `--serve`: it prints its port on stdout,
// answers `connections` on stdin with its open connection count, and exits when stdin closes), so its RSS
// and CPU time are its own and wrk, nginx and the clients are separate processes or threads. The server logs
// at warn level: no per-request log line. Every child (server, nginx, wrk) is stopped at the end, also on
// failure, and dies with this process (PR_SET_PDEATHSIG).
//
//   modelpool_bench_http [--quick] [--json PATH] [--cases overhead,sse,idle] [--seconds S] [--reps R]
//                        [--connections C] [--streams S] [--tokens T] [--idle N] [--wrk PATH] [--nginx PATH]
//
// Prints a markdown table on stdout (progress and per-repetition figures on stderr). `--quick` (CTest's
// bench.http) runs wrk for 1 s, 8 streams and 500 idle connections: it checks that everything ran and
// answered correctly (exit 1 otherwise), never a timed goal; exit 77 (skipped) when wrk or nginx is missing.
// The idle case needs N + ~100 file descriptors in this process and in the server: the soft RLIMIT_NOFILE is
// raised to the hard one in both (the hard one must be >= N + 200).

// Boost.Beast trips a false -Wmaybe-uninitialized in GCC 12 at -O2 (a boost::optional in its HTTP parser);
// benchmarks always build at -O2. Included first, here, so the pragma covers its code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <modelpool/http/server.hpp>
#include <modelpool/modelpool.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_future.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <fmt/format.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include <time.h>

namespace {

namespace asio = modelpool::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr auto as_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::string_view embedder_key = "noop";
constexpr std::string_view embedder_name = "bench-embedder";
constexpr std::string_view generator_key = "tokens";
constexpr std::string_view generator_name = "bench-generator";
constexpr std::size_t embedder_workers = 4;   // as the suite's request_overhead case
constexpr std::size_t generator_workers = 64; // one per concurrent stream: all of them generate at once
constexpr std::size_t max_connections = 12000;
constexpr int skipped = 77; // CTest's SKIP_RETURN_CODE for bench.http

const std::string embeddings_request =
    R"({"model":"bench-embedder","input":"The quick brown fox jumps over the lazy dog"})";

// ---- the models ----------------------------------------------------------------------------------------

/// What the no-op embedder answers: 16 floats that serialise like a real embedding's (17 digits each).
const modelpool::Embedding& fixed_vector() {
    static const modelpool::Embedding vector = [] {
        modelpool::Embedding v;
        for (int i = 0; i < 16; ++i) {
            v.push_back(static_cast<float>(i + 1) / 17.0f);
        }
        return v;
    }();
    return vector;
}

/// A text_embedding model with no cost: coroutine members (run inline on the io thread, no thread hop)
/// answering a fixed vector at once, so the figure is the HTTP layer's.
struct NoopEmbedder {
    asio::awaitable<modelpool::result<modelpool::Embedding>>
    embed(const std::string& /*text*/, const std::optional<std::string>& /*task*/) {
        co_return fixed_vector();
    }
    asio::awaitable<modelpool::result<std::vector<modelpool::Embedding>>>
    batch_embed(const std::vector<std::string>& texts, const std::optional<std::string>& /*task*/) {
        co_return std::vector<modelpool::Embedding>(texts.size(), fixed_vector());
    }
};

/// A text_to_text model streaming `max_tokens` one-word tokens as fast as the stream takes them.
struct TokenGenerator {
    asio::awaitable<modelpool::result<void>> prompt(const std::string& /*prompt*/,
                                                    const modelpool::GenerationParams& params,
                                                    modelpool::ChunkSink<modelpool::CompletionChunk>& sink) {
        static constexpr std::array<std::string_view, 8> words{" the",   " quick", " brown", " fox",
                                                               " jumps", " over",  " lazy",  " dogs"};
        for (std::size_t i = 0; i < params.max_tokens; ++i) {
            // Named: g++ 12 miscompiles string-holding temporaries inside a co_await operand.
            modelpool::CompletionChunk chunk = modelpool::TextChunk{std::string(words[i % words.size()])};
            if (!co_await sink.send(std::move(chunk))) {
                co_return modelpool::result<void>{}; // the reader has gone
            }
        }
        modelpool::CompletionChunk stats = modelpool::CompletionStats{"length", params.max_tokens, 0.0, 0.0};
        co_await sink.send(std::move(stats));
        co_return modelpool::result<void>{};
    }
};

/// A pool with one io thread serving both models, their workers loaded before it returns.
std::unique_ptr<modelpool::Pool> make_pool(std::shared_ptr<spdlog::logger> logger) {
    auto pool = std::make_unique<modelpool::Pool>(modelpool::PoolOptions{
        .io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 256, .logger = std::move(logger)});
    auto embedder = []() -> asio::awaitable<modelpool::result<NoopEmbedder>> { co_return NoopEmbedder{}; };
    auto generator = []() -> asio::awaitable<modelpool::result<TokenGenerator>> {
        co_return TokenGenerator{};
    };
    auto registered = pool->register_text_embedding_model(
        embedder_key, embedder,
        {.per_worker_mb = 1, .min_workers = embedder_workers, .max_workers = embedder_workers});
    if (registered) {
        registered = pool->register_text_to_text_model(
            generator_key, generator,
            {.per_worker_mb = 1, .min_workers = generator_workers, .max_workers = generator_workers});
    }
    if (!registered) {
        throw std::runtime_error("registering the models failed: " + registered.error().to_string());
    }
    // Polls the pool's state (the loaders are ready at once), bounded.
    const auto deadline = steady::now() + 10s;
    auto serving = [&](std::string_view key, std::size_t n) {
        auto snapshot = pool->snapshot(key);
        return snapshot && snapshot->serving() >= n;
    };
    while (!serving(embedder_key, embedder_workers) || !serving(generator_key, generator_workers)) {
        if (steady::now() > deadline) {
            throw std::runtime_error("the models' workers did not start within 10 s");
        }
        std::this_thread::sleep_for(1ms);
    }
    return pool;
}

/// Raises the soft open-file limit to the hard one; returns the limit now in force.
rlim_t raise_fd_limit() {
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return 0;
    }
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
        getrlimit(RLIMIT_NOFILE, &limit);
    }
    return limit.rlim_cur;
}

// ---- --serve: the server under test, in its own process -----------------------------------------------

int serve() {
    raise_fd_limit();
    auto logger = std::make_shared<spdlog::logger>("bench-http-server",
                                                   std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_level(spdlog::level::warn); // no per-request line (those are info)
    auto pool = make_pool(logger);
    modelpool::http::ServerOptions options{
        .host = "127.0.0.1",
        .port = 0,
        .models = {{.name = std::string(embedder_name), .key = std::string(embedder_key)},
                   {.name = std::string(generator_name), .key = std::string(generator_key)}},
        .limits = {},
        .logger = logger};
    options.limits.max_connections = max_connections;
    options.limits.idle_timeout = 10min; // the idle connections must stay open while they are measured
    modelpool::http::Server server(*pool, std::move(options));
    auto port = server.listen();
    if (!port) {
        std::fprintf(stderr, "--serve: %s\n", port.error().to_string().c_str());
        return 1;
    }
    std::cout << *port << std::endl;
    // Commands from the bench on stdin, one per line; end of input (the bench closed it, or died) stops.
    for (std::string line; std::getline(std::cin, line);) {
        if (line == "connections") {
            std::cout << server.connections() << std::endl;
        } else {
            std::cout << "unknown command" << std::endl;
        }
    }
    auto drained = server.drain(0ms, asio::use_future);
    drained.wait_for(5s);
    pool->stop();
    return 0;
}

// ---- child processes -----------------------------------------------------------------------------------

/// A child process (fork + execv). Stopped by the destructor: stdin closed, SIGTERM, then SIGKILL, each
/// after a bounded wait. It also gets `death_signal` if this process dies first.
class Process {
public:
    struct Options {
        bool pipe_stdin = false;  ///< Else /dev/null.
        bool pipe_stdout = false; ///< Else inherited.
        int death_signal = SIGKILL;
    };

    Process() = default;
    Process(const std::vector<std::string>& argv, Options options) {
        std::vector<char*> args;
        for (const auto& arg : argv) {
            args.push_back(const_cast<char*>(arg.c_str()));
        }
        args.push_back(nullptr);
        std::array<int, 2> in{-1, -1};
        std::array<int, 2> out{-1, -1};
        if ((options.pipe_stdin && pipe2(in.data(), O_CLOEXEC) != 0) ||
            (options.pipe_stdout && pipe2(out.data(), O_CLOEXEC) != 0)) {
            throw std::runtime_error(fmt::format("pipe: {}", std::strerror(errno)));
        }
        const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        const pid_t parent = getpid();
        const pid_t pid = fork();
        if (pid == 0) {
            // Async-signal-safe calls only until execv (this process has threads).
            prctl(PR_SET_PDEATHSIG, options.death_signal);
            if (getppid() != parent) {
                _exit(127);
            }
            dup2(options.pipe_stdin ? in[0] : null_fd, 0);
            if (options.pipe_stdout) {
                dup2(out[1], 1);
            }
            close_range(3, ~0U, 0); // e.g. the client's thousands of sockets
            execv(args[0], args.data());
            _exit(127);
        }
        for (int fd : {in[0], out[1], null_fd}) {
            if (fd >= 0) {
                close(fd);
            }
        }
        if (pid < 0) {
            for (int fd : {in[1], out[0]}) {
                if (fd >= 0) {
                    close(fd);
                }
            }
            throw std::runtime_error(fmt::format("fork: {}", std::strerror(errno)));
        }
        pid_ = pid;
        in_ = in[1];
        out_ = out[0];
        name_ = argv[0];
    }
    Process(Process&& other) noexcept { *this = std::move(other); }
    Process& operator=(Process&& other) noexcept {
        if (this != &other) {
            stop();
            pid_ = std::exchange(other.pid_, -1);
            in_ = std::exchange(other.in_, -1);
            out_ = std::exchange(other.out_, -1);
            pending_ = std::move(other.pending_);
            name_ = std::move(other.name_);
            status_ = other.status_;
            cpu_seconds_ = other.cpu_seconds_;
        }
        return *this;
    }
    Process(const Process&) = delete;
    Process& operator=(const Process&) = delete;
    ~Process() { stop(); }

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }

    /// True once the child has exited (it is then reaped; `exit_status()` tells how).
    bool exited() {
        if (pid_ < 0) {
            return true;
        }
        int status = 0;
        rusage usage{};
        if (wait4(pid_, &status, WNOHANG, &usage) == pid_) {
            status_ = status;
            cpu_seconds_ = seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
            pid_ = -1;
            return true;
        }
        return false;
    }

    /// The wait status of the exited child.
    [[nodiscard]] int exit_status() const noexcept { return status_; }

    /// The CPU time (user + system) the exited child used.
    [[nodiscard]] double cpu_seconds() const noexcept { return cpu_seconds_; }

    void write_line(std::string_view line) {
        std::string text = std::string(line) + "\n";
        if (in_ < 0 || ::write(in_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
            throw std::runtime_error(fmt::format("cannot write to {}", name_));
        }
    }

    /// The next line of the child's stdout, or nullopt at its end or at the deadline.
    std::optional<std::string> read_line(steady::time_point deadline) {
        for (;;) {
            if (const auto newline = pending_.find('\n'); newline != std::string::npos) {
                std::string line = pending_.substr(0, newline);
                pending_.erase(0, newline + 1);
                return line;
            }
            if (!fill(deadline)) {
                return std::nullopt;
            }
        }
    }

    /// The child's whole stdout (until it closes it), or throws at the deadline.
    std::string read_all(steady::time_point deadline) {
        while (fill(deadline)) {
        }
        if (steady::now() >= deadline) {
            throw std::runtime_error(fmt::format("{} did not finish in time", name_));
        }
        return std::exchange(pending_, {});
    }

    /// Waits (bounded) until the child exits; false at the deadline.
    bool wait(steady::time_point deadline) {
        while (!exited()) {
            if (steady::now() >= deadline) {
                return false;
            }
            std::this_thread::sleep_for(10ms); // polling the child's state
        }
        return true;
    }

    /// Stops the child: closes its stdin (a `--serve` child exits then), SIGTERM after 3 s, SIGKILL after 5 s
    /// more.
    void stop() {
        if (in_ >= 0) {
            close(std::exchange(in_, -1));
        }
        if (pid_ >= 0) {
            if (!wait(steady::now() + 3s)) {
                kill(pid_, SIGTERM);
                if (!wait(steady::now() + 5s)) {
                    kill(pid_, SIGKILL);
                    waitpid(pid_, &status_, 0);
                    pid_ = -1;
                }
            }
        }
        if (out_ >= 0) {
            close(std::exchange(out_, -1));
        }
    }

    /// Sends `signal` now (e.g. SIGTERM to nginx, which does not read stdin).
    void signal(int signal) const {
        if (pid_ >= 0) {
            kill(pid_, signal);
        }
    }

private:
    /// Reads what the child wrote into `pending_`; false at end of output or at the deadline.
    bool fill(steady::time_point deadline) {
        if (out_ < 0) {
            return false;
        }
        for (;;) {
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now()).count();
            if (left <= 0) {
                return false;
            }
            pollfd ready{out_, POLLIN, 0};
            const int polled = poll(&ready, 1, static_cast<int>(std::min<long long>(left, 1000)));
            if (polled < 0 && errno != EINTR) {
                return false;
            }
            if (polled <= 0) {
                continue;
            }
            std::array<char, 4096> buffer{};
            const auto bytes = ::read(out_, buffer.data(), buffer.size());
            if (bytes < 0 && errno == EINTR) {
                continue;
            }
            if (bytes <= 0) {
                return false;
            }
            pending_.append(buffer.data(), static_cast<std::size_t>(bytes));
            return true;
        }
    }

    static double seconds_of(const timeval& time) {
        return static_cast<double>(time.tv_sec) + static_cast<double>(time.tv_usec) * 1e-6;
    }

    pid_t pid_ = -1;
    int in_ = -1;
    int out_ = -1;
    int status_ = 0;
    double cpu_seconds_ = 0;
    std::string pending_;
    std::string name_;
};

// ---- /proc -----------------------------------------------------------------------------------------------

/// A `VmRSS:`-like field of /proc/<pid>/status, in KiB (-1 if missing).
long status_kib(pid_t pid, std::string_view field) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    for (std::string line; std::getline(in, line);) {
        if (line.starts_with(field)) {
            return std::strtol(line.c_str() + field.size(), nullptr, 10);
        }
    }
    return -1;
}

/// CPU time of a process (all its threads), in seconds.
struct CpuTime {
    double user = 0;
    double system = 0;
    [[nodiscard]] double total() const { return user + system; }
    CpuTime operator-(const CpuTime& other) const { return {user - other.user, system - other.system}; }
};

CpuTime cpu_time_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');
    if (close == std::string::npos) {
        return {std::nan(""), std::nan("")};
    }
    std::istringstream fields(stat.substr(close + 2)); // from field 3 (state)
    std::vector<std::string> values;
    for (std::string value; fields >> value;) {
        values.push_back(value);
    }
    if (values.size() < 13) {
        return {std::nan(""), std::nan("")};
    }
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    return {std::strtod(values[11].c_str(), nullptr) / ticks,
            std::strtod(values[12].c_str(), nullptr) / ticks};
}

/// CPU time of `pid` and its direct children (nginx: the master and its worker).
CpuTime tree_cpu_time(pid_t pid) {
    CpuTime total = cpu_time_of(pid);
    std::ifstream in(fmt::format("/proc/{}/task/{}/children", pid, pid));
    for (pid_t child = 0; in >> child;) {
        const auto more = cpu_time_of(child);
        total.user += more.user;
        total.system += more.system;
    }
    return total;
}

/// This process's CPU time (all threads), in seconds, at the clock's resolution.
double process_cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return fmt::format("{} {} {}", one, five, fifteen);
}

// ---- small helpers ---------------------------------------------------------------------------------------

double median(std::vector<double> values) {
    if (values.empty()) {
        return std::nan("");
    }
    std::sort(values.begin(), values.end());
    const auto n = values.size();
    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/// The median of the per-repetition ratios a[i] / b[i] (each pair measured side by side).
double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
        ratios.push_back(a[i] / b[i]);
    }
    return median(ratios);
}

tcp::endpoint loopback(std::uint16_t port) {
    return {asio::ip::address_v4::loopback(), port};
}

/// A free loopback port (bound then released: nginx is restarted on another if it is taken meanwhile).
std::uint16_t free_port() {
    asio::io_context io;
    tcp::acceptor acceptor(io, loopback(0));
    return acceptor.local_endpoint().port();
}

std::string find_program(std::string_view name, const std::string& given) {
    if (!given.empty()) {
        return access(given.c_str(), X_OK) == 0 ? given : std::string{};
    }
    std::string path = std::getenv("PATH") != nullptr ? std::getenv("PATH") : "";
    path += ":/usr/sbin:/usr/bin:/sbin:/bin";
    std::istringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');) {
        const auto candidate = std::filesystem::path(dir.empty() ? "." : dir) / name;
        if (access(candidate.c_str(), X_OK) == 0) {
            return candidate.string();
        }
    }
    return {};
}

bhttp::request<bhttp::string_body> make_request(bhttp::verb verb, std::string_view target,
                                                std::string body = {}) {
    bhttp::request<bhttp::string_body> request{verb, target, 11};
    request.set(bhttp::field::host, "127.0.0.1");
    if (verb == bhttp::verb::post) {
        request.set(bhttp::field::content_type, "application/json");
        request.body() = std::move(body);
    }
    request.prepare_payload();
    return request;
}

/// One response, as a curl-like client sees it.
struct Fetched {
    unsigned status = 0;
    std::string body;
    std::size_t bytes = 0; ///< Header and body as received.
};

/// One request over a fresh connection (10 s bound).
Fetched fetch(std::uint16_t port, bhttp::verb verb, std::string_view target, std::string body = {}) {
    asio::io_context io;
    beast::tcp_stream stream(io);
    Fetched fetched;
    boost::system::error_code error;
    auto request = make_request(verb, target, std::move(body));
    auto exchange = [&]() -> asio::awaitable<void> {
        stream.expires_after(10s);
        if (auto [ec] = co_await stream.async_connect(loopback(port), as_tuple); ec) {
            error = ec;
            co_return;
        }
        if (auto [ec, n] = co_await bhttp::async_write(stream, request, as_tuple); ec) {
            error = ec;
            co_return;
        }
        beast::flat_buffer buffer;
        bhttp::response_parser<bhttp::string_body> parser;
        auto [ec, n] = co_await bhttp::async_read(stream, buffer, parser, as_tuple);
        error = ec;
        fetched.status = parser.get().result_int();
        fetched.body = parser.get().body();
        fetched.bytes = n;
    };
    asio::co_spawn(io, exchange(), asio::detached);
    io.run();
    if (error) {
        throw std::runtime_error(fmt::format("{} 127.0.0.1:{}{} failed: {}", bhttp::to_string(verb), port,
                                             target, error.message()));
    }
    return fetched;
}

// ---- the server child ------------------------------------------------------------------------------------

/// `--serve` running in a child process.
class ServerChild {
public:
    explicit ServerChild(const std::string& self)
        : process_({self, "--serve"}, {.pipe_stdin = true, .pipe_stdout = true, .death_signal = SIGKILL}) {
        auto line = process_.read_line(steady::now() + 30s);
        if (!line || line->empty()) {
            throw std::runtime_error("the --serve child printed no port");
        }
        port_ = static_cast<std::uint16_t>(std::stoul(*line));
    }

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] pid_t pid() const noexcept { return process_.pid(); }

    /// The server's open connections (`Server::connections()`).
    std::size_t connections() {
        process_.write_line("connections");
        auto line = process_.read_line(steady::now() + 10s);
        if (!line) {
            throw std::runtime_error("the --serve child did not answer");
        }
        return std::stoul(*line);
    }

    /// Stops the child and checks it exited cleanly.
    void stop() {
        process_.stop();
        const int status = process_.exit_status();
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            throw std::runtime_error(fmt::format("the --serve child ended with wait status {}", status));
        }
    }

private:
    Process process_;
    std::uint16_t port_ = 0;
};

// ---- case: HTTP overhead (wrk, modelpool vs nginx) -------------------------------------------------------

/// What one wrk run reports.
struct WrkRun {
    double requests_per_s = 0;
    double p50_ms = 0;
    double p99_ms = 0;
    double requests = 0;
    double errors = 0;             ///< Socket errors plus non-2xx responses.
    double server_cores = 0;       ///< The server's CPU seconds per second of the run.
    double cpu_us_per_request = 0; ///< The server's CPU microseconds per request.
    double system_share = 0;       ///< The part of it spent in the kernel.
    double client_cores = 0;       ///< wrk's CPU seconds per second of the run.
};

/// "1.23ms", "456.00us", "1.02s" -> milliseconds.
double duration_ms(std::string_view text) {
    const double value = std::strtod(std::string(text).c_str(), nullptr);
    if (text.ends_with("us")) {
        return value / 1000;
    }
    if (text.ends_with("ms")) {
        return value;
    }
    if (text.ends_with("m")) {
        return value * 60'000;
    }
    return value * 1000; // "s"
}

WrkRun parse_wrk(const std::string& output) {
    WrkRun run;
    bool have_rate = false;
    bool have_p99 = false;
    std::istringstream lines(output);
    for (std::string line; std::getline(lines, line);) {
        std::istringstream words(line);
        std::string first;
        words >> first;
        if (first == "Requests/sec:") {
            words >> run.requests_per_s;
            have_rate = true;
        } else if (first == "50%" || first == "99%") {
            std::string value;
            words >> value;
            (first == "50%" ? run.p50_ms : run.p99_ms) = duration_ms(value);
            have_p99 = have_p99 || first == "99%";
        } else if (first == "Non-2xx") { // "Non-2xx or 3xx responses: N"
            std::string skip;
            double n = 0;
            words >> skip >> skip >> skip >> n;
            run.errors += n;
        } else if (first == "Socket") { // "Socket errors: connect N, read N, write N, timeout N"
            for (std::string word; words >> word;) {
                run.errors += std::strtod(word.c_str(), nullptr);
            }
        } else if (line.find(" requests in ") != std::string::npos) {
            run.requests = std::strtod(first.c_str(), nullptr);
        }
    }
    if (!have_rate || !have_p99 || run.requests <= 0) {
        throw std::runtime_error("cannot read wrk's output:\n" + output);
    }
    return run;
}

struct Settings {
    bool quick = false;
    std::string json;
    std::vector<std::string> cases{"overhead", "sse", "idle"};
    int seconds = 10;     ///< Each wrk run.
    std::size_t reps = 3; ///< Repetitions of the timed cases.
    std::size_t connections = 64;
    std::size_t streams = 64;
    std::size_t tokens = 512;
    std::size_t idle = 10000;
    std::string wrk;
    std::string nginx;
    std::string self;

    [[nodiscard]] bool runs(std::string_view name) const {
        return std::find(cases.begin(), cases.end(), name) != cases.end();
    }
};

/// One wrk run of `seconds` against 127.0.0.1:`port` with `script`; `server` is the process whose CPU time
/// (with its children's) is the server's.
WrkRun run_wrk(const Settings& s, const std::filesystem::path& script, std::uint16_t port, int seconds,
               pid_t server) {
    Process wrk({s.wrk, "-t1", fmt::format("-c{}", s.connections), fmt::format("-d{}s", seconds), "--latency",
                 "--timeout", "5s", "-s", script.string(),
                 fmt::format("http://127.0.0.1:{}/v1/embeddings", port)},
                {.pipe_stdout = true});
    const auto cpu_before = tree_cpu_time(server);
    const auto started = steady::now();
    const auto output = wrk.read_all(steady::now() + std::chrono::seconds(seconds + 30));
    const double wall = std::chrono::duration<double>(steady::now() - started).count();
    const auto cpu = tree_cpu_time(server) - cpu_before;
    if (!wrk.wait(steady::now() + 10s) || !WIFEXITED(wrk.exit_status()) ||
        WEXITSTATUS(wrk.exit_status()) != 0) {
        throw std::runtime_error("wrk failed:\n" + output);
    }
    auto run = parse_wrk(output);
    run.server_cores = cpu.total() / wall;
    run.cpu_us_per_request = cpu.total() * 1e6 / run.requests;
    run.system_share = (cpu.total() > 0 ? cpu.system / cpu.total() : 0.0);
    run.client_cores = wrk.cpu_seconds() / wall;
    return run;
}

/// nginx (one worker) answering POST /v1/embeddings with `body`, from a config in `dir`.
class Nginx {
public:
    Nginx(const Settings& s, const std::filesystem::path& dir, const std::string& body) {
        if (body.find_first_of("'\\$") != std::string::npos) {
            throw std::runtime_error("the body cannot be quoted in an nginx config: " + body);
        }
        for (int attempt = 0; attempt < 3; ++attempt) {
            port_ = free_port();
            const auto config = dir / "nginx.conf";
            std::ofstream out(config);
            out << fmt::format(R"(daemon off;
master_process on;
worker_processes 1;
error_log stderr warn;
pid {dir}/nginx.pid;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/embeddings {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
)",
                               fmt::arg("dir", dir.string()), fmt::arg("port", port_), fmt::arg("body", body),
                               fmt::arg("user", geteuid() == 0 ? "user root;" : ""));
            out.close();
            // SIGTERM on our death: nginx's master then stops its worker (SIGKILL would orphan it).
            process_ = Process({s.nginx, "-e", "stderr", "-p", dir.string(), "-c", config.string()},
                               {.death_signal = SIGTERM});
            if (listening()) {
                return;
            }
            process_.signal(SIGTERM);
            process_.stop();
        }
        throw std::runtime_error("nginx did not start (see its messages above)");
    }
    Nginx(const Nginx&) = delete;
    Nginx& operator=(const Nginx&) = delete;
    ~Nginx() {
        process_.signal(SIGTERM); // fast shutdown
        process_.stop();
    }

    [[nodiscard]] std::uint16_t port() const noexcept { return port_; }
    [[nodiscard]] pid_t pid() const noexcept { return process_.pid(); }

private:
    /// Polls until nginx accepts connections (true) or exits (false), within 10 s.
    bool listening() {
        const auto deadline = steady::now() + 10s;
        while (steady::now() < deadline && !process_.exited()) {
            asio::io_context io;
            tcp::socket socket(io);
            boost::system::error_code ec;
            socket.connect(loopback(port_), ec);
            if (!ec) {
                return true;
            }
            std::this_thread::sleep_for(10ms); // polling nginx's start
        }
        return false;
    }

    Process process_;
    std::uint16_t port_ = 0;
};

/// The temporary directory of one run (nginx's config, the wrk script), removed at the end.
class TempDir {
public:
    TempDir() {
        std::string pattern =
            (std::filesystem::temp_directory_path() / "modelpool-bench-http-XXXXXX").string();
        if (mkdtemp(pattern.data()) == nullptr) {
            throw std::runtime_error(fmt::format("mkdtemp: {}", std::strerror(errno)));
        }
        path_ = pattern;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    std::filesystem::path path_;
};

struct OverheadResult {
    std::vector<WrkRun> modelpool;
    std::vector<WrkRun> nginx;
    std::size_t body_bytes = 0;
    std::size_t modelpool_response_bytes = 0;
    std::size_t nginx_response_bytes = 0;
};

OverheadResult case_overhead(const Settings& s) {
    std::fprintf(stderr, "HTTP overhead: wrk -t1 -c%zu, %d s x %zu, modelpool vs nginx\n", s.connections,
                 s.seconds, s.reps);
    TempDir dir;
    ServerChild server(s.self);
    OverheadResult result;
    // The exact body modelpool sends; nginx sends the same bytes.
    const auto answer = fetch(server.port(), bhttp::verb::post, "/v1/embeddings", embeddings_request);
    if (answer.status != 200 || answer.body.find("\"embedding\":[") == std::string::npos) {
        throw std::runtime_error(fmt::format("modelpool answered {}: {}", answer.status, answer.body));
    }
    result.body_bytes = answer.body.size();
    result.modelpool_response_bytes = answer.bytes;
    Nginx nginx(s, dir.path(), answer.body);
    const auto static_answer = fetch(nginx.port(), bhttp::verb::post, "/v1/embeddings", embeddings_request);
    if (static_answer.status != 200 || static_answer.body != answer.body) {
        throw std::runtime_error(fmt::format("nginx answered {} with {} body bytes, expected 200 with {}",
                                             static_answer.status, static_answer.body.size(),
                                             answer.body.size()));
    }
    result.nginx_response_bytes = static_answer.bytes;
    std::fprintf(stderr, "  body %zu bytes; whole response: modelpool %zu bytes, nginx %zu bytes\n",
                 answer.body.size(), answer.bytes, static_answer.bytes);

    const auto script = dir.path() / "post.lua";
    {
        std::ofstream out(script);
        out << "wrk.method = \"POST\"\nwrk.body = [==[" << embeddings_request
            << "]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n";
    }
    if (!s.quick) { // warm-up (discarded): connections, allocator arenas, caches
        run_wrk(s, script, server.port(), 1, server.pid());
        run_wrk(s, script, nginx.port(), 1, nginx.pid());
    }
    for (std::size_t r = 0; r < s.reps; ++r) {
        // Alternating order: neither always runs first.
        for (int turn = 0; turn < 2; ++turn) {
            const bool ours = (turn == 0) == (r % 2 == 0);
            auto run = ours ? run_wrk(s, script, server.port(), s.seconds, server.pid())
                            : run_wrk(s, script, nginx.port(), s.seconds, nginx.pid());
            std::fprintf(stderr,
                         "  rep %zu %-9s %9.0f req/s, p50 %.3f ms, p99 %.3f ms, %.0f requests, server %.2f "
                         "cores, %.1f us CPU/request (%.0f%% in the kernel); wrk %.2f cores\n",
                         r, ours ? "modelpool" : "nginx", run.requests_per_s, run.p50_ms, run.p99_ms,
                         run.requests, run.server_cores, run.cpu_us_per_request, 100 * run.system_share,
                         run.client_cores);
            if (run.errors > 0) {
                throw std::runtime_error(
                    fmt::format("{}: wrk saw {} errors", ours ? "modelpool" : "nginx", run.errors));
            }
            (ours ? result.modelpool : result.nginx).push_back(run);
        }
    }
    server.stop();
    return result;
}

// ---- case: SSE streaming ---------------------------------------------------------------------------------

/// What one streamed completion delivered.
struct SseCount {
    std::size_t tokens = 0; ///< Events with text (finish_reason null).
    bool finished = false;  ///< The finish_reason "length" event.
    bool done = false;      ///< `data: [DONE]`.
    std::string problem;    ///< Anything unexpected.
    unsigned status = 0;
};

void on_event(std::string_view event, SseCount& count) {
    if (!event.starts_with("data: ")) {
        count.problem = fmt::format("not a data event: {}", event);
        return;
    }
    const auto data = event.substr(6);
    if (count.done) {
        count.problem = "an event after [DONE]";
    } else if (data == "[DONE]") {
        count.done = true;
    } else if (data.find("\"finish_reason\":null") != std::string_view::npos) {
        ++count.tokens;
    } else if (data.find("\"finish_reason\":\"length\"") != std::string_view::npos) {
        count.finished = true;
    } else {
        count.problem = fmt::format("unexpected event: {}", data);
    }
}

/// One streamed completion on `stream`: the events are parsed as they arrive.
asio::awaitable<void> read_stream(beast::tcp_stream& stream,
                                  const bhttp::request<bhttp::string_body>& request, SseCount& count) {
    stream.expires_after(120s);
    if (auto [ec, n] = co_await bhttp::async_write(stream, request, as_tuple); ec) {
        count.problem = "write: " + ec.message();
        co_return;
    }
    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    std::string pending;
    auto on_chunk = [&](std::uint64_t /*remain*/, beast::string_view body, boost::system::error_code&) {
        pending.append(body.data(), body.size());
        std::size_t start = 0;
        for (auto end = pending.find("\n\n"); end != std::string::npos; end = pending.find("\n\n", start)) {
            on_event(std::string_view(pending).substr(start, end - start), count);
            start = end + 2;
        }
        pending.erase(0, start);
        return body.size();
    };
    parser.on_chunk_body(on_chunk);
    auto [ec, n] = co_await bhttp::async_read(stream, buffer, parser, as_tuple);
    stream.expires_never();
    count.status = parser.get().result_int();
    if (ec) {
        count.problem = "read: " + ec.message();
    }
}

/// Tokens per second of `s.streams` concurrent streamed completions over HTTP (connections opened first,
/// not timed), read on one client thread.
double sse_over_http(const Settings& s, std::uint16_t port) {
    asio::io_context io;
    std::vector<std::unique_ptr<beast::tcp_stream>> streams;
    boost::system::error_code connect_error;
    auto connect = [&](beast::tcp_stream& stream) -> asio::awaitable<void> {
        stream.expires_after(10s);
        auto [ec] = co_await stream.async_connect(loopback(port), as_tuple);
        connect_error = ec ? ec : connect_error;
    };
    for (std::size_t i = 0; i < s.streams; ++i) {
        streams.push_back(std::make_unique<beast::tcp_stream>(io));
        asio::co_spawn(io, connect(*streams.back()), asio::detached);
    }
    io.run();
    if (connect_error) {
        throw std::runtime_error("SSE client: connect: " + connect_error.message());
    }
    const auto request =
        make_request(bhttp::verb::post, "/v1/completions",
                     fmt::format(R"({{"model":"{}","prompt":"go","max_tokens":{},"stream":true}})",
                                 generator_name, s.tokens));
    std::vector<SseCount> counts(s.streams);
    for (std::size_t i = 0; i < s.streams; ++i) {
        asio::co_spawn(io, read_stream(*streams[i], request, counts[i]), asio::detached);
    }
    double seconds = 0;
    std::thread client([&] { // the client's own io_context thread
        io.restart();
        const auto started = steady::now();
        io.run();
        seconds = std::chrono::duration<double>(steady::now() - started).count();
    });
    client.join();
    std::size_t tokens = 0;
    for (const auto& count : counts) {
        if (count.status != 200 || !count.problem.empty() || count.tokens != s.tokens || !count.finished ||
            !count.done) {
            throw std::runtime_error(fmt::format("SSE stream: status {}, {} tokens of {}, finish event {}, "
                                                 "[DONE] {}{}",
                                                 count.status, count.tokens, s.tokens, count.finished,
                                                 count.done,
                                                 count.problem.empty() ? "" : ": " + count.problem));
        }
        tokens += count.tokens;
    }
    return static_cast<double>(tokens) / seconds;
}

/// Tokens per second of the same streams read in-process: `pool.prompt` + `async_next`.
double sse_in_process(const Settings& s, modelpool::Pool& pool) {
    auto reader = [&pool, &s]() -> asio::awaitable<std::size_t> {
        modelpool::GenerationParams params;
        params.max_tokens = s.tokens;
        std::string prompt = "go";
        auto op = pool.prompt(generator_key, std::move(prompt), std::move(params), asio::use_awaitable);
        auto stream = co_await std::move(op);
        if (!stream) {
            throw std::runtime_error("in-process prompt: " + stream.error().to_string());
        }
        std::size_t tokens = 0;
        for (;;) {
            auto next = co_await stream->async_next(asio::use_awaitable);
            if (!next) {
                throw std::runtime_error("in-process stream: " + next.error().to_string());
            }
            if (!*next) {
                break;
            }
            tokens += std::holds_alternative<modelpool::TextChunk>(**next) ? 1 : 0;
        }
        co_return tokens;
    };
    const auto started = steady::now();
    std::vector<std::future<std::size_t>> running;
    for (std::size_t i = 0; i < s.streams; ++i) {
        running.push_back(asio::co_spawn(pool.get_executor(), reader(), asio::use_future));
    }
    std::size_t tokens = 0;
    for (auto& r : running) {
        const auto got = r.get();
        if (got != s.tokens) {
            throw std::runtime_error(fmt::format("in-process stream: {} tokens of {}", got, s.tokens));
        }
        tokens += got;
    }
    return static_cast<double>(tokens) / std::chrono::duration<double>(steady::now() - started).count();
}

struct SseResult {
    std::vector<double> http;
    std::vector<double> in_process;
    std::vector<double> server_cores;            ///< The server's CPU seconds per second of each HTTP run.
    std::vector<double> server_us_per_token;     ///< The server's CPU microseconds per token.
    std::vector<double> server_system_share;     ///< The part of it spent in the kernel.
    std::vector<double> in_process_us_per_token; ///< This process's CPU microseconds per token, in-process.
};

SseResult case_sse(const Settings& s) {
    std::fprintf(stderr, "SSE: %zu streams x %zu tokens, over HTTP vs in-process, %zu repetitions\n",
                 s.streams, s.tokens, s.reps);
    ServerChild server(s.self);
    auto pool = make_pool(
        std::make_shared<spdlog::logger>("bench-http-pool", std::make_shared<spdlog::sinks::null_sink_mt>()));
    SseResult result;
    // Warm-up (discarded), then alternating order.
    sse_over_http(s, server.port());
    sse_in_process(s, *pool);
    for (std::size_t r = 0; r < s.reps; ++r) {
        for (int turn = 0; turn < 2; ++turn) {
            if ((turn == 0) == (r % 2 == 0)) {
                const auto cpu_before = cpu_time_of(server.pid());
                const auto started = steady::now();
                result.http.push_back(sse_over_http(s, server.port()));
                const auto cpu = cpu_time_of(server.pid()) - cpu_before;
                const double wall = std::chrono::duration<double>(steady::now() - started).count();
                result.server_cores.push_back(cpu.total() / wall);
                result.server_us_per_token.push_back(cpu.total() * 1e6 /
                                                     static_cast<double>(s.streams * s.tokens));
                result.server_system_share.push_back((cpu.total() > 0 ? cpu.system / cpu.total() : 0.0));
            } else {
                // A run lasts a few ms: the process clock, not /proc's 10 ms ticks.
                const double cpu_before = process_cpu_seconds();
                result.in_process.push_back(sse_in_process(s, *pool));
                result.in_process_us_per_token.push_back((process_cpu_seconds() - cpu_before) * 1e6 /
                                                         static_cast<double>(s.streams * s.tokens));
            }
        }
        std::fprintf(stderr,
                     "  rep %zu: HTTP %.0f tokens/s (server %.2f cores, %.2f us CPU per token, %.0f%% in the "
                     "kernel), in-process %.0f tokens/s (%.2f us CPU per token)\n",
                     r, result.http.back(), result.server_cores.back(), result.server_us_per_token.back(),
                     100 * result.server_system_share.back(), result.in_process.back(),
                     result.in_process_us_per_token.back());
    }
    pool->stop();
    server.stop();
    return result;
}

// ---- case: idle connections ------------------------------------------------------------------------------

/// Opens connections `next`.. until `n` (shared by the openers), each sending GET /healthz and reading its
/// 200; kept open in `kept` when it is non-null, else closed.
asio::awaitable<void> open_connections(asio::io_context& io, std::uint16_t port, std::size_t n,
                                       std::size_t& next,
                                       std::vector<std::unique_ptr<beast::tcp_stream>>* kept,
                                       std::string& problem) {
    const auto request = make_request(bhttp::verb::get, "/healthz");
    while (next < n && problem.empty()) {
        const std::size_t i = next++;
        auto stream = std::make_unique<beast::tcp_stream>(io);
        stream->expires_after(30s);
        if (auto [ec] = co_await stream->async_connect(loopback(port), as_tuple); ec) {
            problem = fmt::format("connection {}: connect: {}", i, ec.message());
            co_return;
        }
        if (auto [ec, bytes] = co_await bhttp::async_write(*stream, request, as_tuple); ec) {
            problem = fmt::format("connection {}: write: {}", i, ec.message());
            co_return;
        }
        beast::flat_buffer buffer;
        bhttp::response<bhttp::string_body> response;
        if (auto [ec, bytes] = co_await bhttp::async_read(*stream, buffer, response, as_tuple); ec) {
            problem = fmt::format("connection {}: read: {}", i, ec.message());
            co_return;
        }
        if (response.result_int() != 200 || !response.keep_alive()) {
            problem = fmt::format("connection {}: {} {}", i, response.result_int(), response.body());
            co_return;
        }
        stream->expires_never();
        if (kept != nullptr) {
            (*kept)[i] = std::move(stream);
        } else {
            boost::system::error_code ignored;
            stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
            stream->close();
        }
    }
}

/// Opens `n` connections to `port` with 64 openers at a time on this thread.
void open_all(std::uint16_t port, asio::io_context& io, std::size_t n,
              std::vector<std::unique_ptr<beast::tcp_stream>>* kept) {
    std::size_t next = 0;
    std::string problem;
    if (kept != nullptr) {
        kept->resize(n);
    }
    for (std::size_t i = 0; i < std::min<std::size_t>(64, n); ++i) {
        asio::co_spawn(io, open_connections(io, port, n, next, kept, problem), asio::detached);
    }
    io.restart();
    io.run();
    if (!problem.empty()) {
        throw std::runtime_error(problem);
    }
}

/// The server's VmRSS once it stops changing (5 equal reads 100 ms apart; at most 10 s).
long settled_rss(pid_t pid) {
    const auto deadline = steady::now() + 10s;
    long last = status_kib(pid, "VmRSS:");
    for (int same = 0; same < 5 && steady::now() < deadline;) {
        std::this_thread::sleep_for(100ms); // polling the child's RSS until it settles
        const long now = status_kib(pid, "VmRSS:");
        same = now == last ? same + 1 : 0;
        last = now;
    }
    return last;
}

struct IdleResult {
    std::size_t connections = 0;
    long before_kib = 0;
    long after_kib = 0;
    double per_connection_kib = 0;
};

IdleResult case_idle(const Settings& s) {
    std::fprintf(stderr, "idle connections: RSS growth for %zu keep-alive connections\n", s.idle);
    const auto limit = raise_fd_limit();
    if (limit < s.idle + 200) {
        throw std::runtime_error(
            fmt::format("{} idle connections need RLIMIT_NOFILE >= {} (hard limit {}): raise "
                        "it (ulimit -Hn) or pass a smaller --idle",
                        s.idle, s.idle + 200, limit));
    }
    ServerChild server(s.self);
    asio::io_context io;
    // Warm-up: 100 connections, used once, closed; the server has closed its side when the count is 0.
    open_all(server.port(), io, 100, nullptr);
    const auto deadline = steady::now() + 10s;
    while (server.connections() != 0) {
        if (steady::now() > deadline) {
            throw std::runtime_error("the warm-up connections are still open after 10 s");
        }
        std::this_thread::sleep_for(10ms); // polling the server's connection count
    }
    IdleResult result;
    result.connections = s.idle;
    result.before_kib = settled_rss(server.pid());
    std::vector<std::unique_ptr<beast::tcp_stream>> kept;
    open_all(server.port(), io, s.idle, &kept);
    const auto open = server.connections();
    if (open != s.idle) {
        throw std::runtime_error(
            fmt::format("the server has {} connections open, expected {}", open, s.idle));
    }
    result.after_kib = settled_rss(server.pid());
    result.per_connection_kib =
        static_cast<double>(result.after_kib - result.before_kib) / static_cast<double>(s.idle);
    std::fprintf(stderr,
                 "  VmRSS %ld KiB -> %ld KiB with %zu open: %.2f KiB per connection (RssAnon %ld KiB)\n",
                 result.before_kib, result.after_kib, open, result.per_connection_kib,
                 status_kib(server.pid(), "RssAnon:"));
    for (auto& stream : kept) {
        boost::system::error_code ignored;
        stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream->socket().close(ignored);
    }
    kept.clear();
    server.stop();
    return result;
}

// ---- output ----------------------------------------------------------------------------------------------

struct Row {
    std::string name;
    std::string measured;
    std::string baseline;
    double ratio = std::nan("");
    std::string goal;
    bool met = false;
};

std::string status_of(const Settings& s, const Row& row) {
    if (s.quick) {
        return "ran (--quick: no goal)";
    }
    return row.met ? "met" : "**missed**";
}

std::string number(double value) {
    return fmt::format("{:.0f}", value);
}

int run(Settings& s) {
    const auto load = load_average();
    std::optional<OverheadResult> overhead;
    std::optional<SseResult> sse;
    std::optional<IdleResult> idle;
    if (s.runs("overhead")) {
        overhead = case_overhead(s);
    }
    if (s.runs("sse")) {
        sse = case_sse(s);
    }
    if (s.runs("idle")) {
        idle = case_idle(s);
    }
    const auto load_after = load_average();

    std::vector<Row> rows;
    auto field = [](const std::vector<WrkRun>& runs, double WrkRun::*member) {
        std::vector<double> values;
        for (const auto& run : runs) {
            values.push_back(run.*member);
        }
        return values;
    };
    if (overhead) {
        const auto mp_rate = field(overhead->modelpool, &WrkRun::requests_per_s);
        const auto ng_rate = field(overhead->nginx, &WrkRun::requests_per_s);
        const auto mp_p99 = field(overhead->modelpool, &WrkRun::p99_ms);
        const auto ng_p99 = field(overhead->nginx, &WrkRun::p99_ms);
        const double rate_ratio = median_ratio(mp_rate, ng_rate);
        const double p99_ratio = median_ratio(mp_p99, ng_p99);
        rows.push_back({fmt::format("HTTP overhead: requests/s, POST /v1/embeddings, wrk -t1 -c{}, {} s x {}",
                                    s.connections, s.seconds, s.reps),
                        number(median(mp_rate)), "nginx " + number(median(ng_rate)), rate_ratio, ">= 0.6x",
                        rate_ratio >= 0.6});
        rows.push_back({"HTTP overhead: p99 latency", fmt::format("{:.2f} ms", median(mp_p99)),
                        fmt::format("nginx {:.2f} ms", median(ng_p99)), p99_ratio, "<= 2x",
                        p99_ratio <= 2.0});
    }
    if (sse) {
        const double ratio = median_ratio(sse->http, sse->in_process);
        rows.push_back(
            {fmt::format("SSE streaming: tokens/s, {} concurrent streams x {} tokens", s.streams, s.tokens),
             number(median(sse->http)) + " over HTTP", number(median(sse->in_process)) + " in-process", ratio,
             ">= 0.5x", ratio >= 0.5});
    }
    if (idle) {
        rows.push_back({fmt::format("idle connections: server RSS growth per keep-alive connection ({})",
                                    idle->connections),
                        fmt::format("{:.2f} KiB", idle->per_connection_kib),
                        fmt::format("{} -> {} KiB", idle->before_kib, idle->after_kib), std::nan(""),
                        "< 16 KiB", idle->per_connection_kib < 16.0});
    }

    fmt::print(
        "modelpool::http::Server (1 io thread, log level warn) vs nginx {}; load average {} at the start, "
        "{} at the end{}\n\n",
        "(1 worker)", load, load_after, s.quick ? " (--quick: figures mean little)" : "");
    fmt::print("| case | modelpool | baseline | ratio | goal | status |\n|---|---:|---:|---:|---|---|\n");
    for (const auto& row : rows) {
        fmt::print("| {} | {} | {} | {} | {} | {} |\n", row.name, row.measured, row.baseline,
                   std::isnan(row.ratio) ? std::string{} : fmt::format("{:.2f}x", row.ratio), row.goal,
                   status_of(s, row));
    }
    if (overhead) {
        auto cores = [&](const std::vector<WrkRun>& runs) {
            return median(field(runs, &WrkRun::server_cores));
        };
        auto cpu = [&](const std::vector<WrkRun>& runs) {
            return median(field(runs, &WrkRun::cpu_us_per_request));
        };
        fmt::print(
            "\nHTTP overhead context (medians): server CPU during wrk: modelpool {:.2f} cores, {:.1f} us per "
            "request, {:.0f}% in the kernel; nginx {:.2f} cores, {:.1f} us per request, {:.0f}% in the "
            "kernel; p50 "
            "latency modelpool {:.3f} ms, nginx {:.3f} ms; body {} bytes, whole response modelpool {} bytes, "
            "nginx "
            "{} bytes; wrk used {:.2f} cores against modelpool, {:.2f} against nginx.\n",
            cores(overhead->modelpool), cpu(overhead->modelpool),
            100 * median(field(overhead->modelpool, &WrkRun::system_share)), cores(overhead->nginx),
            cpu(overhead->nginx), 100 * median(field(overhead->nginx, &WrkRun::system_share)),
            median(field(overhead->modelpool, &WrkRun::p50_ms)),
            median(field(overhead->nginx, &WrkRun::p50_ms)), overhead->body_bytes,
            overhead->modelpool_response_bytes, overhead->nginx_response_bytes,
            median(field(overhead->modelpool, &WrkRun::client_cores)),
            median(field(overhead->nginx, &WrkRun::client_cores)));
    }
    if (sse) {
        fmt::print(
            "\nSSE context (medians): the server used {:.2f} cores, {:.2f} us CPU per token, {:.0f}% in the "
            "kernel; in-process {:.3f} us CPU per token.\n",
            median(sse->server_cores), median(sse->server_us_per_token),
            100 * median(sse->server_system_share), median(sse->in_process_us_per_token));
    }

    if (!s.json.empty()) {
        std::ofstream out(s.json);
        out << fmt::format(
            "{{\n  \"benchmark\": \"http\",\n  \"quick\": {},\n  \"load_average_start\": \"{}\",\n"
            "  \"load_average_end\": \"{}\",\n  \"settings\": {{\"wrk_seconds\": {}, \"reps\": {}, "
            "\"connections\": {}, \"streams\": {}, \"tokens\": {}, \"idle\": {}}},\n",
            s.quick, load, load_after, s.seconds, s.reps, s.connections, s.streams, s.tokens, s.idle);
        auto list = [](const std::vector<double>& values) {
            std::string text = "[";
            for (std::size_t i = 0; i < values.size(); ++i) {
                text += fmt::format("{}{:.4g}", i == 0 ? "" : ", ", values[i]);
            }
            return text + "]";
        };
        if (overhead) {
            out << fmt::format(
                "  \"overhead\": {{\"modelpool_requests_per_s\": {}, \"nginx_requests_per_s\": {}, "
                "\"modelpool_p99_ms\": {}, \"nginx_p99_ms\": {}, \"modelpool_server_cores\": {}, "
                "\"nginx_server_cores\": {}, \"body_bytes\": {}}},\n",
                list(field(overhead->modelpool, &WrkRun::requests_per_s)),
                list(field(overhead->nginx, &WrkRun::requests_per_s)),
                list(field(overhead->modelpool, &WrkRun::p99_ms)),
                list(field(overhead->nginx, &WrkRun::p99_ms)),
                list(field(overhead->modelpool, &WrkRun::server_cores)),
                list(field(overhead->nginx, &WrkRun::server_cores)), overhead->body_bytes);
        }
        if (sse) {
            out << fmt::format(
                "  \"sse\": {{\"http_tokens_per_s\": {}, \"in_process_tokens_per_s\": {}, "
                "\"server_cores\": {}, \"server_us_per_token\": {}, \"in_process_us_per_token\": {}}},\n",
                list(sse->http), list(sse->in_process), list(sse->server_cores),
                list(sse->server_us_per_token), list(sse->in_process_us_per_token));
        }
        if (idle) {
            out << fmt::format(
                "  \"idle\": {{\"connections\": {}, \"rss_before_kib\": {}, \"rss_after_kib\": {}, "
                "\"kib_per_connection\": {:.3f}}},\n",
                idle->connections, idle->before_kib, idle->after_kib, idle->per_connection_kib);
        }
        out << "  \"rows\": [";
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const auto& row = rows[i];
            out << fmt::format("{}\n    {{\"case\": \"{}\", \"modelpool\": \"{}\", \"baseline\": \"{}\", "
                               "\"ratio\": {}, \"goal\": \"{}\", \"status\": \"{}\"}}",
                               i == 0 ? "" : ",", row.name, row.measured, row.baseline,
                               std::isnan(row.ratio) ? std::string("null") : fmt::format("{:.3f}", row.ratio),
                               row.goal,
                               s.quick   ? "ran"
                               : row.met ? "met"
                                         : "missed");
        }
        out << "\n  ]\n}\n";
        if (!out) {
            std::fprintf(stderr, "cannot write %s\n", s.json.c_str());
            return 1;
        }
    }
    return 0;
}

bool parse(int argc, char** argv, Settings& s, bool& serve_mode) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--serve") {
            serve_mode = true;
        } else if (arg == "--quick") {
            s.quick = true;
            s.seconds = 1;
            s.reps = 1;
            s.streams = 8;
            s.tokens = 64;
            s.idle = 500;
        } else if (arg == "--json" && has_value) {
            s.json = argv[++i];
        } else if (arg == "--cases" && has_value) {
            s.cases.clear();
            std::istringstream list(argv[++i]);
            for (std::string name; std::getline(list, name, ',');) {
                if (name != "overhead" && name != "sse" && name != "idle") {
                    return false;
                }
                s.cases.push_back(name);
            }
        } else if (arg == "--seconds" && has_value) {
            s.seconds = std::atoi(argv[++i]);
        } else if (arg == "--reps" && has_value) {
            s.reps = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--connections" && has_value) {
            s.connections = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--streams" && has_value) {
            s.streams = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--tokens" && has_value) {
            s.tokens = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--idle" && has_value) {
            s.idle = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--wrk" && has_value) {
            s.wrk = argv[++i];
        } else if (arg == "--nginx" && has_value) {
            s.nginx = argv[++i];
        } else {
            return false;
        }
    }
    return s.seconds >= 1 && s.seconds <= 600 && s.reps >= 1 && s.reps <= 50 && s.connections >= 1 &&
           s.connections <= 1000 && s.streams >= 1 && s.streams <= generator_workers && s.tokens >= 1 &&
           s.tokens <= 4096 && s.idle >= 1 && s.idle + 100 <= max_connections;
}

} // namespace

int main(int argc, char** argv) {
    signal(SIGPIPE, SIG_IGN); // a child gone early must not kill us on a write
    Settings settings;
    bool serve_mode = false;
    if (!parse(argc, argv, settings, serve_mode)) {
        std::fprintf(
            stderr,
            "usage: %s [--quick] [--json PATH] [--cases overhead,sse,idle] [--seconds S] [--reps R] "
            "[--connections C] [--streams S (<= %zu)] [--tokens T (<= 4096)] [--idle N] [--wrk PATH] "
            "[--nginx PATH]\n",
            argv[0], generator_workers);
        return 2;
    }
    try {
        if (serve_mode) {
            return serve();
        }
        settings.self = std::filesystem::read_symlink("/proc/self/exe").string();
        if (settings.runs("overhead")) {
            settings.wrk = find_program("wrk", settings.wrk);
            settings.nginx = find_program("nginx", settings.nginx);
            if (settings.wrk.empty() || settings.nginx.empty()) {
                std::fprintf(stderr, "SKIPPED: %s not found (scripts/bootstrap.sh installs wrk and nginx)\n",
                             settings.wrk.empty() ? "wrk" : "nginx");
                return skipped;
            }
        }
        return run(settings);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "modelpool_bench_http failed: %s\n", error.what());
        return 1;
    }
}
