"""Localized notifications at the API's edges (docs/channels.md, "Languages"):
hostile ``locales`` and ``locale`` values are a 4xx naming the field and
change nothing stored, on both stores; e-mail and Web Push go out in the
recipient's language, through a real local SMTP server and push service."""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.api.test_fallback import HOUR, _mail, _pushed, advance, set_email, with_channels
from tests.api.test_outbound_api import until
from tests.channels.peers import Subscriber

BAD_LOCALES = [
    ({"de_AT": {"title": "x"}}, 422, "locales.de_AT"),  # not a BCP 47 tag
    ({"i-klingon": {"title": "x"}}, 422, "locales.i-klingon"),
    ({"de": {"title": "x"}, "DE": {"title": "y"}}, 422, "locales.DE"),  # twice
    ({"de": {"tittle": "x"}}, 422, "locales[...].tittle"),  # an unknown field
    ({"de": {"title": 7}}, 422, "locales[...].title"),  # a wrong type
    ({"de": {"url": "javascript:alert(1)"}}, 422, "locales[...].url"),
    ({"de": {"body": "x" * 8193}}, 422, "locales[...].body"),
    ({f"x-{i:04d}": {"title": "x"} for i in range(33)}, 422, "locales"),  # too many
    (["de"], 422, "locales"),
]
# what each error says, past naming the field (not "unknown field": the old answer)
SAYS = {"locales": ("length <= 32", "got `array`")}


@pytest.mark.parametrize(("locales", "status", "field"), BAD_LOCALES)
async def test_bad_locales_are_refused_and_change_nothing(each_store, locales, status, field):
    server = each_store
    async with server.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["u"]}, "title": "A"})
        nid = r.json()["id"]
        for send in (
            lambda: http.post("/v1/notifications",
                              json={"to": {"users": ["u"]}, "locales": locales}),
            lambda: http.patch(f"/v1/notifications/{nid}", json={"locales": locales}),
        ):
            r = await send()
            assert r.status_code == status, r.text
            assert r.json()["error"]["field"] == field
            assert "unknown field `locales`" not in r.json()["error"]["message"]
            if field in SAYS:
                assert any(part in r.json()["error"]["message"] for part in SAYS[field])
        r = await http.post("/v1/notifications/batch", json={"notifications": [
            {"to": {"users": ["u"]}, "locales": locales}]})
        (result,) = r.json()["results"]
        assert (result["status"], result["error"]["field"]) == ("error", field)
        got = (await http.get(f"/v1/notifications/{nid}")).json()["notification"]
        assert ("locales" not in got, got["title"]) == (True, "A")
        page = (await http.get("/v1/users/u/notifications")).json()["items"]
        assert [i["id"] for i in page] == [nid]


async def test_locales_count_in_the_size_of_a_notification(each_store):
    big = {f"x-{i:04d}": {"body": "x" * 8000} for i in range(32)}
    async with each_store.http() as http:
        r = await http.post("/v1/notifications", json={"to": {"users": ["u"]}, "locales": big})
        assert r.status_code == 413, r.text
        assert (await http.get("/v1/users/u/notifications")).json()["items"] == []


@pytest.mark.parametrize("locale", ["de_AT", "", "x", "de-" + "a" * 40, 7, ["de"]])
async def test_a_bad_locale_in_the_preferences_is_refused(each_store, locale):
    token = await each_store.token("u")
    async with each_store.http(key=token) as http:
        assert (await http.put("/v1/me/preferences", json={"locale": "de"})).status_code == 200
        for send in (http.put, http.patch):
            r = await send("/v1/me/preferences", json={"locale": locale})
            assert 400 <= r.status_code < 500 and r.json()["error"]["field"] == "locale", r.text
        assert (await http.get("/v1/me/preferences")).json()["locale"] == "de"
        r = await http.get("/v1/me/notifications", params={"locale": "de_AT"})
        assert (r.status_code, r.json()["error"]["field"]) == (422, "locale")


async def test_email_and_push_are_sent_in_the_recipients_language(tmp_path):
    async with with_channels(tmp_path) as (server, mailbox, stub):
        async with server.http() as http:
            for user, locale in (("hans", "de-CH"), ("emma", None)):
                await set_email(server, user, f"{user}@example.test")
                if locale:
                    r = await http.patch(f"/v1/users/{user}/preferences",
                                         json={"locale": locale})
                    assert r.status_code == 200
        token = await server.token("hans")
        phone = stub.subscribers.setdefault("hans-phone", Subscriber())
        async with server.http(token) as http:
            r = await http.post("/v1/me/push-subscriptions",
                                json=phone.subscription(f"{stub.origin}/push/hans-phone"))
            assert r.status_code == 201
        async with server.http() as http:
            r = await http.post("/v1/notifications", json={
                "to": {"users": ["hans", "emma"]}, "title": "Your invoice",
                "body": "is ready", "url": "/invoices/1",
                "locales": {"de": {"title": "Deine Rechnung", "body": "liegt bereit",
                                   "url": "/de/rechnungen/1"}}})
            assert r.status_code == 202, r.text
        advance(server, HOUR + 1)
        await until(lambda: _pushed(stub))
        (pushed,) = stub.received
        assert (pushed["payload"]["title"], pushed["payload"]["locale"]) == (
            "Deine Rechnung", "de")
        assert "locales" not in pushed["payload"]

        async def both():
            return len(mailbox.messages) == 2

        await until(both)
        mails = {m.rcpt_tos[0]: email.message_from_bytes(m.content, policy=email.policy.default)
                 for m in mailbox.messages}
        de, en = mails["hans@example.test"], mails["emma@example.test"]
        assert (de["Subject"], de["Content-Language"]) == ("Deine Rechnung", "de")
        assert "liegt bereit" in de.get_body(("plain",)).get_content()
        assert '<html lang="de"><head>' in de.get_body(("html",)).get_content()
        assert (en["Subject"], en["Content-Language"]) == ("Your invoice", None)
        assert '<html><head>' in en.get_body(("html",)).get_content()
        assert "is ready" in en.get_body(("plain",)).get_content()
        assert _mail  # the helpers of the fallback tests


async def test_the_words_an_email_adds_are_in_the_recipients_language(tmp_path):
    """A notification without a title, with a link: the subject and the
    link's words are tidings' own, in the language the job is sent with."""
    async with with_channels(tmp_path) as (server, mailbox, _):
        async with server.http() as http:
            for user, locale in (("hans", "de-CH"), ("lea", "fr"), ("emma", "pt-BR")):
                await set_email(server, user, f"{user}@example.test")
                r = await http.patch(f"/v1/users/{user}/preferences", json={"locale": locale})
                assert r.status_code == 200
            r = await http.post("/v1/notifications", json={
                "to": {"users": ["hans", "lea", "emma"]}, "body": "42 €",
                "url": "https://acme.test/i/1"})
            assert r.status_code == 202, r.text
        advance(server, HOUR + 1)

        async def all_three():
            return len(mailbox.messages) == 3

        await until(all_three)
        mails = {m.rcpt_tos[0].split("@")[0]: email.message_from_bytes(
            m.content, policy=email.policy.default) for m in mailbox.messages}
        said = {user: (m["Subject"], m.get_body(("html",)).get_content().split(
            '<a href="https://acme.test/i/1"')[1].split("<")[0]) for user, m in mails.items()}
        # the body is the notification's own text, in no known language: the
        # words tidings adds say theirs, when it has the recipient's
        assert said == {"hans": ("Neue Benachrichtigung", ' lang="de">Öffnen'),
                        "lea": ("Nouvelle notification", ' lang="fr">Ouvrir'),
                        "emma": ("New notification", ">Open")}  # no Portuguese: English
