// examples/models/aesop_text.hpp
//
// The text the text demo models learn from: a selection of Aesop's Fables in George Fyler Townsend's 1867
// translation (public domain), shipped as examples/data/aesop.txt. The WeightStore copies it into the cache
// directory on first use, so a loader fetches it over HTTP like any other weight file.
//
// File format: '#' comment lines, then fables, each a title line and a paragraph of text, separated by blank
// lines. `fable_paragraphs` gives the paragraphs (titles and comments left out), `split_sentences` cuts text
// into sentences: the corpus of the nearest-sentence search (a few hundred sentences).
#pragma once

#include "support/weight_store.hpp"

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace demo {

/// The name of the shipped text in the WeightStore.
inline constexpr std::string_view aesop_text_name = "aesop-fables-townsend.txt";

/// The examples' data directory (examples/data): `MODELPOOL_EXAMPLES_DATA_DIR` as examples/CMakeLists.txt
/// defines it, else "examples/data" relative to the working directory.
inline std::filesystem::path examples_data_dir() {
#ifdef MODELPOOL_EXAMPLES_DATA_DIR
    return MODELPOOL_EXAMPLES_DATA_DIR;
#else
    return "examples/data";
#endif
}

/// Copies the shipped text into `store` (first run only) and returns its path there. Blocking file I/O: call
/// it from main's thread. Throws `std::runtime_error` when the shipped file cannot be read.
inline std::filesystem::path ensure_aesop_text(const WeightStore& store,
                                               const std::filesystem::path& data_dir = examples_data_dir()) {
    return store.ensure(std::string(aesop_text_name),
                        [&] { return WeightStore::read_file(data_dir / "aesop.txt"); });
}

/// True for a character that ends a sentence.
inline bool ends_sentence(char c) {
    return c == '.' || c == '!' || c == '?';
}

/// The fables' paragraphs: every non-empty line that is neither a comment ('#') nor a title (a line without
/// sentence-ending punctuation).
inline std::vector<std::string> fable_paragraphs(std::string_view text) {
    std::vector<std::string> paragraphs;
    while (!text.empty()) {
        const auto end = text.find('\n');
        std::string_view line = text.substr(0, end);
        text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        bool has_sentence = false;
        for (char c : line) {
            has_sentence = has_sentence || ends_sentence(c);
        }
        if (!line.empty() && line.front() != '#' && has_sentence) {
            paragraphs.emplace_back(line);
        }
    }
    return paragraphs;
}

/// Splits `paragraph` into sentences: a sentence ends at '.', '!' or '?', optionally followed by a closing
/// quote, where a space or the end follows. Sentences shorter than `min_words` words are left out.
inline std::vector<std::string> split_sentences(std::string_view paragraph, std::size_t min_words = 4) {
    std::vector<std::string> sentences;
    auto keep = [&](std::string_view sentence) {
        while (!sentence.empty() && sentence.front() == ' ') {
            sentence.remove_prefix(1);
        }
        std::size_t words = sentence.empty() ? 0 : 1;
        for (char c : sentence) {
            words += c == ' ' ? 1 : 0;
        }
        if (words >= min_words) {
            sentences.emplace_back(sentence);
        }
    };
    std::size_t start = 0;
    for (std::size_t i = 0; i < paragraph.size(); ++i) {
        if (!ends_sentence(paragraph[i])) {
            continue;
        }
        std::size_t end = i + 1;
        if (end < paragraph.size() && paragraph[end] == '"') {
            ++end;
        }
        if (end == paragraph.size() || paragraph[end] == ' ') {
            keep(paragraph.substr(start, end - start));
            start = end;
            i = end - 1;
        }
    }
    if (start < paragraph.size()) {
        keep(paragraph.substr(start));
    }
    return sentences;
}

/// Every sentence of every fable of `text` (the file's contents), in order.
inline std::vector<std::string> fable_sentences(std::string_view text) {
    std::vector<std::string> sentences;
    for (const auto& paragraph : fable_paragraphs(text)) {
        for (auto& sentence : split_sentences(paragraph)) {
            sentences.push_back(std::move(sentence));
        }
    }
    return sentences;
}

} // namespace demo
