"""E-mail over SMTP (``aiosmtplib``): one message per job, plain text + HTML.

The message is ``multipart/alternative`` with a text part and an HTML part
rendered from the notification's title, body and url.  Everything from the
notification is escaped in the HTML part (``html.escape``), only ``http``
and ``https`` links are rendered (a ``javascript:`` url is dropped), and
line breaks are stripped from the subject so a title cannot inject headers.
A body published with ``"format": "markdown"`` becomes the HTML part through
markdown-it-py, held to the subset the inbox element renders (paragraphs,
line breaks, emphasis, code, lists, links): raw HTML comes out escaped, a
link that is not ``http``, ``https`` or ``mailto`` stays text, and images are
not a rule, so nothing in the mail is fetched.  The text part is the
Markdown source.  The few words the message adds ("New notification",
"Open") are in the recipient's language (tidings/core/phrases.py).  A
message in a known language says it, in ``Content-Language`` (RFC 3282) and
``<html lang>``: a notification's, the override its text took; a digest's,
the recipient's when tidings has words for it (see :func:`render`).
``Message-ID`` is derived from the job id, so a retried job carries the same
id and mail systems can drop the duplicate; ``Auto-Submitted:
auto-generated`` (RFC 3834) keeps vacation responders quiet.

With ``EmailConfig.public_url`` set, every message carries ``List-Unsubscribe:
<public_url/v1/unsubscribe/TOKEN>`` (RFC 2369) and ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058): the token names the app, the user,
the category (a digest of several: none, meaning all) and the channel,
signed by tidings/core/unsubscribe.py; tidings/api/unsubscribe.py serves it.

Failures: a 5xx refusal of the recipient or of the content fails the job for
good; 4xx replies, timeouts and connection or TLS errors are retried.
Refusals that are about the configuration rather than the message (bad
credentials, sender refused, STARTTLS unavailable) are retried too, so that
fixing the configuration lets the queued mail through; the dead-letter list
catches them if nobody does.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime
from urllib.parse import urljoin, urlsplit

import aiosmtplib
import msgspec
from markdown_it import MarkdownIt

from tidings.channels.base import Job, Result
from tidings.config import EmailConfig  # defined with the other settings
from tidings.core import locales, unsubscribe
from tidings.core.digest import is_digest
from tidings.core.models import Notification
from tidings.core.phrases import language, phrase, row

__all__ = ["EmailChannel", "EmailConfig", "Rendered", "category_of", "render"]

log = logging.getLogger("tidings.channels.email")

_MAX_SUBJECT = 200
# RFC 5322 §2.1.1: no header line is longer (the unsubscribe link must fit in one)
_MAX_LINE = 998
UNSUBSCRIBE_PATH = "/v1/unsubscribe/"


class Rendered(msgspec.Struct, frozen=True):
    subject: str
    text: str
    html: str
    lang: str = ""  # the language the message is in, "" when not known (Content-Language)


def _link(url: str, base_url: str | None) -> str | None:
    if not url:
        return None
    if base_url:
        url = urljoin(base_url, url)
    # Only web links: a "javascript:" or "data:" url in a mail is an attack.
    return url if urlsplit(url).scheme in ("http", "https") else None


_LINK_SCHEMES = ("http", "https", "mailto")


class _Subset(MarkdownIt):
    """Markdown as docs/protocol.md defines it for a body: CommonMark's
    paragraphs, hard line breaks at every newline (a body is typed like
    text), emphasis, code spans, lists and links, and nothing else: no raw
    HTML, no images, no headings; what no rule takes is shown as written."""

    def __init__(self) -> None:
        super().__init__("zero", {"html": False, "breaks": True})
        self.enable(["list", "emphasis", "backticks", "link", "newline", "escape"])

    def validateLink(self, url: str) -> bool:
        return urlsplit(url).scheme.lower() in _LINK_SCHEMES


_markdown = _Subset()


# Control characters but TAB and LF, and DEL: a notification's free text may
# hold any (docs/security.md#input), a message may not hold NUL (RFC 2045
# §2.8, RFC 5322 §3.5), strict servers refuse one that does, and a mail
# reader would show the others as garbage or terminal escapes.
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])


def _text(value: str) -> str:
    return value.translate(_CONTROLS)


def _lang(tag: str, within: str) -> str:
    """The ``lang`` attribute of an element whose text is in ``tag`` ("":
    not known) inside a message in ``within`` ("": not known): none when
    they are the same."""
    if tag.lower() == within.lower():
        return ""
    return f' lang="{html.escape(tag, quote=True)}"'


def _words(locale: str, within: str) -> str:
    """The ``lang`` attribute of tidings' own words, said for ``locale``,
    inside a message in ``within``: their row of tidings/core/phrases.py
    when it is not the message's; in a message of no known language, only
    when the recipient's language has a row (not English for want of one)."""
    words = language(locale) if within else row(locale)
    if words is None or row(within) == words:
        return ""
    return f' lang="{words}"'  # a key of PHRASES


def render(note: Notification, base_url: str | None = None, subject_prefix: str = "",
           locale: str = "") -> Rendered:
    """The subject, plain-text and HTML bodies of one notification; the
    words the message adds ("New notification" for no title, "Open") are in
    the language of ``locale`` (tidings/core/phrases.py).

    The message's language (``lang``, the HTML's ``<html lang>``) is the one
    its text is known to be in: a notification's, the override its text took
    (its resolved ``locale``); a digest's, the recipient's language when
    tidings has words for it (its title is in it).  Otherwise "" and no
    ``lang``, as the own text of a notification may be in any.  Inside, what
    is in another language says it: tidings' words, and each item a digest
    lists (the override it took, ``lang=""`` for its own text in a message
    of a known language: tidings is not told that text's language)."""
    digest = is_digest(note.id)
    lang = (row(locale) or "") if digest else (note.locale or "")
    # A title is one line: collapsing its whitespace also keeps CR/LF out of
    # the Subject header, where they would start new header lines.
    own = " ".join(_text(note.title).split())
    title = own or phrase("untitled", locale)
    subject = f"{subject_prefix}{title}"[:_MAX_SUBJECT]
    link = _link(note.url, base_url)
    body = _text(note.body)
    text_parts = [title]
    if body:
        text_parts.append(body)
    if link:
        text_parts.append(link)
    text = "\n\n".join(text_parts) + "\n"
    if note.format == "markdown":
        body_html = _markdown.render(body).strip()
    else:
        body_html = "<br>\n".join(html.escape(line) for line in body.splitlines())
    items = _digest_items(note)
    if items:  # a digest: each notification a line, linked to its url when it has one
        lines, rows = [], []
        for item in items:
            line = " ".join(_text(str(item.get("title") or item.get("body") or "")).split())
            href = _link(str(item.get("url") or ""), base_url)
            lines.append(f"- {line}" + (f"\n  {href}" if href else ""))
            shown = html.escape(line)
            tag = item.get("locale")
            li = f"<li{_lang(tag if isinstance(tag, str) else '', lang)}>"
            rows.append(f'{li}<a href="{html.escape(href, quote=True)}">{shown}</a></li>'
                        if href else f"{li}{shown}</li>")
        text = "\n\n".join([title, "\n".join(lines)]) + "\n"
        body_html = "<ul>\n" + "\n".join(rows) + "\n</ul>"
    root = f'<html lang="{html.escape(lang, quote=True)}">' if lang else "<html>"
    heading = "<h1>" if own or digest else f"<h1{_words(locale, lang)}>"  # "New notification"
    parts = [
        "<!DOCTYPE html>",
        f'{root}<head><meta charset="utf-8"></head><body>',
        f"{heading}{html.escape(title)}</h1>",
    ]
    if body_html:
        block = items or note.format == "markdown"  # already its own paragraphs or list
        parts.append(body_html if block else f"<p>{body_html}</p>")
    if link:
        parts.append(f'<p><a href="{html.escape(link, quote=True)}"{_words(locale, lang)}>'
                     f'{html.escape(phrase("open", locale))}</a></p>')
    parts.append("</body></html>")
    return Rendered(subject=subject, text=text, html="\n".join(parts) + "\n", lang=lang)


def _digest_items(note: Notification) -> list[dict]:
    """The notifications a digest (tidings/core/digest.py) carries; [] for
    any other notification."""
    if not is_digest(note.id):
        return []
    found = note.data.get("digest")
    items = found.get("items") if isinstance(found, dict) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def category_of(note: Notification) -> str | None:
    """The category an unsubscribe link of this message turns e-mail off
    for: the notification's; for a digest, its items' when they share one,
    else None (all of them)."""
    if not is_digest(note.id):
        return note.category
    found = {item.get("category") for item in _digest_items(note)}
    only = found.pop() if len(found) == 1 else None
    return only if isinstance(only, str) else None


class _Verbatim(str):
    """A header written as it is.  The email package folds a long
    unstructured header into RFC 2047 encoded-words, which would turn
    List-Unsubscribe's URL into something no mail reader follows (RFC 2369
    §2: the URL stays whole)."""

    name: str

    def __new__(cls, name: str, value: str) -> _Verbatim:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


class EmailChannel:
    """Sends :class:`Job`s whose destination is ``{"to": addr, "name"?: str}``.

    ``link_secret`` signs the unsubscribe links (tidings/core/unsubscribe.py:
    ``link_secret(pepper)``); messages carry one when it is given and
    ``config.public_url`` is set."""

    name = "email"

    def __init__(self, config: EmailConfig, *, clock: Callable[[], float] = time.time,
                 link_secret: bytes = b""):
        self.config = config
        self.clock = clock
        self.link_secret = link_secret
        self._domain = config.sender.rpartition("@")[2].rstrip(">").strip() or "localhost"

    def unsubscribe_url(self, job: Job, note: Notification) -> str | None:
        """The one-click unsubscribe URL of ``job``'s message; None without
        ``public_url`` (or a key), or when it would not fit in a header line."""
        base = self.config.public_url
        if not base or not self.link_secret:
            return None
        link = unsubscribe.Link(job.app, job.user, category_of(note), self.name)
        try:
            token = unsubscribe.issue(self.link_secret, link)
        except ValueError:  # an app or user id no store holds: not from a publish
            return None
        url = f"{base.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"
        if len(f"List-Unsubscribe: <{url}>") > _MAX_LINE:
            log.warning("message %s goes without List-Unsubscribe: the link would be %d "
                        "characters (a user id of many non-ASCII characters, or a long "
                        "public_url)", job.id, len(url))
            return None
        return url

    def message(self, job: Job, note: Notification) -> EmailMessage:
        """The message for ``job``; ValueError for an unusable address."""
        to, name = job.destination.get("to"), job.destination.get("name") or ""
        if not isinstance(to, str) or not isinstance(name, str):
            raise ValueError("destination needs a string 'to'")
        if any(c in to + name for c in "\r\n\x00") or to.count("@") != 1 or len(to) > 254:
            raise ValueError(f"not an e-mail address: {to!r}")
        local, _, domain = to.partition("@")
        rendered = render(note, self.config.base_url, self.config.subject_prefix,
                          job.destination.get("locale", ""))  # the language it was sent in
        msg = EmailMessage()
        msg["From"] = self.config.sender
        msg["To"] = Address(display_name=name, username=local, domain=domain)
        msg["Subject"] = rendered.subject
        msg["Date"] = format_datetime(datetime.fromtimestamp(self.clock(), UTC))
        msg["Message-ID"] = f"<{job.id}@{self._domain}>"
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Tidings-Id"] = job.id
        url = self.unsubscribe_url(job, note)
        if url is not None:
            msg["List-Unsubscribe"] = _Verbatim("List-Unsubscribe", f"<{url}>")
            msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(rendered.text)
        msg.add_alternative(rendered.html, subtype="html")
        if rendered.lang:  # the language it is in (RFC 3282); after set_content,
            msg["Content-Language"] = rendered.lang  # which drops Content-*
        return msg

    async def send(self, job: Job) -> Result:
        try:
            note = msgspec.json.decode(
                locales.resolve(job.notification, job.destination.get("locale", "")),
                type=Notification)
        except msgspec.DecodeError as exc:
            return Result.failed(f"bad notification JSON: {exc}")
        try:
            msg = self.message(job, note)
        except (ValueError, TypeError) as exc:
            return Result.failed(str(exc))
        c = self.config
        try:
            await aiosmtplib.send(
                msg, hostname=c.host, port=c.port, username=c.username, password=c.password,
                use_tls=c.tls, start_tls=c.starttls, validate_certs=c.validate_certs,
                cert_bundle=c.ca_file, timeout=c.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            if codes and all(500 <= code < 600 for code in codes):
                return Result.failed(f"recipient refused: {detail}", codes[0])
            return Result.retry(f"recipient deferred: {detail}", codes[0] if codes else None)
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            if 500 <= exc.code < 600:
                return Result.failed(f"refused: {exc.code} {exc.message}", exc.code)
            return Result.retry(f"deferred: {exc.code} {exc.message}", exc.code)
        except aiosmtplib.SMTPResponseException as exc:  # auth, sender, HELO: configuration
            return Result.retry(f"{type(exc).__name__}: {exc.code} {exc.message}", exc.code)
        except (aiosmtplib.SMTPException, OSError) as exc:  # connection, timeout, TLS
            return Result.retry(f"{type(exc).__name__}: {exc}")
        return Result.delivered(250)

    async def aclose(self) -> None:
        pass  # one connection per message: nothing is kept open
