// A run of equally sized KV pages at one fixed device address that grows as a sequence grows.
// The attention kernels address a page as base + index * page_bytes, so the pool must stay
// contiguous while it grows. With the driver's virtual memory management the address range
// for max_pages is reserved up front (address space only) and physical memory is mapped into
// it in slabs as pages are needed: nothing is copied, and at most one slab is mapped beyond
// what the pages need. Where VMM is unavailable the whole range is allocated at once.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/page_allocator.h"

namespace duo::cuda {

class PagePool {
 public:
  PagePool(size_t page_bytes, int64_t max_pages, std::string what);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Makes pages [0, pages) usable; memory mapped for them is zeroed on `stream`. Throws
  // duo::Error with the bytes needed when the device runs out of memory, or when `pages`
  // exceeds max_pages.
  void ensure(int64_t pages, cudaStream_t stream);

  void* base() const { return base_; }
  size_t page_bytes() const { return page_bytes_; }
  int64_t max_pages() const { return max_pages_; }
  size_t mapped_bytes() const { return mapped_; }  // device memory held
  bool growable() const { return vmm_; }
  // The most a growable pool maps beyond the pages it was asked for (one slab; 0 without VMM,
  // where a pool is allocated whole for its max_pages).
  static size_t slab_bytes();

 private:
  void release();

  std::string what_;
  size_t page_bytes_;
  int64_t max_pages_;
  bool vmm_ = false;
  int device_ = 0;
  void* base_ = nullptr;
  size_t reserved_ = 0;  // address space (VMM) or allocation (fallback)
  size_t mapped_ = 0;
  size_t slab_ = 0;
};

// The KV memory manager's pool: K and V pages of one format for the retrieval heads of any
// number of sequences (GpuKvCache), handed out and taken back page by page (PageAllocator), so
// a finished sequence's pages serve the next one and no sequence holds memory beyond its pages.
// The address range of `capacity` pages is reserved up front; memory is mapped as the
// high-water mark of pages in use rises (at most one slab beyond it), and stays mapped.
class KvPagePool {
 public:
  KvPagePool(size_t page_bytes, int64_t capacity);
  // n pages appended to `out`, their memory mapped (new memory zeroed on `stream`). Throws
  // duo::Error, taking nothing, when fewer than n pages are free or the device has no memory.
  void take(int64_t n, std::vector<int32_t>& out, cudaStream_t stream);
  void give(const std::vector<int32_t>& pages) { alloc_.give(pages); }

  void* k_base() const { return k_.base(); }
  void* v_base() const { return v_.base(); }
  size_t page_bytes() const { return k_.page_bytes(); }
  const PageAllocator& pages() const { return alloc_; }
  size_t mapped_bytes() const { return k_.mapped_bytes() + v_.mapped_bytes(); }

 private:
  PagePool k_, v_;
  PageAllocator alloc_;
};

}  // namespace duo::cuda
