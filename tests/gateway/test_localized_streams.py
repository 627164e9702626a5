"""Localized notifications live and in the inbox (docs/inbox.md, "Languages"):
one notification with ``locales`` reaches a German and an English user each
in their language, over WebSocket and SSE, in the inbox page and its replay,
on both stores; a PATCH of its locales reaches their devices so, and a
change of a user's locale reaches their open streams."""

from __future__ import annotations

from tests.gateway.live import SSEReader, publish, recv_events, ws_connect

LOCALES = {"de": {"title": "Deine Bestellung", "body": "ist unterwegs"},
           "fr-CA": {"title": "Votre commande"}}


async def set_locale(server, user: str, locale: str | None) -> None:
    async with server.http() as http:
        r = await http.patch(f"/v1/users/{user}/preferences", json={"locale": locale})
        assert r.status_code == 200, r.text
        assert r.json().get("locale") == locale


async def page(server, token: str, **params) -> list[dict]:
    async with server.http(key=token) as http:
        r = await http.get("/v1/me/notifications", params=params)
        assert r.status_code == 200, r.text
        return [item["notification"] for item in r.json()["items"]]


def texts(notes: list[dict]) -> list[tuple]:
    return [(n["title"], n.get("body", ""), n.get("locale")) for n in notes
            if "locales" not in n]  # a client never sees the overrides themselves


async def next_notification(ws, kind: str = "notification") -> dict:
    while True:
        for ev in await recv_events(ws, 1):
            if ev["type"] == kind:
                return ev["notification"]


async def test_a_german_and_an_english_user_each_get_their_language(store):
    async with store() as server:
        await set_locale(server, "hans", "de-AT")  # falls back to "de"
        await set_locale(server, "jean", "fr")  # no "fr": the notification's own
        hans, emma, jean = [await server.token(u) for u in ("hans", "emma", "jean")]
        hans_ws, emma_ws, jean_ws = [await ws_connect(server, t) for t in (hans, emma, jean)]
        try:
            for ws in (hans_ws, emma_ws, jean_ws):
                assert (await recv_events(ws, 1))[0]["type"] == "hello"
            async with SSEReader(server, hans) as sse:
                await sse.events(1)  # hello
                (nid,) = await publish(server, {"users": ["hans", "emma", "jean"]},
                                       title="Your order", body="is on its way",
                                       locales=LOCALES)
                live_de = await next_notification(hans_ws)
                (_, sse_ev), = await sse.events(1)
            live_en = await next_notification(emma_ws)
            live_fr = await next_notification(jean_ws)
            assert texts([live_de, sse_ev["notification"]]) == [
                ("Deine Bestellung", "ist unterwegs", "de")] * 2
            assert texts([live_en, live_fr]) == [("Your order", "is on its way", None)] * 2
            assert live_de["id"] == live_en["id"] == nid
            assert texts(await page(server, hans)) == [
                ("Deine Bestellung", "ist unterwegs", "de")]
            assert texts(await page(server, emma)) == [("Your order", "is on its way", None)]
            # a device whose UI language differs asks for its own
            assert texts(await page(server, emma, locale="fr-CA")) == [
                ("Votre commande", "is on its way", "fr-CA")]
            # the app's backend reads the user's inbox as the user sees it
            async with server.http() as http:
                r = await http.get("/v1/users/hans/notifications")
            assert texts([i["notification"] for i in r.json()["items"]]) == [
                ("Deine Bestellung", "ist unterwegs", "de")]
            # ... and the notification itself whole
            async with server.http() as http:
                stored = (await http.get(f"/v1/notifications/{nid}")).json()["notification"]
            assert stored["locales"] == LOCALES and stored["title"] == "Your order"
        finally:
            for ws in (hans_ws, emma_ws, jean_ws):
                await ws.close()


async def test_a_replay_and_a_pinned_stream_are_in_their_language(store):
    async with store(fanout_threshold=0) as server:
        await set_locale(server, "hans", "de")
        hans = await server.token("hans")
        ws = await ws_connect(server, hans)
        (hello,) = await recv_events(ws, 1)
        await ws.close()
        await publish(server, {"users": ["hans"]}, title="Your order", locales=LOCALES)
        await publish(server, {"all": True}, title="Maintenance",
                      locales={"de": {"title": "Wartung"}})  # a feed item
        ws = await ws_connect(server, hans, cursor=hello["cursor"])
        try:
            got = [e for e in await recv_events(ws, 4) if e["type"] == "notification"]
            assert sorted(n["notification"]["title"] for n in got) == [
                "Deine Bestellung", "Wartung"]
        finally:
            await ws.close()
        # ?locale= pins a stream to the device's language
        url = server.ws_url + "/v1/me/stream?locale=fr-CA"
        import json

        import websockets
        async with websockets.connect(url) as pinned:
            await pinned.send(json.dumps({"type": "auth", "token": hans}))
            await recv_events(pinned, 1)
            await publish(server, {"users": ["hans"]}, title="Your order", locales=LOCALES)
            assert (await next_notification(pinned))["title"] == "Votre commande"


async def test_a_patch_of_the_locales_and_a_new_locale_reach_open_devices(store):
    async with store() as server:
        await set_locale(server, "hans", "de")
        hans, emma = await server.token("hans"), await server.token("emma")
        hans_ws, emma_ws = await ws_connect(server, hans), await ws_connect(server, emma)
        try:
            await recv_events(hans_ws, 1)
            await recv_events(emma_ws, 1)
            (nid,) = await publish(server, {"users": ["hans", "emma"]}, title="Your order")
            assert (await next_notification(hans_ws))["title"] == "Your order"
            await next_notification(emma_ws)
            async with server.http() as http:
                r = await http.patch(f"/v1/notifications/{nid}",
                                     json={"locales": {"de": {"title": "Bestellung"}}})
                assert r.status_code == 200, r.text
                assert r.json()["locales"] == {"de": {"title": "Bestellung"}}
            assert (await next_notification(hans_ws, "updated"))["title"] == "Bestellung"
            updated = await next_notification(emma_ws, "updated")
            assert (updated["title"], "locales" in updated) == ("Your order", False)
            # Emma switches to German: her open stream follows
            await set_locale(server, "emma", "de")
            async with server.http() as http:
                r = await http.patch(f"/v1/notifications/{nid}",
                                     json={"locales": {"de": {"title": "Paket"}}})
                assert r.status_code == 200, r.text
            assert (await next_notification(emma_ws, "updated"))["title"] == "Paket"
            assert texts(await page(server, emma)) == [("Paket", "", "de")]
            # {} removes them
            async with server.http() as http:
                r = await http.patch(f"/v1/notifications/{nid}", json={"locales": {}})
                assert "locales" not in r.json()
            assert texts(await page(server, hans)) == [("Your order", "", None)]
        finally:
            await hans_ws.close()
            await emma_ws.close()


async def test_a_new_locale_holds_for_this_nodes_streams_when_its_answer_is_sent(store):
    """The node that stores a user's new locale sets it on their streams
    before it answers: the next event is in it, whatever the broker's pace."""
    async with store() as server:
        ws = await ws_connect(server, await server.token("emma"))
        try:
            await recv_events(ws, 1)
            hub, key = server.service.hub, (server.app, "emma")
            assert hub.locale_of(key) == ""
            await set_locale(server, "emma", "de")
            assert hub.locale_of(key) == "de"
            await set_locale(server, "emma", None)
            assert hub.locale_of(key) == ""
        finally:
            await ws.close()
