/* SPDX-License-Identifier: GPL-2.0 */
/*
 * telemetry.h - telemetry mode: per-packet balancing of NetFlow v9 and IPFIX
 * exports, except for the datagrams that carry templates.
 *
 * A collector decodes an exporter's data records only with the template
 * they refer to, and an exporter sends each template now and then, in a
 * datagram of its own or next to data. Spread per packet, each template
 * would reach one collector of N. So a datagram holding a template (v9
 * flowset id 0 or 1, IPFIX set id 2 or 3) goes to every target, as a
 * mirror service's datagrams do (mirror.h, with SBULB_TEMPLATE_MAGIC), and
 * its frame goes to the daemon (ring buffer sbulb_templates), which keeps
 * each exporter's latest and sends them to a collector that joins.
 * Anything else (NetFlow v5, sFlow, data only, malformed) is per packet.
 */
#ifndef SBULB_TELEMETRY_H
#define SBULB_TELEMETRY_H

#include "consts.h"
#include "csum.h"
#include "parsing.h"

#define NF9_VERSION 9
#define NF9_HEADER_LEN 20 /* version, count, uptime, secs, sequence, source id */
#define IPFIX_VERSION 10
#define IPFIX_HEADER_LEN 16 /* version, length, export time, sequence, domain */

/* The UDP payload of a whole datagram or of a first fragment: from byte
 * `off` of the frame; len is what the UDP header says the datagram holds
 * (a first fragment's frame ends before). */
struct payload {
	struct xdp_md *ctx;
	__u32 off;
	__u32 len;
};

/* Two big-endian 16-bit fields at byte `at` of the payload, or -1 where
 * the frame ends first. Read with bpf_xdp_load_bytes, not through packet
 * pointers: the verifier loses the bounds of a pointer moved by a
 * variable offset as soon as LLVM folds the constant of a check into it. */
static __always_inline int be16_pair(const struct payload *pl, __u32 at, __u32 *a, __u32 *b)
{
	__u8 w[4];

	if (bpf_xdp_load_bytes(pl->ctx, pl->off + at, w, sizeof(w)) < 0)
		return -1;
	*a = ((__u32)w[0] << 8) | w[1];
	*b = ((__u32)w[2] << 8) | w[3];
	return 0;
}

/*
 * Does this NetFlow v9 / IPFIX datagram carry a (options) template? The
 * walk looks at up to SBULB_TELEMETRY_MAX_SETS flowsets, each a 4-byte
 * header (id, length including the header) and its records. A flowset that
 * is shorter than its header or runs past the datagram (or, for IPFIX, past
 * the message length) makes the datagram data. So does a template beyond
 * the first fragment of a fragmented datagram (the frame ends first).
 *
 * Exporters often put data after their templates (softflowd: every 16th
 * datagram is 5 template sets, then data). Copied whole, that data would
 * reach every collector and be counted N times. *lead is then where the
 * leading run of template sets ends: the copies for all but one collector
 * keep only that much (template_trim). 0: copy whole (templates only, or
 * a template after data, which cannot be cut out).
 */
static __always_inline int telemetry_is_template(const struct payload *pl, __u32 *lead)
{
	__u32 version, field, off, end, id, len, first;
	int i, found = 0, leading = 1;

	*lead = 0;
	if (be16_pair(pl, 0, &version, &field) < 0)
		return 0;
	switch (version) {
	case NF9_VERSION:
		off = NF9_HEADER_LEN;
		end = pl->len;
		first = 0; /* template 0, options template 1 */
		break;
	case IPFIX_VERSION:
		off = IPFIX_HEADER_LEN;
		end = field; /* the message length, within the datagram */
		if (end < IPFIX_HEADER_LEN || end > pl->len)
			return 0;
		first = 2; /* template 2, options template 3 */
		break;
	default:
		return 0;
	}
/* a bounded loop (the verifier walks it; LLVM cannot unroll its early returns) */
	for (i = 0; i < SBULB_TELEMETRY_MAX_SETS; i++) {
		if (off + 4 > end)
			return found; /* the end of the message */
		if (be16_pair(pl, off, &id, &len) < 0)
			return found; /* the end of a first fragment's frame */
		if (len < 4 || off + len > end)
			return 0;
		if (id == first || id == first + 1) {
			if (!leading)
				return 1; /* after data: copied whole */
			found = 1;
		} else if (found) {
			*lead = off; /* data after the leading templates */
			return 1;
		} else {
			leading = 0;
		}
		off += len;
	}
	return found;
}

/*
 * A copy of a template datagram for a collector that does not get its
 * data: cut it after the leading templates (`keep` bytes of UDP payload),
 * with its lengths (IP, UDP, IPFIX message) and its UDP checksum made
 * anew. Returns 0 (also when there is nothing to cut, or the datagram is
 * not one we cut: IPv6 extension headers), -1 if it cannot be done.
 *
 * The checksum is summed over the pseudo-header and the UDP datagram left,
 * a chunk at a time through a per-CPU buffer (bpf_csum_diff sums at most
 * 512 bytes, from memory it can bound); template runs are short.
 */
static __always_inline int template_trim(struct xdp_md *ctx, __u32 keep)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct hdr_cursor nh = { .pos = data };
	__u32 udp_len = keep + sizeof(struct udphdr);
	__u32 l4, sum, off, n, i, pseudo_len;
	__be32 pseudo[10] = {};
	struct ipv6hdr *ip6h;
	struct sbulb_chunk *buf;
	struct udphdr *udp;
	struct iphdr *iph;
	struct ethhdr *eth;
	__u16 check;
	__u8 *msg;
	int proto;

	if (udp_len > SBULB_TEMPLATE_FRAME_MAX)
		return 0;
	/* each family on its own path: LLVM 14 merges two header pointers
	 * into one register the verifier then sees as a scalar (2026-11) */
	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto == bpf_htons(ETH_P_IP)) {
		if (parse_iphdr(&nh, data_end, &iph) != IPPROTO_UDP || ipv4_is_fragment(iph) ||
		    parse_udphdr(&nh, data_end, &udp) < 0)
			return 0;
		if (udp_len >= bpf_ntohs(udp->len))
			return 0; /* nothing to cut */
		__u16 from = iph->tot_len, to = bpf_htons(iph->ihl * 4 + udp_len);

		iph->tot_len = to;
		iph->check = sbulb_csum_replace2(iph->check, from, to);
		pseudo[0] = iph->saddr;
		pseudo[1] = iph->daddr;
		pseudo[2] = bpf_htonl((IPPROTO_UDP << 16) | udp_len);
		pseudo_len = 12;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (parse_ip6hdr(&nh, data_end, &ip6h) != IPPROTO_UDP ||
		    parse_udphdr(&nh, data_end, &udp) < 0)
			return 0;
		if (udp_len >= bpf_ntohs(udp->len))
			return 0;
		ip6h->payload_len = bpf_htons(udp_len);
		__builtin_memcpy(pseudo, &ip6h->saddr, 32);
		pseudo[8] = bpf_htonl(udp_len);
		pseudo[9] = bpf_htonl(IPPROTO_UDP);
		pseudo_len = 40;
	} else {
		return -1;
	}
	udp->len = bpf_htons(udp_len);
	udp->check = 0;
	msg = (__u8 *)(udp + 1);
	if ((void *)(msg + 4) > data_end)
		return -1;
	if (((msg[0] << 8) | msg[1]) == IPFIX_VERSION) {
		msg[2] = keep >> 8;
		msg[3] = keep & 0xff;
	}
	l4 = (void *)udp - data;
	sum = bpf_csum_diff(NULL, 0, pseudo, pseudo_len == 12 ? 12 : 40, 0);
	/* everything after the UDP datagram goes (the data, Ethernet padding) */
	if (bpf_xdp_adjust_tail(ctx, (int)(l4 + udp_len) - (int)bpf_xdp_get_buff_len(ctx)))
		return -1;
	buf = csum_chunk();
	if (!buf)
		return -1;
#pragma unroll
	for (i = 0; i < SBULB_TEMPLATE_FRAME_MAX / SBULB_CSUM_CHUNK; i++) {
		off = i * SBULB_CSUM_CHUNK;
		if (off >= udp_len)
			break;
		n = udp_len - off;
		/* 1 .. CHUNK, in bounds the verifier sees (CHUNK: a power of two) */
		n = ((n - 1) & (SBULB_CSUM_CHUNK - 1)) + 1;
		if (udp_len - off > SBULB_CSUM_CHUNK)
			n = SBULB_CSUM_CHUNK;
		__builtin_memset(buf->b, 0, SBULB_CSUM_CHUNK); /* an odd end pairs with 0 */
		if (bpf_xdp_load_bytes(ctx, l4 + off, buf->b, n) < 0)
			return -1;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)buf->b, SBULB_CSUM_CHUNK, sum);
	}
	check = sbulb_csum_fold(sum);
	if (check == 0)
		check = 0xffff; /* 0 would mean "no checksum" */
	return bpf_xdp_store_bytes(ctx, l4 + 6, &check, sizeof(check)) < 0 ? -1 : 0;
}

#endif /* SBULB_TELEMETRY_H */
