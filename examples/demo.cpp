// modelpool main demo: five models, one per capability, served by one modelpool::Pool, and the whole
// lifecycle on one terminal. Each capability is served by a real inference runtime when this build includes
// it (Tesseract OCR for vision, fastText for text_embedding, a char-level GRU on libtorch for text_to_text;
// see examples/runtimes/) and by a small demo model otherwise (examples/models/: honestly not neural
// networks); the demo says which at its start (examples/support/builtin_models.hpp).
//
//   1. Weight files are generated into the cache directory on first run and served by a loopback HTTP server
//      (Boost.Beast) that the demo starts on 127.0.0.1; the loaders fetch their weights over HTTP with
//      non-blocking sockets on the pool's only io thread, and run the runtimes' blocking loads on the pool's
//      blocking executor.
//   2. Cold start: a burst of concurrent requests to all five models starts exactly two workers per model
//      (0 -> 2), shown live (a repainted board on a terminal, change lines otherwise).
//   3. A nearest-sentence search over the fables, and a generated fable streamed to the terminal as it is
//      sampled.
//   4. Scaling under load: concurrent clients keep the image generator busy for --duration seconds; its
//      workers scale up to their maximum, one at a time.
//   5. A model whose weights are missing: its load fails, is retried once, and its request ends cleanly with
//      spawn_failed naming the cause.
//   6. Idle eviction: after a short cooldown the idle workers are evicted and their memory returns to 0.
//   7. A table of requests, latency percentiles, workers spawned/evicted and peak memory; the Prometheus
//   text.
// Ctrl+C stops gracefully (twice: at once). `--smoke` runs a short version that checks its own results.
#include "support/builtin_models.hpp"
#include "support/example_main.hpp"
#include "support/status_board.hpp"
#include "support/weight_store.hpp"

#include <modelpool/signals.hpp>

#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// The model keys, in the order the board shows them.
constexpr std::string_view sentences = "sentences"; // text_embedding: fastText or NgramEmbedder
constexpr std::string_view fables = "fables";       // text_to_text: the char-level GRU or NgramGenerator
constexpr std::string_view colors = "colors";       // image_embedding: ColorHistogramEmbedder
constexpr std::string_view describer = "describer"; // vision: Tesseract OCR or ShapeDescriber
constexpr std::string_view painter = "painter";     // text_to_image: ProceduralPainter
constexpr std::string_view broken = "broken";       // vision, whose weight file does not exist
const std::vector<std::string_view> working_models = {sentences, fables, colors, describer, painter};

/// What the demo's clients saw, per key: every request's latency and how it ended. Thread-safe.
class Tally {
public:
    void record(std::string_view key, clock_type::duration latency, const modelpool::PoolError* error) {
        std::lock_guard lock(mutex_);
        auto& row = rows_[std::string(key)];
        row.latencies_ms.push_back(std::chrono::duration<double, std::milli>(latency).count());
        if (error != nullptr) {
            ++row.errors[std::string(modelpool::to_string(error->code()))];
        }
    }

    struct Row {
        std::vector<double> latencies_ms;
        std::map<std::string, std::size_t> errors; // by errc name
    };

    std::map<std::string, Row> rows() const {
        std::lock_guard lock(mutex_);
        return rows_;
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, Row> rows_;
};

/// Worker events per key (spawned, loaded, failed, evicted), from the pool's `on_worker_event` hook.
class WorkerCounts {
public:
    void on_event(const modelpool::WorkerEvent& event) {
        std::lock_guard lock(mutex_);
        ++counts_[std::string(event.key)][static_cast<std::size_t>(event.kind)];
    }
    std::size_t count(std::string_view key, modelpool::WorkerEventKind kind) const {
        std::lock_guard lock(mutex_);
        auto it = counts_.find(std::string(key));
        return it == counts_.end() ? 0 : it->second[static_cast<std::size_t>(kind)];
    }

private:
    mutable std::mutex mutex_;
    std::map<std::string, std::array<std::size_t, 8>> counts_;
};

struct DemoOptions {
    double duration_s = 5.0; ///< --duration: how long the load phase lasts.
};

/// Everything the phases share.
struct Demo {
    modelpool::Pool& pool;
    const demo::ExampleOptions& options;
    const DemoOptions& demo_options;
    demo::Checks& checks;
    demo::WeightServer& server;
    const std::vector<std::string>& corpus; // the fables' sentences
    std::vector<std::string> images;        // generated test images (paths)
    std::vector<std::string> pages;         // images of rendered text, for an OCR model (paths)
    bool ocr = false;                       // the vision model reads text (Tesseract), not shapes
    bool char_level = false;                // the text_to_text model samples characters, not words
    Tally tally;
    WorkerCounts& workers;

    bool interrupted() const { return pool.stopping(); }
};

/// Reads a stream to its end; returns its first error, if any.
template <class Stream> asio::awaitable<modelpool::result<std::size_t>> drain(Stream& stream) {
    std::size_t chunks = 0;
    for (;;) {
        auto chunk = co_await stream.async_next();
        if (!chunk) {
            co_return modelpool::unexpected<modelpool::PoolError>(chunk.error());
        }
        if (!*chunk) {
            co_return chunks;
        }
        ++chunks;
    }
}

/// One request to `key` (whichever capability it serves), number `i` of a burst.
asio::awaitable<modelpool::result<std::size_t>> one_request(Demo& d, std::string_view key, std::size_t i) {
    auto& pool = d.pool;
    if (key == sentences) {
        auto vector = co_await pool.embed(key, d.corpus[i % d.corpus.size()]);
        co_return vector ? modelpool::result<std::size_t>(vector->size())
                         : modelpool::unexpected<modelpool::PoolError>(vector.error());
    }
    if (key == colors) {
        auto vector = co_await pool.embed_image(key, d.images[i % d.images.size()]);
        co_return vector ? modelpool::result<std::size_t>(vector->size())
                         : modelpool::unexpected<modelpool::PoolError>(vector.error());
    }
    if (key == fables) {
        modelpool::GenerationParams params{.max_tokens = 8, .seed = i};
        const std::string prompt = "The Fox"; // named: g++ 12 and temporaries in co_await operands (README)
        auto stream = co_await pool.prompt(key, prompt, params);
        if (!stream) {
            co_return modelpool::unexpected<modelpool::PoolError>(stream.error());
        }
        co_return co_await drain(*stream);
    }
    if (key == describer || key == broken) {
        const bool ocr = key == describer && d.ocr; // an OCR model reads pages of text, line by line
        const std::string query = ocr ? "lines" : "colours";
        const auto& inputs = ocr ? d.pages : d.images;
        auto stream = co_await pool.describe_image(key, inputs[i % inputs.size()], query);
        if (!stream) {
            co_return modelpool::unexpected<modelpool::PoolError>(stream.error());
        }
        co_return co_await drain(*stream);
    }
    // Small images in the cold-start burst; bigger ones (more work per request) under load.
    const std::uint32_t side = i >= 1000 && !d.options.smoke ? 256 : 64;
    modelpool::ImageConfig config{.width = side, .height = side, .steps = 4, .seed = i};
    const std::string prompt = "a red disc on a blue background";
    auto stream = co_await pool.generate_image(key, prompt, config);
    if (!stream) {
        co_return modelpool::unexpected<modelpool::PoolError>(stream.error());
    }
    co_return co_await drain(*stream);
}

/// `one_request`, timed and tallied. (A function, not a capturing lambda: a lambda coroutine's captures die
/// with the lambda, before a deferred coroutine even starts.)
asio::awaitable<void> timed_request(Demo& d, std::string_view key, std::size_t i) {
    const auto start = clock_type::now();
    auto outcome = co_await one_request(d, key, i);
    d.tally.record(key, clock_type::now() - start, outcome ? nullptr : &outcome.error());
}

/// Runs `count` requests per key, all at once, and waits for all of them.
asio::awaitable<void> burst(Demo& d, const std::vector<std::string_view>& keys, std::size_t count) {
    auto executor = co_await asio::this_coro::executor;
    using op_type = decltype(asio::co_spawn(executor, std::declval<asio::awaitable<void>>(), asio::deferred));
    std::vector<op_type> ops;
    for (std::size_t i = 0; i < count; ++i) {
        for (auto key : keys) {
            ops.push_back(asio::co_spawn(executor, timed_request(d, key, i), asio::deferred));
        }
    }
    co_await asio::experimental::make_parallel_group(std::move(ops))
        .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
}

/// Sleeps on the pool's clock-free steady timer (the demo's pacing, not synchronisation).
asio::awaitable<void> pause(clock_type::duration how_long) {
    asio::steady_timer timer(co_await asio::this_coro::executor, how_long);
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
}

asio::awaitable<void> phase_cold_start(Demo& d, demo::StatusBoard& board) {
    const std::size_t per_key = d.options.smoke ? 8 : 64;
    board.say(fmt::format(
        "\n== 1. cold start: {} concurrent requests to each of 5 models (0 -> 2 workers each)", per_key));
    co_await burst(d, working_models, per_key);
    for (auto key : working_models) {
        auto loads = d.workers.count(key, modelpool::WorkerEventKind::spawned);
        // Exactly two (no over-spawning however many requests arrive at once); the painter may already scale
        // up.
        const bool ok = key == painter ? loads >= 2 : loads == 2;
        d.checks.check(d.interrupted() || ok, "{}: the burst started {} workers, expected 2", key, loads);
    }
}

asio::awaitable<void> phase_search_and_stream(Demo& d) {
    std::printf("\n== 2. nearest-sentence search over %zu sentences of Aesop's fables\n", d.corpus.size());
    const std::string query = "slow and steady wins the race";
    auto corpus = co_await d.pool.batch_embed(sentences, d.corpus);
    auto q = co_await d.pool.embed(sentences, query);
    if (!corpus || !q) {
        d.checks.check(d.interrupted(), "search failed: {}", !corpus ? corpus.error() : q.error());
        co_return;
    }
    std::size_t best = 0;
    for (std::size_t i = 1; i < corpus->size(); ++i) {
        if (demo::cosine_similarity(*q, (*corpus)[i]) > demo::cosine_similarity(*q, (*corpus)[best])) {
            best = i;
        }
    }
    std::printf("query:   %s\nnearest: %s (cosine %.3f)\n", query.c_str(), d.corpus[best].c_str(),
                demo::cosine_similarity(*q, (*corpus)[best]));
    d.checks.check(d.corpus[best].find("steady") != std::string::npos,
                   "the nearest sentence to '{}' is '{}', expected the tortoise's moral", query,
                   d.corpus[best]);

    std::printf("\n== 3. a fable generated %s by %s (text_to_text stream)\n",
                d.char_level ? "character" : "word", d.char_level ? "character" : "word");
    modelpool::GenerationParams params{.max_tokens = d.options.smoke ? 16u : 80u, .seed = 2026};
    const std::string prompt = "The Lion";
    auto stream = co_await d.pool.prompt(fables, prompt, params);
    if (!stream) {
        d.checks.check(d.interrupted(), "prompt failed: {}", stream.error());
        co_return;
    }
    std::printf("The Lion");
    std::size_t tokens = 0;
    for (;;) {
        auto chunk = co_await stream->async_next();
        if (!chunk || !*chunk) {
            d.checks.check(chunk.has_value() || d.interrupted(), "the stream failed: {}",
                           chunk ? std::string() : chunk.error().to_string());
            break;
        }
        if (auto* text = std::get_if<modelpool::TextChunk>(&**chunk)) {
            ++tokens;
            std::printf("%s", text->text.c_str());
            std::fflush(stdout);
        } else if (auto* stats = std::get_if<modelpool::CompletionStats>(&**chunk)) {
            std::printf("\n[%zu tokens, finish: %s]\n", stats->token_count, stats->finish_reason.c_str());
        }
    }
    d.checks.check(d.interrupted() || tokens > 0, "the generated fable is empty");
}

/// A client of the load phase: image requests one after another until `until` (at least two, so the queue
/// builds up even on a fast machine).
asio::awaitable<void> load_client(Demo& d, std::size_t client, clock_type::time_point until) {
    for (std::size_t i = 0; !d.interrupted() && (i < 2 || clock_type::now() < until); ++i) {
        co_await timed_request(d, painter, 1000 * client + i);
    }
}

asio::awaitable<void> phase_scaling(Demo& d, demo::StatusBoard& board) {
    const auto duration = std::chrono::duration_cast<clock_type::duration>(
        std::chrono::duration<double>(d.options.smoke ? 0.5 : d.demo_options.duration_s));
    const std::size_t clients = 12;
    board.say(fmt::format("\n== 4. scaling under load: {} clients generate images for {:.1f} s "
                          "(painter: 2 workers, up to {})",
                          clients, std::chrono::duration<double>(duration).count(),
                          d.pool.snapshot(painter)->max_workers));
    const auto until = clock_type::now() + duration;
    auto executor = co_await asio::this_coro::executor;
    using op_type = decltype(asio::co_spawn(executor, std::declval<asio::awaitable<void>>(), asio::deferred));
    std::vector<op_type> ops;
    for (std::size_t c = 0; c < clients; ++c) {
        ops.push_back(asio::co_spawn(executor, load_client(d, c, until), asio::deferred));
    }
    co_await asio::experimental::make_parallel_group(std::move(ops))
        .async_wait(asio::experimental::wait_for_all(), asio::use_awaitable);
    const auto spawned = d.workers.count(painter, modelpool::WorkerEventKind::spawned);
    d.checks.check(d.interrupted() || spawned > 2,
                   "painter: {} workers spawned under load, expected more than 2", spawned);
}

asio::awaitable<void> phase_load_failure(Demo& d, demo::StatusBoard& board) {
    board.say("\n== 5. a model whose weight file is missing (HTTP 404): its load is retried once");
    const auto start = clock_type::now();
    auto outcome = co_await one_request(d, broken, 0);
    d.tally.record(broken, clock_type::now() - start, outcome ? nullptr : &outcome.error());
    board.say(fmt::format("request to '{}' ended with: {}", broken,
                          outcome ? std::string("a result?!") : outcome.error().to_string()));
    d.checks.check(d.interrupted() || (!outcome && outcome.error().code() == modelpool::errc::spawn_failed),
                   "the request to '{}' should end with spawn_failed", broken);
}

asio::awaitable<void> phase_eviction(Demo& d, demo::StatusBoard& board) {
    const auto idle = d.pool.options().idle_timeout;
    board.say(fmt::format("\n== 6. idle eviction: workers idle for {} ms are evicted, one per model per tick",
                          idle.count()));
    const auto start = clock_type::now();
    const auto deadline = start + 10 * idle + 5s;
    while (!d.interrupted() && d.pool.governor().allocated_mb() > 0 && clock_type::now() < deadline) {
        co_await pause(50ms);
    }
    board.say(
        fmt::format("after {} ms: {} workers evicted in all, {} MB allocated",
                    std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - start).count(),
                    d.pool.metrics().workers_evicted, d.pool.governor().allocated_mb()));
    d.checks.check(d.interrupted() || d.pool.governor().allocated_mb() == 0,
                   "{} MB still allocated after the cooldown", d.pool.governor().allocated_mb());
}

asio::awaitable<void> run_demo(Demo& d) {
    auto board = std::make_shared<demo::StatusBoard>(
        d.pool, std::vector<std::string>{std::string(sentences), std::string(fables), std::string(colors),
                                         std::string(describer), std::string(painter), std::string(broken)});
    asio::co_spawn(d.pool.get_executor(), board->run(), asio::detached);
    co_await phase_cold_start(d, *board);
    if (!d.interrupted()) {
        board->pause(); // the text phases print to the terminal themselves
        co_await phase_search_and_stream(d);
        board->resume();
    }
    if (!d.interrupted()) {
        co_await phase_scaling(d, *board);
    }
    if (!d.interrupted()) {
        co_await phase_load_failure(d, *board);
    }
    if (!d.interrupted()) {
        co_await phase_eviction(d, *board);
    }
    board->stop();
}

double percentile(std::vector<double> values, double q) {
    if (values.empty()) {
        return 0.0;
    }
    std::sort(values.begin(), values.end());
    return values[static_cast<std::size_t>(q * static_cast<double>(values.size() - 1) + 0.5)];
}

void print_table(const Demo& d) {
    std::printf("\n== 7. summary\n%-10s %8s %8s %9s %9s %9s %8s %8s  %s\n", "model", "requests", "ok",
                "p50 ms", "p99 ms", "max ms", "spawned", "evicted", "errors");
    for (const auto& [key, row] : d.tally.rows()) {
        std::size_t errors = 0;
        std::string by_code;
        for (const auto& [code, n] : row.errors) {
            errors += n;
            by_code += fmt::format("{}{} {}", by_code.empty() ? "" : ", ", n, code);
        }
        std::printf("%-10s %8zu %8zu %9.2f %9.2f %9.2f %8zu %8zu  %s\n", key.c_str(), row.latencies_ms.size(),
                    row.latencies_ms.size() - errors, percentile(row.latencies_ms, 0.5),
                    percentile(row.latencies_ms, 0.99), percentile(row.latencies_ms, 1.0),
                    d.workers.count(key, modelpool::WorkerEventKind::spawned),
                    d.workers.count(key, modelpool::WorkerEventKind::evicted), by_code.c_str());
    }
    const auto memory = d.pool.governor().stats();
    std::printf("memory: peak %zu of %zu MB, %zu MB now; weight server: %zu requests, %zu bytes\n",
                memory.peak_mb, memory.limit_mb, memory.allocated_mb, d.server.requests_served(),
                d.server.bytes_served());
}

/// The demo's inputs: the fables' sentences and test images, generated on first run (blocking file I/O on
/// main's thread). The models' own files are prepared when they are registered.
struct Files {
    std::vector<std::string> corpus;
    std::vector<std::string> images;
    std::vector<std::string> pages; // rendered text, for an OCR model
};

/// Lines of the fables rendered as images (first run only), for an OCR model to read.
std::vector<std::string> prepare_pages([[maybe_unused]] const demo::WeightStore& store,
                                       [[maybe_unused]] const std::vector<std::string>& corpus) {
    std::vector<std::string> pages;
#if defined(MODELPOOL_HAVE_TESSERACT)
    for (std::size_t i = 0; i < 4 && i < corpus.size(); ++i) {
        // A sentence cut into lines of at most ~40 characters, as a page would show it.
        std::vector<std::string> lines{""};
        for (std::size_t at = 0; at < corpus[i].size();) {
            auto end = corpus[i].find(' ', at);
            end = end == std::string::npos ? corpus[i].size() : end;
            const auto word = corpus[i].substr(at, end - at);
            if (!lines.back().empty() && lines.back().size() + 1 + word.size() > 40) {
                lines.emplace_back();
            }
            lines.back() += (lines.back().empty() ? "" : " ") + word;
            at = end + 1;
        }
        auto path = store.ensure(fmt::format("demo-page-{}.png", i), [&] {
            auto png = runtimes::tesseract_ocr::render_text_png(lines);
            if (!png) {
                throw std::runtime_error(png.error().to_string());
            }
            return std::move(*png);
        });
        pages.push_back(path.string());
    }
#endif
    return pages;
}

Files prepare_files(const demo::WeightStore& store) {
    Files files;
    const auto text = store.contents(demo::ensure_aesop_text(store).filename().string());
    files.corpus = demo::fable_sentences(*text);
    const std::vector<demo::Scene> scenes = {
        {.shape = demo::Shape::disc, .foreground = demo::color_named("red"), .seed = 1},
        {.shape = demo::Shape::square, .foreground = demo::color_named("blue"), .seed = 2},
        {.shape = demo::Shape::stripes, .foreground = demo::color_named("green"), .seed = 3},
        {.shape = demo::Shape::gradient, .foreground = demo::color_named("yellow"), .seed = 4},
    };
    for (std::size_t i = 0; i < scenes.size(); ++i) {
        const auto& scene = scenes[i];
        auto path = store.ensure(fmt::format("demo-scene-{}.png", i),
                                 [&] { return demo::encode_png(demo::render_scene(scene, 96, 96)); });
        files.images.push_back(path.string());
    }
    files.pages = prepare_pages(store, files.corpus);
    return files;
}

/// Which built-in model serves each key: per capability, the real runtime when this build has it.
struct Lineup {
    Lineup() = default;
    Lineup(const Lineup&) = delete; // the references below point into `models`
    Lineup& operator=(const Lineup&) = delete;

    std::vector<demo::BuiltinModel> models = demo::builtin_models();
    const demo::BuiltinModel& text_embedding = demo::preferred_builtin(models, "text_embedding");
    const demo::BuiltinModel& text_to_text = demo::preferred_builtin(models, "text_to_text");
    const demo::BuiltinModel& image_embedding = demo::preferred_builtin(models, "image_embedding");
    const demo::BuiltinModel& vision = demo::preferred_builtin(models, "vision");
    const demo::BuiltinModel& text_to_image = demo::preferred_builtin(models, "text_to_image");

    void print() const {
        std::printf("models (a real runtime where this build has one, a demo model otherwise):\n");
        const std::pair<std::string_view, const demo::BuiltinModel*> rows[] = {{sentences, &text_embedding},
                                                                               {fables, &text_to_text},
                                                                               {colors, &image_embedding},
                                                                               {describer, &vision},
                                                                               {painter, &text_to_image}};
        for (const auto& [key, model] : rows) {
            std::printf("  %-10s %-15s %-18s %s\n", std::string(key).c_str(),
                        std::string(model->capability).c_str(), std::string(model->name).c_str(),
                        std::string(model->description).c_str());
        }
    }
};

/// Registers the five models (and the broken one); their loaders fetch their files from `server`.
void register_models(const Lineup& lineup, const demo::BuiltinContext& context, demo::Checks& checks) {
    const modelpool::ModelOptions small{.max_workers = 2}; // per_worker_mb 0: the model's own figure
    // The embedders batch the requests that queue while their workers are busy (no added latency when idle).
    const modelpool::ModelOptions batched{.max_workers = 2, .batching = {.max_batch_size = 16}};
    const std::vector<std::pair<std::string_view, modelpool::result<void>>> registered = {
        {sentences, lineup.text_embedding.register_model(context, sentences, batched)},
        {fables, lineup.text_to_text.register_model(context, fables, small)},
        {colors, lineup.image_embedding.register_model(context, colors, batched)},
        {describer, lineup.vision.register_model(context, describer, small)},
        {painter, lineup.text_to_image.register_model(context, painter, {.max_workers = 4})},
        {broken, context.pool.register_vision_model(
                     broken,
                     demo::ShapeDescriber::loader(context.files.url("no-such-weights.txt"),
                                                  context.pool.blocking_executor()),
                     {.per_worker_mb = 64, .max_workers = 2})},
    };
    for (const auto& [key, r] : registered) {
        checks.check(r.has_value(), "registering '{}' failed: {}", key,
                     r ? std::string() : r.error().to_string());
    }
}

} // namespace

int main(int argc, char** argv) {
    DemoOptions demo_options;
    const demo::ExtraArgument duration{
        .name = "--duration",
        .usage = "--duration SECONDS  how long the load phase lasts (default 5)",
        .parse = [&](std::string_view value) {
            demo_options.duration_s = std::strtod(std::string(value).c_str(), nullptr);
            return demo_options.duration_s > 0 && demo_options.duration_s <= 3600;
        }};
    return demo::example_main(
        argc, argv, "demo", "the whole lifecycle of five models (real runtimes where built)", {duration},
        [&](const demo::ExampleOptions& options, demo::Checks& checks) {
            const demo::WeightStore store(options.cache_dir);
            const auto files = prepare_files(store);

            WorkerCounts workers;
            // Short lifecycle delays so the demo shows them within seconds (production defaults: minutes).
            modelpool::Pool pool(
                {.io_threads = 1,
                 .blocking_threads =
                     4, // the real runtimes load and run there: one slow load holds no other back
                 .memory_limit_mb = 2048,
                 .logger = options.logger,
                 .upscale_delay = 100ms,
                 .idle_timeout = options.smoke ? 300ms : 1500ms,
                 .maintenance_interval = 100ms,
                 .load_retries = 1,
                 .retry_backoff_initial = 100ms,
                 .retry_backoff_max = 1000ms,
                 .on_worker_event = [&](const modelpool::WorkerEvent& e) { workers.on_event(e); }});
            demo::WeightServer server(pool.get_executor(), store);
            modelpool::StopOnSignals on_signals(pool); // Ctrl+C: graceful stop; twice: immediate
            const Lineup lineup;
            lineup.print();
            register_models(lineup, {.pool = pool, .store = store, .files = server}, checks);

            Demo d{.pool = pool,
                   .options = options,
                   .demo_options = demo_options,
                   .checks = checks,
                   .server = server,
                   .corpus = files.corpus,
                   .images = files.images,
                   .pages = files.pages,
                   .ocr = lineup.vision.name == "tesseract",
                   .char_level = lineup.text_to_text.name == "char-rnn",
                   .tally = {},
                   .workers = workers};
            demo::run_coroutine(pool.get_executor(),
                                run_demo(d)); // main's thread waits; no pool thread blocks
            const bool interrupted = pool.stopping();
            print_table(d);
            std::printf("\n== Prometheus metrics (pool.prometheus())\n%s", pool.prometheus().c_str());
            server.close();
            pool.stop();
            if (interrupted) {
                std::printf("\nstopped by a signal: every request ended, %zu MB held\n",
                            pool.governor().allocated_mb());
                return 0;
            }
            checks.check(pool.governor().allocated_mb() == 0, "{} MB held after stop",
                         pool.governor().allocated_mb());
            return 0;
        });
}
