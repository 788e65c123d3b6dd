// modelpool/detail/memory_wait.hpp
//
// A memory reservation with a time limit: `MemoryGovernor::async_allocate` raced against a wait on the pool's
// clock. Both completions run on one strand, so whichever comes first cancels the other without a data race,
// and the handler is called exactly once. A guard that arrives after the time limit is released at once.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/error.hpp"
#include "modelpool/memory_governor.hpp"

#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace modelpool::detail {

/// Reserves `mb` MB under `key`, waiting at most `timeout`; calls `done(result<AllocationGuard>)` once, on
/// `strand`: the guard, the governor's error (`shutting_down` once it is closed), or `memory_exhausted`
/// naming the wait when the time ran out.
inline void allocate_within(const std::shared_ptr<MemoryGovernor>& governor,
                            const std::shared_ptr<Clock>& clock,
                            const asio::strand<asio::any_io_executor>& strand, std::size_t mb,
                            std::string key, Clock::duration timeout,
                            std::function<void(result<AllocationGuard>)> done) {
    struct race {
        std::function<void(result<AllocationGuard>)> done;
        asio::cancellation_signal stop_allocation;
        asio::cancellation_signal stop_timer;
        bool finished = false;
    };
    auto state = std::make_shared<race>();
    state->done = std::move(done);
    const auto deadline = Clock::saturating_add(clock->now(), timeout);
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count();

    // Both waits start on the strand, so the one that completes first always finds the other registered and
    // can cancel it: nothing is left waiting on the clock or in the governor's queue.
    asio::dispatch(strand, [state, governor, clock, strand, mb, key = std::move(key), deadline,
                            waited]() mutable {
        governor->async_allocate(strand, mb, key,
                                 asio::bind_cancellation_slot(
                                     state->stop_allocation.slot(),
                                     asio::bind_executor(strand, [state](result<AllocationGuard> outcome) {
                                         if (state->finished) {
                                             return; // the time ran out first; a late guard is released here
                                         }
                                         state->finished = true;
                                         state->stop_timer.emit(asio::cancellation_type::terminal);
                                         state->done(std::move(outcome));
                                     })));
        clock->async_wait_until(
            strand, deadline,
            asio::bind_cancellation_slot(
                state->stop_timer.slot(),
                asio::bind_executor(strand, [state, mb, key, waited](std::error_code ec) {
                    if (state->finished || ec) {
                        return;
                    }
                    state->finished = true;
                    state->stop_allocation.emit(asio::cancellation_type::terminal);
                    state->done(fail(errc::memory_exhausted,
                                     "cannot reserve {} MB for '{}': no memory was released within {} ms", mb,
                                     key, waited));
                })));
    });
}

} // namespace modelpool::detail
