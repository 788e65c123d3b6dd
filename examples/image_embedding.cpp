// modelpool example: the image_embedding capability, served by a demo colour-histogram embedder (not a neural
// network; see examples/models/color_histogram_embedder.hpp).
//
// It generates a small gallery of procedural images (discs, squares, stripes in a few colours) as PNG files
// in the cache directory, starts a loopback HTTP server for the weight file and the images, spawns one worker
// whose loader fetches its weights over HTTP, and calls every operation of the capability twice: from a
// coroutine (`use_awaitable`) and from main's thread (`use_future`). It prints each image's nearest
// neighbour by cosine similarity.
//
// Smoke checks (`--smoke`): a red disc is nearer another red disc than blue stripes; the embeddings of a
// file, of the same image fetched by URL and of its base64 are equal; a batch equals the single calls; both
// calling styles agree; a missing file and a corrupted PNG (bad CRC) fail with invalid_argument.
#include "models/color_histogram_embedder.hpp"
#include "models/image.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <boost/asio/use_future.hpp>

#include <cstdio>
#include <string>
#include <vector>

namespace {

namespace asio = modelpool::asio;
using demo::ColorHistogramEmbedder;
using demo::Shape;
using modelpool::Embedding;
using modelpool::result;

constexpr std::string_view key = "color-histogram";

/// The embeddings one calling style produced: one per gallery image through each operation.
struct Embeddings {
    std::vector<Embedding> by_path, by_url, by_base64, batch;
    modelpool::errc missing_file = modelpool::errc::ok, corrupt_png = modelpool::errc::ok;
};

struct Gallery {
    std::vector<std::string> names, paths, urls, base64;
    std::string corrupt_base64; // a PNG with one byte of its image data changed
};

/// Every operation, coroutine style.
asio::awaitable<result<Embeddings>> embed_with_coroutines(modelpool::Pool& pool, const Gallery& gallery) {
    Embeddings out;
    for (std::size_t i = 0; i < gallery.paths.size(); ++i) {
        auto by_path = co_await pool.embed_image(key, gallery.paths[i], asio::use_awaitable);
        auto by_url = co_await pool.embed_image_url(key, gallery.urls[i], asio::use_awaitable);
        auto by_base64 = co_await pool.embed_image_base64(key, gallery.base64[i], asio::use_awaitable);
        if (!by_path || !by_url || !by_base64) {
            co_return modelpool::unexpected<modelpool::PoolError>(!by_path  ? by_path.error()
                                                                  : !by_url ? by_url.error()
                                                                            : by_base64.error());
        }
        out.by_path.push_back(std::move(*by_path));
        out.by_url.push_back(std::move(*by_url));
        out.by_base64.push_back(std::move(*by_base64));
    }
    auto batch = co_await pool.batch_embed_images(key, gallery.paths, asio::use_awaitable);
    if (!batch) {
        co_return modelpool::unexpected<modelpool::PoolError>(batch.error());
    }
    out.batch = std::move(*batch);
    const std::string missing_path = "no-such-image.png"; // named: see the g++ 12 note in README.md
    auto missing = co_await pool.embed_image(key, missing_path, asio::use_awaitable);
    out.missing_file = missing ? modelpool::errc::ok : missing.error().code();
    auto corrupt = co_await pool.embed_image_base64(key, gallery.corrupt_base64, asio::use_awaitable);
    out.corrupt_png = corrupt ? modelpool::errc::ok : corrupt.error().code();
    co_return out;
}

/// Every operation, future style: main's thread waits on each result (never a pool thread).
result<Embeddings> embed_with_futures(modelpool::Pool& pool, const Gallery& gallery) {
    Embeddings out;
    for (std::size_t i = 0; i < gallery.paths.size(); ++i) {
        auto by_path = pool.embed_image(key, gallery.paths[i], asio::use_future);
        auto by_url = pool.embed_image_url(key, gallery.urls[i], asio::use_future);
        auto by_base64 = pool.embed_image_base64(key, gallery.base64[i], asio::use_future);
        for (auto* reply : {&by_path, &by_url, &by_base64}) {
            auto v = reply->get();
            if (!v) {
                return modelpool::unexpected<modelpool::PoolError>(v.error());
            }
            (reply == &by_path ? out.by_path : reply == &by_url ? out.by_url : out.by_base64).push_back(*v);
        }
    }
    auto batch = pool.batch_embed_images(key, gallery.paths, asio::use_future).get();
    if (!batch) {
        return modelpool::unexpected<modelpool::PoolError>(batch.error());
    }
    out.batch = std::move(*batch);
    auto missing = pool.embed_image(key, "no-such-image.png", asio::use_future).get();
    out.missing_file = missing ? modelpool::errc::ok : missing.error().code();
    auto corrupt = pool.embed_image_base64(key, gallery.corrupt_base64, asio::use_future).get();
    out.corrupt_png = corrupt ? modelpool::errc::ok : corrupt.error().code();
    return out;
}

int run(const demo::ExampleOptions& options, demo::Checks& checks) {
    // The weight file and the gallery: generated once into the cache directory, served over loopback HTTP.
    demo::WeightStore store(options.cache_dir);
    store.ensure(std::string(ColorHistogramEmbedder::weights_file), ColorHistogramEmbedder::generate_weights);
    struct Entry {
        std::string name;
        demo::Scene scene;
    };
    std::vector<Entry> entries = {
        {"red-disc-a", {Shape::disc, demo::color_named("red"), demo::color_named("white"), 1}},
        {"red-disc-b", {Shape::disc, demo::color_named("red"), demo::color_named("white"), 2}},
        {"blue-stripes", {Shape::stripes, demo::color_named("blue"), demo::color_named("white"), 3}},
        {"red-square", {Shape::square, demo::color_named("red"), demo::color_named("white"), 4}}};
    if (!options.smoke) {
        entries.push_back(
            {"blue-stripes-b", {Shape::stripes, demo::color_named("blue"), {255, 255, 255}, 5}});
        entries.push_back({"green-square", {Shape::square, demo::color_named("green"), {0, 0, 0}, 6}});
        entries.push_back({"green-disc", {Shape::disc, demo::color_named("green"), {0, 0, 0}, 7}});
    }
    modelpool::Pool pool(
        {.io_threads = 1, .blocking_threads = 2, .memory_limit_mb = 256, .logger = options.logger});
    demo::WeightServer server(pool.get_executor(), store);
    Gallery gallery;
    for (const auto& entry : entries) {
        const std::string file = "image-embedding-" + entry.name + ".png";
        const auto png = demo::encode_png(demo::render_scene(entry.scene, 96, 96));
        gallery.names.push_back(entry.name);
        gallery.paths.push_back(store.ensure(file, [&] { return png; }).string());
        gallery.urls.push_back(server.url(file));
        gallery.base64.push_back(demo::base64_encode(png));
    }
    auto corrupt = demo::encode_png(demo::render_scene(entries[0].scene, 96, 96));
    corrupt[corrupt.size() / 2] ^= 0x55;
    gallery.corrupt_base64 = demo::base64_encode(corrupt);

    // One worker; its loader fetches the weight file over HTTP on the pool's io_context.
    const auto loader = ColorHistogramEmbedder::loader(server.url(ColorHistogramEmbedder::weights_file),
                                                       pool.blocking_executor());
    if (!demo::reserve_and_spawn(pool, checks, key, 16, [&](modelpool::AllocationGuard guard) {
            return pool.spawn_image_embedding_worker(key, loader, 16, std::move(guard));
        })) {
        return 1;
    }

    auto coro = demo::run_coroutine(pool.get_executor(), embed_with_coroutines(pool, gallery));
    auto futures = embed_with_futures(pool, gallery);
    server.close();
    pool.stop();
    if (!checks.ok(coro, "the coroutine-style requests") ||
        !checks.ok(futures, "the future-style requests")) {
        return 1;
    }

    const auto& v = coro->by_path;
    for (std::size_t i = 0; i < v.size(); ++i) {
        std::size_t best = i == 0 ? 1 : 0;
        for (std::size_t j = 0; j < v.size(); ++j) {
            if (j != i && ColorHistogramEmbedder::similarity(v[i], v[j]) >
                              ColorHistogramEmbedder::similarity(v[i], v[best])) {
                best = j;
            }
        }
        std::printf("%-15s nearest: %-15s (cosine %.3f)\n", gallery.names[i].c_str(),
                    gallery.names[best].c_str(), ColorHistogramEmbedder::similarity(v[i], v[best]));
    }
    std::printf("%zu dimensions; weight server: %zu requests, %zu bytes\n", v[0].size(),
                server.requests_served(), server.bytes_served());

    checks.check(v[0].size() == 4 * 4 * 4 + 8, "embedding has {} dimensions, expected 72", v[0].size());
    const float same = ColorHistogramEmbedder::similarity(v[0], v[1]);
    const float other = ColorHistogramEmbedder::similarity(v[0], v[2]);
    checks.check(same > other, "red disc is nearer blue stripes ({}) than another red disc ({})", other,
                 same);
    for (const auto* style : {&*coro, &*futures}) {
        checks.check(style->by_url == v && style->by_base64 == v && style->by_path == v,
                     "path, url and base64 embeddings differ");
        checks.check(style->batch == v, "batch_embed_images differs from the single calls");
        checks.check(style->missing_file == modelpool::errc::invalid_argument, "a missing file gave {}",
                     style->missing_file);
        checks.check(style->corrupt_png == modelpool::errc::invalid_argument, "a corrupted PNG gave {}",
                     style->corrupt_png);
    }
    checks.check(server.requests_served() >= 1 + 2 * v.size(), "the server saw {} requests",
                 server.requests_served());
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(argc, argv, "image_embedding", "colour-histogram image embeddings", run);
}
