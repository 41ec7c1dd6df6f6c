// Socket-option costs (Google Benchmark): connredir's query records, query
// context and set records against getsockopt(SO_ORIGINAL_DST) on a socket
// NATed by nftables REDIRECT, measured in the same process and run.
//
// Run by bench/run.sh inside a network namespace whose nat table redirects
// --nat-dst to --nat-listen, with connredir attached to the cgroup --cg-on
// and a filter that redirects --redirect-dst to --proxy-listen:
//   sockopt_bench --cg-off DIR --cg-on DIR --nat-dst A:P --nat-listen A:P
//                 --redirect-dst A:P --proxy-listen A:P [benchmark flags]
// A socket is governed by the cgroup it was created in (accepted sockets by
// their listener's), so the NATed socket is created while this process is in
// --cg-off (no connredir hooks on its options: the iptables-era baseline) and
// the redirected one in --cg-on.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "connredir_abi.h"
}

namespace {

int g_nat = -1;    // accepted socket of a NATed connection (cg-off)
int g_redir = -1;  // accepted socket of a redirected connection (cg-on)
int g_fresh = -1;  // unconnected TCP socket created in cg-on
std::vector<uint8_t> g_blob;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "sockopt_bench: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

sockaddr_in addr(const std::string& text) {
  sockaddr_in s{};
  auto colon = text.rfind(':');
  s.sin_family = AF_INET;
  s.sin_port = htons(static_cast<uint16_t>(std::stoi(text.substr(colon + 1))));
  if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &s.sin_addr) != 1) die("address " + text);
  return s;
}

void join(const std::string& cgroup) {
  std::string p = cgroup + "/cgroup.procs";
  int fd = open(p.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "0\n", 2) != 2) die("joining " + p);
  close(fd);
}

// Listen on `listen`, connect to `dst`, return the accepted socket (the
// client socket is kept open for the process lifetime).
int accepted_via(const std::string& listen_at, const std::string& dst) {
  sockaddr_in l = addr(listen_at);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, reinterpret_cast<sockaddr*>(&l), sizeof l) != 0) die("bind " + listen_at);
  if (listen(ls, 16) != 0) die("listen");
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in d = addr(dst);
  if (connect(c, reinterpret_cast<sockaddr*>(&d), sizeof d) != 0) die("connect " + dst);
  int a = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  if (a < 0) die("accept");
  close(ls);
  return a;
}

void BM_null_syscall(benchmark::State& st) {
  for (auto _ : st) benchmark::DoNotOptimize(syscall(SYS_getppid));
}
BENCHMARK(BM_null_syscall);

void sockopt(benchmark::State& st, int fd, int level, int name, size_t size) {
  std::vector<uint8_t> buf(size);
  for (auto _ : st) {
    socklen_t len = static_cast<socklen_t>(buf.size());
    if (getsockopt(fd, level, name, buf.data(), &len) != 0) {
      st.SkipWithError(std::strerror(errno));
      break;
    }
    benchmark::DoNotOptimize(buf.data());
  }
}

void BM_SO_TYPE_no_hooks(benchmark::State& st) { sockopt(st, g_nat, SOL_SOCKET, SO_TYPE, 4); }
BENCHMARK(BM_SO_TYPE_no_hooks);
void BM_SO_ORIGINAL_DST_nat(benchmark::State& st) {
  sockopt(st, g_nat, SOL_IP, CONNREDIR_SO_ORIGINAL_DST, sizeof(sockaddr_in));
}
BENCHMARK(BM_SO_ORIGINAL_DST_nat);
void BM_SO_TYPE_connredir_loaded(benchmark::State& st) {
  sockopt(st, g_redir, SOL_SOCKET, SO_TYPE, 4);
}
BENCHMARK(BM_SO_TYPE_connredir_loaded);
void BM_SO_ORIGINAL_DST_connredir(benchmark::State& st) {
  sockopt(st, g_redir, SOL_IP, CONNREDIR_SO_ORIGINAL_DST, sizeof(sockaddr_in));
}
BENCHMARK(BM_SO_ORIGINAL_DST_connredir);
void BM_query_records(benchmark::State& st) {
  sockopt(st, g_redir, SOL_CONNREDIR, CONNREDIR_RECORDS, CONNREDIR_RECORDS_MAX);
}
BENCHMARK(BM_query_records);
void BM_query_context(benchmark::State& st) {
  sockopt(st, g_redir, SOL_CONNREDIR, CONNREDIR_CONTEXT, CONNREDIR_CONTEXT_MAX);
}
BENCHMARK(BM_query_context);
void BM_set_records(benchmark::State& st) {
  for (auto _ : st) {
    if (setsockopt(g_fresh, SOL_CONNREDIR, CONNREDIR_RECORDS, g_blob.data(),
                   static_cast<socklen_t>(g_blob.size())) != 0) {
      st.SkipWithError(std::strerror(errno));
      break;
    }
  }
}
BENCHMARK(BM_set_records);

}  // namespace

int main(int argc, char** argv) {
  std::string cg_off, cg_on, nat_dst, nat_listen, redirect_dst, proxy_listen;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    std::string* slot = k == "--cg-off"         ? &cg_off
                        : k == "--cg-on"        ? &cg_on
                        : k == "--nat-dst"      ? &nat_dst
                        : k == "--nat-listen"   ? &nat_listen
                        : k == "--redirect-dst" ? &redirect_dst
                        : k == "--proxy-listen" ? &proxy_listen
                                                : nullptr;
    if (slot && i + 1 < argc)
      *slot = argv[++i];
    else
      rest.push_back(argv[i]);
  }
  if (cg_off.empty() || cg_on.empty() || nat_dst.empty() || nat_listen.empty() ||
      redirect_dst.empty() || proxy_listen.empty()) {
    std::fprintf(stderr,
                 "usage: sockopt_bench --cg-off DIR --cg-on DIR --nat-dst A:P --nat-listen A:P "
                 "--redirect-dst A:P --proxy-listen A:P [benchmark flags]\n");
    return 2;
  }
  join(cg_off);
  g_nat = accepted_via(nat_listen, nat_dst);
  join(cg_on);
  g_redir = accepted_via(proxy_listen, redirect_dst);
  g_fresh = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  g_blob.resize(CONNREDIR_RECORDS_MAX);
  socklen_t len = static_cast<socklen_t>(g_blob.size());
  if (getsockopt(g_redir, SOL_CONNREDIR, CONNREDIR_RECORDS, g_blob.data(), &len) != 0)
    die("query records on the redirected socket (is the filter in place?)");
  g_blob.resize(len);
  sockaddr_in od{};
  len = sizeof od;
  if (getsockopt(g_nat, SOL_IP, CONNREDIR_SO_ORIGINAL_DST, &od, &len) != 0)
    die("SO_ORIGINAL_DST on the NATed socket (is the nat rule in place?)");
  // Setting the same blob twice on one unconnected socket must be accepted
  // for the loop above to measure the set itself.
  for (int i = 0; i < 2; ++i)
    if (setsockopt(g_fresh, SOL_CONNREDIR, CONNREDIR_RECORDS, g_blob.data(),
                   static_cast<socklen_t>(g_blob.size())) != 0)
      die("set records on an unconnected socket");
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
