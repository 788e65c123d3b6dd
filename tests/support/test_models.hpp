// Test helpers for the pool tests: synchronisation primitives that never sleep (Gate, Tally), a log capture,
// and small fake models for the five capabilities, in coroutine and blocking styles.
//
// g++ 12: inside coroutines, values holding std::strings are always built in named variables before they are
// passed to a co_await expression (see the note on ChunkSink::send).
#pragma once

#include <modelpool/pool.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/ringbuffer_sink.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace modelpool::testing {

using namespace std::chrono_literals;

// ---- synchronisation --------------------------------------------------------------------------------------

/// A one-shot asynchronous event: coroutines (and any other Asio completion) wait until the test opens it.
/// Thread-safe. Waiters are completed through their own executor, never inline in `open()`.
///
/// Every gate a worker may wait on must be opened before its pool is destroyed (see `OpenOnExit`), otherwise
/// the pool's `stop()` waits for the blocked worker until `shutdown_timeout`.
class Gate {
public:
    /// Completes `token` (signature `void()`) once the gate is open (at once, posted, if it already is).
    template <class CompletionToken> auto async_wait(CompletionToken&& token) {
        return asio::async_initiate<CompletionToken, void()>(
            [this](auto handler) {
                asio::any_io_executor executor =
                    asio::get_associated_executor(handler, asio::system_executor());
                std::unique_lock lock(mutex_);
                if (open_) {
                    lock.unlock();
                    asio::post(executor, [h = std::move(handler)]() mutable { std::move(h)(); });
                    return;
                }
                waiters_.push_back(
                    waiter{asio::any_completion_handler<void()>(std::move(handler)), executor});
            },
            token);
    }

    /// Opens the gate: every current and later waiter proceeds. Idempotent.
    void open() {
        std::vector<waiter> waiters;
        {
            std::lock_guard lock(mutex_);
            open_ = true;
            waiters.swap(waiters_);
        }
        for (auto& w : waiters) {
            asio::post(w.executor, [h = std::move(w.handler)]() mutable { std::move(h)(); });
        }
    }

    /// Waiters not yet released.
    [[nodiscard]] std::size_t waiting() const {
        std::lock_guard lock(mutex_);
        return waiters_.size();
    }

private:
    struct waiter {
        asio::any_completion_handler<void()> handler;
        asio::any_io_executor executor;
    };
    mutable std::mutex mutex_;
    bool open_ = false;
    std::vector<waiter> waiters_;
};

/// Opens gates when a test scope ends (also when an assertion fails), before the pool declared earlier is
/// destroyed: declare it after the pool.
class OpenOnExit {
public:
    OpenOnExit(std::initializer_list<std::shared_ptr<Gate>> gates) : gates_(gates) {}
    OpenOnExit(const OpenOnExit&) = delete;
    OpenOnExit& operator=(const OpenOnExit&) = delete;
    ~OpenOnExit() {
        for (auto& gate : gates_) {
            gate->open();
        }
    }

private:
    std::vector<std::shared_ptr<Gate>> gates_;
};

/// Counts arrivals (with a tag each) and lets the test thread wait for a number of them, with a timeout so
/// that a bug fails the test instead of hanging it. Thread-safe; `arrive` never blocks.
class Tally {
public:
    void arrive(std::int64_t tag = 0) {
        {
            std::lock_guard lock(mutex_);
            tags_.push_back(tag);
        }
        changed_.notify_all();
    }

    /// Waits until at least `target` arrivals happened; false on timeout.
    [[nodiscard]] bool wait_for(std::size_t target, std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [&] { return tags_.size() >= target; });
    }

    [[nodiscard]] std::size_t count() const {
        std::lock_guard lock(mutex_);
        return tags_.size();
    }

    [[nodiscard]] std::vector<std::int64_t> tags() const {
        std::lock_guard lock(mutex_);
        return tags_;
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<std::int64_t> tags_;
};

// ---- logging ----------------------------------------------------------------------------------------------

/// A logger whose lines ("level|message") the test can read back.
class LogCapture {
public:
    LogCapture()
        : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512)),
          logger_(std::make_shared<spdlog::logger>("modelpool", sink_)) {
        sink_->set_pattern("%l|%v");
        logger_->set_level(spdlog::level::debug);
    }

    [[nodiscard]] std::shared_ptr<spdlog::logger> logger() const { return logger_; }

    [[nodiscard]] std::vector<std::string> lines() const { return sink_->last_formatted(); }

    /// Lines at `level` ("error", "warning", ...) that contain every one of `needles`.
    [[nodiscard]] std::size_t count(std::string_view level,
                                    std::initializer_list<std::string_view> needles) const {
        std::size_t n = 0;
        for (const auto& line : lines()) {
            if (line.rfind(std::string(level) + "|", 0) != 0) {
                continue;
            }
            if (std::all_of(needles.begin(), needles.end(), [&](std::string_view needle) {
                    return line.find(needle) != std::string::npos;
                })) {
                ++n;
            }
        }
        return n;
    }

    /// Every captured line, for failure messages.
    [[nodiscard]] std::string dump() const {
        std::string all;
        for (const auto& line : lines()) {
            all += line;
        }
        return all;
    }

private:
    std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
    std::shared_ptr<spdlog::logger> logger_;
};

// ---- what models record -----------------------------------------------------------------------------------

/// Shared by a test and its models: where operations ran and what they saw.
struct Probe {
    Tally calls;                          ///< One arrival per model operation, tagged with the instance.
    std::atomic<int> on_io_thread{0};     ///< Operations that ran on the pool's io thread.
    std::atomic<int> off_io_thread{0};    ///< Operations that ran elsewhere (the blocking executor).
    std::thread::id io_thread;            ///< Set by the test before requests are sent.
    std::atomic<std::size_t> produced{0}; ///< Stream chunks a model sent successfully.
    Tally stopped;                        ///< A streaming model saw `send` return false and returned.

    void record_thread() {
        if (std::this_thread::get_id() == io_thread) {
            ++on_io_thread;
        } else {
            ++off_io_thread;
        }
    }
};

// ---- text_embedding ---------------------------------------------------------------------------------------

/// The embedding every fake embedder returns: {instance, kind, input length, task length or -1}.
inline Embedding fake_embedding(int instance, int kind, std::size_t length,
                                const std::optional<std::string>& task) {
    return {static_cast<float>(instance), static_cast<float>(kind), static_cast<float>(length),
            task ? static_cast<float>(task->size()) : -1.0F};
}

/// A text_embedding model whose operations are coroutines (they run on the worker's io thread). When `gate`
/// is set, every call first reports to `probe->calls` and then waits for the gate.
struct CoroEmbedder {
    int instance = 0;
    std::shared_ptr<Probe> probe;
    std::shared_ptr<Gate> gate;

    asio::awaitable<result<Embedding>> embed(const std::string& text,
                                             const std::optional<std::string>& task) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive(instance);
        }
        if (gate) {
            co_await gate->async_wait(asio::use_awaitable);
        }
        if (text == "fail") {
            co_return fail(errc::model_error, "embedder {} cannot embed 'fail'", instance);
        }
        co_return fake_embedding(instance, 1, text.size(), task);
    }

    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>& task) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive(instance);
        }
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.push_back(fake_embedding(instance, 2, text.size(), task));
        }
        co_return out;
    }
};

/// A text_embedding model whose operations are plain blocking functions (they run on the blocking executor);
/// each call sleeps `delay` — allowed there, and how a CPU-bound model behaves.
struct BlockingEmbedder {
    int instance = 0;
    std::shared_ptr<Probe> probe;
    std::chrono::milliseconds delay{0};

    result<Embedding> embed(const std::string& text, const std::optional<std::string>& task) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive(instance);
        }
        if (delay.count() > 0) {
            std::this_thread::sleep_for(delay);
        }
        if (text == "throw") {
            throw std::runtime_error("tensor shape mismatch");
        }
        return fake_embedding(instance, 3, text.size(), task);
    }

    result<std::vector<Embedding>> batch_embed(const std::vector<std::string>& texts,
                                               const std::optional<std::string>& task) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive(instance);
        }
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.push_back(fake_embedding(instance, 4, text.size(), task));
        }
        return out;
    }
};

// ---- image_embedding (coroutine) --------------------------------------------------------------------------

struct CoroImageEmbedder {
    int instance = 0;

    asio::awaitable<result<Embedding>> embed_image(const std::string& path) {
        co_return fake_embedding(instance, 10, path.size(), std::nullopt);
    }
    asio::awaitable<result<Embedding>> embed_image_url(const std::string& url) {
        co_return fake_embedding(instance, 11, url.size(), std::nullopt);
    }
    asio::awaitable<result<Embedding>> embed_image_base64(const std::string& data) {
        co_return fake_embedding(instance, 12, data.size(), std::nullopt);
    }
    asio::awaitable<result<std::vector<Embedding>>>
    batch_embed_images(const std::vector<std::string>& paths) {
        std::vector<Embedding> out;
        for (const auto& path : paths) {
            out.push_back(fake_embedding(instance, 13, path.size(), std::nullopt));
        }
        co_return out;
    }
};

// ---- text_to_text (coroutine) -----------------------------------------------------------------------------

/// Sends `params.max_tokens` text chunks "<prompt>#<i>" then final stats; the prompt "call a tool" yields the
/// three tool-call chunks instead of text. Stops (and reports to `probe->stopped`) when a send returns false.
struct CoroChat {
    std::shared_ptr<Probe> probe;

    asio::awaitable<result<void>> prompt(const std::string& prompt, const GenerationParams& params,
                                         ChunkSink<CompletionChunk>& sink) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive();
        }
        if (prompt == "call a tool") {
            CompletionChunk start = ToolCallStart{"c1", "search"};
            CompletionChunk delta = ToolCallDelta{"c1", "search", "{\"q\":"};
            CompletionChunk done = ToolCallComplete{"c1", "search", "{\"q\":1}"};
            co_await sink.send(start);
            co_await sink.send(delta);
            co_await sink.send(done);
        } else {
            for (std::size_t i = 0; i < params.max_tokens; ++i) {
                CompletionChunk chunk = TextChunk{prompt + "#" + std::to_string(i)};
                const bool sent = co_await sink.send(chunk);
                if (!sent) {
                    if (probe) {
                        probe->stopped.arrive(static_cast<std::int64_t>(i));
                    }
                    co_return result<void>{};
                }
                if (probe) {
                    ++probe->produced;
                }
            }
        }
        CompletionChunk stats = CompletionStats{"stop", params.max_tokens, 0.5, 2.0};
        co_await sink.send(stats);
        co_return result<void>{};
    }
};

// ---- vision (blocking) ------------------------------------------------------------------------------------

/// Writes "<query>@<source>" word by word with `send_blocking` from the blocking executor. The path "endless"
/// generates (nearly) forever, until the reader goes away.
struct BlockingVision {
    std::shared_ptr<Probe> probe;

    result<void> describe_image(const std::string& path, const std::string& query,
                                ChunkSink<TextChunk>& sink) {
        return describe("file:" + path, query, path == "endless" ? 1'000'000 : 2, sink);
    }
    result<void> describe_url(const std::string& url, const std::string& query, ChunkSink<TextChunk>& sink) {
        return describe("url:" + url, query, 2, sink);
    }

private:
    result<void> describe(const std::string& source, const std::string& query, std::size_t words,
                          ChunkSink<TextChunk>& sink) {
        if (probe) {
            probe->record_thread();
            probe->calls.arrive();
        }
        for (std::size_t i = 0; i < words; ++i) {
            if (!sink.send_blocking(TextChunk{query + "@" + source + "/" + std::to_string(i)})) {
                if (probe) {
                    probe->stopped.arrive(static_cast<std::int64_t>(i));
                }
                return {};
            }
            if (probe) {
                ++probe->produced;
            }
        }
        return {};
    }
};

// ---- text_to_image (coroutine) ----------------------------------------------------------------------------

/// Sends `config.steps` progress chunks, then a `width` x `height` RGB image filled with `prompt.size()`.
struct CoroPainter {
    asio::awaitable<result<void>> generate_image(const std::string& prompt, const ImageConfig& config,
                                                 ChunkSink<ImageChunk>& sink) {
        for (std::uint32_t step = 1; step <= config.steps; ++step) {
            ImageChunk progress = ImageProgress{step, config.steps};
            if (!co_await sink.send(progress)) {
                co_return result<void>{};
            }
        }
        Image image{config.width, config.height, 3,
                    std::vector<std::uint8_t>(std::size_t{config.width} * config.height * 3,
                                              static_cast<std::uint8_t>(prompt.size()))};
        ImageChunk last = std::move(image);
        co_await sink.send(last);
        co_return result<void>{};
    }
};

// ---- loaders ----------------------------------------------------------------------------------------------

/// A loader that yields a copy of `model` at once.
template <class M> auto ready_loader(M model) {
    return [model]() -> asio::awaitable<result<M>> { co_return model; };
}

/// A loader that reports to `calls`, waits for `gate`, then yields a copy of `model`.
template <class M>
auto gated_loader(std::shared_ptr<Gate> gate, M model, std::shared_ptr<Tally> calls = nullptr) {
    return [gate, model, calls]() -> asio::awaitable<result<M>> {
        if (calls) {
            calls->arrive();
        }
        co_await gate->async_wait(asio::use_awaitable);
        co_return model;
    };
}

} // namespace modelpool::testing
