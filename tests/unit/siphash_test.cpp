// The SipHash-2-4 that MACs records in the kernel (abi/connredir_siphash.h)
// against the reference test vectors of the SipHash paper (key 00..0f,
// message 00..len-1), for the whole-word lengths the BPF side uses.
#include <gtest/gtest.h>
#include <linux/types.h>

#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
#include "connredir_siphash.h"
}

namespace {

uint64_t mac_of_len(size_t len) {
  std::vector<uint8_t> bytes(len);
  for (size_t i = 0; i < len; i++) bytes[i] = static_cast<uint8_t>(i);
  std::vector<__u64> words(len / 8);
  if (len) std::memcpy(words.data(), bytes.data(), len);  // data() may be null when empty
  return connredir_siphash_words(0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL, words.data(),
                                 static_cast<uint32_t>(words.size()));
}

TEST(SipHash, ReferenceVectors) {
  EXPECT_EQ(mac_of_len(0), 0x726fdb47dd0e0e31ULL);
  EXPECT_EQ(mac_of_len(8), 0x93f5f5799a932462ULL);
  EXPECT_EQ(mac_of_len(16), 0x3f2acc7f57c29bdbULL);
}

TEST(SipHash, EveryBitOfTheMessageAndKeyMatters) {
  std::vector<__u64> m(58, 0x1234567890abcdefULL);
  uint64_t base = connredir_siphash_words(1, 2, m.data(), 58);
  for (size_t w = 0; w < m.size(); w++) {
    for (int b = 0; b < 64; b += 13) {
      auto c = m;
      c[w] ^= 1ULL << b;
      EXPECT_NE(connredir_siphash_words(1, 2, c.data(), 58), base) << w << ":" << b;
    }
  }
  EXPECT_NE(connredir_siphash_words(1, 3, m.data(), 58), base);
  EXPECT_NE(connredir_siphash_words(0, 2, m.data(), 58), base);
}

}  // namespace
