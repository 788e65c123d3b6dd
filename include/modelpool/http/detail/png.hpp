// modelpool/http/detail/png.hpp
//
// A minimal PNG encoder for `/v1/images/generations` (`b64_json`): 8-bit grey, RGB or RGBA, no filtering, the
// image data in a zlib stream of *stored* (uncompressed) deflate blocks, with the CRC-32 of each chunk and
// the Adler-32 of the zlib stream. Output is about as large as the raw pixels, which is fine for generated
// images sent once; any PNG decoder reads it. Boost has no PNG writer (GIL's needs libpng), hence this.
#pragma once

#include "modelpool/error.hpp"
#include "modelpool/types.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace modelpool::http::detail {

/// CRC-32 (ISO-HDLC, as PNG uses it) of `bytes`, continuing from `crc` (0 to start).
inline std::uint32_t crc32(std::span<const std::uint8_t> bytes, std::uint32_t crc = 0) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t n = 0; n < 256; ++n) {
            std::uint32_t c = n;
            for (int k = 0; k < 8; ++k) {
                c = (c & 1U) != 0 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
            }
            t[n] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (const auto b : bytes) {
        crc = table[(crc ^ b) & 0xFFU] ^ (crc >> 8);
    }
    return ~crc;
}

/// Adler-32 of `bytes` (the zlib stream's checksum).
inline std::uint32_t adler32(std::span<const std::uint8_t> bytes) {
    std::uint32_t a = 1;
    std::uint32_t b = 0;
    for (const auto byte : bytes) {
        a = (a + byte) % 65521U;
        b = (b + a) % 65521U;
    }
    return (b << 16) | a;
}

inline void put_u32_be(std::vector<std::uint8_t>& out, std::uint32_t v) {
    out.push_back(static_cast<std::uint8_t>(v >> 24));
    out.push_back(static_cast<std::uint8_t>(v >> 16));
    out.push_back(static_cast<std::uint8_t>(v >> 8));
    out.push_back(static_cast<std::uint8_t>(v));
}

/// Appends one PNG chunk: length, type, data, CRC of type and data.
inline void put_png_chunk(std::vector<std::uint8_t>& out, std::string_view type,
                          std::span<const std::uint8_t> data) {
    put_u32_be(out, static_cast<std::uint32_t>(data.size()));
    const auto start = out.size();
    out.insert(out.end(), type.begin(), type.end());
    out.insert(out.end(), data.begin(), data.end());
    put_u32_be(out, crc32(std::span(out).subspan(start)));
}

/// `image` as PNG bytes; `invalid_argument` for an empty image, a channel count other than 1, 3 or 4, or a
/// pixel buffer of the wrong size.
inline result<std::vector<std::uint8_t>> encode_png(const Image& image) {
    if (image.width == 0 || image.height == 0) {
        return fail(errc::invalid_argument, "cannot encode an empty image ({}x{}) as PNG", image.width,
                    image.height);
    }
    const std::uint8_t color_type = image.channels == 1   ? 0
                                    : image.channels == 3 ? 2
                                    : image.channels == 4 ? 6
                                                          : 255;
    if (color_type == 255) {
        return fail(errc::invalid_argument, "cannot encode an image of {} channels as PNG (1, 3 or 4)",
                    image.channels);
    }
    const std::size_t row = std::size_t{image.width} * image.channels;
    if (image.pixels.size() != row * image.height) {
        return fail(errc::invalid_argument, "image of {}x{}x{} has {} bytes of pixels, expected {}",
                    image.width, image.height, image.channels, image.pixels.size(), row * image.height);
    }
    // The filtered image data: each row prefixed by filter type 0 (none).
    std::vector<std::uint8_t> raw;
    raw.reserve((row + 1) * image.height);
    for (std::uint32_t y = 0; y < image.height; ++y) {
        raw.push_back(0);
        const auto* begin = image.pixels.data() + y * row;
        raw.insert(raw.end(), begin, begin + row);
    }
    // zlib: header (deflate, 32K window, no dictionary, fastest level), stored blocks of <= 65535 bytes,
    // Adler-32.
    std::vector<std::uint8_t> zlib{0x78, 0x01};
    constexpr std::size_t max_block = 65535;
    std::size_t offset = 0;
    do {
        const std::size_t len = std::min(max_block, raw.size() - offset);
        const bool final_block = offset + len == raw.size();
        zlib.push_back(final_block ? 1 : 0); // BFINAL, BTYPE 00 (stored)
        zlib.push_back(static_cast<std::uint8_t>(len));
        zlib.push_back(static_cast<std::uint8_t>(len >> 8));
        zlib.push_back(static_cast<std::uint8_t>(~len));
        zlib.push_back(static_cast<std::uint8_t>(~len >> 8));
        zlib.insert(zlib.end(), raw.begin() + static_cast<std::ptrdiff_t>(offset),
                    raw.begin() + static_cast<std::ptrdiff_t>(offset + len));
        offset += len;
    } while (offset < raw.size());
    put_u32_be(zlib, adler32(raw));

    std::vector<std::uint8_t> png{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    std::vector<std::uint8_t> header;
    put_u32_be(header, image.width);
    put_u32_be(header, image.height);
    header.insert(header.end(), {8, color_type, 0, 0, 0}); // depth 8, compression 0, filter 0, no interlace
    put_png_chunk(png, "IHDR", header);
    put_png_chunk(png, "IDAT", zlib);
    put_png_chunk(png, "IEND", {});
    return png;
}

} // namespace modelpool::http::detail
