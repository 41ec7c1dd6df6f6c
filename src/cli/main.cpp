// connredir: the root tool. Loads/unloads the BPF side and edits callouts,
// filters and principals in the pinned maps.
//
// Exit codes: 0 success, 1 runtime error (message says what to do), 2 bad
// arguments.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "flows_cmd.hpp"
#include "connredir/control.hpp"
#include "connredir/records.hpp"

namespace {

using connredir::Error;
using connredir::Result;
using json = nlohmann::json;
namespace ctl = connredir::control;

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

// A bad argument: printed as one line, exit 2.
struct Usage {
  std::string message;
};

int report(const Error& e) {
  bool named = e.message.rfind("connredir ", 0) == 0;
  fmt::print(stderr, "{}{}\n", named ? "" : "connredir: ", e.message);
  return kExitRuntime;
}

int usage(const std::string& msg) {
  fmt::print(stderr, "connredir: error: {}\n", msg);
  return kExitUsage;
}

template <class T>
T take(Result<T> r, std::optional<Usage>& bad) {
  if (!r) {
    if (!bad) bad = Usage{r.error().message};
    return T{};
  }
  return std::move(*r);
}

std::string cgroup_text(uint64_t id) {
  if (id == 0) return "-";
  if (auto p = ctl::cgroup_path_by_id(id)) return fmt::format("{} (id {})", *p, id);
  return fmt::format("id {} (gone?)", id);
}

json cgroup_json(uint64_t id, uint32_t level) {
  if (id == 0) return nullptr;
  json j = {{"id", id}, {"level", level}};
  if (auto p = ctl::cgroup_path_by_id(id)) j["path"] = *p;
  return j;
}

const char* family_text(uint8_t f) {
  return f == CONNREDIR_AF_INET ? "ipv4" : f == CONNREDIR_AF_INET6 ? "ipv6" : "any";
}

const char* principal_kind(uint32_t k) {
  return k == CONNREDIR_PRINCIPAL_UID ? "uid" : k == CONNREDIR_PRINCIPAL_CGROUP ? "cgroup" : "?";
}

std::string principal_flags(uint32_t f) {
  std::string s;
  if (f & CONNREDIR_PRINCIPAL_F_AUTHORIZED) s += "authorized";
  if (f & CONNREDIR_PRINCIPAL_F_CALLOUT) s += s.empty() ? "callout-proxy" : ",callout-proxy";
  return s.empty() ? "-" : s;
}

// Root check, lock, open the pinned maps.
struct Session {
  std::optional<ctl::CliLock> lock;
  std::unique_ptr<ctl::KernelMapStore> store;
};

Result<Session> open_session(const std::string& pin_dir, bool exclusive) {
  if (auto r = ctl::require_root(); !r) return tl::unexpected(r.error());
  auto lock = ctl::CliLock::acquire(exclusive);
  if (!lock) return tl::unexpected(lock.error());
  auto store = ctl::KernelMapStore::open(pin_dir);
  if (!store) return tl::unexpected(store.error());
  Session s;
  s.lock.emplace(std::move(*lock));
  s.store = std::move(*store);
  return s;
}

// ---- kernel features and other programs on our hooks -------------------------

json features_json(const std::vector<ctl::KernelFeature>& fs) {
  json arr = json::array();
  for (const auto& f : fs) {
    json j = {{"name", f.name},
              {"description", f.description},
              {"required", f.required},
              {"present", f.present ? json(*f.present) : json(nullptr)},
              {"detail", f.detail}};
    if (!f.required) j["disables_when_missing"] = f.disables;
    arr.push_back(j);
  }
  return arr;
}

// One line per feature: present, missing (and what that disables), or not
// probed (and why).
void print_features(const std::vector<ctl::KernelFeature>& fs) {
  fmt::print("kernel features:\n");
  for (const auto& f : fs) {
    const char* mark = !f.present ? "unknown" : *f.present ? "ok" : "MISSING";
    fmt::print(
        "  {:<8} {:<22} {}{}\n", mark, f.name, f.detail,
        f.present && !*f.present && !f.required ? fmt::format(" (disables: {})", f.disables) : "");
  }
}

// Every hook connredir attached, with the programs the kernel runs there.
Result<std::vector<ctl::HookPrograms>> our_hooks(const ctl::UpState& state) {
  std::set<uint32_t> ours;
  for (const auto& l : state.links) ours.insert(l.prog_id);
  std::set<std::pair<uint64_t, uint32_t>> seen;
  std::vector<ctl::HookPrograms> hooks;
  for (const auto& l : state.links) {
    if (l.cgroup_id == 0 || !seen.insert({l.cgroup_id, l.attach_type}).second) continue;
    auto path = ctl::cgroup_path_by_id(l.cgroup_id);
    if (!path) continue;
    auto h = ctl::programs_on_hook(*path, l.attach_type, ours);
    if (!h) return tl::unexpected(h.error());
    hooks.push_back(std::move(*h));
  }
  return hooks;
}

// "before"/"after" connredir for each foreign program of a hook.
std::string relative_position(const ctl::HookPrograms& h, size_t i) {
  size_t first_ours = h.programs.size();
  for (size_t k = 0; k < h.programs.size(); ++k)
    if (h.programs[k].ours) {
      first_ours = k;
      break;
    }
  return i < first_ours ? "before connredir" : "after connredir";
}

// ---- commands ----------------------------------------------------------------

int cmd_up(const std::string& pin_dir, const std::string& cgroup,
           const std::vector<std::string>& proxies_in) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(true);
  if (!lock) return report(lock.error());
  ctl::UpOptions o;
  o.pin_dir = pin_dir;
  o.cgroup = cgroup;
  o.proxies_in = proxies_in;
  auto r = ctl::up(o);
  if (!r) return report(r.error());
  if (r->already_up) {
    fmt::print("connredir is already up at {} (cgroup {}, id {})\n", pin_dir, r->cgroup.path,
               r->cgroup.id);
    return 0;
  }
  print_features(r->features);
  const auto scoped = static_cast<size_t>(
      std::count_if(r->attached.begin(), r->attached.end(),
                    [](const std::string& n) { return ctl::proxy_scoped_link(n); }));
  const size_t here = r->attached.size() - scoped;
  fmt::print("connredir is up at {}: {} program{} attached to cgroup {} (id {}){}\n", pin_dir, here,
             here == 1 ? "" : "s", r->cgroup.path, r->cgroup.id,
             r->secret_initialised ? "; new records MAC key" : "; existing records MAC key kept");
  for (const auto& p : r->proxies_in)
    fmt::print(
        "proxy socket options (records, context, SO_ORIGINAL_DST) attached only to cgroup {} (id "
        "{})\n",
        p.path, p.id);
  return 0;
}

int cmd_down(const std::string& pin_dir) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(true);
  if (!lock) return report(lock.error());
  auto r = ctl::down(pin_dir);
  if (!r) return report(r.error());
  if (!*r)
    fmt::print("connredir is not up at {} (nothing to do)\n", pin_dir);
  else
    fmt::print(
        "connredir is down: programs detached, {} removed (established flows keep "
        "working)\n",
        pin_dir);
  return 0;
}

int cmd_status(const std::string& pin_dir, bool as_json) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  auto lock = ctl::CliLock::acquire(false);
  if (!lock) return report(lock.error());
  auto state = ctl::read_up_state(pin_dir);
  if (!state) return report(state.error());
  json j = {{"pin_dir", pin_dir}, {"up", state->up() && state->maps_pinned}};
  std::vector<std::string> problems;
  uint64_t cg = 0;
  std::vector<uint64_t> proxy_cgs;
  json links = json::array();
  for (const auto& l : state->links) {
    links.push_back({{"name", l.name},
                     {"link_id", l.link_id},
                     {"prog_id", l.prog_id},
                     {"cgroup_id", l.cgroup_id}});
    if (l.cgroup_id == 0) problems.push_back(fmt::format("link {}: its cgroup is gone", l.name));
    if (ctl::proxy_scoped_link(l.name)) {
      if (std::find(proxy_cgs.begin(), proxy_cgs.end(), l.cgroup_id) == proxy_cgs.end())
        proxy_cgs.push_back(l.cgroup_id);
    } else if (cg == 0) {
      cg = l.cgroup_id;
    }
  }
  j["links"] = links;
  j["cgroup"] = cgroup_json(cg, 0);
  if (cg) j["cgroup"].erase("level");
  json pj = json::array();
  for (uint64_t id : proxy_cgs) {
    pj.push_back(cgroup_json(id, 0));
    pj.back().erase("level");
  }
  j["proxies_in"] = pj;
  if (state->up() && !state->maps_pinned) problems.push_back("links pinned but maps missing");

  std::optional<ctl::Counts> counts;
  std::vector<uint64_t> stats;
  bool secret_set = false;
  if (state->maps_pinned) {
    auto store = ctl::KernelMapStore::open(pin_dir);
    if (!store) return report(store.error());
    ctl::Control c(**store);
    auto n = c.counts();
    if (!n) return report(n.error());
    counts = *n;
    auto s = c.stats();
    if (!s) return report(s.error());
    stats = *s;
    uint32_t zero = 0;
    connredir_secret sec{};
    auto r = (*store)->lookup(ctl::MapId::Secret, &zero, &sec);
    if (!r) return report(r.error());
    secret_set = *r && (sec.k0 || sec.k1);
    if (!secret_set) problems.push_back("records MAC key not initialised: run `connredir up`");
    j["counts"] = {{"callouts", n->callouts},
                   {"filters", n->filters},
                   {"principals", n->principals},
                   {"prefixes", n->prefixes}};
    json js = json::object();
    for (size_t i = 0; i < stats.size(); ++i) js[ctl::stat_name(i)] = stats[i];
    j["stats"] = js;
    j["secret_initialised"] = secret_set;
  }
  auto features = ctl::probe_kernel_features(pin_dir);
  j["features"] = features_json(features);
  std::vector<ctl::HookPrograms> hooks;
  if (auto h = our_hooks(*state))
    hooks = std::move(*h);
  else
    problems.push_back(h.error().message);
  json hj = json::array();
  size_t foreign = 0;
  for (const auto& h : hooks) {
    json progs = json::array();
    for (size_t i = 0; i < h.programs.size(); ++i) {
      const auto& p = h.programs[i];
      json pj = {{"prog_id", p.prog_id},
                 {"name", p.name},
                 {"tag", p.tag},
                 {"ours", p.ours},
                 {"attached_at", p.attached_at},
                 {"attach_mode", p.attach_mode}};
      if (!p.ours) {
        pj["position"] = relative_position(h, i);
        foreign++;
      }
      progs.push_back(pj);
    }
    hj.push_back({{"attach_type", h.attach_type}, {"cgroup", h.cgroup}, {"programs", progs}});
  }
  j["hooks"] = hj;
  j["foreign_programs"] = foreign;
  j["problems"] = problems;
  if (as_json) {
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  if (!state->up() && !state->maps_pinned) {
    fmt::print("connredir is not up at {} (run `connredir up`)\n", pin_dir);
    return 0;
  }
  fmt::print("state:      {}\n", j["up"].get<bool>() ? "up" : "partially up");
  fmt::print("pin dir:    {}\n", pin_dir);
  fmt::print("cgroup:     {}\n", cgroup_text(cg));
  for (uint64_t id : proxy_cgs) fmt::print("proxies in: {}\n", cgroup_text(id));
  std::string names;
  for (const auto& l : state->links) names += (names.empty() ? "" : " ") + l.name;
  fmt::print("links:      {} ({})\n", state->links.size(), names);
  if (counts) {
    fmt::print("callouts:   {}\n", counts->callouts);
    fmt::print("filters:    {} ({} index prefixes)\n", counts->filters, counts->prefixes);
    fmt::print("principals: {}\n", counts->principals);
    fmt::print("stats:\n");
    for (size_t i = 0; i < stats.size(); ++i)
      fmt::print("  {:<18} {}\n", ctl::stat_name(i), stats[i]);
  }
  print_features(features);
  if (foreign == 0) {
    fmt::print("other programs on connredir's hooks: none\n");
  } else {
    fmt::print("other programs on connredir's hooks (the kernel runs them in this order):\n");
    for (const auto& h : hooks)
      for (size_t i = 0; i < h.programs.size(); ++i) {
        const auto& p = h.programs[i];
        if (p.ours) continue;
        fmt::print("  {:<28} prog {} {:<16} attached at {} ({}), runs {}\n", h.attach_type,
                   p.prog_id, p.name.empty() ? "-" : p.name, p.attached_at, p.attach_mode,
                   relative_position(h, i));
      }
  }
  for (const auto& p : problems) fmt::print("problem:    {}\n", p);
  return 0;
}

struct CalloutArgs {
  std::string name, name_opt;
  std::vector<std::string> proxies;
  std::string proxy_uid, proxy_cgroup, on_proxy_down, on_failure;
  bool force = false;
  bool shared_principal = false;
};

int cmd_callout_add(const std::string& pin_dir, const CalloutArgs& a) {
  std::optional<Usage> bad;
  ctl::CalloutSpec spec;
  spec.name = a.name.empty() ? a.name_opt : a.name;
  if (!a.name.empty() && !a.name_opt.empty() && a.name != a.name_opt)
    return usage("give the callout name once (NAME or --name)");
  if (spec.name.empty()) return usage("callout add needs a NAME");
  take(ctl::validate_callout_name(spec.name).map([] { return 0; }), bad);
  if (a.proxies.empty()) return usage("callout add needs --proxy ADDR:PORT");
  for (const auto& p : a.proxies) {
    auto addr = take(connredir::Address::parse(p), bad);
    if (bad) break;
    auto& slot = addr.family == AF_INET ? spec.proxy4 : spec.proxy6;
    if (slot)
      return usage(fmt::format(
          "two {} proxies ({} and {}): give at most one IPv4 and one IPv6 "
          "--proxy",
          addr.family == AF_INET ? "IPv4" : "IPv6", slot->to_string(), addr.to_string()));
    if (addr.port == 0) return usage(fmt::format("proxy {} needs a port", p));
    slot = addr;
  }
  if (!a.proxy_uid.empty())
    spec.proxy_uid = static_cast<uint32_t>(
        take(ctl::parse_uint(a.proxy_uid, "--proxy-uid", 0, 0xfffffffe), bad));
  if (!a.proxy_cgroup.empty() && !bad)
    spec.proxy_cgroup = take(ctl::resolve_cgroup(a.proxy_cgroup), bad);
  if (!a.on_proxy_down.empty() && !bad)
    spec.on_proxy_down = take(ctl::parse_proxy_down(a.on_proxy_down), bad);
  if (!a.on_failure.empty() && !bad)
    spec.on_failure = take(ctl::parse_on_failure(a.on_failure), bad);
  spec.shared_principal = a.shared_principal;
  if (bad) return usage(bad->message);

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.add_callout(spec);
  if (!r) return report(r.error());
  fmt::print("callout {} added (id {})\n", r->name, r->id);
  return 0;
}

int cmd_callout_list(const std::string& pin_dir, bool as_json) {
  auto s = open_session(pin_dir, false);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto list = c.list_callouts();
  if (!list) return report(list.error());
  if (as_json) {
    json arr = json::array();
    for (const auto& i : *list)
      arr.push_back({{"id", i.id},
                     {"name", i.name},
                     {"proxy4", i.proxy4 ? json(i.proxy4->to_string()) : json(nullptr)},
                     {"proxy6", i.proxy6 ? json(i.proxy6->to_string()) : json(nullptr)},
                     {"proxy_uid", i.proxy_uid ? json(*i.proxy_uid) : json(nullptr)},
                     {"proxy_cgroup", cgroup_json(i.proxy_cgroup, i.proxy_cgroup_level)},
                     {"on_proxy_down", ctl::to_string(i.on_proxy_down)},
                     {"on_failure", ctl::to_string(i.on_failure)},
                     {"shared_principal", i.shared_principal},
                     {"filters", i.filters}});
    fmt::print("{}\n", arr.dump(2));
    return 0;
  }
  if (list->empty()) {
    fmt::print("no callouts (add one with `connredir callout add NAME --proxy ADDR:PORT`)\n");
    return 0;
  }
  fmt::print("{:<4} {:<20} {:<22} {:<30} {:<9} {:<7} {:<9} {:<10} {:<6} {}\n", "ID", "NAME",
             "PROXY4", "PROXY6", "PROXY-UID", "FILTERS", "ON-DOWN", "ON-FAILURE", "SHARED",
             "PROXY-CGROUP");
  for (const auto& i : *list)
    fmt::print("{:<4} {:<20} {:<22} {:<30} {:<9} {:<7} {:<9} {:<10} {:<6} {}\n", i.id, i.name,
               i.proxy4 ? i.proxy4->to_string() : "-", i.proxy6 ? i.proxy6->to_string() : "-",
               i.proxy_uid ? std::to_string(*i.proxy_uid) : "-", i.filters,
               ctl::to_string(i.on_proxy_down), ctl::to_string(i.on_failure),
               i.shared_principal ? "yes" : "no", cgroup_text(i.proxy_cgroup));
  return 0;
}

int cmd_callout_del(const std::string& pin_dir, const CalloutArgs& a) {
  std::string name = a.name.empty() ? a.name_opt : a.name;
  if (name.empty()) return usage("callout del needs a NAME");
  if (auto v = ctl::validate_callout_name(name); !v) return usage(v.error().message);
  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.delete_callout(name, a.force);
  if (!r) return report(r.error());
  if (r->empty())
    fmt::print("callout {} deleted\n", name);
  else
    fmt::print("callout {} deleted with {} filter{}\n", name, r->size(), r->size() > 1 ? "s" : "");
  return 0;
}

struct FilterArgs {
  std::string callout, dst, port, proto, weight, app_cgroup, app_uid, context, id;
  bool context_set = false;
  bool repair = false;
};

int cmd_filter_add(const std::string& pin_dir, const FilterArgs& a) {
  std::optional<Usage> bad;
  ctl::FilterSpec spec;
  spec.callout = a.callout;
  if (spec.callout.empty()) return usage("filter add needs --callout NAME");
  take(ctl::validate_callout_name(spec.callout).map([] { return 0; }), bad);
  if (!a.dst.empty() && !bad) spec.dst = take(ctl::parse_cidr(a.dst), bad);
  if (!a.port.empty() && !bad) spec.ports = take(ctl::parse_port_range(a.port), bad);
  if (!a.proto.empty() && !bad) spec.proto = take(ctl::parse_proto(a.proto), bad);
  if (!a.weight.empty() && !bad)
    spec.weight =
        static_cast<uint32_t>(take(ctl::parse_uint(a.weight, "--weight", 0, 0xffffffff), bad));
  if (!a.app_uid.empty() && !bad)
    spec.app_uid =
        static_cast<uint32_t>(take(ctl::parse_uint(a.app_uid, "--app-uid", 0, 0xfffffffe), bad));
  if (!a.app_cgroup.empty() && !bad) spec.app_cgroup = take(ctl::resolve_cgroup(a.app_cgroup), bad);
  if (bad) return usage(bad->message);
  if (a.context.size() > CONNREDIR_USER_CONTEXT_MAX)
    return usage(fmt::format("--context is {} bytes; at most {} are allowed", a.context.size(),
                             CONNREDIR_USER_CONTEXT_MAX));
  spec.context = a.context;

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.add_filter(spec);
  if (!r) return report(r.error());
  for (const auto& w : r->warnings) fmt::print(stderr, "connredir: warning: {}\n", w);
  fmt::print("filter {} added: {} port {} -> callout {} (weight {})\n", r->filter.id,
             r->filter.dst.to_string(), r->filter.ports.to_string(), r->filter.callout,
             r->filter.weight);
  return 0;
}

int cmd_filter_load(const std::string& pin_dir, const std::string& file, bool replace,
                    bool as_json) {
  std::string text;
  if (file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(file, std::ios::binary);
    if (!in)
      return usage(
          fmt::format("cannot read filter file {}: {}", file, connredir::errno_text(errno)));
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto specs = ctl::parse_filter_file(text, &ctl::resolve_cgroup);
  if (!specs) return usage(fmt::format("{}: {}", file, specs.error().message));

  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto r = c.load_filters(*specs, replace);
  if (!r) return report(r.error());
  for (const auto& w : r->warnings) fmt::print(stderr, "connredir: warning: {}\n", w);
  if (as_json) {
    fmt::print("{}\n", json{{"added", r->added},
                            {"removed", r->removed},
                            {"index_writes", r->index_writes},
                            {"first_id", r->first_id},
                            {"last_id", r->last_id}}
                           .dump());
    return 0;
  }
  if (r->added == 0)
    fmt::print("no filters in {}{}\n", file,
               r->removed ? fmt::format("; {} filters removed", r->removed) : "");
  else
    fmt::print("{} filters loaded (ids {}-{}), {} index entr{} written{}\n", r->added, r->first_id,
               r->last_id, r->index_writes, r->index_writes == 1 ? "y" : "ies",
               r->removed ? fmt::format(", {} previous filters removed", r->removed) : "");
  return 0;
}

int cmd_filter_list(const std::string& pin_dir, bool as_json) {
  auto s = open_session(pin_dir, false);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto list = c.list_filters();
  if (!list) return report(list.error());
  if (as_json) {
    json arr = json::array();
    for (const auto& f : *list)
      arr.push_back({{"id", f.id},
                     {"callout", f.callout},
                     {"callout_id", f.callout_id},
                     {"weight", f.weight},
                     {"seq", f.seq},
                     {"family", family_text(f.dst.family)},
                     {"dst", f.dst.to_string()},
                     {"port_lo", f.ports.lo},
                     {"port_hi", f.ports.hi},
                     {"proto", f.proto == ctl::kProtoTcp ? "tcp" : "any"},
                     {"app_uid", f.app_uid ? json(*f.app_uid) : json(nullptr)},
                     {"app_cgroup", cgroup_json(f.app_cgroup, f.app_cgroup_level)},
                     {"context", f.context}});
    fmt::print("{}\n", arr.dump(2, ' ', false, json::error_handler_t::replace));
    return 0;
  }
  if (list->empty()) {
    fmt::print("no filters (add one with `connredir filter add --callout NAME ...`)\n");
    return 0;
  }
  fmt::print("{:<6} {:<16} {:<6} {:<6} {:<24} {:<11} {:<5} {:<24} {}\n", "ID", "CALLOUT", "WEIGHT",
             "SEQ", "DST", "PORTS", "PROTO", "APP", "CONTEXT");
  for (const auto& f : *list) {
    std::string app;
    if (f.app_uid) app = fmt::format("uid={}", *f.app_uid);
    if (f.app_cgroup) app += fmt::format("{}cgroup={}", app.empty() ? "" : ",", f.app_cgroup);
    fmt::print("{:<6} {:<16} {:<6} {:<6} {:<24} {:<11} {:<5} {:<24} {}\n", f.id, f.callout,
               f.weight, f.seq, f.dst.to_string(), f.ports.to_string(),
               f.proto == ctl::kProtoTcp ? "tcp" : "any", app.empty() ? "-" : app,
               f.context.empty()
                   ? "-"
                   : json(f.context).dump(-1, ' ', false, json::error_handler_t::replace));
  }
  return 0;
}

int cmd_filter_del(const std::string& pin_dir, const FilterArgs& a) {
  auto id = ctl::parse_uint(a.id, "filter id", 1, 0xffffffff);
  if (!id) return usage(id.error().message);
  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  if (auto r = c.delete_filter(static_cast<uint32_t>(*id)); !r) return report(r.error());
  fmt::print("filter {} deleted\n", *id);
  return 0;
}

int cmd_filter_check(const std::string& pin_dir, bool repair) {
  auto s = open_session(pin_dir, repair);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  auto w = c.check_index();
  if (!w) return report(w.error());
  if (w->empty()) {
    fmt::print("classifier index is consistent with the filters\n");
    return 0;
  }
  for (const auto& x : *w)
    fmt::print("index entry {}: {}\n", x.key.to_string(),
               x.erase() ? "stray (should not exist)" : "missing or stale");
  if (!repair) {
    fmt::print(stderr,
               "connredir: the index differs from the filters in {} entr{}: run "
               "`connredir filter check --repair`\n",
               w->size(), w->size() == 1 ? "y" : "ies");
    return kExitRuntime;
  }
  auto n = c.repair_index();
  if (!n) return report(n.error());
  for (const auto& f : n->removed)
    fmt::print(
        "filter {} (callout {}, dst {}, ports {}) removed: no index entry named it, so an "
        "interrupted `filter add` or `filter load` left it and it was never active\n",
        f.id, f.callout, f.dst.to_string(), f.ports.to_string());
  if (!n->removed.empty())
    fmt::print(
        "(indexing them would have put more than {} filters on {}; re-run the interrupted "
        "command if you still want them)\n",
        CONNREDIR_CANDIDATES_MAX, fmt::join(n->crowded, ", "));
  fmt::print("repaired {} index entr{}\n", n->writes, n->writes == 1 ? "y" : "ies");
  return 0;
}

struct AuthArgs {
  std::string uid, cgroup, cgroup_id;
  bool remove = false, list = false;
};

int cmd_authorize(const std::string& pin_dir, const AuthArgs& a, bool as_json) {
  int given = !a.uid.empty() + !a.cgroup.empty() + !a.cgroup_id.empty();
  if (a.list) {
    if (given || a.remove) return usage("authorize --list takes no other options");
    auto s = open_session(pin_dir, false);
    if (!s) return report(s.error());
    ctl::Control c(*s->store);
    auto list = c.list_principals();
    if (!list) return report(list.error());
    if (as_json) {
      json arr = json::array();
      for (const auto& p : *list) {
        json j = {{"kind", principal_kind(p.kind)},
                  {"id", p.id},
                  {"authorized", bool(p.flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED)},
                  {"callout_proxy", bool(p.flags & CONNREDIR_PRINCIPAL_F_CALLOUT)}};
        if (p.kind == CONNREDIR_PRINCIPAL_CGROUP)
          if (auto path = ctl::cgroup_path_by_id(p.id)) j["path"] = *path;
        arr.push_back(j);
      }
      fmt::print("{}\n", arr.dump(2));
      return 0;
    }
    if (list->empty()) {
      fmt::print("no principals (root is always allowed)\n");
      return 0;
    }
    fmt::print("{:<7} {:<12} {:<25} {}\n", "KIND", "ID", "SOURCE", "PATH");
    for (const auto& p : *list)
      fmt::print(
          "{:<7} {:<12} {:<25} {}\n", principal_kind(p.kind), p.id, principal_flags(p.flags),
          p.kind == CONNREDIR_PRINCIPAL_CGROUP ? ctl::cgroup_path_by_id(p.id).value_or("?") : "");
    return 0;
  }
  if (given != 1)
    return usage(
        "authorize needs exactly one of --uid N, --cgroup DIR, --cgroup-id N "
        "(or --list)");
  uint32_t kind = CONNREDIR_PRINCIPAL_UID;
  uint64_t id = 0;
  std::string what;
  if (!a.uid.empty()) {
    auto u = ctl::parse_uint(a.uid, "--uid", 0, 0xfffffffe);
    if (!u) return usage(u.error().message);
    id = *u;
    what = fmt::format("uid {}", id);
  } else if (!a.cgroup_id.empty()) {
    auto u = ctl::parse_uint(a.cgroup_id, "--cgroup-id", 1, UINT64_MAX);
    if (!u) return usage(u.error().message);
    kind = CONNREDIR_PRINCIPAL_CGROUP;
    id = *u;
    what = fmt::format("cgroup id {}", id);
  } else {
    auto cg = ctl::resolve_cgroup(a.cgroup);
    if (!cg) return usage(cg.error().message);
    if (cg->level == 0) return usage("refusing to authorize the cgroup v2 root (that is everyone)");
    kind = CONNREDIR_PRINCIPAL_CGROUP;
    id = cg->id;
    what = fmt::format("cgroup {} (id {})", cg->path, id);
  }
  auto s = open_session(pin_dir, true);
  if (!s) return report(s.error());
  ctl::Control c(*s->store);
  if (a.remove) {
    if (auto r = c.deauthorize(kind, id); !r) return report(r.error());
    fmt::print("{} is no longer authorized\n", what);
  } else {
    if (auto r = c.authorize(kind, id); !r) return report(r.error());
    fmt::print("{} is authorized to query and set redirect records\n", what);
  }
  return 0;
}

int cmd_decode(const std::string& hex, bool as_json) {
  auto r = connredir::decode_records_hex(hex);
  if (!r) return usage(r.error().message);
  if (as_json)
    fmt::print("{}\n", connredir::to_json(*r));
  else
    fmt::print("{}", connredir::describe(*r));
  return 0;
}

struct ExecArgs {
  std::string cgroup, uid, gid;
  std::vector<std::string> cmd;
};

int cmd_exec(const ExecArgs& a) {
  if (a.cmd.empty())
    return usage("exec needs a command: connredir exec --cgroup DIR -- CMD ARGS...");
  std::optional<uint32_t> uid, gid;
  if (!a.uid.empty()) {
    auto u = ctl::parse_uint(a.uid, "--uid", 0, 0xfffffffe);
    if (!u) return usage(u.error().message);
    uid = static_cast<uint32_t>(*u);
  }
  if (!a.gid.empty()) {
    auto g = ctl::parse_uint(a.gid, "--gid", 0, 0xfffffffe);
    if (!g) return usage(g.error().message);
    gid = static_cast<uint32_t>(*g);
  }
  auto cg = ctl::resolve_cgroup(a.cgroup);
  if (!cg) return usage(cg.error().message);

  std::string procs = cg->path + "/cgroup.procs";
  int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::write(fd, "0\n", 2) != 2) {
    int e = errno;
    if (fd >= 0) ::close(fd);
    return report(Error{
        e, fmt::format("cannot move into cgroup {}: {} ({}){}", cg->path, connredir::errno_text(e),
                       procs,
                       e == EACCES || e == EPERM ? ": run as root or use a cgroup delegated to you"
                       : e == EBUSY              ? ": the cgroup has child cgroups with "
                                                   "controllers enabled; use a leaf cgroup"
                                                 : "")});
  }
  ::close(fd);
  if (uid || gid) {
    gid_t g = gid.value_or(0);
    if (!gid) {
      struct passwd* pw = getpwuid(*uid);
      g = pw ? pw->pw_gid : *uid;
    }
    if (setgroups(1, &g) != 0 || setgid(g) != 0) {
      int e = errno;
      return report(
          Error{e, fmt::format("cannot switch to gid {}: {} (exec --uid/--gid needs root)", g,
                               connredir::errno_text(e))});
    }
    if (uid && setuid(*uid) != 0) {
      int e = errno;
      return report(Error{e, fmt::format("cannot switch to uid {}: {} (exec --uid needs root)",
                                         *uid, connredir::errno_text(e))});
    }
  }
  std::vector<char*> argv;
  for (const auto& s : a.cmd) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  int e = errno;
  return report(Error{e, fmt::format("cannot run {}: {}", a.cmd[0], connredir::errno_text(e))});
}

// "unknown command 'x'" when a word names no subcommand at its level (CLI11
// would only say that a subcommand is required).
std::optional<std::string> unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* level = &app;
  std::string path = "connredir";
  for (int i = 1; i < argc; ++i) {
    std::string tok = argv[i];
    if (tok == "--") break;
    if (tok == "--pin-dir") {
      ++i;
      continue;
    }
    if (tok.empty() || tok[0] == '-') continue;
    auto subs = level->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return std::nullopt;  // a positional argument of a leaf command
    auto it =
        std::find_if(subs.begin(), subs.end(), [&](CLI::App* s) { return s->get_name() == tok; });
    if (it == subs.end()) {
      std::string names;
      for (auto* s : subs) names += (names.empty() ? "" : ", ") + s->get_name();
      return fmt::format("unknown command '{}' for {} (commands: {})", tok, path, names);
    }
    level = *it;
    path += " " + tok;
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"connredir: WFP-style connection redirection for Linux (eBPF cgroup hooks)",
               "connredir"};
  app.require_subcommand(1);
  app.set_version_flag("--version", CONNREDIR_VERSION);
  std::string pin_dir = ctl::kDefaultPinDir;
  bool as_json = false;
  app.add_option("--pin-dir", pin_dir, "bpffs directory holding the pinned maps and links")
      ->envname("CONNREDIR_PIN_DIR")
      ->capture_default_str();
  app.add_flag("--json", as_json, "JSON output (status, list commands, decode)");

  std::string up_cgroup;
  std::vector<std::string> up_proxies_in;
  auto* up = app.add_subcommand("up", "load, pin and attach the BPF programs (idempotent)");
  up->add_option("--cgroup", up_cgroup, "cgroup v2 directory to attach to (default: the root)");
  up->add_option("--proxies-in", up_proxies_in,
                 "cgroup (inside --cgroup) the proxies run in; repeatable. The proxies' "
                 "socket-option hooks attach only there, so applications elsewhere pay nothing "
                 "on getsockopt/setsockopt")
      ->allow_extra_args(false);

  auto* down = app.add_subcommand("down", "detach and unpin everything");
  auto* status = app.add_subcommand("status", "is connredir up, counts, statistics");
  auto flows = connredir::cli::add_flows_command(app, pin_dir, as_json);
  status->add_flag("--json", as_json, "JSON output");

  auto* callout = app.add_subcommand("callout", "manage callouts (redirectors)");
  callout->require_subcommand(1);
  CalloutArgs ca;
  auto* c_add = callout->add_subcommand("add", "add a callout");
  c_add->add_option("name", ca.name, "callout name (1-31 of A-Za-z0-9_.-)");
  c_add->add_option("--name", ca.name_opt, "callout name (alternative to NAME)");
  c_add
      ->add_option("--proxy", ca.proxies,
                   "proxy listener ADDR:PORT or [ADDR]:PORT (one per family)")
      ->allow_extra_args(false);
  c_add->add_option("--proxy-uid", ca.proxy_uid, "uid the proxy runs as (its principal)");
  c_add->add_option("--proxy-cgroup", ca.proxy_cgroup, "cgroup v2 directory the proxy runs in");
  c_add->add_option("--on-proxy-down", ca.on_proxy_down,
                    "refuse|bypass: when no listener the callout's principal owns is at the "
                    "proxy address (nothing listens, or someone else does), fail the connect "
                    "at once (default) or skip this callout");
  c_add->add_flag("--shared-principal", ca.shared_principal,
                  "allow this callout's principal (uid, cgroup) to be or overlap another "
                  "callout's on purpose: it then serves both");
  c_add->add_option("--on-failure", ca.on_failure,
                    "bypass|refuse: when a connect this callout's filters select cannot be "
                    "redirected to it (chain full, no proxy for the family, no key, no memory), "
                    "let it go on uninspected by this callout (default) or fail it");
  auto* c_list = callout->add_subcommand("list", "list callouts");
  c_list->add_flag("--json", as_json, "JSON output");
  auto* c_del = callout->add_subcommand("del", "delete a callout");
  c_del->add_option("name", ca.name, "callout name");
  c_del->add_option("--name", ca.name_opt, "callout name (alternative to NAME)");
  c_del->add_flag("--force", ca.force, "also delete the filters that use it");

  auto* filter = app.add_subcommand("filter", "manage filters");
  filter->require_subcommand(1);
  FilterArgs fa;
  auto* f_add = filter->add_subcommand("add", "add a filter");
  f_add->add_option("--callout", fa.callout, "callout to redirect to")->required();
  f_add->add_option("--dst", fa.dst, "destination CIDR or address (default: any)");
  f_add->add_option("--port", fa.port, "destination port P or range P-Q (default: any)");
  f_add->add_option("--proto", fa.proto, "tcp or any (default: any)");
  f_add->add_option("--weight", fa.weight, "higher weights are classified first (default 0)");
  f_add->add_option("--app-cgroup", fa.app_cgroup, "only apps in this cgroup v2 directory");
  f_add->add_option("--app-uid", fa.app_uid, "only apps running as this uid");
  f_add->add_option("--context", fa.context, "redirect context handed to the proxy (<=128 bytes)");
  std::string load_file;
  bool load_replace = false;
  auto* f_load = filter->add_subcommand(
      "load", "add many filters from a file (one per line, JSON or KEY=VALUE; see --help)");
  f_load->footer(
      "One filter per line, the fields of `filter add`:\n"
      "  {\"callout\":\"acme\",\"dst\":\"10.0.0.0/8\",\"port\":\"443\",\"weight\":100,"
      "\"app_uid\":1000}\n"
      "  callout=acme dst=10.0.0.0/8 port=8000-8080 proto=tcp weight=100 app-cgroup=DIR\n"
      "Blank lines and lines starting with # are skipped. The index is computed once.");
  f_load->add_option("file", load_file, "filter file ('-' = standard input)")->required();
  f_load->add_flag("--replace", load_replace,
                   "replace every existing filter (switched over without a gap)");
  f_load->add_flag("--json", as_json, "JSON output");
  auto* f_list = filter->add_subcommand("list", "list filters");
  f_list->add_flag("--json", as_json, "JSON output");
  auto* f_del = filter->add_subcommand("del", "delete a filter");
  f_del->add_option("id", fa.id, "filter id")->required();
  auto* f_check =
      filter->add_subcommand("check", "verify the classifier index against the filters");
  f_check->add_flag("--repair", fa.repair, "rewrite entries that differ");

  AuthArgs aa;
  auto* auth = app.add_subcommand("authorize",
                                  "allow a uid or cgroup to query/set redirect records (proxies)");
  auth->add_option("--uid", aa.uid, "user id");
  auth->add_option("--cgroup", aa.cgroup, "cgroup v2 directory (it and its descendants)");
  auth->add_option("--cgroup-id", aa.cgroup_id,
                   "cgroup id (e.g. of a removed cgroup, for --remove)");
  auth->add_flag("--remove", aa.remove, "withdraw an authorization");
  auth->add_flag("--list", aa.list, "list principals (authorized and callout proxies)");
  auth->add_flag("--json", as_json, "JSON output for --list");

  std::string hex;
  auto* decode = app.add_subcommand("decode", "decode a redirect records blob given in hex");
  decode->add_option("hex", hex, "the blob in hex (whitespace ignored)")->required();
  decode->add_flag("--json", as_json, "JSON output");

  ExecArgs ea;
  auto* exec = app.add_subcommand("exec", "run a command inside a cgroup, optionally as uid/gid");
  exec->add_option("--cgroup", ea.cgroup, "cgroup v2 directory to join")->required();
  exec->add_option("--uid", ea.uid, "switch to this uid");
  exec->add_option("--gid", ea.gid, "switch to this gid (default: the uid's primary group)");
  exec->add_option("cmd", ea.cmd, "command and arguments (after --)")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    if (auto unknown = unknown_command(app, argc, argv)) return usage(*unknown);
    return usage(msg + " (see `connredir --help`)");
  }
  if (pin_dir.empty() || pin_dir.front() != '/') return usage("--pin-dir must be an absolute path");
  while (pin_dir.size() > 1 && pin_dir.back() == '/') pin_dir.pop_back();

  if (*up) return cmd_up(pin_dir, up_cgroup, up_proxies_in);
  if (*down) return cmd_down(pin_dir);
  if (*status) return cmd_status(pin_dir, as_json);
  if (*flows.sub) return flows.run();
  if (*c_add) return cmd_callout_add(pin_dir, ca);
  if (*c_list) return cmd_callout_list(pin_dir, as_json);
  if (*c_del) return cmd_callout_del(pin_dir, ca);
  if (*f_add) return cmd_filter_add(pin_dir, fa);
  if (*f_load) return cmd_filter_load(pin_dir, load_file, load_replace, as_json);
  if (*f_list) return cmd_filter_list(pin_dir, as_json);
  if (*f_del) return cmd_filter_del(pin_dir, fa);
  if (*f_check) return cmd_filter_check(pin_dir, fa.repair);
  if (*auth) return cmd_authorize(pin_dir, aa, as_json);
  if (*decode) return cmd_decode(hex, as_json);
  if (*exec) return cmd_exec(ea);
  return usage("no command given (see `connredir --help`)");
}
