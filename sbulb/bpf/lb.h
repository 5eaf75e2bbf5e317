/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lb.h - the balancing decision, independent of the address family.
 *
 * A parsed UDP packet is a struct flow. classify() tells whether it goes to
 * the VIP (ingress), comes from a real server (egress), or is none of our
 * business. ingress() and egress() consult and update the association map and
 * return a counter slot (enum sbulb_stat): SBULB_STAT_TX_* means "rewrite the
 * address to *to and transmit", anything else is the verdict.
 */
#ifndef SBULB_LB_H
#define SBULB_LB_H

#include "maps.h"

/* Addresses and ports of one UDP packet (network order). */
struct flow {
	struct sbulb_addr src;
	struct sbulb_addr dst;
	__be16 sport;
	__be16 dport;
};

enum direction {
	DIR_NONE = 0,    /* not balanced: pass untouched */
	DIR_INGRESS = 1, /* client -> VIP:port */
	DIR_EGRESS = 2,  /* real server:port -> client */
};

static __always_inline void addr_from_v4(struct sbulb_addr *addr, __be32 ip)
{
	addr->a[0] = 0;
	addr->a[1] = 0;
	addr->a[2] = bpf_htonl(0xffff);
	addr->a[3] = ip;
}

/* ::ffff:a.b.c.d: how IPv4 addresses are stored; never valid on IPv6 wires
 * for us (RFC 4291 2.5.5.2), so such IPv6 packets are not balanced. */
static __always_inline int addr_is_v4_mapped(const struct sbulb_addr *addr)
{
	return addr->a[0] == 0 && addr->a[1] == 0 &&
	       addr->a[2] == bpf_htonl(0xffff);
}

static __always_inline int addr_eq(const struct sbulb_addr *x,
				   const struct sbulb_addr *y)
{
	return x->a[0] == y->a[0] && x->a[1] == y->a[1] &&
	       x->a[2] == y->a[2] && x->a[3] == y->a[3];
}

static __always_inline int addr_is_real_server(struct sbulb_addr *addr)
{
	return rs_slot(addr) != 0;
}

/* Count a packet against a real server found by address (ICMP errors). */
static __always_inline void count_server(struct sbulb_addr *server, __u32 dir,
					 __u64 bytes)
{
	count_slot(rs_slot(server), dir, bytes);
}

/* Which way a packet goes; for egress, *slot = the sending server's slot. */
static __always_inline enum direction classify(struct flow *f,
					       struct sbulb_cfg *cfg,
					       __u32 *slot)
{
	if (addr_eq(&f->dst, &cfg->vip))
		return port_is_balanced(f->dport) ? DIR_INGRESS : DIR_NONE;
	if (port_is_balanced(f->sport)) {
		*slot = rs_slot(&f->src);
		if (*slot)
			return DIR_EGRESS;
	}
	return DIR_NONE;
}

/*
 * Next real server in round-robin order, into *out (its slot into
 * *out_slot). Returns 0, or -1 when there is none. Only called when an
 * association is created.
 *
 * The cursor is shared by all CPUs so that new clients alternate strictly.
 * bcc 0.26 (Debian 12) compiles for BPF ISA v1, where LLVM 14 rejects an
 * atomic fetch-and-add whose result is used ("Invalid usage of the XADD
 * return value", 2026-11), so a bpf_spin_lock guards the cursor instead.
 */
static __always_inline int pick_server(struct sbulb_cfg *cfg,
				       struct sbulb_addr *out, __u32 *out_slot)
{
	__u32 len = cfg->ring_len, idx;
	struct sbulb_addr *addr;
	struct sbulb_rr *rr;
	__u32 *slot;

	if (len == 0)
		return -1;
	rr = rr_get();
	if (!rr)
		return -1;
	bpf_spin_lock(&rr->lock);
	idx = rr->cursor++;
	bpf_spin_unlock(&rr->lock);

	idx %= len;
	slot = ring_get(idx);
	if (!slot || *slot == 0)
		return -1;
	addr = rs_get(*slot);
	if (!addr)
		return -1;
	*out = *addr;
	*out_slot = *slot;
	/* a slot being emptied by a concurrent reload reads as zero */
	return out->a[2] || out->a[3] || out->a[0] || out->a[1] ? 0 : -1;
}

/* Client -> VIP: find or create the client's association; *to = its
 * server, *slot = that server's slot. */
static __always_inline __u32 ingress(struct flow *f, struct sbulb_cfg *cfg,
				     struct sbulb_addr *to, __u32 *slot)
{
	struct sbulb_assoc_key key = {};
	struct sbulb_addr old = {};
	struct sbulb_assoc val = {};
	struct sbulb_assoc *as;
	__u32 stat = SBULB_STAT_ASSOC_CLIENT;

	key.client = f->src;
	key.port = f->sport;
	as = assoc_lookup(&key);
	if (as) {
		*to = as->server;
		*slot = rs_slot(to);
		if (*slot) {
			SBULB_EVENT(2, SBULB_EV_REUSED_INGRESS, &f->src,
				    f->sport, f->dport, to, NULL);
			return SBULB_STAT_TX_INGRESS;
		}
		/* its real server was removed: pick another one */
		old = *to;
		stat = SBULB_STAT_ASSOC_REPICK;
	}

	if (pick_server(cfg, to, slot) < 0) {
		SBULB_EVENT(1, SBULB_EV_DROP_NO_REAL_SERVER, &f->src, f->sport,
			    f->dport, &old, NULL);
		return SBULB_STAT_DROP_NO_REAL_SERVER;
	}
	val.server = *to;
	if (stat == SBULB_STAT_ASSOC_REPICK) {
		if (assoc_update(&key, &val))
			return SBULB_STAT_DROP_ASSOC_FAILED;
		SBULB_EVENT(1, SBULB_EV_ASSOC_REPICK, &f->src, f->sport,
			    f->dport, to, &old);
	} else if (assoc_insert(&key, &val)) {
		/* another CPU associated this client meanwhile: follow it */
		as = assoc_lookup(&key);
		if (!as)
			return SBULB_STAT_DROP_ASSOC_FAILED;
		*to = as->server;
		*slot = 0; /* not the picked one: counting looks it up */
		return SBULB_STAT_TX_INGRESS;
	} else {
		SBULB_EVENT(1, SBULB_EV_ASSOC_CLIENT, &f->src, f->sport,
			    f->dport, to, NULL);
	}
	count(stat);
	return SBULB_STAT_TX_INGRESS;
}

/*
 * Real server -> client: the association must name this server, or not
 * exist yet (then the server starts it), or name a removed server (then this
 * one takes the client over). *to = the VIP.
 */
static __always_inline __u32 egress(struct flow *f, struct sbulb_cfg *cfg,
				    struct sbulb_addr *to)
{
	struct sbulb_assoc_key key = {};
	struct sbulb_assoc val = {};
	struct sbulb_addr other;
	struct sbulb_assoc *as;

	key.client = f->dst;
	key.port = f->dport;
	val.server = f->src;
	as = assoc_lookup(&key);
	if (!as) {
		if (assoc_insert(&key, &val) == 0) {
			count(SBULB_STAT_ASSOC_SERVER);
			SBULB_EVENT(1, SBULB_EV_ASSOC_SERVER, &f->dst, f->dport,
				    f->sport, &f->src, NULL);
			goto out;
		}
		/* another CPU associated this client meanwhile */
		as = assoc_lookup(&key);
		if (!as)
			return SBULB_STAT_DROP_ASSOC_FAILED;
	}
	other = as->server;
	if (addr_eq(&other, &f->src)) {
		SBULB_EVENT(2, SBULB_EV_REUSED_EGRESS, &f->dst, f->dport,
			    f->sport, &f->src, NULL);
		goto out;
	}
	if (addr_is_real_server(&other)) {
		SBULB_EVENT(1, SBULB_EV_DROP_NOT_ASSOCIATED, &f->dst, f->dport,
			    f->sport, &f->src, &other);
		return SBULB_STAT_DROP_NOT_ASSOCIATED;
	}
	/* the associated server was removed: this one takes the client */
	if (assoc_update(&key, &val))
		return SBULB_STAT_DROP_ASSOC_FAILED;
	count(SBULB_STAT_ASSOC_REPICK);
	SBULB_EVENT(1, SBULB_EV_ASSOC_REPICK, &f->dst, f->dport, f->sport,
		    &f->src, &other);
out:
	*to = cfg->vip;
	return SBULB_STAT_TX_EGRESS;
}

/* The verdict for a parsed UDP packet (a whole datagram or its first
 * fragment): classify, then let the kernel have it if the TTL / hop limit
 * is about to expire, else NAT it. */
static __always_inline __u32 decide(struct flow *f, struct sbulb_cfg *cfg,
				    __u8 ttl, struct sbulb_addr *to, __u32 *slot)
{
	switch (classify(f, cfg, slot)) {
	case DIR_INGRESS:
		if (ttl < SBULB_MIN_TTL)
			return SBULB_STAT_PASS_TTL;
		return ingress(f, cfg, to, slot);
	case DIR_EGRESS:
		if (ttl < SBULB_MIN_TTL)
			return SBULB_STAT_PASS_TTL;
		return egress(f, cfg, to);
	default:
		return SBULB_STAT_PASS_NOT_BALANCED;
	}
}

/* Could this datagram be ours, whatever its ports? (For fragments: later
 * ones carry no port.) */
static __always_inline int frag_is_ours(struct flow *f, struct sbulb_cfg *cfg)
{
	return addr_eq(&f->dst, &cfg->vip) || addr_is_real_server(&f->src);
}

/* A first fragment: remember its verdict, whatever it is (pass and drop
 * too), for the later ones, if the datagram could be ours. */
static __always_inline void frag_remember(struct sbulb_frag_key *key,
					  struct flow *f, struct sbulb_cfg *cfg,
					  __u32 stat, struct sbulb_addr *to)
{
	struct sbulb_frag val = {};

	if (!frag_is_ours(f, cfg))
		return;
	val.seen_ns = bpf_ktime_get_ns();
	val.stat = stat;
	if (stat == SBULB_STAT_TX_INGRESS || stat == SBULB_STAT_TX_EGRESS)
		val.to = *to;
	frag_store(key, &val);
}

/* A later fragment: the verdict of its first fragment, *to for TX. One
 * seen before its first cannot be steered: dropped if it could be ours. */
static __always_inline __u32 frag_follow(struct sbulb_frag_key *key,
					 struct flow *f, struct sbulb_cfg *cfg,
					 struct sbulb_addr *to)
{
	struct sbulb_frag *val = frag_lookup(key);

	if (!val || bpf_ktime_get_ns() - val->seen_ns > SBULB_FRAG_TIMEOUT_NS)
		return frag_is_ours(f, cfg) ? SBULB_STAT_DROP_FRAG_UNKNOWN
					    : SBULB_STAT_PASS_NOT_BALANCED;
	*to = val->to;
	return val->stat;
}

#endif /* SBULB_LB_H */
