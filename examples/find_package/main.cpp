// examples/find_package/main.cpp: a small application built against the modelpool package (see
// CMakeLists.txt next to it). It spawns one worker whose loader is a coroutine, sends it one request from the
// main thread, prints the reply and stops the pool. Exits 0 when the reply is the expected one.
#include <modelpool/modelpool.hpp>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::result;

namespace {

/// A text_embedding model: the embedding of a text is {its length, its number of spaces}. Coroutine members
/// run on the pool's io thread; members returning a plain result<...> would run on its blocking executor.
struct LengthModel {
    asio::awaitable<result<Embedding>> embed(const std::string& text, const std::optional<std::string>&) {
        float spaces = 0;
        for (char c : text) {
            spaces += c == ' ' ? 1.0F : 0.0F;
        }
        co_return Embedding{static_cast<float>(text.size()), spaces};
    }
    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>& task) {
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            auto one = co_await embed(text, task);
            out.push_back(std::move(*one));
        }
        co_return out;
    }
};

/// The loader: a coroutine the worker co_awaits on the pool's io thread. A real one would read weights
/// asynchronously (or offload a blocking read with modelpool::offload); this one waits 1 ms on a timer.
asio::awaitable<result<LengthModel>> load_length_model() {
    asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
    co_await timer.async_wait(asio::use_awaitable);
    co_return LengthModel{};
}

} // namespace

int main() {
    modelpool::Pool pool({.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 64});

    // Every worker holds a memory reservation from the pool's governor for as long as it lives.
    auto guard = pool.governor().try_allocate(8, "length");
    if (!guard) {
        std::fprintf(stderr, "no memory for the worker: %s\n", guard.error().to_string().c_str());
        return 1;
    }
    auto worker = pool.spawn_text_embedding_worker("length", load_length_model, 8, std::move(*guard));
    if (!worker) {
        std::fprintf(stderr, "spawn failed: %s\n", worker.error().to_string().c_str());
        return 1;
    }

    // From a plain thread a request completes into a std::future; the request waits in the key's queue until
    // the worker has loaded. (Inside a coroutine: co_await pool.embed("length", text, asio::use_awaitable).)
    result<Embedding> reply = pool.embed("length", "hello modelpool", asio::use_future).get();
    pool.stop();

    if (!reply) {
        std::fprintf(stderr, "embed failed: %s\n", reply.error().to_string().c_str());
        return 1;
    }
    std::printf("modelpool app: worker %llu embed(\"hello modelpool\") = [%g, %g]; pool stopped\n",
                static_cast<unsigned long long>(*worker), (*reply)[0], (*reply)[1]);
    return *reply == Embedding{15.0F, 1.0F} ? 0 : 1;
}
