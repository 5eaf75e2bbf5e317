/* SPDX-License-Identifier: GPL-2.0 */
/*
 * icmp.h - ICMP and ICMPv6 errors about balanced datagrams, translated both
 * ways, so that port unreachable and path MTU discovery work through the
 * balancer.
 *
 * An error quotes the IP header and (at least) the first 8 bytes of the
 * datagram that caused it; that quote is what we match:
 *
 *   egress:  a real server (or a router before it) answers a client's
 *            datagram, which we had sent to that server:
 *              outer  [server or router] -> client
 *              quoted client:port -> server:balanced port
 *            the quoted destination becomes the VIP, and so does the outer
 *            source when it is the server itself: the client sees an error
 *            about what it sent, to the VIP.
 *   ingress: a client (or a router before it) answers our answer:
 *              outer  [client or router] -> VIP
 *              quoted VIP:balanced port -> client:port
 *            the error goes to the client's real server: the outer
 *            destination and the quoted source become that server.
 *
 * The association must agree, so nobody can steer errors to a server.
 * Checksums are updated incrementally: the outer IPv4 header, the quoted
 * IPv4 header, the quoted UDP header (0 stays 0 on IPv4) and the ICMP
 * checksum, which covers the quote (and, for ICMPv6, a pseudo-header with
 * the outer addresses). A quote ends at 8 bytes of UDP header at least, so
 * the fields we change are always there; we never recompute a checksum
 * from data, which may be cut short.
 */
#ifndef SBULB_ICMP_H
#define SBULB_ICMP_H

#include <linux/icmp.h>
#include <linux/icmpv6.h>

#include "csum.h"
#include "lb.h"
#include "maps.h"

/* The errors we translate (RFC 792, RFC 4443). */
static __always_inline int icmp4_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
	       type == ICMP_PARAMETERPROB;
}

static __always_inline int icmp6_is_error(__u8 type)
{
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

/* Which way an error about the quoted datagram goes (SBULB_STAT_TX_ICMP_*)
 * and what to write (*t); PASS_NOT_BALANCED if not ours. */
static __always_inline __u32 icmp_classify(struct flow *outer,
					   struct flow *quoted,
					   struct target *t)
{
	struct sbulb_assoc_key key = {};
	struct sbulb_member_ref *ref;
	struct sbulb_service *svc;
	struct sbulb_assoc *as;

	/* about our answer from VIP:port to client:port */
	t->service = vip_port_service(&quoted->src, quoted->sport);
	if (t->service) {
		if (!addr_eq(&outer->dst, &quoted->src))
			return SBULB_STAT_PASS_NOT_BALANCED;
		key.client = quoted->dst;
		key.port = quoted->dport;
		key.service = t->service;
		as = assoc_lookup(&key);
		if (!as)
			return SBULB_STAT_PASS_NOT_BALANCED;
		t->to = as->server;
		t->slot = member_slot(&t->to, quoted->sport, t->service);
		if (!t->slot)
			return SBULB_STAT_PASS_NOT_BALANCED;
		return SBULB_STAT_TX_ICMP_INGRESS;
	}
	/* about a client's datagram we sent on to real server:port */
	ref = endpoint_get(&quoted->dst, quoted->dport);
	if (!ref)
		return SBULB_STAT_PASS_NOT_BALANCED;
	t->service = ref->service;
	t->slot = ref->slot;
	svc = svc_get(t->service);
	if (!svc_live(svc))
		return SBULB_STAT_PASS_NOT_BALANCED;
	/* in mirror mode every target had it: the primary's errors reach
	 * the client (from the VIP), the others' are dropped (and still count
	 * for passive health checks: the callers count them) */
	if (svc->flags & SBULB_SVC_F_MIRROR) {
		if (!member_is_primary(t->slot))
			return SBULB_STAT_DROP_MIRROR_REPLY;
	} else if (!(svc->flags & SBULB_SVC_F_PER_PACKET)) {
		/* in per-packet mode any server of the service may have had
		 * the datagram; otherwise the association must name this one */
		key.client = quoted->src;
		key.port = quoted->sport;
		key.service = t->service;
		as = assoc_lookup(&key);
		if (!as || !addr_eq(&as->server, &quoted->dst))
			return SBULB_STAT_PASS_NOT_BALANCED;
	}
	/* it is about that client's datagram: it goes to that client, or
	 * nowhere (else a server could send anyone an error from the VIP) */
	if (!addr_eq(&outer->dst, &quoted->src))
		return SBULB_STAT_DROP_ICMP_MISDIRECTED;
	t->to = svc->vip;
	return SBULB_STAT_TX_ICMP_EGRESS;
}

/* IPv4: rewrite a quoted address (*field) to 'to', with the quoted IP and
 * UDP checksums and the ICMP checksum that covers them. */
static __always_inline void icmp4_nat_quoted(struct icmphdr *icmp,
					     struct iphdr *qip,
					     struct udphdr *qudp,
					     __be32 *field, __be32 to)
{
	__be32 from = *field;
	__u16 old_ip_check = qip->check, old_udp_check = qudp->check;

	*field = to;
	qip->check = sbulb_csum_replace4(qip->check, from, to);
	if (qudp->check)
		qudp->check = sbulb_csum_udp_mangled0(
			sbulb_csum_replace4(qudp->check, from, to));
	icmp->checksum = sbulb_csum_replace4(icmp->checksum, from, to);
	icmp->checksum = sbulb_csum_replace2(icmp->checksum, old_ip_check, qip->check);
	icmp->checksum = sbulb_csum_replace2(icmp->checksum, old_udp_check, qudp->check);
}

/* IPv6: rewrite a quoted address, with the quoted UDP checksum and the
 * ICMPv6 checksum that covers it. */
static __always_inline void icmp6_nat_quoted(struct icmp6hdr *icmp6,
					     struct udphdr *qudp,
					     struct in6_addr *field,
					     const struct sbulb_addr *to)
{
	__u16 old_udp_check = qudp->check;
	struct sbulb_addr from;

	__builtin_memcpy(&from, field, sizeof(from));
	__builtin_memcpy(field, to, sizeof(*to));
	if (qudp->check)
		qudp->check = sbulb_csum_udp_mangled0(
			sbulb_csum_replace16(qudp->check, from.a, to->a));
	icmp6->icmp6_cksum = sbulb_csum_replace16(icmp6->icmp6_cksum, from.a, to->a);
	icmp6->icmp6_cksum = sbulb_csum_replace2(icmp6->icmp6_cksum, old_udp_check,
						 qudp->check);
}

/* IPv6: rewrite an outer address; the ICMPv6 checksum covers it through
 * its pseudo-header. Hop limit one lower. */
static __always_inline void icmp6_nat_outer(struct ipv6hdr *ip6h,
					    struct icmp6hdr *icmp6,
					    struct in6_addr *field,
					    const struct sbulb_addr *to)
{
	struct sbulb_addr from;

	__builtin_memcpy(&from, field, sizeof(from));
	__builtin_memcpy(field, to, sizeof(*to));
	icmp6->icmp6_cksum = sbulb_csum_replace16(icmp6->icmp6_cksum, from.a, to->a);
	ip6h->hop_limit--;
}

#endif /* SBULB_ICMP_H */
