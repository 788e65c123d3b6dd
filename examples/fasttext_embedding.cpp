// modelpool example: fastText (text_embedding), a real word-vector model served by two pool workers.
//
// Shows: a skipgram model trained with the fastText library on the shipped Aesop text on first run (kept in
// the cache directory; runtimes/fasttext_embedder.hpp has the settings), two workers spawned with the
// asynchronous loader `runtimes::fasttext_loader` (the model file comes over loopback HTTP from a
// WeightServer on the pool's io_context, then fastText parses it on the pool's blocking executor), both
// operations of the capability, a nearest-sentence search over the fables, bad input, a corrupt model file,
// and a clean stop.
//
// `--smoke` checks real output: every vector has the model's dimensions; the whole corpus as one batch equals
// the corpus embedded one sentence at a time, and equals the vectors of engines loaded directly from the same
// file (twice: the load is deterministic); each lightly altered sentence finds its source sentence as the
// nearest one; empty or word-less text fails with invalid_argument (naming the index in a batch); a truncated
// model file is refused with spawn_failed, directly and through the pool; a loaded engine's resident memory
// stays within `runtimes::fasttext_per_worker_mb`; the pool stops with no memory reserved.
#include "models/aesop_text.hpp"
#include "runtimes/fasttext_embedder.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::errc;

constexpr std::string_view key = "fasttext";
constexpr std::string_view broken_key = "fasttext-broken";
constexpr std::string_view truncated_name = "fasttext-truncated.bin";

/// A lightly altered corpus sentence and a piece of the sentence it was made from. Fair queries: each keeps
/// most of its source's content words but changes the wording (words dropped, swapped for others, reordered,
/// inflected), so it is never a substring search; they pass because the model averages word vectors and the
/// words a query keeps are rare elsewhere in the corpus.
struct Query {
    std::string text;
    std::string expected;
};

const std::vector<Query> queries = {
    {"the ass resolved to live on dew alone and soon died of hunger", "would live only upon dew"},
    {"the mouse recognized the lion's roar and gnawed the ropes with its teeth", "gnawed the rope"},
    {"a bat that fell to the ground was caught by a weasel and begged for its life",
     "A Bat who fell upon the ground"},
    {"the father asked his sons to bring him a bundle of sticks", "bring him a bundle of sticks"},
    {"the tyrant always finds a pretext for tyranny", "The tyrant will always find a pretext"},
    {"like draws like", "Like will draw like"},
};

// AddressSanitizer's allocator adds red zones and a quarantine to every allocation: the memory check allows
// it twice the budget (measured: 7 to 8.5 MB per engine instead of 4.8).
#if defined(__SANITIZE_ADDRESS__)
constexpr double memory_allowance = 2.0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr double memory_allowance = 2.0;
#else
constexpr double memory_allowance = 1.0;
#endif
#else
constexpr double memory_allowance = 1.0;
#endif

/// The process's resident set in MB (Linux: /proc/self/statm); 0 when unknown.
double resident_mb() {
    std::ifstream statm("/proc/self/statm");
    std::size_t pages = 0, resident = 0;
    statm >> pages >> resident;
    return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

/// Cosine similarity of two vectors of the same size (0 when either is zero).
float cosine(const Embedding& a, const Embedding& b) {
    const float dot = std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
    const float na = std::inner_product(a.begin(), a.end(), a.begin(), 0.0f);
    const float nb = std::inner_product(b.begin(), b.end(), b.begin(), 0.0f);
    return na > 0.0f && nb > 0.0f ? dot / std::sqrt(na * nb) : 0.0f;
}

/// The index of the corpus vector most similar (cosine) to `query`, and the runner-up's similarity.
std::pair<std::size_t, float> nearest(const Embedding& query, const std::vector<Embedding>& corpus) {
    std::vector<float> similarity(corpus.size());
    for (std::size_t i = 0; i < corpus.size(); ++i) {
        similarity[i] = cosine(query, corpus[i]);
    }
    const auto best =
        static_cast<std::size_t>(std::max_element(similarity.begin(), similarity.end()) - similarity.begin());
    float second = -1.0f;
    for (std::size_t i = 0; i < similarity.size(); ++i) {
        second = i == best ? second : std::max(second, similarity[i]);
    }
    return {best, second};
}

bool is_error(const auto& outcome, errc code, std::string_view mentions) {
    return !outcome && outcome.error().code() == code &&
           outcome.error().message().find(mentions) != std::string::npos;
}

/// The pool part, a coroutine on the pool's io_context: the corpus in one batch, every sentence alone, the
/// queries, the task argument, bad input and the worker whose model file is truncated.
asio::awaitable<void> serve(modelpool::Pool& pool, const demo::WeightServer& server,
                            const std::vector<std::string>& sentences, const std::vector<Embedding>& direct,
                            demo::Checks& checks) {
    auto batch_request = pool.batch_embed(key, sentences);
    auto corpus = co_await std::move(batch_request);
    if (!checks.ok(corpus, "batch_embed of the corpus") ||
        !checks.check(corpus->size() == sentences.size(), "batch_embed gave {} vectors for {} texts",
                      corpus->size(), sentences.size())) {
        co_return;
    }
    std::size_t same_as_single = 0, same_as_direct = 0;
    for (std::size_t i = 0; i < sentences.size(); ++i) {
        auto request = pool.embed(key, sentences[i]);
        auto single = co_await std::move(request);
        same_as_single += single && *single == (*corpus)[i] ? 1 : 0;
        same_as_direct += (*corpus)[i] == direct[i] ? 1 : 0;
    }
    checks.check(same_as_single == sentences.size(), "only {} of {} single vectors equal their batch vector",
                 same_as_single, sentences.size());
    checks.check(same_as_direct == sentences.size(),
                 "only {} of {} pool vectors equal the directly loaded engine's", same_as_direct,
                 sentences.size());
    fmt::print("corpus: {} sentences embedded in one batch_embed and one by one through the pool: {} equal\n",
               sentences.size(), same_as_single);

    for (const auto& query : queries) {
        auto request = pool.embed(key, query.text);
        auto vector = co_await std::move(request);
        if (!checks.ok(vector, "embed of a query")) {
            co_return;
        }
        const auto [best, runner_up] = nearest(*vector, *corpus);
        const float score = cosine(*vector, (*corpus)[best]);
        fmt::print("\nquery: {}\n  {:.3f}  {}\n  (next best {:.3f})\n", query.text, score, sentences[best],
                   runner_up);
        checks.check(sentences[best].find(query.expected) != std::string::npos,
                     "nearest sentence to '{}' is '{}', expected the one containing '{}'", query.text,
                     sentences[best], query.expected);
    }

    // The task argument is accepted and ignored (as the demo n-gram embedder does).
    const std::optional<std::string> task = "search_query";
    auto task_request = pool.embed(key, sentences.front(), task);
    auto with_task = co_await std::move(task_request);
    checks.check(with_task && *with_task == corpus->front(), "embed with a task gave another vector");

    // Bad input: no word to embed.
    auto empty_request = pool.embed(key, std::string());
    auto empty = co_await std::move(empty_request);
    checks.check(is_error(empty, errc::invalid_argument, "no word"), "embed(\"\") gave {}",
                 empty ? "a vector" : empty.error().to_string());
    auto punctuation_request = pool.embed(key, std::string(" ?! -- ... \n\t"));
    auto punctuation = co_await std::move(punctuation_request);
    checks.check(is_error(punctuation, errc::invalid_argument, "no word"), "embed of punctuation gave {}",
                 punctuation ? "a vector" : punctuation.error().to_string());
    std::vector<std::string> mixed = {"the fox", "", "the crow"};
    auto mixed_request = pool.batch_embed(key, std::move(mixed));
    auto mixed_result = co_await std::move(mixed_request);
    checks.check(is_error(mixed_result, errc::invalid_argument, "text 1"),
                 "batch with an empty text 1 gave {}",
                 mixed_result ? "vectors" : mixed_result.error().to_string());
    if (!empty) {
        fmt::print("\nbad input: {}\n           {}\n", empty.error().to_string(),
                   mixed_result.error().to_string());
    }
    // A word the model never saw still has a vector: its character n-grams.
    auto unseen_request = pool.embed(key, std::string("Zyxwvutsrq"));
    auto unseen = co_await std::move(unseen_request);
    checks.check(unseen && unseen->size() == corpus->front().size(), "an unseen word gave no vector");

    // A worker whose model file is truncated: its load fails and the request waiting for it ends cleanly.
    auto guard = pool.governor().try_allocate(runtimes::fasttext_per_worker_mb, broken_key);
    if (checks.ok(guard, "reserving the broken worker's memory")) {
        const auto spawned = pool.spawn_text_embedding_worker(
            broken_key, runtimes::fasttext_loader(pool, server.url(truncated_name)),
            runtimes::fasttext_per_worker_mb, std::move(*guard));
        checks.ok(spawned, "spawning the broken worker");
        auto broken_request = pool.embed(broken_key, sentences.front()); // queued while the loader runs
        auto broken = co_await std::move(broken_request);
        checks.check(is_error(broken, errc::spawn_failed, "truncated"), "the truncated model gave {}",
                     broken ? "a vector" : broken.error().to_string());
        if (!broken) {
            fmt::print("\ntruncated model: {}\n", broken.error().to_string());
        }
    }
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(
        argc, argv, "fasttext_embedding", "nearest-sentence search with fastText workers",
        [](const demo::ExampleOptions& options, demo::Checks& checks) {
            // The corpus and the model, trained into the cache directory on first run (seconds).
            demo::WeightStore store(options.cache_dir);
            const auto text = store.contents(demo::ensure_aesop_text(store).filename().string());
            const auto name = std::string(runtimes::fasttext_model_name);
            const auto started = std::chrono::steady_clock::now();
            runtimes::ensure_fasttext_model(store, *text);
            const auto bytes = store.contents(name);
            fmt::print("model: {} ({:.1f} MB, ready in {:.1f} s; settings: {})\n", name,
                       static_cast<double>(bytes->size()) / (1024.0 * 1024.0),
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
                       runtimes::FastTextTraining{}.cli_arguments());
            const auto sentences = demo::fable_sentences(*text);

            // Engines loaded directly (main's thread: blocking is fine here), to measure a loaded model's
            // memory and to compare with the pool's vectors. The same file loaded twice gives the same
            // vectors.
            constexpr int engines = 4;
            std::vector<runtimes::FastTextEngine> loaded;
            const double before = resident_mb();
            for (int i = 0; i < engines; ++i) {
                auto engine = runtimes::FastTextEngine::load(*bytes, name);
                if (!checks.ok(engine, "loading the model directly")) {
                    return;
                }
                loaded.push_back(std::move(*engine));
            }
            const double per_engine = (resident_mb() - before) / engines;
            fmt::print("loaded engine: {} dimensions, {} words; resident memory +{:.1f} MB per engine "
                       "(per_worker_mb = {})\n",
                       loaded[0].dimensions(), loaded[0].vocabulary_size(), per_engine,
                       runtimes::fasttext_per_worker_mb);
            checks.check(per_engine <=
                             memory_allowance * static_cast<double>(runtimes::fasttext_per_worker_mb),
                         "a loaded engine takes {:.1f} MB, more than per_worker_mb = {}", per_engine,
                         runtimes::fasttext_per_worker_mb);
            checks.check(loaded[0].dimensions() == static_cast<std::size_t>(runtimes::FastTextTraining{}.dim),
                         "the model has {} dimensions, expected {}", loaded[0].dimensions(),
                         runtimes::FastTextTraining{}.dim);
            auto direct = loaded[0].batch_embed(sentences);
            auto again = loaded[1].batch_embed(sentences);
            if (!checks.ok(direct, "direct batch_embed") || !checks.ok(again, "direct batch_embed")) {
                return;
            }
            checks.check(*direct == *again, "two loads of the same file gave different vectors");
            std::size_t right_size = 0;
            for (const auto& vector : *direct) {
                right_size += vector.size() == loaded[0].dimensions() ? 1 : 0;
            }
            checks.check(right_size == direct->size(), "only {} of {} vectors have {} dimensions", right_size,
                         direct->size(), loaded[0].dimensions());
            loaded.clear();

            // Corrupt files are refused before fastText's loader sees them (it would loop on a truncated
            // one).
            const std::string_view whole(*bytes);
            for (std::size_t cut :
                 {std::size_t{0}, std::size_t{6}, std::size_t{100}, whole.size() / 2, whole.size() - 1}) {
                auto refused = runtimes::FastTextEngine::load(whole.substr(0, cut), "cut");
                checks.check(is_error(refused, errc::spawn_failed, "cut"),
                             "a model cut to {} bytes was not refused", cut);
            }
            auto longer = runtimes::FastTextEngine::load(std::string(whole) + "x", "longer");
            checks.check(is_error(longer, errc::spawn_failed, "after the end"),
                         "a model with a trailing byte "
                         "was not refused");
            store.ensure(std::string(truncated_name), [&] { return std::string(whole.substr(0, 4096)); });

            // The pool: two workers, each loading its own FastText instance from the file over HTTP.
            modelpool::Pool pool(
                {.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 64, .logger = options.logger});
            demo::WeightServer server(pool.get_executor(), store);
            for (int i = 0; i < 2; ++i) {
                if (!demo::reserve_and_spawn(pool, checks, key, runtimes::fasttext_per_worker_mb,
                                             [&](modelpool::AllocationGuard g) {
                                                 return pool.spawn_text_embedding_worker(
                                                     key, runtimes::fasttext_loader(pool, server.url(name)),
                                                     runtimes::fasttext_per_worker_mb, std::move(g));
                                             })) {
                    return;
                }
            }
            demo::run_coroutine(pool.get_executor(), serve(pool, server, sentences, *direct, checks));

            const auto m = pool.metrics();
            fmt::print("\n{} requests, {} succeeded; {} model downloads over HTTP ({:.1f} MB)\n", m.requests,
                       m.succeeded, server.requests_served(),
                       static_cast<double>(server.bytes_served()) / (1024.0 * 1024.0));
            checks.check(server.requests_served() == 3, "the weight server answered {} requests, expected 3",
                         server.requests_served());
            server.close();
            pool.stop();
            checks.check(pool.governor().allocated_mb() == 0, "{} MB still reserved after stop",
                         pool.governor().allocated_mb());
        });
}
