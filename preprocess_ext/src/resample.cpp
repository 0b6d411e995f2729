// Separable resampling of a (z, y, x) volume onto a regular grid with the same origin.
//
// Output sample j of an axis sits at input index position p_j = j * ratio (ratio = s_out / s_in),
// the convention of docs/architecture.md (same origin = first voxel centre). Each axis is a 1D pass with a
// precomputed table of tap indices and weights; tap indices are clamped to [0, n - 1], so samples
// past the last voxel centre take the edge value. Kernels: linear (2 taps, the separable form of
// trilinear interpolation) and Keys cubic convolution with a = -0.5 (4 taps, Catmull-Rom).
// Passes run shrinking axes first. When z comes last (thick slices), the in-plane passes and the
// z pass are fused through a per-thread ring of in-plane-resampled planes, so the input is read
// once and the output written once; otherwise two leading in-plane passes are fused slice by
// slice. Every pass is OpenMP-parallel with its inner loop over a contiguous run of voxels; the
// GIL is released.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include <pybind11/stl.h>

#ifdef DMFN_HAVE_OPENMP
#include <omp.h>
#endif

#include "common.hpp"

namespace dmfn {
namespace {

enum class Kernel : int { linear = 1, cubic = 3 };

// Threads a parallel region may get, and this thread's index in its team (1 and 0 without OpenMP).
index_t max_threads() {
#ifdef DMFN_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

index_t thread_index() {
#ifdef DMFN_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Index/weight table of one axis: output j reads taps idx[j*T + k] with weights w[j*T + k].
struct AxisTable {
  index_t n_in = 1, n_out = 1;
  int taps = 2;
  std::vector<math::idx_t> idx;
  std::vector<float> w;
  // The same taps tap-major ([k * n_out + j]) with 32-bit indices, for the contiguous-axis
  // gather: consecutive outputs then load consecutive table entries and the loop vectorises
  // into hardware gathers.
  std::vector<std::int32_t> idx_by_tap;
  std::vector<float> w_by_tap;
};

AxisTable make_table(index_t n_in, index_t n_out, double ratio, Kernel kernel) {
  AxisTable t;
  t.n_in = n_in;
  t.n_out = n_out;
  t.taps = kernel == Kernel::linear ? 2 : 4;
  t.idx.resize(static_cast<size_t>(n_out * t.taps));
  t.w.resize(static_cast<size_t>(n_out * t.taps));
  for (index_t j = 0; j < n_out; ++j) {
    math::idx_t* ix = &t.idx[static_cast<size_t>(j * t.taps)];
    float* wx = &t.w[static_cast<size_t>(j * t.taps)];
    if (kernel == Kernel::linear) {
      math::interpolation_taps<2>(j, ratio, n_in, ix, wx);
    } else {
      math::interpolation_taps<4>(j, ratio, n_in, ix, wx);
    }
  }
  t.idx_by_tap.resize(t.idx.size());
  t.w_by_tap.resize(t.w.size());
  for (index_t j = 0; j < n_out; ++j) {
    for (int k = 0; k < t.taps; ++k) {
      const auto from = static_cast<size_t>(j * t.taps + k);
      const auto to = static_cast<size_t>(k * n_out + j);
      t.idx_by_tap[to] = static_cast<std::int32_t>(t.idx[from]);
      t.w_by_tap[to] = t.w[from];
    }
  }
  return t;
}

// One pass along the middle axis of an (outer, n, inner) array into (outer, m, inner).
// `parallel` = false when called from inside a parallel region (one thread per call).
template <int T>
void pass_axis(const float* in, float* out, index_t outer, index_t inner, const AxisTable& t,
               [[maybe_unused]] bool parallel) {
  const index_t n = t.n_in, m = t.n_out;
  const math::idx_t* idx = t.idx.data();
  const float* w = t.w.data();
  if (inner == 1) {
    // Contiguous axis: gather along each row (tap-major tables, vectorised gathers; the same
    // accumulation order as the other passes).
    const std::int32_t* ix = t.idx_by_tap.data();
    const float* wt = t.w_by_tap.data();
#pragma omp parallel for schedule(static) if (parallel)
    for (index_t o = 0; o < outer; ++o) {
      const float* row = in + o * n;
      float* dst = out + o * m;
#pragma omp simd
      for (index_t j = 0; j < m; ++j) {
        float acc = wt[j] * row[ix[j]];
        for (int k = 1; k < T; ++k) acc += wt[k * m + j] * row[ix[k * m + j]];
        dst[j] = acc;
      }
    }
    return;
  }
  // Outer axis: each output line is a weighted sum of T contiguous input lines (vectorised).
  const index_t lines = outer * m;
#pragma omp parallel for schedule(static) if (parallel)
  for (index_t line = 0; line < lines; ++line) {
    const index_t o = line / m, j = line % m;
    std::array<const float*, T> src;
    std::array<float, T> wk;
    for (int k = 0; k < T; ++k) {
      src[k] = in + (o * n + idx[j * T + k]) * inner;
      wk[k] = w[j * T + k];
    }
    float* dst = out + (o * m + j) * inner;
#pragma omp simd
    for (index_t i = 0; i < inner; ++i) {
      float acc = wk[0] * src[0][i];
      for (int k = 1; k < T; ++k) acc += wk[k] * src[k][i];
      dst[i] = acc;
    }
  }
}

void run_pass(const float* in, float* out, index_t outer, index_t inner, const AxisTable& t,
              bool parallel) {
  if (t.taps == 2) {
    pass_axis<2>(in, out, outer, inner, t, parallel);
  } else {
    pass_axis<4>(in, out, outer, inner, t, parallel);
  }
}

// The axes resampled, in pass order. An axis with n_out == n_in and ratio == 1 is the identity and
// is skipped. Shrinking axes first (fewest voxels carried into later passes); ties in axis order,
// so the contiguous axis (a gather, the costliest pass per voxel) runs last of the tied ones, on
// the fewest rows (measured: the in-plane pair 48 -> 34 ms on 120x512x512 at 0.7 mm). The CUDA
// launcher (dmfn.preprocess.gpu) asks for this order through _core.resample_axes.
std::vector<int> pass_order(const std::array<index_t, 3>& n_in,
                            const std::array<index_t, 3>& out_shape,
                            const std::array<double, 3>& ratio) {
  std::vector<int> axes;
  for (int a = 0; a < 3; ++a) {
    if (!(out_shape[a] == n_in[a] && ratio[a] == 1.0)) axes.push_back(a);
  }
  std::stable_sort(axes.begin(), axes.end(), [&](int a, int b) {
    const double ga = static_cast<double>(out_shape[a]) / static_cast<double>(n_in[a]);
    const double gb = static_cast<double>(out_shape[b]) / static_cast<double>(n_in[b]);
    return ga < gb || (ga == gb && a < b);
  });
  return axes;
}

// The output sizes and ratios resample and resample_axes accept.
void check_geometry(const std::array<index_t, 3>& out_shape, const std::array<double, 3>& ratio) {
  for (int a = 0; a < 3; ++a) {
    if (out_shape[a] < 1) invalid("out_shape", "every output size must be >= 1");
    if (!(std::isfinite(ratio[a]) && ratio[a] > 0.0)) {
      invalid("ratio", "every ratio s_out / s_in must be finite and > 0");
    }
  }
}

// pass_order for Python (the CUDA launcher), with resample's own checks of the sizes and ratios.
std::vector<int> resample_axes(const std::array<index_t, 3>& in_shape,
                               const std::array<index_t, 3>& out_shape,
                               const std::array<double, 3>& ratio) {
  for (int a = 0; a < 3; ++a) {
    if (in_shape[a] < 1) invalid("in_shape", "every input size must be >= 1");
  }
  check_geometry(out_shape, ratio);
  return pass_order(in_shape, out_shape, ratio);
}

// Resample `volume` (2D or 3D) to `out_shape` (z, y, x; nz = 1 for 2D) with per-axis ratios
// s_out / s_in, one pass per axis of pass_order.
py::array_t<float> resample(const FloatArray& volume, const std::array<index_t, 3>& out_shape,
                    const std::array<double, 3>& ratio, int order) {
  const Shape3 in_shape = shape_of(volume, "volume");
  require_nonempty(in_shape, "volume");
  if (order != static_cast<int>(Kernel::linear) && order != static_cast<int>(Kernel::cubic)) {
    invalid("order", "must be 1 (linear) or 3 (cubic), got " + std::to_string(order));
  }
  check_geometry(out_shape, ratio);
  if (volume.ndim() == 2 && out_shape[0] != 1) {
    invalid("out_shape", "a 2D volume needs out_shape[0] == 1");
  }
  const Kernel kernel = static_cast<Kernel>(order);
  const std::array<index_t, 3> n_in{in_shape.nz, in_shape.ny, in_shape.nx};

  const std::vector<int> axes = pass_order(n_in, out_shape, ratio);
  std::vector<AxisTable> tables;
  for (int a : axes) tables.push_back(make_table(n_in[a], out_shape[a], ratio[a], kernel));

  std::vector<py::ssize_t> dims;
  if (volume.ndim() == 3) dims.push_back(out_shape[0]);
  dims.push_back(out_shape[1]);
  dims.push_back(out_shape[2]);
  py::array_t<float> result = pooled_array(dims);
  const float* src = volume.data();
  float* dst_final = result.mutable_data();
  {
    py::gil_scoped_release release;
    if (axes.empty()) std::copy(src, src + in_shape.voxels(), dst_final);
    // Pass p on a block of shape `cur` (z, y, x); returns the block's shape after the pass.
    const auto pass = [&](const float* in, float* out, std::array<index_t, 3> cur, size_t p,
                          bool parallel) {
      const int a = axes[p];
      const index_t outer = std::accumulate(cur.begin(), cur.begin() + a, index_t{1},
                                            std::multiplies<index_t>());
      const index_t inner = std::accumulate(cur.begin() + a + 1, cur.end(), index_t{1},
                                            std::multiplies<index_t>());
      run_pass(in, out, outer, inner, tables[p], parallel);
      cur[a] = out_shape[a];
      return cur;
    };
    // Intermediate volumes, left uninitialised (every voxel is written by its pass).
    std::vector<std::unique_ptr<float[]>> buffers;
    const auto target = [&](size_t p, const std::array<index_t, 3>& shape) -> float* {
      if (p + 1 == axes.size()) return dst_final;
      buffers.emplace_back(new float[static_cast<size_t>(shape[0] * shape[1] * shape[2])]);
      return buffers.back().get();
    };
    const float* in = src;
    std::array<index_t, 3> cur = n_in;
    size_t p = 0;
    if (axes.size() >= 2 && axes.back() == 0 && n_in[0] > 1) {
      // z is the last pass (thick slices): the in-plane passes of each input plane and the z
      // pass are fused. Every output plane is a weighted sum of a few in-plane-resampled input
      // planes kept in a per-thread ring (slot = input index mod taps; the indices only grow),
      // so no intermediate volume is written and read back: the input is read once and the
      // output written once. The same passes in the same order as the unfused path, with the
      // same accumulation order, so the values are the same.
      const AxisTable& tz = tables.back();
      const int taps = tz.taps;
      const std::array<index_t, 3> slice_in{1, n_in[1], n_in[2]};
      std::array<index_t, 3> slice_mid = slice_in;
      slice_mid[axes[0]] = out_shape[axes[0]];
      const bool two_inplane = axes.size() == 3;
      const index_t plane_in = n_in[1] * n_in[2];
      const index_t plane_out = out_shape[1] * out_shape[2];
      const index_t plane_mid = two_inplane ? slice_mid[1] * slice_mid[2] : 0;
      const index_t per_thread = taps * plane_out + plane_mid;
      const index_t team = std::max<index_t>(1, std::min<index_t>(max_threads(), out_shape[0]));
      // Allocated here, outside the parallel region, so that a failure reaches Python as
      // MemoryError instead of std::terminate.
      std::vector<float> rings(static_cast<size_t>(team * per_thread));
#pragma omp parallel num_threads(static_cast<int>(team))
      {
        float* ring = rings.data() + thread_index() * per_thread;
        float* mid = ring + taps * plane_out;
        std::array<math::idx_t, 4> held;
        held.fill(-1);
#pragma omp for schedule(static)
        for (index_t k = 0; k < out_shape[0]; ++k) {
          std::array<const float*, 4> planes{};
          std::array<float, 4> wk{};
          for (int q = 0; q < taps; ++q) {
            const math::idx_t i = tz.idx[static_cast<size_t>(k * taps + q)];
            const auto slot = static_cast<size_t>(i % taps);
            float* plane = ring + static_cast<index_t>(slot) * plane_out;
            if (held[slot] != i) {
              const float* in_plane = src + i * plane_in;
              if (two_inplane) {
                pass(in_plane, mid, slice_in, 0, false);
                pass(mid, plane, slice_mid, 1, false);
              } else {
                pass(in_plane, plane, slice_in, 0, false);
              }
              held[slot] = i;
            }
            planes[static_cast<size_t>(q)] = plane;
            wk[static_cast<size_t>(q)] = tz.w[static_cast<size_t>(k * taps + q)];
          }
          float* dst = dst_final + k * plane_out;
#pragma omp simd
          for (index_t v = 0; v < plane_out; ++v) {
            float acc = wk[0] * planes[0][v];
            for (int q = 1; q < taps; ++q) acc += wk[static_cast<size_t>(q)] * planes[static_cast<size_t>(q)][v];
            dst[v] = acc;
          }
        }
      }
      p = axes.size();
    } else if (axes.size() >= 2 && axes[0] != 0 && axes[1] != 0 && n_in[0] > 1) {
      // Both in-plane passes first: run them slice by slice, parallel over z, so that the
      // slice between them stays in cache instead of becoming a whole intermediate volume.
      const std::array<index_t, 3> slice_in{1, n_in[1], n_in[2]};
      std::array<index_t, 3> slice_mid = slice_in;
      slice_mid[axes[0]] = out_shape[axes[0]];
      const std::array<index_t, 3> next{n_in[0], out_shape[1], out_shape[2]};
      float* out = target(1, next);
      const index_t plane_in = n_in[1] * n_in[2], plane_out = next[1] * next[2];
      // One mid slice per thread, allocated here, outside the parallel region, so that an
      // allocation failure reaches Python as MemoryError instead of std::terminate.
      const index_t team = std::max<index_t>(1, std::min<index_t>(max_threads(), n_in[0]));
      const index_t plane_mid = slice_mid[1] * slice_mid[2];
      std::vector<float> mids(static_cast<size_t>(team * plane_mid));
#pragma omp parallel num_threads(static_cast<int>(team))
      {
        float* mid = mids.data() + thread_index() * plane_mid;
#pragma omp for schedule(static)
        for (index_t z = 0; z < n_in[0]; ++z) {
          pass(src + z * plane_in, mid, slice_in, 0, false);
          pass(mid, out + z * plane_out, slice_mid, 1, false);
        }
      }
      in = out;
      cur = next;
      p = 2;
    }
    for (; p < axes.size(); ++p) {
      std::array<index_t, 3> next = cur;
      next[axes[p]] = out_shape[axes[p]];
      float* out = target(p, next);
      cur = pass(in, out, cur, p, true);
      in = out;
    }
  }
  return result;
}

}  // namespace

void register_resample(py::module_& m) {
  m.def("resample", &resample, py::arg("volume"), py::arg("out_shape"), py::arg("ratio"),
        py::arg("order"),
        "Resample a float32 (z, y, x) or (y, x) volume to out_shape (z, y, x; z = 1 for 2D).\n"
        "Output j of an axis samples input index position j * ratio (ratio = s_out / s_in,\n"
        "same origin); taps are clamped to the edge. order 1 = linear, 3 = Keys cubic a=-0.5.");
  m.def("resample_axes", &resample_axes, py::arg("in_shape"), py::arg("out_shape"), py::arg("ratio"),
        "The axes (0 = z, 1 = y, 2 = x) resample runs a pass along, in its order.");
}

}  // namespace dmfn
