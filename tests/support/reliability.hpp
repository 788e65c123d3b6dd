// Helpers of the reliability suite (tests/reliability_tests.cpp): a fault-injecting model for all five
// capabilities and its loader, a ledger that checks that every request ends exactly once, a recorder of
// worker lifecycle events that checks their order, a pool rig with the invariant checks every scenario
// runs, and the interpreter of randomized operation sequences (`run_sequence`), whose choices come from a
// pluggable step source: a seeded RNG in the reliability test, the input bytes in tests/fuzz/pool_fuzzer.cpp.
//
// The checks are Catch2's CHECK/REQUIRE/INFO/FAIL; with MODELPOOL_RELIABILITY_ABORT_CHECKS defined (the
// fuzzer) they come from tests/fuzz/abort_checks.hpp instead, which prints the failure and aborts.
//
// Nothing here sleeps: waits are on condition variables, futures and the pool's own executor, each bounded so
// that a bug fails a test instead of hanging it.
//
// g++ 12: inside coroutines, values holding std::strings are built in named variables before they are passed
// to a co_await expression.
#pragma once

#if defined(MODELPOOL_RELIABILITY_ABORT_CHECKS)
#include "fuzz/abort_checks.hpp"
#else
#include "support/catch.hpp"
#endif
#include "support/test_models.hpp"

#include <modelpool/pool.hpp>

#include <fmt/format.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace modelpool::reliability {

using namespace std::chrono_literals;
using testing::Gate;
using testing::LogCapture;

// ---- fault injection --------------------------------------------------------------------------------------

/// What the test and its models and loaders share: the faults to inject next, and what happened.
struct Faults {
    std::shared_ptr<Clock> clock;           ///< Hangs wait an hour on it (until cancelled).
    std::atomic<int> fail_loads{0};         ///< The next N loads fail.
    std::atomic<int> throw_loads{0};        ///< The next N loads throw.
    std::atomic<bool> hang_loads{false};    ///< Loads wait on `clock` for an hour (cancellable).
    std::atomic<bool> empty_message{false}; ///< Failing loads give an empty message.
    std::shared_ptr<Gate> stall = std::make_shared<Gate>(); ///< "stall" calls wait for it (not cancellable).
    std::shared_ptr<Gate> load_gate; ///< When set, loads wait for it first (not cancellable).

    std::atomic<long> loader_calls{0};      ///< Loader invocations.
    std::atomic<long> loads_ok{0};          ///< Loads that produced a model.
    std::atomic<long> loads_aborted{0};     ///< Hanging loads whose wait was cancelled.
    std::atomic<long> models_alive{0};      ///< Model instances not yet destroyed.
    std::atomic<long> model_calls{0};       ///< Model operations started.
    std::atomic<long> hangs_interrupted{0}; ///< Hanging model calls whose wait was cancelled.
    std::atomic<long> sends_refused{0};     ///< Stream sends refused (reader gone, stream ended).
    std::atomic<long> injected{0};          ///< Faults the models and loaders injected.
    testing::Tally loads;                   ///< One arrival per loader call.
    testing::Tally hangs;                   ///< One arrival per hanging model call (or load) that started.

    /// Takes one from `counter` if it is positive.
    static bool take(std::atomic<int>& counter) {
        int n = counter.load();
        while (n > 0) {
            if (counter.compare_exchange_weak(n, n - 1)) {
                return true;
            }
        }
        return false;
    }
};

/// Counts model instances: one per loaded model, shared by its copies.
struct Alive {
    std::shared_ptr<Faults> faults;
    explicit Alive(std::shared_ptr<Faults> f) : faults(std::move(f)) { ++faults->models_alive; }
    Alive(const Alive&) = delete;
    Alive& operator=(const Alive&) = delete;
    ~Alive() { --faults->models_alive; }
};

/// A request's input, "<verb>:<id>"; the verb chooses the behaviour, the id comes back in the reply.
struct Command {
    std::string verb;
    std::uint64_t id = 0;
};

inline Command parse(const std::string& text) {
    const auto colon = text.find(':');
    if (colon == std::string::npos) {
        return {text, 0};
    }
    return {text.substr(0, colon), std::stoull(text.substr(colon + 1))};
}

inline std::string command(std::string_view verb, std::uint64_t id) {
    return std::string(verb) + ":" + std::to_string(id);
}

/// The chunk a streaming model sends as chunk `i` of request `id`, per chunk type.
inline void make_chunk(CompletionChunk& out, std::uint64_t id, std::size_t i) {
    out = TextChunk{std::to_string(id) + "#" + std::to_string(i)};
}
inline void make_chunk(TextChunk& out, std::uint64_t id, std::size_t i) {
    out = TextChunk{std::to_string(id) + "#" + std::to_string(i)};
}
inline void make_chunk(ImageChunk& out, std::uint64_t id, std::size_t i) {
    out = ImageProgress{static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(id)};
}

/// True when `chunk` is one that request `id` may receive.
inline bool chunk_belongs(const CompletionChunk& chunk, std::uint64_t id) {
    const auto* text = std::get_if<TextChunk>(&chunk);
    return text != nullptr && text->text.rfind(std::to_string(id) + "#", 0) == 0;
}
inline bool chunk_belongs(const TextChunk& chunk, std::uint64_t id) {
    return chunk.text.rfind(std::to_string(id) + "#", 0) == 0;
}
inline bool chunk_belongs(const ImageChunk& chunk, std::uint64_t id) {
    const auto* progress = std::get_if<ImageProgress>(&chunk);
    return progress != nullptr && progress->total == static_cast<std::uint32_t>(id);
}

/// Chunks an "ok" stream sends.
constexpr std::size_t stream_length = 3;

/// One model type serving all five capabilities (coroutine members), driven by the request's verb:
/// - "ok": unary: the embedding {id, 1}; streams: `stream_length` chunks tagged with the id;
/// - "fail": `model_error`; "throw": throws (streams: after one chunk);
/// - "hang": waits an hour on the pool's clock, until its deadline or a cancellation interrupts it (streams:
///   after one chunk);
/// - "stall": waits for `Faults::stall`, ignoring cancellation;
/// - "half" (streams): half the chunks, then `model_error`;
/// - "long" (streams): up to 2,000 chunks, until the reader goes away.
struct ChaosModel {
    std::shared_ptr<Alive> alive;
    std::shared_ptr<Faults> faults;

    // ---- text_embedding
    asio::awaitable<result<Embedding>> embed(const std::string& text, const std::optional<std::string>&) {
        return unary(text);
    }
    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>&) {
        return batch(texts);
    }
    // ---- image_embedding
    asio::awaitable<result<Embedding>> embed_image(const std::string& path) { return unary(path); }
    asio::awaitable<result<Embedding>> embed_image_url(const std::string& url) { return unary(url); }
    asio::awaitable<result<Embedding>> embed_image_base64(const std::string& data) { return unary(data); }
    asio::awaitable<result<std::vector<Embedding>>>
    batch_embed_images(const std::vector<std::string>& paths) {
        return batch(paths);
    }
    // ---- streams
    asio::awaitable<result<void>> prompt(const std::string& prompt, const GenerationParams&,
                                         ChunkSink<CompletionChunk>& sink) {
        return stream(prompt, sink);
    }
    asio::awaitable<result<void>> describe_image(const std::string& path, const std::string&,
                                                 ChunkSink<TextChunk>& sink) {
        return stream(path, sink);
    }
    asio::awaitable<result<void>> describe_url(const std::string& url, const std::string&,
                                               ChunkSink<TextChunk>& sink) {
        return stream(url, sink);
    }
    asio::awaitable<result<void>> generate_image(const std::string& prompt, const ImageConfig&,
                                                 ChunkSink<ImageChunk>& sink) {
        return stream(prompt, sink);
    }

private:
    // True when the hour-long wait was cancelled.
    static asio::awaitable<bool> hang(std::shared_ptr<Faults> f) {
        f->hangs.arrive();
        auto executor = co_await asio::this_coro::executor;
        const std::error_code ec = co_await f->clock->async_wait_for(executor, 1h, asio::use_awaitable);
        if (ec) {
            ++f->hangs_interrupted;
            co_return true;
        }
        co_return false;
    }

    static asio::awaitable<result<Embedding>> unary_impl(std::shared_ptr<Faults> f, std::string text) {
        const Command c = parse(text);
        ++f->model_calls;
        if (c.verb == "fail") {
            ++f->injected;
            co_return fail(errc::model_error, "injected failure of request {}", c.id);
        }
        if (c.verb == "throw") {
            ++f->injected;
            throw std::runtime_error("injected exception");
        }
        if (c.verb == "hang") {
            ++f->injected;
            const bool interrupted = co_await hang(f);
            co_return fail(errc::model_error, "request {} hung ({})", c.id,
                           interrupted ? "interrupted" : "woke up");
        }
        if (c.verb == "stall") {
            ++f->injected;
            co_await f->stall->async_wait(asio::use_awaitable);
        }
        co_return Embedding{static_cast<float>(c.id), 1.0F};
    }

    asio::awaitable<result<Embedding>> unary(const std::string& text) { return unary_impl(faults, text); }

    static asio::awaitable<result<std::vector<Embedding>>> batch_impl(std::shared_ptr<Faults> f,
                                                                      std::vector<std::string> texts) {
        ++f->model_calls;
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            const Command c = parse(text);
            if (c.verb == "fail") {
                ++f->injected;
                co_return fail(errc::model_error, "injected batch failure at request {}", c.id);
            }
            out.push_back(Embedding{static_cast<float>(c.id), 2.0F});
        }
        co_return out;
    }

    asio::awaitable<result<std::vector<Embedding>>> batch(const std::vector<std::string>& texts) {
        return batch_impl(faults, texts);
    }

    template <class Chunk>
    static asio::awaitable<result<void>> stream_impl(std::shared_ptr<Faults> f, std::string text,
                                                     ChunkSink<Chunk>* sink) {
        const Command c = parse(text);
        ++f->model_calls;
        if (c.verb == "fail") {
            ++f->injected;
            co_return fail(errc::model_error, "injected stream failure of request {}", c.id);
        }
        std::size_t count = stream_length;
        if (c.verb == "half") {
            count = stream_length / 2 + 1;
        } else if (c.verb == "long") {
            count = 2'000;
        } else if (c.verb == "hang" || c.verb == "throw" || c.verb == "stall") {
            count = 1;
        }
        for (std::size_t i = 0; i < count; ++i) {
            Chunk chunk;
            make_chunk(chunk, c.id, i);
            const bool sent = co_await sink->send(chunk);
            if (!sent) {
                ++f->sends_refused;
                co_return result<void>{};
            }
        }
        if (c.verb == "half") {
            ++f->injected;
            co_return fail(errc::model_error, "request {} failed half way", c.id);
        }
        if (c.verb == "throw") {
            ++f->injected;
            throw std::runtime_error("injected exception mid-stream");
        }
        if (c.verb == "hang") {
            ++f->injected;
            const bool interrupted = co_await hang(f);
            co_return fail(errc::model_error, "stream {} hung ({})", c.id,
                           interrupted ? "interrupted" : "woke");
        }
        if (c.verb == "stall") {
            ++f->injected;
            co_await f->stall->async_wait(asio::use_awaitable);
        }
        co_return result<void>{};
    }

    template <class Chunk>
    asio::awaitable<result<void>> stream(const std::string& text, ChunkSink<Chunk>& sink) {
        return stream_impl<Chunk>(faults, text, &sink);
    }
};

/// The loader factory of `ChaosModel`s, steered by `Faults` (fail, throw, hang, empty message).
inline auto chaos_loader(std::shared_ptr<Faults> f) {
    return [f]() -> asio::awaitable<result<ChaosModel>> {
        ++f->loader_calls;
        f->loads.arrive();
        if (auto gate = f->load_gate) {
            co_await gate->async_wait(asio::use_awaitable);
        }
        if (f->hang_loads.load()) {
            ++f->injected;
            f->hangs.arrive();
            auto executor = co_await asio::this_coro::executor;
            const std::error_code ec = co_await f->clock->async_wait_for(executor, 1h, asio::use_awaitable);
            if (ec) {
                ++f->loads_aborted;
                co_return fail(errc::spawn_failed, "the load was aborted");
            }
        }
        if (Faults::take(f->throw_loads)) {
            ++f->injected;
            throw std::runtime_error("injected loader exception");
        }
        if (Faults::take(f->fail_loads)) {
            ++f->injected;
            if (f->empty_message.load()) {
                co_return fail(errc::spawn_failed, std::string{});
            }
            co_return fail(errc::spawn_failed, "injected load failure");
        }
        ++f->loads_ok;
        co_return ChaosModel{std::make_shared<Alive>(f), f};
    };
}

// ---- the five capabilities --------------------------------------------------------------------------------

enum class Cap { text_embedding, image_embedding, text_to_text, vision, text_to_image };
constexpr std::array<Cap, 5> all_caps{Cap::text_embedding, Cap::image_embedding, Cap::text_to_text,
                                      Cap::vision, Cap::text_to_image};

inline bool is_stream(Cap cap) {
    return cap == Cap::text_to_text || cap == Cap::vision || cap == Cap::text_to_image;
}

inline std::string_view cap_name(Cap cap) {
    switch (cap) {
    case Cap::text_embedding:
        return "text_embedding";
    case Cap::image_embedding:
        return "image_embedding";
    case Cap::text_to_text:
        return "text_to_text";
    case Cap::vision:
        return "vision";
    case Cap::text_to_image:
        return "text_to_image";
    }
    return "?";
}

/// Registers `key` as a ChaosModel serving `cap`.
inline result<void> register_chaos(Pool& pool, Cap cap, std::string_view key, std::shared_ptr<Faults> f,
                                   ModelOptions model) {
    switch (cap) {
    case Cap::text_embedding:
        return pool.register_text_embedding_model(key, chaos_loader(f), model);
    case Cap::image_embedding:
        return pool.register_image_embedding_model(key, chaos_loader(f), model);
    case Cap::text_to_text:
        return pool.register_text_to_text_model(key, chaos_loader(f), model);
    case Cap::vision:
        return pool.register_vision_model(key, chaos_loader(f), model);
    case Cap::text_to_image:
        return pool.register_text_to_image_model(key, chaos_loader(f), model);
    }
    return fail(errc::invalid_argument, "unknown capability");
}

// ---- the ledger: every request ends exactly once ----------------------------------------------------------

/// Records every request the test sends and every end the pool delivers (a unary reply or error; a stream's
/// refusal, its last read, or the reader abandoning it), and checks that each request ended exactly once,
/// with its own reply.
class Ledger {
public:
    /// How a request ended, as the caller saw it.
    enum class End { none, ok, error, abandoned };

    struct Entry {
        std::uint64_t id = 0;
        std::string key;
        std::string verb;
        Cap cap = Cap::text_embedding;
        std::atomic<int> ends{0};
        End end = End::none; // guarded by the ledger's mutex
        errc code = errc::ok;
        std::string message;
        bool foreign_reply = false; // a reply or chunk that belongs to another request
        std::size_t chunks = 0;
        std::shared_ptr<asio::cancellation_signal> signal; // set for cancellable unary requests
    };

    /// A new request; the entry stays at the same address until the ledger is destroyed.
    Entry& issue(Cap cap, std::string_view key, std::string_view verb) {
        std::lock_guard lock(mutex_);
        auto& e = entries_.emplace_back();
        e.id = entries_.size();
        e.key = key;
        e.verb = verb;
        e.cap = cap;
        return e;
    }

    void end(Entry& e, End how, errc code = errc::ok, std::string message = {}) {
        {
            std::lock_guard lock(mutex_);
            if (e.ends.fetch_add(1) == 0) {
                e.end = how;
                e.code = code;
                e.message = std::move(message);
                ++ended_;
            } else {
                ++extra_ends_;
            }
            // Under the lock: requests refused after stop() end on the system executor's threads, and the
            // ledger may be destroyed as soon as wait_all() has seen the last end.
            changed_.notify_all();
        }
    }

    void foreign(Entry& e) {
        std::lock_guard lock(mutex_);
        e.foreign_reply = true;
    }

    /// Waits until every request issued so far ended; false on timeout.
    [[nodiscard]] bool wait_all(std::chrono::milliseconds timeout = 10s) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [&] { return ended_ == entries_.size(); });
    }

    [[nodiscard]] std::size_t issued() const {
        std::lock_guard lock(mutex_);
        return entries_.size();
    }

    [[nodiscard]] std::size_t ended() const {
        std::lock_guard lock(mutex_);
        return ended_;
    }

    /// Requests that ended with `how` (and `code`, for errors).
    [[nodiscard]] std::size_t count(End how, std::optional<errc> code = std::nullopt) const {
        std::lock_guard lock(mutex_);
        std::size_t n = 0;
        for (const auto& e : entries_) {
            n += e.end == how && (!code || e.code == *code) ? 1 : 0;
        }
        return n;
    }

    /// Calls `f` on every entry (under the ledger's lock: `f` must not call the ledger).
    void each(const std::function<void(const Entry&)>& f) const {
        std::lock_guard lock(mutex_);
        for (const auto& e : entries_) {
            f(e);
        }
    }

    /// Entries still waiting for their end (pointers stay valid).
    [[nodiscard]] std::vector<Entry*> pending() {
        std::lock_guard lock(mutex_);
        std::vector<Entry*> out;
        for (auto& e : entries_) {
            if (e.ends.load() == 0) {
                out.push_back(&e);
            }
        }
        return out;
    }

    /// A readable summary of what went wrong, empty when every request ended exactly once with its own reply.
    [[nodiscard]] std::string violations() const {
        std::lock_guard lock(mutex_);
        std::ostringstream out;
        std::size_t shown = 0;
        for (const auto& e : entries_) {
            const int ends = e.ends.load();
            if (ends == 1 && !e.foreign_reply) {
                continue;
            }
            if (shown++ < 10) {
                out << "request " << e.id << " (" << cap_name(e.cap) << " '" << e.key << "' " << e.verb
                    << "): "
                    << (ends == 0  ? "never ended"
                        : ends > 1 ? "ended more than once"
                                   : "")
                    << (e.foreign_reply ? " got another request's reply" : "") << "\n";
            }
        }
        if (shown > 10) {
            out << "... and " << shown - 10 << " more\n";
        }
        return out.str();
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<Entry> entries_;
    std::size_t ended_ = 0;
    std::size_t extra_ends_ = 0;
};

/// Reads a stream to its end through callbacks, recording its end in the ledger. It closes the stream (the
/// consumer abandons it) after `abandon_after` chunks, or at the next chunk once `abandon` is set.
template <class Chunk> struct Reader : std::enable_shared_from_this<Reader<Chunk>> {
    Ledger* ledger = nullptr;
    Ledger::Entry* entry = nullptr;
    std::optional<Stream<Chunk>> stream;
    std::size_t abandon_after = static_cast<std::size_t>(-1);
    std::atomic<bool> abandon{false};
    std::size_t read = 0;

    void next() {
        stream->async_next(
            [self = this->shared_from_this()](result<std::optional<Chunk>> r) { self->on(std::move(r)); });
    }

    void on(result<std::optional<Chunk>> r) {
        if (!r) {
            ledger->end(*entry, Ledger::End::error, r.error().code(), r.error().message());
            return;
        }
        if (!r->has_value()) {
            entry->chunks = read;
            ledger->end(*entry, Ledger::End::ok);
            return;
        }
        ++read;
        if (!chunk_belongs(**r, entry->id)) {
            ledger->foreign(*entry);
        }
        if (abandon.load() || read >= abandon_after) {
            entry->chunks = read;
            stream->close();
            ledger->end(*entry, Ledger::End::abandoned);
            return;
        }
        next();
    }
};

/// Options of one request sent by `send`.
struct SendOptions {
    bool cancellable = false; ///< Unary: bind a cancellation slot (entry.signal).
    std::size_t abandon_after = static_cast<std::size_t>(-1); ///< Streams: close after this many chunks.
    std::optional<RequestOptions> request{};                  ///< Per-call options (pool.with).
};

/// A stream reader the test can ask to abandon its stream (streams only; null for unary requests).
struct Sent {
    Ledger::Entry* entry = nullptr;
    std::function<void()> abandon; // sets the reader's abandon flag
};

namespace detail_send {

template <class Chunk>
auto open_handler(Ledger& ledger, Ledger::Entry& e, std::shared_ptr<Reader<Chunk>> reader) {
    return [&ledger, &e, reader](result<Stream<Chunk>> opened) {
        if (!opened) {
            ledger.end(e, Ledger::End::error, opened.error().code(), opened.error().message());
            return;
        }
        reader->stream.emplace(std::move(*opened));
        reader->next();
    };
}

inline auto unary_handler(Ledger& ledger, Ledger::Entry& e) {
    return [&ledger, &e](result<Embedding> r) {
        if (!r) {
            ledger.end(e, Ledger::End::error, r.error().code(), r.error().message());
            return;
        }
        if (r->empty() || (*r)[0] != static_cast<float>(e.id)) {
            ledger.foreign(e);
        }
        ledger.end(e, Ledger::End::ok);
    };
}

template <class Sender>
Sent send_with(Sender& sender, Ledger& ledger, Cap cap, const std::string& key, std::string_view verb,
               const SendOptions& options) {
    auto& e = ledger.issue(cap, key, verb);
    std::string text = command(verb, e.id);
    Sent sent{&e, {}};
    auto unary = [&](auto&& call) {
        if (options.cancellable) {
            e.signal = std::make_shared<asio::cancellation_signal>();
            call(asio::bind_cancellation_slot(e.signal->slot(), unary_handler(ledger, e)));
        } else {
            call(unary_handler(ledger, e));
        }
    };
    auto streamed = [&]<class Chunk>(std::type_identity<Chunk>, auto&& call) {
        auto reader = std::make_shared<Reader<Chunk>>();
        reader->ledger = &ledger;
        reader->entry = &e;
        reader->abandon_after = options.abandon_after;
        sent.abandon = [weak = std::weak_ptr<Reader<Chunk>>(reader)] {
            if (auto r = weak.lock()) {
                r->abandon = true;
            }
        };
        call(open_handler<Chunk>(ledger, e, reader));
    };
    switch (cap) {
    case Cap::text_embedding:
        unary([&](auto token) { sender.embed(key, std::move(text), std::move(token)); });
        break;
    case Cap::image_embedding:
        // Alternately a file path (batched on a key with batching) and a URL (never batched).
        if (e.id % 2 == 0) {
            unary([&](auto token) { sender.embed_image(key, std::move(text), std::move(token)); });
        } else {
            unary([&](auto token) { sender.embed_image_url(key, std::move(text), std::move(token)); });
        }
        break;
    case Cap::text_to_text:
        streamed(std::type_identity<CompletionChunk>{}, [&](auto token) {
            sender.prompt(key, std::move(text), GenerationParams{}, std::move(token));
        });
        break;
    case Cap::vision:
        streamed(std::type_identity<TextChunk>{},
                 [&](auto token) { sender.describe_image(key, std::move(text), "what", std::move(token)); });
        break;
    case Cap::text_to_image:
        streamed(std::type_identity<ImageChunk>{}, [&](auto token) {
            sender.generate_image(key, std::move(text), ImageConfig{}, std::move(token));
        });
        break;
    }
    return sent;
}

} // namespace detail_send

/// Sends one request of `cap` with `verb` to `key`, recording its end in `ledger` (callbacks: they run on the
/// pool's threads). The ledger must outlive the pool.
inline Sent send(Pool& pool, Ledger& ledger, Cap cap, const std::string& key, std::string_view verb,
                 const SendOptions& options = {}) {
    if (options.request) {
        auto scope = pool.with(*options.request);
        return detail_send::send_with(scope, ledger, cap, key, verb, options);
    }
    return detail_send::send_with(pool, ledger, cap, key, verb, options);
}

// ---- worker lifecycle events ------------------------------------------------------------------------------

/// Records every WorkerEvent and checks their order per worker: spawned first; then loaded or failed, never
/// both; evicted and stopped only after loaded; at most one end (failed or stopped).
class Events {
public:
    std::function<void(const WorkerEvent&)> hook() {
        return [this](const WorkerEvent& e) {
            {
                std::lock_guard lock(mutex_);
                auto& w = workers_[e.worker];
                ++counts_[static_cast<std::size_t>(e.kind)];
                switch (e.kind) {
                case WorkerEventKind::spawned:
                    if (w.spawned || w.loaded || w.ended) {
                        note(e, "spawned twice or after it ran");
                    }
                    w.spawned = true;
                    w.key = std::string(e.key);
                    break;
                case WorkerEventKind::loaded:
                    if (w.loaded || w.ended) {
                        note(e, "loaded twice or after it ended");
                    }
                    w.loaded = true;
                    break;
                case WorkerEventKind::failed:
                    if (w.loaded || w.ended) {
                        note(e, "failed after it loaded or ended");
                    }
                    w.ended = true;
                    break;
                case WorkerEventKind::evicted:
                    if (!w.loaded || w.ended) {
                        note(e, "evicted without being loaded, or after it ended");
                    }
                    break;
                case WorkerEventKind::stopped:
                    if (!w.loaded || w.ended) {
                        note(e, "stopped without being loaded, or twice");
                    }
                    w.ended = true;
                    break;
                }
            }
            changed_.notify_all();
        };
    }

    [[nodiscard]] std::size_t count(WorkerEventKind kind) const {
        std::lock_guard lock(mutex_);
        return counts_[static_cast<std::size_t>(kind)];
    }

    /// Waits until at least `n` events of `kind` happened; false on timeout.
    [[nodiscard]] bool wait_for(WorkerEventKind kind, std::size_t n, std::chrono::milliseconds timeout = 5s) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [&] { return counts_[static_cast<std::size_t>(kind)] >= n; });
    }

    /// Order violations seen so far (empty when none).
    [[nodiscard]] std::string violations() const {
        std::lock_guard lock(mutex_);
        return problems_;
    }

    /// Workers spawned that have not ended (failed or stopped).
    [[nodiscard]] std::size_t unended() const {
        std::lock_guard lock(mutex_);
        std::size_t n = 0;
        for (const auto& [id, w] : workers_) {
            n += w.spawned && !w.ended ? 1 : 0;
        }
        return n;
    }

private:
    struct Worker {
        bool spawned = false;
        bool loaded = false;
        bool ended = false;
        std::string key;
    };

    void note(const WorkerEvent& e, std::string_view what) {
        problems_ += "worker " + std::to_string(e.worker) + " of '" + std::string(e.key) + "' " +
                     std::string(what) + "\n";
    }

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::map<std::uint64_t, Worker> workers_;
    std::array<std::size_t, 5> counts_{};
    std::string problems_;
};

// ---- the rig and its invariants ---------------------------------------------------------------------------

/// Workers that count against a key's maximum: starting, serving and reserved, without the stuck ones.
inline std::size_t counted_workers(const KeySnapshot& s) {
    return s.starting() + s.serving() + s.reserved - std::min(s.unhealthy, s.starting() + s.serving());
}

/// Every worker a key's table holds, whatever its state.
inline std::size_t table_workers(const KeySnapshot& s) {
    std::size_t n = 0;
    for (auto c : s.workers) {
        n += c;
    }
    return n;
}

/// A pool whose every scenario ends with the invariant checks. Declared in this order so that the ledger,
/// the events and the faults outlive the pool.
struct Rig {
    LogCapture log;
    std::shared_ptr<ManualClock> manual;
    std::shared_ptr<Faults> faults = std::make_shared<Faults>();
    Events events;
    Ledger ledger;
    std::unique_ptr<Pool> pool_ptr;
    std::chrono::milliseconds stop_took{0};
    bool stopped = false;
    /// Every request of the scenario went through the ledger (so the pool's request count must match it).
    bool all_requests_in_ledger = true;

    /// `manual_clock`: a ManualClock whose time only the test moves (maintenance then only runs on
    /// maintain()); otherwise the steady clock.
    explicit Rig(const std::function<void(PoolOptions&)>& tweak = {}, bool manual_clock = true) {
        PoolOptions o;
        o.io_threads = 1;
        o.blocking_threads = 1;
        o.memory_limit_mb = 1024;
        o.queue_capacity = 64;
        o.request_timeout = 5s;
        o.stream_timeout = 20s;
        o.stream_idle_timeout = 10s;
        o.shutdown_timeout = 5s;
        o.logger = log.logger();
        o.on_worker_event = events.hook();
        if (manual_clock) {
            manual = std::make_shared<ManualClock>();
            o.clock = manual;
            o.maintenance_interval = 24h;
        }
        if (tweak) {
            tweak(o);
        }
        pool_ptr = std::make_unique<Pool>(std::move(o));
        faults->clock = pool_ptr->options().clock;
    }
    Rig(const Rig&) = delete;
    Rig& operator=(const Rig&) = delete;
    ~Rig() {
        faults->stall->open();
        if (faults->load_gate) {
            faults->load_gate->open();
        }
        pool_ptr->stop(0ms);
        if (manual) {
            while (auto next = manual->next_deadline()) {
                manual->advance_to(*next); // a leaked wait must not touch the destroyed io_context
            }
        }
        pool_ptr.reset();
    }

    Pool& pool() { return *pool_ptr; }

    Sent send(Cap cap, const std::string& key, std::string_view verb, const SendOptions& options = {}) {
        return reliability::send(pool(), ledger, cap, key, verb, options);
    }

    /// Waits until every request ended; on timeout, fails naming the requests still waiting and the keys.
    void require_all_ended(std::chrono::milliseconds timeout = 10s) {
        if (ledger.wait_all(timeout)) {
            return;
        }
        std::ostringstream out;
        for (auto* e : ledger.pending()) {
            out << "request " << e->id << " (" << cap_name(e->cap) << " '" << e->key << "' " << e->verb
                << ") never ended\n";
        }
        for (const auto& k : pool().snapshot()) {
            out << "key '" << k.key << "': queue " << k.queue_depth << ", serving " << k.serving()
                << ", busy " << k.count(WorkerState::busy) << ", starting " << k.starting() << ", reserved "
                << k.reserved << ", unhealthy " << k.unhealthy << "\n";
        }
        FAIL(out.str());
    }

    /// Runs an empty handler on the pool's io_context and waits for it.
    void settle() {
        if (stopped) {
            return; // nothing runs the io_context any more
        }
        auto done = asio::post(pool().get_executor(), asio::use_future);
        REQUIRE(done.wait_for(5s) == std::future_status::ready);
    }

    /// Waits (on the pool's io_context, bounded) until `pred` holds; false on timeout.
    bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5s) {
        const auto until = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            settle();
            if (pred()) {
                return true;
            }
            if (std::chrono::steady_clock::now() >= until) {
                return false;
            }
        }
    }

    /// Memory the live workers of every key hold, by their tables.
    std::size_t table_memory() {
        std::size_t mb = 0;
        for (const auto& s : pool().snapshot()) {
            mb += s.memory_mb;
        }
        return mb;
    }

    /// No registered key counts more workers than its maximum (checked on a snapshot).
    void check_max_workers() {
        for (const auto& s : pool().snapshot()) {
            if (s.registered) {
                INFO("key '" << s.key << "': " << counted_workers(s) << " workers counted, max "
                             << s.max_workers);
                CHECK(counted_workers(s) <= s.max_workers);
            }
        }
    }

    /// The pool is at rest: no reservation in flight, no memory wait, every worker event delivered. Then the
    /// governor's allocation is exactly what the live workers' tables hold, and every serving or evicting
    /// worker is one that loaded and has not stopped. Waits (on the pool's io_context, bounded) for the rest.
    void check_at_rest(std::chrono::milliseconds timeout = 5s) {
        const auto until = std::chrono::steady_clock::now() + timeout;
        std::string why;
        for (;;) {
            settle();
            why = at_rest_problem();
            if (why.empty() || std::chrono::steady_clock::now() >= until) {
                break;
            }
            // The io thread may have posted more work: wait for it, unless the state stops changing.
        }
        INFO(why);
        CHECK(why.empty());
        check_max_workers();
    }

    std::string at_rest_problem() {
        std::size_t reserved = 0;
        std::size_t tables = 0;
        std::size_t serving = 0;
        for (const auto& s : pool().snapshot()) {
            reserved += s.reserved;
            tables += s.memory_mb;
            serving += s.serving() + s.count(WorkerState::evicting);
        }
        const auto allocated = pool().governor().allocated_mb();
        const auto loaded = events.count(WorkerEventKind::loaded);
        const auto ended_loaded = events.count(WorkerEventKind::stopped);
        if (reserved != 0 || pool().governor().waiting() != 0) {
            return "reservations still in flight";
        }
        if (allocated != tables) {
            return "the governor holds " + std::to_string(allocated) + " MB but the live workers hold " +
                   std::to_string(tables) + " MB";
        }
        if (serving != loaded - ended_loaded) {
            return std::to_string(serving) + " workers serve, but " + std::to_string(loaded) +
                   " loaded and " + std::to_string(ended_loaded) + " stopped";
        }
        return {};
    }

    /// Stops the pool with `grace` and checks that stop() returned within it (plus a generous margin for the
    /// sanitizers).
    void stop(std::chrono::milliseconds grace = 1s) {
        const auto start = std::chrono::steady_clock::now();
        pool().stop(grace);
        stop_took =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        INFO("stop(" << grace.count() << " ms) took " << stop_took.count() << " ms");
        CHECK(stop_took <= grace + 3s);
        stopped = true;
    }

    /// The invariants after stop(): every request ended exactly once with its own reply; the pool counted
    /// each one once; memory is all back; no worker, model or clock wait is left; loader calls match the
    /// workers. `models_may_outlive`: a model ignored cancellation and is destroyed with the pool.
    void check_after_stop(bool models_may_outlive = false) {
        REQUIRE(stopped);
        INFO("ledger: " << ledger.issued() << " issued, " << ledger.ended() << " ended");
        CHECK(ledger.wait_all(10s));
        const auto bad = ledger.violations();
        INFO(bad);
        CHECK(bad.empty());
        const auto m = pool().metrics();
        INFO("metrics: " << m.requests << " requests, " << m.succeeded << " succeeded, " << m.error_total()
                         << " errors");
        if (all_requests_in_ledger) {
            CHECK(m.requests == ledger.issued());
        }
        CHECK(m.requests == m.succeeded + m.error_total());
        const auto order = events.violations();
        INFO(order);
        CHECK(order.empty());
        CHECK(m.loader_calls == static_cast<std::uint64_t>(faults->loader_calls.load()));
        CHECK(m.workers_loaded == static_cast<std::uint64_t>(faults->loads_ok.load()));
        CHECK(m.workers_spawned == events.count(WorkerEventKind::spawned));
        if (!models_may_outlive) {
            CHECK(m.loader_calls == m.workers_loaded + m.workers_failed);
            CHECK(pool().governor().allocated_mb() == 0);
            CHECK(faults->models_alive.load() == 0);
            CHECK(events.unended() == 0);
            for (const auto& s : pool().snapshot()) {
                INFO("key '" << s.key << "'");
                CHECK(table_workers(s) == 0);
                CHECK(s.memory_mb == 0);
                CHECK(s.queue_depth == 0);
            }
        }
        if (manual) {
            CHECK(manual->pending_waits() == 0);
        }
    }
};

// ---- randomized sequences ---------------------------------------------------------------------------------

/// Emits `e`'s cancellation signal on the pool's (single) io thread, where the request's completion and
/// slot handling also run, so the emit never races with them.
inline void cancel(Rig& rig, Ledger::Entry* e) {
    REQUIRE(e->signal);
    asio::post(rig.pool().get_executor(),
               [signal = e->signal] { signal->emit(asio::cancellation_type::terminal); });
}

inline void no_breaker(PoolOptions& o) {
    o.breaker.failure_threshold = 0;
}

struct RandomStats {
    std::uint64_t steps = 0;
    std::uint64_t requests = 0;
    std::uint64_t faults = 0;
    std::uint64_t batches = 0;          ///< Model calls that served more than one request.
    std::uint64_t batched_requests = 0; ///< Requests those calls served.
};

/// Where a sequence gets its choices: `pick(n)` returns one in [0, n); `more()` false ends the sequence early
/// (then the invariant checks run). The reliability test uses `SeededSteps`; tests/fuzz/pool_fuzzer.cpp
/// decodes the choices from the fuzzer's input bytes.
template <class S>
concept step_source = requires(S& s, std::uint64_t n) {
    { s.pick(n) } -> std::convertible_to<std::uint64_t>;
    { s.more() } -> std::convertible_to<bool>;
};

/// Choices from a seeded std::mt19937_64 (`MODELPOOL_SEED=<seed>` replays one).
struct SeededSteps {
    std::mt19937_64 rng;
    explicit SeededSteps(std::uint64_t seed) : rng(seed) {}
    std::uint64_t pick(std::uint64_t n) { return rng() % n; }
    static bool more() { return true; }
};

/// How `run_sequence` runs, beyond its choices.
struct SequenceOptions {
    /// When set, each step is described there (one line each) as it runs, so that a failing sequence can be
    /// printed.
    std::vector<std::string>* trace = nullptr;
};

/// One run of a random sequence: interleavings of register/spawn, requests, cancellations, abandoned streams,
/// clock steps with maintenance, fault toggles and stop, checked against the invariants. `seed` seeds the
/// pool's own jitter; every choice comes from `source`.
template <step_source Source>
void run_sequence(std::uint64_t seed, Source& source, RandomStats& stats,
                  const SequenceOptions& options = {}) {
    auto pick = [&](std::uint64_t n) { return static_cast<std::uint64_t>(source.pick(n)); };
    auto note = [&](auto&&... parts) {
        if (options.trace != nullptr) {
            std::ostringstream line;
            (line << ... << parts);
            options.trace->push_back(line.str());
        }
    };
    Rig rig([&](PoolOptions& o) {
        o.memory_limit_mb = 6 + pick(6);
        o.queue_capacity = 1 + pick(6);
        o.cold_start_workers = 1 + pick(2);
        o.max_workers_per_model = 2 + pick(2);
        o.load_retries = pick(3);
        o.retry_backoff_initial = 500ms;
        o.retry_backoff_max = 2s;
        o.idle_timeout = 3s;
        o.stuck_grace = 1s;
        o.stream_idle_timeout = 4s;
        o.random_seed = seed;
        if (pick(2) == 0) {
            no_breaker(o);
        } else {
            o.breaker = {.failure_threshold = 3, .open_time = 2s, .half_open_probes = 1};
        }
        note("pool: memory_limit_mb ", o.memory_limit_mb, ", queue_capacity ", o.queue_capacity,
             ", cold_start_workers ", o.cold_start_workers, ", max_workers_per_model ",
             o.max_workers_per_model, ", load_retries ", o.load_retries, ", breaker ",
             o.breaker.failure_threshold == 0 ? "off" : "3/2s/1");
    });
    auto& f = *rig.faults;
    struct Key {
        std::string name;
        Cap cap;
        bool registered = false;
        bool spawned_directly = false;
    };
    std::vector<Key> keys;
    for (std::size_t k = 0; k < 5; ++k) {
        keys.push_back({fmt::format("k{}", k), all_caps[pick(all_caps.size())]});
        note("key ", keys.back().name, ": ", cap_name(keys.back().cap));
    }
    std::vector<Sent> sent;
    const char* verbs[] = {"ok", "ok", "ok", "ok", "fail", "throw", "hang", "half", "long"};
    const std::uint64_t steps = 60 + pick(60);
    const std::uint64_t stop_at = pick(4) == 0 ? pick(steps) : steps;
    for (std::uint64_t step = 0; step < steps && source.more(); ++step) {
        INFO("seed " << seed << " step " << step);
        if (step == stop_at) {
            const auto grace = pick(2) == 0 ? 0ms : 50ms;
            note("step ", step, ": stop(", grace.count(), " ms)");
            rig.stop(grace);
        }
        const auto op = pick(100);
        auto& key = keys[pick(keys.size())];
        if (op < 10) { // register (again: refused) or spawn a worker directly
            if (pick(3) != 0) {
                ModelOptions model{
                    .per_worker_mb = 1 + pick(3), .min_workers = pick(2), .max_workers = 1 + pick(3)};
                if ((key.cap == Cap::text_embedding || key.cap == Cap::image_embedding) && pick(2) == 0) {
                    // Batching: sometimes larger than the queue (refused), sometimes with a queue delay.
                    model.batching = {.max_batch_size = 1 + pick(rig.pool().options().queue_capacity + 1),
                                      .max_queue_delay = std::chrono::microseconds(
                                          pick(3) == 0 ? 1000 * (1 + pick(500)) : 0),
                                      .retry_items_on_failure = pick(4) != 0};
                }
                note("step ", step, ": register ", key.name, " (", model.per_worker_mb, " MB, min ",
                     model.min_workers, ", max ", model.max_workers, ", batch ",
                     model.batching.max_batch_size, " delay ", model.batching.max_queue_delay.count(), " us",
                     model.batching.retry_items_on_failure ? "" : " no retries", ")");
                // Refused (invalid_argument) while workers spawned directly on the key are alive: a key is
                // the pool's or the application's, never both (the fuzzer found a registered key exceeding
                // its max_workers by adopting them).
                auto registered = register_chaos(rig.pool(), key.cap, key.name, rig.faults, model);
                if (!registered) {
                    const auto code = registered.error().code();
                    CHECK((code == errc::invalid_argument || code == errc::shutting_down));
                    CHECK(registered.error().message().find(key.name) != std::string::npos);
                }
                key.registered = key.registered || registered.has_value();
            } else if (key.cap == Cap::text_embedding) {
                note("step ", step, ": spawn a worker of ", key.name, key.registered ? " (registered)" : "");
                auto guard = rig.pool().governor().try_allocate(1, key.name);
                if (guard) {
                    auto id = rig.pool().spawn_text_embedding_worker(key.name, chaos_loader(rig.faults), 1,
                                                                     std::move(*guard));
                    if (!id) { // a registered key's workers are the pool's to start
                        const auto code = id.error().code();
                        CHECK((code == errc::shutting_down ||
                               (key.registered && code == errc::invalid_argument)));
                    }
                    key.spawned_directly = key.spawned_directly || id.has_value();
                }
            }
        } else if (op < 55) { // a request
            const std::string_view verb = verbs[pick(std::size(verbs))];
            SendOptions options;
            options.cancellable = !is_stream(key.cap) && pick(3) == 0;
            if (is_stream(key.cap) && (pick(4) == 0 || verb == "long")) {
                options.abandon_after = 1 + pick(3); // the consumer abandons the stream
            }
            if (pick(4) == 0) {
                options.request = RequestOptions{.timeout = std::chrono::milliseconds(500 + pick(8000))};
            }
            if (pick(3) == 0) { // a priority, and sometimes a queue timeout
                options.request = options.request.value_or(RequestOptions{});
                options.request->priority = static_cast<Priority>(pick(priority_levels));
                if (pick(2) == 0) {
                    options.request->queue_timeout = std::chrono::milliseconds(1 + pick(2000));
                }
            }
            sent.push_back(rig.send(key.cap, key.name, verb, options));
            note("step ", step, ": request ", sent.back().entry->id, " to ", key.name, " '", verb, "'",
                 options.cancellable ? ", cancellable" : "",
                 options.abandon_after != static_cast<std::size_t>(-1)
                     ? ", abandoned after " + std::to_string(options.abandon_after) + " chunks"
                     : "",
                 options.request && options.request->timeout
                     ? ", timeout " + std::to_string(options.request->timeout->count()) + " ms"
                     : "",
                 options.request ? ", priority " + std::string(to_string(options.request->priority)) : "",
                 options.request && options.request->queue_timeout
                     ? ", queue timeout " + std::to_string(options.request->queue_timeout->count()) + " ms"
                     : "");
            ++stats.requests;
        } else if (op < 63) { // cancel a pending unary request / abandon a stream
            auto pending = rig.ledger.pending();
            if (!pending.empty()) {
                auto* e = pending[pick(pending.size())];
                note("step ", step, ": cancel request ", e->id);
                if (e->signal) {
                    cancel(rig, e);
                }
                for (auto& s : sent) {
                    if (s.entry == e && s.abandon) {
                        asio::post(rig.pool().get_executor(), s.abandon);
                    }
                }
            }
        } else if (op < 80) { // time passes; maintenance runs
            const auto by = std::chrono::milliseconds(pick(3000));
            note("step ", step, ": advance the clock ", by.count(), " ms, maintain()");
            rig.manual->advance(by);
            rig.pool().maintain();
        } else if (op < 85) {
            const auto count = pick(4);
            note("step ", step, ": ensure_workers(", key.name, ", ", count, ")");
            if (auto ensured = rig.pool().ensure_workers(key.name, count); !ensured) {
                const auto code = ensured.error().code();
                CHECK((code == errc::invalid_argument || code == errc::shutting_down ||
                       code == errc::memory_exhausted));
            }
        } else if (op < 95) { // fault toggles
            ++stats.faults;
            switch (pick(4)) {
            case 0:
                f.fail_loads = static_cast<int>(pick(4));
                note("step ", step, ": the next ", f.fail_loads.load(), " loads fail");
                break;
            case 1:
                f.throw_loads = 1;
                note("step ", step, ": the next load throws");
                break;
            case 2:
                f.hang_loads = !f.hang_loads;
                note("step ", step, ": loads hang: ", f.hang_loads.load());
                break;
            default:
                f.empty_message = !f.empty_message;
                note("step ", step, ": empty load failure messages: ", f.empty_message.load());
                break;
            }
        } else {
            note("step ", step, ": check max workers");
            rig.settle();
            rig.check_max_workers();
        }
        ++stats.steps;
    }
    INFO("seed " << seed << " (replay: MODELPOOL_SEED=" << seed << " modelpool_tests \"[random]\")");
    if (!rig.stopped) {
        note("end: faults off, 6 x (advance 5 s, maintain), check at rest, stop");
        f.fail_loads = 0; // see the stop above
        f.throw_loads = 0;
        // Let hangs and loads run into their deadlines, then check the pool at rest before stopping it.
        f.hang_loads = false;
        for (int i = 0; i < 6; ++i) {
            rig.manual->advance(5s);
            rig.settle();
            rig.pool().maintain();
        }
        rig.check_at_rest();
        rig.stop(pick(2) == 0 ? 0ms : 50ms);
    }
    note("end: check after stop");
    rig.check_after_stop();
    for (const auto& key : rig.pool().snapshot()) {
        // Batch calls of more than one request: every bucket above the first (sizes 2 and more).
        for (std::size_t i = 1; i < key.batch_size.counts.size(); ++i) {
            stats.batches += key.batch_size.counts[i];
        }
        const auto singles = key.batch_size.counts.empty() ? 0 : key.batch_size.counts[0];
        stats.batched_requests += static_cast<std::uint64_t>(key.batch_size.sum) - singles;
    }
    stats.faults += static_cast<std::uint64_t>(f.injected.load());
}

} // namespace modelpool::reliability
