// modelpool/detail/job.hpp
//
// A request waiting in, or taken from, its key's queue. The router sees only `job_base` (queue bookkeeping,
// failing, cancelling); the worker runs `job<Cap>` against its invoker. Every job ends exactly once:
// `claim()` is the single gate through which a result, an error, a cancellation or a shutdown completes it.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/detail/invoker.hpp"
#include "modelpool/detail/key_stats.hpp"
#include "modelpool/error.hpp"
#include "modelpool/request_options.hpp"
#include "modelpool/stream.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace modelpool::detail {

/// The capability-independent part of a request.
class job_base {
public:
    virtual ~job_base() = default;

    /// Completes the request with `error` unless it already ended.
    virtual void fail(const PoolError& error) = 0;

    /// True once the request has ended (answered, failed or cancelled), or nobody waits for it any more (an
    /// abandoned stream): its model call need not run.
    [[nodiscard]] virtual bool done() const noexcept { return done_.load(std::memory_order_acquire); }

    /// True once the request's outcome has been delivered and counted: it can be forgotten.
    [[nodiscard]] bool claimed() const noexcept { return done_.load(std::memory_order_acquire); }

    /// When the request entered the queue (the pool's clock; for queue-wait figures).
    std::chrono::steady_clock::time_point enqueued_at{};

    /// When the request times out (the pool's clock); `time_point::max()` for never.
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();

    /// When the request times out if it is still queued (its queue timeout; never later than `deadline`).
    std::chrono::steady_clock::time_point queue_deadline = std::chrono::steady_clock::time_point::max();

    /// Its level in the key's queue.
    Priority priority = Priority::normal;

    // ---- dynamic batching (see batch_job.hpp); requests that cannot be batched keep these defaults

    /// True when `other` may share one batch call with this request (same operation, same options).
    [[nodiscard]] virtual bool batches_with(const job_base& /*other*/) const noexcept { return false; }

    /// The requests this job serves: 1, or a batch's size.
    [[nodiscard]] virtual std::size_t requests() const noexcept { return 1; }

    /// True when this request could be batched at all.
    [[nodiscard]] virtual bool batchable() const noexcept { return false; }

    /// The job that serves `items` (this request first, then others it `batches_with`) with one batch call;
    /// `retry_items`: a failed batch call is retried one request at a time.
    [[nodiscard]] virtual std::shared_ptr<job_base>
    make_batch(std::vector<std::shared_ptr<job_base>> /*items*/, bool /*retry_items*/) {
        return nullptr;
    }

    /// For a job serving several requests: true when every one still waiting for it expires at `now` (the
    /// call can be abandoned); one request: its running deadline has passed.
    [[nodiscard]] virtual bool expires_whole(Clock::time_point now) const noexcept {
        return running_deadline() <= now;
    }

    /// Ends with `error` what expired at `now`: the whole request, or, for a batch, its expired items.
    virtual void expire(Clock::time_point /*now*/, const PoolError& error) { fail(error); }

    /// Notes that a worker starts serving the request now (for the service-time histogram).
    void mark_started() noexcept {
        if (stats) {
            started_ticks_.store(stats->clock->now().time_since_epoch().count(), std::memory_order_relaxed);
        }
    }

    /// True when the deadline also covers serving (unary requests); false when it covers only the wait in the
    /// queue (streams: `running_deadline` covers their generation). A worker still serving a request past a
    /// deadline that covers service is stuck.
    [[nodiscard]] virtual bool deadline_covers_service() const noexcept { return true; }

    /// When the request times out while a worker serves it: `deadline` for unary requests; for streams the
    /// whole-stream deadline or the idle deadline (last progress plus the idle timeout), whichever is first.
    [[nodiscard]] virtual Clock::time_point running_deadline() const noexcept { return deadline; }

    /// Where the outcome is counted: pool counters, the key's breaker and histograms (set before submitting).
    std::shared_ptr<key_stats> stats;

    /// The worker serving the request (0 until one takes it); written and read under the router's lock.
    std::uint64_t worker = 0;

    /// What the key's circuit breaker admitted the request as.
    CircuitBreaker::Permit permit{CircuitBreaker::Permit::kind_t::allowed, 0};

protected:
    /// Counts the outcome of a request that this caller just claimed.
    void count(bool ok, errc code) const noexcept {
        if (stats) {
            const Clock::time_point started{Clock::duration{started_ticks_.load(std::memory_order_relaxed)}};
            stats->record(enqueued_at, started, permit, ok, code);
        }
    }

    /// Takes the right to complete the request; true for exactly one caller.
    bool claim() noexcept { return !done_.exchange(true, std::memory_order_acq_rel); }

private:
    std::atomic<bool> done_{false};
    std::atomic<Clock::duration::rep> started_ticks_{0}; // when a worker started it; 0 until then
};

template <class Cap, class Op> class batch_job;

/// A request of capability `Cap`, runnable by a worker of that capability.
template <class Cap> class job : public job_base {
public:
    /// Serves the request with the worker's model and completes it.
    virtual asio::awaitable<void> serve(const invoker<Cap>& model) = 0;
};

/// A request with one reply, completing the caller's handler.
template <class Cap, class Op> class unary_job final : public job<Cap> {
public:
    /// The caller's completion handler, type-erased.
    using handler_type = asio::any_completion_handler<void(result<typename Op::reply>)>;

    /// `executor` is the handler's own (see `completion_executor`), computed before erasure.
    unary_job(Op op, handler_type handler, asio::any_io_executor executor)
        : op_(std::move(op)), handler_(std::move(handler)), fallback_(std::move(executor)) {}

    asio::awaitable<void> serve(const invoker<Cap>& model) override {
        if (this->done()) {
            co_return; // cancelled or timed out on its way to the worker: do not run the model for nobody
        }
        this->mark_started();
        auto outcome = co_await model.call(op_);
        complete(std::move(outcome));
    }

    void fail(const PoolError& error) override { complete(unexpected<PoolError>(error)); }

    /// The request's operation (its inputs).
    [[nodiscard]] const Op& op() const noexcept { return op_; }

    /// Completes the request with `outcome` (a batch's item); false if it had already ended.
    bool deliver(result<typename Op::reply> outcome) { return complete(std::move(outcome)); }

    [[nodiscard]] bool batchable() const noexcept override { return batchable_operation<Op>; }

    [[nodiscard]] bool batches_with(const job_base& other) const noexcept override {
        if constexpr (batchable_operation<Op>) {
            const auto* peer = dynamic_cast<const unary_job*>(&other);
            return peer != nullptr && batch_traits<Op>::compatible(op_, peer->op_);
        } else {
            return false;
        }
    }

    [[nodiscard]] std::shared_ptr<job_base> make_batch(std::vector<std::shared_ptr<job_base>> items,
                                                       bool retry_items) override {
        if constexpr (batchable_operation<Op>) {
            return std::make_shared<batch_job<Cap, Op>>(std::move(items), retry_items);
        } else {
            return nullptr;
        }
    }

    /// The slot through which the caller may cancel. Taken from the type-erased handler: erasing a handler
    /// installs a forwarding object in the caller's slot, so assigning to the caller's slot directly would
    /// destroy that object behind the erased handler's back.
    [[nodiscard]] asio::cancellation_slot cancellation_slot() const {
        return asio::get_associated_cancellation_slot(handler_);
    }

    /// Completes with `cancelled`; false if the request had already ended.
    bool cancel() {
        return complete(
            fail_value(errc::cancelled, fmt::format("{} request was cancelled by its caller", Op::name)));
    }

private:
    static result<typename Op::reply> fail_value(errc code, std::string message) {
        return modelpool::fail(code, std::move(message));
    }

    bool complete(result<typename Op::reply> outcome) {
        if (!this->claim()) {
            return false;
        }
        this->count(outcome.has_value(), outcome ? errc::ok : outcome.error().code());
        post_completion(std::move(handler_), fallback_, std::move(outcome));
        return true;
    }

    Op op_;
    handler_type handler_;
    asio::any_io_executor fallback_;
};

/// A streaming request: the caller already holds the reading end; the model writes into `op.sink`.
template <class Cap, class Op> class stream_job final : public job<Cap> {
public:
    using state_type = stream_state<typename Op::chunk>; ///< The shared stream state.

    /// `stream_deadline` ends the whole stream; `idle_timeout` bounds the time without progress once it runs.
    stream_job(Op op, std::shared_ptr<state_type> state, Clock::time_point stream_deadline,
               Clock::duration idle_timeout)
        : op_(std::move(op)), state_(std::move(state)), stream_deadline_(stream_deadline),
          idle_timeout_(idle_timeout) {}

    [[nodiscard]] Clock::time_point running_deadline() const noexcept override {
        return std::min(stream_deadline_, Clock::saturating_add(state_->last_progress(), idle_timeout_));
    }

    asio::awaitable<void> serve(const invoker<Cap>& model) override {
        if (state_->abandoned()) {
            // The reader left while the request waited: do not start generating.
            finish(modelpool::fail(errc::cancelled, "{} stream was abandoned before it started", Op::name));
            co_return;
        }
        this->mark_started();
        state_->touch(); // the idle timeout counts from the start of generation, not from the call
        auto outcome = co_await model.call(op_);
        finish(std::move(outcome));
    }

    void fail(const PoolError& error) override { finish(unexpected<PoolError>(error)); }

    /// A stream's `deadline` covers its wait in the queue; once generation starts, `running_deadline`
    /// applies.
    [[nodiscard]] bool deadline_covers_service() const noexcept override { return false; }

    /// A request whose reader has gone counts as done: a worker skips it.
    [[nodiscard]] bool done() const noexcept override { return job_base::done() || state_->abandoned(); }

private:
    void finish(result<void> outcome) {
        if (this->claim()) {
            this->count(outcome.has_value(), outcome ? errc::ok : outcome.error().code());
            state_->finish(std::move(outcome));
        }
    }

    Op op_;
    std::shared_ptr<state_type> state_;
    Clock::time_point stream_deadline_;
    Clock::duration idle_timeout_;
};

} // namespace modelpool::detail

#include "modelpool/detail/batch_job.hpp" // defines batch_job, which unary_job::make_batch builds
