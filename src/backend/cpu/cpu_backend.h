// The CPU side of the device seam: CpuForward (backend/cpu/cpu_forward.h) over a KvCache.
#pragma once
#include "engine/backend.h"

namespace duo {

class KvCache;

// The KvCache behind a CPU sequence, or nullptr when the state lives on another device.
KvCache* cpu_cache(SequenceState& state);

}  // namespace duo
