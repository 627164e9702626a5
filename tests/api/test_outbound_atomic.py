"""The inbox rows and the outbound jobs of one publish commit together
(docs/design.md §2.1), on both stores: a publish whose jobs cannot be
written keeps nothing, so its retry with the same Idempotency-Key publishes
it whole instead of answering "duplicate" without the jobs."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime

import pytest

from tests.api.conftest import allow_inserts, refuse_inserts, store_overrides
from tests.conftest import run_server
from tidings.config import WebhookConfig

NOTE = {"to": {"users": ["u1"]}, "title": "t"}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_publish_whose_jobs_fail_keeps_nothing_and_its_retry_queues_them(tmp_path, kind):
    async with store_overrides(kind) as store:
        async with run_server(tmp_path, webhook=WebhookConfig(allow_insecure=True),
                              **store) as server:
            async with server.http() as http:
                r = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
                assert r.status_code == 201, r.text
                await refuse_inserts(server, "jobs")
                r = await http.post("/v1/notifications", json=NOTE,
                                    headers={"Idempotency-Key": "k"})
                assert r.status_code >= 500, r.text
                r = await http.post("/v1/notifications/batch", json={"notifications": [NOTE]},
                                    headers={"Idempotency-Key": "b"})
                assert r.json()["results"][0]["status"] == "error", r.text
                inbox = await http.get("/v1/users/u1/notifications", params={"state": "all"})
                assert inbox.json()["items"] == []  # nothing half-kept
                await allow_inserts(server, "jobs")
                for retry in (
                        http.post("/v1/notifications", json=NOTE, headers={"Idempotency-Key": "k"}),
                        http.post("/v1/notifications/batch", json={"notifications": [NOTE]},
                                  headers={"Idempotency-Key": "b"})):
                    r = await retry
                    out = r.json()["results"][0] if "results" in r.json() else r.json()
                    assert out["status"] == "accepted", r.text
                    assert out["outbound"] == {"webhook": {"queued": 1}}, out
                    jobs = (await http.get(f"/v1/notifications/{out['id']}/outbound")).json()
                    assert [j["channel"] for j in jobs["jobs"]] == ["webhook"], jobs
                inbox = await http.get("/v1/users/u1/notifications", params={"state": "all"})
                assert len(inbox.json()["items"]) == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_fired_notification_whose_jobs_failed_queues_them_later(tmp_path, kind):
    """A scheduled notification's jobs are planned when it fires, after the
    fire's commit: the row stays "fired" until they are queued, and a later
    pass of the scheduler (this node after a crash, or another) queues them."""
    async with store_overrides(kind) as store:
        async with run_server(tmp_path, webhook=WebhookConfig(allow_insecure=True),
                              **store) as server:
            async with server.http() as http:
                r = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
                assert r.status_code == 201, r.text
                at = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
                r = await http.post("/v1/notifications", json={**NOTE, "deliver_at": at})
                nid = r.json()["id"]
                await refuse_inserts(server, "jobs")
                now = time.time() + 61
                (out,) = await server.service.fire_due(now, 100)
                assert out.status == "accepted"
                jobs = (await http.get(f"/v1/notifications/{nid}/outbound")).json()["jobs"]
                assert jobs == []
                await allow_inserts(server, "jobs")
                assert await server.service.fire_due(now + 1, 100) == []  # not yet: too fresh
                assert await server.service.fire_due(now + 300, 100) == []
                jobs = (await http.get(f"/v1/notifications/{nid}/outbound")).json()["jobs"]
                assert [j["channel"] for j in jobs] == ["webhook"], jobs
                # queued once: a further pass adds nothing
                await server.service.fire_due(now + 600, 100)
                jobs = (await http.get(f"/v1/notifications/{nid}/outbound")).json()["jobs"]
                assert len(jobs) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_scheduled_notification_fires_with_its_jobs_or_not_at_all(tmp_path, kind):
    """Its jobs commit in the fire's transaction: when the last step of that
    transaction fails (as a node stopping right after the fire would end
    it), nothing is kept, and the next pass fires it whole, at once, rather
    than leaving its jobs for a pass a minute later."""
    async with store_overrides(kind) as store:
        async with run_server(tmp_path, webhook=WebhookConfig(allow_insecure=True),
                              **store) as server:
            async with server.http() as http:
                r = await http.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
                assert r.status_code == 201, r.text
                at = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
                r = await http.post("/v1/notifications", json={**NOTE, "deliver_at": at})
                nid = r.json()["id"]
                # the row's change to "sent", the fire's last write, is refused
                await refuse_inserts(server, "scheduled", "NEW.status = 'sent'", event="UPDATE")
                now = time.time() + 61
                with contextlib.suppress(Exception):
                    await server.service.fire_due(now, 100)
                inbox = await http.get("/v1/users/u1/notifications", params={"state": "all"})
                assert inbox.json()["items"] == []  # not published without its jobs
                assert (await server.service.store.get_scheduled(server.app, nid)).status \
                    == "pending"
                await allow_inserts(server, "scheduled")
                (out,) = await server.service.fire_due(now + 1, 100)  # the next pass
                assert (out.id, out.status) == (nid, "accepted")
                jobs = (await http.get(f"/v1/notifications/{nid}/outbound")).json()["jobs"]
                assert [j["channel"] for j in jobs] == ["webhook"], jobs
                assert (await server.service.store.get_scheduled(server.app, nid)).status \
                    == "sent"
