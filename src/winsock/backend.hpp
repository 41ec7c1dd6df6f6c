// Internal seam of the Winsock layer: the socket-option calls it makes, behind
// a small interface so tests can make them return any errno or any data
// without a kernel (Envoy-style injectable system calls), and the errno ->
// Winsock error table.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "connredir/address.hpp"
#include "connredir/error.hpp"

namespace connredir::winsock {

class Backend {
 public:
  virtual ~Backend() = default;
  // getsockopt(SOL_CONNREDIR, CONNREDIR_RECORDS / CONNREDIR_CONTEXT).
  virtual Result<std::vector<uint8_t>> query_records(int fd) = 0;
  virtual Result<std::vector<uint8_t>> query_context(int fd) = 0;
  // setsockopt(SOL_CONNREDIR, CONNREDIR_RECORDS).
  virtual Result<void> set_records(int fd, std::span<const uint8_t> blob) = 0;
  // getsockopt(SOL_SOCKET, SO_COOKIE).
  virtual Result<uint64_t> socket_cookie(int fd) = 0;
  // A UDP proxy socket's flow from `client` (to `local`, for a wildcard-bound
  // socket; null: the socket's own address) (setsockopt CONNREDIR_UDP_FLOW,
  // then both queries): {records blob, raw context}.
  virtual Result<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> udp_flow(
      int fd, const Address& client, const Address* local) = 0;
};

// The real one: libconnredir (connredir_client) and SO_COOKIE.
Backend& system_backend();
// The backend in use. set_backend(nullptr) restores system_backend().
// Returns the previous one. For tests; not synchronised with in-flight calls.
Backend& backend();
Backend* set_backend(Backend* b);

struct ErrnoMapping {
  int err;  // Linux errno
  int wsa;  // Winsock error reported for it
  const char* why;
};
// The single table every kernel errno goes through (docs/WINSOCK.md).
std::span<const ErrnoMapping> errno_table();
// Errors not in the table.
inline constexpr int kUnmappedErrno = 10107;  // WSASYSCALLFAILURE
int wsa_from_errno(int err);

}  // namespace connredir::winsock
