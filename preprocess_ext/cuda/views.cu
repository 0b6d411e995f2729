// The orthogonal views on the GPU: sample (r, c) of plane p is the trilinear value of the
// (z, y, x) volume at origin[p] + r row_step[p] + c col_step[p] (kernel_math.hpp's plane_point
// and sample_trilinear, shared with preprocess_ext/src/geometry.cpp). One thread per sample;
// origin, row_step and col_step are (planes, 3) float64 arrays on the device.
#include "kernel_math.hpp"

using dmfn::math::idx_t;

extern "C" __global__ void sample_planes(const float* __restrict__ volume, idx_t nz, idx_t ny,
                                         idx_t nx, const double* __restrict__ origin,
                                         const double* __restrict__ row_step,
                                         const double* __restrict__ col_step, idx_t planes,
                                         idx_t size, float fill, float* __restrict__ out) {
  const idx_t total = planes * size * size;
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<idx_t>(gridDim.x) * blockDim.x) {
    const idx_t p = i / (size * size), r = (i / size) % size, c = i % size;
    double q[3];
    dmfn::math::plane_point(origin + 3 * p, row_step + 3 * p, col_step + 3 * p, r, c, q);
    out[i] = dmfn::math::sample_trilinear(volume, nz, ny, nx, q, fill);
  }
}
