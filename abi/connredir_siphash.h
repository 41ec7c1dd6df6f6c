/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * SipHash-2-4 over a whole number of 64-bit little-endian words, shared by
 * the BPF programs (which MAC the records blob) and the unit tests (which
 * check it against the reference test vectors). Written from the SipHash
 * paper (Aumasson & Bernstein, 2012). Restricting input to whole words keeps
 * the BPF loop simple; struct connredir_records is sized to a multiple of 8.
 */
#ifndef CONNREDIR_SIPHASH_H
#define CONNREDIR_SIPHASH_H

#define CONNREDIR_ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define CONNREDIR_SIPROUND(v0, v1, v2, v3)                                                         \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = CONNREDIR_ROTL64(v1, 13);                                                     \
		v1 ^= v0;                                                                          \
		v0 = CONNREDIR_ROTL64(v0, 32);                                                     \
		v2 += v3;                                                                          \
		v3 = CONNREDIR_ROTL64(v3, 16);                                                     \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = CONNREDIR_ROTL64(v3, 21);                                                     \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = CONNREDIR_ROTL64(v1, 17);                                                     \
		v1 ^= v2;                                                                          \
		v2 = CONNREDIR_ROTL64(v2, 32);                                                     \
	} while (0)

/* MAC of nwords words (a compile-time constant at every BPF call site so the
 * verifier sees a bounded loop). Little-endian host assumed (x86, arm64). */
static inline __u64 connredir_siphash_words(__u64 k0, __u64 k1, const __u64 *m, __u32 nwords)
{
	__u64 v0 = k0 ^ 0x736f6d6570736575ULL;
	__u64 v1 = k1 ^ 0x646f72616e646f6dULL;
	__u64 v2 = k0 ^ 0x6c7967656e657261ULL;
	__u64 v3 = k1 ^ 0x7465646279746573ULL;
	__u64 b = ((__u64)(nwords * 8)) << 56;
	__u32 i;

	for (i = 0; i < nwords; i++) {
		__u64 w = m[i];
		v3 ^= w;
		CONNREDIR_SIPROUND(v0, v1, v2, v3);
		CONNREDIR_SIPROUND(v0, v1, v2, v3);
		v0 ^= w;
	}
	v3 ^= b;
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	v0 ^= b;
	v2 ^= 0xff;
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	CONNREDIR_SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

#endif /* CONNREDIR_SIPHASH_H */
