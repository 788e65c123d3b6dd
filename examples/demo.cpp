// modelpool demo: two small, honest demo models (not real neural networks) served by a modelpool::Pool.
//
// - "ngram-embed" (text_embedding): hashed character-trigram embeddings. Its loader reads the sentence corpus
//   without blocking the io_context (the file read is offloaded to the blocking executor) and builds the
//   model.
// - "bigram-gen" (text_to_text): a word-bigram generator trained on the same corpus, streaming words.
// - "broken" (text_embedding): a loader that fails, to show how waiting requests learn of it at once.
//
// The models are registered, so the pool manages their workers: the burst of first requests cold-starts two
// embedding workers (0 -> 2, exactly two loads), a failing model is retried once and its request learns of
// the failure, the demo runs a nearest-sentence search and streams generated text, then idle workers are
// evicted (scale to zero) and the pool's counters are printed. `--smoke` keeps it short for CI; `--metrics`
// prints the Prometheus text; Ctrl+C stops gracefully.
#include <modelpool/modelpool.hpp>
#include <modelpool/signals.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::result;

namespace {

constexpr std::string_view corpus_text = R"(the pool keeps models loaded in worker coroutines
a worker loads its model without blocking the event loop
requests wait in one bounded queue per model key
idle workers take the next request from the queue
the memory governor refuses a worker that does not fit
a failed load reaches every waiting request at once
streams carry generated text back to the caller chunk by chunk
a slow reader slows the model down through backpressure
the blocking executor runs blocking model calls on other threads
every request ends exactly once with its result or an error)";

/// Writes the corpus to the demo's cache directory on first run and returns its path.
std::filesystem::path ensure_corpus(std::filesystem::path dir) {
    std::filesystem::create_directories(dir);
    auto path = dir / "corpus.txt";
    if (!std::filesystem::exists(path)) {
        std::ofstream(path) << corpus_text << '\n';
    }
    return path;
}

std::vector<std::string> read_lines(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        if (!line.empty()) {
            lines.push_back(line);
        }
    }
    return lines;
}

/// Hashed character-trigram embeddings, L2-normalised. Blocking (CPU) operations: the pool runs them on its
/// blocking executor.
struct NgramEmbedder {
    std::size_t dimensions = 64;

    result<Embedding> embed(const std::string& text, const std::optional<std::string>& /*task*/) const {
        Embedding v(dimensions, 0.0f);
        std::string padded = "  " + text + "  ";
        for (std::size_t i = 0; i + 3 <= padded.size(); ++i) {
            v[std::hash<std::string_view>{}(std::string_view(padded).substr(i, 3)) % dimensions] += 1.0f;
        }
        float norm = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0f));
        for (auto& x : v) {
            x /= norm > 0 ? norm : 1.0f;
        }
        return v;
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

/// A word-bigram generator; its `prompt` is a coroutine that streams one word per chunk.
struct BigramGenerator {
    std::map<std::string, std::vector<std::string>> next;

    asio::awaitable<result<void>> prompt(const std::string& prompt, const modelpool::GenerationParams& params,
                                         modelpool::ChunkSink<modelpool::CompletionChunk>& sink) {
        std::string word = prompt;
        std::uint64_t state = params.seed.value_or(7);
        std::size_t produced = 0;
        for (; produced < params.max_tokens; ++produced) {
            auto it = next.find(word);
            if (it == next.end() || it->second.empty()) {
                break;
            }
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            word = it->second[(state >> 33) % it->second.size()];
            modelpool::TextChunk chunk{" " + word}; // named: see ChunkSink::send's note on g++ 12
            if (!co_await sink.send(chunk)) {
                co_return modelpool::fail(modelpool::errc::cancelled, "reader left");
            }
        }
        modelpool::CompletionStats stats{.finish_reason = produced == params.max_tokens ? "length" : "stop",
                                         .token_count = produced};
        co_await sink.send(std::move(stats));
        co_return result<void>{};
    }
};

float cosine(const Embedding& a, const Embedding& b) {
    return std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
}

asio::awaitable<int> run_demo(modelpool::Pool& pool, bool smoke, std::filesystem::path cache_dir) {
    const auto corpus_path = ensure_corpus(std::move(cache_dir));
    auto& log = pool.logger();

    // Cold start: two embedding workers. The loader co_awaits a file read offloaded to the blocking executor.
    auto embed_loader = [&pool, corpus_path]() -> asio::awaitable<result<NgramEmbedder>> {
        // Named, not a temporary in the co_await operand: g++ 12 miscompiles class temporaries there.
        auto read_corpus = [corpus_path] { return read_lines(corpus_path); };
        auto lines = co_await modelpool::offload(pool.blocking_executor(), read_corpus);
        if (lines.empty()) {
            co_return modelpool::fail(modelpool::errc::spawn_failed, "corpus {} is empty",
                                      corpus_path.string());
        }
        co_return NgramEmbedder{};
    };
    // Registered models: the pool starts workers when requests need them and evicts them when idle.
    if (auto registered =
            pool.register_text_embedding_model("ngram-embed", embed_loader, {.per_worker_mb = 128});
        !registered) {
        log.error("{}", registered.error());
        co_return 1;
    }

    auto gen_loader = [&pool, corpus_path]() -> asio::awaitable<result<BigramGenerator>> {
        auto read_corpus = [corpus_path] { return read_lines(corpus_path); };
        auto lines = co_await modelpool::offload(pool.blocking_executor(), read_corpus);
        BigramGenerator model;
        for (const auto& line : lines) {
            std::istringstream words(line);
            std::vector<std::string> tokens{std::istream_iterator<std::string>(words), {}};
            for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
                model.next[tokens[i]].push_back(tokens[i + 1]);
            }
        }
        co_return model;
    };
    // min_workers = 1: loaded now, and never evicted.
    (void)pool.register_text_to_text_model("bigram-gen", gen_loader, {.per_worker_mb = 64, .min_workers = 1});

    // A model whose loads fail: retried once after a short backoff, then its waiting request learns at once.
    (void)pool.register_text_embedding_model(
        "broken",
        []() -> asio::awaitable<result<NgramEmbedder>> {
            co_return modelpool::fail(modelpool::errc::spawn_failed, "weights file 'broken.bin' not found");
        },
        {.per_worker_mb = 256});
    auto broken = co_await pool.embed("broken", "hello");
    log.info("request to 'broken' ended with: {}",
             broken ? std::string("a result?!") : broken.error().to_string());

    // A burst of concurrent first requests for "ngram-embed": one cold start of two workers (exactly two
    // loads, however many requests arrive at once), then the burst is spread over them. Deferred operations
    // launched together and awaited as a group (never a blocking future.get() on the pool's own thread).
    const auto sentences = read_lines(corpus_path);
    const std::size_t burst = smoke ? 32 : 512;
    using embed_op = decltype(pool.embed("ngram-embed", std::string(), asio::deferred));
    std::vector<embed_op> ops;
    for (std::size_t i = 0; i < burst; ++i) {
        ops.push_back(pool.embed("ngram-embed", sentences[i % sentences.size()], asio::deferred));
    }
    auto [order, replies] = // order: completion order, unused here
        co_await asio::experimental::make_parallel_group(std::move(ops))
            .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
    const auto ok = static_cast<std::size_t>(
        std::count_if(replies.begin(), replies.end(), [](const auto& r) { return r.has_value(); }));
    auto corpus = co_await pool.batch_embed("ngram-embed", sentences);
    if (!corpus) {
        log.error("batch_embed failed: {}", corpus.error());
        co_return 1;
    }
    const std::string query = "how do waiting requests learn that a model failed to load";
    auto q = co_await pool.embed("ngram-embed", query);
    if (!q) {
        log.error("embed failed: {}", q.error());
        co_return 1;
    }
    std::size_t best = 0;
    for (std::size_t i = 1; i < corpus->size(); ++i) {
        if (cosine(*q, (*corpus)[i]) > cosine(*q, (*corpus)[best])) {
            best = i;
        }
    }
    std::printf("query:   %s\nnearest: %s (cosine %.3f)\n", query.c_str(), sentences[best].c_str(),
                cosine(*q, (*corpus)[best]));

    // Streamed generation.
    modelpool::GenerationParams params{.max_tokens = smoke ? 8u : 24u, .seed = 42};
    auto stream = co_await pool.prompt("bigram-gen", "the", params);
    if (!stream) {
        log.error("prompt failed: {}", stream.error());
        co_return 1;
    }
    std::printf("generated: the");
    for (;;) {
        auto chunk = co_await stream->async_next();
        if (!chunk) {
            std::printf("\n[stream error: %s]\n", chunk.error().to_string().c_str());
            break;
        }
        if (!*chunk) {
            break;
        }
        if (auto* text = std::get_if<modelpool::TextChunk>(&**chunk)) {
            std::printf("%s", text->text.c_str());
            std::fflush(stdout);
        } else if (auto* stats = std::get_if<modelpool::CompletionStats>(&**chunk)) {
            std::printf("\n[%zu words, finish: %s]\n", stats->token_count, stats->finish_reason.c_str());
        }
    }

    std::printf("burst: %zu of %zu embed requests succeeded; ngram-embed loaded %zu workers\n", ok, burst,
                pool.snapshot("ngram-embed")->serving());

    // Idle eviction: with nothing to do, ngram-embed scales to zero and releases its memory; bigram-gen keeps
    // its minimum worker.
    const auto idle_wait = 3 * pool.options().idle_timeout;
    asio::steady_timer idle(co_await asio::this_coro::executor, idle_wait);
    co_await idle.async_wait(asio::use_awaitable);
    std::printf(
        "after %lld ms idle: ngram-embed %zu workers (%llu evicted), bigram-gen %zu worker, %zu MB held\n",
        static_cast<long long>(idle_wait.count()), pool.snapshot("ngram-embed")->serving(),
        static_cast<unsigned long long>(pool.metrics().workers_evicted),
        pool.snapshot("bigram-gen")->serving(), pool.governor().allocated_mb());
    co_return ok == burst ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    bool smoke = false;
    bool metrics = false;
    std::string level = "info";
    auto cache_dir = std::filesystem::temp_directory_path() / "modelpool-demo";
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--smoke") {
            smoke = true;
        } else if (arg == "--metrics") {
            metrics = true;
        } else if (arg == "--cache-dir" && i + 1 < argc) {
            cache_dir = argv[++i];
        } else if (arg.starts_with("--log-level=")) {
            level = std::string(arg.substr(12));
        } else if (arg == "--help" || arg == "-h") {
            std::printf("usage: modelpool_demo [--smoke] [--metrics] [--cache-dir DIR] "
                        "[--log-level=trace|debug|info|warn|error]\n"
                        "  --metrics   print the pool's Prometheus metrics before stopping\n");
            return 0;
        } else {
            std::fprintf(stderr, "unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    auto logger = std::make_shared<spdlog::logger>("modelpool",
                                                   std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    logger->set_level(spdlog::level::from_str(level));

    // Short lifecycle delays so the demo shows them within a second (production defaults: minutes).
    modelpool::Pool pool({.io_threads = 1,
                          .blocking_threads = 2,
                          .memory_limit_mb = 1024,
                          .logger = logger,
                          .idle_timeout = std::chrono::milliseconds(300),
                          .maintenance_interval = std::chrono::milliseconds(100),
                          .load_retries = 1,
                          .retry_backoff_initial = std::chrono::milliseconds(100),
                          .retry_backoff_max = std::chrono::milliseconds(1000)});
    modelpool::StopOnSignals on_signals(pool); // Ctrl+C: graceful stop, twice: immediate
    auto outcome = asio::co_spawn(pool.get_executor(), run_demo(pool, smoke, cache_dir), asio::use_future);
    int code = outcome.get(); // the main thread waits; no pool thread ever blocks
    if (metrics) {
        std::printf("%s", pool.prometheus().c_str());
    }
    pool.stop();

    auto m = pool.metrics();
    std::printf("\nrequests %llu, succeeded %llu, errors %llu (spawn_failed %llu); workers spawned %llu, "
                "loaded %llu, "
                "failed %llu, stopped %llu; memory after stop %zu MB\n",
                static_cast<unsigned long long>(m.requests), static_cast<unsigned long long>(m.succeeded),
                static_cast<unsigned long long>(m.error_total()),
                static_cast<unsigned long long>(m.errors_with(modelpool::errc::spawn_failed)),
                static_cast<unsigned long long>(m.workers_spawned),
                static_cast<unsigned long long>(m.workers_loaded),
                static_cast<unsigned long long>(m.workers_failed),
                static_cast<unsigned long long>(m.workers_stopped), pool.governor().allocated_mb());
    return code;
}
