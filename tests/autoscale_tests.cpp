// Tests of the registered-model lifecycle (Pool::register_*_model, ensure_workers, maintain, stop): cold
// start, scale-up, idle and memory-pressure eviction, load retries, stuck workers and shutdown, plus the pure
// scaling policy (detail/scaling_policy.hpp).
//
// Time is a ManualClock that only moves when a test advances it, and the pool's own maintenance loop is set
// to a 24 h interval so that only the test's maintain() calls run maintenance ticks. Nothing sleeps to paper
// over a race: tests wait on futures, on Gates they open themselves, on Tallies the models report to, and on
// worker lifecycle events (on_worker_event). Every wait has a timeout, so a bug fails a test instead of
// hanging it.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/test_models.hpp"

#include <modelpool/detail/scaling_policy.hpp>
#include <modelpool/pool.hpp>

#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace modelpool;
using namespace modelpool::testing;
using namespace std::chrono_literals;

/// The instance number a test model put in its embedding.
int instance_of(const result<Embedding>& r) {
    REQUIRE(r.has_value());
    REQUIRE(!r->empty());
    return static_cast<int>(r->at(0));
}

/// Workers of a key that are alive or about to be (spawning, loading, serving, or reserved slots).
std::size_t live_workers(const KeySnapshot& snap) {
    return snap.starting() + snap.serving() + snap.reserved;
}

/// Milliseconds until the clock's earliest pending wait is due; -1 when nothing waits.
long long due_in_ms(const ManualClock& clock) {
    const auto next = clock.next_deadline();
    return next ? std::chrono::duration_cast<std::chrono::milliseconds>(*next - clock.now()).count() : -1;
}

/// Every worker the snapshot knows of, whatever its state.
std::size_t all_workers(const KeySnapshot& snap) {
    std::size_t n = 0;
    for (auto count : snap.workers) {
        n += count;
    }
    return n;
}

// ---- worker lifecycle events ------------------------------------------------------------------------------

/// Records every WorkerEvent (on_worker_event) and lets the test wait for them. Declare it before the pool.
class Events {
public:
    struct Entry {
        WorkerEventKind kind;
        std::string key;
        std::uint64_t worker;
        std::size_t memory_mb;
        std::string cause;
    };

    std::function<void(const WorkerEvent&)> hook() {
        return [this](const WorkerEvent& e) {
            {
                std::lock_guard lock(mutex_);
                entries_.push_back({e.kind, std::string(e.key), e.worker, e.memory_mb, std::string(e.cause)});
            }
            changed_.notify_all();
        };
    }

    /// Events of `kind` (of `key`, when given).
    [[nodiscard]] std::vector<Entry> of(WorkerEventKind kind, std::string_view key = {}) const {
        std::lock_guard lock(mutex_);
        std::vector<Entry> out;
        for (const auto& e : entries_) {
            if (e.kind == kind && (key.empty() || e.key == key)) {
                out.push_back(e);
            }
        }
        return out;
    }

    [[nodiscard]] std::size_t count(WorkerEventKind kind, std::string_view key = {}) const {
        return of(kind, key).size();
    }

    /// Waits until at least `n` events of `kind` (of `key`) happened; false on timeout.
    [[nodiscard]] bool wait_for(WorkerEventKind kind, std::size_t n, std::string_view key = {},
                                std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [&] {
            std::size_t seen = 0;
            for (const auto& e : entries_) {
                seen += e.kind == kind && (key.empty() || e.key == key) ? 1 : 0;
            }
            return seen >= n;
        });
    }

    /// Every event, in order.
    [[nodiscard]] std::vector<Entry> all() const {
        std::lock_guard lock(mutex_);
        return entries_;
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<Entry> entries_;
};

// ---- a model that reports its instance --------------------------------------------------------------------

/// What a test and its models share. One per key.
struct Shared {
    std::atomic<int> next_instance{0}; ///< Instances are numbered 1, 2, ... in load order.
    Tally loads;                       ///< One arrival per loader call, tagged with the instance.
    Tally calls;                       ///< One arrival per model call, tagged with the instance.
    std::shared_ptr<Tally> destroyed = std::make_shared<Tally>(); ///< Models destroyed, by instance.
    std::shared_ptr<Gate> hold = std::make_shared<Gate>();        ///< Requests "hold" wait for it.
    std::shared_ptr<Gate> load_gate;                              ///< When set, loads wait for it.
    std::atomic<int> failing_loads{0};            ///< The next N loads fail (negative: every load fails).
    std::shared_ptr<ManualClock> slow_load_clock; ///< When set, loads wait an hour on it (until cancelled).
    std::atomic<int> aborted_loads{0};            ///< Loads whose clock wait was cancelled.
};

/// Counts down when the last copy of a model instance is destroyed.
struct Lifetime {
    int instance;
    std::shared_ptr<Tally> destroyed;
    Lifetime(int n, std::shared_ptr<Tally> d) : instance(n), destroyed(std::move(d)) {}
    Lifetime(const Lifetime&) = delete;
    Lifetime& operator=(const Lifetime&) = delete;
    ~Lifetime() { destroyed->arrive(instance); }
};

/// A coroutine text_embedding model whose embedding starts with its instance number. The text "hold" waits
/// for `shared->hold`.
struct Numbered {
    std::shared_ptr<Lifetime> life;
    std::shared_ptr<Shared> shared;

    asio::awaitable<result<Embedding>> embed(const std::string& text,
                                             const std::optional<std::string>& task) {
        const int n = life->instance;
        shared->calls.arrive(n);
        if (text == "hold") {
            co_await shared->hold->async_wait(asio::use_awaitable);
        }
        co_return fake_embedding(n, 1, text.size(), task);
    }

    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>& task) {
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.push_back(fake_embedding(life->instance, 2, text.size(), task));
        }
        co_return out;
    }
};

/// The loader factory of `Numbered` models (copied by the pool into each worker it starts).
auto numbered_loader(std::shared_ptr<Shared> shared) {
    return [shared]() -> asio::awaitable<result<Numbered>> {
        const int n = ++shared->next_instance;
        shared->loads.arrive(n);
        if (shared->load_gate) {
            co_await shared->load_gate->async_wait(asio::use_awaitable);
        }
        if (shared->slow_load_clock) {
            // With std::error_code in the signature, use_awaitable returns the code instead of throwing.
            const std::error_code ec = co_await shared->slow_load_clock->async_wait_for(
                co_await asio::this_coro::executor, 1h, asio::use_awaitable);
            if (ec) {
                ++shared->aborted_loads;
                co_return fail(errc::spawn_failed, "load of instance {} was aborted", n);
            }
        }
        const int failing = shared->failing_loads.load();
        if (failing < 0 || (failing > 0 && shared->failing_loads.fetch_sub(1) > 0)) {
            co_return fail(errc::spawn_failed, "weights of instance {} are missing", n);
        }
        co_return Numbered{std::make_shared<Lifetime>(n, shared->destroyed), shared};
    };
}

// ---- the harness ------------------------------------------------------------------------------------------

/// A pool on a ManualClock whose maintenance only runs when the test calls maintain(), with its events
/// recorded. Opens every gate before the pool is destroyed.
struct Harness {
    LogCapture log;
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    Events events;
    std::shared_ptr<Shared> shared = std::make_shared<Shared>();
    std::unique_ptr<Pool> pool_ptr;

    explicit Harness(const std::function<void(PoolOptions&)>& tweak = {}) {
        PoolOptions o;
        o.io_threads = 1;
        o.blocking_threads = 1;
        o.memory_limit_mb = 1024;
        o.queue_capacity = 64;
        o.shutdown_timeout = 5s;
        o.logger = log.logger();
        o.clock = clock;
        o.idle_timeout = 10s;
        o.maintenance_interval = 24h; // only the test's maintain() calls run ticks
        o.on_worker_event = events.hook();
        if (tweak) {
            tweak(o);
        }
        pool_ptr = std::make_unique<Pool>(std::move(o));
    }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;
    ~Harness() {
        shared->hold->open();
        if (shared->load_gate) {
            shared->load_gate->open();
        }
        pool_ptr->stop();
        CHECK(clock->pending_waits() ==
              0); // stop() cancels every wait it started (maintenance, memory waits)
        release_leaked_waits();
        pool_ptr.reset();
    }

    /// A wait a stopped pool left on the clock (a regression the destructor CHECKs for) would be destroyed
    /// with the clock, after the pool's io_context, and touch it: complete such waits while the io_context
    /// exists, so that the failure is reported instead of crashing the suite.
    void release_leaked_waits() {
        while (auto next = clock->next_deadline()) {
            clock->advance_to(*next);
        }
    }

    Pool& pool() { return *pool_ptr; }

    /// Turns the circuit breaker off, so that tests of load retries see the retry policy alone.
    static void disable_breaker(PoolOptions& o) { o.breaker.failure_threshold = 0; }

    result<void> register_numbered(std::string_view key, ModelOptions model,
                                   std::shared_ptr<Shared> s = nullptr) {
        return pool().register_text_embedding_model(key, numbered_loader(s ? s : shared), model);
    }

    std::future<result<Embedding>> embed(std::string_view key, std::string text) {
        return pool().embed(key, std::move(text), asio::use_future);
    }

    KeySnapshot snap(std::string_view key) {
        auto s = pool().snapshot(key);
        REQUIRE(s.has_value());
        return *s;
    }

    /// Runs an empty handler on the pool's (single) io thread and waits for it: whatever the io thread was
    /// doing (a worker loading and parking, re-parking after a reply) has finished by then.
    void settle() { get(asio::post(pool().get_executor(), asio::use_future)); }

    MetricsSnapshot metrics() { return pool().metrics(); }

    void maintain_n(int n) {
        for (int i = 0; i < n; ++i) {
            pool().maintain();
        }
    }
};

} // namespace

// ---- the scaling policy (pure) ----------------------------------------------------------------------------

TEST_CASE("plan_scaling: cold start, minimum workers, scale-up and the maximum", "[scale][policy]") {
    using detail::plan_scaling;
    using detail::scaling_input;
    using detail::under_pressure;

    SECTION("nothing to do for an idle key with no demand") {
        const auto plan = plan_scaling({.max_workers = 4, .cold_start = 2});
        CHECK(plan.start == 0);
        CHECK_FALSE(plan.cold);
    }
    SECTION("a request for a key with no worker starts the cold start workers, marked cold") {
        const auto plan = plan_scaling({.queued = 1, .max_workers = 4, .cold_start = 2});
        CHECK(plan.start == 2);
        CHECK(plan.cold);
    }
    SECTION("the cold start never exceeds max_workers") {
        const auto plan = plan_scaling({.queued = 10, .max_workers = 1, .cold_start = 3});
        CHECK(plan.start == 1);
        CHECK(plan.cold);
    }
    SECTION("min_workers are started without demand, and a cold start asks for the larger of both") {
        CHECK(plan_scaling({.min_workers = 3, .max_workers = 4, .cold_start = 2}).start == 3);
        CHECK(plan_scaling({.min_workers = 3, .max_workers = 4, .cold_start = 2}).cold);
        CHECK(plan_scaling({.queued = 5, .min_workers = 1, .max_workers = 4, .cold_start = 2}).start == 2);
        // one of three minimum workers alive: two more, not cold
        const auto top_up =
            plan_scaling({.live = 1, .serving = 1, .idle = 1, .min_workers = 3, .max_workers = 4});
        CHECK(top_up.start == 2);
        CHECK_FALSE(top_up.cold);
    }
    SECTION("loading workers count: a request while the cold start loads starts nothing more") {
        CHECK(plan_scaling({.live = 2,
                            .starting = 2,
                            .queued = 100,
                            .max_workers = 4,
                            .cold_start = 2,
                            .pressure_held = true})
                  .start == 0);
    }
    SECTION("scale-up: one more worker only when every worker is busy, nothing loads, requests queue and "
            "the pressure held") {
        const scaling_input busy{
            .live = 2, .serving = 2, .queued = 3, .max_workers = 4, .cold_start = 2, .pressure_held = true};
        CHECK(under_pressure(busy));
        CHECK(plan_scaling(busy).start == 1); // one at a time, however long the queue
        CHECK_FALSE(plan_scaling(busy).cold);

        auto not_held = busy;
        not_held.pressure_held = false;
        CHECK(plan_scaling(not_held).start == 0);

        auto one_idle = busy;
        one_idle.idle = 1;
        CHECK_FALSE(under_pressure(one_idle));
        CHECK(plan_scaling(one_idle).start == 0);

        auto loading = busy;
        loading.live = 3;
        loading.starting = 1;
        CHECK_FALSE(under_pressure(loading));
        CHECK(plan_scaling(loading).start == 0);

        auto empty_queue = busy;
        empty_queue.queued = 0;
        CHECK_FALSE(under_pressure(empty_queue));
        CHECK(plan_scaling(empty_queue).start == 0);

        auto at_max = busy;
        at_max.live = 4;
        at_max.serving = 4;
        CHECK(plan_scaling(at_max).start == 0);
    }
    SECTION("more live workers than the maximum (after a lowered limit) start nothing") {
        CHECK(plan_scaling({.live = 5,
                            .serving = 5,
                            .queued = 2,
                            .min_workers = 6,
                            .max_workers = 4,
                            .pressure_held = true})
                  .start == 0);
    }
}

// ---- registration -----------------------------------------------------------------------------------------

TEST_CASE("registering a model starts only its minimum workers, and bad registrations name the key",
          "[registry]") {
    Harness h;
    REQUIRE(h.register_numbered("lazy", {.per_worker_mb = 10}));
    auto lazy = h.snap("lazy");
    CHECK(lazy.registered);
    CHECK(lazy.min_workers == 0);
    CHECK(lazy.max_workers == 4); // PoolOptions::max_workers_per_model
    CHECK(all_workers(lazy) == 0);
    CHECK(lazy.memory_mb == 0);

    REQUIRE(h.register_numbered("warm", {.per_worker_mb = 10, .min_workers = 2, .max_workers = 3}));
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2, "warm"));
    h.settle();
    auto warm = h.snap("warm");
    CHECK(warm.count(WorkerState::idle) == 2);
    CHECK(warm.memory_mb == 20);
    CHECK(warm.max_workers == 3);
    CHECK(h.pool().governor().allocated_mb() == 20);
    CHECK(h.metrics().loader_calls == 2);

    check_error(h.register_numbered("zero", {.per_worker_mb = 0}), errc::invalid_argument,
                {"'zero'", "per_worker_mb"});
    check_error(h.register_numbered("inverted", {.per_worker_mb = 1, .min_workers = 3, .max_workers = 2}),
                errc::invalid_argument, {"'inverted'", "min_workers (3)", "max_workers (2)"});
    // max_workers 0 means PoolOptions::max_workers_per_model (4)
    check_error(h.register_numbered("above-default", {.per_worker_mb = 1, .min_workers = 5}),
                errc::invalid_argument, {"'above-default'", "(5)", "(4)"});
    check_error(h.register_numbered("warm", {.per_worker_mb = 10}), errc::invalid_argument,
                {"'warm'", "already registered"});
    check_error(h.register_numbered("lazy", {.per_worker_mb = 10}), errc::invalid_argument, {"'lazy'"});

    REQUIRE(h.pool().register_text_to_text_model("chat", ready_loader(CoroChat{}), {.per_worker_mb = 1}));
    check_error(h.register_numbered("chat", {.per_worker_mb = 1}), errc::invalid_argument,
                {"'chat'", "text_to_text", "text_embedding"});
    check_error(h.register_numbered("", {.per_worker_mb = 1}), errc::invalid_argument, {"empty"});
    CHECK_FALSE(h.pool().snapshot("zero").has_value()); // a refused registration leaves nothing behind
    CHECK_FALSE(h.pool().snapshot("inverted").has_value());

    // The rejected registrations did not disturb the registered ones.
    CHECK(h.snap("warm").count(WorkerState::idle) == 2);
    CHECK(h.metrics().workers_spawned == 2);

    h.pool().stop();
    check_error(h.register_numbered("late", {.per_worker_mb = 1}), errc::shutting_down, {"'late'"});
}

TEST_CASE("ensure_workers starts workers up to the count and never above max_workers", "[registry][scale]") {
    Harness h;
    h.shared->load_gate = std::make_shared<Gate>(); // loading workers count too
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10, .max_workers = 4}));

    auto started = h.pool().ensure_workers("bert", 3);
    REQUIRE(started.has_value());
    CHECK(*started == 3);
    CHECK(live_workers(h.snap("bert")) == 3);

    started = h.pool().ensure_workers("bert", 2); // already 3 (loading)
    REQUIRE(started.has_value());
    CHECK(*started == 0);

    started = h.pool().ensure_workers("bert", 10); // capped at max_workers
    REQUIRE(started.has_value());
    CHECK(*started == 1);
    started = h.pool().ensure_workers("bert", 10);
    REQUIRE(started.has_value());
    CHECK(*started == 0);
    CHECK(live_workers(h.snap("bert")) == 4);
    CHECK(h.snap("bert").memory_mb == 40);

    h.shared->load_gate->open();
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 4));
    h.settle();
    CHECK(h.snap("bert").count(WorkerState::idle) == 4);
    CHECK(h.metrics().loader_calls == 4);
    CHECK(h.metrics().workers_spawned == 4);

    check_error(h.pool().ensure_workers("nope", 1), errc::invalid_argument, {"'nope'"});
    // A key that has workers but was never registered is not managed either.
    auto guard = h.pool().governor().try_allocate(1, "manual");
    REQUIRE(guard.has_value());
    REQUIRE(
        h.pool().spawn_text_embedding_worker("manual", ready_loader(CoroEmbedder{}), 1, std::move(*guard)));
    check_error(h.pool().ensure_workers("manual", 2), errc::invalid_argument, {"'manual'"});
}

// Found by the libFuzzer target (tests/fuzz): registering a key that had directly spawned workers adopted
// them, so the key could hold more workers than its max_workers.
TEST_CASE("a key is a registered model or has directly spawned workers, never both", "[registry][spawn]") {
    Harness h;
    for (int i = 0; i < 3; ++i) {
        auto guard = h.pool().governor().try_allocate(1, "manual");
        REQUIRE(guard.has_value());
        REQUIRE(h.pool().spawn_text_embedding_worker("manual", ready_loader(CoroEmbedder{}), 1,
                                                     std::move(*guard)));
    }
    check_error(h.register_numbered("manual", {.per_worker_mb = 1, .max_workers = 2}), errc::invalid_argument,
                {"'manual'", "3 worker(s) spawned directly"});
    CHECK_FALSE(h.snap("manual").registered);

    REQUIRE(h.register_numbered("managed", {.per_worker_mb = 1, .min_workers = 1, .max_workers = 1}));
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 1, "managed"));
    auto guard = h.pool().governor().try_allocate(1, "managed");
    REQUIRE(guard.has_value());
    check_error(
        h.pool().spawn_text_embedding_worker("managed", ready_loader(CoroEmbedder{}), 1, std::move(*guard)),
        errc::invalid_argument, {"'managed'", "registered model", "max_workers of 1"});
    h.settle();
    CHECK(all_workers(h.snap("managed")) == 1);
    CHECK(h.pool().governor().allocated_mb() == 4); // 3 manual + 1 managed: the refused guard was released
}

TEST_CASE("ensure_workers reports memory_exhausted when not even one worker fits", "[registry][memory]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 50; });
    REQUIRE(h.register_numbered("huge", {.per_worker_mb = 80}));
    check_error(h.pool().ensure_workers("huge", 1), errc::memory_exhausted, {"'huge'", "80 MB", "50 MB"});
    CHECK(h.pool().governor().allocated_mb() == 0);
    CHECK(h.snap("huge").reserved == 0);
    CHECK(h.metrics().loader_calls == 0);
}

// ---- cold start -------------------------------------------------------------------------------------------

TEST_CASE("1000 concurrent first requests start exactly the cold start workers and are all served",
          "[registry][coldstart]") {
    constexpr std::size_t threads = 4;
    constexpr std::size_t per_thread = 250;
    Harness h([](PoolOptions& o) {
        o.io_threads = 2;
        o.queue_capacity = 1024;
    });
    h.shared->load_gate = std::make_shared<Gate>(); // every request arrives while the cold start loads
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    CHECK(h.metrics().workers_spawned == 0);

    std::vector<std::future<result<Embedding>>> replies(threads * per_thread);
    std::latch start(threads);
    std::vector<std::thread> senders;
    for (std::size_t t = 0; t < threads; ++t) {
        senders.emplace_back([&, t] {
            start.arrive_and_wait();
            for (std::size_t i = 0; i < per_thread; ++i) {
                replies[t * per_thread + i] = h.embed("bert", "text " + std::to_string(t * per_thread + i));
            }
        });
    }
    for (auto& sender : senders) {
        sender.join();
    }

    REQUIRE(h.shared->loads.wait_for(2));
    const auto loading = h.snap("bert");
    CHECK(loading.starting() + loading.reserved == 2);
    CHECK(loading.serving() == 0);
    CHECK(loading.queue_depth == threads * per_thread);
    CHECK(loading.memory_mb == 20);
    CHECK(h.metrics().workers_spawned == 2);
    CHECK(h.metrics().loader_calls == 2);

    h.shared->load_gate->open();
    std::set<int> instances;
    for (auto& reply : replies) {
        instances.insert(instance_of(get(std::move(reply))));
    }
    CHECK(instances.size() <= 2);
    CHECK(h.shared->loads.count() == 2);
    // One worker may serve all 1000 before the other finishes its load (a busy machine delays its thread):
    // wait for the second load instead of assuming it came first.
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2, "bert"));
    const auto m = h.metrics();
    CHECK(m.loader_calls == 2);
    CHECK(m.workers_spawned == 2);
    CHECK(m.workers_loaded == 2);
    CHECK(m.succeeded == threads * per_thread);
    CHECK(m.error_total() == 0);
    CHECK(h.pool().governor().allocated_mb() == 20);
    h.pool().stop(); // a worker counts a request just after replying: count once they all ended
    CHECK(h.snap("bert").served == threads * per_thread);
}

TEST_CASE("a cold start starts two workers when the memory limit holds two", "[coldstart][memory]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 80; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 40}));
    CHECK(instance_of(get(h.embed("bert", "hello"))) >= 1);
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2));
    h.settle();
    CHECK(h.snap("bert").count(WorkerState::idle) == 2);
    CHECK(h.pool().governor().allocated_mb() == 80);
    CHECK(h.metrics().loader_calls == 2);
}

TEST_CASE("a cold start shrinks to one worker when only one fits, and serves every request",
          "[coldstart][memory]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 60; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 40}));
    std::vector<std::future<result<Embedding>>> replies;
    for (int i = 0; i < 5; ++i) {
        replies.push_back(h.embed("bert", "hello"));
    }
    for (auto& reply : replies) {
        CHECK(instance_of(get(std::move(reply))) == 1);
    }
    h.settle();
    const auto snap = h.snap("bert");
    CHECK(all_workers(snap) == 1);
    CHECK(snap.count(WorkerState::idle) == 1);
    CHECK(snap.reserved == 0);
    CHECK(snap.memory_mb == 40);
    CHECK(h.pool().governor().allocated_mb() == 40);
    CHECK(h.metrics().loader_calls == 1);
    CHECK(h.metrics().succeeded == 5);
}

TEST_CASE("a cold start that cannot fit a single worker fails at once with memory_exhausted",
          "[coldstart][memory]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 30; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 40}));
    const auto reply = get(h.embed("bert", "hello")); // no clock step: refused at once
    check_error(reply, errc::memory_exhausted, {"'bert'", "needs 40 MB", "0 of 30 MB"});
    CHECK(h.pool().governor().allocated_mb() == 0);
    const auto snap = h.snap("bert");
    CHECK(all_workers(snap) == 0);
    CHECK(snap.reserved == 0);
    CHECK(snap.queue_depth == 0);
    CHECK(h.metrics().loader_calls == 0);
    CHECK(h.metrics().errors_with(errc::memory_exhausted) == 1);
    // Nothing was left behind: the next request is refused the same way, not queued for a worker.
    check_error(get(h.embed("bert", "again")), errc::memory_exhausted, {"needs 40 MB"});
}

TEST_CASE("a cold start with memory held by a worker that is not registered fails naming the figures",
          "[coldstart][memory]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 100; });
    auto guard = h.pool().governor().try_allocate(50, "manual");
    REQUIRE(guard.has_value());
    REQUIRE(
        h.pool().spawn_text_embedding_worker("manual", ready_loader(CoroEmbedder{}), 50, std::move(*guard)));
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 1, "manual"));
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 60}));
    check_error(get(h.embed("bert", "hello")), errc::memory_exhausted,
                {"'bert'", "needs 60 MB", "50 of 100 MB"});
    CHECK(h.pool().governor().allocated_mb() == 50); // the unregistered worker is never evicted
    CHECK(h.metrics().workers_evicted == 0);
    CHECK(h.snap("bert").reserved == 0);
}

// ---- scale-up ---------------------------------------------------------------------------------------------

TEST_CASE("every worker busy with requests queued starts one more worker, up to max_workers", "[scale]") {
    Harness h([](PoolOptions& o) { o.cold_start_workers = 1; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10, .max_workers = 3}));

    std::vector<std::future<result<Embedding>>> held;
    held.push_back(h.embed("bert", "hold"));
    REQUIRE(h.shared->calls.wait_for(1));
    CHECK(h.metrics().workers_spawned == 1);

    held.push_back(h.embed("bert", "hold")); // the only worker is busy: one more
    CHECK(h.metrics().workers_spawned == 2);
    REQUIRE(h.shared->calls.wait_for(2));
    held.push_back(h.embed("bert", "hold"));
    CHECK(h.metrics().workers_spawned == 3);
    REQUIRE(h.shared->calls.wait_for(3));

    // At max_workers: more requests queue, and neither submits, maintenance nor ensure_workers add workers.
    held.push_back(h.embed("bert", "hold"));
    held.push_back(h.embed("bert", "hold"));
    h.maintain_n(3);
    CHECK(*h.pool().ensure_workers("bert", 5) == 0);
    auto snap = h.snap("bert");
    CHECK(snap.count(WorkerState::busy) == 3);
    CHECK(live_workers(snap) == 3);
    CHECK(snap.queue_depth == 2);
    CHECK(h.metrics().workers_spawned == 3);

    h.shared->hold->open();
    std::set<int> instances;
    for (auto& reply : held) {
        instances.insert(instance_of(get(std::move(reply))));
    }
    CHECK(instances == std::set<int>{1, 2, 3});
    CHECK(h.metrics().loader_calls == 3);
}

TEST_CASE("while loads are slow, queued requests never start more than max_workers", "[scale][coldstart]") {
    Harness h([](PoolOptions& o) { o.queue_capacity = 256; });
    h.shared->load_gate = std::make_shared<Gate>();
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10, .max_workers = 3}));

    std::vector<std::future<result<Embedding>>> replies;
    std::size_t most = 0;
    for (int i = 0; i < 100; ++i) {
        replies.push_back(h.embed("bert", "text"));
        if (i % 10 == 0) {
            h.pool().maintain();
            CHECK(*h.pool().ensure_workers("bert", i == 50 ? 3 : 0) == (i == 50 ? 1U : 0U));
        }
        most = std::max(most, live_workers(h.snap("bert")));
    }
    CHECK(most == 3);
    CHECK(h.metrics().loader_calls <= 3);
    REQUIRE(h.shared->loads.wait_for(3));
    CHECK(h.snap("bert").queue_depth == 100);

    h.shared->load_gate->open();
    for (auto& reply : replies) {
        CHECK(get(std::move(reply)).has_value());
    }
    CHECK(h.metrics().loader_calls == 3);
    CHECK(h.metrics().workers_spawned == 3);
    CHECK(live_workers(h.snap("bert")) == 3);
}

TEST_CASE("scale-up waits for upscale_delay of continuous pressure", "[scale]") {
    Harness h([](PoolOptions& o) {
        o.cold_start_workers = 1;
        o.upscale_delay = 500ms;
    });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10, .max_workers = 2}));
    auto first = h.embed("bert", "hold");
    REQUIRE(h.shared->calls.wait_for(1));
    auto second = h.embed("bert", "hold"); // pressure starts now
    h.pool().maintain();
    CHECK(h.metrics().workers_spawned == 1);

    h.clock->advance(499ms);
    h.pool().maintain();
    CHECK(h.metrics().workers_spawned == 1);
    CHECK(live_workers(h.snap("bert")) == 1);
    CHECK(pending(second));

    h.clock->advance(1ms);
    h.pool().maintain();
    CHECK(h.metrics().workers_spawned == 2);
    h.pool().maintain();
    CHECK(h.metrics().workers_spawned == 2); // one at a time
    REQUIRE(h.shared->calls.wait_for(2));
    CHECK(h.snap("bert").count(WorkerState::busy) == 2);

    h.shared->hold->open();
    CHECK(instance_of(get(std::move(first))) == 1);
    CHECK(instance_of(get(std::move(second))) == 2);
}

// ---- idle eviction ----------------------------------------------------------------------------------------

TEST_CASE("idle workers are evicted after idle_timeout, one per maintenance tick", "[eviction]") {
    Harness h;
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    REQUIRE(get(h.embed("bert", "hello")).has_value());
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2));
    h.settle();
    REQUIRE(h.snap("bert").count(WorkerState::idle) == 2); // both idle since now

    h.clock->advance(10s - 1ms);
    h.pool().maintain();
    CHECK(h.metrics().workers_evicted == 0);
    CHECK(h.snap("bert").count(WorkerState::idle) == 2);

    h.clock->advance(1ms);
    h.pool().maintain();
    CHECK(h.metrics().workers_evicted == 1);
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 1));
    CHECK(h.snap("bert").memory_mb == 10);
    CHECK(h.pool().governor().allocated_mb() == 10);
    CHECK(h.snap("bert").count(WorkerState::idle) == 1);
    const auto evicted = h.events.of(WorkerEventKind::evicted);
    REQUIRE(evicted.size() == 1);
    CHECK(evicted[0].cause == "idle");
    CHECK(evicted[0].memory_mb == 10);
    CHECK(h.events.of(WorkerEventKind::stopped)[0].worker == evicted[0].worker);

    h.pool().maintain(); // the next one, at the next tick
    CHECK(h.metrics().workers_evicted == 2);
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 2));
    CHECK(h.pool().governor().allocated_mb() == 0);
    CHECK(all_workers(h.snap("bert")) == 0);
    CHECK(h.shared->destroyed->count() == 2);

    h.pool().maintain(); // nothing left to evict
    CHECK(h.metrics().workers_evicted == 2);
    CHECK(h.metrics().workers_stopped == 2);

    // Scaled to zero: the next request cold-starts again.
    CHECK(instance_of(get(h.embed("bert", "again"))) >= 3);
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 4));
    CHECK(h.metrics().loader_calls == 4);
}

TEST_CASE("idle eviction takes the least recently used worker first", "[eviction]") {
    Harness h;
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    REQUIRE(h.pool().ensure_workers("bert", 2).value() == 2);
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2));
    h.settle();

    h.clock->advance(1s);
    const int used = instance_of(get(h.embed("bert", "hello"))); // used 1 s after the other went idle
    h.settle();

    h.clock->advance(9s);
    h.pool().maintain();
    CHECK(h.metrics().workers_evicted == 1);
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 1));
    REQUIRE(h.shared->destroyed->count() == 1);
    CHECK(h.shared->destroyed->tags()[0] != used);

    h.pool().maintain(); // the worker that served has been idle for only 9 s
    CHECK(h.metrics().workers_evicted == 1);
    CHECK(h.snap("bert").count(WorkerState::idle) == 1);

    h.clock->advance(1s);
    h.pool().maintain();
    CHECK(h.metrics().workers_evicted == 2);
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 2));
    CHECK(h.shared->destroyed->tags()[1] == used);
    CHECK(h.pool().governor().allocated_mb() == 0);
}

TEST_CASE("idle eviction takes one worker per key per tick and keeps min_workers", "[eviction]") {
    Harness h;
    auto other = std::make_shared<Shared>();
    REQUIRE(h.register_numbered("a", {.per_worker_mb = 10}));
    REQUIRE(h.register_numbered("b", {.per_worker_mb = 20, .min_workers = 1}, other));
    REQUIRE(*h.pool().ensure_workers("a", 2) == 2);
    REQUIRE(*h.pool().ensure_workers("b", 3) == 2); // one is the minimum worker, started at registration
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 5));
    h.settle();
    CHECK(h.pool().governor().allocated_mb() == 80);

    h.clock->advance(10s);
    h.pool().maintain();
    CHECK(h.events.count(WorkerEventKind::evicted, "a") == 1);
    CHECK(h.events.count(WorkerEventKind::evicted, "b") == 1);
    h.pool().maintain();
    CHECK(h.events.count(WorkerEventKind::evicted, "a") == 2);
    CHECK(h.events.count(WorkerEventKind::evicted, "b") == 2);
    for (int i = 0; i < 3; ++i) {
        h.pool().maintain();
        h.clock->advance(10s);
    }
    CHECK(h.metrics().workers_evicted == 4);
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 4));
    h.settle();
    CHECK(all_workers(h.snap("a")) == 0);
    const auto b = h.snap("b");
    CHECK(all_workers(b) == 1);
    CHECK(b.count(WorkerState::idle) == 1);
    CHECK(b.memory_mb == 20);
    CHECK(h.pool().governor().allocated_mb() == 20);
    CHECK(h.metrics().workers_spawned == 5); // the minimum worker was kept, not evicted and restarted
}

TEST_CASE("eviction racing a new request never loses the request nor evicts a busy worker",
          "[eviction][race]") {
    Harness h([](PoolOptions& o) { o.cold_start_workers = 1; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    REQUIRE(get(h.embed("bert", "warm up")).has_value());
    h.settle();

    constexpr int iterations = 200;
    std::uint64_t evicted_before = 0;
    int evictions = 0;
    for (int i = 0; i < iterations; ++i) {
        INFO("iteration " << i);
        h.clock->advance(10s); // the idle worker is due for eviction
        std::latch start(2);
        std::future<result<Embedding>> reply;
        std::thread sender([&] {
            start.arrive_and_wait();
            reply = h.embed("bert", "hello");
        });
        std::thread maintainer([&] {
            start.arrive_and_wait();
            h.pool().maintain();
        });
        sender.join();
        maintainer.join();
        const int served_by = instance_of(get(std::move(reply)));
        const auto evicted_now = h.metrics().workers_evicted;
        REQUIRE(evicted_now - evicted_before <= 1);
        if (evicted_now != evicted_before) {
            ++evictions;
            REQUIRE(h.events.wait_for(WorkerEventKind::stopped, evicted_now));
            const auto destroyed = h.shared->destroyed->tags();
            REQUIRE(destroyed.size() == evicted_now);
            CHECK(destroyed.back() != served_by); // the worker that served was not the one evicted
        }
        evicted_before = evicted_now;
        h.settle();
        REQUIRE(h.snap("bert").count(WorkerState::idle) == 1);
    }
    const auto m = h.metrics();
    CHECK(m.succeeded == iterations + 1);
    CHECK(m.error_total() == 0);
    CHECK(m.workers_spawned == static_cast<std::uint64_t>(evictions) + 1);
    INFO("evictions won the race " << evictions << " of " << iterations << " times");
    SUCCEED();
}

// ---- memory pressure --------------------------------------------------------------------------------------

TEST_CASE("a cold start evicts another key's idle worker when memory is short", "[memory][eviction]") {
    Harness h([](PoolOptions& o) { o.memory_limit_mb = 100; });
    auto b_shared = std::make_shared<Shared>();
    REQUIRE(h.register_numbered("a", {.per_worker_mb = 60}));
    REQUIRE(h.register_numbered("b", {.per_worker_mb = 60}, b_shared));

    CHECK(instance_of(get(h.embed("a", "one"))) == 1); // only one of the two cold start workers fits
    h.settle();
    CHECK(all_workers(h.snap("a")) == 1);
    CHECK(h.pool().governor().allocated_mb() == 60);

    // b's first request: a's idle worker goes, b's worker waits for its memory and serves.
    CHECK(instance_of(get(h.embed("b", "two"))) == 1);
    const auto evicted = h.events.of(WorkerEventKind::evicted);
    REQUIRE(evicted.size() == 1);
    CHECK(evicted[0].key == "a");
    CHECK(evicted[0].cause == "memory");
    {
        // a's worker stopped (and released its memory) before b's worker was spawned.
        const auto all = h.events.all();
        auto a_stopped = std::find_if(all.begin(), all.end(), [](const auto& e) {
            return e.key == "a" && e.kind == WorkerEventKind::stopped;
        });
        auto b_spawned = std::find_if(all.begin(), all.end(), [](const auto& e) {
            return e.key == "b" && e.kind == WorkerEventKind::spawned;
        });
        REQUIRE(a_stopped != all.end());
        REQUIRE(b_spawned != all.end());
        CHECK(a_stopped < b_spawned);
    }
    h.settle();
    CHECK(all_workers(h.snap("a")) == 0);
    CHECK(all_workers(h.snap("b")) == 1);
    CHECK(h.pool().governor().allocated_mb() == 60);

    // a again: cold start, evicting b's idle worker this time.
    CHECK(instance_of(get(h.embed("a", "three"))) == 2);
    CHECK(h.events.count(WorkerEventKind::evicted, "b") == 1);
    h.settle();
    CHECK(all_workers(h.snap("b")) == 0);
    CHECK(h.metrics().workers_evicted == 2);
    CHECK(h.pool().governor().stats().peak_mb <= 100);
    CHECK(h.pool().governor().allocated_mb() == 60);

    // b's worker busy: a's worker (idle) is evicted for it...
    auto held = h.embed("b", "hold");
    REQUIRE(b_shared->calls.wait_for(2));
    CHECK(h.events.count(WorkerEventKind::evicted, "a") == 2);
    // ...but a busy worker cannot be evicted: a's next request is refused at once.
    check_error(get(h.embed("a", "four")), errc::memory_exhausted,
                {"'a'", "needs 60 MB", "60 of 100 MB", "free only 0 MB"});
    CHECK(h.metrics().workers_evicted == 3);
    CHECK(h.snap("a").reserved == 0);
    b_shared->hold->open();
    CHECK(get(std::move(held)).has_value());
    CHECK(h.pool().governor().stats().peak_mb <= 100);

    h.pool().stop();
    CHECK(h.pool().governor().allocated_mb() == 0);
}

TEST_CASE("cold starts that wait for evicted memory leave no wait behind on the pool's clock", "[memory]") {
    // detail/memory_wait.hpp, allocate_within(): the allocation is started before the timeout wait, from the
    // calling thread. When the memory is granted at once (the evicted worker already released it), the
    // allocation's completion can run on the strand before the timeout wait is registered: its
    // stop_timer.emit() then cancels nothing (and races with the slot being connected on the other thread),
    // and the memory_wait_timeout wait stays on the clock. With a ManualClock that outlives the pool, that
    // wait's handler is destroyed after the pool's io_context: use after free.
    Harness h([](PoolOptions& o) {
        o.memory_limit_mb = 100;
        o.cold_start_workers = 1;
    });
    auto b_shared = std::make_shared<Shared>();
    REQUIRE(h.register_numbered("a", {.per_worker_mb = 60}));
    REQUIRE(h.register_numbered("b", {.per_worker_mb = 60}, b_shared));
    for (int i = 0; i < 10; ++i) {
        INFO("round " << i);
        REQUIRE(get(h.embed("a", "ping")).has_value()); // evicts b's idle worker (after the first round)
        h.settle();
        REQUIRE(get(h.embed("b", "pong")).has_value()); // evicts a's idle worker
        h.settle();
    }
    CHECK(h.metrics().workers_evicted == 19);
    CHECK(h.pool().governor().stats().peak_mb <= 100);
    h.pool().stop();
    INFO("a wait left on the clock is due in " << due_in_ms(*h.clock)
                                               << " ms (memory_wait_timeout: 10000 ms)");
    CHECK(h.clock->pending_waits() == 0);
}

// ---- load failures ----------------------------------------------------------------------------------------

TEST_CASE("failed loads are retried with backoff, then every waiter gets spawn_failed and the key fails fast",
          "[retry]") {
    Harness h([](PoolOptions& o) {
        o.cold_start_workers = 1;
        o.load_retries = 2;
        o.retry_backoff_initial = 100ms;
        o.retry_backoff_max = 400ms;
        Harness::disable_breaker(o);
    });
    h.shared->failing_loads = -1; // every load fails
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));

    std::vector<std::future<result<Embedding>>> waiters;
    for (int i = 0; i < 3; ++i) {
        waiters.push_back(h.embed("bert", "hello"));
    }
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 1));
    CHECK(h.metrics().loader_calls == 1);
    CHECK(h.metrics().load_retries == 1);
    CHECK(h.pool().governor().allocated_mb() == 0);
    auto snap = h.snap("bert");
    CHECK(snap.load_failures == 1);
    CHECK(contains(snap.last_load_error, "weights of instance 1 are missing"));
    CHECK_FALSE(snap.failing_fast);
    CHECK(snap.queue_depth == 3);
    for (auto& w : waiters) {
        CHECK(pending(w));
    }

    // Retry 1: after a delay in [50, 100] ms.
    h.clock->advance(49ms);
    h.pool().maintain();
    CHECK(h.metrics().loader_calls == 1);
    h.clock->advance(51ms);
    h.pool().maintain();
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 2));
    CHECK(h.metrics().loader_calls == 2);
    CHECK(h.metrics().load_retries == 2);
    CHECK(h.snap("bert").load_failures == 2);
    for (auto& w : waiters) {
        CHECK(pending(w));
    }

    // Retry 2: after a delay in [100, 200] ms. Its failure exhausts the retries.
    h.clock->advance(99ms);
    h.pool().maintain();
    CHECK(h.metrics().loader_calls == 2);
    h.clock->advance(101ms);
    h.pool().maintain();
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 3));
    CHECK(h.metrics().loader_calls == 3);
    CHECK(h.metrics().load_retries == 2);
    for (auto& w : waiters) {
        check_error(get(std::move(w)), errc::spawn_failed, {"weights of instance 3 are missing", "'bert'"});
    }
    CHECK(h.metrics().errors_with(errc::timeout) == 0);
    snap = h.snap("bert");
    CHECK(snap.failing_fast);
    CHECK_FALSE(snap.live());
    CHECK(snap.load_failures == 3);
    CHECK(snap.queue_depth == 0);
    CHECK(h.pool().governor().allocated_mb() == 0);

    // Fail fast until retry_backoff_max has passed: no load is tried.
    check_error(get(h.embed("bert", "now")), errc::spawn_failed, {"'bert'", "weights of instance 3"});
    h.clock->advance(399ms);
    h.pool().maintain();
    check_error(get(h.embed("bert", "still")), errc::spawn_failed, {"'bert'"});
    CHECK(h.metrics().loader_calls == 3);

    h.clock->advance(1ms);
    h.shared->failing_loads = 0; // the weights are back
    CHECK(instance_of(get(h.embed("bert", "later"))) == 4);
    CHECK(h.metrics().loader_calls == 4);
    snap = h.snap("bert");
    CHECK_FALSE(snap.failing_fast);
    CHECK(snap.load_failures == 0);
    CHECK(snap.live());
}

TEST_CASE("a load that fails once and then succeeds serves the waiting request after the retry", "[retry]") {
    Harness h([](PoolOptions& o) {
        o.cold_start_workers = 1;
        o.retry_backoff_initial = 100ms;
        o.retry_backoff_max = 1s;
        Harness::disable_breaker(o);
    });
    h.shared->failing_loads = 1;
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    auto waiting = h.embed("bert", "hello");
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 1));
    CHECK(pending(waiting));
    h.pool().maintain(); // not yet: the backoff has not passed
    CHECK(h.metrics().loader_calls == 1);

    h.clock->advance(100ms);
    h.pool().maintain();
    CHECK(instance_of(get(std::move(waiting))) == 2);
    const auto m = h.metrics();
    CHECK(m.loader_calls == 2);
    CHECK(m.load_retries == 1);
    CHECK(m.workers_failed == 1);
    CHECK(m.workers_loaded == 1);
    CHECK(m.error_total() == 0);
    const auto snap = h.snap("bert");
    CHECK(snap.load_failures == 0);
    CHECK(snap.live());
    CHECK(snap.ready());
}

TEST_CASE("with the default cold start of two workers, load_retries still allows that many retry rounds",
          "[retry]") {
    // Both cold start workers fail their loads in each round. The key should still try load_retries more
    // rounds (each after a backoff) before it fails fast.
    Harness h([](PoolOptions& o) {
        o.load_retries = 2;
        o.retry_backoff_initial = 100ms;
        o.retry_backoff_max = 400ms;
        Harness::disable_breaker(o);
    });
    h.shared->failing_loads = -1;
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    auto waiting = h.embed("bert", "hello");
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 2)); // round 1: both cold start workers failed
    CHECK(h.metrics().load_retries == 1);
    CHECK(pending(waiting));

    h.clock->advance(400ms); // past any backoff
    h.pool().maintain();
    REQUIRE(h.events.wait_for(WorkerEventKind::failed, 4)); // round 2 (retry 1)
    // Retry 2 of 2 is still to come: the waiter waits, the key does not fail fast yet.
    INFO("key_router counts each failed load, so a round of two cold start loads uses up two retries");
    CHECK(h.metrics().load_retries == 2);
    CHECK(pending(waiting));
    CHECK_FALSE(h.snap("bert").failing_fast);
}

// ---- health -----------------------------------------------------------------------------------------------

TEST_CASE(
    "a worker stuck past a request's deadline is reported unhealthy, replaced, and stops when it returns",
    "[health]") {
    Harness h([](PoolOptions& o) {
        o.cold_start_workers = 1;
        o.request_timeout = 5s;
    });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10, .max_workers = 2}));
    auto stuck = h.embed("bert", "hold");
    REQUIRE(h.shared->calls.wait_for(1));
    const auto first_worker = h.events.of(WorkerEventKind::loaded).at(0).worker;
    CHECK(h.snap("bert").live());

    h.clock->advance(4999ms);
    CHECK(pending(stuck));
    h.clock->advance(1ms);
    check_error(get(std::move(stuck)), errc::timeout, {"'bert'", "while a worker served it"});
    // Asked to stop at the deadline, the model ignores it: one stuck_grace (1 s) later the worker is stuck.
    h.clock->advance(999ms);
    h.settle();
    CHECK(h.snap("bert").unhealthy == 0);
    h.clock->advance(1ms);
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2)); // the replacement
    h.settle();
    auto snap = h.snap("bert");
    CHECK(snap.unhealthy == 1);
    CHECK_FALSE(snap.live());
    CHECK(snap.ready()); // the replacement serves
    CHECK(snap.count(WorkerState::busy) == 1);
    CHECK(snap.count(WorkerState::idle) == 1);
    CHECK(h.metrics().workers_unhealthy == 1);
    CHECK(h.metrics().errors_with(errc::timeout) == 1);

    CHECK(instance_of(get(h.embed("bert", "next"))) == 2); // served by the replacement

    h.shared->hold->open(); // the stuck call returns: that worker stops
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 1));
    CHECK(h.events.of(WorkerEventKind::stopped)[0].worker == first_worker);
    CHECK(h.shared->destroyed->tags() == std::vector<std::int64_t>{1});
    h.settle();
    snap = h.snap("bert");
    CHECK(snap.unhealthy == 0);
    CHECK(snap.live());
    CHECK(all_workers(snap) == 1);
    CHECK(snap.memory_mb == 10);
    CHECK(h.pool().governor().allocated_mb() == 10);
    CHECK(h.metrics().succeeded == 1); // the stuck call's late result was discarded
}

// ---- shutdown ---------------------------------------------------------------------------------------------

TEST_CASE("stop(grace) while workers load aborts the loads and ends the waiting request with shutting_down",
          "[shutdown]") {
    Harness h;
    h.shared->slow_load_clock = h.clock; // loads wait an hour on the ManualClock, until cancelled
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    auto waiting = h.embed("bert", "hello");
    REQUIRE(h.shared->loads.wait_for(2));
    CHECK(h.pool().governor().allocated_mb() == 20);

    const auto began = std::chrono::steady_clock::now();
    h.pool().stop(50ms);
    const auto took = std::chrono::steady_clock::now() - began;
    CHECK(took < 4s); // the grace period, not the hour the loads wait for
    check_error(get(std::move(waiting)), errc::shutting_down, {"'bert'"});
    CHECK(h.shared->aborted_loads == 2);
    CHECK(h.pool().governor().allocated_mb() == 0);
    CHECK(h.events.count(WorkerEventKind::failed) == 2);
    check_error(get(h.embed("bert", "late")), errc::shutting_down);
}

TEST_CASE("stop lets a registered model's stream in progress finish", "[shutdown][stream]") {
    Harness h([](PoolOptions& o) { o.stream_capacity = 2; });
    auto probe = std::make_shared<Probe>();
    REQUIRE(
        h.pool().register_text_to_text_model("chat", ready_loader(CoroChat{probe}), {.per_worker_mb = 10}));
    GenerationParams params;
    params.max_tokens = 20;
    auto opened = get(h.pool().prompt("chat", "hi", params, asio::use_future));
    REQUIRE(opened.has_value());
    auto& stream = *opened;
    auto first = get(stream.async_next(asio::use_future));
    REQUIRE(first.has_value());
    REQUIRE(first->has_value());
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2));
    h.settle();
    REQUIRE(h.snap("chat").count(WorkerState::idle) == 1);

    auto stopped = std::async(std::launch::async, [&] { h.pool().stop(5s); });
    // stop() began: it released the idle worker.
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 1));
    CHECK(pending(stopped));

    std::size_t texts = 1;
    bool ended = false;
    for (int i = 0; i < 100 && !ended; ++i) {
        auto next = get(stream.async_next(asio::use_future));
        REQUIRE(next.has_value()); // no error: the stream was not cut
        if (!next->has_value()) {
            ended = true;
        } else if (std::holds_alternative<TextChunk>(**next)) {
            ++texts;
        }
    }
    CHECK(ended);
    CHECK(texts == 20);
    get(std::move(stopped));
    CHECK(h.log.count("warning", {"still busy"}) == 0);
    CHECK(h.pool().governor().allocated_mb() == 0);
    CHECK(h.events.count(WorkerEventKind::stopped) == 2);
    check_error(get(h.pool().prompt("chat", "late", params, asio::use_future)), errc::shutting_down);
}

TEST_CASE("stop called inside a pool coroutine returns there at once and wait_stopped waits for the end",
          "[shutdown]") {
    Harness h;
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    auto busy = h.embed("bert", "hold");
    REQUIRE(h.shared->calls.wait_for(1));

    auto returned = asio::co_spawn(
        h.pool().get_executor(),
        [&]() -> asio::awaitable<bool> {
            h.pool().stop(); // grace 5 s; the worker is still busy
            co_return h.pool().stopping();
        },
        asio::use_future);
    CHECK(get(std::move(returned))); // returned while the request is still being served
    CHECK(pending(busy));

    h.shared->hold->open(); // the request in flight finishes within the grace period
    h.pool().wait_stopped();
    CHECK(instance_of(get(std::move(busy))) >= 1);
    CHECK(h.pool().governor().allocated_mb() == 0);
    CHECK(h.log.count("warning", {"still busy"}) == 0);
    CHECK(h.events.count(WorkerEventKind::stopped) == 2);
}

TEST_CASE("stop then stop(0ms) from another thread ends the grace period at once", "[shutdown]") {
    Harness h([](PoolOptions& o) { o.shutdown_timeout = 30s; });
    REQUIRE(h.register_numbered("bert", {.per_worker_mb = 10}));
    auto busy = h.embed("bert", "hold"); // never released by the test before the stop
    REQUIRE(h.shared->calls.wait_for(1));
    REQUIRE(h.events.wait_for(WorkerEventKind::loaded, 2));
    h.settle();

    auto first_stop = std::async(std::launch::async, [&] { h.pool().stop(); });
    REQUIRE(h.events.wait_for(WorkerEventKind::stopped, 1)); // stop() began: the idle worker was released
    CHECK(pending(first_stop));
    CHECK(pending(busy));

    const auto began = std::chrono::steady_clock::now();
    h.pool().stop(0ms);
    get(std::move(first_stop)); // returns promptly, not after 30 s
    CHECK(std::chrono::steady_clock::now() - began < 10s);
    check_error(get(std::move(busy)), errc::shutting_down, {"'bert'", "0 ms"});
    CHECK(h.log.count("warning", {"still busy"}) == 1);
}
