// Tests of modelpool::http::Server (modelpool/http/server.hpp) over loopback, with a Beast client: every
// route, every error mapping, server-sent event framing, disconnects cancelling requests, and drains with
// requests in flight; plus the PNG and base64 helpers.
//
// Nothing sleeps to paper over a race: the client runs its own io_context until each operation completes
// (every operation has a deadline, so a bug fails a test instead of hanging it); the tests wait on the fake
// models' Gates and Tallies, and on `eventually` (a 1 ms poll with a timeout) for pool state.
#include "http/http_support.hpp"

#include <modelpool/http/detail/base64.hpp>
#include <modelpool/http/detail/png.hpp>
#include <modelpool/http/errors.hpp>

#include <cstring>

namespace {

using namespace modelpool::http_testing;

// ---- the GET routes
// ----------------------------------------------------------------------------------------------

TEST_CASE("GET /v1/models, /healthz, /readyz and /metrics", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);

    auto models = client.get("/v1/models");
    REQUIRE(models.result_int() == 200);
    CHECK(models[bhttp::field::content_type] == "application/json");
    auto list = body_of(models);
    CHECK(list.at("object") == "list");
    const auto& data = list.at("data").as_array();
    REQUIRE(data.size() == 8);
    CHECK(data[0].at("id") == "embed");
    CHECK(data[0].at("object") == "model");
    CHECK(data[0].at("owned_by") == "modelpool");
    CHECK(data[0].at("created").is_int64());
    CHECK(data[7].at("id") == "ghost");

    CHECK(client.get("/healthz").result_int() == 200);
    auto ready = client.get("/readyz");
    CHECK(ready.result_int() == 200);
    CHECK(body_of(ready).at("status") == "ready");

    // x-request-id: the client's own is echoed; otherwise a new one, different each time.
    CHECK(client.get("/healthz", {{"x-request-id", "abc-123"}})["x-request-id"] == "abc-123");
    const std::string first(client.get("/healthz")["x-request-id"]);
    const std::string second(client.get("/healthz")["x-request-id"]);
    CHECK(first.size() == 16);
    CHECK(first != second);

    auto metrics = client.get("/metrics");
    REQUIRE(metrics.result_int() == 200);
    CHECK(contains(metrics[bhttp::field::content_type], "text/plain"));
    const std::string& text = metrics.body();
    CHECK(contains(text, "modelpool_workers")); // the pool's own
    CHECK(contains(text, "modelpool_http_requests_total{route=\"/healthz\",status=\"200\"} 4"));
    CHECK(contains(text, "modelpool_http_requests_in_flight 1")); // this very request
    CHECK(contains(text, "modelpool_http_request_duration_seconds_count{route=\"/v1/models\"} 1"));
    CHECK(h.log.count("info", {"/healthz", "status=200", "model=-"}) >= 4);
}

TEST_CASE("readyz is 503 while a model with min_workers > 0 has no ready worker", "[http]") {
    LogCapture log;
    auto gate = std::make_shared<Gate>();
    Pool pool(
        PoolOptions{.io_threads = 1, .blocking_threads = 1, .memory_limit_mb = 64, .logger = log.logger()});
    OpenOnExit open_gate{gate};
    REQUIRE(pool.register_text_embedding_model("late", gated_loader(gate, CoroEmbedder{1, nullptr, nullptr}),
                                               {.per_worker_mb = 1, .min_workers = 1}));
    mhttp::Server server(pool,
                         {.port = 0, .models = {{.name = "late", .key = "late"}}, .logger = log.logger()});
    auto port = server.listen();
    REQUIRE(port);
    Client client(*port);
    auto before = client.get("/readyz");
    CHECK(before.result_int() == 503);
    CHECK(body_of(before).at("status") == "not ready");
    CHECK(client.get("/healthz").result_int() == 200); // liveness does not depend on models
    gate->open();
    REQUIRE(eventually([&] { return server.ready(); }));
    CHECK(client.get("/readyz").result_int() == 200);
    server.drain(0ms, asio::use_future).wait_for(5s);
}

// ---- /v1/embeddings
// ----------------------------------------------------------------------------------------------

TEST_CASE("POST /v1/embeddings: string, array (one batch call), base64, dimensions, image data URLs",
          "[http]") {
    Harness h(default_pool_options(), true);
    Client client(h.port);

    SECTION("a string input is one embed call") {
        auto response = client.post("/v1/embeddings", R"({"model":"embed","input":"hello big world"})");
        REQUIRE(response.result_int() == 200);
        auto body = body_of(response);
        CHECK(body.at("object") == "list");
        CHECK(body.at("model") == "embed");
        CHECK(body.at("usage").at("prompt_tokens") == 3);
        CHECK(body.at("usage").at("total_tokens") == 3);
        const auto& data = body.at("data").as_array();
        REQUIRE(data.size() == 1);
        CHECK(data[0].at("object") == "embedding");
        CHECK(data[0].at("index") == 0);
        // fake_embedding: {instance 7, kind 1 (embed), length 15, no task -1}
        const auto& values = data[0].at("embedding").as_array();
        REQUIRE(values.size() == 4);
        CHECK(values[0].to_number<double>() == 7.0);
        CHECK(values[1].to_number<double>() == 1.0);
        CHECK(values[2].to_number<double>() == 15.0);
        CHECK(values[3].to_number<double>() == -1.0);
    }
    SECTION("an array input is one batch_embed call, in order") {
        const auto calls = h.probe->calls.count();
        auto response = client.post("/v1/embeddings", R"({"model":"embed","input":["a","bb","ccc"]})");
        REQUIRE(response.result_int() == 200);
        CHECK(h.probe->calls.count() == calls + 1);
        const auto body = body_of(response);
        const auto& data = body.at("data").as_array();
        REQUIRE(data.size() == 3);
        for (std::size_t i = 0; i < 3; ++i) {
            CHECK(data[i].at("index") == i);
            CHECK(data[i].at("embedding").as_array()[1].to_number<double>() == 2.0); // kind 2: batch_embed
            CHECK(data[i].at("embedding").as_array()[2].to_number<double>() == static_cast<double>(i + 1));
        }
    }
    SECTION("base64 is the little-endian float32 bytes; dimensions truncates") {
        auto response = client.post(
            "/v1/embeddings", R"({"model":"embed","input":"hey","encoding_format":"base64","dimensions":3})");
        REQUIRE(response.result_int() == 200);
        const auto body = body_of(response);
        const auto& encoded = body.at("data").as_array()[0].at("embedding").as_string();
        auto bytes = mhttp::detail::base64_decode(encoded);
        REQUIRE(bytes);
        REQUIRE(bytes->size() == 12);
        std::vector<float> values(3);
        for (std::size_t i = 0; i < 3; ++i) {
            std::uint32_t bits = 0;
            for (std::size_t b = 0; b < 4; ++b) {
                bits |= std::uint32_t{(*bytes)[i * 4 + b]} << (8 * b);
            }
            values[i] = std::bit_cast<float>(bits);
        }
        CHECK(values == std::vector<float>{7.0F, 1.0F, 3.0F});
    }
    SECTION("image_embedding keys take data URLs, each embedded with embed_image_base64") {
        const std::string payload = "aGVsbG8=";
        auto response =
            client.post("/v1/embeddings", fmt::format(R"({{"model":"image-embed","input":["{}","{}"]}})",
                                                      data_url(payload), data_url("QUJD")));
        REQUIRE(response.result_int() == 200);
        const auto body = body_of(response);
        const auto& data = body.at("data").as_array();
        REQUIRE(data.size() == 2);
        CHECK(data[0].at("embedding").as_array()[1].to_number<double>() ==
              12.0); // kind 12: embed_image_base64
        CHECK(data[0].at("embedding").as_array()[2].to_number<double>() == 8.0); // the payload's length
        CHECK(data[1].at("embedding").as_array()[2].to_number<double>() == 4.0);
        auto bad =
            client.post("/v1/embeddings", R"({"model":"image-embed","input":"https://example.com/a.png"})");
        CHECK(error_of(bad, 400).at("param") == "input");
    }
}

// ---- completions
// ---------------------------------------------------------------------------------------------------

TEST_CASE("POST /v1/completions and /v1/chat/completions without streaming", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);

    auto response =
        client.post("/v1/completions", R"({"model":"chat","prompt":"say hi","max_tokens":3,"n":2})");
    REQUIRE(response.result_int() == 200);
    auto body = body_of(response);
    CHECK(body.at("object") == "text_completion");
    CHECK(body.at("id").as_string().starts_with("cmpl-"));
    const auto& choices = body.at("choices").as_array();
    REQUIRE(choices.size() == 2);
    CHECK(choices[1].at("index") == 1);
    CHECK(choices[1].at("text") == "say hi#0say hi#1say hi#2");
    CHECK(choices[1].at("finish_reason") == "stop"); // from the model's CompletionStats
    CHECK(body.at("usage").at("prompt_tokens") == 4);
    CHECK(body.at("usage").at("completion_tokens") == 6);
    CHECK(body.at("usage").at("total_tokens") == 10);

    // The chat template: "<role>: <content>\n" per message, then "assistant:".
    auto chat = client.post(
        "/v1/chat/completions",
        R"({"model":"chat","max_completion_tokens":1,"messages":[{"role":"system","content":"be brief"},)"
        R"({"role":"user","content":[{"type":"text","text":"hello"}]}]})");
    REQUIRE(chat.result_int() == 200);
    auto chat_body = body_of(chat);
    CHECK(chat_body.at("object") == "chat.completion");
    const auto& message = chat_body.at("choices").as_array()[0].at("message");
    CHECK(message.at("role") == "assistant");
    CHECK(message.at("content") == "system: be brief\nuser: hello\nassistant:#0");

    // Chat to a vision key: the data URL goes to describe_url, the last user text is the query.
    auto vision = client.post(
        "/v1/chat/completions",
        fmt::format(
            R"({{"model":"vision","messages":[{{"role":"user","content":[{{"type":"text","text":"what?"}},)"
            R"({{"type":"image_url","image_url":{{"url":"{}"}}}}]}}]}})",
            data_url("QUJD")));
    REQUIRE(vision.result_int() == 200);
    CHECK(body_of(vision).at("choices").as_array()[0].at("message").at("content") ==
          "what?@url:data:image/png;base64,QUJD/0what?@url:data:image/png;base64,QUJD/1");
    auto no_image = client.post("/v1/chat/completions",
                                R"({"model":"vision","messages":[{"role":"user","content":"what?"}]})");
    CHECK(error_of(no_image, 400).at("param") == "messages");
    auto image_to_text_model = client.post(
        "/v1/chat/completions",
        fmt::format(
            R"({{"model":"chat","messages":[{{"role":"user","content":[{{"type":"image_url","image_url":{{"url":"{}"}}}}]}}]}})",
            data_url("QUJD")));
    CHECK(error_of(image_to_text_model, 400).at("param") == "messages[0].content");
}

TEST_CASE("Streamed completions are framed exactly as OpenAI's server-sent events", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);

    SECTION("/v1/completions") {
        auto response =
            client.post("/v1/completions", R"({"model":"chat","prompt":"hi","max_tokens":2,"stream":true})");
        REQUIRE(response.result_int() == 200);
        CHECK(response[bhttp::field::content_type] == "text/event-stream");
        CHECK(response.chunked());
        auto events = events_of(response.body());
        REQUIRE(events.size() == 4);
        auto first = json::parse(events[0]).as_object();
        const std::string id(first.at("id").as_string());
        const auto created = first.at("created").as_int64();
        const auto frame = [&](std::string_view text, std::string_view finish) {
            return fmt::format(
                R"({{"id":"{}","object":"text_completion","created":{},"model":"chat","choices":[)"
                R"({{"index":0,"text":"{}","logprobs":null,"finish_reason":{}}}]}})",
                id, created, text, finish);
        };
        const std::string expected = "data: " + frame("hi#0", "null") + "\n\n" +
                                     "data: " + frame("hi#1", "null") + "\n\n" +
                                     "data: " + frame("", "\"stop\"") + "\n\n" + "data: [DONE]\n\n";
        CHECK(response.body() == expected);
        // The connection stays usable after a stream.
        CHECK(client.get("/healthz").result_int() == 200);
    }
    SECTION("/v1/chat/completions with stream_options.include_usage") {
        auto response = client.post(
            "/v1/chat/completions",
            R"({"model":"chat","max_tokens":2,"stream":true,"stream_options":{"include_usage":true},)"
            R"("messages":[{"role":"user","content":"yo"}]})");
        REQUIRE(response.result_int() == 200);
        auto events = events_of(response.body());
        REQUIRE(events.size() == 6);
        std::vector<json::object> chunks;
        for (std::size_t i = 0; i + 1 < events.size(); ++i) {
            chunks.push_back(json::parse(events[i]).as_object());
            CHECK(chunks.back().at("object") == "chat.completion.chunk");
            CHECK(chunks.back().at("id") == chunks.front().at("id"));
            CHECK(chunks.back().at("created") == chunks.front().at("created"));
        }
        const auto delta = [&](std::size_t i) { return chunks[i].at("choices").as_array()[0].at("delta"); };
        CHECK(json::serialize(delta(0)) == R"({"role":"assistant","content":""})");
        CHECK(json::serialize(delta(1)) == R"({"content":"user: yo\nassistant:#0"})");
        CHECK(json::serialize(delta(2)) == R"({"content":"user: yo\nassistant:#1"})");
        CHECK(json::serialize(delta(3)) == "{}");
        CHECK(chunks[2].at("choices").as_array()[0].at("finish_reason").is_null());
        CHECK(chunks[3].at("choices").as_array()[0].at("finish_reason") == "stop");
        for (std::size_t i = 0; i < 4; ++i) {
            CHECK(chunks[i].at("usage").is_null()); // as OpenAI frames it: null until the usage chunk
        }
        CHECK(chunks[4].at("choices").as_array().empty());
        CHECK(json::serialize(chunks[4].at("usage")) ==
              R"({"prompt_tokens":3,"completion_tokens":2,"total_tokens":5})");
        CHECK(events[5] == "[DONE]");
    }
}

// ---- /v1/images/generations
// ------------------------------------------------------------------------------------

/// Checks that `png` is a valid PNG (signature, chunk CRCs, stored-deflate zlib with its Adler-32) of
/// `width` x `height` RGB pixels all equal to `value`.
void check_png(const std::vector<std::uint8_t>& png, std::uint32_t width, std::uint32_t height,
               std::uint8_t value) {
    const auto u32 = [&](std::size_t at) {
        return (std::uint32_t{png.at(at)} << 24) | (std::uint32_t{png.at(at + 1)} << 16) |
               (std::uint32_t{png.at(at + 2)} << 8) | png.at(at + 3);
    };
    REQUIRE(png.size() > 8);
    CHECK(std::vector<std::uint8_t>(png.begin(), png.begin() + 8) ==
          std::vector<std::uint8_t>{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'});
    std::size_t at = 8;
    std::vector<std::uint8_t> zlib;
    std::vector<std::string> types;
    while (at < png.size()) {
        const auto length = u32(at);
        const std::string type(png.begin() + static_cast<std::ptrdiff_t>(at + 4),
                               png.begin() + static_cast<std::ptrdiff_t>(at + 8));
        types.push_back(type);
        const std::span<const std::uint8_t> typed(png.data() + at + 4, length + 4);
        CHECK(u32(at + 8 + length) == mhttp::detail::crc32(typed));
        if (type == "IHDR") {
            CHECK(u32(at + 8) == width);
            CHECK(u32(at + 12) == height);
            CHECK(png[at + 16] == 8); // bit depth
            CHECK(png[at + 17] == 2); // RGB
        }
        if (type == "IDAT") {
            zlib.insert(zlib.end(), png.begin() + static_cast<std::ptrdiff_t>(at + 8),
                        png.begin() + static_cast<std::ptrdiff_t>(at + 8 + length));
        }
        at += 12 + length;
    }
    CHECK(types == std::vector<std::string>{"IHDR", "IDAT", "IEND"});
    REQUIRE(zlib.size() > 6);
    CHECK((zlib[0] * 256 + zlib[1]) % 31 == 0); // zlib header check bits
    std::vector<std::uint8_t> raw;
    std::size_t z = 2;
    for (bool last = false; !last;) {
        last = (zlib.at(z) & 1) != 0;
        REQUIRE((zlib[z] & 6) == 0); // stored block
        const std::size_t len = zlib.at(z + 1) | (zlib.at(z + 2) << 8);
        const std::size_t nlen = zlib.at(z + 3) | (zlib.at(z + 4) << 8);
        REQUIRE(len == (~nlen & 0xFFFF));
        raw.insert(raw.end(), zlib.begin() + static_cast<std::ptrdiff_t>(z + 5),
                   zlib.begin() + static_cast<std::ptrdiff_t>(z + 5 + len));
        z += 5 + len;
    }
    const std::uint32_t adler = (std::uint32_t{zlib.at(z)} << 24) | (std::uint32_t{zlib.at(z + 1)} << 16) |
                                (std::uint32_t{zlib.at(z + 2)} << 8) | zlib.at(z + 3);
    CHECK(adler == mhttp::detail::adler32(raw));
    REQUIRE(raw.size() == (std::size_t{width} * 3 + 1) * height);
    for (std::size_t y = 0; y < height; ++y) {
        const auto row = raw.begin() + static_cast<std::ptrdiff_t>(y * (width * 3 + 1));
        CHECK(*row == 0); // filter: none
        CHECK(std::all_of(row + 1, row + 1 + width * 3, [&](std::uint8_t p) { return p == value; }));
    }
}

TEST_CASE("POST /v1/images/generations answers PNGs of the requested size as b64_json", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);
    auto response = client.post(
        "/v1/images/generations",
        R"({"model":"painter","prompt":"a red fox","size":"5x3","n":2,"response_format":"b64_json"})");
    REQUIRE(response.result_int() == 200);
    auto body = body_of(response);
    CHECK(body.at("created").is_int64());
    const auto& data = body.at("data").as_array();
    REQUIRE(data.size() == 2);
    for (const auto& image : data) {
        auto png = mhttp::detail::base64_decode(image.at("b64_json").as_string());
        REQUIRE(png);
        check_png(*png, 5, 3, 9); // CoroPainter fills with the prompt's length
    }
    CHECK(error_of(client.post("/v1/images/generations", R"({"model":"painter","prompt":"x","size":"big"})"),
                   400)
              .at("param") == "size");
    CHECK(error_of(client.post("/v1/images/generations",
                               R"({"model":"painter","prompt":"x","response_format":"url"})"),
                   400)
              .at("param") == "response_format");
}

TEST_CASE("The PNG encoder splits large images into stored blocks, and base64 round-trips", "[http]") {
    Image image{300, 100, 3, std::vector<std::uint8_t>(300 * 100 * 3, 200)}; // 90,100 bytes: two blocks
    auto png = mhttp::detail::encode_png(image);
    REQUIRE(png);
    check_png(*png, 300, 100, 200);
    CHECK(!mhttp::detail::encode_png(Image{2, 2, 2, std::vector<std::uint8_t>(8)}));
    CHECK(!mhttp::detail::encode_png(Image{2, 2, 3, std::vector<std::uint8_t>(5)}));
    CHECK(mhttp::detail::crc32(std::span<const std::uint8_t>(
              reinterpret_cast<const std::uint8_t*>("123456789"), 9)) == 0xCBF43926U);

    for (const std::string text : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
        const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(text.data()),
                                                  text.size());
        const auto encoded = mhttp::detail::base64_encode(bytes);
        auto decoded = mhttp::detail::base64_decode(encoded);
        REQUIRE(decoded);
        CHECK(std::string(decoded->begin(), decoded->end()) == text);
    }
    CHECK(mhttp::detail::base64_encode(std::span<const std::uint8_t>(
              reinterpret_cast<const std::uint8_t*>("foobar"), 6)) == "Zm9vYmFy");
    CHECK(!mhttp::detail::base64_decode("Zm9"));
    CHECK(!mhttp::detail::base64_decode("Zm=v"));
    CHECK(!mhttp::detail::base64_decode("Zm 9"));
}

// ---- errors
// --------------------------------------------------------------------------------------------------------

TEST_CASE("Every errc maps to a status, an OpenAI type and retry advice", "[http]") {
    const PoolOptions pool{.breaker = {.open_time = 7s}, .retry_backoff_max = 12'500ms};
    struct row {
        errc code;
        unsigned status;
        std::optional<std::chrono::seconds> retry_after;
        bool should_retry;
    };
    const std::vector<row> table{{errc::invalid_argument, 400, std::nullopt, true},
                                 {errc::no_workers, 503, 1s, true},
                                 {errc::overloaded, 429, 1s, true},
                                 {errc::timeout, 504, std::nullopt, true},
                                 {errc::cancelled, 499, std::nullopt, false},
                                 {errc::model_error, 500, std::nullopt, false},
                                 {errc::spawn_failed, 503, 13s, true},
                                 {errc::memory_exhausted, 503, 1s, true},
                                 {errc::circuit_open, 503, 7s, true},
                                 {errc::shutting_down, 503, std::nullopt, false},
                                 {errc::ok, 500, std::nullopt, false}};
    for (const auto& expected : table) {
        INFO(to_string(expected.code));
        const auto mapping = mhttp::error_mapping_for(expected.code, pool);
        CHECK(mapping.status == expected.status);
        CHECK(mapping.retry_after == expected.retry_after);
        CHECK(mapping.should_retry == expected.should_retry);
        const auto api = mhttp::to_api_error(PoolError(expected.code, "why"), pool);
        CHECK(api.code == to_string(expected.code));
        CHECK(api.message == "why");
    }
    CHECK(mhttp::error_mapping_for(errc::overloaded, pool).type == "rate_limit_error");
    CHECK(mhttp::error_mapping_for(errc::invalid_argument, pool).type == "invalid_request_error");
}

TEST_CASE("Client mistakes get 400, 404, 405, 413 and 431 naming what was wrong", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);

    auto malformed = error_of(client.post("/v1/embeddings", "{\"model\":"), 400);
    CHECK(malformed.at("code") == "invalid_json");
    CHECK(malformed.at("type") == "invalid_request_error");
    CHECK(error_of(client.post("/v1/embeddings", "[1]"), 400).at("code") == "invalid_json");
    CHECK(error_of(client.post("/v1/embeddings", R"({"input":"x"})"), 400).at("param") == "model");
    CHECK(error_of(client.post("/v1/embeddings", R"({"model":"embed","input":""})"), 400).at("param") ==
          "input");
    CHECK(error_of(client.post("/v1/embeddings", R"({"model":"embed","input":[1,2]})"), 400).at("param") ==
          "input");
    CHECK(error_of(client.post("/v1/embeddings", R"({"model":"embed","input":"x","encoding_format":"hex"})"),
                   400)
              .at("param") == "encoding_format");
    CHECK(error_of(client.post("/v1/completions", R"({"model":"chat","prompt":"x","temperature":3})"), 400)
              .at("param") == "temperature");
    CHECK(
        error_of(client.post("/v1/completions", R"({"model":"chat","prompt":"x","n":9})"), 400).at("param") ==
        "n");
    CHECK(error_of(client.post("/v1/completions", R"({"model":"chat","prompt":"x","max_tokens":-1})"), 400)
              .at("param") == "max_tokens");
    CHECK(error_of(client.post("/v1/completions", R"({"model":"chat","prompt":"x","stop":[1]})"), 400)
              .at("param") == "stop");
    CHECK(
        error_of(client.post("/v1/chat/completions", R"({"model":"chat","messages":[]})"), 400).at("param") ==
        "messages");
    CHECK(error_of(client.post("/v1/chat/completions",
                               R"({"model":"chat","messages":[{"role":"robot","content":"x"}]})"),
                   400)
              .at("param") == "messages[0].role");
    // A model of another capability.
    auto wrong = error_of(client.post("/v1/embeddings", R"({"model":"chat","input":"x"})"), 400);
    CHECK(wrong.at("param") == "model");
    CHECK(contains(wrong.at("message").as_string(), "text_to_text"));

    auto unknown = error_of(client.post("/v1/embeddings", R"({"model":"gpt-5","input":"x"})"), 404);
    CHECK(unknown.at("code") == "model_not_found");
    CHECK(unknown.at("param") == "model");
    CHECK(contains(unknown.at("message").as_string(), "gpt-5"));
    CHECK(error_of(client.get("/v2/nothing"), 404).at("code") == "not_found");
    CHECK(error_of(client.get("/v1/embeddings"), 405).at("code") == "method_not_allowed");
    CHECK(error_of(client.post("/v1/embeddings", std::string(5000, 'x')), 413).at("code") ==
          "request_too_large");
    CHECK(h.log.count("info", {"status=404", "model=gpt-5"}) == 1);

    Client big_headers(h.port);
    big_headers.send(bhttp::verb::get, "/healthz", {}, {{"x-filler", std::string(20'000, 'y')}});
    CHECK(error_of(big_headers.receive(), 431).at("code") == "headers_too_large");

    Client garbage(h.port);
    garbage.send_raw("NOT HTTP AT ALL\r\n\r\n");
    CHECK(error_of(garbage.receive(), 400).at("code") == "bad_request");
}

TEST_CASE("Pool errors: 429 with Retry-After, 500 model_error, 503 spawn_failed and no_workers", "[http]") {
    Harness h(default_pool_options());

    // model_error: not retryable, so x-should-retry: false.
    Client client(h.port);
    auto failed = client.post("/v1/embeddings", R"({"model":"embed","input":"fail"})");
    CHECK(error_of(failed, 500).at("code") == "model_error");
    CHECK(failed["x-should-retry"] == "false");

    auto spawn = client.post("/v1/embeddings", R"({"model":"broken","input":"x"})");
    auto spawn_error = error_of(spawn, 503);
    CHECK(spawn_error.at("code") == "spawn_failed");
    CHECK(contains(spawn_error.at("message").as_string(), "weights file is missing"));
    CHECK(!spawn[bhttp::field::retry_after].empty());

    auto ghost = client.post("/v1/embeddings", R"({"model":"ghost","input":"x"})");
    CHECK(error_of(ghost, 503).at("code") == "no_workers");
    CHECK(ghost[bhttp::field::retry_after] == "1");

    // overloaded: one request busy on the only worker, one queued (capacity 1), the third is refused.
    Client busy(h.port);
    const auto calls_before = h.probe->calls.count();
    busy.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"one"})");
    REQUIRE(h.probe->calls.wait_for(calls_before + 1));
    Client queued(h.port);
    queued.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"two"})");
    REQUIRE(eventually([&] { return h.pool->snapshot("slow")->queue_depth == 1; }));
    auto refused = client.post("/v1/embeddings", R"({"model":"slow-embed","input":"three"})");
    CHECK(error_of(refused, 429).at("code") == "overloaded");
    CHECK(error_of(refused, 429).at("type") == "rate_limit_error");
    CHECK(refused[bhttp::field::retry_after] == "1");
    h.gate->open();
    CHECK(busy.receive().result_int() == 200);
    CHECK(queued.receive().result_int() == 200);
}

TEST_CASE("A request past its deadline gets 504", "[http]") {
    auto clock = std::make_shared<ManualClock>();
    auto options = default_pool_options();
    options.clock = clock;
    options.request_timeout = 2s;
    Harness h(std::move(options));
    Client client(h.port);
    const auto calls_before = h.probe->calls.count();
    client.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"late"})");
    REQUIRE(h.probe->calls.wait_for(calls_before + 1));
    clock->advance(3s);
    CHECK(error_of(client.receive(), 504).at("code") == "timeout");
}

TEST_CASE("After the pool stopped, requests get 503 shutting_down", "[http]") {
    Harness h(default_pool_options(),
              true); // the server runs on its own io_context, so it outlives the pool's
    Client client(h.port);
    h.pool->stop();
    auto response = client.post("/v1/embeddings", R"({"model":"embed","input":"x"})");
    CHECK(error_of(response, 503).at("code") == "shutting_down");
    CHECK(response["x-should-retry"] == "false");
    CHECK(client.get("/readyz").result_int() == 503);
}

// ---- disconnects
// ---------------------------------------------------------------------------------------------------

TEST_CASE("A client that disconnects cancels its request", "[http]") {
    Harness h(default_pool_options());

    SECTION("a queued request leaves the queue") {
        Client busy(h.port);
        const auto calls_before = h.probe->calls.count();
        busy.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"one"})");
        REQUIRE(h.probe->calls.wait_for(calls_before + 1));
        Client queued(h.port);
        queued.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"two"})");
        REQUIRE(eventually([&] { return h.pool->snapshot("slow")->queue_depth == 1; }));
        queued.close();
        REQUIRE(eventually([&] { return h.pool->snapshot("slow")->queue_depth == 0; }));
        REQUIRE(eventually([&] { return h.log.count("info", {"slow-embed", "status=499"}) == 1; }));
        h.gate->open();
        CHECK(busy.receive().result_int() == 200);
        CHECK(h.pool->metrics().errors_with(errc::cancelled) >= 1);
    }
    SECTION("a running stream stops its model") {
        Client client(h.port);
        client.send(bhttp::verb::post, "/v1/completions",
                    R"({"model":"chat","prompt":"go","max_tokens":1000000,"stream":true})");
        client.read_header_and_some();
        client.close();
        REQUIRE(h.chat_probe->stopped.wait_for(1));
        CHECK(h.chat_probe->produced.load() < 1'000'000);
        REQUIRE(eventually([&] { return h.server->in_flight() == 0; }));
    }
}

TEST_CASE("A client that stops reading a stream holds its model back, then is disconnected", "[http]") {
    // Backpressure: the server writes each event before it takes the next chunk from the pool's bounded
    // stream, so a reader that stops reading stops the model once the socket buffers and the stream are full,
    // and nothing is buffered without bound. The write timeout then closes the connection and stops the
    // model.
    Harness h(default_pool_options(), false,
              {.body_bytes = 4096, .write_timeout = 300ms, .max_tokens = 1'000'000});
    const std::string prompt(2000, 'w'); // each event carries ~2 KB: the socket buffers hold a few thousand
    Client reader(h.port);
    reader.send(bhttp::verb::post, "/v1/completions",
                R"({"model":"chat","max_tokens":200000,"stream":true,"prompt":")" + prompt + "\"}");
    reader.read_header_and_some(); // ...and nothing more
    REQUIRE(h.chat_probe->stopped.wait_for(1));
    // Loopback socket buffers are at most a few MB here (net.ipv4.tcp_wmem/tcp_rmem maxima): a few thousand
    // events, plus the pool's stream capacity (16). Without backpressure the model would produce all 200,000.
    INFO("chunks produced: " << h.chat_probe->produced.load());
    CHECK(h.chat_probe->produced.load() < 20'000);
    REQUIRE(eventually([&] { return h.server->in_flight() == 0; }));
    // A reader that does not read within the write timeout counts as gone: logged as 499, like a disconnect.
    CHECK(h.log.count("info", {"/v1/completions", "status=499"}) == 1);
}

// ---- drain
// ---------------------------------------------------------------------------------------------------------

TEST_CASE("drain: readyz turns 503 at once, in-flight requests finish, then new connections are refused",
          "[http]") {
    Harness h(default_pool_options());
    Client busy(h.port);
    const auto calls_before = h.probe->calls.count();
    busy.send(bhttp::verb::post, "/v1/embeddings", R"({"model":"slow-embed","input":"one"})");
    REQUIRE(h.probe->calls.wait_for(calls_before + 1));
    Client idle(h.port);
    CHECK(idle.get("/healthz").result_int() == 200);

    auto drained = h.server->drain(30s, asio::use_future);
    CHECK(!h.server->ready());
    CHECK(h.server->draining());
    // During the grace, new connections are still served (and closed after their response).
    Client late(h.port);
    REQUIRE(!late.connect_error);
    auto readyz = late.get("/readyz");
    CHECK(readyz.result_int() == 503);
    CHECK(body_of(readyz).at("status") == "draining");
    CHECK(!readyz.keep_alive());
    // The idle keep-alive connection was closed.
    Response none;
    CHECK(idle.try_receive(none));

    CHECK(drained.wait_for(0s) == std::future_status::timeout); // the busy request holds the drain
    h.gate->open();
    auto response = busy.receive();
    CHECK(response.result_int() == 200); // it finished within the grace
    REQUIRE(drained.wait_for(5s) == std::future_status::ready);
    drained.get();
    CHECK(h.server->connections() == 0);
    Client refused(h.port);
    CHECK(refused.connect_error);
}

TEST_CASE("drain: after the grace, streams still running are cancelled and their models stop", "[http]") {
    Harness h(default_pool_options());
    Client client(h.port);
    client.send(
        bhttp::verb::post, "/v1/chat/completions",
        R"({"model":"chat","max_tokens":1000000,"stream":true,"messages":[{"role":"user","content":"go"}]})");
    client.read_header_and_some();
    auto drained = h.server->drain(0ms, asio::use_future);
    REQUIRE(drained.wait_for(5s) == std::future_status::ready);
    REQUIRE(h.chat_probe->stopped.wait_for(1));
    CHECK(h.server->in_flight() == 0);
    Response rest;
    CHECK(client.try_receive(rest)); // the stream ended without its [DONE]
}

} // namespace
