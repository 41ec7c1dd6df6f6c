// The errno -> Winsock error table, and the thread-local error state.
#include <cerrno>
#include <string>

#include "backend.hpp"
#include "connredir/winsock.h"
#include "state.hpp"

namespace connredir::winsock {
namespace {

// Keep in sync with the table in docs/WINSOCK.md (a test checks each row).
constexpr ErrnoMapping kTable[] = {
    {0, 0, "success"},
    {ENOENT, ERROR_NOT_FOUND, "socket was not redirected (Windows: STATUS_NOT_FOUND)"},
    {EACCES, WSAEACCES, "caller is not an authorized proxy principal"},
    {EPERM, WSAEACCES, "a sockopt program refused without an errno"},
    {EFAULT, WSAEFAULT, "bad user pointer"},
    {EINVAL, WSAEINVAL, "forged, altered or malformed records blob"},
    {ENOBUFS, WSAEINVAL, "output buffer too small (the page's rule, 0 bytes returned)"},
    {EOPNOTSUPP, WSAEOPNOTSUPP, "not a TCP socket, or connredir not loaded (get)"},
    {ENOPROTOOPT, WSAEOPNOTSUPP, "connredir not loaded (set at an unknown level)"},
    {ENOSYS, WSAEOPNOTSUPP, "kernel lacks the facility"},
    {ENOTSOCK, WSAENOTSOCK, "descriptor is not a socket"},
    {EBADF, WSAENOTSOCK, "descriptor is not open"},
    {EISCONN, WSAEISCONN, "records set after connect()"},
    {ENOTCONN, WSAENOTCONN, "socket is not connected"},
    {EINTR, WSAEINTR, "interrupted system call"},
    {EINPROGRESS, WSAEINPROGRESS, "operation in progress"},
    {EALREADY, WSAEALREADY, "operation already in progress"},
    {ENETDOWN, WSAENETDOWN, "network subsystem failed"},
    {EAGAIN, WSAEWOULDBLOCK, "resource temporarily unavailable"},
    {ENOMEM, WSAENOBUFS, "kernel out of memory (sk_storage)"},
    {EMFILE, WSAEMFILE, "too many open files"},
    {ENFILE, WSAEMFILE, "too many open files in system"},
    {EAFNOSUPPORT, WSAEAFNOSUPPORT, "address family not supported"},
    {EPROTONOSUPPORT, WSAEPROTONOSUPPORT, "protocol not supported"},
    {EPROTOTYPE, WSAEPROTOTYPE, "wrong protocol type"},
    {ESOCKTNOSUPPORT, WSAESOCKTNOSUPPORT, "socket type not supported"},
    {EMSGSIZE, WSAEMSGSIZE, "message too long"},
    {EADDRINUSE, WSAEADDRINUSE, "address in use"},
    {EADDRNOTAVAIL, WSAEADDRNOTAVAIL, "address not available"},
    {ENETUNREACH, WSAENETUNREACH, "network unreachable"},
    {EHOSTUNREACH, WSAEHOSTUNREACH, "host unreachable"},
    {ECONNABORTED, WSAECONNABORTED, "connection aborted"},
    {ECONNRESET, WSAECONNRESET, "connection reset"},
    {ECONNREFUSED, WSAECONNREFUSED, "connection refused"},
    {ETIMEDOUT, WSAETIMEDOUT, "timed out"},
    {ECANCELED, WSA_OPERATION_ABORTED, "operation cancelled"},
};

thread_local int t_last_error = 0;
thread_local std::string t_last_message;
thread_local DWORD t_required_size = 0;

}  // namespace

std::span<const ErrnoMapping> errno_table() { return kTable; }

int wsa_from_errno(int err) {
  for (const auto& m : kTable)
    if (m.err == err) return m.wsa;
  return kUnmappedErrno;
}

void set_last_error(int code, std::string message) {
  t_last_error = code;
  t_last_message = std::move(message);
}
void set_required_size(uint32_t size) { t_required_size = size; }

}  // namespace connredir::winsock

using namespace connredir::winsock;

extern "C" {

int WSAAPI WSAGetLastError(void) { return t_last_error; }
void WSAAPI WSASetLastError(int iError) {
  t_last_error = iError;
  t_last_message.clear();
}
DWORD connredir_ws_required_size(void) { return t_required_size; }
int connredir_ws_errno_to_wsa(int err) { return wsa_from_errno(err); }
const char* connredir_ws_last_error_message(void) { return t_last_message.c_str(); }

}  // extern "C"
