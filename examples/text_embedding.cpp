// modelpool example: text_embedding, a nearest-sentence search over Aesop's Fables.
//
// Shows: a worker spawned with an asynchronous loader (`pool.spawn_text_embedding_worker`), which fetches the
// demo model's weights file over loopback HTTP from a WeightServer running on the pool's own io_context; both
// operations of the capability, `embed` and `batch_embed`, called from a coroutine on the pool
// (`co_await pool.embed(...)`) and from main's thread (`pool.embed(..., asio::use_future)`); then a stop.
//
// The model is a demo, not a neural network: hashed word and character n-gram embeddings
// (examples/models/ngram_embedder.hpp). It still finds the fable sentence a paraphrase was made from.
//
// `--smoke` checks the output: dimensions and unit length, batch vectors equal to single ones, the same
// vectors in both calling styles, each paraphrase's nearest sentence is the one it paraphrases, and the
// weights really came over HTTP.
#include "models/aesop_text.hpp"
#include "models/ngram_embedder.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using modelpool::Embedding;

constexpr std::string_view key = "ngram-embed";

/// A paraphrase and (a piece of) the corpus sentence it paraphrases.
struct Query {
    std::string text;
    std::string expected;
};

const std::vector<Query>& queries(bool smoke) {
    static const std::vector<Query> all = {
        {"the ass decided to live on nothing but dew and soon died of hunger", "would live only upon dew"},
        {"slow and steady wins the race", "Slow but steady wins the race"},
        {"the crow dropped pebbles into the pitcher until the water rose", "dropped them one by one"},
        {"the fox said the grapes were sour because she could not reach them", "The Grapes are sour"},
        {"a lion let a little mouse go and later the mouse gnawed through the ropes", "gnawed the rope"},
        {"nobody believes a liar even when he tells the truth", "no believing a liar"},
        {"persuasion works better than force", "Persuasion is better than Force"},
    };
    static const std::vector<Query> few(all.begin(), all.begin() + 3);
    return smoke ? few : all;
}

/// Indices of the `k` corpus vectors most similar to `query`, best first.
std::vector<std::size_t> nearest(const Embedding& query, const std::vector<Embedding>& corpus,
                                 std::size_t k) {
    std::vector<std::size_t> order(corpus.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    k = std::min(k, order.size());
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                      [&](std::size_t a, std::size_t b) {
                          return demo::cosine_similarity(query, corpus[a]) >
                                 demo::cosine_similarity(query, corpus[b]);
                      });
    order.resize(k);
    return order;
}

/// What the coroutine part computes, for main to compare with the future-style calls.
struct Found {
    std::vector<Embedding> corpus;
    std::vector<Embedding> queries;
};

/// The coroutine style: runs on the pool's io_context, co_awaits every operation.
asio::awaitable<Found> search(modelpool::Pool& pool, const std::vector<std::string>& sentences, bool smoke,
                              demo::Checks& checks) {
    Found found;
    // Each request is named first, then awaited: g++ 12 miscompiles class temporaries (here the strings
    // copied into the call) inside a co_await operand.
    auto batch_request = pool.batch_embed(key, sentences); // one request for the whole corpus
    auto corpus = co_await std::move(batch_request);
    if (!checks.ok(corpus, "batch_embed")) {
        co_return found;
    }
    found.corpus = std::move(*corpus);
    checks.check(found.corpus.size() == sentences.size(), "batch_embed gave {} vectors for {} texts",
                 found.corpus.size(), sentences.size());
    for (const auto& query : queries(smoke)) {
        auto request = pool.embed(key, query.text); // one request per query
        auto vector = co_await std::move(request);
        if (!checks.ok(vector, "embed")) {
            co_return found;
        }
        const auto best = nearest(*vector, found.corpus, smoke ? 1 : 3);
        fmt::print("\nquery: {}\n", query.text);
        for (auto index : best) {
            fmt::print("  {:.3f}  {}\n", demo::cosine_similarity(*vector, found.corpus[index]),
                       sentences[index]);
        }
        checks.check(sentences[best.front()].find(query.expected) != std::string::npos,
                     "nearest sentence to '{}' is '{}', expected the one containing '{}'", query.text,
                     sentences[best.front()], query.expected);
        found.queries.push_back(std::move(*vector));
    }
    // The optional task argument (this model ignores it: same vector).
    std::optional<std::string> task = "search_query";
    auto task_request = pool.embed(key, queries(smoke).front().text, task);
    auto with_task = co_await std::move(task_request);
    checks.check(with_task && *with_task == found.queries.front(), "embed with a task gave another vector");
    co_return found;
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(
        argc, argv, "text_embedding", "nearest-sentence search with a spawned n-gram embedding worker",
        [](const demo::ExampleOptions& options, demo::Checks& checks) {
            // The weights file and the corpus, generated (or copied) into the cache directory on first run.
            demo::WeightStore store(options.cache_dir);
            const auto weights = demo::ensure_ngram_weights(store);
            const auto text = store.contents(demo::ensure_aesop_text(store).filename().string());
            const auto sentences = demo::fable_sentences(*text);
            fmt::print("corpus: {} sentences of Aesop's Fables\n", sentences.size());

            modelpool::Pool pool(
                {.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 256, .logger = options.logger});
            demo::WeightServer server(pool.get_executor(), store); // on the pool's io_context: never blocks

            // Spawn one worker: returns at once; the loader fetches the weights while requests queue.
            const auto loader = demo::ngram_embedder_loader(server.url(weights));
            if (!demo::reserve_and_spawn(pool, checks, key, 64, [&](modelpool::AllocationGuard guard) {
                    return pool.spawn_text_embedding_worker(key, loader, 64, std::move(guard));
                })) {
                return;
            }

            // Coroutine style, on the pool.
            const Found found =
                demo::run_coroutine(pool.get_executor(), search(pool, sentences, options.smoke, checks));
            if (found.queries.empty()) {
                return;
            }

            // Future style, from main's thread (never from a pool thread: get() blocks).
            const auto& first = queries(options.smoke).front().text;
            auto single = pool.embed(key, first, asio::use_future).get();
            const std::vector<std::string> some(sentences.begin(), sentences.begin() + 5);
            auto batch = pool.batch_embed(key, some, std::nullopt, asio::use_future).get();
            if (checks.check(single && batch, "future-style calls failed")) {
                checks.check(*single == found.queries.front(), "embed: future and coroutine results differ");
                checks.check(batch->size() == some.size(), "batch_embed gave {} vectors for {}",
                             batch->size(), some.size());
                for (std::size_t i = 0; i < std::min(batch->size(), some.size()); ++i) {
                    checks.check((*batch)[i] == found.corpus[i],
                                 "batch vector {} differs from the first batch", i);
                }
                const float norm =
                    std::sqrt(std::inner_product(single->begin(), single->end(), single->begin(), 0.0f));
                checks.check(single->size() == 256, "embedding has {} dimensions, expected 256",
                             single->size());
                checks.check(std::abs(norm - 1.0f) < 1e-4f, "embedding norm is {}, expected 1", norm);
            }
            // Batch results equal single results.
            auto alone = pool.embed(key, sentences[3], asio::use_future).get();
            checks.check(alone && *alone == found.corpus[3],
                         "embed of a sentence differs from its batch vector");

            // The loader fetched the weights over HTTP.
            checks.check(server.requests_served() == 1 &&
                             server.bytes_served() == store.contents(weights)->size(),
                         "weight server answered {} requests ({} bytes), expected 1 ({} bytes)",
                         server.requests_served(), server.bytes_served(), store.contents(weights)->size());
            const auto m = pool.metrics();
            fmt::print("\n{} requests, {} succeeded; weights fetched over HTTP: {} bytes\n", m.requests,
                       m.succeeded, server.bytes_served());
            server.close();
            pool.stop();
        });
}
