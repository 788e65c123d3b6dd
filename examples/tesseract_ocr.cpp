// modelpool example: the vision capability served by a real OCR engine, Tesseract 5 (Debian's libtesseract
// with tesseract-ocr-eng), through the adapter in examples/runtimes/tesseract_ocr.hpp.
//
// It renders a few sentences of Aesop's Fables (Townsend's translation, examples/data/aesop.txt) into PNG
// images with FreeType and DejaVu Sans, writes them to the cache directory, serves them over loopback HTTP
// too, spawns two Tesseract workers (each loads eng.traineddata on the pool's blocking executor) and reads
// the text back in every way the capability allows: a file path, a data: URL and an http:// URL; lines, words
// and the layout summary. It also registers a model whose language data is missing, to show the spawn error.
//
// Smoke checks (`--smoke`): the OCR text of every image equals the rendered text (whitespace normalised; the
// edit distance is printed); lines mode gives one chunk per line in order, words mode the words, layout mode
// the right number of lines; the data: and http:// URLs read the same as the file; an unknown query, a
// corrupt image, a corrupt data URL and a missing file fail with invalid_argument naming them; missing
// language data fails the spawn naming the path; a stream abandoned after its first word leaves the worker
// serving; the pool stops with all memory returned (governor at 0 MB).
#include "runtimes/tesseract_ocr.hpp"
#include "models/image.hpp" // demo::base64_encode, demo::collect_stream_blocking
#include "runtimes/text_render.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using modelpool::errc;
using modelpool::result;
using modelpool::TextChunk;

constexpr std::string_view key = "tesseract";
constexpr std::string_view missing_key = "tesseract-no-language-data";

/// An image made from known text.
struct Sample {
    std::string file;               ///< Its name in the cache directory.
    std::vector<std::string> lines; ///< The rendered lines.
};

/// Sentences of Aesop's Fables, as in examples/data/aesop.txt.
std::vector<Sample> samples() {
    return {{"ocr-hare-and-tortoise.png",
             {"A Hare one day ridiculed the short feet", "and slow pace of the Tortoise.",
              "Slow but steady wins the race."}},
            {"ocr-fox-and-grapes.png",
             {"A famished Fox saw some clusters of ripe", "black grapes hanging from a trellised vine."}},
            {"ocr-fox-and-goat.png", {"The Fox and the Goat", "Look before you leap."}}};
}

/// `text` with every run of white space made one space, and none at either end.
std::string normalise(const std::string& text) {
    std::istringstream in(text);
    std::string out;
    for (std::string word; in >> word;) {
        out += (out.empty() ? "" : " ") + word;
    }
    return out;
}

/// Levenshtein distance of two strings (characters).
std::size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = up;
        }
    }
    return row[b.size()];
}

std::vector<std::string> split_words(const std::string& text) {
    std::istringstream in(text);
    std::vector<std::string> words;
    for (std::string word; in >> word;) {
        words.push_back(word);
    }
    return words;
}

std::string join(const std::vector<std::string>& chunks) {
    std::string out;
    for (const auto& chunk : chunks) {
        out += chunk;
    }
    return out;
}

/// One OCR request from main's thread (never a pool thread): the chunks of the stream, or its error.
result<std::vector<std::string>> ocr(modelpool::Pool& pool, std::string_view model, const std::string& image,
                                     bool is_url, const std::string& query) {
    auto stream = (is_url ? pool.describe_url(model, image, query, asio::use_future)
                          : pool.describe_image(model, image, query, asio::use_future))
                      .get();
    if (!stream) {
        return modelpool::unexpected<modelpool::PoolError>(stream.error());
    }
    auto chunks = demo::collect_stream_blocking(*stream);
    if (!chunks) {
        return modelpool::unexpected<modelpool::PoolError>(chunks.error());
    }
    std::vector<std::string> texts;
    for (auto& chunk : *chunks) {
        texts.push_back(std::move(chunk.text));
    }
    return texts;
}

/// Reads the first chunk of a words-mode stream, then drops the stream: the model's next send reports that
/// the reader left and it stops.
asio::awaitable<std::string> read_first_word(modelpool::Pool& pool, std::string path) {
    const std::string query = "words"; // named: see the g++ 12 note in README.md
    auto stream = co_await pool.describe_image(key, path, query, asio::use_awaitable);
    if (!stream) {
        co_return "error: " + stream.error().to_string();
    }
    auto first = co_await stream->async_next(asio::use_awaitable);
    co_return first&&* first ? (*first)->text : std::string("(no chunk)");
}

/// Checks that `outcome` failed with invalid_argument and that its message names `what`.
template <class T>
void expect_invalid(demo::Checks& checks, const result<T>& outcome, std::string_view what,
                    std::string_view name) {
    if (outcome) {
        checks.check(false, "{} succeeded; expected invalid_argument", what);
        return;
    }
    std::printf("%.*s -> %s\n", static_cast<int>(what.size()), what.data(),
                outcome.error().to_string().c_str());
    checks.check(outcome.error().code() == errc::invalid_argument &&
                     outcome.error().message().find(name) != std::string::npos,
                 "{}: expected invalid_argument naming '{}', got {}", what, name,
                 outcome.error().to_string());
}

int run(const demo::ExampleOptions& options, demo::Checks& checks) {
    using runtimes::tesseract_ocr::per_worker_mb;
    demo::WeightStore store(options.cache_dir);

    // The images, rendered afresh on every run (so the file, the data: URL and the http:// URL hold the same
    // bytes). A missing font throws here, naming the font and its package.
    struct Image {
        Sample sample;
        std::string path;
        std::string data_url;
    };
    std::vector<Image> images;
    for (auto& sample : samples()) {
        auto png = runtimes::tesseract_ocr::render_text_png(sample.lines);
        if (!png) {
            throw std::runtime_error(png.error().to_string());
        }
        std::filesystem::remove(store.dir() / sample.file);
        const auto path = store.ensure(sample.file, [&] { return *png; }).string();
        images.push_back({sample, path, "data:image/png;base64," + demo::base64_encode(*png)});
    }
    const auto corrupt = store.ensure("ocr-corrupt.png", [] {
        return std::string("\x89PNG\r\n\x1a\n", 8) + "not really a PNG: the chunks are missing";
    });

    // Two workers, plus room for the registered model below (which will fail to load).
    modelpool::Pool pool({.io_threads = 1,
                          .blocking_threads = 2,
                          .memory_limit_mb = 4 * per_worker_mb,
                          .logger = options.logger,
                          .load_retries = 0});
    demo::WeightServer server(pool.get_executor(), store);
    const auto loader = runtimes::tesseract_ocr::loader(pool.blocking_executor());
    for (int i = 0; i < 2; ++i) {
        if (!demo::reserve_and_spawn(pool, checks, key, per_worker_mb, [&](modelpool::AllocationGuard guard) {
                return pool.spawn_vision_worker(key, loader, per_worker_mb, std::move(guard));
            })) {
            return 1;
        }
    }
    const auto no_data_dir = (store.dir() / "no-tessdata").string();
    checks.ok(pool.register_vision_model(
                  missing_key,
                  runtimes::tesseract_ocr::loader(pool.blocking_executor(), {.tessdata_dir = no_data_dir}),
                  {.per_worker_mb = per_worker_mb, .min_workers = 0, .max_workers = 1}),
              "registering the model without language data");

    // Every image, every way.
    for (const auto& image : images) {
        const auto& known = image.sample.lines;
        std::string known_text;
        for (const auto& line : known) {
            known_text += (known_text.empty() ? "" : " ") + line;
        }
        const auto lines = ocr(pool, key, image.path, false, "");
        if (!checks.ok(lines, "OCR of " + image.path)) {
            continue;
        }
        const auto text = normalise(join(*lines));
        const auto distance = edit_distance(text, known_text);
        std::printf("%s: %zu lines, edit distance %zu\n", image.sample.file.c_str(), lines->size(), distance);
        for (const auto& line : *lines) {
            std::printf("  | %s", line.c_str());
        }
        checks.check(distance == 0, "{}: OCR text '{}' differs from the rendered '{}' (edit distance {})",
                     image.sample.file, text, known_text, distance);
        checks.check(lines->size() == known.size(), "{}: {} line chunks for {} lines", image.sample.file,
                     lines->size(), known.size());
        for (std::size_t i = 0; i < std::min(lines->size(), known.size()); ++i) {
            checks.check((*lines)[i].ends_with('\n') && normalise((*lines)[i]) == known[i],
                         "{}: line {} is '{}', expected '{}'", image.sample.file, i + 1, (*lines)[i],
                         known[i]);
        }

        const auto by_data_url = ocr(pool, key, image.data_url, true, "lines");
        const auto by_http = ocr(pool, key, server.url(image.sample.file), true, "");
        checks.check(by_data_url && *by_data_url == *lines, "{}: the data: URL read differently",
                     image.sample.file);
        checks.check(by_http && *by_http == *lines, "{}: the http:// URL read differently ({})",
                     image.sample.file, by_http ? "" : by_http.error().to_string());

        const auto words = ocr(pool, key, image.path, false, "Words");
        if (checks.ok(words, "words of " + image.path)) {
            std::vector<std::string> stripped;
            for (const auto& w : *words) {
                stripped.push_back(normalise(w));
            }
            checks.check(stripped == split_words(known_text), "{}: words mode gave {} chunks: '{}'",
                         image.sample.file, words->size(), join(*words));
            checks.check(join(*words) == join(*lines), "{}: words do not concatenate to the lines",
                         image.sample.file);
        }

        const auto layout = ocr(pool, key, image.path, false, " layout ");
        if (checks.ok(layout, "layout of " + image.path) && !layout->empty()) {
            std::printf("  %s", layout->front().c_str());
            const auto line_entries = std::count_if(layout->begin(), layout->end(), [](const std::string& c) {
                return c.starts_with("    line ");
            });
            checks.check(layout->front().find(
                             fmt::format(", {} line{},", known.size(), known.size() == 1 ? "" : "s")) !=
                                 std::string::npos &&
                             static_cast<std::size_t>(line_entries) == known.size(),
                         "{}: layout reports '{}' and {} line entries; expected {} lines", image.sample.file,
                         layout->front(), line_entries, known.size());
        }
    }

    // Bad input: each a clear invalid_argument naming what was wrong.
    const auto& first = images.front();
    expect_invalid(checks, ocr(pool, key, first.path, false, "summary"), "the query 'summary'", "summary");
    expect_invalid(checks, ocr(pool, key, corrupt.string(), false, ""), "a corrupt PNG file",
                   corrupt.string());
    const std::string bad_data_url = "data:image/png;base64," + demo::base64_encode("not an image at all");
    expect_invalid(checks, ocr(pool, key, bad_data_url, true, ""), "a data: URL of no image",
                   "data:image/png");
    const auto missing_file = (store.dir() / "no-such-image.png").string();
    expect_invalid(checks, ocr(pool, key, missing_file, false, ""), "a missing file", missing_file);

    // A reader that leaves after the first word; the worker goes on serving.
    const auto first_word = demo::run_coroutine(pool.get_executor(), read_first_word(pool, first.path));
    const auto after = ocr(pool, key, first.path, false, "");
    std::printf("abandoned after the first word: '%s'\n", first_word.c_str());
    checks.check(first_word == split_words(first.sample.lines.front()).front() + " ",
                 "the abandoned stream's first chunk was '{}'", first_word);
    checks.check(after && after->size() == first.sample.lines.size(),
                 "after the abandoned stream the worker answered {}",
                 after ? std::to_string(after->size()) + " lines" : after.error().to_string());

    // The registered model without language data: its workers fail to load, the request names the path.
    const auto no_data = ocr(pool, missing_key, first.path, false, "");
    std::printf("missing language data -> %s\n", no_data ? "text" : no_data.error().to_string().c_str());
    checks.check(!no_data && no_data.error().code() == errc::spawn_failed &&
                     no_data.error().message().find(no_data_dir) != std::string::npos,
                 "missing language data: expected spawn_failed naming '{}', got {}", no_data_dir,
                 no_data ? "text" : no_data.error().to_string());

    server.close();
    pool.stop();
    const auto left = pool.governor().allocated_mb();
    std::printf("pool stopped; governor holds %zu MB\n", left);
    checks.check(left == 0, "the governor still holds {} MB after stop", left);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(argc, argv, "tesseract_ocr", "OCR with Tesseract behind the vision capability",
                              run);
}
