"""What waits for a user follows a change of their preferences
(tidings/core/retime.py, docs/channels.md "Changed while waiting"): jobs held
by quiet hours, digest windows.  End to end, through the real loopback peers
of the channel tests (a verifying webhook receiver, aiosmtpd).

Quiet hours are set around the real present, so a held job really is held;
where a test has to see past an hour, the outbound clock is moved ahead
(``advance``), as in test_fallback.py and test_digests.py.  Runs on SQLite,
and on PostgreSQL with ``TIDINGS_TEST_STORE=postgres``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
from datetime import UTC, datetime, timedelta

from tests.api.test_digests import FAST, advance
from tests.api.test_fallback import HOUR, set_email, with_channels
from tests.api.test_fallback import advance as advance_worker
from tests.api.test_outbound_api import hooked, until
from tidings.core.quiet import QuietWindow

WAIT = 10.0  # seconds a test waits for what should come at once


def quiet(before: float, after: float) -> dict:
    """Quiet hours from ``before`` hours ago to ``after`` hours from now (UTC)."""
    now = datetime.now(UTC)
    return {"start": (now - timedelta(hours=before)).strftime("%H:%M"),
            "end": (now + timedelta(hours=after)).strftime("%H:%M"), "tz": "UTC"}


def ends(hours: dict) -> float:
    return QuietWindow.parse(hours["start"], hours["end"], hours["tz"]).ends_after(
        datetime.now(UTC)).timestamp()


async def put_prefs(server, user: str, doc: dict) -> None:
    async with server.http() as http:
        r = await http.put(f"/v1/users/{user}/preferences", json=doc)
        assert r.status_code == 200, r.text


async def patch_mine(server, user: str, doc: dict) -> dict:
    async with server.http(await server.token(user)) as http:
        r = await http.patch("/v1/me/preferences", json=doc)
        assert r.status_code == 200, r.text
        return r.json()


async def publish(server, users: list[str], **fields) -> dict:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": users}, **fields})
        assert r.status_code == 202, r.text
        return r.json()


async def queued(server, user: str) -> list:
    jobs = await server.service.store.list_jobs(server.app, status="queued")
    return [j for j in jobs if j.user == user]


async def test_a_job_held_by_quiet_hours_goes_soon_after_they_are_removed(tmp_path):
    async with hooked(tmp_path) as (server, receiver):
        night = quiet(1, 2)
        for user in ("alice", "bob"):
            await put_prefs(server, user, {"quiet_hours": night})
        res = await publish(server, ["alice", "bob"], title="at night")
        assert res["outbound"] == {"webhook": {"queued": 2, "deferred": 2}}
        (bobs,) = await queued(server, "bob")
        assert bobs.not_before == ends(night)

        await patch_mine(server, "alice", {"quiet_hours": None})
        async with asyncio.timeout(WAIT):
            await until(lambda: _accepted(receiver, 1))
        (sent,) = receiver.accepted
        assert (sent["user"], sent["notification"]["id"]) == ("alice", res["id"])
        # bob's quiet hours did not change: his job keeps its time
        assert [(j.id, j.not_before) for j in await queued(server, "bob")] == [
            (bobs.id, bobs.not_before)]


async def test_moved_quiet_hours_move_the_job_and_the_fallback_delay_still_counts(tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, _):
        night = quiet(1, 3)
        for user in ("alice", "carol", "dave"):
            await set_email(server, user, f"{user}@example.test")
            await put_prefs(server, user, {"quiet_hours": night})
        res = await publish(server, ["alice", "carol", "dave"], title="at night")
        assert res["outbound"] == {"email": {"queued": 3, "deferred": 3}}
        (daves,) = await queued(server, "dave")
        assert daves.not_before == ends(night)

        # alice ends her quiet hours an hour earlier; carol has none any more
        # but the hour of the offline fallback still runs (fallback_delay)
        shorter = {**night, "end": (datetime.now(UTC) + timedelta(hours=2)).strftime("%H:%M")}
        await patch_mine(server, "alice", {"quiet_hours": shorter})
        await put_prefs(server, "carol", {})
        (alices,) = await queued(server, "alice")
        assert alices.not_before == ends(shorter) < daves.not_before
        (carols,) = await queued(server, "carol")
        assert carols.not_before == carols.created_at + HOUR
        assert [(j.id, j.not_before) for j in await queued(server, "dave")] == [
            (daves.id, daves.not_before)]

        advance_worker(server, alices.not_before - time.time() + 1)
        async with asyncio.timeout(WAIT):
            await until(lambda: _mails(mailbox, 2))
        assert sorted(m.rcpt_tos[0] for m in mailbox.messages) == [
            "alice@example.test", "carol@example.test"]
        msg = email.message_from_bytes(mailbox.messages[0].content,
                                       policy=email.policy.default)
        assert msg["Subject"] == "at night"

        async def only_daves_queued() -> bool:
            jobs = await server.service.store.list_jobs(server.app, status="queued")
            return [j.user for j in jobs] == ["dave"]

        # the worker marks a job sent once the mail server has taken it, a moment later
        async with asyncio.timeout(WAIT):
            await until(only_daves_queued)


async def test_a_shorter_digest_interval_closes_the_open_window_sooner(tmp_path):
    async with hooked(tmp_path, outbound=FAST) as (server, receiver):
        hourly = {"digests": {"social": {"webhook": {"every": 3600}}}}
        for user in ("alice", "bob"):
            await put_prefs(server, user, hourly)
        first = await publish(server, ["alice", "bob"], category="social", title="one")
        second = await publish(server, ["alice", "bob"], category="social", title="two")
        assert first["outbound"] == {"webhook": {"digest": 2}}

        await patch_mine(server, "alice",
                         {"digests": {"social": {"webhook": {"every": 600}}}})
        outbound = server.service.outbound
        # ten minutes after it opened, alice's window closes; bob's is hourly still
        assert await outbound.flush_digests(time.time() + 590) == []
        assert await outbound.flush_digests(time.time() + 610) == ["webhook"]
        async with asyncio.timeout(WAIT):
            await until(lambda: _digests(receiver, 1))
        (doc,) = _digest_docs(receiver)
        assert doc["user"] == "alice"
        assert [i["id"] for i in doc["notification"]["data"]["digest"]["items"]] == [
            first["id"], second["id"]]
        advance(server, HOUR + 1)
        async with asyncio.timeout(WAIT):
            await until(lambda: _digests(receiver, 2))
        assert [d["user"] for d in _digest_docs(receiver)] == ["alice", "bob"]


async def test_a_removed_digest_rule_sends_what_the_window_holds_now_as_one(tmp_path):
    async with hooked(tmp_path, outbound=FAST) as (server, receiver):
        await put_prefs(server, "alice", {"digests": {"social": {"webhook": {"every": 3600}}}})
        first = await publish(server, ["alice"], category="social", title="one")
        second = await publish(server, ["alice"], category="social", title="two")

        await patch_mine(server, "alice", {"digests": {"social": {"webhook": None}}})
        async with asyncio.timeout(WAIT):
            await until(lambda: _digests(receiver, 1))
        (doc,) = _digest_docs(receiver)
        assert doc["notification"]["title"] == "2 new notifications"
        assert [i["id"] for i in doc["notification"]["data"]["digest"]["items"]] == [
            first["id"], second["id"]]
        # from now on each one goes on its own
        third = await publish(server, ["alice"], category="social", title="three")
        assert third["outbound"] == {"webhook": {"queued": 1}}
        async with asyncio.timeout(WAIT):
            await until(lambda: _accepted(receiver, 2))
        assert receiver.accepted[-1]["notification"]["id"] == third["id"]


async def _accepted(receiver, n: int):
    return len(receiver.accepted) >= n


async def _mails(mailbox, n: int):
    return len(mailbox.messages) >= n


def _digest_docs(receiver) -> list[dict]:
    return [json.loads(b) for h, b in receiver.requests
            if h.get("tidings-event") == "notification.digest"]


async def _digests(receiver, n: int):
    return len(_digest_docs(receiver)) >= n
