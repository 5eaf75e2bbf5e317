/* sbulb's benchmark tools: a load generator for BPF_PROG_TEST_RUN's live
 * frames mode, a counter for the receiving end of the link, and the two
 * ceilings (a bare XDP_TX reflector, a drop).
 *
 * The generator runs on one CPU (the calling thread's), inside the test run
 * loop. The kernel copies the frame into each page of its page pool once and
 * recycles pages without copying again, so a frame holds whatever was
 * written to it last, by us or by the receiver (a NAT rewrites headers in
 * place): the headers are written from the template in gen_config on every
 * run, then the client's address and port, with both checksums updated
 * incrementally from the template's.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>

/* Ethernet + IPv4 (no options) + UDP headers; a literal: bcc describes map
 * value types to Python and cannot evaluate sizeof there */
#define HEADER_LEN 42

struct gen_config {
    u64 interval_ps;    /* time between two frames; 0: as fast as possible */
    u64 limit;          /* frames to send; the runs after that send nothing */
    u32 clients;        /* distinct clients (source address:port) in turn */
    u32 base_saddr;     /* first client address, host order */
    u32 base_port;      /* first client port */
    u8 header[42];      /* the template's Ethernet, IPv4 and UDP headers */
};

struct gen_state {
    u64 last_ps;        /* when the clock was last read (ktime, ps) */
    u64 credit_ps;      /* time earned and not yet spent on frames */
    u64 seq;            /* frames sent: the next client's index */
    u64 first_ns;       /* when frame 0 left */
    u64 stamp_ns;       /* when frame stamp_seq left: the rate is */
    u64 stamp_seq;      /* stamp_seq / (stamp_ns - first_ns) */
};

BPF_ARRAY(gen_config, struct gen_config, 1);
BPF_ARRAY(gen_state, struct gen_state, 1);
/* counter: UDP datagrams to the benchmark's port, by destination address */
BPF_HASH(counted, u32, u64, 256);
/* counter's verdict for what it counts: XDP_DROP, or XDP_PASS to let real
 * sockets check a sample */
BPF_ARRAY(count_action, u32, 1);
BPF_PERCPU_ARRAY(ceiling, u64, 1);

#define CLIENT_PORTS_LOG2 14   /* 16384 ports per client address */
#define BURST 16               /* at most this many frames back to back */
#define STAMP_EVERY 1024       /* frames between two clock reads (a power of 2) */

/* One's complement sum helpers (RFC 1624): fold a 32-bit sum to 16 bits,
 * and replace a 16-bit word covered by checksum `check` */
static __always_inline u16 fold(u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (u16)sum;
}

static __always_inline u16 csum_replace16(u16 check, u16 old, u16 new)
{
    /* HC' = ~(~HC + ~m + m') */
    return ~fold((u32)(u16)~check + (u16)~old + new);
}

static __always_inline int parse(struct xdp_md *ctx, struct ethhdr **eth,
                                 struct iphdr **iph, struct udphdr **udp)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    *eth = data;
    if ((void *)(*eth + 1) > data_end || (*eth)->h_proto != bpf_htons(ETH_P_IP))
        return -1;
    *iph = (void *)(*eth + 1);
    if ((void *)(*iph + 1) > data_end || (*iph)->ihl != 5 || (*iph)->protocol != IPPROTO_UDP)
        return -1;
    *udp = (void *)(*iph + 1);
    if ((void *)(*udp + 1) > data_end)
        return -1;
    return 0;
}

int generate(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    u32 zero = 0;
    struct gen_config *cfg = gen_config.lookup(&zero);
    struct gen_state *st = gen_state.lookup(&zero);
    if (!cfg || !st || data + HEADER_LEN > data_end)
        return XDP_ABORTED;
    if (st->seq >= cfg->limit)
        return XDP_DROP;

    if (cfg->interval_ps) {
        /* pacing with a credit of time: reading the clock is slow on a VM
         * that traps the TSC (hundreds of ns), so it is read only when the
         * credit runs out, at most once per frame; a run that finds no
         * credit sends nothing and the test run loop comes back */
        if (st->credit_ps < cfg->interval_ps) {
            u64 now = bpf_ktime_get_ns() * 1000;
            if (st->last_ps == 0)
                st->last_ps = now;
            st->credit_ps += now - st->last_ps;
            st->last_ps = now;
            if (st->credit_ps > BURST * cfg->interval_ps)
                st->credit_ps = BURST * cfg->interval_ps;  /* never catch up in a rush */
            if (st->credit_ps < cfg->interval_ps)
                return XDP_DROP;
        }
        st->credit_ps -= cfg->interval_ps;
    }
    if ((st->seq & (STAMP_EVERY - 1)) == 0) {
        u64 now = bpf_ktime_get_ns();
        if (st->seq == 0)
            st->first_ns = now;
        st->stamp_ns = now;
        st->stamp_seq = st->seq;
    }

    /* the page may come back from the receiver with its headers rewritten
     * (a NAT changes addresses, MACs, checksums in place; pages are
     * recycled, not copied again): start from the template every time */
    __builtin_memcpy(data, cfg->header, HEADER_LEN);
    struct iphdr *iph = data + sizeof(struct ethhdr);
    struct udphdr *udp = (void *)(iph + 1);

    u32 clients = cfg->clients ? cfg->clients : 1;
    u32 index = st->seq % clients;
    st->seq++;
    u32 saddr = bpf_htonl(cfg->base_saddr + (index >> CLIENT_PORTS_LOG2));
    u16 sport = bpf_htons(cfg->base_port + (index & ((1 << CLIENT_PORTS_LOG2) - 1)));

    /* the address is in the IP header's checksum and, with the port, in the
     * UDP checksum's pseudo header; a zero UDP checksum means none (IPv4) */
    u16 *old_addr = (u16 *)&iph->saddr, *new_addr = (u16 *)&saddr;
    u16 ip_check = iph->check, udp_check = udp->check;
    for (int i = 0; i < 2; i++) {
        ip_check = csum_replace16(ip_check, old_addr[i], new_addr[i]);
        udp_check = csum_replace16(udp_check, old_addr[i], new_addr[i]);
    }
    udp_check = csum_replace16(udp_check, udp->source, sport);
    iph->check = ip_check;
    if (udp->check)
        udp->check = udp_check ? udp_check : 0xffff;
    iph->saddr = saddr;
    udp->source = sport;
    return XDP_TX;
}

int count(struct xdp_md *ctx)
{
    struct ethhdr *eth;
    struct iphdr *iph;
    struct udphdr *udp;
    if (parse(ctx, &eth, &iph, &udp) < 0 || udp->dest != bpf_htons(BENCH_PORT))
        return XDP_PASS;
    u32 daddr = iph->daddr;
    u64 zero64 = 0, *packets = counted.lookup_or_try_init(&daddr, &zero64);
    if (!packets)
        return XDP_DROP;
    /* the counter runs on one CPU per link (the veth's NAPI) */
    (*packets)++;
    u32 zero = 0;
    u32 *action = count_action.lookup(&zero);
    return action && *action == XDP_PASS ? XDP_PASS : XDP_DROP;
}

int reflect(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return XDP_DROP;
    unsigned char mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, mac, ETH_ALEN);
    u32 zero = 0;
    u64 *n = ceiling.lookup(&zero);
    if (n)
        (*n)++;
    return XDP_TX;
}

int drop(struct xdp_md *ctx)
{
    u32 zero = 0;
    u64 *n = ceiling.lookup(&zero);
    if (n)
        (*n)++;
    return XDP_DROP;
}
