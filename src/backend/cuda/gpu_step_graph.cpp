// Batched decode steps replayed from CUDA graphs (GpuModel::step_replay).
//
// A step of decode tokens only is the common state of a busy server, and at short contexts its
// ~15 launches a layer cost more host time than the GPU spends on them. Everything such a step
// varies in is data: token ids, positions, each sequence's cache views (page tables, windows)
// and the attention kernels' per-sequence parameters (split sizes, workspace offsets). The host
// writes all of it into one block, copies it to the device in one transfer, and replays a graph
// captured once per batch-size bucket; the rows are padded to the bucket (padding rows compute
// and are ignored; their KV append and attention do nothing). The attention launch has a fixed
// grid (decode_attention_batch_replay), so the splits are chosen for this step within it.
// Quantized caches also bake each sequence's group-completion launch (kv_quantize), so their
// graphs are keyed on the sequences too and recaptured when the batch changes.
#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gpu_model.h"
#include "backend/cuda/kernels.h"
#include "core/error.h"

namespace duo::cuda {
namespace {

// Batch-size buckets: a step replays the graph of the smallest bucket that holds it.
constexpr int kBuckets[] = {1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256};

int bucket_for(int n) {
  for (int b : kBuckets)
    if (b >= n) return b;
  return 0;
}

size_t round_up(size_t x) { return (x + 255) / 256 * 256; }

// Where each part of the staged block lies (bytes from its start), for B rows and L layers.
struct ReplayLayout {
  size_t ids = 0, row_pos, lm_rows, dec_rows, dec_pos, views, params, params_stride, bytes;
  ReplayLayout(int B, int L) {
    row_pos = ids + sizeof(int32_t) * B;
    lm_rows = row_pos + sizeof(int32_t) * B;
    dec_rows = lm_rows + sizeof(int32_t) * B;
    dec_pos = dec_rows + sizeof(int32_t) * B;
    views = round_up(dec_pos + sizeof(int32_t) * B);
    params = round_up(views + sizeof(LayerKv) * B * L);
    params_stride = round_up(decode_batch_params_bytes(B));
    bytes = params + params_stride * L;
  }
};

}  // namespace

bool GpuModel::step_replay(const std::vector<StepItem>& items, int32_t* picked, float* logits) {
  const int N = (int)items.size();
  if (!graphs_ || timing_ || !batch_decode_ || N == 0) return false;
  for (const StepItem& it : items)
    if (it.n != 1 || it.kv->type() != items[0].kv->type()) return false;
  const int B = bucket_for(N);
  if (B == 0) return false;
  const ModelConfig& c = config();
  const int L = c.n_layers;
  const int64_t E = c.n_embd, V = c.n_vocab, D = c.head_dim, H = c.n_heads, HKV = c.n_kv_heads;
  const int64_t Q = H * D, KV = HKV * D, QKV = Q + 2 * KV;
  const bool quantized = is_quantized(items[0].kv->type());

  // Buffers first (a grown buffer moves, and the graph bakes their addresses).
  for (const StepItem& it : items) it.kv->reserve(it.kv->n_past() + 1);
  const Act act = activations(B, {});
  // int8 weights: the GEMMs of B > 1 rows dequantize into Gemm's tile, sized here for the
  // largest matrix (every layer has layer 0's shapes; an int8 LM head is the largest of all).
  const void* tile = nullptr;
  if (B > 1) {
    const GpuLayerWeights& W = w_->layer(0);
    const std::pair<const GpuMatrix*, std::pair<int64_t, int64_t>> mats[] = {
        {&W.wqkv, {QKV, E}}, {&W.wo, {E, Q}}, {&W.wgu, {2 * c.n_ff, E}}, {&W.wdown, {E, c.n_ff}},
        {&w_->output(), {V, E}}};
    for (const auto& [m, shape] : mats)
      if (m->int8()) tile = gemm_->reserve_dequant_tile(shape.first, shape.second);
  }
  bf16* lm_in = lm_in_.ensure_n<bf16>(B * E);
  float* lg = logits_.ensure_n<float>((int64_t)B * V);
  int32_t* out_d = picked_.ensure_n<int32_t>(B);
  const ReplayLayout lay(B, L);
  auto* dev = static_cast<unsigned char*>(replay_buf_.ensure(lay.bytes));
  const DecodeArgs shape = decode_args(*items[0].kv, 0, nullptr, nullptr);
  const DecodeBatchGrid grid = decode_batch_grid(shape, B);
  const size_t ws_bytes = decode_batch_grid_workspace_bytes(shape, grid);
  void* ws = replay_ws_.ensure(ws_bytes);

  // The staged block: ids, positions, LM-head rows, decode rows / positions (padding: -1), every
  // layer's cache views, every layer's attention parameters.
  replay_host_.assign(lay.bytes, 0);
  unsigned char* host = replay_host_.data();
  auto ints = [&](size_t off) { return reinterpret_cast<int32_t*>(host + off); };
  for (int i = 0; i < B; ++i) {
    const bool real = i < N;
    ints(lay.ids)[i] = real ? items[i].tokens[0] : 0;
    ints(lay.row_pos)[i] = real ? (int32_t)items[i].kv->n_past() : 0;
    ints(lay.lm_rows)[i] = i;
    ints(lay.dec_rows)[i] = i;
    ints(lay.dec_pos)[i] = real ? (int32_t)items[i].kv->n_past() : -1;
  }
  std::vector<DecodeArgs> da(N);
  std::vector<bool> quant_kernel(L);  // per layer: the quantized-cache kernel runs
  std::vector<const void*> key = {reinterpret_cast<const void*>((uintptr_t)items[0].kv->type()),
                                  act.x, act.xn, act.qkv, act.q, act.k, act.v, act.att, act.o, act.gu, act.h,
                                  lm_in, lg, out_d, dev, ws, tile};
  for (int l = 0; l < L; ++l) {
    auto* views = reinterpret_cast<LayerKv*>(host + lay.views) + (size_t)l * B;
    for (int i = 0; i < N; ++i) {
      views[i] = items[i].kv->layer(l);
      da[i] = decode_args(*items[i].kv, l, act.q + i * Q, act.att + i * Q);
    }
    DecodeBatch b;
    b.items = da.data(), b.n = N, b.workspace = ws, b.workspace_bytes = ws_bytes;
    quant_kernel[l] = decode_batch_stage(b, grid, host + lay.params + lay.params_stride * l);
    key.push_back(reinterpret_cast<const void*>((uintptr_t)quant_kernel[l]));
  }
  if (quantized)  // the group-completion launches bake each sequence's views
    for (const StepItem& it : items) key.push_back(reinterpret_cast<const void*>((uintptr_t)it.kv->id()));
  // From pageable memory: returns once staged (and the last step ended with a synchronize).
  DUO_CUDA_TRY(cudaMemcpyAsync(dev, host, lay.bytes, cudaMemcpyHostToDevice, stream_));

  StepGraph& g = step_graphs_[B];
  if (!g.exec || g.key != key) {
    if (g.exec) cudaGraphExecDestroy(g.exec);
    g.exec = nullptr;
    g.key.clear();
    const auto* ids_d = reinterpret_cast<const int32_t*>(dev + lay.ids);
    const auto* row_pos_d = reinterpret_cast<const int32_t*>(dev + lay.row_pos);
    const auto* lm_rows_d = reinterpret_cast<const int32_t*>(dev + lay.lm_rows);
    const auto* dec_rows_d = reinterpret_cast<const int32_t*>(dev + lay.dec_rows);
    const auto* dec_pos_d = reinterpret_cast<const int32_t*>(dev + lay.dec_pos);
    const auto* views_d = reinterpret_cast<const LayerKv*>(dev + lay.views);
    cudaGraph_t graph = nullptr;
    DUO_CUDA_TRY(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_layers(act, ids_d, B, [&](int l) {
        enqueue_rope_rows(act, l, B, row_pos_d);
        kv_append_batch(act.k, act.v, KV, dec_rows_d, views_d + (size_t)l * B, dec_pos_d, B, (int)HKV, (int)D,
                        stream_);
        if (quantized)  // a sequence's token may complete a group of 64 (decided on the device)
          for (int i = 0; i < N; ++i)
            kv_quantize(nullptr, nullptr, 0, 1, -1, (int)HKV, (int)D, items[i].kv->retrieval_heads(l),
                        items[i].kv->layer(l), stream_, dec_pos_d + i);
        decode_attention_batch_replay(shape, quant_kernel[l], dev + lay.params + lay.params_stride * l,
                                      grid, stream_);
      });
      gather_rows(act.xn, E, lm_rows_d, B, lm_in, stream_);
      enqueue_lm_head(lm_in, B, lg);
      argmax_rows(lg, B, (int)V, out_d, stream_);
    } catch (...) {
      (void)cudaStreamEndCapture(stream_, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    DUO_CUDA_TRY(cudaStreamEndCapture(stream_, &graph));
    const cudaError_t e = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    DUO_CUDA_TRY(e);
    g.key = key;
    ++captures_;
  }
  DUO_CUDA_TRY(cudaGraphLaunch(g.exec, stream_));
  for (const StepItem& it : items) it.kv->advance(1);

  // Sampled picks replace the graph's argmax (the uniform numbers are the host's).
  for (int i = 0; i < N; ++i) {
    const StepItem& it = items[i];
    if (!it.pick || it.sampling.temperature <= 0.0f) continue;
    enqueue_sample(lg + (int64_t)i * V, it.sampling, it.u, out_d + i);
  }
  std::vector<int32_t> got(N, -1);
  DUO_CUDA_TRY(cudaMemcpyAsync(got.data(), out_d, sizeof(int32_t) * N, cudaMemcpyDeviceToHost, stream_));
  if (logits) DUO_CUDA_TRY(cudaMemcpyAsync(logits, lg, sizeof(float) * N * V, cudaMemcpyDeviceToHost, stream_));
  DUO_CUDA_TRY(cudaStreamSynchronize(stream_));
  for (int i = 0; i < N; ++i) picked[i] = items[i].pick ? got[i] : -1;
  return true;
}

}  // namespace duo::cuda
