"""The delivery worker: lanes, isolation of a slow provider, expiry, stop."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.channels.memqueue import MemoryQueue, make_job
from tests.channels.peers import Mailbox, WebhookReceiver, serve, smtp_server
from tidings.channels.base import Channel, Job, Result
from tidings.channels.email import EmailChannel, EmailConfig
from tidings.channels.webhook import WebhookChannel, WebhookConfig
from tidings.channels.worker import Lane, Worker
from tidings.core.retry import RetryPolicy

SECRET = "whsec_worker"
FAST = RetryPolicy(base=0.01, cap=0.02, max_attempts=3)


async def secret_for(job):
    return SECRET


def webhook() -> WebhookChannel:
    return WebhookChannel(secret_for, WebhookConfig(allow_insecure=True))


def hook(url: str, id: str, **kw) -> Job:
    return make_job("webhook", {"url": url}, id=id, **kw)


class Scripted:
    """A channel for worker tests: answers each attempt from a script; an
    exception in the script is raised, ``"hang"`` never answers."""

    def __init__(self, name: str, script: list):
        self.name = name
        self.script = list(script)
        self.sent: list[Job] = []

    async def send(self, job: Job) -> Result:
        self.sent.append(job)
        step = self.script.pop(0) if self.script else Result.delivered()
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, Exception):
            raise step
        return step

    async def aclose(self) -> None:
        pass


def test_scripted_is_a_channel():
    assert isinstance(Scripted("x", []), Channel)


async def test_a_slow_provider_never_blocks_another_channel():
    hold = asyncio.Event()
    receiver = WebhookReceiver(SECRET, hold=hold)
    box = Mailbox()
    queue = MemoryQueue()
    async with serve(receiver) as url, smtp_server(box) as port:
        for i in range(5):
            queue.put(hook(url, f"w-{i}"))
        queue.put(make_job("email", {"to": "alice@acme.test"}, id="e-1"))
        mail = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        wh = webhook()
        # one endpoint may take both webhook slots here: this is about lanes
        lanes = [Lane(wh, concurrency=2, policy=FAST, per_host=2),
                 Lane(mail, concurrency=2, policy=FAST)]
        async with Worker(queue, lanes, poll_interval=0.02) as worker:
            # the webhook endpoint hangs on its first two requests...
            await receiver.arrivals.get()
            await receiver.arrivals.get()
            # ...and the mail goes out regardless
            await queue.wait(lambda q: [j.id for j in q.completed] == ["e-1"])
            assert worker.inflight("webhook") == 2
            assert receiver.arrivals.empty()  # no third webhook: the lane is full
            hold.set()
            await queue.wait(lambda q: len(q.completed) == 6)
        await wh.aclose()
    assert receiver.max_concurrent == 2
    assert sorted(receiver.attempts) == [f"w-{i}" for i in range(5)]
    assert len(box.messages) == 1


async def test_an_expired_job_is_never_sent():
    ch = Scripted("push", [])
    queue = MemoryQueue()
    queue.put(make_job("push", {}, id="old", expires_at=time.time() - 1))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=0.02) as worker:
        await queue.wait(lambda q: q.dead_letters)
    assert ch.sent == []
    assert [(j.id, reason) for j, reason in queue.dead_letters] == [("old", "expired")]
    assert worker.counts["push", "expired"] == 1


async def test_no_retry_is_scheduled_past_the_expiry():
    ch = Scripted("push", [Result.retry("HTTP 503")])
    queue = MemoryQueue()
    queue.put(make_job("push", {}, id="soon", expires_at=time.time() + 30))
    slow = RetryPolicy(base=3600.0, cap=3600.0, max_attempts=5)
    async with Worker(queue, [Lane(ch, policy=slow)], poll_interval=0.02, rand=lambda: 1.0):
        await queue.wait(lambda q: q.dead_letters)
    (job, reason), = queue.dead_letters
    assert reason == "expired before the next attempt: HTTP 503"
    assert job.attempts == 1 and queue.retries == []


async def test_a_channel_that_raises_is_retried_not_lost():
    ch = Scripted("email", [RuntimeError("bug in a channel"), TimeoutError()])
    queue = MemoryQueue()
    queue.put(make_job("email", {}, id="j"))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=0.02):
        await queue.wait(lambda q: q.completed)
    assert [j.last_error for j, _ in queue.retries] == [
        "RuntimeError: bug in a channel", "send took longer than 60s"]
    assert len(ch.sent) == 3


async def test_a_providers_words_are_kept_as_one_line_a_store_can_hold():
    """What a provider answers reaches the store as the job's last error and
    dead-letter reason: control characters (a NUL, which PostgreSQL cannot
    hold) and what UTF-8 cannot encode (an SMTP reply's undecodable bytes
    arrive as lone surrogates, which no store can bind) are not kept."""
    smtp = b"550 no\xff such\x00user".decode("utf-8", "surrogateescape")
    ch = Scripted("email", [Result.retry("HTTP 500: bad\x00gate\x1b[31mway\r\n"),
                            Result.failed(smtp, 550)])
    queue = MemoryQueue()
    queue.put(make_job("email", {}, id="j"))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=0.02):
        await queue.wait(lambda q: q.dead_letters)
    assert [j.last_error for j, _ in queue.retries] == ["HTTP 500: bad gate [31mway"]
    (_, reason), = queue.dead_letters
    assert reason == "550 no\ufffd such user"
    reason.encode("utf-8")  # no lone surrogate


async def test_the_lane_timeout_bounds_a_hanging_send():
    ch = Scripted("email", ["hang"])
    queue = MemoryQueue()
    queue.put(make_job("email", {}, id="j"))
    lane = Lane(ch, policy=FAST, timeout=0.1)
    async with Worker(queue, [lane], poll_interval=0.02):
        await queue.wait(lambda q: q.completed)
    assert queue.retries[0][0].last_error == "send took longer than 0.1s"


class FlakyQueue(MemoryQueue):
    def __init__(self):
        super().__init__()
        self.claim_failures = 1
        self.complete_failures = 1

    async def claim(self, channel, n, now):
        if self.claim_failures:
            self.claim_failures -= 1
            raise ConnectionError("store unavailable")
        return await super().claim(channel, n, now)

    async def complete(self, job):
        if self.complete_failures:
            self.complete_failures -= 1
            # the lease is what brings the job back; expire it at once
            self.leased_until.pop(job.id, None)
            raise ConnectionError("store unavailable")
        await super().complete(job)


async def test_queue_errors_do_not_stop_the_lane():
    ch = Scripted("email", [])
    queue = FlakyQueue()
    queue.put(make_job("email", {}, id="j"))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=0.02) as worker:
        await queue.wait(lambda q: q.completed)
    # the first claim failed, the first completion failed: sent twice (at least once)
    assert len(ch.sent) == 2
    assert worker.counts["email", "error"] == 2
    assert worker.counts["email", "delivered"] == 1


async def test_wake_claims_without_waiting_for_the_poll():
    ch = Scripted("email", [])
    queue = MemoryQueue()
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=3600) as worker:
        await queue.wait(lambda q: q.claims)  # the lane looked once and went to sleep
        queue.put(make_job("email", {}, id="j"))
        worker.wake("email")
        await queue.wait(lambda q: q.completed)


async def test_a_retry_due_before_the_next_poll_is_claimed_on_time():
    ch = Scripted("email", [Result.retry("HTTP 503")])
    queue = MemoryQueue()
    queue.put(make_job("email", {}, id="j"))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=3600):
        await queue.wait(lambda q: q.completed)
    assert len(ch.sent) == 2


async def test_stop_lets_a_send_in_flight_finish_within_grace():
    hold = asyncio.Event()
    receiver = WebhookReceiver(SECRET, hold=hold)
    queue = MemoryQueue()
    async with serve(receiver) as url:
        queue.put(hook(url, "first"))
        wh = webhook()
        worker = Worker(queue, [Lane(wh, policy=FAST)], poll_interval=0.02)
        await worker.start()
        await receiver.arrivals.get()
        stopping = asyncio.get_running_loop().create_task(worker.stop(grace=10))
        await asyncio.sleep(0)  # let stop() begin: no more claims from here on
        queue.put(hook(url, "late"))
        hold.set()
        await stopping
        await wh.aclose()
    assert [j.id for j in queue.completed] == ["first"]
    assert list(queue.jobs) == ["late"]  # left for the next worker
    assert list(receiver.attempts) == ["first"]


async def test_stop_hands_back_what_outlives_the_grace():
    hold = asyncio.Event()
    receiver = WebhookReceiver(SECRET, hold=hold)
    queue = MemoryQueue()
    async with serve(receiver) as url:
        queue.put(hook(url, "stuck"))
        wh = webhook()
        worker = Worker(queue, [Lane(wh, policy=FAST)], poll_interval=0.02)
        await worker.start()
        await receiver.arrivals.get()
        await worker.stop(grace=0.05)
        hold.set()
        await wh.aclose()
    (job, at), = queue.retries
    assert job.id == "stuck" and job.attempts == 0  # handed back, not counted as a failure
    assert at <= time.time()
    assert "stuck" in queue.jobs and queue.completed == [] and queue.dead_letters == []


async def test_the_result_hook_sees_every_attempt_and_cannot_break_the_worker():
    seen = []

    async def on_result(job, result):
        seen.append((job.id, result.outcome))
        raise RuntimeError("hook bug")

    ch = Scripted("email", [Result.retry("HTTP 500"), Result.failed("HTTP 400")])
    queue = MemoryQueue()
    queue.put(make_job("email", {}, id="a"))
    async with Worker(queue, [Lane(ch, policy=FAST)], poll_interval=0.02, on_result=on_result):
        await queue.wait(lambda q: q.dead_letters)
    assert seen == [("a", "retry"), ("a", "failed")]


async def test_lanes_claim_only_their_own_channel():
    email, push = Scripted("email", []), Scripted("push", [])
    queue = MemoryQueue()
    for i in range(3):
        queue.put(make_job("email", {}, id=f"e{i}"))
        queue.put(make_job("push", {}, id=f"p{i}"))
    queue.put(make_job("sms", {}, id="s"))  # no lane: stays queued
    async with Worker(queue, [Lane(email), Lane(push)], poll_interval=0.02):
        await queue.wait(lambda q: len(q.completed) == 6)
    assert {j.id for j in email.sent} == {"e0", "e1", "e2"}
    assert {j.id for j in push.sent} == {"p0", "p1", "p2"}
    assert list(queue.jobs) == ["s"]
    assert all(n <= 16 for _, n, _ in queue.claims)


async def test_lifecycle_errors():
    with pytest.raises(ValueError):
        Lane(Scripted("x", []), concurrency=0)
    worker = Worker(MemoryQueue(), [Lane(Scripted("x", []))])
    await worker.start()
    with pytest.raises(RuntimeError):
        await worker.start()
    await worker.stop()


class Hosted:
    """A channel whose jobs name their destination host: sends to
    ``tarpit.test`` wait for ``tarpit`` to be set (then take ``tarpit_s``),
    every other host answers at once."""

    name = "webhook"

    def __init__(self) -> None:
        self.tarpit = asyncio.Event()
        self.tarpit_s = 0.0
        self.inflight: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.sent: list[str] = []

    @staticmethod
    def host(job: Job) -> str:
        return job.destination["host"]

    async def send(self, job: Job) -> Result:
        host = self.host(job)
        self.inflight[host] = self.inflight.get(host, 0) + 1
        self.most[host] = max(self.most.get(host, 0), self.inflight[host])
        try:
            if host == "tarpit.test":
                await self.tarpit.wait()
                await asyncio.sleep(self.tarpit_s)
            self.sent.append(job.id)
            return Result.delivered()
        finally:
            self.inflight[host] -= 1

    async def aclose(self) -> None:
        pass


def hosted_job(host: str, id: str, at: float = 0.0) -> Job:
    return make_job("webhook", {"host": host}, id=id, created_at=at)


async def test_one_slow_host_cannot_take_every_slot_of_its_lane():
    ch, queue = Hosted(), MemoryQueue()
    for i in range(10):  # first in line: a receiver that accepts and never answers
        queue.put(hosted_job("tarpit.test", f"t-{i}", at=i))
    for i in range(3):
        queue.put(hosted_job("fast.test", f"f-{i}", at=100 + i))
    lane = Lane(ch, concurrency=4, policy=FAST, host_defer=0.05)
    assert (lane.per_host, lane.slow_per_host) == (3, 1)
    async with Worker(queue, [lane], poll_interval=0.02) as worker:
        await queue.wait(lambda q: {j.id for j in q.completed} == {"f-0", "f-1", "f-2"})
        assert ch.inflight["tarpit.test"] == 3  # the fourth slot stayed the others'
        assert worker.counts["webhook", "deferred"] >= 1
        assert all(j.destination["host"] == "tarpit.test" and j.attempts == 0
                   for j, _ in queue.released)
        assert queue.retries == [] and queue.dead_letters == []  # no attempt counted
        ch.tarpit.set()
        await queue.wait(lambda q: len(q.completed) == 13)
    assert ch.most == {"tarpit.test": 3, "fast.test": 1}


async def test_a_host_that_was_slow_gets_fewer_slots(monkeypatch):
    import tidings.channels.worker as worker_module

    monkeypatch.setattr(worker_module, "SLOW_AFTER", 0.1)
    ch, queue = Hosted(), MemoryQueue()
    for i in range(8):
        queue.put(hosted_job("tarpit.test", f"t-{i}", at=i))
    lane = Lane(ch, concurrency=8, policy=FAST, host_defer=0.05)
    assert (lane.per_host, lane.slow_per_host) == (6, 1)
    async with Worker(queue, [lane], poll_interval=0.02):
        await asyncio.sleep(0.3)  # six sends in flight, slow by now
        assert ch.inflight["tarpit.test"] == 6
        ch.tarpit_s = 0.15  # it answers now, slowly
        ch.tarpit.set()
        await queue.wait(lambda q: len(q.completed) == 6)
        ch.most.clear()
        await queue.wait(lambda q: len(q.completed) == 8)
    assert ch.most == {"tarpit.test": 1}  # slow: one send at a time, not six


async def test_many_slow_hosts_together_take_at_most_half_the_lane(monkeypatch):
    import tidings.channels.worker as worker_module

    monkeypatch.setattr(worker_module, "SLOW_AFTER", 0.1)
    ch, queue = Hosted(), MemoryQueue()
    slow_hosts = [f"tarpit-{i}.test" for i in range(6)]  # a user's push subscriptions
    ch.host = lambda job: job.destination["host"]  # type: ignore[method-assign]
    hang = asyncio.Event()
    send = ch.send

    async def slow_send(job: Job) -> Result:
        if job.destination["host"].startswith("tarpit-"):
            await asyncio.sleep(0.15)  # each one slow, none hanging for ever
            if hang.is_set():
                await asyncio.Event().wait()
        return await send(job)

    ch.send = slow_send  # type: ignore[method-assign]
    for i in range(60):
        queue.put(hosted_job(slow_hosts[i % 6], f"t-{i}", at=i))
    lane = Lane(ch, concurrency=8, policy=FAST, host_defer=0.05)
    async with Worker(queue, [lane], poll_interval=0.02) as worker:
        await queue.wait(lambda q: len(q.completed) >= 12)  # every tarpit is slow by now
        hang.set()  # from now on they never answer
        await asyncio.sleep(0.3)
        hosts = worker._hosts["webhook"]
        stuck = sum(len(s) for s in hosts.started.values())
        assert stuck <= 4  # half of the lane, though six hosts may have one each
        for i in range(3):
            queue.put(hosted_job("fast.test", f"f-{i}", at=1000 + i))
        worker.wake()
        await queue.wait(lambda q: {"f-0", "f-1", "f-2"} <= {j.id for j in q.completed})


async def test_a_screen_keeps_jobs_from_being_sent_and_a_failing_one_hands_them_back():
    """The screen sees each claim before anything is sent (the service's
    checks the users' preferences there): what it keeps goes out, what it
    takes out is never sent; if it fails, the claim is handed back unsent."""
    box = Mailbox()
    queue = MemoryQueue()
    screened: list[list[str]] = []
    broken = False

    async def screen(jobs: list[Job]) -> list[Job]:
        screened.append([j.id for j in jobs])
        if broken:
            raise RuntimeError("the store is away")
        for job in jobs:
            if job.user == "bob":  # bob switched e-mail off meanwhile
                await queue.complete(job)  # settled by the screen, as the service does
        return [j for j in jobs if j.user != "bob"]

    async with smtp_server(box) as port:
        mail = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        queue.put(make_job("email", {"to": "alice@acme.test"}, id="e-a", user="alice"))
        queue.put(make_job("email", {"to": "bob@acme.test"}, id="e-b", user="bob"))
        async with Worker(queue, [Lane(mail, concurrency=4, policy=FAST)],
                          poll_interval=0.02, screen=screen) as worker:
            await queue.wait(lambda q: len(q.completed) == 2 and not q.jobs)
            await box_has(box, 1)
            assert [m.rcpt_tos for m in box.messages] == [["alice@acme.test"]]
            assert sorted(screened[0]) == ["e-a", "e-b"]
            assert (worker.counts["email", "muted"], worker.counts["email", "delivered"]) == (1, 1)

            broken = True
            queue.put(make_job("email", {"to": "carol@acme.test"}, id="e-c", user="carol"))
            worker.wake("email")
            await queue.wait(lambda q: [j.id for j, _ in q.released] == ["e-c"])
            assert "e-c" in queue.jobs and len(box.messages) == 1
            assert worker.counts["email", "error"] == 1
        await mail.aclose()


async def box_has(box: Mailbox, n: int) -> None:
    async with asyncio.timeout(10):
        while len(box.messages) < n:
            box.arrived.clear()
            await box.arrived.wait()
