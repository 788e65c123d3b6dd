// src/modelpool.cpp
//
// modelpool's separately compiled part: the CMake target modelpool::compiled builds this file, with
// MODELPOOL_SEPARATE_COMPILATION defined (PUBLIC, so every user of the target has it too). The headers then
// only declare the non-template machinery, and it is compiled here, once. See modelpool/detail/config.hpp.
#if !defined(MODELPOOL_SEPARATE_COMPILATION)
#error                                                                                                       \
    "src/modelpool.cpp is the separately compiled part of modelpool: build it with MODELPOOL_SEPARATE_COMPILATION"
#endif

#include "modelpool/modelpool.hpp"

#include "modelpool/detail/impl/key_router.ipp"
#include "modelpool/detail/impl/pool_core.ipp"
#include "modelpool/detail/impl/worker.ipp"
#include "modelpool/impl/clock.ipp"
#include "modelpool/impl/error.ipp"
#include "modelpool/impl/memory_governor.ipp"
#include "modelpool/impl/pool.ipp"
