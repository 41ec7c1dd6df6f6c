// wfp-style-proxy: a transparent TCP proxy written the way a Windows WFP
// redirect proxy is written -- accept, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS,
// SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, new socket,
// SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, connect to the original
// destination, relay -- using Winsock names only (<connredir/winsock.h>). It
// takes part in a real multi-vendor chain next to connredir-proxy.
//
//   wfp-style-proxy --listen ADDR:PORT --log FILE [--mode sync|event|apc]
//                   [--max-flows N]
//
// Prints "listening ADDR:PORT" once ready (PORT 0 picks one). Appends one JSON
// line per flow to FILE: flow_id, chain (callout ids in order), orig_dst,
// bytes_up, bytes_down, result ("ok", "not_redirected", "<step>_failed:<err>").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <connredir/winsock.h>

extern "C" {
#include "connredir_abi.h"  // the callout's context format (orig_dst) and the chain
}

namespace {

enum class Mode { Sync, Event, Apc };
Mode g_mode = Mode::Sync;
std::mutex g_log_mu;
std::ofstream g_log;

// ---- WSAIoctl the three ways a Windows proxy calls it ----------------------

struct ApcDone {
  bool done = false;
  DWORD error = 0;
  DWORD bytes = 0;
};

void CALLBACK OnIoctlComplete(DWORD dwError, DWORD cbTransferred, LPWSAOVERLAPPED lpOverlapped,
                              DWORD) {
  ApcDone* d = static_cast<ApcDone*>(lpOverlapped->hEvent);  // context, as Windows code does
  d->done = true;
  d->error = dwError;
  d->bytes = cbTransferred;
}

// Returns 0 or a Winsock error; *pcb gets the bytes returned.
int Ioctl(SOCKET s, DWORD code, void* in, DWORD cbIn, void* out, DWORD cbOut, DWORD* pcb) {
  *pcb = 0;
  if (g_mode == Mode::Sync) {
    if (WSAIoctl(s, code, in, cbIn, out, cbOut, pcb, NULL, NULL) == SOCKET_ERROR)
      return WSAGetLastError();
    return 0;
  }
  WSAOVERLAPPED ov;
  std::memset(&ov, 0, sizeof(ov));
  if (g_mode == Mode::Event) {
    ov.hEvent = WSACreateEvent();
    int rc = WSAIoctl(s, code, in, cbIn, out, cbOut, pcb, &ov, NULL);
    int err = 0;
    if (rc == SOCKET_ERROR && (err = WSAGetLastError()) != WSA_IO_PENDING) {
      WSACloseEvent(ov.hEvent);
      return err;
    }
    WSAWaitForMultipleEvents(1, &ov.hEvent, TRUE, WSA_INFINITE, FALSE);
    DWORD flags = 0;
    err = WSAGetOverlappedResult(s, &ov, pcb, FALSE, &flags) ? 0 : WSAGetLastError();
    WSACloseEvent(ov.hEvent);
    return err;
  }
  ApcDone done;
  ov.hEvent = &done;
  int rc = WSAIoctl(s, code, in, cbIn, out, cbOut, pcb, &ov, OnIoctlComplete);
  if (rc == SOCKET_ERROR && WSAGetLastError() != WSA_IO_PENDING) return WSAGetLastError();
  while (!done.done) SleepEx(INFINITE, TRUE);  // alertable: runs OnIoctlComplete here
  *pcb = done.bytes;
  return static_cast<int>(done.error);
}

// ---- Helpers -----------------------------------------------------------------

std::string FormatAddr(const connredir_addr& a) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (a.family == CONNREDIR_AF_INET)
    inet_ntop(AF_INET, a.addr + 12, ip, sizeof(ip));
  else
    inet_ntop(AF_INET6, a.addr, ip, sizeof(ip));
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
  // GCC 12 -O3 false positive (GCC bug 105329): `"x" + std::string` with a 1-char literal
  // warns of an overlapping 2^63-byte memcpy inside libstdc++. Silenced for this line only.
  std::string s = a.family == CONNREDIR_AF_INET ? ip : "[" + std::string(ip) + "]";
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  return s + ":" + std::to_string(ntohs(a.port));
}

socklen_t ToSockaddr(const connredir_addr& a, sockaddr_storage* ss) {
  std::memset(ss, 0, sizeof(*ss));
  if (a.family == CONNREDIR_AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(ss);
    sin->sin_family = AF_INET;
    sin->sin_port = a.port;
    std::memcpy(&sin->sin_addr, a.addr + 12, 4);
    return sizeof(*sin);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = a.port;
  std::memcpy(&sin6->sin6_addr, a.addr, 16);
  return sizeof(*sin6);
}

bool ParseListen(const std::string& text, sockaddr_storage* ss, socklen_t* len) {
  std::memset(ss, 0, sizeof(*ss));
  std::string host, port;
  if (!text.empty() && text[0] == '[') {
    size_t end = text.find("]:");
    if (end == std::string::npos) return false;
    host = text.substr(1, end - 1);
    port = text.substr(end + 2);
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(std::stoi(port)));
    *len = sizeof(*sin6);
    return inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) == 1;
  }
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  host = text.substr(0, colon);
  port = text.substr(colon + 1);
  auto* sin = reinterpret_cast<sockaddr_in*>(ss);
  sin->sin_family = AF_INET;
  sin->sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  *len = sizeof(*sin);
  return inet_pton(AF_INET, host.c_str(), &sin->sin_addr) == 1;
}

// Copies from -> to until EOF, then half-closes `to`. Returns bytes relayed.
uint64_t Pump(SOCKET from, SOCKET to) {
  char buf[16384];
  uint64_t total = 0;
  for (;;) {
    int n = static_cast<int>(recv(from, buf, sizeof(buf), 0));
    if (n <= 0) break;
    int off = 0;
    while (off < n) {
      int w = static_cast<int>(send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL));
      if (w <= 0) {
        shutdown(from, SD_BOTH);
        return total;
      }
      off += w;
    }
    total += static_cast<uint64_t>(n);
  }
  shutdown(to, SD_SEND);
  return total;
}

void HandleFlow(SOCKET client) {
  nlohmann::json rec = {{"flow_id", 0},
                        {"chain", nlohmann::json::array()},
                        {"orig_dst", ""},
                        {"bytes_up", 0},
                        {"bytes_down", 0},
                        {"mode", g_mode == Mode::Sync    ? "sync"
                                 : g_mode == Mode::Event ? "event"
                                                         : "apc"}};
  auto finish = [&](const std::string& result) {
    rec["result"] = result;
    std::lock_guard<std::mutex> lk(g_log_mu);
    g_log << rec.dump() << "\n";
    g_log.flush();
  };

  // 1. The redirect records of the accepted connection (opaque).
  std::vector<BYTE> records(8192);
  DWORD recordsSize = 0;
  int err = Ioctl(client, SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS, NULL, 0, records.data(),
                  static_cast<DWORD>(records.size()), &recordsSize);
  if (err != 0) {
    closesocket(client);
    finish(err == ERROR_NOT_FOUND ? "not_redirected"
                                  : "query_records_failed:" + std::to_string(err));
    return;
  }
  // For the log only: the chain so far. A Windows proxy never looks inside.
  if (recordsSize >= sizeof(connredir_records)) {
    connredir_records r;
    std::memcpy(&r, records.data(), sizeof(r));
    for (unsigned i = 0; i < r.hop_count && i < CONNREDIR_MAX_HOPS; ++i)
      rec["chain"].push_back(r.hops[i].callout_id);
    rec["flow_id"] = r.flow_id;
  }

  // 2. The redirect context: where the application wanted to go.
  std::vector<BYTE> context(8192);
  DWORD contextSize = 0;
  err = Ioctl(client, SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT, NULL, 0, context.data(),
              static_cast<DWORD>(context.size()), &contextSize);
  if (err != 0 || contextSize < CONNREDIR_CONTEXT_HDR_SIZE) {
    closesocket(client);
    finish("query_context_failed:" + std::to_string(err));
    return;
  }
  connredir_context ctx;
  std::memset(&ctx, 0, sizeof(ctx));
  std::memcpy(&ctx, context.data(), std::min<size_t>(contextSize, sizeof(ctx)));
  rec["flow_id"] = ctx.flow_id;
  rec["orig_dst"] = FormatAddr(ctx.orig_dst);

  // 3. The outgoing socket, records set before connect.
  sockaddr_storage dst;
  socklen_t dstLen = ToSockaddr(ctx.orig_dst, &dst);
  SOCKET server = socket(dst.ss_family, SOCK_STREAM, IPPROTO_TCP);
  if (server == INVALID_SOCKET) {
    closesocket(client);
    finish("socket_failed:" + std::to_string(errno));
    return;
  }
  DWORD unused = 0;
  err = Ioctl(server, SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS, records.data(), recordsSize, NULL, 0,
              &unused);
  if (err != 0) {
    closesocket(server);
    closesocket(client);
    finish("set_records_failed:" + std::to_string(err));
    return;
  }
  // 4. Connect to the original destination (another vendor may redirect it).
  if (connect(server, reinterpret_cast<sockaddr*>(&dst), dstLen) == SOCKET_ERROR) {
    int e = errno;
    closesocket(server);
    closesocket(client);
    finish("connect_failed:" + std::to_string(connredir_ws_errno_to_wsa(e)));
    return;
  }
  // 5. Relay both ways.
  uint64_t down = 0;
  std::thread back([&] { down = Pump(server, client); });
  uint64_t up = Pump(client, server);
  back.join();
  rec["bytes_up"] = up;
  rec["bytes_down"] = down;
  closesocket(server);
  closesocket(client);
  finish("ok");
}

int Usage() {
  std::fprintf(stderr,
               "usage: wfp-style-proxy --listen ADDR:PORT --log FILE [--mode sync|event|apc] "
               "[--max-flows N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen, log;
  long maxFlows = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--listen") {
      listen = next();
    } else if (a == "--log") {
      log = next();
    } else if (a == "--mode") {
      std::string m = next();
      if (m == "sync")
        g_mode = Mode::Sync;
      else if (m == "event")
        g_mode = Mode::Event;
      else if (m == "apc")
        g_mode = Mode::Apc;
      else
        return Usage();
    } else if (a == "--max-flows") {
      maxFlows = std::stol(next());
    } else {
      return Usage();
    }
  }
  if (listen.empty() || log.empty()) return Usage();

  WSADATA wsaData;
  if (WSAStartup(MAKEWORD(2, 2), &wsaData) != 0) return 1;
  g_log.open(log, std::ios::app);
  if (!g_log) {
    std::fprintf(stderr, "wfp-style-proxy: cannot open log %s\n", log.c_str());
    return 1;
  }
  sockaddr_storage addr;
  socklen_t addrLen = 0;
  if (!ParseListen(listen, &addr, &addrLen)) return Usage();
  SOCKET ls = socket(addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&one), sizeof(one));
  if (ls == INVALID_SOCKET || bind(ls, reinterpret_cast<sockaddr*>(&addr), addrLen) != 0 ||
      ::listen(ls, 128) != 0) {
    std::perror("wfp-style-proxy: listen");
    return 1;
  }
  addrLen = sizeof(addr);
  getsockname(ls, reinterpret_cast<sockaddr*>(&addr), &addrLen);
  char ip[INET6_ADDRSTRLEN];
  uint16_t port;
  if (addr.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
    port = ntohs(sin->sin_port);
    std::printf("listening %s:%u\n", ip, port);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
    port = ntohs(sin6->sin6_port);
    std::printf("listening [%s]:%u\n", ip, port);
  }
  std::fflush(stdout);

  std::vector<std::thread> flows;
  for (long n = 0; maxFlows == 0 || n < maxFlows; ++n) {
    SOCKET client = accept(ls, NULL, NULL);
    if (client == INVALID_SOCKET) continue;
    flows.emplace_back(HandleFlow, client);
    if (maxFlows == 0) flows.back().detach();
  }
  for (auto& t : flows)
    if (t.joinable()) t.join();
  closesocket(ls);
  WSACleanup();
  return 0;
}
