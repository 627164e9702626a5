"""A real Redis Cluster on loopback: three masters (``redis-server
--cluster-enabled yes``) on free ports in a temporary directory, joined
with ``redis-cli --cluster create``, for the cluster broker's tests
(tests/broker/) and for tidings nodes on a Redis Cluster (tests/cluster/).

A master can be killed and started again on the same port: it reads its
``nodes.conf`` back and rejoins with the same slots (no replicas, so no
failover: its shard is down meanwhile).
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
    def __init__(self, directory: Path, masters: int = 3):
        for binary in ("redis-server", "redis-cli"):
            if shutil.which(binary) is None:
                missing(f"{binary} is not installed (a Redis Cluster needs it)")
        self.servers: list[PrivateRedis] = []
        for i in range(masters):
            d = directory / f"shard{i}"
            d.mkdir()
            # The bus port defaults to port + 10000, which may be taken: pick one.
            # A short node timeout lets the cluster notice a dead master quickly.
            self.servers.append(PrivateRedis(
                d, "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", "1000"))

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    @property
    def url(self) -> str:
        """The broker URL naming every master as a seed."""
        return "redis+cluster://" + ",".join(self.addresses)

    def start(self) -> LocalRedisCluster:
        for s in self.servers:
            s.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *self.addresses, "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()
        return self

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running master says the cluster is up and agrees that
        every slot is served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ok(s) for s in self.servers if s.proc is not None):
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

    def owner(self, key: bytes) -> int:
        """The index of the master that serves ``key``'s slot."""
        return self.master_of(self.servers[0].command("CLUSTER", "KEYSLOT", key))

    def master_of(self, slot: int) -> int:
        """The index of the master that serves ``slot``."""
        for start, end, master, *_ in self.servers[0].command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return [s.port for s in self.servers].index(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def move_slot(self, key: bytes, dst: int) -> None:
        """Hand the slot of ``key``, and the keys in it, to master ``dst`` (as
        ``redis-cli --cluster reshard`` does, for one slot)."""
        src = self.owner(key)
        if src == dst:
            return
        slot = self.servers[0].command("CLUSTER", "KEYSLOT", key)
        ids = [s.command("CLUSTER", "MYID").decode() for s in self.servers]
        source, target = self.servers[src], self.servers[dst]
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for server in [target, source, *(s for s in self.servers if s not in (source, target))]:
            server.command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
        self.wait_ok()
