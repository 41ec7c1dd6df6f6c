// `connredir authorize`: explicit principals (uids and cgroups allowed to
// query and set redirect records), besides the callouts' own proxies.
#include <fmt/format.h>

#include "commands.hpp"

namespace connredir::cli {
namespace {

struct AuthArgs {
  ctl::PrincipalLine principal;
  bool remove = false, list = false;
};

int cmd_authorize(const std::string& pin_dir, const AuthArgs& a, bool as_json) {
  const auto& pl = a.principal;
  int given = !pl.uid.empty() + !pl.cgroup.empty() + !pl.cgroup_id.empty();
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
  auto p = ctl::principal_spec(pl, &ctl::resolve_cgroup);
  if (!p) return usage(p.error().message);
  const uint32_t kind = p->kind;
  const uint64_t id = p->id;
  const std::string& what = p->what;
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

}  // namespace

void add_authorize_command(CLI::App& app, Globals& g, Commands& out) {
  auto a = std::make_shared<AuthArgs>();
  auto* auth = app.add_subcommand("authorize",
                                  "allow a uid or cgroup to query/set redirect records (proxies)");
  auth->add_option("--uid", a->principal.uid, "user id");
  auth->add_option("--cgroup", a->principal.cgroup, "cgroup v2 directory (it and its descendants)");
  auth->add_option("--cgroup-id", a->principal.cgroup_id,
                   "cgroup id (e.g. of a removed cgroup, for --remove)");
  auth->add_flag("--remove", a->remove, "withdraw an authorization");
  auth->add_flag("--list", a->list, "list principals (authorized and callout proxies)");
  auth->add_flag("--json", g.as_json, "JSON output for --list");
  out.push_back({auth, [&g, a] { return cmd_authorize(g.pin_dir, *a, g.as_json); }});
}

}  // namespace connredir::cli
