// modelpool/detail/config.hpp
//
// Build mode. By default modelpool is header-only: every function is defined in the headers, and the
// non-template machinery (routers, pool lifecycle, memory governor, clocks, error category) is compiled in
// every translation unit that uses it. Defining MODELPOOL_SEPARATE_COMPILATION (the CMake target
// modelpool::compiled does, PUBLIC) declares that machinery only; its definitions, in the impl/*.ipp files,
// are then compiled once, by src/modelpool.cpp, which is what modelpool::compiled builds. Asio's
// BOOST_ASIO_SEPARATE_COMPILATION works the same way. Templates stay in the headers in both modes.
#pragma once

// MODELPOOL_DECL also marks the in-class declarations of virtual functions defined in an .ipp file: declared
// inline there in header-only mode, they are no key function, so a class's vtable (and every virtual function
// with it) is emitted only where the class is constructed, not in each translation unit that includes it.
#if defined(MODELPOOL_SEPARATE_COMPILATION)
/// Marks a definition in impl/*.ipp: an ordinary (external) definition, compiled once.
#define MODELPOOL_DECL
#else
/// Marks a definition in impl/*.ipp: inline, since every translation unit that includes the header compiles
/// it.
#define MODELPOOL_DECL inline
#endif
