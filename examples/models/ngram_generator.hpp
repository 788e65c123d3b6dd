// examples/models/ngram_generator.hpp
//
// A text_to_text DEMO model, not a neural network: a word trigram generator trained on Aesop's Fables
// (Townsend's 1867 translation, public domain; see aesop_text.hpp). Its tokens are the words of the text as
// written (with their punctuation). Given the last two words it picks the next one among those that followed
// them in the text, weighted by count; when a pair was never seen it backs off to the last word alone, then
// to the start of a random sentence. So every token it produces is a word of the text, and it always produces
// `max_tokens` tokens unless a stop sequence ends it first.
//
// The loader fetches the text with `http_get` (non-blocking) and counts the trigrams. `prompt` is a coroutine
// streaming one word per chunk (`co_await sink.send(chunk)`, so a slow reader slows it down), ending with
// `CompletionStats`. It honours `GenerationParams`: `max_tokens`; `seed` (same seed, same prompt: same text);
// `temperature` (0: always the most frequent continuation; higher flattens the counts); `top_p` (nucleus
// sampling); `stop` sequences. It stops early when a send returns false (the reader has gone).
#pragma once

#include "models/aesop_text.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace demo {

/// The word trigram generator (see the file comment). Copyable; its tables are shared and immutable.
class NgramGenerator {
public:
    /// One possible next word and how often it followed the context.
    struct Candidate {
        std::uint32_t word;
        std::uint32_t count;
    };

    /// Trains on `text` (the fables file's contents: comment and title lines are left out); `spawn_failed`
    /// naming `source` when the text has fewer than three words.
    static modelpool::result<NgramGenerator> train(std::string_view text, std::string_view source) {
        auto tables = std::make_shared<Tables>();
        for (const auto& paragraph : fable_paragraphs(text)) {
            std::vector<std::uint32_t> ids;
            bool sentence_start = true;
            for (const auto& word : split_words(paragraph)) {
                const auto id = tables->intern(word);
                if (sentence_start) {
                    tables->starts.push_back(id);
                }
                sentence_start = ends_sentence(word.back()) || (word.size() > 1 && word.back() == '"' &&
                                                                ends_sentence(word[word.size() - 2]));
                ids.push_back(id);
            }
            for (std::size_t i = 0; i < ids.size(); ++i) {
                if (i + 1 < ids.size()) {
                    bump(tables->bigrams[ids[i]], ids[i + 1]);
                }
                if (i + 2 < ids.size()) {
                    bump(tables->trigrams[pair_key(ids[i], ids[i + 1])], ids[i + 2]);
                }
            }
        }
        if (tables->words.size() < 3 || tables->starts.empty()) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "{} has too little text to train on ({} words)", source,
                                   tables->words.size());
        }
        return NgramGenerator(std::move(tables));
    }

    /// The distinct words of the text (every token the model can produce, without its leading space).
    const std::vector<std::string>& vocabulary() const { return tables_->words; }

    /// Streams a continuation of `prompt` (see the file comment).
    asio::awaitable<modelpool::result<void>>
    prompt(const std::string& prompt, const modelpool::GenerationParams& params,
           modelpool::ChunkSink<modelpool::CompletionChunk>& sink) const {
        const auto started = std::chrono::steady_clock::now();
        std::mt19937_64 random(params.seed ? *params.seed : std::random_device{}());
        auto [previous, last] = context_of(prompt);
        std::string generated;
        std::size_t produced = 0;
        std::string finish_reason = "length";
        while (produced < params.max_tokens) {
            const std::uint32_t next = choose(previous, last, params, random);
            std::string text = ' ' + tables_->words[next];
            if (const auto cut = stop_position(generated, text, params.stop); cut != std::string::npos) {
                text.resize(cut);
                finish_reason = "stop";
            }
            generated += text;
            if (!text.empty()) {
                ++produced;
                modelpool::TextChunk chunk{std::move(text)}; // named: g++ 12 and co_await operands
                if (!co_await sink.send(chunk)) {
                    co_return modelpool::result<void>{}; // the reader has gone: stop generating
                }
            }
            if (finish_reason == "stop") {
                break;
            }
            previous = last;
            last = next;
        }
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        modelpool::CompletionStats stats{.finish_reason = finish_reason,
                                         .token_count = produced,
                                         .elapsed_seconds = elapsed,
                                         .tokens_per_second = elapsed > 0 ? produced / elapsed : 0.0};
        co_await sink.send(stats);
        co_return modelpool::result<void>{};
    }

    /// The whitespace-separated words of `text`.
    static std::vector<std::string> split_words(std::string_view text) {
        std::vector<std::string> words;
        std::size_t at = 0;
        while (at < text.size()) {
            const auto begin = text.find_first_not_of(" \t\r\n", at);
            if (begin == std::string_view::npos) {
                break;
            }
            const auto end = std::min(text.find_first_of(" \t\r\n", begin), text.size());
            words.emplace_back(text.substr(begin, end - begin));
            at = end;
        }
        return words;
    }

private:
    static constexpr std::uint32_t none = 0xffffffffu;

    struct Tables {
        std::vector<std::string> words;
        std::unordered_map<std::string, std::uint32_t> ids;       // word as written -> id
        std::unordered_map<std::string, std::uint32_t> loose_ids; // lower-cased letters only -> first id
        std::unordered_map<std::uint32_t, std::vector<Candidate>> bigrams;
        std::unordered_map<std::uint64_t, std::vector<Candidate>> trigrams;
        std::vector<std::uint32_t> starts; // first word of every sentence

        std::uint32_t intern(const std::string& word) {
            auto [it, added] = ids.try_emplace(word, static_cast<std::uint32_t>(words.size()));
            if (added) {
                words.push_back(word);
                loose_ids.try_emplace(loose(word), it->second);
            }
            return it->second;
        }
    };

    explicit NgramGenerator(std::shared_ptr<const Tables> tables) : tables_(std::move(tables)) {}

    static std::uint64_t pair_key(std::uint32_t a, std::uint32_t b) { return (std::uint64_t{a} << 32) | b; }

    static void bump(std::vector<Candidate>& candidates, std::uint32_t word) {
        auto it = std::find_if(candidates.begin(), candidates.end(),
                               [&](const Candidate& c) { return c.word == word; });
        if (it == candidates.end()) {
            candidates.push_back({word, 1});
        } else {
            ++it->count;
        }
    }

    /// A word reduced to its lower-cased letters and digits, to match prompt words.
    static std::string loose(std::string_view word) {
        std::string out;
        for (char c : word) {
            const auto u = static_cast<unsigned char>(c);
            if (std::isalnum(u)) {
                out += static_cast<char>(std::tolower(u));
            }
        }
        return out;
    }

    std::uint32_t lookup(std::string_view word) const {
        if (auto it = tables_->ids.find(std::string(word)); it != tables_->ids.end()) {
            return it->second;
        }
        auto it = tables_->loose_ids.find(loose(word));
        return it == tables_->loose_ids.end() ? none : it->second;
    }

    /// The ids of the prompt's last two words (`none` for words the text does not have).
    std::pair<std::uint32_t, std::uint32_t> context_of(std::string_view prompt) const {
        const auto words = split_words(prompt);
        const std::uint32_t last = words.empty() ? none : lookup(words.back());
        const std::uint32_t previous = words.size() < 2 ? none : lookup(words[words.size() - 2]);
        return {previous, last};
    }

    const std::vector<Candidate>* candidates(std::uint32_t previous, std::uint32_t last) const {
        if (previous != none && last != none) {
            if (auto it = tables_->trigrams.find(pair_key(previous, last)); it != tables_->trigrams.end()) {
                return &it->second;
            }
        }
        if (last != none) {
            if (auto it = tables_->bigrams.find(last); it != tables_->bigrams.end()) {
                return &it->second;
            }
        }
        return nullptr;
    }

    std::uint32_t choose(std::uint32_t previous, std::uint32_t last,
                         const modelpool::GenerationParams& params, std::mt19937_64& random) const {
        const auto uniform = [&random] { return static_cast<double>(random() >> 11) * 0x1.0p-53; };
        const auto* found = candidates(previous, last);
        if (!found) { // back off to the start of a random sentence
            const auto& starts = tables_->starts;
            return starts[static_cast<std::size_t>(uniform() * static_cast<double>(starts.size()))];
        }
        if (params.temperature <= 0.0) { // greedy: the most frequent, the first seen among equals
            return std::max_element(found->begin(), found->end(),
                                    [](const Candidate& a, const Candidate& b) { return a.count < b.count; })
                ->word;
        }
        std::vector<std::pair<double, std::uint32_t>> weighted;
        weighted.reserve(found->size());
        for (const auto& candidate : *found) {
            weighted.emplace_back(std::pow(static_cast<double>(candidate.count), 1.0 / params.temperature),
                                  candidate.word);
        }
        std::stable_sort(weighted.begin(), weighted.end(),
                         [](const auto& a, const auto& b) { return a.first > b.first; });
        double total = 0.0;
        for (const auto& [weight, word] : weighted) {
            total += weight;
        }
        // Nucleus: the most likely words that together hold top_p of the mass.
        const double nucleus = total * std::clamp(params.top_p, 0.0, 1.0);
        double kept = 0.0;
        std::size_t size = 0;
        while (size < weighted.size() && (size == 0 || kept < nucleus)) {
            kept += weighted[size++].first;
        }
        double pick = uniform() * kept;
        for (std::size_t i = 0; i < size; ++i) {
            pick -= weighted[i].first;
            if (pick < 0.0) {
                return weighted[i].second;
            }
        }
        return weighted[size - 1].second;
    }

    /// Where in `text` to cut it so that `generated + text` ends before the first stop sequence; npos when
    /// none occurs.
    static std::size_t stop_position(const std::string& generated, const std::string& text,
                                     const std::vector<std::string>& stops) {
        std::size_t cut = std::string::npos;
        const std::string joined = generated + text;
        for (const auto& stop : stops) {
            if (stop.empty()) {
                continue;
            }
            // Only occurrences that end inside the new text (earlier ones would have stopped already).
            const auto from = generated.size() >= stop.size() ? generated.size() - stop.size() + 1 : 0;
            if (const auto at = joined.find(stop, from); at != std::string::npos) {
                const auto in_text = at > generated.size() ? at - generated.size() : 0;
                cut = std::min(cut, in_text);
            }
        }
        return cut;
    }

    std::shared_ptr<const Tables> tables_;
};

/// A loader for `pool.spawn_text_to_text_worker` / `register_text_to_text_model`: a copyable
/// callable returning `asio::awaitable<result<NgramGenerator>>` that fetches the text at `url` over HTTP
/// (non-blocking) and trains on it.
inline auto ngram_generator_loader(std::string url) {
    return url_loader<NgramGenerator>(std::move(url), [](std::string_view bytes, std::string_view source) {
        return NgramGenerator::train(bytes, source);
    });
}

} // namespace demo
