// modelpool/detail/backoff.hpp
//
// Retry backoff for the pool: capped exponential delays with "equal jitter" (each delay drawn uniformly from
// [d/2, d]), and a small deterministic random source so that a seeded pool retries on a reproducible
// schedule. Standard library only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace modelpool::detail {

/// splitmix64: a deterministic jitter source (seeded per key by the pool). Equal seeds give equal sequences.
/// Not thread-safe: one instance per key, used under that key's synchronisation.
class jitter_source {
public:
    /// A source whose sequence is determined by `seed` (any value, 0 included).
    explicit jitter_source(std::uint64_t seed) noexcept : state_(seed) {}

    /// The next 64 pseudo-random bits.
    std::uint64_t next() noexcept {
        std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }

    /// The next value uniformly in [0, 1): the top 53 bits of `next()` scaled by 2^-53.
    double unit() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

private:
    std::uint64_t state_;
};

/// The delay before retry number `attempt` (1-based); attempt 0 gives 0 ms.
///
/// First d = min(max, initial * 2^(attempt-1)), computed without overflow for any attempt (it saturates at
/// `max`); then "equal jitter": the result is uniform in [d/2, d] (d/2 rounded down), chosen by `unit` in
/// [0, 1): unit 0 gives d/2, unit just below 1 gives d (exactly for d below 2^53 ms; within double rounding
/// above). A `unit` outside [0, 1) is clamped (NaN counts as 0).
/// A non-positive `initial` or `max` gives 0 ms.
inline std::chrono::milliseconds backoff_delay(std::size_t attempt, std::chrono::milliseconds initial,
                                               std::chrono::milliseconds max, double unit) noexcept {
    using rep = std::chrono::milliseconds::rep;
    if (attempt == 0 || initial.count() <= 0 || max.count() <= 0) {
        return std::chrono::milliseconds{0};
    }
    const std::size_t shift = attempt - 1;
    // initial * 2^shift <= max  <=>  initial <= max >> shift (both positive); a shift of 63 or more leaves
    // max >> shift == 0, so it is tested first to keep the shift defined.
    const rep d =
        shift >= 63 || initial.count() > (max.count() >> shift) ? max.count() : initial.count() << shift;
    const rep half = d / 2;
    const rep span = d - half; // offsets 0..span inclusive
    rep offset = 0;
    if (unit >= 1.0) {
        offset = span;
    } else if (unit > 0.0) {
        // unit * (span + 1) < span + 1 <= 2^62 + 1: exact enough, and always convertible.
        offset = static_cast<rep>(unit * static_cast<double>(span + 1));
        if (offset > span) { // rounding of a unit very close to 1
            offset = span;
        }
    }
    return std::chrono::milliseconds{half + offset};
}

} // namespace modelpool::detail
