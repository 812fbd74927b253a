// The CUDA calibration's launchers (src/calibrate/cuda/*.cu) compiled as host code: their
// DUO_LAUNCH runs every CTA of the kernel's grid under the device emulation
// (tests/calibrate/cuda_emulation.h). Argument checks, grid shapes and kernel selection are the
// launchers' own. Part of duo_calib_emulation_tests, with fake_cuda.cpp for the runtime.
// clang-format off
#include "cuda_emulation.h"
#include "calibrate/cuda/norm_grad.cu"
#include "calibrate/cuda/elementwise_grad.cu"
#include "calibrate/cuda/gate_mix.cu"
#include "calibrate/cuda/qkv_grad.cu"
#include "calibrate/cuda/flash_forward.cu"
#include "calibrate/cuda/flash_backward.cu"
#include "calibrate/cuda/logit_kl.cu"
// clang-format on
