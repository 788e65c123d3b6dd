// modelpool_server: an OpenAI-compatible HTTP server (modelpool::http) over a pool of built-in models.
//
//     modelpool_server                              # the five demo models on 127.0.0.1:8000
//     modelpool_server --config server.json        # the models and knobs of a configuration file
//     curl -s localhost:8000/v1/embeddings -d '{"model":"text-embedding-demo","input":"slow and steady"}'
//
// With no configuration it serves the five demo models of examples/models/; a configuration file (JSON, see
// examples/server/server_config.hpp and examples/server/configs/) picks any built-in model, the real runtimes
// included, under any OpenAI name, and sets every pool and server knob. When it serves, it prints one line on
// stdout, "modelpool_server: listening on http://HOST:PORT", for scripts and tests to wait for. SIGTERM or
// SIGINT drains it (readiness turns 503 at once, requests in flight get the shutdown grace to finish) and it
// exits 0; a second signal ends the grace at once.
//
// Exit codes: 0 after a drain or --help/--check-config, 1 when serving failed (a model that does not
// register, a port in use), 2 for a bad command line or configuration.
#include "server/server_config.hpp"
#include "support/builtin_models.hpp"
#include "support/weight_store.hpp"

#include <modelpool/http/server.hpp>
#include <modelpool/modelpool.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_future.hpp>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>

namespace {

namespace asio = modelpool::asio;
using namespace std::chrono_literals;

/// The command line; each option given overrides the configuration file's value.
struct CommandLine {
    std::optional<std::string> config_file;
    std::optional<std::string> host;
    std::optional<std::uint16_t> port;
    std::optional<std::size_t> io_threads;
    std::optional<std::string> log_level;
    std::optional<std::string> cache_dir;
    bool check_config = false;
    bool help = false;
};

void print_usage(const char* program, const std::vector<demo::BuiltinModel>& builtins) {
    std::printf(
        "modelpool_server: an OpenAI-compatible HTTP server over a pool of built-in models\n\n"
        "usage: %s [--config FILE] [--host ADDR] [--port N] [--io-threads N] [--log-level LEVEL]\n"
        "          [--cache-dir DIR] [--check-config] [--help]\n"
        "  --config FILE      the models and knobs (JSON; see examples/server/configs/); without it the\n"
        "                     five demo models are served\n"
        "  --host ADDR        address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server to the "
        "network)\n"
        "  --port N           port to listen on (default 8000; 0 picks a free one)\n"
        "  --io-threads N     threads of the pool's io_context (default 2)\n"
        "  --log-level LEVEL  trace, debug, info, warn, error or off (default info: one line per request)\n"
        "  --cache-dir DIR    where generated model files are kept (default %s)\n"
        "  --check-config     validate the configuration, print it in full and exit\n\n"
        "Routes: GET /v1/models, POST /v1/embeddings, /v1/completions, /v1/chat/completions,\n"
        "/v1/images/generations; GET /healthz, /readyz, /metrics.\n\nBuilt-in models of this build:\n",
        program, (std::filesystem::temp_directory_path() / "modelpool-demo").string().c_str());
    for (const auto& m : builtins) {
        std::printf("  %-20.*s %-16.*s %.*s\n", static_cast<int>(m.name.size()), m.name.data(),
                    static_cast<int>(m.capability.size()), m.capability.data(),
                    static_cast<int>(m.description.size()), m.description.data());
    }
}

template <class T> bool parse_number(std::string_view text, T& out) {
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc{} && end == text.data() + text.size();
}

/// Parses argv; returns the error message for a bad command line.
modelpool::result<CommandLine> parse_command_line(int argc, char** argv) {
    CommandLine line;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            line.help = true;
            continue;
        }
        if (arg == "--check-config") {
            line.check_config = true;
            continue;
        }
        if (i + 1 >= argc) {
            return modelpool::fail(modelpool::errc::invalid_argument, "unknown or incomplete argument '{}'",
                                   arg);
        }
        const std::string_view value = argv[++i];
        if (arg == "--config") {
            line.config_file = std::string(value);
        } else if (arg == "--host") {
            line.host = std::string(value);
        } else if (arg == "--log-level") {
            line.log_level = std::string(value);
        } else if (arg == "--cache-dir") {
            line.cache_dir = std::string(value);
        } else if (arg == "--port") {
            if (!parse_number(value, line.port.emplace())) {
                return modelpool::fail(modelpool::errc::invalid_argument,
                                       "--port must be 0 to 65535 (got '{}')", value);
            }
        } else if (arg == "--io-threads") {
            if (!parse_number(value, line.io_threads.emplace())) {
                return modelpool::fail(modelpool::errc::invalid_argument,
                                       "--io-threads must be a positive integer (got '{}')", value);
            }
        } else {
            return modelpool::fail(modelpool::errc::invalid_argument, "unknown argument '{}'", arg);
        }
    }
    return line;
}

/// The configuration file (or the defaults), the command line's overrides applied, checked against the
/// built-in models of this build.
modelpool::result<server::ServerConfig> load_config(const CommandLine& line,
                                                    const std::vector<demo::BuiltinModel>& builtins) {
    auto config = server::default_config();
    if (line.config_file) {
        std::ifstream file(*line.config_file, std::ios::binary);
        if (!file) {
            return modelpool::fail(modelpool::errc::invalid_argument, "cannot read the configuration file {}",
                                   *line.config_file);
        }
        std::ostringstream text;
        text << file.rdbuf();
        auto parsed = server::parse_config(text.str());
        if (!parsed) {
            return modelpool::fail(modelpool::errc::invalid_argument, "{}: {}", *line.config_file,
                                   parsed.error().message());
        }
        config = std::move(*parsed);
    }
    if (line.host) {
        config.http.host = *line.host;
    }
    if (line.port) {
        config.http.port = *line.port;
    }
    if (line.io_threads) {
        config.pool.io_threads = *line.io_threads;
    }
    if (line.log_level) {
        config.log_level = *line.log_level;
    }
    if (line.cache_dir) {
        config.cache_dir = *line.cache_dir;
    }
    if (config.cache_dir.empty()) {
        config.cache_dir = (std::filesystem::temp_directory_path() / "modelpool-demo").string();
    }
    if (auto valid = server::validate(config); !valid) {
        return modelpool::unexpected(valid.error());
    }
    for (std::size_t i = 0; i < config.models.size(); ++i) {
        auto& m = config.models[i];
        const auto* builtin = demo::find_builtin(builtins, m.builtin);
        if (builtin == nullptr) {
            std::string known;
            for (const auto& b : builtins) {
                known += fmt::format("{}{}", known.empty() ? "" : ", ", b.name);
            }
            return modelpool::fail(modelpool::errc::invalid_argument,
                                   "models[{}].builtin: no built-in model \"{}\" in this build (known: {})",
                                   i, m.builtin, known);
        }
        if (!m.capability.empty() && m.capability != builtin->capability) {
            return modelpool::fail(modelpool::errc::invalid_argument,
                                   "models[{}].capability is \"{}\" but built-in model \"{}\" serves \"{}\"",
                                   i, m.capability, m.builtin, builtin->capability);
        }
        m.capability = std::string(builtin->capability);
        if (m.key.empty()) {
            m.key = m.name;
        }
        if (m.options.per_worker_mb == 0) {
            m.options.per_worker_mb = builtin->per_worker_mb;
        }
    }
    return config;
}

/// Registers the models, serves until a signal, drains. Returns the exit code.
int serve(const server::ServerConfig& config, const std::vector<demo::BuiltinModel>& builtins) {
    auto logger = std::make_shared<spdlog::logger>("modelpool_server",
                                                   std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_level(spdlog::level::from_str(config.log_level));

    auto pool_options = config.pool;
    pool_options.logger = logger;
    modelpool::Pool pool(pool_options);
    // Signals are caught from here on, so that one arriving while the models load still drains cleanly.
    asio::signal_set signals(pool.get_executor(), SIGINT, SIGTERM);
    auto first_signal = signals.async_wait(asio::use_future);

    demo::WeightStore store(config.cache_dir);
    demo::WeightServer files(pool.get_executor(), store);
    auto http_options = config.http;
    http_options.logger = logger;
    for (const auto& m : config.models) {
        // Prepares the model's files on this thread (generated weights: blocking work, kept off the pool's
        // threads), then registers it; its workers load asynchronously.
        auto registered =
            demo::find_builtin(builtins, m.builtin)->register_model({pool, store, files}, m.key, m.options);
        if (!registered) {
            logger->error("model \"{}\" ({}) could not be registered: {}", m.name, m.builtin,
                          registered.error().to_string());
            files.close();
            pool.stop();
            return 1;
        }
        logger->info("serving \"{}\": {} ({}), {} MB per worker, {} to {} workers", m.name, m.builtin,
                     m.capability, m.options.per_worker_mb, m.options.min_workers,
                     m.options.max_workers != 0 ? m.options.max_workers : config.pool.max_workers_per_model);
        http_options.models.push_back({.name = m.name, .key = m.key});
    }

    modelpool::http::Server server(pool, http_options);
    const auto port = server.listen();
    if (!port) {
        logger->error("cannot listen on {}:{}: {}", config.http.host, config.http.port,
                      port.error().to_string());
        files.close();
        pool.stop();
        return 1;
    }
    std::printf("modelpool_server: listening on http://%s:%u\n", config.http.host.c_str(), unsigned{*port});
    std::fflush(stdout);

    const auto signal = first_signal.get();
    logger->info("signal {}: draining (readiness 503; up to {} ms for requests in flight)", signal,
                 config.http.shutdown_grace.count());
    // A second signal ends the grace at once.
    signals.async_wait([&server, logger](boost::system::error_code ec, int again) {
        if (!ec) {
            logger->warn("signal {} during the drain: closing every connection now", again);
            server.drain(0ms, asio::detached);
        }
    });
    server.drain(config.http.shutdown_grace, asio::use_future).get();
    signals.cancel();
    files.close();
    pool.stop();
    logger->info("drained and stopped");
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    const auto builtins = demo::builtin_models();
    const auto line = parse_command_line(argc, argv);
    if (!line) {
        std::fprintf(stderr, "%s: %s (try --help)\n", argv[0], line.error().message().c_str());
        return 2;
    }
    if (line->help) {
        print_usage(argv[0], builtins);
        return 0;
    }
    const auto config = load_config(*line, builtins);
    if (!config) {
        std::fprintf(stderr, "%s: %s\n", argv[0], config.error().message().c_str());
        return 2;
    }
    if (line->check_config) {
        std::printf("%s\n", server::to_json(*config).c_str());
        return 0;
    }
    try {
        return serve(*config, builtins);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "%s: %s\n", argv[0], error.what());
        return 1;
    }
}
