// Where a model runs and how the CUDA backend stores its weights: options of the public API
// (EngineOptions), parsed from the command line's --device and --gpu-weights. Defined in
// src/engine/backend.cpp (the device seam, which implements both devices' choice).
#pragma once
#include <string>

namespace duo {

enum class Device { Cpu, Cuda };
Device parse_device(const std::string& s);  // "cpu" | "cuda"
const char* to_string(Device d);
// Whether this build has the CUDA backend compiled in.
bool cuda_compiled();

// How the CUDA backend keeps the weight matrices (--gpu-weights): bf16, or int8 weight-only with
// an fp32 scale a row (half the bytes; decode GEMVs read int8 directly, pre-fill dequantizes
// tiles to bf16 for cuBLAS). Norms, biases and the embedding table stay as they are.
enum class WeightFormat { Bf16, Int8 };
WeightFormat parse_weight_format(const std::string& s);  // "bf16" | "int8"
const char* to_string(WeightFormat f);

}  // namespace duo
