"""The hub: which streams are open on this node, and what reaches them.

The hub subscribes to a broker channel per user with open streams on this
node, per topic those users follow, and per app (broadcasts) -- reference
counted, so a node's broker subscriptions track exactly its audience.

When the broker reconnects after an outage (Redis restarted), messages
published meanwhile may be lost: the hub then catches every open stream up
from the store, the source of truth (tidings/gateway/sweep.py).

A networked broker can also lose a message with no outage to show for it: a
batch that failed, a full publish queue (broker/base.py, at most once).  A
stream fills a gap in its seqs when the next event shows one, but a user
who gets nothing more would wait until they reconnect.  So every
``REPAIR_INTERVAL`` the hub reads the stream heads of the users with a
stream here (``Store.stream_heads``, ``REPAIR_CHUNK`` users a query) and,
``REPAIR_GRACE`` later, catches up from the store any stream still behind
the head it read (``_repair``): a personal entry whose broker message was
lost reaches its devices within about ``REPAIR_INTERVAL + REPAIR_GRACE``
(docs/delivery.md).  The grace keeps messages that were merely on their way
from costing a store read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from tidings import tracing
from tidings.broker.base import (
    Broker,
    Feed,
    Frames,
    Membership,
    Message,
    MutesChanged,
    Personal,
    Personals,
    all_channel,
    topic_channel,
    user_channel,
)
from tidings.core import events
from tidings.core.cursor import decide_recovery
from tidings.core.locales import has_locales, resolve, resolve_frame, resolve_payload
from tidings.core.stats import Stats
from tidings.core.tracking import DeliveryTracker
from tidings.errors import (
    CLOSE_RESYNC,
    CLOSE_SHUTDOWN,
    CLOSE_TOO_MANY,
    TooManyConnections,
    Unavailable,
)
from tidings.gateway.cache import UserCache
from tidings.gateway.recount import Expiries, Recounts
from tidings.gateway.replay import Replays
from tidings.gateway.shedding import Shedding
from tidings.gateway.stream import StreamEnds
from tidings.gateway.sweep import OutageSweep

if TYPE_CHECKING:
    from tidings.config import Settings
    from tidings.gateway.stream import Flushable, Stream
    from tidings.store.base import Counts, Entry, Store

log = logging.getLogger("tidings.gateway")

# Personal events delivered here before their broker copy came back (deliver_here).
HERE_MAX = 10_000
# The repair pass (see the module docstring): personal entries whose broker
# message was lost reach their devices within about 3 s.
REPAIR_INTERVAL = 2.0
REPAIR_GRACE = 1.0
REPAIR_CHUNK = 1000  # users per stream_heads query
# How long a stream's start waits for the broker to confirm its subscriptions
# (Broker.settle, one round trip to Redis) before it starts without (begin).
SETTLE_WAIT = 2.0
# A publish without a ttl costs the gateway one bounded search for it (events.expiry)
_EXPIRES, _EXPIRES_TAIL = events.EXPIRES, events.EXPIRES_TAIL


class Hub:
    def __init__(self, store: Store, broker: Broker, settings: Settings):
        self.store = store
        self.broker = broker
        self.settings = settings
        self.draining = False  # set by drain() and shedding.drain(): no new streams
        self.shedding = Shedding(self)  # a drain that keeps the node up, a shed
        # counts, memberships and first inbox pages of users with a stream here
        self.cache = UserCache(settings.cache)
        # Plain per-app counters (tidings.core.stats); /metrics and the dashboard read them.
        self.metrics = Stats()
        self.ends = StreamEnds()  # streams by the second their token ends
        self.users: dict[tuple[str, str], set[Stream]] = {}
        # the same sets by app, then user: a publish's recipients are looked
        # up by user alone, without a (app, user) tuple each
        self._by_app: dict[str, dict[str, set[Stream]]] = {}
        self.topics: dict[tuple[str, str], set[Stream]] = {}
        self.apps: dict[str, set[Stream]] = {}
        # Delivery tracking: "delivered" counts users, not streams, so the
        # hub keeps how many distinct users each feed channel reaches here
        # (the broadcast path then pays one lookup per message, not one per
        # connection).
        self.tracking = DeliveryTracker()
        self._app_users: dict[str, int] = {}
        self._topic_users: dict[tuple[str, str], dict[str, int]] = {}
        self._dirty: list[Flushable] = []
        self._flush_handle: asyncio.Handle | None = None
        # (app stats, sent_at) of the notifications routed during this tick: their
        # publish -> device latency is observed once the tick's frames are written.
        self._sent: list = []
        self._resync: asyncio.Task | None = None
        self.sweep: OutageSweep | None = None  # the last one (tests, bench)
        # (app, user, epoch, seq) handed to streams here ahead of the broker's copy
        self._here: dict[tuple[str, str, str, int], None] = {}
        broker.on_reconnect(self._on_broker_reconnect)
        self._repair_task: asyncio.Task | None = None
        self.repaired = 0  # streams caught up by the repair pass (tests, logs)
        self.unsettled = 0  # streams started before the broker confirmed their channel
        self._unsettled_logged = 0.0
        # (app, user) -> the head a pass last caught the user up to: an entry
        # that cannot be replayed (retracted, expired) is not read again and again
        self._repaired_to: dict[tuple[str, str], int] = {}
        self._repairs: set[asyncio.Task] = set()  # catch-ups running (a task needs a reference)
        # Counts that change with no event of their own (recount.py): feed
        # retractions, topic memberships, and the ttls of what users here count
        self.expiries = Expiries(self._expired)
        self.recounts = Recounts(self, store, self._noted)
        self.replays = Replays(store)  # paged, a bounded number of reads at a time
        # (app, user) -> MutesChanged messages seen while the user had a
        # stream here: a stream whose start read the mutes while one came
        # reads them once more (begin)
        self._mutes_seen: dict[tuple[str, str], int] = {}

    # -- registry -------------------------------------------------------------
    @property
    def connections(self) -> int:
        return sum(len(s) for s in self.users.values())

    def check_capacity(self, app: str, user: str) -> None:
        if self.draining:
            # a device reconnecting here during a drain would only be cut again
            raise Unavailable("this node is draining; reconnect", retry_after=1)
        streams = self.users.get((app, user))
        limit = self.settings.limits.max_connections_per_user
        if streams is not None and len(streams) >= limit:
            raise TooManyConnections(f"at most {limit} open streams per user", retry_after=5)

    def attach(self, stream: Stream) -> None:
        key = (stream.app, stream.user)
        if self.draining:
            # past check_capacity before the drain began (an SSE response
            # sends its headers in between): refused as it would be now
            stream.close(CLOSE_SHUTDOWN)
            return
        streams = self.users.get(key)
        if streams is None:
            streams = self.users[key] = set()
            self._by_app.setdefault(stream.app, {})[stream.user] = streams
            self.broker.subscribe(user_channel(*key), self._on_user)
            self._app_users[stream.app] = self._app_users.get(stream.app, 0) + 1
        elif len(streams) >= self.settings.limits.max_connections_per_user:
            stream.close(CLOSE_TOO_MANY)
            return
        streams.add(stream)
        if self._repair_task is None and not self.broker.inline:
            # the in-process broker loses nothing: no repair needed
            self._repair_task = asyncio.get_running_loop().create_task(self._repair_loop())
        app_streams = self.apps.get(stream.app)
        if app_streams is None:
            app_streams = self.apps[stream.app] = set()
            self.broker.subscribe(all_channel(stream.app), self._on_all)
        app_streams.add(stream)
        self.metrics.opened += 1

    def detach(self, stream: Stream) -> None:
        key = (stream.app, stream.user)
        streams = self.users.get(key)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self.users[key]
            by_user = self._by_app[stream.app]
            del by_user[stream.user]
            if not by_user:
                del self._by_app[stream.app]
            self.cache.gone(key)
            self.expiries.forget(key)
            self._mutes_seen.pop(key, None)
            self.broker.unsubscribe(user_channel(*key))
            left = self._app_users.get(stream.app, 1) - 1
            if left:
                self._app_users[stream.app] = left
            else:
                self._app_users.pop(stream.app, None)
        app_streams = self.apps.get(stream.app)
        if app_streams is not None:
            app_streams.discard(stream)
            if not app_streams:
                del self.apps[stream.app]
                self.broker.unsubscribe(all_channel(stream.app))
        for topic in list(stream.topics):
            self._leave_topic(stream, topic)

    def _join_topic(self, stream: Stream, topic: str) -> None:
        key = (stream.app, topic)
        streams = self.topics.get(key)
        if streams is None:
            streams = self.topics[key] = set()
            self.broker.subscribe(topic_channel(*key), self._on_topic)
        if stream not in streams:
            users = self._topic_users.setdefault(key, {})
            users[stream.user] = users.get(stream.user, 0) + 1
        streams.add(stream)
        if type(stream.topics) is not set:
            stream.topics = set()
        stream.topics.add(topic)

    def _leave_topic(self, stream: Stream, topic: str) -> None:
        key = (stream.app, topic)
        if type(stream.topics) is set:  # the shared empty frozenset holds none
            stream.topics.discard(topic)
        streams = self.topics.get(key)
        if streams is None or stream not in streams:
            return
        streams.discard(stream)
        users = self._topic_users.get(key)
        if users is not None:
            left = users.get(stream.user, 1) - 1
            if left:
                users[stream.user] = left
            else:
                users.pop(stream.user, None)
        if not streams:
            del self.topics[key]
            self._topic_users.pop(key, None)
            self.broker.unsubscribe(topic_channel(*key))

    # -- coalesced flushing (streams with a synchronous writer) ---------------
    def mark_dirty(self, stream: Flushable) -> None:
        """Flush ``stream`` at the end of this loop tick, with everything
        else that reached it in the meantime: one write per stream per tick."""
        self._dirty.append(stream)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for stream in dirty:
            stream.flush()
        if self._sent:
            sent, self._sent = self._sent, []
            now = time.time()
            for st, sent_at in sent:
                st.latency.observe(now - sent_at)

    def _routed(self, app: str, n: int, sent_at: float) -> None:
        """Count one notification routed to ``n`` streams of ``app``; once per
        broker message, whatever ``n`` is."""
        st = self.metrics.app(app)
        st.delivered += n
        if sent_at:
            self._sent.append((st, sent_at))
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    # -- stream start and gap filling -----------------------------------------
    async def begin(self, stream: Stream, cursor) -> None:
        """hello, then the replay the cursor asks for, then live.  The stream
        holds every live event until ``finish_sync`` (none goes ahead of
        hello, nor of a replayed notification it is about)."""
        now = time.time()
        key = (stream.app, stream.user)
        for topic in await self.user_topics(*key):
            self._join_topic(stream, topic)
        # Subscribed in Redis before the head is read: anything committed
        # after the read then arrives live.  A broker that does not confirm
        # (a frozen Redis: no reset, no answer) would hold hello until it
        # runs again: the stream starts without, and the repair pass brings
        # it what the broker does not (the cache does not trust the channel).
        try:
            async with asyncio.timeout(SETTLE_WAIT):  # a timer, not a task per stream
                await self.broker.settle()
        except TimeoutError:
            self.unsettled += 1
            if now - self._unsettled_logged >= 10:  # once per burst, not per stream
                self._unsettled_logged = now
                log.warning("the broker did not confirm a subscription within %.0f s; "
                            "streams start without (%d so far)", SETTLE_WAIT, self.unsettled)
        else:
            if key in self.users:
                self.cache.live(key)  # from now on every change to this user reaches us
        seen = self._mutes_seen.get(key, 0)
        head = await self.store.stream_head(stream.app, stream.user, now)
        self.set_muted(key, head.muted)
        self.set_locale(key, head.locale)
        if self._mutes_seen.get(key, 0) != seen:
            # they changed while being read, and their reread may have been
            # done before this read was: read them (and the counts) again
            self.recounts.add(stream.app, (stream.user,), mutes=True)
        limits = self.settings.limits
        recovery = decide_recovery(
            cursor, epoch=head.epoch, head_seq=head.head_seq, oldest_seq=head.oldest_seq,
            head_feed=head.head_feed, oldest_feed=head.oldest_feed, replay_max=limits.replay_max,
        )
        stream.epoch = head.epoch
        if recovery is not None and recovery.ok:
            stream.last_seq, stream.last_feed = recovery.replay_from_seq, recovery.replay_from_feed
        else:
            stream.last_seq, stream.last_feed = head.head_seq, head.head_feed
        stream.drop_held_counts()  # hello's counts are read from here on
        # hello's counts hold everything up to where they were read, and the
        # stream sends what comes after where it starts: counts read at or
        # past that point, so that nothing falls between the two.  A store
        # read always is (it comes after the head's); a cached one, filled
        # before a commit whose broker message is still on its way, may not.
        counts = await self.counts(*key, now)
        if counts.seq < stream.last_seq or counts.feed < stream.last_feed:
            counts = await self.store.counts(stream.app, stream.user, now)
            self._noted(key, counts)
        start = f"{stream.epoch}:{stream.last_seq}:{stream.last_feed}"
        stream.push(events.hello_frame(stream.epoch, start, counts), start)
        missed = 0
        if recovery is not None and recovery.ok:
            missed = await self.catch_up(stream)
        if recovery is not None:
            stream.push(events.recovered_frame(recovery.ok, missed))
        stream.finish_sync()

    async def counts(self, app: str, user: str, now: float) -> Counts:
        """The user's counts and where they were read (``Store.counts``), from
        the cache while the user has a stream here.  A cached answer is as
        exact as a fresh one, only read earlier: its position says so.  The
        store reads the user's mutes in the counts' own statement, never the
        ones the streams here hold: those may be older than the revision the
        counts are read at (an in-app mute committed, its ``MutesChanged``
        still on its way), and counts of the old mutes at the new revision
        would outlast the right ones on a device (docs/protocol.md)."""
        key = (app, user)
        hit = self.cache.get("counts", key)
        if hit is not None:
            self._noted(key, hit)
            return hit
        version = self.cache.version(key)
        value = await self.store.counts(app, user, now)
        self.cache.put("counts", key, version, value)
        self._noted(key, value)
        return value

    def muted_of(self, key: tuple[str, str]) -> frozenset[str] | None:
        """The categories the user muted in-app, as their streams here hold
        them (None: no stream here has read them; the store reads them)."""
        for s in self.users.get(key, ()):
            if s.muted is not None:
                return s.muted
        return None

    def set_muted(self, key: tuple[str, str], muted: frozenset[str]) -> None:
        """The user's in-app mutes, just read: every stream of theirs here
        skips live feed items of those categories from now on."""
        changed = False
        for s in self.users.get(key, ()):
            if s.muted is not None and s.muted != muted:
                changed = True
            s.muted = muted
        if changed:  # counts and pages cached meanwhile were read with the old ones
            self.cache.user_changed(key)

    def locale_of(self, key: tuple[str, str]) -> str | None:
        """The user's preferences' locale as their streams here hold it
        (None: no stream here has read it)."""
        for s in self.users.get(key, ()):
            if s.muted is not None and not s.pinned:
                return s.locale
        return None

    def set_locale(self, key: tuple[str, str], locale: str) -> None:
        """The user's locale, just read from their preferences: every stream
        of theirs here not pinned to its own shows notifications in it."""
        for s in self.users.get(key, ()):
            if not s.pinned:
                s.locale = locale

    async def user_topics(self, app: str, user: str) -> list[str]:
        key = (app, user)
        hit = self.cache.get("topics", key)
        if hit is not None:
            return hit
        version = self.cache.version(key)
        value = await self.store.user_topics(app, user)
        self.cache.put("topics", key, version, value)
        return value

    async def catch_up(self, stream: Stream) -> int:
        """Send what the store has past the stream's position, a page at a
        time (replay.py); return how many."""
        limit = self.settings.limits.replay_max
        # A replayed item counts as delivered unless another stream of the
        # user on this node is already past it (it had it live, or earlier).
        others = [o for o in self.users.get((stream.app, stream.user), ())
                  if o is not stream and not o.closed and o.epoch == stream.epoch]
        sent = reached = 0

        async def send(page: list[Entry]) -> None:
            nonlocal sent, reached
            reached += await self._replay_page(stream, page, others)
            sent += len(page)

        if not await self.replays.run(stream, limit, send):
            stream.close(CLOSE_RESYNC)  # too far behind to fill live: reconnect and decide
            return 0
        if reached:
            self.metrics.track(stream.app, "in_app", "delivered", reached)
        self.metrics.app(stream.app).replayed += sent
        return sent

    async def _replay_page(self, stream: Stream, page: list[Entry], others: list[Stream]) -> int:
        """Queue one page of a replay (waiting for room as it goes); return
        how many of its items no other stream of the user here had."""
        # what the replay brings past the stream's counts is counted by the
        # device until it expires
        expiries = [x for e in page if (x := events.expiry(e.body)) is not None]
        if expiries and (stream.app, stream.user) in self.users:
            self.expiries.note((stream.app, stream.user), min(expiries))
        add, reached, locale = self.tracking.add, 0, stream.locale
        for e in page:
            if not stream.has_room():
                await stream.wait_room()
            if e.feed is None:
                assert e.seq is not None  # a personal entry has a seq, a feed item a feed offset
                body = resolve(e.body, locale)  # as it is without locales
                if e.key is not None:  # back from a snooze: marked so (docs/inbox.md#snooze)
                    body = events.resurfaced(body)
                stream.emit_personal(e.seq, body if e.group is None
                                     else events.with_group(body, e.group))
                had = any(o.last_seq >= e.seq for o in others)
            else:
                stream.emit_feed(e.feed, events.feed_frame(e.feed, resolve(e.body, locale)))
                had = any(o.last_feed >= e.feed for o in others)
            if not had:
                add(stream.app, e.id, "in_app", "delivered")
                reached += 1
        return reached

    # -- after a broker outage -------------------------------------------------
    def _on_broker_reconnect(self) -> None:
        """The broker is back and resubscribed; what it carried during the
        outage may be lost.  Catch every open stream up from the store."""
        self.cache.clear()
        if self._resync is not None:
            self._resync.cancel()  # a newer outage: start the sweep over
        self.sweep = OutageSweep(self, self.store, self._noted)
        self._resync = asyncio.get_running_loop().create_task(self.sweep.run())

    def follow(self, key: tuple[str, str], topics: set[str]) -> bool:
        """Make the user's streams here follow exactly ``topics`` (read from
        the store); whether one joined a topic (settle the broker before
        reading what its channel carries)."""
        joined = False
        for s in tuple(self.users.get(key, ())):
            for topic in topics - s.topics:
                self._join_topic(s, topic)
                joined = True
            for topic in s.topics - topics:
                self._leave_topic(s, topic)
        return joined

    # -- personal entries whose broker message was lost -----------------------
    async def _repair_loop(self) -> None:
        while True:
            await asyncio.sleep(REPAIR_INTERVAL)
            try:
                await self._repair()
            except Unavailable:
                pass  # the store is away: the next pass
            except Exception:
                log.exception("checking the streams' heads failed")

    async def _repair(self) -> int:
        """One pass: read the heads of the users with a stream here, wait
        ``REPAIR_GRACE``, then catch up every stream still behind the head
        read.  Returns how many streams it caught up."""
        behind: list[tuple[str, str, str, int]] = []
        for app, by_user in list(self._by_app.items()):
            names = list(by_user)
            for i in range(0, len(names), REPAIR_CHUNK):
                heads = await self.store.stream_heads(app, names[i:i + REPAIR_CHUNK])
                for user, (epoch, seq) in heads.items():
                    if self._repaired_to.get((app, user), -1) < seq and any(
                            s.epoch == epoch and s.last_seq < seq
                            for s in self.users.get((app, user), ())):
                        behind.append((app, user, epoch, seq))
        users = self.users
        self._repaired_to = {k: v for k, v in self._repaired_to.items() if k in users}
        if not behind:
            return 0
        await asyncio.sleep(REPAIR_GRACE)  # what was on its way has arrived
        caught = 0
        for app, user, epoch, seq in behind:
            for s in tuple(users.get((app, user), ())):
                if s.epoch == epoch and s.last_seq < seq and not s.closed:
                    self._repaired_to[app, user] = seq
                    # its own task, as a gap fill is: a stream that waits for
                    # room in its queue holds up no other
                    task = asyncio.get_running_loop().create_task(s.resync())
                    self._repairs.add(task)
                    task.add_done_callback(self._repairs.discard)
                    caught += 1
        if caught:
            self.repaired += caught
            log.warning("%d streams were behind their user's head (broker messages lost); "
                        "caught up from the store", caught)
        return caught

    # -- broker handlers (on the loop thread) ---------------------------------
    def deliver_here(self, app: str, msg: Personals) -> None:
        """This node just committed ``msg`` and is about to send it over a
        networked broker: hand it to the recipients' streams here at once,
        without the broker's round trip, for the users the cache knows are
        live here (their channel subscription has settled, so the broker's
        copy will follow).  That copy is then dropped by ``_on_user`` (by
        app, user, epoch and seq), so each delivery counts once.  Streams
        take each seq once and in order whatever the path
        (Stream.on_personal): another node's earlier seq arriving later is a
        gap they fill from the store, as after a lost message."""
        live = self.cache.live_users(app)
        if not live:
            return
        mine = [d for d in msg.deliveries if d.user in live]
        if not mine:
            return
        here = self._here
        for d in mine:
            here[(app, d.user, d.epoch, d.seq)] = None
        while len(here) > HERE_MAX:  # copies the broker lost: forget the oldest
            del here[next(iter(here))]
        self._on_personals(app, Personals(msg.body, mine, msg.sent_at, msg.trace))

    def _personal(self, app: str, streams: set[Stream], msg: Personal, user: str) -> None:
        self._routed(app, len(streams), msg.sent_at)
        self.tracking.reached((app, msg.body))  # one user, however many streams
        if _EXPIRES in msg.body:  # a ttl (the body may end with a group entry's summary)
            self.expiries.note((app, user), events.payload_expiry(msg.body))
        if has_locales(msg.body):  # each stream its language
            body = msg.body
            for s in tuple(streams):
                s.on_personal(msg.epoch, msg.seq, resolve_payload(body, s.locale))
            return
        if msg.trace:  # tracing is on: the same writes inside spans
            tracing.deliver(msg.trace, app, "personal", tuple(streams),
                            lambda s: s.on_personal(msg.epoch, msg.seq, msg.body))
            return
        for s in tuple(streams):
            s.on_personal(msg.epoch, msg.seq, msg.body)

    def _on_user(self, channel: str, msg: Message) -> None:
        app, _, user = channel.split(":", 2)
        streams = self.users.get((app, user))
        if not streams:
            return
        if type(msg) is Personal:
            if self._here and self._here.pop((app, user, msg.epoch, msg.seq), 1) is None:
                # delivered here already (deliver_here), and the cache was told
                # at the commit: a read filled since then is still right
                return
            self.cache.user_changed((app, user))
            self._personal(app, streams, msg, user)
            return
        self.cache.user_changed((app, user))
        if type(msg) is Frames:
            _frames_to(streams, msg.frames)
            for f in msg.frames:  # a group entry rebuilt may now expire sooner
                self.expiries.note((app, user), events.frame_expiry(f))
            if msg.recount:
                self.recounts.add(app, (user,))
        elif type(msg) is Membership:
            for s in tuple(streams):
                if msg.added:
                    self._join_topic(s, msg.topic)
                else:
                    self._leave_topic(s, msg.topic)
            # the topic's feed items now count for the user, or no longer do
            self.recounts.add(app, (user,))
        elif type(msg) is MutesChanged:
            # read the mutes (and the locale) again, then the counts, which they change
            self._mutes_seen[app, user] = self._mutes_seen.get((app, user), 0) + 1
            self.recounts.add(app, (user,), mutes=True)

    def _on_all(self, channel: str, msg: Message) -> None:
        app = channel[:-2]
        if type(msg) is Personals:
            self._on_personals(app, msg)
            return
        self.cache.app_changed(app)
        self._to_group(app, self.apps.get(app), msg, self._app_users.get(app, 0), ("*", app, ""))

    def _on_personals(self, app: str, msg: Personals) -> None:
        """One publish's personal entries (the in-process broker's ``Personals``):
        what one ``Personal`` per recipient would do, in one pass."""
        users = self._by_app.get(app)
        if not users:
            return
        body, trace = msg.body, msg.trace
        # an entry back from a snooze: the notification, then its mark
        note, mark = events.unmarked(body)
        if has_locales(note):  # each stream its language: resolved once per language
            resolved: dict[str, bytes] | None = {}
        else:
            resolved = None
        here: list[str] = []  # the recipients with a stream here
        # the streams reached beyond one per recipient here: counted apart
        # so that a recipient of one stream adds no int (routed: len(here) + more)
        more = 0
        deliveries = msg.deliveries
        if resolved is None and not trace:
            # the usual publish, its loop without the cases it has none of:
            # under write fan-out this runs once per recipient
            tail = events.notification_tail(body)
            for d in deliveries:
                streams = users.get(d.user)
                if not streams:
                    continue
                here.append(d.user)
                if d.group is None and len(streams) == 1:
                    (s,) = streams  # unpacked first: a stream cut now leaves the set
                    s.on_personal(d.epoch, d.seq, body, tail)
                else:
                    more += _personal_to(streams, d, body, tail) - 1
        else:  # locales, or tracing on
            for d in deliveries:
                streams = users.get(d.user)
                if not streams:
                    continue
                here.append(d.user)
                more += len(streams) - 1
                epoch, seq = d.epoch, d.seq
                if resolved is not None:
                    _localized(streams, epoch, seq, note, mark, d.group, resolved)
                    continue
                # tracing is on: the usual writes, inside spans
                payload = body if d.group is None else events.with_group(body, d.group)
                tracing.deliver(trace, app, "personal", tuple(streams),
                                lambda s: s.on_personal(epoch, seq, payload))  # noqa: B023
        if here:
            self.cache.users_changed(app, here)
            self._routed(app, len(here) + more, msg.sent_at)
            self.tracking.reached_users((app, body, len(here)))  # users, not streams
            if note.find(_EXPIRES, len(note) - _EXPIRES_TAIL) >= 0:  # a ttl (events.expiry)
                expires = events.expiry(note)
                for user in here:
                    self.expiries.note((app, user), expires)

    def _on_topic(self, channel: str, msg: Message) -> None:
        app, _, topic = channel.split(":", 2)
        self.cache.app_changed(app)
        key = (app, topic)
        self._to_group(app, self.topics.get(key), msg, len(self._topic_users.get(key, ())),
                       ("t", app, topic))

    def _to_group(self, app: str, streams, msg: Message, users: int,
                  channel: tuple[str, str, str]) -> None:
        """A feed channel's message to its ``streams`` here; ``channel``
        names it among the expiries: ``("*", app, "")`` or ``("t", app, topic)``."""
        if not streams:
            return
        if type(msg) is Feed:
            self._routed(app, len(streams), msg.sent_at)
            self.tracking.reached_feed((app, msg.frame, users))
            offset, frame, category = msg.offset, msg.frame, msg.category
            if frame.find(_EXPIRES, len(frame) - _EXPIRES_TAIL - 1) >= 0:  # a ttl
                self.expiries.note(channel, events.expiry(frame, trailing=1))
            if has_locales(frame):  # each stream its language, resolved once per language
                frames: dict[str, bytes] = {}
                for s in tuple(streams):
                    mine = frames.get(s.locale)
                    if mine is None:
                        mine = frames[s.locale] = resolve_frame(frame, s.locale)
                    s.on_feed(offset, mine, category)
                return
            if msg.trace:
                tracing.deliver(msg.trace, app, "feed", tuple(streams),
                                lambda s: s.on_feed(offset, frame, category))
                return
            for s in tuple(streams):
                s.on_feed(offset, frame, category)
        elif type(msg) is Frames:
            _frames_to(streams, msg.frames)
            if msg.recount:  # a feed item retracted: its followers' counts moved
                self.recounts.add(app, {s.user for s in streams})

    # -- counts that change with no event of their own (recount.py) -----------
    def _noted(self, key: tuple[str, str], counts: Counts) -> None:
        """Counts were read for ``key``: if the user has a stream here, watch
        for the first unread entry they count to expire."""
        if counts.expires is not None and key in self.users:
            self.expiries.note(key, counts.expires)

    def _expired(self, keys: list[tuple[str, ...]]) -> None:
        """Something counted for these users (or these feed channels'
        followers here) ran out of its ttl: read their counts again."""
        for key in keys:
            if len(key) == 2:  # (app, user)
                app, user = key
                if (app, user) in self.users:
                    self.cache.user_changed((app, user))
                    self.recounts.add(app, (user,))
                continue
            kind, app, topic = key
            streams = self.apps.get(app) if kind == "*" else self.topics.get((app, topic))
            if streams:
                self.cache.app_changed(app)
                self.recounts.add(app, {s.user for s in streams})

    # -- shutdown -------------------------------------------------------------
    def drain(self) -> None:
        """Refuse new streams and end every open one with "shutdown: reconnect"."""
        self.draining = True
        self.close_all(CLOSE_SHUTDOWN)

    def close_all(self, code: int) -> None:
        self.shedding.stop()
        if self._resync is not None:
            self._resync.cancel()
        self.recounts.close()
        self.expiries.close()
        if self._repair_task is not None:
            self._repair_task.cancel()
        for streams in list(self.users.values()):
            for s in list(streams):
                s.close(code)


def _personal_to(streams, d, body: bytes, tail: bytes) -> int:
    """Personal entry ``d`` (a ``Delivery``) of a notification with no
    ``locales`` to the user's ``streams``, of which there are several or
    which is a group entry; how many streams."""
    if d.group is not None:
        body = events.with_group(body, d.group)
        tail = events.notification_tail(body)
    for s in tuple(streams):
        s.on_personal(d.epoch, d.seq, body, tail)
    return len(streams)


def _localized(streams, epoch: str, seq: int, body: bytes, mark: bytes,
               group: bytes | None, resolved: dict[str, bytes]) -> None:
    """A personal entry of a notification with ``locales`` to the user's
    ``streams``: each its language, each language resolved once per publish
    (``resolved``: language -> body), followed by ``mark`` (events.unmarked)."""
    for s in tuple(streams):
        mine = resolved.get(s.locale)
        if mine is None:
            mine = resolved[s.locale] = resolve(body, s.locale) + mark
        s.on_personal(epoch, seq, mine if group is None else events.with_group(mine, group))


def _frames_to(streams, frames: list[bytes]) -> None:
    """Events (``Frames``) to ``streams``; one carrying a notification with
    ``locales`` goes to each stream in its language."""
    if not any(has_locales(f) for f in frames):
        for s in tuple(streams):
            s.on_frames(frames)
        return
    by_locale: dict[str, list[bytes]] = {}
    for s in tuple(streams):
        mine = by_locale.get(s.locale)
        if mine is None:
            mine = by_locale[s.locale] = [resolve_frame(f, s.locale) for f in frames]
        s.on_frames(mine)
