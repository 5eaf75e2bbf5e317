/* SPDX-License-Identifier: GPL-2.0 */
/*
 * csum.h - incremental Internet checksum updates (RFC 1624).
 *
 * A field that changes from m to m' turns checksum HC into
 *     HC' = ~(~HC + ~m + m')                              (RFC 1624, eqn. 3)
 * in one's complement arithmetic. We add 32-bit words with end-around carry
 * and fold to 16 bits at the end: 2^16 = 1 (mod 0xffff), so a 32-bit one's
 * complement sum folds to the same 16-bit one's complement sum, and ~w is -w.
 * Byte order does not matter as long as every word is taken as it lies in
 * memory, the checksum field included.
 */
#ifndef SBULB_CSUM_H
#define SBULB_CSUM_H

/* 32-bit one's complement addition (end-around carry), without a branch:
 * the carry out of a 64-bit add is its bit 32. Every branch here would
 * double the verifier's states for the rest of the program (a rewrite
 * adds up to 13 words): with `sum + (sum < addend)`, LLVM 14 emits a
 * conditional jump and the multi-service program no longer fitted the
 * verifier's 1M instructions (6.18, 2026-12). */
static __always_inline __u32 sbulb_csum_add(__u32 sum, __u32 addend)
{
	__u64 s = (__u64)sum + addend;

	return (__u32)s + (__u32)(s >> 32);
}

/* 32-bit one's complement subtraction. */
static __always_inline __u32 sbulb_csum_sub(__u32 sum, __u32 v)
{
	return sbulb_csum_add(sum, ~v);
}

/* Fold a 32-bit sum to 16 bits and complement it: the checksum field. */
static __always_inline __u16 sbulb_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Unfold a checksum field into a sum we can update (~HC). */
static __always_inline __u32 sbulb_csum_unfold(__u16 check)
{
	return (__u16)~check;
}

/* Checksum after a 16-bit word changed from 'from' to 'to'. */
static __always_inline __u16 sbulb_csum_replace2(__u16 check, __u16 from, __u16 to)
{
	return sbulb_csum_fold(sbulb_csum_add(sbulb_csum_sub(sbulb_csum_unfold(check), from), to));
}

/* Checksum after a 32-bit word changed from 'from' to 'to'. */
static __always_inline __u16 sbulb_csum_replace4(__u16 check, __u32 from, __u32 to)
{
	return sbulb_csum_fold(sbulb_csum_add(sbulb_csum_sub(sbulb_csum_unfold(check), from), to));
}

/* Checksum after a 128-bit IPv6 address changed from 'from' to 'to'. */
static __always_inline __u16 sbulb_csum_replace16(__u16 check, const __be32 *from,
					    const __be32 *to)
{
	__u32 sum = sbulb_csum_unfold(check);
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		sum = sbulb_csum_add(sbulb_csum_sub(sum, from[i]), to[i]);
	return sbulb_csum_fold(sum);
}

/*
 * UDP checksum field after an update. A computed 0 is sent as 0xffff: on
 * the wire 0 means "no checksum" (IPv4) or is invalid (IPv6). RFC 768.
 */
static __always_inline __u16 sbulb_csum_udp_mangled0(__u16 check)
{
	return check ? check : 0xffff;
}

/*
 * Is an IPv4 header's checksum right? The kernel drops a header whose
 * checksum is wrong, so we must not balance (and associate) one. The
 * header is 20 to 60 bytes (ihl 5..15): summed 4 bytes at a time in a
 * bounded loop (at most 15 turns, which the verifier walks), each word
 * bounds-checked against data_end. A right header sums, checksum included, to
 * 0xffff.
 */
static __always_inline int sbulb_ipv4_csum_ok(const struct iphdr *iph, const void *data_end)
{
	const __u32 *word = (const __u32 *)iph;
	__u32 words = iph->ihl, sum = 0, i;

	/* LLVM knows the parser checked iph + ihl * 4 <= data_end and drops
	 * the checks below as redundant; the verifier does not know it. An
	 * empty asm makes data_end opaque to LLVM, so they stay (2026-12). */
	asm volatile("" : "+r"(data_end));
	for (i = 0; i < 15; i++) {
		if (i >= words)
			break;
		if ((const void *)(word + i + 1) > data_end)
			return 0;
		sum = sbulb_csum_add(sum, word[i]);
	}
	return sbulb_csum_fold(sum) == 0;
}

#endif /* SBULB_CSUM_H */
