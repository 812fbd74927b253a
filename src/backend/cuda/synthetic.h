// Counter-based random numbers for synthetic weights: value i of a tensor depends only on
// (seed, i), so a GPU kernel fills 16 GB of weights in parallel without any state, and the
// host computes the same values to check it. Compiles as host code and as device code.
#pragma once
#include <cstdint>

#include "duo/host_device.h"

namespace duo::cuda {

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
DUO_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1) on a grid of 2^-23 (24 random bits; exact in float).
DUO_HD float hash_uniform(uint64_t seed, uint64_t i) {
  const uint64_t h = mix64(seed ^ mix64(i));
  return (float)(int32_t)(h >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

// Seed of one tensor of a synthetic model (tensor ids are assigned by the weight loader).
DUO_HD uint64_t tensor_seed(uint64_t seed, uint64_t tensor_id) { return mix64(seed * 0x100000001B3ull + tensor_id); }

}  // namespace duo::cuda
