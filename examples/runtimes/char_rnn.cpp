// examples/runtimes/char_rnn.cpp
//
// The libtorch side of the char-level RNN runtime (see char_rnn.hpp): the only translation unit that includes
// libtorch's headers. Loads the TorchScript module, feeds it the prompt, samples one character at a time and
// holds back text that could still become a stop sequence.
#include "runtimes/char_rnn.hpp"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/script.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <system_error>
#include <utility>
#include <vector>

namespace runtimes {

namespace {

/// Prompt characters per forward pass: bounds a pass's transient memory (about 4.5 KB per character).
constexpr std::size_t prompt_slice = 256;

/// Intra-op threads: 1, set once for the whole process (see `CharRnnEngine::load`).
void limit_torch_threads() {
    static std::once_flag once;
    std::call_once(once, [] { at::set_num_threads(1); });
}

/// The index of the most likely character (the first among equals).
std::size_t argmax(const std::vector<float>& logits) {
    return static_cast<std::size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

/// Draws a character from softmax(logits / temperature) restricted to the nucleus of mass `top_p`.
std::size_t sample(const std::vector<float>& logits, double temperature, double top_p,
                   std::mt19937_64& random) {
    const double top = *std::max_element(logits.begin(), logits.end());
    std::vector<std::pair<double, std::size_t>> weighted(logits.size());
    double total = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        weighted[i] = {std::exp((logits[i] - top) / temperature), i}; // minus the max: no overflow
        total += weighted[i].first;
    }
    std::stable_sort(weighted.begin(), weighted.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    // Nucleus: the most likely characters that together hold top_p of the mass (at least one).
    double kept = 0.0;
    std::size_t size = 0;
    while (size < weighted.size() && (size == 0 || kept < top_p * total)) {
        kept += weighted[size++].first;
    }
    double pick = static_cast<double>(random() >> 11) * 0x1.0p-53 * kept;
    for (std::size_t i = 0; i < size; ++i) {
        pick -= weighted[i].first;
        if (pick < 0.0) {
            return weighted[i].second;
        }
    }
    return weighted[size - 1].second;
}

/// Where the held-back tail starts: the first position of `pending` from which the rest is a proper prefix
/// of some stop sequence (so it may still become one); `pending.size()` when none.
std::size_t hold_back_from(std::string_view pending, const std::vector<std::string>& stops) {
    for (std::size_t at = 0; at < pending.size(); ++at) {
        const auto rest = pending.substr(at);
        for (const auto& stop : stops) {
            if (stop.size() > rest.size() && std::string_view(stop).starts_with(rest)) {
                return at;
            }
        }
    }
    return pending.size();
}

/// The first position in `pending` where a (non-empty) stop sequence occurs; npos when none does.
std::size_t first_stop(std::string_view pending, const std::vector<std::string>& stops) {
    std::size_t first = std::string_view::npos;
    for (const auto& stop : stops) {
        if (!stop.empty()) {
            first = std::min(first, pending.find(stop));
        }
    }
    return first;
}

} // namespace

struct CharRnnEngine::Impl {
    std::filesystem::path path;
    torch::jit::Module module;
    std::string vocab;
    std::array<int, 256> index{}; // byte -> vocabulary index, -1 when not in the vocabulary

    /// Runs `ids` through the network from `state`; returns the logits after the last one and updates
    /// `state`.
    std::vector<float> step(const std::vector<std::int64_t>& ids, torch::Tensor& state) {
        const auto input = torch::from_blob(const_cast<std::int64_t*>(ids.data()),
                                            {1, static_cast<std::int64_t>(ids.size())}, torch::kInt64);
        auto out = module.forward({input, state}).toTuple();
        state = out->elements()[1].toTensor();
        const auto last =
            out->elements()[0].toTensor().select(0, 0).select(0, -1).contiguous().to(torch::kFloat);
        return {last.data_ptr<float>(), last.data_ptr<float>() + last.numel()};
    }
};

CharRnnEngine::CharRnnEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CharRnnEngine::CharRnnEngine(CharRnnEngine&&) noexcept = default;
CharRnnEngine& CharRnnEngine::operator=(CharRnnEngine&&) noexcept = default;
CharRnnEngine::~CharRnnEngine() = default;

const std::string& CharRnnEngine::vocabulary() const {
    return impl_->vocab;
}
const std::filesystem::path& CharRnnEngine::path() const {
    return impl_->path;
}

modelpool::result<CharRnnEngine> CharRnnEngine::load(const std::filesystem::path& path) {
    limit_torch_threads();
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
        return modelpool::fail(modelpool::errc::spawn_failed, "char RNN model {}: no such file",
                               path.string());
    }
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    try {
        impl->module = torch::jit::load(path.string());
        impl->module.eval();
        const auto vocab = impl->module.attr("vocab");
        if (!vocab.isString() || vocab.toStringRef().empty()) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "char RNN model {}: attribute 'vocab' is not a non-empty string",
                                   path.string());
        }
        impl->vocab = vocab.toStringRef();
        impl->index.fill(-1);
        for (std::size_t i = 0; i < impl->vocab.size(); ++i) {
            // One byte per token: the sampler emits vocab[i] as it is, and prompts are read byte by byte.
            const auto byte = static_cast<unsigned char>(impl->vocab[i]);
            if (byte >= 0x80 || impl->index[byte] >= 0) {
                return modelpool::fail(modelpool::errc::spawn_failed,
                                       "char RNN model {}: vocabulary byte {} at index {} is not ASCII or "
                                       "repeats (a vocabulary of distinct ASCII characters is expected)",
                                       path.string(), static_cast<int>(byte), i);
            }
            impl->index[byte] = static_cast<int>(i);
        }
        // One step checks the interface: initial_state(), forward(ids, state) -> (logits, state).
        c10::InferenceMode inference;
        auto state = impl->module.get_method("initial_state")(std::vector<c10::IValue>{}).toTensor();
        const auto logits = impl->step({0}, state);
        if (logits.size() != impl->vocab.size()) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "char RNN model {}: forward gives {} logits for a vocabulary of {}",
                                   path.string(), logits.size(), impl->vocab.size());
        }
    } catch (const std::exception& error) { // c10::Error: not a TorchScript archive, missing member...
        std::string what = error.what();
        what = what.substr(0, what.find('\n')); // c10 appends a C++ backtrace: keep the message
        return modelpool::fail(modelpool::errc::spawn_failed, "char RNN model {}: cannot load: {}",
                               path.string(), what);
    }
    return CharRnnEngine(std::move(impl));
}

modelpool::result<void> CharRnnEngine::validate(const modelpool::GenerationParams& params) {
    if (!std::isfinite(params.temperature) || params.temperature < 0.0) {
        return modelpool::fail(modelpool::errc::invalid_argument,
                               "temperature must be a finite number >= 0 (got {})", params.temperature);
    }
    if (!(params.top_p > 0.0 && params.top_p <= 1.0)) {
        return modelpool::fail(modelpool::errc::invalid_argument, "top_p must be in (0, 1] (got {})",
                               params.top_p);
    }
    return {};
}

modelpool::result<CharRnnRun> CharRnnEngine::generate(const std::string& prompt,
                                                      const modelpool::GenerationParams& params,
                                                      const std::function<bool(std::string_view)>& emit) {
    if (auto valid = validate(params); !valid) {
        return modelpool::unexpected(valid.error());
    }
    const auto started = std::chrono::steady_clock::now();
    CharRnnRun run;
    run.stats.finish_reason = "length";
    try {
        // Thread-local, so set on this (blocking) thread for this call: no autograd records, no version
        // counts.
        c10::InferenceMode inference;
        std::vector<std::int64_t> context;
        for (char c : prompt) {
            if (const int id = impl_->index[static_cast<unsigned char>(c)]; id >= 0) {
                context.push_back(id);
            }
        }
        if (context.size() > char_rnn_max_context) {
            context.erase(context.begin(), context.end() - static_cast<std::ptrdiff_t>(char_rnn_max_context));
        }
        if (context.empty()) {
            const int newline = impl_->index[static_cast<unsigned char>('\n')];
            context.push_back(newline >= 0 ? newline : 0);
        }
        std::mt19937_64 random(params.seed ? *params.seed : std::random_device{}());
        auto state = impl_->module.get_method("initial_state")(std::vector<c10::IValue>{}).toTensor();
        // The prompt in slices: the state carries over, and the transient activations of one pass stay small.
        std::vector<float> logits;
        for (std::size_t at = 0; at < context.size(); at += prompt_slice) {
            const auto end =
                context.begin() + static_cast<std::ptrdiff_t>(std::min(context.size(), at + prompt_slice));
            logits = impl_->step({context.begin() + static_cast<std::ptrdiff_t>(at), end}, state);
        }

        std::string pending; // sampled text not emitted yet (it may still become a stop sequence)
        while (run.sampled < params.max_tokens) {
            const std::size_t next = params.temperature <= 0.0
                                         ? argmax(logits)
                                         : sample(logits, params.temperature, params.top_p, random);
            ++run.sampled;
            pending += impl_->vocab[next];
            if (const auto stop = first_stop(pending, params.stop); stop != std::string::npos) {
                pending.resize(stop);
                run.stats.finish_reason = "stop";
                break;
            }
            if (const auto held = hold_back_from(pending, params.stop); held > 0) {
                run.stats.token_count += held;
                if (!emit(std::string_view(pending).substr(0, held))) {
                    run.reader_left = true;
                    break;
                }
                pending.erase(0, held);
            }
            if (run.sampled < params.max_tokens) { // no step after the last character
                logits = impl_->step({static_cast<std::int64_t>(next)}, state);
            }
        }
        if (!run.reader_left && !pending.empty()) { // before a stop, or a tail that never completed one
            run.stats.token_count += pending.size();
            run.reader_left = !emit(pending);
        }
    } catch (const std::exception& error) {
        std::string what = error.what();
        return modelpool::fail(modelpool::errc::model_error, "char RNN {}: {}", impl_->path.string(),
                               what.substr(0, what.find('\n')));
    }
    run.stats.elapsed_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    run.stats.tokens_per_second = run.stats.elapsed_seconds > 0
                                      ? static_cast<double>(run.stats.token_count) / run.stats.elapsed_seconds
                                      : 0.0;
    return run;
}

CharRnnGenerator::CharRnnGenerator(CharRnnEngine engine, std::shared_ptr<CharRnnCounters> counters)
    : engine_(std::move(engine)),
      counters_(counters ? std::move(counters) : std::make_shared<CharRnnCounters>()) {}

modelpool::result<void> CharRnnGenerator::prompt(const std::string& prompt,
                                                 const modelpool::GenerationParams& params,
                                                 modelpool::ChunkSink<modelpool::CompletionChunk>& sink) {
    auto run = engine_.generate(prompt, params, [&sink](std::string_view text) {
        return sink.send_blocking(modelpool::TextChunk{std::string(text)});
    });
    if (!run) {
        return modelpool::unexpected(run.error());
    }
    counters_->generations.fetch_add(1, std::memory_order_relaxed);
    counters_->sampled.fetch_add(run->sampled, std::memory_order_relaxed);
    if (run->reader_left) {
        counters_->abandoned.fetch_add(1, std::memory_order_relaxed);
        return {}; // nobody reads the stats
    }
    sink.send_blocking(std::move(run->stats));
    return {};
}

modelpool::asio::awaitable<modelpool::result<CharRnnGenerator>>
load_char_rnn(modelpool::asio::thread_pool::executor_type blocking, std::filesystem::path path,
              std::shared_ptr<CharRnnCounters> counters) {
    auto load = [&path] { return CharRnnEngine::load(path); };
    auto engine = co_await modelpool::offload(blocking, std::move(load));
    if (!engine) {
        co_return modelpool::unexpected(engine.error());
    }
    co_return CharRnnGenerator(std::move(*engine), std::move(counters));
}

} // namespace runtimes
