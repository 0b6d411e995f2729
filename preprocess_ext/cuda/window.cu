// Windowing on the GPU with kernel_math.hpp's window_value (shared with
// preprocess_ext/src/window.cpp): lo = level - width / 2, inv_width = 1 / width.
#include "kernel_math.hpp"

using dmfn::math::idx_t;

extern "C" __global__ void window_hu(const float* __restrict__ in, float* __restrict__ out,
                                     idx_t n, float lo, float inv_width) {
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<idx_t>(gridDim.x) * blockDim.x) {
    out[i] = dmfn::math::window_value(in[i], lo, inv_width);
  }
}
