#include "connredir/records.hpp"

#include <cctype>
#include <cstring>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace connredir {

namespace {

// Kernel comm is NUL-padded but not guaranteed NUL-terminated within 16
// bytes; stop at the first NUL or the end of the field, never beyond it.
std::string comm_string(const char (&comm)[16]) {
  size_t n = 0;
  while (n < sizeof comm && comm[n] != '\0') ++n;
  return std::string(comm, n);
}

// comm is chosen by the application (prctl PR_SET_NAME), so escape anything
// that could garble a terminal or a log line.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\')
      out.push_back(static_cast<char>(c));
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

bool family_ok(__u16 f, bool unset_ok) {
  return f == CONNREDIR_AF_INET || f == CONNREDIR_AF_INET6 || (unset_ok && f == 0);
}

std::string uid_string(uint32_t uid) {
  return uid == CONNREDIR_UID_NONE ? std::string("none") : std::to_string(uid);
}

// dump() throws on invalid UTF-8 (comm is arbitrary bytes); replace instead
// so JSON rendering cannot fail.
std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json addr_json(const Address& a) {
  if (a.family == 0) return nullptr;
  return a.to_string();
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

const char* to_string(RedirectState s) {
  switch (s) {
    case RedirectState::NotRedirected:
      return "not-redirected";
    case RedirectState::RedirectedBySelf:
      return "redirected-by-self";
    case RedirectState::RedirectedByOther:
      return "redirected-by-other";
    case RedirectState::PreviouslyRedirectedBySelf:
      return "previously-redirected-by-self";
  }
  return "unknown";
}

Result<RecordsInfo> decode_records(std::span<const uint8_t> blob) {
  constexpr size_t want = sizeof(connredir_records);
  if (blob.empty()) return fail(EINVAL, "records blob is empty");
  if (blob.size() != want)
    return fail(EINVAL, fmt::format("records blob is {} bytes, expected exactly {} (truncated, "
                                    "padded or from a different connredir ABI version)",
                                    blob.size(), want));
  // Copy into an aligned struct: the span may be unaligned (e.g. fuzzer input).
  connredir_records r;
  std::memcpy(&r, blob.data(), want);

  if (r.magic != CONNREDIR_RECORDS_MAGIC)
    return fail(EINVAL, fmt::format("records blob has bad magic 0x{:08x} (expected 0x{:08x}): "
                                    "not a connredir records blob",
                                    r.magic, CONNREDIR_RECORDS_MAGIC));
  if (r.version != CONNREDIR_ABI_VERSION)
    return fail(EINVAL, fmt::format("records blob has ABI version {}, this library speaks {}",
                                    r.version, CONNREDIR_ABI_VERSION));
  if (r.size != want)
    return fail(EINVAL, fmt::format("records blob size field is {}, expected {}", r.size, want));
  if (r.hop_count > CONNREDIR_MAX_HOPS)
    return fail(EINVAL, fmt::format("records blob has hop_count {}, maximum is {}", r.hop_count,
                                    CONNREDIR_MAX_HOPS));
  if (!family_ok(r.origin.src.family, true))
    return fail(EINVAL, fmt::format("records blob origin source has bad address family {}",
                                    r.origin.src.family));

  RecordsInfo info;
  info.flow_id = r.flow_id;
  info.mac = r.mac;
  info.origin.pid = r.origin.pid;
  info.origin.uid = r.origin.uid;
  info.origin.cgroup_id = r.origin.cgroup_id;
  info.origin.comm = comm_string(r.origin.comm);
  info.origin.src = Address::from_abi(r.origin.src);
  info.hops.reserve(r.hop_count);
  for (unsigned i = 0; i < r.hop_count; ++i) {
    const connredir_hop& h = r.hops[i];
    if (!family_ok(h.dst.family, false))
      return fail(EINVAL, fmt::format("records blob hop {} has bad destination address family {}",
                                      i + 1, h.dst.family));
    Hop hop;
    hop.callout_id = h.callout_id;
    hop.filter_id = h.filter_id;
    hop.time_ns = h.time_ns;
    hop.dst = Address::from_abi(h.dst);
    hop.proxy_uid = h.proxy_uid;
    hop.proxy_cgroup = h.proxy_cgroup;
    info.hops.push_back(std::move(hop));
  }
  return info;
}

// Whitespace-tolerant hex (as `connredir decode` users paste it).
static Result<std::vector<uint8_t>> decode_hex(std::string_view hex) {
  std::vector<uint8_t> out;
  out.reserve(hex.size() / 2);
  int hi = -1;
  size_t i = 0;
  // Optional 0x prefix, as printed by many tools.
  while (i < hex.size() && std::isspace(static_cast<unsigned char>(hex[i]))) ++i;
  if (hex.size() - i >= 2 && hex[i] == '0' && (hex[i + 1] == 'x' || hex[i + 1] == 'X')) i += 2;
  for (; i < hex.size(); ++i) {
    const char c = hex[i];
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    const int v = hexval(c);
    if (v < 0) return fail(EINVAL, fmt::format("hex text has a non-hex character at offset {}", i));
    if (hi < 0) {
      hi = v;
    } else {
      out.push_back(static_cast<uint8_t>(hi << 4 | v));
      hi = -1;
    }
  }
  if (hi >= 0) return fail(EINVAL, "hex text has an odd number of digits");
  return out;
}

Result<RecordsInfo> decode_records_hex(std::string_view hex) {
  auto bytes = decode_hex(hex);
  if (!bytes) return tl::unexpected(bytes.error());
  return decode_records(*bytes);
}

RedirectState redirect_state(const RecordsInfo& records, uint32_t callout_id) {
  if (records.hops.empty()) return RedirectState::NotRedirected;
  if (records.hops.back().callout_id == callout_id) return RedirectState::RedirectedBySelf;
  for (size_t i = 0; i + 1 < records.hops.size(); ++i)
    if (records.hops[i].callout_id == callout_id) return RedirectState::PreviouslyRedirectedBySelf;
  return RedirectState::RedirectedByOther;
}

Result<RedirectState> redirect_state(std::span<const uint8_t> blob, uint32_t callout_id) {
  auto info = decode_records(blob);
  if (!info) return tl::unexpected(info.error());
  return redirect_state(*info, callout_id);
}

Result<Context> decode_context(std::span<const uint8_t> raw) {
  constexpr size_t want = CONNREDIR_CONTEXT_SIZE;
  static_assert(sizeof(connredir_context) == want);
  if (raw.empty()) return fail(EINVAL, "context is empty");
  if (raw.size() != want)
    return fail(EINVAL, fmt::format("context is {} bytes, expected exactly {} (truncated or from "
                                    "a different connredir ABI version)",
                                    raw.size(), want));
  connredir_context c;
  std::memcpy(&c, raw.data(), want);
  if (c.magic != CONNREDIR_CONTEXT_MAGIC)
    return fail(EINVAL, fmt::format("context has bad magic 0x{:08x} (expected 0x{:08x})", c.magic,
                                    CONNREDIR_CONTEXT_MAGIC));
  if (c.version != CONNREDIR_ABI_VERSION)
    return fail(EINVAL, fmt::format("context has ABI version {}, this library speaks {}", c.version,
                                    CONNREDIR_ABI_VERSION));
  if (c.user_len > CONNREDIR_USER_CONTEXT_MAX)
    return fail(EINVAL, fmt::format("context user_len {} exceeds the maximum {}", c.user_len,
                                    CONNREDIR_USER_CONTEXT_MAX));
  if (c.size != CONNREDIR_CONTEXT_HDR_SIZE + c.user_len)
    return fail(EINVAL, fmt::format("context size field is {}, expected {} (header {} + user_len "
                                    "{})",
                                    c.size, CONNREDIR_CONTEXT_HDR_SIZE + c.user_len,
                                    CONNREDIR_CONTEXT_HDR_SIZE, c.user_len));
  if (!family_ok(c.orig_dst.family, false))
    return fail(EINVAL, fmt::format("context original destination has bad address family {}",
                                    c.orig_dst.family));
  if (!family_ok(c.orig_src.family, true))
    return fail(EINVAL, fmt::format("context original source has bad address family {}",
                                    c.orig_src.family));

  Context out;
  out.flow_id = c.flow_id;
  out.callout_id = c.callout_id;
  out.filter_id = c.filter_id;
  out.hop = c.hop;
  out.orig_dst = Address::from_abi(c.orig_dst);
  out.orig_src = Address::from_abi(c.orig_src);
  out.pid = c.pid;
  out.uid = c.uid;
  out.cgroup_id = c.cgroup_id;
  out.comm = comm_string(c.comm);
  out.user.assign(c.user, c.user + c.user_len);
  return out;
}

std::string describe(const RecordsInfo& r) {
  std::string s = fmt::format("flow id {:#018x}\n", r.flow_id);
  s += fmt::format("origin: pid {} comm \"{}\" uid {} cgroup {} src {}\n", r.origin.pid,
                   printable(r.origin.comm), uid_string(r.origin.uid), r.origin.cgroup_id,
                   r.origin.src.to_string());
  if (r.hops.empty()) s += "no hops (not redirected)\n";
  for (size_t i = 0; i < r.hops.size(); ++i) {
    const Hop& h = r.hops[i];
    s += fmt::format("hop {}: callout {} filter {} dst {} proxy uid {} cgroup {}\n", i + 1,
                     h.callout_id, h.filter_id, h.dst.to_string(), uid_string(h.proxy_uid),
                     h.proxy_cgroup);
  }
  return s;
}

std::string to_json(const RecordsInfo& r) {
  nlohmann::json hops = nlohmann::json::array();
  for (const Hop& h : r.hops) {
    hops.push_back({
        {"callout_id", h.callout_id},
        {"filter_id", h.filter_id},
        {"time_ns", h.time_ns},
        {"dst", addr_json(h.dst)},
        {"proxy_uid",
         h.proxy_uid == CONNREDIR_UID_NONE ? nlohmann::json(nullptr) : nlohmann::json(h.proxy_uid)},
        {"proxy_cgroup", h.proxy_cgroup},
    });
  }
  nlohmann::json j = {
      {"flow_id", r.flow_id},
      {"origin",
       {
           {"pid", r.origin.pid},
           {"uid", r.origin.uid},
           {"cgroup_id", r.origin.cgroup_id},
           {"comm", r.origin.comm},
           {"src", addr_json(r.origin.src)},
       }},
      {"hop_count", r.hops.size()},
      {"hops", std::move(hops)},
      // As a string: a 64-bit MAC does not survive JSON readers using doubles.
      {"mac", fmt::format("{:016x}", r.mac)},
  };
  return dump(j);
}

std::string to_json(const Context& c) {
  nlohmann::json j = {
      {"flow_id", c.flow_id},
      {"callout_id", c.callout_id},
      {"filter_id", c.filter_id},
      {"hop", c.hop},
      {"orig_dst", addr_json(c.orig_dst)},
      {"orig_src", addr_json(c.orig_src)},
      {"pid", c.pid},
      {"uid", c.uid},
      {"cgroup_id", c.cgroup_id},
      {"comm", c.comm},
      {"user_hex", to_hex(c.user)},
  };
  return dump(j);
}

std::string to_hex(std::span<const uint8_t> bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 0xf]);
  }
  return s;
}

}  // namespace connredir
