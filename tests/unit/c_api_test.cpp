// The C API's own argument handling and error reporting (connredir.h), with
// connredir NOT loaded (no kernel side needed): every failure is a negative
// errno plus a per-thread message that says what to do; a success clears it.
#include "connredir/connredir.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <thread>
#include <vector>

#include "blobs.hpp"

extern "C" int connredir_c_api_from_c(void);

namespace {

std::string last() { return connredir_last_error(); }

bool contains(const std::string& s, std::string_view needle) {
  return s.find(needle) != std::string::npos;
}

struct Fd {
  int fd;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// A descriptor number that is certainly not open.
int closed_fd() {
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  close(fd);
  return fd;
}

TEST(CApi, HeaderCompilesAsC11AndLinksFromC) { EXPECT_EQ(connredir_c_api_from_c(), 0); }

TEST(CApi, QueryRecordsArgumentChecks) {
  unsigned char buf[CONNREDIR_RECORDS_MAX];
  size_t len = 99;
  EXPECT_EQ(connredir_query_records(3, nullptr, sizeof buf, &len), -EINVAL);
  EXPECT_TRUE(contains(last(), "buf is NULL")) << last();
  EXPECT_EQ(len, 0u);

  // Too small: ENOBUFS before any system call, with the size needed.
  EXPECT_EQ(connredir_query_records(-1, buf, sizeof(connredir_records) - 1, &len), -ENOBUFS);
  EXPECT_EQ(len, sizeof(connredir_records));
  EXPECT_TRUE(contains(last(), "CONNREDIR_RECORDS_MAX")) << last();
  EXPECT_EQ(connredir_query_records(-1, buf, 0, nullptr), -ENOBUFS);

  EXPECT_EQ(connredir_query_records(-1, buf, sizeof buf, &len), -EBADF);
  EXPECT_TRUE(contains(last(), "not an open file descriptor")) << last();
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(connredir_query_records(closed_fd(), buf, sizeof buf, nullptr), -EBADF);

  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(connredir_query_records(file.fd, buf, sizeof buf, &len), -ENOTSOCK);
  EXPECT_TRUE(contains(last(), "not a socket")) << last();
}

TEST(CApi, QueryRecordsOnAPlainSocketSaysWhatToDo) {
  Fd s(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_GE(s.fd, 0);
  unsigned char buf[CONNREDIR_RECORDS_MAX];
  size_t len = 0;
  int rc = connredir_query_records(s.fd, buf, sizeof buf, &len);
  // Not loaded here (EOPNOTSUPP); were it loaded: not redirected (ENOENT)
  // or, unprivileged, not authorized (EACCES).
  ASSERT_TRUE(rc == -EOPNOTSUPP || rc == -ENOENT || rc == -EACCES) << rc << " " << last();
  if (rc == -EOPNOTSUPP) {
    EXPECT_TRUE(contains(last(), "connredir up --cgroup")) << last();
  }
  if (rc == -ENOENT) {
    EXPECT_TRUE(contains(last(), "not redirected")) << last();
  }
  if (rc == -EACCES) {
    EXPECT_TRUE(contains(last(), "connredir authorize")) << last();
  }
}

TEST(CApi, SetRecordsArgumentChecks) {
  auto blob = testblobs::bytes(testblobs::records({1, 2}));
  EXPECT_EQ(connredir_set_records(-1, nullptr, 10), -EINVAL);
  EXPECT_TRUE(contains(last(), "blob is NULL")) << last();
  EXPECT_EQ(connredir_set_records(-1, blob.data(), blob.size()), -EBADF);
  EXPECT_TRUE(contains(last(), "set_records(fd -1)")) << last();
  Fd s(socket(AF_INET, SOCK_STREAM, 0));
  int rc = connredir_set_records(s.fd, blob.data(), blob.size());
  // Not loaded: the kernel's ENOPROTOOPT; loaded: the forged MAC is refused.
  ASSERT_TRUE(rc == -ENOPROTOOPT || rc == -EINVAL || rc == -EACCES) << rc << " " << last();
  if (rc == -ENOPROTOOPT) {
    EXPECT_TRUE(contains(last(), "connredir up --cgroup")) << last();
  }
}

TEST(CApi, OriginalDstAndContextArgumentChecks) {
  sockaddr_storage ss;
  socklen_t sl = 77;
  EXPECT_EQ(connredir_original_dst(-1, nullptr, &sl), -EINVAL);
  EXPECT_EQ(sl, 0u);
  EXPECT_TRUE(contains(last(), "out is NULL")) << last();
  EXPECT_EQ(connredir_original_dst(-1, &ss, &sl), -EBADF);
  EXPECT_TRUE(contains(last(), "original_destination(fd -1)")) << last();
  Fd u(socket(AF_UNIX, SOCK_STREAM, 0));
  EXPECT_EQ(connredir_original_dst(u.fd, &ss, nullptr), -EAFNOSUPPORT);

  connredir_flow_context ctx;
  EXPECT_EQ(connredir_query_context(-1, nullptr), -EINVAL);
  EXPECT_EQ(connredir_query_context(-1, &ctx), -EBADF);
  EXPECT_TRUE(contains(last(), "not an open file descriptor")) << last();
}

TEST(CApi, QueryFlowArgumentChecks) {
  unsigned char buf[CONNREDIR_RECORDS_MAX];
  connredir_flow_context ctx;
  size_t len = 99;
  EXPECT_EQ(connredir_query_flow(-1, buf, sizeof buf, &len, nullptr), -EINVAL);
  EXPECT_TRUE(contains(last(), "ctx is NULL")) << last();
  EXPECT_EQ(connredir_query_flow(-1, nullptr, sizeof buf, &len, &ctx), -EINVAL);
  EXPECT_TRUE(contains(last(), "records is NULL")) << last();
  EXPECT_EQ(len, 0u);
  EXPECT_EQ(connredir_query_flow(-1, buf, sizeof(connredir_records) - 1, &len, &ctx), -ENOBUFS);
  EXPECT_EQ(len, sizeof(connredir_records));
  EXPECT_TRUE(contains(last(), "CONNREDIR_RECORDS_MAX")) << last();
  EXPECT_EQ(connredir_query_flow(-1, buf, sizeof buf, &len, &ctx), -EBADF);
  EXPECT_TRUE(contains(last(), "query_flow(fd -1)")) << last();
  EXPECT_EQ(len, 0u);
  Fd file(open("/dev/null", O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(connredir_query_flow(file.fd, buf, sizeof buf, nullptr, &ctx), -ENOTSOCK);
  Fd s(socket(AF_INET, SOCK_STREAM, 0));
  ASSERT_GE(s.fd, 0);
  int rc = connredir_query_flow(s.fd, buf, sizeof buf, &len, &ctx);
  // Not loaded here (EOPNOTSUPP); were it loaded: not redirected (ENOENT)
  // or, unprivileged, not authorized (EACCES).
  ASSERT_TRUE(rc == -EOPNOTSUPP || rc == -ENOENT || rc == -EACCES) << rc << " " << last();
}

TEST(CApi, DecodeChainGivesEveryHop) {
  auto blob = testblobs::bytes(testblobs::records({5, 9, 11}));
  connredir_chain c;
  ASSERT_EQ(connredir_decode_chain(blob.data(), blob.size(), &c), 0) << last();
  EXPECT_EQ(last(), "");
  EXPECT_EQ(c.flow_id, 0x1122334455667788ull);
  ASSERT_EQ(c.hop_count, 3u);
  EXPECT_EQ(c.hops[0].callout_id, 5u);
  EXPECT_EQ(c.hops[1].callout_id, 9u);
  EXPECT_EQ(c.hops[2].callout_id, 11u);
  EXPECT_EQ(c.hops[2].filter_id, 111u);
  EXPECT_EQ(c.app_pid, 1234u);
  EXPECT_EQ(c.app_uid, 1000u);
  EXPECT_STREQ(c.app_comm, "curl");
  char text[CONNREDIR_ADDRSTRLEN];
  ASSERT_EQ(c.hops[0].dst_len, sizeof(sockaddr_in));
  ASSERT_EQ(connredir_format_addr(reinterpret_cast<sockaddr*>(&c.hops[0].dst), c.hops[0].dst_len,
                                  text, sizeof text),
            0);
  EXPECT_STREQ(text, "93.184.216.34:80");
}

TEST(CApi, DecodeChainRejectsWhatIsNotABlob) {
  auto blob = testblobs::bytes(testblobs::records({1}));
  connredir_chain c;
  EXPECT_EQ(connredir_decode_chain(nullptr, 10, &c), -EINVAL);
  EXPECT_TRUE(contains(last(), "blob is NULL")) << last();
  EXPECT_EQ(connredir_decode_chain(blob.data(), blob.size(), nullptr), -EINVAL);
  EXPECT_EQ(connredir_decode_chain(blob.data(), blob.size() - 1, &c), -EINVAL);
  EXPECT_TRUE(contains(last(), "connredir_decode_chain: ")) << last();
  blob[0] ^= 1;
  EXPECT_EQ(connredir_decode_chain(blob.data(), blob.size(), &c), -EINVAL);
  EXPECT_TRUE(contains(last(), "magic")) << last();
}

TEST(CApi, FormatAddr) {
  char text[CONNREDIR_ADDRSTRLEN];
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_port = htons(443);
  in6.sin6_addr = in6addr_loopback;
  auto* sa = reinterpret_cast<sockaddr*>(&in6);
  ASSERT_EQ(connredir_format_addr(sa, sizeof in6, text, sizeof text), 0) << last();
  EXPECT_STREQ(text, "[::1]:443");
  // IPv4-mapped is IPv4.
  inet_pton(AF_INET6, "::ffff:10.1.2.3", &in6.sin6_addr);
  ASSERT_EQ(connredir_format_addr(sa, sizeof in6, text, sizeof text), 0) << last();
  EXPECT_STREQ(text, "10.1.2.3:443");
  EXPECT_EQ(connredir_format_addr(sa, sizeof in6, text, 5), -ENOBUFS);
  EXPECT_STREQ(text, "");
  EXPECT_TRUE(contains(last(), "CONNREDIR_ADDRSTRLEN")) << last();
  EXPECT_EQ(connredir_format_addr(sa, 4, text, sizeof text), -EINVAL);
  EXPECT_EQ(connredir_format_addr(sa, sizeof in6, nullptr, 10), -EINVAL);
  sockaddr_storage un{};
  un.ss_family = AF_UNIX;
  EXPECT_EQ(connredir_format_addr(reinterpret_cast<sockaddr*>(&un), sizeof un, text, sizeof text),
            -EAFNOSUPPORT);
}

TEST(CApi, LastErrorIsPerThreadAndClearedBySuccess) {
  unsigned char buf[CONNREDIR_RECORDS_MAX];
  ASSERT_EQ(connredir_query_records(-1, buf, sizeof buf, nullptr), -EBADF);
  std::string mine = last();
  ASSERT_FALSE(mine.empty());
  std::string other = "unset";
  std::thread([&] { other = connredir_last_error(); }).join();
  EXPECT_EQ(other, "");
  EXPECT_EQ(last(), mine);
  auto blob = testblobs::bytes(testblobs::records({1}));
  connredir_chain c;
  ASSERT_EQ(connredir_decode_chain(blob.data(), blob.size(), &c), 0);
  EXPECT_EQ(last(), "");
}

}  // namespace
