"""Maglev lookup tables (Eisenbud et al., "Maglev: A Fast and Reliable
Software Network Load Balancer", NSDI 2016, section 3.4), and the client
hash the data path indexes them with.

Every balancer with the same servers, weights, table size and seed builds
the same table, and hashes a client the same way (no per-boot key), so
any of them sends a new client to the same server: what lets several
sbulb behind ECMP agree without talking. Removing one of N servers moves
only the entries it held, and almost none of the others (README gives
the measured figures).

Weights: each server fills its preferred empty entries in turn, as many
turns per round as its weight in proportion to the largest one, so its
share of the table is its share of the weights.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from typing import Sequence

from sbulb.config import IPAddress


def _offset_skip(address: IPAddress, size: int, seed: int) -> tuple[int, int]:
    """Where a server's permutation of the table starts, and its step."""
    digest = hashlib.blake2b(address.packed, digest_size=16, key=struct.pack("!Q", seed),
                             person=b"sbulb-maglev").digest()
    h1, h2 = struct.unpack("!QQ", digest)
    return h1 % size, h2 % (size - 1) + 1


@functools.lru_cache(maxsize=64)
def table(servers: tuple[tuple[IPAddress, int], ...], size: int, seed: int) -> tuple[int, ...]:
    """The lookup table: for each of `size` entries (a prime), the index in
    `servers` ((address, weight), weight 0: no entry) of the server it
    names. () if no server has a weight. The order of `servers` does not
    change which server an entry names."""
    # in address order, whatever order the file lists them in: balancers
    # whose files list the same servers differently build the same table
    live = sorted(((i, address, weight) for i, (address, weight) in enumerate(servers)
                   if weight > 0), key=lambda item: (item[1].version, item[1].packed))
    if not live:
        return ()
    top = max(weight for _, _, weight in live)
    perms = [_offset_skip(address, size, seed) for _, address, _ in live]
    nexts = [0] * len(live)
    credit = [0] * len(live)
    entry = [-1] * size
    filled = 0
    while True:
        for k, (index, _, weight) in enumerate(live):
            # turns this round: weight / top of one, carried over
            credit[k] += weight
            while credit[k] >= top:
                credit[k] -= top
                offset, skip = perms[k]
                slot = (offset + nexts[k] * skip) % size
                while entry[slot] >= 0:
                    nexts[k] += 1
                    slot = (offset + nexts[k] * skip) % size
                entry[slot] = index
                nexts[k] += 1
                filled += 1
                if filled == size:
                    return tuple(entry)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    f = 2
    while f * f <= n:
        if n % f == 0:
            return False
        f += 1
    return True


def client_hash(client: IPAddress, port: int) -> int:
    """The data path's hash of a client ip:port (sbulb/bpf/lb.h
    client_hash): the same words, as the little-endian machine loads them
    from network-order bytes."""
    packed = client.packed if client.version == 6 else (
        b"\0" * 10 + b"\xff\xff" + client.packed)  # IPv4-mapped, as the maps store it
    h = 0x9E3779B9
    for word in struct.unpack("<4I", packed):
        h = ((h ^ word) * 0x85EBCA6B) & 0xFFFFFFFF
    sport = struct.unpack("<H", struct.pack("!H", port))[0]
    h = ((h ^ sport) * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def disruption(before: Sequence[int], after: Sequence[int], kept: dict[int, int]) -> float:
    """The share of entries held by servers that stay which name another
    server afterwards. `kept` maps a server's index in `before` to its
    index in `after`."""
    held = [i for i, s in enumerate(before) if s in kept]
    moved = sum(1 for i in held if after[i] != kept[before[i]])
    return moved / len(held) if held else 0.0
