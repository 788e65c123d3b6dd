// modelpool/worker_state.hpp
//
// The lifecycle of one worker, and the single table of moves it may make. Every state change goes through
// `can_transition`, so a worker can never be, say, serving after it was evicted, or counted twice.
//
//     spawning -> loading -> ready -> busy <-> idle -> evicting -> stopped
//                        \-> failed            (ready/busy/idle -> stopped on shutdown)
#pragma once

#include <string_view>

namespace modelpool {

/// Where a worker is in its life.
enum class WorkerState {
    spawning, ///< Accepted by a spawn function; its coroutine has not started yet.
    loading,  ///< Awaiting its loader.
    ready,    ///< Loaded and registered; has not served a request yet.
    busy,     ///< Serving a request.
    idle,     ///< Loaded, registered and waiting for a request.
    evicting, ///< Chosen for eviction; takes no more requests.
    stopped,  ///< Ended normally (evicted or shut down); its memory is released.
    failed,   ///< Its loader failed; it never served; its memory is released.
};

/// The name of a state, e.g. "idle".
constexpr std::string_view to_string(WorkerState state) noexcept {
    switch (state) {
    case WorkerState::spawning:
        return "spawning";
    case WorkerState::loading:
        return "loading";
    case WorkerState::ready:
        return "ready";
    case WorkerState::busy:
        return "busy";
    case WorkerState::idle:
        return "idle";
    case WorkerState::evicting:
        return "evicting";
    case WorkerState::stopped:
        return "stopped";
    case WorkerState::failed:
        return "failed";
    }
    return "unknown";
}

/// True when a worker may move from `from` to `to`. The one place that defines the lifecycle.
constexpr bool can_transition(WorkerState from, WorkerState to) noexcept {
    using enum WorkerState;
    switch (from) {
    case spawning:
        return to == loading || to == stopped;
    case loading:
        return to == ready || to == failed || to == stopped;
    case ready:
        return to == busy || to == idle || to == evicting || to == stopped;
    case busy:
        return to == idle || to == stopped;
    case idle:
        return to == busy || to == evicting || to == stopped;
    case evicting:
        return to == stopped;
    case stopped:
    case failed:
        return false;
    }
    return false;
}

/// True for states in which a worker holds a model and can take requests.
constexpr bool is_serving(WorkerState state) noexcept {
    return state == WorkerState::ready || state == WorkerState::busy || state == WorkerState::idle;
}

/// True for states in which a worker still counts against its key's maximum and the memory budget.
constexpr bool is_live(WorkerState state) noexcept {
    return state != WorkerState::stopped && state != WorkerState::failed;
}

} // namespace modelpool
