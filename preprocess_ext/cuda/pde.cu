// One explicit Euler iteration of the fourth-order PDE (You & Kaveh 2000) on the GPU: the scheme
// of preprocess_ext/src/pde.cpp, with its per-voxel math from kernel_math.hpp (laplacian,
// pde_flux, pde_step). This file adds only the indexing and the launch.
//
// One kernel per iteration reads each neighbourhood once: a block owns a TX x TY column of
// (y, x) and a chunk of z planes, and marches down z with two rings of three planes in shared
// memory: u with a halo of 2 (Lap g needs g one voxel out, g needs u one more), and g with a
// halo of 1. Each u plane is loaded once per block, g is computed once per voxel of the tile,
// and the update reads g from shared memory. Ghost values follow the CPU kernel: u outside the
// volume is the edge value, and g outside it is g of the edge voxel (its position clamped).
// src and dst must differ (neighbouring blocks still read the old u); the host ping-pongs.
#include "kernel_math.hpp"

using dmfn::math::clamp_index;
using dmfn::math::idx_t;
using dmfn::math::StencilWeights;

namespace {

// Output tile per block (threads): set by the launcher (dmfn.preprocess.gpu) so that the block
// shape is defined once; these defaults let nvcc compile the file standalone.
#ifndef DMFN_PDE_TX
#define DMFN_PDE_TX 32
#endif
#ifndef DMFN_PDE_TY
#define DMFN_PDE_TY 8
#endif
constexpr int TX = DMFN_PDE_TX, TY = DMFN_PDE_TY;
constexpr int UX = TX + 4, UY = TY + 4;     // u tile with halo 2
constexpr int GX = TX + 2, GY = TY + 2;     // g tile with halo 1

template <bool kZ>
__device__ void iteration(const float* __restrict__ src, float* __restrict__ dst,
                          const float* __restrict__ u0, idx_t nz, idx_t ny, idx_t nx,
                          idx_t z_chunk, float k2, float dt, float dt_lambda, StencilWeights w) {
  __shared__ float su[3][UY][UX];
  __shared__ float sg[3][GY][GX];
  const idx_t x0 = static_cast<idx_t>(blockIdx.x) * TX;
  const idx_t y0 = static_cast<idx_t>(blockIdx.y) * TY;
  const idx_t z0 = static_cast<idx_t>(blockIdx.z) * z_chunk;
  const idx_t z1 = z0 + z_chunk < nz ? z0 + z_chunk : nz;
  const int tid = threadIdx.y * TX + threadIdx.x;
  const idx_t plane = ny * nx;

  // u plane z (in the volume) into ring slot z % 3, positions clamped to the volume.
  auto load_u = [&](idx_t z) {
    const float* p = src + z * plane;
    for (int i = tid; i < UY * UX; i += TX * TY) {
      const int ly = i / UX, lx = i % UX;
      const idx_t y = clamp_index(y0 - 2 + ly, ny), x = clamp_index(x0 - 2 + lx, nx);
      su[z % 3][ly][lx] = p[y * nx + x];
    }
  };
  // g plane z (in the volume) into ring slot z % 3; a tile position outside the volume holds g
  // of the clamped position (the ghost of Lap g), read from the u tile at that position.
  auto compute_g = [&](idx_t z) {
    const int zm = static_cast<int>(clamp_index(z - 1, nz) % 3), zc = static_cast<int>(z % 3);
    const int zp = static_cast<int>(clamp_index(z + 1, nz) % 3);
    for (int i = tid; i < GY * GX; i += TX * TY) {
      const int gy = i / GX, gx = i % GX;
      // Local u index of the clamped position (u tile origin is y0 - 2, x0 - 2).
      const int uy = static_cast<int>(clamp_index(y0 - 1 + gy, ny) - (y0 - 2));
      const int ux = static_cast<int>(clamp_index(x0 - 1 + gx, nx) - (x0 - 2));
      const float lap = dmfn::math::laplacian<kZ>(
          su[zc][uy][ux], su[zc][uy][ux - 1], su[zc][uy][ux + 1], su[zc][uy - 1][ux],
          su[zc][uy + 1][ux], su[zm][uy][ux], su[zp][uy][ux], w);
      sg[zc][gy][gx] = dmfn::math::pde_flux(lap, k2);
    }
  };

  idx_t next_u = z0 - 2 > 0 ? z0 - 2 : 0;  // next u plane to load
  idx_t next_g = z0 - 1 > 0 ? z0 - 1 : 0;  // next g plane to compute
  const int tx = threadIdx.x, ty = threadIdx.y;
  const idx_t y = y0 + ty, x = x0 + tx;
  for (idx_t z = z0; z < z1; ++z) {
    const idx_t need_g = z + 1 < nz ? z + 1 : nz - 1;
    for (; next_g <= need_g; ++next_g) {
      const idx_t need_u = next_g + 1 < nz ? next_g + 1 : nz - 1;
      for (; next_u <= need_u; ++next_u) load_u(next_u);
      __syncthreads();
      compute_g(next_g);
      __syncthreads();
    }
    if (y < ny && x < nx) {
      const int zm = static_cast<int>(clamp_index(z - 1, nz) % 3), zc = static_cast<int>(z % 3);
      const int zp = static_cast<int>(clamp_index(z + 1, nz) % 3);
      const int gy = ty + 1, gx = tx + 1;
      const float lap_g = dmfn::math::laplacian<kZ>(
          sg[zc][gy][gx], sg[zc][gy][gx - 1], sg[zc][gy][gx + 1], sg[zc][gy - 1][gx],
          sg[zc][gy + 1][gx], sg[zm][gy][gx], sg[zp][gy][gx], w);
      const float u = su[zc][ty + 2][tx + 2];
      const idx_t at = z * plane + y * nx + x;
      dst[at] = dt_lambda == 0.0f ? dmfn::math::pde_step(u, lap_g, dt)
                                  : dmfn::math::pde_step_fidelity(u, u0[at], lap_g, dt, dt_lambda);
    }
    __syncthreads();  // the next loads overwrite ring slots this update read
  }
}

}  // namespace

// Block (32, 8, 1); grid (ceil(nx / 32), ceil(ny / 8), ceil(nz / z_chunk)).
extern "C" __global__ void __launch_bounds__(TX* TY)
    pde_iteration_3d(const float* src, float* dst, const float* u0, idx_t nz, idx_t ny, idx_t nx,
                     idx_t z_chunk, float k2, float dt, float dt_lambda, float wz, float wy,
                     float wx) {
  iteration<true>(src, dst, u0, nz, ny, nx, z_chunk, k2, dt, dt_lambda, StencilWeights{wz, wy, wx});
}

// The 5-point stencil in every axial slice (the z term compiled out).
extern "C" __global__ void __launch_bounds__(TX* TY)
    pde_iteration_2d(const float* src, float* dst, const float* u0, idx_t nz, idx_t ny, idx_t nx,
                     idx_t z_chunk, float k2, float dt, float dt_lambda, float wz, float wy,
                     float wx) {
  iteration<false>(src, dst, u0, nz, ny, nx, z_chunk, k2, dt, dt_lambda, StencilWeights{wz, wy, wx});
}
