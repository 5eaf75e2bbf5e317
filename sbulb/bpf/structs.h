/* SPDX-License-Identifier: GPL-2.0 */
/*
 * structs.h - types shared with user space.
 *
 * bcc reads these declarations to build the Python key/value types of each
 * map, so Python never mirrors them by hand; it packs bytes of the sizes
 * checked in tests/test_contract.py.
 */
#ifndef SBULB_STRUCTS_H
#define SBULB_STRUCTS_H

/*
 * An IP address of either family: an IPv6 address, or an IPv4 address in
 * its IPv4-mapped form ::ffff:a.b.c.d (a[0..2] = 0, 0, htonl(0xffff)).
 * Network byte order.
 */
struct sbulb_addr {
	__be32 a[4];
};

/*
 * A UDP endpoint, the key of two maps: sbulb_vip_ports (a VIP and one of
 * its service's ports) and sbulb_endpoints (a real server and a port it
 * answers from: the same ports, since only addresses are rewritten).
 */
struct sbulb_endpoint {
	struct sbulb_addr addr; /* VIP or real server IP */
	__be16 port;            /* UDP port */
	__u16 pad;              /* zero */
};

/* Value of sbulb_endpoints: which member a real server:port is. */
struct sbulb_member_ref {
	__u32 service; /* service id (1..2 * SBULB_MAX_SERVICES) */
	__u32 slot;    /* member slot (1..): index of sbulb_rs, sbulb_rs_stats */
};

/* Value of sbulb_svc, indexed by service id (0: none, never used). */
struct sbulb_service {
	struct sbulb_addr vip; /* its virtual IP */
	__u32 ring_base;       /* first entry of its cycle in sbulb_ring */
	__u32 ring_len;        /* entries of its cycle; 0: no server takes new clients */
	__u32 flags;           /* SBULB_SVC_F_* (consts.h): its mode */
	__u32 mirror;          /* mirror, telemetry: its broadcast devmap (sbulb_mirror_<n>) ... */
	__u32 copy_base;       /* ... and the targets of its copies, in sbulb_ring (for */
	__u32 copy_len;        /* mirror its cycle; for telemetry after its cycle) */
	__u32 maglev_base;     /* scheduler = maglev: its table in sbulb_maglev ... */
	__u32 maglev_len;      /* ... (a prime number of entries); 0: round robin */
};

/* Value of sbulb_rs, indexed by member slot: one real server of one
 * service. An empty slot is all zero. */
struct sbulb_member {
	struct sbulb_addr addr; /* real server IP */
	__u32 service;          /* the service it belongs to */
	__u32 flags;            /* SBULB_MEMBER_F_* (consts.h) */
};

/* Round-robin cursor of one service over its cycle, shared by every CPU. */
struct sbulb_rr {
	struct bpf_spin_lock lock;
	__u32 cursor; /* next index into the cycle, modulo ring_len */
};

/*
 * Key of sbulb_assoc: the foreign peer (client) of an association, within
 * one service. Version 2 of the pinned layout (sbulb_assoc_v2): version 1
 * had a zero pad where the service id now is.
 */
struct sbulb_assoc_key {
	struct sbulb_addr client; /* client IP */
	__be16 port;              /* client UDP port */
	__u16 service;            /* service id */
};

/* Value of sbulb_assoc. */
struct sbulb_assoc {
	struct sbulb_addr server; /* real server IP */
};

/* Key of sbulb_frags: one fragmented datagram, as it arrived (before NAT). */
struct sbulb_frag_key {
	struct sbulb_addr src; /* source IP */
	struct sbulb_addr dst; /* destination IP */
	__be32 id;             /* IPv4 id (16 bits, widened) or IPv6 identification */
	__u8 proto;            /* transport protocol (UDP) */
	__u8 pad[3];           /* zero */
};

/* Value of sbulb_frags: what its first fragment got. */
struct sbulb_frag {
	struct sbulb_addr to; /* address written (SBULB_STAT_TX_* only) */
	__u32 stat;           /* the first fragment's verdict slot (enum sbulb_stat) */
	__u32 slot;           /* its member slot (SBULB_STAT_TX_* only) */
	__u32 service;        /* its service id (SBULB_STAT_TX_* only) */
	__u32 pad;            /* zero */
	__u64 seen_ns;        /* when (bpf_ktime_get_ns), to let old ones expire */
};

/* Value of sbulb_rs_stats and sbulb_svc_stats: traffic of one member or
 * one service in one direction. */
struct sbulb_traffic {
	__u64 packets;
	__u64 bytes; /* frame bytes, Ethernet header included */
};

/* Key of sbulb_neigh_miss: a next hop the kernel has no neighbour for. */
struct sbulb_neigh {
	struct sbulb_addr addr; /* next hop (gateway or destination) */
	__u32 ifindex;          /* interface it is reached through */
	__u32 pad;              /* zero */
};

/*
 * One data-path event (ring buffer, SBULB_EVENTS > 0 only). Python decodes it
 * with bcc's table.event(), which only knows bcc's plain integer type names
 * (u8, u16, u32, ...) and arrays of them: hence no __be16 and no nested
 * struct here. Addresses are struct sbulb_addr bytes, ports network order.
 */
struct sbulb_event {
	u32 type;        /* enum sbulb_event_type */
	u16 client_port; /* client UDP port */
	u16 port;        /* balanced (VIP / real server) UDP port */
	u32 service;     /* service id */
	u8 client[16];   /* client IP */
	u8 server[16];   /* real server the packet goes to / came from */
	u8 other[16];    /* the previous or the associated server, or zero */
};

/* Value of sbulb_new_rate (per CPU): when the next new association is
 * due, for the rate limit (GCRA, consts.h SBULB_NEW_ASSOC_INTERVAL_NS). */
struct sbulb_rate {
	__u64 due_ns;
	__u64 hashed_until_ns; /* new associations take the hash's server until then */
};

/* Value of sbulb_mirror_state (per CPU, per interface slot): which copy of
 * which mirrored frame the egress program saw last (mirror.h). */
struct sbulb_mirror_state {
	__u32 seq;  /* the frame's sequence number (struct sbulb_mirror_meta) */
	__u32 next; /* index of its next copy among the service's targets */
};

/* A telemetry template datagram for the daemon (ring buffer sbulb_templates,
 * telemetry.h): the frame as it arrived, before NAT. Python reads the bytes. */
struct sbulb_template {
	__u32 service; /* service id */
	__u32 len;     /* bytes of frame[] used */
	__u8 frame[SBULB_TEMPLATE_FRAME_MAX];
};

/* Value of sbulb_csum_chunk (per CPU): bytes being checksummed (telemetry.h). */
struct sbulb_chunk {
	__u8 b[SBULB_CSUM_CHUNK];
};

#endif /* SBULB_STRUCTS_H */
