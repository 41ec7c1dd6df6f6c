// Conformance, part 1: the page's parameter rules and the errors raised
// before any kernel call (WSAENOTSOCK, WSAEFAULT, WSAEINVAL, WSAEOPNOTSUPP),
// for WSAIoctl and WSPIoctl.
#include <sys/stat.h>

#include <climits>
#include <cstddef>

#include "fake_backend.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace wstest {
namespace {

constexpr DWORD kQueryCodes[] = {SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
                                 SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT};

// Calls WSPIoctl and returns *lpErrno (0 on success).
int wsp(SOCKET s, DWORD code, void* in, DWORD cb_in, void* out, DWORD cb_out, DWORD* bytes,
        WSAOVERLAPPED* ov = nullptr, LPWSAOVERLAPPED_COMPLETION_ROUTINE cr = nullptr,
        WSATHREADID* tid = nullptr) {
  int err = -12345;
  int rc = WSPIoctl(s, code, in, cb_in, out, cb_out, bytes, ov, cr, tid, &err);
  if (rc == 0) return 0;
  EXPECT_EQ(rc, SOCKET_ERROR);
  return err;
}

// Calls WSAIoctl and returns WSAGetLastError() on failure, 0 on success.
int wsa(SOCKET s, DWORD code, void* in, DWORD cb_in, void* out, DWORD cb_out, DWORD* bytes,
        WSAOVERLAPPED* ov = nullptr, LPWSAOVERLAPPED_COMPLETION_ROUTINE cr = nullptr) {
  WSASetLastError(0);
  int rc = WSAIoctl(s, code, in, cb_in, out, cb_out, bytes, ov, cr);
  if (rc == 0) return 0;
  EXPECT_EQ(rc, SOCKET_ERROR);
  return WSAGetLastError();
}

TEST(WinsockConstants, WindowsNumericValues) {
  EXPECT_EQ(SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, 0x980000DCu);
  EXPECT_EQ(SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, 0x980000DDu);
  EXPECT_EQ(SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, 0x980000DEu);
  EXPECT_EQ(SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE, 0x580000CDu);
  EXPECT_EQ(SIO_FLUSH, 0x28000004u);
  EXPECT_EQ(WSA_IO_PENDING, 997);
  EXPECT_EQ(WSA_OPERATION_ABORTED, 995);
  EXPECT_EQ(WSAEACCES, 10013);
  EXPECT_EQ(WSAEFAULT, 10014);
  EXPECT_EQ(WSAEINVAL, 10022);
  EXPECT_EQ(WSAEINPROGRESS, 10036);
  EXPECT_EQ(WSAEINTR, 10004);
  EXPECT_EQ(WSAENETDOWN, 10050);
  EXPECT_EQ(WSAENOTSOCK, 10038);
  EXPECT_EQ(WSAEOPNOTSUPP, 10045);
  EXPECT_EQ(WSAENOPROTOOPT, 10042);
  EXPECT_EQ(WSAENOTCONN, 10057);
  EXPECT_EQ(ERROR_INSUFFICIENT_BUFFER, 122);
  EXPECT_EQ(ERROR_NOT_FOUND, 1168);
  EXPECT_EQ(SOCKET_ERROR, -1);
  EXPECT_EQ(INVALID_SOCKET, static_cast<SOCKET>(~static_cast<uintptr_t>(0)));
  EXPECT_EQ(static_cast<SOCKET>(-1), INVALID_SOCKET);  // what a failed socket() gives
}

TEST(WinsockConstants, WindowsLayouts) {
  EXPECT_EQ(sizeof(DWORD), 4u);
  // Win64 OVERLAPPED layout.
  EXPECT_EQ(offsetof(WSAOVERLAPPED, Internal), 0u);
  EXPECT_EQ(offsetof(WSAOVERLAPPED, InternalHigh), 8u);
  EXPECT_EQ(offsetof(WSAOVERLAPPED, Offset), 16u);
  EXPECT_EQ(offsetof(WSAOVERLAPPED, OffsetHigh), 20u);
  EXPECT_EQ(offsetof(WSAOVERLAPPED, hEvent), 24u);
  EXPECT_EQ(sizeof(WSAOVERLAPPED), 32u);
  EXPECT_EQ(sizeof(WSATHREADID), 16u);
  EXPECT_EQ(CONNREDIR_WS_RECORDS_MAX, static_cast<unsigned>(CONNREDIR_RECORDS_MAX));
  EXPECT_EQ(CONNREDIR_WS_CONTEXT_MAX, static_cast<unsigned>(CONNREDIR_CONTEXT_MAX));
}

extern "C" int connredir_ws_c_header_check(void);
TEST(WinsockConstants, HeaderCompilesAsC) { EXPECT_EQ(connredir_ws_c_header_check(), 0); }

// ---- s: "a descriptor identifying a socket" -> WSAENOTSOCK ---------------

class NotSocket : public WinsockTest {};

TEST_F(NotSocket, EveryKindOfNonSocketDescriptor) {
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  int file = open("/proc/self/status", O_RDONLY);
  ASSERT_GE(file, 0);
  int closed = dup(p[0]);
  close(closed);
  SOCKET bad[] = {static_cast<SOCKET>(p[0]), static_cast<SOCKET>(file), static_cast<SOCKET>(closed),
                  INVALID_SOCKET, static_cast<SOCKET>(INT_MAX) + 1};
  uint8_t buf[64];
  auto rec = blob(32);
  for (SOCKET s : bad) {
    DWORD n = 7;
    for (DWORD code : kQueryCodes) {
      EXPECT_EQ(wsa(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAENOTSOCK);
      EXPECT_EQ(wsp(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAENOTSOCK);
    }
    EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 32, nullptr, 0, &n),
              WSAENOTSOCK);
    EXPECT_EQ(wsp(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 32, nullptr, 0, &n),
              WSAENOTSOCK);
    EXPECT_EQ(wsa(s, SIO_FLUSH, nullptr, 0, nullptr, 0, &n), WSAENOTSOCK);
    EXPECT_EQ(closesocket(s), SOCKET_ERROR);
    EXPECT_EQ(WSAGetLastError(), WSAENOTSOCK);
  }
  EXPECT_EQ(fake.queries + fake.sets, 0);
  close(p[0]);
  close(p[1]);
  close(file);
}

// ---- dwIoControlCode --------------------------------------------------------

class ControlCode : public WinsockTest {};

TEST_F(ControlCode, NotAValidCommandIsEinval) {
  SOCKET s = tcp_socket();
  DWORD n;
  uint8_t buf[16];
  // None of IOC_VOID/IOC_OUT/IOC_IN: not a Winsock control code at all.
  for (DWORD code : {0x00000000u, 0x000000DCu, 0x180000DCu, 0x1800FFFFu}) {
    EXPECT_EQ(wsa(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAEINVAL) << std::hex << code;
    EXPECT_EQ(wsp(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAEINVAL) << std::hex << code;
  }
}

TEST_F(ControlCode, ValidButUnsupportedIsEopnotsupp) {
  SOCKET s = tcp_socket();
  DWORD n;
  uint8_t buf[16];
  const DWORD codes[] = {
      0x98000004u,               // SIO_KEEPALIVE_VALS
      0x8004667Eu,               // FIONBIO
      0x48000016u,               // SIO_ADDRESS_LIST_QUERY
      _WSAIOW(IOC_VENDOR, 223),  // next to the WFP codes
      _WSAIOR(IOC_VENDOR, 204),
  };
  for (DWORD code : codes) {
    EXPECT_EQ(wsa(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAEOPNOTSUPP) << std::hex << code;
    EXPECT_EQ(wsp(s, code, nullptr, 0, buf, sizeof(buf), &n), WSAEOPNOTSUPP) << std::hex << code;
  }
}

// ---- SET: lpvInBuffer / cbInBuffer / lpvOutBuffer / cbOutBuffer ------------

class SetParams : public WinsockTest {};

TEST_F(SetParams, SucceedsWithBlobAndNullOutput) {
  SOCKET s = tcp_socket();
  auto rec = blob(CONNREDIR_WS_RECORDS_MAX);
  DWORD n = 99;
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                static_cast<DWORD>(rec.size()), nullptr, 0, &n),
            0);
  EXPECT_EQ(n, 0u);  // nothing is stored in an output buffer
  EXPECT_EQ(fake.last_set, rec);
  n = 99;
  EXPECT_EQ(wsp(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(),
                static_cast<DWORD>(rec.size()), nullptr, 0, &n),
            0);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(fake.sets, 2);
}

TEST_F(SetParams, OutputBufferMustBeNullAndSizeZero) {
  SOCKET s = tcp_socket();
  auto rec = blob(64);
  uint8_t out[8];
  DWORD n;
  // A real output buffer, or a size other than 0: WSAEINVAL.
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 64, out, sizeof(out), &n),
            WSAEINVAL);
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 64, out, 0, &n), WSAEINVAL);
  EXPECT_EQ(wsp(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 64, out, sizeof(out), &n),
            WSAEINVAL);
  // NULL with a size is a pointer that is not valid for that size.
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 64, nullptr, 4, &n),
            WSAEFAULT);
  EXPECT_EQ(fake.sets, 0);
}

TEST_F(SetParams, InputBlobIsRequired) {
  SOCKET s = tcp_socket();
  auto rec = blob(64);
  DWORD n;
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, nullptr, 0, &n), WSAEINVAL);
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, rec.data(), 0, nullptr, 0, &n),
            WSAEINVAL);
  EXPECT_EQ(wsp(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, nullptr, 0, &n), WSAEINVAL);
  std::vector<uint8_t> huge(65537);
  EXPECT_EQ(wsa(s, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, huge.data(), 65537, nullptr, 0, &n),
            WSAEINVAL);
  EXPECT_EQ(fake.sets, 0);
}

// ---- WSAEFAULT: every pointer argument, probed without dereferencing --------

class Fault : public WinsockTest {};

TEST_F(Fault, InputBuffer) {
  SOCKET s = tcp_socket();
  GuardedPage g;
  DWORD n;
  const DWORD set = SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;
  EXPECT_EQ(wsa(s, set, nullptr, 16, nullptr, 0, &n), WSAEFAULT);
  EXPECT_EQ(wsa(s, set, g.none(), 16, nullptr, 0, &n), WSAEFAULT);
  EXPECT_EQ(wsa(s, set, reinterpret_cast<void*>(8), 16, nullptr, 0, &n), WSAEFAULT);
  // Starts valid, runs into the guard page: "not totally contained".
  EXPECT_EQ(wsa(s, set, g.tail(16), 17, nullptr, 0, &n), WSAEFAULT);
  EXPECT_EQ(wsp(s, set, g.tail(16), 17, nullptr, 0, &n), WSAEFAULT);
  EXPECT_EQ(wsa(s, set, reinterpret_cast<void*>(UINTPTR_MAX - 4), 16, nullptr, 0, &n), WSAEFAULT);
  EXPECT_EQ(fake.sets, 0);
  // Exactly the valid part: accepted.
  EXPECT_EQ(wsa(s, set, g.tail(16), 16, nullptr, 0, &n), 0);
  // Read-only input is fine: it is only read.
  g.make_read_only();
  EXPECT_EQ(wsa(s, set, g.tail(16), 16, nullptr, 0, &n), 0);
}

TEST_F(Fault, OutputBuffer) {
  SOCKET s = tcp_socket();
  fake.records = blob(100);
  fake.context = blob(100);
  GuardedPage g;
  DWORD n;
  for (DWORD code : kQueryCodes) {
    EXPECT_EQ(wsa(s, code, nullptr, 0, nullptr, 200, &n), WSAEFAULT);
    EXPECT_EQ(wsa(s, code, nullptr, 0, g.none(), 200, &n), WSAEFAULT);
    EXPECT_EQ(wsa(s, code, nullptr, 0, g.tail(150), 200, &n), WSAEFAULT);
    EXPECT_EQ(wsp(s, code, nullptr, 0, g.tail(150), 200, &n), WSAEFAULT);
  }
  EXPECT_EQ(fake.queries, 0);  // nothing is asked of the kernel
  EXPECT_EQ(wsa(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, g.tail(150), 150, &n), 0);
  EXPECT_EQ(n, 100u);
  // Read-only output: not writable, so not valid for an output buffer.
  g.make_read_only();
  EXPECT_EQ(wsa(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, g.tail(150), 150, &n),
            WSAEFAULT);
}

TEST_F(Fault, BytesReturned) {
  SOCKET s = tcp_socket();
  fake.records = blob(10);
  uint8_t buf[64];
  GuardedPage g;
  const DWORD q = SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), nullptr), WSAEFAULT);
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), static_cast<DWORD*>(g.none())), WSAEFAULT);
  // Straddles the guard page.
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), reinterpret_cast<DWORD*>(g.tail(2))),
            WSAEFAULT);
  EXPECT_EQ(wsp(s, q, nullptr, 0, buf, sizeof(buf), nullptr), WSAEFAULT);
  g.make_read_only();
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), reinterpret_cast<DWORD*>(g.tail(4))),
            WSAEFAULT);
  EXPECT_EQ(fake.queries, 0);
}

void CALLBACK noop_routine(DWORD, DWORD, LPWSAOVERLAPPED, DWORD) {}

TEST_F(Fault, OverlappedAndCompletionRoutine) {
  SOCKET s = tcp_socket();  // plain socket(): overlapped attribute, as on Windows
  fake.records = blob(10);
  uint8_t buf[64];
  DWORD n;
  GuardedPage g;
  const DWORD q = SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), &n, static_cast<WSAOVERLAPPED*>(g.none())),
            WSAEFAULT);
  EXPECT_EQ(
      wsa(s, q, nullptr, 0, buf, sizeof(buf), &n, reinterpret_cast<WSAOVERLAPPED*>(g.tail(16))),
      WSAEFAULT);
  WSAOVERLAPPED ov{};
  auto bad_cr = reinterpret_cast<LPWSAOVERLAPPED_COMPLETION_ROUTINE>(g.none());
  EXPECT_EQ(wsa(s, q, nullptr, 0, buf, sizeof(buf), &n, &ov, bad_cr), WSAEFAULT);
  EXPECT_EQ(wsp(s, q, nullptr, 0, buf, sizeof(buf), &n, &ov, bad_cr), WSAEFAULT);
  // WSPIoctl with a completion routine needs a valid lpThreadId.
  EXPECT_EQ(wsp(s, q, nullptr, 0, buf, sizeof(buf), &n, &ov, noop_routine, nullptr), WSAEFAULT);
  EXPECT_EQ(wsp(s, q, nullptr, 0, buf, sizeof(buf), &n, &ov, noop_routine,
                static_cast<WSATHREADID*>(g.none())),
            WSAEFAULT);
  EXPECT_EQ(fake.queries, 0);
}

TEST_F(Fault, OverlappedIgnoredWithoutOverlappedAttribute) {
  SOCKET s = WSASocket(AF_INET, SOCK_STREAM, 0, nullptr, 0, 0);
  ASSERT_NE(s, INVALID_SOCKET);
  fds.push_back(static_cast<int>(s));
  fake.records = blob(10);
  uint8_t buf[64];
  DWORD n = 0;
  GuardedPage g;
  // lpOverlapped is ignored, even an invalid one: the call is synchronous.
  EXPECT_EQ(wsa(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, nullptr, 0, buf, sizeof(buf), &n,
                static_cast<WSAOVERLAPPED*>(g.none()),
                reinterpret_cast<LPWSAOVERLAPPED_COMPLETION_ROUTINE>(g.none())),
            0);
  EXPECT_EQ(n, 10u);
}

TEST_F(Fault, LpErrnoInvalidDoesNotCrash) {
  SOCKET s = tcp_socket();
  GuardedPage g;
  uint8_t buf[8];
  DWORD n;
  EXPECT_EQ(WSPIoctl(s, 0, nullptr, 0, buf, sizeof(buf), &n, nullptr, nullptr, nullptr, nullptr),
            SOCKET_ERROR);
  EXPECT_EQ(WSPIoctl(s, 0, nullptr, 0, buf, sizeof(buf), &n, nullptr, nullptr, nullptr,
                     static_cast<int*>(g.none())),
            SOCKET_ERROR);
}

// ---- Queries: the input buffer is not used ------------------------------------

TEST_F(Fault, QueryIgnoresInputContents) {
  SOCKET s = tcp_socket();
  fake.records = blob(10);
  uint8_t in[4] = {1, 2, 3, 4};
  uint8_t buf[16];
  DWORD n;
  EXPECT_EQ(wsa(s, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, in, sizeof(in), buf, sizeof(buf), &n),
            0);
  EXPECT_EQ(n, 10u);
}

}  // namespace
}  // namespace wstest
