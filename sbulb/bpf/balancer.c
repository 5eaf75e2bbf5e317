/* SPDX-License-Identifier: GPL-2.0 */
/*
 * balancer.c - sbulb's XDP entry point: parse -> classify -> NAT -> forward.
 *
 * Ingress (to VIP:port): the client's association names a real server (one is
 * picked round robin and stored when there is none), the destination becomes
 * that server. Egress (from a real server's balanced port): the source
 * becomes the VIP; the association is created if missing (server-initiated),
 * and a server that is not the associated one is dropped. Rewritten packets
 * get their checksums updated incrementally and their TTL / hop limit
 * decremented; forward.h says how they leave. Fragments follow their first
 * fragment, ICMP errors about balanced datagrams are translated (icmp.h).
 * Everything else goes to the kernel untouched (XDP_PASS). Each packet is
 * counted in exactly one verdict slot of sbulb_stats.
 *
 * This file also defines the map accessors declared in maps.h: bcc rewrites
 * map operations only in the main source file.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parsing.h"
#include "csum.h"
#include "nat.h"
#include <linux/icmp.h>
#include <linux/icmpv6.h>

/* ---- map accessors (declared in maps.h) ---- */

static __always_inline struct sbulb_cfg *cfg_get(void)
{
	__u32 zero = 0;

	return sbulb_cfg.lookup(&zero);
}

static __always_inline int port_is_balanced(__be16 port)
{
	return sbulb_ports.lookup(&port) != NULL;
}

static __always_inline __u32 rs_slot(struct sbulb_addr *addr)
{
	__u32 *slot = sbulb_rs_index.lookup(addr);

	return slot ? *slot : 0;
}

static __always_inline __u32 *ring_get(__u32 idx)
{
	return sbulb_ring.lookup(&idx);
}

static __always_inline struct sbulb_addr *rs_get(__u32 slot)
{
	return sbulb_rs.lookup(&slot);
}

static __always_inline struct sbulb_rr *rr_get(void)
{
	__u32 zero = 0;

	return sbulb_rr.lookup(&zero);
}

static __always_inline struct sbulb_assoc *
assoc_lookup(struct sbulb_assoc_key *key)
{
	return sbulb_assoc.lookup(key);
}

static __always_inline int assoc_insert(struct sbulb_assoc_key *key,
					struct sbulb_assoc *val)
{
	return sbulb_assoc.insert(key, val);
}

static __always_inline int assoc_update(struct sbulb_assoc_key *key,
					struct sbulb_assoc *val)
{
	return sbulb_assoc.update(key, val);
}

static __always_inline struct sbulb_frag *frag_lookup(struct sbulb_frag_key *key)
{
	return sbulb_frags.lookup(key);
}

static __always_inline void frag_store(struct sbulb_frag_key *key,
				       struct sbulb_frag *val)
{
	sbulb_frags.update(key, val);
}

static __always_inline int is_redirect_target(__u32 ifindex)
{
	return sbulb_ifslot.lookup(&ifindex) != NULL;
}

static __always_inline int redirect_to(__u32 ifindex)
{
	__u32 *slot = sbulb_ifslot.lookup(&ifindex);

	if (!slot)
		return XDP_PASS;
	return sbulb_devmap.redirect_map(*slot, 0);
}

static __always_inline void neigh_miss(struct sbulb_neigh *key)
{
	__u64 one = 1, *seen = sbulb_neigh_miss.lookup(key);

	if (seen)
		*seen += 1;
	else
		sbulb_neigh_miss.update(key, &one);
}

static __always_inline void count_slot(__u32 slot, __u32 dir, __u64 bytes)
{
	struct sbulb_traffic *t;
	__u32 idx;

	if (!slot)
		return;
	idx = slot * 2 + dir;
	t = sbulb_rs_stats.lookup(&idx);
	if (t) {
		t->packets += 1;
		t->bytes += bytes;
	}
}

/* Per-CPU array, softirq context: a plain increment needs no atomic. */
static __always_inline void count(__u32 stat)
{
	__u64 *c = sbulb_stats.lookup(&stat);

	if (c)
		*c += 1;
}

#if SBULB_EVENTS
static __always_inline void emit_event(__u32 type,
				       const struct sbulb_addr *client,
				       __be16 client_port, __be16 port,
				       const struct sbulb_addr *server,
				       const struct sbulb_addr *other)
{
	struct sbulb_event *ev;

	ev = sbulb_events.ringbuf_reserve(sizeof(*ev));
	if (!ev)
		return; /* ring full: the reader is behind, lose the event */
	ev->type = type;
	ev->client_port = client_port;
	ev->port = port;
	__builtin_memcpy(ev->client, client, sizeof(ev->client));
	__builtin_memcpy(ev->server, server, sizeof(ev->server));
	if (other)
		__builtin_memcpy(ev->other, other, sizeof(ev->other));
	else
		__builtin_memset(ev->other, 0, sizeof(ev->other));
	sbulb_events.ringbuf_submit(ev, 0);
}
#endif

#include "lb.h"
#include "icmp.h"
#include "forward.h"

/* ---- the packet walk ---- */

/* The XDP action for a verdict slot. */
static __always_inline int stat_action(__u32 stat)
{
	switch (stat) {
	case SBULB_STAT_TX_INGRESS:
	case SBULB_STAT_TX_EGRESS:
	case SBULB_STAT_TX_ICMP_INGRESS:
	case SBULB_STAT_TX_ICMP_EGRESS:
		return XDP_TX;
	case SBULB_STAT_DROP_NO_REAL_SERVER:
	case SBULB_STAT_DROP_NOT_ASSOCIATED:
	case SBULB_STAT_DROP_ASSOC_FAILED:
	case SBULB_STAT_DROP_FRAG_UNKNOWN:
		return XDP_DROP;
	}
	return XDP_PASS;
}

static __always_inline int is_tx(__u32 stat)
{
	return stat == SBULB_STAT_TX_INGRESS || stat == SBULB_STAT_TX_EGRESS;
}

/* Count a rewritten datagram (or fragment) against its real server: the
 * destination written for ingress, the source for egress. The decision
 * found the server's slot; a later fragment looks it up. */
static __always_inline void count_tx(__u32 stat, __u32 slot,
				     struct sbulb_addr *to,
				     struct sbulb_addr *src, __u64 len)
{
	int in = stat == SBULB_STAT_TX_INGRESS;

	if (!slot)
		slot = rs_slot(in ? to : src);
	count_slot(slot, in ? SBULB_DIR_TO_SERVER : SBULB_DIR_FROM_SERVER, len);
}

/*
 * An ICMP error (icmp.h): the outer header, then the quoted IPv4 header and
 * the first 8 bytes of the quoted UDP datagram.
 */
static __always_inline __u32 process_icmp_v4(struct hdr_cursor *nh,
					     void *data_end, struct iphdr *iph,
					     __u64 len)
{
	struct flow outer = {}, quoted = {};
	struct sbulb_addr to = {};
	struct sbulb_cfg *cfg;
	struct icmphdr *icmp;
	struct udphdr *qudp;
	struct iphdr *qip;
	__be32 server;
	__u32 stat;
	int proto;

	if (ipv4_is_fragment(iph))
		return SBULB_STAT_PASS_NOT_BALANCED; /* leave those to the kernel */
	icmp = nh->pos;
	if ((void *)(icmp + 1) > data_end)
		return SBULB_STAT_PASS_MALFORMED;
	if (!icmp4_is_error(icmp->type))
		return SBULB_STAT_PASS_NOT_UDP;
	nh->pos = icmp + 1;
	proto = parse_iphdr(nh, data_end, &qip);
	if (proto < 0)
		return SBULB_STAT_PASS_MALFORMED;
	if (proto != IPPROTO_UDP || ipv4_is_later_fragment(qip))
		return SBULB_STAT_PASS_NOT_BALANCED;
	qudp = nh->pos;
	if ((void *)(qudp + 1) > data_end)
		return SBULB_STAT_PASS_MALFORMED;

	cfg = cfg_get();
	if (!cfg)
		return SBULB_STAT_PASS_NOT_BALANCED;
	addr_from_v4(&outer.src, iph->saddr);
	addr_from_v4(&outer.dst, iph->daddr);
	addr_from_v4(&quoted.src, qip->saddr);
	addr_from_v4(&quoted.dst, qip->daddr);
	quoted.sport = qudp->source;
	quoted.dport = qudp->dest;
	stat = icmp_classify(&outer, &quoted, cfg, &to);
	if (stat != SBULB_STAT_TX_ICMP_INGRESS && stat != SBULB_STAT_TX_ICMP_EGRESS)
		return stat;
	if (iph->ttl < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL;
	if (stat == SBULB_STAT_TX_ICMP_INGRESS) {
		count_server(&to, SBULB_DIR_TO_SERVER, len);
		icmp4_nat_quoted(icmp, qip, qudp, &qip->saddr, to.a[3]);
		nat_v4(iph, NULL, &iph->daddr, to.a[3]);
	} else {
		count_server(&quoted.dst, SBULB_DIR_FROM_SERVER, len);
		server = qip->daddr;
		icmp4_nat_quoted(icmp, qip, qudp, &qip->daddr, to.a[3]);
		/* from the server itself: from the VIP; from a router: as is */
		nat_v4(iph, NULL, &iph->saddr,
		       iph->saddr == server ? to.a[3] : iph->saddr);
	}
	return stat;
}

/* An ICMPv6 error, as for IPv4. The quoted IPv6 header is followed by
 * UDP, or by the fragment header of a first fragment and then UDP (a
 * server's too-big answer is often a fragment already). */
static __always_inline __u32 process_icmp_v6(struct hdr_cursor *nh,
					     void *data_end,
					     struct ipv6hdr *ip6h,
					     struct flow *outer,
					     struct sbulb_cfg *cfg, __u64 len)
{
	struct sbulb_addr to = {}, server;
	struct sbulb_ip6_frag *qfh;
	struct flow quoted = {};
	struct icmp6hdr *icmp6;
	struct ipv6hdr *qip6;
	struct udphdr *qudp;
	__u32 stat;
	int proto;

	icmp6 = nh->pos;
	if ((void *)(icmp6 + 1) > data_end)
		return SBULB_STAT_PASS_MALFORMED;
	if (!icmp6_is_error(icmp6->icmp6_type))
		return SBULB_STAT_PASS_NOT_UDP;
	nh->pos = icmp6 + 1;
	proto = parse_ip6hdr(nh, data_end, &qip6);
	if (proto < 0)
		return SBULB_STAT_PASS_MALFORMED;
	if (proto == IPPROTO_FRAGMENT) {
		qfh = nh->pos;
		if ((void *)(qfh + 1) > data_end)
			return SBULB_STAT_PASS_MALFORMED;
		if (ipv6_is_later_fragment(qfh))
			return SBULB_STAT_PASS_NOT_BALANCED;
		proto = qfh->nexthdr;
		nh->pos = qfh + 1;
	}
	if (proto != IPPROTO_UDP)
		return SBULB_STAT_PASS_NOT_BALANCED;
	qudp = nh->pos;
	if ((void *)(qudp + 1) > data_end)
		return SBULB_STAT_PASS_MALFORMED;

	__builtin_memcpy(&quoted.src, &qip6->saddr, sizeof(quoted.src));
	__builtin_memcpy(&quoted.dst, &qip6->daddr, sizeof(quoted.dst));
	if (addr_is_v4_mapped(&quoted.src) || addr_is_v4_mapped(&quoted.dst))
		return SBULB_STAT_PASS_NOT_BALANCED;
	quoted.sport = qudp->source;
	quoted.dport = qudp->dest;
	stat = icmp_classify(outer, &quoted, cfg, &to);
	if (stat != SBULB_STAT_TX_ICMP_INGRESS && stat != SBULB_STAT_TX_ICMP_EGRESS)
		return stat;
	if (ip6h->hop_limit < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL;
	if (stat == SBULB_STAT_TX_ICMP_INGRESS) {
		count_server(&to, SBULB_DIR_TO_SERVER, len);
		icmp6_nat_quoted(icmp6, qudp, &qip6->saddr, &to);
		icmp6_nat_outer(ip6h, icmp6, &ip6h->daddr, &to);
	} else {
		server = quoted.dst;
		count_server(&server, SBULB_DIR_FROM_SERVER, len);
		icmp6_nat_quoted(icmp6, qudp, &qip6->daddr, &to);
		/* from the server itself: from the VIP; from a router: as is */
		if (addr_eq(&outer->src, &server))
			icmp6_nat_outer(ip6h, icmp6, &ip6h->saddr, &to);
		else
			ip6h->hop_limit--;
	}
	return stat;
}

/*
 * A whole UDP datagram or its first fragment, after the IP header(s): is it
 * well formed, and what becomes of it. *udp is set when it is well formed.
 * ip_payload: bytes after the IP header(s), per the IP header; fragment:
 * the datagram is fragmented (then only its start is here).
 */
static __always_inline __u32 udp_verdict(struct hdr_cursor *nh, void *data_end,
					 struct flow *f, struct sbulb_cfg *cfg,
					 __u32 ip_payload, int fragment, int v6,
					 __u8 ttl, struct udphdr **udp,
					 struct sbulb_addr *to, __u32 *slot)
{
	struct udphdr *u;

	if (parse_udphdr(nh, data_end, &u) < 0)
		return SBULB_STAT_PASS_MALFORMED;
	/* a whole datagram is exactly the IP payload; a first fragment holds
	 * only the start of it. A zero UDP checksum is invalid on IPv6 (RFC
	 * 8200 8.1; tunnels that may use it, RFC 6935, are not balanced). */
	if (fragment ? ip_payload > bpf_ntohs(u->len) :
		       ip_payload != bpf_ntohs(u->len))
		return SBULB_STAT_PASS_MALFORMED;
	if (v6 && u->check == 0)
		return SBULB_STAT_PASS_MALFORMED;
	*udp = u;
	f->sport = u->source;
	f->dport = u->dest;
	return decide(f, cfg, ttl, to, slot);
}

/*
 * IPv4. A fragmented datagram is decided by its first fragment (which holds
 * the UDP header); whatever that verdict is, when the datagram could be ours
 * it is remembered in sbulb_frags, keyed by (source, destination, id,
 * protocol) as they arrive, and the later fragments follow it.
 */
static __always_inline __u32 process_v4(struct hdr_cursor *nh, void *data_end,
					__u64 len)
{
	struct sbulb_frag_key fkey = {};
	struct udphdr *udp = NULL;
	struct sbulb_addr to = {};
	struct sbulb_cfg *cfg;
	struct iphdr *iph;
	struct flow f = {};
	__u16 tot_len, hdr_len;
	__u32 stat, slot = 0;
	__be32 *field;
	int proto;

	proto = parse_iphdr(nh, data_end, &iph);
	if (proto < 0)
		return SBULB_STAT_PASS_MALFORMED;
	if (proto == IPPROTO_ICMP)
		return process_icmp_v4(nh, data_end, iph, len);
	if (proto != IPPROTO_UDP)
		return SBULB_STAT_PASS_NOT_UDP;
	cfg = cfg_get();
	if (!cfg)
		return SBULB_STAT_PASS_NOT_BALANCED;
	addr_from_v4(&f.src, iph->saddr);
	addr_from_v4(&f.dst, iph->daddr);
	fkey.src = f.src;
	fkey.dst = f.dst;
	fkey.id = iph->id;
	fkey.proto = IPPROTO_UDP;

	/* the IP total length covers the header and lies in the frame (which
	 * Ethernet may pad) */
	tot_len = bpf_ntohs(iph->tot_len);
	hdr_len = iph->ihl * 4;
	if (tot_len < hdr_len || (void *)iph + tot_len > data_end)
		stat = SBULB_STAT_PASS_MALFORMED;
	else if (ipv4_is_later_fragment(iph))
		stat = frag_follow(&fkey, &f, cfg, &to);
	else
		stat = udp_verdict(nh, data_end, &f, cfg, tot_len - hdr_len,
				   ipv4_is_fragment(iph), 0, iph->ttl, &udp, &to, &slot);
	if (ipv4_is_fragment(iph) && !ipv4_is_later_fragment(iph))
		frag_remember(&fkey, &f, cfg, stat, &to);
	if (!is_tx(stat))
		return stat;
	if (iph->ttl < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL; /* a later fragment, its first was fine */
	count_tx(stat, slot, &to, &f.src, len);
	field = stat == SBULB_STAT_TX_INGRESS ? &iph->daddr : &iph->saddr;
	/* two calls, not `udp ? &udp->check : NULL`: LLVM 14 folds that into
	 * one pointer the 6.18 verifier then sees as a scalar (2026-11) */
	if (udp)
		nat_v4(iph, &udp->check, field, to.a[3]);
	else
		nat_v4(iph, NULL, field, to.a[3]);
	return stat;
}

/*
 * IPv6. Extension headers are walked (a bounded, unrolled loop); the
 * fragment header, if any, plays the part of IPv4's fragment fields, with
 * its 32-bit identification; the key's protocol is the fragment header's
 * next header, which every fragment carries.
 */
static __always_inline __u32 process_v6(struct hdr_cursor *nh, void *data_end,
					__u64 len)
{
	struct sbulb_ip6_frag *fh = NULL;
	struct sbulb_frag_key fkey = {};
	struct udphdr *udp = NULL;
	struct sbulb_addr to = {};
	struct in6_addr *field6;
	struct sbulb_cfg *cfg;
	struct ipv6hdr *ip6h;
	struct flow f = {};
	__u32 stat, payload_len, slot = 0;
	int proto, i, later;

	proto = parse_ip6hdr(nh, data_end, &ip6h);
	if (proto < 0)
		return SBULB_STAT_PASS_MALFORMED;
#pragma unroll
	for (i = 0; i < SBULB_MAX_IPV6_EXT; i++) {
		if (!ipv6_is_ext_header(proto) || (fh && ipv6_is_later_fragment(fh)))
			break;
		proto = parse_ip6_ext(nh, data_end, proto, &fh);
		if (proto == -1)
			return SBULB_STAT_PASS_MALFORMED;
		if (proto == -2)
			return SBULB_STAT_PASS_IPV6_EXT;
	}
	later = fh && ipv6_is_later_fragment(fh);
	/* a later fragment of anything but UDP (possibly behind more
	 * extension headers) is none of ours */
	if (later && fh->nexthdr != IPPROTO_UDP && !ipv6_is_ext_header(fh->nexthdr))
		return SBULB_STAT_PASS_NOT_UDP;
	if (!later && proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 &&
	    !ipv6_is_ext_header(proto))
		return SBULB_STAT_PASS_NOT_UDP;

	cfg = cfg_get();
	if (!cfg)
		return SBULB_STAT_PASS_NOT_BALANCED;
	__builtin_memcpy(&f.src, &ip6h->saddr, sizeof(f.src));
	__builtin_memcpy(&f.dst, &ip6h->daddr, sizeof(f.dst));
	/* would collide with the IPv4 addresses of the maps */
	if (addr_is_v4_mapped(&f.src) || addr_is_v4_mapped(&f.dst))
		return SBULB_STAT_PASS_NOT_BALANCED;
	if (fh) {
		fkey.src = f.src;
		fkey.dst = f.dst;
		fkey.id = fh->identification;
		fkey.proto = fh->nexthdr;
	}

	/* the payload (extension headers included) lies in the frame */
	payload_len = bpf_ntohs(ip6h->payload_len);
	if ((void *)(ip6h + 1) + payload_len > data_end)
		stat = SBULB_STAT_PASS_MALFORMED;
	else if (later)
		stat = frag_follow(&fkey, &f, cfg, &to);
	else if (ipv6_is_ext_header(proto))
		stat = SBULB_STAT_PASS_IPV6_EXT; /* more than we walk */
	else if (proto == IPPROTO_ICMPV6)
		stat = fh ? SBULB_STAT_PASS_NOT_BALANCED /* left to the kernel */
			  : process_icmp_v6(nh, data_end, ip6h, &f, cfg, len);
	else
		stat = udp_verdict(nh, data_end, &f, cfg,
				   payload_len - (nh->pos - (void *)(ip6h + 1)),
				   fh != NULL, 1, ip6h->hop_limit, &udp, &to, &slot);
	if (fh && !later)
		frag_remember(&fkey, &f, cfg, stat, &to);
	if (!is_tx(stat))
		return stat; /* ICMP's TX stats are not is_tx(): done already */
	if (ip6h->hop_limit < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL; /* a later fragment, its first was fine */
	count_tx(stat, slot, &to, &f.src, len);
	field6 = stat == SBULB_STAT_TX_INGRESS ? &ip6h->daddr : &ip6h->saddr;
	if (udp) /* two calls: see process_v4 */
		nat_v6(ip6h, &udp->check, field6, &to);
	else
		nat_v6(ip6h, NULL, field6, &to);
	return stat;
}

int sbulb_xdp(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	void *l3;
	__u32 stat;
	int proto, action;

	proto = parse_ethhdr(&nh, data_end, &eth);
	l3 = nh.pos;
	if (proto < 0)
		stat = SBULB_STAT_PASS_MALFORMED;
	else if (proto == bpf_htons(ETH_P_IP))
		stat = process_v4(&nh, data_end, data_end - data);
	else if (proto == bpf_htons(ETH_P_IPV6))
		stat = process_v6(&nh, data_end, data_end - data);
	else
		stat = SBULB_STAT_PASS_NOT_IP;

	action = stat_action(stat);
	if (action == XDP_TX)
		action = forward(ctx, eth, l3, data_end, proto);
	count(stat);
	return action;
}
