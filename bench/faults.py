"""``faults``: the fault report, docs/faults.md.

Each scenario starts its own world on this machine -- a private PostgreSQL
cluster and a private ``redis-server`` (bench/faultkit.py), ``tidings
serve`` nodes, HAProxy in front of them (scripts/cluster.py) -- opens
``--users`` x 2 devices (the Python SDK's Subscriber, which resumes from its
cursor and drops duplicates by id), and publishes ``--msgs`` numbered
notifications to a topic they all follow, one after the other.  Each number
is retried with the same Idempotency-Key until one attempt is answered 2xx.
After a third of them the fault begins; it lasts ``--outage`` seconds (a
kill or a restart lasts as long as it takes).

Checked afterwards, as bitsets by number: every device's application-level
stream (lost, seen twice, out of order) and every user's inbox as the API
reads it from the store (an acknowledged number missing there is a false
2xx; one stored twice is a duplicate).  Every answer is counted by status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import results
from bench.faultkit import (
    Forwarder,
    Partition,
    PrivatePostgres,
    PrivateRedis,
    SmallDisk,
    read_only,
    require_root,
)
from scripts.cluster import Cluster, Node, free_port_block
from tests.cluster.devices import Device, wait_all

TOPIC = "faults"


@dataclass
class World:
    """What one scenario runs against, and the handles its fault needs."""

    entry: str  # where devices connect and publishes go
    app: dict
    probe: str | None = None  # a node asked once, with no client timeout, when the fault starts
    # before the inboxes are read: kill -9 the single node and start it again,
    # so the check reads what survived a crash, not what one process holds
    crash: Callable[[], None] | None = None


@dataclass
class Fault:
    start: Callable[[], Awaitable[None]]
    end: Callable[[], Awaitable[None]] | None = None  # None: over once started (a kill)
    began: float = 0.0
    ended: float = 0.0


async def _blocking(fn, *args) -> None:
    """A subprocess-driving fault step, off the loop the devices run on."""
    await asyncio.to_thread(fn, *args)


# -- the publisher and the checks --------------------------------------------------------------

async def _publish(world: World, msgs: int, pause: float, at: int, fault: Fault,
                   outage: float, deadline: float, acked_at: dict[int, float]) -> dict:
    acked: dict[int, str] = {}
    answers: Counter[str] = Counter()
    healing: asyncio.Task | None = None
    probing: asyncio.Task | None = None

    async def heal() -> None:
        await asyncio.sleep(outage)
        if fault.end is not None:
            await fault.end()
        fault.ended = time.monotonic()

    def done(n: int) -> bool:
        # at least ``msgs``, and a tail of ``at`` acknowledged after the fault
        # ended, so that every run has a before, a during and an after
        after = sum(1 for t in acked_at.values() if fault.ended and t >= fault.ended)
        return n >= msgs and after >= at

    async with httpx.AsyncClient(timeout=5, headers={
            "Authorization": f"Bearer {world.app['api_key']}"}) as http:
        n = -1
        while not done(n := n + 1) and time.monotonic() < deadline:
            if n == at:
                fault.began = time.monotonic()
                await fault.start()
                if world.probe is not None:
                    probing = asyncio.create_task(
                        _probe(world.probe, world.app["api_key"], outage + 90))
                if fault.end is None:
                    fault.ended = time.monotonic()
                else:
                    healing = asyncio.create_task(heal())
            while time.monotonic() < deadline:
                try:
                    r = await http.post(world.entry + "/v1/notifications", headers={
                        "Idempotency-Key": f"n-{n}"}, json={
                        "to": {"topic": TOPIC}, "title": f"#{n}", "data": {"n": n}})
                    answers[str(r.status_code)] += 1
                    if 200 <= r.status_code < 300:
                        acked[n] = r.json()["id"]
                        acked_at[n] = time.monotonic()
                        break
                except httpx.TimeoutException:
                    answers["timeout"] += 1
                except httpx.HTTPError:
                    answers["no answer"] += 1
                await asyncio.sleep(0.05)
            if pause:
                await asyncio.sleep(pause)
    if healing is not None:
        await healing
    probe = await probing if probing is not None else None
    return {"acked": acked, "answers": answers, "probe": probe, "attempted": n}


async def _probe(url: str, key: str, limit: float) -> dict:
    """How long ``url`` takes to answer a publish and /readyz once the fault
    has begun, waiting up to ``limit`` s (the publisher gives up after 5)."""
    out = {}
    async with httpx.AsyncClient(base_url=url, timeout=limit, headers={
            "Authorization": f"Bearer {key}"}) as http:
        async def one(name: str, request) -> None:
            t0 = time.monotonic()
            try:
                status: int | str = (await request).status_code
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            out[name] = {"status": status, "s": round(time.monotonic() - t0, 2)}

        await asyncio.gather(
            one("publish", http.post("/v1/notifications", json={
                "to": {"users": ["probe"]}, "title": "probe"})),
            one("readyz", http.get("/readyz")))
    return out


async def _recovery(devices: list[Device], fault: Fault, acked_at: dict[int, float],
                    deadline: float) -> float | None:
    """Seconds from the end of the fault until a publish was acknowledged again
    and every device had every number up to that one: the service whole again."""
    while time.monotonic() < deadline:
        if fault.ended:
            after = [n for n, t in acked_at.items() if t >= fault.ended]
            if after:
                upto = min(after) + 1
                if all(len(d.seen) >= upto and all(d.seen[:upto]) for d in devices):
                    return time.monotonic() - fault.ended
        await asyncio.sleep(0.02)
    return None


async def _inbox(url: str, key: str, user: str) -> list[tuple[int, str]]:
    """(number, id) of every entry in the user's inbox, as the store holds it."""
    out: list[tuple[int, str]] = []
    before = None
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer {key}"}) as http:
        while True:
            params = {"limit": 100, "state": "all", **({"before": before} if before else {})}
            r = await http.get(f"/v1/users/{user}/notifications", params=params)
            r.raise_for_status()
            page = r.json()
            out += [(item["notification"]["data"]["n"], item["notification"]["id"])
                    for item in page["items"]]
            before = page["next_before"]
            if not before:
                return out


async def _measure(world: World, users: list[str], opts, fault: Fault) -> dict:
    devices = [Device(world.entry, world.app, u) for u in users for _ in range(2)]
    for d in devices:
        d.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 60)
        deadline = time.monotonic() + opts.timeout
        acked_at: dict[int, float] = {}
        recovery = asyncio.create_task(_recovery(devices, fault, acked_at, deadline))
        pub = await _publish(world, opts.msgs, opts.pause, opts.msgs // 3, fault, opts.outage,
                             deadline, acked_at)
        acked: dict[int, str] = pub["acked"]
        total = max(acked, default=-1) + 1
        await wait_all(devices, total, timeout=max(5.0, deadline - time.monotonic()))
        try:
            recovered = await asyncio.wait_for(recovery, 5)
        except TimeoutError:
            recovered = None
        # lost: acknowledged numbers a device never showed its application
        lost = sum(1 for d in devices for n in acked if n >= len(d.seen) or not d.seen[n])
        dup_devices = sum(d.duplicates for d in devices)
        out_of_order = sum(d.out_of_order for d in devices)
        reconnected = sum(1 for d in devices if d.sub.reconnects)
    finally:
        await asyncio.gather(*(d.stop() for d in devices))
    if world.crash is not None:
        await _blocking(world.crash)
    false_2xx: set[int] = set()
    dup_store = 0
    unacked_stored = 0
    for user in users:
        stored = await _inbox(world.entry, world.app["api_key"], user)
        numbers = Counter(n for n, _ in stored)
        ids = {i for _, i in stored}
        dup_store += sum(c - 1 for c in numbers.values())
        false_2xx |= {n for n, i in acked.items() if i not in ids}
        unacked_stored += sum(1 for n in numbers if n not in acked)
    first_ack = min((t for t in acked_at.values() if t >= fault.ended), default=None)
    return {
        "attempted": pub["attempted"], "acknowledged": len(acked),
        "acknowledged_during": sum(1 for t in acked_at.values()
                                   if fault.began <= t < fault.ended), "lost": lost,
        "duplicated": dup_devices + dup_store, "duplicated_on_devices": dup_devices,
        "duplicated_in_store": dup_store, "out_of_order": out_of_order,
        "false_2xx": len(false_2xx), "stored_unacknowledged": unacked_stored,
        "answers": dict(sorted(pub["answers"].items())),
        "fault_s": round(fault.ended - fault.began, 2),
        "publish_back_s": round(first_ack - fault.ended, 2) if first_ack else None,
        "recovered_s": None if recovered is None else round(recovered, 2),
        "devices": len(devices), "reconnected": reconnected,
        **({"probe": pub["probe"]} if pub["probe"] else {}),
    }


# -- the worlds --------------------------------------------------------------------------------

@dataclass
class Backends:
    pg: PrivatePostgres
    redis: PrivateRedis
    workdir: Path
    count: int = 0

    def database(self) -> str:
        self.count += 1
        return self.pg.create_db(f"faults{self.count}")

    def dir(self, name: str) -> Path:
        """A directory of this scenario run's own (logs, node data)."""
        self.count += 1
        path = self.workdir / f"{name}-{self.count}"
        path.mkdir()
        return path


def _users(opts) -> list[str]:
    return [f"u{i}" for i in range(opts.users)]


async def _subscribe(url: str, app: dict, users: list[str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={
            "Authorization": f"Bearer {app['api_key']}"}) as http:
        r = await http.post(f"/v1/topics/{TOPIC}/subscribers", json={"users": users})
        r.raise_for_status()


@contextlib.contextmanager
def _cluster(b: Backends, name: str, store: str | None = None, broker: str | None = None,
             prepare: Callable[[Cluster], None] | None = None):
    """Two nodes behind HAProxy over a fresh database of the private PostgreSQL."""
    prefix = f"?prefix=faults-{secrets.token_hex(4)}"
    cluster = Cluster(store or b.database(), (broker or b.redis.url()) + prefix, nodes=2,
                      base_port=free_port_block(3), workdir=b.dir(name))
    if prepare is not None:
        prepare(cluster)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def _on_cluster(cluster: Cluster, opts, fault: Fault, probe: str | None = None):
    app = cluster.create_app("faults")
    users = _users(opts)
    await _subscribe(cluster.url, app, users)
    world = World(cluster.url, app, probe)
    return await _measure(world, users, opts, fault)


def node_kill(b: Backends, opts) -> dict:
    with _cluster(b, "kill") as cluster:
        victim = cluster.members[0]

        async def kill() -> None:
            victim.signal(signal.SIGKILL)

        return asyncio.run(_on_cluster(cluster, opts, Fault(kill)))


def pg_restart(b: Backends, opts) -> dict:
    with _cluster(b, "pg-restart") as cluster:
        fault = Fault(lambda: _blocking(b.pg.restart, "immediate"))
        return asyncio.run(_on_cluster(cluster, opts, fault))


def pg_unreachable(b: Backends, opts) -> dict:
    port = free_port_block(1)
    fw = Forwarder(port, "127.0.0.1", b.pg.port)
    fw.start()
    try:
        db = b.database()
        via = db.replace(f":{b.pg.port}/", f":{port}/")
        with _cluster(b, "pg-unreachable", store=via) as cluster:
            fault = Fault(lambda: _blocking(fw.kill), lambda: _blocking(fw.start))
            return asyncio.run(_on_cluster(cluster, opts, fault))
    finally:
        fw.kill()


def redis_restart(b: Backends, opts) -> dict:
    with _cluster(b, "redis-restart") as cluster:
        async def restart() -> None:
            await _blocking(b.redis.kill)
            await _blocking(b.redis.start)

        return asyncio.run(_on_cluster(cluster, opts, Fault(restart)))


def redis_unreachable(b: Backends, opts) -> dict:
    port = free_port_block(1)
    fw = Forwarder(port, "127.0.0.1", b.redis.port)
    fw.start()
    try:
        with _cluster(b, "redis-unreachable", broker=b.redis.url(port=port)) as cluster:
            fault = Fault(lambda: _blocking(fw.kill), lambda: _blocking(fw.start))
            return asyncio.run(_on_cluster(cluster, opts, fault))
    finally:
        fw.kill()


def partition(b: Backends, opts) -> dict:
    """node1 runs in a namespace of its own; its path to PostgreSQL and Redis is
    a veth pair to a gateway namespace, cut for the outage.  Its HTTP port is
    joined to the host's loopback by a forwarder that the cut does not touch,
    so devices stay connected to it and HAProxy still reaches it."""
    tag = secrets.token_hex(3)
    net = Partition(tag)
    net.create()
    forwarders: list[Forwarder] = []
    try:
        for port in (b.pg.port, b.redis.port):
            fw = Forwarder(port, "127.0.0.1", port, listen_host=net.GW_ADDR,
                           listen_netns=net.gw)
            fw.start()
            forwarders.append(fw)

        def isolate(cluster: Cluster) -> None:
            node = cluster.members[0]
            node.args = ["ip", "netns", "exec", net.node,
                         *(a.replace("@127.0.0.1:", f"@{net.GW_ADDR}:")
                           .replace("redis://127.0.0.1:", f"redis://{net.GW_ADDR}:")
                           for a in node.args)]
            fw = Forwarder(node.port, "127.0.0.1", node.port, connect_netns=net.node)
            fw.start()
            forwarders.append(fw)

        with _cluster(b, "partition", prepare=isolate) as cluster:
            fault = Fault(lambda: _blocking(net.cut), lambda: _blocking(net.heal))
            # the publisher goes through the balancer; a probe asks the cut-off
            # node itself, as a client pinned to it would
            return asyncio.run(_on_cluster(cluster, opts, fault,
                                           probe=cluster.members[0].url))
    finally:
        for fw in forwarders:
            fw.kill()
        net.remove()


def partition_long(b: Backends, opts) -> dict:
    """The partition again, outlasting the broker's silent-connection check
    (a PING after 15 s of silence, given up 15 s later)."""
    return partition(b, argparse.Namespace(**{**vars(opts), "outage": opts.long_outage}))


@contextlib.contextmanager
def _single(b: Backends, name: str, data: Path):
    """One node on the embedded SQLite store in ``data`` (the file's directory)."""
    port = free_port_block(1)
    args = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--data", str(data),
            "--node", name]
    node = Node(name, port, args, data.parent / f"{name}.log")
    node.start()
    try:
        node.wait_ready()  # the server makes the store; the CLI then writes to it
        app = subprocess.run([sys.executable, "-m", "tidings", "app", "create", "faults",
                              "--json", "--data", str(data)], capture_output=True, text=True)
        if app.returncode != 0:
            raise RuntimeError(f"tidings app create: {app.stderr.strip()}")
        yield node, json.loads(app.stdout)
    finally:
        node.stop()


async def _on_single(node: Node, app: dict, opts, fault: Fault) -> dict:
    users = _users(opts)
    await _subscribe(node.url, app, users)
    def crash() -> None:
        node.signal(signal.SIGKILL)
        assert node.proc is not None
        node.proc.wait(10)
        node.start()
        node.wait_ready()

    return await _measure(World(node.url, app, crash=crash), users, opts, fault)


def disk_full(b: Backends, opts) -> dict:
    disk = SmallDisk(b.dir("disk-full") / "data", size_mb=32)
    disk.mount()
    try:
        with _single(b, "disk-full", disk.path) as (node, app):
            fault = Fault(lambda: _blocking(disk.fill), lambda: _blocking(disk.free))
            return asyncio.run(_on_single(node, app, opts, fault))
    finally:
        disk.unmount()


def data_read_only(b: Backends, opts) -> dict:
    """A running process keeps writing through files it opened read-write even
    after a read-only remount is refused (EBUSY), so the node is restarted onto
    the read-only directory -- as after a reboot onto a volume mounted
    read-only -- and restarted again once it is writable."""
    data = b.dir("read-only") / "data"
    data.mkdir()
    with _single(b, "read-only", data) as (node, app):
        held = contextlib.ExitStack()

        def restart_onto_read_only() -> None:
            node.stop()
            held.enter_context(read_only(data))
            node.start()  # may refuse to start: its log says why

        def restart_writable() -> None:
            node.stop()
            held.close()
            node.start()
            node.wait_ready()

        fault = Fault(lambda: _blocking(restart_onto_read_only),
                      lambda: _blocking(restart_writable))
        try:
            out = asyncio.run(_on_single(node, app, opts, fault))
        finally:
            node.stop()
            held.close()
        log = node.log.read_text(errors="replace")
        # `Error: ...` is the CLI's one line; the other pattern a traceback's last
        errors = re.findall(r"^(?:Error: .*|(?:\w+\.)*\w+(?:Error|Exception): .*)$", log,
                            re.M)
        out["node_error"] = errors[-1] if errors else None
        out["node_traceback"] = "Traceback" in log
        out["node_log_tail"] = _log_tail(log, data)
        return out


# the start-up banner: throwaway keys, tokens and curl lines, not worth a record
_BANNER = ("secret:", "demo user token:", "curl ", "tidings listen ", "or in a browser",
           "Dashboard:", "Publish to the demo user:", "Watch it arrive:", "API key")


def _log_tail(log: str, data: Path) -> str:
    """The end of a node's log as results.jsonl keeps it: without the banner,
    and with the scratch directory written as ``<data>``."""
    lines = [line for line in log.splitlines() if not line.strip().startswith(_BANNER)]
    return "\n".join(lines)[-1500:].replace(str(data), "<data>")


SCENARIOS: dict[str, tuple[str, str, Callable[[Backends, object], dict]]] = {
    "kill": ("node `kill -9` mid-stream (2 nodes, HAProxy)",
             "Nothing acknowledged is lost; the killed node's devices reconnect to the other "
             "node and resume from their cursor (docs/design.md §2.1, §2.3).", node_kill),
    "pg-restart": ("PostgreSQL restart (`pg_ctl restart -m immediate`: crash, WAL recovery)",
                   "Publishes during the restart get `503` + `Retry-After`, never a false 2xx; "
                   "the pool reconnects by itself (docs/operations.md).", pg_restart),
    "pg-unreachable": ("PostgreSQL unreachable (forwarder killed: resets, then refused)",
                       "`503` + `Retry-After` while it lasts, `/readyz` red, no restart needed "
                       "after (docs/operations.md).", pg_unreachable),
    "redis-restart": ("Redis restart (`kill -9`, started again empty)",
                      "Publishes keep being acknowledged (the store is the source of truth); "
                      "streams catch up from the store (docs/delivery.md).", redis_restart),
    "redis-unreachable": ("Redis unreachable (forwarder killed: resets, then refused)",
                          "As for a restart: publishing goes on, devices catch up when it is "
                          "back (docs/delivery.md).", redis_unreachable),
    "partition": ("network partition: one node cut off from PostgreSQL and Redis (netns, "
                  "veth pair taken down)",
                  "The cut-off node answers `503` and leaves the balancer; the other node "
                  "serves; nothing acknowledged is lost or stored twice.", partition),
    "partition-long": ("the same partition, outlasting the broker's 30 s silence check",
                       "As above; the cut-off node's broker connection is given up and "
                       "resubscribed, its streams catch up.", partition_long),
    "disk-full": ("disk full (SQLite node; its data directory on a 32 MiB tmpfs, filled)",
                  "Writes answer `503` + `Retry-After`, never a false 2xx; writes resume when "
                  "space returns (docs/delivery.md).", disk_full),
    "read-only": ("data directory read-only (SQLite node restarted onto a read-only bind "
                  "mount)",
                  "No false 2xx: writes fail with `503`, or the node refuses to start; nothing "
                  "acknowledged before is lost.", data_read_only),
}


# -- the run and the report --------------------------------------------------------------------

def run_faults(a) -> list[dict]:
    require_root()
    names = list(SCENARIOS) if a.only is None else [s.strip() for s in a.only.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown fault {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    workdir = Path(tempfile.mkdtemp(prefix="tidings-faults-"))
    base = free_port_block(2)
    pg = PrivatePostgres(base)
    redis = PrivateRedis(base + 1, workdir)
    argv = " ".join(["python", "-m", "bench", "faults", *sys.argv[2:]])
    out_dir = a.out or results.today_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    try:
        pg.init()
        pg.start()
        redis.start()
        backends = Backends(pg, redis, workdir)
        for name, run in [(n, i) for n in names for i in range(1, a.runs + 1)]:
            fn = SCENARIOS[name][2]
            t0 = time.monotonic()
            try:
                rec = fn(backends, a)
            except Exception as exc:  # one broken scenario must not hide the others
                rec = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
            rec = {"scenario": "faults", "fault": name, "run": run, "command": argv,
                   "commit": results.git_commit(), "postgres": pg.version,
                   "seconds": round(time.monotonic() - t0, 1), **rec}
            results.append(out_dir / "results.jsonl", rec)
            records.append(rec)
            print(f"[faults {name} run {run}/{a.runs}] " + ", ".join(
                f"{k}={rec.get(k)}" for k in ("acknowledged", "lost", "duplicated",
                                              "out_of_order", "false_2xx", "answers",
                                              "recovered_s", "error")), flush=True)
            if not pg.running():
                pg.start()
    finally:
        redis.kill()
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    if a.doc is not None:
        a.doc.write_text(render(records, a, argv))
        print(f"report: {a.doc}")
    return records


def _answers(rec: dict) -> str:
    return ", ".join(f"{k}×{v}" for k, v in rec.get("answers", {}).items()) or "-"


def shortfalls(rec: dict) -> list[str]:
    """Where a run fell short of a promise, in words; [] when it kept them all."""
    out = [f"{rec[k]} {k.replace('_', ' ')}" for k in ("lost", "duplicated", "out_of_order",
                                                       "false_2xx") if rec.get(k)]
    if rec.get("recovered_s") is None:
        out.append("did not recover within the run's timeout")
    for status, count in rec.get("answers", {}).items():
        if status.isdigit() and int(status) >= 500 and status != "503":
            out.append(f"{count} answers {status} (a fault is a 503 with Retry-After)")
    for what, probe in sorted(rec.get("probe", {}).items()):
        if probe["status"] != 503 and probe["s"] > 5:
            out.append(f"the cut-off node held a {what} for {probe['s']} s and then answered "
                       f"`{probe['status']}`: no 503 while it could not reach the store")
        elif probe["s"] > 5:
            out.append(f"the cut-off node answered a {what} `503` only after {probe['s']} s "
                       "(the store gives up on a busy pool after 5 s)")
    if rec.get("node_traceback"):
        out.append(f"the node refused to start with a traceback, not one line "
                   f"(`{rec.get('node_error')}`)")
    return out


def _seconds(values: list[float | None]) -> str:
    """Median of the runs, and the worst when there are several."""
    done = [v for v in values if v is not None]
    if not done:
        return "not recovered" if values else "-"
    text = f"{statistics.median(done):.2f} s"
    if len(done) > 1:
        text += f" (max {max(done):.2f})"
    if len(done) < len(values):
        text += f", {len(values) - len(done)} not"
    return text


def render(records: list[dict], a, argv: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows: list[str] = []
    notes: list[str] = []
    short: list[str] = []
    for name in dict.fromkeys(r["fault"] for r in records):
        title, promise, _ = SCENARIOS[name]
        group = [r for r in records if r["fault"] == name]
        ran = [r for r in group if "error" not in r]
        failed = [r for r in group if "error" in r]
        if failed:
            short.append(f"- **{name}**: {len(failed)} of {len(group)} runs did not finish: "
                         f"{failed[0]['error'][-300:]}")
        if not ran:
            rows.append(f"| {title} | {promise} | did not run " + "| " * 8 + "|")
            continue

        def total(key: str, runs: list[dict] = ran) -> int:
            return sum(r[key] for r in runs)

        answers: Counter[str] = Counter()
        for r in ran:
            answers.update(r["answers"])
        rows.append(
            f"| {title} | {promise} | {total('acknowledged')}/{total('attempted')} "
            f"| {total('lost')} | {total('duplicated')} | {total('out_of_order')} "
            f"| {total('false_2xx')} | {_answers({'answers': dict(sorted(answers.items()))})} "
            f"| {_seconds([r['fault_s'] for r in ran])} "
            f"| {_seconds([r['publish_back_s'] for r in ran])} "
            f"| {_seconds([r['recovered_s'] for r in ran])} |")

        def each(key: str, runs: list[dict] = ran) -> str:
            return ", ".join(str(r[key]) for r in runs)

        note = (f"- **{name}**, by run: acknowledged while the fault lasted "
                f"{each('acknowledged_during')}; "
                f"devices reconnected {each('reconnected')} of {ran[0]['devices']}; "
                f"stored without a 2xx {each('stored_unacknowledged')}")
        for what in sorted(ran[0].get("probe", {})):
            note += (f"; a {what} sent to the cut-off node as the cut was made was answered "
                     + ", ".join(f"`{r['probe'][what]['status']}` after {r['probe'][what]['s']} s"
                                 for r in ran))
        errors = sorted({r["node_error"] for r in ran if r.get("node_error")})
        if errors:
            note += f"; the node's last error: `{'`, `'.join(errors)}`"
        notes.append(note + ".")
        for i, r in enumerate(group, 1):
            if "error" in r:
                continue
            short += [f"- **{name}** (run {i}): {text}." for text in shortfalls(r)]
    return TEMPLATE.format(
        argv=argv, when=when, commit=records[0]["commit"] if records else "?",
        postgres=records[0].get("postgres", "?") if records else "?", users=a.users,
        devices=2 * a.users, msgs=a.msgs, tail=a.msgs // 3, outage=a.outage,
        long_outage=a.long_outage, runs=a.runs,
        pause=a.pause, header=HEADER, rows="\n".join(rows), notes="\n".join(notes),
        short="\n".join(short) or "None: every fault kept every promise above.")


COLUMNS = ["fault", "promise", "acknowledged", "lost", "duplicated", "out of order", "false 2xx",
           "answers", "fault", "publishing back", "recovered"]
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"


TEMPLATE = """\
# Fault report

What tidings promises when a part of it fails, and what it did, measured on real
processes on one machine.  Produced by

    {argv}

on {when} at commit `{commit}` (PostgreSQL {postgres}, private to the run).
Rerun it to check a change; it needs root (it makes network namespaces, a
tmpfs and a bind mount) and removes everything it made.

## How it is measured

Every scenario starts its own world: a private PostgreSQL cluster (`initdb`,
`pg_ctl`) and a private `redis-server`, each on a port of its own, and either
two `tidings serve` nodes behind HAProxy (`scripts/cluster.py`) or, for the
disk faults, one node on the embedded SQLite store.  {users} users with two
devices each ({devices} devices: the Python SDK's `Subscriber`, which resumes
from its cursor and drops duplicates by id) follow one topic.  The publisher
sends numbered notifications to it, one after the other, {pause} s apart,
each carrying its number; it retries each number with the same
`Idempotency-Key` until one attempt is answered 2xx (5 s client timeout,
50 ms between attempts).  It sends at least {msgs}, and goes on until {tail}
more have been acknowledged after the fault ended.  At number {tail} the fault
begins; it lasts {outage} s ({long_outage} s for the long partition; a kill or
a restart lasts as long as it takes).  Each fault runs {runs} times, each time
in a fresh world; the table sums the counts over the runs and gives the median
(and the worst) of the times.

The checks are bitsets by number, in the style of the delivery checks of NATS'
chaos tests and Jepsen: each device records what its application saw (after
the SDK's dedup), and after the run every user's inbox is read back through the
API from the store.

- **acknowledged**: numbers answered 2xx, of those sent.
- **lost**: acknowledged numbers that a device never showed its application,
  counted per device (0 is the promise).
- **duplicated**: a number a device's application saw twice, plus a number
  stored twice in an inbox (an idempotent retry that made a second copy).
- **out of order**: a number shown after a higher one on the same device.
- **false 2xx**: acknowledged numbers whose notification (by the id the 2xx
  returned) is not in every follower's inbox afterwards.  The single SQLite
  node is killed (`kill -9`) and started again before its inboxes are read, so
  what is checked is what survived a crash.
- **stored without a 2xx** (per fault, below): numbers in the inbox that no
  attempt was answered 2xx for -- an attempt whose answer was lost but which
  committed would show here if its retries never succeeded.
- **answers**: every answer the publisher got, by status; `timeout` is no
  answer within 5 s, `no answer` a refused or reset connection.
- **fault**: how long the fault lasted; **publishing back**: from its end to the
  next 2xx; **recovered**: from its end until a publish was acknowledged again
  and every device had every number up to that one (the service whole again).

## The faults

- **node `kill -9`**: SIGKILL to node 1's process group mid-stream; it is not
  restarted.
- **PostgreSQL restart**: `pg_ctl restart -m immediate` -- the server stops
  without a checkpoint (a crash) and replays its WAL when it starts.
- **PostgreSQL / Redis unreachable**: the nodes reach the server through a TCP
  forwarder (`tests/cluster/tcpproxy.py`), killed for the outage (open
  connections reset, new ones refused), started again after.
- **Redis restart**: `kill -9` of `redis-server` (no persistence), started again
  at once, empty.
- **network partition**: node 1 runs in a network namespace of its own; a veth
  pair joins it to a second namespace, where forwarders lead on to the private
  PostgreSQL and Redis on loopback.  The cut takes the far end of the veth pair
  down: packets in flight are dropped without an answer, and new connections
  fail with "no route to host".  Node 1's HTTP port stays reachable (through a
  forwarder the cut does not touch), so its devices stay connected and HAProxy
  keeps checking it.  The publisher goes through HAProxy; as the cut is made, a
  probe sends one publish and one `/readyz` straight to node 1 (as a client
  pinned to it would) and waits for their answers without a client timeout.
  No address outside the two namespaces is used, and both are deleted after
  the run.
- **disk full**: the node's data directory (the SQLite file and its WAL) is a
  32 MiB tmpfs; the fault allocates every free block of it to a filler file
  (`posix_fallocate` until `ENOSPC`, so the kernel refuses every new block) and
  deletes the file to end it.  Pages a file already holds can still be
  rewritten, as on any full disk.
- **data directory read-only**: a running process keeps writing through the
  files it opened read-write, and Linux refuses to remount a file system
  read-only while such files are open (`EBUSY`); so the node is stopped and
  started again onto its data directory bind-mounted read-only (`EROFS` on
  every write, for root too: `chmod` does not bind root, which runs the
  report), and restarted once more when the mount is gone.

The test suite runs shorter versions of some of these on every change, with the
same devices and bitsets (`tests/cluster/`): a node killed (with Redis, on
PostgreSQL alone and on a three-master Redis Cluster) or drained; PostgreSQL
unreachable or silent; Redis restarted, and one master of a Redis Cluster
killed and started again; a node cut off from PostgreSQL.  This report does
not run a Redis Cluster yet.

## Results

{header}
{rows}

Per fault:

{notes}

## Where a promise was not kept

Computed from the same run: any loss, duplicate, reordering or false 2xx; an
answer of 500 or another non-503 5xx; a node that held a request for more than
5 s instead of answering; a node that failed to start with a traceback.

{short}

The raw records (one JSON line per scenario, with the node counts and the
reconnects) are appended to `bench/results/<date>/results.jsonl`.
"""
