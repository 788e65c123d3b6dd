// modelpool/detail/impl/pool_core.ipp
//
// The definitions of the non-template members declared in modelpool/detail/pool_core.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/detail/pool_core.hpp"

namespace modelpool {
namespace detail {

MODELPOOL_DECL void pool_core::event(WorkerEventKind kind, std::string_view key, WorkerId id, std::size_t mb,
                                     std::string_view cause) const noexcept {
    if (!options || !options->on_worker_event) {
        return;
    }
    try {
        options->on_worker_event(WorkerEvent{kind, key, id, mb, cause});
    } catch (...) {
        logger->error("on_worker_event threw for worker {} of '{}' ({}); ignored", id, key, to_string(kind));
    }
}

MODELPOOL_DECL void pool_core::enter(WorkerId id, std::shared_ptr<asio::cancellation_signal> signal) {
    std::lock_guard lock(mutex);
    ++live_workers;
    signals.emplace(id, std::move(signal));
}

MODELPOOL_DECL void pool_core::leave(WorkerId id) {
    std::lock_guard lock(mutex);
    signals.erase(id);
    if (--live_workers == 0) {
        drained.notify_all();
    }
}

MODELPOOL_DECL std::vector<std::shared_ptr<asio::cancellation_signal>> pool_core::running_signals() {
    std::lock_guard lock(mutex);
    std::vector<std::shared_ptr<asio::cancellation_signal>> out;
    out.reserve(signals.size());
    for (auto& [id, signal] : signals) {
        out.push_back(signal);
    }
    return out;
}

} // namespace detail
} // namespace modelpool
