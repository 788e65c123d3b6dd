// modelpool example: text_to_text, streamed generation from a word trigram model of Aesop's Fables.
//
// Shows: a worker spawned with an asynchronous loader (`pool.spawn_text_to_text_worker`), which fetches the
// fables over loopback HTTP from a WeightServer on the pool's own io_context and trains on them; the
// capability's operation, `prompt`, called from a coroutine on the pool (`co_await pool.prompt(...)`, then
// `co_await stream->async_next()` per chunk) and from main's thread (`asio::use_future`); generation
// parameters (max_tokens, seed, temperature, stop sequences); a reader that leaves early (closing the stream
// stops the model); then a stop.
//
// The model is a demo, not a neural network (examples/models/ngram_generator.hpp): every word it writes is a
// word of the fables, chosen by what followed the previous two words there.
//
// `--smoke` checks the output: the stream yields exactly max_tokens words, each a word of the text, then
// stats that count them; the same seed gives the same text in both calling styles; temperature 0 ignores the
// seed; a stop sequence ends the text before it; a stream closed after two words frees the worker.
#include "models/aesop_text.hpp"
#include "models/ngram_generator.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using modelpool::CompletionChunk;
using modelpool::GenerationParams;

constexpr std::string_view key = "ngram-gen";

/// What one stream delivered.
struct Generated {
    std::vector<std::string> tokens;
    std::optional<modelpool::CompletionStats> stats;
    std::optional<modelpool::PoolError> error;
    bool echo = false; // print the tokens as they arrive

    /// Takes one `async_next` result; false once the stream has ended.
    bool add(const modelpool::result<std::optional<CompletionChunk>>& next) {
        if (!next || !*next) {
            error = next ? std::nullopt : std::optional(next.error());
            return false;
        }
        if (const auto* text = std::get_if<modelpool::TextChunk>(&**next)) {
            tokens.push_back(text->text);
            if (echo) {
                fmt::print("{}", text->text);
                std::fflush(stdout);
            }
        } else if (const auto* end = std::get_if<modelpool::CompletionStats>(&**next)) {
            stats = *end;
        }
        return true;
    }

    std::string text() const {
        std::string joined;
        for (const auto& token : tokens) {
            joined += token;
        }
        return joined;
    }
};

/// Coroutine style: sends the prompt and reads the whole stream, on the pool's io_context.
asio::awaitable<Generated> generate(modelpool::Pool& pool, std::string prompt, GenerationParams params,
                                    bool echo = false) {
    Generated out;
    out.echo = echo;
    // Named first, then awaited: g++ 12 miscompiles class temporaries (the prompt string, the parameters)
    // inside a co_await operand.
    auto request = pool.prompt(key, std::move(prompt), std::move(params));
    auto stream = co_await std::move(request);
    if (!stream) {
        out.error = stream.error();
        co_return out;
    }
    for (;;) {
        auto next = co_await stream->async_next();
        if (!out.add(next)) {
            co_return out;
        }
    }
}

/// Coroutine style: reads two words, then closes the stream (the model is told to stop).
asio::awaitable<Generated> read_two_then_leave(modelpool::Pool& pool) {
    Generated out;
    auto request = pool.prompt(key, "The Lion", {.max_tokens = 1000, .seed = 3});
    auto stream = co_await std::move(request);
    if (!stream) {
        out.error = stream.error();
        co_return out;
    }
    while (out.tokens.size() < 2) {
        auto next = co_await stream->async_next();
        if (!out.add(next)) {
            break;
        }
    }
    stream->close(); // the model's next send returns false: it stops
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

/// The checks every generation of `max_tokens` words passes.
void check_words(demo::Checks& checks, const Generated& out, std::size_t max_tokens,
                 const std::set<std::string>& vocabulary) {
    if (!checks.check(!out.error, "stream ended with {}", out.error ? out.error->to_string() : "")) {
        return;
    }
    checks.check(out.tokens.size() == max_tokens, "stream gave {} words, asked for {}", out.tokens.size(),
                 max_tokens);
    for (const auto& token : out.tokens) {
        checks.check(token.size() > 1 && token.front() == ' ' && vocabulary.count(token.substr(1)) == 1,
                     "'{}' is not a word of the text", token);
    }
    checks.check(out.stats && out.stats->token_count == out.tokens.size() &&
                     out.stats->finish_reason == "length",
                 "stats: {} words, finish '{}'", out.stats ? out.stats->token_count : 0,
                 out.stats ? out.stats->finish_reason : "none");
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(
        argc, argv, "text_to_text", "streamed generation with a spawned word trigram worker",
        [](const demo::ExampleOptions& options, demo::Checks& checks) {
            demo::WeightStore store(options.cache_dir);
            const auto text_name = demo::ensure_aesop_text(store).filename().string();
            std::set<std::string> vocabulary; // the words of the text, to check the output against
            for (const auto& paragraph : demo::fable_paragraphs(*store.contents(text_name))) {
                for (auto& word : demo::NgramGenerator::split_words(paragraph)) {
                    vocabulary.insert(std::move(word));
                }
            }

            modelpool::Pool pool(
                {.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 256, .logger = options.logger});
            demo::WeightServer server(pool.get_executor(), store); // on the pool's io_context: never blocks

            // Spawn one worker: returns at once; its loader fetches the text and trains while requests queue.
            const auto loader = demo::ngram_generator_loader(server.url(text_name));
            if (!demo::reserve_and_spawn(pool, checks, key, 32, [&](modelpool::AllocationGuard guard) {
                    return pool.spawn_text_to_text_worker(key, loader, 32, std::move(guard));
                })) {
                return;
            }

            // Coroutine style: a seeded generation, streamed.
            const std::size_t words = options.smoke ? 12 : 80;
            const GenerationParams seeded{.max_tokens = words, .temperature = 0.8, .seed = 42};
            fmt::print("The Wolf");
            const auto first =
                demo::run_coroutine(pool.get_executor(), generate(pool, "The Wolf", seeded, true));
            fmt::print("\n");
            check_words(checks, first, words, vocabulary);
            if (first.stats) {
                fmt::print("[{} words, finish '{}', {:.0f} words/s]\n", first.stats->token_count,
                           first.stats->finish_reason, first.stats->tokens_per_second);
            }

            // Future style from main's thread: the same seed gives the same text.
            const auto again = generate_with_futures(pool, "The Wolf", seeded);
            check_words(checks, again, words, vocabulary);
            checks.check(again.text() == first.text(), "same seed, other text: '{}' vs '{}'", again.text(),
                         first.text());

            // Temperature 0: always the most frequent continuation, whatever the seed.
            const auto greedy_a =
                generate_with_futures(pool, "the Fox", {.max_tokens = words, .temperature = 0.0, .seed = 1});
            const auto greedy_b =
                generate_with_futures(pool, "the Fox", {.max_tokens = words, .temperature = 0.0, .seed = 2});
            check_words(checks, greedy_a, words, vocabulary);
            checks.check(greedy_a.text() == greedy_b.text(), "greedy texts differ: '{}' vs '{}'",
                         greedy_a.text(), greedy_b.text());
            fmt::print("greedy: the Fox{}\n", greedy_a.text());

            // A stop sequence: generation ends before the first full stop.
            const auto sentence = demo::run_coroutine(
                pool.get_executor(), generate(pool, "A Crow", {.max_tokens = 200, .seed = 7, .stop = {"."}}));
            checks.check(!sentence.error && sentence.stats && sentence.stats->finish_reason == "stop" &&
                             sentence.text().find('.') == std::string::npos,
                         "stop sequence: finish '{}', text '{}'",
                         sentence.stats ? sentence.stats->finish_reason : "", sentence.text());
            fmt::print("up to the first '.': A Crow{}\n", sentence.text());

            // A reader that leaves early: the model stops, and the worker serves the next request.
            const auto left = demo::run_coroutine(pool.get_executor(), read_two_then_leave(pool));
            checks.check(left.tokens.size() == 2 && !left.error, "early reader got {} words",
                         left.tokens.size());
            const auto after = generate_with_futures(pool, "The Mouse", {.max_tokens = 3, .seed = 5});
            check_words(checks, after, 3, vocabulary);

            if (!options.smoke) { // a little more: the same prompt at three temperatures
                for (double temperature : {0.3, 1.0, 2.0}) {
                    const auto sample = generate_with_futures(
                        pool, "The Hare", {.max_tokens = 30, .temperature = temperature, .seed = 11});
                    fmt::print("temperature {}: The Hare{}\n", temperature, sample.text());
                }
            }
            checks.check(server.requests_served() == 1, "weight server answered {} requests, expected 1",
                         server.requests_served());
            const auto m = pool.metrics();
            fmt::print("{} requests, {} succeeded; text fetched over HTTP: {} bytes\n", m.requests,
                       m.succeeded, server.bytes_served());
            server.close();
            pool.stop();
        });
}
