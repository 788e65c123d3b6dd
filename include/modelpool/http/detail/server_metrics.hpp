// modelpool/http/detail/server_metrics.hpp
//
// The HTTP server's own Prometheus metrics, appended to the pool's on `GET /metrics`:
//   modelpool_http_requests_total{route,status}    counter: requests answered, by route and status
//   modelpool_http_requests_in_flight               gauge: requests being served now (streams included)
//   modelpool_http_request_duration_seconds{route}  histogram: from the request read to the last byte written
// Routes are the fixed set the server knows ("/v1/embeddings", ...) plus "other", so label cardinality is
// bounded whatever clients send.
#pragma once

#include "modelpool/detail/prometheus.hpp"
#include "modelpool/histogram.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace modelpool::http::detail {

/// The route labels; the index of a route in this list is its `route_index`.
inline constexpr std::array<std::string_view, 10> route_names{"/v1/models",
                                                              "/v1/embeddings",
                                                              "/v1/completions",
                                                              "/v1/chat/completions",
                                                              "/v1/images/generations",
                                                              "/healthz",
                                                              "/readyz",
                                                              "/metrics",
                                                              "other",
                                                              "rejected"};

/// The index of `path` in `route_names` ("other" for unknown paths).
inline std::size_t route_index(std::string_view path) {
    for (std::size_t i = 0; i + 2 < route_names.size(); ++i) {
        if (route_names[i] == path) {
            return i;
        }
    }
    return route_names.size() - 2;
}

/// See the file comment. Thread-safe.
class server_metrics {
public:
    /// A request began.
    void begin() { in_flight_.fetch_add(1, std::memory_order_relaxed); }

    /// A request of `route` ended with `status` after `duration`.
    void end(std::size_t route, unsigned status, std::chrono::steady_clock::duration duration) {
        in_flight_.fetch_sub(1, std::memory_order_relaxed);
        count(route, status);
        durations_[route].record(std::chrono::duration_cast<std::chrono::nanoseconds>(duration));
    }

    /// A response sent outside any request (a connection refused with 503, a malformed request).
    void count(std::size_t route, unsigned status) {
        std::lock_guard lock(mutex_);
        ++requests_[{route, status}];
    }

    /// Requests being served now.
    [[nodiscard]] std::int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }

    /// The metrics in the Prometheus text format.
    [[nodiscard]] std::string prometheus() const {
        modelpool::detail::prometheus_writer w;
        w.family("modelpool_http_requests_total", "counter", "HTTP requests answered, by route and status.");
        {
            std::lock_guard lock(mutex_);
            for (const auto& [key, value] : requests_) {
                const auto status = std::to_string(key.second);
                w.sample("modelpool_http_requests_total",
                         {{"route", route_names[key.first]}, {"status", status}}, value);
            }
        }
        w.family("modelpool_http_requests_in_flight", "gauge", "HTTP requests being served now.");
        w.sample("modelpool_http_requests_in_flight", {}, in_flight());
        w.family("modelpool_http_request_duration_seconds", "histogram",
                 "HTTP request duration, from the request read to its last byte written.");
        for (std::size_t i = 0; i < route_names.size(); ++i) {
            const auto snapshot = durations_[i].snapshot();
            if (snapshot.count > 0) {
                w.histogram("modelpool_http_request_duration_seconds", {{"route", route_names[i]}}, snapshot);
            }
        }
        return std::move(w).take();
    }

private:
    std::atomic<std::int64_t> in_flight_{0};
    mutable std::mutex mutex_;
    std::map<std::pair<std::size_t, unsigned>, std::uint64_t> requests_;
    std::array<LatencyHistogram, route_names.size()> durations_;
};

} // namespace modelpool::http::detail
