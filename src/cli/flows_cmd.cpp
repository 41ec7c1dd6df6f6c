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

std::string chain_text(const ctl::FlowDump& f, const std::map<uint32_t, std::string>& names) {
  const auto& r = f.state.records;
  // An established socket that kept only its brief, whose flow has no other
  // socket left that holds the hops: the length is all that is known.
  if (!f.hops_known) return fmt::format("({} hops)", r.hop_count);
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
  bool dot = false;
};

std::string comm_of(const connredir_records& r) {
  return std::string(r.origin.comm, strnlen(r.origin.comm, sizeof r.origin.comm));
}

// DOT string literal: the text with '"' and '\\' escaped.
std::string dot_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// The chains as a Graphviz picture: application -> each vendor's callout in
// chain order -> original destination, aggregated over flows. A flow is
// known by its flow id; of its sockets, the one with the longest chain (the
// last proxy's) shows how far it got.
std::string flows_dot(const std::vector<ctl::FlowDump>& flows,
                      const std::map<uint32_t, std::string>& names) {
  struct Flow {
    const connredir_records* records = nullptr;
    std::string dst;
  };
  std::map<uint64_t, Flow> by_id;
  for (const auto& f : flows) {
    const auto& r = f.state.records;
    if (r.hop_count == 0 || !f.hops_known) continue;
    auto& fl = by_id[r.flow_id];
    if (!fl.records || r.hop_count > fl.records->hop_count) fl.records = &r;
    if (fl.dst.empty() && (f.state.flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_REDIRECTED)))
      fl.dst = Address::from_abi(f.state.context.orig_dst).to_string();
  }
  std::map<std::string, std::string> nodes;                  // id -> attributes
  std::map<std::pair<std::string, std::string>, int> edges;  // (from, to) -> flows
  for (const auto& [id, fl] : by_id) {
    const auto& r = *fl.records;
    std::string app = fmt::format("app:{}:{}", comm_of(r), r.origin.uid);
    nodes[app] = fmt::format("label={} shape=box style=rounded",
                             dot_quote(fmt::format("{}\nuid {}", comm_of(r), r.origin.uid)));
    std::string prev = app;
    for (unsigned i = 0; i < r.hop_count && i < CONNREDIR_MAX_HOPS; i++) {
      auto it = names.find(r.hops[i].callout_id);
      std::string name =
          it != names.end() ? it->second : fmt::format("callout {}", r.hops[i].callout_id);
      std::string node = "callout:" + name;
      nodes[node] =
          fmt::format("label={} shape=ellipse style=filled fillcolor=lightblue", dot_quote(name));
      edges[{prev, node}]++;
      prev = node;
    }
    std::string dst = "dst:" + (fl.dst.empty() ? std::string("?") : fl.dst);
    nodes[dst] = fmt::format("label={} shape=note", dot_quote(fl.dst.empty() ? "?" : fl.dst));
    edges[{prev, dst}]++;
  }
  std::string out =
      "digraph connredir {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n"
      "  edge [fontname=\"sans-serif\"];\n";
  out += fmt::format("  label={};\n  labelloc=t;\n",
                     dot_quote(fmt::format("connredir: {} live flow{} (application -> vendors in "
                                           "chain order -> destination)",
                                           by_id.size(), by_id.size() == 1 ? "" : "s")));
  for (const auto& [id, attrs] : nodes) out += fmt::format("  {} [{}];\n", dot_quote(id), attrs);
  for (const auto& [e, n] : edges)
    out += fmt::format("  {} -> {} [label={}];\n", dot_quote(e.first), dot_quote(e.second),
                       dot_quote(fmt::format("{} flow{}", n, n == 1 ? "" : "s")));
  return out + "}\n";
}

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

  if (args.dot) {
    fmt::print("{}", flows_dot(*flows, names));
    return 0;
  }
  if (as_json) {
    json arr = json::array();
    for (const auto& f : *flows) {
      const auto& r = f.state.records;
      json chain = json::array();
      for (unsigned i = 0; f.hops_known && i < r.hop_count && i < CONNREDIR_MAX_HOPS; i++) {
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
                {"hops", r.hop_count},
                {"chain", chain},
                {"kept", f.brief ? "brief" : "full"}};
      if (f.state.flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_REDIRECTED)) {
        const auto& c = f.state.context;
        j["orig_dst"] = Address::from_abi(c.orig_dst).to_string();
        j["hop"] = c.hop;
      }
      j["app"] = {{"pid", r.origin.pid}, {"uid", r.origin.uid}, {"comm", comm_of(r)}};
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
    std::string app = fmt::format("{}/{}", comm_of(r), r.origin.pid);
    std::string dst = f.state.flags & (CONNREDIR_SK_ACCEPTED | CONNREDIR_SK_REDIRECTED)
                          ? Address::from_abi(f.state.context.orig_dst).to_string()
                          : "-";
    fmt::print("{:<15} {:<11} {:<24} {:<24} {:<8} {:<22} {:<16} {}\n", role(f.state.flags),
               tcp_state_name(f.sock_state), f.local.to_string(), f.remote.to_string(), r.flow_id,
               dst, app, chain_text(f, names));
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
  sub->add_flag("--dot", args->dot,
                "a Graphviz picture of the chains (application -> vendors -> destination, "
                "aggregated): `connredir flows --dot | dot -Tsvg > chains.svg`");
  sub->add_flag("--all-netns", args->query.all_netns,
                "list every network namespace of the host (those of running processes and "
                "/run/netns)");
  sub->footer(
      "Read through sock_diag (as `ss` does), with no BPF program loaded: works on kernels "
      "that refuse tracing programs.");
  out.push_back({sub, [&g, args] { return cmd_flows(g.pin_dir, *args, g.as_json); }});
}

}  // namespace connredir::cli
