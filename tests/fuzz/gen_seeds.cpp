// Writes the binary seed corpus: well-formed records blobs (0..8 hops, v4 and
// v6, odd comm bytes), their hex text, and contexts (user_len 0..max). Valid
// seeds let the fuzzers start past the magic/size checks and explore the
// decoders and renderers instead of only the first rejection.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "blobs.hpp"

namespace fs = std::filesystem;

namespace {

bool write(const fs::path& p, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(p.c_str(), "wb");
  if (!f) return false;
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  return std::fclose(f) == 0 && ok;
}

std::vector<uint8_t> hex_text(const std::vector<uint8_t>& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::vector<uint8_t> out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    out.push_back(static_cast<uint8_t>(digits[bytes[i] >> 4]));
    out.push_back(static_cast<uint8_t>(digits[bytes[i] & 0xf]));
    if (i % 32 == 31) out.push_back('\n');
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  std::error_code ec;
  for (const char* d : {"records", "context"}) {
    fs::create_directories(out / d, ec);
    if (ec) {
      std::fprintf(stderr, "%s: %s\n", (out / d).c_str(), ec.message().c_str());
      return 1;
    }
  }

  std::vector<std::vector<uint8_t>> records;
  const std::initializer_list<uint32_t> chains[] = {
      {}, {1}, {1, 2}, {2, 1, 2}, {1, 2, 3, 4}, {1, 2, 3, 4, 5, 6, 7, 8}};
  for (const auto& chain : chains) records.push_back(testblobs::bytes(testblobs::records(chain)));
  auto v6 = testblobs::records({3, 4});
  v6.origin.src = testblobs::v6_loopback(12345);
  v6.hops[1].dst = testblobs::v6_loopback(8443);
  std::memcpy(v6.origin.comm, "\xff\x01\n\"\\tab\tXXXXXXXX", 16);  // no NUL, not UTF-8
  records.push_back(testblobs::bytes(v6));

  bool ok = true;
  for (size_t i = 0; i < records.size(); ++i) {
    ok &= write(out / "records" / ("blob" + std::to_string(i)), records[i]);
    // fuzz_records also decodes its input as hex text.
    ok &= write(out / "records" / ("hex" + std::to_string(i)), hex_text(records[i]));
  }
  for (uint16_t len : {0, 1, 16, 127, CONNREDIR_USER_CONTEXT_MAX})
    ok &= write(out / "context" / ("ctx" + std::to_string(len)),
                testblobs::bytes(testblobs::context(len)));
  if (!ok) {
    std::fprintf(stderr, "failed to write seeds under %s\n", out.c_str());
    return 1;
  }
  return 0;
}
