// connredir control plane: callouts, filters, principals and the classifier
// index, kept in the pinned BPF maps. All map access goes through MapStore so
// the logic runs against an in-memory fake in unit tests and against the
// pinned kernel maps in the CLI. Errors are values (connredir::Result).
//
// Library targets: connredir_control (everything below except the
// "Lifecycle" section) and connredir_loader (the Lifecycle section; needs the
// BPF skeleton).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "connredir/address.hpp"
#include "connredir/error.hpp"

extern "C" {
#include "connredir_abi.h"
}

namespace connredir::control {

inline constexpr const char* kDefaultPinDir = "/sys/fs/bpf/connredir";
inline constexpr uint32_t kProtoAny = CONNREDIR_PROTO_ANY;
inline constexpr uint32_t kProtoTcp = CONNREDIR_PROTO_TCP;
inline constexpr uint32_t kProtoUdp = CONNREDIR_PROTO_UDP;

// ---- Parsing (pure) --------------------------------------------------------

// A destination prefix. family: 0 = any (both families, length 0),
// CONNREDIR_AF_INET or CONNREDIR_AF_INET6. addr is 16 bytes; IPv4 is stored
// v4-mapped (::ffff:a.b.c.d) and len counts IPv4 bits (0..32).
struct Prefix {
  uint8_t family = 0;
  uint8_t len = 0;
  std::array<uint8_t, 16> addr{};

  static Prefix any() { return Prefix{}; }
  // True if every address of `inner` is in this prefix (same family; "any"
  // contains everything).
  bool contains(const Prefix& inner) const;
  // True if `ip` (v4-mapped for IPv4) of `family` is in this prefix.
  bool contains_address(uint8_t family, const std::array<uint8_t, 16>& ip) const;
  std::string to_string() const;  // "10.0.0.0/8", "2001:db8::/32", "any"
  auto operator<=>(const Prefix&) const = default;
};

// "a.b.c.d/len", "v6addr/len", or a bare address (host route). Host bits must
// be zero: "10.1.2.3/8" is refused with a message naming 10.0.0.0/8.
// IPv4-mapped IPv6 prefixes (::ffff:a.b.c.d/96+n) become IPv4 /n, because
// the kernel classifies v4-mapped connects as IPv4.
Result<Prefix> parse_cidr(std::string_view text);

// Destination port range, host order, inclusive. 0..65535 = any port.
struct PortRange {
  uint16_t lo = 0;
  uint16_t hi = 65535;
  bool any() const { return lo == 0 && hi == 65535; }
  bool contains(uint16_t port) const { return port >= lo && port <= hi; }
  std::string to_string() const;  // "any", "443", "8000-8080"
  auto operator<=>(const PortRange&) const = default;
};
// "P" or "P-Q", 1 <= P <= Q <= 65535.
Result<PortRange> parse_port_range(std::string_view text);

// 1..31 characters of [A-Za-z0-9_.-].
Result<void> validate_callout_name(std::string_view name);
// Decimal unsigned integer within [lo, hi]; `what` names it in the message.
Result<uint64_t> parse_uint(std::string_view text, std::string_view what, uint64_t lo, uint64_t hi);
// "tcp" -> 6, "udp" -> 17, "any" -> 0.
Result<uint8_t> parse_proto(std::string_view text);
// The inverse: "tcp", "udp", "any" (or "proto N").
std::string proto_name(uint8_t proto);

// What a matching filter does (WFP's filter actions). The classifier walks a
// connect's filters by weight and stops at the first matching one that
// redirects the flow, permits it or blocks it.
enum class FilterAction : uint8_t {
  Redirect = CONNREDIR_ACTION_REDIRECT,  // to its callout's proxy (TCP)
  Permit = CONNREDIR_ACTION_PERMIT,      // exempt from every lower-weight filter: direct
  Block = CONNREDIR_ACTION_BLOCK,        // the connect or UDP send fails with EPERM
};
const char* to_string(FilterAction a);
Result<FilterAction> parse_filter_action(std::string_view text);

// ---- The classifier index (pure) -------------------------------------------

// What the index needs to know about a filter.
struct IndexFilter {
  uint32_t id = 0;
  uint32_t weight = 0;
  uint64_t seq = 0;
  Prefix dst;
};

// A key of the filter_index LPM trie in comparable form. fam is
// CONNREDIR_LPM_FAM_V4/_V6; addr holds the family's address bytes (IPv4 in
// addr[0..3]) with host bits zero; len is the CIDR length (the trie key's
// prefixlen is 8 + len).
struct IndexKey {
  uint8_t fam = 0;
  std::array<uint8_t, 16> addr{};
  uint8_t len = 0;
  auto operator<=>(const IndexKey&) const = default;
  std::string to_string() const;
};
connredir_lpm_key to_lpm_key(const IndexKey& k);
Result<IndexKey> from_lpm_key(const connredir_lpm_key& k);
// The one or two index keys a filter's destination lives at ("any" lives at
// /0 of both families).
std::vector<IndexKey> index_keys(const Prefix& p);
// Lookup key for a destination address (full length).
IndexKey address_key(uint8_t family, const std::array<uint8_t, 16>& ip);

// Index content: key -> candidate filter ids in classification order.
using Index = std::map<IndexKey, std::vector<uint32_t>>;

// One write to apply to the trie: ids empty means delete the key.
struct IndexWrite {
  IndexKey key;
  std::vector<uint32_t> ids;
  bool erase() const { return ids.empty(); }
};

// Incremental planner over the current set of filters. Plans contain exactly
// the entries whose value changes.
class IndexPlanner {
 public:
  IndexPlanner() = default;
  explicit IndexPlanner(std::span<const IndexFilter> filters);

  // Entries to write when `f` is added (its id must be new). E2BIG if a
  // candidate list would exceed CONNREDIR_CANDIDATES_MAX or the number of
  // prefixes CONNREDIR_MAX_PREFIXES; the message names the prefix and limit.
  Result<std::vector<IndexWrite>> plan_add(const IndexFilter& f) const;
  // Entries to write when filter `id` is removed (ENOENT if unknown).
  Result<std::vector<IndexWrite>> plan_remove(uint32_t id) const;
  // Update the planner's filter set after the writes were applied.
  void add(const IndexFilter& f);
  void remove(uint32_t id);

  // The whole index (for verification and `filter check`).
  Index build() const;
  size_t prefix_count() const { return at_.size(); }
  size_t filter_count() const { return filters_.size(); }

 private:
  std::vector<uint32_t> candidates(const IndexKey& k) const;
  void sort_ids(std::vector<uint32_t>& ids) const;

  std::map<uint32_t, IndexFilter> filters_;
  std::map<IndexKey, std::vector<uint32_t>> at_;  // filters whose own key is this
};

// Full build. E2BIG on overflow (same message as plan_add).
Result<Index> build_index(std::span<const IndexFilter> filters);
// Longest-prefix match of `ip` in an index (what the kernel's trie does).
// Empty if nothing matches.
std::vector<uint32_t> index_lookup(const Index& index, uint8_t family,
                                   const std::array<uint8_t, 16>& ip);
// Differences between two indexes as writes turning `from` into `to`.
std::vector<IndexWrite> index_diff(const Index& from, const Index& to);

// ---- Map access ------------------------------------------------------------

enum class MapId {
  Callouts,
  Filters,
  FilterIndex,
  Principals,
  PrincipalsGen,  // bumped after every change to Principals (ABI: principals_gen)
  Secret,
  FlowSeq,
  Stats,
  CalloutStats,  // per CPU; key = callout id * CONNREDIR_CSTAT_MAX + CONNREDIR_CSTAT_*
};
const char* map_name(MapId id);
size_t map_key_size(MapId id);
size_t map_value_size(MapId id);  // per CPU for Stats and CalloutStats

class MapStore {
 public:
  virtual ~MapStore() = default;
  // false if the key is absent. value has map_value_size(id) bytes; for the
  // per-CPU maps (Stats, CalloutStats) lookup returns the sum over CPUs and
  // erase zeroes every CPU's value; update of a per-CPU map is EINVAL on the
  // kernel (only the BPF programs count).
  virtual Result<bool> lookup(MapId id, const void* key, void* value) = 0;
  virtual Result<void> update(MapId id, const void* key, const void* value) = 0;
  // false if the key was absent. On arrays this zeroes the entry.
  virtual Result<bool> erase(MapId id, const void* key) = 0;
  // Every key, each map_key_size(id) bytes.
  virtual Result<std::vector<std::vector<uint8_t>>> keys(MapId id) = 0;
  // The stats map, summed over CPUs, CONNREDIR_STAT_MAX entries.
  virtual Result<std::vector<uint64_t>> stats() = 0;
};

// In-memory fake with the kernel's semantics (arrays have every key and
// erase zeroes; hash maps have a capacity).
class MemoryMapStore : public MapStore {
 public:
  MemoryMapStore();
  Result<bool> lookup(MapId id, const void* key, void* value) override;
  Result<void> update(MapId id, const void* key, const void* value) override;
  Result<bool> erase(MapId id, const void* key) override;
  Result<std::vector<std::vector<uint8_t>>> keys(MapId id) override;
  Result<std::vector<uint64_t>> stats() override;
  // Test hooks.
  std::vector<uint64_t> stat_values = std::vector<uint64_t>(CONNREDIR_STAT_MAX, 0);
  // Operation log "update filters", "erase filter_index", ... in order.
  std::vector<std::string> log;
  // Fail the n-th mutating call from now (0 = never) with EIO.
  int fail_after = 0;
  size_t size(MapId id) const;

 private:
  using Bytes = std::vector<uint8_t>;
  std::map<MapId, std::map<Bytes, Bytes>> maps_;
};

// The pinned maps at PIN_DIR/maps/<name>. ENOENT with "connredir is not up at
// PIN_DIR: run `connredir up`" when they are missing; EPERM/EACCES says to
// run as root. Key and value sizes are checked against the ABI.
class KernelMapStore : public MapStore {
 public:
  static Result<std::unique_ptr<KernelMapStore>> open(const std::string& pin_dir);
  ~KernelMapStore() override;
  Result<bool> lookup(MapId id, const void* key, void* value) override;
  Result<void> update(MapId id, const void* key, const void* value) override;
  Result<bool> erase(MapId id, const void* key) override;
  Result<std::vector<std::vector<uint8_t>>> keys(MapId id) override;
  Result<std::vector<uint64_t>> stats() override;

 private:
  KernelMapStore() = default;
  std::map<MapId, int> fds_;
};

// ---- The control plane -----------------------------------------------------

struct CgroupRef {
  uint64_t id = 0;     // cgroup id = inode of the cgroup v2 directory
  uint32_t level = 0;  // path components below the cgroup2 mount root
  std::string path;    // for messages only (not stored in maps)
};

// What a connect meets when no listener the callout's principal owns is at
// its proxy address (nothing listens there, or someone else's listener does).
// Every redirect looks the listener up; there is no "unchecked" any more: a
// flow is never delivered to whatever happens to listen.
enum class ProxyDown {
  Refuse,  // the connect fails at once with ECONNREFUSED, counted (default)
  Bypass,  // the callout is skipped (next vendor or destination), counted
};
const char* to_string(ProxyDown p);
Result<ProxyDown> parse_proxy_down(std::string_view text);

// What a connect meets when one of the callout's filters selects it but it
// cannot be redirected to the callout: the chain is full
// (CONNREDIR_MAX_HOPS), the callout has no proxy for the connect's family,
// connredir has no MAC key, or the kernel could not allocate the socket's
// state.
enum class OnFailure {
  Bypass,  // the connect goes on to the next vendor or the destination, counted
  Refuse,  // the connect fails with ECONNREFUSED, counted: never uninspected
};
const char* to_string(OnFailure p);
Result<OnFailure> parse_on_failure(std::string_view text);

// Implicit records (docs/ABI.md, "Implicit records"): whether an onward
// connect of the callout's proxy principal that set no records gets the
// records of a flow the principal accepted for the same destination. On by
// default; off stores CONNREDIR_CALLOUT_F_NO_IMPLICIT. The text is on or off
// (`--implicit-records`), or true or false (a configuration file's boolean).
const char* implicit_records_text(bool on);
Result<bool> parse_implicit_records(std::string_view text);

struct CalloutSpec {
  std::string name;
  std::optional<Address> proxy4;
  std::optional<Address> proxy6;
  std::optional<uint32_t> proxy_uid;
  std::optional<CgroupRef> proxy_cgroup;
  ProxyDown on_proxy_down = ProxyDown::Refuse;
  OnFailure on_failure = OnFailure::Bypass;
  // This callout's principal is, or overlaps (same uid, same or nested
  // cgroup), another callout's on purpose: a process that is both serves
  // both. Without it, add_callout refuses an overlap (EEXIST).
  bool shared_principal = false;
  // Implicit records for this callout's principal (see parse_implicit_records).
  bool implicit_records = true;
};

struct CalloutInfo {
  uint32_t id = 0;
  std::string name;
  std::optional<Address> proxy4;
  std::optional<Address> proxy6;
  std::optional<uint32_t> proxy_uid;
  uint64_t proxy_cgroup = 0;  // 0 = unset
  uint32_t proxy_cgroup_level = 0;
  ProxyDown on_proxy_down = ProxyDown::Refuse;
  OnFailure on_failure = OnFailure::Bypass;
  bool shared_principal = false;
  bool implicit_records = true;  // CONNREDIR_CALLOUT_F_NO_IMPLICIT clear
  size_t filters = 0;            // filters referencing it
};

struct FilterSpec {
  FilterAction action = FilterAction::Redirect;
  std::string callout;  // name; Redirect only
  Prefix dst;           // default: any
  PortRange ports;      // default: any
  uint8_t proto = kProtoAny;
  uint32_t weight = 0;
  std::optional<uint32_t> app_uid;
  std::optional<CgroupRef> app_cgroup;
  std::string context;  // <= CONNREDIR_USER_CONTEXT_MAX bytes
};

struct FilterInfo {
  uint32_t id = 0;
  FilterAction action = FilterAction::Redirect;
  uint32_t callout_id = 0;  // 0 for permit and block
  std::string callout;      // name ("?" if the callout is gone; "" for permit and block)
  uint32_t weight = 0;
  uint64_t seq = 0;
  Prefix dst;
  PortRange ports;
  uint8_t proto = kProtoAny;
  std::optional<uint32_t> app_uid;
  uint64_t app_cgroup = 0;
  uint32_t app_cgroup_level = 0;
  std::string context;
};

struct FilterAdded {
  FilterInfo filter;
  size_t index_writes = 0;
  std::vector<std::string> warnings;  // e.g. no proxy for the filter's family
};

// `connredir filter load FILE`: many filters at once. The index is computed
// once for the whole set and written in the consistency-preserving order.
struct FilterLoadResult {
  size_t added = 0;
  size_t removed = 0;       // previous filters dropped by `replace`
  size_t index_writes = 0;  // trie entries written or erased
  uint32_t first_id = 0;    // ids of the new filters: first_id..last_id
  uint32_t last_id = 0;
  std::vector<std::string> warnings;  // e.g. a callout without a proxy for a family
};

// ---- Specs from text: one path for flags, filter files and configuration ----
//
// Every way of naming a filter, a callout or a principal (CLI flags, a
// `filter load` line, a configuration file entry) fills one *Line struct of
// strings through one field table, and one function turns it into the spec
// that Control takes. A new field is one table entry and one line in that
// function; the CLI options, the filter file keys and the configuration keys
// all come from the table.

// A filter's fields as text. Empty strings mean "not given" (the default).
struct FilterLine {
  std::string action, callout, dst, port, proto, weight, app_uid, app_cgroup, context;
};
struct FilterField {
  const char* key;  // canonical name ('_'); the CLI option is --key with '-'
  std::string FilterLine::*member;
  const char* help;
};
std::span<const FilterField> filter_fields();
// Sets the field `key` ('-' and '_' are the same); EINVAL naming the known
// fields if there is none.
Result<void> set_filter_field(FilterLine& line, std::string_view key, std::string value);

// Parses one line of a filter file. Two formats, one filter per line:
//   JSON:  {"callout":"acme","dst":"10.0.0.0/8","port":"443","proto":"tcp",
//           "weight":100,"app_uid":1000,"app_cgroup":"/sys/fs/cgroup/x","context":"tls"}
//   text:  callout=acme dst=10.0.0.0/8 port=8000-8080 proto=tcp weight=100 app-uid=1000
//          app-cgroup=DIR context=tls        (whitespace separated key=value)
// Keys may use '-' or '_'. Returns nullopt for blank lines and '#' comments.
Result<std::optional<FilterLine>> parse_filter_line(std::string_view line);
// The validator: turns the text into a spec (CIDR or "any", ports or "any",
// ...). `resolve` maps an app cgroup directory to its id and level
// (resolve_cgroup in the CLI).
using CgroupResolver = Result<CgroupRef> (*)(std::string_view dir);
Result<FilterSpec> filter_spec(const FilterLine& line, CgroupResolver resolve);
// The rules a spec must meet however it was built (filter_spec applies them;
// Control::add_filter and load_filters apply them again to specs built in
// code): context size, protocol for the action, ports, cgroup depth.
Result<void> check_filter_spec(const FilterSpec& spec);
// Every line of a file's text; errors name the line ("line 7: ...").
// Distinct app cgroup directories are resolved once each.
Result<std::vector<FilterSpec>> parse_filter_file(std::string_view text, CgroupResolver resolve);

// A callout's fields as text (`callout add` options, a configuration
// [[callout]] table). proxies: one ADDR:PORT per family.
struct CalloutLine {
  std::string name;
  std::vector<std::string> proxies;
  std::string proxy_uid, proxy_cgroup, proxy_unit, on_proxy_down, on_failure;
  std::string shared_principal;  // "true"/"false" ("" = false)
  std::string implicit_records;  // "on"/"off" or "true"/"false" ("" = on)
};
struct CalloutField {
  const char* key;
  std::string CalloutLine::*member;  // nullptr for "proxy" (the list)
  const char* help;
  bool flag = false;  // a yes/no field: a CLI flag, a TOML boolean
};
std::span<const CalloutField> callout_fields();
Result<void> set_callout_field(CalloutLine& line, std::string_view key, std::string value);
// The validator. `proxy_unit` (a systemd unit, connredir-proxy@NAME.service)
// names the cgroup the unit runs in; while the unit is not running that
// cgroup does not exist and the spec has no cgroup principal (`unit_waiting`).
struct CalloutParsed {
  CalloutSpec spec;
  std::string proxy_unit;     // as given (empty: none)
  bool unit_waiting = false;  // proxy_unit's cgroup does not exist yet
};
Result<CalloutParsed> callout_spec(const CalloutLine& line, CgroupResolver resolve);
// The cgroup directory (relative to the cgroup2 mount) systemd gives a unit
// connredir names: connredir-proxy@NAME.service runs in connredir.slice
// (the template sets Slice=connredir.slice). EINVAL for other units.
Result<std::string> unit_cgroup_dir(std::string_view unit);
// The reverse, for `export`: the unit whose cgroup `path` (absolute) is, if
// any.
std::optional<std::string> unit_of_cgroup_path(std::string_view path);

// An explicit principal (`authorize` options, a [[principal]] table): exactly
// one of uid, cgroup (a directory) or cgroup_id.
struct PrincipalLine {
  std::string uid, cgroup, cgroup_id;
};
struct PrincipalSpec {
  uint32_t kind = CONNREDIR_PRINCIPAL_UID;
  uint64_t id = 0;
  std::string what;  // "uid 5000", "cgroup /sys/fs/cgroup/x (id 7)"
};
Result<PrincipalSpec> principal_spec(const PrincipalLine& line, CgroupResolver resolve);

struct PrincipalInfo {
  uint32_t kind = 0;  // CONNREDIR_PRINCIPAL_UID / _CGROUP
  uint64_t id = 0;
  uint32_t flags = 0;  // CONNREDIR_PRINCIPAL_F_*
};

struct Counts {
  size_t callouts = 0;
  size_t filters = 0;
  size_t principals = 0;
  size_t prefixes = 0;
};

const char* stat_name(size_t index);  // "classified", "redirected", ...
const char* stat_help(size_t index);  // one line, for metrics and docs
// Per-callout counters (CONNREDIR_CSTAT_*): "redirected", "self_skip", ...
const char* callout_stat_name(size_t index);
const char* callout_stat_help(size_t index);
using CalloutCounters = std::array<uint64_t, CONNREDIR_CSTAT_MAX>;

class Control {
 public:
  explicit Control(MapStore& store) : store_(store) {}

  // Callouts. add: EEXIST on a duplicate name, ENOSPC when all 255 ids are
  // used, EINVAL without a proxy or with a proxy of the wrong family.
  Result<CalloutInfo> add_callout(const CalloutSpec& spec);
  // Rewrites a callout's proxies, principal and policies in place (same id,
  // its filters keep pointing at it). ENOENT if there is none of that name.
  Result<CalloutInfo> update_callout(const CalloutSpec& spec);
  Result<std::vector<CalloutInfo>> list_callouts();
  Result<CalloutInfo> find_callout(std::string_view name);
  // EBUSY if filters reference it and !force (the message lists them); with
  // force those filters are deleted first. Returns the deleted filter ids.
  Result<std::vector<uint32_t>> delete_callout(std::string_view name, bool force);

  // Filters. add: ENOENT unknown callout, E2BIG index overflow, ENOSPC too
  // many filters, EINVAL context too long.
  Result<FilterAdded> add_filter(const FilterSpec& spec);
  Result<std::vector<FilterInfo>> list_filters();
  // Bulk add: validates every spec, assigns ids and ages in file order,
  // computes the whole index once, then writes all filter entries, then the
  // index (updates before erases), then (with `replace`) erases the filters
  // that were there before. On failure the index and filters are restored.
  // Errors name the spec's position ("filter 7: ...", 1-based).
  Result<FilterLoadResult> load_filters(std::span<const FilterSpec> specs, bool replace);
  Result<void> delete_filter(uint32_t id);
  // Compare the kernel index with a rebuild from the filters map; returns
  // the writes that would repair it (empty = consistent).
  Result<std::vector<IndexWrite>> check_index();
  // Make the index match the filters: the writes check_index() reports,
  // with one exception. A filter that no index entry names was never active
  // (an add or load was interrupted between writing the filter and writing
  // the index); if indexing it would put more than CONNREDIR_CANDIDATES_MAX
  // filters on one prefix, it is removed instead, newest first, and listed in
  // the result. Active filters are never removed: E2BIG if they alone
  // overflow an entry (only possible if the maps were edited by hand).
  struct IndexRepair {
    size_t writes = 0;                 // index entries written or erased
    std::vector<FilterInfo> removed;   // never-active filters that could not be indexed
    std::vector<std::string> crowded;  // the prefixes that were over the limit
  };
  Result<IndexRepair> repair_index();

  // Principals: the union of explicit authorizations and the callouts'
  // proxy principals.
  Result<void> authorize(uint32_t kind, uint64_t id);
  // ENOENT if it was not explicitly authorized.
  Result<void> deauthorize(uint32_t kind, uint64_t id);
  Result<std::vector<PrincipalInfo>> list_principals();
  // Recompute the F_CALLOUT part from the callouts map.
  Result<void> sync_principals();

  // Fill the MAC key from `random` only if it is all zero. Returns true if
  // it was written.
  Result<bool> init_secret(std::span<const uint8_t, 16> random);
  Result<Counts> counts();
  // Callout `id`'s counters (summed over CPUs); zero for an unused id.
  Result<CalloutCounters> callout_counters(uint32_t id);
  Result<std::vector<uint64_t>> stats() { return store_.stats(); }

 private:
  Result<std::vector<connredir_callout>> read_callouts();
  Result<std::vector<connredir_filter>> read_filters();
  Result<Index> read_index();
  Result<void> apply_index(const std::vector<IndexWrite>& writes);
  Result<void> delete_filter_locked(const std::vector<connredir_filter>& all, uint32_t id);
  Result<void> sync_principals_locked();
  // After every change to Principals: the BPF side's per-caller cache of
  // principal flags trusts only entries of the current generation.
  Result<void> bump_principals_gen();

  MapStore& store_;
};

FilterInfo filter_info(const connredir_filter& f, std::string_view callout_name);
// The classifier's view of a filter map value.
IndexFilter index_filter(const connredir_filter& f);
// The map value for a checked filter spec (both `filter add` and `filter load`).
connredir_filter make_filter(const FilterSpec& spec, uint32_t id, uint32_t callout_id,
                             uint64_t seq);
CalloutInfo callout_info(const connredir_callout& c);
// What happens to connects of a family a callout has no proxy for, as the
// end of a filter warning ("... connects matching filter 7 <this>").
const char* no_proxy_fate(uint32_t callout_flags);

// ---- Configuration files (config.cpp) -----------------------------------------
//
// /etc/connredir/connredir.toml ([global]: where connredir attaches, the
// proxies' cgroups, callout defaults) and /etc/connredir/conf.d/*.toml (one
// per vendor: [[callout]], [[filter]], [[principal]]), read in that order,
// the drop-ins by name. `apply` makes the kernel state equal to them. The
// keys are the field tables' (callout_fields, filter_fields), so the same as
// the CLI options. docs/CONFIG.md is the user's reference.

inline constexpr const char* kConfigFile = "/etc/connredir/connredir.toml";
inline constexpr const char* kConfigDropinDir = "/etc/connredir/conf.d";

// Where an entry came from: "FILE:LINE".
struct SourceRef {
  std::string file;
  int line = 0;
  std::string to_string() const;
};

struct GlobalConfig {
  std::optional<std::string> cgroup;  // up --cgroup (unset: the cgroup2 root)
  std::vector<std::string> proxies_in;
  // Callouts' defaults (text; empty: none).
  std::string on_proxy_down, on_failure, implicit_records;
  std::optional<SourceRef> source;
};
struct ConfigCallout {
  CalloutParsed parsed;
  SourceRef source;
};
struct ConfigFilter {
  FilterSpec spec;
  SourceRef source;
};
struct ConfigPrincipal {
  PrincipalSpec spec;
  SourceRef source;
};
struct Config {
  std::vector<std::string> files;  // in the order read
  GlobalConfig global;
  std::vector<ConfigCallout> callouts;
  std::vector<ConfigFilter> filters;  // file order = classification order on equal weight
  std::vector<ConfigPrincipal> principals;
};

// The files `apply PATH...` reads: each PATH a file, or a directory whose
// *.toml files are read by name; no PATH: kConfigFile (if present) then
// kConfigDropinDir/*.toml.
Result<std::vector<std::string>> config_files(std::span<const std::string> paths);
// Parses and checks every file before anything changes: TOML syntax, unknown
// keys and tables, bad values, a callout name or proxy address defined twice,
// a filter naming an unknown callout, [global] outside the first file.
// Errors are "FILE:LINE: KEY: what is wrong (what to do)".
Result<Config> load_config(std::span<const std::string> files, CgroupResolver resolve);
// One file's text (for tests: `file` names it in messages).
Result<Config> parse_config(std::span<const std::pair<std::string, std::string>> file_texts,
                            CgroupResolver resolve);

// What apply changes, by kind. `what` names the entry ("callout acme",
// "filter acme dst=10.0.0.0/8 port=443 weight=100", "principal uid 5000"),
// `detail` says what differs, `source` the file (empty for removals of
// entries made by hand).
struct PlanItem {
  enum Kind { Add, Change, Remove } kind = Add;
  std::string what, detail, source;
};
struct ApplyPlan {
  std::vector<PlanItem> items;
  std::vector<std::string> notes;  // e.g. a proxy unit that is not running yet
  // What to write (only the parts that differ are written).
  std::vector<CalloutSpec> add_callouts, change_callouts;
  std::vector<std::string> remove_callouts;
  bool replace_filters = false;
  std::vector<FilterSpec> filters;  // the whole new set, when replace_filters
  std::vector<PrincipalSpec> add_principals, remove_principals;
  bool empty() const { return items.empty(); }
};
struct AppliedState;
// `prev`: the state of the last apply, if any, to say where removed entries
// came from (an entry it does not list was made by hand).
Result<ApplyPlan> plan_apply(Control& c, const Config& cfg, const AppliedState* prev);
// Carries the plan out in the order that keeps every connect working:
// callouts added and changed, principals added, the classifier replaced as
// `filter load --replace` does, then callouts and principals removed. A
// removed callout's proxy may still be taking over connects the old
// classifier sent it (accept, then the records query, which needs the
// proxy's principal): removals wait `drain_ms` after the classifier switched.
Result<void> apply_plan(Control& c, const ApplyPlan& plan, int drain_ms = 0);

// Which file each applied entry came from, kept per pin dir in
// $CONNREDIR_STATE_DIR (default /run/connredir, gone at reboot as the maps
// are). Entries not in it on a host that has it were made by hand.
struct AppliedState {
  std::vector<std::string> files;
  std::map<std::string, std::string> callouts;                      // name -> FILE:LINE
  std::map<uint32_t, std::string> filters;                          // filter id -> FILE:LINE
  std::map<std::pair<uint32_t, uint64_t>, std::string> principals;  // (kind, id)
};
std::string applied_state_path(std::string_view pin_dir);
// nullopt: no apply since connredir came up (the host is not managed by files).
Result<std::optional<AppliedState>> read_applied_state(std::string_view pin_dir);
Result<void> write_applied_state(std::string_view pin_dir, const AppliedState& st);
void remove_applied_state(std::string_view pin_dir);
// The state after apply: each config entry's source, filters by their new ids.
Result<AppliedState> applied_state_of(Control& c, const Config& cfg);

// The running state as configuration that apply takes back unchanged.
// `up_cgroup`/`proxies_in`: paths of where connredir is attached (from the
// pinned links), for [global].
Result<std::string> export_config(Control& c, const std::optional<std::string>& up_cgroup,
                                  const std::vector<std::string>& proxies_in);

// ---- Metrics (metrics.cpp) -------------------------------------------------------

// Entries and capacity of a pinned map (PIN_DIR/maps/NAME), counted by
// walking its keys.
struct MapOccupancy {
  uint64_t entries = 0;
  uint64_t capacity = 0;
};
Result<MapOccupancy> pinned_map_occupancy(const std::string& pin_dir, std::string_view name);
// The Prometheus text exposition (format 0.0.4) of connredir's state at
// PIN_DIR: host-wide counters, callouts, filters, principals, the hand-off
// map's occupancy and the live flows by role. docs/METRICS.md lists them.
Result<std::string> metrics_text(const std::string& pin_dir);

// ---- System helpers --------------------------------------------------------

// The cgroup2 mount point from /proc/mounts text (octal escapes decoded).
Result<std::string> find_cgroup2_mount(std::string_view proc_mounts);
Result<std::string> find_cgroup2_mount();
// Components of `path` below `mount` (both normalized absolute paths);
// EINVAL if `path` is not inside `mount`.
Result<uint32_t> cgroup_level(std::string_view mount, std::string_view path);
// A cgroup v2 directory: absolute, relative to the working directory, or
// (if that does not exist) relative to the cgroup2 mount root.
Result<CgroupRef> resolve_cgroup(std::string_view dir);
// Best-effort path of a cgroup id (walks the cgroup2 tree).
std::optional<std::string> cgroup_path_by_id(uint64_t id);

// "6.18.44-fc" -> {6, 18}. EINVAL if unparsable.
Result<std::pair<int, int>> parse_kernel_release(std::string_view release);
// One kernel feature connredir uses, as probed on the running kernel.
struct KernelFeature {
  std::string name;             // short id: "bpf_set_retval", "sock_diag_bpf_storage"
  std::string description;      // what it is and what connredir uses it for
  bool required = false;        // `connredir up` refuses to run without it
  std::optional<bool> present;  // nullopt: could not be probed (detail says why)
  std::string detail;           // how it was found, or why it is missing
  std::string disables;         // optional features: what does not work without it
};
// Every feature connredir uses, probed now (libbpf loads minimal programs;
// the sock_diag probe needs connredir up at pin_dir, else "not probed").
std::vector<KernelFeature> probe_kernel_features(const std::string& pin_dir);
// Whether a cgroup getsockopt program may load and store 8 bytes at a time
// in its buffer (the verifier refuses it on strict-alignment kernels, or
// with BPF_F_STRICT_ALIGNMENT in prog_flags). Errors: the probe could not
// load anything (no privileges).
Result<bool> probe_sockopt_word_access(uint32_t prog_flags);
// The sock_diag sk_storage probe alone (used by `up` once the maps exist).
KernelFeature sock_diag_feature(const std::string& pin_dir);
// ENOTSUP with one message listing every missing required feature.
Result<void> require_kernel_features(const std::vector<KernelFeature>& features);
Result<void> require_root();

// Pinned links under PIN_DIR/links.
struct LinkInfo {
  std::string name;
  uint32_t link_id = 0;
  uint32_t prog_id = 0;
  uint64_t cgroup_id = 0;  // 0: the cgroup is gone
  uint32_t attach_type = 0;
};
struct UpState {
  bool maps_pinned = false;
  std::vector<LinkInfo> links;
  bool up() const { return !links.empty(); }
};
Result<UpState> read_up_state(const std::string& pin_dir);

// ---- Other programs on the same hooks -------------------------------------

// "cgroup_inet4_connect", ... (libbpf's names).
std::string attach_type_name(uint32_t type);
// One program the kernel runs at a hook of a cgroup.
struct ProgramInfo {
  uint32_t prog_id = 0;
  std::string name;         // as loaded (may be empty)
  std::string tag;          // hex
  bool ours = false;        // one of connredir's (its link's program)
  std::string attached_at;  // the cgroup it is attached to (this one or an ancestor)
  std::string attach_mode;  // "multi", "override" or "exclusive"
};
// A hook of a cgroup with every program the kernel runs there, in run order
// (the cgroup's own programs in attach order, then its ancestors').
struct HookPrograms {
  std::string attach_type;
  std::string cgroup;
  std::vector<ProgramInfo> programs;
};
Result<HookPrograms> programs_on_hook(const std::string& cgroup_path, uint32_t attach_type,
                                      const std::set<uint32_t>& our_prog_ids);
// EBUSY, naming the program and the fix, if attaching a BPF link at this
// hook of the cgroup would be refused (a non-multi program on the cgroup)
// or would stop another program from running (one attached with
// BPF_F_ALLOW_OVERRIDE to an ancestor). `up` checks every hook first.
Result<void> check_attach_is_harmless(const std::string& cgroup_path, uint32_t attach_type);

// Exclusive (or shared) flock on /run/connredir.lock, serializing every
// CLI invocation (bpffs cannot hold regular files); released by the
// destructor.
class CliLock {
 public:
  static Result<CliLock> acquire(bool exclusive);
  CliLock(CliLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  CliLock& operator=(CliLock&&) = delete;
  ~CliLock();

 private:
  explicit CliLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};
std::string lock_path();

// ---- Lifecycle (connredir_loader) ------------------------------------------

struct UpOptions {
  std::string pin_dir = kDefaultPinDir;
  std::string cgroup;  // empty: the cgroup2 root
  // Where the proxies run (`up --proxies-in`): the proxy-facing socket-option
  // programs (records/context queries, set records, SO_ORIGINAL_DST) attach
  // only to these cgroups, each `cgroup` or inside it, instead of to
  // `cgroup`. Applications elsewhere then pay nothing on get/setsockopt.
  // Empty: everything attaches to `cgroup`.
  std::vector<std::string> proxies_in;
};
// Programs that only proxies need: attached to UpOptions::proxies_in when given.
bool proxy_scoped_program(std::string_view name);
// A pinned link of such a program attached to a proxy cgroup: "PROG@CGROUP-ID".
inline bool proxy_scoped_link(std::string_view pin) {
  return pin.find('@') != std::string_view::npos;
}
// A TCP listener that was bound before connredir's bind hook ran, given the
// owner record the hook would have written (src/control/adopt.cpp).
struct AdoptedListener {
  Address local;
  int pid = 0;
  std::string comm;
  uint32_t uid = 0;
  std::string cgroup;  // the holding process's, relative to the cgroup2 root
};
struct AdoptReport {
  std::vector<AdoptedListener> adopted;
  std::vector<std::string> problems;  // listeners left without an owner, and why
};
// Gives every TCP listener of the processes in `attached` (and below) that has
// no sk_owner record the one the bind hook would have written: its socket's
// uid and the holding process's cgroup. Needs CAP_SYS_PTRACE (pidfd_getfd).
Result<AdoptReport> adopt_listeners(const std::string& pin_dir, const CgroupRef& attached);

struct UpResult {
  bool already_up = false;
  std::vector<KernelFeature> features;  // as probed by this call
  CgroupRef cgroup;
  std::vector<CgroupRef> proxies_in;
  std::vector<std::string> attached;  // programs attached by this call
  bool secret_initialised = false;
  AdoptReport adopted;  // listeners bound before the bind hook ran (adopt_listeners)
  // The IPv6 UDP address pool's local route (ensure_udp_pool_route): added
  // by this call, or why it could not be (unconnected IPv6 UDP sends then
  // reach no proxy).
  bool pool_route_added = false;
  std::string pool_route_problem;
};
// The local route of the IPv6 proxy address pool of unconnected UDP sends
// (`ip -6 route add local fdcc:7264::/64 dev lo`) in the caller's network
// namespace: true if added, false if it was there.
Result<bool> ensure_udp_pool_route();
std::string udp_pool6_cidr();
// Mount bpffs if needed, check the kernel, load with pinned maps, initialise
// the secret, attach every program to the cgroup and pin the links.
// Idempotent for the same cgroup; EEXIST if up for a different cgroup.
Result<UpResult> up(const UpOptions& opts);
// Unpin links (detaching the programs) and maps, remove the pin dir. Returns
// false if nothing was pinned.
Result<bool> down(const std::string& pin_dir);

// One socket with connredir state, as sock_diag reported it.
struct FlowDump {
  uint64_t cookie = 0;  // socket cookie (SO_COOKIE)
  Address local;
  Address remote;
  uint8_t protocol = IPPROTO_TCP;
  uint8_t sock_state = 0;  // TCP state (TCP_ESTABLISHED, ...) as the kernel reports it
  uint32_t uid = 0;        // owner of the socket
  uint64_t inode = 0;      // socket inode (0 once the socket has no file)
  uint64_t netns = 0;      // inode of the socket's network namespace
  connredir_sk_state state{};
  // The socket is established and kept only its brief (sk_brief): `state`
  // holds the flags, flow id, chain length, application and original
  // destination, and the chain's hops come from the flow's socket with the
  // longest chain (`hops_known` false when no socket of the flow holds them
  // any more). Of the context, only flow_id, orig_dst, hop and the
  // application (pid, uid, comm) are set; the rest is zero.
  bool brief = false;
  bool hops_known = true;
};
// Where to look: the caller's network namespace by default, the given ones
// (paths like /run/netns/NAME or /proc/PID/ns/net), or every namespace of
// the host. `protocols` lists the IP protocols to dump (TCP today).
struct FlowQuery {
  std::vector<std::string> netns;
  bool all_netns = false;
  std::vector<uint8_t> protocols{IPPROTO_TCP};
};
// Every socket that currently carries connredir state (redirected app
// sockets, sockets accepted by proxies, proxies' outgoing sockets with
// records), read through sock_diag with the pinned sk_state map: no BPF
// program is loaded, so it works where tracing programs are refused.
Result<std::vector<FlowDump>> dump_flows(const std::string& pin_dir, const FlowQuery& query = {});
// Can sock_diag dump the values of this sk_storage map? (Linux 5.7+ with
// inet_diag/tcp_diag.) Used by the feature report.
Result<void> probe_sock_diag_storage(int sk_storage_map_fd);

}  // namespace connredir::control
