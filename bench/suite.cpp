// bench/suite.cpp -> modelpool_bench_suite
//
// Every benchmark of issue 5 in one program (one translation unit: each Asio TU costs ~10 s to compile).
// Each case runs modelpool and its baseline side by side in the same process and run, so every figure that
// has a goal is a ratio of two measurements taken on the same (shared, noisy) machine at the same time.
//
//   modelpool_bench_suite [--quick] [--json PATH] [--cases a,b,...]
//
// Prints one markdown table on stdout (progress goes to stderr) and writes PATH (default
// bench/results.json) with the rows and the machine, compiler, flags and date. Cases: cold_start (which
// also measures loop_lateness), request_overhead, routing_scale, idle_memory, streaming, compile_time.
// `--quick` uses small sizes and one repetition: it proves that everything builds and runs (CTest runs it),
// its figures mean little.
#include "baselines.hpp"
#include "bench_config.hpp"

#include <modelpool/modelpool.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/channel.hpp>
#include <boost/asio/use_future.hpp>

#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using bench::error_code;
using modelpool::Embedding;
using modelpool::result;
using steady = std::chrono::steady_clock;
using namespace std::chrono_literals;

// ---- configuration -------------------------------------------------------------------------------------

struct config {
    bool quick = false;
    std::vector<std::size_t> cold_ks{16, 256, 1024}; // workers per cold start
    std::chrono::milliseconds load_time{50};         // each loader's async wait
    std::size_t cold_reps = 3;                       // modelpool cold starts per K (the seed runs once)
    std::size_t reps = 7;                            // repetitions of every other timed figure (median)
    std::size_t workers = 4;                         // workers serving the request-overhead case
    std::size_t sequential_requests = 20000;         // 1 client
    std::size_t clients = 64;                        // concurrent clients
    std::size_t per_client = 500;                    // requests per concurrent client
    std::vector<std::size_t> routing_ks{1, 16, 64, 256, 4096}; // 64: as many workers as concurrent clients
    std::size_t routing_requests = 20000;
    std::size_t idle_workers = 10000;
    std::size_t idle_threads = 1000;
    std::size_t stream_chunks = 200000;
    std::size_t compile_reps = 2;
    bool compile_syntax_only = false;

    static config make(bool quick) {
        config c;
        if (quick) {
            c.quick = true;
            c.cold_ks = {16, 64};
            c.cold_reps = 1;
            c.reps = 1;
            c.sequential_requests = 2000;
            c.per_client = 50;
            c.routing_requests = 2000;
            c.idle_workers = 1000;
            c.idle_threads = 100;
            c.stream_chunks = 5000;
            c.compile_reps = 1;
            c.compile_syntax_only = true;
        }
        return c;
    }
};

// ---- results -------------------------------------------------------------------------------------------

struct row {
    std::string case_id;
    std::string variant;
    std::string figure;
    double value = 0;
    std::string unit;
    std::optional<double> ratio; // the figure a goal is held to, measured side by side
    std::string ratio_of;        // what the ratio divides
    std::string goal;            // e.g. "<= 2"
    std::string status;          // "met", "missed" or "" (no goal)
};

std::vector<row> rows;

void add(row r) {
    std::fprintf(stderr, "  %-17s %-22s %-34s %12.4g %s%s\n", r.case_id.c_str(), r.variant.c_str(),
                 r.figure.c_str(), r.value, r.unit.c_str(),
                 r.ratio ? (" ratio " + std::to_string(*r.ratio) + " " + r.status).c_str() : "");
    rows.push_back(std::move(r));
}

std::string goal_status(bool met) {
    return met ? "met" : "missed";
}

/// A row without a goal (a baseline's figure, or a figure given for context).
row info_row(std::string case_id, std::string variant, std::string figure, double value, std::string unit) {
    row r;
    r.case_id = std::move(case_id);
    r.variant = std::move(variant);
    r.figure = std::move(figure);
    r.value = value;
    r.unit = std::move(unit);
    return r;
}

// ---- measurement helpers -------------------------------------------------------------------------------

double us_between(steady::time_point a, steady::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count();
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    const auto index = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) - 1;
    return v[std::min(index, v.size() - 1)];
}

double median(std::vector<double> v) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::vector<double> concat(const std::vector<std::vector<double>>& parts) {
    std::vector<double> out;
    for (const auto& p : parts) {
        out.insert(out.end(), p.begin(), p.end());
    }
    return out;
}

/// Resident set size of this process, from /proc/self/statm.
std::size_t rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0;
    std::size_t resident = 0;
    statm >> size >> resident;
    return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

std::shared_ptr<spdlog::logger> quiet_logger() {
    auto logger = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
    logger->set_level(spdlog::level::off);
    return logger;
}

std::unique_ptr<modelpool::Pool> make_pool() {
    modelpool::PoolOptions options;
    options.io_threads = 1;                  // the configuration issue 5 asks for: ONE io thread
    options.blocking_threads = 1;            // unused: every model here is a coroutine model
    options.memory_limit_mb = 1'000'000'000; // the governor only counts; 1 MB per worker below
    options.logger = quiet_logger();
    return std::make_unique<modelpool::Pool>(std::move(options));
}

// ---- models --------------------------------------------------------------------------------------------

/// An empty text_embedding model whose operations are coroutines (they run on the io thread: no hop).
struct noop_embedder {
    asio::awaitable<result<Embedding>> embed(const std::string& /*text*/,
                                             const std::optional<std::string>& /*task*/) {
        co_return Embedding{};
    }
    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>& /*task*/) {
        co_return std::vector<Embedding>(texts.size());
    }
};

/// The same no-op model with blocking members, for the thread-per-worker baseline.
struct blocking_noop_embedder {
    result<Embedding> embed(const std::string& /*text*/, const std::optional<std::string>& /*task*/) {
        return Embedding{};
    }
};

/// A text_to_text model streaming `max_tokens` small text chunks as fast as the reader takes them.
struct chunk_generator {
    asio::awaitable<result<void>> prompt(const std::string& /*prompt*/,
                                         const modelpool::GenerationParams& params,
                                         modelpool::ChunkSink<modelpool::CompletionChunk>& sink) {
        for (std::size_t i = 0; i < params.max_tokens; ++i) {
            modelpool::TextChunk chunk{"tok"}; // named: g++ 12 miscompiles string-holding temporaries here
            if (!co_await sink.send(std::move(chunk))) {
                co_return modelpool::fail(modelpool::errc::cancelled, "reader left");
            }
        }
        co_return result<void>{};
    }
};

/// A loader that is ready at once.
auto instant_loader() {
    return []() -> asio::awaitable<result<noop_embedder>> { co_return noop_embedder{}; };
}

template <class Loader>
void spawn_embedders(modelpool::Pool& pool, std::string_view key, std::size_t n, Loader loader) {
    for (std::size_t i = 0; i < n; ++i) {
        auto guard = pool.governor().try_allocate(1, key);
        if (!guard) {
            throw std::runtime_error(guard.error().message());
        }
        auto id = pool.spawn_text_embedding_worker(key, loader, 1, std::move(*guard));
        if (!id) {
            throw std::runtime_error(id.error().message());
        }
    }
}

/// Waits (polling) until `key` has `n` workers in a serving state (`idle_only`: parked idle).
void wait_workers(const modelpool::Pool& pool, std::string_view key, std::size_t n, bool idle_only) {
    for (;;) {
        if (auto snap = pool.snapshot(key)) {
            const auto count = idle_only ? snap->count(modelpool::WorkerState::idle) : snap->serving();
            if (count >= n) {
                return;
            }
        }
        std::this_thread::sleep_for(100us);
    }
}

/// Starts `clients` coroutines made by `make(i)` on `ex`, all in one turn of its loop, and waits for them.
/// Returns the wall time from the launch until the last one finished.
template <class Executor, class Make> double run_clients(const Executor& ex, std::size_t clients, Make make) {
    std::promise<void> all_done;
    std::atomic<std::size_t> left{clients};
    std::mutex error_mutex;
    std::exception_ptr first_error;
    const auto t0 = steady::now();
    asio::post(ex, [&] {
        for (std::size_t i = 0; i < clients; ++i) {
            asio::co_spawn(ex, make(i), [&](std::exception_ptr e) {
                if (e) {
                    std::lock_guard lock(error_mutex);
                    first_error = e;
                }
                if (left.fetch_sub(1) == 1) {
                    all_done.set_value();
                }
            });
        }
    });
    all_done.get_future().wait();
    const auto t1 = steady::now();
    if (first_error) {
        std::rethrow_exception(first_error);
    }
    return us_between(t0, t1) / 1e6;
}

// ---- the heartbeat (loop lateness) ---------------------------------------------------------------------

/// A 1 ms heartbeat timer on the loop under test; records how late each tick fires.
struct heartbeat {
    std::mutex mutex;
    std::vector<std::pair<steady::time_point, double>> ticks; // (due, lateness in ms)
    std::atomic<bool> stop{false};
    std::future<void> done;

    template <class Executor> void start(const Executor& ex) {
        done = asio::co_spawn(ex, beat(*this), asio::use_future);
        // Let it tick a few times, so it runs before the measured window opens.
        while (count() < 3) {
            std::this_thread::sleep_for(1ms);
        }
    }

    std::size_t count() {
        std::lock_guard lock(mutex);
        return ticks.size();
    }

    /// Stops it and returns the lateness (ms) of the ticks that were waiting to fire at some time inside
    /// [from, to]: due before `to` and fired after `from` (a tick due before the window but held up by it
    /// counts; on a blocked loop that may be the only tick).
    std::vector<double> finish(steady::time_point from, steady::time_point to) {
        stop = true;
        done.get();
        std::vector<double> out;
        std::lock_guard lock(mutex);
        for (const auto& [due, late] : ticks) {
            const auto fired = due + std::chrono::duration_cast<steady::duration>(
                                         std::chrono::duration<double, std::milli>(late));
            if (due <= to && fired >= from) {
                out.push_back(late);
            }
        }
        return out;
    }

    static asio::awaitable<void> beat(heartbeat& hb) {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        while (!hb.stop.load()) {
            const auto due = steady::now() + 1ms;
            timer.expires_at(due);
            co_await timer.async_wait(asio::use_awaitable);
            const double late = us_between(due, steady::now()) / 1000.0;
            std::lock_guard lock(hb.mutex);
            hb.ticks.emplace_back(due, late);
        }
    }
};

// ---- case: cold start + loop lateness ------------------------------------------------------------------

struct cold_run {
    double ms = 0;
    std::vector<double> lateness_ms;
};

cold_run cold_start_modelpool(std::size_t k, std::chrono::milliseconds load) {
    heartbeat hb;
    std::atomic<std::size_t> loaded{0};
    std::promise<void> all_loaded;
    auto pool = make_pool();
    hb.start(pool->get_executor());
    auto loader = [&loaded, &all_loaded, k, load]() -> asio::awaitable<result<noop_embedder>> {
        asio::steady_timer timer(co_await asio::this_coro::executor, load); // the async model load
        co_await timer.async_wait(asio::use_awaitable);
        if (loaded.fetch_add(1) + 1 == k) {
            all_loaded.set_value();
        }
        co_return noop_embedder{};
    };
    const auto t0 = steady::now();
    spawn_embedders(*pool, "cold", k, loader);
    all_loaded.get_future().wait();
    wait_workers(*pool, "cold", k, false); // registered with the key, able to serve
    const auto t1 = steady::now();
    cold_run run{us_between(t0, t1) / 1000.0, hb.finish(t0, t1)};
    pool->stop();
    return run;
}

cold_run cold_start_seed(std::size_t k, std::chrono::milliseconds load) {
    heartbeat hb;
    bench::seed_pool<noop_embedder> seed(2);
    hb.start(seed.get_executor());
    // A synchronous loader bridging the async load: it blocks its runtime thread for the whole load.
    auto loader = [load]() -> result<noop_embedder> {
        return bench::block_on<result<noop_embedder>>([load]() -> asio::awaitable<result<noop_embedder>> {
            asio::steady_timer timer(co_await asio::this_coro::executor, load);
            co_await timer.async_wait(asio::use_awaitable);
            co_return noop_embedder{};
        });
    };
    const auto t0 = steady::now();
    for (std::size_t i = 0; i < k; ++i) {
        seed.spawn(loader);
    }
    seed.wait_ready(k);
    const auto t1 = steady::now();
    return cold_run{us_between(t0, t1) / 1000.0, hb.finish(t0, t1)};
}

/// The lateness of the same heartbeat on a pool whose loop has nothing else to do: the machine's own noise.
std::vector<double> lateness_control(std::chrono::milliseconds window) {
    heartbeat hb;
    auto pool = make_pool();
    hb.start(pool->get_executor());
    const auto t0 = steady::now();
    std::this_thread::sleep_for(window);
    const auto t1 = steady::now();
    auto lateness = hb.finish(t0, t1);
    pool->stop();
    return lateness;
}

void add_lateness(const std::string& variant, const std::string& what, const std::vector<double>& lateness) {
    const std::string suffix = ", " + what + " (" + std::to_string(lateness.size()) + " ticks)";
    add(info_row("loop_lateness", variant, "p50 lateness" + suffix, percentile(lateness, 50), "ms"));
    add(info_row("loop_lateness", variant, "max lateness" + suffix, percentile(lateness, 100), "ms"));
}

void case_cold_start(const config& cfg) {
    std::fprintf(
        stderr, "cold_start + loop_lateness (load %lld ms, pool on one io thread, seed on a 2-thread pool)\n",
        static_cast<long long>(cfg.load_time.count()));
    const double load_ms = static_cast<double>(cfg.load_time.count());
    {
        auto control = lateness_control(cfg.load_time * cfg.cold_reps);
        const double p99 = percentile(control, 99);
        add_lateness("idle loop (control)", "no load", control);
        add(info_row("loop_lateness", "idle loop (control)",
                     "p99 lateness, no load (" + std::to_string(control.size()) + " ticks)", p99, "ms"));
    }
    for (std::size_t k : cfg.cold_ks) {
        std::vector<double> times;
        std::vector<double> lateness;
        for (std::size_t r = 0; r < cfg.cold_reps; ++r) {
            auto run = cold_start_modelpool(k, cfg.load_time);
            std::fprintf(stderr, "    modelpool K=%zu: %.2f ms\n", k, run.ms);
            times.push_back(run.ms);
            lateness.insert(lateness.end(), run.lateness_ms.begin(), run.lateness_ms.end());
        }
        auto seed = cold_start_seed(k, cfg.load_time);
        const double pool_ms = median(times);
        const std::string ks = "K=" + std::to_string(k);
        const bool largest = k == cfg.cold_ks.back();
        const bool goal_k = k == 1024;
        add(info_row("cold_start", "seed pattern", "time to " + ks + " ready", seed.ms, "ms"));
        add({"cold_start", "modelpool", "time to " + ks + " ready", pool_ms, "ms", pool_ms / load_ms,
             "modelpool / one load (50 ms)", goal_k ? "< 2" : "",
             goal_k ? goal_status(pool_ms < 2 * load_ms) : ""});
        const double speedup = seed.ms / pool_ms;
        add({"cold_start", "modelpool", "speed-up vs seed, " + ks, speedup, "x", speedup,
             "seed pattern / modelpool", goal_k ? ">= 100" : "", goal_k ? goal_status(speedup >= 100) : ""});

        const double p99 = percentile(lateness, 99);
        const double seed_p99 = percentile(seed.lateness_ms, 99);
        add_lateness("seed pattern", ks + " loading", seed.lateness_ms);
        add(info_row("loop_lateness", "seed pattern",
                     "p99 lateness, " + ks + " loading (" + std::to_string(seed.lateness_ms.size()) +
                         " ticks)",
                     seed_p99, "ms"));
        add_lateness("modelpool", ks + " loading", lateness);
        add({"loop_lateness", "modelpool",
             "p99 lateness, " + ks + " loading (" + std::to_string(lateness.size()) + " ticks)", p99, "ms",
             p99 > 0 ? std::optional<double>(seed_p99 / p99) : std::nullopt, "seed p99 / modelpool p99",
             largest ? "p99 < 2 ms" : "", largest ? goal_status(p99 < 2.0) : ""});
    }
}

// ---- case: request overhead ----------------------------------------------------------------------------

struct load_run {
    double seconds = 0;
    std::size_t requests = 0;
    std::vector<double> latency_us;
    double rps() const { return static_cast<double>(requests) / seconds; }
};

asio::awaitable<void> pool_client(modelpool::Pool& pool, std::string key, std::size_t n,
                                  std::vector<double>& latency) {
    latency.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        const auto t0 = steady::now();
        std::string text = "x";
        auto op = pool.embed(key, std::move(text), asio::use_awaitable);
        auto reply = co_await std::move(op);
        if (!reply) {
            throw std::runtime_error(reply.error().message());
        }
        latency.push_back(us_between(t0, steady::now()));
    }
}

load_run pool_load(modelpool::Pool& pool, const std::string& key, std::size_t clients,
                   std::size_t per_client) {
    std::vector<std::vector<double>> latency(clients);
    const double seconds = run_clients(pool.get_executor(), clients, [&](std::size_t i) {
        return pool_client(pool, key, per_client, latency[i]);
    });
    return {seconds, clients * per_client, concat(latency)};
}

/// The floor: `servers` server coroutines and the clients on one io_context run by one thread.
class floor_rig {
public:
    explicit floor_rig(std::size_t servers) : requests_(io_, 1024) {
        for (std::size_t i = 0; i < servers; ++i) {
            asio::co_spawn(io_, bench::channel_floor::serve(requests_), asio::detached);
        }
        thread_ = std::thread([this] { io_.run(); });
    }
    ~floor_rig() {
        asio::post(io_, [this] { requests_.close(); });
        work_.reset();
        thread_.join();
    }
    floor_rig(const floor_rig&) = delete;
    floor_rig& operator=(const floor_rig&) = delete;

    load_run run(std::size_t clients, std::size_t per_client) {
        std::vector<std::vector<double>> latency(clients);
        const double seconds = run_clients(io_.get_executor(), clients,
                                           [&](std::size_t i) { return client(per_client, latency[i]); });
        return {seconds, clients * per_client, concat(latency)};
    }

private:
    asio::awaitable<void> client(std::size_t n, std::vector<double>& latency) {
        latency.reserve(n);
        bench::channel_floor::reply_channel reply(co_await asio::this_coro::executor, 1);
        for (std::size_t i = 0; i < n; ++i) {
            const auto t0 = steady::now();
            bench::channel_floor::request req{"x", &reply};
            co_await requests_.async_send(error_code{}, std::move(req), asio::use_awaitable);
            auto embedding = co_await reply.async_receive(asio::use_awaitable);
            latency.push_back(us_between(t0, steady::now()));
        }
    }

    asio::io_context io_{1};
    asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
    bench::channel_floor::request_channel requests_;
    std::thread thread_;
};

load_run tpw_load(bench::thread_per_worker<blocking_noop_embedder>& tpw, std::size_t clients,
                  std::size_t per_client) {
    std::vector<std::vector<double>> latency(clients);
    auto client = [&](std::size_t c) {
        latency[c].reserve(per_client);
        for (std::size_t i = 0; i < per_client; ++i) {
            const auto t0 = steady::now();
            auto reply = tpw.embed("x").get();
            if (!reply) {
                throw std::runtime_error(reply.error().message());
            }
            latency[c].push_back(us_between(t0, steady::now()));
        }
    };
    const auto t0 = steady::now();
    if (clients == 1) {
        client(0);
    } else {
        std::latch go(1);
        std::vector<std::thread> threads;
        threads.reserve(clients);
        for (std::size_t c = 0; c < clients; ++c) {
            threads.emplace_back([&, c] {
                go.wait();
                client(c);
            });
        }
        go.count_down();
        for (auto& t : threads) {
            t.join();
        }
    }
    const auto t1 = steady::now();
    return {us_between(t0, t1) / 1e6, clients * per_client, concat(latency)};
}

/// Per-repetition figures of one variant.
struct load_series {
    std::vector<double> rps;
    std::vector<double> p50;
    std::vector<double> p99;
    void add(const load_run& r) {
        rps.push_back(r.rps());
        p50.push_back(percentile(r.latency_us, 50));
        p99.push_back(percentile(r.latency_us, 99));
    }
};

/// The median over repetitions of a[i] / b[i]: each ratio divides two figures measured one right after the
/// other, so slow drifts of the machine's load cancel out.
double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
        ratios.push_back(a[i] / b[i]);
    }
    return median(ratios);
}

void case_request_overhead(const config& cfg) {
    std::fprintf(stderr, "request_overhead (no-op embed, %zu workers; pool and floor on one io thread)\n",
                 cfg.workers);
    auto pool = make_pool();
    spawn_embedders(*pool, "noop", cfg.workers, instant_loader());
    wait_workers(*pool, "noop", cfg.workers, true);
    floor_rig floor(cfg.workers);
    bench::thread_per_worker<blocking_noop_embedder> tpw;
    for (std::size_t i = 0; i < cfg.workers; ++i) {
        tpw.spawn(blocking_noop_embedder{});
    }
    tpw.wait_started();

    struct shape {
        std::size_t clients;
        std::size_t per_client;
        std::string name;
    };
    for (const shape& s : {shape{1, cfg.sequential_requests, "1 client"},
                           shape{cfg.clients, cfg.per_client, std::to_string(cfg.clients) + " clients"}}) {
        load_series p;
        load_series f;
        load_series t;
        for (std::size_t r = 0; r < cfg.reps; ++r) { // interleaved, so drift hits every variant alike
            p.add(pool_load(*pool, "noop", s.clients, s.per_client));
            f.add(floor.run(s.clients, s.per_client));
            t.add(tpw_load(tpw, s.clients, s.per_client));
            std::fprintf(stderr,
                         "    %s rep %zu: req/s modelpool %.0f, floor %.0f, thread per worker %.0f; p50 us "
                         "%.3f, %.3f, %.3f\n",
                         s.name.c_str(), r, p.rps.back(), f.rps.back(), t.rps.back(), p.p50.back(),
                         f.p50.back(), t.p50.back());
        }
        const bool one = s.clients == 1;
        for (auto [variant, st] : {std::pair{"floor (channel)", &f}, std::pair{"thread per worker", &t}}) {
            add(info_row("request_overhead", variant, s.name + ": requests/s", median(st->rps), "req/s"));
            add(info_row("request_overhead", variant, s.name + ": p50 latency", median(st->p50), "us"));
            add(info_row("request_overhead", variant, s.name + ": p99 latency", median(st->p99), "us"));
        }
        const double vs_floor_rps = median_ratio(f.rps, p.rps); // > 1: modelpool is slower than the floor
        const double vs_tpw_rps = median_ratio(p.rps, t.rps);   // > 1: modelpool is faster
        const double vs_floor_p50 = median_ratio(p.p50, f.p50);
        if (one) {
            add({"request_overhead", "modelpool", s.name + ": requests/s", median(p.rps), "req/s",
                 vs_floor_rps, "floor req/s / modelpool req/s", "<= 2", goal_status(vs_floor_rps <= 2)});
            add({"request_overhead", "modelpool", s.name + ": p50 latency", median(p.p50), "us", vs_floor_p50,
                 "modelpool p50 / floor p50", "<= 2", goal_status(vs_floor_p50 <= 2)});
        } else {
            add({"request_overhead", "modelpool", s.name + ": requests/s", median(p.rps), "req/s", vs_tpw_rps,
                 "modelpool req/s / thread-per-worker req/s", ">= 3", goal_status(vs_tpw_rps >= 3)});
            add({"request_overhead", "modelpool", s.name + ": p50 latency", median(p.p50), "us", vs_floor_p50,
                 "modelpool p50 / floor p50", "", ""});
        }
        add({"request_overhead", "modelpool", s.name + ": p99 latency", median(p.p99), "us",
             median_ratio(p.p99, f.p99), "modelpool p99 / floor p99", "", ""});
        if (one) {
            add({"request_overhead", "modelpool", s.name + ": req/s vs thread per worker", vs_tpw_rps, "x",
                 vs_tpw_rps, "modelpool req/s / thread-per-worker req/s", "", ""});
        } else {
            const double r = median_ratio(p.rps, f.rps);
            add({"request_overhead", "modelpool", s.name + ": req/s vs floor", r, "x", r,
                 "modelpool req/s / floor req/s", "", ""});
        }
    }
    pool->stop();
}

// ---- case: routing scale -------------------------------------------------------------------------------

void case_routing_scale(const config& cfg) {
    std::fprintf(
        stderr, "routing_scale (1 sequential client and %zu concurrent clients, K idle workers on one key)\n",
        cfg.clients);
    std::vector<std::unique_ptr<modelpool::Pool>> pools;
    for (std::size_t k : cfg.routing_ks) {
        pools.push_back(make_pool());
        spawn_embedders(*pools.back(), "route", k, instant_loader());
        wait_workers(*pools.back(), "route", k, true);
    }
    std::vector<std::vector<double>> sequential(cfg.routing_ks.size());
    std::vector<std::vector<double>> concurrent(cfg.routing_ks.size());
    const std::size_t per_client = std::max<std::size_t>(1, cfg.routing_requests / cfg.clients);
    for (std::size_t r = 0; r < cfg.reps; ++r) {
        for (std::size_t i = 0; i < pools.size(); ++i) {
            auto seq = pool_load(*pools[i], "route", 1, cfg.routing_requests);
            sequential[i].push_back(seq.seconds * 1e6 / static_cast<double>(seq.requests));
            auto par = pool_load(*pools[i], "route", cfg.clients, per_client);
            concurrent[i].push_back(par.seconds * 1e6 / static_cast<double>(par.requests));
            std::fprintf(stderr, "    rep %zu K=%zu: 1 client %.3f us, %zu clients %.3f us per request\n", r,
                         cfg.routing_ks[i], sequential[i].back(), cfg.clients, concurrent[i].back());
        }
    }
    std::optional<std::size_t> at_clients; // index of K == clients: as many workers as concurrent clients
    for (std::size_t i = 0; i < pools.size(); ++i) {
        if (cfg.routing_ks[i] == cfg.clients) {
            at_clients = i;
        }
    }
    for (std::size_t i = 0; i < pools.size(); ++i) {
        const std::size_t k = cfg.routing_ks[i];
        const bool last = i + 1 == pools.size() && k == 4096;
        const double seq_ratio = median_ratio(sequential[i], sequential[0]);
        const double par_ratio = median_ratio(concurrent[i], concurrent[0]);
        add({"routing_scale", "modelpool", "1 client, K=" + std::to_string(k) + ": per request",
             median(sequential[i]), "us", seq_ratio, "cost(K) / cost(K=1)", last ? "<= 1.3" : "",
             last ? goal_status(seq_ratio <= 1.3) : ""});
        add({"routing_scale", "modelpool",
             std::to_string(cfg.clients) + " clients, K=" + std::to_string(k) + ": per request",
             median(concurrent[i]), "us", par_ratio, "cost(K) / cost(K=1)", last ? "<= 1.3" : "",
             last ? goal_status(par_ratio <= 1.3) : ""});
        if (last && at_clients) {
            const double r = median_ratio(concurrent[i], concurrent[*at_clients]);
            add({"routing_scale", "modelpool",
                 std::to_string(cfg.clients) + " clients, K=4096 vs K=" + std::to_string(cfg.clients), r, "x",
                 r, "cost(K=4096) / cost(K=" + std::to_string(cfg.clients) + ")", "", ""});
        }
    }
    for (auto& p : pools) {
        p->stop();
    }
}

// ---- case: idle worker memory (each variant in a fresh child process) ----------------------------------

/// Runs in a child process: RSS growth per idle worker (modelpool) or per idle thread (thread per worker).
int child_memory(const std::string& variant, std::size_t n) {
    constexpr std::size_t warm = 16; // first workers pay for the key, the io thread, allocator caches...
    double per = 0;
    if (variant == "modelpool") {
        auto pool = make_pool();
        spawn_embedders(*pool, "idle", warm, instant_loader());
        wait_workers(*pool, "idle", warm, true);
        const auto before = rss_bytes();
        spawn_embedders(*pool, "idle", n, instant_loader());
        wait_workers(*pool, "idle", warm + n, true);
        const auto after = rss_bytes();
        per = static_cast<double>(after - before) / static_cast<double>(n);
        pool->stop();
    } else {
        bench::thread_per_worker<blocking_noop_embedder> tpw;
        for (std::size_t i = 0; i < warm; ++i) {
            tpw.spawn(blocking_noop_embedder{});
        }
        tpw.wait_started();
        const auto before = rss_bytes();
        for (std::size_t i = 0; i < n; ++i) {
            tpw.spawn(blocking_noop_embedder{});
        }
        tpw.wait_started();
        const auto after = rss_bytes();
        per = static_cast<double>(after - before) / static_cast<double>(n);
        tpw.stop();
    }
    std::printf("bytes_per_worker %.1f\n", per);
    return 0;
}

double measure_in_child(const std::string& variant, std::size_t n) {
    const auto self = std::filesystem::read_symlink("/proc/self/exe").string();
    const std::string command = "'" + self + "' --child-memory " + variant + " " + std::to_string(n);
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) {
        throw std::runtime_error("cannot run " + command);
    }
    double per = -1;
    char line[256];
    while (std::fgets(line, sizeof line, pipe) != nullptr) {
        std::sscanf(line, "bytes_per_worker %lf", &per);
    }
    if (pclose(pipe) != 0 || per < 0) {
        throw std::runtime_error("child failed: " + command);
    }
    return per;
}

void case_idle_memory(const config& cfg) {
    std::fprintf(stderr, "idle_memory (%zu idle workers, %zu idle threads; RSS from /proc/self/statm)\n",
                 cfg.idle_workers, cfg.idle_threads);
    const double pool_bytes = measure_in_child("modelpool", cfg.idle_workers);
    const double thread_bytes = measure_in_child("threads", cfg.idle_threads);
    add({"idle_memory",
         "thread per worker",
         "RSS per idle thread (" + std::to_string(cfg.idle_threads) + ")",
         thread_bytes,
         "B",
         {},
         "",
         "",
         ""});
    add({"idle_memory", "modelpool", "RSS per idle worker (" + std::to_string(cfg.idle_workers) + ")",
         pool_bytes, "B", pool_bytes / 4096.0, "modelpool / 4 KiB", "< 1", goal_status(pool_bytes < 4096)});
    add({"idle_memory", "modelpool", "vs thread per worker", pool_bytes / thread_bytes, "x",
         pool_bytes / thread_bytes, "modelpool / thread per worker", "", ""});
}

// ---- case: streaming -----------------------------------------------------------------------------------

double stream_modelpool(modelpool::Pool& pool, std::size_t chunks) {
    auto reader = [&]() -> asio::awaitable<void> {
        modelpool::GenerationParams params;
        params.max_tokens = chunks;
        std::string prompt = "go";
        auto op = pool.prompt("gen", std::move(prompt), std::move(params), asio::use_awaitable);
        auto stream = co_await std::move(op);
        if (!stream) {
            throw std::runtime_error(stream.error().message());
        }
        std::size_t got = 0;
        for (;;) {
            auto next = co_await stream->async_next(asio::use_awaitable);
            if (!next) {
                throw std::runtime_error(next.error().message());
            }
            if (!*next) {
                break;
            }
            ++got;
        }
        if (got != chunks) {
            throw std::runtime_error("stream lost chunks");
        }
    };
    const double seconds = run_clients(pool.get_executor(), 1, [&](std::size_t) { return reader(); });
    return static_cast<double>(chunks) / seconds;
}

double stream_floor(std::size_t chunks, std::size_t capacity) {
    using chunk_channel = asio::experimental::channel<void(error_code, modelpool::CompletionChunk)>;
    asio::io_context io{1};
    chunk_channel channel(io, capacity);
    auto producer = [&]() -> asio::awaitable<void> {
        for (std::size_t i = 0; i < chunks; ++i) {
            modelpool::CompletionChunk chunk = modelpool::TextChunk{"tok"};
            co_await channel.async_send(error_code{}, std::move(chunk), asio::use_awaitable);
        }
        channel.close();
    };
    std::size_t got = 0;
    auto consumer = [&]() -> asio::awaitable<void> {
        for (;;) {
            auto [ec, chunk] = co_await channel.async_receive(asio::as_tuple(asio::use_awaitable));
            if (ec) {
                break;
            }
            ++got;
        }
    };
    double seconds = 0;
    std::thread runner([&] {
        const auto t0 = steady::now();
        asio::co_spawn(io, consumer(), asio::detached);
        asio::co_spawn(io, producer(), asio::detached);
        io.run();
        seconds = us_between(t0, steady::now()) / 1e6;
    });
    runner.join();
    if (got != chunks) {
        throw std::runtime_error("floor stream lost chunks");
    }
    return static_cast<double>(chunks) / seconds;
}

void case_streaming(const config& cfg) {
    std::fprintf(stderr, "streaming (%zu chunks; text_to_text stream vs a bare channel, one thread each)\n",
                 cfg.stream_chunks);
    auto pool = make_pool();
    auto loader = []() -> asio::awaitable<result<chunk_generator>> { co_return chunk_generator{}; };
    auto guard = pool->governor().try_allocate(1, "gen");
    if (!guard || !pool->spawn_text_to_text_worker("gen", loader, 1, std::move(*guard))) {
        throw std::runtime_error("cannot spawn the generator");
    }
    wait_workers(*pool, "gen", 1, true);
    std::vector<double> p;
    std::vector<double> f;
    for (std::size_t r = 0; r < cfg.reps; ++r) {
        p.push_back(stream_modelpool(*pool, cfg.stream_chunks));
        f.push_back(stream_floor(cfg.stream_chunks, pool->options().stream_capacity));
        std::fprintf(stderr, "    rep %zu: modelpool %.0f chunks/s, floor %.0f\n", r, p.back(), f.back());
    }
    const double ratio = median_ratio(p, f);
    add(info_row("streaming", "floor (channel)", "chunks/s", median(f), "chunk/s"));
    add({"streaming", "modelpool", "chunks/s", median(p), "chunk/s", ratio, "modelpool / floor", ">= 0.5",
         goal_status(ratio >= 0.5)});
    pool->stop();
}

// ---- case: compile time --------------------------------------------------------------------------------

constexpr const char* modelpool_tu = R"(#include <modelpool/modelpool.hpp>
#include <future>
namespace asio = modelpool::asio;
struct Model {
    modelpool::result<modelpool::Embedding> embed(const std::string& t, const std::optional<std::string>&) {
        return modelpool::Embedding(t.size());
    }
    modelpool::result<std::vector<modelpool::Embedding>> batch_embed(const std::vector<std::string>& t,
                                                                     const std::optional<std::string>&) {
        return std::vector<modelpool::Embedding>(t.size());
    }
};
int main() {
    modelpool::Pool pool({.io_threads = 1, .memory_limit_mb = 1024});
    auto guard = pool.governor().try_allocate(1, "m");
    if (!guard) return 1;
    auto id = pool.spawn_text_embedding_worker(
        "m", []() -> asio::awaitable<modelpool::result<Model>> { co_return Model{}; }, 1, std::move(*guard));
    std::promise<bool> done;
    pool.embed("m", "hello", [&](modelpool::result<modelpool::Embedding> r) { done.set_value(r.has_value()); });
    return id && done.get_future().get() ? 0 : 1;
}
)";

constexpr const char* asio_tu = R"(#include <boost/asio.hpp>
#include <spdlog/spdlog.h>
namespace asio = boost::asio;
asio::awaitable<int> work() {
    asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
    co_await timer.async_wait(asio::use_awaitable);
    co_return 42;
}
int main() {
    asio::io_context io;
    int value = 0;
    asio::co_spawn(io, work(), [&](std::exception_ptr, int v) { value = v; });
    io.run();
    spdlog::info("done {}", value);
    return value == 42 ? 0 : 1;
}
)";

constexpr const char* include_only_tu = "#include <modelpool/modelpool.hpp>\nint main() {}\n";

constexpr const char* pool_only_tu = R"(#include <modelpool/modelpool.hpp>
int main() {
    modelpool::Pool pool({.io_threads = 1, .memory_limit_mb = 1024});
    pool.stop();
}
)";

struct compile_time {
    double cpu = 0; // user + sys of the compiler, seconds
    double wall = 0;
};

compile_time compile_once(const std::string& command) {
    rusage before{};
    getrusage(RUSAGE_CHILDREN, &before);
    const auto t0 = steady::now();
    if (std::system(command.c_str()) != 0) {
        throw std::runtime_error("compile failed: " + command);
    }
    const auto t1 = steady::now();
    rusage after{};
    getrusage(RUSAGE_CHILDREN, &after);
    auto seconds = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    };
    const double cpu = seconds(after.ru_utime) - seconds(before.ru_utime) + seconds(after.ru_stime) -
                       seconds(before.ru_stime);
    return {cpu, us_between(t0, t1) / 1e6};
}

std::string compile_command(const config& cfg, const std::filesystem::path& source, const char* defines = "",
                            std::filesystem::path object = {}) {
    if (object.empty()) {
        object = source.string() + ".o";
    }
    std::string command = std::string(MODELPOOL_BENCH_CXX) + " " + MODELPOOL_BENCH_COMPILE_FLAGS + defines;
    command += cfg.compile_syntax_only ? " -fsyntax-only" : " -c -o " + object.string();
    command += " " + source.string();
    return command;
}

// Both build modes compile the same TU: header-only (the default: modelpool::modelpool) and separate
// compilation (-DMODELPOOL_SEPARATE_COMPILATION: what linking modelpool::compiled does; the library's
// machinery is then compiled once, in src/modelpool.cpp, not in this TU).
constexpr const char* separate_define = " -DMODELPOOL_SEPARATE_COMPILATION";

void case_compile_time(const config& cfg) {
    const auto dir = std::filesystem::temp_directory_path() / ("modelpool-bench-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const auto mp = dir / "with_modelpool.cpp";
    const auto mp_sep = dir / "with_modelpool_separate.cpp"; // same text, its own object file
    const auto as = dir / "asio_spdlog.cpp";
    std::ofstream(mp) << modelpool_tu;
    std::ofstream(mp_sep) << modelpool_tu;
    std::ofstream(as) << asio_tu;
    const auto mp_cmd = compile_command(cfg, mp);
    const auto sep_cmd = compile_command(cfg, mp_sep, separate_define);
    const auto as_cmd = compile_command(cfg, as);
    std::fprintf(stderr, "compile_time (%s)\n  %s\n  %s\n",
                 cfg.compile_syntax_only ? "quick: -fsyntax-only" : "-c", mp_cmd.c_str(), sep_cmd.c_str());
    std::vector<double> mp_cpu;
    std::vector<double> sep_cpu;
    std::vector<double> as_cpu;
    std::vector<double> mp_wall;
    std::vector<double> sep_wall;
    std::vector<double> as_wall;
    // Alternating, so that a change in the machine's load hits every variant alike.
    for (std::size_t r = 0; r < cfg.compile_reps; ++r) {
        auto a = compile_once(as_cmd);
        auto m = compile_once(mp_cmd);
        auto p = compile_once(sep_cmd);
        as_cpu.push_back(a.cpu);
        as_wall.push_back(a.wall);
        mp_cpu.push_back(m.cpu);
        mp_wall.push_back(m.wall);
        sep_cpu.push_back(p.cpu);
        sep_wall.push_back(p.wall);
        std::fprintf(stderr, "    rep %zu: asio + spdlog %.2f s, header-only %.2f s, separate %.2f s (CPU)\n",
                     r, a.cpu, m.cpu, p.cpu);
    }
    const double ratio = median_ratio(mp_cpu, as_cpu);
    const double sep_ratio = median_ratio(sep_cpu, as_cpu);
    const std::string cpu =
        cfg.compile_syntax_only ? "compiler CPU time (-fsyntax-only)" : "compiler CPU time";
    const char* header_only = "modelpool.hpp + 1 worker, header-only";
    const char* separate = "modelpool.hpp + 1 worker, separate compilation";
    add(info_row("compile_time", "asio.hpp + spdlog", cpu, median(as_cpu), "s"));
    add(info_row("compile_time", "asio.hpp + spdlog", "wall time", median(as_wall), "s"));
    add({"compile_time", header_only, cpu, median(mp_cpu), "s", ratio, "modelpool / asio + spdlog", "<= 1.5",
         goal_status(ratio <= 1.5)});
    add({"compile_time", separate, cpu, median(sep_cpu), "s", sep_ratio, "modelpool / asio + spdlog",
         "<= 1.5", goal_status(sep_ratio <= 1.5)});
    add({"compile_time", header_only, "wall time", median(mp_wall), "s", median_ratio(mp_wall, as_wall),
         "modelpool / asio + spdlog", "", ""});
    add({"compile_time", separate, "wall time", median(sep_wall), "s", median_ratio(sep_wall, as_wall),
         "modelpool / asio + spdlog", "", ""});
    if (!cfg.quick) {
        // Where the time goes (one compile each): the headers alone, then a Pool without workers
        // (header-only); and the one-off cost of separate compilation: src/modelpool.cpp, compiled once per
        // program.
        std::ofstream(dir / "include_only.cpp") << include_only_tu;
        std::ofstream(dir / "pool_only.cpp") << pool_only_tu;
        const auto inc = compile_once(compile_command(cfg, dir / "include_only.cpp"));
        const auto pool = compile_once(compile_command(cfg, dir / "pool_only.cpp"));
        const auto lib = compile_once(compile_command(cfg, MODELPOOL_BENCH_LIBRARY_SOURCE, separate_define,
                                                      dir / "modelpool_library.o"));
        add({"compile_time", "modelpool.hpp, empty main", "compiler CPU time", inc.cpu, "s",
             inc.cpu / median(as_cpu), "this / asio + spdlog", "", ""});
        add({"compile_time", "modelpool.hpp + Pool, no worker", "compiler CPU time", pool.cpu, "s",
             pool.cpu / median(as_cpu), "this / asio + spdlog", "", ""});
        add({"compile_time", "src/modelpool.cpp (modelpool::compiled, once per program)", "compiler CPU time",
             lib.cpu, "s", lib.cpu / median(as_cpu), "this / asio + spdlog", "", ""});
    }
    std::filesystem::remove_all(dir);
}

// ---- profiling entry point ---------------------------------------------------------------------------

/// `--profile WHAT N`: runs one variant of one case N times and nothing else, for
/// `valgrind --tool=callgrind` (bench/profile.sh runs it at two N and divides the difference, so set-up
/// costs cancel out). WHAT: request_pool, request_floor, concurrent_pool, concurrent_floor,
/// routing1:K, routing64:K, stream_pool, stream_floor, cold (N workers cold-started, 1 ms loads).
int profile(const std::string& what, std::size_t n) {
    const config cfg = config::make(false);
    auto pool_with = [](std::size_t k) {
        auto pool = make_pool();
        spawn_embedders(*pool, "p", k, instant_loader());
        wait_workers(*pool, "p", k, true);
        return pool;
    };
    if (what == "request_pool") {
        pool_load(*pool_with(cfg.workers), "p", 1, n);
    } else if (what == "concurrent_pool") {
        pool_load(*pool_with(cfg.workers), "p", cfg.clients, n / cfg.clients);
    } else if (what == "request_floor") {
        floor_rig(cfg.workers).run(1, n);
    } else if (what == "concurrent_floor") {
        floor_rig(cfg.workers).run(cfg.clients, n / cfg.clients);
    } else if (what.rfind("routing1:", 0) == 0) {
        pool_load(*pool_with(std::stoul(what.substr(9))), "p", 1, n);
    } else if (what.rfind("routing64:", 0) == 0) {
        pool_load(*pool_with(std::stoul(what.substr(10))), "p", cfg.clients, n / cfg.clients);
    } else if (what == "stream_pool") {
        auto pool = make_pool();
        auto loader = []() -> asio::awaitable<result<chunk_generator>> { co_return chunk_generator{}; };
        auto guard = pool->governor().try_allocate(1, "gen");
        if (!guard || !pool->spawn_text_to_text_worker("gen", loader, 1, std::move(*guard))) {
            return 1;
        }
        wait_workers(*pool, "gen", 1, true);
        stream_modelpool(*pool, n);
    } else if (what == "cold") {
        // n workers whose loaders wait 1 ms on a timer: the io thread's work per spawned worker.
        cold_start_modelpool(n, 1ms);
    } else if (what == "stream_floor") {
        stream_floor(n, 16);
    } else {
        std::fprintf(stderr, "unknown profile target %s\n", what.c_str());
        return 2;
    }
    return 0;
}

// ---- output --------------------------------------------------------------------------------------------

std::string format_value(double v) {
    char buf[64];
    const double a = std::fabs(v);
    if (a >= 1e5) {
        std::snprintf(buf, sizeof buf, "%.0f", v);
    } else if (a >= 100) {
        std::snprintf(buf, sizeof buf, "%.1f", v);
    } else if (a >= 1) {
        std::snprintf(buf, sizeof buf, "%.2f", v);
    } else {
        std::snprintf(buf, sizeof buf, "%.3g", v);
    }
    return buf;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        default:
            if (static_cast<unsigned char>(c) < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out += c;
            }
        }
    }
    return out;
}

std::string json_number(double v) {
    if (!std::isfinite(v)) {
        return "null";
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

std::map<std::string, std::string> machine_info(const config& cfg) {
    std::map<std::string, std::string> info;
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::size_t processors = 0;
    for (std::string line; std::getline(cpuinfo, line);) {
        if (line.rfind("model name", 0) == 0 && !info.count("cpu")) {
            info["cpu"] = line.substr(line.find(':') + 2);
        }
        if (line.rfind("processor", 0) == 0) {
            ++processors;
        }
    }
    info["cores"] = std::to_string(processors);
    utsname u{};
    if (uname(&u) == 0) {
        info["kernel"] = std::string(u.sysname) + " " + u.release;
    }
    info["compiler"] = std::string(MODELPOOL_BENCH_CXX_ID) + " (" + __VERSION__ + ")";
    info["flags"] = MODELPOOL_BENCH_BUILD_FLAGS;
    info["build_type"] = MODELPOOL_BENCH_BUILD_TYPE;
    info["compile_time_command"] = std::string(MODELPOOL_BENCH_CXX) + " " + MODELPOOL_BENCH_COMPILE_FLAGS +
                                   (cfg.compile_syntax_only ? " -fsyntax-only" : " -c") +
                                   " (separate compilation: also" + separate_define + ")";
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    info["date"] = date;
    info["mode"] = cfg.quick ? "quick" : "full";
    if (const char* revision = std::getenv("MODELPOOL_BENCH_REVISION")) { // set by scripts/bench.sh
        info["revision"] = revision;
    }
    return info;
}

void print_table(const std::map<std::string, std::string>& info) {
    std::cout << "| case | variant | figure | value | unit | ratio (what it divides) | goal | status |\n"
              << "|---|---|---|---:|---|---|---|---|\n";
    for (const auto& r : rows) {
        std::string ratio = r.ratio ? format_value(*r.ratio) + " (" + r.ratio_of + ")" : "";
        std::cout << "| " << r.case_id << " | " << r.variant << " | " << r.figure << " | "
                  << format_value(r.value) << " | " << r.unit << " | " << ratio << " | " << r.goal << " | "
                  << r.status << " |\n";
    }
    std::cout << "\n"
              << info.at("mode") << " run, " << info.at("date") << "; " << info.at("cpu") << ", "
              << info.at("cores") << " cores; " << info.at("compiler") << "; flags: " << info.at("flags")
              << "\n";
}

void write_json(const std::string& path, const std::map<std::string, std::string>& info) {
    std::ofstream out(path);
    out << "{\n  \"machine\": {";
    bool first = true;
    for (const auto& [k, v] : info) {
        out << (first ? "" : ",") << "\n    \"" << json_escape(k) << "\": \"" << json_escape(v) << "\"";
        first = false;
    }
    out << "\n  },\n  \"rows\": [";
    first = true;
    for (const auto& r : rows) {
        out << (first ? "" : ",") << "\n    {\"case\": \"" << json_escape(r.case_id) << "\", \"variant\": \""
            << json_escape(r.variant) << "\", \"figure\": \"" << json_escape(r.figure)
            << "\", \"value\": " << json_number(r.value) << ", \"unit\": \"" << json_escape(r.unit)
            << "\", \"ratio\": " << (r.ratio ? json_number(*r.ratio) : "null") << ", \"ratio_of\": \""
            << json_escape(r.ratio_of) << "\", \"goal\": \"" << json_escape(r.goal) << "\", \"status\": \""
            << json_escape(r.status) << "\"}";
        first = false;
    }
    out << "\n  ]\n}\n";
    if (!out) {
        throw std::runtime_error("cannot write " + path);
    }
}

} // namespace

int main(int argc, char** argv) {
    try {
        bool quick = false;
        std::string json = "bench/results.json";
        std::set<std::string> cases;
        for (int i = 1; i < argc; ++i) {
            const std::string arg = argv[i];
            if (arg == "--child-memory" && i + 2 < argc) {
                return child_memory(argv[i + 1], std::stoul(argv[i + 2]));
            } else if (arg == "--profile" && i + 2 < argc) {
                return profile(argv[i + 1], std::stoul(argv[i + 2]));
            } else if (arg == "--quick") {
                quick = true;
            } else if (arg == "--json" && i + 1 < argc) {
                json = argv[++i];
            } else if (arg == "--cases" && i + 1 < argc) {
                std::stringstream list(argv[++i]);
                for (std::string c; std::getline(list, c, ',');) {
                    cases.insert(c);
                }
            } else {
                std::cerr << "usage: " << argv[0] << " [--quick] [--json PATH] [--cases a,b,...]\n"
                          << "cases: cold_start request_overhead routing_scale idle_memory streaming "
                             "compile_time\n";
                return 2;
            }
        }
        const auto cfg = config::make(quick);
        auto wanted = [&](const std::string& c) { return cases.empty() || cases.count(c) != 0; };
        // Memory first, in fresh child processes; compile last (it is the longest and loads the machine).
        if (wanted("idle_memory")) {
            case_idle_memory(cfg);
        }
        if (wanted("request_overhead")) {
            case_request_overhead(cfg);
        }
        if (wanted("routing_scale")) {
            case_routing_scale(cfg);
        }
        if (wanted("streaming")) {
            case_streaming(cfg);
        }
        if (wanted("cold_start") || wanted("loop_lateness")) {
            case_cold_start(cfg);
        }
        if (wanted("compile_time")) {
            case_compile_time(cfg);
        }
        const auto info = machine_info(cfg);
        print_table(info);
        if (!json.empty()) {
            write_json(json, info);
            std::fprintf(stderr, "wrote %s\n", json.c_str());
        }
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "modelpool_bench_suite: " << e.what() << "\n";
        return 1;
    }
}
