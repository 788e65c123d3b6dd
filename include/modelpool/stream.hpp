// modelpool/stream.hpp
//
// Bounded streams between a model that generates chunks and the caller that reads them (text_to_text, vision
// and text_to_image results). The model writes through a `ChunkSink`, the caller reads through a `Stream`; at
// most `capacity` chunks wait between them, so a slow reader slows the model down (backpressure), and a
// reader that stops reading (destroys or cancels the stream) makes the sink report "stop" so generation ends
// early and the worker is free again.
//
// Unlike the Rust pool, errors are typed: a stream ends either cleanly or with one `PoolError`, never with an
// error disguised as text.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/detail/completion.hpp"
#include "modelpool/error.hpp"

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

namespace modelpool {

namespace detail {

/// The state shared by one stream's producer (a worker) and consumer (the caller). Thread-safe.
template <class Chunk> class stream_state {
public:
    using next_signature = void(result<std::optional<Chunk>>);
    using next_handler = asio::any_completion_handler<next_signature>;
    using send_handler = asio::any_completion_handler<void(bool)>;

    stream_state(asio::any_io_executor executor, std::size_t capacity)
        : executor_(std::move(executor)), capacity_(capacity == 0 ? 1 : capacity) {}

    stream_state(std::shared_ptr<const fallback_executor> fallback, std::size_t capacity)
        : fallback_(std::move(fallback)), capacity_(capacity == 0 ? 1 : capacity) {}

    /// Makes the state record when chunks move (for the idle timeout), read from `clock`. Call before the
    /// state is shared.
    void track_progress(std::shared_ptr<Clock> clock) {
        clock_ = std::move(clock);
        touch();
    }

    /// When the model last delivered a chunk into the stream (or generation began). Reads are not stamped: a
    /// reader that keeps reading lets the model keep sending, and a reader that stops makes the model block,
    /// so the producer's side alone tells whether the stream moves (one clock read per chunk, not two).
    [[nodiscard]] Clock::time_point last_progress() const noexcept {
        return Clock::time_point{Clock::duration{last_progress_.load(std::memory_order_relaxed)}};
    }

    /// The executor used for completions whose handlers have none of their own.
    asio::any_io_executor executor() const { return fallback_ ? fallback_->get() : executor_; }

    // ---- producer side
    // -------------------------------------------------------------------------------------

    /// Outcome of a non-blocking send.
    enum class send_status { sent, full, closed };

    /// Hands `chunk` to a waiting reader or buffers it; `full` leaves `chunk` untouched.
    send_status try_send(Chunk& chunk) {
        std::unique_lock lock(mutex_);
        if (abandoned_ || finished_) {
            return send_status::closed;
        }
        if (reader_) {
            auto [handler, executor] = take_reader();
            lock.unlock();
            touch();
            post_completion(std::move(handler), executor, result<std::optional<Chunk>>(std::move(chunk)));
            return send_status::sent;
        }
        if (buffer_.size() >= capacity_ || writer_) {
            return send_status::full;
        }
        buffer_.push_back(std::move(chunk));
        lock.unlock();
        touch();
        return send_status::sent;
    }

    /// Sends `chunk`: completes `handler(true)` once it is delivered or buffered (waiting while the buffer is
    /// full), `handler(false)` if the reader has gone. `executor` is the handler's own (see
    /// `completion_executor`). One pending send at a time (a stream has one producer).
    void async_send(Chunk chunk, send_handler handler, const asio::any_io_executor& executor) {
        std::unique_lock lock(mutex_);
        if (abandoned_ || finished_) {
            lock.unlock();
            post_completion(std::move(handler), executor, false);
            return;
        }
        if (reader_) {
            auto [reader, reader_executor] = take_reader();
            lock.unlock();
            touch();
            post_completion(std::move(reader), reader_executor,
                            result<std::optional<Chunk>>(std::move(chunk)));
            post_completion(std::move(handler), executor, true);
            return;
        }
        if (buffer_.size() < capacity_) {
            buffer_.push_back(std::move(chunk));
            lock.unlock();
            touch();
            post_completion(std::move(handler), executor, true);
            return;
        }
        writer_.emplace(pending_send{std::move(chunk), std::move(handler), executor});
    }

    /// Blocks the calling (blocking-executor) thread until `chunk` is buffered or the reader has gone.
    /// Refuses (returns false at once) on a pool io thread, which must never block.
    bool send_blocking(Chunk chunk) {
        if (on_pool_io_thread()) {
            return false;
        }
        for (;;) {
            switch (try_send(chunk)) {
            case send_status::sent:
                return true;
            case send_status::closed:
                return false;
            case send_status::full:
                break;
            }
            std::unique_lock lock(mutex_);
            // allowed-blocking: blocking threads only (pool io threads were refused above)
            space_.wait(lock,
                        [&] { return abandoned_ || finished_ || buffer_.size() < capacity_ || reader_; });
        }
    }

    /// Ends the stream: with `outcome`'s error, or cleanly. Later sends report closed. Idempotent.
    void finish(result<void> outcome) {
        std::unique_lock lock(mutex_);
        if (finished_) {
            return;
        }
        finished_ = true;
        if (!outcome) {
            error_ = outcome.error();
        }
        std::optional<std::pair<next_handler, asio::any_io_executor>> reader;
        if (reader_) {
            reader = take_reader();
        }
        auto writer = std::exchange(writer_, std::nullopt);
        lock.unlock();
        space_.notify_all();
        if (reader) {
            post_completion(std::move(reader->first), reader->second, end_result());
        }
        if (writer) {
            post_completion(std::move(writer->handler), writer->executor, false);
        }
    }

    /// True once the reader has destroyed or abandoned the stream: the model should stop generating.
    bool abandoned() const {
        std::lock_guard lock(mutex_);
        return abandoned_;
    }

    // ---- consumer side
    // -------------------------------------------------------------------------------------

    /// Delivers the next chunk, the end (nullopt) or the stream's error to `handler`, on `fallback`: the
    /// handler's own executor (see `completion_executor`).
    void async_next(next_handler handler, const asio::any_io_executor& fallback) {
        std::unique_lock lock(mutex_);
        if (!buffer_.empty()) {
            Chunk chunk = std::move(buffer_.front());
            buffer_.pop_front();
            auto writer = std::exchange(writer_, std::nullopt);
            if (writer) {
                buffer_.push_back(std::move(writer->chunk));
            }
            lock.unlock();
            space_.notify_one();
            if (writer) {
                post_completion(std::move(writer->handler), writer->executor, true);
            }
            post_completion(std::move(handler), fallback, result<std::optional<Chunk>>(std::move(chunk)));
            return;
        }
        if (finished_ || abandoned_) {
            lock.unlock();
            post_completion(std::move(handler), fallback, end_result());
            return;
        }
        auto slot = asio::get_associated_cancellation_slot(handler);
        reader_.emplace(std::move(handler), fallback);
        if (slot.is_connected()) {
            // A cancelled read ends only that read; the stream stays usable (unlike Asio 1.81 channels).
            slot.assign([weak = std::weak_ptr<stream_state>(self_)](asio::cancellation_type) {
                if (auto self = weak.lock()) {
                    self->cancel_read();
                }
            });
        }
    }

    /// Makes the reader go away: buffered chunks are dropped and the producer is told to stop.
    void abandon() {
        std::unique_lock lock(mutex_);
        abandoned_ = true;
        buffer_.clear();
        auto writer = std::exchange(writer_, std::nullopt);
        lock.unlock();
        space_.notify_all();
        if (writer) {
            post_completion(std::move(writer->handler), writer->executor, false);
        }
    }

    /// Lets the state hand out weak references to itself for cancellation handlers.
    void set_self(const std::shared_ptr<stream_state>& self) { self_ = self; }

    /// Records progress now (a chunk moved, or generation started).
    void touch() noexcept {
        if (clock_) {
            last_progress_.store(clock_->now().time_since_epoch().count(), std::memory_order_relaxed);
        }
    }

private:
    std::pair<next_handler, asio::any_io_executor> take_reader() {
        auto reader = std::move(*reader_);
        reader_.reset();
        return reader;
    }

    void cancel_read() {
        std::unique_lock lock(mutex_);
        if (!reader_) {
            return;
        }
        auto [handler, executor] = take_reader();
        lock.unlock();
        post_completion(std::move(handler), executor,
                        result<std::optional<Chunk>>(fail(errc::cancelled, "stream read was cancelled")));
    }

    result<std::optional<Chunk>> end_result() const {
        if (error_) {
            return unexpected<PoolError>(*error_);
        }
        if (abandoned_ && !finished_) {
            return fail(errc::cancelled, "stream was abandoned by its reader");
        }
        return std::optional<Chunk>{};
    }

    asio::any_io_executor executor_;
    std::shared_ptr<const fallback_executor> fallback_;
    std::size_t capacity_;
    std::shared_ptr<Clock> clock_; // set before the stream is shared (track_progress)
    std::atomic<Clock::duration::rep> last_progress_{0};
    std::weak_ptr<stream_state> self_;
    mutable std::mutex mutex_;
    std::condition_variable space_;
    std::deque<Chunk> buffer_;
    std::optional<std::pair<next_handler, asio::any_io_executor>> reader_;
    struct pending_send {
        Chunk chunk;
        send_handler handler;
        asio::any_io_executor executor;
    };
    std::optional<pending_send> writer_; // a send waiting for buffer space
    std::optional<PoolError> error_;
    bool finished_ = false;
    bool abandoned_ = false;
};

/// Creates a stream state that can hand out weak references to itself.
template <class Chunk, class Executor>
std::shared_ptr<stream_state<Chunk>> make_stream_state(Executor executor, std::size_t capacity) {
    auto state = std::make_shared<stream_state<Chunk>>(std::move(executor), capacity);
    state->set_self(state);
    return state;
}

} // namespace detail

/// The reading end of a bounded stream of `Chunk`s produced by a model.
///
/// Move-only. Destroying it (or calling `close()`) tells the model to stop; chunks not yet read are dropped.
/// A stream ends exactly once: `next` yields chunks, then either an empty optional (clean end) or an error.
///
/// @par Thread Safety
/// Distinct objects: Safe. Shared objects: Unsafe (one reader at a time).
template <class Chunk> class Stream {
public:
    /// The completion signature of `async_next`: a chunk, `std::nullopt` at the end, or the stream's error.
    using next_signature = void(result<std::optional<Chunk>>);

    /// A stream over `state` (made by the pool).
    explicit Stream(std::shared_ptr<detail::stream_state<Chunk>> state) : state_(std::move(state)) {}

    Stream(Stream&&) noexcept = default;
    Stream& operator=(Stream&& other) noexcept {
        if (this != &other) {
            close();
            state_ = std::move(other.state_);
        }
        return *this;
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    ~Stream() { close(); }

    /// Reads the next chunk. Completes with a chunk, with `std::nullopt` once the model finished cleanly, or
    /// with the error that ended the stream (`model_error`, `timeout`, `shutting_down`, `spawn_failed`, ...).
    /// Cancelling a read (through the token's cancellation slot) completes it with `cancelled` and leaves the
    /// stream usable.
    template <class CompletionToken = asio::use_awaitable_t<>> auto async_next(CompletionToken&& token = {}) {
        return asio::async_initiate<CompletionToken, next_signature>(
            [](auto handler, std::shared_ptr<detail::stream_state<Chunk>> state) {
                if (!state) {
                    detail::post_completion(
                        std::move(handler), asio::system_executor(),
                        result<std::optional<Chunk>>(fail(errc::cancelled, "stream is closed")));
                    return;
                }
                auto executor = detail::completion_executor(handler, state->executor());
                state->async_next(typename detail::stream_state<Chunk>::next_handler(std::move(handler)),
                                  executor);
            },
            token, state_);
    }

    /// Stops reading: the model is told to stop and buffered chunks are dropped. Idempotent.
    void close() {
        if (state_) {
            state_->abandon();
            state_.reset();
        }
    }

    /// False once closed or moved from.
    [[nodiscard]] bool is_open() const noexcept { return static_cast<bool>(state_); }

private:
    std::shared_ptr<detail::stream_state<Chunk>> state_;
};

/// The writing end of a stream, handed to a model's streaming operation.
///
/// A coroutine model writes with `co_await sink.send(chunk)`; a blocking model (running on the pool's
/// blocking executor) with `sink.send_blocking(chunk)`. Both return false once the reader has gone: the model
/// should then stop generating and return. The worker ends the stream when the model's operation returns.
template <class Chunk> class ChunkSink {
public:
    /// A sink writing into `state` (made by the pool).
    explicit ChunkSink(std::shared_ptr<detail::stream_state<Chunk>> state) : state_(std::move(state)) {}

    /// Sends `chunk`, waiting (without blocking the thread) while the stream's buffer is full. Completes with
    /// `void(bool)`: false if the reader has gone away (stop generating), true once the chunk is buffered or
    /// delivered. With the default token: `if (!co_await sink.send(chunk)) co_return ...;`.
    /// One send at a time: await each before the next.
    ///
    /// Takes any value a `Chunk` can be built from (e.g. a `TextChunk` for a `CompletionChunk` stream).
    ///
    /// @note With g++ 12, build the value in a named variable first: `TextChunk c{text}; co_await
    /// sink.send(c);`. g++ 12 miscompiles a class temporary holding a std::string inside a `co_await` operand
    /// (`co_await sink.send(TextChunk{text})`): the string's short buffer ends up in the coroutine frame,
    /// which AddressSanitizer reports as a bad free. clang does not have this bug.
    template <class Value, asio::completion_token_for<void(bool)> CompletionToken = asio::use_awaitable_t<>>
        requires std::constructible_from<Chunk, Value&&>
    auto send(Value&& value, CompletionToken&& token = {}) {
        return asio::async_initiate<CompletionToken, void(bool)>(
            [](auto handler, std::shared_ptr<detail::stream_state<Chunk>> state, Chunk chunk) {
                auto executor = detail::completion_executor(handler, state->executor());
                state->async_send(std::move(chunk),
                                  typename detail::stream_state<Chunk>::send_handler(std::move(handler)),
                                  executor);
            },
            token, state_, Chunk(std::forward<Value>(value)));
    }

    /// Sends `chunk` from a blocking thread, blocking it while the buffer is full. Returns false if the
    /// reader has gone away, and at once, without sending, when called on a pool's io thread (use `send`
    /// there).
    bool send_blocking(Chunk chunk) { return state_->send_blocking(std::move(chunk)); }

    /// True once the reader has gone: stop generating.
    [[nodiscard]] bool stop_requested() const { return state_->abandoned(); }

private:
    std::shared_ptr<detail::stream_state<Chunk>> state_;
};

} // namespace modelpool
