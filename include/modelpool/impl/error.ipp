// modelpool/impl/error.ipp
//
// The definitions of the non-template members declared in modelpool/error.hpp (see
// modelpool/detail/config.hpp): included by that header in header-only mode, compiled once by
// src/modelpool.cpp with MODELPOOL_SEPARATE_COMPILATION.
#pragma once

#include "modelpool/error.hpp"

namespace modelpool {

MODELPOOL_DECL const std::error_category& pool_category() noexcept {
    struct category final : std::error_category {
        const char* name() const noexcept override { return "modelpool"; }
        std::string message(int value) const override {
            return std::string(to_string(static_cast<errc>(value)));
        }
    };
    static const category instance;
    return instance;
}

} // namespace modelpool
