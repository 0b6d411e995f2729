#include "common.hpp"

namespace dmfn {
void register_pde(py::module_& m) { (void)m; }
}  // namespace dmfn
