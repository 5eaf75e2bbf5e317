/* SPDX-License-Identifier: GPL-2.0 */
/*
 * consts.h - sizes, protocol constants, counter slots and event types.
 *
 * Sizes can be overridden at load time with -D (the Python side passes
 * -mp/-mrs/-ma that way). Counter slots and event types are a contract with
 * Python (sbulb/consts.py): numbers are written out, never renumbered and
 * never reused; tests/test_contract.py checks that both sides agree.
 */
#ifndef SBULB_CONSTS_H
#define SBULB_CONSTS_H

/* Maximum number of balanced UDP ports (-mp). */
#ifndef SBULB_MAX_PORTS
#define SBULB_MAX_PORTS 16
#endif

/* Maximum number of real servers (-mrs): distinct addresses over all
 * services. */
#ifndef SBULB_MAX_REAL_SERVERS
#define SBULB_MAX_REAL_SERVERS 32
#endif

/* Maximum number of services (--max-services); ids are 1..2 * max. */
#ifndef SBULB_MAX_SERVICES
#define SBULB_MAX_SERVICES 64
#endif

/* Maximum number of (service, real server) memberships: a server in two
 * services is two members, each with its own slot and counters
 * (sbulb/config.py Limits.max_members). */
#ifndef SBULB_MAX_MEMBERS
#define SBULB_MAX_MEMBERS 2048
#endif

/* Maximum number of real server address:port pairs that answer for a
 * service (sbulb/config.py Limits.max_endpoints). */
#ifndef SBULB_MAX_ENDPOINTS
#define SBULB_MAX_ENDPOINTS 512
#endif

/* New associations made by clients, per CPU: at most one every
 * SBULB_NEW_ASSOC_INTERVAL_NS on average, in bursts of up to
 * SBULB_NEW_ASSOC_BURST (--max-new-associations-per-second, shared evenly
 * among the CPUs). Above it a new client is balanced by a hash of its
 * ip:port and not remembered, so that a flood of new (spoofed) sources
 * cannot evict the clients the map holds. 0: no limit. */
#ifndef SBULB_NEW_ASSOC_INTERVAL_NS
#define SBULB_NEW_ASSOC_INTERVAL_NS 0
#endif
#ifndef SBULB_NEW_ASSOC_BURST
#define SBULB_NEW_ASSOC_BURST 1
#endif
/* For this long after the limit last refused one, a new association takes
 * the server the hash picks (the one the client was balanced to while it
 * was not remembered), not the next in round robin: a client that sends
 * during a flood keeps its server when it is remembered at last. */
#ifndef SBULB_HASHED_AFTER_LIMIT_NS
#define SBULB_HASHED_AFTER_LIMIT_NS 1000000000ULL
#endif

/* Service flags (struct sbulb_service flags; sbulb/state.py SVC_F_*). */
#define SBULB_SVC_F_PER_PACKET 1 /* every datagram to the next server, no association */
#define SBULB_SVC_F_MIRROR 2     /* every datagram to every server of its cycle (mirror.h) */
#define SBULB_SVC_F_TELEMETRY 4  /* with PER_PACKET: NetFlow v9 / IPFIX templates to every
				  * server (telemetry.h) */

/* Member flags (struct sbulb_member flags; sbulb/state.py MEMBER_F_*). */
#define SBULB_MEMBER_F_MOVE 1 /* down, on_down = move: its clients pick anew */
#define SBULB_MEMBER_F_PRIMARY 2 /* mirror: the server whose replies reach clients */

/* Mirror services at once (one broadcast devmap each; sbulb/config.py
 * MIRROR_SLOTS), and targets of one (entries of its devmap). */
#define SBULB_MIRROR_SLOTS 16
#define SBULB_MIRROR_TARGETS 32
/* The mark of a mirrored frame's metadata (mirror.h), and of a telemetry
 * template's (copied the same way, counted apart). */
#define SBULB_MIRROR_MAGIC 0x5b1b
#define SBULB_TEMPLATE_MAGIC 0x5b1c

/* Telemetry (telemetry.h): flowsets (v9) or sets (IPFIX) looked at in one
 * datagram for a template (softflowd needs 6: 5 template sets, then data;
 * each more costs the verifier about 20k of its 1M instructions with
 * events compiled in, already at 95%); the longest frame handed to the daemon, and
 * the size of that ring buffer (pages). */
#define SBULB_TELEMETRY_MAX_SETS 6
#define SBULB_TEMPLATE_FRAME_MAX 2048 /* a power of two (balancer.c template_keep) */
#define SBULB_TEMPLATE_PAGES 64
/* bpf_csum_diff's most bytes at once (telemetry.h template_trim): a power of two */
#define SBULB_CSUM_CHUNK 512

/* Probe sockets of the daemon's health checks (sbulb_probes). */
#define SBULB_MAX_PROBES 16384

/* Size of the client ip:port -> real server LRU map (-ma). */
#ifndef SBULB_MAX_ASSOCIATIONS
#define SBULB_MAX_ASSOCIATIONS 1048576
#endif

/*
 * Data-path events sent to the log through a ring buffer:
 *   0  none: the event code is not compiled at all (the default),
 *   1  association changes and drops (log level DEBUG),
 *   2  also every packet that reuses an association (log level TRACE).
 */
#ifndef SBULB_EVENTS
#define SBULB_EVENTS 0
#endif

/* Entries of the round-robin ring: the smooth weighted round-robin cycles
 * of every service (each the sum of its weights divided by their gcd),
 * side by side; sbulb/config.py RING_SIZE. sbulb_ring holds two such
 * halves: a reload writes the other half, then points the services at it. */
#define SBULB_RING_SIZE 65536

/* Entries of the services' Maglev tables (scheduler = maglev), side by
 * side; sbulb/config.py MAGLEV_ENTRIES. sbulb_maglev holds two such
 * halves, like sbulb_ring. */
#define SBULB_MAGLEV_ENTRIES (4 * 65537)

/* Size of the LRU map that makes later fragments follow their first. */
#ifndef SBULB_MAX_FRAGMENTED
#define SBULB_MAX_FRAGMENTED 16384
#endif

/* A first fragment's verdict is followed this long (the kernel's
 * ipfrag_time): IP ids repeat, and a later fragment must not follow the
 * verdict of another, older datagram. */
#ifndef SBULB_FRAG_TIMEOUT_NS
#define SBULB_FRAG_TIMEOUT_NS (30ULL * 1000 * 1000 * 1000)
#endif

/* IPv6 extension headers walked before giving up (hop-by-hop, routing with
 * no segment left, destination options, fragment). */
#define SBULB_MAX_IPV6_EXT 4

/*
 * How rewritten packets leave: 1 (--forward fib) asks the kernel's FIB for
 * the next hop, 0 (--forward mac-swap) swaps the MAC addresses (sbulb).
 */
#ifndef SBULB_FORWARD_FIB
#define SBULB_FORWARD_FIB 1
#endif

/* Interfaces sbulb can be attached to at once (redirect targets). */
#ifndef SBULB_MAX_INTERFACES
#define SBULB_MAX_INTERFACES 64
#endif

/* Next hops the FIB had no neighbour for, kept for the daemon to resolve. */
#define SBULB_MAX_NEIGH_MISSES 256

/* Address families for bpf_fib_lookup (linux/socket.h). */
#define SBULB_AF_INET 2
#define SBULB_AF_INET6 10

/* Pages of the event ring buffer (a power of two). */
#ifndef SBULB_EVENT_PAGES
#define SBULB_EVENT_PAGES 64
#endif

/* IPv4 frag_off bits (host order; compare with bpf_htons()). uapi
 * linux/ip.h does not define them. */
#define IP_MF 0x2000     /* more fragments follow */
#define IP_OFFSET 0x1FFF /* fragment offset, in 8-byte units */

/* IPv6 fragment header frag_off bits (host order). */
#define IP6_MF 0x0001      /* more fragments follow */
#define IP6_OFFSET 0xFFF8  /* fragment offset, in 8-byte units, shifted by 3 */

/* Lowest TTL / hop limit we forward: at 1 the kernel must answer. */
#define SBULB_MIN_TTL 2

/*
 * Counter slots of the sbulb_stats per-CPU array. Every packet lands in
 * exactly one of the TX / PASS / DROP slots; the ASSOC slots count
 * association changes on top of that.
 */
enum sbulb_stat {
	SBULB_STAT_TX_INGRESS = 0,          /* client -> real server, NATed */
	SBULB_STAT_TX_EGRESS = 1,           /* real server -> client, NATed */
	SBULB_STAT_PASS_NOT_IP = 2,         /* not IPv4/IPv6 (ARP, VLAN, ...) */
	SBULB_STAT_PASS_NOT_UDP = 3,        /* IP, but not UDP */
	SBULB_STAT_PASS_NOT_BALANCED = 4,   /* UDP, not VIP:port nor real server:port */
	SBULB_STAT_PASS_FRAGMENT = 5,       /* unused since fragments are balanced */
	SBULB_STAT_PASS_TTL = 6,            /* balanced, TTL/hop limit <= 1 */
	SBULB_STAT_PASS_MALFORMED = 7,      /* truncated or inconsistent headers */
	SBULB_STAT_PASS_IPV6_EXT = 8,       /* IPv6 extension header not walked */
	SBULB_STAT_DROP_NO_REAL_SERVER = 9, /* for the VIP, no real server set */
	SBULB_STAT_DROP_NOT_ASSOCIATED = 10,/* real server not associated with client */
	SBULB_STAT_DROP_ASSOC_FAILED = 11, /* association could not be stored */
	SBULB_STAT_ASSOC_CLIENT = 12,       /* association created by a client */
	SBULB_STAT_ASSOC_SERVER = 13,       /* association created by a real server */
	SBULB_STAT_ASSOC_REPICK = 14,       /* association moved: its server was removed */
	SBULB_STAT_DROP_FRAG_UNKNOWN = 15,  /* later fragment before its first (ours) */
	SBULB_STAT_TX_ICMP_INGRESS = 16,    /* ICMP error about an answer -> real server */
	SBULB_STAT_TX_ICMP_EGRESS = 17,     /* ICMP error about a datagram -> client */
	/* how TX packets left (on top of their verdict slot): */
	SBULB_STAT_FWD_FIB_TX = 18,         /* FIB: out of the same interface */
	SBULB_STAT_FWD_FIB_REDIRECT = 19,   /* FIB: out of another sbulb interface */
	SBULB_STAT_FWD_FIB_PASS = 20,       /* FIB: out of another interface: kernel */
	SBULB_STAT_FWD_NO_NEIGH_SWAP = 21,  /* no neighbour yet, same interface: MAC swap */
	SBULB_STAT_FWD_NO_NEIGH_PASS = 22,  /* no neighbour yet, other interface: kernel */
	SBULB_STAT_FWD_MAC_SWAP = 23,       /* mac-swap mode, or the host does not forward */
	SBULB_STAT_FWD_FIB_DROP = 24,       /* FIB: no route (blackhole, unreachable...) */
	SBULB_STAT_FWD_FIB_LOCAL = 25,      /* FIB: for this host, or beyond XDP: kernel */
	SBULB_STAT_FWD_FRAG_NEEDED = 26,    /* FIB: bigger than the egress MTU: kernel */
	/* the XDP action every packet finally got (on top of its verdict slot:
	 * a TX verdict the FIB then drops is counted here as a drop) */
	SBULB_STAT_ACTION_ABORTED = 27,     /* XDP_ABORTED (never returned on purpose) */
	SBULB_STAT_ACTION_DROP = 28,        /* XDP_DROP */
	SBULB_STAT_ACTION_PASS = 29,        /* XDP_PASS */
	SBULB_STAT_ACTION_TX = 30,          /* XDP_TX */
	SBULB_STAT_ACTION_REDIRECT = 31,    /* XDP_REDIRECT */
	SBULB_STAT_DROP_ICMP_MISDIRECTED = 32, /* ICMP error from a real server to
					      * another host than the quoted client */
	SBULB_STAT_ASSOC_RATE_LIMITED = 33, /* a new client over the rate: balanced
					     * by hash, not remembered */
	SBULB_STAT_DROP_FRAG_RATE = 34,     /* first fragment of a new client over
					     * the rate */
	SBULB_STAT_TX_MIRROR = 35,          /* client -> mirror service: copied to its targets */
	SBULB_STAT_DROP_MIRROR_REPLY = 36,  /* mirror: a target that is not the primary
					     * answering a client */
	SBULB_STAT_DROP_MIRROR_NO_META = 37, /* mirror: the driver gave no room for
					      * XDP metadata, no copy made */
	SBULB_STAT_MIRROR_SENT = 38,        /* mirror: copies sent (on top of TX_MIRROR) */
	SBULB_STAT_MIRROR_FAILED = 39, /* mirror: copies that could not be made */
	SBULB_STAT_TX_TEMPLATE = 40,   /* client -> telemetry service: a NetFlow v9 / IPFIX
					* datagram with a template, copied to every target */
	SBULB_STAT_TEMPLATE_COPIED = 41, /* telemetry: copies of templates sent */
	SBULB_STAT_TEMPLATE_NOT_KEPT = 42, /* telemetry: a template the daemon could not be
					    * given (too long, its ring buffer full) */
	SBULB_STAT_MAX = 43,
};

/* Directions of sbulb_rs_stats (index = slot * 2 + direction) and of
 * sbulb_svc_stats (index = service * 2 + direction). */
enum sbulb_direction {
	SBULB_DIR_TO_SERVER = 0,   /* client -> real server (and errors to it) */
	SBULB_DIR_FROM_SERVER = 1, /* real server -> client (and errors about it) */
};

/* Types of struct sbulb_event. */
enum sbulb_event_type {
	SBULB_EV_ASSOC_CLIENT = 1,      /* new association, client-initiated */
	SBULB_EV_ASSOC_SERVER = 2,      /* new association, server-initiated */
	SBULB_EV_ASSOC_REPICK = 3,      /* association moved from a removed server */
	SBULB_EV_DROP_NOT_ASSOCIATED = 4, /* server spoke for another's client */
	SBULB_EV_DROP_NO_REAL_SERVER = 5, /* no real server to pick */
	SBULB_EV_REUSED_INGRESS = 6,    /* client packet, existing association */
	SBULB_EV_REUSED_EGRESS = 7,     /* server packet, existing association */
};

#endif /* SBULB_CONSTS_H */
