// examples/runtimes/char_rnn.hpp
//
// The libtorch text_to_text runtime: a small character-level GRU trained on Aesop's Fables
// (scripts/train_char_rnn.py), shipped as the TorchScript file examples/data/char_rnn.pt with its vocabulary
// inside (the module's string attribute `vocab`).
//
// This light header is what the example, the main demo and the benchmark include: libtorch's own headers stay
// in examples/runtimes/char_rnn.cpp (pimpl). It offers
// - `CharRnnEngine`: the network (blocking load with torch::jit::load, blocking generation);
// - `CharRnnGenerator`: a modelpool text_to_text model around one engine; `prompt` is a BLOCKING member (the
//   pool runs it on its blocking executor) streaming one chunk per sampled character;
// - `char_rnn_loader`: the async loader for `pool.spawn_text_to_text_worker` / `register_text_to_text_model`,
//   which runs the blocking load on the pool's blocking executor through `modelpool::offload`.
//
// One engine per worker: a TorchScript module and its recurrent state are not safe to share across threads,
// and each loaded worker gets its own copy of the module.
#pragma once

#include <modelpool/modelpool.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace runtimes {

/// Memory to reserve per loaded worker, in MB (`per_worker_mb`). Measured with examples/torch_generator.cpp,
/// which prints the RSS growth (Release, libtorch 1.13.1): a loaded worker adds 2-3.5 MB (its own copy of the
/// 0.6 MB of weights, the TorchScript graph and executor, allocator slack) and a generation's transient
/// activations peak at about 1.2 MB (prompts are fed 256 characters per pass); 8 MB leaves a 2x margin.
/// Not included: libtorch's one-time process-wide setup on the first load (about 15 MB, shared by all
/// workers), and the ~150 MB of libtorch's shared libraries mapped at start.
inline constexpr std::size_t char_rnn_per_worker_mb = 8;

/// The most prompt characters the network reads: longer prompts keep their last `char_rnn_max_context`
/// (known) characters, so a huge prompt costs bounded time. The network was trained on 100-character windows.
inline constexpr std::size_t char_rnn_max_context = 4096;

/// How one `CharRnnEngine::generate` call ended.
struct CharRnnRun {
    modelpool::CompletionStats stats; ///< finish_reason "stop" or "length" (meaningless when `reader_left`).
    std::size_t sampled = 0;          ///< Characters sampled (including held-back ones never emitted).
    bool reader_left = false;         ///< `emit` returned false: generation stopped there.
};

/// The network: a TorchScript module (torch::jit::load) and its vocabulary. Blocking calls only; NOT
/// thread-safe: use one engine per worker (thread). Movable (a moved-from engine may only be destroyed or
/// assigned to).
class CharRnnEngine {
public:
    /// Loads the TorchScript file at `path` (blocking: file read and graph setup). Fails with `spawn_failed`
    /// naming the path when the file is missing, is not a TorchScript archive, or lacks the expected
    /// interface (`vocab` of distinct ASCII characters, `initial_state`, a forward giving one logit per
    /// vocabulary character).
    ///
    /// Also sets libtorch's intra-op threads to 1, once per process (`at::set_num_threads` is
    /// process-global): the pool parallelises across workers, and with batch-1 steps of a 192-wide GRU
    /// intra-op threads only add synchronisation and would oversubscribe the cores the pool's other workers
    /// use.
    static modelpool::result<CharRnnEngine> load(const std::filesystem::path& path);

    CharRnnEngine(CharRnnEngine&&) noexcept;            ///< Moves the module.
    CharRnnEngine& operator=(CharRnnEngine&&) noexcept; ///< Moves the module.
    ~CharRnnEngine();                                   ///< Frees the module.

    /// The characters the network knows, in index order.
    const std::string& vocabulary() const;

    /// The file it was loaded from.
    const std::filesystem::path& path() const;

    /// Checks `params`: `invalid_argument` naming the field and the value for a temperature that is negative
    /// or not finite, or a top_p outside (0, 1].
    static modelpool::result<void> validate(const modelpool::GenerationParams& params);

    /// Blocking: continues `prompt`, one character per token, calling `emit(text)` whenever text is ready to
    /// be shown; `emit` returning false stops generation at once (the reader has gone).
    ///
    /// The prompt's characters outside the vocabulary (anything but the letters, digits and punctuation of
    /// the fables; every byte of a non-ASCII UTF-8 character) are skipped; an empty result starts from "\n",
    /// the start of a paragraph. Then it samples up to `max_tokens` characters: `temperature` 0 is greedy
    /// (the most likely character; no randomness), otherwise softmax(logits / temperature) restricted to the
    /// nucleus of mass `top_p`, drawn from a std::mt19937_64 seeded with `seed` (same seed, same prompt, same
    /// text) or from std::random_device without one. Text that could still become a `stop` sequence is held
    /// back; when one completes, generation ends before it (finish_reason "stop") and it is never emitted,
    /// not even in part; otherwise finish_reason is "length" and the held-back tail is emitted at the end.
    /// `token_count` counts the characters emitted. Fails with `invalid_argument` for bad params (`validate`)
    /// and `model_error` if libtorch throws.
    modelpool::result<CharRnnRun> generate(const std::string& prompt,
                                           const modelpool::GenerationParams& params,
                                           const std::function<bool(std::string_view)>& emit);

private:
    struct Impl;
    explicit CharRnnEngine(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// Counters a program can share with the generators it loads, to observe them from outside the pool.
struct CharRnnCounters {
    std::atomic<std::uint64_t> sampled{0};     ///< Characters sampled by all its generators.
    std::atomic<std::uint64_t> generations{0}; ///< `prompt` calls that ran the network.
    std::atomic<std::uint64_t> abandoned{0};   ///< Generations stopped because the reader had gone.
};

/// The modelpool text_to_text model: one `CharRnnEngine` (one per worker). `prompt` is blocking.
class CharRnnGenerator {
public:
    /// Serves `engine`, adding to `counters` (a private set when null).
    explicit CharRnnGenerator(CharRnnEngine engine, std::shared_ptr<CharRnnCounters> counters = nullptr);

    /// BLOCKING (the pool runs it on its blocking executor): streams `engine.generate`'s text as `TextChunk`s
    /// with `sink.send_blocking`, then a `CompletionStats` chunk; stops within one character when a send
    /// returns false (the reader has gone). Bad params: `invalid_argument` naming the field and the value.
    modelpool::result<void> prompt(const std::string& prompt, const modelpool::GenerationParams& params,
                                   modelpool::ChunkSink<modelpool::CompletionChunk>& sink);

    /// The engine (e.g. its vocabulary).
    const CharRnnEngine& engine() const { return engine_; }

private:
    CharRnnEngine engine_;
    std::shared_ptr<CharRnnCounters> counters_;
};

/// Loads `path` as a `CharRnnGenerator`: the blocking `CharRnnEngine::load` runs on `blocking` (the pool's
/// `blocking_executor()`) through `modelpool::offload`, never on an io thread. The coroutine body of
/// `char_rnn_loader`'s callable.
modelpool::asio::awaitable<modelpool::result<CharRnnGenerator>>
load_char_rnn(modelpool::asio::thread_pool::executor_type blocking, std::filesystem::path path,
              std::shared_ptr<CharRnnCounters> counters);

/// A copyable loader for `pool.spawn_text_to_text_worker` / `register_text_to_text_model`: each call loads a
/// fresh engine from `path` on `blocking` (see `load_char_rnn`). `counters` (optional) is shared by every
/// generator it loads.
inline auto char_rnn_loader(modelpool::asio::thread_pool::executor_type blocking, std::filesystem::path path,
                            std::shared_ptr<CharRnnCounters> counters = nullptr) {
    // The callable only forwards copies to a coroutine function: a coroutine lambda's captures would die
    // with the callable, which the pool need not keep alive while the load runs.
    return [blocking, path = std::move(path), counters = std::move(counters)] {
        return load_char_rnn(blocking, path, counters);
    };
}

} // namespace runtimes
