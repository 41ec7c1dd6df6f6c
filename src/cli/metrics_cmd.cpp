// `connredir metrics`: serves connredir's counters and state as Prometheus
// metrics (`/metrics`, text format 0.0.4), or prints them once (`--once`, for
// node_exporter's textfile collector or a look by hand).
#include <arpa/inet.h>
#include <httplib.h>
#include <signal.h>

#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

struct MetricsArgs {
  std::string listen = "127.0.0.1:9475";
  bool once = false;
  bool allow_remote = false;
};

bool is_loopback(const Address& a) {
  if (a.family == AF_INET6) {
    static const std::array<uint8_t, 16> kLoop6 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (a.ip == kLoop6) return true;
  }
  // IPv4 is stored v4-mapped: 127.0.0.0/8.
  return a.ip[10] == 0xff && a.ip[11] == 0xff && a.ip[12] == 127;
}

httplib::Server* g_server = nullptr;
void stop_server(int) {
  if (g_server) g_server->stop();
}

int cmd_metrics(const std::string& pin_dir, const MetricsArgs& a) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  if (a.once) {
    auto text = ctl::metrics_text(pin_dir);
    if (!text) return report(text.error());
    fmt::print("{}", *text);
    return 0;
  }
  auto addr = Address::parse(a.listen);
  if (!addr) return usage(fmt::format("--listen {}: {}", a.listen, addr.error().message));
  if (addr->port == 0) return usage(fmt::format("--listen {} needs a port", a.listen));
  // The metrics name every vendor and count the host's redirected traffic:
  // loopback unless the administrator says otherwise.
  if (!is_loopback(*addr) && !a.allow_remote)
    return usage(
        fmt::format("--listen {} is not a loopback address: the metrics reveal callouts "
                    "and traffic counts; add --allow-remote if the port is firewalled",
                    a.listen));
  // Fail early with the real reason rather than serving errors.
  if (auto probe = ctl::metrics_text(pin_dir); !probe) return report(probe.error());

  httplib::Server server;
  server.Get("/metrics", [&pin_dir](const httplib::Request&, httplib::Response& res) {
    auto text = ctl::metrics_text(pin_dir);
    if (!text) {
      res.status = 503;
      res.set_content(text.error().message + "\n", "text/plain");
      return;
    }
    res.set_content(*text, "text/plain; version=0.0.4; charset=utf-8");
  });
  server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("connredir metrics: see /metrics\n", "text/plain");
  });
  char host[INET6_ADDRSTRLEN] = {};
  if (addr->family == AF_INET)
    inet_ntop(AF_INET, addr->ip.data() + 12, host, sizeof host);
  else
    inet_ntop(AF_INET6, addr->ip.data(), host, sizeof host);
  if (!server.bind_to_port(host, addr->port)) {
    int e = errno;
    return report(Error{e ? e : EADDRINUSE,
                        fmt::format("cannot listen on {}: {} (is another exporter running there? "
                                    "give another --listen)",
                                    a.listen, errno_text(e ? e : EADDRINUSE))});
  }
  g_server = &server;
  struct sigaction sa {};
  sa.sa_handler = stop_server;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  fmt::print("serving connredir metrics of {} at http://{}/metrics\n", pin_dir, a.listen);
  std::fflush(stdout);
  if (!server.listen_after_bind())
    return report(Error{EIO, fmt::format("the metrics server on {} stopped", a.listen)});
  g_server = nullptr;
  return 0;
}

}  // namespace

void add_metrics_command(CLI::App& app, Globals& g, Commands& out) {
  auto a = std::make_shared<MetricsArgs>();
  auto* m = app.add_subcommand("metrics", "serve Prometheus metrics (counters, callouts, flows)");
  m->add_option("--listen", a->listen, "ADDR:PORT to serve /metrics on")->capture_default_str();
  m->add_flag("--once", a->once, "print the metrics once to standard output and exit");
  m->add_flag("--allow-remote", a->allow_remote,
              "allow a --listen address that is not loopback (firewall it)");
  m->footer("Metric names and meanings: docs/METRICS.md.");
  out.push_back({m, [&g, a] { return cmd_metrics(g.pin_dir, *a); }});
}

}  // namespace connredir::cli
