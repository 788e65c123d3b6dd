// Tests of modelpool::Pool (modelpool/pool.hpp): spawning, routing, streams, calling styles, blocking calls,
// errors and shutdown, against the fake models of support/test_models.hpp.
//
// Nothing sleeps to paper over a race: the tests wait on Gates they open themselves, on Tallies the models
// report to, on futures, and on `eventually` (a 1 ms poll that runs on the pool's own io thread). Every wait
// has a timeout, so a bug fails a test instead of hanging the suite.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/test_models.hpp"

#include <modelpool/pool.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace modelpool;
using namespace modelpool::testing;
using namespace std::chrono_literals;
using std::chrono::steady_clock;

// ---- options and small helpers ----------------------------------------------------------------------------

PoolOptions test_options(const LogCapture& log) {
    return {.io_threads = 1,
            .blocking_threads = 2,
            .memory_limit_mb = 4096,
            .shutdown_timeout = 5s, // a test that forgets to open a gate fails in seconds, not in 30
            .logger = log.logger()};
}

template <class T> std::string show(const result<T>& r) {
    return r ? std::string("ok") : r.error().to_string();
}

AllocationGuard guard_for(Pool& pool, std::string_view key, std::size_t mb = 1) {
    auto guard = pool.governor().try_allocate(mb, key);
    REQUIRE(guard.has_value());
    return std::move(*guard);
}

KeySnapshot snapshot_of(const Pool& pool, std::string_view key) {
    auto snap = pool.snapshot(key);
    REQUIRE(snap.has_value());
    return *snap;
}

/// Polls `pred` every 1 ms from a coroutine on the pool's io thread until it holds; false after `timeout`.
template <class Pred> bool eventually(Pool& pool, Pred pred, std::chrono::milliseconds timeout = 5s) {
    auto done = asio::co_spawn(
        pool.get_executor(),
        [&pred, timeout]() -> asio::awaitable<bool> {
            const auto deadline = steady_clock::now() + timeout;
            asio::steady_timer timer(co_await asio::this_coro::executor);
            for (;;) {
                if (pred()) {
                    co_return true;
                }
                if (steady_clock::now() >= deadline) {
                    co_return false;
                }
                timer.expires_after(1ms);
                co_await timer.async_wait(asio::use_awaitable);
            }
        },
        asio::use_future);
    return get(std::move(done), timeout + 5s);
}

/// Waits until `key` has `n` workers parked idle (loaded, registered, waiting for requests).
bool idle_workers(Pool& pool, std::string_view key, std::size_t n) {
    return eventually(pool, [&] {
        auto snap = pool.snapshot(key);
        return snap && snap->count(WorkerState::idle) == n;
    });
}

/// Waits until the workers of `key` have served `n` requests (a worker counts a request after answering it).
bool served_eventually(Pool& pool, std::string_view key, std::uint64_t n) {
    return eventually(pool, [&] {
        auto snap = pool.snapshot(key);
        return snap && snap->served == n;
    });
}

std::thread::id io_thread_of(Pool& pool) {
    return get(asio::co_spawn(
        pool.get_executor(),
        []() -> asio::awaitable<std::thread::id> { co_return std::this_thread::get_id(); },
        asio::use_future));
}

/// A 1 ms timer loop on the pool's io_context that measures how late each tick fires.
class Heartbeat {
public:
    struct Stats {
        std::size_t ticks = 0;
        steady_clock::duration worst{};
    };

    explicit Heartbeat(Pool& pool)
        : done_(asio::co_spawn(pool.get_executor(), beat(stop_), asio::use_future)) {}
    Heartbeat(const Heartbeat&) = delete;
    Heartbeat& operator=(const Heartbeat&) = delete;
    ~Heartbeat() {
        stop_ = true;
        if (done_.valid()) {
            done_.wait();
        }
    }

    Stats finish() {
        stop_ = true;
        return get(std::move(done_));
    }

private:
    static asio::awaitable<Stats> beat(std::atomic<bool>& stop) {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        Stats stats;
        while (!stop.load()) {
            const auto deadline = steady_clock::now() + 1ms;
            timer.expires_at(deadline);
            co_await timer.async_wait(asio::use_awaitable);
            stats.worst = std::max(stats.worst, steady_clock::now() - deadline);
            ++stats.ticks;
        }
        co_return stats;
    }

    std::atomic<bool> stop_{false};
    std::future<Stats> done_;
};

double ms(steady_clock::duration d) {
    return std::chrono::duration<double, std::milli>(d).count();
}

// ---- chunks as strings ------------------------------------------------------------------------------------

std::string show_chunk(const TextChunk& c) {
    return "text:" + c.text;
}

std::string show_chunk(const CompletionChunk& c) {
    struct visitor {
        std::string operator()(const TextChunk& t) const { return show_chunk(t); }
        std::string operator()(const ToolCallStart& t) const { return "start:" + t.id + "/" + t.name; }
        std::string operator()(const ToolCallDelta& t) const {
            return "delta:" + t.id + "/" + t.name + "/" + t.partial_input;
        }
        std::string operator()(const ToolCallComplete& t) const {
            return "complete:" + t.id + "/" + t.name + "/" + t.input;
        }
        std::string operator()(const CompletionStats& s) const {
            return "stats:" + s.finish_reason + "/" + std::to_string(s.token_count);
        }
    };
    return std::visit(visitor{}, c);
}

std::string show_chunk(const ImageChunk& c) {
    struct visitor {
        std::string operator()(const ImageProgress& p) const {
            return "progress:" + std::to_string(p.step) + "/" + std::to_string(p.total);
        }
        std::string operator()(const Image& i) const {
            return "image:" + std::to_string(i.width) + "x" + std::to_string(i.height) + "x" +
                   std::to_string(i.channels) + ":" + std::to_string(i.pixels.size()) + ":" +
                   (i.pixels.empty() ? std::string("-") : std::to_string(i.pixels.front()));
        }
    };
    return std::visit(visitor{}, c);
}

using Chunks = std::vector<std::string>;
constexpr std::size_t max_chunks = 10'000; // a stream that never ends fails the test instead of hanging it

/// Reads `stream` to its end from a plain thread.
template <class Chunk> result<Chunks> drain(Stream<Chunk>& stream) {
    Chunks seen;
    while (seen.size() < max_chunks) {
        auto next = get(stream.async_next(asio::use_future));
        if (!next) {
            return unexpected<PoolError>(next.error());
        }
        if (!*next) {
            return seen;
        }
        seen.push_back(show_chunk(**next));
    }
    return fail(errc::model_error, "stream did not end after {} chunks", max_chunks);
}

/// Reads `stream` to its end from a coroutine.
template <class Chunk> asio::awaitable<result<Chunks>> drain_awaitable(Stream<Chunk> stream) {
    Chunks seen;
    while (seen.size() < max_chunks) {
        auto next_op = stream.async_next(asio::use_awaitable);
        auto next = co_await std::move(next_op);
        if (!next) {
            result<Chunks> error = unexpected<PoolError>(next.error());
            co_return error;
        }
        if (!*next) {
            co_return seen;
        }
        seen.push_back(show_chunk(**next));
    }
    result<Chunks> error = fail(errc::model_error, "stream did not end after {} chunks", max_chunks);
    co_return error;
}

// ---- the four calling styles ------------------------------------------------------------------------------

constexpr std::array<std::string_view, 4> style_names{"use_awaitable", "use_future", "callback", "deferred"};

/// Runs a unary operation once per calling style. `start(token)` starts it with a completion token.
template <class R, class Start> std::vector<result<R>> unary_in_all_styles(Pool& pool, Start start) {
    std::vector<result<R>> out;
    // 1. use_awaitable, inside a coroutine on the pool.
    out.push_back(get(asio::co_spawn(
        pool.get_executor(),
        [start]() mutable -> asio::awaitable<result<R>> {
            auto op = start(asio::use_awaitable);
            co_return co_await std::move(op);
        },
        asio::use_future)));
    // 2. use_future, from this thread.
    out.push_back(get(start(asio::use_future)));
    // 3. a plain callback.
    std::promise<result<R>> promise;
    start([&promise](result<R> r) { promise.set_value(std::move(r)); });
    out.push_back(get(promise.get_future()));
    // 4. deferred, launched later.
    auto deferred = start(asio::deferred);
    out.push_back(get(std::move(deferred)(asio::use_future)));
    return out;
}

/// Opens a stream once per calling style and reads it to its end.
template <class Chunk, class Start>
std::vector<result<Chunks>> stream_in_all_styles(Pool& pool, Start start) {
    using opened = result<Stream<Chunk>>;
    auto read_all = [](opened stream) -> result<Chunks> {
        if (!stream) {
            return unexpected<PoolError>(stream.error());
        }
        return drain(*stream);
    };
    std::vector<result<Chunks>> out;
    out.push_back(get(asio::co_spawn(
        pool.get_executor(),
        [start]() mutable -> asio::awaitable<result<Chunks>> {
            auto op = start(asio::use_awaitable);
            auto stream = co_await std::move(op);
            if (!stream) {
                result<Chunks> error = unexpected<PoolError>(stream.error());
                co_return error;
            }
            auto reading = drain_awaitable(std::move(*stream));
            co_return co_await std::move(reading);
        },
        asio::use_future)));
    out.push_back(read_all(get(start(asio::use_future))));
    std::promise<opened> promise;
    start([&promise](opened stream) { promise.set_value(std::move(stream)); });
    out.push_back(read_all(get(promise.get_future())));
    auto deferred = start(asio::deferred);
    out.push_back(read_all(get(std::move(deferred)(asio::use_future))));
    return out;
}

template <class T> void check_all_styles(const std::vector<result<T>>& results, const T& expected) {
    REQUIRE(results.size() == style_names.size());
    for (std::size_t style = 0; style < results.size(); ++style) {
        INFO("calling style " << style_names[style] << ": " << show(results[style]));
        REQUIRE(results[style].has_value());
        CHECK(*results[style] == expected);
    }
}

template <class M> auto failing_loader(std::shared_ptr<Gate> gate, bool throws) {
    return [gate, throws]() -> asio::awaitable<result<M>> {
        co_await gate->async_wait(asio::use_awaitable);
        if (throws) {
            throw std::runtime_error("disk on fire");
        }
        auto error = fail(errc::spawn_failed, "weights missing");
        co_return error;
    };
}

} // namespace

// ===========================================================================================================
// [spawn]

TEST_CASE("cold start: two spawns for one key - both loaders awaited concurrently - both workers serve",
          "[spawn]") {
    LogCapture log;
    auto load_gate = std::make_shared<Gate>();
    auto op_gate = std::make_shared<Gate>();
    auto loader_calls = std::make_shared<Tally>();
    auto probe = std::make_shared<Probe>();
    std::atomic<int> loaded{0};
    std::atomic<int> loaders_on_io_thread{0};

    Pool pool(test_options(log));
    OpenOnExit open_gates{load_gate, op_gate};

    auto loader_for = [&](int instance) {
        return [&, instance]() -> asio::awaitable<result<CoroEmbedder>> {
            loader_calls->arrive(instance);
            if (pool.get_executor().running_in_this_thread()) {
                ++loaders_on_io_thread;
            }
            co_await load_gate->async_wait(asio::use_awaitable);
            ++loaded;
            co_return CoroEmbedder{instance, probe, op_gate};
        };
    };

    CHECK_FALSE(pool.snapshot("bert").has_value()); // 0 workers
    auto first = pool.spawn_text_embedding_worker("bert", loader_for(1), 64, guard_for(pool, "bert", 64));
    auto second = pool.spawn_text_embedding_worker("bert", loader_for(2), 64, guard_for(pool, "bert", 64));
    REQUIRE(first.has_value());
    REQUIRE(second.has_value());
    CHECK(*first != *second);
    CHECK(pool.governor().allocated_mb() == 128);
    CHECK(pool.governor().allocated_mb("bert") == 128);

    // Both loaders run at the same time: both are called before either may finish.
    REQUIRE(loader_calls->wait_for(2));
    CHECK(loaded.load() == 0);
    auto starting = snapshot_of(pool, "bert");
    CHECK(starting.capability == "text_embedding");
    CHECK(starting.count(WorkerState::loading) == 2);
    CHECK(starting.serving() == 0);
    CHECK(starting.memory_mb == 128);

    // Two requests wait for the loads, then each worker takes one (the op gate keeps each busy with its
    // first).
    auto a = pool.embed("bert", "aa", asio::use_future);
    auto b = pool.embed("bert", "bbbb", asio::use_future);
    CHECK(snapshot_of(pool, "bert").queue_depth == 2);
    CHECK(pending(a));
    load_gate->open();
    REQUIRE(probe->calls.wait_for(2));
    auto serving_instances = probe->calls.tags();
    std::sort(serving_instances.begin(), serving_instances.end());
    CHECK(serving_instances == std::vector<std::int64_t>{1, 2});
    CHECK(snapshot_of(pool, "bert").count(WorkerState::busy) == 2);

    op_gate->open();
    auto ra = get(std::move(a));
    auto rb = get(std::move(b));
    INFO(show(ra) << " / " << show(rb));
    REQUIRE(ra.has_value());
    REQUIRE(rb.has_value());
    CHECK(ra->at(2) == 2.0F); // the reply belongs to its own request
    CHECK(rb->at(2) == 4.0F);
    CHECK(std::set<float>{ra->at(0), rb->at(0)} == std::set<float>{1.0F, 2.0F}); // both instances answered

    CHECK(loaded.load() == 2);
    // Loaders run on the pool's io thread: no nested run(), no future.get(), no block_in_place-style
    // bridging.
    CHECK(loaders_on_io_thread.load() == 2);
    const auto metrics = pool.metrics();
    CHECK(metrics.loader_calls == 2);
    CHECK(metrics.workers_spawned == 2);
    CHECK(metrics.workers_loaded == 2);
    CHECK(snapshot_of(pool, "bert").serving() == 2);
    // A worker counts a request as served after its caller was answered: wait for the figure.
    CHECK(served_eventually(pool, "bert", 2));
}

TEST_CASE("loaders run on the pool's io thread and offload blocking steps to the blocking executor",
          "[spawn]") {
    LogCapture log;
    Pool pool(test_options(log));
    std::atomic<bool> loader_on_io{false};
    std::atomic<bool> step_on_io{true};
    std::atomic<bool> resumed_on_io{false};

    auto loader = [&]() -> asio::awaitable<result<BlockingEmbedder>> {
        loader_on_io = pool.get_executor().running_in_this_thread();
        auto read_weights = offload(pool.blocking_executor(), [&] {
            step_on_io = pool.get_executor().running_in_this_thread();
            return 42; // a legacy synchronous read
        });
        const int weights = co_await std::move(read_weights);
        resumed_on_io = pool.get_executor().running_in_this_thread();
        co_return BlockingEmbedder{weights, nullptr, 0ms};
    };
    REQUIRE(pool.spawn_text_embedding_worker("legacy", loader, 8, guard_for(pool, "legacy", 8)));
    auto reply = get(pool.embed("legacy", "x", asio::use_future));
    INFO(show(reply));
    REQUIRE(reply.has_value());
    CHECK(reply->at(0) == 42.0F);
    CHECK(loader_on_io.load());
    CHECK_FALSE(step_on_io.load());
    CHECK(resumed_on_io.load());
}

TEST_CASE("no runtime blocking during model loading: 64 loaders awaiting 100 ms timers on ONE io thread",
          "[spawn][blocking]") {
    LogCapture log;
    Pool pool({.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 4096, .logger = log.logger()});
    constexpr int workers = 64;
    std::atomic<int> loads_done{0};

    Heartbeat heartbeat(pool);
    const auto start = steady_clock::now();
    for (int i = 0; i < workers; ++i) {
        auto loader = [i, &loads_done]() -> asio::awaitable<result<CoroEmbedder>> {
            asio::steady_timer timer(co_await asio::this_coro::executor, 100ms);
            co_await timer.async_wait(asio::use_awaitable);
            ++loads_done;
            co_return CoroEmbedder{i, nullptr, nullptr};
        };
        REQUIRE(pool.spawn_text_embedding_worker("many", loader, 1, guard_for(pool, "many")));
    }
    const bool all_ready = eventually(pool, [&] {
        auto snap = pool.snapshot("many");
        return snap && snap->serving() == workers;
    });
    const auto elapsed = steady_clock::now() - start;
    const auto beats = heartbeat.finish();

    REQUIRE(all_ready);
    INFO("all ready after " << ms(elapsed) << " ms; heartbeat: " << beats.ticks << " ticks, worst lateness "
                            << ms(beats.worst) << " ms");
    CHECK(loads_done.load() == workers);
    CHECK(elapsed >= 100ms);   // the loaders really waited
    CHECK(elapsed < 1s);       // ... concurrently (sequential loads would take 6.4 s)
    CHECK(beats.worst < 50ms); // and the io thread kept running other work meanwhile
    CHECK(beats.ticks >= 20);
    CHECK(pool.metrics().loader_calls == workers);
    CHECK(pool.governor().allocated_mb("many") == workers);
}

TEST_CASE(
    "a failed load is logged once - fails the requests that waited for it at once and returns its memory",
    "[spawn][errors]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};

    const bool throws = GENERATE(false, true);
    const std::string reason = throws ? "loader threw: disk on fire" : "weights missing";
    INFO((throws ? "a loader that throws" : "a loader that returns spawn_failed"));

    const auto before = pool.governor().allocated_mb();
    auto id = pool.spawn_text_embedding_worker("bert", failing_loader<CoroEmbedder>(gate, throws), 256,
                                               guard_for(pool, "bert", 256));
    auto eyes = pool.spawn_vision_worker("eyes", failing_loader<BlockingVision>(gate, throws), 128,
                                         guard_for(pool, "eyes", 128));
    REQUIRE(id.has_value());
    REQUIRE(eyes.has_value());
    CHECK(pool.governor().allocated_mb() == before + 384);

    // Requests queued while the loaders are pending: a unary one and a stream.
    auto waiting = pool.embed("bert", "queued", asio::use_future);
    auto stream = get(pool.describe_image("eyes", "cat.png", "what is it?", asio::use_future));
    REQUIRE(stream.has_value());
    CHECK(snapshot_of(pool, "bert").queue_depth == 1);
    CHECK(snapshot_of(pool, "eyes").queue_depth == 1);
    CHECK(pending(waiting));

    gate->open();
    auto outcome = get(std::move(waiting));
    check_error(outcome, errc::spawn_failed, {reason, "'bert'", fmt::format("worker {}", *id)});
    auto read = drain(*stream);
    check_error(read, errc::spawn_failed, {reason, "'eyes'", fmt::format("worker {}", *eyes)});

    // The memory is back before the requests learn of the failure.
    CHECK(pool.governor().allocated_mb() == before);
    CHECK(pool.governor().stats().reservations == 0);

    // One error line per failed worker, naming key, worker id and reason.
    INFO("log:\n" << log.dump());
    CHECK(log.count("error", {"'bert'", fmt::format("worker {}", *id), reason}) == 1);
    CHECK(log.count("error", {"'eyes'", fmt::format("worker {}", *eyes), reason}) == 1);
    CHECK(log.count("error", {}) == 2);

    const auto metrics = pool.metrics();
    CHECK(metrics.workers_failed == 2);
    CHECK(metrics.workers_loaded == 0);
    CHECK(metrics.errors_with(errc::spawn_failed) == 2);

    // Nothing alive and nothing loading: a new request is refused at once.
    auto snap = snapshot_of(pool, "bert");
    CHECK(snap.starting() == 0);
    CHECK(snap.serving() == 0);
    CHECK(snap.memory_mb == 0);
    check_error(get(pool.embed("bert", "late", asio::use_future)), errc::no_workers, {"'bert'"});
}

TEST_CASE("a failed load does not fail waiting requests while another worker of the key is loading",
          "[spawn][errors]") {
    LogCapture log;
    auto good_gate = std::make_shared<Gate>();
    auto bad_gate = std::make_shared<Gate>();
    Pool pool(test_options(log));
    OpenOnExit open_gates{good_gate, bad_gate};

    REQUIRE(pool.spawn_text_embedding_worker(
        "bert", gated_loader(good_gate, CoroEmbedder{7, nullptr, nullptr}), 10, guard_for(pool, "bert", 10)));
    REQUIRE(pool.spawn_text_embedding_worker("bert", failing_loader<CoroEmbedder>(bad_gate, false), 20,
                                             guard_for(pool, "bert", 20)));
    auto waiting = pool.embed("bert", "abc", asio::use_future);
    bad_gate->open();
    REQUIRE(eventually(pool, [&] { return pool.metrics().workers_failed == 1; }));
    CHECK(pending(waiting));
    CHECK(pool.governor().allocated_mb() == 10);

    good_gate->open();
    auto reply = get(std::move(waiting));
    INFO(show(reply));
    REQUIRE(reply.has_value());
    CHECK(*reply == fake_embedding(7, 1, 3, std::nullopt));
}

// ===========================================================================================================
// [routing]

TEST_CASE("concurrent requests are spread over the ready workers: none idles while another has a queue",
          "[routing]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};

    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 1,
                                             guard_for(pool, "bert")));
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{2, probe, gate}), 1,
                                             guard_for(pool, "bert")));
    REQUIRE(idle_workers(pool, "bert", 2));

    auto first = pool.embed("bert", "a", asio::use_future);
    auto second = pool.embed("bert", "bb", asio::use_future);
    REQUIRE(probe->calls.wait_for(2)); // both started: neither waits behind the other
    auto instances = probe->calls.tags();
    std::sort(instances.begin(), instances.end());
    CHECK(instances == std::vector<std::int64_t>{1, 2});

    auto snap = snapshot_of(pool, "bert");
    CHECK(snap.count(WorkerState::busy) == 2);
    CHECK(snap.count(WorkerState::idle) == 0);
    CHECK(snap.queue_depth == 0);

    auto third = pool.embed("bert", "ccc", asio::use_future);
    snap = snapshot_of(pool, "bert");
    CHECK(snap.queue_depth == 1); // queued only because no worker is free
    CHECK(snap.count(WorkerState::idle) == 0);

    gate->open();
    auto r1 = get(std::move(first));
    auto r2 = get(std::move(second));
    auto r3 = get(std::move(third));
    REQUIRE(r1.has_value());
    REQUIRE(r2.has_value());
    REQUIRE(r3.has_value());
    CHECK(r1->at(0) != r2->at(0));
    CHECK(r3->at(2) == 3.0F);
    CHECK(probe->calls.count() == 3);
    CHECK(served_eventually(pool, "bert", 3));
}

TEST_CASE("the queue is bounded: requests beyond queue_capacity get overloaded at once - the queued ones are "
          "served later",
          "[routing]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.queue_capacity = 2;
    Pool pool(options);
    OpenOnExit open_gate{gate};

    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 1,
                                             guard_for(pool, "bert")));
    REQUIRE(idle_workers(pool, "bert", 1));

    auto running = pool.embed("bert", "1", asio::use_future);
    REQUIRE(probe->calls.wait_for(1)); // the only worker is blocked
    auto queued_a = pool.embed("bert", "22", asio::use_future);
    auto queued_b = pool.embed("bert", "333", asio::use_future);
    CHECK(snapshot_of(pool, "bert").queue_depth == 2);

    // Refused while the gate is still closed: "at once" does not depend on the busy worker.
    check_error(get(pool.embed("bert", "4444", asio::use_future)), errc::overloaded, {"'bert'", "2 of 2"});
    auto batch_refused = get(pool.batch_embed("bert", {"x"}, std::nullopt, asio::use_future));
    check_error(batch_refused, errc::overloaded, {"'bert'"});
    CHECK(pending(queued_a));
    CHECK(pending(queued_b));

    gate->open();
    auto r0 = get(std::move(running));
    auto ra = get(std::move(queued_a));
    auto rb = get(std::move(queued_b));
    REQUIRE(r0.has_value());
    REQUIRE(ra.has_value());
    REQUIRE(rb.has_value());
    CHECK(ra->at(2) == 2.0F);
    CHECK(rb->at(2) == 3.0F);
    CHECK(pool.metrics().errors_with(errc::overloaded) == 2);
    CHECK(snapshot_of(pool, "bert").queue_depth == 0);
}

TEST_CASE("requests queued while the first worker loads are served once it registers - a key with no worker "
          "gets no_workers at once",
          "[routing]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};

    check_error(get(pool.embed("nobody", "x", asio::use_future)), errc::no_workers, {"'nobody'"});
    auto stream = get(pool.prompt("nobody", "x", {}, asio::use_future));
    check_error(stream, errc::no_workers, {"'nobody'"});

    REQUIRE(pool.spawn_text_embedding_worker("bert", gated_loader(gate, CoroEmbedder{5, nullptr, nullptr}), 1,
                                             guard_for(pool, "bert")));
    std::vector<std::future<result<Embedding>>> waiting;
    for (int i = 1; i <= 3; ++i) {
        waiting.push_back(
            pool.embed("bert", std::string(static_cast<std::size_t>(i), 'x'), asio::use_future));
    }
    CHECK(snapshot_of(pool, "bert").queue_depth == 3);
    CHECK(pending(waiting.front()));

    gate->open();
    for (std::size_t i = 0; i < waiting.size(); ++i) {
        auto reply = get(std::move(waiting[i]));
        INFO("request " << i << ": " << show(reply));
        REQUIRE(reply.has_value());
        CHECK(*reply == fake_embedding(5, 1, i + 1, std::nullopt));
    }
    CHECK(served_eventually(pool, "bert", 3));
}

TEST_CASE("with 4 io threads and 4 workers - 200 concurrent requests each get their own reply", "[routing]") {
    LogCapture log;
    Pool pool({.io_threads = 4, .blocking_threads = 2, .memory_limit_mb = 4096, .logger = log.logger()});
    for (int i = 1; i <= 4; ++i) {
        REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{i, nullptr, nullptr}), 1,
                                                 guard_for(pool, "bert")));
        REQUIRE(pool.spawn_text_embedding_worker("slow", ready_loader(BlockingEmbedder{i, nullptr, 0ms}), 1,
                                                 guard_for(pool, "slow")));
    }
    constexpr std::size_t requests = 200;
    std::vector<std::future<result<Embedding>>> replies;
    for (std::size_t i = 0; i < requests; ++i) {
        replies.push_back(
            pool.embed(i % 2 == 0 ? "bert" : "slow", std::string(i % 17 + 1, 'x'), asio::use_future));
    }
    for (std::size_t i = 0; i < requests; ++i) {
        auto reply = get(std::move(replies[i]));
        INFO("request " << i << ": " << show(reply));
        REQUIRE(reply.has_value());
        CHECK(reply->at(2) == static_cast<float>(i % 17 + 1));
        CHECK(reply->at(1) == (i % 2 == 0 ? 1.0F : 3.0F));
    }
    CHECK(pool.metrics().succeeded == requests);
    CHECK(pool.metrics().error_total() == 0);
    CHECK(served_eventually(pool, "bert", requests / 2));
    CHECK(served_eventually(pool, "slow", requests / 2));
}

TEST_CASE("a queued request cancelled through its cancellation slot completes with cancelled and frees its "
          "queue slot",
          "[routing][errors]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.queue_capacity = 1;
    Pool pool(options);
    OpenOnExit open_gate{gate};
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 1,
                                             guard_for(pool, "bert")));
    REQUIRE(idle_workers(pool, "bert", 1));

    auto running = pool.embed("bert", "running", asio::use_future);
    REQUIRE(probe->calls.wait_for(1));
    asio::cancellation_signal signal;
    auto queued = pool.embed("bert", "queued", asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    CHECK(snapshot_of(pool, "bert").queue_depth == 1);
    check_error(get(pool.embed("bert", "full", asio::use_future)), errc::overloaded);

    signal.emit(asio::cancellation_type::terminal);
    check_error(get(std::move(queued)), errc::cancelled, {"embed"});
    CHECK(snapshot_of(pool, "bert").queue_depth == 0); // its queue slot is free again
    auto next = pool.embed("bert", "next", asio::use_future);
    CHECK(snapshot_of(pool, "bert").queue_depth == 1);

    gate->open();
    auto r0 = get(std::move(running));
    auto r1 = get(std::move(next));
    REQUIRE(r0.has_value());
    REQUIRE(r1.has_value());
    CHECK(probe->calls.count() == 2); // "queued" never reached the model
    CHECK(pool.metrics().errors_with(errc::cancelled) == 1);
}

TEST_CASE("a running request cancelled through its cancellation slot is answered at once and its worker is "
          "free afterwards",
          "[routing][errors]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 1,
                                             guard_for(pool, "bert")));

    asio::cancellation_signal signal;
    auto running =
        pool.embed("bert", "running", asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    REQUIRE(probe->calls.wait_for(1));
    signal.emit(asio::cancellation_type::terminal);
    check_error(get(std::move(running)), errc::cancelled); // at once: the model is still blocked

    gate->open(); // the model returns later; the worker is free again
    auto next = get(pool.embed("bert", "next", asio::use_future));
    REQUIRE(next.has_value());
    CHECK(next->at(2) == 4.0F);
    CHECK(pool.metrics().errors_with(errc::cancelled) == 1);
    CHECK(pool.metrics().succeeded == 1); // the cancelled call's late result is not counted again
}

TEST_CASE("a request whose handler has a connected cancellation slot completes normally",
          "[routing][styles]") {
    LogCapture log;
    Pool pool(test_options(log));
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, nullptr, nullptr}), 1,
                                             guard_for(pool, "bert")));
    // A coroutine started with a cancellable token: every use_awaitable operation in it has a connected slot
    // (as with awaitable operators such as `||` for timeouts). Nothing is ever cancelled.
    asio::cancellation_signal signal;
    auto done = asio::co_spawn(
        pool.get_executor(),
        [&pool]() -> asio::awaitable<result<Embedding>> {
            auto op = pool.embed("bert", "abc", asio::use_awaitable);
            co_return co_await std::move(op);
        },
        asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    auto reply = get(std::move(done));
    INFO(show(reply));
    REQUIRE(reply.has_value());
    CHECK(*reply == fake_embedding(1, 1, 3, std::nullopt));
}

// ===========================================================================================================
// [styles]

TEST_CASE("every operation of every capability round-trips through all four calling styles", "[styles]") {
    LogCapture log;
    Pool pool(test_options(log));
    auto coro_probe = std::make_shared<Probe>();
    auto blocking_probe = std::make_shared<Probe>();
    auto vision_probe = std::make_shared<Probe>();
    coro_probe->io_thread = blocking_probe->io_thread = vision_probe->io_thread = io_thread_of(pool);

    REQUIRE(pool.spawn_text_embedding_worker("te-coro", ready_loader(CoroEmbedder{1, coro_probe, nullptr}), 1,
                                             guard_for(pool, "te-coro")));
    REQUIRE(pool.spawn_text_embedding_worker("te-blocking",
                                             ready_loader(BlockingEmbedder{2, blocking_probe, 0ms}), 1,
                                             guard_for(pool, "te-blocking")));
    REQUIRE(pool.spawn_image_embedding_worker("ie", ready_loader(CoroImageEmbedder{3}), 1,
                                              guard_for(pool, "ie")));
    REQUIRE(pool.spawn_text_to_text_worker("chat", ready_loader(CoroChat{}), 1, guard_for(pool, "chat")));
    REQUIRE(pool.spawn_vision_worker("vision", ready_loader(BlockingVision{vision_probe}), 1,
                                     guard_for(pool, "vision")));
    REQUIRE(
        pool.spawn_text_to_image_worker("paint", ready_loader(CoroPainter{}), 1, guard_for(pool, "paint")));

    const std::optional<std::string> task = "query";
    const std::vector<std::string> texts{"a", "bb"};

    SECTION("text_embedding") {
        for (const auto& [key, instance, kind] :
             {std::tuple{"te-coro", 1, 1}, std::tuple{"te-blocking", 2, 3}}) {
            INFO("key " << key);
            const std::string k = key;
            check_all_styles(unary_in_all_styles<Embedding>(
                                 pool,
                                 [&pool, k](auto&& token) {
                                     return pool.embed(k, "hello", std::forward<decltype(token)>(token));
                                 }),
                             fake_embedding(instance, kind, 5, std::nullopt));
            check_all_styles(unary_in_all_styles<Embedding>(pool,
                                                            [&pool, k, task](auto&& token) {
                                                                return pool.embed(
                                                                    k, "hello", task,
                                                                    std::forward<decltype(token)>(token));
                                                            }),
                             fake_embedding(instance, kind, 5, task));
            check_all_styles(unary_in_all_styles<std::vector<Embedding>>(
                                 pool,
                                 [&pool, k, texts, task](auto&& token) {
                                     return pool.batch_embed(k, texts, task,
                                                             std::forward<decltype(token)>(token));
                                 }),
                             std::vector<Embedding>{fake_embedding(instance, kind + 1, 1, task),
                                                    fake_embedding(instance, kind + 1, 2, task)});
        }
        // Coroutine operations ran on the io thread, blocking ones on the blocking executor.
        CHECK(coro_probe->on_io_thread.load() == 12);
        CHECK(coro_probe->off_io_thread.load() == 0);
        CHECK(blocking_probe->on_io_thread.load() == 0);
        CHECK(blocking_probe->off_io_thread.load() == 12);
    }

    SECTION("image_embedding") {
        check_all_styles(unary_in_all_styles<Embedding>(pool,
                                                        [&pool](auto&& token) {
                                                            return pool.embed_image(
                                                                "ie", "cat.png",
                                                                std::forward<decltype(token)>(token));
                                                        }),
                         fake_embedding(3, 10, 7, std::nullopt));
        check_all_styles(unary_in_all_styles<Embedding>(pool,
                                                        [&pool](auto&& token) {
                                                            return pool.embed_image_url(
                                                                "ie", "https://x/y.png",
                                                                std::forward<decltype(token)>(token));
                                                        }),
                         fake_embedding(3, 11, 15, std::nullopt));
        check_all_styles(
            unary_in_all_styles<Embedding>(pool,
                                           [&pool](auto&& token) {
                                               return pool.embed_image_base64(
                                                   "ie", "aGVsbG8=", std::forward<decltype(token)>(token));
                                           }),
            fake_embedding(3, 12, 8, std::nullopt));
        check_all_styles(unary_in_all_styles<std::vector<Embedding>>(
                             pool,
                             [&pool, texts](auto&& token) {
                                 return pool.batch_embed_images("ie", texts,
                                                                std::forward<decltype(token)>(token));
                             }),
                         std::vector<Embedding>{fake_embedding(3, 13, 1, std::nullopt),
                                                fake_embedding(3, 13, 2, std::nullopt)});
    }

    SECTION("text_to_text") {
        check_all_styles(stream_in_all_styles<CompletionChunk>(pool,
                                                               [&pool](auto&& token) {
                                                                   return pool.prompt(
                                                                       "chat", "hi", {.max_tokens = 2},
                                                                       std::forward<decltype(token)>(token));
                                                               }),
                         Chunks{"text:hi#0", "text:hi#1", "stats:stop/2"});
        check_all_styles(stream_in_all_styles<CompletionChunk>(
                             pool,
                             [&pool](auto&& token) {
                                 return pool.prompt("chat", "call a tool", {.max_tokens = 9},
                                                    std::forward<decltype(token)>(token));
                             }),
                         Chunks{"start:c1/search", "delta:c1/search/{\"q\":", "complete:c1/search/{\"q\":1}",
                                "stats:stop/9"});
    }

    SECTION("vision") {
        check_all_styles(stream_in_all_styles<TextChunk>(pool,
                                                         [&pool](auto&& token) {
                                                             return pool.describe_image(
                                                                 "vision", "cat.png", "what",
                                                                 std::forward<decltype(token)>(token));
                                                         }),
                         Chunks{"text:what@file:cat.png/0", "text:what@file:cat.png/1"});
        check_all_styles(stream_in_all_styles<TextChunk>(pool,
                                                         [&pool](auto&& token) {
                                                             return pool.describe_url(
                                                                 "vision", "https://x/y.png", "who",
                                                                 std::forward<decltype(token)>(token));
                                                         }),
                         Chunks{"text:who@url:https://x/y.png/0", "text:who@url:https://x/y.png/1"});
        CHECK(vision_probe->off_io_thread.load() == 8);
        CHECK(vision_probe->on_io_thread.load() == 0);
    }

    SECTION("text_to_image") {
        check_all_styles(stream_in_all_styles<ImageChunk>(pool,
                                                          [&pool](auto&& token) {
                                                              return pool.generate_image(
                                                                  "paint", "sun",
                                                                  {.width = 2, .height = 1, .steps = 2},
                                                                  std::forward<decltype(token)>(token));
                                                          }),
                         Chunks{"progress:1/2", "progress:2/2", "image:2x1x3:6:3"});
    }

    const auto metrics = pool.metrics();
    CHECK(metrics.error_total() == 0);
    CHECK(metrics.succeeded == metrics.requests);
    CHECK(metrics.requests > 0);
}

// ===========================================================================================================
// [stream]

TEST_CASE(
    "a stream stops early when its reader stops: the model sees send() return false - the worker is free",
    "[stream]") {
    LogCapture log;
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.stream_capacity = 4;
    Pool pool(options);

    SECTION("coroutine model (text_to_text, co_await sink.send)") {
        REQUIRE(pool.spawn_text_to_text_worker("chat", ready_loader(CoroChat{probe}), 1,
                                               guard_for(pool, "chat")));
        auto opened = get(pool.prompt("chat", "go", {.max_tokens = 1'000'000}, asio::use_future));
        REQUIRE(opened.has_value());
        {
            Stream<CompletionChunk> stream = std::move(*opened);
            for (int i = 0; i < 3; ++i) {
                auto next = get(stream.async_next(asio::use_future));
                REQUIRE(next.has_value());
                REQUIRE(next->has_value());
                CHECK(show_chunk(**next) == "text:go#" + std::to_string(i));
            }
        } // the reader destroys the stream

        REQUIRE(probe->stopped.wait_for(1));
        INFO("chunks produced: " << probe->produced.load());
        CHECK(probe->produced.load() >= 3);
        CHECK(probe->produced.load() <= 3 + options.stream_capacity + 2);

        auto again = get(pool.prompt("chat", "again", {.max_tokens = 2}, asio::use_future));
        REQUIRE(again.has_value());
        auto chunks = drain(*again);
        INFO(show(chunks));
        REQUIRE(chunks.has_value());
        CHECK(*chunks == Chunks{"text:again#0", "text:again#1", "stats:stop/2"});
    }

    SECTION("blocking model (vision, send_blocking on the blocking executor)") {
        REQUIRE(pool.spawn_vision_worker("eyes", ready_loader(BlockingVision{probe}), 1,
                                         guard_for(pool, "eyes")));
        auto opened = get(pool.describe_image("eyes", "endless", "q", asio::use_future));
        REQUIRE(opened.has_value());
        {
            Stream<TextChunk> stream = std::move(*opened);
            for (int i = 0; i < 3; ++i) {
                auto next = get(stream.async_next(asio::use_future));
                REQUIRE(next.has_value());
                REQUIRE(next->has_value());
                CHECK((*next)->text == "q@file:endless/" + std::to_string(i));
            }
            stream.close(); // explicit close, then destruction: idempotent
        }

        REQUIRE(probe->stopped.wait_for(1));
        INFO("chunks produced: " << probe->produced.load());
        CHECK(probe->produced.load() >= 3);
        CHECK(probe->produced.load() <= 3 + options.stream_capacity + 2);

        auto again = get(pool.describe_image("eyes", "cat.png", "q", asio::use_future));
        REQUIRE(again.has_value());
        auto chunks = drain(*again);
        INFO(show(chunks));
        REQUIRE(chunks.has_value());
        CHECK(*chunks == Chunks{"text:q@file:cat.png/0", "text:q@file:cat.png/1"});
    }
}

TEST_CASE(
    "a cancelled read leaves the stream usable - a stream abandoned while queued never reaches the model",
    "[stream]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};
    REQUIRE(pool.spawn_text_to_text_worker("chat", gated_loader(gate, CoroChat{probe}), 1,
                                           guard_for(pool, "chat")));

    {
        auto abandoned = get(pool.prompt("chat", "never", {.max_tokens = 2}, asio::use_future));
        REQUIRE(abandoned.has_value());
    } // the reader leaves before the worker has loaded
    auto opened = get(pool.prompt("chat", "hi", {.max_tokens = 2}, asio::use_future));
    REQUIRE(opened.has_value());

    // A read waiting for a chunk that cannot come yet is cancelled. The cancellation is emitted on the pool's
    // io thread, where the read completes (Asio's rule for cancellation signals).
    asio::cancellation_signal signal;
    std::promise<result<std::optional<CompletionChunk>>> read;
    opened->async_next(asio::bind_cancellation_slot(
        signal.slot(),
        asio::bind_executor(pool.get_executor(), [&read](result<std::optional<CompletionChunk>> r) {
            read.set_value(std::move(r));
        })));
    asio::post(pool.get_executor(), [&signal] { signal.emit(asio::cancellation_type::terminal); });
    check_error(get(read.get_future()), errc::cancelled);

    gate->open();
    auto rest = drain(*opened); // the stream is still usable
    INFO(show(rest));
    REQUIRE(rest.has_value());
    CHECK(*rest == Chunks{"text:hi#0", "text:hi#1", "stats:stop/2"});
    CHECK(probe->calls.count() == 1); // "never" was skipped
}

// ===========================================================================================================
// [blocking]

TEST_CASE("a blocking model call runs on the blocking executor and does not stall the io_context",
          "[blocking]") {
    LogCapture log;
    Pool pool({.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 4096, .logger = log.logger()});
    auto probe = std::make_shared<Probe>();
    probe->io_thread = io_thread_of(pool);

    for (int i = 1; i <= 2; ++i) {
        REQUIRE(pool.spawn_text_embedding_worker("slow", ready_loader(BlockingEmbedder{i, probe, 100ms}), 1,
                                                 guard_for(pool, "slow")));
    }
    REQUIRE(idle_workers(pool, "slow", 2));

    Heartbeat heartbeat(pool);
    const auto start = steady_clock::now();
    std::vector<std::future<result<Embedding>>> replies;
    for (int i = 0; i < 4; ++i) {
        replies.push_back(pool.embed("slow", "text", asio::use_future));
    }
    for (auto& reply : replies) {
        auto r = get(std::move(reply));
        INFO(show(r));
        CHECK(r.has_value());
    }
    const auto elapsed = steady_clock::now() - start;
    const auto beats = heartbeat.finish();

    INFO("inference took " << ms(elapsed) << " ms; heartbeat: " << beats.ticks << " ticks, worst lateness "
                           << ms(beats.worst) << " ms");
    CHECK(elapsed >= 200ms); // 4 calls of 100 ms on 2 workers
    CHECK(probe->off_io_thread.load() == 4);
    CHECK(probe->on_io_thread.load() == 0);
    CHECK(beats.worst < 50ms);
    CHECK(beats.ticks >= 20);
}

/// Records where and when its one live instance is destroyed (moved-from copies record nothing).
template <class Base> struct DestructionProbe : Base {
    struct Record {
        std::atomic<int> destroyed{0};
        std::atomic<bool> on_io_thread{false};
        std::atomic<std::size_t> allocated_mb_then{0};
        const MemoryGovernor* governor = nullptr;
    };
    std::shared_ptr<Record> record;

    DestructionProbe(Base base, std::shared_ptr<Record> r) : Base(std::move(base)), record(std::move(r)) {}
    DestructionProbe(DestructionProbe&& other) noexcept = default;
    DestructionProbe& operator=(DestructionProbe&& other) noexcept = default;
    ~DestructionProbe() {
        if (record) {
            record->on_io_thread = modelpool::detail::on_pool_io_thread();
            record->allocated_mb_then = record->governor->allocated_mb();
            ++record->destroyed;
        }
    }
};

TEST_CASE("a model with a blocking operation is destroyed off the io threads, before its memory is released",
          "[blocking][lifecycle]") {
    LogCapture log;
    Pool pool({.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 4096, .logger = log.logger()});
    using BlockingProbe = DestructionProbe<BlockingEmbedder>;
    using CoroProbe = DestructionProbe<CoroEmbedder>;
    auto blocking = std::make_shared<BlockingProbe::Record>();
    auto coro = std::make_shared<CoroProbe::Record>();
    blocking->governor = coro->governor = &pool.governor();
    // Move-only models made by the loader itself, so that the one live instance is the worker's.
    auto blocking_loader = [blocking]() -> asio::awaitable<result<BlockingProbe>> {
        co_return BlockingProbe(BlockingEmbedder{1, nullptr, 0ms}, blocking);
    };
    auto coro_loader = [coro]() -> asio::awaitable<result<CoroProbe>> {
        co_return CoroProbe(CoroEmbedder{2, nullptr, nullptr}, coro);
    };
    REQUIRE(pool.spawn_text_embedding_worker("blocking", blocking_loader, 3, guard_for(pool, "blocking", 3)));
    REQUIRE(pool.spawn_text_embedding_worker("coro", coro_loader, 5, guard_for(pool, "coro", 5)));
    REQUIRE(get(pool.embed("blocking", "x", asio::use_future)).has_value());
    REQUIRE(get(pool.embed("coro", "x", asio::use_future)).has_value());
    CHECK(blocking->destroyed == 0);

    pool.stop(); // the workers finish while the io thread still runs
    CHECK(blocking->destroyed == 1);
    CHECK_FALSE(blocking->on_io_thread); // a runtime's teardown may take milliseconds: never on an io thread
    CHECK(blocking->allocated_mb_then >= 3); // its memory was still reserved while it was being destroyed
    CHECK(coro->destroyed == 1);
    CHECK(coro->on_io_thread); // a coroutine-only model promised not to block: destroyed in place
    CHECK(coro->allocated_mb_then >= 5);
    CHECK(pool.governor().allocated_mb() == 0);
}

// ===========================================================================================================
// [errors]

TEST_CASE(
    "model failures are values: model_error for a failing or throwing operation - the worker keeps serving",
    "[errors]") {
    LogCapture log;
    Pool pool(test_options(log));
    REQUIRE(pool.spawn_text_embedding_worker("coro", ready_loader(CoroEmbedder{1, nullptr, nullptr}), 1,
                                             guard_for(pool, "coro")));
    REQUIRE(pool.spawn_text_embedding_worker("blocking", ready_loader(BlockingEmbedder{2, nullptr, 0ms}), 1,
                                             guard_for(pool, "blocking")));

    check_error(get(pool.embed("coro", "fail", asio::use_future)), errc::model_error,
                {"cannot embed 'fail'"});
    check_error(get(pool.embed("blocking", "throw", asio::use_future)), errc::model_error,
                {"tensor shape mismatch"});
    auto ok1 = get(pool.embed("coro", "fine", asio::use_future));
    auto ok2 = get(pool.embed("blocking", "fine", asio::use_future));
    CHECK(ok1.has_value());
    CHECK(ok2.has_value());
    CHECK(pool.metrics().errors_with(errc::model_error) == 2);
    CHECK(pool.metrics().succeeded == 2);
}

TEST_CASE("bad input is answered with a clear PoolError and leaks nothing", "[errors]") {
    LogCapture log;
    auto options = test_options(log);
    options.max_key_length = 16;
    Pool pool(options);
    auto& governor = pool.governor();

    SECTION("empty key") {
        check_error(
            pool.spawn_text_embedding_worker("", ready_loader(CoroEmbedder{}), 1, guard_for(pool, "x")),
            errc::invalid_argument, {"empty"});
        check_error(get(pool.embed("", "x", asio::use_future)), errc::invalid_argument, {"empty"});
        check_error(get(pool.prompt("", "x", {}, asio::use_future)), errc::invalid_argument, {"empty"});
    }
    SECTION("key longer than max_key_length") {
        const std::string key(17, 'k');
        check_error(
            pool.spawn_text_embedding_worker(key, ready_loader(CoroEmbedder{}), 1, guard_for(pool, "x")),
            errc::invalid_argument, {"17 bytes", "16"});
        check_error(get(pool.embed(key, "x", asio::use_future)), errc::invalid_argument, {"17 bytes", "16"});
        CHECK(pool.spawn_text_embedding_worker(std::string(16, 'k'), ready_loader(CoroEmbedder{}), 1,
                                               guard_for(pool, "x"))
                  .has_value()); // the limit itself is fine
    }
    SECTION("per_worker_mb == 0") {
        check_error(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 0,
                                                     guard_for(pool, "bert")),
                    errc::invalid_argument, {"per_worker_mb", "'bert'", "0"});
    }
    SECTION("an empty guard") {
        check_error(
            pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 1, AllocationGuard{}),
            errc::invalid_argument, {"guard", "'bert'", "empty"});
        auto guard = guard_for(pool, "bert", 3);
        AllocationGuard moved = std::move(guard);
        check_error(
            pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 3, std::move(guard)),
            errc::invalid_argument, {"empty"});
        CHECK(governor.allocated_mb() == 3); // still held by `moved`
    }
    SECTION("a guard whose size differs from per_worker_mb") {
        check_error(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 100,
                                                     guard_for(pool, "bert", 50)),
                    errc::invalid_argument, {"'bert'", "50 MB", "100"});
    }
    SECTION("a guard from another pool's governor") {
        Pool other(test_options(log));
        auto foreign = other.governor().try_allocate(10, "bert");
        REQUIRE(foreign.has_value());
        check_error(
            pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 10, std::move(*foreign)),
            errc::invalid_argument, {"'bert'", "another pool"});
        CHECK(other.governor().allocated_mb() == 0); // released on refusal
    }
    SECTION("a key used with two capabilities") {
        REQUIRE(pool.spawn_text_embedding_worker("shared", ready_loader(CoroEmbedder{}), 1,
                                                 guard_for(pool, "shared")));
        check_error(pool.spawn_image_embedding_worker("shared", ready_loader(CoroImageEmbedder{}), 1,
                                                      guard_for(pool, "shared")),
                    errc::invalid_argument, {"'shared'", "text_embedding", "image_embedding"});
        check_error(get(pool.embed_image("shared", "cat.png", asio::use_future)), errc::invalid_argument,
                    {"'shared'", "text_embedding", "image_embedding"});
        check_error(get(pool.prompt("shared", "hi", {}, asio::use_future)), errc::invalid_argument,
                    {"'shared'", "text_to_text"});
        CHECK(governor.allocated_mb() == 1); // only the accepted worker holds memory
        CHECK(pool.metrics().workers_spawned == 1);
    }

    // Every refused spawn released its guard and created no worker: only the accepted workers (1 MB each)
    // hold memory.
    CHECK(governor.allocated_mb() == pool.metrics().workers_spawned);
    CHECK(pool.metrics().workers_failed == 0);
}

TEST_CASE("invalid PoolOptions are refused by Pool::create and by the throwing constructor", "[errors]") {
    struct bad_case {
        PoolOptions options;
        std::string_view field;
        std::string_view value;
    };
    const std::array<bad_case, 5> cases{{
        {{.io_threads = 0}, "io_threads", "got 0"},
        {{.io_threads = 5000}, "io_threads", "got 5000"},
        {{.queue_capacity = 0}, "queue_capacity", "got 0"},
        {{.stream_capacity = 0}, "stream_capacity", "got 0"},
        {{.max_key_length = 0}, "max_key_length", "got 0"},
    }};
    for (const auto& bad : cases) {
        INFO("field " << bad.field);
        auto created = Pool::create(bad.options);
        check_error(created, errc::invalid_argument, {bad.field, bad.value});

        bool threw = false;
        try {
            Pool pool(bad.options);
        } catch (const std::system_error& e) {
            threw = true;
            CHECK(e.code() == errc::invalid_argument);
            CHECK(e.code().category() == pool_category());
            CHECK(contains(e.what(), bad.field));
        }
        CHECK(threw);
    }

    LogCapture log;
    auto good = Pool::create(test_options(log));
    REQUIRE(good.has_value());
    CHECK((*good)->options().queue_capacity == 1024);
}

TEST_CASE("default options: a logger named modelpool - a memory limit from the machine's RAM", "[options]") {
    Pool pool(PoolOptions{.blocking_threads = 1});
    CHECK(pool.logger().name() == "modelpool");
    CHECK(pool.governor().limit_mb() == default_memory_limit_mb());
    CHECK(pool.governor().limit_mb() >= 1);
    const auto& options = pool.options();
    CHECK(options.io_threads == 1);
    CHECK(options.queue_capacity == 1024);
    CHECK(options.stream_capacity == 16);
    CHECK(options.max_key_length == 256);
    CHECK(options.shutdown_timeout == 30s);
}

TEST_CASE("options() reports the values the pool runs with - defaults filled in", "[options]") {
    Pool pool(PoolOptions{});
    // pool.hpp documents options() as "the validated options the pool runs with (defaults filled in)".
    CHECK(pool.options().memory_limit_mb == pool.governor().limit_mb());
    CHECK(pool.options().blocking_threads == std::max<std::size_t>(1, std::thread::hardware_concurrency()));
    CHECK(pool.options().logger.get() == &pool.logger());
}

TEST_CASE("worker states move only along the lifecycle's allowed transitions", "[spawn]") {
    using enum WorkerState;
    STATIC_REQUIRE(can_transition(spawning, loading));
    STATIC_REQUIRE(can_transition(loading, ready));
    STATIC_REQUIRE(can_transition(loading, failed));
    STATIC_REQUIRE(can_transition(ready, idle));
    STATIC_REQUIRE(can_transition(idle, busy));
    STATIC_REQUIRE(can_transition(busy, idle));
    STATIC_REQUIRE(can_transition(idle, evicting));
    STATIC_REQUIRE(can_transition(evicting, stopped));
    STATIC_REQUIRE_FALSE(can_transition(spawning, ready)); // never serving without a load
    STATIC_REQUIRE_FALSE(can_transition(failed, ready));
    STATIC_REQUIRE_FALSE(can_transition(stopped, idle));
    STATIC_REQUIRE_FALSE(can_transition(evicting, busy));
    STATIC_REQUIRE_FALSE(can_transition(busy, evicting)); // a busy worker finishes its request first
    STATIC_REQUIRE(is_serving(idle));
    STATIC_REQUIRE_FALSE(is_serving(loading));
    STATIC_REQUIRE_FALSE(is_live(failed));
}

// ===========================================================================================================
// [shutdown]

TEST_CASE("stop() refuses new requests - lets queued and running requests finish - returns all memory and "
          "is idempotent",
          "[shutdown]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    Pool pool(test_options(log));
    OpenOnExit open_gate{gate};

    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 32,
                                             guard_for(pool, "bert", 32)));
    REQUIRE(
        pool.spawn_text_to_text_worker("chat", ready_loader(CoroChat{}), 16, guard_for(pool, "chat", 16)));
    REQUIRE(idle_workers(pool, "bert", 1));
    REQUIRE(idle_workers(pool, "chat", 1));
    CHECK(pool.governor().allocated_mb() == 48);

    auto running = pool.embed("bert", "busy", asio::use_future);
    REQUIRE(probe->calls.wait_for(1));
    auto queued = pool.embed("bert", "queued", asio::use_future);
    CHECK(snapshot_of(pool, "bert").queue_depth == 1);

    auto stopping = std::async(std::launch::async, [&pool] { pool.stop(); });
    while (!pool.stopping()) {
        std::this_thread::yield();
    }
    check_error(get(pool.embed("bert", "late", asio::use_future)), errc::shutting_down, {"'bert'"});
    CHECK(pending(stopping)); // stop() waits for the busy worker and the queued request
    CHECK(pending(queued));

    gate->open();
    auto finished = get(std::move(running));
    INFO(show(finished));
    CHECK(finished.has_value()); // the busy worker completed its request
    auto drained = get(std::move(queued));
    INFO(show(drained));
    CHECK(drained.has_value()); // and then served the queued one
    get(std::move(stopping));

    CHECK(pool.governor().allocated_mb() == 0);
    CHECK(pool.governor().stats().reservations == 0);
    CHECK(pool.metrics().workers_stopped == 2);

    pool.stop(); // idempotent
    CHECK(pool.stopping());

    // Spawning after stop: refused, and the guard is given back.
    auto guard = pool.governor().try_allocate(5, "late");
    REQUIRE(guard.has_value());
    check_error(pool.spawn_text_embedding_worker("late", ready_loader(CoroEmbedder{}), 5, std::move(*guard)),
                errc::shutting_down, {"'late'"});
    CHECK(pool.governor().allocated_mb() == 0);
}

TEST_CASE("requests after stop() are answered with shutting_down", "[shutdown][errors]") {
    LogCapture log;
    Pool pool(test_options(log));
    REQUIRE(
        pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 1, guard_for(pool, "bert")));
    pool.stop();
    check_error(get(pool.embed("bert", "x", asio::use_future)), errc::shutting_down, {"'bert'"});
    check_error(get(pool.embed("never-spawned", "x", asio::use_future)), errc::shutting_down);
    check_error(get(pool.prompt("chat", "x", {}, asio::use_future)), errc::shutting_down);
    CHECK(pool.governor().allocated_mb() == 0);
}

TEST_CASE("stop() ends a stream whose coroutine model waits for buffer space and returns its memory",
          "[shutdown][stream]") {
    LogCapture log;
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.stream_capacity = 2;
    options.shutdown_timeout = 100ms;
    Pool pool(options);
    REQUIRE(
        pool.spawn_text_to_text_worker("chat", ready_loader(CoroChat{probe}), 8, guard_for(pool, "chat", 8)));
    auto opened = get(pool.prompt("chat", "go", {.max_tokens = 1'000'000}, asio::use_future));
    REQUIRE(opened.has_value());
    Stream<CompletionChunk> stream = std::move(*opened);
    REQUIRE(get(stream.async_next(asio::use_future)).has_value());
    // 1 chunk read + 2 buffered; the model now waits in `co_await sink.send(...)` for space.
    REQUIRE(eventually(pool, [&] { return probe->produced.load() == 3; }));

    const auto start = steady_clock::now();
    pool.stop();
    CHECK(steady_clock::now() - start < 2s);
    CHECK(probe->stopped.wait_for(1, 100ms));   // the model was told to stop (its send returned false) ...
    CHECK(pool.governor().allocated_mb() == 0); // ... so its worker ended and released its memory

    // The reader learns that the stream ended (buffered chunks may come first).
    auto rest = drain(stream);
    check_error(rest, errc::shutting_down);
}

TEST_CASE("stop() cancelling the workers it waited for is safe when one finishes during the cancellation",
          "[shutdown]") {
    // Orders the io queue so that, when stop() gives up waiting and cancels the workers it still counts as
    // running, the one worker's last step is already queued: it finishes inside stop()'s final poll, before
    // the cancellation reaches it.
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.shutdown_timeout = 20ms;
    Pool pool(options);
    OpenOnExit open_gate{gate};
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, probe, gate}), 8,
                                             guard_for(pool, "bert", 8)));
    auto reply = pool.embed("bert", "x", asio::use_future);
    REQUIRE(probe->calls.wait_for(1)); // the worker waits on the gate

    // 1. Hold the io thread; 2. queue the model's wake-up behind it; 3. queue a second hold that lasts until
    // stop() has stopped the io_context. Releasing the first hold lets the model return; the worker's next
    // step is then queued behind the second hold and runs only in stop()'s own poll.
    std::promise<void> holding;
    std::promise<void> release;
    auto released = release.get_future();
    asio::post(pool.get_executor(), [&] {
        holding.set_value();
        released.wait();
    });
    holding.get_future().wait();
    gate->open();
    asio::post(pool.get_executor(), [&pool] {
        auto& io = pool.get_executor().context();
        const auto deadline = steady_clock::now() + 5s;
        while (!io.stopped() && steady_clock::now() < deadline) {
            std::this_thread::yield();
        }
    });
    auto stopping = std::async(std::launch::async, [&pool] { pool.stop(); });
    release.set_value();
    REQUIRE(stopping.wait_for(10s) == std::future_status::ready);
    stopping.get();

    auto answered = get(std::move(reply));
    INFO(show(answered));
    CHECK(answered.has_value()); // the model returned before the shutdown timeout
    CHECK(pool.governor().allocated_mb() == 0);
    CHECK(pool.metrics().workers_stopped == 1);
}

TEST_CASE(
    "stop() ends a stream whose blocking model waits in send_blocking while the reader holds the stream",
    "[shutdown][stream][blocking]") {
    LogCapture log;
    auto probe = std::make_shared<Probe>();
    auto options = test_options(log);
    options.stream_capacity = 2;
    options.shutdown_timeout = 50ms;
    Pool pool(options);
    REQUIRE(
        pool.spawn_vision_worker("eyes", ready_loader(BlockingVision{probe}), 8, guard_for(pool, "eyes", 8)));
    auto opened = get(pool.describe_image("eyes", "endless", "q", asio::use_future));
    REQUIRE(opened.has_value());
    Stream<TextChunk> stream = std::move(*opened);
    REQUIRE(get(stream.async_next(asio::use_future)).has_value());
    REQUIRE(eventually(pool, [&] { return probe->produced.load() == 3; })); // now blocked in send_blocking

    auto stopping = std::async(std::launch::async, [&pool] { pool.stop(); });
    const bool stopped_in_time = stopping.wait_for(750ms) == std::future_status::ready;
    stream.close(); // unblocks the model if stop() did not, so that this test ends either way
    REQUIRE(stopping.wait_for(5s) == std::future_status::ready);
    CHECK(stopped_in_time); // stop() must not wait for a reader that never reads
    CHECK(probe->stopped.wait_for(1, 100ms));
    CHECK(pool.governor().allocated_mb() == 0);
}

TEST_CASE("stop() gives up on a worker that outlives shutdown_timeout - and its memory still returns",
          "[shutdown]") {
    LogCapture log;
    auto options = test_options(log);
    options.shutdown_timeout = 50ms;
    Pool pool(options);

    auto stuck_loader = []() -> asio::awaitable<result<CoroEmbedder>> {
        asio::steady_timer timer(co_await asio::this_coro::executor, 1h);
        co_await timer.async_wait(asio::use_awaitable);
        co_return CoroEmbedder{};
    };
    REQUIRE(pool.spawn_text_embedding_worker("stuck", stuck_loader, 64, guard_for(pool, "stuck", 64)));
    auto waiting = pool.embed("stuck", "x", asio::use_future);
    REQUIRE(eventually(pool, [&] { return pool.metrics().loader_calls == 1; }));

    const auto start = steady_clock::now();
    pool.stop();
    const auto elapsed = steady_clock::now() - start;

    check_error(get(std::move(waiting)), errc::shutting_down, {"'stuck'"});
    CHECK(elapsed >= 50ms);
    CHECK(elapsed < 1s);
    CHECK(pool.governor().allocated_mb() == 0);
    INFO("log:\n" << log.dump());
    CHECK(log.count("warning", {"still busy", "50 ms"}) == 1);
}

TEST_CASE("destroying a pool without stop() ends its workers and returns their memory", "[shutdown]") {
    LogCapture log;
    std::shared_ptr<MemoryGovernor> governor;
    {
        Pool pool(test_options(log));
        governor = pool.governor().shared_from_this();
        REQUIRE(
            pool.spawn_text_embedding_worker("te", ready_loader(CoroEmbedder{}), 1, guard_for(pool, "te")));
        REQUIRE(pool.spawn_image_embedding_worker("ie", ready_loader(CoroImageEmbedder{}), 2,
                                                  guard_for(pool, "ie", 2)));
        REQUIRE(
            pool.spawn_text_to_text_worker("chat", ready_loader(CoroChat{}), 3, guard_for(pool, "chat", 3)));
        REQUIRE(
            pool.spawn_vision_worker("eyes", ready_loader(BlockingVision{}), 4, guard_for(pool, "eyes", 4)));
        REQUIRE(pool.spawn_text_to_image_worker("paint", ready_loader(CoroPainter{}), 5,
                                                guard_for(pool, "paint", 5)));
        CHECK(get(pool.embed("te", "x", asio::use_future)).has_value());
        CHECK(governor->allocated_mb() == 15);
    }
    CHECK(governor->allocated_mb() == 0);
    CHECK(governor->stats().reservations == 0);
    CHECK(governor->stats().per_key_mb.empty());
}

TEST_CASE("stop() called from a pool coroutine only begins the shutdown and the destructor finishes it",
          "[shutdown]") {
    LogCapture log;
    std::shared_ptr<MemoryGovernor> governor;
    {
        Pool pool(test_options(log));
        governor = pool.governor().shared_from_this();
        REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{}), 4,
                                                 guard_for(pool, "bert", 4)));
        REQUIRE(idle_workers(pool, "bert", 1));
        auto inside = asio::co_spawn(
            pool.get_executor(),
            [&pool]() -> asio::awaitable<result<Embedding>> {
                pool.stop(); // must not try to join the thread it runs on
                auto op = pool.embed("bert", "x", asio::use_awaitable);
                co_return co_await std::move(op);
            },
            asio::use_future);
        check_error(get(std::move(inside)), errc::shutting_down, {"'bert'"});
        CHECK(pool.stopping());
        CHECK(eventually(pool, [&] { return pool.governor().allocated_mb() == 0; })); // the idle worker ended
    }
    CHECK(governor->allocated_mb() == 0);
    CHECK(governor->stats().reservations == 0);
}

TEST_CASE("many pools live and die in one process", "[shutdown]") {
    LogCapture log;
    for (int i = 0; i < 50; ++i) {
        INFO("pool " << i);
        Pool pool({.io_threads = 2, .blocking_threads = 1, .memory_limit_mb = 64, .logger = log.logger()});
        REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{i, nullptr, nullptr}), 1,
                                                 guard_for(pool, "bert")));
        auto reply = get(pool.embed("bert", "x", asio::use_future));
        REQUIRE(reply.has_value());
        CHECK(reply->at(0) == static_cast<float>(i));
        if (i % 2 == 0) {
            pool.stop();
            CHECK(pool.governor().allocated_mb() == 0);
        }
    }
}
