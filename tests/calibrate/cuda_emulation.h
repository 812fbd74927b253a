// A CPU emulation of the few CUDA device features the calibration's attention kernels use, so
// their index and fragment logic runs (and is tested) without a GPU: a CTA's threads run as
// fibers on one OS thread, switching only at barriers and warp-collective operations;
// ldmatrix (.x4, .trans), mma.sync.m16n8k16 (bf16 -> fp32), __shfl_xor_sync and cp.async behave
// as the PTX ISA documents them; shared memory is one buffer, filled with NaN bit patterns before
// every CTA so a read of something never written shows. A barrier that some thread never reaches
// (a divergent __syncthreads) is reported as a deadlock instead of hanging.
//
// Fragment layouts implemented here (PTX ISA, "Matrix fragments for mma.m16n8k16" and
// "ldmatrix"), with g = lane / 4, q = lane % 4:
//   ldmatrix.x4: lanes 8 i .. 8 i + 7 give the row addresses of 8x8 matrix i; lane t receives
//     in register i the elements (row g, cols 2q, 2q + 1) of matrix i; with .trans the elements
//     (row 2q, col g) and (row 2q + 1, col g).
//   mma A (16x16): a0 (row g, k 2q..2q+1), a1 (row g+8, k 2q..), a2 (row g, k 2q+8..), a3 (row g+8, k 2q+8..)
//   mma B (16x8):  b0 (k 2q..2q+1, col g), b1 (k 2q+8..2q+9, col g); low half = lower k
//   mma C/D (16x8): c0, c1 (row g, cols 2q, 2q+1), c2, c3 (row g + 8, same cols)
// The kernels' helpers were written against the same layouts and verified on an H100 in
// backend/cuda/prefill.cu; the forward kernel, built from those helpers, checks this emulation.
//
// Global memory: GuardedBuffer ends flush against an inaccessible page, so a read or write past
// the end of a buffer faults instead of passing silently.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define DUO_CUDA_EMULATION 1

namespace duo::cuda::emu {

using std::max;
using std::min;
using bf16 = __nv_bfloat16;

struct Slot {
  const void* ptr = nullptr;  // ldmatrix: this lane's row address
  uint32_t a[4] = {}, b0 = 0, b1 = 0;
  float c[4] = {}, f = 0;
  uint32_t out[4] = {};
  float fout[4] = {};
};

struct Warp {
  uint64_t gen = 0;
  int arrived = 0;
  Slot slot[32];
};

// Switching between fibers: on x86-64 a minimal switch of the callee-saved registers and the
// stack pointer (glibc's swapcontext also saves the signal mask: a system call per switch, which
// made the emulation six times slower); elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void duo_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak duo_emu_switch
  .type duo_emu_switch, @function
duo_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size duo_emu_switch, .-duo_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
struct Context {
  void* sp = nullptr;
  // A fresh stack whose first switch "returns" into entry with the stack aligned as at a call.
  void start(char* stack, size_t bytes, void (*entry)()) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15);
    void** p = reinterpret_cast<void**>(top);
    *--p = nullptr;                              // entry's (unused) return address: rsp % 16 == 8 at entry
    *--p = reinterpret_cast<void*>(entry);       // popped by ret
    for (int i = 0; i < 6; ++i) *--p = nullptr;  // rbp, rbx, r12-r15
    sp = p;
  }
};
inline void switch_to(Context& from, Context& to) { duo_emu_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
  void start(char* stack, size_t bytes, void (*entry)()) {
    getcontext(&uc);
    uc.uc_stack.ss_sp = stack;
    uc.uc_stack.ss_size = bytes;
    uc.uc_link = nullptr;
    makecontext(&uc, entry, 0);
  }
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct Fiber {
  Context ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  bool done = false;
};

struct Runtime {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int cur = -1;
  Context sched;
  uint3 block_idx{0, 0, 0}, grid_dim{1, 1, 1}, block_dim{1, 1, 1};
  uint64_t cta_gen = 0;
  int cta_arrived = 0;
  uint64_t progress = 0;  // completed collectives and finished threads
  std::function<void()> body;
  std::vector<unsigned char> smem_store;
  unsigned char* smem = nullptr;
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}
inline Fiber& me() { return rt().fibers[(size_t)rt().cur]; }
inline void yield() { switch_to(me().ctx, rt().sched); }
inline int lane_id() { return (int)(me().tid.x % 32); }
inline Warp& my_warp() { return rt().warps[me().tid.x / 32]; }

// Every lane of the warp calls this after writing its Slot; the last one runs `all` over the 32
// slots (inputs -> outputs) and releases the others.
template <class F>
void warp_collective(F&& all) {
  Warp& w = my_warp();
  const uint64_t g = w.gen;
  if (++w.arrived == 32) {
    all(w.slot);
    w.arrived = 0;
    ++w.gen;
    ++rt().progress;
  } else {
    while (w.gen == g) yield();
  }
}

inline void syncthreads() {
  Runtime& r = rt();
  const uint64_t g = r.cta_gen;
  if (++r.cta_arrived == (int)r.block_dim.x) {
    r.cta_arrived = 0;
    ++r.cta_gen;
    ++r.progress;
  } else {
    while (r.cta_gen == g) yield();
  }
}

inline unsigned char* shared_memory() { return rt().smem; }

// --- device primitives (the names of backend/cuda/common.cuh and reduce.cuh) -----------------
inline void check_aligned(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "emulation: %s address %p is not 16-byte aligned\n", what, p);
    std::abort();
  }
}

inline void cp_async16(void* dst, const void* src, int src_bytes) {
  check_aligned(dst, "cp.async destination");
  check_aligned(src, "cp.async source");
  if (src_bytes < 0 || src_bytes > 16) {
    std::fprintf(stderr, "emulation: cp.async with %d source bytes\n", src_bytes);
    std::abort();
  }
  std::memcpy(dst, src, (size_t)src_bytes);  // no byte is read when src_bytes is 0
  std::memset(static_cast<char*>(dst) + src_bytes, 0, (size_t)(16 - src_bytes));
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}

inline uint16_t bits(bf16 x) {
  uint16_t u;
  std::memcpy(&u, &x, 2);
  return u;
}
inline uint32_t pack2(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }
inline float lo_f(uint32_t r) {
  const uint32_t u = r << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float hi_f(uint32_t r) {
  const uint32_t u = r & 0xffff0000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint32_t pack_bf16(float lo, float hi) { return pack2(bits(__float2bfloat16(lo)), bits(__float2bfloat16(hi))); }

inline void ldmatrix_impl(uint32_t (&r)[4], const void* p, bool trans) {
  check_aligned(p, "ldmatrix row");
  Slot& s = my_warp().slot[lane_id()];
  s.ptr = p;
  warp_collective([trans](Slot* sl) {
    for (int t = 0; t < 32; ++t) {
      const int g = t / 4, q = t % 4;
      for (int i = 0; i < 4; ++i) {
        const bf16* row0;
        const bf16* row1;
        int c0, c1;
        if (!trans) {  // (row g, cols 2q, 2q + 1)
          row0 = row1 = static_cast<const bf16*>(sl[8 * i + g].ptr);
          c0 = 2 * q, c1 = 2 * q + 1;
        } else {  // (row 2q, col g), (row 2q + 1, col g)
          row0 = static_cast<const bf16*>(sl[8 * i + 2 * q].ptr);
          row1 = static_cast<const bf16*>(sl[8 * i + 2 * q + 1].ptr);
          c0 = c1 = g;
        }
        sl[t].out[i] = pack2(bits(row0[c0]), bits(row1[c1]));
      }
    }
  });
  for (int i = 0; i < 4; ++i) r[i] = s.out[i];
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix_impl(r, p, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { ldmatrix_impl(r, p, true); }

// D (16x8) = A (16x16) B (16x8) + C, products of bf16 values summed in fp32 in k order.
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  Slot& s = my_warp().slot[lane_id()];
  for (int i = 0; i < 4; ++i) s.a[i] = a[i], s.c[i] = d[i];
  s.b0 = b0, s.b1 = b1;
  warp_collective([](Slot* sl) {
    float A[16][16], B[16][8], C[16][8];
    for (int t = 0; t < 32; ++t) {
      const int g = t / 4, q = t % 4;
      const Slot& x = sl[t];
      A[g][2 * q] = lo_f(x.a[0]), A[g][2 * q + 1] = hi_f(x.a[0]);
      A[g + 8][2 * q] = lo_f(x.a[1]), A[g + 8][2 * q + 1] = hi_f(x.a[1]);
      A[g][2 * q + 8] = lo_f(x.a[2]), A[g][2 * q + 9] = hi_f(x.a[2]);
      A[g + 8][2 * q + 8] = lo_f(x.a[3]), A[g + 8][2 * q + 9] = hi_f(x.a[3]);
      B[2 * q][g] = lo_f(x.b0), B[2 * q + 1][g] = hi_f(x.b0);
      B[2 * q + 8][g] = lo_f(x.b1), B[2 * q + 9][g] = hi_f(x.b1);
      C[g][2 * q] = x.c[0], C[g][2 * q + 1] = x.c[1], C[g + 8][2 * q] = x.c[2], C[g + 8][2 * q + 1] = x.c[3];
    }
    for (int t = 0; t < 32; ++t) {
      const int g = t / 4, q = t % 4;
      const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
      for (int e = 0; e < 4; ++e) {
        float acc = C[rows[e]][cols[e]];
        for (int k = 0; k < 16; ++k) acc += A[rows[e]][k] * B[k][cols[e]];
        sl[t].fout[e] = acc;
      }
    }
  });
  for (int i = 0; i < 4; ++i) d[i] = s.fout[i];
}

inline float shfl_xor(float v, int mask) {
  Slot& s = my_warp().slot[lane_id()];
  s.f = v;
  warp_collective([mask](Slot* sl) {
    for (int t = 0; t < 32; ++t) sl[t].fout[0] = sl[t ^ mask].f;
  });
  return s.fout[0];
}

inline void syncwarp() {
  warp_collective([](Slot*) {});
}

template <class T>
inline T warp_sum(T v) {
  for (int o = 16; o > 0; o /= 2) v += shfl_xor(v, o);
  return v;
}

// backend/cuda/reduce.cuh's block_sum, same algorithm: warp sums, one partial a warp in shared
// memory, every warp reduces the partials.
inline float block_sum(float v) {
  static float partial[32];
  const int lane = lane_id(), warp = (int)(me().tid.x / 32), warps = (int)(rt().block_dim.x / 32);
  v = warp_sum(v);
  syncthreads();
  if (lane == 0) partial[warp] = v;
  syncthreads();
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

// --- launching ---------------------------------------------------------------------------------
inline void fiber_entry() {
  rt().body();
  me().done = true;
  ++rt().progress;
  switch_to(me().ctx, rt().sched);  // never resumed
}

// Runs `body` for every CTA of the grid (blockIdx.y outer, x inner), block.x threads each.
inline void launch(dim3 grid, dim3 block, size_t smem_bytes, std::function<void()> body) {
  constexpr size_t kStack = 256 * 1024;
  Runtime& r = rt();
  const int threads = (int)block.x;
  if (threads % 32 != 0 || block.y != 1 || block.z != 1 || grid.z != 1)
    throw std::invalid_argument("emulation: 1-D blocks of a multiple of 32 threads, 2-D grids");
  r.grid_dim = grid;
  r.block_dim = uint3{(unsigned)threads, 1, 1};
  r.body = std::move(body);
  r.smem_store.assign(smem_bytes + 1024, 0);
  r.smem = r.smem_store.data() + (1024 - reinterpret_cast<uintptr_t>(r.smem_store.data()) % 1024) % 1024;
  r.fibers.resize((size_t)threads);
  for (auto& f : r.fibers)
    if (!f.stack) f.stack.reset(new char[kStack]);
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      r.block_idx = uint3{bx, by, 0};
      std::memset(r.smem, 0xff, smem_bytes);  // bf16 0xffff and fp32 0xffffffff are NaN
      r.warps.assign((size_t)threads / 32, Warp{});
      r.cta_gen = 0, r.cta_arrived = 0;
      for (int t = 0; t < threads; ++t) {
        Fiber& f = r.fibers[(size_t)t];
        f.tid = uint3{(unsigned)t, 0, 0};
        f.done = false;
        f.ctx.start(f.stack.get(), kStack, fiber_entry);
      }
      for (;;) {
        bool all_done = true;
        const uint64_t before = r.progress;
        for (int t = 0; t < threads; ++t) {
          if (r.fibers[(size_t)t].done) continue;
          all_done = false;
          r.cur = t;
          switch_to(r.sched, r.fibers[(size_t)t].ctx);
        }
        r.cur = -1;
        if (all_done) break;
        if (r.progress == before) {
          std::fprintf(stderr, "emulation: deadlock in CTA (%u, %u): threads wait at different barriers\n", bx, by);
          std::abort();
        }
      }
    }
}

// --- global memory with a guard page after the end ----------------------------------------------
template <class T>
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t n) : n_(n) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t bytes = (std::max<size_t>(n, 1) * sizeof(T) + 15) / 16 * 16;
    map_bytes_ = (bytes + page - 1) / page * page + page;
    base_ = static_cast<char*>(mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED) throw std::runtime_error("emulation: mmap failed");
    mprotect(base_ + map_bytes_ - page, page, PROT_NONE);
    data_ = reinterpret_cast<T*>(base_ + map_bytes_ - page - bytes);
    std::memset(static_cast<void*>(data_), 0xff, bytes);  // NaN until written
  }
  GuardedBuffer(const std::vector<T>& v) : GuardedBuffer(v.size()) { std::copy(v.begin(), v.end(), data_); }
  ~GuardedBuffer() { munmap(base_, map_bytes_); }
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  T* get() const { return data_; }
  std::vector<T> copy() const { return std::vector<T>(data_, data_ + n_); }

 private:
  size_t n_, map_bytes_;
  char* base_;
  T* data_;
};

}  // namespace duo::cuda::emu

#define threadIdx (::duo::cuda::emu::me().tid)
#define blockIdx (::duo::cuda::emu::rt().block_idx)
#define blockDim (::duo::cuda::emu::rt().block_dim)
#define gridDim (::duo::cuda::emu::rt().grid_dim)
#define __syncthreads() ::duo::cuda::emu::syncthreads()
#define __syncwarp() ::duo::cuda::emu::syncwarp()
#define __shfl_xor_sync(mask, v, lane_mask) ::duo::cuda::emu::shfl_xor((v), (lane_mask))

// Device math the kernels call unqualified.
using std::max;
using std::min;
