// libconnredir: what a proxy calls on its sockets. Thin wrappers over the
// socket-option contract in docs/ABI.md; each error carries errno and a
// message saying what to do.
#pragma once

#include <cstdint>
#include <span>

#include "connredir/address.hpp"
#include "connredir/error.hpp"
#include "connredir/records.hpp"

// Exported from libconnredir.so (built with hidden visibility by default).
#pragma GCC visibility push(default)

namespace connredir {

// Records blob of an accepted, redirected socket.
//   ENOENT: the socket was not redirected.   EACCES: caller not authorized.
//   EOPNOTSUPP: connredir is not loaded for this process's cgroup.
Result<RecordsBlob> query_records(int fd);
// Raw context bytes (CONNREDIR_CONTEXT_SIZE) and the decoded form.
Result<std::vector<uint8_t>> query_context_raw(int fd);
Result<Context> query_context(int fd);
// Attach records to a not-yet-connected TCP socket, before connect().
//   EINVAL: forged/altered/truncated blob.  EISCONN: already connected.
//   EOPNOTSUPP: not a TCP socket.  EACCES: not authorized.
//   ENOPROTOOPT: connredir is not loaded for this process's cgroup.
Result<void> set_records(int fd, std::span<const uint8_t> blob);
// Original destination of an accepted, redirected socket, via the
// iptables-compatible SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST options.
Result<Address> original_destination(int fd);

}  // namespace connredir

#pragma GCC visibility pop
