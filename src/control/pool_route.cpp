// The IPv6 proxy address pool of unconnected UDP sends (bpf/lib/pool.h)
// needs a local route in the namespace: `ip -6 route add local
// fdcc:7264::/64 dev lo`, done here over rtnetlink. The IPv4 pool is inside
// 127.0.0.0/8, which every namespace routes locally already.
#include <arpa/inet.h>
#include <errno.h>
#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include <array>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include <fmt/format.h>

#include "connredir/control.hpp"
#include "system_util.hpp"

namespace connredir::control {

std::string udp_pool6_cidr() {
  const uint32_t w0 = htonl(CONNREDIR_UDP_POOL6_W0);
  std::array<uint8_t, 16> a{};
  std::memcpy(a.data(), &w0, 4);
  char text[INET6_ADDRSTRLEN] = {};
  inet_ntop(AF_INET6, a.data(), text, sizeof text);
  return fmt::format("{}/64", text);
}

Result<bool> ensure_udp_pool_route() {
  const std::string what = fmt::format(
      "cannot add the local route {} dev lo for the IPv6 UDP address pool", udp_pool6_cidr());
  const unsigned lo = if_nametoindex("lo");
  if (lo == 0) return fail(errno, errno_message(errno, what + ": no loopback interface"));
  struct Closer {
    void operator()(mnl_socket* s) const { mnl_socket_close(s); }
  };
  std::unique_ptr<mnl_socket, Closer> nl(mnl_socket_open(NETLINK_ROUTE));
  if (!nl || mnl_socket_bind(nl.get(), 0, MNL_SOCKET_AUTOPID) < 0)
    return fail(errno, errno_message(errno, what + ": rtnetlink socket"));
  std::vector<char> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = RTM_NEWROUTE;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK;
  nlh->nlmsg_seq = static_cast<uint32_t>(time(nullptr));
  auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
  rtm->rtm_family = AF_INET6;
  rtm->rtm_dst_len = 64;
  rtm->rtm_table = RT_TABLE_LOCAL;
  rtm->rtm_protocol = RTPROT_STATIC;
  rtm->rtm_scope = RT_SCOPE_HOST;
  rtm->rtm_type = RTN_LOCAL;
  std::array<uint8_t, 16> dst{};
  const uint32_t w0 = htonl(CONNREDIR_UDP_POOL6_W0);
  std::memcpy(dst.data(), &w0, 4);
  mnl_attr_put(nlh, RTA_DST, dst.size(), dst.data());
  mnl_attr_put_u32(nlh, RTA_OIF, lo);
  mnl_attr_put_u32(nlh, RTA_TABLE, RT_TABLE_LOCAL);
  if (mnl_socket_sendto(nl.get(), nlh, nlh->nlmsg_len) < 0)
    return fail(errno, errno_message(errno, what + ": sending the request"));
  const ssize_t n = mnl_socket_recvfrom(nl.get(), buf.data(), buf.size());
  if (n < 0) return fail(errno, errno_message(errno, what + ": reading the answer"));
  if (mnl_cb_run(buf.data(), static_cast<size_t>(n), nlh->nlmsg_seq,
                 mnl_socket_get_portid(nl.get()), nullptr, nullptr) < 0) {
    const int e = errno;
    if (e == EEXIST) return false;  // there already (an earlier `up`, or the administrator)
    return fail(
        e, errno_message(e, what) +
               (e == EAFNOSUPPORT || e == EACCES ? " (is IPv6 disabled in this namespace?)" : ""));
  }
  return true;
}

}  // namespace connredir::control
