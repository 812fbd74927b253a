#include "backend/cuda/page_pool.h"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/device_memory.h"
#include "core/error.h"

namespace duo::cuda {

namespace {

// Driver VMM entry points, fetched through the runtime: the engine does not link libcuda, so
// binaries still start on machines without a GPU driver (CI).
struct Vmm {
  PFN_cuDeviceGetAttribute_v2000 get_attribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 granularity = nullptr;
  PFN_cuMemAddressReserve_v10020 reserve = nullptr;
  PFN_cuMemAddressFree_v10020 free_va = nullptr;
  PFN_cuMemCreate_v10020 create = nullptr;
  PFN_cuMemRelease_v10020 release = nullptr;
  PFN_cuMemMap_v10020 map = nullptr;
  PFN_cuMemUnmap_v10020 unmap = nullptr;
  PFN_cuMemSetAccess_v10020 set_access = nullptr;
  bool loaded = false;
};

template <class F>
bool load_entry(const char* name, F& fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult q{};
  if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess || !p) {
    (void)cudaGetLastError();
    return false;
  }
  fn = reinterpret_cast<F>(p);
  return true;
}

const Vmm& vmm() {
  static const Vmm api = [] {
    Vmm v;
    v.loaded = load_entry("cuDeviceGetAttribute", v.get_attribute) &&
               load_entry("cuMemGetAllocationGranularity", v.granularity) &&
               load_entry("cuMemAddressReserve", v.reserve) && load_entry("cuMemAddressFree", v.free_va) &&
               load_entry("cuMemCreate", v.create) && load_entry("cuMemRelease", v.release) &&
               load_entry("cuMemMap", v.map) && load_entry("cuMemUnmap", v.unmap) &&
               load_entry("cuMemSetAccess", v.set_access);
    return v;
  }();
  return api;
}

CUmemAllocationProp device_prop(int device) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  return prop;
}

size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

constexpr size_t kSlabTarget = 32ull << 20;  // map 32 MiB at a time (fewer driver calls)

}  // namespace

size_t PagePool::slab_bytes() {
  static const size_t slab = [] {
    int device = 0, supported = 0;
    size_t gran = 0;
    const Vmm& v = vmm();
    if (cudaGetDevice(&device) != cudaSuccess || !v.loaded ||
        v.get_attribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device) != CUDA_SUCCESS ||
        !supported) {
      (void)cudaGetLastError();
      return size_t(0);
    }
    const CUmemAllocationProp prop = device_prop(device);
    if (v.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || gran == 0) return size_t(0);
    return round_up(kSlabTarget, gran);
  }();
  return slab;
}

PagePool::PagePool(size_t page_bytes, int64_t max_pages, std::string what)
    : what_(std::move(what)), page_bytes_(page_bytes), max_pages_(max_pages) {
  DUO_CHECK(page_bytes > 0 && max_pages >= 0, "{}: bad page pool shape", what_);
  if (max_pages == 0) return;
  DUO_CUDA_TRY(cudaGetDevice(&device_));
  DUO_CUDA_TRY(cudaFree(nullptr));  // the driver calls below need the runtime's context
  const size_t want = page_bytes * (size_t)max_pages;
  const Vmm& v = vmm();
  int supported = 0;
  if (v.loaded && v.get_attribute(&supported, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, device_) ==
                      CUDA_SUCCESS &&
      supported) {
    const CUmemAllocationProp prop = device_prop(device_);
    size_t gran = 0;
    if (v.granularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) == CUDA_SUCCESS && gran > 0) {
      slab_ = round_up(kSlabTarget, gran);
      reserved_ = round_up(want, slab_);
      CUdeviceptr p = 0;
      if (v.reserve(&p, reserved_, 0, 0, 0) == CUDA_SUCCESS) {
        base_ = reinterpret_cast<void*>(p);
        vmm_ = true;
        return;
      }
    }
  }
  // No VMM: one allocation for the whole capacity, zeroed once.
  const cudaError_t e = cudaMalloc(&base_, want);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    base_ = nullptr;
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    fail("GPU out of memory allocating {} for {} pages: {:.2f} GiB needed, {:.2f} GiB free", what_, max_pages,
         want / 1073741824.0, free_b / 1073741824.0);
  }
  DUO_CUDA_TRY(e);
  reserved_ = mapped_ = want;
  note_device_alloc(want);
  DUO_CUDA_TRY(cudaMemset(base_, 0, want));
}

PagePool::~PagePool() { release(); }

void PagePool::release() {
  if (!base_) return;
  (void)cudaDeviceSynchronize();  // kernels may still read the pages
  if (vmm_) {
    const Vmm& v = vmm();
    // One unmap per mapping: a call may not cut through a range mapped by another cuMemMap.
    for (size_t off = 0; off < mapped_; off += slab_) v.unmap(reinterpret_cast<CUdeviceptr>(base_) + off, slab_);
    v.free_va(reinterpret_cast<CUdeviceptr>(base_), reserved_);
  } else {
    cudaFree(base_);
  }
  note_device_free(mapped_);
  base_ = nullptr;
  mapped_ = reserved_ = 0;
}

void PagePool::ensure(int64_t pages, cudaStream_t stream) {
  DUO_CHECK(pages <= max_pages_, "{}: {} pages needed but the sequence was created for at most {} pages", what_,
            pages, max_pages_);
  const size_t need = page_bytes_ * (size_t)pages;
  if (need <= mapped_) return;
  DUO_CHECK(vmm_, "{}: pool of {} bytes cannot grow to {}", what_, mapped_, need);
  const Vmm& v = vmm();
  const CUmemAllocationProp prop = device_prop(device_);
  CUmemAccessDesc access{};
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  const size_t first = mapped_;
  while (mapped_ < need) {
    const size_t size = std::min(slab_, reserved_ - mapped_);
    const CUdeviceptr at = reinterpret_cast<CUdeviceptr>(base_) + mapped_;
    CUmemGenericAllocationHandle h{};
    const CUresult r = v.create(&h, size, &prop, 0);
    if (r != CUDA_SUCCESS) {
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      fail("GPU out of memory growing {} to {} pages: {:.2f} GiB more needed, {:.2f} GiB free (driver error {})",
           what_, pages, (need - mapped_) / 1073741824.0, free_b / 1073741824.0, (int)r);
    }
    // The mapping keeps the memory alive; the handle is not needed after mapping.
    CUresult mr = v.map(at, size, 0, h, 0);
    if (mr == CUDA_SUCCESS) mr = v.set_access(at, size, &access, 1);
    v.release(h);
    if (mr != CUDA_SUCCESS) {
      v.unmap(at, size);
      fail("{}: mapping {} bytes of GPU memory failed (driver error {})", what_, size, (int)mr);
    }
    mapped_ += size;
    note_device_alloc(size);
  }
  DUO_CUDA_TRY(cudaMemsetAsync(static_cast<char*>(base_) + first, 0, mapped_ - first, stream));
}

KvPagePool::KvPagePool(size_t page_bytes, int64_t capacity)
    : k_(page_bytes, capacity, "the K page pool"), v_(page_bytes, capacity, "the V page pool"), alloc_(capacity) {}

void KvPagePool::take(int64_t n, std::vector<int32_t>& out, cudaStream_t stream) {
  DUO_CHECK(n <= alloc_.free(), "KV page pool exhausted: {} pages asked for, {} of {} free", n, alloc_.free(),
            alloc_.capacity());
  // Map what the pages will need first: a failure then takes no page.
  const int64_t reused = std::min<int64_t>(n, alloc_.high_water() - alloc_.used());
  const int64_t high = alloc_.high_water() + (n - reused);
  k_.ensure(high, stream);
  v_.ensure(high, stream);
  alloc_.take(n, out);
}

}  // namespace duo::cuda
