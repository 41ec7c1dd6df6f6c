// `connredir flows`: live redirected flows and their chains.
#include "commands.hpp"

#include <fmt/format.h>

#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "connredir/control.hpp"

namespace connredir::cli {
namespace {

// What the socket is to connredir: the app's redirected socket, the socket
// a proxy accepted, or a proxy's outgoing socket carrying records.
const char* role(uint32_t flags) {
  if (flags & CONNREDIR_SK_ACCEPTED) return "proxy-accepted";
  if (flags & CONNREDIR_SK_REDIRECTED) return "redirected";
  if (flags & CONNREDIR_SK_RECORDS_SET) return "records-set";
  return "other";
}

std::string chain_text(const connredir_records& r, const std::map<uint32_t, std::string>& names) {
  std::string s;
  for (unsigned i = 0; i < r.hop_count && i < CONNREDIR_MAX_HOPS; i++) {
    uint32_t id = r.hops[i].callout_id;
    auto it = names.find(id);
    if (!s.empty()) s += " > ";
    s += it != names.end() ? it->second : std::to_string(id);
  }
  return s.empty() ? "-" : s;
}

// The socket's state as `ss` names it.
const char* tcp_state_name(uint8_t s) {
  static const char* const names[] = {"?",          "ESTAB",      "SYN-SENT",  "SYN-RECV",
                                      "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT", "UNCONN",
                                      "CLOSE-WAIT", "LAST-ACK",   "LISTEN",    "CLOSING"};
  return s < std::size(names) ? names[s] : "?";
}

struct FlowsArgs {
  ctl::FlowQuery query;
};

int cmd_flows(const std::string& pin_dir, const FlowsArgs& args, bool as_json) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(false);
  if (!lock) return report(lock.error());
  auto store = ctl::KernelMapStore::open(pin_dir);
  if (!store) return report(store.error());
  ctl::Control control(**store);
  std::map<uint32_t, std::string> names;
  if (auto list = control.list_callouts())
    for (const auto& c : *list) names[c.id] = c.name;
  auto flows = ctl::dump_flows(pin_dir, args.query);
  if (!flows) return report(flows.error());

  if (as_json) {
    json arr = json::array();
    for (const auto& f : *flows) {
      const auto& r = f.state.records;
      json chain = json::array();
      for (unsigned i = 0; i < r.hop_count && i < CONNREDIR_MAX_HOPS; i++) {
        auto it = names.find(r.hops[i].callout_id);
        chain.push_back({{"callout_id", r.hops[i].callout_id},
                         {"callout", it != names.end() ? json(it->second) : json(nullptr)},
                         {"filter_id", r.hops[i].filter_id},
                         {"dst", Address::from_abi(r.hops[i].dst).to_string()}});
      }
      json j = {{"cookie", f.cookie},
                {"role", role(f.state.flags)},
                {"protocol", f.protocol == IPPROTO_UDP ? "udp" : "tcp"},
                {"state", tcp_state_name(f.sock_state)},
                {"local", f.local.to_string()},
                {"remote", f.remote.to_string()},
                {"uid", f.uid},
                {"inode", f.inode},
                {"netns", f.netns},
                {"flow_id", r.flow_id},
                {"chain", chain}};
      if (f.state.flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_REDIRECTED)) {
        const auto& c = f.state.context;
        j["orig_dst"] = Address::from_abi(c.orig_dst).to_string();
        j["hop"] = c.hop;
      }
      j["app"] = {{"pid", r.origin.pid},
                  {"uid", r.origin.uid},
                  {"comm", std::string(r.origin.comm, strnlen(r.origin.comm, 16))}};
      arr.push_back(j);
    }
    fmt::print("{}\n", arr.dump(2));
    return 0;
  }
  if (flows->empty()) {
    fmt::print("no sockets carry connredir state at {}\n", pin_dir);
    return 0;
  }
  fmt::print("{:<15} {:<11} {:<24} {:<24} {:<8} {:<22} {:<16} {}\n", "ROLE", "STATE", "LOCAL",
             "REMOTE", "FLOW", "ORIG-DST", "APP", "CHAIN");
  for (const auto& f : *flows) {
    const auto& r = f.state.records;
    std::string app =
        fmt::format("{}/{}", std::string(r.origin.comm, strnlen(r.origin.comm, 16)), r.origin.pid);
    std::string dst = f.state.flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_REDIRECTED)
                          ? Address::from_abi(f.state.context.orig_dst).to_string()
                          : "-";
    fmt::print("{:<15} {:<11} {:<24} {:<24} {:<8} {:<22} {:<16} {}\n", role(f.state.flags),
               tcp_state_name(f.sock_state), f.local.to_string(), f.remote.to_string(), r.flow_id,
               dst, app, chain_text(r, names));
  }
  return 0;
}

}  // namespace

void add_flows_command(CLI::App& app, Globals& g, Commands& out) {
  auto args = std::make_shared<FlowsArgs>();
  auto* sub = app.add_subcommand("flows", "live redirected flows and their proxy chains");
  sub->add_flag("--json", g.as_json, "JSON output");
  sub->add_option("--netns", args->query.netns,
                  "network namespace to list (a path: /run/netns/NAME, /proc/PID/ns/net); "
                  "repeatable; default: the caller's")
      ->allow_extra_args(false);
  sub->add_flag("--all-netns", args->query.all_netns,
                "list every network namespace of the host (those of running processes and "
                "/run/netns)");
  sub->footer(
      "Read through sock_diag (as `ss` does), with no BPF program loaded: works on kernels "
      "that refuse tracing programs.");
  out.push_back({sub, [&g, args] { return cmd_flows(g.pin_dir, *args, g.as_json); }});
}

}  // namespace connredir::cli
