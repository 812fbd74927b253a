// Compiled against serving (duo_serve) and against evaluation (duo_eval) by the
// `layering_serve_not_cpu_backend` and `layering_eval_not_cpu_backend` tests, which pass only
// when this fails with the CPU backend's header not found: the engine makes the backends
// (linked PRIVATE), so what sits above it reaches a device through the seam alone. The first
// two includes, the public engine and the seam, are found: only the backend's fails.
#include "duo/engine.h"
#include "engine/backend.h"
#include "backend/cpu/cpu_forward.h"

int duo_layering_probe_above_seam_not_cpu() { return 0; }
