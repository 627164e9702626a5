"""The Python Subscriber's ``locale`` option (tidings/client/subscriber.py),
against a real server: its stream shows notifications in the device's
language over the user's preferences, replayed ones too, and without it the
preferences choose; a bad tag is a ValueError before any connection."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.live import publish
from tidings.client import Subscriber

LOCALES = {"de": {"title": "Hallo"}, "fr": {"title": "Bonjour", "body": "le monde"}}


async def _titles(server, token: str, n: int, **options) -> tuple[list[tuple], str | None]:
    """The first ``n`` notifications a Subscriber reads (publishing one once
    it is live), and its cursor."""
    got: list[tuple] = []
    async with Subscriber(server.ws_url, token, receipts=False, **options) as sub:
        async def read():
            async for ev in sub:
                if ev["type"] == "hello":
                    await publish(server, {"users": ["zoe"]}, title="Hello", body="world",
                                  locales=LOCALES)
                elif ev["type"] == "notification":
                    note = ev["notification"]
                    got.append((note["title"], note.get("body", ""), note.get("locale")))
                    if len(got) == n:
                        return
        await asyncio.wait_for(read(), 10)
        return got, sub.cursor


async def test_the_stream_comes_in_the_subscribers_language(server):
    async with server.http() as http:
        r = await http.patch("/v1/users/zoe/preferences", json={"locale": "de"})
        assert r.status_code == 200, r.text
    token = await server.token("zoe")
    got, cursor = await _titles(server, token, 1)
    assert got == [("Hallo", "world", "de")]  # the preferences'
    got, _ = await _titles(server, token, 1, locale="fr-CA")
    assert got == [("Bonjour", "le monde", "fr")]  # the device's, over them
    # resumed from before the second one: the replay is in the device's language too
    got, _ = await _titles(server, token, 2, locale="FR", cursor=cursor)
    assert got[0] == ("Bonjour", "le monde", "fr")
    got, _ = await _titles(server, token, 1, locale="ja")
    assert got == [("Hello", "world", None)]  # none fits: the notification's own


@pytest.mark.parametrize("locale", ["", "de_AT", "i-klingon", "x" * 36, "de\n", 7])
def test_a_bad_locale_is_refused(locale):
    with pytest.raises(ValueError, match="locale must be a BCP 47 language tag"):
        Subscriber("http://h", token="t", locale=locale)


def test_the_locale_goes_in_the_stream_url():
    sub = Subscriber("https://example.com/base/?locale=de&x=1", token="t", cursor="ff:1",
                     locale="pt-BR")
    assert sub._stream_url() == \
        "wss://example.com/base/v1/me/stream?x=1&cursor=ff:1&locale=pt-BR"
    sub.locale = "de-AT"  # from the next connect
    assert sub._stream_url().endswith("&locale=de-AT")
