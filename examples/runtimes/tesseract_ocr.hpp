// examples/runtimes/tesseract_ocr.hpp
//
// Tesseract OCR (Debian's libtesseract 5) behind the `vision` capability: the light adapter header. It never
// includes Tesseract's or Leptonica's headers (they stay in tesseract_ocr.cpp, behind a pimpl), so the
// example, the main demo and the benchmark include only this.
//
// Three layers:
// - `Engine`: one `tesseract::TessBaseAPI` with its language data, and blocking calls that read an image (a
//   file, or encoded bytes) and recognise it into a `Page` (blocks, paragraphs, lines, words, boxes and
//   confidences). Plain C++, no pool involved.
// - `OcrModel`: a modelpool vision model owning one Engine. `describe_image` is a blocking member (the pool
//   runs it on its blocking executor); `describe_url` is a coroutine that fetches http:// images without
//   blocking and offloads the decoding and recognition.
// - `load_model` / `loader`: the async loader for `pool.spawn_vision_worker` and
// `pool.register_vision_model`;
//   the blocking `Engine::load` (reading eng.traineddata) runs through `modelpool::offload` on the pool's
//   blocking executor, never on an io thread.
//
// One Engine per worker: a TessBaseAPI is not safe to use from two threads at once, so it is never shared;
// the pool gives each worker its own model and serves one request at a time per worker.
//
// The query of both operations (case-insensitive, surrounding blanks ignored):
//   ""  or "lines"  one chunk per text line, "text of the line\n", in reading order (the default);
//   "words"         one chunk per word: "word " within a line, "word\n" for the last word of a line (so the
//                   chunks concatenate to the same text as "lines");
//   "layout"        a page layout summary: a first chunk "layout: B blocks, P paragraphs, L lines, W words;
//                   mean confidence C; image WxH\n" (singular for 1: "1 line"), then one chunk per block,
//                   paragraph and line with its bounding box (and for lines the confidence and text).
// Anything else is `invalid_argument` naming the query and these values.
#pragma once

#include <modelpool/modelpool.hpp>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace runtimes::tesseract_ocr {

namespace asio = modelpool::asio;
using modelpool::result;

/// Memory budget of one worker in MB, for the pool's governor (`per_worker_mb`). Measured on Debian 12
/// (Tesseract 5.3.0, tesseract-ocr-eng 4.1.0 "fast" LSTM model of 4 MB, x86-64) by bench/ocr.cpp: the growth
/// of the process's VmRSS per worker, over 4 workers each loaded and having recognised a page of three text
/// lines, was 14-16 MB (13-15 MB of it after loading alone). A recognition also holds its image and a few
/// working copies of it for its duration: budget more for large scans (a 300-dpi A4 page is ~9 megapixels).
inline constexpr std::size_t per_worker_mb = 16;

/// Where Debian's tesseract-ocr-eng puts the language data when TESSDATA_PREFIX is not set.
inline constexpr std::string_view default_tessdata_dir = "/usr/share/tesseract-ocr/5/tessdata";

/// The accepted query values, for error messages and help texts.
inline constexpr std::string_view accepted_queries =
    "\"\" or \"lines\" (one chunk per text line), \"words\" (one chunk per word), \"layout\" (blocks, "
    "paragraphs and lines with bounding boxes and mean confidence)";

/// What a query asks for (see the file comment).
enum class Mode { lines, words, layout };

/// The mode `query` names; `invalid_argument` naming it and the accepted values otherwise.
result<Mode> parse_query(std::string_view query);

/// A bounding box in image pixels (origin at the top left).
struct Box {
    int left = 0;   ///< First column.
    int top = 0;    ///< First row.
    int width = 0;  ///< Columns.
    int height = 0; ///< Rows.
};

/// A recognised word.
struct Word {
    std::string text;     ///< UTF-8.
    Box box;              ///< Where it is.
    float confidence = 0; ///< Tesseract's confidence, 0-100.
};

/// A recognised text line.
struct Line {
    std::vector<Word> words; ///< In reading order.
    Box box;                 ///< Where it is.
    float confidence = 0;    ///< 0-100.

    /// The words joined by single spaces.
    [[nodiscard]] std::string text() const;
};

/// A recognised paragraph.
struct Paragraph {
    std::vector<Line> lines; ///< In reading order.
    Box box;                 ///< Where it is.
};

/// A recognised text block.
struct Block {
    std::vector<Paragraph> paragraphs; ///< In reading order.
    Box box;                           ///< Where it is.
};

/// What Tesseract found on one image.
struct Page {
    int width = 0;             ///< Image width in pixels.
    int height = 0;            ///< Image height in pixels.
    std::vector<Block> blocks; ///< Text blocks in reading order (blocks without text are left out).

    /// Every line, in reading order.
    [[nodiscard]] std::vector<const Line*> lines() const;
    /// Number of paragraphs.
    [[nodiscard]] std::size_t paragraph_count() const;
    /// Number of words.
    [[nodiscard]] std::size_t word_count() const;
    /// Mean word confidence (0-100); 0 for a page without words.
    [[nodiscard]] float mean_confidence() const;
};

/// The stream chunks answering `mode` for `page` (see the file comment for their format).
std::vector<std::string> format_chunks(const Page& page, Mode mode);

/// How an Engine is set up.
struct EngineOptions {
    /// Directory holding `<language>.traineddata`. Empty: $TESSDATA_PREFIX if set, else
    /// `default_tessdata_dir`.
    std::string tessdata_dir;
    /// Tesseract language code(s), e.g. "eng" or "eng+deu".
    std::string language = "eng";
    /// Run Tesseract's OpenMP regions on the calling thread only (OpenMP max-active-levels 0 for the duration
    /// of each recognition, restored afterwards). Why: Debian's libtesseract is built with OpenMP and its
    /// LSTM layers ask for 4 threads per region (a `num_threads(4)` clause, so `omp_set_num_threads` cannot
    /// lower it); a pool already runs one recognition per worker in parallel, so the extra threads only
    /// oversubscribe the cores. bench/ocr.cpp measured 2 workers on 2 cores (a shared machine, load average
    /// 5-8) at 2.0-3.1x the throughput of the OpenMP default, and equal to it (1.01x) when the program was
    /// started with OMP_THREAD_LIMIT=1. Why not OMP_THREAD_LIMIT: libgomp reads it when it is loaded, before
    /// main, so a `setenv` in the loader comes too late, and it limits every OpenMP user of the process
    /// (libtorch too); max-active-levels is a per-thread setting in libgomp, restored after each call. A
    /// no-op when Tesseract was built without OpenMP.
    bool single_threaded = true;
};

/// One Tesseract instance with its language data. Move-only. Not thread-safe: use each Engine from one
/// thread at a time (a pool worker does). All members block: call them on a blocking thread.
class Engine {
public:
    /// Loads the language data (blocking: reads and unpacks `<language>.traineddata`, ~100-300 ms).
    /// `spawn_failed` naming the directory and file when the data is missing or Tesseract refuses it.
    static result<Engine> load(EngineOptions options = {});

    Engine(Engine&&) noexcept;
    Engine& operator=(Engine&&) noexcept;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;
    ~Engine();

    /// Reads the image file at `path` (any format Leptonica reads: PNG, PNM, JPEG, TIFF, ...) and recognises
    /// it. `invalid_argument` naming the path when it is missing, unreadable or not an image.
    result<Page> recognize_file(const std::string& path);

    /// Decodes the encoded image `bytes` and recognises it; `what` names the image in errors (a URL).
    /// `invalid_argument` when the bytes are not an image.
    result<Page> recognize_encoded(std::string_view bytes, std::string_view what);

    /// The tessdata directory the language data came from.
    [[nodiscard]] const std::string& tessdata_dir() const;

private:
    struct Impl;
    explicit Engine(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

/// A vision model serving the OCR text of images (see the file comment for the queries). Move-only: it owns
/// its Engine, which no other worker shares.
class OcrModel {
public:
    /// A model owning `engine`; `blocking` (the pool's blocking executor) runs the recognitions that
    /// `describe_url` offloads.
    OcrModel(Engine engine, asio::any_io_executor blocking);

    OcrModel(OcrModel&&) noexcept = default;
    OcrModel& operator=(OcrModel&&) noexcept = default;
    OcrModel(const OcrModel&) = delete;
    OcrModel& operator=(const OcrModel&) = delete;
    ~OcrModel() = default;

    /// The text of the image file at `path`, streamed per `query`. Blocking (runs on the pool's blocking
    /// executor).
    result<void> describe_image(const std::string& path, const std::string& query,
                                modelpool::ChunkSink<modelpool::TextChunk>& sink);

    /// The text of the image at `url`, streamed per `query`: a `data:image/...;base64,` URL (decoded in
    /// memory) or an `http://` URL (fetched asynchronously with `demo::http_get`, the demos' loopback
    /// client). A coroutine: the fetch never blocks and the decoding and recognition are offloaded to the
    /// blocking executor.
    asio::awaitable<result<void>> describe_url(const std::string& url, const std::string& query,
                                               modelpool::ChunkSink<modelpool::TextChunk>& sink);

    /// The model's engine (for tests and benchmarks; not thread-safe, see `Engine`).
    [[nodiscard]] Engine& engine() { return *engine_; }

private:
    // Shared with the work `describe_url` offloads, which keeps it alive; never used by two threads at once
    // (the worker awaits that work before its next request).
    std::shared_ptr<Engine> engine_;
    asio::any_io_executor blocking_;
};

/// Loads an OcrModel: runs the blocking `Engine::load(options)` on `blocking` (the pool's blocking executor)
/// through `modelpool::offload`, so the io thread awaiting it stays free.
asio::awaitable<result<OcrModel>> load_model(asio::any_io_executor blocking, EngineOptions options = {});

/// A copyable model loader for `pool.spawn_vision_worker` and `pool.register_vision_model`: each call runs
/// `load_model(blocking, options)`.
inline auto loader(asio::any_io_executor blocking, EngineOptions options = {}) {
    return [blocking = std::move(blocking), options = std::move(options)]() {
        return load_model(blocking, options);
    };
}

} // namespace runtimes::tesseract_ocr
