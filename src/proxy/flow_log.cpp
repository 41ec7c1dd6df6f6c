#include "flow_log.hpp"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "connredir/error.hpp"

namespace connredir::proxy {

namespace {

using Json = nlohmann::ordered_json;  // keys in the documented order

template <class T>
Json opt(const std::optional<T>& v) {
  return v ? Json(*v) : Json(nullptr);
}

}  // namespace

void describe_flow(FlowRecord& rec, std::span<const uint8_t> records, const Context* ctx) {
  if (!records.empty()) {
    if (auto info = decode_records(records)) {
      rec.flow_id = info->flow_id;
      for (const Hop& h : info->hops)
        rec.chain.push_back(ChainEntry{h.callout_id, h.filter_id, h.dst.to_string()});
      rec.pid = info->origin.pid;
      rec.uid = info->origin.uid;
      rec.comm = info->origin.comm;
      if (info->origin.src.family != 0) rec.orig_src = info->origin.src.to_string();
    }
  }
  if (!ctx) return;
  rec.flow_id = ctx->flow_id;
  rec.callout_id = ctx->callout_id;
  rec.filter_id = ctx->filter_id;
  rec.hop = ctx->hop;
  rec.pid = ctx->pid;
  rec.uid = ctx->uid;
  rec.comm = ctx->comm;
  if (ctx->orig_src.family != 0) rec.orig_src = ctx->orig_src.to_string();
  if (ctx->orig_dst.family != 0) rec.orig_dst = ctx->orig_dst.to_string();
}

std::string format_flow_json(const FlowRecord& r) {
  Json chain = Json::array();
  for (const auto& h : r.chain) {
    chain.push_back({{"callout_id", h.callout_id}, {"filter_id", h.filter_id}, {"dst", h.dst}});
  }
  Json j = {
      {"name", r.name},
      {"flow_id", r.flow_id},
      {"chain", std::move(chain)},
      {"callout_id", opt(r.callout_id)},
      {"filter_id", opt(r.filter_id)},
      {"hop", opt(r.hop)},
      {"orig_dst", opt(r.orig_dst)},
      {"orig_src", opt(r.orig_src)},
      {"pid", opt(r.pid)},
      {"uid", opt(r.uid)},
      {"comm", opt(r.comm)},
      {"client", r.client},
      {"listen", r.listen},
      {"propagated", r.propagated},
      {"bytes_up", r.bytes_up},
      {"bytes_down", r.bytes_down},
      {"duration_ms", r.duration_ms},
      {"result", r.result},
      {"proto", r.proto},
      {"dropped", opt(r.dropped)},
  };
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string FlowLog::open(const std::string& path) {
  path_ = path;
  if (path == "-") {
    stdout_ = true;
    return {};
  }
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int e = errno;
    return "cannot open log file " + path + ": " + errno_text(e) +
           "; check that the directory exists and is writable by this user, or pass another "
           "--log path";
  }
  fd_.reset(fd);
  return {};
}

void FlowLog::write(const FlowRecord& r) {
  if (!enabled()) return;
  std::string line = format_flow_json(r);
  line.push_back('\n');
  const int fd = stdout_ ? STDOUT_FILENO : fd_.get();
  size_t off = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(fd, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : EIO;
      if (e != last_errno_) {
        std::fprintf(stderr,
                     "connredir-proxy: writing the flow log %s failed: %s; flow lines are being "
                     "lost, free disk space or fix the file's permissions\n",
                     path_.c_str(), errno_text(e).c_str());
        last_errno_ = e;
      }
      return;
    }
    off += static_cast<size_t>(n);
  }
  last_errno_ = 0;
}

}  // namespace connredir::proxy
