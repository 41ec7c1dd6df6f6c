// `connredir up` / `down`: load the BPF object with pinned maps, attach every
// program to a cgroup with pinned links (the proxy-facing socket-option
// programs optionally only to the proxies' cgroups), and undo it.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "connredir/control.hpp"
#include "skel_wrap.hpp"

namespace connredir::control {
namespace {

// libbpf's messages: kept and shown only when something fails. Each message
// is formatted whole (a verifier log runs to many KiB, and its reason is in
// its last lines), and the kept log is its newest 256 KiB.
std::string g_libbpf_log;
constexpr size_t kLibbpfLogKeep = 256 * 1024;
int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  va_list again;
  va_copy(again, args);
  int n = vsnprintf(nullptr, 0, fmt, args);
  if (n > 0) {
    std::string msg(static_cast<size_t>(n) + 1, '\0');
    vsnprintf(msg.data(), msg.size(), fmt, again);
    msg.pop_back();
    g_libbpf_log += msg;
    if (g_libbpf_log.size() > 2 * kLibbpfLogKeep)
      g_libbpf_log.erase(0, g_libbpf_log.size() - kLibbpfLogKeep);
  }
  va_end(again);
  return n;
}

// The end of libbpf's log: for a program the verifier rejected, the lines
// that say why (the log's last lines) and the instructions leading to it.
std::string libbpf_tail() {
  if (g_libbpf_log.empty()) return "";
  constexpr size_t kShow = 6000;
  std::string t =
      g_libbpf_log.size() > kShow ? g_libbpf_log.substr(g_libbpf_log.size() - kShow) : g_libbpf_log;
  if (t.size() < g_libbpf_log.size()) {
    auto nl = t.find('\n');
    if (nl != std::string::npos) t.erase(0, nl + 1);
    t = "...\n" + t;
  }
  while (!t.empty() && t.back() == '\n') t.pop_back();
  return "\nlibbpf said (end of its log):\n" + t;
}

struct SkelDeleter {
  void operator()(void* s) const { connredir_skel_destroy(s); }
};
using Skel = std::unique_ptr<void, SkelDeleter>;

// Make sure the pin dir lives on a bpf filesystem, mounting /sys/fs/bpf if
// that is where it would go and nothing is mounted there yet.
Result<void> ensure_bpffs(const std::string& pin_dir) {
  std::filesystem::path p(pin_dir);
  std::error_code ec;
  while (!p.empty() && !std::filesystem::exists(p, ec)) p = p.parent_path();
  struct statfs sfs {};
  if (statfs(p.c_str(), &sfs) == 0 && sfs.f_type == BPF_FS_MAGIC) return {};
  if (p == "/sys/fs/bpf" || p == "/sys/fs") {
    if (mkdir("/sys/fs/bpf", 0700) != 0 && errno != EEXIST) {
      int e = errno;
      return fail(e, fmt::format("cannot create /sys/fs/bpf: {}", errno_text(e)));
    }
    if (mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700") != 0) {
      int e = errno;
      return fail(e, fmt::format("cannot mount the bpf filesystem at /sys/fs/bpf: {} (try `mount "
                                 "-t bpf bpf /sys/fs/bpf`)",
                                 errno_text(e)));
    }
    return {};
  }
  return fail(EINVAL, fmt::format("pin dir {} is not on a bpf filesystem ({} is not bpffs): use a "
                                  "directory under /sys/fs/bpf",
                                  pin_dir, p.string()));
}

Result<void> make_dir(const std::string& path) {
  if (mkdir(path.c_str(), 0700) == 0 || errno == EEXIST) return {};
  int e = errno;
  return fail(e, fmt::format("cannot create {}: {}", path, errno_text(e)));
}

std::vector<std::string> program_names(struct bpf_object* obj) {
  std::vector<std::string> names;
  struct bpf_program* prog;
  bpf_object__for_each_program(prog, obj) {
    if (bpf_program__autoload(prog)) names.push_back(bpf_program__name(prog));
  }
  return names;
}

}  // namespace

bool proxy_scoped_program(std::string_view name) {
  return name == "connredir_getsockopt" || name == "connredir_setsockopt";
}

namespace {

// Is `inner` the cgroup `outer` or below it? (Paths as resolve_cgroup gives them.)
bool cgroup_within(const std::string& inner, const std::string& outer) {
  std::error_code ec;
  auto i = std::filesystem::weakly_canonical(inner, ec);
  auto o = std::filesystem::weakly_canonical(outer, ec);
  auto [oi, ii] = std::mismatch(o.begin(), o.end(), i.begin(), i.end());
  return oi == o.end();
}

// One link `connredir up` wants: pin name, program, cgroup.
struct WantedLink {
  std::string pin;
  std::string prog;
  CgroupRef cgroup;
};

}  // namespace

Result<UpResult> up(const UpOptions& opts) {
  if (auto r = require_root(); !r) return tl::unexpected(r.error());
  auto features = probe_kernel_features(opts.pin_dir);
  if (auto r = require_kernel_features(features); !r) return tl::unexpected(r.error());
  auto cg = resolve_cgroup(opts.cgroup);
  if (!cg) return tl::unexpected(cg.error());
  std::vector<CgroupRef> pcgs;
  for (const auto& dir : opts.proxies_in) {
    auto p = resolve_cgroup(dir);
    if (!p) return tl::unexpected(p.error());
    // Proxies outside the policed cgroup would connect onward unclassified:
    // the next vendor of a chain would never see the flow.
    if (!cgroup_within(p->path, cg->path))
      return fail(EINVAL, fmt::format("--proxies-in {} is not inside --cgroup {}: proxies must run "
                                      "where connredir classifies connections, so that their "
                                      "onward connections reach the next vendor of a chain",
                                      p->path, cg->path));
    bool dup = false;
    for (const auto& q : pcgs) dup = dup || q.id == p->id;
    if (!dup) pcgs.push_back(*p);
  }
  if (auto r = ensure_bpffs(opts.pin_dir); !r) return tl::unexpected(r.error());

  libbpf_set_print(libbpf_print);
  g_libbpf_log.clear();
  struct bpf_object* obj = nullptr;
  Skel skel(connredir_skel_open(&obj));
  if (!skel) {
    int e = errno;
    return fail(e, fmt::format("cannot open the BPF object: {}{}", errno_text(e), libbpf_tail()));
  }

  // The links this layout needs. With --proxies-in, a proxy-scoped program
  // has one link per proxy cgroup, pinned as PROG@CGROUP-ID.
  std::vector<WantedLink> wanted;
  for (const auto& p : program_names(obj)) {
    if (proxy_scoped_program(p) && !pcgs.empty()) {
      for (const auto& q : pcgs) wanted.push_back({fmt::format("{}@{}", p, q.id), p, q});
    } else {
      wanted.push_back({p, p, *cg});
    }
  }

  UpResult res;
  res.features = features;
  res.cgroup = *cg;
  res.proxies_in = pcgs;
  auto state = read_up_state(opts.pin_dir);
  if (!state) return tl::unexpected(state.error());
  std::set<std::string> pinned;
  for (const auto& l : state->links) {
    const WantedLink* w = nullptr;
    for (const auto& x : wanted)
      if (x.pin == l.name) w = &x;
    if (!w || l.cgroup_id != w->cgroup.id) {
      std::string where =
          l.cgroup_id == 0
              ? std::string("a cgroup that no longer exists")
              : cgroup_path_by_id(l.cgroup_id).value_or(fmt::format("cgroup id {}", l.cgroup_id));
      return fail(EEXIST, fmt::format("connredir is already up at {} with another layout (link {} "
                                      "on {}): run `connredir --pin-dir {} down` first, or use "
                                      "another --pin-dir",
                                      opts.pin_dir, l.name, where, opts.pin_dir));
    }
    pinned.insert(l.name);
  }
  bool all = !wanted.empty();
  for (const auto& w : wanted) all = all && pinned.count(w.pin);
  if (all && state->maps_pinned) {
    res.already_up = true;
    return res;
  }

  // Nothing is attached (or loaded) if one attachment would replace or
  // silence another vendor's program on the same hook.
  for (const auto& w : wanted) {
    if (pinned.count(w.pin)) continue;
    struct bpf_program* prog = bpf_object__find_program_by_name(obj, w.prog.c_str());
    if (!prog) continue;
    if (auto r = check_attach_is_harmless(w.cgroup.path, bpf_program__expected_attach_type(prog));
        !r)
      return tl::unexpected(r.error());
  }

  for (auto d : {opts.pin_dir, opts.pin_dir + "/maps", opts.pin_dir + "/links"})
    if (auto r = make_dir(d); !r) return tl::unexpected(r.error());

  struct bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    if (bpf_map__is_internal(map)) continue;
    std::string path = fmt::format("{}/maps/{}", opts.pin_dir, bpf_map__name(map));
    if (int rc = bpf_map__set_pin_path(map, path.c_str()); rc != 0)
      return fail(-rc, fmt::format("setting the pin path of map {}: {}", bpf_map__name(map),
                                   errno_text(-rc)));
  }
  // Word copies through socket option buffers only where the verifier
  // allows them; byte copies otherwise (slower, same behaviour).
  bool words = false;
  for (const auto& f : features)
    if (f.name == "sockopt_word_access") words = f.present.value_or(false);
  connredir_skel_set_optval_words(skel.get(), words);
  if (int rc = connredir_skel_load(skel.get()); rc != 0) {
    int e = rc < 0 ? -rc : errno;
    return fail(e,
                fmt::format("loading the BPF programs failed: {}. If maps pinned at {}/maps come "
                            "from another connredir version, run `connredir --pin-dir {} down` "
                            "first{}",
                            errno_text(e), opts.pin_dir, opts.pin_dir, libbpf_tail()));
  }

  auto store = KernelMapStore::open(opts.pin_dir);
  if (!store) return tl::unexpected(store.error());
  std::array<uint8_t, 16> key{};
  if (getrandom(key.data(), key.size(), 0) != static_cast<ssize_t>(key.size())) {
    int e = errno;
    return fail(e, fmt::format("getrandom for the records MAC key: {}", errno_text(e)));
  }
  Control ctl(**store);
  auto init = ctl.init_secret(key);
  if (!init) return tl::unexpected(init.error());
  res.secret_initialised = *init;
  // Principals from callouts that survived in pinned maps stay valid.
  if (auto r = ctl.sync_principals(); !r) return tl::unexpected(r.error());

  std::vector<std::string> created;
  Result<void> err;
  for (const auto& w : wanted) {
    if (pinned.count(w.pin)) continue;
    struct bpf_program* prog = bpf_object__find_program_by_name(obj, w.prog.c_str());
    if (!prog) {
      err = fail(ENOENT, fmt::format("program {} missing from the BPF object", w.prog));
      break;
    }
    int cgfd = ::open(w.cgroup.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgfd < 0) {
      int e = errno;
      err = fail(e, fmt::format("cannot open cgroup {}: {}", w.cgroup.path, errno_text(e)));
      break;
    }
    struct bpf_link* link = bpf_program__attach_cgroup(prog, cgfd);
    int e = errno;
    ::close(cgfd);
    if (!link) {
      err = fail(e, fmt::format("attaching {} to cgroup {}: {}{}", w.prog, w.cgroup.path,
                                errno_text(e), libbpf_tail()));
      break;
    }
    std::string path = fmt::format("{}/links/{}", opts.pin_dir, w.pin);
    int rc = bpf_link__pin(link, path.c_str());
    bpf_link__destroy(link);  // the pin keeps it attached
    if (rc != 0) {
      err = fail(-rc, fmt::format("pinning link {}: {}", path, errno_text(-rc)));
      break;
    }
    created.push_back(w.pin);
  }
  if (!err) {
    for (const auto& n : created) unlink(fmt::format("{}/links/{}", opts.pin_dir, n).c_str());
    return tl::unexpected(err.error());
  }
  res.attached = created;
  // From here on every bind records its owner; listeners bound before are
  // given theirs now (src/control/adopt.cpp). Not a reason to fail `up`: a
  // listener left without an owner only meets its callout's policy.
  if (auto a = adopt_listeners(opts.pin_dir, *cg); a)
    res.adopted = std::move(*a);
  else
    res.adopted.problems.push_back(a.error().message +
                                   " (listeners bound before connredir was up are not adopted)");
  // Unconnected IPv6 UDP sends go to pool addresses (bpf/lib/pool.h) that
  // need a local route; not a reason to fail `up` (IPv6 may be off here).
  if (auto r = ensure_udp_pool_route(); r)
    res.pool_route_added = *r;
  else
    res.pool_route_problem =
        r.error().message + "; unconnected IPv6 UDP sends cannot reach proxies until it exists";
  // Now that the maps are pinned, the optional sock_diag probe can run.
  for (auto& f : res.features)
    if (f.name == "sock_diag_bpf_storage") f = sock_diag_feature(opts.pin_dir);
  return res;
}

Result<bool> down(const std::string& pin_dir) {
  if (auto r = require_root(); !r) return tl::unexpected(r.error());
  std::error_code ec;
  if (!std::filesystem::exists(pin_dir, ec)) return false;
  struct statfs sfs {};
  if (statfs(pin_dir.c_str(), &sfs) != 0 || sfs.f_type != BPF_FS_MAGIC)
    return fail(EINVAL,
                fmt::format("{} is not on a bpf filesystem; refusing to remove it", pin_dir));
  // Links first: unpinning detaches the programs; then the maps.
  for (const char* sub : {"links", "maps"}) {
    std::string dir = fmt::format("{}/{}", pin_dir, sub);
    if (!std::filesystem::exists(dir, ec)) continue;
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec))
      files.push_back(e.path().string());
    if (ec) return fail(ec.value(), fmt::format("listing {}: {}", dir, ec.message()));
    for (const auto& f : files)
      if (unlink(f.c_str()) != 0 && errno != ENOENT) {
        int e = errno;
        return fail(e, fmt::format("cannot unpin {}: {}", f, errno_text(e)));
      }
    if (rmdir(dir.c_str()) != 0) {
      int e = errno;
      return fail(
          e, fmt::format("cannot remove {}: {} (remove its entries by hand)", dir, errno_text(e)));
    }
  }
  if (rmdir(pin_dir.c_str()) != 0) {
    int e = errno;
    return fail(e, fmt::format("cannot remove {}: {} (it holds entries connredir did not create; "
                               "remove them by hand)",
                               pin_dir, errno_text(e)));
  }
  // What the last `apply` wrote describes state that is now gone.
  remove_applied_state(pin_dir);
  return true;
}

}  // namespace connredir::control
