// examples/runtimes/tesseract_ocr.cpp
//
// The Tesseract adapter's implementation: the only translation unit that includes Tesseract's and Leptonica's
// headers. See tesseract_ocr.hpp for what each part does.
#include "runtimes/tesseract_ocr.hpp"

#include "models/image.hpp"         // demo::decode_data_url, demo::shorten
#include "support/weight_store.hpp" // demo::http_get

#include <leptonica/allheaders.h>
#include <tesseract/baseapi.h>
#include <tesseract/resultiterator.h>

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <utility>

namespace runtimes::tesseract_ocr {

namespace {

using demo::decode_data_url;
using demo::shorten;
using modelpool::errc;
using modelpool::fail;

/// Largest image accepted, in pixels (a guard against absurd headers exhausting memory): 100 megapixels.
constexpr std::uint64_t max_pixels = 100'000'000;

// ---- OpenMP confinement ----------------------------------------------------------------------------------

/// OpenMP's max-active-levels accessors, looked up in the process (present when libtesseract pulled in
/// libgomp, as Debian's does) rather than linked: a Tesseract built without OpenMP needs nothing here.
struct OmpLevels {
    using get_fn = int (*)();
    using set_fn = void (*)(int);
    get_fn get = nullptr;
    set_fn set = nullptr;
};

const OmpLevels& omp_levels() {
    static const OmpLevels levels = [] {
        OmpLevels l;
        void* get = dlsym(RTLD_DEFAULT, "omp_get_max_active_levels");
        void* set = dlsym(RTLD_DEFAULT, "omp_set_max_active_levels");
        if (get != nullptr && set != nullptr) {
            // memcpy: converting an object pointer to a function pointer is only conditionally supported.
            std::memcpy(&l.get, &get, sizeof get);
            std::memcpy(&l.set, &set, sizeof set);
        }
        return l;
    }();
    return levels;
}

/// While alive, OpenMP parallel regions started by this thread run on this thread alone (max-active-levels
/// 0, a per-thread setting in libgomp); the previous value comes back afterwards, so other work on the same
/// blocking thread (another runtime's model) keeps its own OpenMP behaviour.
class OmpConfinement {
public:
    explicit OmpConfinement(bool enabled) {
        const auto& omp = omp_levels();
        if (enabled && omp.set != nullptr) {
            previous_ = omp.get();
            omp.set(0);
            active_ = true;
        }
    }
    OmpConfinement(const OmpConfinement&) = delete;
    OmpConfinement& operator=(const OmpConfinement&) = delete;
    ~OmpConfinement() {
        if (active_) {
            omp_levels().set(previous_);
        }
    }

private:
    int previous_ = 0;
    bool active_ = false;
};

// ---- helpers ---------------------------------------------------------------------------------------------

/// Owns a Leptonica PIX.
struct PixDeleter {
    void operator()(PIX* pix) const { pixDestroy(&pix); }
};
using PixPtr = std::unique_ptr<PIX, PixDeleter>;

/// Owns a string Tesseract allocated with new[].
struct TessStringDeleter {
    void operator()(char* text) const { delete[] text; }
};

std::string lowered_trimmed(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
        text.remove_prefix(1);
    }
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
        text.remove_suffix(1);
    }
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

/// "1 line", "3 lines".
std::string count(std::size_t n, std::string_view noun) {
    return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s");
}

std::string format_box(const Box& b) {
    return fmt::format("x={} y={} w={} h={}", b.left, b.top, b.width, b.height);
}

/// Leptonica prints every failure on stderr ("Error in pixReadMem: ..."); the adapter reports errors itself
/// as PoolErrors, so that chatter is turned off once (a process-wide Leptonica setting).
void quiet_leptonica() {
    static std::once_flag once;
    std::call_once(once, [] { setMsgSeverity(L_SEVERITY_NONE); });
}

/// The tessdata directory for `options`: the given one, else $TESSDATA_PREFIX, else Debian's default. An
/// older-style TESSDATA_PREFIX naming the parent of `tessdata/` is accepted too.
std::filesystem::path resolve_tessdata(const EngineOptions& options) {
    if (!options.tessdata_dir.empty()) {
        return options.tessdata_dir;
    }
    if (const char* prefix = std::getenv("TESSDATA_PREFIX"); prefix != nullptr && *prefix != '\0') {
        std::filesystem::path dir = prefix;
        std::error_code ec;
        if (!std::filesystem::is_directory(dir / "configs", ec) &&
            std::filesystem::is_directory(dir / "tessdata", ec)) {
            return dir / "tessdata";
        }
        return dir;
    }
    return std::filesystem::path(default_tessdata_dir);
}

} // namespace

// ---- queries and output format ---------------------------------------------------------------------------

result<Mode> parse_query(std::string_view query) {
    const auto q = lowered_trimmed(query);
    if (q.empty() || q == "lines") {
        return Mode::lines;
    }
    if (q == "words") {
        return Mode::words;
    }
    if (q == "layout") {
        return Mode::layout;
    }
    return fail(errc::invalid_argument, "unknown query '{}' for Tesseract OCR; accepted: {}", shorten(query),
                accepted_queries);
}

std::string Line::text() const {
    std::string out;
    for (const auto& word : words) {
        out += (out.empty() ? "" : " ") + word.text;
    }
    return out;
}

std::vector<const Line*> Page::lines() const {
    std::vector<const Line*> out;
    for (const auto& block : blocks) {
        for (const auto& paragraph : block.paragraphs) {
            for (const auto& line : paragraph.lines) {
                out.push_back(&line);
            }
        }
    }
    return out;
}

std::size_t Page::paragraph_count() const {
    std::size_t n = 0;
    for (const auto& block : blocks) {
        n += block.paragraphs.size();
    }
    return n;
}

std::size_t Page::word_count() const {
    std::size_t n = 0;
    for (const auto* line : lines()) {
        n += line->words.size();
    }
    return n;
}

float Page::mean_confidence() const {
    double sum = 0;
    std::size_t n = 0;
    for (const auto* line : lines()) {
        for (const auto& word : line->words) {
            sum += word.confidence;
            ++n;
        }
    }
    return n == 0 ? 0.0F : static_cast<float>(sum / static_cast<double>(n));
}

std::vector<std::string> format_chunks(const Page& page, Mode mode) {
    std::vector<std::string> chunks;
    switch (mode) {
    case Mode::lines:
        for (const auto* line : page.lines()) {
            chunks.push_back(line->text() + "\n");
        }
        break;
    case Mode::words:
        for (const auto* line : page.lines()) {
            for (std::size_t i = 0; i < line->words.size(); ++i) {
                chunks.push_back(line->words[i].text + (i + 1 == line->words.size() ? "\n" : " "));
            }
        }
        break;
    case Mode::layout: {
        chunks.push_back(fmt::format("layout: {}, {}, {}, {}; mean confidence {:.1f}; image {}x{}\n",
                                     count(page.blocks.size(), "block"),
                                     count(page.paragraph_count(), "paragraph"),
                                     count(page.lines().size(), "line"), count(page.word_count(), "word"),
                                     page.mean_confidence(), page.width, page.height));
        for (std::size_t b = 0; b < page.blocks.size(); ++b) {
            const auto& block = page.blocks[b];
            chunks.push_back(fmt::format("block {} {}\n", b + 1, format_box(block.box)));
            for (std::size_t p = 0; p < block.paragraphs.size(); ++p) {
                const auto& paragraph = block.paragraphs[p];
                chunks.push_back(
                    fmt::format("  paragraph {}.{} {}\n", b + 1, p + 1, format_box(paragraph.box)));
                for (std::size_t l = 0; l < paragraph.lines.size(); ++l) {
                    const auto& line = paragraph.lines[l];
                    chunks.push_back(fmt::format("    line {}.{}.{} {} confidence {:.1f}: {}\n", b + 1, p + 1,
                                                 l + 1, format_box(line.box), line.confidence, line.text()));
                }
            }
        }
        break;
    }
    }
    return chunks;
}

// ---- Engine ----------------------------------------------------------------------------------------------

struct Engine::Impl {
    tesseract::TessBaseAPI api;
    std::string tessdata_dir;
    bool single_threaded = true;

    ~Impl() { api.End(); }

    /// Recognises `pix` (owned by the caller) into a Page.
    result<Page> recognize(PIX* pix, std::string_view what) {
        const auto width = pixGetWidth(pix);
        const auto height = pixGetHeight(pix);
        if (width <= 0 || height <= 0 ||
            static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height) > max_pixels) {
            return fail(errc::invalid_argument, "image '{}' is {}x{} pixels; accepted: 1 to {} pixels",
                        shorten(what), width, height, max_pixels);
        }
        // Rendered or pasted images often carry no resolution; Tesseract would warn and guess one per call.
        if (pixGetXRes(pix) <= 0 || pixGetYRes(pix) <= 0) {
            pixSetResolution(pix, 300, 300);
        }
        const OmpConfinement confine(single_threaded);
        api.SetImage(pix);
        if (api.Recognize(nullptr) != 0) {
            api.Clear();
            return fail(errc::model_error, "Tesseract could not recognise image '{}'", shorten(what));
        }
        Page page;
        page.width = width;
        page.height = height;
        const std::unique_ptr<tesseract::ResultIterator> it(api.GetIterator());
        if (it) {
            Block* block = nullptr;
            Paragraph* paragraph = nullptr;
            Line* line = nullptr;
            auto box_at = [&](tesseract::PageIteratorLevel level) {
                int left = 0, top = 0, right = 0, bottom = 0;
                it->BoundingBox(level, &left, &top, &right, &bottom);
                return Box{left, top, right - left, bottom - top};
            };
            do {
                const std::unique_ptr<char[], TessStringDeleter> text(it->GetUTF8Text(tesseract::RIL_WORD));
                if (!text || *text.get() == '\0') {
                    continue;
                }
                if (block == nullptr || it->IsAtBeginningOf(tesseract::RIL_BLOCK)) {
                    block = &page.blocks.emplace_back(Block{{}, box_at(tesseract::RIL_BLOCK)});
                    paragraph = nullptr;
                }
                if (paragraph == nullptr || it->IsAtBeginningOf(tesseract::RIL_PARA)) {
                    paragraph = &block->paragraphs.emplace_back(Paragraph{{}, box_at(tesseract::RIL_PARA)});
                    line = nullptr;
                }
                if (line == nullptr || it->IsAtBeginningOf(tesseract::RIL_TEXTLINE)) {
                    line = &paragraph->lines.emplace_back(
                        Line{{}, box_at(tesseract::RIL_TEXTLINE), it->Confidence(tesseract::RIL_TEXTLINE)});
                }
                line->words.push_back(
                    Word{text.get(), box_at(tesseract::RIL_WORD), it->Confidence(tesseract::RIL_WORD)});
            } while (it->Next(tesseract::RIL_WORD));
        }
        api.Clear(); // drops the recognition results and the reference to `pix`
        return page;
    }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

result<Engine> Engine::load(EngineOptions options) {
    quiet_leptonica();
    const auto dir = resolve_tessdata(options);
    if (options.language.empty()) {
        return fail(errc::spawn_failed, "Tesseract: empty language; expected e.g. \"eng\"");
    }
    // Check each language's file first: Tesseract's own failure is a line on stderr and a bare -1.
    for (std::size_t at = 0; at <= options.language.size();) {
        const auto plus = std::min(options.language.find('+', at), options.language.size());
        const auto file = dir / (options.language.substr(at, plus - at) + ".traineddata");
        std::error_code ec;
        if (!std::filesystem::is_regular_file(file, ec)) {
            return fail(errc::spawn_failed,
                        "Tesseract language data '{}' not found (tessdata directory '{}', from {}); install "
                        "tesseract-ocr-{} or set TESSDATA_PREFIX",
                        file.string(), dir.string(),
                        !options.tessdata_dir.empty()               ? "EngineOptions::tessdata_dir"
                        : std::getenv("TESSDATA_PREFIX") != nullptr ? "TESSDATA_PREFIX"
                                                                    : "the Debian default",
                        options.language.substr(at, plus - at));
        }
        at = plus + 1;
    }
    auto impl = std::make_unique<Impl>();
    impl->tessdata_dir = dir.string();
    impl->single_threaded = options.single_threaded;
    const OmpConfinement confine(options.single_threaded);
    if (impl->api.Init(impl->tessdata_dir.c_str(), options.language.c_str(), tesseract::OEM_LSTM_ONLY) != 0) {
        return fail(errc::spawn_failed, "Tesseract could not load language '{}' from '{}'", options.language,
                    impl->tessdata_dir);
    }
    return Engine(std::move(impl));
}

result<Page> Engine::recognize_file(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
        return fail(errc::invalid_argument, "cannot read image '{}': no such file (or not a regular file)",
                    path);
    }
    const PixPtr pix(pixRead(path.c_str()));
    if (!pix) {
        return fail(errc::invalid_argument,
                    "'{}' is not an image Leptonica can read (corrupt or unknown format)", path);
    }
    return impl_->recognize(pix.get(), path);
}

result<Page> Engine::recognize_encoded(std::string_view bytes, std::string_view what) {
    if (bytes.empty()) {
        return fail(errc::invalid_argument, "image '{}' is empty", shorten(what));
    }
    const PixPtr pix(pixReadMem(reinterpret_cast<const l_uint8*>(bytes.data()), bytes.size()));
    if (!pix) {
        return fail(errc::invalid_argument,
                    "image '{}' ({} bytes) is not an image Leptonica can read (corrupt or unknown format)",
                    shorten(what), bytes.size());
    }
    return impl_->recognize(pix.get(), what);
}

const std::string& Engine::tessdata_dir() const {
    return impl_->tessdata_dir;
}

// ---- OcrModel and its loader -----------------------------------------------------------------------------

OcrModel::OcrModel(Engine engine, asio::any_io_executor blocking)
    : engine_(std::make_shared<Engine>(std::move(engine))), blocking_(std::move(blocking)) {}

result<void> OcrModel::describe_image(const std::string& path, const std::string& query,
                                      modelpool::ChunkSink<modelpool::TextChunk>& sink) {
    const auto mode = parse_query(query);
    if (!mode) {
        return modelpool::unexpected<modelpool::PoolError>(mode.error());
    }
    const auto page = engine_->recognize_file(path);
    if (!page) {
        return modelpool::unexpected<modelpool::PoolError>(page.error());
    }
    for (auto& chunk : format_chunks(*page, *mode)) {
        if (!sink.send_blocking(modelpool::TextChunk{std::move(chunk)})) {
            return fail(errc::cancelled, "the reader left the OCR text of '{}'", path);
        }
    }
    return {};
}

asio::awaitable<result<void>> OcrModel::describe_url(const std::string& url, const std::string& query,
                                                     modelpool::ChunkSink<modelpool::TextChunk>& sink) {
    const auto mode = parse_query(query);
    if (!mode) {
        co_return modelpool::unexpected<modelpool::PoolError>(mode.error());
    }
    const bool is_data = url.rfind("data:", 0) == 0;
    std::string fetched;
    if (!is_data) {
        if (url.rfind("http://", 0) != 0) {
            co_return fail(errc::invalid_argument,
                           "unsupported image URL '{}'; accepted: data:image/...;base64,... and http://...",
                           shorten(url));
        }
        auto fetch = demo::http_get(url); // named: g++ 12 miscompiles temporaries in co_await operands
        auto bytes = co_await std::move(fetch);
        if (!bytes) {
            co_return fail(errc::invalid_argument, "cannot fetch the image '{}': {}", url,
                           bytes.error().message());
        }
        fetched = std::move(*bytes);
    }
    // Decoding and recognition block: they run on the blocking executor; this coroutine only awaits them.
    // The work holds the engine by shared_ptr, and the worker awaits it before taking its next request, so
    // the engine is never used by two threads at once.
    auto work = [engine = engine_, url, is_data, fetched = std::move(fetched),
                 mode = *mode]() -> result<std::vector<std::string>> {
        std::string decoded;
        if (is_data) {
            auto bytes = decode_data_url(url);
            if (!bytes) {
                return modelpool::unexpected<modelpool::PoolError>(bytes.error());
            }
            decoded = std::move(*bytes);
        }
        const auto page = engine->recognize_encoded(is_data ? decoded : fetched, url);
        if (!page) {
            return modelpool::unexpected<modelpool::PoolError>(page.error());
        }
        return format_chunks(*page, mode);
    };
    auto recognized = co_await modelpool::offload(blocking_, std::move(work));
    if (!recognized) {
        co_return modelpool::unexpected<modelpool::PoolError>(recognized.error());
    }
    for (auto& text : *recognized) {
        modelpool::TextChunk chunk{std::move(text)}; // named: see ChunkSink::send on g++ 12
        if (!co_await sink.send(chunk)) {
            co_return fail(errc::cancelled, "the reader left the OCR text of '{}'", shorten(url));
        }
    }
    co_return result<void>{};
}

asio::awaitable<result<OcrModel>> load_model(asio::any_io_executor blocking, EngineOptions options) {
    auto load = [options = std::move(options)]() { return Engine::load(options); };
    auto engine = co_await modelpool::offload(blocking, std::move(load));
    if (!engine) {
        co_return modelpool::unexpected<modelpool::PoolError>(engine.error());
    }
    co_return OcrModel(std::move(*engine), std::move(blocking));
}

} // namespace runtimes::tesseract_ocr
