// Compiled with the include roots of the CUDA backend's runtime (duo_backend_cuda) by the
// `layering_cuda_backend_sees_model` test: the model's description, which the CUDA weights are
// built from, is on its path (so cuda_not_cpu.cpp fails for the layering, not a broken probe).
#include "model/weight_view.h"
#include "duo/head_plan.h"

int duo_layering_probe_cuda_sees_model() { return 0; }
