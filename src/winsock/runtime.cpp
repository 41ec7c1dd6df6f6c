// Events, per-thread completion-routine queues and alertable waits: the
// pieces of the Windows I/O model an overlapped WSAIoctl caller relies on.
#include <chrono>
#include <vector>

#include "state.hpp"

namespace connredir::winsock {
namespace {

// Registers the thread's queue on first use; on thread exit marks it dead and
// forgets its handle, so completions aimed at it are dropped (Windows discards
// the APCs of a terminated thread).
struct ThreadHolder {
  std::shared_ptr<ThreadQueue> q;
  ~ThreadHolder() {
    if (!q) return;
    Runtime& r = rt();
    std::lock_guard lk(r.mu);
    q->alive = false;
    q->apcs.clear();
    r.threads.erase(q.get());
  }
};
thread_local ThreadHolder t_holder;

using Clock = std::chrono::steady_clock;

// Runs every completion routine queued to this thread, in order, including
// ones queued while they run. Lock not held. Returns how many ran.
size_t run_apcs(ThreadQueue& q) {
  size_t n = 0;
  for (;;) {
    Apc apc;
    {
      std::lock_guard lk(rt().mu);
      if (q.apcs.empty()) return n;
      apc = q.apcs.front();
      q.apcs.pop_front();
    }
    apc.fn(apc.error, apc.bytes, apc.ov, 0);
    ++n;
  }
}

// Waits on the runtime condition variable until `ready` (checked with the
// lock held) returns true, an APC is queued to this thread (alertable), or the
// timeout passes. Returns 1 ready, 2 APCs ran, 0 timeout.
template <class Ready>
int alertable_wait(DWORD timeout_ms, bool alertable, Ready ready) {
  auto q = current_thread_queue();
  Runtime& r = rt();
  const bool infinite = timeout_ms == INFINITE;
  const auto deadline = Clock::now() + std::chrono::milliseconds(infinite ? 0 : timeout_ms);
  std::unique_lock lk(r.mu);
  for (;;) {
    if (ready()) return 1;
    if (alertable && !q->apcs.empty()) {
      lk.unlock();
      run_apcs(*q);
      return 2;
    }
    if (infinite) {
      r.cv.wait(lk);
    } else if (r.cv.wait_until(lk, deadline) == std::cv_status::timeout) {
      if (ready()) return 1;
      if (alertable && !q->apcs.empty()) continue;
      return 0;
    }
  }
}

}  // namespace

Runtime& rt() {
  // Leaked on purpose: the worker thread and thread-exit handlers may still
  // use it while static destructors run.
  static Runtime* r = new Runtime;
  return *r;
}

std::shared_ptr<ThreadQueue> current_thread_queue() {
  if (!t_holder.q) {
    auto q = std::make_shared<ThreadQueue>();
    std::lock_guard lk(rt().mu);
    rt().threads.emplace(q.get(), q);
    t_holder.q = q;
  }
  return t_holder.q;
}

std::shared_ptr<ThreadQueue> find_thread_locked(HANDLE h) {
  auto it = rt().threads.find(static_cast<ThreadQueue*>(h));
  if (it == rt().threads.end() || !it->second->alive) return nullptr;
  return it->second;
}

bool event_valid_locked(WSAEVENT h) {
  return h != nullptr && rt().events.count(static_cast<Event*>(h)) != 0;
}

void queue_apc_locked(ThreadQueue& q, const Apc& apc) {
  if (q.alive) q.apcs.push_back(apc);
}

}  // namespace connredir::winsock

using namespace connredir::winsock;

extern "C" {

WSAEVENT WSAAPI WSACreateEvent(void) {
  auto* e = new (std::nothrow) Event;
  if (e == nullptr) {
    set_last_error(WSA_NOT_ENOUGH_MEMORY);
    return WSA_INVALID_EVENT;
  }
  std::lock_guard lk(rt().mu);
  rt().events.insert(e);
  return e;
}

static BOOL event_op(WSAEVENT h, int op) {
  Runtime& r = rt();
  std::lock_guard lk(r.mu);
  if (!event_valid_locked(h)) {
    set_last_error(WSA_INVALID_HANDLE, "not an event created by WSACreateEvent");
    return FALSE;
  }
  auto* e = static_cast<Event*>(h);
  switch (op) {
    case 0:
      e->signaled = true;
      r.cv.notify_all();
      break;
    case 1:
      e->signaled = false;
      break;
    default:
      r.events.erase(e);
      delete e;
      r.cv.notify_all();
      break;
  }
  return TRUE;
}

BOOL WSAAPI WSASetEvent(WSAEVENT hEvent) { return event_op(hEvent, 0); }
BOOL WSAAPI WSAResetEvent(WSAEVENT hEvent) { return event_op(hEvent, 1); }
BOOL WSAAPI WSACloseEvent(WSAEVENT hEvent) { return event_op(hEvent, 2); }

DWORD WSAAPI WSAWaitForMultipleEvents(DWORD cEvents, const WSAEVENT* lphEvents, BOOL fWaitAll,
                                      DWORD dwTimeout, BOOL fAlertable) {
  if (cEvents == 0 || cEvents > WSA_MAXIMUM_WAIT_EVENTS) {
    set_last_error(WSA_INVALID_PARAMETER, "cEvents must be 1..WSA_MAXIMUM_WAIT_EVENTS");
    return WSA_WAIT_FAILED;
  }
  if (!probe_read(lphEvents, cEvents * sizeof(WSAEVENT))) {
    set_last_error(WSAEFAULT, "lphEvents is not valid memory");
    return WSA_WAIT_FAILED;
  }
  std::vector<WSAEVENT> hs(lphEvents, lphEvents + cEvents);
  {
    std::lock_guard lk(rt().mu);
    for (WSAEVENT h : hs)
      if (!event_valid_locked(h)) {
        set_last_error(WSA_INVALID_HANDLE, "not an event created by WSACreateEvent");
        return WSA_WAIT_FAILED;
      }
  }
  DWORD index = 0;
  bool closed = false;
  auto ready = [&]() {
    bool all = true;
    for (DWORD i = 0; i < cEvents; ++i) {
      if (!event_valid_locked(hs[i])) {  // closed while we waited
        closed = true;
        return true;
      }
      bool sig = static_cast<Event*>(hs[i])->signaled;
      if (sig && !fWaitAll) {
        index = i;
        return true;
      }
      all = all && sig;
    }
    index = 0;
    return static_cast<bool>(fWaitAll) && all;
  };
  int r = alertable_wait(dwTimeout, fAlertable != FALSE, ready);
  if (r == 1) {
    if (closed) {
      set_last_error(WSA_INVALID_HANDLE, "an event was closed during the wait");
      return WSA_WAIT_FAILED;
    }
    return WSA_WAIT_EVENT_0 + index;
  }
  return r == 2 ? WSA_WAIT_IO_COMPLETION : WSA_WAIT_TIMEOUT;
}

DWORD WINAPI SleepEx(DWORD dwMilliseconds, BOOL bAlertable) {
  int r = alertable_wait(dwMilliseconds, bAlertable != FALSE, [] { return false; });
  return r == 2 ? WAIT_IO_COMPLETION : 0;
}

int WSPAPI WPUOpenCurrentThread(LPWSATHREADID lpThreadId, LPINT lpErrno) {
  if (!probe_write(lpThreadId, sizeof(*lpThreadId))) {
    if (probe_write(lpErrno, sizeof(*lpErrno))) *lpErrno = WSAEFAULT;
    return SOCKET_ERROR;
  }
  auto q = current_thread_queue();
  lpThreadId->ThreadHandle = q.get();
  lpThreadId->Reserved = 0;
  return 0;
}

int WSPAPI WPUCloseThread(LPWSATHREADID lpThreadId, LPINT lpErrno) {
  if (!probe_read(lpThreadId, sizeof(*lpThreadId))) {
    if (probe_write(lpErrno, sizeof(*lpErrno))) *lpErrno = WSAEFAULT;
    return SOCKET_ERROR;
  }
  // Handles are owned by the thread itself; nothing to release.
  return 0;
}

}  // extern "C"
