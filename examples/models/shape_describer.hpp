// examples/models/shape_describer.hpp
//
// A demo vision model (not a neural network): describes simple images in words. Every pixel is mapped to the
// nearest colour of its colour-name table; the background is the most common colour along the border; then a
// few measurements name what is there: one shape (disc, square, rectangle, oval) with its position and
// coverage, stripes (vertical or horizontal, from the colour changes along the middle row and column), a
// gradient (no sharp edges but different colours at opposite sides) or a plain image; the colours with their
// coverage; and whether the image is mostly dark or bright.
//
// Its "weights" are the colour-name table (`weights_file`: "color NAME R G B" lines, made by
// `generate_weights()`), which the loader fetches over HTTP with `demo::http_get`.
//
// `query` chooses what to describe: one mentioning colours ("colours", "what colour is it?") gets the colours
// and brightness, one mentioning shapes or layout gets the shapes, anything else gets both. The description
// is streamed word by word as `TextChunk`s. Both operations are coroutines: the file read or HTTP fetch,
// decoding and analysis happen off the io_context (see `with_image`), and the words are sent with
// backpressure.
#pragma once

#include "models/image.hpp"

#include <modelpool/modelpool.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace demo {

/// Names colours, shapes and layout of simple images (a demo model; see the file comment).
class ShapeDescriber : public ImageModel<ShapeDescriber, std::vector<NamedColor>> {
public:
    using ImageModel::ImageModel;

    /// The name of its weight file in a `WeightStore`.
    static constexpr std::string_view weights_file = "shape_describer.colors";

    /// The weight file's text: the default colour table.
    static std::string generate_weights() {
        return "# shape_describer demo weights: colour names (generated; not a neural network)\n" +
               color_records(basic_colors());
    }

    /// Parses a weight file; `spawn_failed` unless it holds at least two well-formed colours.
    static result<Weights> parse_weights(std::string_view text) {
        Weights colors;
        for (const auto& record : parse_records(text)) {
            if (!parse_color_record(record, colors)) {
                return modelpool::fail(modelpool::errc::spawn_failed, "bad colour record '{}' in the weights",
                                       record[0]);
            }
        }
        if (colors.size() < 2) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "the weights name {} colours, need 2 or more", colors.size());
        }
        return colors;
    }

    /// The description of `image` for `query` (pure computation; see the file comment).
    static std::string describe(const Weights& colors, const Image& image, std::string_view query) {
        std::string lowered(query);
        std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        const bool want_colors = lowered.find("colo") != std::string::npos;
        const bool want_shapes =
            lowered.find("shape") != std::string::npos || lowered.find("layout") != std::string::npos;
        const Analysis a = analyse(colors, image);
        std::string text;
        if (want_shapes || !want_colors) {
            text += shapes_sentence(colors, a);
        }
        if (want_colors || !want_shapes) {
            text += (text.empty() ? "" : " ") + colors_sentence(colors, a);
        }
        return text;
    }

    // ---- the vision capability

    /// Describes the PNG or PPM file at `path`, streaming the words.
    asio::awaitable<result<void>> describe_image(const std::string& path, const std::string& query,
                                                 modelpool::ChunkSink<modelpool::TextChunk>& sink) const {
        return describe_source({path, false}, query, sink);
    }

    /// Describes the image at `url` (fetched over HTTP), streaming the words.
    asio::awaitable<result<void>> describe_url(const std::string& url, const std::string& query,
                                               modelpool::ChunkSink<modelpool::TextChunk>& sink) const {
        return describe_source({url, true}, query, sink);
    }

private:
    /// What `analyse` measured.
    struct Analysis {
        std::size_t pixels = 0;
        std::vector<std::size_t> counts; // pixels per colour of the table
        std::size_t background = 0;      // colour index
        std::size_t foreground = 0;      // most common other colour
        std::size_t row_changes = 0;     // colour changes along the middle row
        std::size_t column_changes = 0;  // ... and the middle column
        double sharp_edges = 0;          // share of pixels differing sharply from their right/lower neighbour
        Rgb first_side, last_side;       // mean colours of opposite sides (left/right or top/bottom)
        bool horizontal_sides = true;    // first/last are left/right (else top/bottom)
        double mean_luminance = 0;       // 0..1
        double cx = 0.5, cy = 0.5;       // foreground centroid, as fractions of width and height
        double fill = 0;                 // foreground pixels / its bounding box
        double aspect = 1;               // bounding box width / height
    };

    static Analysis analyse(const Weights& colors, const Image& image) {
        Analysis a;
        const std::uint32_t w = image.width;
        const std::uint32_t h = image.height;
        a.pixels = std::size_t{w} * h;
        a.counts.assign(colors.size(), 0);
        std::vector<std::size_t> index(a.pixels);
        std::vector<std::size_t> border(colors.size(), 0);
        std::size_t sharp = 0;
        for (std::uint32_t y = 0; y < h; ++y) {
            for (std::uint32_t x = 0; x < w; ++x) {
                const Rgb c = pixel_at(image, x, y);
                const auto i = nearest_color(colors, c);
                index[std::size_t{y} * w + x] = i;
                ++a.counts[i];
                border[i] += (x == 0 || y == 0 || x + 1 == w || y + 1 == h) ? 1 : 0;
                a.mean_luminance += luminance(c) / static_cast<double>(a.pixels);
                const bool right = x + 1 < w && color_distance2(c, pixel_at(image, x + 1, y)) > 60 * 60;
                const bool below = y + 1 < h && color_distance2(c, pixel_at(image, x, y + 1)) > 60 * 60;
                sharp += (right || below) ? 1 : 0;
            }
        }
        a.sharp_edges = static_cast<double>(sharp) / static_cast<double>(a.pixels);
        a.background =
            static_cast<std::size_t>(std::max_element(border.begin(), border.end()) - border.begin());
        a.foreground = a.background == 0 ? 1 : 0;
        for (std::size_t i = 0; i < colors.size(); ++i) {
            if (i != a.background && a.counts[i] > a.counts[a.foreground]) {
                a.foreground = i;
            }
        }
        for (std::uint32_t x = 1; x < w; ++x) {
            a.row_changes +=
                index[std::size_t{h / 2} * w + x] != index[std::size_t{h / 2} * w + x - 1] ? 1 : 0;
        }
        for (std::uint32_t y = 1; y < h; ++y) {
            a.column_changes +=
                index[std::size_t{y} * w + w / 2] != index[std::size_t{y - 1} * w + w / 2] ? 1 : 0;
        }
        // Opposite sides: the pair (left/right or top/bottom) whose mean colours differ most.
        auto side_mean = [&](bool vertical_line, std::uint32_t at) {
            double r = 0, g = 0, b = 0;
            const std::uint32_t n = vertical_line ? h : w;
            for (std::uint32_t k = 0; k < n; ++k) {
                const Rgb c = vertical_line ? pixel_at(image, at, k) : pixel_at(image, k, at);
                r += c.r;
                g += c.g;
                b += c.b;
            }
            return Rgb{static_cast<std::uint8_t>(r / n), static_cast<std::uint8_t>(g / n),
                       static_cast<std::uint8_t>(b / n)};
        };
        const Rgb left = side_mean(true, 0), right = side_mean(true, w - 1);
        const Rgb top = side_mean(false, 0), bottom = side_mean(false, h - 1);
        a.horizontal_sides = color_distance2(left, right) >= color_distance2(top, bottom);
        a.first_side = a.horizontal_sides ? left : top;
        a.last_side = a.horizontal_sides ? right : bottom;
        // The foreground colour's centroid and bounding box.
        std::uint32_t x0 = w, y0 = h, x1 = 0, y1 = 0;
        double sx = 0, sy = 0;
        for (std::uint32_t y = 0; y < h; ++y) {
            for (std::uint32_t x = 0; x < w; ++x) {
                if (index[std::size_t{y} * w + x] == a.foreground) {
                    x0 = std::min(x0, x), y0 = std::min(y0, y), x1 = std::max(x1, x), y1 = std::max(y1, y);
                    sx += x + 0.5;
                    sy += y + 0.5;
                }
            }
        }
        if (const auto n = a.counts[a.foreground]; n > 0) {
            a.cx = sx / static_cast<double>(n) / w;
            a.cy = sy / static_cast<double>(n) / h;
            const double bw = x1 - x0 + 1.0, bh = y1 - y0 + 1.0;
            a.fill = static_cast<double>(n) / (bw * bh);
            a.aspect = bw / bh;
        }
        return a;
    }

    static double share(const Analysis& a, std::size_t color) {
        return static_cast<double>(a.counts[color]) / static_cast<double>(a.pixels);
    }

    static std::string percent(double fraction) { return std::to_string(std::lround(fraction * 100)) + "%"; }

    static std::string position(const Analysis& a) {
        const int col = a.cx < 0.4 ? 0 : a.cx > 0.6 ? 2 : 1;
        const int row = a.cy < 0.4 ? 0 : a.cy > 0.6 ? 2 : 1;
        static constexpr std::string_view names[3][3] = {
            {"in the top left", "at the top", "in the top right"},
            {"on the left", "in the centre", "on the right"},
            {"in the bottom left", "at the bottom", "in the bottom right"}};
        return std::string(names[row][col]);
    }

    static std::string shapes_sentence(const Weights& colors, const Analysis& a) {
        const auto& bg = colors[a.background].name;
        const auto& fg = colors[a.foreground].name;
        if (share(a, a.background) >= 0.97) {
            return "A plain " + bg + " image.";
        }
        if (a.sharp_edges < 0.005 && color_distance2(a.first_side, a.last_side) > 80 * 80) {
            const auto from = colors[nearest_color(colors, a.first_side)].name;
            const auto to = colors[nearest_color(colors, a.last_side)].name;
            return a.horizontal_sides
                       ? "A gradient from " + from + " on the left to " + to + " on the right."
                       : "A gradient from " + from + " at the top to " + to + " at the bottom.";
        }
        const std::size_t changes = std::max(a.row_changes, a.column_changes);
        if (changes >= 4 && share(a, a.background) + share(a, a.foreground) >= 0.85) {
            std::string colours = fg + " and " + bg;
            colours[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(colours[0])));
            return colours + " " + (a.row_changes >= a.column_changes ? "vertical" : "horizontal") +
                   " stripes (" + std::to_string(changes + 1) + " bands).";
        }
        std::string shape = "shape";
        const bool round_box = a.aspect > 0.8 && a.aspect < 1.25;
        if (a.fill >= 0.9) {
            shape = round_box ? "square" : "rectangle";
        } else if (a.fill >= 0.65) {
            shape = round_box ? "disc" : "oval";
        }
        return "A " + fg + " " + shape + " " + position(a) + " on a " + bg + " background, covering " +
               percent(share(a, a.foreground)) + " of the image.";
    }

    static std::string colors_sentence(const Weights& colors, const Analysis& a) {
        std::vector<std::size_t> order(colors.size());
        for (std::size_t i = 0; i < order.size(); ++i) {
            order[i] = i;
        }
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t l, std::size_t r) { return a.counts[l] > a.counts[r]; });
        std::string text = "Colours:";
        for (std::size_t k = 0; k < order.size() && k < 4 && share(a, order[k]) >= 0.01; ++k) {
            text += (k == 0 ? " " : ", ") + colors[order[k]].name + " " + percent(share(a, order[k]));
        }
        const double lum = a.mean_luminance;
        text += lum < 0.35   ? ". The image is mostly dark"
                : lum > 0.65 ? ". The image is mostly bright"
                             : ". The image is of medium brightness";
        return text + " (mean brightness " + percent(lum) + ").";
    }

    asio::awaitable<result<void>> describe_source(ImageSource source, std::string query,
                                                  modelpool::ChunkSink<modelpool::TextChunk>& sink) const {
        // The lambda and the awaitable are named, not temporaries in the co_await operand: g++ 12 miscompiles
        // class temporaries holding strings there (see ChunkSink::send).
        auto work = [colors = weights_, query](const Image& image) -> result<std::string> {
            return describe(*colors, image, query);
        };
        auto described = with_image(blocking_, std::move(source), std::move(work));
        auto text = co_await std::move(described);
        if (!text) {
            co_return modelpool::unexpected<modelpool::PoolError>(text.error());
        }
        for (std::size_t at = 0; at < text->size();) {
            const std::size_t space = text->find(' ', at);
            const std::size_t end = space == std::string::npos ? text->size() : space + 1;
            modelpool::TextChunk chunk{text->substr(at, end - at)}; // named: see ChunkSink::send on g++ 12
            if (!co_await sink.send(chunk)) {
                co_return modelpool::fail(modelpool::errc::cancelled, "the reader left the description");
            }
            at = end;
        }
        co_return result<void>{};
    }
};

} // namespace demo
