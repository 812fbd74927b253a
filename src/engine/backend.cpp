#include "engine/backend.h"

#include "core/error.h"

namespace duo {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::Cpu;
  if (s == "cuda") return Device::Cuda;
  fail("unknown device '{}' (expected cpu or cuda)", s);
}

const char* to_string(Device d) { return d == Device::Cuda ? "cuda" : "cpu"; }

WeightFormat parse_weight_format(const std::string& s) {
  if (s == "bf16") return WeightFormat::Bf16;
  if (s == "int8") return WeightFormat::Int8;
  fail("unknown GPU weight format '{}' (expected bf16 or int8)", s);
}

const char* to_string(WeightFormat f) { return f == WeightFormat::Int8 ? "int8" : "bf16"; }

size_t ModelBackend::sequence_bytes_at(const HeadPlan& plan, int64_t capacity, int64_t n) const {
  (void)capacity;
  return kv_bytes_for(plan, n);
}

void ModelBackend::fill_kv_random(SequenceState&, int64_t, uint64_t) {
  fail("filling a KV cache with random contents is not supported on device '{}'", to_string(device()));
}

void ModelBackend::set_attention_observer(AttentionObserver* observer) {
  DUO_CHECK(observer == nullptr, "device '{}' cannot show its attention to an observer", to_string(device()));
}

#ifdef DUO_HAVE_CUDA
bool cuda_compiled() { return true; }
// make_cuda_backend / make_cuda_synthetic_backend: src/backend/cuda/cuda_backend.cpp
#else
bool cuda_compiled() { return false; }

namespace {
[[noreturn]] void no_cuda() {
  fail("device 'cuda' is not available: this duo was built without the CUDA backend "
       "(configure with -DDUO_CUDA=ON on a machine with nvcc, e.g. cmake -S . -B build -DDUO_CUDA=ON)");
}
}  // namespace

std::unique_ptr<ModelBackend> make_cuda_backend(const Model&, WeightFormat) { no_cuda(); }
std::unique_ptr<ModelBackend> make_cuda_synthetic_backend(const ModelConfig&, uint64_t, WeightFormat) { no_cuda(); }
#endif

}  // namespace duo
