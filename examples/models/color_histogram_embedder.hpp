// examples/models/color_histogram_embedder.hpp
//
// A demo image_embedding model (not a neural network): an image's embedding is its colour histogram
// (bins x bins x bins RGB cells, 4x4x4 by default) followed by a histogram of its edge orientations (8 bins
// over 0..180 degrees, weighted by edge strength), each part scaled by a weight and the whole L2-normalised.
// Images of the same colours and shapes land near each other; cosine similarity is the dot product.
//
// Its "weights" are a small generated text file (`weights_file`, made by `generate_weights()`): the number of
// bins, the per-channel quantisation table (256 entries mapping a channel value to its bin) and the two part
// weights. The loader (`load`) fetches that file over HTTP with `demo::http_get`, without blocking the
// io_context.
//
// Operations, by what they do:
// - `embed_image(path)`, `embed_image_base64(data)`, `batch_embed_images(paths)` read files or decode data:
//   blocking members returning `result<...>`, so the pool runs them on its blocking executor;
// - `embed_image_url(url)` is a coroutine: it fetches the image with `http_get` on the io_context, then
//   offloads decoding and the histogram to the blocking executor the loader was given.
#pragma once

#include "models/image.hpp"
#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <memory>
#include <numbers>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace demo {

/// The parameters of a `ColorHistogramEmbedder`, read from its weight file.
struct HistogramWeights {
    std::size_t bins = 4;                  ///< Colour bins per channel.
    std::size_t orientations = 8;          ///< Edge-orientation bins over 0..180 degrees.
    double color_weight = 1.0;             ///< Scale of the colour part.
    double gradient_weight = 0.5;          ///< Scale of the edge part.
    double edge_threshold = 0.04;          ///< Luminance steps below this are not edges.
    std::array<std::uint8_t, 256> quant{}; ///< Channel value -> colour bin.
};

/// Colour-histogram + edge-orientation embeddings (a demo model; see the file comment).
class ColorHistogramEmbedder : public ImageModel<ColorHistogramEmbedder, HistogramWeights> {
public:
    using ImageModel::ImageModel;
    using Embedding = modelpool::Embedding;

    /// The name of its weight file in a `WeightStore`.
    static constexpr std::string_view weights_file = "color_histogram_embedder.weights";

    /// The weight file's text: deterministic, so every run generates the same bytes.
    static std::string generate_weights() {
        std::string text = "# color_histogram_embedder demo weights (generated; not a neural network)\n"
                           "bins 4\norientations 8\ncolor_weight 1.0\ngradient_weight 0.5\n"
                           "edge_threshold 0.04\nquant";
        for (int v = 0; v < 256; ++v) {
            text += ' '; // two appends: `" " + std::to_string(...)` trips g++ 12's -Wrestrict at -O3
            text += std::to_string(v * 4 / 256);
        }
        return text + "\n";
    }

    /// Parses a weight file; `spawn_failed` naming what is wrong.
    static result<Weights> parse_weights(std::string_view text) {
        Weights w;
        bool have_quant = false;
        try {
            for (const auto& record : parse_records(text)) {
                const auto& key = record[0];
                if (key == "quant" && record.size() == 257) {
                    for (std::size_t v = 0; v < 256; ++v) {
                        w.quant[v] = static_cast<std::uint8_t>(std::stoul(record[v + 1]));
                    }
                    have_quant = true;
                } else if (record.size() != 2) {
                    return modelpool::fail(modelpool::errc::spawn_failed, "bad weight record '{}'", key);
                } else if (key == "bins") {
                    w.bins = std::stoul(record[1]);
                } else if (key == "orientations") {
                    w.orientations = std::stoul(record[1]);
                } else if (key == "color_weight") {
                    w.color_weight = std::stod(record[1]);
                } else if (key == "gradient_weight") {
                    w.gradient_weight = std::stod(record[1]);
                } else if (key == "edge_threshold") {
                    w.edge_threshold = std::stod(record[1]);
                }
            }
        } catch (const std::exception& error) {
            return modelpool::fail(modelpool::errc::spawn_failed, "bad number in weights: {}", error.what());
        }
        const bool quant_ok =
            std::all_of(w.quant.begin(), w.quant.end(), [&](std::uint8_t b) { return b < w.bins; });
        if (!have_quant || !quant_ok || w.bins < 1 || w.bins > 16 || w.orientations < 1 ||
            w.orientations > 64) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "weights need 1..16 bins, 1..64 orientations and a 256-entry quant table "
                                   "of bins below {}",
                                   w.bins);
        }
        return w;
    }

    /// Dimensions of every embedding: bins^3 + orientations.
    std::size_t dimensions() const {
        return weights_->bins * weights_->bins * weights_->bins + weights_->orientations;
    }

    /// The embedding of a decoded image (pure computation).
    static result<Embedding> embed(const Weights& w, const Image& image) {
        if (auto ok = check_image(image); !ok) {
            return modelpool::unexpected<modelpool::PoolError>(ok.error());
        }
        const std::size_t colors = w.bins * w.bins * w.bins;
        Embedding v(colors + w.orientations, 0.0f);
        std::vector<double> lum(std::size_t{image.width} * image.height);
        for (std::uint32_t y = 0; y < image.height; ++y) {
            for (std::uint32_t x = 0; x < image.width; ++x) {
                const Rgb c = pixel_at(image, x, y);
                v[(w.quant[c.r] * w.bins + w.quant[c.g]) * w.bins + w.quant[c.b]] += 1.0f;
                lum[std::size_t{y} * image.width + x] = luminance(c);
            }
        }
        std::vector<double> edges(w.orientations, 0.0);
        for (std::uint32_t y = 1; y + 1 < image.height; ++y) {
            for (std::uint32_t x = 1; x + 1 < image.width; ++x) {
                const std::size_t i = std::size_t{y} * image.width + x;
                const double gx = (lum[i + 1] - lum[i - 1]) / 2;
                const double gy = (lum[i + image.width] - lum[i - image.width]) / 2;
                const double magnitude = std::hypot(gx, gy);
                if (magnitude < w.edge_threshold) {
                    continue;
                }
                double angle = std::atan2(gy, gx); // -pi..pi; orientation ignores the sign
                angle = angle < 0 ? angle + std::numbers::pi : angle;
                const auto bin = static_cast<std::size_t>(angle / std::numbers::pi * w.orientations);
                edges[std::min(bin, w.orientations - 1)] += magnitude;
            }
        }
        const double pixels = static_cast<double>(lum.size());
        const double edge_total = std::accumulate(edges.begin(), edges.end(), 0.0);
        for (std::size_t i = 0; i < colors; ++i) {
            v[i] = static_cast<float>(v[i] / pixels * w.color_weight);
        }
        for (std::size_t i = 0; i < w.orientations; ++i) {
            v[colors + i] =
                edge_total > 0 ? static_cast<float>(edges[i] / edge_total * w.gradient_weight) : 0;
        }
        const float norm = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0f));
        for (auto& x : v) {
            x /= norm > 0 ? norm : 1.0f;
        }
        return v;
    }

    // ---- the image_embedding capability

    /// Reads and embeds the PNG or PPM file at `path` (blocking: the pool runs it on its blocking executor).
    result<Embedding> embed_image(const std::string& path) const { return embed_bytes(read_file(path)); }

    /// Fetches the image at `url` over HTTP (a coroutine on the io_context), then decodes and embeds it on
    /// the blocking executor.
    asio::awaitable<result<Embedding>> embed_image_url(const std::string& url) const {
        return with_image(blocking_, {url, true},
                          [weights = weights_](const Image& image) { return embed(*weights, image); });
    }

    /// Decodes and embeds a base64-encoded PNG or PPM (blocking).
    result<Embedding> embed_image_base64(const std::string& data) const {
        return embed_bytes(base64_decode(data));
    }

    /// Embeds each file of `paths`, in order; fails on the first that cannot be read or decoded (blocking).
    result<std::vector<Embedding>> batch_embed_images(const std::vector<std::string>& paths) const {
        std::vector<Embedding> out;
        out.reserve(paths.size());
        for (const auto& path : paths) {
            auto v = embed_image(path);
            if (!v) {
                return modelpool::fail(v.error().code(), "{} (image {} of {})", v.error().message(),
                                       out.size() + 1, paths.size());
            }
            out.push_back(std::move(*v));
        }
        return out;
    }

    /// Cosine similarity of two embeddings of this model (they are L2-normalised: the dot product).
    static float similarity(const Embedding& a, const Embedding& b) {
        return std::inner_product(a.begin(), a.end(), b.begin(), 0.0f);
    }

private:
    result<Embedding> embed_bytes(const result<std::string>& bytes) const {
        if (!bytes) {
            return modelpool::unexpected<modelpool::PoolError>(bytes.error());
        }
        auto image = decode_image(*bytes);
        if (!image) {
            return modelpool::unexpected<modelpool::PoolError>(image.error());
        }
        return embed(*weights_, *image);
    }
};

} // namespace demo
