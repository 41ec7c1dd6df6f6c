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

/* SipHash in three steps, so a caller can feed words from a loop of its own
 * (the BPF records MAC walks the hops in use with a constant bound: see
 * records_mac in bpf/connredir.bpf.c). Always inlined so the BPF state stays
 * in registers/stack of one program, not a pointer passed to a subprogram. */
struct connredir_siphash {
	__u64 v0, v1, v2, v3;
};

static inline __attribute__((always_inline)) void connredir_siphash_init(
	struct connredir_siphash *s, __u64 k0, __u64 k1)
{
	s->v0 = k0 ^ 0x736f6d6570736575ULL;
	s->v1 = k1 ^ 0x646f72616e646f6dULL;
	s->v2 = k0 ^ 0x6c7967656e657261ULL;
	s->v3 = k1 ^ 0x7465646279746573ULL;
}

static inline __attribute__((always_inline)) void connredir_siphash_word(
	struct connredir_siphash *s, __u64 w)
{
	s->v3 ^= w;
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= w;
}

/* nwords: how many words were fed (the message length is part of the MAC). */
static inline __attribute__((always_inline)) __u64 connredir_siphash_final(
	struct connredir_siphash *s, __u32 nwords)
{
	__u64 b = ((__u64)(nwords * 8)) << 56;

	s->v3 ^= b;
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	s->v0 ^= b;
	s->v2 ^= 0xff;
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	CONNREDIR_SIPROUND(s->v0, s->v1, s->v2, s->v3);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/* MAC of nwords words. Little-endian host assumed (x86, arm64). In BPF only
 * with a compile-time constant nwords: a variable count is a loop bounded by
 * a register, which Linux 6.1's verifier cannot prove ends in bounds. */
static inline __u64 connredir_siphash_words(__u64 k0, __u64 k1, const __u64 *m, __u32 nwords)
{
	struct connredir_siphash s;
	__u32 i;

	connredir_siphash_init(&s, k0, k1);
	for (i = 0; i < nwords; i++)
		connredir_siphash_word(&s, m[i]);
	return connredir_siphash_final(&s, nwords);
}

#endif /* CONNREDIR_SIPHASH_H */
