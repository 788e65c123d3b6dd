// Migrating a legacy synchronous loader to modelpool.
//
// Old code loads its model with a blocking function: `load_legacy_model(path)` reads a file with
// std::ifstream and does CPU work. The Rust pool modelpool replaces called such loaders through
// `block_in_place` + `block_on`, parking a runtime thread for the whole load. In modelpool a loader is an
// `asio::awaitable<result<Model>>` that runs on the pool's io thread, so the blocking function must not be
// called there: wrap it with `modelpool::offload(pool.blocking_executor(), ...)`, which runs it on the
// blocking executor and resumes the loader on its io thread when it returns. The legacy function stays as it
// is.
//
// The wrong way, which this replaces, is shown commented out next to the loader in main(): calling the legacy
// function directly inside the coroutine loader, or bridging back to synchronous code on a pool thread (a
// `future.get()`, a nested `io_context::run()`), which is what `block_in_place` + `block_on` did in Rust.
// Each parks the io thread until the load ends: every other worker's load, every request and every timer on
// that io_context stalls meanwhile. With one io thread (the default) it can deadlock: a `future.get()`
// waiting for something only that io thread can complete (a pool request, a timer) waits for itself forever.
//
// `--smoke` (what CTest runs) checks it: while the legacy load runs on the blocking executor, a 1 ms
// heartbeat timer on the pool's only io thread keeps ticking. The load does not finish until the heartbeat
// has ticked `ticks_needed` times after it began (it waits on a future the heartbeat fulfils), which is only
// possible if the io thread was free; a request served by the loaded model must then return the expected
// embedding.
#include <modelpool/modelpool.hpp>
#include <modelpool/offload.hpp>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <string>
#include <vector>

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::result;
using namespace std::chrono_literals;

namespace {

// ---- the legacy code, unchanged: blocking file read and CPU work ------------------------------------------
struct LegacyModel {
    std::vector<float> weights;
};

LegacyModel load_legacy_model(const std::string& path, int passes) {
    std::ifstream in(path);
    std::string magic;
    if (!(in >> magic) || magic != "legacy-model-v1") {
        throw std::runtime_error("not a legacy model file: " + path);
    }
    LegacyModel model;
    for (float w = 0; in >> w;) {
        model.weights.push_back(w);
    }
    float checksum = 0; // the "CPU work": validating the weights, `passes` times
    for (int pass = 0; pass < passes; ++pass) {
        for (float w : model.weights) {
            checksum += w * static_cast<float>(pass % 3);
        }
    }
    if (model.weights.empty() || std::isnan(checksum)) {
        throw std::runtime_error("corrupt weights in " + path);
    }
    return model;
}

// ---- the model the pool serves: blocking members run on the blocking executor ----------------------------
struct LegacyEmbedder {
    LegacyModel model;
    result<Embedding> embed(const std::string& text, const std::optional<std::string>&) const {
        Embedding out;
        for (float w : model.weights) {
            out.push_back(w * static_cast<float>(text.size()));
        }
        return out;
    }
    result<std::vector<Embedding>> batch_embed(const std::vector<std::string>& texts,
                                               const std::optional<std::string>& task) const {
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.push_back(*embed(text, task));
        }
        return out;
    }
};

/// A 1 ms timer on the pool's io thread; fulfils `released` once it ticked `ticks_needed` times after
/// `release_at` was set.
struct Heartbeat {
    std::atomic<long> ticks{0};
    std::atomic<long> release_at{-1};
    std::atomic<bool> stop{false};
    std::promise<void> released;
    bool fulfilled = false; // io thread only
};

asio::awaitable<void> heartbeat(Heartbeat& hb) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (!hb.stop.load()) {
        timer.expires_after(1ms);
        co_await timer.async_wait(asio::use_awaitable);
        const long t = ++hb.ticks;
        const long at = hb.release_at.load();
        if (!hb.fulfilled && at >= 0 && t >= at) {
            hb.fulfilled = true;
            hb.released.set_value();
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    bool smoke = false;
    std::filesystem::path cache_dir = std::filesystem::temp_directory_path() / "modelpool-legacy-loader";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--smoke") {
            smoke = true;
        } else if (arg == "--cache-dir" && i + 1 < argc) {
            cache_dir = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--smoke] [--cache-dir DIR]\n", argv[0]);
            return arg == "--help" ? 0 : 2;
        }
    }
    std::filesystem::create_directories(cache_dir);
    const std::string path = (cache_dir / "legacy-model.txt").string();
    std::ofstream(path) << "legacy-model-v1\n0.5 1.5 -2 4\n";
    const long ticks_needed = smoke ? 20 : 200;
    const int passes = smoke ? 1'000 : 1'000'000;

    modelpool::Pool pool({.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 64});
    Heartbeat hb;
    auto heartbeat_done = asio::co_spawn(pool.get_executor(), heartbeat(hb), asio::use_future);
    std::atomic<long> ticks_during_load{-1};

    // WRONG (what this replaces; do not do this): the legacy call on the io thread, directly or through a
    // synchronous bridge, the C++ spelling of block_in_place + block_on:
    //
    //     auto loader = [&]() -> asio::awaitable<result<LegacyEmbedder>> {
    //         co_return LegacyEmbedder{load_legacy_model(path, passes)};      // blocks the io thread, or:
    //         // co_return LegacyEmbedder{std::async(load_legacy_model, path, passes).get()};
    //         // asio::io_context nested; asio::co_spawn(nested, ...); nested.run();  // nested event loop
    //     };
    //
    // Then the heartbeat could not tick during the load, and the smoke check below would fail.

    // RIGHT: the legacy function, unchanged, runs on the blocking executor; the loader co_awaits it.
    auto loader = [&]() -> asio::awaitable<result<LegacyEmbedder>> {
        auto blocking_load = [&]() -> result<LegacyModel> {
            const long start = hb.ticks.load();
            hb.release_at = start + ticks_needed;
            LegacyModel model = load_legacy_model(path, passes); // blocking: fine on this thread
            // Proof that the io thread is free: the heartbeat it runs must tick on while this load waits.
            if (hb.released.get_future().wait_for(10s) != std::future_status::ready) {
                return modelpool::fail(modelpool::errc::model_error,
                                       "the heartbeat stalled: io thread parked");
            }
            ticks_during_load = hb.ticks.load() - start;
            return model;
        };
        result<LegacyModel> model = co_await modelpool::offload(pool.blocking_executor(), blocking_load);
        if (!model) {
            co_return modelpool::unexpected<modelpool::PoolError>(model.error());
        }
        co_return LegacyEmbedder{std::move(*model)};
    };
    auto guard = pool.governor().try_allocate(16, "legacy");
    auto id = guard ? pool.spawn_text_embedding_worker("legacy", loader, 16, std::move(*guard))
                    : result<modelpool::WorkerId>(modelpool::unexpected<modelpool::PoolError>(guard.error()));

    // From the main thread (not a pool thread), so waiting on a future here is fine.
    auto reply = id ? pool.embed("legacy", "hello", asio::use_future).get()
                    : result<Embedding>(modelpool::unexpected<modelpool::PoolError>(id.error()));
    hb.stop = true;
    heartbeat_done.get();
    pool.stop();

    if (!reply) {
        std::fprintf(stderr, "FAIL: the request failed: %s\n", reply.error().to_string().c_str());
        return 1;
    }
    const Embedding expected{2.5F, 7.5F, -10.0F, 20.0F}; // weights * strlen("hello")
    std::printf("legacy load: heartbeat ticked %ld times on the io thread during it (needed %ld); "
                "embed(\"hello\") = [%g, %g, %g, %g]\n",
                ticks_during_load.load(), ticks_needed, (*reply)[0], (*reply)[1], (*reply)[2], (*reply)[3]);
    if (ticks_during_load.load() < ticks_needed || *reply != expected) {
        std::fprintf(stderr, "FAIL: expected >= %ld ticks and [2.5, 7.5, -10, 20]\n", ticks_needed);
        return 1;
    }
    std::printf("OK: the io thread stayed free while the legacy loader ran on the blocking executor\n");
    return 0;
}
