"""Failed logins, API-key checks and user tokens, counted by the cluster.

LoginLimits (tidings/core/logins.py) counts them per client address and per
node, in the node's memory.  With N nodes that alone lets an address fail N
times as often, and a restarted node starts afresh.  So with a broker that
other nodes share (Redis, PostgreSQL), each failure is also taken from the
address's bucket in the broker (``Broker.take``, the numbers of the
address's own bucket), **after** it failed: a right key, login or token
never waits for the broker, and costs what it did.  When the cluster's
bucket has no token, the node holds the address back in memory until it
has (``LoginLimits.charged``), as its own bucket would.  An address over its
budget on other nodes, or before this node restarted, gets one more failure
here before this node learns.  The node's own buckets stay: the first line,
and all there is with the in-process broker or while the broker cannot be
reached (logged once per outage).  The per-node bucket stays the node's: it
bounds the work of that node.
"""

from __future__ import annotations

import logging

from tidings.broker.base import Broker, BrokerUnavailable
from tidings.core.logins import Attempt, LoginLimits

__all__ = ["ClusterLimits"]

log = logging.getLogger("tidings.service.failures")


class ClusterLimits(LoginLimits):
    """A LoginLimits whose per-address count is also the cluster's;
    ``name`` keeps its buckets apart from the other limits' (``login``,
    ``key``, ``token``)."""

    def __init__(self, name: str, per_address: int, per_node: int, broker: Broker):
        super().__init__(per_address, per_node)
        self.name = name
        self.broker = broker if broker.shared else None
        self._broker_down = False

    async def failed(self, attempt: Attempt) -> float:
        """Count the admitted attempt's failure in the cluster: the seconds
        its address is now held back on this node, 0.0 when it is not."""
        if self.broker is None or not self.per_address or attempt.wait:
            return 0.0
        cost = self.cost(attempt)
        try:
            wait = await self.broker.take(f"fail:{self.name}:{attempt.address}",
                                          self.per_address / 60, self.per_address, cost)
        except BrokerUnavailable as exc:
            if not self._broker_down:
                self._broker_down = True
                log.warning("failed %s checks are counted by this node alone while the broker "
                            "is down: %s", self.name, exc)
            return 0.0
        self._broker_down = False
        return self.charged(attempt, cost, wait)
