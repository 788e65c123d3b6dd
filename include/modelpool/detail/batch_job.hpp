// modelpool/detail/batch_job.hpp
//
// A batch: several queued single-item requests (`unary_job<Cap, Op>`) served by one call of their
// capability's batch operation (`batch_traits<Op>::batch_op`, e.g. `embed` requests by one `batch_embed`).
// The router forms it when a worker takes a batchable request (see key_router.hpp) and the worker serves it
// like any job. Each request keeps its own outcome: its own item of the reply, its own deadline (a request
// that expires while the batch runs ends with `timeout` alone; the call goes on for the others), its own
// cancellation and its own latency figures. A failed batch call is retried one request at a time when the
// model's options say so, so one bad input fails only its own request; a reply with the wrong number of
// items is a `model_error` for each request.
#pragma once

#include "modelpool/capability.hpp"
#include "modelpool/detail/job.hpp"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

namespace modelpool::detail {

/// See the file comment.
template <class Cap, class Op> class batch_job final : public job<Cap> {
public:
    using item_type = unary_job<Cap, Op>; ///< One request of the batch.

    /// `items` are `item_type` requests that batch with the first; `retry_items`: see BatchingOptions.
    batch_job(std::vector<std::shared_ptr<job_base>> items, bool retry_items) : retry_items_(retry_items) {
        items_.reserve(items.size());
        for (auto& item : items) {
            items_.push_back(std::static_pointer_cast<item_type>(std::move(item)));
        }
        this->enqueued_at = items_.front()->enqueued_at;
        for (const auto& item : items_) {
            this->enqueued_at = std::min(this->enqueued_at, item->enqueued_at);
            this->deadline = std::min(this->deadline, item->deadline);
        }
    }

    /// The requests of the batch.
    [[nodiscard]] std::size_t requests() const noexcept override { return items_.size(); }

    asio::awaitable<void> serve(const invoker<Cap>& model) override {
        std::vector<std::shared_ptr<item_type>> live;
        for (const auto& item : items_) {
            if (!item->done()) {
                live.push_back(item);
            }
        }
        if (live.size() <= 1) {
            if (!live.empty()) {
                co_await live.front()->serve(model);
            }
            co_return;
        }
        std::vector<const Op*> ops;
        ops.reserve(live.size());
        for (const auto& item : live) {
            item->mark_started();
            ops.push_back(&item->op());
        }
        auto batch = batch_traits<Op>::merge(ops);
        auto outcome = co_await model.call(batch);
        if (outcome && outcome->size() == live.size()) {
            for (std::size_t i = 0; i < live.size(); ++i) {
                live[i]->deliver(std::move((*outcome)[i]));
            }
            co_return;
        }
        if (outcome) {
            // A model that miscounts cannot be trusted with any item: a clear error for each request.
            const PoolError wrong(errc::model_error,
                                  fmt::format("{} returned {} items for a batch of {} requests",
                                              batch_traits<Op>::batch_op::name, outcome->size(),
                                              live.size()));
            for (const auto& item : live) {
                item->deliver(unexpected<PoolError>(wrong));
            }
            co_return;
        }
        if (retry_items_) {
            // One by one, so that one bad input fails only its own request.
            for (const auto& item : live) {
                co_await item->serve(model); // skips a request that ended meanwhile
            }
            co_return;
        }
        for (const auto& item : live) {
            item->deliver(unexpected<PoolError>(outcome.error()));
        }
    }

    void fail(const PoolError& error) override {
        for (const auto& item : items_) {
            item->fail(error);
        }
    }

    /// Done when every request has ended: nobody waits for the call any more.
    [[nodiscard]] bool done() const noexcept override {
        return std::all_of(items_.begin(), items_.end(), [](const auto& item) { return item->done(); });
    }

    /// The earliest deadline among the requests still waiting.
    [[nodiscard]] Clock::time_point running_deadline() const noexcept override {
        auto earliest = Clock::time_point::max();
        for (const auto& item : items_) {
            if (!item->done()) {
                earliest = std::min(earliest, item->deadline);
            }
        }
        return earliest;
    }

    [[nodiscard]] bool expires_whole(Clock::time_point now) const noexcept override {
        return std::all_of(items_.begin(), items_.end(),
                           [now](const auto& item) { return item->done() || item->deadline <= now; });
    }

    /// Ends the requests whose deadline has passed; the call goes on for the others.
    void expire(Clock::time_point now, const PoolError& error) override {
        for (const auto& item : items_) {
            if (item->deadline <= now) {
                item->fail(error);
            }
        }
    }

private:
    std::vector<std::shared_ptr<item_type>> items_;
    bool retry_items_;
};

} // namespace modelpool::detail
