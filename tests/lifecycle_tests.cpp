// Tests of request deadlines, driven by a ManualClock: time is stepped by the test, never slept.
#include "support/catch.hpp"
#include "support/test_models.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <chrono>
#include <future>
#include <memory>
#include <string>

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
