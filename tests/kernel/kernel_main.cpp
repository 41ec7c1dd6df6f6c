// Kernel test entry: runs the whole binary in a fresh network namespace so
// every address the tests use belongs to them and vanishes with them.
#include <gtest/gtest.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "harness.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (geteuid() != 0) {
    std::fprintf(stderr,
                 "connredir kernel tests need root (they load BPF programs into a throwaway "
                 "cgroup): SKIPPED\n");
    return 77;  // ctest SKIP_RETURN_CODE; .ci/run treats a skip as a failure
  }
  if (connredir::test::cgroup2_root().empty()) {
    std::fprintf(stderr, "no cgroup v2 mount found in /proc/mounts: connredir needs cgroup v2\n");
    return 1;
  }
  if (unshare(CLONE_NEWNET) != 0) {
    std::fprintf(stderr, "unshare(CLONE_NEWNET): %s\n", std::strerror(errno));
    return 1;
  }
  if (!connredir::test::lo_up()) {
    std::fprintf(stderr, "cannot bring lo up in the test namespace: %s\n", std::strerror(errno));
    return 1;
  }
  for (auto& stale : connredir::test::sweep_leftovers(true))
    std::fprintf(stderr, "removed a leftover of an earlier, killed run: %s\n", stale.c_str());
  int rc = RUN_ALL_TESTS();
  // Every test cleans up after itself; anything of ours still here is a bug.
  auto leaked = connredir::test::sweep_leftovers(false);
  for (auto& l : leaked) std::fprintf(stderr, "LEAK: the tests left %s behind\n", l.c_str());
  if (!leaked.empty()) return 1;
  // A skipped kernel test proves nothing: count it as a failure.
  int skipped = ::testing::UnitTest::GetInstance()->skipped_test_count();
  if (rc == 0 && skipped > 0) {
    std::fprintf(stderr, "%d kernel test(s) were skipped: failing the run\n", skipped);
    return 1;
  }
  return rc;
}
