// Tests of the pool's policy pieces: the circuit breaker (modelpool/circuit_breaker.hpp) and retry backoff
// with jitter (modelpool/detail/backoff.hpp).
//
// The breaker reads no clock: every test passes time points it computes itself, so nothing sleeps. The
// multi-threaded tests line threads up on a std::latch and check totals that any lost update would change.
#include "support/catch.hpp"

#include <modelpool/circuit_breaker.hpp>
#include <modelpool/detail/backoff.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace {

using modelpool::BreakerOptions;
using modelpool::CircuitBreaker;
using modelpool::CircuitState;
using modelpool::errc;
using Permit = CircuitBreaker::Permit;
using Kind = CircuitBreaker::Permit::kind_t;
using namespace std::chrono_literals;

// Any fixed start works: the breaker only compares the time points it is given.
constexpr CircuitBreaker::time_point t0 = CircuitBreaker::time_point{} + 1h;

// Reports `n` failures of fresh permits at `now`.
void fail_n(CircuitBreaker& breaker, std::size_t n, CircuitBreaker::time_point now) {
    for (std::size_t i = 0; i < n; ++i) {
        const Permit permit = breaker.try_admit(now);
        REQUIRE(permit.kind == Kind::allowed);
        breaker.on_failure(permit, now);
    }
}

// A breaker with `probes` half-open probes, opened at t0 by `threshold` failures.
struct OpenedBreaker {
    explicit OpenedBreaker(std::size_t probes, std::size_t threshold = 2)
        : breaker({.failure_threshold = threshold, .open_time = 100ms, .half_open_probes = probes}) {
        fail_n(breaker, threshold, t0);
        REQUIRE(breaker.state(t0) == CircuitState::open);
    }
    CircuitBreaker breaker;
    CircuitBreaker::time_point reopen = t0 + 100ms; // when the first open period ends
};

} // namespace

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker: closed -> open

TEST_CASE("breaker opens after exactly failure_threshold consecutive failures", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 3, .open_time = 100ms});
    CHECK(breaker.state(t0) == CircuitState::closed);
    fail_n(breaker, 2, t0);
    CHECK(breaker.state(t0) == CircuitState::closed);
    CHECK(breaker.consecutive_failures() == 2);
    CHECK(breaker.try_admit(t0).kind == Kind::allowed);

    fail_n(breaker, 1, t0 + 5ms);
    CHECK(breaker.state(t0 + 5ms) == CircuitState::open);
    CHECK(breaker.open_until() == t0 + 105ms); // opened at the failure's `now`
    CHECK(breaker.consecutive_failures() == 3);
}

TEST_CASE("breaker does not open on failures separated by a success", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 3});
    fail_n(breaker, 2, t0);
    const Permit ok = breaker.try_admit(t0);
    breaker.on_success(ok);
    CHECK(breaker.consecutive_failures() == 0);
    fail_n(breaker, 2, t0);
    CHECK(breaker.state(t0) == CircuitState::closed);
    CHECK(breaker.consecutive_failures() == 2);
    fail_n(breaker, 1, t0); // the third in a row
    CHECK(breaker.state(t0) == CircuitState::open);
}

TEST_CASE("breaker counts neutral outcomes as neither failure nor success", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 3});
    fail_n(breaker, 2, t0);
    breaker.on_neutral(breaker.try_admit(t0));
    CHECK(breaker.consecutive_failures() == 2);
    fail_n(breaker, 1, t0);
    CHECK(breaker.state(t0) == CircuitState::open);
}

TEST_CASE("breaker rejects while open until open_time has passed", "[breaker]") {
    OpenedBreaker opened(1);
    CircuitBreaker& breaker = opened.breaker;
    CHECK(breaker.open_until() == opened.reopen);

    for (auto at : {t0, t0 + 50ms, opened.reopen - 1ms}) {
        const Permit permit = breaker.try_admit(at);
        CHECK(permit.kind == Kind::rejected);
        CHECK_FALSE(static_cast<bool>(permit));
        CHECK(breaker.state(at) == CircuitState::open);
    }
    // Reported outcomes of rejected permits change nothing.
    const Permit rejected = breaker.try_admit(t0);
    breaker.on_success(rejected);
    breaker.on_failure(rejected, t0 + 99ms);
    breaker.on_neutral(rejected);
    CHECK(breaker.open_until() == opened.reopen);

    CHECK(breaker.state(opened.reopen) == CircuitState::half_open); // reported, not yet moved
    const Permit probe = breaker.try_admit(opened.reopen);
    CHECK(probe.kind == Kind::probe);
    CHECK(static_cast<bool>(probe));
    CHECK(breaker.state(opened.reopen) == CircuitState::half_open);
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker: half-open

TEST_CASE("half-open breaker admits exactly half_open_probes probes", "[breaker]") {
    const std::size_t probes = GENERATE(std::size_t{1}, std::size_t{3});
    OpenedBreaker opened(probes);
    std::size_t admitted = 0;
    for (int i = 0; i < 10; ++i) {
        const Permit permit = opened.breaker.try_admit(opened.reopen + std::chrono::milliseconds(i));
        if (permit.kind == Kind::probe) {
            ++admitted;
        } else {
            CHECK(permit.kind == Kind::rejected);
        }
    }
    CHECK(admitted == probes);
    CHECK(opened.breaker.state(opened.reopen + 1s) == CircuitState::half_open);
}

TEST_CASE("half-open breaker closes after half_open_probes successes", "[breaker]") {
    OpenedBreaker opened(3);
    CircuitBreaker& breaker = opened.breaker;
    const auto now = opened.reopen;
    const Permit a = breaker.try_admit(now);
    const Permit b = breaker.try_admit(now);
    const Permit c = breaker.try_admit(now);
    REQUIRE(c.kind == Kind::probe);

    breaker.on_success(a);
    breaker.on_success(b);
    CHECK(breaker.state(now) == CircuitState::half_open);
    CHECK(breaker.try_admit(now).kind == Kind::rejected); // successes do not free slots
    breaker.on_success(c);
    CHECK(breaker.state(now) == CircuitState::closed);
    CHECK(breaker.consecutive_failures() == 0);
    CHECK(breaker.try_admit(now).kind == Kind::allowed);

    // Closed afresh: it takes failure_threshold (2) new failures to open again.
    fail_n(breaker, 1, now);
    CHECK(breaker.state(now) == CircuitState::closed);
    fail_n(breaker, 1, now);
    CHECK(breaker.state(now) == CircuitState::open);
}

TEST_CASE("a probe failure re-opens the breaker for a new open period", "[breaker]") {
    OpenedBreaker opened(2);
    CircuitBreaker& breaker = opened.breaker;
    const auto t1 = opened.reopen + 20ms;
    const Permit a = breaker.try_admit(opened.reopen);
    const Permit b = breaker.try_admit(opened.reopen);
    breaker.on_success(a);
    breaker.on_failure(b, t1);

    CHECK(breaker.state(t1) == CircuitState::open);
    CHECK(breaker.open_until() == t1 + 100ms);
    CHECK(breaker.try_admit(t1 + 99ms).kind == Kind::rejected);
    CHECK(breaker.state(t1 + 99ms) == CircuitState::open);
    const Permit probe = breaker.try_admit(t1 + 100ms);
    CHECK(probe.kind == Kind::probe);
    CHECK(probe.generation != b.generation);
}

TEST_CASE("a neutral probe outcome gives its slot back", "[breaker]") {
    OpenedBreaker opened(1);
    CircuitBreaker& breaker = opened.breaker;
    const auto now = opened.reopen;
    const Permit first = breaker.try_admit(now);
    REQUIRE(first.kind == Kind::probe);
    CHECK(breaker.try_admit(now).kind == Kind::rejected);

    breaker.on_neutral(first);
    CHECK(breaker.state(now) == CircuitState::half_open);
    const Permit second = breaker.try_admit(now);
    CHECK(second.kind == Kind::probe);
    CHECK(breaker.try_admit(now).kind == Kind::rejected);

    breaker.on_success(second);
    CHECK(breaker.state(now) == CircuitState::closed);
    breaker.on_neutral(second); // a neutral outcome never moves a closed breaker
    CHECK(breaker.state(now) == CircuitState::closed);
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker: outcomes from earlier generations

TEST_CASE("success of a request admitted before the breaker opened is ignored", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 2, .open_time = 100ms});
    const Permit early = breaker.try_admit(t0);
    fail_n(breaker, 2, t0);
    REQUIRE(breaker.state(t0) == CircuitState::open);

    breaker.on_success(early);
    CHECK(breaker.state(t0) == CircuitState::open);
    CHECK(breaker.try_admit(t0 + 50ms).kind == Kind::rejected);

    // Nor does it count as a probe success once half-open.
    const Permit probe = breaker.try_admit(t0 + 100ms);
    REQUIRE(probe.kind == Kind::probe);
    breaker.on_success(early);
    CHECK(breaker.state(t0 + 100ms) == CircuitState::half_open);
    breaker.on_success(probe);
    CHECK(breaker.state(t0 + 100ms) == CircuitState::closed);
}

TEST_CASE("stale allowed permits count failures while closed but not successes", "[breaker]") {
    OpenedBreaker opened(1, 3);
    CircuitBreaker& breaker = opened.breaker;
    // Admitted long ago, in the first closed period (generation 0).
    const Permit stale{Kind::allowed, 0};

    // While open or half-open a stale failure changes nothing.
    breaker.on_failure(stale, t0 + 10ms);
    CHECK(breaker.open_until() == opened.reopen);
    const Permit probe = breaker.try_admit(opened.reopen);
    REQUIRE(probe.kind == Kind::probe);
    breaker.on_failure(stale, opened.reopen);
    CHECK(breaker.state(opened.reopen) == CircuitState::half_open);
    breaker.on_success(probe);
    REQUIRE(breaker.state(opened.reopen) == CircuitState::closed);
    REQUIRE(breaker.try_admit(opened.reopen).generation != stale.generation);

    // Closed again: the stale failure counts, the stale success does not reset the count.
    breaker.on_failure(stale, opened.reopen);
    CHECK(breaker.consecutive_failures() == 1);
    breaker.on_success(stale);
    CHECK(breaker.consecutive_failures() == 1);
    fail_n(breaker, 1, opened.reopen);
    breaker.on_failure(stale, opened.reopen + 1ms);
    CHECK(breaker.state(opened.reopen + 1ms) == CircuitState::open);
    CHECK(breaker.open_until() == opened.reopen + 101ms);
}

TEST_CASE("probes of an earlier half-open period are ignored", "[breaker]") {
    OpenedBreaker opened(2);
    CircuitBreaker& breaker = opened.breaker;
    const auto t1 = opened.reopen;
    const Permit old_a = breaker.try_admit(t1);
    const Permit old_b = breaker.try_admit(t1);
    breaker.on_failure(old_b, t1); // re-opens until t1 + 100ms; old_a is still out
    REQUIRE(breaker.state(t1) == CircuitState::open);

    breaker.on_failure(old_a, t1 + 50ms); // would start yet another open period
    CHECK(breaker.open_until() == t1 + 100ms);

    const auto t2 = t1 + 100ms;
    const Permit a = breaker.try_admit(t2);
    const Permit b = breaker.try_admit(t2);
    REQUIRE(b.kind == Kind::probe);

    breaker.on_neutral(old_a); // would free a slot
    CHECK(breaker.try_admit(t2).kind == Kind::rejected);
    breaker.on_failure(old_a, t2); // would re-open
    CHECK(breaker.state(t2) == CircuitState::half_open);
    breaker.on_success(a);
    breaker.on_success(old_a); // would be the second success and close
    CHECK(breaker.state(t2) == CircuitState::half_open);
    breaker.on_success(b);
    CHECK(breaker.state(t2) == CircuitState::closed);
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker: options

TEST_CASE("failure_threshold 0 disables the breaker", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 0, .open_time = 1ms});
    fail_n(breaker, 1000, t0);
    CHECK(breaker.state(t0 + 1h) == CircuitState::closed);
    CHECK(breaker.try_admit(t0).kind == Kind::allowed);
    CHECK(breaker.consecutive_failures() == 0);
}

TEST_CASE("a failure_threshold of 1 opens on the first failure", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 1, .open_time = 10ms});
    fail_n(breaker, 1, t0);
    CHECK(breaker.state(t0) == CircuitState::open);
}

TEST_CASE("BreakerOptions validate names the field and the value", "[breaker]") {
    CHECK(BreakerOptions{}.validate().has_value());
    CHECK(BreakerOptions{.failure_threshold = 0}.validate().has_value());
    CHECK(BreakerOptions{.failure_threshold = BreakerOptions::max_failure_threshold,
                         .open_time = BreakerOptions::max_open_time,
                         .half_open_probes = BreakerOptions::max_half_open_probes}
              .validate()
              .has_value());
    CHECK(BreakerOptions{.open_time = 1ms, .half_open_probes = 1}.validate().has_value());

    struct Bad {
        BreakerOptions options;
        std::string field;
        std::string value;
    };
    const std::vector<Bad> bad{
        {{.failure_threshold = 1'000'001}, "failure_threshold", "1000001"},
        {{.open_time = 0ms}, "open_time", "0 ms"},
        {{.open_time = -5ms}, "open_time", "-5 ms"},
        {{.open_time = 86'400'001ms}, "open_time", "86400001 ms"},
        {{.half_open_probes = 0}, "half_open_probes", "got 0"},
        {{.half_open_probes = 1025}, "half_open_probes", "1025"},
    };
    for (const Bad& b : bad) {
        const auto checked = b.options.validate();
        REQUIRE_FALSE(checked.has_value());
        CHECK(checked.error().code() == errc::invalid_argument);
        CHECK(checked.error().message().find(b.field) != std::string::npos);
        CHECK(checked.error().message().find(b.value) != std::string::npos);
    }
}

TEST_CASE("breaker clamps invalid options into range", "[breaker]") {
    CircuitBreaker breaker({.failure_threshold = 5'000'000, .open_time = 0ms, .half_open_probes = 0});
    CHECK(breaker.options().failure_threshold == BreakerOptions::max_failure_threshold);
    CHECK(breaker.options().open_time == 1ms);
    CHECK(breaker.options().half_open_probes == 1);
    CHECK(breaker.options().validate().has_value());
}

TEST_CASE("circuit states have names", "[breaker]") {
    STATIC_REQUIRE(modelpool::to_string(CircuitState::closed) == "closed");
    STATIC_REQUIRE(modelpool::to_string(CircuitState::open) == "open");
    STATIC_REQUIRE(modelpool::to_string(CircuitState::half_open) == "half_open");
}

// ---------------------------------------------------------------------------------------------------------------
// CircuitBreaker: concurrency

TEST_CASE("concurrent callers of a half-open breaker get exactly half_open_probes probes", "[breaker]") {
    constexpr std::size_t threads = 8;
    constexpr std::size_t probes = 3;
    for (int round = 0; round < 20; ++round) {
        // Open and past its open time: the callers also race for the open -> half-open transition.
        OpenedBreaker opened(probes);
        std::atomic<std::size_t> admitted{0};
        std::atomic<std::size_t> allowed{0};
        std::latch start(threads);
        std::vector<std::thread> workers;
        for (std::size_t i = 0; i < threads; ++i) {
            workers.emplace_back([&] {
                start.arrive_and_wait();
                for (int call = 0; call < 200; ++call) {
                    const Permit permit = opened.breaker.try_admit(opened.reopen);
                    if (permit.kind == Kind::probe) {
                        admitted.fetch_add(1);
                    } else if (permit.kind == Kind::allowed) {
                        allowed.fetch_add(1);
                    }
                }
            });
        }
        for (auto& worker : workers) {
            worker.join();
        }
        REQUIRE(admitted.load() == probes);
        REQUIRE(allowed.load() == 0);
        REQUIRE(opened.breaker.state(opened.reopen) == CircuitState::half_open);
    }
}

TEST_CASE("concurrent probes that all succeed close the breaker exactly once", "[breaker]") {
    constexpr std::size_t threads = 8;
    constexpr std::size_t probes = 3;
    for (int round = 0; round < 20; ++round) {
        OpenedBreaker opened(probes);
        std::atomic<std::size_t> admitted{0};
        std::latch start(threads);
        std::vector<std::thread> workers;
        for (std::size_t i = 0; i < threads; ++i) {
            workers.emplace_back([&] {
                start.arrive_and_wait();
                for (int call = 0; call < 50; ++call) {
                    const Permit permit = opened.breaker.try_admit(opened.reopen);
                    if (permit.kind == Kind::probe) {
                        admitted.fetch_add(1);
                        opened.breaker.on_success(permit);
                    }
                }
            });
        }
        for (auto& worker : workers) {
            worker.join();
        }
        REQUIRE(admitted.load() == probes);
        REQUIRE(opened.breaker.state(opened.reopen) == CircuitState::closed);
        REQUIRE(opened.breaker.consecutive_failures() == 0);
    }
}

TEST_CASE("concurrent probes giving slots back never exceed half_open_probes in flight", "[breaker]") {
    // One slot, so that two callers holding a probe at once show a double admission.
    constexpr std::size_t threads = 8;
    constexpr std::size_t probes = 1;
    for (int round = 0; round < 4; ++round) {
        OpenedBreaker opened(probes);
        std::atomic<std::size_t> in_flight{0};
        std::atomic<std::size_t> most_in_flight{0};
        std::atomic<std::size_t> admitted{0};
        std::latch start(threads);
        std::vector<std::thread> workers;
        for (std::size_t i = 0; i < threads; ++i) {
            workers.emplace_back([&] {
                start.arrive_and_wait();
                for (int call = 0; call < 40'000; ++call) {
                    const Permit permit = opened.breaker.try_admit(opened.reopen);
                    if (permit.kind != Kind::probe) {
                        continue;
                    }
                    admitted.fetch_add(1);
                    in_flight.fetch_add(1);
                    for (int hold = 0; hold < 64; ++hold) { // hold the slot a little, watching for company
                        const std::size_t seen = in_flight.load();
                        std::size_t most = most_in_flight.load();
                        while (most < seen && !most_in_flight.compare_exchange_weak(most, seen)) {
                        }
                    }
                    in_flight.fetch_sub(1);
                    opened.breaker.on_neutral(permit);
                }
            });
        }
        for (auto& worker : workers) {
            worker.join();
        }
        REQUIRE(most_in_flight.load() == probes);
        REQUIRE(admitted.load() > probes); // slots were given back and taken again
        REQUIRE(opened.breaker.state(opened.reopen) == CircuitState::half_open);
        // All slots are free again: exactly `probes` more callers get one.
        std::size_t after = 0;
        for (int i = 0; i < 10; ++i) {
            after += opened.breaker.try_admit(opened.reopen).kind == Kind::probe ? 1 : 0;
        }
        REQUIRE(after == probes);
    }
}

TEST_CASE("concurrent failures while closed are all counted", "[breaker]") {
    constexpr std::size_t threads = 8;
    constexpr std::size_t per_thread = 100'000;
    CircuitBreaker breaker({.failure_threshold = threads * per_thread + 1});
    REQUIRE(breaker.options().failure_threshold == threads * per_thread + 1); // not clamped
    std::latch start(threads);
    std::vector<std::thread> workers;
    for (std::size_t i = 0; i < threads; ++i) {
        workers.emplace_back([&] {
            start.arrive_and_wait();
            for (std::size_t n = 0; n < per_thread; ++n) {
                breaker.on_failure(breaker.try_admit(t0), t0);
            }
        });
    }
    for (auto& worker : workers) {
        worker.join();
    }
    CHECK(breaker.consecutive_failures() == threads * per_thread);
    CHECK(breaker.state(t0) == CircuitState::closed);
    fail_n(breaker, 1, t0);
    CHECK(breaker.state(t0) == CircuitState::open);
}

// ---------------------------------------------------------------------------------------------------------------
// Backoff

namespace {
using modelpool::detail::backoff_delay;
using modelpool::detail::jitter_source;
const double almost_one = std::nextafter(1.0, 0.0);
} // namespace

TEST_CASE("backoff doubles per attempt up to the cap", "[backoff]") {
    CHECK(backoff_delay(0, 100ms, 10s, almost_one) == 0ms);
    const std::chrono::milliseconds expected[] = {100ms,  200ms,  400ms, 800ms, 1600ms,
                                                  3200ms, 6400ms, 10s,   10s};
    for (std::size_t attempt = 1; attempt <= std::size(expected); ++attempt) {
        INFO("attempt " << attempt);
        CHECK(backoff_delay(attempt, 100ms, 10s, almost_one) == expected[attempt - 1]);
        CHECK(backoff_delay(attempt, 100ms, 10s, 0.0) == expected[attempt - 1] / 2);
    }
    CHECK(backoff_delay(1, 101ms, 10s, 0.0) == 50ms);     // d/2 rounds down
    CHECK(backoff_delay(1, 20s, 10s, almost_one) == 10s); // initial above the cap
}

TEST_CASE("backoff jitter stays within half the delay and the delay", "[backoff]") {
    jitter_source jitter(42);
    std::int64_t lowest = std::numeric_limits<std::int64_t>::max();
    std::int64_t highest = 0;
    double sum = 0;
    constexpr int samples = 20'000;
    for (int i = 0; i < samples; ++i) {
        const auto delay = backoff_delay(3, 250ms, 30s, jitter.unit()).count(); // d = 1000 ms
        REQUIRE(delay >= 500);
        REQUIRE(delay <= 1000);
        lowest = std::min<std::int64_t>(lowest, delay);
        highest = std::max<std::int64_t>(highest, delay);
        sum += static_cast<double>(delay);
    }
    CHECK(lowest <= 502); // both ends are reached (uniform over 501 values)
    CHECK(highest >= 998);
    CHECK(sum / samples == Approx(750.0).margin(10.0));
}

TEST_CASE("backoff clamps units outside 0 to 1", "[backoff]") {
    CHECK(backoff_delay(2, 100ms, 10s, 1.0) == 200ms);
    CHECK(backoff_delay(2, 100ms, 10s, 7.5) == 200ms);
    CHECK(backoff_delay(2, 100ms, 10s, -1.0) == 100ms);
    CHECK(backoff_delay(2, 100ms, 10s, std::numeric_limits<double>::quiet_NaN()) == 100ms);
    CHECK(backoff_delay(2, 100ms, 10s, 0.5) == 150ms);
}

TEST_CASE("backoff of a huge attempt saturates at the cap", "[backoff]") {
    for (std::size_t attempt : {std::size_t{63}, std::size_t{64}, std::size_t{65}, std::size_t{1000},
                                std::numeric_limits<std::size_t>::max()}) {
        INFO("attempt " << attempt);
        CHECK(backoff_delay(attempt, 1ms, 30s, almost_one) == 30s);
        CHECK(backoff_delay(attempt, 1ms, 30s, 0.0) == 15s);
    }
    // Values where initial * 2^(attempt-1) overflows the representation.
    constexpr auto huge = std::chrono::milliseconds::max();
    // (unit just below 1 lands within double rounding of d: 2^-53 * 2^62 = 512 ms.)
    CHECK(backoff_delay(2, huge / 2 + 1ms, huge, 1.0) == huge);
    CHECK(backoff_delay(2, huge / 2 + 1ms, huge, almost_one) >= huge - 1024ms);
    CHECK(backoff_delay(1000, huge, huge, 0.0) == huge / 2);
    CHECK(backoff_delay(1000, huge, huge, almost_one) <= huge);
    CHECK(backoff_delay(1000, huge, huge, almost_one) >= huge - 1024ms);
}

TEST_CASE("backoff of non-positive durations is zero", "[backoff]") {
    CHECK(backoff_delay(3, 0ms, 10s, 0.5) == 0ms);
    CHECK(backoff_delay(3, -5ms, 10s, 0.5) == 0ms);
    CHECK(backoff_delay(3, 100ms, 0ms, 0.5) == 0ms);
}

TEST_CASE("jitter_source is deterministic per seed", "[backoff]") {
    jitter_source zero(0);
    CHECK(zero.next() == 0xE220A8397B1DCDAFULL); // splitmix64's published first output for seed 0

    jitter_source a(7);
    jitter_source b(7);
    jitter_source c(8);
    bool differs = false;
    for (int i = 0; i < 100; ++i) {
        const std::uint64_t va = a.next();
        REQUIRE(va == b.next());
        differs = differs || va != c.next();
    }
    CHECK(differs);
}

TEST_CASE("jitter_source unit is in 0 to 1 and spread evenly", "[backoff]") {
    jitter_source jitter(12345);
    double sum = 0;
    int below_tenth = 0;
    constexpr int samples = 20'000;
    for (int i = 0; i < samples; ++i) {
        const double u = jitter.unit();
        REQUIRE(u >= 0.0);
        REQUIRE(u < 1.0);
        sum += u;
        below_tenth += u < 0.1 ? 1 : 0;
    }
    CHECK(sum / samples == Approx(0.5).margin(0.01));
    CHECK(below_tenth == Approx(samples / 10).margin(samples / 50));
}
