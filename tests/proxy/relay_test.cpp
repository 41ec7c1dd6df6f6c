// Relay correctness over real sockets: payload integrity both ways, half-close
// ordering, reset propagation, backpressure, and the copy fallback.
#include "relay.hpp"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace connredir::proxy {
namespace {

using Bytes = std::vector<uint8_t>;

struct Pair {
  UniqueFd a, b;
};

// A connected loopback TCP pair (a = connecting side, b = accepted side).
Pair tcp_pair() {
  UniqueFd l(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(l);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(l.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  EXPECT_EQ(listen(l.get(), 1), 0);
  socklen_t len = sizeof sa;
  EXPECT_EQ(getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &len), 0);
  Pair p;
  p.a.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(connect(p.a.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  p.b.reset(accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  EXPECT_TRUE(p.b);
  return p;
}

Pair unix_pair(int type) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), 0);
  return Pair{UniqueFd(sv[0]), UniqueFd(sv[1])};
}

UniqueFd nonblocking(UniqueFd fd) {
  const int fl = fcntl(fd.get(), F_GETFL);
  EXPECT_GE(fl, 0);
  EXPECT_EQ(fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK), 0);
  return fd;
}

Bytes random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes out(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(out.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return out;
}

uint64_t checksum(const Bytes& b) {  // FNV-1a 64
  uint64_t h = 1469598103934665603ull;
  for (uint8_t c : b) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool write_all(int fd, const uint8_t* p, size_t n, size_t chunk = SIZE_MAX) {
  while (n > 0) {
    const ssize_t w = send(fd, p, std::min(n, chunk), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads until EOF (returns true) or an error (false, errno kept in *err).
bool read_all(int fd, Bytes& out, size_t chunk = 65536, int* err = nullptr) {
  std::vector<uint8_t> buf(chunk);
  for (;;) {
    const ssize_t r = recv(fd, buf.data(), buf.size(), 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      if (err) *err = errno;
      return false;
    }
    if (r == 0) return true;
    out.insert(out.end(), buf.begin(), buf.begin() + r);
  }
}

// The test's event loop: one epoll instance, both relay sockets registered
// once, edge-triggered with EPOLLRDHUP, as connredir-proxy does.
class Driver {
 public:
  explicit Driver(Relay& r) : relay_(r), ep_(epoll_create1(EPOLL_CLOEXEC)) {
    EXPECT_TRUE(ep_);
    for (Side s : {Side::Client, Side::Server}) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
      ev.data.u32 = static_cast<uint32_t>(s);
      EXPECT_EQ(epoll_ctl(ep_.get(), EPOLL_CTL_ADD, r.fd(s), &ev), 0);
    }
  }
  // Runs until the relay finishes, or until nothing happened for quiet_ms.
  // The quiet limit is a hang guard, never an assertion about speed.
  Relay::State run(int quiet_ms = 20000) {
    epoll_event evs[8];
    while (relay_.state() == Relay::State::Running) {
      const int n = epoll_wait(ep_.get(), evs, 8, relay_.needs_resume() ? 0 : quiet_ms);
      if (n < 0 && errno == EINTR) continue;
      EXPECT_GE(n, 0);
      if (n <= 0 && !relay_.needs_resume()) break;
      for (int i = 0; i < n && relay_.state() == Relay::State::Running; ++i) {
        relay_.on_event(static_cast<Side>(evs[i].data.u32), evs[i].events);
        ++events;
      }
      if (relay_.needs_resume()) {
        relay_.resume();
        ++resumes;
      }
    }
    return relay_.state();
  }
  uint64_t events = 0;
  uint64_t resumes = 0;

 private:
  Relay& relay_;
  UniqueFd ep_;
};

struct Rig {
  UniqueFd app;     // the application's end (talks to the relay's client side)
  UniqueFd server;  // the destination's end
  std::unique_ptr<Relay> relay;
};

enum class Kind { Tcp, Unix };

Rig make(Kind kind, const Relay::Options& opt) {
  Pair p1 = kind == Kind::Tcp ? tcp_pair() : unix_pair(SOCK_STREAM);
  Pair p2 = kind == Kind::Tcp ? tcp_pair() : unix_pair(SOCK_STREAM);
  Rig s;
  s.app = std::move(p1.a);
  s.server = std::move(p2.b);
  s.relay =
      std::make_unique<Relay>(nonblocking(std::move(p1.b)), nonblocking(std::move(p2.a)), opt);
  return s;
}

struct Param {
  Kind kind;
  bool splice;
  unsigned budget;
};

std::string param_name(const testing::TestParamInfo<Param>& info) {
  return std::string(info.param.kind == Kind::Tcp ? "Tcp" : "Unix") +
         (info.param.splice ? "Splice" : "Copy") + "Budget" + std::to_string(info.param.budget);
}

class RelayPayload : public testing::TestWithParam<Param> {};

TEST_P(RelayPayload, LargeRandomPayloadBothDirectionsArrivesIntact) {
  const Param prm = GetParam();
  Relay::Options opt;
  opt.splice = prm.splice;
  opt.budget = prm.budget;
  Rig s = make(prm.kind, opt);
  const Bytes up = random_bytes(8 * 1024 * 1024 + 13, 1);
  const Bytes down = random_bytes(6 * 1024 * 1024 + 7, 2);
  Bytes got_up, got_down;

  // Each endpoint writes everything, half-closes, and reads until EOF.
  std::thread app([&] {
    std::thread w([&] {
      EXPECT_TRUE(write_all(s.app.get(), up.data(), up.size(), 100000));
      EXPECT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(read_all(s.app.get(), got_down, 7000));
    w.join();
  });
  std::thread srv([&] {
    std::thread w([&] {
      EXPECT_TRUE(write_all(s.server.get(), down.data(), down.size(), 33333));
      EXPECT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(read_all(s.server.get(), got_up));
    w.join();
  });
  Driver d(*s.relay);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  app.join();
  srv.join();

  EXPECT_EQ(s.relay->bytes_up(), up.size());
  EXPECT_EQ(s.relay->bytes_down(), down.size());
  ASSERT_EQ(got_up.size(), up.size());
  ASSERT_EQ(got_down.size(), down.size());
  EXPECT_EQ(checksum(got_up), checksum(up));
  EXPECT_EQ(checksum(got_down), checksum(down));
  EXPECT_EQ(s.relay->splicing(Side::Client), prm.splice);
  EXPECT_EQ(s.relay->fd(Side::Client), -1) << "sockets are closed when done";
}

INSTANTIATE_TEST_SUITE_P(Modes, RelayPayload,
                         testing::Values(Param{Kind::Tcp, true, 64}, Param{Kind::Tcp, false, 64},
                                         Param{Kind::Tcp, true, 1}, Param{Kind::Tcp, false, 1},
                                         Param{Kind::Unix, true, 64}, Param{Kind::Unix, false, 64}),
                         param_name);

// Splice: splice from the first byte. Small: the default, recv/send for the
// first Options::splice_after bytes of each direction, then splice. Copy:
// recv/send throughout.
// CopyReadToEagain: Copy without Options::short_read_empties.
enum class Mode { Splice, Small, Copy, CopyReadToEagain };

Relay::Options mode_options(Mode m) {
  Relay::Options opt;
  opt.splice = m == Mode::Splice || m == Mode::Small;
  if (m == Mode::Splice) opt.splice_after = 0;
  if (m == Mode::CopyReadToEagain) opt.short_read_empties = false;
  return opt;
}

class RelayModes : public testing::TestWithParam<Mode> {};

TEST_P(RelayModes, HalfCloseIsForwardedInOrderAndOtherDirectionKeepsFlowing) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  std::string server_saw, app_saw;
  std::thread peers([&] {
    // The application sends a request and half-closes...
    ASSERT_TRUE(write_all(s.app.get(), reinterpret_cast<const uint8_t*>("hello"), 5));
    ASSERT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
    // ...the server gets the bytes, then EOF, and only then answers.
    Bytes b;
    EXPECT_TRUE(read_all(s.server.get(), b));
    server_saw.assign(b.begin(), b.end());
    ASSERT_TRUE(write_all(s.server.get(), reinterpret_cast<const uint8_t*>("world!"), 6));
    ASSERT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
    // The half-closed application still receives the answer, then EOF.
    Bytes a;
    EXPECT_TRUE(read_all(s.app.get(), a));
    app_saw.assign(a.begin(), a.end());
  });
  Driver d(*s.relay);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  peers.join();
  EXPECT_EQ(server_saw, "hello");
  EXPECT_EQ(app_saw, "world!");
  EXPECT_EQ(s.relay->bytes_up(), 5u);
  EXPECT_EQ(s.relay->bytes_down(), 6u);
}

TEST_P(RelayModes, ServerHalfCloseFirstKeepsUpstreamOpen) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  std::string app_saw, server_saw;
  std::thread peers([&] {
    ASSERT_TRUE(write_all(s.server.get(), reinterpret_cast<const uint8_t*>("banner"), 6));
    ASSERT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
    Bytes a;
    EXPECT_TRUE(read_all(s.app.get(), a));
    app_saw.assign(a.begin(), a.end());
    ASSERT_TRUE(write_all(s.app.get(), reinterpret_cast<const uint8_t*>("bye"), 3));
    ASSERT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
    Bytes b;
    EXPECT_TRUE(read_all(s.server.get(), b));
    server_saw.assign(b.begin(), b.end());
  });
  Driver d(*s.relay);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  peers.join();
  EXPECT_EQ(app_saw, "banner");
  EXPECT_EQ(server_saw, "bye");
}

// Runs the relay until `fd` has something to read (data, EOF or an error).
// connredir-proxy's configuration: recv/send, buffers from `pool`.
Relay::Options pooled_copy_options(BufferPool& pool) {
  Relay::Options opt;
  opt.splice = false;
  opt.pool = &pool;
  return opt;
}

void relay_until_readable(Driver& d, int fd) {
  pollfd p{fd, POLLIN, 0};
  while (poll(&p, 1, 0) == 0) ASSERT_EQ(d.run(50), Relay::State::Running);
}

// Mid-flow: once a request was delivered the direction holds no buffer
// while the flow stays open and idle.
TEST(RelayPool, AnIdleOpenFlowHoldsNoBuffer) {
  BufferPool pool;
  Rig s = make(Kind::Tcp, pooled_copy_options(pool));
  ASSERT_TRUE(write_all(s.app.get(), reinterpret_cast<const uint8_t*>("hello"), 5));
  Driver d(*s.relay);
  relay_until_readable(d, s.server.get());
  char got[5];
  ASSERT_EQ(recv(s.server.get(), got, sizeof got, 0), 5);
  EXPECT_EQ(std::string(got, 5), "hello");
  EXPECT_EQ(s.relay->state(), Relay::State::Running);
  EXPECT_FALSE(s.relay->holds_buffer(Side::Client));
  EXPECT_FALSE(s.relay->holds_buffer(Side::Server));
  EXPECT_EQ(pool.idle(), 1u);
  // Without a pool the buffer stays with the direction.
  Relay::Options own;
  own.splice = false;
  Rig t = make(Kind::Tcp, own);
  ASSERT_TRUE(write_all(t.app.get(), reinterpret_cast<const uint8_t*>("hello"), 5));
  Driver e(*t.relay);
  relay_until_readable(e, t.server.get());
  EXPECT_TRUE(t.relay->holds_buffer(Side::Client));
}

void reset(UniqueFd& fd) {
  linger l{1, 0};
  ASSERT_EQ(setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
  fd.reset();
}

TEST_P(RelayModes, ServerResetIsPropagatedToTheClient) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  Driver d(*s.relay);
  ASSERT_TRUE(write_all(s.app.get(), reinterpret_cast<const uint8_t*>("ping"), 4));
  while (s.relay->bytes_up() < 4) ASSERT_EQ(d.run(50), Relay::State::Running);
  char buf[4];
  ASSERT_EQ(recv(s.server.get(), buf, 4, MSG_WAITALL), 4);
  reset(s.server);
  EXPECT_EQ(d.run(), Relay::State::Failed);
  EXPECT_NE(s.relay->error().find("server reset"), std::string::npos) << s.relay->error();
  Bytes rest;
  int err = 0;
  EXPECT_FALSE(read_all(s.app.get(), rest, 4096, &err));
  EXPECT_EQ(err, ECONNRESET);
}

TEST_P(RelayModes, ClientResetIsPropagatedToTheServer) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  Driver d(*s.relay);
  ASSERT_TRUE(write_all(s.server.get(), reinterpret_cast<const uint8_t*>("pong"), 4));
  while (s.relay->bytes_down() < 4) ASSERT_EQ(d.run(50), Relay::State::Running);
  char buf[4];
  ASSERT_EQ(recv(s.app.get(), buf, 4, MSG_WAITALL), 4);
  reset(s.app);
  EXPECT_EQ(d.run(), Relay::State::Failed);
  EXPECT_NE(s.relay->error().find("client reset"), std::string::npos) << s.relay->error();
  Bytes rest;
  int err = 0;
  EXPECT_FALSE(read_all(s.server.get(), rest, 4096, &err));
  EXPECT_EQ(err, ECONNRESET);
}

TEST_P(RelayModes, ResetAfterHalfCloseStillFails) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  Driver d(*s.relay);
  ASSERT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
  relay_until_readable(d, s.server.get());
  Bytes b;
  ASSERT_TRUE(read_all(s.server.get(), b));  // EOF forwarded
  reset(s.app);
  EXPECT_EQ(d.run(), Relay::State::Failed);
  EXPECT_NE(s.relay->error().find("client reset"), std::string::npos) << s.relay->error();
  // The server already read EOF, so it notices the reset when it answers.
  EXPECT_LT(send(s.server.get(), "late", 4, MSG_NOSIGNAL), 0);
  EXPECT_TRUE(errno == EPIPE || errno == ECONNRESET) << strerror(errno);
}

// The most a TCP socket may autotune its buffer to (the third value of
// /proc/sys/net/ipv4/tcp_rmem or tcp_wmem), or `fallback`.
size_t tcp_buffer_max(const char* sysctl, size_t fallback) {
  FILE* f = std::fopen(sysctl, "r");
  unsigned long lo = 0, def = 0, hi = 0;
  const bool ok = f && std::fscanf(f, "%lu %lu %lu", &lo, &def, &hi) == 3;
  if (f) std::fclose(f);
  return ok ? hi : fallback;
}

TEST_P(RelayModes, SlowReaderBackpressureBoundsBufferingAndLosesNothing) {
  const Relay::Options opt = mode_options(GetParam());
  Rig s = make(Kind::Tcp, opt);
  // More than every buffer on the way can hold (two receive and two send
  // buffers at their autotuning limits, plus the relay's own): kernels since
  // 6.x let tcp_rmem grow to 32 MiB, which a fixed 32 MiB payload would fit.
  const size_t rmem = tcp_buffer_max("/proc/sys/net/ipv4/tcp_rmem", 6u << 20);
  const size_t wmem = tcp_buffer_max("/proc/sys/net/ipv4/tcp_wmem", 4u << 20);
  const Bytes down = random_bytes(std::max<size_t>(32u << 20, 2 * rmem + 2 * wmem + (8u << 20)), 3);
  std::atomic<bool> server_wrote_all{false};
  std::thread srv([&] {
    EXPECT_TRUE(write_all(s.server.get(), down.data(), down.size()));
    server_wrote_all = true;
    EXPECT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
  });
  Driver d(*s.relay);
  // The application reads nothing yet: the relay must stop reading the
  // server once the client side is full, instead of buffering 32 MiB.
  EXPECT_EQ(d.run(300), Relay::State::Running);
  EXPECT_LT(s.relay->bytes_down(), down.size());
  EXPECT_LE(s.relay->buffered(Side::Server), size_t{1} << 20);
  EXPECT_FALSE(server_wrote_all.load()) << "backpressure must reach the server";

  // Now a slow reader (small reads) drains it; every byte arrives in order.
  Bytes got;
  std::thread app([&] {
    EXPECT_TRUE(read_all(s.app.get(), got, 1500));
    EXPECT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
  });
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  app.join();
  srv.join();
  ASSERT_EQ(got.size(), down.size());
  EXPECT_EQ(checksum(got), checksum(down));
  EXPECT_EQ(s.relay->bytes_down(), down.size());
}

INSTANTIATE_TEST_SUITE_P(SpliceSmallAndCopy, RelayModes,
                         testing::Values(Mode::Splice, Mode::Small, Mode::Copy,
                                         Mode::CopyReadToEagain),
                         [](const testing::TestParamInfo<Mode>& i) {
                           switch (i.param) {
                             case Mode::Splice:
                               return "Splice";
                             case Mode::Small:
                               return "SmallThenSplice";
                             case Mode::Copy:
                               return "Copy";
                             case Mode::CopyReadToEagain:
                               return "CopyReadToEagain";
                           }
                           return "?";
                         });

std::atomic<int> g_splice_calls{0};
// splice() that works three times and then reports EINVAL, as a socket type
// without splice support would; the third call leaves bytes in a pipe.
ssize_t flaky_splice(int in, loff_t* ioff, int out, loff_t* ooff, size_t len, unsigned flags) {
  if (++g_splice_calls > 3) {
    errno = EINVAL;
    return -1;
  }
  return splice(in, ioff, out, ooff, len, flags);
}

TEST(Relay, FallsBackToCopyWhenSpliceFailsWithEinvalWithoutLosingPipedBytes) {
  g_splice_calls = 0;
  Relay::Options opt;
  opt.splice_fn = &flaky_splice;
  opt.splice_after = 0;  // splice from the first byte
  Rig s = make(Kind::Tcp, opt);
  const Bytes up = random_bytes(3 * 1024 * 1024 + 1, 4);
  const Bytes down = random_bytes(1024 * 1024 + 3, 5);
  Bytes got_up, got_down;
  std::thread app([&] {
    std::thread w([&] {
      EXPECT_TRUE(write_all(s.app.get(), up.data(), up.size()));
      EXPECT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(read_all(s.app.get(), got_down));
    w.join();
  });
  std::thread srv([&] {
    std::thread w([&] {
      EXPECT_TRUE(write_all(s.server.get(), down.data(), down.size()));
      EXPECT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(read_all(s.server.get(), got_up));
    w.join();
  });
  Driver d(*s.relay);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  app.join();
  srv.join();
  EXPECT_GT(g_splice_calls.load(), 3);
  EXPECT_FALSE(s.relay->splicing(Side::Client));
  EXPECT_FALSE(s.relay->splicing(Side::Server));
  ASSERT_EQ(got_up.size(), up.size());
  ASSERT_EQ(got_down.size(), down.size());
  EXPECT_EQ(checksum(got_up), checksum(up));
  EXPECT_EQ(checksum(got_down), checksum(down));
}

std::atomic<int> g_counted_splices{0};
ssize_t counting_splice(int in, loff_t* ioff, int out, loff_t* ooff, size_t len, unsigned flags) {
  ++g_counted_splices;
  return splice(in, ioff, out, ooff, len, flags);
}

// One exchange of `up_n` bytes client -> server and `down_n` bytes back, with
// the half-closes in the given order; returns what each end received.
struct Exchange {
  Bytes got_up, got_down;
};
Exchange exchange(Rig& s, const Bytes& up, const Bytes& down, bool client_closes_first) {
  Exchange x;
  std::thread peers([&] {
    if (client_closes_first) {
      EXPECT_TRUE(write_all(s.app.get(), up.data(), up.size(), 3000));
      EXPECT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
      EXPECT_TRUE(read_all(s.server.get(), x.got_up, 5000));
      EXPECT_TRUE(write_all(s.server.get(), down.data(), down.size(), 7000));
      EXPECT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
      EXPECT_TRUE(read_all(s.app.get(), x.got_down, 1000));
    } else {
      EXPECT_TRUE(write_all(s.server.get(), down.data(), down.size(), 7000));
      EXPECT_EQ(shutdown(s.server.get(), SHUT_WR), 0);
      EXPECT_TRUE(read_all(s.app.get(), x.got_down, 1000));
      EXPECT_TRUE(write_all(s.app.get(), up.data(), up.size(), 3000));
      EXPECT_EQ(shutdown(s.app.get(), SHUT_WR), 0);
      EXPECT_TRUE(read_all(s.server.get(), x.got_up, 5000));
    }
  });
  Driver d(*s.relay);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  peers.join();
  return x;
}

class RelaySmallFlow : public testing::TestWithParam<bool> {};  // client half-closes first?

TEST_P(RelaySmallFlow, UnderTheThresholdNeverSplicesAndIsByteExact) {
  g_counted_splices = 0;
  Relay::Options opt;
  opt.splice_fn = &counting_splice;
  Rig s = make(Kind::Tcp, opt);
  // Up to the threshold exactly, in both directions: still no pipe.
  const Bytes up = random_bytes(opt.splice_after - 1, 11);
  const Bytes down = random_bytes(opt.splice_after, 12);
  const Exchange x = exchange(s, up, down, GetParam());
  ASSERT_EQ(x.got_up.size(), up.size());
  ASSERT_EQ(x.got_down.size(), down.size());
  EXPECT_EQ(x.got_up, up);
  EXPECT_EQ(x.got_down, down);
  EXPECT_EQ(s.relay->bytes_up(), up.size());
  EXPECT_EQ(s.relay->bytes_down(), down.size());
  EXPECT_EQ(g_counted_splices.load(), 0) << "a small flow must not use splice";
  EXPECT_FALSE(s.relay->splicing(Side::Client));
  EXPECT_FALSE(s.relay->splicing(Side::Server));
}

TEST_P(RelaySmallFlow, CrossingTheThresholdMidStreamSwitchesToSpliceAndIsByteExact) {
  g_counted_splices = 0;
  Relay::Options opt;
  opt.splice_fn = &counting_splice;
  opt.splice_after = 10000;  // not a multiple of any chunk size below
  opt.small_buffer = 4096;
  Rig s = make(Kind::Tcp, opt);
  const Bytes up = random_bytes(300 * 1024 + 5, 13);
  const Bytes down = random_bytes(200 * 1024 + 9, 14);
  const Exchange x = exchange(s, up, down, GetParam());
  ASSERT_EQ(x.got_up.size(), up.size());
  ASSERT_EQ(x.got_down.size(), down.size());
  EXPECT_EQ(x.got_up, up);
  EXPECT_EQ(x.got_down, down);
  EXPECT_EQ(s.relay->bytes_up(), up.size());
  EXPECT_EQ(s.relay->bytes_down(), down.size());
  EXPECT_GT(g_counted_splices.load(), 0);
  EXPECT_TRUE(s.relay->splicing(Side::Client));
  EXPECT_TRUE(s.relay->splicing(Side::Server));
  EXPECT_FALSE(s.relay->small_phase(Side::Client));
}

// The default proxy mode: no splice, the small buffer grows to copy_buffer
// once a direction crosses the threshold; a direction that stays small keeps
// its small buffer.
TEST_P(RelaySmallFlow, CopyModeCrossingTheThresholdGrowsTheBufferAndIsByteExact) {
  g_counted_splices = 0;
  Relay::Options opt;
  opt.splice = false;
  opt.splice_fn = &counting_splice;
  opt.splice_after = 10000;
  opt.small_buffer = 4096;
  opt.copy_buffer = 256 * 1024;
  Rig s = make(Kind::Tcp, opt);
  EXPECT_TRUE(s.relay->small_phase(Side::Client));
  const Bytes up = random_bytes(100, 17);
  const Bytes down = random_bytes(700 * 1024 + 3, 18);
  const Exchange x = exchange(s, up, down, GetParam());
  EXPECT_EQ(x.got_up, up);
  ASSERT_EQ(x.got_down.size(), down.size());
  EXPECT_EQ(x.got_down, down);
  EXPECT_EQ(g_counted_splices.load(), 0) << "copy mode must never splice";
  EXPECT_FALSE(s.relay->splicing(Side::Server));
  EXPECT_FALSE(s.relay->small_phase(Side::Server));
  EXPECT_TRUE(s.relay->small_phase(Side::Client));
}

// With a pool, a direction gives its buffer back once everything it read
// was delivered: an idle flow holds none, and the next bytes reuse it.
TEST_P(RelaySmallFlow, PooledBuffersAreReturnedWhenEmptyAndReused) {
  BufferPool pool;
  Rig s = make(Kind::Tcp, pooled_copy_options(pool));
  const Bytes up = random_bytes(3000, 19);
  const Bytes down = random_bytes(200 * 1024 + 1, 20);  // crosses into the bulk size
  const Exchange x = exchange(s, up, down, GetParam());
  EXPECT_EQ(x.got_up, up);
  ASSERT_EQ(x.got_down.size(), down.size());
  EXPECT_EQ(x.got_down, down);
  // One small and one bulk buffer at most per direction came back, not one
  // per recv: returned buffers were reused.
  EXPECT_GE(pool.idle(), 2u);
  EXPECT_LE(pool.idle(), 4u);
}

TEST_P(RelaySmallFlow, OnlyTheDirectionThatCrossesSwitches) {
  g_counted_splices = 0;
  Relay::Options opt;
  opt.splice_fn = &counting_splice;
  Rig s = make(Kind::Tcp, opt);
  const Bytes up = random_bytes(100, 15);                // a request
  const Bytes down = random_bytes(1024 * 1024 + 1, 16);  // a large answer
  const Exchange x = exchange(s, up, down, GetParam());
  EXPECT_EQ(x.got_up, up);
  ASSERT_EQ(x.got_down.size(), down.size());
  EXPECT_EQ(checksum(x.got_down), checksum(down));
  EXPECT_FALSE(s.relay->splicing(Side::Client));
  EXPECT_TRUE(s.relay->small_phase(Side::Client));
  EXPECT_TRUE(s.relay->splicing(Side::Server));
}

// Data and FIN queued together before the relay reads, then data and a
// later FIN: a short read must not make the relay miss the EOF.
TEST_P(RelaySmallFlow, EofArrivingWithOrAfterShortReadIsForwarded) {
  Relay::Options opt;
  Rig s = make(Kind::Tcp, opt);
  UniqueFd& first = GetParam() ? s.app : s.server;
  UniqueFd& second = GetParam() ? s.server : s.app;
  ASSERT_TRUE(write_all(first.get(), reinterpret_cast<const uint8_t*>("abc"), 3));
  ASSERT_EQ(shutdown(first.get(), SHUT_WR), 0);
  Driver d(*s.relay);
  relay_until_readable(d, second.get());
  Bytes got;
  EXPECT_TRUE(read_all(second.get(), got));
  EXPECT_EQ(std::string(got.begin(), got.end()), "abc");
  ASSERT_TRUE(write_all(second.get(), reinterpret_cast<const uint8_t*>("de"), 2));
  for (int i = 0; i < 5; ++i) ASSERT_EQ(d.run(10), Relay::State::Running);
  ASSERT_EQ(shutdown(second.get(), SHUT_WR), 0);
  EXPECT_EQ(d.run(), Relay::State::Done) << s.relay->error();
  Bytes back;
  EXPECT_TRUE(read_all(first.get(), back));
  EXPECT_EQ(std::string(back.begin(), back.end()), "de");
}

INSTANTIATE_TEST_SUITE_P(HalfCloseOrder, RelaySmallFlow, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& i) {
                           return i.param ? "ClientClosesFirst" : "ServerClosesFirst";
                         });

TEST(Relay, AbortResetsBothSides) {
  Rig s = make(Kind::Tcp, Relay::Options{});
  Driver d(*s.relay);
  ASSERT_TRUE(write_all(s.app.get(), reinterpret_cast<const uint8_t*>("x"), 1));
  while (s.relay->bytes_up() < 1) ASSERT_EQ(d.run(50), Relay::State::Running);
  char c;
  ASSERT_EQ(recv(s.server.get(), &c, 1, 0), 1);
  s.relay->abort("idle timeout", true);
  EXPECT_EQ(s.relay->state(), Relay::State::Failed);
  EXPECT_EQ(s.relay->error(), "idle timeout");
  for (int fd : {s.app.get(), s.server.get()}) {
    Bytes b;
    int err = 0;
    EXPECT_FALSE(read_all(fd, b, 16, &err));
    EXPECT_EQ(err, ECONNRESET);
  }
}

TEST(BufferPool, ReusesBuffersBySizeAndKeepsAtMostKeep) {
  BufferPool pool(2);
  auto a = pool.acquire(100);
  char* pa = a.get();
  pool.release(std::move(a), 100);
  EXPECT_EQ(pool.idle(), 1u);
  auto b = pool.acquire(100);
  EXPECT_EQ(b.get(), pa) << "a released buffer of that size is handed out again";
  auto c = pool.acquire(200);  // another size: a new buffer
  EXPECT_NE(c.get(), nullptr);
  EXPECT_EQ(pool.idle(), 0u);
  pool.release(std::move(b), 100);
  pool.release(pool.acquire(100), 100);
  pool.release(std::unique_ptr<char[]>(new char[100]), 100);
  pool.release(std::unique_ptr<char[]>(new char[100]), 100);  // over keep: freed
  pool.release(std::move(c), 200);
  EXPECT_EQ(pool.idle(), 3u);
  pool.release(nullptr, 100);
  EXPECT_EQ(pool.idle(), 3u);
}

}  // namespace
}  // namespace connredir::proxy
