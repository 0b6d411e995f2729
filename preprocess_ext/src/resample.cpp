#include "common.hpp"

namespace dmfn {
void register_resample(py::module_& m) { (void)m; }
}  // namespace dmfn
