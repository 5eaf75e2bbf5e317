"""Maglev tables (sbulb/maglev.py): balance, disruption, weights, and the
same table on every balancer with the same config. The figures README
states come from here (run with -s to see them)."""

from __future__ import annotations

import collections
import ipaddress

import pytest

from sbulb import maglev

SIZE = 65537


def servers(n: int, weight: int = 1) -> tuple[tuple[ipaddress.IPv4Address, int], ...]:
    return tuple((ipaddress.IPv4Address(f"10.0.2.{i}"), weight) for i in range(1, n + 1))


def test_balance_at_ten_servers() -> None:
    """Each of 10 servers holds its tenth of the table: max/mean < 1.05."""
    shares = collections.Counter(maglev.table(servers(10), SIZE, 0))
    worst = max(shares.values()) / (SIZE / 10)
    print(f"maglev balance, 10 servers, {SIZE} entries: max/mean {worst:.5f}")
    assert len(shares) == 10 and worst < 1.05


@pytest.mark.parametrize("n", [3, 5, 10, 16, 32])
def test_removing_one_server_moves_its_clients_and_almost_no_other(n: int) -> None:
    before = maglev.table(servers(n), SIZE, 0)
    for gone in (0, n // 2, n - 1):
        pool = servers(n)
        after = maglev.table(pool[:gone] + pool[gone + 1:], SIZE, 0)
        kept = {i: i if i < gone else i - 1 for i in range(n) if i != gone}
        moved = maglev.disruption(before, after, kept)
        print(f"maglev, {n} servers, one removed: {100 * moved:.2f}% of the others' clients move")
        assert moved <= 0.01
        # its own entries went to the others, spread (none left empty)
        assert all(s >= 0 for s in after)


def test_weights_and_weight_zero() -> None:
    pool = ((servers(3)[0][0], 2), (servers(3)[1][0], 1), (servers(3)[2][0], 1),
            (ipaddress.IPv4Address("10.0.2.9"), 0))
    shares = collections.Counter(maglev.table(pool, SIZE, 0))
    assert 3 not in shares  # weight 0: no entry
    assert abs(shares[0] / SIZE - 0.5) < 0.001 and abs(shares[1] / SIZE - 0.25) < 0.001
    assert maglev.table(((pool[3][0], 0),), SIZE, 0) == ()


def test_the_same_config_builds_the_same_table_and_the_seed_changes_it() -> None:
    first = maglev.table(servers(5), 251, 9)
    maglev.table.cache_clear()  # another balancer: computed anew
    assert maglev.table(servers(5), 251, 9) == first
    assert maglev.table(servers(5), 251, 10) != first
    # the order servers are listed in does not change which server an entry names
    reordered = maglev.table(tuple(reversed(servers(5))), 251, 9)
    assert [servers(5)[i][0] for i in first] == [tuple(reversed(servers(5)))[i][0]
                                                 for i in reordered]


def test_is_prime() -> None:
    assert [n for n in range(30) if maglev.is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert maglev.is_prime(65537) and not maglev.is_prime(65535)
