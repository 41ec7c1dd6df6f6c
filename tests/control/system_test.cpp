#include <gtest/gtest.h>

#include "connredir/control.hpp"

namespace connredir::control {
namespace {

TEST(System, FindCgroup2Mount) {
  const char* mounts =
      "sysfs /sys sysfs rw 0 0\n"
      "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
  auto m = find_cgroup2_mount(mounts);
  ASSERT_TRUE(m);
  EXPECT_EQ(*m, "/sys/fs/cgroup/unified");
  auto e = find_cgroup2_mount("none /my\\040cg cgroup2 rw 0 0\n");
  ASSERT_TRUE(e);
  EXPECT_EQ(*e, "/my cg");
  auto none = find_cgroup2_mount("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, ENOENT);
  EXPECT_NE(none.error().message.find("cgroup v2"), std::string::npos);
}

TEST(System, CgroupLevel) {
  EXPECT_EQ(*cgroup_level("/sys/fs/cgroup", "/sys/fs/cgroup"), 0u);
  EXPECT_EQ(*cgroup_level("/sys/fs/cgroup", "/sys/fs/cgroup/a"), 1u);
  EXPECT_EQ(*cgroup_level("/sys/fs/cgroup/", "/sys/fs/cgroup/a/b/"), 2u);
  EXPECT_EQ(*cgroup_level("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/x/y/z"), 3u);
  EXPECT_FALSE(cgroup_level("/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu"));
  EXPECT_FALSE(cgroup_level("/sys/fs/cgroup/unified", "/sys/fs/cgroup/unifiedx"));
  EXPECT_FALSE(cgroup_level("/sys/fs/cgroup", "/tmp"));
}

TEST(System, KernelRelease) {
  auto r = parse_kernel_release("6.18.44-fc-v669");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 6);
  EXPECT_EQ(r->second, 18);
  EXPECT_TRUE(*parse_kernel_release("5.18.0") >= (std::pair{5, 18}));
  EXPECT_TRUE(*parse_kernel_release("5.17") < (std::pair{5, 18}));
  EXPECT_TRUE(*parse_kernel_release("5.4.0-generic") < (std::pair{5, 18}));
  EXPECT_FALSE(parse_kernel_release("x.y"));
  EXPECT_FALSE(parse_kernel_release("6"));
}

TEST(System, LockPath) { EXPECT_EQ(lock_path(), "/run/connredir.lock"); }

TEST(System, MapSizesMatchAbi) {
  EXPECT_EQ(map_key_size(MapId::FilterIndex), 24u);
  EXPECT_EQ(map_value_size(MapId::FilterIndex), 4u + 4u * CONNREDIR_CANDIDATES_MAX);
  EXPECT_STREQ(map_name(MapId::FilterIndex), "filter_index");
}

}  // namespace
}  // namespace connredir::control
