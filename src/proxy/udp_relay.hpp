// The reference proxy's UDP side (--udp): per listen address, one socket
// bound to the callout's proxy address (connected clients' flows) and one
// bound to the wildcard address at its port, which receives the unconnected
// sends connredir redirects to pool addresses (docs/ABI.md, "UDP"); it
// learns each datagram's pool address from IP_PKTINFO / IPV6_PKTINFO and
// answers from that address. One flow per (client, local address), each
// with its own onward socket connected to the flow's original destination
// with the flow's records attached (so connredir sends it to the next
// vendor, never back here). Datagrams are relayed as they come, never
// queued: a datagram that cannot be sent at once is dropped and counted, as
// the network would. A flow ends after --udp-idle-timeout-ms without a
// datagram either way, and is logged then with its chain. At most
// --max-udp-flows flows exist; the least recently active one makes room.
// Client addresses are reused (a new socket may get a closed one's port), so
// each datagram's flow id is checked: a new id ends the old flow and starts
// a new one with the new flow's records.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "connredir/address.hpp"
#include "flow_log.hpp"
#include "metrics.hpp"
#include "unique_fd.hpp"

namespace connredir::proxy {

struct UdpListener {
  UniqueFd fd;
  Address addr;
  std::string text;
  bool any = false;  // bound to the wildcard: datagrams carry their local address
};

struct UdpSession {
  UdpListener* listener = nullptr;
  Address client;
  Address local;    // the address the client sent to (a pool address on a wildcard listener)
  UniqueFd server;  // empty: the flow was not relayed (rec.result says why)
  FlowRecord rec;
  uint64_t start_ms = 0;
  uint64_t last_ms = 0;
  uint64_t dropped = 0;  // datagrams that could not be sent at once
  uint64_t flow_id = 0;  // the kernel's id of the flow (0: not redirected)
  std::string result = "ok";
  ErrorKind kind = ErrorKind::None;
  std::list<UdpSession*>::iterator lru;
};

class UdpRelay {
 public:
  struct Options {
    std::string name;
    bool propagate = true;
    unsigned idle_timeout_ms = 30000;
    unsigned max_flows = 4096;
    std::optional<Address> upstream;  // for flows connredir did not redirect
  };
  struct Hooks {
    std::function<void()> flow_started;
    // Writes the flow's log line (result "ok" or what went wrong).
    std::function<void(FlowRecord&, uint64_t start_ms, const std::string& result, ErrorKind)>
        flow_ended;
    std::function<void(uint64_t up, uint64_t down)> bytes;  // relayed, as they go
  };

  UdpRelay(Options opt, Hooks hooks);
  ~UdpRelay();
  UdpRelay(const UdpRelay&) = delete;
  UdpRelay& operator=(const UdpRelay&) = delete;

  // Binds a UDP socket at `addr` and, if `addr` is not the wildcard, one at
  // the wildcard of its family and port, and adds them to epoll `ep` with
  // user data (listener pointer | tag). Returns "" or an error that says
  // what to do; `warn` gets what works only in part (no wildcard socket:
  // unconnected sends cannot reach this proxy).
  std::string listen(const Address& addr, int ep, uint64_t tag, std::string* warn = nullptr);
  // Tag for the onward sockets' epoll user data (session pointer | tag).
  void set_server_tag(uint64_t tag) { server_tag_ = tag; }

  void on_listener(UdpListener* l, uint64_t now_ms);
  void on_server(UdpSession* s, uint64_t now_ms);
  // Ends flows idle past the timeout. Returns the next deadline (ms since
  // the epoch of now_ms), or UINT64_MAX if none.
  void expire(uint64_t now_ms);
  uint64_t next_deadline() const;
  // Ends every flow (proxy stopping).
  void shutdown(uint64_t now_ms);
  size_t flows() const { return sessions_.size(); }
  const std::vector<std::unique_ptr<UdpListener>>& listeners() const { return listeners_; }

 private:
  using Key =
      std::tuple<const UdpListener*, std::array<uint8_t, 16>, uint16_t, std::array<uint8_t, 16>>;
  static Key key_of(const UdpListener* l, const Address& client, const Address& local) {
    return Key{l, client.ip, client.port, local.ip};
  }
  std::string add_listener(const Address& addr, uint64_t tag);
  UdpSession* open_session(UdpListener* l, const Address& client, const Address& local,
                           uint64_t now_ms);
  bool same_flow(const UdpSession* s) const;
  ssize_t reply(const UdpSession* s, size_t n);
  void end(UdpSession* s, uint64_t now_ms);
  void touch(UdpSession* s, uint64_t now_ms);
  void fail(UdpSession* s, std::string result, ErrorKind kind);

  Options opt_;
  Hooks hooks_;
  int ep_ = -1;
  uint64_t server_tag_ = 0;
  std::vector<std::unique_ptr<UdpListener>> listeners_;
  std::map<Key, std::unique_ptr<UdpSession>> sessions_;
  std::list<UdpSession*> lru_;  // least recently active first
  std::vector<uint8_t> buf_;
};

}  // namespace connredir::proxy
