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
 * the message length) ends the walk: the datagram is data. So is a template
 * beyond the first fragment of a fragmented datagram (the frame ends first).
 */
static __always_inline int telemetry_is_template(const struct payload *pl)
{
	__u32 version, field, off, end, id, len, first;
	int i;

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
#pragma unroll
	for (i = 0; i < SBULB_TELEMETRY_MAX_SETS; i++) {
		if (off + 4 > end || be16_pair(pl, off, &id, &len) < 0)
			return 0;
		if (len < 4 || off + len > end)
			return 0;
		if (id == first || id == first + 1)
			return 1;
		off += len;
	}
	return 0;
}

#endif /* SBULB_TELEMETRY_H */
