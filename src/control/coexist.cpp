// Living beside other vendors' BPF programs on the same cgroup hooks.
//
// connredir attaches with BPF links, which the kernel treats as
// BPF_F_ALLOW_MULTI: they share a hook with every other multi-attached
// program and never replace one. The kernel runs a cgroup's effective
// programs in order: those attached to the cgroup itself first (in attach
// order), then its parent's, up to the root. Two attachments would still
// hurt another program, and `up` refuses both before attaching anything:
//   - a program attached to an ancestor with BPF_F_ALLOW_OVERRIDE stops
//     running for the whole subtree as soon as anything is attached below
//     it: connredir's attach would silently disable it there;
//   - a program attached to the same cgroup without BPF_F_ALLOW_MULTI makes
//     the kernel refuse the link (EPERM); we say which program and why.
// `down` only unpins connredir's own links, so it never detaches another
// program, and a killed CLI leaves at most its own unpinned links, which
// the kernel drops with the process.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fmt/format.h>
#include <map>
#include <set>

#include "../common/unique_fd.hpp"
#include "connredir/control.hpp"

namespace connredir::control {
namespace {

// Program ids attached to `cgroup_fd` at `type` (directly, or effective).
Result<std::vector<uint32_t>> query(int cgroup_fd, bpf_attach_type type, bool effective,
                                    uint32_t* attach_flags, const std::string& where) {
  std::vector<uint32_t> ids(64);
  for (;;) {
    uint32_t cnt = static_cast<uint32_t>(ids.size());
    uint32_t flags = 0;
    if (bpf_prog_query(cgroup_fd, type, effective ? BPF_F_QUERY_EFFECTIVE : 0, &flags, ids.data(),
                       &cnt) == 0) {
      ids.resize(cnt);
      if (attach_flags) *attach_flags = flags;
      return ids;
    }
    int e = errno;
    if (e == ENOSPC && cnt > ids.size()) {
      ids.resize(cnt);
      continue;
    }
    return fail(e, errno_message(e, fmt::format("querying the {} programs of cgroup {}",
                                                attach_type_name(type), where)));
  }
}

ProgramInfo program_info(uint32_t id) {
  ProgramInfo p;
  p.prog_id = id;
  UniqueFd fd(bpf_prog_get_fd_by_id(id));
  if (fd.get() < 0) return p;
  bpf_prog_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) return p;
  p.name = info.name;
  for (uint8_t b : info.tag) p.tag += fmt::format("{:02x}", b);
  return p;
}

// The cgroup directory and its ancestors up to the cgroup2 root.
std::vector<std::filesystem::path> self_and_ancestors(const std::string& path,
                                                      const std::string& root) {
  std::vector<std::filesystem::path> out;
  std::filesystem::path p = std::filesystem::path(path).lexically_normal();
  std::filesystem::path r = std::filesystem::path(root).lexically_normal();
  for (;;) {
    out.push_back(p);
    if (p == r || p == p.parent_path() || p.string().size() <= r.string().size()) break;
    p = p.parent_path();
  }
  return out;
}

const char* flags_text(uint32_t flags) {
  if (flags & BPF_F_ALLOW_MULTI) return "multi";
  if (flags & BPF_F_ALLOW_OVERRIDE) return "override";
  return "exclusive";
}

}  // namespace

std::string attach_type_name(uint32_t type) {
  const char* s = libbpf_bpf_attach_type_str(static_cast<bpf_attach_type>(type));
  return s ? s : fmt::format("attach type {}", type);
}

Result<HookPrograms> programs_on_hook(const std::string& cgroup_path, uint32_t attach_type,
                                      const std::set<uint32_t>& our_prog_ids) {
  auto type = static_cast<bpf_attach_type>(attach_type);
  auto root = find_cgroup2_mount();
  if (!root) return tl::unexpected(root.error());
  HookPrograms hook;
  hook.attach_type = attach_type_name(attach_type);
  hook.cgroup = cgroup_path;
  // Where each program is attached, and with which flags.
  std::map<uint32_t, std::pair<std::string, uint32_t>> attached_at;
  for (const auto& dir : self_and_ancestors(cgroup_path, *root)) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) continue;
    uint32_t flags = 0;
    auto ids = query(fd.get(), type, false, &flags, dir.string());
    if (!ids) return tl::unexpected(ids.error());
    for (uint32_t id : *ids) attached_at.emplace(id, std::pair{dir.string(), flags});
  }
  UniqueFd fd(::open(cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) {
    int e = errno;
    return fail(e, errno_message(e, fmt::format("cannot open cgroup {}", cgroup_path)));
  }
  auto eff = query(fd.get(), type, true, nullptr, cgroup_path);
  if (!eff) return tl::unexpected(eff.error());
  for (uint32_t id : *eff) {
    auto p = program_info(id);
    p.ours = our_prog_ids.count(id) > 0;
    if (auto it = attached_at.find(id); it != attached_at.end()) {
      p.attached_at = it->second.first;
      p.attach_mode = flags_text(it->second.second);
    }
    hook.programs.push_back(std::move(p));
  }
  return hook;
}

Result<void> check_attach_is_harmless(const std::string& cgroup_path, uint32_t attach_type) {
  auto type = static_cast<bpf_attach_type>(attach_type);
  auto root = find_cgroup2_mount();
  if (!root) return tl::unexpected(root.error());
  bool self = true;
  for (const auto& dir : self_and_ancestors(cgroup_path, *root)) {
    UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) {
      self = false;
      continue;
    }
    uint32_t flags = 0;
    auto ids = query(fd.get(), type, false, &flags, dir.string());
    if (!ids) return tl::unexpected(ids.error());
    if (!ids->empty() && !(flags & BPF_F_ALLOW_MULTI)) {
      auto p = program_info(ids->front());
      std::string prog =
          fmt::format("program {} (id {})", p.name.empty() ? "?" : p.name, p.prog_id);
      if (self)
        return fail(
            EBUSY,
            fmt::format("cgroup {} has {} attached to its {} hook in {} mode, which "
                        "shares the hook with no other program: connredir will not "
                        "replace it. Ask its owner to attach with BPF_F_ALLOW_MULTI (or "
                        "a BPF link), or run connredir on another cgroup",
                        dir.string(), prog, attach_type_name(attach_type), flags_text(flags)));
      return fail(EBUSY,
                  fmt::format("cgroup {} (an ancestor of {}) has {} attached to its {} hook in "
                              "{} mode: attaching connredir below it would stop that program "
                              "from running for every socket in {}. connredir never disables "
                              "another program: ask its owner to attach with BPF_F_ALLOW_MULTI "
                              "(or a BPF link), or run connredir on a cgroup outside {}",
                              dir.string(), cgroup_path, prog, attach_type_name(attach_type),
                              flags_text(flags), cgroup_path, dir.string()));
    }
    self = false;
  }
  return {};
}

}  // namespace connredir::control
