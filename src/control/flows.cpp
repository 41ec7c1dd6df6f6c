// `connredir flows`: every socket that carries connredir state, read through
// sock_diag (the netlink interface `ss` uses) with the pinned sk_state map
// named in the request (INET_DIAG_REQ_SK_BPF_STORAGES): the kernel appends
// each socket's sk_state value to its inet_diag message. No BPF program is
// loaded, so this works on kernels that refuse tracing programs (the
// sk_storage iterator used before needs one), and sock_diag also gives each
// socket's TCP state, owner uid and inode.
//
// sock_diag answers for the namespace its netlink socket was created in, so
// other namespaces are read through a socket created in them (setns in a
// short-lived thread: the process itself never changes namespace).
#include <bpf/bpf.h>
#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/inet_diag.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <map>
#include <set>
#include <thread>

#include "../common/unique_fd.hpp"
#include "connredir/control.hpp"
#include "system_util.hpp"

namespace connredir::control {
namespace {

struct MnlCloser {
  void operator()(mnl_socket* s) const { mnl_socket_close(s); }
};
using MnlSocket = std::unique_ptr<mnl_socket, MnlCloser>;

// A NETLINK_SOCK_DIAG socket in the network namespace `netns_fd` (-1: ours).
Result<MnlSocket> open_diag(int netns_fd, const std::string& netns_name) {
  mnl_socket* nl = nullptr;
  int err = 0;
  auto open_here = [&] {
    nl = mnl_socket_open(NETLINK_SOCK_DIAG);
    if (!nl) err = errno;
  };
  if (netns_fd < 0) {
    open_here();
  } else {
    // setns affects only the calling thread; the socket keeps the namespace
    // it was created in after the thread ends.
    std::thread t([&] {
      if (setns(netns_fd, CLONE_NEWNET) != 0) {
        err = errno;
        return;
      }
      open_here();
    });
    t.join();
    if (!nl && err)
      return fail(err,
                  errno_message(err, fmt::format("cannot enter network namespace {}", netns_name)) +
                      " (needs root)");
  }
  if (!nl)
    return fail(err, errno_message(err, "cannot open a NETLINK_SOCK_DIAG socket") +
                         " (is sock_diag built into the kernel or its module loadable?)");
  MnlSocket sock(nl);
  if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
    int e = errno;
    return fail(e, errno_message(e, "cannot bind the sock_diag socket"));
  }
  return sock;
}

Address diag_address(uint8_t family, const __be32 ip[4], __be16 port) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(&ss);
    in->sin_family = AF_INET;
    in->sin_port = port;
    std::memcpy(&in->sin_addr, ip, 4);
  } else {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = port;
    std::memcpy(&in6->sin6_addr, ip, 16);
  }
  auto a = Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), sizeof ss);
  return a ? *a : Address{};
}

struct DumpCtx {
  uint32_t map_id = 0;
  uint32_t brief_map_id = 0;  // 0: the loaded object has no sk_brief
  uint8_t protocol = IPPROTO_TCP;
  uint64_t netns = 0;
  std::vector<FlowDump>* out = nullptr;
  std::optional<Error> error;
};

// What one socket's message carries of our map: the nested attributes are
// walked with libmnl's callbacks (its iteration macros are C-only).
struct SocketAttrs {
  uint32_t map_id = 0;  // ours
  uint32_t brief_map_id = 0;
  const nlattr* value = nullptr;
  const nlattr* brief = nullptr;
  uint32_t entry_map_id = 0;  // of the SK_DIAG_BPF_STORAGE entry being read
  const nlattr* entry_value = nullptr;
};

int on_storage_field(const nlattr* a, void* data) {
  auto* s = static_cast<SocketAttrs*>(data);
  if (mnl_attr_get_type(a) == SK_DIAG_BPF_STORAGE_MAP_ID &&
      mnl_attr_get_payload_len(a) >= sizeof(uint32_t))
    s->entry_map_id = mnl_attr_get_u32(a);
  else if (mnl_attr_get_type(a) == SK_DIAG_BPF_STORAGE_MAP_VALUE)
    s->entry_value = a;
  return MNL_CB_OK;
}

int on_storage(const nlattr* a, void* data) {
  auto* s = static_cast<SocketAttrs*>(data);
  if (mnl_attr_get_type(a) != SK_DIAG_BPF_STORAGE) return MNL_CB_OK;
  s->entry_map_id = 0;
  s->entry_value = nullptr;
  if (mnl_attr_parse_nested(a, on_storage_field, s) < 0) return MNL_CB_ERROR;
  if (s->entry_map_id == s->map_id && s->entry_value) s->value = s->entry_value;
  if (s->brief_map_id && s->entry_map_id == s->brief_map_id && s->entry_value)
    s->brief = s->entry_value;
  return MNL_CB_OK;
}

int on_socket_attr(const nlattr* a, void* data) {
  if (mnl_attr_get_type(a) != INET_DIAG_SK_BPF_STORAGES) return MNL_CB_OK;
  return mnl_attr_parse_nested(a, on_storage, data) < 0 ? MNL_CB_ERROR : MNL_CB_OK;
}

// A map value as sock_diag returned it, checked against our ABI's size.
template <typename T>
Result<void> read_value(const nlattr* v, const char* map, T& out) {
  if (mnl_attr_get_payload_len(v) != sizeof(T))
    return fail(EPROTO, fmt::format("sock_diag returned a {}-byte {} value, expected {}: the CLI "
                                    "and the loaded kernel side are of different versions "
                                    "(re-run `connredir up` after `connredir down`)",
                                    mnl_attr_get_payload_len(v), map, sizeof(T)));
  std::memcpy(&out, mnl_attr_get_payload(v), sizeof(T));
  return {};
}

// A socket that kept only its brief, in the shape of a full one: what the
// brief holds goes where sk_state holds it; the hops are filled in later from
// the flow's other sockets (fill_brief_hops).
void expand_brief(FlowDump& f, const connredir_sk_brief& b) {
  f.brief = true;
  f.hops_known = false;
  f.state.flags = b.flags;
  f.state.handoff = b.handoff;
  auto& r = f.state.records;
  r.flow_id = b.flow_id;
  r.hop_count = static_cast<uint8_t>(b.hop_count);
  r.origin.pid = b.pid;
  r.origin.uid = b.uid;
  std::memcpy(r.origin.comm, b.comm, sizeof r.origin.comm);
  auto& c = f.state.context;
  c.flow_id = b.flow_id;
  c.orig_dst = b.orig_dst;
  c.hop = static_cast<uint8_t>(b.hop_count);
  c.pid = b.pid;
  c.uid = b.uid;
  std::memcpy(c.comm, b.comm, sizeof c.comm);
}

// A chain only grows along a flow, so a brief socket's hops are the first
// hop_count hops of any socket of the same flow whose chain is as long:
// taken from the longest one listed.
void fill_brief_hops(std::vector<FlowDump>& flows) {
  std::map<uint64_t, const connredir_records*> longest;
  for (const auto& f : flows) {
    if (f.brief) continue;
    const auto*& l = longest[f.state.records.flow_id];
    if (!l || f.state.records.hop_count > l->hop_count) l = &f.state.records;
  }
  for (auto& f : flows) {
    if (!f.brief) continue;
    auto it = longest.find(f.state.records.flow_id);
    if (it == longest.end() || it->second->hop_count < f.state.records.hop_count) continue;
    std::memcpy(f.state.records.hops, it->second->hops, sizeof f.state.records.hops);
    f.state.records.origin = it->second->origin;
    f.hops_known = true;
  }
}

int on_socket(const nlmsghdr* nlh, void* data) {
  auto* ctx = static_cast<DumpCtx*>(data);
  if (mnl_nlmsg_get_payload_len(nlh) < sizeof(inet_diag_msg)) return MNL_CB_OK;
  const auto* msg = static_cast<const inet_diag_msg*>(mnl_nlmsg_get_payload(nlh));
  SocketAttrs attrs;
  attrs.map_id = ctx->map_id;
  attrs.brief_map_id = ctx->brief_map_id;
  if (mnl_attr_parse(nlh, sizeof(*msg), on_socket_attr, &attrs) < 0 ||
      (!attrs.value && !attrs.brief))
    return MNL_CB_OK;  // no value of ours: a socket connredir never touched
  FlowDump f;
  connredir_sk_brief brief{};
  if (auto r = attrs.value ? read_value(attrs.value, "sk_state", f.state)
                           : read_value(attrs.brief, "sk_brief", brief);
      !r) {
    ctx->error = r.error();
    return MNL_CB_ERROR;
  }
  if (!attrs.value) expand_brief(f, brief);
  f.cookie = static_cast<uint64_t>(msg->id.idiag_cookie[1]) << 32 | msg->id.idiag_cookie[0];
  f.local = diag_address(msg->idiag_family, msg->id.idiag_src, msg->id.idiag_sport);
  f.remote = diag_address(msg->idiag_family, msg->id.idiag_dst, msg->id.idiag_dport);
  f.protocol = ctx->protocol;
  f.sock_state = msg->idiag_state;
  f.uid = msg->idiag_uid;
  f.inode = msg->idiag_inode;
  f.netns = ctx->netns;
  ctx->out->push_back(f);
  return MNL_CB_OK;
}

// One sock_diag dump: every socket of `family`/`protocol` in the socket's
// namespace, keeping those our map has a value for.
// Every state but those of sockets that cannot carry sk_storage: TIME_WAIT
// and request sockets are not full sockets.
constexpr uint32_t kFullSocketStates =
    ~0u & ~(1u << TCP_TIME_WAIT) & ~(1u << 12 /* TCP_NEW_SYN_RECV */);

Result<void> dump_one(mnl_socket* nl, int map_fd, int brief_fd, uint8_t family, uint8_t protocol,
                      DumpCtx& ctx, uint32_t states = kFullSocketStates) {
  ctx.protocol = protocol;
  std::vector<char> buf(std::max<size_t>(MNL_SOCKET_BUFFER_SIZE, 64 * 1024));
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = SOCK_DIAG_BY_FAMILY;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = static_cast<uint32_t>(time(nullptr));
  auto* req =
      static_cast<inet_diag_req_v2*>(mnl_nlmsg_put_extra_header(nlh, sizeof(inet_diag_req_v2)));
  req->sdiag_family = family;
  req->sdiag_protocol = protocol;
  req->idiag_states = states;
  nlattr* nest = mnl_attr_nest_start(nlh, INET_DIAG_REQ_SK_BPF_STORAGES);
  mnl_attr_put_u32(nlh, SK_DIAG_BPF_STORAGE_REQ_MAP_FD, static_cast<uint32_t>(map_fd));
  if (brief_fd >= 0)
    mnl_attr_put_u32(nlh, SK_DIAG_BPF_STORAGE_REQ_MAP_FD, static_cast<uint32_t>(brief_fd));
  mnl_attr_nest_end(nlh, nest);
  uint32_t seq = nlh->nlmsg_seq;
  uint32_t portid = mnl_socket_get_portid(nl);
  if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
    int e = errno;
    return fail(e, errno_message(e, "sending the sock_diag request"));
  }
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(nl, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      return fail(e, errno_message(e, "reading the sock_diag answer"));
    }
    int rc = mnl_cb_run(buf.data(), static_cast<size_t>(n), seq, portid, on_socket, &ctx);
    if (rc == MNL_CB_STOP) return {};
    if (rc == MNL_CB_ERROR) {
      if (ctx.error) return tl::unexpected(*ctx.error);
      int e = errno;
      if (e == ENOENT && protocol != IPPROTO_TCP) return {};  // no diag module for it
      return fail(e, errno_message(e, fmt::format("sock_diag dump ({} {})",
                                                  family == AF_INET ? "IPv4" : "IPv6",
                                                  protocol == IPPROTO_TCP ? "TCP" : "UDP")) +
                         (e == EPERM    ? " (listing sk_storage through sock_diag needs root)"
                          : e == ENOENT ? " (the kernel has no inet_diag/tcp_diag: load them with "
                                          "`modprobe tcp_diag`)"
                                        : ""));
    }
  }
}

uint64_t netns_inode(int fd) {
  struct stat st {};
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

// Every distinct network namespace of the host: those of running processes
// and those bind-mounted under /run/netns.
std::vector<std::string> all_netns_paths() {
  std::vector<std::string> paths;
  std::set<uint64_t> seen;
  auto add = [&](const std::string& p) {
    struct stat st {};
    if (stat(p.c_str(), &st) == 0 && seen.insert(st.st_ino).second) paths.push_back(p);
  };
  add("/proc/self/ns/net");
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/run/netns", ec)) add(e.path());
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const auto name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    add(e.path() / "ns/net");
  }
  return paths;
}

}  // namespace

Result<std::vector<FlowDump>> dump_flows(const std::string& pin_dir, const FlowQuery& query) {
  std::string map_path = pin_dir + "/maps/sk_state";
  auto opened = open_pinned_map(pin_dir, "sk_state");
  if (!opened) return tl::unexpected(opened.error());
  UniqueFd map = std::move(*opened);
  auto map_id = [](int fd, const std::string& path) -> Result<uint32_t> {
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
      int e = errno;
      return fail(e, errno_message(e, fmt::format("cannot read the map info of {}", path)));
    }
    return info.id;
  };
  auto state_id = map_id(map.get(), map_path);
  if (!state_id) return tl::unexpected(state_id.error());
  // Established client and onward sockets keep only a brief. A kernel side
  // loaded by an older connredir has no sk_brief: its sockets all keep
  // sk_state.
  UniqueFd brief;
  uint32_t brief_id = 0;
  if (std::filesystem::exists(pin_dir + "/maps/sk_brief")) {
    auto b = open_pinned_map(pin_dir, "sk_brief");
    if (!b) return tl::unexpected(b.error());
    brief = std::move(*b);
    auto id = map_id(brief.get(), pin_dir + "/maps/sk_brief");
    if (!id) return tl::unexpected(id.error());
    brief_id = *id;
  }

  std::vector<std::string> namespaces = query.netns;
  if (query.all_netns) namespaces = all_netns_paths();
  if (namespaces.empty()) namespaces.push_back("");  // ours

  std::vector<FlowDump> out;
  for (const auto& ns : namespaces) {
    UniqueFd nsfd(ns.empty() ? ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)
                             : ::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
    if (nsfd.get() < 0) {
      int e = errno;
      if (query.all_netns && e == ENOENT) continue;  // the process exited meanwhile
      return fail(e, errno_message(e, fmt::format("cannot open network namespace {}",
                                                  ns.empty() ? "/proc/self/ns/net" : ns)) +
                         " (give a path like /run/netns/NAME or /proc/PID/ns/net)");
    }
    auto nl = open_diag(ns.empty() ? -1 : nsfd.get(), ns);
    if (!nl) return tl::unexpected(nl.error());
    DumpCtx ctx;
    ctx.map_id = *state_id;
    ctx.brief_map_id = brief_id;
    ctx.netns = netns_inode(nsfd.get());
    ctx.out = &out;
    for (uint8_t family : {AF_INET, AF_INET6})
      for (uint8_t proto : query.protocols)
        if (auto r =
                dump_one(nl->get(), map.get(), brief_id ? brief.get() : -1, family, proto, ctx);
            !r)
          return tl::unexpected(r.error());
  }
  fill_brief_hops(out);
  return out;
}

Result<void> probe_sock_diag_storage(int sk_storage_map_fd) {
  auto nl = open_diag(-1, "");
  if (!nl) return tl::unexpected(nl.error());
  // No socket state selected: the kernel still checks the map and the
  // storage attribute when the dump starts (and needs inet_diag/tcp_diag),
  // but lists nothing, so the probe costs the same on a busy host.
  std::vector<FlowDump> out;
  DumpCtx ctx;
  ctx.out = &out;
  return dump_one(nl->get(), sk_storage_map_fd, -1, AF_INET, IPPROTO_TCP, ctx, 0);
}

}  // namespace connredir::control
