// The socket-option contract (docs/ABI.md), errno by errno, with raw
// syscalls on real redirected sockets.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>
#include <sstream>

#include "connredir/address.hpp"
#include "connredir/client.hpp"
#include "connredir/records.hpp"
#include "harness.hpp"
#include "harness_load.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::test {
namespace {

constexpr int kAppUid = 1000;
constexpr int kProxyUid = 4001;
constexpr int kStrangerUid = 4999;

// "name=errno-name" lines, so a failed expectation shows everything.
std::string errname(int rc, int err) { return rc == 0 ? "OK" : strerrorname_np(err); }

class Contract : public KernelTest {
 protected:
  void setup_vendor(const EchoServer& dst, const std::string& proxy, const std::string& cidr) {
    add_redirect("vendor-a", proxy, kProxyUid, cidr, dst.port(), {"--context", "tenant=blue"});
  }
};

std::string get_opt(int fd, int level, int name, std::vector<uint8_t>& out, socklen_t len) {
  out.assign(len, 0);
  socklen_t l = len;
  int rc = getsockopt(fd, level, name, out.data(), &l);
  int e = errno;
  if (rc == 0) out.resize(l);
  return errname(rc, e);
}

std::string set_records_raw(int fd, const void* p, socklen_t len) {
  int rc = setsockopt(fd, SOL_CONNREDIR, CONNREDIR_RECORDS, p, len);
  return errname(rc, errno);
}

TEST_F(Contract, QueriesOnARedirectedSocket) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst, "127.0.0.1:15001", "127.0.0.1/32");
  uint32_t cid = callout_id("vendor-a");
  std::string r = probe("127.0.0.1:15001", kProxyUid, dst.addr(), [&](int c) {
    std::ostringstream o;
    std::vector<uint8_t> rec, ctx, tiny;
    o << "records=" << get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, rec, CONNREDIR_RECORDS_MAX)
      << " size=" << rec.size();
    auto info = decode_records(rec);
    if (info)
      o << " hops=" << info->hops.size() << " callout=" << info->hops[0].callout_id
        << " hopdst=" << info->hops[0].dst.to_string();
    o << " context=" << get_opt(c, SOL_CONNREDIR, CONNREDIR_CONTEXT, ctx, CONNREDIR_CONTEXT_MAX);
    auto cx = decode_context(ctx);
    if (cx) {
      o << " orig_dst=" << cx->orig_dst.to_string() << " ccallout=" << cx->callout_id
        << " hop=" << int(cx->hop) << " user=" << std::string(cx->user.begin(), cx->user.end())
        << " uid=" << cx->uid << " srcport_set=" << (cx->orig_src.port != 0);
    }
    o << " small_records="
      << get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, tiny, sizeof(connredir_records) - 1)
      << " small_context="
      << get_opt(c, SOL_CONNREDIR, CONNREDIR_CONTEXT, tiny, CONNREDIR_CONTEXT_SIZE - 1)
      << " unknown_opt=" << get_opt(c, SOL_CONNREDIR, 99, tiny, 64);
    // The one-call view is the two answers back to back, byte for byte.
    std::vector<uint8_t> view;
    o << " flow=" << get_opt(c, SOL_CONNREDIR, CONNREDIR_FLOW, view, 1024)
      << " flow_size=" << view.size();
    std::vector<uint8_t> both(rec);
    both.insert(both.end(), ctx.begin(), ctx.end());
    o << " flow_is_both=" << (view == both) << " small_flow="
      << get_opt(c, SOL_CONNREDIR, CONNREDIR_FLOW, tiny, sizeof(connredir_flow_view) - 1);
    auto lib = query_flow(c);
    o << " lib_flow=" << (lib ? "OK" : lib.error().message);
    if (lib)
      o << " lib_same="
        << (lib->records == rec && lib->context_raw == ctx && cx &&
            lib->context.orig_dst == cx->orig_dst);
    std::vector<uint8_t> sin;
    o << " sodst=" << get_opt(c, SOL_IP, CONNREDIR_SO_ORIGINAL_DST, sin, sizeof(sockaddr_in));
    auto od = Address::from_sockaddr(reinterpret_cast<sockaddr*>(sin.data()), sin.size());
    if (od) o << " sodst_addr=" << od->to_string();
    return o.str();
  });
  std::ostringstream want;
  want << "records=OK size=" << sizeof(connredir_records) << " hops=1 callout=" << cid
       << " hopdst=" << dst.addr() << " context=OK orig_dst=" << dst.addr() << " ccallout=" << cid
       << " hop=1 user=tenant=blue uid=" << kAppUid
       << " srcport_set=1 small_records=ENOBUFS small_context=ENOBUFS unknown_opt=ENOPROTOOPT"
       << " flow=OK flow_size=" << sizeof(connredir_flow_view)
       << " flow_is_both=1 small_flow=ENOBUFS lib_flow=OK lib_same=1"
       << " sodst=OK sodst_addr=" << dst.addr();
  EXPECT_EQ(r, want.str());
}

TEST_F(Contract, OriginalDstIPv6) {
  EchoServer dst("[::1]:0");
  setup_vendor(dst, "[::1]:15001", "::1/128");
  std::string r = probe("[::1]:15001", kProxyUid, dst.addr(), [&](int c) {
    std::vector<uint8_t> sin6;
    std::string e =
        get_opt(c, SOL_IPV6, CONNREDIR_IP6T_SO_ORIGINAL_DST, sin6, sizeof(sockaddr_in6));
    auto od = Address::from_sockaddr(reinterpret_cast<sockaddr*>(sin6.data()), sin6.size());
    return e + " " + (od ? od->to_string() : od.error().message);
  });
  EXPECT_EQ(r, "OK " + dst.addr());
}

TEST_F(Contract, SetRecordsAcceptsGenuineAndRejectsForgedAlteredTruncated) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst, "127.0.0.1:15001", "127.0.0.1/32");
  std::string r = probe("127.0.0.1:15001", kProxyUid, dst.addr(), [&](int c) {
    std::ostringstream o;
    std::vector<uint8_t> rec;
    get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, rec, CONNREDIR_RECORDS_MAX);
    auto fresh = [] { return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); };
    int s = fresh();
    o << "genuine=" << set_records_raw(s, rec.data(), rec.size());
    close(s);
    // Every single flipped byte is rejected (one bit each, whole blob).
    int accepted = 0;
    for (size_t i = 0; i < rec.size(); i++) {
      auto bad = rec;
      bad[i] ^= static_cast<uint8_t>(1u << (i % 8));
      s = fresh();
      if (set_records_raw(s, bad.data(), bad.size()) != "EINVAL") accepted++;
      close(s);
    }
    o << " flipped_not_rejected=" << accepted;
    // The same through a UDP socket (records for a flow of datagrams).
    accepted = 0;
    for (size_t i = 0; i < rec.size(); i++) {
      auto bad = rec;
      bad[i] ^= static_cast<uint8_t>(1u << ((i + 3) % 8));
      const int d = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (set_records_raw(d, bad.data(), bad.size()) != "EINVAL") accepted++;
      close(d);
    }
    o << " udp_flipped_not_rejected=" << accepted;
    std::mt19937 rng(42);
    int forged_ok = 0;
    for (int k = 0; k < 2000; k++) {
      auto forged = rec;
      // Keep the header plausible so the MAC is what rejects it.
      for (size_t i = 24; i < forged.size(); i++) forged[i] = static_cast<uint8_t>(rng());
      s = fresh();
      if (set_records_raw(s, forged.data(), forged.size()) != "EINVAL") forged_ok++;
      close(s);
    }
    o << " forged_not_rejected=" << forged_ok;
    s = fresh();
    o << " truncated=" << set_records_raw(s, rec.data(), rec.size() - 1);
    std::vector<uint8_t> big(rec);
    big.resize(rec.size() + 8);
    o << " oversized=" << set_records_raw(s, big.data(), big.size());
    o << " empty=" << set_records_raw(s, rec.data(), 0);
    close(s);
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    o << " udp=" << set_records_raw(u, rec.data(), rec.size());
    close(u);
    // Neither TCP nor UDP: not ours to carry records.
    int un = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    o << " unix=" << set_records_raw(un, rec.data(), rec.size());
    close(un);
    // A connected socket: connect to our own listener's port (no filter
    // matches it), accepted without redirect -> ENOENT on the accepted side.
    int cc = connect_to("127.0.0.1:15001");
    o << " connected=" << set_records_raw(cc, rec.data(), rec.size());
    close(cc);
    return o.str();
  });
  EXPECT_EQ(r,
            "genuine=OK flipped_not_rejected=0 udp_flipped_not_rejected=0 forged_not_rejected=0 "
            "truncated=EINVAL "
            "oversized=EINVAL empty=EINVAL udp=OK unix=EOPNOTSUPP connected=EISCONN");
  auto s = stats();
  EXPECT_GE(s["records_rejected"], 2000u + 2 * sizeof(connredir_records));
}

TEST_F(Contract, NotRedirectedSocketIsENOENT) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst, "127.0.0.1:15001", "127.0.0.1/32");
  // The app connects straight to the probe's port: no filter matches it.
  std::string r = probe("127.0.0.1:15001", kProxyUid, "127.0.0.1:15001", [&](int c) {
    std::vector<uint8_t> out;
    auto lib = query_flow(c);
    return get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, out, CONNREDIR_RECORDS_MAX) + " " +
           get_opt(c, SOL_CONNREDIR, CONNREDIR_CONTEXT, out, CONNREDIR_CONTEXT_MAX) + " " +
           get_opt(c, SOL_CONNREDIR, CONNREDIR_FLOW, out, 1024) + " " +
           (lib ? std::string("OK") : strerrorname_np(lib.error().code));
  });
  EXPECT_EQ(r, "ENOENT ENOENT ENOENT ENOENT");
}

// The kernel caches who is a principal per (uid, cgroup). An authorization
// (by uid or cgroup) or a callout's principal takes effect at the next call
// of a caller that was refused a moment before, and a withdrawal at once:
// every change bumps the generation the cache trusts.
TEST_F(Contract, PrincipalChangesTakeEffectAtOnceDespiteTheCache) {
  auto query = [&](int uid) {
    return run_in(cg("app"), uid, [] {
      int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      std::vector<uint8_t> out;
      std::string r = get_opt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, out, CONNREDIR_RECORDS_MAX);
      close(s);
      return r;
    });
  };
  // Authorized: the query gets past the gate (no flow on the socket: ENOENT).
  EXPECT_EQ(query(kStrangerUid), "EACCES");
  cli({"authorize", "--uid", std::to_string(kStrangerUid)});
  EXPECT_EQ(query(kStrangerUid), "ENOENT");
  cli({"authorize", "--uid", std::to_string(kStrangerUid), "--remove"});
  EXPECT_EQ(query(kStrangerUid), "EACCES");

  EXPECT_EQ(query(kStrangerUid + 1), "EACCES");
  cli({"authorize", "--cgroup", cg("app")});
  EXPECT_EQ(query(kStrangerUid + 1), "ENOENT");
  cli({"authorize", "--cgroup", cg("app"), "--remove"});
  EXPECT_EQ(query(kStrangerUid + 1), "EACCES");

  EXPECT_EQ(query(kProxyUid), "EACCES");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy-uid",
       std::to_string(kProxyUid)});
  EXPECT_EQ(query(kProxyUid), "ENOENT");
  cli({"callout", "del", "vendor-a"});
  EXPECT_EQ(query(kProxyUid), "EACCES");
}

TEST_F(Contract, UnprivilegedProcessIsRefused) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst, "127.0.0.1:15001", "127.0.0.1/32");
  // A stranger cannot even listen at the proxy address (bind guard), so the
  // listener is made as root and the process then becomes the stranger
  // before it accepts: it holds a genuinely redirected socket, and is refused.
  std::string r = probe("127.0.0.1:15001", -1, dst.addr(), [&](int c) {
    if (setgid(kStrangerUid) != 0 || setuid(kStrangerUid) != 0) return std::string("setuid");
    std::vector<uint8_t> out;
    std::vector<uint8_t> blob(sizeof(connredir_records), 0);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    std::string set = set_records_raw(s, blob.data(), blob.size());
    close(s);
    return get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, out, CONNREDIR_RECORDS_MAX) + " " +
           get_opt(c, SOL_CONNREDIR, CONNREDIR_CONTEXT, out, CONNREDIR_CONTEXT_MAX) + " " +
           get_opt(c, SOL_CONNREDIR, CONNREDIR_FLOW, out, 1024) + " " + set;
  });
  EXPECT_EQ(r, "EACCES EACCES EACCES EACCES");
  EXPECT_GE(stats()["denied"], 4u);
}

TEST_F(Contract, AuthorizedCgroupMayQuery) {
  EchoServer dst("127.0.0.1:0");
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst.port())});
  cli({"authorize", "--cgroup", cg("vendor-a")});
  std::string r = probe("127.0.0.1:15001", kStrangerUid, dst.addr(), [&](int c) {
    std::vector<uint8_t> out;
    return get_opt(c, SOL_CONNREDIR, CONNREDIR_RECORDS, out, CONNREDIR_RECORDS_MAX);
  });
  EXPECT_EQ(r, "OK");
}

TEST_F(Contract, OnlyPrincipalsMayListenAtAProxyAddress) {
  cli({"callout", "add", "vendor-a", "--proxy", "127.0.0.1:15001", "--proxy", "[::1]:15001",
       "--proxy-uid", std::to_string(kProxyUid)});
  auto try_bind = [](const std::string& where) {
    auto a = Address::parse(where);
    sockaddr_storage ss{};
    socklen_t len = a->to_sockaddr(ss);
    int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // earlier tests' TIME_WAIT
    int rc = bind(fd, reinterpret_cast<sockaddr*>(&ss), len);
    std::string r = rc == 0 ? "OK" : strerrorname_np(errno);
    close(fd);
    return r;
  };
  auto attempts = [&] {
    return try_bind("127.0.0.1:15001") + " " + try_bind("0.0.0.0:15001") + " " +
           try_bind("[::1]:15001") + " " + try_bind("[::]:15001") + " " +
           try_bind("127.0.0.1:15002");
  };
  // A stranger in the policed cgroup cannot take the proxy's place...
  EXPECT_EQ(run_in(cg("app"), kStrangerUid, attempts), "EACCES EACCES EACCES EACCES OK");
  // ...the callout's principal (and root) can.
  EXPECT_EQ(run_in(cg("vendor-a"), kProxyUid, attempts), "OK OK OK OK OK");
  EXPECT_EQ(run_in(cg("app"), -1, attempts), "OK OK OK OK OK");
  EXPECT_GE(stats()["denied"], 4u);
}

TEST_F(Contract, ReconnectElsewhereAfterAFailedRedirectIsNotAProxiedFlow) {
  EchoServer dst("127.0.0.1:0");
  EchoServer other("127.0.0.1:0");
  // The proxy is down: the redirected connect fails; the app then connects
  // the same socket to a destination no filter covers. (A routable proxy
  // address with no listener here counts as another namespace's, so the
  // connect is redirected and fails at the SYN.)
  LoAddress routable("10.237.9.1/32");
  cli({"callout", "add", "vendor-a", "--proxy", "10.237.9.1:15001"});
  cli({"filter", "add", "--callout", "vendor-a", "--dst", "127.0.0.1/32", "--port",
       std::to_string(dst.port())});
  std::string d = dst.addr(), o = other.addr();
  std::string r = run_in(cg("app"), kAppUid, [&]() -> std::string {
    auto a = Address::parse(d), b = Address::parse(o);
    sockaddr_storage sa{}, sb{};
    socklen_t la = a->to_sockaddr(sa), lb = b->to_sockaddr(sb);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    std::string first = connect(fd, reinterpret_cast<sockaddr*>(&sa), la) == 0
                            ? "connected?!"
                            : strerrorname_np(errno);
    std::string second =
        connect(fd, reinterpret_cast<sockaddr*>(&sb), lb) == 0 ? "OK" : strerrorname_np(errno);
    sockaddr_storage p{};
    socklen_t pl = sizeof p;
    getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl);
    auto peer = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&p), pl);
    std::string out = first + " " + second + " " + (peer ? peer->to_string() : "?");
    close(fd);
    return out;
  });
  EXPECT_EQ(r, "ECONNREFUSED OK " + o);
  auto s = stats();
  EXPECT_EQ(s["redirected"], 1u);
  EXPECT_EQ(s["published"], 1u);  // the first attempt only
}

TEST_F(Contract, NotLoadedGivesTheKernelsOwnErrors) {
  // This process is outside the test cgroup: no connredir hooks apply.
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::vector<uint8_t> out;
  std::vector<uint8_t> blob(sizeof(connredir_records), 0);
  EXPECT_EQ(get_opt(s, SOL_CONNREDIR, CONNREDIR_RECORDS, out, CONNREDIR_RECORDS_MAX), "EOPNOTSUPP");
  EXPECT_EQ(set_records_raw(s, blob.data(), blob.size()), "ENOPROTOOPT");
  close(s);
}

// A redirected client that is established while its proxy never adopted
// the flow keeps only its brief (lib/brief.h), and the brief must still
// withdraw the hand-off entry when the client closes, or each such flow
// would leave an entry in the host-wide map until it filled. The proxy's
// listener sets TCP_DEFER_ACCEPT: the kernel answers the handshake, so the
// client is established, but makes no child socket (no
// PASSIVE_ESTABLISHED, no adoption) until data arrives, and none does.
TEST_F(Contract, UnadoptedHandoffIsWithdrawnWhenAnEstablishedClientCloses) {
  EchoServer dst("127.0.0.1:0");
  setup_vendor(dst, "127.0.0.1:15001", "127.0.0.1/32");
  const std::string up = dir_ + "/client-up", done = dir_ + "/client-close";
  const std::string proxy_done = dir_ + "/proxy-close";
  auto proxy = fork_in(cg("vendor-a"), kProxyUid, [&]() -> std::string {
    int l = listen_on("127.0.0.1:15001");
    if (l < 0) return std::string("listen: ") + strerror(errno);
    int secs = 60;
    if (setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof secs) != 0)
      return std::string("TCP_DEFER_ACCEPT: ") + strerror(errno);
    for (int i = 0; i < 600 && !exists(proxy_done); i++) usleep(50000);
    close(l);
    return "ok";
  });
  ASSERT_TRUE(wait_listening(15001));
  ASSERT_EQ(map_count(pin_dir_, "handoff"), 0);
  auto app = fork_in(cg("app"), kAppUid, [&]() -> std::string {
    int fd = connect_to(dst.addr());
    if (fd < 0) return std::string("connect: ") + strerror(errno);
    sockaddr_storage p{};
    socklen_t pl = sizeof p;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&p), &pl) != 0)
      return std::string("getpeername: ") + strerror(errno);
    auto peer = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&p), pl);
    touch(up);
    for (int i = 0; i < 600 && !exists(done); i++) usleep(50000);
    // A reset, not a FIN: a FIN would make the kernel create the proxy's
    // socket (a FIN is not the bare ACK that TCP_DEFER_ACCEPT drops), which
    // would adopt the entry and hide a missing withdrawal.
    linger lg{1, 0};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
      return std::string("SO_LINGER: ") + strerror(errno);
    close(fd);
    return peer ? peer->to_string() : peer.error().message;
  });
  ASSERT_TRUE(eventually([&] { return exists(up); }, 20000)) << "the app never connected";
  // Established and briefed, the flow still waiting for its proxy.
  EXPECT_EQ(map_count(pin_dir_, "handoff"), 1);
  auto flows = cli_json({"flows", "--json"});
  int briefs = 0;
  for (auto& f : flows)
    if (f.value("kept", "") == "brief" && f.value("orig_dst", "") == dst.addr()) briefs++;
  EXPECT_EQ(briefs, 1) << flows.dump();
  touch(done);
  // getpeername answered from the brief: the original destination.
  EXPECT_EQ(app->wait(20000), dst.addr());
  EXPECT_TRUE(eventually([&] { return map_count(pin_dir_, "handoff") == 0; }, 5000))
      << map_count(pin_dir_, "handoff") << " hand-off entries after the client closed";
  auto s = stats();
  EXPECT_EQ(s["published"], 1u);
  EXPECT_EQ(s["accepted"], 0u);
  touch(proxy_done);
  EXPECT_EQ(proxy->wait(40000), "ok");
}

}  // namespace
}  // namespace connredir::test
