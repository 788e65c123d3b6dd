// examples/models/ngram_embedder.hpp
//
// A text_embedding DEMO model, not a neural network: hashed n-gram embeddings. A text is lower-cased and cut
// into words; its features are the words, the word pairs and the character 3- and 4-grams of each word
// (padded with spaces). Each feature is hashed into one of `buckets` buckets. The model's "weights" map every
// bucket to one output dimension and a sign (a sparse random projection drawn from a fixed seed) and give it
// an inverse document frequency weight, counted over the sentences of Aesop's Fables (so "the" and "and"
// weigh little, "pitcher" and "grapes" much), with one more weight per feature kind. The vector is
// L2-normalised, so the dot product of two embeddings is their cosine similarity: texts sharing rare words
// and word pieces come out close, which is enough for a nearest-sentence search over a paraphrase.
//
// The weights are deterministic (`ensure_ngram_weights` generates them into the WeightStore once); the loader
// fetches them with `http_get` and parses them, so a worker's load is real asynchronous I/O. `embed` and
// `batch_embed` are plain (blocking, CPU) members: the pool runs them on its blocking executor.
#pragma once

#include "models/aesop_text.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <array>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace demo {

/// Cosine similarity of two embeddings (0 when either is zero or their sizes differ).
inline float cosine_similarity(const modelpool::Embedding& a, const modelpool::Embedding& b) {
    if (a.size() != b.size()) {
        return 0.0f;
    }
    const float dot = std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
    const float na = std::sqrt(std::inner_product(a.begin(), a.end(), a.begin(), 0.0f));
    const float nb = std::sqrt(std::inner_product(b.begin(), b.end(), b.begin(), 0.0f));
    return na > 0.0f && nb > 0.0f ? dot / (na * nb) : 0.0f;
}

/// 64-bit FNV-1a hash of `kind` followed by `text`; the same on every platform.
inline std::uint64_t fnv1a(char kind, std::string_view text) {
    std::uint64_t hash = 1469598103934665603ULL;
    auto mix = [&](char c) {
        hash ^= static_cast<unsigned char>(c);
        hash *= 1099511628211ULL;
    };
    mix(kind);
    for (char c : text) {
        mix(c);
    }
    return hash;
}

/// The hashed n-gram embedder (see the file comment). Movable and copyable; immutable once loaded.
class NgramEmbedder {
public:
    /// What the weights file holds.
    struct Weights {
        std::uint32_t dimensions = 256;      ///< Output dimensions.
        std::array<float, 4> kind_weights{}; ///< char 3-grams, char 4-grams, words, word pairs.
        std::vector<std::uint32_t> buckets;  ///< Per bucket: dimension | sign << 31.
        std::vector<float> idf;              ///< Per bucket: inverse document frequency.
    };

    /// The weights file's name in the WeightStore.
    static constexpr std::string_view weights_name = "ngram-embedder-256d-idf-v1.bin";

    /// Generates the weights: `buckets` buckets mapped to `dimensions` dimensions from a fixed seed, with the
    /// inverse document frequency of each bucket over `documents` (smoothed: log((1 + n) / (1 + df)) + 1).
    static std::string generate_weights(const std::vector<std::string>& documents,
                                        std::uint32_t dimensions = 256, std::uint32_t buckets = 1u << 16) {
        Weights weights{dimensions, {1.0f, 1.0f, 2.0f, 1.5f}, {}, {}};
        std::mt19937 random(20240611u); // fixed: the same file on every run and machine
        weights.buckets.resize(buckets);
        for (auto& bucket : weights.buckets) {
            const std::uint32_t draw = random();
            bucket = (draw % dimensions) | (draw & 0x80000000u);
        }
        std::vector<std::uint32_t> frequency(buckets, 0);
        std::vector<std::size_t> seen_in(buckets, 0); // the last document (1-based) that hit each bucket
        for (std::size_t document = 1; document <= documents.size(); ++document) {
            for_each_feature(documents[document - 1], [&](int kind, std::string_view feature) {
                const auto index = bucket_index(kind, feature, buckets);
                if (seen_in[index] != document) {
                    seen_in[index] = document;
                    ++frequency[index];
                }
            });
        }
        const double n = static_cast<double>(documents.size());
        weights.idf.resize(buckets);
        for (std::size_t i = 0; i < buckets; ++i) {
            weights.idf[i] = static_cast<float>(std::log((1.0 + n) / (1.0 + frequency[i])) + 1.0);
        }
        return serialize(weights);
    }

    /// Calls `visit(kind, feature)` for every feature of `text` (kinds: 0 char 3-gram, 1 char 4-gram, 2 word,
    /// 3 word pair).
    template <class Visit> static void for_each_feature(std::string_view text, Visit&& visit) {
        const auto words = normalized_words(text);
        for (std::size_t i = 0; i < words.size(); ++i) {
            visit(2, std::string_view(words[i]));
            if (i + 1 < words.size()) {
                const std::string pair = words[i] + ' ' + words[i + 1];
                visit(3, std::string_view(pair));
            }
            const std::string padded = ' ' + words[i] + ' ';
            for (std::size_t n = 3; n <= 4; ++n) {
                for (std::size_t at = 0; at + n <= padded.size(); ++at) {
                    visit(static_cast<int>(n) - 3, std::string_view(padded).substr(at, n));
                }
            }
        }
    }

    /// The bucket of a feature.
    static std::size_t bucket_index(int kind, std::string_view feature, std::size_t buckets) {
        return fnv1a(static_cast<char>('0' + kind), feature) % buckets;
    }

    /// The file format: "NGEMB1\0\0", dimensions, bucket count, 4 kind weights, one entry per bucket, then
    /// one IDF weight per bucket (32-bit little-endian-on-this-machine values: the file is generated where it
    /// is used).
    static std::string serialize(const Weights& weights) {
        std::string bytes(magic.data(), magic.size());
        const auto count = static_cast<std::uint32_t>(weights.buckets.size());
        append(bytes, &weights.dimensions, sizeof weights.dimensions);
        append(bytes, &count, sizeof count);
        append(bytes, weights.kind_weights.data(), sizeof(float) * weights.kind_weights.size());
        append(bytes, weights.buckets.data(), sizeof(std::uint32_t) * weights.buckets.size());
        append(bytes, weights.idf.data(), sizeof(float) * weights.idf.size());
        return bytes;
    }

    /// Parses a weights file; `spawn_failed` naming `source` when it is malformed.
    static modelpool::result<NgramEmbedder> parse(std::string_view bytes, std::string_view source) {
        using modelpool::errc;
        constexpr std::size_t header = magic.size() + 2 * sizeof(std::uint32_t) + 4 * sizeof(float);
        if (bytes.size() < header ||
            bytes.substr(0, magic.size()) != std::string_view(magic.data(), magic.size())) {
            return modelpool::fail(errc::spawn_failed, "{} is not an n-gram embedder weights file ({} bytes)",
                                   source, bytes.size());
        }
        Weights weights;
        std::uint32_t count = 0;
        std::size_t at = magic.size();
        read(bytes, at, &weights.dimensions, sizeof weights.dimensions);
        read(bytes, at, &count, sizeof count);
        read(bytes, at, weights.kind_weights.data(), sizeof(float) * weights.kind_weights.size());
        if (weights.dimensions == 0 || weights.dimensions > 65536 || count == 0 ||
            bytes.size() != header + std::size_t{count} * 2 * sizeof(std::uint32_t)) {
            return modelpool::fail(errc::spawn_failed,
                                   "{} is corrupt: {} dimensions, {} buckets, {} bytes (expected {})", source,
                                   weights.dimensions, count, bytes.size(),
                                   header + std::size_t{count} * 2 * sizeof(std::uint32_t));
        }
        weights.buckets.resize(count);
        read(bytes, at, weights.buckets.data(), sizeof(std::uint32_t) * count);
        weights.idf.resize(count);
        read(bytes, at, weights.idf.data(), sizeof(float) * count);
        for (auto bucket : weights.buckets) {
            if ((bucket & 0x7fffffffu) >= weights.dimensions) {
                return modelpool::fail(errc::spawn_failed,
                                       "{} is corrupt: a bucket maps to dimension {} of {}", source,
                                       bucket & 0x7fffffffu, weights.dimensions);
            }
        }
        return NgramEmbedder(std::make_shared<const Weights>(std::move(weights)));
    }

    /// Output dimensions.
    std::size_t dimensions() const { return weights_->dimensions; }

    /// Embeds `text` (`task` is accepted and ignored: this model has no task instructions). An empty text
    /// embeds as the zero vector.
    modelpool::result<modelpool::Embedding> embed(const std::string& text,
                                                  const std::optional<std::string>& /*task*/) const {
        modelpool::Embedding vector(weights_->dimensions, 0.0f);
        for_each_feature(text, [&](int kind, std::string_view feature) { add(vector, kind, feature); });
        const float norm = std::sqrt(std::inner_product(vector.begin(), vector.end(), vector.begin(), 0.0f));
        if (norm > 0.0f) {
            for (auto& x : vector) {
                x /= norm;
            }
        }
        return vector;
    }

    /// Embeds each of `texts`, in order: the same vectors as `embed` one by one.
    modelpool::result<std::vector<modelpool::Embedding>>
    batch_embed(const std::vector<std::string>& texts, const std::optional<std::string>& task) const {
        std::vector<modelpool::Embedding> vectors;
        vectors.reserve(texts.size());
        for (const auto& text : texts) {
            auto vector = embed(text, task);
            if (!vector) {
                return modelpool::unexpected<modelpool::PoolError>(vector.error());
            }
            vectors.push_back(std::move(*vector));
        }
        return vectors;
    }

    /// The words of `text`: lower-cased runs of letters, digits and apostrophes.
    static std::vector<std::string> normalized_words(std::string_view text) {
        std::vector<std::string> words;
        std::string word;
        for (char c : text) {
            const auto u = static_cast<unsigned char>(c);
            if (std::isalnum(u) || c == '\'') {
                word += static_cast<char>(std::tolower(u));
            } else if (!word.empty()) {
                words.push_back(std::move(word));
                word.clear();
            }
        }
        if (!word.empty()) {
            words.push_back(std::move(word));
        }
        return words;
    }

private:
    static constexpr std::array<char, 8> magic{'N', 'G', 'E', 'M', 'B', '1', '\0', '\0'};

    explicit NgramEmbedder(std::shared_ptr<const Weights> weights) : weights_(std::move(weights)) {}

    static void append(std::string& bytes, const void* data, std::size_t size) {
        bytes.append(static_cast<const char*>(data), size);
    }

    static void read(std::string_view bytes, std::size_t& at, void* out, std::size_t size) {
        std::memcpy(out, bytes.data() + at, size);
        at += size;
    }

    void add(modelpool::Embedding& vector, int kind, std::string_view feature) const {
        const auto& weights = *weights_;
        const std::size_t index = bucket_index(kind, feature, weights.buckets.size());
        const std::uint32_t bucket = weights.buckets[index];
        const float weight = weights.kind_weights[static_cast<std::size_t>(kind)] * weights.idf[index];
        vector[bucket & 0x7fffffffu] += (bucket & 0x80000000u) != 0 ? -weight : weight;
    }

    std::shared_ptr<const Weights> weights_; // shared by copies: the model is immutable
};

/// Writes the embedder's weights file into `store` (first run only; its IDF weights are counted over the
/// sentences of the shipped fables, which it copies into the store too); returns its name there. Blocking
/// file I/O: call it from main's thread.
inline std::string ensure_ngram_weights(const WeightStore& store) {
    const std::string name(NgramEmbedder::weights_name);
    store.ensure(name, [&] {
        const auto text = store.contents(ensure_aesop_text(store).filename().string());
        return NgramEmbedder::generate_weights(fable_sentences(*text));
    });
    return name;
}

/// A loader for `pool.spawn_text_embedding_worker` / `register_text_embedding_model`: a copyable
/// callable returning `asio::awaitable<result<NgramEmbedder>>` that fetches the weights file at `url` over
/// HTTP (non-blocking) and parses it.
inline auto ngram_embedder_loader(std::string url) {
    return url_loader<NgramEmbedder>(std::move(url), [](std::string_view bytes, std::string_view source) {
        return NgramEmbedder::parse(bytes, source);
    });
}

} // namespace demo
