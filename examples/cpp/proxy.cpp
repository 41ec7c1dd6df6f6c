// connredir-example-cpp: a minimal inspection proxy in C++20 that takes part
// in a connredir proxy chain. Copy it, then put your inspection where it says
// "inspect here".
//
//   connredir-example-cpp --listen ADDR:PORT [--log FILE]
//
// For every connection connredir redirects to ADDR:PORT it reads the redirect
// records, context and original destination, logs the flow as one JSON line
// (to FILE, or standard output) when it ends, and relays it to the original
// destination with the records attached, so the flow passes every vendor's
// proxy exactly once. One thread per direction keeps the code short; a real
// proxy would use epoll (see src/proxy/ in connredir for one).
//
// Build: cmake -S . -B build && cmake --build build   (find_package(connredir))
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include <connredir/client.hpp>

namespace {

std::mutex g_log_mu;
std::ostream* g_log = &std::cout;

// Copies from -> to until EOF, then passes the EOF on (half-close), so each
// side can finish sending after the other stopped. Returns bytes copied.
uint64_t pump(int from, int to) {
  char buf[65536];
  uint64_t total = 0;
  for (;;) {
    ssize_t n = recv(from, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF or reset
    // inspect here: buf[0..n) is the next chunk of this direction
    for (ssize_t off = 0; off < n;) {
      ssize_t w = send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {  // the receiver is gone: end both directions
        shutdown(from, SHUT_RDWR);
        shutdown(to, SHUT_RDWR);
        return total;
      }
      off += w;
    }
    total += static_cast<uint64_t>(n);
  }
  shutdown(to, SHUT_WR);
  return total;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", ch);
      out += esc;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

struct FlowLog {
  connredir::RecordsInfo chain;  // decoded records: the chain so far
  connredir::Context ctx;        // our callout's redirect
  std::string orig_dst;
  uint64_t up = 0, down = 0;
  std::string result = "ok";

  // One JSON line per flow: the callout ids of the chain (oldest first; the
  // last one is ours), where the application was going, the bytes relayed.
  void write() const {
    std::ostringstream o;
    o << "{\"proxy\":\"cpp\",\"flow_id\":" << chain.flow_id << ",\"chain\":[";
    for (size_t i = 0; i < chain.hops.size(); i++)
      o << (i ? "," : "") << "{\"callout_id\":" << chain.hops[i].callout_id
        << ",\"filter_id\":" << chain.hops[i].filter_id
        << ",\"dst\":" << json_string(chain.hops[i].dst.to_string()) << "}";
    o << "],\"callout_id\":" << ctx.callout_id << ",\"hop\":" << unsigned{ctx.hop}
      << ",\"app\":{\"pid\":" << chain.origin.pid << ",\"uid\":" << chain.origin.uid
      << ",\"comm\":" << json_string(chain.origin.comm)
      << "},\"orig_dst\":" << json_string(orig_dst) << ",\"bytes_up\":" << up
      << ",\"bytes_down\":" << down << ",\"result\":" << json_string(result) << "}\n";
    std::lock_guard lock(g_log_mu);  // whole lines only
    *g_log << o.str() << std::flush;
  }
};

void handle_flow(int client) {
  FlowLog log;
  int server = -1;
  auto finish = [&](std::string result) {
    log.result = std::move(result);
    log.write();
    if (server >= 0) close(server);
    close(client);
  };

  // 1. The flow, in one call: its redirect records (the opaque proof of
  //    which vendors' proxies this flow already passed) and its redirect
  //    context (which of our callout's filters sent it here, the filter's
  //    --context bytes in ctx.user, and where the application wanted to go).
  //    ENOENT means nobody redirected it (a client connected to the proxy
  //    port directly): there is nowhere to relay it.
  auto flow = connredir::query_flow(client);
  if (!flow) return finish("query_flow failed: " + flow.error().message);
  const connredir::RecordsBlob& records = flow->records;
  // Decoded only for the log; the bytes themselves are passed on unchanged.
  if (auto info = connredir::decode_records(records)) log.chain = *info;
  log.ctx = flow->context;

  // 2. Where the application wanted to go (also in the context; asked here
  //    the way a proxy written for iptables REDIRECT asks, SO_ORIGINAL_DST).
  auto dst = connredir::original_destination(client);
  if (!dst) return finish("original_destination failed: " + dst.error().message);
  log.orig_dst = dst->to_string();

  // 3. The onward socket, with the records attached BEFORE connect(): the
  //    kernel then knows this connect continues the same flow, skips our
  //    callout and lets the next vendor's callout (if any) redirect it.
  sockaddr_storage ss{};
  socklen_t ss_len = dst->to_sockaddr(ss);
  server = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server < 0) return finish(std::string("socket failed: ") + std::strerror(errno));
  if (auto set = connredir::set_records(server, records); !set) {
    // Never connect without the records: that connect would start a new
    // chain and the flow would be redirected, and inspected, all over again.
    // EACCES (we are not the callout's --proxy-uid/--proxy-cgroup) and
    // ENOPROTOOPT (we run outside the cgroups `connredir up` attached to) are
    // misconfigurations: fail the flow and say so loudly.
    std::cerr << "connredir-example-cpp: NOT relaying flow " << log.chain.flow_id << " to "
              << log.orig_dst << ": " << set.error().message << std::endl;
    return finish("set_records failed: " + set.error().message);
  }

  // 4. Connect to the original destination. If another vendor's filter
  //    covers it, connredir redirects this connect to that vendor's proxy.
  if (connect(server, reinterpret_cast<sockaddr*>(&ss), ss_len) != 0)
    return finish("connect to " + log.orig_dst + " failed: " + std::strerror(errno));

  // 5. Relay both directions until both sides closed.
  {
    std::jthread back([&] { log.down = pump(server, client); });
    log.up = pump(client, server);
  }
  finish("ok");
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at, log_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--listen") listen_at = argv[i + 1];
    if (std::string(argv[i]) == "--log") log_path = argv[i + 1];
  }
  auto addr = connredir::Address::parse(listen_at);
  if (!addr) {
    std::cerr << "usage: " << argv[0] << " --listen ADDR:PORT [--log FILE]\n";
    return 2;
  }
  std::ofstream file;
  if (!log_path.empty()) {
    file.open(log_path, std::ios::app);
    if (!file) {
      std::cerr << "connredir-example-cpp: cannot open " << log_path << "\n";
      return 1;
    }
    g_log = &file;
  }
  std::signal(SIGPIPE, SIG_IGN);

  // The proxy's address must be the one its callout names
  // (`connredir callout add NAME --proxy ADDR:PORT --proxy-uid UID`), and
  // only root or that principal may bind it.
  sockaddr_storage ss{};
  socklen_t ss_len = addr->to_sockaddr(ss);
  int one = 1;
  int l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(l, reinterpret_cast<sockaddr*>(&ss), ss_len) != 0 || listen(l, 128) != 0) {
    std::cerr << "connredir-example-cpp: listen on " << listen_at << ": " << std::strerror(errno)
              << "\n";
    return 1;
  }
  std::cerr << "connredir-example-cpp: listening on " << addr->to_string() << std::endl;

  for (;;) {
    int c = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) std::thread(handle_flow, c).detach();
  }
}
