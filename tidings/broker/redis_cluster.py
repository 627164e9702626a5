"""The Redis broker on a Redis Cluster of several shards.

``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for
TLS) names some nodes of the cluster as seeds; the rest is found from them.
Everything else is the Redis broker (redis.py): the same channel names and
keys, hash-tagged so that each user, topic and app lands on one slot.

* Commands and the Lua scripts go through redis-py's cluster client, which
  sends each to the shard of its key and follows ``MOVED`` and ``ASK``.
* Publishing and subscribing each hold one connection per shard (a
  ``Link``), and ``SPUBLISH``/``SSUBSCRIBE`` of a channel go to the master
  that owns its slot, read from ``CLUSTER SLOTS`` when the link is made.
  Sharded pub/sub keeps a message on its shard; classic ``PUBLISH`` would be
  forwarded over the cluster bus to every node (docs/delivery.md has the
  measurement).
* When the slot map changes under a link (a master dies, fails over or
  hands slots on), a connection breaks, Redis unsubscribes the moved
  channels itself, or a publish answers ``MOVED``: the link is dropped and
  made again from a fresh slot map, and the pub/sub side then calls the
  ``on_reconnect`` callbacks, as after any outage.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisError

from tidings.broker.redis import Link, RedisBroker

SCHEMES = ("redis+cluster", "rediss+cluster")


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``
    -> the seed addresses, and the connection options redis-py reads from a
    ``redis://`` URL of the same form."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"a Redis Cluster URL starts with {' or '.join(SCHEMES)}://")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    seeds = []
    for address in hosts.split(","):
        try:
            seed = urlsplit("//" + address)
            host, port = seed.hostname, seed.port or 6379
        except ValueError as e:
            raise ValueError(f"bad Redis Cluster address {address!r}: {e}") from None
        if not host:
            raise ValueError(f"bad Redis Cluster address {address!r} in {url!r}")
        seeds.append((host, port))
    one = urlunsplit((parts.scheme.removesuffix("+cluster"), userinfo + at + hosts.split(",")[0],
                      parts.path, parts.query, ""))
    options: dict[str, Any] = dict(parse_url(one))
    if int(options.pop("db", 0)) != 0:
        raise ValueError("Redis Cluster has only database 0")
    for name in ("host", "port"):
        options.pop(name, None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return seeds, options


class RedisClusterBroker(RedisBroker):
    """``RedisClusterBroker("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")``;
    ``?prefix=`` as for ``RedisBroker``."""

    name = "Redis Cluster broker"

    def __init__(self, url: str, *, prefix: str = "tidings", **limits: Any):
        super().__init__(url, prefix=prefix, **limits)
        self.seeds, self._options = parse_cluster_url(self.url)
        self._masters: list[tuple[str, int]] = []  # as of the last slot map read

    def _client(self) -> RedisCluster:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            # a command whose master just died is retried after a fresh slot
            # map; _call bounds the whole within `timeout`
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
            client_name=f"{self.client_name}:cmd", **self._options,
        )

    async def _probe(self) -> None:
        """Fail fast on wrong seeds or a Redis without sharded pub/sub."""
        assert self._redis is not None
        await self._redis.execute_command("SPUBLISH", self.channel_name("probe"), b"")

    def _where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.seeds)

    def _connection_settings(self) -> tuple[type[AbstractConnection], dict[str, Any]]:
        assert self._redis is not None
        kwargs = dict(self._redis.get_connection_kwargs())
        cls = kwargs.pop("connection_class")
        for name in ("max_connections", "response_callbacks"):  # the nodes' pools'
            kwargs.pop(name, None)
        return cls, kwargs

    async def _link(self, role: str, **overrides) -> Link:
        """One connection per master, from a fresh slot map."""
        masters, owners = await self._slot_map()
        made = await asyncio.gather(
            *(self._connect(role, host=host, port=port, **overrides) for host, port in masters),
            return_exceptions=True)
        conns = [c for c in made if not isinstance(c, BaseException)]
        for failed in made:
            if isinstance(failed, BaseException):
                for conn in conns:
                    await conn.disconnect(nowait=True)
                raise failed
        return Link(conns, lambda channel: owners[key_slot(channel)])

    async def _slot_map(self) -> tuple[list[tuple[str, int]], list[int]]:
        """The masters, and each slot's master (an index into them), from the
        first node that answers with every slot served: the masters last
        known, then the seeds."""
        problem: Exception = ConnectionError("no Redis Cluster node to ask")
        for address in dict.fromkeys(self._masters + self.seeds):
            try:
                conn = await self._connect("slots", host=address[0], port=address[1])
            except (RedisError, OSError) as e:
                problem = e
                continue
            try:
                await conn.send_command("CLUSTER", "SLOTS")
                ranges = await conn.read_response()
            except (RedisError, OSError) as e:
                problem = e
                continue
            finally:
                await conn.disconnect()
            masters: dict[tuple[str, int], int] = {}
            owners = [-1] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, master, *_ in ranges:
                # an empty host means "the node you asked"
                where = (master[0].decode() or address[0], int(master[1]))
                index = masters.setdefault(where, len(masters))
                owners[start:end + 1] = [index] * (end + 1 - start)
            if -1 in owners:
                problem = ConnectionError(
                    f"{address[0]}:{address[1]} serves slot {owners.index(-1)} from no master")
                continue
            self._masters = list(masters)
            return self._masters, owners
        raise problem
