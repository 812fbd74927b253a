// Attention kernel benchmark, Llama-3-8B attention shape (32 q heads, 8 KV heads, d=128):
// causal and Λ pre-fill at 8K/32K, split-KV decode at 32K/128K/512K, and a DuoAttention layer
// (50% retrieval / 50% streaming heads, sink 64 / recent 256) against full attention.
// Pre-fill runs on every kernel the device has (mma.sync; wgmma, wgmma without overlap and
// wgmma with ping-pong on Hopper), and at 8K the wgmma outputs are compared with the mma.sync
// ones. Last, the decode step's linear layers: gemv_bf16 against cuBLAS at one token.
// Usage: duo_cuda_bench [--json FILE] [--quick]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <cublas_v2.h>

#include "backend/cuda/attention.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

using namespace duo::cuda;
using duo::kPageTokens;

#define CK(x) DUO_CUDA_TRY(x)

namespace {

constexpr int kHeads = 32, kKv = 8, kD = 128, kSink = 64, kRecent = 256;

__global__ void fill_kernel(bf16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t x = (uint32_t)i * 2654435761u ^ seed;
    x ^= x >> 15, x *= 2246822519u, x ^= x >> 13;
    p[i] = __float2bfloat16(((x & 0xffff) / 65536.0f - 0.5f) * 3.0f);
  }
}

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t bytes) { CK(cudaMalloc(&p, std::max<size_t>(bytes, 16))); CK(cudaMemset(p, 0, std::max<size_t>(bytes, 16))); }
  ~Buf() { cudaFree(p); }
  bf16* b() const { return static_cast<bf16*>(p); }
};
void fill(const Buf& b, size_t n, uint32_t seed) {
  fill_kernel<<<1024, 256>>>(b.b(), n, seed);
  CK(cudaGetLastError());
}

// Median over `rounds` of (time of `iters` back-to-back calls / iters), in milliseconds.
template <class F>
double time_ms(F&& f, int iters, int rounds = 5) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a)), CK(cudaEventCreate(&b));
  for (int i = 0; i < 2; ++i) f();  // warm-up
  // A kernel that never finishes (deadlocked pipeline) ends the run after 120 s with a message.
  for (const auto t0 = std::chrono::steady_clock::now(); cudaStreamQuery(0) == cudaErrorNotReady;) {
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(120)) {
      std::fprintf(stderr, "FATAL: kernel did not finish within 120 s (deadlocked pipeline?)\n");
      std::fflush(stderr);
      std::_Exit(3);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CK(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int r = 0; r < rounds; ++r) {
    CK(cudaEventRecord(a));
    for (int i = 0; i < iters; ++i) f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms / iters);
  }
  CK(cudaEventDestroy(a)), CK(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Json {
  std::string s = "{";
  void add(const std::string& k, double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    s += (s.size() > 1 ? ",\n  \"" : "\n  \"") + k + "\": " + buf;
  }
  void add_str(const std::string& k, const std::string& v) { s += (s.size() > 1 ? ",\n  \"" : "\n  \"") + k + "\": \"" + v + "\""; }
};

// A layer's cache for `len` tokens: contiguous pages per head (page table identity).
struct BenchCache {
  Buf kp, vp, kr, vr, pt, kinds;
  LayerKv view;
  BenchCache(int len, int n_retrieval_kv)
      : kp((size_t)kKv * ((len + duo::kPageTokens - 1) / duo::kPageTokens) * duo::kPageTokens * kD * 2),
        vp((size_t)kKv * ((len + duo::kPageTokens - 1) / duo::kPageTokens) * duo::kPageTokens * kD * 2),
        kr((size_t)kKv * (kSink + kRecent) * kD * 2),
        vr((size_t)kKv * (kSink + kRecent) * kD * 2),
        pt((size_t)kKv * ((len + duo::kPageTokens - 1) / duo::kPageTokens) * 4),
        kinds(kKv) {
    const int max_pages = (len + duo::kPageTokens - 1) / duo::kPageTokens;
    std::vector<int32_t> table((size_t)kKv * max_pages);
    std::iota(table.begin(), table.end(), 0);
    CK(cudaMemcpy(pt.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
    std::vector<uint8_t> k(kKv);
    for (int h = 0; h < kKv; ++h) k[h] = h < n_retrieval_kv ? 0 : 1;  // retrieval heads first
    CK(cudaMemcpy(kinds.p, k.data(), kKv, cudaMemcpyHostToDevice));
    fill(kp, (size_t)kKv * max_pages * duo::kPageTokens * kD, 1), fill(vp, (size_t)kKv * max_pages * duo::kPageTokens * kD, 2);
    fill(kr, (size_t)kKv * (kSink + kRecent) * kD, 3), fill(vr, (size_t)kKv * (kSink + kRecent) * kD, 4);
    view.k_pages = kp.b(), view.v_pages = vp.b(), view.page_table = static_cast<int32_t*>(pt.p);
    view.max_pages = max_pages, view.k_ring = kr.b(), view.v_ring = vr.b();
    view.kinds = static_cast<uint8_t*>(kinds.p), view.sink = kSink, view.recent = kRecent;
    view.mode = n_retrieval_kv == kKv ? HeadMode::AllRetrieval : n_retrieval_kv == 0 ? HeadMode::AllStreaming
                                                                                       : HeadMode::Mixed;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc) json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  Json js;
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, dev));
  int sms = 0, clk = 0, mclk = 0, bus = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, dev));
  CK(cudaDeviceGetAttribute(&mclk, cudaDevAttrMemoryClockRate, dev));
  CK(cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, dev));
  std::printf("GPU: %s, %d SMs, SM clock %.0f MHz, memory clock %.0f MHz x %d bit, L2 %d MB, cc %d.%d\n", prop.name,
              sms, clk / 1e3, mclk / 1e3, bus, prop.l2CacheSize >> 20, prop.major, prop.minor);
  js.add_str("gpu", prop.name);
  js.add("sms", sms);

  {  // Device copy bandwidth (read + write bytes), the decode ceiling.
    const size_t bytes = (size_t)1 << 30;
    Buf a(bytes), b(bytes);
    const double ms = time_ms([&] { CK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice)); }, 10);
    const double gbs = 2.0 * bytes / (ms * 1e-3) / 1e9;
    std::printf("device copy: %.1f GB/s (read+write)\n", gbs);
    js.add("copy_gbs", gbs);
  }

  std::printf("\nPre-fill attention, %d q heads / %d kv heads, d=%d (causal FLOPs = 4*L*L/2*d*heads)\n", kHeads, kKv, kD);
  std::vector<PrefillKernel> kernels{PrefillKernel::Mma};
  if (prefill_wgmma_available()) kernels.insert(kernels.end(), {PrefillKernel::Wgmma, PrefillKernel::WgmmaSerial, PrefillKernel::WgmmaPingPong});
  else std::printf("  (wgmma kernel unavailable: needs sm_90a code and a cc 9.0 device)\n");
  {
    PrefillArgs probe;
    probe.head_dim = kD, probe.q_stride = probe.o_stride = kHeads * kD, probe.kv_stride = kKv * kD;
    std::printf("  default (prefill_attention with kernel = Auto): %s\n", prefill_kernel_name(prefill_kernel_for(probe)));
    js.add_str("prefill_default_kernel", prefill_kernel_name(prefill_kernel_for(probe)));
  }
  const std::vector<int> pre_lens = quick ? std::vector<int>{8192} : std::vector<int>{8192, 32768};
  for (int L : pre_lens) {
    Buf q((size_t)L * kHeads * kD * 2), k((size_t)L * kKv * kD * 2), v((size_t)L * kKv * kD * 2),
        o((size_t)L * kHeads * kD * 2), o_ref((size_t)L * kHeads * kD * 2);
    fill(q, (size_t)L * kHeads * kD, 5), fill(k, (size_t)L * kKv * kD, 6), fill(v, (size_t)L * kKv * kD, 7);
    const double flops = 4.0 * L * (double)L / 2 * kD * kHeads;
    for (int nret : {kKv, 0, kKv / 2}) {
      BenchCache cache(256, nret);  // pos0 = 0: the cache is not read, only the mask policy matters
      const char* name = nret == kKv ? "causal" : nret == 0 ? "lambda" : "duo50";
      double ms_mma = 0, ms_best = 1e30;
      for (PrefillKernel kern : kernels) {
        PrefillArgs a;
        a.q = q.b(), a.k = k.b(), a.v = v.b(), a.out = o.b();
        a.q_stride = a.o_stride = kHeads * kD, a.kv_stride = kKv * kD;
        a.n = L, a.pos0 = 0, a.n_heads = kHeads, a.n_kv_heads = kKv, a.head_dim = kD;
        a.cache = cache.view;
        a.kernel = kern;
        if (nret > 0 && nret < kKv) a.retrieval_kv_heads = nret;
        const double ms = time_ms([&] { prefill_attention(a, 0); }, L > 16384 ? 3 : 10);
        if (kern == PrefillKernel::Mma) ms_mma = ms;
        ms_best = std::min(ms_best, ms);
        const char* kn = prefill_kernel_name(kern);
        std::printf("  %-7s L=%6d %-14s: %9.3f ms  %7.1f TFLOP/s (causal-equivalent)  vs mma %.2fx", name, L, kn, ms,
                    flops / (ms * 1e-3) / 1e12, ms_mma / ms);
        const std::string key = std::string("prefill_") + name + "_" + std::to_string(L) + "_" + kn;
        js.add(key + "_ms", ms);
        js.add(key + "_tflops", flops / (ms * 1e-3) / 1e12);
        if (L == 8192 && kern == PrefillKernel::Mma) {
          CK(cudaMemcpy(o_ref.p, o.p, (size_t)L * kHeads * kD * 2, cudaMemcpyDeviceToDevice));
        } else if (L == 8192) {  // same inputs, same contract: the outputs must agree to bf16 rounding
          std::vector<bf16> x((size_t)L * kHeads * kD), y(x.size());
          CK(cudaMemcpy(x.data(), o.p, x.size() * 2, cudaMemcpyDeviceToHost));
          CK(cudaMemcpy(y.data(), o_ref.p, y.size() * 2, cudaMemcpyDeviceToHost));
          double md = 0;
          for (size_t i = 0; i < x.size(); ++i)
            md = std::max(md, (double)std::fabs(__bfloat162float(x[i]) - __bfloat162float(y[i])));
          std::printf("  max|out - mma out| %.3g%s", md, md > 2e-2 ? "  MISMATCH" : "");
          js.add(key + "_maxdiff_vs_mma", md);
        }
        std::printf("\n");
      }
      // Keys without a kernel suffix: the fastest kernel (what run_attention_bench.sh compares with SDPA).
      const std::string key = std::string("prefill_") + name + "_" + std::to_string(L);
      js.add(key + "_ms", ms_best);
      js.add(key + "_tflops", flops / (ms_best * 1e-3) / 1e12);
    }
  }

  std::printf("\nDecode attention (one token), split-KV over 256-token pages; bytes = K+V read\n");
  const std::vector<int> dec_lens = quick ? std::vector<int>{32768} : std::vector<int>{32768, 131072, 524288};
  for (int L : dec_lens) {
    Buf q((size_t)kHeads * kD * 2), o((size_t)kHeads * kD * 2);
    fill(q, kHeads * kD, 8);
    double us_full = 0;
    for (int nret : {kKv, kKv / 2}) {
      BenchCache cache(L, nret);
      DecodeArgs a;
      a.q = q.b(), a.out = o.b(), a.n_past = L, a.n_heads = kHeads, a.n_kv_heads = kKv, a.head_dim = kD;
      a.cache = cache.view;
      a.retrieval_kv_heads = nret;
      const int splits = decode_splits(a);
      Buf ws(decode_workspace_bytes(kHeads, kD, splits));
      a.workspace = ws.p, a.workspace_bytes = decode_workspace_bytes(kHeads, kD, splits);
      const double us = 1e3 * time_ms([&] { decode_attention(a, 0); }, 20);
      const double bytes = 2.0 * 2 * kD * ((double)nret * L + (double)(kKv - nret) * std::min(L, kSink + kRecent));
      const char* name = nret == kKv ? "full" : "duo50";
      if (nret == kKv) us_full = us;
      std::printf("  %-6s L=%7d: %9.1f us  %7.1f GB/s  (%d splits)  speedup vs full %.2fx\n", name, L, us,
                  bytes / (us * 1e-6) / 1e9, splits, us_full / us);
      const std::string key = std::string("decode_") + name + "_" + std::to_string(L);
      js.add(key + "_us", us);
      js.add(key + "_gbs", bytes / (us * 1e-6) / 1e9);
    }
  }
  // The decode step's linear layers (one token): our GEMV against cuBLAS (what Gemm::linear used
  // for n = 1 before), in GB/s of weights read. Several copies of a small matrix are cycled so
  // that back-to-back calls cannot be served from the 50 MB L2.
  std::printf("\nLinear layers of one token (Llama-3-8B decode shapes), GB/s of bf16 weights read\n");
  {
    cublasHandle_t handle = nullptr;
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) return std::fprintf(stderr, "cublasCreate failed\n"), 1;
    struct Lin {
      const char* name;
      int rows, cols;
    };
    const Lin lins[] = {{"wqkv", 6144, 4096}, {"wo", 4096, 4096}, {"w_gate_up", 28672, 4096},
                        {"w_down", 4096, 14336}, {"lm_head", 128256, 4096}};
    for (const Lin& l : lins) {
      if (quick && l.rows > 30000) continue;
      const size_t elems = (size_t)l.rows * l.cols, bytes = elems * 2;
      const int copies = (int)std::max<size_t>(1, ((size_t)512 << 20) / bytes);
      Buf w(bytes * copies), x((size_t)l.cols * 2), y((size_t)l.rows * 4);
      fill(w, elems * copies, 9), fill(x, l.cols, 10);
      int i = 0;
      const double ms_ours = time_ms(
          [&] { gemv_bf16(w.b() + (i++ % copies) * elems, l.rows, l.cols, x.b(), (float*)y.p, false, 0); }, 20);
      const float alpha = 1.0f, beta = 0.0f;
      const double ms_cublas = time_ms(
          [&] {
            if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, l.rows, 1, l.cols, &alpha, w.b() + (i++ % copies) * elems,
                             CUDA_R_16BF, l.cols, x.b(), CUDA_R_16BF, l.cols, &beta, y.p, CUDA_R_32F, l.rows,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS)
              std::fprintf(stderr, "cublasGemmEx failed\n");
          },
          20);
      const double gb_ours = bytes / (ms_ours * 1e-3) / 1e9, gb_cublas = bytes / (ms_cublas * 1e-3) / 1e9;
      std::printf("  %-10s %6d x %5d: gemv %7.1f us %7.1f GB/s | cuBLAS %7.1f us %7.1f GB/s | gemv / cuBLAS %.2fx\n",
                  l.name, l.rows, l.cols, 1e3 * ms_ours, gb_ours, 1e3 * ms_cublas, gb_cublas, ms_cublas / ms_ours);
      js.add(std::string("gemv_") + l.name + "_gbs", gb_ours);
      js.add(std::string("cublas_m1_") + l.name + "_gbs", gb_cublas);
    }
    cublasDestroy(handle);
  }

  js.s += "\n}\n";
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (!f) return std::fprintf(stderr, "cannot write %s\n", json_path.c_str()), 1;
    std::fputs(js.s.c_str(), f);
    std::fclose(f);
  }
  return 0;
}
