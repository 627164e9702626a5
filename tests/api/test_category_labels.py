"""An app's categories in its users' languages (tidings/api/categories.py),
on both stores: ``labels`` and ``descriptions`` by BCP 47 tag, stored as put
and read back whole with a key; a user's device reads each category in the
user's language (``?locale=``, else their preferences'), with the fallback
chain of notifications, and an ``ETag`` of its own per language; hostile
documents are refused naming the field and change nothing."""

from __future__ import annotations

import pytest

DECLARED = {"categories": [
    {"id": "social", "label": "Replies", "description": "When someone answers you",
     "labels": {"de": "Antworten", "fr": "Réponses", "pt-BR": "Respostas"},
     "descriptions": {"de": "Wenn jemand antwortet", "de-AT": "Wann wer antwortet"}},
    {"id": "ci", "label": "Builds", "labels": {"de-Latn": "Bauten"}},
    {"id": "billing", "label": "Billing"},
]}
DIGESTS = {"social": {"email": {"every": 3600}}}


def _shown(body: dict) -> list[tuple]:
    return [(c["id"], c["label"], c.get("description"), c.get("locale"))
            for c in body["categories"]]


async def test_each_reader_sees_the_labels_of_their_language(each_store):
    server = each_store
    async with server.http() as http, server.http(await server.token("alice")) as me:
        r = await http.put("/v1/categories", json=DECLARED)
        assert r.status_code == 200 and r.json() == DECLARED, r.text
        assert (await http.put("/v1/caps", json={"digests": DIGESTS})).status_code == 200
        assert (await http.get("/v1/categories")).json() == DECLARED  # as stored
        # no language: the labels the app gave first, no translations shown
        r = await me.get("/v1/me/categories")
        assert r.status_code == 200, r.text
        assert r.json() == {"categories": [
            {"id": "social", "label": "Replies", "description": "When someone answers you"},
            {"id": "ci", "label": "Builds"}, {"id": "billing", "label": "Billing"}],
            "digests": DIGESTS}
        # the preferences' language, through the fallback chain
        r = await me.patch("/v1/me/preferences", json={"locale": "de-Latn-AT"})
        assert r.status_code == 200, r.text
        body = (await me.get("/v1/me/categories")).json()
        assert body["locale"] == "de-Latn-AT" and body["digests"] == DIGESTS
        assert _shown(body) == [
            ("social", "Antworten", "Wenn jemand antwortet", "de"),
            ("ci", "Bauten", None, "de-Latn"),
            ("billing", "Billing", None, None)]
        assert "labels" not in str(body) and "descriptions" not in str(body)
        # a device's own language wins over the preferences'; tags without regard to case
        body = (await me.get("/v1/me/categories", params={"locale": "DE-at"})).json()
        assert body["locale"] == "DE-at"
        assert _shown(body) == [
            ("social", "Antworten", "Wann wer antwortet", "de"),
            ("ci", "Builds", None, None),
            ("billing", "Billing", None, None)]
        body = (await me.get("/v1/me/categories", params={"locale": "pt-br"})).json()
        assert _shown(body)[0] == ("social", "Respostas", "When someone answers you", "pt-BR")
        # a language none fits: the app's own text
        body = (await me.get("/v1/me/categories", params={"locale": "ja"})).json()
        assert body["locale"] == "ja"
        assert _shown(body) == [
            ("social", "Replies", "When someone answers you", None),
            ("ci", "Builds", None, None), ("billing", "Billing", None, None)]


async def test_the_etag_differs_per_language(each_store):
    server = each_store
    async with server.http() as http, server.http(await server.token("alice")) as me:
        assert (await http.put("/v1/categories", json=DECLARED)).status_code == 200
        tags = {}
        for locale in ("de", "fr", "ja", "x-none"):
            r = await me.get("/v1/me/categories", params={"locale": locale})
            assert r.status_code == 200, r.text
            tags[locale] = r.headers["etag"]
            r = await me.get("/v1/me/categories", params={"locale": locale},
                             headers={"If-None-Match": tags[locale]})
            assert r.status_code == 304 and r.headers["etag"] == tags[locale]
        # "ja" and "x-none" both get the app's own labels, yet say which language they read
        assert len(set(tags.values())) == 4, tags
        # the German tag held by a device whose user now reads French: the French labels
        r = await me.patch("/v1/me/preferences", json={"locale": "de"})
        assert r.status_code == 200, r.text
        r = await me.get("/v1/me/categories", headers={"If-None-Match": tags["de"]})
        assert r.status_code == 304 and r.headers["etag"] == tags["de"]
        r = await me.patch("/v1/me/preferences", json={"locale": "fr-CA"})
        assert r.status_code == 200, r.text
        r = await me.get("/v1/me/categories", headers={"If-None-Match": tags["de"]})
        assert r.status_code == 200, r.text
        assert _shown(r.json())[0][1] == "Réponses" and r.headers["etag"] != tags["de"]


def _with(**fields) -> dict:
    return {"categories": [{"id": "social", "label": "Replies", **fields}]}


BAD = [
    (_with(labels={"de_AT": "x"}), "categories[0].labels.de_AT"),  # not a BCP 47 tag
    (_with(labels={"i-klingon": "x"}), "categories[0].labels.i-klingon"),
    (_with(labels={"de": "x", "DE": "y"}), "categories[0].labels.DE"),  # twice
    (_with(labels={"x" * 36: "x"}), "categories[0].labels." + "x" * 36),
    (_with(labels={"": "x"}), "categories[0].labels."),
    (_with(labels={"de": ""}), "categories[0].labels[...]"),  # a label is never empty
    (_with(labels={"de": "L" * 129}), "categories[0].labels[...]"),
    (_with(labels={"de": "a\nb"}), "categories[0].labels[...]"),
    (_with(labels={"de": 7}), "categories[0].labels[...]"),
    (_with(labels={"de": None}), "categories[0].labels[...]"),
    (_with(labels={f"x-{i:04d}": "x" for i in range(33)}), "categories[0].labels"),
    (_with(labels=["de"]), "categories[0].labels"),
    (_with(labels="Antworten"), "categories[0].labels"),
    (_with(descriptions={"de-AT": "d" * 513}), "categories[0].descriptions[...]"),
    (_with(descriptions={"de": "\x00"}), "categories[0].descriptions[...]"),
    (_with(descriptions={"de-": "x"}), "categories[0].descriptions.de-"),
    (_with(descriptions={"fr": "x", "Fr": "y"}), "categories[0].descriptions.Fr"),
    (_with(descriptions={f"x-{i:04d}": "" for i in range(33)}), "categories[0].descriptions"),
    ({"categories": [{"id": "ci", "label": "A"},
                     {"id": "b", "label": "B", "labels": {"de\n": "x"}}]},
     "categories[1].labels.de\n"),
    (_with(label_de="x"), "categories[0].label_de"),
]


@pytest.mark.parametrize(("body", "field"), BAD)
async def test_bad_translations_are_refused_and_change_nothing(each_store, body, field):
    server = each_store
    async with server.http() as http, server.http(await server.token("alice")) as me:
        assert (await http.put("/v1/categories", json=DECLARED)).status_code == 200
        before = (await me.get("/v1/me/categories", params={"locale": "de"})).json()
        r = await http.put("/v1/categories", json=body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == field, r.text
        assert (await http.get("/v1/categories")).json() == DECLARED
        assert (await me.get("/v1/me/categories", params={"locale": "de"})).json() == before
        # the most there may be
        most = _with(labels={f"x-{i:04d}": "L" * 128 for i in range(32)},
                     descriptions={f"x-{i:04d}": "d" * 512 for i in range(32)})
        assert (await http.put("/v1/categories", json=most)).status_code == 200


@pytest.mark.parametrize("locale", ["de_AT", "", "i-klingon", "x" * 36, "de\n", "de-",
                                    "<script>"])
async def test_a_bad_locale_on_the_users_read_is_a_422(each_store, locale):
    server = each_store
    async with server.http() as http, server.http(await server.token("alice")) as me:
        for doc in ({"categories": []}, DECLARED):  # whether or not it has translations
            assert (await http.put("/v1/categories", json=doc)).status_code == 200
            r = await me.get("/v1/me/categories", params={"locale": locale})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == "locale"
