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

/* The IPv6 fragment header (RFC 8200 4.5); uapi headers do not have it. */
struct sbulb_ip6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset (13 bits, 8-byte units) << 3 | M */
	__be32 identification;
};

/* A later fragment: no transport header in it. */
static __always_inline int ipv4_is_later_fragment(const struct iphdr *iph)
{
	return iph->frag_off & bpf_htons(IP_OFFSET);
}

static __always_inline int ipv6_is_later_fragment(const struct sbulb_ip6_frag *fh)
{
	return fh->frag_off & bpf_htons(IP6_OFFSET);
}

/*
 * One IPv6 extension header of type `proto`: hop-by-hop, destination
 * options, routing (only with no segment left: else the destination
 * address is not the final one) and fragment. Returns the next header, -1
 * when truncated or invalid, -2 for a header we do not walk past (AH, ESP,
 * mobility, a routing header with segments left). *frag points at the
 * fragment header if there is one.
 */
static __always_inline int parse_ip6_ext(struct hdr_cursor *nh, void *data_end,
					 int proto,
					 struct sbulb_ip6_frag **frag)
{
	struct ipv6_opt_hdr *opt = nh->pos;
	struct sbulb_ip6_frag *fh;
	struct ipv6_rt_hdr *rt;
	int len;

	switch (proto) {
	case IPPROTO_FRAGMENT:
		fh = nh->pos;
		if ((void *)(fh + 1) > data_end || *frag)
			return -1; /* truncated, or a second fragment header */
		*frag = fh;
		nh->pos = fh + 1;
		return fh->nexthdr;
	case IPPROTO_ROUTING:
		rt = nh->pos;
		if ((void *)(rt + 1) > data_end)
			return -1;
		if (rt->segments_left)
			return -2;
		break;
	case IPPROTO_HOPOPTS:
	case IPPROTO_DSTOPTS:
		break;
	default:
		return -2;
	}
	if ((void *)(opt + 1) > data_end)
		return -1;
	len = (opt->hdrlen + 1) * 8;
	if (nh->pos + len > data_end)
		return -1;
	nh->pos += len;
	return opt->nexthdr;
}

/* Extension headers we may meet between IPv6 and UDP. */
static __always_inline int ipv6_is_ext_header(int nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_ESP:
	case IPPROTO_MH:
		return 1;
	}
	return 0;
}

#endif /* SBULB_PARSING_H */
