// modelpool/detail/impl/worker.ipp
//
// The definitions of the non-template functions declared in modelpool/detail/worker.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/detail/worker.hpp"

namespace modelpool::detail {

MODELPOOL_DECL PoolError loader_threw() {
    return PoolError(errc::spawn_failed, fmt::format("loader threw: {}", describe_current_exception()));
}

MODELPOOL_DECL void worker_load_failed(pool_core& core, key_router& router, WorkerId id,
                                       std::string_view capability, const PoolError& cause,
                                       AllocationGuard& guard) {
    const auto& key = router.key();
    PoolError error(errc::spawn_failed,
                    fmt::format("{} worker {} for '{}' failed to load: {}{}", capability, id, key,
                                cause.code() == errc::spawn_failed ? "" : fmt::format("{}: ", cause.code()),
                                cause.message().empty() ? "(the loader gave no reason)" : cause.message()));
    const auto mb = guard.size_mb();
    guard.release(); // memory is back before anyone learns of the failure
    core.metrics->worker_failed();
    core.logger->error("{}", error.message());
    router.worker_failed(id, error);
    core.event(WorkerEventKind::failed, key, id, mb, error.message());
}

MODELPOOL_DECL void worker_ready(pool_core& core, key_router& router, WorkerId id,
                                 std::string_view capability, std::size_t memory_mb) {
    const auto& key = router.key();
    core.metrics->worker_loaded();
    router.worker_loaded(id);
    core.logger->debug("{} worker {} for '{}' ready ({} MB)", capability, id, key, memory_mb);
    core.event(WorkerEventKind::loaded, key, id, memory_mb);
}

MODELPOOL_DECL void worker_stuck_returned(pool_core& core, key_router& router, WorkerId id,
                                          std::string_view capability) {
    core.logger->warn("{} worker {} for '{}' returned after being found stuck; it stops", capability, id,
                      router.key());
}

MODELPOOL_DECL void worker_finished(pool_core& core, key_router& router, WorkerId id,
                                    std::string_view capability, AllocationGuard& guard) {
    const auto& key = router.key();
    const auto mb = guard.size_mb();
    guard.release();
    core.metrics->worker_stopped();
    core.logger->debug("{} worker {} for '{}' stopped", capability, id, key);
    router.worker_stopped(id);
    core.event(WorkerEventKind::stopped, key, id, mb);
}

} // namespace modelpool::detail
