// WSAIoctl / WSPIoctl for the WFP redirection codes, the overlapped engine,
// the overlapped attribute, WSASocket and closesocket.
//
// Order of checks (each failure returns at once):
//   1. s names an open socket                       else WSAENOTSOCK
//   2. pointers: lpErrno/lpThreadId (WSPIoctl), lpcbBytesReturned, the
//      in/out buffers over their whole declared size, and, when the call is
//      overlapped, lpOverlapped and lpCompletionRoutine   else WSAEFAULT
//   3. the control code                 unknown encoding: WSAEINVAL,
//                                       valid but not ours: WSAEOPNOTSUPP
//   4. the code's parameter rules (SET: in buffer required, NULL/0 output)
//   5. the operation (kernel via Backend); its errno through the one table.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "backend.hpp"
#include "state.hpp"

namespace connredir::winsock {

int socket_fd(SOCKET s, Identity* id) {
  if (s > static_cast<SOCKET>(INT_MAX)) return -1;
  int fd = static_cast<int>(s);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return -1;
  if (id) *id = {st.st_dev, st.st_ino};
  return fd;
}

namespace {

constexpr DWORD kMaxSetInput = 65536;  // no records blob is anywhere near this

enum class Kind { QueryRecords, QueryContext, Set, EndpointHandle, Flush, Invalid, Unsupported };

Kind classify(DWORD code) {
  switch (code) {
    case SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS:
      return Kind::QueryRecords;
    case SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT:
      return Kind::QueryContext;
    case SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS:
      return Kind::Set;
    case SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE:
      return Kind::EndpointHandle;
    case SIO_FLUSH:
      return Kind::Flush;
    default:
      // A Winsock code has exactly one of the I/O bits' valid combinations:
      // IOC_VOID, IOC_OUT, IOC_IN or IOC_IN|IOC_OUT. Anything else is "not
      // a valid command" (WSAEINVAL); a well-formed code we do not implement
      // is "not supported by the transport provider" (WSAEOPNOTSUPP).
      DWORD io = code & 0xE0000000u;
      if (io == 0x20000000u || io == 0x40000000u || io == 0x80000000u || io == 0xC0000000u)
        return Kind::Unsupported;
      return Kind::Invalid;
  }
}

struct Outcome {
  int wsa = 0;
  std::vector<uint8_t> data;
  DWORD required = 0;
  std::string message;
};

Outcome from_error(const Error& e) {
  Outcome o;
  o.wsa = wsa_from_errno(e.code);
  o.message = e.message;
  return o;
}

// Performs the operation on fd. Does not touch caller memory.
Outcome execute(int fd, Kind kind, const std::vector<uint8_t>& in, DWORD cb_out) {
  Backend& b = backend();
  Outcome o;
  Result<std::vector<uint8_t>> r = std::vector<uint8_t>{};
  switch (kind) {
    case Kind::QueryRecords:
      r = b.query_records(fd);
      break;
    case Kind::QueryContext:
      r = b.query_context(fd);
      break;
    case Kind::EndpointHandle: {
      auto c = b.socket_cookie(fd);
      if (!c) return from_error(c.error());
      std::vector<uint8_t> v(sizeof(uint64_t));
      std::memcpy(v.data(), &*c, sizeof(uint64_t));
      r = std::move(v);
      break;
    }
    case Kind::Set: {
      auto s = b.set_records(fd, in);
      if (!s) return from_error(s.error());
      return o;
    }
    default:
      return o;
  }
  if (!r) return from_error(r.error());
  if (r->empty()) {
    // A successful query never reports 0 bytes (the page); the contract
    // never returns empty data, so treat it as "nothing there".
    o.wsa = ERROR_NOT_FOUND;
    o.message = "the kernel returned no data";
    return o;
  }
  if (r->size() > cb_out) {
    // The page's rule (reading 1, see docs/WINSOCK.md): WSAEINVAL and 0
    // bytes returned. The needed size stays discoverable.
    o.wsa = WSAEINVAL;
    o.required = static_cast<DWORD>(r->size());
    o.message = "output buffer too small: " + std::to_string(r->size()) + " bytes needed";
    return o;
  }
  o.data = std::move(*r);
  return o;
}

// ---- Overlapped engine ------------------------------------------------------

struct Op {
  int fd = -1;     // caller's descriptor, to notice a plain close()
  int dupfd = -1;  // what the worker operates on
  Identity id;
  Kind kind = Kind::Invalid;
  std::vector<uint8_t> in;
  void* out = nullptr;
  DWORD cb_out = 0;
  LPWSAOVERLAPPED ov = nullptr;
  LPWSAOVERLAPPED_COMPLETION_ROUTINE cr = nullptr;
  std::shared_ptr<ThreadQueue> target;  // WSAIoctl: the calling thread
  bool use_tid = false;                 // WSPIoctl: the copied WSATHREADID
  WSATHREADID tid{};
  enum { Queued, Running, Done } state = Queued;
};

struct Attr {
  Identity id;
  bool overlapped;
};

struct Engine {
  std::deque<std::shared_ptr<Op>> queue;
  std::unordered_map<LPWSAOVERLAPPED, std::shared_ptr<Op>> pending;
  std::unordered_map<int, Attr> attrs;  // sockets whose attribute was set
  bool worker = false;
};
Engine& engine() {
  static Engine* e = new Engine;  // leaked, see rt()
  return *e;
}

// Lock held. Publishes the result through the WSAOVERLAPPED, then the
// completion routine (queued to its thread) or else the event.
void complete_locked(Op& op, int status, DWORD bytes) {
  if (op.state == Op::Done) return;
  if (op.state == Op::Queued && op.dupfd >= 0) {
    close(op.dupfd);
    op.dupfd = -1;
  }
  op.state = Op::Done;
  Engine& e = engine();
  std::erase_if(e.queue, [&](const auto& p) { return p.get() == &op; });
  e.pending.erase(op.ov);
  op.ov->InternalHigh = bytes;
  op.ov->Internal = static_cast<ULONG_PTR>(status);
  if (op.cr) {
    std::shared_ptr<ThreadQueue> q =
        op.use_tid ? find_thread_locked(op.tid.ThreadHandle) : op.target;
    if (q) queue_apc_locked(*q, Apc{op.cr, static_cast<DWORD>(status), bytes, op.ov});
  } else if (event_valid_locked(op.ov->hEvent)) {
    static_cast<Event*>(op.ov->hEvent)->signaled = true;
  }
  rt().cv.notify_all();
}

void worker_main() {
  Runtime& r = rt();
  Engine& e = engine();
  for (;;) {
    std::shared_ptr<Op> op;
    {
      std::unique_lock lk(r.mu);
      r.cv.wait(lk, [&] { return !e.queue.empty(); });
      op = e.queue.front();
      e.queue.pop_front();
      op->state = Op::Running;
    }
    // A descriptor closed with close() instead of closesocket(), or reused
    // for another socket, aborts the operation like closesocket() does.
    Identity now;
    bool same = socket_fd(static_cast<SOCKET>(op->fd), &now) >= 0 && now == op->id;
    Outcome o;
    if (same) o = execute(op->dupfd, op->kind, op->in, op->cb_out);
    close(op->dupfd);
    std::lock_guard lk(r.mu);
    if (op->state == Op::Done) continue;  // aborted while running
    if (!same) {
      complete_locked(*op, WSA_OPERATION_ABORTED, 0);
      continue;
    }
    if (o.wsa == 0 && !o.data.empty()) std::memcpy(op->out, o.data.data(), o.data.size());
    complete_locked(*op, o.wsa, o.wsa == 0 ? static_cast<DWORD>(o.data.size()) : 0);
  }
}

// Lock held. Aborts the socket's operations: all of them (closesocket), or
// only those not started yet (SIO_FLUSH; a running one is one short system
// call and reports its real result).
void abort_locked(int fd, const Identity& id, bool include_running) {
  Engine& e = engine();
  std::vector<std::shared_ptr<Op>> victims;
  for (auto& [ov, op] : e.pending)
    if (op->fd == fd && op->id == id &&
        (op->state == Op::Queued || (include_running && op->state == Op::Running)))
      victims.push_back(op);
  for (auto& op : victims) complete_locked(*op, WSA_OPERATION_ABORTED, 0);
}

bool is_overlapped_locked(int fd, const Identity& id) {
  auto& attrs = engine().attrs;
  auto it = attrs.find(fd);
  if (it == attrs.end() || !(it->second.id == id)) return true;  // Windows socket() default
  return it->second.overlapped;
}

struct Call {
  SOCKET s;
  DWORD code;
  LPVOID in;
  DWORD cb_in;
  LPVOID out;
  DWORD cb_out;
  LPDWORD bytes;
  LPWSAOVERLAPPED ov;
  LPWSAOVERLAPPED_COMPLETION_ROUTINE cr;
  bool spi;
  LPWSATHREADID tid;
};

// SIO_GET_EXTENSION_FUNCTION_POINTER: WSARecvMsg is the one extension this
// layer has (msg.cpp). Answered at once, also for an overlapped call.
int extension_pointer(const Call& c) {
  static const GUID recvmsg_id = WSAID_WSARECVMSG;
  if (c.in == nullptr || c.cb_in != sizeof(GUID)) {
    set_last_error(WSAEINVAL, "SIO_GET_EXTENSION_FUNCTION_POINTER takes a GUID as input");
    return WSAEINVAL;
  }
  if (std::memcmp(c.in, &recvmsg_id, sizeof(GUID)) != 0) {
    set_last_error(WSAEINVAL, "unknown extension GUID: only WSAID_WSARECVMSG is provided");
    return WSAEINVAL;
  }
  LPFN_WSARECVMSG fn = WSARecvMsg;
  if (c.out == nullptr || c.cb_out < sizeof fn) {
    set_last_error(WSAEFAULT, "the output buffer must hold a function pointer");
    return WSAEFAULT;
  }
  std::memcpy(c.out, &fn, sizeof fn);
  if (c.bytes) *c.bytes = sizeof fn;
  if (c.ov) {
    c.ov->Internal = 0;
    c.ov->InternalHigh = sizeof fn;
  }
  set_last_error(0);
  return 0;
}

// Returns 0 on synchronous success, else the Winsock error (WSA_IO_PENDING
// when an overlapped operation was started).
int ioctl_core(const Call& c) {
  set_required_size(0);
  Identity id;
  int fd = socket_fd(c.s, &id);
  if (fd < 0) {
    set_last_error(WSAENOTSOCK, "descriptor is not an open socket");
    return WSAENOTSOCK;
  }
  bool overlapped;
  {
    std::lock_guard lk(rt().mu);
    overlapped = c.ov != nullptr && is_overlapped_locked(fd, id);
  }
  auto fault = [](const char* what) {
    set_last_error(WSAEFAULT, std::string(what) + " is not valid user memory");
    return WSAEFAULT;
  };
  {
    // probe_write reads a byte per page and writes it back. The worker
    // writes a pending operation's WSAOVERLAPPED and output buffer (which a
    // caller may pass again) under this lock, so probing outside it could put
    // a stale byte back over a completion (Internal's low byte, 0x03 of
    // STATUS_PENDING, over a finished status 0: the likely cause of one
    // failed ASan run of Overlapped.RoutineOfAnExitedThreadIsDropped).
    std::lock_guard lk(rt().mu);
    if (c.bytes != nullptr ? !probe_write(c.bytes, sizeof(DWORD)) : !overlapped)
      return fault("lpcbBytesReturned");
    if (!probe_read(c.in, c.cb_in)) return fault("lpvInBuffer");
    if (!probe_write(c.out, c.cb_out)) return fault("lpvOutBuffer");
    if (overlapped) {
      if (!probe_write(c.ov, sizeof(WSAOVERLAPPED))) return fault("lpOverlapped");
      if (c.cr != nullptr && !probe_read(reinterpret_cast<const void*>(c.cr), 1))
        return fault("lpCompletionRoutine");
      if (c.spi && c.cr != nullptr && !probe_read(c.tid, sizeof(WSATHREADID)))
        return fault("lpThreadId");
    }
  }
  if (c.bytes) *c.bytes = 0;
  if (c.code == SIO_GET_EXTENSION_FUNCTION_POINTER) return extension_pointer(c);

  Kind kind = classify(c.code);
  if (kind == Kind::Invalid) {
    set_last_error(WSAEINVAL, "not a valid Winsock control code");
    return WSAEINVAL;
  }
  if (kind == Kind::Unsupported) {
    set_last_error(WSAEOPNOTSUPP, "control code not supported by the connredir provider");
    return WSAEOPNOTSUPP;
  }
  std::vector<uint8_t> in;
  if (kind == Kind::Set) {
    if (c.out != nullptr || c.cb_out != 0) {
      set_last_error(WSAEINVAL, "SET takes no output buffer: pass NULL and 0");
      return WSAEINVAL;
    }
    if (c.in == nullptr || c.cb_in == 0 || c.cb_in > kMaxSetInput) {
      set_last_error(WSAEINVAL, "SET needs the records blob as input buffer");
      return WSAEINVAL;
    }
    const auto* p = static_cast<const uint8_t*>(c.in);
    in.assign(p, p + c.cb_in);
  }

  Runtime& r = rt();
  Engine& e = engine();
  if (kind == Kind::Flush) {
    std::lock_guard lk(r.mu);
    abort_locked(fd, id, false);
  }

  if (overlapped && kind != Kind::Flush) {
    auto op = std::make_shared<Op>();
    op->fd = fd;
    op->id = id;
    op->kind = kind;
    op->in = std::move(in);
    op->out = c.out;
    op->cb_out = c.cb_out;
    op->ov = c.ov;
    op->cr = c.cr;
    if (c.cr && c.spi) {
      op->use_tid = true;
      op->tid = *c.tid;  // the structure, not the pointer (the page)
    } else if (c.cr) {
      op->target = current_thread_queue();
    }
    std::lock_guard lk(r.mu);
    if (e.pending.count(c.ov)) {
      set_last_error(WSAEINVAL, "lpOverlapped is already in use by a pending operation");
      return WSAEINVAL;
    }
    if (c.cr && c.spi && !find_thread_locked(c.tid->ThreadHandle)) {
      set_last_error(WSAEINVAL, "lpThreadId does not name a live thread (WPUOpenCurrentThread)");
      return WSAEINVAL;
    }
    if (!c.cr && c.ov->hEvent != nullptr && !event_valid_locked(c.ov->hEvent)) {
      set_last_error(WSA_INVALID_HANDLE, "lpOverlapped->hEvent is not a WSACreateEvent event");
      return WSA_INVALID_HANDLE;
    }
    op->dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (op->dupfd < 0) {
      int err = errno;
      set_last_error(wsa_from_errno(err), "dup of the socket failed");
      return wsa_from_errno(err);
    }
    c.ov->Internal = STATUS_PENDING;
    c.ov->InternalHigh = 0;
    if (!c.cr && c.ov->hEvent) static_cast<Event*>(c.ov->hEvent)->signaled = false;
    e.pending.emplace(c.ov, op);
    e.queue.push_back(op);
    if (!e.worker) {
      std::thread(worker_main).detach();
      e.worker = true;
    }
    r.cv.notify_all();
    set_last_error(WSA_IO_PENDING);
    return WSA_IO_PENDING;
  }

  Outcome o = execute(fd, kind, in, c.cb_out);
  if (o.wsa == 0 && !o.data.empty()) std::memcpy(c.out, o.data.data(), o.data.size());
  DWORD n = o.wsa == 0 ? static_cast<DWORD>(o.data.size()) : 0;
  if (c.bytes) *c.bytes = n;
  set_required_size(o.required);
  if (overlapped) {  // SIO_FLUSH on an overlapped call: completes at once
    std::lock_guard lk(r.mu);
    if (!e.pending.count(c.ov)) {
      if (!c.cr && c.ov->hEvent && event_valid_locked(c.ov->hEvent))
        static_cast<Event*>(c.ov->hEvent)->signaled = false;
      Op op;
      op.ov = c.ov;
      op.cr = c.cr;
      op.state = Op::Running;
      if (c.cr && c.spi) {
        op.use_tid = true;
        op.tid = *c.tid;
      } else if (c.cr) {
        op.target = current_thread_queue();
      }
      complete_locked(op, o.wsa, n);
    }
  }
  if (o.wsa != 0) set_last_error(o.wsa, o.message);
  return o.wsa;
}

}  // namespace
}  // namespace connredir::winsock

using namespace connredir::winsock;

extern "C" {

int WSAAPI WSAIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
                    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
                    LPWSAOVERLAPPED lpOverlapped,
                    LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine) {
  int err = ioctl_core(Call{s, dwIoControlCode, lpvInBuffer, cbInBuffer, lpvOutBuffer, cbOutBuffer,
                            lpcbBytesReturned, lpOverlapped, lpCompletionRoutine, false, nullptr});
  // ioctl_core has set the thread's last error (and its message).
  return err == 0 ? 0 : SOCKET_ERROR;
}

int WSPAPI WSPIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
                    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
                    LPWSAOVERLAPPED lpOverlapped,
                    LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine,
                    LPWSATHREADID lpThreadId, LPINT lpErrno) {
  // No way to report anything without lpErrno.
  if (!probe_write(lpErrno, sizeof(*lpErrno))) return SOCKET_ERROR;
  // WSPIoctl reports through *lpErrno only: keep the caller's last error.
  int saved = WSAGetLastError();
  std::string saved_msg = connredir_ws_last_error_message();
  int err =
      ioctl_core(Call{s, dwIoControlCode, lpvInBuffer, cbInBuffer, lpvOutBuffer, cbOutBuffer,
                      lpcbBytesReturned, lpOverlapped, lpCompletionRoutine, true, lpThreadId});
  set_last_error(saved, std::move(saved_msg));
  if (err == 0) return 0;
  *lpErrno = err;
  return SOCKET_ERROR;
}

BOOL WSAAPI WSAGetOverlappedResult(SOCKET s, LPWSAOVERLAPPED lpOverlapped, LPDWORD lpcbTransfer,
                                   BOOL fWait, LPDWORD lpdwFlags) {
  if (socket_fd(s) < 0) {
    set_last_error(WSAENOTSOCK, "descriptor is not an open socket");
    return FALSE;
  }
  // lpOverlapped is only read here, and the worker may be completing it right
  // now: probe it read-only (probe_write puts bytes back, see WSAIoctl).
  if (!probe_read(lpOverlapped, sizeof(*lpOverlapped)) ||
      !probe_write(lpcbTransfer, sizeof(DWORD)) || !probe_write(lpdwFlags, sizeof(DWORD))) {
    set_last_error(WSAEFAULT, "a pointer argument is not valid user memory");
    return FALSE;
  }
  Runtime& r = rt();
  ULONG_PTR status, bytes;
  {
    std::unique_lock lk(r.mu);
    auto done = [&] { return lpOverlapped->Internal != STATUS_PENDING; };
    if (!done()) {
      if (!fWait) {
        set_last_error(WSA_IO_INCOMPLETE, "the operation has not completed");
        return FALSE;
      }
      r.cv.wait(lk, done);
    }
    status = lpOverlapped->Internal;
    bytes = lpOverlapped->InternalHigh;
  }
  *lpcbTransfer = static_cast<DWORD>(bytes);
  *lpdwFlags = 0;
  if (status != 0) {
    set_last_error(static_cast<int>(status));
    return FALSE;
  }
  return TRUE;
}

SOCKET WSAAPI WSASocketA(int af, int type, int protocol, LPWSAPROTOCOL_INFOA lpProtocolInfo,
                         GROUP g, DWORD dwFlags) {
  if (lpProtocolInfo != nullptr || g != 0) {
    set_last_error(WSAEINVAL, "lpProtocolInfo and socket groups are not supported");
    return INVALID_SOCKET;
  }
  int fd = ::socket(af, type | SOCK_CLOEXEC, protocol);
  if (fd < 0) {
    int err = errno;
    set_last_error(wsa_from_errno(err), "socket() failed");
    return INVALID_SOCKET;
  }
  Identity id;
  socket_fd(static_cast<SOCKET>(fd), &id);
  std::lock_guard lk(rt().mu);
  engine().attrs[fd] = Attr{id, (dwFlags & WSA_FLAG_OVERLAPPED) != 0};
  return static_cast<SOCKET>(fd);
}

int connredir_ws_set_overlapped(SOCKET s, BOOL overlapped) {
  Identity id;
  int fd = socket_fd(s, &id);
  if (fd < 0) {
    set_last_error(WSAENOTSOCK, "descriptor is not an open socket");
    return SOCKET_ERROR;
  }
  std::lock_guard lk(rt().mu);
  engine().attrs[fd] = Attr{id, overlapped != FALSE};
  return 0;
}

int WSAAPI closesocket(SOCKET s) {
  Identity id;
  int fd = socket_fd(s, &id);
  if (fd < 0) {
    set_last_error(WSAENOTSOCK, "descriptor is not an open socket");
    return SOCKET_ERROR;
  }
  {
    std::lock_guard lk(rt().mu);
    abort_locked(fd, id, true);
    engine().attrs.erase(fd);
  }
  if (::close(fd) != 0 && errno != EINTR) {
    int err = errno;
    set_last_error(wsa_from_errno(err), "close() failed");
    return SOCKET_ERROR;
  }
  return 0;
}

static int g_startup_count = 0;

int WSAAPI WSAStartup(WORD wVersionRequested, LPWSADATA lpWSAData) {
  if ((wVersionRequested & 0xff) == 0) return WSAVERNOTSUPPORTED;
  if (!probe_write(lpWSAData, sizeof(*lpWSAData))) return WSAEFAULT;
  std::memset(lpWSAData, 0, sizeof(*lpWSAData));
  WORD v = wVersionRequested;
  if ((v & 0xff) > 2 || ((v & 0xff) == 2 && (v >> 8) > 2)) v = MAKEWORD(2, 2);
  lpWSAData->wVersion = v;
  lpWSAData->wHighVersion = MAKEWORD(2, 2);
  std::snprintf(lpWSAData->szDescription, sizeof(lpWSAData->szDescription),
                "connredir Winsock-compatible layer");
  std::snprintf(lpWSAData->szSystemStatus, sizeof(lpWSAData->szSystemStatus), "Running");
  std::lock_guard lk(rt().mu);
  ++g_startup_count;
  return 0;
}

int WSAAPI WSACleanup(void) {
  std::lock_guard lk(rt().mu);
  if (g_startup_count == 0) {
    set_last_error(WSANOTINITIALISED, "WSACleanup without WSAStartup");
    return SOCKET_ERROR;
  }
  --g_startup_count;
  return 0;
}

}  // extern "C"
