// modelpool/memory_governor.hpp
//
// The pool's memory budget, in MB, shaped like Seastar's semaphore_units. A worker holds an `AllocationGuard`
// for the memory its model needs. The guard refers to the one `MemoryGovernor` that issued it. It never holds
// a copy of the counters, which was the Rust pool's bug: there, releases decremented a clone and the budget
// only grew. The guard gives its megabytes back exactly once, when released or destroyed. A request that does
// not fit either fails at once (`try_allocate`) or waits in FIFO order until releases make room
// (`async_allocate`). All arithmetic is checked, so no request size can wrap the counters. There are no fake
// features: no huge pages, chunk pools or NUMA guesses.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/config.hpp"
#include "modelpool/error.hpp"

#include <boost/asio/append.hpp> // not in modelpool/asio.hpp (yet)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>
#endif

namespace modelpool {

class MemoryGovernor;

/// A snapshot of a governor's accounting, taken under one lock so that the figures agree with each other.
struct MemoryStats {
    std::size_t limit_mb = 0;     ///< The budget the governor was created with.
    std::size_t allocated_mb = 0; ///< MB held by live guards.
    std::size_t available_mb = 0; ///< limit_mb - allocated_mb.
    std::size_t peak_mb = 0;      ///< The highest allocated_mb since the governor was created.
    std::size_t reservations = 0; ///< Live (non-empty, unreleased) guards.
    /// MB held per key, sorted by key. Keys that hold 0 MB are absent, so the list cannot grow without bound.
    std::vector<std::pair<std::string, std::size_t>> per_key_mb;
    std::size_t waiters = 0; ///< async_allocate requests queued for memory.
};

/// A move-only reservation of `size_mb()` MB under `key()` from one `MemoryGovernor`. RAII: it is released
/// exactly once, by `release()` or by the destructor, whichever comes first.
///
/// A default-constructed or moved-from guard is empty: it holds nothing, `bool(guard)` is false and releasing
/// it does nothing.
///
/// @par Lifetime
/// The guard keeps its governor alive through a `std::shared_ptr` to that same governor. A guard may
/// therefore outlive the pool that created it, and releasing it late is always safe.
///
/// @par Thread Safety
/// Distinct guards may be used and released concurrently from any threads. One guard object is not
/// synchronised: do not release or move it from two threads at once.
class AllocationGuard {
public:
    /// An empty guard that holds no memory.
    AllocationGuard() noexcept = default;

    /// Takes over `other`'s reservation; `other` becomes empty.
    AllocationGuard(AllocationGuard&& other) noexcept
        : governor_(std::move(other.governor_)), mb_(std::exchange(other.mb_, 0)),
          key_(std::move(other.key_)) {
        other.key_.clear();
    }

    /// Releases this guard's own reservation first, then takes over `other`'s; `other` becomes empty.
    AllocationGuard& operator=(AllocationGuard&& other) noexcept {
        if (this != &other) {
            release();
            governor_ = std::move(other.governor_);
            mb_ = std::exchange(other.mb_, 0);
            key_ = std::move(other.key_);
            other.key_.clear();
        }
        return *this;
    }

    // Copying would release the same megabytes twice.
    AllocationGuard(const AllocationGuard&) = delete;
    AllocationGuard& operator=(const AllocationGuard&) = delete;

    /// Releases the reservation if it is still held.
    ~AllocationGuard() { release(); }

    /// The reserved MB; 0 for an empty guard.
    [[nodiscard]] std::size_t size_mb() const noexcept { return mb_; }

    /// The key the memory is accounted under; empty for an empty guard.
    [[nodiscard]] const std::string& key() const noexcept { return key_; }

    /// The governor that issued the reservation, for identity checks only (a pool rejects a guard issued by
    /// another pool's governor); null for an empty guard.
    [[nodiscard]] const MemoryGovernor* governor() const noexcept { return governor_.get(); }

    /// True while the guard holds a reservation.
    explicit operator bool() const noexcept { return governor_ != nullptr; }

    /// Returns the memory to the governor and wakes the queued `async_allocate` requests that now fit, in
    /// FIFO order. Idempotent: afterwards the guard is empty and further calls do nothing.
    ///
    /// The waiters' completions are posted to their executors, never run inline. If the process runs out of
    /// memory while posting them, std::terminate is called (this function is noexcept because destructors
    /// call it).
    void release() noexcept;

private:
    friend class MemoryGovernor;

    AllocationGuard(std::shared_ptr<MemoryGovernor> governor, std::size_t mb, std::string key) noexcept
        : governor_(std::move(governor)), mb_(mb), key_(std::move(key)) {}

    std::shared_ptr<MemoryGovernor> governor_;
    std::size_t mb_ = 0;
    std::string key_;
};

/// The memory budget shared by every worker of a pool (or of several pools), in MB.
///
/// Reservations are `AllocationGuard`s. `try_allocate` answers at once. `async_allocate` waits in a FIFO
/// queue until releases make room, so a large request is never overtaken by a later, smaller one. While any
/// request is queued, `try_allocate` refuses as well, for the same reason.
///
/// @par Lifetime
/// Created only by `create()` and always owned by `std::shared_ptr`: guards and pending `async_allocate`
/// initiations keep it alive. Queued waiters do not keep it alive. If the governor is destroyed with waiters
/// still queued, their handlers are destroyed without being invoked. A coroutine waiting on one is then
/// destroyed, not resumed. Call `close()` (or `fail_waiters()`) at shutdown, while the waiters' execution
/// contexts still exist, so that every waiter gets a completion. A waiter's completion that holds a guard
/// from this governor keeps it alive until that waiter is completed or failed.
///
/// @par Thread Safety
/// All member functions may be called concurrently from any thread. One `std::mutex` guards the bookkeeping.
/// It is never held while user code runs: completions are posted and handlers are destroyed outside the lock.
class MemoryGovernor : public std::enable_shared_from_this<MemoryGovernor> {
    struct private_tag {
        explicit private_tag() = default;
    };

public:
    /// The completion signature of `async_allocate`.
    using allocate_signature = void(result<AllocationGuard>);

    /// Creates a governor with a budget of `limit_mb` MB.
    ///
    /// The value is taken as given: the Pool validates its options before creating a governor. A limit of 0
    /// is legal and means that nothing fits (every request fails with `errc::memory_exhausted`). Throws only
    /// std::bad_alloc.
    static std::shared_ptr<MemoryGovernor> create(std::size_t limit_mb);

    /// Use `create()`; the tag makes this constructor callable only through it (it is public for
    /// make_shared).
    MemoryGovernor(private_tag, std::size_t limit_mb) noexcept : limit_mb_(limit_mb) {}

    // Copies would have their own counters, and guards would release into the wrong one (the Rust pool's
    // bug).
    MemoryGovernor(const MemoryGovernor&) = delete;
    MemoryGovernor& operator=(const MemoryGovernor&) = delete;

    /// Destroys queued waiters' handlers without invoking them (see the class's lifetime rules).
    ~MemoryGovernor() = default;

    /// Reserves `mb` MB under `key` now, or fails without waiting.
    ///
    /// Fails with:
    /// - `errc::invalid_argument` if `mb` is 0;
    /// - `errc::memory_exhausted` if `mb` exceeds the memory available, the whole limit, or if
    /// `async_allocate`
    ///   requests are queued (they come first). The message names the key, the request, the allocated MB and
    ///   the limit, e.g. "cannot reserve 1024 MB for 'bert': 3584 of 4096 MB allocated, 512 available".
    ///
    /// Any `mb`, up to SIZE_MAX, is safe: the check cannot overflow. After `close()` this still works:
    /// closing only refuses new waiters. Throws only std::bad_alloc (copying the key).
    ///
    /// @par Thread Safety
    /// Safe to call concurrently with every other member function and with guard releases.
    [[nodiscard]] result<AllocationGuard> try_allocate(std::size_t mb, std::string_view key = {});

    /// Reserves `mb` MB under `key`, waiting in FIFO order for releases to make room.
    ///
    /// Completion signature `void(result<AllocationGuard>)`. The completion is always posted to the handler's
    /// associated executor, or to `executor` when the handler has none. It never runs inside this call and
    /// never under the governor's lock. While the request waits, it counts as outstanding work on that
    /// executor, like a timer: `io_context::run()` does not return while it is queued. A handler whose
    /// associated executor is not an I/O executor (e.g. an `any_completion_handler`, whose executor is an
    /// `any_completion_executor`) is posted to `executor` and dispatched from there to its own executor.
    ///
    /// Completes with:
    /// - a guard, at once if the memory fits and nobody is queued, otherwise when releases make room. A
    /// queued
    ///   request is never overtaken by a later one, however small;
    /// - `errc::invalid_argument` at once if `mb` is 0;
    /// - `errc::memory_exhausted` at once if `mb` exceeds the whole limit (it could never fit);
    /// - `errc::cancelled` when the per-operation cancellation slot associated with the handler is emitted
    /// while
    ///   the request is queued (any cancellation type: a queued request has had no side effect). This is how
    ///   callers apply timeouts;
    /// - the error given to `fail_waiters()` or `close()`; after `close()`, at once with its reason.
    ///
    /// Cancelling the first waiter lets the waiters behind it go ahead if they now fit.
    /// Throws only std::bad_alloc.
    ///
    /// @par Thread Safety
    /// Safe to call from any thread. As everywhere in Asio, emit the cancellation signal from the handler's
    /// executor (or a strand serialising with it), not concurrently with the completion.
    template <class CompletionToken>
    auto async_allocate(asio::any_io_executor executor, std::size_t mb, std::string key,
                        CompletionToken&& token) {
        return asio::async_initiate<CompletionToken, allocate_signature>(
            [](auto handler, std::shared_ptr<MemoryGovernor> self, asio::any_io_executor fallback,
               std::size_t size, std::string name) {
                // Resolved here, where the handler's type is still known (see completion_executor).
                asio::any_io_executor target = detail::completion_executor(handler, fallback);
                self->start_waiter(std::move(target), handler_type(std::move(handler)), size,
                                   std::move(name));
            },
            token, shared_from_this(), std::move(executor), mb, std::move(key));
    }

    /// Completes every queued `async_allocate` request with `error` (posted, in FIFO order). Later requests
    /// queue as usual; use `close()` to refuse them too.
    ///
    /// @par Thread Safety
    /// Safe to call from any thread, at any time.
    void fail_waiters(const PoolError& error);

    /// Shuts the queue: fails every queued request with `reason`, as `fail_waiters()` does, and makes every
    /// later `async_allocate` complete at once with `reason`. Idempotent; a second call only updates the
    /// reason.
    ///
    /// `try_allocate` and guard releases keep working after `close()`. Workers still running during the
    /// pool's shutdown release their memory normally. The pool refuses new work itself, before it asks the
    /// governor.
    ///
    /// @par Thread Safety
    /// Safe to call from any thread, at any time.
    void close(const PoolError& reason);

    /// True after `close()`.
    [[nodiscard]] bool closed() const;

    /// The budget, in MB. Immutable.
    [[nodiscard]] std::size_t limit_mb() const noexcept { return limit_mb_; }

    /// MB currently reserved by live guards.
    [[nodiscard]] std::size_t allocated_mb() const;

    /// MB currently reserved under `key`; 0 for unknown keys.
    [[nodiscard]] std::size_t allocated_mb(std::string_view key) const;

    /// `limit_mb() - allocated_mb()`. Queued requests may have a claim on it first.
    [[nodiscard]] std::size_t available_mb() const;

    /// The number of `async_allocate` requests queued for memory.
    [[nodiscard]] std::size_t waiting() const;

    /// A consistent snapshot of all the figures. Throws only std::bad_alloc.
    [[nodiscard]] MemoryStats stats() const;

private:
    friend class AllocationGuard;

    using handler_type = asio::any_completion_handler<allocate_signature>;

    // A queued async_allocate request. Only ever move-constructed: in Boost 1.81, move-assigning an
    // any_completion_handler recurses until the stack overflows. The waiters therefore live in a node-based
    // container, and nothing calls std::swap, erase-from-vector or optional assignment on them.
    struct Waiter {
        std::size_t mb;
        std::string key;
        asio::any_io_executor executor; // tracks outstanding work until the completion is posted
        handler_type handler;
    };

    // A completion that is ready to post once the lock is released.
    struct Completion {
        asio::any_io_executor executor;
        handler_type handler;
        result<AllocationGuard> outcome;
    };

    // Why `mb` cannot be reserved now; nullopt when it fits. `respect_queue`: refuse while requests are
    // queued.
    std::optional<PoolError> refusal_locked(std::size_t mb, std::string_view key, bool respect_queue) const;

    // Books `mb` MB under `key`; the caller checked that it fits. Strong guarantee: the map insertion, the
    // only step that can throw, happens before any counter changes.
    void commit_locked(std::string_view key, std::size_t mb);

    // Called exactly once per reservation, by AllocationGuard::release().
    void release_reservation(std::string_view key, std::size_t mb) noexcept;

    // Grants queued requests from the front while they fit; stops at the first that does not (FIFO: nobody
    // behind it may overtake it).
    void wake_locked(std::vector<Completion>& ready);

    void drain_waiters_locked(const PoolError& error, std::vector<Completion>& ready);

    void start_waiter(asio::any_io_executor executor, handler_type handler, std::size_t mb, std::string key);

    void cancel_waiter(std::uint64_t id);

    // Posts each completion to its executor, outside the lock. There, the cancellation slot is cleared (on
    // the executor, where Asio's rules serialise it with emit()). Then the handler is dispatched to its own
    // associated executor, which is normally that same executor, so it runs at once.
    static void complete_all(std::vector<Completion>& ready);

    const std::size_t limit_mb_;
    mutable std::mutex mutex_;
    std::size_t allocated_mb_ = 0; // invariant: <= limit_mb_
    std::size_t peak_mb_ = 0;
    std::size_t reservations_ = 0;
    std::map<std::string, std::size_t, std::less<>> per_key_mb_; // no entries at 0 MB
    std::map<std::uint64_t, Waiter> waiters_;                    // FIFO: ids increase with arrival
    std::uint64_t next_waiter_id_ = 0;
    std::optional<PoolError> closed_;
};

inline void AllocationGuard::release() noexcept {
    if (!governor_) {
        return;
    }
    // Local copy: the release may drop the last owner, and the governor must outlive its own call.
    std::shared_ptr<MemoryGovernor> governor = std::move(governor_);
    governor->release_reservation(key_, std::exchange(mb_, 0));
    key_.clear();
}

/// The machine's physical memory in MB: `sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGE_SIZE)` on POSIX systems.
/// Returns 0 when the figure is unavailable (non-POSIX, or sysconf fails).
/// @par Thread Safety
/// Safe from any thread.
inline std::size_t system_memory_mb() noexcept {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGE_SIZE)
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page_size <= 0) {
        return 0;
    }
    // pages * page_size / MiB without overflowing the product.
    constexpr std::uintmax_t mib = std::uintmax_t{1} << 20;
    const auto p = static_cast<std::uintmax_t>(pages);
    const auto s = static_cast<std::uintmax_t>(page_size);
    const std::uintmax_t whole = p / mib; // pages contributing s MB each
    const std::uintmax_t max = std::numeric_limits<std::size_t>::max();
    if (whole != 0 && s > max / whole) {
        return static_cast<std::size_t>(max);
    }
    return static_cast<std::size_t>(whole * s + (p % mib) * s / mib);
#else
    return 0;
#endif
}

/// The default budget: 80 % of `system_memory_mb()`, at least 1 MB (also when the RAM size is unknown).
/// The limit is a plain fraction of RAM, with no reserved offset to subtract, so small machines cannot
/// underflow it (the Rust pool's `limit - reserved` did).
inline std::size_t default_memory_limit_mb() noexcept {
    const std::size_t total = system_memory_mb();
    const std::size_t eighty_percent =
        total / 10 * 8 + total % 10 * 8 / 10; // total * 8 / 10 without overflow
    return std::max<std::size_t>(1, eighty_percent);
}

} // namespace modelpool

#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#include "modelpool/impl/memory_governor.ipp"
#endif
