// `connredir trace`: the classifier's decisions, live, one line per
// classified connect, from the pinned ring buffer `trace_events`.
//
// The kernel builds events only while the lease in `trace_on` (a boot-time
// deadline) lies in the future; this command renews it every
// kLeaseRenewMs for kLeaseMs while it runs. A tracer that crashes or is
// killed (SIGKILL) cannot leave tracing on: its lease runs out within
// kLeaseMs and the programs stop building events. On a clean exit
// (count, timeout, SIGINT, SIGTERM) the lease is withdrawn at once unless
// another tracer renewed it since (then that tracer's lease stands).
// Filtering (--callout, --cgroup, --dst) is done here: the kernel records
// every classified connect while anyone traces.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "../control/system_util.hpp"
#include "commands.hpp"

namespace connredir::cli {
namespace {

constexpr uint64_t kLeaseMs = 2000;
constexpr uint64_t kLeaseRenewMs = 250;
constexpr int kPollMs = 100;  // also the longest an event waits to be shown

struct TraceArgs {
  std::string callout, cgroup, dst;
  uint64_t count = 0;  // 0 = until interrupted
  uint64_t timeout_ms = 0;
};

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

uint64_t clock_ns(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Each verdict's name (JSON) and what it means (the text form).
struct VerdictDesc {
  uint8_t code;
  const char* name;
  const char* text;
};
constexpr VerdictDesc kVerdicts[] = {
    {CONNREDIR_TV_REDIRECTED, "redirected", "redirected"},
    {CONNREDIR_TV_SELF_SKIP, "self_skip", "skipped: it redirected this flow already (self)"},
    {CONNREDIR_TV_PREV_SKIP, "prev_skip", "skipped: it redirected an earlier hop of the flow"},
    {CONNREDIR_TV_HOP_CAP, "hop_cap", "not taken: the chain is at its cap"},
    {CONNREDIR_TV_NO_PROXY_FAMILY, "no_proxy_family", "not taken: no proxy for the family"},
    {CONNREDIR_TV_STORAGE_FAIL, "storage_fail", "not taken: no memory for the socket's state"},
    {CONNREDIR_TV_NO_KEY, "no_key", "not taken: records MAC key not initialised"},
    {CONNREDIR_TV_DOWN_BYPASS, "down_bypass", "bypassed: proxy down"},
    {CONNREDIR_TV_DOWN_REFUSED, "down_refused", "refused: proxy down"},
    {CONNREDIR_TV_LOOP_BROKEN, "loop_broken",
     "not taken: hops carried over record-less proxies put the flow past the chain cap (loop "
     "breaker)"},
    {CONNREDIR_TV_PERMITTED, "permitted",
     "permitted: exempt from every lower-weight filter, goes direct"},
    {CONNREDIR_TV_BLOCKED, "blocked", "blocked: fails with EPERM"},
};

// What implicit records did at the connect (connredir_trace_event.implicit);
// "none" (not a principal's record-less onward connect) has no text line.
constexpr VerdictDesc kImplicit[] = {
    {CONNREDIR_TRACE_IMPLICIT_NONE, "none", nullptr},
    {CONNREDIR_TRACE_IMPLICIT_ATTACHED, "attached",
     "implicit records: the records of a flow this proxy accepted were attached"},
    {CONNREDIR_TRACE_IMPLICIT_AMBIGUOUS, "ambiguous",
     ("implicit records: none attached, the flows this proxy accepted for this destination have "
      "different chains (a new chain starts, hops carried)")},
    {CONNREDIR_TRACE_IMPLICIT_OFF, "off",
     "implicit records: off for this proxy's callout (a new chain starts, hops carried)"},
};

const VerdictDesc& implicit_desc(uint8_t v) {
  for (const auto& d : kImplicit)
    if (d.code == v) return d;
  return kImplicit[0];
}

const VerdictDesc* verdict_desc(uint8_t v) {
  for (const auto& d : kVerdicts)
    if (d.code == v) return &d;
  return nullptr;
}
const char* verdict_name(uint8_t v) {
  const auto* d = verdict_desc(v);
  return d ? d->name : "?";
}
const char* verdict_text(uint8_t v) {
  const auto* d = verdict_desc(v);
  return d ? d->text : "?";
}

const char* outcome_name(uint8_t o) {
  switch (o) {
    case CONNREDIR_TRACE_OUT_REDIRECTED:
      return "redirected";
    case CONNREDIR_TRACE_OUT_REFUSED:
      return "refused";
    case CONNREDIR_TRACE_OUT_BLOCKED:
      return "blocked";
    default:
      return "direct";
  }
}

class Tracer {
 public:
  Tracer(const TraceArgs& a, bool as_json, std::map<uint32_t, ctl::CalloutInfo> callouts,
         std::optional<uint32_t> callout, std::optional<ctl::CgroupRef> cgroup,
         std::optional<ctl::Prefix> dst)
      : a_(a),
        json_(as_json),
        callouts_(std::move(callouts)),
        callout_(callout),
        cgroup_(std::move(cgroup)),
        dst_(dst),
        start_boot_(clock_ns(CLOCK_BOOTTIME)),
        wall_minus_boot_(static_cast<int64_t>(clock_ns(CLOCK_REALTIME)) -
                         static_cast<int64_t>(start_boot_)) {}

  static int handle(void* self, void* data, size_t size) {
    return static_cast<Tracer*>(self)->event(data, size);
  }

  uint64_t shown() const { return shown_; }
  bool done() const { return a_.count && shown_ >= a_.count; }

 private:
  int event(const void* data, size_t size) {
    if (size < sizeof(connredir_trace_event)) return 0;
    connredir_trace_event ev;
    std::memcpy(&ev, data, sizeof ev);
    // Left in the ring by an earlier tracer's lease: not ours to show.
    if (ev.time_ns < start_boot_) return 0;
    if (done() || !wanted(ev)) return 0;
    print(ev);
    ++shown_;
    return 0;
  }

  bool wanted(const connredir_trace_event& ev) const {
    const uint32_t n = std::min<uint32_t>(ev.count, CONNREDIR_TRACE_VERDICTS_MAX);
    if (callout_) {
      bool hit = false;
      for (uint32_t i = 0; i < n; ++i) hit = hit || ev.verdicts[i].callout_id == *callout_;
      if (!hit) return false;
    }
    if (dst_) {
      auto d = Address::from_abi(ev.dst);
      uint8_t fam = d.family == AF_INET ? CONNREDIR_AF_INET : CONNREDIR_AF_INET6;
      if (!dst_->contains_address(fam, d.ip)) return false;
    }
    if (cgroup_ && ev.cgroup_id != cgroup_->id) {
      const auto& p = cgroup_path(ev.cgroup_id);
      if (!p || p->rfind(cgroup_->path + "/", 0) != 0) return false;
    }
    return true;
  }

  // A cgroup's path by id, remembered: finding it walks the whole cgroup
  // tree, far too slow to do per event (the ring overflowed). Cgroup ids are
  // never reused, so an entry cannot go stale; the cache is bounded anyway.
  const std::optional<std::string>& cgroup_path(uint64_t id) const {
    auto it = cg_paths_.find(id);
    if (it != cg_paths_.end()) return it->second;
    if (cg_paths_.size() >= 4096) cg_paths_.clear();
    return cg_paths_.emplace(id, ctl::cgroup_path_by_id(id)).first->second;
  }

  // Permit and block filters name no callout (id 0): "-".
  std::string callout_name(uint32_t id) const {
    if (id == 0) return "-";
    auto it = callouts_.find(id);
    return it == callouts_.end() ? fmt::format("callout-{}", id) : it->second.name;
  }

  std::optional<std::string> proxy_of(uint32_t id, const Address& dst) const {
    auto it = callouts_.find(id);
    if (it == callouts_.end()) return std::nullopt;
    const auto& p = dst.family == AF_INET ? it->second.proxy4 : it->second.proxy6;
    if (!p) return std::nullopt;
    return p->to_string();
  }

  std::string wall_time(uint64_t boot_ns) const {
    int64_t wall = static_cast<int64_t>(boot_ns) + wall_minus_boot_;
    time_t secs = static_cast<time_t>(wall / 1000000000);
    tm t{};
    gmtime_r(&secs, &t);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
    return fmt::format("{}.{:06}Z", buf, (wall % 1000000000) / 1000);
  }

  void print(const connredir_trace_event& ev) const {
    const auto dst = Address::from_abi(ev.dst);
    const uint32_t n = std::min<uint32_t>(ev.count, CONNREDIR_TRACE_VERDICTS_MAX);
    std::string comm(ev.comm, strnlen(ev.comm, sizeof ev.comm));
    const auto& cg_path = cgroup_path(ev.cgroup_id);
    std::optional<std::string> final_dst;
    if (ev.final_dst.family) final_dst = Address::from_abi(ev.final_dst).to_string();
    if (json_) {
      json verdicts = json::array();
      for (uint32_t i = 0; i < n; ++i) {
        const auto& v = ev.verdicts[i];
        json j = {{"callout", callout_name(v.callout_id)},
                  {"callout_id", v.callout_id},
                  {"filter_id", v.filter_id},
                  {"verdict", verdict_name(v.verdict)},
                  {"not_owner", (v.flags & CONNREDIR_TV_F_NOT_OWNER) != 0},
                  {"failure_refused", (v.flags & CONNREDIR_TV_F_FAILURE_REFUSED) != 0}};
        if (v.verdict == CONNREDIR_TV_REDIRECTED && final_dst) j["proxy"] = *final_dst;
        verdicts.push_back(j);
      }
      json j = {{"time", wall_time(ev.time_ns)},
                {"time_ns", ev.time_ns},
                {"pid", ev.pid},
                {"uid", ev.uid},
                {"comm", comm},
                {"cgroup_id", ev.cgroup_id},
                {"cgroup", cg_path ? json(*cg_path) : json(nullptr)},
                {"proto", ctl::proto_name(ev.proto)},
                {"dst", dst.to_string()},
                {"hops", ev.hops},
                {"implicit", implicit_desc(ev.implicit).name},
                {"carried_hops", ev.carried},
                {"verdicts", verdicts},
                {"truncated", ev.truncated != 0},
                {"outcome", outcome_name(ev.outcome)},
                {"final_dst", final_dst ? json(*final_dst) : json(nullptr)}};
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print("{} pid {} uid {} comm {} cgroup {} {} {} (chain {} long)\n",
                 wall_time(ev.time_ns), ev.pid, ev.uid, comm,
                 cg_path ? *cg_path : fmt::format("id {}", ev.cgroup_id), ctl::proto_name(ev.proto),
                 dst.to_string(), ev.hops);
      if (const char* t = implicit_desc(ev.implicit).text) fmt::print("  {}\n", t);
      if (ev.carried)
        fmt::print("  {} hop(s) carried over proxies that set no records\n", ev.carried);
      for (uint32_t i = 0; i < n; ++i) {
        const auto& v = ev.verdicts[i];
        std::string extra;
        if (v.verdict == CONNREDIR_TV_REDIRECTED && final_dst) extra = " to " + *final_dst;
        if (v.flags & CONNREDIR_TV_F_NOT_OWNER)
          extra += " (a listener its principal does not own is at the proxy address)";
        if (v.flags & CONNREDIR_TV_F_FAILURE_REFUSED) extra += "; refused (--on-failure refuse)";
        fmt::print("  {} (filter {}): {}{}\n", callout_name(v.callout_id), v.filter_id,
                   verdict_text(v.verdict), extra);
      }
      if (ev.truncated)
        fmt::print("  ... more candidates than an event holds ({})\n",
                   CONNREDIR_TRACE_VERDICTS_MAX);
      std::string where = final_dst ? *final_dst : dst.to_string();
      if (ev.outcome == CONNREDIR_TRACE_OUT_REFUSED) where = "ECONNREFUSED";
      if (ev.outcome == CONNREDIR_TRACE_OUT_BLOCKED) where = "EPERM (blocked)";
      fmt::print("  => {}\n", where);
    }
  }

  const TraceArgs& a_;
  bool json_;
  std::map<uint32_t, ctl::CalloutInfo> callouts_;
  std::optional<uint32_t> callout_;
  std::optional<ctl::CgroupRef> cgroup_;
  std::optional<ctl::Prefix> dst_;
  uint64_t start_boot_;
  int64_t wall_minus_boot_;
  uint64_t shown_ = 0;
  mutable std::map<uint64_t, std::optional<std::string>> cg_paths_;
};

uint64_t lost_now(ctl::KernelMapStore& store) {
  auto s = store.stats();
  return s && s->size() > CONNREDIR_STAT_TRACE_LOST ? (*s)[CONNREDIR_STAT_TRACE_LOST] : 0;
}

int cmd_trace(const std::string& pin_dir, const TraceArgs& a, bool as_json) {
  if (auto r = ctl::require_root(); !r) return report(r.error());
  std::optional<ctl::Prefix> dst;
  if (!a.dst.empty()) {
    auto p = ctl::parse_cidr(a.dst);
    if (!p) return usage(fmt::format("--dst {}: {}", a.dst, p.error().message));
    dst = *p;
  }
  std::optional<ctl::CgroupRef> cgroup;
  if (!a.cgroup.empty()) {
    auto c = ctl::resolve_cgroup(a.cgroup);
    if (!c) return usage(fmt::format("--cgroup {}: {}", a.cgroup, c.error().message));
    cgroup = *c;
  }
  auto store = ctl::KernelMapStore::open(pin_dir);
  if (!store) return report(store.error());
  ctl::Control c(**store);
  auto list = c.list_callouts();
  if (!list) return report(list.error());
  std::map<uint32_t, ctl::CalloutInfo> callouts;
  std::optional<uint32_t> callout;
  for (const auto& ci : *list) {
    callouts[ci.id] = ci;
    if (ci.name == a.callout) callout = ci.id;
  }
  if (!a.callout.empty() && !callout)
    return report(Error{
        ENOENT, fmt::format("no callout named '{}' (see `connredir callout list`)", a.callout)});

  auto ring = ctl::open_pinned_map(pin_dir, "trace_events");
  if (!ring) return report(ring.error());
  auto on = ctl::open_pinned_map(pin_dir, "trace_on");
  if (!on) return report(on.error());
  const int ring_fd = ring->get(), on_fd = on->get();
  const uint64_t lost_before = lost_now(**store);
  Tracer tracer(a, as_json, std::move(callouts), callout, cgroup, dst);
  ring_buffer* rb = ring_buffer__new(ring_fd, &Tracer::handle, &tracer, nullptr);
  if (!rb) {
    int e = errno;
    return report(Error{e, fmt::format("cannot read the trace ring buffer: {}", errno_text(e))});
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // The lease: extend, never shorten, another tracer's deadline.
  uint32_t zero = 0;
  uint64_t mine = 0;
  auto renew = [&]() -> Result<void> {
    uint64_t cur = 0;
    if (bpf_map_lookup_elem(on_fd, &zero, &cur) != 0) {
      int e = errno;
      return fail(e, fmt::format("reading map trace_on: {}", errno_text(e)));
    }
    uint64_t want = clock_ns(CLOCK_BOOTTIME) + kLeaseMs * 1000000ull;
    if (cur > want) return {};
    if (bpf_map_update_elem(on_fd, &zero, &want, BPF_ANY) != 0) {
      int e = errno;
      return fail(e, fmt::format("writing map trace_on: {}", errno_text(e)));
    }
    mine = want;
    return {};
  };
  int rc = 0;
  Result<void> err;
  if (err = renew(); err) {
    fmt::print(stderr, "tracing classifier decisions at {} (Ctrl-C to stop)\n", pin_dir);
    std::fflush(stderr);
    const uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
    uint64_t last_renew = t0;
    while (!g_stop && !tracer.done()) {
      int n = ring_buffer__poll(rb, kPollMs);
      // The kernel wakes us only once a quarter of the ring waits (a
      // wake-up per event cost ~10 us per traced connect): read what the
      // timeout left behind too. poll only reads rings that woke it.
      if (n >= 0 || n == -EINTR) {
        int m = ring_buffer__consume(rb);
        n = m < 0 ? m : n;
      }
      // Once per batch, not per event: a write per event is what made a
      // tracer writing to a pipe fall behind under load.
      std::fflush(stdout);
      if (n < 0 && n != -EINTR) {
        err = fail(-n, fmt::format("reading the trace ring buffer: {}", errno_text(-n)));
        break;
      }
      const uint64_t now = clock_ns(CLOCK_MONOTONIC);
      if (a.timeout_ms && now - t0 >= a.timeout_ms * 1000000ull) break;
      if (now - last_renew >= kLeaseRenewMs * 1000000ull) {
        if (err = renew(); !err) break;
        last_renew = now;
      }
    }
    // Events already in the ring when we stopped.
    if (!tracer.done()) ring_buffer__consume(rb);
    std::fflush(stdout);
  }
  // Withdraw our lease unless another tracer holds a later one.
  uint64_t cur = 0;
  if (mine && bpf_map_lookup_elem(on_fd, &zero, &cur) == 0 && cur == mine) {
    uint64_t off = 0;
    (void)bpf_map_update_elem(on_fd, &zero, &off, BPF_ANY);
  }
  ring_buffer__free(rb);
  const uint64_t lost = lost_now(**store) - lost_before;
  fmt::print(stderr, "trace: {} events shown, {} events lost{}\n", tracer.shown(), lost,
             lost ? " (the ring buffer was full: fewer filters or a faster reader)" : "");
  if (!err) rc = report(err.error());
  return rc;
}

}  // namespace

void add_trace_command(CLI::App& app, Globals& g, Commands& out) {
  auto a = std::make_shared<TraceArgs>();
  auto* t = app.add_subcommand("trace", "show the classifier's decisions live, one per connect");
  t->add_option("--callout", a->callout, "only connects this callout was a candidate for");
  t->add_option("--cgroup", a->cgroup, "only applications in this cgroup (or below)");
  t->add_option("--dst", a->dst, "only connects to this CIDR");
  t->add_flag("--json", g.as_json, "one JSON object per line");
  t->add_option("--count", a->count, "stop after N events (default: until Ctrl-C)");
  t->add_option("--timeout-ms", a->timeout_ms, "stop after this many milliseconds");
  t->footer(
      "Events are built in the kernel only while a trace runs (a lease renewed every 250 ms, "
      "lapsing 2 s after a tracer dies). Lost events (ring buffer full) are counted and "
      "reported on exit. docs/TRACE.md.");
  out.push_back({t, [&g, a] { return cmd_trace(g.pin_dir, *a, g.as_json); }});
}

}  // namespace connredir::cli
