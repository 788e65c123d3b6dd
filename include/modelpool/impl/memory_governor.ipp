// modelpool/impl/memory_governor.ipp
//
// The definitions of the non-template members declared in modelpool/memory_governor.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/memory_governor.hpp"

namespace modelpool {

MODELPOOL_DECL std::shared_ptr<MemoryGovernor> MemoryGovernor::create(std::size_t limit_mb) {
    return std::make_shared<MemoryGovernor>(private_tag{}, limit_mb);
}

MODELPOOL_DECL result<AllocationGuard> MemoryGovernor::try_allocate(std::size_t mb, std::string_view key) {
    if (mb == 0) {
        return fail(errc::invalid_argument, "cannot reserve 0 MB for '{}': a reservation needs at least 1 MB",
                    key);
    }
    std::string owned_key(key); // allocated before taking the lock
    std::lock_guard lock(mutex_);
    if (auto refusal = refusal_locked(mb, key, /*respect_queue=*/true)) {
        return unexpected<PoolError>(std::move(*refusal));
    }
    commit_locked(owned_key, mb);
    return AllocationGuard(shared_from_this(), mb, std::move(owned_key));
}

MODELPOOL_DECL void MemoryGovernor::fail_waiters(const PoolError& error) {
    std::vector<Completion> ready; // outlives the lock: handlers are never destroyed under it
    {
        std::lock_guard lock(mutex_);
        drain_waiters_locked(error, ready);
    }
    complete_all(ready);
}

MODELPOOL_DECL void MemoryGovernor::close(const PoolError& reason) {
    std::vector<Completion> ready;
    {
        std::lock_guard lock(mutex_);
        closed_.emplace(reason);
        drain_waiters_locked(reason, ready);
    }
    complete_all(ready);
}

MODELPOOL_DECL bool MemoryGovernor::closed() const {
    std::lock_guard lock(mutex_);
    return closed_.has_value();
}

MODELPOOL_DECL std::size_t MemoryGovernor::allocated_mb() const {
    std::lock_guard lock(mutex_);
    return allocated_mb_;
}

MODELPOOL_DECL std::size_t MemoryGovernor::allocated_mb(std::string_view key) const {
    std::lock_guard lock(mutex_);
    auto found = per_key_mb_.find(key);
    return found == per_key_mb_.end() ? 0 : found->second;
}

MODELPOOL_DECL std::size_t MemoryGovernor::available_mb() const {
    std::lock_guard lock(mutex_);
    return limit_mb_ - allocated_mb_;
}

MODELPOOL_DECL std::size_t MemoryGovernor::waiting() const {
    std::lock_guard lock(mutex_);
    return waiters_.size();
}

MODELPOOL_DECL MemoryStats MemoryGovernor::stats() const {
    std::lock_guard lock(mutex_);
    MemoryStats stats{
        .limit_mb = limit_mb_,
        .allocated_mb = allocated_mb_,
        .available_mb = limit_mb_ - allocated_mb_,
        .peak_mb = peak_mb_,
        .reservations = reservations_,
        .per_key_mb = {},
        .waiters = waiters_.size(),
    };
    stats.per_key_mb.reserve(per_key_mb_.size());
    for (const auto& [key, mb] : per_key_mb_) {
        stats.per_key_mb.emplace_back(key, mb); // std::map iterates in key order
    }
    return stats;
}

MODELPOOL_DECL std::optional<PoolError> MemoryGovernor::refusal_locked(std::size_t mb, std::string_view key,
                                                                       bool respect_queue) const {
    const std::size_t available = limit_mb_ - allocated_mb_; // allocated <= limit is an invariant
    if (mb > limit_mb_) {
        return PoolError(errc::memory_exhausted,
                         fmt::format("cannot reserve {} MB for '{}': more than the whole {} MB limit "
                                     "({} of {} MB allocated)",
                                     mb, key, limit_mb_, allocated_mb_, limit_mb_));
    }
    if (respect_queue && !waiters_.empty()) {
        return PoolError(
            errc::memory_exhausted,
            fmt::format("cannot reserve {} MB for '{}': {} of {} MB allocated, {} available, and "
                        "{} earlier request(s) are waiting for memory",
                        mb, key, allocated_mb_, limit_mb_, available, waiters_.size()));
    }
    if (mb > available) { // never `allocated + mb > limit`: that sum can wrap
        return PoolError(errc::memory_exhausted,
                         fmt::format("cannot reserve {} MB for '{}': {} of {} MB allocated, {} available", mb,
                                     key, allocated_mb_, limit_mb_, available));
    }
    return std::nullopt;
}

MODELPOOL_DECL void MemoryGovernor::commit_locked(std::string_view key, std::size_t mb) {
    auto entry = per_key_mb_.find(key);
    if (entry == per_key_mb_.end()) {
        entry = per_key_mb_.emplace(std::string(key), 0).first;
    }
    entry->second += mb; // <= allocated_mb_ + mb <= limit_mb_: cannot wrap
    allocated_mb_ += mb;
    peak_mb_ = std::max(peak_mb_, allocated_mb_);
    ++reservations_;
}

MODELPOOL_DECL void MemoryGovernor::release_reservation(std::string_view key, std::size_t mb) noexcept {
    std::vector<Completion> ready;
    {
        std::lock_guard lock(mutex_);
        allocated_mb_ -= mb;
        --reservations_;
        if (auto entry = per_key_mb_.find(key); entry != per_key_mb_.end()) {
            entry->second -= mb;
            if (entry->second == 0) {
                per_key_mb_.erase(entry); // keeps the map bounded by the live keys
            }
        }
        wake_locked(ready);
    }
    complete_all(ready);
}

MODELPOOL_DECL void MemoryGovernor::wake_locked(std::vector<Completion>& ready) {
    if (waiters_.empty()) {
        return;
    }
    ready.reserve(ready.size() + waiters_.size()); // so that push_back below cannot throw mid-way
    while (!waiters_.empty()) {
        auto front = waiters_.begin();
        if (front->second.mb > limit_mb_ - allocated_mb_) {
            break;
        }
        commit_locked(front->second.key, front->second.mb); // may throw; the waiter then stays queued
        auto node = waiters_.extract(front);
        Waiter& waiter = node.mapped();
        AllocationGuard guard(shared_from_this(), waiter.mb, std::move(waiter.key));
        ready.push_back(Completion{std::move(waiter.executor), std::move(waiter.handler), std::move(guard)});
    }
}

MODELPOOL_DECL void MemoryGovernor::drain_waiters_locked(const PoolError& error,
                                                         std::vector<Completion>& ready) {
    ready.reserve(ready.size() + waiters_.size());
    while (!waiters_.empty()) {
        auto node = waiters_.extract(waiters_.begin());
        Waiter& waiter = node.mapped();
        ready.push_back(
            Completion{std::move(waiter.executor), std::move(waiter.handler), unexpected<PoolError>(error)});
    }
}

MODELPOOL_DECL void MemoryGovernor::start_waiter(asio::any_io_executor executor, handler_type handler,
                                                 std::size_t mb, std::string key) {
    // Like a pending timer, a queued request keeps its executor's context from running out of work.
    executor = asio::prefer(executor, asio::execution::outstanding_work.tracked);
    std::vector<Completion> ready;
    {
        std::lock_guard lock(mutex_);
        std::optional<PoolError> refusal;
        if (closed_) {
            refusal = *closed_;
        } else if (mb == 0) {
            refusal = PoolError(
                errc::invalid_argument,
                fmt::format("cannot reserve 0 MB for '{}': a reservation needs at least 1 MB", key));
        } else if (mb > limit_mb_) {
            refusal = refusal_locked(mb, key, /*respect_queue=*/false);
        }
        if (refusal) {
            ready.push_back(Completion{std::move(executor), std::move(handler),
                                       unexpected<PoolError>(std::move(*refusal))});
        } else if (waiters_.empty() && mb <= limit_mb_ - allocated_mb_) {
            commit_locked(key, mb);
            AllocationGuard guard(shared_from_this(), mb, std::move(key));
            ready.push_back(Completion{std::move(executor), std::move(handler), std::move(guard)});
        } else {
            const std::uint64_t id = next_waiter_id_++;
            // Installed before the request is visible to releases, so that a completion (which clears the
            // slot) can never precede the assignment. The handler holds a weak_ptr and looks the waiter
            // up by id, so a late or repeated emit after completion is harmless.
            if (auto slot = handler.get_cancellation_slot(); slot.is_connected()) {
                slot.assign([weak = weak_from_this(), id](asio::cancellation_type type) {
                    if (type != asio::cancellation_type::none) {
                        if (auto self = weak.lock()) {
                            self->cancel_waiter(id);
                        }
                    }
                });
            }
            waiters_.emplace(id, Waiter{mb, std::move(key), std::move(executor), std::move(handler)});
        }
    }
    complete_all(ready);
}

MODELPOOL_DECL void MemoryGovernor::cancel_waiter(std::uint64_t id) {
    std::vector<Completion> ready;
    {
        std::lock_guard lock(mutex_);
        auto found = waiters_.find(id);
        if (found == waiters_.end()) {
            return; // already granted, failed or cancelled
        }
        ready.reserve(waiters_.size());
        auto node = waiters_.extract(found);
        Waiter& waiter = node.mapped();
        auto error = fail(errc::cancelled,
                          "reservation of {} MB for '{}' was cancelled while waiting ({} of {} MB allocated)",
                          waiter.mb, waiter.key, allocated_mb_, limit_mb_);
        ready.push_back(Completion{std::move(waiter.executor), std::move(waiter.handler), std::move(error)});
        wake_locked(ready); // the requests behind a cancelled first waiter may fit now
    }
    complete_all(ready);
}

MODELPOOL_DECL void MemoryGovernor::complete_all(std::vector<Completion>& ready) {
    for (Completion& completion : ready) {
        asio::post(completion.executor, [handler = std::move(completion.handler),
                                         outcome = std::move(completion.outcome)]() mutable {
            handler.get_cancellation_slot().clear();
            asio::dispatch(asio::append(std::move(handler), std::move(outcome)));
        });
    }
}

} // namespace modelpool
