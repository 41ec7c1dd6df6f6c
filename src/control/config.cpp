// Configuration files and `connredir apply`/`export`: TOML in, the same
// specs and validators as the CLI (spec.cpp), a plan of what differs from the
// kernel state, and the order of writes that keeps every connect working.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

using json = nlohmann::json;

// ---- reading TOML into the *Line structs --------------------------------------

struct Ctx {
  std::string file;
  std::string table;  // "[[callout]] #2"
};

int line_of(const toml::node& n) { return static_cast<int>(n.source().begin.line); }

Error at(const Ctx& c, int line, std::string_view key, std::string_view msg) {
  std::string where = c.table;
  if (!key.empty()) where += fmt::format("{}key {}", where.empty() ? "" : " ", key);
  return Error{EINVAL, fmt::format("{}:{}: {}: {}", c.file, line, where, msg)};
}

// A scalar as the text the CLI would take: strings as they are, integers in
// decimal. Anything else is refused (a boolean or float is a mistake here).
Result<std::string> scalar_text(const Ctx& c, std::string_view key, const toml::node& v) {
  if (auto s = v.as_string()) return std::string(s->get());
  if (auto b = v.as_boolean()) return std::string(b->get() ? "true" : "false");
  if (auto i = v.as_integer()) {
    if (i->get() < 0) return tl::unexpected(at(c, line_of(v), key, "must not be negative"));
    return std::to_string(i->get());
  }
  return tl::unexpected(
      at(c, line_of(v), key, "must be a string, a non-negative integer or a boolean"));
}

// A value that may be one string or an array of strings.
Result<std::vector<std::string>> string_list(const Ctx& c, std::string_view key,
                                             const toml::node& v) {
  std::vector<std::string> out;
  if (auto arr = v.as_array()) {
    for (const auto& e : *arr) {
      auto s = scalar_text(c, key, e);
      if (!s) return tl::unexpected(s.error());
      out.push_back(std::move(*s));
    }
    return out;
  }
  auto s = scalar_text(c, key, v);
  if (!s) return tl::unexpected(s.error());
  out.push_back(std::move(*s));
  return out;
}

// An array of tables ([[callout]]) by its key, each table with its position.
Result<const toml::array*> table_array(const Ctx& c, const toml::table& root,
                                       std::string_view key) {
  const toml::node* n = root.get(key);
  if (!n) return nullptr;
  const auto* arr = n->as_array();
  if (!arr || !arr->is_array_of_tables())
    return tl::unexpected(at(c, line_of(*n), key,
                             fmt::format("must be an array of tables: write [[{}]] before each "
                                         "entry",
                                         key)));
  return arr;
}

// One key's scalar value handed to `set` (a field table's setter); its error
// names file, line and key.
template <class Setter>
Result<void> set_scalar(const Ctx& tc, const std::string& key, const toml::node& v, Setter set) {
  auto s = scalar_text(tc, key, v);
  if (!s) return tl::unexpected(s.error());
  if (auto r = set(std::move(*s)); !r)
    return tl::unexpected(at(tc, line_of(v), key, r.error().message));
  return {};
}

// Every [[name]] table of a file: `start(source)` once per table, then
// `set(ctx, key, value)` for each of its keys, in file order.
template <class Start, class Set>
Result<void> each_entry(const Ctx& c, const toml::table& root, std::string_view name, Start start,
                        Set set) {
  auto arr = table_array(c, root, name);
  if (!arr) return tl::unexpected(arr.error());
  if (!*arr) return {};
  size_t i = 0;
  for (const auto& n : **arr) {
    Ctx tc{c.file, fmt::format("[[{}]] #{}", name, ++i)};
    start(SourceRef{c.file, line_of(n)});
    for (const auto& [k, v] : *n.as_table())
      if (auto r = set(tc, std::string(k.str()), v); !r) return r;
  }
  return {};
}

struct ParsedCallout {
  CalloutLine line;
  SourceRef source;
};
struct ParsedFilter {
  FilterLine line;
  SourceRef source;
};
struct ParsedPrincipal {
  PrincipalLine line;
  SourceRef source;
};

struct ParsedFile {
  std::optional<GlobalConfig> global;
  std::vector<ParsedCallout> callouts;
  std::vector<ParsedFilter> filters;
  std::vector<ParsedPrincipal> principals;
};

Result<GlobalConfig> read_global(const Ctx& c0, const toml::node& n) {
  Ctx c{c0.file, "[global]"};
  const auto* t = n.as_table();
  if (!t) return tl::unexpected(at(c, line_of(n), "", "must be a table"));
  GlobalConfig g;
  g.source = SourceRef{c.file, line_of(n)};
  for (const auto& [k, v] : *t) {
    std::string key(k.str());
    std::replace(key.begin(), key.end(), '-', '_');
    if (key == "cgroup") {
      auto s = scalar_text(c, k.str(), v);
      if (!s) return tl::unexpected(s.error());
      g.cgroup = *s;
    } else if (key == "proxies_in") {
      auto l = string_list(c, k.str(), v);
      if (!l) return tl::unexpected(l.error());
      g.proxies_in = *l;
    } else if (key == "on_proxy_down" || key == "on_failure") {
      auto s = scalar_text(c, k.str(), v);
      if (!s) return tl::unexpected(s.error());
      // Checked here so that the error names this line, not a callout's.
      auto ok = key == "on_proxy_down" ? parse_proxy_down(*s).map([](auto) { return 0; })
                                       : parse_on_failure(*s).map([](auto) { return 0; });
      if (!ok) return tl::unexpected(at(c, line_of(v), k.str(), ok.error().message));
      (key == "on_proxy_down" ? g.on_proxy_down : g.on_failure) = *s;
    } else if (key == "implicit_records") {
      auto s = scalar_text(c, k.str(), v);
      if (!s) return tl::unexpected(s.error());
      if (auto ok = parse_implicit_records(*s); !ok)
        return tl::unexpected(at(c, line_of(v), k.str(), ok.error().message));
      g.implicit_records = *s;
    } else {
      return tl::unexpected(at(c, line_of(v), k.str(),
                               "unknown key (keys: cgroup, proxies_in, on_proxy_down, "
                               "on_failure, implicit_records)"));
    }
  }
  return g;
}

Result<ParsedFile> read_file(const std::string& file, const std::string& text,
                             CgroupResolver resolve) {
  Ctx c{file, ""};
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    return fail(EINVAL, fmt::format("{}:{}: {} (TOML syntax)", file, e.source().begin.line,
                                    e.description()));
  }
  ParsedFile out;
  for (const auto& [k, v] : root) {
    std::string_view key = k.str();
    if (key == "global") {
      auto g = read_global(c, v);
      if (!g) return tl::unexpected(g.error());
      out.global = std::move(*g);
    } else if (key != "callout" && key != "filter" && key != "principal") {
      return tl::unexpected(at(c, line_of(v), key,
                               "unknown table (tables: [global], [[callout]], [[filter]], "
                               "[[principal]])"));
    }
  }
  auto r = each_entry(
      c, root, "callout",
      [&](SourceRef src) {
        out.callouts.push_back({{}, std::move(src)});
      },
      [&](const Ctx& tc, const std::string& key, const toml::node& v) -> Result<void> {
        auto& line = out.callouts.back().line;
        if (key == "proxy") {
          auto l = string_list(tc, key, v);
          if (!l) return tl::unexpected(l.error());
          for (auto& p : *l) line.proxies.push_back(std::move(p));
          return {};
        }
        return set_scalar(tc, key, v, [&](std::string s) -> Result<void> {
          // The value alone through the validator, so that a bad one is
          // reported at its own line (the whole callout is checked later).
          CalloutLine probe{"x", {"127.0.0.1:1"}, {}, {}, {}, {}, {}, {}, {}};
          if (auto r = set_callout_field(probe, key, s); !r) return r;
          if (auto r = callout_spec(probe, resolve); !r) return tl::unexpected(r.error());
          return set_callout_field(line, key, std::move(s));
        });
      });
  if (!r) return tl::unexpected(r.error());
  r = each_entry(
      c, root, "filter",
      [&](SourceRef src) {
        out.filters.push_back({{}, std::move(src)});
      },
      [&](const Ctx& tc, const std::string& key, const toml::node& v) -> Result<void> {
        return set_scalar(tc, key, v, [&](std::string s) -> Result<void> {
          // The value alone first, for an error that names its key. The
          // probe is a block filter (a redirect one for the redirect-only
          // fields): the rules between fields are checked on the whole entry.
          FilterLine probe;
          if (auto r = set_filter_field(probe, key, s); !r) return r;
          std::string k = key;
          std::replace(k.begin(), k.end(), '-', '_');
          bool redirect_only = k == "callout" || k == "context";
          if (k != "action") probe.action = redirect_only ? "redirect" : "block";
          if (probe.action == "redirect" && probe.callout.empty()) probe.callout = "x";
          if (auto r = filter_spec(probe, resolve); !r) return tl::unexpected(r.error());
          return set_filter_field(out.filters.back().line, key, std::move(s));
        });
      });
  if (!r) return tl::unexpected(r.error());
  r = each_entry(
      c, root, "principal",
      [&](SourceRef src) {
        out.principals.push_back({{}, std::move(src)});
      },
      [&](const Ctx& tc, const std::string& key, const toml::node& v) -> Result<void> {
        auto& line = out.principals.back().line;
        return set_scalar(tc, key, v, [&](std::string s) -> Result<void> {
          std::string k = key;
          std::replace(k.begin(), k.end(), '-', '_');
          if (k == "uid")
            line.uid = std::move(s);
          else if (k == "cgroup")
            line.cgroup = std::move(s);
          else if (k == "cgroup_id")
            line.cgroup_id = std::move(s);
          else
            return fail(EINVAL, "unknown key (keys: uid, cgroup, cgroup_id)");
          return {};
        });
      });
  if (!r) return tl::unexpected(r.error());
  return out;
}

Error at_source(const SourceRef& s, std::string_view what, std::string_view msg) {
  return Error{EINVAL, fmt::format("{}:{}: {}: {}", s.file, s.line, what, msg)};
}

// ---- comparing with the kernel ---------------------------------------------------

std::string proxies_text(const std::optional<Address>& p4, const std::optional<Address>& p6) {
  std::string s;
  for (const auto* p : {&p4, &p6})
    if (*p) s += (s.empty() ? "" : ", ") + (*p)->to_string();
  return s;
}

std::string callout_text(const CalloutSpec& s) {
  std::string t = "proxy " + proxies_text(s.proxy4, s.proxy6);
  if (s.proxy_uid) t += fmt::format(" proxy_uid {}", *s.proxy_uid);
  if (s.proxy_cgroup) t += fmt::format(" proxy_cgroup {}", s.proxy_cgroup->path);
  t += fmt::format(" on_proxy_down {} on_failure {}", to_string(s.on_proxy_down),
                   to_string(s.on_failure));
  if (s.shared_principal) t += " shared_principal";
  if (!s.implicit_records) t += " implicit_records off";
  return t;
}

std::string callout_text(const CalloutInfo& i) {
  std::string t = "proxy " + proxies_text(i.proxy4, i.proxy6);
  if (i.proxy_uid) t += fmt::format(" proxy_uid {}", *i.proxy_uid);
  if (i.proxy_cgroup)
    t += fmt::format(" proxy_cgroup {}",
                     cgroup_path_by_id(i.proxy_cgroup).value_or(std::to_string(i.proxy_cgroup)));
  t += fmt::format(" on_proxy_down {} on_failure {}", to_string(i.on_proxy_down),
                   to_string(i.on_failure));
  if (i.shared_principal) t += " shared_principal";
  if (!i.implicit_records) t += " implicit_records off";
  return t;
}

bool same_callout(const CalloutSpec& s, const CalloutInfo& i) {
  auto same_addr = [](const std::optional<Address>& a, const std::optional<Address>& b) {
    return a.has_value() == b.has_value() && (!a || a->to_string() == b->to_string());
  };
  uint64_t cg = s.proxy_cgroup ? s.proxy_cgroup->id : 0;
  return same_addr(s.proxy4, i.proxy4) && same_addr(s.proxy6, i.proxy6) &&
         s.proxy_uid == i.proxy_uid && cg == i.proxy_cgroup && s.on_proxy_down == i.on_proxy_down &&
         s.on_failure == i.on_failure && s.implicit_records == i.implicit_records;
}

// A filter as the classifier sees it, for comparison and messages.
using FilterKey = std::tuple<FilterAction, std::string, uint32_t, std::string, std::string, uint8_t,
                             std::optional<uint32_t>, uint64_t, std::string>;

FilterKey key_of(const FilterSpec& s) {
  return {s.action,
          s.callout,
          s.weight,
          s.dst.to_string(),
          s.ports.to_string(),
          s.proto,
          s.app_uid,
          s.app_cgroup ? s.app_cgroup->id : 0,
          s.context};
}

FilterKey key_of(const FilterInfo& f) {
  return {f.action, f.callout, f.weight,     f.dst.to_string(), f.ports.to_string(),
          f.proto,  f.app_uid, f.app_cgroup, f.context};
}

std::string filter_text(const FilterKey& k) {
  const auto& [action, callout, weight, dst, ports, proto, app_uid, app_cgroup, context] = k;
  std::string t = fmt::format("filter {} dst={} port={} proto={} weight={}",
                              action == FilterAction::Redirect ? callout : to_string(action), dst,
                              ports, proto_name(proto), weight);
  if (app_uid) t += fmt::format(" app_uid={}", *app_uid);
  if (app_cgroup)
    t += fmt::format(" app_cgroup={}",
                     cgroup_path_by_id(app_cgroup).value_or(std::to_string(app_cgroup)));
  if (!context.empty()) t += fmt::format(" context={}", json(context).dump());
  return t;
}

std::string principal_what(uint32_t kind, uint64_t id) {
  if (kind == CONNREDIR_PRINCIPAL_UID) return fmt::format("principal uid {}", id);
  auto path = cgroup_path_by_id(id);
  return path ? fmt::format("principal cgroup {} (id {})", *path, id)
              : fmt::format("principal cgroup id {}", id);
}

std::string prev_filter_source(const AppliedState* prev, uint32_t id) {
  if (!prev) return "not in the configuration";
  auto it = prev->filters.find(id);
  return it == prev->filters.end() ? "not in the configuration: made by hand"
                                   : fmt::format("was at {}", it->second);
}

std::string prev_principal_source(const AppliedState* prev, uint32_t kind, uint64_t id) {
  if (!prev) return "not in the configuration";
  auto it = prev->principals.find({kind, id});
  return it == prev->principals.end() ? "not in the configuration: made by hand"
                                      : fmt::format("was at {}", it->second);
}

std::string toml_string(std::string_view s) {
  std::ostringstream o;
  o << toml::value<std::string>(std::string(s));
  return o.str();
}

}  // namespace

std::string SourceRef::to_string() const { return fmt::format("{}:{}", file, line); }

Result<std::vector<std::string>> config_files(std::span<const std::string> paths) {
  std::vector<std::string> out;
  auto add_dir = [&out](const std::string& dir, bool must_exist) -> Result<void> {
    DIR* d = opendir(dir.c_str());
    if (!d) {
      int e = errno;
      if (!must_exist && e == ENOENT) return {};
      return fail(e, fmt::format("cannot read configuration directory {}: {}", dir, errno_text(e)));
    }
    std::vector<std::string> names;
    while (auto* ent = readdir(d)) {
      std::string n = ent->d_name;
      // Hidden files and editors' backups are not configuration.
      if (n.size() > 5 && n[0] != '.' && n.substr(n.size() - 5) == ".toml") names.push_back(n);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    for (const auto& n : names) out.push_back(dir + "/" + n);
    return {};
  };
  if (paths.empty()) {
    struct stat st {};
    if (stat(kConfigFile, &st) == 0) out.push_back(kConfigFile);
    if (auto r = add_dir(kConfigDropinDir, false); !r) return tl::unexpected(r.error());
    if (out.empty())
      return fail(ENOENT, fmt::format("no configuration: neither {} nor {}/*.toml exists (install "
                                      "the connredir package's default, or give PATH)",
                                      kConfigFile, kConfigDropinDir));
    return out;
  }
  for (const auto& p : paths) {
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) {
      int e = errno;
      return fail(e, fmt::format("configuration {}: {}", p, errno_text(e)));
    }
    if (S_ISDIR(st.st_mode)) {
      if (auto r = add_dir(p, true); !r) return tl::unexpected(r.error());
    } else {
      out.push_back(p);
    }
  }
  return out;
}

Result<Config> load_config(std::span<const std::string> files, CgroupResolver resolve) {
  std::vector<std::pair<std::string, std::string>> texts;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      int e = errno;
      return fail(e, fmt::format("cannot read configuration file {}: {}", f, errno_text(e)));
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    texts.emplace_back(f, ss.str());
  }
  return parse_config(texts, resolve);
}

Result<Config> parse_config(std::span<const std::pair<std::string, std::string>> file_texts,
                            CgroupResolver resolve) {
  Config cfg;
  std::vector<ParsedFile> parsed;
  for (size_t i = 0; i < file_texts.size(); ++i) {
    const auto& [file, text] = file_texts[i];
    cfg.files.push_back(file);
    auto p = read_file(file, text, resolve);
    if (!p) return tl::unexpected(p.error());
    if (p->global) {
      // A vendor's drop-in must not move where connredir attaches.
      if (i != 0)
        return tl::unexpected(at_source(*p->global->source, "[global]",
                                        fmt::format("only the first file ({}) may have [global]; "
                                                    "a drop-in holds callouts, filters and "
                                                    "principals",
                                                    file_texts[0].first)));
      cfg.global = *p->global;
    }
    parsed.push_back(std::move(*p));
  }

  // Callouts: names and proxy addresses are each defined once across all files.
  std::map<std::string, SourceRef> names, proxies;
  for (auto& f : parsed)
    for (auto& pc : f.callouts) {
      CalloutLine line = pc.line;
      if (line.on_proxy_down.empty()) line.on_proxy_down = cfg.global.on_proxy_down;
      if (line.on_failure.empty()) line.on_failure = cfg.global.on_failure;
      if (line.implicit_records.empty()) line.implicit_records = cfg.global.implicit_records;
      std::string what = line.name.empty() ? "[[callout]]" : "callout " + line.name;
      auto spec = callout_spec(line, resolve);
      if (!spec) return tl::unexpected(at_source(pc.source, what, spec.error().message));
      if (auto [it, fresh] = names.emplace(line.name, pc.source); !fresh)
        return tl::unexpected(
            at_source(pc.source, what,
                      fmt::format("defined twice (also at {}): each callout belongs to one file",
                                  it->second.to_string())));
      for (const auto* p : {&spec->spec.proxy4, &spec->spec.proxy6}) {
        if (!*p) continue;
        std::string addr = (*p)->to_string();
        if (auto [it, fresh] = proxies.emplace(addr, pc.source); !fresh)
          return tl::unexpected(at_source(
              pc.source, what,
              fmt::format("proxy {} is already the proxy of the callout at {}: two vendors "
                          "cannot share a listener",
                          addr, it->second.to_string())));
      }
      cfg.callouts.push_back(ConfigCallout{std::move(*spec), pc.source});
    }
  for (auto& f : parsed)
    for (auto& pf : f.filters) {
      auto spec = filter_spec(pf.line, resolve);
      if (!spec) return tl::unexpected(at_source(pf.source, "[[filter]]", spec.error().message));
      if (spec->action == FilterAction::Redirect && !names.count(spec->callout))
        return tl::unexpected(
            at_source(pf.source, "[[filter]] key callout",
                      fmt::format("no callout named '{}' in the configuration (define it in a "
                                  "[[callout]] table, in this file or another)",
                                  spec->callout)));
      cfg.filters.push_back(ConfigFilter{std::move(*spec), pf.source});
    }
  std::map<std::pair<uint32_t, uint64_t>, SourceRef> seen_principals;
  for (auto& f : parsed)
    for (auto& pp : f.principals) {
      auto spec = principal_spec(pp.line, resolve);
      if (!spec) return tl::unexpected(at_source(pp.source, "[[principal]]", spec.error().message));
      if (auto [it, fresh] = seen_principals.emplace(std::pair{spec->kind, spec->id}, pp.source);
          !fresh)
        return tl::unexpected(at_source(
            pp.source, "[[principal]]",
            fmt::format("{} is already listed at {}", spec->what, it->second.to_string())));
      cfg.principals.push_back(ConfigPrincipal{std::move(*spec), pp.source});
    }
  return cfg;
}

Result<ApplyPlan> plan_apply(Control& c, const Config& cfg, const AppliedState* prev) {
  auto was = [prev](const std::map<std::string, std::string>* from, const std::string& key) {
    if (!prev) return std::string("not in the configuration");
    auto it = from->find(key);
    return it == from->end() ? std::string("not in the configuration: made by hand")
                             : fmt::format("was at {}", it->second);
  };
  ApplyPlan plan;
  auto callouts = c.list_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  auto filters = c.list_filters();
  if (!filters) return tl::unexpected(filters.error());
  auto principals = c.list_principals();
  if (!principals) return tl::unexpected(principals.error());

  std::map<std::string, const CalloutInfo*> have;
  for (const auto& i : *callouts) have[i.name] = &i;
  std::set<std::string> wanted;
  for (const auto& cc : cfg.callouts) {
    const auto& spec = cc.parsed.spec;
    wanted.insert(spec.name);
    if (cc.parsed.unit_waiting)
      plan.notes.push_back(fmt::format(
          "callout {}: {} is not running, so the callout has no cgroup principal until it "
          "starts (the unit runs `connredir apply` before its proxy)",
          spec.name, cc.parsed.proxy_unit));
    auto it = have.find(spec.name);
    if (it == have.end()) {
      plan.items.push_back(
          {PlanItem::Add, "callout " + spec.name, callout_text(spec), cc.source.to_string()});
      plan.add_callouts.push_back(spec);
    } else if (!same_callout(spec, *it->second)) {
      plan.items.push_back(
          {PlanItem::Change, "callout " + spec.name,
           fmt::format("{} (was: {})", callout_text(spec), callout_text(*it->second)),
           cc.source.to_string()});
      plan.change_callouts.push_back(spec);
    }
  }
  for (const auto& i : *callouts)
    if (!wanted.count(i.name)) {
      plan.items.push_back({PlanItem::Remove, "callout " + i.name, callout_text(i),
                            was(prev ? &prev->callouts : nullptr, i.name)});
      plan.remove_callouts.push_back(i.name);
    }

  // Filters: the classifier's order is weight (high first), then age; the
  // configuration's is weight, then file order. Equal sequences: nothing to
  // do. Otherwise the whole set is replaced at once.
  std::vector<FilterInfo> cur = *filters;
  std::stable_sort(cur.begin(), cur.end(), [](const FilterInfo& a, const FilterInfo& b) {
    return a.weight != b.weight ? a.weight > b.weight : a.seq < b.seq;
  });
  std::vector<const ConfigFilter*> next;
  for (const auto& f : cfg.filters) next.push_back(&f);
  std::stable_sort(next.begin(), next.end(), [](const ConfigFilter* a, const ConfigFilter* b) {
    return a->spec.weight > b->spec.weight;
  });
  bool same = cur.size() == next.size();
  for (size_t i = 0; same && i < cur.size(); ++i) same = key_of(cur[i]) == key_of(next[i]->spec);
  if (!same) {
    plan.replace_filters = true;
    for (const auto& f : cfg.filters) plan.filters.push_back(f.spec);
    // What a reader wants to see: the filters that come and go (as
    // multisets); those in both only move or get new ids.
    std::multiset<FilterKey> old_keys, new_keys;
    for (const auto& f : cur) old_keys.insert(key_of(f));
    for (const auto& f : cfg.filters) new_keys.insert(key_of(f.spec));
    for (const auto& f : cfg.filters) {
      auto k = key_of(f.spec);
      if (auto it = old_keys.find(k); it != old_keys.end())
        old_keys.erase(it);
      else
        plan.items.push_back({PlanItem::Add, filter_text(k), "", f.source.to_string()});
    }
    for (const auto& f : cur) {
      auto k = key_of(f);
      if (auto it = new_keys.find(k); it != new_keys.end())
        new_keys.erase(it);
      else
        plan.items.push_back({PlanItem::Remove, filter_text(k), fmt::format("filter id {}", f.id),
                              prev_filter_source(prev, f.id)});
    }
    if (std::none_of(plan.items.begin(), plan.items.end(),
                     [](const PlanItem& i) { return i.what.rfind("filter ", 0) == 0; }))
      plan.items.push_back({PlanItem::Change, "filter order",
                            "the same filters in another order (equal weights are classified "
                            "in file order)",
                            ""});
  }

  std::set<std::pair<uint32_t, uint64_t>> want_p;
  for (const auto& p : cfg.principals) {
    want_p.insert({p.spec.kind, p.spec.id});
    bool present = std::any_of(principals->begin(), principals->end(), [&](const auto& h) {
      return h.kind == p.spec.kind && h.id == p.spec.id &&
             (h.flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED);
    });
    if (!present) {
      plan.items.push_back({PlanItem::Add, "principal " + p.spec.what, "", p.source.to_string()});
      plan.add_principals.push_back(p.spec);
    }
  }
  for (const auto& h : *principals)
    if ((h.flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED) && !want_p.count({h.kind, h.id})) {
      plan.items.push_back({PlanItem::Remove, principal_what(h.kind, h.id), "",
                            prev_principal_source(prev, h.kind, h.id)});
      plan.remove_principals.push_back(PrincipalSpec{h.kind, h.id, principal_what(h.kind, h.id)});
    }
  return plan;
}

Result<void> apply_plan(Control& c, const ApplyPlan& plan, int drain_ms) {
  // Everything a new filter may name exists before the classifier can pick
  // it, and nothing an old filter names goes before the classifier stops
  // picking it: a connect classified at any instant meets a whole, valid
  // state (the old one or the new one).
  for (const auto& s : plan.add_callouts)
    if (auto r = c.add_callout(s); !r)
      return fail(r.error().code, fmt::format("adding callout {}: {}", s.name, r.error().message));
  for (const auto& s : plan.change_callouts)
    if (auto r = c.update_callout(s); !r)
      return fail(r.error().code,
                  fmt::format("changing callout {}: {}", s.name, r.error().message));
  for (const auto& p : plan.add_principals)
    if (auto r = c.authorize(p.kind, p.id); !r)
      return fail(r.error().code, fmt::format("authorizing {}: {}", p.what, r.error().message));
  if (plan.replace_filters)
    if (auto r = c.load_filters(plan.filters, true); !r)
      return fail(r.error().code, fmt::format("replacing the filters: {}", r.error().message));
  if (drain_ms > 0 && (!plan.remove_callouts.empty() || !plan.remove_principals.empty()))
    std::this_thread::sleep_for(std::chrono::milliseconds(drain_ms));
  for (const auto& name : plan.remove_callouts)
    if (auto r = c.delete_callout(name, false); !r)
      return fail(r.error().code, fmt::format("removing callout {}: {}", name, r.error().message));
  for (const auto& p : plan.remove_principals)
    if (auto r = c.deauthorize(p.kind, p.id); !r)
      return fail(r.error().code, fmt::format("withdrawing {}: {}", p.what, r.error().message));
  return {};
}

std::string applied_state_path(std::string_view pin_dir) {
  const char* dir = std::getenv("CONNREDIR_STATE_DIR");
  std::string name(pin_dir);
  std::replace(name.begin(), name.end(), '/', '_');
  return fmt::format("{}/applied{}.json", dir && *dir ? dir : "/run/connredir", name);
}

Result<std::optional<AppliedState>> read_applied_state(std::string_view pin_dir) {
  std::string path = applied_state_path(pin_dir);
  std::ifstream in(path);
  if (!in) {
    if (errno == ENOENT) return std::optional<AppliedState>{};
    int e = errno;
    return fail(e, fmt::format("cannot read {}: {}", path, errno_text(e)));
  }
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(EINVAL,
                fmt::format("{} is not valid JSON: remove it and run `connredir apply`", path));
  AppliedState st;
  try {
    st.files = j.value("files", std::vector<std::string>{});
    // Each part held in a variable: a range-for over a member of a temporary
    // json would iterate a destroyed object.
    const json callouts = j.value("callouts", json::object());
    const json filters = j.value("filters", json::array());
    const json principals = j.value("principals", json::array());
    for (const auto& [k, v] : callouts.items()) st.callouts[k] = v.get<std::string>();
    for (const auto& f : filters)
      st.filters[f.at("id").get<uint32_t>()] = f.at("source").get<std::string>();
    for (const auto& p : principals)
      st.principals[{p.at("kind").get<uint32_t>(), p.at("id").get<uint64_t>()}] =
          p.at("source").get<std::string>();
  } catch (const json::exception& e) {
    return fail(EINVAL, fmt::format("{}: {}: remove it and run `connredir apply`", path, e.what()));
  }
  return std::optional<AppliedState>{std::move(st)};
}

Result<void> write_applied_state(std::string_view pin_dir, const AppliedState& st) {
  std::string path = applied_state_path(pin_dir);
  std::string dir = path.substr(0, path.rfind('/'));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    int e = errno;
    return fail(e, fmt::format("cannot create {}: {}", dir, errno_text(e)));
  }
  json j = {{"files", st.files}};
  j["callouts"] = json::object();
  for (const auto& [k, v] : st.callouts) j["callouts"][k] = v;
  j["filters"] = json::array();
  for (const auto& [id, src] : st.filters) j["filters"].push_back({{"id", id}, {"source", src}});
  j["principals"] = json::array();
  for (const auto& [k, src] : st.principals)
    j["principals"].push_back({{"kind", k.first}, {"id", k.second}, {"source", src}});
  // Written whole, then renamed: a reader never sees half a file.
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) {
      int e = errno;
      return fail(e, fmt::format("cannot write {}: {}", tmp, errno_text(e)));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    return fail(e, fmt::format("cannot rename {} to {}: {}", tmp, path, errno_text(e)));
  }
  return {};
}

void remove_applied_state(std::string_view pin_dir) {
  (void)::unlink(applied_state_path(pin_dir).c_str());
}

Result<AppliedState> applied_state_of(Control& c, const Config& cfg) {
  AppliedState st;
  st.files = cfg.files;
  for (const auto& cc : cfg.callouts) st.callouts[cc.parsed.spec.name] = cc.source.to_string();
  for (const auto& p : cfg.principals)
    st.principals[{p.spec.kind, p.spec.id}] = p.source.to_string();
  auto filters = c.list_filters();
  if (!filters) return tl::unexpected(filters.error());
  // Match each kernel filter to a configuration entry with the same key, in
  // order (equal filters in two places get one source each).
  std::multimap<FilterKey, std::string> sources;
  for (const auto& f : cfg.filters) sources.emplace(key_of(f.spec), f.source.to_string());
  std::vector<FilterInfo> by_seq = *filters;
  std::sort(by_seq.begin(), by_seq.end(),
            [](const FilterInfo& a, const FilterInfo& b) { return a.seq < b.seq; });
  for (const auto& f : by_seq)
    if (auto it = sources.find(key_of(f)); it != sources.end()) {
      st.filters[f.id] = it->second;
      sources.erase(it);
    }
  return st;
}

Result<std::string> export_config(Control& c, const std::optional<std::string>& up_cgroup,
                                  const std::vector<std::string>& proxies_in) {
  auto callouts = c.list_callouts();
  if (!callouts) return tl::unexpected(callouts.error());
  auto filters = c.list_filters();
  if (!filters) return tl::unexpected(filters.error());
  auto principals = c.list_principals();
  if (!principals) return tl::unexpected(principals.error());
  std::string out =
      "# connredir export: the running callouts, filters and principals.\n"
      "# `connredir apply FILE` takes this back unchanged (docs/CONFIG.md).\n";
  if (up_cgroup) {
    out += fmt::format("\n[global]\ncgroup = {}\n", toml_string(*up_cgroup));
    if (!proxies_in.empty()) {
      std::string l;
      for (const auto& p : proxies_in) l += (l.empty() ? "" : ", ") + toml_string(p);
      out += fmt::format("proxies_in = [{}]\n", l);
    }
  }
  for (const auto& i : *callouts) {
    out += fmt::format("\n[[callout]]\nname = {}\n", toml_string(i.name));
    std::string l;
    for (const auto* p : {&i.proxy4, &i.proxy6})
      if (*p) l += (l.empty() ? "" : ", ") + toml_string((*p)->to_string());
    out += fmt::format("proxy = [{}]\n", l);
    if (i.proxy_uid) out += fmt::format("proxy_uid = {}\n", *i.proxy_uid);
    if (i.proxy_cgroup) {
      auto path = cgroup_path_by_id(i.proxy_cgroup);
      if (!path)
        return fail(ENOENT, fmt::format("callout {}: its proxy cgroup (id {}) no longer exists, so "
                                        "it cannot be written as a path: fix the callout first",
                                        i.name, i.proxy_cgroup));
      if (auto unit = unit_of_cgroup_path(*path))
        out += fmt::format("proxy_unit = {}\n", toml_string(*unit));
      else
        out += fmt::format("proxy_cgroup = {}\n", toml_string(*path));
    }
    out += fmt::format("on_proxy_down = \"{}\"\non_failure = \"{}\"\n", to_string(i.on_proxy_down),
                       to_string(i.on_failure));
    if (i.shared_principal) out += "shared_principal = true\n";
    out += fmt::format("implicit_records = {}\n", i.implicit_records ? "true" : "false");
  }
  std::vector<FilterInfo> fs = *filters;
  std::stable_sort(fs.begin(), fs.end(), [](const FilterInfo& a, const FilterInfo& b) {
    return a.weight != b.weight ? a.weight > b.weight : a.seq < b.seq;
  });
  for (const auto& f : fs) {
    out += "\n[[filter]]\n";
    if (f.action == FilterAction::Redirect)
      out += fmt::format("callout = {}\n", toml_string(f.callout));
    else
      out += fmt::format("action = \"{}\"\n", to_string(f.action));
    out += fmt::format("dst = \"{}\"\nport = \"{}\"\nproto = \"{}\"\nweight = {}\n",
                       f.dst.to_string(), f.ports.to_string(), proto_name(f.proto), f.weight);
    if (f.app_uid) out += fmt::format("app_uid = {}\n", *f.app_uid);
    if (f.app_cgroup) {
      auto path = cgroup_path_by_id(f.app_cgroup);
      if (!path)
        return fail(ENOENT, fmt::format("filter {}: its app cgroup (id {}) no longer exists: "
                                        "delete the filter first",
                                        f.id, f.app_cgroup));
      out += fmt::format("app_cgroup = {}\n", toml_string(*path));
    }
    if (!f.context.empty()) out += fmt::format("context = {}\n", toml_string(f.context));
  }
  for (const auto& p : *principals) {
    if (!(p.flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED)) continue;
    if (p.kind == CONNREDIR_PRINCIPAL_UID) {
      out += fmt::format("\n[[principal]]\nuid = {}\n", p.id);
    } else if (auto path = cgroup_path_by_id(p.id)) {
      out += fmt::format("\n[[principal]]\ncgroup = {}\n", toml_string(*path));
    } else {
      out += fmt::format("\n[[principal]]\ncgroup_id = {}\n", p.id);
    }
  }
  return out;
}

}  // namespace connredir::control
