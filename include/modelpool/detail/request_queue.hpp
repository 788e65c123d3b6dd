// modelpool/detail/request_queue.hpp
//
// One key's queue of waiting requests: a FIFO per priority level, served highest level first with ageing.
// Each request ranks by its arrival time moved earlier by `level x aging`, and the queue serves the smallest
// rank; since ranks only grow along one level's FIFO, only the heads of the levels are compared. So a request
// is never overtaken by a request of a higher level that arrived more than (levels apart) x `aging` after it:
// a low-priority request waits at most 2 x `aging` longer than it would in plain FIFO order.
//
// Not thread-safe: the key's router holds its lock around every call.
#pragma once

#include "modelpool/clock.hpp"
#include "modelpool/detail/job.hpp"
#include "modelpool/request_options.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <deque>
#include <memory>
#include <vector>

namespace modelpool::detail {

/// See the file comment.
class request_queue {
public:
    using job_ptr = std::shared_ptr<job_base>; ///< A queued request.

    /// A queue whose requests gain one level per `aging` waited.
    explicit request_queue(Clock::duration aging) : aging_(aging) {}

    /// Requests waiting (including ones that already ended and are not yet dropped).
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

    /// Adds `job` at the back of its level.
    void push(job_ptr job) {
        levels_[level_of(*job)].push_back(std::move(job));
        ++size_;
    }

    /// Removes and returns the request to serve next (see the file comment), or nullptr when empty.
    job_ptr pop() {
        return pop_where([](const job_base&) { return true; });
    }

    /// As `pop()`, among the requests for which `eligible(job)` is true (the others keep their places).
    template <class Eligible> job_ptr pop_where(Eligible eligible) {
        std::deque<job_ptr>* best_level = nullptr;
        typename std::deque<job_ptr>::iterator best;
        Clock::time_point best_rank{};
        for (std::size_t level = levels_.size(); level-- > 0;) { // highest first: it wins ties
            auto& fifo = levels_[level];
            const auto it =
                std::find_if(fifo.begin(), fifo.end(), [&](const job_ptr& job) { return eligible(*job); });
            if (it == fifo.end()) {
                continue;
            }
            const auto rank = rank_of(**it, level);
            if (best_level == nullptr || rank < best_rank) {
                best_level = &fifo;
                best = it;
                best_rank = rank;
            }
        }
        if (best_level == nullptr) {
            return nullptr;
        }
        job_ptr job = std::move(*best);
        best_level->erase(best);
        --size_;
        return job;
    }

    /// Removes `job` if it is queued; true if it was.
    bool remove(const job_base* job) {
        auto& fifo = levels_[level_of(*job)];
        for (auto it = fifo.begin(); it != fifo.end(); ++it) {
            if (it->get() == job) {
                fifo.erase(it);
                --size_;
                return true;
            }
        }
        return false;
    }

    /// Removes every request for which `take(job)` returns true (it may move the job out), in no particular
    /// order across levels.
    template <class Take> void remove_if(Take take) {
        for (auto& fifo : levels_) {
            for (auto it = fifo.begin(); it != fifo.end();) {
                if (take(*it)) {
                    it = fifo.erase(it);
                    --size_;
                } else {
                    ++it;
                }
            }
        }
    }

    /// Moves up to `count` live requests that can join `first`'s batch into `out`, highest level first, FIFO
    /// within a level; requests that ended meanwhile are dropped on the way.
    void take_compatible(const job_base& first, std::size_t count, std::vector<job_ptr>& out) {
        for (std::size_t level = levels_.size(); level-- > 0 && count > 0;) {
            auto& fifo = levels_[level];
            for (auto it = fifo.begin(); it != fifo.end() && count > 0;) {
                if ((*it)->claimed()) {
                    it = fifo.erase(it);
                    --size_;
                } else if (first.batches_with(**it)) {
                    out.push_back(std::move(*it));
                    it = fifo.erase(it);
                    --size_;
                    --count;
                } else {
                    ++it;
                }
            }
        }
    }

    /// Live requests that can join `first`'s batch (at most `limit` are counted).
    [[nodiscard]] std::size_t count_compatible(const job_base& first, std::size_t limit) const {
        std::size_t n = 0;
        for (const auto& fifo : levels_) {
            for (const auto& job : fifo) {
                if (n < limit && !job->claimed() && first.batches_with(*job)) {
                    ++n;
                }
            }
        }
        return n;
    }

    /// Moves every request into `out` and empties the queue.
    void take_all(std::vector<job_ptr>& out) {
        for (auto& fifo : levels_) {
            for (auto& job : fifo) {
                out.push_back(std::move(job));
            }
            fifo.clear();
        }
        size_ = 0;
    }

private:
    static std::size_t level_of(const job_base& job) noexcept {
        const auto level = static_cast<std::size_t>(job.priority);
        return level < priority_levels ? level : priority_levels - 1;
    }

    // Earlier by level x aging (aging is at most a day: no overflow).
    Clock::time_point rank_of(const job_base& job, std::size_t level) const noexcept {
        return job.enqueued_at - aging_ * static_cast<Clock::duration::rep>(level);
    }

    Clock::duration aging_;
    std::array<std::deque<job_ptr>, priority_levels> levels_{};
    std::size_t size_ = 0;
};

} // namespace modelpool::detail
