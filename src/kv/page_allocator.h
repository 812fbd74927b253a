// Which pages of a shared KV page pool are free: the bookkeeping of the GPU KV memory manager
// (one pool of retrieval-head pages for every sequence on the device), kept apart from the
// device so that it is tested on the CPU.
//
// Pages are numbered 0 .. capacity-1. take() hands out freed pages first (lowest number first,
// so the pool's used range stays compact), then fresh ones above the high-water mark; the pool
// only has to back pages below high_water() with memory. give() returns pages; a page given
// twice, or never taken, is an error (a sequence returning pages that are not its own would
// let two sequences write the same page).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

#include "core/error.h"

namespace duo {

class PageAllocator {
 public:
  explicit PageAllocator(int64_t capacity) : capacity_(capacity) {
    DUO_CHECK(capacity >= 0 && capacity <= INT32_MAX, "page pool capacity {} out of range", capacity);
  }

  int64_t capacity() const { return capacity_; }
  int64_t used() const { return used_; }
  int64_t free() const { return capacity_ - used_; }
  // Pages ever handed out (the pool backs [0, high_water) with memory).
  int64_t high_water() const { return high_; }

  // n pages, appended to out. Throws duo::Error (and takes nothing) when fewer than n are free.
  void take(int64_t n, std::vector<int32_t>& out) {
    DUO_CHECK(n >= 0, "cannot take {} pages", n);
    DUO_CHECK(n <= free(), "KV page pool exhausted: {} pages asked for, {} of {} free", n, free(), capacity_);
    for (int64_t i = 0; i < n; ++i) {
      int32_t p;
      if (!freed_.empty()) {
        p = freed_.top();
        freed_.pop();
      } else {
        p = (int32_t)high_++;
      }
      in_use_[(size_t)p] = true;
      out.push_back(p);
    }
    used_ += n;
  }

  // Returns pages; checks them all first, so a bad list changes nothing.
  void give(const std::vector<int32_t>& pages) {
    for (size_t i = 0; i < pages.size(); ++i) {
      const int32_t p = pages[i];
      const bool ok = p >= 0 && p < high_ && in_use_[(size_t)p];
      if (ok) in_use_[(size_t)p] = false;  // so a page listed twice fails the second time
      if (!ok) {
        for (size_t j = 0; j < i; ++j) in_use_[(size_t)pages[j]] = true;
        fail("page {} returned to the pool but not in use", p);
      }
    }
    for (int32_t p : pages) freed_.push(p);
    used_ -= (int64_t)pages.size();
  }

 private:
  int64_t capacity_;
  int64_t used_ = 0, high_ = 0;
  std::priority_queue<int32_t, std::vector<int32_t>, std::greater<>> freed_;
  // Grows with the high-water mark, not the capacity (capacities are address space, not memory).
  struct Flags {
    std::vector<bool> v;
    std::vector<bool>::reference operator[](size_t i) {
      if (i >= v.size()) v.resize(std::max(i + 1, v.size() * 2), false);
      return v[i];
    }
  } in_use_;
};

}  // namespace duo
