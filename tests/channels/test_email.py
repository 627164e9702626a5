"""E-mail through a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import re
import ssl
from html.parser import HTMLParser

import msgspec
import pytest
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.channels.memqueue import MemoryQueue, make_job
from tests.channels.peers import Mailbox, smtp_server
from tidings.channels.email import EmailChannel, EmailConfig, category_of, render
from tidings.channels.worker import Lane, Worker
from tidings.core.models import Notification
from tidings.core.retry import RetryPolicy
from tidings.core.unsubscribe import Link, link_secret, verify

HOSTILE = {
    "id": "01HZX3Y2K8M0000000000000AB", "category": "social",
    "created_at": "2024-06-01T12:00:00.000+00:00",
    "title": "<script>alert(1)</script> & \"friends\"\r\nBcc: victim@evil.test",
    "body": "Line one <b>bold?</b>\nLine two & more",
    "url": "/p/42?a=1&b=<2>",
}


def mail_job(to="alice@acme.test", notification=None, **kw):
    return make_job("email", {"to": to, "name": "Alice Example"}, notification=notification,
                    **kw)


def parse(envelope) -> email.message.EmailMessage:
    return email.message_from_bytes(envelope.original_content, policy=email.policy.default)


# -- rendering -----------------------------------------------------------------------


def test_render_escapes_everything_in_html():
    r = render(Notification(**HOSTILE), base_url="https://acme.test/app/")
    assert "<script>" not in r.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.html
    assert "&amp; &quot;friends&quot;" in r.html
    assert "Line one &lt;b&gt;bold?&lt;/b&gt;<br>\nLine two &amp; more" in r.html
    assert 'href="https://acme.test/p/42?a=1&amp;b=&lt;2&gt;"' in r.html
    # the text part is plain text: no escaping, the link resolved
    assert "Line one <b>bold?</b>\nLine two & more" in r.text
    assert "https://acme.test/p/42?a=1&b=<2>" in r.text
    # a title cannot add header lines
    assert "\n" not in r.subject and "\r" not in r.subject
    assert r.subject.startswith("<script>alert(1)</script> & \"friends\" Bcc:")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<b>x</b>",
                                 "JaVaScRiPt:alert(1)", "/relative/without/base"])
def test_only_web_links_are_rendered(url):
    r = render(Notification(id="x", category="c", created_at="t", title="T", url=url))
    assert "href" not in r.html and url not in r.text


def test_render_defaults_and_prefix():
    r = render(Notification(id="x", category="c", created_at="t"), subject_prefix="[Acme] ")
    assert r.subject == "[Acme] New notification"
    assert r.text == "New notification\n"
    assert "<p>" not in r.html


async def test_the_words_the_message_adds_are_in_the_recipients_language():
    untitled = {"id": "N1", "category": "c", "created_at": "t", "url": "https://acme.test/1"}
    job = make_job("email", {"to": "hans@acme.test", "locale": "de-CH"},
                   notification=untitled)
    msg = parse(await _sent(EmailConfig(subject_prefix="[Acme] "), job))
    assert msg["Subject"] == "[Acme] Neue Benachrichtigung"
    assert msg.get_body(("plain",)).get_content().startswith("Neue Benachrichtigung\r\n")
    # the notification's own text is in no known language: tidings' words say theirs
    page = msg.get_body(("html",)).get_content()
    assert '<html><head>' in page and '<h1 lang="de">Neue Benachrichtigung</h1>' in page
    assert '<a href="https://acme.test/1" lang="de">Öffnen</a>' in page
    assert msg["Content-Language"] is None
    fr = render(Notification(**untitled), locale="fr")
    assert (fr.subject, '" lang="fr">Ouvrir</a>' in fr.html) == ("Nouvelle notification", True)
    other = render(Notification(**untitled), locale="ja")  # no such language: English
    assert (other.subject, '">Open</a>' in other.html) == ("New notification", True)
    assert "lang=" not in other.html  # English for want of Japanese: nothing said


async def test_a_message_in_a_known_language_says_it():
    """The override the text took is the message's language (Content-Language,
    ``<html lang>``); tidings' words in another say theirs."""
    note = {"id": "N1", "category": "c", "created_at": "t", "title": "Invoice",
            "url": "https://acme.test/1", "locales": {"ja": {"title": "請求書"}}}
    job = make_job("email", {"to": "ken@acme.test", "locale": "ja-JP"}, notification=note)
    msg = parse(await _sent(EmailConfig(), job))
    page = msg.get_body(("html",)).get_content()
    assert (msg["Subject"], msg["Content-Language"]) == ("請求書", "ja")
    assert '<html lang="ja"><head>' in page and "<h1>請求書</h1>" in page
    # no Japanese among tidings' words: "Open" is English, and says so
    assert '<a href="https://acme.test/1" lang="en">Open</a>' in page
    de = render(Notification(id="N2", category="c", created_at="t", body="bereit",
                             url="https://acme.test/2", locale="de"), locale="de-CH")
    assert (de.lang, de.subject) == ("de", "Neue Benachrichtigung")
    assert '<html lang="de">' in de.html and "<h1>Neue Benachrichtigung</h1>" in de.html
    assert '<a href="https://acme.test/2">Öffnen</a>' in de.html  # the message's language
    plain = render(Notification(id="N3", category="c", created_at="t", title="Hi"))
    assert (plain.lang, "lang=" in plain.html) == ("", False)


def test_long_subjects_are_cut():
    r = render(Notification(id="x", category="c", created_at="t", title="x" * 5000))
    assert len(r.subject) == 200


# -- sending ----------------------------------------------------------------------------


async def test_delivers_a_multipart_message():
    box = Mailbox()
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False,
                                      sender="Acme <notify@acme.test>",
                                      base_url="https://acme.test/"),
                          clock=lambda: 1717243200.0)
        result = await ch.send(mail_job(id="01J0.email.0", notification=HOSTILE))
    assert result.outcome == "delivered"
    (env,) = box.messages
    assert env.mail_from == "notify@acme.test" and env.rcpt_tos == ["alice@acme.test"]
    msg = parse(env)
    assert msg["From"] == "Acme <notify@acme.test>"
    assert msg["To"] == "Alice Example <alice@acme.test>"
    assert msg["Message-ID"] == "<01J0.email.0@acme.test>"  # the same on every retry
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Date"] == "Sat, 01 Jun 2024 12:00:00 +0000"
    assert msg["Bcc"] is None  # the injected header line stayed inside the subject
    assert msg["Subject"].startswith("<script>alert(1)</script>")
    assert msg.get_content_type() == "multipart/alternative"
    # SMTP carries CRLF line ends; compare with the LF the notification used
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert text.startswith('<script>alert(1)</script> & "friends" Bcc: victim@evil.test\n\n')
    assert "Line one <b>bold?</b>\nLine two & more" in text
    assert "https://acme.test/p/42?a=1&b=<2>" in text
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "<b>bold?</b>" not in html


# -- List-Unsubscribe (RFC 2369, RFC 8058) ------------------------------------------------

SECRET = link_secret(b"pepper" * 6)


async def _sent(config: EmailConfig, job, secret: bytes = SECRET):
    box = Mailbox()
    async with smtp_server(box) as port:
        ch = EmailChannel(msgspec.structs.replace(config, host="127.0.0.1", port=port,
                                                  starttls=False), link_secret=secret)
        assert (await ch.send(job)).outcome == "delivered"
    (env,) = box.messages
    return env


async def test_every_message_carries_a_one_click_unsubscribe_link():
    config = EmailConfig(public_url="https://notify.acme.test/tidings/")
    env = await _sent(config, mail_job(user="team/ann é"))
    msg = parse(env)
    value = msg["List-Unsubscribe"]
    prefix = "<https://notify.acme.test/tidings/v1/unsubscribe/"
    assert value.startswith(prefix) and value.endswith(">"), value
    token = value[len(prefix):-1]
    assert verify(SECRET, token) == Link("acme", "team/ann é", "social", "email")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # One header line, the URL whole: not folded, not RFC 2047-encoded (the
    # email package does both to a long header unless told not to).
    raw = env.original_content.decode()
    (line,) = [x for x in raw.split("\r\n") if x.startswith("List-Unsubscribe:")]
    assert line == f"List-Unsubscribe: {value}"
    assert "=?" not in line and len(line) <= 998


async def test_no_public_url_no_unsubscribe_header():
    for config, secret in ((EmailConfig(), SECRET),
                           (EmailConfig(public_url="https://notify.acme.test"), b"")):
        msg = parse(await _sent(config, mail_job(), secret))
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        assert msg["Message-ID"]  # the rest as ever


async def test_a_link_too_long_for_a_header_line_is_left_out():
    """A user id of 128 four-byte characters with a long public URL: the
    message goes without the header rather than with a broken one."""
    config = EmailConfig(public_url="https://notify.acme.test/" + "p" * 300)
    msg = parse(await _sent(config, mail_job(user="🎉" * 128)))
    assert msg["List-Unsubscribe"] is None
    assert msg["Subject"] == "user_17 replied"


def _digest(*categories: str) -> Notification:
    items = [{"id": f"01HZX3Y2K8M00000000000000{i}", "category": c, "title": f"n{i}"}
             for i, c in enumerate(categories)]
    return Notification(id="digest-abc", category="digest", created_at="t",
                        title=f"{len(items)} new notifications",
                        data={"digest": {"count": len(items), "items": items}})


def test_a_digests_link_names_its_category_or_all():
    assert category_of(Notification(**HOSTILE)) == "social"
    assert category_of(_digest("social", "social")) == "social"
    assert category_of(_digest("social", "billing")) is None  # every category
    assert category_of(_digest()) is None


def test_public_url_is_checked_when_the_settings_are_read():
    for bad in ("notify.acme.test", "ftp://notify.acme.test", "https://", "https://a/?x=1",
                "https://a/#f", "https://a b", "https://a:99999", "https://[::1"):
        with pytest.raises(ValueError, match="public_url"):
            EmailConfig(public_url=bad)
    assert EmailConfig(public_url="http://127.0.0.1:8080").public_url == "http://127.0.0.1:8080"


async def test_unicode_survives():
    note = dict(HOSTILE, title="Überraschung 🎉", body="ça marche — 日本語")
    box = Mailbox()
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        assert (await ch.send(mail_job(notification=note))).outcome == "delivered"
    msg = parse(box.messages[0])
    assert msg["Subject"] == "Überraschung 🎉"
    assert "ça marche — 日本語" in msg.get_body(("plain",)).get_content()


@pytest.mark.parametrize("reply,outcome", [("550 5.1.1 no such user", "failed"),
                                           ("451 4.3.0 try again later", "retry")])
async def test_refused_recipients(reply, outcome):
    box = Mailbox(refuse={"ghost@acme.test": reply})
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        result = await ch.send(mail_job("ghost@acme.test"))
    assert result.outcome == outcome and result.status == int(reply[:3])
    assert reply[4:] in result.detail
    assert box.messages == []


@pytest.mark.parametrize("to", ["not-an-address", "a@b@c", "alice@acme.test\r\nBcc: x@y.z",
                                42, None, "x" * 250 + "@acme.test"])
async def test_unusable_addresses_fail_without_connecting(to):
    ch = EmailChannel(EmailConfig(host="127.0.0.1", port=9))  # nothing listens on port 9
    result = await ch.send(mail_job(to))
    assert result.outcome == "failed"


async def test_a_server_that_is_down_means_retry():
    box = Mailbox()
    async with smtp_server(box) as port:
        pass
    ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False, timeout=5))
    result = await ch.send(mail_job())
    assert result.outcome == "retry"


async def test_bad_notification_json_is_permanent():
    job = msgspec.structs.replace(mail_job(), notification=b"{not json")
    result = await EmailChannel(EmailConfig()).send(job)
    assert result.outcome == "failed" and "JSON" in result.detail


# -- STARTTLS and credentials -------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (the client trusts it as its CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(d / "cert.pem"), str(d / "key.pem")


def server_tls(tls_files) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*tls_files)
    return ctx


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"tidings" and auth_data.password == b"s3cret"
    # handled=False: aiosmtpd answers the 535 itself on failure
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("password,outcome", [("s3cret", "delivered"), ("wrong", "retry")])
async def test_starttls_with_credentials(tls_files, password, outcome):
    box = Mailbox()
    kw = dict(tls_context=server_tls(tls_files), require_starttls=True,
              authenticator=authenticator, auth_required=True, auth_require_tls=True)
    async with smtp_server(box, **kw) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=True,
                                      ca_file=tls_files[0], username="tidings",
                                      password=password))
        result = await ch.send(mail_job())
    assert result.outcome == outcome
    if outcome == "delivered":
        assert len(box.messages) == 1
    else:  # bad credentials are configuration: retried, so a fix lets the mail through
        assert result.status == 535 and box.messages == []


async def test_an_untrusted_certificate_is_not_accepted(tls_files):
    box = Mailbox()
    async with smtp_server(box, tls_context=server_tls(tls_files), require_starttls=True) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=True))
        result = await ch.send(mail_job())
    assert result.outcome == "retry" and box.messages == []


async def test_a_server_that_requires_starttls_refuses_plain_mail(tls_files):
    box = Mailbox()
    async with smtp_server(box, tls_context=server_tls(tls_files), require_starttls=True) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        result = await ch.send(mail_job())
    assert result.outcome == "retry" and box.messages == []


# -- through the worker -------------------------------------------------------------------


async def test_worker_delivers_mail_and_dead_letters_a_refused_address():
    box = Mailbox(refuse={"ghost@acme.test": "550 no such user"})
    queue = MemoryQueue()
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        queue.put(mail_job(id="m-1"))
        queue.put(mail_job("ghost@acme.test", id="m-2"))
        lane = Lane(ch, concurrency=2, policy=RetryPolicy(base=0.01, cap=0.02, max_attempts=2))
        async with Worker(queue, [lane], poll_interval=0.02):
            await queue.wait(lambda q: q.completed and q.dead_letters)
    assert [j.id for j in queue.completed] == ["m-1"]
    assert [(j.id, reason) for j, reason in queue.dead_letters] == [
        ("m-2", "recipient refused: 550 no such user")]
    assert len(box.messages) == 1


def test_a_digest_lists_its_notifications_escaped_with_their_web_links():
    from tidings.core import digest

    notes = [msgspec.json.encode(n) for n in (
        {"id": "N1", "category": "social", "title": "<b>ann</b> liked it", "url": "/p/1"},
        {"id": "N2", "category": "social", "title": "bob", "url": "javascript:alert(1)"},
    )]
    jid = digest.job_id("app", "alice", "email", "every:3600", "N1", 0)
    note = msgspec.json.decode(digest.body(jid, notes, 0.0), type=Notification)
    out = render(note, base_url="https://acme.test")
    assert out.subject == "2 new notifications"
    assert out.text == ("2 new notifications\n\n- <b>ann</b> liked it\n  https://acme.test/p/1\n"
                        "- bob\n")
    assert ('<li><a href="https://acme.test/p/1">&lt;b&gt;ann&lt;/b&gt; liked it</a></li>\n'
            "<li>bob</li>") in out.html
    assert "javascript" not in out.html and "<b>" not in out.html
    # a notification of the category "digest" that is not one renders as usual
    plain = Notification(id="N3", category="digest", created_at="x", title="Weekly summary",
                         data={"digest": {"items": [{"title": "x"}]}})
    assert "<ul>" not in render(plain).html


async def test_control_characters_of_the_free_text_stay_out_of_the_mail():
    """A title or body may hold any character (NUL included); the message
    carries none but TAB and line ends, so a strict server takes it."""
    note = dict(HOSTILE, title="a\x00b\x1b[31mred\x7f", body="one\x00\r\ntwo\tthree\x08")
    out = render(Notification(**note))
    assert out.subject == "ab[31mred"
    assert out.text == "ab[31mred\n\none\ntwo\tthree\n"
    for part in (out.subject, out.text, out.html):
        assert not any(ord(c) < 0x20 and c not in "\t\n" or c == "\x7f" for c in part), part
    box = Mailbox()
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        assert (await ch.send(mail_job(notification=note))).outcome == "delivered"
    raw = box.messages[0].original_content
    assert b"\x00" not in raw and b"\x1b" not in raw and b"\x7f" not in raw
    assert parse(box.messages[0])["Subject"] == "ab[31mred"


# -- Markdown bodies --------------------------------------------------------------------

MARKDOWN = ("Build **812** failed on `main`, *again*.\nSee the log:\n\n"
            "- [the log](https://ci.example/812?a=1&b=2)\n- [mail us](mailto:ci@acme.test)\n\n"
            "1. retry\n2. fix")


class _Markup(HTMLParser):
    """Every tag and attribute of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def markup(doc: str) -> _Markup:
    parser = _Markup()
    parser.feed(doc)
    parser.close()
    return parser


# the tags of the mail's frame and of the subset, and what attributes each may have
ALLOWED = {"html": set(), "head": set(), "meta": {"charset"}, "body": set(), "h1": set(),
           "p": set(), "br": set(), "strong": set(), "em": set(), "code": set(), "ul": set(),
           "ol": {"start"}, "li": set(), "a": {"href", "title"}}


def assert_inert(doc: str) -> None:
    """Only the subset's tags, no attribute but those, every link a web or mail link."""
    for tag, attrs in markup(doc).tags:
        assert tag in ALLOWED and set(attrs) <= ALLOWED[tag], (tag, attrs, doc)
        if tag == "a":
            assert re.match(r"(https?|mailto):", attrs["href"] or ""), (attrs, doc)


def test_a_markdown_body_becomes_the_html_part_and_stays_the_source_in_the_text():
    note = Notification(id="x", category="ci", created_at="t", title="CI", body=MARKDOWN,
                        format="markdown")
    r = render(note)
    assert ("<p>Build <strong>812</strong> failed on <code>main</code>, <em>again</em>.<br>\n"
            "See the log:</p>") in r.html
    assert ('<ul>\n<li><a href="https://ci.example/812?a=1&amp;b=2">the log</a></li>\n'
            '<li><a href="mailto:ci@acme.test">mail us</a></li>\n</ul>\n'
            "<ol>\n<li>retry</li>\n<li>fix</li>\n</ol>") in r.html
    assert "<p><p>" not in r.html
    assert_inert(r.html)
    assert r.text == f"CI\n\n{MARKDOWN}\n"   # the source, as written
    # the same body as text stays text
    plain = render(Notification(id="x", category="ci", created_at="t", body=MARKDOWN))
    assert "<strong>" not in plain.html and "**812**" in plain.html


@pytest.mark.parametrize("body", [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "![pixel](https://track.example/p.png)",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=https://evil.example></iframe><style>*{}</style>",
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x](data:text/html,<script>alert(1)</script>)",
    "[x](vbscript:msgbox(1))",
    "[x](/relative)",
    '[x](https://ok.example/" onclick="alert(1))',
    "[x](https://ok.example 'a\" onmouseover=\"alert(1)')",
    "[x][1]\n\n[1]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "&#x3C;script&#x3E;alert(1)&#x3C;/script&#x3E;",
    "**<b onclick=alert(1)>bold</b>**\n- <svg onload=alert(1)>",
])
def test_hostile_markdown_renders_no_active_content(body):
    r = render(Notification(id="x", category="c", created_at="t", title="T", body=body,
                            format="markdown"))
    assert_inert(r.html)
    assert r.text == f"T\n\n{body}\n"


async def test_a_markdown_notification_is_mailed_with_its_html_part():
    note = {"id": "01HZX3Y2K8M0000000000000AB", "category": "ci", "title": "CI",
            "created_at": "2024-06-01T12:00:00.000+00:00", "format": "markdown",
            "body": "**812** <script>alert(1)</script> [x](javascript:alert(1))"}
    box = Mailbox()
    async with smtp_server(box) as port:
        ch = EmailChannel(EmailConfig(host="127.0.0.1", port=port, starttls=False))
        assert (await ch.send(mail_job(notification=note))).outcome == "delivered"
    msg = parse(box.messages[0])
    html = msg.get_body(("html",)).get_content()
    assert "<strong>812</strong> &lt;script&gt;" in html
    assert_inert(html)
    assert note["body"] in msg.get_body(("plain",)).get_content()
