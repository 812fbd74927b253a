#include "backend/cuda/device_memory.h"

#include <atomic>

#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace duo::cuda {

namespace {
std::atomic<size_t> g_current{0}, g_peak{0};
}  // namespace

size_t allocated_bytes() { return g_current.load(); }
size_t peak_bytes() { return g_peak.load(); }
void reset_peak_bytes() { g_peak.store(g_current.load()); }

void note_device_alloc(size_t bytes) {
  const size_t now = g_current.fetch_add(bytes) + bytes;
  size_t p = g_peak.load();
  while (now > p && !g_peak.compare_exchange_weak(p, now)) {
  }
}
void note_device_free(size_t bytes) { g_current.fetch_sub(bytes); }

void device_memory_info(size_t& free_bytes, size_t& total_bytes) {
  DUO_CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
}

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // clear the error so later calls do not report it
    ptr_ = nullptr;
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    fail("GPU out of memory allocating {}: {:.2f} GiB needed, {:.2f} GiB free of {:.2f} GiB", what,
         bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
  }
  DUO_CUDA_TRY(e);
  note_device_alloc(bytes);
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceBuffer::reset() {
  if (ptr_) {
    cudaFree(ptr_);  // no throw from destructors; a failing free means the context is gone
    note_device_free(bytes_);
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

void* ScratchBuffer::ensure(size_t bytes) {
  if (bytes > buf_.bytes()) {
    buf_.reset();  // free first: the old contents are not needed and memory may be tight
    buf_ = DeviceBuffer(bytes, what_);
  }
  return buf_.get();
}

}  // namespace duo::cuda
