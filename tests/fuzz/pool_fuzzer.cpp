// libFuzzer target: the reliability suite's interpreter of operation sequences (`run_sequence` in
// tests/support/reliability.hpp: register/spawn, requests of every capability with injected model faults,
// cancellation, abandoned streams, clock steps with maintenance, ensure_workers, loader fault toggles, stop),
// with every choice decoded from the input bytes instead of a seeded RNG, and the same invariant checks after
// the sequence (every request ends exactly once with its own reply, memory accounting, worker maxima, event
// order, nothing outlives stop()). A violated invariant prints the check, the step and the sequence of
// operations the input decoded to, then aborts, so that libFuzzer saves the input as a crash file. Built with
// -fsanitize=fuzzer,address (not undefined: clang 14 cannot compile coroutines with it).
//
// Input format: each choice among n options takes one byte (n <= 256) or two (larger n, big endian), modulo
// n. The first bytes configure the pool (memory limit, queue capacity, ...) and the five keys' capabilities;
// the sequence ends when the input does, or after its step count (60 + a choice of 60).
//
// Build (clang with libclang-rt-14-dev): cmake --preset clang -DMODELPOOL_BUILD_FUZZERS=ON, then
// cmake --build --preset clang --target modelpool_pool_fuzzer. CTest runs a bounded smoke run (test
// fuzz.pool, label fuzz, tests/fuzz/run_fuzzer.cmake). Longer, into a scratch corpus seeded from the
// committed one (the first directory is where libFuzzer writes new inputs; keep tests/fuzz/corpus/ for
// hand-picked seeds):
//
//     mkdir -p /tmp/pool-corpus
//     build/clang/bin/modelpool_pool_fuzzer -max_total_time=600 -max_len=512 -timeout=60 \
//         /tmp/pool-corpus tests/fuzz/corpus
//
// (or `build/clang/bin/modelpool_pool_fuzzer -max_total_time=600 tests/fuzz/corpus` to grow the committed
// corpus itself). Add -jobs=N -workers=N for parallel runs. A failure leaves crash-<sha1> (or timeout-/leak-)
// in the working directory (-artifact_prefix=DIR/ to put it elsewhere); replay it, printing its sequence:
//
//     build/clang/bin/modelpool_pool_fuzzer crash-<sha1>
//
// Failures may depend on timing: `-runs=20 crash-<sha1>` replays it 20 times (stopping at the first failure),
// and `-minimize_crash=1 -runs=2000 crash-<sha1>` looks for a shorter input that fails the same way.
//
// MODELPOOL_FUZZ_TRACE=1 prints each input's operation sequence also when it passes. The pool runs its own io
// and blocking threads, so an input does not always take the same interleaving (the number of pending
// requests a cancel step chooses from, for one): libFuzzer's coverage is noisy, and a crash may need a few
// replays.
//
// tests/fuzz/corpus/register-after-direct-spawn is the first defect it found (register_*_model adopted
// workers spawned directly on the key, which then exceeded its max_workers; now refused with
// invalid_argument).
#define MODELPOOL_RELIABILITY_ABORT_CHECKS 1
#include "support/reliability.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

/// The step source of `run_sequence`: choices decoded from the fuzzer's input.
class ByteSteps {
public:
    ByteSteps(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

    /// A choice in [0, n): one byte for n <= 256, two otherwise; 0 once the input is used up.
    std::uint64_t pick(std::uint64_t n) {
        std::uint64_t value = 0;
        for (int i = n <= 256 ? 1 : 2; i > 0; --i) {
            value = value << 8U | (pos_ < size_ ? data_[pos_++] : 0U);
        }
        return value % n;
    }

    /// False once the input is used up: the sequence ends.
    [[nodiscard]] bool more() const { return pos_ < size_; }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

std::vector<std::string>* current_trace = nullptr; // the sequence being run, for the failure hook

void print_trace(const std::vector<std::string>& trace) {
    std::fprintf(stderr, "\n---- operation sequence (%zu lines) ----\n", trace.size());
    for (const auto& line : trace) {
        std::fprintf(stderr, "  %s\n", line.c_str());
    }
    std::fprintf(stderr, "---- end of sequence ----\n");
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    modelpool::abort_checks::on_failure() = [] {
        if (current_trace != nullptr) {
            print_trace(*current_trace);
        }
        std::fprintf(stderr, "an invariant failed; libFuzzer saves this input as a crash file (replay: "
                             "modelpool_pool_fuzzer <crash file>)\n");
    };
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    ByteSteps steps(data, size);
    std::vector<std::string> trace;
    current_trace = &trace;
    modelpool::reliability::RandomStats stats;
    modelpool::reliability::SequenceOptions options;
    options.trace = &trace;
    modelpool::reliability::run_sequence(/*seed=*/1, steps, stats, options);
    current_trace = nullptr;
    if (std::getenv("MODELPOOL_FUZZ_TRACE") != nullptr) {
        print_trace(trace);
    }
    return 0;
}
