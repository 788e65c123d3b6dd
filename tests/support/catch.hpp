// Catch2 shim: tests include "support/catch.hpp" and work with Catch2 v2.13 (Debian 12's package) and v3.
// tests/CMakeLists.txt defines MODELPOOL_CATCH2_V3 when it found Catch2 v3. Use the API both share
// (TEST_CASE, SECTION, REQUIRE/CHECK, REQUIRE_THROWS_AS, Approx, GENERATE, ...); main() comes from
// Catch2::Catch2WithMain, so no test file defines CATCH_CONFIG_MAIN.
#pragma once

#if defined(MODELPOOL_CATCH2_V3)
#include <catch2/catch_all.hpp>
using Catch::Approx; // v2 spells it Approx, v3 Catch::Approx
#else
#include <catch2/catch.hpp>
#endif
