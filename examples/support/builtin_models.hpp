// examples/support/builtin_models.hpp
//
// The catalogue of models a program of the examples can serve without writing any model code: the five demo
// models of examples/models/ and the real runtimes of examples/runtimes/ that this build includes (each
// runtime library defines MODELPOOL_HAVE_<NAME>). The main demo picks, per capability, the real runtime when
// it is built and the demo model otherwise, and says which; a server can offer all of them by name.
//
// Registering a built-in model first prepares its files on the calling thread (generated weight files, the
// fastText model trained on first run: blocking disk and CPU work, so call it from main's thread, never from
// a pool thread), then registers it with the pool; its loader then loads each worker asynchronously.
#pragma once

#include "models/aesop_text.hpp"
#include "models/color_histogram_embedder.hpp"
#include "models/image.hpp"
#include "models/ngram_embedder.hpp"
#include "models/ngram_generator.hpp"
#include "models/procedural_painter.hpp"
#include "models/shape_describer.hpp"
#include "support/weight_store.hpp"

#if defined(MODELPOOL_HAVE_TESSERACT)
#include "runtimes/tesseract_ocr.hpp"
#include "runtimes/text_render.hpp"
#endif
#if defined(MODELPOOL_HAVE_FASTTEXT)
#include "runtimes/fasttext_embedder.hpp"
#endif
#if defined(MODELPOOL_HAVE_TORCH)
#include "runtimes/char_rnn.hpp"
#endif

#include <modelpool/modelpool.hpp>

#include <cstddef>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#ifndef MODELPOOL_EXAMPLES_DATA_DIR
#error "MODELPOOL_EXAMPLES_DATA_DIR must name examples/data (examples/CMakeLists.txt defines it)"
#endif

namespace demo {

/// What a built-in model needs to register: the pool, the store of generated files and the loopback server
/// the loaders fetch them from (both outliving the pool's workers).
struct BuiltinContext {
    modelpool::Pool& pool;     ///< Where the model is registered.
    const WeightStore& store;  ///< Generated weight files (cache directory).
    const WeightServer& files; ///< Serves `store` on 127.0.0.1 to the loaders.
};

/// One model the examples' programs can serve.
struct BuiltinModel {
    std::string_view name;         ///< Its name, e.g. "fasttext" or "ngram-embedder".
    std::string_view capability;   ///< The capability it serves, e.g. "text_embedding".
    std::string_view description;  ///< One line for people, saying whether it is a real runtime.
    bool real_runtime = false;     ///< A real inference runtime (true) or a demo model (false).
    std::size_t per_worker_mb = 0; ///< The memory one worker reserves (measured for the real runtimes).
    /// Prepares the model's files (blocking: main's thread) and registers it under `key` with `options`
    /// (`options.per_worker_mb` 0: use `per_worker_mb`).
    std::function<modelpool::result<void>(const BuiltinContext&, std::string_view key,
                                          modelpool::ModelOptions)>
        register_model;
};

/// Every built-in model of this build: the demo models, then the real runtimes that are compiled in.
inline std::vector<BuiltinModel> builtin_models() {
    using modelpool::ModelOptions;
    auto sized = [](ModelOptions options, std::size_t mb) {
        if (options.per_worker_mb == 0) {
            options.per_worker_mb = mb;
        }
        return options;
    };
    std::vector<BuiltinModel> models = {
        {"ngram-embedder", "text_embedding",
         "hashed word and character n-grams with IDF weights (demo model)", false, 64,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             ensure_ngram_weights(c.store);
             return c.pool.register_text_embedding_model(
                 key, ngram_embedder_loader(c.files.url(NgramEmbedder::weights_name)), sized(o, 64));
         }},
        {"ngram-generator", "text_to_text", "a word-trigram generator on Aesop's Fables (demo model)", false,
         64,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             ensure_aesop_text(c.store);
             return c.pool.register_text_to_text_model(
                 key, ngram_generator_loader(c.files.url(aesop_text_name)), sized(o, 64));
         }},
        {"color-histogram", "image_embedding", "colour histogram + edge orientations (demo model)", false, 64,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             c.store.ensure(std::string(ColorHistogramEmbedder::weights_file),
                            ColorHistogramEmbedder::generate_weights);
             return c.pool.register_image_embedding_model(
                 key,
                 ColorHistogramEmbedder::loader(c.files.url(ColorHistogramEmbedder::weights_file),
                                                c.pool.blocking_executor()),
                 sized(o, 64));
         }},
        {"shape-describer", "vision", "names the colours, shape and layout of an image (demo model)", false,
         64,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             c.store.ensure(std::string(ShapeDescriber::weights_file), ShapeDescriber::generate_weights);
             return c.pool.register_vision_model(
                 key,
                 ShapeDescriber::loader(c.files.url(ShapeDescriber::weights_file),
                                        c.pool.blocking_executor()),
                 sized(o, 64));
         }},
        {"procedural-painter", "text_to_image", "refines seeded noise into a picture (demo model)", false,
         256,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             c.store.ensure(std::string(ProceduralPainter::weights_file),
                            ProceduralPainter::generate_weights);
             return c.pool.register_text_to_image_model(
                 key,
                 ProceduralPainter::loader(c.files.url(ProceduralPainter::weights_file),
                                           c.pool.blocking_executor()),
                 sized(o, 256));
         }},
    };
#if defined(MODELPOOL_HAVE_FASTTEXT)
    models.push_back({"fasttext", "text_embedding",
                      "fastText 0.9.2 skipgram vectors trained on Aesop's Fables (real runtime)", true,
                      runtimes::fasttext_per_worker_mb,
                      [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
                          const auto text = c.store.contents(ensure_aesop_text(c.store).filename().string());
                          runtimes::ensure_fasttext_model(c.store, *text);
                          return c.pool.register_text_embedding_model(
                              key,
                              runtimes::fasttext_loader(c.pool, c.files.url(runtimes::fasttext_model_name)),
                              sized(o, runtimes::fasttext_per_worker_mb));
                      }});
#endif
#if defined(MODELPOOL_HAVE_TORCH)
    models.push_back(
        {"char-rnn", "text_to_text",
         "a character-level GRU on libtorch 1.13, trained on Aesop's Fables (real runtime)", true,
         runtimes::char_rnn_per_worker_mb,
         [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
             return c.pool.register_text_to_text_model(
                 key,
                 runtimes::char_rnn_loader(c.pool.blocking_executor(),
                                           std::string(MODELPOOL_EXAMPLES_DATA_DIR) + "/char_rnn.pt"),
                 sized(o, runtimes::char_rnn_per_worker_mb));
         }});
#endif
#if defined(MODELPOOL_HAVE_TESSERACT)
    models.push_back({"tesseract", "vision", "Tesseract 5 OCR, English LSTM model (real runtime)", true,
                      runtimes::tesseract_ocr::per_worker_mb,
                      [=](const BuiltinContext& c, std::string_view key, ModelOptions o) {
                          return c.pool.register_vision_model(
                              key, runtimes::tesseract_ocr::loader(c.pool.blocking_executor()),
                              sized(o, runtimes::tesseract_ocr::per_worker_mb));
                      }});
#endif
    return models;
}

/// The built-in model called `name`, or null.
inline const BuiltinModel* find_builtin(const std::vector<BuiltinModel>& models, std::string_view name) {
    for (const auto& m : models) {
        if (m.name == name) {
            return &m;
        }
    }
    return nullptr;
}

/// The model the demo uses for `capability`: the real runtime when one is built, else the demo model.
inline const BuiltinModel& preferred_builtin(const std::vector<BuiltinModel>& models,
                                             std::string_view capability) {
    const BuiltinModel* pick = nullptr;
    for (const auto& m : models) {
        if (m.capability == capability && (pick == nullptr || (m.real_runtime && !pick->real_runtime))) {
            pick = &m;
        }
    }
    if (pick == nullptr) {
        throw std::logic_error("no built-in model serves " + std::string(capability));
    }
    return *pick;
}

} // namespace demo
