"""Failed logins: how many a client address, and a node, may make (pure;
an injected clock).

The dashboard's login form (tidings/dashboard/routes.py) verifies the API
key pasted into it: a keyed hash and a read of the key's row from the store,
which every node of a cluster shares.  Every other route that takes a key
does the same with a key that is not in the cache, and a second instance,
with a backend's numbers, bounds those (tidings/service/keys.py).  An API
key has 192 random bits, so guessing one is hopeless; what a limit bounds is
the work a stranger can make a node and its store do, one wrong key after the
other.  Two token buckets (tidings/core/ratelimit.py), in this node's memory:

* **per client address**: ``per_address`` failures a minute, in bursts of
  as many.  An IPv6 address counts by its /64, which one host usually holds
  whole (counted one by one, its addresses would not be limited at all); an
  IPv4-mapped IPv6 address counts as the IPv4 address.
* **per node**: ``per_node`` failures a minute from every address together,
  in bursts of as many: what bounds the keys a node verifies when many
  addresses fail at once (a botnet), whatever their number.

An address that logged in successfully on this node within ``GOOD_FOR``
(12 hours, a session's life) is spared the node's bucket, and only its own
applies: an operator who has used the dashboard before still gets in while
strangers fail in numbers and empty the node's bucket.  At most
``GOOD_ADDRESSES`` are remembered, and an address gets there only with a key
that works.

An attempt takes its tokens before its key is verified (``admit``), so
attempts in flight at the same moment count too.  One that succeeds, or that
failed for a reason other than its key (the store away), gives them back
(``succeeded``, ``refund``): only failures are limited, and a successful
login never uses up anyone's budget.  0 turns a bucket off.

**The cluster's count** (tidings/service/failures.py).  With a broker that
other nodes share, a failure is also taken from the address's bucket in the
broker, after it failed, and that bucket's answer comes back here
(``cost``, ``charged``): when it had no token, this node holds the address
back until it has, as its own bucket would.  A failure the cluster's bucket
had no token for is owed, and charged with the address's next failure on
this node (the hold lasts until the bucket can pay for both): every failure
a node let through is counted, however many nodes an address spreads them
over.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidings.core.lru import LRU
from tidings.core.ratelimit import TokenBuckets, check

__all__ = ["ADDRESS_BUCKETS", "GOOD_ADDRESSES", "GOOD_FOR", "OWED_FOR", "Attempt",
           "LoginLimits", "address_key"]

# Addresses whose buckets are still refilling that a node keeps (a missing
# bucket is a full one, so only those count; tidings/core/ratelimit.py
# keeps the heaviest half when the table is full): about 3 MB.
ADDRESS_BUCKETS = 10_000
# Addresses that logged in and are spared the node's bucket, and for how
# long (a session's life, tidings/dashboard/session.py).
GOOD_ADDRESSES = 1_000
GOOD_FOR = 12 * 3600.0
# Seconds a node remembers what an address owes the cluster's bucket after
# its hold ends: the time a bucket takes to fill up (a minute's failures).
OWED_FOR = 60.0


def address_key(host: str | None) -> str:
    """The bucket of a client address: an IPv4 address itself, an IPv6
    address by its /64, anything else (no address, a Unix socket's path)
    as it is."""
    if not host:
        return ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"{ipaddress.IPv6Address(int(ip) >> 64 << 64)}/64"
    return str(ip)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What ``admit`` answered.  ``wait`` is 0.0 when the attempt may go
    on (its tokens are taken), else the seconds until it may, and ``limit``
    says whose bucket refused it: ``"address"`` or ``"node"``."""

    address: str  # the address's bucket
    node: bool = False  # a token was taken from the node's bucket too
    wait: float = 0.0
    limit: str = ""


class LoginLimits:
    def __init__(self, per_address: int, per_node: int, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = ADDRESS_BUCKETS):
        for name, n in (("per_address", per_address), ("per_node", per_node)):
            if n < 0:
                raise ValueError(f"{name} is a number of failed logins a minute, 0 or more")
            if n:
                check(n / 60, n, 1)
        self.per_address = per_address
        self.per_node = per_node
        self.clock = clock  # read through the lambdas below: a test may swap it
        self._addresses = TokenBuckets(lambda: self.clock(), max_keys=max_addresses)
        self._node = TokenBuckets(lambda: self.clock(), max_keys=1)
        self._good: LRU[str, bool] = LRU(GOOD_ADDRESSES, ttl=GOOD_FOR,
                                         clock=lambda: self.clock())
        # address -> (held back until, failures owed) for the cluster (charged)
        self._held: LRU[str, tuple[float, int]] = LRU(max_addresses,
                                                      clock=lambda: self.clock())

    def admit(self, host: str | None) -> Attempt:
        """May a login from ``host`` be verified now?  Takes its tokens if so."""
        address = address_key(host)
        if self.per_address:
            held = self._held.get(address) if self._held else None
            if held is not None and (left := held[0] - self.clock()) > 0:
                return Attempt(address, wait=left, limit="address")
            wait = self._addresses.take_checked(address, self.per_address / 60,
                                                self.per_address)
            if wait:
                return Attempt(address, wait=wait, limit="address")
        node = bool(self.per_node) and address not in self._good
        if node:
            wait = self._node.take_checked("", self.per_node / 60, self.per_node)
            if wait:
                if self.per_address:
                    self._addresses.give(address, self.per_address / 60, self.per_address)
                return Attempt(address, wait=wait, limit="node")
        return Attempt(address, node)

    def refund(self, attempt: Attempt) -> None:
        """The attempt did not fail for its key: its tokens go back."""
        if attempt.wait:
            return  # refused: it took nothing
        if self.per_address:
            self._addresses.give(attempt.address, self.per_address / 60, self.per_address)
        if attempt.node:
            self._node.give("", self.per_node / 60, self.per_node)

    def succeeded(self, attempt: Attempt) -> None:
        """The key worked: its tokens go back, and its address is spared the
        node's bucket for ``GOOD_FOR``."""
        self.refund(attempt)
        if not attempt.wait:
            self._good.put(attempt.address, True)

    def cost(self, attempt: Attempt) -> int:
        """The tokens the attempt's failure is to take from its address's
        bucket in the cluster: its own, and those of the failures from there
        this node let through that the bucket had none for."""
        held = self._held.get(attempt.address)
        return min(self.per_address, 1 + (held[1] if held is not None else 0))

    def charged(self, attempt: Attempt, cost: int, wait: float) -> float:
        """The cluster's bucket answered ``wait`` to a take of ``cost``
        tokens: 0.0, taken, and nothing is owed.  Else they are owed, and
        the address is held back on this node until the bucket can pay for
        them and one more failure; the seconds it is held back."""
        if not wait:
            self._held.pop(attempt.address)
            return 0.0
        owed = min(cost, self.per_address - 1)  # a take is at most the burst
        hold = wait + (owed + 1 - cost) / (self.per_address / 60)
        self._held.put(attempt.address, (self.clock() + hold, owed), ttl=hold + OWED_FOR)
        return hold
