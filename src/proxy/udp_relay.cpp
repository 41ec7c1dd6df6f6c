#include "udp_relay.hpp"

#include "bind_local.hpp"

#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <optional>
#include <utility>

#include "connredir/client.hpp"
#include "connredir/error.hpp"

namespace connredir::proxy {

namespace {

// Datagrams handled per readiness event before the loop serves others.
constexpr int kBatch = 64;
// The largest UDP payload.
constexpr size_t kMaxDatagram = 65535;

bool transient(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

}  // namespace

UdpRelay::UdpRelay(Options opt, Hooks hooks)
    : opt_(std::move(opt)), hooks_(std::move(hooks)), buf_(kMaxDatagram) {}

UdpRelay::~UdpRelay() = default;

std::string UdpRelay::add_listener(const Address& addr, uint64_t tag) {
  auto l = std::make_unique<UdpListener>();
  const std::string what = "listening for UDP on " + addr.to_string() + " failed: ";
  auto bound = bind_local(addr, SOCK_DGRAM);
  if (!bound) {
    const int e = bound.error().code;
    return what + bound.error().message +
           (e == EACCES   ? "; only the callout's proxy principal may bind its proxy address: run "
                            "the proxy as that uid or in that cgroup"
            : e == EMFILE ? "; raise the descriptor limit"
                          : "; check the --listen address (is the UDP port in use?)");
  }
  l->fd = std::move(bound->fd);
  l->addr = bound->addr;
  l->text = l->addr.to_string();
  l->any = std::all_of(l->addr.ip.begin() + (l->addr.is_v4() ? 12 : 0), l->addr.ip.end(),
                       [](uint8_t b) { return b == 0; });
  if (l->any) {
    // The local address of each datagram names its flow (a pool address).
    const int one = 1;
    const bool v4 = l->addr.is_v4();
    if (setsockopt(l->fd.get(), v4 ? IPPROTO_IP : IPPROTO_IPV6, v4 ? IP_PKTINFO : IPV6_RECVPKTINFO,
                   &one, sizeof one) != 0)
      return what + (v4 ? "IP_PKTINFO: " : "IPV6_RECVPKTINFO: ") + errno_text(errno);
    // Replies leave from the pool address, which is routed here but not
    // assigned to an interface: IPv6 accepts such a source only with
    // freebind (IPv4's pool is inside 127.0.0.0/8, local as a whole).
    if (!v4 && setsockopt(l->fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof one) != 0)
      return what + "IPV6_FREEBIND: " + errno_text(errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = reinterpret_cast<uint64_t>(l.get()) | tag;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, l->fd.get(), &ev) != 0)
    return what + "epoll_ctl: " + errno_text(errno);
  listeners_.push_back(std::move(l));
  return {};
}

std::string UdpRelay::listen(const Address& addr, int ep, uint64_t tag, std::string* warn) {
  ep_ = ep;
  if (auto err = add_listener(addr, tag); !err.empty()) return err;
  const Address bound = listeners_.back()->addr;
  if (listeners_.back()->any) return {};
  Address any{bound.family, {}, bound.port};
  if (any.is_v4()) any.ip[10] = any.ip[11] = 0xff;  // 0.0.0.0, stored v4-mapped
  if (auto err = add_listener(any, tag); !err.empty() && warn)
    *warn = err +
            "; unconnected UDP sends (sendto) redirected to this proxy will not reach it, "
            "connected ones will";
  return {};
}

void UdpRelay::touch(UdpSession* s, uint64_t now_ms) {
  s->last_ms = now_ms;
  lru_.splice(lru_.end(), lru_, s->lru);
}

void UdpRelay::fail(UdpSession* s, std::string result, ErrorKind kind) {
  if (s->server) {
    epoll_ctl(ep_, EPOLL_CTL_DEL, s->server.get(), nullptr);
    s->server.reset();
  }
  if (s->kind == ErrorKind::None) {
    s->result = std::move(result);
    s->kind = kind;
  }
}

bool UdpRelay::same_flow(const UdpSession* s) const {
  const int fd = s->listener->fd.get();
  if (s->flow_id == 0) {  // not redirected (or --udp-upstream): is it still not?
    auto id = s->listener->any ? udp_flow_id(fd, s->client, s->local) : udp_flow_id(fd, s->client);
    return !id;
  }
  auto same = s->listener->any ? udp_flow_unchanged(fd, s->client, s->local, s->flow_id)
                               : udp_flow_unchanged(fd, s->client, s->flow_id);
  return same && *same;
}

UdpSession* UdpRelay::open_session(UdpListener* l, const Address& client, const Address& local,
                                   uint64_t now_ms) {
  while (sessions_.size() >= opt_.max_flows && !lru_.empty()) {
    UdpSession* old = lru_.front();
    fail(old, "ended early: --max-udp-flows reached, the least recently active flow made room",
         ErrorKind::Resources);
    end(old, now_ms);
  }
  auto owned = std::make_unique<UdpSession>();
  UdpSession* s = owned.get();
  s->listener = l;
  s->client = client;
  s->local = local;
  s->start_ms = s->last_ms = now_ms;
  s->rec.name = opt_.name;
  s->rec.listen = l->any ? local.to_string() : l->text;
  s->rec.client = client.to_string();
  s->rec.proto = "udp";
  s->lru = lru_.insert(lru_.end(), s);
  sessions_[key_of(l, client, local)] = std::move(owned);
  if (hooks_.flow_started) hooks_.flow_started();

  auto flow = l->any ? udp_flow(l->fd.get(), client, local) : udp_flow(l->fd.get(), client);
  const int e = flow ? 0 : flow.error().code;
  const bool not_redirected = e == ENOENT || e == EOPNOTSUPP || e == ENOPROTOOPT;
  if (!flow && !(not_redirected && opt_.upstream)) {
    if (not_redirected)
      fail(s, "not redirected", ErrorKind::NotRedirected);
    else
      fail(s, "querying the UDP flow failed: " + flow.error().message, ErrorKind::Records);
    return s;
  }
  if (flow) {
    describe_flow(s->rec, flow->records, &flow->context);
    s->flow_id = flow->context.flow_id;
  } else {
    s->rec.orig_dst = opt_.upstream->to_string();  // --udp-upstream: no records to carry
  }
  const Address& dst = flow ? flow->context.orig_dst : *opt_.upstream;
  if (dst.family == 0) {
    fail(s, "redirected, but the original destination is unknown (context has none)",
         ErrorKind::NoDestination);
    return s;
  }
  UniqueFd out(socket(dst.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!out) {
    fail(s,
         "creating the outgoing socket failed: " + errno_text(errno) +
             "; raise the descriptor limit (ulimit -n) or lower --max-udp-flows",
         ErrorKind::Resources);
    return s;
  }
  if (opt_.propagate && flow) {
    if (auto r = set_records(out.get(), flow->records); !r) {
      // Sending without the records could loop the flow back here.
      fail(s,
           "setting the redirect records on the outgoing socket failed, not sending: " +
               r.error().message,
           ErrorKind::Records);
      return s;
    }
    s->rec.propagated = true;
  }
  sockaddr_storage ds{};
  const socklen_t dlen = dst.to_sockaddr(ds);
  if (connect(out.get(), reinterpret_cast<sockaddr*>(&ds), dlen) != 0) {
    const int e = errno;
    fail(s, "connecting to " + dst.to_string() + " failed: " + errno_text(e),
         e == ECONNREFUSED ? ErrorKind::ConnectRefused : ErrorKind::ConnectFailed);
    return s;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = reinterpret_cast<uint64_t>(s) | server_tag_;
  if (epoll_ctl(ep_, EPOLL_CTL_ADD, out.get(), &ev) != 0) {
    fail(s, "epoll_ctl(server) failed: " + errno_text(errno), ErrorKind::Resources);
    return s;
  }
  s->server = std::move(out);
  return s;
}

void UdpRelay::on_listener(UdpListener* l, uint64_t now_ms) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))];
  for (int i = 0; i < kBatch; ++i) {
    sockaddr_storage peer{};
    iovec iov{buf_.data(), buf_.size()};
    msghdr msg{};
    msg.msg_name = &peer;
    msg.msg_namelen = sizeof peer;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    // With the source asked for: that is what lets connredir publish a
    // connected client's flow for udp_flow() below.
    const ssize_t n = recvmsg(l->fd.get(), &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN; or an ICMP error queued on the socket: nothing to relay
    }
    auto client = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&peer), msg.msg_namelen);
    if (!client) continue;
    Address local = l->addr;
    if (l->any) {
      auto a = datagram_local_address(msg, l->addr.port);
      if (!a) continue;  // no IP_PKTINFO: cannot tell the flow (never seen)
      local = *a;
    }
    auto it = sessions_.find(key_of(l, *client, local));
    UdpSession* s = it != sessions_.end() ? it->second.get() : nullptr;
    if (s) {
      // The same address, but is it the same flow? (udp_relay.hpp)
      if (!same_flow(s)) {
        end(s, now_ms);
        s = nullptr;
      }
    }
    if (!s) s = open_session(l, *client, local, now_ms);
    touch(s, now_ms);
    if (!s->server) {
      ++s->dropped;
      continue;
    }
    if (send(s->server.get(), buf_.data(), static_cast<size_t>(n), MSG_DONTWAIT) < 0) {
      const int e = errno;
      if (transient(e) || e == ENOBUFS) {
        ++s->dropped;
      } else {
        // ECONNREFUSED: an ICMP port unreachable from an earlier datagram.
        fail(s, "sending to " + s->rec.orig_dst.value_or("?") + " failed: " + errno_text(e),
             e == ECONNREFUSED ? ErrorKind::ConnectRefused : ErrorKind::ServerError);
      }
      continue;
    }
    s->rec.bytes_up += static_cast<uint64_t>(n);
    if (hooks_.bytes) hooks_.bytes(static_cast<uint64_t>(n), 0);
  }
}

// A reply to the session's client, from the address the client sent to
// (on a wildcard listener, the pool address: IP_PKTINFO / IPV6_PKTINFO
// names the source, so the client's kernel maps it back to the
// destination).
ssize_t UdpRelay::reply(const UdpSession* s, size_t n) {
  sockaddr_storage cs{};
  const socklen_t clen = s->client.to_sockaddr(cs);
  iovec iov{buf_.data(), n};
  msghdr msg{};
  msg.msg_name = &cs;
  msg.msg_namelen = clen;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))]{};
  if (s->listener->any) {
    msg.msg_control = control;
    cmsghdr* c = reinterpret_cast<cmsghdr*>(control);
    if (s->local.is_v4()) {
      in_pktinfo pi{};
      std::memcpy(&pi.ipi_spec_dst, &s->local.ip[12], 4);
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof pi);
      std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
      msg.msg_controllen = CMSG_SPACE(sizeof pi);
    } else {
      in6_pktinfo pi{};
      std::memcpy(&pi.ipi6_addr, s->local.ip.data(), 16);
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof pi);
      std::memcpy(CMSG_DATA(c), &pi, sizeof pi);
      msg.msg_controllen = CMSG_SPACE(sizeof pi);
    }
  }
  return sendmsg(s->listener->fd.get(), &msg, MSG_DONTWAIT);
}

void UdpRelay::on_server(UdpSession* s, uint64_t now_ms) {
  for (int i = 0; i < kBatch && s->server; ++i) {
    const ssize_t n = recv(s->server.get(), buf_.data(), buf_.size(), MSG_DONTWAIT);
    if (n < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      if (transient(e)) return;
      fail(s, "receiving from " + s->rec.orig_dst.value_or("?") + " failed: " + errno_text(e),
           e == ECONNREFUSED ? ErrorKind::ConnectRefused : ErrorKind::ServerError);
      return;
    }
    touch(s, now_ms);
    if (reply(s, static_cast<size_t>(n)) < 0) {
      ++s->dropped;
      continue;
    }
    s->rec.bytes_down += static_cast<uint64_t>(n);
    if (hooks_.bytes) hooks_.bytes(0, static_cast<uint64_t>(n));
  }
}

void UdpRelay::end(UdpSession* s, uint64_t now_ms) {
  fail(s, "ok", ErrorKind::None);
  lru_.erase(s->lru);
  FlowRecord rec = std::move(s->rec);
  rec.dropped = s->dropped;
  const std::string result = s->result;
  const uint64_t start = s->start_ms;
  const ErrorKind kind = s->kind;
  sessions_.erase(key_of(s->listener, s->client, s->local));
  (void)now_ms;
  if (hooks_.flow_ended) hooks_.flow_ended(rec, start, result, kind);
}

void UdpRelay::expire(uint64_t now_ms) {
  if (opt_.idle_timeout_ms == 0) return;
  while (!lru_.empty() && lru_.front()->last_ms + opt_.idle_timeout_ms <= now_ms)
    end(lru_.front(), now_ms);
}

uint64_t UdpRelay::next_deadline() const {
  if (lru_.empty() || opt_.idle_timeout_ms == 0) return UINT64_MAX;
  return lru_.front()->last_ms + opt_.idle_timeout_ms;
}

void UdpRelay::shutdown(uint64_t now_ms) {
  while (!lru_.empty()) end(lru_.front(), now_ms);
}

}  // namespace connredir::proxy
