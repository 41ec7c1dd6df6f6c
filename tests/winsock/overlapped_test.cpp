// Conformance, part 3: overlapped operation. Completion through the event or
// the completion routine (run on the issuing thread in an alertable wait),
// WSA_IO_PENDING, WSAGetOverlappedResult, WSA_OPERATION_ABORTED on
// closesocket/close/SIO_FLUSH, the overlapped attribute, and WSPIoctl's
// lpThreadId / lpErrno.
#include <sys/syscall.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "fake_backend.hpp"

namespace wstest {
namespace {

constexpr DWORD kRecords = SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
constexpr DWORD kContext = SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT;
constexpr DWORD kSet = SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;

pid_t tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

struct Completion {
  int calls = 0;
  DWORD error = 0xFFFF;
  DWORD bytes = 0xFFFF;
  LPWSAOVERLAPPED ov = nullptr;
  DWORD flags = 0xFFFF;
  pid_t thread = 0;
};
thread_local Completion* t_sink = nullptr;

void CALLBACK record_routine(DWORD err, DWORD bytes, LPWSAOVERLAPPED ov, DWORD flags) {
  // hEvent is free for the caller's context when a routine is used.
  auto* c = ov->hEvent ? static_cast<Completion*>(ov->hEvent) : t_sink;
  ++c->calls;
  c->error = err;
  c->bytes = bytes;
  c->ov = ov;
  c->flags = flags;
  c->thread = tid();
}

class Overlapped : public WinsockTest {
 protected:
  WSAEVENT ev = WSA_INVALID_EVENT;
  void SetUp() override {
    WinsockTest::SetUp();
    ev = WSACreateEvent();
    ASSERT_NE(ev, WSA_INVALID_EVENT);
  }
  void TearDown() override {
    WinsockTest::TearDown();
    WSACloseEvent(ev);
  }
  // Starts an overlapped query; expects it to be pending.
  void start(SOCKET s, DWORD code, void* buf, DWORD cb, WSAOVERLAPPED& ov,
             LPWSAOVERLAPPED_COMPLETION_ROUTINE cr = nullptr) {
    DWORD n = 77;
    WSASetLastError(0);
    ASSERT_EQ(WSAIoctl(s, code, nullptr, 0, buf, cb, &n, &ov, cr), SOCKET_ERROR);
    ASSERT_EQ(WSAGetLastError(), WSA_IO_PENDING);
    EXPECT_EQ(n, 0u);  // size not known until completion
  }
  bool signaled(WSAEVENT e, DWORD ms = 0) {
    return WSAWaitForMultipleEvents(1, &e, FALSE, ms, FALSE) == WSA_WAIT_EVENT_0;
  }
};

TEST_F(Overlapped, EventCompletionAndGetOverlappedResult) {
  SOCKET s = tcp_socket();
  fake.records = blob(CONNREDIR_WS_RECORDS_MAX, 9);
  fake.close_gate();
  std::vector<uint8_t> buf(1024);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  WSASetEvent(ev);  // the start of an operation resets the event
  start(s, kRecords, buf.data(), 1024, ov);
  EXPECT_FALSE(HasOverlappedIoCompleted(&ov));
  EXPECT_EQ(ov.Internal, STATUS_PENDING);
  EXPECT_FALSE(signaled(ev));
  DWORD n = 5, flags = 5;
  EXPECT_FALSE(WSAGetOverlappedResult(s, &ov, &n, FALSE, &flags));
  EXPECT_EQ(WSAGetLastError(), WSA_IO_INCOMPLETE);
  fake.open_gate();
  ASSERT_EQ(WSAWaitForMultipleEvents(1, &ev, TRUE, 5000, FALSE), WSA_WAIT_EVENT_0);
  EXPECT_TRUE(HasOverlappedIoCompleted(&ov));
  ASSERT_TRUE(WSAGetOverlappedResult(s, &ov, &n, FALSE, &flags));
  EXPECT_EQ(n, CONNREDIR_WS_RECORDS_MAX);
  EXPECT_EQ(flags, 0u);
  EXPECT_TRUE(std::equal(buf.begin(), buf.begin() + n, fake.records->begin()));
}

TEST_F(Overlapped, GetOverlappedResultWaits) {
  SOCKET s = tcp_socket();
  fake.context = blob(CONNREDIR_WS_CONTEXT_MAX);
  fake.close_gate();
  std::vector<uint8_t> buf(1024);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  start(s, kContext, buf.data(), 1024, ov);
  std::thread opener([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    fake.open_gate();
  });
  DWORD n = 0, flags = 1;
  EXPECT_TRUE(WSAGetOverlappedResult(s, &ov, &n, TRUE, &flags));
  EXPECT_EQ(n, CONNREDIR_WS_CONTEXT_MAX);
  opener.join();
}

TEST_F(Overlapped, NoEventNoRoutineStillCompletes) {
  SOCKET s = tcp_socket();
  fake.records = blob(40);
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  DWORD n = 0, flags = 0;
  // lpcbBytesReturned may be NULL for an overlapped call.
  ASSERT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, nullptr, &ov, nullptr), SOCKET_ERROR);
  ASSERT_EQ(WSAGetLastError(), WSA_IO_PENDING);
  ASSERT_TRUE(WSAGetOverlappedResult(s, &ov, &n, TRUE, &flags));
  EXPECT_EQ(n, 40u);
}

TEST_F(Overlapped, FailuresArriveThroughTheCompletion) {
  SOCKET s = tcp_socket();
  std::vector<uint8_t> buf(64);
  struct Case {
    Result<std::vector<uint8_t>> result;
    DWORD cb;
    int wsa;
  };
  std::vector<Case> cases;
  cases.push_back({connredir::fail(ENOENT, "x"), 64, ERROR_NOT_FOUND});
  cases.push_back({connredir::fail(EACCES, "x"), 64, WSAEACCES});
  cases.push_back({connredir::fail(EOPNOTSUPP, "x"), 64, WSAEOPNOTSUPP});
  cases.push_back({blob(65), 64, WSAEINVAL});  // too small: WSAEINVAL, 0 bytes
  for (auto& c : cases) {
    fake.records = c.result;
    WSAOVERLAPPED ov{};
    ov.hEvent = ev;
    start(s, kRecords, buf.data(), c.cb, ov);
    ASSERT_TRUE(signaled(ev, 5000));
    DWORD n = 9, flags = 9;
    EXPECT_FALSE(WSAGetOverlappedResult(s, &ov, &n, FALSE, &flags));
    EXPECT_EQ(WSAGetLastError(), c.wsa);
    EXPECT_EQ(n, 0u);
  }
}

TEST_F(Overlapped, SetCopiesTheInputAtTheCall) {
  SOCKET s = tcp_socket();
  fake.close_gate();
  auto rec = blob(CONNREDIR_WS_RECORDS_MAX);
  auto original = rec;
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  DWORD n = 3;
  ASSERT_EQ(
      WSAIoctl(s, kSet, rec.data(), static_cast<DWORD>(rec.size()), nullptr, 0, &n, &ov, nullptr),
      SOCKET_ERROR);
  ASSERT_EQ(WSAGetLastError(), WSA_IO_PENDING);
  std::fill(rec.begin(), rec.end(), 0);
  fake.open_gate();
  ASSERT_TRUE(signaled(ev, 5000));
  DWORD flags;
  ASSERT_TRUE(WSAGetOverlappedResult(s, &ov, &n, FALSE, &flags));
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(fake.last_set, original);
}

TEST_F(Overlapped, CompletionRoutineRunsOnlyInAlertableWaitOfTheCaller) {
  SOCKET s = tcp_socket();
  fake.records = blob(33);
  Completion c;
  t_sink = &c;
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = nullptr;  // routine reads t_sink
  start(s, kRecords, buf.data(), 64, ov, record_routine);
  // Completed, but the routine waits for an alertable wait of this thread.
  DWORD n, flags;
  ASSERT_TRUE(WSAGetOverlappedResult(s, &ov, &n, TRUE, &flags));
  EXPECT_EQ(SleepEx(20, FALSE), 0u);
  EXPECT_EQ(c.calls, 0);
  EXPECT_EQ(SleepEx(5000, TRUE), WAIT_IO_COMPLETION);
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.error, 0u);
  EXPECT_EQ(c.bytes, 33u);
  EXPECT_EQ(c.ov, &ov);
  EXPECT_EQ(c.flags, 0u);
  EXPECT_EQ(c.thread, tid());
  EXPECT_EQ(SleepEx(0, TRUE), 0u);  // nothing more queued
  t_sink = nullptr;
}

TEST_F(Overlapped, RoutineGivenMeansEventIsNotSignaled) {
  SOCKET s = tcp_socket();
  fake.records = blob(12);
  Completion c;
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = &c;  // context pointer, not an event: allowed with a routine
  start(s, kRecords, buf.data(), 64, ov, record_routine);
  WSAEVENT none = ev;
  // Alertable multi-event wait: the routine runs, the wait reports it.
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &none, FALSE, 5000, TRUE), WSA_WAIT_IO_COMPLETION);
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.bytes, 12u);
  EXPECT_FALSE(signaled(ev));
}

// When a completion routine is given, hEvent belongs to the caller and need
// not be an event, so WSAGetOverlappedResult(fWait=TRUE) is not allowed (it
// would wait on hEvent): poll with fWait=FALSE until the operation is done.
bool poll_result(SOCKET s, WSAOVERLAPPED& ov, DWORD& n) {
  DWORD flags = 0;
  for (int i = 0; i < 5000; i++) {
    if (WSAGetOverlappedResult(s, &ov, &n, FALSE, &flags)) return true;
    if (WSAGetLastError() != WSA_IO_INCOMPLETE) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

TEST_F(Overlapped, RoutineOfAnotherThreadDoesNotRunHere) {
  SOCKET s = tcp_socket();
  fake.records = blob(12);
  Completion c;
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = &c;
  std::thread other([&] {
    DWORD n;
    ASSERT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, record_routine),
              SOCKET_ERROR);
    ASSERT_TRUE(poll_result(s, ov, n));
    EXPECT_EQ(SleepEx(5000, TRUE), WAIT_IO_COMPLETION);
  });
  other.join();
  EXPECT_EQ(c.calls, 1);
  EXPECT_NE(c.thread, tid());
  EXPECT_EQ(SleepEx(0, TRUE), 0u);
}

TEST_F(Overlapped, RoutineOfAnExitedThreadIsDropped) {
  SOCKET s = tcp_socket();
  fake.records = blob(12);
  fake.close_gate();
  Completion c;
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = &c;
  std::thread other([&] {
    DWORD n;
    EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, record_routine),
              SOCKET_ERROR);
  });
  other.join();
  fake.open_gate();
  DWORD n = 0;
  ASSERT_TRUE(poll_result(s, ov, n));
  EXPECT_EQ(n, 12u);
  EXPECT_EQ(SleepEx(10, TRUE), 0u);
  EXPECT_EQ(c.calls, 0);
}

TEST_F(Overlapped, SameOverlappedTwiceWhilePendingIsEinval) {
  SOCKET s = tcp_socket();
  fake.records = blob(12);
  fake.close_gate();
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  start(s, kRecords, buf.data(), 64, ov);
  DWORD n;
  EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  fake.open_gate();
  EXPECT_TRUE(signaled(ev, 5000));
}

TEST_F(Overlapped, InvalidEventHandleIsRejected) {
  SOCKET s = tcp_socket();
  std::vector<uint8_t> buf(64);
  int not_an_event;
  WSAOVERLAPPED ov{};
  ov.hEvent = &not_an_event;
  DWORD n;
  EXPECT_EQ(WSAIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, nullptr), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_HANDLE);
  EXPECT_EQ(fake.queries, 0);
}

// ---- WSA_OPERATION_ABORTED --------------------------------------------------

TEST_F(Overlapped, ClosesocketAbortsQueuedAndRunning) {
  SOCKET s1 = own_socket();
  SOCKET s2 = own_socket();
  fake.records = blob(12);
  fake.close_gate();
  std::vector<uint8_t> b1(64, 0xEE), b2(64, 0xEE);
  WSAEVENT ev2 = WSACreateEvent();
  WSAOVERLAPPED ov1{}, ov2{};
  ov1.hEvent = ev;
  ov2.hEvent = ev2;
  start(s1, kRecords, b1.data(), 64, ov1);
  ASSERT_TRUE(fake.wait_entered(1));        // s1's operation is running
  start(s2, kRecords, b2.data(), 64, ov2);  // queued behind it
  ASSERT_EQ(closesocket(s2), 0);
  ASSERT_TRUE(signaled(ev2));  // at once, not when the worker gets to it
  DWORD n = 9, flags;
  EXPECT_FALSE(WSAGetOverlappedResult(s1, &ov2, &n, FALSE, &flags));
  EXPECT_EQ(WSAGetLastError(), WSA_OPERATION_ABORTED);
  EXPECT_EQ(n, 0u);
  ASSERT_EQ(closesocket(s1), 0);
  ASSERT_TRUE(signaled(ev));
  EXPECT_EQ(ov1.Internal, static_cast<ULONG_PTR>(WSA_OPERATION_ABORTED));
  fake.open_gate();
  fake.drain();
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // The running query's result is discarded: buffers untouched.
  EXPECT_EQ(ov1.Internal, static_cast<ULONG_PTR>(WSA_OPERATION_ABORTED));
  EXPECT_TRUE(std::all_of(b1.begin(), b1.end(), [](uint8_t b) { return b == 0xEE; }));
  EXPECT_TRUE(std::all_of(b2.begin(), b2.end(), [](uint8_t b) { return b == 0xEE; }));
  EXPECT_EQ(fake.queries, 1);  // s2's query never reached the kernel
  WSACloseEvent(ev2);
}

TEST_F(Overlapped, AbortIsDeliveredToTheCompletionRoutine) {
  SOCKET s1 = tcp_socket();
  SOCKET s2 = own_socket();
  fake.records = blob(12);
  fake.close_gate();
  std::vector<uint8_t> b1(64), b2(64);
  WSAOVERLAPPED ov1{}, ov2{};
  ov1.hEvent = ev;
  Completion c;
  ov2.hEvent = &c;
  start(s1, kRecords, b1.data(), 64, ov1);
  ASSERT_TRUE(fake.wait_entered(1));
  start(s2, kRecords, b2.data(), 64, ov2, record_routine);
  ASSERT_EQ(closesocket(s2), 0);
  EXPECT_EQ(SleepEx(5000, TRUE), WAIT_IO_COMPLETION);
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.error, static_cast<DWORD>(WSA_OPERATION_ABORTED));
  EXPECT_EQ(c.bytes, 0u);
  fake.open_gate();
  EXPECT_TRUE(signaled(ev, 5000));
}

TEST_F(Overlapped, PlainCloseAlsoAborts) {
  SOCKET s1 = tcp_socket();
  SOCKET s2 = own_socket();
  fake.records = blob(12);
  fake.close_gate();
  std::vector<uint8_t> b1(64), b2(64, 0xEE);
  WSAEVENT ev2 = WSACreateEvent();
  WSAOVERLAPPED ov1{}, ov2{};
  ov1.hEvent = ev;
  ov2.hEvent = ev2;
  start(s1, kRecords, b1.data(), 64, ov1);
  ASSERT_TRUE(fake.wait_entered(1));
  start(s2, kRecords, b2.data(), 64, ov2);
  close(static_cast<int>(s2));  // not closesocket()
  fake.open_gate();
  ASSERT_TRUE(signaled(ev2, 5000));
  EXPECT_EQ(ov2.Internal, static_cast<ULONG_PTR>(WSA_OPERATION_ABORTED));
  EXPECT_TRUE(std::all_of(b2.begin(), b2.end(), [](uint8_t b) { return b == 0xEE; }));
  EXPECT_TRUE(signaled(ev, 5000));
  EXPECT_EQ(ov1.Internal, 0u);
  WSACloseEvent(ev2);
}

TEST_F(Overlapped, SioFlushAbortsWhatHasNotStarted) {
  SOCKET s = tcp_socket();
  fake.records = blob(12);
  fake.close_gate();
  std::vector<uint8_t> b1(64), b2(64);
  WSAEVENT ev2 = WSACreateEvent();
  WSAOVERLAPPED ov1{}, ov2{};
  ov1.hEvent = ev;
  ov2.hEvent = ev2;
  start(s, kRecords, b1.data(), 64, ov1);
  ASSERT_TRUE(fake.wait_entered(1));
  start(s, kRecords, b2.data(), 64, ov2);
  DWORD n = 4;
  ASSERT_EQ(WSAIoctl(s, SIO_FLUSH, nullptr, 0, nullptr, 0, &n, nullptr, nullptr), 0);
  ASSERT_TRUE(signaled(ev2));
  EXPECT_EQ(ov2.Internal, static_cast<ULONG_PTR>(WSA_OPERATION_ABORTED));
  // The running one is a single short system call: it reports its result.
  EXPECT_FALSE(signaled(ev));
  fake.open_gate();
  ASSERT_TRUE(signaled(ev, 5000));
  DWORD flags;
  EXPECT_TRUE(WSAGetOverlappedResult(s, &ov1, &n, FALSE, &flags));
  EXPECT_EQ(n, 12u);
  WSACloseEvent(ev2);
}

TEST_F(Overlapped, SioFlushItselfOverlappedCompletesAtOnce) {
  SOCKET s = tcp_socket();
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  DWORD n = 4;
  ASSERT_EQ(WSAIoctl(s, SIO_FLUSH, nullptr, 0, nullptr, 0, &n, &ov, nullptr), 0);
  EXPECT_TRUE(signaled(ev));
  EXPECT_EQ(ov.Internal, 0u);
}

// ---- The overlapped attribute -----------------------------------------------

TEST_F(Overlapped, WithoutTheAttributeTheCallIsSynchronous) {
  fake.records = blob(21);
  SOCKET plain = WSASocket(AF_INET, SOCK_STREAM, 0, nullptr, 0, 0);
  SOCKET ovl = WSASocket(AF_INET, SOCK_STREAM, 0, nullptr, 0, WSA_FLAG_OVERLAPPED);
  SOCKET raw = tcp_socket();
  ASSERT_NE(plain, INVALID_SOCKET);
  ASSERT_NE(ovl, INVALID_SOCKET);
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  DWORD n = 0;
  ASSERT_EQ(WSAIoctl(plain, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, nullptr), 0);
  EXPECT_EQ(n, 21u);
  EXPECT_EQ(ov.Internal, 0u);  // untouched: lpOverlapped was ignored
  EXPECT_FALSE(signaled(ev));
  start(ovl, kRecords, buf.data(), 64, ov);
  EXPECT_TRUE(signaled(ev, 5000));
  ASSERT_EQ(connredir_ws_set_overlapped(raw, FALSE), 0);
  WSAOVERLAPPED ov2{};
  ASSERT_EQ(WSAIoctl(raw, kRecords, nullptr, 0, buf.data(), 64, &n, &ov2, nullptr), 0);
  EXPECT_EQ(n, 21u);
  ASSERT_EQ(connredir_ws_set_overlapped(raw, TRUE), 0);
  WSAResetEvent(ev);
  ov2.hEvent = ev;
  start(raw, kRecords, buf.data(), 64, ov2);
  EXPECT_TRUE(signaled(ev, 5000));
  EXPECT_EQ(closesocket(plain), 0);
  EXPECT_EQ(closesocket(ovl), 0);
  // WSASocket argument rules.
  EXPECT_EQ(WSASocket(AF_INET, SOCK_STREAM, 0, reinterpret_cast<LPWSAPROTOCOL_INFOA>(&ov), 0, 0),
            INVALID_SOCKET);
  EXPECT_EQ(WSAGetLastError(), WSAEINVAL);
  EXPECT_EQ(WSASocket(12345, SOCK_STREAM, 0, nullptr, 0, 0), INVALID_SOCKET);
  EXPECT_EQ(WSAGetLastError(), WSAEAFNOSUPPORT);
}

TEST_F(Overlapped, AttributeDoesNotLeakToAReusedDescriptor) {
  SOCKET plain = WSASocket(AF_INET, SOCK_STREAM, 0, nullptr, 0, 0);
  ASSERT_NE(plain, INVALID_SOCKET);
  close(static_cast<int>(plain));  // plain close: the registry is stale
  SOCKET again = own_socket();     // most likely the same number
  fake.records = blob(5);
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  start(again, kRecords, buf.data(), 64, ov);  // overlapped by default again
  EXPECT_TRUE(signaled(ev, 5000));
  closesocket(again);
}

// ---- WSPIoctl: lpThreadId and lpErrno ------------------------------------------

TEST_F(Overlapped, WspIoctlQueuesToTheThreadInLpThreadIdAndCopiesIt) {
  SOCKET s = tcp_socket();
  fake.records = blob(16);
  fake.close_gate();
  Completion c;
  std::atomic<bool> have_id{false};
  std::atomic<bool> go{false};
  WSATHREADID* shared = new WSATHREADID{};
  pid_t target_tid = 0;
  std::thread target([&] {
    int err;
    ASSERT_EQ(WPUOpenCurrentThread(shared, &err), 0);
    target_tid = tid();
    have_id = true;
    while (!go) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(SleepEx(5000, TRUE), WAIT_IO_COMPLETION);
    WPUCloseThread(shared, &err);
  });
  while (!have_id) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = &c;
  DWORD n = 3;
  int err = 0;
  WSATHREADID id = *shared;
  ASSERT_EQ(WSPIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, record_routine, &id, &err),
            SOCKET_ERROR);
  EXPECT_EQ(err, WSA_IO_PENDING);
  // The provider keeps the structure, not the pointer: scribbling over the
  // caller's copy before completion changes nothing.
  std::memset(&id, 0xAB, sizeof(id));
  fake.open_gate();
  go = true;
  target.join();
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(c.thread, target_tid);
  EXPECT_EQ(c.bytes, 16u);
  EXPECT_EQ(SleepEx(0, TRUE), 0u);  // nothing for the calling thread
  delete shared;
}

TEST_F(Overlapped, WspIoctlRejectsAThreadIdThatNamesNoThread) {
  SOCKET s = tcp_socket();
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  DWORD n;
  int err = 0;
  WSATHREADID bogus{reinterpret_cast<HANDLE>(0x1234), 0};
  EXPECT_EQ(
      WSPIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, record_routine, &bogus, &err),
      SOCKET_ERROR);
  EXPECT_EQ(err, WSAEINVAL);
}

TEST_F(Overlapped, WspIoctlWithEventAndErrno) {
  SOCKET s = tcp_socket();
  fake.records = connredir::fail(EACCES, "x");
  std::vector<uint8_t> buf(64);
  WSAOVERLAPPED ov{};
  ov.hEvent = ev;
  DWORD n;
  int err = 0;
  WSASetLastError(31337);
  ASSERT_EQ(WSPIoctl(s, kRecords, nullptr, 0, buf.data(), 64, &n, &ov, nullptr, nullptr, &err),
            SOCKET_ERROR);
  EXPECT_EQ(err, WSA_IO_PENDING);
  EXPECT_EQ(WSAGetLastError(), 31337);
  ASSERT_TRUE(signaled(ev, 5000));
  EXPECT_EQ(ov.Internal, static_cast<ULONG_PTR>(WSAEACCES));
}

TEST_F(Overlapped, GetOverlappedResultParameterErrors) {
  SOCKET s = tcp_socket();
  GuardedPage g;
  WSAOVERLAPPED ov{};
  DWORD n, flags;
  EXPECT_FALSE(WSAGetOverlappedResult(INVALID_SOCKET, &ov, &n, FALSE, &flags));
  EXPECT_EQ(WSAGetLastError(), WSAENOTSOCK);
  EXPECT_FALSE(WSAGetOverlappedResult(s, static_cast<WSAOVERLAPPED*>(g.none()), &n, FALSE, &flags));
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
  EXPECT_FALSE(WSAGetOverlappedResult(s, &ov, nullptr, FALSE, &flags));
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
  EXPECT_FALSE(WSAGetOverlappedResult(s, &ov, &n, FALSE, nullptr));
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
}

}  // namespace
}  // namespace wstest
