// Tests of the latency histogram (modelpool/histogram.hpp) and the Prometheus
// text writer (modelpool/detail/prometheus.hpp).
//
// Nothing sleeps: the concurrent test starts its threads on a std::latch and
// counts exact totals.
#include "support/catch.hpp"

#include <modelpool/detail/prometheus.hpp>
#include <modelpool/histogram.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <latch>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using modelpool::HistogramSnapshot;
using modelpool::LatencyHistogram;
using modelpool::detail::prometheus_writer;
using namespace std::chrono_literals;

constexpr std::size_t bucket_count = LatencyHistogram::default_bounds.size() + 1;

// The index of the bucket one recording of `elapsed` lands in.
std::size_t bucket_of(std::chrono::nanoseconds elapsed) {
    LatencyHistogram histogram;
    histogram.record(elapsed);
    auto snap = histogram.snapshot();
    REQUIRE(snap.counts.size() == bucket_count);
    REQUIRE(snap.count == 1);
    for (std::size_t i = 0; i < snap.counts.size(); ++i) {
        if (snap.counts[i] != 0) {
            REQUIRE(snap.counts[i] == 1);
            return i;
        }
    }
    FAIL("no bucket counted the observation");
    return bucket_count;
}

// A bound of default_bounds in integer nanoseconds.
std::chrono::nanoseconds bound_ns(std::size_t i) {
    return std::chrono::nanoseconds(
        static_cast<std::int64_t>(LatencyHistogram::default_bounds[i] * 1e9 + 0.5));
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        lines.push_back(line);
    }
    return lines;
}

// A histogram snapshot with the default bounds and the given per-bucket counts
// (rest 0).
HistogramSnapshot snapshot_with(std::vector<std::uint64_t> counts, double sum = 0) {
    HistogramSnapshot snap;
    snap.upper_bounds.assign(LatencyHistogram::default_bounds.begin(),
                             LatencyHistogram::default_bounds.end());
    counts.resize(bucket_count, 0);
    snap.counts = counts;
    for (auto c : counts) {
        snap.count += c;
    }
    snap.sum = sum;
    return snap;
}

} // namespace

// --- LatencyHistogram
// -----------------------------------------------------------------------------------------

TEST_CASE("A value equal to a bucket bound is counted in that bucket (le)", "[metrics]") {
    for (std::size_t i = 0; i < LatencyHistogram::default_bounds.size(); ++i) {
        INFO("bound " << LatencyHistogram::default_bounds[i]);
        CHECK(bucket_of(bound_ns(i)) == i);
        CHECK(bucket_of(bound_ns(i) + 1ns) == i + 1);
        CHECK(bucket_of(bound_ns(i) - 1ns) == i);
    }
    CHECK(bucket_of(0ns) == 0);
    CHECK(bucket_of(500us) == 0);
    CHECK(bucket_of(1ms) == 1);
    CHECK(bucket_of(120s) == bucket_count - 2);
    CHECK(bucket_of(120s + 1ns) == bucket_count - 1);
    CHECK(bucket_of(std::chrono::hours(24 * 365)) == bucket_count - 1);
}

TEST_CASE("Negative durations are recorded as zero", "[metrics]") {
    LatencyHistogram histogram;
    histogram.record(-5ms);
    histogram.record(std::chrono::nanoseconds(std::numeric_limits<std::int64_t>::min()));
    auto snap = histogram.snapshot();
    CHECK(snap.count == 2);
    CHECK(snap.counts[0] == 2);
    CHECK(snap.sum == 0.0);
}

TEST_CASE("The histogram keeps an exact sum and count", "[metrics]") {
    LatencyHistogram histogram;
    auto empty = histogram.snapshot();
    CHECK(empty.count == 0);
    CHECK(empty.sum == 0.0);
    CHECK(empty.mean() == 0.0);
    CHECK(empty.upper_bounds == std::vector<double>(LatencyHistogram::default_bounds.begin(),
                                                    LatencyHistogram::default_bounds.end()));

    // Ten times 0.1 s: a double accumulator would give 0.9999999999999999;
    // integer nanoseconds give 1 exactly.
    for (int i = 0; i < 10; ++i) {
        histogram.record(100ms);
    }
    auto snap = histogram.snapshot();
    CHECK(snap.count == 10);
    CHECK(snap.sum == 1.0);
    CHECK(snap.mean() == 0.1);
    CHECK(snap.counts[7] == 10); // (0.05, 0.1]

    histogram.record(3s + 3ns);
    snap = histogram.snapshot();
    CHECK(snap.count == 11);
    CHECK(snap.sum == 4.000000003);
    CHECK(snap.counts[12] == 1); // (2.5, 5]
    std::uint64_t total = 0;
    for (auto c : snap.counts) {
        total += c;
    }
    CHECK(total == snap.count);
}

TEST_CASE("Concurrent records from 4 threads are all counted", "[metrics]") {
    constexpr int threads = 4;
    constexpr int per_thread = 25'000;
    const std::chrono::nanoseconds values[4] = {0ns, 1ms, 1s, 200s}; // buckets 0, 1, 10 and +Inf
    LatencyHistogram histogram;
    std::latch start(threads + 1);
    std::atomic<int> finished{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            start.arrive_and_wait();
            for (int i = 0; i < per_thread; ++i) {
                histogram.record(values[(t + i) % 4]);
            }
            finished.fetch_add(1, std::memory_order_release);
        });
    }
    start.arrive_and_wait();
    // Snapshots taken while the threads record: counts only grow, and count is
    // always the sum of the buckets.
    std::uint64_t last = 0;
    bool consistent = true;
    bool monotonic = true;
    int snapshots = 0;
    while (finished.load(std::memory_order_acquire) < threads) {
        auto snap = histogram.snapshot();
        std::uint64_t total = 0;
        for (auto c : snap.counts) {
            total += c;
        }
        consistent = consistent && total == snap.count && snap.count <= std::uint64_t{threads * per_thread};
        monotonic = monotonic && snap.count >= last;
        last = snap.count;
        ++snapshots;
    }
    for (auto& worker : workers) {
        worker.join();
    }
    CHECK(consistent);
    CHECK(monotonic);
    INFO("snapshots taken during the run: " << snapshots);

    auto snap = histogram.snapshot();
    constexpr std::uint64_t each = threads * per_thread / 4;
    CHECK(snap.count == std::uint64_t{threads * per_thread});
    CHECK(snap.counts[0] == each);
    CHECK(snap.counts[1] == each);
    CHECK(snap.counts[10] == each);
    CHECK(snap.counts[bucket_count - 1] == each);
    const std::uint64_t sum_ns = each * (0 + 1'000'000 + 1'000'000'000 + 200'000'000'000ULL);
    CHECK(snap.sum == static_cast<double>(sum_ns) / 1e9);
}

TEST_CASE("Quantiles interpolate inside the bucket like histogram_quantile", "[metrics]") {
    SECTION("empty histogram") {
        LatencyHistogram histogram;
        auto snap = histogram.snapshot();
        CHECK(snap.quantile(0.5) == 0.0);
        CHECK(snap.quantile(0.99) == 0.0);
        CHECK(HistogramSnapshot{}.quantile(0.5) == 0.0);
    }
    SECTION("all observations in one bucket") {
        LatencyHistogram histogram;
        for (int i = 0; i < 10; ++i) {
            histogram.record(300ms); // (0.25, 0.5]
        }
        auto snap = histogram.snapshot();
        CHECK(snap.quantile(0.5) == Approx(0.375));
        CHECK(snap.quantile(0.9) == Approx(0.475));
        CHECK(snap.quantile(1.0) == Approx(0.5));
        CHECK(snap.quantile(0.0) == Approx(0.25));
        CHECK(snap.quantile(7.0) == snap.quantile(1.0));  // clamped
        CHECK(snap.quantile(-3.0) == snap.quantile(0.0)); // clamped
        CHECK(snap.quantile(std::numeric_limits<double>::quiet_NaN()) == snap.quantile(0.0));
        CHECK(snap.mean() == Approx(0.3));
    }
    SECTION("the first bucket starts at zero") {
        LatencyHistogram histogram;
        for (int i = 0; i < 4; ++i) {
            histogram.record(100us);
        }
        CHECK(histogram.snapshot().quantile(0.5) == Approx(0.00025));
    }
    SECTION("across buckets") {
        auto snap = snapshot_with({1, 3}); // 1 in [0, 0.0005], 3 in (0.0005, 0.001]
        CHECK(snap.quantile(0.25) == Approx(0.0005));
        CHECK(snap.quantile(0.5) == Approx(0.0005 + 0.0005 / 3));
        CHECK(snap.quantile(1.0) == Approx(0.001));
    }
    SECTION("the +Inf bucket gives the largest finite bound") {
        LatencyHistogram histogram;
        histogram.record(10min);
        auto snap = histogram.snapshot();
        CHECK(snap.quantile(0.5) == 120.0);
        CHECK(snap.quantile(1.0) == 120.0);
    }
}

// --- Prometheus writer
// ----------------------------------------------------------------------------------------

TEST_CASE("Metric and label names are checked against the exposition grammar", "[prometheus]") {
    using modelpool::detail::is_valid_label_name;
    using modelpool::detail::is_valid_metric_name;
    CHECK(is_valid_metric_name("modelpool_requests_total"));
    CHECK(is_valid_metric_name("a:b_c9"));
    CHECK(is_valid_metric_name("_x"));
    CHECK_FALSE(is_valid_metric_name(""));
    CHECK_FALSE(is_valid_metric_name("9lives"));
    CHECK_FALSE(is_valid_metric_name("a-b"));
    CHECK_FALSE(is_valid_metric_name("a b"));
    CHECK(is_valid_label_name("key"));
    CHECK(is_valid_label_name("_k2"));
    CHECK_FALSE(is_valid_label_name("a:b"));
    CHECK_FALSE(is_valid_label_name("2k"));
    CHECK_FALSE(is_valid_label_name(""));
}

TEST_CASE("Values print as shortest round-trip decimals or Inf and NaN", "[prometheus]") {
    using modelpool::detail::format_value;
    CHECK(format_value(0.005) == "0.005");
    CHECK(format_value(0.0005) == "0.0005");
    CHECK(format_value(1.0) == "1");
    CHECK(format_value(2.5) == "2.5");
    CHECK(format_value(120.0) == "120");
    CHECK(format_value(0.1 + 0.2) == "0.30000000000000004");
    CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
    CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
    CHECK(format_value(std::numeric_limits<double>::quiet_NaN()) == "NaN");
    for (double v : {0.005, 1e-05, 1e21, 123456.789, 4.000000003, -7.25, 5e-324, 1.7976931348623157e308}) {
        INFO(v);
        CHECK(std::strtod(format_value(v).c_str(), nullptr) == v);
    }

    prometheus_writer w;
    w.family("g", "gauge", "");
    w.sample("g", {{"v", "a"}}, 0.005);
    w.sample("g", {{"v", "b"}}, 1.0);
    w.sample("g", {{"v", "c"}}, std::numeric_limits<double>::infinity());
    w.sample("g", {{"v", "d"}}, std::uint64_t{18446744073709551615ULL});
    w.sample("g", {{"v", "e"}}, -3);
    w.sample("g", {{"v", "f"}}, std::size_t{7});
    CHECK(w.text() == "# TYPE g gauge\n"
                      "g{v=\"a\"} 0.005\n"
                      "g{v=\"b\"} 1\n"
                      "g{v=\"c\"} +Inf\n"
                      "g{v=\"d\"} 18446744073709551615\n"
                      "g{v=\"e\"} -3\n"
                      "g{v=\"f\"} 7\n");
}

TEST_CASE("HELP and TYPE come once per family and before its samples", "[prometheus]") {
    prometheus_writer w;
    w.family("modelpool_requests_total", "counter", "Requests by outcome.");
    w.sample("modelpool_requests_total", {{"key", "bert"}, {"outcome", "ok"}}, std::uint64_t{12});
    w.sample("modelpool_requests_total", {{"key", "bert"}, {"outcome", "timeout"}}, std::uint64_t{1});
    w.family("modelpool_queue_depth", "gauge", "Requests waiting in a key's queue.");
    w.sample("modelpool_queue_depth", {{"key", "bert"}}, 3);
    w.sample("modelpool_queue_depth", {{"key", "gpt"}}, 0);
    w.family("modelpool_up", "gauge", "");
    w.sample("modelpool_up", {}, 1);
    w.family("modelpool_request_seconds", "histogram", "Request latency.");
    w.histogram("modelpool_request_seconds", {{"key", "bert"}}, snapshot_with({1}, 0.0001));
    w.histogram("modelpool_request_seconds", {{"key", "gpt"}}, snapshot_with({0, 2}, 0.0015));

    const std::string text = w.text();
    CHECK(text.starts_with("# HELP modelpool_requests_total Requests by outcome.\n"
                           "# TYPE modelpool_requests_total counter\n"
                           "modelpool_requests_total{key=\"bert\",outcome=\"ok\"} 12\n"
                           "modelpool_requests_total{key=\"bert\",outcome=\"timeout\"} 1\n"
                           "# HELP modelpool_queue_depth Requests waiting in a key's queue.\n"
                           "# TYPE modelpool_queue_depth gauge\n"
                           "modelpool_queue_depth{key=\"bert\"} 3\n"
                           "modelpool_queue_depth{key=\"gpt\"} 0\n"
                           "# TYPE modelpool_up gauge\n"
                           "modelpool_up 1\n"
                           "# HELP modelpool_request_seconds Request latency.\n"
                           "# TYPE modelpool_request_seconds histogram\n"
                           "modelpool_request_seconds_bucket{key=\"bert\",le=\"0.0005\"} 1\n"));

    // Generic check: each family's HELP and TYPE appear once, before its samples,
    // and its samples are contiguous.
    std::map<std::string, int> help_lines;
    std::map<std::string, int> type_lines;
    std::set<std::string> closed; // families whose samples have ended
    std::string current;
    int samples = 0;
    static const std::regex comment(R"(^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
    static const std::regex sample_name(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ].*$)");
    for (const auto& line : lines_of(text)) {
        std::smatch m;
        if (std::regex_match(line, m, comment)) {
            const std::string name = m[2];
            if (name != current) {
                CHECK(closed.count(name) == 0);
                if (!current.empty()) {
                    closed.insert(current);
                }
                current = name;
            }
            ++(m[1] == "HELP" ? help_lines : type_lines)[name];
        } else {
            REQUIRE(std::regex_match(line, m, sample_name));
            std::string name = m[1];
            for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
                if (name != current && name.ends_with(suffix)) {
                    name.resize(name.size() - suffix.size());
                }
            }
            INFO(line);
            CHECK(name == current);
            CHECK(type_lines[name] == 1);
            ++samples;
        }
    }
    CHECK(samples == 4 + 1 + 2 * (18 + 2));
    CHECK(type_lines.size() == 4);
    for (const auto& [name, count] : type_lines) {
        INFO(name);
        CHECK(count == 1);
        CHECK(help_lines[name] <= 1);
    }
    CHECK(help_lines["modelpool_up"] == 0);
    CHECK(help_lines["modelpool_request_seconds"] == 1);
}

TEST_CASE("Label values escape backslash double quote and line feed", "[prometheus]") {
    using modelpool::detail::escape_label_value;
    CHECK(escape_label_value("plain") == "plain");
    CHECK(escape_label_value("a\\b") == "a\\\\b");
    CHECK(escape_label_value("say \"hi\"") == "say \\\"hi\\\"");
    CHECK(escape_label_value("two\nlines") == "two\\nlines");
    CHECK(escape_label_value("\\\"\n") == "\\\\\\\"\\n");
    CHECK(escape_label_value("ünïcode\t") == "ünïcode\t");

    prometheus_writer w;
    w.family("m", "gauge", "x");
    const std::string key = "C:\\models\\\"bert\"\nv2";
    w.sample("m", {{"key", key}, {"b", ""}}, 1);
    CHECK(lines_of(w.text()).back() == R"(m{key="C:\\models\\\"bert\"\nv2",b=""} 1)");
}

TEST_CASE("HELP text escapes backslash and line feed but not double quote", "[prometheus]") {
    using modelpool::detail::escape_help;
    CHECK(escape_help("plain text") == "plain text");
    CHECK(escape_help("a\\b") == "a\\\\b");
    CHECK(escape_help("two\nlines") == "two\\nlines");
    CHECK(escape_help("say \"hi\"") == "say \"hi\"");

    prometheus_writer w;
    w.family("m", "counter", "Path C:\\tmp\nsecond \"line\"");
    CHECK(w.text() == "# HELP m Path C:\\\\tmp\\nsecond \"line\"\n# TYPE m counter\n");
    CHECK(lines_of(w.text()).size() == 2);
}

TEST_CASE("Histogram lines are cumulative and end with +Inf equal to _count", "[prometheus]") {
    LatencyHistogram histogram;
    histogram.record(100us); // (0, 0.0005]
    histogram.record(500us); // (0, 0.0005]
    histogram.record(7ms);   // (0.005, 0.01]
    histogram.record(250ms); // (0.1, 0.25]
    histogram.record(200s);  // +Inf
    const auto snap = histogram.snapshot();

    prometheus_writer w;
    w.family("modelpool_request_seconds", "histogram", "Request latency.");
    w.histogram("modelpool_request_seconds", {{"key", "bert"}}, snap);
    const auto lines = lines_of(w.text());
    REQUIRE(lines.size() == 2 + 18 + 2);

    static const std::regex bucket(
        R"re(^modelpool_request_seconds_bucket\{key="bert",le="([^"]+)"\} ([0-9]+)$)re");
    std::vector<std::string> les;
    std::vector<std::uint64_t> cumulative;
    for (std::size_t i = 2; i < 2 + 18; ++i) {
        std::smatch m;
        INFO(lines[i]);
        REQUIRE(std::regex_match(lines[i], m, bucket));
        les.push_back(m[1]);
        cumulative.push_back(std::stoull(m[2]));
    }
    CHECK(les.front() == "0.0005");
    CHECK(les[3] == "0.005");
    CHECK(les[10] == "1");
    CHECK(les[16] == "120");
    CHECK(les.back() == "+Inf");
    CHECK(cumulative == std::vector<std::uint64_t>{2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5});
    CHECK(lines[20] == "modelpool_request_seconds_sum{key=\"bert\"} 200.2576");
    CHECK(lines[21] == "modelpool_request_seconds_count{key=\"bert\"} 5");
    CHECK(cumulative.back() == snap.count);

    // Without labels le is the only one.
    prometheus_writer bare;
    bare.family("h", "histogram", "");
    bare.histogram("h", {}, snapshot_with({0, 1}, 0.001));
    const auto bare_lines = lines_of(bare.text());
    REQUIRE(bare_lines.size() == 1 + 18 + 2);
    CHECK(bare_lines[1] == "h_bucket{le=\"0.0005\"} 0");
    CHECK(bare_lines[2] == "h_bucket{le=\"0.001\"} 1");
    CHECK(bare_lines[18] == "h_bucket{le=\"+Inf\"} 1");
    CHECK(bare_lines[19] == "h_sum 0.001");
    CHECK(bare_lines[20] == "h_count 1");
}

TEST_CASE("Every line of a written exposition matches the text format grammar", "[prometheus]") {
    LatencyHistogram histogram;
    for (auto d : {1ms, 20ms, 300ms, 4000ms}) {
        histogram.record(d);
    }
    const std::string nasty = "a\\b \"c\"\nd},{e=\"f\" 1";
    const std::vector<prometheus_writer::label> labels = {{"key", nasty}, {"phase", "queue"}};

    prometheus_writer w;
    w.family("modelpool_requests_total", "counter", "Requests.\nWith \\ and \" in help.");
    w.sample("modelpool_requests_total", labels, std::uint64_t{42});
    w.sample("modelpool_requests_total", {{"key", ""}}, 0);
    w.family("modelpool:memory_bytes", "gauge", "Reserved bytes.");
    w.sample("modelpool:memory_bytes", {}, 1.5e12);
    w.sample("modelpool:memory_bytes", {{"kind", "nan"}}, std::numeric_limits<double>::quiet_NaN());
    w.sample("modelpool:memory_bytes", {{"kind", "neg"}}, -std::numeric_limits<double>::infinity());
    w.sample("modelpool:memory_bytes", {{"kind", "tiny"}}, 1e-300);
    w.family("modelpool_request_seconds", "histogram", "Latency.");
    w.histogram("modelpool_request_seconds", labels, histogram.snapshot());
    w.histogram("modelpool_request_seconds", {}, histogram.snapshot());
    const std::string text = std::move(w).take();

    REQUIRE_FALSE(text.empty());
    CHECK(text.back() == '\n');
    static const std::regex sample_line(
        R"re(^[a-zA-Z_:][a-zA-Z0-9_:]*)re"
        R"re((\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*")*\})?)re"
        R"re( ([-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|[-+]Inf|NaN)$)re");
    static const std::regex help_line(R"re(^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* ([^\\\n]|\\[\\n])*$)re");
    static const std::regex type_line(
        R"re(^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|untyped)$)re");
    int samples = 0;
    int comments = 0;
    for (const auto& line : lines_of(text)) {
        INFO(line);
        if (line.starts_with("#")) {
            CHECK((std::regex_match(line, help_line) || std::regex_match(line, type_line)));
            ++comments;
        } else {
            CHECK(std::regex_match(line, sample_line));
            ++samples;
        }
    }
    CHECK(comments == 6);
    CHECK(samples == 2 + 4 + 2 * 20);

    // The regex itself rejects what the writer must never produce.
    for (const char* bad : {"m{k=\"a\"b\"} 1", "m{k=\"a\nb\"} 1", "m 1 2", "m{k=\"v\"} inf", "9m 1",
                            "m{k=v} 1", "m{k=\"\\x\"} 1"}) {
        INFO(bad);
        CHECK_FALSE(std::regex_match(std::string(bad), sample_line));
    }
}
