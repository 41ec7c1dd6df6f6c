// `connredir flows`: list every socket that carries connredir state, by
// running the sk_state iterator (bpf/flows.bpf.c) over the pinned map.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

#include "connredir/control.hpp"
#include "connredir_flows.skel.h"

namespace connredir::control {
namespace {

// Owns what one dump creates; everything is released on every path.
struct IterRun {
  connredir_flows* skel = nullptr;
  bpf_link* link = nullptr;
  int map_fd = -1;
  int iter_fd = -1;
  ~IterRun() {
    if (iter_fd >= 0) ::close(iter_fd);
    if (link) bpf_link__destroy(link);
    if (skel) connredir_flows__destroy(skel);
    if (map_fd >= 0) ::close(map_fd);
  }
};

}  // namespace

Result<std::vector<FlowDump>> dump_flows(const std::string& pin_dir) {
  IterRun run;
  std::string map_path = pin_dir + "/maps/sk_state";
  run.map_fd = bpf_obj_get(map_path.c_str());
  if (run.map_fd < 0) {
    int e = errno;
    return fail(e, fmt::format("cannot open {}: {}; is connredir up at {}? (`connredir up`)",
                               map_path, std::strerror(e), pin_dir));
  }
  run.skel = connredir_flows__open();
  if (!run.skel) {
    int e = errno;
    return fail(e, fmt::format("opening the flows iterator: {}", std::strerror(e)));
  }
  if (int rc = bpf_map__reuse_fd(run.skel->maps.sk_state, run.map_fd); rc != 0)
    return fail(-rc, fmt::format("reusing {}: {}", map_path, std::strerror(-rc)));
  if (int rc = connredir_flows__load(run.skel); rc != 0)
    return fail(-rc, fmt::format("loading the flows iterator: {} (needs a kernel with BPF "
                                 "iterators over sk_storage maps, 5.9+)",
                                 std::strerror(-rc)));
  union bpf_iter_link_info info;
  std::memset(&info, 0, sizeof info);
  info.map.map_fd = static_cast<__u32>(run.map_fd);
  DECLARE_LIBBPF_OPTS(bpf_iter_attach_opts, opts, .link_info = &info, .link_info_len = sizeof info);
  run.link = bpf_program__attach_iter(run.skel->progs.connredir_dump_flows, &opts);
  if (!run.link) {
    int e = errno;
    return fail(e, fmt::format("attaching the flows iterator: {}", std::strerror(e)));
  }
  run.iter_fd = bpf_iter_create(bpf_link__fd(run.link));
  if (run.iter_fd < 0) {
    int e = errno;
    return fail(e, fmt::format("creating the flows iterator: {}", std::strerror(e)));
  }
  std::vector<uint8_t> bytes;
  uint8_t buf[16384];
  for (;;) {
    ssize_t n = ::read(run.iter_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      return fail(e, fmt::format("reading the flows iterator: {}", std::strerror(e)));
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), buf, buf + n);
  }
  constexpr size_t kRecord = sizeof(connredir_flow_dump) + sizeof(connredir_sk_state);
  if (bytes.size() % kRecord != 0)
    return fail(EPROTO, fmt::format("flows iterator returned {} bytes, not a multiple of {}: "
                                    "CLI and kernel side of different versions?",
                                    bytes.size(), kRecord));
  std::vector<FlowDump> out;
  for (size_t off = 0; off < bytes.size(); off += kRecord) {
    connredir_flow_dump d;
    FlowDump f;
    std::memcpy(&d, bytes.data() + off, sizeof d);
    std::memcpy(&f.state, bytes.data() + off + sizeof d, sizeof f.state);
    f.cookie = d.cookie;
    f.local = Address::from_abi(d.local);
    f.remote = Address::from_abi(d.remote);
    out.push_back(f);
  }
  return out;
}

}  // namespace connredir::control
