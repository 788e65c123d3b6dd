// bench/batching.cpp -> modelpool_bench_batching
//
// Dynamic batching (issue 15): what `ModelOptions::batching` gives a model whose batch call is cheaper per
// item than its single call, and what it costs at low load. Side by side in one run, each configuration on a
// fresh pool, rounds interleaved with the order rotating (off on delay, on delay off, delay off on, ...):
//
//   off        `max_batch_size = 1`: every request is one `embed` call;
//   on         `max_batch_size = B` (default 64), `max_queue_delay = 0` (the default policy);
//   on+delay   the same with `max_queue_delay = 2 ms`;
//
// and for each: 1 client sending N `embed` requests one after the other (p50 latency), then 64 client
// coroutines sending them back to back for S seconds (embeddings/s, mean batch size from the key's
// batch-size histogram, p50/p99 latency per request). Every reply is checked against the model's own
// single-call vector. The table gives the medians of the rounds, and each goal the median of the rounds' own
// comparisons.
//
// The model has an honest batch cost: a hashed bag of word and character-trigram features (F = 32768 inputs)
// projected through a fixed random weight matrix W (384 x F floats, 48 MiB: larger than the 32 MiB L3 of the
// Zen 5 core complex this VM runs on, so every call streams W from memory), then normalised. `embed` is one
// matrix-vector product, `batch_embed` ONE matrix-matrix product (Eigen, single-threaded: no OpenMP). Both
// are blocking functions, so the pool runs them on its blocking executor, as a real CPU model. Before the
// pool cases, one thread times B single calls against one batch of B: the ceiling of what batching gives.
//
// Last, heap allocations per request in steady state (a replaced global operator new counts them, per
// thread role): sequential unbatched `embed` awaited with `asio::use_awaitable` on a trivial model whose only
// allocation is its reply vector; plus context rows (a coroutine model, a `use_future` caller, batching on).
//
//   modelpool_bench_batching [--quick] [--rounds R] [--seconds S] [--sequential N] [--clients C]
//                            [--workers W] [--batch B]
//
// Prints a markdown table on stdout (progress on stderr). `--quick` (CTest's bench.batching) runs tiny
// counts with a smaller W and checks only that everything ran and answered correctly, never a timed goal.
// Full-run figures mean something only on a quiet machine: the header shows the load average at the start.

// GCC 12 reports a false -Wmaybe-uninitialized inside its own AVX-512 intrinsics as Eigen uses them (GCC bug
// 105593, fixed in 12.3). Included first, here, so that the pragma covers the intrinsics' headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <Eigen/Dense>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <modelpool/modelpool.hpp>

#include <boost/asio/use_future.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/null_sink.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <time.h>

// ---- allocation counting
// ------------------------------------------------------------------------------------
//
// Every operator new of the process goes through count_allocation: a global counter and one per thread role
// (a thread says what it is the first time it runs benchmark code), and, while `alloc_sample` is on, the
// sizes of the allocations for the breakdown of one request.

namespace alloc_count {

enum role : int { main_thread = 0, io_thread = 1, blocking_thread = 2, other_thread = 3, roles = 4 };
constexpr std::array<std::string_view, roles> role_names{"main", "io", "blocking", "other"};

std::array<std::atomic<std::uint64_t>, roles> by_role{};
thread_local int current_role = other_thread;

/// Called by the models: a thread not yet named that runs a model call is a blocking thread.
void mark_blocking() noexcept {
    if (current_role == other_thread) {
        current_role = blocking_thread;
    }
}

struct Sample {
    std::size_t size;
    int role;
};
constexpr std::size_t sample_capacity = 64;
std::atomic<bool> sampling{false};
std::array<Sample, sample_capacity> samples{};
std::atomic<std::size_t> sampled{0};

void count_allocation(std::size_t size) noexcept {
    by_role[static_cast<std::size_t>(current_role)].fetch_add(1, std::memory_order_relaxed);
    if (sampling.load(std::memory_order_relaxed)) {
        const auto i = sampled.fetch_add(1, std::memory_order_relaxed);
        if (i < sample_capacity) {
            samples[i] = {size, current_role};
        }
    }
}

std::array<std::uint64_t, roles> counts() {
    std::array<std::uint64_t, roles> out{};
    for (std::size_t i = 0; i < roles; ++i) {
        out[i] = by_role[i].load(std::memory_order_relaxed);
    }
    return out;
}

void* allocate(std::size_t size) noexcept {
    count_allocation(size);
    return std::malloc(size == 0 ? 1 : size);
}

void* allocate_aligned(std::size_t size, std::align_val_t align) noexcept {
    count_allocation(size);
    const auto a = static_cast<std::size_t>(align);
    return std::aligned_alloc(a, (std::max<std::size_t>(size, 1) + a - 1) / a * a);
}

// Out of line: GCC would otherwise see `free` on a pointer from `operator new` (-Wmismatched-new-delete).
[[gnu::noinline]] void release(void* p) noexcept {
    std::free(p);
}

} // namespace alloc_count

void* operator new(std::size_t size) {
    if (void* p = alloc_count::allocate(size)) {
        return p;
    }
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
    if (void* p = alloc_count::allocate(size)) {
        return p;
    }
    throw std::bad_alloc();
}
void* operator new(std::size_t size, const std::nothrow_t&) noexcept {
    return alloc_count::allocate(size);
}
void* operator new[](std::size_t size, const std::nothrow_t&) noexcept {
    return alloc_count::allocate(size);
}
void* operator new(std::size_t size, std::align_val_t align) {
    if (void* p = alloc_count::allocate_aligned(size, align)) {
        return p;
    }
    throw std::bad_alloc();
}
void* operator new[](std::size_t size, std::align_val_t align) {
    if (void* p = alloc_count::allocate_aligned(size, align)) {
        return p;
    }
    throw std::bad_alloc();
}
void* operator new(std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
    return alloc_count::allocate_aligned(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align, const std::nothrow_t&) noexcept {
    return alloc_count::allocate_aligned(size, align);
}
void operator delete(void* p) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p) noexcept {
    alloc_count::release(p);
}
void operator delete(void* p, std::size_t) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    alloc_count::release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    alloc_count::release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
    alloc_count::release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    alloc_count::release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    alloc_count::release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    alloc_count::release(p);
}

namespace {

namespace asio = modelpool::asio;
using modelpool::Embedding;
using modelpool::result;
using clock_type = std::chrono::steady_clock;
using std::chrono::microseconds;

constexpr std::string_view key = "embedder";

struct Settings {
    bool quick = false;
    std::size_t rounds = 5;
    double seconds = 2.0;
    std::size_t sequential = 300;
    std::size_t clients = 64;
    std::size_t workers = 2;
    std::size_t batch = 64;
    std::size_t features = 32768;
    std::size_t dims = 384;
    std::size_t alloc_requests = 20000;
};

double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

/// The process's CPU time (all threads) in seconds.
double cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

double median(std::vector<double> values) {
    if (values.empty()) {
        return 0;
    }
    std::sort(values.begin(), values.end());
    const auto n = values.size();
    return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/// The q-quantile of `values` (nearest rank), sorting them.
double quantile(std::vector<double>& values, double q) {
    if (values.empty()) {
        return 0;
    }
    std::sort(values.begin(), values.end());
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::clamp<std::size_t>(rank, 1, values.size()) - 1];
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return fmt::format("{} {} {}", one, five, fifteen);
}

// ---- the model
// ----------------------------------------------------------------------------------------------

/// 64-bit FNV-1a.
std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t h = 14695981039346656037ull;
    for (const char c : bytes) {
        h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    }
    return h;
}

/// Shared, read-only: the weights every worker copies when it loads (as if read from one file).
using Weights = Eigen::MatrixXf;

std::shared_ptr<const Weights> make_weights(std::size_t dims, std::size_t features) {
    // Deterministic and cheap to generate (a uniform [-1, 1) LCG, scaled), not a statistical model.
    auto w = std::make_shared<Weights>(static_cast<Eigen::Index>(dims), static_cast<Eigen::Index>(features));
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    const float scale = 1.0f / std::sqrt(static_cast<float>(features));
    float* data = w->data();
    for (Eigen::Index i = 0; i < w->size(); ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        data[i] = (static_cast<float>(state >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f) * scale;
    }
    return w;
}

/// Hashed word and character-trigram features through W. One worker owns one instance: its weights (read
/// only) and its scratch buffers, so that `embed` allocates nothing but its reply.
class ProjectionEmbedder {
public:
    ProjectionEmbedder(std::shared_ptr<const Weights> weights, std::size_t max_batch)
        : weights_(std::move(weights)), x_(w().cols()), y_(w().rows()),
          xs_(w().cols(), static_cast<Eigen::Index>(max_batch)),
          ys_(w().rows(), static_cast<Eigen::Index>(max_batch)) {}

    [[nodiscard]] std::size_t dimensions() const { return static_cast<std::size_t>(w().rows()); }

    /// One text: one matrix-vector product.
    result<Embedding> embed(const std::string& text, const std::optional<std::string>& /*task*/) {
        alloc_count::mark_blocking();
        featurize(text, x_.data());
        y_.noalias() = w() * x_;
        return normalised(y_.data());
    }

    /// Several texts: ONE matrix-matrix product.
    result<std::vector<Embedding>> batch_embed(const std::vector<std::string>& texts,
                                               const std::optional<std::string>& /*task*/) {
        alloc_count::mark_blocking();
        const auto n = static_cast<Eigen::Index>(texts.size());
        if (n > xs_.cols()) { // more than the pool's max_batch_size (a direct caller): grow
            xs_.resize(xs_.rows(), n);
            ys_.resize(ys_.rows(), n);
        }
        for (Eigen::Index j = 0; j < n; ++j) {
            featurize(texts[static_cast<std::size_t>(j)], xs_.col(j).data());
        }
        ys_.leftCols(n).noalias() = w() * xs_.leftCols(n);
        std::vector<Embedding> out;
        out.reserve(texts.size());
        for (Eigen::Index j = 0; j < n; ++j) {
            out.push_back(normalised(ys_.col(j).data()));
        }
        return out;
    }

private:
    [[nodiscard]] const Weights& w() const { return *weights_; }

    /// Counts of hashed lowercase words and "<word>" character trigrams, scaled to unit length.
    void featurize(std::string_view text, float* x) const {
        const auto features = static_cast<std::size_t>(w().cols());
        std::fill(x, x + features, 0.0f);
        std::array<char, 64> word{};
        float total = 0;
        auto add = [&](std::string_view feature) {
            x[fnv1a(feature) % features] += 1.0f;
            total += 1.0f;
        };
        std::size_t i = 0;
        while (i < text.size()) {
            while (i < text.size() && text[i] == ' ') {
                ++i;
            }
            std::size_t n = 1;
            word[0] = '<';
            for (; i < text.size() && text[i] != ' '; ++i) {
                if (n < word.size() - 1) {
                    const auto c = static_cast<unsigned char>(text[i]);
                    word[n++] = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
                }
            }
            if (n == 1) {
                break;
            }
            word[n++] = '>';
            add(std::string_view(word.data(), n));
            for (std::size_t k = 0; k + 3 <= n; ++k) {
                add(std::string_view(word.data() + k, 3));
            }
        }
        if (total > 0) {
            const float inv = 1.0f / std::sqrt(total);
            for (std::size_t f = 0; f < features; ++f) {
                x[f] *= inv;
            }
        }
    }

    Embedding normalised(const float* y) const {
        const auto d = static_cast<std::size_t>(w().rows());
        float norm = 0;
        for (std::size_t k = 0; k < d; ++k) {
            norm += y[k] * y[k];
        }
        const float inv = norm > 0 ? 1.0f / std::sqrt(norm) : 0.0f;
        Embedding out(d);
        for (std::size_t k = 0; k < d; ++k) {
            out[k] = y[k] * inv;
        }
        return out;
    }

    std::shared_ptr<const Weights> weights_;
    Eigen::VectorXf x_, y_;
    Eigen::MatrixXf xs_, ys_;
};

/// A trivial blocking embedder for the allocation count: its only allocation is the reply.
struct TinyEmbedder {
    std::size_t dims = 16;
    result<Embedding> embed(const std::string& text, const std::optional<std::string>& /*task*/) {
        alloc_count::mark_blocking();
        return Embedding(dims, static_cast<float>(text.size()));
    }
    result<std::vector<Embedding>> batch_embed(const std::vector<std::string>& texts,
                                               const std::optional<std::string>& /*task*/) {
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.emplace_back(dims, static_cast<float>(text.size()));
        }
        return out;
    }
};

/// The same as a coroutine model: runs on the io thread, no hop to the blocking executor.
struct TinyCoroutineEmbedder {
    std::size_t dims = 16;
    asio::awaitable<result<Embedding>> embed(const std::string& text, const std::optional<std::string>&) {
        co_return Embedding(dims, static_cast<float>(text.size()));
    }
    asio::awaitable<result<std::vector<Embedding>>> batch_embed(const std::vector<std::string>& texts,
                                                                const std::optional<std::string>&) {
        std::vector<Embedding> out;
        for (const auto& text : texts) {
            out.emplace_back(dims, static_cast<float>(text.size()));
        }
        co_return out;
    }
};

/// Sentences made of a small vocabulary, each distinct; their single-call vectors are the expected replies.
std::vector<std::string> make_texts(std::size_t count) {
    static constexpr std::array<std::string_view, 24> words{
        "the",    "pool",   "keeps",   "models", "loaded",  "and",   "serves",     "requests",
        "from",   "many",   "clients", "while",  "batches", "form",  "under",      "load",
        "vector", "search", "query",   "index",  "fast",    "quiet", "throughput", "latency"};
    std::vector<std::string> texts;
    std::uint64_t state = 42;
    for (std::size_t i = 0; i < count; ++i) {
        std::string text = fmt::format("sentence {}", i);
        for (int w = 0; w < 8; ++w) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            text += ' ';
            text += words[(state >> 33) % words.size()];
        }
        texts.push_back(std::move(text));
    }
    return texts;
}

/// True when `got` is `want` up to float rounding (a batch's matrix product sums in another order).
bool same_vector(const Embedding& got, const Embedding& want) {
    if (got.size() != want.size()) {
        return false;
    }
    for (std::size_t k = 0; k < got.size(); ++k) {
        if (std::abs(got[k] - want[k]) > 1e-4f) {
            return false;
        }
    }
    return true;
}

// ---- the ceiling, outside the pool
// --------------------------------------------------------------------------

struct Ceiling {
    double single_ms = 0; ///< 64 single calls, in total.
    double batch_ms = 0;  ///< One batch of 64.
};

Ceiling measure_ceiling(const std::shared_ptr<const Weights>& weights, const std::vector<std::string>& texts,
                        std::size_t batch, std::size_t repetitions) {
    ProjectionEmbedder model(weights, batch);
    const std::vector<std::string> group(texts.begin(), texts.begin() + static_cast<std::ptrdiff_t>(batch));
    std::vector<double> singles, batches;
    for (std::size_t r = 0; r < repetitions + 1; ++r) { // the first repetition warms up
        auto start = clock_type::now();
        for (const auto& text : group) {
            if (!model.embed(text, std::nullopt)) {
                throw std::runtime_error("a direct embed failed");
            }
        }
        const double single = seconds_since(start) * 1e3;
        start = clock_type::now();
        if (!model.batch_embed(group, std::nullopt)) {
            throw std::runtime_error("a direct batch_embed failed");
        }
        const double batched = seconds_since(start) * 1e3;
        if (r > 0) {
            singles.push_back(single);
            batches.push_back(batched);
        }
    }
    return {median(singles), median(batches)};
}

// ---- pool cases
// ---------------------------------------------------------------------------------------------

struct Config {
    std::string name;
    modelpool::BatchingOptions batching;
};

/// The figures of one configuration in one round.
struct Round {
    double alt_p50_ms = 0; ///< 1 client, the keys alternating in one pool.
    double seq_p50_ms = 0; ///< 1 client, on the configuration's own pool.
    double per_s = 0;
    double per_cpu_s = 0;
    double mean_batch = 0;  ///< Requests per model call (0: the histogram is empty, batching off).
    double alone_share = 0; ///< Requests served alone, as a fraction of all.
    double p50_ms = 0;
    double p99_ms = 0;
};

/// One registered key of a BenchPool.
struct KeySpec {
    std::string name;
    modelpool::BatchingOptions batching;
    std::size_t workers;
};

/// A pool (1 io thread) with registered embedding keys whose workers are all loaded (waited for through
/// `on_worker_event`, bounded) before the constructor returns.
template <class Loader> struct BenchPool {
    BenchPool(std::size_t blocking_threads, std::size_t queue_capacity, std::size_t per_worker_mb,
              const Loader& loader, const std::vector<KeySpec>& keys) {
        std::size_t workers = 0;
        for (const auto& k : keys) {
            workers += k.workers;
        }
        auto loaded = std::make_shared<Loaded>();
        pool.emplace(modelpool::PoolOptions{
            .io_threads = 1,
            .blocking_threads = blocking_threads,
            .memory_limit_mb = workers * per_worker_mb,
            .queue_capacity = queue_capacity,
            .logger = std::make_shared<spdlog::logger>("batching-bench",
                                                       std::make_shared<spdlog::sinks::null_sink_mt>()),
            .on_worker_event =
                [loaded](const modelpool::WorkerEvent& event) {
                    if (event.kind == modelpool::WorkerEventKind::loaded ||
                        event.kind == modelpool::WorkerEventKind::failed) {
                        std::lock_guard lock(loaded->mutex);
                        ++(event.kind == modelpool::WorkerEventKind::loaded ? loaded->ok : loaded->failed);
                        loaded->changed.notify_all();
                    }
                },
        });
        for (const auto& k : keys) {
            auto registered = pool->register_text_embedding_model(k.name, loader,
                                                                  {.per_worker_mb = per_worker_mb,
                                                                   .min_workers = k.workers,
                                                                   .max_workers = k.workers,
                                                                   .batching = k.batching});
            if (!registered) {
                throw std::runtime_error("register: " + registered.error().to_string());
            }
        }
        std::unique_lock lock(loaded->mutex);
        if (!loaded->changed.wait_for(lock, std::chrono::seconds(60),
                                      [&] { return loaded->ok + loaded->failed >= workers; }) ||
            loaded->failed > 0) {
            throw std::runtime_error("the workers did not load");
        }
    }
    ~BenchPool() { pool->stop(); }
    BenchPool(const BenchPool&) = delete;
    BenchPool& operator=(const BenchPool&) = delete;

    struct Loaded {
        std::mutex mutex;
        std::condition_variable changed;
        std::size_t ok = 0;
        std::size_t failed = 0;
    };
    std::optional<modelpool::Pool> pool;
};

/// What the clients of one phase measured.
struct Phase {
    std::vector<double> latencies_ms;
    std::size_t wrong = 0;
    std::size_t failed = 0;
    std::string first_error;
};

/// One client: `embed` requests back to back (text i, i + stride, ...) until `deadline` or `count` requests,
/// to the keys in turn (request n to keys[n % size], its figures in outs[n % size]).
asio::awaitable<void> client(modelpool::Pool& pool, const std::vector<std::string>& keys,
                             const std::vector<std::string>& texts, const std::vector<Embedding>& expected,
                             std::size_t first, std::size_t stride, clock_type::time_point deadline,
                             std::size_t count, std::vector<Phase>& outs) {
    alloc_count::current_role = alloc_count::io_thread;
    for (std::size_t i = first, n = 0; n < count && clock_type::now() < deadline; i += stride, ++n) {
        const auto index = i % texts.size();
        auto& out = outs[n % keys.size()];
        const auto start = clock_type::now();
        auto reply = co_await pool.embed(keys[n % keys.size()], texts[index], asio::use_awaitable);
        out.latencies_ms.push_back(seconds_since(start) * 1e3);
        if (!reply) {
            if (out.failed++ == 0) {
                out.first_error = reply.error().to_string();
            }
        } else if (!same_vector(*reply, expected[index])) {
            ++out.wrong;
        }
    }
}

/// `clients` clients on the pool's io thread, each sending `count` requests to `keys` in turn; per key, the
/// clients' figures merged.
std::vector<Phase> run_clients(modelpool::Pool& pool, const std::vector<std::string>& keys,
                               const std::vector<std::string>& texts, const std::vector<Embedding>& expected,
                               std::size_t clients, double seconds, std::size_t count) {
    std::vector<std::vector<Phase>> phases(clients, std::vector<Phase>(keys.size()));
    const auto deadline = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                  std::chrono::duration<double>(seconds));
    std::vector<std::future<void>> running;
    for (std::size_t c = 0; c < clients; ++c) {
        for (auto& phase : phases[c]) {
            phase.latencies_ms.reserve(count < 100'000 ? count : 100'000);
        }
        running.push_back(
            asio::co_spawn(pool.get_executor(),
                           client(pool, keys, texts, expected, c * 7, clients, deadline, count, phases[c]),
                           asio::use_future));
    }
    for (auto& r : running) {
        r.get();
    }
    std::vector<Phase> all(keys.size());
    for (auto& per_client : phases) {
        for (std::size_t k = 0; k < keys.size(); ++k) {
            auto& p = per_client[k];
            all[k].latencies_ms.insert(all[k].latencies_ms.end(), p.latencies_ms.begin(),
                                       p.latencies_ms.end());
            all[k].wrong += p.wrong;
            if (p.failed > 0 && all[k].failed == 0) {
                all[k].first_error = p.first_error;
            }
            all[k].failed += p.failed;
        }
    }
    return all;
}

/// The same for one key.
Phase run_clients(modelpool::Pool& pool, const std::vector<std::string>& texts,
                  const std::vector<Embedding>& expected, std::size_t clients, double seconds,
                  std::size_t count) {
    return std::move(run_clients(pool, {std::string(key)}, texts, expected, clients, seconds, count).front());
}

void check(const Phase& phase, const std::string& what) {
    if (phase.failed > 0 || phase.wrong > 0 || phase.latencies_ms.empty()) {
        throw std::runtime_error(fmt::format("{}: {} requests failed ({}), {} wrong replies, {} answered",
                                             what, phase.failed, phase.first_error, phase.wrong,
                                             phase.latencies_ms.size()));
    }
}

Round run_round(const Settings& s, const Config& config, const std::shared_ptr<const Weights>& weights,
                const std::vector<std::string>& texts, const std::vector<Embedding>& expected) {
    const std::size_t per_worker_mb =
        (static_cast<std::size_t>(weights->size()) * sizeof(float) * 5 / 4 >> 20) + 16;
    auto loader = [weights, batch = s.batch]() -> asio::awaitable<result<ProjectionEmbedder>> {
        // Each worker loads its own copy of W, as from a file.
        co_return ProjectionEmbedder(std::make_shared<const Weights>(*weights), batch);
    };
    BenchPool<decltype(loader)> bench(s.workers, std::max<std::size_t>(1024, s.clients), per_worker_mb,
                                      loader, {{std::string(key), config.batching, s.workers}});
    auto& pool = *bench.pool;
    Round round;

    // 1 sequential client.
    auto seq = run_clients(pool, texts, expected, 1, 600, s.sequential / 10); // warm-up
    seq = run_clients(pool, texts, expected, 1, 600, s.sequential);
    check(seq, config.name + ", 1 client");
    round.seq_p50_ms = quantile(seq.latencies_ms, 0.5);

    // 64 concurrent clients.
    run_clients(pool, texts, expected, s.clients, s.seconds / 10, SIZE_MAX); // warm-up
    const auto before = pool.snapshot(key)->batch_size;
    const double cpu_start = cpu_seconds();
    const auto start = clock_type::now();
    auto many = run_clients(pool, texts, expected, s.clients, s.seconds, SIZE_MAX);
    const double wall = seconds_since(start);
    const double cpu = cpu_seconds() - cpu_start;
    const auto after = pool.snapshot(key)->batch_size;
    check(many, fmt::format("{}, {} clients", config.name, s.clients));
    const auto answered = static_cast<double>(many.latencies_ms.size());
    round.per_s = answered / wall;
    round.per_cpu_s = answered / cpu;
    const auto calls = static_cast<double>(after.count - before.count);
    const double requests = after.sum - before.sum;
    round.mean_batch = calls > 0 ? requests / calls : 0;
    round.alone_share = requests > 0 ? static_cast<double>(after.counts[0] - before.counts[0]) / requests : 1;
    round.p50_ms = quantile(many.latencies_ms, 0.5);
    round.p99_ms = quantile(many.latencies_ms, 0.99);
    return round;
}

/// Low load, paired: one pool with one key per configuration (one worker each, all three sharing one copy of
/// W), and 1 client sending its requests to the keys in turn, so that the configurations are compared
/// request by request, on the same weights in memory. The p50 latency of each configuration's requests.
std::vector<double> run_low_load(const Settings& s, const std::vector<Config>& configs,
                                 const std::shared_ptr<const Weights>& weights,
                                 const std::vector<std::string>& texts,
                                 const std::vector<Embedding>& expected) {
    const std::size_t per_worker_mb =
        (static_cast<std::size_t>(weights->size()) * sizeof(float) / 4 >> 20) + 16; // W counted once
    auto loader = [weights, batch = s.batch]() -> asio::awaitable<result<ProjectionEmbedder>> {
        co_return ProjectionEmbedder(weights, batch);
    };
    std::vector<KeySpec> specs;
    std::vector<std::string> keys;
    for (std::size_t c = 0; c < configs.size(); ++c) {
        keys.push_back(fmt::format("config{}", c));
        specs.push_back({keys.back(), configs[c].batching, 1});
    }
    BenchPool<decltype(loader)> bench(s.workers, 1024, per_worker_mb, loader, specs);
    run_clients(*bench.pool, keys, texts, expected, 1, 600, s.sequential * keys.size() / 10); // warm-up
    auto phases = run_clients(*bench.pool, keys, texts, expected, 1, 600, s.sequential * keys.size());
    std::vector<double> p50;
    for (std::size_t c = 0; c < configs.size(); ++c) {
        check(phases[c], configs[c].name + ", 1 client alternating");
        p50.push_back(quantile(phases[c].latencies_ms, 0.5));
    }
    return p50;
}

// ---- allocations per request
// --------------------------------------------------------------------------------

struct AllocRow {
    std::string what;
    double total = 0;
    std::array<double, alloc_count::roles> per_role{};
    std::vector<alloc_count::Sample> sample; ///< One request's allocations.
};

void start_sample(bool sample) {
    if (sample) {
        alloc_count::sampled = 0;
        alloc_count::sampling = true;
    }
}

/// Sequential requests on a 1-worker pool: `requests` warm up, `requests` are counted, then one is sampled.
template <class Model>
AllocRow count_allocations(const Settings& s, std::string what, Model model,
                           modelpool::BatchingOptions batching, bool use_future) {
    auto loader = [model]() -> asio::awaitable<result<Model>> { co_return model; };
    BenchPool<decltype(loader)> bench(1, 1024, 1, loader, {{std::string(key), batching, 1}});
    auto& pool = *bench.pool;
    const std::string text =
        "short text"; // fits the small-string buffer: the caller's copy allocates nothing

    // `sample`: record the sizes of the last request's allocations (from its call to its reply).
    auto awaiting = [&](std::size_t requests, bool sample) {
        asio::co_spawn(
            pool.get_executor(),
            [&]() -> asio::awaitable<void> {
                alloc_count::current_role = alloc_count::io_thread;
                for (std::size_t i = 0; i < requests; ++i) {
                    start_sample(sample && i + 1 == requests);
                    auto reply = co_await pool.embed(key, text, asio::use_awaitable);
                    alloc_count::sampling = false;
                    if (!reply || reply->size() != model.dims) {
                        throw std::runtime_error("a counted request failed");
                    }
                }
            },
            asio::use_future)
            .get();
    };
    auto blocking = [&](std::size_t requests, bool sample) {
        alloc_count::current_role = alloc_count::main_thread;
        for (std::size_t i = 0; i < requests; ++i) {
            start_sample(sample && i + 1 == requests);
            auto reply = pool.embed(key, text, asio::use_future).get();
            alloc_count::sampling = false;
            if (!reply || reply->size() != model.dims) {
                throw std::runtime_error("a counted request failed");
            }
        }
    };
    auto run = [&](std::size_t requests, bool sample = false) {
        use_future ? blocking(requests, sample) : awaiting(requests, sample);
    };

    run(s.alloc_requests); // steady state: every cache and free list filled
    // The window's own bookkeeping (spawning the client coroutine, its future) is one-off: measured apart.
    const auto base0 = alloc_count::counts();
    run(0);
    const auto base1 = alloc_count::counts();
    run(s.alloc_requests);
    const auto end = alloc_count::counts();
    AllocRow row{std::move(what), 0, {}, {}};
    for (std::size_t r = 0; r < alloc_count::roles; ++r) {
        const double overhead = static_cast<double>(base1[r] - base0[r]);
        row.per_role[r] =
            (static_cast<double>(end[r] - base1[r]) - overhead) / static_cast<double>(s.alloc_requests);
        row.total += row.per_role[r];
    }
    run(100, true);
    row.sample.assign(
        alloc_count::samples.begin(),
        alloc_count::samples.begin() +
            static_cast<std::ptrdiff_t>(std::min(alloc_count::sampled.load(), alloc_count::sample_capacity)));
    return row;
}

std::string describe_sample(const AllocRow& row) {
    std::string out;
    for (const auto& a : row.sample) {
        out += fmt::format("{}{} {} B", out.empty() ? "" : ", ",
                           alloc_count::role_names[static_cast<std::size_t>(a.role)], a.size);
    }
    return out.empty() ? "none" : out;
}

// ---- main
// ---------------------------------------------------------------------------------------------------

bool parse(int argc, char** argv, Settings& s) {
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--quick") {
            s.quick = true;
            s.rounds = 1;
            s.seconds = 0.2;
            s.sequential = 20;
            s.features = 4096;
            s.alloc_requests = 500;
        } else if (arg == "--rounds" && has_value) {
            s.rounds = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--seconds" && has_value) {
            s.seconds = std::strtod(argv[++i], nullptr);
        } else if (arg == "--sequential" && has_value) {
            s.sequential = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--clients" && has_value) {
            s.clients = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--workers" && has_value) {
            s.workers = std::strtoul(argv[++i], nullptr, 10);
        } else if (arg == "--batch" && has_value) {
            s.batch = std::strtoul(argv[++i], nullptr, 10);
        } else {
            return false;
        }
    }
    return s.rounds >= 1 && s.rounds <= 100 && s.seconds > 0 && s.seconds <= 600 && s.sequential >= 10 &&
           s.sequential <= 1'000'000 && s.clients >= 1 && s.clients <= 4096 && s.workers >= 1 &&
           s.workers <= 64 && s.batch >= 2 && s.batch <= 4096;
}

const char* verdict(bool met) {
    return met ? "met" : "**missed**";
}

int run(const Settings& s) {
    const auto load = load_average();
    alloc_count::current_role = alloc_count::main_thread;
    std::fprintf(stderr, "weights: %zu x %zu floats (%.1f MiB)...\n", s.dims, s.features,
                 static_cast<double>(s.dims * s.features * sizeof(float)) / (1 << 20));
    const auto weights = make_weights(s.dims, s.features);
    const auto texts = make_texts(1024);
    std::vector<Embedding> expected;
    {
        ProjectionEmbedder reference(weights, s.batch);
        for (const auto& text : texts) {
            expected.push_back(*reference.embed(text, std::nullopt));
        }
        // The batch call gives the single calls' vectors (the model itself is right before the pool is
        // tried).
        const std::vector<std::string> group(texts.begin(),
                                             texts.begin() + static_cast<std::ptrdiff_t>(s.batch));
        const auto batched = reference.batch_embed(group, std::nullopt);
        for (std::size_t i = 0; i < group.size(); ++i) {
            if (!batched || !same_vector((*batched)[i], expected[i])) {
                throw std::runtime_error("batch_embed differs from embed");
            }
        }
    }

    std::fprintf(stderr, "the ceiling: %zu single calls vs one batch of %zu...\n", s.batch, s.batch);
    const auto ceiling = measure_ceiling(weights, texts, s.batch, s.quick ? 1 : 7);

    const std::vector<Config> configs{
        {"off", {.max_batch_size = 1}},
        {fmt::format("on ({})", s.batch), {.max_batch_size = s.batch}},
        {fmt::format("on ({}), 2 ms delay", s.batch),
         {.max_batch_size = s.batch, .max_queue_delay = microseconds(2000)}},
    };
    std::vector<std::vector<Round>> rounds(configs.size()); // [configuration][round]
    for (std::size_t r = 0; r < s.rounds; ++r) {
        // The order rotates (A B C, B C A, C A B, ...): no configuration always follows the same one.
        for (std::size_t k = 0; k < configs.size(); ++k) {
            const std::size_t c = (r + k) % configs.size();
            const auto round = run_round(s, configs[c], weights, texts, expected);
            std::fprintf(stderr,
                         "round %zu %-22s 1 client p50 %.3f ms | %zu clients %.0f/s (%.0f/CPU-s), mean batch "
                         "%.2f, p50 %.2f ms, p99 %.2f ms\n",
                         r + 1, configs[c].name.c_str(), round.seq_p50_ms, s.clients, round.per_s,
                         round.per_cpu_s, round.mean_batch, round.p50_ms, round.p99_ms);
            rounds[c].push_back(round);
        }
        const auto alternating = run_low_load(s, configs, weights, texts, expected);
        for (std::size_t c = 0; c < configs.size(); ++c) {
            rounds[c].back().alt_p50_ms = alternating[c];
        }
        std::fprintf(stderr, "round %zu 1 client, keys in turn in one pool: p50 %.3f / %.3f / %.3f ms\n",
                     r + 1, alternating[0], alternating[1], alternating[2]);
    }
    auto med = [&](std::size_t c, double Round::*field) {
        std::vector<double> v;
        for (const auto& round : rounds[c]) {
            v.push_back(round.*field);
        }
        return median(v);
    };

    std::fprintf(stderr, "allocations...\n");
    const auto off = modelpool::BatchingOptions{.max_batch_size = 1};
    std::vector<AllocRow> allocs;
    allocs.push_back(count_allocations(s, "blocking model, `co_await pool.embed(..., use_awaitable)`",
                                       TinyEmbedder{}, off, false));
    allocs.push_back(
        count_allocations(s, "coroutine model, `use_awaitable`", TinyCoroutineEmbedder{}, off, false));
    allocs.push_back(
        count_allocations(s, "blocking model, `pool.embed(..., use_future).get()` from a plain thread",
                          TinyEmbedder{}, off, true));
    allocs.push_back(
        count_allocations(s, fmt::format("blocking model, `use_awaitable`, batching on ({})", s.batch),
                          TinyEmbedder{}, {.max_batch_size = s.batch}, false));
    // The model's own share: one direct call (its reply).
    TinyEmbedder tiny;
    const auto direct0 = alloc_count::counts();
    const auto direct_reply = tiny.embed("short text", std::nullopt);
    const auto direct1 = alloc_count::counts();
    double model_allocs = 0;
    for (std::size_t r = 0; r < alloc_count::roles; ++r) {
        model_allocs += static_cast<double>(direct1[r] - direct0[r]);
    }
    alloc_count::current_role = alloc_count::main_thread;

    // ---- the table
    // The goals compare configurations measured side by side: the median of the per-round comparisons (the
    // load of a shared machine drifts between rounds more than between neighbouring configurations).
    auto paired = [&](std::size_t a, std::size_t b, double Round::*field, bool ratio) {
        std::vector<double> v;
        for (std::size_t r = 0; r < s.rounds; ++r) {
            const double x = rounds[a][r].*field;
            const double y = rounds[b][r].*field;
            v.push_back(ratio ? x / y : x - y);
        }
        return median(v);
    };
    const double throughput_ratio = paired(1, 0, &Round::per_s, true);
    const double cpu_ratio = paired(1, 0, &Round::per_cpu_s, true);
    const double low_load_ratio = paired(1, 0, &Round::alt_p50_ms, true);
    const double delay_gap = paired(2, 1, &Round::alt_p50_ms, false);
    const double pool_allocs = allocs[0].total - model_allocs;
    auto goal = [&](std::string_view text, bool met) {
        return fmt::format("{}: {}", text, s.quick ? "not judged (--quick)" : verdict(met));
    };
    auto row = [](std::string_view what, std::string_view off, std::string_view on, std::string_view delayed,
                  std::string_view measured, std::string_view target) {
        fmt::print("| {} | {} | {} | {} | {} | {} |\n", what, off, on, delayed, measured, target);
    };
    // One figure of the three configurations, formatted.
    auto each = [&](double Round::*field, double scale, int decimals, std::string_view unit) {
        std::array<std::string, 3> out;
        for (std::size_t c = 0; c < out.size(); ++c) {
            out[c] = fmt::format("{:.{}f}{}", med(c, field) * scale, decimals, unit);
        }
        return out;
    };
    const auto clients = fmt::format("{} clients", s.clients);

    fmt::print(
        "Dynamic batching: a {} x {} float projection ({:.0f} MiB of weights per worker), {} workers, "
        "1 io thread, {} blocking threads; {} clients for {:.1f} s, 1 client for {} requests; {} "
        "rounds interleaved: medians, and for the goals the medians of the rounds' ratios{}; load average at "
        "start {}\n\n",
        s.dims, s.features, static_cast<double>(s.dims * s.features * sizeof(float)) / (1 << 20), s.workers,
        s.workers, s.clients, s.seconds, s.sequential, s.rounds,
        s.quick ? " (--quick: figures mean nothing)" : "", load);
    fmt::print("| case | off | on ({0}) | on ({0}), 2 ms delay | measured | goal |\n", s.batch);
    fmt::print("|---|---:|---:|---:|---|---|\n");
    row(fmt::format("ceiling, outside the pool: {0} single calls vs one batch of {0}, one thread", s.batch),
        fmt::format("{:.2f} ms", ceiling.single_ms), fmt::format("{:.2f} ms", ceiling.batch_ms), "",
        fmt::format("{:.2f}x", ceiling.single_ms / ceiling.batch_ms), "reported");
    auto v = each(&Round::per_s, 1, 0, "");
    row(clients + ", embeddings/s", v[0], v[1], v[2], fmt::format("on/off {:.2f}x", throughput_ratio),
        goal(">= 4x", throughput_ratio >= 4));
    v = each(&Round::per_cpu_s, 1, 0, "");
    row(clients + ", embeddings per CPU-second (all threads)", v[0], v[1], v[2],
        fmt::format("on/off {:.2f}x", cpu_ratio), "context");
    v = each(&Round::alt_p50_ms, 1, 3, " ms");
    row("1 sequential client, p50 latency (one pool, a key per configuration, requests to the keys in turn)",
        v[0], v[1], v[2], fmt::format("on/off {:.3f}x", low_load_ratio),
        goal("<= 1.1x", low_load_ratio <= 1.1));
    row("1 sequential client, p50: the default policy vs a 2 ms delay (the same)", "", v[1], v[2],
        fmt::format("default {:.3f} ms lower", delay_gap), goal(">= 2 ms lower", delay_gap >= 2.0));
    v = each(&Round::seq_p50_ms, 1, 3, " ms");
    row("1 sequential client, p50 latency, each configuration on its own fresh pool", v[0], v[1], v[2],
        fmt::format("on/off {:.3f}x; delay - on {:.3f} ms", paired(1, 0, &Round::seq_p50_ms, true),
                    paired(2, 1, &Round::seq_p50_ms, false)),
        "context (each pool's own copy of W: noisier)");
    v = each(&Round::mean_batch, 1, 2, "");
    row(clients + ", mean batch size (histogram sum / count)", "1 (not recorded)", v[1], v[2], "",
        "reported");
    v = each(&Round::alone_share, 100, 1, "%");
    row(clients + ", requests served alone (a batch of 1)", "100%", v[1], v[2], "", "context");
    v = each(&Round::p50_ms, 1, 2, " ms");
    row(clients + ", p50 latency", v[0], v[1], v[2], "", "reported");
    v = each(&Round::p99_ms, 1, 2, " ms");
    row(clients + ", p99 latency", v[0], v[1], v[2], "", "reported");
    row("heap allocations per request, steady state, unbatched `embed`, " + allocs[0].what,
        fmt::format("{:.2f}", allocs[0].total), "", "",
        fmt::format("{:.0f} the model's reply + {:.2f} the pool's", model_allocs, pool_allocs),
        goal("reported; goal 0 (the pool's)", pool_allocs < 0.5));
    fmt::print("\nAllocations per request by thread ({} sequential requests after as many to warm up; a "
               "trivial 16-float model; the caller's text fits the small-string buffer):\n\n",
               s.alloc_requests);
    fmt::print(
        "| caller and model | total | on the caller's thread | on the io thread | on the blocking thread | "
        "elsewhere | one request's allocations (thread, size) |\n");
    fmt::print("|---|---:|---:|---:|---:|---:|---|\n");
    for (const auto& row : allocs) {
        fmt::print("| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} |\n", row.what, row.total,
                   row.per_role[alloc_count::main_thread], row.per_role[alloc_count::io_thread],
                   row.per_role[alloc_count::blocking_thread], row.per_role[alloc_count::other_thread],
                   describe_sample(row));
    }
    if (!direct_reply || model_allocs < 1) {
        throw std::runtime_error(
            "the trivial model's reply was not counted: the operator new replacement is not "
            "in effect");
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    Settings settings;
    if (!parse(argc, argv, settings)) {
        std::fprintf(
            stderr,
            "usage: %s [--quick] [--rounds R] [--seconds S] [--sequential N] [--clients C] [--workers W] "
            "[--batch B]\n",
            argv[0]);
        return 2;
    }
    try {
        return run(settings);
    } catch (const std::exception& error) {
        std::fprintf(stderr, "modelpool_bench_batching failed: %s\n", error.what());
        return 1;
    }
}
