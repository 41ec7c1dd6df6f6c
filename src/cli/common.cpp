#include "common.hpp"

#include <fstream>
#include <iostream>
#include <iterator>

#include <fmt/format.h>

namespace connredir::cli {

int report(const Error& e) {
  bool named = e.message.rfind("connredir ", 0) == 0;
  fmt::print(stderr, "{}{}\n", named ? "" : "connredir: ", e.message);
  return kExitRuntime;
}

int usage(const std::string& msg) {
  fmt::print(stderr, "connredir: error: {}\n", msg);
  return kExitUsage;
}

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

json counters_json(const ctl::CalloutCounters& c) {
  json j = json::object();
  for (size_t i = 0; i < c.size(); ++i) j[ctl::callout_stat_name(i)] = c[i];
  return j;
}

std::string counters_text(const ctl::CalloutCounters& c) {
  std::string out;
  for (size_t i = 0; i < c.size(); ++i)
    out += fmt::format("{}{}={}", i ? " " : "", ctl::callout_stat_name(i), c[i]);
  return out;
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

Result<std::string> read_text(const std::string& file, std::string_view what) {
  std::string text;
  if (file == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    return text;
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    int e = errno;
    return fail(e, fmt::format("cannot read {} {}: {}", what, file, errno_text(e)));
  }
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) return fail(EIO, fmt::format("cannot read {} {}: read error", what, file));
  return text;
}

}  // namespace connredir::cli

namespace connredir::cli {

Result<Sources> Sources::read(const std::string& pin_dir) {
  auto st = ctl::read_applied_state(pin_dir);
  if (!st) return tl::unexpected(st.error());
  Sources s;
  s.st_ = std::move(*st);
  return s;
}

std::string Sources::callout(const std::string& name) const {
  return st_ ? find(st_->callouts, name) : "-";
}
std::string Sources::filter(uint32_t id) const { return st_ ? find(st_->filters, id) : "-"; }
std::string Sources::principal(uint32_t kind, uint64_t id) const {
  return st_ ? find(st_->principals, std::pair{kind, id}) : "-";
}

}  // namespace connredir::cli
