"""/metrics watches the outbound queue: its depth, the oldest due job's age
and the dead letters per channel (from the store, cached), and the worker's
lanes (outcomes, sends in flight), end to end: webhooks published to a
receiver on loopback that hangs or fails.  The same on PostgreSQL with
TIDINGS_TEST_STORE=postgres."""

from __future__ import annotations

import asyncio
import contextlib

from tests.api.test_metrics import _samples
from tests.api.test_outbound_api import publish, until
from tests.channels.peers import WebhookReceiver, serve
from tests.conftest import run_server
from tidings.config import OutboundConfig, WebhookConfig
from tidings.service import outbound as service_outbound

# stats_ttl 0: every scrape reads the store (the cache has its own test)
FAST = OutboundConfig(poll_interval=0.05, retry_base=0.01, retry_cap=0.05, max_attempts=3,
                      stats_ttl=0.0)


@contextlib.asynccontextmanager
async def hooked(tmp_path, receiver: WebhookReceiver, outbound: OutboundConfig = FAST):
    async with serve(receiver) as url, run_server(
            tmp_path, webhook=WebhookConfig(allow_insecure=True, timeout=60),
            outbound=outbound) as server:
        server.service.settings.operator_app = server.app  # its admin key sees every app
        async with server.http() as http:
            r = await http.post("/v1/webhooks", json={"url": f"{url}/hooks/tidings"})
            assert r.status_code == 201, r.text
            receiver.secret = r.json()["secret"]
        yield server


async def scrape(server, key: str | None = None) -> dict[str, float]:
    async with server.http(key) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    return _samples(r.text)


WEBHOOK = '{channel="webhook"}'


def outcome(m: dict[str, float], name: str) -> float:
    return m[f'tidings_outbound_lane_outcomes_total{{channel="webhook",outcome="{name}"}}']


async def test_a_hanging_receiver_shows_as_depth_and_a_growing_age(tmp_path):
    hold = asyncio.Event()
    receiver = WebhookReceiver(secret="", hold=hold)
    # one send at a time: the first job hangs in flight, the other two wait
    outbound = OutboundConfig(poll_interval=0.05, concurrency=1, stats_ttl=0.0)
    async with hooked(tmp_path, receiver, outbound) as server:
        for i in range(3):
            await publish(server, title=f"n{i}")
        await receiver.arrivals.get()
        m = await scrape(server)
        assert m["tidings_outbound_queue_up"] == 1
        assert m[f"tidings_outbound_jobs_queued{WEBHOOK}"] == 3
        assert m[f"tidings_outbound_jobs_due{WEBHOOK}"] == 3  # the one being sent included
        assert m[f"tidings_outbound_lane_inflight{WEBHOOK}"] == 1
        assert m[f"tidings_outbound_dead_letters{WEBHOOK}"] == 0
        first = m[f"tidings_outbound_oldest_due_seconds{WEBHOOK}"]
        assert first >= 0
        assert outcome(m, "delivered") == 0

        async def older():  # the oldest due job's age grows while the receiver hangs
            age = (await scrape(server))[f"tidings_outbound_oldest_due_seconds{WEBHOOK}"]
            return age if age > first + 0.2 else None

        await until(older)
        hold.set()

        async def drained():
            m = await scrape(server)
            return m if outcome(m, "delivered") == 3 else None

        m = await until(drained)
        assert m[f"tidings_outbound_jobs_queued{WEBHOOK}"] == 0
        assert m[f"tidings_outbound_jobs_due{WEBHOOK}"] == 0
        assert m[f"tidings_outbound_oldest_due_seconds{WEBHOOK}"] == 0
        assert m[f"tidings_outbound_lane_inflight{WEBHOOK}"] == 0
        assert len(receiver.accepted) == 3


async def test_a_failing_receiver_counts_retries_and_a_dead_letter(tmp_path):
    receiver = WebhookReceiver(secret="", fail_first=1000)
    async with hooked(tmp_path, receiver) as server:
        await publish(server, title="never accepted")

        async def dead():
            # the lane counts its outcome once the store has moved the job
            m = await scrape(server)
            return m if (m[f"tidings_outbound_dead_letters{WEBHOOK}"] == 1
                         and outcome(m, "dead") == 1) else None

        m = await until(dead)
        assert m[f"tidings_outbound_jobs_queued{WEBHOOK}"] == 0
        # three attempts (max_attempts): two retries, then the dead-letter list
        assert (outcome(m, "retry"), outcome(m, "dead"), outcome(m, "delivered")) == (2, 1, 0)
        assert outcome(m, "failed") == outcome(m, "error") == 0
        # re-driven, it is tried three more times and counted dead once more
        async with server.http() as http:
            (job,) = (await http.get("/v1/outbound/dead")).json()["jobs"]
            r = await http.post(f"/v1/outbound/dead/{job['id']}/retry")
            assert r.status_code == 202, r.text

        async def dead_again():
            m = await scrape(server)
            return m if outcome(m, "dead") == 2 else None

        m = await until(dead_again)
        assert outcome(m, "retry") == 4
        assert m[f"tidings_outbound_dead_letters{WEBHOOK}"] == 1


async def test_only_a_key_that_sees_every_app_gets_the_queue(tmp_path):
    receiver = WebhookReceiver(secret="")
    async with hooked(tmp_path, receiver) as server:
        other, other_key = await server.new_app()
        async with server.http(other_key) as http:
            text = (await http.get("/metrics")).text
        assert "tidings_publishes_total" in text
        assert "tidings_outbound_" not in text  # the queue holds every app's jobs
        assert "tidings_outbound_queue_up" in m_text(await scrape(server))


def m_text(m: dict[str, float]) -> str:
    return "\n".join(m)


async def test_the_store_is_read_once_per_interval_by_every_scrape(tmp_path):
    receiver = WebhookReceiver(secret="")
    outbound = OutboundConfig(poll_interval=0.05, stats_ttl=60.0)
    async with hooked(tmp_path, receiver, outbound) as server:
        store = server.service.store
        reads = []
        real = store.queue_stats

        async def counted(now):
            reads.append(now)
            return await real(now)

        store.queue_stats = counted
        await publish(server, title="x")
        scrapes = await asyncio.gather(*(scrape(server) for _ in range(5)))
        scrapes.append(await scrape(server))
        assert len(reads) == 1
        assert {m["tidings_outbound_queue_up"] for m in scrapes} == {1}


async def test_a_store_that_does_not_answer_leaves_the_queue_out(tmp_path, monkeypatch):
    """The store hangs (a silent partition): /metrics answers after
    STATS_TIMEOUT with everything else, the queue's gauges left out and
    marked; the next read, an interval later, finds them again."""
    monkeypatch.setattr(service_outbound, "STATS_TIMEOUT", 0.2)
    receiver = WebhookReceiver(secret="")
    outbound = OutboundConfig(poll_interval=0.05, stats_ttl=0.0)
    async with hooked(tmp_path, receiver, outbound) as server:
        store = server.service.store
        real = store.queue_stats

        async def hangs(now):
            await asyncio.Event().wait()

        store.queue_stats = hangs
        await publish(server, title="x")
        m = await scrape(server)
        assert m["tidings_outbound_queue_up"] == 0
        assert not [k for k in m if k.startswith(("tidings_outbound_jobs",
                                                   "tidings_outbound_dead",
                                                   "tidings_outbound_oldest"))]
        assert m['tidings_publishes_total{app="testapp"}'] == 1
        assert f"tidings_outbound_lane_inflight{WEBHOOK}" in m

        async def fails(now):
            raise OSError("connection refused")

        store.queue_stats = fails
        assert (await scrape(server))["tidings_outbound_queue_up"] == 0
        store.queue_stats = real
        m = await scrape(server)
        assert m["tidings_outbound_queue_up"] == 1
        assert f"tidings_outbound_jobs_queued{WEBHOOK}" in m
