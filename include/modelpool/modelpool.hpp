// modelpool/modelpool.hpp
//
// The umbrella header: everything an application needs to spawn workers and send them requests.
#pragma once

#include "modelpool/asio.hpp"
#include "modelpool/capabilities/image_embedding.hpp"
#include "modelpool/capabilities/text_embedding.hpp"
#include "modelpool/capabilities/text_to_image.hpp"
#include "modelpool/capabilities/text_to_text.hpp"
#include "modelpool/capabilities/vision.hpp"
#include "modelpool/capability.hpp"
#include "modelpool/circuit_breaker.hpp"
#include "modelpool/clock.hpp"
#include "modelpool/error.hpp"
#include "modelpool/expected.hpp"
#include "modelpool/exposition.hpp"
#include "modelpool/histogram.hpp"
#include "modelpool/key_snapshot.hpp"
#include "modelpool/memory_governor.hpp"
#include "modelpool/metrics.hpp"
#include "modelpool/offload.hpp"
#include "modelpool/operations.hpp"
#include "modelpool/options.hpp"
#include "modelpool/pool.hpp"
#include "modelpool/request_options.hpp"
#include "modelpool/stream.hpp"
#include "modelpool/types.hpp"
#include "modelpool/worker_state.hpp"
