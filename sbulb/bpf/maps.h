/* SPDX-License-Identifier: GPL-2.0 */
/*
 * maps.h - every map of the data path, one comment each.
 *
 * Runtime data (services: VIPs, ports, real servers) lives here and changes
 * without recompiling; sizes come from consts.h. Service id 0 and member
 * slot 0 are never used: arrays start zeroed, so 0 means "none".
 *
 * bcc rewrites map operations (map.lookup(), &map) only in the main source
 * file: in a header they compile to a null map pointer (bcc 0.26, 2026-11).
 * So the maps are declared here, the accessors below are only declared here,
 * and balancer.c defines them; the other headers use the accessors.
 */
#ifndef SBULB_MAPS_H
#define SBULB_MAPS_H

#include "consts.h"
#include "structs.h"

/*
 * Sizes are twice what a configuration may hold where a reload adds the
 * new entries before it removes the old ones (sbulb/state.py orders the
 * writes), so that a packet never finds a service half written.
 */

/* VIP:port -> service id: ingress. */
BPF_HASH(sbulb_vip_ports, struct sbulb_endpoint, __u32, 2 * SBULB_MAX_PORTS);

/* Real server:port -> (service id, member slot): egress. */
BPF_HASH(sbulb_endpoints, struct sbulb_endpoint, struct sbulb_member_ref,
	 2 * SBULB_MAX_ENDPOINTS);

/* Service id (1..2 * max: a plan that renames services takes new ids while
 * the old ones still serve; sbulb/state.py) -> VIP and round-robin cycle. */
BPF_ARRAY(sbulb_svc, struct sbulb_service, 2 * SBULB_MAX_SERVICES + 1);

/* Member slot (1..2*max) -> real server and service. */
BPF_ARRAY(sbulb_rs, struct sbulb_member, 2 * SBULB_MAX_MEMBERS + 1);

/* Every VIP and every real server address -> 1: "could this datagram be
 * ours?" for fragments, which carry no port after the first. */
BPF_HASH(sbulb_vips, struct sbulb_addr, __u32, 2 * SBULB_MAX_SERVICES);
BPF_HASH(sbulb_rs_index, struct sbulb_addr, __u32, 2 * SBULB_MAX_REAL_SERVERS);

/* The (local address, port) of each health-check probe socket: a real
 * server's answer to a probe is for the balancer's own stack, not a client
 * (sbulb/health.py). */
BPF_HASH(sbulb_probes, struct sbulb_endpoint, __u32, SBULB_MAX_PROBES);

/* Round-robin cycles, ring index -> member slot: two halves of
 * SBULB_RING_SIZE, each holding every service's cycle (sbulb_service
 * ring_base, ring_len). A server of weight 3 appears three times in its
 * service's cycle; a drained one (weight 0) not at all, though it stays a
 * member. */
BPF_ARRAY(sbulb_ring, __u32, 2 * SBULB_RING_SIZE);

/* The Maglev tables (sbulb/maglev.py): a member slot per entry, each
 * service's table from its descriptor's maglev_base; two halves, as the
 * ring. */
BPF_ARRAY(sbulb_maglev, __u32, 2 * SBULB_MAGLEV_ENTRIES);

/* Service id -> its round-robin cursor and lock. */
BPF_ARRAY(sbulb_rr, struct sbulb_rr, 2 * SBULB_MAX_SERVICES + 1);

/* The new-association rate limit's state, per CPU (consts.h). */
BPF_PERCPU_ARRAY(sbulb_new_rate, struct sbulb_rate, 1);

/*
 * (Service, client ip:port) -> real server; lives until evicted by a newer
 * one. Pinned
 * (SBULB_ASSOC_PIN, a bpffs path given by the daemon) so that a restart or
 * an upgrade keeps every client on its server. bcc reuses an existing pin
 * without checking its layout: dataplane.py checks it before compiling.
 * The pin's name carries a version: rename it when this layout changes.
 */
#ifdef SBULB_ASSOC_PIN
BPF_TABLE_PINNED("lru_hash", struct sbulb_assoc_key, struct sbulb_assoc,
		 sbulb_assoc, SBULB_MAX_ASSOCIATIONS, SBULB_ASSOC_PIN);
#else
BPF_TABLE("lru_hash", struct sbulb_assoc_key, struct sbulb_assoc, sbulb_assoc,
	  SBULB_MAX_ASSOCIATIONS);
#endif

/* Fragmented datagram -> its first fragment's verdict, so that later
 * fragments (no UDP header) follow it. Short-lived: LRU. */
BPF_TABLE("lru_hash", struct sbulb_frag_key, struct sbulb_frag, sbulb_frags,
	  SBULB_MAX_FRAGMENTED);

/* Redirect targets: slot -> ifindex of an interface sbulb is attached to,
 * with sbulb_mirror_tx as its egress program (mirror.h says why). */
BPF_XDP_REDIRECT_MAP("devmap", struct bpf_devmap_val, sbulb_devmap,
		     SBULB_MAX_INTERFACES);

/*
 * Mirror services: slot n (struct sbulb_service mirror) broadcasts through
 * sbulb_mirror_<n>, whose entries 0..k-1 are the interface each of its k
 * targets is reached through, every one with sbulb_mirror_tx as egress
 * program (mirror.h). A broadcast copies the frame to every entry of a
 * map, so each mirror service has a map of its own.
 */
#define SBULB_MIRROR_MAP(n)                                                   \
	BPF_XDP_REDIRECT_MAP("devmap", struct bpf_devmap_val, sbulb_mirror_##n, \
			     SBULB_MIRROR_TARGETS)
SBULB_MIRROR_MAP(0);
SBULB_MIRROR_MAP(1);
SBULB_MIRROR_MAP(2);
SBULB_MIRROR_MAP(3);
SBULB_MIRROR_MAP(4);
SBULB_MIRROR_MAP(5);
SBULB_MIRROR_MAP(6);
SBULB_MIRROR_MAP(7);
SBULB_MIRROR_MAP(8);
SBULB_MIRROR_MAP(9);
SBULB_MIRROR_MAP(10);
SBULB_MIRROR_MAP(11);
SBULB_MIRROR_MAP(12);
SBULB_MIRROR_MAP(13);
SBULB_MIRROR_MAP(14);
SBULB_MIRROR_MAP(15);

/* Mirrored frames per CPU: the sequence number of the next one. */
BPF_PERCPU_ARRAY(sbulb_mirror_seq, __u32, 1);

/* Per CPU, per interface slot (sbulb_ifslot): the copy the egress program
 * saw last. */
BPF_PERCPU_ARRAY(sbulb_mirror_state, struct sbulb_mirror_state,
		 SBULB_MAX_INTERFACES);

/* Per CPU, per member slot: mirror copies for that target that could not
 * be made (no route through the interface, no neighbour). */
BPF_PERCPU_ARRAY(sbulb_rs_copy_fail, __u64, 2 * SBULB_MAX_MEMBERS + 1);

/* ifindex -> its slot in sbulb_devmap. */
BPF_HASH(sbulb_ifslot, __u32, __u32, SBULB_MAX_INTERFACES);

/* Next hops without a neighbour entry -> packets that met it; the daemon
 * asks the kernel to resolve them and deletes the entry. */
BPF_TABLE("lru_hash", struct sbulb_neigh, __u64, sbulb_neigh_miss,
	  SBULB_MAX_NEIGH_MISSES);

/* Per-CPU traffic per member slot and direction (slot * 2 + dir). */
BPF_PERCPU_ARRAY(sbulb_rs_stats, struct sbulb_traffic,
		 2 * (2 * SBULB_MAX_MEMBERS + 1));

/* Per-CPU, per member slot: ICMP destination-unreachable errors from (or
 * about a datagram sent to) that real server, translated to a client: a
 * client's datagram was refused (health checks' passive_fall). */
BPF_PERCPU_ARRAY(sbulb_rs_unreach, __u64, 2 * SBULB_MAX_MEMBERS + 1);

/* Per-CPU traffic per service and direction (service * 2 + dir). */
BPF_PERCPU_ARRAY(sbulb_svc_stats, struct sbulb_traffic,
		 2 * (2 * SBULB_MAX_SERVICES + 1));

/* Per-CPU packet counters by enum sbulb_stat. */
BPF_PERCPU_ARRAY(sbulb_stats, __u64, SBULB_STAT_MAX);

/* Scratch space to checksum a cut template copy (telemetry.h). */
BPF_PERCPU_ARRAY(sbulb_csum_chunk, struct sbulb_chunk, 1);

/* Telemetry templates for the daemon (telemetry.h), one struct
 * sbulb_template each. */
BPF_RINGBUF_OUTPUT(sbulb_templates, SBULB_TEMPLATE_PAGES);

#if SBULB_EVENTS
/* Data-path events for the log; only compiled when the log asks for them. */
BPF_RINGBUF_OUTPUT(sbulb_events, SBULB_EVENT_PAGES);
#endif

/* Accessors, defined in balancer.c (see above). */
/* the service id of a VIP:port, 0 if none */
static __always_inline __u32 vip_port_service(const struct sbulb_addr *vip, __be16 port);
/* the member a real server:port is, NULL if none */
static __always_inline struct sbulb_member_ref *endpoint_get(const struct sbulb_addr *addr,
							      __be16 port);
static __always_inline struct sbulb_service *svc_get(__u32 id);
static __always_inline int is_vip(const struct sbulb_addr *addr);
static __always_inline int is_real_server(const struct sbulb_addr *addr);
static __always_inline int is_probe(const struct sbulb_addr *addr, __be16 port);
static __always_inline void count_unreach(__u32 slot);
static __always_inline __u32 *ring_get(__u32 idx);
static __always_inline __u32 *maglev_get(__u32 idx);
static __always_inline struct sbulb_member *rs_get(__u32 slot);
static __always_inline struct sbulb_rr *rr_get(__u32 id);
static __always_inline struct sbulb_rate *rate_get(void);
static __always_inline struct sbulb_assoc *assoc_lookup(struct sbulb_assoc_key *key);
/* insert only if absent (BPF_NOEXIST); 0 on success */
static __always_inline int assoc_insert(struct sbulb_assoc_key *key, struct sbulb_assoc *val);
/* insert or replace (BPF_ANY); 0 on success */
static __always_inline int assoc_update(struct sbulb_assoc_key *key, struct sbulb_assoc *val);
static __always_inline struct sbulb_frag *frag_lookup(struct sbulb_frag_key *key);
static __always_inline void frag_store(struct sbulb_frag_key *key, struct sbulb_frag *val);
/* is this ifindex one of the interfaces sbulb is attached to? */
static __always_inline int is_redirect_target(__u32 ifindex);
/* XDP_REDIRECT to one of our interfaces (XDP_PASS if it is not one) */
static __always_inline int redirect_to(__u32 ifindex);
static __always_inline void neigh_miss(struct sbulb_neigh *key);
/* the next mirrored frame's sequence number on this CPU */
static __always_inline __u32 mirror_seq_next(void);
/* this CPU's copy state for an interface, NULL if sbulb is not attached there */
static __always_inline struct sbulb_mirror_state *mirror_state_get(__u32 ifindex);
/* XDP_REDIRECT to every entry of mirror slot n (XDP_DROP if no such slot) */
static __always_inline int mirror_broadcast(__u32 n);
static __always_inline void count_copy_fail(__u32 slot);
/* hand a telemetry template's frame to the daemon (ring buffer sbulb_templates) */
static __always_inline void template_keep(struct xdp_md *ctx, __u32 service);
static __always_inline struct sbulb_chunk *csum_chunk(void);
/* count a packet of `bytes` to/from a member slot (0: none) and its
 * service (enum sbulb_direction) */
static __always_inline void count_traffic(__u32 service, __u32 slot, __u32 dir,
					  __u64 bytes);
/* add one to a counter slot (enum sbulb_stat) */
static __always_inline void count(__u32 stat);

#if SBULB_EVENTS
static __always_inline void emit_event(__u32 type, __u32 service,
				       const struct sbulb_addr *client,
				       __be16 client_port, __be16 port,
				       const struct sbulb_addr *server,
				       const struct sbulb_addr *other);

/* SBULB_EVENT(level, type, service, client, client_port, port, server,
 * other):
 * emit an event if SBULB_EVENTS >= level; nothing is compiled otherwise. */
#define SBULB_EVENT(level, ...)                                               \
	do {                                                                  \
		if (SBULB_EVENTS >= (level))                                  \
			emit_event(__VA_ARGS__);                              \
	} while (0)
#else
#define SBULB_EVENT(level, ...)                                               \
	do {                                                                  \
	} while (0)
#endif

#endif /* SBULB_MAPS_H */
