// What every `connredir` command shares: the global options, how errors and
// bad arguments are reported (exit 1 and 2), opening the pinned maps under
// the CLI lock, and the text/JSON forms of cgroups and principals.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "connredir/control.hpp"

namespace connredir::cli {

namespace ctl = connredir::control;
using json = nlohmann::json;

inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;

// The options of `connredir` itself; read by the commands after parsing.
struct Globals {
  std::string pin_dir = ctl::kDefaultPinDir;
  bool as_json = false;
};

// A runtime error: printed as one line prefixed "connredir: ", exit 1.
int report(const Error& e);
// A bad argument: "connredir: error: ...", exit 2.
int usage(const std::string& msg);

// Root check, lock, open the pinned maps.
struct Session {
  std::optional<ctl::CliLock> lock;
  std::unique_ptr<ctl::KernelMapStore> store;
};
Result<Session> open_session(const std::string& pin_dir, bool exclusive);

std::string cgroup_text(uint64_t id);           // "PATH (id N)", "-" for 0
json cgroup_json(uint64_t id, uint32_t level);  // null for 0
const char* family_text(uint8_t family);        // ipv4, ipv6, any
const char* principal_kind(uint32_t kind);      // uid, cgroup
std::string principal_flags(uint32_t flags);    // authorized,callout-proxy
// A callout's counters: {"redirected": N, ...} / "redirected=N self_skip=N ...".
json counters_json(const ctl::CalloutCounters& c);
std::string counters_text(const ctl::CalloutCounters& c);

// Reads FILE ('-' = standard input) whole; the error says what to do.
Result<std::string> read_text(const std::string& file, std::string_view what);

}  // namespace connredir::cli

namespace connredir::cli {
// A field table key as a CLI option name: app_uid -> app-uid.
inline std::string option_name(std::string_view key) {
  std::string s(key);
  for (char& c : s)
    if (c == '_') c = '-';
  return s;
}
}  // namespace connredir::cli

namespace connredir::cli {
// Where each entry came from, as the last `apply` recorded it: "FILE:LINE",
// "by hand" for an entry that apply did not make on a host it manages, "-"
// on a host with no apply since `up`. JSON: the same, null for "-".
class Sources {
 public:
  static Result<Sources> read(const std::string& pin_dir);
  std::string callout(const std::string& name) const;
  std::string filter(uint32_t id) const;
  std::string principal(uint32_t kind, uint64_t id) const;
  static json to_json(const std::string& text) { return text == "-" ? json(nullptr) : json(text); }

 private:
  template <class Map, class Key>
  std::string find(const Map& m, const Key& k) const {
    if (!st_) return "-";
    auto it = m.find(k);
    return it == m.end() ? "by hand" : it->second;
  }
  std::optional<ctl::AppliedState> st_;
};
}  // namespace connredir::cli
