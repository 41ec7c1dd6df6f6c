// System helpers: cgroup v2 discovery, kernel checks, pinned-link state, the
// pin-dir lock.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "connredir/control.hpp"
#include "system_util.hpp"

namespace connredir::control {
namespace {

// /proc/mounts escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    auto octal = [&](size_t j) { return s[j] >= '0' && s[j] <= '7'; };
    if (s[i] == '\\' && i + 3 < s.size() && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
      int v = (s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0');
      out.push_back(static_cast<char>(v));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string_view> split_path(std::string_view p) {
  std::vector<std::string_view> parts;
  size_t i = 0;
  while (i < p.size()) {
    while (i < p.size() && p[i] == '/') ++i;
    size_t j = i;
    while (j < p.size() && p[j] != '/') ++j;
    if (j > i) parts.push_back(p.substr(i, j - i));
    i = j;
  }
  return parts;
}

}  // namespace

Result<std::string> read_file(const char* path) {
  std::ifstream in(path);
  if (!in) {
    int e = errno;
    return fail(e, fmt::format("cannot read {}: {}", path, errno_text(e)));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<std::string> find_cgroup2_mount(std::string_view mounts) {
  std::istringstream in{std::string(mounts)};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string dev, dir, type;
    if (!(ls >> dev >> dir >> type)) continue;
    if (type == "cgroup2") return unescape_mount(dir);
  }
  return fail(ENOENT,
              "no cgroup v2 filesystem is mounted (mount one: `mount -t cgroup2 none "
              "/sys/fs/cgroup/unified`, or boot with systemd.unified_cgroup_hierarchy=1)");
}

Result<std::string> find_cgroup2_mount() {
  auto text = read_file("/proc/mounts");
  if (!text) return tl::unexpected(text.error());
  return find_cgroup2_mount(*text);
}

Result<uint32_t> cgroup_level(std::string_view mount, std::string_view path) {
  auto m = split_path(mount);
  auto p = split_path(path);
  if (p.size() < m.size() || !std::equal(m.begin(), m.end(), p.begin()))
    return fail(EINVAL, fmt::format("{} is not inside the cgroup v2 mount {}", path, mount));
  for (size_t i = m.size(); i < p.size(); ++i)
    if (p[i] == "." || p[i] == "..")
      return fail(EINVAL, fmt::format("cgroup path {} must be normalized", path));
  return static_cast<uint32_t>(p.size() - m.size());
}

Result<CgroupRef> resolve_cgroup(std::string_view dir) {
  auto mount = find_cgroup2_mount();
  if (!mount) return tl::unexpected(mount.error());
  std::string given(dir);
  if (given.empty()) given = *mount;
  std::string candidate = given;
  struct stat st {};
  if (stat(candidate.c_str(), &st) != 0 && given.front() != '/') candidate = *mount + "/" + given;
  char real[PATH_MAX];
  if (!realpath(candidate.c_str(), real)) {
    int e = errno;
    return fail(e, fmt::format("cgroup directory {}: {} (give a directory under the cgroup v2 "
                               "mount {}, e.g. {}/myproxy)",
                               given, errno_text(e), *mount, *mount));
  }
  char mreal[PATH_MAX];
  std::string mount_real = realpath(mount->c_str(), mreal) ? mreal : *mount;
  struct statfs sfs {};
  if (statfs(real, &sfs) != 0 || sfs.f_type != CGROUP2_SUPER_MAGIC)
    return fail(EINVAL, fmt::format("{} is not a cgroup v2 directory (the cgroup v2 mount is {})",
                                    real, *mount));
  if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode))
    return fail(ENOTDIR, fmt::format("{} is not a directory", real));
  auto level = cgroup_level(mount_real, real);
  if (!level) return tl::unexpected(level.error());
  return CgroupRef{static_cast<uint64_t>(st.st_ino), *level, real};
}

namespace {
thread_local uint64_t g_walk_id = 0;
thread_local std::string* g_walk_found = nullptr;
int walk_cb(const char* path, const struct stat* st, int type, struct FTW*) {
  if (type == FTW_D && static_cast<uint64_t>(st->st_ino) == g_walk_id) {
    *g_walk_found = path;
    return 1;
  }
  return 0;
}
}  // namespace

std::optional<std::string> cgroup_path_by_id(uint64_t id) {
  auto mount = find_cgroup2_mount();
  if (!mount || id == 0) return std::nullopt;
  std::string found;
  g_walk_id = id;
  g_walk_found = &found;
  nftw(mount->c_str(), walk_cb, 32, FTW_PHYS | FTW_MOUNT);
  g_walk_found = nullptr;
  if (found.empty()) return std::nullopt;
  return found;
}

Result<std::pair<int, int>> parse_kernel_release(std::string_view r) {
  int major = 0, minor = 0;
  size_t i = 0;
  auto num = [&](int& out) {
    size_t start = i;
    while (i < r.size() && std::isdigit(static_cast<unsigned char>(r[i])))
      out = out * 10 + (r[i++] - '0');
    return i > start && i - start < 6;
  };
  if (!num(major) || i >= r.size() || r[i] != '.' || (++i, !num(minor)))
    return fail(EINVAL, fmt::format("cannot parse kernel release '{}'", r));
  return std::pair{major, minor};
}

Result<void> require_root() {
  if (geteuid() == 0) return {};
  return fail(EPERM, "connredir must run as root (it loads BPF programs)");
}

Result<UpState> read_up_state(const std::string& pin_dir) {
  UpState s;
  std::error_code ec;
  s.maps_pinned = std::filesystem::exists(pin_dir + "/maps/callouts", ec);
  std::string links = pin_dir + "/links";
  if (!std::filesystem::is_directory(links, ec)) return s;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(links, ec))
    names.push_back(e.path().filename().string());
  if (ec) return fail(ec.value(), fmt::format("listing {}: {}", links, ec.message()));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    std::string path = links + "/" + n;
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) {
      int e = errno;
      if (e == EPERM || e == EACCES)
        return fail(e, fmt::format("cannot open {}: {}: connredir must run as root (it loads BPF "
                                   "programs)",
                                   path, errno_text(e)));
      return fail(e, fmt::format("cannot open pinned link {}: {}", path, errno_text(e)));
    }
    bpf_link_info info{};
    uint32_t len = sizeof info;
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    int e = errno;
    close(fd);
    if (rc != 0) return fail(e, fmt::format("inspecting pinned link {}: {}", path, errno_text(e)));
    LinkInfo li;
    li.name = n;
    li.link_id = info.id;
    li.prog_id = info.prog_id;
    if (info.type == BPF_LINK_TYPE_CGROUP) {
      li.cgroup_id = info.cgroup.cgroup_id;
      li.attach_type = info.cgroup.attach_type;
    }
    s.links.push_back(std::move(li));
  }
  return s;
}

std::string lock_path() { return "/run/connredir.lock"; }

Result<CliLock> CliLock::acquire(bool exclusive) {
  std::string path = lock_path();
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    std::string hint =
        (e == EACCES || e == EPERM) ? ": connredir must run as root (it loads BPF programs)" : "";
    return fail(e, fmt::format("cannot open lock file {}: {}{}", path, errno_text(e), hint));
  }
  while (flock(fd, exclusive ? LOCK_EX : LOCK_SH) != 0) {
    if (errno == EINTR) continue;
    int e = errno;
    ::close(fd);
    return fail(e, fmt::format("cannot lock {}: {}", path, errno_text(e)));
  }
  return CliLock(fd);
}

CliLock::~CliLock() {
  if (fd_ >= 0) ::close(fd_);
}

Result<UniqueFd> open_pinned_map(const std::string& pin_dir, std::string_view name) {
  std::string path = fmt::format("{}/maps/{}", pin_dir, name);
  UniqueFd fd(bpf_obj_get(path.c_str()));
  if (!fd) {
    int e = errno;
    std::string hint;
    if (e == ENOENT)
      hint = fmt::format(
          " (is connredir up at {}? `connredir up`; if it is, another version "
          "brought it up: `connredir down`, then `connredir up`)",
          pin_dir);
    else if (e == EPERM || e == EACCES)
      hint = " (run as root)";
    return fail(e, fmt::format("cannot open pinned map {}: {}{}", path, errno_text(e), hint));
  }
  return fd;
}

}  // namespace connredir::control
