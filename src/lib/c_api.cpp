// libconnredir's C API (include/connredir/connredir.h): argument checks, then
// the C++ API, then its Error turned into -errno plus a per-thread message.
// Nothing may unwind into C: every entry point catches what the C++ side
// could throw (only allocation failure, in practice).
#include "connredir/connredir.h"

#include <errno.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <string>

#include <fmt/format.h>

#include "connredir/client.hpp"
#include "connredir/records.hpp"

namespace {

using connredir::Address;
using connredir::Error;

// The message for this thread's most recent call ("" after a success).
thread_local std::string t_last_error;

int ok() {
  t_last_error.clear();
  return 0;
}

int failed(int code, std::string message) {
  t_last_error = std::move(message);
  return -code;
}

int failed(const Error& e) { return failed(e.code, e.message); }

// Runs one entry point with C-safe failure handling.
template <class F>
int guarded(const char* fn, F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    // The message itself might not fit: keep whatever assignment succeeds.
    try {
      t_last_error = std::string(fn) + ": out of memory";
    } catch (...) {
    }
    return -ENOMEM;
  } catch (...) {
    try {
      t_last_error = std::string(fn) + ": internal error (unexpected C++ exception)";
    } catch (...) {
    }
    return -EIO;
  }
}

void copy_comm(char (&to)[17], const std::string& from) {
  std::memset(to, 0, sizeof to);
  std::memcpy(to, from.data(), std::min(from.size(), sizeof to - 1));
}

void fill_flow_context(const connredir::Context& c, struct connredir_flow_context* out) {
  out->flow_id = c.flow_id;
  out->callout_id = c.callout_id;
  out->filter_id = c.filter_id;
  out->hop = c.hop;
  out->orig_dst_len = c.orig_dst.to_sockaddr(out->orig_dst);
  out->orig_src_len = c.orig_src.to_sockaddr(out->orig_src);
  out->app_pid = c.pid;
  out->app_uid = c.uid;
  out->app_cgroup_id = c.cgroup_id;
  copy_comm(out->app_comm, c.comm);
  out->user_len = std::min(c.user.size(), sizeof out->user);
  // A filter without --context has none: an empty vector's data() may be
  // null, which memcpy must never see (UBSan caught it), even for 0 bytes.
  if (out->user_len) std::memcpy(out->user, c.user.data(), out->user_len);
}

// The checks connredir_query_records and connredir_query_flow make on the
// caller's records buffer, before asking the kernel so that the answer does
// not depend on whether the socket happens to be redirected.
int check_records_buffer(const char* fn, const char* param, const void* buf, size_t cap,
                         size_t* len) {
  if (len) *len = 0;
  if (buf == nullptr)
    return failed(
        EINVAL,
        fmt::format("{}: {} is NULL; pass a buffer of CONNREDIR_RECORDS_MAX bytes", fn, param));
  if (cap < sizeof(connredir_records)) {
    if (len) *len = sizeof(connredir_records);
    return failed(ENOBUFS, fmt::format("{}: a {}-byte buffer cannot hold the {}-byte records; "
                                       "pass CONNREDIR_RECORDS_MAX bytes",
                                       fn, cap, sizeof(connredir_records)));
  }
  return 0;
}

// Copies the records the kernel returned into the caller's buffer.
int copy_records(const char* fn, const connredir::RecordsBlob& blob, void* buf, size_t cap,
                 size_t* len) {
  if (blob.size() > cap) {
    // A kernel of a newer ABI with larger records than this library knows.
    if (len) *len = blob.size();
    return failed(ENOBUFS, fmt::format("{}: the kernel returned {} bytes of records, more than "
                                       "the {}-byte buffer; library and kernel connredir ABI "
                                       "versions differ",
                                       fn, blob.size(), cap));
  }
  std::memcpy(buf, blob.data(), blob.size());
  if (len) *len = blob.size();
  return ok();
}

}  // namespace

extern "C" {

const char* connredir_last_error(void) { return t_last_error.c_str(); }

int connredir_query_records(int fd, void* buf, size_t cap, size_t* len) {
  return guarded("connredir_query_records", [&] {
    if (int rc = check_records_buffer("connredir_query_records", "buf", buf, cap, len); rc != 0)
      return rc;
    auto blob = connredir::query_records(fd);
    if (!blob) return failed(blob.error());
    return copy_records("connredir_query_records", *blob, buf, cap, len);
  });
}

int connredir_query_flow(int fd, void* records, size_t cap, size_t* records_len,
                         struct connredir_flow_context* ctx) {
  return guarded("connredir_query_flow", [&] {
    if (ctx == nullptr)
      return failed(EINVAL,
                    "connredir_query_flow: ctx is NULL; pass a struct connredir_flow_context");
    if (int rc = check_records_buffer("connredir_query_flow", "records", records, cap, records_len);
        rc != 0)
      return rc;
    std::memset(ctx, 0, sizeof *ctx);
    auto flow = connredir::query_flow(fd);
    if (!flow) return failed(flow.error());
    fill_flow_context(flow->context, ctx);
    return copy_records("connredir_query_flow", flow->records, records, cap, records_len);
  });
}

int connredir_set_records(int fd, const void* blob, size_t len) {
  return guarded("connredir_set_records", [&] {
    if (blob == nullptr)
      return failed(EINVAL,
                    "connredir_set_records: blob is NULL; pass the bytes "
                    "connredir_query_records returned");
    // The length is the kernel's to judge (it verifies the MAC over exactly
    // these bytes); a local check would only hide its answer.
    auto r = connredir::set_records(
        fd, std::span<const uint8_t>(static_cast<const uint8_t*>(blob), len));
    if (!r) return failed(r.error());
    return ok();
  });
}

int connredir_original_dst(int fd, struct sockaddr_storage* out, socklen_t* outlen) {
  return guarded("connredir_original_dst", [&] {
    if (outlen) *outlen = 0;
    if (out == nullptr)
      return failed(EINVAL, "connredir_original_dst: out is NULL; pass a struct sockaddr_storage");
    auto a = connredir::original_destination(fd);
    if (!a) return failed(a.error());
    socklen_t n = a->to_sockaddr(*out);
    if (outlen) *outlen = n;
    return ok();
  });
}

int connredir_query_context(int fd, struct connredir_flow_context* out) {
  return guarded("connredir_query_context", [&] {
    if (out == nullptr)
      return failed(EINVAL,
                    "connredir_query_context: out is NULL; pass a struct connredir_flow_context");
    std::memset(out, 0, sizeof *out);
    auto c = connredir::query_context(fd);
    if (!c) return failed(c.error());
    fill_flow_context(*c, out);
    return ok();
  });
}

int connredir_decode_chain(const void* blob, size_t len, struct connredir_chain* out) {
  return guarded("connredir_decode_chain", [&] {
    if (blob == nullptr || out == nullptr)
      return failed(EINVAL, fmt::format("connredir_decode_chain: {} is NULL",
                                        blob == nullptr ? "blob" : "out"));
    std::memset(out, 0, sizeof *out);
    auto r =
        connredir::decode_records(std::span<const uint8_t>(static_cast<const uint8_t*>(blob), len));
    if (!r) return failed(r.error().code, "connredir_decode_chain: " + r.error().message);
    out->flow_id = r->flow_id;
    out->hop_count = static_cast<unsigned>(std::min<size_t>(r->hops.size(), CONNREDIR_MAX_HOPS));
    for (unsigned i = 0; i < out->hop_count; i++) {
      const auto& h = r->hops[i];
      out->hops[i].callout_id = h.callout_id;
      out->hops[i].filter_id = h.filter_id;
      out->hops[i].dst_len = h.dst.to_sockaddr(out->hops[i].dst);
    }
    out->app_pid = r->origin.pid;
    out->app_uid = r->origin.uid;
    out->app_cgroup_id = r->origin.cgroup_id;
    copy_comm(out->app_comm, r->origin.comm);
    return ok();
  });
}

int connredir_format_addr(const struct sockaddr* sa, socklen_t len, char* buf, size_t cap) {
  return guarded("connredir_format_addr", [&] {
    if (buf == nullptr || cap == 0)
      return failed(EINVAL,
                    "connredir_format_addr: buf is NULL or cap is 0; pass "
                    "CONNREDIR_ADDRSTRLEN chars");
    buf[0] = '\0';
    if (sa == nullptr) return failed(EINVAL, "connredir_format_addr: sa is NULL");
    if (len >= static_cast<socklen_t>(sizeof(sa_family_t)) && sa->sa_family != AF_INET &&
        sa->sa_family != AF_INET6)
      return failed(EAFNOSUPPORT,
                    fmt::format("connredir_format_addr: address family {} is neither AF_INET nor "
                                "AF_INET6",
                                sa->sa_family));
    auto a = Address::from_sockaddr(sa, len);
    if (!a) return failed(a.error().code, "connredir_format_addr: " + a.error().message);
    std::string text = a->to_string();
    if (text.size() + 1 > cap)
      return failed(ENOBUFS,
                    fmt::format("connredir_format_addr: \"{}\" needs {} chars, the buffer has {}; "
                                "pass CONNREDIR_ADDRSTRLEN",
                                text, text.size() + 1, cap));
    std::memcpy(buf, text.c_str(), text.size() + 1);
    return ok();
  });
}

}  // extern "C"
