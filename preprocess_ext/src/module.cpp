// pybind11 entry point of dmfn.preprocess._core. Each kernel family registers itself from its own file.
#include "common.hpp"

namespace py = pybind11;

namespace dmfn {
void register_pde(py::module_& m);
void register_resample(py::module_& m);
void register_geometry(py::module_& m);
void register_window(py::module_& m);
void register_finite(py::module_& m);
}  // namespace dmfn

PYBIND11_MODULE(_core, m) {
  m.doc() = "dmfn preprocessing kernels (C++17, OpenMP). Use the typed API in dmfn.preprocess.";
#ifdef DMFN_HAVE_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  dmfn::register_pde(m);
  dmfn::register_resample(m);
  dmfn::register_geometry(m);
  dmfn::register_window(m);
  dmfn::register_finite(m);
  dmfn::BufferPool::init();
  py::class_<dmfn::PooledMemory>(m, "_PooledMemory", py::buffer_protocol(),
                                 "Pooled memory that a kernel's returned array views (its base).")
      .def_buffer([](dmfn::PooledMemory& p) {
        return py::buffer_info(p.buffer.data(), static_cast<py::ssize_t>(p.buffer.size()));
      });
  m.def("release_cached_memory", [] { dmfn::BufferPool::release(); },
        "Unmap the buffers the kernels keep for reuse (scratch volumes, returned arrays' memory).");
}
