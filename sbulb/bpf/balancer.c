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

static __always_inline __u32 vip_port_service(const struct sbulb_addr *vip,
					      __be16 port)
{
	struct sbulb_endpoint key = { .addr = *vip, .port = port };
	__u32 *id = sbulb_vip_ports.lookup(&key);

	return id ? *id : 0;
}

static __always_inline struct sbulb_member_ref *
endpoint_get(const struct sbulb_addr *addr, __be16 port)
{
	struct sbulb_endpoint key = { .addr = *addr, .port = port };

	return sbulb_endpoints.lookup(&key);
}

static __always_inline struct sbulb_service *svc_get(__u32 id)
{
	return sbulb_svc.lookup(&id);
}

static __always_inline int is_vip(const struct sbulb_addr *addr)
{
	struct sbulb_addr key = *addr;

	return sbulb_vips.lookup(&key) != NULL;
}

static __always_inline int is_real_server(const struct sbulb_addr *addr)
{
	struct sbulb_addr key = *addr;

	return sbulb_rs_index.lookup(&key) != NULL;
}

static __always_inline int is_probe(const struct sbulb_addr *addr, __be16 port)
{
	struct sbulb_endpoint key = { .addr = *addr, .port = port };

	return sbulb_probes.lookup(&key) != NULL;
}

static __always_inline __u32 *ring_get(__u32 idx)
{
	return sbulb_ring.lookup(&idx);
}

static __always_inline __u32 *maglev_get(__u32 idx)
{
	return sbulb_maglev.lookup(&idx);
}

static __always_inline struct sbulb_member *rs_get(__u32 slot)
{
	return sbulb_rs.lookup(&slot);
}

static __always_inline struct sbulb_rr *rr_get(__u32 id)
{
	return sbulb_rr.lookup(&id);
}

static __always_inline struct sbulb_rate *rate_get(void)
{
	__u32 zero = 0;

	return sbulb_new_rate.lookup(&zero);
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

static __always_inline __u32 mirror_seq_next(void)
{
	__u32 zero = 0, *seq = sbulb_mirror_seq.lookup(&zero);

	if (!seq)
		return 0;
	*seq += 1;
	return *seq;
}

static __always_inline struct sbulb_mirror_state *mirror_state_get(__u32 ifindex)
{
	__u32 *slot = sbulb_ifslot.lookup(&ifindex);

	if (!slot)
		return NULL;
	return sbulb_mirror_state.lookup(slot);
}

/* A broadcast takes its map as a constant: one call per slot. */
static __always_inline int mirror_broadcast(__u32 n)
{
	switch (n) {
	case 0: return sbulb_mirror_0.redirect_map(0, BPF_F_BROADCAST);
	case 1: return sbulb_mirror_1.redirect_map(0, BPF_F_BROADCAST);
	case 2: return sbulb_mirror_2.redirect_map(0, BPF_F_BROADCAST);
	case 3: return sbulb_mirror_3.redirect_map(0, BPF_F_BROADCAST);
	case 4: return sbulb_mirror_4.redirect_map(0, BPF_F_BROADCAST);
	case 5: return sbulb_mirror_5.redirect_map(0, BPF_F_BROADCAST);
	case 6: return sbulb_mirror_6.redirect_map(0, BPF_F_BROADCAST);
	case 7: return sbulb_mirror_7.redirect_map(0, BPF_F_BROADCAST);
	case 8: return sbulb_mirror_8.redirect_map(0, BPF_F_BROADCAST);
	case 9: return sbulb_mirror_9.redirect_map(0, BPF_F_BROADCAST);
	case 10: return sbulb_mirror_10.redirect_map(0, BPF_F_BROADCAST);
	case 11: return sbulb_mirror_11.redirect_map(0, BPF_F_BROADCAST);
	case 12: return sbulb_mirror_12.redirect_map(0, BPF_F_BROADCAST);
	case 13: return sbulb_mirror_13.redirect_map(0, BPF_F_BROADCAST);
	case 14: return sbulb_mirror_14.redirect_map(0, BPF_F_BROADCAST);
	case 15: return sbulb_mirror_15.redirect_map(0, BPF_F_BROADCAST);
	}
	return XDP_DROP;
}

static __always_inline void count_copy_fail(__u32 slot)
{
	__u64 *n = sbulb_rs_copy_fail.lookup(&slot);

	if (n)
		*n += 1;
}

static __always_inline struct sbulb_chunk *csum_chunk(void)
{
	__u32 zero = 0;

	return sbulb_csum_chunk.lookup(&zero);
}

static __always_inline void template_keep(struct xdp_md *ctx, __u32 service)
{
	__u64 len = ctx->data_end - ctx->data;
	struct sbulb_template *rec;
	__u32 n;

	if (len == 0 || len > SBULB_TEMPLATE_FRAME_MAX)
		goto not_kept;
	/* the same number, in bounds the verifier can see: 1 .. FRAME_MAX (a
	 * power of two), for a copy of at least one byte into frame[] */
	n = (((__u32)len - 1) & (SBULB_TEMPLATE_FRAME_MAX - 1)) + 1;
	rec = sbulb_templates.ringbuf_reserve(sizeof(*rec));
	if (!rec)
		goto not_kept;
	rec->service = service;
	rec->len = n;
	if (bpf_xdp_load_bytes(ctx, 0, rec->frame, n) < 0) {
		sbulb_templates.ringbuf_discard(rec, 0);
		goto not_kept;
	}
	sbulb_templates.ringbuf_submit(rec, 0);
	return;
not_kept:
	count(SBULB_STAT_TEMPLATE_NOT_KEPT);
}

static __always_inline void count_unreach(__u32 slot)
{
	__u64 *n = sbulb_rs_unreach.lookup(&slot);

	if (n)
		*n += 1;
}

static __always_inline void count_traffic(__u32 service, __u32 slot, __u32 dir,
					  __u64 bytes)
{
	struct sbulb_traffic *t;
	__u32 idx;

	if (slot) {
		idx = slot * 2 + dir;
		t = sbulb_rs_stats.lookup(&idx);
		if (t) {
			t->packets += 1;
			t->bytes += bytes;
		}
	}
	if (service) {
		idx = service * 2 + dir;
		t = sbulb_svc_stats.lookup(&idx);
		if (t) {
			t->packets += 1;
			t->bytes += bytes;
		}
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
static __always_inline void emit_event(__u32 type, __u32 service,
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
	ev->service = service;
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
#include "mirror.h"

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
	case SBULB_STAT_DROP_ICMP_MISDIRECTED:
	case SBULB_STAT_DROP_FRAG_RATE:
	case SBULB_STAT_DROP_MIRROR_REPLY:
	case SBULB_STAT_DROP_MIRROR_NO_META:
		return XDP_DROP;
	}
	return XDP_PASS;
}

static __always_inline int is_tx(__u32 stat)
{
	return stat == SBULB_STAT_TX_INGRESS || stat == SBULB_STAT_TX_EGRESS;
}

/* "Not decided yet: go on", from a family's parser to the common walk. */
#define SBULB_CONTINUE 0xffffffff

/*
 * What the walk knows of a UDP packet of either family, from parsing to
 * NAT (Katran's packet_description). Exactly one of iph / ip6h is set.
 */
struct packet {
	struct xdp_md *ctx;
	struct flow f;              /* addresses; ports once the UDP header is read */
	struct sbulb_frag_key fkey; /* fragmented: the datagram, as it arrived */
	struct target t;            /* TX: what to write, whose traffic it is */
	struct iphdr *iph;          /* the IPv4 header, or NULL */
	struct ipv6hdr *ip6h;       /* the IPv6 header, or NULL */
	struct udphdr *udp;         /* the UDP header, when this packet has it */
	__u32 ip_payload;           /* bytes after the IP header(s), per the header */
	__u8 ttl;                   /* TTL / hop limit as it arrived */
	__u8 fragment;              /* part of a fragmented datagram */
	__u8 later;                 /* a later fragment: no UDP header */
};

/*
 * An ICMP error (icmp.h): the outer header, then the quoted IPv4 header and
 * the first 8 bytes of the quoted UDP datagram.
 */
static __always_inline __u32 process_icmp_v4(struct hdr_cursor *nh,
					     void *data_end, struct iphdr *iph,
					     __u64 len)
{
	struct flow outer = {}, quoted = {};
	struct target t = {};
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

	addr_from_v4(&outer.src, iph->saddr);
	addr_from_v4(&outer.dst, iph->daddr);
	addr_from_v4(&quoted.src, qip->saddr);
	addr_from_v4(&quoted.dst, qip->daddr);
	quoted.sport = qudp->source;
	quoted.dport = qudp->dest;
	stat = icmp_classify(&outer, &quoted, &t);
	if (stat == SBULB_STAT_DROP_MIRROR_REPLY && icmp->type == ICMP_DEST_UNREACH)
		count_unreach(t.slot);
	if (stat != SBULB_STAT_TX_ICMP_INGRESS && stat != SBULB_STAT_TX_ICMP_EGRESS)
		return stat;
	if (iph->ttl < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL;
	if (stat == SBULB_STAT_TX_ICMP_INGRESS) {
		count_traffic(t.service, t.slot, SBULB_DIR_TO_SERVER, len);
		icmp4_nat_quoted(icmp, qip, qudp, &qip->saddr, t.to.a[3]);
		nat_v4(iph, NULL, &iph->daddr, t.to.a[3]);
	} else {
		count_traffic(t.service, t.slot, SBULB_DIR_FROM_SERVER, len);
		if (icmp->type == ICMP_DEST_UNREACH)
			count_unreach(t.slot);
		server = qip->daddr;
		icmp4_nat_quoted(icmp, qip, qudp, &qip->daddr, t.to.a[3]);
		/* from the server itself: from the VIP; from a router: as is */
		nat_v4(iph, NULL, &iph->saddr,
		       iph->saddr == server ? t.to.a[3] : iph->saddr);
	}
	return stat;
}

/* An ICMPv6 error, as for IPv4. The quoted IPv6 header is followed by
 * UDP, or by the fragment header of a first fragment and then UDP (a
 * server's too-big answer is often a fragment already). */
static __always_inline __u32 process_icmp_v6(struct hdr_cursor *nh,
					     void *data_end,
					     struct ipv6hdr *ip6h,
					     struct flow *outer, __u64 len)
{
	struct sbulb_ip6_frag *qfh;
	struct sbulb_addr server;
	struct flow quoted = {};
	struct icmp6hdr *icmp6;
	struct target t = {};
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
	stat = icmp_classify(outer, &quoted, &t);
	if (stat == SBULB_STAT_DROP_MIRROR_REPLY && icmp6->icmp6_type == ICMPV6_DEST_UNREACH)
		count_unreach(t.slot);
	if (stat != SBULB_STAT_TX_ICMP_INGRESS && stat != SBULB_STAT_TX_ICMP_EGRESS)
		return stat;
	if (ip6h->hop_limit < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL;
	if (stat == SBULB_STAT_TX_ICMP_INGRESS) {
		count_traffic(t.service, t.slot, SBULB_DIR_TO_SERVER, len);
		icmp6_nat_quoted(icmp6, qudp, &qip6->saddr, &t.to);
		icmp6_nat_outer(ip6h, icmp6, &ip6h->daddr, &t.to);
	} else {
		server = quoted.dst;
		count_traffic(t.service, t.slot, SBULB_DIR_FROM_SERVER, len);
		if (icmp6->icmp6_type == ICMPV6_DEST_UNREACH)
			count_unreach(t.slot);
		icmp6_nat_quoted(icmp6, qudp, &qip6->daddr, &t.to);
		/* from the server itself: from the VIP; from a router: as is */
		if (addr_eq(&outer->src, &server))
			icmp6_nat_outer(ip6h, icmp6, &ip6h->saddr, &t.to);
		else
			ip6h->hop_limit--;
	}
	return stat;
}

/*
 * A whole UDP datagram or its first fragment, after the IP header(s): is it
 * well formed, and what becomes of it. p->udp is set when it is well
 * formed.
 */
static __always_inline __u32 udp_verdict(struct hdr_cursor *nh, void *data_end,
					 struct packet *p)
{
	struct payload pl;
	struct udphdr *u;

	if (parse_udphdr(nh, data_end, &u) < 0)
		return SBULB_STAT_PASS_MALFORMED;
	/* a whole datagram is exactly the IP payload; a first fragment holds
	 * only the start of it. A zero UDP checksum is invalid on IPv6 (RFC
	 * 8200 8.1; tunnels that may use it, RFC 6935, are not balanced). */
	if (p->fragment ? p->ip_payload > bpf_ntohs(u->len) :
			  p->ip_payload != bpf_ntohs(u->len))
		return SBULB_STAT_PASS_MALFORMED;
	if (p->ip6h && u->check == 0)
		return SBULB_STAT_PASS_MALFORMED;
	p->udp = u;
	p->f.sport = u->source;
	p->f.dport = u->dest;
	pl.ctx = p->ctx;
	pl.off = nh->pos - (void *)(long)p->ctx->data;
	pl.len = bpf_ntohs(u->len) - sizeof(*u);
	return decide(&p->f, p->ttl, p->fragment, &p->t, &pl);
}

/* Rewrite a TX packet's address (the destination for ingress, the source
 * for egress) to p->t.to, with its checksums and TTL / hop limit. A later
 * fragment has no UDP header: its datagram's checksum was fixed in the
 * first. Two calls each, not `udp ? &udp->check : NULL`: LLVM 14 folds
 * that into one pointer the 6.18 verifier then sees as a scalar (2026-11). */
static __always_inline void nat_packet(struct packet *p, __u32 stat)
{
	int in = stat == SBULB_STAT_TX_INGRESS;
	struct in6_addr *field6;
	__be32 *field;

	if (p->iph) {
		field = in ? &p->iph->daddr : &p->iph->saddr;
		if (p->udp)
			nat_v4(p->iph, &p->udp->check, field, p->t.to.a[3]);
		else
			nat_v4(p->iph, NULL, field, p->t.to.a[3]);
	} else if (p->ip6h) {
		field6 = in ? &p->ip6h->daddr : &p->ip6h->saddr;
		if (p->udp)
			nat_v6(p->ip6h, &p->udp->check, field6, &p->t.to);
		else
			nat_v6(p->ip6h, NULL, field6, &p->t.to);
	}
}

/* What the walk asks sbulb_xdp to copy (mirror.h): a service's frame, and
 * whether it is a telemetry template the daemon keeps too. */
struct copy_req {
	__u32 service;
	__u16 magic; /* SBULB_MIRROR_MAGIC or SBULB_TEMPLATE_MAGIC */
	__u8 keep;   /* a whole template datagram or its first fragment */
	__u32 whole; /* template: the member slot that gets it whole ... */
	__u32 trim;  /* ... and the payload the others keep (0: all of it) */
};

/*
 * The walk both families share, once their parser has filled *p: `stat` is
 * its verdict, or SBULB_CONTINUE. A fragmented datagram is decided by its
 * first fragment (which holds the UDP header); whatever that verdict is,
 * when the datagram could be ours it is remembered in sbulb_frags, keyed
 * by (source, destination, id, protocol) as they arrive, and the later
 * fragments follow it.
 */
static __always_inline __u32 process_udp(struct hdr_cursor *nh, void *data_end,
					 struct packet *p, __u32 stat, __u64 len,
					 struct copy_req *cp)
{
	if (stat == SBULB_CONTINUE)
		stat = p->later ? frag_follow(&p->fkey, &p->f, &p->t)
				: udp_verdict(nh, data_end, p);
	if (p->fragment && !p->later)
		frag_remember(&p->fkey, &p->f, stat, &p->t);
	if (!is_tx(stat) && stat != SBULB_STAT_TX_MIRROR && stat != SBULB_STAT_TX_TEMPLATE)
		return stat;
	if (p->ttl < SBULB_MIN_TTL)
		return SBULB_STAT_PASS_TTL; /* a later fragment, its first was fine */
	if (stat == SBULB_STAT_TX_MIRROR || stat == SBULB_STAT_TX_TEMPLATE) {
		/* copied and rewritten by sbulb_mirror_tx (mirror.h) */
		count_traffic(p->t.service, 0, SBULB_DIR_TO_SERVER, len);
		cp->service = p->t.service;
		cp->magic = stat == SBULB_STAT_TX_TEMPLATE ? SBULB_TEMPLATE_MAGIC
							  : SBULB_MIRROR_MAGIC;
		cp->keep = stat == SBULB_STAT_TX_TEMPLATE && !p->later;
		/* a fragmented one is copied whole: its data may be anywhere */
		cp->whole = p->t.slot;
		cp->trim = stat == SBULB_STAT_TX_TEMPLATE && !p->fragment ? p->t.trim : 0;
		return stat;
	}
	count_traffic(p->t.service, p->t.slot,
		      stat == SBULB_STAT_TX_INGRESS ? SBULB_DIR_TO_SERVER
						    : SBULB_DIR_FROM_SERVER,
		      len);
	nat_packet(p, stat);
	return stat;
}

/* IPv4: fill *p from the header (and its fragment fields), then walk. */
static __always_inline __u32 process_v4(struct xdp_md *ctx, struct hdr_cursor *nh,
					void *data_end, __u64 len, struct copy_req *cp)
{
	__u32 stat = SBULB_CONTINUE;
	__u16 tot_len, hdr_len;
	struct packet p = {};
	struct iphdr *iph;
	int proto;

	proto = parse_iphdr(nh, data_end, &iph);
	if (proto < 0 || !sbulb_ipv4_csum_ok(iph, data_end))
		return SBULB_STAT_PASS_MALFORMED;
	if (proto == IPPROTO_ICMP)
		return process_icmp_v4(nh, data_end, iph, len);
	if (proto != IPPROTO_UDP)
		return SBULB_STAT_PASS_NOT_UDP;
	p.ctx = ctx;
	p.iph = iph;
	p.ttl = iph->ttl;
	p.fragment = ipv4_is_fragment(iph) != 0;
	p.later = ipv4_is_later_fragment(iph) != 0;
	addr_from_v4(&p.f.src, iph->saddr);
	addr_from_v4(&p.f.dst, iph->daddr);
	p.fkey.src = p.f.src;
	p.fkey.dst = p.f.dst;
	p.fkey.id = iph->id;
	p.fkey.proto = IPPROTO_UDP;

	/* the IP total length covers the header and lies in the frame (which
	 * Ethernet may pad) */
	tot_len = bpf_ntohs(iph->tot_len);
	hdr_len = iph->ihl * 4;
	if (tot_len < hdr_len || (void *)iph + tot_len > data_end)
		stat = SBULB_STAT_PASS_MALFORMED;
	else
		p.ip_payload = tot_len - hdr_len;
	return process_udp(nh, data_end, &p, stat, len, cp);
}

/*
 * IPv6: walk the extension headers (a bounded, unrolled loop), fill *p,
 * then walk. The fragment header, if any, plays the part of IPv4's
 * fragment fields, with its 32-bit identification; the key's protocol is
 * the fragment header's next header, which every fragment carries.
 */
static __always_inline __u32 process_v6(struct xdp_md *ctx, struct hdr_cursor *nh,
					void *data_end, __u64 len, struct copy_req *cp)
{
	struct sbulb_ip6_frag *fh = NULL;
	__u32 stat = SBULB_CONTINUE;
	struct packet p = {};
	struct ipv6hdr *ip6h;
	__u32 payload_len;
	int proto, i;

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
	p.fragment = fh != NULL;
	p.later = fh && ipv6_is_later_fragment(fh);
	/* a later fragment of anything but UDP (possibly behind more
	 * extension headers) is none of ours */
	if (p.later && fh->nexthdr != IPPROTO_UDP && !ipv6_is_ext_header(fh->nexthdr))
		return SBULB_STAT_PASS_NOT_UDP;
	if (!p.later && proto != IPPROTO_UDP && proto != IPPROTO_ICMPV6 &&
	    !ipv6_is_ext_header(proto))
		return SBULB_STAT_PASS_NOT_UDP;

	p.ctx = ctx;
	p.ip6h = ip6h;
	p.ttl = ip6h->hop_limit;
	__builtin_memcpy(&p.f.src, &ip6h->saddr, sizeof(p.f.src));
	__builtin_memcpy(&p.f.dst, &ip6h->daddr, sizeof(p.f.dst));
	/* would collide with the IPv4 addresses of the maps */
	if (addr_is_v4_mapped(&p.f.src) || addr_is_v4_mapped(&p.f.dst))
		return SBULB_STAT_PASS_NOT_BALANCED;
	if (fh) {
		p.fkey.src = p.f.src;
		p.fkey.dst = p.f.dst;
		p.fkey.id = fh->identification;
		p.fkey.proto = fh->nexthdr;
	}

	/* the payload (extension headers included) lies in the frame */
	payload_len = bpf_ntohs(ip6h->payload_len);
	if ((void *)(ip6h + 1) + payload_len > data_end)
		stat = SBULB_STAT_PASS_MALFORMED;
	else if (p.later)
		stat = SBULB_CONTINUE;
	else if (ipv6_is_ext_header(proto))
		stat = SBULB_STAT_PASS_IPV6_EXT; /* more than we walk */
	else if (proto == IPPROTO_ICMPV6) /* ICMP's TX stats are not is_tx() */
		stat = fh ? SBULB_STAT_PASS_NOT_BALANCED /* left to the kernel */
			  : process_icmp_v6(nh, data_end, ip6h, &p.f, len);
	else
		p.ip_payload = payload_len - (nh->pos - (void *)(ip6h + 1));
	return process_udp(nh, data_end, &p, stat, len, cp);
}

int sbulb_xdp(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	struct copy_req cp = {};
	__u32 stat;
	int proto, action;
	void *l3;

	proto = parse_ethhdr(&nh, data_end, &eth);
	l3 = nh.pos;
	if (proto < 0)
		stat = SBULB_STAT_PASS_MALFORMED;
	else if (proto == bpf_htons(ETH_P_IP))
		stat = process_v4(ctx, &nh, data_end, data_end - data, &cp);
	else if (proto == bpf_htons(ETH_P_IPV6))
		stat = process_v6(ctx, &nh, data_end, data_end - data, &cp);
	else
		stat = SBULB_STAT_PASS_NOT_IP;

	if (stat == SBULB_STAT_TX_MIRROR || stat == SBULB_STAT_TX_TEMPLATE) {
		if (cp.keep)
			template_keep(ctx, cp.service);
		action = mirror_out(ctx, cp.service, cp.magic, cp.whole, cp.trim, &stat);
	} else {
		action = stat_action(stat);
		if (action == XDP_TX)
			action = forward(ctx, eth, l3, data_end, proto);
		/* a redirected frame meets sbulb_mirror_tx (mirror.h): it must not
		 * carry metadata that could pass for a mirrored frame's (a
		 * driver's, or a recycled page's) */
		if (action == XDP_REDIRECT && ctx->data_meta < ctx->data)
			bpf_xdp_adjust_meta(ctx, (int)(ctx->data - ctx->data_meta));
	}
	count(stat);
	/* the action it finally got: XDP_ABORTED (0) .. XDP_REDIRECT (4) */
	if (action >= XDP_ABORTED && action <= XDP_REDIRECT)
		count(SBULB_STAT_ACTION_ABORTED + action);
	return action;
}

/* The egress program of every devmap entry (mirror.h). */
int sbulb_mirror_tx(struct xdp_md *ctx)
{
	return mirror_tx(ctx);
}
