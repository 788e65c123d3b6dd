// modelpool/detail/scaling_policy.hpp
//
// How many workers a registered key should start now, as one pure function of its counts, so the decision is
// made in one place, under the router's lock, and can be tested on its own. The router turns the answer into
// reservations before it unlocks; that is what makes 1,000 concurrent first requests start exactly
// `cold_start` workers (the Rust pool decided outside any lock and over-spawned).
#pragma once

#include <algorithm>
#include <cstddef>

namespace modelpool::detail {

/// A key's counts, as the router sees them under its lock.
struct scaling_input {
    std::size_t live = 0; ///< Healthy workers that are or will be able to serve, including reserved slots.
    std::size_t starting = 0; ///< Of those, still spawning or loading (or reserved).
    std::size_t serving = 0;  ///< Of those, loaded (ready, busy or idle).
    std::size_t idle = 0;     ///< Of those, waiting for a request.
    std::size_t queued = 0;   ///< Requests waiting for a worker.
    std::size_t min_workers = 0;
    std::size_t max_workers = 1;
    std::size_t cold_start = 1;
    bool pressure_held = false; ///< Every worker busy with requests queued, for at least the upscale delay.
};

/// What to do.
struct scaling_plan {
    std::size_t start = 0; ///< Workers to start now.
    bool cold = false;     ///< The key has no worker at all: the first start may evict other keys for memory.
};

/// The policy: keep `min_workers`; a request with no worker starts `cold_start` workers (a cold start); when
/// every loaded worker is busy, nothing is loading, requests are queued and that has lasted the upscale
/// delay, start one more. Never more than `max_workers`, counting the ones still loading.
constexpr scaling_plan plan_scaling(const scaling_input& in) noexcept {
    const std::size_t room = in.max_workers > in.live ? in.max_workers - in.live : 0;
    std::size_t want = in.live < in.min_workers ? in.min_workers - in.live : 0;
    if (in.live == 0 && in.queued > 0) {
        want = std::max(want, in.cold_start);
    } else if (in.queued > 0 && in.idle == 0 && in.starting == 0 && in.serving > 0 && in.pressure_held) {
        want = std::max<std::size_t>(want, 1);
    }
    const std::size_t start = std::min(want, room);
    return {start, in.live == 0 && start > 0};
}

/// True when a key is under pressure: requests queued and every loaded worker busy, nothing loading.
constexpr bool under_pressure(const scaling_input& in) noexcept {
    return in.queued > 0 && in.idle == 0 && in.starting == 0 && in.serving > 0;
}

} // namespace modelpool::detail
