// Shared helpers for the dmfn preprocessing kernels: one index helper, one boundary helper,
// int64 sizes everywhere, argument checks that throw std::invalid_argument (-> Python ValueError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
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

}  // namespace dmfn
