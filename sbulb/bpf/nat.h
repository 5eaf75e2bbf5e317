/* SPDX-License-Identifier: GPL-2.0 */
/*
 * nat.h - address rewriting, TTL / hop limit and MAC swap.
 *
 * Every rewrite updates the checksums incrementally (csum.h): the IPv4
 * header checksum covers the addresses and the TTL; the UDP checksum covers
 * the addresses through the pseudo-header, but not the TTL.
 */
#ifndef SBULB_NAT_H
#define SBULB_NAT_H

#include "csum.h"
#include "parsing.h"
#include "structs.h"

/*
 * Rewrite the IPv4 address *field (saddr or daddr) to 'to' and decrement
 * the TTL. udp_check is the UDP checksum to update, or NULL for a later
 * fragment (only the first fragment carries the UDP header; its checksum
 * covers the whole datagram). The caller has checked TTL >= SBULB_MIN_TTL.
 */
static __always_inline void nat_v4(struct iphdr *iph, __u16 *udp_check,
				   __be32 *field, __be32 to)
{
	__be32 from = *field;
	__u16 ttl_word_from, ttl_word_to;

	*field = to;
	iph->check = sbulb_csum_replace4(iph->check, from, to);
	/* UDP checksum 0 means "none" on IPv4: keep it so (RFC 768) */
	if (udp_check && *udp_check)
		*udp_check = sbulb_csum_udp_mangled0(
			sbulb_csum_replace4(*udp_check, from, to));

	/* TTL shares a 16-bit checksum word with the protocol byte */
	ttl_word_from = *(__u16 *)&iph->ttl;
	iph->ttl--;
	ttl_word_to = *(__u16 *)&iph->ttl;
	iph->check = sbulb_csum_replace2(iph->check, ttl_word_from, ttl_word_to);
}

/* Rewrite the IPv6 address *field (saddr or daddr) to 'to' and decrement
 * the hop limit (IPv6 has no header checksum); udp_check as for nat_v4. */
static __always_inline void nat_v6(struct ipv6hdr *ip6h, __u16 *udp_check,
				   struct in6_addr *field,
				   const struct sbulb_addr *to)
{
	struct sbulb_addr from;

	__builtin_memcpy(&from, field, sizeof(from));
	__builtin_memcpy(field, to, sizeof(*to));
	if (udp_check)
		*udp_check = sbulb_csum_udp_mangled0(
			sbulb_csum_replace16(*udp_check, from.a, to->a));
	ip6h->hop_limit--;
}

/* Send the frame back to the neighbour it came from (sbulb's forwarding). */
static __always_inline void swap_macs(struct ethhdr *eth)
{
	unsigned char tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

#endif /* SBULB_NAT_H */
