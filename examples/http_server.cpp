// modelpool example: an OpenAI-compatible HTTP server (modelpool::http) in front of a pool of demo models.
//
// Shows: mounting a pool in a few lines: register the models, name which OpenAI model maps to which pool key,
// `listen()`; then serving until Ctrl+C / SIGTERM, which drains (readiness turns 503 at once, in-flight
// requests finish within the grace). Models: the n-gram embedder ("text-embedding-demo"), the n-gram
// generator
// ("demo-chat") and the procedural painter ("demo-painter") of examples/models/, each loading its weights
// over loopback HTTP from a WeightServer.
//
//     modelpool_example_http_server            # serves on 127.0.0.1:8000, e.g.
//     curl -s localhost:8000/v1/embeddings -d '{"model":"text-embedding-demo","input":"slow and steady"}'
//
// `--smoke` starts the server on an ephemeral port and checks its answers with a Beast client: the model
// list, embeddings (single and batch, float and base64), a completion, a streamed chat ending with [DONE], an
// image whose PNG header has the requested size, and a 404 for an unknown model.
#include "models/aesop_text.hpp"
#include "models/ngram_embedder.hpp"
#include "models/ngram_generator.hpp"
#include "models/procedural_painter.hpp"
#include "support/example_main.hpp"
#include "support/weight_store.hpp"

#include <modelpool/http/detail/base64.hpp>
#include <modelpool/http/server.hpp>
#include <modelpool/modelpool.hpp>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

namespace asio = modelpool::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace json = boost::json;
using namespace std::chrono_literals;

/// One request over a fresh connection (the smoke checks' client): the status and the body.
std::pair<unsigned, std::string> call(std::uint16_t port, bhttp::verb verb, std::string_view target,
                                      std::string body = {}) {
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.connect(asio::ip::tcp::endpoint(asio::ip::address_v4::loopback(), port));
    bhttp::request<bhttp::string_body> request{verb, target, 11};
    request.set(bhttp::field::host, "127.0.0.1");
    request.set(bhttp::field::content_type, "application/json");
    request.body() = std::move(body);
    request.prepare_payload();
    bhttp::write(stream, request);
    beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> response;
    bhttp::read(stream, buffer, response);
    return {response.result_int(), response.body()};
}

/// The smoke checks: real answers from the running server.
void smoke(std::uint16_t port, demo::Checks& checks) {
    auto [status, models] = call(port, bhttp::verb::get, "/v1/models");
    checks.check(status == 200 && models.find("\"text-embedding-demo\"") != std::string::npos &&
                     models.find("\"demo-chat\"") != std::string::npos,
                 "GET /v1/models: {} {}", status, models);

    auto [embed_status, embed_body] = call(
        port, bhttp::verb::post, "/v1/embeddings",
        R"({"model":"text-embedding-demo","input":["slow and steady wins the race","persuasion beats force"]})");
    if (checks.check(embed_status == 200, "embeddings: {} {}", embed_status, embed_body)) {
        auto data = json::parse(embed_body).at("data").as_array();
        checks.check(data.size() == 2, "embeddings: {} vectors for 2 inputs", data.size());
        double norm = 0;
        for (const auto& value : data[0].at("embedding").as_array()) {
            norm += value.to_number<double>() * value.to_number<double>();
        }
        checks.check(std::abs(std::sqrt(norm) - 1.0) < 1e-3, "embedding norm {} (expected 1)",
                     std::sqrt(norm));
    }
    auto [b64_status, b64_body] =
        call(port, bhttp::verb::post, "/v1/embeddings",
             R"({"model":"text-embedding-demo","input":"hi","encoding_format":"base64"})");
    if (checks.check(b64_status == 200, "base64 embeddings: {} {}", b64_status, b64_body)) {
        auto bytes = modelpool::http::detail::base64_decode(
            json::parse(b64_body).at("data").as_array()[0].at("embedding").as_string());
        checks.check(bytes && bytes->size() == 256 * 4, "base64 embedding has {} bytes, expected 1024",
                     bytes ? bytes->size() : 0);
    }

    auto [text_status, text_body] =
        call(port, bhttp::verb::post, "/v1/completions",
             R"({"model":"demo-chat","prompt":"The Fox and the","max_tokens":8,"seed":1})");
    if (checks.check(text_status == 200, "completions: {} {}", text_status, text_body)) {
        auto body = json::parse(text_body);
        const auto& text = body.at("choices").as_array()[0].at("text").as_string();
        checks.check(!text.empty(), "completion text is empty");
        checks.check(body.at("usage").at("completion_tokens").to_number<int>() > 0, "no completion tokens");
        fmt::print("completion: {}\n", std::string_view(text));
    }

    auto [chat_status, chat_body] = call(
        port, bhttp::verb::post, "/v1/chat/completions",
        R"({"model":"demo-chat","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"a lion"}]})");
    checks.check(chat_status == 200 && chat_body.starts_with("data: {") &&
                     chat_body.ends_with("data: [DONE]\n\n") &&
                     chat_body.find("chat.completion.chunk") != std::string::npos,
                 "streamed chat: {} {}", chat_status, chat_body);

    auto [image_status, image_body] =
        call(port, bhttp::verb::post, "/v1/images/generations",
             R"({"model":"demo-painter","prompt":"a red disc on blue","size":"64x48"})");
    if (checks.check(image_status == 200, "images: {} {}", image_status, image_body.substr(0, 200))) {
        auto png = modelpool::http::detail::base64_decode(
            json::parse(image_body).at("data").as_array()[0].at("b64_json").as_string());
        const auto be32 = [&](std::size_t at) {
            return (std::uint32_t{(*png)[at]} << 24) | (std::uint32_t{(*png)[at + 1]} << 16) |
                   (std::uint32_t{(*png)[at + 2]} << 8) | (*png)[at + 3];
        };
        checks.check(png && png->size() > 24 && (*png)[1] == 'P' && be32(16) == 64 && be32(20) == 48,
                     "the image is not a 64x48 PNG");
    }

    auto [missing_status, missing_body] =
        call(port, bhttp::verb::post, "/v1/embeddings", R"({"model":"gpt-4","input":"x"})");
    checks.check(missing_status == 404 && missing_body.find("model_not_found") != std::string::npos,
                 "unknown model: {} {}", missing_status, missing_body);
}

} // namespace

int main(int argc, char** argv) {
    return demo::example_main(
        argc, argv, "http_server", "an OpenAI-compatible HTTP server over a pool of demo models",
        [](const demo::ExampleOptions& options, demo::Checks& checks) {
            demo::WeightStore store(options.cache_dir);
            const auto embedder_weights = demo::ensure_ngram_weights(store);
            const auto text = demo::ensure_aesop_text(store).filename().string();
            store.ensure(std::string(demo::ProceduralPainter::weights_file),
                         demo::ProceduralPainter::generate_weights);

            modelpool::Pool pool(
                {.io_threads = 2, .blocking_threads = 2, .memory_limit_mb = 512, .logger = options.logger});
            demo::WeightServer weights(pool.get_executor(), store);

            // The models, each with one worker kept loaded.
            const modelpool::ModelOptions one{.per_worker_mb = 64, .min_workers = 1, .max_workers = 2};
            checks.ok(pool.register_text_embedding_model(
                          "sentences", demo::ngram_embedder_loader(weights.url(embedder_weights)), one),
                      "register the embedder");
            checks.ok(pool.register_text_to_text_model("aesop",
                                                       demo::ngram_generator_loader(weights.url(text)), one),
                      "register the generator");
            checks.ok(pool.register_text_to_image_model(
                          "painter",
                          demo::ProceduralPainter::loader(weights.url(demo::ProceduralPainter::weights_file),
                                                          pool.blocking_executor()),
                          one),
                      "register the painter");

            // Mount the pool: OpenAI model names -> pool keys.
            modelpool::http::Server server(pool,
                                           {.port = static_cast<std::uint16_t>(options.smoke ? 0 : 8000),
                                            .models = {{.name = "text-embedding-demo", .key = "sentences"},
                                                       {.name = "demo-chat", .key = "aesop"},
                                                       {.name = "demo-painter", .key = "painter"}},
                                            .logger = options.logger});
            auto port = server.listen();
            if (!checks.ok(port, "listen")) {
                return;
            }
            fmt::print("serving on http://127.0.0.1:{}\n", *port);
            if (options.smoke) {
                smoke(*port, checks);
            } else {
                // Serve until Ctrl+C or SIGTERM.
                asio::signal_set signals(pool.get_executor(), SIGINT, SIGTERM);
                signals.async_wait(asio::use_future).wait();
            }
            server.drain(5s, asio::use_future).get();
            weights.close();
            pool.stop();
        });
}
