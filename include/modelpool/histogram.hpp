// modelpool/histogram.hpp
//
// Latency histograms for the pool's timings (queue wait, service time, loader time): fixed buckets in
// seconds, as Prometheus histograms have, so they export without conversion (modelpool/detail/prometheus.hpp)
// and a snapshot can estimate quantiles the way PromQL's histogram_quantile() does.
//
// Thread safety: `LatencyHistogram::record()` and `snapshot()` may be called from any number of threads at
// once. `record()` costs a binary search over 17 integers and two relaxed atomic adds (the bucket and the
// sum); it never allocates, locks or throws. A snapshot taken while others record is not a single atomic cut:
// its bucket counts and `count` always agree (count is their sum), but `sum` may include an observation whose
// bucket was read before it was counted, or miss one.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace modelpool {

/// A copy of a histogram at one moment.
struct HistogramSnapshot {
    /// Finite bucket upper bounds in seconds, ascending (Prometheus "le" values).
    std::vector<double> upper_bounds;
    /// Observations per bucket, not cumulative: `counts[i]` holds values in (upper_bounds[i-1],
    /// upper_bounds[i]]; size `upper_bounds.size() + 1`, the last one being the +Inf bucket.
    std::vector<std::uint64_t> counts;
    /// Observations in all buckets.
    std::uint64_t count = 0;
    /// Sum of the observations in seconds.
    double sum = 0;

    /// Estimates the `q`-quantile (q clamped to [0, 1]; NaN counts as 0) by linear interpolation inside the
    /// bucket that holds it, like Prometheus' histogram_quantile(): the first bucket starts at 0. Returns 0
    /// when the histogram is empty, and the largest finite bound when the quantile falls in the +Inf bucket
    /// (0 if there is no finite bound).
    [[nodiscard]] double quantile(double q) const {
        std::uint64_t total = 0;
        for (auto c : counts) {
            total += c;
        }
        if (total == 0) {
            return 0;
        }
        if (!(q > 0)) {
            q = 0;
        } else if (q > 1) {
            q = 1;
        }
        const double rank = q * static_cast<double>(total);
        const std::size_t finite = std::min(upper_bounds.size(), counts.size());
        std::uint64_t below = 0; // observations in buckets before `i`
        for (std::size_t i = 0; i < finite; ++i) {
            const std::uint64_t cumulative = below + counts[i];
            // The first non-empty bucket whose cumulative count reaches the rank. For rank > 0 that is simply
            // the first bucket reaching it; for rank 0 skipping empty buckets avoids 0/0.
            if (counts[i] > 0 && static_cast<double>(cumulative) >= rank) {
                const double start = i == 0 ? 0.0 : upper_bounds[i - 1];
                const double end = upper_bounds[i];
                return start +
                       (end - start) * ((rank - static_cast<double>(below)) / static_cast<double>(counts[i]));
            }
            below = cumulative;
        }
        return finite == 0 ? 0.0 : upper_bounds[finite - 1];
    }

    /// `sum / count`; 0 when empty.
    [[nodiscard]] double mean() const { return count == 0 ? 0.0 : sum / static_cast<double>(count); }
};

namespace detail {

/// A snapshot of buckets `counts` (the last one +Inf) with finite upper `bounds` and `sum`.
template <std::size_t N>
HistogramSnapshot snapshot_of(const std::array<double, N>& bounds,
                              const std::array<std::atomic<std::uint64_t>, N + 1>& counts, double sum) {
    HistogramSnapshot snap;
    snap.upper_bounds.assign(bounds.begin(), bounds.end());
    snap.counts.resize(counts.size());
    for (std::size_t i = 0; i < counts.size(); ++i) {
        snap.counts[i] = counts[i].load(std::memory_order_relaxed);
        snap.count += snap.counts[i];
    }
    snap.sum = sum;
    return snap;
}

} // namespace detail

/// Lock-free latency histogram with fixed buckets (relaxed atomics). Not copyable or movable.
class LatencyHistogram {
public:
    /// Bucket upper bounds in seconds. Wider than Prometheus' default (5 ms to 10 s) at both ends: model
    /// serving sees sub-millisecond queue waits and cache hits as well as generations and model loads of a
    /// minute or more, so the buckets run from 0.5 ms to 2 minutes, roughly 1-2.5-5 per decade.
    static constexpr std::array<double, 17> default_bounds = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};

    /// An empty histogram with `default_bounds`.
    LatencyHistogram() noexcept = default;
    LatencyHistogram(const LatencyHistogram&) = delete;
    LatencyHistogram& operator=(const LatencyHistogram&) = delete;

    /// Records one observation. Negative durations count as 0. A value equal to a bound goes into that
    /// bound's bucket ("less than or equal"). Lock-free: two relaxed atomic adds, no allocation.
    void record(std::chrono::nanoseconds elapsed) noexcept {
        const auto ticks = elapsed.count();
        const auto ns = ticks < 0 ? std::uint64_t{0} : static_cast<std::uint64_t>(ticks);
        const auto bucket = static_cast<std::size_t>(
            std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), ns) - bounds_ns_.begin());
        counts_[bucket].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(ns, std::memory_order_relaxed);
    }

    /// Copies the counts. `count` is the sum of the copied bucket counts, so the two always agree.
    [[nodiscard]] HistogramSnapshot snapshot() const {
        return detail::snapshot_of(default_bounds, counts_,
                                   static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9);
    }

private:
    // The bounds in integer nanoseconds, so that record() compares integers exactly (0.0005 s is 500000 ns).
    static constexpr std::array<std::uint64_t, default_bounds.size()> bounds_ns_ = [] {
        std::array<std::uint64_t, default_bounds.size()> ns{};
        for (std::size_t i = 0; i < default_bounds.size(); ++i) {
            ns[i] = static_cast<std::uint64_t>(default_bounds[i] * 1e9 + 0.5);
        }
        return ns;
    }();

    std::array<std::atomic<std::uint64_t>, default_bounds.size() + 1> counts_{}; // last: +Inf
    std::atomic<std::uint64_t> sum_ns_{
        0}; // integer nanoseconds: exact, and lock-free unlike atomic<double> adds
};

/// Lock-free histogram of sizes (e.g. requests per batch call) with power-of-two buckets 1, 2, 4, ... 1024;
/// its snapshot's bounds and sum are in items instead of seconds. Not copyable or movable.
class SizeHistogram {
public:
    /// Bucket upper bounds.
    static constexpr std::array<double, 11> default_bounds = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

    /// An empty histogram.
    SizeHistogram() noexcept = default;
    SizeHistogram(const SizeHistogram&) = delete;
    SizeHistogram& operator=(const SizeHistogram&) = delete;

    /// Records one observation. Lock-free: two relaxed atomic adds, no allocation.
    void record(std::size_t size) noexcept {
        std::size_t bucket = 0;
        while (bucket < default_bounds.size() && static_cast<double>(size) > default_bounds[bucket]) {
            ++bucket;
        }
        counts_[bucket].fetch_add(1, std::memory_order_relaxed);
        sum_.fetch_add(size, std::memory_order_relaxed);
    }

    /// Copies the counts (see LatencyHistogram::snapshot).
    [[nodiscard]] HistogramSnapshot snapshot() const {
        return detail::snapshot_of(default_bounds, counts_,
                                   static_cast<double>(sum_.load(std::memory_order_relaxed)));
    }

private:
    std::array<std::atomic<std::uint64_t>, default_bounds.size() + 1> counts_{}; // last: +Inf
    std::atomic<std::uint64_t> sum_{0};
};

} // namespace modelpool
