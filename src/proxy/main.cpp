// connredir-proxy: the reference proxy for connredir. See proxy.hpp.
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "connredir/address.hpp"
#include "proxy.hpp"

namespace {

// The ADDR:PORT given to option `flag`, or nullopt after saying on stderr
// what is wrong with it.
std::optional<connredir::Address> address_option(const char* flag, const std::string& text) {
  auto a = connredir::Address::parse(text);
  if (!a) {
    std::fprintf(stderr, "connredir-proxy: %s %s: %s\n", flag, text.c_str(),
                 a.error().message.c_str());
    return std::nullopt;
  }
  return *a;
}

}  // namespace

int main(int argc, char** argv) {
  connredir::proxy::ProxyOptions opt;
  std::vector<std::string> listen;
  bool no_propagate = false;
  bool no_splice = false;
  bool splice = false;
  std::string metrics;

  CLI::App app{
      "connredir-proxy: reference proxy for connredir. Accepts connections that connredir "
      "redirected to it, reads their redirect records and context, connects to the original "
      "destination with the records attached (so the flow is not looped back here) and relays "
      "both directions. Runs unprivileged as a registered proxy principal.",
      "connredir-proxy"};
  app.set_version_flag("--version", CONNREDIR_VERSION);
  app.add_option("--listen", listen, "ADDR:PORT or [ADDR]:PORT to listen on (repeatable)")
      ->required();
  app.add_option("--log", opt.log_path,
                 "append one JSON line per finished flow to FILE ('-' = standard output)");
  app.add_option("--name", opt.name, "name of this proxy, included in every log line")
      ->capture_default_str();
  app.add_flag("--no-propagate", no_propagate,
               "do NOT set the redirect records on the outgoing socket (testing only: shows "
               "that the kernel still prevents a self-loop)");
  app.add_option("--max-conns", opt.max_conns, "most flows open at once; further accepts wait")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1u << 24));
  app.add_option("--connect-timeout-ms", opt.connect_timeout_ms,
                 "give up connecting to the original destination after this long (0 = never)")
      ->capture_default_str();
  app.add_option("--idle-timeout-ms", opt.idle_timeout_ms,
                 "reset a flow that moved no data for this long (0 = never)")
      ->capture_default_str();
  app.add_flag("--udp", opt.udp,
               "relay UDP too: a UDP socket at each --listen address receives the flows "
               "connredir redirects with `filter add --proto udp` (docs/ABI.md, \"UDP\")");
  app.add_option("--udp-idle-timeout-ms", opt.udp_idle_timeout_ms,
                 "end (and log) a UDP flow after this long without a datagram (0 = never)")
      ->capture_default_str();
  std::string udp_upstream;
  app.add_option("--udp-upstream", udp_upstream,
                 "ADDR:PORT for UDP flows connredir did not redirect (e.g. sent here by an "
                 "nftables REDIRECT rule, which leaves UDP no original destination to read); "
                 "without it they are dropped");
  app.add_option("--max-udp-flows", opt.max_udp_flows,
                 "most UDP flows at once; the least recently active one makes room")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1u << 20));
  app.add_flag("--splice", splice,
               "relay bulk flows (past 64 KiB per direction) with splice(2) instead of "
               "recv/send; on loopback recv/send is faster (bench/RESULTS.md)");
  app.add_flag("--no-splice", no_splice, "relay with recv/send (the default)");
  app.add_option("--buffer-size", opt.buffer_size,
                 "bytes of relay buffer per direction for flows past their first 64 KiB "
                 "(recv/send mode)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{4096}, size_t{16} << 20));
  app.add_option("--metrics", metrics,
                 "serve Prometheus metrics at http://ADDR:PORT/metrics (ADDR:PORT or "
                 "[ADDR]:PORT; loopback only unless --metrics-allow-remote): flows active and "
                 "total, bytes each way, errors by kind, flow setup time; docs/METRICS.md "
                 "lists them");
  app.add_flag("--metrics-allow-remote", opt.metrics_allow_remote,
               "let --metrics listen on a non-loopback address. The metrics show flow counts "
               "and traffic volumes to anyone who reaches the port and have no "
               "authentication: firewall it");
  std::string kinds;
  for (size_t k = 1; k < connredir::proxy::kErrorKinds; ++k) {
    kinds += k == 1 ? "" : (k % 6 == 1 ? "\n      " : " ");
    kinds += connredir::proxy::kind_name(static_cast<connredir::proxy::ErrorKind>(k));
  }
  app.footer(
      "Metrics served by --metrics (Prometheus text format; docs/METRICS.md):\n"
      "  connredir_proxy_info{name,version}               gauge: always 1\n"
      "  connredir_proxy_listen_info{address}             gauge: 1 per listening address\n"
      "  connredir_proxy_flows_total                      counter: connections accepted and UDP "
      "flows begun\n"
      "  connredir_proxy_flows_active                     gauge: flows connecting or relaying\n"
      "  connredir_proxy_flow_errors_total{kind}          counter: flows that did not end ok, "
      "by kind:\n      " +
      kinds +
      "\n"
      "  connredir_proxy_relayed_bytes_total{direction}   counter: bytes delivered, "
      "client_to_server or server_to_client\n"
      "  connredir_proxy_flow_setup_seconds               histogram: accept to onward connection "
      "established");
  CLI11_PARSE(app, argc, argv);

  opt.propagate = !no_propagate;
  if (splice && no_splice) {
    std::fprintf(stderr, "connredir-proxy: give --splice or --no-splice, not both\n");
    return 2;
  }
  opt.splice = splice;
  if (!metrics.empty()) {
    opt.metrics = address_option("--metrics", metrics);
    if (!opt.metrics) return 2;
  } else if (opt.metrics_allow_remote) {
    std::fprintf(stderr, "connredir-proxy: --metrics-allow-remote needs --metrics ADDR:PORT\n");
    return 2;
  }
  if (!udp_upstream.empty()) {
    opt.udp_upstream = address_option("--udp-upstream", udp_upstream);
    if (!opt.udp_upstream) return 2;
  }
  for (const auto& text : listen) {
    auto a = address_option("--listen", text);
    if (!a) return 2;
    opt.listen.push_back(*a);
  }

  connredir::proxy::Proxy proxy(std::move(opt));
  if (auto err = proxy.start(); !err.empty()) {
    std::fprintf(stderr, "connredir-proxy: %s\n", err.c_str());
    return 1;
  }
  return proxy.run();
}
