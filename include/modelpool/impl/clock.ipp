// modelpool/impl/clock.ipp
//
// The definitions of the non-template members declared in modelpool/clock.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/clock.hpp"

namespace modelpool {

MODELPOOL_DECL void Clock::complete(const asio::any_io_executor& ex, wait_handler handler,
                                    std::error_code ec) {
    asio::post(ex, [handler = std::move(handler), ec]() mutable {
        handler.get_cancellation_slot().clear();
        asio::dispatch(asio::append(std::move(handler), ec));
    });
}
MODELPOOL_DECL void SteadyClock::do_wait(asio::any_io_executor ex, time_point deadline,
                                         wait_handler handler) {
    auto timer = std::make_shared<asio::steady_timer>(std::move(ex), deadline);
    asio::steady_timer& waiting = *timer;
    auto slot = handler.get_cancellation_slot();
    waiting.async_wait(asio::bind_cancellation_slot(
        slot, asio::consign(
                  [handler = std::move(handler)](boost::system::error_code ec) mutable {
                      if (auto own = handler.get_cancellation_slot(); own.is_connected()) {
                          own.clear();
                      }
                      std::move(handler)(std::error_code(ec));
                  },
                  std::move(timer))));
}
MODELPOOL_DECL ManualClock::ManualClock(time_point start)
    : state_(std::make_shared<detail::ManualClockState>(start)) {}

MODELPOOL_DECL ManualClock::~ManualClock() {
    std::map<std::pair<time_point, std::uint64_t>, detail::ManualWait> orphans;
    {
        std::lock_guard lock(state_->mutex);
        orphans.swap(state_->waits); // map::swap swaps the trees; no handler is moved or assigned
    }
    // `orphans` dies here, outside the lock: a destroyed coroutine frame may run arbitrary destructors.
}

MODELPOOL_DECL std::size_t ManualClock::advance(duration d) {
    return advance_to(saturating_add(now(), d < duration::zero() ? duration::zero() : d));
}

MODELPOOL_DECL std::size_t ManualClock::advance_to(time_point t) {
    std::vector<detail::ManualWait> ready; // outlives the lock
    {
        std::lock_guard lock(state_->mutex);
        const time_point target = std::max(t, state_->current());
        state_->now.store(target.time_since_epoch().count(), std::memory_order_release);
        while (!state_->waits.empty() && state_->waits.begin()->first.first <= target) {
            auto node = state_->waits.extract(state_->waits.begin());
            ready.push_back(std::move(node.mapped()));
        }
    }
    complete_all(ready, std::error_code{});
    return ready.size();
}

MODELPOOL_DECL std::size_t ManualClock::pending_waits() const {
    std::lock_guard lock(state_->mutex);
    return state_->waits.size();
}

MODELPOOL_DECL std::optional<Clock::time_point> ManualClock::next_deadline() const {
    std::lock_guard lock(state_->mutex);
    if (state_->waits.empty()) {
        return std::nullopt;
    }
    return state_->waits.begin()->first.first;
}

MODELPOOL_DECL void ManualClock::do_wait(asio::any_io_executor ex, time_point deadline,
                                         wait_handler handler) {
    // Like a pending timer, a pending wait keeps its executor's context from running out of work.
    asio::any_io_executor target = asio::prefer(ex, asio::execution::outstanding_work.tracked);
    std::vector<detail::ManualWait> ready;
    {
        std::lock_guard lock(state_->mutex);
        if (deadline <= state_->current()) {
            ready.push_back(detail::ManualWait{std::move(target), std::move(handler)});
        } else {
            const std::pair key{deadline, state_->next_id++};
            // Installed under the lock, before advance() can see the wait, so that the completion (which
            // clears the slot) always comes after the assignment.
            if (auto slot = handler.get_cancellation_slot(); slot.is_connected()) {
                slot.assign([weak = std::weak_ptr(state_), key](asio::cancellation_type type) {
                    if (type != asio::cancellation_type::none) {
                        if (auto state = weak.lock()) {
                            state->cancel(key);
                        }
                    }
                });
            }
            state_->waits.emplace(key, detail::ManualWait{std::move(target), std::move(handler)});
        }
    }
    complete_all(ready, std::error_code{});
}

MODELPOOL_DECL void ManualClock::complete_all(std::vector<detail::ManualWait>& ready, std::error_code ec) {
    for (detail::ManualWait& wait : ready) {
        complete(wait.executor, std::move(wait.handler), ec);
    }
}

} // namespace modelpool
