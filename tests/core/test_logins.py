"""Failed logins per client address and per node, on a fake clock (no I/O)."""

from __future__ import annotations

import pytest

from tidings.core.logins import GOOD_FOR, OWED_FOR, LoginLimits, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail(limits: LoginLimits, host: str, n: int) -> list[float]:
    """``n`` attempts from ``host`` that all fail: the wait of each."""
    return [limits.admit(host).wait for _ in range(n)]


def test_an_address_fails_its_burst_then_waits_for_a_token():
    clock = Clock()
    limits = LoginLimits(per_address=10, per_node=0, clock=clock)
    assert _fail(limits, "192.0.2.1", 10) == [0.0] * 10
    refused = limits.admit("192.0.2.1")
    assert refused.limit == "address" and refused.wait == pytest.approx(6.0)  # 10 a minute
    clock.now += 6.0
    assert limits.admit("192.0.2.1").wait == 0.0  # one token back
    assert limits.admit("192.0.2.1").wait == pytest.approx(6.0)
    clock.now += 60
    assert _fail(limits, "192.0.2.1", 10) == [0.0] * 10  # a minute on: the whole burst


def test_other_addresses_are_not_held_back_by_one():
    limits = LoginLimits(per_address=3, per_node=0, clock=Clock())
    _fail(limits, "192.0.2.1", 3)
    assert limits.admit("192.0.2.1").wait > 0
    assert limits.admit("192.0.2.2").wait == 0.0
    assert limits.admit("2001:db8::1").wait == 0.0


def test_a_successful_login_gives_its_tokens_back():
    limits = LoginLimits(per_address=3, per_node=5, clock=Clock())
    for _ in range(20):  # logging in again and again fails nothing
        limits.succeeded(limits.admit("192.0.2.1"))
    assert _fail(limits, "192.0.2.1", 3) == [0.0] * 3
    assert limits.admit("192.0.2.1").wait > 0


def test_an_attempt_that_did_not_fail_for_its_key_takes_nothing():
    limits = LoginLimits(per_address=2, per_node=2, clock=Clock())
    for _ in range(5):
        limits.refund(limits.admit("192.0.2.1"))  # e.g. the store was away
    assert _fail(limits, "192.0.2.1", 2) == [0.0, 0.0]


def test_attempts_in_flight_at_once_count():
    """Tokens are taken before the key is verified: ten attempts verifying
    at the same time cannot all pass a limit of three."""
    limits = LoginLimits(per_address=3, per_node=0, clock=Clock())
    attempts = [limits.admit("192.0.2.1") for _ in range(10)]
    assert [a.wait == 0.0 for a in attempts].count(True) == 3


def test_the_node_bounds_failures_from_many_addresses():
    clock = Clock()
    limits = LoginLimits(per_address=10, per_node=30, clock=clock)
    waits = [limits.admit(f"198.51.100.{i}").wait for i in range(40)]
    assert waits[:30] == [0.0] * 30
    refused = limits.admit("203.0.113.9")  # a fresh address, refused by the node
    assert refused.limit == "node" and refused.wait == pytest.approx(2.0)  # 30 a minute
    # ... which took nothing from that address's own bucket
    clock.now += 60
    assert _fail(limits, "203.0.113.9", 10) == [0.0] * 10


def test_an_address_that_logged_in_is_spared_the_nodes_bucket():
    clock = Clock()
    limits = LoginLimits(per_address=5, per_node=10, clock=clock)
    limits.succeeded(limits.admit("192.0.2.7"))  # an operator, earlier
    for i in range(20):  # strangers empty the node's bucket
        limits.admit(f"198.51.100.{i}")
    assert limits.admit("203.0.113.9").limit == "node"
    assert limits.admit("192.0.2.7").wait == 0.0  # the operator still gets in
    # ...within its own limit only
    assert _fail(limits, "192.0.2.7", 4) == [0.0] * 4
    assert limits.admit("192.0.2.7").limit == "address"
    # for a session's life
    clock.now += GOOD_FOR + 1
    for i in range(20):
        limits.admit(f"198.51.100.{i}")
    assert limits.admit("192.0.2.7").limit == "node"


def test_zero_turns_a_bucket_off():
    limits = LoginLimits(per_address=0, per_node=0, clock=Clock())
    assert _fail(limits, "192.0.2.1", 1000) == [0.0] * 1000
    node_only = LoginLimits(per_address=0, per_node=5, clock=Clock())
    assert _fail(node_only, "192.0.2.1", 5) == [0.0] * 5
    assert node_only.admit("192.0.2.2").limit == "node"


@pytest.mark.parametrize("per_address, per_node", [(-1, 10), (10, -5)])
def test_negative_limits_are_refused(per_address, per_node):
    with pytest.raises(ValueError, match="0 or more"):
        LoginLimits(per_address, per_node)


@pytest.mark.parametrize("host, key", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
    ("::ffff:192.0.2.1", "192.0.2.1"),
    ("fe80::1%eth0", "fe80::/64"),
    (None, ""),
    ("", ""),
    ("not-an-address", "not-an-address"),
])
def test_address_keys(host, key):
    assert address_key(host) == key


def test_memory_is_bounded():
    limits = LoginLimits(per_address=5, per_node=0, clock=Clock(), max_addresses=100)
    for i in range(10_000):
        limits.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limits._addresses) <= 100


def test_the_clusters_empty_bucket_holds_an_address_back_and_what_it_missed_is_owed():
    clock = Clock()
    limits = LoginLimits(per_address=3, per_node=0, clock=clock)  # a token every 20 s
    attempt = limits.admit("192.0.2.1")
    assert limits.cost(attempt) == 1
    assert limits.charged(attempt, 1, 0.0) == 0.0  # taken: nothing held, nothing owed
    assert limits.admit("192.0.2.1").wait == 0.0
    # the cluster's bucket had no token for 5 s: held back until it has two,
    # the one owed and the next failure's
    assert limits.charged(attempt, 1, 5.0) == pytest.approx(25.0)
    refused = limits.admit("192.0.2.1")
    assert refused.limit == "address" and refused.wait == pytest.approx(25.0)
    assert limits.admit("192.0.2.2").wait == 0.0
    clock.now += 25.0
    attempt = limits.admit("192.0.2.1")
    assert attempt.wait == 0.0 and limits.cost(attempt) == 2
    # what is owed never makes a take larger than the bucket
    assert limits.charged(attempt, 2, 10.0) == pytest.approx(30.0)
    assert limits.cost(attempt) == 3
    assert limits.charged(attempt, 3, 10.0) == pytest.approx(10.0)
    assert limits.cost(attempt) == 3
    limits.charged(attempt, 3, 0.0)  # paid
    assert limits.cost(attempt) == 1


def test_a_hold_ends_and_what_is_owed_is_forgotten_a_minute_later():
    clock = Clock()
    limits = LoginLimits(per_address=3, per_node=0, clock=clock)
    attempt = limits.admit("192.0.2.1")
    hold = limits.charged(attempt, 1, 5.0)
    clock.now += hold
    assert limits.admit("192.0.2.1").wait == 0.0
    assert limits.cost(attempt) == 2
    clock.now += OWED_FOR
    assert limits.cost(attempt) == 1
