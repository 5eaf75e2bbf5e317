/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lb.h - the balancing decision, independent of the address family.
 *
 * A parsed UDP packet is a struct flow. classify() tells whether it goes to
 * a service's VIP:port (ingress), comes from a real server:port of a
 * service (egress), or is none of our business. ingress() and egress()
 * consult and update the service's associations and return a counter slot
 * (enum sbulb_stat): SBULB_STAT_TX_* means "rewrite the address to t->to
 * and transmit", anything else is the verdict.
 */
#ifndef SBULB_LB_H
#define SBULB_LB_H

#include "maps.h"
#include "telemetry.h"

/* Addresses and ports of one UDP packet (network order). */
struct flow {
	struct sbulb_addr src;
	struct sbulb_addr dst;
	__be16 sport;
	__be16 dport;
};

/* What a TX verdict rewrites, and whose traffic it is. */
struct target {
	struct sbulb_addr to; /* the address written: destination (ingress) or source */
	__u32 service;        /* service id */
	__u32 slot;           /* the real server's member slot (0: look it up) */
	__u32 trim;           /* TX_TEMPLATE: bytes of payload the other copies keep (0: all) */
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

static __always_inline int addr_is_zero(const struct sbulb_addr *x)
{
	return !(x->a[0] | x->a[1] | x->a[2] | x->a[3]);
}

/* Is this service described? (An array entry always exists; a zero VIP
 * means that no service has that id, or not yet, or not any more.) */
static __always_inline int svc_live(const struct sbulb_service *svc)
{
	return svc && !addr_is_zero(&svc->vip);
}

/* The member slot of `server` answering from `port` in service `id`; 0 if
 * it is not (or no longer) a real server of that service. */
static __always_inline __u32 member_slot(const struct sbulb_addr *server,
					 __be16 port, __u32 id)
{
	struct sbulb_member_ref *ref = endpoint_get(server, port);

	return ref && ref->service == id ? ref->slot : 0;
}

/* Is the member in `slot` down with on_down = move? */
static __always_inline int member_moves(__u32 slot)
{
	struct sbulb_member *member = rs_get(slot);

	return member && (member->flags & SBULB_MEMBER_F_MOVE);
}

/* Is the member in `slot` its mirror service's primary? */
static __always_inline int member_is_primary(__u32 slot)
{
	struct sbulb_member *member = rs_get(slot);

	return member && (member->flags & SBULB_MEMBER_F_PRIMARY);
}

/* Which way a packet goes: ingress (to a VIP:port) or egress (from a real
 * server:port to anyone but its VIP); t->service (and for egress t->slot)
 * say whose. *svc = the service. */
static __always_inline enum direction classify(struct flow *f, struct target *t,
					       struct sbulb_service **svc)
{
	struct sbulb_member_ref *ref;

	t->service = vip_port_service(&f->dst, f->dport);
	if (t->service) {
		*svc = svc_get(t->service);
		return svc_live(*svc) ? DIR_INGRESS : DIR_NONE;
	}
	ref = endpoint_get(&f->src, f->sport);
	if (!ref)
		return DIR_NONE;
	t->service = ref->service;
	t->slot = ref->slot;
	*svc = svc_get(t->service);
	/* a server talking to its own VIP (another port) is not answering a
	 * client */
	if (!svc_live(*svc) || addr_eq(&f->dst, &(*svc)->vip))
		return DIR_NONE;
	return DIR_EGRESS;
}

/* The real server in a member slot (an entry of the ring or of a Maglev
 * table), into t->to and t->slot. Returns 0, or -1 when the slot is not
 * (or no longer) one of service t->service's. */
static __always_inline int pick_slot(struct target *t, const __u32 *slot)
{
	struct sbulb_member *member;

	if (!slot || *slot == 0)
		return -1;
	member = rs_get(*slot);
	/* a slot being emptied, or reused, by a concurrent reload */
	if (!member || member->service != t->service || addr_is_zero(&member->addr))
		return -1;
	t->to = member->addr;
	t->slot = *slot;
	return 0;
}

/* The one at position idx (< ring_len) of the service's cycle. */
static __always_inline int pick_at(struct sbulb_service *svc, struct target *t,
				   __u32 idx)
{
	return pick_slot(t, ring_get(svc->ring_base + idx));
}

/*
 * Next real server of service t->service in round-robin order, into t->to
 * and t->slot. Returns 0, or -1 when there is none. Only called when an
 * association is created.
 *
 * The cursor is shared by all CPUs so that new clients alternate strictly.
 * bcc 0.26 (Debian 12) compiles for BPF ISA v1, where LLVM 14 rejects an
 * atomic fetch-and-add whose result is used ("Invalid usage of the XADD
 * return value", 2026-11), so a bpf_spin_lock guards the cursor instead.
 */
static __always_inline int pick_server(struct sbulb_service *svc,
				       struct target *t)
{
	__u32 len = svc->ring_len, idx;
	struct sbulb_rr *rr;

	if (len == 0)
		return -1;
	rr = rr_get(t->service);
	if (!rr)
		return -1;
	bpf_spin_lock(&rr->lock);
	idx = rr->cursor++;
	bpf_spin_unlock(&rr->lock);
	return pick_at(svc, t, idx % len);
}

/* A hash of a client's ip:port (a few multiply-xor rounds: spreads the
 * addresses of one subnet, and costs nothing next to a map lookup). */
static __always_inline __u32 client_hash(const struct flow *f)
{
	__u32 h = 0x9e3779b9, i;

#pragma unroll
	for (i = 0; i < 4; i++)
		h = (h ^ f->src.a[i]) * 0x85ebca6b;
	h = (h ^ f->sport) * 0xc2b2ae35;
	return h ^ (h >> 16);
}

/*
 * The new-association rate limit (consts.h): may a client create one now?
 * GCRA on this CPU's due time: the next one is due one interval after the
 * previous one's, and may come early by up to BURST - 1 intervals. Per CPU,
 * so no lock; a packet stays on one CPU. *hashed: the limit refused one
 * lately, so the new association takes the hash's server.
 */
static __always_inline int new_assoc_allowed(int *hashed)
{
#if SBULB_NEW_ASSOC_INTERVAL_NS
	struct sbulb_rate *r = rate_get();
	__u64 now, due;

	if (!r)
		return 1;
	now = bpf_ktime_get_ns();
	due = r->due_ns > now ? r->due_ns : now;
	if (due - now > (SBULB_NEW_ASSOC_BURST - 1) * (__u64)SBULB_NEW_ASSOC_INTERVAL_NS) {
		r->hashed_until_ns = now + SBULB_HASHED_AFTER_LIMIT_NS;
		return 0;
	}
	r->due_ns = due + SBULB_NEW_ASSOC_INTERVAL_NS;
	*hashed = now < r->hashed_until_ns;
#endif
	return 1;
}

/* The server a hash of the client's ip:port picks in its service's cycle,
 * or in its Maglev table (sbulb/maglev.py: every balancer with the same
 * config picks the same, and client_hash has no per-boot key). */
static __always_inline int pick_hashed(struct sbulb_service *svc, struct target *t,
				       const struct flow *f)
{
	__u32 h = client_hash(f), *slot;

	/* one pick_slot for both: every copy of it is verified apart */
	if (svc->maglev_len)
		slot = maglev_get(svc->maglev_base + h % svc->maglev_len);
	else if (svc->ring_len)
		slot = ring_get(svc->ring_base + h % svc->ring_len);
	else
		return -1;
	return pick_slot(t, slot);
}

/* A new association's server: round robin, or the service's Maglev table. */
static __always_inline int pick_new(struct sbulb_service *svc, struct target *t,
				    const struct flow *f, int hashed)
{
	if (hashed || svc->maglev_len)
		return pick_hashed(svc, t, f);
	return pick_server(svc, t);
}

/* Client -> VIP: find or create the client's association in its service;
 * t->to = its server, t->slot = that server's slot. `fragment`: the
 * datagram is a first fragment; *pl its payload. */
static __always_inline __u32 ingress(struct flow *f, struct sbulb_service *svc,
				     struct target *t, int fragment,
				     const struct payload *pl)
{
	struct sbulb_assoc_key key = {};
	struct sbulb_addr old = {};
	struct sbulb_assoc val = {};
	struct sbulb_assoc *as;
	__u32 stat = SBULB_STAT_ASSOC_CLIENT;
	int hashed = 0, limited = 0;

	/* mirror mode: a copy to every server of the cycle (mirror.h) */
	if (svc->flags & SBULB_SVC_F_MIRROR)
		return svc->copy_len ? SBULB_STAT_TX_MIRROR
				     : SBULB_STAT_DROP_NO_REAL_SERVER;

	/* per-packet mode: the next server in the cycle, remembered nowhere
	 * (a fragmented datagram's later fragments follow its first one).
	 * Telemetry is per packet too, but for a datagram with a template:
	 * copied to every target (telemetry.h), the next server by weight
	 * getting it whole (its data records too), the others cut after the
	 * templates. (The walk sits inside this branch: the verifier then
	 * checks the sticky path below once, not once per way out of it.) */
	if (svc->flags & SBULB_SVC_F_PER_PACKET) {
		int template = (svc->flags & SBULB_SVC_F_TELEMETRY) &&
			       telemetry_is_template(pl, &t->trim);

		if (template && svc->copy_len == 0)
			return SBULB_STAT_DROP_NO_REAL_SERVER;
		if (pick_server(svc, t) < 0)
			return SBULB_STAT_DROP_NO_REAL_SERVER;
		return template ? SBULB_STAT_TX_TEMPLATE : SBULB_STAT_TX_INGRESS;
	}

	key.client = f->src;
	key.port = f->sport;
	key.service = t->service;
	as = assoc_lookup(&key);
	if (as) {
		t->to = as->server;
		t->slot = member_slot(&t->to, f->dport, t->service);
		if (t->slot && member_moves(t->slot))
			t->slot = 0; /* down, and its clients move: like a removed one */
		if (t->slot) {
			SBULB_EVENT(2, SBULB_EV_REUSED_INGRESS, t->service, &f->src,
				    f->sport, f->dport, &t->to, NULL);
			return SBULB_STAT_TX_INGRESS;
		}
		/* its real server left the service: pick another one */
		old = t->to;
		stat = SBULB_STAT_ASSOC_REPICK;
	} else if (!new_assoc_allowed(&hashed)) {
		/* over the rate (a flood of new sources?): a whole datagram
		 * still reaches a server, the same for the same ip:port while
		 * the cycle stays, but evicts nobody; a first fragment is
		 * dropped, since spoofed ones would fill the servers'
		 * reassembly queues */
		if (fragment)
			return SBULB_STAT_DROP_FRAG_RATE;
		limited = hashed = 1; /* picked below, not remembered */
	}

	/* (one pick for all three cases: each inlined copy of it is verified
	 * apart, and the events build is near the verifier's limit) */
	if (pick_new(svc, t, f, hashed) < 0) {
		if (!limited)
			SBULB_EVENT(1, SBULB_EV_DROP_NO_REAL_SERVER, t->service, &f->src,
				    f->sport, f->dport, &old, NULL);
		return SBULB_STAT_DROP_NO_REAL_SERVER;
	}
	if (limited) {
		count(SBULB_STAT_ASSOC_RATE_LIMITED);
		return SBULB_STAT_TX_INGRESS;
	}
	val.server = t->to;
	if (stat == SBULB_STAT_ASSOC_REPICK) {
		if (assoc_update(&key, &val))
			return SBULB_STAT_DROP_ASSOC_FAILED;
		SBULB_EVENT(1, SBULB_EV_ASSOC_REPICK, t->service, &f->src,
			    f->sport, f->dport, &t->to, &old);
	} else if (assoc_insert(&key, &val)) {
		/* another CPU associated this client meanwhile: follow it */
		as = assoc_lookup(&key);
		if (!as)
			return SBULB_STAT_DROP_ASSOC_FAILED;
		t->to = as->server;
		t->slot = member_slot(&t->to, f->dport, t->service);
		return SBULB_STAT_TX_INGRESS;
	} else {
		SBULB_EVENT(1, SBULB_EV_ASSOC_CLIENT, t->service, &f->src,
			    f->sport, f->dport, &t->to, NULL);
	}
	count(stat);
	return SBULB_STAT_TX_INGRESS;
}

/*
 * Real server -> client: the association (in the server's service) must
 * name this server, or not exist yet (then the server starts it), or name
 * a server that left the service (then this one takes the client over).
 * t->to = the VIP.
 */
static __always_inline __u32 egress(struct flow *f, struct sbulb_service *svc,
				    struct target *t)
{
	struct sbulb_assoc_key key = {};
	struct sbulb_assoc val = {};
	struct sbulb_addr other;
	struct sbulb_assoc *as;
	__u32 slot;

	/* mirror mode: only the primary's datagrams reach clients (from the
	 * VIP); the other targets' are dropped. Probe answers are ours. */
	if (svc->flags & SBULB_SVC_F_MIRROR) {
		if (is_probe(&f->dst, f->dport))
			return SBULB_STAT_PASS_NOT_BALANCED;
		if (!member_is_primary(t->slot))
			return SBULB_STAT_DROP_MIRROR_REPLY;
		goto out;
	}

	/* per-packet mode: any server of the service speaks for it (but an
	 * answer to one of our own health probes is for our stack) */
	if (svc->flags & SBULB_SVC_F_PER_PACKET) {
		if (is_probe(&f->dst, f->dport))
			return SBULB_STAT_PASS_NOT_BALANCED;
		goto out;
	}

	key.client = f->dst;
	key.port = f->dport;
	key.service = t->service;
	val.server = f->src;
	as = assoc_lookup(&key);
	if (!as) {
		/* a server speaking first makes a new association too, and
		 * servers answer floods: over the rate the datagram still
		 * reaches the client from the VIP, and evicts nobody */
		int hashed = 0;

		/* an answer to one of our own health probes is for our stack
		 * (checked only here: our probe sockets are never associated,
		 * so the answers to clients pay no extra lookup) */
		if (is_probe(&f->dst, f->dport))
			return SBULB_STAT_PASS_NOT_BALANCED;
		if (!new_assoc_allowed(&hashed)) {
			count(SBULB_STAT_ASSOC_RATE_LIMITED);
			goto out;
		}
		if (assoc_insert(&key, &val) == 0) {
			count(SBULB_STAT_ASSOC_SERVER);
			SBULB_EVENT(1, SBULB_EV_ASSOC_SERVER, t->service, &f->dst,
				    f->dport, f->sport, &f->src, NULL);
			goto out;
		}
		/* another CPU associated this client meanwhile */
		as = assoc_lookup(&key);
		if (!as)
			return SBULB_STAT_DROP_ASSOC_FAILED;
	}
	other = as->server;
	if (addr_eq(&other, &f->src)) {
		SBULB_EVENT(2, SBULB_EV_REUSED_EGRESS, t->service, &f->dst,
			    f->dport, f->sport, &f->src, NULL);
		goto out;
	}
	slot = member_slot(&other, f->sport, t->service);
	if (slot && !member_moves(slot)) {
		SBULB_EVENT(1, SBULB_EV_DROP_NOT_ASSOCIATED, t->service, &f->dst,
			    f->dport, f->sport, &f->src, &other);
		return SBULB_STAT_DROP_NOT_ASSOCIATED;
	}
	/* the associated server left the service (or is down, and its
	 * clients move): this one takes the client */
	if (assoc_update(&key, &val))
		return SBULB_STAT_DROP_ASSOC_FAILED;
	count(SBULB_STAT_ASSOC_REPICK);
	SBULB_EVENT(1, SBULB_EV_ASSOC_REPICK, t->service, &f->dst, f->dport,
		    f->sport, &f->src, &other);
out:
	t->to = svc->vip;
	return SBULB_STAT_TX_EGRESS;
}

/* The verdict for a parsed UDP packet (a whole datagram or its first
 * fragment): classify, then let the kernel have it if the TTL / hop limit
 * is about to expire, else NAT it. */
static __always_inline __u32 decide(struct flow *f, __u8 ttl, int fragment,
				    struct target *t, const struct payload *pl)
{
	struct sbulb_service *svc = NULL;

	switch (classify(f, t, &svc)) {
	case DIR_INGRESS:
		if (ttl < SBULB_MIN_TTL)
			return SBULB_STAT_PASS_TTL;
		return ingress(f, svc, t, fragment, pl);
	case DIR_EGRESS:
		if (ttl < SBULB_MIN_TTL)
			return SBULB_STAT_PASS_TTL;
		return egress(f, svc, t);
	default:
		return SBULB_STAT_PASS_NOT_BALANCED;
	}
}

/* Could this datagram be ours, whatever its ports? (For fragments: later
 * ones carry no port.) */
static __always_inline int frag_is_ours(struct flow *f)
{
	return is_vip(&f->dst) || is_real_server(&f->src);
}

/* A first fragment: remember its verdict, whatever it is (pass and drop
 * too), for the later ones, if the datagram could be ours. */
static __always_inline void frag_remember(struct sbulb_frag_key *key,
					  struct flow *f, __u32 stat,
					  struct target *t)
{
	struct sbulb_frag val = {};

	if (!frag_is_ours(f))
		return;
	val.seen_ns = bpf_ktime_get_ns();
	val.stat = stat;
	if (stat == SBULB_STAT_TX_INGRESS || stat == SBULB_STAT_TX_EGRESS) {
		val.to = t->to;
		val.slot = t->slot;
		val.service = t->service;
	} else if (stat == SBULB_STAT_TX_MIRROR || stat == SBULB_STAT_TX_TEMPLATE) {
		val.service = t->service; /* its later fragments are copied too */
	}
	frag_store(key, &val);
}

/* A later fragment: the verdict of its first fragment, *t for TX. One
 * seen before its first cannot be steered: dropped if it could be ours. */
static __always_inline __u32 frag_follow(struct sbulb_frag_key *key,
					 struct flow *f, struct target *t)
{
	struct sbulb_frag *val = frag_lookup(key);

	if (!val || bpf_ktime_get_ns() - val->seen_ns > SBULB_FRAG_TIMEOUT_NS)
		return frag_is_ours(f) ? SBULB_STAT_DROP_FRAG_UNKNOWN
				       : SBULB_STAT_PASS_NOT_BALANCED;
	t->to = val->to;
	t->slot = val->slot;
	t->service = val->service;
	return val->stat;
}

#endif /* SBULB_LB_H */
