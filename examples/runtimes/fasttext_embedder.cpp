// examples/runtimes/fasttext_embedder.cpp
//
// The fastText adapter library (modelpool_runtime_fasttext): the only translation unit that includes
// fastText's headers. Training (fasttext::Args + FastText::train), the check of a model file's layout before
// fastText's own loader sees it, loading from memory (FastText::loadModel on a stream), sentence vectors
// (FastText::getSentenceVector), and the asynchronous loader. See fasttext_embedder.hpp.
#include "runtimes/fasttext_embedder.hpp"

#include <fasttext/args.h>
#include <fasttext/fasttext.h>
#include <fasttext/vector.h>

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <fstream>
#include <istream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <streambuf>
#include <system_error>

namespace runtimes {

namespace {

using modelpool::errc;
using modelpool::fail;

// fastText 0.9.2's model file: magic number and file format version (fasttext.cc,
// FASTTEXT_FILEFORMAT_MAGIC_INT32 and FASTTEXT_VERSION; not in its public headers).
constexpr std::int32_t file_magic = 793712314;
constexpr std::int32_t file_version = 12;

// The upper bounds the layout check accepts: generous for any small unsupervised model, and they keep a
// corrupt header from making fastText allocate gigabytes.
constexpr std::int32_t max_dimensions = 4096;
constexpr std::int32_t max_words = 30000000; // fastText's own MAX_VOCAB_SIZE

/// A read-only std::streambuf over bytes in memory, so fastText's stream loader reads them without a copy.
class MemoryBuffer : public std::streambuf {
public:
    explicit MemoryBuffer(std::string_view bytes) {
        char* begin = const_cast<char*>(bytes.data()); // never written: the buffer has no put area
        setg(begin, begin, begin + bytes.size());
    }
};

/// Walks a fastText 0.9.2 model file's layout (FastText::saveModel: magic, version, Args::save,
/// Dictionary::save, quantisation flag, input DenseMatrix, qout flag, output DenseMatrix) with bounds checks;
/// returns what is wrong, or an empty string when the layout is complete and consistent. fastText's loader
/// checks none of this: on a truncated file its dictionary loop never ends.
class LayoutCheck {
public:
    explicit LayoutCheck(std::string_view bytes) : bytes_(bytes) {}

    std::string problem() {
        std::int32_t magic = 0, version = 0;
        if (!read(magic) || !read(version) || magic != file_magic) {
            return "not a fastText model file (no magic number)";
        }
        if (version != file_version) {
            return fmt::format("fastText file format version {} (this runtime reads version {})", version,
                               file_version);
        }
        // Args::save: dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn,
        // lrUpdateRate (32-bit each), then t (double).
        std::int32_t args[12] = {};
        for (auto& arg : args) {
            if (!read(arg)) {
                return truncated("its settings");
            }
        }
        double t = 0;
        if (!read(t)) {
            return truncated("its settings");
        }
        const std::int32_t dim = args[0], loss = args[6], model = args[7], bucket = args[8], minn = args[9],
                           maxn = args[10];
        if (dim < 1 || dim > max_dimensions) {
            return fmt::format("{} dimensions (expected 1 to {})", dim, max_dimensions);
        }
        if (model != static_cast<std::int32_t>(fasttext::model_name::sg) &&
            model != static_cast<std::int32_t>(fasttext::model_name::cbow)) {
            return fmt::format("model kind {} is not an unsupervised (skipgram or cbow) model", model);
        }
        if (loss < 1 || loss > 4) {
            return fmt::format("unknown loss {}", loss);
        }
        if (maxn > 0 && (bucket < 1 || minn < 1 || minn > maxn)) {
            return fmt::format("character n-grams {}..{} with {} buckets", minn, maxn, bucket);
        }
        if (bucket < 0 || maxn < 0 || maxn > 64) {
            return fmt::format("{} buckets, longest n-gram {}", bucket, maxn);
        }

        // Dictionary::save: size, nwords, nlabels (32-bit), ntokens, pruneidx size (64-bit), then per entry
        // the word, a NUL, its count (64-bit) and its type (8-bit), then the pruned index pairs.
        std::int32_t size = 0, nwords = 0, nlabels = 0;
        std::int64_t ntokens = 0, pruned = 0;
        if (!read(size) || !read(nwords) || !read(nlabels) || !read(ntokens) || !read(pruned)) {
            return truncated("its dictionary");
        }
        if (size < 1 || size > max_words || nwords < 1 || nlabels != 0 || nwords != size) {
            return fmt::format("dictionary of {} entries, {} words, {} labels", size, nwords, nlabels);
        }
        if (pruned > 0) {
            return "a pruned dictionary (quantised models are not supported)";
        }
        for (std::int32_t i = 0; i < size; ++i) {
            const auto end = bytes_.find('\0', at_);
            if (end == std::string_view::npos) {
                return truncated("its dictionary");
            }
            at_ = end + 1;
            std::int64_t count = 0;
            std::int8_t type = 0;
            if (!read(count) || !read(type)) {
                return truncated("its dictionary");
            }
            if (type != 0) {
                return fmt::format("dictionary entry {} is not a word", i);
            }
        }

        // The input matrix (a row per word, then one per bucket) and the output matrix, both unquantised.
        if (auto wrong = matrix("input", std::int64_t{nwords} + bucket, dim); !wrong.empty()) {
            return wrong;
        }
        if (auto wrong = matrix("output", -1, dim); !wrong.empty()) {
            return wrong;
        }
        if (at_ != bytes_.size()) {
            return fmt::format("{} bytes after the end of the model", bytes_.size() - at_);
        }
        return {};
    }

private:
    template <class T> bool read(T& value) {
        if (bytes_.size() - at_ < sizeof value) {
            return false;
        }
        std::memcpy(&value, bytes_.data() + at_, sizeof value);
        at_ += sizeof value;
        return true;
    }

    std::string truncated(std::string_view part) const {
        return fmt::format("truncated in {} ({} bytes)", part, bytes_.size());
    }

    // A quantisation flag (must be false), then DenseMatrix::save: rows, columns (64-bit), rows x columns
    // floats. `rows` < 0: any number of rows.
    std::string matrix(std::string_view name, std::int64_t rows, std::int64_t columns) {
        std::uint8_t quantised = 0;
        std::int64_t m = 0, n = 0;
        if (!read(quantised) || !read(m) || !read(n)) {
            return truncated(fmt::format("its {} matrix", name));
        }
        if (quantised != 0) {
            return fmt::format("a quantised {} matrix (not supported)", name);
        }
        if ((rows >= 0 && m != rows) || m < 1 || n != columns) {
            return fmt::format("{} matrix of {} x {} (expected {} x {})", name, m, n, rows < 0 ? m : rows,
                               columns);
        }
        const auto floats = static_cast<std::uint64_t>(m) * static_cast<std::uint64_t>(n);
        if ((bytes_.size() - at_) / sizeof(float) < floats) {
            return truncated(fmt::format("its {} matrix", name));
        }
        at_ += floats * sizeof(float);
        return {};
    }

    std::string_view bytes_;
    std::size_t at_ = 0;
};

bool is_kept(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '\'' || c >= 0x80;
}

/// A scratch directory in `parent`, removed with this object.
class ScratchDirectory {
public:
    explicit ScratchDirectory(const std::filesystem::path& parent)
        : path_(parent / fmt::format(".fasttext-train-{:08x}", std::random_device{}())) {
        std::filesystem::create_directories(path_);
    }
    ScratchDirectory(const ScratchDirectory&) = delete;
    ScratchDirectory& operator=(const ScratchDirectory&) = delete;
    ~ScratchDirectory() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

} // namespace

std::string FastTextTraining::cli_arguments() const {
    return fmt::format("-dim {} -bucket {} -minCount {} -epoch {} -lr {} -ws {} -minn {} -maxn {} -thread {} "
                       "-seed {}{}",
                       dim, bucket, min_count, epoch, lr, ws, minn, maxn, thread, seed,
                       hs ? " -loss hs" : "");
}

std::string fasttext_normalize(std::string_view text) {
    std::string line(text.size(), ' ');
    for (std::size_t i = 0; i < text.size(); ++i) {
        auto c = static_cast<unsigned char>(text[i]);
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<unsigned char>(c - 'A' + 'a');
        }
        if (is_kept(c)) {
            line[i] = static_cast<char>(c);
        }
    }
    return line;
}

std::string fasttext_training_corpus(std::string_view aesop_file) {
    std::string corpus;
    while (!aesop_file.empty()) {
        const auto end = aesop_file.find('\n');
        const auto line = aesop_file.substr(0, end);
        aesop_file = end == std::string_view::npos ? std::string_view() : aesop_file.substr(end + 1);
        if (!line.starts_with('#')) {
            corpus += fasttext_normalize(line);
            corpus += '\n';
        }
    }
    return corpus;
}

std::string train_fasttext_model(std::string_view corpus, const std::filesystem::path& work_dir,
                                 const FastTextTraining& settings) {
    const ScratchDirectory scratch(work_dir);
    const auto input = scratch.path() / "corpus.txt";
    const auto output = scratch.path() / "model.bin";
    {
        std::ofstream out(input, std::ios::binary);
        out.write(corpus.data(), static_cast<std::streamsize>(corpus.size()));
        out.close();
        if (!out) {
            throw std::runtime_error(fmt::format("cannot write the fastText corpus '{}'", input.string()));
        }
    }
    fasttext::Args args; // fastText's defaults, as the `fasttext skipgram` command line starts from
    args.input = input.string();
    args.output = output.string();
    args.model = fasttext::model_name::sg;
    args.loss = settings.hs ? fasttext::loss_name::hs : fasttext::loss_name::ns;
    args.dim = settings.dim;
    args.bucket = settings.bucket;
    args.minCount = settings.min_count;
    args.epoch = settings.epoch;
    // As a float: the `fasttext` program parses -lr with std::stof, so the library and the program (see
    // scripts/train_fasttext.sh) train the same bytes.
    args.lr = static_cast<float>(settings.lr);
    args.ws = settings.ws;
    args.minn = settings.minn;
    args.maxn = settings.maxn;
    args.thread = settings.thread;
    args.seed = settings.seed;
    args.verbose = 0;
    try {
        fasttext::FastText model;
        model.train(args);
        model.saveModel(output.string());
    } catch (const std::exception& error) {
        throw std::runtime_error(fmt::format("fastText training failed: {}", error.what()));
    }
    return demo::WeightStore::read_file(output);
}

// ---- FastTextEngine
// -----------------------------------------------------------------------------------------

struct FastTextEngine::Impl {
    fasttext::FastText model;
    std::size_t dimensions = 0;
    std::size_t words = 0;
    fasttext::Vector vector{1};
    std::istringstream line; // reused: getSentenceVector reads its text from a stream
};

FastTextEngine::FastTextEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FastTextEngine::FastTextEngine(FastTextEngine&&) noexcept = default;
FastTextEngine& FastTextEngine::operator=(FastTextEngine&&) noexcept = default;
FastTextEngine::~FastTextEngine() = default;

modelpool::result<FastTextEngine> FastTextEngine::load(std::string_view bytes, std::string_view source) {
    if (auto wrong = LayoutCheck(bytes).problem(); !wrong.empty()) {
        return fail(errc::spawn_failed, "{} is not a usable fastText model: {}", source, wrong);
    }
    try {
        auto impl = std::make_unique<Impl>();
        // FastText::loadModel(path) reads the magic number and version (checked above), then the stream
        // overload reads the rest.
        MemoryBuffer buffer(bytes.substr(2 * sizeof(std::int32_t)));
        std::istream in(&buffer);
        impl->model.loadModel(in);
        if (!in) {
            return fail(errc::spawn_failed, "{}: fastText could not read the model", source);
        }
        impl->dimensions = static_cast<std::size_t>(impl->model.getDimension());
        impl->words = static_cast<std::size_t>(impl->model.getDictionary()->nwords());
        impl->vector = fasttext::Vector(impl->model.getDimension());
        return FastTextEngine(std::move(impl));
    } catch (const std::exception& error) {
        return fail(errc::spawn_failed, "{}: fastText failed to load the model: {}", source, error.what());
    }
}

std::size_t FastTextEngine::dimensions() const {
    return impl_->dimensions;
}

std::size_t FastTextEngine::vocabulary_size() const {
    return impl_->words;
}

modelpool::result<modelpool::Embedding> FastTextEngine::embed(std::string_view text) {
    return embed_at(text, std::nullopt);
}

modelpool::result<std::vector<modelpool::Embedding>>
FastTextEngine::batch_embed(const std::vector<std::string>& texts) {
    std::vector<modelpool::Embedding> vectors;
    vectors.reserve(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
        auto vector = embed_at(texts[i], i);
        if (!vector) {
            return modelpool::unexpected<modelpool::PoolError>(std::move(vector.error()));
        }
        vectors.push_back(std::move(*vector));
    }
    return vectors;
}

modelpool::result<modelpool::Embedding> FastTextEngine::embed_at(std::string_view text,
                                                                 std::optional<std::size_t> index) {
    std::string line = fasttext_normalize(text);
    if (line.find_first_not_of(' ') == std::string::npos) {
        const auto which = index ? fmt::format("text {}", *index) : std::string("the text");
        return fail(errc::invalid_argument,
                    "{} has no word to embed ({} bytes, none of them a letter, digit or non-ASCII character)",
                    which, text.size());
    }
    try {
        auto& impl = *impl_;
        impl.line.clear();
        impl.line.str(std::move(line));
        impl.model.getSentenceVector(impl.line, impl.vector);
        const float* data = impl.vector.data();
        return modelpool::Embedding(data, data + impl.vector.size());
    } catch (const std::exception& error) {
        return fail(errc::model_error, "fastText failed to embed {}: {}",
                    index ? fmt::format("text {}", *index) : std::string("the text"), error.what());
    }
}

// ---- the asynchronous loader
// ----------------------------------------------------------------------------------

asio::awaitable<modelpool::result<FastTextEmbedder>>
load_fasttext_embedder(asio::thread_pool::executor_type blocking, std::string url) {
    auto fetch = demo::http_get(url); // named: g++ 12 miscompiles class temporaries in co_await operands
    auto bytes = co_await std::move(fetch);
    if (!bytes) {
        co_return modelpool::unexpected<modelpool::PoolError>(bytes.error());
    }
    // The parse is CPU work (and fastText allocates the matrices): on the blocking executor, never on an io
    // thread. The lambda's references outlive it: the offload is awaited at once.
    auto load = modelpool::offload(blocking, [&]() -> modelpool::result<FastTextEmbedder> {
        auto engine = FastTextEngine::load(*bytes, url);
        if (!engine) {
            return modelpool::unexpected<modelpool::PoolError>(engine.error());
        }
        return FastTextEmbedder(std::move(*engine), blocking);
    });
    co_return co_await std::move(load);
}

} // namespace runtimes
