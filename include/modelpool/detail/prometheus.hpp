// modelpool/detail/prometheus.hpp
//
// A small writer of the Prometheus text exposition format, version 0.0.4 (HTTP Content-Type
// "text/plain; version=0.0.4"), for exporting a pool's counters, gauges and latency histograms. It only
// formats: callers collect the values (snapshots) and serve or log the text.
//
// What it guarantees, per the format's rules:
//  - each family starts with "# HELP name text" (omitted when the help is empty) and "# TYPE name type",
//  once,
//    before its samples; all samples of a family follow it together (one family at a time);
//  - HELP text escapes `\` and line feed; label values escape `\`, `"` and line feed;
//  - values print as the shortest decimal that reads back to the same double ("0.005", "1", "1e-05"), or as
//    "+Inf", "-Inf", "NaN"; integers print exactly;
//  - a histogram series is its cumulative `name_bucket{...,le="..."}` lines ending with le="+Inf", then
//    `name_sum` and `name_count` (equal to the +Inf bucket).
// It does not check names at run time: callers pass constant metric and label names, which debug builds
// assert to match [a-zA-Z_:][a-zA-Z0-9_:]* and [a-zA-Z_][a-zA-Z0-9_]*. Misuse (a sample outside its family, a
// family started twice, a malformed snapshot) is a debug assertion; release builds write the text anyway. Not
// thread-safe: one writer per exposition.
#pragma once

#include "modelpool/histogram.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace modelpool::detail {

/// Whether `name` is a valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
constexpr bool is_valid_metric_name(std::string_view name) noexcept {
    if (name.empty()) {
        return false;
    }
    for (std::size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        const bool digit = c >= '0' && c <= '9';
        if (!(alpha || (i > 0 && digit))) {
            return false;
        }
    }
    return true;
}

/// Whether `name` is a valid Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*` (names starting with "__" are
/// reserved for Prometheus itself; this does not reject them).
constexpr bool is_valid_label_name(std::string_view name) noexcept {
    return is_valid_metric_name(name) && name.find(':') == std::string_view::npos;
}

namespace prometheus_text {

/// Appends `text` to `out` with `\` and line feed escaped, and `"` too when `quote` is set.
inline void append_escaped(std::string& out, std::string_view text, bool quote) {
    for (const char c : text) {
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '"' && quote) {
            out += "\\\"";
        } else {
            out += c;
        }
    }
}

/// Appends a sample value: shortest round-trip decimal, "+Inf", "-Inf" or "NaN".
inline void append_value(std::string& out, double value) {
    if (std::isnan(value)) {
        out += "NaN";
    } else if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
    } else {
        fmt::format_to(std::back_inserter(out), "{}", value);
    }
}

} // namespace prometheus_text

/// `text` as a label value is written between the double quotes: `\` -> `\\`, `"` -> `\"`, line feed -> `\n`.
inline std::string escape_label_value(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    prometheus_text::append_escaped(out, text, true);
    return out;
}

/// `text` as HELP text is written: `\` -> `\\`, line feed -> `\n` (double quotes stay as they are).
inline std::string escape_help(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    prometheus_text::append_escaped(out, text, false);
    return out;
}

/// A value as the writer prints it: "0.005", "1", "1e-05", "+Inf", "-Inf", "NaN".
inline std::string format_value(double value) {
    std::string out;
    prometheus_text::append_value(out, value);
    return out;
}

/// Builds one exposition in the text format 0.0.4. Usage:
///
///     prometheus_writer w;
///     w.family("modelpool_queue_depth", "gauge", "Requests waiting in a key's queue.");
///     w.sample("modelpool_queue_depth", {{"key", key}}, depth);
///     w.family("modelpool_request_seconds", "histogram", "Request latency.");
///     w.histogram("modelpool_request_seconds", {{"key", key}}, snapshot);
///     serve(std::move(w).take());
///
/// Naming rule: a sample's name is its family's name exactly. Counters therefore name their family with the
/// `_total` suffix ("modelpool_requests_total"), as format 0.0.4 does in both the TYPE line and the samples;
/// histograms name the family by its base name and `histogram()` appends `_bucket`, `_sum` and `_count`.
class prometheus_writer {
public:
    /// A label: name (constant, valid) and value (any text; escaped when written).
    using label = std::pair<std::string_view, std::string_view>;

    /// Starts a family: writes "# HELP name help" (unless `help` is empty) and "# TYPE name type". `type` is
    /// "counter", "gauge", "histogram" or "untyped". Each family is started once, and its samples follow
    /// before the next family starts.
    void family(std::string_view name, std::string_view type, std::string_view help) {
        assert(is_valid_metric_name(name) && "prometheus_writer: invalid metric name");
        assert((type == "counter" || type == "gauge" || type == "histogram" || type == "untyped") &&
               "prometheus_writer: unknown metric type");
        assert(std::find(started_.begin(), started_.end(), name) == started_.end() &&
               "prometheus_writer: family started twice");
        started_.emplace_back(name);
        type_ = type;
        if (!help.empty()) {
            fmt::format_to(std::back_inserter(out_), "# HELP {} ", name);
            prometheus_text::append_escaped(out_, help, false);
            out_ += '\n';
        }
        fmt::format_to(std::back_inserter(out_), "# TYPE {} {}\n", name, type);
    }

    /// One sample of the current counter, gauge or untyped family; `name` is the family's name.
    void sample(std::string_view name, std::span<const label> labels, double value) {
        begin_sample(name, labels);
        prometheus_text::append_value(out_, value);
        out_ += '\n';
    }
    /// One sample with an integer value, printed exactly.
    void sample(std::string_view name, std::span<const label> labels, std::uint64_t value) {
        begin_sample(name, labels);
        fmt::format_to(std::back_inserter(out_), "{}\n", value);
    }
    /// One sample with a value of another integer type (int, std::size_t, ...), printed exactly.
    template <std::integral T>
        requires(!std::same_as<T, bool> && !std::same_as<T, std::uint64_t>)
    void sample(std::string_view name, std::span<const label> labels, T value) {
        begin_sample(name, labels);
        fmt::format_to(std::back_inserter(out_), "{}\n", value);
    }
    /// `sample()` with the labels as a brace list: `w.sample("name", {{"key", key}}, value)`, or `{}` for
    /// none.
    template <class T>
        requires(std::is_arithmetic_v<T> && !std::same_as<T, bool>)
    void sample(std::string_view name, std::initializer_list<label> labels, T value) {
        sample(name, std::span<const label>(labels.begin(), labels.size()), value);
    }

    /// One series of the current histogram family (`name` is the family's name): `name_bucket` lines with
    /// cumulative counts and `le` appended after `labels`, ending with le="+Inf", then `name_sum` and
    /// `name_count`. `name_count` is the +Inf bucket's count (the sum of `snapshot.counts`), which
    /// `LatencyHistogram::snapshot()` also puts in `snapshot.count`.
    void histogram(std::string_view name, std::span<const label> labels, const HistogramSnapshot& snapshot) {
        assert(type_ == "histogram" && "prometheus_writer: histogram() outside a histogram family");
        assert(snapshot.counts.size() == snapshot.upper_bounds.size() + 1 &&
               "prometheus_writer: a snapshot has one count per bound plus the +Inf bucket");
        assert(std::is_sorted(snapshot.upper_bounds.begin(), snapshot.upper_bounds.end()) &&
               "prometheus_writer: bucket bounds ascend");
        assert(std::none_of(labels.begin(), labels.end(), [](const label& l) { return l.first == "le"; }) &&
               "prometheus_writer: a histogram's labels cannot include le");
        check_series(name, labels);
        std::uint64_t cumulative = 0;
        std::string le;
        for (std::size_t i = 0; i < snapshot.upper_bounds.size(); ++i) {
            cumulative += i < snapshot.counts.size() ? snapshot.counts[i] : 0;
            le.clear();
            prometheus_text::append_value(le, snapshot.upper_bounds[i]);
            const label bound{"le", le};
            write_series(name, "_bucket", labels, &bound);
            fmt::format_to(std::back_inserter(out_), "{}\n", cumulative);
        }
        for (std::size_t i = snapshot.upper_bounds.size(); i < snapshot.counts.size(); ++i) {
            cumulative += snapshot.counts[i];
        }
        assert(cumulative == snapshot.count &&
               "prometheus_writer: snapshot.count is not the sum of its counts");
        const label infinity{"le", "+Inf"};
        write_series(name, "_bucket", labels, &infinity);
        fmt::format_to(std::back_inserter(out_), "{}\n", cumulative);
        write_series(name, "_sum", labels);
        prometheus_text::append_value(out_, snapshot.sum);
        out_ += '\n';
        write_series(name, "_count", labels);
        fmt::format_to(std::back_inserter(out_), "{}\n", cumulative);
    }
    /// `histogram()` with the labels as a brace list.
    void histogram(std::string_view name, std::initializer_list<label> labels,
                   const HistogramSnapshot& snapshot) {
        histogram(name, std::span<const label>(labels.begin(), labels.size()), snapshot);
    }

    /// The text written so far; every line ends with a line feed.
    [[nodiscard]] const std::string& text() const noexcept { return out_; }
    /// Moves the text out.
    [[nodiscard]] std::string take() && { return std::move(out_); }

private:
    void check_series([[maybe_unused]] std::string_view name,
                      [[maybe_unused]] std::span<const label> labels) const {
        assert(!started_.empty() && "prometheus_writer: a sample before any family()");
        assert(!started_.empty() && started_.back() == name &&
               "prometheus_writer: a sample's name is its current family's name");
        assert(std::all_of(labels.begin(), labels.end(),
                           [](const label& l) { return is_valid_label_name(l.first); }) &&
               "prometheus_writer: invalid label name");
    }

    void begin_sample(std::string_view name, std::span<const label> labels) {
        assert(type_ != "histogram" && "prometheus_writer: use histogram() in a histogram family");
        check_series(name, labels);
        write_series(name, {}, labels);
    }

    // Writes `name` `suffix` `{labels, extra}` and the space before the value.
    void write_series(std::string_view name, std::string_view suffix, std::span<const label> labels,
                      const label* extra = nullptr) {
        out_ += name;
        out_ += suffix;
        if (!labels.empty() || extra != nullptr) {
            char separator = '{';
            auto put = [&](const label& l) {
                out_ += separator;
                out_ += l.first;
                out_ += "=\"";
                prometheus_text::append_escaped(out_, l.second, true);
                out_ += '"';
                separator = ',';
            };
            for (const label& l : labels) {
                put(l);
            }
            if (extra != nullptr) {
                put(*extra);
            }
            out_ += '}';
        }
        out_ += ' ';
    }

    std::string out_;
    std::vector<std::string> started_; // families started, in order; the last is the current one
    std::string type_;                 // the current family's type
};

} // namespace modelpool::detail
