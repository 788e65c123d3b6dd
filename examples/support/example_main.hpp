// examples/support/example_main.hpp
//
// What every example shares: its command line, its logger, its smoke checks, and a way for main's thread to
// run a coroutine on the pool and wait for it.
//
//     int main(int argc, char** argv) {
//         return demo::example_main(argc, argv, "text_embedding", "nearest-sentence search",
//                                   [](const demo::ExampleOptions& options, demo::Checks& checks) {
//                                       ...
//                                       checks.check(dims == 256, "embedding has {} dimensions", dims);
//                                       return 0;
//                                   });
//     }
//
// Command line: `--smoke` (short run that checks its own output, as CTest runs it), `--cache-dir DIR` (the
// WeightStore's directory; default `<temp>/modelpool-demo`), `--log-level LEVEL` (trace, debug, info, warn,
// error, off; default warn), `--help`. main returns 1 when a check failed or the body threw, 2 for a bad
// command line.
#pragma once

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace demo {

namespace asio = modelpool::asio;

/// The parsed common command line.
struct ExampleOptions {
    bool smoke = false;                     ///< --smoke: short run checking its own output.
    std::filesystem::path cache_dir;        ///< --cache-dir: the WeightStore directory.
    std::string log_level = "warn";         ///< --log-level.
    std::shared_ptr<spdlog::logger> logger; ///< A stderr logger at `log_level`, for the pool and the example.
};

/// Smoke checks: each failed check prints "check failed: <message>" on stderr and makes the example's main
/// return 1. Thread-safe.
class Checks {
public:
    /// Records a failure when `condition` is false; returns `condition`.
    template <class... Args> bool check(bool condition, fmt::format_string<Args...> format, Args&&... args) {
        if (!condition) {
            const auto message = fmt::format(format, std::forward<Args>(args)...);
            std::lock_guard lock(mutex_);
            ++failures_;
            std::fprintf(stderr, "check failed: %s\n", message.c_str());
        }
        return condition;
    }

    /// Records a failure "<what> failed: <error>" when `outcome` holds an error; returns whether it holds a
    /// value.
    template <class T> bool ok(const modelpool::result<T>& outcome, std::string_view what) {
        return check(outcome.has_value(), "{} failed: {}", what,
                     outcome ? std::string() : outcome.error().to_string());
    }

    /// Failed checks so far.
    std::size_t failures() const {
        std::lock_guard lock(mutex_);
        return failures_;
    }

private:
    mutable std::mutex mutex_;
    std::size_t failures_ = 0;
};

/// Runs `coroutine` on `executor` (the pool's) and blocks the calling thread until it finishes; returns its
/// value or rethrows its exception. For main's thread only: never call it on a pool thread.
template <class T, class Executor> T run_coroutine(const Executor& executor, asio::awaitable<T> coroutine) {
    return asio::co_spawn(executor, std::move(coroutine), asio::use_future).get();
}

/// Spawns one worker the way the pool's design card shows: reserves `mb` MB for it from the pool's memory
/// governor, then calls `spawn(std::move(guard))`, one of the pool's `spawn_*_worker` functions (which
/// returns at once; the worker loads in the background). Records a failed check and returns false when either
/// fails.
template <class Spawn>
bool reserve_and_spawn(modelpool::Pool& pool, Checks& checks, std::string_view key, std::size_t mb,
                       Spawn&& spawn) {
    auto guard = pool.governor().try_allocate(mb, key);
    if (!checks.ok(guard, "reserving the worker's memory")) {
        return false;
    }
    const modelpool::result<modelpool::WorkerId> worker = spawn(std::move(*guard));
    return checks.ok(worker, "spawning the worker");
}

/// Parses the common command line into `options`; returns -1 to go on, else the exit code (0 after --help, 2
/// for a bad argument).
/// A program's own `--name VALUE` argument beyond the common ones (the main demo's `--duration`).
struct ExtraArgument {
    std::string_view name;                       ///< e.g. "--duration".
    std::string_view usage;                      ///< Its --help line, e.g. "--duration SECONDS  ...".
    std::function<bool(std::string_view)> parse; ///< Takes the value; false: invalid (exit code 2).
};

/// " [--name VALUE]..." for the usage line.
inline std::string extra_synopsis(const std::vector<ExtraArgument>& extra) {
    std::string out;
    for (const auto& e : extra) {
        const auto value = e.usage.substr(e.name.size() + 1);
        out += fmt::format(" [{} {}]", e.name, value.substr(0, value.find(' ')));
    }
    return out;
}

inline int parse_example_args(int argc, char** argv, std::string_view name, std::string_view description,
                              ExampleOptions& options, const std::vector<ExtraArgument>& extra = {}) {
    options.cache_dir = std::filesystem::temp_directory_path() / "modelpool-demo";
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const bool has_value = i + 1 < argc;
        const auto own =
            std::find_if(extra.begin(), extra.end(), [&](const auto& e) { return e.name == arg; });
        if (own != extra.end() && has_value) {
            if (!own->parse(argv[++i])) {
                std::fprintf(stderr, "%s: invalid value '%s' for %s (try --help)\n", argv[0], argv[i],
                             argv[i - 1]);
                return 2;
            }
        } else if (arg == "--smoke") {
            options.smoke = true;
        } else if (arg == "--cache-dir" && has_value) {
            options.cache_dir = argv[++i];
        } else if (arg == "--log-level" && has_value) {
            options.log_level = argv[++i];
        } else if (arg == "--help" || arg == "-h") {
            std::printf(
                "modelpool example %.*s: %.*s\n\n"
                "usage: %s [--smoke] [--cache-dir DIR] [--log-level LEVEL]%s\n"
                "  --smoke            short run that checks its own output (exit 1 on a failed check)\n"
                "  --cache-dir DIR    where generated demo weight files are kept (default %s)\n"
                "  --log-level LEVEL  trace, debug, info, warn, error or off (default warn)\n",
                static_cast<int>(name.size()), name.data(), static_cast<int>(description.size()),
                description.data(), argv[0], extra_synopsis(extra).c_str(),
                options.cache_dir.string().c_str());
            for (const auto& e : extra) {
                std::printf("  %.*s\n", static_cast<int>(e.usage.size()), e.usage.data());
            }
            return 0;
        } else {
            std::fprintf(stderr, "%s: unknown or incomplete argument '%s' (try --help)\n", argv[0], argv[i]);
            return 2;
        }
    }
    const auto level = spdlog::level::from_str(options.log_level);
    if (level == spdlog::level::off && options.log_level != "off") {
        std::fprintf(stderr, "%s: unknown log level '%s' (try --help)\n", argv[0], options.log_level.c_str());
        return 2;
    }
    options.logger = std::make_shared<spdlog::logger>(
        std::string(name), std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    options.logger->set_level(level);
    return -1;
}

/// An example's main: parses the command line, runs `body(options, checks)` (returning int or void) and
/// returns 1 when it threw or a check failed, else what it returned (0 for void).
template <class Body>
int example_main(int argc, char** argv, std::string_view name, std::string_view description,
                 const std::vector<ExtraArgument>& extra, Body&& body) {
    ExampleOptions options;
    if (const int code = parse_example_args(argc, argv, name, description, options, extra); code >= 0) {
        return code;
    }
    Checks checks;
    int code = 0;
    try {
        if constexpr (std::is_void_v<std::invoke_result_t<Body&, const ExampleOptions&, Checks&>>) {
            body(std::as_const(options), checks);
        } else {
            code = body(std::as_const(options), checks);
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "%.*s failed: %s\n", static_cast<int>(name.size()), name.data(), error.what());
        return 1;
    }
    if (checks.failures() > 0) {
        std::fprintf(stderr, "%zu check(s) failed\n", checks.failures());
        return 1;
    }
    if (code == 0 && options.smoke) {
        std::printf("smoke checks passed\n");
    }
    return code;
}

/// `example_main` for a program with only the common arguments.
template <class Body>
int example_main(int argc, char** argv, std::string_view name, std::string_view description, Body&& body) {
    return example_main(argc, argv, name, description, {}, std::forward<Body>(body));
}

} // namespace demo
