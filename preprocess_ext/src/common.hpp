// Shared helpers for the dmfn preprocessing kernels: one index helper, one boundary helper,
// int64 sizes everywhere, argument checks that throw std::invalid_argument (-> Python ValueError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "kernel_math.hpp"

namespace dmfn {

namespace py = pybind11;

using index_t = std::int64_t;

// A C-contiguous float32 array, converted (copied) by pybind11 when the caller's array is of
// another real dtype or not contiguous; the Python layer documents and pre-validates this.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using MaskArray = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>;

// Volume geometry, axes (z, y, x), x contiguous. A 2D image is a volume with nz == 1.
struct Shape3 {
  index_t nz = 1, ny = 1, nx = 1;
  index_t voxels() const { return nz * ny * nx; }
  index_t plane() const { return ny * nx; }
  index_t at(index_t z, index_t y, index_t x) const { return (z * ny + y) * nx + x; }
};

using math::clamp_index;  // the Neumann boundary of every kernel (kernel_math.hpp)

[[noreturn]] inline void invalid(const std::string& argument, const std::string& rule) {
  throw std::invalid_argument("argument '" + argument + "': " + rule);
}

// Shape of a 2D (y, x) or 3D (z, y, x) array; anything else is refused.
inline Shape3 shape_of(const py::array& a, const std::string& argument) {
  if (a.ndim() == 3) return Shape3{a.shape(0), a.shape(1), a.shape(2)};
  if (a.ndim() == 2) return Shape3{1, a.shape(0), a.shape(1)};
  invalid(argument, "must be a 2D (y, x) or 3D (z, y, x) array, got ndim=" + std::to_string(a.ndim()));
}

inline void require_nonempty(const Shape3& s, const std::string& argument) {
  if (s.voxels() <= 0) invalid(argument, "must not be empty");
}

// Uninitialised scratch memory for whole-volume intermediates, from mmap with transparent huge
// pages requested (MADV_HUGEPAGE; numpy does the same for its large arrays). Why: a fresh
// std::vector<float> of a 120x512x512 volume zero-fills 126 MB and takes ~30,000 4-KiB page
// faults, measured at over a third of a temporally blocked PDE call on the development VM; with
// 2-MiB pages and no zero-fill the first touch costs about one memset. Throws std::bad_alloc
// (-> Python MemoryError); allocate it outside OpenMP regions.
template <class T>
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  explicit ScratchBuffer(std::size_t count) : bytes_(count * sizeof(T)) {
    if (bytes_ == 0) return;
    void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p, bytes_, MADV_HUGEPAGE);  // advice only: 4-KiB pages if THP is off
#endif
    data_ = static_cast<T*>(p);
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ScratchBuffer(ScratchBuffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_) {
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  ScratchBuffer& operator=(ScratchBuffer&& o) noexcept {
    if (this != &o) {
      release();
      data_ = o.data_;
      bytes_ = o.bytes_;
      o.data_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~ScratchBuffer() { release(); }
  T* data() const { return data_; }
  std::size_t size() const { return bytes_ / sizeof(T); }

 private:
  void release() {
    if (data_ != nullptr) munmap(data_, bytes_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// A float scratch volume of at least `count` floats that goes back to a one-slot process-wide
// cache when the lease ends, so repeated calls (a server's requests, a benchmark's repeats, a
// batch of studies) reuse memory that is already mapped instead of taking page faults on a fresh
// mapping every call (measured ~16 ms per 126 MB here, 8 % of a 10-iteration PDE call). The
// cache holds at most the largest volume leased so far; concurrent leases each get their own.
class ScratchLease {
 public:
  explicit ScratchLease(std::size_t count) {
    if (count == 0) return;
    {
      std::lock_guard<std::mutex> lock(mutex());
      if (slot().size() >= count) buffer_ = std::move(slot());
    }
    if (buffer_.data() == nullptr) buffer_ = ScratchBuffer<float>(count);
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  ~ScratchLease() {
    if (buffer_.data() == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex());
    if (buffer_.size() > slot().size()) slot() = std::move(buffer_);
  }
  float* data() const { return buffer_.data(); }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static ScratchBuffer<float>& slot() {
    static ScratchBuffer<float> cached;
    return cached;
  }
  ScratchBuffer<float> buffer_;
};

}  // namespace dmfn
