/* SPDX-License-Identifier: GPL-2.0 */
/*
 * mirror.h - mirror mode: every datagram to the service goes to every server
 * of its cycle, each copy with only its destination rewritten.
 *
 * XDP cannot clone a frame; a devmap broadcast (BPF_F_BROADCAST) can: the
 * kernel copies the frame once per entry of the map and runs the entry's
 * egress program on each copy before it leaves. So each mirror service has
 * a devmap of its own (maps.h sbulb_mirror_<n>) with one entry per target,
 * pointing at the interface the target is reached through, and the ingress
 * program (mirror_out) broadcasts into it. sbulb_mirror_tx, the egress
 * program, then has to tell which target a copy is for, and the kernel
 * does not say which entry a copy came from. What it does guarantee
 * (kernel/bpf/devmap.c, 6.x): the copies of one frame are queued in the
 * order of the entries, per CPU and per egress interface, and the egress
 * program runs on them in that order. So the ingress program numbers each
 * mirrored frame (per CPU) in its XDP metadata, and the egress program
 * counts copies of the same number, per CPU and interface: the k-th copy
 * goes to the k-th target of the cycle. This needs every target of a
 * service behind the same interface (sbulb/dataplane.py checks it).
 *
 * The metadata also carries the service's cycle as it was when the frame
 * arrived, so that a reload between the broadcast and the copies (they
 * leave at the end of the driver's poll) never mixes two cycles.
 *
 * The kernel runs one egress program per interface and poll, the one of
 * the first frame queued there, whatever devmap entry queued the others.
 * Every devmap entry sbulb writes (sbulb_devmap's too) therefore carries
 * sbulb_mirror_tx, which leaves frames without sbulb's metadata untouched.
 * (bcc makes programs only of the main file's functions: balancer.c
 * defines it.)
 *
 * Generic XDP keeps no metadata across a redirect: mirror needs native
 * XDP, which the daemon checks before it writes a mirror devmap entry.
 */
#ifndef SBULB_MIRROR_H
#define SBULB_MIRROR_H

#include "consts.h"
#include "maps.h"
#include "nat.h"
#include "parsing.h"
#include "telemetry.h"

/* What mirror_out leaves in front of a frame (XDP metadata) for the copies. */
struct sbulb_mirror_meta {
	__u16 magic;     /* SBULB_MIRROR_MAGIC: a mirrored frame */
	__u16 ring_len;  /* the service's targets (copy_base, copy_len) ... */
	__u32 ring_base; /* ... in sbulb_ring, when the frame arrived */
	__u32 seq;       /* this CPU's number for the frame (sbulb_mirror_seq) */
	__u32 service;   /* service id */
	__u32 whole;     /* template: the member slot whose copy stays whole ... */
	__u32 trim;      /* ... and the UDP payload the other copies keep (0: all) */
};

/* Ingress: hand a mirrored frame (magic SBULB_MIRROR_MAGIC) or a telemetry
 * template (SBULB_TEMPLATE_MAGIC) to the broadcast of its service. *stat
 * becomes a drop verdict when no copy can be made. */
static __always_inline int mirror_out(struct xdp_md *ctx, __u32 service,
				      __u16 magic, __u32 whole, __u32 trim, __u32 *stat)
{
	struct sbulb_service *svc = svc_get(service);
	struct sbulb_mirror_meta *m;
	__u32 seq, len;

	if (!svc_live(svc) || svc->copy_len == 0) {
		*stat = SBULB_STAT_DROP_NO_REAL_SERVER;
		return XDP_DROP;
	}
	len = svc->copy_len;
	seq = mirror_seq_next();
	/* exactly our metadata in front of the frame, whatever was there (a
	 * driver's, or a recycled page's: the kernel's test-run page pool
	 * keeps the last metadata size). adjust_meta invalidates every packet
	 * pointer: nothing reads the packet after this. */
	if (bpf_xdp_adjust_meta(ctx, (int)(ctx->data - ctx->data_meta) - (int)sizeof(*m))) {
		*stat = SBULB_STAT_DROP_MIRROR_NO_META;
		return XDP_DROP;
	}
	m = (void *)(long)ctx->data_meta;
	if ((void *)(m + 1) > (void *)(long)ctx->data) {
		*stat = SBULB_STAT_DROP_MIRROR_NO_META;
		return XDP_DROP;
	}
	m->magic = magic;
	m->ring_len = len > SBULB_MIRROR_TARGETS ? SBULB_MIRROR_TARGETS : len;
	m->ring_base = svc->copy_base;
	m->seq = seq;
	m->service = service;
	m->whole = whole;
	m->trim = trim;
	return mirror_broadcast(svc->mirror);
}

/* Rewrite a copy's destination to `to` (IPv4 or IPv6, whole or a
 * fragment: only a whole datagram or a first fragment has the UDP header
 * whose checksum covers the address). -1 if the headers are not what the
 * ingress program parsed (cannot happen: it is the same frame). */
static __always_inline int mirror_rewrite(void *data, void *data_end,
					  const struct sbulb_addr *to,
					  struct ethhdr **eth, void **l3, int *proto)
{
	struct hdr_cursor nh = { .pos = data };
	struct sbulb_ip6_frag *fh = NULL;
	struct ipv6hdr *ip6h;
	struct iphdr *iph;
	struct udphdr *udp;
	int next, i;

	*proto = parse_ethhdr(&nh, data_end, eth);
	*l3 = nh.pos;
	if (*proto == bpf_htons(ETH_P_IP)) {
		if (parse_iphdr(&nh, data_end, &iph) != IPPROTO_UDP)
			return -1;
		if (ipv4_is_later_fragment(iph)) {
			nat_v4(iph, NULL, &iph->daddr, to->a[3]);
			return 0;
		}
		if (parse_udphdr(&nh, data_end, &udp) < 0)
			return -1;
		nat_v4(iph, &udp->check, &iph->daddr, to->a[3]);
		return 0;
	}
	if (*proto != bpf_htons(ETH_P_IPV6))
		return -1;
	next = parse_ip6hdr(&nh, data_end, &ip6h);
	if (next < 0)
		return -1;
#pragma unroll
	for (i = 0; i < SBULB_MAX_IPV6_EXT; i++) {
		if (!ipv6_is_ext_header(next) || (fh && ipv6_is_later_fragment(fh)))
			break;
		next = parse_ip6_ext(&nh, data_end, next, &fh);
		if (next < 0)
			return -1;
	}
	if (fh && ipv6_is_later_fragment(fh)) {
		nat_v6(ip6h, NULL, &ip6h->daddr, to);
		return 0;
	}
	if (next != IPPROTO_UDP || parse_udphdr(&nh, data_end, &udp) < 0)
		return -1;
	nat_v6(ip6h, &udp->check, &ip6h->daddr, to);
	return 0;
}

/* How a copy leaves its interface: 0 with its MAC addresses set, -1 if it
 * cannot leave there (as forward.h, but a copy cannot change interface). */
static __always_inline int mirror_macs(struct xdp_md *ctx, struct ethhdr *eth,
				       void *l3, void *data_end, int proto)
{
#if SBULB_FORWARD_FIB
	struct bpf_fib_lookup fib = {};
	int rc;

	fib.ifindex = ctx->ingress_ifindex;
	if (fib_params(&fib, l3, data_end, proto) < 0)
		return -1;
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (fib.ifindex != ctx->egress_ifindex)
			return -1;
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		return 0;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* not swapped back to where it came from (as forward.h does for
		 * a balanced packet): a copy is for a target, not for the
		 * client's side. The daemon resolves it: later copies go */
		note_neigh_miss(&fib);
		return -1;
	}
	if (rc != BPF_FIB_LKUP_RET_FWD_DISABLED)
		return -1; /* no route, for this host, too big: not as a copy */
#endif
	/* sbulb's MAC swap: back to the neighbour the frame came from, which
	 * only makes sense out of the interface it came in by */
	if (ctx->egress_ifindex != ctx->ingress_ifindex)
		return -1;
	swap_macs(eth);
	return 0;
}

/*
 * sbulb_mirror_tx (balancer.c), the egress program of every devmap entry
 * sbulb writes: a copy of a mirrored frame becomes the copy for the next
 * target of its service; any other frame leaves untouched.
 */
static __always_inline int mirror_tx(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct sbulb_mirror_meta *m = (void *)(long)ctx->data_meta;
	struct sbulb_mirror_state *st;
	struct sbulb_member *member;
	__u32 k, *slot, copy;
	struct sbulb_addr to;
	struct ethhdr *eth;
	int proto, template;
	void *l3;

	if ((void *)(m + 1) > data ||
	    (m->magic != SBULB_MIRROR_MAGIC && m->magic != SBULB_TEMPLATE_MAGIC))
		return XDP_PASS;
	st = mirror_state_get(ctx->egress_ifindex);
	if (!st)
		goto failed;
	if (st->seq != m->seq) {
		st->seq = m->seq;
		st->next = 0;
	}
	k = st->next++;
	/* more entries than targets: a reload is adding or removing some */
	if (k >= m->ring_len)
		goto failed;
	slot = ring_get(m->ring_base + k);
	if (!slot)
		goto failed;
	member = rs_get(*slot);
	if (!member || member->service != m->service || addr_is_zero(&member->addr))
		goto failed;
	to = member->addr;
	template = m->magic == SBULB_TEMPLATE_MAGIC;
	/* a template's copy for a collector that does not get its data: cut
	 * (telemetry.h; every packet pointer is new afterwards) */
	if (template && m->trim && *slot != m->whole) {
		copy = *slot;
		if (template_trim(ctx, m->trim) < 0) {
			count_copy_fail(copy);
			goto failed;
		}
		/* read anew: LLVM would reuse (and zero-extend) the old
		 * data_end, which the verifier refuses as arithmetic on it */
		asm volatile("" ::: "memory");
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		slot = &copy;
	}
	if (mirror_rewrite(data, data_end, &to, &eth, &l3, &proto) < 0 ||
	    mirror_macs(ctx, eth, l3, data_end, proto) < 0) {
		count_copy_fail(*slot);
		goto failed;
	}
	count_traffic(0, *slot, SBULB_DIR_TO_SERVER, bpf_xdp_get_buff_len(ctx));
	count(template ? SBULB_STAT_TEMPLATE_COPIED : SBULB_STAT_MIRROR_SENT);
	return XDP_PASS;
failed:
	count(SBULB_STAT_MIRROR_FAILED);
	return XDP_DROP;
}

#endif /* SBULB_MIRROR_H */
