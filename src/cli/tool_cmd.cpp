// `connredir decode` (a records blob, for debugging) and `connredir exec`
// (run a command in a cgroup as a uid: how tests and demos start apps and
// proxies where connredir polices them).
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <fmt/format.h>

#include "commands.hpp"
#include "connredir/records.hpp"

namespace connredir::cli {
namespace {

int cmd_decode(const std::string& hex, bool as_json) {
  auto r = connredir::decode_records_hex(hex);
  if (!r) return usage(r.error().message);
  if (as_json)
    fmt::print("{}\n", connredir::to_json(*r));
  else
    fmt::print("{}", connredir::describe(*r));
  return 0;
}

struct ExecArgs {
  std::string cgroup, uid, gid;
  std::vector<std::string> cmd;
};

int cmd_exec(const ExecArgs& a) {
  if (a.cmd.empty())
    return usage("exec needs a command: connredir exec --cgroup DIR -- CMD ARGS...");
  std::optional<uint32_t> uid, gid;
  if (!a.uid.empty()) {
    auto u = ctl::parse_uint(a.uid, "--uid", 0, 0xfffffffe);
    if (!u) return usage(u.error().message);
    uid = static_cast<uint32_t>(*u);
  }
  if (!a.gid.empty()) {
    auto g = ctl::parse_uint(a.gid, "--gid", 0, 0xfffffffe);
    if (!g) return usage(g.error().message);
    gid = static_cast<uint32_t>(*g);
  }
  auto cg = ctl::resolve_cgroup(a.cgroup);
  if (!cg) return usage(cg.error().message);

  std::string procs = cg->path + "/cgroup.procs";
  int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || ::write(fd, "0\n", 2) != 2) {
    int e = errno;
    if (fd >= 0) ::close(fd);
    return report(Error{
        e, fmt::format("cannot move into cgroup {}: {} ({}){}", cg->path, connredir::errno_text(e),
                       procs,
                       e == EACCES || e == EPERM ? ": run as root or use a cgroup delegated to you"
                       : e == EBUSY              ? ": the cgroup has child cgroups with "
                                                   "controllers enabled; use a leaf cgroup"
                                                 : "")});
  }
  ::close(fd);
  if (uid || gid) {
    gid_t g = gid.value_or(0);
    if (!gid) {
      struct passwd* pw = getpwuid(*uid);
      g = pw ? pw->pw_gid : *uid;
    }
    if (setgroups(1, &g) != 0 || setgid(g) != 0) {
      int e = errno;
      return report(
          Error{e, fmt::format("cannot switch to gid {}: {} (exec --uid/--gid needs root)", g,
                               connredir::errno_text(e))});
    }
    if (uid && setuid(*uid) != 0) {
      int e = errno;
      return report(Error{e, fmt::format("cannot switch to uid {}: {} (exec --uid needs root)",
                                         *uid, connredir::errno_text(e))});
    }
  }
  std::vector<char*> argv;
  for (const auto& s : a.cmd) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  int e = errno;
  return report(Error{e, fmt::format("cannot run {}: {}", a.cmd[0], connredir::errno_text(e))});
}

// "unknown command 'x'" when a word names no subcommand at its level (CLI11

}  // namespace

void add_tool_commands(CLI::App& app, Globals& g, Commands& out) {
  auto hex = std::make_shared<std::string>();
  auto* decode = app.add_subcommand("decode", "decode a redirect records blob given in hex");
  decode->add_option("hex", *hex, "the blob in hex (whitespace ignored)")->required();
  decode->add_flag("--json", g.as_json, "JSON output");
  out.push_back({decode, [&g, hex] { return cmd_decode(*hex, g.as_json); }});

  auto ea = std::make_shared<ExecArgs>();
  auto* exec = app.add_subcommand("exec", "run a command inside a cgroup, optionally as uid/gid");
  exec->add_option("--cgroup", ea->cgroup, "cgroup v2 directory to join")->required();
  exec->add_option("--uid", ea->uid, "switch to this uid");
  exec->add_option("--gid", ea->gid, "switch to this gid (default: the uid's primary group)");
  exec->add_option("cmd", ea->cmd, "command and arguments (after --)")->required();
  out.push_back({exec, [ea] { return cmd_exec(*ea); }});
}

}  // namespace connredir::cli
