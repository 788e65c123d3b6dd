// modelpool example: text_to_text with a real network on libtorch, a character-level GRU that learned Aesop's
// Fables (scripts/train_char_rnn.py; the TorchScript file examples/data/char_rnn.pt).
//
// Shows: a worker spawned with `runtimes::char_rnn_loader`, whose blocking torch::jit::load runs on the
// pool's blocking executor (`modelpool::offload`), never on an io thread; the model's BLOCKING `prompt`
// member, which the pool runs on that executor and which streams one chunk per sampled character with
// `send_blocking`; generation parameters (max_tokens in characters, temperature, top_p, seed, stop
// sequences); a reader that leaves early; clear errors for a missing or corrupt model file and for bad
// parameters; the RSS a loaded worker costs (how `runtimes::char_rnn_per_worker_mb` was chosen).
//
// `--smoke` checks the output: a seed gives the same text twice (coroutine and future styles) and another
// seed another text; without a stop sequence the text is exactly max_tokens characters of the vocabulary and
// the stats count them; a stop sequence (" the") ends the text right before it, which the same seed without
// the stop sequence confirms; temperature 0 is deterministic without a seed; a reader that leaves after 3
// chunks makes the model stop within one character (the model's sample counter), and the worker serves the
// next request; a missing and a corrupt file fail with spawn_failed naming the path; bad temperature / top_p
// fail with invalid_argument naming the field; after stop the governor holds 0 MB.
#include "runtimes/char_rnn.hpp"
#include "support/example_main.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <unistd.h>

namespace {

namespace asio = modelpool::asio;
using modelpool::CompletionChunk;
using modelpool::GenerationParams;

constexpr std::string_view key = "char-rnn";
constexpr std::size_t stream_capacity = 4; // chunks the model may run ahead of its reader

/// The shipped TorchScript file (MODELPOOL_EXAMPLES_DATA_DIR is examples/data, set by
/// examples/CMakeLists.txt).
std::filesystem::path model_path() {
#ifdef MODELPOOL_EXAMPLES_DATA_DIR
    return std::filesystem::path(MODELPOOL_EXAMPLES_DATA_DIR) / "char_rnn.pt";
#else
    return "examples/data/char_rnn.pt";
#endif
}

/// This process's resident set size in MB (Linux /proc/self/statm), 0 when unavailable.
double rss_mb() {
    std::ifstream statm("/proc/self/statm");
    double pages = 0;
    double resident = 0;
    statm >> pages >> resident;
    return resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

/// This process's peak resident set size in MB (VmHWM in /proc/self/status), 0 when unavailable.
double peak_rss_mb() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with("VmHWM:")) {
            return std::stod(line.substr(6)) / 1024.0; // kB
        }
    }
    return 0;
}

/// What one stream delivered.
struct Generated {
    std::string text;
    std::size_t chunks = 0;
    std::optional<modelpool::CompletionStats> stats;
    std::optional<modelpool::PoolError> error;

    /// Takes one `async_next` result; false once the stream has ended.
    bool add(const modelpool::result<std::optional<CompletionChunk>>& next) {
        if (!next || !*next) {
            error = next ? std::nullopt : std::optional(next.error());
            return false;
        }
        if (const auto* chunk = std::get_if<modelpool::TextChunk>(&**next)) {
            text += chunk->text;
            ++chunks;
        } else if (const auto* end = std::get_if<modelpool::CompletionStats>(&**next)) {
            stats = *end;
        }
        return true;
    }

    std::string describe() const {
        if (error) {
            return "error " + error->to_string();
        }
        return fmt::format("'{}' ({} chars, finish '{}', stats count {})", text, text.size(),
                           stats ? stats->finish_reason : "none", stats ? stats->token_count : 0);
    }
};

/// Coroutine style: sends the prompt and reads the whole stream, on the pool's io_context.
asio::awaitable<Generated> generate(modelpool::Pool& pool, std::string_view to, std::string prompt,
                                    GenerationParams params) {
    Generated out;
    // Named first, then awaited: g++ 12 miscompiles class temporaries holding strings in a co_await operand.
    auto request = pool.prompt(to, std::move(prompt), std::move(params));
    auto stream = co_await std::move(request);
    if (!stream) {
        out.error = stream.error();
        co_return out;
    }
    while (out.add(co_await stream->async_next())) {
    }
    co_return out;
}

/// Coroutine style: reads `chunks` chunks of a long generation, then closes the stream (the model is told to
/// stop: its next send returns false).
asio::awaitable<Generated> read_then_leave(modelpool::Pool& pool, std::size_t chunks) {
    Generated out;
    auto request = pool.prompt(key, "The Lion", {.max_tokens = 5000, .temperature = 0.8, .seed = 3});
    auto stream = co_await std::move(request);
    if (!stream) {
        out.error = stream.error();
        co_return out;
    }
    while (out.chunks < chunks && out.add(co_await stream->async_next())) {
    }
    stream->close();
    co_return out;
}

/// Future style, from main's thread (never from a pool thread: get() blocks).
Generated generate_with_futures(modelpool::Pool& pool, std::string prompt, GenerationParams params) {
    Generated out;
    auto stream = pool.prompt(key, std::move(prompt), std::move(params), asio::use_future).get();
    if (!stream) {
        out.error = stream.error();
        return out;
    }
    while (out.add(stream->async_next(asio::use_future).get())) {
    }
    return out;
}

/// The checks every generation of exactly `max_tokens` characters (no stop sequence) passes.
void check_length(demo::Checks& checks, const Generated& out, std::size_t max_tokens,
                  const std::string& vocab, std::string_view what) {
    if (!checks.check(!out.error && out.stats, "{}: {}", what, out.describe())) {
        return;
    }
    checks.check(out.text.size() == max_tokens && out.stats->token_count == max_tokens &&
                     out.stats->finish_reason == "length",
                 "{}: asked for {} characters, got {}", what, max_tokens, out.describe());
    checks.check(out.text.find_first_not_of(vocab) == std::string::npos,
                 "{}: a character outside the vocabulary "
                 "in {}",
                 what, out.describe());
}

/// Checks that `out` failed with `code` and a message containing `needle`.
void check_error(demo::Checks& checks, const Generated& out, modelpool::errc code, std::string_view needle,
                 std::string_view what) {
    checks.check(
        out.error && out.error->code() == code && out.error->message().find(needle) != std::string::npos,
        "{}: expected {} mentioning '{}', got {}", what, modelpool::to_string(code), needle, out.describe());
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(
        argc, argv, "torch_generator", "a char-level GRU on libtorch, streamed by a blocking worker",
        [](const demo::ExampleOptions& options, demo::Checks& checks) {
            const auto path = model_path();
            std::filesystem::create_directories(options.cache_dir);
            const auto missing = options.cache_dir / "no-such-model.pt";
            std::filesystem::remove(missing);
            const auto corrupt = options.cache_dir / "corrupt-model.pt";
            std::ofstream(corrupt, std::ios::binary | std::ios::trunc)
                << "this is not a TorchScript archive\n";

            modelpool::Pool pool({.io_threads = 1,
                                  .blocking_threads = 2,
                                  .memory_limit_mb = 256,
                                  .stream_capacity = stream_capacity,
                                  .logger = options.logger,
                                  .load_retries = 0}); // a bad file stays bad: fail its requests at once
            auto counters = std::make_shared<runtimes::CharRnnCounters>();

            // The vocabulary, from an engine loaded on main's thread (blocking is fine here) and freed again.
            // It also pays libtorch's one-time process-wide setup, so that the RSS growth measured next is
            // what each loaded worker costs.
            const double rss_start = rss_mb();
            std::string vocab;
            {
                auto probe = runtimes::CharRnnEngine::load(path);
                if (!checks.ok(probe, "loading the model on main's thread")) {
                    return;
                }
                vocab = probe->vocabulary();
            }
            const double rss_before = rss_mb();

            // One worker, spawned: returns at once; torch::jit::load runs on the blocking executor meanwhile.
            const auto loader = runtimes::char_rnn_loader(pool.blocking_executor(), path, counters);
            if (!demo::reserve_and_spawn(pool, checks, key, runtimes::char_rnn_per_worker_mb,
                                         [&](modelpool::AllocationGuard guard) {
                                             return pool.spawn_text_to_text_worker(
                                                 key, loader, runtimes::char_rnn_per_worker_mb,
                                                 std::move(guard));
                                         })) {
                return;
            }

            // Coroutine style: a seeded generation (it waits for the load).
            const std::size_t length = options.smoke ? 60 : 300;
            const GenerationParams seeded{.max_tokens = length, .temperature = 0.8, .seed = 42};
            const auto first =
                demo::run_coroutine(pool.get_executor(), generate(pool, key, "The Fox", seeded));
            const double rss_one = rss_mb();
            fmt::print("The Fox{}\n", first.text);
            check_length(checks, first, length, vocab, "seed 42");
            if (first.stats) {
                fmt::print("[{} characters, finish '{}', {:.0f} characters/s]\n", first.stats->token_count,
                           first.stats->finish_reason, first.stats->tokens_per_second);
            }

            // Future style from main's thread: the same seed gives the same text; another seed another one.
            const auto again = generate_with_futures(pool, "The Fox", seeded);
            check_length(checks, again, length, vocab, "seed 42 again");
            checks.check(again.text == first.text, "same seed, other text: '{}' vs '{}'", again.text,
                         first.text);
            auto other_seed = seeded;
            other_seed.seed = 43;
            const auto other = generate_with_futures(pool, "The Fox", other_seed);
            check_length(checks, other, length, vocab, "seed 43");
            checks.check(other.text != first.text, "seeds 42 and 43 gave the same text '{}'", other.text);

            // Temperature 0: greedy, the same text without a seed.
            const GenerationParams greedy{.max_tokens = length, .temperature = 0.0};
            const auto greedy_a = generate_with_futures(pool, "The Wolf", greedy);
            const auto greedy_b = generate_with_futures(pool, "The Wolf", greedy);
            check_length(checks, greedy_a, length, vocab, "greedy");
            checks.check(greedy_a.text == greedy_b.text, "greedy texts differ: '{}' vs '{}'", greedy_a.text,
                         greedy_b.text);
            fmt::print("greedy: The Wolf{}\n", greedy_a.text);

            // A stop sequence: the text ends right before " the", which the same seed without it confirms.
            const GenerationParams unstopped{.max_tokens = 400, .temperature = 0.8, .seed = 7};
            auto stopped_params = unstopped;
            stopped_params.stop = {" the", "zzz"};
            const auto full = generate_with_futures(pool, "A Crow", unstopped);
            const auto stopped = generate_with_futures(pool, "A Crow", stopped_params);
            checks.check(!stopped.error && stopped.stats && stopped.stats->finish_reason == "stop" &&
                             stopped.stats->token_count == stopped.text.size() &&
                             stopped.text.find(" the") == std::string::npos &&
                             full.text.starts_with(stopped.text + " the"),
                         "stop ' the': got {}; without the stop sequence: {}", stopped.describe(),
                         full.describe());
            fmt::print("up to ' the': A Crow{}\n", stopped.text);

            // Characters outside the vocabulary are skipped; an empty prompt starts a paragraph.
            const auto unicode = generate_with_futures(pool, "Ünïcödé ✓ {}", {.max_tokens = 20, .seed = 1});
            check_length(checks, unicode, 20, vocab, "non-ASCII prompt");
            const auto empty = generate_with_futures(pool, "", {.max_tokens = 20, .seed = 1});
            check_length(checks, empty, 20, vocab, "empty prompt");

            // A reader that leaves after 3 chunks: the model stops within one character of the stream's
            // buffer (it can run at most `stream_capacity` chunks ahead, plus the one whose send fails), and
            // the worker serves the next request. One worker: that request starts after the dropped one
            // ended.
            const auto sampled_before = counters->sampled.load();
            const auto left = demo::run_coroutine(pool.get_executor(), read_then_leave(pool, 3));
            checks.check(left.chunks == 3 && !left.error, "early reader: {}", left.describe());
            const auto after = generate_with_futures(pool, "The Mouse", {.max_tokens = 5, .seed = 5});
            check_length(checks, after, 5, vocab, "after the early reader");
            const auto dropped_sampled = counters->sampled.load() - sampled_before - 5;
            checks.check(counters->abandoned.load() == 1 && dropped_sampled <= 3 + stream_capacity + 1,
                         "the dropped generation sampled {} characters (3 read, buffer {}), abandoned {}",
                         dropped_sampled, stream_capacity, counters->abandoned.load());
            fmt::print("a reader left after 3 chunks: the model sampled {} of 5000 characters\n",
                       dropped_sampled);

            // Bad parameters: invalid_argument naming the field and the value.
            check_error(checks, generate_with_futures(pool, "x", {.temperature = -1.0}),
                        modelpool::errc::invalid_argument, "temperature", "temperature -1");
            check_error(checks, generate_with_futures(pool, "x", {.top_p = 0.0}),
                        modelpool::errc::invalid_argument, "top_p", "top_p 0");

            // A missing and a corrupt file: the spawn fails, naming the path (registered keys: the request
            // triggers the load and receives its error).
            for (const auto& bad : {missing, corrupt}) {
                const auto bad_key = bad.stem().string();
                checks.ok(pool.register_text_to_text_model(
                              bad_key, runtimes::char_rnn_loader(pool.blocking_executor(), bad),
                              {.per_worker_mb = runtimes::char_rnn_per_worker_mb, .max_workers = 1}),
                          "registering a bad model");
                const auto failed =
                    demo::run_coroutine(pool.get_executor(), generate(pool, bad_key, "x", {}));
                check_error(checks, failed, modelpool::errc::spawn_failed, bad.string(), bad_key);
                if (failed.error) {
                    fmt::print("{}: {}\n", bad_key, failed.error->to_string());
                }
            }

            // Memory: a second loaded worker (another key, so the one above keeps serving alone).
            if (demo::reserve_and_spawn(pool, checks, "char-rnn-2", runtimes::char_rnn_per_worker_mb,
                                        [&](modelpool::AllocationGuard guard) {
                                            return pool.spawn_text_to_text_worker(
                                                "char-rnn-2",
                                                runtimes::char_rnn_loader(pool.blocking_executor(), path),
                                                runtimes::char_rnn_per_worker_mb, std::move(guard));
                                        })) {
                const auto second =
                    demo::run_coroutine(pool.get_executor(), generate(pool, "char-rnn-2", "The Fox", seeded));
                checks.check(second.text == first.text, "another worker, same seed, other text: '{}'",
                             second.text);
            }
            const double rss_two = rss_mb();

            // A prompt longer than the network reads (char_rnn_max_context): its tail is used, in bounded
            // time and memory (the peak RSS shows the transient activations of a full-context pass).
            std::string long_prompt;
            while (long_prompt.size() < 3 * runtimes::char_rnn_max_context) {
                long_prompt += "The Fox and the Grapes. ";
            }
            const double peak_before = peak_rss_mb();
            const auto long_out = generate_with_futures(pool, long_prompt, {.max_tokens = 10, .seed = 2});
            check_length(checks, long_out, 10, vocab, "long prompt");
            const double peak_after = peak_rss_mb();
            fmt::print("RSS: {:.1f} MB at start, +{:.1f} MB for libtorch's one-time setup (a load on main's "
                       "thread, freed); +{:.1f} MB for the first loaded worker (and its first requests), "
                       "+{:.1f} MB for a second one; peak +{:.1f} MB during a {}-character prompt; "
                       "per_worker_mb = {}\n",
                       rss_start, rss_before - rss_start, rss_one - rss_before, rss_two - rss_one,
                       peak_after - peak_before, long_prompt.size(), runtimes::char_rnn_per_worker_mb);

            if (!options.smoke) { // a little more: the same prompt at three temperatures
                for (double temperature : {0.3, 0.7, 1.2}) {
                    const auto sample = generate_with_futures(
                        pool, "The Hare", {.max_tokens = 200, .temperature = temperature, .seed = 11});
                    fmt::print("temperature {}: The Hare{}\n", temperature, sample.text);
                }
            }
            const auto m = pool.metrics();
            fmt::print("{} requests, {} succeeded; {} characters sampled by the char-rnn worker\n",
                       m.requests, m.succeeded, counters->sampled.load());
            pool.stop();
            checks.check(pool.governor().allocated_mb() == 0, "{} MB held after stop",
                         pool.governor().allocated_mb());
        });
}
