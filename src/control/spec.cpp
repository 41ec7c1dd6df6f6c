// Specs from text: the one path from a filter's, callout's or principal's
// text (CLI flags, a `filter load` line, a configuration entry) to the spec
// Control takes. Each kind has a field table (the names every front end
// uses) and one validator.
#include <algorithm>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

using json = nlohmann::json;

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  size_t e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// Canonical key: '-' and '_' are the same.
std::string key_name(std::string_view k) {
  std::string out(k);
  std::replace(out.begin(), out.end(), '-', '_');
  return out;
}

constexpr FilterField kFilterFields[] = {
    {"action", &FilterLine::action,
     "redirect (to --callout's proxy), permit (exempt from every lower-weight filter: goes "
     "direct) or block (the connect or UDP send fails with EPERM) (default: redirect)"},
    {"callout", &FilterLine::callout, "callout to redirect to (action redirect only)"},
    {"dst", &FilterLine::dst, "destination CIDR or address, or any (default: any)"},
    {"port", &FilterLine::port, "destination port P or range P-Q, or any (default: any)"},
    {"proto", &FilterLine::proto,
     "tcp, udp or any (default: any); UDP is redirected when connected, permitted or "
     "blocked either way"},
    {"weight", &FilterLine::weight, "higher weights are classified first (default 0)"},
    {"app_uid", &FilterLine::app_uid, "only apps running as this uid"},
    {"app_cgroup", &FilterLine::app_cgroup, "only apps in this cgroup v2 directory"},
    {"context", &FilterLine::context, "redirect context handed to the proxy (<=128 bytes)"},
};

constexpr CalloutField kCalloutFields[] = {
    {"name", &CalloutLine::name, "callout name (1-31 of A-Za-z0-9_.-)"},
    {"proxy", nullptr, "proxy listener ADDR:PORT or [ADDR]:PORT (one per family)"},
    {"proxy_uid", &CalloutLine::proxy_uid, "uid the proxy runs as (its principal)"},
    {"proxy_cgroup", &CalloutLine::proxy_cgroup, "cgroup v2 directory the proxy runs in"},
    {"proxy_unit", &CalloutLine::proxy_unit,
     "systemd unit the proxy runs as (connredir-proxy@NAME.service): its cgroup is the "
     "principal"},
    {"on_proxy_down", &CalloutLine::on_proxy_down,
     "refuse|bypass: when no listener the callout's principal owns is at the proxy address "
     "(nothing listens, or someone else does), fail the connect at once (default) or skip this "
     "callout"},
    {"on_failure", &CalloutLine::on_failure,
     "bypass|refuse: when a connect this callout's filters select cannot be redirected to it "
     "(chain full, no proxy for the family, no key, no memory), let it go on uninspected by "
     "this callout (default) or fail it"},
    {"shared_principal", &CalloutLine::shared_principal,
     "allow this callout's principal (uid, cgroup) to be or overlap another callout's on "
     "purpose: it then serves both",
     true},
    {"implicit_records", &CalloutLine::implicit_records,
     "on|off: whether an onward connect of this callout's proxy principal that sets no redirect "
     "records gets the records of a flow the principal accepted for the same destination "
     "(implicit records, docs/ABI.md; default on)"},
};

template <class Field>
std::string field_names(std::span<const Field> fields) {
  std::string s;
  for (const auto& f : fields) {
    if (!s.empty()) s += ", ";
    s += f.key;
  }
  return s;
}

template <class Field>
const Field* find_field(std::span<const Field> fields, std::string_view key) {
  std::string k = key_name(key);
  for (const auto& f : fields)
    if (k == f.key) return &f;
  return nullptr;
}

Result<FilterLine> parse_json_line(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(EINVAL, "not a JSON object (one filter per line)");
  FilterLine l;
  for (const auto& [k, v] : j.items()) {
    std::string value;
    if (v.is_string())
      value = v.get<std::string>();
    else if (v.is_number_unsigned())
      value = std::to_string(v.get<uint64_t>());
    else if (v.is_null())
      continue;
    else
      return fail(EINVAL, fmt::format("field '{}' must be a string or a non-negative integer", k));
    if (auto r = set_filter_field(l, k, std::move(value)); !r) return tl::unexpected(r.error());
  }
  return l;
}

Result<FilterLine> parse_text_line(const std::string& text) {
  FilterLine l;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    if (i >= text.size()) break;
    size_t end = text.find_first_of(" \t", i);
    if (end == std::string::npos) end = text.size();
    std::string_view tok(text.data() + i, end - i);
    i = end;
    size_t eq = tok.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return fail(EINVAL, fmt::format("'{}' is not KEY=VALUE", tok));
    if (auto r = set_filter_field(l, tok.substr(0, eq), std::string(tok.substr(eq + 1))); !r)
      return tl::unexpected(r.error());
  }
  return l;
}

// Where systemd puts the units connredir knows, below the cgroup2 mount.
constexpr std::string_view kProxyTemplate = "connredir-proxy@";
constexpr std::string_view kProxySlice = "connredir.slice";

}  // namespace

std::span<const FilterField> filter_fields() { return kFilterFields; }
std::span<const CalloutField> callout_fields() { return kCalloutFields; }

Result<void> set_filter_field(FilterLine& l, std::string_view key, std::string value) {
  const auto* f = find_field(filter_fields(), key);
  if (!f)
    return fail(EINVAL,
                fmt::format("unknown field '{}' (fields: {})", key, field_names(filter_fields())));
  l.*(f->member) = std::move(value);
  return {};
}

Result<void> set_callout_field(CalloutLine& l, std::string_view key, std::string value) {
  const auto* f = find_field(callout_fields(), key);
  if (!f)
    return fail(EINVAL,
                fmt::format("unknown field '{}' (fields: {})", key, field_names(callout_fields())));
  if (f->member)
    l.*(f->member) = std::move(value);
  else
    l.proxies.push_back(std::move(value));
  return {};
}

Result<std::optional<FilterLine>> parse_filter_line(std::string_view line) {
  std::string t = trim(line);
  if (t.empty() || t[0] == '#') return std::optional<FilterLine>{};
  auto l = t[0] == '{' ? parse_json_line(t) : parse_text_line(t);
  if (!l) return tl::unexpected(l.error());
  return std::optional<FilterLine>{std::move(*l)};
}

Result<FilterSpec> filter_spec(const FilterLine& l, CgroupResolver resolve) {
  FilterSpec s;
  if (!l.action.empty()) {
    auto a = parse_filter_action(l.action);
    if (!a) return tl::unexpected(a.error());
    s.action = *a;
  }
  // Whether the action wants a callout is check_filter_spec's to say.
  if (!l.callout.empty() && s.action == FilterAction::Redirect)
    if (auto v = validate_callout_name(l.callout); !v) return tl::unexpected(v.error());
  s.callout = l.callout;
  if (!l.dst.empty() && l.dst != "any") {
    auto p = parse_cidr(l.dst);
    if (!p) return tl::unexpected(p.error());
    s.dst = *p;
  }
  if (!l.port.empty() && l.port != "any") {
    auto p = parse_port_range(l.port);
    if (!p) return tl::unexpected(p.error());
    s.ports = *p;
  }
  if (!l.proto.empty()) {
    auto p = parse_proto(l.proto);
    if (!p) return tl::unexpected(p.error());
    s.proto = *p;
  }
  if (!l.weight.empty()) {
    auto w = parse_uint(l.weight, "weight", 0, 0xffffffff);
    if (!w) return tl::unexpected(w.error());
    s.weight = static_cast<uint32_t>(*w);
  }
  if (!l.app_uid.empty()) {
    auto u = parse_uint(l.app_uid, "app-uid", 0, 0xfffffffe);
    if (!u) return tl::unexpected(u.error());
    s.app_uid = static_cast<uint32_t>(*u);
  }
  if (!l.app_cgroup.empty()) {
    if (!resolve) return fail(EINVAL, "app-cgroup cannot be resolved here");
    auto cg = resolve(l.app_cgroup);
    if (!cg) return tl::unexpected(cg.error());
    s.app_cgroup = *cg;
  }
  if (l.context.size() > CONNREDIR_USER_CONTEXT_MAX)
    return fail(EINVAL, fmt::format("context is {} bytes; at most {} are allowed", l.context.size(),
                                    CONNREDIR_USER_CONTEXT_MAX));
  s.context = l.context;
  if (auto v = check_filter_spec(s); !v) return tl::unexpected(v.error());
  return s;
}

Result<std::vector<FilterSpec>> parse_filter_file(std::string_view text, CgroupResolver resolve) {
  std::vector<FilterSpec> out;
  std::map<std::string, CgroupRef> cgroups;  // each distinct directory resolved once
  size_t lineno = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    auto parsed = parse_filter_line(line);
    if (!parsed)
      return fail(parsed.error().code, fmt::format("line {}: {}", lineno, parsed.error().message));
    if (!*parsed) continue;
    FilterLine l = std::move(**parsed);
    std::optional<CgroupRef> cg;
    if (!l.app_cgroup.empty()) {
      auto it = cgroups.find(l.app_cgroup);
      if (it == cgroups.end()) {
        if (!resolve) return fail(EINVAL, fmt::format("line {}: app-cgroup not supported", lineno));
        auto r = resolve(l.app_cgroup);
        if (!r) return fail(r.error().code, fmt::format("line {}: {}", lineno, r.error().message));
        it = cgroups.emplace(l.app_cgroup, *r).first;
      }
      cg = it->second;
      l.app_cgroup.clear();
    }
    auto spec = filter_spec(l, resolve);
    if (!spec)
      return fail(spec.error().code, fmt::format("line {}: {}", lineno, spec.error().message));
    spec->app_cgroup = cg;
    out.push_back(std::move(*spec));
  }
  return out;
}

Result<std::string> unit_cgroup_dir(std::string_view unit) {
  bool is_proxy = unit.substr(0, kProxyTemplate.size()) == kProxyTemplate &&
                  unit.size() > kProxyTemplate.size() + 8 &&
                  unit.substr(unit.size() - 8) == ".service";
  std::string_view instance =
      is_proxy ? unit.substr(kProxyTemplate.size(), unit.size() - kProxyTemplate.size() - 8) : "";
  bool clean = !instance.empty() && std::all_of(instance.begin(), instance.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-' ||
           c == ':';
  });
  if (!is_proxy || !clean)
    return fail(EINVAL, fmt::format("proxy_unit '{}' is not an instance of connredir's proxy "
                                    "template (connredir-proxy@NAME.service, NAME of "
                                    "A-Za-z0-9_.:-); for another unit give its cgroup as "
                                    "proxy_cgroup",
                                    unit));
  return fmt::format("{}/{}", kProxySlice, unit);
}

std::optional<std::string> unit_of_cgroup_path(std::string_view path) {
  auto slash = path.rfind('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view unit = path.substr(slash + 1);
  std::string_view parent = path.substr(0, slash);
  if (parent.size() < kProxySlice.size() ||
      parent.substr(parent.size() - kProxySlice.size()) != kProxySlice)
    return std::nullopt;
  if (!unit_cgroup_dir(unit)) return std::nullopt;
  return std::string(unit);
}

Result<CalloutParsed> callout_spec(const CalloutLine& l, CgroupResolver resolve) {
  CalloutParsed out;
  CalloutSpec& spec = out.spec;
  spec.name = l.name;
  if (spec.name.empty()) return fail(EINVAL, "a callout needs a name");
  if (auto v = validate_callout_name(spec.name); !v) return tl::unexpected(v.error());
  if (l.proxies.empty())
    return fail(EINVAL, fmt::format("callout '{}' needs a proxy (--proxy ADDR:PORT)", spec.name));
  for (const auto& p : l.proxies) {
    auto addr = Address::parse(p);
    if (!addr) return tl::unexpected(addr.error());
    auto& slot = addr->family == AF_INET ? spec.proxy4 : spec.proxy6;
    if (slot)
      return fail(EINVAL, fmt::format("two {} proxies ({} and {}): give at most one IPv4 and one "
                                      "IPv6 proxy",
                                      addr->family == AF_INET ? "IPv4" : "IPv6", slot->to_string(),
                                      addr->to_string()));
    if (addr->port == 0) return fail(EINVAL, fmt::format("proxy {} needs a port", p));
    slot = *addr;
  }
  if (!l.proxy_uid.empty()) {
    auto u = parse_uint(l.proxy_uid, "proxy-uid", 0, 0xfffffffe);
    if (!u) return tl::unexpected(u.error());
    spec.proxy_uid = static_cast<uint32_t>(*u);
  }
  if (!l.proxy_cgroup.empty() && !l.proxy_unit.empty())
    return fail(EINVAL, fmt::format("callout '{}': give proxy-cgroup or proxy-unit, not both (a "
                                    "unit's cgroup is its proxy cgroup)",
                                    spec.name));
  if (!l.proxy_cgroup.empty() || !l.proxy_unit.empty()) {
    if (!resolve) return fail(EINVAL, "proxy-cgroup cannot be resolved here");
    std::string dir = l.proxy_cgroup;
    if (!l.proxy_unit.empty()) {
      auto d = unit_cgroup_dir(l.proxy_unit);
      if (!d) return tl::unexpected(d.error());
      dir = *d;
      out.proxy_unit = l.proxy_unit;
    }
    auto cg = resolve(dir);
    if (cg) {
      spec.proxy_cgroup = *cg;
    } else if (!l.proxy_unit.empty() && cg.error().code == ENOENT) {
      out.unit_waiting = true;  // the unit is not running: no principal until it starts
    } else {
      return tl::unexpected(cg.error());
    }
  }
  if (!l.on_proxy_down.empty()) {
    auto p = parse_proxy_down(l.on_proxy_down);
    if (!p) return tl::unexpected(p.error());
    spec.on_proxy_down = *p;
  }
  if (!l.on_failure.empty()) {
    auto p = parse_on_failure(l.on_failure);
    if (!p) return tl::unexpected(p.error());
    spec.on_failure = *p;
  }
  if (l.shared_principal == "true")
    spec.shared_principal = true;
  else if (!l.shared_principal.empty() && l.shared_principal != "false")
    return fail(EINVAL,
                fmt::format("shared-principal '{}': expected true or false", l.shared_principal));
  if (!l.implicit_records.empty()) {
    auto on = parse_implicit_records(l.implicit_records);
    if (!on) return tl::unexpected(on.error());
    spec.implicit_records = *on;
  }
  return out;
}

Result<PrincipalSpec> principal_spec(const PrincipalLine& l, CgroupResolver resolve) {
  int given = !l.uid.empty() + !l.cgroup.empty() + !l.cgroup_id.empty();
  if (given != 1)
    return fail(EINVAL, "a principal is exactly one of uid, cgroup (a directory) or cgroup-id");
  PrincipalSpec p;
  if (!l.uid.empty()) {
    auto u = parse_uint(l.uid, "uid", 0, 0xfffffffe);
    if (!u) return tl::unexpected(u.error());
    p.id = *u;
    p.what = fmt::format("uid {}", p.id);
    return p;
  }
  p.kind = CONNREDIR_PRINCIPAL_CGROUP;
  if (!l.cgroup_id.empty()) {
    auto u = parse_uint(l.cgroup_id, "cgroup-id", 1, UINT64_MAX);
    if (!u) return tl::unexpected(u.error());
    p.id = *u;
    p.what = fmt::format("cgroup id {}", p.id);
    return p;
  }
  if (!resolve) return fail(EINVAL, "a principal cgroup cannot be resolved here");
  auto cg = resolve(l.cgroup);
  if (!cg) return tl::unexpected(cg.error());
  if (cg->level == 0)
    return fail(EINVAL, "refusing to authorize the cgroup v2 root (that is everyone)");
  p.id = cg->id;
  p.what = fmt::format("cgroup {} (id {})", cg->path, p.id);
  return p;
}

}  // namespace connredir::control
