// examples/server/server_config.hpp
//
// modelpool_server's configuration: the JSON file given with `--config`, read with Boost.JSON into the pool's
// and the HTTP server's own option structs, and the defaults used without one (the five demo models).
//
// One schema serves both directions: `bind(config)` lists every field once, with the option it sets; parsing
// walks it to read a file (strictly: an unknown field, a wrong type or a negative count is an error naming
// the field's path, e.g. `pool.queue_capacity`), and `to_json` walks it to print the effective configuration
// (`--check-config`). Durations are integers of milliseconds, their names end in `_ms`.
#pragma once

#include <modelpool/http/options.hpp>
#include <modelpool/modelpool.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <fmt/format.h>

#include <algorithm>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace server {

namespace json = boost::json;
using modelpool::errc;
using modelpool::fail;
using modelpool::result;

/// One served model: its OpenAI name, the built-in model that backs it and how the pool manages it.
struct ModelEntry {
    std::string name; ///< The OpenAI model name clients send, e.g. "demo-chat".
    std::string
        builtin; ///< The built-in model (examples/support/builtin_models.hpp), e.g. "ngram-generator".
    std::string capability; ///< Optional: checked against the built-in model's capability when given.
    std::string key;        ///< The pool key; empty: the name.
    modelpool::ModelOptions options{}; ///< per_worker_mb 0: the built-in model's measured size.
};

/// Everything modelpool_server runs with.
struct ServerConfig {
    /// The pool: defaults sized for a small server (two io threads, four blocking threads, 2 GiB of models).
    modelpool::PoolOptions pool{.io_threads = 2, .blocking_threads = 4, .memory_limit_mb = 2048};
    modelpool::http::ServerOptions
        http{};                       ///< Host, port, limits and shutdown grace (`models` is filled later).
    std::string log_level = "info";   ///< trace, debug, info, warn, error or off.
    std::string cache_dir;            ///< Generated weight files; empty: <temp>/modelpool-demo.
    std::vector<ModelEntry> models{}; ///< The served models, in the order `GET /v1/models` lists them.
};

/// The configuration without a file: the five demo models of examples/models/, one worker of each loaded at
/// start (so `/readyz` means "every model answers"), at most two.
inline ServerConfig default_config() {
    ServerConfig config;
    const modelpool::ModelOptions one{.min_workers = 1, .max_workers = 2};
    config.models = {
        {"text-embedding-demo", "ngram-embedder", "text_embedding", "", one},
        {"image-embedding-demo", "color-histogram", "image_embedding", "", one},
        {"demo-chat", "ngram-generator", "text_to_text", "", one},
        {"demo-vision", "shape-describer", "vision", "", one},
        {"demo-painter", "procedural-painter", "text_to_image", "", one},
    };
    return config;
}

namespace detail {

/// One field of the schema: its name, how to read it from JSON (`path` names it in errors) and how to print
/// it.
struct Field {
    std::string_view name;
    std::function<result<void>(const json::value&, const std::string& path)> read;
    std::function<json::value()> write;
};

/// An integer field (counts, sizes, ports) with its range.
template <std::integral T> Field field(std::string_view name, T& out) {
    return {name,
            [&out](const json::value& v, const std::string& path) -> result<void> {
                if (!v.is_int64() && !v.is_uint64()) {
                    return fail(errc::invalid_argument, "{} must be an integer (got {})", path,
                                json::serialize(v));
                }
                if (v.is_int64() && v.get_int64() < 0) {
                    return fail(errc::invalid_argument, "{} must not be negative (got {})", path,
                                v.get_int64());
                }
                const auto value = v.is_uint64() ? v.get_uint64() : static_cast<std::uint64_t>(v.get_int64());
                if (value > std::numeric_limits<T>::max()) {
                    return fail(errc::invalid_argument, "{} must be at most {} (got {})", path,
                                std::numeric_limits<T>::max(), value);
                }
                out = static_cast<T>(value);
                return {};
            },
            [&out] { return json::value(static_cast<std::uint64_t>(out)); }};
}

/// A duration in whole milliseconds (the field's name ends in `_ms`).
inline Field field(std::string_view name, std::chrono::milliseconds& out) {
    return {name,
            [&out](const json::value& v, const std::string& path) -> result<void> {
                if (!v.is_int64() && !v.is_uint64()) {
                    return fail(errc::invalid_argument, "{} must be an integer of milliseconds (got {})",
                                path, json::serialize(v));
                }
                if (v.is_uint64() &&
                    v.get_uint64() > std::uint64_t{std::numeric_limits<std::int64_t>::max()}) {
                    return fail(errc::invalid_argument, "{} is too large (got {})", path, v.get_uint64());
                }
                // The option's own validation names the range (e.g. "must be positive").
                out = std::chrono::milliseconds(v.is_int64() ? v.get_int64() : std::int64_t(v.get_uint64()));
                return {};
            },
            [&out] { return json::value(out.count()); }};
}

inline Field field(std::string_view name, std::string& out) {
    return {name,
            [&out](const json::value& v, const std::string& path) -> result<void> {
                if (!v.is_string()) {
                    return fail(errc::invalid_argument, "{} must be a string (got {})", path,
                                json::serialize(v));
                }
                out = std::string(v.get_string());
                return {};
            },
            [&out] { return json::value(out); }};
}

/// Reads `v` as an object whose members are `fields`; any other member is an error naming it.
inline result<void> read_object(const json::value& v, const std::string& path,
                                const std::vector<Field>& fields) {
    const auto* object = v.if_object();
    if (object == nullptr) {
        return fail(errc::invalid_argument, "{} must be an object (got {})",
                    path.empty() ? "the configuration" : path, json::serialize(v));
    }
    for (const auto& [name, value] : *object) {
        const auto member = path.empty() ? std::string(name) : path + "." + std::string(name);
        const Field* match = nullptr;
        for (const auto& f : fields) {
            if (f.name == name) {
                match = &f;
            }
        }
        if (match == nullptr) {
            std::string known;
            for (const auto& f : fields) {
                known += known.empty() ? "" : ", ";
                known += f.name;
            }
            return fail(errc::invalid_argument, "unknown field {} (known here: {})", member, known);
        }
        if (auto read = match->read(value, member); !read) {
            return read;
        }
    }
    return {};
}

inline json::object write_object(const std::vector<Field>& fields) {
    json::object object;
    for (const auto& f : fields) {
        object[f.name] = f.write();
    }
    return object;
}

/// A nested object field.
inline Field object_field(std::string_view name, std::function<std::vector<Field>()> fields) {
    return {
        name,
        [fields](const json::value& v, const std::string& path) { return read_object(v, path, fields()); },
        [fields] { return json::value(write_object(fields())); }};
}

inline std::vector<Field> model_fields(ModelEntry& m) {
    return {field("name", m.name),
            field("builtin", m.builtin),
            field("capability", m.capability),
            field("key", m.key),
            field("per_worker_mb", m.options.per_worker_mb),
            field("min_workers", m.options.min_workers),
            field("max_workers", m.options.max_workers)};
}

inline Field models_field(std::vector<ModelEntry>& models) {
    return {"models",
            [&models](const json::value& v, const std::string& path) -> result<void> {
                const auto* array = v.if_array();
                if (array == nullptr) {
                    return fail(errc::invalid_argument, "{} must be an array of models (got {})", path,
                                json::serialize(v));
                }
                std::vector<ModelEntry> read;
                for (std::size_t i = 0; i < array->size(); ++i) {
                    auto& entry = read.emplace_back();
                    const auto at = fmt::format("{}[{}]", path, i);
                    if (auto ok = read_object((*array)[i], at, model_fields(entry)); !ok) {
                        return ok;
                    }
                    if (entry.name.empty() || entry.builtin.empty()) {
                        return fail(errc::invalid_argument, "{} needs a \"name\" and a \"builtin\"", at);
                    }
                }
                models = std::move(read);
                return {};
            },
            [&models] {
                json::array array;
                for (auto& m : models) {
                    array.push_back(write_object(model_fields(m)));
                }
                return json::value(std::move(array));
            }};
}

/// The whole schema, bound to `c`.
inline std::vector<Field> bind(ServerConfig& c) {
    auto& p = c.pool;
    auto& s = c.http;
    auto& l = c.http.limits;
    return {
        field("host", s.host),
        field("port", s.port),
        field("log_level", c.log_level),
        field("cache_dir", c.cache_dir),
        object_field("pool",
                     [&p] {
                         return std::vector<Field>{
                             field("io_threads", p.io_threads),
                             field("blocking_threads", p.blocking_threads),
                             field("memory_limit_mb", p.memory_limit_mb),
                             field("queue_capacity", p.queue_capacity),
                             field("stream_capacity", p.stream_capacity),
                             field("max_key_length", p.max_key_length),
                             field("request_timeout_ms", p.request_timeout),
                             field("stream_timeout_ms", p.stream_timeout),
                             field("stream_idle_timeout_ms", p.stream_idle_timeout),
                             object_field("breaker",
                                          [&b = p.breaker] {
                                              return std::vector<Field>{
                                                  field("failure_threshold", b.failure_threshold),
                                                  field("open_time_ms", b.open_time),
                                                  field("half_open_probes", b.half_open_probes)};
                                          }),
                             field("stuck_grace_ms", p.stuck_grace),
                             field("shutdown_timeout_ms", p.shutdown_timeout),
                             field("cold_start_workers", p.cold_start_workers),
                             field("max_workers_per_model", p.max_workers_per_model),
                             field("upscale_delay_ms", p.upscale_delay),
                             field("idle_timeout_ms", p.idle_timeout),
                             field("maintenance_interval_ms", p.maintenance_interval),
                             field("memory_wait_timeout_ms", p.memory_wait_timeout),
                             field("load_retries", p.load_retries),
                             field("retry_backoff_initial_ms", p.retry_backoff_initial),
                             field("retry_backoff_max_ms", p.retry_backoff_max),
                             field("random_seed", p.random_seed)};
                     }),
        object_field("server",
                     [&s, &l] {
                         return std::vector<Field>{
                             field("shutdown_grace_ms", s.shutdown_grace), object_field("limits", [&l] {
                                 return std::vector<Field>{
                                     field("body_bytes", l.body_bytes),
                                     field("header_bytes", l.header_bytes),
                                     field("read_timeout_ms", l.read_timeout),
                                     field("idle_timeout_ms", l.idle_timeout),
                                     field("write_timeout_ms", l.write_timeout),
                                     field("max_connections", l.max_connections),
                                     field("max_embedding_inputs", l.max_embedding_inputs),
                                     field("max_n", l.max_n),
                                     field("max_tokens", l.max_tokens),
                                     field("max_image_side", l.max_image_side)};
                             })};
                     }),
        models_field(c.models),
    };
}

} // namespace detail

/// Checks what the options' own `validate()` does not: the log level, the models' names and options.
inline result<void> validate(const ServerConfig& config) {
    if (auto pool = config.pool.validate(); !pool) {
        return fail(errc::invalid_argument, "pool.{}", pool.error().message());
    }
    constexpr std::string_view levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
    if (std::find(std::begin(levels), std::end(levels), config.log_level) == std::end(levels)) {
        return fail(errc::invalid_argument,
                    "log_level must be trace, debug, info, warn, error, critical or off (got \"{}\")",
                    config.log_level);
    }
    if (config.http.shutdown_grace.count() < 0) {
        return fail(errc::invalid_argument, "server.shutdown_grace_ms must not be negative (got {})",
                    config.http.shutdown_grace.count());
    }
    if (config.models.empty()) {
        return fail(errc::invalid_argument, "models is empty: the server would serve nothing");
    }
    for (std::size_t i = 0; i < config.models.size(); ++i) {
        const auto& m = config.models[i];
        for (std::size_t j = 0; j < i; ++j) {
            if (config.models[j].name == m.name) {
                return fail(errc::invalid_argument, "models[{}].name \"{}\" is also models[{}].name", i,
                            m.name, j);
            }
        }
        const auto max =
            m.options.max_workers != 0 ? m.options.max_workers : config.pool.max_workers_per_model;
        if (m.options.min_workers > max) {
            return fail(errc::invalid_argument, "models[{}] (\"{}\"): min_workers {} exceeds max_workers {}",
                        i, m.name, m.options.min_workers, max);
        }
    }
    return {};
}

/// Reads a configuration file's text over `defaults` (fields the file leaves out keep their default; a
/// `models` array replaces the default models) and validates the result.
inline result<ServerConfig> parse_config(std::string_view text, ServerConfig defaults = default_config()) {
    boost::system::error_code ec;
    const auto value = json::parse(text, ec);
    if (ec) {
        return fail(errc::invalid_argument, "the configuration is not valid JSON: {}", ec.message());
    }
    if (auto read = detail::read_object(value, "", detail::bind(defaults)); !read) {
        return modelpool::unexpected(read.error());
    }
    if (auto valid = validate(defaults); !valid) {
        return modelpool::unexpected(valid.error());
    }
    return defaults;
}

/// The configuration as JSON, every field spelled out (what `--check-config` prints).
inline std::string to_json(ServerConfig config) {
    return json::serialize(detail::write_object(detail::bind(config)));
}

} // namespace server
