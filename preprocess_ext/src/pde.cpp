// Fourth-order PDE denoising (You & Kaveh, IEEE TIP 2000), explicit Euler, float32.
//
//   u_t = -Lap( c(|Lap u|) Lap u ),   c(s) = 1 / (1 + (s/k)^2)
//   g   = c(|Lap u|) Lap u            (= L k^2 / (k^2 + L^2) with L = Lap u)
//   u  <- u - dt Lap g + dt lambda (u0 - u)
//
// Lap is the 7-point (3D) or 5-point (2D, per axial slice) stencil in physical units, expressed
// on the finest stencil spacing h_min (the smallest of the stencil axes' spacings):
//
//   Lap u = sum_a w_a (u[a-1] - 2 u + u[a+1]),   w_a = (h_min / h_a)^2   (= h_min^2 Lap_mm u)
//
// so Lap is in HU per h_min^2, k in the same unit, and dt in units of h_min^4 (physical step
// dt_mm4 = dt h_min^4). On isotropic voxels every w_a is 1: the unit-grid stencil. The explicit
// scheme is stable for dt <= 1 / (8 (sum_a w_a)^2), at least 1/72 (3D) and 1/32 (2D) for every
// spacing; the Python layer checks it. Neumann boundaries whose ghost voxel equals the boundary
// voxel (numpy.pad mode="edge"), for both Lap u and Lap g. Axes (z, y, x), x contiguous.
//
// One iteration is ONE streaming sweep over z (no separate full pass for g): g plane z+1 needs
// u planes z..z+2; u plane z is then updated in place from g planes z-1..z+1, because no later g
// plane reads the old u plane z. The g planes live in a ring of three plane buffers per thread.
// OpenMP splits z into one slab per thread; before a barrier each thread computes the g planes
// of its first and last z (they read one old u plane of each neighbouring slab), so after the
// barrier every slab sweeps independently. A second barrier ends the iteration.
//
// 2D mode is the same code with the z term compiled out (template parameter kZ).
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include <pybind11/stl.h>

#include "common.hpp"

#ifdef DMFN_HAVE_OPENMP
#include <omp.h>
#endif

namespace dmfn {
namespace {

// The five rows around voxel row (z, y): centre, y-1, y+1, z-1, z+1 (indices already clamped, so
// a ghost neighbour is the centre row itself and its difference vanishes).
struct Rows {
  const float* c;
  const float* ym;
  const float* yp;
  const float* zm;
  const float* zp;
};

// Rows around (y) given the three (clamped) planes z-1, z, z+1 of a plane-major array.
inline Rows rows_at(const float* plane_zm, const float* plane_c, const float* plane_zp,
                    const Shape3& s, index_t y) {
  const index_t row = y * s.nx;
  return Rows{plane_c + row, plane_c + clamp_index(y - 1, s.ny) * s.nx,
              plane_c + clamp_index(y + 1, s.ny) * s.nx, plane_zm + row, plane_zp + row};
}

// Per-axis weights w_a = (h_min / h_a)^2 of the Laplacian (see the top of this file).
using AxisWeights = math::StencilWeights;

// Laplacian at x with x neighbours xm, xp (clamped), as a weighted sum of neighbour-minus-centre
// differences: exactly 0 on a constant image and on every ghost (clamped) neighbour.
template <bool kZ>
inline float laplacian_at(const Rows& r, const AxisWeights& w, index_t x, index_t xm,
                          index_t xp) {
  return math::laplacian<kZ>(r.c[x], r.c[xm], r.c[xp], r.ym[x], r.yp[x], r.zm[x], r.zp[x], w);
}

// THE stencil: calls emit(x, Lap at x) along one row. The x boundaries are handled outside the
// vectorised interior loop, which has no branch and no modulo.
template <bool kZ, class Emit>
inline void laplacian_row(const Rows& r, const AxisWeights& w, index_t nx, Emit&& emit) {
  if (nx == 1) {
    emit(0, laplacian_at<kZ>(r, w, 0, 0, 0));
    return;
  }
  emit(0, laplacian_at<kZ>(r, w, 0, 0, 1));
#pragma omp simd
  for (index_t x = 1; x < nx - 1; ++x) emit(x, laplacian_at<kZ>(r, w, x, x - 1, x + 1));
  emit(nx - 1, laplacian_at<kZ>(r, w, nx - 1, nx - 2, nx - 1));
}

struct PdeStep {
  float k2;         // k^2, (HU per h_min^2)^2
  float dt;         // Euler step, units of h_min^4
  float dt_lambda;  // dt * fidelity lambda
  AxisWeights w;    // Laplacian weights (h_min / h_a)^2
};

// Row y of g plane z (g points at the plane) = c(|Lap u|) Lap u, from old u planes z-1..z+1.
template <bool kZ>
inline void flux_row(const float* src, const Shape3& s, index_t z, index_t y, const PdeStep& p,
                     float* g) {
  const float* pm = src + s.at(clamp_index(z - 1, s.nz), 0, 0);
  const float* pc = src + s.at(z, 0, 0);
  const float* pp = src + s.at(clamp_index(z + 1, s.nz), 0, 0);
  const float k2 = p.k2;
  float* grow = g + y * s.nx;
  laplacian_row<kZ>(rows_at(pm, pc, pp, s, y), p.w, s.nx,
                    [&](index_t x, float lap) { grow[x] = math::pde_flux(lap, k2); });
}

template <bool kZ>
void flux_plane(const float* src, const Shape3& s, index_t z, const PdeStep& p, float* g) {
  for (index_t y = 0; y < s.ny; ++y) flux_row<kZ>(src, s, z, y, p, g);
}

// Row y of dst plane z = src - dt Lap g (+ dt lambda (u0 - src)), from g planes z-1, z, z+1.
// src and dst may be the same array (in-place update): each voxel reads only its own src value.
template <bool kZ>
inline void update_row(const float* gm, const float* gc, const float* gp, const float* src,
                       float* dst, const float* u0, const Shape3& s, index_t z, index_t y,
                       const PdeStep& p) {
  const float dt = p.dt;
  const float dt_lambda = p.dt_lambda;
  const index_t off = s.at(z, y, 0);
  const float* urow = src + off;
  float* out = dst + off;
  const Rows rows = rows_at(gm, gc, gp, s, y);
  if (dt_lambda == 0.0f) {
    laplacian_row<kZ>(rows, p.w, s.nx,
                      [&](index_t x, float lap) { out[x] = math::pde_step(urow[x], lap, dt); });
  } else {
    const float* u0row = u0 + off;
    laplacian_row<kZ>(rows, p.w, s.nx, [&](index_t x, float lap) {
      out[x] = math::pde_step_fidelity(urow[x], u0row[x], lap, dt, dt_lambda);
    });
  }
}

// Update u plane z from g planes z-1, z, z+1; when g_next_out is given, g plane z+1 is first
// computed into it (it reads the old u plane z, so it must precede the update). Computing it row
// by row one row ahead of the update was measured ~10% slower (more concurrent streams).
template <bool kZ>
void sweep_plane(const float* gm, const float* gc, const float* gp, float* g_next_out,
                 const float* src, float* dst, const float* u0, const Shape3& s, index_t z,
                 const PdeStep& p) {
  if (g_next_out != nullptr) flux_plane<kZ>(src, s, z + 1, p, g_next_out);
  for (index_t y = 0; y < s.ny; ++y) update_row<kZ>(gm, gc, gp, src, dst, u0, s, z, y, p);
}

// Slab [z0, z1) of thread t among `slabs` equal slabs of nz planes (empty when t >= slabs).
inline void slab_of(index_t t, index_t slabs, index_t nz, index_t& z0, index_t& z1) {
  if (t >= slabs) {
    z0 = z1 = nz;
    return;
  }
  z0 = t * nz / slabs;
  z1 = (t + 1) * nz / slabs;
}

int team_size(int threads) {
#ifdef DMFN_HAVE_OPENMP
  return threads > 0 ? threads : omp_get_max_threads();
#else
  (void)threads;
  return 1;
#endif
}

template <bool kZ>
void denoise(const float* u0, float* out, const Shape3& s, index_t iterations, const PdeStep& p,
             int threads) {
  const index_t plane = s.plane();
  const index_t slabs = std::min<index_t>(team_size(threads), s.nz);
  // Per slab, five g planes: its first and last (shared with the neighbouring slabs) and a ring
  // of three for the sweep. Allocated here, outside the parallel region, so that a failure
  // reaches Python as MemoryError.
  std::vector<float> scratch(static_cast<std::size_t>(5 * slabs * plane));
  auto first_g = [&](index_t t) { return scratch.data() + (5 * t) * plane; };
  auto last_g = [&](index_t t) { return scratch.data() + (5 * t + 1) * plane; };
  auto ring_g = [&](index_t t, index_t z) { return scratch.data() + (5 * t + 2 + z % 3) * plane; };

#pragma omp parallel num_threads(static_cast<int>(slabs))
  {
#ifdef DMFN_HAVE_OPENMP
    const index_t t = omp_get_thread_num();
    const index_t team = omp_get_num_threads();
#else
    const index_t t = 0;
    const index_t team = 1;
#endif
    const index_t used = std::min(team, slabs);  // the runtime may grant fewer threads
    index_t z0, z1;
    slab_of(t, used, s.nz, z0, z1);
    // The g plane of the last z of slab j (a one-plane slab stores it as its first plane).
    auto slab_last_g = [&](index_t j) {
      index_t a, b;
      slab_of(j, used, s.nz, a, b);
      return b - 1 > a ? last_g(j) : first_g(j);
    };

    for (index_t it = 0; it < iterations; ++it) {
      // Iteration 0 reads the input and writes the output; later ones update the output in place.
      const float* src = it == 0 ? u0 : out;
      if (z1 > z0) {
        flux_plane<kZ>(src, s, z0, p, first_g(t));
        if (z1 - 1 > z0) flux_plane<kZ>(src, s, z1 - 1, p, last_g(t));
      }
#pragma omp barrier
      if (z1 > z0) {
        const float* own_last = slab_last_g(t);
        // g planes z-1, z, z+1 while updating u plane z.
        const float* gm = z0 == 0 ? first_g(t) : slab_last_g(t - 1);  // z = -1: ghost = plane 0
        const float* gc = first_g(t);
        for (index_t z = z0; z < z1; ++z) {
          const float* gp;
          float* g_next_out = nullptr;  // computed during the sweep of plane z
          if (z + 1 == z1 - 1) {
            gp = own_last;
          } else if (z + 1 == z1) {
            gp = z1 == s.nz ? own_last : first_g(t + 1);  // z = nz: ghost = plane nz-1
          } else {
            g_next_out = ring_g(t, z + 1);
            gp = g_next_out;
          }
          sweep_plane<kZ>(gm, gc, gp, g_next_out, src, out, u0, s, z, p);
          gm = gc;
          gc = gp;
        }
      }
#pragma omp barrier
    }
  }
}


// ---- Temporal blocking ----------------------------------------------------------------------
//
// T iterations per pass over memory. The volume is cut into tiles of whole (z, x) rows along y;
// a tile advances T iterations with a wavefront down z: stage t (1..T) updates plane z while
// stage t-1 is two planes ahead (g of plane z+1 needs u planes up to z+2), so every stage works
// on a window of a few planes that stays in cache, and the volume is read once and written once
// per T iterations. Stage t's rows reach 2 (T - t) rows past the tile on each side (each
// iteration needs u two rows out: g one row out, and g needs u one more), recomputed by the
// neighbouring tile too (overlapped tiling), so tiles are independent within a pass. Tiles are
// handed out one at a time and a tile of the next pass waits only for its neighbours (see
// denoise_blocked), so a thread slowed by another process just takes fewer tiles (the slab design
// above waits for the slowest thread twice per iteration). Passes ping-pong between the output
// and one scratch volume (ScratchLease: reused across calls); the fidelity term reads u0.
// The per-voxel math is the plain kernel's (laplacian_row, math::pde_flux, math::pde_step*),
// so the stencil stays one edit.

// A plane of a stage: rows [row0, ...) of nx floats from `base` (a volume plane or a ring slot).
struct PlaneRef {
  const float* base;
  index_t row0;
  const float* row(index_t y, index_t nx) const { return base + (y - row0) * nx; }
};

struct TileBuffers {
  std::vector<float> data;  // T g rings and T-1 u rings of three planes, ext_rows x nx each
  index_t plane = 0;
  float* g(index_t t, index_t z) { return data.data() + ((t - 1) * 3 + z % 3) * plane; }
  float* u(index_t T, index_t t, index_t z) {
    return data.data() + ((T + t - 1) * 3 + z % 3) * plane;
  }
};

// Spreads software prefetches of the input plane that stage 1 reads next over the rows of the
// current wavefront step. Why: stage 1's reads otherwise come in one burst while the in-cache
// stages leave the memory bus idle (measured: +10-30 % for the blocked kernel).
class StepPrefetch {
 public:
  void arm(const float* read, index_t floats, index_t row_ops) {
    read_ = reinterpret_cast<const char*>(read);
    end_ = read_ == nullptr ? 0 : static_cast<index_t>(floats * sizeof(float));
    done_ = 0;
    per_tick_ = (end_ / kLine + row_ops - 1) / std::max<index_t>(row_ops, 1) + 1;
  }
  void tick() {
    for (index_t k = 0; k < per_tick_ && done_ < end_; ++k, done_ += kLine) {
      __builtin_prefetch(read_ + done_, 0, 2);
    }
  }

 private:
  static constexpr index_t kLine = 64;
  const char* read_ = nullptr;
  index_t end_ = 0, done_ = 0, per_tick_ = 0;
};

template <bool kZ>
void blocked_pass(const float* src, float* dst, const float* u0, const Shape3& s, index_t T,
                  index_t y0, index_t y1, const PdeStep& p, TileBuffers& buf) {
  const index_t nx = s.nx, ny = s.ny, nz = s.nz;
  const index_t ybase = std::max<index_t>(0, y0 - 2 * T - 1);
  auto lo = [&](index_t t) { return std::max<index_t>(0, y0 - 2 * (T - t)); };
  auto hi = [&](index_t t) { return std::min<index_t>(ny, y1 + 2 * (T - t)); };
  auto u_in = [&](index_t t, index_t z) {  // u after t-1 iterations of this pass, plane z
    z = clamp_index(z, nz);
    return t == 1 ? PlaneRef{src + z * s.plane(), 0} : PlaneRef{buf.u(T, t - 1, z), ybase};
  };
  auto g_of = [&](index_t t, index_t z) { return PlaneRef{buf.g(t, clamp_index(z, nz)), ybase}; };
  auto rows = [&](const PlaneRef& m, const PlaneRef& c, const PlaneRef& pl, index_t y) {
    return Rows{c.row(y, nx), c.row(clamp_index(y - 1, ny), nx),
                c.row(clamp_index(y + 1, ny), nx), m.row(y, nx), pl.row(y, nx)};
  };
  StepPrefetch prefetch;
  auto compute_g = [&](index_t t, index_t z) {
    const PlaneRef m = u_in(t, z - 1), c = u_in(t, z), pl = u_in(t, z + 1);
    float* g = buf.g(t, z);
    const float k2 = p.k2;
    for (index_t y = std::max<index_t>(0, lo(t) - 1); y < std::min(ny, hi(t) + 1); ++y) {
      prefetch.tick();
      float* grow = g + (y - ybase) * nx;
      laplacian_row<kZ>(rows(m, c, pl, y), p.w, nx,
                        [&](index_t x, float lap) { grow[x] = math::pde_flux(lap, k2); });
    }
  };
  auto update = [&](index_t t, index_t z) {
    const PlaneRef gm = g_of(t, z - 1), gc = g_of(t, z), gp = g_of(t, z + 1), u = u_in(t, z);
    for (index_t y = lo(t); y < hi(t); ++y) {
      prefetch.tick();
      float* out = t == T ? dst + s.at(z, y, 0) : buf.u(T, t, z) + (y - ybase) * nx;
      const float* urow = u.row(y, nx);
      const float dt = p.dt, dt_lambda = p.dt_lambda;
      if (dt_lambda == 0.0f) {
        laplacian_row<kZ>(rows(gm, gc, gp, y), p.w, nx, [&](index_t x, float lap) {
          out[x] = math::pde_step(urow[x], lap, dt);
        });
      } else {
        const float* u0row = u0 + s.at(z, y, 0);
        laplacian_row<kZ>(rows(gm, gc, gp, y), p.w, nx, [&](index_t x, float lap) {
          out[x] = math::pde_step_fidelity(urow[x], u0row[x], lap, dt, dt_lambda);
        });
      }
    }
  };
  // The rows stage 1 reads from each new input plane (prefetched one step ahead).
  const index_t read_y0 = std::max<index_t>(0, lo(1) - 2), read_y1 = std::min(ny, hi(1) + 2);
  const index_t row_ops = 2 * T * (y1 - y0 + 2 * T);
  for (index_t step = 0; step < nz + 2 * (T - 1); ++step) {
    const index_t z_read = step + 3;
    prefetch.arm(z_read < nz ? src + s.at(z_read, read_y0, 0) : nullptr,
                 (read_y1 - read_y0) * nx, row_ops);
    for (index_t t = 1; t <= T; ++t) {
      const index_t z = step - 2 * (t - 1);
      if (z < 0 || z >= nz) continue;
      if (z == 0) compute_g(t, 0);
      if (z + 1 < nz) compute_g(t, z + 1);
      update(t, z);
    }
  }
}

// Bytes of a thread's tile rings. Half the 2-MiB L2 of the development machine's cores leaves the
// other half to the input and output streams and the prefetched plane; measured against 0.75,
// 1.25, 1.5, 2, 3 and 6 MiB, T = 2 is fastest here (benchmarks/bench_pde.py prints the T sweep).
constexpr std::size_t kTileCacheBytes = std::size_t{1} << 20;

// Rows per tile: the largest that keeps a thread's rings (6 T planes of the tile plus its halo)
// within `cache_bytes`, and at least two tiles per thread when there are several threads.
index_t tile_rows_for(const Shape3& s, index_t T, index_t team, std::size_t cache_bytes) {
  const auto row_bytes = static_cast<std::size_t>(6 * T * s.nx) * sizeof(float);
  auto rows = static_cast<index_t>(cache_bytes / std::max<std::size_t>(row_bytes, 1)) - 4 * T - 2;
  if (team > 1) rows = std::min(rows, (s.ny + 2 * team - 1) / (2 * team));
  return std::clamp<index_t>(rows, std::min<index_t>(8, s.ny), s.ny);
}

// Spins briefly, then yields the core (the thread it waits for may share it), until counter >= v.
inline void wait_until_at_least(const std::atomic<index_t>& counter, index_t v) {
  for (int spin = 0; counter.load(std::memory_order_acquire) < v;) {
    if (spin < 64) {
      ++spin;
    } else {
      std::this_thread::yield();
    }
  }
}

template <bool kZ>
void denoise_blocked(const float* u0, float* out, const Shape3& s, index_t iterations,
                     const PdeStep& p, int threads, index_t T) {
  const index_t team = team_size(threads);
  const index_t rows = tile_rows_for(s, T, team, kTileCacheBytes);
  const index_t tiles = (s.ny + rows - 1) / rows;
  const index_t passes = (iterations + T - 1) / T;
  const index_t ext = std::min<index_t>(s.ny, rows + 4 * T + 2);
  // Allocated here, outside the parallel region, so that a failure reaches Python as MemoryError.
  ScratchLease scratch(passes > 1 ? static_cast<std::size_t>(s.voxels()) : 0);
  std::vector<TileBuffers> buffers(static_cast<std::size_t>(team));
  for (auto& b : buffers) {
    b.plane = ext * s.nx;
    b.data.resize(static_cast<std::size_t>((2 * T - 1) * 3 * b.plane));
  }
  // Dataflow instead of a barrier per pass: work items (pass, tile) are handed out in pass-major
  // order from one counter, and an item waits only until the tiles its halo reads (and whose
  // reads of its output buffer it would overwrite) have finished the previous pass. A thread
  // slowed by another process then delays only its neighbours' next pass, not every thread.
  // Deadlock-free: an item waits only on items with smaller tickets, all already taken by
  // running threads. One thread runs the items in order without ever waiting.
  const index_t reach = (2 * T + rows - 1) / rows;  // tiles on each side within a halo
  std::vector<std::atomic<index_t>> passes_done(static_cast<std::size_t>(tiles));
  for (auto& d : passes_done) d.store(0, std::memory_order_relaxed);
  std::atomic<index_t> ticket{0};
#pragma omp parallel num_threads(static_cast<int>(team))
  {
#ifdef DMFN_HAVE_OPENMP
    TileBuffers& buf = buffers[static_cast<std::size_t>(omp_get_thread_num())];
#else
    TileBuffers& buf = buffers[0];
#endif
    for (index_t item = ticket.fetch_add(1); item < passes * tiles; item = ticket.fetch_add(1)) {
      const index_t pass = item / tiles, tile = item % tiles;
      for (index_t j = std::max<index_t>(0, tile - reach);
           j <= std::min(tiles - 1, tile + reach); ++j) {
        wait_until_at_least(passes_done[static_cast<std::size_t>(j)], pass);
      }
      const index_t t_pass = std::min(T, iterations - pass * T);
      // The last pass writes `out`; earlier ones alternate so that src != dst.
      const bool to_out = (passes - 1 - pass) % 2 == 0;
      const float* src = pass == 0 ? u0 : (to_out ? scratch.data() : out);
      float* dst = to_out ? out : scratch.data();
      const index_t y0 = tile * rows, y1 = std::min(s.ny, y0 + rows);
      blocked_pass<kZ>(src, dst, u0, s, t_pass, y0, y1, p, buf);
      passes_done[static_cast<std::size_t>(tile)].store(pass + 1, std::memory_order_release);
    }
  }
}

// The Laplacian weights (h_min / h_a)^2 of voxels spacing_mm (z, y, x); h_min is over the
// stencil's axes (y, x, and z when three_d).
AxisWeights axis_weights(const std::array<double, 3>& spacing_mm, bool three_d) {
  const char* names[3] = {"spacing_mm[0] (z)", "spacing_mm[1] (y)", "spacing_mm[2] (x)"};
  for (int a = 0; a < 3; ++a) {
    if (!(std::isfinite(spacing_mm[a]) && spacing_mm[a] > 0)) {
      invalid(names[a], "must be finite and > 0 mm");
    }
  }
  double h_min = std::min(spacing_mm[1], spacing_mm[2]);
  if (three_d) h_min = std::min(h_min, spacing_mm[0]);
  auto weight = [&](double h) { return static_cast<float>((h_min / h) * (h_min / h)); };
  return AxisWeights{three_d ? weight(spacing_mm[0]) : 0.0f, weight(spacing_mm[1]),
                     weight(spacing_mm[2])};
}

py::array_t<float> pde_denoise(const FloatArray& volume, double k, double dt,
                               std::int64_t iterations, bool three_d, double fidelity,
                               const std::array<double, 3>& spacing_mm, int threads,
                               std::int64_t block) {
  const Shape3 s = shape_of(volume, "volume");
  require_nonempty(s, "volume");
  if (!(std::isfinite(k) && k > 0)) invalid("k", "must be finite and > 0 HU");
  if (!(std::isfinite(dt) && dt > 0)) invalid("dt", "must be finite and > 0");
  if (iterations < 0) invalid("iterations", "must be >= 0");
  if (!(std::isfinite(fidelity) && fidelity >= 0)) invalid("fidelity", "must be finite and >= 0");
  if (threads < 0) invalid("threads", "must be >= 1, or 0 for the OpenMP default");
  if (block < 1) invalid("block", "must be >= 1 iterations per pass (1: the plain kernel)");
  const AxisWeights weights = axis_weights(spacing_mm, three_d);

  py::array_t<float> result =
      pooled_array(std::vector<py::ssize_t>(volume.shape(), volume.shape() + volume.ndim()));
  const float* u0 = volume.data();
  float* out = result.mutable_data();
  const PdeStep step{static_cast<float>(k * k), static_cast<float>(dt),
                     static_cast<float>(dt * fidelity), weights};
  {
    py::gil_scoped_release release;
    if (iterations == 0) {
      std::memcpy(out, u0, static_cast<std::size_t>(s.voxels()) * sizeof(float));
    } else if (block > 1 && three_d) {
      denoise_blocked<true>(u0, out, s, iterations, step, threads, std::min(block, iterations));
    } else if (block > 1) {
      denoise_blocked<false>(u0, out, s, iterations, step, threads, std::min(block, iterations));
    } else if (three_d) {
      denoise<true>(u0, out, s, iterations, step, threads);
    } else {
      denoise<false>(u0, out, s, iterations, step, threads);
    }
  }
  return result;
}

}  // namespace

void register_pde(py::module_& m) {
  m.def("pde_denoise", &pde_denoise, py::arg("volume"), py::arg("k"), py::arg("dt"),
        py::arg("iterations"), py::arg("three_d"), py::arg("fidelity"), py::arg("spacing_mm"),
        py::arg("threads"), py::arg("block"),
        "Fourth-order (You-Kaveh) PDE denoising of a float32 (y, x) or (z, y, x) HU array; "
        "returns a new float32 array. Arguments are validated by dmfn.preprocess.denoise_pde; "
        "three_d=False applies the 5-point stencil per axial slice. spacing_mm (z, y, x) weights "
        "each axis by (h_min / h)^2, h_min the finest stencil spacing; k is in HU per h_min^2, "
        "dt in units of h_min^4. threads=0: OpenMP default. block: iterations per pass over "
        "memory (temporal blocking; 1 = the plain kernel).");
}

}  // namespace dmfn
