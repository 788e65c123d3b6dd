// examples/runtimes/fasttext_embedder.hpp
//
// The fastText runtime (text_embedding): real word vectors trained with the fastText library (Debian's
// libfasttext-dev, 0.9.2) on the shipped Aesop text, served by a modelpool worker.
//
// - `FastTextTraining`: the training settings (a small skipgram model, written down here), and
//   `train_fasttext_model`, which trains with `fasttext::FastText::train` and returns the model file's bytes.
//   `ensure_fasttext_model` does that once into the examples' WeightStore (generated on first run, written
//   atomically, reused). scripts/train_fasttext.sh produces the same file with Debian's `fasttext` program.
// - `FastTextEngine`: one loaded model (fastText's own loader, `FastText::loadModel`, fed from memory) with
//   blocking `embed` / `batch_embed`: the sentence vector of `FastText::getSentenceVector`.
// - `FastTextEmbedder`: the modelpool model type (text_embedding, blocking members: the pool runs them on its
//   blocking executor), and `fasttext_loader`, the asynchronous loader for `pool.spawn_text_embedding_worker`
//   and `pool.register_text_embedding_model`: it fetches the model file over loopback HTTP (`demo::http_get`,
//   non-blocking) and then parses it through `modelpool::offload` on the pool's blocking executor, so no io
//   thread ever blocks.
//
// fastText tokenises on white space only and embeds only the first line of its input, so every text (the
// training corpus and each request) goes through `fasttext_normalize` first: ASCII letters lower-cased, every
// byte other than [a-z0-9'] and non-ASCII (UTF-8) bytes becomes a space; one line.
//
// This header does not include fastText's headers (large, not warning-clean): they stay in
// examples/runtimes/fasttext_embedder.cpp, the adapter library modelpool_runtime_fasttext.
#pragma once

#include "support/weight_store.hpp"

#include <modelpool/modelpool.hpp>

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace runtimes {

namespace asio = modelpool::asio;

/// The training settings of the examples' fastText model: an unsupervised skipgram model, small enough that
/// its file stays a few MB, trained single-threaded from a fixed seed so that every run (and the CLI script)
/// produces the same bytes. Hierarchical softmax (`hs`) rather than negative sampling: a loaded negative
/// sampling model builds a 10-million-entry negatives table that embedding never uses (measured with
/// `fasttext print-sentence-vectors` on this model trained both ways: 74 MB peak resident memory with `ns`,
/// 9 MB with `hs`); with `hs` a loaded worker costs a few MB. 100 epochs because the corpus is tiny (about
/// 5,400 words): fewer leave all words nearly parallel (cosine > 0.99), with no useful neighbours.
struct FastTextTraining {
    int dim = 48;       ///< Vector dimensions (`-dim`).
    int bucket = 20000; ///< Hash buckets for character n-grams (`-bucket`); the file's size is mostly this.
    int min_count = 1;  ///< Keep every word (`-minCount`): the corpus is small.
    int epoch = 100;    ///< Passes over the corpus (`-epoch`).
    double lr = 0.05;   ///< Learning rate (`-lr`).
    int ws = 5;         ///< Context window (`-ws`).
    int minn = 3;       ///< Shortest character n-gram (`-minn`).
    int maxn = 6;       ///< Longest character n-gram (`-maxn`).
    int thread = 1;     ///< One thread: reproducible (`-thread`).
    int seed = 1;       ///< Fixed seed (`-seed`).
    bool hs = true;     ///< Hierarchical softmax (`-loss hs`) instead of negative sampling (see above).

    /// The equivalent arguments of Debian's `fasttext skipgram` (after `-input`/`-output`).
    std::string cli_arguments() const;
};

/// The model file's name in the WeightStore (change it when the settings or the corpus change).
inline constexpr std::string_view fasttext_model_name = "fasttext-aesop-skipgram-d48-b20000-e100-hs-v1.bin";

/// Memory one worker needs, in MB: the `per_worker_mb` to reserve for it. Measured
/// (examples/fasttext_embedding prints it) as the growth of the process's resident set per FastTextEngine
/// loaded from the examples' model: 4.8 MB (its 4.2 MB of matrices, the dictionary with every word's n-gram
/// ids, the Huffman tree of `hs`). While a worker loads, it also holds the fetched file (4.2 MB) until
/// fastText has parsed it: a peak of about 9 MB, hence 10.
inline constexpr std::size_t fasttext_per_worker_mb = 10;

/// `text` as fastText should see it (see the file comment): one line of lower-case words separated by spaces.
std::string fasttext_normalize(std::string_view text);

/// The training corpus made from the shipped Aesop file's contents: comment lines ('#') left out, every other
/// line normalised as `fasttext_normalize` does (line breaks kept). scripts/train_fasttext.sh does the same
/// with `grep` and `tr`.
std::string fasttext_training_corpus(std::string_view aesop_file);

/// Trains a model on `corpus` (one text per line, already normalised) with `fasttext::FastText::train` and
/// returns its file's bytes (`FastText::saveModel`). Blocking, seconds of CPU; needs a scratch directory in
/// `work_dir` for fastText's input and output files (fastText trains from a file), removed afterwards. Throws
/// `std::runtime_error` when training fails.
std::string train_fasttext_model(std::string_view corpus, const std::filesystem::path& work_dir,
                                 const FastTextTraining& settings = {});

/// The examples' model file in `store`, trained from `aesop_file` (the shipped text's contents) on first run
/// only (see `demo::WeightStore::ensure`). Blocking: main's thread only.
inline std::filesystem::path ensure_fasttext_model(const demo::WeightStore& store,
                                                   std::string_view aesop_file) {
    return store.ensure(std::string(fasttext_model_name), [&] {
        return train_fasttext_model(fasttext_training_corpus(aesop_file), store.dir());
    });
}

/// One loaded fastText model, with blocking calls. Move-only.
///
/// @par Thread Safety
/// Not thread-safe: fastText's `getSentenceVector` is a non-const member using the instance's state, so use
/// one engine per thread (one per worker: the pool calls a worker's model from one thread at a time).
class FastTextEngine {
public:
    /// Loads a model from its file's bytes with fastText's own stream loader (`FastText::loadModel`).
    /// Blocking (CPU, milliseconds for the examples' model). The bytes are checked first (fastText's loader
    /// trusts its input: a truncated file makes it loop or read out of bounds): `spawn_failed` naming
    /// `source` when they are not a complete, unquantised, unsupervised (skipgram or cbow) fastText model.
    static modelpool::result<FastTextEngine> load(std::string_view bytes, std::string_view source);

    FastTextEngine(FastTextEngine&&) noexcept;
    FastTextEngine& operator=(FastTextEngine&&) noexcept;
    ~FastTextEngine();

    /// Dimensions of every vector.
    std::size_t dimensions() const;

    /// Words in the model's vocabulary.
    std::size_t vocabulary_size() const;

    /// The sentence vector of `text` (`FastText::getSentenceVector` of `fasttext_normalize(text)`): the mean
    /// of the L2-normalised vectors of its words (a word outside the vocabulary gets the vector of its
    /// character n-grams). Not unit length: compare with cosine similarity. A text without any word (empty,
    /// only spaces or punctuation) has no sentence vector: `invalid_argument` (fastText itself would give the
    /// zero vector, which no cosine can rank). Blocking.
    modelpool::result<modelpool::Embedding> embed(std::string_view text);

    /// `embed` of each of `texts`, in order: the same vectors. The first text without a word fails the whole
    /// batch with `invalid_argument` naming its index. Blocking.
    modelpool::result<std::vector<modelpool::Embedding>> batch_embed(const std::vector<std::string>& texts);

private:
    struct Impl;
    explicit FastTextEngine(std::unique_ptr<Impl> impl);
    modelpool::result<modelpool::Embedding> embed_at(std::string_view text, std::optional<std::size_t> index);
    std::unique_ptr<Impl> impl_;
};

/// The modelpool model type: a text_embedding worker's own FastTextEngine (one per worker: see the engine's
/// thread safety).
///
/// Where each call runs is chosen by its cost. A sentence costs fastText about 15-20 us of CPU, while handing
/// a call to the blocking executor and back costs two thread wake-ups, 30-45 us on these machines
/// (bench/fasttext.cpp measured single embeds through blocking members at 0.2-0.5x of direct calls). So
/// `embed` is a coroutine that embeds a short text (up to `inline_text_bytes`) at once on the worker's io
/// thread, a bounded few tens of microseconds like any other coroutine step, and offloads a longer one;
/// `batch_embed` (milliseconds for a batch) is blocking and always runs on the blocking executor. Give the
/// pool as many io threads as the workers that should embed in parallel.
class FastTextEmbedder {
public:
    /// Longest text embedded inline on the io thread, in bytes (about 100 us of CPU at most); longer texts
    /// run on the blocking executor.
    static constexpr std::size_t inline_text_bytes = 512;

    /// Serves `engine`; `blocking` (the pool's blocking executor) runs the long texts.
    FastTextEmbedder(FastTextEngine engine, asio::thread_pool::executor_type blocking)
        : engine_(std::move(engine)), blocking_(std::move(blocking)) {}

    /// Dimensions of every vector.
    std::size_t dimensions() const { return engine_.dimensions(); }

    /// The sentence vector of `text` (see `FastTextEngine::embed`): inline when short, offloaded otherwise
    /// (see the class comment). `task` is accepted and ignored, as the demo n-gram embedder does: this model
    /// has no task instructions.
    asio::awaitable<modelpool::result<modelpool::Embedding>>
    embed(const std::string& text, const std::optional<std::string>& /*task*/) {
        if (text.size() <= inline_text_bytes) {
            co_return engine_.embed(text);
        }
        // The model and `text` outlive the offloaded call: the worker awaits it before anything else.
        auto offloaded = modelpool::offload(blocking_, [this, &text] { return engine_.embed(text); });
        co_return co_await std::move(offloaded);
    }

    /// One vector per text, in order (see `FastTextEngine::batch_embed`); `task` is ignored. Blocking: the
    /// pool runs it on its blocking executor.
    modelpool::result<std::vector<modelpool::Embedding>>
    batch_embed(const std::vector<std::string>& texts, const std::optional<std::string>& /*task*/) {
        return engine_.batch_embed(texts);
    }

private:
    FastTextEngine engine_;
    asio::thread_pool::executor_type blocking_;
};

/// Loads a FastTextEmbedder from the model file at `url`: fetches the bytes with `demo::http_get` on the
/// calling coroutine's executor (non-blocking), then runs `FastTextEngine::load` on `blocking` (the pool's
/// `blocking_executor()`) through `modelpool::offload`. Fails with `spawn_failed` naming the url.
asio::awaitable<modelpool::result<FastTextEmbedder>>
load_fasttext_embedder(asio::thread_pool::executor_type blocking, std::string url);

/// A loader for `pool.spawn_text_embedding_worker` and `pool.register_text_embedding_model`: a copyable
/// callable running `load_fasttext_embedder(pool.blocking_executor(), url)`. `pool` must outlive it.
inline auto fasttext_loader(modelpool::Pool& pool, std::string url) {
    return [blocking = pool.blocking_executor(),
            url = std::move(url)]() -> asio::awaitable<modelpool::result<FastTextEmbedder>> {
        return load_fasttext_embedder(blocking, url);
    };
}

} // namespace runtimes
