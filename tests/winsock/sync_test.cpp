// Conformance, part 2: synchronous queries and SET with the kernel's results
// injected: data, the too-small-buffer rule, and each error the contract
// names. Plus the real kernel with connredir not loaded.
#include <netinet/in.h>

#include "fake_backend.hpp"

namespace wstest {
namespace {

constexpr DWORD kRecords = SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
constexpr DWORD kContext = SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT;
constexpr DWORD kSet = SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;

class Sync : public WinsockTest {};

TEST_F(Sync, QueriesFillBufferAndReportNonZeroSize) {
  SOCKET s = tcp_socket();
  fake.records = blob(CONNREDIR_WS_RECORDS_MAX, 1);
  fake.context = blob(CONNREDIR_WS_CONTEXT_MAX, 2);
  std::vector<uint8_t> buf(8192, 0xEE);  // the 1-8 KiB real proxies use
  DWORD n = 0;
  ASSERT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 8192, &n, nullptr, nullptr), 0);
  ASSERT_EQ(n, CONNREDIR_WS_RECORDS_MAX);
  EXPECT_TRUE(std::equal(buf.begin(), buf.begin() + n, fake.records->begin()));
  EXPECT_EQ(buf[n], 0xEE);  // nothing written past the data
  n = 0;
  ASSERT_EQ(WSAIoctl(s, kContext, nullptr, 0, buf.data(), 8192, &n, nullptr, nullptr), 0);
  ASSERT_EQ(n, CONNREDIR_WS_CONTEXT_MAX);
  EXPECT_TRUE(std::equal(buf.begin(), buf.begin() + n, fake.context->begin()));
  int err = 0;
  n = 0;
  ASSERT_EQ(
      WSPIoctl(s, kRecords, nullptr, 0, buf.data(), 8192, &n, nullptr, nullptr, nullptr, &err), 0);
  EXPECT_EQ(n, CONNREDIR_WS_RECORDS_MAX);
}

TEST_F(Sync, ExactSizeBufferIsEnough) {
  SOCKET s = tcp_socket();
  fake.records = blob(77);
  std::vector<uint8_t> buf(77);
  DWORD n = 0;
  EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 77, &n, nullptr, nullptr), 0);
  EXPECT_EQ(n, 77u);
}

// The page, lpcbBytesReturned: "if the output buffer is too small, the call
// fails, WSAGetLastError returns WSAEINVAL, and lpcbBytesReturned points to a
// DWORD value of 0". The needed size is available from
// connredir_ws_required_size().
TEST_F(Sync, TooSmallBufferIsEinvalWithZeroBytes) {
  SOCKET s = tcp_socket();
  fake.records = blob(300);
  fake.context = blob(CONNREDIR_WS_CONTEXT_MAX);
  for (DWORD code : {kRecords, kContext}) {
    DWORD need = code == kRecords ? 300 : CONNREDIR_WS_CONTEXT_MAX;
    std::vector<uint8_t> buf(need - 1, 0xEE);
    DWORD n = 1234;
    WSASetLastError(0);
    EXPECT_EQ(WSAIoctl(s, code, nullptr, 0, buf.data(), need - 1, &n, nullptr, nullptr),
              SOCKET_ERROR);
    EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(connredir_ws_required_size(), need);
    EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0xEE; }));
    // NULL/0: the size probe Windows kernel-mode callers use; same rule.
    n = 1234;
    EXPECT_EQ(WSAIoctl(s, code, nullptr, 0, nullptr, 0, &n, nullptr, nullptr), SOCKET_ERROR);
    EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(connredir_ws_required_size(), need);
    int err = 0;
    n = 1234;
    EXPECT_EQ(
        WSPIoctl(s, code, nullptr, 0, buf.data(), need - 1, &n, nullptr, nullptr, nullptr, &err),
        SOCKET_ERROR);
    EXPECT_EQ(err, WSAEINVAL);
    EXPECT_EQ(n, 0u);
  }
  // A later success clears the hint.
  std::vector<uint8_t> big(4096);
  DWORD n;
  ASSERT_EQ(WSAIoctl(s, kRecords, nullptr, 0, big.data(), 4096, &n, nullptr, nullptr), 0);
  EXPECT_EQ(connredir_ws_required_size(), 0u);
}

TEST_F(Sync, KernelEnobufsFollowsTheSameRule) {
  SOCKET s = tcp_socket();
  fake.records = connredir::fail(ENOBUFS, "buffer too small");
  std::vector<uint8_t> buf(64);
  DWORD n = 5;
  EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  EXPECT_EQ(n, 0u);
}

TEST_F(Sync, EmptyDataIsNeverAZeroByteSuccess) {
  SOCKET s = tcp_socket();
  fake.records = std::vector<uint8_t>{};
  std::vector<uint8_t> buf(64);
  DWORD n = 5;
  EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, nullptr, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), ERROR_NOT_FOUND);
  EXPECT_EQ(n, 0u);
}

struct ErrCase {
  int err;
  int wsa;
};

TEST_F(Sync, QueryErrorsOfTheContract) {
  SOCKET s = tcp_socket();
  const ErrCase cases[] = {
      {ENOENT, ERROR_NOT_FOUND},    // not redirected
      {EACCES, WSAEACCES},          // unauthorized
      {EOPNOTSUPP, WSAEOPNOTSUPP},  // not loaded (get) / not TCP
      {ENOTCONN, WSAENOTCONN},       {EINTR, WSAEINTR},   {ENETDOWN, WSAENETDOWN},
      {EINPROGRESS, WSAEINPROGRESS}, {EFAULT, WSAEFAULT},
  };
  std::vector<uint8_t> buf(1024);
  for (auto c : cases) {
    fake.records = connredir::fail(c.err, "injected");
    fake.context = connredir::fail(c.err, "injected");
    for (DWORD code : {kRecords, kContext}) {
      DWORD n = 9;
      WSASetLastError(0);
      EXPECT_EQ(WSAIoctl(s, code, nullptr, 0, buf.data(), 1024, &n, nullptr, nullptr),
                SOCKET_ERROR);
      EXPECT_EQ(WSAGetLastError(), c.wsa) << "errno " << c.err;
      EXPECT_EQ(n, 0u);
      EXPECT_STREQ(connredir_ws_last_error_message(), "injected");
      int err = 0;
      EXPECT_EQ(
          WSPIoctl(s, code, nullptr, 0, buf.data(), 1024, &n, nullptr, nullptr, nullptr, &err),
          SOCKET_ERROR);
      EXPECT_EQ(err, c.wsa) << "errno " << c.err;
    }
  }
}

TEST_F(Sync, SetErrorsOfTheContract) {
  SOCKET s = tcp_socket();
  const ErrCase cases[] = {
      {EINVAL, WSAEINVAL},           // forged / altered blob
      {EACCES, WSAEACCES},           // unauthorized
      {EISCONN, WSAEISCONN},         // set after connect
      {EOPNOTSUPP, WSAEOPNOTSUPP},   // not a TCP socket
      {ENOPROTOOPT, WSAEOPNOTSUPP},  // connredir not loaded (set)
      {ENOMEM, WSAENOBUFS},
  };
  auto rec = blob(CONNREDIR_WS_RECORDS_MAX);
  for (auto c : cases) {
    fake.set_result = connredir::fail(c.err, "injected");
    DWORD n = 9;
    EXPECT_EQ(WSAIoctl(s, kSet, rec.data(), static_cast<DWORD>(rec.size()), nullptr, 0, &n, nullptr,
                       nullptr),
              SOCKET_ERROR);
    EXPECT_EQ(WSAGetLastError(), c.wsa) << "errno " << c.err;
    EXPECT_EQ(n, 0u);
    int err = 0;
    EXPECT_EQ(WSPIoctl(s, kSet, rec.data(), static_cast<DWORD>(rec.size()), nullptr, 0, &n, nullptr,
                       nullptr, nullptr, &err),
              SOCKET_ERROR);
    EXPECT_EQ(err, c.wsa);
  }
}

TEST_F(Sync, WspIoctlLeavesLastErrorAlone) {
  SOCKET s = tcp_socket();
  fake.records = connredir::fail(ENOENT, "x");
  std::vector<uint8_t> buf(64);
  DWORD n;
  int err = 0;
  WSASetLastError(4242);
  EXPECT_EQ(WSPIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, nullptr, nullptr, nullptr, &err),
            SOCKET_ERROR);
  EXPECT_EQ(err, ERROR_NOT_FOUND);
  EXPECT_EQ(WSAGetLastError(), 4242);
  EXPECT_EQ(WSPIoctl(INVALID_SOCKET, kRecords, nullptr, 0, buf.data(), 64, &n, nullptr, nullptr,
                     nullptr, &err),
            SOCKET_ERROR);
  EXPECT_EQ(err, WSAENOTSOCK);
  EXPECT_EQ(WSAGetLastError(), 4242);
}

TEST_F(Sync, EndpointHandleIsTheSocketCookie) {
  SOCKET s = tcp_socket();
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  ASSERT_EQ(getsockopt(static_cast<int>(s), SOL_SOCKET, SO_COOKIE, &cookie, &len), 0);
  UINT64 handle = 0;
  DWORD n = 0;
  ASSERT_EQ(WSAIoctl(s, SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE, nullptr, 0, &handle, sizeof(handle), &n,
                     nullptr, nullptr),
            0);
  EXPECT_EQ(n, 8u);
  EXPECT_EQ(handle, cookie);
  EXPECT_NE(handle, 0u);
  uint32_t small = 0;
  n = 7;
  EXPECT_EQ(WSAIoctl(s, SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE, nullptr, 0, &small, sizeof(small), &n,
                     nullptr, nullptr),
            SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(connredir_ws_required_size(), 8u);
}

TEST_F(Sync, FlushWithNothingPendingSucceeds) {
  SOCKET s = tcp_socket();
  DWORD n = 3;
  EXPECT_EQ(WSAIoctl(s, SIO_FLUSH, nullptr, 0, nullptr, 0, &n, nullptr, nullptr), 0);
  EXPECT_EQ(n, 0u);
}

// The real kernel, connredir not loaded: getsockopt at the unknown level
// gives EOPNOTSUPP, setsockopt ENOPROTOOPT; both are WSAEOPNOTSUPP.
TEST(NotLoaded, RealKernelGivesEopnotsupp) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  uint8_t probe[CONNREDIR_WS_RECORDS_MAX];
  socklen_t len = sizeof(probe);
  if (getsockopt(fd, 0x4352, 1, probe, &len) == 0 || errno != EOPNOTSUPP) {
    close(fd);
    GTEST_SKIP() << "connredir is loaded for this cgroup; this test needs it absent";
  }
  SOCKET s = static_cast<SOCKET>(fd);
  std::vector<uint8_t> buf(4096);
  DWORD n = 5;
  for (DWORD code : {kRecords, kContext}) {
    EXPECT_EQ(WSAIoctl(s, code, nullptr, 0, buf.data(), 4096, &n, nullptr, nullptr), SOCKET_ERROR);
    EXPECT_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
    EXPECT_EQ(n, 0u);
  }
  auto rec = blob(CONNREDIR_WS_RECORDS_MAX);
  EXPECT_EQ(WSAIoctl(s, kSet, rec.data(), static_cast<DWORD>(rec.size()), nullptr, 0, &n, nullptr,
                     nullptr),
            SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
  EXPECT_NE(std::string(connredir_ws_last_error_message()), "");
  close(fd);
}

}  // namespace
}  // namespace wstest
