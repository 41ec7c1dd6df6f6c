// Configuration files: parsing and refusal (file, line and key named, nothing
// half-read), the apply plan against the in-memory maps (add, change, remove,
// idempotence, order) and the export round trip.
#include <unistd.h>

#include <cstdlib>
#include <map>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "test_util.hpp"

namespace connredir::control {
namespace {
using namespace testing;

using Files = std::vector<std::pair<std::string, std::string>>;

Result<CgroupRef> fake_resolve(std::string_view dir) {
  if (dir == "/missing" || dir.find("connredir-proxy@down") != std::string_view::npos)
    return fail(ENOENT, fmt::format("no such cgroup {}", dir));
  return CgroupRef{1000 + dir.size(), 3, std::string(dir)};
}

const char* kMain = R"(# global
[global]
cgroup = "/sys/fs/cgroup/apps"
proxies_in = ["proxies"]
on_proxy_down = "refuse"
)";

const char* kAcme = R"(
[[callout]]
name = "acme"
proxy = ["127.0.0.1:15001", "[::1]:15001"]
proxy_uid = 4001

[[filter]]
callout = "acme"
dst = "10.0.0.0/8"
port = 443
proto = "tcp"
weight = 100

[[filter]]
callout = "acme"
dst = "any"
port = "any"
context = "all of it"
)";

const char* kZeta = R"(
[[callout]]
name = "zeta"
proxy = "127.0.0.1:15002"
on-failure = "refuse"

[[filter]]
callout = "zeta"
port = "8000-8080"
weight = 50
app-uid = 1000

[[principal]]
uid = 5000
)";

Result<Config> parse(const Files& f) { return parse_config(f, &fake_resolve); }

TEST(Config, ParsesGlobalCalloutsFiltersPrincipalsWithSources) {
  auto cfg =
      parse({{"main.toml", kMain}, {"conf.d/10-acme.toml", kAcme}, {"conf.d/20-zeta.toml", kZeta}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->global.cgroup, "/sys/fs/cgroup/apps");
  EXPECT_EQ(cfg->global.proxies_in, std::vector<std::string>{"proxies"});
  ASSERT_EQ(cfg->callouts.size(), 2u);
  const auto& acme = cfg->callouts[0];
  EXPECT_EQ(acme.parsed.spec.name, "acme");
  EXPECT_EQ(acme.source.to_string(), "conf.d/10-acme.toml:2");
  ASSERT_TRUE(acme.parsed.spec.proxy4);
  ASSERT_TRUE(acme.parsed.spec.proxy6);
  EXPECT_EQ(acme.parsed.spec.proxy_uid, 4001u);
  // [global]'s default applies where a callout says nothing...
  EXPECT_EQ(acme.parsed.spec.on_proxy_down, ProxyDown::Refuse);
  const auto& zeta = cfg->callouts[1];
  // ... and '-' or '_' are the same in keys, as in filter files.
  EXPECT_EQ(zeta.parsed.spec.on_failure, OnFailure::Refuse);
  ASSERT_EQ(cfg->filters.size(), 3u);
  EXPECT_EQ(cfg->filters[0].spec.dst, cidr("10.0.0.0/8"));
  EXPECT_EQ(cfg->filters[0].spec.ports.lo, 443);
  EXPECT_EQ(cfg->filters[0].source.to_string(), "conf.d/10-acme.toml:7");
  EXPECT_EQ(cfg->filters[1].spec.dst, Prefix::any());
  EXPECT_TRUE(cfg->filters[1].spec.ports.any());
  EXPECT_EQ(cfg->filters[1].spec.context, "all of it");
  EXPECT_EQ(cfg->filters[2].spec.app_uid, 1000u);
  ASSERT_EQ(cfg->principals.size(), 1u);
  EXPECT_EQ(cfg->principals[0].spec.kind, CONNREDIR_PRINCIPAL_UID);
  EXPECT_EQ(cfg->principals[0].spec.id, 5000u);
}

// Every error names file, line and key, and the whole configuration is
// refused (parse_config returns no partial result).
TEST(Config, RefusesWithFileLineAndKey) {
  struct Case {
    Files files;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{{"a.toml", "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\ncolour = \"red\"\n"}},
       "a.toml:4: [[callout]] #1 key colour: unknown field 'colour'"},
      {{{"a.toml", "[[filter]]\ncallout = \"a\"\nport = 70000\n"}},
       "a.toml:3: [[filter]] #1 key port: port '70000' out of range"},
      {{{"a.toml", "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\nproxy_uid = true\n"}},
       "a.toml:4: [[callout]] #1 key proxy_uid: proxy-uid 'true' is not a decimal number"},
      {{{"a.toml", "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\nproxy_uid = 1.5\n"}},
       "a.toml:4: [[callout]] #1 key proxy_uid: must be a string, a non-negative integer or a "
       "boolean"},
      {{{"a.toml",
         "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"
         "shared_principal = \"maybe\"\n"}},
       "a.toml:4: [[callout]] #1 key shared_principal: shared-principal 'maybe'"},
      {{{"a.toml", "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"},
        {"b.toml", "\n[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:2\"\n"}},
       "b.toml:2: callout a: defined twice (also at a.toml:1)"},
      {{{"a.toml", "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"},
        {"b.toml", "[[callout]]\nname = \"b\"\nproxy = \"127.0.0.1:1\"\n"}},
       "b.toml:1: callout b: proxy 127.0.0.1:1 is already the proxy of the callout at a.toml:1"},
      {{{"a.toml", "[[filter]]\ncallout = \"ghost\"\n"}},
       "a.toml:1: [[filter]] key callout: no callout named 'ghost'"},
      {{{"main.toml", ""}, {"vendor.toml", "[global]\ncgroup = \"x\"\n"}},
       "vendor.toml:1: [global]: only the first file (main.toml) may have [global]"},
      {{{"a.toml", "[global]\nattach = \"x\"\n"}}, "a.toml:2: [global] key attach: unknown key"},
      {{{"a.toml", "[global]\non_proxy_down = \"maybe\"\n"}},
       "a.toml:2: [global] key on_proxy_down"},
      {{{"a.toml",
         "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"
         "implicit_records = \"maybe\"\n"}},
       "a.toml:4: [[callout]] #1 key implicit_records: --implicit-records 'maybe': expected on"},
      {{{"a.toml",
         "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"
         "implicit_records = 0\n"}},
       "a.toml:4: [[callout]] #1 key implicit_records: --implicit-records '0'"},
      {{{"a.toml", "[global]\nimplicit_records = \"sometimes\"\n"}},
       "a.toml:2: [global] key implicit_records: --implicit-records 'sometimes'"},
      {{{"a.toml", "[callouts]\n"}}, "a.toml:1: key callouts: unknown table"},
      {{{"a.toml", "[callout]\nname = \"a\"\n"}}, "must be an array of tables: write [[callout]]"},
      {{{"a.toml", "[[callout]]\nname = \"a\n"}}, "a.toml:2: "},
      {{{"a.toml",
         "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\nproxy_unit = \"sshd.service\"\n"}},
       "not an instance of connredir's proxy template"},
      {{{"a.toml", "[[principal]]\nuid = 1\ncgroup = \"x\"\n"}},
       "a.toml:1: [[principal]]: a principal is exactly one of"},
      {{{"a.toml", "[[principal]]\nuid = 7\n[[principal]]\nuid = 7\n"}},
       "a.toml:3: [[principal]]: uid 7 is already listed at a.toml:1"},
  };
  for (const auto& c : cases) {
    auto cfg = parse(c.files);
    ASSERT_FALSE(cfg) << c.needle;
    EXPECT_EQ(cfg.error().code, EINVAL);
    EXPECT_NE(cfg.error().message.find(c.needle), std::string::npos)
        << "wanted: " << c.needle << "\n got: " << cfg.error().message;
  }
}

TEST(Config, ProxyUnitNamesTheTemplateInstanceCgroup) {
  auto dir = unit_cgroup_dir("connredir-proxy@acme.service");
  ASSERT_TRUE(dir) << dir.error().message;
  EXPECT_EQ(*dir, "connredir.slice/connredir-proxy@acme.service");
  EXPECT_EQ(unit_of_cgroup_path("/sys/fs/cgroup/connredir.slice/connredir-proxy@acme.service"),
            "connredir-proxy@acme.service");
  EXPECT_FALSE(unit_of_cgroup_path("/sys/fs/cgroup/system.slice/ssh.service"));
  EXPECT_FALSE(unit_cgroup_dir("connredir-proxy@.service"));
  EXPECT_FALSE(unit_cgroup_dir("connredir-proxy@a/b.service"));

  // A unit that is not running yet: the callout is valid, with no principal.
  auto cfg = parse({{"a.toml",
                     "[[callout]]\nname = \"a\"\nproxy = \"127.0.0.1:1\"\n"
                     "proxy_unit = \"connredir-proxy@down.service\"\n"}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_TRUE(cfg->callouts[0].parsed.unit_waiting);
  EXPECT_FALSE(cfg->callouts[0].parsed.spec.proxy_cgroup);
}

// The CLI's `filter add` fields and a configuration [[filter]] go through
// the same table and validator: "any" is accepted by both.
TEST(Config, FilterFieldsAreTheCliOptions) {
  FilterLine l;
  for (const auto& f : filter_fields()) ASSERT_TRUE(set_filter_field(l, f.key, "x"));
  ASSERT_TRUE(set_filter_field(l, "app-uid", "1"));
  EXPECT_EQ(l.app_uid, "1");
  FilterLine any{"", "acme", "any", "any", "", "", "", "", ""};
  auto s = filter_spec(any, nullptr);
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->dst, Prefix::any());
  EXPECT_TRUE(s->ports.any());
}

// implicit_records: a boolean in a file (or the CLI's on/off), on when
// nothing says otherwise; [global]'s default applies to the callouts that do
// not set it, as on_failure's does.
TEST(Config, ImplicitRecordsKeyAndGlobalDefault) {
  const char* three = R"(
[[callout]]
name = "plain"
proxy = "127.0.0.1:1"
[[callout]]
name = "off"
proxy = "127.0.0.1:2"
implicit_records = false
[[callout]]
name = "on"
proxy = "127.0.0.1:3"
implicit-records = true
)";
  auto cfg = parse({{"a.toml", three}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  ASSERT_EQ(cfg->callouts.size(), 3u);
  EXPECT_TRUE(cfg->callouts[0].parsed.spec.implicit_records);
  EXPECT_FALSE(cfg->callouts[1].parsed.spec.implicit_records);
  EXPECT_TRUE(cfg->callouts[2].parsed.spec.implicit_records);

  cfg = parse({{"main.toml", "[global]\nimplicit_records = false\n"}, {"a.toml", three}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->global.implicit_records, "false");
  EXPECT_FALSE(cfg->callouts[0].parsed.spec.implicit_records) << "the [global] default";
  EXPECT_FALSE(cfg->callouts[1].parsed.spec.implicit_records);
  EXPECT_TRUE(cfg->callouts[2].parsed.spec.implicit_records) << "the callout's own key wins";

  // The CLI's words are the field table's: --implicit-records on|off.
  CalloutLine l{"x", {"127.0.0.1:1"}, {}, {}, {}, {}, {}, {}, {}};
  ASSERT_TRUE(set_callout_field(l, "implicit-records", "off"));
  EXPECT_EQ(l.implicit_records, "off");
  auto spec = callout_spec(l, nullptr);
  ASSERT_TRUE(spec) << spec.error().message;
  EXPECT_FALSE(spec->spec.implicit_records);
  l.implicit_records = "on";
  EXPECT_TRUE(callout_spec(l, nullptr)->spec.implicit_records);
  l.implicit_records = "yes";
  auto bad = callout_spec(l, nullptr);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("--implicit-records 'yes': expected on"), std::string::npos)
      << bad.error().message;
  const auto fields = callout_fields();
  auto f = std::find_if(fields.begin(), fields.end(), [](const CalloutField& x) {
    return std::string_view(x.key) == "implicit_records";
  });
  ASSERT_NE(f, fields.end());
  EXPECT_FALSE(f->flag) << "--implicit-records takes on or off";
}

class ConfigPlan : public ::testing::Test {
 protected:
  MemoryMapStore store;
  Control c{store};

  ApplyPlan plan(const Files& f) {
    auto cfg = parse(f);
    EXPECT_TRUE(cfg) << cfg.error().message;
    auto p = plan_apply(c, *cfg, nullptr);
    EXPECT_TRUE(p) << p.error().message;
    return *p;
  }
  void apply(const Files& f) {
    auto p = plan(f);
    auto r = apply_plan(c, p);
    ASSERT_TRUE(r) << r.error().message;
  }
  static size_t count(const ApplyPlan& p, PlanItem::Kind k, std::string_view prefix) {
    return std::count_if(p.items.begin(), p.items.end(), [&](const PlanItem& i) {
      return i.kind == k && i.what.rfind(prefix, 0) == 0;
    });
  }
};

TEST_F(ConfigPlan, AppliesThenHasNothingToDo) {
  Files f = {{"main.toml", kMain}, {"acme.toml", kAcme}, {"zeta.toml", kZeta}};
  auto p = plan(f);
  EXPECT_EQ(count(p, PlanItem::Add, "callout"), 2u);
  EXPECT_EQ(count(p, PlanItem::Add, "filter"), 3u);
  EXPECT_EQ(count(p, PlanItem::Add, "principal"), 1u);
  EXPECT_TRUE(p.replace_filters);
  apply(f);
  auto callouts = c.list_callouts();
  ASSERT_TRUE(callouts);
  EXPECT_EQ(callouts->size(), 2u);
  auto filters = c.list_filters();
  ASSERT_TRUE(filters);
  EXPECT_EQ(filters->size(), 3u);
  // Idempotent: the same files again change nothing.
  auto again = plan(f);
  EXPECT_TRUE(again.empty()) << again.items.front().what;
  size_t writes = store.log.size();
  apply(f);
  EXPECT_EQ(store.log.size(), writes) << "a no-op apply wrote to the maps";
}

TEST_F(ConfigPlan, ChangesInPlaceAndRemovesWhatIsGone) {
  apply({{"acme.toml", kAcme}, {"zeta.toml", kZeta}});
  auto before = c.find_callout("acme");
  ASSERT_TRUE(before);
  // acme's proxy moves, zeta and its filter and principal go, a hand-made
  // callout goes too (the configuration is the whole truth).
  CalloutSpec hand;
  hand.name = "byhand";
  hand.proxy4 = *Address::parse("127.0.0.1:16000");
  ASSERT_TRUE(c.add_callout(hand));
  std::string acme2 = kAcme;
  acme2.replace(acme2.find("15001\", \"[::1]"), 5, "15011");
  auto p = plan({{"acme.toml", acme2}});
  EXPECT_EQ(count(p, PlanItem::Change, "callout acme"), 1u);
  EXPECT_EQ(count(p, PlanItem::Remove, "callout zeta"), 1u);
  EXPECT_EQ(count(p, PlanItem::Remove, "callout byhand"), 1u);
  EXPECT_EQ(count(p, PlanItem::Remove, "filter zeta"), 1u);
  EXPECT_EQ(count(p, PlanItem::Remove, "principal uid 5000"), 1u);
  EXPECT_EQ(count(p, PlanItem::Add, "filter"), 0u);
  ASSERT_TRUE(apply_plan(c, p));
  auto after = c.find_callout("acme");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->id, before->id) << "a changed callout keeps its id (and its filters)";
  EXPECT_EQ(after->proxy4->port, 15011);
  auto all = c.list_callouts();
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), 1u);
  auto principals = c.list_principals();
  ASSERT_TRUE(principals);
  for (const auto& pr : *principals) EXPECT_FALSE(pr.flags & CONNREDIR_PRINCIPAL_F_AUTHORIZED);
  EXPECT_TRUE(plan({{"acme.toml", acme2}}).empty());
}

// New callouts exist before the classifier can pick them; old ones go only
// after it stops picking them (the map operation log shows the order).
TEST_F(ConfigPlan, WritesInTheOrderThatKeepsConnectsWorking) {
  apply({{"zeta.toml", kZeta}});
  store.log.clear();
  auto p = plan({{"acme.toml", kAcme}});
  ASSERT_TRUE(apply_plan(c, p));
  auto first = [&](std::string_view what) {
    auto it = std::find_if(store.log.begin(), store.log.end(),
                           [&](const std::string& l) { return l == what; });
    return it - store.log.begin();
  };
  auto last = [&](std::string_view what) {
    auto it = std::find_if(store.log.rbegin(), store.log.rend(),
                           [&](const std::string& l) { return l == what; });
    return store.log.rend() - it - 1;
  };
  EXPECT_LT(first("update callouts"), first("update filter_index"));
  EXPECT_GT(first("erase callouts"), last("update filter_index"));
  EXPECT_GT(first("erase callouts"), last("erase filter_index"));
}

TEST_F(ConfigPlan, SameFiltersInAnotherOrderAreAChange) {
  const char* two = R"(
[[callout]]
name = "a"
proxy = "127.0.0.1:1"
[[filter]]
callout = "a"
port = 1
[[filter]]
callout = "a"
port = 2
)";
  apply({{"a.toml", two}});
  std::string swapped = two;
  swapped.replace(swapped.find("port = 1"), 8, "port = X");
  swapped.replace(swapped.find("port = 2"), 8, "port = 1");
  swapped.replace(swapped.find("port = X"), 8, "port = 2");
  auto p = plan({{"a.toml", swapped}});
  EXPECT_TRUE(p.replace_filters);
  EXPECT_EQ(count(p, PlanItem::Change, "filter order"), 1u);
}

TEST_F(ConfigPlan, ExportIsTakenBackUnchanged) {
  apply({{"acme.toml", kAcme}, {"zeta.toml", kZeta}});
  auto text = export_config(c, std::nullopt, {});
  ASSERT_TRUE(text) << text.error().message;
  auto cfg = parse({{"export.toml", *text}});
  ASSERT_TRUE(cfg) << cfg.error().message << "\n" << *text;
  auto p = plan_apply(c, *cfg, nullptr);
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->empty()) << p->items.front().what << "\n" << *text;
}

// Permit and block filters (action = ...) name no callout; UDP takes them
// only. They apply, list, export and come back unchanged like redirect
// filters, and the errors name file, line and key.
const char* kActions = R"(
[[callout]]
name = "acme"
proxy = "127.0.0.1:15001"

[[filter]]
action = "block"
proto = "udp"
port = 443
weight = 1000

[[filter]]
dst = "10.1.0.0/16"
action = "permit"
weight = 500

[[filter]]
callout = "acme"
dst = "10.0.0.0/8"
)";

TEST_F(ConfigPlan, PermitAndBlockFiltersApplyAndExport) {
  apply({{"a.toml", kActions}});
  auto filters = c.list_filters();
  ASSERT_TRUE(filters);
  ASSERT_EQ(filters->size(), 3u);
  std::map<FilterAction, FilterInfo> by;
  for (const auto& f : *filters) by[f.action] = f;
  EXPECT_EQ(by[FilterAction::Block].proto, kProtoUdp);
  EXPECT_EQ(by[FilterAction::Block].ports.lo, 443);
  EXPECT_EQ(by[FilterAction::Block].callout_id, 0u);
  EXPECT_EQ(by[FilterAction::Block].callout, "");
  EXPECT_EQ(by[FilterAction::Permit].dst, cidr("10.1.0.0/16"));
  EXPECT_EQ(by[FilterAction::Redirect].callout, "acme");
  auto text = export_config(c, std::nullopt, {});
  ASSERT_TRUE(text) << text.error().message;
  EXPECT_NE(text->find("action = \"block\"\ndst = \"any\"\nport = \"443\"\nproto = \"udp\""),
            std::string::npos)
      << *text;
  auto cfg = parse({{"export.toml", *text}});
  ASSERT_TRUE(cfg) << cfg.error().message << "\n" << *text;
  auto p = plan_apply(c, *cfg, nullptr);
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->empty()) << p->items.front().what << "\n" << *text;
  // A permit filter turned into a block one is a different filter.
  std::string changed = kActions;
  changed.replace(changed.find("\"permit\""), 8, "\"block\"");
  auto again = plan({{"a.toml", changed}});
  EXPECT_TRUE(again.replace_filters);
}

TEST(Config, FilterActionErrorsNameFileLineAndKey) {
  struct Case {
    std::string text, needle;
  };
  const std::vector<Case> cases = {
      {"[[filter]]\naction = \"deny\"\n", "a.toml:2: [[filter]] #1 key action"},
      {"[[filter]]\naction = \"block\"\ncallout = \"x\"\n", "drop callout 'x'"},
      {"[[filter]]\naction = \"permit\"\ncontext = \"tls\"\n", "no context"},
      {"[[filter]]\nproto = \"udp\"\n", "callout is required"},
      {"[[filter]]\nproto = \"sctp\"\naction = \"block\"\n", "sctp"},
  };
  for (const auto& c : cases) {
    auto cfg = parse({{"a.toml", c.text}});
    ASSERT_FALSE(cfg) << c.text;
    EXPECT_NE(cfg.error().message.find(c.needle), std::string::npos)
        << c.text << " -> " << cfg.error().message;
  }
}

// Switching implicit records is a change in place (the callout keeps its id
// and filters) that writes CONNREDIR_CALLOUT_F_NO_IMPLICIT; the export
// writes the key either way, so a [global] default of the file it is applied
// with cannot flip it.
TEST_F(ConfigPlan, ImplicitRecordsChangeInPlaceAndExport) {
  auto raw = [&](uint32_t id) {
    connredir_callout v{};
    EXPECT_TRUE(*store.lookup(MapId::Callouts, &id, &v));
    return v.flags;
  };
  apply({{"acme.toml", kAcme}});
  auto before = c.find_callout("acme");
  ASSERT_TRUE(before);
  EXPECT_TRUE(before->implicit_records);
  EXPECT_EQ(raw(before->id) & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);

  std::string off = kAcme;
  off.replace(off.find("proxy_uid = 4001\n"), 17, "proxy_uid = 4001\nimplicit_records = false\n");
  auto p = plan({{"acme.toml", off}});
  ASSERT_EQ(count(p, PlanItem::Change, "callout acme"), 1u);
  EXPECT_EQ(p.items.size(), 1u) << "only the callout changes";
  auto item = std::find_if(p.items.begin(), p.items.end(),
                           [](const PlanItem& i) { return i.kind == PlanItem::Change; });
  EXPECT_NE(item->detail.find("implicit_records off (was:"), std::string::npos) << item->detail;
  ASSERT_TRUE(apply_plan(c, p));
  auto after = c.find_callout("acme");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->id, before->id);
  EXPECT_FALSE(after->implicit_records);
  EXPECT_NE(raw(after->id) & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
  EXPECT_TRUE(plan({{"acme.toml", off}}).empty());

  // The same through [global]: the callout says nothing, the default is off.
  EXPECT_TRUE(
      plan({{"main.toml", "[global]\nimplicit_records = false\n"}, {"acme.toml", kAcme}}).empty());

  auto text = export_config(c, std::nullopt, {});
  ASSERT_TRUE(text) << text.error().message;
  EXPECT_NE(text->find("implicit_records = false\n"), std::string::npos) << *text;
  auto cfg = parse({{"export.toml", *text}});
  ASSERT_TRUE(cfg) << cfg.error().message << "\n" << *text;
  auto same = plan_apply(c, *cfg, nullptr);
  ASSERT_TRUE(same);
  EXPECT_TRUE(same->empty()) << same->items.front().what << "\n" << *text;

  // Back on; exported as true, which a [global] default of false leaves on.
  ASSERT_TRUE(apply_plan(c, plan({{"acme.toml", kAcme}})));
  EXPECT_EQ(raw(after->id) & CONNREDIR_CALLOUT_F_NO_IMPLICIT, 0u);
  text = export_config(c, std::nullopt, {});
  ASSERT_TRUE(text);
  EXPECT_NE(text->find("implicit_records = true\n"), std::string::npos) << *text;
  cfg = parse({{"main.toml", "[global]\nimplicit_records = false\n"}, {"export.toml", *text}});
  ASSERT_TRUE(cfg) << cfg.error().message;
  same = plan_apply(c, *cfg, nullptr);
  ASSERT_TRUE(same);
  EXPECT_TRUE(same->empty()) << same->items.front().what << "\n" << *text;
}

TEST_F(ConfigPlan, AppliedStateNamesEachFiltersSource) {
  Files f = {{"acme.toml", kAcme}, {"zeta.toml", kZeta}};
  apply(f);
  auto cfg = parse(f);
  ASSERT_TRUE(cfg);
  auto st = applied_state_of(c, *cfg);
  ASSERT_TRUE(st) << st.error().message;
  EXPECT_EQ(st->callouts.at("acme"), "acme.toml:2");
  EXPECT_EQ(st->callouts.at("zeta"), "zeta.toml:2");
  auto filters = c.list_filters();
  ASSERT_TRUE(filters);
  ASSERT_EQ(st->filters.size(), 3u);
  for (const auto& fi : *filters)
    EXPECT_EQ(st->filters.at(fi.id).substr(0, 4), fi.callout.substr(0, 4));
}

// The applied state survives its file: the second `connredir apply` of a boot
// reads what the first wrote (the proxy units' ExecStartPre apply after
// connredir.service's; the reboot test found a dangling read of "callouts").
TEST_F(ConfigPlan, AppliedStateReadsBackWhatWasWritten) {
  Files f = {{"acme.toml", kAcme}, {"zeta.toml", kZeta}};
  apply(f);
  auto cfg = parse(f);
  ASSERT_TRUE(cfg);
  auto st = applied_state_of(c, *cfg);
  ASSERT_TRUE(st) << st.error().message;
  char tmpl[] = "/tmp/connredir-applied.XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  ASSERT_EQ(setenv("CONNREDIR_STATE_DIR", dir.c_str(), 1), 0);
  auto w = write_applied_state("/sys/fs/bpf/connredir-test", *st);
  auto r = read_applied_state("/sys/fs/bpf/connredir-test");
  remove_applied_state("/sys/fs/bpf/connredir-test");
  unsetenv("CONNREDIR_STATE_DIR");
  rmdir(dir.c_str());
  ASSERT_TRUE(w) << w.error().message;
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->files, st->files);
  EXPECT_EQ((*r)->callouts, st->callouts);
  EXPECT_EQ((*r)->filters, st->filters);
  EXPECT_EQ((*r)->principals, st->principals);
}

}  // namespace
}  // namespace connredir::control
