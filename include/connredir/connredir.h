/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * <connredir/connredir.h>: libconnredir's C API, for inspection proxies
 * written in C (or in any language with a C FFI). A thin layer over the C++
 * API in <connredir/client.hpp>; both speak the socket-option contract of
 * docs/ABI.md, and docs/PROXY-AUTHORS.md walks through writing a proxy.
 *
 * What a proxy does with a connection connredir redirected to it:
 *
 *   int c = accept(listener, ...);
 *   unsigned char rec[CONNREDIR_RECORDS_MAX];
 *   size_t rec_len;
 *   connredir_query_records(c, rec, sizeof rec, &rec_len);   (1) the records
 *   struct sockaddr_storage dst; socklen_t dst_len;
 *   connredir_original_dst(c, &dst, &dst_len);               (2) where it was going
 *   int s = socket(dst.ss_family, SOCK_STREAM, 0);
 *   connredir_set_records(s, rec, rec_len);                  (3) BEFORE connect()
 *   connect(s, (struct sockaddr *)&dst, dst_len);            (4) the next vendor, or dst
 *   ... relay c <-> s ...
 *
 * If (3) fails, do NOT connect without the records: the kernel would treat
 * the onward connect as a new flow, the chain would start again and the flow
 * would come back to the first vendor (possibly to this proxy) to be
 * inspected again. Fail the flow loudly (close c) and fix the configuration
 * the message names.
 *
 * Errors. Every function returns 0 on success or a negative errno value
 * (-EBADF, -ENOENT, ...). Where the kernel answered, the errno is the
 * kernel's (docs/ABI.md lists every one), so callers can branch on it.
 * connredir_last_error() then returns a message that says what happened and
 * what to do about it. Nothing here calls exit() or prints.
 *
 * Threads. Every function may be called from any thread at once; the last
 * error is kept per thread.
 *
 * Stability. The structures below are part of libconnredir's ABI (its
 * SONAME); fields are never reordered or removed without a SONAME bump.
 */
#ifndef CONNREDIR_H
#define CONNREDIR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "connredir_abi.h" /* SOL_CONNREDIR, CONNREDIR_RECORDS_MAX, CONNREDIR_MAX_HOPS, ... */
#include "export.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this C API (connredir.h); bumped when a function or a structure
 * is added, so code can test for what it needs at compile time. */
#define CONNREDIR_C_API_VERSION 1

/* A buffer of this many chars always holds connredir_format_addr()'s text,
 * "255.255.255.255:65535" or "[IPv6]:65535", with its terminating NUL. */
#define CONNREDIR_ADDRSTRLEN 64

/* ---- Errors ------------------------------------------------------------- */

/* The message for this thread's most recent connredir_* call: what failed and
 * what to do, e.g. "set_records(fd 7): caller is not root nor an authorized
 * proxy principal: run `connredir authorize --uid N` ...". "" when that call
 * succeeded. Never NULL. The text stays valid until this thread's next
 * connredir_* call. */
CONNREDIR_API const char* connredir_last_error(void);

/* ---- The socket-option contract ----------------------------------------- */

/* Reads the redirect records of `fd`, a socket accepted from a connection
 * connredir redirected to this proxy, into buf. The bytes are opaque: pass
 * them unchanged to connredir_set_records() on the onward socket.
 *   buf, cap  at least CONNREDIR_RECORDS_MAX bytes always suffice
 *   len       receives the number of bytes written (may be NULL)
 * Returns 0, or:
 *   -EINVAL       buf is NULL
 *   -ENOBUFS      cap is too small; *len receives the size needed
 *   -ENOENT       the connection was not redirected by connredir (someone
 *                 connected to the proxy directly): do not relay it
 *   -EACCES       this process is neither root nor a principal of a callout
 *   -EOPNOTSUPP   connredir is not loaded for this process's cgroup
 *   -EBADF, -ENOTSOCK  fd is not an open socket */
CONNREDIR_API int connredir_query_records(int fd, void* buf, size_t cap, size_t* len);

/* Attaches a records blob (from connredir_query_records) to `fd`, a TCP
 * socket that is not connected yet. Call it BEFORE connect(): the connect is
 * then classified as the next hop of the same flow, so this callout is not
 * asked again and the next vendor's callout (if any) is.
 * Returns 0, or:
 *   -EINVAL       blob is NULL, or the kernel did not issue these exact bytes
 *   -EISCONN      fd is already connected, connecting or listening
 *   -EOPNOTSUPP   fd is not a TCP socket (or connredir is not loaded)
 *   -EACCES       this process is neither root nor a principal of a callout
 *   -ENOPROTOOPT  connredir is not loaded for this process's cgroup
 *   -ENOBUFS      the kernel had no memory for the records; retry
 * On any failure do not connect: fail the flow (see the top of this file). */
CONNREDIR_API int connredir_set_records(int fd, const void* blob, size_t len);

/* The destination the application connected to, for `fd` accepted from a
 * redirected connection (the iptables-compatible SO_ORIGINAL_DST /
 * IP6T_SO_ORIGINAL_DST options; no authorization needed). IPv4 destinations
 * come back as struct sockaddr_in, IPv6 ones as struct sockaddr_in6.
 *   outlen  receives the length of *out (may be NULL)
 * Returns 0, or -EINVAL (out is NULL), -ENOENT (not redirected),
 * -EAFNOSUPPORT (not an IPv4/IPv6 socket), -EBADF, -ENOTSOCK. */
CONNREDIR_API int connredir_original_dst(int fd, struct sockaddr_storage* out, socklen_t* outlen);

/* The redirect context of an accepted, redirected socket, decoded: which
 * callout and filter sent the flow here, where it was going, who opened it,
 * and the filter's context bytes (`connredir filter add --context`). */
struct connredir_flow_context {
  uint64_t flow_id;                 /* the same at every hop of one flow */
  uint32_t callout_id;              /* the callout that redirected to this proxy */
  uint32_t filter_id;               /* the filter that matched */
  unsigned int hop;                 /* position of this redirect in the chain, 1-based */
  struct sockaddr_storage orig_dst; /* where the connecting socket wanted to go */
  socklen_t orig_dst_len;
  struct sockaddr_storage orig_src; /* the original application's source address */
  socklen_t orig_src_len;
  uint32_t app_pid; /* the original application */
  uint32_t app_uid;
  uint64_t app_cgroup_id;
  char app_comm[17]; /* its command name, NUL-terminated */
  size_t user_len;   /* bytes of user[] in use */
  unsigned char user[CONNREDIR_USER_CONTEXT_MAX];
};

/* Fills *out from `fd`'s redirect context. Returns 0, or -EINVAL (out is
 * NULL, or the kernel's context is malformed: library and kernel ABI
 * versions differ), and the errors of connredir_query_records. */
CONNREDIR_API int connredir_query_context(int fd, struct connredir_flow_context* out);

/* connredir_query_records and connredir_query_context in one system call
 * (a proxy makes it on every accepted connection): the records into
 * `records` (cap bytes, CONNREDIR_RECORDS_MAX; *records_len gets their
 * length), the decoded context into *ctx. Returns 0, or -EINVAL (records
 * or ctx is NULL) and the errors of those two. */
CONNREDIR_API int connredir_query_flow(int fd, void* records, size_t cap, size_t* records_len,
                                       struct connredir_flow_context* ctx);

/* ---- The chain, for logging --------------------------------------------- */

/* One redirect of the flow, oldest first. */
struct connredir_chain_hop {
  uint32_t callout_id;
  uint32_t filter_id;
  struct sockaddr_storage dst; /* destination that connect asked for */
  socklen_t dst_len;
};

/* A records blob decoded: the flow, the application that opened it and every
 * redirect so far (hops[hop_count - 1] is the one that reached this proxy). */
struct connredir_chain {
  uint64_t flow_id;
  unsigned int hop_count; /* 1..CONNREDIR_MAX_HOPS */
  struct connredir_chain_hop hops[CONNREDIR_MAX_HOPS];
  uint32_t app_pid;
  uint32_t app_uid;
  uint64_t app_cgroup_id;
  char app_comm[17]; /* NUL-terminated */
};

/* Decodes a blob from connredir_query_records (no system call; structure
 * only: authenticity is the kernel's business when the blob is set). Returns
 * 0, or -EINVAL (blob or out is NULL, or the bytes are not a records blob;
 * the message names the first problem). */
CONNREDIR_API int connredir_decode_chain(const void* blob, size_t len, struct connredir_chain* out);

/* ---- Helpers ------------------------------------------------------------ */

/* Writes "1.2.3.4:80" or "[::1]:443" (IPv4-mapped IPv6 as IPv4) into buf,
 * NUL-terminated. Returns 0, or -EINVAL (a NULL pointer or a malformed
 * address), -EAFNOSUPPORT (neither IPv4 nor IPv6), -ENOBUFS (cap too small;
 * CONNREDIR_ADDRSTRLEN always suffices). */
CONNREDIR_API int connredir_format_addr(const struct sockaddr* sa, socklen_t len, char* buf,
                                        size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* CONNREDIR_H */
