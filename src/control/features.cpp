// What the running kernel offers connredir: every kernel feature the BPF
// side or the CLI uses, probed (never assumed), with what a missing one
// means. Required features gate `connredir up` (one message listing all
// that are missing); optional ones only disable what they serve, and `up`
// and `status` say so.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <iterator>
#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

KernelFeature required(std::string name, std::string description) {
  KernelFeature f;
  f.name = std::move(name);
  f.description = std::move(description);
  f.required = true;
  return f;
}

KernelFeature optional(std::string name, std::string description, std::string disables) {
  KernelFeature f;
  f.name = std::move(name);
  f.description = std::move(description);
  f.disables = std::move(disables);
  return f;
}

// libbpf loads a minimal program of the type (with a call to the helper)
// and reads the verifier's verdict: 1 yes, 0 no, < 0 could not tell.
void probed(KernelFeature& f, int rc, const char* what) {
  if (rc > 0) {
    f.present = true;
    f.detail = fmt::format("{} loads", what);
  } else if (rc == 0) {
    f.present = false;
    f.detail = fmt::format("the kernel refuses {}", what);
  } else {
    f.detail = errno_message(-rc, fmt::format("probing {} failed", what));
  }
}

KernelFeature prog_type(const char* name, bpf_prog_type type, const char* hooks) {
  auto f = required(name, fmt::format("BPF program type for {}", hooks));
  probed(f, libbpf_probe_bpf_prog_type(type, nullptr), fmt::format("a {} program", name).c_str());
  return f;
}

KernelFeature helper(const char* name, bpf_prog_type type, bpf_func_id id, const char* prog,
                     const char* why) {
  auto f = required(name, why);
  probed(f, libbpf_probe_bpf_helper(type, id, nullptr),
         fmt::format("{} in a {} program", name, prog).c_str());
  return f;
}

KernelFeature map_type(const char* name, bpf_map_type type, const char* why) {
  auto f = required(name, why);
  probed(f, libbpf_probe_bpf_map_type(type, nullptr), fmt::format("a {} map", name).c_str());
  return f;
}

}  // namespace

Result<bool> probe_sockopt_word_access(uint32_t prog_flags) {
  // A getsockopt program that loads and stores 8 bytes at the start of its
  // buffer, bounds-checked, as the records and flow options copy them.
  auto insn = [](uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
    bpf_insn i{};
    i.code = code;
    i.dst_reg = dst & 0xf;
    i.src_reg = src & 0xf;
    i.off = off;
    i.imm = imm;
    return i;
  };
  constexpr auto kOptval = static_cast<int16_t>(offsetof(struct bpf_sockopt, optval));
  constexpr auto kEnd = static_cast<int16_t>(offsetof(struct bpf_sockopt, optval_end));
  const bpf_insn prog[] = {
      insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_2, BPF_REG_1, kOptval, 0),  // r2 = optval
      insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_3, BPF_REG_1, kEnd, 0),     // r3 = optval_end
      insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_4, BPF_REG_2, 0, 0),       // r4 = r2
      insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_4, 0, 0, 8),               // r4 += 8
      insn(BPF_JMP | BPF_JGT | BPF_X, BPF_REG_4, BPF_REG_3, 2, 0),         // past end: skip
      insn(BPF_LDX | BPF_MEM | BPF_DW, BPF_REG_0, BPF_REG_2, 0, 0),        // r0 = *(u64 *)r2
      insn(BPF_STX | BPF_MEM | BPF_DW, BPF_REG_2, BPF_REG_0, 0, 0),        // *(u64 *)r2 = r0
      insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1),               // r0 = 1
      insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
  };
  LIBBPF_OPTS(bpf_prog_load_opts, o);
  o.expected_attach_type = BPF_CGROUP_GETSOCKOPT;
  o.prog_flags = prog_flags;
  const int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_SOCKOPT, "cr_word_probe", "Dual BSD/GPL", prog,
                               std::size(prog), &o);
  if (fd >= 0) {
    ::close(fd);
    return true;
  }
  const int e = errno;
  // The verifier's refusal (EACCES, or EINVAL on some kernels for a
  // misaligned packet access): no word access. Anything else (EPERM: no
  // CAP_BPF) means the probe could not tell.
  if (e == EACCES || e == EINVAL) return false;
  return fail(e, "probing 8-byte access to a socket option's buffer: " + errno_text(e) +
                     "; run as root (CAP_BPF and CAP_NET_ADMIN)");
}

KernelFeature sock_diag_feature(const std::string& pin_dir) {
  // `connredir flows` reads the pinned sk_state map's values through
  // sock_diag (inet_diag + tcp_diag): no BPF program, so no tracing needed.
  auto diag = optional("sock_diag_bpf_storage",
                       "sock_diag dumps of sk_storage values (INET_DIAG_REQ_SK_BPF_STORAGES)",
                       "`connredir flows` cannot list live flows (redirection itself is "
                       "unaffected)");
  std::string map_path = pin_dir + "/maps/sk_state";
  int map_fd = bpf_obj_get(map_path.c_str());
  if (map_fd < 0) {
    diag.detail = "not probed: connredir is not up (the probe needs the pinned sk_state map)";
    return diag;
  }
  auto r = probe_sock_diag_storage(map_fd);
  ::close(map_fd);
  diag.present = r.has_value();
  diag.detail = r ? "the kernel accepts a TCP dump that asks for the sk_state map's values"
                  : r.error().message;
  return diag;
}

std::vector<KernelFeature> probe_kernel_features(const std::string& pin_dir) {
  std::vector<KernelFeature> out;

  auto version = required("linux-5.18", "Linux 5.18 or newer");
  utsname u{};
  uname(&u);
  auto rel = parse_kernel_release(u.release);
  if (!rel) {
    version.detail = rel.error().message;
  } else {
    version.present = *rel >= std::pair{5, 18};
    version.detail = *version.present
                         ? fmt::format("kernel {}", u.release)
                         : fmt::format(
                               "kernel {} is too old: connredir needs Linux 5.18 or newer "
                               "(bpf_set_retval in cgroup sockopt programs)",
                               u.release);
  }
  out.push_back(version);

  auto btf = required("btf", "kernel BTF (/sys/kernel/btf/vmlinux), for CO-RE");
  btf.present = access("/sys/kernel/btf/vmlinux", R_OK) == 0;
  btf.detail = *btf.present ? "/sys/kernel/btf/vmlinux"
                            : "/sys/kernel/btf/vmlinux is missing: the kernel needs BTF "
                              "(CONFIG_DEBUG_INFO_BTF=y)";
  out.push_back(btf);

  auto cg = required("cgroup2", "the cgroup v2 hierarchy, where the hooks attach");
  auto mount = find_cgroup2_mount();
  cg.present = mount.has_value();
  cg.detail = mount ? fmt::format("mounted at {}", *mount) : mount.error().message;
  out.push_back(cg);

  out.push_back(prog_type("cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                          "connect4/6, bind4/6, getpeername4/6, sendmsg4/6, recvmsg4/6"));
  out.push_back(prog_type("sock_ops", BPF_PROG_TYPE_SOCK_OPS, "the flow hand-off"));
  out.push_back(prog_type("cgroup_sockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT,
                          "the records and context socket options"));
  out.push_back(prog_type("cgroup_sock", BPF_PROG_TYPE_CGROUP_SOCK, "sock_release"));
  out.push_back(map_type("sk_storage", BPF_MAP_TYPE_SK_STORAGE,
                         "per-socket state that dies with the socket"));
  out.push_back(map_type("lpm_trie", BPF_MAP_TYPE_LPM_TRIE, "the filter index (classifier)"));
  out.push_back(helper("bpf_set_retval", BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_FUNC_set_retval,
                       "cgroup_sockopt",
                       "errors of the records socket options, refused connects (Linux 5.18)"));
  out.push_back(helper("bpf_loop", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_loop,
                       "cgroup_sock_addr", "the proxy-address bind guard (Linux 5.17)"));
  out.push_back(helper("bpf_skc_lookup_tcp", BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                       BPF_FUNC_skc_lookup_tcp, "cgroup_sock_addr",
                       "listener ownership: redirect only to a listener the callout's "
                       "principal bound"));
  out.push_back(helper("bpf_get_netns_cookie", BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_get_netns_cookie,
                       "sock_ops", "hand-off keys scoped by network namespace"));

  out.push_back(sock_diag_feature(pin_dir));

  auto words = optional("sockopt_word_access",
                        "8-byte loads and stores on a socket option's buffer (kernels with "
                        "efficient unaligned access: x86-64, arm64, ppc64el, s390x)",
                        "the records and flow socket options copy their buffers byte by "
                        "byte: about 0.3 us more per redirected connection, nothing else");
  if (auto r = probe_sockopt_word_access(0); !r) {
    words.detail = r.error().message;
  } else {
    words.present = *r;
    words.detail = *r ? "a getsockopt program with 8-byte buffer accesses loads"
                      : "the verifier refuses 8-byte accesses to a socket option's buffer "
                        "(strict alignment)";
  }
  out.push_back(words);

  auto stats =
      optional("bpf_stats", "per-program BPF run-time statistics (kernel.bpf_stats_enabled)",
               "bench/run.sh --profile cannot report connredir's BPF time per "
               "connection");
  stats.present = access("/proc/sys/kernel/bpf_stats_enabled", F_OK) == 0;
  stats.detail = *stats.present ? "/proc/sys/kernel/bpf_stats_enabled"
                                : "/proc/sys/kernel/bpf_stats_enabled is missing";
  out.push_back(stats);
  return out;
}

Result<void> require_kernel_features(const std::vector<KernelFeature>& features) {
  std::vector<std::string> missing;
  for (const auto& f : features) {
    if (!f.required || f.present.value_or(true)) continue;
    missing.push_back(f.detail);
  }
  if (missing.empty()) return {};
  std::string msg = "this system cannot run connredir: ";
  for (size_t i = 0; i < missing.size(); ++i) msg += (i ? "; " : "") + missing[i];
  return fail(ENOTSUP, msg);
}

}  // namespace connredir::control
