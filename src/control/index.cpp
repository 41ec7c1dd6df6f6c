// The classifier index: for every destination prefix some filter uses, the
// filters whose destination contains it, in classification order. A
// longest-prefix match of a destination address then yields exactly the
// filters that contain the address.
#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

int key_bits(uint8_t fam) { return fam == CONNREDIR_LPM_FAM_V4 ? 32 : 128; }

std::array<uint8_t, 16> mask_bits(std::array<uint8_t, 16> a, int len, int bits) {
  for (int i = len; i < bits; ++i) a[i / 8] &= static_cast<uint8_t>(~(0x80 >> (i % 8)));
  return a;
}

// Highest address of the prefix (host bits set), for range scans.
std::array<uint8_t, 16> fill_bits(std::array<uint8_t, 16> a, int len, int bits) {
  for (int i = len; i < bits; ++i) a[i / 8] |= static_cast<uint8_t>(0x80 >> (i % 8));
  return a;
}

std::string overflow_message(const IndexKey& k, size_t n) {
  return fmt::format(
      "refused: destination prefix {} would have {} overlapping filters; at most {} "
      "(CONNREDIR_CANDIDATES_MAX) filters may contain one destination prefix. Delete or "
      "narrow overlapping filters",
      k.to_string(), n, CONNREDIR_CANDIDATES_MAX);
}

std::string prefixes_message() {
  return fmt::format(
      "refused: the index would need more than {} (CONNREDIR_MAX_PREFIXES) "
      "distinct destination prefixes",
      CONNREDIR_MAX_PREFIXES);
}

}  // namespace

std::string IndexKey::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (fam == CONNREDIR_LPM_FAM_V4)
    inet_ntop(AF_INET, addr.data(), buf, sizeof buf);
  else
    inet_ntop(AF_INET6, addr.data(), buf, sizeof buf);
  return fmt::format("{}/{}", buf, len);
}

connredir_lpm_key to_lpm_key(const IndexKey& k) {
  connredir_lpm_key out;
  std::memset(&out, 0, sizeof out);
  out.prefixlen = 8u + k.len;
  out.family = k.fam;
  auto a = mask_bits(k.addr, k.len, 128);
  std::memcpy(out.addr, a.data(), k.fam == CONNREDIR_LPM_FAM_V4 ? 4 : 16);
  return out;
}

Result<IndexKey> from_lpm_key(const connredir_lpm_key& k) {
  IndexKey out;
  if (k.family != CONNREDIR_LPM_FAM_V4 && k.family != CONNREDIR_LPM_FAM_V6)
    return fail(EINVAL, fmt::format("index key with unknown family {}", k.family));
  out.fam = k.family;
  int bits = key_bits(out.fam);
  if (k.prefixlen < 8 || k.prefixlen > 8u + bits)
    return fail(EINVAL, fmt::format("index key with prefix length {}", k.prefixlen));
  out.len = static_cast<uint8_t>(k.prefixlen - 8);
  std::memcpy(out.addr.data(), k.addr, out.fam == CONNREDIR_LPM_FAM_V4 ? 4 : 16);
  out.addr = mask_bits(out.addr, out.len, 128);
  return out;
}

std::vector<IndexKey> index_keys(const Prefix& p) {
  if (p.family == 0)
    return {IndexKey{CONNREDIR_LPM_FAM_V4, {}, 0}, IndexKey{CONNREDIR_LPM_FAM_V6, {}, 0}};
  IndexKey k;
  k.len = p.len;
  if (p.family == CONNREDIR_AF_INET) {
    k.fam = CONNREDIR_LPM_FAM_V4;
    std::memcpy(k.addr.data(), p.addr.data() + 12, 4);
  } else {
    k.fam = CONNREDIR_LPM_FAM_V6;
    k.addr = p.addr;
  }
  k.addr = mask_bits(k.addr, k.len, 128);
  return {k};
}

IndexKey address_key(uint8_t family, const std::array<uint8_t, 16>& ip) {
  Prefix p{family, static_cast<uint8_t>(family == CONNREDIR_AF_INET ? 32 : 128), ip};
  return index_keys(p).front();
}

IndexPlanner::IndexPlanner(std::span<const IndexFilter> filters) {
  for (const auto& f : filters) add(f);
}

void IndexPlanner::add(const IndexFilter& f) {
  filters_[f.id] = f;
  for (const auto& k : index_keys(f.dst)) at_[k].push_back(f.id);
}

void IndexPlanner::remove(uint32_t id) {
  auto it = filters_.find(id);
  if (it == filters_.end()) return;
  for (const auto& k : index_keys(it->second.dst)) {
    auto a = at_.find(k);
    if (a == at_.end()) continue;
    std::erase(a->second, id);
    if (a->second.empty()) at_.erase(a);
  }
  filters_.erase(it);
}

void IndexPlanner::sort_ids(std::vector<uint32_t>& ids) const {
  std::sort(ids.begin(), ids.end(), [&](uint32_t a, uint32_t b) {
    const auto& fa = filters_.at(a);
    const auto& fb = filters_.at(b);
    if (fa.weight != fb.weight) return fa.weight > fb.weight;
    if (fa.seq != fb.seq) return fa.seq < fb.seq;
    return fa.id < fb.id;
  });
}

// Filters containing prefix k: those living at k or at one of its ancestors.
std::vector<uint32_t> IndexPlanner::candidates(const IndexKey& k) const {
  std::vector<uint32_t> ids;
  for (int l = 0; l <= k.len; ++l) {
    IndexKey anc{k.fam, mask_bits(k.addr, l, 128), static_cast<uint8_t>(l)};
    if (auto it = at_.find(anc); it != at_.end())
      ids.insert(ids.end(), it->second.begin(), it->second.end());
  }
  return ids;
}

namespace {
// Existing keys of `at` inside prefix k (k itself included if present).
template <class Map>
std::vector<IndexKey> keys_within(const Map& at, const IndexKey& k) {
  std::vector<IndexKey> out;
  int bits = key_bits(k.fam);
  IndexKey lo{k.fam, k.addr, 0};
  IndexKey hi{k.fam, fill_bits(k.addr, k.len, bits), 255};
  for (auto it = at.lower_bound(lo); it != at.end() && !(hi < it->first); ++it)
    if (it->first.len >= k.len) out.push_back(it->first);
  return out;
}
}  // namespace

Result<std::vector<IndexWrite>> IndexPlanner::plan_add(const IndexFilter& f) const {
  if (filters_.count(f.id)) return fail(EEXIST, fmt::format("filter id {} exists", f.id));
  // Sort with f included without copying the planner.
  auto less = [&](uint32_t a, uint32_t b) {
    const auto& fa = a == f.id ? f : filters_.at(a);
    const auto& fb = b == f.id ? f : filters_.at(b);
    if (fa.weight != fb.weight) return fa.weight > fb.weight;
    if (fa.seq != fb.seq) return fa.seq < fb.seq;
    return fa.id < fb.id;
  };
  std::vector<IndexWrite> writes;
  size_t new_prefixes = 0;
  for (const auto& kf : index_keys(f.dst)) {
    auto affected = keys_within(at_, kf);
    if (!at_.count(kf)) {
      affected.insert(affected.begin(), kf);
      ++new_prefixes;
    }
    for (const auto& k : affected) {
      auto ids = candidates(k);
      ids.push_back(f.id);
      if (ids.size() > CONNREDIR_CANDIDATES_MAX)
        return fail(E2BIG, overflow_message(k, ids.size()));
      std::sort(ids.begin(), ids.end(), less);
      writes.push_back(IndexWrite{k, std::move(ids)});
    }
  }
  if (at_.size() + new_prefixes > CONNREDIR_MAX_PREFIXES) return fail(E2BIG, prefixes_message());
  return writes;
}

Result<std::vector<IndexWrite>> IndexPlanner::plan_remove(uint32_t id) const {
  auto it = filters_.find(id);
  if (it == filters_.end()) return fail(ENOENT, fmt::format("no filter with id {}", id));
  std::vector<IndexWrite> writes;
  for (const auto& kf : index_keys(it->second.dst)) {
    for (const auto& k : keys_within(at_, kf)) {
      if (k == kf && at_.at(k).size() == 1) {
        writes.push_back(IndexWrite{k, {}});  // only this filter used the prefix
        continue;
      }
      auto ids = candidates(k);
      std::erase(ids, id);
      sort_ids(ids);
      writes.push_back(IndexWrite{k, std::move(ids)});
    }
  }
  return writes;
}

Index IndexPlanner::build() const {
  Index idx;
  for (const auto& [k, _] : at_) {
    auto ids = candidates(k);
    sort_ids(ids);
    idx.emplace(k, std::move(ids));
  }
  return idx;
}

Result<Index> build_index(std::span<const IndexFilter> filters) {
  IndexPlanner p(filters);
  if (p.prefix_count() > CONNREDIR_MAX_PREFIXES) return fail(E2BIG, prefixes_message());
  Index idx = p.build();
  for (const auto& [k, ids] : idx)
    if (ids.size() > CONNREDIR_CANDIDATES_MAX) return fail(E2BIG, overflow_message(k, ids.size()));
  return idx;
}

std::vector<uint32_t> index_lookup(const Index& index, uint8_t family,
                                   const std::array<uint8_t, 16>& ip) {
  IndexKey full = address_key(family, ip);
  for (int l = full.len; l >= 0; --l) {
    IndexKey k{full.fam, mask_bits(full.addr, l, 128), static_cast<uint8_t>(l)};
    if (auto it = index.find(k); it != index.end()) return it->second;
  }
  return {};
}

std::vector<IndexWrite> index_diff(const Index& from, const Index& to) {
  std::vector<IndexWrite> out;
  for (const auto& [k, ids] : to) {
    auto it = from.find(k);
    if (it == from.end() || it->second != ids) out.push_back(IndexWrite{k, ids});
  }
  for (const auto& [k, ids] : from)
    if (!to.count(k)) out.push_back(IndexWrite{k, {}});
  return out;
}

}  // namespace connredir::control
