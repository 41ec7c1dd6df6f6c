// Kernel feature probes that decide how the object is loaded.
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include "connredir/control.hpp"
#include "harness.hpp"

namespace connredir::test {
namespace {

// The probe that decides the socket-option programs' copies
// (bpf/lib/sockopt.h, cfg_optval_words) tells the verifier's verdicts apart:
// with BPF_F_STRICT_ALIGNMENT (what a strict-alignment architecture always
// applies) it must say no, or the object would not load there.
TEST(Features, SockoptWordAccessProbeSeesStrictAlignment) {
  auto strict = control::probe_sockopt_word_access(BPF_F_STRICT_ALIGNMENT);
  ASSERT_TRUE(strict.has_value()) << strict.error().message;
  EXPECT_FALSE(*strict);
  auto here = control::probe_sockopt_word_access(0);
  ASSERT_TRUE(here.has_value()) << here.error().message;
#if defined(__x86_64__) || defined(__aarch64__)
  EXPECT_TRUE(*here) << "x86-64 and arm64 have efficient unaligned access";
#endif
}

class FeaturesStatus : public KernelTest {};

// `status` reports it, with what a missing one disables, and `up` used it.
TEST_F(FeaturesStatus, ListsSockoptWordAccess) {
  auto status = cli_json({"status"});
  bool found = false;
  for (auto& f : status["features"]) {
    if (f.value("name", "") != "sockopt_word_access") continue;
    found = true;
    EXPECT_FALSE(f.value("required", true));
    EXPECT_FALSE(f.value("disables_when_missing", "").empty()) << f.dump();
    auto probed = control::probe_sockopt_word_access(0);
    ASSERT_TRUE(probed.has_value()) << probed.error().message;
    EXPECT_EQ(f["present"], *probed) << f.dump();
  }
  EXPECT_TRUE(found) << status.dump();
}

}  // namespace
}  // namespace connredir::test
