// The control plane's parsers of untrusted text (CLI arguments and
// `connredir filter load` files): CIDRs, port ranges, numbers, protocol and
// callout names, --on-proxy-down, one filter line (JSON or key=value), a
// whole filter file. Errors must be EINVAL with a message; whatever parses
// must be in range and render back to text that parses to the same value.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "connredir/control.hpp"

using namespace connredir;
using namespace connredir::control;

namespace {

template <class R>
void check_error(const R& r) {
  if (r) return;
  if (r.error().code == 0 || r.error().message.empty()) __builtin_trap();
}

// A resolver that never touches the file system: even paths are "cgroups".
Result<CgroupRef> fake_resolve(std::string_view dir) {
  if (dir.size() % 2) return fail(ENOENT, "no such cgroup");
  return CgroupRef{dir.size() + 1, 1, std::string(dir)};
}

void check_prefix(const Prefix& p) {
  if (p.family != CONNREDIR_AF_INET && p.family != CONNREDIR_AF_INET6) __builtin_trap();
  if (p.len > (p.family == CONNREDIR_AF_INET ? 32 : 128)) __builtin_trap();
  auto again = parse_cidr(p.to_string());
  if (!again || *again != p) __builtin_trap();
  if (!p.contains(p)) __builtin_trap();
  for (const auto& k : index_keys(p)) {
    auto back = from_lpm_key(to_lpm_key(k));
    if (!back || *back != k) __builtin_trap();
  }
}

void check_spec(const FilterSpec& s) {
  if (!validate_callout_name(s.callout)) __builtin_trap();
  if (s.ports.lo > s.ports.hi) __builtin_trap();
  if (s.context.size() > CONNREDIR_USER_CONTEXT_MAX) __builtin_trap();
  if (s.dst.family != 0) check_prefix(s.dst);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto c = parse_cidr(text);
  check_error(c);
  if (c) check_prefix(*c);

  auto pr = parse_port_range(text);
  check_error(pr);
  if (pr) {
    if (pr->lo < 1 || pr->lo > pr->hi) __builtin_trap();
    auto again = parse_port_range(pr->to_string());
    if (!again || *again != *pr) __builtin_trap();
  }

  auto u = parse_uint(text, "n", 5, 70000);
  check_error(u);
  if (u) {
    // Decimal digits only (leading zeros allowed), and the value they spell.
    if (*u < 5 || *u > 70000 || text.empty()) __builtin_trap();
    uint64_t v = 0;
    for (char ch : text) {
      if (ch < '0' || ch > '9') __builtin_trap();
      v = v * 10 + static_cast<uint64_t>(ch - '0');
      if (v > 70000) __builtin_trap();
    }
    if (v != *u) __builtin_trap();
  }

  check_error(parse_proto(text));
  check_error(parse_proxy_down(text));
  auto name = validate_callout_name(text);
  check_error(name);
  if (name && (text.empty() || text.size() >= CONNREDIR_NAME_MAX)) __builtin_trap();

  auto line = parse_filter_line(text);
  check_error(line);
  if (line && *line) {
    auto spec = filter_spec(**line, fake_resolve);
    check_error(spec);
    if (spec) check_spec(*spec);
    auto no_resolver = filter_spec(**line, nullptr);
    check_error(no_resolver);
  }

  auto file = parse_filter_file(text, fake_resolve);
  check_error(file);
  if (file) {
    for (const auto& s : *file) check_spec(s);
  } else if (file.error().message.rfind("line ", 0) != 0) {
    __builtin_trap();  // file errors name the line
  }
  return 0;
}
