#include "common.hpp"

namespace dmfn {
void register_geometry(py::module_& m) { (void)m; }
}  // namespace dmfn
