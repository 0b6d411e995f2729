// One separable resampling pass on the GPU: the (outer, n, inner) array `in` becomes
// (outer, m, inner) along its middle axis, output j sampling input index position j * ratio with
// the taps and weights of kernel_math.hpp's interpolation_taps (the same function that builds
// the CPU kernel's tables in preprocess_ext/src/resample.cpp). One thread per output voxel,
// consecutive threads on consecutive `inner` voxels (coalesced); the host runs the passes in the
// CPU kernel's order (shrinking axes first).
#include "kernel_math.hpp"

using dmfn::math::idx_t;

namespace {

template <int kTaps>
__device__ void pass(const float* __restrict__ in, float* __restrict__ out, idx_t outer, idx_t n,
                     idx_t m, idx_t inner, double ratio) {
  const idx_t total = outer * m * inner;
  for (idx_t i = static_cast<idx_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<idx_t>(gridDim.x) * blockDim.x) {
    const idx_t k = i % inner, j = (i / inner) % m, o = i / (inner * m);
    idx_t idx[kTaps];
    float w[kTaps];
    dmfn::math::interpolation_taps<kTaps>(j, ratio, n, idx, w);
    const float* base = in + o * n * inner + k;
    float acc = 0.0f;
    for (int t = 0; t < kTaps; ++t) acc += w[t] * base[idx[t] * inner];
    out[i] = acc;
  }
}

}  // namespace

extern "C" __global__ void resample_linear(const float* in, float* out, idx_t outer, idx_t n,
                                           idx_t m, idx_t inner, double ratio) {
  pass<2>(in, out, outer, n, m, inner, ratio);
}

extern "C" __global__ void resample_cubic(const float* in, float* out, idx_t outer, idx_t n,
                                          idx_t m, idx_t inner, double ratio) {
  pass<4>(in, out, outer, n, m, inner, ratio);
}
