// The per-voxel math of every preprocessing kernel, written once for the C++ CPU kernels
// (preprocess_ext/src/*.cpp) and the CUDA kernels (preprocess_ext/cuda/*.cu, compiled by nvcc or
// NVRTC). The CPU tests therefore check the math that the GPU runs; the CUDA files add only the
// indexing and the launch. No pybind11, no standard-library containers: NVRTC compiles this file
// without a host standard library. Axes (z, y, x), x contiguous; indices are 64-bit.
#pragma once

#if defined(__CUDACC__)
#define DMFN_HD __host__ __device__ __forceinline__
#else
#define DMFN_HD inline
#endif

#if !defined(__CUDACC_RTC__)
#include <cmath>
#endif

namespace dmfn {
namespace math {

using idx_t = long long;

// Neumann boundary with the ghost voxel equal to the boundary voxel (numpy.pad mode="edge").
DMFN_HD idx_t clamp_index(idx_t i, idx_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

// ---- PDE (You & Kaveh 2000), see preprocess_ext/src/pde.cpp for the scheme ---------------------

// Laplacian weights (h_min / h_a)^2 per axis; z is unused by the 2D (per-slice) stencil.
struct StencilWeights {
  float z, y, x;
};

// Weighted sum of neighbour-minus-centre differences: exactly 0 on a constant image and on every
// ghost (clamped) neighbour. kZ = false compiles the z term out (the 5-point per-slice stencil).
template <bool kZ>
DMFN_HD float laplacian(float c, float xm, float xp, float ym, float yp, float zm, float zp,
                        const StencilWeights& w) {
  float sum = w.x * ((xm - c) + (xp - c)) + w.y * ((ym - c) + (yp - c));
  if (kZ) sum += w.z * ((zm - c) + (zp - c));
  return sum;
}

// g = c(|L|) L with the diffusivity c(s) = 1 / (1 + (s/k)^2), written as L k^2 / (k^2 + L^2).
DMFN_HD float pde_flux(float lap_u, float k2) { return lap_u * k2 / (k2 + lap_u * lap_u); }

// One explicit Euler step u - dt Lap g (no data term).
DMFN_HD float pde_step(float u, float lap_g, float dt) { return u - dt * lap_g; }

// With the data term dt lambda (u0 - u): one small increment, then one rounding at u's scale.
DMFN_HD float pde_step_fidelity(float u, float u0, float lap_g, float dt, float dt_lambda) {
  return u + (dt_lambda * (u0 - u) - dt * lap_g);
}

// ---- Interpolation weights (resampling) ---------------------------------------------------------

// Keys (1981) cubic convolution kernel with a = -0.5; reproduces quadratics, weights sum to 1.
DMFN_HD double keys_weight(double t) {
  const double a = -0.5;
  t = fabs(t);
  if (t <= 1.0) return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
  if (t < 2.0) return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a;
  return 0.0;
}

// The kTaps taps (2: linear, 4: Keys cubic) of output sample j of an axis: input index position
// p = j * ratio (same origin), tap indices clamped to [0, n_in - 1], weights in float32.
template <int kTaps>
DMFN_HD void interpolation_taps(idx_t j, double ratio, idx_t n_in, idx_t* idx, float* w) {
  const double p = static_cast<double>(j) * ratio;
  const double base = floor(p);
  const double f = p - base;
  const idx_t i0 = static_cast<idx_t>(base);
  if (kTaps == 2) {
    idx[0] = clamp_index(i0, n_in);
    idx[1] = clamp_index(i0 + 1, n_in);
    w[0] = static_cast<float>(1.0 - f);
    w[1] = static_cast<float>(f);
  } else {
    for (int k = 0; k < kTaps; ++k) {
      idx[k] = clamp_index(i0 - 1 + k, n_in);
      w[k] = static_cast<float>(keys_weight(f - (k - 1)));
    }
  }
}

// ---- Windowing ----------------------------------------------------------------------------------

// HU in [lo, lo + width] -> [0, 1] linearly, clipped; lo = level - width / 2, inv_width = 1/width.
DMFN_HD float window_value(float hu, float lo, float inv_width) {
  const float v = (hu - lo) * inv_width;
  return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
}

// ---- View sampling ------------------------------------------------------------------------------

// Position (voxel index units) of sample (r, c) of a plane: origin + r row_step + c col_step,
// each a (z, y, x) triple.
DMFN_HD void plane_point(const double* origin, const double* row_step, const double* col_step,
                         idx_t r, idx_t c, double* q) {
  for (int a = 0; a < 3; ++a) {
    q[a] = origin[a] + static_cast<double>(r) * row_step[a] + static_cast<double>(c) * col_step[a];
  }
}

// Trilinear value of a (z, y, x) float32 volume at q (voxel index units). Inside the voxel extent
// [-0.5, n - 0.5] on every axis the position is clamped to [0, n - 1] (edge value in the outer
// half voxel); outside it (or NaN) the result is `fill`.
DMFN_HD float sample_trilinear(const float* v, idx_t nz, idx_t ny, idx_t nx, const double* q,
                               float fill) {
  const idx_t n[3] = {nz, ny, nx};
  idx_t i0[3], i1[3];
  float f[3];
  for (int a = 0; a < 3; ++a) {
    const double lim = static_cast<double>(n[a]) - 0.5;
    if (!(q[a] >= -0.5 && q[a] <= lim)) return fill;
    const double p = fmin(fmax(q[a], 0.0), static_cast<double>(n[a] - 1));
    const double base = floor(p);
    i0[a] = static_cast<idx_t>(base);
    i1[a] = clamp_index(i0[a] + 1, n[a]);
    f[a] = static_cast<float>(p - base);
  }
  float acc = 0.0f;
  for (int dz = 0; dz < 2; ++dz) {
    const float wz = dz ? f[0] : 1.0f - f[0];
    const idx_t z = dz ? i1[0] : i0[0];
    for (int dy = 0; dy < 2; ++dy) {
      const float wy = dy ? f[1] : 1.0f - f[1];
      const idx_t y = dy ? i1[1] : i0[1];
      const float* row = v + (z * ny + y) * nx;
      acc += wz * wy * ((1.0f - f[2]) * row[i0[2]] + f[2] * row[i1[2]]);
    }
  }
  return acc;
}

}  // namespace math
}  // namespace dmfn
