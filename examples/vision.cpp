// modelpool example: the vision capability, served by a demo shape describer (not a neural network; see
// examples/models/shape_describer.hpp), which names the colours, shapes and layout of simple images and
// streams its description word by word.
//
// It generates a few procedural images as PNG and PPM files in the cache directory, starts a loopback HTTP
// server for the colour-name table (the model's "weights") and the images, spawns one worker whose loader
// fetches the table over HTTP, and calls both operations of the capability from a coroutine (`use_awaitable`)
// and from main's thread (`use_future`, reading the stream with futures too). It also closes a stream after
// its first word, which tells the model to stop, and shows that the worker goes on serving.
//
// Smoke checks (`--smoke`): the red disc is described as "red" and a "disc" in the centre on white; stripes
// as "stripes"; a "colours" query names colours but no shape; descriptions arrive as several chunks; a file
// and the same image by URL read alike; both calling styles agree; a missing file fails with
// invalid_argument; an abandoned stream leaves the worker serving.
#include "models/image.hpp"
#include "models/shape_describer.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <boost/asio/use_future.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using demo::Shape;
using demo::ShapeDescriber;
using modelpool::result;
using modelpool::TextChunk;

constexpr std::string_view key = "shape-describer";

/// One description: its text and the number of chunks it arrived in.
struct Description {
    std::string text;
    std::size_t chunks = 0;
};

Description join(const std::vector<TextChunk>& chunks) {
    Description d{{}, chunks.size()};
    for (const auto& chunk : chunks) {
        d.text += chunk.text;
    }
    return d;
}

/// A request: the image (path or URL) and the query.
struct Request {
    std::string image;
    bool is_url = false;
    std::string query;
};

/// Every request, coroutine style; then a stream abandoned after its first chunk.
asio::awaitable<result<std::vector<Description>>> describe_with_coroutines(modelpool::Pool& pool,
                                                                           std::vector<Request> requests) {
    std::vector<Description> out;
    for (const auto& r : requests) {
        std::optional<result<modelpool::Stream<TextChunk>>> stream;
        if (r.is_url) {
            stream.emplace(co_await pool.describe_url(key, r.image, r.query, asio::use_awaitable));
        } else {
            stream.emplace(co_await pool.describe_image(key, r.image, r.query, asio::use_awaitable));
        }
        if (!*stream) {
            co_return modelpool::unexpected<modelpool::PoolError>(stream->error());
        }
        auto chunks = co_await demo::collect_stream(**stream);
        if (!chunks) {
            co_return modelpool::unexpected<modelpool::PoolError>(chunks.error());
        }
        out.push_back(join(*chunks));
    }
    // Read one word and drop the stream: the model's next send reports false and it stops.
    const std::string any_query; // named: see the g++ 12 note in README.md
    auto stream = co_await pool.describe_image(key, requests[0].image, any_query, asio::use_awaitable);
    if (stream) {
        auto first = co_await stream->async_next(asio::use_awaitable);
        out.push_back({first && *first ? (*first)->text : std::string(), 1});
    }
    co_return out;
}

/// Every request, future style: main's thread waits for each stream and each chunk (never a pool thread).
result<std::vector<Description>> describe_with_futures(modelpool::Pool& pool,
                                                       const std::vector<Request>& requests) {
    std::vector<Description> out;
    for (const auto& r : requests) {
        auto stream = (r.is_url ? pool.describe_url(key, r.image, r.query, asio::use_future)
                                : pool.describe_image(key, r.image, r.query, asio::use_future))
                          .get();
        if (!stream) {
            return modelpool::unexpected<modelpool::PoolError>(stream.error());
        }
        auto chunks = demo::collect_stream_blocking(*stream);
        if (!chunks) {
            return modelpool::unexpected<modelpool::PoolError>(chunks.error());
        }
        out.push_back(join(*chunks));
    }
    return out;
}

bool contains(const std::string& text, std::string_view word) {
    return text.find(word) != std::string::npos;
}

int run(const demo::ExampleOptions& options, demo::Checks& checks) {
    demo::WeightStore store(options.cache_dir);
    store.ensure(std::string(ShapeDescriber::weights_file), ShapeDescriber::generate_weights);
    modelpool::Pool pool(
        {.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 256, .logger = options.logger});
    demo::WeightServer server(pool.get_executor(), store);

    // The images: PNG files served over HTTP too, and one PPM file.
    auto png = [&](const std::string& file, demo::Scene scene) {
        store.ensure(file, [&] { return demo::encode_png(demo::render_scene(scene, 128, 96)); });
        return server.url(file);
    };
    const auto red_disc =
        png("vision-red-disc.png", {Shape::disc, demo::color_named("red"), {255, 255, 255}, 1});
    const auto stripes =
        png("vision-green-stripes.png", {Shape::stripes, demo::color_named("green"), {255, 255, 255}, 2});
    const auto gradient = png("vision-gradient.png",
                              {Shape::gradient, demo::color_named("navy"), demo::color_named("yellow"), 3});
    const auto square = store.ensure("vision-blue-square.ppm", [] {
        return demo::encode_ppm(
            demo::render_scene({Shape::square, demo::color_named("blue"), {0, 0, 0}, 4}, 80, 80));
    });
    const auto disc_path = (store.dir() / "vision-red-disc.png").string();
    std::vector<Request> requests = {{disc_path, false, "describe the image"},
                                     {red_disc, true, "describe the image"},
                                     {red_disc, true, "which colours?"},
                                     {stripes, true, "shapes"},
                                     {square.string(), false, ""},
                                     {gradient, true, ""},
                                     {(store.dir() / "no-such-image.png").string(), false, ""}};

    const auto loader =
        ShapeDescriber::loader(server.url(ShapeDescriber::weights_file), pool.blocking_executor());
    if (!demo::reserve_and_spawn(pool, checks, key, 16, [&](modelpool::AllocationGuard guard) {
            return pool.spawn_vision_worker(key, loader, 16, std::move(guard));
        })) {
        return 1;
    }

    // The last request fails (missing file): run it alone to see its error, the others in both styles.
    const Request missing = requests.back();
    requests.pop_back();
    auto coro = demo::run_coroutine(pool.get_executor(), describe_with_coroutines(pool, requests));
    auto futures = describe_with_futures(pool, requests);
    auto missing_stream = pool.describe_image(key, missing.image, missing.query, asio::use_future).get();
    auto missing_result = missing_stream
                              ? demo::collect_stream_blocking(*missing_stream)
                              : modelpool::unexpected<modelpool::PoolError>(missing_stream.error());
    server.close();
    pool.stop();
    if (!checks.ok(coro, "the coroutine-style requests") ||
        !checks.ok(futures, "the future-style requests")) {
        return 1;
    }

    const auto& d = *coro;
    for (std::size_t i = 0; i < requests.size(); ++i) {
        std::printf("%s (\"%s\"):\n  %s\n", requests[i].image.c_str(), requests[i].query.c_str(),
                    d[i].text.c_str());
    }
    std::printf("abandoned after the first word: \"%s\"\n", d.back().text.c_str());

    checks.check(contains(d[0].text, "A red disc in the centre on a white background"), "red disc: '{}'",
                 d[0].text);
    checks.check(d[0].chunks > 5, "the description came in {} chunks", d[0].chunks);
    checks.check(d[1].text == d[0].text, "by URL: '{}', by path: '{}'", d[1].text, d[0].text);
    checks.check(contains(d[2].text, "Colours: white") && contains(d[2].text, "red") &&
                     !contains(d[2].text, "disc"),
                 "colours query: '{}'", d[2].text);
    checks.check(contains(d[3].text, "stripes") && !contains(d[3].text, "Colours"), "stripes: '{}'",
                 d[3].text);
    checks.check(contains(d[4].text, "A blue square"), "blue square (PPM): '{}'", d[4].text);
    checks.check(contains(d[5].text, "gradient from navy"), "gradient: '{}'", d[5].text);
    checks.check(d.size() == requests.size() + 1 && d.back().text == "A ", "abandoned stream read '{}'",
                 d.back().text);
    for (std::size_t i = 0; i < requests.size(); ++i) {
        checks.check((*futures)[i].text == d[i].text, "future style: '{}'", (*futures)[i].text);
    }
    checks.check(!missing_result && missing_result.error().code() == modelpool::errc::invalid_argument,
                 "a missing file gave {}",
                 missing_result ? "a description" : missing_result.error().to_string());
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(argc, argv, "vision", "describe simple images in words", run);
}
