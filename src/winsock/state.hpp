// Internal state shared by the Winsock layer's translation units.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "connredir/winsock.h"

namespace connredir::winsock {

// ioctl.cpp: the fd of an open socket, or -1; *id (if given) names the
// socket itself, so a reused descriptor number is told apart.
struct Identity {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const Identity&) const = default;
};
int socket_fd(SOCKET s, Identity* id = nullptr);

// errors.cpp
void set_last_error(int code, std::string message = {});
void set_required_size(uint32_t size);

// probe.cpp: is [p, p+n) entirely readable (and writable) user memory? Never
// dereferences p: asks the kernel to copy it (process_vm_readv/writev on
// ourselves, or a pipe as fallback). n == 0 is always valid; NULL with n > 0
// is not.
bool probe_read(const void* p, size_t n);
bool probe_write(void* p, size_t n);

// runtime.cpp: one lock and one condition variable for events, completion
// queues and overlapped operations. Waiters re-check their own condition;
// every state change notifies all. Simple, and waits here are rare.
struct Apc {
  LPWSAOVERLAPPED_COMPLETION_ROUTINE fn;
  DWORD error;
  DWORD bytes;
  LPWSAOVERLAPPED ov;
};

// Per-thread queue of completion routines (Windows: the thread's APC queue).
struct ThreadQueue {
  std::deque<Apc> apcs;
  bool alive = true;  // false once the thread has exited: queued APCs dropped
};

struct Event {
  bool signaled = false;
};

struct Runtime {
  std::mutex mu;
  std::condition_variable cv;
  std::unordered_set<Event*> events;
  // Live threads by the handle WPUOpenCurrentThread hands out.
  std::unordered_map<ThreadQueue*, std::shared_ptr<ThreadQueue>> threads;
};
Runtime& rt();

std::shared_ptr<ThreadQueue> current_thread_queue();
// Lock held. nullptr if the handle does not name a live thread.
std::shared_ptr<ThreadQueue> find_thread_locked(HANDLE h);
// Lock held.
bool event_valid_locked(WSAEVENT h);
void queue_apc_locked(ThreadQueue& q, const Apc& apc);

}  // namespace connredir::winsock
