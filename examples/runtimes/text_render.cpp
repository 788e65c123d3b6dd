// examples/runtimes/text_render.cpp
//
// FreeType text rendering for the OCR example and benchmark (see text_render.hpp).
#include "runtimes/text_render.hpp"

#include <ft2build.h>
#include FT_FREETYPE_H
#include <leptonica/allheaders.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <system_error>

namespace runtimes::tesseract_ocr {

namespace {

using modelpool::errc;
using modelpool::fail;
using modelpool::result;

struct LibraryDeleter {
    void operator()(FT_Library library) const { FT_Done_FreeType(library); }
};
struct FaceDeleter {
    void operator()(FT_Face face) const { FT_Done_Face(face); }
};
struct PixDeleter {
    void operator()(PIX* pix) const { pixDestroy(&pix); }
};

/// The Unicode code points of the UTF-8 `text` (malformed bytes become U+FFFD).
std::vector<char32_t> code_points(const std::string& text) {
    std::vector<char32_t> out;
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        const int extra = c < 0x80           ? 0
                          : (c >> 5) == 0x6  ? 1
                          : (c >> 4) == 0xE  ? 2
                          : (c >> 3) == 0x1E ? 3
                                             : -1;
        if (extra < 0 || i + static_cast<std::size_t>(extra) >= text.size()) {
            out.push_back(0xFFFD);
            ++i;
            continue;
        }
        char32_t cp = extra == 0 ? c : c & (0x3F >> extra);
        for (int k = 1; k <= extra; ++k) {
            cp = (cp << 6) | (static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]) & 0x3F);
        }
        out.push_back(cp);
        i += static_cast<std::size_t>(extra) + 1;
    }
    return out;
}

/// Pen advance of `text` in pixels (with kerning).
long text_width(FT_Face face, const std::vector<char32_t>& text) {
    long width = 0;
    FT_UInt previous = 0;
    for (const char32_t cp : text) {
        const FT_UInt glyph = FT_Get_Char_Index(face, cp);
        if (previous != 0 && glyph != 0 && FT_HAS_KERNING(face)) {
            FT_Vector kern{};
            FT_Get_Kerning(face, previous, glyph, FT_KERNING_DEFAULT, &kern);
            width += kern.x >> 6;
        }
        if (FT_Load_Glyph(face, glyph, FT_LOAD_DEFAULT) == 0) {
            width += face->glyph->advance.x >> 6;
        }
        previous = glyph;
    }
    return width;
}

} // namespace

result<std::string> render_text_png(const std::vector<std::string>& lines, const RenderOptions& options) {
    if (lines.empty()) {
        return fail(errc::invalid_argument, "render_text_png: no text lines to render");
    }
    if (options.pixel_size < 8 || options.pixel_size > 200 || options.margin < 0 || options.margin > 1000) {
        return fail(
            errc::invalid_argument,
            "render_text_png: pixel_size {} (accepted 8-200) or margin {} (accepted 0-1000) out of range",
            options.pixel_size, options.margin);
    }
    std::error_code ec;
    if (!std::filesystem::is_regular_file(options.font_path, ec)) {
        return fail(errc::invalid_argument, "font '{}' not found (Debian package fonts-dejavu-core)",
                    options.font_path);
    }
    FT_Library raw_library = nullptr;
    if (const auto error = FT_Init_FreeType(&raw_library); error != 0) {
        return fail(errc::invalid_argument, "FreeType could not start (error {})", error);
    }
    const std::unique_ptr<FT_LibraryRec_, LibraryDeleter> library(raw_library);
    FT_Face raw_face = nullptr;
    if (const auto error = FT_New_Face(library.get(), options.font_path.c_str(), 0, &raw_face); error != 0) {
        return fail(errc::invalid_argument, "FreeType cannot open font '{}' (error {})", options.font_path,
                    error);
    }
    const std::unique_ptr<FT_FaceRec_, FaceDeleter> face(raw_face);
    if (const auto error = FT_Set_Pixel_Sizes(face.get(), 0, static_cast<FT_UInt>(options.pixel_size));
        error != 0) {
        return fail(errc::invalid_argument, "font '{}' has no {} px size (error {})", options.font_path,
                    options.pixel_size, error);
    }

    std::vector<std::vector<char32_t>> texts;
    long widest = 1;
    for (const auto& line : lines) {
        texts.push_back(code_points(line));
        widest = std::max(widest, text_width(face.get(), texts.back()));
    }
    const long ascender = face->size->metrics.ascender >> 6;
    const long line_height = face->size->metrics.height >> 6;
    const long width = widest + 2L * options.margin;
    const long height = line_height * static_cast<long>(lines.size()) + 2L * options.margin;
    const std::unique_ptr<PIX, PixDeleter> pix(
        pixCreate(static_cast<l_int32>(width), static_cast<l_int32>(height), 8));
    if (!pix) {
        return fail(errc::invalid_argument, "cannot allocate a {}x{} image", width, height);
    }
    pixSetAll(pix.get()); // white
    pixSetResolution(pix.get(), 300, 300);

    for (std::size_t row = 0; row < texts.size(); ++row) {
        long pen_x = options.margin;
        const long baseline = options.margin + static_cast<long>(row) * line_height + ascender;
        FT_UInt previous = 0;
        for (const char32_t cp : texts[row]) {
            const FT_UInt glyph = FT_Get_Char_Index(face.get(), cp);
            if (previous != 0 && glyph != 0 && FT_HAS_KERNING(face.get())) {
                FT_Vector kern{};
                FT_Get_Kerning(face.get(), previous, glyph, FT_KERNING_DEFAULT, &kern);
                pen_x += kern.x >> 6;
            }
            previous = glyph;
            if (FT_Load_Glyph(face.get(), glyph, FT_LOAD_RENDER) != 0) {
                continue;
            }
            const FT_GlyphSlot slot = face->glyph;
            const FT_Bitmap& bitmap = slot->bitmap;
            for (unsigned y = 0; y < bitmap.rows; ++y) {
                for (unsigned x = 0; x < bitmap.width; ++x) {
                    const long px = pen_x + slot->bitmap_left + static_cast<long>(x);
                    const long py = baseline - slot->bitmap_top + static_cast<long>(y);
                    if (px < 0 || py < 0 || px >= width || py >= height) {
                        continue;
                    }
                    const unsigned coverage = bitmap.buffer[static_cast<long>(y) * bitmap.pitch + x];
                    l_uint32 old = 255;
                    pixGetPixel(pix.get(), static_cast<l_int32>(px), static_cast<l_int32>(py), &old);
                    const l_uint32 ink =
                        255 - coverage; // black text: darkest coverage wins where glyphs touch
                    pixSetPixel(pix.get(), static_cast<l_int32>(px), static_cast<l_int32>(py),
                                std::min(old, ink));
                }
            }
            pen_x += slot->advance.x >> 6;
        }
    }

    l_uint8* data = nullptr;
    size_t size = 0;
    if (pixWriteMem(&data, &size, pix.get(), IFF_PNG) != 0 || data == nullptr) {
        return fail(errc::invalid_argument, "Leptonica could not encode the rendered text as PNG");
    }
    std::string png(reinterpret_cast<const char*>(data), size);
    lept_free(data);
    return png;
}

} // namespace runtimes::tesseract_ocr
