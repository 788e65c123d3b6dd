// Tests of request deadlines, driven by a ManualClock: time is stepped by the test, never slept.
#include "support/catch.hpp"
#include "support/test_models.hpp"

#include <modelpool/modelpool.hpp>
#include <modelpool/signals.hpp>

#include <boost/asio/use_future.hpp>

#include <chrono>
#include <csignal>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace modelpool;
using namespace modelpool::testing;
using namespace std::chrono_literals;

struct DeadlineFixture {
    LogCapture log;
    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    std::shared_ptr<Gate> gate = std::make_shared<Gate>();
    std::shared_ptr<Probe> probe = std::make_shared<Probe>();
    Pool pool{{.io_threads = 1,
               .blocking_threads = 1,
               .memory_limit_mb = 1024,
               .queue_capacity = 8,
               .request_timeout = 5s,
               .shutdown_timeout = 5s,
               .logger = log.logger(),
               .clock = clock}};
    OpenOnExit open_gate{gate};

    AllocationGuard guard(std::string_view key) {
        auto g = pool.governor().try_allocate(1, key);
        REQUIRE(g.has_value());
        return std::move(*g);
    }

    template <class T> static T wait(std::future<T>& f) {
        REQUIRE(f.wait_for(5s) == std::future_status::ready);
        return f.get();
    }

    template <class T> static bool pending(const std::future<T>& f) {
        return f.wait_for(20ms) == std::future_status::timeout;
    }
};

void check_timeout(const result<Embedding>& r, std::string_view where) {
    REQUIRE_FALSE(r.has_value());
    INFO(r.error().to_string());
    CHECK(r.error().code() == errc::timeout);
    CHECK(r.error().message().find("'bert'") != std::string::npos);
    CHECK(r.error().message().find(where) != std::string::npos);
}

} // namespace

TEST_CASE("a request waiting in the queue times out at its deadline and frees its slot", "[deadline]") {
    DeadlineFixture f;
    REQUIRE(f.pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, f.probe, f.gate}), 1,
                                               f.guard("bert")));
    auto running = f.pool.embed("bert", "running", asio::use_future);
    REQUIRE(f.probe->calls.wait_for(1)); // the worker is busy, blocked on the gate
    f.clock->advance(2s);
    auto queued = f.pool.embed("bert", "queued", asio::use_future); // deadline = now + 5 s
    CHECK(f.pending(queued));

    f.clock->advance(2999ms);
    CHECK(f.pending(running)); // 1 ms short of its deadline (5 s after it was sent)
    f.clock->advance(1ms);
    check_timeout(f.wait(running), "while a worker served it");
    CHECK(f.pending(queued)); // 2 s short of its own deadline

    f.clock->advance(1999ms);
    CHECK(f.pending(queued));
    f.clock->advance(1ms);
    check_timeout(f.wait(queued), "waiting in the queue");
    CHECK(f.pool.snapshot("bert")->queue_depth == 0);
    CHECK(f.pool.metrics().errors_with(errc::timeout) == 2);

    f.gate->open(); // the model finishes late; its result is discarded, and the worker serves again
    auto next = f.pool.embed("bert", "next", asio::use_future);
    auto reply = f.wait(next);
    REQUIRE(reply.has_value());
    CHECK(reply->at(2) == 4.0F);
    CHECK(f.probe->calls.count() == 2); // the expired queued request never reached the model
}

TEST_CASE("a request waiting for a worker that is still loading times out at its deadline", "[deadline]") {
    DeadlineFixture f;
    auto load_gate = std::make_shared<Gate>();
    OpenOnExit open_load{load_gate};
    REQUIRE(f.pool.spawn_text_embedding_worker(
        "bert", gated_loader(load_gate, CoroEmbedder{1, nullptr, nullptr}), 1, f.guard("bert")));
    auto waiting = f.pool.embed("bert", "hello", asio::use_future);
    CHECK(f.pending(waiting));
    f.clock->advance(5s);
    check_timeout(f.wait(waiting), "waiting in the queue");

    load_gate->open(); // the worker loads after all and serves the next request
    auto next = f.pool.embed("bert", "hi", asio::use_future);
    auto reply = f.wait(next);
    REQUIRE(reply.has_value());
    CHECK(reply->at(2) == 2.0F);
}

TEST_CASE("requests answered before their deadline are not touched by it", "[deadline]") {
    DeadlineFixture f;
    REQUIRE(f.pool.spawn_text_embedding_worker("bert", ready_loader(CoroEmbedder{1, nullptr, nullptr}), 1,
                                               f.guard("bert")));
    for (int i = 0; i < 3; ++i) {
        auto reply = f.pool.embed("bert", "hello", asio::use_future);
        REQUIRE(f.wait(reply).has_value());
        f.clock->advance(4s); // each one finished well within its 5 s
    }
    CHECK(f.pool.metrics().errors_with(errc::timeout) == 0);
    CHECK(f.pool.metrics().succeeded == 3);
}

TEST_CASE("request_timeout must be positive", "[deadline][errors]") {
    auto created = Pool::create({.request_timeout = 0ms});
    REQUIRE_FALSE(created.has_value());
    CHECK(created.error().code() == errc::invalid_argument);
    CHECK(created.error().message().find("request_timeout") != std::string::npos);
}

namespace {
/// A coroutine model (it runs on the pool's io thread) that wrongly uses the blocking send.
struct MisusedSink {
    asio::awaitable<result<void>> prompt(const std::string&, const GenerationParams&,
                                         ChunkSink<CompletionChunk>& sink) {
        TextChunk chunk{"hello"};
        if (!sink.send_blocking(chunk)) {
            co_return fail(errc::model_error, "send_blocking refused on the io thread");
        }
        co_return result<void>{};
    }
};
} // namespace

TEST_CASE("send_blocking refuses to block a pool io thread", "[stream][blocking]") {
    LogCapture log;
    Pool pool({.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 64, .logger = log.logger()});
    auto guard = pool.governor().try_allocate(1, "chat");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_to_text_worker("chat", ready_loader(MisusedSink{}), 1, std::move(*guard)));
    auto opened = pool.prompt("chat", "hi", {}, asio::use_future);
    REQUIRE(opened.wait_for(5s) == std::future_status::ready);
    auto stream = opened.get();
    REQUIRE(stream.has_value());
    auto first = stream->async_next(asio::use_future);
    REQUIRE(first.wait_for(5s) == std::future_status::ready);
    auto chunk = first.get();
    REQUIRE_FALSE(chunk.has_value()); // nothing was sent: the stream ends with the model's error
    CHECK(chunk.error().code() == errc::model_error);
    CHECK(chunk.error().message().find("refused") != std::string::npos);
}

// ===========================================================================================================
// [breaker] [deadline] [metrics] [signals]: per-key circuit breaker, per-call and stream deadlines, latency
// histograms and Prometheus text, signal handling. Time is a ManualClock stepped by the test.

namespace {

/// Options for a one-io-thread pool on `clock`, logging into `log`.
PoolOptions clocked(const LogCapture& log, std::shared_ptr<ManualClock> clock) {
    return {.io_threads = 1,
            .blocking_threads = 1,
            .memory_limit_mb = 1024,
            .queue_capacity = 16,
            .request_timeout = 5s,
            .shutdown_timeout = 5s,
            .logger = log.logger(),
            .clock = std::move(clock)};
}

/// An embedder driven by its input: "fail" fails (model_error), "wait" waits for the gate, anything else
/// answers {input length}.
struct ScriptedEmbedder {
    std::shared_ptr<Gate> gate;
    std::shared_ptr<Tally> waiting = std::make_shared<Tally>();

    asio::awaitable<result<Embedding>> embed(const std::string& text, const std::optional<std::string>&) {
        if (text == "fail") {
            co_return fail(errc::model_error, "scripted failure");
        }
        if (text == "wait") {
            waiting->arrive();
            co_await gate->async_wait(asio::use_awaitable);
        }
        co_return Embedding{static_cast<float>(text.size())};
    }

    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>&,
                                                                const std::optional<std::string>&) {
        co_return std::vector<Embedding>{};
    }
};

/// A chat model that sends "first", waits for the gate, then sends "second"; it counts the sends that the
/// stream refused (the reader or a deadline ended the stream).
struct GatedChat {
    std::shared_ptr<Gate> gate;
    std::shared_ptr<Tally> refused = std::make_shared<Tally>();
    std::shared_ptr<Tally> started = std::make_shared<Tally>();

    asio::awaitable<result<void>> prompt(const std::string&, const GenerationParams&,
                                         ChunkSink<CompletionChunk>& sink) {
        started->arrive();
        CompletionChunk first = TextChunk{"first"};
        co_await sink.send(first);
        co_await gate->async_wait(asio::use_awaitable);
        CompletionChunk second = TextChunk{"second"};
        if (!co_await sink.send(second)) {
            refused->arrive();
        }
        co_return result<void>{};
    }
};

template <class T> T ready_within(std::future<T>& f) {
    REQUIRE(f.wait_for(5s) == std::future_status::ready);
    return f.get();
}

template <class T> bool still_pending(const std::future<T>& f) {
    return f.wait_for(20ms) == std::future_status::timeout;
}

} // namespace

TEST_CASE("the circuit opens after N consecutive failures - half-open admits exactly one probe - a success "
          "closes it",
          "[breaker]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto gate = std::make_shared<Gate>();
    auto options = clocked(log, clock);
    options.breaker = {.failure_threshold = 3, .open_time = 10s, .half_open_probes = 1};
    Pool pool(options);
    OpenOnExit open_gate{gate};
    ScriptedEmbedder model{gate};
    auto guard = pool.governor().try_allocate(1, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 1, std::move(*guard)));

    // Two failures, a success (the count starts again), then three failures in a row open the circuit.
    for (const char* text : {"fail", "fail", "ok", "fail", "fail"}) {
        auto r = pool.embed("bert", text, asio::use_future);
        ready_within(r);
    }
    CHECK(pool.snapshot("bert")->circuit == CircuitState::closed);
    CHECK(pool.snapshot("bert")->consecutive_failures == 2);
    auto third = pool.embed("bert", "fail", asio::use_future);
    CHECK(ready_within(third).error().code() == errc::model_error);
    CHECK(pool.snapshot("bert")->circuit == CircuitState::open);

    auto rejected = pool.embed("bert", "ok", asio::use_future);
    auto refusal = ready_within(rejected);
    REQUIRE_FALSE(refusal.has_value());
    CHECK(refusal.error().code() == errc::circuit_open);
    CHECK(refusal.error().message().find("'bert'") != std::string::npos);
    CHECK(refusal.error().message().find("10000 ms") != std::string::npos);
    CHECK(pool.metrics().circuit_rejections == 1);

    clock->advance(9999ms);
    auto still_open = pool.embed("bert", "ok", asio::use_future);
    CHECK(ready_within(still_open).error().code() == errc::circuit_open);

    clock->advance(1ms); // half-open: the next request is the one probe
    auto probe = pool.embed("bert", "wait", asio::use_future);
    REQUIRE(model.waiting->wait_for(1));
    auto second = pool.embed("bert", "ok", asio::use_future); // a second caller while the probe is in flight
    CHECK(ready_within(second).error().code() == errc::circuit_open);
    CHECK(pool.snapshot("bert")->circuit == CircuitState::half_open);

    gate->open();
    CHECK(ready_within(probe).has_value());
    CHECK(pool.snapshot("bert")->circuit == CircuitState::closed);
    auto after = pool.embed("bert", "ok", asio::use_future);
    CHECK(ready_within(after).has_value());
    CHECK(pool.metrics().circuit_rejections == 3);
}

TEST_CASE("a failed half-open probe re-opens the circuit for a new open period", "[breaker]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto options = clocked(log, clock);
    options.breaker = {.failure_threshold = 1, .open_time = 1s, .half_open_probes = 1};
    Pool pool(options);
    auto guard = pool.governor().try_allocate(1, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(ScriptedEmbedder{}), 1, std::move(*guard)));
    auto first = pool.embed("bert", "fail", asio::use_future);
    ready_within(first);
    CHECK(pool.snapshot("bert")->circuit == CircuitState::open);
    clock->advance(1s);
    auto probe = pool.embed("bert", "fail", asio::use_future);
    CHECK(ready_within(probe).error().code() == errc::model_error);
    CHECK(pool.snapshot("bert")->circuit == CircuitState::open);
    clock->advance(999ms);
    auto early = pool.embed("bert", "ok", asio::use_future);
    CHECK(ready_within(early).error().code() == errc::circuit_open);
    clock->advance(1ms);
    auto late = pool.embed("bert", "ok", asio::use_future);
    CHECK(ready_within(late).has_value());
}

TEST_CASE("a per-call timeout overrides the pool's request_timeout", "[deadline]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto gate = std::make_shared<Gate>();
    Pool pool(clocked(log, clock));
    OpenOnExit open_gate{gate};
    ScriptedEmbedder model{gate};
    auto guard = pool.governor().try_allocate(1, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 1, std::move(*guard)));
    auto busy = pool.with({.timeout = 30s}).embed("bert", "wait", asio::use_future);
    REQUIRE(model.waiting->wait_for(1));
    auto quick = pool.with({.timeout = 1s}).embed("bert", "queued", asio::use_future);
    clock->advance(999ms);
    CHECK(still_pending(quick));
    clock->advance(1ms);
    auto expired = ready_within(quick);
    REQUIRE_FALSE(expired.has_value());
    CHECK(expired.error().code() == errc::timeout);

    clock->advance(5s); // past the pool's 5 s default, short of the busy request's own 30 s
    CHECK(still_pending(busy));
    clock->advance(24s);
    CHECK(ready_within(busy).error().code() == errc::timeout);

    auto bad = pool.with({.timeout = 0ms}).embed("bert", "x", asio::use_future);
    auto refused = ready_within(bad);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == errc::invalid_argument);
    CHECK(refused.error().message().find("'bert'") != std::string::npos);
}

TEST_CASE("a stream that makes no progress for its idle timeout ends with timeout and its model is stopped",
          "[deadline][stream]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto gate = std::make_shared<Gate>();
    auto options = clocked(log, clock);
    options.stream_idle_timeout = 2s;
    Pool pool(options);
    OpenOnExit open_gate{gate};
    GatedChat model{gate};
    auto guard = pool.governor().try_allocate(1, "chat");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_to_text_worker("chat", ready_loader(model), 1, std::move(*guard)));
    auto opened = pool.prompt("chat", "hi", {}, asio::use_future);
    auto stream = ready_within(opened);
    REQUIRE(stream.has_value());
    auto first = stream->async_next(asio::use_future);
    auto chunk = ready_within(first);
    REQUIRE(chunk.has_value());
    REQUIRE(chunk->has_value());

    auto next = stream->async_next(asio::use_future);
    clock->advance(1999ms);
    CHECK(still_pending(next));
    clock->advance(1ms);
    auto ended = ready_within(next);
    REQUIRE_FALSE(ended.has_value());
    CHECK(ended.error().code() == errc::timeout);
    CHECK(ended.error().message().find("'chat'") != std::string::npos);
    gate->open();
    CHECK(model.refused->wait_for(1)); // the model's next send was refused: it stopped
    CHECK(pool.metrics().errors_with(errc::timeout) == 1);
}

TEST_CASE("a stream ends with timeout at its whole-stream deadline even while it makes progress",
          "[deadline][stream]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto gate = std::make_shared<Gate>();
    Pool pool(clocked(log, clock));
    OpenOnExit open_gate{gate};
    GatedChat model{gate};
    auto guard = pool.governor().try_allocate(1, "chat");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_to_text_worker("chat", ready_loader(model), 1, std::move(*guard)));
    auto opened = pool.with({.timeout = 3s, .idle_timeout = 10s}).prompt("chat", "hi", {}, asio::use_future);
    auto stream = ready_within(opened);
    REQUIRE(stream.has_value());
    clock->advance(2s);
    auto first = stream->async_next(asio::use_future); // produced at 0 s: the idle deadline is 10 s
    REQUIRE(ready_within(first).has_value());
    auto next = stream->async_next(asio::use_future);
    clock->advance(999ms);
    CHECK(still_pending(next));
    clock->advance(1ms); // 3 s after the call
    auto ended = ready_within(next);
    REQUIRE_FALSE(ended.has_value());
    CHECK(ended.error().code() == errc::timeout);
}

TEST_CASE("latency histograms and the Prometheus text move with the requests", "[metrics]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto gate = std::make_shared<Gate>();
    Pool pool(clocked(log, clock));
    OpenOnExit open_gate{gate};
    ScriptedEmbedder model{gate};
    auto guard = pool.governor().try_allocate(7, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 7, std::move(*guard)));

    auto served = pool.embed("bert", "wait", asio::use_future); // served for 300 ms
    REQUIRE(model.waiting->wait_for(1));
    auto queued = pool.embed("bert", "abc", asio::use_future); // waits 300 ms, served in 0
    clock->advance(300ms);
    gate->open();
    REQUIRE(ready_within(served).has_value());
    REQUIRE(ready_within(queued).has_value());
    auto failed = pool.embed("bert", "fail", asio::use_future);
    ready_within(failed);

    const auto snap = *pool.snapshot("bert");
    CHECK(snap.service_time.count == 3);
    CHECK(snap.queue_wait.count == 3);
    CHECK(snap.service_time.sum == Approx(0.3));
    CHECK(snap.queue_wait.sum == Approx(0.3));

    const auto text = pool.prometheus();
    INFO(text);
    auto has = [&](std::string_view line) { return text.find(line) != std::string::npos; };
    CHECK(has("# TYPE modelpool_requests_total counter\nmodelpool_requests_total 3\n"));
    CHECK(has("modelpool_requests_succeeded_total 2\n"));
    CHECK(has("modelpool_request_errors_total{code=\"model_error\"} 1\n"));
    CHECK(has("modelpool_service_seconds_count{key=\"bert\"} 3\n"));
    CHECK(has("modelpool_service_seconds_bucket{key=\"bert\",le=\"0.25\"} 2\n"));
    CHECK(has("modelpool_service_seconds_bucket{key=\"bert\",le=\"0.5\"} 3\n"));
    CHECK(has("modelpool_workers{key=\"bert\",state=\"loading\"} 0\n"));
    CHECK(has("modelpool_queue_depth{key=\"bert\"} 0\n"));
    CHECK(has("modelpool_memory_allocated_bytes 7340032\n"));
    CHECK(has("modelpool_circuit_state{key=\"bert\",state=\"closed\"} 1\n"));
    CHECK(has("modelpool_key_ready{key=\"bert\"} 1\n"));
}

TEST_CASE("the first SIGINT stops the pool gracefully - a second one stops it at once",
          "[signals][shutdown]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    Pool pool({.io_threads = 1,
               .blocking_threads = 1,
               .memory_limit_mb = 64,
               .shutdown_timeout = 60s,
               .logger = log.logger()});
    OpenOnExit open_gate{gate};
    ScriptedEmbedder model{gate};
    auto guard = pool.governor().try_allocate(4, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 4, std::move(*guard)));
    auto busy = pool.embed("bert", "wait", asio::use_future);
    REQUIRE(model.waiting->wait_for(1));
    {
        StopOnSignals on_signals(pool);
        std::raise(SIGINT);
        while (!pool.stopping()) {
            std::this_thread::yield(); // the handler runs on the pool's io thread
        }
        CHECK(on_signals.signals_received() == 1);
        auto stopped = std::async(std::launch::async, [&pool] { pool.wait_stopped(); });
        CHECK(still_pending(stopped)); // graceful: the busy request may still finish
        CHECK(still_pending(busy));
        std::raise(SIGINT);
        REQUIRE(stopped.wait_for(5s) == std::future_status::ready); // not the 60 s grace period
        CHECK(on_signals.signals_received() == 2);
    }
    auto ended = ready_within(busy);
    REQUIRE_FALSE(ended.has_value());
    CHECK(ended.error().code() == errc::shutting_down);
    // The model waits on a gate: the grace period was cut short, and the pool says so.
    CHECK(log.count("warning", {"still busy"}) == 1);
}

namespace {

/// An embedder whose "sleep" input waits an hour on the pool's clock, a wait that honours cancellation; it
/// counts the calls that were interrupted.
struct SleepyEmbedder {
    std::shared_ptr<ManualClock> clock;
    std::shared_ptr<Tally> started = std::make_shared<Tally>();
    std::shared_ptr<Tally> interrupted = std::make_shared<Tally>();

    asio::awaitable<result<Embedding>> embed(const std::string& text, const std::optional<std::string>&) {
        if (text == "sleep") {
            started->arrive();
            auto executor = co_await asio::this_coro::executor;
            const std::error_code ec = co_await clock->async_wait_for(executor, 1h, asio::use_awaitable);
            if (ec) {
                interrupted->arrive();
                co_return fail(errc::model_error, "interrupted");
            }
        }
        co_return Embedding{static_cast<float>(text.size())};
    }

    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>&,
                                                                const std::optional<std::string>&) {
        co_return std::vector<Embedding>{};
    }
};

} // namespace

TEST_CASE("cancelling a running request stops its coroutine model call - the worker then serves on",
          "[cancel]") {
    const std::size_t io_threads = GENERATE(1, 2); // 2: workers run on strands
    INFO("io_threads " << io_threads);
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    auto options = clocked(log, clock);
    options.io_threads = io_threads;
    Pool pool(options);
    SleepyEmbedder model{clock};
    auto guard = pool.governor().try_allocate(1, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 1, std::move(*guard)));

    asio::cancellation_signal signal;
    auto sleeping =
        pool.embed("bert", "sleep", asio::bind_cancellation_slot(signal.slot(), asio::use_future));
    REQUIRE(model.started->wait_for(1));
    signal.emit(asio::cancellation_type::terminal);
    auto cancelled = ready_within(sleeping);
    REQUIRE_FALSE(cancelled.has_value());
    CHECK(cancelled.error().code() == errc::cancelled);
    CHECK(model.interrupted->wait_for(1)); // the model's wait was aborted: no hour-long call for nobody

    auto next = pool.embed("bert", "next", asio::use_future); // the same worker, with a clean state
    auto served = ready_within(next);
    REQUIRE(served.has_value());
    CHECK(served->at(0) == 4.0F);
    auto again = pool.embed("bert", "sleep", asio::use_future); // not cancelled by the earlier signal
    REQUIRE(model.started->wait_for(2));
    CHECK(still_pending(again));
    CHECK(model.interrupted->count() == 1);
}

TEST_CASE("a running request that times out has its model call stopped - a worker that stops in time is not "
          "stuck",
          "[cancel][deadline][health]") {
    LogCapture log;
    auto clock = std::make_shared<ManualClock>();
    Pool pool(clocked(log, clock)); // request_timeout 5 s
    SleepyEmbedder model{clock};
    auto guard = pool.governor().try_allocate(1, "bert");
    REQUIRE(guard.has_value());
    REQUIRE(pool.spawn_text_embedding_worker("bert", ready_loader(model), 1, std::move(*guard)));
    auto sleeping = pool.embed("bert", "sleep", asio::use_future);
    REQUIRE(model.started->wait_for(1));
    clock->advance(5s);
    CHECK(ready_within(sleeping).error().code() == errc::timeout);
    REQUIRE(model.interrupted->wait_for(1));
    clock->advance(2s); // past stuck_grace: the worker returned in time, so it is healthy
    auto next = pool.embed("bert", "next", asio::use_future);
    REQUIRE(ready_within(next).has_value());
    const auto snap = *pool.snapshot("bert");
    CHECK(snap.unhealthy == 0);
    CHECK(snap.live());
    CHECK(pool.metrics().workers_unhealthy == 0);
}
