// MapStore implementations: the pinned kernel maps and an in-memory fake.

// GCC 12 at -O3 (also 13) reports a bogus -Wstringop-overread in MemoryMapStore's
// std::map<Bytes, Bytes>: std::less<std::vector<uint8_t>> inlines libstdc++'s
// lexicographical_compare_three_way, whose memcmp length is the smaller of the two vector sizes,
// and GCC's range analysis cannot prove that size non-negative, so it warns about a bound of
// [2^63, 2^64). A compiler false positive (the keys are a few bytes long). The warning fires in an
// out-of-line libstdc++ instantiation whose inline stack holds only header locations, so a
// pragma around MemoryMapStore cannot reach it: it has to precede the first standard header.
// Only this warning, only GCC, only this file.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#pragma GCC diagnostic ignored "-Wstringop-overread"
#endif

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

constexpr MapId kAllMaps[] = {MapId::Callouts,   MapId::Filters,       MapId::FilterIndex,
                              MapId::Principals, MapId::PrincipalsGen, MapId::Secret,
                              MapId::FlowSeq,    MapId::Stats,         MapId::CalloutStats};

bool is_per_cpu(MapId id) { return id == MapId::Stats || id == MapId::CalloutStats; }

bool is_array(MapId id) {
  return id == MapId::Callouts || id == MapId::Secret || id == MapId::FlowSeq ||
         id == MapId::PrincipalsGen || is_per_cpu(id);
}

uint32_t capacity(MapId id) {
  switch (id) {
    case MapId::Callouts:
      return CONNREDIR_MAX_CALLOUTS;
    case MapId::Filters:
      return CONNREDIR_MAX_FILTERS;
    case MapId::FilterIndex:
      return CONNREDIR_MAX_PREFIXES;
    case MapId::Principals:
      return CONNREDIR_PRINCIPALS_MAX;
    case MapId::Secret:
    case MapId::FlowSeq:
    case MapId::PrincipalsGen:
      return 1;
    case MapId::Stats:
      return CONNREDIR_STAT_MAX;
    case MapId::CalloutStats:
      return CONNREDIR_CALLOUT_STATS_ENTRIES;
  }
  return 0;
}

}  // namespace

const char* map_name(MapId id) {
  switch (id) {
    case MapId::Callouts:
      return "callouts";
    case MapId::Filters:
      return "filters";
    case MapId::FilterIndex:
      return "filter_index";
    case MapId::Principals:
      return "principals";
    case MapId::PrincipalsGen:
      return "principals_gen";
    case MapId::Secret:
      return "secret";
    case MapId::FlowSeq:
      return "flowseq";
    case MapId::Stats:
      return "stats";
    case MapId::CalloutStats:
      return "callout_stats";
  }
  return "?";
}

size_t map_key_size(MapId id) {
  switch (id) {
    case MapId::FilterIndex:
      return sizeof(connredir_lpm_key);
    case MapId::Principals:
      return sizeof(connredir_principal_key);
    default:
      return sizeof(uint32_t);
  }
}

size_t map_value_size(MapId id) {
  switch (id) {
    case MapId::Callouts:
      return sizeof(connredir_callout);
    case MapId::Filters:
      return sizeof(connredir_filter);
    case MapId::FilterIndex:
      return sizeof(connredir_candidates);
    case MapId::Principals:
      return sizeof(uint32_t);
    case MapId::Secret:
      return sizeof(connredir_secret);
    case MapId::FlowSeq:
    case MapId::PrincipalsGen:
    case MapId::Stats:
    case MapId::CalloutStats:
      return sizeof(uint64_t);
  }
  return 0;
}

// ---- MemoryMapStore ----------------------------------------------------------

MemoryMapStore::MemoryMapStore() {
  for (MapId id : kAllMaps) {
    auto& m = maps_[id];
    if (!is_array(id)) continue;
    for (uint32_t i = 0; i < capacity(id); ++i) {
      Bytes k(sizeof i);
      std::memcpy(k.data(), &i, sizeof i);
      m[k] = Bytes(map_value_size(id), 0);
    }
  }
}

size_t MemoryMapStore::size(MapId id) const { return maps_.at(id).size(); }

Result<bool> MemoryMapStore::lookup(MapId id, const void* key, void* value) {
  const auto* k = static_cast<const uint8_t*>(key);
  const auto& m = maps_.at(id);
  auto it = m.find(Bytes(k, k + map_key_size(id)));
  if (it == m.end()) return false;
  std::memcpy(value, it->second.data(), it->second.size());
  return true;
}

Result<void> MemoryMapStore::update(MapId id, const void* key, const void* value) {
  log.push_back(fmt::format("update {}", map_name(id)));
  if (fail_after > 0 && --fail_after == 0) return fail(EIO, "injected failure");
  const auto* k = static_cast<const uint8_t*>(key);
  const auto* v = static_cast<const uint8_t*>(value);
  auto& m = maps_.at(id);
  Bytes kb(k, k + map_key_size(id));
  if (is_array(id)) {
    if (!m.count(kb)) return fail(E2BIG, fmt::format("{}: index out of range", map_name(id)));
  } else if (!m.count(kb) && m.size() >= capacity(id)) {
    return fail(E2BIG, fmt::format("{}: map full", map_name(id)));
  }
  m[kb] = Bytes(v, v + map_value_size(id));
  return {};
}

Result<bool> MemoryMapStore::erase(MapId id, const void* key) {
  log.push_back(fmt::format("erase {}", map_name(id)));
  if (fail_after > 0 && --fail_after == 0) return fail(EIO, "injected failure");
  const auto* k = static_cast<const uint8_t*>(key);
  auto& m = maps_.at(id);
  Bytes kb(k, k + map_key_size(id));
  auto it = m.find(kb);
  if (it == m.end()) return false;
  if (is_array(id))
    std::fill(it->second.begin(), it->second.end(), 0);
  else
    m.erase(it);
  return true;
}

Result<std::vector<std::vector<uint8_t>>> MemoryMapStore::keys(MapId id) {
  std::vector<std::vector<uint8_t>> out;
  for (const auto& [k, _] : maps_.at(id)) out.push_back(k);
  return out;
}

Result<std::vector<uint64_t>> MemoryMapStore::stats() { return stat_values; }

// ---- KernelMapStore ----------------------------------------------------------

Result<std::unique_ptr<KernelMapStore>> KernelMapStore::open(const std::string& pin_dir) {
  std::unique_ptr<KernelMapStore> s(new KernelMapStore());
  for (MapId id : kAllMaps) {
    std::string path = fmt::format("{}/maps/{}", pin_dir, map_name(id));
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) {
      int e = errno;
      if (e == ENOENT)
        return fail(ENOENT, fmt::format("connredir is not up at {} ({} is missing): run `connredir "
                                        "up`",
                                        pin_dir, path));
      if (e == EPERM || e == EACCES)
        return fail(e, fmt::format("cannot open {}: {}: connredir must run as root (it loads BPF "
                                   "programs)",
                                   path, errno_text(e)));
      return fail(e, fmt::format("cannot open pinned map {}: {}", path, errno_text(e)));
    }
    s->fds_[id] = fd;
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) {
      int e = errno;
      return fail(e, fmt::format("cannot inspect pinned map {}: {}", path, errno_text(e)));
    }
    if (info.key_size != map_key_size(id) || info.value_size != map_value_size(id))
      return fail(
          EPROTO,
          fmt::format("pinned map {} has key/value size {}/{}, this connredir expects "
                      "{}/{}: the maps come from a different build; run `connredir down` "
                      "then `connredir up`",
                      path, info.key_size, info.value_size, map_key_size(id), map_value_size(id)));
  }
  return s;
}

KernelMapStore::~KernelMapStore() {
  for (auto& [_, fd] : fds_) close(fd);
}

// Per-CPU maps hold one value per possible CPU: a buffer of map_value_size
// bytes would be overrun by the kernel.
namespace {
Result<size_t> possible_cpus() {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0)
    return fail(-ncpu, "cannot count possible CPUs (/sys/devices/system/cpu/possible)");
  return static_cast<size_t>(ncpu);
}
}  // namespace

Result<bool> KernelMapStore::lookup(MapId id, const void* key, void* value) {
  if (is_per_cpu(id)) {
    auto ncpu = possible_cpus();
    if (!ncpu) return tl::unexpected(ncpu.error());
    std::vector<uint64_t> per(*ncpu);
    if (bpf_map_lookup_elem(fds_.at(id), key, per.data()) != 0) {
      int e = errno;
      if (e == ENOENT) return false;
      return fail(e, fmt::format("reading map {}: {}", map_name(id), errno_text(e)));
    }
    uint64_t sum = 0;
    for (uint64_t v : per) sum += v;
    std::memcpy(value, &sum, sizeof sum);
    return true;
  }
  if (bpf_map_lookup_elem(fds_.at(id), key, value) == 0) return true;
  int e = errno;
  if (e == ENOENT) return false;
  return fail(e, fmt::format("reading map {}: {}", map_name(id), errno_text(e)));
}

Result<void> KernelMapStore::update(MapId id, const void* key, const void* value) {
  if (is_per_cpu(id))
    return fail(EINVAL, fmt::format("map {} is per CPU and written by the BPF programs only; "
                                    "erase zeroes an entry",
                                    map_name(id)));
  if (bpf_map_update_elem(fds_.at(id), key, value, BPF_ANY) == 0) return {};
  int e = errno;
  return fail(e, fmt::format("writing map {}: {}", map_name(id), errno_text(e)));
}

Result<bool> KernelMapStore::erase(MapId id, const void* key) {
  if (is_per_cpu(id)) {
    auto ncpu = possible_cpus();
    if (!ncpu) return tl::unexpected(ncpu.error());
    std::vector<uint64_t> zero(*ncpu, 0);
    if (bpf_map_update_elem(fds_.at(id), key, zero.data(), BPF_ANY) != 0) {
      int e = errno;
      return fail(e, fmt::format("zeroing an entry of map {}: {}", map_name(id), errno_text(e)));
    }
    return true;
  }
  if (is_array(id)) {
    std::vector<uint8_t> zero(map_value_size(id), 0);
    auto r = update(id, key, zero.data());
    if (!r) return tl::unexpected(r.error());
    return true;
  }
  if (bpf_map_delete_elem(fds_.at(id), key) == 0) return true;
  int e = errno;
  if (e == ENOENT) return false;
  return fail(e, fmt::format("deleting from map {}: {}", map_name(id), errno_text(e)));
}

Result<std::vector<std::vector<uint8_t>>> KernelMapStore::keys(MapId id) {
  std::vector<std::vector<uint8_t>> out;
  size_t ks = map_key_size(id);
  std::vector<uint8_t> cur(ks), next(ks);
  const void* prev = nullptr;
  while (true) {
    if (bpf_map_get_next_key(fds_.at(id), prev, next.data()) != 0) {
      int e = errno;
      if (e == ENOENT) break;
      return fail(e, fmt::format("listing map {}: {}", map_name(id), errno_text(e)));
    }
    out.push_back(next);
    cur = next;
    prev = cur.data();
    if (out.size() > capacity(id) + 16u)
      return fail(EIO, fmt::format("listing map {}: more keys than its capacity", map_name(id)));
  }
  return out;
}

Result<std::vector<uint64_t>> KernelMapStore::stats() {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return fail(-ncpu, "cannot count possible CPUs");
  std::vector<uint64_t> sums(CONNREDIR_STAT_MAX, 0), per(ncpu);
  for (uint32_t i = 0; i < CONNREDIR_STAT_MAX; ++i) {
    if (bpf_map_lookup_elem(fds_.at(MapId::Stats), &i, per.data()) != 0) {
      int e = errno;
      return fail(e, fmt::format("reading map stats: {}", errno_text(e)));
    }
    for (uint64_t v : per) sums[i] += v;
  }
  return sums;
}

}  // namespace connredir::control
