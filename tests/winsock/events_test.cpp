// Events, alertable waits and startup: the machinery overlapped callers use.
#include <chrono>
#include <thread>

#include "fake_backend.hpp"

namespace wstest {
namespace {

using Clock = std::chrono::steady_clock;

TEST(Events, ManualResetSetResetClose) {
  WSAEVENT e = WSACreateEvent();
  ASSERT_NE(e, WSA_INVALID_EVENT);
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 0, FALSE), WSA_WAIT_TIMEOUT);
  EXPECT_TRUE(WSASetEvent(e));
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 0, FALSE), WSA_WAIT_EVENT_0);
  // Manual reset: still signaled after a satisfied wait.
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 0, FALSE), WSA_WAIT_EVENT_0);
  EXPECT_TRUE(WSAResetEvent(e));
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 0, FALSE), WSA_WAIT_TIMEOUT);
  EXPECT_TRUE(WSACloseEvent(e));
  EXPECT_FALSE(WSASetEvent(e));
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_HANDLE);
  EXPECT_FALSE(WSAResetEvent(e));
  EXPECT_FALSE(WSACloseEvent(e));
  EXPECT_FALSE(WSASetEvent(nullptr));
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_HANDLE);
}

TEST(Events, WaitAnyReturnsLowestSignaledWaitAllNeedsAll) {
  WSAEVENT e[3] = {WSACreateEvent(), WSACreateEvent(), WSACreateEvent()};
  WSASetEvent(e[2]);
  WSASetEvent(e[1]);
  EXPECT_EQ(WSAWaitForMultipleEvents(3, e, FALSE, 0, FALSE), WSA_WAIT_EVENT_0 + 1);
  EXPECT_EQ(WSAWaitForMultipleEvents(3, e, TRUE, 0, FALSE), WSA_WAIT_TIMEOUT);
  WSASetEvent(e[0]);
  EXPECT_EQ(WSAWaitForMultipleEvents(3, e, TRUE, 0, FALSE), WSA_WAIT_EVENT_0);
  for (auto h : e) WSACloseEvent(h);
}

TEST(Events, WaitWakesWhenAnotherThreadSets) {
  WSAEVENT e = WSACreateEvent();
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    WSASetEvent(e);
  });
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, WSA_INFINITE, FALSE), WSA_WAIT_EVENT_0);
  t.join();
  WSACloseEvent(e);
}

TEST(Events, TimeoutIsHonoured) {
  WSAEVENT e = WSACreateEvent();
  auto t0 = Clock::now();
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 30, TRUE), WSA_WAIT_TIMEOUT);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(29));
  WSACloseEvent(e);
}

TEST(Events, ParameterErrors) {
  WSAEVENT e = WSACreateEvent();
  EXPECT_EQ(WSAWaitForMultipleEvents(0, &e, FALSE, 0, FALSE), WSA_WAIT_FAILED);
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_PARAMETER);
  std::vector<WSAEVENT> many(WSA_MAXIMUM_WAIT_EVENTS + 1, e);
  EXPECT_EQ(WSAWaitForMultipleEvents(WSA_MAXIMUM_WAIT_EVENTS + 1, many.data(), FALSE, 0, FALSE),
            WSA_WAIT_FAILED);
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_PARAMETER);
  GuardedPage g;
  EXPECT_EQ(WSAWaitForMultipleEvents(1, static_cast<WSAEVENT*>(g.none()), FALSE, 0, FALSE),
            WSA_WAIT_FAILED);
  EXPECT_EQ(WSAGetLastError(), WSAEFAULT);
  int bogus;
  WSAEVENT bad[2] = {e, &bogus};
  EXPECT_EQ(WSAWaitForMultipleEvents(2, bad, FALSE, 0, FALSE), WSA_WAIT_FAILED);
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_HANDLE);
  WSACloseEvent(e);
}

TEST(Events, ClosingAnEventDuringAWaitFailsTheWait) {
  WSAEVENT e = WSACreateEvent();
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    WSACloseEvent(e);
  });
  EXPECT_EQ(WSAWaitForMultipleEvents(1, &e, FALSE, 5000, FALSE), WSA_WAIT_FAILED);
  EXPECT_EQ(WSAGetLastError(), WSA_INVALID_HANDLE);
  t.join();
}

TEST(SleepExTest, NonAlertableSleepsAndReturnsZero) {
  auto t0 = Clock::now();
  EXPECT_EQ(SleepEx(25, FALSE), 0u);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(24));
  EXPECT_EQ(SleepEx(0, TRUE), 0u);
}

TEST(Startup, StartupAndCleanup) {
  WSADATA d;
  EXPECT_EQ(WSAStartup(MAKEWORD(2, 2), &d), 0);
  EXPECT_EQ(d.wVersion, MAKEWORD(2, 2));
  EXPECT_EQ(d.wHighVersion, MAKEWORD(2, 2));
  EXPECT_EQ(WSAStartup(MAKEWORD(0, 0), &d), WSAVERNOTSUPPORTED);
  EXPECT_EQ(WSAStartup(MAKEWORD(2, 2), nullptr), WSAEFAULT);
  EXPECT_EQ(WSACleanup(), 0);
  EXPECT_EQ(WSACleanup(), SOCKET_ERROR);
  EXPECT_EQ(WSAGetLastError(), WSANOTINITIALISED);
}

TEST(LastError, ThreadLocal) {
  WSASetLastError(111);
  std::thread t([] {
    EXPECT_EQ(WSAGetLastError(), 0);
    WSASetLastError(222);
    EXPECT_EQ(WSAGetLastError(), 222);
  });
  t.join();
  EXPECT_EQ(WSAGetLastError(), 111);
}

}  // namespace
}  // namespace wstest
