"""Wire models and their validation rules (msgspec Structs).

These are the shapes of docs/design.md §4.  ``forbid_unknown_fields`` is on for every
request body: a typo such as ``"tittle"`` is a 422, not silently dropped.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# One rule for every identifier a client chooses, whichever store keeps it:
# no control characters (C0 and DEL).  PostgreSQL cannot hold U+0000 in a
# text column and SQLite can, so the rule is applied here, before either
# sees the value; free text (title, body, data) keeps any character, NUL
# included, since it is stored inside the encoded notification.
# ``\Z`` not ``$``: ``$`` also matches before a trailing newline ("alice\n").
NO_CONTROL_RE = r"^[^\x00-\x1f\x7f]*\Z"
USER_RE = r"^[^\x00-\x1f\x7f]{1,128}\Z"
TOPIC_RE = r"^[A-Za-z0-9_.:\-]{1,128}\Z"
_USER = re.compile(USER_RE)
_TOPIC = re.compile(TOPIC_RE)
# App ids appear in broker channel names, where ":" is the separator.
_APP_ID = re.compile(r"^[a-z0-9_\-]{1,64}\Z")

UserId = Annotated[str, Meta(pattern=USER_RE, min_length=1, max_length=128)]
TopicName = Annotated[str, Meta(pattern=TOPIC_RE, min_length=1, max_length=128)]
CATEGORY_RE = r"^[A-Za-z0-9_.:\-]{1,64}\Z"
Category = Annotated[str, Meta(pattern=CATEGORY_RE)]
# In a user's preferences "*" stands for every category they do not name
# (tidings.core.quiet.plan): how "no e-mail at all" is said, by the user or
# by an unsubscribe link (tidings/core/unsubscribe.py).  It cannot be a
# category's name.  Its in_app switch stays on (Service.put_preferences):
# in-app mutes are rows per category that a publish reads in SQL.
ALL_CATEGORIES = "*"
PrefsCategory = Annotated[str, Meta(pattern=r"^(\*|[A-Za-z0-9_.:\-]{1,64})\Z")]
MAX_PREF_CATEGORIES = 256  # named categories; "*" comes on top
GroupKey = Annotated[str, Meta(max_length=256, pattern=NO_CONTROL_RE)]
Actor = Annotated[str, Meta(max_length=128, pattern=NO_CONTROL_RE)]
Tag = Annotated[str, Meta(max_length=64, pattern=NO_CONTROL_RE)]
# A notification's link: empty, a path on the app's site ("/p/42", resolved
# against the e-mail base URL), or an absolute http(s) URL.  Other schemes
# (javascript:, data:, file:) are refused: clients render this as a link.
URL_RE = (r"^(|/[^\x00-\x1f\x7f]*"
          r"|[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x1f\x7f/?#]+[^\x00-\x1f\x7f]*)\Z")
Url = Annotated[str, Meta(max_length=2048, pattern=URL_RE)]
# an id in a body (read/seen/archive): unknown ones are skipped, but a
# control character is refused like any identifier's
BodyId = Annotated[str, Meta(max_length=32, pattern=NO_CONTROL_RE)]
Priority = Literal["low", "normal", "high", "urgent"]
# How clients show a body: as it is, or as the Markdown subset of docs/protocol.md
# (the inbox element and the e-mail's HTML part render it; the text stays the source).
Format = Annotated[Literal["text", "markdown"], Meta(
    description='How clients show the body: "text" as it is, "markdown" as the Markdown '
                "subset of docs/protocol.md (paragraphs, line breaks, emphasis, code, "
                "http(s) and mailto links, lists); the body stays the source.")]
State = Literal["unseen", "seen", "read", "archived"]

# A BCP 47 language tag (tidings/core/locales.py): the langtag or private-use
# production of RFC 5646 §2.1, case-insensitive, 35 characters at most (the
# buffer its §4.4.1 says every well-formed tag of interest fits in).
_LANGTAG = (r"(?:[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4,8})"  # language
            r"(?:-[A-Za-z]{4})?"  # script
            r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"  # region
            r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"  # variants
            r"(?:-[0-9A-WYZa-wyz](?:-[A-Za-z0-9]{2,8})+)*"  # extensions
            r"(?:-[Xx](?:-[A-Za-z0-9]{1,8})+)?")  # private use
LOCALE_RE = rf"^(?=.{{2,35}}\Z)(?:{_LANGTAG}|[Xx](?:-[A-Za-z0-9]{{1,8}})+)\Z"
MAX_LOCALES = 32  # overrides per notification


class LocaleText(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One language's text of a notification (tidings/core/locales.py): each
    field given replaces the notification's own for users of that language,
    one left out keeps it.  The limits are the notification's own."""

    title: Annotated[str, Meta(max_length=1024)] | None = None
    body: Annotated[str, Meta(max_length=8192)] | None = None
    url: Url | None = None


# The tags are checked by tidings.core.locales.check, whose 422 names the tag
# (msgspec's would quote the whole expression).
Locales = Annotated[dict[str, LocaleText], Meta(max_length=MAX_LOCALES)]


def valid_user(user: str) -> bool:
    return isinstance(user, str) and bool(_USER.match(user))


def valid_app_id(app_id: str) -> bool:
    return isinstance(app_id, str) and bool(_APP_ID.match(app_id))


_CATEGORY = re.compile(CATEGORY_RE)
_TAG = re.compile(r"^[^\x00-\x1f\x7f]{1,64}\Z")


def valid_category(category: str) -> bool:
    return isinstance(category, str) and bool(_CATEGORY.match(category))


def valid_tag(tag: str) -> bool:
    """A tag to filter by: one a publish could have set (Tag), not empty."""
    return isinstance(tag, str) and bool(_TAG.match(tag))


def valid_topic(topic: str) -> bool:
    return isinstance(topic, str) and bool(_TOPIC.match(topic))


# How deep a notification's ``data`` may nest, itself the first level.  It is
# the one field of free JSON; the decoder takes what its stack allows, some
# 980 levels, and a notification nested nearly that deep broke whatever
# encoded or decoded it on a deeper stack (a 500 at the publish, or on every
# read of it for good).  Far below that, and far above what an app sends.
DATA_MAX_DEPTH = 32


def data_depth_ok(data: dict) -> bool:
    """Whether ``data`` nests at most DATA_MAX_DEPTH levels (objects and
    arrays; a decoded JSON value holds no other containers)."""
    level: list = [data]
    for _ in range(DATA_MAX_DEPTH):
        level = [child for value in level
                 for child in (value.values() if type(value) is dict else value)
                 if type(child) is dict or type(child) is list]
        if not level:
            return True
    return False


class Target(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    users: Annotated[list[UserId], Meta(min_length=1)] | None = None
    topic: TopicName | None = None
    all: bool = False


class PublishRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    to: Target
    category: Category = "default"
    title: Annotated[str, Meta(max_length=1024)] = ""
    body: Annotated[str, Meta(max_length=8192)] = ""
    format: Format = "text"
    url: Url = ""
    data: dict[str, Any] = {}
    priority: Priority = "normal"
    tags: Annotated[list[Tag], Meta(max_length=32)] = []
    group_key: GroupKey | None = None
    actor: Actor | None = None
    locales: Locales | None = None
    deliver_at: datetime | None = None
    ttl: Annotated[int, Meta(ge=1, le=365 * 24 * 3600)] | None = None


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    notifications: Annotated[list[msgspec.Raw], Meta(min_length=1)]


class PatchRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    title: Annotated[str, Meta(max_length=1024)] | None = None
    body: Annotated[str, Meta(max_length=8192)] | None = None
    format: Format | None = None
    url: Url | None = None
    data: dict[str, Any] | None = None
    priority: Priority | None = None
    tags: Annotated[list[Tag], Meta(max_length=32)] | None = None
    # replaces the notification's overrides as a whole ({}: none any more)
    locales: Locales | None = None
    # only before it fires: moves a scheduled notification (docs/delivery.md)
    deliver_at: datetime | None = None


class Notification(msgspec.Struct, omit_defaults=True):
    """A stored notification as clients see it."""

    id: str
    category: str
    created_at: str
    title: str = ""
    body: str = ""
    format: Format = "text"
    url: str = ""
    data: dict[str, Any] = {}
    priority: str = "normal"
    tags: list[str] = []
    group_key: str | None = None
    actor: str | None = None
    # its text in other languages (tidings/core/locales.py), as published;
    # what a user is shown has them resolved: ``locale`` names the one taken
    locales: dict[str, LocaleText] | None = None
    locale: str | None = None
    # ``expires_at`` stays last: the gateway finds it in a body's last bytes
    # (tidings/core/events.py, EXPIRES)
    deliver_at: str | None = None
    expires_at: str | None = None


class StateRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    ids: list[BodyId] | None = None  # cap: Limits.ids_max
    all: bool = False


# How far ahead a snooze may end (docs/inbox.md#snooze): a quarter, the
# horizon of "remind me later", kept well inside retention.
SNOOZE_MAX_AHEAD = 90 * 86400


class SnoozeRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[BodyId]  # cap: Limits.ids_max
    until: datetime  # ISO 8601 with a zone, in the future, at most SNOOZE_MAX_AHEAD ahead


class UnsnoozeRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[BodyId]  # cap: Limits.ids_max


class ChannelPrefs(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    in_app: bool = True
    webhook: bool = True
    push: bool = True
    email: bool = True


class QuietHours(msgspec.Struct, forbid_unknown_fields=True):
    start: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")]
    end: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")]
    tz: Annotated[str, Meta(max_length=64)] = "UTC"


HHMM = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")]
DIGEST_MIN_EVERY = 60
DIGEST_MAX_EVERY = 7 * 86400


class DigestRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How one channel of one category is batched (tidings/core/digest.py):
    ``{"every": 3600}`` (at most once an hour), ``{"daily": "09:00", "tz":
    "Europe/Paris"}`` (once a day at that wall-clock time), or ``{}``: each
    notification on its own (a user's way to override an app's default)."""

    every: Annotated[int, Meta(ge=DIGEST_MIN_EVERY, le=DIGEST_MAX_EVERY)] | None = None
    daily: HHMM | None = None
    tz: Annotated[str, Meta(max_length=64)] = "UTC"


# {category: {channel: rule}}; the channels are the outbound ones (not in_app)
DigestChannels = dict[Literal["webhook", "push", "email"], DigestRule]
Digests = Annotated[dict[Category, DigestChannels], Meta(max_length=256)]


class Preferences(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    categories: Annotated[dict[PrefsCategory, ChannelPrefs],
                          Meta(max_length=MAX_PREF_CATEGORIES + 1)] = {}
    quiet_hours: QuietHours | None = None
    digests: Digests = {}
    # the language the user reads notifications in (tidings/core/locales.py)
    locale: Annotated[str, Meta(max_length=35)] | None = None  # a BCP 47 tag (preferences.check)


MAX_APP_CATEGORIES = 256  # as many as a user's preferences may name
Label = Annotated[str, Meta(min_length=1, max_length=128, pattern=NO_CONTROL_RE)]
Description = Annotated[str, Meta(max_length=512, pattern=NO_CONTROL_RE)]


class CategoryInfo(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One category an app declares (``PUT /v1/categories``): its key (the
    ``category`` its notifications carry), what a preferences screen calls
    it, and optionally a line saying what it sends."""

    id: Category
    label: Label
    description: Description = ""
    # the label and description in other languages, by BCP 47 tag: what a
    # user of that language is shown instead (tidings/core/locales.py); the
    # tags are checked by tidings/api/categories.py, whose 422 names the tag
    labels: Annotated[dict[str, Label], Meta(max_length=MAX_LOCALES)] | None = None
    descriptions: Annotated[dict[str, Description], Meta(max_length=MAX_LOCALES)] | None = None


class Categories(msgspec.Struct, forbid_unknown_fields=True):
    """The app's categories, in the order a preferences screen lists them;
    each id once (checked by tidings/api/categories.py)."""

    categories: Annotated[list[CategoryInfo], Meta(max_length=MAX_APP_CATEGORIES)]


class SubscribersRequest(msgspec.Struct, forbid_unknown_fields=True):
    users: Annotated[list[UserId], Meta(min_length=1)]
    action: Literal["add", "remove"] = "add"


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    ttl: Annotated[int, Meta(ge=1)] = 3600


class RevokeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One token of the user to revoke (``POST /v1/users/{user}/tokens/revoke``
    with a body): by its ``jti`` or by the token itself, exactly one of the
    two (tidings/service/revocations.py).  No body revokes every token of
    the user."""

    jti: UserId | None = None  # the rule of user ids: 1-128, no control characters
    token: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A new API key of the caller's app (``POST /v1/keys``): what it may do
    (tidings.core.auth.SCOPES), a name that says what it is for, and when it
    stops working (ISO 8601 with a zone; checked by tidings/service/keys.py)."""

    scopes: Annotated[list[Literal["publish", "read", "admin"]], Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_CONTROL_RE)] | None = None
    expires_at: datetime | None = None


class KeyRotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A rotation of one API key (``POST /v1/keys/{prefix}/rotate``): how
    long, in seconds, the key it replaces still works (0 to 30 days, 24 h by
    default; checked by tidings/service/keys.py)."""

    grace: Annotated[int, Meta(ge=0)] | None = None


class RotateRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A rotation of the app's signing secret (``POST /v1/signing-secret/rotate``):
    how long, in seconds, the secret it replaces is still taken for tokens (0
    to the limit token_max_ttl, its default; checked by tidings/service/apps.py)."""

    overlap: Annotated[int, Meta(ge=0)] | None = None


# How long a drain or a shed of a node's streams spreads their ends over
# (tidings/gateway/shedding.py): 30 s by default, at most an hour.
SPREAD_DEFAULT = 30.0
SPREAD_MAX = 3600.0
Spread = Annotated[float, Meta(ge=0, le=SPREAD_MAX)]


class DrainRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A drain of this node (``POST /v1/node/drain``, the body optional): the
    seconds its open streams' ends are spread over (0: all at once)."""

    over: Spread = SPREAD_DEFAULT


class ShedRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A shed of this node's streams (``POST /v1/node/shed``): the fraction of
    the open streams to end (0 to 1), and the seconds to spread it over."""

    fraction: Annotated[float, Meta(ge=0, le=1)]
    over: Spread = SPREAD_DEFAULT


class Position(msgspec.Struct):
    """Where counts were read: the user's head seq and the app's feed head."""

    seq: int
    feed: int


class Counts(msgspec.Struct):
    unread: int
    unseen: int
    at: Position  # docs/protocol.md, "Counts and the badge"


class Group(msgspec.Struct):
    """A group entry's summary (aggregation by group_key; docs/protocol.md)."""

    id: str  # the entry's stable id: the notification that opened it
    key: str
    count: int  # notifications merged, exact
    actor_count: int  # distinct actors (see tidings.core.aggregate)
    actors: list[str]  # up to 3, most recent first
    latest_at: str  # created_at of the newest member
    first_id: str  # the oldest member


class InboxItem(msgspec.Struct, omit_defaults=True):
    id: str
    state: str
    notification: Notification
    seq: int | None = None  # personal items; feed items have none
    feed: int | None = None
    group: Group | None = None  # a group entry's summary
