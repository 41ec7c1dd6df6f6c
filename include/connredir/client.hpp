// libconnredir: what a proxy calls on its sockets. Thin wrappers over the
// socket-option contract in docs/ABI.md; each error carries errno and a
// message saying what to do.
#pragma once

#include <cstdint>
#include <optional>
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
// An accepted flow as a proxy reads it: its records (copy them to the
// outgoing socket) and its redirect context.
struct Flow {
  RecordsBlob records;
  Context context;                   // context.orig_dst is the original destination
  std::vector<uint8_t> context_raw;  // the same, as the kernel returned it
};
// Records and context of an accepted, redirected socket in one system call
// (query_records and query_context take two). Same errors as those; against
// a loaded connredir older than the one-call option it makes the two calls.
Result<Flow> query_flow(int fd);
// Attach records to a not-yet-connected TCP or UDP socket, before connect()
// (or, for UDP, the first send).
//   EINVAL: forged/altered/truncated blob.  EISCONN: already connected.
//   EOPNOTSUPP: not a TCP or UDP socket.  EACCES: not authorized.
//   ENOPROTOOPT: connredir is not loaded for this process's cgroup.
Result<void> set_records(int fd, std::span<const uint8_t> blob);
// Original destination of an accepted, redirected socket, via the
// iptables-compatible SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST options.
Result<Address> original_destination(int fd);

// One redirected UDP flow, as a UDP proxy sees it: what query_flow gives
// for an accepted TCP socket.
using UdpFlow = Flow;

// The flow whose datagrams come from `client` (the address recvfrom() or
// recvmsg() reported) to the UDP socket `fd`, which is bound to its
// callout's proxy address. The flow is known once `fd` has received a
// datagram from the client with its source address asked for. Selecting
// and reading are two socket options on `fd`; calls are serialised inside
// the library, so threads may share `fd`.
//   ENOENT: no redirected flow from `client` reached this socket's address
//           (the client was not redirected, or its socket was closed; an
//           unconnected client's flow also ends after 60 s without a send).
//   EADDRNOTAVAIL: `fd` is bound to a wildcard address: pass `local`.
//   EACCES: the caller is not the principal of the callout that redirected
//           the flow (nor root).   EOPNOTSUPP: not a UDP socket.
Result<UdpFlow> udp_flow(int fd, const Address& client);
// The same for a socket bound to the wildcard address at the callout's
// port, which receives the unconnected sends redirected to pool addresses
// (docs/ABI.md, "UDP"): `local` is the address the datagram was sent to,
// from IP_PKTINFO / IPV6_PKTINFO, with the socket's port.
//   EINVAL: `local` does not have the socket's port.
Result<UdpFlow> udp_flow(int fd, const Address& client, const Address& local);
// The address a datagram received with recvmsg() was sent to, from its
// IP_PKTINFO / IPV6_PKTINFO control message (enable IP_PKTINFO /
// IPV6_RECVPKTINFO on the socket), with `port` (the socket's own): the
// `local` a wildcard-bound socket passes to udp_flow(). nullopt if the
// message carries neither.
std::optional<Address> datagram_local_address(const msghdr& msg, uint16_t port);
// Only the flow id of that flow (two socket options, no records copied).
// Client addresses are reused: a UDP proxy checks the id with each datagram
// and takes a new id for a new flow, so that a new client socket that got an
// old one's address never rides on the old flow's records. Same errors.
Result<uint64_t> udp_flow_id(int fd, const Address& client);
Result<uint64_t> udp_flow_id(int fd, const Address& client, const Address& local);
// Is the flow from `client` (to `local`) still the one with id `flow_id`?
// One socket option, nothing selected or copied, no lock: the check a UDP
// proxy makes with each datagram of a flow it relays, for half the cost of
// udp_flow_id. false: another flow, or none, has these ends now (select it
// with udp_flow). Other errors as udp_flow.
Result<bool> udp_flow_unchanged(int fd, const Address& client, uint64_t flow_id);
Result<bool> udp_flow_unchanged(int fd, const Address& client, const Address& local,
                                uint64_t flow_id);

}  // namespace connredir

#pragma GCC visibility pop
