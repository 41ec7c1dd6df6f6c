// Test seam: a Backend whose results the test programs, with a gate that holds
// the overlapped worker inside an operation so "still pending", "queued
// behind" and "aborted while running" are deterministic.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "backend.hpp"
#include "connredir/winsock.h"

namespace wstest {

using connredir::Error;
using connredir::Result;
using connredir::winsock::Backend;

class FakeBackend final : public Backend {
 public:
  Result<std::vector<uint8_t>> records = connredir::fail(ENOENT, "not redirected");
  Result<std::vector<uint8_t>> context = connredir::fail(ENOENT, "not redirected");
  Result<void> set_result{};
  Result<uint64_t> cookie = connredir::fail(0, "use the real SO_COOKIE");

  std::vector<uint8_t> last_set;
  int queries = 0;
  int sets = 0;

  Result<std::vector<uint8_t>> query_records(int) override {
    Enter e(*this);
    std::lock_guard lk(mu_);
    ++queries;
    return records;
  }
  Result<std::vector<uint8_t>> query_context(int) override {
    Enter e(*this);
    std::lock_guard lk(mu_);
    ++queries;
    return context;
  }
  Result<void> set_records(int, std::span<const uint8_t> blob) override {
    Enter e(*this);
    std::lock_guard lk(mu_);
    ++sets;
    last_set.assign(blob.begin(), blob.end());
    return set_result;
  }
  Result<std::pair<std::vector<uint8_t>, std::vector<uint8_t>>> udp_flow(
      int, const connredir::Address&, const connredir::Address*) override {
    Enter e(*this);
    std::lock_guard lk(mu_);
    ++queries;
    if (!records) return tl::unexpected(records.error());
    if (!context) return tl::unexpected(context.error());
    return std::pair{*records, *context};
  }
  Result<uint64_t> socket_cookie(int fd) override {
    Enter e(*this);
    if (!cookie && cookie.error().code == 0)
      return connredir::winsock::system_backend().socket_cookie(fd);
    return cookie;
  }

  void close_gate() {
    std::lock_guard lk(mu_);
    gate_closed_ = true;
  }
  void open_gate() {
    std::lock_guard lk(mu_);
    gate_closed_ = false;
    cv_.notify_all();
  }
  // Waits until n calls have entered the backend in total.
  bool wait_entered(int n) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, std::chrono::seconds(5), [&] { return entered_ >= n; });
  }
  // Waits until no call is inside the backend (teardown).
  void drain() {
    open_gate();
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, std::chrono::seconds(5), [&] { return inflight_ == 0; });
  }

 private:
  struct Enter {
    FakeBackend& f;
    explicit Enter(FakeBackend& b) : f(b) {
      std::unique_lock lk(f.mu_);
      ++f.entered_;
      ++f.inflight_;
      f.cv_.notify_all();
      f.cv_.wait(lk, [&] { return !f.gate_closed_; });
    }
    ~Enter() {
      std::lock_guard lk(f.mu_);
      --f.inflight_;
      f.cv_.notify_all();
    }
  };
  std::mutex mu_;
  std::condition_variable cv_;
  bool gate_closed_ = false;
  int entered_ = 0;
  int inflight_ = 0;
};

// Installs a FakeBackend for one test; closes what the test opened.
class WinsockTest : public ::testing::Test {
 protected:
  FakeBackend fake;
  std::vector<int> fds;

  void SetUp() override { connredir::winsock::set_backend(&fake); }
  void TearDown() override {
    fake.drain();
    // Let the worker finish returning out of the fake before it goes away.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    connredir::winsock::set_backend(nullptr);
    for (int fd : fds) close(fd);
  }

  SOCKET tcp_socket() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    fds.push_back(fd);
    return static_cast<SOCKET>(fd);
  }
  // A socket the test will closesocket()/close() itself.
  SOCKET own_socket() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd, 0);
    return static_cast<SOCKET>(fd);
  }
};

inline std::vector<uint8_t> blob(size_t n, uint8_t seed = 0x40) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i);
  return v;
}

// Two pages: the first read/write, the second PROT_NONE. tail(n) is a
// pointer n bytes before the boundary, so [tail(n), tail(n)+n) is valid and
// anything longer runs into the guard page.
class GuardedPage {
 public:
  GuardedPage() {
    ps_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    base_ = static_cast<uint8_t*>(
        mmap(nullptr, 2 * ps_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    mprotect(base_ + ps_, ps_, PROT_NONE);
  }
  ~GuardedPage() { munmap(base_, 2 * ps_); }
  uint8_t* tail(size_t n) { return base_ + ps_ - n; }
  void* none() { return base_ + ps_; }
  void make_read_only() { mprotect(base_, ps_, PROT_READ); }

 private:
  size_t ps_;
  uint8_t* base_;
};

}  // namespace wstest
