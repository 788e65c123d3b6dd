// examples/models/image.hpp
//
// Image utilities shared by the image demo models and their examples (namespace `demo`):
//
// - procedural test scenes: a disc, square, stripes or gradient in given colours on a background, placed
//   deterministically from a seed (`render_scene`);
// - PPM (P6) and PNG encoding and decoding. The PNG codec is a minimal one written for the demos: it writes
//   8-bit RGB/RGBA/grey images as zlib "stored" (uncompressed) deflate blocks with CRC32 and Adler32, and
//   reads back such files (any of the five PNG row filters; compressed deflate blocks are refused with a
//   clear error);
// - base64, file reading/writing, a named-colour table (the default "weights" of the describer and painter)
//   and the small text format of the demo weight files.
//
// All of it is plain blocking code with no global state: call file functions from a blocking thread (the
// pool's blocking executor), never from an io_context thread.
#pragma once

#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace demo {

using modelpool::Image;
using modelpool::result;

/// An 8-bit RGB colour.
struct Rgb {
    std::uint8_t r = 0;
    std::uint8_t g = 0;
    std::uint8_t b = 0;
    friend bool operator==(const Rgb&, const Rgb&) = default;
};

/// A colour with a name ("red", "navy", ...).
struct NamedColor {
    std::string name;
    Rgb rgb;
};

/// The default named-colour table, from which the demo weight files are generated.
inline std::vector<NamedColor> basic_colors() {
    return {{"black", {0, 0, 0}},       {"white", {255, 255, 255}}, {"grey", {128, 128, 128}},
            {"red", {220, 30, 30}},     {"green", {40, 170, 60}},   {"blue", {30, 70, 220}},
            {"yellow", {240, 220, 40}}, {"orange", {245, 140, 20}}, {"purple", {130, 50, 170}},
            {"pink", {245, 150, 190}},  {"cyan", {40, 200, 220}},   {"magenta", {220, 40, 200}},
            {"brown", {130, 80, 40}},   {"navy", {20, 30, 110}},    {"teal", {20, 128, 128}}};
}

/// The colour called `name` in the default table (black when there is none).
inline Rgb color_named(std::string_view name) {
    for (const auto& color : basic_colors()) {
        if (color.name == name) {
            return color.rgb;
        }
    }
    return {};
}

/// Squared distance of two colours in RGB space.
inline int color_distance2(Rgb a, Rgb b) {
    const int dr = a.r - b.r;
    const int dg = a.g - b.g;
    const int db = a.b - b.b;
    return dr * dr + dg * dg + db * db;
}

/// Index of the colour of `table` nearest to `c` (0 for an empty table).
inline std::size_t nearest_color(const std::vector<NamedColor>& table, Rgb c) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < table.size(); ++i) {
        if (color_distance2(table[i].rgb, c) < color_distance2(table[best].rgb, c)) {
            best = i;
        }
    }
    return best;
}

// ---- weight files
// ------------------------------------------------------------------------------------------

/// The records of a demo weight file: one whitespace-separated record a line; blank lines and `#` comments
/// are skipped.
inline std::vector<std::vector<std::string>> parse_records(std::string_view text) {
    std::vector<std::vector<std::string>> records;
    std::istringstream in{std::string(text)};
    for (std::string line; std::getline(in, line);) {
        line = line.substr(0, line.find('#'));
        std::istringstream words(line);
        std::vector<std::string> record{std::istream_iterator<std::string>(words), {}};
        if (!record.empty()) {
            records.push_back(std::move(record));
        }
    }
    return records;
}

/// The "color NAME R G B" lines of a weight file for `colors`.
inline std::string color_records(const std::vector<NamedColor>& colors) {
    std::string text;
    for (const auto& c : colors) {
        text += "color " + c.name + " " + std::to_string(c.rgb.r) + " " + std::to_string(c.rgb.g) + " " +
                std::to_string(c.rgb.b) + "\n";
    }
    return text;
}

/// Reads a "color NAME R G B" record into `out`; false if `record` is not one (or is malformed).
inline bool parse_color_record(const std::vector<std::string>& record, std::vector<NamedColor>& out) {
    if (record.size() != 5 || record[0] != "color") {
        return false;
    }
    std::array<int, 3> v{};
    for (std::size_t i = 0; i < 3; ++i) {
        try {
            v[i] = std::stoi(record[i + 2]);
        } catch (...) {
            return false;
        }
        if (v[i] < 0 || v[i] > 255) {
            return false;
        }
    }
    out.push_back({record[1], Rgb{static_cast<std::uint8_t>(v[0]), static_cast<std::uint8_t>(v[1]),
                                  static_cast<std::uint8_t>(v[2])}});
    return true;
}

// ---- pixels and procedural scenes ------------------------------------------------------------------------

/// A small deterministic random generator (splitmix64).
struct SplitMix {
    std::uint64_t state;
    std::uint64_t next() {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    /// A double in [0, 1).
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

/// An RGB image of `width` x `height` filled with `fill`.
inline Image make_image(std::uint32_t width, std::uint32_t height, Rgb fill) {
    Image image{width, height, 3, {}};
    image.pixels.reserve(std::size_t{width} * height * 3);
    for (std::size_t i = 0; i < std::size_t{width} * height; ++i) {
        image.pixels.insert(image.pixels.end(), {fill.r, fill.g, fill.b});
    }
    return image;
}

/// The colour at (x, y) of an RGB, RGBA or grey image.
inline Rgb pixel_at(const Image& image, std::uint32_t x, std::uint32_t y) {
    const std::size_t i = (std::size_t{y} * image.width + x) * image.channels;
    if (image.channels < 3) {
        return {image.pixels[i], image.pixels[i], image.pixels[i]};
    }
    return {image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]};
}

/// Sets (x, y) of an RGB image.
inline void set_pixel(Image& image, std::uint32_t x, std::uint32_t y, Rgb c) {
    const std::size_t i = (std::size_t{y} * image.width + x) * 3;
    image.pixels[i] = c.r;
    image.pixels[i + 1] = c.g;
    image.pixels[i + 2] = c.b;
}

/// Luminance of a colour in [0, 1] (Rec. 601 weights).
inline double luminance(Rgb c) {
    return (0.299 * c.r + 0.587 * c.g + 0.114 * c.b) / 255.0;
}

/// The shapes of a procedural scene.
enum class Shape { disc, square, stripes, gradient };

/// The name of a shape ("disc", ...).
constexpr std::string_view to_string(Shape shape) {
    switch (shape) {
    case Shape::disc:
        return "disc";
    case Shape::square:
        return "square";
    case Shape::stripes:
        return "stripes";
    case Shape::gradient:
        return "gradient";
    }
    return "shape";
}

/// The shape named `name`, if any.
inline std::optional<Shape> shape_named(std::string_view name) {
    for (Shape s : {Shape::disc, Shape::square, Shape::stripes, Shape::gradient}) {
        if (to_string(s) == name) {
            return s;
        }
    }
    return std::nullopt;
}

/// A procedural scene: one shape in `foreground` on `background`; `seed` places and sizes it.
struct Scene {
    Shape shape = Shape::disc;
    Rgb foreground{220, 30, 30};
    Rgb background{255, 255, 255};
    std::uint64_t seed = 0;
};

/// Renders `scene` at `width` x `height`. Deterministic: the same scene and size give the same pixels.
/// A disc or square sits near the centre (offset up to 8% of the size) with a radius or half-side of 22-30%
/// of the shorter side; stripes are vertical or horizontal with a period of 1/6 to 1/4 of the size; a
/// gradient runs from foreground to background left to right or top to bottom.
inline Image render_scene(const Scene& scene, std::uint32_t width, std::uint32_t height) {
    Image image = make_image(width, height, scene.background);
    SplitMix rng{scene.seed};
    const double w = width;
    const double h = height;
    const double cx = w * (0.5 + (rng.uniform() - 0.5) * 0.16);
    const double cy = h * (0.5 + (rng.uniform() - 0.5) * 0.16);
    const double size = std::min(w, h) * (0.22 + rng.uniform() * 0.08);
    const bool vertical = rng.next() % 2 == 0;
    const double period = (vertical ? w : h) / (4.0 + rng.uniform() * 2.0);
    for (std::uint32_t y = 0; y < height; ++y) {
        for (std::uint32_t x = 0; x < width; ++x) {
            const double px = x + 0.5;
            const double py = y + 0.5;
            switch (scene.shape) {
            case Shape::disc:
                if ((px - cx) * (px - cx) + (py - cy) * (py - cy) <= size * size) {
                    set_pixel(image, x, y, scene.foreground);
                }
                break;
            case Shape::square:
                if (std::abs(px - cx) <= size && std::abs(py - cy) <= size) {
                    set_pixel(image, x, y, scene.foreground);
                }
                break;
            case Shape::stripes:
                if (static_cast<long>(std::floor((vertical ? px : py) / period)) % 2 == 0) {
                    set_pixel(image, x, y, scene.foreground);
                }
                break;
            case Shape::gradient: {
                const double t = vertical ? px / w : py / h;
                auto mix = [t](std::uint8_t a, std::uint8_t b) {
                    return static_cast<std::uint8_t>(std::lround(a + (b - a) * t));
                };
                set_pixel(image, x, y,
                          {mix(scene.foreground.r, scene.background.r),
                           mix(scene.foreground.g, scene.background.g),
                           mix(scene.foreground.b, scene.background.b)});
                break;
            }
            }
        }
    }
    return image;
}

/// `image` as 3-channel RGB (grey is replicated, alpha dropped).
inline Image to_rgb(const Image& image) {
    if (image.channels == 3) {
        return image;
    }
    Image out = make_image(image.width, image.height, {});
    for (std::uint32_t y = 0; y < image.height; ++y) {
        for (std::uint32_t x = 0; x < image.width; ++x) {
            set_pixel(out, x, y, pixel_at(image, x, y));
        }
    }
    return out;
}

/// `invalid_argument` unless `image` is a well-formed, non-empty image of 1, 3 or 4 channels.
inline result<void> check_image(const Image& image) {
    if (image.width == 0 || image.height == 0 ||
        (image.channels != 1 && image.channels != 3 && image.channels != 4) ||
        image.pixels.size() != std::size_t{image.width} * image.height * image.channels) {
        return modelpool::fail(modelpool::errc::invalid_argument,
                               "malformed image: {}x{}, {} channels, {} bytes", image.width, image.height,
                               image.channels, image.pixels.size());
    }
    return {};
}

// ---- byte helpers ----------------------------------------------------------------------------------------

/// CRC-32 (ISO 3309, as PNG uses it) of `data`, continuing from `crc` (0 to start).
inline std::uint32_t crc32(std::string_view data, std::uint32_t crc = 0) {
    crc = ~crc;
    for (unsigned char byte : data) {
        crc ^= byte;
        for (int k = 0; k < 8; ++k) {
            crc = (crc >> 1) ^ (0xEDB88320U & (0U - (crc & 1U)));
        }
    }
    return ~crc;
}

/// Adler-32 (RFC 1950) of `data`.
inline std::uint32_t adler32(std::string_view data) {
    std::uint32_t a = 1;
    std::uint32_t b = 0;
    for (unsigned char byte : data) {
        a = (a + byte) % 65521U;
        b = (b + a) % 65521U;
    }
    return (b << 16) | a;
}

inline void put_be32(std::string& out, std::uint32_t v) {
    out += static_cast<char>(v >> 24);
    out += static_cast<char>(v >> 16);
    out += static_cast<char>(v >> 8);
    out += static_cast<char>(v);
}

inline std::uint32_t get_be32(std::string_view in, std::size_t at) {
    auto b = [&](std::size_t i) {
        return static_cast<std::uint32_t>(static_cast<unsigned char>(in[at + i]));
    };
    return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

/// Base64 (RFC 4648, with padding) of `data`.
inline std::string base64_encode(std::string_view data) {
    static constexpr std::string_view alphabet =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    for (std::size_t i = 0; i < data.size(); i += 3) {
        std::uint32_t n = static_cast<unsigned char>(data[i]) << 16;
        if (i + 1 < data.size()) {
            n |= static_cast<unsigned char>(data[i + 1]) << 8;
        }
        if (i + 2 < data.size()) {
            n |= static_cast<unsigned char>(data[i + 2]);
        }
        out += alphabet[(n >> 18) & 63];
        out += alphabet[(n >> 12) & 63];
        out += i + 1 < data.size() ? alphabet[(n >> 6) & 63] : '=';
        out += i + 2 < data.size() ? alphabet[n & 63] : '=';
    }
    return out;
}

/// The bytes `text` encodes in base64 (white space ignored, padding optional); `invalid_argument` otherwise.
inline result<std::string> base64_decode(std::string_view text) {
    std::string out;
    std::uint32_t bits = 0;
    int count = 0;
    std::size_t padding = 0;
    for (char ch : text) {
        int v = -1;
        if (ch >= 'A' && ch <= 'Z') {
            v = ch - 'A';
        } else if (ch >= 'a' && ch <= 'z') {
            v = ch - 'a' + 26;
        } else if (ch >= '0' && ch <= '9') {
            v = ch - '0' + 52;
        } else if (ch == '+') {
            v = 62;
        } else if (ch == '/') {
            v = 63;
        } else if (ch == '=') {
            ++padding;
            continue;
        } else if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t') {
            continue;
        }
        if (v < 0 || padding > 0) {
            return modelpool::fail(modelpool::errc::invalid_argument, "invalid base64 character '{}'", ch);
        }
        bits = (bits << 6) | static_cast<std::uint32_t>(v);
        count += 6;
        if (count >= 8) {
            count -= 8;
            out += static_cast<char>((bits >> count) & 0xFF);
        }
    }
    if (padding > 2 || count >= 6) {
        return modelpool::fail(modelpool::errc::invalid_argument, "truncated base64 data");
    }
    return out;
}

/// `text` cut to at most `max` characters with "..." appended when cut (for naming data URLs in errors).
inline std::string shorten(std::string_view text, std::size_t max = 60) {
    if (text.size() <= max) {
        return std::string(text);
    }
    return std::string(text.substr(0, max)) + "...";
}

/// The bytes a `data:image/...;base64,...` URL carries; `invalid_argument` naming the (shortened) URL when it
/// is not such a URL or its base64 is malformed.
inline result<std::string> decode_data_url(std::string_view url) {
    constexpr std::string_view scheme = "data:";
    constexpr std::string_view marker = ";base64,";
    const auto comma = url.find(marker);
    if (url.substr(0, scheme.size()) != scheme || comma == std::string_view::npos) {
        return modelpool::fail(modelpool::errc::invalid_argument, "'{}' is not a data:image/...;base64, URL",
                               shorten(url));
    }
    const auto media_type = url.substr(scheme.size(), comma - scheme.size());
    if (media_type.substr(0, 6) != "image/") {
        return modelpool::fail(modelpool::errc::invalid_argument,
                               "data URL '{}' has media type '{}', expected image/...", shorten(url),
                               shorten(media_type));
    }
    auto bytes = base64_decode(url.substr(comma + marker.size()));
    if (!bytes) {
        return modelpool::fail(modelpool::errc::invalid_argument, "data URL '{}' has invalid base64: {}",
                               shorten(url), bytes.error().message());
    }
    return bytes;
}

// ---- PPM and PNG -----------------------------------------------------------------------------------------

/// Largest width or height the decoders accept (a guard against absurd headers).
inline constexpr std::uint32_t max_image_side = 16384;

/// `image` as a binary PPM (P6). Grey and RGBA images are written as RGB.
inline std::string encode_ppm(const Image& image) {
    const Image rgb = to_rgb(image);
    std::string out = "P6\n" + std::to_string(rgb.width) + " " + std::to_string(rgb.height) + "\n255\n";
    out.append(rgb.pixels.begin(), rgb.pixels.end());
    return out;
}

/// Decodes a binary PPM (P6, maxval 255).
inline result<Image> decode_ppm(std::string_view data) {
    std::size_t at = 2;
    auto next_number = [&]() -> std::optional<std::uint32_t> {
        while (at < data.size() && (std::isspace(static_cast<unsigned char>(data[at])) || data[at] == '#')) {
            if (data[at] == '#') {
                at = data.find('\n', at);
                at = at == std::string_view::npos ? data.size() : at;
            } else {
                ++at;
            }
        }
        std::uint64_t v = 0;
        const std::size_t start = at;
        while (at < data.size() && std::isdigit(static_cast<unsigned char>(data[at])) &&
               v <= max_image_side) {
            v = v * 10 + static_cast<unsigned>(data[at++] - '0');
        }
        if (at == start || v > max_image_side) {
            return std::nullopt;
        }
        return static_cast<std::uint32_t>(v);
    };
    if (!data.starts_with("P6")) {
        return modelpool::fail(modelpool::errc::invalid_argument, "not a binary PPM (P6) image");
    }
    auto width = next_number();
    auto height = next_number();
    auto maxval = next_number();
    if (!width || !height || !maxval || *width == 0 || *height == 0 || *maxval != 255 || at >= data.size()) {
        return modelpool::fail(modelpool::errc::invalid_argument,
                               "bad PPM header (want 'P6 <width> <height> 255', sides 1..{})",
                               max_image_side);
    }
    ++at; // the single white space after maxval
    const std::size_t bytes = std::size_t{*width} * *height * 3;
    if (data.size() - at < bytes) {
        return modelpool::fail(modelpool::errc::invalid_argument, "PPM {}x{} is truncated ({} of {} bytes)",
                               *width, *height, data.size() - at, bytes);
    }
    Image image{*width, *height, 3, {}};
    image.pixels.assign(data.begin() + static_cast<std::ptrdiff_t>(at),
                        data.begin() + static_cast<std::ptrdiff_t>(at + bytes));
    return image;
}

inline constexpr std::string_view png_signature{"\x89PNG\r\n\x1a\n", 8};

/// `image` as a PNG: 8-bit grey, RGB or RGBA, one IDAT chunk holding zlib "stored" deflate blocks (no
/// compression), every row with filter 0.
inline std::string encode_png(const Image& image) {
    auto chunk = [](std::string& out, std::string_view type, std::string_view body) {
        put_be32(out, static_cast<std::uint32_t>(body.size()));
        std::string typed = std::string(type) + std::string(body);
        out += typed;
        put_be32(out, crc32(typed));
    };
    const std::uint8_t color_type = image.channels == 1 ? 0 : image.channels == 4 ? 6 : 2;
    std::string header;
    put_be32(header, image.width);
    put_be32(header, image.height);
    header += {8, static_cast<char>(color_type), 0, 0, 0}; // depth 8, deflate, filter set 0, no interlace

    const std::size_t row = std::size_t{image.width} * image.channels;
    std::string raw;
    raw.reserve((row + 1) * image.height);
    for (std::uint32_t y = 0; y < image.height; ++y) {
        raw += '\0'; // filter type 0 (None)
        raw.append(reinterpret_cast<const char*>(image.pixels.data() + y * row), row);
    }
    std::string zlib = {0x78, 0x01}; // deflate, 32 KiB window, no dictionary, fastest
    std::size_t at = 0;
    do {
        const std::size_t len = std::min<std::size_t>(raw.size() - at, 65535);
        const bool last = at + len == raw.size();
        zlib += static_cast<char>(last ? 1 : 0); // BFINAL, BTYPE 00 (stored)
        zlib += static_cast<char>(len & 0xFF);
        zlib += static_cast<char>(len >> 8);
        zlib += static_cast<char>(~len & 0xFF);
        zlib += static_cast<char>((~len >> 8) & 0xFF);
        zlib.append(raw, at, len);
        at += len;
    } while (at < raw.size());
    put_be32(zlib, adler32(raw));

    std::string out(png_signature);
    chunk(out, "IHDR", header);
    chunk(out, "IDAT", zlib);
    chunk(out, "IEND", {});
    return out;
}

/// Decodes a PNG as `encode_png` writes them: 8-bit grey, RGB or RGBA, not interlaced, with zlib "stored"
/// deflate blocks (any row filter). Checks every CRC and the Adler-32.
inline result<Image> decode_png(std::string_view data) {
    using modelpool::errc;
    using modelpool::fail;
    if (!data.starts_with(png_signature)) {
        return fail(errc::invalid_argument, "not a PNG image");
    }
    std::optional<Image> image;
    std::string zlib;
    bool ended = false;
    for (std::size_t at = png_signature.size(); !ended;) {
        if (data.size() - at < 12) {
            return fail(errc::invalid_argument, "PNG is truncated at byte {}", at);
        }
        const std::uint32_t length = get_be32(data, at);
        if (length > data.size() - at - 12) {
            return fail(errc::invalid_argument, "PNG chunk at byte {} runs past the end", at);
        }
        const std::string_view typed = data.substr(at + 4, 4 + length);
        if (crc32(typed) != get_be32(data, at + 8 + length)) {
            return fail(errc::invalid_argument, "PNG chunk '{}' has a bad CRC", typed.substr(0, 4));
        }
        const std::string_view type = typed.substr(0, 4);
        const std::string_view body = typed.substr(4);
        at += 12 + length;
        if (type == "IHDR") {
            if (body.size() != 13) {
                return fail(errc::invalid_argument, "PNG IHDR has {} bytes, not 13", body.size());
            }
            const std::uint32_t w = get_be32(body, 0);
            const std::uint32_t h = get_be32(body, 4);
            const auto depth = static_cast<unsigned char>(body[8]);
            const auto color = static_cast<unsigned char>(body[9]);
            const std::uint32_t channels = color == 0 ? 1 : color == 2 ? 3 : color == 6 ? 4 : 0;
            if (w == 0 || h == 0 || w > max_image_side || h > max_image_side || depth != 8 || channels == 0 ||
                body[10] != 0 || body[11] != 0 || body[12] != 0) {
                return fail(errc::invalid_argument,
                            "unsupported PNG ({}x{}, depth {}, colour type {}): the demo decoder reads 8-bit "
                            "grey, RGB and RGBA, not interlaced",
                            w, h, depth, color);
            }
            image = Image{w, h, channels, {}};
        } else if (type == "IDAT") {
            zlib.append(body);
        } else if (type == "IEND") {
            ended = true;
        } else if (!(static_cast<unsigned char>(type[0]) & 0x20)) {
            return fail(errc::invalid_argument, "PNG has an unknown critical chunk '{}'", type);
        }
    }
    if (!image) {
        return fail(errc::invalid_argument, "PNG has no IHDR chunk");
    }
    if (zlib.size() < 6 || (static_cast<unsigned char>(zlib[0]) & 0x0F) != 8 || (zlib[1] & 0x20) != 0 ||
        ((static_cast<unsigned char>(zlib[0]) << 8) | static_cast<unsigned char>(zlib[1])) % 31 != 0) {
        return fail(errc::invalid_argument, "PNG image data is not a zlib stream");
    }
    std::string raw;
    std::size_t at = 2;
    for (bool last = false; !last;) {
        if (zlib.size() - at < 5) {
            return fail(errc::invalid_argument, "PNG image data is truncated");
        }
        const auto header = static_cast<unsigned char>(zlib[at]);
        last = header & 1;
        if ((header >> 1) != 0) {
            return fail(
                errc::invalid_argument,
                "PNG uses compressed deflate blocks: the demo decoder reads only stored (uncompressed) "
                "blocks, as encode_png writes them");
        }
        const std::size_t len = static_cast<unsigned char>(zlib[at + 1]) |
                                (static_cast<std::size_t>(static_cast<unsigned char>(zlib[at + 2])) << 8);
        const std::size_t nlen = static_cast<unsigned char>(zlib[at + 3]) |
                                 (static_cast<std::size_t>(static_cast<unsigned char>(zlib[at + 4])) << 8);
        at += 5;
        if ((len ^ 0xFFFF) != nlen || zlib.size() - at < len) {
            return fail(errc::invalid_argument, "PNG has a corrupt stored deflate block");
        }
        raw.append(zlib, at, len);
        at += len;
    }
    if (zlib.size() - at < 4 || get_be32(zlib, at) != adler32(raw)) {
        return fail(errc::invalid_argument, "PNG image data has a bad Adler-32 checksum");
    }
    const std::size_t bpp = image->channels;
    const std::size_t row = std::size_t{image->width} * bpp;
    if (raw.size() != (row + 1) * image->height) {
        return fail(errc::invalid_argument, "PNG image data has {} bytes, expected {}", raw.size(),
                    (row + 1) * image->height);
    }
    auto& px = image->pixels;
    px.resize(row * image->height);
    for (std::size_t y = 0; y < image->height; ++y) {
        const auto filter = static_cast<unsigned char>(raw[y * (row + 1)]);
        const auto* in = reinterpret_cast<const unsigned char*>(raw.data() + y * (row + 1) + 1);
        for (std::size_t i = 0; i < row; ++i) {
            const int a = i >= bpp ? px[y * row + i - bpp] : 0;
            const int b = y > 0 ? px[(y - 1) * row + i] : 0;
            const int c = i >= bpp && y > 0 ? px[(y - 1) * row + i - bpp] : 0;
            int predictor = 0;
            switch (filter) {
            case 0:
                break;
            case 1:
                predictor = a;
                break;
            case 2:
                predictor = b;
                break;
            case 3:
                predictor = (a + b) / 2;
                break;
            case 4: {
                const int p = a + b - c;
                const int pa = std::abs(p - a);
                const int pb = std::abs(p - b);
                const int pc = std::abs(p - c);
                predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
                break;
            }
            default:
                return fail(errc::invalid_argument, "PNG row {} has unknown filter type {}", y, filter);
            }
            px[y * row + i] = static_cast<std::uint8_t>(in[i] + predictor);
        }
    }
    return std::move(*image);
}

/// Decodes a PNG or binary PPM, whichever `data` is.
inline result<Image> decode_image(std::string_view data) {
    if (data.starts_with(png_signature)) {
        return decode_png(data);
    }
    if (data.starts_with("P6")) {
        return decode_ppm(data);
    }
    return modelpool::fail(modelpool::errc::invalid_argument,
                           "unknown image format (the demos read PNG and PPM)");
}

// ---- files (blocking: call from a blocking thread) -------------------------------------------------------

/// The whole content of the file at `path`; `invalid_argument` naming it when it cannot be read.
inline result<std::string> read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return modelpool::fail(modelpool::errc::invalid_argument, "cannot open '{}'", path.string());
    }
    return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Writes `bytes` to `path`, creating its directory: to a temporary file first, then renamed, so a reader
/// (another process too) sees the old file or the whole new one. `invalid_argument` naming it on failure.
inline result<void> write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::error_code ec;
    if (path.has_parent_path()) {
        std::filesystem::create_directories(path.parent_path(), ec);
    }
    std::random_device entropy;
    const auto temporary = path.parent_path() / fmt::format(".{}.{:08x}{:08x}.tmp", path.filename().string(),
                                                            entropy(), entropy());
    bool written = false;
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        written = static_cast<bool>(out.flush());
    }
    if (written) {
        std::filesystem::rename(temporary, path, ec);
    }
    if (!written || ec) {
        std::filesystem::remove(temporary, ec);
        return modelpool::fail(modelpool::errc::invalid_argument, "cannot write '{}'", path.string());
    }
    return {};
}

/// Reads and decodes the PNG or PPM file at `path`.
inline result<Image> load_image(const std::filesystem::path& path) {
    auto bytes = read_file(path);
    if (!bytes) {
        return modelpool::unexpected<modelpool::PoolError>(bytes.error());
    }
    return decode_image(*bytes);
}

/// Writes `image` to `path` as PNG, or as PPM when the extension is ".ppm".
inline result<void> save_image(const std::filesystem::path& path, const Image& image) {
    if (auto ok = check_image(image); !ok) {
        return ok;
    }
    return write_file(path, path.extension() == ".ppm" ? encode_ppm(image) : encode_png(image));
}

// ---- coroutine patterns of the image models --------------------------------------------------------------

/// The base of the image demo models: their weights, shared by copies of the model and by work offloaded to
/// the blocking executor (`blocking_`, the pool's), and their loader.
template <class Derived, class W> class ImageModel {
public:
    using Weights = W;

    /// A model with `weights`, offloading the CPU work of its coroutine operations to `blocking`.
    ImageModel(Weights weights, asio::any_io_executor blocking)
        : weights_(std::make_shared<const Weights>(std::move(weights))), blocking_(std::move(blocking)) {}

    /// The loader: fetches the weight file from `weights_url` (a `WeightServer`) with `http_get`, parses it
    /// with `Derived::parse_weights` and builds the model. Never blocks.
    static asio::awaitable<result<Derived>> load(std::string weights_url, asio::any_io_executor blocking) {
        return load_from_url<Derived>(std::move(weights_url), builder(std::move(blocking)));
    }

    /// A model loader for `pool.spawn_*_worker` (or `register_*_model`): each call runs `load(weights_url,
    /// blocking)`.
    static auto loader(std::string weights_url, asio::any_io_executor blocking) {
        return url_loader<Derived>(std::move(weights_url), builder(std::move(blocking)));
    }

    /// The model's weights.
    const Weights& weights() const { return *weights_; }

protected:
    /// Builds the model from the bytes of its weight file.
    static auto builder(asio::any_io_executor blocking) {
        return [blocking](std::string_view bytes, std::string_view url) -> result<Derived> {
            auto weights = Derived::parse_weights(bytes);
            if (!weights) {
                return modelpool::fail(weights.error().code(), "{}: {}", url, weights.error().message());
            }
            return Derived(std::move(*weights), blocking);
        };
    }

    std::shared_ptr<const Weights> weights_;
    asio::any_io_executor blocking_;
};

/// Where an image comes from: a file (read on the blocking executor) or an http:// URL (fetched on the
/// io_context).
struct ImageSource {
    std::string location;
    bool is_url = false;
};

/// Gets the image `source` names and runs `fn(image)` (returning `result<R>`) on `blocking`; the coroutine
/// itself only awaits, so the io_context never blocks. `fn` is copied to the blocking thread: capture by
/// value.
template <class Fn>
auto with_image(asio::any_io_executor blocking, ImageSource source, Fn fn)
    -> asio::awaitable<std::invoke_result_t<Fn&, const Image&>> {
    std::string bytes;
    if (source.is_url && source.location.starts_with("data:")) {
        auto decoded = decode_data_url(source.location); // the image travels in the URL itself
        if (!decoded) {
            co_return modelpool::unexpected<modelpool::PoolError>(decoded.error());
        }
        bytes = std::move(*decoded);
    } else if (source.is_url) {
        auto fetch = http_get(source.location); // named: g++ 12 miscompiles temporaries in co_await operands
        auto fetched = co_await std::move(fetch);
        if (!fetched) {
            co_return modelpool::fail(modelpool::errc::invalid_argument, "cannot fetch the image: {}",
                                      shorten(fetched.error().message(), 200));
        }
        bytes = std::move(*fetched);
    }
    auto work = [source = std::move(source), bytes = std::move(bytes),
                 fn = std::move(fn)]() -> std::invoke_result_t<Fn&, const Image&> {
        auto image = source.is_url ? decode_image(bytes) : load_image(source.location);
        if (!image) {
            return modelpool::unexpected<modelpool::PoolError>(image.error());
        }
        return fn(*image);
    };
    co_return co_await modelpool::offload(blocking, std::move(work));
}

// ---- reading a whole stream (for the examples) -----------------------------------------------------------

/// Reads `stream` to its end in a coroutine: every chunk, or the error that ended it.
template <class Chunk>
asio::awaitable<result<std::vector<Chunk>>> collect_stream(modelpool::Stream<Chunk>& stream) {
    std::vector<Chunk> chunks;
    for (;;) {
        auto next = co_await stream.async_next(asio::use_awaitable);
        if (!next) {
            co_return modelpool::unexpected<modelpool::PoolError>(next.error());
        }
        if (!*next) {
            co_return chunks;
        }
        chunks.push_back(std::move(**next));
    }
}

/// Reads `stream` to its end from a plain thread (never a pool thread), waiting on futures.
template <class Chunk> result<std::vector<Chunk>> collect_stream_blocking(modelpool::Stream<Chunk>& stream) {
    std::vector<Chunk> chunks;
    for (;;) {
        auto next = stream.async_next(asio::use_future).get();
        if (!next) {
            return modelpool::unexpected<modelpool::PoolError>(next.error());
        }
        if (!*next) {
            return chunks;
        }
        chunks.push_back(std::move(**next));
    }
}

} // namespace demo
