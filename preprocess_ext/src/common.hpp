// Shared helpers for the dmfn preprocessing kernels: one index helper, one boundary helper,
// int64 sizes everywhere, argument checks that throw std::invalid_argument (-> Python ValueError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

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
  std::size_t bytes() const { return bytes_; }
  // Whether a fork()ed child gets these pages (copy-on-write, the default) or a zero-filled
  // mapping instead (MADV_WIPEONFORK, Linux >= 4.14; advice only where it is missing).
  void set_wiped_on_fork(bool wiped) const {
#if defined(MADV_WIPEONFORK) && defined(MADV_KEEPONFORK)
    if (data_ != nullptr) madvise(data_, bytes_, wiped ? MADV_WIPEONFORK : MADV_KEEPONFORK);
#else
    (void)wiped;
#endif
  }

 private:
  void release() {
    // munmap fails only past vm.max_map_count (splitting a mapping); nothing to do but leak.
    if (data_ != nullptr) (void)munmap(data_, bytes_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Mapped float buffers kept for reuse: the scratch volumes of the kernels and the memory of the
// large arrays they return. Why: first touch of a fresh mapping costs a page fault and the OS's
// zeroing of every page, measured ~16 ms per 126 MB here: 8 % of a 20-iteration PDE call and a
// third of a 1-mm resampling of a 120x512x512 study. Repeated calls (a server's requests, a batch
// of studies, a benchmark's repeats) then write into pages that are already mapped.
// - At most kSlots buffers and kMaxBytes are kept (the largest win); release() unmaps them.
// - Buffers under kMinBytes are not pooled (numpy's allocator serves small arrays better).
// - A cached buffer serves only requests of at least half its size.
// - Cached buffers are MADV_WIPEONFORK: a fork()ed child gets zero pages there instead of sharing
//   them copy-on-write (which would make it privately own them once the parent reuses them).
class BufferPool {
 public:
  static constexpr std::size_t kSlots = 3;
  static constexpr std::size_t kMaxBytes = std::size_t{1} << 30;
  static constexpr std::size_t kMinBytes = std::size_t{1} << 20;

  static ScratchBuffer<float> take(std::size_t count) {
    {
      std::lock_guard<std::mutex> lock(state().mutex);
      auto& cached = state().cached;
      std::size_t best = cached.size();
      for (std::size_t i = 0; i < cached.size(); ++i) {
        const std::size_t n = cached[i].size();
        if (n >= count && n / 2 <= count && (best == cached.size() || n < cached[best].size())) {
          best = i;
        }
      }
      if (best < cached.size()) {
        ScratchBuffer<float> b = std::move(cached[best]);
        cached.erase(cached.begin() + static_cast<std::ptrdiff_t>(best));
        b.set_wiped_on_fork(false);  // in use again: a child must see its contents
        return b;
      }
    }
    return ScratchBuffer<float>(count);
  }

  // Keeps `b` for a later take, dropping the smallest buffers beyond kSlots or kMaxBytes.
  // Never throws (it runs in destructors): when the cache cannot grow, `b` is unmapped.
  static void give(ScratchBuffer<float>&& b) noexcept {
    if (b.data() == nullptr || b.bytes() < kMinBytes || b.bytes() > kMaxBytes) return;
    std::vector<ScratchBuffer<float>> dropped;  // unmapped after the lock is released
    try {
      b.set_wiped_on_fork(true);
      std::lock_guard<std::mutex> lock(state().mutex);
      auto& cached = state().cached;
      cached.push_back(std::move(b));
      auto bytes = [&] {
        std::size_t total = 0;
        for (const auto& c : cached) total += c.bytes();
        return total;
      };
      while (cached.size() > kSlots || bytes() > kMaxBytes) {
        auto smallest = std::min_element(cached.begin(), cached.end(),
                                         [](const auto& x, const auto& y) { return x.size() < y.size(); });
        dropped.push_back(std::move(*smallest));
        cached.erase(smallest);
      }
    } catch (...) {
      // bad_alloc growing a vector: the buffer (wherever it is now) is simply unmapped.
    }
  }

  // Unmaps every cached buffer (buffers in use are unaffected and come back later).
  static void release() {
    std::vector<ScratchBuffer<float>> dropped;
    std::lock_guard<std::mutex> lock(state().mutex);
    dropped.swap(state().cached);
  }

  // Creates the pool and its fork handlers. Called at module import (under Python's import lock,
  // which os.fork also takes), so a fork can never catch the static's initialisation half done.
  static void init() { (void)state(); }

 private:
  struct State {
    std::mutex mutex;
    std::vector<ScratchBuffer<float>> cached;
  };
  // The mutex is held across fork() (pthread_atfork), so a child process (a DataLoader worker, a
  // multiprocessing pool) never inherits it locked by a thread that does not exist there.
  static State& state() {
    static State* s = [] {
      auto* created = new State;  // kept to exit, so the fork handlers never see it destroyed
      pthread_atfork([] { state().mutex.lock(); }, [] { state().mutex.unlock(); },
                     [] { state().mutex.unlock(); });
      return created;
    }();
    return *s;
  }
};

// A scratch volume leased from the BufferPool for the lifetime of this object.
class ScratchLease {
 public:
  explicit ScratchLease(std::size_t count) {
    if (count > 0) buffer_ = BufferPool::take(count);
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;
  ~ScratchLease() { BufferPool::give(std::move(buffer_)); }
  float* data() const { return buffer_.data(); }

 private:
  ScratchBuffer<float> buffer_;
};

// The owner of a returned array's pooled memory: the array's base object. It exposes the memory
// through the buffer protocol (registered in module.cpp), so numpy treats the array like one over
// any writable buffer (its WRITEABLE flag can be cleared and set again), and gives the memory back
// to the pool when the last array viewing it is freed.
struct PooledMemory {
  explicit PooledMemory(ScratchBuffer<float>&& b) : buffer(std::move(b)) {}
  PooledMemory(const PooledMemory&) = delete;
  PooledMemory& operator=(const PooledMemory&) = delete;
  ~PooledMemory() { BufferPool::give(std::move(buffer)); }
  ScratchBuffer<float> buffer;
};

// A new, uninitialised float32 array of `shape` (the kernel writes every element): from the
// BufferPool when it is at least BufferPool::kMinBytes, from numpy otherwise. Call with the GIL.
inline py::array_t<float> pooled_array(const std::vector<py::ssize_t>& shape) {
  std::size_t count = 1;
  for (py::ssize_t n : shape) count *= static_cast<std::size_t>(n);
  if (count * sizeof(float) < BufferPool::kMinBytes) return py::array_t<float>(shape);
  auto memory = std::make_unique<PooledMemory>(BufferPool::take(count));
  float* data = memory->buffer.data();
  py::object owner = py::cast(memory.release(), py::return_value_policy::take_ownership);
  return py::array_t<float>(shape, data, owner);
}

}  // namespace dmfn
