// Pointer validation without dereferencing: the kernel copies one byte of
// every page of the range, and reports EFAULT where it cannot. Used for
// WSAEFAULT, which the page requires for any pointer argument not entirely
// inside valid user memory.
#include <fcntl.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "state.hpp"

namespace connredir::winsock {
namespace {

constexpr size_t kBatch = 1024;  // IOV_MAX

size_t page_size() {
  static const size_t p = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return p;
}

// One probe address per page touched by [p, p+n).
std::vector<uintptr_t> probe_points(uintptr_t a, size_t n) {
  std::vector<uintptr_t> pts;
  const size_t ps = page_size();
  uintptr_t end = a + n;  // overflow checked by the caller
  pts.push_back(a);
  for (uintptr_t q = (a / ps + 1) * ps; q < end; q += ps) pts.push_back(q);
  return pts;
}

// Fallback when process_vm_* is unavailable (seccomp, ENOSYS): write(2) the
// bytes into a pipe (kernel reads them: EFAULT if unreadable), then read(2)
// them back into place (kernel writes the same values: EFAULT if read-only).
bool probe_pipe(const std::vector<uintptr_t>& pts, bool write) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) return false;
  bool ok = true;
  for (uintptr_t a : pts) {
    void* addr = reinterpret_cast<void*>(a);
    if (::write(p[1], addr, 1) != 1) {
      ok = false;
      break;
    }
    if (write) {
      if (::read(p[0], addr, 1) != 1) {
        ok = false;
        break;
      }
    } else {
      char c;
      if (::read(p[0], &c, 1) != 1) {
        ok = false;
        break;
      }
    }
  }
  close(p[0]);
  close(p[1]);
  return ok;
}

bool probe(const void* ptr, size_t n, bool write) {
  if (n == 0) return true;
  if (ptr == nullptr) return false;
  uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  if (a + n < a) return false;
  auto pts = probe_points(a, n);
  std::vector<char> scratch(kBatch);
  std::vector<iovec> local(kBatch), remote(kBatch);
  const pid_t self = getpid();
  for (size_t i = 0; i < pts.size(); i += kBatch) {
    size_t k = std::min(kBatch, pts.size() - i);
    for (size_t j = 0; j < k; ++j) {
      local[j] = {&scratch[j], 1};
      remote[j] = {reinterpret_cast<void*>(pts[i + j]), 1};
    }
    // Read the bytes (checks readability) ...
    ssize_t r = process_vm_readv(self, local.data(), k, remote.data(), k, 0);
    if (r < 0 && (errno == ENOSYS || errno == EPERM))
      return probe_pipe(std::vector<uintptr_t>(pts.begin() + static_cast<ptrdiff_t>(i), pts.end()),
                        write);
    if (r != static_cast<ssize_t>(k)) return false;
    // ... and write the same values back (checks writability, changes nothing).
    if (write) {
      r = process_vm_writev(self, local.data(), k, remote.data(), k, 0);
      if (r != static_cast<ssize_t>(k)) return false;
    }
  }
  return true;
}

}  // namespace

bool probe_read(const void* p, size_t n) { return probe(p, n, false); }
bool probe_write(void* p, size_t n) { return probe(p, n, true); }

}  // namespace connredir::winsock
