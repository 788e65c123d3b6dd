// bench/fasttext.cpp -> modelpool_bench_fasttext
//
// fastText sentence embeddings per second through the pool versus direct calls, side by side in one run:
//
//   direct  W plain threads, each calling its own FastTextEngine (the same model) in a loop;
//   pool    a Pool with W text_embedding workers (W io threads, W blocking threads) and C client
//           coroutines on the pool, each awaiting `pool.embed` (or `pool.batch_embed`) in a loop;
//
// for `embed` (one sentence per call) and `batch_embed` (B sentences per call). The goal: pool/direct at
// least 0.9. The texts are the sentences of the shipped Aesop text, in turn; the model is the examples'
// (trained into the cache directory on first run, as the example does). The pool's vectors are checked
// against the direct ones.
//
//   modelpool_bench_fasttext [--quick] [--json PATH] [--workers W] [--clients C] [--batch B] [--seconds S]
//                            [--cache-dir DIR] [--data-dir DIR]
//
// Each figure is given per second of wall-clock time and per second of the process's CPU time (all threads):
// on a shared machine the first mostly measures the scheduler's shares, the second the work per embedding.
// Prints a markdown table on stdout. `--quick` (CTest's bench.fasttext) runs each case for 0.2 s: it proves
// the benchmark builds and runs; its figures mean little. Full-run figures mean something only on a quiet
// machine: the table's header shows the load average at the start.

// Boost.Beast (the loopback weight server, from support/weight_store.hpp) trips a false -Wmaybe-uninitialized
// in GCC 12 with the sanitizers at -O2 (a boost::optional in its HTTP parser); benchmarks always build at
// -O2. Included first, here, so the pragma covers its code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <boost/beast/http.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include "models/aesop_text.hpp"
#include "runtimes/fasttext_embedder.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <time.h>

namespace {

namespace asio = modelpool::asio;
using clock_type = std::chrono::steady_clock;

constexpr std::string_view key = "fasttext";

struct Settings {
    bool quick = false;
    std::string json;
    std::size_t workers = 2;
    std::size_t io_threads = 0; ///< 0: one per worker.
    std::size_t clients = 8;
    std::size_t batch = 32;
    double seconds = 3.0;
    std::filesystem::path cache_dir = std::filesystem::temp_directory_path() / "modelpool-demo";
    // The shipped text, found from this file's path (the benchmarks get no data-directory definition).
    std::filesystem::path data_dir =
        std::filesystem::path(__FILE__).parent_path().parent_path() / "examples" / "data";
};

/// Embeddings per second of wall-clock time, and per second of the process's CPU time (all its threads). The
/// second does not depend on how much of the machine other programs leave: on a shared machine the wall-clock
/// figures mostly measure the scheduler's shares (the pool runs one thread more than the direct case).
struct Rate {
    double wall = 0;
    double cpu = 0;
};

/// The process's CPU time (all threads) in seconds.
double cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

/// One measured case: embeddings per second, direct and through the pool.
struct Row {
    std::string operation;
    Rate direct;
    Rate pool;
};

/// The texts of call number `call` (`size` consecutive sentences, wrapping around).
std::vector<std::string> texts_of(const std::vector<std::string>& sentences, std::size_t call,
                                  std::size_t size) {
    std::vector<std::string> texts;
    texts.reserve(size);
    for (std::size_t i = 0; i < size; ++i) {
        texts.push_back(sentences[(call * size + i) % sentences.size()]);
    }
    return texts;
}

/// Direct: one thread per engine, each embedding `batch` sentences per call (`batch` 0: `embed`, one per
/// call) until `seconds` have passed.
Rate run_direct(std::vector<runtimes::FastTextEngine>& engines, const std::vector<std::string>& sentences,
                std::size_t batch, double seconds) {
    std::atomic<std::size_t> total{0};
    std::atomic<bool> failed{false};
    const double cpu_start = cpu_seconds();
    const auto start = clock_type::now();
    const auto deadline =
        start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < engines.size(); ++t) {
        threads.emplace_back([&, t] {
            auto& engine = engines[t];
            std::size_t done = 0;
            for (std::size_t call = t; clock_type::now() < deadline; call += engines.size()) {
                if (batch == 0) {
                    failed = failed || !engine.embed(sentences[call % sentences.size()]);
                    ++done;
                } else {
                    const auto texts = texts_of(sentences, call, batch);
                    failed = failed || !engine.batch_embed(texts);
                    done += batch;
                }
            }
            total += done;
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    if (failed) {
        throw std::runtime_error("a direct call failed");
    }
    const double wall = std::chrono::duration<double>(clock_type::now() - start).count();
    return {static_cast<double>(total) / wall, static_cast<double>(total) / (cpu_seconds() - cpu_start)};
}

/// One pool client: awaits `embed` (batch 0) or `batch_embed` in a loop until the deadline.
asio::awaitable<void> client(modelpool::Pool& pool, const std::vector<std::string>& sentences,
                             std::size_t first, std::size_t stride, std::size_t batch,
                             clock_type::time_point deadline, std::atomic<std::size_t>& total,
                             std::atomic<bool>& failed) {
    std::size_t done = 0;
    for (std::size_t call = first; clock_type::now() < deadline; call += stride) {
        if (batch == 0) {
            auto request = pool.embed(key, sentences[call % sentences.size()]);
            auto vector = co_await std::move(request);
            failed = failed || !vector;
            ++done;
        } else {
            auto request = pool.batch_embed(key, texts_of(sentences, call, batch));
            auto vectors = co_await std::move(request);
            failed = failed || !vectors;
            done += batch;
        }
    }
    total += done;
}

/// Pool: `clients` coroutines on the pool until `seconds` have passed.
Rate run_pool(modelpool::Pool& pool, const std::vector<std::string>& sentences, std::size_t clients,
              std::size_t batch, double seconds) {
    std::atomic<std::size_t> total{0};
    std::atomic<bool> failed{false};
    const double cpu_start = cpu_seconds();
    const auto start = clock_type::now();
    const auto deadline =
        start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(seconds));
    std::vector<std::future<void>> running;
    for (std::size_t c = 0; c < clients; ++c) {
        running.push_back(asio::co_spawn(pool.get_executor(),
                                         client(pool, sentences, c, clients, batch, deadline, total, failed),
                                         asio::use_future));
    }
    for (auto& r : running) {
        r.get();
    }
    if (failed) {
        throw std::runtime_error("a pool request failed");
    }
    const double wall = std::chrono::duration<double>(clock_type::now() - start).count();
    return {static_cast<double>(total) / wall, static_cast<double>(total) / (cpu_seconds() - cpu_start)};
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return fmt::format("{} {} {}", one, five, fifteen);
}

bool parse(int argc, char** argv, Settings& s) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--quick") {
            s.quick = true;
            s.seconds = 0.2;
        } else if (arg == "--json" && has_value) {
            s.json = argv[++i];
        } else if (arg == "--workers" && has_value) {
            s.workers = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--io-threads" && has_value) {
            s.io_threads = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--clients" && has_value) {
            s.clients = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--batch" && has_value) {
            s.batch = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--seconds" && has_value) {
            s.seconds = std::strtod(argv[++i], nullptr);
        } else if (arg == "--cache-dir" && has_value) {
            s.cache_dir = argv[++i];
        } else if (arg == "--data-dir" && has_value) {
            s.data_dir = argv[++i];
        } else {
            return false;
        }
    }
    return s.workers >= 1 && s.workers <= 64 && s.clients >= 1 && s.clients <= 4096 && s.batch >= 1 &&
           s.batch <= 4096 && s.seconds > 0 && s.seconds <= 600;
}

int run(const Settings& s) {
    const auto load = load_average();
    demo::WeightStore store(s.cache_dir);
    const auto text = store.contents(demo::ensure_aesop_text(store, s.data_dir).filename().string());
    const auto name = std::string(runtimes::fasttext_model_name);
    runtimes::ensure_fasttext_model(store, *text);
    const auto bytes = store.contents(name);
    const auto sentences = demo::fable_sentences(*text);

    std::vector<runtimes::FastTextEngine> engines;
    for (std::size_t i = 0; i < s.workers; ++i) {
        auto engine = runtimes::FastTextEngine::load(*bytes, name);
        if (!engine) {
            std::fprintf(stderr, "loading the model failed: %s\n", engine.error().to_string().c_str());
            return 1;
        }
        engines.push_back(std::move(*engine));
    }
    auto expected = engines[0].batch_embed(sentences);
    if (!expected) {
        std::fprintf(stderr, "direct batch_embed failed: %s\n", expected.error().to_string().c_str());
        return 1;
    }

    modelpool::Pool pool(
        {.io_threads = s.io_threads != 0 ? s.io_threads : s.workers, // short embeds run inline
         .blocking_threads = s.workers,
         .memory_limit_mb = s.workers * runtimes::fasttext_per_worker_mb,
         .queue_capacity = std::max<std::size_t>(1024, s.clients),
         .logger = std::make_shared<spdlog::logger>("fasttext-bench",
                                                    std::make_shared<spdlog::sinks::null_sink_mt>())});
    demo::WeightServer server(pool.get_executor(), store);
    for (std::size_t i = 0; i < s.workers; ++i) {
        auto guard = pool.governor().try_allocate(runtimes::fasttext_per_worker_mb, key);
        if (!guard) {
            std::fprintf(stderr, "reserving memory failed: %s\n", guard.error().to_string().c_str());
            return 1;
        }
        auto spawned =
            pool.spawn_text_embedding_worker(key, runtimes::fasttext_loader(pool, server.url(name)),
                                             runtimes::fasttext_per_worker_mb, std::move(*guard));
        if (!spawned) {
            std::fprintf(stderr, "spawning a worker failed: %s\n", spawned.error().to_string().c_str());
            return 1;
        }
    }
    // The pool's vectors are the direct ones (this also waits until the workers are up).
    auto through_pool = pool.batch_embed(key, sentences, std::nullopt, asio::use_future).get();
    if (!through_pool || *through_pool != *expected) {
        std::fprintf(stderr, "the pool's vectors differ from the direct ones%s\n",
                     through_pool ? "" : (": " + through_pool.error().to_string()).c_str());
        return 1;
    }

    std::fprintf(stderr, "warming up...\n");
    run_direct(engines, sentences, 0, s.seconds / 4);
    run_pool(pool, sentences, s.clients, 0, s.seconds / 4);
    std::vector<Row> rows;
    for (const std::size_t batch : {std::size_t{0}, s.batch}) {
        Row row{batch == 0 ? std::string("embed") : fmt::format("batch_embed ({} per call)", batch), {}, {}};
        std::fprintf(stderr, "%s...\n", row.operation.c_str());
        row.direct = run_direct(engines, sentences, batch, s.seconds);
        row.pool = run_pool(pool, sentences, s.clients, batch, s.seconds);
        rows.push_back(row);
    }
    server.close();
    pool.stop();

    fmt::print("fastText sentence embeddings per second: {} workers vs {} threads, {} client coroutines, "
               "{} dimensions, {} sentences, {:.1f} s per case{}; load average at start {}\n\n",
               s.workers, s.workers, s.clients, engines[0].dimensions(), sentences.size(), s.seconds,
               s.quick ? " (--quick: figures mean little)" : "", load);
    fmt::print("| operation | direct (embeddings/s) | pool (embeddings/s) | pool/direct | goal | direct "
               "(embeddings/CPU-s) | pool (embeddings/CPU-s) | pool/direct (CPU) |\n");
    fmt::print("|---|---:|---:|---:|---|---:|---:|---:|\n");
    for (const auto& row : rows) {
        const double ratio = row.pool.wall / row.direct.wall;
        fmt::print("| {} | {:.0f} | {:.0f} | {:.2f}x | >= 0.9x: {} | {:.0f} | {:.0f} | {:.2f}x |\n",
                   row.operation, row.direct.wall, row.pool.wall, ratio, ratio >= 0.9 ? "met" : "not met",
                   row.direct.cpu, row.pool.cpu, row.pool.cpu / row.direct.cpu);
    }
    if (!s.json.empty()) {
        std::ofstream out(s.json);
        out << fmt::format(
            "{{\n  \"benchmark\": \"fasttext\",\n  \"workers\": {},\n  \"clients\": {},\n"
            "  \"batch\": {},\n  \"seconds\": {},\n  \"quick\": {},\n  \"load_average\": \"{}\",\n"
            "  \"rows\": [",
            s.workers, s.clients, s.batch, s.seconds, s.quick, load);
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const auto& r = rows[i];
            out << fmt::format(
                "{}\n    {{\"operation\": \"{}\", \"direct_per_s\": {:.1f}, \"pool_per_s\": {:.1f}, "
                "\"ratio\": {:.3f}, \"direct_per_cpu_s\": {:.1f}, \"pool_per_cpu_s\": {:.1f}, "
                "\"cpu_ratio\": {:.3f}}}",
                i == 0 ? "" : ",", r.operation, r.direct.wall, r.pool.wall, r.pool.wall / r.direct.wall,
                r.direct.cpu, r.pool.cpu, r.pool.cpu / r.direct.cpu);
        }
        out << "\n  ]\n}\n";
        if (!out) {
            std::fprintf(stderr, "cannot write %s\n", s.json.c_str());
            return 1;
        }
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    Settings settings;
    if (!parse(argc, argv, settings)) {
        std::fprintf(
            stderr,
            "usage: %s [--quick] [--json PATH] [--workers W] [--clients C] [--batch B] [--seconds S] "
            "[--cache-dir DIR] [--data-dir DIR]\n",
            argv[0]);
        return 2;
    }
    try {
        return run(settings);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "modelpool_bench_fasttext failed: %s\n", error.what());
        return 1;
    }
}
