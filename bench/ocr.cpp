// bench/ocr.cpp -> modelpool_bench_ocr
//
// Tesseract OCR through modelpool (examples/runtimes/tesseract_ocr.hpp), each figure measured side by side
// with its baseline in the same run:
//
//   | case                                                              | goal                       |
//   | OCR p50 latency through the pool, 1 client, vs Tesseract directly | pool adds <= 5% to p50     |
//   | OCR throughput, 2 workers vs 1 worker                             | >= 1.8x (on 2 cores)       |
//   | OCR throughput, 2 workers vs 2 threads sharing one instance       | >= 1.8x                    |
//   |   behind a std::mutex (what people write by hand)                 |                            |
//   | 1 ms heartbeat on the only io thread while 4 workers load         | p99 lateness < 2 ms        |
//   | RSS growth per worker vs runtimes::tesseract_ocr::per_worker_mb             | within 20% |
// and, for the OpenMP decision (EngineOptions::single_threaded), without a goal: throughput of 2 workers and
// the 1-client latency with Tesseract's OpenMP regions confined to the calling thread vs left at its default
// (up to 4 threads per region).
//
//   modelpool_bench_ocr [--quick] [--json FILE] [--cache-dir DIR]
//
// Prints a markdown table on stdout (progress on stderr), and the load average before and after: the
// figures mean something only on a quiet machine. `--quick` runs every case briefly (CTest runs it: it
// proves the benchmark works; its figures mean little).
#include "runtimes/tesseract_ocr.hpp"
#include "runtimes/text_render.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using modelpool::result;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::string_view key = "ocr";

/// CPU time (user + system) the process has used so far, in seconds.
double cpu_seconds() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
    return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double ms_between(steady::time_point a, steady::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

double percentile(std::vector<double> values, double p) {
    if (values.empty()) {
        return 0;
    }
    std::sort(values.begin(), values.end());
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(values.size())));
    return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

/// The process's resident set size in MB (VmRSS of /proc/self/status).
double rss_mb() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::stod(line.substr(6)) / 1024.0; // kB
        }
    }
    return 0;
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
}

template <class T> T value_or_throw(result<T> r, std::string_view what) {
    if (!r) {
        throw std::runtime_error(fmt::format("{}: {}", what, r.error().to_string()));
    }
    return std::move(*r);
}

/// A result row of the table.
struct Row {
    std::string name;
    std::string measured; ///< modelpool's figure vs its baseline, as text.
    std::string goal;
    double ratio = 0; ///< The figure compared with the goal.
    bool met = true;
    bool has_goal = true;
};
std::vector<Row> rows;

void add_row(Row row) {
    std::fprintf(stderr, "  %s: %s%s\n", row.name.c_str(), row.measured.c_str(),
                 row.has_goal ? (row.met ? " (goal met)" : " (goal MISSED)") : "");
    rows.push_back(std::move(row));
}

/// Default engine options with `single_threaded` as given.
runtimes::tesseract_ocr::EngineOptions engine_options(bool single_threaded) {
    runtimes::tesseract_ocr::EngineOptions options;
    options.single_threaded = single_threaded;
    return options;
}

/// A pool for the benchmark: `blocking` blocking threads, one io thread, a silent logger.
std::unique_ptr<modelpool::Pool> make_pool(std::size_t blocking) {
    auto logger = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
    return std::make_unique<modelpool::Pool>(modelpool::PoolOptions{
        .io_threads = 1,
        .blocking_threads = blocking,
        .memory_limit_mb = 16 * runtimes::tesseract_ocr::per_worker_mb,
        .logger = logger,
    });
}

/// Spawns `n` OCR workers under `key` and waits until they serve.
void spawn_workers(modelpool::Pool& pool, std::size_t n,
                   runtimes::tesseract_ocr::EngineOptions options = {}) {
    for (std::size_t i = 0; i < n; ++i) {
        auto guard = value_or_throw(pool.governor().try_allocate(runtimes::tesseract_ocr::per_worker_mb, key),
                                    "reserve");
        value_or_throw(
            pool.spawn_vision_worker(key, runtimes::tesseract_ocr::loader(pool.blocking_executor(), options),
                                     runtimes::tesseract_ocr::per_worker_mb, std::move(guard)),
            "spawn");
    }
    for (;;) {
        const auto snapshot = pool.snapshot(key);
        if (snapshot && snapshot->serving() >= n) {
            return;
        }
        if (snapshot && snapshot->starting() == 0 && snapshot->serving() < n) {
            throw std::runtime_error("a Tesseract worker failed to load");
        }
        std::this_thread::sleep_for(1ms); // polling the pool's state from main's thread, not a race fix
    }
}

/// Reads `stream` to its end from main's thread; the number of chunks.
std::size_t drain(modelpool::Stream<modelpool::TextChunk>& stream) {
    std::size_t chunks = 0;
    for (;;) {
        auto next = stream.async_next(asio::use_future).get();
        if (!next) {
            throw std::runtime_error("OCR stream failed: " + next.error().to_string());
        }
        if (!*next) {
            return chunks;
        }
        ++chunks;
    }
}

/// One OCR request through the pool, waited for; the number of line chunks.
std::size_t ocr_through_pool(modelpool::Pool& pool, const std::string& path) {
    auto stream =
        value_or_throw(pool.describe_image(key, path, "", asio::use_future).get(), "describe_image");
    return drain(stream);
}

/// `requests` OCR requests submitted at once; the throughput in requests per second.
double pool_throughput(modelpool::Pool& pool, const std::string& path, std::size_t requests,
                       std::size_t expected_lines) {
    const auto t0 = steady::now();
    std::vector<std::future<result<modelpool::Stream<modelpool::TextChunk>>>> pending;
    for (std::size_t i = 0; i < requests; ++i) {
        pending.push_back(pool.describe_image(key, path, "", asio::use_future));
    }
    for (auto& f : pending) {
        auto stream = value_or_throw(f.get(), "describe_image");
        if (drain(stream) != expected_lines) {
            throw std::runtime_error("OCR through the pool read the wrong number of lines");
        }
    }
    return static_cast<double>(requests) / (ms_between(t0, steady::now()) / 1000.0);
}

// ---- cases -----------------------------------------------------------------------------------------------

/// A 1 ms timer on a pool's io thread recording how late each tick fires.
class Heartbeat {
public:
    explicit Heartbeat(modelpool::Pool& pool) {
        done_ = asio::co_spawn(pool.get_executor(), beat(), asio::use_future);
        std::this_thread::sleep_for(20ms); // let it tick before the measured window opens
    }

    /// Stops it; the lateness (ms) of the ticks that fired in [from, to].
    std::vector<double> finish(steady::time_point from, steady::time_point to) {
        stop_ = true;
        done_.get();
        std::vector<double> out;
        std::lock_guard lock(mutex_);
        for (const auto& [fired, late] : ticks_) {
            if (fired >= from && fired <= to) {
                out.push_back(late);
            }
        }
        return out;
    }

private:
    asio::awaitable<void> beat() {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (!stop_.load()) {
            const auto due = steady::now() + 1ms;
            timer.expires_at(due);
            co_await timer.async_wait(asio::use_awaitable);
            const auto fired = steady::now();
            std::lock_guard lock(mutex_);
            ticks_.emplace_back(fired, ms_between(due, fired));
        }
    }

    std::mutex mutex_;
    std::vector<std::pair<steady::time_point, double>> ticks_; // (fired, lateness ms)
    std::atomic<bool> stop_{false};
    std::future<void> done_;
};

/// 4 workers loading on a pool with one io thread and the default blocking threads (one per hardware
/// thread): a 1 ms heartbeat on the io thread must keep ticking. Then the RSS growth per loaded (and warmed)
/// worker. Runs first, before any other Tesseract instance exists in the process, so that the RSS baseline is
/// clean. A control measures the same heartbeat on an idle pool for as long: the machine's own noise.
void case_load_and_memory(const std::string& path, std::size_t expected_lines) {
    const std::size_t workers = 4;
    auto pool = make_pool(0);
    std::this_thread::sleep_for(50ms); // the pool's threads are up before the baseline
    const double rss_before = rss_mb();

    Heartbeat heartbeat(*pool);
    const auto t0 = steady::now();
    spawn_workers(*pool, workers);
    const auto t1 = steady::now();
    const auto lateness = heartbeat.finish(t0, t1 + 2ms);
    const double p99 = percentile(lateness, 99);
    add_row(
        {"1 ms heartbeat on the only io thread while 4 Tesseract workers load",
         fmt::format("p99 {:.3f} ms, max {:.3f} ms over {} ticks ({:.0f} ms of loading, {} blocking threads)",
                     p99, percentile(lateness, 100), lateness.size(), ms_between(t0, t1),
                     std::thread::hardware_concurrency()),
         "p99 < 2 ms", p99, p99 < 2.0});

    const double rss_loaded = rss_mb();
    // One request per worker (4 at once on 4 idle workers), so each has recognised a page.
    pool_throughput(*pool, path, workers, expected_lines);
    const double rss_warm = rss_mb();
    const double per_worker = (rss_warm - rss_before) / static_cast<double>(workers);
    const double ratio = per_worker / static_cast<double>(runtimes::tesseract_ocr::per_worker_mb);
    add_row(
        {"RSS growth per Tesseract worker vs per_worker_mb",
         fmt::format("{:.1f} MB per worker after a page each ({:.1f} MB after loading only; RSS {:.0f} -> "
                     "{:.0f} -> {:.0f} MB) vs per_worker_mb {}: {:.2f}x",
                     per_worker, (rss_loaded - rss_before) / workers, rss_before, rss_loaded, rss_warm,
                     runtimes::tesseract_ocr::per_worker_mb, ratio),
         "within 20%", ratio, ratio >= 0.8 && ratio <= 1.2});
    pool->stop();

    auto idle = make_pool(0);
    Heartbeat control(*idle);
    const auto c0 = steady::now();
    std::this_thread::sleep_until(c0 + (t1 - t0));
    const auto noise = control.finish(c0, steady::now());
    add_row({"(control) the same heartbeat on an idle pool, as long: the machine's own noise",
             fmt::format("p99 {:.3f} ms, max {:.3f} ms over {} ticks", percentile(noise, 99),
                         percentile(noise, 100), noise.size()),
             "-", percentile(noise, 99), true, false});
    idle->stop();
}

/// p50 latency of one client through the pool vs calling an Engine directly on main's thread; the calls
/// alternate, so both see the same machine.
void case_latency(const std::string& path, std::size_t expected_lines, std::size_t rounds,
                  bool single_threaded) {
    const auto l0 = steady::now();
    auto engine =
        value_or_throw(runtimes::tesseract_ocr::Engine::load(engine_options(single_threaded)), "load");
    const auto l1 = steady::now();
    if (single_threaded) {
        // How long an Engine takes to load (on the blocking executor) and to go: a worker that stops destroys
        // its model on its io thread, so this is how long that thread is busy then.
        value_or_throw(engine.recognize_file(path), "recognize");
        auto doomed = value_or_throw(runtimes::tesseract_ocr::Engine::load(), "load");
        value_or_throw(doomed.recognize_file(path), "recognize");
        const auto d0 = steady::now();
        { [[maybe_unused]] const auto gone = std::move(doomed); }
        const auto d1 = steady::now();
        add_row({"(info) one Engine: load, and destruction after a page (both on the blocking executor in a "
                 "pool)",
                 fmt::format("load {:.1f} ms, destruction {:.2f} ms", ms_between(l0, l1), ms_between(d0, d1)),
                 "-", ms_between(d0, d1), true, false});
    }
    auto pool = make_pool(2);
    spawn_workers(*pool, 1, engine_options(single_threaded));
    std::vector<double> direct, pooled;
    for (std::size_t i = 0; i < rounds + 1; ++i) {
        auto t0 = steady::now();
        const auto page = value_or_throw(engine.recognize_file(path), "recognize");
        const auto chunks =
            runtimes::tesseract_ocr::format_chunks(page, runtimes::tesseract_ocr::Mode::lines);
        auto t1 = steady::now();
        const auto lines = ocr_through_pool(*pool, path);
        auto t2 = steady::now();
        if (chunks.size() != expected_lines || lines != expected_lines) {
            throw std::runtime_error("OCR read the wrong number of lines");
        }
        if (i > 0) { // the first round warms both
            direct.push_back(ms_between(t0, t1));
            pooled.push_back(ms_between(t1, t2));
        }
    }
    pool->stop();
    const double d = percentile(direct, 50);
    const double p = percentile(pooled, 50);
    const double overhead = p / d - 1.0;
    if (single_threaded) {
        add_row(
            {"OCR p50 latency through the pool, 1 client, vs Tesseract directly on one thread",
             fmt::format("{:.2f} ms vs {:.2f} ms: {:+.1f}% ({} calls each)", p, d, overhead * 100, rounds),
             "pool adds <= 5%", overhead, overhead <= 0.05});
    } else {
        add_row(
            {"(OpenMP default, up to 4 threads per region) OCR p50 latency, 1 client, pool vs direct",
             fmt::format("{:.2f} ms vs {:.2f} ms: {:+.1f}% ({} calls each)", p, d, overhead * 100, rounds),
             "-", overhead, true, false});
    }
}

/// A pool with `workers` OCR workers, warmed (each has recognised a page).
std::unique_ptr<modelpool::Pool> warm_pool(std::size_t workers, bool single_threaded, const std::string& path,
                                           std::size_t expected_lines) {
    auto pool = make_pool(2);
    spawn_workers(*pool, workers, engine_options(single_threaded));
    pool_throughput(*pool, path, workers, expected_lines);
    return pool;
}

/// Context switches of the threads of `seconds_two_threads` with an Engine each: voluntary ones (waiting,
/// e.g. on a lock inside the runtime) and involuntary ones (preempted: other work wanted the core).
std::atomic<long> voluntary_switches{0}, preemptions{0};

/// 2 plain threads (no pool) doing `requests` recognitions between them; the time (s) they take. With one
/// `engines` entry they share it under a std::mutex (what people write by hand); with two, each thread has
/// its own (the machine's own scaling: the ceiling for the pool).
double seconds_two_threads(const std::vector<runtimes::tesseract_ocr::Engine*>& engines,
                           const std::string& path, std::size_t expected_lines, std::size_t requests) {
    std::mutex mutex;
    auto once = [&](runtimes::tesseract_ocr::Engine& engine) {
        std::unique_lock lock(mutex, std::defer_lock);
        if (engines.size() == 1) {
            lock.lock();
        }
        const auto page = value_or_throw(engine.recognize_file(path), "recognize");
        if (runtimes::tesseract_ocr::format_chunks(page, runtimes::tesseract_ocr::Mode::lines).size() !=
            expected_lines) {
            throw std::runtime_error("OCR read the wrong number of lines");
        }
    };
    std::atomic<std::size_t> next{0};
    const auto t0 = steady::now();
    std::vector<std::future<void>> threads;
    for (std::size_t t = 0; t < 2; ++t) {
        threads.push_back(std::async(std::launch::async, [&, t] {
            rusage before{};
            getrusage(RUSAGE_THREAD, &before);
            while (next.fetch_add(1) < requests) {
                once(*engines[t % engines.size()]);
            }
            rusage after{};
            getrusage(RUSAGE_THREAD, &after);
            if (engines.size() == 2) {
                voluntary_switches += after.ru_nvcsw - before.ru_nvcsw;
                preemptions += after.ru_nivcsw - before.ru_nivcsw;
            }
        }));
    }
    for (auto& t : threads) {
        t.get();
    }
    return ms_between(t0, steady::now()) / 1000.0;
}

/// Throughputs of 1 worker, 2 workers, a shared instance behind a mutex, 2 workers with OpenMP at its default
/// and 2 plain threads with an Engine each. Every setup is built first; then the measurements run in
/// interleaved rounds (each setup a slice of the requests per round), so that a change in the machine's load
/// hits them all alike.
void case_throughput(const std::string& path, std::size_t expected_lines, std::size_t requests) {
    const std::size_t rounds = 4;
    const std::size_t per_round = std::max<std::size_t>(2, requests / rounds);
    auto one_worker = warm_pool(1, true, path, expected_lines);
    auto two_workers = warm_pool(2, true, path, expected_lines);
    auto two_openmp = warm_pool(2, false, path, expected_lines);
    auto shared = value_or_throw(runtimes::tesseract_ocr::Engine::load(), "load");
    auto own = value_or_throw(runtimes::tesseract_ocr::Engine::load(), "load");
    const std::vector<runtimes::tesseract_ocr::Engine*> one_engine = {&shared}, two_engines = {&shared, &own};
    seconds_two_threads(two_engines, path, expected_lines, 2); // warm
    double s_one = 0, s_two = 0, s_shared = 0, s_openmp = 0, s_plain = 0;
    double cpu_plain = 0; // CPU seconds the 2 plain threads used: how many cores they really got
    auto seconds = [&](modelpool::Pool& pool) {
        return static_cast<double>(per_round) / pool_throughput(pool, path, per_round, expected_lines);
    };
    for (std::size_t r = 0; r < rounds; ++r) {
        s_one += seconds(*one_worker);
        s_two += seconds(*two_workers);
        s_shared += seconds_two_threads(one_engine, path, expected_lines, per_round);
        s_openmp += seconds(*two_openmp);
        const double c0 = cpu_seconds();
        s_plain += seconds_two_threads(two_engines, path, expected_lines, per_round);
        cpu_plain += cpu_seconds() - c0;
    }
    for (auto* pool : {one_worker.get(), two_workers.get(), two_openmp.get()}) {
        pool->stop();
    }
    const double n = static_cast<double>(rounds * per_round);
    const double one = n / s_one, two = n / s_two, mutexed = n / s_shared, openmp = n / s_openmp;
    const double plain = n / s_plain;
    add_row({"OCR throughput, 2 workers vs 1 worker (2 cores)",
             fmt::format("{:.2f} vs {:.2f} requests/s: {:.2f}x ({} requests each, in {} interleaved rounds)",
                         two, one, two / one, rounds * per_round, rounds),
             ">= 1.8x", two / one, two / one >= 1.8});
    add_row({"OCR throughput, 2 workers vs 2 threads sharing one instance behind a std::mutex",
             fmt::format("{:.2f} vs {:.2f} requests/s: {:.2f}x", two, mutexed, two / mutexed), ">= 1.8x",
             two / mutexed, two / mutexed >= 1.8});
    add_row(
        {"(control) 2 plain threads with an Engine each vs 2 threads sharing one: the machine's own scaling",
         fmt::format("{:.2f} vs {:.2f} requests/s: {:.2f}x, using {:.2f} cores (2 pool workers reach {:.0f}% "
                     "of these 2 threads; {} voluntary context switches, {} preemptions)",
                     plain, mutexed, plain / mutexed, cpu_plain / s_plain, 100 * two / plain,
                     voluntary_switches.load(), preemptions.load()),
         "-", plain / mutexed, true, false});
    add_row({"(OpenMP) throughput of 2 workers, Tesseract's OpenMP confined to the calling thread vs default",
             fmt::format("{:.2f} vs {:.2f} requests/s: {:.2f}x", two, openmp, two / openmp), "-",
             two / openmp, true, false});
}

void write_json(const std::string& file, bool quick, const std::string& load_before,
                const std::string& load_after) {
    std::string out = "{\n  \"benchmark\": \"ocr\",\n";
    out += fmt::format("  \"quick\": {},\n  \"loadavg_before\": \"{}\",\n  \"loadavg_after\": \"{}\",\n",
                       quick, load_before, load_after);
    out += fmt::format("  \"hardware_threads\": {},\n  \"rows\": [\n", std::thread::hardware_concurrency());
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        out +=
            fmt::format("    {{\"case\": \"{}\", \"measured\": \"{}\", \"goal\": \"{}\", \"value\": {:.4f}, "
                        "\"met\": {}}}{}\n",
                        r.name, r.measured, r.goal, r.ratio, r.has_goal ? (r.met ? "true" : "false") : "null",
                        i + 1 == rows.size() ? "" : ",");
    }
    out += "  ]\n}\n";
    std::ofstream(file) << out;
}

} // namespace

int main(int argc, char** argv) {
    bool quick = false;
    std::string json;
    std::filesystem::path dir = std::filesystem::temp_directory_path() / "modelpool-bench-ocr";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--quick") {
            quick = true;
        } else if (arg == "--json" && i + 1 < argc) {
            json = argv[++i];
        } else if (arg == "--cache-dir" && i + 1 < argc) {
            dir = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--quick] [--json FILE] [--cache-dir DIR]\n", argv[0]);
            return arg == "--help" ? 0 : 2;
        }
    }
    try {
        const std::vector<std::string> text = {"A Hare one day ridiculed the short feet",
                                               "and slow pace of the Tortoise.",
                                               "Slow but steady wins the race."};
        const auto png = value_or_throw(runtimes::tesseract_ocr::render_text_png(text), "rendering the page");
        std::filesystem::create_directories(dir);
        const auto path = (dir / "ocr-bench-page.png").string();
        std::ofstream(path, std::ios::binary) << png;

        const std::string load_before = load_average();
        std::fprintf(stderr, "load average before: %s (%u hardware threads)%s\n", load_before.c_str(),
                     std::thread::hardware_concurrency(), quick ? "; quick mode" : "");
        const std::size_t rounds = quick ? 5 : 60;
        const std::size_t requests = quick ? 6 : 80;
        case_load_and_memory(path, text.size());
        case_latency(path, text.size(), rounds, true);
        case_latency(path, text.size(), rounds, false);
        case_throughput(path, text.size(), requests);
        const std::string load_after = load_average();

        std::printf("| case | measured | goal | met |\n|---|---|---|---|\n");
        for (const auto& r : rows) {
            std::printf("| %s | %s | %s | %s |\n", r.name.c_str(), r.measured.c_str(), r.goal.c_str(),
                        r.has_goal ? (r.met ? "yes" : "NO") : "-");
        }
        std::printf("\nload average before %s, after %s; %u hardware threads%s\n", load_before.c_str(),
                    load_after.c_str(), std::thread::hardware_concurrency(),
                    quick ? "; quick mode: the figures mean little" : "");
        if (!json.empty()) {
            write_json(json, quick, load_before, load_after);
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "ocr benchmark failed: %s\n", error.what());
        return 1;
    }
    return 0;
}
