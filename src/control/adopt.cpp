// Listeners that were bound before connredir's bind hook ran have no sk_owner
// record, and the connect hook sends no flow to a listener without one. Such
// listeners exist whenever connredir comes up while proxies already run: the
// proxies of `systemctl stop connredir; systemctl start connredir` (the stop
// drops the pinned maps, with the owner records, and leaves the proxies and
// their flows alone), an upgrade, a first install next to running proxies.
// Without this, every redirected connect of such a callout would meet its
// on_proxy_down policy until each proxy restarted.
//
// So `up` adopts them, right after attaching the bind hook (from then on
// every bind records its owner itself): for each process in the attached
// cgroup, each of its TCP listening sockets without a record gets the record
// the bind hook would have written had it run then, from the kernel's own
// facts: the socket's owner uid (its inode's, set when it was created) and
// the holding process's cgroup ancestry. Processes outside the attached
// cgroup are never looked at: their binds were never recorded either, and a
// listener there must stay a non-owner (docs/SECURITY.md).
//
// sk_storage is written from user space through a file descriptor of the
// socket, so connredir takes a copy of the process's descriptor with
// pidfd_getfd(2) (CAP_SYS_PTRACE over the process; listing another uid's
// descriptors in /proc also needs CAP_DAC_READ_SEARCH), writes the record
// with BPF_NOEXIST (a record the hook wrote meanwhile wins) and closes the
// copy. The process and its socket are not otherwise touched.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <limits>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "../common/unique_fd.hpp"
#include "connredir/control.hpp"
#include "system_util.hpp"

namespace connredir::control {
namespace {

namespace fs = std::filesystem;

// A /proc or /sys file's text; "" if it is gone (the process exited).
std::string slurp(const std::string& path) { return read_file(path.c_str()).value_or(""); }

// A decimal /proc field.
template <class T>
bool parse_num(std::string_view s, T& out) {
  auto v = parse_uint(s, "", 0, std::numeric_limits<T>::max());
  if (v) out = static_cast<T>(*v);
  return v.has_value();
}

// The inodes of the TCP sockets in LISTEN state of the network namespace
// /proc/PID/net shows (the `inode` column of tcp and tcp6; st 0A = LISTEN).
void listening_inodes(int pid, std::set<uint64_t>& out) {
  for (const char* file : {"tcp", "tcp6"}) {
    std::istringstream in(slurp(fmt::format("/proc/{}/net/{}", pid, file)));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, inode;
      if (!(f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode))
        continue;
      uint64_t ino = 0;
      if (st == "0A" && parse_num(inode, ino) && ino != 0) out.insert(ino);
    }
  }
}

// "socket:[12345]" -> 12345. `denied` is set when the link may not be read.
std::optional<uint64_t> socket_inode(const fs::path& fd_link, bool& denied) {
  std::error_code ec;
  auto target = fs::read_symlink(fd_link, ec).string();
  constexpr std::string_view kPrefix = "socket:[";
  if (ec) denied = denied || ec.value() == EACCES || ec.value() == EPERM;
  if (ec || target.rfind(kPrefix, 0) != 0 || target.back() != ']') return std::nullopt;
  uint64_t ino = 0;
  if (!parse_num(
          std::string_view(target).substr(kPrefix.size(), target.size() - kPrefix.size() - 1), ino))
    return std::nullopt;
  return ino;
}

// The cgroup v2 path of a process relative to the cgroup2 root ("/a/b").
std::optional<std::string> process_cgroup(int pid) {
  std::istringstream in(slurp(fmt::format("/proc/{}/cgroup", pid)));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return std::nullopt;
}

// Every process (thread group) in `dir` and the cgroups below it. A cgroup
// removed while this runs just has no processes: one directory's error never
// ends the walk of the others.
void cgroup_processes(const fs::path& dir, std::vector<int>& pids, int depth = 0) {
  std::istringstream in(slurp((dir / "cgroup.procs").string()));
  for (int pid = 0; in >> pid;) pids.push_back(pid);
  if (depth >= 64) return;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::error_code dec;
    if (e.is_directory(dec) && !e.is_symlink(dec)) cgroup_processes(e.path(), pids, depth + 1);
  }
}

int pidfd_open(int pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }
int pidfd_getfd(int pidfd, int fd) {
  return static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, fd, 0));
}

// The sk_owner record the bind hook would write for a task of `uid` in the
// cgroup at `rel` (relative to the cgroup2 root `root`).
connredir_sk_owner owner_record(MapStore& store, uint32_t uid, const std::string& root,
                                const std::string& rel) {
  connredir_sk_owner o{};
  o.uid = uid;
  o.flags = uid == 0 ? CONNREDIR_OWNER_F_ROOT : 0;
  auto authorized = [&](uint32_t kind, uint64_t id) {
    connredir_principal_key key{};
    key.kind = kind;
    key.id = id;
    uint32_t flags = 0;
    auto r = store.lookup(MapId::Principals, &key, &flags);
    return r && *r && (flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED);
  };
  if (authorized(CONNREDIR_PRINCIPAL_UID, uid)) o.flags |= CONNREDIR_OWNER_F_AUTHORIZED;
  fs::path p(root);
  size_t level = 0;
  for (const auto& part : fs::path(rel).relative_path()) {
    if (part.empty() || level >= CONNREDIR_CGROUP_LEVELS_MAX) break;
    p /= part;
    struct stat st {};
    if (stat(p.c_str(), &st) != 0) break;
    o.cgroup[level++] = st.st_ino;
    if (authorized(CONNREDIR_PRINCIPAL_CGROUP, st.st_ino)) o.flags |= CONNREDIR_OWNER_F_AUTHORIZED;
  }
  return o;
}

}  // namespace

Result<AdoptReport> adopt_listeners(const std::string& pin_dir, const CgroupRef& attached) {
  AdoptReport rep;
  auto opened = open_pinned_map(pin_dir, "sk_owner");
  if (!opened) return tl::unexpected(opened.error());
  UniqueFd map = std::move(*opened);
  auto store = KernelMapStore::open(pin_dir);
  if (!store) return tl::unexpected(store.error());
  auto root = find_cgroup2_mount();
  if (!root) return tl::unexpected(root.error());

  std::set<uint64_t> netns_seen;
  std::set<uint64_t> listening;
  std::set<uint64_t> done;
  std::vector<int> pids;
  cgroup_processes(attached.path, pids);
  std::vector<std::string> unreadable;  // processes whose descriptors may not be listed
  for (int pid : pids) {
    std::vector<std::pair<int, uint64_t>> socks;  // fd number, socket inode
    std::error_code ec;
    bool denied = false;
    for (const auto& e : fs::directory_iterator(fmt::format("/proc/{}/fd", pid), ec)) {
      auto ino = socket_inode(e.path(), denied);
      int fdnum = 0;
      if (ino && parse_num(e.path().filename().string(), fdnum)) socks.emplace_back(fdnum, *ino);
    }
    std::string comm = slurp(fmt::format("/proc/{}/comm", pid));
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    // Another uid's descriptors: listing them needs CAP_DAC_READ_SEARCH,
    // reading their links CAP_SYS_PTRACE.
    if (denied || ec.value() == EACCES || ec.value() == EPERM)
      unreadable.push_back(fmt::format("{} ({})", pid, comm));
    if (socks.empty()) continue;
    // The listening sockets of each network namespace the processes use
    // (read once per namespace).
    struct stat ns {};
    if (stat(fmt::format("/proc/{}/ns/net", pid).c_str(), &ns) != 0 ||
        netns_seen.insert(ns.st_ino).second)
      listening_inodes(pid, listening);
    std::vector<std::pair<int, uint64_t>> fds;
    for (auto [fdnum, ino] : socks)
      if (listening.count(ino) && !done.count(ino)) fds.emplace_back(fdnum, ino);
    if (fds.empty()) continue;
    auto rel = process_cgroup(pid);
    if (!rel) continue;  // exited, or not in a cgroup v2 hierarchy
    UniqueFd pidfd(pidfd_open(pid));
    if (pidfd.get() < 0) continue;  // exited meanwhile
    for (auto [fdnum, ino] : fds) {
      std::string who = fmt::format("pid {} ({}) fd {}", pid, comm, fdnum);
      UniqueFd sock(pidfd_getfd(pidfd.get(), fdnum));
      if (sock.get() < 0) {
        int e = errno;
        if (e == EBADF || e == ESRCH) continue;  // closed or exited meanwhile
        rep.problems.push_back(
            errno_message(e, fmt::format("cannot adopt the listening socket of {}: "
                                         "pidfd_getfd",
                                         who)) +
            (e == EPERM ? " (adopting needs CAP_SYS_PTRACE, or restart that process so that it "
                          "binds again while connredir is up)"
                        : ""));
        continue;
      }
      struct stat st {};
      if (fstat(sock.get(), &st) != 0 || st.st_ino != ino) continue;  // fd reused meanwhile
      done.insert(ino);
      int fdv = sock.get();
      connredir_sk_owner have{};
      if (bpf_map_lookup_elem(map.get(), &fdv, &have) == 0) continue;  // recorded already
      // The bind hook's record of it, as if it had run for this socket.
      connredir_sk_owner o = owner_record(**store, st.st_uid, *root, *rel);
      if (bpf_map_update_elem(map.get(), &fdv, &o, BPF_NOEXIST) != 0) {
        int e = errno;
        if (e == EEXIST) continue;  // the hook recorded it meanwhile
        rep.problems.push_back(errno_message(
            e, fmt::format("cannot record the owner of the listening socket of {}", who)));
        continue;
      }
      AdoptedListener a;
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      if (getsockname(sock.get(), reinterpret_cast<sockaddr*>(&ss), &len) == 0)
        if (auto addr = Address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len))
          a.local = *addr;
      a.pid = pid;
      a.comm = comm;
      a.uid = st.st_uid;
      a.cgroup = *rel;
      rep.adopted.push_back(std::move(a));
    }
  }
  if (!unreadable.empty()) {
    std::string some;
    for (size_t i = 0; i < unreadable.size() && i < 5; ++i) some += (i ? ", " : "") + unreadable[i];
    if (unreadable.size() > 5) some += ", ...";
    rep.problems.push_back(fmt::format(
        "cannot read the descriptors of {} process{} in {} (pid {}): listeners they bound before "
        "connredir was up are not adopted and get no redirected flow until they bind again. "
        "Adopting needs CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE: run `connredir up`/`apply` as "
        "root with them, or restart those proxies",
        unreadable.size(), unreadable.size() == 1 ? "" : "es", attached.path, some));
  }
  return rep;
}

}  // namespace connredir::control
