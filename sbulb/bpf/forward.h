/* SPDX-License-Identifier: GPL-2.0 */
/*
 * forward.h - how a rewritten packet leaves.
 *
 * mac-swap (SBULB_FORWARD_FIB 0): back to the neighbour it came from, as
 * sbulb does. fib (1): the kernel's FIB names the next hop and the egress
 * interface, after NAT:
 *
 *   SUCCESS, same interface     XDP_TX with the FIB's MAC addresses
 *   SUCCESS, another interface  XDP_REDIRECT through sbulb_devmap if sbulb is
 *                               attached there, else XDP_PASS (the kernel
 *                               forwards it; the MACs are left as they came,
 *                               addressed to this host)
 *   NO_NEIGH                    the kernel does not know the next hop's MAC
 *                               yet: same interface, MAC swap for this
 *                               packet; another one, XDP_PASS (the kernel
 *                               forwards it and resolves the neighbour; a
 *                               packet from the VIP needs accept_local when
 *                               the VIP is a local address). Either way the
 *                               next hop is noted in sbulb_neigh_miss for the
 *                               daemon to resolve.
 *   FRAG_NEEDED                 bigger than the egress MTU: XDP_PASS, the
 *                               kernel fragments it or answers with ICMP
 *   BLACKHOLE, UNREACHABLE,     XDP_DROP: no route
 *   PROHIBIT
 *   NOT_FWDED, UNSUPP_LWT       XDP_PASS: for this host, or beyond XDP
 *   FWD_DISABLED, or anything   the host does not forward (sbulb's one-armed
 *   else (an error)             deployment): MAC swap, as sbulb always did.
 *                               (bcc 0.26 builds against its own copy of
 *                               uapi bpf.h, which has no NO_SRC_ADDR.)
 */
#ifndef SBULB_FORWARD_H
#define SBULB_FORWARD_H

#include "consts.h"
#include "maps.h"
#include "nat.h"

#if SBULB_FORWARD_FIB
/* Fill a FIB lookup from the (rewritten) IP header at l3. -1 if out of
 * bounds (cannot happen: the header was parsed before). */
static __always_inline int fib_params(struct bpf_fib_lookup *fib, void *l3,
				      void *data_end, __be16 proto)
{
	struct ipv6hdr *ip6h = l3;
	struct iphdr *iph = l3;

	if (proto == bpf_htons(ETH_P_IP)) {
		if ((void *)(iph + 1) > data_end)
			return -1;
		fib->family = SBULB_AF_INET;
		fib->tos = iph->tos;
		fib->l4_protocol = iph->protocol;
		fib->tot_len = bpf_ntohs(iph->tot_len); /* checked against the MTU */
		fib->ipv4_src = iph->saddr;
		fib->ipv4_dst = iph->daddr;
		return 0;
	}
	if ((void *)(ip6h + 1) > data_end)
		return -1;
	fib->family = SBULB_AF_INET6;
	fib->flowinfo = *(__be32 *)ip6h & bpf_htonl(0x0FFFFFFF);
	fib->l4_protocol = ip6h->nexthdr;
	fib->tot_len = bpf_ntohs(ip6h->payload_len) + sizeof(*ip6h);
	__builtin_memcpy(fib->ipv6_src, &ip6h->saddr, sizeof(fib->ipv6_src));
	__builtin_memcpy(fib->ipv6_dst, &ip6h->daddr, sizeof(fib->ipv6_dst));
	return 0;
}

static __always_inline void note_neigh_miss(struct bpf_fib_lookup *fib)
{
	struct sbulb_neigh key = {};

	key.ifindex = fib->ifindex;
	if (fib->family == SBULB_AF_INET)
		addr_from_v4(&key.addr, fib->ipv4_dst); /* the next hop */
	else
		__builtin_memcpy(&key.addr, fib->ipv6_dst, sizeof(key.addr));
	neigh_miss(&key);
}
#endif

/* The XDP action for a rewritten packet (eth: its Ethernet header, l3: its
 * IP header, proto: its ethertype). */
static __always_inline int forward(struct xdp_md *ctx, struct ethhdr *eth,
				   void *l3, void *data_end, __be16 proto)
{
#if SBULB_FORWARD_FIB
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.ifindex = ctx->ingress_ifindex;
	if (fib_params(&fib, l3, data_end, proto) < 0)
		return XDP_PASS;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		if (fib.ifindex != ctx->ingress_ifindex &&
		    !is_redirect_target(fib.ifindex)) {
			count(SBULB_STAT_FWD_FIB_PASS);
			return XDP_PASS;
		}
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		if (fib.ifindex == ctx->ingress_ifindex) {
			count(SBULB_STAT_FWD_FIB_TX);
			return XDP_TX;
		}
		count(SBULB_STAT_FWD_FIB_REDIRECT);
		return redirect_to(fib.ifindex);
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		note_neigh_miss(&fib);
		if (fib.ifindex != ctx->ingress_ifindex) {
			count(SBULB_STAT_FWD_NO_NEIGH_PASS);
			return XDP_PASS;
		}
		count(SBULB_STAT_FWD_NO_NEIGH_SWAP);
		swap_macs(eth);
		return XDP_TX;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		count(SBULB_STAT_FWD_FRAG_NEEDED);
		return XDP_PASS;
	case BPF_FIB_LKUP_RET_BLACKHOLE:
	case BPF_FIB_LKUP_RET_UNREACHABLE:
	case BPF_FIB_LKUP_RET_PROHIBIT:
		count(SBULB_STAT_FWD_FIB_DROP);
		return XDP_DROP;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
	case BPF_FIB_LKUP_RET_UNSUPP_LWT:
		count(SBULB_STAT_FWD_FIB_LOCAL);
		return XDP_PASS;
	}
#endif
	count(SBULB_STAT_FWD_MAC_SWAP);
	swap_macs(eth);
	return XDP_TX;
}

#endif /* SBULB_FORWARD_H */
