// Compiled with the include roots of the CUDA backend's runtime (duo_backend_cuda) by the
// `layering_cuda_backend_not_cpu` test, which passes only when this fails with the header not
// found: the CPU backend is not below the CUDA one (both sit on the model's description).
#include "backend/cpu/cpu_forward.h"

int duo_layering_probe_cuda_not_cpu() { return 0; }
