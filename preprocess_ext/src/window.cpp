// Soft-tissue windowing: HU in [level - width/2, level + width/2] -> [0, 1], clipped
// (math::window_value, shared with preprocess_ext/cuda/window.cu). OpenMP, GIL released.
#include "common.hpp"

namespace dmfn {
namespace {

py::array_t<float> window(const FloatArray& volume, double level, double width) {
  if (!std::isfinite(level)) invalid("level", "must be finite HU");
  if (!(std::isfinite(width) && width > 0)) invalid("width", "must be finite and > 0 HU");
  py::array_t<float> result =
      pooled_array(std::vector<py::ssize_t>(volume.shape(), volume.shape() + volume.ndim()));
  const float lo = static_cast<float>(level - width / 2.0);
  const float inv_width = static_cast<float>(1.0 / width);
  const float* in = volume.data();
  float* out = result.mutable_data();
  const index_t n = volume.size();
  {
    py::gil_scoped_release release;
#pragma omp parallel for simd schedule(static) if (n > (1 << 18))
    for (index_t i = 0; i < n; ++i) out[i] = math::window_value(in[i], lo, inv_width);
  }
  return result;
}

}  // namespace

void register_window(py::module_& m) {
  m.def("window", &window, py::arg("volume"), py::arg("level"), py::arg("width"),
        "Window a float32 array: HU in [level - width/2, level + width/2] -> [0, 1], clipped.\n"
        "Returns a new float32 array of the same shape.");
}

}  // namespace dmfn
