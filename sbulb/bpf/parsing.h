/* SPDX-License-Identifier: GPL-2.0 */
/*
 * parsing.h - header parsers over a cursor.
 *
 * Contract: each parse_<hdr>(nh, data_end, &hdr) checks the bounds of its
 * own header right before reading it, points *hdr at it, moves the cursor
 * past it and returns the next protocol (or 0), or -1 when the packet is too
 * short or the header is invalid. Returned protocols keep the byte order of
 * the packet for Ethernet (compare with bpf_htons()) and are single bytes
 * for IP.
 */
#ifndef SBULB_PARSING_H
#define SBULB_PARSING_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>

#include "consts.h"

struct hdr_cursor {
	void *pos;
};

static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end)
		return -1;
	nh->pos = eth + 1;
	*ethhdr = eth;
	return eth->h_proto;
}

/* IPv4 with any valid IHL (5..15 words): options are skipped, not read. */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end,
				       struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -1;
	if (iph->version != 4)
		return -1;
	hdrsize = iph->ihl * 4;
	if (hdrsize < (int)sizeof(*iph))
		return -1;
	/* the verifier needs this check on the variable-sized header */
	if (nh->pos + hdrsize > data_end)
		return -1;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end,
					struct ipv6hdr **ip6hdr)
{
	struct ipv6hdr *ip6h = nh->pos;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	if (ip6h->version != 6)
		return -1;
	nh->pos = ip6h + 1;
	*ip6hdr = ip6h;
	return ip6h->nexthdr;
}

static __always_inline int parse_udphdr(struct hdr_cursor *nh, void *data_end,
					struct udphdr **udphdr)
{
	struct udphdr *udp = nh->pos;

	if ((void *)(udp + 1) > data_end)
		return -1;
	if (bpf_ntohs(udp->len) < sizeof(*udp))
		return -1;
	nh->pos = udp + 1;
	*udphdr = udp;
	return 0;
}

/*
 * A fragment is any IPv4 packet with MF set or a non-zero offset:
 *
 *   frag_off:  | 0 | DF | MF |      fragment offset (13 bits)      |
 */
static __always_inline int ipv4_is_fragment(const struct iphdr *iph)
{
	return iph->frag_off & bpf_htons(IP_MF | IP_OFFSET);
}

/* IPv6 extension headers that may stand between the IPv6 header and UDP. */
static __always_inline int ipv6_is_ext_header(int nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_MH:
		return 1;
	}
	return 0;
}

#endif /* SBULB_PARSING_H */
