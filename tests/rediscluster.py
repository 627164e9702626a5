"""A real Redis Cluster on loopback: three masters (``redis-server
--cluster-enabled yes``) on free ports in a temporary directory, joined
with ``redis-cli --cluster create``, for the cluster broker's tests
(tests/broker/) and for tidings nodes on a Redis Cluster (tests/cluster/).

A master can be killed and started again on the same port: it reads its
``nodes.conf`` back and rejoins with the same slots (no replicas, so no
failover: its shard is down meanwhile).  ``replicas=True`` gives each master
a replica of its own, which the cluster promotes when its master dies (about
two seconds on, with the short node timeout here).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from tests.broker.test_redis import PrivateRedis, free_port
from tests.services import missing

SLOTS = 16384


class LocalRedisCluster:
    def __init__(self, directory: Path, masters: int = 3, replicas: bool = False):
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                missing(f"{binary} is not installed (a Redis Cluster needs it)")
        # servers[i] is shard i's first master; replicas[i], if any, its replica
        self.servers = [self._server(directory / f"shard{i}") for i in range(masters)]
        self.replicas = [self._server(directory / f"replica{i}")
                         for i in range(masters if replicas else 0)]

    @staticmethod
    def _server(d: Path) -> PrivateRedis:
        d.mkdir()
        # The bus port defaults to port + 10000, which may be taken: pick one.
        # A short node timeout lets the cluster notice a dead master quickly;
        # a replica's first sync starts at once (not after 5 s of waiting for others).
        return PrivateRedis(
            d, "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
            "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", "1000", "--repl-diskless-sync-delay", "0")

    @property
    def nodes(self) -> list[PrivateRedis]:
        return self.servers + self.replicas

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    @property
    def url(self) -> str:
        """The broker URL naming every master as a seed."""
        return "redis+cluster://" + ",".join(self.addresses)

    def start(self) -> LocalRedisCluster:
        """Every node started and the cluster made, or every node stopped
        again (a fixture's teardown never runs when its setup fails)."""
        try:
            for s in self.nodes:
                s.start()
            subprocess.run(
                ["redis-cli", "--cluster", "create", *self.addresses, "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )
            for master, replica in zip(self.servers, self.replicas, strict=False):
                self._replicate(master, replica)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _replicate(master: PrivateRedis, replica: PrivateRedis, timeout: float = 30.0) -> None:
        """``replica`` joins the cluster as the replica of ``master``, and
        has its data."""
        bus = master.extra[master.extra.index("--cluster-port") + 1]
        replica.command("CLUSTER", "MEET", "127.0.0.1", master.port, bus)
        master_id = master.command("CLUSTER", "MYID").decode()
        deadline = time.monotonic() + timeout
        while True:
            try:  # refused until the replica has heard of the master by gossip
                replica.command("CLUSTER", "REPLICATE", master_id)
                break
            except redis.ResponseError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while replica.command("INFO", "replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {replica.port} did not sync")
            time.sleep(0.05)

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running master says the cluster is up and agrees that
        every slot is served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(s) for s in self.nodes if s.proc is not None):
                return
            time.sleep(0.05)
        raise AssertionError("the Redis Cluster did not come up")

    @staticmethod
    def _ok(server: PrivateRedis) -> bool:
        try:
            info = server.command("CLUSTER", "INFO").decode()
        except redis.RedisError:
            return False
        return ("cluster_state:ok" in info
                and f"cluster_slots_ok:{SLOTS}" in info)

    def _ask(self, *args):
        """A command on the first node that runs."""
        return next(s for s in self.nodes if s.proc is not None).command(*args)

    def owner(self, key: bytes) -> int:
        """The index of the shard that serves ``key``'s slot."""
        return self.master_of(self._ask("CLUSTER", "KEYSLOT", key))

    def master_of(self, slot: int) -> int:
        """The index of the shard that serves ``slot``: of its first master in
        ``servers``, whether that or its replica serves it now."""
        for start, end, master, *_ in self._ask("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                for servers in (self.servers, self.replicas):
                    ports = [s.port for s in servers]
                    if master[1] in ports:
                        return ports.index(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def wait_promoted(self, shard: int, timeout: float = 30.0) -> None:
        """Until the replica of ``shard`` is its master (its master died) and
        every running node agrees that every slot is served again."""
        replica = self.replicas[shard]
        deadline = time.monotonic() + timeout
        while replica.command("INFO", "replication")["role"] != "master":
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica of shard {shard} was not promoted")
            time.sleep(0.05)
        self.wait_ok(max(deadline - time.monotonic(), 1.0))

    def move_slot(self, key: bytes, dst: int) -> None:
        """Hand the slot of ``key``, and the keys in it, to master ``dst`` (as
        ``redis-cli --cluster reshard`` does, for one slot)."""
        src = self.owner(key)
        if src == dst:
            return
        slot = self._ask("CLUSTER", "KEYSLOT", key)
        ids = [s.command("CLUSTER", "MYID").decode() for s in self.servers]
        source, target = self.servers[src], self.servers[dst]
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for server in [target, source, *(s for s in self.servers if s not in (source, target))]:
            server.command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        self.wait_ok()
