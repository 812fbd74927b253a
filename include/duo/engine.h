// Public API of the duo engine: load a model once (Engine), run sequences on it (Session).
//
//   duo::Engine engine({.model_path = "model.gguf", .threads = 2});
//   auto s = engine.new_session();
//   s->generate(engine.tokenizer().encode("Hello", false, true), 32, sampler,
//               [](int32_t id, const std::string& text) { std::cout << text; return true; });
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "duo/device.h"
#include "duo/head_plan.h"
#include "duo/sampler.h"

namespace duo {

// Internals the API hands out by reference (engine/backend.h, model/model.h, ...: a caller that
// uses them includes their headers from src/); the public headers name them only.
class Model;
class Tokenizer;
class ThreadPool;
class ModelBackend;
class SequenceState;

enum class AttentionMode { Full, Streaming, Duo };
AttentionMode parse_attention_mode(const std::string& s);  // "full" | "streaming" | "duo"
const char* to_string(AttentionMode m);

struct EngineOptions {
  std::string model_path;
  int threads = 0;  // 0: all hardware threads
  AttentionMode attention = AttentionMode::Full;
  StreamingWindow window;     // sink and recent sizes of streaming heads
  int64_t chunk = 512;        // pre-fill chunk (tokens per forward pass)
  int64_t max_context = 0;    // 0: the model's training context
  HeadPlan plan;              // head kinds for duo mode (window is taken from `window`)
  std::string pattern_origin = "head pattern";  // where `plan` came from, for error messages
  Device device = Device::Cpu;  // where the forward runs (the model is loaded in host memory either way)
  KvType kv_type = KvType::Default;  // KV cache storage (duo/kv_type.h; Default: f32 CPU, bf16 CUDA)
  WeightFormat gpu_weights = WeightFormat::Bf16;  // weight matrices on the CUDA device
  // CPU many-token matmuls (pre-fill chunks, batched decode): 16-bit activations, or 8 (int8
  // activations for Q4_0/Q4_1/Q8_0 weights on AVX-512 VNNI; MatmulWeight::act_bits).
  int act_bits = 16;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  size_t kv_bytes = 0;
  size_t kv_bytes_retrieval = 0;
  size_t kv_bytes_streaming = 0;
  bool stopped_by_eog = false;
  bool prefill_stopped = false;  // the PrefillCallback asked to stop: nothing was generated
  double prefill_tok_s() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0.0; }
  double decode_tok_s() const { return decode_seconds > 0 ? generated_tokens / decode_seconds : 0.0; }
};

class Session;

class Engine {
 public:
  explicit Engine(const EngineOptions& opts);
  ~Engine();
  const EngineOptions& options() const { return opts_; }
  Model& model() { return *model_; }
  // The model on its device (engine/backend.h): what serving, evaluation and tools run.
  ModelBackend& backend() { return *backend_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  ThreadPool& pool() { return *pool_; }
  const HeadPlan& plan() const { return plan_; }
  // A plan given in the model's stored head order, in the backend's cache-slot order (the order
  // a duo pattern put retrieval heads first in): lets one engine run sequences of other plans.
  HeadPlan to_slot_order(const HeadPlan& plan) const;
  int64_t max_context() const;
  std::unique_ptr<Session> new_session();

 private:
  EngineOptions opts_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ThreadPool> pool_;
  HeadPlan plan_;
  std::unique_ptr<ModelBackend> backend_;
};

// Called with each generated token and its text (complete UTF-8 characters only; may be
// empty while a character is incomplete). Return false to stop.
using TokenCallback = std::function<bool(int32_t id, const std::string& text)>;
// Called during a prompt's pre-fill after each chunk with the prompt tokens fed so far and
// their total (long prompts take minutes on a CPU: this is where a tool shows progress).
// Return false to stop: the tokens fed so far stay in the cache and nothing is generated.
using PrefillCallback = std::function<bool(int64_t done, int64_t total)>;

class Session {
 public:
  explicit Session(Engine& engine);
  ~Session();
  int64_t n_past() const;
  SequenceState& state() { return *state_; }
  // Appends tokens to the sequence; returns the logits of the last one (n_vocab floats).
  const std::vector<float>& feed(const std::vector<int32_t>& tokens);
  // Feeds the prompt, then samples up to max_tokens tokens, stopping at an end-of-generation
  // token (not emitted) or when the callback returns false.
  GenerationStats generate(const std::vector<int32_t>& prompt, int max_tokens, Sampler& sampler,
                           const TokenCallback& on_token, const PrefillCallback& on_prefill = {});
  void reset();

 private:
  Engine& engine_;
  std::unique_ptr<SequenceState> state_;
  std::vector<float> logits_;
  int32_t pick(const std::vector<int32_t>& tokens, Sampler& sampler);
};

}  // namespace duo
