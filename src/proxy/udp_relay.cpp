#include "udp_relay.hpp"

#include "bind_local.hpp"

#include <errno.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cstdio>
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

std::string UdpRelay::listen(const Address& addr, int ep, uint64_t tag) {
  ep_ = ep;
  auto l = std::make_unique<UdpListener>();
  l->addr = addr;
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
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = reinterpret_cast<uint64_t>(l.get()) | tag;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, l->fd.get(), &ev) != 0)
    return what + "epoll_ctl: " + errno_text(errno);
  listeners_.push_back(std::move(l));
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

UdpSession* UdpRelay::open_session(UdpListener* l, const Address& client, uint64_t now_ms) {
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
  s->start_ms = s->last_ms = now_ms;
  s->rec.name = opt_.name;
  s->rec.listen = l->text;
  s->rec.client = client.to_string();
  s->rec.proto = "udp";
  s->lru = lru_.insert(lru_.end(), s);
  sessions_[Key{l, client.ip, client.port}] = std::move(owned);
  if (hooks_.flow_started) hooks_.flow_started();

  auto flow = udp_flow(l->fd.get(), client);
  if (!flow) {
    const int e = flow.error().code;
    if (e == ENOENT || e == EOPNOTSUPP || e == ENOPROTOOPT)
      fail(s, "not redirected", ErrorKind::NotRedirected);
    else
      fail(s, "querying the UDP flow failed: " + flow.error().message, ErrorKind::Records);
    return s;
  }
  describe_flow(s->rec, flow->records, &flow->context);
  s->flow_id = flow->context.flow_id;
  const Address& dst = flow->context.orig_dst;
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
  if (opt_.propagate) {
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
  for (int i = 0; i < kBatch; ++i) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    // recvfrom with the source asked for: that is what lets connredir
    // publish a new client's flow for udp_flow() below.
    const ssize_t n = recvfrom(l->fd.get(), buf_.data(), buf_.size(), MSG_DONTWAIT,
                               reinterpret_cast<sockaddr*>(&peer), &plen);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN; or an ICMP error queued on the socket: nothing to relay
    }
    auto client = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&peer), plen);
    if (!client) continue;
    auto it = sessions_.find(Key{l, client->ip, client->port});
    UdpSession* s = it != sessions_.end() ? it->second.get() : nullptr;
    if (s) {
      // The same address, but is it the same flow? (udp_relay.hpp)
      auto id = udp_flow_id(l->fd.get(), *client);
      if ((id ? *id : 0) != s->flow_id) {
        end(s, now_ms);
        s = nullptr;
      }
    }
    if (!s) s = open_session(l, *client, now_ms);
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
    sockaddr_storage cs{};
    const socklen_t clen = s->client.to_sockaddr(cs);
    if (sendto(s->listener->fd.get(), buf_.data(), static_cast<size_t>(n), MSG_DONTWAIT,
               reinterpret_cast<sockaddr*>(&cs), clen) < 0) {
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
  sessions_.erase(Key{s->listener, s->client.ip, s->client.port});
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
