// The online-softmax step of one key tile in the mma.sync attention kernels: the pre-fill
// (prefill.cu, over the KV cache) and the calibration's forward (calibrate/cuda/
// flash_forward_kernel.cuh, which also builds as host code for the CPU emulation test: this
// header uses only what that emulation defines).
#pragma once
#include <cmath>

namespace duo::cuda {

// A warp holds the scores of kMt m16 query tiles against kBN keys in the C-fragment layout of
// mma.m16n8k16 (lane holds rows lane / 4 + 8 hr, columns (lane % 4) * 2 + e of each n8 block).
// Scales them to base 2 (sl2 = log2(e) / sqrt(d)); unless the tile is `full` (every key visible
// to every row), hides keys at or past kv_len and those the mask hides (mask.visible(i, j));
// updates each row's running max m and sum l (the quad's 4 lanes share a row), rescales the
// output o by the max's change, and leaves P = 2^(s - m) in s for the P V product.
// row0: the query position of the warp's first row; k0: the tile's first key. Pos is the
// position type of the mask (32-bit in the pre-fill, 64-bit in the calibration).
template <int kMt, int kBN, int D, class Pos, class Mask>
__device__ __forceinline__ void online_softmax_tile(float (&s)[kMt][kBN / 8][4], float (&m)[kMt][2],
                                                    float (&l)[kMt][2], float (&o)[kMt][D / 8][4],
                                                    const Mask& mask, bool full, Pos row0, Pos k0, Pos kv_len,
                                                    float sl2, int lane) {
#pragma unroll
  for (int mt = 0; mt < kMt; ++mt) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const Pos i = row0 + mt * 16 + lane / 4 + hr * 8;
      float mx = m[mt][hr];
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float x = s[mt][nb][2 * hr + e] * sl2;
          if (!full) {
            const Pos j = k0 + nb * 8 + (lane % 4) * 2 + e;
            if (j >= kv_len || !mask.visible(i, j)) x = -INFINITY;
          }
          s[mt][nb][2 * hr + e] = x;
          mx = fmaxf(mx, x);
        }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mref = mx == -INFINITY ? 0.0f : mx;  // a row that sees nothing yet stays at 0
      const float alpha = exp2f(m[mt][hr] - mref);
      m[mt][hr] = mx;
      float rs = 0.0f;
#pragma unroll
      for (int nb = 0; nb < kBN / 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pe = exp2f(s[mt][nb][2 * hr + e] - mref);
          s[mt][nb][2 * hr + e] = pe;
          rs += pe;
        }
      l[mt][hr] = l[mt][hr] * alpha + rs;
#pragma unroll
      for (int db = 0; db < D / 8; ++db) o[mt][db][2 * hr] *= alpha, o[mt][db][2 * hr + 1] *= alpha;
    }
  }
}

}  // namespace duo::cuda
