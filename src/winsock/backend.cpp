#include "backend.hpp"

#include <sys/socket.h>

#include <atomic>
#include <cerrno>

#include "connredir/client.hpp"

namespace connredir::winsock {
namespace {

class SystemBackend final : public Backend {
 public:
  Result<std::vector<uint8_t>> query_records(int fd) override {
    auto r = connredir::query_records(fd);
    if (!r) return tl::unexpected(r.error());
    return std::vector<uint8_t>(r->begin(), r->end());
  }
  Result<std::vector<uint8_t>> query_context(int fd) override {
    return connredir::query_context_raw(fd);
  }
  Result<void> set_records(int fd, std::span<const uint8_t> blob) override {
    return connredir::set_records(fd, blob);
  }
  Result<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> udp_flow(
      int fd, const Address& client, const Address* local) override {
    auto f = local ? connredir::udp_flow(fd, client, *local) : connredir::udp_flow(fd, client);
    if (!f) return tl::unexpected(f.error());
    return std::pair{std::move(f->records), std::move(f->context_raw)};
  }
  Result<uint64_t> socket_cookie(int fd) override {
    uint64_t cookie = 0;
    socklen_t len = sizeof(cookie);
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) {
      int e = errno;
      return fail(e, errno_message(e, "getsockopt(SO_COOKIE)"));
    }
    return cookie;
  }
};

SystemBackend g_system;
std::atomic<Backend*> g_backend{nullptr};

}  // namespace

Backend& system_backend() { return g_system; }

Backend& backend() {
  Backend* b = g_backend.load(std::memory_order_acquire);
  return b ? *b : g_system;
}

Backend* set_backend(Backend* b) {
  Backend* prev = g_backend.exchange(b, std::memory_order_acq_rel);
  return prev ? prev : &g_system;
}

}  // namespace connredir::winsock
