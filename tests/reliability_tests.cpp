// The reliability suite (CTest label "reliability"): a bounded soak, injected faults, randomized operation
// sequences and bad input, each scenario followed by the invariant checks of support/reliability.hpp:
// - every request ends exactly once, with its own reply (the ledger), and the pool counts each one once;
// - the governor's allocation equals what the live workers hold while the pool is at rest, and 0 after stop;
// - no registered key counts more workers than its maximum; every serving worker loaded;
// - stop() returns within its grace period; no worker, model, reservation or clock wait outlives it.
//
// Environment: MODELPOOL_SEED=<n> replays one seed of the randomized test; MODELPOOL_SEEDS=<n> runs n seeds
// (default 50); MODELPOOL_SOAK_REQUESTS=<n> sizes the soak (default 200,000; 48,000 under ASan
// or TSan, to stay within the suite's budget).
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/reliability.hpp"
#include "support/test_models.hpp"

#include <modelpool/pool.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace modelpool;
using namespace modelpool::reliability;
using namespace modelpool::testing;
using namespace std::chrono_literals;
using End = Ledger::End;

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
    const char* value = std::getenv(name);
    return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

/// Checks how request `e` ended.
void check_end(const Ledger& ledger, const Ledger::Entry* e, End how, errc code = errc::ok,
               std::initializer_list<std::string_view> needles = {}) {
    ledger.each([&](const Ledger::Entry& x) {
        if (&x != e) {
            return;
        }
        INFO("request " << x.id << " (" << cap_name(x.cap) << " '" << x.key << "' " << x.verb << ") ended "
                        << static_cast<int>(x.end) << " " << to_string(x.code) << ": " << x.message);
        CHECK(x.end == how);
        if (how == End::error) {
            CHECK(x.code == code);
            for (auto needle : needles) {
                INFO("expected in the message: " << needle);
                CHECK(contains(x.message, needle));
            }
        }
    });
}

/// Runs maintenance after advancing the clock, then lets the io thread catch up.
void tick(Rig& rig, std::chrono::milliseconds d) {
    rig.manual->advance(d);
    rig.settle();
    rig.pool().maintain();
    rig.settle();
}

} // namespace

// ===========================================================================================================
// Load

namespace {

/// One caller of the soak: `count` requests in a row, over every key, some streaming, some abandoned.
asio::awaitable<void> soak_caller(Pool& pool, Ledger& ledger, const std::vector<std::string>& keys,
                                  std::uint64_t seed, std::uint64_t count,
                                  std::atomic<std::uint64_t>& chunks) {
    std::mt19937_64 rng(seed);
    for (std::uint64_t n = 0; n < count; ++n) {
        // 2% of requests go to the eight "rare" keys, whose workers are evicted and cold-started over and
        // over.
        const std::size_t k = rng() % 100 < 2 ? 56 + rng() % 8 : rng() % 56;
        const std::string& key = keys[k];
        const Cap cap = all_caps[k % all_caps.size()];
        const bool failing = rng() % 100 == 0;
        const bool abandon = is_stream(cap) && rng() % 10 == 0;
        auto& e = ledger.issue(cap, key, failing ? "fail" : "ok");
        std::string text = command(failing ? "fail" : "ok", e.id);
        auto unary = [&](const result<Embedding>& r) {
            if (r && (r->empty() || (*r)[0] != static_cast<float>(e.id))) {
                ledger.foreign(e);
            }
            r ? ledger.end(e, End::ok) : ledger.end(e, End::error, r.error().code(), r.error().message());
        };
        auto read = [&]<class Chunk>(result<Stream<Chunk>> opened) -> asio::awaitable<void> {
            if (!opened) {
                ledger.end(e, End::error, opened.error().code(), opened.error().message());
                co_return;
            }
            for (std::size_t got = 0;;) {
                auto next = co_await opened->async_next(asio::use_awaitable);
                if (!next) {
                    ledger.end(e, End::error, next.error().code(), next.error().message());
                    co_return;
                }
                if (!next->has_value()) {
                    ledger.end(e, End::ok);
                    co_return;
                }
                ++chunks;
                if (!chunk_belongs(**next, e.id)) {
                    ledger.foreign(e);
                }
                if (abandon && ++got == 1) {
                    opened->close();
                    ledger.end(e, End::abandoned);
                    co_return;
                }
            }
        };
        switch (cap) {
        case Cap::text_embedding: {
            auto r = co_await pool.embed(key, std::move(text), asio::use_awaitable);
            unary(r);
            break;
        }
        case Cap::image_embedding: {
            auto r = co_await pool.embed_image_base64(key, std::move(text), asio::use_awaitable);
            unary(r);
            break;
        }
        case Cap::text_to_text: {
            GenerationParams params;
            auto opened = co_await pool.prompt(key, std::move(text), params, asio::use_awaitable);
            co_await read(std::move(opened));
            break;
        }
        case Cap::vision: {
            std::string query = "what is this";
            auto opened =
                co_await pool.describe_url(key, std::move(text), std::move(query), asio::use_awaitable);
            co_await read(std::move(opened));
            break;
        }
        case Cap::text_to_image: {
            ImageConfig config;
            auto opened = co_await pool.generate_image(key, std::move(text), config, asio::use_awaitable);
            co_await read(std::move(opened));
            break;
        }
        }
    }
}

} // namespace

TEST_CASE("soak - requests over 5 capabilities and 64 keys from 64 concurrent callers end exactly once",
          "[reliability][soak]") {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
    constexpr std::uint64_t default_requests = 48'000;
#else
    constexpr std::uint64_t default_requests = 200'000;
#endif
    const std::uint64_t total = env_or("MODELPOOL_SOAK_REQUESTS", default_requests);
    constexpr std::uint64_t callers = 64;
    Rig rig(
        [](PoolOptions& o) {
            o.io_threads = 2;
            o.memory_limit_mb = 4096;
            o.queue_capacity = 1024;
            o.request_timeout = 60s;
            o.stream_timeout = 120s;
            o.stream_idle_timeout = 60s;
            o.idle_timeout = 250ms; // real time: rarely used keys are evicted and cold-started again
            o.maintenance_interval = 5ms;
            no_breaker(o); // injected failures must not open circuits: every outcome is then predictable
        },
        /*manual_clock=*/false);
    std::vector<std::string> keys;
    for (std::size_t k = 0; k < 64; ++k) {
        keys.push_back(fmt::format("{}-{}", cap_name(all_caps[k % all_caps.size()]), k));
        REQUIRE(register_chaos(
            rig.pool(), all_caps[k % all_caps.size()], keys.back(), rig.faults,
            {.per_worker_mb = 1 + k % 3, .min_workers = k % 7 == 0 ? 1U : 0U, .max_workers = 1 + k % 3}));
    }

    // A monitor samples every key's snapshot while the callers run: never more workers than the maximum.
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> samples{0};
    std::atomic<std::uint64_t> over_max{0};
    std::mutex monitor_mutex;
    std::condition_variable monitor_cv;
    std::thread monitor([&] {
        std::unique_lock lock(monitor_mutex);
        while (!done) {
            lock.unlock();
            for (const auto& s : rig.pool().snapshot()) {
                over_max += counted_workers(s) > s.max_workers ? 1 : 0;
            }
            ++samples;
            lock.lock();
            monitor_cv.wait_for(lock, 2ms, [&] { return done.load(); });
        }
    });

    const auto start = std::chrono::steady_clock::now();
    std::atomic<std::uint64_t> chunks{0};
    asio::io_context clients(1);
    for (std::uint64_t c = 0; c < callers; ++c) {
        asio::co_spawn(clients, soak_caller(rig.pool(), rig.ledger, keys, c + 1, total / callers, chunks),
                       [](const std::exception_ptr& error) {
                           if (error) {
                               std::rethrow_exception(error);
                           }
                       });
    }
    clients.run(); // allowed-blocking: the test's own client context
    const auto served_in = std::chrono::steady_clock::now() - start;
    {
        std::lock_guard lock(monitor_mutex);
        done = true;
    }
    monitor_cv.notify_all();
    monitor.join();

    rig.require_all_ended();
    CHECK(over_max == 0);
    rig.check_at_rest();
    const auto ok = rig.ledger.count(End::ok);
    const auto failed = rig.ledger.count(End::error, errc::model_error);
    const auto abandoned = rig.ledger.count(End::abandoned);
    rig.ledger.each([&](const Ledger::Entry& e) {
        // Every outcome is the one the request asked for.
        if (e.verb == "fail") {
            if (e.end != End::error || e.code != errc::model_error) {
                FAIL_CHECK("request " << e.id << " asked to fail but ended " << static_cast<int>(e.end) << " "
                                      << e.message);
            }
        } else if (e.end != End::ok && e.end != End::abandoned) {
            FAIL_CHECK("request " << e.id << " to '" << e.key << "' failed: " << to_string(e.code) << ": "
                                  << e.message);
        }
    });
    rig.stop(5s);
    rig.check_after_stop();
    const auto m = rig.pool().metrics();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(served_in).count();
    std::printf("reliability soak: %llu requests (%zu ok, %zu model errors injected, %zu streams abandoned, "
                "%llu chunks) from %llu callers over 64 keys in %lld ms; %llu workers loaded, %llu evicted; "
                "%llu snapshot samples; stop took %lld ms\n",
                static_cast<unsigned long long>(rig.ledger.issued()), ok, failed, abandoned,
                static_cast<unsigned long long>(chunks.load()), static_cast<unsigned long long>(callers),
                static_cast<long long>(ms), static_cast<unsigned long long>(m.workers_loaded),
                static_cast<unsigned long long>(m.workers_evicted),
                static_cast<unsigned long long>(samples.load()),
                static_cast<long long>(rig.stop_took.count()));
    CHECK(rig.ledger.issued() == total / callers * callers);
    CHECK(ok + failed + abandoned == rig.ledger.issued());
}

// ===========================================================================================================
// Faults

TEST_CASE("loaders that fail - throw - give no reason - succeed after N failures - or hang past the deadline",
          "[reliability][faults]") {
    Rig rig([](PoolOptions& o) {
        no_breaker(o);
        o.load_retries = 2;
        o.retry_backoff_initial = 1s;
        o.retry_backoff_max = 4s;
        o.request_timeout = 60s; // a stream's wait in the queue is bounded by request_timeout
    });
    auto& f = *rig.faults;
    const RequestOptions patient{.timeout = 60s};

    SECTION("succeeds after two failures: the waiting request is served after the retries") {
        REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults,
                               {.per_worker_mb = 2, .max_workers = 1}));
        f.fail_loads = 2;
        auto r = rig.send(Cap::text_embedding, "te", "ok", {.request = patient});
        REQUIRE(f.loads.wait_for(1));
        for (int i = 0; i < 4 && rig.ledger.ended() == 0; ++i) {
            tick(rig, 2s);
        }
        rig.require_all_ended();
        check_end(rig.ledger, r.entry, End::ok);
        CHECK(f.loader_calls == 3);
        CHECK(rig.pool().metrics().load_retries == 2);
        rig.check_at_rest();
    }
    SECTION("throws every time: after the retries every waiter gets spawn_failed naming the exception") {
        REQUIRE(register_chaos(rig.pool(), Cap::text_to_text, "tt", rig.faults,
                               {.per_worker_mb = 2, .max_workers = 2}));
        f.throw_loads = 1000;
        auto a = rig.send(Cap::text_to_text, "tt", "ok", {.request = patient});
        auto b = rig.send(Cap::text_to_text, "tt", "ok", {.request = patient});
        for (int i = 0; i < 30 && rig.ledger.ended() < 2; ++i) {
            tick(rig, 1s);
        }
        rig.require_all_ended();
        for (auto* e : {a.entry, b.entry}) {
            check_end(rig.ledger, e, End::error, errc::spawn_failed, {"'tt'", "injected loader exception"});
        }
        CHECK(rig.pool().snapshot("tt")->failing_fast);
        auto c = rig.send(Cap::text_to_text, "tt", "ok"); // fails fast, without a load
        const auto calls = f.loader_calls.load();
        rig.require_all_ended();
        check_end(rig.ledger, c.entry, End::error, errc::spawn_failed, {"'tt'", "in a row"});
        CHECK(f.loader_calls == calls);
        rig.check_at_rest();
    }
    SECTION("an error with an empty message still reaches the waiters with a message naming the key") {
        rig.faults->empty_message = true;
        REQUIRE(register_chaos(rig.pool(), Cap::vision, "vi", rig.faults,
                               {.per_worker_mb = 2, .max_workers = 1}));
        f.fail_loads = 1000;
        auto a = rig.send(Cap::vision, "vi", "ok", {.request = patient});
        for (int i = 0; i < 30 && rig.ledger.ended() < 1; ++i) {
            tick(rig, 1s);
        }
        rig.require_all_ended();
        check_end(rig.ledger, a.entry, End::error, errc::spawn_failed, {"'vi'", "gave no reason"});
        rig.check_at_rest();
    }
    SECTION("hangs past the request's deadline: the request times out, stop() aborts the load") {
        REQUIRE(register_chaos(rig.pool(), Cap::image_embedding, "ie", rig.faults,
                               {.per_worker_mb = 2, .max_workers = 2}));
        f.hang_loads = true;
        auto a = rig.send(Cap::image_embedding, "ie", "ok", {.request = RequestOptions{.timeout = 5s}});
        REQUIRE(f.hangs.wait_for(2)); // the cold start's two loads
        CHECK(rig.pool().governor().allocated_mb() == 4);
        rig.manual->advance(5s);
        rig.require_all_ended();
        check_end(rig.ledger, a.entry, End::error, errc::timeout, {"'ie'", "waiting in the queue"});
        rig.stop(1s);
        CHECK(f.loads_aborted == 2);
        rig.check_after_stop();
        return;
    }
    rig.stop(1s);
    rig.check_after_stop();
    std::printf("reliability faults (loaders): %ld loader calls, %ld faults injected\n",
                f.loader_calls.load(), f.injected.load());
}

TEST_CASE("model calls that fail - throw - hang - or stream half a result then fail end their request once",
          "[reliability][faults]") {
    Rig rig(no_breaker);
    for (auto cap : all_caps) {
        REQUIRE(register_chaos(rig.pool(), cap, std::string(cap_name(cap)), rig.faults,
                               {.per_worker_mb = 1, .min_workers = 1, .max_workers = 1}));
    }
    REQUIRE(rig.events.wait_for(WorkerEventKind::loaded, 5));
    auto& f = *rig.faults;
    std::vector<std::pair<Sent, errc>> expected;
    for (auto cap : all_caps) {
        const std::string key(cap_name(cap));
        expected.emplace_back(rig.send(cap, key, "ok"), errc::ok);
        expected.emplace_back(rig.send(cap, key, "fail"), errc::model_error);
        expected.emplace_back(rig.send(cap, key, "throw"), errc::model_error);
        if (is_stream(cap)) {
            expected.emplace_back(rig.send(cap, key, "half"), errc::model_error);
        }
        expected.emplace_back(rig.send(cap, key, "ok"), errc::ok);
    }
    rig.require_all_ended();
    for (auto& [sent, code] : expected) {
        check_end(rig.ledger, sent.entry, code == errc::ok ? End::ok : End::error, code);
    }
    rig.ledger.each([&](const Ledger::Entry& e) {
        if (e.verb == "half") {
            CHECK(e.message.find("half way") != std::string::npos);
        }
        if (e.verb == "throw") {
            CHECK(e.message.find("injected exception") != std::string::npos);
        }
    });

    // Hangs: a unary call is interrupted at its deadline, a stream at its idle timeout; the workers serve on.
    auto hung = rig.send(Cap::text_embedding, "text_embedding", "hang");
    auto hung_stream = rig.send(Cap::vision, "vision", "hang");
    REQUIRE(f.hangs.wait_for(2));
    rig.manual->advance(5s);
    REQUIRE(rig.eventually([&] {
        return f.hangs_interrupted == 1 &&
               rig.pool().snapshot("text_embedding")->count(WorkerState::busy) == 0;
    }));
    rig.manual->advance(5s);
    rig.require_all_ended();
    check_end(rig.ledger, hung.entry, End::error, errc::timeout,
              {"'text_embedding'", "while a worker served it"});
    check_end(rig.ledger, hung_stream.entry, End::error, errc::timeout, {"'vision'"});
    REQUIRE(rig.eventually([&] { return f.hangs_interrupted == 2; })); // both calls were interrupted
    auto after = rig.send(Cap::text_embedding, "text_embedding", "ok");
    auto after_stream = rig.send(Cap::vision, "vision", "ok");
    rig.require_all_ended();
    check_end(rig.ledger, after.entry, End::ok);
    check_end(rig.ledger, after_stream.entry, End::ok);
    CHECK(rig.pool().metrics().workers_unhealthy == 0);
    rig.check_at_rest();
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("consumers that abandon streams stop the model and free the worker", "[reliability][faults]") {
    Rig rig(no_breaker);
    REQUIRE(register_chaos(rig.pool(), Cap::text_to_text, "tt", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    auto& f = *rig.faults;
    // A long stream abandoned after 2 chunks: the model's next send is refused and it returns.
    auto a = rig.send(Cap::text_to_text, "tt", "long", {.abandon_after = 2});
    rig.require_all_ended();
    check_end(rig.ledger, a.entry, End::abandoned);
    auto next = rig.send(Cap::text_to_text, "tt", "ok"); // the worker is free again
    rig.require_all_ended();
    check_end(rig.ledger, next.entry, End::ok);
    CHECK(f.sends_refused == 1);
    rig.check_at_rest();
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("a stream abandoned while it waits in the queue still ends exactly once in the pool's counts",
          "[reliability][faults]") {
    // Regression test for a defect this suite found (fixed): a stream whose reader goes away while the
    // request is queued was dropped from the queue (key_router::pop_locked and expire_locked skip `done()`
    // jobs, and stream_job::done() is true once the stream is abandoned) without stream_job::finish() ever
    // running. The request never ends in the pool's accounting: metrics().requests stays above succeeded +
    // errors, and its outcome never reaches the key's statistics (nor its circuit-breaker permit, by reading
    // the code).
    Rig rig(no_breaker);
    rig.all_requests_in_ledger = false;
    REQUIRE(register_chaos(rig.pool(), Cap::text_to_text, "tt", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    auto& f = *rig.faults;
    auto busy = rig.send(Cap::text_to_text, "tt", "hang"); // holds the only worker
    REQUIRE(f.hangs.wait_for(1));
    {
        GenerationParams params;
        auto queued = get(rig.pool().prompt("tt", command("ok", 999), params, asio::use_future));
        REQUIRE(queued.has_value());
        CHECK(rig.pool().snapshot("tt")->queue_depth == 1);
    }                         // the reader goes away while its request waits
    rig.manual->advance(10s); // the hanging stream times out (idle timeout); the worker takes the next job
    rig.require_all_ended();
    check_end(rig.ledger, busy.entry, End::error, errc::timeout);
    rig.check_at_rest();
    const auto m = rig.pool().metrics();
    INFO("requests " << m.requests << ", succeeded " << m.succeeded << ", errors " << m.error_total());
    CHECK(m.requests == m.succeeded + m.error_total());

    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("stop while a registered model's last load fails leaves no queued request unanswered",
          "[reliability][faults]") {
    // Regression test for a defect the randomized sequences found (seed 6 of a full run; fixed): stop()
    // closes the key while its only worker loads, so the queued request is kept for that worker. The load
    // then fails within the grace period; key_router::worker_failed -> schedule_retry_locked keeps the
    // request queued for a retry that a closed key never makes, and since no worker is left, stop() finds the
    // pool drained and never runs fail_remaining_requests(). The request never ends (its handler is destroyed
    // with the pool).
    Rig rig([](PoolOptions& o) {
        no_breaker(o);
        o.load_retries = 2;
    });
    auto& f = *rig.faults;
    f.load_gate = std::make_shared<Gate>();
    f.fail_loads = 1;
    REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    auto waiting = rig.send(Cap::text_embedding, "te", "ok", {.request = RequestOptions{.timeout = 60s}});
    REQUIRE(f.loads.wait_for(1)); // the only worker is loading, held by the gate
    auto stopping = std::async(std::launch::async, [&] { rig.stop(5s); });
    // Wait until stop() closed the key (ensure_workers then answers shutting_down), then let the load fail.
    const auto until = std::chrono::steady_clock::now() + 5s;
    auto closed = [&] {
        auto r = rig.pool().ensure_workers("te", 1);
        return !r && r.error().code() == errc::shutting_down;
    };
    while (!closed() && std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
    }
    REQUIRE(closed());
    f.load_gate->open();
    REQUIRE(stopping.wait_for(10s) == std::future_status::ready);
    stopping.get();
    CHECK(rig.ledger.wait_all(200ms)); // fails: the request was never answered
    CHECK(rig.pool().snapshot("te")->queue_depth == 0);
    const auto m = rig.pool().metrics();
    CHECK(m.requests == m.succeeded + m.error_total());
    CHECK(rig.pool().governor().allocated_mb() == 0);
}

TEST_CASE("a stream's idle timeout is enforced when its worker took it from the queue",
          "[reliability][faults]") {
    // Regression test for a defect the queue-overflow scenario found under TSan (fixed): a request queued
    // while the key's worker loads arms the key's sweeper at its queue deadline (now + request_timeout, 5 s
    // here). When a worker then takes it from the queue (key_router::try_take / async_take -> start_locked),
    // the sweeper is not woken, although a stream's running deadline (last progress + idle_timeout, 1 s here)
    // is earlier. The idle timeout then fires only when the sweeper wakes for its old deadline, 4 s late.
    // (submit() to a parked worker does compare running_deadline() with armed_; the queue path does not.)
    Rig rig(no_breaker);
    auto& f = *rig.faults;
    f.load_gate = std::make_shared<Gate>();
    REQUIRE(
        register_chaos(rig.pool(), Cap::vision, "vi", rig.faults, {.per_worker_mb = 1, .max_workers = 1}));
    auto hung = rig.send(Cap::vision, "vi", "hang", {.request = RequestOptions{.idle_timeout = 1s}});
    REQUIRE(f.loads.wait_for(1));
    rig.settle(); // the sweeper has armed the request's queue deadline
    f.load_gate->open();
    REQUIRE(f.hangs.wait_for(1)); // served: one chunk sent, then the model hangs
    rig.settle();
    rig.manual->advance(1s);
    CHECK(rig.eventually([&] { return rig.ledger.ended() == 1; }, 1s)); // fails: nothing expires at 1 s
    rig.manual->advance(4s); // the old queue deadline wakes the sweeper: the stream ends now, 4 s late
    rig.require_all_ended();
    check_end(rig.ledger, hung.entry, End::error, errc::timeout, {"'vi'"});
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("cancellation at every stage - queued - loading - serving - streaming", "[reliability][faults]") {
    Rig rig(no_breaker);
    rig.all_requests_in_ledger = false;
    auto& f = *rig.faults;
    REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    REQUIRE(rig.pool().ensure_workers("te", 1));
    REQUIRE(rig.events.wait_for(WorkerEventKind::loaded, 1));

    // serving and queued
    auto serving = rig.send(Cap::text_embedding, "te", "hang", {.cancellable = true});
    REQUIRE(f.hangs.wait_for(1));
    auto queued = rig.send(Cap::text_embedding, "te", "ok", {.cancellable = true});
    auto behind = rig.send(Cap::text_embedding, "te", "ok", {.cancellable = true});
    cancel(rig, queued.entry);
    cancel(rig, serving.entry);
    rig.require_all_ended();
    check_end(rig.ledger, queued.entry, End::error, errc::cancelled, {"cancelled"});
    check_end(rig.ledger, serving.entry, End::error, errc::cancelled, {"cancelled"});
    check_end(rig.ledger, behind.entry, End::ok); // the worker was freed by the interrupted call
    CHECK(f.hangs_interrupted == 1);
    CHECK(rig.pool().snapshot("te")->queue_depth == 0);

    // loading
    REQUIRE(register_chaos(rig.pool(), Cap::image_embedding, "ie", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    f.hang_loads = true;
    auto loading = rig.send(Cap::image_embedding, "ie", "ok", {.cancellable = true});
    REQUIRE(f.hangs.wait_for(2));
    cancel(rig, loading.entry);
    rig.require_all_ended();
    check_end(rig.ledger, loading.entry, End::error, errc::cancelled);
    f.hang_loads = false;

    // streaming: a cancelled read leaves the stream usable; the stream then ends normally
    REQUIRE(register_chaos(rig.pool(), Cap::text_to_image, "ti", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    ImageConfig config;
    auto stream = get(rig.pool().generate_image("ti", command("hang", 500), config, asio::use_future));
    REQUIRE(stream.has_value());
    auto first = get(stream->async_next(asio::use_future));
    REQUIRE(first.has_value());
    REQUIRE(f.hangs.wait_for(3));
    asio::cancellation_signal read_signal;
    auto pending = stream->async_next(asio::bind_cancellation_slot(read_signal.slot(), asio::use_future));
    asio::post(rig.pool().get_executor(), [&] { read_signal.emit(asio::cancellation_type::terminal); });
    auto read = get(std::move(pending));
    check_error(read, errc::cancelled, {"cancelled"});
    rig.manual->advance(10s); // idle timeout: the model call is interrupted
    auto last = get(stream->async_next(asio::use_future));
    check_error(last, errc::timeout, {"'ti'"});
    rig.check_at_rest();
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("memory exhaustion - a cold start that cannot fit fails at once naming the figures",
          "[reliability][faults]") {
    Rig rig([](PoolOptions& o) {
        no_breaker(o);
        o.memory_limit_mb = 4;
    });
    auto& f = *rig.faults;
    REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "a", rig.faults,
                           {.per_worker_mb = 3, .max_workers = 2}));
    REQUIRE(register_chaos(rig.pool(), Cap::image_embedding, "b", rig.faults,
                           {.per_worker_mb = 3, .max_workers = 2}));
    REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "huge", rig.faults,
                           {.per_worker_mb = std::numeric_limits<std::size_t>::max() / 2, .max_workers = 1}));
    auto busy = rig.send(Cap::text_embedding, "a", "hang"); // one worker of 3 MB fits, and it is busy
    REQUIRE(f.hangs.wait_for(1));
    CHECK(rig.pool().governor().allocated_mb() == 3);
    auto refused = rig.send(Cap::image_embedding, "b", "ok");
    auto absurd = rig.send(Cap::text_embedding, "huge", "ok");
    REQUIRE(rig.eventually([&] { return rig.ledger.pending().size() == 1; })); // only the hanging one waits
    check_end(rig.ledger, refused.entry, End::error, errc::memory_exhausted, {"'b'", "3 MB", "3 of 4 MB"});
    check_end(rig.ledger, absurd.entry, End::error, errc::memory_exhausted, {"'huge'"});
    rig.check_at_rest();

    // Once a's worker is idle, b's cold start evicts it to make room.
    rig.manual->advance(5s);
    rig.require_all_ended();
    check_end(rig.ledger, busy.entry, End::error, errc::timeout, {"'a'"});
    REQUIRE(rig.eventually([&] { return rig.pool().snapshot("a")->count(WorkerState::idle) == 1; }));
    auto now_fits = rig.send(Cap::image_embedding, "b", "ok");
    rig.require_all_ended();
    check_end(rig.ledger, now_fits.entry, End::ok);
    CHECK(rig.pool().metrics().workers_evicted == 1);
    rig.check_at_rest();
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("queue overflow - requests beyond the bound get overloaded at once - the rest are served",
          "[reliability][faults]") {
    Rig rig([](PoolOptions& o) {
        no_breaker(o);
        o.queue_capacity = 4;
    });
    auto& f = *rig.faults;
    REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults,
                           {.per_worker_mb = 1, .max_workers = 1}));
    REQUIRE(
        register_chaos(rig.pool(), Cap::vision, "vi", rig.faults, {.per_worker_mb = 1, .max_workers = 1}));
    auto busy = rig.send(Cap::text_embedding, "te", "hang", {.request = RequestOptions{.timeout = 1s}});
    auto busy_stream = rig.send(Cap::vision, "vi", "hang", {.request = RequestOptions{.idle_timeout = 1s}});
    REQUIRE(f.hangs.wait_for(2));
    std::vector<Sent> sent;
    for (int i = 0; i < 7; ++i) {
        sent.push_back(rig.send(Cap::text_embedding, "te", "ok"));
        sent.push_back(rig.send(Cap::vision, "vi", "ok"));
    }
    rig.settle();
    CHECK(rig.ledger.count(End::error, errc::overloaded) == 6);
    rig.ledger.each([](const Ledger::Entry& e) {
        if (e.code == errc::overloaded) {
            CHECK(contains(e.message, "4 of 4"));
        }
    });
    rig.manual->advance(1s); // the busy requests time out: both queues drain
    rig.require_all_ended();
    CHECK(rig.ledger.count(End::ok) == 8);
    check_end(rig.ledger, busy.entry, End::error, errc::timeout);
    check_end(rig.ledger, busy_stream.entry, End::error, errc::timeout);
    rig.check_at_rest();
    rig.stop(1s);
    rig.check_after_stop();
}

TEST_CASE("stop during cold start - during streaming - and from inside a pool coroutine",
          "[reliability][faults]") {
    SECTION("during cold start: loads are aborted, waiters end with shutting_down, memory returns") {
        Rig rig(no_breaker);
        rig.faults->hang_loads = true;
        for (auto cap : all_caps) {
            REQUIRE(register_chaos(rig.pool(), cap, std::string(cap_name(cap)), rig.faults,
                                   {.per_worker_mb = 2}));
            for (int i = 0; i < 3; ++i) {
                rig.send(cap, std::string(cap_name(cap)), "ok");
            }
        }
        REQUIRE(rig.faults->hangs.wait_for(10));
        CHECK(rig.pool().governor().allocated_mb() == 20);
        rig.stop(200ms);
        CHECK(rig.ledger.count(End::error, errc::shutting_down) == 15);
        CHECK(rig.faults->loads_aborted == 10);
        rig.check_after_stop();
    }
    SECTION("during streaming: streams end with shutting_down after the grace period, their models stop") {
        Rig rig(no_breaker);
        for (auto cap : {Cap::text_to_text, Cap::vision, Cap::text_to_image}) {
            REQUIRE(register_chaos(rig.pool(), cap, std::string(cap_name(cap)), rig.faults,
                                   {.per_worker_mb = 1, .max_workers = 2}));
            rig.send(cap, std::string(cap_name(cap)), "hang");
            rig.send(cap, std::string(cap_name(cap)), "hang");
        }
        REQUIRE(rig.faults->hangs.wait_for(6));
        rig.stop(100ms);
        CHECK(rig.ledger.count(End::error, errc::shutting_down) == 6);
        CHECK(rig.faults->hangs_interrupted == 6);
        rig.check_after_stop();
    }
    SECTION("from inside a pool coroutine: stop() returns there, later requests get shutting_down") {
        Rig rig(no_breaker);
        rig.all_requests_in_ledger = false;
        REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults, {.per_worker_mb = 1}));
        auto ran = asio::co_spawn(
            rig.pool().get_executor(),
            [&]() -> asio::awaitable<errc> {
                std::string text = command("ok", 0);
                auto first = co_await rig.pool().embed("te", std::move(text), asio::use_awaitable);
                if (!first) {
                    co_return first.error().code();
                }
                rig.pool().stop(200ms); // returns at once on a pool thread
                std::string again = command("ok", 0);
                auto after = co_await rig.pool().embed("te", std::move(again), asio::use_awaitable);
                co_return after ? errc::ok : after.error().code();
            },
            asio::use_future);
        CHECK(get(std::move(ran)) == errc::shutting_down);
        const auto start = std::chrono::steady_clock::now();
        rig.pool().wait_stopped();
        CHECK(std::chrono::steady_clock::now() - start < 3s);
        rig.stop(0ms); // already stopped: returns at once
        rig.check_after_stop();
    }
    SECTION("a model that ignores cancellation: stop() still returns within its grace period") {
        Rig rig(no_breaker);
        REQUIRE(register_chaos(rig.pool(), Cap::text_embedding, "te", rig.faults, {.per_worker_mb = 1}));
        rig.send(Cap::text_embedding, "te", "stall");
        REQUIRE(rig.eventually([&] { return rig.faults->model_calls == 1; }));
        rig.stop(100ms);
        rig.require_all_ended();
        CHECK(rig.ledger.count(End::error, errc::shutting_down) == 1);
        CHECK(rig.log.count("warning", {"ignored cancellation"}) == 1);
        rig.check_after_stop(/*models_may_outlive=*/true);
    }
}

// ===========================================================================================================
// Randomized sequences: the interpreter is run_sequence (support/reliability.hpp), whose choices come from a
// seeded RNG here and from the input bytes in the fuzzer (tests/fuzz/pool_fuzzer.cpp).

TEST_CASE("randomized sequences of spawn - request - cancel - clock - eviction - faults and stop keep the "
          "invariants",
          "[reliability][random]") {
    const std::uint64_t replay = env_or("MODELPOOL_SEED", 0);
    const std::uint64_t seeds = replay != 0 ? 1 : env_or("MODELPOOL_SEEDS", 50);
    const std::uint64_t first = replay != 0 ? replay : 1;
    RandomStats stats;
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t seed = first; seed < first + seeds; ++seed) {
        INFO("seed " << seed << " (replay: MODELPOOL_SEED=" << seed << ")");
        SeededSteps steps(seed);
        run_sequence(seed, steps, stats);
    }
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start)
            .count();
    std::printf(
        "reliability random: %llu seeds from %llu, %llu steps, %llu requests, %llu faults injected, %llu "
        "batch calls serving %llu requests, in %lld ms\n",
        static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(first),
        static_cast<unsigned long long>(stats.steps), static_cast<unsigned long long>(stats.requests),
        static_cast<unsigned long long>(stats.faults), static_cast<unsigned long long>(stats.batches),
        static_cast<unsigned long long>(stats.batched_requests), static_cast<long long>(ms));
}

// ===========================================================================================================
// Bad input

TEST_CASE("invalid PoolOptions at every field are refused with invalid_argument naming the field",
          "[reliability][badinput]") {
    struct bad_case {
        std::function<void(PoolOptions&)> tweak;
        std::string_view field;
    };
    const std::vector<bad_case> cases{
        {[](PoolOptions& o) { o.io_threads = 0; }, "io_threads"},
        {[](PoolOptions& o) { o.io_threads = 1'000'000; }, "io_threads"},
        {[](PoolOptions& o) { o.blocking_threads = 1'000'000; }, "blocking_threads"},
        {[](PoolOptions& o) { o.queue_capacity = 0; }, "queue_capacity"},
        {[](PoolOptions& o) { o.stream_capacity = 0; }, "stream_capacity"},
        {[](PoolOptions& o) { o.max_key_length = 0; }, "max_key_length"},
        {[](PoolOptions& o) { o.request_timeout = -1ms; }, "request_timeout"},
        {[](PoolOptions& o) { o.stream_timeout = 0ms; }, "stream_timeout"},
        {[](PoolOptions& o) { o.stream_idle_timeout = -5ms; }, "stream_idle_timeout"},
        {[](PoolOptions& o) { o.stuck_grace = -1ms; }, "stuck_grace"},
        {[](PoolOptions& o) { o.shutdown_timeout = -1ms; }, "shutdown_timeout"},
        {[](PoolOptions& o) { o.max_workers_per_model = 0; }, "max_workers_per_model"},
        {[](PoolOptions& o) { o.cold_start_workers = 0; }, "cold_start_workers"},
        {[](PoolOptions& o) { o.cold_start_workers = 9; }, "cold_start_workers"},
        {[](PoolOptions& o) { o.upscale_delay = -1ms; }, "upscale_delay"},
        {[](PoolOptions& o) { o.idle_timeout = 0ms; }, "idle_timeout"},
        {[](PoolOptions& o) { o.maintenance_interval = -1ms; }, "maintenance_interval"},
        {[](PoolOptions& o) { o.memory_wait_timeout = -1ms; }, "memory_wait_timeout"},
        {[](PoolOptions& o) { o.retry_backoff_initial = 0ms; }, "retry_backoff_initial"},
        {[](PoolOptions& o) { o.retry_backoff_max = 1ms; }, "retry_backoff_max"},
        {[](PoolOptions& o) { o.breaker.open_time = -1ms; }, "open_time"},
        {[](PoolOptions& o) { o.breaker.half_open_probes = 0; }, "half_open_probes"},
        {[](PoolOptions& o) { o.breaker.failure_threshold = std::numeric_limits<std::size_t>::max(); },
         "failure_threshold"},
    };
    for (const auto& bad : cases) {
        INFO("field " << bad.field);
        PoolOptions o;
        o.blocking_threads = 1;
        bad.tweak(o);
        check_error(Pool::create(o), errc::invalid_argument, {bad.field});
        bool threw = false;
        try {
            Pool pool(o);
        } catch (const std::system_error& e) {
            threw = e.code() == errc::invalid_argument && contains(e.what(), bad.field);
        }
        CHECK(threw);
    }
}

TEST_CASE("bad input at every entry point is answered with a clear PoolError and leaks nothing",
          "[reliability][badinput]") {
    Rig rig([](PoolOptions& o) {
        o.max_key_length = 64;
        o.load_retries = 0; // a failed load reaches the waiter at once
    });
    rig.all_requests_in_ledger = false;
    auto& pool = rig.pool();
    auto loader = chaos_loader(rig.faults);
    const std::string huge(1 << 20, 'k');
    const std::string longest(64, 'k');

    // registration
    check_error(pool.register_text_embedding_model("", loader, {.per_worker_mb = 1}), errc::invalid_argument,
                {"empty"});
    check_error(pool.register_text_embedding_model(huge, loader, {.per_worker_mb = 1}),
                errc::invalid_argument, {"1048576 bytes", "64"});
    check_error(pool.register_text_embedding_model("zero", loader, {.per_worker_mb = 0}),
                errc::invalid_argument, {"per_worker_mb", "'zero'"});
    check_error(pool.register_text_embedding_model("minmax", loader,
                                                   {.per_worker_mb = 1, .min_workers = 3, .max_workers = 2}),
                errc::invalid_argument, {"min_workers", "'minmax'", "max_workers"});
    check_error(pool.register_text_embedding_model("minmax", loader, {.per_worker_mb = 1, .min_workers = 5}),
                errc::invalid_argument, {"min_workers (5)", "'minmax'", "max_workers (4)"});
    REQUIRE(pool.register_text_embedding_model(longest, loader, {.per_worker_mb = 1}));
    check_error(pool.register_text_embedding_model(longest, loader, {.per_worker_mb = 1}),
                errc::invalid_argument, {"already registered"});
    check_error(pool.register_vision_model(longest, loader, {.per_worker_mb = 1}), errc::invalid_argument,
                {"text_embedding", "vision"});

    // spawning
    auto guard = [&](std::size_t mb) {
        auto g = pool.governor().try_allocate(mb, "g");
        REQUIRE(g.has_value());
        return std::move(*g);
    };
    check_error(pool.spawn_text_embedding_worker("", loader, 1, guard(1)), errc::invalid_argument, {"empty"});
    check_error(pool.spawn_text_embedding_worker(huge, loader, 1, guard(1)), errc::invalid_argument,
                {"bytes"});
    check_error(pool.spawn_text_embedding_worker("s", loader, 0, guard(1)), errc::invalid_argument,
                {"per_worker_mb", "'s'"});
    check_error(pool.spawn_text_embedding_worker("s", loader, 1, AllocationGuard{}), errc::invalid_argument,
                {"empty", "'s'"});
    check_error(pool.spawn_text_embedding_worker("s", loader, 2, guard(1)), errc::invalid_argument,
                {"1 MB", "2", "'s'"});
    check_error(pool.spawn_image_embedding_worker(longest, loader, 1, guard(1)), errc::invalid_argument,
                {"text_embedding", "image_embedding"});
    check_error(pool.governor().try_allocate(0, "z"), errc::invalid_argument, {"0 MB", "'z'"});
    check_error(pool.governor().try_allocate(std::numeric_limits<std::size_t>::max(), "absurd"),
                errc::memory_exhausted, {"'absurd'", "limit"});
    CHECK(pool.governor().allocated_mb() == 0); // every refused spawn released its guard

    // requests
    check_error(get(pool.embed("", "x", asio::use_future)), errc::invalid_argument, {"empty"});
    check_error(get(pool.embed(huge, "x", asio::use_future)), errc::invalid_argument, {"bytes"});
    check_error(get(pool.embed("nobody", "x", asio::use_future)), errc::no_workers, {"'nobody'"});
    check_error(get(pool.embed_image(longest, "x", asio::use_future)), errc::invalid_argument,
                {"text_embedding", "image_embedding"});
    check_error(get(pool.with({.timeout = 0ms}).embed(longest, "x", asio::use_future)),
                errc::invalid_argument, {"timeout", "0 ms"});
    check_error(get(pool.with({.timeout = -5ms}).embed(longest, "x", asio::use_future)),
                errc::invalid_argument, {"timeout", "-5 ms"});
    GenerationParams params;
    check_error(get(pool.with({.idle_timeout = -1ms}).prompt("chat", "x", params, asio::use_future)),
                errc::invalid_argument, {"idle_timeout", "'chat'"});
    check_error(get(pool.prompt("", "x", params, asio::use_future)), errc::invalid_argument, {"empty"});
    check_error(pool.ensure_workers("nobody", 1), errc::invalid_argument, {"'nobody'", "not a registered"});
    check_error(pool.ensure_workers("", 1), errc::invalid_argument, {"empty"});
    CHECK(pool.ensure_workers(longest, 0).value_or(99) == 0);

    // a loader error with an empty message
    rig.faults->empty_message = true;
    rig.faults->fail_loads = 1;
    REQUIRE(pool.register_image_embedding_model("mute", loader, {.per_worker_mb = 1, .max_workers = 1}));
    check_error(get(pool.embed_image("mute", "x", asio::use_future)), errc::spawn_failed,
                {"'mute'", "gave no reason"});
    rig.check_at_rest();

    // use after stop
    rig.stop(1s);
    check_error(pool.register_text_embedding_model("late", loader, {.per_worker_mb = 1}), errc::shutting_down,
                {"'late'"});
    check_error(get(pool.embed(longest, "x", asio::use_future)), errc::shutting_down);
    check_error(get(pool.prompt("chat", "x", params, asio::use_future)), errc::shutting_down);
    check_error(pool.ensure_workers(longest, 1), errc::shutting_down, {longest});
    CHECK(pool.governor().allocated_mb() == 0);
    rig.check_after_stop();
}
