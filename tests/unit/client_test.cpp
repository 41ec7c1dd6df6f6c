// Client calls against the real kernel with connredir NOT loaded for this
// cgroup (the normal state of a CI machine), as root or not. Where the answer
// would differ if connredir happened to be loaded, the test accepts both and
// checks that each errno carries its guidance.
#include "connredir/client.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <string>

#include "blobs.hpp"
#include "client_errors.hpp"

using namespace connredir;

namespace {

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

bool contains(const std::string& s, std::string_view needle) {
  return s.find(needle) != std::string::npos;
}

// Each errno a query may legitimately return must carry its specific advice.
void expect_guidance(const Error& e) {
  EXPECT_FALSE(e.message.empty());
  switch (e.code) {
    case EOPNOTSUPP:
    case ENOPROTOOPT:
      EXPECT_TRUE(contains(e.message, "connredir up --cgroup")) << e.message;
      break;
    case ENOENT:
      EXPECT_TRUE(contains(e.message, "not redirected by connredir")) << e.message;
      break;
    case EACCES:
      EXPECT_TRUE(contains(e.message, "connredir authorize --uid")) << e.message;
      break;
    case EINVAL:
      EXPECT_TRUE(contains(e.message, "query_records returned")) << e.message;
      break;
    default:
      ADD_FAILURE() << "unexpected errno " << e.code << ": " << e.message;
  }
}

std::string fmt_listen(const sockaddr_in& a) {
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

}  // namespace

TEST(Client, QueryOnFreshTcpSocket) {
  for (int family : {AF_INET, AF_INET6}) {
    Fd s(socket(family, SOCK_STREAM, 0));
    ASSERT_GE(s.fd, 0);
    auto r = query_records(s.fd);
    ASSERT_FALSE(r) << "fresh socket returned records";
    // Not loaded: the kernel's EOPNOTSUPP/ENOPROTOOPT for an unknown level.
    // Loaded: ENOENT (not redirected) or EACCES (not authorized).
    EXPECT_TRUE((std::set<int>{EOPNOTSUPP, ENOPROTOOPT, ENOENT, EACCES}).count(r.error().code))
        << r.error().code << ": " << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "query_records(fd ")) << r.error().message;
    expect_guidance(r.error());

    auto c = query_context(s.fd);
    ASSERT_FALSE(c);
    EXPECT_TRUE((std::set<int>{EOPNOTSUPP, ENOPROTOOPT, ENOENT, EACCES}).count(c.error().code))
        << c.error().message;
    expect_guidance(c.error());
    auto raw = query_context_raw(s.fd);
    ASSERT_FALSE(raw);
    EXPECT_EQ(raw.error().code, c.error().code);
  }
}

TEST(Client, SetOnFreshTcpSocket) {
  auto blob = testblobs::bytes(testblobs::records({1}));
  for (int family : {AF_INET, AF_INET6}) {
    Fd s(socket(family, SOCK_STREAM, 0));
    ASSERT_GE(s.fd, 0);
    auto r = set_records(s.fd, blob);
    ASSERT_FALSE(r) << "a hand-made blob was accepted";
    // Not loaded: ENOPROTOOPT. Loaded: the MAC cannot verify (EINVAL), or
    // the caller is not authorized (EACCES).
    EXPECT_TRUE((std::set<int>{ENOPROTOOPT, EINVAL, EACCES}).count(r.error().code))
        << r.error().code << ": " << r.error().message;
    EXPECT_TRUE(contains(r.error().message, "set_records(fd ")) << r.error().message;
    expect_guidance(r.error());
  }
}

TEST(Client, NotASocket) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  Fd rd(p[0]), wr(p[1]);
  auto q = query_records(rd.fd);
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error().code, ENOTSOCK);
  EXPECT_TRUE(contains(q.error().message, "not a socket")) << q.error().message;
  EXPECT_EQ(query_context(rd.fd).error().code, ENOTSOCK);
  EXPECT_EQ(set_records(rd.fd, std::vector<uint8_t>(8)).error().code, ENOTSOCK);
  auto o = original_destination(rd.fd);
  ASSERT_FALSE(o);
  EXPECT_EQ(o.error().code, ENOTSOCK);
  EXPECT_TRUE(contains(o.error().message, "original_destination(fd ")) << o.error().message;
}

TEST(Client, BadFd) {
  int fd = open("/dev/null", O_RDONLY);
  ASSERT_GE(fd, 0);
  close(fd);  // now a closed descriptor
  for (int bad : {-1, fd}) {
    auto q = query_records(bad);
    ASSERT_FALSE(q);
    EXPECT_EQ(q.error().code, EBADF);
    EXPECT_TRUE(contains(q.error().message, "not an open file descriptor")) << q.error().message;
    EXPECT_EQ(set_records(bad, {}).error().code, EBADF);
    EXPECT_EQ(original_destination(bad).error().code, EBADF);
  }
}

TEST(Client, OriginalDestinationOnUnixSocket) {
  Fd s(socket(AF_UNIX, SOCK_STREAM, 0));
  ASSERT_GE(s.fd, 0);
  auto o = original_destination(s.fd);
  ASSERT_FALSE(o);
  EXPECT_EQ(o.error().code, EAFNOSUPPORT);
  EXPECT_TRUE(contains(o.error().message, "not an IPv4/IPv6 socket")) << o.error().message;
}

// An accepted loopback connection that nobody redirected.
TEST(Client, AcceptedButNotRedirected) {
  Fd lst(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_GE(lst.fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lst.fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(lst.fd, 1), 0);
  socklen_t alen = sizeof a;
  ASSERT_EQ(getsockname(lst.fd, reinterpret_cast<sockaddr*>(&a), &alen), 0);
  Fd cli(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_EQ(connect(cli.fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  Fd acc(accept(lst.fd, nullptr, nullptr));
  ASSERT_GE(acc.fd, 0);

  auto r = query_records(acc.fd);
  ASSERT_FALSE(r);
  expect_guidance(r.error());

  // Setting records on a connected socket: ENOPROTOOPT when not loaded,
  // EISCONN (or EACCES) when loaded.
  auto s = set_records(cli.fd, testblobs::bytes(testblobs::records({1})));
  ASSERT_FALSE(s);
  EXPECT_TRUE((std::set<int>{ENOPROTOOPT, EISCONN, EACCES, EINVAL}).count(s.error().code))
      << s.error().message;

  // With netfilter conntrack loaded, SO_ORIGINAL_DST answers for any tracked
  // connection (the destination itself); otherwise it is an error.
  auto o = original_destination(acc.fd);
  if (o) {
    EXPECT_EQ(o->to_string(), fmt_listen(a));
  } else {
    EXPECT_TRUE((std::set<int>{ENOENT, ENOPROTOOPT, EOPNOTSUPP}).count(o.error().code))
        << o.error().code << ": " << o.error().message;
    expect_guidance(o.error());
  }
}

TEST(ClientErrors, EveryErrnoSaysWhatToDo) {
  using detail::SockOp;
  auto msg = [](SockOp op, int err) {
    Error e = detail::socket_option_error(op, 7, err);
    EXPECT_EQ(e.code, err);
    return e.message;
  };
  EXPECT_EQ(msg(SockOp::QueryRecords, ENOENT),
            "query_records(fd 7): socket was not redirected by connredir");
  EXPECT_TRUE(contains(msg(SockOp::QueryRecords, EACCES),
                       "caller is not root nor an authorized proxy principal: run `connredir "
                       "authorize --uid N` or register the proxy with `connredir callout add ... "
                       "--proxy-uid`"));
  EXPECT_TRUE(contains(msg(SockOp::SetRecords, EACCES), "connredir authorize"));
  for (SockOp op : {SockOp::QueryRecords, SockOp::QueryContext, SockOp::OriginalDst}) {
    for (int err : {EOPNOTSUPP, ENOPROTOOPT}) {
      EXPECT_TRUE(contains(msg(op, err),
                           "connredir is not loaded for this process's cgroup (run `connredir up "
                           "--cgroup DIR` and start the proxy inside that cgroup; if it was "
                           "started with `--proxies-in`, start the proxy inside one of those "
                           "cgroups)"));
    }
  }
  EXPECT_TRUE(contains(msg(SockOp::SetRecords, ENOPROTOOPT), "connredir up --cgroup"));
  EXPECT_TRUE(contains(msg(SockOp::SetRecords, EOPNOTSUPP), "TCP or UDP socket"));
  EXPECT_TRUE(contains(msg(SockOp::UdpFlow, ENOENT), "recvfrom() or recvmsg()"));
  EXPECT_TRUE(contains(msg(SockOp::UdpFlow, EADDRNOTAVAIL), "callout's proxy address"));
  EXPECT_TRUE(contains(msg(SockOp::UdpFlow, EOPNOTSUPP), "not a UDP socket"));
  EXPECT_EQ(msg(SockOp::UdpFlow, EACCES).rfind("udp_flow(fd 7): ", 0), 0u);
  EXPECT_EQ(msg(SockOp::SetRecords, EINVAL),
            "set_records(fd 7): records blob was rejected: it was not issued by this kernel's "
            "connredir or was altered; pass the exact bytes query_records returned");
  EXPECT_TRUE(contains(msg(SockOp::SetRecords, EISCONN), "set records before connect()"));
  EXPECT_TRUE(contains(msg(SockOp::SetRecords, ENOBUFS), "query_records returned"));
  EXPECT_TRUE(contains(msg(SockOp::QueryRecords, ENOBUFS), "ABI versions differ"));
  EXPECT_TRUE(contains(msg(SockOp::QueryContext, EBADF), "not an open file descriptor"));
  EXPECT_TRUE(contains(msg(SockOp::QueryContext, ENOTSOCK), "not a socket"));
  EXPECT_TRUE(contains(msg(SockOp::OriginalDst, ENOENT), "not redirected"));
  // Anything else still names the operation and the system's description.
  EXPECT_TRUE(contains(msg(SockOp::QueryRecords, EIO), "query_records(fd 7): "))
      << msg(SockOp::QueryRecords, EIO);
  EXPECT_TRUE(contains(msg(SockOp::QueryRecords, EIO), "Input/output error"));
}

TEST(ErrorMessage, Format) {
  EXPECT_EQ(errno_message(ENOENT, "open x"), "open x: No such file or directory");
  EXPECT_EQ(errno_message(EACCES, ""), "Permission denied");
  EXPECT_EQ(errno_message(99999, "op"), "op: errno 99999");
}
