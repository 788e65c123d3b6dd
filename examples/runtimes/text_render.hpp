// examples/runtimes/text_render.hpp
//
// Renders known text lines into an image with FreeType, so that the OCR example and benchmark can check
// Tesseract's output against the text they put in (part of the Tesseract adapter library; FreeType's and
// Leptonica's headers stay in text_render.cpp). Black text on white, 8-bit grey, antialiased; written as PNG
// by Leptonica.
#pragma once

#include <modelpool/error.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace runtimes::tesseract_ocr {

/// Debian's DejaVu Sans (package fonts-dejavu-core).
inline constexpr std::string_view default_font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// How text is rendered.
struct RenderOptions {
    std::string font_path{default_font}; ///< A TrueType/OpenType font file.
    int pixel_size = 32;                 ///< Nominal glyph height in pixels (the em size).
    int margin = 24;                     ///< White border around the text, in pixels.
};

/// The PNG bytes of an image showing `lines` one under the other (blocking; plain CPU work).
/// `invalid_argument` when there is no line, the font cannot be opened (naming the path and the package) or
/// the size is out of range (8-200 pixels).
modelpool::result<std::string> render_text_png(const std::vector<std::string>& lines,
                                               const RenderOptions& options = {});

} // namespace runtimes::tesseract_ocr
