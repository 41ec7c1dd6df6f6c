/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * connredir Winsock-compatible layer.
 *
 * Lets proxy code written for Windows WFP connection redirection
 * (WSAIoctl with SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
 * SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT and
 * SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS) compile and behave the same on
 * Linux: include this header and link `connredir_winsock`.
 *
 * Plain C (C99) so it is usable from C and C++. Names and numeric values are
 * the Windows ones. Semantics, the errno -> Winsock error table and the
 * remaining differences from Windows are in docs/WINSOCK.md.
 *
 * Not provided: IOC_IN / IOC_OUT / IOC_INOUT (Linux <asm-generic/ioctl.h>
 * already defines those names with other values); use _WSAIOR/_WSAIOW/
 * _WSAIORW/_WSAIO, which are defined here with the Windows encoding.
 */
#ifndef CONNREDIR_WINSOCK_H
#define CONNREDIR_WINSOCK_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Exported from libconnredir_winsock.so (hidden visibility by default). */
#pragma GCC visibility push(default)

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Calling conventions (no-ops on Linux) ------------------------------ */
#ifndef WSAAPI
#define WSAAPI
#endif
#ifndef WSPAPI
#define WSPAPI
#endif
#ifndef CALLBACK
#define CALLBACK
#endif
#ifndef WINAPI
#define WINAPI
#endif

/* ---- Basic Windows types ------------------------------------------------ */
typedef uint8_t BYTE;
typedef uint16_t WORD;
typedef uint32_t DWORD; /* 32 bits, as on Windows (not Linux's 64-bit long) */
typedef int BOOL;
typedef int INT;
typedef int* LPINT;
typedef char CHAR;
typedef uint32_t ULONG;
typedef uint64_t UINT64;
typedef uintptr_t ULONG_PTR;
typedef uintptr_t DWORD_PTR;
typedef void* PVOID;
typedef void* LPVOID;
typedef DWORD* LPDWORD;
typedef void* HANDLE;
typedef unsigned int GROUP;

/* A socket is the Linux file descriptor widened to UINT_PTR, as on Windows:
 * INVALID_SOCKET is (SOCKET)~0, which is what -1 from socket()/accept()
 * converts to. Pass a SOCKET to POSIX calls as is (it narrows back). */
typedef uintptr_t SOCKET;
#define INVALID_SOCKET ((SOCKET)(~0))
#define SOCKET_ERROR (-1)

#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif
#ifndef NO_ERROR
#define NO_ERROR 0L
#endif

/* shutdown() "how" values (same numbers as SHUT_RD/SHUT_WR/SHUT_RDWR). */
#define SD_RECEIVE 0x00
#define SD_SEND 0x01
#define SD_BOTH 0x02

/* ---- Events and overlapped I/O ------------------------------------------ */
typedef HANDLE WSAEVENT;
typedef WSAEVENT* LPWSAEVENT;
#define WSA_INVALID_EVENT ((WSAEVENT)NULL)
#define WSA_MAXIMUM_WAIT_EVENTS 64
#define WSA_INFINITE 0xFFFFFFFFu
#define INFINITE 0xFFFFFFFFu
#define WSA_WAIT_EVENT_0 0u
#define WSA_WAIT_IO_COMPLETION 0xC0u
#define WSA_WAIT_TIMEOUT 0x102u
#define WSA_WAIT_FAILED 0xFFFFFFFFu
#define WAIT_OBJECT_0 0u
#define WAIT_IO_COMPLETION 0xC0u
#define WAIT_TIMEOUT 0x102u
#define WAIT_FAILED 0xFFFFFFFFu

/* Internal holds STATUS_PENDING while the operation is in flight, then the
 * Winsock error code of the result (0 = success); InternalHigh holds the
 * number of bytes transferred. Offset/OffsetHigh are not used by sockets. */
#define STATUS_PENDING 0x00000103u
typedef struct _WSAOVERLAPPED {
  ULONG_PTR Internal;
  ULONG_PTR InternalHigh;
  DWORD Offset;
  DWORD OffsetHigh;
  WSAEVENT hEvent;
} WSAOVERLAPPED, *LPWSAOVERLAPPED;
typedef WSAOVERLAPPED OVERLAPPED;
typedef WSAOVERLAPPED* LPOVERLAPPED;
#define HasOverlappedIoCompleted(lpOverlapped) \
  ((lpOverlapped)->Internal != (ULONG_PTR)STATUS_PENDING)

typedef void(CALLBACK* LPWSAOVERLAPPED_COMPLETION_ROUTINE)(DWORD dwError, DWORD cbTransferred,
                                                           LPWSAOVERLAPPED lpOverlapped,
                                                           DWORD dwFlags);

/* Identifies the thread a provider queues completion routines to
 * (ws2spi.h). Fill one with WPUOpenCurrentThread(). */
typedef struct _WSATHREADID {
  HANDLE ThreadHandle;
  DWORD_PTR Reserved;
} WSATHREADID, *LPWSATHREADID;

/* ---- Startup ------------------------------------------------------------ */
#define WSADESCRIPTION_LEN 256
#define WSASYS_STATUS_LEN 128
typedef struct WSAData {
  WORD wVersion;
  WORD wHighVersion;
  unsigned short iMaxSockets;
  unsigned short iMaxUdpDg;
  char* lpVendorInfo;
  char szDescription[WSADESCRIPTION_LEN + 1];
  char szSystemStatus[WSASYS_STATUS_LEN + 1];
} WSADATA, *LPWSADATA;
#ifndef MAKEWORD
#define MAKEWORD(a, b) ((WORD)(((BYTE)(a)) | ((WORD)((BYTE)(b))) << 8))
#endif

/* WSASocket() flags and the (opaque here) protocol-info argument. */
#define WSA_FLAG_OVERLAPPED 0x01u
typedef struct _WSAPROTOCOL_INFOA* LPWSAPROTOCOL_INFOA;
typedef struct _WSAPROTOCOL_INFOA* LPWSAPROTOCOL_INFO;

/* ---- Control-code encoding (ws2def.h) ----------------------------------- */
#ifndef IOC_UNIX
#define IOC_UNIX 0x00000000u
#endif
#ifndef IOC_WS2
#define IOC_WS2 0x08000000u
#endif
#ifndef IOC_PROTOCOL
#define IOC_PROTOCOL 0x10000000u
#endif
#ifndef IOC_VENDOR
#define IOC_VENDOR 0x18000000u
#endif
#ifndef IOC_VOID
#define IOC_VOID 0x20000000u
#endif
#define _WSAIO(x, y) (0x20000000u | (x) | (y))
#define _WSAIOR(x, y) (0x40000000u | (x) | (y))
#define _WSAIOW(x, y) (0x80000000u | (x) | (y))
#define _WSAIORW(x, y) (0xC0000000u | (x) | (y))

/* The WFP redirection codes (mstcpip.h). All three use the input-only
 * encoding, even the two queries. */
#define SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS _WSAIOW(IOC_VENDOR, 220) /* 0x980000DC */
#define SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT _WSAIOW(IOC_VENDOR, 221) /* 0x980000DD */
#define SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS _WSAIOW(IOC_VENDOR, 222)   /* 0x980000DE */
/* Returns a UINT64 endpoint handle: on Linux the socket cookie (SO_COOKIE). */
#define SIO_QUERY_WFP_ALE_ENDPOINT_HANDLE _WSAIOR(IOC_VENDOR, 205) /* 0x580000CD */
/* Aborts this socket's overlapped operations that have not started. */
#define SIO_FLUSH _WSAIO(IOC_WS2, 4) /* 0x28000004 */

/* SIO_GET_EXTENSION_FUNCTION_POINTER (mswsock.h): with WSAID_WSARECVMSG as
 * input, returns WSARecvMsg's address (the only extension provided). */
#define SIO_GET_EXTENSION_FUNCTION_POINTER _WSAIORW(IOC_WS2, 6) /* 0xC8000006 */
typedef struct _GUID {
  DWORD Data1;
  WORD Data2;
  WORD Data3;
  BYTE Data4[8];
} GUID;
#define WSAID_WSARECVMSG                                                           \
  {                                                                                \
    0xf689d7c8, 0x6f1f, 0x436b, { 0x8a, 0x53, 0xe5, 0x4f, 0xe3, 0x51, 0xc3, 0x22 } \
  }

/* ---- UDP: redirect records and context as control data ------------------ */
/* setsockopt(IPPROTO_IP or IPPROTO_IPV6, IP_WFP_REDIRECT_RECORDS or
 * IP_WFP_REDIRECT_CONTEXT, &(DWORD){TRUE}, sizeof(DWORD)) enables the control
 * message on a UDP proxy socket: WSARecvMsg then returns each redirected
 * flow's records (60) and context (70) with its datagrams. WSASendMsg with an
 * IP_WFP_REDIRECT_RECORDS control message attaches the records. */
#define IP_WFP_REDIRECT_RECORDS 60
#define IP_WFP_REDIRECT_CONTEXT 70
#define IPV6_WFP_REDIRECT_RECORDS 60
#define IPV6_WFP_REDIRECT_CONTEXT 70

typedef struct _WSABUF {
  ULONG len;
  CHAR* buf;
} WSABUF, *LPWSABUF;

typedef struct _WSAMSG {
  struct sockaddr* name;
  INT namelen;
  LPWSABUF lpBuffers;
  ULONG dwBufferCount;
  WSABUF Control;
  ULONG dwFlags;
} WSAMSG, *PWSAMSG, *LPWSAMSG;

/* Same layout as Windows' WSACMSGHDR (SIZE_T length, INT level, INT type). */
typedef struct cmsghdr WSACMSGHDR, *PWSACMSGHDR, *LPWSACMSGHDR;
#define WSA_CMSG_DATA(cmsg) CMSG_DATA(cmsg)
#define WSA_CMSG_SPACE(length) CMSG_SPACE(length)
#define WSA_CMSG_LEN(length) CMSG_LEN(length)
/* The control buffer's first and next headers, NULL past the end. */
static inline LPWSACMSGHDR connredir_ws_cmsg_next(const WSAMSG* msg, LPWSACMSGHDR cmsg) {
  struct msghdr mh;
  mh.msg_name = NULL;
  mh.msg_namelen = 0;
  mh.msg_iov = NULL;
  mh.msg_iovlen = 0;
  mh.msg_control = msg->Control.buf;
  mh.msg_controllen = msg->Control.len;
  mh.msg_flags = 0;
  return cmsg ? CMSG_NXTHDR(&mh, cmsg) : CMSG_FIRSTHDR(&mh);
}
#define WSA_CMSG_FIRSTHDR(msg) connredir_ws_cmsg_next((msg), NULL)
#define WSA_CMSG_NXTHDR(msg, cmsg) connredir_ws_cmsg_next((msg), (cmsg))

/* ---- Error codes (winerror.h / winsock2.h values) ----------------------- */
#define ERROR_INVALID_HANDLE 6
#define ERROR_INVALID_PARAMETER 87
#define ERROR_INSUFFICIENT_BUFFER 122
#define ERROR_NOT_FOUND 1168 /* what Windows reports for a socket that was not redirected */
#define WSA_INVALID_HANDLE 6
#define WSA_NOT_ENOUGH_MEMORY 8
#define WSA_INVALID_PARAMETER 87
#define WSA_OPERATION_ABORTED 995
#define WSA_IO_INCOMPLETE 996
#define WSA_IO_PENDING 997
#define WSAEINTR 10004
#define WSAEBADF 10009
#define WSAEACCES 10013
#define WSAEFAULT 10014
#define WSAEINVAL 10022
#define WSAEMFILE 10024
#define WSAEWOULDBLOCK 10035
#define WSAEINPROGRESS 10036
#define WSAEALREADY 10037
#define WSAENOTSOCK 10038
#define WSAEMSGSIZE 10040
#define WSAEPROTOTYPE 10041
#define WSAENOPROTOOPT 10042
#define WSAEPROTONOSUPPORT 10043
#define WSAESOCKTNOSUPPORT 10044
#define WSAEOPNOTSUPP 10045
#define WSAEAFNOSUPPORT 10047
#define WSAEADDRINUSE 10048
#define WSAEADDRNOTAVAIL 10049
#define WSAENETDOWN 10050
#define WSAENETUNREACH 10051
#define WSAECONNABORTED 10053
#define WSAECONNRESET 10054
#define WSAENOBUFS 10055
#define WSAEISCONN 10056
#define WSAENOTCONN 10057
#define WSAETIMEDOUT 10060
#define WSAECONNREFUSED 10061
#define WSAEHOSTUNREACH 10065
#define WSASYSNOTREADY 10091
#define WSAVERNOTSUPPORTED 10092
#define WSANOTINITIALISED 10093
#define WSASYSCALLFAILURE 10107

/* ---- Winsock functions -------------------------------------------------- */
int WSAAPI WSAStartup(WORD wVersionRequested, LPWSADATA lpWSAData);
int WSAAPI WSACleanup(void);

/* Thread-local last error of this layer's functions. POSIX calls made
 * directly (socket, connect, recv, ...) report through errno instead; see
 * connredir_ws_errno_to_wsa(). */
int WSAAPI WSAGetLastError(void);
void WSAAPI WSASetLastError(int iError);

int WSAAPI WSAIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
                    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
                    LPWSAOVERLAPPED lpOverlapped,
                    LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);

/* The service-provider form: errors go to *lpErrno (WSAGetLastError() is not
 * touched); completion routines are queued to the thread named by
 * *lpThreadId, which is copied at the call. */
int WSPAPI WSPIoctl(SOCKET s, DWORD dwIoControlCode, LPVOID lpvInBuffer, DWORD cbInBuffer,
                    LPVOID lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
                    LPWSAOVERLAPPED lpOverlapped,
                    LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine,
                    LPWSATHREADID lpThreadId, LPINT lpErrno);

BOOL WSAAPI WSAGetOverlappedResult(SOCKET s, LPWSAOVERLAPPED lpOverlapped, LPDWORD lpcbTransfer,
                                   BOOL fWait, LPDWORD lpdwFlags);

/* Manual-reset events, as on Windows. */
WSAEVENT WSAAPI WSACreateEvent(void);
BOOL WSAAPI WSASetEvent(WSAEVENT hEvent);
BOOL WSAAPI WSAResetEvent(WSAEVENT hEvent);
BOOL WSAAPI WSACloseEvent(WSAEVENT hEvent);
DWORD WSAAPI WSAWaitForMultipleEvents(DWORD cEvents, const WSAEVENT* lphEvents, BOOL fWaitAll,
                                      DWORD dwTimeout, BOOL fAlertable);

/* Alertable sleep: with bAlertable, runs the completion routines queued to
 * the calling thread and returns WAIT_IO_COMPLETION; otherwise 0 after
 * dwMilliseconds. */
DWORD WINAPI SleepEx(DWORD dwMilliseconds, BOOL bAlertable);

/* Creates a socket. Without WSA_FLAG_OVERLAPPED in dwFlags the socket lacks
 * the overlapped attribute (lpOverlapped is then ignored by WSAIoctl).
 * lpProtocolInfo must be NULL and g 0. */
SOCKET WSAAPI WSASocketA(int af, int type, int protocol, LPWSAPROTOCOL_INFOA lpProtocolInfo,
                         GROUP g, DWORD dwFlags);
#define WSASocket WSASocketA

/* Aborts the socket's pending overlapped operations (WSA_OPERATION_ABORTED)
 * and closes it. */
int WSAAPI closesocket(SOCKET s);

/* ws2spi.h: a WSATHREADID for the calling thread, for WSPIoctl. */
int WSPAPI WPUOpenCurrentThread(LPWSATHREADID lpThreadId, LPINT lpErrno);
int WSPAPI WPUCloseThread(LPWSATHREADID lpThreadId, LPINT lpErrno);

/* Receives one datagram (or stream bytes) like recvmsg(); on a socket where
 * IP_WFP_REDIRECT_RECORDS / _CONTEXT were enabled, a datagram of a redirected
 * UDP flow comes with the flow's records and context as control messages at
 * the socket's level (IPPROTO_IP or IPPROTO_IPV6), after any the kernel
 * returned; MSG_CTRUNC in lpMsg->dwFlags if they did not fit. Synchronous
 * only: lpOverlapped must be NULL (else WSAEOPNOTSUPP). Also reachable as on
 * Windows, through SIO_GET_EXTENSION_FUNCTION_POINTER. */
typedef INT(WSAAPI* LPFN_WSARECVMSG)(SOCKET s, LPWSAMSG lpMsg, LPDWORD lpdwNumberOfBytesRecvd,
                                     LPWSAOVERLAPPED lpOverlapped,
                                     LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
INT WSAAPI WSARecvMsg(SOCKET s, LPWSAMSG lpMsg, LPDWORD lpdwNumberOfBytesRecvd,
                      LPWSAOVERLAPPED lpOverlapped,
                      LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
/* Sends like sendmsg(). An IP_WFP_REDIRECT_RECORDS control message attaches
 * its records to the socket first (SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS);
 * an unconnected socket that is given records and a destination is then
 * connected to it (connredir redirects connected UDP sockets, not unconnected
 * sends), so the datagram goes on to the next vendor. Other control messages
 * go to the kernel. Synchronous only. */
INT WSAAPI WSASendMsg(SOCKET Handle, LPWSAMSG lpMsg, DWORD dwFlags, LPDWORD lpNumberOfBytesSent,
                      LPWSAOVERLAPPED lpOverlapped,
                      LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);

/* setsockopt() that also knows IP_WFP_REDIRECT_RECORDS / _CONTEXT at
 * IPPROTO_IP / IPPROTO_IPV6 (per socket, this layer's state); everything else
 * goes to the kernel unchanged. This header maps setsockopt(...) calls to it,
 * so Windows code enabling the control messages compiles unchanged; define
 * CONNREDIR_WS_NO_SETSOCKOPT_MACRO before including it to opt out. */
int connredir_ws_setsockopt(SOCKET s, int level, int optname, const void* optval, socklen_t optlen);
#ifndef CONNREDIR_WS_NO_SETSOCKOPT_MACRO
#define setsockopt(s, level, optname, optval, optlen) \
  connredir_ws_setsockopt((SOCKET)(s), (level), (optname), (optval), (socklen_t)(optlen))
#endif

/* ---- connredir extensions (not Windows API) ----------------------------- */

/* Buffers of these sizes always hold the query results. */
#define CONNREDIR_WS_RECORDS_MAX 512u /* = CONNREDIR_RECORDS_MAX */
#define CONNREDIR_WS_CONTEXT_MAX 256u /* = CONNREDIR_CONTEXT_MAX */
#define CONNREDIR_WS_ENDPOINT_HANDLE_SIZE 8u

/* Give or remove the overlapped attribute of a socket created with plain
 * socket()/accept() (those have it by default, as on Windows). */
int connredir_ws_set_overlapped(SOCKET s, BOOL overlapped);
/* After a query failed with WSAEINVAL because the output buffer was too
 * small: the size it needed (0 otherwise). Thread-local, synchronous calls. */
DWORD connredir_ws_required_size(void);
/* The Winsock error this layer reports for a Linux errno value. */
int connredir_ws_errno_to_wsa(int err);
/* Human-readable detail of this thread's last failure in this layer. */
const char* connredir_ws_last_error_message(void);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* CONNREDIR_WINSOCK_H */
