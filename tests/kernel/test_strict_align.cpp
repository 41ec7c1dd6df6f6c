// connredir's object loads where the verifier checks alignment: on
// architectures without efficient unaligned access (Debian's mips ports),
// emulated here with BPF_F_STRICT_ALIGNMENT on every program, which makes
// the verifier apply the same checks on x86-64. The socket-option programs
// copy their buffers in words only when the loader found that allowed
// (cfg_optval_words, bpf/lib/sockopt.h); these tests load the real object
// both ways.
//
// Only the skeleton here: its `struct connredir` cannot share a translation
// unit with `namespace connredir` (the probe's tests: test_features.cpp).
#include <bpf/libbpf.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>

#include <cstdarg>
#include <cstdio>
#include <string>

#include "connredir.skel.h"

namespace {

// Loads the object (maps created, nothing attached or pinned); 0 or -errno.
int load_object(bool strict, bool words, std::string* log) {
  static std::string* sink = nullptr;
  sink = log;
  // Warnings only: they carry the verifier's log of a refused program.
  const libbpf_print_fn_t before =
      libbpf_set_print([](enum libbpf_print_level level, const char* fmt, va_list ap) {
        if (level == LIBBPF_DEBUG) return 0;
        if (!sink) return 0;
        va_list again;
        va_copy(again, ap);
        const int n = vsnprintf(nullptr, 0, fmt, again);  // the verifier log comes as one %s
        va_end(again);
        if (n <= 0) return 0;
        std::string text(static_cast<size_t>(n) + 1, '\0');
        vsnprintf(text.data(), text.size(), fmt, ap);
        text.resize(static_cast<size_t>(n));
        *sink += text;
        return 0;
      });
  struct connredir* skel = connredir__open();
  if (!skel) return -errno;
  skel->rodata->cfg_optval_words = words ? 1 : 0;
  if (strict) {
    struct bpf_program* prog;
    bpf_object__for_each_program(prog, skel->obj) {
      if (bpf_program__set_flags(prog, bpf_program__flags(prog) | BPF_F_STRICT_ALIGNMENT) != 0)
        ADD_FAILURE() << "cannot set BPF_F_STRICT_ALIGNMENT on " << bpf_program__name(prog);
    }
  }
  const int rc = connredir__load(skel);
  connredir__destroy(skel);
  libbpf_set_print(before);  // the harness's printer, if it had one
  sink = nullptr;
  return rc;
}

TEST(StrictAlignment, ObjectLoadsWithByteCopies) {
  std::string log;
  EXPECT_EQ(load_object(true, false, &log), 0)
      << "the object must load where the kernel checks alignment:\n"
      << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
}

// The other side of the test above: the word copies are what a strict kernel
// refuses, so the flag (and the verifier's pruning of the branch it does not
// select) is what makes the object load there.
TEST(StrictAlignment, WordCopiesAreRefusedThere) {
  std::string log;
  EXPECT_NE(load_object(true, true, &log), 0);
  EXPECT_NE(log.find("misaligned"), std::string::npos)
      << log.substr(log.size() > 3000 ? log.size() - 3000 : 0);
}

TEST(StrictAlignment, WordCopiesLoadWhereAlignmentIsNotChecked) {
  std::string log;
  EXPECT_EQ(load_object(false, true, &log), 0)
      << log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
}

}  // namespace
