// Tests of dynamic batching (ModelOptions::batching, detail/batch_job.hpp) and of the queue policy
// (RequestOptions::priority and queue_timeout, detail/request_queue.hpp).
//
// Time is a ManualClock that only moves when a test advances it; the pool's maintenance runs once a day. A
// key has one worker, and the request "hold" keeps it busy until the test opens a Gate, so the test decides
// exactly which requests are queued when the worker frees up. Calls to `pool.embed` queue their request
// before they return (the initiation runs on the calling thread), so no test waits for a request to arrive.
#include "support/catch.hpp"
#include "support/checks.hpp"
#include "support/test_models.hpp"

#include <modelpool/detail/request_queue.hpp>
#include <modelpool/pool.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace modelpool;
using namespace modelpool::testing;
using namespace std::chrono_literals;

/// Polls `pred` every millisecond for up to 5 s (pool state that changes on the pool's threads).
template <class Pred> bool eventually(Pred pred) {
    for (int i = 0; i < 5000; ++i) {
        if (pred()) {
            return true;
        }
        std::this_thread::sleep_for(1ms); // polling pool state, not waiting out a race
    }
    return pred();
}

/// Every call the model received, in order.
struct CallLog {
    struct Call {
        bool batch;                      ///< batch_embed (else embed)
        std::vector<std::string> texts;  ///< Its inputs.
        std::optional<std::string> task; ///< Its task.
    };

    void record(bool batch, std::vector<std::string> texts, std::optional<std::string> task) {
        {
            std::lock_guard lock(mutex);
            entries.push_back({batch, std::move(texts), std::move(task)});
        }
        calls.arrive();
    }

    [[nodiscard]] std::vector<Call> all() const {
        std::lock_guard lock(mutex);
        return entries;
    }

    /// The inputs of every call, in order (one text per single call).
    [[nodiscard]] std::vector<std::vector<std::string>> inputs() const {
        std::vector<std::vector<std::string>> out;
        for (const auto& call : all()) {
            out.push_back(call.texts);
        }
        return out;
    }

    Tally calls;
    mutable std::mutex mutex;
    std::vector<Call> entries;
};

/// An embedder that logs its calls. "hold" waits for the gate; "bad" fails (alone and in any batch);
/// "miscount" makes a batch reply one item short. An embedding is {text length, 1 for embed / 2 for batch}.
struct LoggingEmbedder {
    std::shared_ptr<CallLog> log;
    std::shared_ptr<Gate> gate;

    asio::awaitable<result<Embedding>> embed(const std::string& text,
                                             const std::optional<std::string>& task) {
        log->record(false, {text}, task);
        if (text == "hold") {
            co_await gate->async_wait(asio::use_awaitable);
        }
        if (text == "bad") {
            co_return fail(errc::model_error, "cannot embed 'bad'");
        }
        co_return Embedding{static_cast<float>(text.size()), 1.0f};
    }

    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>& task) {
        log->record(true, texts, task);
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            if (text == "bad") {
                co_return fail(errc::model_error, "the batch holds an input it cannot embed");
            }
            out.push_back(Embedding{static_cast<float>(text.size()), 2.0f});
        }
        if (std::find(texts.begin(), texts.end(), "miscount") != texts.end()) {
            out.pop_back();
        }
        co_return out;
    }
};

/// A pool on a ManualClock with one registered key "k" (one worker, kept loaded) and a busy worker on demand.
struct Fixture {
    explicit Fixture(BatchingOptions batching, PoolOptions extra = {}) {
        extra.clock = clock;
        extra.io_threads = 1;
        extra.blocking_threads = 1;
        extra.memory_limit_mb = 64;
        extra.maintenance_interval = 24h;
        extra.logger = logs.logger();
        pool.emplace(std::move(extra));
        REQUIRE(pool->register_text_embedding_model(
            "k", ready_loader(LoggingEmbedder{log, gate}),
            {.per_worker_mb = 1, .min_workers = 1, .max_workers = 1, .batching = batching}));
        REQUIRE(eventually([&] { return pool->snapshot("k")->ready(); }));
    }

    ~Fixture() {
        gate->open();
        pool->stop();
    }

    Fixture(const Fixture&) = delete;
    Fixture& operator=(const Fixture&) = delete;

    /// Sends "hold" and waits until the worker serves it; the returned future completes after `release()`.
    std::future<result<Embedding>> occupy() {
        const auto before = log->calls.count();
        auto held = pool->embed("k", "hold", asio::use_future);
        REQUIRE(log->calls.wait_for(before + 1));
        return held;
    }

    void release() { gate->open(); }

    std::future<result<Embedding>> embed(std::string text, RequestOptions options = {},
                                         std::optional<std::string> task = std::nullopt) {
        return pool->with(options).embed("k", std::move(text), std::move(task), asio::use_future);
    }

    std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
    std::shared_ptr<CallLog> log = std::make_shared<CallLog>();
    std::shared_ptr<Gate> gate = std::make_shared<Gate>();
    LogCapture logs;
    std::optional<Pool> pool;
};

/// The embedding's first value: the length of the text it was made from.
float length_of(const result<Embedding>& r) {
    REQUIRE(r.has_value());
    return r->at(0);
}

using Inputs = std::vector<std::vector<std::string>>;

// ---- batching
// ----------------------------------------------------------------------------------------------

TEST_CASE("batching: a request that finds an idle worker runs at once, alone, and no timer is armed",
          "[batching]") {
    Fixture f({.max_batch_size = 8});
    auto one = get(f.embed("alone")); // the clock never moves: nothing waited for a batch
    CHECK(length_of(one) == 5);
    CHECK(one->at(1) == 1.0f); // embed, not batch_embed
    CHECK(f.log->inputs() == Inputs{{"alone"}});
    const auto sizes = f.pool->snapshot("k")->batch_size;
    CHECK(sizes.count == 1);
    CHECK(sizes.sum == 1);
}

TEST_CASE("batching: requests that queue while the worker is busy are served by one batch call",
          "[batching]") {
    Fixture f({.max_batch_size = 8});
    auto held = f.occupy();
    std::vector<std::future<result<Embedding>>> queued;
    for (std::string text : {"a", "bb", "ccc", "dddd", "eeeee"}) {
        queued.push_back(f.embed(text));
    }
    CHECK(f.pool->snapshot("k")->queue_depth == 5);
    f.release();
    CHECK(length_of(get(std::move(held))) == 4);
    for (std::size_t i = 0; i < queued.size(); ++i) {
        auto r = get(std::move(queued[i]));
        CHECK(length_of(r) == static_cast<float>(i + 1)); // each caller gets its own item
        CHECK(r->at(1) == 2.0f);
    }
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"a", "bb", "ccc", "dddd", "eeeee"}});
    // Requests, not model calls (a worker counts them just after replying: polled).
    CHECK(eventually([&] { return f.pool->snapshot("k")->served == 6; }));
    const auto sizes = f.pool->snapshot("k")->batch_size;
    CHECK(sizes.count == 2); // the held request alone, then the batch
    CHECK(sizes.sum == 6);
    CHECK(f.pool->prometheus().find("modelpool_batch_size_bucket{key=\"k\",le=\"8\"} 2") !=
          std::string::npos);
}

TEST_CASE("batching: max_batch_size bounds each call", "[batching]") {
    Fixture f({.max_batch_size = 3});
    auto held = f.occupy();
    std::vector<std::future<result<Embedding>>> queued;
    for (std::string text : {"1", "2", "3", "4", "5", "6", "7"}) {
        queued.push_back(f.embed(text));
    }
    f.release();
    for (auto& q : queued) {
        CHECK(get(std::move(q)).has_value());
    }
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"1", "2", "3"}, {"4", "5", "6"}, {"7"}});
}

TEST_CASE("batching: a batch never mixes requests for different tasks", "[batching]") {
    Fixture f({.max_batch_size = 8});
    auto held = f.occupy();
    std::vector<std::future<result<Embedding>>> queued;
    queued.push_back(f.embed("q1", {}, "query"));
    queued.push_back(f.embed("d1", {}, "document"));
    queued.push_back(f.embed("q2", {}, "query"));
    queued.push_back(f.embed("d2", {}, "document"));
    queued.push_back(f.embed("n1"));
    f.release();
    for (auto& q : queued) {
        CHECK(get(std::move(q)).has_value());
    }
    const auto calls = f.log->all();
    REQUIRE(calls.size() == 4);
    CHECK(calls[1].texts == std::vector<std::string>{"q1", "q2"});
    CHECK(calls[1].task == "query");
    CHECK(calls[2].texts == std::vector<std::string>{"d1", "d2"});
    CHECK(calls[2].task == "document");
    CHECK(calls[3].texts == std::vector<std::string>{"n1"});
    CHECK_FALSE(calls[3].batch); // alone: a single call
}

TEST_CASE("batching: cancelled and expired requests never reach the model", "[batching]") {
    Fixture f({.max_batch_size = 8});
    auto held = f.occupy();
    auto first = f.embed("first");
    asio::cancellation_signal cancel;
    auto cancelled =
        f.pool->embed("k", "cancelled", asio::bind_cancellation_slot(cancel.slot(), asio::use_future));
    auto expiring = f.embed("expiring", {.timeout = 10ms});
    auto last = f.embed("last");
    cancel.emit(asio::cancellation_type::terminal);
    check_error(get(std::move(cancelled)), errc::cancelled);
    f.clock->advance(10ms);
    check_error(get(std::move(expiring)), errc::timeout, {"waiting in the queue"});
    f.release();
    CHECK(length_of(get(std::move(first))) == 5);
    CHECK(length_of(get(std::move(last))) == 4);
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"first", "last"}});
}

TEST_CASE("batching: a failed batch is retried one by one, so one bad input fails only its own request",
          "[batching]") {
    SECTION("retry_items_on_failure (the default)") {
        Fixture f({.max_batch_size = 8});
        auto held = f.occupy();
        auto good1 = f.embed("good");
        auto bad = f.embed("bad");
        auto good2 = f.embed("fine");
        f.release();
        CHECK(length_of(get(std::move(good1))) == 4);
        check_error(get(std::move(bad)), errc::model_error, {"cannot embed 'bad'"});
        CHECK(length_of(get(std::move(good2))) == 4);
        CHECK(f.log->inputs() == Inputs{{"hold"}, {"good", "bad", "fine"}, {"good"}, {"bad"}, {"fine"}});
        CHECK(f.pool->metrics().errors_with(errc::model_error) == 1);
    }
    SECTION("without retries every request of the batch gets its error") {
        Fixture f({.max_batch_size = 8, .retry_items_on_failure = false});
        auto held = f.occupy();
        auto good = f.embed("good");
        auto bad = f.embed("bad");
        f.release();
        check_error(get(std::move(good)), errc::model_error, {"cannot embed"});
        check_error(get(std::move(bad)), errc::model_error, {"cannot embed"});
        CHECK(f.log->inputs() == Inputs{{"hold"}, {"good", "bad"}});
    }
}

TEST_CASE("batching: a batch reply with the wrong number of items is an error for each request",
          "[batching]") {
    Fixture f({.max_batch_size = 8});
    auto held = f.occupy();
    auto a = f.embed("x");
    auto b = f.embed("miscount");
    auto c = f.embed("y");
    f.release();
    for (auto* r : {&a, &b, &c}) {
        check_error(get(std::move(*r)), errc::model_error,
                    {"batch_embed returned 2 items for a batch of 3 requests"});
    }
}

TEST_CASE("batching: max_queue_delay holds a partial batch until the oldest request has waited it",
          "[batching]") {
    Fixture f({.max_batch_size = 4, .max_queue_delay = 2ms});
    SECTION("the delay passes") {
        auto a = f.embed("a");
        auto b = f.embed("bb");
        CHECK(pending(a));
        CHECK(f.log->calls.count() == 0); // the idle worker waits for a fuller batch
        // The key's sweeper, its timer, re-arms for the batch (asynchronously: polled).
        REQUIRE(eventually([&] { return f.clock->next_deadline() == f.clock->now() + 2ms; }));
        f.clock->advance(1ms);
        auto c = f.embed("ccc");
        CHECK(pending(c));
        f.clock->advance(1ms);
        CHECK(length_of(get(std::move(a))) == 1);
        CHECK(length_of(get(std::move(b))) == 2);
        CHECK(length_of(get(std::move(c))) == 3);
        CHECK(f.log->inputs() == Inputs{{"a", "bb", "ccc"}});
    }
    SECTION("a full batch goes at once") {
        std::vector<std::future<result<Embedding>>> four;
        for (std::string text : {"1", "2", "3", "4"}) {
            four.push_back(f.embed(text));
        }
        for (auto& r : four) {
            CHECK(get(std::move(r)).has_value()); // the clock never moved
        }
        CHECK(f.log->inputs() == Inputs{{"1", "2", "3", "4"}});
    }
}

// ---- queue policy -----------------------------------------------------------------------------------------

TEST_CASE("priority: a key's queue serves higher levels first, FIFO within a level", "[priority]") {
    Fixture f({});
    auto held = f.occupy();
    auto low1 = f.embed("low1", {.priority = Priority::low});
    auto normal1 = f.embed("normal1");
    auto high1 = f.embed("high1", {.priority = Priority::high});
    auto low2 = f.embed("low2", {.priority = Priority::low});
    auto high2 = f.embed("high2", {.priority = Priority::high});
    f.release();
    for (auto* r : {&low1, &normal1, &high1, &low2, &high2}) {
        CHECK(get(std::move(*r)).has_value());
    }
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"high1"}, {"high2"}, {"normal1"}, {"low1"}, {"low2"}});
}

TEST_CASE("priority: ageing bounds how long a lower level can be overtaken", "[priority]") {
    // priority_aging 1 s: a low request is overtaken by a high one that arrives less than 2 s after it, never
    // by one that arrives more than 2 s after it.
    Fixture f({}, {.priority_aging = 1s});
    auto held = f.occupy();
    auto low = f.embed("low", {.priority = Priority::low});
    f.clock->advance(1999ms);
    auto high_soon = f.embed("high_soon", {.priority = Priority::high});
    f.clock->advance(2ms); // "low" has now waited 2001 ms
    auto high_late = f.embed("high_late", {.priority = Priority::high});
    auto normal_late = f.embed("normal_late");
    f.release();
    for (auto* r : {&low, &high_soon, &high_late, &normal_late}) {
        CHECK(get(std::move(*r)).has_value());
    }
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"high_soon"}, {"low"}, {"high_late"}, {"normal_late"}});
}

TEST_CASE("priority: the queue ranks heads by arrival moved earlier by level x aging", "[priority]") {
    detail::request_queue queue(1s);
    auto job_at = [](Clock::time_point t, Priority p) {
        auto job = std::make_shared<detail::unary_job<text_embedding, text_embedding::embed_op>>(
            text_embedding::embed_op{}, nullptr, asio::any_io_executor{});
        job->enqueued_at = t;
        job->priority = p;
        return job;
    };
    const auto t0 = ManualClock::default_start;
    auto low = job_at(t0, Priority::low);
    auto normal = job_at(t0 + 500ms, Priority::normal);
    auto high = job_at(t0 + 2500ms, Priority::high);
    queue.push(low);
    queue.push(normal);
    queue.push(high);
    CHECK(queue.size() == 3);
    CHECK(queue.pop() == normal); // ranks: low t0, normal t0 - 0.5 s, high t0 + 0.5 s
    CHECK(queue.pop() == low);
    CHECK(queue.pop() == high);
    CHECK(queue.pop() == nullptr);
}

TEST_CASE(
    "queue_timeout: a request that waits too long in the queue ends with timeout, never reaching a model",
    "[priority]") {
    Fixture f({}, {.queue_timeout = 50ms});
    auto held = f.occupy();
    auto waits = f.embed("waits");
    auto patient = f.embed("patient", {.queue_timeout = 200ms});
    f.clock->advance(50ms);
    check_error(get(std::move(waits)), errc::timeout, {"queue timeout"});
    CHECK(pending(patient));
    f.release();
    CHECK(length_of(get(std::move(patient))) == 7);
    CHECK(f.log->inputs() == Inputs{{"hold"}, {"patient"}});
}

TEST_CASE("batching and queue options are checked, naming the key and the values", "[batching][priority]") {
    Pool pool({.io_threads = 1, .memory_limit_mb = 64, .queue_capacity = 16});
    const auto loader = ready_loader(LoggingEmbedder{std::make_shared<CallLog>(), std::make_shared<Gate>()});
    check_error(pool.register_text_embedding_model("zero", loader,
                                                   {.per_worker_mb = 1, .batching = {.max_batch_size = 0}}),
                errc::invalid_argument, {"batching.max_batch_size of 'zero' must be at least 1"});
    check_error(pool.register_text_embedding_model("big", loader,
                                                   {.per_worker_mb = 1, .batching = {.max_batch_size = 32}}),
                errc::invalid_argument, {"'big' (32) exceeds the queue capacity (16)"});
    check_error(
        pool.register_text_embedding_model(
            "slow", loader, {.per_worker_mb = 1, .batching = {.max_batch_size = 4, .max_queue_delay = 2min}}),
        errc::invalid_argument, {"max_queue_delay of 'slow' must be between 0 and 60 s"});
    check_error(pool.register_text_to_text_model("chat", ready_loader(CoroChat{}),
                                                 {.per_worker_mb = 1, .batching = {.max_batch_size = 4}}),
                errc::invalid_argument, {"'chat': text_to_text has no batch operation"});
    REQUIRE(pool.register_text_embedding_model("ok", loader, {.per_worker_mb = 1}));
    check_error(get(pool.with({.queue_timeout = 0ms}).embed("ok", "x", asio::use_future)),
                errc::invalid_argument, {"queue_timeout for a request to 'ok' must be positive"});
    check_error(get(pool.with({.priority = static_cast<Priority>(7)}).embed("ok", "x", asio::use_future)),
                errc::invalid_argument, {"priority 7"});
    check_error(PoolOptions{.priority_aging = 0ms}.validate(), errc::invalid_argument, {"priority_aging"});
    pool.stop();
}

} // namespace
