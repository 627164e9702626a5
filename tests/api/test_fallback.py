"""The offline fallback end to end: e-mail through aiosmtpd and Web Push
through a push-service stub that checks VAPID and decrypts, both on loopback.

Push and e-mail wait ``fallback_delay`` for a device to see the notification.
The tests do not wait that long: the delay is an hour, and once the test has
done what a device does within it, the worker's clock is moved past the hour
(``advance``).  The jobs' due times are real, only the worker looks ahead.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import time

from tests.api.test_outbound_api import _counted, delivery, until
from tests.channels.peers import Mailbox, PushService, Subscriber, serve, smtp_server
from tests.conftest import run_server
from tidings.channels.webpush import generate_vapid_keys
from tidings.config import EmailConfig, OutboundConfig, WebPushConfig

HOUR = 3600.0
KEYS = generate_vapid_keys()


@contextlib.asynccontextmanager
async def with_channels(tmp_path):
    """A server sending e-mail to a local SMTP server and pushes to a stub."""
    mailbox = Mailbox()
    stub = PushService(app_server_key=KEYS.public_key)
    async with smtp_server(mailbox) as port, serve(stub) as origin:
        stub.origin = origin
        async with run_server(
            tmp_path,
            email=EmailConfig(host="127.0.0.1", port=port, starttls=False,
                              sender="Acme <notify@acme.test>"),
            push=WebPushConfig(vapid_private_key=KEYS.private_key,
                               vapid_subject="mailto:ops@acme.test", allow_insecure=True),
            outbound=OutboundConfig(poll_interval=0.05, fallback_delay=HOUR, retry_base=0.01),
        ) as server:
            yield server, mailbox, stub


def advance(server, seconds: float) -> None:
    """Let the worker see ``seconds`` into the future, and claim at once."""
    worker = server.service.outbound.worker
    worker.clock = lambda: time.time() + seconds
    worker.wake()


async def publish(server, users, **fields) -> dict:
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": users}, **fields})
        assert r.status_code == 202, r.text
        return r.json()


async def mark(server, user: str, state: str, body: dict) -> None:
    token = await server.token(user)
    async with server.http(token) as http:
        r = await http.post(f"/v1/me/notifications/{state}", json=body)
        assert r.status_code == 200, r.text


async def set_email(server, user: str, address: str) -> None:
    async with server.http() as http:
        r = await http.put(f"/v1/users/{user}/email", json={"email": address, "name": user})
        assert r.status_code == 200 and r.json()["enabled"] is True


async def test_email_goes_to_the_offline_user_and_not_to_the_one_who_saw_it(tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, _):
        for user in ("alice", "bob", "carol"):
            await set_email(server, user, f"{user}@example.test")
        first = await publish(server, ["alice", "bob"], title="user_17 replied",
                              body="Nice post!")
        assert first["outbound"] == {"email": {"queued": 2}}
        second = await publish(server, ["alice", "carol"], title="second")
        jobs = await server.service.store.list_jobs(server.app, status="queued")
        assert all(j.fallback and j.not_before >= j.created_at + HOUR for j in jobs)

        # Within the delay alice's device sees the first and reads the second;
        # carol's marks everything seen.
        await mark(server, "alice", "seen", {"ids": [first["id"]]})
        await mark(server, "alice", "read", {"ids": [second["id"]]})
        await mark(server, "carol", "seen", {"all": True})
        left = await server.service.store.list_jobs(server.app, status="queued")
        assert [(j.user, j.nid) for j in left] == [("bob", first["id"])]

        advance(server, HOUR + 1)
        await until(lambda: _mail(mailbox))
        (envelope,) = mailbox.messages
        assert envelope.rcpt_tos == ["bob@example.test"]
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert msg["Subject"] == "user_17 replied"
        assert msg["X-Tidings-Id"] == f"{first['id']}.email.1"
        assert "Nice post!" in msg.get_body(("plain",)).get_content()
        # Nothing is left that could still be sent.
        await until(lambda: _queue_empty(server))
        stats = await until(lambda: _counted(server, first["id"], "email", "sent"))
        assert stats["email"] == {"queued": 2, "cancelled": 1, "sent": 1}
        assert (await delivery(server, second["id"]))["email"] == {"queued": 2, "cancelled": 2}
        assert len(mailbox.messages) == 1


async def _mail(mailbox):
    return mailbox.messages


async def _queue_empty(server):
    return await server.service.store.list_jobs(server.app, status="queued") == []


async def test_a_user_who_muted_the_category_in_app_gets_mail_without_the_delay(tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, _):
        await set_email(server, "dave", "dave@example.test")
        async with server.http() as http:
            await http.put("/v1/users/dave/preferences", json={
                "categories": {"billing": {"in_app": False, "push": False}}})
        res = await publish(server, ["dave"], category="billing", title="Invoice ready")
        assert (res["recipients"], res["muted"]) == (0, 1)
        assert res["outbound"] == {"email": {"queued": 1}}
        await until(lambda: _mail(mailbox))  # no clock advance: nothing to wait for
        assert mailbox.messages[0].rcpt_tos == ["dave@example.test"]


async def test_push_subscriptions_are_registered_and_the_stub_decrypts_the_payload(tmp_path):
    async with with_channels(tmp_path) as (server, _, stub):
        async with server.http() as http:
            r = await http.get("/v1/push/vapid-public-key")
            assert r.json() == {"public_key": KEYS.public_key}
        token = await server.token("erin")
        phone = stub.subscribers.setdefault("erin-phone", Subscriber())
        stale = stub.subscribers.setdefault("gone", Subscriber())
        async with server.http(token) as http:
            for sub in (phone.subscription(f"{stub.origin}/push/erin-phone"),
                        stale.subscription(f"{stub.origin}/push/gone")):
                r = await http.post("/v1/me/push-subscriptions",
                                    json={**sub, "expirationTime": None})
                assert r.status_code == 201 and r.json()["enabled"] is True
            listed = (await http.get("/v1/me/push-subscriptions")).json()["subscriptions"]
            assert len(listed) == 2
            assert all(s["push_service"] == stub.origin and "keys" not in s for s in listed)

        res = await publish(server, ["erin"], title="user_17 and 41 others",
                            body="liked your post", priority="high", group_key="post:42")
        assert res["outbound"] == {"push": {"queued": 2}}
        advance(server, HOUR + 1)
        await until(lambda: _pushed(stub))
        (got,) = stub.received
        assert got["payload"]["id"] == res["id"]
        assert got["payload"]["title"] == "user_17 and 41 others"
        assert got["headers"]["urgency"] == "high" and got["headers"]["topic"]
        assert got["claims"]["sub"] == "mailto:ops@acme.test" and stub.errors == []

        async def stale_forgotten():
            async with server.http(token) as http:
                subs = (await http.get("/v1/me/push-subscriptions")).json()["subscriptions"]
            return len(subs) == 1

        await until(stale_forgotten)  # the 410 removed it
        async with server.http(token) as http:
            (sub,) = (await http.get("/v1/me/push-subscriptions")).json()["subscriptions"]
            assert (await http.delete(f"/v1/me/push-subscriptions/{sub['id']}")).status_code \
                == 200
            assert (await http.delete(f"/v1/me/push-subscriptions/{sub['id']}")).status_code \
                == 404


async def _pushed(stub):
    return stub.received


async def test_bad_push_subscriptions_are_refused(tmp_path):
    async with with_channels(tmp_path) as (server, _, stub):
        good = Subscriber().subscription(f"{stub.origin}/push/x")
        token = await server.token("erin")
        bad = [
            {**good, "keys": {"p256dh": "AAAA", "auth": good["keys"]["auth"]}},
            {**good, "keys": {"p256dh": good["keys"]["p256dh"], "auth": "AAAA"}},
            {**good, "endpoint": "ftp://push.example/x"},
            {"endpoint": good["endpoint"]},
            {**good, "extra": 1},
            {**good, "keys": {"p256dh": "!!!", "auth": "%%%"}},
        ]
        async with server.http(token) as http:
            for body in bad:
                r = await http.post("/v1/me/push-subscriptions", json=body)
                assert r.status_code == 422, (body, r.text)
            assert (await http.get("/v1/me/push-subscriptions")).json()["subscriptions"] == []
        # Push off: no key to hand out, and registrations say so.
        async with run_server(tmp_path / "off") as plain:
            async with plain.http() as http:
                r = await http.get("/v1/push/vapid-public-key")
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_configured"


async def test_a_group_sends_one_email_with_its_newest_and_seeing_the_entry_cancels_it(
        tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, _):
        for user in ("frank", "gina"):
            await set_email(server, user, f"{user}@example.test")
        likes = [await publish(server, ["frank", "gina"], title=f"user_{i} liked your post",
                               group_key="post:7:likes", actor=f"user_{i}") for i in range(3)]
        queued = await server.service.store.list_jobs(server.app, status="queued")
        # One pending e-mail per user: each like replaced the one before.
        assert sorted((j.user, j.nid) for j in queued) == [
            ("frank", likes[-1]["id"]), ("gina", likes[-1]["id"])]
        # gina opens her inbox and marks the group's row seen by the id she is shown.
        token = await server.token("gina")
        async with server.http(token) as http:
            (row,) = (await http.get("/v1/me/notifications")).json()["items"]
        assert row["group"]["count"] == 3
        await mark(server, "gina", "seen", {"ids": [row["id"]]})
        advance(server, HOUR + 1)
        await until(lambda: _mail(mailbox))
        (envelope,) = mailbox.messages
        assert envelope.rcpt_tos == ["frank@example.test"]
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert msg["Subject"] == "user_2 liked your post"
        await until(lambda: _queue_empty(server))
        last = await until(lambda: _counted(server, likes[-1]["id"], "email", "sent"))
        first = await delivery(server, likes[0]["id"])
        assert first["email"] == {"queued": 2, "collapsed": 2}
        assert last["email"] == {"queued": 2, "cancelled": 1, "sent": 1}
        assert len(mailbox.messages) == 1


async def test_a_scheduled_notification_queues_its_outbound_when_it_fires(tmp_path):
    from datetime import UTC, datetime, timedelta

    async with with_channels(tmp_path) as (server, mailbox, _):
        await set_email(server, "hal", "hal@example.test")
        at = datetime.now(UTC) + timedelta(seconds=1)
        res = await publish(server, ["hal"], title="The tournament starts in 5 minutes",
                            deliver_at=at.isoformat())
        assert res["status"] == "scheduled" and "outbound" not in res

        async def fired():
            return await server.service.store.list_jobs(server.app, nid=res["id"])

        (job,) = await until(fired)
        assert (job.user, job.channel, job.fallback) == ("hal", "email", True)
        assert job.not_before >= at.timestamp() + HOUR  # the delay runs from delivery
        advance(server, 2 * HOUR)
        await until(lambda: _mail(mailbox))
        assert mailbox.messages[0].rcpt_tos == ["hal@example.test"]
