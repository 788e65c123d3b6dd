// examples/models/procedural_painter.hpp
//
// A demo text_to_image model (not a neural network, not diffusion): the prompt's words choose a scene from
// the model's vocabulary, e.g. "a red disc on blue" -> a red disc on a blue background, "navy stripes" ->
// navy stripes on white. Colour words pick the foreground and (after "on", "over" or "against", or as the
// second colour) the background; shape words pick the shape; unknown words are ignored, and what the prompt
// leaves open the seed decides. The seed also places and sizes the shape, so the same prompt, size and seed
// give the same pixels.
//
// Generation starts from seeded noise and refines it towards the scene in `config.steps` steps (each step
// closes a share of the remaining distance; the last one lands exactly on the scene), streaming an
// `ImageProgress` after each step and the finished `Image` as the last chunk.
//
// Its "weights" (`weights_file`, made by `generate_weights()`) are its vocabulary: "color NAME R G B" and
// "shape WORD SHAPE" lines, fetched over HTTP by the loader. `generate_image` is a coroutine; every step's
// pixel work runs on the blocking executor, so the io_context only awaits.
#pragma once

#include "models/image.hpp"

#include <modelpool/modelpool.hpp>

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace demo {

/// The vocabulary of a `ProceduralPainter`, read from its weight file.
struct PainterVocabulary {
    std::vector<NamedColor> colors;
    std::vector<std::pair<std::string, Shape>> shape_words;
};

/// Paints procedural scenes from prompts (a demo model; see the file comment).
class ProceduralPainter : public ImageModel<ProceduralPainter, PainterVocabulary> {
public:
    using ImageModel::ImageModel;

    /// The name of its weight file in a `WeightStore`.
    static constexpr std::string_view weights_file = "procedural_painter.vocabulary";

    /// Largest width or height it paints, and most refinement steps.
    static constexpr std::uint32_t max_side = 4096;
    static constexpr std::uint32_t max_steps = 1000;

    /// The weight file's text: the default colour table and shape words.
    static std::string generate_weights() {
        return "# procedural_painter demo weights: vocabulary (generated; not a neural network)\n" +
               color_records(basic_colors()) +
               "shape disc disc\nshape circle disc\nshape ball disc\nshape sun disc\nshape dot disc\n"
               "shape square square\nshape box square\nshape block square\n"
               "shape stripes stripes\nshape stripe stripes\nshape lines stripes\nshape flag stripes\n"
               "shape gradient gradient\nshape fade gradient\nshape sky gradient\nshape sunset gradient\n";
    }

    /// Parses a weight file; `spawn_failed` unless it has at least one colour and one shape word.
    static result<Weights> parse_weights(std::string_view text) {
        Weights w;
        for (const auto& record : parse_records(text)) {
            if (record.size() == 3 && record[0] == "shape" && shape_named(record[2])) {
                w.shape_words.emplace_back(record[1], *shape_named(record[2]));
            } else if (!parse_color_record(record, w.colors)) {
                return modelpool::fail(modelpool::errc::spawn_failed, "bad vocabulary record '{}'",
                                       record[0]);
            }
        }
        if (w.colors.empty() || w.shape_words.empty()) {
            return modelpool::fail(modelpool::errc::spawn_failed,
                                   "the vocabulary has {} colours and {} shape words; needs one of each",
                                   w.colors.size(), w.shape_words.size());
        }
        return w;
    }

    /// The scene `prompt` asks for, with what it leaves open chosen by `seed` (pure computation).
    static Scene interpret(const Weights& w, std::string_view prompt, std::uint64_t seed) {
        SplitMix rng{seed};
        std::optional<Rgb> foreground, background;
        std::optional<Shape> shape;
        bool background_next = false;
        std::string word;
        auto take = [&] {
            if (word == "on" || word == "over" || word == "against") {
                background_next = true;
            }
            for (const auto& c : w.colors) {
                auto& slot = background_next || foreground ? background : foreground;
                if (c.name == word && !slot) {
                    slot = c.rgb;
                }
            }
            for (const auto& [name, s] : w.shape_words) {
                if (name == word && !shape) {
                    shape = s;
                }
            }
            word.clear();
        };
        for (char ch : prompt) {
            if (std::isalpha(static_cast<unsigned char>(ch))) {
                word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            } else {
                take();
            }
        }
        take();
        Scene scene;
        scene.seed = rng.next();
        scene.background = background ? *background : Rgb{255, 255, 255};
        std::vector<Rgb> others; // an unnamed foreground differs from the background
        for (const auto& c : w.colors) {
            if (c.rgb != scene.background) {
                others.push_back(c.rgb);
            }
        }
        scene.foreground = foreground       ? *foreground
                           : others.empty() ? scene.background
                                            : others[rng.next() % others.size()];
        scene.shape = shape ? *shape : w.shape_words[rng.next() % w.shape_words.size()].second;
        return scene;
    }

    /// `invalid_argument` for sizes or step counts it does not paint.
    static result<void> check_config(const modelpool::ImageConfig& config) {
        if (config.width == 0 || config.height == 0 || config.width > max_side || config.height > max_side ||
            config.steps == 0 || config.steps > max_steps) {
            return modelpool::fail(
                modelpool::errc::invalid_argument,
                "cannot paint {}x{} pixels in {} steps: sides must be 1..{} and steps 1..{}", config.width,
                config.height, config.steps, max_side, max_steps);
        }
        return {};
    }

    // ---- the text_to_image capability

    /// Paints `prompt`: `config.steps` progress chunks, then the image.
    asio::awaitable<result<void>> generate_image(const std::string& prompt,
                                                 const modelpool::ImageConfig& config,
                                                 modelpool::ChunkSink<modelpool::ImageChunk>& sink) const {
        if (auto ok = check_config(config); !ok) {
            co_return ok;
        }
        const std::uint64_t seed = config.seed ? *config.seed : std::random_device{}();
        // The canvas is shared with the blocking thread, which works on it only while this coroutine awaits.
        auto canvas = std::make_shared<Canvas>();
        auto prepare = [canvas, weights = weights_, prompt, config, seed]() -> result<void> {
            canvas->target = render_scene(interpret(*weights, prompt, seed), config.width, config.height);
            canvas->current = canvas->target;
            SplitMix noise{seed ^ 0x6E6F697365ULL};
            for (auto& byte : canvas->current.pixels) {
                byte = static_cast<std::uint8_t>(noise.next() >> 56);
            }
            return {};
        };
        if (auto ok = co_await modelpool::offload(blocking_, std::move(prepare)); !ok) {
            co_return ok;
        }
        for (std::uint32_t step = 1; step <= config.steps; ++step) {
            auto refine = [canvas, remaining = config.steps - step + 1]() -> result<void> {
                auto& px = canvas->current.pixels;
                for (std::size_t i = 0; i < px.size(); ++i) {
                    const int delta = canvas->target.pixels[i] - px[i];
                    px[i] = static_cast<std::uint8_t>(px[i] + delta / static_cast<int>(remaining));
                }
                return {};
            };
            if (auto ok = co_await modelpool::offload(blocking_, std::move(refine)); !ok) {
                co_return ok;
            }
            modelpool::ImageProgress progress{step, config.steps}; // named: see ChunkSink::send on g++ 12
            if (!co_await sink.send(progress)) {
                co_return modelpool::fail(modelpool::errc::cancelled, "the reader left at step {}", step);
            }
        }
        modelpool::Image image = std::move(canvas->current);
        if (!co_await sink.send(std::move(image))) {
            co_return modelpool::fail(modelpool::errc::cancelled, "the reader left before the image");
        }
        co_return result<void>{};
    }

private:
    struct Canvas {
        Image current;
        Image target;
    };
};

} // namespace demo
