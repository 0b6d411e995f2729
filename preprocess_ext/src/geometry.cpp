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
      float* dst = out + pr_idx * size;
      for (index_t c = 0; c < size; ++c) {
        double q[3];
        math::plane_point(po + 3 * p, pr + 3 * p, pc + 3 * p, r, c, q);
        dst[c] = math::sample_trilinear(v, s.nz, s.ny, s.nx, q, fill);
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
