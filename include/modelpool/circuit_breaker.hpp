// modelpool/circuit_breaker.hpp
//
// A per-key circuit breaker: after `failure_threshold` requests of a key in a row have failed, the pool stops
// sending that key work for `open_time` (requests end at once with `errc::circuit_open`), then lets a few
// probe requests through, and resumes normal service only when all of them succeeded.
//
// The pool consults the breaker before admitting each request (`try_admit`) and reports how the request
// ended with the permit it got (`on_success`, `on_failure`, `on_neutral`). It counts these outcomes as:
//   - failures (evidence the key is unhealthy): `model_error`, `timeout`, `spawn_failed`;
//   - neutral (say nothing about the key's health): `cancelled`, `shutting_down`, `overloaded`, `no_workers`,
//     `invalid_argument`, `memory_exhausted`, `circuit_open`;
//   - success: a reply, or a stream that ended normally.
//
// States:
//   closed     every request is admitted. Failures in a row are counted; any success resets the count.
//              Reaching `failure_threshold` opens the circuit.
//   open       every request is rejected until `open_time` has passed since it opened.
//   half_open  exactly `half_open_probes` requests are admitted as probes; everything else is rejected.
//              When all of them succeeded the circuit closes; one probe failure re-opens it (a new open
//              period); a neutral probe gives its slot back to the next caller.
//
// The breaker reads no clock itself: callers pass `now` from the pool's injected monotonic clock, so tests
// can step time exactly. Depends only on the standard library and modelpool/error.hpp (no Asio).
//
// Thread safety: every member function may be called concurrently from any thread. All state transitions are
// lock-free compare-and-swaps on one 64-bit word; there is no mutex.
#pragma once

#include "modelpool/error.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace modelpool {

/// The state of a circuit breaker.
enum class CircuitState {
    closed,    ///< Requests are admitted; consecutive failures are counted.
    open,      ///< Requests are rejected until the open time has passed.
    half_open, ///< A bounded number of probe requests is admitted; their outcome decides the next state.
};

/// The name of a state: "closed", "open" or "half_open" ("unknown" for values outside the enum).
constexpr std::string_view to_string(CircuitState state) noexcept {
    switch (state) {
    case CircuitState::closed:
        return "closed";
    case CircuitState::open:
        return "open";
    case CircuitState::half_open:
        return "half_open";
    }
    return "unknown";
}

/// Configuration of a `CircuitBreaker`, filled with designated initialisers:
/// `CircuitBreaker breaker({.failure_threshold = 3, .open_time = 5s});`.
struct BreakerOptions {
    /// Largest accepted `failure_threshold`.
    static constexpr std::size_t max_failure_threshold = 1'000'000;
    /// Largest accepted `open_time` (24 hours).
    static constexpr std::chrono::milliseconds max_open_time{86'400'000};
    /// Largest accepted `half_open_probes`.
    static constexpr std::size_t max_half_open_probes = 1'024;

    /// Failures in a row (no success in between) that open the circuit. 0 disables the breaker: it always
    /// admits and tracks nothing. Default 5.
    std::size_t failure_threshold = 5;

    /// How long the circuit stays open before it lets probes through (half-open). Default 30 s.
    std::chrono::milliseconds open_time{30'000};

    /// Probe requests admitted while half-open; that many successes close the circuit. Default 1.
    std::size_t half_open_probes = 1;

    /// Checks the options; the error (`invalid_argument`) names the field and the value.
    [[nodiscard]] result<void> validate() const {
        if (failure_threshold > max_failure_threshold) {
            return fail(errc::invalid_argument, "failure_threshold must be at most {} (got {})",
                        max_failure_threshold, failure_threshold);
        }
        if (open_time.count() <= 0 || open_time > max_open_time) {
            return fail(errc::invalid_argument, "open_time must be between 1 ms and {} ms (got {} ms)",
                        max_open_time.count(), open_time.count());
        }
        if (half_open_probes == 0 || half_open_probes > max_half_open_probes) {
            return fail(errc::invalid_argument, "half_open_probes must be between 1 and {} (got {})",
                        max_half_open_probes, half_open_probes);
        }
        return {};
    }
};

/// A lock-free circuit breaker for one key (see the top of modelpool/circuit_breaker.hpp).
///
/// Usage, per request: `auto permit = breaker.try_admit(clock.now());` If the permit is false, fail the
/// request with `circuit_open`. Otherwise run it and report its outcome exactly once with the same permit:
/// `on_success(permit)`, `on_failure(permit, clock.now())` or `on_neutral(permit)`.
///
/// Every transition bumps a generation, which permits carry. Outcomes of permits from an earlier generation
/// do not move the current state, with one exception: a failure of an `allowed` permit counts while the
/// circuit is closed, whenever that permit was issued. So a success of a request admitted before the circuit
/// opened cannot close or reset it, and a late probe of an earlier half-open period cannot decide the current
/// one.
///
/// Time points must all come from one monotonic clock. The generation is 32 bits: it wraps only after 2^32
/// transitions (at least 16 days of continuous flapping with a 1 ms open time), far beyond any request's
/// life.
///
/// @par Thread Safety
/// All member functions are safe to call concurrently. Not copyable or movable (it holds atomics).
class CircuitBreaker {
public:
    /// The time points callers pass, read from the pool's injected monotonic clock.
    using time_point = std::chrono::steady_clock::time_point;

    /// What `try_admit` decided, to be handed back with the request's outcome.
    struct Permit {
        /// The kind of admission.
        enum class kind_t {
            allowed,  ///< Admitted while closed.
            probe,    ///< Admitted as one of the half-open probes.
            rejected, ///< Not admitted: the circuit is open, or half-open with all probe slots taken.
        };
        /// The kind of admission.
        kind_t kind = kind_t::rejected;
        /// The breaker's generation when the permit was issued.
        std::uint32_t generation = 0;

        /// True unless the request was rejected.
        explicit operator bool() const noexcept { return kind != kind_t::rejected; }
    };

    /// A closed breaker. Options that fail `validate()` are clamped into the valid range (validate them first
    /// to report the error).
    explicit CircuitBreaker(BreakerOptions options = {}) noexcept : options_(clamp(options)) {}

    /// Decides whether a request may run at `now`: `allowed` while closed (or disabled), a `probe` while
    /// half-open and a probe slot is free (the first caller after the open time moves an open circuit to
    /// half-open and takes the first slot), `rejected` otherwise.
    Permit try_admit(time_point now) noexcept {
        if (disabled()) {
            return {Permit::kind_t::allowed, 0};
        }
        std::uint64_t word = word_.load(std::memory_order_acquire);
        for (;;) {
            const std::uint32_t gen = generation_of(word);
            switch (state_of(word)) {
            case CircuitState::closed:
                return {Permit::kind_t::allowed, gen};
            case CircuitState::open:
                if (now < open_until()) {
                    return {Permit::kind_t::rejected, gen};
                }
                if (word_.compare_exchange_weak(word, half_open_word(gen + 1, 1, 0),
                                                std::memory_order_acq_rel, std::memory_order_acquire)) {
                    return {Permit::kind_t::probe, gen + 1};
                }
                break;
            case CircuitState::half_open:
                if (taken_of(word) >= options_.half_open_probes) {
                    return {Permit::kind_t::rejected, gen};
                }
                if (word_.compare_exchange_weak(word,
                                                half_open_word(gen, taken_of(word) + 1, succeeded_of(word)),
                                                std::memory_order_acq_rel, std::memory_order_acquire)) {
                    return {Permit::kind_t::probe, gen};
                }
                break;
            }
        }
    }

    /// Reports that the request of `permit` succeeded. While closed, a success of the current generation
    /// resets the failure count. A probe success of the current half-open period counts towards closing: the
    /// `half_open_probes`-th closes the circuit. Rejected and earlier-generation permits are ignored.
    void on_success(const Permit& permit) noexcept {
        if (disabled() || permit.kind == Permit::kind_t::rejected) {
            return;
        }
        std::uint64_t word = word_.load(std::memory_order_acquire);
        for (;;) {
            const std::uint32_t gen = generation_of(word);
            if (gen != permit.generation) {
                return;
            }
            std::uint64_t next = 0;
            if (state_of(word) == CircuitState::closed && permit.kind == Permit::kind_t::allowed) {
                if (failures_of(word) == 0) {
                    return;
                }
                next = closed_word(gen, 0);
            } else if (state_of(word) == CircuitState::half_open && permit.kind == Permit::kind_t::probe) {
                const std::uint32_t succeeded = succeeded_of(word) + 1;
                if (succeeded > taken_of(word)) {
                    return; // more outcomes than probes: a permit reported twice
                }
                next = succeeded >= options_.half_open_probes
                           ? closed_word(gen + 1, 0)
                           : half_open_word(gen, taken_of(word), succeeded);
            } else {
                return;
            }
            if (word_.compare_exchange_weak(word, next, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
                return;
            }
        }
    }

    /// Reports that the request of `permit` failed at `now` (model_error, timeout, spawn_failed). While
    /// closed, a failure of any `allowed` permit (of any generation) counts; reaching `failure_threshold`
    /// opens the circuit at `now`. A probe failure of the current half-open period re-opens the circuit at
    /// `now`. Other permits are ignored.
    void on_failure(const Permit& permit, time_point now) noexcept {
        if (disabled() || permit.kind == Permit::kind_t::rejected) {
            return;
        }
        std::uint64_t word = word_.load(std::memory_order_acquire);
        for (;;) {
            const std::uint32_t gen = generation_of(word);
            std::uint64_t next = 0;
            if (permit.kind == Permit::kind_t::allowed) {
                if (state_of(word) != CircuitState::closed) {
                    return;
                }
                const std::uint32_t failures = failures_of(word) + 1;
                if (failures >= options_.failure_threshold) {
                    raise_open_until(now);
                    next = open_word(gen + 1);
                } else {
                    next = closed_word(gen, failures);
                }
            } else {
                if (gen != permit.generation || state_of(word) != CircuitState::half_open) {
                    return;
                }
                raise_open_until(now);
                next = open_word(gen + 1);
            }
            if (word_.compare_exchange_weak(word, next, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
                return;
            }
        }
    }

    /// Reports that the request of `permit` ended with an outcome that says nothing about the key's health
    /// (cancelled, shutting_down, overloaded, no_workers, invalid_argument...). A probe of the current
    /// half-open period gives its slot back, so another caller can probe; everything else is ignored.
    void on_neutral(const Permit& permit) noexcept {
        if (disabled() || permit.kind != Permit::kind_t::probe) {
            return;
        }
        std::uint64_t word = word_.load(std::memory_order_acquire);
        for (;;) {
            if (generation_of(word) != permit.generation || state_of(word) != CircuitState::half_open ||
                taken_of(word) <= succeeded_of(word)) { // no probe in flight (a permit reported twice)
                return;
            }
            const std::uint64_t next =
                half_open_word(generation_of(word), taken_of(word) - 1, succeeded_of(word));
            if (word_.compare_exchange_weak(word, next, std::memory_order_acq_rel,
                                            std::memory_order_acquire)) {
                return;
            }
        }
    }

    /// The state at `now`. An open circuit whose open time has passed reports `half_open` (the next
    /// `try_admit` makes it so). A disabled breaker is always `closed`.
    [[nodiscard]] CircuitState state(time_point now) const noexcept {
        if (disabled()) {
            return CircuitState::closed;
        }
        const std::uint64_t word = word_.load(std::memory_order_acquire);
        const CircuitState current = state_of(word);
        if (current == CircuitState::open && now >= open_until()) {
            return CircuitState::half_open;
        }
        return current;
    }

    /// While closed, the failures counted in a row so far; while open or half-open, `failure_threshold` (no
    /// success has closed the circuit since it opened). Always 0 for a disabled breaker.
    [[nodiscard]] std::size_t consecutive_failures() const noexcept {
        if (disabled()) {
            return 0;
        }
        const std::uint64_t word = word_.load(std::memory_order_acquire);
        return state_of(word) == CircuitState::closed ? failures_of(word) : options_.failure_threshold;
    }

    /// When the current (or last) open period ends: meaningful while open. `time_point::min()` before the
    /// circuit first opened.
    [[nodiscard]] time_point open_until() const noexcept {
        return time_point(time_point::duration(open_until_.load(std::memory_order_relaxed)));
    }

    /// The options in effect (after clamping).
    [[nodiscard]] const BreakerOptions& options() const noexcept { return options_; }

private:
    // The word: bits 0-1 the state; bits 32-63 the generation; bits 2-31 depend on the state:
    //   closed     the consecutive failures (30 bits; at most max_failure_threshold < 2^30)
    //   open       zero
    //   half_open  bits 2-16 probe slots taken (admitted and not given back), bits 17-31 probe successes
    //              (15 bits each; at most max_half_open_probes < 2^15)
    static constexpr unsigned failures_shift = 2;
    static constexpr unsigned taken_shift = 2;
    static constexpr unsigned succeeded_shift = 17;
    static constexpr unsigned generation_shift = 32;
    static constexpr std::uint64_t state_mask = 0x3;
    static constexpr std::uint64_t failures_mask = (std::uint64_t{1} << 30) - 1;
    static constexpr std::uint64_t probes_mask = (std::uint64_t{1} << 15) - 1;
    static_assert(BreakerOptions::max_failure_threshold <= failures_mask);
    static_assert(BreakerOptions::max_half_open_probes <= probes_mask);

    static constexpr CircuitState state_of(std::uint64_t word) noexcept {
        return static_cast<CircuitState>(word & state_mask);
    }
    static constexpr std::uint32_t generation_of(std::uint64_t word) noexcept {
        return static_cast<std::uint32_t>(word >> generation_shift);
    }
    static constexpr std::uint32_t failures_of(std::uint64_t word) noexcept {
        return static_cast<std::uint32_t>((word >> failures_shift) & failures_mask);
    }
    static constexpr std::uint32_t taken_of(std::uint64_t word) noexcept {
        return static_cast<std::uint32_t>((word >> taken_shift) & probes_mask);
    }
    static constexpr std::uint32_t succeeded_of(std::uint64_t word) noexcept {
        return static_cast<std::uint32_t>((word >> succeeded_shift) & probes_mask);
    }
    static constexpr std::uint64_t closed_word(std::uint32_t gen, std::uint32_t failures) noexcept {
        return (std::uint64_t{gen} << generation_shift) | (std::uint64_t{failures} << failures_shift) |
               static_cast<std::uint64_t>(CircuitState::closed);
    }
    static constexpr std::uint64_t open_word(std::uint32_t gen) noexcept {
        return (std::uint64_t{gen} << generation_shift) | static_cast<std::uint64_t>(CircuitState::open);
    }
    static constexpr std::uint64_t half_open_word(std::uint32_t gen, std::uint32_t taken,
                                                  std::uint32_t succeeded) noexcept {
        return (std::uint64_t{gen} << generation_shift) | (std::uint64_t{succeeded} << succeeded_shift) |
               (std::uint64_t{taken} << taken_shift) | static_cast<std::uint64_t>(CircuitState::half_open);
    }

    static BreakerOptions clamp(BreakerOptions options) noexcept {
        if (options.failure_threshold > BreakerOptions::max_failure_threshold) {
            options.failure_threshold = BreakerOptions::max_failure_threshold;
        }
        if (options.open_time.count() <= 0) {
            options.open_time = std::chrono::milliseconds{1};
        } else if (options.open_time > BreakerOptions::max_open_time) {
            options.open_time = BreakerOptions::max_open_time;
        }
        if (options.half_open_probes == 0) {
            options.half_open_probes = 1;
        } else if (options.half_open_probes > BreakerOptions::max_half_open_probes) {
            options.half_open_probes = BreakerOptions::max_half_open_probes;
        }
        return options;
    }

    [[nodiscard]] bool disabled() const noexcept { return options_.failure_threshold == 0; }

    // Sets the open deadline to at least `now + open_time`. Called BEFORE the compare-and-swap that opens the
    // circuit, so why this is correct without a lock:
    //   - Visibility: the deadline's update is sequenced before the release CAS on `word_`; a reader that
    //   sees
    //     the open word through an acquire load therefore reads this deadline or a later value of
    //     `open_until_`.
    //   - Losing or stale writers: a thread whose CAS then fails (another thread opened first, or the word
    //   moved
    //     on) has still written. The deadline only ever grows (a CAS max loop), so such a write can never
    //     shorten an open period. It can lengthen it only to `its now + open_time`, where its `now` was read
    //     before it saw the word it acted on (so at most the transition time): the open period starts at the
    //     latest clock reading of the failures that raced to open it, which is a correct opening time. A
    //     writer stalled across later transitions holds an older `now`, below the current deadline: no
    //     effect.
    //   - A new open period always starts at a `now` no earlier than the previous one (one monotonic clock),
    //     so taking the maximum never keeps an old deadline.
    // While closed the value is stale and unused; `state()` and `try_admit` read it only for an open word.
    void raise_open_until(time_point now) noexcept {
        const time_point::duration open_time = options_.open_time;
        const time_point target = now > time_point::max() - open_time ? time_point::max() : now + open_time;
        const time_point::rep wanted = target.time_since_epoch().count();
        time_point::rep current = open_until_.load(std::memory_order_relaxed);
        while (current < wanted &&
               !open_until_.compare_exchange_weak(current, wanted, std::memory_order_relaxed)) {
        }
    }

    static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
    static_assert(std::atomic<time_point::rep>::is_always_lock_free);

    BreakerOptions options_;
    std::atomic<std::uint64_t> word_{closed_word(0, 0)};
    std::atomic<time_point::rep> open_until_{time_point::min().time_since_epoch().count()};
};

} // namespace modelpool
