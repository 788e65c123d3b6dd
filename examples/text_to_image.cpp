// modelpool example: the text_to_image capability, served by a demo procedural painter (not a neural network;
// see examples/models/procedural_painter.hpp): prompt words choose colours and a shape from its vocabulary,
// the seed places them, and the image is refined from noise in `steps` steps, each reported as progress.
//
// It starts a loopback HTTP server for the painter's vocabulary (its "weights"), spawns one worker whose
// loader fetches it over HTTP, generates images from a coroutine (`use_awaitable`) and from main's thread
// (`use_future`, reading the stream with futures too), and writes them to the cache directory as PNG and PPM
// files, which it reads back. It also asks for an absurd size, which the model refuses.
//
// Smoke checks (`--smoke`): progress steps arrive 1..N in order before the image; the PNG and PPM files read
// back with the requested width x height and the same pixels; the same prompt and seed give identical pixels
// in both calling styles, another seed other pixels; "a red disc on blue" is red in the middle and blue in
// the corners; a 100000-pixel-wide request ends with invalid_argument.
#include "models/image.hpp"
#include "models/procedural_painter.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <boost/asio/use_future.hpp>

#include <cstdint>
#include <cstdio>
#include <numeric>
#include <string>
#include <variant>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using demo::ProceduralPainter;
using modelpool::ImageChunk;
using modelpool::ImageConfig;
using modelpool::result;

constexpr std::string_view key = "procedural-painter";

/// A finished generation: the progress steps seen, in order, and the image (empty if none came last).
struct Painting {
    std::vector<std::uint32_t> steps;
    std::uint32_t total = 0;
    modelpool::Image image;
};

Painting sort_chunks(const std::vector<ImageChunk>& chunks) {
    Painting p;
    for (const auto& chunk : chunks) {
        if (const auto* progress = std::get_if<modelpool::ImageProgress>(&chunk)) {
            p.steps.push_back(progress->step);
            p.total = progress->total;
        }
    }
    if (!chunks.empty() && std::holds_alternative<modelpool::Image>(chunks.back())) {
        p.image = std::get<modelpool::Image>(chunks.back());
    }
    return p;
}

/// A request: prompt and configuration.
struct Request {
    std::string prompt;
    ImageConfig config;
};

/// Every request, coroutine style, printing progress as it arrives.
asio::awaitable<std::vector<result<Painting>>> paint_with_coroutines(modelpool::Pool& pool,
                                                                     std::vector<Request> requests) {
    std::vector<result<Painting>> out;
    for (const auto& r : requests) {
        auto stream = co_await pool.generate_image(key, r.prompt, r.config, asio::use_awaitable);
        if (!stream) {
            out.emplace_back(modelpool::unexpected<modelpool::PoolError>(stream.error()));
            continue;
        }
        std::vector<ImageChunk> chunks;
        for (;;) {
            auto next = co_await stream->async_next(asio::use_awaitable);
            if (!next || !*next) {
                out.push_back(next ? result<Painting>(sort_chunks(chunks))
                                   : modelpool::unexpected<modelpool::PoolError>(next.error()));
                break;
            }
            if (const auto* progress = std::get_if<modelpool::ImageProgress>(&**next)) {
                std::printf("  '%s': step %u of %u\n", r.prompt.c_str(), progress->step, progress->total);
            }
            chunks.push_back(std::move(**next));
        }
    }
    co_return out;
}

/// Every request, future style: main's thread waits for each stream and each chunk (never a pool thread).
std::vector<result<Painting>> paint_with_futures(modelpool::Pool& pool,
                                                 const std::vector<Request>& requests) {
    std::vector<result<Painting>> out;
    for (const auto& r : requests) {
        auto stream = pool.generate_image(key, r.prompt, r.config, asio::use_future).get();
        auto chunks = stream ? demo::collect_stream_blocking(*stream)
                             : modelpool::unexpected<modelpool::PoolError>(stream.error());
        out.push_back(chunks ? result<Painting>(sort_chunks(*chunks))
                             : modelpool::unexpected<modelpool::PoolError>(chunks.error()));
    }
    return out;
}

int run(const demo::ExampleOptions& options, demo::Checks& checks) {
    demo::WeightStore store(options.cache_dir);
    store.ensure(std::string(ProceduralPainter::weights_file), ProceduralPainter::generate_weights);
    modelpool::Pool pool(
        {.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 256, .logger = options.logger});
    demo::WeightServer server(pool.get_executor(), store);
    const auto loader =
        ProceduralPainter::loader(server.url(ProceduralPainter::weights_file), pool.blocking_executor());
    if (!demo::reserve_and_spawn(pool, checks, key, 16, [&](modelpool::AllocationGuard guard) {
            return pool.spawn_text_to_image_worker(key, loader, 16, std::move(guard));
        })) {
        return 1;
    }

    const std::uint32_t side = options.smoke ? 96 : 256;
    const std::vector<Request> requests = {
        {"a red disc on blue", {.width = side + 64, .height = side, .steps = 5, .seed = 42}},
        {"a red disc on blue", {.width = side + 64, .height = side, .steps = 5, .seed = 43}},
        {"navy stripes over a yellow flag", {.width = side, .height = side, .steps = 3, .seed = 7}},
        {"too big", {.width = 100000, .height = 10, .steps = 1, .seed = 1}}};
    auto coro = demo::run_coroutine(pool.get_executor(), paint_with_coroutines(pool, requests));
    auto futures = paint_with_futures(pool, requests);
    server.close();
    pool.stop();

    // Save each painting as PNG and PPM (on main's thread: the pool has stopped) and read both back.
    for (std::size_t i = 0; i + 1 < requests.size(); ++i) {
        if (!checks.ok(coro[i], requests[i].prompt) || !checks.ok(futures[i], requests[i].prompt)) {
            return 1;
        }
        const auto& p = *coro[i];
        const auto& config = requests[i].config;
        std::vector<std::uint32_t> expected(config.steps);
        std::iota(expected.begin(), expected.end(), 1u);
        checks.check(p.steps == expected && p.total == config.steps,
                     "request {}: {} progress chunks out of order", i, p.steps.size());
        checks.check(p.image.pixels == futures[i]->image.pixels, "request {}: the two calling styles differ",
                     i);
        for (const char* extension : {".png", ".ppm"}) {
            const auto path = store.dir() / ("text-to-image-" + std::to_string(i) + extension);
            auto saved = demo::save_image(path, p.image);
            auto back =
                saved ? demo::load_image(path) : modelpool::unexpected<modelpool::PoolError>(saved.error());
            if (checks.ok(back, "reading " + path.string())) {
                checks.check(back->width == config.width && back->height == config.height &&
                                 back->pixels == p.image.pixels,
                             "{} reads back as {}x{}, expected {}x{}", path.string(), back->width,
                             back->height, config.width, config.height);
                std::printf("'%s' (seed %llu, %u steps) -> %s, %ux%u\n", requests[i].prompt.c_str(),
                            static_cast<unsigned long long>(*config.seed), config.steps,
                            path.string().c_str(), back->width, back->height);
            }
        }
    }
    const auto& red_disc = coro[0]->image;
    const auto red = demo::color_named("red");
    const auto blue = demo::color_named("blue");
    checks.check(demo::pixel_at(red_disc, red_disc.width / 2, red_disc.height / 2) == red &&
                     demo::pixel_at(red_disc, 0, 0) == blue &&
                     demo::pixel_at(red_disc, red_disc.width - 1, red_disc.height - 1) == blue,
                 "'a red disc on blue' is not red in the middle and blue in the corners");
    checks.check(coro[0]->image.pixels != coro[1]->image.pixels, "seeds 42 and 43 gave the same pixels");
    for (const auto* big : {&coro.back(), &futures.back()}) {
        checks.check(!*big && (*big).error().code() == modelpool::errc::invalid_argument,
                     "an absurd size gave {}", *big ? "an image" : (*big).error().to_string());
    }
    if (!coro.back()) {
        std::printf("'too big' -> %s\n", coro.back().error().to_string().c_str());
    }
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(argc, argv, "text_to_image", "procedural images from prompts", run);
}
