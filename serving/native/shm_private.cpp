// Preloaded into tritonserver by `dmfn serve` (LD_PRELOAD): shared memory owner-only.
//
// Triton's python backend creates one /dev/shm region per worker and moves every request's
// tensors through it. It creates the region with boost.interprocess, which calls fchmod() with
// its default permissions (0644) right after shm_open(), so a umask cannot narrow them and every
// local user could read CT crops in transit. This library replaces fchmod(): on a file under
// /dev/shm the group and other bits are cleared; every other call goes through unchanged.
// Nothing else is intercepted. It is a Python-importable file name only so that dmfn can find it
// (importlib.util.find_spec); it is never imported.

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

namespace {

constexpr char kShmDir[] = "/dev/shm/";

bool is_shared_memory(int fd) {
  char link[48];
  char target[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return strncmp(target, kShmDir, sizeof kShmDir - 1) == 0;
}

using FchmodFn = int (*)(int, mode_t);

}  // namespace

extern "C" __attribute__((visibility("default"))) int fchmod(int fd, mode_t mode) {
  static const FchmodFn real = reinterpret_cast<FchmodFn>(dlsym(RTLD_NEXT, "fchmod"));
  if (is_shared_memory(fd)) mode &= ~static_cast<mode_t>(S_IRWXG | S_IRWXO);
  return real(fd, mode);
}
