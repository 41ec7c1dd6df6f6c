/* LD_PRELOAD shim for the nftables baseline of bench/run.sh: sets SO_MARK
 * (value from CONNREDIR_BENCH_MARK) on every TCP and UDP socket before connect(), the
 * way SO_MARK-based proxies (Istio ambient, ztunnel) exempt their own outgoing
 * connections from the REDIRECT rule. It lets the unchanged connredir-proxy
 * drive the nftables path: one extra setsockopt per outgoing connection, as
 * those proxies pay. Needs CAP_NET_ADMIN. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

typedef int (*connect_fn)(int, const struct sockaddr*, socklen_t);

int connect(int fd, const struct sockaddr* addr, socklen_t len) {
  static connect_fn real;
  static int mark = -1;
  if (!real) real = (connect_fn)dlsym(RTLD_NEXT, "connect");
  if (mark < 0) {
    const char* m = getenv("CONNREDIR_BENCH_MARK");
    mark = m ? (int)strtol(m, NULL, 0) : 0;
  }
  /* One setsockopt, as a proxy that marks its outgoing sockets does. */
  if (mark > 0 && addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6))
    setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
  return real(fd, addr, len);
}
