// Device memory of the CUDA backend. Every allocation the backend makes (weights, activations,
// KV pages, page tables, cuBLAS workspace) is counted here, so benchmarks can report the
// engine's own current and peak GPU memory next to what the driver says is in use.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace duo::cuda {

// Bytes the backend holds on the device now, and the most it held since reset_peak_bytes().
size_t allocated_bytes();
size_t peak_bytes();
void reset_peak_bytes();
// Accounting for memory obtained outside DeviceBuffer (the page pool's mapped memory).
void note_device_alloc(size_t bytes);
void note_device_free(size_t bytes);

// Free and total memory of the current device (cudaMemGetInfo).
void device_memory_info(size_t& free_bytes, size_t& total_bytes);

// An owned cudaMalloc allocation. Running out of memory throws duo::Error naming what was
// being allocated, the bytes asked for and the bytes free.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const std::string& what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  void reset();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A grow-only DeviceBuffer (activation scratch): reallocates, without keeping the contents,
// when more bytes are asked for.
class ScratchBuffer {
 public:
  explicit ScratchBuffer(std::string what) : what_(std::move(what)) {}
  void* ensure(size_t bytes);
  template <class T>
  T* ensure_n(int64_t count) {
    return static_cast<T*>(ensure(sizeof(T) * (size_t)count));
  }
  void release() { buf_.reset(); }
  size_t bytes() const { return buf_.bytes(); }

 private:
  std::string what_;
  DeviceBuffer buf_;
};

}  // namespace duo::cuda
