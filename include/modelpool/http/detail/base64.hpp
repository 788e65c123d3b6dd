// modelpool/http/detail/base64.hpp
//
// Standard base64 (RFC 4648, with padding) for the HTTP front end: embeddings with `encoding_format:
// "base64"`, PNG images as `b64_json`, and `data:` URLs. Decoding rejects anything that is not canonical
// base64 (whitespace included), so a bad input is an error, not garbage.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace modelpool::http::detail {

inline constexpr std::string_view base64_alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in base64, padded with '='.
inline std::string base64_encode(std::span<const std::uint8_t> bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t v =
            (std::uint32_t{bytes[i]} << 16) | (std::uint32_t{bytes[i + 1]} << 8) | bytes[i + 2];
        out.push_back(base64_alphabet[(v >> 18) & 63]);
        out.push_back(base64_alphabet[(v >> 12) & 63]);
        out.push_back(base64_alphabet[(v >> 6) & 63]);
        out.push_back(base64_alphabet[v & 63]);
    }
    if (const std::size_t rest = bytes.size() - i; rest > 0) {
        std::uint32_t v = std::uint32_t{bytes[i]} << 16;
        if (rest == 2) {
            v |= std::uint32_t{bytes[i + 1]} << 8;
        }
        out.push_back(base64_alphabet[(v >> 18) & 63]);
        out.push_back(base64_alphabet[(v >> 12) & 63]);
        out.push_back(rest == 2 ? base64_alphabet[(v >> 6) & 63] : '=');
        out.push_back('=');
    }
    return out;
}

/// The bytes `text` encodes, or nullopt when it is not padded base64 of the standard alphabet.
inline std::optional<std::vector<std::uint8_t>> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::array<int, 256> value{};
    value.fill(-1);
    for (std::size_t i = 0; i < base64_alphabet.size(); ++i) {
        value[static_cast<unsigned char>(base64_alphabet[i])] = static_cast<int>(i);
    }
    std::vector<std::uint8_t> out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        std::array<int, 4> v{};
        int padding = 0;
        for (std::size_t j = 0; j < 4; ++j) {
            const char c = text[i + j];
            if (c == '=' && last && j >= 2) {
                v[j] = 0;
                ++padding;
                continue;
            }
            if (padding > 0) {
                return std::nullopt; // data after padding
            }
            v[j] = value[static_cast<unsigned char>(c)];
            if (v[j] < 0) {
                return std::nullopt;
            }
        }
        const auto bits = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) |
                          (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
        out.push_back(static_cast<std::uint8_t>(bits >> 16));
        if (padding < 2) {
            out.push_back(static_cast<std::uint8_t>(bits >> 8));
        }
        if (padding < 1) {
            out.push_back(static_cast<std::uint8_t>(bits));
        }
    }
    return out;
}

} // namespace modelpool::http::detail
