// Sampling of planar grids through a (z, y, x) volume (the orthogonal views of a lesion).
//
// One routine serves every plane: plane p is the S x S grid
//   q(r, c) = origin[p] + r * row_step[p] + c * col_step[p]      (voxel index units, (z, y, x))
// sampled with trilinear interpolation. A sample inside the voxel extent [-0.5, n - 0.5] on every
// axis clamps its position to [0, n - 1] (edge value within the outer half voxel); a sample outside
// that extent gets `fill`. When a plane's fixed coordinate is an integer (the views round it to a
// slice), the trilinear weights along that axis are (1, 0) and the sampling is exactly bilinear.
#include <array>
#include <cmath>

#include "common.hpp"

namespace dmfn {
namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// Trilinear value at a position in voxel index units, or `fill` outside the voxel extent.
float sample_trilinear(const float* v, const Shape3& s, const std::array<double, 3>& q,
                       float fill) {
  const std::array<index_t, 3> n{s.nz, s.ny, s.nx};
  std::array<index_t, 3> i0{}, i1{};
  std::array<float, 3> f{};
  for (int a = 0; a < 3; ++a) {
    const double lim = static_cast<double>(n[a]) - 0.5;
    if (!(q[a] >= -0.5 && q[a] <= lim)) return fill;  // also catches NaN
    const double p = std::fmin(std::fmax(q[a], 0.0), static_cast<double>(n[a] - 1));
    const double base = std::floor(p);
    i0[a] = static_cast<index_t>(base);
    i1[a] = clamp_index(i0[a] + 1, n[a]);
    f[a] = static_cast<float>(p - base);
  }
  float acc = 0.0f;
  for (int dz = 0; dz < 2; ++dz) {
    const float wz = dz ? f[0] : 1.0f - f[0];
    const index_t z = dz ? i1[0] : i0[0];
    for (int dy = 0; dy < 2; ++dy) {
      const float wy = dy ? f[1] : 1.0f - f[1];
      const index_t y = dy ? i1[1] : i0[1];
      const float* row = v + s.at(z, y, 0);
      acc += wz * wy * ((1.0f - f[2]) * row[i0[2]] + f[2] * row[i1[2]]);
    }
  }
  return acc;
}

std::array<double, 3> row3(const double* p, index_t plane) {
  return {p[plane * 3], p[plane * 3 + 1], p[plane * 3 + 2]};
}

FloatArray sample_planes(const FloatArray& volume, const DoubleArray& origin,
                         const DoubleArray& row_step, const DoubleArray& col_step, index_t size,
                         float fill) {
  if (volume.ndim() != 3) {
    invalid("volume", "must be 3D (z, y, x), got ndim=" + std::to_string(volume.ndim()));
  }
  const Shape3 s = shape_of(volume, "volume");
  require_nonempty(s, "volume");
  if (size < 1) invalid("size", "must be >= 1, got " + std::to_string(size));
  const auto check = [](const DoubleArray& a, const char* name) {
    if (a.ndim() != 2 || a.shape(1) != 3) invalid(name, "must have shape (planes, 3)");
  };
  check(origin, "origin");
  check(row_step, "row_step");
  check(col_step, "col_step");
  const index_t planes = origin.shape(0);
  if (row_step.shape(0) != planes || col_step.shape(0) != planes) {
    invalid("row_step", "origin, row_step and col_step must have the same number of planes");
  }
  FloatArray result(std::vector<py::ssize_t>{planes, size, size});
  const float* v = volume.data();
  const double* po = origin.data();
  const double* pr = row_step.data();
  const double* pc = col_step.data();
  float* out = result.mutable_data();
  {
    py::gil_scoped_release release;
    const index_t rows = planes * size;
#pragma omp parallel for schedule(static)
    for (index_t pr_idx = 0; pr_idx < rows; ++pr_idx) {
      const index_t p = pr_idx / size, r = pr_idx % size;
      const auto o = row3(po, p), dr = row3(pr, p), dc = row3(pc, p);
      float* dst = out + pr_idx * size;
      for (index_t c = 0; c < size; ++c) {
        std::array<double, 3> q{};
        for (int a = 0; a < 3; ++a) {
          q[a] = o[a] + static_cast<double>(r) * dr[a] + static_cast<double>(c) * dc[a];
        }
        dst[c] = sample_trilinear(v, s, q, fill);
      }
    }
  }
  return result;
}

}  // namespace

void register_geometry(py::module_& m) {
  m.def("sample_planes", &sample_planes, py::arg("volume"), py::arg("origin"),
        py::arg("row_step"), py::arg("col_step"), py::arg("size"), py::arg("fill"),
        "Sample planes[p](r, c) = origin[p] + r * row_step[p] + c * col_step[p] (voxel index\n"
        "units, (z, y, x)) of a float32 (z, y, x) volume, trilinear, size x size per plane;\n"
        "positions outside the voxel extent [-0.5, n - 0.5] get `fill`. Returns (planes, S, S).");
}

}  // namespace dmfn
