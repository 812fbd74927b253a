// Compiled against the device seam (duo_seam) by the `layering_seam_not_cpu_cache` test, which
// passes only when this fails with the header not found: the CPU KV cache belongs to the CPU
// backend (src/backend/cpu/), so neither the seam nor what lies below it (src/kv/, which keeps
// what both caches share) can name it; callers reach a cache as a SequenceState.
#include "engine/backend.h"
#include "backend/cpu/kv_cache.h"

int duo_layering_probe_seam_not_cpu_cache() { return 0; }
